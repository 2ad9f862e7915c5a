"""A synthetic MS-lesion phantom: the default data set when no real scans are at hand.

Each subject is the MNI152 ICBM 2009a template (shipped inside nilearn's wheel:
grey- and white-matter probability maps and the brain mask), shrunk to a real
brain's size and put under a smooth random deformation. The template's blurred
tissue maps are made into sharp boundaries, its collapsed sulci are re-opened
as thin CSF sheets with vessels in them, the ventricles widen with atrophy, and
skull stripping leaves partial voxels at the brain's edge. The subject is imaged
as T1W, T2W and FLAIR by summing tissue intensities over the partial volumes
(with deep grey nuclei, a bright lining of the ventricles and diffusely changed
deep white matter), then blurred, bias-modulated and given Rician noise.
Version 3 (the default): each subject carries one real MS patient's lesions,
a consensus mask of the MSLUB database (Lesjak et al., Neuroinformatics 2017)
in MNI space, embedded in the package (``tversky_keras.data.lesion_atlas``;
``lesion_sources`` deals them to subjects), moved by the subject's own
shrinkage and deformation and kept to its parenchyma. Version 2
(``version=2``, reproduced exactly) draws the lesions as ovoids instead: one
confluent lesion beside a lateral ventricle and many smaller ones, most in
deep white matter near the ventricles, some juxtacortical and some
infratentorial, with a load, count and sizes drawn to match the 30 MSLUB
patients.

The calibrated appearance (the default) sets the lesions' contrast subject by
subject so that, after ``zscore_in_brain``, lesions sit where real lesions
do: about 1.3-1.5 brain standard deviations above the brain mean in FLAIR,
0.6-0.9 in T2W and near 0 in T1W -- not trivially bright; the tissues' look
is calibrated to two real MSLUB patients with intensity statistics only
(never their lesion masks); ``reproduce.realism`` measures it. The
randomized appearance (domain randomisation, as SynthSeg) draws each
subject's own contrasts, lesion contrast, bias field, resolution and noise.

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

PHANTOM_VERSION = 3
PHANTOM_VERSIONS = (2, 3)

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
# Where the lesions other than the confluent one go, as shares of their number:
# deep white matter, drawn towards the ventricles (_PERIVENTRICULAR_*); white
# matter at the cortex (juxtacortical); white matter below the tentorium
# (cerebellum, brainstem). The sites are those of the MAGNIMS criteria
# (Filippi et al., Lancet Neurol 2016); the shares are set by hand, most
# lesions periventricular, not fitted to any mask.
_LESION_SITES = {"deep": 0.72, "juxtacortical": 0.18, "infratentorial": 0.10}
_PERIVENTRICULAR_MM = 5.0
_PERIVENTRICULAR_WEIGHT = 30.0
_JUXTACORTICAL_DEPTH_MM = 20.0   # white matter this close to the surface, and
_JUXTACORTICAL_VENTRICLE_MM = 15.0  # this far from the ventricles, borders cortex
_TENTORIUM_Z_MM = -20.0          # MNI z below which lesions are infratentorial

# --- imaging: intensities, white matter = 100 -----------------------------------
# Per modality: CSF in the ventricles, other CSF (sulci, cisterns: FLAIR
# suppresses it less), cortical GM, deep GM, WM. The start was a 5-class
# Gaussian mixture of (T1W, T2W, FLAIR) inside MSLUB patients 07 and 26's
# brains at 1 mm, intensities only: WM, GM (76 / 127 / 116), CSF (12 / 290 /
# 50), CSF-GM partial volume and brain-edge clusters. The values were then set
# by hand so that the phantom's brain z-scores at 2 mm match the patients':
# whole-brain quantiles, T2W and FLAIR medians per T1W z-score bin, and the
# region medians of reproduce.realism. They are effective values, not raw
# ratios: the real scans are z-scored at 1 mm, where dark edge voxels widen the
# scale, and resampled after, so their CSF sits less far out in z than its raw
# intensity suggests.
_TISSUE_INTENSITY = {"T1W": (20.0, 25.0, 82.0, 87.0, 100.0),
                     "T2W": (260.0, 230.0, 114.0, 106.0, 100.0),
                     "FLAIR": (55.0, 80.0, 110.0, 104.0, 100.0)}
_VENTRICULAR_CSF_MM = 3.0        # CSF this close to the ventricles is ventricular
# Flowing blood in the sulcal vessels is dark in every modality (flow voids);
# not measured (too few voxels at 2 mm), a plausible look.
_VESSEL_INTENSITY = {"T1W": 35.0, "T2W": 30.0, "FLAIR": 30.0}
# The tissue lining the lateral ventricles is brighter in FLAIR and T2W in
# normal brains too (ependymal "caps and bands"): relative change at the wall,
# fading over _RIM_MM, patchy, stronger in some subjects.
_RIM = {"T1W": 0.0, "T2W": 0.05, "FLAIR": 0.08}
_RIM_MM = 1.5
# The deep white matter of MS patients is diffusely changed ("dirty-appearing"):
# in patients 07 and 26 the template's deep white matter is about 6 % brighter in
# T2W and 2.5 % in FLAIR than the white-matter cluster. Set lower here (4 %,
# 1 %, and -2 % in T1W), as more makes the phantom's slow white-matter drift
# exceed theirs; it fades over _DEEP_WHITE_MM from the ventricles.
_DEEP_WHITE = {"T1W": -0.02, "T2W": 0.04, "FLAIR": 0.01}
_DEEP_WHITE_MM = 15.0
# Noise and texture: the high-pass residual of white matter (reproduce.realism's
# "fine texture") is 0.15-0.17 / 0.13-0.16 / 0.19-0.21 brain SDs in the patients.
_NOISE = {"T1W": 0.013, "T2W": 0.02, "FLAIR": 0.009}  # Rician sigma / WM intensity
_TEXTURE = 0.02                  # tissue texture, relative amplitude,
_TEXTURE_MM = 2.5                # and Gaussian width
# Residual bias field (the real scans are N4-corrected): 20-mm white-matter
# drift of the patients is 0.03-0.09 brain SDs, most of which the phantom's
# anatomy and lesions already give.
_BIAS = {"T1W": 0.01, "T2W": 0.005, "FLAIR": 0.005}
_BIAS_MM = 60.0
_BLUR_VOXELS = 0.65              # partial-volume blur, Gaussian sigma in voxels

# --- anatomy ----------------------------------------------------------------------
# Linear size of a subject's brain relative to MNI152's. The real scans are
# registered to MNI space without scaling: MSLUB patients 07 and 26 span 0.88
# of the template's extent (brain masks 1.12-1.14 L against its 1.89 L).
_BRAIN_SCALE = (0.80, 0.90)
# A rigid registration to MNI space leaves a brain turned and shifted by a few
# degrees and millimetres (standard deviations per axis).
_MISREGISTRATION_DEGREES = 4.0
_MISREGISTRATION_MM = 3.0
# Smooth random displacements (length mm, standard deviation mm per axis):
# brains differ from the template at the scale of lobes and of gyri.
_DEFORMATIONS = ((40.0, 2.5), (15.0, 1.5))
# Sharp tissue boundaries: parenchyma where GM + WM exceeds about this (varying
# over 30 mm), white matter where WM / (GM + WM) exceeds _WHITE_THRESHOLD (the
# template's thick, averaged cortex would otherwise hold too much grey matter).
_PARENCHYMA_THRESHOLD = 0.5
_WHITE_THRESHOLD = 0.2
# Skull stripping keeps little CSF outside the brain (_stripped_brain_1mm).
_OUTER_CSF_THRESHOLD = 0.45
# Sulci: collapsed in the template (see _sulcus_distance_1mm), re-opened as CSF
# sheets of this half-width (mm, drawn per subject), varying over 25 mm.
_SULCUS_HALF_WIDTH_MM = (0.25, 0.55)
_SULCUS_JUMP_MM = 5.0
_SULCUS_REACH_MM = 35
_VESSEL_SPACING_MM = 15.0        # sulcal vessels: curves about this far apart,
_VESSEL_RADIUS_MM = 0.6          # this thick
_VENTRICLE_WIDENING_MM = (0.0, 1.0)  # atrophy: the ventricles' walls move out
_DEEP_GREY_DEPTH_MM = 20.0       # deep grey nuclei: over this deep in the template,
_DEEP_GREY_VENTRICLE_MM = 25.0   # within this of its lateral ventricles
_GRID_MARGIN_MM = 8.0    # room for deformation and scale around the template brain
_GRID_MULTIPLE = 8       # grid sizes divisible by 8 suit a U-Net with three poolings
_COARSE_GRID_MM = 2.0    # ventricles and depth are found once, on a 2 mm grid
SPACING_RANGE_MM = (0.5, 8.0)  # the voxel sizes the generator makes (the template is 1 mm)


@dataclass(frozen=True)
class SyntheticSubject:
    """One synthetic subject.

    Attributes:
        images: modality name (``T1W``, ``T2W``, ``FLAIR``) -> float32 array,
            zero outside the brain.
        lesion: uint8 lesion mask of the same shape.
        affine: 4x4 voxel-to-MNI-millimetre affine.
        tissue: ``CSF``, ``GM``, ``WM`` -> float32 share of each voxel (CSF
            includes the sulcal vessels); they add up to the voxel's share
            inside the brain, zero outside it.
        ventricle_distance_mm: float32 distance (mm) to the lateral ventricles.
        lesion_load_target_mm3: the load the lesions were drawn to (version 3:
            the real patients' load in MNI space, before the brain's shrinkage).
        lesion_source: version 3: whose lesions (``LesionSource.label``).
    """

    images: dict
    lesion: np.ndarray
    affine: np.ndarray
    tissue: dict
    ventricle_distance_mm: np.ndarray
    lesion_load_target_mm3: float
    lesion_source: str | None = None


@dataclass(frozen=True)
class _Template:
    gm: np.ndarray
    wm: np.ndarray
    stripped: np.ndarray           # the brain as skull stripping leaves it
    ventricle_distance_mm: np.ndarray
    brain_depth_mm: np.ndarray
    deep_grey: np.ndarray          # 0..1: how much grey matter here is a deep nucleus
    sulcus_distance_mm: np.ndarray
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
    """Brain mask, GM and WM probabilities of MNI152 2009a at 1 mm, and its affine."""
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
    _, gm, wm, affine = _template_1mm()
    _, origin = _grid(spacing)
    to_template = np.diag([spacing, spacing, spacing, 1.0])
    to_template[:3, 3] = origin

    def from_coarse(volume):
        if spacing == _COARSE_GRID_MM:
            return volume
        return ndimage.map_coordinates(volume, _grid_points(spacing, _COARSE_GRID_MM),
                                       order=1, mode="nearest")

    # A distance map is resampled, not smoothed: smoothing would lift its zeros.
    sulcus_distance = ndimage.map_coordinates(_sulcus_distance_1mm(), _grid_points(spacing),
                                              order=1, mode="nearest")
    ventricle_distance = from_coarse(_ventricle_distance_mm())
    depth = from_coarse(_brain_depth_mm())
    # Basal ganglia and thalamus: grey matter deep in the brain, near the ventricles.
    deep_grey = (np.clip((depth - _DEEP_GREY_DEPTH_MM) / 5.0, 0.0, 1.0)
                 * np.clip((_DEEP_GREY_VENTRICLE_MM - ventricle_distance) / 5.0, 0.0, 1.0))
    return _Template(gm=_resample_template(gm, spacing), wm=_resample_template(wm, spacing),
                     stripped=_resample_template(_stripped_brain_1mm(), spacing),
                     ventricle_distance_mm=ventricle_distance, brain_depth_mm=depth,
                     deep_grey=deep_grey, sulcus_distance_mm=sulcus_distance,
                     affine=affine @ to_template)


@functools.lru_cache(maxsize=1)
def _stripped_brain_1mm():
    """The template's brain as skull stripping leaves a real one, at 1 mm.

    The template's own mask holds a wide layer of CSF around the brain; skull
    stripping keeps little of it. Grey and white matter over
    ``_OUTER_CSF_THRESHOLD``, closed over the sulci and with the ventricles
    filled in, and within the template's mask.
    """
    brain, gm, wm, _ = _template_1mm()
    tissue = ndimage.binary_closing(gm + wm > _OUTER_CSF_THRESHOLD, iterations=3)
    return (ndimage.binary_fill_holes(tissue) & (brain > 0)).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _sulcus_distance_1mm():
    """Distance (mm) to the template's collapsed sulci, at 1 mm.

    An average of many brains keeps the folds of the cortex but averages away
    the thin CSF between two facing banks of cortex: their grey matter fuses.
    The sulcus runs midway between the white matter under either bank, where
    the nearest white-matter voxel jumps from one bank to the other (by over
    ``_SULCUS_JUMP_MM`` between neighbouring voxels; of the two voxels, the
    one farther from white matter). Those voxels count as sulcus where they can
    be reached from outside the brain through grey matter and CSF within
    ``_SULCUS_REACH_MM``, which leaves out the deep grey nuclei.
    """
    brain, _, wm, _ = _template_1mm()
    white = wm > 0.5
    inside = brain > 0.5
    distance, nearest = ndimage.distance_transform_edt(~white, return_indices=True)
    nearest = nearest.astype(np.float32)
    sheet = np.zeros(white.shape, bool)
    for axis in range(3):
        jump = np.sqrt(sum(np.diff(nearest[k], axis=axis) ** 2 for k in range(3)))
        jump = jump > _SULCUS_JUMP_MM
        deeper_next = np.diff(distance, axis=axis) > 0
        first = tuple(slice(0, -1) if k == axis else slice(None) for k in range(3))
        second = tuple(slice(1, None) if k == axis else slice(None) for k in range(3))
        sheet[first] |= jump & ~deeper_next
        sheet[second] |= jump & deeper_next
    reached = ndimage.binary_dilation(~inside, iterations=_SULCUS_REACH_MM, mask=~white)
    sheet &= inside & ~white & reached
    return ndimage.distance_transform_edt(~sheet).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _ventricle_distance_mm():
    """Distance (mm) to the lateral ventricles, on the 2 mm grid.

    The ventricles are the large pockets of CSF deep inside the brain (over
    10 mm from its surface) whose walls are largely white matter; the deep
    cisterns and the interhemispheric fissure, walled by grey matter, are not.
    """
    brain_1mm, gm_1mm, wm_1mm, _ = _template_1mm()
    spacing = _COARSE_GRID_MM
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
    to_coarse = (points - _grid(_COARSE_GRID_MM)[1][:, None]) / _COARSE_GRID_MM
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
    brain = _resample_template(_template_1mm()[0], _COARSE_GRID_MM) > 0.5
    return ndimage.distance_transform_edt(brain, sampling=_COARSE_GRID_MM).astype(np.float32)


# --- random fields and anatomy ------------------------------------------------

def _smooth_field(rng, shape, spacing, length_mm):
    """A unit-variance random field that varies over about ``length_mm``."""
    coarse_shape = np.maximum(np.ceil(np.array(shape) * spacing / length_mm).astype(int) + 1, 2)
    coarse = rng.standard_normal(coarse_shape)
    field = ndimage.zoom(coarse, np.array(shape) / coarse_shape, order=1, mode="nearest",
                         grid_mode=True)
    return ((field - field.mean()) / field.std()).astype(np.float32)


@dataclass(frozen=True)
class _Anatomy:
    brain: np.ndarray
    tissue: dict                   # CSF (vessels included), GM, WM fractions
    vessels: np.ndarray            # fraction of each voxel inside a vessel
    ventricle_band: np.ndarray     # strength of the ventricles' bright lining, ~1 at the wall
    deep_white: np.ndarray         # strength of the deep white matter's diffuse change
    ventricle_distance_mm: np.ndarray
    brain_depth_mm: np.ndarray
    infratentorial: np.ndarray     # below the tentorium, in template coordinates
    deep_grey: np.ndarray          # 0..1: how much of the grey matter is a deep nucleus
    lesion_prior: tuple | None = None  # version 3: the real lesions (_lesion_prior), moved


def _deformed_anatomy(rng, template, spacing, lesion_source=None):
    """A subject's anatomy: the template shrunk to a real brain's size under a
    smooth displacement, with sharp tissue boundaries, re-opened sulci and
    their vessels, widened ventricles and a skull-stripped edge.

    ``lesion_source`` (version 3: a ``LesionSource``) is sampled through the
    same scaling, turn and displacement (``_lesion_prior``), so the real
    lesions shrink and deform with the subject's brain."""
    shape = template.gm.shape
    centre = (np.array(shape) - 1) / 2
    scale = rng.uniform(*_BRAIN_SCALE) * rng.uniform(0.97, 1.03, size=3)
    # Where each voxel's tissue comes from in the template: scaled, then
    # turned and shifted as a rigid registration leaves a brain, then displaced.
    turn = _rotation(np.radians(_MISREGISTRATION_DEGREES) * rng.standard_normal(3))
    shift = _MISREGISTRATION_MM / spacing * rng.standard_normal(3)
    offsets = np.indices(shape, dtype=np.float32).reshape(3, -1) - centre[:, None]
    points = ((turn @ offsets) / scale[:, None] + (centre + shift)[:, None]).reshape(3, *shape)
    points = points.astype(np.float32)
    for axis in range(3):
        points[axis] += sum(sd / spacing * _smooth_field(rng, shape, spacing, length)
                            for length, sd in _DEFORMATIONS)

    def warp(volume, **kwargs):
        return ndimage.map_coordinates(volume, points, order=1, **kwargs)

    def warp_distance(volume):
        # Template millimetres are this subject's millimetres times its scale.
        return warp(volume, mode="nearest") * float(np.mean(scale))

    # Skull stripping cuts through voxels: the outermost ones are partly background.
    gm, wm = warp(template.gm), warp(template.wm)
    inside = _crisp(warp(template.stripped), 0.5, spacing)
    brain = inside > 0
    # The template's maps are averages, blurred across each boundary; a brain's
    # tissues meet at sharp boundaries, which only the voxel size blurs.
    threshold = _PARENCHYMA_THRESHOLD + 0.05 * _smooth_field(rng, shape, spacing, 30.0)
    parenchyma = _crisp(gm + wm, threshold, spacing)
    white = _crisp(wm / np.maximum(gm + wm, 1e-6), _WHITE_THRESHOLD, spacing)
    sulci = _sulcal_csf(rng, warp_distance(template.sulcus_distance_mm), spacing)
    # Atrophy widens the ventricles: their walls move out by a subject's margin.
    widening = rng.uniform(*_VENTRICLE_WIDENING_MM)
    ventricle_distance = warp_distance(template.ventricle_distance_mm)
    ventricles = np.clip((widening - ventricle_distance) / spacing, 0.0, 1.0)
    ventricle_distance = np.maximum(ventricle_distance - widening, 0.0)
    keep = inside * (1 - sulci) * (1 - ventricles)
    gm = parenchyma * (1 - white) * keep
    wm = parenchyma * white * keep
    csf = np.clip(inside - gm - wm, 0.0, 1.0)
    vessels = _vessel_curves(rng, shape, spacing) * csf * (ventricle_distance > 0)
    template_z_mm = template.affine[2, 2] * points[2] + template.affine[2, 3]
    return _Anatomy(brain=brain, tissue={"CSF": csf, "GM": gm, "WM": wm}, vessels=vessels,
                    ventricle_band=_ventricle_band(rng, ventricle_distance, spacing, _RIM_MM),
                    deep_white=_ventricle_band(rng, ventricle_distance, spacing, _DEEP_WHITE_MM),
                    ventricle_distance_mm=ventricle_distance,
                    brain_depth_mm=warp_distance(template.brain_depth_mm),
                    infratentorial=template_z_mm < _TENTORIUM_Z_MM,
                    deep_grey=warp(template.deep_grey),
                    lesion_prior=None if lesion_source is None else _lesion_prior(
                        lesion_source, points, spacing))


def _rotation(angles):
    """Rotation matrix turning by ``angles`` (radians) about the three axes in turn."""
    matrix = np.eye(3)
    for axis, angle in enumerate(angles):
        a, b = [k for k in range(3) if k != axis]
        turn = np.eye(3)
        turn[[a, a, b, b], [a, b, a, b]] = np.cos(angle), -np.sin(angle), np.sin(angle), np.cos(angle)
        matrix = turn @ matrix
    return matrix


def _ventricle_band(rng, ventricle_distance_mm, spacing, decay_mm):
    """A change that is strongest at the walls of the lateral ventricles and
    fades over ``decay_mm``: patchy along the wall, and more marked in some
    subjects than in others."""
    patches = np.clip(1 + 0.5 * _smooth_field(rng, ventricle_distance_mm.shape, spacing, 15.0),
                      0.0, None)
    return (rng.uniform(0.5, 1.5) * patches
            * np.exp(-ventricle_distance_mm / decay_mm)).astype(np.float32)


def _crisp(probability, threshold, spacing):
    """The share of each voxel on the high side of a sharp boundary placed at
    ``probability == threshold``, its distance to the boundary taken as the
    difference over the gradient."""
    gradient = np.sqrt(sum(g ** 2 for g in np.gradient(probability, spacing)))
    distance = (probability - threshold) / np.maximum(gradient, 1e-6)
    return np.clip(0.5 + distance / spacing, 0.0, 1.0).astype(np.float32)


def _slab_fraction(distance_mm, half_width_mm, spacing):
    """Share of a voxel (side ``spacing``) at ``distance_mm`` from the middle of
    a slab ``2 * half_width_mm`` thick that lies inside it."""
    distance_mm = np.abs(distance_mm)
    inside = (np.minimum(distance_mm + spacing / 2, half_width_mm)
              - np.maximum(distance_mm - spacing / 2, -half_width_mm))
    return np.clip(inside / spacing, 0.0, 1.0).astype(np.float32)


def _sulcal_csf(rng, sulcus_distance_mm, spacing):
    """CSF fraction of the re-opened sulci: sheets of a subject's width, wider
    in places (atrophy is patchy)."""
    half_width = rng.uniform(*_SULCUS_HALF_WIDTH_MM) * np.clip(
        1 + 0.35 * _smooth_field(rng, sulcus_distance_mm.shape, spacing, 25.0), 0.3, None)
    return _slab_fraction(sulcus_distance_mm, half_width, spacing)


def _vessel_curves(rng, shape, spacing):
    """Fraction of each voxel inside thin random tubes: where the zero sets
    (sheets) of two random fields cross, each sheet's distance taken as the
    field over its gradient."""
    tubes = np.ones(shape, np.float32)
    for _ in range(2):
        field = _smooth_field(rng, shape, spacing, _VESSEL_SPACING_MM)
        gradient = np.sqrt(sum(g ** 2 for g in np.gradient(field, spacing)))
        tubes *= _slab_fraction(field / np.maximum(gradient, 1e-6), _VESSEL_RADIUS_MM, spacing)
    return tubes


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


def _lesion_sites(rng, count, anatomy):
    """Centres (voxel coordinates) of ``count`` lesions, dealt to the places of
    ``_LESION_SITES``; a place with no white matter at this voxel size (coarse
    grids) gives its share to deep white matter."""
    wm, below = anatomy.tissue["WM"], anatomy.infratentorial
    places = {
        "deep": (wm > 0.6) & ~below,
        "juxtacortical": (wm > 0.5) & (wm < 0.85) & ~below
        & (anatomy.brain_depth_mm < _JUXTACORTICAL_DEPTH_MM)
        & (anatomy.ventricle_distance_mm > _JUXTACORTICAL_VENTRICLE_MM),
        "infratentorial": (wm > 0.6) & below,
    }
    places = {name: np.argwhere(where) for name, where in places.items()}
    shares = np.array([_LESION_SITES[name] if places[name].size else 0.0 for name in places])
    shares[0] += 1 - shares.sum()
    kinds = rng.choice(len(places), size=count, p=shares)
    centres = np.zeros((count, 3))
    for kind, voxels in enumerate(places.values()):
        chosen = kinds == kind
        weight = np.ones(len(voxels))
        if kind == 0:   # deep white matter: denser near the ventricles
            weight += _PERIVENTRICULAR_WEIGHT * np.exp(
                -anatomy.ventricle_distance_mm[tuple(voxels.T)] / _PERIVENTRICULAR_MM)
        if chosen.any():
            centres[chosen] = voxels[rng.choice(len(voxels), size=chosen.sum(),
                                                p=weight / weight.sum())]
    return centres + rng.uniform(-0.5, 0.5, size=centres.shape)


def _lesion_ovoids(rng, volumes, anatomy, spacing):
    """Place the lesions: the first as a chain of overlapping ovoids along a
    ventricle (confluent), the others as single ovoids at ``_lesion_sites``."""
    centres = _lesion_sites(rng, len(volumes) - 1, anatomy)
    ovoids = [_Ovoid(c, _ellipsoid_axes(rng, v, 0.3), _random_rotation(rng),
                     float(np.exp(0.25 * rng.standard_normal())))
              for c, v in zip(centres, volumes[1:])]
    return _confluent_ovoids(rng, volumes[0], anatomy.tissue["WM"],
                             anatomy.ventricle_distance_mm, spacing) + ovoids


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


def _lesions(rng, load_mm3, anatomy, spacing):
    """Lesion fraction per voxel, its mask, and the lesions' severity map.

    Lesions live in white matter only (WM probability > 0.5). Ovoids cut by
    grey matter or overlapping each other lose volume, so all sizes are
    rescaled, a few times, until the mask's volume is within 10 % of the load.
    """
    volumes = _lesion_volumes(rng, load_mm3, spacing**3)
    ovoids = _lesion_ovoids(rng, volumes, anatomy, spacing)
    wm = anatomy.tissue["WM"]
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


# --- version 3: real lesions ----------------------------------------------------

@dataclass(frozen=True)
class LesionSource:
    """Whose lesions a version-3 subject carries: one or two of the embedded real
    masks (``tversky_keras.data.lesion_atlas``), each possibly mirrored left-right.

    Attributes:
        names: embedded mask names, e.g. ``("patient12",)``.
        mirrored: one bool per name: flipped across the midsagittal plane
            (MNI x -> -x; the template is symmetric).
    """

    names: tuple
    mirrored: tuple

    def __post_init__(self):
        from tversky_keras.data.lesion_atlas import lesion_mask_names

        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "mirrored", tuple(bool(m) for m in self.mirrored))
        if not self.names or len(self.names) != len(self.mirrored):
            raise ValueError(f"LesionSource needs one mirrored flag per mask, got "
                             f"{self.names} and {self.mirrored}")
        unknown = [n for n in self.names if n not in lesion_mask_names()]
        if unknown:
            raise ValueError(f"no embedded lesion mask {unknown[0]!r}")

    @property
    def label(self):
        """``patient12``, ``patient12-mirrored``, ``patient03+patient20-mirrored``."""
        return "+".join(n + ("-mirrored" if m else "") for n, m in zip(self.names, self.mirrored))


def lesion_sources(n_subjects, seed=0):
    """The real lesions of each subject of a version-3 data set.

    Up to 27 subjects, each carries a different patient's mask: the masks,
    sorted by lesion load, are cut into ``n_subjects`` strata of neighbouring
    loads and one is drawn from each (so the lightest and heaviest loads the
    paper's figures need are always there), then dealt to subjects in random
    order. More subjects vary the real shapes without inventing any: the
    next 27 carry every mask mirrored left-right, and the rest the union of
    two different patients' lesions (each mirrored or not at random), kept to
    white matter like any other.

    Args:
        n_subjects: number of subjects.
        seed: the data set's seed (int).

    Returns:
        list of ``LesionSource``, one per subject.
    """
    from tversky_keras.data.lesion_atlas import lesion_mask_loads

    if n_subjects < 1:
        raise ValueError(f"n_subjects must be at least 1, got {n_subjects}")
    rng = np.random.default_rng([seed, _LESION_SOURCE_STREAM])
    loads = lesion_mask_loads()
    by_load = sorted(loads, key=loads.get)
    picked = [rng.choice(stratum) for stratum in
              np.array_split(np.array(by_load), min(n_subjects, len(by_load)))]
    sources = [LesionSource((str(name),), (False,)) for name in rng.permutation(picked)]
    if n_subjects > len(by_load):
        mirrored = rng.permutation(by_load)[:n_subjects - len(by_load)]
        sources += [LesionSource((str(name),), (True,)) for name in mirrored]
    while len(sources) < n_subjects:
        first, second = rng.choice(len(by_load), size=2, replace=False)
        sources.append(LesionSource((by_load[first], by_load[second]),
                                    tuple(rng.uniform(size=2) < 0.5)))
    return sources


_LESION_SOURCE_STREAM = 3  # lesion_sources' random numbers: their own stream of the seed


# The masks' patients were registered to MNI space rigidly, without scaling, as
# patients 07 and 26: their brains are of the size the phantom's subjects are
# drawn to (_BRAIN_SCALE). A mask scaled up by 1 / mean(_BRAIN_SCALE) about the
# template brain's centre is at the template's size, where 90-100 % (median
# 99 %) of its lesion voxels fall on the template's parenchyma (79-99 %,
# median 95 %, unscaled); each subject's own shrinkage brings it back.
_LESION_MASK_BRAIN_SCALE = float(np.mean(_BRAIN_SCALE))


def _lesion_prior(source, points, spacing):
    """How much of each voxel the source's lesions fill, at the template-grid
    coordinates ``points`` (``_template(spacing)``'s voxels, a subject's warp).

    The 1-mm masks are sampled through MNI coordinates (the masks' grid is
    FSL's 182x218x182, the template's nilearn's 197x233x189), scaled to the
    template's size (``_LESION_MASK_BRAIN_SCALE``): once smoothed as the
    template is for this voxel size (the lesions' partial volume), and once
    as they are (whether the voxel's centre is in a lesion, which is what a
    real mask resampled to the grid keeps: nearest neighbour in ``load_subject``).

    Returns:
        ``(share, centre)``, float32 arrays of the shape of ``points[0]``.
    """
    from tversky_keras.data.lesion_atlas import read_lesion_mask

    affine = _template(float(spacing)).affine
    shape = points.shape[1:]
    world = affine[:3, :3] @ points.reshape(3, -1) + affine[:3, 3:]
    brain = np.argwhere(_template_1mm()[0] > 0)
    middle = (_template_1mm()[3] @ np.r_[(brain.min(0) + brain.max(0)) / 2, 1.0])[:3, None]
    world = middle + _LESION_MASK_BRAIN_SCALE * (world - middle)
    share, centre = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    for name, mirrored in zip(source.names, source.mirrored):
        mask, mask_affine = read_lesion_mask(name)
        # The symmetric template's midsagittal plane is MNI x = 0.
        where = world * np.array([[-1.0], [1.0], [1.0]]) if mirrored else world
        voxels = (np.linalg.inv(mask_affine)[:3, :3] @ where
                  + np.linalg.inv(mask_affine)[:3, 3:]).astype(np.float32)
        mask = mask.astype(np.float32)
        smoothed = ndimage.gaussian_filter(mask, max(spacing - 1.0, 0.0) / 2)
        share = np.maximum(share, ndimage.map_coordinates(smoothed, voxels, order=1)
                           .reshape(shape))
        centre = np.maximum(centre, ndimage.map_coordinates(mask, voxels, order=0)
                            .reshape(shape))
    return share, centre


def _real_lesions(rng, anatomy, spacing):
    """Lesion fraction per voxel, its mask, and the lesions' severity map, from
    the real lesions the anatomy carries (``_Anatomy.lesion_prior``).

    The template is an average brain, its white matter thinner than a
    patient's: of the 27 masks' lesion voxels, 30-87 % fall on its white
    matter (probability > 0.5) but 79-99 % on its parenchyma (grey + white).
    So lesions keep the share of each voxel that is parenchyma, lose what
    falls in CSF (sulci, widened ventricles), and are imaged as changed white
    matter wherever they lie. Each lesion (26-connected) has its own severity,
    log-normal as version 2's, patchy inside by +-20 %. The mask holds the
    voxels whose centre lies in a lesion (as a real mask resampled to the
    grid) and that are mostly parenchyma; the fraction, which the images
    draw, is the lesions' partial volume.
    """
    share, centre = anatomy.lesion_prior
    parenchyma = np.clip(anatomy.tissue["GM"] + anatomy.tissue["WM"], 0.0, 1.0)
    fraction = np.clip(share, 0.0, 1.0) * parenchyma
    mask = (centre >= 0.5) & (parenchyma >= 0.5)
    labels, count = ndimage.label(fraction > 0.05, structure=np.ones((3, 3, 3)))
    severity = np.exp(0.25 * rng.standard_normal(count + 1)).astype(np.float32)[labels]
    patches = 1 + 0.2 * _smooth_field(rng, mask.shape, spacing, 6.0)
    return fraction.astype(np.float32), mask, severity * np.clip(patches, 0.2, None)


# --- imaging -------------------------------------------------------------------

def _tissue_image(anatomy, modality, rng, texture, spacing, intensities=None):
    """Partial-volume sum of the tissue intensities, and the white-matter one.

    Each subject's tissue intensities vary by 1.5 %, as between scanners, or
    are ``intensities`` (``_TISSUE_INTENSITY``'s five classes) when given."""
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
    background = np.mean(image[inside > 0.99]) * max(1.0 - 0.5 / spacing, 0.0)
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


# --- domain randomisation (SynthSeg's idea, Billot et al., Med. Image Anal. 2023) --------
# Instead of one calibrated look, every subject is imaged with its own draw of
# what varies between scanners and protocols, so that a network trained on the
# phantom cannot lean on any one look. The ranges are set from what is known
# to vary, not fitted to any real patient:
# - tissue contrast: each tissue's log-intensity ratio to white matter
#   (_TISSUE_INTENSITY) scaled by a factor in _CONTRAST_SCALE, per modality and
#   tissue: grey-white contrast differs between field strengths and between
#   sequences of one name (MPRAGE vs SPGR T1W, 2D vs 3D FLAIR, TE/TR/TI), and
#   FLAIR's CSF suppression is incomplete to a varying degree;
# - lesion contrast against white matter, per modality (_LESION_RATIO): MS
#   lesions are hyperintense in T2W and FLAIR and iso- to hypointense in T1W
#   ("black holes" in some);
# - a bias field (_BIAS_RANGE: none after N4 correction, 10-30 % across the
#   brain uncorrected at 3 T), a resolution (_SLICE_MM: 3D acquisitions at about
#   1 mm, or 2D ones with 3-6 mm slices along a random axis, as clinical FLAIR
#   and T2W often are) and noise (_NOISE_RANGE, Rician sigma / WM: SNR 25-200).
_CONTRAST_SCALE = (0.5, 1.5)
_LESION_RATIO = {"T1W": (0.55, 1.05), "T2W": (1.15, 2.2), "FLAIR": (1.15, 2.0)}
_BIAS_RANGE = (0.0, 0.15)        # SD of the log bias field
_THIN_SLICE_MM = (0.8, 1.5)      # a 3D acquisition's voxel
_SLICE_MM = (3.0, 6.0)           # a 2D acquisition's slice thickness
_NOISE_RANGE = (0.005, 0.04)
APPEARANCES = ("calibrated", "randomized")


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


def _randomized_image(rng, modality, anatomy, lesion, spacing, texture):
    """One modality with a random look (the ranges above): tissue and lesion
    contrasts, bias field, resolution and noise of the subject's own draw."""
    fraction, _, severity = lesion
    brain = anatomy.brain
    calibrated = np.array(_TISSUE_INTENSITY[modality])
    scale = rng.uniform(*_CONTRAST_SCALE, size=5)
    intensities = 100.0 * (calibrated / 100.0) ** scale
    base, wm = _tissue_image(anatomy, modality, rng, texture, spacing, intensities)
    ratio = _log_uniform(rng, *_LESION_RATIO[modality])
    lesion_intensity = wm * ratio ** severity
    bias = np.exp(rng.uniform(*_BIAS_RANGE) * _smooth_field(rng, brain.shape, spacing, _BIAS_MM))
    clean = ndimage.gaussian_filter(
        bias * ((1 - fraction) * base + fraction * lesion_intensity),
        _acquisition_blur(rng, spacing))
    sigma = _log_uniform(rng, *_NOISE_RANGE) * wm
    noise = sigma * rng.standard_normal((2,) + brain.shape, dtype=np.float32)
    return (np.hypot(clean + noise[0], noise[1]) * brain).astype(np.float32)


def synthesize_subject(seed, spacing=2.0, lesion_load_mm3=None, version=PHANTOM_VERSION,
                       lesion_source=None, appearance="calibrated"):
    """One synthetic MS subject: T1W, T2W, FLAIR and the lesion mask.

    Args:
        seed: int or ``numpy.random.SeedSequence``; the same seed gives the
            same subject.
        spacing: isotropic voxel size in mm (the template is 1 mm).
        lesion_load_mm3: version 2: total lesion volume to draw; ``None`` draws
            one from the real patients' distribution. Version 3 takes its load
            from the real lesions.
        version: 3 (default): real patients' lesions (``lesion_source``); 2:
            the earlier phantom's drawn ovoids, reproduced exactly.
        lesion_source: version 3: a ``LesionSource``; ``None`` draws one
            embedded mask at random.
        appearance: ``"calibrated"`` (tissue and lesion contrasts matched to
            real MSLUB scans) or ``"randomized"`` (domain randomisation: the
            subject's own draw of contrasts, bias, resolution and noise).

    Returns:
        ``SyntheticSubject``.
    """
    from tversky_keras.data.lesion_atlas import lesion_mask_names, lesion_mask_loads

    low, high = SPACING_RANGE_MM
    if not low <= spacing <= high:
        raise ValueError(f"spacing must be between {low:g} and {high:g} mm, got {spacing}")
    if version not in PHANTOM_VERSIONS:
        raise ValueError(f"version must be one of {PHANTOM_VERSIONS}, got {version!r}")
    if appearance not in APPEARANCES:
        raise ValueError(f"appearance must be one of {', '.join(APPEARANCES)}, got "
                         f"{appearance!r}")
    if lesion_load_mm3 is not None and lesion_load_mm3 <= 0:
        raise ValueError(f"lesion_load_mm3 must be positive, got {lesion_load_mm3}")
    if version == 3 and lesion_load_mm3 is not None:
        raise ValueError("version 3 takes its lesion load from real lesions: give "
                         "lesion_source, not lesion_load_mm3")
    if version == 2 and lesion_source is not None:
        raise ValueError("lesion_source is for version 3; version 2 draws its lesions")
    rng = np.random.default_rng(seed)
    load = float(_load_quantile(rng.uniform()) if lesion_load_mm3 is None else lesion_load_mm3)
    template = _template(float(spacing))
    if version == 3:
        if lesion_source is None:
            lesion_source = LesionSource((str(rng.choice(lesion_mask_names())),), (False,))
        load = float(sum(lesion_mask_loads()[name] for name in lesion_source.names))
    anatomy = _deformed_anatomy(rng, template, spacing, lesion_source)
    lesion = _lesions(rng, load, anatomy, spacing) if version == 2 else _real_lesions(
        rng, anatomy, spacing)
    texture = ndimage.gaussian_filter(rng.standard_normal(anatomy.brain.shape, dtype=np.float32),
                                      _TEXTURE_MM / spacing)
    texture /= texture.std()
    if appearance == "calibrated":
        images = {m: _calibrated_image(rng, m, rng.uniform(*_LESION_Z[m]), anatomy, lesion,
                                       spacing, texture)
                  for m in MODALITIES}
    else:
        images = {m: _randomized_image(rng, m, anatomy, lesion, spacing, texture)
                  for m in MODALITIES}
    return SyntheticSubject(images=images, lesion=lesion[1].astype(np.uint8),
                            affine=template.affine, tissue=anatomy.tissue,
                            ventricle_distance_mm=anatomy.ventricle_distance_mm,
                            lesion_load_target_mm3=load,
                            lesion_source=None if version == 2 else lesion_source.label)


# --- the data set on disk ------------------------------------------------------

def _manifest(n_subjects, seed, spacing, version, appearance):
    manifest = {"generator": "tversky_keras.data.phantom", "version": version,
                "n_subjects": n_subjects, "seed": seed, "spacing": float(spacing),
                "subjects": [f"synth{i:02d}" for i in range(n_subjects)],
                "files": [*MODALITIES, MASK_NAME],
                "template": "MNI152 ICBM 2009a nonlinear symmetric (nilearn)"}
    # Version 2's calibrated manifest is kept as it was, so its folders stay valid.
    if version != 2 or appearance != "calibrated":
        manifest["appearance"] = appearance
    if version == 3:
        manifest["lesions"] = {
            "source": "MSLUB consensus lesion masks in MNI space (Lesjak et al., "
                      "Neuroinformatics 2017; CC-BY), embedded in tversky_keras/data/lesion_masks",
            "subjects": [source.label for source in lesion_sources(n_subjects, seed)]}
    return manifest


def dataset_subjects(n_subjects, seed=0, spacing=2.0, version=PHANTOM_VERSION,
                     appearance="calibrated"):
    """The subjects ``synthesize_dataset`` writes with these arguments, one at a time.

    Subject ``i`` is ``synthesize_subject(subject_seed(seed, i), spacing, ...)``
    with version 2's stratified load ``lesion_loads(n_subjects, seed)[i]`` or
    version 3's ``lesion_sources(n_subjects, seed)[i]``.

    Yields:
        ``SyntheticSubject``.
    """
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be at least 1, got {n_subjects}")
    if version == 2:
        draws = [{"lesion_load_mm3": load} for load in lesion_loads(n_subjects, seed)]
    else:
        draws = [{"lesion_source": source} for source in lesion_sources(n_subjects, seed)]
    for index, draw in enumerate(draws):
        yield synthesize_subject(subject_seed(seed, index), spacing, version=version,
                                 appearance=appearance, **draw)


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


def synthesize_dataset(out_dir, n_subjects=15, seed=0, spacing=2.0, progress=True,
                       version=PHANTOM_VERSION, appearance="calibrated"):
    """Write a synthetic data set as ``out_dir/<id>/{T1W,T2W,FLAIR,consensus_gt}.nii.gz``.

    The subjects are ``dataset_subjects(n_subjects, seed, spacing, version,
    appearance)``: version 3 deals real patients' lesions (``lesion_sources``),
    version 2 stratifies its drawn loads over the real distribution
    (``lesion_loads``). ``phantom.json`` records the version, the appearance
    and whose lesions each subject carries.
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
        version: the generator's version (3, or 2 to reproduce the earlier phantom).
        appearance: ``"calibrated"`` or ``"randomized"`` (``synthesize_subject``).

    Returns:
        list of the subjects' folders (``Path``).
    """
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be at least 1, got {n_subjects}")
    if version not in PHANTOM_VERSIONS:
        raise ValueError(f"version must be one of {PHANTOM_VERSIONS}, got {version!r}")
    if appearance not in APPEARANCES:
        raise ValueError(f"appearance must be one of {', '.join(APPEARANCES)}, got "
                         f"{appearance!r}")
    out_dir = Path(out_dir)
    manifest = _manifest(n_subjects, seed, spacing, version, appearance)
    folders = [out_dir / name for name in manifest["subjects"]]
    old = _read_manifest(out_dir)
    if old == manifest and all((f / f"{name}.nii.gz").is_file()
                               for f in folders for name in manifest["files"]):
        return folders
    writing = out_dir / ".phantom-incomplete"  # a phantom being written, or interrupted
    if old is None and not writing.exists():
        # Not a phantom folder: never write over the user's own subject files.
        taken = [f for f in folders if f.is_dir() and any(f.glob("*.nii*"))]
        if taken:
            raise ValueError(f"{taken[0]}: holds scans and {out_dir} is no phantom folder (no "
                             f"phantom.json); give an empty or new --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    writing.touch()
    _remove_phantom(out_dir, old)
    subjects = dataset_subjects(n_subjects, seed, spacing, version, appearance)
    for index, (folder, subject) in enumerate(zip(folders, subjects)):
        folder.mkdir(exist_ok=True)
        for modality, image in subject.images.items():
            _save_nifti(folder, modality, image, subject.affine)
        _save_nifti(folder, MASK_NAME, subject.lesion, subject.affine)
        if progress:
            lesions = f", lesions of {subject.lesion_source}" if subject.lesion_source else ""
            print(f"phantom {index + 1}/{n_subjects}: {folder.name}, lesion load "
                  f"{subject.lesion.sum() * spacing**3:.0f} mm^3{lesions}", file=sys.stderr,
                  flush=True)
    write_text(out_dir / "phantom.json", json.dumps(manifest, indent=1))
    writing.unlink(missing_ok=True)
    return folders
