"""Per-modality intensity normalisation inside the brain."""

import numpy as np
from scipy import ndimage


def brain_mask_from_image(image):
    """The brain as the non-zero voxels of a skull-stripped image (bool array)."""
    return np.asarray(image) != 0


def zscore_in_brain(image, brain_mask=None, clip_percentiles=(0.5, 99.5)):
    """Robust z-score of one modality, computed inside the brain.

    Intensities are first clipped to the given brain percentiles, so a few hot
    voxels (vessels, artefacts) do not shrink the scale; then mean and standard
    deviation of the clipped brain voxels map the brain to zero mean and unit
    variance. Voxels outside the brain are set to 0.

    Args:
        image: 3D array of one modality.
        brain_mask: boolean array of the same shape; the non-zero voxels of
            ``image`` when ``None``.
        clip_percentiles: ``(low, high)`` percentiles of brain intensities to
            clip to before estimating the scale; ``None`` disables clipping.

    Returns:
        float32 array of the image's shape.
    """
    def mean_and_std(_, clipped):
        return clipped.mean(dtype=np.float64), clipped.std(dtype=np.float64)

    return _standardized(image, brain_mask, clip_percentiles, mean_and_std)


def _standardized(image, brain_mask, clip_percentiles, statistics):
    """``(clipped - centre) / scale`` inside the brain, 0 outside, float32: the frame
    both normalisations share. ``statistics(values, clipped)`` gives ``(centre,
    scale)`` from the brain's values as they are and clipped to ``clip_percentiles``
    (the same array when ``None``); a scale of 0 counts as 1."""
    image = np.asarray(image, dtype=np.float32)
    brain = brain_mask_from_image(image) if brain_mask is None else np.asarray(brain_mask, bool)
    out = np.zeros_like(image)
    values = image[brain]
    if values.size == 0:
        return out
    clipped = values
    if clip_percentiles is not None:
        low, high = np.percentile(values, clip_percentiles)
        clipped = np.clip(values, low, high)
    centre, scale = statistics(values, clipped)
    out[brain] = (clipped - centre) / (scale if scale > 0 else 1.0)
    return out


# How a scan's intensities are made comparable; "zscore" is what every model
# saved before "wm-peak" existed was trained with.
INTENSITY_NORMALIZATIONS = ("zscore", "wm-peak")
_PEAK_BINS = 256      # histogram of the brain's central 98 %, smoothed over
_PEAK_SMOOTH_BINS = 3  # this many bins, to find its peak


def wm_peak_in_brain(image, brain_mask=None, clip_percentiles=(0.5, 99.5)):
    """Intensities centred on the brain's white-matter peak, scaled by its spread.

    The centre is the mode of the brain's intensity histogram, which in a
    T1W, T2W or FLAIR scan of an adult brain is white matter, its largest
    tissue; the scale is the brain's interquartile range over 1.349 (a normal
    distribution's standard deviation). Unlike the mean and standard deviation
    of ``zscore_in_brain``, the peak hardly moves with the lesions: with a
    heavy MS load (4.5 % of the brain), FLAIR-bright lesions pull the mean up
    and the normal tissue's z-score down; its peak-based value moves a few
    times less (``python -m reproduce.realism --normalization`` measures both).

    Args, returns: as ``zscore_in_brain`` (intensities are clipped to the same
    brain percentiles; voxels outside the brain are 0).
    """
    return _standardized(image, brain_mask, clip_percentiles,
                         lambda values, _: wm_peak_statistics(values))


def wm_peak_statistics(values):
    """``(peak, scale)`` of brain intensities: the smoothed histogram's mode over the
    central 98 % of values, and the interquartile range / 1.349."""
    values = np.asarray(values, dtype=np.float64)
    low, q1, q3, high = np.percentile(values, (1, 25, 75, 99))
    if high <= low:
        return float(np.median(values)), float((q3 - q1) / 1.349)
    counts, edges = np.histogram(values, bins=_PEAK_BINS, range=(low, high))
    smooth = ndimage.gaussian_filter1d(counts.astype(np.float64), _PEAK_SMOOTH_BINS)
    peak = int(np.argmax(smooth))
    # Between bins: the vertex of the parabola through the peak bin and its neighbours.
    offset = 0.0
    if 0 < peak < _PEAK_BINS - 1:
        left, centre, right = smooth[peak - 1:peak + 2]
        curvature = left - 2 * centre + right
        offset = 0.5 * (left - right) / curvature if curvature < 0 else 0.0
    width = edges[1] - edges[0]
    return float(edges[peak] + (0.5 + offset) * width), float((q3 - q1) / 1.349)


def normalize_method(normalize):
    """``load_subject``'s ``normalize`` as a method name, ``None`` for raw intensities
    (``True`` is ``"zscore"``, as before there was a choice)."""
    if normalize is True:
        return "zscore"
    if normalize is False or normalize is None:
        return None
    if normalize not in INTENSITY_NORMALIZATIONS:
        raise ValueError(f"intensity normalisation must be one of "
                         f"{', '.join(INTENSITY_NORMALIZATIONS)}, got {normalize!r}")
    return normalize


def normalize_in_brain(image, brain_mask=None, method="zscore"):
    """One modality normalised inside the brain by ``method`` (``INTENSITY_NORMALIZATIONS``)."""
    if method == "zscore":
        return zscore_in_brain(image, brain_mask)
    if method == "wm-peak":
        return wm_peak_in_brain(image, brain_mask)
    raise ValueError(f"intensity normalisation must be one of "
                     f"{', '.join(INTENSITY_NORMALIZATIONS)}, got {method!r}")
