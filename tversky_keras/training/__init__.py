"""Train a 3D U-Net with the Tversky loss: resumable, checkpointed, logged, on one or several workers.

- ``tversky_keras.training.config``: ``TrainConfig``, every setting of a run
  and its checks, and what the settings alone decide: the loss, the metrics,
  the paper's optimizer and schedule, mixed precision and XLA.
- ``tversky_keras.training.distribute``: the ``tf.distribute`` strategy (local
  GPUs, or several machines through ``TF_CONFIG``), this process' place in the
  cluster, where it writes, and ``WorkerLost`` when a peer goes away.
- ``tversky_keras.training.fit``: ``train`` builds the model and fits it in a
  run folder, resuming an interrupted run and skipping a finished one;
  ``initialise_from`` starts from a saved model's weights.

Imports run one way: ``fit`` uses ``distribute`` and ``config``, and neither of
those imports ``fit``; ``config`` imports neither. The public names of all three
are importable from ``tversky_keras.training``; private helpers are imported
from the submodule that defines them.
"""

from tversky_keras.training.config import (
    MAX_DEPTH,
    MAX_PATCH,
    MAX_SEED,
    MIXED_PRECISION,
    MONITORS,
    TrainConfig,
    make_loss,
    make_metrics,
    paper_optimizer,
    paper_schedule,
    resolve_acceleration,
)
from tversky_keras.training.distribute import (
    WorkerLost,
    cluster_task,
    distribution_strategy,
    writer_dir,
)
from tversky_keras.training.fit import (
    TrainingDiverged,
    build_model,
    data_spacing,
    initialise_from,
    train,
)

__all__ = [
    "MAX_DEPTH",
    "MAX_PATCH",
    "MAX_SEED",
    "MIXED_PRECISION",
    "MONITORS",
    "TrainConfig",
    "TrainingDiverged",
    "WorkerLost",
    "build_model",
    "cluster_task",
    "data_spacing",
    "distribution_strategy",
    "initialise_from",
    "make_loss",
    "make_metrics",
    "paper_optimizer",
    "paper_schedule",
    "resolve_acceleration",
    "train",
    "writer_dir",
]
