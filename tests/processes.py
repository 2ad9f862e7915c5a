"""Helpers for tests that start processes."""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wait_for_child(pid, timeout_s, marker=""):
    """The pid of ``pid``'s first child process whose command line contains ``marker``,
    polled from /proc until it exists. A marker keeps short-lived children of
    imports (``uname`` and the like, started before the parent's signal
    handling is in place) from being taken for the one the test means."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines()
                              if ":\t" in line)
                command = (status.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if fields.get("PPid", "").strip() == str(pid) and marker in command:
                return int(status.parent.name)
        time.sleep(0.05)  # polling a condition, not waiting for one to be likely
    raise AssertionError(f"process {pid} started no child {marker!r} within {timeout_s} s")


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def assert_signal_stops_the_child(module_args, marker, number=signal.SIGTERM,
                                  whole_group=False, says="run the same command again",
                                  ready=None):
    """``python -m MODULE ARGS`` started in the repository: once it has started its child
    process (command line containing ``marker``), the signal ``number`` (to it alone, or
    to its whole process group as Ctrl-C at a terminal sends it) ends it with 128 +
    ``number``, its child stopped and reaped, with no traceback and, unless ``says`` is
    None, exactly one line holding ``says``.

    Returns:
        What the command printed (stdout and stderr)."""
    with tempfile.TemporaryFile() as log:
        # As at a terminal: a suite started in the background (`cmd &` in a script) runs
        # with SIGINT ignored, and a child would inherit that and never see the Ctrl-C.
        parent = subprocess.Popen([sys.executable, "-m", *module_args], cwd=ROOT,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                  preexec_fn=_default_sigint)
        try:
            child = wait_for_child(parent.pid, timeout_s=120, marker=marker)
            deadline = time.monotonic() + 300
            while ready is not None and not ready() and parent.poll() is None:
                assert time.monotonic() < deadline, "the command never reached the state"
                time.sleep(0.05)  # polling a condition, not waiting for one to be likely
            if whole_group:
                os.killpg(parent.pid, number)
            else:
                parent.send_signal(number)
            try:
                code = parent.wait(timeout=120)
            except subprocess.TimeoutExpired:
                code = None
            log.seek(0)
            printed = log.read().decode()
            assert code == 128 + number, (code, printed[-3000:])
            assert not Path(f"/proc/{child}").exists()
        finally:
            parent.kill()
    assert "Traceback" not in printed, printed[-3000:]
    if says is not None:
        stopped = [line for line in printed.splitlines() if says in line]
        assert len(stopped) == 1, printed[-3000:]
    return printed


def assert_sigterm_stops_the_child(module_args, marker, says="run the same command again"):
    """``assert_signal_stops_the_child`` with SIGTERM to the parent alone."""
    return assert_signal_stops_the_child(module_args, marker, says=says)
