"""``python -m benchmarks --gpu``: the paper's input on a GPU, with and without mixed precision and XLA.

Training steps of the paper profile's network on one ``128x224x256x3`` volume
(batch 1) in fp32, ``mixed_float16``, XLA and both; sliding-window inference
of a 1-mm brain in fp32 and ``mixed_float16``; PyTorch + MONAI on the same GPU
when a CUDA build of PyTorch is installed. From the fastest step it estimates
the wall time of the paper profile's whole grid of trainings.
"""

import keras
import tensorflow as tf

from benchmarks import bench_inference
from benchmarks.bench_training import keras_step_seconds, monai_step_seconds
from benchmarks.measure import Row
from benchmarks.workload import PAPER_INPUT, network, paper_grid_steps, profile_config

SECTION = "GPU"


class NoGPU(RuntimeError):
    """No GPU is visible to TensorFlow."""


def require_gpu():
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        raise NoGPU(
            "--gpu: TensorFlow sees no GPU on this machine, so there is nothing to measure. "
            "Run it where `python -c \"import tensorflow as tf; "
            "print(tf.config.list_physical_devices('GPU'))\"` lists one (install "
            "tensorflow[and-cuda]); for PyTorch/MONAI peer rows also a CUDA build of torch.")
    for gpu in gpus:
        # Leave memory to PyTorch: TensorFlow would otherwise reserve all of it.
        tf.config.experimental.set_memory_growth(gpu, True)
    return gpus


def run(opts):
    """GPU rows; call ``require_gpu`` first (it also stops TensorFlow reserving all memory)."""
    config = profile_config("paper")
    variants = [("fp32", {}), ("mixed_float16", dict(policy="mixed_float16")),
                ("fp32 + XLA", dict(jit_compile=True)),
                ("mixed_float16 + XLA", dict(policy="mixed_float16", jit_compile=True))]
    shape = f"1x{'x'.join(map(str, PAPER_INPUT))}x3, {config.base_filters} filters, depth {config.depth}"
    rows, steps = [], {}
    for name, options in variants:
        seconds, model = keras_step_seconds(config, 1, PAPER_INPUT, opts.repeats, opts.budget_s,
                                            **options)
        steps[name] = seconds
        rows.append(Row(SECTION, f"training step {shape}, ours {name}", seconds, "s/step",
                        steps["fp32"], "ours fp32"))
    if opts.peers and _torch_cuda():
        peer = monai_step_seconds(network(model), config, 1, PAPER_INPUT, opts.repeats,
                                  opts.budget_s, device="cuda")
        rows.append(Row(SECTION, f"training step {shape}, fp32 vs PyTorch + MONAI",
                        steps["fp32"], "s/step", peer, "PyTorch + MONAI fp32 (CUDA)"))
    best = min(steps, key=steps.get)
    grid = paper_grid_steps()
    rows.append(Row(SECTION, f"paper grid: {grid} training steps at the best step ({best})",
                    grid * steps[best] / 3600, "hours",
                    note="training only; 10 trainings x 1000 epochs, 7 or 8 volumes per fold"))
    for name, policy in (("fp32", None), ("mixed_float16", "mixed_float16")):
        previous = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy(policy or previous)
        try:
            infer = bench_inference.run(opts, profile="paper", device="cuda",
                                        peers=opts.peers and policy is None and _torch_cuda())
        finally:
            keras.mixed_precision.set_global_policy(previous)
        for row in infer["rows"]:
            row.section, row.measure = SECTION, f"inference {row.measure}, ours {name}"
            rows.append(row)
    return {"rows": rows, "paper_grid_steps": grid, "step_s": steps}


def _torch_cuda():
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()
