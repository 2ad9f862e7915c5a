"""A synthetic data set on disk, laid out as the real data.

``synthesize_dataset`` writes ``<out>/<id>/{T1W,T2W,FLAIR,consensus_gt}.nii.gz``
atomically, then ``phantom.json`` (the manifest) last, so that a folder with a
matching manifest is a complete data set and the same loaders read phantom and
real scans alike.
"""

import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import nibabel as nib

from tversky_keras.atomic import atomic_path, write_text
from tversky_keras.data.io import MODALITIES
from tversky_keras.data.phantom.generate import (PHANTOM_VERSION, check_generator,
                                                 dataset_draws, subject_appearance,
                                                 subject_seed, synthesize_subject)
from tversky_keras.data.phantom.lesions import lesion_sources
from tversky_keras.data.subjects import MASK_NAME


def _manifest(n_subjects, seed, spacing, version, appearance):
    manifest = {"generator": "tversky_keras.data.phantom", "version": version,
                "n_subjects": n_subjects, "seed": seed, "spacing": float(spacing),
                "subjects": [f"synth{i:02d}" for i in range(n_subjects)],
                "files": [*MODALITIES, MASK_NAME],
                "template": "MNI152 ICBM 2009a nonlinear symmetric (nilearn)"}
    # Version 2's calibrated manifest is kept as it was, so its folders stay valid.
    if version != 2 or appearance != "calibrated":
        manifest["appearance"] = appearance
    if version == 3:
        manifest["lesions"] = {
            "source": "MSLUB consensus lesion masks in MNI space (Lesjak et al., "
                      "Neuroinformatics 2017; CC-BY), embedded in tversky_keras/data/lesion_masks",
            "subjects": [source.label for source in lesion_sources(n_subjects, seed)]}
    return manifest


def _read_manifest(out_dir):
    path = Path(out_dir) / "phantom.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _remove_phantom(out_dir, manifest):
    """Delete the files of an earlier phantom, manifest first: a half-rewritten
    folder must not pass for the old data set, nor keep its extra subjects."""
    if manifest is None:
        return
    (out_dir / "phantom.json").unlink()
    for subject in manifest["subjects"]:
        for name in manifest["files"]:
            (out_dir / subject / f"{name}.nii.gz").unlink(missing_ok=True)
        if (out_dir / subject).is_dir() and not any((out_dir / subject).iterdir()):
            (out_dir / subject).rmdir()


def _save_nifti(folder, name, array, affine):
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=4)  # 4 = MNI152
    image.set_sform(affine, code=4)
    with atomic_path(folder / f"{name}.nii.gz") as temporary:
        nib.save(image, temporary)


# A worker process pays for its start (Python, the package and TensorFlow's import:
# several seconds), so the subjects are made in parallel only when the serial work is
# at least this many 2-mm subjects. Measured 2026-12-07 on 2 cores (randomized look):
# 12 subjects took 27-35 s alone and 32-36 s with 2 workers, 30 subjects 73.8 s and
# 50.8 s.
PARALLEL_FROM_SUBJECTS_AT_2MM = 20


def available_cores():
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers(n_subjects, spacing):
    """One process per core when the data set is big enough to repay their start
    (``PARALLEL_FROM_SUBJECTS_AT_2MM``), else 1 (made in this process)."""
    work = n_subjects * (2.0 / float(spacing)) ** 3
    if work < PARALLEL_FROM_SUBJECTS_AT_2MM:
        return 1
    return max(1, min(available_cores(), n_subjects))


def _write_subject(folder, index, draw, seed, spacing, version, appearance):
    """Make subject ``index`` (its ``dataset_draws`` entry ``draw``) and write its files
    into ``folder``; returns what the progress line says (its lesion load in mm^3 and
    whose lesions)."""
    subject = synthesize_subject(subject_seed(seed, index), spacing, version=version,
                                 appearance=subject_appearance(appearance, index), **draw)
    folder.mkdir(exist_ok=True)
    for modality, image in subject.images.items():
        _save_nifti(folder, modality, image, subject.affine)
    _save_nifti(folder, MASK_NAME, subject.lesion, subject.affine)
    return float(subject.lesion.sum() * spacing**3), subject.lesion_source


def _write_subject_task(arguments):
    return _write_subject(*arguments)


def synthesize_dataset(out_dir, n_subjects=15, seed=0, spacing=2.0, progress=True,
                       version=PHANTOM_VERSION, appearance="calibrated", workers=1):
    """Write a synthetic data set as ``out_dir/<id>/{T1W,T2W,FLAIR,consensus_gt}.nii.gz``.

    The subjects are ``dataset_subjects(n_subjects, seed, spacing, version,
    appearance)``: version 3 deals real patients' lesions (``lesion_sources``),
    version 2 stratifies its drawn loads over the real distribution
    (``lesion_loads``). ``phantom.json`` records the version, the appearance
    and whose lesions each subject carries.
    Files are written atomically and ``phantom.json`` last, so its presence
    with matching parameters marks a complete data set: calling again with the
    same arguments returns at once, while other arguments first delete the
    files of the phantom recorded there.

    Args:
        out_dir: output folder (created).
        n_subjects: number of subjects, ids ``synth00``, ``synth01``, ...
        seed: the data set's seed.
        spacing: voxel size in mm.
        progress: print one line per subject to stderr.
        version: the generator's version (3, or 2 to reproduce the earlier phantom).
        appearance: ``"calibrated"``, ``"randomized"``, ``"randomized-rim"``, ``"synthseg"``
            (``synthesize_subject``) or ``"mixed"`` (``subject_appearance``).
        workers: processes that make subjects at once (1, the default: this
            process; ``None``: ``default_workers``, one per core for a data set big
            enough to repay their start). Each subject depends on its own seed alone,
            so the files are the same bytes whatever the number. Worker processes are
            spawned, and spawning re-runs the calling script's top level: call it with
            ``workers`` above 1 from a module or under ``if __name__ == "__main__":``
            (the package's commands do). Where workers cannot start, the subjects are
            made in this process, with one line on stderr saying so.

    Returns:
        list of the subjects' folders (``Path``).
    """
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be at least 1, got {n_subjects}")
    check_generator(version, appearance)
    out_dir = Path(out_dir)
    manifest = _manifest(n_subjects, seed, spacing, version, appearance)
    folders = [out_dir / name for name in manifest["subjects"]]
    old = _read_manifest(out_dir)
    if old == manifest and all((f / f"{name}.nii.gz").is_file()
                               for f in folders for name in manifest["files"]):
        return folders
    writing = out_dir / ".phantom-incomplete"  # a phantom being written, or interrupted
    if old is None and not writing.exists():
        # Not a phantom folder: never write over the user's own subject files.
        taken = [f for f in folders if f.is_dir() and any(f.glob("*.nii*"))]
        if taken:
            raise ValueError(f"{taken[0]}: holds scans and {out_dir} is no phantom folder (no "
                             f"phantom.json); give an empty or new --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    writing.touch()
    _remove_phantom(out_dir, old)
    workers = default_workers(n_subjects, spacing) if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    draws = dataset_draws(n_subjects, seed, version)
    tasks = [(folder, index, draw, seed, spacing, version, appearance)
             for index, (folder, draw) in enumerate(zip(folders, draws, strict=True))]
    if workers == 1:
        made = map(_write_subject_task, tasks)
        _report(made, folders, n_subjects, progress)
    else:
        # spawn, not fork: the caller may hold TensorFlow's threads, which fork does not copy.
        try:
            with ProcessPoolExecutor(workers,
                                     mp_context=multiprocessing.get_context("spawn")) as pool:
                _report(pool.map(_write_subject_task, tasks), folders, n_subjects, progress)
        except BrokenProcessPool as error:
            print(f"phantom: worker processes could not run ({error}); making the subjects in "
                  f"this process", file=sys.stderr, flush=True)
            _report(map(_write_subject_task, tasks), folders, n_subjects, progress)
    write_text(out_dir / "phantom.json", json.dumps(manifest, indent=1))
    writing.unlink(missing_ok=True)
    return folders


def _report(made, folders, n_subjects, progress):
    """Consume ``made`` (each subject's load and lesion source, in order), a line each."""
    for index, (folder, (load, source)) in enumerate(zip(folders, made)):
        if progress:
            lesions = f", lesions of {source}" if source else ""
            print(f"phantom {index + 1}/{n_subjects}: {folder.name}, lesion load "
                  f"{load:.0f} mm^3{lesions}", file=sys.stderr, flush=True)
