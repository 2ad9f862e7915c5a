"""The embedded default data set: the synthetic phantom, generated into the cache on first use.

``reproduce.table1`` and ``reproduce.sim2real`` train on it when no ``--data`` is
given; its folder's name carries the generator's version, the subjects, the voxel
size and the look, so a phantom made otherwise is never reused.
"""

import os
import re
import shutil
import socket
import sys
import uuid
from pathlib import Path

from tversky_keras.data.cache import default_cache_dir

# The package's cache root ($TVERSKY_KERAS_CACHE, else ~/.cache/tversky-keras): the
# phantom is generated there, and subjects are preprocessed to its preprocessed/.
DEFAULT_CACHE = default_cache_dir().parent


def phantom_folder(profile, cache=DEFAULT_CACHE, version=None, appearance="calibrated"):
    """Where the profile's phantom lives in the cache; the generator's version (default:
    the current one) and a randomized appearance are in the name, so a phantom made
    otherwise is never reused."""
    from tversky_keras.data.phantom import PHANTOM_VERSION

    version = PHANTOM_VERSION if version is None else version
    suffix = "" if appearance == "calibrated" else f"-{appearance}"
    return Path(cache) / (f"phantom-v{version}-{profile.phantom_subjects}x"
                          f"{profile.phantom_spacing:g}mm-seed0{suffix}")


def phantom_data(profile, cache=DEFAULT_CACHE, version=None, appearance="calibrated"):
    """The embedded default data set, generated on first use into the cache.

    It is generated into a temporary sibling folder and renamed into place,
    so processes that start at once on an empty cache never write into one
    folder: the first rename wins and the others discard their (identical)
    copies.
    """
    # Looked up at each call, so that a test can stand in for the generator.
    from tversky_keras.data.phantom import PHANTOM_VERSION, synthesize_dataset
    from tversky_keras.data.phantom.dataset import default_workers

    version = PHANTOM_VERSION if version is None else version
    folder = phantom_folder(profile, cache, version, appearance)
    if (folder / "phantom.json").is_file():
        return folder
    print(f"generating the synthetic MS phantom (version {version}, {profile.phantom_subjects} "
          f"subjects at {profile.phantom_spacing:g} mm) into {folder} ...", flush=True)
    remove_abandoned(folder)
    temporary = folder.with_name(f".{folder.name}.{_HOST}-{os.getpid()}-{uuid.uuid4().hex}.tmp")
    try:
        synthesize_dataset(temporary, n_subjects=profile.phantom_subjects, seed=0,
                           spacing=profile.phantom_spacing, version=version,
                           appearance=appearance,
                           workers=default_workers(profile.phantom_subjects,
                                                   profile.phantom_spacing))
        _rename_into_place(temporary, folder)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return folder


# A generator's temporary folder is named for its machine and process, so that one a
# killed generator left (SIGKILL, or SIGTERM in a command that exits at once) can be told
# from one another process is writing now.
_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"


def _running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's process: running
        return True
    return True


def remove_abandoned(folder):
    """Remove the temporary folders that generators of ``folder``'s phantom on this machine
    left when they were killed (their process is gone), one line each on stderr.
    Folders of running processes, of other machines (a shared cache) and of unknown
    name are left alone."""
    pattern = re.compile(re.escape(f".{folder.name}.{_HOST}-") + r"(\d+)-[0-9a-f]{32}\.tmp")
    for path in folder.parent.glob(f".{folder.name}.*.tmp"):
        found = pattern.fullmatch(path.name)
        if found and not _running(int(found.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            print(f"removed {path}: an interrupted phantom generator's temporary folder",
                  file=sys.stderr, flush=True)


def _rename_into_place(temporary, folder):
    """Rename ``temporary`` to ``folder`` unless another process put a phantom there first."""
    for _ in range(2):
        try:
            os.rename(temporary, folder)
            return
        except OSError:
            if (folder / "phantom.json").is_file():
                return
        # An incomplete folder left by an interrupted run of an older version.
        aside = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}.incomplete")
        try:
            os.rename(folder, aside)
        except FileNotFoundError:
            pass
        shutil.rmtree(aside, ignore_errors=True)
    raise SystemExit(f"could not put the phantom into place at {folder}")
