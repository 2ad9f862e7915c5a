"""tversky_keras.evaluation: exact whole-volume metrics: hand-worked cases, scikit-learn, lesions."""

import math
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from tversky_keras.evaluation import (average_precision, best_threshold_dsc, lesion_metrics,
                                      precision_recall_curve)

# Case A, threshold 0.5: predicted = [1, 1, 0, 1, 0, 0, 0, 0]
#   TP = 2 (voxels 0, 1), FP = 1 (voxel 3), FN = 1 (voxel 2), TN = 4.
#   DSC = 4 / (4 + 1 + 1) = 2/3, sensitivity = 2/3, specificity = 4/5,
#   F2 = 10 / (10 + 4 + 1) = 2/3.
#   APR: descending 0.9(T) 0.7(F) 0.6(T) 0.3(F) 0.2(T) ...; recall rises by 1/3
#   at 0.9 (precision 1/1), 0.6 (2/3) and 0.2 (3/5): (1 + 2/3 + 3/5) / 3 = 34/45.
#   Lesions (1D): true {0,1,2}, hit; predicted {0,1} and {3}, {3} is false.
CASE_A = ([1, 1, 1, 0, 0, 0, 0, 0], [0.9, 0.6, 0.2, 0.7, 0.1, 0.1, 0.3, 0.0])

TABLE = [
    # [kwargs, y_true, y_prob, expected]
    [
        {},
        *CASE_A,
        dict(tp=2, fp=1, tn=4, fn=1, dsc=2 / 3, sensitivity=2 / 3, specificity=4 / 5,
             f2=2 / 3, apr=34 / 45, n_true_lesions=1, n_pred_lesions=2,
             n_detected_lesions=1, n_false_lesions=1, lesion_tpr=1.0, lesion_fpr=1 / 2),
    ],
    # Case A at threshold 0.25 also predicts voxel 6 (0.3): TP 2, FP 2, FN 1, TN 3;
    # DSC 4/7, specificity 3/5, F2 10/16; a third predicted lesion {6}, also false.
    [
        {"threshold": 0.25},
        *CASE_A,
        dict(tp=2, fp=2, tn=3, fn=1, dsc=4 / 7, sensitivity=2 / 3, specificity=3 / 5,
             f2=10 / 16, apr=34 / 45, n_true_lesions=1, n_pred_lesions=3,
             n_detected_lesions=1, n_false_lesions=2, lesion_tpr=1.0, lesion_fpr=2 / 3),
    ],
    # Ties at the threshold count as lesion (>=): predicted [1, 1, 1, 0], TP 2, FP 1,
    # TN 1; DSC 4/5, F2 10/11. APR: all three 0.5-voxels enter together, precision
    # 2/3 at recall 1 -> 2/3. True lesions {0} and {2} both lie in predicted {0,1,2}.
    [
        {},
        [1, 0, 1, 0],
        [0.5, 0.5, 0.5, 0.2],
        dict(tp=2, fp=1, tn=1, fn=0, dsc=4 / 5, sensitivity=1.0, specificity=1 / 2,
             f2=10 / 11, apr=2 / 3, n_true_lesions=2, n_pred_lesions=1,
             n_detected_lesions=2, n_false_lesions=0, lesion_tpr=1.0, lesion_fpr=0.0),
    ],
    # No lesion, one false voxel: DSC = F2 = 0 / 1 = 0, sensitivity has no
    # denominator -> 1, APR undefined -> nan, no true lesion -> lesion_tpr 1.
    [
        {},
        [0, 0, 0, 0, 0],
        [0.1, 0.2, 0.6, 0.0, 0.0],
        dict(tp=0, fp=1, tn=4, fn=0, dsc=0.0, sensitivity=1.0, specificity=4 / 5,
             f2=0.0, apr=math.nan, n_true_lesions=0, n_pred_lesions=1,
             n_detected_lesions=0, n_false_lesions=1, lesion_tpr=1.0, lesion_fpr=1.0),
    ],
    # No lesion and none predicted: every ratio is empty -> perfect, APR nan.
    [
        {},
        [0, 0, 0],
        [0.1, 0.1, 0.4],
        dict(tp=0, fp=0, tn=3, fn=0, dsc=1.0, sensitivity=1.0, specificity=1.0,
             f2=1.0, apr=math.nan, n_true_lesions=0, n_pred_lesions=0,
             n_detected_lesions=0, n_false_lesions=0, lesion_tpr=1.0, lesion_fpr=0.0),
    ],
    # All lesion: TN + FP = 0 -> specificity 1; TP 2, FN 1: DSC 4/5, F2 10/14;
    # precision is 1 at every threshold -> APR 1. Predicted {0} and {2} both true.
    [
        {},
        [1, 1, 1],
        [0.9, 0.4, 0.6],
        dict(tp=2, fp=0, tn=0, fn=1, dsc=4 / 5, sensitivity=2 / 3, specificity=1.0,
             f2=10 / 14, apr=1.0, n_true_lesions=1, n_pred_lesions=2,
             n_detected_lesions=1, n_false_lesions=0, lesion_tpr=1.0, lesion_fpr=0.0),
    ],
]


@pytest.mark.parametrize("kwargs, y_true, y_prob, expected", TABLE)
def test_hand_worked_cases(kwargs, y_true, y_prob, expected):
    result = lesion_metrics(np.array(y_true), np.array(y_prob, np.float32), **kwargs)
    for key, value in expected.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(result[key]), key
        else:
            assert result[key] == pytest.approx(value, abs=1e-12), key


def _random_volume(rng, shape, lesion_fraction, decimals, dtype):
    y_true = rng.random(shape) < lesion_fraction
    # Lesion voxels get higher probabilities on average, as from a useful model;
    # rounding makes ties, which the step-wise curve must group like sklearn.
    y_prob = np.clip(rng.random(shape) * 0.7 + 0.3 * y_true, 0, 1)
    if decimals is not None:
        y_prob = np.round(y_prob, decimals)
    return y_true, y_prob.astype(dtype)


@pytest.mark.parametrize(
    "decimals, dtype, lesion_fraction",
    [
        (2, np.float32, 0.1),
        (None, np.float32, 0.02),
        (None, np.float64, 0.3),
        (1, np.float64, 0.5),
    ],
)
def test_voxel_metrics_equal_sklearn(rng, decimals, dtype, lesion_fraction):
    y_true, y_prob = _random_volume(rng, (9, 10, 11), lesion_fraction, decimals, dtype)
    result = lesion_metrics(y_true, y_prob, return_curve=True)
    t, p = y_true.ravel(), y_prob.ravel()
    predicted = p >= 0.5
    tn, fp, fn, tp = skm.confusion_matrix(t, predicted, labels=[0, 1]).ravel()
    assert (result["tn"], result["fp"], result["fn"], result["tp"]) == (tn, fp, fn, tp)
    assert result["dsc"] == pytest.approx(skm.f1_score(t, predicted), abs=1e-12)
    assert result["f2"] == pytest.approx(skm.fbeta_score(t, predicted, beta=2), abs=1e-12)
    assert result["sensitivity"] == pytest.approx(skm.recall_score(t, predicted), abs=1e-12)
    specificity = skm.recall_score(t, predicted, pos_label=0)
    assert result["specificity"] == pytest.approx(specificity, abs=1e-12)
    assert result["apr"] == pytest.approx(skm.average_precision_score(t, p), abs=1e-9)
    for ours, theirs in zip(result["pr_curve"], skm.precision_recall_curve(t, p)):
        np.testing.assert_array_equal(ours, theirs)


def test_curve_without_lesions_follows_sklearn(rng):
    y_prob = np.round(rng.random(50), 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sklearn: "No positive class"
        expected = skm.precision_recall_curve(np.zeros(50), y_prob)
    for ours, theirs in zip(precision_recall_curve(np.zeros(50), y_prob), expected):
        np.testing.assert_array_equal(ours, theirs)
    assert math.isnan(average_precision(np.zeros(50), y_prob))


def test_list_of_volumes_pools_all_voxels(rng):
    shapes = [(6, 5, 4), (3, 7, 2), (5, 5, 5)]
    volumes = [_random_volume(rng, s, 0.2, 2, np.float32) for s in shapes]
    # One volume in float64: pooling must not round its distinct values together.
    volumes[1] = _random_volume(rng, shapes[1], 0.2, None, np.float64)
    y_true = [t for t, _ in volumes]
    y_prob = [p for _, p in volumes]
    pooled = lesion_metrics(y_true, y_prob, return_curve=True)
    singles = [lesion_metrics(t, p) for t, p in volumes]
    flat_true = np.concatenate([t.ravel() for t in y_true])
    flat_prob = np.concatenate([p.ravel() for p in y_prob])
    flat = lesion_metrics(flat_true, flat_prob, return_curve=True)

    for key in ("tp", "fp", "tn", "fn", "dsc", "sensitivity", "specificity", "f2", "apr"):
        assert pooled[key] == pytest.approx(flat[key], abs=1e-12), key
    expected_apr = skm.average_precision_score(flat_true, flat_prob)
    assert pooled["apr"] == pytest.approx(expected_apr, abs=1e-9)
    for ours, theirs in zip(pooled["pr_curve"], skm.precision_recall_curve(flat_true, flat_prob)):
        np.testing.assert_array_equal(ours, theirs)
    # Components never span volumes: lesion counts are sums of per-volume counts.
    for key in ("n_true_lesions", "n_pred_lesions", "n_detected_lesions", "n_false_lesions"):
        assert pooled[key] == sum(single[key] for single in singles), key
    assert pooled["lesion_tpr"] == pooled["n_detected_lesions"] / pooled["n_true_lesions"]


def test_lesion_counts_on_known_components():
    y_true = np.zeros((10, 10, 10), bool)
    y_true[1:3, 1:3, 1:3] = True  # lesion 1: hit by the first prediction
    y_true[6:8, 1:3, 1:3] = True  # lesion 2: missed
    y_true[1, 7, 7] = True  # lesion 3: one voxel, missed
    y_prob = np.zeros(y_true.shape, np.float32)
    y_prob[2:4, 2:4, 2:4] = 0.8  # overlaps lesion 1 in the voxel (2, 2, 2)
    y_prob[6:8, 6:8, 6:8] = 0.9  # far from every lesion: a false detection
    result = lesion_metrics(y_true, y_prob)
    assert (result["n_true_lesions"], result["n_detected_lesions"]) == (3, 1)
    assert (result["n_pred_lesions"], result["n_false_lesions"]) == (2, 1)
    assert result["lesion_tpr"] == pytest.approx(1 / 3)
    assert result["lesion_fpr"] == pytest.approx(1 / 2)
    assert result["tp"] == 1  # the single shared voxel (2, 2, 2)


@pytest.mark.parametrize(
    "second_voxel, connectivity, n_lesions",
    [
        ((1, 1, 1), None, 1),  # corner neighbours: one lesion under 26-connectivity
        ((1, 1, 1), 2, 2),  # ... but two under 18-connectivity
        ((1, 1, 0), 2, 1),  # edge neighbours: one lesion under 18-connectivity
        ((1, 1, 0), 1, 2),  # ... but two under 6-connectivity
        ((1, 0, 0), 1, 1),  # face neighbours are always one lesion
    ],
)
def test_connectivity_of_lesions(second_voxel, connectivity, n_lesions):
    y_true = np.zeros((4, 4, 4), np.uint8)
    y_true[0, 0, 0] = y_true[second_voxel] = 1
    result = lesion_metrics(y_true, y_true.astype(np.float32), connectivity=connectivity)
    assert result["n_true_lesions"] == result["n_pred_lesions"] == n_lesions


@pytest.mark.parametrize(
    "y_true, y_prob, kwargs, message",
    [
        (np.zeros((2, 3)), np.zeros((3, 2)), {}, "same shape"),
        (np.array([0, 2, 1]), np.zeros(3), {}, "binary"),
        (np.array([0.0, 0.5]), np.zeros(2), {}, "binary"),
        (np.array(["a", "b"]), np.zeros(2), {}, "binary mask"),
        (np.zeros(3), np.array([0.1, np.nan, 0.2]), {}, "NaN"),
        (np.zeros(3), np.array([0.1, np.inf, 0.2]), {}, r"\[0, 1\]"),
        (np.zeros(3), np.array([0.1, 1.5, 0.2]), {}, r"\[0, 1\]"),
        (np.zeros(3), np.array([-0.1, 0.5, 0.2]), {}, r"\[0, 1\]"),
        (np.zeros(0), np.zeros(0), {}, "no voxels"),
        (np.zeros(3), np.zeros(3), {"threshold": 1.5}, "threshold"),
        (np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), {"connectivity": 4}, "connectivity"),
        (np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), {"connectivity": 0}, "connectivity"),
        ([np.zeros(3)], np.zeros(3), {}, "both be arrays or both be lists"),
        ([np.zeros(3)], [np.zeros(3), np.zeros(3)], {}, "1 volumes but y_prob has 2"),
        ([], [], {}, "no volumes"),
        ([np.zeros(3), np.zeros(3)], [np.zeros(3), np.full(3, 2.0)], {}, r"volume 1: y_prob"),
    ],
)
def test_bad_input_raises_naming_the_problem(y_true, y_prob, kwargs, message):
    with pytest.raises(ValueError, match=message):
        lesion_metrics(y_true, y_prob, **kwargs)


def test_mask_restricts_voxel_metrics_and_keeps_lesions_3d():
    # Voxels outside the mask count for nothing: the result equals evaluating
    # the inside voxels alone (checked against sklearn), and lesion components
    # are still found in 3D (a diagonal pair inside the mask is one lesion).
    from sklearn.metrics import average_precision_score, confusion_matrix

    rng = np.random.default_rng(7)
    truth = np.zeros((6, 6, 6), np.uint8)
    truth[1, 1, 1] = truth[2, 2, 2] = 1          # one 26-connected lesion
    truth[4, 4, 4] = 1                           # a second lesion
    truth[0, 5, 5] = 1                           # outside the mask: ignored
    prob = rng.uniform(0, 0.4, truth.shape).astype(np.float32)
    prob[1, 1, 1] = 0.9
    prob[5, 0, 0] = 0.95                         # outside the mask: no false positive
    inside = np.ones_like(truth, bool)
    inside[0, 5, 5] = inside[5, 0, 0] = False
    result = lesion_metrics(truth, prob, mask=inside)
    tn, fp, fn, tp = confusion_matrix(truth[inside], prob[inside] >= 0.5, labels=[0, 1]).ravel()
    assert (result["tp"], result["fp"], result["fn"], result["tn"]) == (tp, fp, fn, tn)
    assert result["apr"] == pytest.approx(average_precision_score(truth[inside], prob[inside]))
    assert result["n_true_lesions"] == 2 and result["n_detected_lesions"] == 1
    assert result["n_pred_lesions"] == 1 and result["lesion_fpr"] == 0.0
    pooled = lesion_metrics([truth, truth], [prob, prob], mask=[inside, inside])
    assert pooled["tp"] == 2 * tp and pooled["n_true_lesions"] == 4
    with pytest.raises(ValueError, match="mask"):
        lesion_metrics(truth, prob, mask=inside[:3])


def brute_force_threshold_dsc(truth, value):
    """Every distinct intensity as the threshold, scored with lesion_metrics' DSC."""
    best = (1.0 if not truth.any() else 0.0, float("inf"))
    for t in np.unique(value):
        called = value >= t
        tp = np.count_nonzero(called & truth)
        dsc = 2 * tp / (called.sum() + truth.sum())
        if dsc > best[0]:
            best = (dsc, float(t))
    return best


@pytest.mark.parametrize("seed", range(5))
def test_best_threshold_dsc_equals_trying_every_threshold(seed):
    rng = np.random.default_rng(seed)
    truth = rng.random((6, 7, 5)) < 0.15
    # Lesions brighter on average, with ties (rounded values) and overlap.
    value = np.round(rng.normal(size=truth.shape) + 1.5 * truth, 1)
    dsc, threshold = best_threshold_dsc(truth, value)
    expected = brute_force_threshold_dsc(truth, value)
    assert dsc == pytest.approx(expected[0], abs=1e-12) and threshold == expected[1]


def test_best_threshold_dsc_hand_worked_pools_volumes_and_respects_the_region():
    # Values 5,4,3,2,1 with truth 1,0,1,0,0: t=5 gives 2/3, t=3 gives 4/5, t=4 gives 2/4.
    truth, value = np.array([1, 0, 1, 0, 0]), np.array([5.0, 4, 3, 2, 1])
    assert best_threshold_dsc(truth, value) == (pytest.approx(0.8), 3.0)
    # Outside the region the bright false positive does not exist: t=3 gives 1.0.
    region = np.array([1, 0, 1, 1, 1], bool)
    assert best_threshold_dsc(truth, value, mask=region) == (pytest.approx(1.0), 3.0)
    # Pooled over two volumes, one threshold serves both.
    dsc, _ = best_threshold_dsc([truth, truth], [value, value])
    assert dsc == pytest.approx(0.8)
    assert best_threshold_dsc(np.zeros(4), np.arange(4.0)) == (1.0, float("inf"))
    with pytest.raises(ValueError, match="binary"):
        best_threshold_dsc(np.array([0, 2]), np.array([0.0, 1.0]))
