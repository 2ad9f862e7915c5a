"""Which Keras backend this process will load, checked before Keras loads it.

Keras reads ``KERAS_BACKEND`` (else the ``backend`` of ``~/.keras/keras.json``,
else TensorFlow) when it is first imported, and a backend that is not installed
ends in a 30-line traceback that never names the variable. ``problem()`` says it
in one line: the variable (or file), its value, and the backends installed.
"""

import importlib.util
import json
import os
from pathlib import Path

# Keras 3's backends and the module each needs.
BACKENDS = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch", "numpy": "numpy",
            "openvino": "openvino"}


def requested():
    """``(backend, where it was asked for)``: ``KERAS_BACKEND``, else the Keras config
    file's ``backend``, else TensorFlow (Keras' default)."""
    value = os.environ.get("KERAS_BACKEND")
    if value:
        return value, "KERAS_BACKEND"
    home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")
    config = home / "keras.json"
    try:
        value = json.loads(config.read_text()).get("backend")
    except (OSError, ValueError, AttributeError):
        value = None
    if value:
        return str(value), str(config)
    return "tensorflow", "Keras' default"


def installed():
    """The Keras backends whose module can be imported here."""
    return [name for name, module in BACKENDS.items()
            if importlib.util.find_spec(module) is not None]


def problem():
    """One line on why the requested backend cannot load, or ``None`` when it can."""
    backend, where = requested()
    available = ", ".join(installed()) or "none"
    if backend not in BACKENDS:
        return (f"{where} asks for the Keras backend {backend!r}, which Keras does not have "
                f"(it has {', '.join(BACKENDS)}; installed here: {available})")
    if importlib.util.find_spec(BACKENDS[backend]) is None:
        return (f"{where} asks for the Keras backend {backend!r}, but {BACKENDS[backend]} is "
                f"not installed (installed here: {available}): install it, or ask for an "
                f"installed one (tversky-keras runs on tensorflow)")
    return None
