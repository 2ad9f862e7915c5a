"""tf.data pipelines of whole volumes or random patches, with one-hot labels.

All decoding and normalisation happened once in ``load_subject``; the pipeline
only holds the arrays in memory, cuts patches (a copy of a few MB) and flips
them, so it keeps ahead of a 3D network's training step by a wide margin (see
``benchmarks/bench_pipeline.py``).
"""

import itertools

import numpy as np
import tensorflow as tf

from tversky_keras.data.grid import crop_or_pad


def make_dataset(
    volumes,
    patch_size=None,
    batch_size=1,
    n_classes=2,
    foreground_ratio=0.0,
    flips=False,
    shuffle=True,
    repeat=True,
    seed=0,
    patches_per_volume=1,
):
    """Batches of ``(image, one-hot label)`` for training or evaluation.

    Whole volumes when ``patch_size`` is ``None``: the paper feeds whole
    registered volumes, so every volume must then have the same shape (pad them
    with ``load_subject(..., target_shape=...)``). Otherwise random patches whose
    centres are drawn uniformly over the brain, so the class imbalance reaches the
    loss as it is; ``foreground_ratio`` instead centres that fraction of patches,
    on average, on lesion voxels (nnU-Net's oversampling; volumes without lesions
    fall back to brain centres). Patches reaching past the volume are zero-padded.

    The stream is a function of ``seed`` alone: two datasets made with the same
    arguments yield identical batches, and each new pass over a dataset (the next
    epoch, or ``repeat``) draws new patches and flips.

    Args:
        volumes: sequence of ``Volume`` with labels.
        patch_size: spatial patch size (an int for a cube, or three ints), or
            ``None`` for whole volumes.
        batch_size: examples per batch; the last batch of a finite pass may be
            smaller.
        n_classes: one-hot depth; labels must lie in ``[0, n_classes)``.
        foreground_ratio: fraction of patches centred on a lesion voxel, in
            ``[0, 1]``; only with ``patch_size``.
        flips: mirror each example along each spatial axis with probability 1/2
            (image and label alike).
        shuffle: visit the volumes in a random order each pass.
        repeat: repeat passes forever (give ``steps_per_epoch`` to ``fit``).
        seed: seed of all random choices.
        patches_per_volume: patches drawn from each volume per pass; only with
            ``patch_size``.

    Returns:
        ``tf.data.Dataset`` of ``(image, label)``: float32 ``(B, X, Y, Z, C)`` and
        float32 one-hot ``(B, X, Y, Z, n_classes)``.
    """
    volumes = list(volumes)
    patch_size = _check_options(volumes, patch_size, batch_size, n_classes, foreground_ratio, patches_per_volume)
    images = [np.asarray(v.image, dtype=np.float32) for v in volumes]
    labels = [np.asarray(v.label, dtype=np.uint8) for v in volumes]
    if patch_size is None:
        examples = _whole_volumes(images, labels, shuffle, flips)
        spatial = images[0].shape[:3]
    else:
        examples = _random_patches(volumes, images, labels, patch_size, foreground_ratio, patches_per_volume, shuffle, flips)
        spatial = patch_size
    passes = itertools.count()

    def generate():
        # A fresh generator per pass: seeding it with the pass number makes
        # every epoch differ while the whole stream stays reproducible.
        yield from examples(np.random.default_rng([seed, next(passes)]))

    dataset = tf.data.Dataset.from_generator(
        generate,
        output_signature=(
            tf.TensorSpec((*spatial, images[0].shape[3]), tf.float32),
            tf.TensorSpec(spatial, tf.uint8),
        ),
    )
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.batch(batch_size).map(
        lambda image, label: (image, tf.one_hot(label, n_classes, dtype=tf.float32)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


def _check_options(volumes, patch_size, batch_size, n_classes, foreground_ratio, patches_per_volume):
    """ValueError naming the first bad option; returns ``patch_size`` as a tuple or ``None``."""
    if not volumes:
        raise ValueError("volumes is empty")
    if batch_size < 1 or n_classes < 2 or patches_per_volume < 1:
        raise ValueError(
            f"batch_size and patches_per_volume must be >= 1 and n_classes >= 2, got "
            f"batch_size={batch_size}, patches_per_volume={patches_per_volume}, n_classes={n_classes}"
        )
    if not 0.0 <= foreground_ratio <= 1.0:
        raise ValueError(f"foreground_ratio must lie in [0, 1], got {foreground_ratio}")
    for volume in volumes:
        if volume.label is None:
            raise ValueError(f"volume {volume.id} has no label")
        if volume.image.shape[:3] != volume.label.shape or volume.image.ndim != 4:
            raise ValueError(f"volume {volume.id}: image {volume.image.shape} and label {volume.label.shape} do not match")
        if volume.label.max() >= n_classes:
            raise ValueError(f"volume {volume.id} has label {volume.label.max()}, beyond n_classes={n_classes}")
    if len({v.image.shape[3] for v in volumes}) > 1:
        raise ValueError("volumes have different numbers of channels")
    if patch_size is None:
        if foreground_ratio or patches_per_volume != 1:
            raise ValueError("foreground_ratio and patches_per_volume need a patch_size")
        shapes = {v.id: v.image.shape[:3] for v in volumes}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"whole volumes must share one shape (pad them, or give patch_size), got {shapes}")
        return None
    patch_size = tuple(int(n) for n in np.broadcast_to(patch_size, 3))
    if min(patch_size) < 1:
        raise ValueError(f"patch_size must be positive, got {patch_size}")
    return patch_size


def _flipped(image, label, rng):
    """``image`` and ``label`` mirrored along the same random subset of spatial axes."""
    axes = tuple(axis for axis in range(3) if rng.random() < 0.5)
    return np.ascontiguousarray(np.flip(image, axes)), np.ascontiguousarray(np.flip(label, axes))


def _whole_volumes(images, labels, shuffle, flips):
    def examples(rng):
        order = rng.permutation(len(images)) if shuffle else range(len(images))
        for i in order:
            yield _flipped(images[i], labels[i], rng) if flips else (images[i], labels[i])

    return examples


def _random_patches(volumes, images, labels, patch_size, foreground_ratio, patches_per_volume, shuffle, flips):
    brain_voxels = [np.flatnonzero(v.brain) for v in volumes]
    lesion_voxels = [np.flatnonzero(label) for label in labels]
    for volume, voxels in zip(volumes, brain_voxels):
        if voxels.size == 0:
            raise ValueError(f"volume {volume.id} has no brain voxels to centre patches on")
    half = np.asarray(patch_size) // 2

    def examples(rng):
        order = np.repeat(np.arange(len(volumes)), patches_per_volume)
        if shuffle:
            rng.shuffle(order)
        for i in order:
            on_lesion = lesion_voxels[i].size > 0 and rng.random() < foreground_ratio
            voxels = lesion_voxels[i] if on_lesion else brain_voxels[i]
            centre = np.unravel_index(voxels[rng.integers(voxels.size)], labels[i].shape)
            start = np.asarray(centre) - half
            image = crop_or_pad(images[i], start, patch_size)
            label = crop_or_pad(labels[i], start, patch_size)
            yield _flipped(image, label, rng) if flips else (image, label)

    return examples
