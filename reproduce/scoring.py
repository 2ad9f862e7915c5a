"""Scoring a segmentation of a real scan: inside its brain, against the FLAIR-threshold oracle.

``reproduce.sim2real`` and ``reproduce.sim2real_grid`` score every subject here: our
metrics at probability ``THRESHOLD``, and the best single threshold on the
subject's brain z-scored FLAIR chosen with the answer known
(``tversky_keras.evaluation.best_threshold_dsc``), which a network must beat to
have learnt more than one number. The MS challenges' metrics
(``reproduce.experiment.challenge_scores``: nDSC, lesion F1, HD95, ASSD,
volumes) come with them, at the voxel size of the scan's file.
"""

import nibabel as nib
import numpy as np

from reproduce import report
from reproduce.experiment import challenge_scores
from tversky_keras.baseline import (CORE_MM, choose_k, flair_zscore, leave_one_out_k,
                                   threshold_segmentation)
from tversky_keras.data import from_grid, load_subject, zscore_in_brain
from tversky_keras.evaluation import best_threshold_dsc, lesion_metrics

THRESHOLD = 0.5
# The challenge metrics the sim-to-real tables show, and their column heads.
CHALLENGE_SHOWN = ("ndsc", "lesion_f1", "hd95_mm", "abs_volume_difference_ml")
CHALLENGE_HEAD = ["nDSC", "lesion F1", "HD95 mm", "|volume difference| mL"]
REPORTED = ("dsc", "sensitivity", "specificity", "lesion_tpr", "lesion_fpr")


def scan_reference(subject, core_mm=0.0):
    """Truth, brain and brain z-scored FLAIR of a subject, in its file's own voxel order.

    ``core_mm``: the z-score's mean and std read over the brain deeper than that
    (``tversky_keras.baseline.flair_zscore``); 0: the whole brain.

    The brain is ``load_subject``'s (the brain mask, else the non-zero voxels),
    and the arrays are those of the scan's grid, as the written segmentation.
    The z-score is not clipped: the network's input is clipped at the brain's
    99.5th percentile, which is where real lesions sit, and a clipped FLAIR
    would lower the oracle (patient07: DSC 0.135 instead of 0.206).
    """
    return scan_references(subject, (core_mm,))[0]


def scan_references(subject, depths):
    """``scan_reference`` at each core depth of ``depths`` (0: the whole brain), the scan
    read once: a list of ``(truth, brain, zscore)``, the truth and brain shared.

    Raises:
        ValueError: naming the FLAIR, when a depth leaves no brain to read statistics from.
    """
    volume = load_subject(subject, modalities=("FLAIR",), normalize=False)

    def native(array, order):
        return from_grid(array, volume.geometry, order=order)

    truth, brain = native(volume.label, 0).astype(bool), native(volume.brain, 0)
    references = []
    for core_mm in depths:
        if core_mm:
            try:
                flair = flair_zscore(volume.image[..., 0], volume.brain,
                                     volume.geometry.spacing, core_mm)
            except ValueError as error:
                raise ValueError(f"{subject.images['FLAIR']}: {error}") from None
        else:
            flair = zscore_in_brain(volume.image[..., 0], volume.brain, clip_percentiles=None)
        references.append((truth, brain, native(flair, 1)))
    return references


def scan_spacing(subject):
    """The voxel size in mm along the file's own axes (its NIfTI zooms), as ``scan_reference``'s
    arrays are stored; the FLAIR's, which every other scan of the subject shares."""
    return tuple(float(z) for z in nib.load(subject.images["FLAIR"]).header.get_zooms()[:3])


def oracle(subject, reference=None):
    """Truth and brain of a subject (``scan_reference``, or ``reference`` when already
    read) and its FLAIR-threshold oracle: ``(truth, brain, best DSC, its FLAIR z
    threshold)``."""
    truth, brain, flair = reference or scan_reference(subject)
    return (truth, brain) + tuple(best_threshold_dsc(truth, flair, mask=brain))


def score_subject(subject, probability, reference=None):
    """Our metrics at ``THRESHOLD``, the FLAIR-threshold oracle and the challenge metrics
    (``challenge_scores``, at ``scan_spacing``), inside the brain.

    ``reference``: the subject's ``oracle``, when already computed."""
    truth, brain, oracle_dsc, oracle_threshold = reference or oracle(subject)
    ours = lesion_metrics(truth, probability, threshold=THRESHOLD, mask=brain)
    spacing = scan_spacing(subject)
    return {**{m: ours[m] for m in REPORTED}, "f2": ours["f2"], "apr": ours["apr"],
            "threshold_dsc": oracle_dsc, "threshold_flair_z": oracle_threshold,
            "lesion_voxels": int(np.count_nonzero(truth & brain)),
            "n_true_lesions": ours["n_true_lesions"], "n_pred_lesions": ours["n_pred_lesions"],
            **challenge_scores(truth, probability, spacing, brain), "spacing_mm": list(spacing)}


def _baseline_scores(truth, brain, zscore, k):
    """The FLAIR threshold ``k``'s DSC, sensitivity and specificity inside the brain."""
    if k is None:
        return None
    called = threshold_segmentation(zscore, brain, k)
    scores = lesion_metrics(truth, called.astype(np.float32), threshold=THRESHOLD, mask=brain)
    return {"k": float(k), **{m: scores[m] for m in ("dsc", "sensitivity", "specificity")}}


def threshold_baselines(subjects, phantom_subjects, core_mm=CORE_MM):
    """The FLAIR-threshold baselines (``tversky_keras.baseline``) on every subject.

    - ``leave_one_out``: each subject thresholded at the ``k`` chosen on the other
      subjects (pooled DSC), none when there is only one;
    - ``phantom``: every subject thresholded at the ``k`` chosen on the phantom's
      subjects alone (the phantom-only baseline: no real scan chose it);
    - ``leave_one_out_core`` and ``phantom_core``: the same with the z-score's mean and
      std read over the brain deeper than ``core_mm`` (``flair_zscore``), when
      ``core_mm`` is not 0 and every brain has voxels that deep (else ``"core_skipped"``
      says which has none).

    The whole-brain z-score is ``scan_reference``'s (brain mean and std, unclipped), so
    ``k`` is in the units of the oracle's ``threshold_flair_z``.

    Returns:
        ``{"phantom_k", "phantom_dsc" (pooled, on the phantom), "n_phantom_subjects",
        "core_mm", "phantom_core_k", "phantom_core_dsc",
        "subjects": {id: {"leave_one_out": {k, dsc, sensitivity, specificity} | None,
        "phantom": {...}, "leave_one_out_core": ..., "phantom_core": ...}}}``.
    """
    result = {"normalization": "FLAIR z-score: brain mean and std, unclipped",
              "n_phantom_subjects": len(phantom_subjects), "subjects": {}}
    depths = (0.0, float(core_mm)) if core_mm else (0.0,)

    def read(subject):  # every depth from one read of the scan
        nonlocal depths
        try:
            return scan_references(subject, depths)
        except ValueError as error:
            if len(depths) == 1:
                raise
            result["core_skipped"] = str(error)  # a brain too small: no core rows
            depths = depths[:1]
            return scan_references(subject, depths)

    real = {s.id: read(s) for s in subjects}
    phantom = [read(s) for s in phantom_subjects]
    for index, suffix in enumerate(("", "_core")[:len(depths)]):
        references = {i: refs[index] for i, refs in real.items()}
        phantom_k, phantom_dsc = choose_k(*zip(*[(t, z, b) for t, b, z in
                                                 (refs[index] for refs in phantom)]))
        others = leave_one_out_k({i: (t, z, b) for i, (t, b, z) in references.items()})
        result |= {f"phantom{suffix}_k": phantom_k, f"phantom{suffix}_dsc": phantom_dsc}
        for i, (t, b, z) in references.items():
            result["subjects"].setdefault(i, {}).update({
                f"leave_one_out{suffix}": _baseline_scores(t, b, z, others[i]),
                f"phantom{suffix}": _baseline_scores(t, b, z, phantom_k)})
    if len(depths) > 1:
        result["core_mm"] = depths[1]
    return result


BASELINES = {"leave_one_out": "FLAIR threshold, k from the other subjects",
             "phantom": "FLAIR threshold, k from the phantom",
             "leave_one_out_core": "FLAIR threshold (core statistics), k from the other "
                                   "subjects",
             "phantom_core": "FLAIR threshold (core statistics), k from the phantom"}


def baselines_markdown(baselines, network=None):
    """The FLAIR-threshold baselines per subject (``reproduce.scoring.threshold_baselines``):
    each one's k, DSC, sensitivity and specificity in percent, beside the network's DSC
    (``network``: ``{subject: text}``, e.g. a mean ± std over seeds) where given."""
    head = ["subject", "method", "k (brain z)", "DSC", "sensitivity", "specificity"]
    rows = []
    for subject_id, methods in sorted(baselines["subjects"].items()):
        if network is not None:
            rows.append([subject_id, "the network", "", network.get(subject_id, "n/a"), "", ""])
        for key, label in BASELINES.items():
            if key not in methods:  # core rows: only in baselines made with core_mm
                continue
            scores = methods.get(key)
            rows.append([subject_id, label] + (
                ["n/a (one subject)", "", "", ""] if scores is None else
                [f"{scores['k']:.2f}"] + [report.percent(scores[m])
                                          for m in ("dsc", "sensitivity", "specificity")]))
    return (report.markdown_table(head, rows) + f"\n\nk from the phantom: chosen on its "
            f"{baselines['n_phantom_subjects']} subjects alone (pooled DSC there "
            f"{report.percent(baselines['phantom_dsc'])}); k from the other subjects: chosen "
            f"on every other subject of the data, their lesions known."
            + ("" if "core_mm" not in baselines else
               f" Core statistics: the z-score's mean and std read over the brain deeper "
               f"than {baselines['core_mm']:g} mm from its edge (k from the phantom "
               f"{baselines['phantom_core_k']:.2f})."))
