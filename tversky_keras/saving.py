"""Load saved ``.keras`` models, with errors that name the file.

Every reader of a saved model (``tversky-keras predict``, ``train --init``, the
scripts under ``reproduce/``) loads it here: importing the package first
registers its losses, metrics and layers, so models saved by any version of
``tversky_keras`` restore, and a missing, damaged or foreign file is one
``ValueError`` saying which file and what is wrong.
"""

from pathlib import Path

import keras


def load_saved_model(path, compile=True):
    """A saved ``.keras`` model, or a ValueError naming the file and what is wrong with it."""
    import tversky_keras  # noqa: F401  (registers the package's objects)

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such model file")
    try:
        return keras.saving.load_model(path, compile=compile)
    except Exception as error:  # Keras raises many types for a damaged or foreign file
        raise ValueError(f"{path}: not a readable Keras model ({type(error).__name__}: "
                         f"{error})") from error
