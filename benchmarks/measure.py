"""Timing, result rows and the description of the machine a run was measured on."""

import dataclasses
import datetime
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

from benchmarks.flops import FP32_FLOPS_PER_CYCLE, cpu_clock_mhz, fp32_peak_flops
from reproduce.report import cpu_model, gemm_gflops


@dataclasses.dataclass
class Row:
    """One line of the results table.

    ``ours`` and ``peer`` are in ``unit``; ``speedup`` is how many times faster
    ours is (``peer / ours`` for times, ``ours / peer`` for rates), measured in
    the same run.
    """

    section: str
    measure: str
    ours: float | None
    unit: str
    peer: float | None = None
    peer_name: str = ""
    note: str = ""

    @property
    def speedup(self):
        if self.ours is None or self.peer is None or not self.ours or not self.peer:
            return None
        return self.peer / self.ours if self.unit.startswith("s") else self.ours / self.peer

    def to_json(self):
        return {**dataclasses.asdict(self), "speedup": self.speedup}


def median_seconds(step, repeats, warmup=1, budget_s=None, min_repeats=2):
    """Median wall time of ``step()`` after ``warmup`` untimed calls.

    Times ``repeats`` calls, or fewer (but at least ``min_repeats``) once the
    timed calls have used ``budget_s`` seconds, so that slow steps get fewer
    repetitions.

    Returns:
        ``(median, times)``: the median in seconds and every timed call.
    """
    for _ in range(warmup):
        step()
    times = []
    while len(times) < repeats:
        if budget_s is not None and len(times) >= min_repeats and sum(times) > budget_s:
            break
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def machine():
    """CPU, cores, clock, fp32 peaks, the short GEMM reading every result file records
    (``reproduce.report.gemm_gflops``) and how busy the machine was."""
    cores = os.cpu_count()
    mhz, source = cpu_clock_mhz()
    return {
        "cpu": cpu_model(),
        "cores": cores,
        "clock_mhz": mhz,
        "clock_source": source,
        "fp32_peak_gflops": fp32_peak_flops(cores, mhz) / 1e9,
        "fp32_peak_flops_per_cycle": FP32_FLOPS_PER_CYCLE,
        "fp32_peak_gflops_avx512": fp32_peak_flops(cores, mhz, 2 * FP32_FLOPS_PER_CYCLE) / 1e9,
        "avx512": "avx512f" in Path("/proc/cpuinfo").read_text(),
        "gemm_gflops": gemm_gflops(),
        "load_average": os.getloadavg(),
    }


def busiest_processes(count=5):
    """The top CPU users (``ps``), to say whether the machine was otherwise busy."""
    try:
        out = subprocess.run(["ps", "-eo", "pcpu,pid,comm", "--sort=-pcpu"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines()[1:count + 1]]


def versions():
    """Keras' backend and the versions of the frameworks (``None`` for one not installed)."""
    import keras

    found = {"python": platform.python_version(), "keras": keras.__version__,
             "keras_backend": keras.backend.backend(), "numpy": np.__version__}
    for name in ("tensorflow", "jax", "torch", "monai"):
        try:
            found[name] = __import__(name).__version__
        except ImportError:
            found[name] = None
    return found


def today():
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")
