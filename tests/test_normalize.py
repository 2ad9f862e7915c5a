"""tversky_keras.data.normalize: the z-score, the white-matter peak, and which one a model uses."""

import json

import keras
import numpy as np
import pytest

from tiny_data import write_tiny_subjects
from tversky_keras.data import discover_subjects, load_subject
from tversky_keras.data.cache import cached_subject
from tversky_keras.data.normalize import (brain_core, normalize_in_brain, normalize_method,
                                          wm_peak_core_in_brain, wm_peak_in_brain,
                                          wm_peak_statistics, zscore_in_brain)
from tversky_keras.inference import predict_volume, segment_subject
from tversky_keras.run_folder import differences
from tversky_keras.scan_spec import with_scan_spec


def brain_with_lesions(share, rng, n=200_000):
    """White matter N(100, 4) (60 %), grey matter N(80, 4) (30 %), CSF N(30, 4) (10 %);
    ``share`` of the voxels, taken from white matter, are lesions N(135, 6)."""
    tissue = rng.choice(3, size=n, p=[0.6, 0.3, 0.1])
    values = np.array([100.0, 80.0, 30.0])[tissue] + 4.0 * rng.standard_normal(n)
    lesion = np.zeros(n, bool)
    lesion[np.flatnonzero(tissue == 0)[:int(share * n)]] = True
    values[lesion] = 135.0 + 6.0 * rng.standard_normal(lesion.sum())
    return values.astype(np.float32), lesion, tissue == 0


def test_the_peak_is_white_matter_and_the_scale_the_iqr():
    values, _, _ = brain_with_lesions(0.0, np.random.default_rng(0))
    peak, scale = wm_peak_statistics(values)
    # The histogram's bins are (p99 - p1) / 256 wide, about 0.3 here.
    assert peak == pytest.approx(100.0, abs=1.0)
    q1, q3 = np.percentile(values, [25, 75])
    assert scale == pytest.approx((q3 - q1) / 1.349, rel=1e-9)


def test_the_peak_does_not_move_with_the_lesion_load_as_the_mean_does():
    rng = np.random.default_rng(1)
    moved = {}
    for method in (zscore_in_brain, wm_peak_in_brain):
        normal_wm = []
        for share in (0.0, 0.045):
            values, lesion, wm = brain_with_lesions(share, rng)
            z = method(values[None, None, :], np.ones((1, 1, values.size), bool))[0, 0]
            normal_wm.append(np.median(z[wm & ~lesion]))
        moved[method.__name__] = normal_wm[1] - normal_wm[0]
    # 4.5 % of bright lesions pull the mean up, so normal white matter's z-score drops.
    assert moved["zscore_in_brain"] < -0.1
    assert abs(moved["wm_peak_in_brain"]) < 0.5 * abs(moved["zscore_in_brain"])


def test_outside_the_brain_is_zero_and_values_are_clipped():
    image = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    brain = np.zeros_like(image, bool)
    brain[2:8, 2:8, 2:8] = True
    out = wm_peak_in_brain(image, brain)
    assert np.all(out[~brain] == 0)
    peak, scale = wm_peak_statistics(image[brain])
    low, high = np.percentile(image[brain], [0.5, 99.5])
    assert out[brain].max() == pytest.approx((high - peak) / scale, rel=1e-5)
    assert out[brain].min() == pytest.approx((low - peak) / scale, rel=1e-5)


def rimmed_ball(rim_mm, spacing=(2.0, 1.0, 1.5), rng=None):
    """A ball of 'white matter' N(100, 4) (radius 22 mm) in a 'grey matter' shell N(70, 8)
    (to 30 mm) at ``spacing``, inside a rim ``rim_mm`` thick of 'fat' N(300, 4), and its
    brain (ball and rim, as a loose skull strip leaves it)."""
    rng = np.random.default_rng(0) if rng is None else rng
    axes = [(np.arange(int(84 / s)) - int(42 / s)) * s for s in spacing]
    radius = np.sqrt(sum(np.square(a) for a in np.meshgrid(*axes, indexing="ij")))
    noise = rng.standard_normal(radius.shape)
    image = np.where(radius < 22.0, 100.0 + 4.0 * noise, 70.0 + 8.0 * noise)
    image = np.where(radius < 30.0, image, 300.0 + 4.0 * noise)
    brain = radius < 30.0 + rim_mm
    return (image * brain).astype(np.float32), brain, radius < 30.0


def test_wm_peak_core_reads_the_core_and_ignores_a_rim_that_captures_the_whole_brain_peak():
    spacing = (2.0, 1.0, 1.5)
    image, brain, ball = rimmed_ball(4.0, spacing)
    plain, _, _ = rimmed_ball(0.0, spacing)
    # The rim outnumbers the ball's white matter: the whole brain's mode is the fat's.
    assert wm_peak_statistics(image[brain])[0] > 250
    core = brain_core(brain, spacing, 6.0)
    assert core.any() and not (core & ~ball).any()
    out = wm_peak_core_in_brain(image, brain, spacing)
    peak, scale = wm_peak_statistics(np.clip(image[core], *np.percentile(image[core],
                                                                          (0.5, 99.5))))
    low, high = np.percentile(image[core], (0.5, 99.5))
    expected = (np.clip(image[brain], low, high) - peak) / scale
    np.testing.assert_allclose(out[brain], expected, rtol=1e-5, atol=1e-5)
    assert np.all(out[~brain] == 0)
    assert abs(peak - 100.0) < 2.0
    # Its white matter lands where wm-peak puts it in the ball without a rim.
    without = wm_peak_in_brain(plain, ball)
    deep = brain_core(ball, spacing, 12.0)
    assert abs(np.median(out[deep]) - np.median(without[deep])) < 0.1
    assert abs(np.median(wm_peak_in_brain(image, brain)[deep])
               - np.median(wm_peak_in_brain(plain, ball)[deep])) > 1.0
    with pytest.raises(ValueError, match="needs the voxel size"):
        normalize_in_brain(image, brain, "wm-peak-core")


def test_wm_peak_core_reads_a_brain_too_small_for_a_core_whole():
    image = np.random.default_rng(2).normal(100, 4, (6, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(wm_peak_core_in_brain(image, None, 2.0),
                                  wm_peak_in_brain(image, None))


@pytest.mark.parametrize("affine, canonical_spacing", [
    (np.diag([1.5, 2.0, 3.0, 1.0]), (1.5, 2.0, 3.0)),
    # Stored axes 0 and 1 are RAS y and x: read in canonical order, x has 2-mm voxels.
    (np.array([[0, 2.0, 0, 0], [1.5, 0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1]]), (2.0, 1.5, 3.0)),
])
def test_load_subject_reads_the_core_at_the_scans_own_voxel_size(tmp_path, affine,
                                                                 canonical_spacing):
    import nibabel as nib

    write_tiny_subjects(tmp_path, n=1, shape=(24, 24, 24))
    folder = next(tmp_path.iterdir())
    for path in folder.iterdir():
        image = nib.load(path)
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj), affine), path)
    subject = discover_subjects(tmp_path)[0]
    raw = load_subject(subject, normalize=False)
    core = load_subject(subject, normalize="wm-peak-core")
    for channel in range(3):
        expected = wm_peak_core_in_brain(raw.image[..., channel], raw.brain, canonical_spacing)
        np.testing.assert_allclose(core.image[..., channel], expected, atol=1e-5)
    assert not np.allclose(core.image, load_subject(subject, normalize="wm-peak").image)


@pytest.mark.parametrize("given, method", [
    (True, "zscore"), ("zscore", "zscore"), ("wm-peak", "wm-peak"),
    ("wm-peak-core", "wm-peak-core"), (False, None)])
def test_normalize_options(given, method):
    assert normalize_method(given) == method


def test_an_unknown_normalisation_is_refused_naming_the_choices(tmp_path):
    write_tiny_subjects(tmp_path, n=1)
    with pytest.raises(ValueError,
                       match="must be one of zscore, wm-peak, wm-peak-core, got 'minmax'"):
        load_subject(discover_subjects(tmp_path)[0], normalize="minmax")


def test_load_subject_and_the_cache_apply_the_chosen_normalisation(tmp_path):
    write_tiny_subjects(tmp_path / "data", n=1)
    subject = discover_subjects(tmp_path / "data")[0]
    raw = load_subject(subject, normalize=False)
    peak = load_subject(subject, normalize="wm-peak")
    for channel in range(3):
        expected = wm_peak_in_brain(raw.image[..., channel], raw.brain)
        np.testing.assert_allclose(peak.image[..., channel], expected, atol=1e-6)
    cached = {m: cached_subject(subject, tmp_path / "cache", normalize=m)
              for m in ("zscore", "wm-peak")}
    np.testing.assert_allclose(cached["wm-peak"].image, peak.image, atol=1e-6)
    np.testing.assert_allclose(cached["zscore"].image, load_subject(subject).image, atol=1e-6)
    # Two entries; a z-scored entry has the key it had before the choice existed (True).
    entries = sorted((tmp_path / "cache").iterdir())
    assert len(entries) == 2
    settings = [json.loads((e / "volume.json").read_text())["settings"]["normalize"]
                for e in entries]
    assert sorted(map(str, settings)) == ["True", "wm-peak"]


def test_segment_subject_normalises_as_the_model_was_trained(tmp_path):
    write_tiny_subjects(tmp_path, n=1, shape=(16, 16, 16))
    subject = discover_subjects(tmp_path)[0]
    keras.utils.set_random_seed(0)
    # Voxel-wise: lesion probability is a function of the normalised intensities.
    inputs = keras.Input((None, None, None, 3))
    network = keras.Model(inputs, keras.layers.Conv3D(2, 1, activation="softmax")(inputs))
    model = with_scan_spec(network, ["T1W", "T2W", "FLAIR"], intensity_normalization="wm-peak")
    probability, _ = segment_subject(model, subject, canonical=True)
    volume = load_subject(subject, normalize="wm-peak")
    expected = predict_volume(model, volume.image)[..., 1] * volume.brain
    np.testing.assert_allclose(probability, expected, atol=1e-5)
    zscored = load_subject(subject).image
    assert np.abs(predict_volume(model, zscored)[..., 1] * volume.brain - expected).max() > 1e-3


def test_a_run_recorded_before_the_choice_resumes_as_zscore():
    wanted = {"alpha": 0.3, "intensity_normalization": "zscore",
              "data": {"train": {}, "val": {}}}
    old = {"alpha": 0.3, "data": {"train": {}, "val": {}}}
    assert differences(old, wanted) == []
    assert differences(old, {**wanted, "intensity_normalization": "wm-peak"}) == [
        "intensity_normalization"]


@pytest.mark.parametrize("normalization", ["zscore", "wm-peak"])
def test_another_scanners_intensity_scale_gives_the_same_segmentation(tmp_path, normalization):
    import nibabel as nib

    write_tiny_subjects(tmp_path / "a", n=1, shape=(16, 16, 16))
    folder = next((tmp_path / "a").iterdir())
    scaled = tmp_path / "b" / folder.name
    scaled.mkdir(parents=True)
    for path in folder.iterdir():
        image = nib.load(path)
        data = np.asarray(image.dataobj)
        if path.name != "consensus_gt.nii.gz":  # skull-stripped: 0 stays 0, the rest x 750
            data = (data * 750.0).astype(np.float32)
        nib.save(nib.Nifti1Image(data, image.affine), scaled / path.name)
    keras.utils.set_random_seed(1)
    inputs = keras.Input((None, None, None, 3))
    network = keras.Model(inputs, keras.layers.Conv3D(2, 1, activation="softmax")(inputs))
    model = with_scan_spec(network, ["T1W", "T2W", "FLAIR"],
                           intensity_normalization=normalization)
    one, two = (segment_subject(model, discover_subjects(tmp_path / name)[0])[0]
                for name in ("a", "b"))
    np.testing.assert_allclose(one, two, atol=1e-4)
