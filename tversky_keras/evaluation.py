"""Exact evaluation of lesion segmentations on whole volumes (numpy/scipy).

The paper's metrics (DSC, sensitivity, specificity, F2, APR) are computed from
voxel counts pooled over all voxels of all given volumes; lesion-wise detection
rates count 3D connected components per volume. Everything here is exact: no
histogram binning of probabilities, so APR equals scikit-learn's
``average_precision_score`` on the same voxels.

A list (or tuple) of arrays is a list of volumes, pooled: voxel metrics are
those of all voxels of all volumes together, lesion counts are summed over
volumes (a component never spans two volumes).
"""

import numpy as np
from scipy import ndimage


def lesion_metrics(y_true, y_prob, threshold=0.5, connectivity=None, return_curve=False,
                   mask=None):
    """Voxel-wise and lesion-wise metrics of a lesion probability map.

    A voxel is predicted lesion when ``y_prob >= threshold`` (the paper's test
    rule with 0.5). With TP, FP, TN, FN counted over all voxels:

        DSC = 2TP / (2TP + FP + FN)
        sensitivity = TP / (TP + FN)
        specificity = TN / (TN + FP)
        F2 = 5TP / (5TP + 4FN + FP)
        APR = sum_k (R_k - R_{k-1}) P_k

    APR is the step-wise average precision over all distinct probability
    thresholds (threshold-free), exactly as ``sklearn.metrics.
    average_precision_score``. Lesions are connected components of the lesion
    voxels (``scipy.ndimage.label``): ``lesion_tpr`` is the fraction of true
    lesions that contain at least one predicted voxel, ``lesion_fpr`` the
    fraction of predicted lesions that contain no true voxel.

    What it returns for a volume without lesions (an empty denominator): DSC
    and F2 are 1.0 when TP + FP + FN == 0 (nothing to find, nothing found);
    sensitivity is 1.0 when TP + FN == 0; specificity is 1.0 when TN + FP == 0;
    ``lesion_tpr`` is 1.0 when there are no true lesions; ``lesion_fpr`` is 0.0
    when there are no predicted lesions; APR is ``nan`` when there are no
    lesion voxels, because precision-recall is undefined without positives
    (scikit-learn warns and returns 0.0 there, which would read as "all
    missed"). Pool volumes in one call rather than averaging per-volume APRs.

    Args:
        y_true: binary lesion mask (bool, or numbers that are all 0 or 1), or
            a list of such masks.
        y_prob: lesion probabilities in [0, 1] of the same shape, or a list of
            such arrays matching ``y_true``.
        threshold: probability from which a voxel counts as predicted lesion,
            in [0, 1].
        connectivity: how many orthogonal steps make two voxels neighbours, as
            in ``scipy.ndimage.generate_binary_structure``: 1 to the number of
            dimensions. ``None`` means all of them, i.e. 26-connectivity in 3D
            (diagonal neighbours belong to the same lesion).
        return_curve: also return ``pr_curve``, the tuple
            ``(precision, recall, thresholds)`` of :func:`precision_recall_curve`.
        mask: optional region of interest (e.g. the brain), an array or a list
            matching ``y_true``: voxels outside it are not counted at all, and
            lesions are the components of the lesion voxels inside it.

    Returns:
        dict with floats ``dsc``, ``sensitivity``, ``specificity``, ``f2``,
        ``apr``, ``lesion_tpr``, ``lesion_fpr`` (fractions in [0, 1]) and ints
        ``tp``, ``fp``, ``tn``, ``fn``, ``n_true_lesions``, ``n_pred_lesions``,
        ``n_detected_lesions`` (true lesions hit), ``n_false_lesions``
        (predicted lesions touching no true voxel); plus ``pr_curve`` when
        asked.

    Raises:
        ValueError: shapes differ, ``y_true`` is not binary, probabilities are
            not finite values in [0, 1], or an option is out of range.

    Reference:
        Salehi, Erdogmus, Gholipour. Tversky loss function for image
        segmentation using 3D fully convolutional deep networks. MLMI 2017.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    volumes, dtype = _validated_volumes(y_true, y_prob)
    rois = _regions_of_interest(volumes, mask)
    structures = [_neighbourhood(lesion.ndim, connectivity) for lesion, _ in volumes]
    tp = fp = fn = n_voxels = 0
    lesions = np.zeros(4, dtype=np.int64)
    for (lesion, prob), roi, structure in zip(volumes, rois, structures):
        predicted = prob >= threshold
        if roi is not None:
            lesion, predicted = lesion & roi, predicted & roi
        volume_tp = np.count_nonzero(predicted & lesion)
        tp += volume_tp
        fp += np.count_nonzero(predicted) - volume_tp
        fn += np.count_nonzero(lesion) - volume_tp
        n_voxels += lesion.size if roi is None else np.count_nonzero(roi)
        lesions += _lesion_counts(lesion, predicted, structure)
    tn = n_voxels - tp - fp - fn
    n_true, n_detected, n_pred, n_false = (int(n) for n in lesions)
    if mask is not None:
        volumes = [(lesion[roi], prob[roi]) for (lesion, prob), roi in zip(volumes, rois)]
    result = {
        "dsc": _ratio(2 * tp, 2 * tp + fp + fn, empty=1.0),
        "sensitivity": _ratio(tp, tp + fn, empty=1.0),
        "specificity": _ratio(tn, tn + fp, empty=1.0),
        "f2": _ratio(5 * tp, 5 * tp + 4 * fn + fp, empty=1.0),
        "apr": _average_precision(volumes, dtype),
        "tp": int(tp),
        "fp": int(fp),
        "tn": int(tn),
        "fn": int(fn),
        "lesion_tpr": _ratio(n_detected, n_true, empty=1.0),
        "lesion_fpr": _ratio(n_false, n_pred, empty=0.0),
        "n_true_lesions": n_true,
        "n_pred_lesions": n_pred,
        "n_detected_lesions": n_detected,
        "n_false_lesions": n_false,
    }
    if return_curve:
        result["pr_curve"] = _precision_recall_curve(volumes, dtype)
    return result


def best_threshold_dsc(y_true, intensity, mask=None):
    """The best DSC that one intensity threshold reaches, and that threshold: an oracle.

    Voxels with ``intensity >= t`` are called lesion; ``t`` is chosen with the
    answer known, among all distinct intensities (and "call nothing"), so no
    method that uses a single threshold on this image can do better on it. On
    FLAIR it is the usual sanity baseline for MS lesion segmentation.

    Args:
        y_true: binary lesion mask, or a list of masks (pooled: one threshold
            for all volumes).
        intensity: real array of the same shape (e.g. a brain z-scored FLAIR),
            or a list matching ``y_true``.
        mask: optional region (e.g. the brain), an array or a list; voxels
            outside it are never called lesion and their truth is ignored.

    Returns:
        ``(dsc, threshold)``; with no lesion voxels, ``(1.0, inf)`` (calling
        nothing is then exact), as ``lesion_metrics`` scores an empty case.
    """
    trues = y_true if isinstance(y_true, (list, tuple)) else [y_true]
    values = intensity if isinstance(intensity, (list, tuple)) else [intensity]
    masks = mask if isinstance(mask, (list, tuple)) else [mask] * len(trues)
    if not len(trues) == len(values) == len(masks):
        raise ValueError(f"{len(trues)} masks, {len(values)} intensity volumes and "
                         f"{len(masks)} regions: give one of each per volume")
    truth_parts, value_parts = [], []
    for i, (truth, value, region) in enumerate(zip(trues, values, masks)):
        truth, value = np.asarray(truth), np.asarray(value, np.float64)
        if truth.shape != value.shape or (region is not None and np.shape(region) != truth.shape):
            raise ValueError(f"volume {i}: mask {truth.shape}, intensity {value.shape} and "
                             f"region {np.shape(region)} differ")
        if not np.isin(truth, (0, 1)).all():
            raise ValueError(f"volume {i}: y_true must be binary (0 or 1)")
        inside = np.ones(truth.shape, bool) if region is None else np.asarray(region, bool)
        truth_parts.append(truth[inside] != 0)
        value_parts.append(value[inside])
    truth, value = np.concatenate(truth_parts), np.concatenate(value_parts)
    if not np.isfinite(value).all():
        raise ValueError("intensity holds NaN or infinite values")
    n_true = int(truth.sum())
    if n_true == 0:
        return 1.0, float("inf")
    order = np.argsort(-value, kind="stable")
    value, true_positives = value[order], np.cumsum(truth[order])
    # A threshold at a value calls every voxel at least that bright: the last of a tie.
    last = np.flatnonzero(np.append(value[1:] != value[:-1], True))
    dsc = 2 * true_positives[last] / (last + 1 + n_true)
    best = int(np.argmax(dsc))
    return float(dsc[best]), float(value[last[best]])


def average_precision(y_true, y_prob):
    """Step-wise average precision of lesion probabilities, pooled over voxels.

        AP = sum_k (R_k - R_{k-1}) P_k

    over the distinct thresholds k, highest first, equal to
    ``sklearn.metrics.average_precision_score``. Memory stays bounded by one
    volume: each volume is sorted on its own and only the counts at the
    distinct lesion probabilities are kept.

    Args:
        y_true: binary lesion mask, or a list of masks.
        y_prob: lesion probabilities in [0, 1] of the same shape, or a list.

    Returns:
        float in [0, 1]; ``nan`` when there are no lesion voxels.
    """
    return _average_precision(*_validated_volumes(y_true, y_prob))


def precision_recall_curve(y_true, y_prob):
    """Precision and recall at every distinct probability threshold.

    Equal to ``sklearn.metrics.precision_recall_curve`` (with its default
    ``drop_intermediate=False``), including its conventions: thresholds
    increase, precision ends with 1 and recall with 0 (the empty prediction),
    and without any lesion voxel recall is 1 everywhere. It holds every voxel's
    probability at once (as scikit-learn does), in the input's float precision.

    Args:
        y_true: binary lesion mask, or a list of masks.
        y_prob: lesion probabilities in [0, 1] of the same shape, or a list.

    Returns:
        ``(precision, recall, thresholds)``: float64 arrays of length n + 1,
        n + 1 and n, where n is the number of distinct probabilities.
    """
    return _precision_recall_curve(*_validated_volumes(y_true, y_prob))


def _average_precision(volumes, dtype):
    positives = _lesion_probabilities(volumes, dtype)
    if positives.size == 0:
        return float("nan")
    # Recall only rises at thresholds equal to a lesion voxel's probability, so
    # precision is only needed there: counts of voxels >= each such level.
    levels, hits = np.unique(positives, return_counts=True)
    true_at_or_above = np.cumsum(hits[::-1])[::-1]
    all_at_or_above = np.zeros(levels.size, dtype=np.int64)
    for _, prob in volumes:
        scores = _sorted_scores(prob, dtype)
        all_at_or_above += scores.size - np.searchsorted(scores, levels, side="left")
        del scores  # free this volume's copy before sorting the next
    precision = true_at_or_above / all_at_or_above
    return float(np.sum(hits / positives.size * precision))


def _precision_recall_curve(volumes, dtype):
    scores = np.concatenate([prob.reshape(-1) for _, prob in volumes], dtype=dtype)
    scores.sort()
    positives = _lesion_probabilities(volumes, dtype)
    starts = np.concatenate(([0], np.flatnonzero(scores[1:] != scores[:-1]) + 1))
    thresholds = scores[starts]
    all_at_or_above = scores.size - starts
    true_at_or_above = positives.size - np.searchsorted(positives, thresholds, side="left")
    precision = true_at_or_above / all_at_or_above
    if positives.size:
        recall = true_at_or_above / positives.size
    else:
        recall = np.ones(thresholds.size)
    return np.append(precision, 1.0), np.append(recall, 0.0), thresholds


def _regions_of_interest(volumes, mask):
    """One boolean region per volume (``None`` for all voxels), shape-checked."""
    if mask is None:
        return [None] * len(volumes)
    masks = list(mask) if isinstance(mask, (list, tuple)) else [mask]
    if len(masks) != len(volumes):
        raise ValueError(f"mask has {len(masks)} volumes but y_true has {len(volumes)}")
    rois = [np.asarray(m, dtype=bool) for m in masks]
    for i, ((lesion, _), roi) in enumerate(zip(volumes, rois)):
        if roi.shape != lesion.shape:
            raise ValueError(f"volume {i}: mask shape {roi.shape} differs from y_true's "
                             f"{lesion.shape}")
    return rois


def _lesion_counts(lesion, predicted, structure):
    """``[n_true, n_true_detected, n_predicted, n_predicted_false]`` of one volume."""
    true_labels, n_true = ndimage.label(lesion, structure)
    pred_labels, n_pred = ndimage.label(predicted, structure)
    n_detected = np.count_nonzero(np.unique(true_labels[predicted]))
    n_pred_touching = np.count_nonzero(np.unique(pred_labels[lesion]))
    return np.array([n_true, n_detected, n_pred, n_pred - n_pred_touching])


def _neighbourhood(ndim, connectivity):
    if connectivity is None:
        connectivity = ndim
    if not (isinstance(connectivity, (int, np.integer)) and 1 <= connectivity <= ndim):
        raise ValueError(
            f"connectivity must be an integer from 1 to {ndim} for {ndim}D volumes "
            f"(or None for full connectivity), got {connectivity!r}"
        )
    return ndimage.generate_binary_structure(ndim, connectivity)


def _lesion_probabilities(volumes, dtype):
    """Sorted probabilities of all lesion voxels (few: lesions are rare)."""
    positives = np.concatenate([prob[lesion] for lesion, prob in volumes], dtype=dtype)
    positives.sort()
    return positives


def _sorted_scores(prob, dtype):
    # One C-ordered copy in the pooled dtype, sorted in place: ravel stays a view.
    scores = prob.astype(dtype, order="C").ravel()
    scores.sort()
    return scores


def _ratio(numerator, denominator, empty):
    return float(empty) if denominator == 0 else float(numerator / denominator)


def _validated_volumes(y_true, y_prob):
    """``([(lesion mask, probabilities), ...], pooled float dtype)`` after checks.

    The probabilities keep their dtype (no float64 copies of every volume);
    the pooled dtype is the narrowest float that holds every volume exactly, so
    distinct probabilities stay distinct, as they are for scikit-learn.
    """
    if isinstance(y_true, (list, tuple)) != isinstance(y_prob, (list, tuple)):
        raise ValueError(
            "y_true and y_prob must both be arrays or both be lists of volumes, got "
            f"{type(y_true).__name__} and {type(y_prob).__name__}"
        )
    if isinstance(y_true, (list, tuple)):
        if len(y_true) != len(y_prob):
            raise ValueError(f"y_true has {len(y_true)} volumes but y_prob has {len(y_prob)}")
        if not y_true:
            raise ValueError("y_true and y_prob are empty lists: no volumes to evaluate")
        pairs = [
            _validated_volume(t, p, f"volume {i}: ") for i, (t, p) in enumerate(zip(y_true, y_prob))
        ]
    else:
        pairs = [_validated_volume(y_true, y_prob, "")]
    dtype = np.result_type(np.float32, *(prob.dtype for _, prob in pairs))
    return pairs, dtype


def _validated_volume(y_true, y_prob, prefix):
    y_true = np.asarray(y_true)
    y_prob = np.asarray(y_prob)
    if y_true.shape != y_prob.shape:
        raise ValueError(
            f"{prefix}y_true and y_prob must have the same shape, got {y_true.shape} "
            f"and {y_prob.shape}"
        )
    if y_true.size == 0 or y_true.ndim == 0:
        raise ValueError(f"{prefix}y_true and y_prob have no voxels (shape {y_true.shape})")
    if y_true.dtype.kind not in "biuf":
        raise ValueError(f"{prefix}y_true must be a binary mask, got dtype {y_true.dtype}")
    if y_prob.dtype.kind not in "biuf":
        raise ValueError(f"{prefix}y_prob must hold real probabilities, got dtype {y_prob.dtype}")
    if y_true.dtype != bool:
        n_bad = np.count_nonzero((y_true != 0) & (y_true != 1))
        if n_bad:
            raise ValueError(
                f"{prefix}y_true must be binary (0 or 1), but {n_bad} voxels have other "
                "values; threshold or one-hot decode the mask first"
            )
        y_true = y_true != 0
    low, high = y_prob.min(), y_prob.max()
    if np.isnan(low) or np.isnan(high):
        raise ValueError(f"{prefix}y_prob contains NaN; probabilities must be finite")
    if low < 0 or high > 1:
        raise ValueError(
            f"{prefix}y_prob must be probabilities in [0, 1], found values from {low} to {high}"
        )
    return y_true, y_prob
