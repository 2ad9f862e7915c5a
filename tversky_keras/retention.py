"""Retention curves: does a segmentation's uncertainty point at its errors?

As the Shifts MS lesion track measures an uncertainty (Malinin et al. 2022;
Molchanova et al. 2024 for lesions): order the voxels (or the predicted
lesions) from the most certain to the least, keep the prediction on the most
certain fraction f, and let a perfect reader correct the rest (replace it by
the truth). Score what results at each f. A useful uncertainty puts the
errors last, so the score stays high as f grows; the area under the curve
sums that up. Two references bracket it: the **ideal** ranking (every error
less certain than every correct voxel or lesion) and a **random** ranking.

- :func:`voxel_retention_curve`: nDSC (``normalised_dsc``) against the
  fraction of voxels retained.
- :func:`lesion_retention_curve`: lesion F1 (``lesion_detection``) against
  the fraction of predicted lesions retained; a lesion's uncertainty is the
  mean of the voxel uncertainty over it.

Both return plain floats and lists (JSON-serialisable).
"""

import numpy as np
from scipy import ndimage

from tversky_keras.evaluation import (REFERENCE_LESION_LOAD, _check_fraction, _lesion_table,
                                      _ndsc, _neighbourhood, _overlap_rule,
                                      _validated_mask_pair, _within_regions)

__all__ = ["voxel_retention_curve", "lesion_retention_curve", "retention_fractions",
           "area_under"]

#: Shifts' retained fractions: log(i) / log(200) for i = 1..200, from 0 to 1, denser
#: near 1, where the few errors of a good segmentation sit.
N_FRACTIONS = 200


def retention_fractions(n=N_FRACTIONS):
    """``log(i) / log(n)`` for ``i = 1..n``: 0, ..., 1 (Shifts' ``ndsc_aac_metric`` grid)."""
    if int(n) != n or n < 2:
        raise ValueError(f"n must be an integer of at least 2, got {n!r}")
    return np.log(np.arange(1, int(n) + 1)) / np.log(int(n))


def area_under(fractions, scores):
    """Trapezoidal area under ``scores`` over ``fractions`` (increasing, from 0 to 1)."""
    x, y = np.asarray(fractions, np.float64), np.asarray(scores, np.float64)
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def voxel_retention_curve(y_true, y_pred, uncertainty, mask=None, fractions=None,
                          reference_load=REFERENCE_LESION_LOAD):
    """nDSC retention curve of one volume: keep the most certain voxels, correct the rest.

    The voxels (inside ``mask``, if given) are sorted by ``uncertainty``,
    ascending (ties keep the voxels' order). At a fraction f the first
    ``m = int(f N)`` keep their prediction and the other ``N - m`` take the
    truth's value, so they add true positives and no error. With TP, FP, FN
    the counts among the kept voxels and T the true voxels among the
    corrected ones, the curve is ``nDSC(TP + T, FP, FN)`` over the same N
    voxels (``normalised_dsc``'s formula, reference load r). At f = 0 every
    voxel is corrected (nDSC 1); at f = 1 none is (the segmentation's nDSC).

    - **ideal**: the same with every misclassified voxel less certain than
      every correct one.
    - **random**: the expected counts of a random order, ``TP + (1 - f') FN``,
      ``f' FP``, ``f' FN`` with ``f' = m / N``, put into nDSC (the nDSC of
      the mean counts, not the mean of nDSC).

    The area under each curve (trapezoids over the fractions) is reported;
    Shifts reports ``1 - auc`` ("nDSC R-AAC", lower is better).

    Args:
        y_true: binary lesion mask.
        y_pred: binary predicted mask, same shape.
        uncertainty: real map of the same shape, larger = less certain
            (e.g. ``uncertainty_maps``' entropy).
        mask: optional region (the brain): only its voxels are ranked and counted.
        fractions: retained fractions, increasing, from 0 to 1 (default:
            :func:`retention_fractions`).
        reference_load: nDSC's r.

    Returns:
        dict: ``fractions``, ``ndsc``, ``ideal``, ``random`` (lists), their
        areas ``auc``, ``ideal_auc``, ``random_auc``, and ``voxels`` (N).

    Reference:
        Malinin et al. Shifts 2.0: extending the dataset of real
        distributional shifts. arXiv:2206.15407 (nDSC R-AAC).
    """
    _check_fraction("reference_load", reference_load, closed=False)
    truth, pred = _validated_mask_pair(y_true, y_pred, "")
    uncertainty = _uncertainty_map(uncertainty, truth.shape)
    fractions = _checked_fractions(retention_fractions() if fractions is None else fractions)
    (truth, pred, n_voxels), = _within_regions([(truth, pred)], mask)
    inside = np.ones(truth.shape, bool) if mask is None else np.asarray(mask, bool)
    truth, pred, uncertainty = truth[inside], pred[inside], uncertainty[inside]
    kept = (fractions * n_voxels).astype(np.int64)
    curve = _voxel_curve(truth, pred, np.argsort(uncertainty, kind="stable"), kept,
                         reference_load)
    ideal = _voxel_curve(truth, pred, np.argsort(truth != pred, kind="stable"), kept,
                         reference_load)
    tp, fp, fn = (np.count_nonzero(truth & pred), np.count_nonzero(~truth & pred),
                  np.count_nonzero(truth & ~pred))
    share = kept / max(n_voxels, 1)
    random = [_ndsc((tp + (1 - s) * fn, s * fp, s * fn, n_voxels), reference_load)
              for s in share]
    return _curves(fractions, {"ndsc": curve, "ideal": ideal, "random": random},
                   voxels=int(n_voxels))


def lesion_retention_curve(y_true, y_pred, uncertainty, overlap="any", min_overlap=None,
                           connectivity=None):
    """Lesion F1 retention curve of one volume: keep the most certain predicted lesions.

    The predicted lesions (connected components, as ``lesion_detection``
    finds them) are sorted by their mean ``uncertainty``, ascending (ties in
    label order). Retaining k of the n: the first k stay as predicted; a
    perfect reader corrects the other n - k, removing the false ones and
    keeping the correct ones. So precision rises as false lesions are
    removed; the true lesions' detection (recall) is not the predicted
    lesions' to change and stays as it is. F1 is then ``lesion_detection``'s
    for the same rule. The points are f = k / n for k = 0..n (a volume
    without predicted lesions has one F1, at f = 0 and 1).

    - **ideal**: every false lesion less certain than every correct one.
    - **random**: the expected number of false lesions kept, ``(k / n) FP``.

    Args:
        y_true: binary mask.
        y_pred: binary mask of the same shape.
        uncertainty: real voxel map of that shape, larger = less certain.
        overlap: as ``lesion_detection``.
        min_overlap: as ``lesion_detection``.
        connectivity: as ``lesion_detection``.

    Returns:
        dict: ``fractions``, ``f1``, ``ideal``, ``random`` (lists), their areas
        ``auc``, ``ideal_auc``, ``random_auc``; ``lesions``, one dict per
        predicted lesion (``voxels``, ``uncertainty``, ``correct``), most
        certain first; and ``n_true_lesions``, ``lesion_tp``.

    Reference:
        After the lesion-scale retention curves of Molchanova et al.,
        Structural-based uncertainty in deep learning across anatomical
        scales: analysis in white matter lesion segmentation (2024); the
        correction rule above is this function's own, stated in full.
    """
    rule = _overlap_rule(overlap, min_overlap)
    truth, pred = _validated_mask_pair(y_true, y_pred, "")
    uncertainty = _uncertainty_map(uncertainty, truth.shape)
    structure = _neighbourhood(truth.ndim, connectivity)
    true_sizes, detected, pred_sizes, correct = _lesion_table(truth, pred, structure, rule)
    labels, n_pred = ndimage.label(pred, structure)
    means = (np.asarray(ndimage.mean(uncertainty, labels, np.arange(1, n_pred + 1)), np.float64)
             if n_pred else np.zeros(0))
    order = np.argsort(means, kind="stable")
    n_true, tp = true_sizes.size, int(np.count_nonzero(detected))
    tp_pred = int(np.count_nonzero(correct))

    def f1(false_kept):
        return _lesion_f1(tp, n_true, tp_pred, false_kept, rule)

    kept = np.arange(n_pred + 1) if n_pred else np.array([0, 0])
    fractions = kept / n_pred if n_pred else np.array([0.0, 1.0])
    false = np.concatenate([[0], np.cumsum(~correct[order])])
    ideal_false = np.concatenate([[0], np.cumsum(np.sort(~correct, kind="stable"))])
    n_false = n_pred - tp_pred
    result = _curves(fractions, {"f1": [f1(false[k]) for k in kept],
                                 "ideal": [f1(ideal_false[k]) for k in kept],
                                 "random": [f1(s * n_false) for s in fractions]})
    result["lesions"] = [{"voxels": int(pred_sizes[i]), "uncertainty": float(means[i]),
                          "correct": bool(correct[i])} for i in order]
    result.update(n_true_lesions=n_true, lesion_tp=tp)
    return result


def _lesion_f1(tp, n_true, tp_pred, false_kept, rule):
    """``lesion_detection``'s F1 with ``false_kept`` false predicted lesions left."""
    n_pred = tp_pred + false_kept
    precision = tp_pred / n_pred if n_pred else 1.0
    recall = tp / n_true if n_true else 1.0
    if rule[0] == "iou":
        denominator = tp_pred + (false_kept + n_true - tp) / 2
        return float(tp_pred / denominator) if denominator else 1.0
    return float(2 * precision * recall / (precision + recall)) if precision + recall else 0.0


def _voxel_curve(truth, pred, order, kept, reference_load):
    """nDSC at each prefix length ``kept`` of the voxels in ``order``, the rest corrected."""
    truth, pred = truth[order], pred[order]
    n_voxels = truth.size

    def prefix(values):
        return np.concatenate([[0], np.cumsum(values, dtype=np.int64)])[kept]

    tp, fp, fn = prefix(truth & pred), prefix(~truth & pred), prefix(truth & ~pred)
    corrected_true = np.count_nonzero(truth) - prefix(truth)
    return [_ndsc((a + c, b, d, n_voxels), reference_load)
            for a, b, c, d in zip(tp, fp, corrected_true, fn)]


def _curves(fractions, curves, **extra):
    result = {"fractions": [float(f) for f in fractions]}
    for name, values in curves.items():
        result[name] = [float(v) for v in values]
        result["auc" if name in ("ndsc", "f1") else f"{name}_auc"] = area_under(fractions, values)
    return {**result, **extra}


def _uncertainty_map(uncertainty, shape):
    values = np.asarray(uncertainty)
    if values.shape != shape:
        raise ValueError(f"uncertainty must have the masks' shape {shape}, got {values.shape}")
    if values.dtype.kind not in "biuf" or not np.isfinite(values).all():
        raise ValueError("uncertainty must hold finite real numbers")
    return values.astype(np.float64)


def _checked_fractions(fractions):
    values = np.asarray(fractions, np.float64)
    if (values.ndim != 1 or values.size < 2 or not np.isfinite(values).all()
            or values[0] != 0.0 or values[-1] != 1.0 or np.any(np.diff(values) <= 0)):
        raise ValueError("fractions must increase strictly from 0 to 1")
    return values
