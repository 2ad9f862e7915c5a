"""Does the model ever wait for ``make_dataset``? Pipeline rate next to the training step's.

    python -m benchmarks.bench_pipeline [--data DIR | --phantom N] [--batches N] [--steps N]

Subjects: the real MSLUB patients (``--data``, by default the shared copy), or
N subjects of the quick profile's 2-mm phantom (``--phantom N``, written to a
temporary folder; also used when ``--data`` holds no subjects). They are
preprocessed into a temporary cache on the 2-mm grid (``preprocess(...,
target_spacing=2.0, multiple_of=8)``) and the pipeline reads every example
from that cache, as training does. The cache's files were just written, so
they are in the page cache, as they are for a training whose cache fits in
memory.

For 32^3 patches in batches of 4 (the quick profile), 64^3 patches in batches
of 2 and whole volumes in batches of 1, it prints the rate of the pipeline
read alone, the rate at which a training step of the quick profile's network
(``unet3d(base_filters=8, depth=3)``, compiled as training compiles it)
consumes a fixed batch, the ratio of the two, and the step rate when the model
trains on the pipeline itself (equal to the fixed-batch rate when the model
never waits).
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

from tversky_keras.data import (  # noqa: E402
    DataError,
    discover_subjects,
    make_dataset,
    preprocess,
    synthesize_dataset,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mslub-mni"
SPACING_MM, MULTIPLE_OF = 2.0, 8


def phantom_subjects(folder, count):
    """``count`` subjects of the quick profile's phantom, written under ``folder``."""
    from reproduce.experiment import PROFILES

    synthesize_dataset(folder, n_subjects=count, spacing=PROFILES["quick"].phantom_spacing,
                       progress=False)
    return discover_subjects(folder)


def cached(subjects, cache_dir):
    """The subjects preprocessed into ``cache_dir`` on the 2-mm grid, and the seconds per subject."""
    start = time.perf_counter()
    volumes = preprocess(subjects, cache_dir, target_spacing=SPACING_MM, multiple_of=MULTIPLE_OF)
    return volumes, (time.perf_counter() - start) / len(volumes)


def seconds_per_batch(batches, n, warmup=2):
    """Mean seconds per item of the iterator ``batches`` over ``n`` items after ``warmup``."""
    from benchmarks.measure import median_seconds

    _, times = median_seconds(lambda: next(batches), n, warmup=warmup)
    return sum(times) / n


def training_steps(model, batches):
    """An iterator that trains one step per batch of ``batches``."""
    for x, y in batches:
        model.train_on_batch(x, y)
        yield


def repeat_forever(batch):
    while True:
        yield batch


def compare(dataset, examples_per_batch, model, batches, steps):
    """Examples/s of ``dataset`` read alone and eaten by ``model``'s training step, and steps/s.

    Returns:
        dict: ``pipeline`` and ``model`` (examples/s), ``ratio`` (pipeline /
        model), ``fixed_steps`` (steps/s on one fixed batch) and ``fed_steps``
        (steps/s trained on the dataset itself).
    """
    read_s = seconds_per_batch(iter(dataset), batches)
    fixed = next(iter(dataset))
    step_s = seconds_per_batch(training_steps(model, repeat_forever(fixed)), steps, warmup=1)
    fed_s = seconds_per_batch(training_steps(model, iter(dataset)), steps, warmup=1)
    pipeline, eaten = examples_per_batch / read_s, examples_per_batch / step_s
    return {"pipeline": pipeline, "model": eaten, "ratio": pipeline / eaten,
            "fixed_steps": 1 / step_s, "fed_steps": 1 / fed_s}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data", type=Path, default=SHARED_DATA,
                        help="data folder (any layout discover_subjects reads)")
    source.add_argument("--phantom", type=int, metavar="N",
                        help="N subjects of the quick profile's 2-mm phantom instead")
    parser.add_argument("--batches", type=int, default=100,
                        help="batches read to time the pipeline")
    parser.add_argument("--steps", type=int, default=10, help="training steps timed per setting")
    opts = parser.parse_args(argv)

    from benchmarks.workload import compiled_model, profile_config
    from reproduce.report import markdown_head, markdown_row

    with tempfile.TemporaryDirectory(prefix="bench_pipeline-") as work:
        if opts.phantom is None:
            try:
                subjects, origin = discover_subjects(opts.data), str(opts.data)
            except DataError as error:
                print(f"no subjects ({error}); the phantom instead")
                opts.phantom = 2
        if opts.phantom is not None:
            subjects = phantom_subjects(Path(work) / "phantom", opts.phantom)
            origin = "the quick profile's phantom"
        volumes, preprocess_s = cached(subjects, Path(work) / "cache")
        shapes = sorted({v.shape for v in volumes})
        print(f"{len(volumes)} subjects of {origin}, preprocessed at {SPACING_MM:g} mm into a "
              f"cache: {preprocess_s:.2f} s per subject; grid {' '.join(map(str, shapes))}, "
              f"{os.cpu_count()} CPUs, keras {keras.__version__}\n")

        model = compiled_model(profile_config("quick"))
        settings = [
            ("32^3 patches, batch 4 (quick profile)", "patches", 4,
             dict(patch_size=32, batch_size=4), opts.batches),
            ("64^3 patches, batch 2", "patches", 2,
             dict(patch_size=64, batch_size=2, foreground_ratio=0.33, flips=True), opts.batches),
            ("whole volumes, batch 1", "volumes", 1, dict(batch_size=1, flips=True),
             max(4, opts.batches // 5)),
        ]
        print("\n".join(markdown_head(["input", "pipeline alone", "training step eats", "ratio",
                                       "steps/s, fixed batch", "steps/s, fed by pipeline"])))
        for name, unit, per_batch, options, batches in settings:
            r = compare(make_dataset(volumes, **options), per_batch, model, batches, opts.steps)
            print(markdown_row([name, f"{r['pipeline']:,.1f} {unit}/s",
                                f"{r['model']:.2f} {unit}/s", f"{r['ratio']:,.0f}x",
                                f"{r['fixed_steps']:.3f}", f"{r['fed_steps']:.3f}"]), flush=True)


if __name__ == "__main__":
    main()
