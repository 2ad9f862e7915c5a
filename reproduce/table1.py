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
import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from reproduce import report  # noqa: E402
from reproduce.experiment import FOLDS, PROFILES, ROWS, Experiment, row_name  # noqa: E402
from reproduce.grid import (cell_name, cpu_cores, run_grid, share_the_cores,  # noqa: E402
                            start_workers, stopping_helpers)
from reproduce.phantoms import DEFAULT_CACHE, phantom_data  # noqa: E402
from reproduce.table import (assemble, challenge_seed_csv, challenge_seed_markdown,  # noqa: E402
                             challenge_seed_summary, seed_markdown, seed_summary, write_outputs)
from tversky_keras import cpu  # noqa: E402
from tversky_keras.arguments import finite, natural, output_folder  # noqa: E402
from tversky_keras.atomic import write_json, write_text  # noqa: E402
from tversky_keras.data import DataError  # noqa: E402
from tversky_keras.data.names import path_name  # noqa: E402
from tversky_keras.stopping import INTERRUPTED, exit_at_once  # noqa: E402
from tversky_keras.training import MIXED_PRECISION  # noqa: E402

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
                        help="; ".join(f"{p.name}: {p.description}" for p in PROFILES.values())
                             + " (default quick)")
    parser.add_argument("--results", type=output_folder, default=Path("results"),
                        help="results folder (results/)")
    parser.add_argument("--figures", type=output_folder, default=None,
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
    parser.add_argument("--cache", type=output_folder, default=DEFAULT_CACHE,
                        help="where the phantom is generated, and subjects preprocessed to "
                             "(CACHE/preprocessed)")
    parser.add_argument("--workers", type=workers_option, default=1,
                        help="processes that share the grid on this machine, each with its "
                             "share of the CPU cores (1; on 2 cores the gain of 2 was unclear: "
                             "see docs/reproduction.md)")
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


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.poll <= 0:
        parser.error(f"--poll must be positive, got {args.poll:g}")
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    if args.name is not None:
        try:
            path_name(args.name, "--name (a folder name inside --results and --figures)")
        except DataError as error:
            parser.error(str(error))
    if args.worker_of is not None and not 2 <= args.worker_of[0] <= args.worker_of[1]:
        parser.error("--worker-of is for the processes --workers starts")
    if args.no_wait and args.workers > 1:
        parser.error("--no-wait assembles what is finished at once: it runs in one process "
                     "(leave out --workers)")
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return report.run_or_one_line("python -m reproduce.table1", _run, args,
                                  quiet_stop=args.worker_of is not None)


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
    print(cpu.choice_line())
    if workers > 1:
        print(f"{workers} processes share the grid, {max(1, cpu_cores() // workers)} CPU "
              f"thread(s) each (--workers)", flush=True)
    started = time.perf_counter()
    with stopping_helpers(workers) as helpers:
        return _lead(args, profile, data, base, workers, helpers, started)


def experiments(args, profile, data, base):
    """The experiment of each seed, its folder made and described."""
    for seed in range(args.seeds):
        name = base if seed == 0 else f"{base}-seed{seed}"
        experiment = Experiment(args.results / name, data, profile, seed=seed,
                                foreground_ratio=args.oversample,
                                mixed_precision=args.mixed_precision,
                                cache_dir=args.cache / "preprocessed")
        experiment.record()
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
        challenge = challenge_seed_summary(tables)
        write_text(args.results / f"{base}-seeds-challenge.md",
                   "# The MS challenges' metrics over seeds (mean ± std of each seed's pooled "
                   "value)\n\n" + challenge_seed_markdown(challenge) + "\n")
        write_text(args.results / f"{base}-seeds-challenge.csv", challenge_seed_csv(challenge))
        write_json({"rows": summary, "challenge_rows": challenge, "cell_seconds": cell_seconds,
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
    code = main()
    if code == INTERRUPTED:
        # Stopped inside TensorFlow's work: its thread pools may never let the interpreter's
        # teardown finish (a loaded CI machine waited over a minute). Everything finished is
        # written whole, the helpers are reaped: leave at once, as SIGTERM does.
        exit_at_once(signal.SIGINT)
    sys.exit(code)
