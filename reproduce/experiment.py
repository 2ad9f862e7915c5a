"""The paper's experiment as independent cells: one (alpha, beta) row x one fold.

Layout (nnU-Net style, navigable without docs)::

    results/<experiment>/experiment.json           profile, data, split, seed
    results/<experiment>/<row>/fold<k>/run/        the training run (tversky_keras.training)
    results/<experiment>/<row>/fold<k>/test/<id>.npz   test probabilities, truth, brain, FLAIR
                                                   in the scan's own voxels (canonical order),
                                                   and their voxel size in mm (spacing)
    results/<experiment>/<row>/fold<k>/metrics.json    per-subject test metrics: the paper's
                                                   and the MS challenges' (challenge_scores)
    results/<experiment>/<row>/fold<k>/done.json       written last: the cell is finished
    results/<experiment>/<row>/fold<k>/claim.<g>.json  while a process runs the cell

A cell with ``done.json`` is skipped on a rerun; any other cell is (re)started,
and its training resumes from its last finished epoch. Cells share nothing but
the read-only data, so they can run in parallel on several machines that
share ``results/``: a process claims a cell (``tversky_keras.claims``) before
running it, so that no cell runs twice.
"""

import dataclasses
import json
import re
import time
from pathlib import Path

import keras
import nibabel as nib
import numpy as np

from tversky_keras.atomic import atomic_path, write_json
from tversky_keras.data import discover_subjects, load_subject
from tversky_keras.data.grid import Geometry
from tversky_keras.evaluation import challenge_metrics, lesion_metrics
from tversky_keras.inference import segment_subject
from tversky_keras.run_folder import ADDED_LATER, log_dataframe
from tversky_keras.training import TrainConfig, train

ROWS = ((0.5, 0.5), (0.4, 0.6), (0.3, 0.7), (0.2, 0.8), (0.1, 0.9))
FOLDS = (0, 1)
METRICS = ("dsc", "sensitivity", "specificity", "f2", "apr")
TEST_ARRAYS = ("probability", "label", "brain", "flair")
# A true lesion is found when any of its voxels is predicted, as the paper's lesion TPR counts it.
CHALLENGE_OVERLAP = "any"

# Table 1 of Salehi et al. 2017 (test set, percent), from ../shared/PAPER.md.
PAPER_TABLE1 = {
    (0.5, 0.5): (53.42, 49.85, 99.93, 51.77, 52.57),
    (0.4, 0.6): (54.57, 55.85, 99.91, 55.47, 54.34),
    (0.3, 0.7): (56.42, 56.85, 99.93, 57.32, 56.04),
    (0.2, 0.8): (48.57, 61.00, 99.89, 54.53, 53.31),
    (0.1, 0.9): (46.42, 65.57, 99.87, 56.11, 51.65),
}


@dataclasses.dataclass(frozen=True)
class Profile:
    """How hard the experiment works: grid, network, optimiser, budget.

    A profile is a set of overrides of ``TrainConfig``: every field that
    ``TrainConfig`` also has (``TRAINING_FIELDS``, same names, same meaning)
    replaces its default, and ``TrainConfig`` checks them when the profile is
    defined. ``steps_per_epoch=0`` means one pass over the training subjects.
    The other fields say what data the profile generates when none is given.
    """

    name: str
    description: str
    spacing: float | None
    patch_size: tuple | None
    batch_size: int
    epochs: int
    steps_per_epoch: int
    base_filters: int
    depth: int
    learning_rate: float
    lr_decay_steps: int
    phantom_subjects: int
    phantom_spacing: float
    pool_batch: bool = False

    def __post_init__(self):
        self.train_config(n_train=1)  # a bad value fails here, when the profile is defined

    def overrides(self):
        """The profile's ``TrainConfig`` settings, by ``TrainConfig``'s own names."""
        return {name: getattr(self, name) for name in TRAINING_FIELDS}

    def train_config(self, n_train, **settings):
        """``TrainConfig``: its defaults, then this profile's overrides, then ``settings``.

        Args:
            n_train: training subjects (sets ``steps_per_epoch`` when the profile's is 0).
            settings: more ``TrainConfig`` fields (alpha, beta, seed, ...).
        """
        values = self.overrides()
        if not values["steps_per_epoch"]:
            values["steps_per_epoch"] = -(-n_train // self.batch_size)
        return TrainConfig(**{**values, **settings})


TRAINING_FIELDS = tuple(f.name for f in dataclasses.fields(Profile)
                        if f.name in {g.name for g in dataclasses.fields(TrainConfig)})


PROFILES = {
    "smoke": Profile(
        name="smoke", description="seconds, for tests: a tiny network, a few steps",
        spacing=None, patch_size=(16, 16, 16), batch_size=2, epochs=2, steps_per_epoch=2,
        base_filters=2, depth=2, learning_rate=1e-3, lr_decay_steps=1000,
        phantom_subjects=4, phantom_spacing=4.0),
    "quick": Profile(
        name="quick", description="for a 2-core CPU: 2-mm phantom, 32^3 patches, a small "
                                  "U-Net, Adam 3e-4, 800 steps per cell (the minutes its grids "
                                  "took are on the Table 1 results page, with their machines)",
        spacing=None, patch_size=(32, 32, 32), batch_size=4, epochs=10, steps_per_epoch=80,
        base_filters=8, depth=3, learning_rate=3e-4, lr_decay_steps=1000,
        phantom_subjects=15, phantom_spacing=2.0, pool_batch=True),
    "paper": Profile(
        name="paper", description="the paper's setting, for a GPU: whole 1-mm volumes, "
                                  "Adam 1e-4 x0.9 every 1000 steps, 1000 epochs",
        spacing=None, patch_size=None, batch_size=1, epochs=1000, steps_per_epoch=0,
        base_filters=16, depth=4, learning_rate=1e-4, lr_decay_steps=1000,
        phantom_subjects=15, phantom_spacing=1.0),
}


# Profiles that only the sim-to-real experiment offers (``reproduce.sim2real --profile``):
# Table 1's grid trains ten cells, so its budget stays the quick profile's.
SIM2REAL_PROFILES = {
    "long": Profile(
        name="long", description="sim-to-real only, about 10 minutes of training on a 2-core "
                                 "CPU: the quick profile's 2-mm phantom and 32^3 patches, a "
                                 "wider U-Net (12 filters) and 2,000 steps",
        spacing=None, patch_size=(32, 32, 32), batch_size=4, epochs=25, steps_per_epoch=80,
        base_filters=12, depth=3, learning_rate=3e-4, lr_decay_steps=1000,
        phantom_subjects=15, phantom_spacing=2.0, pool_batch=True),
}


def challenge_scores(truth, probability, spacing, brain):
    """The MS challenges' metrics of one scan or a list (``challenge_metrics``), as the
    paper's are measured: at probability 0.5, inside the brain, lesion overlap "any".

    ``spacing``: the voxel size in mm along the arrays' axes (one per volume for a list).
    """
    return challenge_metrics(truth, probability, spacing, threshold=0.5,
                             overlap=CHALLENGE_OVERLAP, mask=brain)


def row_name(alpha, beta):
    """A row's folder name: ``row_name(0.3, 0.7)`` is ``a0.3_b0.7`` (``row_penalties``'s
    inverse)."""
    return f"a{alpha:g}_b{beta:g}"


def row_penalties(name):
    """``(alpha, beta)`` of a row name, ``row_name``'s inverse: ``a0.3_b0.7`` -> (0.3, 0.7).

    >>> row_penalties(row_name(0.3, 0.7))
    (0.3, 0.7)
    """
    match = re.fullmatch(r"a([^_]+)_b(.+)", name)
    if match is None:
        raise ValueError(f"{name!r} is no row name (a<alpha>_b<beta>, e.g. a0.3_b0.7)")
    return float(match[1]), float(match[2])


# --- the results folder's layout: the one reader (table1, figures and the cells use it) ---

def cell_folder(root, alpha, beta, fold):
    """``<root>/<row>/fold<k>``: one cell's folder."""
    return Path(root) / row_name(alpha, beta) / f"fold{fold}"


def is_finished(cell):
    """A cell is finished when its ``done.json`` exists (written last)."""
    return (Path(cell) / "done.json").is_file()


def finished_cells(root):
    """``{(alpha, beta): [finished cell folders]}`` for every row of the grid, in order."""
    return {(alpha, beta): [cell for cell in (cell_folder(root, alpha, beta, f) for f in FOLDS)
                            if is_finished(cell)]
            for alpha, beta in ROWS}


def cell_metrics(cell):
    """A cell's per-subject test metrics: ``{subject id: lesion_metrics dict}``."""
    return json.loads((Path(cell) / "metrics.json").read_text())


def held_out_file(cell, subject_id):
    """``<cell>/test/<id>.npz``: one test subject's arrays."""
    return Path(cell) / "test" / f"{subject_id}.npz"


def held_out_subjects(cell):
    """``{subject id: test array file}`` of a cell, sorted by id."""
    return {path.stem: path for path in sorted((Path(cell) / "test").glob("*.npz"))}


def held_out_arrays(path, names=TEST_ARRAYS):
    """One test subject's arrays from its file: probability (float32), label, brain, flair."""
    with np.load(path) as data:
        arrays = {name: data[name] for name in names}
    if "probability" in arrays:
        arrays["probability"] = arrays["probability"].astype(np.float32)
    return arrays


def held_out_spacing(path, subject=None):
    """The voxel size in mm (canonical axes) of a test file's arrays, or ``None`` if unknown.

    Cells written before the spacing was saved in the file fall back on the
    subject's scan (its NIfTI header, as ``load_subject`` reads it); with no
    readable scan the spacing is unknown.
    """
    with np.load(path) as data:
        if "spacing" in data:
            return tuple(float(s) for s in data["spacing"])
    if subject is None:
        return None
    try:
        image = nib.load(next(iter(subject.images.values())))
    except (OSError, StopIteration, nib.filebasedimages.ImageFileError):
        return None
    return Geometry.from_image(image).spacing


def final_training_loss(cell):
    """The last epoch's training loss of a cell's run."""
    return float(log_dataframe(Path(cell) / "run")["loss"][-1])


def two_fold_split(subject_ids, seed=0):
    """Two disjoint test folds covering every subject, fixed by ``seed``.

    Returns ``[(train_ids, test_ids), (train_ids, test_ids)]``; fold 0 tests
    on the first half of a seeded permutation of the sorted ids.
    """
    ids = sorted(subject_ids)
    if len(ids) < 2:
        raise ValueError(f"two-fold cross-validation needs at least 2 subjects; got {len(ids)}")
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    half = (len(ids) + 1) // 2
    tests = [sorted(order[:half]), sorted(order[half:])]
    return [([i for i in ids if i not in test], test) for test in tests]


def settings_difference(saved, wanted, name=""):
    """``(dotted name, saved value, wanted value)`` of the first setting that differs, or
    ``None``. A setting only one side records (added since the other was written) is not
    compared."""
    if isinstance(saved, dict) and isinstance(wanted, dict):
        for key in (key for key in saved if key in wanted):
            found = settings_difference(saved[key], wanted[key], f"{name}.{key}" if name else key)
            if found:
                return found
        return None
    return None if saved == wanted else (name, saved, wanted)


def _comparable(described, other):
    """``describe()``'s record as compared: the data by its resolved path, or, when both
    records name a generated phantom, by the phantom's manifest alone (the same phantom in
    another cache folder is the same data). A profile's description is prose about the
    settings, not one of them: a reworded one changes no grid. Nor is the CPU execution
    (``tversky_keras.cpu``): oneDNN and Eigen train the same cells, to float tolerance."""
    described = {k: v for k, v in described.items() if k != "cpu_execution"}
    if isinstance(described.get("profile"), dict):
        described["profile"] = {k: v for k, v in described["profile"].items()
                                if k != "description"}
    if "phantom" in described and "phantom" in other:
        described.pop("data")
    else:
        described["data"] = str(Path(described["data"]).resolve())
    return described


@dataclasses.dataclass
class Experiment:
    """One grid of cells on one data set with one profile and one seed."""

    root: Path
    data: Path
    profile: Profile
    seed: int = 0
    foreground_ratio: float = 0.0
    mixed_precision: str = "auto"  # TrainConfig.mixed_precision
    cache_dir: Path | None = None  # where subjects are preprocessed (None: the package default)

    def __post_init__(self):
        self.root = Path(self.root)
        self.subjects = {s.id: s for s in discover_subjects(self.data)}
        self.split = two_fold_split(self.subjects)

    def describe(self):
        described = {
            "data": str(self.data), "seed": self.seed, "foreground_ratio": self.foreground_ratio,
            "mixed_precision": self.mixed_precision,
            "profile": {k: list(v) if isinstance(v, tuple) else v
                        for k, v in dataclasses.asdict(self.profile).items()},
            "folds": [{"train": tr, "test": te} for tr, te in self.split],
        }
        from tversky_keras import cpu

        described["cpu_execution"] = cpu.choice()  # which kernels: recorded, not compared
        manifest = Path(self.data) / "phantom.json"
        if manifest.is_file():  # the phantom's version, look and whose lesions
            described["phantom"] = json.loads(manifest.read_text())
        return described

    def record(self):
        """Write ``experiment.json``, or refuse a folder that records other settings.

        A finished cell is skipped on a rerun, so a folder made with other
        settings (another profile, seed, split or data) would be published
        under this run's label without training anything.

        Raises:
            ValueError: naming the first setting that differs and both values.
        """
        path = self.root / "experiment.json"
        wanted = self.describe()
        if path.is_file():
            saved = json.loads(path.read_text())
            difference = settings_difference(_comparable(saved, wanted),
                                             _comparable(wanted, saved))
            if difference:
                name, before, now = difference
                raise ValueError(f"{self.root} holds a grid made with other settings "
                                 f"({path.name}): {name} is {before!r} there and {now!r} now; "
                                 f"use another --name or --results, or delete that folder")
        else:  # an older folder: its finished cells' own records must agree before it says so
            for cell in self.cells():
                if self.is_done(*cell):
                    self.check_finished_cell(*cell)
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(wanted, path)

    def check_finished_cell(self, alpha, beta, fold):
        """Refuse a finished cell whose run trained with other settings than this
        experiment gives it (a folder from before ``experiment.json`` was checked, or
        one edited by hand): skipped, it would be published under this run's label.

        Raises:
            ValueError: naming the cell, the first setting that differs and both values.
        """
        path = self.cell_dir(alpha, beta, fold) / "run" / "config.json"
        if not path.is_file():
            return
        saved = json.loads(path.read_text())
        wanted = json.loads(json.dumps(self.train_config(alpha, beta, fold).to_json()))
        difference = settings_difference({k: saved.get(k, ADDED_LATER.get(k)) for k in wanted
                                          if k in saved or k in ADDED_LATER}, wanted)
        if difference:
            name, before, now = difference
            raise ValueError(f"{self.cell_dir(alpha, beta, fold)} is finished with other "
                             f"settings (run/config.json): {name} is {before!r} there and "
                             f"{now!r} now; use another --name or --results, or delete that "
                             f"folder")

    def cells(self):
        return [(alpha, beta, fold) for alpha, beta in ROWS for fold in FOLDS]

    def cell_dir(self, alpha, beta, fold):
        return cell_folder(self.root, alpha, beta, fold)

    def is_done(self, alpha, beta, fold):
        return is_finished(self.cell_dir(alpha, beta, fold))

    def train_config(self, alpha, beta, fold):
        return self.profile.train_config(
            len(self.split[fold][0]), alpha=alpha, beta=beta,
            foreground_ratio=self.foreground_ratio, mixed_precision=self.mixed_precision,
            monitor="val_dice", seed=self.seed)

    def run_cell(self, alpha, beta, fold, callbacks=(), claim=None):
        """Train one cell, segment its test fold, write metrics and ``done.json``.

        Args:
            alpha, beta, fold: the cell.
            callbacks: extra Keras callbacks for the training.
            claim: the ``tversky_keras.claims.Claim`` held on the cell's folder,
                if any; the test fold is segmented and ``done.json`` written
                only while it is still held, and ``done.json`` records its owner.

        Raises:
            tversky_keras.claims.ClaimLost: another process took the claim over.
        """
        cell = self.cell_dir(alpha, beta, fold)
        started = time.perf_counter()
        config = self.train_config(alpha, beta, fold)
        train_ids, test_ids = self.split[fold]
        train(config, [self.subjects[i] for i in train_ids], [], cell / "run", verbose=0,
              callbacks=callbacks, cache_dir=self.cache_dir)
        if claim is not None:
            claim.ensure_held()
        # The paper trains for a fixed budget: the test uses the last model,
        # never one picked on the test fold.
        model = keras.saving.load_model(cell / "run" / "last.keras")
        (cell / "test").mkdir(exist_ok=True)
        per_subject = {}
        for subject_id in test_ids:
            # predict's own path (the model's recorded grid, and back to the
            # scan's voxels), scored against the scan's own masks: the table
            # measures what `predict` then `evaluate --brain` measure.
            subject = self.subjects[subject_id]
            prob, _ = segment_subject(model, subject, canonical=True)
            scan = load_subject(subject, modalities=config.modalities)
            label = scan.label.astype(np.uint8)
            brain = scan.brain
            flair = scan.image[..., list(config.modalities).index("FLAIR")] \
                if "FLAIR" in config.modalities else scan.image[..., -1]
            spacing = scan.geometry.spacing  # along the canonical axes, as the arrays
            with atomic_path(held_out_file(cell, subject_id)) as temporary:
                np.savez_compressed(temporary, probability=prob.astype(np.float16), label=label,
                                    brain=brain, flair=flair.astype(np.float16),
                                    spacing=np.asarray(spacing, float))
            scores = lesion_metrics(label, prob, threshold=0.5, mask=brain)
            scores["lesion_density"] = float(label[brain].mean())
            # The probability as saved (float16), so the table recomputes the same values.
            scores.update(challenge_scores(label, prob.astype(np.float16).astype(np.float32),
                                           spacing, brain))
            per_subject[subject_id] = scores
        write_json(per_subject, cell / "metrics.json")
        done = {"seconds": round(time.perf_counter() - started, 1),
                "test": test_ids, "train": train_ids}
        if claim is not None:
            claim.ensure_held()
            done["claim"] = claim.owner
        write_json(done, cell / "done.json")
