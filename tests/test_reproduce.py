"""The paper's experiment: fold split, cells, table assembly, figures (smoke profile)."""

import csv
import json
import shutil

import numpy as np
import pytest

from reproduce import table1
from reproduce.experiment import METRICS, PAPER_TABLE1, ROWS, two_fold_split


@pytest.mark.parametrize("n", [2, 3, 15])
def test_two_fold_split_is_disjoint_covering_and_deterministic(n):
    ids = [f"s{i:02d}" for i in range(n)]
    folds = two_fold_split(ids[::-1], seed=0)
    (train0, test0), (train1, test1) = folds
    assert set(test0).isdisjoint(test1) and set(test0) | set(test1) == set(ids)
    assert set(train0) == set(test1) and set(train1) == set(test0)
    assert abs(len(test0) - len(test1)) <= 1
    assert folds == two_fold_split(ids, seed=0)
    if n > 3:
        assert two_fold_split(ids, seed=1) != folds


def test_two_fold_split_needs_two_subjects():
    with pytest.raises(ValueError, match="at least 2"):
        two_fold_split(["only"])


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    args = ["--profile", "smoke", "--results", str(root / "results"),
            "--figures", str(root / "figures"), "--cache", str(root / "cache")]
    assert table1.main(args) == 0
    return root, args


def test_smoke_profile_writes_the_table_with_five_rows_and_five_metrics(smoke_run):
    root, _ = smoke_run
    folder = root / "results" / "phantom-smoke"
    table = json.loads((folder / "table1.json").read_text())
    assert [(r["alpha"], r["beta"]) for r in table["rows"]] == list(ROWS)
    assert table["missing_cells"] == []
    for row in table["rows"]:
        assert row["folds"] == [0, 1]
        assert set(row["pooled"]) == set(METRICS)
        assert all(0.0 <= v <= 1.0 for v in row["pooled"].values() if v == v)
        assert row["paper"]["dsc"] == PAPER_TABLE1[(row["alpha"], row["beta"])][0]
        assert sorted(row["per_fold"]) == ["0", "1"]
        # The pooled DSC lies between the two folds' own values.
        folds = [row["per_fold"][k]["dsc"] for k in ("0", "1")]
        assert min(folds) - 1e-12 <= row["pooled"]["dsc"] <= max(folds) + 1e-12
    with open(folder / "table1.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 and {f"{m}_pooled" for m in METRICS} <= set(rows[0])
    markdown = (folder / "table1.md").read_text()
    assert markdown.count("| a=") == 20          # five rows in two tables, ten in the per-fold one
    assert "## Per fold" in markdown
    assert "53.42" in markdown                   # the paper's Dice-row DSC beside ours


def test_smoke_profile_writes_the_figures(smoke_run):
    root, _ = smoke_run
    names = {p.name for p in (root / "figures" / "phantom-smoke").glob("*.png")}
    assert {"fig2_pr_curves.png", "training_curves.png", "fig3_high_density.png",
            "fig4_low_density.png"} <= names


def test_rerun_skips_finished_cells(smoke_run, capsys):
    root, args = smoke_run
    cell = root / "results" / "phantom-smoke" / "a0.5_b0.5" / "fold0"
    stamp = (cell / "done.json").stat().st_mtime_ns
    assert table1.main(args + ["--no-figures"]) == 0
    out = capsys.readouterr().out
    assert out.count("skip ") == 10
    assert (cell / "done.json").stat().st_mtime_ns == stamp


def test_table_from_partial_results_names_the_missing_cells(smoke_run, tmp_path):
    root, _ = smoke_run
    partial = tmp_path / "phantom-smoke"
    shutil.copytree(root / "results" / "phantom-smoke", partial)
    shutil.rmtree(partial / "a0.3_b0.7" / "fold1")
    (partial / "a0.1_b0.9" / "fold0" / "done.json").unlink()   # an interrupted cell
    experiment = table1.Experiment(partial, root / "cache" / "phantom-4x4mm-seed0",
                                   table1.PROFILES["smoke"])
    table = table1.assemble(experiment)
    assert table["missing_cells"] == ["a0.3_b0.7/fold1", "a0.1_b0.9/fold0"]
    rows = {(r["alpha"], r["beta"]): r for r in table["rows"]}
    assert rows[(0.3, 0.7)]["folds"] == [0] and rows[(0.5, 0.5)]["folds"] == [0, 1]
    assert "Missing cells" in table1.markdown_table(table)


def test_segmentation_figures_show_spread_out_lesion_slices():
    from reproduce.figures import lesion_slices

    label = np.zeros((4, 4, 40), np.uint8)
    label[:, :, 10] = 1                 # 16 voxels: the most
    label[:2, :, 11] = 1                # 8 voxels, but next to slice 10
    label[:1, :, 30] = 1                # 4 voxels
    label[0, 0, 20] = 1                 # 1 voxel
    assert lesion_slices(label, 3) == [10, 20, 30]
    assert lesion_slices(label, 1) == [10]
    assert lesion_slices(np.zeros((4, 4, 40), np.uint8), 3) == [20]
