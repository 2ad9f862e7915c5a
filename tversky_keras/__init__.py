"""Tversky loss for imbalanced 3D lesion segmentation in Keras 3.

Importing the package registers its losses, metrics and layers with Keras, so
``keras.saving.load_model(path)`` restores models saved with them.
"""

import os
import sys

__version__ = "0.2.0"


def _import_tensorflow_quietly():
    """Import TensorFlow without its C++ start-up lines on the terminal.

    TensorFlow's native libraries print an absl banner, oneDNN and CUDA-probe
    notes, and on a machine without a GPU a ``failed call to cuInit`` error,
    before ``TF_CPP_MIN_LOG_LEVEL`` can silence them. Unless the user asked
    for TensorFlow's log (``TF_CPP_MIN_LOG_LEVEL`` 0 or 1), the import and the
    device probe run with the process' standard error pointed at
    ``/dev/null``; Python errors still propagate, and after the import
    TensorFlow's warnings and errors print as usual.
    """
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend != "tensorflow" or "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ["TF_CPP_MIN_LOG_LEVEL"] in ("0", "1"):
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                import tensorflow as tf
            except ImportError:
                return  # no TensorFlow: Keras says so when it loads
            tf.config.list_physical_devices("GPU")  # the CUDA probe, once
    finally:
        os.dup2(saved, 2)
        os.close(saved)


from tversky_keras import backend as _backend  # noqa: E402  (stdlib only)
from tversky_keras import cpu  # noqa: E402  (stdlib only)


class BackendError(ImportError):
    """The Keras backend asked for cannot load (``tversky_keras.backend.problem``)."""


def _check_backend():
    """Refuse, in one line, a Keras backend that cannot load, before Keras tries it; the
    ``tversky-keras`` command prints that line alone and exits with status 1."""
    line = _backend.problem()
    if line is None:
        return
    argv = list(getattr(sys, "orig_argv", sys.argv))
    module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else None
    command = os.path.basename(sys.argv[0] if sys.argv else "")
    if command == "tversky-keras" or module in ("tversky_keras", "tversky_keras.cli"):
        print(f"tversky-keras: error: {line}", file=sys.stderr)
        sys.exit(1)
    raise BackendError(line)


_check_backend()

cpu.apply()  # TF_ENABLE_ONEDNN_OPTS, before TensorFlow reads it
_import_tensorflow_quietly()

from tversky_keras import losses, metrics, models, scan_spec  # noqa: E402  (registration)
from tversky_keras.losses import (  # noqa: E402
    DiceLoss,
    TverskyCrossEntropyLoss,
    TverskyLoss,
    tversky_index,
    tversky_loss,
)
from tversky_keras.metrics import (  # noqa: E402
    PRAUC,
    DiceScore,
    FBetaScore,
    Sensitivity,
    Specificity,
)
from tversky_keras.models import unet3d  # noqa: E402

# The public API: these names, and the submodules data, evaluation, inference,
# training and cli, imported where used (they pull in more of TensorFlow).
__all__ = [
    "__version__",
    "cpu", "losses", "metrics", "models", "scan_spec",
    "TverskyLoss", "DiceLoss", "TverskyCrossEntropyLoss", "tversky_index", "tversky_loss",
    "DiceScore", "Sensitivity", "Specificity", "FBetaScore", "PRAUC",
    "unet3d",
]
