"""Which CPU kernels TensorFlow runs: oneDNN's on every x86 CPU with AVX2, unless you say.

TensorFlow turns its oneDNN kernels on by default only where the CPU has AVX-512
VNNI or BF16, AVX-VNNI or AMX (``IsMKLEnabled`` in tensorflow/core/util/util.cc);
everywhere else (AMD before Zen 4, Intel's client cores, many cloud VMs) it runs
its Eigen kernels. For this package's 3D convolutions that costs about 5x: on a
2-core AMD EPYC with AVX2 and no AVX-512, the quick profile's training step took
1.02 s with Eigen and 0.17-0.21 s with oneDNN's AVX2 kernels
(``python -m benchmarks.cpu_kinds``; its figures are in
``benchmarks/cpu-kinds.json``, with the machine).

So, before it imports TensorFlow, ``import tversky_keras`` sets
``TF_ENABLE_ONEDNN_OPTS=1`` on an x86 CPU with AVX2 where TensorFlow would not
turn oneDNN on by itself. Nothing else changes:

- ``TF_ENABLE_ONEDNN_OPTS`` set by you (``0`` or ``1``) always wins;
- where TensorFlow was imported before ``tversky_keras``, the setting can no longer
  change and the record says so;
- a CPU whose features cannot be read (no ``/proc/cpuinfo``), or one without AVX2,
  keeps TensorFlow's default: no measurement backs another choice there.

The choice is made once per process; ``choice()`` returns it as recorded in
``experiment.json`` and result files, and ``choice_line()`` is the line the
commands print. Child processes inherit the variable, so helpers and workers run
the same kernels as the process that started them.

oneDNN and Eigen sum in different orders: one training step's loss agrees to
float32 rounding (about 1e-6 relative), and a trained cell's metrics to the
tolerance in ``docs/performance.md``, not bit for bit.
"""

import os
import platform
import sys
from pathlib import Path

VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
# Set beside VARIABLE when this package chose it, so that a child process (a table1
# helper, a worker) records the choice as the package's, not as the user's.
MARKER = "TVERSKY_KERAS_ONEDNN_CHOICE"

# The CPU features with which TensorFlow turns oneDNN on by itself (IsMKLEnabled),
# as /proc/cpuinfo names them.
TENSORFLOW_ONEDNN_FEATURES = ("avx512_vnni", "avx512_bf16", "avx_vnni",
                              "amx_tile", "amx_int8", "amx_bf16")

_CHOICE = None


def cpu_flags(cpuinfo="/proc/cpuinfo"):
    """The CPU's feature flags (``/proc/cpuinfo``'s first ``flags`` line) as a set, or
    ``None`` where they cannot be read (not Linux, or no such line)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return None


def decide(environ, flags, machine, tensorflow_imported):
    """The oneDNN choice for a process, without changing anything.

    Args:
        environ: the environment (a mapping) as the process has it.
        flags: ``cpu_flags()``'s set, or ``None`` where unknown.
        machine: ``platform.machine()`` (``x86_64``, ``AMD64``, ``arm64``, ...).
        tensorflow_imported: whether TensorFlow was imported already.

    Returns:
        A dict: ``onednn`` (True, False, or None where TensorFlow's own default is
        unknown), ``set_by`` (``user``, ``tversky_keras``, ``tensorflow``,
        ``tensorflow imported first``), ``set_variable`` (the value this package
        sets, or None) and ``reason``, one sentence.
    """
    user = environ.get(VARIABLE)
    x86 = machine.lower() in ("x86_64", "amd64", "i686", "x86")
    tensorflow_default = (None if flags is None or not x86
                          else any(f in flags for f in TENSORFLOW_ONEDNN_FEATURES))
    if user is not None and environ.get(MARKER) == user:
        return {"onednn": user == "1", "set_by": "tversky_keras", "set_variable": None,
                "reason": f"{VARIABLE}={user}, inherited from the tversky_keras process that "
                          f"started this one"}
    if user is not None:
        value = user.strip().lower()
        onednn = True if value in ("1", "true", "t", "yes") else (
            False if value in ("0", "false", "f", "no") else None)
        return {"onednn": onednn, "set_by": "user", "set_variable": None,
                "reason": f"{VARIABLE}={user} is set in the environment"}
    if tensorflow_imported:
        return {"onednn": tensorflow_default, "set_by": "tensorflow imported first",
                "set_variable": None,
                "reason": "TensorFlow was imported before tversky_keras, so its own default "
                          "stands"}
    if tensorflow_default is None:
        why = "this CPU's features cannot be read" if flags is None else f"a {machine} CPU"
        return {"onednn": None, "set_by": "tensorflow", "set_variable": None,
                "reason": f"TensorFlow's own default: {why}"}
    if tensorflow_default:
        return {"onednn": True, "set_by": "tensorflow", "set_variable": None,
                "reason": "TensorFlow's own default on a CPU with AVX-512 VNNI/BF16, AVX-VNNI "
                          "or AMX"}
    if "avx2" not in flags:
        return {"onednn": False, "set_by": "tensorflow", "set_variable": None,
                "reason": "TensorFlow's own default: a CPU without AVX2, where nothing was "
                          "measured"}
    return {"onednn": True, "set_by": "tversky_keras", "set_variable": "1",
            "reason": "AVX2 without AVX-512 VNNI/BF16 or AMX, where TensorFlow's default "
                      "Eigen kernels train several times slower (benchmarks/cpu-kinds.json)"}


def apply(environ=None):
    """Make the choice for this process (once) and set ``TF_ENABLE_ONEDNN_OPTS`` where
    this package chooses; returns ``choice()``. Called by ``import tversky_keras``
    before it imports TensorFlow."""
    global _CHOICE
    if _CHOICE is None:
        environ = os.environ if environ is None else environ
        flags = cpu_flags()
        _CHOICE = decide(environ, flags, platform.machine(), "tensorflow" in sys.modules)
        _CHOICE["avx2"] = None if flags is None else "avx2" in flags
        _CHOICE["avx512"] = None if flags is None else "avx512f" in flags
        if _CHOICE["set_variable"] is not None:
            environ[VARIABLE] = environ[MARKER] = _CHOICE["set_variable"]
    return choice()


def choice():
    """This process' choice, as recorded in ``experiment.json`` and result files:
    ``decide()``'s dict plus ``avx2``, ``avx512`` (None where unknown) and the Keras
    backend."""
    if _CHOICE is None:
        return apply()
    return {**_CHOICE, "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow")}


def choice_line():
    """One line for a command to print: which kernels, who chose them, and how to
    change it."""
    made = choice()
    kernels = {True: "oneDNN", False: "Eigen", None: "TensorFlow's default"}[made["onednn"]]
    line = f"CPU kernels: {kernels} ({made['set_by']}: {made['reason']})"
    if made["set_by"] == "tversky_keras":
        line += f"; set {VARIABLE}=0 to use Eigen"
    return line
