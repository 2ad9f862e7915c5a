"""Files written whole or not at all (``tversky_keras.atomic``)."""

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
