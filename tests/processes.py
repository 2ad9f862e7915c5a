"""Helpers for tests that start processes."""

import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wait_for_child(pid, timeout_s):
    """The pid of ``pid``'s first child process, polled from /proc until it exists."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines()
                              if ":\t" in line)
            except OSError:
                continue
            if fields.get("PPid", "").strip() == str(pid):
                return int(status.parent.name)
        time.sleep(0.05)  # polling a condition, not waiting for one to be likely
    raise AssertionError(f"process {pid} started no child within {timeout_s} s")


def assert_sigterm_stops_the_child(module_args):
    """``python -m MODULE ARGS`` started in the repository: once it has started a child
    process, SIGTERM to it alone ends it with 128 + SIGTERM, its child stopped and reaped."""
    parent = subprocess.Popen([sys.executable, "-m", *module_args], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        child = wait_for_child(parent.pid, timeout_s=120)
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=60) == 128 + signal.SIGTERM
        assert not Path(f"/proc/{child}").exists()
    finally:
        parent.kill()
