"""Time and peak memory of the whole-volume metrics on 1-mm MNI-sized volumes.

Prints, for one 182x218x182 volume with about 0.5% lesion voxels and for a
pooled list of such volumes: the wall time (best of --repeats) and the peak of
memory allocated during the call (tracemalloc, on top of the inputs) of
``tversky_keras.evaluation``, and of scikit-learn on the same voxels.

    python -m benchmarks.bench_evaluation [--volumes 4] [--repeats 3]
"""

import argparse
import tracemalloc

import numpy as np
from scipy import ndimage
from sklearn import metrics as skm

from benchmarks.measure import median_seconds
from tversky_keras.evaluation import lesion_metrics, precision_recall_curve

SHAPE = (182, 218, 182)


def synthetic_volume(rng, lesion_fraction=0.005):
    """Blob-shaped lesions and the float32 sigmoid output of a fair model."""
    seeds = rng.random(SHAPE) < lesion_fraction / 7
    lesion = ndimage.binary_dilation(seeds)  # a seed and its 6 face neighbours
    # Logits N(-7, 2.5) outside lesions (~0.3% above 0.5), N(1, 2) inside (~70%).
    logits = np.where(lesion, 1.0, -7.0) + rng.normal(size=SHAPE) * np.where(lesion, 2.0, 2.5)
    return lesion, (1 / (1 + np.exp(-logits))).astype(np.float32)


def measure(function, repeats):
    """(best wall time in s, peak MiB allocated during one call)."""
    _, times = median_seconds(function, repeats, warmup=0)
    tracemalloc.start()
    function()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return min(times), peak / 2**20


def report(label, function, repeats):
    seconds, mib = measure(function, repeats)
    print(f"  {label:<52s} {seconds:7.2f} s {mib:9.1f} MiB")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=4, help="volumes in the pooled case")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the best counts")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    volumes = [synthetic_volume(rng) for _ in range(args.volumes)]
    lesion, prob = volumes[0]
    n_voxels = lesion.size
    print(
        f"volume {SHAPE}: {n_voxels} voxels, {lesion.mean():.2%} lesion, "
        f"{np.unique(prob).size} distinct float32 probabilities "
        f"({prob.nbytes / 2**20:.0f} MiB per volume)"
    )
    result = lesion_metrics(lesion, prob)
    names = ("dsc", "sensitivity", "specificity", "f2", "apr", "lesion_tpr", "lesion_fpr")
    print("  values: " + ", ".join(f"{name}={result[name]:.4f}" for name in names))
    flat_true, flat_prob = lesion.ravel(), prob.ravel()
    print("one volume:                                                  best time   peak alloc")
    cases = {
        "tversky_keras lesion_metrics (all metrics)": lambda: lesion_metrics(lesion, prob),
        "tversky_keras precision_recall_curve": lambda: precision_recall_curve(lesion, prob),
        "sklearn average_precision_score": lambda: skm.average_precision_score(
            flat_true, flat_prob
        ),
        "sklearn precision_recall_curve": lambda: skm.precision_recall_curve(flat_true, flat_prob),
        "sklearn confusion_matrix (threshold 0.5)": lambda: skm.confusion_matrix(
            flat_true, flat_prob >= 0.5
        ),
    }
    for label, function in cases.items():
        report(label, function, args.repeats)
    print(f"{args.volumes} volumes pooled ({args.volumes * n_voxels} voxels):")
    lesions = [v[0] for v in volumes]
    probs = [v[1] for v in volumes]
    report(
        "tversky_keras lesion_metrics (list of volumes)",
        lambda: lesion_metrics(lesions, probs),
        args.repeats,
    )
    pooled_true = np.concatenate([t.ravel() for t in lesions])
    pooled_prob = np.concatenate([p.ravel() for p in probs])
    report(
        "sklearn average_precision_score (concatenated)",
        lambda: skm.average_precision_score(pooled_true, pooled_prob),
        1,
    )


if __name__ == "__main__":
    main()
