"""tf.data pipelines of whole volumes or random patches, with one-hot labels.

All decoding and normalisation happened once in ``load_subject``; the pipeline
holds the arrays in memory as one zero-padded tensor and cuts examples out of it
with TensorFlow ops only. No Python runs per example, so the examples are made
in parallel, outside the GIL, well ahead of a 3D network's training step (see
``benchmarks/bench_pipeline.py``), and nothing is left blocking at exit as a
Python generator feeding tf.data can be.
"""

import numpy as np
import tensorflow as tf


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

    Whole volumes when ``patch_size`` is ``None``, as the paper feeds whole
    registered volumes; batching them needs one shape for all (pad with
    ``load_subject(..., target_shape=...)``). Otherwise random patches whose
    centres are drawn uniformly over the brain, so the class imbalance reaches the
    loss as it is; ``foreground_ratio`` instead centres that fraction of patches,
    on average, on lesion voxels (nnU-Net's oversampling; a volume without
    lesions falls back to brain centres). Patches reaching past the volume are
    zero-padded (background label).

    Example ``k`` of the stream is a function of ``(seed, k)`` alone: the same
    arguments give identical batches, and each pass of a repeated dataset visits
    the volumes in a new order with new patches and flips. A finite dataset
    (``repeat=False``) yields the same examples on every pass, like a fixed
    validation set; train on the repeated stream with ``steps_per_epoch``.

    Args:
        volumes: sequence of ``Volume`` with labels.
        patch_size: spatial patch size (an int for a cube, or three ints), or
            ``None`` for whole volumes.
        batch_size: examples per batch; the last batch of a finite dataset may
            be smaller.
        n_classes: one-hot depth; labels must lie in ``[0, n_classes)``.
        foreground_ratio: fraction of patches centred on a lesion voxel, in
            ``[0, 1]``; only with ``patch_size``.
        flips: mirror each example along each spatial axis with probability 1/2
            (image and label alike).
        shuffle: visit the volumes in a random order in each pass.
        repeat: repeat passes forever.
        seed: seed of all random choices.
        patches_per_volume: patches cut from each volume per pass; only with
            ``patch_size``.

    Returns:
        ``tf.data.Dataset`` of ``(image, label)``: float32 ``(B, X, Y, Z, C)`` and
        float32 one-hot ``(B, X, Y, Z, n_classes)``.
    """
    volumes = list(volumes)
    patch_size = _check_options(
        volumes, patch_size, batch_size, n_classes, foreground_ratio, patches_per_volume
    )
    per_pass = len(volumes) * patches_per_volume
    make_example = (
        _whole_volume_maker(volumes)
        if patch_size is None
        else _patch_maker(volumes, patch_size, foreground_ratio)
    )
    volume_ids = tf.repeat(tf.range(len(volumes), dtype=tf.int64), patches_per_volume)

    def example(k):
        pass_index, position = k // per_pass, k % per_pass
        # Negative seeds for the passes' orders, non-negative ones for the examples.
        pass_seed = tf.stack([seed, -1 - pass_index])
        order = (
            tf.random.experimental.stateless_shuffle(volume_ids, seed=pass_seed)
            if shuffle
            else volume_ids
        )
        # Five uniform numbers per example: lesion-or-brain, centre, three flips.
        # float64 so that a draw can reach every one of a million brain voxels.
        draws = tf.random.stateless_uniform([5], seed=tf.stack([seed, k]), dtype=tf.float64)
        image, label = make_example(order[position], draws)
        if flips:
            image, label = _flipped(image, label, draws[2:] < 0.5)
        return image, tf.one_hot(label, n_classes, dtype=tf.float32)

    indices = tf.data.Dataset.counter() if repeat else tf.data.Dataset.range(per_pass)
    dataset = indices.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _check_options(
    volumes, patch_size, batch_size, n_classes, foreground_ratio, patches_per_volume
):
    """ValueError naming the first bad option; returns ``patch_size`` as a tuple or ``None``."""
    if not volumes:
        raise ValueError("volumes is empty")
    if batch_size < 1 or n_classes < 2 or patches_per_volume < 1:
        raise ValueError(
            f"batch_size and patches_per_volume must be >= 1 and n_classes >= 2, got "
            f"batch_size={batch_size}, patches_per_volume={patches_per_volume}, "
            f"n_classes={n_classes}"
        )
    if not 0.0 <= foreground_ratio <= 1.0:
        raise ValueError(f"foreground_ratio must lie in [0, 1], got {foreground_ratio}")
    for volume in volumes:
        if volume.label is None:
            raise ValueError(f"volume {volume.id} has no label")
        sizes = (volume.image.shape[:3], volume.label.shape, np.shape(volume.brain))
        if volume.image.ndim != 4 or len(set(sizes)) > 1:
            raise ValueError(
                f"volume {volume.id}: image {volume.image.shape}, label {volume.label.shape} and "
                f"brain {np.shape(volume.brain)} do not match"
            )
        if volume.label.max() >= n_classes:
            raise ValueError(
                f"volume {volume.id} has label {volume.label.max()}, beyond n_classes={n_classes}"
            )
    if len({v.image.shape[3] for v in volumes}) > 1:
        raise ValueError("volumes have different numbers of channels")
    if patch_size is None:
        if foreground_ratio or patches_per_volume != 1:
            raise ValueError("foreground_ratio and patches_per_volume need a patch_size")
        shapes = {v.id: v.image.shape[:3] for v in volumes}
        if batch_size > 1 and len(set(shapes.values())) > 1:
            raise ValueError(
                f"whole volumes batched by {batch_size} must share one shape (pad them, "
                f"or give patch_size or batch_size=1), got {shapes}"
            )
        return None
    patch_size = tuple(int(n) for n in np.broadcast_to(patch_size, 3))
    if min(patch_size) < 1:
        raise ValueError(f"patch_size must be positive, got {patch_size}")
    return patch_size


def _stacked(volumes, before=(0, 0, 0), after=(0, 0, 0)):
    """All images, labels and shapes as tensors ``(N, X, Y, Z, C)``, ``(N, X, Y, Z)``, ``(N, 3)``.

    Each volume sits after ``before`` voxels of zero margin; the tensors extend
    ``after`` voxels past the largest volume.
    """
    spatial = np.max([v.image.shape[:3] for v in volumes], axis=0) + before + after
    images = np.zeros((len(volumes), *spatial, volumes[0].image.shape[3]), np.float32)
    labels = np.zeros((len(volumes), *spatial), np.uint8)
    for i, volume in enumerate(volumes):
        window = tuple(slice(b, b + n) for b, n in zip(before, volume.label.shape))
        images[(i, *window)] = volume.image
        labels[(i, *window)] = volume.label
    shapes = tf.constant([v.label.shape for v in volumes], tf.int64)
    return tf.constant(images), tf.constant(labels), shapes


def _whole_volume_maker(volumes):
    images, labels, shapes = _stacked(volumes)
    same_shape = len({v.label.shape for v in volumes}) == 1
    static_shape = volumes[0].label.shape if same_shape else (None, None, None)

    def make(i, draws):
        del draws  # a whole volume involves no random choice
        size = shapes[i]
        image = tf.slice(images, tf.stack([i, 0, 0, 0, 0]), tf.stack([1, *tf.unstack(size), -1]))[0]
        label = tf.slice(labels, tf.stack([i, 0, 0, 0]), tf.stack([1, *tf.unstack(size)]))[0]
        image.set_shape((*static_shape, volumes[0].image.shape[3]))
        label.set_shape(static_shape)
        return image, label

    return make


def _voxel_table(masks):
    """Flat indices of every mask's true voxels, concatenated, with each mask's row range.

    int32 flat indices take 4 bytes per voxel: a million-voxel brain costs 4 MB.
    """
    indices = [np.flatnonzero(mask).astype(np.int32) for mask in masks]
    splits = np.cumsum([0] + [len(i) for i in indices])
    return tf.constant(np.concatenate(indices)), tf.constant(splits, tf.int64)


def _patch_maker(volumes, patch_size, foreground_ratio):
    for volume in volumes:
        if not volume.brain.any():
            raise ValueError(f"volume {volume.id} has no brain voxels to centre patches on")
    half = np.asarray(patch_size) // 2
    # With ``half`` voxels of margin before each volume, the patch centred on
    # voxel c starts at c in the padded tensor: every patch is a plain slice.
    images, labels, shapes = _stacked(volumes, before=half, after=np.asarray(patch_size) - half)
    brain_voxels, brain_splits = _voxel_table(v.brain for v in volumes)
    lesion_voxels, lesion_splits = _voxel_table(v.label > 0 for v in volumes)

    def make(i, draws):
        n_lesion = lesion_splits[i + 1] - lesion_splits[i]
        on_lesion = tf.logical_and(n_lesion > 0, draws[0] < foreground_ratio)
        voxels, splits = tf.cond(
            on_lesion, lambda: (lesion_voxels, lesion_splits), lambda: (brain_voxels, brain_splits)
        )
        count = splits[i + 1] - splits[i]
        drawn = tf.cast(draws[1] * tf.cast(count, tf.float64), tf.int64)
        row = splits[i] + tf.minimum(drawn, count - 1)
        x, y, z = tf.unstack(tf.unravel_index(tf.cast(voxels[row], tf.int64), shapes[i]))
        image = tf.slice(images, tf.stack([i, x, y, z, 0]), (1, *patch_size, -1))[0]
        label = tf.slice(labels, tf.stack([i, x, y, z]), (1, *patch_size))[0]
        return image, label

    return make


def _flipped(image, label, flip):
    """``image`` and ``label`` mirrored along the spatial axes where ``flip`` is true."""
    for axis in range(3):
        image, label = tf.cond(
            flip[axis],
            lambda: (tf.reverse(image, [axis]), tf.reverse(label, [axis])),
            lambda: (image, label),
        )
    return image, label
