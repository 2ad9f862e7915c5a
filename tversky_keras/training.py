"""Train a 3D U-Net with the Tversky loss: resumable, checkpointed, logged.

A run lives in one folder (``tversky_keras.run_folder`` reads and writes it).
Starting the same command again resumes an interrupted run from its last
finished epoch, and returns at once for a finished one.
"""

import dataclasses
import functools
import json
import math
import numbers
import os
import re
import time
from pathlib import Path

import keras
import numpy as np

from tversky_keras import losses as losses_lib
from tversky_keras import metrics as metrics_lib
from tversky_keras.atomic import write_json
from tversky_keras.data import MODALITIES
from tversky_keras.data.io import check_modalities
from tversky_keras.data.normalize import INTENSITY_NORMALIZATIONS
from tversky_keras.data.cache import preprocess
from tversky_keras.models import DATA_FORMATS, MAX_INPUT_SIDE, NORMALIZATIONS, unet3d
from tversky_keras.run_folder import (RunRecorder, check_run_folder, claim_run_folder,
                                      resumed_epoch, run_record)
from tversky_keras.saving import load_saved_model
from tversky_keras.scan_spec import scan_spec, with_scan_spec

# A side of a training patch (models.MAX_INPUT_SIDE).
MAX_PATCH = MAX_INPUT_SIDE
MAX_DEPTH = 9  # 2^9 = MAX_PATCH: a deeper U-Net has no grid it could pool
MAX_SEED = 2**32 - 1  # the largest seed NumPy and Keras accept
MONITORS = ("val_dice", "val_f2", "val_prauc", "val_sensitivity", "val_loss")
# auto: float16 on a GPU, float32 on a CPU; on: float16 on a GPU, bfloat16 on a CPU.
MIXED_PRECISION = ("auto", "on", "off", "float16", "bfloat16")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; no model was written for that epoch."""


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a training run; saved as ``config.json``.

    The defaults are the paper's: Adam at 1e-4 multiplied by 0.9 every 1000
    steps, whole volumes, no class balancing, no augmentation. ``pool_batch``
    computes one Tversky index over the whole batch (MONAI's ``batch=True``),
    so patches without lesions still teach the network through their false
    positives. ``init`` names a saved ``.keras`` model of the same
    architecture whose weights the run starts from (fine-tuning).
    """

    alpha: float = 0.5
    beta: float = 0.5
    gamma: float = 1.0
    smooth: float = 0.0
    pool_batch: bool = False
    ce_weight: float = 0.0
    modalities: tuple = MODALITIES
    spacing: float | None = None
    patch_size: tuple | None = None
    batch_size: int = 1
    epochs: int = 100
    steps_per_epoch: int = 10
    base_filters: int = 16
    depth: int = 4
    normalization: str | None = None
    dropout: float = 0.0
    data_format: str = "channels_last"
    learning_rate: float = 1e-4
    lr_decay_rate: float = 0.9
    lr_decay_steps: int = 1000
    foreground_ratio: float = 0.0
    flips: bool = False
    intensity_augmentation: bool = False
    intensity_normalization: str = "zscore"
    monitor: str = "val_dice"
    seed: int = 0
    mixed_precision: str = "auto"
    jit_compile: str = "auto"
    tensorboard: bool = False
    init: str | None = None

    def __post_init__(self):
        self.modalities = tuple(self.modalities)
        if self.patch_size is not None:
            self.patch_size = tuple(int(s) for s in self.patch_size)
        if self.monitor not in MONITORS:
            raise ValueError(f"monitor={self.monitor!r}: choose one of {', '.join(MONITORS)}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision={self.mixed_precision!r}: choose "
                             f"{', '.join(MIXED_PRECISION)}")
        if self.jit_compile not in ("auto", "on", "off"):
            raise ValueError(f"jit_compile={self.jit_compile!r}: choose auto, on or off")
        if self.epochs < 1 or self.steps_per_epoch < 1 or self.batch_size < 1:
            raise ValueError("epochs, steps_per_epoch and batch_size must be at least 1")
        self._check_values()

    def _check_values(self):
        """ValueError naming the first setting out of range, before anything is written."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and not math.isfinite(value):
                raise ValueError(f"{field.name} must be a finite number, got {value}")
        check_modalities(self.modalities)
        make_loss(self)  # the loss checks alpha, beta, gamma and smooth itself
        positive = {"learning_rate": self.learning_rate, "lr_decay_steps": self.lr_decay_steps,
                    "base_filters": self.base_filters, "depth": self.depth}
        if self.depth > MAX_DEPTH:
            raise ValueError(f"depth must be at most {MAX_DEPTH} (2^depth = {2 ** MAX_DEPTH} "
                             f"voxels per side already exceeds any patch), got {self.depth}")
        if self.spacing is not None:
            positive["spacing"] = self.spacing
        for name, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be positive, got {value}")
        if not 0 < self.lr_decay_rate <= 1:
            raise ValueError(f"lr_decay_rate must lie in (0, 1], got {self.lr_decay_rate}")
        if not 0 <= self.foreground_ratio <= 1:
            raise ValueError(f"foreground_ratio must lie in [0, 1], got {self.foreground_ratio}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if not (isinstance(self.seed, numbers.Integral) and 0 <= self.seed <= MAX_SEED):
            raise ValueError(f"seed must be an integer from 0 to 2**32 - 1, got {self.seed!r}")
        if self.intensity_normalization not in INTENSITY_NORMALIZATIONS:
            raise ValueError(f"intensity_normalization must be one of "
                             f"{', '.join(INTENSITY_NORMALIZATIONS)}, got "
                             f"{self.intensity_normalization!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got "
                             f"{self.normalization!r}")
        if self.data_format not in DATA_FORMATS:
            raise ValueError(f"data_format must be one of {DATA_FORMATS}, got "
                             f"{self.data_format!r}")
        if self.patch_size is not None:
            multiple = 2 ** self.depth
            if len(self.patch_size) != 3 or any(p % multiple or not 0 < p <= MAX_PATCH
                                                for p in self.patch_size):
                raise ValueError(
                    f"patch_size {self.patch_size}: each size must be a multiple of "
                    f"2^depth = {multiple} (the U-Net pools {self.depth} times) and at most "
                    f"{MAX_PATCH}")

    def to_json(self):
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}

    def grid(self):
        """The preprocessing settings of the network's grid (``tversky_keras.data.preprocess``)."""
        return {"modalities": self.modalities, "target_spacing": self.spacing,
                "multiple_of": 2 ** self.depth, "normalize": self.intensity_normalization}


def make_loss(config):
    """The configured loss: Tversky (focal when gamma != 1), plus CE when asked."""
    options = dict(alpha=config.alpha, beta=config.beta, gamma=config.gamma,
                   smooth=config.smooth, batch=config.pool_batch)
    if config.ce_weight:
        return losses_lib.TverskyCrossEntropyLoss(ce_weight=config.ce_weight, **options)
    return losses_lib.TverskyLoss(**options)


def make_metrics(threshold=0.5):
    """The paper's lesion metrics as streaming Keras metrics."""
    return [
        metrics_lib.DiceScore(threshold=threshold, name="dice"),
        metrics_lib.Sensitivity(threshold=threshold, name="sensitivity"),
        metrics_lib.Specificity(threshold=threshold, name="specificity"),
        metrics_lib.FBetaScore(beta=2.0, threshold=threshold, name="f2"),
        metrics_lib.PRAUC(name="prauc"),
    ]


def paper_schedule(config):
    """The paper's learning rate: multiplied by 0.9 every 1000 steps (by default)."""
    return keras.optimizers.schedules.ExponentialDecay(
        config.learning_rate, decay_steps=config.lr_decay_steps,
        decay_rate=config.lr_decay_rate, staircase=True)


def paper_optimizer(config):
    """Adam on the paper's schedule."""
    return keras.optimizers.Adam(learning_rate=paper_schedule(config))


def resolve_acceleration(config):
    """The mixed-precision policy and XLA: by default both on only on a GPU, where they help.

    Returns ``(policy, jit)``: ``policy`` is ``None`` (float32), ``"mixed_float16"``
    or ``"mixed_bfloat16"``. ``on`` means float16 on a GPU and bfloat16 on a CPU,
    where TensorFlow has no float16 pooling kernel and bfloat16 runs on
    AVX512_BF16/AMX units (a 1.2-1.4x faster step on the CPU of
    ``benchmarks/RESULTS.md``). On CPU, XLA ran Conv3D about 14x slower than
    plain execution, so ``auto`` leaves both off there.
    """
    import tensorflow as tf

    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    choice = config.mixed_precision
    if choice == "auto":
        choice = "on" if has_gpu else "off"
    if choice == "on":
        choice = "float16" if has_gpu else "bfloat16"
    policy = None if choice == "off" else f"mixed_{choice}"
    jit = config.jit_compile == "on" or (config.jit_compile == "auto" and has_gpu)
    return policy, jit


class WorkerLost(RuntimeError):
    """Another worker of a multi-worker run stopped or cannot be reached."""


def cluster_task():
    """This process' place in a ``TF_CONFIG`` cluster: ``(type, index, is_chief)``.

    ``None`` without ``TF_CONFIG``. The chief is the ``chief`` task, or worker
    0 when the cluster has none.
    """
    text = os.environ.get("TF_CONFIG") or "{}"
    try:
        tf_config = json.loads(text)
    except ValueError as error:
        raise ValueError(f"the TF_CONFIG environment variable is not valid JSON ({error}): "
                         f"{text[:200]!r}") from None
    if not isinstance(tf_config, dict):
        raise ValueError(f"TF_CONFIG must be a JSON object with 'cluster' and 'task', got "
                         f"{text[:200]!r}")
    task = tf_config.get("task") or {}
    if not task:
        return None
    cluster = tf_config.get("cluster") or {}
    if not isinstance(task, dict) or not isinstance(cluster, dict):
        raise ValueError(f"TF_CONFIG: 'task' and 'cluster' must be JSON objects, got "
                         f"{text[:200]!r}")
    try:
        index = int(task.get("index", 0))
    except (TypeError, ValueError):
        raise ValueError(f"TF_CONFIG: task index {task.get('index')!r} is not an integer") \
            from None
    members = cluster.get(task.get("type"))
    if not isinstance(members, list) or not 0 <= index < len(members):
        members_by_kind = ', '.join(f'{k}: {len(v) if isinstance(v, list) else v}'
                                    for k, v in cluster.items())
        raise ValueError(
            f"TF_CONFIG: task {task.get('type')!r} index {index} is not in the cluster "
            f"({members_by_kind or 'empty'})")
    is_chief = task.get("type") == "chief" or (
        "chief" not in cluster and task.get("type") == "worker" and index == 0)
    return task.get("type"), index, is_chief


def _nest_safe(strategy_class):
    """``strategy_class`` whose ``reduce`` accepts what Keras 3's trainer gives it.

    Under ``MultiWorkerMirroredStrategy`` Keras 3's TensorFlow trainer fails
    twice (keras-team/keras#20585): before training it calls
    ``strategy.reduce("MEAN", (x, y))`` on a whole batch, only to learn the
    data's shapes, and on every step ``reduce("MEAN", scalar, axis=0)`` on the
    logs; the strategy rejects both. Here a nested value (that batch) gives
    this worker's own tensors, with no communication, and a scalar is reduced
    across the replicas, which is what ``axis=0`` asks of a per-replica scalar.
    """
    import tensorflow as tf

    class NestSafe(strategy_class):
        def reduce(self, reduce_op, value, axis=None):
            if tf.nest.is_nested(value):
                return tf.nest.map_structure(
                    lambda v: self.experimental_local_results(v)[0], value)
            rank = len(self.experimental_local_results(value)[0].shape)
            return super().reduce(reduce_op, value, axis if rank else None)

    NestSafe.__name__ = NestSafe.__qualname__ = strategy_class.__name__
    return NestSafe


@functools.cache
def distribution_strategy():
    """Every local GPU through MirroredStrategy; several machines via TF_CONFIG.

    With ``TF_CONFIG`` set (see the README's multi-worker section) the run uses
    ``MultiWorkerMirroredStrategy``; with more than one local GPU,
    ``MirroredStrategy``; else the default strategy. Made once per process:
    collective operations must be configured before TensorFlow runs any op,
    so ``train`` calls this first.
    """
    import tensorflow as tf

    if os.environ.get("TF_CONFIG") and cluster_task() is not None:  # checks TF_CONFIG first
        try:
            return _nest_safe(tf.distribute.MultiWorkerMirroredStrategy)()
        except RuntimeError as error:
            raise RuntimeError(
                f"TF_CONFIG is set, but TensorFlow had already run operations in this "
                f"process ({error}); start multi-worker training in a fresh process") from error
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return _nest_safe(tf.distribute.MirroredStrategy)()
    return tf.distribute.get_strategy()


def writer_dir(run_dir):
    """Where this process writes: the run folder, or a scratch folder on non-chief workers.

    Under ``MultiWorkerMirroredStrategy`` every worker runs the same callbacks,
    but only the chief may write the run folder; the others write their logs
    and models to ``RUN_DIR/.<type><index>`` (the final weights there let a
    user check that the workers agree) and never touch the chief's files.
    """
    task = cluster_task()
    if task is None or task[2]:
        return Path(run_dir)
    return Path(run_dir) / f".{task[0]}{task[1]}"


def build_model(config, spacing=None):
    """The configured U-Net behind a ScanSpec recording modalities and grid.

    Args:
        spacing: the voxel size the model is trained at (``config.spacing``
            when ``None``): ``train`` passes the data's own when the scans are
            not resampled, so every saved model carries its resolution.
    """
    network = unet3d(input_shape=(None, None, None, len(config.modalities)), n_classes=2,
                     base_filters=config.base_filters, depth=config.depth,
                     normalization=config.normalization, dropout=config.dropout,
                     data_format=config.data_format)
    return with_scan_spec(network, config.modalities,
                          spacing=config.spacing if spacing is None else spacing,
                          multiple_of=2 ** config.depth,
                          intensity_normalization=config.intensity_normalization)


def data_spacing(volumes, tolerance=1e-3):
    """The voxel size all ``volumes`` were read at, per axis, or a ValueError naming them.

    Without ``--spacing`` the scans keep their own grids; a model trained on
    them must record that grid, which only exists if they share it.
    """
    spacings = {v.id: np.round(np.asarray(v.geometry.spacing, float), 6) for v in volumes}
    first = next(iter(spacings.values()))
    different = {i: s.tolist() for i, s in spacings.items()
                 if not np.allclose(s, first, atol=tolerance)}
    if different:
        raise ValueError(
            f"the training subjects have different voxel sizes ({next(iter(spacings))}: "
            f"{first.tolist()} mm; {', '.join(f'{i}: {s} mm' for i, s in different.items())}); "
            f"give --spacing to resample them to one")
    return first.tolist()


def train(config, train_subjects, val_subjects, run_dir, verbose=1, callbacks=(), cache_dir=None,
          loss=None):
    """Train (or resume, or skip a finished) run and return its summary dict.

    Args:
        config: a ``TrainConfig``.
        train_subjects: ``Subject`` list to train on.
        val_subjects: ``Subject`` list for validation (may be empty: then the
            monitored metric is the training one without the ``val_`` prefix).
        run_dir: the run folder (created).
        verbose: Keras' progress bar level (0 silent, 1 bar, 2 a line an epoch).
        callbacks: extra Keras callbacks (e.g. a progress display).
        cache_dir: where subjects are preprocessed to (``tversky_keras.data.preprocess``).
        loss: a Keras loss to train with instead of ``make_loss(config)`` (the
            one seam for another loss; ``config.json`` does not record it).

    Returns:
        The summary written to ``RUN_DIR/summary.json``.

    Raises:
        TrainingDiverged: the loss became NaN or infinite.
        WorkerLost: another worker of a multi-worker run stopped.
        ValueError: ``run_dir`` holds a run with other settings or data.
        RunFolderBusy: another process is training in ``run_dir``.
    """
    strategy = distribution_strategy()  # before any other TensorFlow op
    run_dir = Path(run_dir)
    own_dir = writer_dir(run_dir)
    own_dir.mkdir(parents=True, exist_ok=True)
    record = run_record(config, train_subjects, val_subjects)
    with claim_run_folder(own_dir):
        check_run_folder(own_dir, record)
        # Every worker asks the chief's folder whether the run is finished.
        summary_path = run_dir / "summary.json"
        if summary_path.is_file():
            return json.loads(summary_path.read_text())

        keras.utils.set_random_seed(config.seed)
        mixed, jit = resolve_acceleration(config)
        previous_policy = keras.mixed_precision.global_policy()
        if mixed:
            keras.mixed_precision.set_global_policy(mixed)
        try:
            return _fit(config, train_subjects, val_subjects, run_dir, own_dir, strategy,
                        verbose, jit, mixed, list(callbacks), cache_dir, record,
                        loss or make_loss(config))
        finally:
            keras.mixed_precision.set_global_policy(previous_policy)


def initialise_from(model, config):
    """Copy the weights of the saved model ``config.init`` into ``model``.

    Weights only: the optimizer starts afresh. The saved model must have the
    same modalities and every weight the same shape, in the same order.

    Raises:
        ValueError: the file is missing or unreadable, or the architectures differ.
    """
    path = Path(config.init)
    if not path.is_file():
        raise ValueError(f"{path}: no such model file to initialise from (--init)")
    try:
        source = load_saved_model(path, compile=False)
    except ValueError as error:
        raise ValueError(f"--init: cannot load the model to initialise from: {error}") from error
    spec = scan_spec(source)
    if spec and tuple(spec["modalities"]) != tuple(config.modalities):
        raise ValueError(f"{path}: trained on modalities {', '.join(spec['modalities'])}, this "
                         f"run uses {', '.join(config.modalities)}")
    theirs, ours = source.weights, model.weights
    for index, (a, b) in enumerate(zip(theirs, ours)):
        if tuple(a.shape) != tuple(b.shape):
            raise ValueError(
                f"{path}: its architecture differs from this run's (weight {index}, {a.path}: "
                f"{tuple(a.shape)} vs {tuple(b.shape)}); give the --base-filters, --depth and "
                f"--normalization it was trained with")
    if len(theirs) != len(ours):
        raise ValueError(f"{path}: its architecture differs from this run's ({len(theirs)} vs "
                         f"{len(ours)} weights); give the --base-filters, --depth and "
                         f"--normalization it was trained with")
    model.set_weights(source.get_weights())


class _RestoreOnly(keras.callbacks.BackupAndRestore):
    """Restores the chief's backup on a non-chief worker, and never writes or deletes it."""

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_batch_end(self, batch, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass


def _datasets(config, strategy, train_volumes, val_volumes, start_epoch):
    """The training stream and the validation set, sharded per worker under TF_CONFIG.

    Sharding policy: the seeded training stream is dealt out by example,
    example ``k`` to worker ``k % n_workers``, each worker taking
    ``batch_size / n_workers`` examples per step, so together the workers see
    the examples a single process would, in other batches. Every worker
    evaluates the whole validation set: each volume is then counted once per
    worker, which leaves every validation metric unchanged (they are ratios of
    pooled counts), and no worker waits at the end of a shorter shard.
    """
    from tversky_keras.data.pipeline import make_dataset

    # A resumed run draws fresh patches instead of replaying the first epochs'.
    stream = dict(patch_size=config.patch_size, foreground_ratio=config.foreground_ratio,
                  flips=config.flips, intensity_augmentation=config.intensity_augmentation,
                  seed=config.seed + 7919 * start_epoch)
    val = dict(batch_size=1, shuffle=False, repeat=False)
    task = cluster_task()
    if task is None:
        train_ds = make_dataset(train_volumes, batch_size=config.batch_size, **stream)
        return train_ds, make_dataset(val_volumes, **val) if val_volumes else None
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ValueError(f"--batch-size {config.batch_size} is the global batch: it must be a "
                         f"multiple of the {replicas} replicas of the cluster")

    def train_fn(context):
        return make_dataset(train_volumes, batch_size=context.get_per_replica_batch_size(
            config.batch_size), shard=(context.input_pipeline_id, context.num_input_pipelines),
            **stream)

    train_ds = strategy.distribute_datasets_from_function(train_fn)
    val_ds = (strategy.distribute_datasets_from_function(
        lambda context: make_dataset(val_volumes, **val)) if val_volumes else None)
    return train_ds, val_ds


def _fit(config, train_subjects, val_subjects, run_dir, own_dir, strategy, verbose, jit, mixed,
         extra_callbacks, cache_dir, record, loss):
    train_volumes = preprocess(train_subjects, cache_dir, **config.grid())
    val_volumes = preprocess(val_subjects, cache_dir, **config.grid())
    if train_volumes and not any(v.count("lesion") for v in train_volumes):
        raise ValueError(
            f"none of the {len(train_volumes)} training subjects has a lesion voxel in its "
            f"label ({', '.join(v.id for v in train_volumes[:5])}"
            f"{', ...' if len(train_volumes) > 5 else ''}): the loss has nothing to learn "
            f"from; check the label files")
    backup_dir = run_dir / "backup"
    start_epoch = resumed_epoch(backup_dir)
    train_ds, val_ds = _datasets(config, strategy, train_volumes, val_volumes, start_epoch)

    spacing = None if config.spacing is not None else data_spacing(train_volumes + val_volumes)
    with strategy.scope():
        model = build_model(config, spacing)
        if config.init:
            initialise_from(model, config)
        model.compile(optimizer=paper_optimizer(config), loss=loss,
                      metrics=make_metrics(), jit_compile=jit)

    monitor = config.monitor if val_ds is not None else config.monitor.removeprefix("val_")
    recorder = RunRecorder(own_dir, monitor, start_epoch)
    # The recorder goes first: a kill between the two leaves the log ahead of
    # the backup, and the repeated epoch's row is then replaced, never lost.
    # Only the chief writes the backup; every worker resumes from it.
    backup = keras.callbacks.BackupAndRestore if own_dir == run_dir else _RestoreOnly
    callbacks = [recorder, backup(str(backup_dir), double_checkpoint=True)]
    if config.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(own_dir / "tensorboard")))
    callbacks += extra_callbacks

    if not (own_dir / "config.json").is_file():
        write_json(record, own_dir / "config.json")
    started = time.perf_counter()
    try:
        # shuffle=False: the dataset shuffles itself (seeded); Keras cannot shuffle tf.data.
        model.fit(train_ds, epochs=config.epochs, steps_per_epoch=config.steps_per_epoch,
                  shuffle=False, validation_data=val_ds, callbacks=callbacks, verbose=verbose)
    except Exception as error:
        _raise_if_worker_lost(error, own_dir)
        raise
    if recorder.diverged_at is not None:
        batch, value = recorder.diverged_at
        raise TrainingDiverged(
            f"{run_dir}: the training diverged (loss {value}) at batch {batch} of epoch "
            f"{len(recorder.rows)}; stopped without saving that epoch. Try a lower "
            f"learning rate, or check the input data for extreme or missing values.")

    last = recorder.rows[-1]
    summary = {
        "epochs": config.epochs,
        "steps": config.epochs * config.steps_per_epoch,
        "seconds_this_session": round(time.perf_counter() - started, 1),
        "resumed_from_epoch": start_epoch,
        "monitor": monitor,
        "best_epoch": recorder.best_epoch,
        "best_value": recorder.best,
        "last": {k: v for k, v in last.items() if k != "epoch"},
        "mixed_precision": mixed,
        "jit_compile": jit,
        "n_train": len(train_volumes),
        "n_val": len(val_volumes),
        "replicas": strategy.num_replicas_in_sync,
    }
    write_json(summary, own_dir / "summary.json")
    if verbose:
        print(f"trained {config.epochs} epochs in {summary['seconds_this_session']} s; "
              f"best {monitor} {recorder.best:.4f} at epoch {recorder.best_epoch + 1}; "
              f"model: {own_dir / 'model.keras'}")
    return summary


def _raise_if_worker_lost(error, own_dir):
    """A ``WorkerLost`` in place of TensorFlow's error when a multi-worker peer went away."""
    import tensorflow as tf

    lost = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.DeadlineExceededError,
            tf.errors.InternalError, tf.errors.CancelledError)
    if cluster_task() is None or not isinstance(error, lost):
        return
    text = str(error)
    # Which of TensorFlow's errors arrives first is a race; each names the peer its own way.
    unhealthy = re.search(r"unhealthy[^:]*:\s*(/job:\S+)", text)
    refused = re.search(r"(ipv4:\S+|\S+:\d+): Failed to connect[^\n]*", text)
    remote = re.search(r"remote target (/job:\S+)", text)
    reason = re.search(r'grpc_message:"([^"]*)"', text)
    cause = (f"{unhealthy.group(1)} stopped sending heartbeats" if unhealthy
             else f"cannot connect to {refused.group(1)}" if refused
             else f"lost the connection to {remote.group(1)}"
                  + (f": {reason.group(1)}" if reason else "") if remote
             else text.strip().splitlines()[0][:300] if text.strip() else type(error).__name__)
    raise WorkerLost(
        f"{own_dir}: training stopped because another worker stopped or cannot be reached "
        f"({cause}). Start every worker again with the same command to resume "
        f"from the last finished epoch.") from error
