"""Per-modality intensity normalisation inside the brain."""

import numpy as np


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
    image = np.asarray(image, dtype=np.float32)
    brain = brain_mask_from_image(image) if brain_mask is None else np.asarray(brain_mask, bool)
    out = np.zeros_like(image)
    values = image[brain]
    if values.size == 0:
        return out
    if clip_percentiles is not None:
        low, high = np.percentile(values, clip_percentiles)
        values = np.clip(values, low, high)
    mean = values.mean(dtype=np.float64)
    std = values.std(dtype=np.float64)
    out[brain] = (values - mean) / (std if std > 0 else 1.0)
    return out
