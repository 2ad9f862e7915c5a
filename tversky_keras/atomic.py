"""Files written whole or not at all: a temporary sibling, renamed into place.

A reader (or a run resumed after ``kill -9``) sees the old file or the new
one, never half of one.

Folders filled in several steps (a cache entry, a set of segmentation files)
are staged in a temporary folder named by its writer (:func:`owned_temporary`);
a killed writer leaves it behind, and a later writer removes it once it is
stale (:func:`remove_stale_temporaries`): its process is gone, or it is older
than any write could take. Never while another live writer may be filling it.
"""

import contextlib
import glob
import json
import math
import numbers
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path

from tversky_keras.claims import process_gone

#: A temporary folder whose writer cannot be checked (another host, an older name)
#: is stale when older than this (seconds): more than any single write takes.
TEMPORARY_STALE_AFTER = 3600.0


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary file sits in the same folder, because a rename is atomic
    only within one file system, and keeps ``path``'s suffix (``.nii.gz``
    whole), because nibabel, Keras and Matplotlib pick the format from it. If
    the block raises, the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    stem = path.name[: len(path.name) - len(suffix)]
    temporary = path.with_name(f".{stem}.{uuid.uuid4().hex}.tmp{suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text(path, text):
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)


#: The sibling key that says a value written as ``null`` was infinite: ``<key>_infinite``.
INFINITE_FLAG = "{}_infinite"


def strict(value):
    """``value`` as strict JSON (RFC 8259) holds it: NaN, which marks a value undefined for
    its input, becomes ``None``; an infinite number becomes ``None`` too, and in a mapping
    its key gains a sibling ``<key>_infinite`` set to ``"+inf"`` or ``"-inf"``. NumPy numbers
    and arrays become Python's; tuples become lists.

    >>> strict({"hd95_mm": float("nan"), "relative_volume_difference": float("inf")})
    {'hd95_mm': None, 'relative_volume_difference': None, 'relative_volume_difference_infinite': '+inf'}
    """
    if isinstance(value, dict):
        result = {}
        for key, item in value.items():
            result[key] = strict(item)
            if _is_infinite(item):
                result[INFINITE_FLAG.format(key)] = "+inf" if item > 0 else "-inf"
        return result
    if isinstance(value, (list, tuple)):
        return [strict(item) for item in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # NumPy
        return strict(value.tolist())
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value) if math.isfinite(value) else None
    return value


def _is_infinite(value):
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isinf(value))


def dumps(data, indent=2, default=None):
    """``data`` as strict, key-sorted JSON text (:func:`strict`): what every JSON file the
    project writes and every JSON it prints holds. Anything left that strict JSON cannot
    hold raises ``ValueError``."""
    return json.dumps(strict(data), indent=indent, sort_keys=True, allow_nan=False,
                      default=default)


def write_json(data, path):
    """Write ``data`` as indented, key-sorted strict JSON (:func:`dumps`) to ``path``
    atomically."""
    write_text(path, dumps(data) + "\n")


def owned_temporary(folder, prefix):
    """``folder/.<prefix>-<host>-<pid>-<random>.tmp``: a temporary name that says whose it is."""
    return Path(folder) / f".{prefix}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex}.tmp"


def is_stale_temporary(path, prefix, stale_after=TEMPORARY_STALE_AFTER):
    """Whether a leftover temporary of ``prefix``'s is abandoned: its writer, named in it
    (:func:`owned_temporary`), ran on this host and no longer runs; or, for a writer that
    cannot be checked (another host, a name without one), it is older than ``stale_after``
    seconds."""
    owned = re.fullmatch(re.escape(f".{prefix}-") + r"(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{32}\.tmp",
                         Path(path).name)
    if owned and process_gone(owned["host"], int(owned["pid"])):
        return True
    try:
        return time.time() - Path(path).stat().st_mtime > stale_after
    except FileNotFoundError:
        return False


def remove_stale_temporaries(folder, prefix, stale_after=TEMPORARY_STALE_AFTER):
    """Remove ``prefix``'s abandoned temporaries in ``folder`` (``.<prefix>-*.tmp``, and
    the older ``.<prefix>.*.tmp``; :func:`is_stale_temporary`); return how many."""
    removed = 0
    for leftover in Path(folder).glob(f".{glob.escape(prefix)}[-.]*.tmp"):
        if is_stale_temporary(leftover, prefix, stale_after):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            removed += 1
    return removed
