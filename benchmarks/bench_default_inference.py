"""Whole-brain inference time of the default U-Net (16 base filters, depth 4) on this machine.

    python -m benchmarks.bench_default_inference

A 182x218x182 three-channel scan (a 1-mm MNI brain), whole volume in one call
(padded to 192x224x192) and as 96^3 sliding windows with 50% overlap; the
median of three runs after a warm-up.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks.measure import median_seconds  # noqa: E402
from benchmarks.workload import random_image  # noqa: E402
from reproduce.report import markdown_table  # noqa: E402
from tversky_keras.inference import predict_volume  # noqa: E402
from tversky_keras.training import TrainConfig, build_model  # noqa: E402


def main():
    model = build_model(TrainConfig())
    image = random_image((182, 218, 182))
    whole, _ = median_seconds(lambda: predict_volume(model, image), repeats=3)
    windows, _ = median_seconds(lambda: predict_volume(model, image, window=(96, 96, 96),
                                                       overlap=0.5, batch_size=2), repeats=3)
    print(markdown_table(["default U-Net (16 filters, depth 4), 182x218x182x3", "s/scan"],
                         [["whole volume, one call", f"{whole:.1f}"],
                          ["96^3 windows, overlap 0.5, Gaussian, batch 2", f"{windows:.1f}"]]))


if __name__ == "__main__":
    main()
