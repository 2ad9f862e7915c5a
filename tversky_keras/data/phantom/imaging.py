"""Imaging a subject as T1W, T2W and FLAIR, in one of two appearances.

Both sum tissue intensities over the partial volumes (with deep grey nuclei,
a bright lining of the ventricles and diffusely changed deep white matter),
then blur, bias-modulate and add Rician noise. The calibrated appearance
(``_calibrated_image``) uses the intensities calibrated to MSLUB patients 07
and 26 and sets each subject's lesion contrast so that its mean lesion
z-score after ``zscore_in_brain`` is a target drawn from the real patients'
range. The randomized one (``_randomized_image``, domain randomisation as
SynthSeg) draws each subject's own contrasts, lesion contrast, bias field,
resolution and noise.
"""

import numpy as np
from scipy import ndimage, optimize

from tversky_keras.data.normalize import zscore_in_brain
from tversky_keras.data.phantom.calibration import (_BIAS, _BIAS_MM, _BIAS_RANGE, _BLUR_VOXELS,
                                                    _CONTRAST_SCALE, _DARK_FLAIR_CSF,
                                                    _DEEP_WHITE,
                                                    _LESION_RATIO, _NOISE, _NOISE_RANGE, _RIM,
                                                    _SKULL_RIM_INTENSITY, _SKULL_RIM_MM,
                                                    _SKULL_RIM_PROBABILITY, _SKULL_RIM_TEXTURE,
                                                    _SLICE_MM, _SYNTH_LESION_RATIO,
                                                    _SYNTH_EDGE_LEVEL, _SYNTH_TISSUE, _TEXTURE,
                                                    _THIN_SLICE_MM,
                                                    _TISSUE_INTENSITY, _VENTRICULAR_CSF_MM,
                                                    _VESSEL_INTENSITY)
from tversky_keras.data.phantom.fields import _smooth_field


def _tissue_image(anatomy, modality, rng, texture, spacing, intensities=None, edge_level=None):
    """Partial-volume sum of the tissue intensities, and the white-matter one.

    Each subject's tissue intensities vary by 1.5 %, as between scanners, or
    are ``intensities`` (``_TISSUE_INTENSITY``'s five classes) when given.
    ``edge_level``: the brightness of the share of an edge voxel that skull
    stripping cut off, relative to the brain's mean (default: the calibrated
    1-mm shell's, ``1 - 0.5 / spacing``)."""
    if intensities is None:
        intensities = np.array(_TISSUE_INTENSITY[modality]) * (1 + 0.015 * rng.standard_normal(5))
    ventricular_csf, other_csf, gm, deep_gm, wm = intensities
    tissue, vessels = anatomy.tissue, anatomy.vessels
    csf = other_csf + (ventricular_csf - other_csf) * np.exp(
        -anatomy.ventricle_distance_mm / _VENTRICULAR_CSF_MM)
    grey = gm + anatomy.deep_grey * (deep_gm - gm)
    white = wm * (1 + _DEEP_WHITE[modality] * anatomy.deep_white)
    parenchyma = (tissue["GM"] * grey + tissue["WM"] * white) * (
        1 + _RIM[modality] * anatomy.ventricle_band)
    image = ((tissue["CSF"] - vessels) * csf + vessels * _VESSEL_INTENSITY[modality]
             + parenchyma)
    # Outside the brain, and the share of an edge voxel that skull stripping
    # cut off. Real scans are z-scored at 1 mm and resampled after
    # (load_subject): there, 1-mm voxels cut by the brain's edge are darker
    # (about half as bright as tissue: the masks are soft after registration),
    # and those outside are 0 in z, the brain's mean. A coarser voxel's cut-off
    # share holds both, a 1-mm shell of half-dark and the rest at the mean.
    inside = tissue["CSF"] + tissue["GM"] + tissue["WM"]
    if edge_level is None:
        edge_level = max(1.0 - 0.5 / spacing, 0.0)
    background = np.mean(image[inside > 0.99]) * edge_level
    image = image + (1 - inside) * background
    return image * (1 + _TEXTURE * texture), wm


def _calibrated_image(rng, modality, target_z, anatomy, lesion, spacing, texture):
    """One modality whose mean lesion z-score (after zscore_in_brain) is ``target_z``.

    Lesions replace white matter in proportion to their fraction, with
    intensity ``wm + c * severity``. Blur and bias are linear, so the clean
    image is ``C0 + c * C1``; the Rician noise is drawn once, and ``c`` is the
    root of the measured lesion z-score minus the target (Brent's method),
    with ``|c|`` at most six brain standard deviations: where lesions are too
    small to reach the target at that contrast, they stay at it rather than glow.
    """
    fraction, mask, severity = lesion
    brain = anatomy.brain
    base, wm_intensity = _tissue_image(anatomy, modality, rng, texture, spacing)
    bias = np.exp(_BIAS[modality] * _smooth_field(rng, brain.shape, spacing, _BIAS_MM))
    c0 = ndimage.gaussian_filter(bias * ((1 - fraction) * base + fraction * wm_intensity),
                                 _BLUR_VOXELS)
    c1 = ndimage.gaussian_filter(bias * fraction * severity, _BLUR_VOXELS)
    noise = _NOISE[modality] * wm_intensity * rng.standard_normal((2,) + brain.shape,
                                                                  dtype=np.float32)

    def image(c):
        return (np.hypot(c0 + c * c1 + noise[0], noise[1]) * brain).astype(np.float32)

    def z_error(c):
        return float(zscore_in_brain(image(c), brain)[mask].mean()) - target_z

    if not mask.any():
        return image(0.0)
    error_at_zero = z_error(0.0)
    limit = 6 * image(0.0)[brain].std() * np.sign(-error_at_zero)
    if np.sign(z_error(limit)) == np.sign(error_at_zero):
        return image(limit)
    low, high = sorted((0.0, limit))
    return image(optimize.brentq(z_error, low, high, xtol=1e-3 * wm_intensity))


def _log_uniform(rng, low, high, size=None):
    return np.exp(rng.uniform(np.log(low), np.log(high), size=size))


def _acquisition_blur(rng, spacing):
    """Gaussian sigmas (voxels) of an acquisition's point spread: half the
    time a 3D one (near-isotropic voxels), half a 2D one with thick slices
    along one random axis; FWHM = the acquired voxel, never below the grid's
    own partial-volume blur."""
    acquired = rng.uniform(*_THIN_SLICE_MM, size=3)
    if rng.uniform() < 0.5:
        acquired[rng.integers(3)] = rng.uniform(*_SLICE_MM)
    return np.maximum(acquired / 2.355 / spacing, _BLUR_VOXELS)


def _randomized_image(rng, modality, anatomy, lesion, spacing, texture, dark_csf=False):
    """One modality with a random look (the ranges above): tissue and lesion
    contrasts, bias field, resolution and noise of the subject's own draw. With
    ``dark_csf``, FLAIR's ventricular and other CSF are drawn from
    ``_DARK_FLAIR_CSF`` (relative to white matter): suppressed as real FLAIR shows it,
    where the calibrated values (effective values for z-scores) never are; and the cut
    brain edge's brightness is drawn as the synthseg look's (``_SYNTH_EDGE_LEVEL``), from
    dark to tissue-bright."""
    brain = anatomy.brain
    calibrated = np.array(_TISSUE_INTENSITY[modality])
    scale = rng.uniform(*_CONTRAST_SCALE, size=5)
    intensities = 100.0 * (calibrated / 100.0) ** scale
    edge_level = None
    if dark_csf:
        if modality == "FLAIR":
            intensities[:2] = [intensities[4] * rng.uniform(*bounds)
                               for bounds in _DARK_FLAIR_CSF]
        edge_level = rng.uniform(*_SYNTH_EDGE_LEVEL)
    base, wm = _tissue_image(anatomy, modality, rng, texture, spacing, intensities, edge_level)
    return _acquired(rng, base, wm, lesion, brain, spacing, _LESION_RATIO[modality])


def _acquired(rng, base, wm, lesion, brain, spacing, lesion_ratio):
    """The tissue image ``base`` with the lesions at a ratio to white matter drawn from
    ``lesion_ratio``, through a random bias field, acquisition blur and Rician noise:
    what both random looks share, drawn in this order."""
    fraction, _, severity = lesion
    ratio = _log_uniform(rng, *lesion_ratio)
    lesion_intensity = wm * ratio ** severity
    bias = np.exp(rng.uniform(*_BIAS_RANGE) * _smooth_field(rng, brain.shape, spacing, _BIAS_MM))
    clean = ndimage.gaussian_filter(
        bias * ((1 - fraction) * base + fraction * lesion_intensity),
        _acquisition_blur(rng, spacing))
    sigma = _log_uniform(rng, *_NOISE_RANGE) * wm
    noise = sigma * rng.standard_normal((2,) + brain.shape, dtype=np.float32)
    return (np.hypot(clean + noise[0], noise[1]) * brain).astype(np.float32)


def _synthseg_image(rng, modality, anatomy, lesion, spacing, texture):
    """One modality with a SynthSeg-grade look: every tissue class's intensity drawn on
    its own (``_SYNTH_TISSUE``, relative to white matter, FLAIR's CSF down to nulled),
    lesion contrast from barely visible to very bright (``_SYNTH_LESION_RATIO``), then
    the randomized look's bias field, resolution and noise."""
    brain = anatomy.brain
    wm = 100.0
    drawn = [rng.uniform(*bounds) for bounds in _SYNTH_TISSUE[modality]]
    intensities = np.array([wm * value for value in drawn] + [wm])
    edge_level = rng.uniform(*_SYNTH_EDGE_LEVEL)
    base, wm = _tissue_image(anatomy, modality, rng, texture, spacing, intensities, edge_level)
    return _acquired(rng, base, wm, lesion, brain, spacing, _SYNTH_LESION_RATIO[modality])


def _skull_rim(rng, brain, spacing):
    """With ``_SKULL_RIM_PROBABILITY``, the voxels within a drawn thickness
    (``_SKULL_RIM_MM``) outside the brain that a looser skull strip keeps; else ``None``."""
    if rng.uniform() >= _SKULL_RIM_PROBABILITY:
        return None
    thickness = rng.uniform(*_SKULL_RIM_MM)
    outside = ndimage.distance_transform_edt(~brain, sampling=spacing)
    rim = (outside > 0) & (outside <= thickness)
    return rim if rim.any() else None


def _with_skull_rim(rng, images, rim, spacing):
    """``images`` with ``rim`` filled by non-brain tissue: per modality an intensity
    relative to the brain's median (``_SKULL_RIM_INTENSITY``), coarsely textured."""
    texture = 1 + _SKULL_RIM_TEXTURE * _smooth_field(rng, rim.shape, spacing, 8.0)
    filled = {}
    for modality, image in images.items():
        level = rng.uniform(*_SKULL_RIM_INTENSITY) * float(np.median(image[image > 0]))
        filled[modality] = np.where(rim, np.maximum(level * texture, 0.01 * level),
                                    image).astype(np.float32)
    return filled
