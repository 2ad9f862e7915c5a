"""tversky_keras.losses: Tversky, Dice, focal and cross-entropy losses against hand-worked values."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tiny_data import two_class
from tversky_keras.losses import (
    DiceLoss,
    TverskyCrossEntropyLoss,
    TverskyLoss,
    tversky_index,
    tversky_loss,
)


def volume(values, batch=1):
    """Four voxels per sample as a `(batch, 2, 2, 1)` volume."""
    return np.reshape(np.asarray(values), (batch, 2, 2, 1) + np.shape(values)[2:])


def random_softmax(rng, shape, classes=2):
    logits = rng.normal(size=shape + (classes,))
    return (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype("float32")


# One sample, four voxels: truth g = [1, 1, 0, 0], lesion probability p = [.9, .6, .2, .1].
# TP = .9 + .6 = 1.5, FP = .2 + .1 = .3, FN = .1 + .4 = .5.
G = volume([[1, 1, 0, 0]])
P = volume(two_class([[0.9, 0.6, 0.2, 0.1]]))
# Background channel: g0 = [0, 0, 1, 1], p0 = [.1, .4, .8, .9]: TP0 = 1.7, FP0 = .5, FN0 = .3.
# Second sample: g = [0, 0, 0, 1], p = [.1, .1, .1, .5]: TP = .5, FP = .3, FN = .5.
G2 = volume([[1, 1, 0, 0], [0, 0, 0, 1]], batch=2)
P2 = volume(two_class([[0.9, 0.6, 0.2, 0.1], [0.1, 0.1, 0.1, 0.5]]), batch=2)
# Three classes, labels [1, 2, 2, 0]:
# class 1: g = [1, 0, 0, 0], p = [.7, .1, .3, .1]: TP = .7, FP = .5, FN = .3 -> T = .7 / 1.1
# class 2: g = [0, 1, 1, 0], p = [.1, .8, .4, .1]: TP = 1.2, FP = .2, FN = .8 -> T = 1.2 / 1.7
G3 = volume([[1, 2, 2, 0]])
P3 = volume(np.array([[[0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4], [0.8, 0.1, 0.1]]]))
EMPTY = volume([[0, 0, 0, 0]])

TEST_CASES = [
    # Eq. 3 with a = b = .5: 1 - 1.5 / (1.5 + .15 + .25) = .4 / 1.9
    [{}, G, P, 0.4 / 1.9],
    # a = .3, b = .7: 1 - 1.5 / (1.5 + .09 + .35) = .44 / 1.94
    [{"alpha": 0.3, "beta": 0.7}, G, P, 0.44 / 1.94],
    # a = .7, b = .3: 1 - 1.5 / (1.5 + .21 + .15) = .36 / 1.86
    [{"alpha": 0.7, "beta": 0.3}, G, P, 0.36 / 1.86],
    # a = b = 1 (Jaccard): 1 - 1.5 / 2.3 = .8 / 2.3
    [{"alpha": 1.0, "beta": 1.0}, G, P, 0.8 / 2.3],
    # smooth = 1: 1 - 2.5 / 2.9 = .4 / 2.9
    [{"smooth": 1.0}, G, P, 0.4 / 2.9],
    # focal, gamma = 2: (.4 / 1.9) ** (1 / 2)
    [{"gamma": 2.0}, G, P, (0.4 / 1.9) ** 0.5],
    # with background: 1 - (1.5 / 1.9 + 1.7 / (1.7 + .25 + .15)) / 2 = 1 - (15/19 + 17/21) / 2
    [{"include_background": True}, G, P, 1 - (15 / 19 + 17 / 21) / 2],
    # the same voxels as a 2D (B, H, W, C) input
    [{}, G[..., 0], P[..., 0, :], 0.4 / 1.9],
    # hard prediction [1, 0, 1, 0]: TP = FP = FN = 1, Dice = 2 / 4
    [{}, G, volume(two_class([[1, 0, 1, 0]])), 0.5],
    # per sample: mean(.4 / 1.9, 1 - .5 / (.5 + .15 + .25))
    [{}, G2, P2, (0.4 / 1.9 + 0.4 / 0.9) / 2],
    # pooled batch: TP = 2, FP = .6, FN = 1: 1 - 2 / (2 + .3 + .5) = .8 / 2.8
    [{"batch": True}, G2, P2, 0.8 / 2.8],
    # three classes: 1 - (.7 / 1.1 + 1.2 / 1.7) / 2 = 1 - (7/11 + 12/17) / 2
    [{}, G3, P3, 1 - (7 / 11 + 12 / 17) / 2],
    # no lesion, none predicted: 0 / 0 is defined as index 1
    [{}, EMPTY, volume(two_class([[0, 0, 0, 0]])), 0.0],
    # no lesion, soft prediction p = .1: TP = 0 < FP = .4, index 0
    [{}, EMPTY, volume(two_class([[0.1] * 4])), 1.0],
    # ... with smooth = 1: 1 - 1 / (.5 * .4 + 1) = 1 / 6
    [{"smooth": 1.0}, EMPTY, volume(two_class([[0.1] * 4])), 1 / 6],
    # alpha = 0 ignores the false positives: denominator 0, index 1
    [{"alpha": 0.0, "beta": 1.0}, EMPTY, volume(two_class([[0.1] * 4])), 0.0],
]


@pytest.mark.parametrize("kwargs, y_true, y_pred, expected", TEST_CASES)
def test_hand_worked_values(kwargs, y_true, y_pred, expected):
    loss = TverskyLoss(**kwargs)(y_true, y_pred)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5, atol=1e-6)


def test_function_gives_per_sample_values():
    # Per sample of G2/P2: 1.5 / 1.9 and .5 / .9; pooled: 2 / 2.8 for both.
    np.testing.assert_allclose(tversky_index(G2, P2), [1.5 / 1.9, 0.5 / 0.9], rtol=1e-6)
    np.testing.assert_allclose(tversky_index(G2, P2, batch=True), [2 / 2.8] * 2, rtol=1e-6)
    np.testing.assert_allclose(tversky_loss(G2, P2), [0.4 / 1.9, 0.4 / 0.9], rtol=1e-6)


# Only false positives: g = [1, 0, 0, 0], p = [1, .5, 0, 0]: TP = 1, FP = .5, FN = 0.
ONLY_FP = (volume([[1, 0, 0, 0]]), volume(two_class([[1, 0.5, 0, 0]])))
# Only false negatives: g = [1, 1, 0, 0], p = [1, .5, 0, 0]: TP = 1.5, FP = 0, FN = .5.
ONLY_FN = (volume([[1, 1, 0, 0]]), volume(two_class([[1, 0.5, 0, 0]])))


@pytest.mark.parametrize(
    "data, raised, rises",
    [
        [ONLY_FP, "alpha", True],
        [ONLY_FP, "beta", False],
        [ONLY_FN, "alpha", False],
        [ONLY_FN, "beta", True],
    ],
)
def test_alpha_weighs_false_positives_beta_false_negatives(data, raised, rises):
    low = float(TverskyLoss(**{raised: 0.3})(*data))
    high = float(TverskyLoss(**{raised: 0.7})(*data))
    assert (high > low + 0.05) if rises else high == pytest.approx(low, abs=1e-7)


def test_dice_loss_on_hard_labels_is_one_minus_dice(rng):
    truth = (rng.random((2, 6, 5, 4)) < 0.3).astype("int32")
    hard = (rng.random((2, 6, 5, 4)) < 0.3).astype("float32")
    tp = (truth * hard).sum((1, 2, 3))
    fp = ((1 - truth) * hard).sum((1, 2, 3))
    fn = (truth * (1 - hard)).sum((1, 2, 3))
    dice = 2 * tp / (2 * tp + fp + fn)
    np.testing.assert_allclose(tversky_loss(truth, two_class(hard)), 1 - dice, rtol=1e-6)


def test_dice_loss_is_tversky_half_half(rng):
    truth = (rng.random((2, 5, 5, 5)) < 0.2).astype("int32")
    pred = random_softmax(rng, (2, 5, 5, 5))
    dice = DiceLoss(smooth=0.5, gamma=1.5)(truth, pred)
    tversky = TverskyLoss(alpha=0.5, beta=0.5, smooth=0.5, gamma=1.5)(truth, pred)
    assert float(dice) == pytest.approx(float(tversky), rel=1e-7)


def test_label_forms_give_the_same_loss(rng):
    labels = rng.integers(0, 3, size=(2, 4, 5, 3))
    pred = random_softmax(rng, (2, 4, 5, 3), classes=3)
    loss = TverskyLoss(alpha=0.3, beta=0.7)
    expected = float(loss(np.eye(3)[labels], pred))
    assert float(loss(labels, pred)) == pytest.approx(expected, rel=1e-6)
    assert float(loss(labels[..., None], pred)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("cls", [TverskyLoss, TverskyCrossEntropyLoss])
@pytest.mark.parametrize("include_background", [False, True])
def test_sigmoid_channel_counts_only_its_own_class(rng, cls, include_background):
    """One sigmoid channel is the lesion class alone, background option or not (MONAI's way)."""
    truth = (rng.random((2, 4, 4, 4)) < 0.2).astype("float32")
    lesion = rng.random((2, 4, 4, 4, 1)).astype("float32")
    loss = cls(alpha=0.2, beta=0.8, include_background=include_background)
    two_classes = cls(alpha=0.2, beta=0.8, include_background=False)
    expected = float(two_classes(truth.astype("int32"), two_class(lesion[..., 0])))
    assert float(loss(truth, lesion)) == pytest.approx(expected, rel=1e-6)
    assert float(loss(truth[..., None], lesion)) == pytest.approx(expected, rel=1e-6)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def softmax_channels(x):
    e = np.exp(np.asarray(x, np.float64))
    return e / e.sum(axis=1, keepdims=True)


# MONAI 1.x's own TverskyLoss cases (tests/losses/test_tversky_loss.py), each
# the input after MONAI's activation, moved from channel-first (B, C, *spatial)
# to our channel-last; smooth_nr = smooth_dr = our smooth. Left out: MONAI's
# soft_label=True and smooth_nr != smooth_dr (options we do not have), the
# "sum"/"none" reductions over channels, and the tanh/log-softmax activations.
SIGMOID_2X2 = sigmoid([[[[1.0, -1.0], [-1.0, 1.0]]]])
TARGET_2X2 = [[[[1.0, 0.0], [1.0, 1.0]]]]
LOGITS_2X3 = [[[-1.0, 0.0, 1.0], [1.0, 0.0, -1.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]
LABELS_2X3 = [[[1.0, 0.0, 0.0]], [[1.0, 1.0, 0.0]]]
MONAI_CASES = [
    # (our options, MONAI input (B, C, ...), MONAI target (B, C, ...)), MONAI's value
    (dict(include_background=True, smooth=1e-6), SIGMOID_2X2, TARGET_2X2, 0.307576),
    (dict(include_background=True, smooth=1e-4),
     sigmoid([[[[1.0, -1.0], [-1.0, 1.0]]], [[[1.0, -1.0], [-1.0, 1.0]]]]),
     [[[[1.0, 1.0], [1.0, 1.0]]], [[[1.0, 0.0], [1.0, 0.0]]]], 0.416657),
    (dict(include_background=True, smooth=1e-4),
     [[[[0.3, 0.4], [0.7, 0.9]]], [[[1.0, 0.1], [0.5, 0.3]]]],
     [[[[0.3, 0.4], [0.7, 0.9]]], [[[1.0, 0.1], [0.5, 0.3]]]], 0.307773),
    (dict(include_background=False, smooth=0.0),
     [[[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]],
     [[[0.0, 0.0, 1.0]], [[0.0, 1.0, 0.0]]], 0.0),
    (dict(include_background=True, smooth=1e-4), sigmoid(LOGITS_2X3), LABELS_2X3, 0.435050),
    (dict(include_background=True, smooth=1e-5, batch=True), sigmoid(LOGITS_2X3), LABELS_2X3,
     0.422979),
    (dict(include_background=True, smooth=1e-4), softmax_channels(LOGITS_2X3), LABELS_2X3,
     0.383713),
    (dict(include_background=True, smooth=1e-6, alpha=0.3, beta=0.7), SIGMOID_2X2, TARGET_2X2,
     0.3589),
    (dict(include_background=True, smooth=1e-6, alpha=0.7, beta=0.3), SIGMOID_2X2, TARGET_2X2,
     0.247366),
]


@pytest.mark.parametrize("options, monai_input, monai_target, expected", MONAI_CASES)
def test_monai_test_cases_give_monais_values(options, monai_input, monai_target, expected):
    pred = np.moveaxis(np.asarray(monai_input, np.float32), 1, -1)
    target = np.moveaxis(np.asarray(monai_target, np.float32), 1, -1)
    if target.shape[-1] == 1 and pred.shape[-1] > 1:  # MONAI's to_onehot_y: class labels
        target = target[..., 0].astype("int32")
    value = float(TverskyLoss(**{"alpha": 0.5, "beta": 0.5, **options})(target, pred))
    assert value == pytest.approx(expected, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_cross_entropy_term_matches_keras(rng, channels):
    truth = rng.integers(0, max(channels, 2), size=(2, 4, 3, 5))
    kwargs = {"alpha": 0.3, "beta": 0.7, "gamma": 4 / 3}
    if channels == 1:
        pred = rng.uniform(0.01, 0.99, size=(2, 4, 3, 5, 1)).astype("float32")
        cross_entropy = keras.losses.BinaryCrossentropy()(truth[..., None], pred)
    else:
        pred = random_softmax(rng, (2, 4, 3, 5), classes=3)
        cross_entropy = keras.losses.CategoricalCrossentropy()(np.eye(3)[truth], pred)
    expected = float(TverskyLoss(**kwargs)(truth, pred)) + 0.7 * float(cross_entropy)
    combined = TverskyCrossEntropyLoss(ce_weight=0.7, **kwargs)(truth, pred)
    assert float(combined) == pytest.approx(expected, rel=1e-5)


def numeric_gradient(loss, y_true, y_pred, step=1e-3):
    """Central differences of `loss` w.r.t. each entry of `y_pred` (float64)."""
    y_pred = y_pred.astype("float64")
    gradient = np.zeros_like(y_pred)
    for i in np.ndindex(y_pred.shape):
        up, down = y_pred.copy(), y_pred.copy()
        up[i] += step
        down[i] -= step
        gradient[i] = (float(loss(y_true, up)) - float(loss(y_true, down))) / (2 * step)
    return gradient


@pytest.mark.parametrize(
    "loss",
    [
        TverskyLoss(),
        TverskyLoss(alpha=0.3, beta=0.7, smooth=0.5, gamma=4 / 3),
        TverskyLoss(alpha=0.2, beta=0.8, batch=True, include_background=True),
        TverskyCrossEntropyLoss(alpha=0.4, beta=0.6, ce_weight=0.5),
    ],
)
def test_gradient_matches_finite_differences(rng, loss):
    truth = (rng.random((2, 2, 2, 2)) < 0.4).astype("int32")
    pred = rng.uniform(0.1, 0.9, size=(2, 2, 2, 2, 2)).astype("float32")
    pred_tensor = tf.constant(pred)
    with tf.GradientTape() as tape:
        tape.watch(pred_tensor)
        value = loss(truth, pred_tensor)
    analytic = tape.gradient(value, pred_tensor).numpy()
    np.testing.assert_allclose(analytic, numeric_gradient(loss, truth, pred), atol=5e-4)


@pytest.mark.parametrize(
    "loss", [TverskyLoss(), TverskyLoss(gamma=3.0), TverskyCrossEntropyLoss(smooth=1.0)]
)
@pytest.mark.parametrize("lesion", [0.05, 1e-30, 1e-40, 0.0])  # soft, tiny, subnormal, zero
def test_lesion_free_sample_has_finite_loss_and_gradient(loss, lesion):
    pred = tf.constant(two_class(np.full((2, 8, 8, 8), lesion)))
    with tf.GradientTape() as tape:
        tape.watch(pred)
        value = loss(np.zeros((2, 8, 8, 8), "int32"), pred)
    assert np.isfinite(float(value)) and np.all(np.isfinite(tape.gradient(value, pred).numpy()))


def test_focal_loss_gradient_is_finite_at_a_perfect_prediction():
    truth = volume([[1, 1, 0, 0]])
    pred = tf.constant(volume(two_class([[1, 1, 0, 0]])))
    with tf.GradientTape() as tape:
        tape.watch(pred)
        value = TverskyLoss(gamma=2.0)(truth, pred)
    assert float(value) == 0.0
    assert np.all(np.isfinite(tape.gradient(value, pred).numpy()))


@pytest.mark.parametrize("dtype, rtol", [("float16", 1e-3), ("bfloat16", 1e-2)])
def test_low_precision_predictions_over_65504_voxels(rng, dtype, rtol):
    # 48**3 = 110592 voxels, 80% lesion: TP alone exceeds float16's largest value.
    truth = (rng.random((1, 48, 48, 48)) < 0.8).astype("int32")
    pred = two_class(np.clip(0.7 * truth + 0.3 * rng.random((1, 48, 48, 48)), 0, 1))
    expected = float(TverskyLoss(alpha=0.3, beta=0.7)(truth, pred))
    low = tf.cast(pred, dtype)
    from_function = float(np.mean(tversky_loss(truth, low, alpha=0.3, beta=0.7)))
    from_class = float(TverskyLoss(alpha=0.3, beta=0.7, dtype=f"mixed_{dtype}")(truth, low))
    assert from_function == pytest.approx(expected, rel=rtol)
    assert from_class == pytest.approx(expected, rel=rtol)


LOSSES = [
    TverskyLoss(
        alpha=0.3,
        beta=0.7,
        smooth=1.0,
        batch=True,
        include_background=True,
        gamma=1.5,
        reduction="sum",
        name="t",
        dtype="float64",
    ),
    DiceLoss(smooth=2.0, batch=True, include_background=True, gamma=2.0, reduction="sum"),
    TverskyCrossEntropyLoss(alpha=0.2, beta=0.8, gamma=4 / 3, ce_weight=0.25, name="tce"),
]


@pytest.mark.parametrize("loss", LOSSES)
def test_config_round_trip(loss):
    config = loss.get_config()
    assert type(loss).from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is type(loss) and restored.get_config() == config
    assert set(config) >= {"smooth", "batch", "include_background", "gamma", "reduction", "dtype"}


@pytest.mark.parametrize(
    "cls, kwargs, option",
    [
        [TverskyLoss, {"alpha": -0.1}, "alpha"],
        [TverskyLoss, {"beta": -1.0}, "beta"],
        [TverskyLoss, {"alpha": 0.0, "beta": 0.0}, "alpha \\+ beta"],
        [TverskyLoss, {"smooth": -1e-5}, "smooth"],
        [TverskyLoss, {"gamma": 0.0}, "gamma"],
        [DiceLoss, {"gamma": -1.0}, "gamma"],
        [TverskyCrossEntropyLoss, {"ce_weight": -0.5}, "ce_weight"],
    ],
)
def test_bad_options_raise(cls, kwargs, option):
    with pytest.raises(ValueError, match=option):
        cls(**kwargs)


@pytest.mark.parametrize(
    "y_true_shape, y_pred_shape",
    [
        [(1, 4, 4, 4, 3), (1, 4, 4, 4, 2)],  # one-hot with the wrong class count
        [(1, 4, 4, 5), (1, 4, 4, 4, 2)],  # labels on another grid
        [(1, 4, 4, 4, 2), (1, 4, 4, 4, 1)],  # one-hot truth for a sigmoid output
        [(1, 4, 4), (1, 4, 4, 4, 2)],  # a spatial axis missing
        [(4,), (4, 2)],  # no spatial axis
    ],
)
def test_shape_mismatch_raises(y_true_shape, y_pred_shape):
    with pytest.raises(ValueError, match="shape"):
        TverskyLoss()(np.zeros(y_true_shape), np.full(y_pred_shape, 0.5, "float32"))


@pytest.mark.parametrize("y_true, channels, message", [
    (np.array([[[[0, 2]]]]), 2, "label 2"),            # a class the softmax does not have
    (np.array([[[[0, -1]]]]), 3, "label -1"),
    (np.array([[[[0.0, 0.5]]]]), 2, "label 0.5"),      # labels must be whole numbers
    (np.array([[[[0, 255]]]]), 1, "255"),              # a 0/255 mask for a sigmoid
])
def test_numpy_labels_that_are_no_class_raise(y_true, channels, message):
    pred = np.full((1, 1, 1, 2, channels), 1.0 / max(channels, 2), "float32")
    with pytest.raises(ValueError, match=message):
        TverskyLoss()(y_true, pred)


def test_tensor_labels_that_are_no_class_make_the_loss_nan():
    """Inside a traced step the values are unknown when the graph is built: NaN, not silence."""
    import tensorflow as tf

    pred = np.full((1, 2, 2, 2, 2), 0.5, "float32")
    good, bad = np.zeros((1, 2, 2, 2), "int32"), np.zeros((1, 2, 2, 2), "int32")
    good[0, 0, 0, 0], bad[0, 0, 0, 0] = 1, 2
    loss = tf.function(TverskyLoss(alpha=0.3, beta=0.7))
    assert np.isfinite(float(loss(tf.constant(good), pred)))
    assert np.isnan(float(loss(tf.constant(bad), pred)))
    mask = tf.constant(np.array([0.0, 255.0], "float32").reshape(1, 1, 1, 2))
    assert np.isnan(float(loss(mask, np.full((1, 1, 1, 2, 1), 0.5, "float32"))))


@pytest.mark.parametrize("value", [-0.2, 1.5, float("nan")])
def test_predictions_that_are_no_probabilities_raise_as_numpy_and_are_nan_as_tensors(value):
    """Logits (a model without its softmax) are refused, not scored as if probabilities."""
    import tensorflow as tf

    from tversky_keras.losses import tversky_loss

    truth = np.zeros((1, 2, 2, 2), "int32")
    truth[0, 0, 0, 0] = 1
    pred = np.full((1, 2, 2, 2, 2), 0.5, "float32")
    pred[0, 1, 1, 1, 1] = value
    for call in (TverskyLoss(), lambda t, p: tversky_loss(t, p)):
        with pytest.raises(ValueError, match="y_pred holds .*probabilities in \\[0, 1\\]"):
            call(truth, pred)
    assert np.isfinite(float(TverskyLoss()(truth, np.clip(np.nan_to_num(pred), 0, 1))))
    traced = tf.function(TverskyLoss())
    assert np.isnan(float(traced(tf.constant(truth), tf.constant(pred))))
    for edge in (0.0, 1.0):   # the closed interval's ends are probabilities
        pred[0, 1, 1, 1, 1] = edge
        assert np.isfinite(float(traced(tf.constant(truth), tf.constant(pred))))


@pytest.mark.parametrize("alpha, beta", [(float("nan"), 0.5), (0.5, float("inf"))])
def test_the_loss_refuses_non_finite_weights(alpha, beta):
    with pytest.raises(ValueError, match="must be finite"):
        TverskyLoss(alpha=alpha, beta=beta)
