"""The settings of a training run, and what they alone decide.

``TrainConfig`` holds every setting and checks them before anything is
written; the loss, the metrics, the optimizer on its schedule, and the
mixed-precision policy and XLA choice are made from it.
"""

import dataclasses
import math
import numbers

import keras

from tversky_keras import losses as losses_lib
from tversky_keras import metrics as metrics_lib
from tversky_keras.data import MODALITIES
from tversky_keras.data.io import check_modalities
from tversky_keras.data.normalize import INTENSITY_NORMALIZATIONS
from tversky_keras.models import DATA_FORMATS, MAX_INPUT_SIDE, NORMALIZATIONS

# A side of a training patch (models.MAX_INPUT_SIDE).
MAX_PATCH = MAX_INPUT_SIDE
MAX_DEPTH = 9  # 2^9 = MAX_PATCH: a deeper U-Net has no grid it could pool
MAX_SEED = 2**32 - 1  # the largest seed NumPy and Keras accept
MONITORS = ("val_dice", "val_f2", "val_prauc", "val_sensitivity", "val_loss")
# auto: float16 on a GPU, float32 on a CPU; on: float16 on a GPU, bfloat16 on a CPU.
MIXED_PRECISION = ("auto", "on", "off", "float16", "bfloat16")


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
    AVX512_BF16/AMX units (faster on the CPU of the benchmarks page). On CPU, XLA
    ran the quick profile's step several times slower than plain execution (the
    benchmarks page's XLA row), so ``auto`` leaves both off there.
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
