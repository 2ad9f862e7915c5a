"""One or several workers: the tf.distribute strategy and who writes the run folder.

``distribution_strategy`` mirrors over the local GPUs, or over several
machines when ``TF_CONFIG`` is set; ``cluster_task`` reads this process' place
in that cluster, ``writer_dir`` where it may write, and a lost peer surfaces
as ``WorkerLost``.
"""

import functools
import json
import os
import re
from pathlib import Path


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

    With ``TF_CONFIG`` set (see docs/scale.md) the run uses
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
