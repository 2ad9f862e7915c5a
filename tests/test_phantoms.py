"""reproduce.phantoms: the default data set generated once into the cache, whole or not at all."""

import json
import threading

from reproduce.experiment import PROFILES
from reproduce.phantoms import phantom_data, phantom_folder


def fake_phantom(barrier=None):
    """A stand-in for synthesize_dataset that writes one file and the manifest."""
    def synthesize_dataset(out_dir, **settings):
        out_dir.mkdir(parents=True)
        (out_dir / "synth00").mkdir()
        (out_dir / "synth00" / "FLAIR.nii.gz").write_text(threading.current_thread().name)
        if barrier is not None:
            barrier.wait(timeout=30)     # all have generated before any renames
        (out_dir / "phantom.json").write_text(json.dumps(settings))
    return synthesize_dataset


def test_processes_starting_on_an_empty_cache_end_with_one_whole_phantom(tmp_path, monkeypatch):
    from tversky_keras.data import phantom

    monkeypatch.setattr(phantom, "synthesize_dataset", fake_phantom(threading.Barrier(4)))
    profile = PROFILES["smoke"]
    folders = []

    def generate():
        folders.append(phantom_data(profile, tmp_path))

    threads = [threading.Thread(target=generate, name=f"generator{i}") for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    expected = phantom_folder(PROFILES["smoke"], tmp_path)
    assert folders == [expected] * 4
    assert [p.name for p in tmp_path.iterdir()] == [expected.name]   # losers discarded
    assert (folders[0] / "phantom.json").is_file()
    assert (folders[0] / "synth00" / "FLAIR.nii.gz").read_text().startswith("generator")


def test_an_incomplete_phantom_folder_is_replaced(tmp_path, monkeypatch):
    from tversky_keras.data import phantom

    monkeypatch.setattr(phantom, "synthesize_dataset", fake_phantom())
    incomplete = phantom_folder(PROFILES["smoke"], tmp_path) / "synth00"
    incomplete.mkdir(parents=True)
    (incomplete / "T1W.nii.gz").write_text("interrupted")
    folder = phantom_data(PROFILES["smoke"], tmp_path)
    assert sorted(p.name for p in (folder / "synth00").iterdir()) == ["FLAIR.nii.gz"]
    assert (folder / "phantom.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [incomplete.parent.name]


def test_a_killed_generators_temporary_folder_is_removed_and_a_running_ones_kept(
        tmp_path, monkeypatch, capsys):
    import os
    import subprocess
    import sys

    from reproduce import phantoms
    from tversky_keras.data import phantom

    monkeypatch.setattr(phantom, "synthesize_dataset", fake_phantom())
    folder = phantom_folder(PROFILES["smoke"], tmp_path)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(gone.stdout)     # exited: a killed generator's process
    uid = "0" * 32
    abandoned = tmp_path / f".{folder.name}.{phantoms._HOST}-{dead_pid}-{uid}.tmp"
    running = tmp_path / f".{folder.name}.{phantoms._HOST}-{os.getpid()}-{uid}.tmp"
    elsewhere = tmp_path / f".{folder.name}.otherhost-{dead_pid}-{uid}.tmp"
    unknown = tmp_path / f".{folder.name}.{uid}.tmp"      # the names before this rule
    for path in (abandoned, running, elsewhere, unknown):
        (path / "synth00").mkdir(parents=True)
    assert phantom_data(PROFILES["smoke"], tmp_path) == folder
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([folder.name, running.name, elsewhere.name, unknown.name])
    assert f"removed {abandoned}" in capsys.readouterr().err
