"""Shared test set-up: quiet TensorFlow, a fixed seed, the shared real data."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# Phantoms and preprocessed subjects go to a folder of this test session, not the
# user's cache; set before any module reads it, and removed at exit.
os.environ["TVERSKY_KERAS_CACHE"] = tempfile.mkdtemp(prefix="tversky-keras-test-cache-")
atexit.register(shutil.rmtree, os.environ["TVERSKY_KERAS_CACHE"], ignore_errors=True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mslub-mni"


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def mslub_root():
    """The two real MSLUB patients beside the checkout, or a skip saying why."""
    if not (SHARED_DATA / "patient07" / "FLAIR.nii.gz").is_file():
        pytest.skip(f"real MSLUB patients not found at {SHARED_DATA} (../shared is absent)")
    return SHARED_DATA
