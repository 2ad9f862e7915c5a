"""Is an ensemble's uncertainty informative on real scans? Retention curves and lesion ranks.

``python -m reproduce.sim2real_grid --ensemble --mirror x --uncertainty`` calls
:func:`retention_scores` for each (alpha, beta) row's ensemble on each real
subject: the row's models and their mirrors are the members
(``segment_subject(..., uncertainty=True)``), the segmentation is their mean
probability at ``THRESHOLD``, and each uncertainty map (predictive entropy,
and mutual information with two members or more) is scored inside the brain
by ``tversky_keras.retention``: the voxel-wise nDSC and lesion-wise F1
retention curves against the ideal and random rankings, and whether false
predicted lesions are more uncertain than correct ones (the AUROC of the
lesions' mean uncertainty for telling them apart: 0.5 is chance).
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from reproduce import report  # noqa: E402
from reproduce.experiment import row_penalties  # noqa: E402
from reproduce.scoring import THRESHOLD  # noqa: E402
from tversky_keras.atomic import atomic_path  # noqa: E402
from tversky_keras.retention import lesion_retention_curve, voxel_retention_curve  # noqa: E402

MEASURES = ("entropy", "mutual_information")
# Lesions as the tables count them: 26-connected, found when any voxel overlaps.
OVERLAP = "any"


def retention_scores(probability, maps, truth, brain):
    """Retention curves and lesion ranks of one subject's ensemble, per uncertainty measure.

    Args:
        probability: the ensemble's mean lesion probability, in the scan's grid.
        maps: ``uncertainty_maps``' dict in the same grid.
        truth, brain: the subject's lesion and brain masks (``scan_reference``).

    Returns:
        ``{measure: {"voxel": voxel curve, "lesion": lesion curve, "lesions":
        lesion summary}}`` for each measure ``maps`` holds; the lesion curve
        without its per-lesion list, which the summary condenses.
    """
    predicted = (probability >= THRESHOLD) & brain
    truth = truth & brain
    scores = {}
    for measure in MEASURES:
        if measure not in maps:
            continue
        uncertainty = np.where(brain, maps[measure], 0.0)
        lesion = lesion_retention_curve(truth, predicted, uncertainty, overlap=OVERLAP)
        scores[measure] = {"voxel": voxel_retention_curve(truth, predicted, uncertainty,
                                                          mask=brain),
                           "lesion": {k: v for k, v in lesion.items() if k != "lesions"},
                           "lesions": lesion_ranks(lesion["lesions"])}
    return scores


def lesion_ranks(lesions):
    """Mean uncertainty of the correct and of the false predicted lesions, their counts,
    and the AUROC of the uncertainty for telling false from correct (``None`` without
    both kinds)."""
    correct = [lesion["uncertainty"] for lesion in lesions if lesion["correct"]]
    false = [lesion["uncertainty"] for lesion in lesions if not lesion["correct"]]
    auroc = None
    if correct and false:
        auroc = float(roc_auc_score([0] * len(correct) + [1] * len(false), correct + false))
    return {"correct": len(correct), "false": len(false),
            "correct_mean": float(np.mean(correct)) if correct else None,
            "false_mean": float(np.mean(false)) if false else None,
            "false_vs_correct_auroc": auroc}


HEAD = ["penalties", "subject", "members", "voxel nDSC AUC ours", "ideal", "random",
        "lesion F1 AUC ours", "ideal", "random", "correct / false lesions",
        "mean entropy correct / false", "AUROC false vs correct"]


def markdown(summary, measure="entropy"):
    """One line per (row, subject): the areas under the retention curves of ``measure``
    against the ideal and random rankings, and the lesion ranks (percent for areas)."""
    rows = []
    # The paper's order, 0.5/0.5 first (the JSON's keys are sorted).
    for row, by_subject in sorted(summary.items(), key=lambda item: -row_penalties(item[0])[0]):
        alpha, beta = row[1:].split("_b")
        for subject_id, entry in sorted(by_subject.items()):
            scores = entry["measures"][measure]
            voxel, lesion, ranks = scores["voxel"], scores["lesion"], scores["lesions"]
            rows.append([f"a={alpha}, b={beta}", subject_id, entry["members"],
                         report.percent(voxel["auc"]), report.percent(voxel["ideal_auc"]),
                         report.percent(voxel["random_auc"]), report.percent(lesion["auc"]),
                         report.percent(lesion["ideal_auc"]),
                         report.percent(lesion["random_auc"]),
                         f"{ranks['correct']} / {ranks['false']}",
                         f"{_maybe(ranks['correct_mean'])} / {_maybe(ranks['false_mean'])}",
                         _maybe(ranks["false_vs_correct_auroc"], 2)])
    return report.markdown_table(HEAD, rows)


def _maybe(value, digits=3):
    return "n/a" if value is None else f"{value:.{digits}f}"


def figure(summary, row, path, measure="entropy"):
    """Retention curves of one row's ensemble: a line of two panels (voxel nDSC, lesion F1)
    per subject, ours against the ideal and random rankings."""
    subjects = sorted(summary[row])
    fig, axes = plt.subplots(len(subjects), 2, figsize=(9, 3.2 * len(subjects)), squeeze=False)
    alpha, beta = row[1:].split("_b")
    for line, subject_id in zip(axes, subjects):
        scores = summary[row][subject_id]["measures"][measure]
        for axis, (kind, key, label) in zip(line, (("voxel", "ndsc", "nDSC"),
                                                   ("lesion", "f1", "lesion F1"))):
            curve = scores[kind]
            for name, style, text in ((key, "-", "ours"), ("ideal", "--", "ideal"),
                                      ("random", ":", "random")):
                area = curve["auc" if name == key else f"{name}_auc"]
                axis.plot(curve["fractions"], curve[name], style,
                          label=f"{text} (AUC {area:.3f})")
            axis.set_xlabel(f"fraction of {'voxels' if kind == 'voxel' else 'lesions'} retained")
            axis.set_ylabel(label)
            axis.set_title(f"{subject_id}: {label}", fontsize=10)
            axis.set_ylim(0, 1.02)
            axis.legend(fontsize=8, loc="lower left")
    fig.suptitle(f"Retention by {measure.replace('_', ' ')}: a={alpha}, b={beta} ensemble "
                 f"({summary[row][subjects[0]]['members']} members)", fontsize=11)
    fig.tight_layout()
    try:
        with atomic_path(path) as temporary:
            fig.savefig(temporary, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path
