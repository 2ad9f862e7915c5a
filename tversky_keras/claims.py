"""Claims on a folder that processes on several machines can compete for.

A claim is a lease on a folder, made only of operations that are atomic on a
local file system and on NFS (version 3 or later): creating a file with
``O_CREAT | O_EXCL``, changing its modification time, deleting it. No
``fcntl``/``flock`` locks, which NFS does not honour across machines.

The folder holds ``claim.<generation>.json`` files; the highest generation is
the claim. Its file records the owner (host, pid, a random token, start time)
and its modification time is the owner's heartbeat, refreshed by a daemon
thread every ``heartbeat`` seconds. A claim whose heartbeat is older than
``stale_after`` seconds is stale (its owner crashed or hangs): taking it over
means creating the next generation's file, which only one process can do.
Releasing a claim deletes its file. ::

    claim = try_claim(folder)
    if claim is None:
        print(f"{folder} is held by {current_holder(folder).describe()}")
    else:
        with claim:
            ...                     # work in the folder
            claim.ensure_held()     # before writing what marks the work finished

``heartbeat`` and ``stale_after`` default to 30 s and 10 min, or to the
environment variables ``TVERSKY_KERAS_CLAIM_HEARTBEAT`` and
``TVERSKY_KERAS_CLAIM_STALE_AFTER`` (seconds). Machines that share a folder
must have clocks that agree to well within ``stale_after`` (NTP does), since
a heartbeat's age is the reader's clock minus the file's modification time.
"""

import dataclasses
import json
import os
import re
import socket
import threading
import time
import uuid
from pathlib import Path

HEARTBEAT_ENV = "TVERSKY_KERAS_CLAIM_HEARTBEAT"
STALE_AFTER_ENV = "TVERSKY_KERAS_CLAIM_STALE_AFTER"
DEFAULT_HEARTBEAT = 30.0
DEFAULT_STALE_AFTER = 600.0
_CLAIM_NAME = re.compile(r"claim\.(\d+)\.json")


class ClaimLost(RuntimeError):
    """The claim was taken over by another process (this one's heartbeat went stale)."""


@dataclasses.dataclass(frozen=True)
class Holder:
    """The owner of a folder's claim as its claim file tells it.

    Attributes:
        generation: the claim file's generation.
        owner: the recorded owner (``host``, ``pid``, ``token``, ``started``);
            empty while the owner is still writing the file.
        heartbeat_age: seconds since the last heartbeat.
        stale: whether the heartbeat is older than ``stale_after``.
    """

    generation: int
    owner: dict
    heartbeat_age: float
    stale: bool

    def describe(self):
        """E.g. ``pid 123 on host node7 since 2025-01-02 10:00:00, last heartbeat 4 s ago``."""
        if "pid" not in self.owner:
            who = "a process still writing its claim"
        else:
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.owner["started"]))
            who = f"pid {self.owner['pid']} on host {self.owner['host']} since {started}"
        state = ", stale" if self.stale else ""
        return f"{who}, last heartbeat {self.heartbeat_age:.0f} s ago{state}"


def timings(heartbeat=None, stale_after=None):
    """The heartbeat interval and the staleness limit in seconds.

    Args:
        heartbeat: seconds between heartbeats (default: ``$TVERSKY_KERAS_CLAIM_HEARTBEAT``
            or 30).
        stale_after: seconds without a heartbeat after which a claim may be taken
            over (default: ``$TVERSKY_KERAS_CLAIM_STALE_AFTER`` or 600).

    Returns:
        ``(heartbeat, stale_after)`` as floats.

    Raises:
        ValueError: a value is not positive, or ``stale_after`` is less than twice
            ``heartbeat`` (one late heartbeat would then lose a live claim).
    """
    heartbeat = _setting(heartbeat, HEARTBEAT_ENV, DEFAULT_HEARTBEAT)
    stale_after = _setting(stale_after, STALE_AFTER_ENV, DEFAULT_STALE_AFTER)
    if heartbeat <= 0 or stale_after < 2 * heartbeat:
        raise ValueError(f"claims need heartbeat > 0 and stale_after >= 2 x heartbeat; got "
                         f"heartbeat={heartbeat:g} s, stale_after={stale_after:g} s")
    return heartbeat, stale_after


def _setting(value, variable, default):
    """``value``, else the environment variable's value, else ``default``, in seconds."""
    return float(value if value is not None else os.environ.get(variable, default))


def _claim_files(folder):
    """``{generation: path}`` of the claim files in ``folder``."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return {}
    matches = (_CLAIM_NAME.fullmatch(name) for name in names)
    return {int(m.group(1)): Path(folder) / m.group(0) for m in matches if m}


def _heartbeat_age(path):
    """Seconds since ``path`` was last touched, or None if it is gone."""
    try:
        return time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return None


def _read_owner(path):
    """The owner recorded in a claim file; empty while it is being written or gone."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _owner_died(owner):
    """True when the claim's owner ran on this host and its process no longer exists.

    Such a claim is stale at once (a ``kill -9`` followed by a rerun on the same
    machine need not wait out ``stale_after``); an owner on another host is
    judged by its heartbeat alone.
    """
    return process_gone(owner.get("host"), owner.get("pid"))


def process_gone(host, pid):
    """True when process ``pid`` ran on this host (named ``host``) and no longer exists.

    A process on another host, or a ``pid`` that is not an integer, is never
    known to be gone: only its age can tell.
    """
    if (host != socket.gethostname() or not isinstance(pid, int) or isinstance(pid, bool)
            or pid <= 0):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _is_stale(path, age, stale_after):
    return age > stale_after or _owner_died(_read_owner(path))


def current_holder(folder, stale_after=None):
    """Who holds the claim on ``folder``: a ``Holder`` (possibly stale), or None if nobody."""
    stale_after = _setting(stale_after, STALE_AFTER_ENV, DEFAULT_STALE_AFTER)
    claims = _claim_files(folder)
    if not claims:
        return None
    generation = max(claims)
    age = _heartbeat_age(claims[generation])
    if age is None:       # released while we looked
        return None
    return Holder(generation, _read_owner(claims[generation]), age,
                  _is_stale(claims[generation], age, stale_after))


def try_claim(folder, heartbeat=None, stale_after=None):
    """Claim ``folder`` (created if missing) unless another process holds a live claim.

    A stale claim is taken over. Of several processes that try at once, at most
    one gets the claim; in a rare race with a release, none does, and the
    caller tries again later.

    Args:
        folder: the folder to claim.
        heartbeat: seconds between heartbeats (see ``timings``).
        stale_after: seconds without a heartbeat that make a claim stale.

    Returns:
        A ``Claim`` whose heartbeat runs, or None when the folder is taken.
    """
    heartbeat, stale_after = timings(heartbeat, stale_after)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    claims = _claim_files(folder)
    generation = 0
    if claims:
        top = max(claims)
        age = _heartbeat_age(claims[top])
        if age is None or not _is_stale(claims[top], age, stale_after):
            return None
        generation = top + 1
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex,
             "started": time.time()}
    path = folder / f"claim.{generation}.json"
    if not _create_exclusively(path, json.dumps(owner)):
        return None
    if not _alone(folder, generation, stale_after):
        path.unlink(missing_ok=True)
        return None
    return Claim(path, generation, owner, heartbeat)


def _create_exclusively(path, text):
    """Create ``path`` holding ``text``; False if it exists already."""
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return True


def _alone(folder, generation, stale_after):
    """After creating ``generation``: no rival claim exists; the stale ones below are deleted.

    A rival is a higher generation, or a live lower one. Both appear only in
    races: a process that read the folder before a release created its file
    after it (the generations restart at 0 after a release), or a stale owner
    came back to life. Each of two rivals that created their files at once
    sees the other's and backs off, so neither holds a claim it shares.
    """
    others = {g: p for g, p in _claim_files(folder).items() if g != generation}
    if any(g > generation for g in others):
        return False
    ages = {p: _heartbeat_age(p) for p in others.values()}
    if any(age is not None and not _is_stale(p, age, stale_after) for p, age in ages.items()):
        return False
    for path in others.values():       # tells a revived stale owner that it lost
        path.unlink(missing_ok=True)
    return True


class Claim:
    """A held claim: a heartbeat thread, ``still_held``, and ``release`` (or ``with``).

    Attributes:
        path: the claim file.
        generation: its generation.
        owner: ``host``, ``pid``, ``token`` and ``started`` as recorded in the file.
    """

    def __init__(self, path, generation, owner, heartbeat):
        self.path = Path(path)
        self.generation = generation
        self.owner = owner
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat,), daemon=True,
                                        name=f"claim heartbeat {self.path}")
        self._thread.start()

    @property
    def folder(self):
        return self.path.parent

    def still_held(self):
        """Whether this claim is still the folder's claim (nobody took it over)."""
        return (self._file_is_ours()
                and max(_claim_files(self.folder), default=-1) == self.generation)

    def _file_is_ours(self):
        # Taking a claim over deletes the old file, and a release after that
        # lets the generations restart, so the name alone proves nothing.
        return _read_owner(self.path).get("token") == self.owner["token"]

    def ensure_held(self):
        """Raise ``ClaimLost`` naming the new holder if the claim was taken over."""
        if not self.still_held():
            holder = current_holder(self.folder)
            by = holder.describe() if holder else "a process that has released it since"
            raise ClaimLost(f"{self.folder}: the claim was taken over by {by}")

    def release(self):
        """Stop the heartbeat and delete the claim file if it is still ours."""
        self._stop.set()
        self._thread.join()
        if self._file_is_ours():
            self.path.unlink(missing_ok=True)

    def _beat(self, interval):
        # A higher generation alone does not stop the heartbeat: one that
        # backs off (see ``_alone``) exists only for a moment.
        while not self._stop.wait(interval) and self._file_is_ours():
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.release()
