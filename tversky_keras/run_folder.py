"""A training run's folder: its record, log, checkpoints and lock.

    RUN_DIR/config.json     every setting of the run, and the data it trains on
    RUN_DIR/log.csv         one row per epoch (loss, validation metrics, lr)
    RUN_DIR/model.keras     best epoch on the monitored validation metric
    RUN_DIR/last.keras      the last finished epoch
    RUN_DIR/summary.json    written when the run finished
    RUN_DIR/backup/         training state while it runs (weights, optimizer,
                            epoch); lets an interrupted run resume
    RUN_DIR/claim.<g>.json  while a process trains in the folder

Every file is written under a temporary name and renamed, so a kill never
leaves half a file.
"""

import csv
import json
import math
import shutil
import zipfile
from pathlib import Path

import keras
import numpy as np

from tversky_keras.atomic import atomic_path
from tversky_keras.claims import current_holder, try_claim
from tversky_keras.data.cache import file_identity, source_digest


def save_model_atomically(model, path):
    """Save to a temporary name beside ``path``, then rename: never a half file."""
    with atomic_path(path) as temporary:
        model.save(temporary)


def read_json_file(path, what):
    """A run folder's JSON file, or a ValueError naming it when it cannot be read."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: unreadable {what} ({error}); delete it (or the run folder) "
                         f"and run again") from None


def check_finished_models(run_dir):
    """A finished run's saved models, each a whole zip whose members pass their CRC-32
    (``zipfile.ZipFile.testzip``), or a ValueError naming the damaged or missing one."""
    run_dir = Path(run_dir)
    for name, required in (("last.keras", True), ("model.keras", False)):
        path = run_dir / name
        if not path.is_file():
            if required:
                raise ValueError(f"{path}: missing, though summary.json says the run finished; "
                                 f"delete {run_dir} to train it again")
            continue
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (OSError, zipfile.BadZipFile, EOFError) as error:
            bad = str(error)
        if bad is not None:
            raise ValueError(f"{path}: damaged ({bad}); the run finished, but this model "
                             f"cannot be loaded: delete {run_dir} to train it again")


def read_log(path):
    """The rows of a run's ``log.csv`` as dicts of strings; none if it does not exist.

    Raises:
        ValueError: naming the file and line, when a row has no whole-number epoch or a
            value that is not a number (a damaged or foreign file).
    """
    path = Path(path)
    if not path.is_file():
        return []
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"{path}: unreadable training log ({error}); delete it (or the run "
                         f"folder) and run again") from None
    for line, row in enumerate(rows, 2):
        try:
            int(row["epoch"])
            [float(value) for key, value in row.items() if key != "epoch" and value != ""]
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path}: line {line} is no training log row ({error!r}); delete "
                             f"it (or the run folder) and run again") from None
    return rows


class RunRecorder(keras.callbacks.Callback):
    """Log, checkpoint and guard a run, one finished epoch at a time.

    Writes ``log.csv`` (rows of epochs a resumed run repeats are replaced),
    ``last.keras`` each epoch and ``model.keras`` when the monitored validation
    metric improves, each atomically. Stops the run on a NaN or infinite loss
    before anything is written for that epoch.
    """

    def __init__(self, run_dir, monitor, start_epoch=0):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.monitor = monitor
        self.start_epoch = start_epoch
        # "loss" too: a run without validation follows its training metrics.
        self.mode_max = monitor not in ("val_loss", "loss")
        self.diverged_at = None
        self.best = None
        self.best_epoch = None

    def on_train_begin(self, logs=None):
        path = self.run_dir / "log.csv"
        rows = read_log(path)
        self.rows = [r for r in rows if int(r["epoch"]) < self.start_epoch]
        for row in self.rows:
            if row.get(self.monitor) in (None, ""):
                raise ValueError(f"{path}: epoch {row['epoch']} has no {self.monitor}, which "
                                 f"this run monitors; delete it (or the run folder) and run "
                                 f"again")
            self._consider(float(row[self.monitor]), int(row["epoch"]))

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.diverged_at = (batch, float(loss))
            self.model.stop_training = True

    def _consider(self, value, epoch):
        better = self.best is None or (value > self.best if self.mode_max else value < self.best)
        if math.isfinite(value) and better:
            self.best, self.best_epoch = value, epoch
            return True
        return False

    def on_epoch_end(self, epoch, logs=None):
        if self.diverged_at is None:
            # A finite logged loss can hide non-finite weights (NaN inputs in a few
            # patches): nothing non-finite is ever saved.
            bad = [w.path for w in self.model.weights
                   if not np.isfinite(keras.ops.convert_to_numpy(w)).all()]
            if bad:
                self.diverged_at = (f"end ({len(bad)} weights not finite, e.g. {bad[0]})",
                                    float((logs or {}).get("loss", float("nan"))))
                self.model.stop_training = True
        if self.diverged_at is not None:
            return
        logs = {k: float(v) for k, v in (logs or {}).items()}
        lr = self.model.optimizer.learning_rate
        row = {"epoch": epoch, **logs, "lr": float(keras.ops.convert_to_numpy(lr))}
        self.rows.append(row)
        write_csv_atomically(self.rows, self.run_dir / "log.csv")
        save_model_atomically(self.model, self.run_dir / "last.keras")
        if self.monitor in logs and self._consider(logs[self.monitor], epoch):
            # The model just saved as last.keras: its bytes copied, not serialised again.
            with atomic_path(self.run_dir / "model.keras") as temporary:
                shutil.copyfile(self.run_dir / "last.keras", temporary)


def write_csv_atomically(rows, path):
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def resumed_epoch(backup_dir):
    """The epoch an interrupted run restarts at, from BackupAndRestore's record."""
    meta = Path(backup_dir) / "training_metadata.json"
    try:
        return int(json.loads(meta.read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def run_record(config, train_subjects, val_subjects):
    """What ``config.json`` holds: every setting, and the data the run trains and validates on.

    Each subject is recorded by id and a digest of its source files' identity
    (resolved path, size, modification time; ``tversky_keras.data.cache``), so a
    run folder can tell another data set, another split or a changed file.
    """
    def digests(subjects):
        return {s.id: source_digest(s) for s in subjects}

    record = {**config.to_json(),
              "data": {"train": digests(train_subjects), "val": digests(val_subjects)}}
    if config.init and Path(config.init).is_file():
        # The weights a run starts from are data too: another file at the same path is refused.
        record["init_file"] = file_identity("init", config.init)
    return record


# Settings added after run folders were first written, with the value every
# earlier run had: a record without one is read as holding it.
ADDED_LATER = {"intensity_normalization": "zscore"}


def differences(saved, wanted):
    """Names of what differs between two run records, data down to subjects."""
    def value(record, key):
        return record.get(key, ADDED_LATER.get(key))

    changed = [k for k in sorted(set(saved) | set(wanted))
               if k != "data" and value(saved, k) != value(wanted, k)]
    changed = ["init file (rewritten since the run started)" if k == "init_file" else k
               for k in changed]
    for part, label in (("train", "training subjects"), ("val", "validation subjects")):
        before = (saved.get("data") or {}).get(part, {})
        after = wanted["data"][part]
        added, removed = sorted(set(after) - set(before)), sorted(set(before) - set(after))
        edited = sorted(i for i in set(before) & set(after) if before[i] != after[i])
        for words, ids in (("added", added), ("removed", removed), ("files changed", edited)):
            if ids:
                changed.append(f"{label} {words}: {', '.join(ids[:5])}"
                               + (f" and {len(ids) - 5} more" if len(ids) > 5 else ""))
    return changed


def check_run_folder(run_dir, record):
    """Refuse to resume a run folder that holds other settings or other data.

    ``config.json`` itself is written by ``tversky_keras.training`` only once the run is set
    up (data read, model built): a setting rejected on the way leaves no
    record that would then refuse the corrected command.
    """
    path = Path(run_dir) / "config.json"
    if path.is_file():
        saved = read_json_file(path, "run record")
        changed = differences(saved, record)
        if changed:
            raise ValueError(
                f"{path}: this run folder holds a run with other settings or data "
                f"({'; '.join(changed)}); use a new output folder or delete it")


class RunFolderBusy(RuntimeError):
    """Another process is training in the same run folder."""


def claim_run_folder(run_dir):
    """The ``tversky_keras.claims.Claim`` on ``run_dir``, or ``RunFolderBusy`` naming its holder."""
    claim = try_claim(run_dir)
    if claim is None:
        holder = current_holder(run_dir)
        raise RunFolderBusy(
            f"{run_dir}: another training process holds this run folder "
            f"({holder.describe() if holder else 'it is starting'}); wait for it to end, or "
            f"give another output folder")
    return claim


def log_dataframe(run_dir):
    """The epoch log of a run as a dict of numpy columns (for plots)."""
    rows = read_log(Path(run_dir) / "log.csv")
    if not rows:
        return {}
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}
