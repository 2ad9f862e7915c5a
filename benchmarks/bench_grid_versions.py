"""Time Table 1's cells on phantom version 2 and version 3, back to back on one machine.

Each round runs the same cells of the default grid (``python -m reproduce.table1
--cells ...``, the quick profile) once on each phantom version, each time in a
fresh results folder so that every cell trains from scratch, in the order
v2, v3, v3, v2, ... (so that a machine that speeds up or slows down during the run
favours neither). Before the first round one untimed cell per version generates
its phantom and fills the preprocessed cache, so no timed cell pays for either.
Prints each run's cell seconds (from the cells' ``done.json``), the CPU seconds
of its whole command (user + system, of all its threads; less sensitive than wall
time to other work on the machine, and to TensorFlow's idle threads), and the
ratio v3 / v2 of the totals, and writes them as JSON::

    python -m benchmarks.bench_grid_versions [--cells a0.3_b0.7/fold0,a0.5_b0.5/fold1]
        [--rounds 2] [--profile quick] [--json benchmarks/grid-versions.json]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reproduce.report import provenance
from tversky_keras.atomic import write_json

VERSIONS = (2, 3)


def order(rounds):
    """v2, v3, v3, v2, v2, v3, ...: each round reverses the last one's order."""
    runs = []
    for index in range(rounds):
        runs += list(VERSIONS if index % 2 == 0 else VERSIONS[::-1])
    return runs


def table1(version, cells, results, profile="quick"):
    command = [sys.executable, "-m", "reproduce.table1", "--phantom-version", str(version),
               "--profile", profile, "--cells", cells, "--results", str(results),
               "--no-figures"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def cell_seconds(results):
    return {str(path.parent.relative_to(path.parents[2])): json.loads(path.read_text())["seconds"]
            for path in sorted(Path(results).glob("*/*/fold*/done.json"))}


def children_cpu_seconds():
    """User + system CPU seconds of this process's finished children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_grid_versions",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="a0.3_b0.7/fold0,a0.5_b0.5/fold1",
                        help="the cells each run trains (a0.3_b0.7/fold0,a0.5_b0.5/fold1)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of v2 and v3 (2)")
    parser.add_argument("--profile", default="quick", help="Table 1's profile (quick)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="grid-versions-") as scratch:
        for version in VERSIONS:  # phantoms and preprocessed cache first, untimed
            table1(version, "a0.5_b0.5/fold0", Path(scratch) / f"warm-v{version}", args.profile)
        runs = []
        for index, version in enumerate(order(args.rounds)):
            results = Path(scratch) / f"run{index}-v{version}"
            before = children_cpu_seconds()
            table1(version, args.cells, results, args.profile)
            cpu = round(children_cpu_seconds() - before, 1)
            seconds = cell_seconds(results)
            runs.append({"version": version, "cells": seconds, "total": sum(seconds.values()),
                         "cpu_seconds": cpu})
            print(f"run {index}: phantom v{version}: "
                  + ", ".join(f"{cell} {s:.1f} s" for cell, s in seconds.items())
                  + f"; total {runs[-1]['total']:.1f} s; command CPU {cpu:.1f} s", flush=True)
    totals = {version: sum(run["total"] for run in runs if run["version"] == version)
              for version in VERSIONS}
    ratio = totals[3] / totals[2]
    cpu = {version: sum(run["cpu_seconds"] for run in runs if run["version"] == version)
           for version in VERSIONS}
    print(f"v3 / v2 cell time: {ratio:.3f} ({totals[3]:.1f} s / {totals[2]:.1f} s); "
          f"command CPU time: {cpu[3] / cpu[2]:.3f} ({cpu[3]:.1f} s / {cpu[2]:.1f} s)")
    if args.json:
        write_json({"made": provenance(time.perf_counter() - started), "cells": args.cells,
                    "profile": args.profile,
                    "runs": runs, "total_seconds": {f"v{v}": t for v, t in totals.items()},
                    "ratio_v3_over_v2": ratio,
                    "cpu_seconds": {f"v{v}": t for v, t in cpu.items()},
                    "cpu_ratio_v3_over_v2": cpu[3] / cpu[2]}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
