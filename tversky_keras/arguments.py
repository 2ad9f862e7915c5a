"""Argparse option types shared by the command lines: checked numbers, mirror axes and
output folders.

``tversky-keras`` (``tversky_keras.cli``) and the scripts under ``reproduce/``
parse their numeric and test-time mirroring options with these, so that every
command refuses the same bad values with the same messages.
"""

import argparse
import math
import re
from pathlib import Path

MIRROR_AXES = {"x": 0, "y": 1, "z": 2}


def mirror_option(text):
    """'x' -> (0,); 'x,y,z' or 'xyz' -> (0, 1, 2): test-time mirroring axes (RAS order)."""
    letters = [c for c in text.lower() if c not in ", "]
    if not letters or any(c not in MIRROR_AXES for c in letters) or len(set(letters)) != len(letters):
        raise argparse.ArgumentTypeError(f"{text!r}: give distinct axes among x, y, z "
                                         f"(e.g. x, or x,y,z)")
    return tuple(sorted(MIRROR_AXES[c] for c in letters))


def finite(text):
    """A float option that must be a finite number ('nan' and 'inf' are refused here)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def non_negative(text):
    """A finite float option of at least 0."""
    value = finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: a number of at least 0")
    return value


def natural(text):
    """A non-negative integer option."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def seed(text):
    """A seed option: an integer from 0 to 2**32 - 1 (NumPy's and Keras' range)."""
    value = natural(text)
    if value > 2**32 - 1:
        raise argparse.ArgumentTypeError(f"{text} is above 2**32 - 1, the largest seed")
    return value


def output_folder(text):
    """A folder to write into: absent (it is made) or a folder, never an existing file."""
    path = Path(text)
    try:
        exists = path.exists()
    except OSError as error:  # a name too long, say
        raise argparse.ArgumentTypeError(f"{text[:80]}{'...' if len(text) > 80 else ''}: "
                                         f"cannot be a folder ({error.strerror})") from None
    if exists and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: a file has that name; give a folder "
                                         f"(it is made if absent)")
    return path


def mirror_or_none(text):
    """``--mirror``: RAS axes as ``tversky-keras predict --mirror``, or ``none`` (no axes)."""
    return () if text.strip().lower() == "none" else mirror_option(text)


# argparse reads "-1e3" as an option, not a number (its own pattern has no exponent
# before Python 3.13), so "--k -1e3" failed with "expected one argument".
_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-inf$|^-nan$", re.I)


def negative_numbers_as_values(parser):
    """Let ``parser`` and its subcommands take negative numbers in any float notation
    (``-1e3``, ``-.5``, ``-inf``) as option values; returns ``parser``."""
    parsers, seen = [parser], set()
    while parsers:
        current = parsers.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        current._negative_number_matcher = _NEGATIVE_NUMBER
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
    return parser
