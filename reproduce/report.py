"""The one Markdown table renderer of the reproduction and the benchmarks, and how their
commands report bad input."""

import functools
import sys


def markdown_row(cells):
    """One table line: ``| a | b |``; cells are turned into text with ``str``, and a ``|``
    inside one (``max |a - b|``) is escaped so that it does not split the cell."""
    return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"


def markdown_head(head):
    """The header line and the rule under it."""
    return [markdown_row(head), "|" + "---|" * len(head)]


def markdown_table(head, rows):
    """A whole table as text: header, rule, one line per row (each as long as ``head``)."""
    rows = [list(row) for row in rows]
    short = [row for row in rows if len(row) != len(head)]
    if short:
        raise ValueError(f"a row has {len(short[0])} cells for {len(head)} columns: {short[0]}")
    return "\n".join(markdown_head(head) + [markdown_row(row) for row in rows])


def percent(value):
    """A fraction as a percentage with two decimals; an em dash for a missing value."""
    return "—" if value is None or value != value else f"{100 * value:.2f}"


def spread(values):
    """Mean, std and values over seeds. A value undefined for its run (NaN, read back from
    JSON as ``None``) makes the mean and std undefined too, written as ``null``."""
    import numpy as np

    values = np.array(values, dtype=float)  # None -> nan
    return {"mean": float(np.mean(values)), "std": float(np.std(values)),
            "values": values.tolist()}


def figure(value):
    """A measured figure with three significant digits, or with thousands separators from
    1000 up (``0.108``, ``19.5``, ``1,137``); empty for a missing one."""
    if value is None:
        return ""
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def run_or_one_line(program, run, args, quiet_stop=False):
    """``run(args)``'s exit code; bad data or settings (ValueError, OSError) print one
    line naming ``program`` and give 1, never a traceback. Ctrl-C gives one line and
    130, SIGTERM one line and 143 (``tversky_keras.stopping``); ``quiet_stop``: no line
    for them (a helper process, whose lead says it)."""
    from tversky_keras.data.errors import data_warnings_as_lines
    from tversky_keras.stopping import INTERRUPTED, one_line_on_sigterm, stopped_line

    with one_line_on_sigterm(program, quiet=quiet_stop), data_warnings_as_lines(program):
        try:
            return run(args)
        except KeyboardInterrupt:
            if not quiet_stop:
                print(stopped_line(program, "interrupted (Ctrl-C)"), file=sys.stderr)
            return INTERRUPTED
        except (ValueError, OSError) as error:
            print(f"{program}: error: {error}", file=sys.stderr)
            return 1


def record_settings(folder, settings, comparable=None):
    """Write ``settings`` to ``folder/settings.json`` (``folder`` made if absent) and return
    ``[]``; or, where that file already holds other settings, write nothing and return the
    sorted names of those that differ, so that the command refuses the folder in its own
    words (a finished result there would be skipped, not redone).

    ``comparable``: maps a record to what is compared (e.g. settings added since with
    their defaults); both the saved and the wanted record go through it.
    """
    import json
    from pathlib import Path

    from tversky_keras.atomic import write_json

    comparable = comparable or (lambda values: values)
    path = Path(folder) / "settings.json"
    if path.is_file():
        saved, wanted = comparable(json.loads(path.read_text())), comparable(settings)
        return sorted(key for key in set(saved) | set(wanted)
                      if (key in saved, saved.get(key)) != (key in wanted, wanted.get(key)))
    Path(folder).mkdir(parents=True, exist_ok=True)
    write_json(settings, path)
    return []


def cpu_model():
    """The CPU's model name (``/proc/cpuinfo``'s ``model name``), or what ``platform`` says
    where there is no such file."""
    import platform
    from pathlib import Path

    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


@functools.cache
def gemm_gflops(size=1024, repeats=5):
    """This machine's fp32 matrix-product rate in GFLOP/s, measured once per process.

    NumPy multiplies two ``size`` x ``size`` float32 matrices ``repeats`` times after one
    untimed warm-up; the rate is ``2 * size**3`` over the median time. At 1024 it takes a
    few tenths of a second. The CPU's name says little about its speed (the same
    "AMD EPYC" has been two generations of core, one of them twice as fast, and a busy
    machine is slower still), so a result file records this reading to tell whether
    times from two machines, or two days, can be compared, and by how much they differ.
    """
    import statistics
    import time

    import numpy as np

    generator = np.random.default_rng(0)
    a, b = (generator.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return round(2 * size**3 / statistics.median(times) / 1e9, 1)


def provenance(seconds=None):
    """Where a result file came from: when (UTC), the commit (and whether the tree
    had changes), the machine, the command line and, when given, its seconds.

    The machine is the CPU's model, its cores, the load average and ``gemm_gflops``,
    a short fp32 matrix-product reading (see ``gemm_gflops``) by which results from
    different machines can be compared by speed.
    """
    import datetime
    import os
    import subprocess
    from pathlib import Path

    from tversky_keras import cpu

    root = Path(__file__).resolve().parents[1]

    def git(*args):
        try:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                                  text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    made = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": git("rev-parse", "HEAD") or None,
            "uncommitted_changes": bool(git("status", "--porcelain", "--untracked-files=no")),
            "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                        "load_average": os.getloadavg(), "gemm_gflops": gemm_gflops(),
                        "cpu_execution": cpu.choice()},
            "command": ["python", *sys.orig_argv[1:]]}
    if seconds is not None:
        made["seconds"] = round(float(seconds), 1)
    return made


def cpu_kinds_markdown(record):
    """The Markdown of one ``python -m benchmarks.cpu_kinds`` run (``benchmarks/cpu-kinds.json``):
    its machine, then each CPU execution's median step and its ratio to oneDNN's."""
    machine = record["machine"]
    avx = "AVX-512" if machine.get("avx512") else "AVX2, no AVX-512"
    lines = [
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {avx}, GEMM "
        f"{machine['gemm_gflops']:g} GFLOP/s; {record['made']['date'][:10]}; the quick "
        f"profile's training step (`benchmarks.train_process`), {record['steps']} steps per "
        f"process, median of {record['rounds']} interleaved rounds.",
        "",
        "| CPU execution | s/step (median) | x oneDNN | peak RSS MiB | each round s/step |",
        "|---|---|---|---|---|",
    ]
    for row in record["rows"]:
        label = row["label"] + (" (simulated)" if row["simulated"] else "")
        ratio = "" if row["vs_onednn"] is None else f"{row['vs_onednn']:.2f}"
        lines.append(f"| {label} | {row['median_step_s']:.3f} | {ratio} | "
                     f"{row['peak_rss_mib']:.0f} | "
                     f"{', '.join(f'{s:.3f}' for s in row['step_s'])} |")
    for missing in record.get("missing", {}).values():
        lines.append(f"| {missing['label']} | not measured: {missing['why']} | | | |")
    return "\n".join(lines)


# reproduce.histograms' statistics, in its order: these percentiles of the brain, then
# the share of it below half its median, and the share of its core (deeper than 6 mm).
HISTOGRAM_PERCENTILES = (0.5, 2, 10, 99)
HISTOGRAM_STATISTICS = tuple(f"p{p:g}" for p in HISTOGRAM_PERCENTILES) + (
    "below_half_median", "core_below_half_median")


def histograms_markdown(record):
    """The table of a ``python -m reproduce.histograms`` JSON: each real scan, then each
    phantom's range, per modality, and whether every real scan is covered."""
    head = ["scan", "modality"] + [s.replace("_", " ") for s in HISTOGRAM_STATISTICS]
    rows = []
    for subject, values in sorted(record["real"].items()):
        for m, found in values.items():
            rows.append([f"{subject} (development)", m]
                        + [f"{found[s]:.3f}" if s in found else "" for s in HISTOGRAM_STATISTICS])
    for name, phantom in record["phantoms"].items():
        for m, ranges in phantom["ranges"].items():
            rows.append([f"{name} ({phantom['n_subjects']} subjects), range", m]
                        + [f"{ranges[s][0]:.3f}-{ranges[s][1]:.3f}" if s in ranges else ""
                           for s in HISTOGRAM_STATISTICS])
    lines = [markdown_table(head, rows), ""]
    for name, phantom in record["phantoms"].items():
        missed = [f"{subject} {m}" for subject, found in phantom["covered"].items()
                  for m, ok in found.items() if not ok]
        lines.append(f"- {name}: " + ("covers every development scan's fractions below half "
                                      "the median (brain and core) in every modality"
                                      if not missed else "does not cover " + ", ".join(missed)))
    return "\n".join(lines)
