"""tversky_keras.evaluation: exact whole-volume metrics: hand-worked cases, scikit-learn, lesions,
and the challenge metrics (nDSC, lesion F1, HD95/ASSD against medpy, volumes)."""

import json
import math
import warnings

import numpy as np
import pytest
from medpy.metric import binary as medpy_binary
from scipy import ndimage
from sklearn import metrics as skm

from tversky_keras.evaluation import (average_precision, best_threshold_dsc, challenge_metrics,
                                      lesion_detection, lesion_metrics, normalised_dsc,
                                      precision_recall_curve, surface_distances,
                                      volume_agreement)

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


# ---------------------------------------------------------------------------
# Challenge metrics: nDSC, lesion detection, surface distances, volumes.
# ---------------------------------------------------------------------------

def _line(length, *spans):
    """A 1D mask of ``length`` voxels, lesion on each half-open ``(start, stop)`` span."""
    mask = np.zeros(length, bool)
    for start, stop in spans:
        mask[start:stop] = True
    return mask


# Truth 2 of 10 voxels (n = 2, N = 10), prediction hits one and adds one:
# TP 1, FP 1, FN 1.
NDSC_TRUE, NDSC_PRED = _line(10, (0, 2)), _line(10, (1, 3))

NDSC_TABLE = [
    # [kwargs, y_true, y_pred, expected]
    # r = 0.001: k = 0.999 * 2 / (0.001 * 8) = 249.75; nDSC = 2 / (2 + 249.75 + 1).
    [{}, NDSC_TRUE, NDSC_PRED, 2 / 252.75],
    # r = 0.2 is this volume's own load: k = 0.8 * 2 / (0.2 * 8) = 1, nDSC = DSC = 2/4.
    [{"reference_load": 0.2}, NDSC_TRUE, NDSC_PRED, 0.5],
    # The region drops voxels 5-9: N = 5, k = 0.999 * 2 / (0.001 * 3) = 666, 2 / 669.
    [{"mask": _line(10, (0, 5))}, NDSC_TRUE, NDSC_PRED, 2 / 669],
    # Pooled with an empty volume of 10: N = 20, k = 0.999 * 2 / (0.001 * 18) = 111,
    # nDSC = 2 / (2 + 111 + 1).
    [{}, [NDSC_TRUE, _line(10)], [NDSC_PRED, _line(10)], 2 / 114],
    # No FP: k does not matter, nDSC = DSC = 2 * 1 / (2 + 1).
    [{}, NDSC_TRUE, _line(10, (0, 1)), 2 / 3],
    # Every voxel lesion (N = n, k would divide by zero), FP = 0: 2 * 2 / (4 + 2).
    [{}, _line(4, (0, 4)), _line(4, (0, 2)), 2 / 3],
    # Shifts' empty cases: nothing true, nothing predicted -> 1; nothing true but
    # something predicted -> k = 1, 0 / FP = 0; nothing predicted -> 0 / FN = 0.
    [{}, _line(10), _line(10), 1.0],
    [{}, _line(10), _line(10, (3, 4)), 0.0],
    [{}, NDSC_TRUE, _line(10), 0.0],
]


@pytest.mark.parametrize("kwargs, y_true, y_pred, expected", NDSC_TABLE)
def test_ndsc_hand_worked_cases(kwargs, y_true, y_pred, expected):
    assert normalised_dsc(y_true, y_pred, **kwargs) == pytest.approx(expected, abs=1e-15)


# 30 voxels in 1D. True lesions A = 0-3 (4 voxels), B = 10-19 (10), C = 25 (1).
# Predicted P1 = 2-5 (4, shares 2-3 with A), P2 = 12-13 and P3 = 16-17 (2 each,
# inside B: B is split), P4 = 28 (1, on nothing).
LESIONS_TRUE = _line(30, (0, 4), (10, 20), (25, 26))
LESIONS_PRED = _line(30, (2, 6), (12, 14), (16, 18), (28, 29))

DETECTION_TABLE = [
    # [kwargs, expected (tp, fn, tp_pred, fp), precision, recall, f1]
    # any voxel: A, B hit, C missed; P1-P3 touch truth, P4 not.
    # P = 3/4, R = 2/3, F1 = 2 (3/4)(2/3) / (3/4 + 2/3) = 1 / (17/12) = 12/17.
    [{"overlap": "any"}, (2, 1, 3, 1), 3 / 4, 2 / 3, 12 / 17],
    # fraction 0.5: A covered 2/4 = 0.5 (hit), B (2 + 2)/10 = 0.4 (missed), C 0;
    # P1 2/4 on truth (right), P2, P3 2/2, P4 0/1. P = 3/4, R = 1/3,
    # F1 = 2 (3/4)(1/3) / (3/4 + 1/3) = (1/2) / (13/12) = 6/13.
    [{"overlap": "fraction", "min_overlap": 0.5}, (1, 2, 3, 1), 3 / 4, 1 / 3, 6 / 13],
    # fraction 0.6: A's 0.5 and P1's 0.5 fall short; P2, P3 remain. P = 2/4, R = 0, F1 = 0.
    [{"overlap": "fraction", "min_overlap": 0.6}, (0, 3, 2, 2), 1 / 2, 0.0, 0.0],
    # Shifts' IoU 0.25: IoU(A, P1) = 2 / (4 + 4 - 2) = 1/3 (match); IoU(B, P2) =
    # IoU(B, P3) = 2 / (10 + 2 - 2) = 0.2 (no match). TP_pred 1 (P1), FP 3 (P2-P4),
    # FN 2 (B, C): F1 = 1 / (1 + (3 + 2) / 2) = 2/7; P = 1/4, R = 1/3.
    [{"overlap": "iou"}, (1, 2, 1, 3), 1 / 4, 1 / 3, 2 / 7],
    # IoU 0.2: B matches P2 and P3. TP_pred 3, FP 1 (P4), FN 1 (C):
    # F1 = 3 / (3 + (1 + 1) / 2) = 3/4, while the harmonic mean of P = 3/4 and
    # R = 2/3 would be 12/17: the two formulas part when a lesion is split.
    [{"overlap": "iou", "min_overlap": 0.2}, (2, 1, 3, 1), 3 / 4, 2 / 3, 3 / 4],
]


@pytest.mark.parametrize("kwargs, counts, precision, recall, f1", DETECTION_TABLE)
def test_lesion_detection_hand_worked_rules(kwargs, counts, precision, recall, f1):
    result = lesion_detection(LESIONS_TRUE, LESIONS_PRED, **kwargs)
    found = (result["lesion_tp"], result["lesion_fn"], result["lesion_tp_pred"],
             result["lesion_fp"])
    assert found == counts
    assert (result["n_true_lesions"], result["n_pred_lesions"]) == (3, 4)
    assert result["lesion_precision"] == pytest.approx(precision, abs=1e-15)
    assert result["lesion_recall"] == pytest.approx(recall, abs=1e-15)
    assert result["lesion_f1"] == pytest.approx(f1, abs=1e-15)
    assert result["lesion_overlap"] == kwargs["overlap"]
    assert result["lesion_min_overlap"] == kwargs.get(
        "min_overlap", 0.25 if kwargs["overlap"] == "iou" else None)


@pytest.mark.parametrize(
    "size_bins, expected",
    [
        # Sizes: A 4, B 10, C 1 (true); P1 4, P2 2, P3 2, P4 1 (predicted).
        # Default bins: A, C and every prediction < 10; B (10) in 10-99.
        ((10, 100), {"<10": {"tp": 1, "fn": 1, "tp_pred": 3, "fp": 1},
                     "10-99": {"tp": 1, "fn": 0, "tp_pred": 0, "fp": 0},
                     ">=100": {"tp": 0, "fn": 0, "tp_pred": 0, "fp": 0}}),
        # Bins (2, 5): C and P4 < 2; A, P1, P2, P3 in 2-4; B >= 5.
        ((2, 5), {"<2": {"tp": 0, "fn": 1, "tp_pred": 0, "fp": 1},
                  "2-4": {"tp": 1, "fn": 0, "tp_pred": 3, "fp": 0},
                  ">=5": {"tp": 1, "fn": 0, "tp_pred": 0, "fp": 0}}),
        ((), {"all": {"tp": 2, "fn": 1, "tp_pred": 3, "fp": 1}}),
    ],
)
def test_lesion_counts_by_size_bin(size_bins, expected):
    result = lesion_detection(LESIONS_TRUE, LESIONS_PRED, size_bins=size_bins)
    assert result["lesion_by_size"] == expected


@pytest.mark.parametrize("overlap, min_overlap", [("any", None), ("fraction", 0.5),
                                                  ("iou", 0.25)])
@pytest.mark.parametrize(
    "y_true, y_pred, precision, recall, f1",
    [
        (_line(8), _line(8), 1.0, 1.0, 1.0),  # nothing to find, nothing found
        (_line(8), _line(8, (2, 4)), 0.0, 1.0, 0.0),  # only a false lesion
        (_line(8, (2, 4)), _line(8), 1.0, 0.0, 0.0),  # only a missed lesion
    ],
)
def test_lesion_detection_empty_cases(overlap, min_overlap, y_true, y_pred, precision, recall, f1):
    result = lesion_detection(y_true, y_pred, overlap=overlap, min_overlap=min_overlap)
    assert (result["lesion_precision"], result["lesion_recall"], result["lesion_f1"]) == (
        precision, recall, f1)


def _brute_force_detection(y_true, y_pred, overlap, min_overlap, structure):
    """Lesion by lesion with whole-volume masks, from the rules' wording."""
    true_labels, n_true = ndimage.label(y_true, structure)
    pred_labels, n_pred = ndimage.label(y_pred, structure)
    trues = [true_labels == i for i in range(1, n_true + 1)]
    preds = [pred_labels == j for j in range(1, n_pred + 1)]

    def matches(lesion, others, other_mask):
        if overlap == "any":
            return (lesion & other_mask).any()
        if overlap == "fraction":
            return (lesion & other_mask).sum() / lesion.sum() >= min_overlap
        ious = [(lesion & o).sum() / (lesion | o).sum() for o in others if (lesion & o).any()]
        return max(ious, default=0.0) >= min_overlap

    tp = sum(bool(matches(t, preds, y_pred)) for t in trues)
    tp_pred = sum(bool(matches(p, trues, y_true)) for p in preds)
    return tp, n_true - tp, tp_pred, n_pred - tp_pred


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("overlap, min_overlap", [("any", None), ("fraction", 0.3),
                                                  ("iou", 0.25), ("iou", 0.1)])
@pytest.mark.parametrize("connectivity", [1, None])
def test_lesion_detection_equals_lesion_by_lesion_loop(seed, overlap, min_overlap, connectivity):
    rng = np.random.default_rng(seed)
    y_true = ndimage.binary_dilation(rng.random((14, 13, 12)) < 0.01, iterations=1)
    # A prediction that partly overlaps, splits and merges lesions, plus noise.
    y_pred = (ndimage.binary_dilation(y_true & (rng.random(y_true.shape) < 0.5))
              | (rng.random(y_true.shape) < 0.01))
    structure = ndimage.generate_binary_structure(3, connectivity or 3)
    result = lesion_detection(y_true, y_pred, overlap, min_overlap, connectivity)
    found = (result["lesion_tp"], result["lesion_fn"], result["lesion_tp_pred"],
             result["lesion_fp"])
    assert found == _brute_force_detection(y_true, y_pred, overlap, min_overlap, structure)
    any_voxel = lesion_metrics(y_true, y_pred.astype(np.float32), connectivity=connectivity)
    if overlap == "any":
        assert result["lesion_tp"] == any_voxel["n_detected_lesions"]
        assert result["lesion_fp"] == any_voxel["n_false_lesions"]


def test_lesion_detection_pools_a_list_by_summing_counts():
    # Volume 1 is the hand-worked case (any voxel: TP 2, FN 1, TP_pred 3, FP 1); volume 2
    # adds one missed lesion: TP 2, FN 2, TP_pred 3, FP 1, P = 3/4, R = 2/4, F1 = 3/5.
    result = lesion_detection([LESIONS_TRUE, _line(5, (1, 3))], [LESIONS_PRED, _line(5)])
    assert (result["lesion_tp"], result["lesion_fn"], result["lesion_tp_pred"],
            result["lesion_fp"]) == (2, 2, 3, 1)
    assert result["lesion_f1"] == pytest.approx(3 / 5)
    assert result["lesion_by_size"]["<10"] == {"tp": 1, "fn": 2, "tp_pred": 3, "fp": 1}


def test_surface_distances_hand_worked():
    # 1D, 2 mm voxels. Truth 0-2: its erosion keeps voxel 1 (the array's edge is
    # outside), surface {0, 2}. Prediction 5-6: surface {5, 6}.
    # Prediction to truth: 5 -> 2 is 6 mm, 6 -> 2 is 8 mm; truth to prediction:
    # 0 -> 5 is 10 mm, 2 -> 5 is 6 mm. D = [6, 6, 8, 10]: mean 7.5; 95th percentile
    # at rank 0.95 * 3 = 2.85: 8 + 0.85 * (10 - 8) = 9.7.
    result = surface_distances(_line(10, (0, 3)), _line(10, (5, 7)), (2.0,))
    assert result == {"hd95_mm": pytest.approx(9.7), "assd_mm": pytest.approx(7.5)}
    # The same masks twice and an empty pair: the list mean skips the empty one.
    pooled = surface_distances([_line(10, (0, 3)), _line(10), _line(10, (0, 3))],
                               [_line(10, (5, 7)), _line(10), _line(10, (5, 7))], [(2.0,)] * 3)
    assert pooled == {"hd95_mm": pytest.approx(9.7), "assd_mm": pytest.approx(7.5)}


@pytest.mark.parametrize(
    "y_true, y_pred",
    [(_line(6), _line(6)), (_line(6), _line(6, (1, 3))), (_line(6, (1, 3)), _line(6))],
)
def test_surface_distances_are_nan_when_either_mask_is_empty(y_true, y_pred):
    result = surface_distances(y_true, y_pred, (1.0,))
    assert math.isnan(result["hd95_mm"]) and math.isnan(result["assd_mm"])
    result = surface_distances([y_true], [y_pred], (1.0,))
    assert math.isnan(result["hd95_mm"]) and math.isnan(result["assd_mm"])


def _blobs(rng, shape, seeds_fraction, iterations):
    return ndimage.binary_dilation(rng.random(shape) < seeds_fraction, iterations=iterations)


@pytest.mark.parametrize(
    "seed, shape, spacing",
    [
        (0, (20, 22, 18), (1.0, 1.0, 1.0)),
        (1, (20, 22, 18), (0.5, 0.9, 3.0)),  # anisotropic, thick slices
        (2, (16, 30, 12), (1.2, 0.45, 2.2)),
        (3, (24, 24), (0.7, 1.9)),  # 2D
        (4, (10, 11, 9), (1.0, 1.0, 5.0)),  # blobs reach the array's edge
    ],
)
def test_surface_distances_equal_medpy(seed, shape, spacing):
    rng = np.random.default_rng(seed)
    y_true = _blobs(rng, shape, 0.01, 2)
    y_pred = (_blobs(rng, shape, 0.005, 1) | (y_true & (rng.random(shape) < 0.7)))
    assert y_true.any() and y_pred.any()
    result = surface_distances(y_true, y_pred, spacing)
    # medpy's (result, reference) order: prediction first; both are symmetric.
    assert result["hd95_mm"] == pytest.approx(
        medpy_binary.hd95(y_pred, y_true, voxelspacing=spacing), abs=1e-6)
    assert result["assd_mm"] == pytest.approx(
        medpy_binary.assd(y_pred, y_true, voxelspacing=spacing), abs=1e-6)


def test_volume_agreement_hand_worked():
    # Voxels of 2 x 2 x 2.5 = 10 mm^3 = 0.01 mL. Truth 3 x 10 x 10 = 300 voxels = 3 mL,
    # prediction 3 x 8 x 10 = 240 voxels = 2.4 mL: difference -0.6 mL, |.| 0.6 mL,
    # relative 0.6 / 3 = 0.2; one volume, so no correlation.
    y_true, y_pred = np.zeros((4, 10, 10), bool), np.zeros((4, 10, 10), bool)
    y_true[:3], y_pred[:3, :8] = True, True
    result = volume_agreement(y_true, y_pred, (2.0, 2.0, 2.5))
    assert result["volume_true_ml"] == pytest.approx(3.0)
    assert result["volume_pred_ml"] == pytest.approx(2.4)
    assert result["volume_difference_ml"] == pytest.approx(-0.6)
    assert result["abs_volume_difference_ml"] == pytest.approx(0.6)
    assert result["relative_volume_difference"] == pytest.approx(0.2)
    assert math.isnan(result["volume_correlation"])


def _volumes_of(counts_true, counts_pred):
    """1D masks whose volumes in mL are the counts, with 1000 mm voxels (1 mL each)."""
    size = max(counts_true + counts_pred) + 1
    return ([_line(size, (0, n)) for n in counts_true], [_line(size, (0, n)) for n in counts_pred],
            (1000.0,))


@pytest.mark.parametrize(
    "counts_true, counts_pred, expected",
    [
        # dx = [-1, 0, 1], dy = [-1, 1, 0]: sum dx dy = 1, sqrt(2 * 2) = 2 -> 0.5.
        ([1, 2, 3], [1, 3, 2], 0.5),
        ([1, 2, 3], [2, 4, 6], 1.0),
        ([1, 2, 3], [3, 2, 1], -1.0),
        ([2, 2, 2], [1, 2, 3], math.nan),  # the truth has no variance
        ([1, 2, 3], [4, 4, 4], math.nan),  # the prediction has none
        ([3], [1], math.nan),  # one subject
    ],
)
def test_volume_correlation_across_subjects(counts_true, counts_pred, expected):
    result = volume_agreement(*_volumes_of(counts_true, counts_pred))
    if math.isnan(expected):
        assert math.isnan(result["volume_correlation"])
    else:
        assert result["volume_correlation"] == pytest.approx(expected, abs=1e-12)
        assert result["volume_correlation"] == pytest.approx(
            np.corrcoef(counts_true, counts_pred)[0, 1], abs=1e-12)
    # Pooled: totals over the subjects.
    assert result["volume_true_ml"] == pytest.approx(sum(counts_true))
    assert result["abs_volume_difference_ml"] == pytest.approx(
        abs(sum(counts_pred) - sum(counts_true)))


@pytest.mark.parametrize(
    "y_true, y_pred, relative",
    [(_line(5), _line(5), 0.0), (_line(5), _line(5, (0, 2)), math.inf),
     (_line(5, (0, 2)), _line(5), 1.0)],
)
def test_relative_volume_difference_empty_cases(y_true, y_pred, relative):
    assert volume_agreement(y_true, y_pred, (1.0,))["relative_volume_difference"] == relative


def test_challenge_metrics_merges_the_metrics_and_serialises():
    rng = np.random.default_rng(11)
    shape, spacing = (16, 14, 12), (0.9, 1.1, 3.0)
    y_true = _blobs(rng, shape, 0.01, 1)
    y_prob = np.clip(0.6 * y_true + 0.5 * rng.random(shape), 0, 1).astype(np.float32)
    y_pred = y_prob >= 0.5
    result = challenge_metrics(y_true, y_prob, spacing, overlap="iou")
    expected = {"ndsc": normalised_dsc(y_true, y_pred),
                **lesion_detection(y_true, y_pred, overlap="iou"),
                **surface_distances(y_true, y_pred, spacing),
                **volume_agreement(y_true, y_pred, spacing)}
    assert set(result) == set(expected)
    for key, value in expected.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(result[key]), key
        else:
            assert result[key] == value, key
    text = json.dumps(result)
    assert json.loads(text)["lesion_by_size"] == result["lesion_by_size"]
    assert all(isinstance(v, (int, float, str, dict, type(None))) for v in result.values())
    # A binary mask is its own prediction at any threshold above 0.
    assert challenge_metrics(y_true, y_pred, spacing, overlap="iou")["ndsc"] == result["ndsc"]


def test_challenge_metrics_of_a_list_pools_and_keeps_each_volume():
    rng = np.random.default_rng(12)
    shapes, spacings = [(12, 12, 10), (10, 14, 8)], [(1.0, 1.0, 1.0), (0.5, 0.5, 2.0)]
    trues = [_blobs(rng, s, 0.02, 1) for s in shapes]
    preds = [t ^ (rng.random(t.shape) < 0.02) for t in trues]
    probs = [p.astype(np.float64) for p in preds]
    result = challenge_metrics(trues, probs, spacings, overlap="fraction", min_overlap=0.5)
    assert result["ndsc"] == normalised_dsc(trues, preds)
    assert result["lesion_f1"] == lesion_detection(trues, preds, "fraction", 0.5)["lesion_f1"]
    assert result["hd95_mm"] == surface_distances(trues, preds, spacings)["hd95_mm"]
    assert result["volume_true_ml"] == volume_agreement(trues, preds, spacings)["volume_true_ml"]
    volumes = [(v["volume_true_ml"], v["volume_pred_ml"]) for v in result["per_volume"]]
    assert result["volume_correlation"] == pytest.approx(np.corrcoef(np.array(volumes).T)[0, 1])
    assert len(result["per_volume"]) == 2
    for single, t, s, prob in zip(result["per_volume"], trues, spacings, probs):
        alone = challenge_metrics(t, prob, s, overlap="fraction", min_overlap=0.5)
        del alone["volume_correlation"]
        assert single == alone
    # Pooled surface distances are the mean of the volumes' values.
    assert result["assd_mm"] == pytest.approx(np.mean([v["assd_mm"] for v in result["per_volume"]]))
    json.dumps(result)


def test_challenge_metrics_region_removes_voxels_everywhere():
    # Truth 0-1, prediction 1-2 and a false voxel at 8, outside the region 0-4:
    # inside, TP 1, FP 1, FN 1 with N = 5, k = 0.999 * 2 / (0.001 * 3) = 666,
    # nDSC = 2 / 669; lesions: one true (hit), one predicted (right), no FP.
    y_true, y_pred = _line(10, (0, 2)), _line(10, (1, 3), (8, 9))
    result = challenge_metrics(y_true, y_pred, (1.0,), mask=_line(10, (0, 5)))
    assert result["ndsc"] == pytest.approx(2 / 669)
    assert (result["n_pred_lesions"], result["lesion_fp"]) == (1, 0)
    assert result["volume_pred_ml"] == pytest.approx(0.002)
    assert result["hd95_mm"] == surface_distances(y_true, _line(10, (1, 3)), (1.0,))["hd95_mm"]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: normalised_dsc(np.zeros(3), np.array([0, 0.5, 1])), "y_pred must be binary"),
        (lambda: normalised_dsc(np.zeros(3), np.zeros(4)), "same shape"),
        (lambda: normalised_dsc([np.zeros(3)], np.zeros(3)), "both be arrays or both be lists"),
        (lambda: normalised_dsc(np.zeros(3), np.zeros(3), reference_load=0), "reference_load"),
        (lambda: normalised_dsc(np.zeros(3), np.zeros(3), reference_load=1.0), "reference_load"),
        (lambda: lesion_detection(np.zeros(3), np.zeros(3), overlap="dice"), "overlap must be"),
        (lambda: lesion_detection(np.zeros(3), np.zeros(3), min_overlap=0.5), "takes no"),
        (lambda: lesion_detection(np.zeros(3), np.zeros(3), overlap="fraction"), "needs min"),
        (lambda: lesion_detection(np.zeros(3), np.zeros(3), "iou", 0.0), "min_overlap"),
        (lambda: lesion_detection(np.zeros(3), np.zeros(3), "iou", 1.5), "min_overlap"),
        (lambda: lesion_detection(np.zeros(3), np.zeros(3), size_bins=(100, 10)), "size_bins"),
        (lambda: lesion_detection(np.zeros(3), np.zeros(3), size_bins=(0, 10)), "size_bins"),
        (lambda: lesion_detection(np.zeros(3), np.zeros(3), size_bins=(2.5,)), "size_bins"),
        (lambda: lesion_detection(np.zeros((2, 2)), np.zeros((2, 2)), connectivity=3),
         "connectivity"),
        (lambda: surface_distances(np.zeros((2, 2)), np.zeros((2, 2)), (1.0,)), "per axis"),
        (lambda: surface_distances(np.zeros((2, 2)), np.zeros((2, 2)), 1.0), "per axis"),
        (lambda: surface_distances(np.zeros((2, 2)), np.zeros((2, 2)), (1.0, 0.0)), "positive"),
        (lambda: surface_distances(np.zeros((2, 2)), np.zeros((2, 2)), (1.0, np.nan)),
         "positive and finite"),
        (lambda: surface_distances(np.zeros((2, 2)), np.zeros((2, 2)), ("a", "b")), "numbers"),
        (lambda: volume_agreement([np.zeros(2)] * 2, [np.zeros(2)] * 2, [(1.0,)] * 3),
         "3 voxel sizes for 2 volumes"),
        (lambda: volume_agreement([np.zeros(2), np.zeros(2)], [np.zeros(2), np.zeros(2)],
                                  [(1.0,), (-1.0,)]), "volume 1: spacing"),
        (lambda: challenge_metrics(np.zeros(3), np.array([0, 2.0, 1]), (1.0,)), r"\[0, 1\]"),
        (lambda: challenge_metrics(np.zeros(3), np.zeros(3), (1.0,), threshold=2), "threshold"),
        (lambda: challenge_metrics(np.zeros(3), np.zeros(3), (1.0,), mask=np.ones(2)), "mask"),
    ],
)
def test_challenge_metrics_bad_input_raises_naming_the_problem(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("threshold", [np.array([0.5, 0.6]), "0.5", None, True, 1 + 0j])
def test_lesion_metrics_refuses_a_threshold_that_is_not_one_number(threshold):
    from tversky_keras.evaluation import lesion_metrics

    truth = np.zeros((4, 4, 4), np.uint8)
    truth[1, 1, 1] = 1
    with pytest.raises(ValueError, match="threshold must be one number in"):
        lesion_metrics(truth, truth.astype(np.float32), threshold=threshold)


def test_lesion_metrics_refuses_a_mask_that_is_not_binary():
    from tversky_keras.evaluation import lesion_metrics

    truth = np.zeros((4, 4, 4), np.uint8)
    truth[1, 1, 1] = 1
    with pytest.raises(ValueError, match=r"volume 0: the mask must hold only 0 and 1"):
        lesion_metrics(truth, truth.astype(np.float32), mask=np.full((4, 4, 4), 0.5))
    kept = lesion_metrics(truth, truth.astype(np.float32), mask=np.ones((4, 4, 4), np.float32))
    assert kept["dsc"] == 1.0
