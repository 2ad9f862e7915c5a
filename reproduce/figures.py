"""Regenerate the paper's figures from saved results, without retraining.

    python -m reproduce.figures [--results results/] [--figures figures/]

Writes into ``figures/<experiment>/``:

- ``fig2_pr_curves.png``: precision-recall curves, one per (alpha, beta):
  (a) all test data, (b) the test subject with the highest lesion density,
  (c) the one with the lowest (with at least one lesion voxel);
- ``fig3_high_density.png`` / ``fig4_low_density.png``: axial FLAIR slices of
  those subjects with each row's segmentation against the truth
  (true positives green, false positives red, false negatives blue);
- ``training_curves.png``: training loss and Dice of every cell.
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from reproduce.experiment import (ROWS, cell_metrics, finished_cells, held_out_arrays,  # noqa: E402
                                  held_out_subjects)
from tversky_keras.arguments import output_folder  # noqa: E402
from tversky_keras.atomic import atomic_path  # noqa: E402
from tversky_keras.evaluation import precision_recall_curve  # noqa: E402
from tversky_keras.run_folder import log_dataframe  # noqa: E402

COLOURS = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(ROWS)))


def _test_files(cells):
    """{subject id: test array file} over the finished folds of one row."""
    files = {}
    for cell in cells:
        files.update(held_out_subjects(cell))
    return files


def _density_extremes(cells):
    """Test subjects with the highest and lowest (non-zero) lesion density."""
    densities = {}
    for cell in cells:
        for subject_id, scores in cell_metrics(cell).items():
            densities[subject_id] = scores["lesion_density"]
    with_lesions = {k: v for k, v in densities.items() if v > 0}
    if not with_lesions:
        return None, None
    return max(with_lesions, key=with_lesions.get), min(with_lesions, key=with_lesions.get)


def _save(fig, path):
    try:
        with atomic_path(path) as temporary:
            fig.savefig(temporary, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def _pr_panel(ax, cells_by_row, subject, title):
    for colour, ((alpha, beta), cells) in zip(COLOURS, cells_by_row.items()):
        truths, probs = [], []
        for subject_id, path in _test_files(cells).items():
            if subject is not None and subject_id != subject:
                continue
            arrays = held_out_arrays(path, ("label", "probability", "brain"))
            truths.append(arrays["label"][arrays["brain"]])
            probs.append(arrays["probability"][arrays["brain"]])
        if not truths or not np.concatenate(truths).any():
            continue
        precision, recall, _ = precision_recall_curve(np.concatenate(truths),
                                                      np.concatenate(probs))
        # One point per distinct probability is ~10^6 points; 4000 draw the same line.
        keep = np.unique(np.linspace(0, recall.size - 1, 4000).astype(int))
        ax.plot(recall[keep], precision[keep], color=colour, lw=1.5, label=f"a={alpha:g}, b={beta:g}")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)


def pr_figure(cells_by_row, high, low, path):
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    _pr_panel(axes[0], cells_by_row, None, "(a) all test data")
    _pr_panel(axes[1], cells_by_row, high, f"(b) high lesion density: {high}")
    _pr_panel(axes[2], cells_by_row, low, f"(c) low lesion density: {low}")
    axes[0].legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def _overlay(label, mask):
    """RGBA overlay: TP green, FP red, FN blue, transparent elsewhere."""
    rgba = np.zeros(label.shape + (4,), np.float32)
    rgba[(mask == 1) & (label == 1)] = (0.1, 0.9, 0.1, 0.9)
    rgba[(mask == 1) & (label == 0)] = (1.0, 0.15, 0.15, 0.9)
    rgba[(mask == 0) & (label == 1)] = (0.2, 0.4, 1.0, 0.9)
    return rgba


def lesion_slices(label, n_slices):
    """Axial slices with the most lesion voxels, at least a few slices apart."""
    per_slice = label.sum(axis=(0, 1))
    gap = max(2, label.shape[2] // 16)
    chosen = []
    for z in np.argsort(per_slice)[::-1]:
        if per_slice[z] == 0 or len(chosen) == n_slices:
            break
        if all(abs(int(z) - c) >= gap for c in chosen):
            chosen.append(int(z))
    return sorted(chosen) or [label.shape[2] // 2]


def segmentation_figure(cells_by_row, subject, title, path, n_slices=3):
    """Rows: the (alpha, beta) settings; columns: axial slices through the lesions."""
    loaded = {}
    for key, cells in cells_by_row.items():
        file = _test_files(cells).get(subject)
        if file is not None:
            loaded[key] = held_out_arrays(file, ("label", "probability", "flair"))
    if not loaded:
        return None
    slices = lesion_slices(next(iter(loaded.values()))["label"], n_slices)
    fig, axes = plt.subplots(len(loaded), len(slices),
                             figsize=(3 * len(slices), 3 * len(loaded)), squeeze=False)
    for r, ((alpha, beta), arrays) in enumerate(loaded.items()):
        mask = (arrays["probability"] >= 0.5).astype(np.uint8)
        for c, z in enumerate(slices):
            ax = axes[r, c]
            ax.imshow(np.rot90(arrays["flair"][:, :, z].astype(np.float32)), cmap="gray",
                      vmin=-2, vmax=3)
            ax.imshow(np.rot90(_overlay(arrays["label"][:, :, z], mask[:, :, z])))
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"a={alpha:g}, b={beta:g}")
            if r == 0:
                ax.set_title(f"axial slice {z}")
    fig.suptitle(f"{title}: {subject} (green TP, red FP, blue FN)")
    return _save(fig, path)


def training_curves(cells_by_row, path):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for colour, ((alpha, beta), cells) in zip(COLOURS, cells_by_row.items()):
        for cell in cells:
            log = log_dataframe(cell / "run")
            if not log:
                continue
            style = "-" if cell.name == "fold0" else "--"
            label = f"a={alpha:g}, b={beta:g} {cell.name}"
            axes[0].plot(log["epoch"] + 1, log["loss"], style, color=colour, label=label)
            axes[1].plot(log["epoch"] + 1, log["dice"], style, color=colour)
    axes[0].set(xlabel="epoch", ylabel="training loss (1 - Tversky index)")
    axes[1].set(xlabel="epoch", ylabel="training Dice (threshold 0.5)")
    axes[0].legend(fontsize=7, ncol=2)
    for ax in axes:
        ax.grid(alpha=0.3)
    return _save(fig, path)


def make_figures(results, out_dir):
    """Every figure of one experiment folder; returns the written paths."""
    results, out_dir = Path(results), Path(out_dir)
    cells_by_row = {k: v for k, v in finished_cells(results).items() if v}
    if not cells_by_row:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    high, low = _density_extremes(next(iter(cells_by_row.values())))
    written = [pr_figure(cells_by_row, high, low, out_dir / "fig2_pr_curves.png"),
               training_curves(cells_by_row, out_dir / "training_curves.png")]
    if high is not None:
        written.append(segmentation_figure(cells_by_row, high, "Fig. 3, high lesion density",
                                           out_dir / "fig3_high_density.png"))
        written.append(segmentation_figure(cells_by_row, low, "Fig. 4, low lesion density",
                                           out_dir / "fig4_low_density.png"))
    return [p for p in written if p is not None]


def experiment_folders(results):
    """``results`` itself if it is an experiment folder, else the experiments inside it."""
    results = Path(results)
    if (results / "experiment.json").is_file():
        return [results]
    return sorted(p.parent for p in results.glob("*/experiment.json"))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m reproduce.figures",
                                     description="Regenerate the paper's figures from results.")
    parser.add_argument("--results", type=Path, default=Path("results"),
                        help="the results folder, or one experiment in it (results/)")
    parser.add_argument("--figures", type=output_folder, default=Path("figures"),
                        help="output folder; each experiment gets a subfolder (figures/)")
    args = parser.parse_args(argv)
    experiments = experiment_folders(args.results)
    if not experiments:
        raise SystemExit(f"{args.results}: no experiment results found (run reproduce.table1)")
    for folder in experiments:
        for path in make_figures(folder, args.figures / folder.name):
            print(f"figure: {path}")


if __name__ == "__main__":
    main()
