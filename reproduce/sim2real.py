"""Sim-to-real: a U-Net trained on the synthetic phantom only, segmenting real patients.

    python -m reproduce.sim2real --data ../shared/data/mslub-mni          # the default recipe
    python -m reproduce.sim2real --data PATH --seeds 5 --ensemble         # five networks as one
    python -m reproduce.sim2real --data PATH --profile paper              # for a GPU

The network is trained on every phantom subject with a profile's budget
(``reproduce.experiment.PROFILES``, or ``SIM2REAL_PROFILES``' long) and then segments every subject of PATH,
which it never saw, in the subject's own voxel grid. Each subject is scored
inside its brain against the best single FLAIR threshold chosen with the
answer known (``tversky_keras.evaluation.best_threshold_dsc``): a network that
does not beat that oracle has learnt less than one number would have.

The default recipe (chosen on the development patients 07 and 26; docs/reproduction.md):
phantom version 3 with domain randomisation and looser skull strips (``--recipe
randomized-rim``: 60 subjects for the quick profile, each its own look, half of them
with a rim of non-brain tissue), the white-matter-peak
normalisation (``--intensity-normalization wm-peak``), the Tversky loss plus the
cross-entropy (``--ce-weight 1``, as nnU-Net adds it to Dice), test-time
left-right mirroring (``--mirror x``; ``none`` turns it off) and, at test time, the
network's mask united with the FLAIR threshold whose k was chosen on the phantom alone
(``--threshold-union phantom``; ``phantom-core``: the z-score's mean and std read over
the brain deeper than 6 mm; ``none``: the network alone). No real label enters
any of it; the union is a one-line lever beside the network, and the tables say what
each part scores on its own (the network alone in ``--threshold-union none``'s folders,
the threshold alone in the baselines).

Layout (a rerun skips what is finished; other settings for the same folder are refused)::

    results/<name>/settings.json        data, profile, recipe, penalties, phantom, training
    results/<name>/run/                 the training run (tversky_keras.training)
    results/<name>/<subject>/probability.nii.gz, mask.nii.gz   in the scan's grid
    results/<name>/<subject>/metrics.json                      written last
    results/<name>/sim2real.{json,md}   every finished subject, ours vs the oracle
    results/<name>-seeds.{json,md}      with --seeds N: each subject's mean ± std

``<name>`` is ``sim2real-<profile>-v<version>-<recipe>``, then ``-<N>subjects``,
``-<MM>mm``, ``-aA_bB``, ``-augment``, ``-wmpeak``, ``-oversample<R>``, ``-ce<W>`` for
settings off the recipe's or the profile's, ``-mirror-<axes>`` (the unmirrored folder's
network, not trained again), ``-union`` or ``-union-core6`` (the same network, its mask
united with the phantom-k threshold), ``-seed<N>`` for another training seed and ``-ensemble<N>``.
"""

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from reproduce.experiment import PROFILES, SIM2REAL_PROFILES, row_name  # noqa: E402
from reproduce import report  # noqa: E402
from reproduce.phantoms import DEFAULT_CACHE, phantom_data  # noqa: E402
from reproduce.scoring import (  # noqa: E402
    CHALLENGE_HEAD, CHALLENGE_SHOWN, THRESHOLD, baselines_markdown, oracle, scan_references,
    score_subject, threshold_baselines)
from reproduce.table import challenge_mean_std, challenge_value  # noqa: E402
from tversky_keras.arguments import (finite, mirror_or_none, natural, non_negative,  # noqa: E402
                                     output_folder)
from tversky_keras.arguments import seed as seed_option  # noqa: E402
from tversky_keras.atomic import write_json, write_text  # noqa: E402
from tversky_keras.baseline import CORE_MM, threshold_union  # noqa: E402
from tversky_keras.data import discover_subjects  # noqa: E402
from tversky_keras.data.names import path_name  # noqa: E402
from tversky_keras.inference import segment_subject, write_segmentation  # noqa: E402
from tversky_keras.scan_spec import scan_spec  # noqa: E402
from tversky_keras.training import train  # noqa: E402

# Table 1's profiles, and the one only sim-to-real trains with (long).
TRAINING_PROFILES = {**PROFILES, **SIM2REAL_PROFILES}

DEFAULT_PENALTIES = (0.3, 0.7)
RUN = "run"
# What a results folder holds beside its subjects' folders.
OWN_FILES = (RUN, "settings.json", "sim2real.json", "sim2real.md")
# The MS challenges' metrics the tables show (every one is in the JSON; reproduce.scoring).


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How the phantom that trains the sim-to-real network is made.

    ``appearance``: the phantom's look (``synthesize_subject``); ``subject_factor``:
    phantom subjects per subject of the profile's phantom. With a randomized look,
    every subject is another draw of contrasts, bias, resolution and noise, so
    more subjects show the network more looks for the same training budget.
    """

    name: str
    appearance: str
    subject_factor: int
    description: str


RECIPES = {
    "calibrated": Recipe("calibrated", "calibrated", 1,
                         "the profile's phantom (15 subjects for quick), its look calibrated to "
                         "real MSLUB scans"),
    "randomized": Recipe("randomized", "randomized", 4,
                         "domain randomisation: 4 times the profile's subjects (60 for quick), "
                         "each with its own contrasts, lesion contrast, bias field, resolution "
                         "and noise"),
    "randomized-rim": Recipe("randomized-rim", "randomized-rim", 4,
                             "the randomized recipe's subjects, the same voxels inside the "
                             "brain, half of them with a looser skull strip's rim of non-brain "
                             "tissue (1-6 mm, its own intensity per modality)"),
    "synthseg": Recipe("synthseg", "synthseg", 4,
                       "SynthSeg-grade randomisation: 4 times the profile's subjects, each "
                       "tissue's intensity drawn on its own (FLAIR's CSF down to nulled), "
                       "lesions from barely visible to four times white matter, half of them "
                       "with a looser skull strip's rim of non-brain tissue"),
    "mixed": Recipe("mixed", "mixed", 4,
                    "the randomized-rim and synthseg recipes' subjects in turn (30 of each for "
                    "quick): looks around real MSLUB scans, and looks as far as nulled FLAIR "
                    "CSF and lesions four times as bright as white matter"),
    "mixed-atrophy": Recipe("mixed-atrophy", "mixed-atrophy", 4,
                            "the mixed recipe's looks on brains whose ventricles are widened "
                            "by 0-8 mm (MS atrophy) instead of 0-1 mm"),
    "randomized-csf-atrophy": Recipe(
        "randomized-csf-atrophy", "randomized-csf-atrophy", 4,
        "the randomized-rim recipe with FLAIR's CSF suppressed as real FLAIR shows it "
        "(ventricles 0-0.2, sulci 0.05-0.5 of white matter) on brains whose ventricles are "
        "widened by 0-8 mm (MS atrophy)"),
}
DEFAULT_RECIPE = "randomized-rim"
# The recipe's normalisation and test-time mirroring (chosen on the development
# patients, docs/reproduction.md): the white-matter peak does not move with the lesion load.
DEFAULT_NORMALIZATION = "wm-peak"
# Each --intensity-normalization's folder suffix.
NORMALIZATION_SUFFIX = {"zscore": "", "wm-peak": "-wmpeak", "wm-peak-core": "-wmpeakcore"}
DEFAULT_MIRROR = (0,)
# The Tversky loss plus the voxel-averaged cross-entropy (nnU-Net's Dice + CE): with the
# Tversky loss alone 1 of 5 seeds collapsed to calling nothing (docs/reproduction.md).
DEFAULT_CE_WEIGHT = 1.0
# Test-time: the network's mask united with the phantom-k FLAIR threshold, its z-score read
# over the whole brain (chosen on the development patients over 5 seeds with the
# randomized-rim recipe, where the core statistics' k scored lower, docs/reproduction.md;
# --threshold-union none: off).
DEFAULT_UNION = "phantom"
# Each --threshold-union's folder suffix (the core depth is the baselines' CORE_MM).
UNION_SUFFIX = {"phantom": "-union", "phantom-core": f"-union-core{CORE_MM:g}", "none": ""}


def phantom_manifest(phantom, version):
    """The phantom's ``phantom.json``, refused when another generator version wrote it.

    ``phantom_data`` names its folders by version, but an older generator of
    the same version number may have filled one.
    """
    manifest = json.loads((Path(phantom) / "phantom.json").read_text())
    if manifest.get("version") != version:
        raise SystemExit(f"{phantom} holds phantom version {manifest.get('version')}, not "
                         f"{version}: delete that folder (it is generated again) or give "
                         f"another --cache")
    return manifest


def train_config(profile, alpha, beta, n_subjects, seed=0, intensity_augmentation=False,
                 intensity_normalization="zscore", foreground_ratio=0.0, ce_weight=0.0):
    """The profile's training settings, on every phantom subject at the phantom's voxel size.

    The spacing is recorded in the saved model's ScanSpec, so ``segment_subject``
    resamples a 1-mm scan to the grid the network learnt on. Without it a 1-mm
    scan would be segmented as it is, with anatomy and lesions twice the size
    the quick profile's 2-mm network knows (patient26: DSC 0.34 instead of 0.61).
    """
    # Every phantom subject trains, and nothing validates.
    return profile.train_config(n_subjects, alpha=alpha, beta=beta, monitor="val_dice",
                                spacing=profile.spacing or profile.phantom_spacing, seed=seed,
                                intensity_augmentation=intensity_augmentation,
                                intensity_normalization=intensity_normalization,
                                foreground_ratio=foreground_ratio, ce_weight=ce_weight)


def check_settings(folder, settings):
    """Record ``settings`` in ``folder``, or refuse a folder that holds other ones."""
    from tversky_keras.run_folder import ADDED_LATER

    def with_defaults(values):
        # A training setting added since the folder was made: it had the default then.
        return {**values, "training": {**ADDED_LATER, **values.get("training", {})}}

    changed = report.record_settings(folder, settings, with_defaults)
    if changed:
        raise SystemExit(f"{folder} holds a run with other settings ({', '.join(changed)}): "
                         f"use another --results folder, or delete it")


def union_settings(choice, baselines, phantom):
    """``--threshold-union``'s settings: ``None`` (``none``), else ``{"threshold_union_k"}``
    (``phantom``: the phantom baseline's k), with ``"threshold_union_core_mm"`` for
    ``phantom-core`` (the core-statistics phantom baseline's k and depth)."""
    if choice == "none":
        return None
    key = "phantom_core_k" if choice == "phantom-core" else "phantom_k"
    if key not in baselines:
        raise SystemExit(f"{choice}: no core statistics ({baselines.get('core_skipped')}): "
                         f"give --threshold-union phantom or none")
    k = baselines.get(key)
    if k is None:
        raise SystemExit(f"{phantom}: the phantom holds no lesion to choose the FLAIR "
                         f"threshold's k on: give --threshold-union none")
    union = {"threshold_union_k": k}
    if choice == "phantom-core":
        union["threshold_union_core_mm"] = baselines["core_mm"]
    return union


def segment_all(model, subjects, root, about, mirror_axes=(), union=None):
    """Segment and score every subject without ``metrics.json``; return all subjects' metrics.

    ``about`` (the model) is recorded beside each segmentation; ``mirror_axes``:
    test-time mirroring (``segment_subject``); ``union`` (``union_settings``): the
    probability raised to 1 where the FLAIR z-score reaches its ``threshold_union_k``
    (``tversky_keras.baseline.threshold_union``), the z-score's statistics read over the
    brain deeper than its ``threshold_union_core_mm`` when given.
    """
    scores = {}
    for subject in subjects:
        folder = root / subject.id
        done = folder / "metrics.json"
        if done.is_file():
            print(f"skip {subject.id}: finished", flush=True)
        else:
            started = time.perf_counter()
            probability, geometry = segment_subject(model, subject, mirror_axes=mirror_axes)
            core_mm = (union or {}).get("threshold_union_core_mm", 0.0)
            # The oracle's whole-brain z-score and the union's, from one read of the scan.
            reference, *core = scan_references(subject, (0.0, core_mm) if core_mm else (0.0,))
            if union is not None:
                _, brain, flair_z = core[0] if core else reference
                probability = threshold_union(probability, flair_z, brain,
                                              union["threshold_union_k"])
            write_segmentation(probability, geometry, folder, threshold=THRESHOLD,
                               about={**about, "subject": subject.id,
                                      "mirror_axes": list(mirror_axes),
                                      **(union or {})})
            result = score_subject(subject, probability, oracle(subject, reference))
            result["seconds"] = round(time.perf_counter() - started, 1)
            write_json(result, done)
            print(f"{subject.id}: DSC {result['dsc']:.3f} (FLAIR-threshold oracle "
                  f"{result['threshold_dsc']:.3f}) in {result['seconds']} s", flush=True)
        scores[subject.id] = json.loads(done.read_text())
    return scores


def subjects_markdown(scores):
    """Ours vs the oracle per subject, in percent, then the challenge metrics ("n/a" for
    a subject scored before they existed), and the mean over subjects."""
    head = ["subject", "lesion voxels", "DSC ours", "DSC FLAIR-threshold oracle", "sensitivity",
            "specificity", "lesion TPR", "lesion FPR"] + CHALLENGE_HEAD
    keys = ("dsc", "threshold_dsc", "sensitivity", "specificity", "lesion_tpr", "lesion_fpr")
    rows = [[subject_id, s["lesion_voxels"]] + [report.percent(s[k]) for k in keys]
            + [challenge_value(k, s.get(k)) for k in CHALLENGE_SHOWN]
            for subject_id, s in sorted(scores.items())]
    if len(scores) > 1:
        rows.append(["mean", ""] + [report.percent(np.mean([s[k] for s in scores.values()]))
                                    for k in keys]
                    + [challenge_value(k, _mean_of_all(scores.values(), k))
                       for k in CHALLENGE_SHOWN])
    return report.markdown_table(head, rows)


def _mean_of_all(scores, key):
    """The mean of ``key`` over ``scores``; ``None`` when one of them lacks it."""
    values = [s.get(key) for s in scores]
    return None if None in values else float(np.mean(values))


def fraction(text):
    """A number in [0, 1], for argparse."""
    value = finite(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text}: a fraction between 0 and 1")
    return value


def phantom_voxel_size(text):
    """A voxel size the phantom generator makes (``SPACING_RANGE_MM``), for argparse."""
    from tversky_keras.data.phantom import SPACING_RANGE_MM

    value, (low, high) = finite(text), SPACING_RANGE_MM
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{text}: the phantom is generated at {low:g} to "
                                         f"{high:g} mm")
    return value


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m reproduce.sim2real",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True,
                        help="real subjects to segment (any layout discover_subjects reads)")
    parser.add_argument("--profile", choices=sorted(TRAINING_PROFILES), default="quick",
                        help="training budget: smoke (seconds), quick (default, about 3 minutes "
                             "of training on 2 CPU cores), long (about 10 minutes: a wider "
                             "U-Net, 2,000 steps), paper (for a GPU)")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default=DEFAULT_RECIPE,
                        help="how the training phantom is made: "
                             + "; ".join(f"{r.name}: {r.description}" for r in RECIPES.values())
                             + f" (default {DEFAULT_RECIPE})")
    parser.add_argument("--phantom-version", type=int, choices=(2, 3), default=3,
                        help="phantom generator version (3: real patients' lesions, default; "
                             "2: the earlier drawn ovoids)")
    parser.add_argument("--phantom-subjects", type=natural, default=None, metavar="N",
                        help="phantom subjects to train on (default: the recipe's factor "
                             "times the profile's)")
    parser.add_argument("--alpha", type=finite, default=DEFAULT_PENALTIES[0],
                        help="weight of false positives (0.3)")
    parser.add_argument("--beta", type=finite, default=DEFAULT_PENALTIES[1],
                        help="weight of false negatives (0.7)")
    parser.add_argument("--seed", type=seed_option, default=0,
                        help="training seed (0): weights and patches; the phantom stays seed 0's. "
                             "Another seed writes <name>-seed<N>")
    parser.add_argument("--seeds", type=natural, default=1, metavar="N",
                        help="train N networks (seeds --seed .. --seed + N - 1) and report "
                             "each subject's mean ± std over them in <name>-seeds.{json,md}")
    parser.add_argument("--ensemble", action="store_true",
                        help="with --seeds N: also segment with the N networks as one ensemble "
                             "(their probabilities averaged, as nnU-Net's folds), into "
                             "<name>-ensemble<N> and <name>-ensemble<N>-seeds.json")
    parser.add_argument("--mirror", type=mirror_or_none, default=DEFAULT_MIRROR,
                        help="test-time mirroring along these RAS axes (x = left-right, the "
                             "default), as tversky-keras predict --mirror, or none; writes "
                             "<name>-mirror-<axes>")
    parser.add_argument("--threshold-union", choices=sorted(UNION_SUFFIX),
                        default=DEFAULT_UNION,
                        help=f"phantom: unite the network's mask with the FLAIR threshold at "
                             f"the k chosen on the phantom alone (the phantom baseline's k, no "
                             f"real label; the probability is raised to 1 where FLAIR's brain "
                             f"z-score reaches k), written to <name>-union; phantom-core: the "
                             f"same with the z-score's mean and std read over the brain deeper "
                             f"than {CORE_MM:g} mm (the core-statistics phantom baseline), "
                             f"written to <name>{UNION_SUFFIX['phantom-core']}; none: the "
                             f"network alone (default {DEFAULT_UNION})")
    parser.add_argument("--phantom-spacing", type=phantom_voxel_size, default=None, metavar="MM",
                        help="generate the phantom at this voxel size and train on it (default: "
                             "the profile's, 2 mm for quick); writes <name>-<MM>mm")
    parser.add_argument("--intensity-augmentation", action="store_true",
                        help="train with nnU-Net's default intensity augmentation; writes "
                             "<name>-augment")
    parser.add_argument("--intensity-normalization", choices=tuple(NORMALIZATION_SUFFIX),
                        default=DEFAULT_NORMALIZATION,
                        help="normalise each modality by its white-matter peak and IQR (the "
                             "default; writes <name>-wmpeak), the same read over the brain "
                             "deeper than 6 mm (wm-peak-core: past a looser skull strip's rim; "
                             "writes <name>-wmpeakcore) or by its brain z-score, in training "
                             "and in inference alike")
    parser.add_argument("--oversample", type=fraction, default=0.0, metavar="R",
                        help="centre a fraction R of the training patches on a lesion voxel "
                             "(nnU-Net's default is 0.33; default 0: patches uniform in the "
                             "brain); writes <name>-oversample<R>")
    parser.add_argument("--ce-weight", type=non_negative, default=DEFAULT_CE_WEIGHT,
                        metavar="W",
                        help="add W times the voxel-averaged cross-entropy to the Tversky loss, "
                             "as nnU-Net adds it to Dice (default 1: no training collapsed to "
                             "calling nothing in 5 seeds, where the Tversky loss alone left 1 "
                             "of 5); 0: the Tversky loss alone. W > 0 writes <name>-ce<W>")
    parser.add_argument("--results", type=output_folder, default=Path("results"),
                        help="results folder (results/)")
    parser.add_argument("--cache", type=output_folder, default=DEFAULT_CACHE,
                        help="where the phantom is generated, and subjects preprocessed to "
                             "(CACHE/preprocessed)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.seeds < 1:
        build_parser().error(f"--seeds must be at least 1, got {args.seeds}")
    if args.ensemble and args.seeds < 2:
        build_parser().error("--ensemble needs --seeds 2 or more")
    return report.run_or_one_line("python -m reproduce.sim2real", _run, args)


def experiment_name(args, profile):
    """``sim2real-<profile>-v<version>-<recipe>[-<N>subjects][-<MM>mm][-aA_bB][-augment]``:
    what defines the training, so no two settings share a folder."""
    recipe = RECIPES[args.recipe]
    name = f"sim2real-{profile.name}-v{args.phantom_version}-{recipe.name}"
    if args.phantom_subjects is not None and args.phantom_subjects != (
            recipe.subject_factor * TRAINING_PROFILES[args.profile].phantom_subjects):
        name += f"-{args.phantom_subjects}subjects"
    if args.phantom_spacing is not None and args.phantom_spacing != TRAINING_PROFILES[
            args.profile].phantom_spacing:
        name += f"-{args.phantom_spacing:g}mm"
    if (args.alpha, args.beta) != DEFAULT_PENALTIES:
        name += f"-{row_name(args.alpha, args.beta)}"
    if args.intensity_augmentation:
        name += "-augment"
    name += NORMALIZATION_SUFFIX[args.intensity_normalization]
    if args.oversample:
        name += f"-oversample{args.oversample:g}"
    if args.ce_weight:
        name += f"-ce{args.ce_weight:g}"
    return name


def mirror_suffix(mirror_axes):
    """``-mirror-<axes>`` for test-time mirroring (its own folder), else nothing."""
    return "-mirror-" + "".join("xyz"[axis] for axis in mirror_axes) if mirror_axes else ""


def recipe_profile(args):
    """The profile, with the recipe's (or --phantom-subjects') phantom and --phantom-spacing."""
    profile = TRAINING_PROFILES[args.profile]
    subjects = args.phantom_subjects or RECIPES[args.recipe].subject_factor * \
        profile.phantom_subjects
    profile = dataclasses.replace(profile, phantom_subjects=subjects)
    if args.phantom_spacing is not None:
        # The phantom and the network's grid together, as the profile has no spacing of its own.
        profile = dataclasses.replace(profile, phantom_spacing=args.phantom_spacing)
    return profile


def _run(args):
    from tversky_keras import cpu

    started = time.perf_counter()
    print(cpu.choice_line(), flush=True)
    profile = recipe_profile(args)
    trained = experiment_name(args, profile)
    base = trained + mirror_suffix(args.mirror) + UNION_SUFFIX[args.threshold_union]
    subjects = discover_subjects(args.data)
    for subject in subjects:  # each is written to <results>/<name>/<subject>/
        path_name(subject.id, "subject", args.data, reserved=OWN_FILES)
    recipe = RECIPES[args.recipe]
    phantom = phantom_data(profile, args.cache, args.phantom_version, recipe.appearance)
    manifest = phantom_manifest(phantom, args.phantom_version)
    phantom_subjects = discover_subjects(phantom)
    baselines = threshold_baselines(subjects, phantom_subjects)
    print(f"\nFLAIR-threshold baselines\n\n{baselines_markdown(baselines)}\n", flush=True)
    union = union_settings(args.threshold_union, baselines, phantom)
    if union is not None:
        print(f"test-time: the network's mask united with FLAIR z >= "
              f"{union['threshold_union_k']:.3f} (k from the phantom alone"
              + (f"; z's statistics from the brain deeper than "
                 f"{union['threshold_union_core_mm']:g} mm" if len(union) > 1 else "")
              + ")", flush=True)
    runs = {}
    for seed in range(args.seed, args.seed + args.seeds):
        tail = "" if seed == 0 else f"-seed{seed}"
        name = base + tail
        # Mirroring is a way of predicting: the same seed's network, trained once.
        runs[name] = _train_and_segment(args, profile, recipe, manifest, phantom,
                                        phantom_subjects, subjects, seed, args.results / name,
                                        args.results / (trained + tail) / RUN, baselines,
                                        union)
        print(f"\n{name}: trained on the phantom only, tested on {args.data}\n\n"
              f"{subjects_markdown(runs[name]['subjects'])}", flush=True)
    if args.seeds > 1:
        summary = {**seed_summary(runs), "baselines": baselines,
                   "made": report.provenance(time.perf_counter() - started)}
        network = {i: f"{100 * s['dsc']['mean']:.2f} ± {100 * s['dsc']['std']:.2f}"
                   for i, s in summary["subjects"].items()}
        text = (seed_markdown(summary) + "\n\nFLAIR-threshold baselines (the network's DSC: "
                "mean ± std over seeds)\n\n" + baselines_markdown(baselines, network))
        write_json(summary, args.results / f"{base}-seeds.json")
        write_text(args.results / f"{base}-seeds.md",
                   f"# Sim-to-real over {args.seeds} training seeds ({base}; percent, "
                   f"mean ± std)\n\n{text}\n")
        print(f"\n{base}: over {args.seeds} training seeds (mean ± std)\n\n{text}")
    if args.ensemble:
        name = f"{base}-ensemble{args.seeds}"
        result = _ensemble(args, runs, subjects, args.results / name, baselines, union)
        summary = {**seed_summary({name: result}),
                   "made": report.provenance(time.perf_counter() - started)}
        summary["variant"]["ensemble"] = args.seeds
        write_json(summary, args.results / f"{name}-seeds.json")
        print(f"\n{name}: the {args.seeds} networks as one\n\n"
              f"{subjects_markdown(result['subjects'])}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


def _train_and_segment(args, profile, recipe, manifest, phantom, phantom_subjects, subjects,
                       seed, root, run, baselines=None, union=None):
    """One training seed: train (or resume, or find finished) into ``run`` on the phantom,
    then segment and score every subject into ``root``."""
    config = train_config(profile, args.alpha, args.beta, len(phantom_subjects), seed,
                          args.intensity_augmentation, args.intensity_normalization,
                          args.oversample, args.ce_weight)
    settings = {"data": str(Path(args.data).resolve()), "profile": dataclasses.asdict(profile),
                "recipe": dataclasses.asdict(recipe), "alpha": args.alpha, "beta": args.beta,
                "threshold": THRESHOLD, "mirror_axes": list(args.mirror), "phantom": manifest,
                "training": config.to_json()}
    settings |= union or {}  # only with a union: folders written before stay valid
    settings = json.loads(json.dumps(settings))  # tuples as lists, as read back
    check_settings(root, settings)
    print(f"profile {profile.name}, recipe {recipe.name}, seed {seed}: training on "
          f"{len(phantom_subjects)} phantom subjects (version {manifest['version']}) at "
          f"{config.spacing:g} mm, a={args.alpha:g} b={args.beta:g}", flush=True)
    summary = train(config, phantom_subjects, [], run, verbose=2,
                    cache_dir=args.cache / "preprocessed")
    # The fixed budget's last model: nothing real is looked at to choose it.
    model_path = run / "last.keras"
    model = keras.saving.load_model(model_path)
    scores = segment_all(model, subjects, root, about={"model": str(model_path)},
                         mirror_axes=args.mirror, union=union)
    result = {**settings, "seed": seed, "subjects": scores, "phantom_folder": str(phantom),
              "model": str(model_path), "model_spacing": scan_spec(model)["spacing"],
              "training_summary": summary, "baselines": baselines}
    return write_result(result, root)


def write_result(result, root):
    """``root/sim2real.{json,md}`` of one network's (or ensemble's) run; returns ``result``."""
    write_json(result, root / "sim2real.json")
    baselines = ""
    if result.get("baselines"):
        network = {i: report.percent(s["dsc"]) for i, s in result["subjects"].items()}
        baselines = ("\n## FLAIR-threshold baselines\n\n"
                     f"{baselines_markdown(result['baselines'], network)}\n")
    write_text(root / "sim2real.md",
               f"# Sim-to-real ({root.name}; percent, inside the brain, in each scan's grid)\n\n"
               f"{subjects_markdown(result['subjects'])}\n{baselines}")
    return result


def _ensemble(args, runs, subjects, root, baselines=None, union=None):
    """The seeds' networks as one ensemble: segment and score every subject into ``root``."""
    first = next(iter(runs.values()))
    models = [run["model"] for run in runs.values()]
    settings = {**{k: first[k] for k in ("data", "profile", "recipe", "alpha", "beta",
                                         "threshold", "mirror_axes", "phantom", "training")},
                "ensemble": models}
    settings |= union or {}
    check_settings(root, json.loads(json.dumps(settings)))
    scores = segment_all([keras.saving.load_model(path) for path in models], subjects, root,
                         about={"ensemble": models}, mirror_axes=args.mirror, union=union)
    seconds = round(sum(run["training_summary"]["seconds_this_session"]
                        for run in runs.values()), 1)
    members = ", ".join(str(run["seed"]) for run in runs.values())
    result = {**settings, "seed": f"ensemble of seeds {members}", "subjects": scores,
              "training_summary": {"seconds_this_session": seconds}, "baselines": baselines}
    return write_result(result, root)


SUMMARISED = ("dsc", "sensitivity", "specificity", "f2", "apr", "lesion_tpr", "lesion_fpr")


def seed_summary(runs):
    """Each subject's mean and std over the seeds' runs (``{name: sim2real.json}``), with the
    oracle (the same for every seed) and the runs it comes from."""
    first = next(iter(runs.values()))
    subjects = {}
    for subject_id in first["subjects"]:
        scores = [run["subjects"][subject_id] for run in runs.values()]
        subjects[subject_id] = {
            **{key: _over_seeds(scores, key) for key in SUMMARISED},
            # Scores written before the challenge metrics existed have none to summarise.
            **{key: (_over_seeds(scores, key) if all(key in s for s in scores) else None)
               for key in CHALLENGE_SHOWN},
            "threshold_dsc": float(scores[0]["threshold_dsc"]),
            "lesion_voxels": int(scores[0]["lesion_voxels"]),
            "above_oracle": int(sum(s["dsc"] > s["threshold_dsc"] for s in scores))}
    return {"runs": list(runs), "seeds": [run["seed"] for run in runs.values()],
            "variant": {key: first[key] for key in ("recipe", "alpha", "beta", "mirror_axes")}
            | {"phantom_version": first["phantom"]["version"],
               "phantom_subjects": first["phantom"]["n_subjects"],
               "phantom_spacing": first["phantom"]["spacing"],
               "intensity_augmentation": first["training"]["intensity_augmentation"],
               "intensity_normalization": first["training"].get("intensity_normalization",
                                                                "zscore"),
               "foreground_ratio": first["training"].get("foreground_ratio", 0.0),
               "ce_weight": first["training"].get("ce_weight", 0.0),
               "threshold_union_k": first.get("threshold_union_k"),
               "threshold_union_core_mm": first.get("threshold_union_core_mm"),
               "profile": first["profile"]["name"], "steps": first["training"]["epochs"]
               * first["training"]["steps_per_epoch"]},
            # Per seed, from the runs' own records (a rerun that only summarises keeps them).
            "seconds": {"training": [run["training_summary"]["seconds_this_session"]
                                     for run in runs.values()],
                        "segmentation": [round(sum(s["seconds"] for s in run["subjects"].values()),
                                               1) for run in runs.values()]},
            "subjects": subjects}


def _over_seeds(scores, key):
    """Mean, std and values of ``key`` over the seeds' scores. A value undefined for its
    scan (NaN, read back from JSON as ``None``: an HD95 with nothing predicted) makes the
    mean and std undefined too, written as ``null``."""
    return report.spread([s[key] for s in scores])


def seed_markdown(summary):
    """Per subject: mean ± std over seeds of our DSC (and how many seeds beat the oracle),
    the oracle, sensitivity, specificity, F2, APR, lesion-wise TPR / FPR and the challenge
    metrics (n/a where a seed's scores lack them)."""
    head = ["subject", "lesion voxels", "DSC ours", "seeds above oracle",
            "DSC FLAIR-threshold oracle", "sensitivity", "specificity", "F2", "APR",
            "lesion TPR", "lesion FPR"] + CHALLENGE_HEAD
    n = len(summary["seeds"])

    def cell(value):
        return f"{100 * value['mean']:.2f} ± {100 * value['std']:.2f}"

    rows = [[subject_id, s["lesion_voxels"], cell(s["dsc"]), f"{s['above_oracle']}/{n}",
             report.percent(s["threshold_dsc"])]
            + [cell(s[k]) for k in ("sensitivity", "specificity", "f2", "apr", "lesion_tpr",
                                    "lesion_fpr")]
            + [challenge_mean_std(k, *((s[k]["mean"], s[k]["std"]) if s.get(k) else (None, None)))
               for k in CHALLENGE_SHOWN]
            for subject_id, s in sorted(summary["subjects"].items())]
    return report.markdown_table(head, rows)


if __name__ == "__main__":
    sys.exit(main())
