"""tversky_keras.training: settings, run folders, checkpoints, logs, resume after a stop, NaN guard."""

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import keras
import nibabel as nib
import numpy as np
import pytest

from tiny_data import TINY_TRAINING, write_tiny_subjects
from tversky_keras.data import DataWarning, discover_subjects
from tversky_keras.scan_spec import scan_spec
from tversky_keras.training import TrainConfig, TrainingDiverged, paper_schedule, train

ROOT = Path(__file__).resolve().parents[1]
TINY = TINY_TRAINING


def read_log(run_dir):
    with open(run_dir / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def finished_run(tiny_subjects, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    config = TrainConfig(epochs=2, **TINY)
    summary = train(config, tiny_subjects[:2], tiny_subjects[2:], run_dir, verbose=0)
    return run_dir, config, summary


def test_run_folder_holds_models_log_config_and_summary(finished_run):
    run_dir, config, summary = finished_run
    assert (run_dir / "model.keras").is_file() and (run_dir / "last.keras").is_file()
    saved = json.loads((run_dir / "config.json").read_text())
    data = saved.pop("data")
    assert saved == config.to_json()
    assert sorted(data["train"]) == ["sub00", "sub01"] and sorted(data["val"]) == ["sub02"]
    rows = read_log(run_dir)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert {"loss", "val_dice", "val_sensitivity", "val_f2", "val_prauc", "lr"} <= set(rows[0])
    assert summary["steps"] == 2 * TINY["steps_per_epoch"]
    best = max(float(r["val_dice"]) for r in rows)
    assert summary["best_value"] == pytest.approx(best)
    assert not (run_dir / "backup").exists() or not any((run_dir / "backup").iterdir())


@pytest.mark.parametrize("name, damage, message", [
    ("last.keras", "truncate", r"last.keras: damaged .*delete"),
    ("model.keras", "flip", r"model.keras: damaged .*delete"),
    ("last.keras", "remove", r"last.keras: missing, though summary.json says the run finished"),
    ("summary.json", "truncate", r"summary.json: unreadable run summary"),
    ("config.json", "truncate", r"config.json: unreadable run record"),
])
def test_a_finished_runs_damaged_file_is_named(finished_run, tiny_subjects, tmp_path, name,
                                               damage, message):
    run_dir, config, _ = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    path = copy / name
    if damage == "remove":
        path.unlink()
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:  # one byte inside the zip's first member, the size kept
        data = bytearray(path.read_bytes())
        data[100] ^= 0xFF
        path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=message):
        train(config, tiny_subjects[:2], tiny_subjects[2:], copy, verbose=0)


def test_a_finished_run_says_it_has_nothing_to_train(finished_run, tiny_subjects, capsys):
    run_dir, config, summary = finished_run
    assert train(config, tiny_subjects[:2], tiny_subjects[2:], run_dir, verbose=2) == summary
    assert "finished earlier (2 epochs, 2 asked for); nothing to train" in capsys.readouterr().out
    more = TrainConfig(**{**config.to_json(), "epochs": 3})
    with pytest.raises(ValueError, match=r"config.json: .*other settings or data \(epochs\)"):
        train(more, tiny_subjects[:2], tiny_subjects[2:], run_dir, verbose=0)


def test_the_train_step_is_traced_once_per_run(tiny_subjects, tmp_path, monkeypatch):
    # Adam's slots made inside the first trace make tf.function trace the step a
    # second time (tensorflow/tensorflow#48851); train builds them beforehand.
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer
    traces = []
    original = TensorFlowTrainer.train_step

    def counted(self, data):
        traces.append(1)   # runs once per trace, not per step
        return original(self, data)

    monkeypatch.setattr(TensorFlowTrainer, "train_step", counted)
    train(TrainConfig(epochs=2, **TINY), tiny_subjects[:2], [], tmp_path / "run", verbose=0)
    assert len(traces) == 1


def test_learning_rate_follows_the_paper_staircase():
    config = TrainConfig(learning_rate=1e-4)
    schedule = paper_schedule(config)
    values = [float(schedule(step)) for step in (0, 999, 1000, 2500)]
    np.testing.assert_allclose(values, [1e-4, 1e-4, 0.9e-4, 0.81e-4], rtol=1e-6)


def test_finished_run_is_not_trained_again(finished_run, tiny_subjects):
    run_dir, config, summary = finished_run
    stamp = (run_dir / "model.keras").stat().st_mtime_ns
    assert train(config, tiny_subjects[:2], tiny_subjects[2:], run_dir, verbose=0) == summary
    assert (run_dir / "model.keras").stat().st_mtime_ns == stamp


def test_other_settings_in_the_same_folder_are_refused(finished_run, tiny_subjects):
    run_dir, config, _ = finished_run
    other = TrainConfig(**{**config.to_json(), "beta": 0.9})
    with pytest.raises(ValueError, match="beta"):
        train(other, tiny_subjects[:2], tiny_subjects[2:], run_dir, verbose=0)


def test_saved_model_records_the_scan_it_expects(finished_run):
    run_dir, config, _ = finished_run
    model = keras.saving.load_model(run_dir / "model.keras")
    # No --spacing: the model records the scans' own voxel size (the tiny subjects' 2 mm).
    assert scan_spec(model) == {"modalities": list(config.modalities), "spacing": 2.0,
                                "multiple_of": 4, "intensity_normalization": "zscore"}
    assert model.loss.alpha == config.alpha and model.loss.beta == config.beta


def test_fresh_process_loads_the_model_and_predicts_the_same(finished_run, tmp_path):
    """After ``import tversky_keras`` alone, a saved run's model loads with its ScanSpec,
    loss and metrics (no ``custom_objects``) and predicts what it predicted here."""
    run_dir, config, _ = finished_run
    x = np.random.default_rng(0).standard_normal((1, 8, 12, 8, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    expected = keras.saving.load_model(run_dir / "model.keras").predict_on_batch(x)
    code = textwrap.dedent(f"""
        import json, numpy as np, keras, tversky_keras
        from tversky_keras.scan_spec import scan_spec
        model = keras.saving.load_model({str(run_dir / 'model.keras')!r})
        np.save({str(tmp_path / 'y.npy')!r}, model.predict_on_batch(np.load({str(tmp_path / 'x.npy')!r})))
        y = np.eye(2, dtype="float32")[(np.load({str(tmp_path / 'x.npy')!r})[..., 0] > 1).astype(int)]
        logs = model.evaluate(np.load({str(tmp_path / 'x.npy')!r}), y, verbose=0, return_dict=True)
        print(json.dumps({{"loss": model.loss.get_config(), "spec": scan_spec(model),
                          "metrics": sorted(logs)}}))
    """)
    done = subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, text=True,
                          capture_output=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-5, atol=1e-6)
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert (loaded["loss"]["alpha"], loaded["loss"]["beta"]) == (config.alpha, config.beta)
    assert loaded["spec"]["modalities"] == list(config.modalities)
    assert loaded["metrics"] == sorted(["loss", "dice", "sensitivity", "specificity", "f2",
                                        "prauc"])


def test_nan_loss_stops_with_a_clear_error_and_no_model(tiny_subjects, tmp_path):
    # A loss that turns NaN from its 8th step (epoch 2) stands in for a diverging run.
    steps = keras.Variable(0.0, trainable=False)

    def diverging_loss(y_true, y_pred):
        steps.assign_add(1.0)
        nan_later = keras.ops.where(steps > 7, float("nan"), 1.0)
        return keras.ops.mean(y_pred) * nan_later

    config = TrainConfig(epochs=3, **{**TINY, "steps_per_epoch": 5})
    # The 8th step is step 3 of epoch 2 as Keras' progress bar counts them ("Epoch 2/3").
    with pytest.raises(TrainingDiverged, match=r"diverged \(loss nan\) at step 3 of epoch 2/3;"):
        train(config, tiny_subjects[:2], [], tmp_path, verbose=0, loss=diverging_loss)
    assert [int(r["epoch"]) for r in read_log(tmp_path)] == [0]
    # Epoch 0's model is intact: it loads and predicts finite probabilities.
    model = keras.saving.load_model(tmp_path / "last.keras", compile=False)
    assert np.isfinite(model.predict_on_batch(np.zeros((1, 8, 8, 8, 3), np.float32))).all()
    assert not (tmp_path / "summary.json").exists()


def test_run_terminated_mid_training_says_so_in_one_line_and_resumes_its_epoch_count(
        tiny_subjects, tmp_path):
    # SIGTERM ends the process at once (os._exit, as kill -9 would), with one line and 143.
    data = Path(tiny_subjects[0].images["FLAIR"]).parents[1]
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "tversky_keras", "train", "--data", str(data),
               "--out", str(run_dir), "--epochs", "8", "--steps", "40", "--patch", "8",
               "--batch-size", "2", "--base-filters", "2", "--depth", "2", "--lr", "1e-3",
               "--val", "1", "--quiet"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        if (run_dir / "log.csv").is_file() and len(read_log(run_dir)) >= 2:
            break
        time.sleep(0.2)  # polling a condition, not waiting for one to be likely
    assert process.poll() is None, "the run finished before it could be stopped"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err[-2000:]
    assert err.strip() == ("tversky-keras train: terminated (SIGTERM); finished work is kept: "
                           "run the same command again to resume"), err[-2000:]
    done_before = len(read_log(run_dir))
    assert 2 <= done_before < 8

    subprocess.run(command, cwd=ROOT, env=env, check=True)
    epochs = [int(r["epoch"]) for r in read_log(run_dir)]
    assert epochs == list(range(8))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert done_before - 1 <= summary["resumed_from_epoch"] <= done_before


@pytest.mark.parametrize("choice, gpu, expected", [
    ("auto", False, None), ("auto", True, "mixed_float16"), ("on", False, "mixed_bfloat16"),
    ("on", True, "mixed_float16"), ("off", True, None), ("bfloat16", True, "mixed_bfloat16"),
    ("float16", False, "mixed_float16")])
def test_mixed_precision_choice_follows_the_device(monkeypatch, choice, gpu, expected):
    import tensorflow as tf

    from tversky_keras.training import resolve_acceleration

    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["gpu"] if gpu else [])
    assert resolve_acceleration(TrainConfig(mixed_precision=choice)) == (expected, gpu)


def test_mixed_precision_on_trains_in_bfloat16_on_a_cpu(tiny_subjects, tmp_path):
    """float16 pooling has no CPU kernel in TensorFlow; ``on`` must pick bfloat16 there and train."""
    import keras
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU, where `on` means float16")
    # 16^3 patches: with 8^3 ones (a 2^3 bottleneck) TensorFlow 2.21's bfloat16 CPU training
    # turned the bottleneck kernels NaN within 1-2 steps in 3 runs of 4, under a finite
    # logged loss; the run then stops as diverged (it used to save the NaN model).
    config = TrainConfig(epochs=1, **{**TINY, "mixed_precision": "on", "patch_size": (16,) * 3})
    summary = train(config, tiny_subjects[:2], tiny_subjects[2:], tmp_path, verbose=0)
    assert summary["mixed_precision"] == "mixed_bfloat16"
    assert np.isfinite(float(read_log(tmp_path)[0]["loss"]))
    assert keras.mixed_precision.global_policy().name == "float32"  # restored
    model = keras.saving.load_model(tmp_path / "model.keras")
    assert model.output.dtype == "float32"  # probabilities stay float32
    assert all(np.isfinite(w).all() for w in model.get_weights())


class FirstWeights(keras.callbacks.Callback):
    """The model's weights when training begins."""

    def on_train_begin(self, logs=None):
        self.weights = self.model.get_weights()


def test_init_starts_from_a_saved_models_weights(finished_run, tiny_subjects, tmp_path):
    run_dir, config, _ = finished_run
    source = keras.saving.load_model(run_dir / "last.keras").get_weights()
    seen = FirstWeights()
    tuned = TrainConfig(**{**config.to_json(), "epochs": 1, "init": str(run_dir / "last.keras")})
    train(tuned, tiny_subjects[:2], [], tmp_path / "tuned", verbose=0, callbacks=[seen])
    assert len(seen.weights) == len(source)
    for a, b in zip(seen.weights, source):
        np.testing.assert_array_equal(a, b)
    # Without --init the same seed starts elsewhere: the copy above is not a coincidence.
    fresh = FirstWeights()
    train(TrainConfig(**{**tuned.to_json(), "init": None}), tiny_subjects[:2], [], tmp_path / "fresh",
          verbose=0, callbacks=[fresh])
    assert any(not np.array_equal(a, b) for a, b in zip(fresh.weights, source))


@pytest.mark.parametrize("change, problem", [
    ({"base_filters": 4}, "architecture differs.*base-filters"),
    ({"depth": 3}, "architecture differs"),
    ({"modalities": ["FLAIR", "T2W", "T1W"]}, "trained on modalities T1W, T2W, FLAIR"),
])
def test_init_refuses_another_architecture(finished_run, tiny_subjects, tmp_path, change, problem):
    run_dir, config, _ = finished_run
    other = TrainConfig(**{**config.to_json(), "epochs": 1, "init": str(run_dir / "last.keras"),
                           **change})
    with pytest.raises(ValueError, match=problem):
        train(other, tiny_subjects[:2], [], tmp_path, verbose=0)


def test_init_from_a_missing_or_foreign_file_is_a_clear_error(finished_run, tiny_subjects, tmp_path):
    _, config, _ = finished_run
    (tmp_path / "notes.keras").write_text("not a model")
    for path, problem in ((tmp_path / "absent.keras", "no such model file"),
                          (tmp_path / "notes.keras", "cannot load the model")):
        run = TrainConfig(**{**config.to_json(), "init": str(path)})
        with pytest.raises(ValueError, match=problem):
            train(run, tiny_subjects[:2], [], tmp_path / path.stem, verbose=0)


def test_a_rejected_setting_leaves_no_config_that_refuses_the_corrected_command(
        finished_run, tiny_subjects, tmp_path):
    _, config, _ = finished_run
    wrong = TrainConfig(**{**config.to_json(), "init": str(tmp_path / "typo.keras")})
    with pytest.raises(ValueError, match="no such model file"):
        train(wrong, tiny_subjects[:2], [], tmp_path / "run", verbose=0)
    assert not (tmp_path / "run" / "config.json").exists()
    corrected = TrainConfig(**{**config.to_json(), "epochs": 1})
    assert train(corrected, tiny_subjects[:2], [], tmp_path / "run", verbose=0)["epochs"] == 1


@pytest.mark.parametrize("option, problem", [
    (["--spacing", "-2"], "spacing must be positive"),
    (["--spacing", "0"], "spacing must be positive"),
    (["--lr", "-1"], "learning_rate must be positive"),
    (["--alpha", "-1"], "alpha and beta must be >= 0"),
    (["--patch", "18", "--depth", "2"], "multiple of 2\\^depth = 4"),
    (["--patch", "100000"], "at most 512"),
    (["--foreground-ratio", "1.5", "--patch", "16"], "foreground_ratio must lie in"),
    (["--dropout", "1"], "dropout must lie in"),
])
def test_bad_settings_are_refused_before_anything_is_written(tiny_subjects, tmp_path, capsys,
                                                            option, problem):
    from tversky_keras.cli import main

    data = Path(tiny_subjects[0].images["FLAIR"]).parents[1]
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), *option]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and re.search(problem, error[0])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("settings, problem", [
    (dict(seed=2**32), "seed must be an integer from 0 to 2\\*\\*32 - 1, got 4294967296"),
    (dict(seed=-1), "seed must be an integer"), (dict(seed=1.5), "seed must be an integer"),
    (dict(ce_weight=-1.0), "ce_weight must be >= 0, got ce_weight=-1.0")])
def test_train_config_names_the_setting_out_of_range(settings, problem):
    with pytest.raises(ValueError, match=problem):
        TrainConfig(**settings)
    assert TrainConfig(seed=2**32 - 1).seed == 2**32 - 1


def test_without_validation_a_monitored_loss_keeps_its_lowest_epoch(tiny_subjects, tmp_path):
    """--monitor val_loss with no validation set follows the training loss, lowest first."""
    config = TrainConfig(epochs=3, monitor="val_loss", **TINY)
    summary = train(config, tiny_subjects[:2], [], tmp_path / "run", verbose=0)
    losses = [float(r["loss"]) for r in read_log(tmp_path / "run")]
    assert summary["monitor"] == "loss" and len(set(losses)) == 3
    assert summary["best_epoch"] == int(np.argmin(losses))
    assert summary["best_value"] == pytest.approx(min(losses))


def test_subjects_of_different_voxel_sizes_need_a_spacing(tmp_path):
    write_tiny_subjects(tmp_path / "a", n=2)
    write_tiny_subjects(tmp_path / "b", n=1, affine=np.diag([1.0, 1.0, 3.0, 1.0]))
    other = discover_subjects(tmp_path / "b")[0]
    subjects = discover_subjects(tmp_path / "a") + [
        other.__class__(id="other", images=other.images, mask=other.mask)]
    with pytest.raises(ValueError, match="different voxel sizes.*other: \\[1.0, 1.0, 3.0\\]"):
        train(TrainConfig(epochs=1, **TINY), subjects, [], tmp_path / "run", verbose=0)
    train(TrainConfig(epochs=1, spacing=3.0, **TINY), subjects, [], tmp_path / "run3", verbose=0)
    assert scan_spec(keras.saving.load_model(tmp_path / "run3" / "last.keras"))["spacing"] == 3.0


def test_other_data_or_another_split_in_the_same_folder_are_refused(finished_run, tiny_subjects):
    run_dir, config, _ = finished_run
    with pytest.raises(ValueError, match="training subjects removed: sub01"):
        train(config, tiny_subjects[:1], tiny_subjects[2:], run_dir, verbose=0)
    with pytest.raises(ValueError, match="training subjects added: sub02.*validation subjects "
                                         "removed: sub02"):
        train(config, tiny_subjects, [], run_dir, verbose=0)


def test_a_changed_source_file_is_named(tiny_subjects, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(Path(tiny_subjects[0].images["FLAIR"]).parents[1], data)
    copies = discover_subjects(data)
    config = TrainConfig(epochs=1, **TINY)
    train(config, copies[:2], [], tmp_path / "run", verbose=0)
    # The same bytes touched are no change; other bytes are, even at the same time.
    path = copies[1].images["T2W"]
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    train(config, copies[:2], [], tmp_path / "run", verbose=0)  # finished: nothing to do
    image = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj) * 2.0, image.affine), path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(ValueError, match="training subjects files changed: sub01"):
        train(config, copies[:2], [], tmp_path / "run", verbose=0)


def test_a_second_process_on_a_busy_run_folder_gets_a_clear_error(tiny_subjects, tmp_path):
    from tversky_keras.claims import try_claim
    from tversky_keras.run_folder import RunFolderBusy

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with try_claim(run_dir):  # another training process holds the folder
        with pytest.raises(RunFolderBusy, match="another training process holds this run "
                                                "folder \\(pid \\d+ on host"):
            train(TrainConfig(epochs=1, **TINY), tiny_subjects[:2], [], run_dir, verbose=0)
    assert not (run_dir / "config.json").exists()
    train(TrainConfig(epochs=1, **TINY), tiny_subjects[:2], [], run_dir, verbose=0)
    assert not list(run_dir.glob("claim.*"))  # released at the end


def test_a_run_started_from_a_model_file_refuses_that_file_rewritten(finished_run, tiny_subjects,
                                                                     tmp_path):
    run_dir, config, _ = finished_run
    init = tmp_path / "init.keras"
    shutil.copy(run_dir / "last.keras", init)
    tuned = TrainConfig(**{**config.to_json(), "epochs": 1, "init": str(init)})
    train(tuned, tiny_subjects[:2], [], tmp_path / "tuned", verbose=0)
    shutil.copy(run_dir / "model.keras", init)  # other weights, same path
    os.utime(init, ns=(init.stat().st_atime_ns, init.stat().st_mtime_ns + 10**9))
    with pytest.raises(ValueError, match="init file \\(rewritten since the run started\\)"):
        train(tuned, tiny_subjects[:2], [], tmp_path / "tuned", verbose=0)


@pytest.mark.parametrize("settings, message", [
    ({"alpha": float("nan")}, "alpha must be a finite number"),
    ({"ce_weight": float("inf")}, "ce_weight must be a finite number"),
    ({"depth": 10}, "depth must be at most 9"),
])
def test_train_config_refuses_non_finite_and_too_deep(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**settings)


class PoisonWeights(keras.callbacks.Callback):
    """Sets one weight to NaN after the last batch of epoch 1: every loss that epoch
    logged is finite, so only the weights themselves can tell. (Poisoned earlier, the
    next batch's loss is NaN on some CPU kernels and finite on others.)"""

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 1 and batch == self.params["steps"] - 1:
            weight = self.model.weights[0]
            weight.assign(np.full(weight.shape, np.nan, "float32"))

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch


def test_non_finite_weights_stop_the_run_and_are_never_saved(tiny_data, tmp_path):
    subjects = discover_subjects(tiny_data)
    config = TrainConfig(epochs=3, **TINY)
    with pytest.raises(TrainingDiverged, match="weights not finite"):
        train(config, subjects, [], tmp_path, verbose=0, callbacks=[PoisonWeights()])
    model = keras.saving.load_model(tmp_path / "last.keras", compile=False)
    assert all(np.isfinite(w).all() for w in model.get_weights())  # epoch 0's, intact


def test_validation_without_a_lesion_voxel_is_a_warning_at_the_start(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    label = data / "sub02" / "consensus_gt.nii.gz"
    image = nib.load(label)
    nib.save(nib.Nifti1Image(np.zeros(image.shape, np.uint8), image.affine), label)
    subjects = discover_subjects(data)
    # Recorded by hand, not pytest.warns: that would show Keras' upstream warnings again.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        train(TrainConfig(epochs=1, **TINY), subjects[:2], subjects[2:], tmp_path / "run",
              verbose=0, cache_dir=tmp_path / "cache")
    (message,) = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert message.startswith("no validation subject has a lesion voxel (sub02): val_dice, "
                              "which picks model.keras, can then only reward predicting nothing")


def test_training_refuses_labels_without_a_lesion_and_writes_nothing(tiny_data, tmp_path):
    empty = tmp_path / "data"
    shutil.copytree(tiny_data, empty)
    for label in empty.glob("*/consensus_gt.nii.gz"):
        image = nib.load(label)
        nib.save(nib.Nifti1Image(np.zeros(image.shape, np.uint8), image.affine), label)
    with pytest.raises(ValueError, match="none of the 3 training subjects has a lesion voxel"):
        train(TrainConfig(epochs=1, **TINY), discover_subjects(empty), [], tmp_path / "run",
              verbose=0, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "run" / "config.json").exists()


@pytest.mark.parametrize("text, message", [
    ("epoch,loss\n0,0.5\nzero,0.4\n", r"log.csv: line 3 is no training log row"),
    ("epoch,loss\n0,not-a-number\n", r"log.csv: line 2 is no training log row"),
    ("\x00\x01garbage\n1,2,3\n", r"log.csv: line 2 is no training log row"),
])
def test_a_garbage_training_log_is_named(tmp_path, text, message):
    from tversky_keras.run_folder import read_log as package_read_log

    (tmp_path / "log.csv").write_text(text)
    with pytest.raises(ValueError, match=message):
        package_read_log(tmp_path / "log.csv")
