"""The embedded default data set: the synthetic phantom, generated into the cache on first use.

``reproduce.table1`` and ``reproduce.sim2real`` train on it when no ``--data`` is
given; its folder's name carries the generator's version, the subjects, the voxel
size and the look, so a phantom made otherwise is never reused.
"""

import os
import shutil
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
    temporary = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}.tmp")
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
