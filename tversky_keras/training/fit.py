"""Build the configured U-Net and fit it: resumable, checkpointed, logged.

A run lives in one folder (``tversky_keras.run_folder`` reads and writes it).
Starting the same command again resumes an interrupted run from its last
finished epoch, and returns at once for a finished one.
"""

import time
import warnings
from pathlib import Path

import keras
import numpy as np

from tversky_keras.atomic import write_json
from tversky_keras.data.cache import preprocess
from tversky_keras.data.errors import DataWarning
from tversky_keras.models import unet3d
from tversky_keras.run_folder import (RunRecorder, check_finished_models, check_run_folder,
                                      claim_run_folder, read_json_file, resumed_epoch,
                                      run_record)
from tversky_keras.saving import load_saved_model
from tversky_keras.scan_spec import scan_spec, with_scan_spec
from tversky_keras.training.config import make_loss, make_metrics, paper_optimizer, resolve_acceleration
from tversky_keras.training.distribute import (_raise_if_worker_lost, cluster_task,
                                               distribution_strategy, writer_dir)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; no model was written for that epoch."""


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
            summary = read_json_file(summary_path, "run summary")
            check_finished_models(run_dir)
            if verbose:
                print(f"{run_dir}: finished earlier ({summary.get('epochs')} epochs, "
                      f"{config.epochs} asked for); nothing to train", flush=True)
            return summary

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
    if val_volumes and not any(v.count("lesion") for v in val_volumes):
        # Pooled over the validation set, one subject with lesions is enough.
        warnings.warn(
            f"no validation subject has a lesion voxel ({', '.join(v.id for v in val_volumes[:5])}"
            f"{', ...' if len(val_volumes) > 5 else ''}): {config.monitor}, which picks "
            f"model.keras, can then only reward predicting nothing; choose by the loss "
            f"(--monitor val_loss) or give --val subjects with lesions", DataWarning, stacklevel=2)
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
        # Adam's slots, built now rather than on the first step: variables made
        # inside the first trace make tf.function trace the train step a second
        # time (tensorflow/tensorflow#48851), seconds per run on a CPU.
        model.optimizer.build(model.trainable_variables)

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
        # Counted as Keras' progress bar counts them ("Epoch 2/3", steps from 1).
        where = f"step {batch + 1}" if isinstance(batch, int) else batch
        raise TrainingDiverged(
            f"{run_dir}: the training diverged (loss {value}) at {where} of epoch "
            f"{len(recorder.rows) + 1}/{config.epochs}; stopped without saving that epoch. "
            f"Try a lower learning rate, or check the input data for extreme or missing "
            f"values.")

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
