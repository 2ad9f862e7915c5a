"""``python -m tversky_keras`` is the ``tversky-keras`` command."""

import sys

from tversky_keras.cli import main

sys.exit(main())
