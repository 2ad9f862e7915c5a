"""The invariance suite over several training seeds: each cell's mean and spread.

    python -m reproduce.robustness_seeds DIR [DIR ...] --out FILE.json

Each DIR is one ``python -m reproduce.robustness`` run (one seed's network, the same data,
transforms, mirroring and transform seed). FILE holds, per subject and transform, the mean,
standard deviation and values over the runs of DSC, sensitivity and specificity, of the
change of DSC from each run's unchanged scan, and for lesion-load of the sensitivity on the
added lesions; ``largest_change`` names the transform of items (a)-(g) that moves the mean
DSC most, per subject. The docs' invariance page renders it
(``python -m reproduce.readme_tables --docs docs/results``).
"""

import argparse
import json
import sys
import time
from pathlib import Path

from reproduce import report
from tversky_keras.atomic import write_json

KEYS = ("dsc", "sensitivity", "specificity")
UNCHANGED = "unchanged"
LESION_LOAD = "lesion-load"  # item (h): judged on the added lesions, not on the change


def summarise(records, runs):
    """The seeds' ``robustness.json`` records as one summary (see the module)."""
    if not records:
        raise ValueError("no robustness run to summarise")
    first = records[0]["settings"]
    for run, record in zip(runs, records):
        settings = record["settings"]
        differing = [key for key in ("data", "mirror_axes", "seed", "threshold",
                                     "threshold_union_k", "threshold_union_core_mm")
                     if settings.get(key) != first.get(key)]
        if differing:
            raise ValueError(f"{run}: made with other settings than {runs[0]} "
                             f"({', '.join(differing)}): not the same suite")
    subjects = {}
    for subject_id in sorted(set().union(*(r["subjects"] for r in records))):
        cells = [r["subjects"].get(subject_id, {}) for r in records]
        if not all(UNCHANGED in c for c in cells):
            raise ValueError(f"subject {subject_id}: a run lacks its unchanged scan")
        names = [n for n in records[0].get("order", cells[0]) if all(n in c for c in cells)]
        entry = {}
        for name in names:
            found = [c[name] for c in cells]
            entry[name] = {key: report.spread([f[key] for f in found]) for key in KEYS}
            if name != UNCHANGED:
                entry[name]["delta_dsc"] = report.spread([f["dsc"] - c[UNCHANGED]["dsc"]
                                                    for f, c in zip(found, cells)])
            if all("added_sensitivity" in f for f in found):
                entry[name]["added_sensitivity"] = report.spread([f["added_sensitivity"]
                                                            for f in found])
        subjects[subject_id] = entry
    largest = {}
    for subject_id, entry in subjects.items():
        moved = {n: e["delta_dsc"]["mean"] for n, e in entry.items()
                 if n not in (UNCHANGED, LESION_LOAD) and "delta_dsc" in e}
        if moved:
            name = max(moved, key=lambda n: abs(moved[n]))
            largest[subject_id] = {"transform": name, "delta_dsc_mean": moved[name]}
    transforms = {}
    for record in records:
        transforms.update(record.get("transforms", {}))
    return {"runs": [str(run) for run in runs], "seeds": len(records),
            "settings": {**first, "models": [m for r in records for m in r["settings"]["models"]]},
            "order": records[0].get("order"), "transforms": transforms,
            "subjects": subjects, "largest_change": largest}


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m reproduce.robustness_seeds",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", metavar="DIR",
                        help="python -m reproduce.robustness --out folders, one per seed")
    parser.add_argument("--out", type=Path, required=True,
                        help="the summary's JSON file (its folder is made if absent)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return report.run_or_one_line("python -m reproduce.robustness_seeds", _run, args)


def _run(args):
    started = time.perf_counter()
    if args.out.is_dir():
        raise ValueError(f"{args.out}: a folder; give the summary's file name")
    records = []
    for run in args.runs:
        path = run / "robustness.json"
        if not path.is_file():
            raise ValueError(f"{path}: no such file (run python -m reproduce.robustness "
                             f"--out {run} first)")
        try:
            records.append(json.loads(path.read_text()))
        except ValueError as error:
            raise ValueError(f"{path}: not a robustness record: {error}") from None
    summary = summarise(records, args.runs)
    summary["made"] = report.provenance(time.perf_counter() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(summary, args.out)
    for subject_id, change in summary["largest_change"].items():
        print(f"{subject_id}: largest mean change of (a)-(g) {change['transform']} "
              f"{100 * change['delta_dsc_mean']:+.2f} DSC points over {summary['seeds']} seeds")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
