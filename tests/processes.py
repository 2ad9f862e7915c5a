"""Helpers for tests that start processes."""

import time
from pathlib import Path


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
