"""Peak memory of a short ``tversky-keras train`` as the number of subjects grows.

    python -m benchmarks.bench_scale [--work DIR] [--sets 8@2,96@2,8@4,500@4]
                                     [--patch 32] [--steps 3] [--json PATH] [--source DIR]

Eight phantom subjects (``tversky-keras synth``) are written once per
spacing; a set of N subjects holds hard links to them under new names
(subject ``i`` is phantom ``i % 8``), so a big set costs the disk of eight
while every subject is a path of its own and so a cache entry of its own. Each
set trains the same short run (``--val 0``, patches in batches of 4, a U-Net
of 8 filters and depth 3) twice as a child process: cold, on an empty cache,
so that preprocessing every subject is part of the run, and warm, on the
cache the cold run filled.

The peak is the child's ``ru_maxrss`` from ``os.wait4``. Linux carries that
figure over ``fork`` and ``exec``, so it is the child's own only while the
parent is smaller than the child: this module imports neither TensorFlow nor
the package. While a child runs, its ``VmRSS`` is sampled five times a
second; the samples go to ``--json``, to see when the peak happened.
Data sets and caches go under ``--work`` (a temporary folder, deleted at the
end, unless given). ``--source`` runs another copy of the package instead,
e.g. an older commit unpacked with ``git archive``, to measure before and
after on the same machine; a version whose ``train`` has no ``--cache`` runs
without it (its cold and warm runs are then the same run twice).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PHANTOMS = 8
REPOSITORY = Path(__file__).resolve().parents[1]


def parse_sets(text):
    """``"8@2,96@2"`` -> ``[(8, 2.0), (96, 2.0)]``: subjects at spacing (mm)."""
    sets = []
    for item in text.split(","):
        count, _, spacing = item.partition("@")
        if not spacing or int(count) < 1 or float(spacing) <= 0:
            raise ValueError(f"a set is SUBJECTS@SPACING_MM, e.g. 96@2; got {item!r}")
        sets.append((int(count), float(spacing)))
    return sets


def tool(*args):
    """The ``tversky-keras`` command line, run with this Python.

    ``python -m`` looks in the working folder first: children run in the
    folder holding the package to measure.
    """
    return [sys.executable, "-m", "tversky_keras", *map(str, args)]


def child_env():
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def phantoms(work, spacing):
    """Eight phantom subjects at ``spacing`` mm under ``work``, written on first use."""
    folder = Path(work) / f"phantom-{spacing:g}mm"
    if not (folder / "phantom.json").is_file():
        subprocess.run(tool("synth", "--out", folder, "--subjects", PHANTOMS, "--spacing", spacing),
                       check=True, capture_output=True, env=child_env(), cwd=REPOSITORY)
    return folder


def replicate(source, dest, count):
    """``dest`` with ``count`` subject folders hard-linked (copied across devices) from ``source``.

    Subject ``i`` is ``source``'s subject ``i % len(source)``, named
    ``<its id>-<i // len(source)>``. Returns ``dest``.
    """
    originals = sorted(p for p in Path(source).iterdir() if p.is_dir())
    dest = Path(dest)
    for i in range(count):
        original = originals[i % len(originals)]
        folder = dest / f"{original.name}-{i // len(originals):03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for file in original.iterdir():
            target = folder / file.name
            if target.exists():
                continue
            try:
                os.link(file, target)
            except OSError:
                shutil.copy2(file, target)
    return dest


def disk_bytes(folder):
    """Bytes the files under ``folder`` occupy: allocated blocks, a hard-linked file once (``du``)."""
    files = {(s.st_dev, s.st_ino): s.st_blocks * 512
             for s in (p.lstat() for p in Path(folder).rglob("*") if p.is_file())}
    return sum(files.values())


def has_cache_option(source):
    """Whether the ``train`` command of the package in ``source`` takes ``--cache``."""
    done = subprocess.run(tool("train", "--help"), capture_output=True, text=True,
                          env=child_env(), cwd=source, check=True)
    return "--cache" in done.stdout


def _sample_rss(pid, samples, stop):
    """Append ``(seconds, VmRSS MiB)`` of ``pid`` to ``samples`` until ``stop`` is set."""
    start = time.perf_counter()
    while not stop.wait(0.2):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        samples.append((time.perf_counter() - start, int(line.split()[1]) / 1024))
                        break
        except OSError:
            return


def run_child(command, log, env=None, cwd=None):
    """Run ``command`` to its end; its peak RSS (MiB), wall seconds and sampled VmRSS.

    Raises:
        RuntimeError: the command failed (the tail of its log in the message).
    """
    start = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        samples, stop = [], threading.Event()
        sampler = threading.Thread(target=_sample_rss, args=(child.pid, samples, stop), daemon=True)
        sampler.start()
        _, status, usage = os.wait4(child.pid, 0)
        stop.set()
        sampler.join()
        # Popen must not wait for the child again: it is reaped.
        child.returncode = code = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if code:
        tail = Path(log).read_text()[-3000:]
        raise RuntimeError(f"{' '.join(map(str, command))} exited {code}:\n{tail}")
    return {"peak_rss_mib": usage.ru_maxrss / 1024, "wall_s": wall, "rss_samples": samples}


def train_command(data, run_dir, cache, patch, steps):
    """The short training run; ``cache`` ``None`` for a version without ``--cache``."""
    command = tool("train", "--data", data, "--val", 0, "--patch", patch, "--batch-size", 4,
                   "--base-filters", 8, "--depth", 3, "--epochs", 1, "--steps", steps,
                   "--pool-batch", "--quiet", "--out", run_dir)
    return command if cache is None else [*command, "--cache", str(cache)]


def measure_set(work, count, spacing, patch, steps, source=REPOSITORY, cached=True):
    """Cold and warm runs of the short training on ``count`` subjects at ``spacing``."""
    name = f"{count}x{spacing:g}mm"
    data = replicate(phantoms(work, spacing), Path(work) / f"data-{name}", count)
    cache = Path(work) / f"cache-{name}"
    shutil.rmtree(cache, ignore_errors=True)
    result = {"subjects": count, "spacing_mm": spacing, "patch": patch, "steps": steps,
              "data_mib": disk_bytes(data) / 2**20}
    for state in ("cold", "warm"):
        run_dir = Path(work) / f"run-{name}-{state}"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        command = train_command(data, run_dir, cache if cached else None, patch, steps)
        result[state] = run_child(command, run_dir.with_suffix(".log"), child_env(), source)
        print(f"{name} {state}: peak {result[state]['peak_rss_mib']:.0f} MiB, "
              f"{result[state]['wall_s']:.1f} s", flush=True)
    result["cache_mib"] = disk_bytes(cache) / 2**20 if cached else 0.0
    return result


def ratio_to_smallest(results):
    """For each result, its cold and warm peak over those of the smallest set at its spacing."""
    smallest = {}
    for r in sorted(results, key=lambda r: r["subjects"]):
        smallest.setdefault(r["spacing_mm"], r)
    for r in results:
        base = smallest[r["spacing_mm"]]
        r["base_subjects"] = base["subjects"]
        for state in ("cold", "warm"):
            r[state]["ratio"] = r[state]["peak_rss_mib"] / base[state]["peak_rss_mib"]
    return results


def markdown(results):
    from reproduce.report import markdown_table

    head = ["subjects", "spacing", "peak RSS cold", "ratio", "peak RSS warm", "ratio",
            "wall cold", "wall warm", "cache on disk"]
    return markdown_table(head, (
        [r["subjects"], f"{r['spacing_mm']:g} mm", f"{r['cold']['peak_rss_mib']:,.0f} MiB",
         f"{r['cold']['ratio']:.2f}x", f"{r['warm']['peak_rss_mib']:,.0f} MiB",
         f"{r['warm']['ratio']:.2f}x", f"{r['cold']['wall_s']:.1f} s",
         f"{r['warm']['wall_s']:.1f} s", f"{r['cache_mib']:,.1f} MiB"]
        for r in results))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path,
                        help="folder for data sets, caches and runs (kept); default: a "
                             "temporary folder, deleted at the end")
    parser.add_argument("--sets", default="8@2,96@2,8@4,500@4", type=parse_sets,
                        help="comma-separated SUBJECTS@SPACING_MM (8@2,96@2,8@4,500@4); ratios "
                             "are to the smallest set of the same spacing")
    parser.add_argument("--patch", type=int, default=32, help="patch side (32)")
    parser.add_argument("--steps", type=int, default=3, help="training steps (3)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--source", type=Path, default=REPOSITORY,
                        help="folder holding the tversky_keras package to run (this repository)")
    opts = parser.parse_args(argv)
    source = opts.source.resolve()
    cached = has_cache_option(source)
    print(f"package: {source / 'tversky_keras'}" + ("" if cached else ", train has no --cache"))

    work = opts.work or Path(tempfile.mkdtemp(prefix="bench_scale-"))
    try:
        results = ratio_to_smallest([
            measure_set(work, count, spacing, opts.patch, opts.steps, source, cached)
            for count, spacing in opts.sets])
    finally:
        if opts.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(markdown(results))
    print(f"\n`tversky-keras train --val 0 --patch {opts.patch} --batch-size 4 --base-filters 8 "
          f"--depth 3 --epochs 1 --steps {opts.steps} --pool-batch`; {os.cpu_count()} CPUs")
    if opts.json:
        from tversky_keras.atomic import dumps

        opts.json.write_text(dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
