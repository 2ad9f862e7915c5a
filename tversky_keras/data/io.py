"""Reading NIfTI scans and lesion masks, with every failure reported as a DataError."""

import warnings
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.orientations import OrientationError, apply_orientation, io_orientation
from nibabel.spatialimages import HeaderDataError

from tversky_keras.data.errors import DataError, DataWarning

MODALITIES = ("T1W", "T2W", "FLAIR")

# What nibabel, gzip and zlib raise for a missing, damaged or truncated file.
_READ_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, zlib.error, ValueError)


def check_modalities(modalities):
    """The modalities as a tuple, or a ValueError naming the bad choice.

    Args:
        modalities: a non-empty subset of ``MODALITIES`` in any order.

    Returns:
        tuple of modality names.
    """
    modalities = tuple(modalities)
    unknown = [m for m in modalities if m not in MODALITIES]
    if not modalities or unknown or len(set(modalities)) != len(modalities):
        raise ValueError(
            f"modalities must be distinct names from {MODALITIES}, got {modalities}"
        )
    return modalities


def read_nifti(path):
    """One 3D scan as a float32 array in canonical (RAS+) voxel order.

    The array is reoriented the way ``nib.as_closest_canonical`` does it, so the
    first axis runs left to right, the second posterior to anterior and the third
    inferior to superior whatever the file's storage order. A 4D file whose
    trailing dimensions are all 1 (as some tools write single volumes) is read as
    3D; any other 4D file is an error because it holds several volumes.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.

    Returns:
        ``(array, image)``: the float32 array of shape ``(X, Y, Z)`` and the
        nibabel image as stored, whose affine and header describe the file.

    Raises:
        DataError: the file is missing, unreadable or truncated, is not 3D, or
            holds NaN or infinite voxels.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        image = nib.load(path)
        _check_header(path, image)
        data = np.asarray(image.dataobj, dtype=np.float32)
    except _READ_ERRORS as error:
        raise DataError(path, f"cannot read the NIfTI file ({error})") from error
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(path, f"expected a 3D scan, found shape {image.shape}")
    n_bad = np.size(data) - np.count_nonzero(np.isfinite(data))
    if n_bad:
        raise DataError(path, f"{n_bad} voxels are NaN or infinite")
    try:
        orientation = io_orientation(image.affine)
        return apply_orientation(data, orientation), image
    except (OrientationError, ValueError, np.linalg.LinAlgError) as error:
        raise DataError(path, f"the header's affine gives no orientation to read the axes by "
                              f"({error}); a voxel size of 0 or a singular affine: fix the "
                              f"header") from error


# Deflate expands at most 1032 times (RFC 1951's longest match, 258 bytes, in 2 bits):
# a gzip file cannot hold more bytes than this many times its own size.
_GZIP_MAX_EXPANSION = 1032


def _check_header(path, image):
    """Before any voxel is read: refuse a header whose data the file cannot hold, and warn
    when it has no orientation.

    A ``.nii.gz`` header claiming more voxels than its compressed bytes could expand
    to is wrong (or the file is cut short): reading it would allocate the claimed
    size first and fail only after. Orientation codes (qform and sform) of 0 mean
    the file does not say where its axes point; the affine is then a guess.
    """
    n_bytes = int(np.prod(image.shape, dtype=object)) * image.get_data_dtype().itemsize
    if path.name.endswith(".gz"):
        room = path.stat().st_size * _GZIP_MAX_EXPANSION
        if n_bytes > room:
            raise DataError(path, f"the header claims {'x'.join(map(str, image.shape))} voxels "
                                  f"of {image.get_data_dtype()} ({n_bytes / 1e9:.3g} GB), more "
                                  f"than a {path.stat().st_size:,}-byte gzip file can hold (at "
                                  f"most {room / 1e9:.3g} GB): the header is wrong or the "
                                  f"file is cut short")
    header = image.header
    if "qform_code" not in header:  # Analyze 7.5 (.img/.hdr): no orientation field at all
        warnings.warn(f"{path}: an Analyze header gives no orientation; its axes are taken as "
                      f"nibabel's Analyze default (x right to left, LAS) with the voxel sizes "
                      f"it gives. Convert it to NIfTI with its orientation set if they are not",
                      DataWarning, stacklevel=3)
    elif int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0:
        warnings.warn(f"{path}: the header gives no orientation (qform and sform codes are "
                      f"0); its axes are taken as RAS with the voxel sizes it gives. Set the "
                      f"orientation (e.g. fslorient, or nibabel's set_sform) if they are not",
                      DataWarning, stacklevel=3)


def background_value(image):
    """What a stored 0 of ``image`` reads as, and the tolerance that finds it.

    With ``scl_slope``/``scl_inter`` scaling a stored 0 reads as ``scl_inter``,
    not 0, so skull-stripped scans have a background that ``!= 0`` cannot find.
    For integer data a voxel within half a stored step of it (``|slope| / 2``)
    was a stored 0; for float data only that value itself.

    Returns:
        ``(value, tolerance)``, floats.
    """
    slope = float(getattr(image.dataobj, "slope", 1.0))
    inter = float(getattr(image.dataobj, "inter", 0.0))
    integer = np.issubdtype(image.get_data_dtype(), np.integer)
    return np.float32(inter).item(), (abs(slope) / 2 if integer else 0.0)


def read_mask(path):
    """A binary mask (lesions or brain) as a uint8 {0, 1} array in canonical order.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file holding only the values 0 and 1
            (stored as integers or floats).

    Returns:
        uint8 array of shape ``(X, Y, Z)``.

    Raises:
        DataError: as ``read_nifti``, or when a voxel is neither 0 nor 1.
    """
    return binary_mask(read_nifti(path)[0], path)


def binary_mask(data, path):
    """``data`` (read from ``path``) as uint8, or a DataError unless every voxel is 0 or 1."""
    binary = (data == 0) | (data == 1)
    if not binary.all():
        # Every digit the value holds: 1.0000001 must not print as 1.
        shown = ", ".join(np.format_float_positional(v, unique=True, trim="-")
                          for v in np.unique(data[~binary])[:5])
        raise DataError(path, f"a mask must hold only 0 and 1, found also {shown}")
    return data.astype(np.uint8)
