"""Finding the subjects of a data set on disk, and loading one as network-ready arrays."""

import csv
import warnings
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from tversky_keras.data.errors import DataError, DataWarning
from tversky_keras.data.grid import Geometry, check_same_grid, to_grid
from tversky_keras.data.io import (MODALITIES, background_value, binary_mask, check_modalities,
                                  read_nifti)
from tversky_keras.data.names import path_name
from tversky_keras.data.normalize import normalize_channels, normalize_method

MASK_NAME = "consensus_gt"
BRAINMASK_NAME = "brainmask"
MANIFEST_COLUMNS = {"T1W": "t1", "T2W": "t2", "FLAIR": "flair"}
LAYOUTS = (
    "<root>/<subject>/{T1W,T2W,FLAIR,consensus_gt}.nii[.gz]",
    "<root>/<subject>/<subject>_{T1W,T2W,FLAIR,consensus_gt,brainmask}.nii[.gz] (MSLUB)",
    "a CSV manifest with columns subject,t1,t2,flair,mask[,brainmask]",
)
_EXTENSIONS = (".nii.gz", ".nii")
_AFFINE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Subject:
    """The files of one subject.

    Attributes:
        id: the subject's name (its folder name or manifest entry).
        images: modality name -> scan file.
        mask: lesion mask file, or ``None`` for unlabelled data.
        brainmask: brain mask file, or ``None`` when the scans are skull-stripped.
    """

    id: str
    images: dict
    mask: Path | None = None
    brainmask: Path | None = None


@dataclass(frozen=True, eq=False)
class Volume:
    """One subject on the network grid, ready for ``make_dataset``.

    Attributes:
        id: the subject's id.
        image: float32 ``(X, Y, Z, C)``, one normalised channel per modality.
        label: uint8 ``(X, Y, Z)`` lesion mask, or ``None`` without a mask.
        brain: bool ``(X, Y, Z)`` brain voxels.
        geometry: the way back to the scan's own voxels (``from_grid``).
        modalities: the channel names, in order.
    """

    id: str
    image: np.ndarray
    label: np.ndarray | None
    brain: np.ndarray
    geometry: Geometry
    modalities: tuple

    @property
    def shape(self):
        """The spatial shape of the grid."""
        return tuple(self.image.shape[:3])

    @property
    def channels(self):
        return self.image.shape[3] if self.image.ndim == 4 else None

    @cached_property
    def label_max(self):
        """The largest label value, or ``None`` without a label."""
        return None if self.label is None or not self.label.size else int(self.label.max())

    @cached_property
    def _voxel_tables(self):
        lesion = np.zeros(0, bool) if self.label is None else np.asarray(self.label) > 0
        return {kind: np.flatnonzero(mask).astype(np.int32)
                for kind, mask in (("brain", np.asarray(self.brain, bool)), ("lesion", lesion))}

    def count(self, kind):
        """The number of ``"brain"`` or ``"lesion"`` voxels."""
        return len(self.voxels(kind))

    def voxels(self, kind):
        """Flat (C-order) indices of the ``"brain"`` or ``"lesion"`` voxels, int32."""
        return self._voxel_tables[kind]


def discover_subjects(root, modalities=MODALITIES, require_mask=True):
    """All subjects under ``root``, sorted by id.

    Three layouts are recognised: a folder per subject holding
    ``{T1W,T2W,FLAIR,consensus_gt}.nii.gz``; the MSLUB distribution, whose files
    are prefixed with the folder name (``patient07/patient07_FLAIR.nii.gz``,
    with an optional ``_brainmask``); and a CSV manifest (``root`` is then the
    ``.csv`` file) with columns ``subject,t1,t2,flair,mask`` and optionally
    ``brainmask``, paths relative to the manifest's folder. ``.nii`` is accepted
    wherever ``.nii.gz`` is.

    Args:
        root: the data folder or the manifest file.
        modalities: the modalities every subject must have.
        require_mask: whether every subject must have a lesion mask.

    Returns:
        list of ``Subject``.

    Raises:
        DataError: ``root`` is missing or holds no subjects, a subject lacks a
            file, the manifest lacks columns, a subject id repeats, or a subject id
            cannot be a folder name of its own (``path_name``): the commands write
            each subject under its id.
    """
    modalities = check_modalities(modalities)
    root = Path(root)
    if not root.exists():
        raise DataError(root, "data folder or manifest not found")
    if root.is_file():
        subjects = _subjects_from_manifest(root, modalities, require_mask)
    else:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        folders = [folder for folder in folders if _holds_scans(folder)]
        taken = {}
        for folder in folders:
            path_name(folder.name, "subject folder", root, taken=taken)
        subjects = [subject_from_folder(folder, modalities, require_mask) for folder in folders]
    if not subjects:
        raise DataError(root, "no subjects found; looked for " + "; ".join(LAYOUTS))
    _refuse_shared_files(root, subjects)
    return sorted(subjects, key=lambda s: s.id)


def _refuse_shared_files(root, subjects):
    """A DataError when two subjects read the same scan file (symlinked folders, a manifest
    listing one file twice): the same scan would be trained and validated on, or counted
    twice, without a word."""
    owner = {}
    for subject in subjects:
        for path in subject.images.values():
            resolved = Path(path).resolve()
            other = owner.setdefault(resolved, subject.id)
            if other != subject.id:
                raise DataError(root, f"subjects {other} and {subject.id} read the same file "
                                      f"{resolved}: one scan would count as two subjects")


def _candidates(folder, name):
    """The file names a scan called ``name`` may have in a subject folder."""
    stems = (name, f"{folder.name}_{name}")
    return [folder / f"{stem}{ext}" for stem in stems for ext in _EXTENSIONS]


def _holds_scans(folder):
    names = (*MODALITIES, MASK_NAME, BRAINMASK_NAME)
    return any(path.is_file() for name in names for path in _candidates(folder, name))


def _find(folder, name, required):
    """The one file of ``folder`` holding scan ``name``; ``None`` if absent and optional."""
    found = [path for path in _candidates(folder, name) if path.is_file()]
    if len(found) > 1:
        raise DataError(folder, f"ambiguous {name}: found " + ", ".join(p.name for p in found))
    if not found and required:
        names = ", ".join(p.name for p in _candidates(folder, name))
        raise DataError(folder, f"missing the {name} scan: none of {names} exists")
    return found[0] if found else None


def subject_from_folder(folder, modalities=MODALITIES, require_mask=True):
    """The subject whose scans are in ``folder`` (either folder layout of ``discover_subjects``).

    Raises:
        DataError: the folder is missing, or lacks a scan (or the mask, if required).
    """
    folder = Path(folder)
    modalities = check_modalities(modalities)
    if not folder.is_dir():
        raise DataError(folder, "subject folder not found")
    return Subject(
        id=folder.name,
        images={m: _find(folder, m, required=True) for m in modalities},
        mask=_find(folder, MASK_NAME, required=require_mask),
        brainmask=_find(folder, BRAINMASK_NAME, required=False),
    )


def _subjects_from_manifest(manifest, modalities, require_mask):
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as file:  # Excel writes a BOM
            reader = csv.reader(file)
            lines = [(reader.line_num, [cell.strip() for cell in line]) for line in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(manifest, f"cannot read the manifest ({error})") from error
    lines = [(number, line) for number, line in lines if any(line)]  # blank lines
    columns = [c.lower() for c in lines[0][1]] if lines else []
    twice = sorted({c for c in columns if c and columns.count(c) > 1})
    if twice:  # dict(zip(...)) would keep the last one's file without a word
        raise DataError(manifest, f"the header names the column {', '.join(twice)} more than "
                                  f"once: say which file is meant")
    rows = [(number, dict(zip(columns, line))) for number, line in lines[1:]]
    needed = ["subject", *(MANIFEST_COLUMNS[m] for m in modalities)]
    needed += ["mask"] if require_mask else []
    missing = [c for c in needed if c not in columns]
    if missing:
        raise DataError(manifest, f"manifest lacks the columns {', '.join(missing)}")

    def file(row, column, required):
        value = row.get(column) or ""
        if not value:
            if required:
                raise DataError(manifest, f"subject {row['subject']} has no {column} file")
            return None
        path = manifest.parent / value
        if not path.is_file():
            raise DataError(
                path, f"file of subject {row['subject']} listed in {manifest.name} not found"
            )
        return path

    seen, taken = set(), {}  # every name is checked before any file
    for number, row in rows:
        if not row.get("subject"):
            raise DataError(manifest, f"line {number} has an empty subject id")
        if row["subject"] in seen:
            raise DataError(manifest, f"duplicate subject id {row['subject']}")
        seen.add(path_name(row["subject"], f"line {number}: subject", manifest, taken=taken))
    return [
        Subject(
            id=row["subject"],
            images={m: file(row, MANIFEST_COLUMNS[m], True) for m in modalities},
            mask=file(row, "mask", require_mask),
            brainmask=file(row, "brainmask", False),
        )
        for _, row in rows
    ]


def _check_same_grid(reference, reference_image, path, image):
    """DataError naming ``path`` unless its scan lies on ``reference``'s voxel grid.

    The grid is compared as ``read_nifti`` reads it (``grid.check_same_grid``):
    shape, voxel size and position in canonical order, so two files that store
    one grid in different axis orders agree, and line up once read.
    """
    try:
        check_same_grid(path, image, reference, reference_image, tolerance=_AFFINE_TOLERANCE)
    except ValueError as error:
        raise DataError(path, str(error).removeprefix(f"{path} ")) from None


def _refuse_copies(subject, files):
    """A DataError when two modalities' files are byte-identical copies (a FLAIR copied in
    as T1W): only files of one size are read and compared, so distinct scans cost a stat."""
    import filecmp

    by_size = {}
    for path, names in files.items():
        try:
            by_size.setdefault(path.stat().st_size, []).append((path, names[0]))
        except OSError:
            continue  # read_nifti names a missing or unreadable file
    for group in by_size.values():
        for i, (path, name) in enumerate(group):
            for other, other_name in group[i + 1:]:
                if filecmp.cmp(path, other, shallow=False):
                    raise DataError(other, f"a byte-identical copy of {path}, given as "
                                           f"{other_name} and {name} of subject {subject.id}: "
                                           f"each modality needs its own scan")


def load_subject(
    subject,
    modalities=MODALITIES,
    target_spacing=None,
    target_shape=None,
    multiple_of=None,
    normalize=True,
):
    """Read, check, normalise and grid one subject.

    Every modality is z-scored inside the brain (``zscore_in_brain``) at its own
    resolution, then all arrays are resampled to ``target_spacing`` (linear for
    images, nearest for masks) and centre cropped/padded like ``to_grid``.

    Args:
        subject: a ``Subject``.
        modalities: the channels, in order.
        target_spacing: grid voxel size in mm; ``None`` keeps the scans' spacing.
        target_shape: grid shape; ``None`` keeps the resampled shape.
        multiple_of: pad each grid size up to a multiple of this instead.
        normalize: ``True`` or ``"zscore"`` z-scores each modality
            (``zscore_in_brain``), ``"wm-peak"`` centres it on its white-matter
            peak (``wm_peak_in_brain``), ``"wm-peak-core"`` does so with the
            statistics read over the brain deeper than 6 mm
            (``wm_peak_core_in_brain``), ``False`` keeps raw intensities.

    Returns:
        a ``Volume``. The brain is the subject's brain mask if it has one, else
        the voxels where any modality is non-zero (skull-stripped scans).

    Raises:
        DataError: a file cannot be read, or the scans and masks do not share
            one shape and affine.
    """
    modalities = check_modalities(modalities)
    method = normalize_method(normalize)
    absent = [m for m in modalities if m not in subject.images]
    if absent:
        raise DataError(None, f"subject {subject.id} has no {', '.join(absent)} scan")
    files = {}
    for modality in modalities:
        files.setdefault(Path(subject.images[modality]).resolve(), []).append(modality)
    shared = {path: names for path, names in files.items() if len(names) > 1}
    if shared:
        path, names = next(iter(shared.items()))
        raise DataError(path, f"given for {' and '.join(names)} of subject {subject.id}: each "
                              f"modality needs its own scan")
    _refuse_copies(subject, files)
    reference_path = subject.images[modalities[0]]
    channels, backgrounds, reference = [], [], None
    for modality in modalities:
        path = subject.images[modality]
        data, image = read_nifti(path)
        if reference is None:
            reference = image
        _check_same_grid(reference_path, reference, path, image)
        channels.append(data)
        backgrounds.append(background_value(image))

    def read_aligned_mask(path):
        data, image = read_nifti(path)
        _check_same_grid(reference_path, reference, path, image)
        return binary_mask(data, path)

    if subject.brainmask is not None:
        brain = read_aligned_mask(subject.brainmask).astype(bool)
    else:
        # Skull-stripped scans: the brain is where any scan differs from its background
        # (what a stored 0 reads as, which scl_inter moves off 0).
        brain = np.logical_or.reduce([np.abs(c - value) > tolerance
                                      for c, (value, tolerance) in zip(channels, backgrounds)])
        if brain.all():
            warnings.warn(f"{reference_path}: no voxel of subject {subject.id}'s scans is "
                          f"background, so the whole field of view is taken as its brain; if "
                          f"the scans are not skull-stripped, give a brain mask (a brainmask "
                          f"file, or predict --brain)", DataWarning, stacklevel=2)
    if not brain.any():
        raise DataError(subject.brainmask or reference_path,
                        "no brain voxels: the brain mask is empty, or every scan is all 0")
    for modality, channel in zip(modalities, channels):
        inside = channel[brain]
        if inside.min() == inside.max():
            raise DataError(subject.images[modality],
                            f"the {modality} scan is constant ({inside.min():g}) inside the "
                            f"brain: an empty or failed acquisition")
    # The arrays are in canonical order, and so is the geometry's voxel size.
    geometry = Geometry.from_image(reference)
    if method is not None:
        channels = normalize_channels(channels, brain, method, geometry.spacing)

    grid = dict(
        spacing=geometry.spacing,
        target_spacing=target_spacing,
        target_shape=target_shape,
        multiple_of=multiple_of,
    )
    image, mapping = to_grid(np.stack(channels, axis=-1), order=1, **grid)
    brain, _ = to_grid(brain, order=0, **grid)
    label = None
    if subject.mask is not None:
        label, _ = to_grid(read_aligned_mask(subject.mask), order=0, **grid)
    return Volume(
        id=subject.id,
        image=image,
        label=label,
        brain=brain,
        geometry=replace(geometry, grid=mapping),
        modalities=modalities,
    )
