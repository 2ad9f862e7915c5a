"""A FLAIR threshold: the one-line baseline a lesion segmenter has to beat.

MS lesions are bright on FLAIR. Standardise FLAIR inside the brain,
``z = (FLAIR - brain mean) / brain std``, and call every brain voxel with
``z >= k`` a lesion. One number, ``k``, chosen on scans with known lesions, then
applied unchanged to scans it has never seen. A network that does not beat it on
a new patient has learnt less than that number carries.

Unlike ``tversky_keras.evaluation.best_threshold_dsc`` (an oracle: ``k`` chosen on
the very scan it is scored on, with its answer known), ``k`` here comes from
other scans: ``choose_k`` picks it on a set of labelled scans (pooled: one ``k``
for all), and ``leave_one_out_k`` gives each scan of a set the ``k`` chosen on the
others.

The z-score is the brain's mean and standard deviation, unclipped: clipping at a
high percentile would cut off the lesions, which are where the threshold sits.
With ``core_mm`` the mean and standard deviation are read over the brain deeper
than that many millimetres from its edge (``brain_core``), and applied to the whole
brain. The edge is where brains differ most between skull-strip pipelines (a
looser one keeps a rim of fat, bone and meninges; a tighter one cuts cortex and
CSF) and between real and synthetic scans; the deep brain is white matter, deep
grey matter and ventricles in every one of them. ``CORE_MM`` (6 mm) reaches past
the rim of up to 6 mm that ``reproduce.robustness`` adds.

Example:
    >>> import numpy as np
    >>> flair = np.array([1.0, 1.0, 1.0, 1.0, 5.0, 0.0])
    >>> brain = np.array([True, True, True, True, True, False])
    >>> z = flair_zscore(flair, brain)
    >>> threshold_segmentation(z, brain, k=1.5).tolist()
    [False, False, False, False, True, False]
"""

import numpy as np

# CORE_MM: the depth (mm) below the brain's edge past which the core-statistics z-score
# reads its mean and standard deviation (flair_zscore(..., core_mm=CORE_MM)), the one
# wm-peak-core normalisation reads its statistics past.
from tversky_keras.data.normalize import CORE_MM as CORE_MM  # the package's one depth
from tversky_keras.data.normalize import brain_core, zscore_in_brain
from tversky_keras.evaluation import best_threshold_dsc



def flair_zscore(flair, brain, spacing=None, core_mm=0.0):
    """``(flair - mean) / std`` over the brain's voxels, 0 outside the brain (float32).

    Args:
        flair, brain: arrays of one shape.
        spacing: the voxel size in mm (a number or one per axis); needed with ``core_mm``.
        core_mm: read the mean and std over the brain deeper than this (``brain_core``),
            and apply them to the whole brain; 0 (default): the whole brain.

    Raises:
        ValueError: an empty brain (or core), a brain (or core) of one intensity,
            non-finite values in the brain, arrays of different shapes, or ``core_mm``
            without ``spacing``.
    """
    flair = np.asarray(flair, np.float64)
    brain = np.asarray(brain, bool)
    if flair.shape != brain.shape:
        raise ValueError(f"FLAIR {flair.shape} and brain mask {brain.shape} differ in shape")
    values = flair[brain]
    if values.size == 0:
        raise ValueError("the brain mask is empty")
    if not np.isfinite(values).all():
        raise ValueError("FLAIR holds NaN or infinite values inside the brain")
    if values.min() == values.max():
        raise ValueError("FLAIR has one intensity throughout the brain: no z-score")
    if not core_mm:
        return zscore_in_brain(flair, brain, clip_percentiles=None)
    if spacing is None:
        raise ValueError("core statistics need the voxel size (spacing)")
    core = flair[brain_core(brain, spacing, core_mm)]
    if core.size < 2 or core.min() == core.max():
        raise ValueError(f"the brain has {'no' if core.size == 0 else 'too few'} voxels deeper "
                         f"than {core_mm:g} mm to read a mean and standard deviation from")
    z = (flair - core.mean()) / core.std()
    return np.where(brain, z, 0.0).astype(np.float32)


def threshold_segmentation(zscore, brain, k):
    """The lesion mask ``zscore >= k`` inside ``brain`` (bool)."""
    k = float(k)
    if not np.isfinite(k):
        raise ValueError(f"the threshold k must be finite, got {k}")
    return (np.asarray(zscore) >= k) & np.asarray(brain, bool)


def threshold_union(probability, zscore, brain, k):
    """The network's lesion probability raised to 1 wherever the FLAIR threshold calls a
    lesion (``threshold_segmentation(zscore, brain, k)``): at any mask threshold up to 1,
    its mask is the network's mask united with the threshold's (float32).

    A label-free, test-time lever: where a network trained on synthetic scans calls
    almost nothing on a real one, the one-line threshold still finds the brightest
    lesions; where the network is sure, it keeps its own calls.

    >>> import numpy as np
    >>> threshold_union(np.array([0.9, 0.2, 0.1]), np.array([0.0, 3.0, 1.0]),
    ...                 np.array([True, True, True]), k=2.0).tolist()
    [0.8999999761581543, 1.0, 0.10000000149011612]
    """
    probability = np.asarray(probability, np.float32)
    called = threshold_segmentation(zscore, brain, k)
    if called.shape != probability.shape:
        raise ValueError(f"probability {probability.shape} and FLAIR z-score {called.shape} "
                         f"differ in shape")
    return np.where(called, np.float32(1.0), probability)


def choose_k(truths, zscores, brains):
    """The one ``k`` that maximises the pooled DSC over labelled scans.

    Args:
        truths, zscores, brains: lists (one entry per scan) of lesion masks,
            ``flair_zscore`` maps and brain masks.

    Returns:
        ``(k, pooled DSC at k)``; ``k`` is ``None`` when the scans hold no lesion.
    """
    dsc, k = best_threshold_dsc(list(truths), list(zscores), mask=list(brains))
    return (None if not np.isfinite(k) else float(k)), float(dsc)


def leave_one_out_k(references):
    """For each scan, the ``k`` chosen (``choose_k``) on all the others.

    Args:
        references: ``{id: (truth, zscore, brain)}``.

    Returns:
        ``{id: k}``; ``None`` for every scan when there are fewer than two.
    """
    chosen = {}
    for scan_id in references:
        others = [value for other, value in references.items() if other != scan_id]
        chosen[scan_id] = choose_k(*zip(*others))[0] if others else None
    return chosen
