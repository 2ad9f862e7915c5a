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


def _standardized(image, brain_mask, clip_percentiles, statistics, reference=None):
    """``(clipped - centre) / scale`` inside the brain, 0 outside, float32: the frame
    every normalisation shares. ``statistics(values, clipped)`` gives ``(centre,
    scale)`` from the ``reference`` voxels' values (default: the brain's) as they are
    and clipped to their ``clip_percentiles`` (the same array when ``None``); the
    brain is clipped to the same bounds; a scale of 0 counts as 1."""
    image = np.asarray(image, dtype=np.float32)
    brain = brain_mask_from_image(image) if brain_mask is None else np.asarray(brain_mask, bool)
    out = np.zeros_like(image)
    values = image[brain]
    if values.size == 0:
        return out
    read = values if reference is None else image[np.asarray(reference, bool) & brain]
    if read.size == 0:
        read = values
    clipped, read_clipped = values, read
    if clip_percentiles is not None:
        low, high = np.percentile(read, clip_percentiles)
        clipped, read_clipped = np.clip(values, low, high), np.clip(read, low, high)
    centre, scale = statistics(read, read_clipped)
    out[brain] = (clipped - centre) / (scale if scale > 0 else 1.0)
    return out


def brain_core(brain, spacing, depth_mm):
    """The brain's voxels farther than ``depth_mm`` from any voxel outside it (the
    Euclidean distance at voxel size ``spacing``, in mm; the grid's border counts as
    outside). ``depth_mm`` 0 is the brain itself."""
    brain = np.asarray(brain, bool)
    depth_mm = float(depth_mm)
    if not np.isfinite(depth_mm) or depth_mm < 0:
        raise ValueError(f"the core depth must be a finite number of mm >= 0, got {depth_mm}")
    if depth_mm == 0:
        return brain
    spacing = tuple(float(size) for size in np.broadcast_to(spacing, (brain.ndim,)))
    if not all(np.isfinite(size) and size > 0 for size in spacing):
        raise ValueError(f"the voxel size must be positive, got {spacing}")
    padded = np.pad(brain, 1)
    distance = ndimage.distance_transform_edt(padded, sampling=spacing)
    return distance[(slice(1, -1),) * brain.ndim] > depth_mm


# How a scan's intensities are made comparable; "zscore" is what every model
# saved before "wm-peak" existed was trained with.
INTENSITY_NORMALIZATIONS = ("zscore", "wm-peak", "wm-peak-core")
# The depth (mm) below the brain's edge that wm-peak-core reads its statistics from:
# past the rim of non-brain tissue a looser skull strip leaves (4-6 mm in the invariance
# suite), whose own histogram mode otherwise becomes the "white-matter peak".
CORE_MM = 6.0
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


def wm_peak_core_in_brain(image, brain_mask=None, spacing=1.0, core_mm=CORE_MM,
                          clip_percentiles=(0.5, 99.5), core=None):
    """``wm_peak_in_brain`` with the peak, the scale and the clipping bounds read over the
    brain deeper than ``core_mm`` (``brain_core`` at voxel size ``spacing`` mm), and
    applied to the whole brain; ``core``: that core, when already computed for this brain.

    A looser skull strip leaves a rim of fat, skin or bone around the brain, and the
    rim's voxels count as brain: in T1W and T2W its intensity mode can outnumber white
    matter's, and the whole-brain "peak" is then the rim's (the invariance suite's
    4-6 mm rim moved it by 90 % on both development patients). The core holds no rim up
    to ``core_mm``. A brain with no voxel that deep (a small test image) is read whole.
    """
    brain = brain_mask_from_image(image) if brain_mask is None else np.asarray(brain_mask, bool)
    if core is None:
        core = brain_core(brain, spacing, core_mm)
    return _standardized(image, brain, clip_percentiles,
                         lambda values, _: wm_peak_statistics(values), reference=core)


def normalize_in_brain(image, brain_mask=None, method="zscore", spacing=None):
    """One modality normalised inside the brain by ``method`` (``INTENSITY_NORMALIZATIONS``);
    ``wm-peak-core`` needs the voxel size ``spacing`` (mm, a number or one per axis)."""
    return normalize_channels([image], brain_mask, method, spacing)[0]


def normalize_channels(images, brain_mask, method, spacing=None):
    """``normalize_in_brain`` of each of ``images`` (one subject's modalities, one grid),
    the core of ``brain_mask`` computed once for all of them."""
    if method == "zscore":
        return [zscore_in_brain(image, brain_mask) for image in images]
    if method == "wm-peak":
        return [wm_peak_in_brain(image, brain_mask) for image in images]
    if method == "wm-peak-core":
        if spacing is None:
            raise ValueError("wm-peak-core normalisation needs the voxel size (spacing)")
        if brain_mask is None:  # each image's own non-zero voxels, so its own core
            return [wm_peak_core_in_brain(image, None, spacing) for image in images]
        brain = np.asarray(brain_mask, bool)
        core = brain_core(brain, spacing, CORE_MM)
        return [wm_peak_core_in_brain(image, brain, spacing, core=core) for image in images]
    raise ValueError(f"intensity normalisation must be one of "
                     f"{', '.join(INTENSITY_NORMALIZATIONS)}, got {method!r}")
