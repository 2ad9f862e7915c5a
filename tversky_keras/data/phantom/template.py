"""The MNI152 template the phantom is drawn from, on the phantom's grids.

nilearn's wheel ships the MNI152 ICBM 2009a nonlinear symmetric template
(brain mask, grey- and white-matter probabilities at 1 mm); nothing is
downloaded. Found once in it and cached: the brain as skull stripping leaves a
real one, its collapsed sulci, its lateral ventricles and the depth below its
surface. ``mni152_tissue`` samples the template on any grid in MNI space, so
real scans and phantom subjects can be compared region by region.
"""

import functools
import importlib.resources
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

from tversky_keras.data.phantom.calibration import (_COARSE_GRID_MM, _DEEP_GREY_DEPTH_MM,
                                                    _DEEP_GREY_VENTRICLE_MM, _GRID_MARGIN_MM,
                                                    _GRID_MULTIPLE, _OUTER_CSF_THRESHOLD,
                                                    _SULCUS_JUMP_MM, _SULCUS_REACH_MM)


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
