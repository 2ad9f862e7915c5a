"""``python -m benchmarks --gpu``: the paper's input on a GPU, with and without mixed precision and XLA.

Training steps of the paper profile's network (our U-Net, ``TverskyLoss``,
Adam and the five lesion metrics, compiled as ``tversky_keras.training``
compiles it) on one ``128x224x256x3`` volume, and sliding-window and
whole-volume inference of a 1-mm brain, in fp32 and mixed precision, with and
without XLA where the backend allows both. PyTorch + MONAI run on the same GPU
(fp32 and bfloat16 autocast) when a CUDA build of PyTorch and MONAI are
installed. From the fastest step it estimates the wall time of the paper
profile's whole grid of trainings.

It runs under whichever Keras backend ``KERAS_BACKEND`` names, so the same
model and loss code can be timed where TensorFlow's GPU build is not at hand:

- ``tensorflow``: plain graph and XLA (``jit_compile``), fp32 and ``mixed_float16``;
- ``jax``: XLA always compiles the step; fp32, ``mixed_bfloat16`` and
  ``mixed_float16``, and fp32 with ``jit_compile=False`` (op by op, no XLA);
- ``torch``: eager PyTorch kernels, no XLA; fp32, ``mixed_bfloat16``, ``mixed_float16``.

Each backend also runs the network in the ``channels_first`` layout (Keras'
torch backend then leaves cuDNN's native layout alone) and with 0.1.0's
decoder (``keras.layers.Conv3DTranspose`` instead of ``UpConv3D``), so one run
shows what each change is worth on that GPU. ``python -m benchmarks.gpu_all``
runs every installed backend in one command.

``--dry-run`` runs the same code on whatever device there is at a 32^3 input,
to check the script before a GPU is spent on it.
"""

import dataclasses
import subprocess

import keras

from benchmarks import bench_inference
from benchmarks.bench_training import keras_step_seconds, monai_step_seconds
from benchmarks.measure import Row
from benchmarks.workload import (PAPER_INPUT, conv3d_transpose_decoder, network,
                                 paper_grid_steps, profile_config)

SECTION = "GPU"
DRY_RUN_INPUT = (32, 32, 32)
DRY_RUN_SCAN, DRY_RUN_WINDOW = (48, 56, 48), 32

FIRST = dict(data_format="channels_first")
OLD_DECODER = dict(decoder="Conv3DTranspose")
# Per backend, in the order they run: the first two before the peer and the fp32 inference
# rows, so that a run cut short has the most telling figures.
VARIANTS = {
    "tensorflow": [("fp32", {}), ("mixed_float16", dict(policy="mixed_float16")),
                   ("fp32, channels_first", FIRST),
                   ("mixed_float16, channels_first", dict(policy="mixed_float16", **FIRST)),
                   ("fp32 + XLA", dict(jit_compile=True)),
                   ("mixed_float16 + XLA", dict(policy="mixed_float16", jit_compile=True)),
                   ("fp32, Conv3DTranspose decoder", OLD_DECODER)],
    "jax": [("fp32 + XLA", dict(jit_compile=True)),
            ("mixed_bfloat16 + XLA", dict(policy="mixed_bfloat16", jit_compile=True)),
            ("mixed_bfloat16 + XLA, Conv3DTranspose decoder",
             dict(policy="mixed_bfloat16", jit_compile=True, **OLD_DECODER)),
            ("fp32 + XLA, channels_first", dict(jit_compile=True, **FIRST)),
            ("mixed_float16 + XLA", dict(policy="mixed_float16", jit_compile=True)),
            ("fp32, no XLA (jit_compile=False)", dict(jit_compile=False))],
    "torch": [("fp32, channels_first", FIRST),
              ("mixed_bfloat16, channels_first", dict(policy="mixed_bfloat16", **FIRST)),
              ("fp32", {}), ("mixed_bfloat16", dict(policy="mixed_bfloat16")),
              ("mixed_float16, channels_first", dict(policy="mixed_float16", **FIRST)),
              ("fp32, channels_first, Conv3DTranspose decoder", dict(FIRST, **OLD_DECODER)),
              ("fp32, channels_first + torch.compile (jit_compile=True)",
               dict(jit_compile=True, **FIRST))],
}
INFERENCE_POLICIES = ("float32", "mixed_bfloat16")


class NoGPU(RuntimeError):
    """The active Keras backend sees no GPU."""


def gpu_names():
    """Names of the GPUs the active backend sees (empty when none)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return [tf.config.experimental.get_device_details(g).get("device_name", g.name)
                for g in tf.config.list_physical_devices("GPU")]
    if backend == "jax":
        import jax

        return [d.device_kind for d in jax.devices() if d.platform == "gpu"]
    if backend == "torch":
        import torch

        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return []


def require_gpu():
    """The GPUs' names; raises ``NoGPU`` (with what to install) when there is none."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        for gpu in tf.config.list_physical_devices("GPU"):
            # Leave memory to PyTorch: TensorFlow would otherwise reserve all of it.
            # (Only possible before TensorFlow first uses the GPU.)
            tf.config.experimental.set_memory_growth(gpu, True)
    names = gpu_names()
    if not names:
        raise NoGPU(
            f"--gpu: Keras' {keras.backend.backend()} backend sees no GPU on this machine, so "
            "there is nothing to measure. Install a GPU build of the backend (tensorflow[and-cuda], "
            "jax[cuda13] or a CUDA torch) and check it lists the GPU; for the PyTorch + MONAI "
            "rows also a CUDA build of torch. `--dry-run` checks the script on the CPU.")
    return names


def nvidia_smi():
    """``name, memory, driver`` of each GPU as nvidia-smi reports them, or None."""
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                               "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def run(opts):
    """GPU rows for the active backend; call ``require_gpu`` first (unless ``opts.dry_run``).

    The most telling rows come first (fp32 and bfloat16 steps, the peer, fp32
    inference), so that a run stopped at a time limit has printed them.
    """
    backend = keras.backend.backend()
    config = profile_config("paper")
    spatial = DRY_RUN_INPUT if opts.dry_run else PAPER_INPUT
    device = _torch_device(opts)
    shape = (f"1x{'x'.join(map(str, spatial))}x3, {config.base_filters} filters, "
             f"depth {config.depth}, Keras {backend}")
    rows, steps, models = [], {}, []

    def add(row):
        rows.append(row)
        _announce(row)

    def step_rows(variants):
        for name, options in variants:
            options = dict(options)
            built = dataclasses.replace(config, data_format=options.pop("data_format",
                                                                        config.data_format))
            try:
                with conv3d_transpose_decoder(options.pop("decoder", None) == "Conv3DTranspose"):
                    seconds, model = keras_step_seconds(built, 1, spatial, opts.repeats,
                                                        opts.budget_s, **options)
            except Exception as error:  # noqa: BLE001  (one failed variant must not stop the rest)
                add(_failed(f"training step {shape}, ours {name}", "s/step", error))
                continue
            steps[name] = seconds
            models.append(model)
            first = next(iter(steps))
            add(Row(SECTION, f"training step {shape}, ours {name}", seconds, "s/step",
                    steps[first], f"ours {first}"))

    variants = VARIANTS[backend][:getattr(opts, "max_variants", None)]
    step_rows(variants[:2])
    if models and device:
        add_peer_rows(add, network(models[0]), config, spatial, steps, opts, device)
    for row in _inference_rows(opts, INFERENCE_POLICIES[0], device):
        add(row)
    step_rows(variants[2:])
    for policy in INFERENCE_POLICIES[1:]:
        for row in _inference_rows(opts, policy, device):
            add(row)
    grid = paper_grid_steps()
    estimate = None
    if steps:
        best = min(steps, key=steps.get)
        estimate = grid * steps[best] / 3600
        add(Row(SECTION, f"paper grid: {grid} training steps at the best step ({best})",
                estimate, "hours",
                note="training steps only (10 trainings x 1000 epochs, 7 or 8 volumes per fold)"))
    return {"rows": rows, "paper_grid_steps": grid, "step_s": steps, "grid_hours": estimate,
            "backend": backend, "gpus": [] if opts.dry_run else gpu_names(),
            "nvidia_smi": nvidia_smi(), "input": list(spatial)}


def add_peer_rows(add, keras_network, config, spatial, steps, opts, device):
    """PyTorch + MONAI steps in fp32 and bfloat16 autocast, each against ours of that precision."""
    import torch

    for label, dtype, precision in (("fp32", None, "fp32"),
                                    ("bfloat16 autocast", torch.bfloat16, "bfloat16")):
        try:
            peer = monai_step_seconds(keras_network, config, 1, spatial, opts.repeats,
                                      opts.budget_s, device=device, autocast=dtype)
        except Exception as error:  # noqa: BLE001
            add(_failed(f"training step, PyTorch + MONAI {label}", "s/step", error))
            continue
        # Like against like: our fastest variant of that precision, else our fastest.
        same = {k: v for k, v in steps.items()
                if k.startswith(precision) or k.startswith(f"mixed_{precision}")} or steps
        ours = min(same, key=same.get)
        add(Row(SECTION, f"training step, ours {ours} vs PyTorch + MONAI {label}",
                steps[ours], "s/step", peer, f"PyTorch + MONAI {label} ({device})",
                f"PyTorch: cudnn.benchmark on, cudnn.allow_tf32 {torch.backends.cudnn.allow_tf32}"))


def _failed(measure, unit, error):
    message = " ".join(str(error).split())[:300]  # one line: it goes into a table cell
    return Row(SECTION, measure, None, unit, note=f"failed: {type(error).__name__}: {message}")


def _inference_rows(opts, policy, device):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    # A dry run checks the code paths: mixed precision on one window's scan, as a CPU
    # without bfloat16 instructions emulates it (measured 15x fp32's time per scan).
    scan = DRY_RUN_SCAN if policy == INFERENCE_POLICIES[0] else (DRY_RUN_WINDOW,) * 3
    try:
        infer = bench_inference.run(
            opts, profile="paper", device=device or "cpu", peers=bool(device) and policy == "float32",
            whole_volume=True, shape=scan if opts.dry_run else None,
            window=DRY_RUN_WINDOW if opts.dry_run else None)
    except Exception as error:  # noqa: BLE001
        return [_failed(f"inference, ours {policy}", "s/scan", error)]
    finally:
        keras.mixed_precision.set_global_policy(previous)
    for row in infer["rows"]:
        row.section = SECTION
        row.measure = f"inference {row.measure}, ours {policy}, Keras {keras.backend.backend()}"
    return infer["rows"]


def _announce(row):
    """Print each row as soon as it is measured: a run cut short still shows what it got."""
    ours = "" if row.ours is None else f"{row.ours:.4g} {row.unit}"  # a failure's note says so
    peer = f" | {row.peer_name}: {row.peer:.4g} {row.unit}" if row.peer else ""
    print(f"[gpu] {row.measure}: {ours}{peer} {row.note}", flush=True)


def _torch_device(opts):
    """Where the PyTorch + MONAI peer runs: "cuda", "cpu" for a dry run, or None (no peer)."""
    if not opts.peers:
        return None
    try:
        import torch
    except ImportError:
        return None
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True  # what a MONAI user turns on for fixed shapes
        return "cuda"
    return "cpu" if opts.dry_run else None

