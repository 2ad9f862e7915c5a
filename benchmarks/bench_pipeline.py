"""Does the model ever wait for ``make_dataset``? Pipeline rate next to the training step's.

    python -m benchmarks.bench_pipeline [--data DIR] [--batches N] [--steps N]

Volumes: the real MSLUB patients resampled to 2 mm (``load_subject(...,
target_spacing=2.0, multiple_of=8)``: 96x112x96x3), or random volumes of that
shape when ``--data`` holds no subjects. For 64^3 patches in batches of 2 and for
whole volumes in batches of 1, it prints the rate of the pipeline read alone,
the rate a training step of ``unet3d(base_filters=8, depth=3)`` with Adam and
``TverskyLoss`` consumes on a fixed batch, the ratio of the two, and the step
rate when the model trains on the pipeline itself (equal to the fixed-batch rate
when the model never waits).
"""

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tversky_keras.data import (  # noqa: E402
    DataError,
    Volume,
    discover_subjects,
    load_subject,
    make_dataset,
)
from tversky_keras.losses import TverskyLoss  # noqa: E402
from tversky_keras.models import unet3d  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mslub-mni"
GRID_SHAPE = (96, 112, 96)


def real_volumes(root):
    """The subjects under ``root`` on the 2-mm grid, and the seconds it took per subject."""
    subjects = discover_subjects(root)
    start = time.perf_counter()
    volumes = [load_subject(s, target_spacing=2.0, multiple_of=8) for s in subjects]
    return volumes, (time.perf_counter() - start) / len(volumes)


def random_volumes(n=2, seed=0):
    """Stand-ins for 2-mm brains: a brain box of noise holding 0.5% lesion voxels."""
    rng = np.random.default_rng(seed)
    brain = np.zeros(GRID_SHAPE, bool)
    brain[8:-8, 8:-8, 8:-8] = True
    return [
        Volume(
            f"random{i}",
            np.where(brain[..., None], rng.standard_normal((*GRID_SHAPE, 3)), 0).astype(np.float32),
            (brain & (rng.random(GRID_SHAPE) < 0.005)).astype(np.uint8),
            brain,
            None,
            ("T1W", "T2W", "FLAIR"),
        )
        for i in range(n)
    ]


def seconds_per_batch(batches, n, warmup=2):
    """Seconds per item of the iterator ``batches`` after ``warmup`` items."""
    for _ in range(warmup):
        next(batches)
    start = time.perf_counter()
    for _ in range(n):
        next(batches)
    return (time.perf_counter() - start) / n


def training_steps(model, batches):
    """An iterator that trains one step per batch of ``batches``."""
    for x, y in batches:
        model.train_on_batch(x, y)
        yield


def repeat_forever(batch):
    while True:
        yield batch


def compare(name, unit, dataset, examples_per_batch, model, batches, steps):
    read_s = seconds_per_batch(iter(dataset), batches)
    fixed = next(iter(dataset))
    step_s = seconds_per_batch(training_steps(model, repeat_forever(fixed)), steps, warmup=1)
    fed_s = seconds_per_batch(training_steps(model, iter(dataset)), steps, warmup=1)
    pipeline_rate, model_rate = examples_per_batch / read_s, examples_per_batch / step_s
    print(
        f"| {name} | {pipeline_rate:9.1f} {unit}/s | {model_rate:7.2f} {unit}/s | "
        f"{pipeline_rate / model_rate:7.0f}x | {1 / step_s:6.3f} | {1 / fed_s:6.3f} |"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA,
                        help="data folder (any layout discover_subjects reads)")
    parser.add_argument("--batches", type=int, default=100,
                        help="batches read to time the pipeline")
    parser.add_argument("--steps", type=int, default=3, help="training steps timed per setting")
    opts = parser.parse_args(argv)

    try:
        volumes, load_s = real_volumes(opts.data)
        print(f"{len(volumes)} subjects of {opts.data}, "
              f"load_subject at 2 mm: {load_s:.2f} s per subject")
    except DataError as error:
        volumes = random_volumes()
        print(f"random volumes ({error})")
    print(f"grid {volumes[0].image.shape}, {os.cpu_count()} CPUs, keras {keras.__version__}\n")

    model = unet3d(input_shape=(None, None, None, 3), base_filters=8, depth=3)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=TverskyLoss(alpha=0.3, beta=0.7))
    print("| input | pipeline alone | training step eats | ratio "
          "| steps/s, fixed batch | steps/s, fed by pipeline |")
    print("|---|---|---|---|---|---|")
    patches = make_dataset(volumes, patch_size=64, batch_size=2, foreground_ratio=0.33, flips=True)
    compare("64^3 patches, batch 2", "patches", patches, 2, model, opts.batches, opts.steps)
    whole = make_dataset(volumes, batch_size=1, flips=True)
    compare(f"whole {'x'.join(map(str, GRID_SHAPE))}, batch 1", "volumes", whole, 1, model,
            max(4, opts.batches // 5), opts.steps)


if __name__ == "__main__":
    main()
