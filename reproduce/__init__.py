"""The paper's experiment (Table 1, figures) and its sim-to-real and realism checks.

The package is imported first so that TensorFlow loads through it, without its
C++ start-up lines on the terminal (``tversky_keras._import_tensorflow_quietly``).
"""

import tversky_keras  # noqa: F401
