"""Files written whole or not at all (``tversky_keras.atomic``)."""

import json

import numpy as np
import pytest

from tversky_keras.atomic import atomic_path, write_json


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "table1.md"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("half of the new")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["table1.md"]


@pytest.mark.parametrize("name, suffix", [("mask.nii.gz", ".nii.gz"), ("model.keras", ".keras"),
                                          ("a0.3_b0.7.npz", ".npz"), ("log", "")])
def test_the_temporary_keeps_the_suffix_writers_read_the_format_from(tmp_path, name, suffix):
    with atomic_path(tmp_path / name) as temporary:
        assert temporary.parent == tmp_path and temporary.name.startswith(".")
        assert temporary.name.endswith(".tmp" + suffix) and temporary.name != name
        temporary.write_text("new")
    assert (tmp_path / name).read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_write_json_replaces_whole(tmp_path):
    write_json({"b": 1, "a": [1, 2]}, tmp_path / "x.json")
    write_json({"c": 3}, tmp_path / "x.json")
    assert (tmp_path / "x.json").read_text() == '{\n  "c": 3\n}\n'


def test_dumps_writes_strict_json_with_undefined_as_null_and_infinity_flagged(tmp_path):
    from conftest import strict_json
    from tversky_keras.atomic import dumps, write_json

    data = {"volume_correlation": float("nan"), "relative_volume_difference": float("inf"),
            "low": -np.inf, "per_volume": [{"hd95_mm": np.float32("nan"), "n": np.int64(3)}],
            "values": np.array([0.5, np.nan]), "fine": 0.25, "flag": True, "none": None}
    with pytest.raises(ValueError):  # the plain module would write NaN and Infinity
        strict_json(json.dumps(data, default=lambda a: a.tolist()))
    read = strict_json(dumps(data))
    assert read == {"volume_correlation": None, "relative_volume_difference": None,
                    "relative_volume_difference_infinite": "+inf", "low": None,
                    "low_infinite": "-inf", "per_volume": [{"hd95_mm": None, "n": 3}],
                    "values": [0.5, None], "fine": 0.25, "flag": True, "none": None}
    write_json(data, tmp_path / "a.json")
    assert strict_json((tmp_path / "a.json").read_text()) == read
    with pytest.raises(TypeError):  # what strict JSON cannot hold at all is refused
        dumps({"x": object()})


def test_every_committed_json_file_is_strict_json():
    import subprocess
    from pathlib import Path

    from conftest import strict_json

    root = Path(__file__).resolve().parents[1]
    listed = subprocess.run(["git", "ls-files", "*.json"], cwd=root, capture_output=True,
                            text=True)
    if listed.returncode:
        pytest.skip(f"not a git checkout: {listed.stderr.strip()}")
    files = [root / name for name in listed.stdout.split()]
    assert files
    for path in files:
        strict_json(path.read_text(), str(path))
