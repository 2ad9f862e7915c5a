"""tversky_keras.inference: whole-volume and sliding-window inference, outputs in the scan's geometry."""

import json
import math
import os
import socket
import subprocess
import sys
import threading
import time

import keras
import nibabel as nib
import numpy as np
import pytest

from tiny_data import write_tiny_subjects
from tversky_keras import cli, inference
from tversky_keras.cli import main
from tversky_keras.data import Geometry, discover_subjects
from tversky_keras.inference import (MemberSums, binary_entropy, gaussian_importance,
                                     input_multiple, lesion_probability, predict_volume,
                                     segment_subject, uncertainty_maps, window_starts,
                                     write_segmentation)
from tversky_keras.models import unet3d
from tversky_keras.scan_spec import with_scan_spec

SHAPE = (9, 10, 7)  # no size a multiple of 2: a U-Net cannot take it unpadded


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(3)
    network = unet3d(input_shape=(None, None, None, 3), base_filters=2, depth=2)
    return with_scan_spec(network, ["T1W", "T2W", "FLAIR"], spacing=None, multiple_of=4)


@pytest.mark.parametrize("size, window, step, expected", [
    (10, 4, 2, [0, 2, 4, 6]),      # 6 = 10 - 4: the last window is flush with the end
    (10, 4, 3, [0, 3, 6]),
    (11, 4, 3, [0, 3, 6, 7]),
    (4, 4, 2, [0]),
    (3, 4, 2, [0]),                 # smaller than the window: padded, one window
])
def test_window_starts_cover_the_axis(size, window, step, expected):
    starts = window_starts(size, window, step)
    assert starts == expected
    covered = np.zeros(max(size, window), bool)
    for s in starts:
        covered[s:s + window] = True
    assert covered[:size].all()


def test_gaussian_importance_peaks_in_the_centre():
    w = gaussian_importance((8, 8, 8))
    assert w.shape == (8, 8, 8) and w.max() == pytest.approx(1.0)
    assert w[3:5, 3:5, 3:5].min() > w[0, 0, 0] > 0
    np.testing.assert_allclose(w, w[::-1, ::-1, ::-1])


def test_sliding_window_equals_whole_volume_for_one_window(model):
    image = np.random.default_rng(0).standard_normal((16, 20, 12, 3)).astype(np.float32)
    whole = predict_volume(model, image)
    single = predict_volume(model, image, window=(16, 20, 12))
    np.testing.assert_allclose(single, whole, atol=1e-6)


def test_sliding_window_close_to_whole_volume_with_overlap(model):
    # The receptive field crosses window borders, so agreement is approximate;
    # with Gaussian blending and 50% overlap the difference stays small.
    image = np.random.default_rng(1).standard_normal((24, 24, 24, 3)).astype(np.float32)
    whole = predict_volume(model, image)
    windows = predict_volume(model, image, window=(16, 16, 16), overlap=0.5, batch_size=3)
    assert windows.shape == whole.shape == (24, 24, 24, 2)
    np.testing.assert_allclose(windows.sum(-1), 1.0, atol=1e-5)
    assert np.abs(windows - whole).mean() < 0.02


def _identity_model(channels):
    """A 'model' whose probabilities are its input: every blend of it must return the image."""
    inputs = keras.Input((None, None, None, channels))
    return keras.Model(inputs, keras.layers.Identity()(inputs))


@pytest.mark.parametrize("shape, message", [((0, 8, 8, 3), "non-empty"), ((8, 8, 8), "non-empty"),
                                            ((8, 8, 8, 2), "takes 3 input channels, the image "
                                                           "has 2")])
def test_an_image_the_model_cannot_take_is_refused(model, shape, message):
    with pytest.raises(ValueError, match=message):
        predict_volume(model, np.zeros(shape, np.float32), window=(8, 8, 8))


@pytest.mark.parametrize("device_windows", [True, False])
@pytest.mark.parametrize("window, overlap, batch_size, blend", [
    ((8, 8, 8), 0.5, 1, "gaussian"),
    ((8, 12, 4), 0.25, 5, "gaussian"),   # 5 does not divide the 12 windows: a padded last batch
    ((8, 8, 8), 0.0, 2, "constant"),
])
def test_blending_a_model_that_returns_its_input_gives_the_input(window, overlap, batch_size,
                                                                  blend, device_windows):
    # Each voxel is a weighted mean of identical values, whatever the weights and overlaps:
    # a window put in the wrong place, counted twice or missed changes the result.
    image = np.random.default_rng(2).uniform(0, 1, (13, 21, 10, 2)).astype(np.float32)
    out = predict_volume(_identity_model(2), image, window=window, overlap=overlap,
                         batch_size=batch_size, blend=blend, multiple_of=4,
                         device_windows=device_windows)
    np.testing.assert_allclose(out, image, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch_size, overlap", [(1, 0.5), (5, 0.5), (5, 0.75)])  # 36, 112 windows
def test_device_windows_equal_the_host_loop(model, batch_size, overlap):
    image = np.random.default_rng(3).standard_normal((20, 28, 13, 3)).astype(np.float32)
    options = dict(window=(8, 16, 8), overlap=overlap, batch_size=batch_size)
    host = predict_volume(model, image, device_windows=False, **options)
    device = predict_volume(model, image, **options)
    np.testing.assert_allclose(device, host, rtol=1e-5, atol=1e-6)
    assert np.abs(host - 0.5).max() > 1e-3  # not a constant map: the comparison can fail


def test_a_model_without_a_known_class_count_is_blended_through_the_host():
    image = np.random.default_rng(4).uniform(0, 1, (9, 9, 9, 2)).astype(np.float32)
    model = _identity_model(None)  # output channels unknown until called
    assert model.output_shape[-1] is None
    out = predict_volume(model, image, window=(8, 8, 8), overlap=0.5, multiple_of=4)
    np.testing.assert_allclose(out, image, rtol=1e-5, atol=1e-6)


def test_device_windows_let_a_model_and_its_compiled_loop_go():
    import gc
    import weakref

    from tversky_keras import inference

    refs = []
    for seed in range(3):
        keras.utils.set_random_seed(seed)
        network = unet3d(input_shape=(None, None, None, 3), base_filters=2, depth=1)
        predict_volume(network, np.zeros((6, 6, 6, 3), np.float32), window=(4, 4, 4))
        refs.append(weakref.ref(network))
        del network
    gc.collect()
    assert [ref() for ref in refs] == [None] * 3  # nothing keeps the models alive
    assert not any(ref() in inference._COMPILED for ref in refs)


def test_device_windows_trace_once_for_every_volume_shape(model):
    from tversky_keras import inference

    for shape in ((16, 16, 16, 3), (24, 20, 9, 3), (8, 8, 8, 3)):
        predict_volume(model, np.zeros(shape, np.float32), window=(8, 8, 8), batch_size=2)
    function = inference._compiled_window_loop(model, (8, 8, 8), 2, 3)
    assert function.experimental_get_tracing_count() == 1


def test_whole_volume_pads_sizes_that_are_not_multiples(model):
    image = np.random.default_rng(2).standard_normal((13, 18, 9, 3)).astype(np.float32)
    probs = predict_volume(model, image)
    assert probs.shape == (13, 18, 9, 2)
    padded = np.zeros((16, 20, 12, 3), np.float32)
    padded[:13, :18, :9] = image
    np.testing.assert_allclose(probs, model.predict_on_batch(padded[None])[0][:13, :18, :9],
                               atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"window": (10, 16, 16)}, "multiple of 4"),
    ({"window": (16, 16, 16), "overlap": 1.0}, "overlap"),
    ({"window": (16, 16, 16), "blend": "median"}, "blend"),
    ({"window": (16, 16, 16), "batch_size": 0}, "batch_size=0: must be an integer >= 1"),
    ({"window": (16, 16, 16), "batch_size": 2.0}, "batch_size=2.0: must be an integer"),
    ({"window": (16.5, 16, 16)}, "sizes must be integers"),
])
def test_bad_inference_options_are_refused(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        predict_volume(model, np.zeros((16, 16, 16, 3), np.float32), **kwargs)


def test_outputs_have_the_input_shape_and_affine(model, tmp_path):
    # An oblique-free but flipped (LPS-like) affine checks the reorientation round trip.
    affine = np.diag([-2.0, -2.0, 2.0, 1.0])
    write_tiny_subjects(tmp_path / "data", n=1, shape=(18, 22, 14), affine=affine)
    subject = discover_subjects(tmp_path / "data")[0]
    probability, geometry = segment_subject(model, subject)
    prob_path, mask_path = write_segmentation(probability, geometry, tmp_path / "out", 0.5)
    source = nib.load(subject.images["FLAIR"])
    for path, dtype in ((prob_path, np.float32), (mask_path, np.uint8)):
        written = nib.load(path)
        assert written.shape == source.shape
        np.testing.assert_allclose(written.affine, source.affine)
        assert written.get_data_dtype() == dtype
    prob = nib.load(prob_path).get_fdata()
    mask = np.asarray(nib.load(mask_path).dataobj)
    np.testing.assert_array_equal(mask, (prob >= 0.5).astype(np.uint8))
    # Outside the brain (zero in every modality) the probability is 0 by construction.
    assert prob[np.asarray(source.dataobj) == 0].max() == 0.0


def test_missing_modality_names_what_the_model_expects(model, tmp_path):
    write_tiny_subjects(tmp_path / "data", n=1)
    subject = discover_subjects(tmp_path / "data")[0]
    del subject.images["T2W"]
    with pytest.raises(ValueError, match="expects modalities T1W, T2W, FLAIR.*no T2W"):
        segment_subject(model, subject)


def _direct(model, image):
    """The model's probabilities for one image, called directly (no padding needed)."""
    return np.asarray(keras.ops.convert_to_numpy(model(image[None], training=False)))[0]


def test_mirroring_averages_the_prediction_of_every_flip(model):
    # Sizes that are multiples of 4, so no padding: the expectation is the
    # model called on the image and on its flips, each flipped back.
    image = np.random.default_rng(1).standard_normal((16, 12, 8, 3)).astype(np.float32)
    flips = [(), (0,), (2,), (0, 2)]
    expected = np.mean([np.flip(_direct(model, np.flip(image, axes)), axes) if axes
                        else _direct(model, image) for axes in flips], axis=0)
    mirrored = predict_volume(model, image, mirror_axes=(2, 0))
    np.testing.assert_allclose(mirrored, expected, atol=1e-6)
    # The random network is not symmetric: mirroring changes its answer.
    assert np.abs(mirrored - _direct(model, image)).max() > 1e-3
    # Through the sliding windows too: the same average of windowed predictions.
    windowed = [predict_volume(model, np.flip(image, (1,)), window=(8, 8, 8)), None]
    windowed[1] = predict_volume(model, image, window=(8, 8, 8))
    expected = (np.flip(windowed[0], (1,)) + windowed[1]) / 2
    np.testing.assert_allclose(predict_volume(model, image, window=(8, 8, 8), mirror_axes=(1,)),
                               expected, atol=1e-6)


def test_mirroring_leaves_a_voxelwise_model_unchanged():
    image = np.random.default_rng(2).random((8, 12, 16, 3)).astype(np.float32)
    identity = _identity_model(3)
    np.testing.assert_allclose(predict_volume(identity, image, mirror_axes=(0, 1, 2)), image,
                               atol=1e-6)


@pytest.mark.parametrize("axes", [(3,), (0, 0), ("x",), (True,), None, (-1,)])
def test_bad_mirror_axes_are_refused(model, axes):
    with pytest.raises(ValueError, match="mirror_axes"):
        predict_volume(model, np.zeros((8, 8, 8, 3), np.float32), mirror_axes=axes)


def second_model_and_subject(tmp_path):
    """A second untrained model with the same contract as ``model``, and one tiny subject."""
    keras.utils.set_random_seed(4)
    other = with_scan_spec(unet3d(input_shape=(None, None, None, 3), base_filters=2, depth=2),
                           ["T1W", "T2W", "FLAIR"], spacing=None, multiple_of=4)
    write_tiny_subjects(tmp_path / "data", n=1)
    return other, discover_subjects(tmp_path / "data")[0]


def test_an_ensemble_averages_its_models_probabilities(model, tmp_path):
    other, subject = second_model_and_subject(tmp_path)
    one, geometry = segment_subject(model, subject)
    two, _ = segment_subject(other, subject)
    both, both_geometry = segment_subject([model, other], subject)
    np.testing.assert_allclose(both, (one + two) / 2, atol=1e-6)
    assert np.abs(one - two).max() > 1e-3 and both_geometry.shape == geometry.shape
    # Models that expect another scan cannot vote together.
    elsewhere = with_scan_spec(unet3d(input_shape=(None, None, None, 3), base_filters=2, depth=2),
                               ["T1W", "T2W", "FLAIR"], spacing=2.0, multiple_of=4)
    with pytest.raises(ValueError, match="model 2 of the ensemble expects another scan"):
        segment_subject([model, elsewhere], subject)
    with pytest.raises(ValueError, match="no model given"):
        segment_subject([], subject)


def test_a_sliding_window_larger_than_any_patch_is_refused():
    model = keras.Sequential([keras.Input((None, None, None, 1)),
                              keras.layers.Conv3D(2, 1, activation="softmax")])
    with pytest.raises(ValueError, match="at most 512"):
        predict_volume(model, np.zeros((8, 8, 8, 1), np.float32), window=(100000,) * 3)


def test_predict_refuses_to_write_a_non_finite_probability_map(tiny_data, tiny_model, tmp_path,
                                                               capsys):
    model = keras.saving.load_model(tiny_model)
    model.weights[-1].assign(np.full(model.weights[-1].shape, np.nan, "float32"))
    model.save(tmp_path / "nan.keras")
    assert cli.main(["predict", "--model", str(tmp_path / "nan.keras"),
                     "--input", str(tiny_data / "sub00"), "--out", str(tmp_path / "out")]) == 1
    assert "non-finite probabilities" in capsys.readouterr().err
    assert not (tmp_path / "out" / "probability.nii.gz").exists()


def geometry(affine=np.diag([2.0, 2.0, 2.0, 1.0])):
    return Geometry.from_image(nib.Nifti1Image(np.zeros(SHAPE, np.float32), affine))


def probabilities(seed):
    return np.random.default_rng(seed).random(SHAPE).astype(np.float32)


def read(path):
    return np.asarray(nib.load(path).dataobj)


def published(folder):
    """The visible files of an output folder, once no temporary folder or held lock is left."""
    hidden = [p for p in folder.iterdir() if p.name.startswith(".")]
    assert [p.name for p in hidden if p.name != ".segmentation.lock"] == []
    assert all(not any(p.iterdir()) for p in hidden)   # the lock is released
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_a_segmentation_replaces_both_files_and_writes_its_manifest_last(tmp_path):
    write_segmentation(probabilities(0), geometry(), tmp_path, threshold=0.5)
    new = probabilities(1)
    write_segmentation(new, geometry(), tmp_path, threshold=0.3, about={"model": "m.keras"})
    np.testing.assert_array_equal(read(tmp_path / "probability.nii.gz"), new)
    np.testing.assert_array_equal(read(tmp_path / "mask.nii.gz"), new >= 0.3)
    manifest = json.loads((tmp_path / "segmentation.json").read_text())
    assert manifest["threshold"] == 0.3 and manifest["model"] == "m.keras"
    assert published(tmp_path) == ["mask.nii.gz", "probability.nii.gz", "segmentation.json"]


@pytest.mark.parametrize("fail_at", [1, 2])
def test_a_kill_while_publishing_never_leaves_a_new_map_beside_an_old_mask(
        tmp_path, monkeypatch, fail_at):
    old = probabilities(0)
    write_segmentation(old, geometry(), tmp_path)
    renames = []
    real_replace = type(tmp_path).replace

    def dying_replace(self, target):
        renames.append(target)
        if len(renames) == fail_at:
            raise KeyboardInterrupt  # the process dies here
        return real_replace(self, target)

    monkeypatch.setattr(type(tmp_path), "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        write_segmentation(probabilities(1), geometry(), tmp_path)
    monkeypatch.undo()
    assert not (tmp_path / "segmentation.json").exists()  # the set is marked incomplete
    # The old mask went before any new file came: no new map beside an old mask.
    assert not (tmp_path / "mask.nii.gz").exists()
    if fail_at == 2:  # the new map had landed
        np.testing.assert_array_equal(read(tmp_path / "probability.nii.gz"), probabilities(1))
    else:
        assert not (tmp_path / "probability.nii.gz").exists()
    # The next write cleans the leftovers and publishes a complete pair.
    write_segmentation(old, geometry(), tmp_path)
    assert published(tmp_path) == ["mask.nii.gz", "probability.nii.gz", "segmentation.json"]


@pytest.mark.parametrize("threshold", [2.0, -1.0, 0.0])
def test_a_threshold_outside_0_1_is_refused_before_any_work(threshold, tmp_path, capsys):
    assert main(["predict", "--model", str(tmp_path / "never-read.keras"), "--input",
                 str(tmp_path), "--out", str(tmp_path / "out"),
                 "--threshold", str(threshold)]) == 1
    assert "must lie in (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="must lie in"):
        write_segmentation(probabilities(0), geometry(), tmp_path / "w", threshold=threshold)


@pytest.fixture(scope="module")
def hand_built_model(tmp_path_factory):
    """``unet3d`` compiled and saved as a user would, with no ScanSpec."""
    keras.utils.set_random_seed(3)
    model = unet3d(input_shape=(None, None, None, 3), n_classes=2, base_filters=2, depth=3)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    path = tmp_path_factory.mktemp("hand") / "model.keras"
    model.save(path)
    return path


def test_a_hand_built_model_gets_its_size_multiple_from_its_poolings(hand_built_model):
    model = keras.saving.load_model(hand_built_model, compile=False)
    assert input_multiple(model) == 8
    wrapped = with_scan_spec(model, ["T1W", "T2W", "FLAIR"], multiple_of=4)
    assert input_multiple(wrapped) == 4  # a ScanSpec wins


def test_predict_runs_a_hand_built_model_on_an_odd_shape_given_its_modalities(
        hand_built_model, tmp_path, capsys):
    folder = write_tiny_subjects(tmp_path / "data", n=1, shape=(19, 23, 13))[0]
    out = tmp_path / "out"
    assert main(["predict", "--model", str(hand_built_model), "--input", str(folder),
                 "--out", str(out)]) == 1
    assert "give its modalities" in capsys.readouterr().err
    assert main(["predict", "--model", str(hand_built_model), "--input", str(folder),
                 "--out", str(out), "--modalities", "T1W,T2W,FLAIR"]) == 0
    assert read(out / "probability.nii.gz").shape == (19, 23, 13)
    # Windows that the architecture cannot take are a message, not a TensorFlow dump.
    assert main(["predict", "--model", str(hand_built_model), "--input", str(folder),
                 "--out", str(out), "--modalities", "T1W,T2W,FLAIR", "--window", "12"]) == 1
    assert "each a multiple of 8" in capsys.readouterr().err


def test_segment_subject_resamples_to_the_models_voxel_size(tmp_path, monkeypatch):
    folder = write_tiny_subjects(tmp_path / "data", n=1)[0]  # 2-mm scans
    network = unet3d(input_shape=(None, None, None, 3), base_filters=2, depth=2)
    model = with_scan_spec(network, ["T1W", "T2W", "FLAIR"], spacing=4.0, multiple_of=4)
    seen = []
    real = inference.predict_volume
    monkeypatch.setattr(inference, "predict_volume",
                        lambda m, image, **k: seen.append(image.shape) or real(m, image, **k))
    from tversky_keras.data import subject_from_folder

    probability, geometry = inference.segment_subject(model, subject_from_folder(folder))
    assert seen == [(12, 12, 8, 3)]  # 20x24x16 at 2 mm is 10x12x8 at 4 mm, padded to 4s
    assert probability.shape == geometry.shape == (20, 24, 16)


def entropy_by_hand(p):
    return 0.0 if p in (0.0, 1.0) else -p * math.log(p) - (1 - p) * math.log(1 - p)


# members -> (predictive entropy H[p̄], mutual information H[p̄] - mean H[p_m]), by hand
UNCERTAINTY_CASES = [
    ([0.2, 0.8], (math.log(2), math.log(2) - entropy_by_hand(0.2))),  # p̄ = 0.5, H = ln 2
    ([0.0, 1.0], (math.log(2), math.log(2))),    # certain members that disagree: all knowledge
    ([0.3, 0.3], (entropy_by_hand(0.3), 0.0)),   # members that agree: no knowledge uncertainty
    ([1.0, 1.0, 1.0], (0.0, 0.0)),
    ([0.1, 0.2, 0.6], (entropy_by_hand(0.3),     # p̄ = 0.3
                       entropy_by_hand(0.3) - (entropy_by_hand(0.1) + entropy_by_hand(0.2)
                                               + entropy_by_hand(0.6)) / 3)),
]


@pytest.mark.parametrize("members, expected", UNCERTAINTY_CASES)
def test_uncertainty_maps_equal_the_hand_computation(members, expected):
    stack = np.array(members)[:, None]                        # one voxel
    maps = uncertainty_maps(stack)
    np.testing.assert_allclose([maps["entropy"][0], maps["mutual_information"][0]], expected,
                               atol=1e-6)
    assert maps["members"] == len(members)
    sums = MemberSums()
    for member in stack:
        sums.add(member)
    running = sums.maps()
    for name in ("entropy", "mutual_information"):
        np.testing.assert_allclose(running[name], maps[name], atol=1e-7)
    assert running["mutual_information"].min() >= 0


def test_one_member_has_entropy_but_no_mutual_information():
    maps = uncertainty_maps(np.array([[0.5, 0.0]]))
    np.testing.assert_allclose(maps["entropy"], [math.log(2), 0.0], atol=1e-7)
    assert "mutual_information" not in maps
    np.testing.assert_allclose(binary_entropy([0.0, 1.0, 0.2]), [0, 0, entropy_by_hand(0.2)])
    with pytest.raises(ValueError, match="either the members' stack"):
        uncertainty_maps(np.ones((2, 1)), mean=np.ones(1), mean_entropy=np.ones(1), count=2)
    with pytest.raises(ValueError, match="at least one member"):
        MemberSums().maps()


def test_predict_volume_adds_each_mirror_as_a_member(model):
    image = np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype(np.float32)
    sums = MemberSums()
    probs = predict_volume(model, image, mirror_axes=(0, 2), members=sums)
    flips = [(), (0,), (2,), (0, 2)]
    stack = [lesion_probability(np.flip(predict_volume(model, np.flip(image, f)), f))
             for f in flips]
    assert sums.count == 4
    expected = uncertainty_maps(np.stack(stack))
    running = sums.maps()
    np.testing.assert_allclose(running["entropy"], expected["entropy"], atol=1e-6)
    np.testing.assert_allclose(running["mutual_information"], expected["mutual_information"],
                               atol=1e-6)
    np.testing.assert_allclose(sums.probability / sums.count, lesion_probability(probs),
                               atol=1e-6)


def test_segment_subject_returns_uncertainty_in_the_scans_grid(model, tmp_path):
    other, subject = second_model_and_subject(tmp_path)
    plain, _ = segment_subject([model, other], subject, mirror_axes=(1,))
    probability, geometry, maps = segment_subject([model, other], subject, mirror_axes=(1,),
                                                  uncertainty=True)
    np.testing.assert_array_equal(probability, plain)
    assert maps["members"] == 4        # 2 models x 2 mirrors
    for name in ("entropy", "mutual_information"):
        assert maps[name].shape == geometry.shape and maps[name].dtype == np.float32
    # Spacing kept: the way back only reorders voxels, so H[p̄] is that of the probability.
    np.testing.assert_allclose(maps["entropy"], binary_entropy(probability), atol=1e-5)
    assert (maps["mutual_information"] >= 0).all()
    assert (maps["mutual_information"] <= maps["entropy"] + 1e-6).all()
    assert maps["mutual_information"].max() > 0


def two_lesions():
    """A probability map with a diagonal two-voxel lesion (26-connected) and a one-voxel one,
    and uncertainty maps that make the small lesion the more uncertain."""
    p = np.zeros(SHAPE, np.float32)
    p[1, 1, 1] = p[2, 2, 2] = 0.9
    p[6, 6, 4] = 0.6
    entropy = np.where(p > 0, 0.1, 0.0).astype(np.float32)
    entropy[6, 6, 4] = 0.5
    return p, {"entropy": entropy, "mutual_information": entropy / 4, "members": 2}


def test_a_segmentation_with_uncertainty_writes_the_maps_and_the_lesions(tmp_path):
    affine = np.array([[2.0, 0, 0, -10], [0, 2.0, 0, 5], [0, 0, 2.0, 1], [0, 0, 0, 1]])
    p, maps = two_lesions()
    write_segmentation(p, geometry(affine), tmp_path, uncertainty=maps)
    assert published(tmp_path) == ["lesions.json", "mask.nii.gz", "probability.nii.gz",
                                   "segmentation.json", "uncertainty.nii.gz"]
    image = nib.load(tmp_path / "uncertainty.nii.gz")
    assert image.shape == (*SHAPE, 2) and image.get_data_dtype() == np.float32
    np.testing.assert_array_equal(image.affine, affine)
    np.testing.assert_array_equal(read(tmp_path / "uncertainty.nii.gz")[..., 0], maps["entropy"])
    np.testing.assert_array_equal(read(tmp_path / "uncertainty.nii.gz")[..., 1],
                                  maps["mutual_information"])
    rows = json.loads((tmp_path / "lesions.json").read_text())["lesions"]
    # The one-voxel lesion (entropy 0.5) first; voxels of 2 mm: 0.008 mL each.
    assert [r["id"] for r in rows] == [2, 1] and [r["voxels"] for r in rows] == [1, 2]
    np.testing.assert_allclose([r["volume_ml"] for r in rows], [0.008, 0.016])
    assert rows[0]["centre_voxel"] == [6, 6, 4] and rows[1]["centre_voxel"] == [1.5, 1.5, 1.5]
    np.testing.assert_allclose(rows[0]["centre_world"], [12 - 10, 12 + 5, 8 + 1])
    np.testing.assert_allclose(rows[1]["centre_world"], [3 - 10, 3 + 5, 3 + 1])
    np.testing.assert_allclose([rows[0]["mean_probability"], rows[0]["mean_entropy"],
                                rows[0]["mean_mutual_information"]], [0.6, 0.5, 0.125],
                               rtol=1e-6)
    np.testing.assert_allclose([rows[1]["mean_probability"], rows[1]["mean_entropy"]],
                               [0.9, 0.1], rtol=1e-6)
    manifest = json.loads((tmp_path / "segmentation.json").read_text())
    assert manifest["files"] == ["probability.nii.gz", "mask.nii.gz", "uncertainty.nii.gz",
                                 "lesions.json"]
    assert manifest["uncertainty"]["members"] == 2
    # A later set without uncertainty takes the old maps and lesions away with the old pair.
    write_segmentation(p, geometry(affine), tmp_path)
    assert published(tmp_path) == ["mask.nii.gz", "probability.nii.gz", "segmentation.json"]
    with pytest.raises(ValueError, match="at least two members"):
        write_segmentation(p, geometry(), tmp_path, uncertainty=uncertainty_maps(p[None]))


def writer_set(writer):
    """Writer ``writer``'s set: its number is in the mask's voxel count, the probability's
    background and both uncertainty maps, so a mixed set shows."""
    p = np.full(SHAPE, writer / 1000, np.float32)
    p.flat[:writer + 1] = 1.0
    maps = {"entropy": np.full(SHAPE, writer / 100, np.float32),
            "mutual_information": np.full(SHAPE, writer / 200, np.float32), "members": 2}
    return p, maps


def writer_of(folder):
    """The writer of a published set, after checking that every file is that writer's."""
    writer = json.loads((folder / "segmentation.json").read_text())["writer"]
    p, maps = writer_set(writer)
    np.testing.assert_array_equal(read(folder / "probability.nii.gz"), p)
    assert read(folder / "mask.nii.gz").sum() == writer + 1
    np.testing.assert_array_equal(read(folder / "uncertainty.nii.gz"),
                                  np.stack([maps["entropy"], maps["mutual_information"]], -1))
    rows = json.loads((folder / "lesions.json").read_text())["lesions"]
    assert sum(r["voxels"] for r in rows) == writer + 1
    return writer


@pytest.mark.parametrize("fail_at", [1, 2, 3, 4])
def test_a_kill_while_publishing_with_uncertainty_leaves_no_mix(tmp_path, monkeypatch, fail_at):
    p, maps = writer_set(3)
    write_segmentation(p, geometry(), tmp_path, uncertainty=maps, about={"writer": 3})
    renames = []
    real_replace = type(tmp_path).replace

    def dying_replace(self, target):
        renames.append(target.name)
        if len(renames) == fail_at:
            raise KeyboardInterrupt  # the process dies here
        return real_replace(self, target)

    monkeypatch.setattr(type(tmp_path), "replace", dying_replace)
    new, new_maps = writer_set(5)
    with pytest.raises(KeyboardInterrupt):
        write_segmentation(new, geometry(), tmp_path, uncertainty=new_maps,
                           about={"writer": 5})
    monkeypatch.undo()
    assert not (tmp_path / "segmentation.json").exists()   # the set is marked incomplete
    # Only the new files renamed before the kill are there: nothing of the old set.
    assert published(tmp_path) == sorted(renames[:fail_at - 1])
    if fail_at > 1:
        np.testing.assert_array_equal(read(tmp_path / "probability.nii.gz"), new)
    write_segmentation(new, geometry(), tmp_path, uncertainty=new_maps, about={"writer": 5})
    assert writer_of(tmp_path) == 5


def test_concurrent_writers_all_publish_and_leave_one_consistent_set(tmp_path):
    errors = []

    def write(writer):
        try:
            p, maps = writer_set(writer)
            write_segmentation(p, geometry(), tmp_path, uncertainty=maps,
                               about={"writer": writer})
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(f"writer {writer}: {error!r}")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert writer_of(tmp_path) in range(20)
    assert published(tmp_path) == ["lesions.json", "mask.nii.gz", "probability.nii.gz",
                                   "segmentation.json", "uncertainty.nii.gz"]


def test_only_stale_temporary_folders_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    host, token = socket.gethostname(), "0" * 32
    names = {"dead": f".segmentation-{host}-{int(dead.stdout)}-{token}.tmp",
             "live": f".segmentation-{host}-{os.getpid()}-{token}.tmp",
             "elsewhere": f".segmentation-other-host-1-{token}.tmp",
             "old elsewhere": f".segmentation-other-host-2-{token}.tmp",
             "old format": f".segmentation-{token}.tmp"}
    for name in names.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "probability.nii.gz").write_bytes(b"partial")
    day_ago = time.time() - 86400
    for key in ("old elsewhere", "old format"):
        os.utime(tmp_path / names[key], (day_ago, day_ago))
    write_segmentation(probabilities(0), geometry(), tmp_path)
    left = {key for key, name in names.items() if (tmp_path / name).exists()}
    assert left == {"live", "elsewhere"}   # a writer that may still be filling its folder


@pytest.mark.parametrize("overlap, expected", [(0.5, 36), (0.75, 112), (0.0, 3 * 2 * 2)])
def test_window_count_by_hand(overlap, expected):
    # 20 x 28 x 13 in windows of 8 x 16 x 8: at overlap 0.5 steps 4, 8, 4 give starts
    # 0,4,8,12 | 0,8,12 | 0,4,5; at 0.75 steps 2, 4, 2 give 7 x 4 x 4; at 0 steps 8, 16, 8
    # give 0,8,12 | 0,12 | 0,5 (the last window flush with the end).
    assert inference.window_count((20, 28, 13), (8, 16, 8), overlap) == expected


def test_the_batch_is_capped_at_the_windows_there_are(model, monkeypatch):
    """A batch size far above the windows of a scan predicts each window once, in batches
    of at most that many (no zero-filled windows), on the device and the host loop alike."""
    image = np.random.default_rng(4).standard_normal((8, 8, 8, 3)).astype(np.float32)
    seen = []
    original = inference.window_sums
    monkeypatch.setattr(inference, "window_sums", lambda m, v, corners, w, batch_size: (
        seen.append((len(corners), batch_size)) or original(m, v, corners, w, batch_size)))
    expected = predict_volume(model, image, window=(8, 8, 8), batch_size=1)
    capped = predict_volume(model, image, window=(8, 8, 8), batch_size=100_000)
    np.testing.assert_allclose(capped, expected, rtol=1e-6, atol=1e-6)
    assert seen == [(1, 1), (1, 1)]
    shapes = []
    host = model.predict_on_batch
    monkeypatch.setattr(model, "predict_on_batch", lambda batch: shapes.append(batch.shape[0])
                        or host(batch), raising=False)
    predict_volume(model, image, window=(8, 8, 8), batch_size=100_000, device_windows=False)
    assert shapes == [1]


def test_many_windows_are_counted_aloud_and_refused_above_the_bound(model):
    image = np.zeros((20, 28, 13, 3), np.float32)
    lines = []
    predict_volume(model, image, window=(8, 16, 8), overlap=0.5, mirror_axes=(0,),
                   max_window_factor=20, report=lines.append)
    assert lines == ["36 windows of 8x16x8 per prediction, 2 predictions (mirrored)",
                     "prediction 1/2 done", "prediction 2/2 done"]
    # Overlap 0.99: steps of 1 voxel, 13 x 13 x 6 = 1,014 windows, 28 times 36.
    with pytest.raises(ValueError, match=r"cuts 1,014 windows .* 28 times the 36 at overlap "
                                         r"0.5: .*--force"):
        predict_volume(model, image, window=(8, 16, 8), overlap=0.99, max_window_factor=20)
    assert inference.window_count(image.shape[:3], (8, 16, 8), 0.99) == 1014


def test_a_model_that_outputs_logits_is_refused_not_clipped(tiny_data):
    """Outputs far outside [0, 1] are not probabilities: clipping them to 0 and 1 would
    hand a threshold a map that means nothing."""
    inputs = keras.Input((None, None, None, 3))
    logits = keras.layers.Conv3D(1, 1, kernel_initializer="ones")(inputs)  # no activation
    model = keras.Model(inputs, logits)
    subject = discover_subjects(tiny_data)[0]
    with pytest.raises(ValueError, match=r"outputs run from .* not probabilities in \[0, 1\]; "
                                         r"end it with a softmax or sigmoid"):
        segment_subject(model, subject, modalities=["T1W", "T2W", "FLAIR"])


def test_a_fixed_input_model_without_a_window_is_told_to_use_one():
    inputs = keras.Input((8, 8, 8, 3))
    model = keras.Model(inputs, keras.layers.Conv3D(2, 1, activation="softmax")(inputs))
    with pytest.raises(ValueError, match=r"takes inputs of 8x8x8 voxels only: .*--window 8,8,8"):
        predict_volume(model, np.zeros((12, 12, 12, 3), np.float32), multiple_of=4)
    out = predict_volume(model, np.zeros((12, 12, 12, 3), np.float32), window=(8, 8, 8),
                         multiple_of=4)
    assert out.shape == (12, 12, 12, 2)
