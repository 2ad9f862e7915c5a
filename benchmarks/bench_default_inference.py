"""Whole-brain inference time of the default U-Net (16 base filters, depth 4) on this machine.

    python -m benchmarks.bench_default_inference

A 182x218x182 three-channel scan (a 1-mm MNI brain), whole volume in one call
(padded to 192x224x192) and as 96^3 sliding windows with 50% overlap; the
median of three runs after a warm-up.
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from reproduce.report import markdown_table  # noqa: E402
from tversky_keras.inference import predict_volume  # noqa: E402
from tversky_keras.training import TrainConfig, build_model  # noqa: E402


def median_seconds(call, repeats=3):
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    model = build_model(TrainConfig())
    image = np.random.default_rng(0).standard_normal((182, 218, 182, 3)).astype(np.float32)
    whole = median_seconds(lambda: predict_volume(model, image))
    windows = median_seconds(lambda: predict_volume(model, image, window=(96, 96, 96),
                                                    overlap=0.5, batch_size=2))
    print(markdown_table(["default U-Net (16 filters, depth 4), 182x218x182x3", "s/scan"],
                         [["whole volume, one call", f"{whole:.1f}"],
                          ["96^3 windows, overlap 0.5, Gaussian, batch 2", f"{windows:.1f}"]]))


if __name__ == "__main__":
    main()
