"""A synthetic data set on disk, laid out as the real data.

``synthesize_dataset`` writes ``<out>/<id>/{T1W,T2W,FLAIR,consensus_gt}.nii.gz``
atomically, then ``phantom.json`` (the manifest) last, so that a folder with a
matching manifest is a complete data set and the same loaders read phantom and
real scans alike.
"""

import json
import sys
from pathlib import Path

import nibabel as nib

from tversky_keras.atomic import atomic_path, write_text
from tversky_keras.data.io import MODALITIES
from tversky_keras.data.phantom.generate import (PHANTOM_VERSION, check_generator,
                                                 dataset_subjects)
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


def synthesize_dataset(out_dir, n_subjects=15, seed=0, spacing=2.0, progress=True,
                       version=PHANTOM_VERSION, appearance="calibrated"):
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
        appearance: ``"calibrated"`` or ``"randomized"`` (``synthesize_subject``).

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
    subjects = dataset_subjects(n_subjects, seed, spacing, version, appearance)
    for index, (folder, subject) in enumerate(zip(folders, subjects)):
        folder.mkdir(exist_ok=True)
        for modality, image in subject.images.items():
            _save_nifti(folder, modality, image, subject.affine)
        _save_nifti(folder, MASK_NAME, subject.lesion, subject.affine)
        if progress:
            lesions = f", lesions of {subject.lesion_source}" if subject.lesion_source else ""
            print(f"phantom {index + 1}/{n_subjects}: {folder.name}, lesion load "
                  f"{subject.lesion.sum() * spacing**3:.0f} mm^3{lesions}", file=sys.stderr,
                  flush=True)
    write_text(out_dir / "phantom.json", json.dumps(manifest, indent=1))
    writing.unlink(missing_ok=True)
    return folders
