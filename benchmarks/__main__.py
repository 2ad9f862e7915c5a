"""Run the benchmark suite: ``python -m benchmarks [--json PATH] [--short] [--gpu]``.

Prints a Markdown table (each figure the median of several repetitions after
a warm-up; each comparison measured in the same run) and writes every figure,
the machine and the versions to JSON.
"""

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SECTIONS = ("training", "input", "loss", "inference", "process")
DEFAULT_JSON = Path(__file__).resolve().parent / "results.json"


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--short", action="store_true",
                        help="a quick look: fewer repetitions, no paper-sized input, no variants")
    parser.add_argument("--gpu", action="store_true",
                        help="paper-input training steps and inference on a GPU (refuses without "
                             "one), under the Keras backend KERAS_BACKEND names")
    parser.add_argument("--dry-run", action="store_true",
                        help="with --gpu: the same code at a 32^3 input on whatever device there is")
    parser.add_argument("--max-variants", type=int, default=None,
                        help="with --gpu: only the first N training variants of the backend")
    parser.add_argument("--repeats", type=int, default=10, help="timed repetitions of fast steps")
    parser.add_argument("--window", type=int, default=96, help="sliding-window size (cube side)")
    opts = parser.parse_args(argv)
    if opts.dry_run and not opts.gpu:
        parser.error("--dry-run goes with --gpu")
    for option in ("repeats", "max_variants", "window"):
        value = getattr(opts, option)
        if value is not None and value < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1, got {value}")
    opts.sections = [s for s in opts.sections.split(",") if s]
    unknown = sorted(set(opts.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    if opts.short or opts.dry_run:
        opts.repeats = min(opts.repeats, 4)
    opts.paper_shape = not opts.short
    opts.variants = not opts.short
    opts.variant_repeats = max(3, opts.repeats // 2)
    opts.scan_repeats = 2
    opts.budget_s = 15.0 if opts.short else 30.0  # timed seconds after which slow steps stop
    opts.pipeline_batches = 20 if opts.short else 100
    opts.process_steps = 10 if opts.short else 30
    return opts


def markdown(rows):
    from reproduce.report import figure, markdown_table

    head = ["section", "measure", "ours", "peer", "unit", "speed-up ours vs peer", "peer is",
            "note"]
    return markdown_table(head, (
        [row.section, row.measure, figure(row.ours), figure(row.peer), row.unit,
         f"{row.speedup:.2f}x" if row.speedup is not None else "", row.peer_name, row.note]
        for row in rows))


def loss_values_markdown(loss):
    from reproduce.report import markdown_table

    lines = [f"Loss values, alpha={loss['alpha']}, beta={loss['beta']}, smooth={loss['smooth']} "
             "(Keras adds 1e-7 to its denominator instead):", "",
             markdown_table(["loss", "value"], ([name, f"{value:.7f}"]
                                                for name, value in loss["values"].items()))]
    lines += ["", f"Installed keras.losses.tversky: alpha weighs **{loss['keras_alpha_weighs']}** "
                  f"(alpha=1, beta=0 on TP=1, FP=2, FN=1 gives {loss['keras_probe_value']:.4f}; "
                  "2/3 if alpha weighed false positives)."]
    return "\n".join(lines)


def run_sections(opts):
    from benchmarks import bench_inference, bench_input, bench_loss, bench_process, bench_training

    results = {}

    def run(name, function, *args):
        if name in opts.sections:
            results[name] = function(opts, *args)
            # Other work on the machine slows some rows: record how busy it was.
            results[name]["load_average_after"] = os.getloadavg()

    run("training", bench_training.run)
    training = results.get("training", {})
    run("input", bench_input.run, training.get("quick_step_s"), training.get("paper_step_s"))
    run("loss", bench_loss.run)
    run("inference", bench_inference.run)
    run("process", bench_process.run)
    return results


def main(argv=None):
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    from benchmarks.measure import busiest_processes, machine, today, versions
    from benchmarks.peers import peer_problem

    if opts.gpu:
        # JAX would otherwise take 75% of the GPU's memory at its first use, leaving
        # too little for the PyTorch peer in the same process.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        from benchmarks import gpu

        try:
            if not opts.dry_run:
                gpu.require_gpu()
        except gpu.NoGPU as error:
            print(error, file=sys.stderr)
            return 2
    problem = peer_problem()
    opts.peers = problem is None
    if problem:
        print(problem, file=sys.stderr)
    started = time.perf_counter()
    before = {"load_average": os.getloadavg(), "busiest_processes": busiest_processes()}
    results = {"gpu": gpu.run(opts)} if opts.gpu else run_sections(opts)
    rows = [row for section in results.values() for row in section["rows"]]
    from reproduce.report import provenance

    made = provenance()
    info = {"date": today(), "commit": made["commit"],
            "uncommitted_changes": made["uncommitted_changes"],
            "command": "python -m benchmarks " + " ".join(argv or sys.argv[1:]),
            "machine": machine(), "versions": versions(), "before": before,
            "after": {"load_average": os.getloadavg()},
            "wall_s": time.perf_counter() - started}
    print(markdown(rows))
    if "loss" in results:
        print()
        print(loss_values_markdown(results["loss"]))
    print(f"\n{info['machine']['cpu']}, {info['machine']['cores']} cores; "
          f"{', '.join(f'{k} {v}' for k, v in info['versions'].items())}; "
          f"load average before {before['load_average'][0]:.2f}, after "
          f"{info['after']['load_average'][0]:.2f}; {info['wall_s']:.0f} s")
    sections = {name: {k: v for k, v in section.items() if k != "rows"}
                for name, section in results.items()}
    opts.json.parent.mkdir(parents=True, exist_ok=True)
    from tversky_keras.atomic import dumps

    opts.json.write_text(dumps({**info, "rows": [row.to_json() for row in rows],
                                "sections": sections}, default=str) + "\n")
    print(f"wrote {opts.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
