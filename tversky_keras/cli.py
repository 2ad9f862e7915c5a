"""The ``tversky-keras`` command line: synth, preprocess, train, predict, evaluate, baseline."""

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tversky_keras.atomic import dumps  # noqa: E402
from tversky_keras.arguments import (finite, mirror_option,  # noqa: E402
                                     negative_numbers_as_values, non_negative, output_folder,
                                     seed)
from tversky_keras.data.errors import data_warnings_as_lines  # noqa: E402
from tversky_keras.data.normalize import INTENSITY_NORMALIZATIONS  # noqa: E402
from tversky_keras.data.phantom.generate import APPEARANCES  # noqa: E402
from tversky_keras.stopping import INTERRUPTED, one_line_on_sigterm, stopped_line  # noqa: E402

# predict refuses a --window and --overlap that cut more than this many times the windows
# of overlap 0.5, unless --force (tversky_keras.inference.check_window_work).
MAX_WINDOW_FACTOR = 20


def _triple(text):
    """'48' -> (48, 48, 48); '64,64,32' -> (64, 64, 32)."""
    parts = [int(p) for p in text.replace("x", ",").split(",")]
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give one size or three (e.g. 48 or 64,64,32)")
    return tuple(parts)


def _modalities(text):
    return tuple(m.strip() for m in text.split(",") if m.strip())


def build_parser():
    parser = argparse.ArgumentParser(
        prog="tversky-keras",
        description="Tversky-loss 3D U-Nets for MS lesion segmentation (Salehi et al. 2017).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    synth = sub.add_parser("synth", help="write the synthetic MS-lesion phantom data set",
                           description="Write synthetic MS subjects as OUT/<id>/"
                                       "{T1W,T2W,FLAIR,consensus_gt}.nii.gz.")
    synth.add_argument("--out", required=True, type=output_folder, help="output folder")
    synth.add_argument("--subjects", type=int, default=15, help="number of subjects (15)")
    synth.add_argument("--seed", type=seed, default=0, help="random seed (0)")
    synth.add_argument("--spacing", type=finite, default=2.0, help="voxel size in mm (2.0)")
    synth.add_argument("--phantom-version", type=int, choices=(2, 3), default=3,
                       help="generator version: 3 (default) carries real MSLUB patients' lesions, "
                            "2 the earlier drawn ovoids")
    synth.add_argument("--appearance",
                       choices=APPEARANCES,
                       default="calibrated",
                       help="calibrated (default): the look of real MSLUB scans; randomized: "
                            "each subject its own contrasts, bias, resolution and noise; "
                            "randomized-rim: the same, half the subjects with a looser skull "
                            "strip's rim of non-brain tissue; "
                            "synthseg: each tissue's intensity drawn on its own (FLAIR's CSF "
                            "down to nulled), lesions up to very bright, looser skull strips; "
                            "mixed: subjects alternate randomized-rim and synthseg")
    synth.add_argument("--workers", type=int, default=None,
                       help="processes that make subjects at once (default: one per core when "
                            "the data set is big enough to repay their start, else 1); the "
                            "files are the same bytes whatever the number")

    preprocess = sub.add_parser(
        "preprocess", help="decode, resample and normalise a data set once, into the cache",
        description="Preprocess every subject into the cache that train reads (train does this "
                    "on its own; run this to do it ahead of time, or on a bigger machine). "
                    "Give the same --modalities, --spacing and --depth as to train.")
    preprocess.add_argument("--data", required=True, type=Path,
                            help="data folder or manifest CSV (any layout discover_subjects reads)")
    preprocess.add_argument("--out", type=output_folder, default=None,
                            help="cache folder (default: $TVERSKY_KERAS_CACHE/preprocessed or "
                                 "~/.cache/tversky-keras/preprocessed)")
    _add_grid_options(preprocess)

    train = sub.add_parser("train", help="train a U-Net with the Tversky loss",
                           description="Train a 3D U-Net; rerunning the same command resumes "
                                       "an interrupted run.")
    train.add_argument("--data", required=True, type=Path,
                       help="data folder or manifest CSV (any layout discover_subjects reads)")
    train.add_argument("--out", required=True, type=output_folder, help="run folder")
    train.add_argument("--alpha", type=finite, default=0.5, help="weight of false positives (0.5)")
    train.add_argument("--beta", type=finite, default=0.5, help="weight of false negatives (0.5)")
    train.add_argument("--gamma", type=finite, default=1.0, help="focal Tversky exponent (1: off)")
    train.add_argument("--ce-weight", type=finite, default=0.0,
                       help="add this weight x cross-entropy to the loss (0: off)")
    train.add_argument("--pool-batch", action="store_true",
                       help="one Tversky index over the whole batch instead of per sample")
    train.add_argument("--val", default="1",
                       help="validation subjects: a count taken from the end of the sorted "
                            "list, or comma-separated ids (default 1; 0 for none)")
    _add_grid_options(train)
    train.add_argument("--cache", type=output_folder, default=None,
                       help="where subjects are preprocessed to (default: as for preprocess)")
    train.add_argument("--patch", type=_triple, default=None,
                       help="train on random patches of this size (default: whole volumes)")
    train.add_argument("--foreground-ratio", type=finite, default=0.0,
                       help="fraction of patches centred on lesions (0: uniform, as the paper)")
    train.add_argument("--flips", action="store_true", help="random flips")
    train.add_argument("--intensity-augmentation", action="store_true",
                       help="nnU-Net's default intensity augmentation of each training example "
                            "(noise, blur, brightness, contrast, low resolution, gamma)")
    train.add_argument("--epochs", type=int, default=100)
    train.add_argument("--steps", type=int, default=10, help="steps per epoch (10)")
    train.add_argument("--batch-size", type=int, default=1)
    train.add_argument("--base-filters", type=int, default=16)
    train.add_argument("--normalization", choices=["batch", "instance", "group"], default=None)
    train.add_argument("--dropout", type=finite, default=0.0)
    train.add_argument("--data-format", choices=["channels_last", "channels_first"],
                       default="channels_last",
                       help="layout inside the network (its input and output stay channel-last): "
                            "channels_first is meant for Keras' torch backend on a GPU (not yet "
                            "measured there; on a CPU it was slower); "
                            "TensorFlow on a CPU compiles each channels-first convolution with XLA "
                            "(slow): keep the default there")
    train.add_argument("--lr", type=finite, default=1e-4, help="initial learning rate (1e-4)")
    train.add_argument("--init", type=Path, default=None,
                       help="start from the weights of this saved .keras model (fine-tuning; "
                            "same architecture and modalities)")
    train.add_argument("--monitor", default="val_dice",
                       help="validation metric that picks model.keras (val_dice)")
    train.add_argument("--seed", type=seed, default=0)
    train.add_argument("--mixed-precision", choices=["auto", "on", "off", "float16", "bfloat16"],
                       default="auto",
                       help="16-bit compute (auto: float16 on a GPU, off on a CPU; on: float16 "
                            "on a GPU, bfloat16 on a CPU)")
    train.add_argument("--xla", choices=["auto", "on", "off"], default="auto",
                       help="XLA jit_compile (auto: on a GPU only; slow for Conv3D on CPU)")
    train.add_argument("--tensorboard", action="store_true", help="also write TensorBoard logs")
    train.add_argument("--quiet", action="store_true", help="no progress bar")

    predict = sub.add_parser("predict", help="segment a scan with a saved model",
                             description="Write OUT/probability.nii.gz (float32) and "
                                         "OUT/mask.nii.gz (uint8) in the scan's own geometry "
                                         "(with --uncertainty also OUT/uncertainty.nii.gz and "
                                         "OUT/lesions.json), published as one set.")
    predict.add_argument("--model", required=True, type=Path, nargs="+",
                         help="a saved .keras model; several (e.g. one per fold) predict as an "
                              "ensemble: their probabilities are averaged")
    predict.add_argument("--input", type=Path, help="a subject folder")
    for modality in ("T1W", "T2W", "FLAIR"):
        predict.add_argument(f"--{modality.lower()}", dest=modality, type=Path,
                             help=f"the {modality} file (instead of --input)")
    predict.add_argument("--brain", type=Path, default=None,
                         help="a brain mask in the scans' grid: predict inside it (default: the "
                              "subject folder's brainmask if it has one, else the voxels where a "
                              "scan is not background, as skull-stripped scans are)")
    predict.add_argument("--out", required=True, type=output_folder, help="output folder")
    predict.add_argument("--threshold", type=finite, default=0.5, help="mask threshold (0.5)")
    predict.add_argument("--window", type=_triple, default=None,
                         help="sliding-window size (default: the whole volume at once)")
    predict.add_argument("--overlap", type=finite, default=0.5, help="window overlap (0.5)")
    predict.add_argument("--batch-size", type=int, default=1,
                         help="windows per batch (at most the windows there are)")
    predict.add_argument("--force", action="store_true",
                         help=f"run a --window and --overlap that cut more than "
                              f"{MAX_WINDOW_FACTOR} times the windows of overlap 0.5 (refused "
                              f"without it: a tiny window at overlap 0.99 is hours of work)")
    predict.add_argument("--mirror", type=mirror_option, default=(),
                         help="test-time mirroring, as nnU-Net: also predict the scan flipped "
                              "along every combination of these axes of the RAS orientation "
                              "(x: left-right, y: back-front, z: down-up) and average, e.g. x "
                              "(2 predictions) or x,y,z (8). Default: none")
    predict.add_argument("--uncertainty", action="store_true",
                         help="also write OUT/uncertainty.nii.gz (float32, 4D in the scan's "
                              "geometry: volume 0 the predictive entropy of the averaged "
                              "probability, volume 1 the mutual information between prediction "
                              "and member, in nats; the members are every model and mirror) and "
                              "OUT/lesions.json (one row per predicted lesion, 26-connected: "
                              "volume, centre in voxel and world mm, mean probability, entropy "
                              "and mutual information; the most uncertain first). Needs --mirror "
                              "and/or several --model")
    predict.add_argument("--modalities", type=_modalities, default=None,
                         help="only for a model saved without its input contract (not by "
                              "tversky-keras train): its input channels, in order")
    predict.add_argument("--spacing", type=finite, default=None,
                         help="only for such a model: the voxel size in mm it expects "
                              "(default: the scan's own)")

    evaluate = sub.add_parser("evaluate", help="lesion metrics of a prediction as JSON",
                              description="Voxel-wise and lesion-wise metrics of a probability "
                                          "map or mask against a ground-truth mask.")
    evaluate.add_argument("--prediction", required=True, type=Path,
                          help="probability map or binary mask (NIfTI)")
    evaluate.add_argument("--truth", required=True, type=Path, help="ground-truth mask (NIfTI)")
    evaluate.add_argument("--threshold", type=finite, default=0.5)
    evaluate.add_argument("--brain", type=Path, default=None,
                          help="count only the voxels inside this mask (e.g. the brain mask), "
                               "so that specificity is the brain's")
    evaluate.add_argument("--overlap", choices=("any", "fraction", "iou"), default="any",
                          help="when a predicted lesion detects a true one, for the lesion F1: "
                               "any voxel in common (default), a --min-overlap fraction of each "
                               "(MSSEG-style), or IoU >= --min-overlap (Shifts; default 0.25)")
    evaluate.add_argument("--min-overlap", type=finite, default=None,
                          help="the fraction (or IoU) of --overlap fraction / iou")

    baseline = sub.add_parser(
        "baseline", help="the FLAIR-threshold baseline: brain-z-scored FLAIR >= K",
        description="Write OUT/mask.nii.gz (uint8) and OUT/zscore.nii.gz (float32) in the "
                    "FLAIR's own geometry: z = (FLAIR - brain mean) / brain SD inside the "
                    "brain, lesion where z >= K. The one-line baseline a segmentation "
                    "network has to beat (tversky_keras.baseline); choose K on other scans, "
                    "never on the one you score.")
    baseline.add_argument("--flair", required=True, type=Path, help="the FLAIR scan (NIfTI)")
    baseline.add_argument("--brain", type=Path, default=None,
                          help="a brain mask in the FLAIR's grid (default: its non-zero "
                               "voxels, as a skull-stripped scan has them)")
    baseline.add_argument("--k", required=True, type=finite,
                          help="the threshold in brain z-score units")
    baseline.add_argument("--core-mm", type=non_negative, default=0.0, metavar="MM",
                          help="read the z-score's mean and SD over the brain deeper than MM "
                               "mm from its edge (6 is the package's CORE_MM: past a looser "
                               "skull strip's rim); default 0: the whole brain. K must come "
                               "from the same statistics")
    baseline.add_argument("--out", required=True, type=output_folder, help="output folder")
    return negative_numbers_as_values(parser)


def _add_grid_options(parser):
    """The options that decide the network's voxel grid, shared by preprocess and train."""
    parser.add_argument("--modalities", type=_modalities, default=("T1W", "T2W", "FLAIR"),
                        help="input channels in order (T1W,T2W,FLAIR)")
    parser.add_argument("--spacing", type=finite, default=None,
                        help="resample to this isotropic voxel size in mm (default: keep)")
    parser.add_argument("--depth", type=int, default=4,
                        help="number of poolings of the U-Net (4); the grid is padded to a "
                             "multiple of 2^depth")
    parser.add_argument("--intensity-normalization", choices=INTENSITY_NORMALIZATIONS,
                        default="zscore",
                        help="per modality, inside the brain: zscore (mean and SD, the default), "
                             "wm-peak (centred on the white-matter peak, scaled by the IQR: "
                             "moves less with the lesion load) or wm-peak-core (the same read "
                             "over the brain deeper than 6 mm, past a looser skull strip's "
                             "rim); recorded in the model")


def _split_validation(subjects, val):
    if "," in val or not val.isdigit():
        ids = {v.strip() for v in val.split(",") if v.strip()}
        if not ids:
            raise ValueError(f"--val {val!r}: names no subject; give ids, a count, or 0 for none")
        unknown = ids - {s.id for s in subjects}
        if unknown:
            raise ValueError(f"--val: no subjects named {', '.join(sorted(unknown))}")
        train = [s for s in subjects if s.id not in ids]
        if not train:
            raise ValueError(f"--val names all {len(subjects)} subjects; keep at least one to "
                             f"train")
        return train, [s for s in subjects if s.id in ids]
    n = int(val)
    if n >= len(subjects):
        raise ValueError(f"--val {n}: only {len(subjects)} subjects; keep at least one to train")
    return (subjects[: len(subjects) - n], subjects[len(subjects) - n:]) if n else (subjects, [])


def run_synth(args):
    from tversky_keras.data.phantom import synthesize_dataset
    from tversky_keras.data.phantom.dataset import default_workers

    from tversky_keras.data.phantom import SPACING_RANGE_MM

    low, high = SPACING_RANGE_MM
    if not low <= args.spacing <= high:  # before the workers are counted by it
        raise ValueError(f"--spacing {args.spacing:g}: the phantom is made at {low:g} to "
                         f"{high:g} mm")
    folders = synthesize_dataset(args.out, n_subjects=args.subjects, seed=args.seed,
                                 spacing=args.spacing, version=args.phantom_version,
                                 appearance=args.appearance,
                                 workers=(default_workers(args.subjects, args.spacing)
                                          if args.workers is None else args.workers))
    print(f"wrote {len(folders)} subjects to {args.out}")


def run_preprocess(args):
    from tversky_keras.data import discover_subjects
    from tversky_keras.data.cache import default_cache_dir, preprocess

    from tversky_keras.training import TrainConfig

    # The grid settings, checked as train checks them (the one schema).
    grid = TrainConfig(modalities=args.modalities, spacing=args.spacing, depth=args.depth,
                       intensity_normalization=args.intensity_normalization).grid()
    subjects = discover_subjects(args.data, modalities=args.modalities)
    out = args.out or default_cache_dir()

    def progress(done, total, subject_id):
        print(f"[{done}/{total}] {subject_id}", flush=True)

    volumes = preprocess(subjects, out, progress=progress, **grid)
    print(f"{len(volumes)} subjects preprocessed in {out}")


# TrainConfig fields the command line leaves at their defaults (the paper's).
NOT_ON_THE_COMMAND_LINE = ("smooth", "lr_decay_rate", "lr_decay_steps")


def train_config(args):
    """The ``TrainConfig`` of parsed ``train`` arguments (checked on creation)."""
    from tversky_keras.training import TrainConfig

    return TrainConfig(
        alpha=args.alpha, beta=args.beta, gamma=args.gamma, ce_weight=args.ce_weight,
        pool_batch=args.pool_batch,
        modalities=args.modalities, spacing=args.spacing, patch_size=args.patch,
        intensity_normalization=args.intensity_normalization,
        batch_size=args.batch_size, epochs=args.epochs, steps_per_epoch=args.steps,
        base_filters=args.base_filters, depth=args.depth, normalization=args.normalization,
        dropout=args.dropout, data_format=args.data_format, learning_rate=args.lr,
        foreground_ratio=args.foreground_ratio,
        flips=args.flips, intensity_augmentation=args.intensity_augmentation,
        monitor=args.monitor, seed=args.seed,
        mixed_precision=args.mixed_precision, jit_compile=args.xla,
        tensorboard=args.tensorboard, init=None if args.init is None else str(args.init))


def run_train(args):
    from tversky_keras.data import discover_subjects
    from tversky_keras.training import train

    from tversky_keras import cpu

    config = train_config(args)
    if not args.quiet:
        print(cpu.choice_line(), flush=True)
    subjects = discover_subjects(args.data, modalities=config.modalities)
    train_subjects, val_subjects = _split_validation(subjects, args.val)
    train(config, train_subjects, val_subjects, args.out, verbose=0 if args.quiet else 1,
          cache_dir=args.cache)


def refuse_overwriting_inputs(out, names, inputs):
    """A ValueError when writing ``out/<name>`` for a name in ``names`` would replace one
    of ``inputs`` (paths, compared resolved: symlinks and ``..`` included), before any
    work: an output folder that is the input's own folder must not eat its scans."""
    given = {Path(path).resolve(): Path(path) for path in inputs if path is not None}
    for name in names:
        target = (Path(out) / name).resolve()
        if target in given:
            raise ValueError(f"--out {out}: writing {name} there would replace the input "
                             f"{given[target]}; give another output folder")


def _subject_for_predict(args):
    from tversky_keras.data import Subject, subject_from_folder

    loose = {m: getattr(args, m) for m in ("T1W", "T2W", "FLAIR") if getattr(args, m)}
    if bool(args.input) == bool(loose):
        raise ValueError("give either --input SUBJECT_DIR or the modality files "
                         "(--t1w/--t2w/--flair), not both or neither")
    if args.input:
        subject = subject_from_folder(args.input, require_mask=False)
        return subject if args.brain is None else replace(subject, brainmask=args.brain)
    return Subject(id=loose.get("FLAIR", next(iter(loose.values()))).name.split(".")[0],
                   images=loose, mask=None, brainmask=args.brain)


def run_predict(args):
    from tversky_keras.inference import (check_ensemble, check_threshold, segment_subject,
                                         write_segmentation)
    from tversky_keras.saving import load_saved_model
    from tversky_keras.scan_spec import scan_spec

    from tversky_keras import cpu

    check_threshold(args.threshold)
    print(cpu.choice_line(), flush=True)
    if not 0 <= args.overlap < 1 or args.batch_size < 1:
        raise ValueError(f"--overlap must lie in [0, 1) and --batch-size be at least 1, got "
                         f"{args.overlap:g} and {args.batch_size}")
    if args.spacing is not None and args.spacing <= 0:
        raise ValueError(f"--spacing {args.spacing:g}: a voxel size must be positive")
    if args.uncertainty and not args.mirror and len(args.model) < 2:
        raise ValueError("--uncertainty needs --mirror and/or several --model: one prediction "
                         "has no spread to measure")
    seen = {}
    for path in args.model:  # a second copy is no second opinion: the ensemble's spread is 0
        twice = seen.setdefault(path.resolve(), path)
        if twice is not path:
            raise ValueError(f"--model: {path} is given twice (as {twice} too); an ensemble "
                             f"needs different models")
    subject = _subject_for_predict(args)
    refuse_overwriting_inputs(
        args.out, ("probability.nii.gz", "mask.nii.gz", "uncertainty.nii.gz", "lesions.json",
                   "segmentation.json"),
        [*subject.images.values(), subject.brainmask, subject.mask, *args.model])
    # Inference needs the weights only: an optimizer restored beside them is work thrown away.
    models = [load_saved_model(path, compile=False) for path in args.model]
    check_ensemble(models, names=args.model)
    spec = scan_spec(models[0])
    if spec and (args.modalities or args.spacing):
        raise ValueError(f"{args.model[0]} records its modalities and voxel size; --modalities "
                         f"and --spacing are only for models without them")
    probability, geometry, *maps = segment_subject(
        models if len(models) > 1 else models[0], subject, window=args.window,
        overlap=args.overlap, batch_size=args.batch_size, modalities=args.modalities,
        spacing=args.spacing, mirror_axes=args.mirror, uncertainty=args.uncertainty,
        max_window_factor=None if args.force else MAX_WINDOW_FACTOR,
        report=lambda line: print(f"predict: {line}", flush=True))
    about = {"model": str(args.model[0].resolve()), "mirror_axes": list(args.mirror),
             "inputs": {m: str(Path(p).resolve()) for m, p in subject.images.items()}}
    if len(models) > 1:
        about["ensemble"] = [str(path.resolve()) for path in args.model]
    prob_path, mask_path = write_segmentation(probability, geometry, args.out, args.threshold,
                                              about=about, uncertainty=maps[0] if maps else None)
    if maps:
        print(f"wrote {prob_path}, {mask_path}, {args.out / 'uncertainty.nii.gz'} and "
              f"{args.out / 'lesions.json'}")
    else:
        print(f"wrote {prob_path} and {mask_path}")


def run_evaluate(args):
    from tversky_keras.data.grid import check_same_grid
    from tversky_keras.data.io import binary_mask, read_nifti
    from tversky_keras.evaluation import challenge_metrics, lesion_metrics
    from tversky_keras.inference import check_threshold

    check_threshold(args.threshold)
    if args.overlap == "fraction" and args.min_overlap is None:
        raise ValueError("--overlap fraction needs --min-overlap: the fraction in (0, 1] of a "
                         "lesion that must overlap the other mask")
    if args.overlap == "any" and args.min_overlap is not None:
        raise ValueError("--min-overlap is the threshold of --overlap fraction or iou; "
                         "--overlap any (the default) takes none")
    truth_data, truth_image = read_nifti(args.truth)
    truth = binary_mask(truth_data, args.truth)
    prediction, prediction_image = read_nifti(args.prediction)
    check_same_grid(args.prediction, prediction_image, args.truth, truth_image)
    if prediction.min() < 0 or prediction.max() > 1:
        raise ValueError(f"{args.prediction}: values outside [0, 1]; expected a probability "
                         f"map or a binary mask")
    brain = None
    if args.brain is not None:
        brain_data, brain_image = read_nifti(args.brain)
        check_same_grid(args.brain, brain_image, args.truth, truth_image)
        brain = binary_mask(brain_data, args.brain).astype(bool)
        if not brain.any():
            raise ValueError(f"{args.brain}: the mask is empty: no voxel to score")
    result = lesion_metrics(truth, prediction, threshold=args.threshold, mask=brain)
    # The challenges' metrics after the paper's; the lesion counts they share agree.
    spacing = ras_spacing(truth_image)  # read_nifti's arrays are in RAS order
    result.update(challenge_metrics(truth, prediction, spacing, threshold=args.threshold,
                                    overlap=args.overlap, min_overlap=args.min_overlap,
                                    mask=brain))
    print(dumps({k: v for k, v in result.items() if k != "pr_curve"}))


def ras_spacing(image):
    """The voxel size in mm along the axes of ``read_nifti``'s arrays (RAS order), from the
    header's zooms, which are in the file's storage order."""
    from nibabel.orientations import io_orientation

    zooms = [float(z) for z in image.header.get_zooms()[:3]]
    spacing = [0.0] * 3
    for stored, (axis, _) in enumerate(io_orientation(image.affine)):
        spacing[int(axis)] = zooms[stored]
    return tuple(spacing)


def run_baseline(args):
    import nibabel as nib
    import numpy as np

    from tversky_keras.atomic import atomic_path
    from tversky_keras.baseline import flair_zscore, threshold_segmentation
    from tversky_keras.data.grid import check_same_grid
    from tversky_keras.data.io import binary_mask, read_nifti

    def stored(image):  # the file's own voxel order (read_nifti's is RAS)
        return np.asarray(image.dataobj, np.float32).reshape(image.shape[:3])

    refuse_overwriting_inputs(args.out, ("zscore.nii.gz", "mask.nii.gz"),
                              [args.flair, args.brain])
    _, image = read_nifti(args.flair)  # refuses a missing, bad or 4D file in one line
    flair = stored(image)
    if args.brain is None:
        brain = flair != 0
    else:
        _, brain_image = read_nifti(args.brain)
        check_same_grid(args.brain, brain_image, args.flair, image)
        brain = binary_mask(stored(brain_image), args.brain).astype(bool)
    try:
        zscore = flair_zscore(flair, brain, image.header.get_zooms()[:3], args.core_mm)
    except ValueError as error:
        raise ValueError(f"{args.flair}: {error}") from None
    mask = threshold_segmentation(zscore, brain, args.k)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in (("zscore", zscore.astype(np.float32)), ("mask", mask.astype(np.uint8))):
        out = nib.Nifti1Image(data, image.affine, image.header)
        out.set_data_dtype(data.dtype)
        out.header.set_slope_inter(1, 0)
        with atomic_path(args.out / f"{name}.nii.gz") as temporary:
            nib.save(out, temporary)
    core = f", mean and SD from the brain deeper than {args.core_mm:g} mm" if args.core_mm else ""
    print(f"wrote {args.out / 'mask.nii.gz'} ({int(mask.sum())} voxels at z >= {args.k:g}"
          f"{core}) and {args.out / 'zscore.nii.gz'}")


# Commands whose rerun continues where a stopped one left off (train's checkpoints, the
# preprocessing cache); the others write their outputs whole at the end and start over.
RESUMES = ("train", "preprocess")

COMMANDS = {"synth": run_synth, "preprocess": run_preprocess, "train": run_train,
            "predict": run_predict, "evaluate": run_evaluate, "baseline": run_baseline}


def main(argv=None):
    args = build_parser().parse_args(argv)
    program = f"tversky-keras {args.command}"
    try:
        resumes = args.command in RESUMES
        with one_line_on_sigterm(program, resumes=resumes), data_warnings_as_lines(program):
            COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(stopped_line(program, "interrupted (Ctrl-C)", resumes=args.command in RESUMES),
              file=sys.stderr)
        return INTERRUPTED
    except (ValueError, OSError, RuntimeError) as error:
        print(f"tversky-keras {args.command}: error: {error}", file=sys.stderr)
        if type(error).__name__ == "WorkerLost":
            # After a lost peer TensorFlow's collective runtime is broken: the interpreter's
            # teardown then prints tracebacks from its thread pools (closed connections) or
            # waits on them. The message is out; leave without the teardown.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
        return 1
    except MemoryError as error:
        print(f"tversky-keras {args.command}: error: out of memory ({error or 'no details'}); "
              f"a smaller --window, --patch or --batch-size, or a larger --spacing, needs less",
              file=sys.stderr)
        return 1
    return 0
