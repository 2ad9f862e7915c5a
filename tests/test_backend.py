"""tversky_keras.backend: a Keras backend that cannot load is named in one line."""

import json
import os
import subprocess
import sys

import pytest

from tversky_keras import backend


def test_a_missing_backend_is_named_with_its_variable_and_what_is_installed(monkeypatch):
    real = backend.importlib.util.find_spec
    monkeypatch.setattr(backend.importlib.util, "find_spec",
                        lambda name: None if name == "jax" else real(name))
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    line = backend.problem()
    assert line.startswith("KERAS_BACKEND asks for the Keras backend 'jax', but jax is not "
                           "installed (installed here: tensorflow")
    assert "\n" not in line and "jax" not in backend.installed()
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    assert backend.problem() is None


def test_the_keras_config_file_is_read_when_the_variable_is_unset(monkeypatch, tmp_path):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert backend.requested() == ("tensorflow", "Keras' default")
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "theano"}))
    assert backend.requested() == ("theano", str(tmp_path / "keras.json"))
    assert "'theano', which Keras does not have" in backend.problem()
    (tmp_path / "keras.json").write_text("{not json")
    assert backend.requested() == ("tensorflow", "Keras' default")


@pytest.mark.parametrize("argv", [["-m", "tversky_keras", "evaluate", "--help"],
                                  ["-c", "import tversky_keras"]])
def test_the_command_says_it_in_one_line_and_the_library_raises(argv):
    env = {**os.environ, "KERAS_BACKEND": "nonsense"}
    done = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1
    if argv[0] == "-m":
        assert done.stderr.strip().splitlines() == [
            "tversky-keras: error: KERAS_BACKEND asks for the Keras backend 'nonsense', which "
            "Keras does not have (it has tensorflow, jax, torch, numpy, openvino; installed "
            f"here: {', '.join(backend.installed())})"]
    else:
        assert "tversky_keras.BackendError: KERAS_BACKEND asks for the Keras backend " \
               "'nonsense'" in done.stderr
