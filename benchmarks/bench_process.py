"""A quick-profile training process run alone: peak memory, and ``model.fit`` step time.

Each figure comes from a fresh process (``benchmarks.train_process``): its
peak resident memory is the workload's own, and switches read when TensorFlow
is imported (``TF_ENABLE_ONEDNN_OPTS``) can be compared.
"""

from benchmarks.measure import Row
from benchmarks.train_process import run_in_subprocess

SECTION = "training process"


def run(opts):
    base = run_in_subprocess(opts.process_steps)
    label = (f"quick profile, model.fit on make_dataset, batch {base['batch']} x "
             f"{'x'.join(map(str, base['patch']))}, {base['steps']} steps")
    rows = [
        Row(SECTION, f"{label}: peak RSS", base["peak_rss_mib"], "MiB",
            note="VmHWM of the process (TensorFlow itself ~0.5 GiB)"),
        Row(SECTION, f"{label}: time", base["step_s"], "s/step",
            note="includes tf.data and fit's per-step Python"),
    ]
    if opts.variants:
        batched = run_in_subprocess(opts.process_steps, steps_per_execution=8)
        rows.append(Row(SECTION, "same, compile(steps_per_execution=8)", batched["step_s"],
                        "s/step", base["step_s"], "steps_per_execution=1"))
        plain = run_in_subprocess(max(4, opts.process_steps // 3),
                                  env={"TF_ENABLE_ONEDNN_OPTS": "0"})
        rows.append(Row(SECTION, "same, TF_ENABLE_ONEDNN_OPTS=0", plain["step_s"], "s/step",
                        base["step_s"], "oneDNN on (TensorFlow's default)"))
    return {"rows": rows}
