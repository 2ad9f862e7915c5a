"""Do the phantom's draws cover real scans' whole-brain histograms? The realism check of issue 31.

    python -m reproduce.histograms --data ../shared/data/mslub-mni \\
        --phantom ~/.cache/tversky-keras/phantom-v3-60x2mm-seed0-synthseg \\
        --phantom ~/.cache/tversky-keras/phantom-v3-60x2mm-seed0-randomized \\
        --out figures/sim2real-v3/histograms.json

Per scan and modality, inside the brain (the non-zero voxels of any modality, as
``load_subject`` finds a skull-stripped brain), each statistic is relative to the
brain's median, so that raw scanner units drop out: the 0.5th, 2nd, 10th and
99th percentiles, and the fraction of brain voxels below half the median (dark
CSF and cut brain edges: FLAIR's suppressed CSF sits there in real scans).
The same fraction is also read over the brain's core (deeper than 6 mm, ``CORE_MM``), still
against the whole brain's median: a looser skull strip's dark rim, which the rim
appearances draw, counts as brain in the first fraction but never reaches the core,
where only dark CSF (the ventricles) does. Each phantom's subjects give a range per
statistic; a real scan is *covered* in a modality when both fractions lie within
their ranges. Real
scans are read at their own voxel size, the phantom at the one it was made at.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from reproduce import report
from tversky_keras.atomic import write_json, write_text
from tversky_keras.data import discover_subjects
from tversky_keras.data.grid import Geometry
from tversky_keras.data.io import MODALITIES, read_nifti
from tversky_keras.data.normalize import CORE_MM, brain_core

PERCENTILES, STATISTICS = report.HISTOGRAM_PERCENTILES, report.HISTOGRAM_STATISTICS


def brain_statistics(image, brain, core=None):
    """``STATISTICS`` of one modality's brain voxels, each relative to their median;
    ``core_below_half_median`` over ``core`` (a part of the brain; default: the brain).

    Raises:
        ValueError: an empty brain, or a brain median that is not positive.
    """
    image = np.asarray(image, np.float64)
    brain = np.asarray(brain, bool)
    values = image[brain]
    if values.size == 0:
        raise ValueError("the brain is empty")
    median = float(np.median(values))
    if not median > 0:
        raise ValueError(f"the brain's median intensity is {median:g}, not positive")
    found = {f"p{p:g}": float(np.percentile(values, p) / median) for p in PERCENTILES}
    found["below_half_median"] = float(np.mean(values < 0.5 * median))
    deep = values if core is None else image[np.asarray(core, bool) & brain]
    found["core_below_half_median"] = float(np.mean(deep < 0.5 * median)) if deep.size else 0.0
    return found


def scan_statistics(subject):
    """``{modality: brain_statistics}`` of one subject's scans (the files as stored), the
    core ``CORE_MM`` deep at the files' voxel size."""
    read = {m: read_nifti(path) for m, path in subject.images.items()}
    images = {m: data for m, (data, _) in read.items()}
    brain = np.logical_or.reduce([image != 0 for image in images.values()])
    # read_nifti's arrays are in canonical order, and so is the geometry's voxel size.
    spacing = Geometry.from_image(next(iter(read.values()))[1]).spacing
    core = brain_core(brain, spacing, CORE_MM)
    return {m: brain_statistics(images[m], brain, core) for m in MODALITIES if m in images}


def phantom_ranges(per_subject):
    """``{modality: {statistic: [min, max]}}`` over a phantom's subjects."""
    modalities = next(iter(per_subject.values()))
    return {m: {s: [min(v[m][s] for v in per_subject.values()),
                    max(v[m][s] for v in per_subject.values())] for s in STATISTICS}
            for m in modalities}


COVERED_BY = ("below_half_median", "core_below_half_median")


def coverage(real, ranges, statistics=COVERED_BY):
    """``{subject: {modality: bool}}``: whether each real scan's ``statistics`` (those it
    and the ranges hold) all lie in the phantom's ranges."""
    def inside(found, bounds):
        return all(bounds[s][0] <= found[s] <= bounds[s][1]
                   for s in statistics if s in found and s in bounds)

    return {subject: {m: inside(values[m], ranges[m]) for m in values if m in ranges}
            for subject, values in real.items()}


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m reproduce.histograms",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True,
                        help="real subjects (any layout discover_subjects reads)")
    parser.add_argument("--phantom", type=Path, action="append", required=True,
                        help="a generated phantom folder (repeat for several)")
    parser.add_argument("--out", type=Path, required=True,
                        help="the JSON to write (a .md beside it)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return report.run_or_one_line("python -m reproduce.histograms", _run, args)


def _run(args):
    real = {s.id: scan_statistics(s) for s in discover_subjects(args.data, require_mask=False)}
    phantoms = {}
    for folder in args.phantom:
        per_subject = {s.id: scan_statistics(s)
                       for s in discover_subjects(folder, require_mask=False)}
        ranges = phantom_ranges(per_subject)
        phantoms[folder.name] = {"n_subjects": len(per_subject), "ranges": ranges,
                                 "covered": coverage(real, ranges), "subjects": per_subject}
        print(f"{folder.name}: {len(per_subject)} subjects", flush=True)
    record = {"data": str(args.data), "real": real, "phantoms": phantoms,
              "made": report.provenance()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(record, args.out)
    # Rendered as read back (keys sorted), so a page made from the committed JSON is the same.
    text = report.histograms_markdown(json.loads(json.dumps(record, sort_keys=True)))
    write_text(args.out.with_suffix(".md"), text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
