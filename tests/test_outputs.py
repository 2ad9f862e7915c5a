"""predict and evaluate against silent-wrong cases: paired outputs, geometry, thresholds,
models built by hand."""

import json
import re

import keras
import nibabel as nib
import numpy as np
import pytest

from tiny_data import write_tiny_subjects
from tversky_keras import inference
from tversky_keras.cli import main
from tversky_keras.data import Geometry
from tversky_keras.inference import input_multiple, write_segmentation
from tversky_keras.models import unet3d
from tversky_keras.scan_spec import with_scan_spec

SHAPE = (9, 10, 7)  # no size a multiple of 2: a U-Net cannot take it unpadded


def geometry(affine=np.diag([2.0, 2.0, 2.0, 1.0])):
    return Geometry.from_image(nib.Nifti1Image(np.zeros(SHAPE, np.float32), affine))


def probabilities(seed):
    return np.random.default_rng(seed).random(SHAPE).astype(np.float32)


def read(path):
    return np.asarray(nib.load(path).dataobj)


def test_a_segmentation_replaces_both_files_and_writes_its_manifest_last(tmp_path):
    write_segmentation(probabilities(0), geometry(), tmp_path, threshold=0.5)
    new = probabilities(1)
    write_segmentation(new, geometry(), tmp_path, threshold=0.3, about={"model": "m.keras"})
    np.testing.assert_array_equal(read(tmp_path / "probability.nii.gz"), new)
    np.testing.assert_array_equal(read(tmp_path / "mask.nii.gz"), new >= 0.3)
    manifest = json.loads((tmp_path / "segmentation.json").read_text())
    assert manifest["threshold"] == 0.3 and manifest["model"] == "m.keras"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "mask.nii.gz", "probability.nii.gz", "segmentation.json"]


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
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "mask.nii.gz", "probability.nii.gz", "segmentation.json"]


@pytest.mark.parametrize("threshold", [2.0, -1.0, 0.0])
def test_a_threshold_outside_0_1_is_refused_before_any_work(threshold, tmp_path, capsys):
    assert main(["predict", "--model", str(tmp_path / "never-read.keras"), "--input",
                 str(tmp_path), "--out", str(tmp_path / "out"),
                 "--threshold", str(threshold)]) == 1
    assert "must lie in (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="must lie in"):
        write_segmentation(probabilities(0), geometry(), tmp_path / "w", threshold=threshold)


@pytest.fixture
def scan_pair(tmp_path):
    """A truth mask and a prediction (the truth itself) as files, and a writer of variants."""
    truth = (np.random.default_rng(0).random(SHAPE) < 0.2).astype(np.uint8)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-9.0, -10.0, -7.0]
    nib.save(nib.Nifti1Image(truth, affine), tmp_path / "truth.nii.gz")

    def prediction(data=truth.astype(np.float32), affine=affine, name="prediction.nii.gz"):
        nib.save(nib.Nifti1Image(data, affine), tmp_path / name)
        return ["evaluate", "--prediction", str(tmp_path / name),
                "--truth", str(tmp_path / "truth.nii.gz")]

    return truth, affine, prediction


def test_evaluate_scores_a_prediction_on_the_same_grid(scan_pair, capsys):
    _, _, prediction = scan_pair
    assert main(prediction()) == 0
    assert json.loads(capsys.readouterr().out)["dsc"] == 1.0


def test_evaluate_accepts_the_same_grid_stored_in_another_voxel_order(scan_pair, capsys):
    truth, affine, prediction = scan_pair
    flipped = affine.copy()
    flipped[0, 0], flipped[0, 3] = -2.0, affine[0, 3] + 2.0 * (SHAPE[0] - 1)
    assert main(prediction(truth[::-1].astype(np.float32), flipped)) == 0
    assert json.loads(capsys.readouterr().out)["dsc"] == 1.0


@pytest.mark.parametrize("change, problem", [
    ("shift", "is not aligned with .*origin shift \\[40.0, 0.0, 0.0\\]"),
    ("voxel size", "voxels of \\[1.0, 1.0, 1.0\\] mm"),
    ("shape", "has shape"),
])
def test_evaluate_refuses_a_prediction_on_another_grid(scan_pair, capsys, change, problem):
    truth, affine, prediction = scan_pair
    other = affine.copy()
    data = truth.astype(np.float32)
    if change == "shift":
        other[0, 3] += 40.0
    elif change == "voxel size":
        other[:3, :3] = np.eye(3)
    else:
        data = data[:-1]
    assert main(prediction(data, other)) == 1
    error = capsys.readouterr().err
    assert "prediction.nii.gz" in error and "truth.nii.gz" in error
    assert re.search(problem, error)


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


def test_modalities_and_spacing_options_are_only_for_models_without_a_contract(
        tmp_path, capsys):
    network = unet3d(input_shape=(None, None, None, 3), base_filters=2, depth=2)
    path = tmp_path / "spec.keras"
    with_scan_spec(network, ["T1W", "T2W", "FLAIR"], spacing=2.0, multiple_of=4).save(path)
    folder = write_tiny_subjects(tmp_path / "data", n=1)[0]
    assert main(["predict", "--model", str(path), "--input", str(folder), "--out",
                 str(tmp_path / "out"), "--spacing", "1"]) == 1
    assert "only for models without them" in capsys.readouterr().err


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


def test_evaluate_inside_a_brain_mask_counts_only_its_voxels(scan_pair, tmp_path, capsys):
    truth, affine, prediction = scan_pair
    brain = np.zeros(SHAPE, np.uint8)
    brain[2:7, 2:8, 1:6] = 1
    nib.save(nib.Nifti1Image(brain, affine), tmp_path / "brain.nii.gz")
    noisy = truth.astype(np.float32)
    noisy[0, 0, 0] = 1.0 - noisy[0, 0, 0]  # a wrong voxel outside the brain
    command = prediction(noisy) + ["--brain", str(tmp_path / "brain.nii.gz")]
    assert main(command) == 0
    inside = json.loads(capsys.readouterr().out)
    from tversky_keras.evaluation import lesion_metrics

    expected = lesion_metrics(truth, noisy, mask=brain.astype(bool))
    assert inside["tn"] + inside["fp"] + inside["tp"] + inside["fn"] == brain.sum()
    assert inside["specificity"] == pytest.approx(expected["specificity"])
    nib.save(nib.Nifti1Image(brain[:-1], affine), tmp_path / "brain.nii.gz")
    assert main(command) == 1
    assert "brain.nii.gz has shape" in capsys.readouterr().err
