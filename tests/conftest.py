"""Shared test set-up: quiet TensorFlow, a fixed seed, the shared real data, and the
tiny subjects and model that tests of several modules use."""

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

from reproduce.experiment import PROFILES  # noqa: E402
from reproduce.phantoms import phantom_data  # noqa: E402
from tiny_data import TINY_TRAINING, write_tiny_subjects  # noqa: E402
from tversky_keras.data import discover_subjects  # noqa: E402
from tversky_keras.training import TrainConfig, train  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mslub-mni"


# The suite runs on pytest-xdist workers (setup.cfg: -n auto), each test file on one
# worker so that its module-scoped fixtures are made once; the files that read the
# session's smoke grid (two minutes to make) share one worker, and go first.
SMOKE_GRID_FILES = ("tests/test_reproduce.py", "tests/test_sim2real_grid.py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core, at most four (each imports TensorFlow, about
    1 GB, and makes the session fixtures its tests need)."""
    return max(1, min(os.cpu_count() or 1, 4))


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """xdist's ``loadfile`` with the smoke grid's files as one unit. (``--dist loadgroup``
    would say it with marks, but it groups nothing under pytest 9.2:
    pytest-dev/pytest-xdist#1386.) Another ``--dist`` given by hand is xdist's own."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SharedFixtureScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid):
            file = super()._split_scope(nodeid)
            return SMOKE_GRID_FILES[0] if file in SMOKE_GRID_FILES else file

    return SharedFixtureScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    """The smoke grid's files first (``--no-loadscope-reorder`` keeps this order), so
    that the longest unit of work starts at once."""
    items.sort(key=lambda item: item.nodeid.split("::", 1)[0] not in SMOKE_GRID_FILES)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def mslub_root():
    """The two real MSLUB patients beside the checkout, or a skip saying why."""
    if not (SHARED_DATA / "patient07" / "FLAIR.nii.gz").is_file():
        pytest.skip(f"real MSLUB patients not found at {SHARED_DATA} (../shared is absent)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Three tiny subjects (``sub00``-``sub02``) written once for the session; read only:
    a test that changes files copies the folder or takes ``writable_subjects``."""
    root = tmp_path_factory.mktemp("tiny")
    write_tiny_subjects(root, n=3)
    return root


@pytest.fixture(scope="session")
def tiny_subjects(tiny_data):
    """The subjects of ``tiny_data``; read only."""
    return discover_subjects(tiny_data)


@pytest.fixture
def writable_subjects(tmp_path):
    """Two tiny subjects in this test's ``tmp_path / "data"``, free to change."""
    write_tiny_subjects(tmp_path / "data", n=2)
    return discover_subjects(tmp_path / "data")


@pytest.fixture(scope="session")
def tiny_model(tiny_data, tmp_path_factory):
    """A model trained for one epoch on the tiny subjects: ``last.keras`` of its run."""
    run = tmp_path_factory.mktemp("run")
    train(TrainConfig(epochs=1, **TINY_TRAINING), discover_subjects(tiny_data), [], run,
          verbose=0)
    return run / "last.keras"


@pytest.fixture(scope="session")
def smoke_phantom(tmp_path_factory):
    """The Table-1 smoke profile's phantom (4 subjects at 4 mm, seed 0), made once by
    ``table1``'s own generator (``reproduce.phantoms``); read only."""
    return phantom_data(PROFILES["smoke"], tmp_path_factory.mktemp("phantoms"))


@pytest.fixture(scope="session")
def smoke_cache(smoke_phantom):
    """A function that puts a copy of ``smoke_phantom`` into a ``table1 --cache`` folder,
    where ``table1`` finds it instead of generating it again, and returns the folder."""
    def fill(cache):
        shutil.copytree(smoke_phantom, Path(cache) / smoke_phantom.name)
        return cache
    return fill



# Seed 1 of the session's smoke grid runs two of the five rows, both folds: enough for
# the seeds' summary (rows of two seeds and of one) at four cells instead of ten.
SEED1_ROWS = ("a0.5_b0.5", "a0.1_b0.9")
SEEDS_ARGV = ["--seeds", "2", "--no-figures", "--cells", ",".join(SEED1_ROWS)]


@pytest.fixture(scope="session")
def smoke_grid(tmp_path_factory, smoke_cache):
    """``python -m reproduce.table1 --profile smoke`` (seed 0, all ten cells, with its
    figures), then the same with ``SEEDS_ARGV`` (seed 1's ``SEED1_ROWS`` and the seeds'
    summary), run once for the session: ``(root, argv)``, the argv without
    ``SEEDS_ARGV``. Read only (a rerun with the same options only re-assembles the
    finished grids)."""
    from reproduce import table1

    root = tmp_path_factory.mktemp("smoke")
    smoke_cache(root / "cache")
    args = ["--profile", "smoke", "--results", str(root / "results"),
            "--figures", str(root / "figures"), "--cache", str(root / "cache")]
    assert table1.main(args) == 0                    # seed 0, its figures
    assert table1.main([*args, *SEEDS_ARGV]) == 0     # seed 1's rows and the summary
    return root, args


def strict_json(text, source="JSON"):
    """Parse ``text`` as RFC 8259 JSON, which has no NaN or Infinity (Python's json module
    accepts them unless told otherwise)."""
    import json

    def refuse(constant):
        raise ValueError(f"{source}: {constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(autouse=True, scope="module")
def every_json_written_is_strict(tmp_path_factory):
    """After each test file: every ``.json`` its tests wrote under the session's temporary
    folders (run folders, caches, results, ...) that Python's permissive parser reads also
    parses as strict JSON: no NaN or Infinity. (A file a test damaged on purpose, which no
    parser reads, is not a writer's output.)"""
    import json
    import time

    started = time.time() - 1.0
    yield
    bad = []
    for path in tmp_path_factory.getbasetemp().rglob("*.json"):
        try:
            if not (path.is_file() and path.stat().st_mtime >= started):
                continue
            text = path.read_text()
            json.loads(text)
        except (OSError, ValueError):  # removed while walking, or damaged on purpose
            continue
        try:
            strict_json(text, str(path))
        except ValueError as error:
            bad.append(f"{path}: {error}")
    assert not bad, "JSON that is not strict JSON:\n" + "\n".join(bad)


def json_approx(expected, **tolerance):
    """What strict JSON holds for the number ``expected`` (``tversky_keras.atomic.strict``):
    ``None`` for NaN and infinities (and ``None``), else ``pytest.approx(expected)``."""
    if expected is None or not np.isfinite(expected):
        return None
    return pytest.approx(float(expected), **tolerance)
