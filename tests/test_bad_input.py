"""Bad input and faults from the second adversarial pass: each class of cause ends in a
clear error that names the option or file, never a traceback or a silently wrong result."""

import argparse
import json
import shutil
import zipfile

import keras
import nibabel as nib
import numpy as np
import pytest

from reproduce import sim2real, table1
from tiny_data import TINY_TRAINING, write_tiny_subjects
from tversky_keras import cli
from tversky_keras.data import DataError, discover_subjects, load_subject, to_grid
from tversky_keras.data.cache import cached_subject
from tversky_keras.inference import predict_volume
from tversky_keras.losses import TverskyLoss
from tversky_keras.metrics import PRAUC
from tversky_keras.saving import load_saved_model
from tversky_keras.training import TrainConfig, TrainingDiverged, cluster_task, train

TINY = TINY_TRAINING


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    write_tiny_subjects(root, n=3)
    return root


# --- numbers: NaN, inf and out-of-range values are refused where they are given -------

def float_options(parser):
    """(parser name, option) of every option whose value is converted by ``float``."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += [(f"{parser.prog} {name}", o) for _, o in float_options(sub)]
        elif action.type is float:
            found.append((parser.prog, action.option_strings[0]))
    return found


def test_no_command_line_option_takes_nan_or_inf():
    parsers = [cli.build_parser(), table1.build_parser(), sim2real.build_parser()]
    assert [o for p in parsers for o in float_options(p)] == []


@pytest.mark.parametrize("argv, option", [
    (["train", "--data", "d", "--out", "o", "--alpha", "nan"], "--alpha"),
    (["train", "--data", "d", "--out", "o", "--lr", "inf"], "--lr"),
    (["predict", "--model", "m", "--out", "o", "--threshold", "nan"], "--threshold"),
    (["synth", "--out", "o", "--spacing", "-inf"], "--spacing"),
])
def test_nan_and_inf_are_refused_naming_the_option(argv, option, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args(argv)
    assert exit_.value.code == 2
    assert f"argument {option}: " in capsys.readouterr().err


def test_a_negative_phantom_seed_is_refused_naming_the_option(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["synth", "--out", "o", "--seed", "-1"])
    assert "argument --seed: -1 is negative" in capsys.readouterr().err


@pytest.mark.parametrize("settings, message", [
    ({"alpha": float("nan")}, "alpha must be a finite number"),
    ({"ce_weight": float("inf")}, "ce_weight must be a finite number"),
    ({"depth": 10}, "depth must be at most 9"),
])
def test_train_config_refuses_non_finite_and_too_deep(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**settings)


@pytest.mark.parametrize("alpha, beta", [(float("nan"), 0.5), (0.5, float("inf"))])
def test_the_loss_refuses_non_finite_weights(alpha, beta):
    with pytest.raises(ValueError, match="must be finite"):
        TverskyLoss(alpha=alpha, beta=beta)


def test_preprocess_checks_the_grid_options_as_train_does(data, tmp_path, capsys):
    assert cli.main(["preprocess", "--data", str(data), "--out", str(tmp_path),
                     "--depth", "0"]) == 1
    assert "depth must be positive" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing preprocessed


def test_a_voxel_size_that_makes_a_huge_grid_is_refused_before_allocating():
    with pytest.raises(ValueError, match=r"grid would be .* voxels .*--spacing"):
        to_grid(np.zeros((10, 10, 10), np.float32), spacing=1.0, target_spacing=1e-4)


def test_a_sliding_window_larger_than_any_patch_is_refused():
    model = keras.Sequential([keras.Input((None, None, None, 1)),
                              keras.layers.Conv3D(2, 1, activation="softmax")])
    with pytest.raises(ValueError, match="at most 512"):
        predict_volume(model, np.zeros((8, 8, 8, 1), np.float32), window=(100000,) * 3)


def test_out_of_memory_is_one_line(monkeypatch, capsys):
    def exhausted(args):
        raise MemoryError("Unable to allocate 10.7 PiB")

    monkeypatch.setitem(cli.COMMANDS, "evaluate", exhausted)
    assert cli.main(["evaluate", "--prediction", "p", "--truth", "t"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out of memory (Unable to allocate 10.7 PiB)" in err


# --- divergence: NaN scores, NaN weights ------------------------------------------------

def test_pr_auc_counts_nan_scores_in_the_lowest_bin_instead_of_crashing():
    truth = np.eye(2, dtype="float32")[np.array([[0, 1, 1, 0]])]
    scores = np.array([[0.2, np.nan, 0.9, np.nan]], "float32")
    as_zero = np.nan_to_num(scores, nan=0.0)
    with_nan, zeros = PRAUC(num_bins=10), PRAUC(num_bins=10)
    with_nan.update_state(truth, np.stack([1 - scores, scores], -1))
    zeros.update_state(truth, np.stack([1 - as_zero, as_zero], -1))
    assert float(with_nan.result()) == pytest.approx(float(zeros.result()))


class PoisonWeights(keras.callbacks.Callback):
    """Sets one weight to NaN during epoch 1: the logged loss can stay finite."""

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 1:
            weight = self.model.weights[0]
            weight.assign(np.full(weight.shape, np.nan, "float32"))

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch


def test_non_finite_weights_stop_the_run_and_are_never_saved(data, tmp_path):
    subjects = discover_subjects(data)
    config = TrainConfig(epochs=3, **TINY)
    with pytest.raises(TrainingDiverged, match="weights not finite"):
        train(config, subjects, [], tmp_path, verbose=0, callbacks=[PoisonWeights()])
    model = keras.saving.load_model(tmp_path / "last.keras", compile=False)
    assert all(np.isfinite(w).all() for w in model.get_weights())  # epoch 0's, intact


@pytest.fixture(scope="module")
def tiny_model(data, tmp_path_factory):
    """A model trained for one epoch on the tiny subjects."""
    run = tmp_path_factory.mktemp("run")
    train(TrainConfig(epochs=1, **TINY), discover_subjects(data), [], run, verbose=0)
    return run / "last.keras"


def test_predict_refuses_to_write_a_non_finite_probability_map(data, tiny_model, tmp_path,
                                                               capsys):
    model = keras.saving.load_model(tiny_model)
    model.weights[-1].assign(np.full(model.weights[-1].shape, np.nan, "float32"))
    model.save(tmp_path / "nan.keras")
    assert cli.main(["predict", "--model", str(tmp_path / "nan.keras"),
                     "--input", str(data / "sub00"), "--out", str(tmp_path / "out")]) == 1
    assert "non-finite probabilities" in capsys.readouterr().err
    assert not (tmp_path / "out" / "probability.nii.gz").exists()


# --- files: models, caches, masks, labels ------------------------------------------------

@pytest.mark.parametrize("content", ["text", "zip without a config"])
def test_a_file_that_is_not_a_keras_model_is_named(tmp_path, content):
    path = tmp_path / "model.keras"
    if content == "text":
        path.write_text("not a model")
    else:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("metadata.json", "{}")
    with pytest.raises(ValueError, match=f"{path}: not a readable Keras model"):
        load_saved_model(path)


@pytest.fixture
def cached(data, tmp_path):
    subject = discover_subjects(data)[0]
    entry = cached_subject(subject, tmp_path).folder
    return subject, tmp_path, entry


def test_a_truncated_cache_file_is_found_when_the_entry_is_opened(cached):
    subject, cache, entry = cached
    with open(entry / "image.npy", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(DataError, match=r"image.npy: unreadable cache file .*delete"):
        cached_subject(subject, cache)


def test_a_cache_array_of_another_shape_is_found_when_the_entry_is_opened(cached):
    subject, cache, entry = cached
    np.save(entry / "label.npy", np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(DataError, match=r"label.npy: holds shape \(2, 2, 2\), its manifest"):
        cached_subject(subject, cache)


def test_evaluate_refuses_an_empty_brain_mask(data, tmp_path, capsys):
    truth = data / "sub00" / "consensus_gt.nii.gz"
    image = nib.load(truth)
    nib.save(nib.Nifti1Image(np.zeros(image.shape, np.uint8), image.affine),
             tmp_path / "brain.nii.gz")
    assert cli.main(["evaluate", "--prediction", str(truth), "--truth", str(truth),
                     "--brain", str(tmp_path / "brain.nii.gz")]) == 1
    assert "brain.nii.gz: the mask is empty" in capsys.readouterr().err


def test_training_refuses_labels_without_a_lesion_and_writes_nothing(data, tmp_path):
    empty = tmp_path / "data"
    shutil.copytree(data, empty)
    for label in empty.glob("*/consensus_gt.nii.gz"):
        image = nib.load(label)
        nib.save(nib.Nifti1Image(np.zeros(image.shape, np.uint8), image.affine), label)
    with pytest.raises(ValueError, match="none of the 3 training subjects has a lesion voxel"):
        train(TrainConfig(epochs=1, **TINY), discover_subjects(empty), [], tmp_path / "run",
              verbose=0, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "run" / "config.json").exists()


def test_one_file_given_for_two_modalities_is_refused(data, tiny_model, tmp_path, capsys):
    flair = data / "sub00" / "FLAIR.nii.gz"
    assert cli.main(["predict", "--model", str(tiny_model), "--t1w", str(flair),
                     "--t2w", str(data / "sub00" / "T2W.nii.gz"), "--flair", str(flair),
                     "--out", str(tmp_path)]) == 1
    assert "FLAIR.nii.gz: given for T1W and FLAIR" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written
    subject = discover_subjects(data)[0]
    subject.images["T1W"] = subject.images["FLAIR"]
    with pytest.raises(DataError, match="given for T1W and FLAIR of subject sub00"):
        load_subject(subject)


# --- environment and the reproduction's options -------------------------------------------

@pytest.mark.parametrize("tf_config, message", [
    ("{bad", "TF_CONFIG environment variable is not valid JSON"),
    ("[]", "TF_CONFIG must be a JSON object"),
    (json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 5}}),
     "TF_CONFIG: task 'worker' index 5 is not in the cluster"),
])
def test_a_malformed_tf_config_is_named(monkeypatch, tf_config, message):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError, match=message):
        cluster_task()


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--poll", "nan"], "argument --poll: 'nan' is not a finite number"),
])
def test_reproduce_options_out_of_range_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        table1.main(argv)
    assert message in capsys.readouterr().err


def test_an_unknown_fold_is_named():
    with pytest.raises(SystemExit, match="unknown fold 'fold9'"):
        table1.parse_cells("a0.5_b0.5/fold9")


@pytest.mark.parametrize("main, argv", [
    (table1.main, ["--profile", "smoke"]),
    (sim2real.main, ["--profile", "smoke"]),
])
def test_a_missing_data_folder_is_one_line(main, argv, tmp_path, capsys):
    assert main([*argv, "--data", str(tmp_path / "nosuch"), "--results", str(tmp_path / "r"),
                 "--cache", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"{tmp_path / 'nosuch'}" in err and err.count("\n") == 1


# --- from the third pass -------------------------------------------------------------------

@pytest.mark.parametrize("tf_config, message", [
    ("{bad", "TF_CONFIG environment variable is not valid JSON"),
    (json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 5}}),
     "index 5 is not in the cluster"),
    (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": "abc"}}),
     "task index 'abc' is not an integer"),
])
def test_tf_config_is_checked_before_tensorflow_reads_it(monkeypatch, tf_config, message):
    from tversky_keras.training import distribution_strategy

    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError, match=message):
        distribution_strategy.__wrapped__()  # made once per process: not the cached one


@pytest.mark.parametrize("val, message", [
    (",", "names no subject"),
    ("sub00,sub01,sub02", "--val names all 3 subjects; keep at least one"),
])
def test_a_validation_split_that_leaves_nothing_or_names_nothing_is_refused(data, val, message):
    with pytest.raises(ValueError, match=message):
        cli._split_validation(discover_subjects(data), val)


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/elsewhere", "a/b", ".."])
def test_an_experiment_name_cannot_leave_the_results_folder(name, capsys):
    with pytest.raises(SystemExit):
        table1.main(["--name", name])
    assert "a folder name inside --results and --figures" in capsys.readouterr().err


def test_synth_never_writes_over_a_users_subject_files(tmp_path):
    from tversky_keras.data.phantom import synthesize_dataset

    user = tmp_path / "synth00"
    user.mkdir()
    (user / "FLAIR.nii.gz").write_bytes(b"the user's scan")
    with pytest.raises(ValueError, match="holds scans and .* is no phantom folder"):
        synthesize_dataset(tmp_path, n_subjects=1, spacing=8.0, progress=False)
    assert (user / "FLAIR.nii.gz").read_bytes() == b"the user's scan"
    # An interrupted phantom (its marker left, no phantom.json) is written again.
    (tmp_path / ".phantom-incomplete").touch()
    synthesize_dataset(tmp_path, n_subjects=1, spacing=8.0, progress=False)
    assert (tmp_path / "phantom.json").is_file() and not (tmp_path / ".phantom-incomplete").exists()
    assert nib.load(user / "FLAIR.nii.gz").shape[0] > 1
