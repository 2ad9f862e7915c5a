"""tversky_keras.data.cache: same arrays as load_subject, keyed by settings and files, atomic."""

import dataclasses
import json
import os
import re
import shutil
import socket
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tiny_data import write_tiny_subjects
from tversky_keras.cli import main
from tversky_keras.data import DataError, discover_subjects, from_grid, load_subject, make_dataset
from tversky_keras.data.cache import CachedVolume, cached_subject, default_cache_dir, preprocess
from tversky_keras.data.cache import _write_entry as write_entry

GRID = dict(target_spacing=3.0, multiple_of=4)


def entries(cache):
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_a_cached_subject_holds_exactly_what_load_subject_returns(writable_subjects, tmp_path):
    cached = cached_subject(writable_subjects[0], tmp_path / "cache", **GRID)
    loaded = load_subject(writable_subjects[0], **GRID)
    assert isinstance(cached, CachedVolume) and cached.id == loaded.id == "sub00"
    np.testing.assert_array_equal(cached.image, loaded.image)
    np.testing.assert_array_equal(cached.label, loaded.label)
    np.testing.assert_array_equal(cached.brain, loaded.brain)
    assert cached.image.dtype == np.float32 and cached.label.dtype == np.uint8
    assert cached.shape == loaded.shape and cached.channels == 3
    assert cached.modalities == loaded.modalities and cached.label_max == loaded.label_max
    for kind in ("brain", "lesion"):
        np.testing.assert_array_equal(cached.voxels(kind), loaded.voxels(kind))
        assert cached.count(kind) == loaded.count(kind) > 0
    # The geometry survives the trip: a prediction goes back to the scan as before.
    probability = np.random.default_rng(0).random(loaded.shape).astype(np.float32)
    np.testing.assert_array_equal(from_grid(probability, cached.geometry),
                                  from_grid(probability, loaded.geometry))
    np.testing.assert_array_equal(cached.geometry.affine, loaded.geometry.affine)
    assert cached.geometry.header.binaryblock == loaded.geometry.header.binaryblock
    # Arrays are memory maps, opened anew on each access, read-only.
    assert isinstance(cached.image, np.memmap) and not cached.image.flags.writeable


def test_a_second_call_reads_the_entry_without_rewriting_it(writable_subjects, tmp_path):
    cache = tmp_path / "cache"
    first = cached_subject(writable_subjects[0], cache, **GRID)
    stamp = (first.folder / "image.npy").stat().st_mtime_ns
    second = cached_subject(writable_subjects[0], cache, **GRID)
    assert second.folder == first.folder and len(entries(cache)) == 1
    assert (second.folder / "image.npy").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("change", ["spacing", "multiple", "modalities", "normalize"])
def test_other_settings_make_another_entry(writable_subjects, tmp_path, change):
    cache = tmp_path / "cache"
    first = cached_subject(writable_subjects[0], cache, **GRID)
    settings = {"spacing": dict(target_spacing=2.0, multiple_of=4),
                "multiple": dict(target_spacing=3.0, multiple_of=8),
                "modalities": dict(GRID, modalities=("FLAIR", "T1W")),
                "normalize": dict(GRID, normalize=False)}[change]
    other = cached_subject(writable_subjects[0], cache, **settings)
    assert other.folder != first.folder and len(entries(cache)) == 2
    np.testing.assert_array_equal(other.image, load_subject(writable_subjects[0], **settings).image)


def test_a_changed_source_file_is_preprocessed_again_never_served_stale(writable_subjects, tmp_path):
    cache = tmp_path / "cache"
    before = cached_subject(writable_subjects[0], cache, **GRID)
    flair = writable_subjects[0].images["FLAIR"]
    image = nib.load(flair)
    data = np.asarray(image.dataobj)
    # Another brain (not an affine change, which the z-score would undo), the same background.
    nib.save(nib.Nifti1Image(np.where(data != 0, data ** 2 + 1.0, 0.0).astype(np.float32),
                             image.affine), flair)
    after = cached_subject(writable_subjects[0], cache, **GRID)
    assert after.folder != before.folder
    assert not np.array_equal(after.image, before.image)
    np.testing.assert_array_equal(after.image, load_subject(writable_subjects[0], **GRID).image)
    # Touching a file (same bytes, new time) is no change: the same entry.
    stat = flair.stat()
    os.utime(flair, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert cached_subject(writable_subjects[0], cache, **GRID).folder == after.folder


def test_other_bytes_of_the_same_size_and_time_are_a_change(writable_subjects, tmp_path):
    # An uncompressed mask rewritten with other lesions: same size, its time put back.
    subject = writable_subjects[0]
    mask = nib.load(subject.mask)
    path = subject.mask.with_name("consensus_gt.nii")
    nib.save(nib.Nifti1Image(np.asarray(mask.dataobj).astype(np.uint8), mask.affine), path)
    subject = dataclasses.replace(subject, mask=path)
    cache = tmp_path / "cache"
    before = cached_subject(subject, cache, **GRID)
    stat, size = path.stat(), path.stat().st_size
    other = np.zeros(mask.shape, np.uint8)
    other[2:6, 2:6, 2:6] = 1
    nib.save(nib.Nifti1Image(other, mask.affine), path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == size and path.stat().st_mtime_ns == stat.st_mtime_ns
    after = cached_subject(subject, cache, **GRID)
    assert after.folder != before.folder
    np.testing.assert_array_equal(after.label, load_subject(subject, **GRID).label)
    assert after.count("lesion") != before.count("lesion")


def test_a_killed_writers_temporary_entry_is_removed_by_the_next_write(writable_subjects,
                                                                       tmp_path):
    import subprocess
    import sys

    cache = tmp_path / "cache"
    entry = cached_subject(writable_subjects[0], cache, **GRID).folder
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    host = socket.gethostname()
    token = "0" * 32
    dead = cache / f".{entry.name}-{host}-{int(gone.stdout)}-{token}.tmp"
    live = cache / f".{entry.name}-{host}-{os.getpid()}-{token}.tmp"
    for leftover in (dead, live):
        leftover.mkdir()
        (leftover / "image.npy").write_bytes(b"half written")
    shutil.rmtree(entry)  # the entry is written again
    cached_subject(writable_subjects[0], cache, **GRID)
    assert not dead.exists() and live.exists()   # a live writer's folder is left alone


def test_bad_input_raises_the_data_error_and_leaves_no_entry(writable_subjects, tmp_path):
    cache = tmp_path / "cache"
    writable_subjects[0].images["T2W"].write_bytes(b"not a nifti file")
    with pytest.raises(DataError, match="T2W.nii.gz: cannot read the NIfTI file"):
        cached_subject(writable_subjects[0], cache, **GRID)
    assert entries(cache) == []


# A full disk, as the OS says it and as numpy's short write says it.
@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"),
                                     OSError("322560 requested and 153568 written")])
def test_an_entry_appears_whole_or_not_at_all(writable_subjects, tmp_path, monkeypatch, failure):
    cache = tmp_path / "cache"
    saved = []

    def failing_save(path, array):
        saved.append(path)
        if len(saved) == 3:
            raise failure
        return real_save(path, array)

    real_save = np.save
    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(DataError, match=r"cannot write the preprocessed cache \(the disk is full "
                                        r"or over quota \([\d,]+ MB free there; .*give another "
                                        r"--cache\)"):
        cached_subject(writable_subjects[0], cache, **GRID)
    assert entries(cache) == []  # neither the entry nor its temporary folder
    monkeypatch.setattr(np, "save", real_save)
    assert cached_subject(writable_subjects[0], cache, **GRID).count("brain") > 0


@pytest.mark.parametrize("number", [13, 30])  # EACCES (an unwritable HOME), EROFS
def test_an_unwritable_cache_folder_points_to_cache_and_the_variable(writable_subjects, tmp_path,
                                                                     monkeypatch, number):
    def refused(path):
        raise OSError(number, os.strerror(number), str(path))

    monkeypatch.setattr(Path, "mkdir", lambda self, *a, **k: refused(self))
    with pytest.raises(DataError, match=r"cannot be written; give --cache DIR, or set "
                                        r"TVERSKY_KERAS_CACHE"):
        cached_subject(writable_subjects[0], tmp_path / "cache", **GRID)


def test_a_racing_writer_keeps_the_entry_that_landed_first(writable_subjects, tmp_path):
    cache = tmp_path / "cache"
    winner = cached_subject(writable_subjects[0], cache, **GRID)
    stamp = (winner.folder / "volume.json").stat().st_mtime_ns
    # A second process that found no entry a moment ago finishes writing the same one.
    write_entry(load_subject(writable_subjects[0], **GRID), winner.folder, settings={})
    assert entries(cache) == [winner.folder.name]
    assert (winner.folder / "volume.json").stat().st_mtime_ns == stamp
    assert CachedVolume(winner.folder).count("brain") == winner.count("brain")


def test_a_damaged_entry_names_the_folder_to_delete(writable_subjects, tmp_path):
    cached = cached_subject(writable_subjects[0], tmp_path / "cache", **GRID)
    (cached.folder / "volume.json").write_text("{")
    with pytest.raises(DataError, match="unreadable cache entry.*delete the folder"):
        _ = CachedVolume(cached.folder).shape


def test_make_dataset_gives_the_same_batches_from_the_cache_as_from_memory(writable_subjects, tmp_path):
    cached = preprocess(writable_subjects, tmp_path / "cache", **GRID)
    in_memory = [load_subject(s, **GRID) for s in writable_subjects]
    for options in (dict(patch_size=6, batch_size=3, foreground_ratio=0.5, flips=True),
                    dict(batch_size=1, flips=True)):
        a = [(x.numpy(), y.numpy()) for x, y in make_dataset(cached, seed=2, **options).take(3)]
        b = [(x.numpy(), y.numpy()) for x, y in make_dataset(in_memory, seed=2, **options).take(3)]
        for (xa, ya), (xb, yb) in zip(a, b):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TVERSKY_KERAS_CACHE", str(tmp_path / "tk"))
    assert default_cache_dir() == tmp_path / "tk" / "preprocessed"
    monkeypatch.delenv("TVERSKY_KERAS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "tversky-keras" / "preprocessed"


def test_preprocess_command_fills_the_cache_that_train_then_reads(tmp_path, capsys):
    write_tiny_subjects(tmp_path / "data", n=3)
    cache = tmp_path / "cache"
    assert main(["preprocess", "--data", str(tmp_path / "data"), "--out", str(cache),
                 "--depth", "2"]) == 0
    assert "3 subjects preprocessed" in capsys.readouterr().out
    before = {name: (cache / name / "volume.json").stat().st_mtime_ns for name in entries(cache)}
    assert len(before) == 3
    assert main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
                 "--cache", str(cache), "--depth", "2", "--base-filters", "2", "--patch", "8",
                 "--batch-size", "2", "--epochs", "1", "--steps", "2", "--quiet"]) == 0
    after = {name: (cache / name / "volume.json").stat().st_mtime_ns for name in entries(cache)}
    assert after == before  # train found every subject in the cache and wrote none again
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["n_train"] == 2 and summary["n_val"] == 1


@pytest.fixture
def cached(tiny_data, tmp_path):
    subject = discover_subjects(tiny_data)[0]
    entry = cached_subject(subject, tmp_path).folder
    return subject, tmp_path, entry


def test_a_truncated_cache_file_is_found_when_the_entry_is_opened(cached):
    subject, cache, entry = cached
    with open(entry / "image.npy", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(DataError, match=r"image.npy: unreadable cache file .*delete"):
        cached_subject(subject, cache)


def test_a_cache_array_of_another_shape_is_found_when_the_entry_is_opened(cached):
    subject, cache, entry = cached
    np.save(entry / "label.npy", np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(DataError, match=r"label.npy: holds shape \(2, 2, 2\), its manifest"):
        cached_subject(subject, cache)


@pytest.mark.parametrize("name, damage", [
    ("image.npy", "second half zeroed"), ("label.npy", "wiped"), ("brain_voxels.npy", "one byte"),
])
def test_bytes_overwritten_in_place_are_found_when_the_entry_is_opened(cached, name, damage):
    """The same size, the same header, other bytes: the recorded CRC-32 finds them."""
    subject, cache, entry = cached
    path = entry / name
    size = path.stat().st_size
    header = 128  # numpy's .npy header of these arrays
    with open(path, "r+b") as f:
        if damage == "one byte":
            f.seek(size - 1)
            byte = f.read(1)
            f.seek(size - 1)
            f.write(bytes([byte[0] ^ 1]))
        else:
            start = header if damage == "wiped" else size // 2
            original = np.load(path)  # the damage must change something
            f.seek(start)
            f.write(bytes(size - start))
    assert path.stat().st_size == size
    if damage != "one byte":
        assert not np.array_equal(np.load(path), original)
    with pytest.raises(DataError, match=rf"{name}: its bytes changed since it was written .*"
                                        rf"delete {re.escape(str(entry))}"):
        cached_subject(subject, cache)


def test_an_entry_without_checksums_is_refused(cached):
    subject, cache, entry = cached
    manifest = json.loads((entry / "volume.json").read_text())
    del manifest["files"]
    (entry / "volume.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="records no checksums"):
        cached_subject(subject, cache)


def test_cached_arrays_are_opened_one_header_at_a_time(cached, monkeypatch):
    """numpy reads a .npy header with ast.literal_eval, which CPython 3.11-3.12 breaks
    when threads parse at once (python/cpython#106905: a SystemError that stopped a
    sim-to-real training under tf.data's parallel calls): every np.load of an entry's
    arrays runs under the module's lock, and many threads still read the right arrays."""
    import threading

    from tversky_keras.data import cache as cache_module

    subject, cache, entry = cached
    volume = CachedVolume(entry)
    real_load, unlocked = np.load, []

    def checking_load(*args, **kwargs):
        if not cache_module._NPY_HEADER_LOCK.locked():
            unlocked.append(args[0])
        return real_load(*args, **kwargs)

    monkeypatch.setattr(cache_module.np, "load", checking_load)
    expected = np.asarray(volume.voxels("brain"))
    results = []

    def read():
        for _ in range(20):
            results.append(np.array_equal(volume.voxels("brain"), expected))

    threads = [threading.Thread(target=read) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert unlocked == [] and len(results) == 160 and all(results)


def test_a_run_folders_record_of_its_data_does_not_follow_the_cache_format(writable_subjects,
                                                                           monkeypatch):
    """Run folders made before the cache's format changed recorded this digest of their
    subjects (format 1, no settings): it must not change with CACHE_FORMAT, or every
    finished run would be refused as trained on other data."""
    import hashlib

    from tversky_keras.data import cache
    from tversky_keras.data.cache import file_identity, source_digest

    subject = writable_subjects[0]
    files = [file_identity(m, p) for m, p in sorted(subject.images.items())]
    files.append(file_identity("mask", subject.mask))
    content = {"format": 1, "id": subject.id, "settings": {}, "files": files}
    expected = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:20]
    assert source_digest(subject) == expected
    monkeypatch.setattr(cache, "CACHE_FORMAT", 99)
    assert source_digest(subject) == expected
