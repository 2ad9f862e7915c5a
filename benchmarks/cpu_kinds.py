"""The quick profile's training step under each CPU execution a user can get.

Each variant is a fresh process (``benchmarks.train_process``), because the
switches are read when TensorFlow or Keras is imported:

- TensorFlow with oneDNN (``TF_ENABLE_ONEDNN_OPTS=1``);
- TensorFlow with its Eigen kernels (``TF_ENABLE_ONEDNN_OPTS=0``, what TensorFlow
  itself picks on a CPU without AVX-512 VNNI/BF16, AVX-VNNI or AMX);
- oneDNN held to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``): on a CPU with AVX-512 this
  simulates an AVX2-only one, and the row says it is simulated;
- nothing set: what ``import tversky_keras`` chooses (``tversky_keras.cpu``);
- Keras on JAX (XLA:CPU) and on PyTorch, where they are installed.

The variants run in interleaved rounds (A B C ... A B C ...), and each row is the
median of its rounds, so that a machine that slows down mid-run shifts every row
alike. Nothing else should run meanwhile (PyTorch's threads spin on shared cores)::

    python -m benchmarks.cpu_kinds --steps 20 --rounds 2 --out benchmarks/cpu-kinds.json

``--render`` prints the Markdown of a committed JSON without measuring.
"""

import argparse
import importlib.util
import json
import statistics
import sys
from pathlib import Path

from reproduce.report import cpu_kinds_markdown

VARIANTS = {
    "tensorflow-onednn": ("TensorFlow, oneDNN", {"TF_ENABLE_ONEDNN_OPTS": "1"}, None),
    "tensorflow-eigen": ("TensorFlow, Eigen", {"TF_ENABLE_ONEDNN_OPTS": "0"}, None),
    "tensorflow-onednn-avx2": ("TensorFlow, oneDNN held to AVX2",
                               {"TF_ENABLE_ONEDNN_OPTS": "1", "ONEDNN_MAX_CPU_ISA": "AVX2"}, None),
    "package-default": ("TensorFlow, nothing set (tversky_keras chooses)", {}, None),
    "keras-jax": ("Keras on JAX (XLA:CPU)", {"KERAS_BACKEND": "jax"}, "jax"),
    "keras-torch": ("Keras on PyTorch", {"KERAS_BACKEND": "torch"}, "torch"),
}


def available(names):
    """The variants whose backend is installed, and the others with the reason."""
    chosen, missing = [], {}
    for name in names:
        module = VARIANTS[name][2]
        if module and importlib.util.find_spec(module) is None:
            missing[name] = {"label": VARIANTS[name][0], "why": f"{module} is not installed"}
        else:
            chosen.append(name)
    return chosen, missing


def measure(names, steps, rounds):
    from benchmarks.train_process import run_in_subprocess

    runs = {name: [] for name in names}
    for round_ in range(rounds):
        for name in names:
            # Unset what this process' own import of tversky_keras chose, then the variant's.
            environment = {"TF_ENABLE_ONEDNN_OPTS": None, "TVERSKY_KERAS_ONEDNN_CHOICE": None,
                           **VARIANTS[name][1]}
            result = run_in_subprocess(steps, env=environment)
            runs[name].append(result)
            print(f"round {round_ + 1}/{rounds} {name}: {result['step_s']:.3f} s/step",
                  file=sys.stderr, flush=True)
    return runs


def summarise(runs, machine):
    """Rows of the committed JSON: each variant's median step and its ratio to oneDNN."""
    medians = {name: statistics.median(r["step_s"] for r in results)
               for name, results in runs.items()}
    reference = medians.get("tensorflow-onednn")
    rows = []
    for name, results in runs.items():
        simulated = name == "tensorflow-onednn-avx2" and bool(machine.get("avx512"))
        rows.append({
            "variant": name, "label": VARIANTS[name][0],
            "environment": VARIANTS[name][1],
            "step_s": [round(r["step_s"], 4) for r in results],
            "median_step_s": round(medians[name], 4),
            "vs_onednn": None if not reference else round(medians[name] / reference, 2),
            "peak_rss_mib": round(max(r["peak_rss_mib"] for r in results), 1),
            "simulated": simulated,
        })
    return rows


def probe():
    """One quick-profile U-Net's loss and gradients on a fixed batch, from fixed weights:
    what a training step computes, printed as JSON by ``--probe`` so that two processes
    with other kernels can be compared (``tests/test_cpu.py``)."""
    import keras
    import numpy as np
    import tensorflow as tf

    from tversky_keras import TverskyLoss, cpu, unet3d

    keras.utils.set_random_seed(0)
    model = unet3d(input_shape=(32, 32, 32, 3), base_filters=8, depth=3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 32, 32, 32, 3)).astype(np.float32)
    lesion = (rng.random((2, 32, 32, 32)) > 0.95).astype(np.float32)
    y = np.stack([1 - lesion, lesion], axis=-1)
    loss = TverskyLoss(alpha=0.3, beta=0.7)
    with tf.GradientTape() as tape:
        probabilities = model(x, training=True)
        value = loss(y, probabilities)
    gradients = tape.gradient(value, model.trainable_variables)
    return {"loss": float(value), "probability_sum": float(tf.reduce_sum(probabilities[..., 1])),
            "gradients": [g.numpy().ravel().tolist()[:64] for g in gradients],
            "gradient_norms": [float(tf.norm(g)) for g in gradients],
            "onednn": cpu.choice()["onednn"]}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cpu_kinds",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated, of: " + ", ".join(VARIANTS))
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here")
    parser.add_argument("--render", type=Path, default=None,
                        help="print the Markdown of this JSON and stop")
    parser.add_argument("--probe", action="store_true",
                        help="print one training step's loss and gradients as JSON and stop")
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(probe()))
        return 0
    if args.render:
        print(cpu_kinds_markdown(json.loads(args.render.read_text())))
        return 0
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    if args.steps < 1 or args.rounds < 1:
        parser.error("--steps and --rounds must be at least 1")

    from benchmarks.measure import machine as describe_machine
    from reproduce.report import provenance
    from tversky_keras.atomic import write_json

    chosen, missing = available(names)
    runs = measure(chosen, args.steps, args.rounds)
    machine = describe_machine()
    record = {"steps": args.steps, "rounds": args.rounds, "machine": machine,
              "rows": summarise(runs, machine), "missing": missing,
              "made": provenance()}
    if args.out:
        write_json(record, args.out)
    print(cpu_kinds_markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
