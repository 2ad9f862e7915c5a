"""Assemble Table 1 from the finished cells of an experiment, and render it.

This module's one job is the table: it reads the cells that exist (pooled
metrics over both test folds, per-subject mean and spread, lesion-wise rates,
each fold's own scores and whether it collapsed), sets the paper's values
beside ours, and writes it as Markdown, CSV and JSON, with the summary over
seeds. Running the cells is ``reproduce.grid``'s job.

A second table scores the same segmentations as the MS challenges do
(``experiment.challenge_scores``: nDSC, lesion F1, HD95, ASSD, volume
difference), computed here from the cells' saved test arrays, so that cells
finished before those metrics existed are scored too. A test file without its
voxel size falls back on the subject's scan; a row whose voxel sizes cannot be
found has no challenge scores (``null`` in the JSON, "n/a" in the tables),
and the table names its cells.
"""

import csv
import io

import numpy as np

from reproduce import report
from reproduce.experiment import (CHALLENGE_OVERLAP, FOLDS, METRICS, PAPER_TABLE1, ROWS,
                                  cell_metrics, challenge_scores, final_training_loss,
                                  row_name, held_out_arrays, held_out_file, held_out_spacing)
from tversky_keras.atomic import dumps, write_text
from tversky_keras.evaluation import lesion_metrics

# A cell whose network calls no test voxel lesion, or whose training ended at a
# Tversky loss this high, has collapsed to predicting background everywhere.
COLLAPSED_LOSS = 0.99
LABELS = {"dsc": "DSC", "sensitivity": "Sensitivity", "specificity": "Specificity",
          "f2": "F2", "apr": "APR"}
# The challenge table's columns: key, heading, and the scale and decimals it is written with.
CHALLENGE = (("ndsc", "nDSC (%)", 100, 2), ("lesion_f1", "lesion F1 (%)", 100, 2),
             ("hd95_mm", "HD95 (mm)", 1, 2), ("assd_mm", "ASSD (mm)", 1, 2),
             ("abs_volume_difference_ml", "|volume difference| (mL)", 1, 3))
CHALLENGE_KEYS = tuple(key for key, *_ in CHALLENGE)


def _load_cell_arrays(experiment, alpha, beta, fold):
    cell = experiment.cell_dir(alpha, beta, fold)
    for subject_id in experiment.split[fold][1]:
        path = held_out_file(cell, subject_id)
        arrays = held_out_arrays(path, ("label", "probability", "brain"))
        spacing = held_out_spacing(path, experiment.subjects.get(subject_id))
        yield subject_id, arrays["label"], arrays["probability"], arrays["brain"], spacing


def challenge_row(ids, truths, probs, brains, spacings):
    """A row's challenge scores: pooled over its test subjects, each subject's, and the
    per-subject mean and std of the table's columns; ``None`` when a voxel size is unknown."""
    if any(spacing is None for spacing in spacings):
        return None
    scores = challenge_scores(truths, probs, list(spacings), brains)
    subjects = dict(zip(ids, scores.pop("per_volume")))
    values = {key: np.array([s[key] for s in subjects.values()], dtype=float)
              for key in CHALLENGE_KEYS}
    return {"pooled": scores, "subjects": subjects,
            "per_subject_mean": {k: float(np.mean(v)) for k, v in values.items()},
            "per_subject_std": {k: float(np.std(v)) for k, v in values.items()}}


def assemble(experiment):
    """Table 1 from the finished cells: pooled, per-subject mean/std, lesion-wise."""
    rows, missing = [], []
    for alpha, beta in ROWS:
        folds = [f for f in FOLDS if experiment.is_done(alpha, beta, f)]
        missing += [f"{row_name(alpha, beta)}/fold{f}" for f in FOLDS if f not in folds]
        if not folds:
            rows.append({"alpha": alpha, "beta": beta, "folds": []})
            continue
        truths, probs, brains, spacings, ids = [], [], [], [], []
        per_subject, per_fold = {}, {}
        for fold in folds:
            arrays = list(_load_cell_arrays(experiment, alpha, beta, fold))
            fold_scores = lesion_metrics([a[1] for a in arrays], [a[2] for a in arrays],
                                         threshold=0.5, mask=[a[3] for a in arrays])
            final_loss = final_training_loss(experiment.cell_dir(alpha, beta, fold))
            called = int(sum(np.count_nonzero(a[2] >= 0.5) for a in arrays))
            per_fold[fold] = {**{m: fold_scores[m] for m in METRICS},
                              "final_training_loss": final_loss,
                              "predicted_lesion_voxels": called,
                              "collapsed": called == 0 or final_loss >= COLLAPSED_LOSS}
            truths += [a[1] for a in arrays]
            probs += [a[2] for a in arrays]
            brains += [a[3] for a in arrays]
            spacings += [a[4] for a in arrays]
            ids += [a[0] for a in arrays]
            per_subject.update(cell_metrics(experiment.cell_dir(alpha, beta, fold)))
        pooled = lesion_metrics(truths, probs, threshold=0.5, mask=brains)
        row = {"alpha": alpha, "beta": beta, "folds": folds,
               "collapsed_folds": [f for f in folds if per_fold[f]["collapsed"]],
               "pooled": {m: pooled[m] for m in METRICS},
               "per_subject_mean": {}, "per_subject_std": {},
               "lesion_tpr": pooled["lesion_tpr"], "lesion_fpr": pooled["lesion_fpr"],
               "subjects": per_subject, "per_fold": per_fold,
               "paper": dict(zip(METRICS, PAPER_TABLE1[(alpha, beta)])),
               "challenge": challenge_row(ids, truths, probs, brains, spacings)}
        for m in METRICS:
            values = np.array([s[m] for s in per_subject.values()], dtype=float)
            row["per_subject_mean"][m] = float(np.nanmean(values))
            row["per_subject_std"][m] = float(np.nanstd(values))
        rows.append(row)
    collapsed = [f"{row_name(r['alpha'], r['beta'])}/fold{f}" for r in rows
                 for f in r.get("collapsed_folds", [])]
    unscored = [f"{row_name(r['alpha'], r['beta'])}/fold{f}" for r in rows
                if r.get("folds") and r["challenge"] is None for f in r["folds"]]
    return {"experiment": experiment.describe(), "rows": rows, "missing_cells": missing,
            "collapsed_cells": collapsed, "challenge_overlap": CHALLENGE_OVERLAP,
            "challenge_unscored_cells": unscored}


def per_fold_table(table):
    """Each fold's own test metrics and final training loss: where a row's number comes from."""
    head = ["penalties", "fold"] + [LABELS[m] for m in METRICS] + \
        ["final training loss", "collapsed"]
    return report.markdown_table(head, (
        [f"a={row['alpha']:g}, b={row['beta']:g}", str(fold)] +
        [report.percent(scores[m]) for m in METRICS] +
        [f"{scores['final_training_loss']:.3f}", "**yes**" if scores["collapsed"] else "no"]
        for row in table["rows"] for fold, scores in sorted(row.get("per_fold", {}).items())))


def markdown_table(table):
    """Table 1 as Markdown: ours (pooled over both test folds) beside the paper's."""
    head = ["penalties"] + [f"{LABELS[m]} ours / paper" for m in METRICS] + \
        ["lesion TPR", "lesion FPR"]
    lines = report.markdown_head(head)
    for row in table["rows"]:
        cells = [f"a={row['alpha']:g}, b={row['beta']:g}"]
        for m in METRICS:
            ours = row.get("pooled", {}).get(m)
            cells.append(f"{report.percent(ours)} / {row_paper(row, m):.2f}")
        cells += [report.percent(row.get("lesion_tpr")), report.percent(row.get("lesion_fpr"))]
        lines.append(report.markdown_row(cells))
    if table["missing_cells"]:
        lines.append("")
        lines.append(f"Missing cells (not in the table): {', '.join(table['missing_cells'])}")
    if table["collapsed_cells"]:
        lines.append("")
        lines.append(f"**Collapsed cells** (no test voxel called lesion, or a final training "
                     f"loss >= {COLLAPSED_LOSS}), included above: "
                     f"{', '.join(table['collapsed_cells'])}")
    return "\n".join(lines)


def row_paper(row, metric):
    return PAPER_TABLE1[(row["alpha"], row["beta"])][METRICS.index(metric)]


def per_subject_table(table):
    """Per-subject mean ± standard deviation of each metric, in percent."""
    head = ["penalties"] + [LABELS[m] for m in METRICS]
    return report.markdown_table(head, (
        [f"a={row['alpha']:g}, b={row['beta']:g}"] +
        [f"{report.percent(row['per_subject_mean'][m])} ± {report.percent(row['per_subject_std'][m])}"
         for m in METRICS]
        for row in table["rows"] if row.get("folds")))


def table_csv(table):
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["alpha", "beta", "folds"] + [f"{m}_pooled" for m in METRICS] +
                    [f"{m}_subject_mean" for m in METRICS] + [f"{m}_subject_std" for m in METRICS] +
                    ["lesion_tpr", "lesion_fpr"] + [f"{m}_paper" for m in METRICS] +
                    ["collapsed_folds"])
    for row in table["rows"]:
        if not row.get("folds"):
            writer.writerow([row["alpha"], row["beta"], ""])
            continue
        writer.writerow([row["alpha"], row["beta"], " ".join(map(str, row["folds"]))] +
                        [row["pooled"][m] for m in METRICS] +
                        [row["per_subject_mean"][m] for m in METRICS] +
                        [row["per_subject_std"][m] for m in METRICS] +
                        [row["lesion_tpr"], row["lesion_fpr"]] +
                        [row_paper(row, m) / 100 for m in METRICS] +
                        [" ".join(map(str, row["collapsed_folds"]))])
    return out.getvalue()


def write_outputs(table, folder):
    """``table1.md``, ``table1.csv`` and ``table1.json`` in ``folder``, and the challenge
    metrics' ``table1-challenge.md`` and ``.csv``, each atomically; returns Table 1's text."""
    folder.mkdir(parents=True, exist_ok=True)
    text = ("# Table 1 (percent; ours pooled over all test voxels of both folds / paper)\n\n"
            + markdown_table(table) + "\n\n## Per-subject mean ± std (percent)\n\n"
            + per_subject_table(table) + "\n\n## Per fold (percent)\n\n"
            + per_fold_table(table) + "\n")
    challenge = (f"# Table 1's segmentations as the MS challenges score them (inside the "
                 f"brain, at probability 0.5, lesion overlap {table['challenge_overlap']!r}; "
                 f"pooled over both test folds, and per-subject mean ± std)\n\n"
                 + challenge_markdown(table) + "\n")
    for name, content in (("table1.md", text), ("table1.csv", table_csv(table)),
                          ("table1.json", dumps(table) + "\n"),
                          ("table1-challenge.md", challenge),
                          ("table1-challenge.csv", challenge_csv(table))):
        write_text(folder / name, content)
    return text


def _stat(function, values):
    """``function`` of each key's values over seeds; ``None`` for a key no seed has. A value
    read back from JSON as ``null`` (undefined) counts as NaN, so the statistic is undefined."""
    return {key: float(function(np.array(v, dtype=float))) if v else None
            for key, v in values.items()}


def seed_summary(tables):
    """Mean and spread over seeds of the pooled metrics of each row."""
    rows = []
    for index, (alpha, beta) in enumerate(ROWS):
        values = {m: [t["rows"][index]["pooled"][m] for t in tables
                      if t["rows"][index].get("folds")] for m in METRICS}
        collapsed = sum(len(t["rows"][index].get("collapsed_folds", [])) for t in tables)
        rows.append({"alpha": alpha, "beta": beta, "n_seeds": len(values["dsc"]),
                     "collapsed_cells": collapsed,
                     "mean": _stat(np.mean, values), "std": _stat(np.std, values)})
    return rows


def seed_markdown(rows):
    head = ["penalties", "seeds", "collapsed cells"] + [LABELS[m] for m in METRICS]
    lines = [report.markdown_table(head, (
        [f"a={row['alpha']:g}, b={row['beta']:g}", row["n_seeds"], row["collapsed_cells"]] +
        [f"{report.percent(row['mean'][m])} ± {report.percent(row['std'][m])}" for m in METRICS]
        for row in rows))]
    total = sum(row["collapsed_cells"] for row in rows)
    cells = sum(row["n_seeds"] * 2 for row in rows)
    lines += ["", f"Collapsed cells: {total} of {cells}."]
    return "\n".join(lines)


def challenge_value(key, value):
    """A challenge metric as its column writes it; "n/a" when missing or undefined (nan)."""
    if value is None or value != value:
        return "n/a"
    _, _, scale, digits = next(column for column in CHALLENGE if column[0] == key)
    return f"{scale * value:.{digits}f}"


def challenge_mean_std(key, mean, std):
    """``mean ± std`` of a challenge metric, as its column writes it."""
    return f"{challenge_value(key, mean)} ± {challenge_value(key, std)}"


def challenge_markdown(table):
    """The challenge metrics of each row: pooled over both test folds, and the per-subject
    mean ± std."""
    head = ["penalties"] + [f"{label} pooled" for _, label, *_ in CHALLENGE] + \
        [f"{label} per subject" for _, label, *_ in CHALLENGE]
    lines = [report.markdown_table(head, (
        [f"a={row['alpha']:g}, b={row['beta']:g}"] +
        [challenge_value(k, (row["challenge"] or {}).get("pooled", {}).get(k))
         for k in CHALLENGE_KEYS] +
        [challenge_mean_std(k, *(((row["challenge"]["per_subject_mean"][k],
                          row["challenge"]["per_subject_std"][k]) if row["challenge"]
                         else (None, None)))) for k in CHALLENGE_KEYS]
        for row in table["rows"] if row.get("folds")))]
    if table.get("challenge_unscored_cells"):
        lines += ["", "Not scored (a test file's voxel size is unknown and the subject's scan "
                      f"cannot be read): {', '.join(table['challenge_unscored_cells'])}"]
    return "\n".join(lines)


def challenge_csv(table):
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["alpha", "beta", "folds"] + [f"{k}_pooled" for k in CHALLENGE_KEYS] +
                    [f"{k}_subject_mean" for k in CHALLENGE_KEYS] +
                    [f"{k}_subject_std" for k in CHALLENGE_KEYS])
    for row in table["rows"]:
        scores = row.get("challenge")
        cells = [row["alpha"], row["beta"], " ".join(map(str, row.get("folds", [])))]
        if scores:
            cells += [scores["pooled"][k] for k in CHALLENGE_KEYS] + \
                [scores["per_subject_mean"][k] for k in CHALLENGE_KEYS] + \
                [scores["per_subject_std"][k] for k in CHALLENGE_KEYS]
        writer.writerow(cells)
    return out.getvalue()


def challenge_seed_summary(tables):
    """Mean and std (numpy's, nan where a seed's value is nan) over seeds of each row's
    pooled challenge metrics; ``None`` for a row no seed could score."""
    rows = []
    for index, (alpha, beta) in enumerate(ROWS):
        scored = [t["rows"][index]["challenge"]["pooled"] for t in tables
                  if t["rows"][index].get("challenge")]
        values = {k: [s[k] for s in scored] for k in CHALLENGE_KEYS}
        rows.append({"alpha": alpha, "beta": beta, "n_seeds": len(scored),
                     "mean": _stat(np.mean, values), "std": _stat(np.std, values)})
    return rows


def challenge_seed_markdown(rows):
    head = ["penalties", "seeds scored"] + [label for _, label, *_ in CHALLENGE]
    return report.markdown_table(head, (
        [f"a={row['alpha']:g}, b={row['beta']:g}", row["n_seeds"]] +
        [challenge_mean_std(k, row["mean"][k], row["std"][k]) for k in CHALLENGE_KEYS]
        for row in rows))


def challenge_seed_csv(rows):
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["alpha", "beta", "n_seeds"] + [f"{k}_mean" for k in CHALLENGE_KEYS] +
                    [f"{k}_std" for k in CHALLENGE_KEYS])
    for row in rows:
        writer.writerow([row["alpha"], row["beta"], row["n_seeds"]] +
                        [row["mean"][k] for k in CHALLENGE_KEYS] +
                        [row["std"][k] for k in CHALLENGE_KEYS])
    return out.getvalue()
