"""Ending a long command on Ctrl-C or SIGTERM with one line, not a traceback.

Every command's work is written whole or not at all (``tversky_keras.atomic``,
the run folders' checkpoints, the claims), so stopping it anywhere loses at
most the step in progress; a rerun of the same command resumes. What a person
sees should say that, in one line, with the shell's exit status for the
signal: 130 for Ctrl-C (SIGINT), 143 for SIGTERM.
"""

import contextlib
import os
import signal
import sys
import threading

INTERRUPTED = 128 + signal.SIGINT
TERMINATED = 128 + signal.SIGTERM


def stopped_line(program, how, resumes=True):
    """``<program>: <how>; finished work is kept: run the same command again to resume``;
    for a command that cannot resume (``resumes=False``: it writes its outputs whole at
    the end), that nothing was written and a rerun starts over."""
    if not resumes:
        return (f"{program}: {how}; nothing was written (outputs are written whole at the "
                f"end): run the same command again to start over")
    return f"{program}: {how}; finished work is kept: run the same command again to resume"


def exit_at_once(number, line=None):
    """Print ``line`` (if any) to stderr, flush both streams and leave with 128 + ``number``
    at once (``os._exit``: no unwinding through whatever code the signal interrupted)."""
    if line:
        print(line, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, RuntimeError):
            pass
    os._exit(128 + number)


@contextlib.contextmanager
def one_line_on_sigterm(program, quiet=False, resumes=True):
    """While inside, SIGTERM prints :func:`stopped_line` (unless ``quiet``) and exits with
    143 at once; the handler before is put back on leaving.

    The exit is ``os._exit`` after flushing, not a raised ``SystemExit``: raised
    wherever the signal lands, it can land inside TensorFlow's C++ (building a
    tf.data pipeline, say), which turns it into a bare ``TypeError``. Outside the
    main thread (where Python cannot install handlers) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(number, frame):
        exit_at_once(number, None if quiet else stopped_line(program, "terminated (SIGTERM)",
                                                             resumes))

    before = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
