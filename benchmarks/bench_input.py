"""Input pipeline: how fast ``make_dataset`` yields batches vs how fast a training step eats them.

Random patches of quick-profile volumes (the quick profile), and whole
paper-sized volumes (the paper's setting), each read from the preprocessed
cache as training reads them (``tversky_keras.data.cache``: one memory map
per array, opened for each example). The volumes are written as NIfTI
subjects and preprocessed into a temporary folder first; the pipeline is
read alone, on the same cores the model would share with it.
"""

import tempfile

from benchmarks.bench_pipeline import seconds_per_batch
from benchmarks.measure import Row
from benchmarks.workload import (
    PAPER_INPUT,
    cached_volumes,
    profile_config,
    quick_volume_shape,
    synthetic_volumes,
)
from tversky_keras.data import make_dataset

SECTION = "input pipeline"


def run(opts, quick_step_s=None, paper_step_s=None):
    """Rows comparing the pipeline's rate with the training steps' consumption (if timed)."""
    config = profile_config("quick")
    shape = quick_volume_shape()
    with tempfile.TemporaryDirectory(prefix="bench_input-") as folder:
        patches = make_dataset(cached_volumes(synthetic_volumes(8, shape), f"{folder}/quick"),
                               patch_size=config.patch_size, batch_size=config.batch_size)
        patch_rate = config.batch_size / seconds_per_batch(iter(patches), opts.pipeline_batches)
        volume_rate = None
        if opts.paper_shape:
            whole = make_dataset(cached_volumes(synthetic_volumes(2, PAPER_INPUT),
                                                f"{folder}/paper"), batch_size=1)
            volume_rate = 1 / seconds_per_batch(iter(whole), max(4, opts.pipeline_batches // 10))
    patch = "x".join(map(str, config.patch_size))
    rows = [Row(SECTION, f"patches {patch} from 8 cached volumes {'x'.join(map(str, shape))}, "
                         f"batch {config.batch_size}", patch_rate, "patches/s",
                quick_step_s and config.batch_size / quick_step_s,
                "quick training step eats" if quick_step_s else "",
                "speed-up = how many times faster than the model consumes")]
    if volume_rate is not None:
        rows.append(Row(SECTION, f"whole cached volumes {'x'.join(map(str, PAPER_INPUT))}, batch 1",
                        volume_rate, "volumes/s", paper_step_s and 1 / paper_step_s,
                        "paper-input training step eats" if paper_step_s else ""))
    return {"rows": rows}
