"""Claims on a folder (``tversky_keras.claims``): exclusive, freed, taken over once when stale."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from tversky_keras import claims
from tversky_keras.claims import ClaimLost, current_holder, timings, try_claim

CLAIMS_FILE = claims.__file__

# A racer loads claims.py on its own: importing the package imports Keras,
# about four seconds a process on a 2-core machine. Racers meet twice: before
# trying, and again after each has read the folder, so that all of them act
# on the same reading (the worst case: only the exclusive creation of the
# next generation's file decides). A winner keeps its claim until told to
# end, so that no late racer can win a claim an early one gave back.
RACER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("claims", sys.argv[1])
claims = importlib.util.module_from_spec(spec)
spec.loader.exec_module(claims)
read_folder, readings = claims._claim_files, []

def read_then_meet(folder):
    readings.append(read_folder(folder))
    if len(readings) == 1:
        print("read", flush=True)
        sys.stdin.readline()
    return readings[-1]

claims._claim_files = read_then_meet
print("ready", flush=True)
sys.stdin.readline()
claim = claims.try_claim(sys.argv[2])
print("won" if claim else "lost", flush=True)
sys.stdin.readline()
"""


def claim_names(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("claim."))


def plant_claim(folder, generation, age, owner=None):
    """A claim file of another (fake) process whose last heartbeat was ``age`` seconds ago."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"claim.{generation}.json"
    owner = owner if owner is not None else {"host": "elsewhere", "pid": 4242,
                                             "token": "f" * 32, "started": time.time() - age}
    path.write_text(json.dumps(owner))
    os.utime(path, (time.time() - age,) * 2)
    return path


def race_processes(folder, n):
    """Start ``n`` processes, let them try to claim ``folder`` at once; return how many won."""
    racers = [subprocess.Popen([sys.executable, "-c", RACER, CLAIMS_FILE, str(folder)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
              for _ in range(n)]
    try:
        for expected in ("ready", "read"):
            assert [r.stdout.readline().strip() for r in racers] == [expected] * n
            for racer in racers:
                racer.stdin.write("go\n")
                racer.stdin.flush()
        results = [r.stdout.readline().strip() for r in racers]
        for racer in racers:
            racer.communicate("end\n", timeout=30)
    finally:
        for racer in racers:
            racer.kill()
    assert set(results) <= {"won", "lost"}, results
    return results.count("won")


def test_a_claim_is_exclusive_and_its_release_frees_the_folder(tmp_path):
    folder = tmp_path / "cell"
    first = try_claim(folder)
    assert first is not None and first.still_held()
    assert try_claim(folder) is None
    assert claim_names(folder) == ["claim.0.json"]
    first.release()
    assert claim_names(folder) == []
    with try_claim(folder) as second:
        assert second is not None and second.still_held()
        assert second.owner["token"] != first.owner["token"]
    assert claim_names(folder) == [] and not second.still_held()


def test_the_claim_file_records_its_owner(tmp_path):
    with try_claim(tmp_path) as claim:
        recorded = json.loads(claim.path.read_text())
    assert recorded == claim.owner
    assert recorded["pid"] == os.getpid() and recorded["host"] == socket.gethostname()
    assert len(recorded["token"]) == 32 and abs(recorded["started"] - time.time()) < 60


@pytest.mark.parametrize("age, winners", [(1000.0, 1), (0.0, 0)])
def test_processes_racing_for_a_claim_take_a_stale_one_once_and_a_live_one_never(
        tmp_path, age, winners):
    plant_claim(tmp_path, 0, age)
    assert race_processes(tmp_path, 8) == winners
    assert claim_names(tmp_path) == (["claim.1.json"] if winners else ["claim.0.json"])


def test_threads_that_all_found_the_folder_free_give_one_claim(tmp_path, monkeypatch):
    barrier = threading.Barrier(16)
    read_folder, met = claims._claim_files, threading.local()
    won = []

    def read_then_meet(folder):
        found = read_folder(folder)
        if not getattr(met, "done", False):
            met.done = True
            barrier.wait(timeout=30)
        return found

    monkeypatch.setattr(claims, "_claim_files", read_then_meet)

    def race():
        claim = try_claim(tmp_path)
        if claim is not None:
            won.append(claim)

    threads = [threading.Thread(target=race) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(won) == 1
    won[0].release()


def test_a_taken_over_owner_learns_it_lost_and_keeps_its_hands_off(tmp_path):
    old = try_claim(tmp_path, heartbeat=100, stale_after=600)
    os.utime(old.path, (time.time() - 1000,) * 2)         # as if its process hung
    new = try_claim(tmp_path)
    assert new is not None and new.generation == 1
    assert claim_names(tmp_path) == ["claim.1.json"]      # the stale file is gone
    assert not old.still_held() and new.still_held()
    with pytest.raises(ClaimLost, match=f"taken over by pid {os.getpid()} on host "):
        old.ensure_held()
    new.release()
    # The generations restart: a third claim gets the old one's file name.
    third = try_claim(tmp_path)
    assert third.path == old.path and not old.still_held()
    old.release()
    assert claim_names(tmp_path) == ["claim.0.json"] and third.still_held()
    third.release()


def test_a_claim_that_would_share_the_folder_with_a_live_one_backs_off(tmp_path):
    # A process read the folder before a release (a stale generation 4), while
    # another has claimed it afresh since (a live generation 0).
    plant_claim(tmp_path, 4, age=1000)
    plant_claim(tmp_path, 0, age=0)
    assert try_claim(tmp_path) is None
    assert claim_names(tmp_path) == ["claim.0.json", "claim.4.json"]


def test_the_heartbeat_advances_the_claim_file_time_and_stops_on_release(tmp_path):
    claim = try_claim(tmp_path, heartbeat=0.05, stale_after=1)
    past = time.time() - 1000
    os.utime(claim.path, (past, past))
    deadline = time.monotonic() + 10
    while os.stat(claim.path).st_mtime == past and time.monotonic() < deadline:
        time.sleep(0.01)
    assert os.stat(claim.path).st_mtime > past + 900
    claim.release()
    assert not claim._thread.is_alive() and claim_names(tmp_path) == []


def test_the_holder_is_described_with_pid_host_start_and_heartbeat(tmp_path):
    assert current_holder(tmp_path) is None
    with try_claim(tmp_path) as claim:
        holder = current_holder(tmp_path)
        assert holder.owner == claim.owner and not holder.stale
        assert holder.describe().startswith(
            f"pid {os.getpid()} on host {socket.gethostname()} since ")
        assert holder.describe().endswith(", last heartbeat 0 s ago")
        os.utime(claim.path, (time.time() - 700,) * 2)
        holder = current_holder(tmp_path)
        assert holder.stale and holder.describe().endswith("last heartbeat 700 s ago, stale")
    assert current_holder(tmp_path) is None


def test_a_claim_file_being_written_is_described_as_such(tmp_path):
    (tmp_path / "claim.0.json").write_text("")
    assert current_holder(tmp_path).describe() == \
        "a process still writing its claim, last heartbeat 0 s ago"


def test_timings_come_from_arguments_then_the_environment_then_defaults(monkeypatch):
    monkeypatch.delenv(claims.HEARTBEAT_ENV, raising=False)
    monkeypatch.delenv(claims.STALE_AFTER_ENV, raising=False)
    assert timings() == (30.0, 600.0)
    monkeypatch.setenv(claims.HEARTBEAT_ENV, "0.5")
    monkeypatch.setenv(claims.STALE_AFTER_ENV, "2")
    assert timings() == (0.5, 2.0)
    assert timings(heartbeat=1, stale_after=5) == (1.0, 5.0)


@pytest.mark.parametrize("heartbeat, stale_after", [(0, 10), (-1, 10), (10, 15), (10, 0)])
def test_timings_that_would_lose_a_live_claim_are_refused(heartbeat, stale_after):
    with pytest.raises(ValueError, match="stale_after >= 2 x heartbeat"):
        timings(heartbeat, stale_after)


def test_a_claim_whose_owner_died_on_this_host_is_stale_at_once(tmp_path):
    """A kill -9 and a rerun on the same machine need not wait out the stale limit."""
    code = ("import importlib.util, sys, time\n"
            "spec = importlib.util.spec_from_file_location('claims', sys.argv[1])\n"
            "claims = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(claims)\n"
            "claim = claims.try_claim(sys.argv[2])\n"
            "print(claim.path, flush=True)\n"
            "time.sleep(600)\n")
    child = subprocess.Popen([sys.executable, "-c", code, CLAIMS_FILE, str(tmp_path)],
                             stdout=subprocess.PIPE, text=True)
    try:
        child.stdout.readline()  # the child holds the claim
        holder = current_holder(tmp_path)
        assert holder.owner["pid"] == child.pid and not holder.stale
        assert try_claim(tmp_path, heartbeat=1, stale_after=600) is None
    finally:
        child.kill()
        child.wait()
    assert current_holder(tmp_path, stale_after=600).stale
    claim = try_claim(tmp_path, heartbeat=1, stale_after=600)
    assert claim is not None and claim.generation == 1
    claim.release()
