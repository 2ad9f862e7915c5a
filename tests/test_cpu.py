"""tversky_keras.cpu: which CPU kernels TensorFlow runs, and who chose them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tversky_keras import cpu

ROOT = Path(__file__).resolve().parents[1]

AVX2 = {"sse4_2", "avx", "avx2", "fma"}
AVX512_SKYLAKE = AVX2 | {"avx512f", "avx512bw"}          # AVX-512 without VNNI
AVX512_VNNI = AVX512_SKYLAKE | {"avx512_vnni"}
ALDER_LAKE = AVX2 | {"avx_vnni"}

# environ, flags, machine, TensorFlow imported first -> onednn, set_by, set_variable
CASES = [
    ({}, AVX2, "x86_64", False, True, "tversky_keras", "1"),
    ({}, AVX512_SKYLAKE, "x86_64", False, True, "tversky_keras", "1"),
    ({}, AVX512_VNNI, "x86_64", False, True, "tensorflow", None),
    ({}, ALDER_LAKE, "AMD64", False, True, "tensorflow", None),
    ({}, {"sse4_2", "avx"}, "x86_64", False, False, "tensorflow", None),
    ({}, None, "x86_64", False, None, "tensorflow", None),
    ({}, {"neon", "asimd"}, "aarch64", False, None, "tensorflow", None),
    ({"TF_ENABLE_ONEDNN_OPTS": "0"}, AVX2, "x86_64", False, False, "user", None),
    ({"TF_ENABLE_ONEDNN_OPTS": "false"}, AVX2, "x86_64", False, False, "user", None),
    ({"TF_ENABLE_ONEDNN_OPTS": "1"}, AVX512_VNNI, "x86_64", False, True, "user", None),
    ({"TF_ENABLE_ONEDNN_OPTS": "0"}, AVX512_VNNI, "x86_64", False, False, "user", None),
    ({"TF_ENABLE_ONEDNN_OPTS": "maybe"}, AVX2, "x86_64", False, None, "user", None),
    ({}, AVX2, "x86_64", True, False, "tensorflow imported first", None),
    ({}, AVX512_VNNI, "x86_64", True, True, "tensorflow imported first", None),
    # a child of a process that chose: still the package's choice, not the user's
    ({"TF_ENABLE_ONEDNN_OPTS": "1", cpu.MARKER: "1"}, AVX2, "x86_64", False,
     True, "tversky_keras", None),
    # the user changed the variable after the package chose: the user's
    ({"TF_ENABLE_ONEDNN_OPTS": "0", cpu.MARKER: "1"}, AVX2, "x86_64", False,
     False, "user", None),
]


@pytest.mark.parametrize("environ,flags,machine,imported,onednn,set_by,variable", CASES)
def test_decide(environ, flags, machine, imported, onednn, set_by, variable):
    made = cpu.decide(environ, flags, machine, imported)
    assert (made["onednn"], made["set_by"], made["set_variable"]) == (onednn, set_by, variable)
    assert made["reason"]


def test_cpu_flags_reads_the_first_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx avx2 fma\n\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    assert cpu.cpu_flags(info) == {"fpu", "avx", "avx2", "fma"}
    info.write_text("processor\t: 0\n")
    assert cpu.cpu_flags(info) is None
    assert cpu.cpu_flags(tmp_path / "missing") is None


def _child(code, **environment):
    """Run ``code`` in a fresh process with TF_ENABLE_ONEDNN_OPTS and the marker unset,
    then ``environment``; returns its last stdout line as JSON."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_ENABLE_ONEDNN_OPTS", cpu.MARKER)}
    env.update(environment)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


PROBE = """
import json, os
{before}
import tversky_keras
from tensorflow.python.util import _pywrap_util_port
print(json.dumps({{"variable": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
                  "tensorflow_onednn": bool(_pywrap_util_port.IsMklEnabled()),
                  "choice": tversky_keras.cpu.choice()}}))
"""


def test_the_import_sets_what_tensorflow_then_runs():
    """On this machine, in a fresh process: what the package chose is what TensorFlow
    reports it runs (IsMklEnabled), and the expected choice follows from
    /proc/cpuinfo's flags read here."""
    flags = cpu.cpu_flags()
    seen = _child(PROBE.format(before=""))
    expected = cpu.decide({}, flags, __import__("platform").machine(), False)
    assert seen["choice"]["set_by"] == expected["set_by"]
    if expected["set_variable"]:
        assert seen["variable"] == expected["set_variable"]
        assert seen["tensorflow_onednn"] is True
    assert seen["choice"]["onednn"] in (seen["tensorflow_onednn"], None)


@pytest.mark.parametrize("value", ["0", "1"])
def test_a_users_setting_wins(value):
    seen = _child(PROBE.format(before=""), TF_ENABLE_ONEDNN_OPTS=value)
    assert seen["variable"] == value
    assert seen["tensorflow_onednn"] is (value == "1")
    assert seen["choice"]["set_by"] == "user" and seen["choice"]["onednn"] is (value == "1")


def test_tensorflow_imported_first_is_recorded_and_left_alone():
    seen = _child(PROBE.format(before="import tensorflow"))
    assert seen["variable"] is None
    assert seen["choice"]["set_by"] == "tensorflow imported first"
    assert seen["choice"]["onednn"] in (seen["tensorflow_onednn"], None)


def test_choice_line_says_how_to_undo_the_packages_choice():
    line = cpu.choice_line()
    assert line.startswith("CPU kernels: ")
    if cpu.choice()["set_by"] == "tversky_keras":
        assert "TF_ENABLE_ONEDNN_OPTS=0" in line


def test_onednn_and_eigen_compute_the_same_training_step():
    """One U-Net training step's loss and gradients, from the same weights and batch,
    in a process with oneDNN and one with Eigen: equal to float32 summation order
    (the tolerance docs/performance.md states)."""
    code = "from benchmarks.cpu_kinds import probe; import json; print(json.dumps(probe()))"
    onednn = _child(code, TF_ENABLE_ONEDNN_OPTS="1")
    eigen = _child(code, TF_ENABLE_ONEDNN_OPTS="0")
    assert (onednn["onednn"], eigen["onednn"]) == (True, False)
    assert onednn["loss"] == pytest.approx(eigen["loss"], rel=1e-5)
    assert onednn["probability_sum"] == pytest.approx(eigen["probability_sum"], rel=1e-5)
    np.testing.assert_allclose(onednn["gradient_norms"], eigen["gradient_norms"], rtol=1e-3)
    for a, b in zip(onednn["gradients"], eigen["gradients"], strict=True):
        scale = max(np.abs(b).max(), 1e-12)
        assert np.abs(np.subtract(a, b)).max() <= 1e-3 * scale
