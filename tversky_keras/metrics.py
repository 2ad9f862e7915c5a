"""Streaming lesion metrics of the paper: DSC, sensitivity, specificity, F-beta, PR AUC.

Every metric reads the lesion channel (`class_id=1` of a softmax; the single
channel of a sigmoid output) and accepts the same `y_true` forms as the losses
(one-hot, integer labels or a binary mask; see `tversky_keras.losses.class_maps`).
Counts are accumulated over batches in float64, exact up to 2**53 voxels, so the
result over many batches equals the result over their concatenation.

`sample_weight` is optional: per sample `(B,)` or per voxel `(B, *spatial)` /
`(B, *spatial, 1)`, e.g. a brain mask; each voxel counts with its weight.

Empty denominators: a ratio whose denominator is 0 has nothing to find and
nothing wrongly found, and scores 1.0: DSC and F-beta when TP + FP + FN = 0,
sensitivity when TP + FN = 0, specificity when TN + FP = 0. PR AUC is 0.0 when
there are no lesion voxels. That rule is for valid input only: a NaN or negative
`sample_weight` makes every result NaN (until `reset_state`), never a score.
"""

import math

import keras
from keras import ops

from tversky_keras.losses import class_maps


def _ratio(numerator, denominator, empty=1.0):
    """`numerator / denominator`; `empty` where the denominator is exactly 0 (nothing to
    find); NaN where it is NaN or negative, which only invalid weights make: never a
    perfect score from bad input."""
    positive = denominator > 0
    value = numerator / ops.where(positive, denominator, 1.0)
    return ops.where(positive, value, ops.where(denominator == 0, empty, float("nan")))


def _lesion_voxels(y_true, y_pred, class_id, sample_weight):
    """Flat lesion truth (bool), lesion score and voxel weight (float64, or None without weights)."""
    truth, score = class_maps(y_true, y_pred)
    if class_id >= truth.shape[-1]:
        raise ValueError(f"class_id={class_id} is not a class of y_pred of shape {y_pred.shape}")
    truth = truth[..., class_id] >= 0.5
    weight = None
    if sample_weight is not None:
        weight = ops.cast(sample_weight, "float64")
        if len(weight.shape) == len(truth.shape) + 1:
            weight = ops.squeeze(weight, axis=-1)
        for _ in range(len(truth.shape) - len(weight.shape)):
            weight = ops.expand_dims(weight, -1)
        weight = ops.reshape(ops.broadcast_to(weight, ops.shape(truth)), (-1,))
        # A NaN or negative weight is no weight: it makes the counts, and so the result,
        # NaN until reset_state (a negative one could otherwise cancel a positive one).
        weight = ops.where(weight >= 0, weight, float("nan"))
    return ops.reshape(truth, (-1,)), ops.reshape(score[..., class_id], (-1,)), weight


def _total(selected, weight):
    """Float64 count (or weight sum, when ``weight`` is not None) of the True voxels."""
    if weight is None:
        return ops.cast(ops.count_nonzero(selected), "float64")  # integer count: exact
    return ops.sum(ops.where(selected, weight, ops.zeros_like(weight)))


def _histogram(index, weight, length):
    """Float64 sums of ``weight`` (1 when None) per value of the int32 ``index`` in ``[0, length)``."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        # A bincount of constant size: ~10x faster than a segment sum on CPU, and
        # XLA compiles it (ops.bincount's size depends on the data, which XLA refuses).
        weight = tf.constant([], "float64") if weight is None else weight
        return tf.raw_ops.DenseBincount(input=index, size=length, weights=weight)
    if backend == "torch":
        # torch.bincount counts in int64 / sums float64 weights; Keras' torch
        # segment_sum would sum in float32, inexact past 2**24 voxels in a bin.
        return ops.cast(ops.bincount(index, weights=weight, minlength=length), "float64")
    # jax: jit needs a static size, which segment_sum has (ops.bincount's does not).
    weight = ops.ones_like(index, dtype="float64") if weight is None else weight
    return ops.segment_sum(weight, index, num_segments=length)


def _check_class_id(class_id):
    if class_id < 0:
        raise ValueError(f"class_id must be >= 0, got class_id={class_id}")


class LesionConfusionMetric(keras.metrics.Metric):
    """Base of the thresholded metrics: streams TP, FP, TN, FN of one class.

    A voxel is predicted positive when its score is `>= threshold` (the
    paper's test rule) and is truly positive when its truth is `>= 0.5`.
    Subclasses only define `score(tp, fp, tn, fn)`.

    Args:
        threshold: Probability threshold in `[0, 1]`.
        class_id: Class read from the softmax; 1 (lesion) for a sigmoid channel.
        name: Name of the metric.
        dtype: Dtype of the result.
    """

    def __init__(
        self,
        threshold: float = 0.5,
        class_id: int = 1,
        name: str | None = None,
        dtype: str | None = None,
    ) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got threshold={threshold}")
        _check_class_id(class_id)
        super().__init__(name=name, dtype=dtype)
        self.threshold = float(threshold)
        self.class_id = int(class_id)
        counts = ("true_positives", "false_positives", "true_negatives", "false_negatives")
        self.true_positives, self.false_positives, self.true_negatives, self.false_negatives = (
            self.add_variable(shape=(), initializer="zeros", dtype="float64", name=count)
            for count in counts
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        truth, score, weight = _lesion_voxels(y_true, y_pred, self.class_id, sample_weight)
        predicted = score >= self.threshold
        tp, positives, flagged = (
            _total(selected, weight) for selected in (ops.logical_and(truth, predicted), truth, predicted)
        )
        total = ops.cast(ops.shape(truth)[0], "float64") if weight is None else ops.sum(weight)
        # 0, or NaN when a weight anywhere is invalid: then every count is NaN.
        invalid = 0.0 if weight is None else 0.0 * total
        self.true_positives.assign_add(tp + invalid)
        self.false_positives.assign_add(flagged - tp + invalid)
        self.true_negatives.assign_add(total - positives - flagged + tp)
        self.false_negatives.assign_add(positives - tp + invalid)

    def score(self, tp, fp, tn, fn):
        raise NotImplementedError

    def result(self):
        value = self.score(
            self.true_positives, self.false_positives, self.true_negatives, self.false_negatives
        )
        return ops.cast(value, self.dtype)

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold, "class_id": self.class_id}


@keras.saving.register_keras_serializable(package="tversky_keras")
class DiceScore(LesionConfusionMetric):
    """Dice similarity coefficient `2TP / (2TP + FP + FN)`; 1.0 when TP + FP + FN = 0.

    Example:
        At the 0.5 threshold the scores below call voxels 1, 3 and 4: TP = 2,
        FP = 1, FN = 1, so DSC = 4 / 6.

        >>> import numpy as np
        >>> metric = DiceScore()
        >>> metric.update_state(np.array([1.0, 1.0, 1.0, 0.0]).reshape(1, 4, 1, 1, 1),
        ...                     np.array([0.9, 0.2, 0.6, 0.7]).reshape(1, 4, 1, 1, 1))
        >>> round(float(metric.result()), 4)
        0.6667
    """

    def __init__(
        self,
        threshold: float = 0.5,
        class_id: int = 1,
        name: str = "dice_score",
        dtype: str | None = None,
    ) -> None:
        super().__init__(threshold=threshold, class_id=class_id, name=name, dtype=dtype)

    def score(self, tp, fp, tn, fn):
        return _ratio(2.0 * tp, 2.0 * tp + fp + fn)


@keras.saving.register_keras_serializable(package="tversky_keras")
class Sensitivity(LesionConfusionMetric):
    """Sensitivity (recall) `TP / (TP + FN)`; 1.0 when TP + FN = 0."""

    def __init__(
        self,
        threshold: float = 0.5,
        class_id: int = 1,
        name: str = "sensitivity",
        dtype: str | None = None,
    ) -> None:
        super().__init__(threshold=threshold, class_id=class_id, name=name, dtype=dtype)

    def score(self, tp, fp, tn, fn):
        return _ratio(tp, tp + fn)


@keras.saving.register_keras_serializable(package="tversky_keras")
class Specificity(LesionConfusionMetric):
    """Specificity `TN / (TN + FP)`; 1.0 when TN + FP = 0."""

    def __init__(
        self,
        threshold: float = 0.5,
        class_id: int = 1,
        name: str = "specificity",
        dtype: str | None = None,
    ) -> None:
        super().__init__(threshold=threshold, class_id=class_id, name=name, dtype=dtype)

    def score(self, tp, fp, tn, fn):
        return _ratio(tn, tn + fp)


@keras.saving.register_keras_serializable(package="tversky_keras")
class FBetaScore(LesionConfusionMetric):
    """F-beta score `(1 + b^2) TP / ((1 + b^2) TP + b^2 FN + FP)`; 1.0 when TP + FP + FN = 0.

    `beta=2` (the default) is the paper's F2 = 5TP / (5TP + 4FN + FP).

    Args:
        beta: Weight of recall over precision, `> 0`.
        threshold: As `LesionConfusionMetric`.
        class_id: As `LesionConfusionMetric`.
        name: As `LesionConfusionMetric`.
        dtype: As `LesionConfusionMetric`.
    """

    def __init__(
        self,
        beta: float = 2.0,
        threshold: float = 0.5,
        class_id: int = 1,
        name: str = "fbeta_score",
        dtype: str | None = None,
    ) -> None:
        if not (math.isfinite(beta) and beta > 0):
            raise ValueError(f"beta must be a finite number > 0, got beta={beta}")
        super().__init__(threshold=threshold, class_id=class_id, name=name, dtype=dtype)
        self.beta = float(beta)

    def score(self, tp, fp, tn, fn):
        weighted_tp = (1.0 + self.beta**2) * tp
        return _ratio(weighted_tp, weighted_tp + self.beta**2 * fn + fp)

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}


@keras.saving.register_keras_serializable(package="tversky_keras")
class PRAUC(keras.metrics.Metric):
    """Area under the precision-recall curve, as step-wise average precision.

    Lesion scores are streamed into `num_bins` equal-width histograms over
    `[0, 1]`, one for lesion and one for background voxels. With the bin
    thresholds descending, recall `R_k` and precision `P_k` of "score in bin
    `k` or above" give `AP = sum_k (R_k - R_{k-1}) P_k`, the definition of
    scikit-learn's `average_precision_score` with scores binned to `1/num_bins`.
    0.0 when no voxel is a lesion.

    Args:
        num_bins: Number of score bins, `>= 2`.
        class_id: Class read from the softmax; 1 (lesion) for a sigmoid channel.
        name: Name of the metric.
        dtype: Dtype of the result.

    Example:
        Ranked by score the voxels are lesion, background, lesion, lesion, so
        AP = (1/3)(1/1) + (1/3)(2/3) + (1/3)(3/4) = 29/36, as scikit-learn's
        ``average_precision_score`` gives.

        >>> import numpy as np
        >>> metric = PRAUC()
        >>> metric.update_state(np.array([1.0, 1.0, 1.0, 0.0]).reshape(1, 4, 1, 1, 1),
        ...                     np.array([0.9, 0.2, 0.6, 0.7]).reshape(1, 4, 1, 1, 1))
        >>> round(float(metric.result()), 4)
        0.8056
    """

    def __init__(
        self,
        num_bins: int = 1000,
        class_id: int = 1,
        name: str = "pr_auc",
        dtype: str | None = None,
    ) -> None:
        if num_bins < 2:
            raise ValueError(f"num_bins must be >= 2, got num_bins={num_bins}")
        _check_class_id(class_id)
        super().__init__(name=name, dtype=dtype)
        self.num_bins = int(num_bins)
        self.class_id = int(class_id)
        self.positive_histogram, self.negative_histogram = (
            self.add_variable(
                shape=(self.num_bins,), initializer="zeros", dtype="float64", name=histogram
            )
            for histogram in ("positive_histogram", "negative_histogram")
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        truth, score, weight = _lesion_voxels(y_true, y_pred, self.class_id, sample_weight)
        bins = ops.floor(score * self.num_bins)
        # A NaN score (a diverged network) counts in the lowest bin instead of casting to a
        # negative index, so the run stops on its NaN loss with a message, not a crash here.
        bins = ops.where(ops.isnan(bins), 0.0, bins)
        bins = ops.cast(ops.clip(bins, 0, self.num_bins - 1), "int32")  # score 1.0 -> top bin
        # One pass for both histograms: lesion voxels count in bins num_bins..2*num_bins-1.
        # Unweighted, the counts are integers (exact); weighted, float64 sums.
        lesion = ops.cast(truth, "int32")
        both = _histogram(bins + self.num_bins * lesion, weight, 2 * self.num_bins)
        both = ops.reshape(both, (2, self.num_bins))
        self.negative_histogram.assign_add(both[0])
        self.positive_histogram.assign_add(both[1])

    def result(self):
        positives = ops.flip(self.positive_histogram, axis=0)  # highest scores first
        true_positives = ops.cumsum(positives)
        predicted = true_positives + ops.cumsum(ops.flip(self.negative_histogram, axis=0))
        precision = _ratio(true_positives, predicted)
        value = _ratio(ops.sum(positives * precision), true_positives[-1], empty=0.0)
        return ops.cast(value, self.dtype)

    def get_config(self):
        return {**super().get_config(), "num_bins": self.num_bins, "class_id": self.class_id}
