"""Subjects preprocessed once to disk, then read through memory maps.

Decoding a NIfTI file, reorienting, resampling and z-scoring it costs seconds
per 1-mm subject and holds every array in memory; training on hundreds of
subjects that way does not fit in a workstation. ``preprocess`` does that work
once per subject and keeps the result as plain ``.npy`` files (as nnU-Net keeps
its preprocessed cases), which ``CachedVolume`` opens as memory maps whenever
an array is asked for, so a patch reads only its own bytes and the memory a
data set needs does not grow with its number of subjects::

    CACHE/<subject>-<key>/volume.json         id, modalities, shape, counts, geometry,
                                              each array file's size and CRC-32
    CACHE/<subject>-<key>/image.npy           float32 (X, Y, Z, C)
    CACHE/<subject>-<key>/label.npy           uint8 (X, Y, Z), absent without a mask
    CACHE/<subject>-<key>/brain.npy           bool (X, Y, Z)
    CACHE/<subject>-<key>/brain_voxels.npy    int32 flat indices of the brain voxels
    CACHE/<subject>-<key>/lesion_voxels.npy   int32 flat indices of the lesion voxels

``<key>`` hashes the preprocessing settings, this module's format version and
the content of every source file (its size and the SHA-256 of its bytes), so a
changed file or setting gives a new entry and a stale one is never read. An
entry is written into a temporary sibling folder named by its writer and
renamed into place, so a killed run leaves no half entry (the next write of that
entry removes the leftover once its writer is gone), and processes
preprocessing the same subject at once (workers of one training, cells of one
grid) keep whichever finished first.

An entry checks itself when it is opened (``cached_subject``, ``CachedVolume.check``):
each array file's size and CRC-32, recorded when it was written, against its bytes
now (about 0.03 s per 100 MB), so bytes overwritten in place (a zeroed block, a
wiped label) are an error that names the file and the folder to delete, never
trained on.
"""

import base64
import errno
import zlib
import hashlib
import json
import os
import re
import shutil
import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import nibabel as nib
import numpy as np

from tversky_keras.atomic import owned_temporary, remove_stale_temporaries
from tversky_keras.data.errors import DataError
from tversky_keras.data.grid import Geometry, GridMapping
from tversky_keras.data.io import MODALITIES, check_modalities
from tversky_keras.data.names import portable_name
from tversky_keras.data.normalize import normalize_method
from tversky_keras.data.subjects import Volume, load_subject

# numpy parses a .npy header with ast.literal_eval, and CPython 3.11-3.12 can raise
# "SystemError: AST constructor recursion depth mismatch" when threads parse at once
# (python/cpython#106905). tf.data's parallel calls open cached arrays from several
# threads (make_dataset), so the headers are read one at a time; the arrays themselves
# are memory-mapped and read in parallel as before.
_NPY_HEADER_LOCK = threading.Lock()

# Bump when what an entry holds, or how it is computed, changes (2: checksums).
CACHE_FORMAT = 2
_MANIFEST = "volume.json"
_HEADERS = {"Nifti1Header": nib.Nifti1Header, "Nifti2Header": nib.Nifti2Header}


def default_cache_dir():
    """Where preprocessed subjects go unless told otherwise.

    ``$TVERSKY_KERAS_CACHE/preprocessed`` if that variable is set, else
    ``$XDG_CACHE_HOME/tversky-keras/preprocessed`` (``~/.cache`` by default).
    """
    root = os.environ.get("TVERSKY_KERAS_CACHE")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tversky-keras"
    return Path(root) / "preprocessed"


def file_identity(role, path):
    """``[role, size, SHA-256 of the bytes]`` of a file: what tells its content changed.

    The bytes, not the size and modification time: a file rewritten with other
    content of the same size and its time put back (``cp -p``, ``rsync -t``, a
    ``touch -r``) would otherwise keep its old entry. The digest is remembered
    per process for a file whose size, times and inode have not changed, so a
    subject read again in one run is hashed once.
    """
    path = Path(path)
    try:
        stat = path.stat()
        seen = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns,
                stat.st_ino)
        digest = _DIGESTS.get(seen)
        if digest is None:
            sha = hashlib.sha256()
            with open(path, "rb") as stream:
                for block in iter(lambda: stream.read(1 << 20), b""):
                    sha.update(block)
            digest = sha.hexdigest()
            _DIGESTS[seen] = digest
    except OSError as error:
        raise DataError(path, f"cannot read the {role} file ({error.strerror})") from error
    return [role, stat.st_size, digest]


# (resolved path, size, mtime, ctime, inode) -> SHA-256 of the file's bytes, this process.
_DIGESTS = {}


def cache_key(subject, settings, cache_format=CACHE_FORMAT):
    """A hex digest of the format, the settings and every source file's identity."""
    files = [file_identity(m, p) for m, p in sorted(subject.images.items())]
    for role in ("mask", "brainmask"):
        if getattr(subject, role) is not None:
            files.append(file_identity(role, getattr(subject, role)))
    content = {"format": cache_format, "id": subject.id, "settings": settings, "files": files}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:20]


def source_digest(subject):
    """A hex digest of a subject's id and source files' identity alone: what a run folder
    records of its data (``tversky_keras.run_folder.run_record``). It is ``cache_key``
    with no settings at format 1, whatever ``CACHE_FORMAT`` is now, so the records of
    runs made before the cache's format changed still match their data."""
    return cache_key(subject, settings={}, cache_format=1)


def _settings(modalities, target_spacing, target_shape, multiple_of, normalize):
    return {
        "modalities": list(check_modalities(modalities)),
        "target_spacing": target_spacing,
        "target_shape": None if target_shape is None else [int(n) for n in target_shape],
        "multiple_of": multiple_of,
        # A z-score stays True, so the entries made before there was a choice stay valid.
        "normalize": {None: False, "zscore": True}.get(normalize_method(normalize),
                                                       normalize_method(normalize)),
    }


def entry_folder(cache_dir, subject, settings):
    return Path(cache_dir) / f"{portable_name(subject.id)[:80]}-{cache_key(subject, settings)}"


def cached_subject(
    subject,
    cache_dir=None,
    modalities=MODALITIES,
    target_spacing=None,
    target_shape=None,
    multiple_of=None,
    normalize=True,
):
    """``load_subject``'s result, from the cache, preprocessed into it first if absent.

    Args:
        subject: a ``Subject``.
        cache_dir: the cache folder (``default_cache_dir()`` when ``None``).
        modalities: as for ``load_subject``; part of the entry's key.
        target_spacing: as for ``load_subject``; part of the entry's key.
        target_shape: as for ``load_subject``; part of the entry's key.
        multiple_of: as for ``load_subject``; part of the entry's key.
        normalize: as for ``load_subject``; part of the entry's key.

    Returns:
        a ``CachedVolume``.

    Raises:
        DataError: as ``load_subject`` for bad input, or the cache folder
            cannot be written.
    """
    settings = _settings(modalities, target_spacing, target_shape, multiple_of, normalize)
    folder = entry_folder(default_cache_dir() if cache_dir is None else cache_dir, subject,
                          settings)
    if not (folder / _MANIFEST).is_file():
        volume = load_subject(subject, modalities=settings["modalities"],
                              target_spacing=target_spacing, target_shape=target_shape,
                              multiple_of=multiple_of, normalize=normalize)
        _write_entry(volume, folder, settings)
    return CachedVolume(folder).check()


def preprocess(subjects, cache_dir=None, progress=None, **settings):
    """Every subject through ``cached_subject``, one at a time; returns their ``CachedVolume``s.

    Args:
        subjects: ``Subject`` list.
        cache_dir: the cache folder (``default_cache_dir()`` when ``None``).
        progress: optional callable ``progress(done, total, subject_id)``.
        **settings: ``modalities``, ``target_spacing``, ``target_shape``,
            ``multiple_of``, ``normalize`` as for ``load_subject``.
    """
    volumes = []
    for done, subject in enumerate(subjects, 1):
        volumes.append(cached_subject(subject, cache_dir, **settings))
        if progress is not None:
            progress(done, len(subjects), subject.id)
    return volumes


def _geometry_json(geometry):
    header = geometry.header
    return {
        "affine": geometry.affine.tolist(),
        "header_class": type(header).__name__,
        "header": base64.b64encode(header.binaryblock).decode("ascii"),
        "shape": list(geometry.shape),
        "orientation": geometry.orientation.tolist(),
        "spacing": list(geometry.spacing),
        "grid": {k: list(getattr(geometry.grid, k))
                 for k in ("source_shape", "resampled_shape", "offset", "shape")},
    }


def _geometry_from_json(data):
    header = _HEADERS[data["header_class"]](binaryblock=base64.b64decode(data["header"]))
    grid = GridMapping(**{k: tuple(v) for k, v in data["grid"].items()})
    return Geometry(np.array(data["affine"]), header, tuple(data["shape"]),
                    np.array(data["orientation"]), tuple(data["spacing"]), grid)


def _write_entry(volume, folder, settings):
    """Write ``volume`` as a cache entry at ``folder``, atomically (a renamed sibling folder)."""
    if type(volume.geometry.header).__name__ not in _HEADERS:
        raise DataError(volume.id, f"cannot cache a {type(volume.geometry.header).__name__}")
    temporary = owned_temporary(folder.parent, folder.name)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(folder.parent, folder.name)
        temporary.mkdir()
        np.save(temporary / "image.npy", np.ascontiguousarray(volume.image, np.float32))
        np.save(temporary / "brain.npy", np.asarray(volume.brain, bool))
        np.save(temporary / "brain_voxels.npy", volume.voxels("brain"))
        np.save(temporary / "lesion_voxels.npy", volume.voxels("lesion"))
        if volume.label is not None:
            np.save(temporary / "label.npy", np.asarray(volume.label, np.uint8))
        files = {path.name: _file_record(path) for path in sorted(temporary.glob("*.npy"))}
        manifest = {
            "files": files,
            "format": CACHE_FORMAT, "id": volume.id, "modalities": list(volume.modalities),
            "shape": list(volume.shape), "channels": volume.channels,
            "has_label": volume.label is not None, "label_max": volume.label_max,
            "n_brain": volume.count("brain"), "n_lesion": volume.count("lesion"),
            "settings": settings, "geometry": _geometry_json(volume.geometry),
        }
        (temporary / _MANIFEST).write_text(json.dumps(manifest, indent=1))
        try:
            os.rename(temporary, folder)
        except OSError:
            # Another process wrote the same entry first: the same content, keep theirs.
            if not (folder / _MANIFEST).is_file():
                raise
    except OSError as error:
        raise DataError(folder.parent, f"cannot write the preprocessed cache "
                                       f"({_write_failure(error, folder.parent)})") from error
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _file_record(path, chunk=1 << 23):
    """``{"bytes": size, "crc32": 8 hex digits}`` of a file's bytes, read in chunks."""
    crc, size = 0, 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            crc, size = zlib.crc32(block, crc), size + len(block)
    return {"bytes": size, "crc32": f"{crc:08x}"}


def _write_failure(error, folder):
    """What a failed write means, in words: a full disk (ENOSPC, or numpy's short write
    "N requested and M written", which is what a full disk gives it) says so."""
    text = str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT) or re.search(r"\d+ requested and \d+ "
                                                                r"written", text):
        try:
            free = f"{shutil.disk_usage(folder).free / 1e6:,.0f} MB free"
        except OSError:
            free = "free space unknown"
        return (f"the disk is full or over quota ({free} there; {text}): free some space or "
                f"give another --cache")
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"{text}: this folder cannot be written; give --cache DIR, or set "
                f"TVERSKY_KERAS_CACHE to a folder that can")
    return text


@dataclass(frozen=True, eq=False)
class CachedVolume:
    """A preprocessed subject on disk, with the interface of ``Volume``.

    ``image``, ``label`` and ``brain`` open a fresh read-only memory map on each
    access: nothing is read until it is sliced, and nothing stays mapped once
    the caller drops the array.
    """

    folder: Path

    @cached_property
    def _manifest(self):
        path = Path(self.folder) / _MANIFEST
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise DataError(path, f"unreadable cache entry ({error}); delete the folder") from error
        if manifest.get("format") != CACHE_FORMAT:
            raise DataError(path, f"cache format {manifest.get('format')}, expected "
                                  f"{CACHE_FORMAT}; delete the folder")
        return manifest

    def _array(self, name):
        path = Path(self.folder) / f"{name}.npy"
        try:
            with _NPY_HEADER_LOCK:
                return np.load(path, mmap_mode="r")
        except (OSError, ValueError) as error:
            raise DataError(path, f"unreadable cache file ({error}); delete {self.folder}") \
                from error

    @property
    def id(self):
        return self._manifest["id"]

    @property
    def modalities(self):
        return tuple(self._manifest["modalities"])

    @property
    def shape(self):
        """The spatial shape of the grid."""
        return tuple(self._manifest["shape"])

    @property
    def channels(self):
        return self._manifest["channels"]

    @property
    def label_max(self):
        """The largest label value, or ``None`` without a label."""
        return self._manifest["label_max"]

    @cached_property
    def geometry(self):
        return _geometry_from_json(self._manifest["geometry"])

    @property
    def image(self):
        return self._array("image")

    @property
    def label(self):
        return self._array("label") if self._manifest["has_label"] else None

    @property
    def brain(self):
        return self._array("brain")

    def count(self, kind):
        """The number of ``"brain"`` or ``"lesion"`` voxels."""
        return self._manifest[f"n_{kind}"]

    def voxels(self, kind):
        """Flat indices of the ``"brain"`` or ``"lesion"`` voxels (a memory map)."""
        return self._array(f"{kind}_voxels")

    def check(self):
        """This entry, or a DataError naming it if a file is missing, cut short, reshaped
        or changed.

        Every array file's size and CRC-32 are compared with those recorded when
        it was written, and every array is opened (its header read and its
        length checked against the file's size): a damaged entry is found before
        training starts instead of inside the input pipeline.
        """
        shapes = {"image": (*self.shape, self.channels), "brain": self.shape,
                  "brain_voxels": (self.count("brain"),),
                  "lesion_voxels": (self.count("lesion"),)}
        if self._manifest["has_label"]:
            shapes["label"] = self.shape
        for name, shape in shapes.items():
            if tuple(self._array(name).shape) != tuple(shape):
                raise DataError(Path(self.folder) / f"{name}.npy",
                                f"holds shape {tuple(self._array(name).shape)}, its manifest "
                                f"says {tuple(shape)}; delete {self.folder}")
        files = self._manifest.get("files")
        if not isinstance(files, dict) or not files:
            raise DataError(Path(self.folder) / _MANIFEST, f"records no checksums of its files; "
                                                          f"delete {self.folder}")
        for name, recorded in files.items():
            path = Path(self.folder) / name
            try:
                found = _file_record(path)
            except OSError as error:
                raise DataError(path, f"unreadable cache file ({error}); delete "
                                      f"{self.folder}") from error
            if found != recorded:
                what = ("its size" if found["bytes"] != recorded["bytes"] else "its bytes")
                raise DataError(path, f"{what} changed since it was written ({found['bytes']:,} "
                                      f"bytes, CRC-32 {found['crc32']}; recorded "
                                      f"{recorded['bytes']:,}, {recorded['crc32']}): a damaged "
                                      f"cache entry; delete {self.folder}")
        return self

    def load(self):
        """This subject as an in-memory ``Volume``."""
        label = self.label
        return Volume(self.id, np.array(self.image), None if label is None else np.array(label),
                      np.array(self.brain), self.geometry, self.modalities)
