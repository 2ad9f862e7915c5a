"""Exact evaluation of lesion segmentations on whole volumes (numpy/scipy).

The paper's metrics (DSC, sensitivity, specificity, F2, APR) are computed from
voxel counts pooled over all voxels of all given volumes; lesion-wise detection
rates count 3D connected components per volume. Everything here is exact: no
histogram binning of probabilities, so APR equals scikit-learn's
``average_precision_score`` on the same voxels.

A list (or tuple) of arrays is a list of volumes, pooled: voxel metrics are
those of all voxels of all volumes together, lesion counts are summed over
volumes (a component never spans two volumes).

The challenge metrics (:func:`challenge_metrics` and the functions it
combines) score a binary segmentation as the MS lesion benchmarks do: nDSC
(Shifts), lesion-wise precision, recall and F1 under an overlap rule (any
voxel, MSSEG-style fraction, or Shifts' IoU), HD95 and ASSD in millimetres
(equal to medpy's), and volume agreement in millilitres.
"""

import numpy as np
from scipy import ndimage

__all__ = [
    "lesion_metrics", "best_threshold_dsc", "average_precision", "precision_recall_curve",
    "normalised_dsc", "lesion_detection", "surface_distances", "volume_agreement",
    "challenge_metrics",
]

#: Shifts' reference lesion load r for nDSC (Raina et al. 2023).
REFERENCE_LESION_LOAD = 0.001
#: Lesion size bin edges in voxels: < 10, 10-99, >= 100.
SIZE_BINS = (10, 100)
OVERLAP_RULES = ("any", "fraction", "iou")


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
    if isinstance(threshold, (bool, str, bytes)) or np.ndim(threshold) != 0 or \
            not isinstance(np.asarray(threshold).item(), (int, float)):
        raise ValueError(f"threshold must be one number in [0, 1], got {threshold!r}")
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


def normalised_dsc(y_true, y_pred, reference_load=REFERENCE_LESION_LOAD, mask=None):
    """Normalised DSC (nDSC): the DSC a segmentation would reach at a fixed lesion load.

    The Shifts MS track's definition (``dice_norm_metric`` in
    ``mswml/metrics.py`` of ``Shifts-Project/shifts``): with TP, FP, FN counted
    over the N voxels, n = TP + FN true lesion voxels and reference load r,

        k = (1 - r) n / (r (N - n))
        nDSC = 2TP / (2TP + k FP + FN)

    i.e. false positives are rescaled as if lesions filled the fraction r of
    the volume, so patients with very different lesion loads compare fairly.

    Empty cases, as Shifts defines them: no true and no predicted voxel gives
    1.0; no true voxel but some predicted gives 0.0 (Shifts sets k = 1 there,
    so nDSC = 0 / FP). When every voxel is lesion there is no FP and k is not
    needed: nDSC = 2TP / (2TP + FN). A list of volumes is pooled: the counts
    and N are those of all voxels together (Shifts averages per-subject
    values; the ``per_volume`` entries of :func:`challenge_metrics` give them).

    Args:
        y_true: binary lesion mask, or a list of masks.
        y_pred: binary predicted mask of the same shape, or a list.
        reference_load: r, in (0, 1); Shifts uses 0.001.
        mask: optional region (e.g. the brain), an array or a list: voxels
            outside it are not counted, so N is the number of voxels inside.

    Returns:
        float in [0, 1].

    Reference:
        Raina et al. Tackling bias in the Dice similarity coefficient:
        introducing nDSC for white matter lesion segmentation. ISBI 2023.
    """
    _check_fraction("reference_load", reference_load, closed=False)
    pairs = _within_regions(_validated_masks(y_true, y_pred), mask)
    return _ndsc(np.sum([_voxel_counts(*pair) for pair in pairs], axis=0), reference_load)


def lesion_detection(y_true, y_pred, overlap="any", min_overlap=None, connectivity=None,
                     size_bins=SIZE_BINS):
    """Lesion-wise precision, recall and F1, with counts split by lesion size.

    Lesions are the connected components of each mask (``scipy.ndimage.label``,
    26-connected in 3D by default). The overlap rule decides when a true lesion
    is detected and when a predicted lesion is correct:

    - ``"any"``: a true lesion is detected when any predicted voxel lies in it;
      a predicted lesion is correct when it holds any true voxel (the rule of
      :func:`lesion_metrics`).
    - ``"fraction"`` (after MSSEG-2016's overlap rules, Commowick et al. 2018):
      a true lesion is detected when predicted voxels cover at least
      ``min_overlap`` of it; a predicted lesion is correct when at least
      ``min_overlap`` of it lies on true lesion voxels.
    - ``"iou"`` (Shifts' ``lesion_f1_score`` in ``mswml/metrics.py`` of
      ``Shifts-Project/shifts``): a lesion matches when its largest IoU with a
      lesion of the other mask that it overlaps is at least ``min_overlap``
      (default 0.25). Shifts labels with ``ndimage.label``'s default, face
      connectivity: pass ``connectivity=1`` to reproduce its numbers.

    With TP the detected true lesions, FN = n_true - TP the missed ones,
    TP_pred the correct predicted lesions and FP = n_pred - TP_pred:

        precision = TP_pred / n_pred,  recall = TP / n_true

    and F1 as each source defines it: for ``"any"`` and ``"fraction"`` the
    harmonic mean 2 precision recall / (precision + recall) (MSSEG's lesion
    F1); for ``"iou"`` Shifts' count formula TP_pred / (TP_pred + (FP + FN) / 2).
    The two agree whenever no lesion is split or merged (TP = TP_pred).

    Empty cases: precision is 1.0 without predicted lesions, recall 1.0
    without true lesions, F1 1.0 when both are absent and 0.0 when only one
    is (Shifts' value too). A list of volumes is pooled: counts are summed
    (a lesion never spans two volumes), ratios are taken of the sums.

    Args:
        y_true: binary lesion mask, or a list of masks.
        y_pred: binary predicted mask of the same shape, or a list.
        overlap: ``"any"``, ``"fraction"`` or ``"iou"``.
        min_overlap: the threshold of ``"fraction"`` (required) or ``"iou"``
            (default 0.25), in (0, 1]; must be ``None`` for ``"any"``.
        connectivity: as in :func:`lesion_metrics` (``None``: full).
        size_bins: increasing positive lesion sizes in voxels that split the
            counts: ``(10, 100)`` makes the bins ``"<10"``, ``"10-99"`` and
            ``">=100"``. TP and FN are binned by the true lesion's size, FP
            and TP_pred by the predicted lesion's.

    Returns:
        dict with floats ``lesion_precision``, ``lesion_recall``,
        ``lesion_f1``; ints ``n_true_lesions``, ``n_pred_lesions``,
        ``lesion_tp``, ``lesion_fn``, ``lesion_tp_pred``, ``lesion_fp``;
        ``lesion_by_size``, a dict from bin name to a dict of those four
        counts; and the rule, ``lesion_overlap`` and ``lesion_min_overlap``.

    Reference:
        Commowick et al. Objective evaluation of multiple sclerosis lesion
        segmentation using a data management and processing infrastructure.
        Scientific Reports 8, 13650 (2018). Malinin et al. Shifts 2.0:
        extending the dataset of real distributional shifts. arXiv:2206.15407.
    """
    rule = _overlap_rule(overlap, min_overlap)
    edges = _size_bin_edges(size_bins)
    pairs = _validated_masks(y_true, y_pred)
    tables = [_lesion_table(truth, pred, _neighbourhood(truth.ndim, connectivity), rule)
              for truth, pred in pairs]
    return _detection_summary(tables, rule, edges)


def surface_distances(y_true, y_pred, spacing):
    """Hausdorff distance 95th percentile (HD95) and average symmetric surface distance (ASSD).

    As ``medpy.metric.binary.hd95`` and ``assd`` (medpy 0.5) compute them: a
    mask's surface is its voxels minus its binary erosion with the
    face-connected structure (voxels on the array's edge are surface); d(x, S)
    is the Euclidean distance in millimetres (``distance_transform_edt`` with
    the voxel size as sampling) from voxel x to the nearest voxel of surface S.
    With D the distances of every predicted surface voxel to the true surface
    together with those of every true surface voxel to the predicted surface,

        HD95 = 95th percentile of D (numpy's linear interpolation)
        ASSD = mean of D

    (medpy before 0.5 averaged the two directions' means instead).

    Empty cases: ``nan`` when either mask is empty, both included: there is no
    surface to measure from (medpy raises there). A list of volumes gives the
    mean of the per-volume values over the volumes where both are defined
    (``nan`` if none).

    Args:
        y_true: binary lesion mask, or a list of masks.
        y_pred: binary predicted mask of the same shape, or a list.
        spacing: voxel size in mm, one positive number per axis; for a list,
            one such sequence for all volumes or a list of one per volume.

    Returns:
        dict with floats ``hd95_mm`` and ``assd_mm``.
    """
    pairs = _validated_masks(y_true, y_pred)
    spacings = _validated_spacings(spacing, pairs)
    return _mean_surface_summary([_surface_summary(truth, pred, voxel)
                                  for (truth, pred), voxel in zip(pairs, spacings)])


def volume_agreement(y_true, y_pred, spacing):
    """Lesion volumes in millilitres, their difference, and their correlation across subjects.

    With V_true and V_pred the voxel counts times the voxel volume
    (prod(spacing) mm^3, / 1000 for mL):

        volume_difference_ml = V_pred - V_true  (positive: over-segmentation)
        abs_volume_difference_ml = |V_pred - V_true|
        relative_volume_difference = |V_pred - V_true| / V_true

    and ``volume_correlation``, the Pearson correlation of V_pred with V_true
    across the given volumes (as the ISBI 2015 challenge reports it).

    Empty cases: with no true voxel the relative difference is 0.0 when
    nothing is predicted and ``inf`` otherwise; the correlation is ``nan`` with
    fewer than 2 volumes or when either volume list has zero variance. A list
    of volumes is pooled: V_true and V_pred are the totals over all volumes
    (the per-subject differences are the ``per_volume`` entries of
    :func:`challenge_metrics`).

    Args:
        y_true: binary lesion mask, or a list of masks.
        y_pred: binary predicted mask of the same shape, or a list.
        spacing: voxel size in mm, as for :func:`surface_distances`.

    Returns:
        dict with floats ``volume_true_ml``, ``volume_pred_ml``,
        ``volume_difference_ml``, ``abs_volume_difference_ml``,
        ``relative_volume_difference`` and ``volume_correlation``.
    """
    pairs = _validated_masks(y_true, y_pred)
    spacings = _validated_spacings(spacing, pairs)
    return _volume_summary(np.array([_volumes_ml(truth, pred, voxel)
                                     for (truth, pred), voxel in zip(pairs, spacings)]))


def challenge_metrics(y_true, y_prob, spacing, threshold=0.5, overlap="any", min_overlap=None,
                      connectivity=None, size_bins=SIZE_BINS,
                      reference_load=REFERENCE_LESION_LOAD, mask=None):
    """All challenge metrics of a segmentation in one JSON-serialisable dict.

    The prediction is ``y_prob >= threshold`` (a binary mask stays itself),
    restricted to ``mask`` like the truth when one is given. The dict merges
    :func:`normalised_dsc` (``ndsc``), :func:`lesion_detection`,
    :func:`surface_distances` and :func:`volume_agreement`, each documented
    there with its empty cases. A list of volumes gives their pooled values as
    each function defines them, plus ``per_volume``: one such dict per volume
    (without ``volume_correlation``, defined only across volumes).

    Args:
        y_true: binary lesion mask, or a list of masks.
        y_prob: lesion probabilities in [0, 1] or a binary mask of the same
            shape, or a list matching ``y_true``.
        spacing: voxel size in mm, as for :func:`surface_distances`.
        threshold: probability from which a voxel is predicted lesion.
        overlap: the lesion overlap rule, as for :func:`lesion_detection`.
        min_overlap: its threshold, as for :func:`lesion_detection`.
        connectivity: lesion connectivity, as for :func:`lesion_detection`.
        size_bins: lesion size bin edges, as for :func:`lesion_detection`.
        reference_load: r of :func:`normalised_dsc`.
        mask: optional region (e.g. the brain), an array or a list: voxels
            outside it are neither true nor predicted lesion, and are not
            counted in nDSC's N.

    Returns:
        dict of floats, ints and (for ``lesion_by_size``) dicts of ints;
        ``nan`` and ``inf`` where documented.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    _check_fraction("reference_load", reference_load, closed=False)
    rule = _overlap_rule(overlap, min_overlap)
    edges = _size_bin_edges(size_bins)
    volumes, _ = _validated_volumes(y_true, y_prob)
    spacings = _validated_spacings(spacing, volumes)
    pairs = _within_regions([(truth, prob >= threshold) for truth, prob in volumes], mask)
    parts = []
    for (truth, pred, n_voxels), voxel in zip(pairs, spacings):
        structure = _neighbourhood(truth.ndim, connectivity)
        parts.append((np.array(_voxel_counts(truth, pred, n_voxels)),
                      _lesion_table(truth, pred, structure, rule),
                      _surface_summary(truth, pred, voxel),
                      _volumes_ml(truth, pred, voxel)))

    def summary(chosen):
        counts, tables, surfaces, volumes_ml = zip(*chosen)
        return {"ndsc": _ndsc(np.sum(counts, axis=0), reference_load),
                **_detection_summary(tables, rule, edges),
                **_mean_surface_summary(surfaces),
                **_volume_summary(np.array(volumes_ml))}

    result = summary(parts)
    if isinstance(y_true, (list, tuple)):
        result["per_volume"] = [summary([part]) for part in parts]
        for single in result["per_volume"]:
            del single["volume_correlation"]
    return result


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
    rois = []
    for i, m in enumerate(masks):
        values = np.asarray(m)
        if values.dtype != bool and not np.isin(values, (0, 1)).all():
            raise ValueError(f"volume {i}: the mask must hold only 0 and 1 (or bool), found "
                             f"also {values[~np.isin(values, (0, 1))].flat[0]!r}")
        rois.append(values.astype(bool))
    for i, ((lesion, _), roi) in enumerate(zip(volumes, rois)):
        if roi.shape != lesion.shape:
            raise ValueError(f"volume {i}: mask shape {roi.shape} differs from y_true's "
                             f"{lesion.shape}")
    return rois


def _lesion_counts(lesion, predicted, structure):
    """``[n_true, n_true_detected, n_predicted, n_predicted_false]`` of one volume."""
    true_sizes, detected, pred_sizes, correct = _lesion_table(lesion, predicted, structure,
                                                              ("any", None))
    return np.array([true_sizes.size, np.count_nonzero(detected), pred_sizes.size,
                     pred_sizes.size - np.count_nonzero(correct)])


def _lesion_table(truth, pred, structure, rule):
    """``(true sizes, detected, predicted sizes, correct)``: one entry per lesion of one volume."""
    overlap, min_overlap = rule
    true_labels, n_true = ndimage.label(truth, structure)
    pred_labels, n_pred = ndimage.label(pred, structure)
    true_sizes = np.bincount(true_labels.ravel(), minlength=n_true + 1)[1:]
    pred_sizes = np.bincount(pred_labels.ravel(), minlength=n_pred + 1)[1:]
    # Each overlapping (true lesion, predicted lesion) pair and its shared voxels.
    both = truth & pred
    pair_ids, shared = np.unique(
        true_labels[both].astype(np.int64) * (n_pred + 1) + pred_labels[both],
        return_counts=True)
    true_of_pair, pred_of_pair = np.divmod(pair_ids, n_pred + 1)
    true_of_pair, pred_of_pair = true_of_pair - 1, pred_of_pair - 1
    if overlap == "iou":
        iou = shared / (true_sizes[true_of_pair] + pred_sizes[pred_of_pair] - shared)
        true_score, pred_score = np.zeros(n_true), np.zeros(n_pred)
        np.maximum.at(true_score, true_of_pair, iou)
        np.maximum.at(pred_score, pred_of_pair, iou)
    else:
        # A true lesion's covered fraction, a predicted lesion's fraction on true voxels.
        true_score = np.bincount(true_of_pair, shared, minlength=n_true) / true_sizes
        pred_score = np.bincount(pred_of_pair, shared, minlength=n_pred) / pred_sizes
    if overlap == "any":
        return true_sizes, true_score > 0, pred_sizes, pred_score > 0
    return true_sizes, true_score >= min_overlap, pred_sizes, pred_score >= min_overlap


def _detection_summary(tables, rule, edges):
    """Pooled lesion-wise precision, recall, F1 and counts of ``_lesion_table`` results."""
    true_sizes, detected, pred_sizes, correct = (np.concatenate(column) for column in zip(*tables))
    n_true, n_pred = true_sizes.size, pred_sizes.size
    tp, tp_pred = int(np.count_nonzero(detected)), int(np.count_nonzero(correct))
    fn, fp = n_true - tp, n_pred - tp_pred
    precision = _ratio(tp_pred, n_pred, empty=1.0)
    recall = _ratio(tp, n_true, empty=1.0)
    overlap, min_overlap = rule
    if overlap == "iou":
        f1 = _ratio(tp_pred, tp_pred + (fp + fn) / 2, empty=1.0)
    else:
        f1 = _ratio(2 * precision * recall, precision + recall, empty=0.0)
    true_bins = np.searchsorted(edges, true_sizes, side="right")
    pred_bins = np.searchsorted(edges, pred_sizes, side="right")
    by_size = {}
    for i, name in enumerate(_size_bin_names(edges)):
        found, right = detected[true_bins == i], correct[pred_bins == i]
        by_size[name] = {"tp": int(np.count_nonzero(found)), "fn": int(np.count_nonzero(~found)),
                         "tp_pred": int(np.count_nonzero(right)),
                         "fp": int(np.count_nonzero(~right))}
    return {"lesion_precision": precision, "lesion_recall": recall, "lesion_f1": f1,
            "n_true_lesions": n_true, "n_pred_lesions": n_pred, "lesion_tp": tp,
            "lesion_fn": fn, "lesion_tp_pred": tp_pred, "lesion_fp": fp,
            "lesion_by_size": by_size, "lesion_overlap": overlap,
            "lesion_min_overlap": min_overlap}


def _within_regions(pairs, mask):
    """``[(truth, prediction, n_voxels), ...]``, both cut to each volume's region."""
    rois = _regions_of_interest(pairs, mask)
    return [(truth, pred, truth.size) if roi is None
            else (truth & roi, pred & roi, int(np.count_nonzero(roi)))
            for (truth, pred), roi in zip(pairs, rois)]


def _voxel_counts(truth, pred, n_voxels):
    """``(TP, FP, FN, N)`` of one volume."""
    tp = np.count_nonzero(truth & pred)
    return tp, np.count_nonzero(pred) - tp, np.count_nonzero(truth) - tp, n_voxels


def _ndsc(counts, reference_load):
    """nDSC of ``(TP, FP, FN, N)``; the counts may be expected (fractional) ones."""
    tp, fp, fn, n_voxels = (float(count) for count in counts)
    n_true = tp + fn
    if n_true + fp == 0:
        return 1.0
    if fp == 0:
        scaled_fp = 0.0  # also when every voxel is lesion, where k would divide by zero
    elif n_true == 0:
        scaled_fp = float(fp)  # Shifts' k = 1: nDSC = 0
    else:
        k = (1 - reference_load) * n_true / (reference_load * (n_voxels - n_true))
        scaled_fp = k * fp
    return float(2 * tp / (2 * tp + scaled_fp + fn))


def _surface_summary(truth, pred, spacing):
    """``{"hd95_mm", "assd_mm"}`` of one volume, as medpy computes them."""
    if not (truth.any() and pred.any()):
        return {"hd95_mm": float("nan"), "assd_mm": float("nan")}
    # Outside the box around both masks there is no surface, and erosion sees zeros
    # there either way: cropping changes no distance and saves most of the work.
    box = ndimage.find_objects((truth | pred).astype(np.int8))[0]
    truth, pred = truth[box], pred[box]
    structure = ndimage.generate_binary_structure(truth.ndim, 1)
    true_surface = truth & ~ndimage.binary_erosion(truth, structure)
    pred_surface = pred & ~ndimage.binary_erosion(pred, structure)
    distances = np.concatenate([
        ndimage.distance_transform_edt(~true_surface, sampling=spacing)[pred_surface],
        ndimage.distance_transform_edt(~pred_surface, sampling=spacing)[true_surface],
    ])
    return {"hd95_mm": float(np.percentile(distances, 95)), "assd_mm": float(distances.mean())}


def _mean_surface_summary(summaries):
    """Mean of each surface distance over the volumes where it is defined."""
    result = {}
    for key in ("hd95_mm", "assd_mm"):
        defined = [s[key] for s in summaries if not np.isnan(s[key])]
        result[key] = float(np.mean(defined)) if defined else float("nan")
    return result


def _volumes_ml(truth, pred, spacing):
    """``(V_true, V_pred)`` of one volume in mL (spacing in mm)."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return np.count_nonzero(truth) * voxel_ml, np.count_nonzero(pred) * voxel_ml


def _volume_summary(volumes_ml):
    """Volume agreement of an ``(n_volumes, 2)`` array of (true, predicted) volumes in mL."""
    true_ml, pred_ml = volumes_ml[:, 0], volumes_ml[:, 1]
    total_true, total_pred = float(true_ml.sum()), float(pred_ml.sum())
    difference = total_pred - total_true
    if total_true > 0:
        relative = abs(difference) / total_true
    else:
        relative = 0.0 if total_pred == 0 else float("inf")
    return {"volume_true_ml": total_true, "volume_pred_ml": total_pred,
            "volume_difference_ml": difference, "abs_volume_difference_ml": abs(difference),
            "relative_volume_difference": relative,
            "volume_correlation": _pearson(true_ml, pred_ml)}


def _pearson(x, y):
    # Exact equality, not a variance near 0: the mean of equal floats may round.
    if x.size < 2 or x.min() == x.max() or y.min() == y.max():
        return float("nan")
    dx, dy = x - x.mean(), y - y.mean()
    return float(np.sum(dx * dy) / np.sqrt(np.sum(dx * dx) * np.sum(dy * dy)))


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
    pairs = _paired_volumes(y_true, y_prob, "y_prob", _validated_volume)
    dtype = np.result_type(np.float32, *(prob.dtype for _, prob in pairs))
    return pairs, dtype


def _validated_masks(y_true, y_pred):
    """``[(true mask, predicted mask), ...]``, both boolean, after checks."""
    return _paired_volumes(y_true, y_pred, "y_pred", _validated_mask_pair)


def _paired_volumes(y_true, other, name, validate):
    """``validate(true, other, prefix)`` of each volume: one array, or two matching lists."""
    if isinstance(y_true, (list, tuple)) != isinstance(other, (list, tuple)):
        raise ValueError(
            f"y_true and {name} must both be arrays or both be lists of volumes, got "
            f"{type(y_true).__name__} and {type(other).__name__}"
        )
    if not isinstance(y_true, (list, tuple)):
        return [validate(y_true, other, "")]
    if len(y_true) != len(other):
        raise ValueError(f"y_true has {len(y_true)} volumes but {name} has {len(other)}")
    if not y_true:
        raise ValueError(f"y_true and {name} are empty lists: no volumes to evaluate")
    return [validate(t, o, f"volume {i}: ") for i, (t, o) in enumerate(zip(y_true, other))]


def _validated_volume(y_true, y_prob, prefix):
    y_true, y_prob = _same_shape(y_true, y_prob, "y_prob", prefix)
    y_true = _binary(y_true, "y_true", prefix)
    if y_prob.dtype.kind not in "biuf":
        raise ValueError(f"{prefix}y_prob must hold real probabilities, got dtype {y_prob.dtype}")
    low, high = y_prob.min(), y_prob.max()
    if np.isnan(low) or np.isnan(high):
        raise ValueError(f"{prefix}y_prob contains NaN; probabilities must be finite")
    if low < 0 or high > 1:
        raise ValueError(
            f"{prefix}y_prob must be probabilities in [0, 1], found values from {low} to {high}"
        )
    return y_true, y_prob


def _validated_mask_pair(y_true, y_pred, prefix):
    y_true, y_pred = _same_shape(y_true, y_pred, "y_pred", prefix)
    return _binary(y_true, "y_true", prefix), _binary(y_pred, "y_pred", prefix)


def _same_shape(y_true, other, name, prefix):
    y_true, other = np.asarray(y_true), np.asarray(other)
    if y_true.shape != other.shape:
        raise ValueError(
            f"{prefix}y_true and {name} must have the same shape, got {y_true.shape} "
            f"and {other.shape}"
        )
    if y_true.size == 0 or y_true.ndim == 0:
        raise ValueError(f"{prefix}y_true and {name} have no voxels (shape {y_true.shape})")
    return y_true, other


def _binary(mask, name, prefix):
    """``mask`` as booleans, if it is one: bool, or numbers that are all 0 or 1."""
    if mask.dtype.kind not in "biuf":
        raise ValueError(f"{prefix}{name} must be a binary mask, got dtype {mask.dtype}")
    if mask.dtype == bool:
        return mask
    n_bad = np.count_nonzero((mask != 0) & (mask != 1))
    if n_bad:
        raise ValueError(
            f"{prefix}{name} must be binary (0 or 1), but {n_bad} voxels have other "
            "values; threshold or one-hot decode the mask first"
        )
    return mask != 0


def _validated_spacings(spacing, pairs):
    """One float64 voxel size in mm per volume: one for all, or a list of one per volume."""
    per_volume = (isinstance(spacing, (list, tuple)) and len(spacing) > 0
                  and all(np.ndim(voxel) == 1 for voxel in spacing))
    spacings = list(spacing) if per_volume else [spacing] * len(pairs)
    if len(spacings) != len(pairs):
        raise ValueError(f"spacing gives {len(spacings)} voxel sizes for {len(pairs)} volumes")
    checked = []
    for i, (voxel, (truth, _)) in enumerate(zip(spacings, pairs)):
        prefix = f"volume {i}: " if len(pairs) > 1 else ""
        try:
            values = np.asarray(voxel, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{prefix}spacing must be numbers (mm per axis), got {voxel!r}") from None
        if values.shape != (truth.ndim,):
            raise ValueError(f"{prefix}spacing must give one voxel size per axis "
                             f"({truth.ndim}), got {voxel!r}")
        if not (np.isfinite(values).all() and (values > 0).all()):
            raise ValueError(f"{prefix}spacing must be positive and finite (mm), got {voxel!r}")
        checked.append(values)
    return checked


def _overlap_rule(overlap, min_overlap):
    """``(overlap, min_overlap)`` checked, with Shifts' 0.25 as the IoU default."""
    if not isinstance(overlap, str) or overlap not in OVERLAP_RULES:
        raise ValueError(f"overlap must be one of {OVERLAP_RULES}, got {overlap!r}")
    if overlap == "any":
        if min_overlap is not None:
            raise ValueError(f"overlap='any' takes no min_overlap (the threshold of 'fraction' "
                             f"and 'iou'), got {min_overlap!r}")
        return overlap, None
    if min_overlap is None:
        if overlap == "fraction":
            raise ValueError("overlap='fraction' needs min_overlap: the fraction in (0, 1] of "
                             "a lesion that must overlap the other mask")
        min_overlap = 0.25
    _check_fraction("min_overlap", min_overlap, closed=True)
    return overlap, float(min_overlap)


def _check_fraction(name, value, closed):
    """Raise unless ``value`` is a real number in (0, 1], or (0, 1) when not ``closed``."""
    number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not (number and 0 < value and (value <= 1 if closed else value < 1)):
        raise ValueError(f"{name} must be a number in (0, 1{']' if closed else ')'}, "
                         f"got {value!r}")


def _size_bin_edges(size_bins):
    edges = tuple(size_bins)
    if not all(isinstance(e, (int, np.integer)) and not isinstance(e, bool) and e > 0
               for e in edges) or any(a >= b for a, b in zip(edges, edges[1:])):
        raise ValueError(f"size_bins must be increasing positive integers (voxels), "
                         f"got {size_bins!r}")
    return np.array(edges, dtype=np.int64)


def _size_bin_names(edges):
    if edges.size == 0:
        return ["all"]
    return ([f"<{edges[0]}"] + [f"{a}-{b - 1}" for a, b in zip(edges, edges[1:])]
            + [f">={edges[-1]}"])
