"""tversky_keras.data.pipeline, make_dataset: shapes, image-label alignment, sampling, determinism."""

import numpy as np
import pytest

from tversky_keras.data import Volume, make_dataset


def volume(image, label, brain=None, id="v"):
    brain = np.ones(label.shape, bool) if brain is None else brain
    return Volume(id, np.asarray(image, np.float32), np.asarray(label, np.uint8), brain, None, ())


def coordinates(shape):
    """Image whose channels are each voxel's 1-based (x, y, z): 0 only in padding."""
    return np.stack(np.indices(shape) + 1, axis=-1).astype(np.float32)


def pattern(x, y, z):
    """An asymmetric label: mirroring any axis changes it."""
    return ((x + 2 * y + 3 * z) % 3 == 0).astype(np.uint8)


def coordinate_volume(shape, id="v"):
    return volume(coordinates(shape), pattern(*np.indices(shape)), id=id)


def batches(dataset, n):
    return [(x.numpy(), y.numpy()) for x, y in dataset.take(n)]


def test_patch_batches_have_the_promised_shapes_and_one_hot_labels(rng):
    label = rng.integers(0, 3, (7, 6, 5))
    image = np.stack([label, -label], axis=-1)
    dataset = make_dataset([volume(image, label)], patch_size=(5, 4, 3), batch_size=4, n_classes=3)
    (x, y), = batches(dataset, 1)
    assert x.shape == (4, 5, 4, 3, 2) and x.dtype == np.float32
    assert y.shape == (4, 5, 4, 3, 3) and y.dtype == np.float32
    np.testing.assert_array_equal(y.sum(axis=-1), 1.0)
    np.testing.assert_array_equal(y.argmax(axis=-1), x[..., 0])  # padding is image 0, background


def test_patches_are_windows_centred_on_a_voxel_zero_padded(rng):
    shape, size = (6, 7, 5), np.array((5, 4, 3))
    (x, y), = batches(make_dataset([coordinate_volume(shape)], patch_size=size, batch_size=64), 1)
    half = size // 2
    padded_image = np.pad(coordinates(shape), [(h, s - h) for h, s in zip(half, size)] + [(0, 0)])
    padded_label = np.pad(pattern(*np.indices(shape)), [(h, s - h) for h, s in zip(half, size)])
    centres = x[:, half[0], half[1], half[2]].astype(int) - 1
    assert (centres >= 0).all()
    for patch, one_hot, (cx, cy, cz) in zip(x, y, centres):
        window = (slice(cx, cx + size[0]), slice(cy, cy + size[1]), slice(cz, cz + size[2]))
        np.testing.assert_array_equal(patch, padded_image[window])
        np.testing.assert_array_equal(one_hot.argmax(-1), padded_label[window])
    assert (x == 0).any()  # some patches did reach past the volume


def test_whole_volumes_in_order(rng):
    volumes = [coordinate_volume((4, 5, 6), "a"), coordinate_volume((6, 5, 4), "b")]
    found = batches(make_dataset(volumes, shuffle=False, repeat=False), 10)
    assert len(found) == 2
    for (x, y), v in zip(found, volumes):
        np.testing.assert_array_equal(x[0], v.image)
        np.testing.assert_array_equal(y[0].argmax(-1), v.label)


def test_whole_volumes_batched_together():
    volumes = [coordinate_volume((4, 4, 4), id) for id in "abc"]
    (x, y), (x2, _) = batches(make_dataset(volumes, batch_size=2), 2)
    assert x.shape == (2, 4, 4, 4, 3) and y.shape == (2, 4, 4, 4, 2) and x2.shape == (2, 4, 4, 4, 3)


def first_batches(**options):
    volumes = [coordinate_volume((8, 8, 8), "a"), coordinate_volume((6, 7, 8), "b")]
    dataset = make_dataset(volumes, patch_size=4, batch_size=3, **options)
    return np.concatenate([x for x, _ in batches(dataset, 4)])


def test_same_seed_same_batches_other_seed_other_batches():
    reference = first_batches(seed=3, flips=True)
    np.testing.assert_array_equal(first_batches(seed=3, flips=True), reference)
    assert not np.array_equal(first_batches(seed=4, flips=True), reference)


def test_each_pass_of_a_repeated_dataset_draws_anew_a_finite_one_repeats():
    volumes = [coordinate_volume((8, 8, 8), "a"), coordinate_volume((6, 7, 8), "b")]
    repeated = make_dataset(volumes, patch_size=4, batch_size=2, shuffle=True)
    (first, _), (second, _) = batches(repeated, 2)  # pass 1, pass 2
    assert not np.array_equal(first, second)
    finite = make_dataset(volumes, patch_size=4, batch_size=2, repeat=False)
    np.testing.assert_array_equal(batches(finite, 5)[0][0], batches(finite, 5)[0][0])
    assert len(batches(finite, 5)) == 1


def test_shuffle_visits_every_volume_once_per_pass():
    volumes = [volume(np.full((3, 3, 3, 1), i), np.zeros((3, 3, 3))) for i in range(5)]
    (x, _), = batches(make_dataset(volumes, batch_size=15, seed=1), 1)
    passes = x[:, 0, 0, 0, 0].reshape(3, 5)
    for order in passes:
        assert sorted(order) == [0, 1, 2, 3, 4]
    assert len({tuple(order) for order in passes}) > 1


@pytest.fixture(scope="module")
def sparse_lesions():
    """Brain a 12^3 box inside 16^3; lesions on a random 10% of it; channels: brain, x index."""
    brain = np.zeros((16, 16, 16), bool)
    brain[2:14, 2:14, 2:14] = True
    label = brain & (np.random.default_rng(5).random(brain.shape) < 0.1)
    return volume(np.stack([brain, np.indices(brain.shape)[0]], axis=-1), label, brain)


N_CENTRES = 4000


def centre_voxels(vol, foreground_ratio):
    dataset = make_dataset([vol], patch_size=3, batch_size=1000, foreground_ratio=foreground_ratio)
    found = batches(dataset, N_CENTRES // 1000)
    images = np.concatenate([x[:, 1, 1, 1] for x, _ in found])
    lesions = np.concatenate([y[:, 1, 1, 1, 1] for _, y in found])
    return images, lesions


@pytest.mark.parametrize("ratio", [0.0, 0.5, 1.0])
def test_foreground_ratio_sets_the_share_of_lesion_centred_patches(sparse_lesions, ratio):
    """Uniform centres hit lesions at the brain's lesion share p; ratio r gives r + (1 - r) p."""
    p = sparse_lesions.label.sum() / sparse_lesions.brain.sum()
    expected = ratio + (1 - ratio) * p
    centres, on_lesion = centre_voxels(sparse_lesions, ratio)
    np.testing.assert_array_equal(centres[:, 0], 1.0)  # every centre lies in the brain
    tolerance = 4 * np.sqrt(expected * (1 - expected) / N_CENTRES) + 1e-9
    assert abs(on_lesion.mean() - expected) <= tolerance
    # x of a uniform voxel of the box 2..13 (lesions are spread uniformly too): mean 7.5, sd 3.45
    assert abs(centres[:, 1].mean() - 7.5) <= 4 * 3.45 / np.sqrt(N_CENTRES)


def test_volume_without_lesions_falls_back_to_brain_centres(sparse_lesions):
    no_lesions = np.zeros(sparse_lesions.label.shape)
    healthy = volume(sparse_lesions.image, no_lesions, sparse_lesions.brain)
    centres, on_lesion = centre_voxels(healthy, 0.5)
    np.testing.assert_array_equal(centres[:, 0], 1.0)
    assert not on_lesion.any()


@pytest.mark.parametrize("patch_size", [None, 5])
def test_flips_mirror_image_and_label_alike(patch_size):
    shape = (6, 6, 6)
    volumes = [coordinate_volume(shape)]
    (x, y), = batches(make_dataset(volumes, patch_size=patch_size, batch_size=48, flips=True), 1)
    inside = x[..., 0] > 0
    x_, y_, z_ = (x[..., axis].astype(int) - 1 for axis in range(3))
    np.testing.assert_array_equal(y.argmax(-1), np.where(inside, pattern(x_, y_, z_), 0))
    for axis in range(3):  # the coordinate ramp runs backwards along a mirrored axis
        ramp = np.where(inside, x[..., axis], np.nan)
        slope = np.sign(np.nansum(np.diff(ramp, axis=axis + 1), axis=(1, 2, 3)))
        assert set(slope) == {1.0, -1.0}  # mirrored in some examples, not in others


def test_no_flips_without_flips():
    (x, _), = batches(make_dataset([coordinate_volume((6, 6, 6))], batch_size=4), 1)
    np.testing.assert_array_equal(x, np.broadcast_to(coordinates((6, 6, 6)), x.shape))


def zeros(shape=(4, 4, 4), channels=1, **brain):
    """An all-background volume of ``shape``."""
    return volume(np.zeros((*shape, channels)), np.zeros(shape), **brain)


BAD_OPTIONS = [
    (dict(batch_size=0), "batch_size"),
    (dict(n_classes=1), "n_classes"),
    (dict(patches_per_volume=0, patch_size=4), "patches_per_volume"),
    (dict(foreground_ratio=1.5, patch_size=4), "foreground_ratio must lie in"),
    (dict(foreground_ratio=0.5), "need a patch_size"),
    (dict(patch_size=(4, 0, 4)), "patch_size must be positive"),
    (dict(volumes=[volume(np.zeros((4, 4, 4, 1)), np.full((4, 4, 4), 2))]), "beyond n_classes=2"),
    (dict(volumes=[]), "volumes is empty"),
    (dict(volumes=[Volume("u", np.zeros((4, 4, 4, 1)), None, None, None, ())]), "u has no label"),
    (dict(volumes=[volume(np.zeros((4, 4, 4, 1)), np.zeros((4, 4, 3)))]), "do not match"),
    (dict(volumes=[zeros(), zeros(brain=np.ones((4, 4, 5), bool))]), "do not match"),
    (dict(volumes=[zeros(), zeros(channels=2)]), "numbers of channels"),
    (dict(batch_size=2, volumes=[zeros(id="a"), zeros((4, 4, 5), id="b")]), "share one shape"),
    (dict(patch_size=2, volumes=[zeros(brain=np.zeros((4, 4, 4), bool))]), "no brain voxels"),
]


@pytest.mark.parametrize("options, problem", BAD_OPTIONS)
def test_bad_options_raise_value_error(options, problem):
    options = dict(options)
    volumes = options.pop("volumes", [zeros()])
    with pytest.raises(ValueError, match=problem):
        make_dataset(volumes, **options)


# --- intensity augmentation ---------------------------------------------------

def only(name, value, probability=1.0):
    """Settings in which only ``name`` happens, always, with one value."""
    from tversky_keras.data.pipeline import AUGMENTATION

    settings = {k: (0.0, r) for k, (_, r) in AUGMENTATION.items()}
    settings[name] = (probability, (value, value))
    return settings


def test_augmentation_transforms_match_hand_computations(rng):
    from tversky_keras.data.pipeline import augment_intensities

    image = rng.normal(size=(12, 10, 8, 2)).astype(np.float32)
    same = augment_intensities(image, rng, only("brightness", 1.0, probability=0.0))
    np.testing.assert_array_equal(same, image)
    np.testing.assert_allclose(augment_intensities(image, rng, only("brightness", 2.0)),
                               2 * image, rtol=1e-6)
    for c, x in enumerate(np.moveaxis(image, -1, 0)):
        expected = np.clip((x - x.mean()) * 0.5 + x.mean(), x.min(), x.max())
        np.testing.assert_allclose(augment_intensities(image, rng, only("contrast", 0.5))[..., c],
                                   expected, rtol=1e-5, atol=1e-6)
    noisy = augment_intensities(np.zeros((40, 40, 40, 1), np.float32), rng, only("noise", 0.04))
    assert np.std(noisy) == pytest.approx(0.2, rel=0.02)
    # Gamma keeps each channel's mean, standard deviation and order of voxels.
    bent = augment_intensities(image, rng, only("gamma", 2.0))
    for c in range(2):
        x, y = image[..., c].ravel(), bent[..., c].ravel()
        assert (y.mean(), y.std()) == pytest.approx((x.mean(), x.std()), abs=1e-4)
        np.testing.assert_array_equal(np.argsort(x, kind="stable"), np.argsort(y, kind="stable"))
        assert not np.allclose(x, y, atol=1e-2)
    # Blur and low resolution pick channels with probability 1/2; a constant stays constant.
    flat = np.full((12, 10, 8, 2), 3.0, np.float32)
    for name, value in (("low_resolution", 0.5), ("blur", 1.0)):
        np.testing.assert_allclose(augment_intensities(flat, rng, only(name, value)), flat,
                                   rtol=1e-5)
    picked = []
    for seed in range(20):
        halved = augment_intensities(image, np.random.default_rng(seed),
                                     only("low_resolution", 0.5))
        assert halved.shape == image.shape
        picked += [not np.allclose(halved[..., c], image[..., c]) for c in range(2)]
    assert 10 < sum(picked) < 30  # each of 40 channels with probability 1/2


def test_augmented_stream_keeps_patches_and_labels_and_changes_some_intensities():
    volumes = [coordinate_volume((6, 6, 6))]
    options = dict(patch_size=4, batch_size=48, flips=True, seed=3)
    (x, y), = batches(make_dataset(volumes, **options), 1)
    (xa, ya), = batches(make_dataset(volumes, intensity_augmentation=True, **options), 1)
    (xb, yb), = batches(make_dataset(volumes, intensity_augmentation=True, **options), 1)
    np.testing.assert_array_equal(ya, y)
    np.testing.assert_array_equal(xa, xb)  # a function of (seed, k) alone
    changed = [not np.array_equal(a, b) for a, b in zip(xa, x)]
    # Each transform has its probability: about 27 % of examples get none of them.
    assert 0 < sum(changed) < len(changed)


def test_training_passes_intensity_augmentation_to_the_stream(monkeypatch):
    from tversky_keras.data import pipeline
    from tversky_keras.training import TrainConfig
    from tversky_keras.training.fit import _datasets

    seen = []
    monkeypatch.setattr(pipeline, "make_dataset", lambda volumes, **kw: seen.append(kw))
    for on in (False, True):
        config = TrainConfig(patch_size=(4, 4, 4), depth=2, intensity_augmentation=on)
        _datasets(config, None, [coordinate_volume((6, 6, 6))], [], 0)
        assert seen[-1]["intensity_augmentation"] is on


def test_a_patch_mostly_padding_is_warned_about_naming_the_subject(rng):
    import warnings

    from tversky_keras.data import DataWarning

    small = volume(rng.normal(size=(4, 5, 4, 1)), np.zeros((4, 5, 4)), id="small")
    # 16^3 patch on 4x5x4: 80 of 4,096 voxels are the scan, 98 % padding.
    with pytest.warns(DataWarning, match=r"subject small: the patch 16x16x16 is larger than its "
                                         r"4x5x4 volume, so 98% of each of its patches"):
        make_dataset([small], patch_size=16, batch_size=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        make_dataset([small], patch_size=(4, 4, 4), batch_size=1)  # no padding
        make_dataset([small], patch_size=(4, 5, 8), batch_size=1)  # half: not above the bound
