"""tversky_keras.training.distribute: TF_CONFIG read and checked, which worker writes, and two
real worker processes of ``tversky-keras train`` under MultiWorkerMirroredStrategy.

The commands are the README's multi-machine recipe, on 127.0.0.1 with free
ports, on the tiny phantom of Table 1's smoke profile.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

import tversky_keras  # noqa: F401  (registers the package's objects for load_model)
from tversky_keras.training import cluster_task

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["--val", "0", "--patch", "16", "--batch-size", "2", "--base-filters", "2",
         "--depth", "2", "--steps", "3", "--pool-batch", "--quiet"]
TIMEOUT = 300


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(data, out, epochs):
    """Both workers of a two-worker cluster, started at once; returns the Popen objects."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    workers = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        command = [sys.executable, "-m", "tversky_keras", "train", "--data", str(data),
                   "--out", str(out), "--epochs", str(epochs), *TRAIN]
        worker = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "TF_CONFIG": tf_config, "CUDA_VISIBLE_DEVICES": ""})
        worker.address = cluster["worker"][index]
        workers.append(worker)
    return workers


def finish(workers, timeout=TIMEOUT):
    """Each worker's (exit code, output); kills them all if any outlives ``timeout``."""
    deadline = time.monotonic() + timeout
    results = []
    try:
        for worker in workers:
            output, _ = worker.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append((worker.returncode, output))
    finally:
        for worker in workers:
            worker.kill()
    return results


def weights(path):
    return keras.saving.load_model(path).get_weights()


def test_two_workers_train_to_identical_weights_and_only_the_chief_writes(smoke_phantom, tmp_path):
    run = tmp_path / "run"
    results = finish(start_workers(smoke_phantom, run, epochs=2))
    for code, output in results:
        assert code == 0, output[-3000:]
        assert "Traceback" not in output
    assert (run / "model.keras").is_file() and (run / "last.keras").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["replicas"] == 2 and summary["steps"] == 6
    # The other worker kept its copies in its own scratch folder, nowhere else.
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == [".worker1"]
    chief, other = weights(run / "last.keras"), weights(run / ".worker1" / "last.keras")
    assert len(chief) == len(other) > 0
    for a, b in zip(chief, other):
        np.testing.assert_array_equal(a, b)
    # The metrics are reduced across workers: both logged the same numbers.
    assert (run / "log.csv").read_text() == (run / ".worker1" / "log.csv").read_text()


@pytest.mark.parametrize("killed", [1, 0])  # worker 0, the chief, hosts the coordination service
def test_a_killed_worker_stops_the_other_with_a_clear_error(smoke_phantom, tmp_path, killed):
    run = tmp_path / "run"
    workers = start_workers(smoke_phantom, run, epochs=10_000)
    deadline = time.monotonic() + TIMEOUT
    while not (run / "log.csv").is_file():  # the cluster is training
        assert workers[0].poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    workers[killed].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    survivor = workers[1 - killed]
    (code, output), = finish([survivor], timeout=120)
    waited = time.monotonic() - killed_at
    finish(workers)
    assert code == 1, output[-3000:]
    assert "another worker stopped or cannot be reached" in output
    # Which of TensorFlow's errors comes first is a race (the coordination service's missed
    # heartbeats, or a collective that cannot reach its peer); either way the message names
    # the worker that went away.
    causes = (f"/job:worker/replica:0/task:{killed} stopped sending heartbeats",
              f"cannot connect to ipv4:{workers[killed].address}",
              f"lost the connection to /job:worker/replica:0/task:{killed}")
    assert any(cause in output for cause in causes), output[-3000:]
    assert "Start every worker again with the same command" in output
    assert "Traceback" not in output
    assert waited < 60  # measured: about 8 s (heartbeats) and 3 s (refused connection)


# TensorFlow's errors when a peer goes away, as the survivor got them in these tests
# (abridged); which one comes first is a race.
LOST_PEER_ERRORS = [
    ("The following tasks are unhealthy (stopped sending heartbeats):\n"
     "/job:worker/replica:0/task:1\nThe tasks have crashed.",
     "/job:worker/replica:0/task:1 stopped sending heartbeats"),
    ("Aborting RingReduce with UNAVAILABLE: failed to connect to all addresses; last error: "
     "UNKNOWN: ipv4:127.0.0.1:38891: Failed to connect to remote host: Connection refused",
     "cannot connect to ipv4:127.0.0.1:38891"),
    ("{{function_node __wrapped__CollectiveReduceV2_Nordering_token_1_device_/job:worker/"
     "replica:0/task:1/device:CPU:0}} Collective ops is aborted by: Socket closed\n"
     "Additional GRPC error information from remote target /job:worker/replica:0/task:0 while "
     "calling /tensorflow.WorkerService/RecvBuf:\n:UNKNOWN:Error received from peer  "
     '{grpc_status:14, grpc_message:"Socket closed"}',
     "lost the connection to /job:worker/replica:0/task:0: Socket closed"),
]


@pytest.mark.parametrize("text, cause", LOST_PEER_ERRORS)
def test_a_lost_peer_error_names_the_peer(text, cause, monkeypatch, tmp_path):
    import tensorflow as tf

    from tversky_keras.training.distribute import WorkerLost, _raise_if_worker_lost

    monkeypatch.setenv("TF_CONFIG", json.dumps({
        "cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
        "task": {"type": "worker", "index": 0}}))
    with pytest.raises(WorkerLost) as caught:
        _raise_if_worker_lost(tf.errors.UnavailableError(None, None, text), tmp_path)
    assert f"({cause})" in str(caught.value)
    # Outside a cluster, or for another kind of error, nothing is translated.
    _raise_if_worker_lost(ValueError(text), tmp_path)
    monkeypatch.delenv("TF_CONFIG")
    _raise_if_worker_lost(tf.errors.UnavailableError(None, None, text), tmp_path)


@pytest.mark.parametrize("tf_config, expected", [
    (None, "run"),
    ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}, "run"),
    ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}},
     "run/.worker1"),
    ({"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}},
     "run/.worker0"),
    ({"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "chief", "index": 0}},
     "run"),
])
def test_only_the_chief_writes_the_run_folder(monkeypatch, tf_config, expected):
    from tversky_keras.training import writer_dir

    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    assert writer_dir(Path("run")) == Path(expected)


@pytest.mark.parametrize("tf_config, message", [
    ("{bad", "TF_CONFIG environment variable is not valid JSON"),
    ("[]", "TF_CONFIG must be a JSON object"),
    (json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 5}}),
     "TF_CONFIG: task 'worker' index 5 is not in the cluster"),
])
def test_a_malformed_tf_config_is_named(monkeypatch, tf_config, message):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError, match=message):
        cluster_task()


@pytest.mark.parametrize("tf_config, message", [
    ("{bad", "TF_CONFIG environment variable is not valid JSON"),
    (json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 5}}),
     "index 5 is not in the cluster"),
    (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": "abc"}}),
     "task index 'abc' is not an integer"),
])
def test_tf_config_is_checked_before_tensorflow_reads_it(monkeypatch, tf_config, message):
    from tversky_keras.training import distribution_strategy

    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError, match=message):
        distribution_strategy.__wrapped__()  # made once per process: not the cached one
