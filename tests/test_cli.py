"""tversky_keras.cli, the ``tversky-keras`` command line: help, preprocess, predict, evaluate, errors."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import nibabel as nib
import numpy as np
import pytest

from tiny_data import write_tiny_subjects
from tversky_keras import cli
from tversky_keras.cli import main
from tversky_keras.data import DataError, discover_subjects, load_subject
from tversky_keras.evaluation import lesion_metrics
from tversky_keras.models import unet3d
from tversky_keras.scan_spec import with_scan_spec

ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ["synth", "train", "predict", "evaluate", "baseline"]
SHAPE = (9, 10, 7)  # no size a multiple of 2: a U-Net cannot take it unpadded


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert f"usage: tversky-keras {command}" in text and "--" in text


def test_top_level_help_lists_every_command(capsys):
    # `python -m tversky_keras` runs this same main: the start-up-lines test below runs
    # `synth` through it in a fresh process.
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: tversky-keras")
    for command in SUBCOMMANDS:
        assert command in text


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    keras.utils.set_random_seed(5)
    network = unet3d(input_shape=(None, None, None, 3), base_filters=2, depth=2)
    model = with_scan_spec(network, ["T1W", "T2W", "FLAIR"], multiple_of=4)
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model.save(path)
    return path


def test_predict_then_evaluate_round_trip(saved_model, tmp_path, capsys):
    folder = write_tiny_subjects(tmp_path / "data", n=1)[0]
    assert main(["predict", "--model", str(saved_model), "--input", str(folder),
                 "--out", str(tmp_path / "out"), "--threshold", "0.3"]) == 0
    prob = nib.load(tmp_path / "out" / "probability.nii.gz").get_fdata()
    mask = np.asarray(nib.load(tmp_path / "out" / "mask.nii.gz").dataobj)
    np.testing.assert_array_equal(mask, prob >= 0.3)
    capsys.readouterr()

    truth_path = folder / "consensus_gt.nii.gz"
    assert main(["evaluate", "--prediction", str(tmp_path / "out" / "probability.nii.gz"),
                 "--truth", str(truth_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    truth = np.asarray(nib.load(truth_path).dataobj)
    expected = lesion_metrics(truth, prob.astype(np.float32), threshold=0.5)
    for key in ("dsc", "sensitivity", "specificity", "f2", "apr", "lesion_tpr", "lesion_fpr"):
        assert printed[key] == pytest.approx(expected[key], nan_ok=True)


def test_predict_from_loose_files_needs_every_modality(saved_model, tmp_path, capsys):
    folder = write_tiny_subjects(tmp_path / "data", n=1)[0]
    code = main(["predict", "--model", str(saved_model), "--t1w", str(folder / "T1W.nii.gz"),
                 "--flair", str(folder / "FLAIR.nii.gz"), "--out", str(tmp_path / "out")])
    assert code == 1
    error = capsys.readouterr().err
    assert "expects modalities T1W, T2W, FLAIR" in error and "T2W" in error
    assert not (tmp_path / "out" / "probability.nii.gz").exists()


def test_bad_input_gives_one_line_and_nonzero_exit(tmp_path, capsys):
    missing = str(tmp_path / "missing.nii.gz")
    assert main(["evaluate", "--prediction", missing, "--truth", missing]) == 1
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()   # one line, no traceback
    assert line.startswith("tversky-keras") and "missing.nii.gz" in line


def test_commands_print_no_tensorflow_start_up_lines_unless_asked(tmp_path):
    """No absl banner, oneDNN note or cuInit error on the terminal; TF_CPP_MIN_LOG_LEVEL=0
    shows them. (Also: ``python -m tversky_keras`` is the command, in a fresh process.)"""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    command = [sys.executable, "-m", "tversky_keras", "synth", "--out", str(tmp_path / "p"),
               "--subjects", "1", "--spacing", "6"]
    quiet = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, check=True)
    for noise in ("absl", "I0000", "E0000", "cuInit", "oneDNN", "cuda"):
        assert noise not in quiet.stderr
    lines = quiet.stderr.splitlines()  # only the phantom's own progress line
    assert len(lines) == 1 and lines[0].startswith("phantom 1/1: synth00, lesion load")
    assert quiet.stdout.strip().splitlines()[-1] == f"wrote 1 subjects to {tmp_path / 'p'}"
    loud = subprocess.run([sys.executable, "-c", "import tversky_keras"], cwd=ROOT,
                          capture_output=True, text=True, env={**env, "TF_CPP_MIN_LOG_LEVEL": "0"})
    assert loud.returncode == 0 and "absl" in loud.stderr


def test_train_defaults_are_train_configs_and_every_setting_is_an_option():
    """The command line restates no default of its own, and drops no setting silently."""
    import dataclasses

    from tversky_keras.cli import NOT_ON_THE_COMMAND_LINE, build_parser, train_config
    from tversky_keras.training import MIXED_PRECISION, TrainConfig

    args = build_parser().parse_args(["train", "--data", "d", "--out", "o"])
    assert train_config(args) == TrainConfig()
    # Every field moves when its option is given: set each to a non-default value.
    changed = ["--alpha", "0.3", "--beta", "0.7", "--gamma", "2", "--ce-weight", "0.5",
               "--pool-batch", "--modalities", "FLAIR", "--spacing", "2", "--patch", "32",
               "--batch-size", "3", "--epochs", "5", "--steps", "7", "--base-filters", "4",
               "--depth", "3", "--normalization", "batch", "--dropout", "0.1",
               "--data-format", "channels_first", "--lr", "3e-4",
               "--foreground-ratio", "0.2", "--flips", "--intensity-augmentation",
               "--intensity-normalization", "wm-peak",
               "--monitor", "val_f2", "--seed", "9",
               "--mixed-precision", "off", "--xla", "off", "--tensorboard", "--init", "m.keras"]
    config = train_config(build_parser().parse_args(["train", "--data", "d", "--out", "o",
                                                     *changed]))
    moved = {f.name for f in dataclasses.fields(TrainConfig)
             if getattr(config, f.name) != getattr(TrainConfig(), f.name)}
    assert moved | set(NOT_ON_THE_COMMAND_LINE) == {f.name for f in dataclasses.fields(TrainConfig)}
    choices = next(a for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions
                   if a.dest == "mixed_precision").choices
    assert tuple(choices) == MIXED_PRECISION


def test_the_reproduction_prints_no_tensorflow_start_up_lines():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-c", "import reproduce.table1"], cwd=ROOT,
                          capture_output=True, text=True, env=env, check=True)
    assert done.stderr == ""


def test_predict_mirror_writes_the_mirrored_average(saved_model, tmp_path, capsys):
    from tversky_keras.data import discover_subjects
    from tversky_keras.inference import segment_subject
    from tversky_keras.saving import load_saved_model

    folder = write_tiny_subjects(tmp_path / "data", n=1)[0]
    assert main(["predict", "--model", str(saved_model), "--input", str(folder),
                 "--out", str(tmp_path / "out"), "--mirror", "x,z"]) == 0
    written = nib.load(tmp_path / "out" / "probability.nii.gz").get_fdata()
    subject = discover_subjects(tmp_path / "data")[0]
    model = load_saved_model(saved_model)
    expected, _ = segment_subject(model, subject, mirror_axes=(0, 2))
    plain, _ = segment_subject(model, subject)
    np.testing.assert_allclose(written, expected, atol=1e-6)
    assert np.abs(written - plain).max() > 1e-4
    about = json.loads((tmp_path / "out" / "segmentation.json").read_text())
    assert about["mirror_axes"] == [0, 2]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--model", str(saved_model), "--input", str(folder),
              "--out", str(tmp_path / "out2"), "--mirror", "x,q"])
    assert exit_info.value.code == 2 and "distinct axes among x, y, z" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()


def test_predict_with_several_models_writes_their_average(saved_model, tmp_path, capsys):
    from tversky_keras.data import discover_subjects
    from tversky_keras.inference import segment_subject
    from tversky_keras.saving import load_saved_model

    keras.utils.set_random_seed(6)
    second = tmp_path / "second.keras"
    with_scan_spec(unet3d(input_shape=(None, None, None, 3), base_filters=2, depth=2),
                   ["T1W", "T2W", "FLAIR"], multiple_of=4).save(second)
    folder = write_tiny_subjects(tmp_path / "data", n=1)[0]
    assert main(["predict", "--model", str(saved_model), str(second), "--input", str(folder),
                 "--out", str(tmp_path / "out")]) == 0
    written = nib.load(tmp_path / "out" / "probability.nii.gz").get_fdata()
    subject = discover_subjects(tmp_path / "data")[0]
    singles = [segment_subject(load_saved_model(p), subject)[0] for p in (saved_model, second)]
    np.testing.assert_allclose(written, (singles[0] + singles[1]) / 2, atol=1e-6)
    about = json.loads((tmp_path / "out" / "segmentation.json").read_text())
    assert about["ensemble"] == [str(saved_model.resolve()), str(second.resolve())]
    # A model for another voxel size is named, and nothing is written.
    other = tmp_path / "other.keras"
    with_scan_spec(unet3d(input_shape=(None, None, None, 3), base_filters=2, depth=2),
                   ["T1W", "T2W", "FLAIR"], spacing=2.0, multiple_of=4).save(other)
    capsys.readouterr()
    assert main(["predict", "--model", str(saved_model), str(other), "--input", str(folder),
                 "--out", str(tmp_path / "out2")]) == 1
    err = capsys.readouterr().err
    assert f"{other} expects another scan than {saved_model}" in err
    assert not (tmp_path / "out2").exists()


def test_preprocess_checks_the_grid_options_as_train_does(tiny_data, tmp_path, capsys):
    assert cli.main(["preprocess", "--data", str(tiny_data), "--out", str(tmp_path),
                     "--depth", "0"]) == 1
    assert "depth must be positive" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing preprocessed


def test_out_of_memory_is_one_line(monkeypatch, capsys):
    def exhausted(args):
        raise MemoryError("Unable to allocate 10.7 PiB")

    monkeypatch.setitem(cli.COMMANDS, "evaluate", exhausted)
    assert cli.main(["evaluate", "--prediction", "p", "--truth", "t"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out of memory (Unable to allocate 10.7 PiB)" in err


def test_evaluate_refuses_an_empty_brain_mask(tiny_data, tmp_path, capsys):
    truth = tiny_data / "sub00" / "consensus_gt.nii.gz"
    image = nib.load(truth)
    nib.save(nib.Nifti1Image(np.zeros(image.shape, np.uint8), image.affine),
             tmp_path / "brain.nii.gz")
    assert cli.main(["evaluate", "--prediction", str(truth), "--truth", str(truth),
                     "--brain", str(tmp_path / "brain.nii.gz")]) == 1
    assert "brain.nii.gz: the mask is empty" in capsys.readouterr().err


def test_one_file_given_for_two_modalities_is_refused(tiny_data, tiny_model, tmp_path, capsys):
    flair = tiny_data / "sub00" / "FLAIR.nii.gz"
    assert cli.main(["predict", "--model", str(tiny_model), "--t1w", str(flair),
                     "--t2w", str(tiny_data / "sub00" / "T2W.nii.gz"), "--flair", str(flair),
                     "--out", str(tmp_path)]) == 1
    assert "FLAIR.nii.gz: given for T1W and FLAIR" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written
    subject = discover_subjects(tiny_data)[0]
    subject.images["T1W"] = subject.images["FLAIR"]
    with pytest.raises(DataError, match="given for T1W and FLAIR of subject sub00"):
        load_subject(subject)


@pytest.mark.parametrize("val, message", [
    (",", "names no subject"),
    ("sub00,sub01,sub02", "--val names all 3 subjects; keep at least one"),
])
def test_a_validation_split_that_leaves_nothing_or_names_nothing_is_refused(tiny_data, val, message):
    with pytest.raises(ValueError, match=message):
        cli._split_validation(discover_subjects(tiny_data), val)


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


def test_modalities_and_spacing_options_are_only_for_models_without_a_contract(
        tmp_path, capsys):
    network = unet3d(input_shape=(None, None, None, 3), base_filters=2, depth=2)
    path = tmp_path / "spec.keras"
    with_scan_spec(network, ["T1W", "T2W", "FLAIR"], spacing=2.0, multiple_of=4).save(path)
    folder = write_tiny_subjects(tmp_path / "data", n=1)[0]
    assert main(["predict", "--model", str(path), "--input", str(folder), "--out",
                 str(tmp_path / "out"), "--spacing", "1"]) == 1
    assert "only for models without them" in capsys.readouterr().err


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


def test_evaluate_prints_the_challenge_metrics_in_millimetres(tmp_path, capsys):
    # One true voxel and one predicted voxel a z-step away, voxels of 2 x 2 x 3 mm:
    # each is its own surface, so every surface distance is 3 mm (HD95 = ASSD = 3);
    # no overlap: DSC = nDSC = lesion F1 = 0; each lesion is 12 mm^3 = 0.012 mL.
    truth, prediction = np.zeros((8, 8, 8), np.uint8), np.zeros((8, 8, 8), np.float32)
    truth[3, 3, 3], prediction[3, 3, 4] = 1, 1.0
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(truth, affine), tmp_path / "truth.nii.gz")
    nib.save(nib.Nifti1Image(prediction, affine), tmp_path / "prediction.nii.gz")
    command = ["evaluate", "--prediction", str(tmp_path / "prediction.nii.gz"),
               "--truth", str(tmp_path / "truth.nii.gz")]
    assert main(command + ["--overlap", "iou"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["hd95_mm"] == pytest.approx(3.0) and result["assd_mm"] == pytest.approx(3.0)
    assert result["dsc"] == result["ndsc"] == result["lesion_f1"] == 0.0
    assert (result["lesion_fp"], result["lesion_fn"]) == (1, 1)
    assert result["volume_true_ml"] == pytest.approx(0.012)
    assert result["volume_difference_ml"] == pytest.approx(0.0)
    assert (result["lesion_overlap"], result["lesion_min_overlap"]) == ("iou", 0.25)
    # The prediction moved onto the truth: everything agrees.
    prediction[3, 3, 4], prediction[3, 3, 3] = 0.0, 1.0
    nib.save(nib.Nifti1Image(prediction, affine), tmp_path / "prediction.nii.gz")
    assert main(command) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["hd95_mm"] == 0.0 and result["ndsc"] == result["lesion_f1"] == 1.0


@pytest.mark.parametrize("options, message", [
    (["--overlap", "fraction"], "--overlap fraction needs --min-overlap"),
    (["--min-overlap", "0.5"], "--overlap any .* takes none"),
    (["--overlap", "iou", "--min-overlap", "1.5"], "min_overlap must be a number in \\(0, 1\\]"),
])
def test_evaluate_refuses_an_overlap_rule_without_its_threshold(scan_pair, capsys, options,
                                                                 message):
    _, _, prediction = scan_pair
    assert main(prediction() + options) == 1
    assert re.search(message, capsys.readouterr().err)


def test_predict_uncertainty_writes_the_maps_and_lesions_as_one_set(tiny_data, tiny_model,
                                                                      tmp_path, capsys):
    from scipy import ndimage

    out = tmp_path / "out"
    assert main(["predict", "--model", str(tiny_model), "--input", str(tiny_data / "sub00"),
                 "--out", str(out), "--mirror", "x", "--uncertainty",
                 "--threshold", "0.3"]) == 0
    scan = nib.load(tiny_data / "sub00" / "FLAIR.nii.gz")
    for name in ("probability.nii.gz", "mask.nii.gz", "uncertainty.nii.gz"):
        image = nib.load(out / name)
        assert image.shape[:3] == scan.shape[:3], name
        np.testing.assert_allclose(image.affine, scan.affine, atol=1e-5)
    maps = nib.load(out / "uncertainty.nii.gz")
    assert maps.shape == (*scan.shape[:3], 2) and maps.get_data_dtype() == np.float32
    entropy, information = np.moveaxis(np.asarray(maps.dataobj), -1, 0)
    assert (information >= 0).all() and (information <= entropy + 1e-6).all()
    assert entropy.max() <= np.log(2) + 1e-6
    mask = np.asarray(nib.load(out / "mask.nii.gz").dataobj)
    _, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    table = json.loads((out / "lesions.json").read_text())
    rows = table["lesions"]
    assert count > 0 and len(rows) == count
    assert sum(r["voxels"] for r in rows) == int(mask.sum())
    voxel_ml = abs(np.linalg.det(scan.affine[:3, :3])) / 1000
    np.testing.assert_allclose(sum(r["volume_ml"] for r in rows), mask.sum() * voxel_ml)
    assert [r["mean_entropy"] for r in rows] == sorted((r["mean_entropy"] for r in rows),
                                                       reverse=True)
    for row in rows:
        world = scan.affine @ np.array([*row["centre_voxel"], 1.0])
        np.testing.assert_allclose(row["centre_world"], world[:3], atol=1e-4)
    manifest = json.loads((out / "segmentation.json").read_text())
    assert manifest["files"] == ["probability.nii.gz", "mask.nii.gz", "uncertainty.nii.gz",
                                 "lesions.json"]
    assert manifest["uncertainty"]["members"] == 2
    assert "uncertainty.nii.gz" in capsys.readouterr().out
    # A later run without --uncertainty leaves no old maps beside its new pair.
    assert main(["predict", "--model", str(tiny_model), "--input", str(tiny_data / "sub00"),
                 "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "mask.nii.gz", "probability.nii.gz", "segmentation.json"]


def test_predict_uncertainty_needs_more_than_one_prediction(tiny_data, tiny_model, tmp_path,
                                                            capsys):
    assert main(["predict", "--model", str(tiny_model), "--input", str(tiny_data / "sub00"),
                 "--out", str(tmp_path / "out"), "--uncertainty"]) == 1
    err = capsys.readouterr().err
    assert "--uncertainty needs --mirror and/or several --model" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_predict_refuses_one_model_given_twice(tiny_data, tiny_model, tmp_path, capsys):
    # Its "ensemble" would have no spread: a mutual information of 0 everywhere.
    copy = tiny_model.parent / ".." / tiny_model.parent.name / tiny_model.name
    assert main(["predict", "--model", str(tiny_model), str(copy), "--input",
                 str(tiny_data / "sub00"), "--out", str(tmp_path / "out"), "--uncertainty"]) == 1
    err = capsys.readouterr().err
    assert f"--model: {copy} is given twice (as {tiny_model} too)" in err
    assert not (tmp_path / "out").exists()


def test_baseline_thresholds_the_brain_z_scored_flair_in_the_files_own_geometry(tmp_path, capsys):
    """mask = (FLAIR - brain mean) / brain SD >= K inside the brain, computed here with
    numpy, written with the FLAIR's affine and its (left-handed) voxel order."""
    rng = np.random.default_rng(0)
    flair = rng.gamma(5.0, 20.0, SHAPE).astype(np.float32)
    flair[:2] = 0  # outside the skull-stripped brain
    affine = np.diag([-1.5, 1.5, 2.0, 1.0])
    nib.save(nib.Nifti1Image(flair, affine), tmp_path / "FLAIR.nii.gz")
    assert main(["baseline", "--flair", str(tmp_path / "FLAIR.nii.gz"), "--k", "1.2",
                 "--out", str(tmp_path / "out")]) == 0
    brain = flair != 0
    z = (flair - flair[brain].mean()) / flair[brain].std()
    expected = (z >= 1.2) & brain
    written = nib.load(tmp_path / "out" / "mask.nii.gz")
    np.testing.assert_array_equal(np.asarray(written.dataobj), expected.astype(np.uint8))
    np.testing.assert_allclose(written.affine, affine)
    zscore = np.asarray(nib.load(tmp_path / "out" / "zscore.nii.gz").dataobj)
    np.testing.assert_allclose(zscore[brain], z[brain], rtol=1e-5, atol=1e-5)
    assert f"({expected.sum()} voxels at z >= 1.2)" in capsys.readouterr().out
    # An explicit brain mask: nothing is called outside it.
    region = np.zeros(SHAPE, np.uint8)
    region[4:, :5] = 1
    nib.save(nib.Nifti1Image(region, affine), tmp_path / "brain.nii.gz")
    main(["baseline", "--flair", str(tmp_path / "FLAIR.nii.gz"), "--brain",
          str(tmp_path / "brain.nii.gz"), "--k", "0", "--out", str(tmp_path / "out2")])
    called = np.asarray(nib.load(tmp_path / "out2" / "mask.nii.gz").dataobj)
    inside = region.astype(bool)
    z = (flair - flair[inside].mean()) / flair[inside].std()
    np.testing.assert_array_equal(called, ((z >= 0) & inside).astype(np.uint8))


def test_baseline_core_mm_reads_the_statistics_deeper_than_the_depth_at_the_files_zooms(
        tmp_path, capsys):
    from tversky_keras.baseline import brain_core

    rng = np.random.default_rng(1)
    flair = rng.gamma(5.0, 20.0, SHAPE).astype(np.float32)
    flair[:2] = 0
    affine = np.diag([-1.5, 1.5, 2.0, 1.0])
    nib.save(nib.Nifti1Image(flair, affine), tmp_path / "FLAIR.nii.gz")
    assert main(["baseline", "--flair", str(tmp_path / "FLAIR.nii.gz"), "--k", "0.5",
                 "--core-mm", "3", "--out", str(tmp_path / "out")]) == 0
    brain = flair != 0
    core = brain_core(brain, (1.5, 1.5, 2.0), 3.0)
    assert 0 < core.sum() < brain.sum()
    z = (flair.astype(np.float64) - flair[core].mean()) / flair[core].std()
    zscore = np.asarray(nib.load(tmp_path / "out" / "zscore.nii.gz").dataobj)
    np.testing.assert_allclose(zscore[brain], z[brain], rtol=1e-4, atol=1e-4)
    assert "deeper than 3 mm" in capsys.readouterr().out
    assert main(["baseline", "--flair", str(tmp_path / "FLAIR.nii.gz"), "--k", "0.5",
                 "--core-mm", "50", "--out", str(tmp_path / "out2")]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert "FLAIR.nii.gz" in line and "deeper than 50 mm" in line
    assert not (tmp_path / "out2" / "mask.nii.gz").exists()


def test_baseline_refuses_a_flat_or_missing_flair_in_one_line(tmp_path, capsys):
    nib.save(nib.Nifti1Image(np.full(SHAPE, 7.0, np.float32), np.eye(4)), tmp_path / "F.nii.gz")
    assert main(["baseline", "--flair", str(tmp_path / "F.nii.gz"), "--k", "2",
                 "--out", str(tmp_path / "out")]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert "F.nii.gz" in line and "one intensity" in line
    assert not (tmp_path / "out" / "mask.nii.gz").exists()
    assert main(["baseline", "--flair", str(tmp_path / "missing.nii.gz"), "--k", "2",
                 "--out", str(tmp_path / "out")]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert "missing.nii.gz" in line


def test_predict_refuses_a_window_overlap_of_hours_without_force(tiny_data, tiny_model,
                                                                  tmp_path, capsys):
    argv = ["predict", "--model", str(tiny_model), "--input", str(tiny_data / "sub00"),
            "--window", "8,8,8", "--overlap", "0.95", "--out", str(tmp_path / "out")]
    assert main(argv) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert "windows" in line and "--force" in line and "--overlap" in line
    assert not (tmp_path / "out").exists()
    assert main([*argv, "--force"]) == 0
    out = capsys.readouterr().out
    assert "1,989 windows of 8x8x8 per prediction" in out  # 13 x 17 x 9 starts
    assert (tmp_path / "out" / "mask.nii.gz").is_file()


@pytest.mark.parametrize("command, says", [("predict", "start over"), ("train", "resume")])
def test_only_a_command_that_resumes_says_resume_when_stopped(monkeypatch, capsys, command, says):
    from tversky_keras import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, command, interrupted)
    argv = {"predict": ["predict", "--model", "m.keras", "--input", "x", "--out", "o"],
            "train": ["train", "--data", "d", "--out", "o"]}[command]
    assert main(argv) == 130
    (line,) = capsys.readouterr().err.splitlines()
    assert says in line and (("resume" in line) is (command == "train"))


def test_predict_and_baseline_refuse_an_out_that_would_replace_their_inputs(tiny_data, tiny_model,
                                                                            tmp_path, capsys):
    import hashlib
    import shutil

    subject = tmp_path / "sub00"
    shutil.copytree(tiny_data / "sub00", subject)
    flair = nib.load(subject / "FLAIR.nii.gz")
    brain = (np.asarray(flair.dataobj) != 0).astype(np.uint8)
    nib.save(nib.Nifti1Image(brain, flair.affine), subject / "mask.nii.gz")
    shutil.copy(subject / "FLAIR.nii.gz", subject / "zscore.nii.gz")

    def digests():
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in subject.iterdir()}

    before = digests()
    assert main(["predict", "--model", str(tiny_model), "--input", str(subject), "--brain",
                 str(subject / "mask.nii.gz"), "--out", str(subject)]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert "writing mask.nii.gz there would replace the input" in line
    assert main(["baseline", "--flair", str(subject / "zscore.nii.gz"), "--brain",
                 str(subject / "mask.nii.gz"), "--k", "2", "--out", str(subject / ".." /
                                                                   subject.name)]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert "writing zscore.nii.gz there would replace the input" in line
    assert digests() == before  # nothing written over


def test_evaluate_measures_distances_along_the_scans_own_axes(tmp_path, capsys):
    """Stored axes permuted, 5-mm voxels along the stored first axis (world z): two
    squares two slices apart are 10 mm apart (scipy on world coordinates agrees)."""
    from scipy.spatial.distance import cdist

    affine = np.array([[0, 0, 1.0, 0], [0, 1.0, 0, 0], [5.0, 0, 0, 0], [0, 0, 0, 1]])
    truth = np.zeros((10, 20, 20), np.uint8)
    prediction = truth.copy()
    truth[3, 8:12, 8:12] = 1
    prediction[5, 8:12, 8:12] = 1
    for name, data in (("t", truth), ("p", prediction)):
        image = nib.Nifti1Image(data, affine)
        image.set_qform(affine, 1)
        image.set_sform(affine, 1)
        nib.save(image, tmp_path / f"{name}.nii.gz")
    assert main(["evaluate", "--prediction", str(tmp_path / "p.nii.gz"), "--truth",
                 str(tmp_path / "t.nii.gz")]) == 0
    result = json.loads(capsys.readouterr().out)

    def world(mask):
        return nib.affines.apply_affine(affine, np.argwhere(mask))

    expected = cdist(world(prediction), world(truth)).min(axis=1).min()
    assert expected == pytest.approx(10.0)
    assert result["hd95_mm"] == pytest.approx(10.0) and result["assd_mm"] == pytest.approx(10.0)


def test_synth_spacing_zero_and_an_over_long_out_are_one_line(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "s"), "--spacing", "0"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert "--spacing 0: the phantom is made at" in line
    with pytest.raises(SystemExit) as stopped:
        main(["synth", "--out", str(tmp_path / ("x" * 300))])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "cannot be a folder (File name too long)" in err and "Traceback" not in err


@pytest.mark.parametrize("text, value", [("-1e3", -1000.0), ("-.5", -0.5), ("-2.5E-1", -0.25),
                                         ("-3", -3.0)])
def test_negative_numbers_in_any_float_notation_are_option_values(text, value):
    """argparse (before Python 3.13) read '-1e3' as an option: '--k -1e3' failed."""
    from tversky_keras.cli import build_parser

    args = build_parser().parse_args(["baseline", "--flair", "f.nii.gz", "--k", text,
                                      "--out", "o"])
    assert args.k == value


def test_a_negative_infinite_k_is_refused_as_not_finite_not_as_a_missing_value(capsys):
    from tversky_keras.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["baseline", "--flair", "f.nii.gz", "--k", "-inf",
                                   "--out", "o"])
    assert "'-inf' is not a finite number" in capsys.readouterr().err
