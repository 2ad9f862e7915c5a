"""The ``tversky-keras`` command line: help, predict, evaluate, errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import nibabel as nib
import numpy as np
import pytest

from tiny_data import write_tiny_subjects
from tversky_keras.cli import main
from tversky_keras.evaluation import lesion_metrics
from tversky_keras.models import unet3d
from tversky_keras.scan_spec import with_scan_spec

ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ["synth", "train", "predict", "evaluate"]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert f"usage: tversky-keras {command}" in text and "--" in text


def test_python_dash_m_is_the_same_command():
    result = subprocess.run([sys.executable, "-m", "tversky_keras", "--help"], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    assert result.stdout.startswith("usage: tversky-keras")
    for command in SUBCOMMANDS:
        assert command in result.stdout


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


def test_bad_input_gives_one_line_and_nonzero_exit(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tversky_keras", "evaluate", "--prediction",
         str(tmp_path / "missing.nii.gz"), "--truth", str(tmp_path / "missing.nii.gz")],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 1
    # TensorFlow's C++ start-up notes also reach stderr; ours is one line, no traceback.
    ours = [line for line in result.stderr.splitlines() if line.startswith("tversky-keras")]
    assert len(ours) == 1 and "missing.nii.gz" in ours[0]
    assert "Traceback" not in result.stderr


def test_commands_print_no_tensorflow_start_up_lines_unless_asked(tmp_path):
    """No absl banner, oneDNN note or cuInit error on the terminal; TF_CPP_MIN_LOG_LEVEL=0 shows them."""
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
