"""tversky_keras.retention: retention curves worked by hand, and their ends against evaluation."""

import numpy as np
import pytest

from tversky_keras.evaluation import lesion_detection, normalised_dsc
from tversky_keras.retention import (area_under, lesion_retention_curve, retention_fractions,
                                     voxel_retention_curve)

# Ten voxels: 0 is a true positive (uncertainty 0.1), 1 a false negative (0.9),
# 2 a false positive (0.8), 3-9 true negatives (0). With r = 0.2 and 2 true
# voxels of 10, k = (1 - r) n / (r (N - n)) = 0.8 * 2 / (0.2 * 8) = 1: nDSC = DSC.
TRUTH = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0], bool)
PRED = np.array([1, 0, 1, 0, 0, 0, 0, 0, 0, 0], bool)
UNCERTAINTY = np.array([0.1, 0.9, 0.8, 0, 0, 0, 0, 0, 0, 0])
FRACTIONS = [0.0, 0.5, 0.8, 0.9, 1.0]  # keep 0, 5, 8, 9, 10 voxels


def test_voxel_curve_worked_by_hand():
    curve = voxel_retention_curve(TRUTH, PRED, UNCERTAINTY, fractions=FRACTIONS,
                                  reference_load=0.2)
    # Order: the 7 true negatives, then voxel 0, 2, 1. Kept 0 or 5 or 8: every error is
    # corrected (TP 2): 1. Kept 9: voxel 2's FP stays, voxel 1 is corrected: TP 2, FP 1:
    # 4 / 5. Kept 10: TP 1, FP 1, FN 1: 2 / 4.
    assert curve["ndsc"] == pytest.approx([1, 1, 1, 0.8, 0.5])
    # 0.5 * 1 + 0.3 * 1 + 0.1 * (1 + 0.8) / 2 + 0.1 * (0.8 + 0.5) / 2 = 0.955
    assert curve["auc"] == pytest.approx(0.955)
    # Ideal: the two errors last, in voxel order (1 then 2): kept 9 keeps the FN and
    # corrects the FP: TP 1, FN 1: 2 / 3.
    assert curve["ideal"] == pytest.approx([1, 1, 1, 2 / 3, 0.5])
    # Random, expected counts at s = kept / 10: TP 1 + (1 - s), FP s, FN s:
    # s = 0.5: 3 / 4; 0.8: 2.4 / 4; 0.9: 2.2 / 4; 1: 2 / 4.
    assert curve["random"] == pytest.approx([1, 0.75, 0.6, 0.55, 0.5])
    assert curve["random_auc"] == pytest.approx(
        0.5 * 1.75 / 2 + 0.3 * 1.35 / 2 + 0.1 * 1.15 / 2 + 0.1 * 1.05 / 2)
    assert curve["voxels"] == 10


def test_voxel_curve_ends_at_the_segmentations_ndsc_inside_the_mask():
    rng = np.random.default_rng(3)
    truth = rng.uniform(size=(12, 10, 8)) < 0.05
    pred = truth ^ (rng.uniform(size=truth.shape) < 0.03)
    brain = np.zeros(truth.shape, bool)
    brain[1:11, 1:9, 1:7] = True
    curve = voxel_retention_curve(truth, pred, rng.uniform(size=truth.shape), mask=brain)
    assert curve["ndsc"][0] == curve["ideal"][0] == curve["random"][0] == 1.0
    expected = normalised_dsc(truth, pred, mask=brain)
    assert curve["ndsc"][-1] == curve["ideal"][-1] == pytest.approx(expected)
    assert curve["random"][-1] == pytest.approx(expected)
    assert curve["voxels"] == brain.sum()
    assert len(curve["fractions"]) == 200
    # Errors last is at least as good as any order at every point where only one kind
    # of error is left, and over the curve as a whole here.
    assert curve["ideal_auc"] >= curve["auc"]


def test_an_uncertainty_that_is_the_error_itself_is_ideal():
    rng = np.random.default_rng(4)
    truth = rng.uniform(size=(9, 9, 9)) < 0.1
    pred = truth & (rng.uniform(size=truth.shape) < 0.7)  # false negatives only
    curve = voxel_retention_curve(truth, pred, (truth != pred).astype(float))
    assert curve["ndsc"] == curve["ideal"]


# Lesions in 1D: true {0, 1} and {4}; predicted {0} (correct), {6} and {8, 9} (false).
L_TRUTH = np.array([1, 1, 0, 0, 1, 0, 0, 0, 0, 0], bool)
L_PRED = np.array([1, 0, 0, 0, 0, 0, 1, 0, 1, 1], bool)
# Lesion means: {0} 0.2, {6} 0.05, {8, 9} (0.1 + 0.5) / 2 = 0.3: order {6}, {0}, {8, 9}.
L_UNCERTAINTY = np.array([0.2, 0, 0, 0, 0, 0, 0.05, 0, 0.1, 0.5])


def test_lesion_curve_worked_by_hand():
    curve = lesion_retention_curve(L_TRUTH, L_PRED, L_UNCERTAINTY)
    assert curve["fractions"] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    # Recall 1 / 2 throughout; precision 1 / (1 + false lesions kept).
    # False kept 0, 1, 1, 2: F1 2/3, 1/2, 1/2, 2 (1/3)(1/2) / (5/6) = 0.4.
    assert curve["f1"] == pytest.approx([2 / 3, 0.5, 0.5, 0.4])
    assert curve["auc"] == pytest.approx((1 / 3) * ((2 / 3 + 0.5) / 2 + 0.5 + 0.45))
    # Ideal: the correct lesion first: false kept 0, 0, 1, 2.
    assert curve["ideal"] == pytest.approx([2 / 3, 2 / 3, 0.5, 0.4])
    # Random: (k / 3) * 2 false kept: precision 0.6 then 3 / 7; F1 6 / 11 then 6 / 13.
    assert curve["random"] == pytest.approx([2 / 3, 6 / 11, 6 / 13, 0.4])
    assert [lesion["correct"] for lesion in curve["lesions"]] == [False, True, False]
    assert [lesion["uncertainty"] for lesion in curve["lesions"]] == pytest.approx(
        [0.05, 0.2, 0.3])
    assert (curve["n_true_lesions"], curve["lesion_tp"]) == (2, 1)


@pytest.mark.parametrize("overlap, min_overlap", [("any", None), ("iou", None),
                                                  ("fraction", 0.5)])
def test_lesion_curve_ends_at_lesion_detections_f1(overlap, min_overlap):
    rng = np.random.default_rng(5)
    truth = rng.uniform(size=(14, 14, 14)) < 0.04
    pred = rng.uniform(size=truth.shape) < 0.04
    pred[truth] = rng.uniform(size=truth.sum()) < 0.6
    curve = lesion_retention_curve(truth, pred, rng.uniform(size=truth.shape), overlap,
                                   min_overlap)
    expected = lesion_detection(truth, pred, overlap, min_overlap)
    assert curve["f1"][-1] == curve["ideal"][-1] == curve["random"][-1] == pytest.approx(
        expected["lesion_f1"])
    assert len(curve["lesions"]) == expected["n_pred_lesions"]
    assert sum(not lesion["correct"] for lesion in curve["lesions"]) == expected["lesion_fp"]
    # With every false lesion removed, precision is 1.
    recall = expected["lesion_recall"]
    if overlap != "iou":
        assert curve["f1"][0] == pytest.approx(2 * recall / (1 + recall))


def test_no_predicted_lesion_gives_a_flat_curve():
    curve = lesion_retention_curve(L_TRUTH, np.zeros(10, bool), L_UNCERTAINTY)
    assert curve["fractions"] == [0.0, 1.0]
    assert curve["f1"] == [0.0, 0.0] and curve["lesions"] == []


def test_fractions_and_area():
    fractions = retention_fractions(200)
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and np.all(np.diff(fractions) > 0)
    assert fractions[1] == pytest.approx(np.log(2) / np.log(200))
    assert area_under([0, 0.5, 1], [1, 1, 0]) == pytest.approx(0.75)


@pytest.mark.parametrize("call, message", [
    (lambda: voxel_retention_curve(TRUTH, PRED, UNCERTAINTY[:5]), "shape"),
    (lambda: voxel_retention_curve(TRUTH, PRED, UNCERTAINTY * np.nan), "finite"),
    (lambda: voxel_retention_curve(TRUTH, PRED, UNCERTAINTY, fractions=[0.1, 1]),
     "from 0 to 1"),
    (lambda: voxel_retention_curve(TRUTH, PRED, UNCERTAINTY, fractions=[0, 0.6, 0.5, 1]),
     "from 0 to 1"),
    (lambda: voxel_retention_curve(TRUTH, PRED * 2.0, UNCERTAINTY), "binary"),
    (lambda: lesion_retention_curve(L_TRUTH, L_PRED, L_UNCERTAINTY, "any", 0.5),
     "takes no min_overlap"),
    (lambda: retention_fractions(1), "at least 2"),
])
def test_bad_input_is_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()
