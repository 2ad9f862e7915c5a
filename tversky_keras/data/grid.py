"""The network's voxel grid, and the way back from it to each scan's own voxels.

A scan goes to the grid in three steps: reorientation to canonical RAS+ voxel
order (``read_nifti``), resampling to a target spacing, and a centred crop or
zero pad to a target shape. ``Geometry`` records all three so that ``from_grid``
can undo them and ``save_nifti_like`` can write a prediction that overlays the
original scan in any viewer.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform
from scipy import ndimage

from tversky_keras.atomic import atomic_path

# A grid larger than this (4 GiB per float32 channel) is a wrong voxel size, not a scan.
MAX_GRID_VOXELS = 1024 ** 3
_CANONICAL = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)


@dataclass(frozen=True)
class GridMapping:
    """How a canonical array was resampled and then cropped or padded.

    Attributes:
        source_shape: spatial shape of the canonical array.
        resampled_shape: spatial shape after resampling (``source_shape`` when
            the spacing was kept).
        offset: grid voxel ``i`` sits at resampled voxel ``i + offset`` along
            each axis; negative where the grid is padded.
        shape: the grid's spatial shape.
    """

    source_shape: tuple
    resampled_shape: tuple
    offset: tuple
    shape: tuple

    @property
    def zoom(self):
        """Resampling factor per axis (grid voxels per source voxel)."""
        return tuple(r / s for r, s in zip(self.resampled_shape, self.source_shape))


@dataclass(frozen=True, eq=False)
class Geometry:
    """Everything needed to put an array on the network grid back into its scan.

    Attributes:
        affine: the file's voxel-to-world affine.
        header: the file's NIfTI header (datatype, units, descriptions).
        shape: the file's 3D shape, in its own storage order.
        orientation: nibabel orientation array taking the file's axes to RAS+.
        spacing: voxel size in mm along the canonical axes.
        grid: the resampling and crop/pad from canonical voxels to the grid.
    """

    affine: np.ndarray
    header: nib.Nifti1Header
    shape: tuple
    orientation: np.ndarray
    spacing: tuple
    grid: GridMapping

    @classmethod
    def from_image(cls, image, grid=None):
        """The geometry of a nibabel image; ``grid`` defaults to the identity mapping."""
        shape = tuple(int(n) for n in image.shape[:3])
        orientation = io_orientation(image.affine)
        canonical_affine = image.affine @ inv_ornt_aff(orientation, shape)
        spacing = tuple(float(s) for s in np.linalg.norm(canonical_affine[:3, :3], axis=0))
        if grid is None:
            canonical_shape = tuple(int(shape[i]) for i in np.argsort(orientation[:, 0]))
            grid = GridMapping(canonical_shape, canonical_shape, (0, 0, 0), canonical_shape)
        return cls(image.affine.copy(), image.header.copy(), shape, orientation, spacing, grid)


def canonical_affine(image):
    """The voxel-to-world affine of ``image``'s data in canonical (RAS+) voxel order.

    ``read_nifti`` returns arrays in that order: two arrays it read lie on the
    same grid exactly when their shapes and these affines agree.
    """
    shape = tuple(int(n) for n in image.shape[:3])
    return image.affine @ inv_ornt_aff(io_orientation(image.affine), shape)


def check_same_grid(path_a, image_a, path_b, image_b, tolerance=1e-3):
    """ValueError naming both files unless their scans share shape, voxel size and position.

    Args:
        tolerance: largest difference allowed between affine entries (mm).
    """
    affine_a, affine_b = canonical_affine(image_a), canonical_affine(image_b)
    shape_a = tuple(int(image_a.shape[i]) for i in np.argsort(io_orientation(image_a.affine)[:, 0]))
    shape_b = tuple(int(image_b.shape[i]) for i in np.argsort(io_orientation(image_b.affine)[:, 0]))
    if shape_a != shape_b:
        raise ValueError(f"{path_a} has shape {shape_a} but {path_b} has {shape_b} "
                         f"(in RAS voxel order): they are not on one voxel grid")
    spacing_a = np.linalg.norm(affine_a[:3, :3], axis=0)
    spacing_b = np.linalg.norm(affine_b[:3, :3], axis=0)
    if not np.allclose(spacing_a, spacing_b, atol=tolerance):
        raise ValueError(f"{path_a} has voxels of {np.round(spacing_a, 4).tolist()} mm but "
                         f"{path_b} of {np.round(spacing_b, 4).tolist()} mm")
    if not np.allclose(affine_a, affine_b, atol=tolerance):
        shift = np.round(affine_a[:3, 3] - affine_b[:3, 3], 3).tolist()
        raise ValueError(f"{path_a} is not aligned with {path_b}: their affines differ "
                         f"(origin shift {shift} mm of the first from the second, or a "
                         f"rotation):\n{affine_a}\nvs\n{affine_b}")


def pad_to_multiple(shape, multiple):
    """``shape`` with every size rounded up to a multiple of ``multiple``.

    A U-Net with ``depth`` poolings needs sizes divisible by ``2 ** depth``.
    """
    if int(multiple) < 1:
        raise ValueError(f"multiple must be a positive integer, got {multiple}")
    return tuple(math.ceil(n / multiple) * multiple for n in shape)


def crop_or_pad(array, start, shape):
    """The window ``array[start : start + shape]`` over the leading axes, zero outside.

    Args:
        array: array whose leading ``len(shape)`` axes are windowed; further
            axes (channels) are kept whole.
        start: first index of the window per axis; may be negative or run past
            the end, where the window is filled with zeros.
        shape: the window's size per axis.

    Returns:
        a new array of shape ``shape + array.shape[len(shape):]``.
    """
    out = np.zeros(tuple(shape) + array.shape[len(shape):], array.dtype)
    source, target = [], []
    for first, size, extent in zip(start, shape, array.shape):
        low, high = max(first, 0), min(first + size, extent)
        if high <= low:
            return out
        source.append(slice(low, high))
        target.append(slice(low - first, high - first))
    out[tuple(target)] = array[tuple(source)]
    return out


def _resample(array, shape, order):
    """``array`` zoomed so its leading three axes have ``shape``.

    ``grid_mode`` maps voxel edges onto voxel edges, so the field of view is kept
    and resampling back to the original shape inverts the mapping geometrically.
    """
    if array.dtype == bool:  # only nearest-neighbour is meaningful for a bool mask
        return _resample(array.astype(np.uint8), shape, 0).astype(bool)
    zoom = [n / s for n, s in zip(shape, array.shape)] + [1.0] * (array.ndim - 3)
    return ndimage.zoom(array, zoom, order=order, mode="nearest", grid_mode=True)


def to_grid(array, spacing, target_spacing=None, target_shape=None, multiple_of=None, order=1):
    """Resample a canonical array to ``target_spacing``, then centre crop/pad it.

    Args:
        array: ``(X, Y, Z)`` or ``(X, Y, Z, C)`` array in canonical voxel order.
        spacing: its voxel size in mm, a number or one per axis.
        target_spacing: voxel size of the grid in mm (number or per axis);
            ``None`` keeps the spacing.
        target_shape: spatial shape of the grid; the resampled array is cropped
            or zero-padded symmetrically to it.
        multiple_of: instead of ``target_shape``, zero-pad each size up to a
            multiple of this (see ``pad_to_multiple``).
        order: spline order of the resampling: 1 for images, 0 for masks.

    Returns:
        ``(grid_array, mapping)`` with ``mapping`` a ``GridMapping``.
    """
    if target_shape is not None and multiple_of is not None:
        raise ValueError("give target_shape or multiple_of, not both")
    if target_spacing is not None and not np.all(np.asarray(target_spacing, float) > 0):
        raise ValueError(f"target_spacing must be positive, got {target_spacing}")
    source_shape = tuple(array.shape[:3])
    if target_spacing is None:
        resampled_shape = source_shape
    else:
        factors = np.broadcast_to(spacing, 3) / np.broadcast_to(target_spacing, 3)
        resampled_shape = tuple(max(1, round(n * f)) for n, f in zip(source_shape, factors))
    if target_shape is not None:
        shape = tuple(int(n) for n in target_shape)
    elif multiple_of is not None:
        shape = pad_to_multiple(resampled_shape, multiple_of)
    else:
        shape = resampled_shape
    for name, size in (("resampled", resampled_shape), ("padded", shape)):
        if math.prod(size) > MAX_GRID_VOXELS:
            raise ValueError(
                f"the {name} grid would be {'x'.join(map(str, size))} voxels "
                f"({source_shape} at {np.round(np.broadcast_to(spacing, 3), 4).tolist()} mm, "
                f"resampled to {target_spacing} mm, padded to a multiple of {multiple_of}), "
                f"more than {MAX_GRID_VOXELS:,}: check the voxel size (--spacing) and --depth")
    if resampled_shape != source_shape:
        array = _resample(array, resampled_shape, order)
    offset = tuple((r - n) // 2 for r, n in zip(resampled_shape, shape))
    mapping = GridMapping(source_shape, resampled_shape, offset, shape)
    if shape != resampled_shape:
        array = crop_or_pad(array, offset, shape)
    return array, mapping


def from_grid(array, geometry, order=1):
    """An array on the network grid put back into the scan's own voxel grid.

    Undoes the crop/pad (cropped-away voxels become 0), the resampling and the
    canonical reorientation, so the result has the file's shape and storage order.

    Args:
        array: ``(*geometry.grid.shape)`` or ``(*geometry.grid.shape, C)`` array.
        geometry: the ``Geometry`` of the scan the grid was made from.
        order: spline order of the resampling: 1 for probabilities, 0 for labels.

    Returns:
        array of shape ``geometry.shape`` (plus the channel axis, if any).
    """
    return apply_orientation(grid_to_canonical(array, geometry, order),
                             ornt_transform(_CANONICAL, geometry.orientation))


def grid_to_canonical(array, geometry, order=1):
    """``from_grid`` without its last step: the scan's voxels, in canonical (RAS+) order.

    The result holds the same values as ``from_grid``'s, axes permuted and
    flipped as ``read_nifti`` reads a file, so it lines up with masks read by it.
    """
    grid = geometry.grid
    if tuple(array.shape[:3]) != grid.shape:
        raise ValueError(f"array of shape {array.shape} is not on the grid of shape {grid.shape}")
    if grid.shape != grid.resampled_shape:
        array = crop_or_pad(array, [-o for o in grid.offset], grid.resampled_shape)
    if grid.resampled_shape != grid.source_shape:
        array = _resample(array, grid.source_shape, order)
    return array


def save_nifti_like(array, geometry, path, dtype):
    """Write ``array`` with the scan's affine and header, atomically.

    The file appears complete or not at all: it is written under a temporary
    name in the same folder and then renamed, so an interrupted run never
    leaves a truncated file that a rerun would take as finished.

    Args:
        array: array in the scan's own voxel grid (``from_grid`` output), shape
            ``geometry.shape`` optionally followed by a channel axis.
        geometry: the scan's ``Geometry``.
        path: a ``.nii`` or ``.nii.gz`` file name.
        dtype: the stored data type (e.g. ``np.uint8`` for labels).
    """
    path = Path(path)
    if tuple(array.shape[:3]) != geometry.shape:
        raise ValueError(
            f"array of shape {array.shape} does not match the scan's shape {geometry.shape}"
        )
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    if suffix not in (".nii", ".nii.gz"):
        raise ValueError(f"{path}: the file name must end in .nii or .nii.gz")
    header = geometry.header.copy()
    header.set_data_dtype(dtype)
    image = nib.Nifti1Image(np.asarray(array, dtype=dtype), geometry.affine, header)
    with atomic_path(path) as temporary:  # keeps .nii.gz: nibabel compresses by name
        nib.save(image, temporary)
