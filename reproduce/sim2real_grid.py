"""The Table-1 grid's own phantom-trained models, each segmenting real patients.

    python -m reproduce.sim2real_grid --data ../shared/data/mslub-mni \\
        --grid results/phantom-quick [results/phantom-quick-seed1 ...]

Every finished cell of each ``reproduce.table1`` results folder holds a
network trained on half the phantom with one (alpha, beta) setting; its last
model (the one the table tests) segments every subject of ``--data`` in the
subject's own grid, and is scored inside the brain as ``reproduce.sim2real`` (``reproduce.scoring``)
scores (against the same FLAIR-threshold oracle). Nothing is trained and
nothing is chosen: the table shows, per (alpha, beta) row and real subject,
the mean and standard deviation over all the row's models (two folds per
seed), and how many beat the oracle. It is the paper's Table 1 read on real
scans, by networks that never saw one.

``--ensemble`` also scores each row's models as one ensemble (their
probabilities averaged, as nnU-Net predicts with its folds), written to
``<out>/ensemble/<row>/<subject>.json``.
``--mirror x`` (or ``x,y,z``) scores each model with test-time mirroring
(``tversky-keras predict --mirror``), into ``results/sim2real-grid-mirror-x``.
``--uncertainty`` (with ``--ensemble``) asks whether each row's ensemble knows
where it errs (``reproduce.uncertainty``): every model and mirror is a member,
and the voxel-wise nDSC and lesion-wise F1 retention curves of its predictive
entropy and mutual information, against the ideal and random rankings, go to
``<out>/ensemble/<row>/retention/<subject>.json``, ``<out>/retention.{json,md}``
and the figure ``<out>/retention.png`` (the a=0.3, b=0.7 row, the paper's choice).

Layout (a rerun skips every model already scored)::

    <out>/<grid folder name>/<row>/fold<k>/<subject>.json   one model on one subject
    <out>/sim2real-grid.{json,md}                          every row, every subject
    <out>/retention.{json,md}, retention.png               with --uncertainty

Only the scores are written, not the probability maps (50 models on two 1-mm
scans would be 100 maps); ``tversky-keras predict --model <cell>/run/last.keras``
writes any one of them.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from reproduce import report  # noqa: E402
from reproduce.experiment import (FOLDS, ROWS, cell_folder, is_finished, row_name,  # noqa: E402
                                  row_penalties)
from reproduce import uncertainty  # noqa: E402
from reproduce.scoring import (  # noqa: E402
    CHALLENGE_HEAD, CHALLENGE_SHOWN, baselines_markdown, oracle, scan_reference, score_subject,
    threshold_baselines)
from reproduce.table import challenge_mean_std, challenge_value  # noqa: E402
from tversky_keras.arguments import mirror_option, output_folder  # noqa: E402
from tversky_keras.atomic import write_json, write_text  # noqa: E402
from tversky_keras.data import discover_subjects  # noqa: E402
from tversky_keras.data.names import path_name  # noqa: E402
from tversky_keras.inference import segment_subject  # noqa: E402
from tversky_keras.saving import load_saved_model  # noqa: E402

MODEL = Path("run") / "last.keras"  # the model the table tests: the fixed budget's last
# What --out holds beside one folder per grid.
OWN_FILES = ("ensemble", "sim2real-grid.json", "sim2real-grid.md", "retention.json",
             "retention.md", "retention.png")
# The row whose retention curves the figure shows: the paper's choice.
FIGURE_ROW = "a0.3_b0.7"
SHOWN = ("dsc", "sensitivity", "specificity", "apr", "lesion_tpr", "lesion_fpr")


def grid_models(grids):
    """``[(grid, alpha, beta, fold, model path)]`` of every finished cell, grid by grid.

    Raises:
        ValueError: a folder is not a ``reproduce.table1`` results folder, or
            two have the same name, or one a name that cannot be a folder of
            ``--out`` (``path_name``): their scores would share a folder.
    """
    names = [Path(grid).name for grid in grids]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(f"two grid folders are named {twice[0]!r}: their scores would mix")
    taken = {}
    for grid, name in zip(grids, names):
        path_name(name, f"--grid {grid}: the folder name", reserved=OWN_FILES, taken=taken)
    models = []
    for grid in map(Path, grids):
        if not (grid / "experiment.json").is_file():
            raise ValueError(f"{grid}: not a reproduce.table1 results folder "
                             f"(no experiment.json)")
        for alpha, beta in ROWS:
            for fold in FOLDS:
                cell = cell_folder(grid, alpha, beta, fold)
                if is_finished(cell):
                    models.append((grid, alpha, beta, fold, cell / MODEL))
    if not models:
        raise ValueError(f"no finished cell in {', '.join(map(str, grids))}")
    return models


def grid_phantom(grids):
    """The phantom the first grid trained on (its ``experiment.json``'s data, when that
    folder still exists and holds a ``phantom.json``), else ``None``: the phantom-only
    FLAIR-threshold baseline chooses its k there."""
    for grid in grids:
        record = Path(grid) / "experiment.json"
        if record.is_file():
            data = Path(json.loads(record.read_text()).get("data", ""))
            if (data / "phantom.json").is_file():
                return data
    return None


def read_score(path, mirror_axes):
    """A score written earlier, refused if it was made with other mirroring."""
    score = json.loads(path.read_text())
    if tuple(score.get("mirror_axes", ())) != tuple(mirror_axes):
        raise ValueError(f"{path} was scored with mirror axes {score.get('mirror_axes', [])}, "
                         f"not {list(mirror_axes)}: use another --out")
    return score


def score_models(models, subjects, out, mirror_axes=(), ensemble=False):
    """Score every model on every subject, skipping scores already written.

    ``mirror_axes``: test-time mirroring (``segment_subject``). ``ensemble``:
    also score, per row, the average of all the row's models' probabilities
    (``<out>/ensemble/<row>/<subject>.json``, skipped when written for the
    same models).

    Returns:
        ``({(alpha, beta): {subject id: [scores of each model]}},
        {(alpha, beta): {subject id: ensemble score}})``, the second empty
        without ``ensemble``.
    """
    references = {}
    rows, ensembles = {}, {}
    by_row = {}
    for index, (grid, alpha, beta, fold, path) in enumerate(models, 1):
        by_row.setdefault((alpha, beta), []).append((index, grid, fold, path))
    for (alpha, beta), members in by_row.items():
        row = row_name(alpha, beta)
        paths = [str(path) for *_, path in members]
        vote_files = {s.id: out / "ensemble" / row / f"{s.id}.json" for s in subjects}
        vote_needed = ensemble and not all(
            f.is_file() and read_score(f, mirror_axes).get("ensemble") == paths
            for f in vote_files.values())
        sums = {}
        for index, grid, fold, path in members:
            folder = out / grid.name / row / f"fold{fold}"
            files = {s.id: folder / f"{s.id}.json" for s in subjects}
            scored = {}  # this model's score of each subject, made now or read
            run = vote_needed or not all(f.is_file() for f in files.values())
            if run:
                started = time.perf_counter()
                model = load_saved_model(path, compile=False)
                folder.mkdir(parents=True, exist_ok=True)
                for subject in subjects:
                    if files[subject.id].is_file() and not vote_needed:
                        continue
                    if subject.id not in references:
                        references[subject.id] = oracle(subject)
                    probability, _ = segment_subject(model, subject, mirror_axes=mirror_axes)
                    if vote_needed:
                        sums[subject.id] = sums.get(subject.id, 0.0) + probability
                    if not files[subject.id].is_file():
                        result = score_subject(subject, probability, references[subject.id])
                        scored[subject.id] = {**result, "model": str(path),
                                              "mirror_axes": list(mirror_axes)}
                        write_json(scored[subject.id], files[subject.id])
                keras.backend.clear_session()
            for subject_id, file in files.items():  # the scores an earlier run made
                if subject_id not in scored:
                    scored[subject_id] = read_score(file, mirror_axes)
            if run:
                print(f"[{index}/{len(models)}] {grid.name} {row} fold{fold}: "
                      + ", ".join(f"{s.id} DSC {scored[s.id]['dsc']:.3f}" for s in subjects)
                      + f" ({time.perf_counter() - started:.0f} s)", flush=True)
            scores = rows.setdefault((alpha, beta), {s.id: [] for s in subjects})
            for subject in subjects:
                scores[subject.id].append(scored[subject.id])
        if vote_needed:
            (out / "ensemble" / row).mkdir(parents=True, exist_ok=True)
            votes = {}
            for subject in subjects:
                result = score_subject(subject, sums[subject.id] / len(members),
                                       references[subject.id])
                votes[subject.id] = {**result, "ensemble": paths,
                                     "mirror_axes": list(mirror_axes)}
                write_json(votes[subject.id], vote_files[subject.id])
            print(f"ensemble of {len(members)} {row} models: "
                  + ", ".join(f"{s.id} DSC {votes[s.id]['dsc']:.3f}" for s in subjects),
                  flush=True)
        elif ensemble:
            votes = {s.id: read_score(vote_files[s.id], mirror_axes) for s in subjects}
        if ensemble:
            ensembles[(alpha, beta)] = votes
    return rows, ensembles


def score_uncertainty(models, subjects, out, mirror_axes=()):
    """Each row's ensemble, every model and mirror a member: its retention curves on every
    subject (``reproduce.uncertainty.retention_scores``), written to
    ``<out>/ensemble/<row>/retention/<subject>.json`` and skipped when written for the
    same models and mirroring.

    Returns:
        ``{row: {subject id: that JSON}}``, rows in the grid's order.
    """
    by_row = {}
    for _, alpha, beta, _, path in models:
        by_row.setdefault(row_name(alpha, beta), []).append(str(path))
    summary = {}
    for row, paths in by_row.items():
        loaded = None
        for subject in subjects:
            file = out / "ensemble" / row / "retention" / f"{subject.id}.json"
            if file.is_file() and read_score(file, mirror_axes).get("ensemble") == paths:
                summary.setdefault(row, {})[subject.id] = json.loads(file.read_text())
                continue
            started = time.perf_counter()
            if loaded is None:
                loaded = [load_saved_model(path, compile=False) for path in paths]
            probability, _, maps = segment_subject(loaded, subject, mirror_axes=mirror_axes,
                                                   uncertainty=True)
            truth, brain, _ = scan_reference(subject)
            entry = {"ensemble": paths, "mirror_axes": list(mirror_axes),
                     "members": maps["members"],
                     "measures": uncertainty.retention_scores(probability, maps, truth, brain)}
            file.parent.mkdir(parents=True, exist_ok=True)
            write_json(entry, file)
            summary.setdefault(row, {})[subject.id] = entry
            entropy = entry["measures"]["entropy"]
            print(f"uncertainty of the {row} ensemble ({entry['members']} members) on "
                  f"{subject.id}: voxel nDSC AUC {entropy['voxel']['auc']:.3f} (ideal "
                  f"{entropy['voxel']['ideal_auc']:.3f}, random "
                  f"{entropy['voxel']['random_auc']:.3f}), lesion F1 AUC "
                  f"{entropy['lesion']['auc']:.3f} ({time.perf_counter() - started:.0f} s)",
                  flush=True)
        if loaded is not None:
            keras.backend.clear_session()
    return summary


def summarise(rows):
    """Mean, standard deviation and count over each row's models, per subject.

    A challenge metric is ``None`` for a row where a model's score was written
    before the challenge metrics existed (scores are never rewritten)."""
    summary = {}
    for (alpha, beta), by_subject in rows.items():
        for subject_id, scores in by_subject.items():
            entry = {"models": len(scores),
                     "above_oracle": int(sum(s["dsc"] > s["threshold_dsc"] for s in scores)),
                     "threshold_dsc": scores[0]["threshold_dsc"],
                     "lesion_voxels": scores[0]["lesion_voxels"]}
            for key in SHOWN:
                values = np.array([s[key] for s in scores], dtype=float)
                entry[key] = _spread(values)
            for key in CHALLENGE_SHOWN:
                entry[key] = (_spread(np.array([s[key] for s in scores], dtype=float))
                              if all(key in s for s in scores) else None)
            summary.setdefault(subject_id, {})[row_name(alpha, beta)] = entry
    return summary


def _spread(values):
    """Mean, sample standard deviation (0 for one value) and the values themselves."""
    return {"mean": float(np.mean(values)),
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "values": values.tolist()}


def ensemble_summary(ensembles):
    """``{subject: {row: ensemble score}}`` with how many models voted."""
    return {subject_id: {row_name(a, b): {**by_subject[subject_id],
                                          "models": len(by_subject[subject_id]["ensemble"])}
                         for (a, b), by_subject in ensembles.items()}
            for subject_id in next(iter(ensembles.values()), {})}


HEAD = ["penalties", "models", "DSC", "sensitivity", "specificity", "APR", "lesion TPR",
        "lesion FPR", "above the oracle"] + CHALLENGE_HEAD


def _tables(summary, title, cells):
    """One table per subject (``title(subject id, an entry)`` above it), a line per row."""
    parts = []
    for subject_id, by_row in sorted(summary.items()):
        parts.append(title(subject_id, next(iter(by_row.values()))))
        lines = []
        # As the paper's table runs: alpha 0.5 first.
        for row, entry in sorted(by_row.items(), key=lambda item: -row_penalties(item[0])[0]):
            alpha, beta = row[1:].split("_b")
            lines.append([f"a={alpha}, b={beta}", entry["models"], *cells(entry)])
        parts.append(report.markdown_table(HEAD, lines))
    return "\n\n".join(parts)


def ensemble_markdown(summary):
    """Each row's ensemble, in percent, against the oracle, per subject."""
    return _tables(
        summary,
        lambda subject_id, entry: (f"### {subject_id}: each row's models as one ensemble "
                                   f"(FLAIR-threshold oracle DSC "
                                   f"{report.percent(entry['threshold_dsc'])})"),
        lambda entry: [*[report.percent(entry[k]) for k in SHOWN],
                       "yes" if entry["dsc"] > entry["threshold_dsc"] else "no",
                       *[challenge_value(k, entry.get(k)) for k in CHALLENGE_SHOWN]])


def markdown(summary):
    """Each row's mean ± std over its models (percent) and how many beat the oracle."""
    return _tables(
        summary,
        lambda subject_id, entry: (f"### {subject_id} ({entry['lesion_voxels']} lesion voxels; "
                                   f"FLAIR-threshold oracle DSC "
                                   f"{report.percent(entry['threshold_dsc'])})"),
        lambda entry: [*[f"{report.percent(entry[k]['mean'])} ± "
                         f"{report.percent(entry[k]['std'])}" for k in SHOWN],
                       f"{entry['above_oracle']} of {entry['models']}",
                       *[challenge_mean_std(k, *((entry[k]["mean"], entry[k]["std"])
                                                 if entry[k] else (None, None)))
                         for k in CHALLENGE_SHOWN]])


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m reproduce.sim2real_grid",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True,
                        help="real subjects to segment (any layout discover_subjects reads)")
    parser.add_argument("--grid", type=Path, nargs="+", required=True,
                        help="reproduce.table1 results folders (e.g. results/phantom-quick "
                             "results/phantom-quick-seed1 ...)")
    parser.add_argument("--mirror", type=mirror_option, default=(),
                        help="test-time mirroring along these axes (x, y, z; as tversky-keras "
                             "predict --mirror); default none")
    parser.add_argument("--ensemble", action="store_true",
                        help="also score each row's models together, their probabilities "
                             "averaged (as nnU-Net ensembles its folds)")
    parser.add_argument("--uncertainty", action="store_true",
                        help="with --ensemble: retention curves of each row's ensemble (every "
                             "model and mirror a member): does its entropy point at its "
                             "errors? Writes <out>/retention.{json,md,png}")
    parser.add_argument("--out", type=output_folder, default=None,
                        help="where the scores and the table go (results/sim2real-grid, "
                             "-mirror-<axes> with --mirror)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.uncertainty and not args.ensemble:
        build_parser().error("--uncertainty scores each row's ensemble: give --ensemble too")
    return report.run_or_one_line("python -m reproduce.sim2real_grid", _run, args)


def _run(args):
    started = time.perf_counter()
    out = args.out or Path("results") / ("sim2real-grid" + (
        "-mirror-" + "".join("xyz"[a] for a in args.mirror) if args.mirror else ""))
    subjects = discover_subjects(args.data)  # which refuses ids that cannot be file names
    models = grid_models(args.grid)
    print(f"{len(models)} finished cells in {len(args.grid)} grid folder(s), "
          f"{len(subjects)} subjects of {args.data}", flush=True)
    rows, ensembles = score_models(models, subjects, out, args.mirror, args.ensemble)
    summary = summarise(rows)
    text = markdown(summary)
    result = {"data": str(Path(args.data).resolve()),
              "grids": [str(Path(g).resolve()) for g in args.grid],
              "models": [str(m[-1]) for m in models], "threshold": 0.5,
              "mirror_axes": list(args.mirror), "subjects": summary}
    if args.ensemble:
        result["ensembles"] = ensemble_summary(ensembles)
        text += "\n\n" + ensemble_markdown(result["ensembles"])
    phantom = grid_phantom(args.grid)
    if phantom is not None:
        result["baselines"] = threshold_baselines(subjects, discover_subjects(phantom))
        text += ("\n\n### FLAIR-threshold baselines (k from the grid's phantom, "
                 f"{phantom.name})\n\n" + baselines_markdown(result["baselines"]))
    if args.uncertainty:
        _write_uncertainty(score_uncertainty(models, subjects, out, args.mirror), out,
                           time.perf_counter() - started)
    write_json(result, out / "sim2real-grid.json")
    write_text(out / "sim2real-grid.md",
               "# The Table-1 grid's phantom-trained models on real subjects (percent, inside "
               "the brain, each scan's grid; mean ± std over the models"
               + (f"; mirrored along {'/'.join('xyz'[a] for a in args.mirror)}"
                  if args.mirror else "") + ")\n\n" + text + "\n")
    print(f"\n{text}\n\ntotal {time.perf_counter() - started:.0f} s")
    return 0


def _write_uncertainty(summary, out, seconds):
    """``<out>/retention.{json,md}`` of every row, and the figure of ``FIGURE_ROW`` (else the
    first row)."""
    write_json({"made": report.provenance(seconds), "overlap": uncertainty.OVERLAP,
                "rows": summary}, out / "retention.json")
    text = uncertainty.markdown(summary)
    write_text(out / "retention.md",
               "# Does each row's ensemble know where it errs? (areas under the retention "
               "curves of its predictive entropy, percent; lesions 26-connected, found when "
               "any voxel overlaps)\n\n" + text + "\n")
    uncertainty.figure(summary, FIGURE_ROW if FIGURE_ROW in summary else next(iter(summary)),
                       out / "retention.png")
    print(f"\n{text}")


if __name__ == "__main__":
    sys.exit(main())
