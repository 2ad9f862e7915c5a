"""Tversky loss and its Dice, focal and cross-entropy variants.

The Tversky index is written once, in `tversky_index`; the loss classes only
bind, validate and serialise options.

Shapes are channel-last: `y_pred` is `(B, *spatial, C)` (any number of spatial
axes, so 2D `(B, H, W, C)` and 3D `(B, X, Y, Z, C)` both work) and is either a
softmax over `C >= 2` classes or a single sigmoid channel (`C == 1`). `y_true`
is one-hot `(B, *spatial, C)` or class labels `(B, *spatial)` /
`(B, *spatial, 1)`; with one sigmoid channel it is the binary lesion mask.
Class 0 is background; the index is averaged over the foreground classes
`1..C-1`, or over all classes with `include_background=True`. A single sigmoid
channel is the one class counted either way, as MONAI counts the channel it
is given.

Reference:
    Salehi, Erdogmus, Gholipour. "Tversky loss function for image segmentation
    using 3D fully convolutional deep networks." MLMI 2017, arXiv 1706.05721.
"""

import math

import keras
import numpy as np
from keras import ops

# Floor for the denominators of the index and the focal power: keeps 1/d and
# 1/d**2 finite in float32 (also under a mixed-precision loss scale), yet lies
# far below any soft voxel count a real volume gives, so values are unchanged.
_TINY = 1e-12


def class_maps(y_true, y_pred):
    """Truth and prediction as float32 per-class maps of one shape.

    A single sigmoid channel `p` becomes the two classes `(1 - p, p)` and its
    binary truth `g` becomes `(1 - g, g)`, so every caller sees a softmax-like
    `(B, *spatial, K)` pair with `K >= 2` and the lesion at class 1.

    Args:
        y_true: One-hot `(B, *spatial, C)` or labels `(B, *spatial)` /
            `(B, *spatial, 1)`; binary mask for a single sigmoid channel.
        y_pred: Probabilities `(B, *spatial, C)`, any float dtype.

    Returns:
        `(truth, prediction)`, both float32 `(B, *spatial, K)`, `K = max(C, 2)`.

    Integer labels outside `[0, C)` and a sigmoid's truth outside `[0, 1]`
    (a 0/255 mask, say) have no class. Given as NumPy arrays they raise; as
    tensors (inside `fit`, where values are not known when the graph is
    built) their voxels become NaN, so the loss is NaN and training stops
    instead of counting them silently as no class.

    Raises:
        ValueError: if the shapes of `y_true` and `y_pred` do not fit together,
            or a NumPy `y_true` holds labels that are no class.
    """
    if isinstance(y_true, np.ndarray):
        _check_label_values(y_true, y_pred)
    # float32 before any sum: float16 overflows past 65504 voxels.
    y_pred = ops.cast(y_pred, "float32")
    y_true = ops.convert_to_tensor(y_true)
    pred_shape, true_shape = tuple(y_pred.shape), tuple(y_true.shape)
    rank, channels = len(pred_shape), pred_shape[-1]
    if rank < 3 or channels is None:
        raise ValueError(
            "y_pred must be channel-last (batch, *spatial, channels) with a "
            f"known channel count, got shape {pred_shape}"
        )
    one_hot = len(true_shape) == rank and true_shape[-1] == channels
    labels = len(true_shape) == rank - 1 or (len(true_shape) == rank and true_shape[-1] == 1)
    same_voxels = all(
        t is None or p is None or t == p for t, p in zip(true_shape[: rank - 1], pred_shape[:-1])
    )
    if not (one_hot or labels) or not same_voxels:
        raise ValueError(
            f"y_true of shape {true_shape} does not fit y_pred of shape {pred_shape}: "
            f"expected one-hot {pred_shape} or labels {pred_shape[:-1]} / "
            f"{pred_shape[:-1] + (1,)}"
        )
    if channels == 1:
        truth = ops.cast(y_true, "float32")
        if len(true_shape) == rank - 1:
            truth = ops.expand_dims(truth, -1)
        truth = _nan_where(ops.logical_or(truth < 0.0, truth > 1.0), truth)
        return (
            ops.concatenate([1.0 - truth, truth], axis=-1),
            ops.concatenate([1.0 - y_pred, y_pred], axis=-1),
        )
    if one_hot:
        return ops.cast(y_true, "float32"), y_pred
    if len(true_shape) == rank:
        y_true = ops.squeeze(y_true, axis=-1)
    labels = ops.cast(y_true, "int32")
    truth = ops.one_hot(labels, channels, dtype="float32")
    no_class = ops.expand_dims(ops.logical_or(labels < 0, labels >= channels), -1)
    return _nan_where(no_class, truth), y_pred


def _nan_where(condition, x):
    return ops.where(condition, ops.full_like(x, float("nan")), x)


def _check_probabilities(y_pred):
    """ValueError naming the first value of a NumPy ``y_pred`` outside [0, 1] (or NaN)."""
    bad = y_pred[~((y_pred >= 0) & (y_pred <= 1))]
    if bad.size:
        raise ValueError(f"y_pred holds {bad.flat[0].item()!r}: predictions must be probabilities "
                         "in [0, 1] (logits? end the model with a softmax or sigmoid)")


def _loss_maps(y_true, y_pred):
    """``class_maps`` for a loss, whose prediction must be probabilities: a prediction
    outside `[0, 1]` (logits: a model without its softmax or sigmoid) raises as NumPy
    and, as a tensor, becomes NaN, so the loss is NaN and training stops."""
    if isinstance(y_pred, np.ndarray):
        _check_probabilities(y_pred)
    truth, pred = class_maps(y_true, y_pred)
    return truth, _nan_where(ops.logical_or(pred < 0.0, pred > 1.0), pred)


def _check_label_values(y_true, y_pred):
    """ValueError naming the first bad value of a NumPy ``y_true`` (see ``class_maps``)."""
    channels = tuple(y_pred.shape)[-1]
    if channels == 1 or (y_true.ndim == len(y_pred.shape) and y_true.shape[-1] == channels):
        bad = y_true[(y_true < 0) | (y_true > 1)]
        if bad.size:
            raise ValueError(f"y_true holds {bad.flat[0].item()!r}: truth for a sigmoid channel or "
                             "one-hot classes must lie in [0, 1] (a 0/255 mask? divide by 255)")
        return
    bad = y_true[(y_true < 0) | (y_true >= channels) | (y_true != np.round(y_true))]
    if bad.size:
        raise ValueError(f"y_true holds the label {bad.flat[0].item()!r}, which is no class of "
                         f"y_pred's {channels} channels (labels must be 0..{channels - 1})")


def _class_indices(y_true, y_pred, alpha, beta, smooth, batch, include_background):
    """Tversky index per sample and counted class, shape `(B, classes)`."""
    # A single sigmoid channel is the one class counted, background or not
    # (MONAI's reading: it counts the channel it is given).
    single_channel = tuple(y_pred.shape)[-1] == 1
    truth, pred = _loss_maps(y_true, y_pred)
    if single_channel or not include_background:
        # split, not a [..., 1:] slice: the same values, but the slice's
        # gradient (a strided scatter) took ~70% of the loss's time on CPU.
        truth, pred = (ops.split(x, [1], axis=-1)[1] for x in (truth, pred))
    spatial_axes = tuple(range(1, len(pred.shape) - 1))
    # Eq. 3 of the paper: soft true positives, false positives, false negatives.
    tp = ops.sum(pred * truth, axis=spatial_axes)
    fp = ops.sum(pred * (1.0 - truth), axis=spatial_axes)
    fn = ops.sum((1.0 - pred) * truth, axis=spatial_axes)
    if batch:
        # One index for the whole batch, repeated per sample so that Keras'
        # mean over the batch returns it unchanged.
        tp, fp, fn = (
            ops.broadcast_to(ops.sum(x, axis=0, keepdims=True), ops.shape(x)) for x in (tp, fp, fn)
        )
    denominator = tp + alpha * fp + beta * fn + smooth
    ratio = (tp + smooth) / ops.maximum(denominator, _TINY)
    # 0/0 (nothing to find, nothing weighted wrongly found) is a perfect score;
    # a NaN (truth that is no class, see class_maps) stays NaN.
    index = ops.where(denominator > 0, ratio, 1.0)
    return ops.where(ops.isnan(denominator), denominator, index)


def tversky_index(
    y_true,
    y_pred,
    alpha: float = 0.5,
    beta: float = 0.5,
    smooth: float = 0.0,
    batch: bool = False,
    include_background: bool = False,
):
    """Soft Tversky index per sample, averaged over the counted classes.

    For each class, with sums over the spatial axes (and the batch axis when
    `batch=True`):

        TP = sum(p * g), FP = sum(p * (1 - g)), FN = sum((1 - p) * g)
        index = (TP + smooth) / (TP + alpha * FP + beta * FN + smooth)

    With `smooth=0` this is Eq. 3 of the paper. When the denominator is 0
    (only possible with `smooth=0`: no truth and no prediction for that class,
    or only errors that carry a zero weight) the index is defined as 1. With
    soft predictions a lesion-free sample has TP = 0 < FP, so its index is 0
    and its gradient 0; use `smooth > 0` or `batch=True` to learn from it.

    Args:
        y_true: One-hot, label or binary truth; see `class_maps`.
        y_pred: Softmax `(B, *spatial, C)` or sigmoid `(B, *spatial, 1)`.
        alpha: Weight of false positives.
        beta: Weight of false negatives.
        smooth: Added to numerator and denominator.
        batch: Pool the counts over the whole batch into one index.
        include_background: Also count class 0 of a softmax. A single
            sigmoid channel is always the one class counted, as in MONAI.

    Returns:
        float32 `(B,)`; with `batch=True` the batch index repeated `B` times.

    Reference:
        Salehi et al. 2017, arXiv 1706.05721, Eq. 3.
    """
    indices = _class_indices(y_true, y_pred, alpha, beta, smooth, batch, include_background)
    return ops.mean(indices, axis=-1)


def _focal(loss, gamma):
    """`loss ** (1 / gamma)` with finite value and gradient at `loss == 0`."""
    powered = ops.power(ops.maximum(loss, _TINY), 1.0 / gamma)
    return ops.where(ops.isnan(loss), loss, ops.where(loss > 0, powered, 0.0))


def tversky_loss(
    y_true,
    y_pred,
    alpha: float = 0.5,
    beta: float = 0.5,
    smooth: float = 0.0,
    batch: bool = False,
    include_background: bool = False,
    gamma: float = 1.0,
):
    """Tversky loss per sample: `(1 - index) ** (1 / gamma)`, class-averaged.

    `gamma=1` is the paper's loss `1 - T(alpha, beta)`; `gamma > 1` is the focal
    Tversky loss, applied per class before averaging as in Abraham & Khan.
    Arguments are those of `tversky_index`, plus `gamma`.

    Returns:
        float32 `(B,)`.

    Reference:
        Salehi et al. 2017, arXiv 1706.05721. Abraham & Khan, "A novel focal
        Tversky loss function with improved attention U-Net for lesion
        segmentation", ISBI 2019.
    """
    indices = _class_indices(y_true, y_pred, alpha, beta, smooth, batch, include_background)
    return ops.mean(_focal(1.0 - indices, gamma), axis=-1)


def mean_cross_entropy(y_true, y_pred):
    """Cross-entropy per sample, averaged over voxels.

    Categorical for a softmax output; for one sigmoid channel this is the
    binary cross-entropy (the categorical one over `(1 - p, p)`). Predictions
    are clipped to `[epsilon, 1 - epsilon]` as in `keras.losses`.

    Returns:
        float32 `(B,)`.
    """
    truth, pred = _loss_maps(y_true, y_pred)
    voxel_losses = ops.categorical_crossentropy(truth, pred)
    return ops.mean(voxel_losses, axis=tuple(range(1, len(voxel_losses.shape))))


def _validate(alpha, beta, smooth, gamma):
    values = {"alpha": alpha, "beta": beta, "smooth": smooth, "gamma": gamma}
    infinite = [f"{k}={v}" for k, v in values.items() if not math.isfinite(float(v))]
    if infinite:
        raise ValueError(f"loss settings must be finite numbers, got {', '.join(infinite)}")
    if alpha < 0 or beta < 0 or alpha + beta <= 0:
        raise ValueError(
            f"alpha and beta must be >= 0 with alpha + beta > 0, got alpha={alpha}, beta={beta}"
        )
    if smooth < 0:
        raise ValueError(f"smooth must be >= 0, got smooth={smooth}")
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got gamma={gamma}")


@keras.saving.register_keras_serializable(package="tversky_keras")
class TverskyLoss(keras.losses.Loss):
    """Tversky loss `1 - T(alpha, beta)`, optionally focal.

        T = TP / (TP + alpha * FP + beta * FN)

    `alpha` weighs false positives and `beta` false negatives; `alpha = beta =
    0.5` is the Dice loss, `alpha + beta = 1` the F-beta family (F2: 0.2, 0.8).
    See `tversky_index` for shapes, smoothing and the empty-sample convention.

    Args:
        alpha: Weight of false positives, `>= 0`.
        beta: Weight of false negatives, `>= 0`, with `alpha + beta > 0`.
        smooth: Added to numerator and denominator, `>= 0`.
        batch: Pool the counts over the batch into one index.
        include_background: Also count class 0 of a softmax (a single sigmoid
            channel is always the one class counted, as in MONAI).
        gamma: Focal exponent, `> 0`: the loss is `(1 - T) ** (1 / gamma)`.
        reduction: Keras reduction over the per-sample losses.
        name: Name of the loss.
        dtype: Dtype of the loss' inputs and result; the sums are float32.

    Reference:
        Salehi et al. 2017, arXiv 1706.05721.

    Example:
        One sigmoid channel over four voxels: TP = 1, FN = 2, FP = 1, so
        T = 1 / (1 + 0.3 * 1 + 0.7 * 2) = 1 / 2.7 and the loss is 1.7 / 2.7.

        >>> import numpy as np
        >>> y_true = np.array([1.0, 1.0, 1.0, 0.0]).reshape(1, 4, 1, 1, 1)
        >>> y_pred = np.array([1.0, 0.0, 0.0, 1.0]).reshape(1, 4, 1, 1, 1)
        >>> round(float(TverskyLoss(alpha=0.3, beta=0.7)(y_true, y_pred)), 4)
        0.6296
    """

    def __init__(
        self,
        alpha: float = 0.5,
        beta: float = 0.5,
        smooth: float = 0.0,
        batch: bool = False,
        include_background: bool = False,
        gamma: float = 1.0,
        reduction: str | None = "sum_over_batch_size",
        name: str = "tversky_loss",
        dtype: str | None = None,
    ) -> None:
        _validate(alpha, beta, smooth, gamma)
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.smooth = float(smooth)
        self.batch = bool(batch)
        self.include_background = bool(include_background)
        self.gamma = float(gamma)

    def _tversky_options(self):
        return {
            "alpha": self.alpha,
            "beta": self.beta,
            "smooth": self.smooth,
            "batch": self.batch,
            "include_background": self.include_background,
            "gamma": self.gamma,
        }

    def __call__(self, y_true, y_pred, sample_weight=None):
        # Keras turns both into tensors before `call`: check NumPy values first.
        if isinstance(y_true, np.ndarray):
            _check_label_values(y_true, y_pred)
        if isinstance(y_pred, np.ndarray):
            _check_probabilities(y_pred)
        return super().__call__(y_true, y_pred, sample_weight=sample_weight)

    def call(self, y_true, y_pred):
        return tversky_loss(y_true, y_pred, **self._tversky_options())

    def get_config(self):
        return {**super().get_config(), "dtype": self.dtype, **self._tversky_options()}


@keras.saving.register_keras_serializable(package="tversky_keras")
class DiceLoss(TverskyLoss):
    """Soft Dice loss: the Tversky loss with `alpha = beta = 0.5`.

    Per class `1 - 2TP / (2TP + FP + FN)`. Arguments as `TverskyLoss`, less
    `alpha` and `beta`.
    """

    def __init__(
        self,
        smooth: float = 0.0,
        batch: bool = False,
        include_background: bool = False,
        gamma: float = 1.0,
        reduction: str | None = "sum_over_batch_size",
        name: str = "dice_loss",
        dtype: str | None = None,
    ) -> None:
        super().__init__(
            alpha=0.5,
            beta=0.5,
            smooth=smooth,
            batch=batch,
            include_background=include_background,
            gamma=gamma,
            reduction=reduction,
            name=name,
            dtype=dtype,
        )

    def get_config(self):
        config = super().get_config()
        del config["alpha"], config["beta"]
        return config


@keras.saving.register_keras_serializable(package="tversky_keras")
class TverskyCrossEntropyLoss(TverskyLoss):
    """Tversky loss plus `ce_weight` times the voxel-averaged cross-entropy.

    The cross-entropy is categorical for a softmax output and binary for one
    sigmoid channel (see `mean_cross_entropy`). Arguments as `TverskyLoss`, plus:

    Args:
        ce_weight: Weight of the cross-entropy term, `>= 0`.
    """

    def __init__(
        self,
        alpha: float = 0.5,
        beta: float = 0.5,
        smooth: float = 0.0,
        batch: bool = False,
        include_background: bool = False,
        gamma: float = 1.0,
        ce_weight: float = 1.0,
        reduction: str | None = "sum_over_batch_size",
        name: str = "tversky_cross_entropy_loss",
        dtype: str | None = None,
    ) -> None:
        if ce_weight < 0:
            raise ValueError(f"ce_weight must be >= 0, got ce_weight={ce_weight}")
        super().__init__(
            alpha=alpha,
            beta=beta,
            smooth=smooth,
            batch=batch,
            include_background=include_background,
            gamma=gamma,
            reduction=reduction,
            name=name,
            dtype=dtype,
        )
        self.ce_weight = float(ce_weight)

    def call(self, y_true, y_pred):
        return super().call(y_true, y_pred) + self.ce_weight * mean_cross_entropy(y_true, y_pred)

    def get_config(self):
        return {**super().get_config(), "ce_weight": self.ce_weight}
