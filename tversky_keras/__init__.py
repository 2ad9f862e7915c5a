"""Tversky loss for imbalanced 3D lesion segmentation in Keras 3.

Importing the package registers its losses, metrics and layers with Keras, so
``keras.saving.load_model(path)`` restores models saved with them.
"""

__version__ = "0.1.0"

from tversky_keras import losses, metrics, models, scan_spec  # noqa: E402,F401  (registration)
