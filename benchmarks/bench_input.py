"""Input pipeline: how fast ``make_dataset`` yields batches vs how fast a training step eats them.

Random patches of in-memory quick-profile volumes (the quick profile), and
whole paper-sized volumes (the paper's setting). The pipeline is read alone,
on the same cores the model would share with it.
"""

from benchmarks.bench_pipeline import seconds_per_batch
from benchmarks.measure import Row
from benchmarks.workload import PAPER_INPUT, profile_config, quick_volume_shape, synthetic_volumes
from tversky_keras.data import make_dataset

SECTION = "input pipeline"


def run(opts, quick_step_s=None, paper_step_s=None):
    """Rows comparing the pipeline's rate with the training steps' consumption (if timed)."""
    config = profile_config("quick")
    shape = quick_volume_shape()
    patches = make_dataset(synthetic_volumes(8, shape), patch_size=config.patch_size,
                           batch_size=config.batch_size)
    patch_rate = config.batch_size / seconds_per_batch(iter(patches), opts.pipeline_batches)
    patch = "x".join(map(str, config.patch_size))
    rows = [Row(SECTION, f"patches {patch} from 8 volumes {'x'.join(map(str, shape))}, "
                         f"batch {config.batch_size}", patch_rate, "patches/s",
                quick_step_s and config.batch_size / quick_step_s,
                "quick training step eats" if quick_step_s else "",
                "speed-up = how many times faster than the model consumes")]
    if opts.paper_shape:
        whole = make_dataset(synthetic_volumes(2, PAPER_INPUT), batch_size=1)
        volume_rate = 1 / seconds_per_batch(iter(whole), max(4, opts.pipeline_batches // 10))
        rows.append(Row(SECTION, f"whole volumes {'x'.join(map(str, PAPER_INPUT))}, batch 1",
                        volume_rate, "volumes/s", paper_step_s and 1 / paper_step_s,
                        "paper-input training step eats" if paper_step_s else ""))
    return {"rows": rows}
