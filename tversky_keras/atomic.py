"""Files written whole or not at all: a temporary sibling, renamed into place.

A reader (or a run resumed after ``kill -9``) sees the old file or the new
one, never half of one.
"""

import contextlib
import json
import os
import uuid
from pathlib import Path


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


def write_json(data, path):
    """Write ``data`` as indented, key-sorted JSON to ``path`` atomically."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
