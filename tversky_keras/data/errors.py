"""The one error type for bad input data, and the one warning type for doubtful data."""

import contextlib
import sys
import warnings


class DataError(ValueError):
    """Input data that cannot be used; the message names the file and the problem.

    Args:
        path: the offending file or folder (may be ``None`` for in-memory data).
        problem: what is wrong with it, in words a user can act on.
    """

    def __init__(self, path, problem):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class DataWarning(UserWarning):
    """Input data that can be used but may not mean what it seems; the message names the file.

    Filter it like any warning, e.g. ``warnings.simplefilter("error", DataWarning)`` to
    refuse such data instead.
    """


@contextlib.contextmanager
def data_warnings_as_lines(program):
    """While inside, a ``DataWarning`` prints as one line, ``<program>: warning: <message>``,
    instead of Python's two (the file and line of the code, then that line); other
    warnings print as before."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DataWarning):
            print(f"{program}: warning: {message}", file=file or sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown
