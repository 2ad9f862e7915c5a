"""tf.data pipelines of whole volumes or random patches, with one-hot labels.

The pipeline keeps no volume of its own. Each example is read when it is made,
from the volumes' arrays: in-memory ``Volume`` arrays, or the memory maps of a
preprocessed ``CachedVolume`` (``tversky_keras.data.cache``), from which a
patch reads only its own bytes. What the pipeline holds is a few numbers per
volume, so its memory does not grow with the number of subjects, and the graph
holds no data (TensorFlow graphs stop at 2 GB). The examples are made in
parallel by tf.data and prefetched; ``benchmarks/bench_pipeline.py`` measures
that they are made several times faster than a training step eats them.
"""

import functools
import warnings

import numpy as np
import tensorflow as tf
from scipy import ndimage

from tversky_keras.data.errors import DataWarning
from tversky_keras.data.grid import crop_or_pad

# A patch more than this share padding (it is larger than its volume) is warned about.
PADDING_WARNING = 0.5

# Intensity augmentation, per example: nnU-Net's default transforms (Isensee
# et al., Nat Methods 2021, its default data augmentation) with their
# probabilities and ranges, on z-scored images: (probability, range).
AUGMENTATION = {
    "noise": (0.1, (0.0, 0.1)),              # Gaussian noise, variance
    "blur": (0.2, (0.5, 1.0)),               # Gaussian blur, sigma in voxels, per channel p 0.5
    "brightness": (0.15, (0.75, 1.25)),      # multiply
    "contrast": (0.15, (0.75, 1.25)),        # scale about the mean, range kept
    "low_resolution": (0.25, (0.5, 1.0)),    # zoom down (nearest) and up (cubic), per channel p 0.5
    "gamma": (0.3, (0.7, 1.5)),              # on the rescaled range; inverted with p 0.1
}


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
    shard=(0, 1),
    intensity_augmentation=False,
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
        volumes: sequence of ``Volume`` or ``CachedVolume`` with labels.
        patch_size: spatial patch size (an int for a cube, or three ints), or
            ``None`` for whole volumes.
        batch_size: examples per batch; the last batch of a finite dataset may
            be smaller.
        n_classes: one-hot depth; labels must lie in ``[0, n_classes)``.
        foreground_ratio: fraction of patches centred on a lesion voxel, in
            ``[0, 1]``; only with ``patch_size``.
        flips: mirror each example along each spatial axis with probability 1/2
            (image and label alike).
        intensity_augmentation: change each example's intensities as
            nnU-Net's default augmentation does (``AUGMENTATION``: noise, blur,
            brightness, contrast, low resolution, gamma; ``augment_intensities``),
            from its own random numbers, so the patches, flips and labels are
            those of the stream without it.
        shuffle: visit the volumes in a random order in each pass.
        repeat: repeat passes forever.
        seed: seed of all random choices, a non-negative integer.
        patches_per_volume: patches cut from each volume per pass; only with
            ``patch_size``.
        shard: ``(index, count)``: this stream keeps examples ``k`` with
            ``k % count == index`` of the stream described above, so ``count``
            workers given indices ``0 .. count-1`` see disjoint examples that
            together make the whole stream.

    Returns:
        ``tf.data.Dataset`` of ``(image, label)``: float32 ``(B, X, Y, Z, C)`` and
        float32 one-hot ``(B, X, Y, Z, n_classes)``.
    """
    volumes = list(volumes)
    patch_size = _check_options(volumes, patch_size, batch_size, n_classes, foreground_ratio,
                                patches_per_volume, seed, shard)
    sampler = _Sampler(volumes, patch_size, foreground_ratio, flips, shuffle, seed,
                       patches_per_volume, intensity_augmentation)
    shapes = {v.shape for v in volumes}
    spatial = patch_size or (next(iter(shapes)) if len(shapes) == 1 else (None,) * 3)
    channels = volumes[0].channels

    def example(k):
        image, label = tf.numpy_function(sampler.example, [k], (tf.float32, tf.uint8),
                                         stateful=False)
        image.set_shape((*spatial, channels))
        label.set_shape(spatial)
        return image, tf.one_hot(label, n_classes, dtype=tf.float32)

    indices = (tf.data.Dataset.counter() if repeat
               else tf.data.Dataset.range(sampler.per_pass))
    index, count = shard
    if count > 1:
        indices = indices.shard(count, index)
    dataset = indices.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    # The stream is sharded above, by example; tf.distribute must not shard it again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE).with_options(options)


def _check_options(
    volumes, patch_size, batch_size, n_classes, foreground_ratio, patches_per_volume, seed, shard
):
    """ValueError naming the first bad option; returns ``patch_size`` as a tuple or ``None``.

    Reads only what a volume knows without reading its arrays (a cached
    volume's manifest), so checking hundreds of cached subjects is quick.
    """
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
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard must be (index, count) with 0 <= index < count, got {shard}")
    for volume in volumes:
        if volume.label_max is None:
            raise ValueError(f"volume {volume.id} has no label")
        sizes = (volume.shape, tuple(volume.label.shape), tuple(np.shape(volume.brain)))
        if volume.channels is None or len(set(sizes)) > 1:
            raise ValueError(
                f"volume {volume.id}: image {volume.image.shape}, label {volume.label.shape} and "
                f"brain {np.shape(volume.brain)} do not match"
            )
        if volume.label_max >= n_classes:
            raise ValueError(
                f"volume {volume.id} has label {volume.label_max}, beyond n_classes={n_classes}"
            )
    if len({v.channels for v in volumes}) > 1:
        raise ValueError("volumes have different numbers of channels")
    if patch_size is None:
        if foreground_ratio or patches_per_volume != 1:
            raise ValueError("foreground_ratio and patches_per_volume need a patch_size")
        shapes = {v.id: v.shape for v in volumes}
        if batch_size > 1 and len(set(shapes.values())) > 1:
            raise ValueError(
                f"whole volumes batched by {batch_size} must share one shape (pad them, "
                f"or give patch_size or batch_size=1), got {shapes}"
            )
        return None
    patch_size = tuple(int(n) for n in np.broadcast_to(patch_size, 3))
    if min(patch_size) < 1:
        raise ValueError(f"patch_size must be positive, got {patch_size}")
    for volume in volumes:
        if not volume.count("brain"):
            raise ValueError(f"volume {volume.id} has no brain voxels to centre patches on")
    padding = {v.id: 1 - np.prod(np.minimum(v.shape, patch_size)) / np.prod(patch_size)
               for v in volumes}
    worst = max(padding, key=padding.get)
    if padding[worst] > PADDING_WARNING:
        shape = next(v.shape for v in volumes if v.id == worst)
        warnings.warn(f"subject {worst}: the patch {'x'.join(map(str, patch_size))} is larger "
                      f"than its {'x'.join(map(str, shape))} volume, so {padding[worst]:.0%} of "
                      f"each of its patches is padding; a patch no larger than the volumes "
                      f"trains on the scans themselves", DataWarning, stacklevel=3)
    return patch_size


class _Sampler:
    """Example ``k`` of the stream, made with NumPy from ``k`` and the seed alone.

    Random numbers come from NumPy generators seeded with ``(seed, 0, pass)``
    for a pass's order of volumes, ``(seed, 1, k)`` for example ``k``'s
    draws and ``(seed, 2, k)`` for its intensity augmentation, so any thread
    may make any example in any order.
    """

    def __init__(self, volumes, patch_size, foreground_ratio, flips, shuffle, seed,
                 patches_per_volume, intensity_augmentation=False):
        self.intensity_augmentation = intensity_augmentation
        self.volumes = volumes
        self.patch_size = patch_size
        self.foreground_ratio = foreground_ratio
        self.flips = flips
        self.shuffle = shuffle
        self.seed = int(seed)
        self.volume_ids = np.repeat(np.arange(len(volumes)), patches_per_volume)
        self.per_pass = len(self.volume_ids)
        # Counts are read once: a cached volume's come from its manifest.
        self.counts = [{kind: v.count(kind) for kind in ("brain", "lesion")} for v in volumes] \
            if patch_size else None

    # Cached per instance's pass: the instance lives as long as its dataset, which is the point.
    @functools.lru_cache(maxsize=4)  # noqa: B019
    def _order(self, pass_index):
        if not self.shuffle:
            return self.volume_ids
        return np.random.default_rng((self.seed, 0, pass_index)).permutation(self.volume_ids)

    def example(self, k):
        k = int(k)
        pass_index, position = divmod(k, self.per_pass)
        i = self._order(pass_index)[position]
        # Five uniform numbers per example: lesion-or-brain, centre, three flips.
        draws = np.random.default_rng((self.seed, 1, k)).random(5)
        volume = self.volumes[i]
        if self.patch_size is None:
            image, label = np.asarray(volume.image), np.asarray(volume.label)
        else:
            image, label = self._patch(volume, self.counts[i], draws)
        if self.flips:
            axes = tuple(int(a) for a in np.flatnonzero(draws[2:] < 0.5))
            image, label = np.flip(image, axes), np.flip(label, axes)
        image = np.ascontiguousarray(image, np.float32)
        if self.intensity_augmentation:
            image = augment_intensities(image, np.random.default_rng((self.seed, 2, k)))
        return image, np.ascontiguousarray(label, np.uint8)

    def _patch(self, volume, counts, draws):
        on_lesion = counts["lesion"] > 0 and draws[0] < self.foreground_ratio
        kind = "lesion" if on_lesion else "brain"
        row = min(int(draws[1] * counts[kind]), counts[kind] - 1)
        centre = np.unravel_index(int(volume.voxels(kind)[row]), volume.shape)
        # The patch centred on voxel c starts at c - size // 2: the same windows
        # as a volume padded by size // 2 before and size - size // 2 after.
        start = [int(c) - s // 2 for c, s in zip(centre, self.patch_size)]
        return (crop_or_pad(volume.image, start, self.patch_size),
                crop_or_pad(volume.label, start, self.patch_size))


def augment_intensities(image, rng, settings=None):
    """One example's intensities changed as nnU-Net's default augmentation does.

    Each transform of ``settings`` (``AUGMENTATION`` by default) happens with
    its probability, in its order, with a value drawn from its range; blur and
    low resolution then pick each channel with probability 1/2, the others
    change every channel with its own value. Brightness, contrast, noise and
    gamma act as in batchgenerators (``augment_contrast`` keeps the channel's
    range; ``augment_gamma`` rescales the channel to [0, 1], raises it to the
    power, and restores its mean and standard deviation, inverting the image
    around it with probability 0.1).

    Args:
        image: float32 ``(X, Y, Z, C)``; not modified.
        rng: ``numpy.random.Generator``.
        settings: ``{name: (probability, (low, high))}`` for the names of
            ``AUGMENTATION``.

    Returns:
        A new float32 array of the same shape.
    """
    settings = AUGMENTATION if settings is None else settings
    image = np.array(image, np.float32)
    channels = range(image.shape[-1])

    def happens(name):
        return rng.random() < settings[name][0]

    def draw(name):
        return rng.uniform(*settings[name][1])

    if happens("noise"):
        image += rng.normal(0.0, np.sqrt(draw("noise")), image.shape).astype(np.float32)
    if happens("blur"):
        for c in channels:
            if rng.random() < 0.5:
                image[..., c] = ndimage.gaussian_filter(image[..., c], draw("blur"))
    if happens("brightness"):
        for c in channels:
            image[..., c] *= draw("brightness")
    if happens("contrast"):
        for c in channels:
            x = image[..., c]
            low, high, mean = x.min(), x.max(), x.mean()
            image[..., c] = np.clip((x - mean) * draw("contrast") + mean, low, high)
    if happens("low_resolution"):
        for c in channels:
            if rng.random() < 0.5:
                image[..., c] = _low_resolution(image[..., c], draw("low_resolution"))
    if happens("gamma"):
        invert = rng.random() < 0.1
        for c in channels:
            image[..., c] = _gamma(image[..., c], draw("gamma"), invert)
    return image


def _low_resolution(x, zoom):
    """``x`` zoomed down by ``zoom`` (nearest neighbour) and back up (cubic)."""
    small = [max(1, int(round(n * zoom))) for n in x.shape]
    down = ndimage.zoom(x, [s / n for s, n in zip(small, x.shape)], order=0, grid_mode=True,
                        mode="grid-constant")
    return ndimage.zoom(down, [n / s for s, n in zip(small, x.shape)], order=3, grid_mode=True,
                        mode="nearest")[tuple(slice(0, n) for n in x.shape)]


def _gamma(x, gamma, invert):
    """batchgenerators' ``augment_gamma`` of one channel (mean and SD kept)."""
    x = -x if invert else x
    mean, sd = x.mean(), x.std()
    low, span = x.min(), x.max() - x.min()
    y = np.power((x - low) / (span + 1e-7), gamma) * (span + 1e-7) + low
    y = (y - y.mean()) / (y.std() + 1e-8) * sd + mean
    return -y if invert else y
