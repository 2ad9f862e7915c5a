"""``python -m benchmarks.gpu_all``: the GPU rows of every installed Keras backend, in one command.

For each backend that imports, in the order torch, jax, tensorflow (the one
nearest to MONAI first), it runs ``python -m benchmarks --gpu`` in a child
process with ``KERAS_BACKEND`` set: fp32 and mixed precision, both layouts,
0.1.0's decoder against ``UpConv3D``, device-side sliding windows, and
PyTorch + MONAI on the same GPU. The children share one time limit
(``--limit``, default 570 s, within a 10-minute call): each gets the time
left times its share, and what one leaves over goes to the next. A child cut
at its limit keeps the rows it printed. Writes ``OUT/gpu.md`` (one table per
backend) and ``OUT/gpu.json``; ``--dry-run`` runs it all on whatever device
there is at a 32^3 input.
"""

import argparse
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BACKENDS = {"torch": 0.40, "jax": 0.45, "tensorflow": 0.15}  # shares of the time limit
ROW_PREFIX = "[gpu] "
CHILD = ["-m", "benchmarks"]  # what each backend's child runs, before its options


def installed(backend):
    """Whether Keras' ``backend`` can load here (its framework imports)."""
    return importlib.util.find_spec(backend) is not None


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_all",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-results"),
                        help="folder for gpu.md, gpu.json and each backend's JSON")
    parser.add_argument("--limit", type=float, default=570.0,
                        help="seconds for all backends together (570)")
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help=f"comma-separated subset of {','.join(BACKENDS)}")
    parser.add_argument("--dry-run", action="store_true",
                        help="the same code at a 32^3 input on whatever device there is")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--max-variants", type=int, default=None,
                        help="only the first N training variants of each backend")
    opts = parser.parse_args(argv)
    opts.backends = [b for b in opts.backends.split(",") if b]
    unknown = sorted(set(opts.backends) - set(BACKENDS))
    if unknown:
        parser.error(f"unknown backends {unknown}; choose from {', '.join(BACKENDS)}")
    if not opts.backends or len(set(opts.backends)) != len(opts.backends):
        parser.error(f"--backends must name each backend at most once, at least one of "
                     f"{', '.join(BACKENDS)}")
    if not (math.isfinite(opts.limit) and opts.limit > 0):
        parser.error(f"--limit must be a positive number of seconds, got {opts.limit}")
    for option in ("repeats", "max_variants"):
        value = getattr(opts, option)
        if value is not None and value < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1, got {value}")
    return opts


def run_backend(backend, opts, limit_s):
    """One child ``python -m benchmarks --gpu`` run: its result dict (``status``, rows, JSON)."""
    out = opts.out / f"gpu-{backend}.json"
    out.unlink(missing_ok=True)
    command = [sys.executable, *CHILD, "--gpu", "--json", str(out),
               "--repeats", str(opts.repeats)]
    command += ["--dry-run"] * opts.dry_run
    if opts.max_variants is not None:
        command += ["--max-variants", str(opts.max_variants)]
    env = {**os.environ, "KERAS_BACKEND": backend}
    started = time.perf_counter()
    printed = []
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as child:
        try:
            _relay(child, printed, started + limit_s)
            status = "finished" if child.wait() == 0 else f"failed (exit {child.returncode})"
        except TimeoutError:
            status = f"cut at its limit of {limit_s:.0f} s"
        finally:  # also when this process is interrupted: no child keeps the GPU
            if child.poll() is None:
                child.kill()
                child.wait()
    result = {"backend": backend, "status": status, "limit_s": limit_s,
              "wall_s": time.perf_counter() - started,
              "printed_rows": [line[len(ROW_PREFIX):] for line in printed
                               if line.startswith(ROW_PREFIX)],
              "tail": printed[-15:]}
    if out.is_file() and status == "finished":
        result["json"] = json.loads(out.read_text())
        if not any(row["ours"] is not None for row in result["json"]["rows"]):
            result["status"] = "finished without a single measurement (every row failed)"
    return result


def _relay(child, printed, deadline):
    """Echo the child's lines as they come; TimeoutError once ``deadline`` has passed."""
    import selectors

    with selectors.DefaultSelector() as selector:
        selector.register(child.stdout, selectors.EVENT_READ)
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError
            if not selector.select(timeout=min(left, 5.0)):
                continue
            line = child.stdout.readline()
            if not line:
                return
            printed.append(line.rstrip("\n"))
            print(line, end="", flush=True)


def report(results):
    """Markdown: per backend its status and table (or the rows it printed before its limit)."""
    from benchmarks.__main__ import markdown
    from benchmarks.measure import Row

    parts = []
    for result in results:
        parts.append(f"## Keras {result['backend']}: {result['status']} "
                     f"({result.get('wall_s', 0):.0f} s of {result.get('limit_s', 0):.0f} s)")
        if "json" in result:
            data = result["json"]
            rows = [Row(**{k: v for k, v in row.items() if k != "speedup"})
                    for row in data["rows"]]
            parts += ["", markdown(rows), "",
                      f"GPU: {data['sections']['gpu'].get('nvidia_smi') or 'none'}; "
                      f"versions: {data['versions']}"]
        elif result.get("printed_rows"):
            parts += ["", "Rows printed before it stopped:", ""]
            parts += [f"- {row}" for row in result["printed_rows"]]
        elif result.get("tail"):
            parts += ["", "Last lines:", "", "```", *result["tail"], "```"]
        parts.append("")
    return "\n".join(parts)


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through run_backend, which stops its child


def main(argv=None):
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    opts.out.mkdir(parents=True, exist_ok=True)
    for stale in ("gpu.md", "gpu.json"):  # an old report must not pass for this run's
        (opts.out / stale).unlink(missing_ok=True)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    deadline = time.perf_counter() + opts.limit
    results = []
    pending = [b for b in opts.backends if installed(b)]
    for backend in opts.backends:
        if backend not in pending:
            results.append({"backend": backend, "status": "not installed: skipped"})
    for index, backend in enumerate(pending):
        left = deadline - time.perf_counter()
        shares = [BACKENDS[b] for b in pending[index:]]
        limit = left * BACKENDS[backend] / sum(shares)
        print(f"== Keras {backend}: up to {limit:.0f} s", flush=True)
        results.append(run_backend(backend, opts, limit))
    order = {b: i for i, b in enumerate(opts.backends)}
    results.sort(key=lambda r: order[r["backend"]])
    text = report(results)
    (opts.out / "gpu.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (opts.out / "gpu.md").write_text(text)
    print(text)
    print(f"wrote {opts.out / 'gpu.md'} and {opts.out / 'gpu.json'}")
    return 0 if any(r["status"] == "finished" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
