"""tversky_keras.metrics: streaming lesion metrics against hand-worked values and scikit-learn."""

import keras
import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    f1_score,
    fbeta_score,
    recall_score,
)

from tiny_data import two_class
from tversky_keras.losses import TverskyLoss, tversky_loss
from tversky_keras.metrics import PRAUC, DiceScore, FBetaScore, Sensitivity, Specificity

METRICS = [DiceScore, Sensitivity, Specificity, FBetaScore, PRAUC]


def cube(values):
    """Eight voxels as one `(1, 2, 2, 2)` volume."""
    return np.reshape(np.asarray(values), (1, 2, 2, 2) + np.shape(values)[2:])


def measure(metric, y_true, y_pred, sample_weight=None):
    metric.update_state(y_true, y_pred, sample_weight=sample_weight)
    return float(metric.result())


def lesion_data(rng, shape, fraction, separation, sharpness=1.0):
    """Labels with `fraction` lesion voxels and softmax scores that separate them.

    `sharpness` scales the logits: above 1 the scores pile up near 0 and 1, as a
    trained network's do.
    """
    labels = (rng.random(shape) < fraction).astype("int32")
    logits = sharpness * (-2.0 + separation * labels + rng.normal(size=shape))
    return labels, two_class(1.0 / (1.0 + np.exp(-logits)))


# Labels [1, 1, 1, 0, 0, 0, 0, 0], lesion scores [.9, .2, .2, .6, .1, .1, .1, .1].
# At .5: TP = 1 (.9), FN = 2, FP = 1 (.6), TN = 4.  At .2 (>=): TP = 3, FN = 0, FP = 1, TN = 4.
# AP: thresholds .9 (P = 1, R = 1/3), .6 (R unchanged), .2 (P = 3/4, R = 1): 1/3 + 2/3 * 3/4.
L = cube([[1, 1, 1, 0, 0, 0, 0, 0]])
S = cube(two_class([[0.9, 0.2, 0.2, 0.6, 0.1, 0.1, 0.1, 0.1]]))
NO_LESION = cube([[0] * 8])
ALL_LESION = cube([[1] * 8])
LOW = cube(two_class([[0.1] * 8]))
HIGH = cube(two_class([[0.9] * 8]))
ONE_FALSE_ALARM = cube(two_class([[0.9] + [0.1] * 7]))

TEST_CASES = [
    [DiceScore, {}, L, S, 2 / (2 + 1 + 2)],
    [Sensitivity, {}, L, S, 1 / 3],
    [Specificity, {}, L, S, 4 / 5],
    [FBetaScore, {}, L, S, 5 / (5 + 4 * 2 + 1)],
    [FBetaScore, {"beta": 1.0}, L, S, 2 / (2 + 2 + 1)],
    [DiceScore, {"threshold": 0.2}, L, S, 6 / (6 + 1 + 0)],
    [Sensitivity, {"threshold": 0.2}, L, S, 1.0],
    [Specificity, {"threshold": 0.2}, L, S, 4 / 5],
    [FBetaScore, {"threshold": 0.2}, L, S, 15 / (15 + 0 + 1)],
    [PRAUC, {}, L, S, 1 / 3 + 2 / 3 * 3 / 4],
    # Empty denominators score 1.0, PR AUC without lesions 0.0.
    [DiceScore, {}, NO_LESION, LOW, 1.0],  # TP + FP + FN = 0
    [Sensitivity, {}, NO_LESION, LOW, 1.0],  # TP + FN = 0
    [FBetaScore, {}, NO_LESION, LOW, 1.0],  # TP + FP + FN = 0
    [PRAUC, {}, NO_LESION, LOW, 0.0],
    [Specificity, {}, ALL_LESION, HIGH, 1.0],  # TN + FP = 0
    [Specificity, {}, ALL_LESION, LOW, 1.0],  # TN + FP = 0
    [DiceScore, {}, ALL_LESION, LOW, 0.0],  # TP = 0 < FN = 8
    [PRAUC, {}, ALL_LESION, LOW, 1.0],  # every voxel a lesion: precision 1
    [DiceScore, {}, NO_LESION, ONE_FALSE_ALARM, 0.0],  # TP = 0 < FP = 1
    [Sensitivity, {}, NO_LESION, ONE_FALSE_ALARM, 1.0],  # TP + FN = 0
    [Specificity, {}, NO_LESION, ONE_FALSE_ALARM, 7 / 8],
]


@pytest.mark.parametrize("cls, kwargs, y_true, y_pred, expected", TEST_CASES)
def test_hand_worked_values(cls, kwargs, y_true, y_pred, expected):
    assert measure(cls(**kwargs), y_true, y_pred) == pytest.approx(expected, rel=1e-6)


def sklearn_scores(truth, lesion, threshold, sample_weight=None):
    truth, predicted = truth.ravel(), (lesion.ravel() >= threshold).astype(int)
    weight = None if sample_weight is None else sample_weight.ravel()
    tn, fp, fn, tp = confusion_matrix(truth, predicted, sample_weight=weight).ravel()
    return {
        DiceScore: f1_score(truth, predicted, sample_weight=weight),
        Sensitivity: recall_score(truth, predicted, sample_weight=weight),
        Specificity: tn / (tn + fp),
        FBetaScore: fbeta_score(truth, predicted, beta=2.0, sample_weight=weight),
    }


@pytest.mark.parametrize("threshold", [0.5, 0.3])
@pytest.mark.parametrize("cls", [DiceScore, Sensitivity, Specificity, FBetaScore])
def test_thresholded_metrics_match_sklearn(rng, cls, threshold):
    labels, pred = lesion_data(rng, (2, 9, 8, 7), fraction=0.1, separation=3.0)
    expected = sklearn_scores(labels, pred[..., 1], threshold)[cls]
    assert measure(cls(threshold=threshold), labels, pred) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("beta", [0.5, 1.0, 3.0])
def test_fbeta_matches_sklearn(rng, beta):
    labels, pred = lesion_data(rng, (2, 9, 8, 7), fraction=0.1, separation=2.0)
    expected = fbeta_score(labels.ravel(), pred[..., 1].ravel() >= 0.5, beta=beta)
    assert measure(FBetaScore(beta=beta), labels, pred) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    "fraction, separation, sharpness",
    [[0.01, 1.5, 1.0], [0.01, 3.0, 1.0], [0.03, 2.0, 1.0], [0.2, 1.0, 1.0], [0.01, 4.0, 4.0]],
)
def test_pr_auc_is_close_to_sklearn(rng, fraction, separation, sharpness):
    labels, pred = lesion_data(rng, (2, 40, 40, 30), fraction, separation, sharpness)
    expected = average_precision_score(labels.ravel(), pred[..., 1].ravel())
    assert 0.05 < expected < 0.95  # a realistic, informative case
    # Binning merges close scores into ties: the error is about 0.001, and 0.01 in
    # the saturated case, where many scores share the top bin.
    assert measure(PRAUC(), labels, pred) == pytest.approx(expected, abs=0.02)


def test_pr_auc_equals_sklearn_when_bins_do_not_merge_scores(rng):
    # One distinct score per bin (bin centres), so binning loses nothing.
    labels = (rng.random((3, 10, 10, 10)) < 0.05).astype("int32")
    bin_index = np.clip(rng.integers(0, 800, size=labels.shape) + 150 * labels, 0, 999)
    lesion = (bin_index + 0.5) / 1000
    expected = average_precision_score(labels.ravel(), lesion.ravel())
    assert measure(PRAUC(num_bins=1000), labels, two_class(lesion)) == pytest.approx(
        expected, rel=1e-6  # the float32 result
    )


@pytest.mark.parametrize("cls", METRICS)
def test_two_batches_equal_their_concatenation(rng, cls):
    labels, pred = lesion_data(rng, (4, 8, 8, 8), fraction=0.05, separation=3.0)
    streamed = cls()
    streamed.update_state(labels[:1], pred[:1])
    streamed.update_state(labels[1:], pred[1:])
    assert float(streamed.result()) == pytest.approx(measure(cls(), labels, pred), rel=1e-7)


@pytest.mark.parametrize("cls", METRICS)
def test_reset_state_forgets_earlier_batches(rng, cls):
    labels, pred = lesion_data(rng, (2, 8, 8, 8), fraction=0.1, separation=2.0)
    metric = cls()
    metric.update_state(1 - labels, pred)
    metric.reset_state()
    assert measure(metric, labels, pred) == pytest.approx(measure(cls(), labels, pred), rel=1e-7)


@pytest.mark.parametrize("cls", METRICS)
def test_label_forms_and_sigmoid_give_the_same_result(rng, cls):
    labels, pred = lesion_data(rng, (2, 6, 6, 6), fraction=0.1, separation=2.0)
    expected = measure(cls(), labels, pred)
    assert measure(cls(), np.eye(2)[labels], pred) == pytest.approx(expected, rel=1e-7)
    assert measure(cls(), labels[..., None], pred) == pytest.approx(expected, rel=1e-7)
    assert measure(cls(), labels, pred[..., 1:]) == pytest.approx(expected, rel=1e-7)


@pytest.mark.parametrize("cls", [DiceScore, Sensitivity, Specificity, FBetaScore])
def test_voxel_weights_match_sklearn(rng, cls):
    labels, pred = lesion_data(rng, (2, 7, 6, 5), fraction=0.15, separation=2.0)
    mask = (rng.random(labels.shape) < 0.6).astype("float32")  # e.g. a brain mask
    expected = sklearn_scores(labels, pred[..., 1], 0.5, sample_weight=mask)[cls]
    assert measure(cls(), labels, pred, sample_weight=mask) == pytest.approx(expected, rel=1e-6)
    assert measure(cls(), labels, pred, mask[..., None]) == pytest.approx(expected, rel=1e-6)


def test_pr_auc_voxel_weights_match_sklearn(rng):
    labels, pred = lesion_data(rng, (2, 7, 6, 5), fraction=0.15, separation=2.0)
    weight = rng.integers(0, 3, size=labels.shape)
    # Scores at bin centres: the weighted AP must match exactly.
    lesion = (np.floor(pred[..., 1] * 1000) + 0.5) / 1000
    expected = average_precision_score(labels.ravel(), lesion.ravel(), sample_weight=weight.ravel())
    result = measure(PRAUC(), labels, two_class(lesion), sample_weight=weight)
    assert result == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("cls", METRICS)
def test_per_sample_weights_count_samples(rng, cls):
    labels, pred = lesion_data(rng, (2, 6, 6, 6), fraction=0.1, separation=1.5)
    twice_first = measure(cls(), labels[[0, 0]], pred[[0, 0]])
    weighted = measure(cls(), labels, pred, sample_weight=np.array([2.0, 0.0]))
    assert weighted == pytest.approx(twice_first, rel=1e-7)


def _float64_variables():
    """JAX keeps float64 off (float32 instead) unless jax_enable_x64 is set."""
    if keras.backend.backend() != "jax":
        return True
    import jax

    return bool(jax.config.jax_enable_x64)


@pytest.mark.skipif(not _float64_variables(), reason="JAX without jax_enable_x64 has no float64")
def test_counts_stay_exact_past_float32_integers():
    # float32 cannot hold 2**24 + 1; the accumulators must.
    metric = DiceScore()
    counts = [metric.true_positives, metric.false_positives, metric.true_negatives]
    counts.append(metric.false_negatives)
    for count in counts:
        count.assign(2.0**24)
    metric.update_state(np.array([[1, 0, 0, 1]]), two_class([[0.9, 0.9, 0.1, 0.1]]))
    assert [float(count.numpy()) for count in counts] == [2.0**24 + 1] * 4

    pr_auc = PRAUC(num_bins=10)
    pr_auc.positive_histogram.assign(np.full(10, 2.0**24))
    pr_auc.update_state(np.array([[1, 1]]), two_class([[0.05, 0.95]]))
    assert pr_auc.positive_histogram.numpy()[[0, 5, 9]].tolist() == [2**24 + 1, 2**24, 2**24 + 1]


def test_threshold_is_inclusive():
    # The paper's test rule: probability >= .5 is lesion.
    labels, pred = np.array([[1, 0]]), two_class([[0.5, 0.4999]])
    assert measure(Sensitivity(), labels, pred) == 1.0
    assert measure(Specificity(), labels, pred) == 1.0


METRIC_INSTANCES = [
    DiceScore(threshold=0.3, class_id=2, name="d", dtype="float64"),
    Sensitivity(threshold=0.7, class_id=0, name="s"),
    Specificity(threshold=0.1, name="sp"),
    FBetaScore(beta=0.5, threshold=0.4, class_id=2, name="f"),
    PRAUC(num_bins=64, class_id=2, name="ap", dtype="float64"),
]


@pytest.mark.parametrize("metric", METRIC_INSTANCES)
def test_config_round_trip(metric):
    config = metric.get_config()
    assert type(metric).from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(metric))
    assert type(restored) is type(metric) and restored.get_config() == config


@pytest.mark.parametrize(
    "cls, kwargs, option",
    [
        [DiceScore, {"threshold": -0.1}, "threshold"],
        [Specificity, {"threshold": 1.5}, "threshold"],
        [Sensitivity, {"class_id": -1}, "class_id"],
        [FBetaScore, {"beta": 0.0}, "beta"],
        [PRAUC, {"num_bins": 1}, "num_bins"],
        [PRAUC, {"class_id": -2}, "class_id"],
    ],
)
def test_bad_options_raise(cls, kwargs, option):
    with pytest.raises(ValueError, match=option):
        cls(**kwargs)


@pytest.mark.parametrize("cls", [DiceScore, PRAUC])
def test_class_id_beyond_the_channels_raises(cls):
    with pytest.raises(ValueError, match="class_id=2"):
        cls(class_id=2).update_state(np.zeros((1, 2, 2, 2)), np.full((1, 2, 2, 2, 2), 0.5))


@pytest.mark.parametrize("jit_compile", [False, True])  # True: XLA, the default on GPUs
def test_fit_and_evaluate_report_the_numpy_values(rng, jit_compile):
    keras.utils.set_random_seed(0)
    x = rng.normal(size=(6, 6, 6, 6, 1)).astype("float32")
    labels = (x[..., 0] > 1.0).astype("int32")
    model = keras.Sequential(
        [keras.Input((6, 6, 6, 1)), keras.layers.Conv3D(2, 3, padding="same", activation="softmax")]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=TverskyLoss(alpha=0.3, beta=0.7),
        metrics=[DiceScore(), Sensitivity(), Specificity(), FBetaScore(), PRAUC()],
        jit_compile=jit_compile,
    )
    history = model.fit(x, labels, batch_size=2, epochs=2, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]

    reported = model.evaluate(x, labels, batch_size=4, verbose=0, return_dict=True)
    pred = model.predict(x, batch_size=4, verbose=0)
    expected = sklearn_scores(labels, pred[..., 1], 0.5)
    expected = {
        "loss": float(np.mean(keras.ops.convert_to_numpy(
            tversky_loss(labels, pred, alpha=0.3, beta=0.7)))),
        "dice_score": expected[DiceScore],
        "sensitivity": expected[Sensitivity],
        "specificity": expected[Specificity],
        "fbeta_score": expected[FBetaScore],
    }
    for name, value in expected.items():
        assert reported[name] == pytest.approx(value, rel=1e-5), name
    ap = average_precision_score(labels.ravel(), pred[..., 1].ravel())
    assert reported["pr_auc"] == pytest.approx(ap, abs=0.02)


def test_pr_auc_counts_nan_scores_in_the_lowest_bin_instead_of_crashing():
    truth = np.eye(2, dtype="float32")[np.array([[0, 1, 1, 0]])]
    scores = np.array([[0.2, np.nan, 0.9, np.nan]], "float32")
    as_zero = np.nan_to_num(scores, nan=0.0)
    with_nan, zeros = PRAUC(num_bins=10), PRAUC(num_bins=10)
    with_nan.update_state(truth, np.stack([1 - scores, scores], -1))
    zeros.update_state(truth, np.stack([1 - as_zero, as_zero], -1))
    assert float(with_nan.result()) == pytest.approx(float(zeros.result()))


@pytest.mark.parametrize("bad", [np.nan, -1.0])
@pytest.mark.parametrize("cls", [DiceScore, Sensitivity, Specificity, FBetaScore, PRAUC])
def test_an_invalid_weight_gives_nan_never_a_score_and_clean_batches_do_not_hide_it(
        rng, cls, bad):
    truth = (rng.random((1, 8, 8, 8, 1)) > 0.7).astype("float32")
    score = rng.random((1, 8, 8, 8, 1)).astype("float32")
    weight = np.ones((1, 8, 8, 8), "float32")
    weight[0, 0, 0, 0] = bad  # one voxel's weight, a background voxel or a lesion voxel
    metric = cls()
    metric.update_state(truth, score, sample_weight=weight)
    for _ in range(3):
        metric.update_state(truth, score)
    assert np.isnan(float(metric.result()))
    metric.reset_state()
    metric.update_state(truth, score)
    assert np.isfinite(float(metric.result()))


def test_an_empty_denominator_keeps_its_documented_value():
    nothing = np.zeros((1, 4, 1, 1, 1), "float32")
    for cls, expected in ((DiceScore, 1.0), (Sensitivity, 1.0), (FBetaScore, 1.0),
                          (PRAUC, 0.0)):
        metric = cls()
        metric.update_state(nothing, nothing, sample_weight=np.ones((1, 4, 1, 1), "float32"))
        assert float(metric.result()) == expected, cls.__name__


@pytest.mark.parametrize("beta", [np.nan, np.inf, 0.0, -1.0])
def test_fbeta_refuses_a_beta_that_is_not_a_finite_positive_number(beta):
    with pytest.raises(ValueError, match="beta must be a finite number > 0"):
        FBetaScore(beta=beta)
