"""A synthetic MS-lesion phantom: the default data set when no real scans are at hand.

Each subject is the MNI152 ICBM 2009c template (shipped inside nilearn's wheel:
grey- and white-matter probability maps and the brain mask) under a smooth
random deformation, imaged as T1W, T2W and FLAIR by mixing tissue intensities
with the partial volumes, then blurred, bias-modulated and given Rician noise.
White-matter lesions are drawn as ovoids, most often beside the lateral
ventricles, with a lesion load, lesion count and lesion sizes drawn to match the
30 patients of the MSLUB database (Lesjak et al., Neuroinformatics 2017). Their
contrast is set subject by subject so that, after ``zscore_in_brain``, lesions
sit where real lesions do: about 1.3-1.5 brain standard deviations above the
brain mean in FLAIR, 0.6-0.9 in T2W and near 0 in T1W -- not trivially bright.

Files follow the real data's layout, ``<out>/<id>/{T1W,T2W,FLAIR,consensus_gt}.nii.gz``,
so the same loaders read both.
"""

import functools
import importlib.resources
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage, optimize

from tversky_keras.atomic import atomic_path, write_text
from tversky_keras.data.io import MODALITIES
from tversky_keras.data.normalize import zscore_in_brain
from tversky_keras.data.subjects import MASK_NAME

PHANTOM_VERSION = 1

# Lesion load (mm^3) of the 30 MSLUB patients in MNI space: quantile -> value.
_LOAD_QUANTILES = ((0.0, 316.0), (0.25, 1802.0), (0.5, 13934.5), (0.75, 28181.75), (1.0, 52190.0))
# Component volumes of those patients: median 17 mm^3, quartiles 6 and 46 mm^3
# (log-normal sigma = ln(46/6) / 1.349); the heavier tail (95% 261, 99% 2254
# mm^3) comes from medium lesions and one confluent lesion per subject.
_LESION_MEDIAN_MM3 = 17.0
_LESION_LOG_SIGMA = 1.5
# Mean lesion z-score after zscore_in_brain, measured on three MSLUB patients;
# each subject draws its targets inside these ranges.
_LESION_Z = {"T1W": (-0.10, 0.10), "T2W": (0.65, 0.90), "FLAIR": (1.30, 1.50)}
# Pure-tissue intensities (CSF, GM, WM), white matter = 100, tuned so that the
# brain's z-scores after zscore_in_brain resemble MSLUB patients 07 and 26
# (phantom at 2 mm vs real): median / 99th percentile 0.16-0.21 / 1.6-1.75 vs
# 0.23-0.30 / 1.30-1.48 in T1W, -0.34..-0.39 / 3.65-3.9 vs -0.27..-0.38 /
# 2.8-4.0 in T2W, 0.19-0.25 / 1.5-1.8 vs 0.17-0.31 / 1.55-1.67 in FLAIR; lesions
# then come out at 0.8 / 1.55-1.8 / 1.25-1.3 times white matter (real 0.82 /
# 1.55-1.66 / 1.34-1.37). The template holds more grey matter than the patients,
# so its grey-white contrast in T1W and T2W is set below theirs (GM/WM 0.82 and
# 1.10 vs 0.70 and 1.34), and white matter still sits further from the brain
# mean there (z 1.0 and -0.8 vs 0.75 and -0.42).
_TISSUE_INTENSITY = {"T1W": (10.0, 82.0, 100.0),
                     "T2W": (380.0, 110.0, 100.0),
                     "FLAIR": (5.0, 118.0, 100.0)}
_NOISE = 0.03            # Rician noise sigma, as a fraction of white-matter intensity
_TEXTURE = 0.07          # tissue texture: relative amplitude
_TEXTURE_MM = 2.5        # and Gaussian width
_BIAS = 0.05             # residual bias field (the real scans are N4-corrected)
_BLUR_VOXELS = 0.5       # partial-volume blur, Gaussian sigma in voxels
_DEFORM_MM = 2.0         # displacement standard deviation per axis
_DEFORM_LENGTH_MM = 40.0
_GRID_MARGIN_MM = 8.0    # room for deformation and scale around the template brain
_GRID_MULTIPLE = 8       # grid sizes divisible by 8 suit a U-Net with three poolings
_VENTRICLE_GRID_MM = 2.0  # ventricles are found once, on a 2 mm grid
_PERIVENTRICULAR_MM = 5.0
_PERIVENTRICULAR_WEIGHT = 30.0


@dataclass(frozen=True)
class SyntheticSubject:
    """One synthetic subject.

    Attributes:
        images: modality name (``T1W``, ``T2W``, ``FLAIR``) -> float32 array,
            zero outside the brain.
        lesion: uint8 lesion mask of the same shape.
        affine: 4x4 voxel-to-MNI-millimetre affine.
        tissue: ``CSF``, ``GM``, ``WM`` -> float32 probability maps of the
            deformed template (zero outside the brain).
        ventricle_distance_mm: float32 distance to the lateral ventricles.
        lesion_load_target_mm3: the load the lesions were drawn to.
    """

    images: dict
    lesion: np.ndarray
    affine: np.ndarray
    tissue: dict
    ventricle_distance_mm: np.ndarray
    lesion_load_target_mm3: float


@dataclass(frozen=True)
class _Template:
    gm: np.ndarray
    wm: np.ndarray
    brain: np.ndarray
    ventricle_distance_mm: np.ndarray
    affine: np.ndarray


def subject_seed(seed, index):
    """The seed of subject ``index`` of the data set made with ``seed``."""
    return np.random.SeedSequence(seed, spawn_key=(index,))


def lesion_loads(n_subjects, seed=0):
    """Lesion loads (mm^3) for a data set, spread over the real distribution.

    Stratified sampling: the unit interval is cut into ``n_subjects`` equal
    strata, one uniform draw per stratum goes through the quantile function of
    the 30 MSLUB patients' loads (log-linear between their quartiles), and the
    strata are dealt to subjects in random order. The lowest load therefore
    always lies in the bottom ``1/n_subjects`` of the real distribution and the
    highest in the top one (with 15 subjects: below 503 and above 44282 mm^3),
    so the very-low and very-high load subjects the paper's figures need are
    there for any seed.

    Args:
        n_subjects: number of loads.
        seed: int or ``SeedSequence``.

    Returns:
        float array of ``n_subjects`` loads in mm^3.
    """
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be at least 1, got {n_subjects}")
    rng = np.random.default_rng(seed)
    strata = (rng.permutation(n_subjects) + rng.uniform(size=n_subjects)) / n_subjects
    return _load_quantile(strata)


def _load_quantile(u):
    probs, loads = np.array(_LOAD_QUANTILES).T
    return np.exp(np.interp(u, probs, np.log(loads)))


# --- the template -----------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _template_1mm():
    """Brain mask, GM and WM probabilities of MNI152 2009c at 1 mm, and its affine."""
    folder = importlib.resources.files("nilearn") / "datasets" / "data"
    maps = {}
    for name in ("t1", "gm", "wm"):
        image = nib.load(str(folder / f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz"))
        maps[name] = np.asarray(image.dataobj, dtype=np.float32)
    if not np.allclose(np.abs(np.diag(image.affine)[:3]), 1.0):
        raise RuntimeError(f"nilearn's MNI152 template is not at 1 mm: {image.affine}")
    # Kept for the life of the process: crop to the brain (half the memory).
    brain = maps["t1"] > 0
    corners = np.argwhere(brain)
    low = np.maximum(corners.min(0) - 2, 0)
    box = tuple(slice(lo, hi + 3) for lo, hi in zip(low, corners.max(0)))
    shift = np.eye(4)
    shift[:3, 3] = low
    return (brain[box].astype(np.float32), maps["gm"][box] / 255, maps["wm"][box] / 255,
            image.affine @ shift)


@functools.lru_cache(maxsize=8)
def _grid(spacing):
    """Shape and origin (template voxel coordinates) of the phantom grid."""
    corners = np.argwhere(_template_1mm()[0] > 0)
    low, high = corners.min(0), corners.max(0)
    extent_voxels = (high - low + 2 * _GRID_MARGIN_MM) / spacing
    shape = (np.ceil(extent_voxels / _GRID_MULTIPLE) * _GRID_MULTIPLE).astype(int)
    origin = (low + high) / 2 - (shape - 1) * spacing / 2
    return tuple(int(n) for n in shape), origin


def _grid_points(spacing, grid_of=None):
    """Voxel centres of the ``spacing`` grid, in voxel coordinates of another grid.

    ``grid_of`` is the spacing of that other grid; ``None`` means the 1 mm template.
    """
    shape, origin = _grid(spacing)
    axes = [origin[i] + spacing * np.arange(shape[i]) for i in range(3)]
    if grid_of is not None:
        other_origin = _grid(grid_of)[1]
        axes = [(axes[i] - other_origin[i]) / grid_of for i in range(3)]
    return np.stack(np.meshgrid(*axes, indexing="ij")).astype(np.float32)


def _resample_template(volume, spacing):
    # Anti-aliasing as in skimage's rescale: sigma = (factor - 1) / 2.
    smoothed = ndimage.gaussian_filter(volume, max(spacing - 1.0, 0.0) / 2)
    return ndimage.map_coordinates(smoothed, _grid_points(spacing), order=1)


@functools.lru_cache(maxsize=4)
def _template(spacing):
    brain, gm, wm, affine = _template_1mm()
    _, origin = _grid(spacing)
    to_template = np.diag([spacing, spacing, spacing, 1.0])
    to_template[:3, 3] = origin
    if spacing == _VENTRICLE_GRID_MM:
        ventricle_distance = _ventricle_distance_mm()
    else:
        ventricle_distance = ndimage.map_coordinates(
            _ventricle_distance_mm(), _grid_points(spacing, _VENTRICLE_GRID_MM),
            order=1, mode="nearest")
    return _Template(gm=_resample_template(gm, spacing), wm=_resample_template(wm, spacing),
                     brain=_resample_template(brain, spacing),
                     ventricle_distance_mm=ventricle_distance, affine=affine @ to_template)


@functools.lru_cache(maxsize=1)
def _ventricle_distance_mm():
    """Distance (mm) to the lateral ventricles, on the 2 mm grid.

    The ventricles are the large pockets of CSF deep inside the brain (over
    10 mm from its surface) whose walls are largely white matter; the deep
    cisterns and the interhemispheric fissure, walled by grey matter, are not.
    """
    brain_1mm, gm_1mm, wm_1mm, _ = _template_1mm()
    spacing = _VENTRICLE_GRID_MM
    brain = _resample_template(brain_1mm, spacing)
    gm, wm = _resample_template(gm_1mm, spacing), _resample_template(wm_1mm, spacing)
    depth = ndimage.distance_transform_edt(brain > 0.5, sampling=spacing)
    pockets = (brain - gm - wm > 0.5) & (depth > 10.0)
    labels, n = ndimage.label(pockets)
    ventricles = np.zeros_like(pockets)
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        pocket = labels[box] == index
        wall = ndimage.binary_dilation(pocket) & ~pocket
        if pocket.sum() * spacing**3 > 1000 and wm[box][wall].mean() > 0.2:
            ventricles[box] |= pocket
    if not ventricles.any():
        raise RuntimeError("no lateral ventricles found in the MNI152 template")
    return ndimage.distance_transform_edt(~ventricles, sampling=spacing).astype(np.float32)


def mni152_tissue(affine, shape):
    """The template the phantom is drawn from, sampled on any grid in MNI space.

    Real scans registered to MNI space and phantom subjects can then be
    compared region by region with the same masks.

    Args:
        affine: the grid's 4x4 voxel-to-MNI-millimetre affine.
        shape: the grid's 3D shape.

    Returns:
        dict of float32 arrays of ``shape``: ``CSF``, ``GM``, ``WM``
        probabilities (smoothed to the grid's voxel size), ``brain_depth_mm``
        (distance to the template brain's surface, 0 outside) and
        ``ventricle_distance_mm`` (distance to its lateral ventricles).
    """
    brain, gm, wm, template_affine = _template_1mm()
    spacing = float(np.mean(np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)))
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    to_template = np.linalg.inv(template_affine) @ np.asarray(affine, dtype=float)
    points = (to_template[:3, :3] @ ijk + to_template[:3, 3:]).astype(np.float32)
    to_coarse = (points - _grid(_VENTRICLE_GRID_MM)[1][:, None]) / _VENTRICLE_GRID_MM
    sigma = max(spacing - 1.0, 0.0) / 2

    def sample(volume, coordinates, **kwargs):
        return ndimage.map_coordinates(volume, coordinates, order=1, **kwargs).reshape(shape)

    probability = {name: sample(ndimage.gaussian_filter(volume, sigma), points)
                   for name, volume in (("brain", brain), ("GM", gm), ("WM", wm))}
    inside = probability.pop("brain")
    probability["CSF"] = np.clip(inside - probability["GM"] - probability["WM"], 0.0, 1.0)
    return {**{name: probability[name] for name in ("CSF", "GM", "WM")},
            "brain_depth_mm": sample(_brain_depth_mm(), to_coarse),
            "ventricle_distance_mm": sample(_ventricle_distance_mm(), to_coarse, mode="nearest")}


@functools.lru_cache(maxsize=1)
def _brain_depth_mm():
    """Distance (mm) to the template brain's surface, on the 2 mm grid."""
    brain = _resample_template(_template_1mm()[0], _VENTRICLE_GRID_MM) > 0.5
    return ndimage.distance_transform_edt(brain, sampling=_VENTRICLE_GRID_MM).astype(np.float32)


# --- random fields and anatomy ------------------------------------------------

def _smooth_field(rng, shape, spacing, length_mm):
    """A unit-variance random field that varies over about ``length_mm``."""
    coarse_shape = np.maximum(np.ceil(np.array(shape) * spacing / length_mm).astype(int) + 1, 2)
    coarse = rng.standard_normal(coarse_shape)
    field = ndimage.zoom(coarse, np.array(shape) / coarse_shape, order=1, mode="nearest",
                         grid_mode=True)
    return ((field - field.mean()) / field.std()).astype(np.float32)


def _deformed_anatomy(rng, template, spacing):
    """The template under a random global scale and smooth displacement."""
    shape = template.gm.shape
    centre = (np.array(shape) - 1) / 2
    scale = rng.uniform(0.92, 1.05) * rng.uniform(0.97, 1.03, size=3)
    points = np.indices(shape, dtype=np.float32)
    for axis in range(3):
        displacement = _DEFORM_MM / spacing * _smooth_field(rng, shape, spacing, _DEFORM_LENGTH_MM)
        points[axis] = centre[axis] + (points[axis] - centre[axis]) / scale[axis] + displacement

    def warp(volume, **kwargs):
        return ndimage.map_coordinates(volume, points, order=1, **kwargs)

    brain = warp(template.brain) > 0.5
    gm, wm = warp(template.gm) * brain, warp(template.wm) * brain
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * brain
    ventricle_distance = warp(template.ventricle_distance_mm, mode="nearest")
    return brain, {"CSF": csf, "GM": gm, "WM": wm}, ventricle_distance


# --- lesions -------------------------------------------------------------------

def _lesion_volumes(rng, load_mm3, voxel_mm3):
    """Volumes (mm^3) of a subject's lesions; the first is the confluent one.

    Three kinds, as in the real patients: many small lesions (log-normal,
    median 17 mm^3), their count growing with the load (about 25 at 1000 mm^3,
    95 at 14000 mm^3); one largest, often confluent lesion holding 15-35 % of
    a low load and up to 90 % of a high one; and medium lesions of 100-2000
    mm^3 for whatever load is left. A low load that the small lesions would
    overfill shrinks them instead. Lesions below a voxel cannot be drawn, so at
    coarse spacings there is at most one small lesion per two voxels of load.
    """
    count = 25 * np.sqrt(load_mm3 / 1000) * np.exp(0.35 * rng.standard_normal())
    count = int(np.clip(round(min(count, load_mm3 / (2 * voxel_mm3))), 0, 400))
    heaviness = np.clip(np.log(load_mm3 / 3000) / np.log(10), 0.0, 1.0)
    largest = load_mm3 * (rng.uniform(0.15, 0.35 + 0.55 * heaviness) if count else 1.0)
    small = _LESION_MEDIAN_MM3 * np.exp(_LESION_LOG_SIGMA * rng.standard_normal(count))
    small = np.clip(small, voxel_mm3, 500.0)
    left = load_mm3 - largest - small.sum()
    if left < 0:
        small *= (load_mm3 - largest) / small.sum()
    return np.concatenate([[largest], small, _medium_lesions(rng, left)])


def _medium_lesions(rng, volume_mm3):
    """Lesions of 100-2000 mm^3 (log-uniform) adding up to ``volume_mm3``."""
    volumes = []
    while sum(volumes) < volume_mm3:
        volumes.append(np.exp(rng.uniform(np.log(100), np.log(2000))))
    volumes = np.array(volumes)
    return volumes * volume_mm3 / volumes.sum() if volumes.size else volumes


def _random_rotation(rng):
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _ellipsoid_axes(rng, volume_mm3, elongation):
    """Semi-axes (mm) of an ovoid of the given volume, random proportions."""
    ratios = np.exp(elongation * rng.standard_normal(3))
    ratios /= np.cbrt(ratios.prod())
    return np.cbrt(volume_mm3 * 3 / (4 * np.pi)) * ratios


@dataclass(frozen=True)
class _Ovoid:
    centre: np.ndarray     # voxel coordinates
    axes_mm: np.ndarray
    rotation: np.ndarray
    severity: float


def _lesion_ovoids(rng, volumes, wm, ventricle_distance, spacing):
    """Place the lesions: the first as a chain of overlapping ovoids along a
    ventricle (confluent), the others as single ovoids in white matter, denser
    near the ventricles."""
    deep_wm = np.argwhere(wm > 0.6)
    weight = 1 + _PERIVENTRICULAR_WEIGHT * np.exp(
        -ventricle_distance[tuple(deep_wm.T)] / _PERIVENTRICULAR_MM)
    centres = deep_wm[rng.choice(len(deep_wm), size=len(volumes) - 1, p=weight / weight.sum())]
    centres = centres + rng.uniform(-0.5, 0.5, size=centres.shape)
    ovoids = [_Ovoid(c, _ellipsoid_axes(rng, v, 0.3), _random_rotation(rng),
                     float(np.exp(0.25 * rng.standard_normal())))
              for c, v in zip(centres, volumes[1:])]
    return _confluent_ovoids(rng, volumes[0], wm, ventricle_distance, spacing) + ovoids


def _confluent_ovoids(rng, volume_mm3, wm, ventricle_distance, spacing):
    """Overlapping ovoids in the white matter around a ventricle, each one
    centred within reach of an earlier one, so that they merge."""
    pieces = int(np.clip(round(volume_mm3 / 2500), 1, 16))
    rim = np.argwhere((wm > 0.5) & (ventricle_distance < 10.0))
    centres = [rim[rng.integers(len(rim))].astype(float)]
    ovoids = []
    for _ in range(pieces):
        # Overlap: each piece is 30 % bigger than its share of the volume.
        axes = _ellipsoid_axes(rng, 1.3 * volume_mm3 / pieces, 0.4)
        ovoids.append(_Ovoid(centres[-1], axes, _random_rotation(rng),
                             float(np.exp(0.25 * rng.standard_normal()))))
        anchor = centres[rng.integers(len(centres))]
        reach = np.linalg.norm((rim - anchor) * spacing, axis=1)
        near = np.flatnonzero((reach > 0.3 * axes.mean()) & (reach < 0.9 * axes.mean()))
        centres.append(rim[rng.choice(near)] if near.size else anchor)
    return ovoids


def _render_ovoids(ovoids, shape, spacing, size_factor):
    """Occupancy (0..1, a one-voxel ramp at the border) and severity maps."""
    occupancy = np.zeros(shape, np.float32)
    severity = np.zeros(shape, np.float32)
    for ovoid in ovoids:
        axes = ovoid.axes_mm * size_factor
        half = int(np.ceil(axes.max() / spacing)) + 1
        low = np.maximum(np.floor(ovoid.centre).astype(int) - half, 0)
        high = np.minimum(np.floor(ovoid.centre).astype(int) + half + 1, shape)
        box = tuple(slice(lo, hi) for lo, hi in zip(low, high))
        offsets = np.stack(np.meshgrid(*[np.arange(lo, hi) for lo, hi in zip(low, high)],
                                       indexing="ij"), axis=-1)
        local = (offsets - ovoid.centre) * spacing @ ovoid.rotation
        radius = np.sqrt(((local / axes) ** 2).sum(-1))
        occ = np.clip(0.5 + (1 - radius) * axes.min() / spacing, 0, 1)
        inside = occ > occupancy[box]
        occupancy[box] = np.where(inside, occ, occupancy[box])
        severity[box] = np.where(inside, ovoid.severity, severity[box])
    return occupancy, severity


def _lesions(rng, load_mm3, wm, ventricle_distance, spacing):
    """Lesion fraction per voxel, its mask, and the lesions' severity map.

    Lesions live in white matter only (WM probability > 0.5). Ovoids cut by
    grey matter or overlapping each other lose volume, so all sizes are
    rescaled, a few times, until the mask's volume is within 10 % of the load.
    """
    volumes = _lesion_volumes(rng, load_mm3, spacing**3)
    ovoids = _lesion_ovoids(rng, volumes, wm, ventricle_distance, spacing)
    in_wm = wm > 0.5
    size_factor = 1.0
    for _ in range(4):
        occupancy, severity = _render_ovoids(ovoids, wm.shape, spacing, size_factor)
        fraction = occupancy * in_wm
        mask = fraction >= 0.5
        achieved = mask.sum() * spacing**3
        if abs(achieved - load_mm3) <= 0.1 * load_mm3:
            break
        size_factor *= np.clip(load_mm3 / max(achieved, spacing**3), 0.5, 2.0) ** (1 / 3)
    # Real lesions are patchy inside, too: +-20 % over a few millimetres.
    patches = 1 + 0.2 * _smooth_field(rng, wm.shape, spacing, 6.0)
    return fraction, mask, severity * np.clip(patches, 0.2, None)


# --- imaging -------------------------------------------------------------------

def _tissue_image(tissue, modality, rng, texture):
    """Partial-volume mix of the tissue intensities, and the white-matter one.

    Each subject's tissue intensities vary by 1.5 %, as between scanners."""
    csf, gm, wm = np.array(_TISSUE_INTENSITY[modality]) * (1 + 0.015 * rng.standard_normal(3))
    total = np.maximum(tissue["CSF"] + tissue["GM"] + tissue["WM"], 1e-6)
    image = (tissue["CSF"] * csf + tissue["GM"] * gm + tissue["WM"] * wm) / total
    return image * (1 + _TEXTURE * texture), wm


def _calibrated_image(rng, modality, target_z, tissue, brain, lesion, spacing, texture):
    """One modality whose mean lesion z-score (after zscore_in_brain) is ``target_z``.

    Lesions replace white matter in proportion to their fraction, with
    intensity ``wm + c * severity``. Blur and bias are linear, so the clean
    image is ``C0 + c * C1``; the Rician noise is drawn once, and ``c`` is the
    root of the measured lesion z-score minus the target (Brent's method),
    with ``|c|`` at most six brain standard deviations: where lesions are too
    small to reach the target at that contrast, they stay at it rather than glow.
    """
    fraction, mask, severity = lesion
    base, wm_intensity = _tissue_image(tissue, modality, rng, texture)
    bias = np.exp(_BIAS * _smooth_field(rng, brain.shape, spacing, 60.0))
    c0 = ndimage.gaussian_filter(bias * ((1 - fraction) * base + fraction * wm_intensity),
                                 _BLUR_VOXELS)
    c1 = ndimage.gaussian_filter(bias * fraction * severity, _BLUR_VOXELS)
    noise = _NOISE * wm_intensity * rng.standard_normal((2,) + brain.shape, dtype=np.float32)

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


def synthesize_subject(seed, spacing=2.0, lesion_load_mm3=None):
    """One synthetic MS subject: T1W, T2W, FLAIR and the lesion mask.

    Args:
        seed: int or ``numpy.random.SeedSequence``; the same seed gives the
            same subject.
        spacing: isotropic voxel size in mm (the template is 1 mm).
        lesion_load_mm3: total lesion volume to draw; ``None`` draws one from
            the real patients' distribution.

    Returns:
        ``SyntheticSubject``.
    """
    if not 0.5 <= spacing <= 8.0:
        raise ValueError(f"spacing must be between 0.5 and 8 mm, got {spacing}")
    if lesion_load_mm3 is not None and lesion_load_mm3 <= 0:
        raise ValueError(f"lesion_load_mm3 must be positive, got {lesion_load_mm3}")
    rng = np.random.default_rng(seed)
    load = float(_load_quantile(rng.uniform()) if lesion_load_mm3 is None else lesion_load_mm3)
    template = _template(float(spacing))
    brain, tissue, ventricle_distance = _deformed_anatomy(rng, template, spacing)
    lesion = _lesions(rng, load, tissue["WM"], ventricle_distance, spacing)
    texture = ndimage.gaussian_filter(rng.standard_normal(brain.shape, dtype=np.float32),
                                      _TEXTURE_MM / spacing)
    texture /= texture.std()
    images = {m: _calibrated_image(rng, m, rng.uniform(*_LESION_Z[m]), tissue, brain, lesion,
                                   spacing, texture)
              for m in MODALITIES}
    return SyntheticSubject(images=images, lesion=lesion[1].astype(np.uint8),
                            affine=template.affine, tissue=tissue,
                            ventricle_distance_mm=ventricle_distance,
                            lesion_load_target_mm3=load)


# --- the data set on disk ------------------------------------------------------

def _manifest(n_subjects, seed, spacing):
    return {"generator": "tversky_keras.data.phantom", "version": PHANTOM_VERSION,
            "n_subjects": n_subjects, "seed": seed, "spacing": float(spacing),
            "subjects": [f"synth{i:02d}" for i in range(n_subjects)],
            "files": [*MODALITIES, MASK_NAME],
            "template": "MNI152 ICBM 2009c nonlinear symmetric (nilearn)"}


def _read_manifest(out_dir):
    path = Path(out_dir) / "phantom.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _remove_phantom(out_dir, manifest):
    """Delete the files of an earlier phantom, manifest first: a half-rewritten
    folder must not pass for the old data set, nor keep its extra subjects."""
    if manifest is None:
        return
    (out_dir / "phantom.json").unlink()
    for subject in manifest["subjects"]:
        for name in manifest["files"]:
            (out_dir / subject / f"{name}.nii.gz").unlink(missing_ok=True)
        if (out_dir / subject).is_dir() and not any((out_dir / subject).iterdir()):
            (out_dir / subject).rmdir()


def _save_nifti(folder, name, array, affine):
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=4)  # 4 = MNI152
    image.set_sform(affine, code=4)
    with atomic_path(folder / f"{name}.nii.gz") as temporary:
        nib.save(image, temporary)


def synthesize_dataset(out_dir, n_subjects=15, seed=0, spacing=2.0, progress=True):
    """Write a synthetic data set as ``out_dir/<id>/{T1W,T2W,FLAIR,consensus_gt}.nii.gz``.

    Lesion loads are stratified over the real distribution (``lesion_loads``);
    subject ``i`` is ``synthesize_subject(subject_seed(seed, i), spacing, load_i)``.
    Files are written atomically and ``phantom.json`` last, so its presence
    with matching parameters marks a complete data set: calling again with the
    same arguments returns at once, while other arguments first delete the
    files of the phantom recorded there.

    Args:
        out_dir: output folder (created).
        n_subjects: number of subjects, ids ``synth00``, ``synth01``, ...
        seed: the data set's seed.
        spacing: voxel size in mm.
        progress: print one line per subject to stderr.

    Returns:
        list of the subjects' folders (``Path``).
    """
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be at least 1, got {n_subjects}")
    out_dir = Path(out_dir)
    manifest = _manifest(n_subjects, seed, spacing)
    folders = [out_dir / name for name in manifest["subjects"]]
    old = _read_manifest(out_dir)
    if old == manifest and all((f / f"{name}.nii.gz").is_file()
                               for f in folders for name in manifest["files"]):
        return folders
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_phantom(out_dir, old)
    for index, (folder, load) in enumerate(zip(folders, lesion_loads(n_subjects, seed))):
        subject = synthesize_subject(subject_seed(seed, index), spacing, load)
        folder.mkdir(exist_ok=True)
        for modality, image in subject.images.items():
            _save_nifti(folder, modality, image, subject.affine)
        _save_nifti(folder, MASK_NAME, subject.lesion, subject.affine)
        if progress:
            print(f"phantom {index + 1}/{n_subjects}: {folder.name}, lesion load "
                  f"{subject.lesion.sum() * spacing**3:.0f} mm^3", file=sys.stderr, flush=True)
    write_text(out_dir / "phantom.json", json.dumps(manifest, indent=1))
    return folders
