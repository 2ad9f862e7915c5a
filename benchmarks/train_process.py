"""A quick-profile training process, run alone to measure its step time and peak memory.

``model.fit`` on ``make_dataset`` patches of synthetic quick-profile volumes,
compiled as ``tversky_keras.training`` compiles it. Prints one JSON line:
seconds per step (after a warm-up epoch) and the process' peak resident
memory. Run as a subprocess so that the peak is this workload's alone, and so
that environment switches read at import (``TF_ENABLE_ONEDNN_OPTS``) apply::

    python -m benchmarks.train_process --steps 30 [--steps-per-execution 1]
"""

import argparse
import json
import os
import subprocess
import sys
import time



def peak_rss_mib(status="/proc/self/status"):
    """This process' peak resident memory (``VmHWM``) in MiB.

    Not ``getrusage``'s ``ru_maxrss``: Linux carries it over ``fork`` and
    ``exec``, so a child started by a big parent would report the parent's peak.
    """
    with open(status) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"{status} has no VmHWM line")


def measure(steps, steps_per_execution, volumes):
    from tversky_keras.data import make_dataset
    from benchmarks.workload import compiled_model, profile_config, quick_volume_shape, synthetic_volumes

    config = profile_config("quick")
    data = make_dataset(synthetic_volumes(volumes, quick_volume_shape()),
                        patch_size=config.patch_size, batch_size=config.batch_size)
    model = compiled_model(config, steps_per_execution=steps_per_execution)
    model.fit(data, epochs=1, steps_per_epoch=2 * steps_per_execution, verbose=0)  # warm-up
    start = time.perf_counter()
    model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)
    seconds = (time.perf_counter() - start) / steps
    return {"step_s": seconds, "peak_rss_mib": peak_rss_mib(), "steps": steps,
            "steps_per_execution": steps_per_execution, "volumes": volumes,
            "batch": config.batch_size, "patch": list(config.patch_size)}


def run_in_subprocess(steps, steps_per_execution=1, volumes=8, env=None, timeout=600):
    """Run this module as a fresh Python process; returns its JSON result. ``env``'s
    variables replace the parent's; a value of ``None`` removes one."""
    command = [sys.executable, "-m", "benchmarks.train_process", "--steps", str(steps),
               "--steps-per-execution", str(steps_per_execution), "--volumes", str(volumes)]
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    environment = {k: v for k, v in environment.items() if v is not None}  # None: unset
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env=environment)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--steps-per-execution", type=int, default=1)
    parser.add_argument("--volumes", type=int, default=8, help="synthetic volumes held in memory")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.steps, args.steps_per_execution, args.volumes)))


if __name__ == "__main__":
    main()
