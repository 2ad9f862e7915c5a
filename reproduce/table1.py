"""Reproduce Table 1 of Salehi et al. (2017): five (alpha, beta) rows, two folds.

    python -m reproduce.table1                      # the synthetic phantom, quick profile
    python -m reproduce.table1 --data PATH          # real data (e.g. the MSLUB database)
    python -m reproduce.table1 --profile paper      # the paper's setting, for a GPU

Each (row, fold) cell trains a U-Net with the Tversky loss on one half of the
subjects and segments the other half at probability 0.5. Finished cells are
skipped on a rerun; the table is assembled from whatever cells exist, and says
which are missing. Results go to ``results/<experiment>/`` and the figures to
``results/<experiment>/figures/`` (``--figures figures`` writes the committed
``figures/<experiment>/`` instead).

Several processes, on one machine or on several that share ``results/``, can
run the same command at once: each claims a cell before running it, runs
every cell it can claim, waits for the cells the others hold, and then
assembles the whole table. ``--workers N`` starts N - 1 more such processes
on this machine and splits its CPU cores between them.
"""

import argparse
import csv
import dataclasses
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from reproduce.experiment import (FOLDS, METRICS, PAPER_TABLE1, PROFILES, ROWS,  # noqa: E402
                                  Experiment, cell_metrics, final_training_loss, row_name,
                                  test_arrays, test_file)
from tversky_keras.arguments import finite, natural  # noqa: E402
from tversky_keras.atomic import write_json, write_text  # noqa: E402
from tversky_keras.data.cache import default_cache_dir  # noqa: E402
from tversky_keras.claims import ClaimLost, current_holder, try_claim  # noqa: E402
from tversky_keras.evaluation import lesion_metrics  # noqa: E402
from reproduce import report  # noqa: E402
from tversky_keras.training import MIXED_PRECISION, TrainingDiverged  # noqa: E402

# The package's cache root ($TVERSKY_KERAS_CACHE, else ~/.cache/tversky-keras): the
# phantom is generated there, and subjects are preprocessed to its preprocessed/.
DEFAULT_CACHE = default_cache_dir().parent
# A cell whose network calls no test voxel lesion, or whose training ended at a
# Tversky loss this high, has collapsed to predicting background everywhere.
COLLAPSED_LOSS = 0.99
LABELS = {"dsc": "DSC", "sensitivity": "Sensitivity", "specificity": "Specificity",
          "f2": "F2", "apr": "APR"}


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
    from tversky_keras.data.phantom import synthesize_dataset

    from tversky_keras.data.phantom import PHANTOM_VERSION

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
                           appearance=appearance)
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


class GridProgress(keras.callbacks.Callback):
    """One line per epoch: which cell, which epoch, and the time left for the grid.

    ``workers`` processes share the cells left, so the time left is divided among them;
    ``worker`` (2, 3, ...) names a helper process in its lines.
    """

    def __init__(self, total_epochs, done_epochs=0, workers=1, worker=None):
        super().__init__()
        self.total_epochs = total_epochs
        self.done_epochs = done_epochs
        self.workers = workers
        self.worker = worker
        self.started = time.perf_counter()
        self.trained_epochs = 0
        self.label = ""

    def on_epoch_end(self, epoch, logs=None):
        self.trained_epochs += 1
        self.done_epochs += 1
        elapsed = time.perf_counter() - self.started
        left = elapsed / self.trained_epochs * (self.total_epochs - self.done_epochs) \
            / self.workers
        loss = (logs or {}).get("loss", float("nan"))
        print(f"  {self.label} epoch {epoch + 1}/{self.params['epochs']} loss {loss:.4f} "
              f"| grid {self.done_epochs}/{self.total_epochs} epochs, "
              f"~{left / 60:.1f} min left", flush=True)


def cell_name(cell):
    """(0.3, 0.7, 1) -> 'a0.3_b0.7/fold1', as ``--cells`` and the table name cells."""
    alpha, beta, fold = cell
    return f"{row_name(alpha, beta)}/fold{fold}"


def unfinished(experiment, cells):
    return [cell for cell in cells if not experiment.is_done(*cell)]


def run_grid(experiment, cells, wait=True, poll=10.0, workers=1, worker=None):
    """Run the selected cells that are not finished, sharing them with other processes.

    Each unfinished cell is claimed (``tversky_keras.claims``) before it runs,
    so processes pointed at the same results folder never run a cell twice.
    With ``wait``, this process then waits for the cells that other processes
    hold, looking every ``poll`` seconds and taking over a claim whose holder
    stopped heart-beating, until every selected cell is finished.

    ``workers`` is how many processes of this machine share the grid (for the
    time left); ``worker`` names a helper process that ``--workers`` started: it
    runs what it can claim and leaves quietly, as the process that started it
    waits and assembles.

    Returns:
        the cells that failed in this process (diverged training, bad data),
        each reported in one line and not retried by it.
    """
    for cell in cells:
        if experiment.is_done(*cell) and worker is None:
            print(f"skip {cell_name(cell)}: finished", flush=True)
    progress = GridProgress(total_epochs=0, workers=workers, worker=worker)
    reported = None
    failed = []
    while True:
        for cell in unfinished(experiment, cells):
            if cell not in failed and not run_cell_if_claimed(experiment, cell, cells, progress):
                failed.append(cell)
        holders = {cell: current_holder(experiment.cell_dir(*cell))
                   for cell in unfinished(experiment, cells) if cell not in failed}
        if not holders or worker is not None:
            return failed
        if not wait:
            print(f"not waiting for {_held_cells(holders)}", flush=True)
            return failed
        tokens = {cell: holder and holder.owner.get("token") for cell, holder in holders.items()}
        if tokens != reported:
            print(f"waiting for {_held_cells(holders)}", flush=True)
            reported = tokens
        time.sleep(poll)


def run_cell_if_claimed(experiment, cell, cells, progress):
    """Run ``cell`` if this process can claim it and nobody finished it meanwhile.

    Returns False when the cell failed (reported in one line), else True.
    """
    folder = experiment.cell_dir(*cell)
    before = current_holder(folder)
    claim = try_claim(folder)
    if claim is None:
        return True
    with claim:
        left = unfinished(experiment, cells)
        if cell not in left:            # finished by another process since we looked
            return True
        if before is not None and before.stale:
            print(f"{cell_name(cell)}: taking over from {before.describe()}", flush=True)
        alpha, beta, fold = cell
        progress.label = (f"[{'' if progress.worker is None else f'worker {progress.worker} '}"
                          f"cell {len(cells) - len(left) + 1}/{len(cells)} "
                          f"{row_name(alpha, beta)} fold{fold}]")
        # The estimate counts the cells other processes run, too.
        progress.total_epochs = progress.done_epochs + len(left) * experiment.profile.epochs
        started = time.perf_counter()
        try:
            experiment.run_cell(alpha, beta, fold, callbacks=[progress], claim=claim)
        except ClaimLost as lost:
            print(f"{progress.label} stopped: {lost}", flush=True)
            return True
        except (TrainingDiverged, ValueError) as error:  # DataError is a ValueError
            print(f"{progress.label} failed: {error}", flush=True)
            return False
        print(f"{progress.label} done in {time.perf_counter() - started:.0f} s", flush=True)
        return True


def _held_cells(holders):
    """'2 cells other processes hold: a0.5_b0.5/fold0 (pid 1 on host x since ...), ...'"""
    described = [f"{cell_name(cell)} ({holder.describe() if holder else 'just released'})"
                 for cell, holder in holders.items()]
    count = f"{len(holders)} cell{'s' if len(holders) > 1 else ''}"
    return f"{count} other processes hold: {', '.join(described)}"


def _load_cell_arrays(experiment, alpha, beta, fold):
    cell = experiment.cell_dir(alpha, beta, fold)
    for subject_id in experiment.split[fold][1]:
        arrays = test_arrays(test_file(cell, subject_id), ("label", "probability", "brain"))
        yield subject_id, arrays["label"], arrays["probability"], arrays["brain"]


def assemble(experiment):
    """Table 1 from the finished cells: pooled, per-subject mean/std, lesion-wise."""
    rows, missing = [], []
    for alpha, beta in ROWS:
        folds = [f for f in FOLDS if experiment.is_done(alpha, beta, f)]
        missing += [f"{row_name(alpha, beta)}/fold{f}" for f in FOLDS if f not in folds]
        if not folds:
            rows.append({"alpha": alpha, "beta": beta, "folds": []})
            continue
        truths, probs, brains = [], [], []
        per_subject, per_fold = {}, {}
        for fold in folds:
            arrays = list(_load_cell_arrays(experiment, alpha, beta, fold))
            fold_scores = lesion_metrics([a[1] for a in arrays], [a[2] for a in arrays],
                                         threshold=0.5, mask=[a[3] for a in arrays])
            final_loss = final_training_loss(experiment.cell_dir(alpha, beta, fold))
            called = int(sum(np.count_nonzero(a[2] >= 0.5) for a in arrays))
            per_fold[fold] = {**{m: fold_scores[m] for m in METRICS},
                              "final_training_loss": final_loss,
                              "predicted_lesion_voxels": called,
                              "collapsed": called == 0 or final_loss >= COLLAPSED_LOSS}
            truths += [a[1] for a in arrays]
            probs += [a[2] for a in arrays]
            brains += [a[3] for a in arrays]
            per_subject.update(cell_metrics(experiment.cell_dir(alpha, beta, fold)))
        pooled = lesion_metrics(truths, probs, threshold=0.5, mask=brains)
        row = {"alpha": alpha, "beta": beta, "folds": folds,
               "collapsed_folds": [f for f in folds if per_fold[f]["collapsed"]],
               "pooled": {m: pooled[m] for m in METRICS},
               "per_subject_mean": {}, "per_subject_std": {},
               "lesion_tpr": pooled["lesion_tpr"], "lesion_fpr": pooled["lesion_fpr"],
               "subjects": per_subject, "per_fold": per_fold,
               "paper": dict(zip(METRICS, PAPER_TABLE1[(alpha, beta)]))}
        for m in METRICS:
            values = np.array([s[m] for s in per_subject.values()], dtype=float)
            row["per_subject_mean"][m] = float(np.nanmean(values))
            row["per_subject_std"][m] = float(np.nanstd(values))
        rows.append(row)
    collapsed = [f"{row_name(r['alpha'], r['beta'])}/fold{f}" for r in rows
                 for f in r.get("collapsed_folds", [])]
    return {"experiment": experiment.describe(), "rows": rows, "missing_cells": missing,
            "collapsed_cells": collapsed}


def per_fold_table(table):
    """Each fold's own test metrics and final training loss: where a row's number comes from."""
    head = ["penalties", "fold"] + [LABELS[m] for m in METRICS] + \
        ["final training loss", "collapsed"]
    return report.markdown_table(head, (
        [f"a={row['alpha']:g}, b={row['beta']:g}", str(fold)] +
        [report.percent(scores[m]) for m in METRICS] +
        [f"{scores['final_training_loss']:.3f}", "**yes**" if scores["collapsed"] else "no"]
        for row in table["rows"] for fold, scores in sorted(row.get("per_fold", {}).items())))


def markdown_table(table):
    """Table 1 as Markdown: ours (pooled over both test folds) beside the paper's."""
    head = ["penalties"] + [f"{LABELS[m]} ours / paper" for m in METRICS] + \
        ["lesion TPR", "lesion FPR"]
    lines = report.markdown_head(head)
    for row in table["rows"]:
        cells = [f"a={row['alpha']:g}, b={row['beta']:g}"]
        for m in METRICS:
            ours = row.get("pooled", {}).get(m)
            cells.append(f"{report.percent(ours)} / {row_paper(row, m):.2f}")
        cells += [report.percent(row.get("lesion_tpr")), report.percent(row.get("lesion_fpr"))]
        lines.append(report.markdown_row(cells))
    if table["missing_cells"]:
        lines.append("")
        lines.append(f"Missing cells (not in the table): {', '.join(table['missing_cells'])}")
    if table["collapsed_cells"]:
        lines.append("")
        lines.append(f"**Collapsed cells** (no test voxel called lesion, or a final training "
                     f"loss >= {COLLAPSED_LOSS}), included above: "
                     f"{', '.join(table['collapsed_cells'])}")
    return "\n".join(lines)


def row_paper(row, metric):
    return PAPER_TABLE1[(row["alpha"], row["beta"])][METRICS.index(metric)]


def per_subject_table(table):
    """Per-subject mean ± standard deviation of each metric, in percent."""
    head = ["penalties"] + [LABELS[m] for m in METRICS]
    return report.markdown_table(head, (
        [f"a={row['alpha']:g}, b={row['beta']:g}"] +
        [f"{report.percent(row['per_subject_mean'][m])} ± {report.percent(row['per_subject_std'][m])}"
         for m in METRICS]
        for row in table["rows"] if row.get("folds")))


def table_csv(table):
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["alpha", "beta", "folds"] + [f"{m}_pooled" for m in METRICS] +
                    [f"{m}_subject_mean" for m in METRICS] + [f"{m}_subject_std" for m in METRICS] +
                    ["lesion_tpr", "lesion_fpr"] + [f"{m}_paper" for m in METRICS] +
                    ["collapsed_folds"])
    for row in table["rows"]:
        if not row.get("folds"):
            writer.writerow([row["alpha"], row["beta"], ""])
            continue
        writer.writerow([row["alpha"], row["beta"], " ".join(map(str, row["folds"]))] +
                        [row["pooled"][m] for m in METRICS] +
                        [row["per_subject_mean"][m] for m in METRICS] +
                        [row["per_subject_std"][m] for m in METRICS] +
                        [row["lesion_tpr"], row["lesion_fpr"]] +
                        [row_paper(row, m) / 100 for m in METRICS] +
                        [" ".join(map(str, row["collapsed_folds"]))])
    return out.getvalue()


def write_outputs(table, folder):
    """``table1.md``, ``table1.csv`` and ``table1.json`` in ``folder``, each atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    text = ("# Table 1 (percent; ours pooled over all test voxels of both folds / paper)\n\n"
            + markdown_table(table) + "\n\n## Per-subject mean ± std (percent)\n\n"
            + per_subject_table(table) + "\n\n## Per fold (percent)\n\n"
            + per_fold_table(table) + "\n")
    for name, content in (("table1.md", text), ("table1.csv", table_csv(table)),
                          ("table1.json", json.dumps(table, indent=2, sort_keys=True) + "\n")):
        write_text(folder / name, content)
    return text


def seed_summary(tables):
    """Mean and spread over seeds of the pooled metrics of each row."""
    rows = []
    for index, (alpha, beta) in enumerate(ROWS):
        values = {m: [t["rows"][index]["pooled"][m] for t in tables
                      if t["rows"][index].get("folds")] for m in METRICS}
        collapsed = sum(len(t["rows"][index].get("collapsed_folds", [])) for t in tables)
        rows.append({"alpha": alpha, "beta": beta, "n_seeds": len(values["dsc"]),
                     "collapsed_cells": collapsed,
                     "mean": {m: float(np.mean(v)) if v else None for m, v in values.items()},
                     "std": {m: float(np.std(v)) if v else None for m, v in values.items()}})
    return rows


def seed_markdown(rows):
    head = ["penalties", "seeds", "collapsed cells"] + [LABELS[m] for m in METRICS]
    lines = [report.markdown_table(head, (
        [f"a={row['alpha']:g}, b={row['beta']:g}", row["n_seeds"], row["collapsed_cells"]] +
        [f"{report.percent(row['mean'][m])} ± {report.percent(row['std'][m])}" for m in METRICS]
        for row in rows))]
    total = sum(row["collapsed_cells"] for row in rows)
    cells = sum(row["n_seeds"] * 2 for row in rows)
    lines += ["", f"Collapsed cells: {total} of {cells}."]
    return "\n".join(lines)


def parse_cells(text):
    """'a0.5_b0.5/fold0,a0.3_b0.7' -> the selected (alpha, beta, fold) cells."""
    if not text:
        return None
    names = {row_name(a, b): (a, b) for a, b in ROWS}
    chosen = []
    for item in text.split(","):
        row, _, fold = item.strip().partition("/")
        if row not in names:
            raise SystemExit(f"--cells: unknown row {row!r}; rows are {', '.join(names)}")
        if fold and fold not in {f"fold{f}" for f in FOLDS}:
            raise SystemExit(f"--cells: unknown fold {fold!r} in {item.strip()!r}; folds are "
                             f"{', '.join(f'fold{f}' for f in FOLDS)}")
        folds = FOLDS if not fold else (int(fold.removeprefix("fold")),)
        chosen += [(*names[row], f) for f in folds]
    return chosen


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m reproduce.table1",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None,
                        help="data folder or manifest (default: the synthetic phantom)")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick",
                        help="smoke (seconds), quick (default, ~15 min on 2 CPU cores), "
                             "paper (the paper's setting, for a GPU)")
    parser.add_argument("--results", type=Path, default=Path("results"),
                        help="results folder (results/)")
    parser.add_argument("--figures", type=Path, default=None,
                        help="folder to put the <experiment>/ figures in (default: the results "
                             "folder, as <results>/<experiment>/figures/, so that a run never "
                             "changes the committed figures/; --figures figures replaces them)")
    parser.add_argument("--cells", default=None,
                        help="run only these cells, e.g. a0.5_b0.5/fold0,a0.3_b0.7")
    parser.add_argument("--no-wait", action="store_true",
                        help="do not wait for the cells other processes run on the same "
                             "results folder: assemble what is finished and stop (in one "
                             "process)")
    parser.add_argument("--poll", type=finite, default=10.0,
                        help="seconds between looks at the cells other processes run (10)")
    parser.add_argument("--seeds", type=natural, default=1, help="repeat the grid with N seeds")
    parser.add_argument("--oversample", type=finite, default=0.0,
                        help="fraction of lesion-centred patches (0: none, as the paper)")
    parser.add_argument("--spacing", type=finite, default=None,
                        help="resample the data to this voxel size in mm (default: the "
                             "profile's; the phantom is generated at its profile's spacing)")
    parser.add_argument("--mixed-precision", default="auto", choices=MIXED_PRECISION,
                        help="16-bit compute, as `tversky-keras train` (auto: float16 on a GPU, "
                             "float32 on a CPU; on: bfloat16 on a CPU)")
    parser.add_argument("--phantom-version", type=int, choices=(2, 3), default=3,
                        help="without --data: the phantom generator's version (3: real "
                             "patients' lesions, the default; 2: the earlier drawn ovoids)")
    parser.add_argument("--name", default=None,
                        help="experiment name (default: <data folder>-<profile>, or "
                             "phantom-v<version>-<profile>)")
    parser.add_argument("--no-figures", action="store_true", help="skip the figures")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                        help="where the phantom is generated, and subjects preprocessed to "
                             "(CACHE/preprocessed)")
    parser.add_argument("--workers", type=workers_option, default=1,
                        help="processes that share the grid on this machine, each with its "
                             "share of the CPU cores (1; on 2 cores the gain of 2 was unclear: "
                             "see the README)")
    # A process that --workers started: its number (2, 3, ...) and how many there are.
    parser.add_argument("--worker-of", nargs=2, type=natural, default=None,
                        help=argparse.SUPPRESS)
    return parser


def workers_option(text):
    """``--workers``: a whole number of at least 1."""
    value = natural(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: give at least 1")
    return value


def cpu_cores():
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def share_the_cores(workers):
    """Give this process's TensorFlow its share of the cores (before any op runs)."""
    import tensorflow as tf

    threads = max(1, cpu_cores() // workers)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already ran here (main() called in a running program)
        print(f"TensorFlow is already running in this process: it keeps its threads "
              f"(wanted {threads})", flush=True)


def start_workers(argv, workers):
    """The ``workers - 1`` helper processes: this command again, as ``--worker-of``."""
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    return [subprocess.Popen([sys.executable, "-m", "reproduce.table1", *argv, "--workers",
                              str(workers), "--worker-of", str(index), str(workers)], env=env)
            for index in range(2, workers + 1)]


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.poll <= 0:
        parser.error(f"--poll must be positive, got {args.poll:g}")
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    if args.name is not None and (not args.name.strip() or Path(args.name).name != args.name
                                  or args.name in (".", "..")):
        parser.error(f"--name {args.name!r}: a folder name inside --results and --figures, "
                     f"not a path")
    if args.worker_of is not None and not 2 <= args.worker_of[0] <= args.worker_of[1]:
        parser.error("--worker-of is for the processes --workers starts")
    if args.no_wait and args.workers > 1:
        parser.error("--no-wait assembles what is finished at once: it runs in one process "
                     "(leave out --workers)")
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return report.run_or_one_line("python -m reproduce.table1", _run, args)


def _run(args):
    helper = args.worker_of is not None
    workers = args.worker_of[1] if helper else args.workers
    if workers > 1:
        share_the_cores(workers)
    profile = PROFILES[args.profile]
    if args.spacing is not None:
        profile = dataclasses.replace(profile, spacing=args.spacing)
    data = args.data if args.data is not None else phantom_data(profile, args.cache,
                                                                args.phantom_version)
    source = f"phantom-v{args.phantom_version}" if args.data is None else Path(args.data).name
    base = args.name or f"{source}-{profile.name}"
    if args.spacing is not None:
        base += f"-{args.spacing:g}mm"
    if args.oversample:
        base += f"-oversample{args.oversample:g}"
    if args.mixed_precision not in ("auto", "off"):
        base += f"-mixed-{args.mixed_precision}"
    if helper:
        return _help(args, profile, data, base, args.worker_of[0], workers)
    print(f"profile {profile.name}: {profile.description}")
    print(json.dumps(dataclasses.asdict(profile), default=list))
    if workers > 1:
        print(f"{workers} processes share the grid, {max(1, cpu_cores() // workers)} CPU "
              f"thread(s) each (--workers)", flush=True)
    started = time.perf_counter()
    helpers = []
    finished = False
    if workers > 1:  # `kill` stops the helpers too
        handler = signal.signal(signal.SIGTERM, _stop_helpers_and_exit(helpers))
    try:
        code = _lead(args, profile, data, base, workers, helpers, started)
        finished = True
        return code
    finally:
        if not finished:  # stopped early (an error, Ctrl-C): stop the helpers too
            _stop_helpers(helpers)
        for process in helpers:
            process.wait()
        if workers > 1:
            signal.signal(signal.SIGTERM, handler)


def _stop_helpers(helpers):
    """Terminate the helper processes still running, and reap them all."""
    for process in helpers:
        if process.poll() is None:
            process.terminate()
    for process in helpers:
        process.wait()


def _stop_helpers_and_exit(helpers):
    """A SIGTERM handler for the lead: stop and reap its helpers, then exit with
    128 + the signal number at once.

    Not by raising SystemExit: raised wherever the signal lands, it can land
    inside TensorFlow's C++ (building a tf.data pipeline, say), which turns it
    into a bare TypeError and an exit code of 1. A cell left half-done is
    what ``kill -9`` leaves too: its claim names a dead process, so the next
    run on this machine takes it over at once, and training resumes from the
    cell's last finished epoch.
    """
    def handler(number, frame):
        _stop_helpers(helpers)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, RuntimeError):
                pass
        os._exit(128 + number)
    return handler


def experiments(args, profile, data, base):
    """The experiment of each seed, its folder made and described."""
    for seed in range(args.seeds):
        name = base if seed == 0 else f"{base}-seed{seed}"
        experiment = Experiment(args.results / name, data, profile, seed=seed,
                                foreground_ratio=args.oversample,
                                mixed_precision=args.mixed_precision,
                                cache_dir=args.cache / "preprocessed")
        experiment.root.mkdir(parents=True, exist_ok=True)
        write_json(experiment.describe(), experiment.root / "experiment.json")
        yield name, experiment


def _help(args, profile, data, base, worker, workers):
    """A helper process: run every cell it can claim, then leave; the lead assembles."""
    failed = []
    for _, experiment in experiments(args, profile, data, base):
        failed += run_grid(experiment, parse_cells(args.cells) or experiment.cells(),
                           wait=False, workers=workers, worker=worker)
    return 1 if failed else 0


def _lead(args, profile, data, base, workers, helpers, started):
    """Run cells with the helpers, wait for every cell, assemble each seed's table."""
    tables, failed, cell_seconds = [], [], []
    for name, experiment in experiments(args, profile, data, base):
        if workers > 1 and not helpers:  # once the data has been read without error
            helpers += start_workers(args.argv, workers)
        failed += run_grid(experiment, parse_cells(args.cells) or experiment.cells(),
                           wait=not args.no_wait, poll=args.poll, workers=workers)
        table = assemble(experiment)
        text = write_outputs(table, experiment.root)
        print(f"\n{name}\n\n{text}")
        tables.append(table)
        cell_seconds.append(round(sum(json.loads(path.read_text())["seconds"]
                                      for path in experiment.root.glob("*/fold*/done.json")), 1))
        if not args.no_figures:
            from reproduce.figures import make_figures

            figures = (experiment.root / "figures" if args.figures is None
                       else args.figures / name)
            for path in make_figures(experiment.root, figures):
                print(f"figure: {path}")
    if args.seeds > 1:
        summary = seed_summary(tables)
        text = seed_markdown(summary)
        write_text(args.results / f"{base}-seeds.md", text + "\n")
        # Each seed's cells' own times (a rerun that only assembles keeps them).
        write_json({"rows": summary, "cell_seconds": cell_seconds,
                    "made": report.provenance(time.perf_counter() - started)},
                   args.results / f"{base}-seeds.json")
        print(f"\nover {args.seeds} seeds (mean ± std of the pooled metrics)\n\n{text}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if failed:
        print(f"{len(failed)} cells failed (see above): {', '.join(map(cell_name, failed))}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
