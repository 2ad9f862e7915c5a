"""Time the synthetic phantom and compare its lesions with the real patients'.

Writes the default data set (15 subjects at 2 mm, seed 0) into a temporary
folder, prints the wall time, then reads the files back and prints per
subject: lesion voxels and mm^3, lesion components (26-connectivity), the
largest one, and the mean lesion z-score per modality after ``zscore_in_brain``,
next to the 30 MSLUB patients' quantiles from ``lesion_stats.json`` (read from
``../shared/data/mslub-mni`` beside the checkout when present). Last comes a
picture-free check of the highest-load subject: mean z per tissue class and
the lesions on its middle axial slice, and where its lesions sit (beside the
ventricles, against the cortex, below the tentorium). How the images compare
with real scans is ``reproduce.realism``'s job.

    python -m benchmarks.bench_phantom [--subjects 15] [--spacing 2.0] [--seed 0]
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # the package imports TensorFlow

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from tversky_keras.data.io import MODALITIES  # noqa: E402
from tversky_keras.data.normalize import zscore_in_brain  # noqa: E402
from tversky_keras.data.phantom import (lesion_loads, mni152_tissue,  # noqa: E402
                                        subject_seed, synthesize_dataset, synthesize_subject)
from tversky_keras.data.subjects import MASK_NAME  # noqa: E402

STATS = Path(__file__).resolve().parents[2] / "shared" / "data" / "mslub-mni" / "lesion_stats.json"
CONNECTIVITY_26 = np.ones((3, 3, 3), bool)


def subject_row(folder):
    """Lesion statistics of one written subject."""
    lesion_image = nib.load(folder / f"{MASK_NAME}.nii.gz")
    voxel_mm3 = float(np.prod(lesion_image.header.get_zooms()[:3]))
    lesion = np.asarray(lesion_image.dataobj) > 0
    labels, count = ndimage.label(lesion, CONNECTIVITY_26)
    sizes = np.bincount(labels.ravel())[1:] * voxel_mm3
    z = {m: zscore_in_brain(np.asarray(nib.load(folder / f"{m}.nii.gz").dataobj))[lesion].mean()
         for m in MODALITIES}
    return {"id": folder.name, "voxels": int(lesion.sum()), "mm3": lesion.sum() * voxel_mm3,
            "components": count, "largest_mm3": sizes.max() if count else 0.0,
            "sizes": sizes, **z}


def print_table(rows, stats):
    print(f"{'subject':8} {'voxels':>7} {'mm3':>8} {'comps':>6} {'largest':>8} "
          + " ".join(f"{'z ' + m:>8}" for m in MODALITIES))
    for r in sorted(rows, key=lambda r: r["mm3"]):
        print(f"{r['id']:8} {r['voxels']:7d} {r['mm3']:8.0f} {r['components']:6d} "
              f"{r['largest_mm3']:8.0f} " + " ".join(f"{r[m]:8.2f}" for m in MODALITIES))
    loads = np.array([r["mm3"] for r in rows])
    comps = np.array([r["components"] for r in rows])
    sizes = np.concatenate([r["sizes"] for r in rows])
    quartiles = [0, 25, 50, 75, 100]
    print("\nquantile            " + " ".join(f"{q:>8}%" for q in quartiles))
    print("load mm3, phantom   " + " ".join(f"{v:9.0f}" for v in np.percentile(loads, quartiles)))
    if stats:
        print("load mm3, MSLUB     " + " ".join(
            f"{stats['lesion_voxels_quantiles'][str(q)]:9.0f}" for q in quartiles))
    print("components, phantom " + " ".join(f"{v:9.0f}" for v in np.percentile(comps, quartiles)))
    if stats:
        print("components, MSLUB   " + " ".join(
            f"{stats['components_quantiles'][str(q)]:9.0f}" for q in quartiles))
    size_q = [5, 10, 25, 50, 75, 90, 95, 99]
    print("\ncomponent mm3 quantile " + " ".join(f"{q:>6}%" for q in size_q))
    print("phantom                " + " ".join(f"{v:7.0f}" for v in np.percentile(sizes, size_q)))
    if stats:
        print("MSLUB (1 mm voxels)    " + " ".join(
            f"{stats['component_volume_mm3_quantiles'][str(q)]:7.0f}" for q in size_q))
        real = stats["contrast_three_full_patients"]
        for m, key in zip(MODALITIES, ("T1", "T2", "FLAIR")):
            values = [p[f"{key}_lesion_mean_z"] for p in real.values()]
            print(f"lesion mean z {m:5}: phantom {min(r[m] for r in rows):.2f}.."
                  f"{max(r[m] for r in rows):.2f}, MSLUB {min(values):.2f}..{max(values):.2f}")


def slice_check(subject, spacing):
    """Mean z per tissue class on the middle axial slice, and the lesions on it."""
    k = subject.lesion.shape[2] // 2
    z_mm = (subject.affine @ [0, 0, k, 1])[2]
    print(f"\nslice check: axial slice {k} (MNI z = {z_mm:.0f} mm)")
    lesion = subject.lesion[..., k] > 0
    classes = {name: (subject.tissue[name][..., k] > 0.5) & ~lesion for name in ("CSF", "GM", "WM")}
    classes["lesion"] = lesion
    ventricles = subject.ventricle_distance_mm[..., k] < spacing / 2
    print(f"{'class':8} {'voxels':>7} " + " ".join(f"{'z ' + m:>8}" for m in MODALITIES))
    z = {m: zscore_in_brain(subject.images[m])[..., k] for m in MODALITIES}
    for name, where in classes.items():
        print(f"{name:8} {where.sum():7d} " + " ".join(
            f"{z[m][where].mean() if where.any() else float('nan'):8.2f}" for m in MODALITIES))
    ventricle_x = np.argwhere(ventricles)[:, 0]
    if ventricle_x.size:
        print(f"ventricles: {ventricles.sum()} voxels, x index "
              f"{ventricle_x.min()}..{ventricle_x.max()} (mid-line at {lesion.shape[0] / 2:.0f})")
    labels, count = ndimage.label(lesion, np.ones((3, 3), bool))
    distance = subject.ventricle_distance_mm[..., k]
    print(f"{count} lesions on the slice; each: centre (x, y index), area mm2, "
          f"distance to ventricle mm, FLAIR z")
    for index in range(1, count + 1):
        where = labels == index
        cx, cy = np.argwhere(where).mean(0)
        print(f"  ({cx:5.1f}, {cy:5.1f})  {where.sum() * spacing**2:6.0f}  "
              f"{distance[where].min():5.1f}  {z['FLAIR'][where].mean():5.2f}")
    all_lesion = subject.lesion > 0
    print(f"whole volume: {np.mean(subject.ventricle_distance_mm[all_lesion] < 10):.0%} of lesion "
          f"voxels within 10 mm of a ventricle; of white matter: "
          f"{np.mean(subject.ventricle_distance_mm[subject.tissue['WM'] > 0.5] < 10):.0%}")
    print(lesion_sites(subject))


def lesion_sites(subject):
    """Lesions (26-connected) by where they sit, as one line."""
    lesion = subject.lesion > 0
    labels, count = ndimage.label(lesion, CONNECTIVITY_26)
    index = np.arange(1, count + 1)
    nearest_ventricle = ndimage.minimum(subject.ventricle_distance_mm, labels, index)
    grey_beside = ndimage.maximum(ndimage.maximum_filter(subject.tissue["GM"], 3), labels, index)
    depth = ndimage.mean(mni152_tissue(subject.affine, lesion.shape)["brain_depth_mm"],
                         labels, index)
    centres = np.array(ndimage.center_of_mass(lesion, labels, index)).reshape(-1, 3)
    mni_z = (subject.affine @ np.c_[centres, np.ones(count)].T)[2]
    periventricular = nearest_ventricle < 5.0
    juxtacortical = ~periventricular & (grey_beside > 0.5) & (depth < 20.0)
    infratentorial = ~periventricular & ~juxtacortical & (mni_z < -20.0)
    return (f"{count} lesions: {periventricular.sum()} within 5 mm of a ventricle, "
            f"{juxtacortical.sum()} against grey matter within 20 mm of the brain's surface "
            f"(juxtacortical), "
            f"{infratentorial.sum()} other below MNI z = -20 mm (infratentorial), "
            f"{count - periventricular.sum() - juxtacortical.sum() - infratentorial.sum()} "
            f"elsewhere in deep white matter")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=15)
    parser.add_argument("--spacing", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    stats = json.loads(STATS.read_text()) if STATS.is_file() else None
    if stats is None:
        print(f"({STATS} not found: printing without the real quantiles)")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        folders = synthesize_dataset(tmp, args.subjects, seed=args.seed, spacing=args.spacing,
                                     progress=False)
        seconds = time.perf_counter() - start
        print(f"synthesize_dataset: {args.subjects} subjects at {args.spacing:g} mm in "
              f"{seconds:.1f} s ({seconds / args.subjects:.2f} s per subject), grid "
              f"{nib.load(folders[0] / 'FLAIR.nii.gz').shape}\n")
        rows = [subject_row(folder) for folder in folders]
    print_table(rows, stats)
    # The slice check regenerates the highest-load subject (same seed, same load).
    loads = lesion_loads(args.subjects, args.seed)
    index = int(np.argmax(loads))
    subject = synthesize_subject(subject_seed(args.seed, index), args.spacing, loads[index])
    print(f"\n(slice check on {rows[index]['id']}, lesion load {rows[index]['mm3']:.0f} mm3)")
    slice_check(subject, args.spacing)


if __name__ == "__main__":
    main()
