"""reproduce.table1 (with .experiment, .table): fold split, cells, table assembly, figures (smoke)."""

import csv
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import SEED1_ROWS, SEEDS_ARGV, json_approx
from processes import assert_signal_stops_the_child, assert_sigterm_stops_the_child
from reproduce import sim2real, table1
from reproduce import table as table_module
from reproduce.table import (assemble, markdown_table, per_fold_table, seed_markdown, seed_summary,
                             table_csv)
from tiny_data import write_tiny_subjects
from tversky_keras import claims
from reproduce.experiment import METRICS, PAPER_TABLE1, ROWS, row_name, two_fold_split
from reproduce.phantoms import phantom_folder
from tversky_keras.data import discover_subjects
from tversky_keras.evaluation import challenge_metrics


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
def smoke_run(smoke_grid):
    """The session's smoke grids (seeds 0 and 1; ``smoke_grid``)."""
    return smoke_grid


def test_smoke_profile_writes_the_table_with_five_rows_and_five_metrics(smoke_run):
    root, _ = smoke_run
    folder = root / "results" / "phantom-v3-smoke"
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
    names = {p.name for p in (root / "figures" / "phantom-v3-smoke").glob("*.png")}
    assert {"fig2_pr_curves.png", "training_curves.png", "fig3_high_density.png",
            "fig4_low_density.png"} <= names


def test_without_figures_the_figures_go_inside_the_results_folder(smoke_run, monkeypatch):
    # The default must not touch the committed figures/ of the checkout (run from a
    # folder holding a figures/ of its own, as the checkout does).
    root, args = smoke_run
    monkeypatch.chdir(root)
    without = [a for a in args if a not in ("--figures", str(root / "figures"))]
    before = sorted(p.stat().st_mtime_ns for p in (root / "figures").rglob("*.png"))
    assert table1.main(without) == 0
    inside = root / "results" / "phantom-v3-smoke" / "figures"
    assert {"fig2_pr_curves.png", "fig3_high_density.png"} <= {p.name for p in inside.glob("*.png")}
    assert sorted(p.stat().st_mtime_ns for p in (root / "figures").rglob("*.png")) == before


def test_rerun_skips_finished_cells(smoke_run, capsys):
    root, args = smoke_run
    cell = root / "results" / "phantom-v3-smoke" / "a0.5_b0.5" / "fold0"
    stamp = (cell / "done.json").stat().st_mtime_ns
    assert table1.main(args + ["--no-figures"]) == 0
    out = capsys.readouterr().out
    assert out.count("skip ") == 10
    assert (cell / "done.json").stat().st_mtime_ns == stamp


def test_a_finished_grid_of_other_settings_is_refused_not_relabelled(smoke_run, tmp_path, capsys):
    root, args = smoke_run
    results = tmp_path / "results"
    shutil.copytree(root / "results" / "phantom-v3-smoke", results / "phantom-v3-smoke")
    before = (results / "phantom-v3-smoke" / "experiment.json").read_bytes()
    # The quick profile into the smoke grid's folder: its ten cells must not be skipped
    # as finished and published under the quick label.
    # The smoke phantom given as --data: nothing is generated for the quick profile.
    phantom = phantom_folder(table1.PROFILES["smoke"], root / "cache")
    into = ["--data", str(phantom), "--results", str(results), "--name", "phantom-v3-smoke",
            "--no-figures"]
    assert table1.main(["--profile", "quick", *into]) == 1
    err = capsys.readouterr().err
    assert "holds a grid made with other settings (experiment.json): profile." in err
    assert "use another --name or --results, or delete that folder" in err
    assert (results / "phantom-v3-smoke" / "experiment.json").read_bytes() == before
    assert (results / "phantom-v3-smoke" / "table1.json").read_bytes() == (
        root / "results" / "phantom-v3-smoke" / "table1.json").read_bytes()
    # Other data under the same name is refused the same way, naming the data.
    write_tiny_subjects(tmp_path / "other", n=2)
    other = [a if a != str(phantom) else str(tmp_path / "other") for a in into]
    assert table1.main(["--profile", "smoke", *other]) == 1
    assert f"data is '{phantom.resolve()}' there and '{(tmp_path / 'other').resolve()}' now" \
        in capsys.readouterr().err


def test_a_reworded_profile_description_is_not_another_setting(smoke_phantom, tmp_path):
    """The description is prose (it was reworded in 0.2.0): a folder recorded with the old
    wording takes a rerun; a changed setting of the same profile is still refused."""
    smoke = table1.PROFILES["smoke"]
    table1.Experiment(tmp_path, smoke_phantom, smoke).record()
    path = tmp_path / "experiment.json"
    recorded = json.loads(path.read_text())
    recorded["profile"]["description"] = "the whole grid in 10-20 minutes"
    path.write_text(json.dumps(recorded))
    table1.Experiment(tmp_path, smoke_phantom, smoke).record()
    assert json.loads(path.read_text())["profile"]["description"] == smoke.description
    longer = dataclasses.replace(smoke, epochs=smoke.epochs + 1)
    with pytest.raises(ValueError, match=r"profile\.epochs is 2 there and 3 now"):
        table1.Experiment(tmp_path, smoke_phantom, longer).record()


def test_a_finished_cell_of_other_settings_is_refused_without_experiment_json(
        smoke_run, tmp_path, capsys):
    # A folder from before experiment.json was checked: the cells' own records still tell.
    root, _ = smoke_run
    results = tmp_path / "results"
    shutil.copytree(root / "results" / "phantom-v3-smoke", results / "phantom-v3-smoke")
    (results / "phantom-v3-smoke" / "experiment.json").unlink()
    phantom = phantom_folder(table1.PROFILES["smoke"], root / "cache")
    assert table1.main(["--profile", "quick", "--data", str(phantom), "--results", str(results),
                        "--name", "phantom-v3-smoke", "--no-figures"]) == 1
    err = capsys.readouterr().err
    # The first setting of TrainConfig's that the smoke and quick profiles set apart.
    assert ("a0.5_b0.5/fold0 is finished with other settings (run/config.json): pool_batch "
            "is False there and True now") in err
    assert not (results / "phantom-v3-smoke" / "experiment.json").exists()  # nothing relabelled


def test_the_settings_record_compares_what_both_sides_record():
    from reproduce.experiment import settings_difference

    saved = {"seed": 0, "profile": {"epochs": 2, "depth": 2}, "folds": [1, 2]}
    assert settings_difference(saved, {**saved}) is None
    assert settings_difference(saved, {**saved, "profile": {"epochs": 10, "depth": 2}}) == (
        "profile.epochs", 2, 10)
    assert settings_difference(saved, {**saved, "folds": [2, 1]}) == ("folds", [1, 2], [2, 1])
    # A setting recorded since (mixed_precision) is not held against an older record.
    assert settings_difference(saved, {**saved, "mixed_precision": "auto"}) is None


def test_table_from_partial_results_names_the_missing_cells(smoke_run, tmp_path):
    root, _ = smoke_run
    partial = tmp_path / "phantom-v3-smoke"
    shutil.copytree(root / "results" / "phantom-v3-smoke", partial)
    shutil.rmtree(partial / "a0.3_b0.7" / "fold1")
    (partial / "a0.1_b0.9" / "fold0" / "done.json").unlink()   # an interrupted cell
    smoke = table1.PROFILES["smoke"]
    experiment = table1.Experiment(partial, phantom_folder(smoke, root / "cache"),
                                   table1.PROFILES["smoke"])
    table = assemble(experiment)
    assert table["missing_cells"] == ["a0.3_b0.7/fold1", "a0.1_b0.9/fold0"]
    rows = {(r["alpha"], r["beta"]): r for r in table["rows"]}
    assert rows[(0.3, 0.7)]["folds"] == [0] and rows[(0.5, 0.5)]["folds"] == [0, 1]
    assert "Missing cells" in markdown_table(table)


def test_collapsed_cells_are_flagged_in_every_table(smoke_run, tmp_path):
    root, _ = smoke_run
    copy = tmp_path / "phantom-v3-smoke"
    shutil.copytree(root / "results" / "phantom-v3-smoke", copy)
    # Fold 1 of the Dice row now calls nothing: its network collapsed to background.
    for path in (copy / "a0.5_b0.5" / "fold1" / "test").glob("*.npz"):
        with np.load(path) as data:
            arrays = dict(data)
        arrays["probability"] = np.zeros_like(arrays["probability"])
        np.savez_compressed(path, **arrays)
    smoke = table1.PROFILES["smoke"]
    experiment = table1.Experiment(copy, phantom_folder(smoke, root / "cache"),
                                   table1.PROFILES["smoke"])
    table = assemble(experiment)
    for row in table["rows"]:
        for scores in row["per_fold"].values():
            # The definition, checked independently on every cell.
            expected = (scores["predicted_lesion_voxels"] == 0
                        or scores["final_training_loss"] >= 0.99)
            assert scores["collapsed"] == expected
    dice = table["rows"][0]
    assert dice["per_fold"][1]["collapsed"] and 1 in dice["collapsed_folds"]
    assert "a0.5_b0.5/fold1" in table["collapsed_cells"]
    assert "a0.5_b0.5/fold1" in markdown_table(table).split("Collapsed cells")[1]
    assert "**yes**" in per_fold_table(table)
    with_flag = [r for r in csv.DictReader(table_csv(table).splitlines())
                 if r["collapsed_folds"]]
    assert with_flag[0]["alpha"] == "0.5" and "1" in with_flag[0]["collapsed_folds"].split()
    summary = seed_summary([table, table])
    assert summary[0]["collapsed_cells"] >= 2  # the same collapsed fold in both "seeds"
    text = seed_markdown(summary)
    total = sum(r["collapsed_cells"] for r in summary)
    assert f"Collapsed cells: {total} of 20." in text


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


REPO = Path(__file__).resolve().parents[1]
CELL_DONE = re.compile(r"^\[cell \d+/\d+ (\S+) (fold\d)\] done in", re.MULTILINE)
# Two of the five rows, both folds: what the grid-sharing tests run (the others stay missing).
SHARED_CELLS = "a0.5_b0.5,a0.1_b0.9"
SHARED = {f"{r}/fold{f}" for r in ("a0.5_b0.5", "a0.1_b0.9") for f in (0, 1)}
ALL_CELLS = {f"{r}/fold{f}" for r in ("a0.5_b0.5", "a0.4_b0.6", "a0.3_b0.7", "a0.2_b0.8",
                                      "a0.1_b0.9") for f in (0, 1)}


def test_two_processes_share_the_grid_and_run_each_cell_once(smoke_run, tmp_path):
    root, _ = smoke_run
    command = [sys.executable, "-m", "reproduce.table1", "--profile", "smoke",
               "--results", str(tmp_path / "results"), "--figures", str(tmp_path / "figures"),
               "--cache", str(root / "cache"), "--no-figures", "--poll", "0.2",
               "--cells", SHARED_CELLS]
    env = {**os.environ, claims.HEARTBEAT_ENV: "0.5", claims.STALE_AFTER_ENV: "60"}
    processes = [subprocess.Popen(command, cwd=REPO, env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                 for _ in range(2)]
    try:
        outputs = [p.communicate(timeout=240)[0] for p in processes]
    finally:
        for process in processes:
            process.kill()
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
        assert "Traceback" not in output, output[-3000:]
        # each assembled the table of every selected cell, the others named missing
        assert output.count("Missing cells") == 1
    ran = [{"/".join(m) for m in CELL_DONE.findall(output)} for output in outputs]
    assert ran[0] and ran[1] and not ran[0] & ran[1]
    folder = tmp_path / "results" / "phantom-v3-smoke"
    assert ran[0] | ran[1] == SHARED
    for process, cells in zip(processes, ran):
        for cell in cells:
            assert json.loads((folder / cell / "done.json").read_text())["claim"]["pid"] == \
                process.pid
    assert list(folder.glob("*/fold*/claim.*.json")) == []
    # Training is bit-reproducible on this CPU (same data, seed and settings in
    # any process), so the shared grid's cells and rows are the single process' ones.
    reference = root / "results" / "phantom-v3-smoke"
    for cell in SHARED:
        assert (folder / cell / "metrics.json").read_text() == \
            (reference / cell / "metrics.json").read_text()
    table = json.loads((folder / "table1.json").read_text())
    assert sorted(table["missing_cells"]) == sorted(ALL_CELLS - SHARED)
    rows = {(r["alpha"], r["beta"]): r for r in
            json.loads((reference / "table1.json").read_text())["rows"]}
    shared_rows = [r for r in table["rows"] if (r["alpha"], r["beta"]) in {(0.5, 0.5), (0.1, 0.9)}]
    assert len(shared_rows) == 2
    assert all(r == rows[(r["alpha"], r["beta"])] for r in shared_rows)


def test_workers_split_the_grid_between_processes_and_assemble_it_once(smoke_run, tmp_path):
    root, _ = smoke_run
    command = [sys.executable, "-m", "reproduce.table1", "--profile", "smoke",
               "--results", str(tmp_path / "results"), "--cache", str(root / "cache"),
               "--no-figures", "--poll", "0.2", "--workers", "2", "--cells", SHARED_CELLS]
    env = {**os.environ, claims.HEARTBEAT_ENV: "0.5", claims.STALE_AFTER_ENV: "60"}
    done = subprocess.run(command, cwd=REPO, env=env, text=True, capture_output=True,
                          timeout=240)
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "Traceback" not in output, output[-3000:]
    assert "2 processes share the grid, 1 CPU thread(s) each" in output
    assert output.count("Table 1") == 1 and output.count("Missing cells") == 1
    helper = re.findall(r"^\[worker 2 cell \d+/\d+ (\S+) (fold\d)\] done in", output,
                        re.MULTILINE)
    lead = CELL_DONE.findall(output)
    assert helper and lead and not set(helper) & set(lead)
    assert {"/".join(cell) for cell in helper + lead} == SHARED and len(helper + lead) == 4
    folder = tmp_path / "results" / "phantom-v3-smoke"
    pids = {json.loads(p.read_text())["claim"]["pid"] for p in folder.glob("*/fold*/done.json")}
    assert len(pids) == 2 and done.returncode == 0
    assert list(folder.glob("*/fold*/claim.*.json")) == []
    table = json.loads((folder / "table1.json").read_text())
    reference = json.loads((root / "results" / "phantom-v3-smoke" / "table1.json").read_text())
    assert sorted(table["missing_cells"]) == sorted(ALL_CELLS - SHARED)
    assert len(table["rows"]) == len(reference["rows"])


def test_stopping_the_lead_process_stops_its_helpers(smoke_run, tmp_path):
    """SIGTERM to the process the user started: the helper it started must not run on."""
    root, _ = smoke_run
    assert_sigterm_stops_the_child(
        ["reproduce.table1", "--profile", "smoke", "--results", str(tmp_path / "results"),
         "--cache", str(root / "cache"), "--no-figures", "--workers", "2"],
        marker="--worker-of")


def test_ctrl_c_stops_the_grid_and_its_helpers_with_one_line(smoke_run, tmp_path):
    """SIGINT to the whole process group, as Ctrl-C at a terminal: 130, one line, no
    traceback from the lead or a helper."""
    root, _ = smoke_run
    # Twenty seeds' grids (200 cells): the work cannot all finish before the signal
    # however loaded the machine. The signal waits for a state, never for a time: the
    # helper running and four cells finished (both processes past TensorFlow's import).
    results = tmp_path / "results"
    printed = assert_signal_stops_the_child(
        ["reproduce.table1", "--profile", "smoke", "--results", str(results),
         "--cache", str(root / "cache"), "--no-figures", "--workers", "2", "--seeds", "20"],
        marker="--worker-of", number=signal.SIGINT, whole_group=True,
        ready=lambda: len(list(results.glob("*/*/fold*/done.json"))) >= 4)
    assert "python -m reproduce.table1: interrupted (Ctrl-C); finished work is kept" in printed


def test_ctrl_c_in_one_process_is_one_line_and_130(smoke_run, tmp_path, monkeypatch, capsys):
    root, _ = smoke_run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # where Ctrl-C lands: inside a cell's training

    monkeypatch.setattr(table1, "run_grid", interrupted)
    phantom = phantom_folder(table1.PROFILES["smoke"], root / "cache")
    assert table1.main(["--profile", "smoke", "--data", str(phantom), "--results",
                        str(tmp_path), "--no-figures"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == ("python -m reproduce.table1: interrupted (Ctrl-C); finished work is "
                           "kept: run the same command again to resume")


def test_workers_are_refused_with_no_wait_and_below_one(capsys):
    for argv in (["--no-wait", "--workers", "2"], ["--workers", "0"], ["--workers", "x"]):
        with pytest.raises(SystemExit) as stopped:
            table1.main(argv)
        assert stopped.value.code == 2
    assert "--workers" in capsys.readouterr().err


@pytest.fixture
def grid_missing_one_cell(smoke_run, tmp_path):
    """A copy of the finished smoke grid whose a0.3_b0.7/fold1 never finished."""
    root, _ = smoke_run
    results = tmp_path / "results"
    shutil.copytree(root / "results" / "phantom-v3-smoke", results / "phantom-v3-smoke")
    cell = results / "phantom-v3-smoke" / "a0.3_b0.7" / "fold1"
    shutil.rmtree(cell)
    cell.mkdir()
    args = ["--profile", "smoke", "--results", str(results), "--cache", str(root / "cache"),
            "--no-figures"]
    return cell, args


def plant_foreign_claim(cell, age):
    path = cell / "claim.0.json"
    path.write_text(json.dumps({"host": "elsewhere", "pid": 4242, "token": "f" * 32,
                                "started": time.time() - age}))
    os.utime(path, (time.time() - age,) * 2)


def test_no_wait_leaves_a_cell_another_process_holds_and_names_it(grid_missing_one_cell,
                                                                   capsys):
    cell, args = grid_missing_one_cell
    plant_foreign_claim(cell, age=5)
    started = time.monotonic()
    assert table1.main(args + ["--no-wait"]) == 0
    elapsed = time.monotonic() - started
    out = capsys.readouterr().out
    found = re.search(r"^not waiting for 1 cell other processes hold: a0\.3_b0\.7/fold1 "
                      r"\(pid 4242 on host elsewhere since .*, last heartbeat (\d+) s ago\)$",
                      out, re.MULTILINE)
    # 5 s when planted, plus however long the command took to say so (rounded).
    assert found and 5 <= int(found.group(1)) <= 5 + elapsed + 0.5
    assert "Missing cells (not in the table): a0.3_b0.7/fold1" in out
    assert not (cell / "done.json").exists() and not (cell / "run").exists()


def test_a_process_waits_for_a_cell_another_one_runs_and_then_assembles_it(
        smoke_run, grid_missing_one_cell, monkeypatch, capsys):
    root, _ = smoke_run
    cell, args = grid_missing_one_cell
    holder = claims.try_claim(cell)
    waits = []

    def the_other_process_finishes_meanwhile(seconds):
        waits.append(seconds)
        shutil.copytree(root / "results" / "phantom-v3-smoke" / "a0.3_b0.7" / "fold1", cell,
                        dirs_exist_ok=True)
        holder.release()

    monkeypatch.setattr(table1.time, "sleep", the_other_process_finishes_meanwhile)
    started = time.monotonic()
    assert table1.main(args + ["--poll", "7"]) == 0
    elapsed = time.monotonic() - started
    out = capsys.readouterr().out
    assert waits == [7.0]
    found = re.search(r"^waiting for 1 cell other processes hold: a0\.3_b0\.7/fold1 "
                      rf"\(pid {os.getpid()} on host .* since .*, last heartbeat (\d+) s ago\)$",
                      out, re.MULTILINE)
    # Claimed just before the command started: as old as the command was when it said so.
    assert found and int(found.group(1)) <= elapsed + 0.5
    assert "] done in" not in out and "Missing cells" not in out


def test_a_cell_whose_holder_went_stale_is_taken_over_and_run(grid_missing_one_cell, capsys):
    cell, args = grid_missing_one_cell
    plant_foreign_claim(cell, age=1000)
    assert table1.main(args) == 0
    out = capsys.readouterr().out
    assert re.search(r"^a0\.3_b0\.7/fold1: taking over from pid 4242 on host elsewhere .*, "
                     r"stale$", out, re.MULTILINE)
    assert out.count("skip ") == 9 and out.count("] done in") == 1
    assert json.loads((cell / "done.json").read_text())["claim"]["pid"] == os.getpid()
    assert "Missing cells" not in out and list(cell.glob("claim.*")) == []


def test_a_lost_claim_leaves_the_cell_unfinished_with_one_line(grid_missing_one_cell,
                                                               monkeypatch, capsys):
    cell, args = grid_missing_one_cell

    def taken_over_while_running(self, alpha, beta, fold, callbacks=(), claim=None):
        os.utime(claim.path, (time.time() - 1000,) * 2)       # this process hung
        rival = claims.try_claim(cell)                         # another took it over
        claim.ensure_held()
        rival.release()

    monkeypatch.setattr(table1.Experiment, "run_cell", taken_over_while_running)
    assert table1.main(args + ["--no-wait"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\[cell 10/10 a0\.3_b0\.7 fold1\] stopped: .*fold1: the claim was "
                     rf"taken over by pid {os.getpid()} on host ", out, re.MULTILINE)
    assert not (cell / "done.json").exists()


def test_a_failing_cell_is_one_line_the_others_finish_and_the_exit_code_says_so(
        grid_missing_one_cell, capsys, monkeypatch):
    from tversky_keras.training import TrainingDiverged

    cell, args = grid_missing_one_cell
    calls = []

    def diverging(self, alpha, beta, fold, callbacks=(), claim=None):
        calls.append((alpha, beta, fold))
        raise TrainingDiverged(f"{cell}/run: the training loss became nan at batch 3")

    monkeypatch.setattr(table1.Experiment, "run_cell", diverging)
    assert table1.main(args) == 1
    out, err = capsys.readouterr()
    assert calls == [(0.3, 0.7, 1)]  # tried once, not retried in a loop
    assert "a0.3_b0.7 fold1] failed:" in out and "loss became nan" in out
    assert "1 cells failed (see above): a0.3_b0.7/fold1" in err
    assert "Missing cells (not in the table): a0.3_b0.7/fold1" in out
    assert "Traceback" not in out + err
    assert not list(cell.glob("claim.*"))  # the claim was released


def test_a_cell_scores_what_predict_then_evaluate_score(smoke_run, tmp_path, capsys):
    """The table's per-subject metrics are those of `predict` + `evaluate --brain`.

    The cell trains at 6 mm on the 4-mm phantom, so scoring on the network's
    grid (as reproduce once did) would give other numbers than the scan's own.
    """
    import dataclasses

    import nibabel as nib

    from tversky_keras import cli

    root, _ = smoke_run
    profile = dataclasses.replace(table1.PROFILES["smoke"], spacing=6.0)
    experiment = table1.Experiment(tmp_path / "exp", phantom_folder(profile, root / "cache"),
                                   profile, cache_dir=tmp_path / "preprocessed")
    experiment.run_cell(0.5, 0.5, 0)
    cell = experiment.cell_dir(0.5, 0.5, 0)
    table_scores = json.loads((cell / "metrics.json").read_text())
    subject = experiment.subjects[experiment.split[0][1][0]]
    truth = nib.load(subject.mask)
    brain = np.logical_or.reduce([np.asarray(nib.load(path).dataobj) != 0
                                  for path in subject.images.values()])
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), truth.affine), tmp_path / "brain.nii.gz")
    out = tmp_path / "predicted"
    assert cli.main(["predict", "--model", str(cell / "run" / "last.keras"),
                     "--input", str(subject.images["FLAIR"].parent), "--out", str(out)]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", "--prediction", str(out / "probability.nii.gz"),
                     "--truth", str(subject.mask), "--brain", str(tmp_path / "brain.nii.gz")]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    ours = table_scores[subject.id]
    assert ours["tp"] + ours["fp"] > 0  # a cell that called nothing would agree trivially
    assert [ours[k] for k in ("tp", "fp", "tn", "fn")] == \
        [evaluated[k] for k in ("tp", "fp", "tn", "fn")]
    for key in ("dsc", "sensitivity", "specificity", "apr"):
        assert ours[key] == pytest.approx(evaluated[key], abs=1e-6), key
    with np.load(cell / "test" / f"{subject.id}.npz") as arrays:
        assert arrays["label"].shape == truth.shape  # the scan's voxels, not the 6-mm grid


def test_profiles_are_overrides_of_train_config():
    import dataclasses

    from reproduce.experiment import PROFILES, TRAINING_FIELDS, Profile
    from tversky_keras.training import TrainConfig

    # Every profile field is a TrainConfig field of the same name, or says what data to make:
    # a renamed field would otherwise silently stop reaching the training.
    data_fields = {"name", "description", "phantom_subjects", "phantom_spacing"}
    assert {f.name for f in dataclasses.fields(Profile)} == set(TRAINING_FIELDS) | data_fields
    defaults = TrainConfig()
    for profile in PROFILES.values():
        config = profile.train_config(n_train=7, alpha=0.2, beta=0.8, seed=3)
        for name in TRAINING_FIELDS:
            expected = getattr(profile, name)
            if name == "steps_per_epoch" and not expected:
                expected = -(-7 // profile.batch_size)  # one pass over the training subjects
            assert getattr(config, name) == expected, (profile.name, name)
        assert (config.alpha, config.beta, config.seed) == (0.2, 0.8, 3)
        untouched = {f.name for f in dataclasses.fields(TrainConfig)} - set(TRAINING_FIELDS) \
            - {"alpha", "beta", "seed"}
        for name in untouched:
            assert getattr(config, name) == getattr(defaults, name), (profile.name, name)


@pytest.mark.parametrize("override, message", [
    ({"learning_rate": -1.0}, "learning_rate must be positive"),
    ({"patch_size": (18, 18, 18), "depth": 2}, "multiple of 2\\^depth = 4"),
])
def test_a_bad_profile_fails_when_it_is_defined(override, message):
    import dataclasses

    from reproduce.experiment import PROFILES

    with pytest.raises(ValueError, match=message):
        dataclasses.replace(PROFILES["smoke"], **override)


def test_the_experiment_records_the_phantom_version_and_lesions(smoke_run):
    root, _ = smoke_run
    described = json.loads((root / "results" / "phantom-v3-smoke" / "experiment.json").read_text())
    assert described["phantom"]["version"] == 3
    assert len(described["phantom"]["lesions"]["subjects"]) == table1.PROFILES[
        "smoke"].phantom_subjects


# The session's seed 1 ran two rows (conftest): they have two seeds, the others one.
SEEDS_PER_ROW = [2 if row_name(alpha, beta) in SEED1_ROWS else 1 for alpha, beta in ROWS]


def test_seeds_summary_records_each_seeds_cell_time_and_where_it_was_made(smoke_run):
    root, args = smoke_run
    assert table1.main([*args, *SEEDS_ARGV]) == 0
    summary = json.loads((root / "results" / "phantom-v3-smoke-seeds.json").read_text())
    assert [row["n_seeds"] for row in summary["rows"]] == SEEDS_PER_ROW
    assert seed_markdown(summary["rows"]).endswith(
        f" of {2 * (5 + len(SEED1_ROWS))}.")   # cells of both seeds
    expected = [sum(json.loads(p.read_text())["seconds"]
                    for p in (root / "results" / name).glob("*/fold*/done.json"))
                for name in ("phantom-v3-smoke", "phantom-v3-smoke-seed1")]
    assert summary["cell_seconds"] == pytest.approx(expected, abs=0.11)
    assert summary["made"]["command"][0] == "python" and "date" in summary["made"]


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--poll", "nan"], "argument --poll: 'nan' is not a finite number"),
])
def test_reproduce_options_out_of_range_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        table1.main(argv)
    assert message in capsys.readouterr().err


def test_an_unknown_fold_is_named():
    with pytest.raises(SystemExit, match="unknown fold 'fold9'"):
        table1.parse_cells("a0.5_b0.5/fold9")


@pytest.mark.parametrize("main, argv", [
    (table1.main, ["--profile", "smoke"]),
    (sim2real.main, ["--profile", "smoke"]),
])
def test_a_missing_data_folder_is_one_line(main, argv, tmp_path, capsys):
    assert main([*argv, "--data", str(tmp_path / "nosuch"), "--results", str(tmp_path / "r"),
                 "--cache", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"{tmp_path / 'nosuch'}" in err and err.count("\n") == 1


@pytest.mark.parametrize("name, problem", [
    ("../../escaped", "it holds the path separator /"),
    ("/tmp/elsewhere", "it is an absolute path"),
    ("a/b", "it holds the path separator /"),
    ("a\\b", "it holds the path separator \\"),
    ("..", "it is the folder itself or the one above"),
    ("", "it is empty"),
    ("tab\there", "it holds the control character U+0009"),
])
def test_an_experiment_name_cannot_leave_the_results_folder(name, problem, capsys):
    with pytest.raises(SystemExit):
        table1.main(["--name", name])
    err = capsys.readouterr().err
    assert (f"--name (a folder name inside --results and --figures) {name!r} cannot be a file "
            f"or folder name: {problem}") in err


def test_an_experiment_name_with_spaces_dashes_and_dots_is_a_folder_name(monkeypatch):
    parsed = []
    monkeypatch.setattr(table1.report, "run_or_one_line",
                        lambda program, run, args, **_: parsed.append(args.name))
    table1.main(["--name", "phantom v3.1-quick"])
    assert parsed == ["phantom v3.1-quick"]


def assert_same_scores(saved, expected):
    """Every key of ``expected`` (a ``challenge_metrics`` dict) in ``saved``, nan equal to nan."""
    for key, value in expected.items():
        if isinstance(value, float):
            assert saved[key] == json_approx(value, rel=1e-9, abs=1e-12), key
        else:
            assert saved[key] == value, key


def saved_test_arrays(cell):
    """``[(subject id, label, probability, brain, spacing)]`` read straight from the npz files."""
    out = []
    for path in sorted((cell / "test").glob("*.npz")):
        with np.load(path) as data:
            out.append((path.stem, data["label"], data["probability"].astype(np.float32),
                        data["brain"], tuple(data["spacing"])))
    return out


def test_cells_and_table1_carry_the_challenge_metrics_of_the_saved_arrays(smoke_run):
    root, _ = smoke_run
    folder = root / "results" / "phantom-v3-smoke"
    table = json.loads((folder / "table1.json").read_text())
    assert table["challenge_overlap"] == "any" and table["challenge_unscored_cells"] == []
    row = table["rows"][ROWS.index((0.3, 0.7))]
    scans = {s.id: s for s in discover_subjects(phantom_folder(table1.PROFILES["smoke"],
                                                               root / "cache"))}
    arrays = []
    for fold in (0, 1):
        cell = folder / "a0.3_b0.7" / f"fold{fold}"
        saved = json.loads((cell / "metrics.json").read_text())
        for subject_id, label, prob, brain, spacing in saved_test_arrays(cell):
            # The spacing is the scan's voxel size (the 4-mm smoke phantom's NIfTI zooms).
            image = nib.load(scans[subject_id].images["FLAIR"])
            assert sorted(spacing) == sorted(image.header.get_zooms()[:3])
            expected = challenge_metrics(label, prob, spacing, threshold=0.5, overlap="any",
                                         mask=brain)
            assert_same_scores(saved[subject_id], expected)
            expected.pop("volume_correlation")   # defined across volumes only, not per volume
            assert_same_scores(row["challenge"]["subjects"][subject_id], expected)
            arrays.append((label, prob, brain, spacing))
    pooled = challenge_metrics(*[[a[i] for a in arrays] for i in range(2)],
                               [a[3] for a in arrays], threshold=0.5, overlap="any",
                               mask=[a[2] for a in arrays])
    pooled.pop("per_volume")
    assert_same_scores(row["challenge"]["pooled"], pooled)
    with open(folder / "table1-challenge.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 and float(rows[ROWS.index((0.3, 0.7))]["ndsc_pooled"]) == \
        pytest.approx(pooled["ndsc"])
    assert (folder / "table1-challenge.md").read_text().count("| a=") == 5


def test_the_challenge_seeds_table_is_numpys_mean_and_std_over_the_seeds(smoke_run):
    root, _ = smoke_run
    results = root / "results"
    tables = [json.loads((results / name / "table1.json").read_text())
              for name in ("phantom-v3-smoke", "phantom-v3-smoke-seed1")]
    summary = json.loads((results / "phantom-v3-smoke-seeds.json").read_text())["challenge_rows"]
    assert [row["n_seeds"] for row in summary] == SEEDS_PER_ROW
    for index, row in enumerate(summary):
        scored = [t for t in tables if t["rows"][index].get("folds")]  # seed 1: two rows
        for key in ("ndsc", "lesion_f1", "hd95_mm", "assd_mm", "abs_volume_difference_ml"):
            values = np.array([t["rows"][index]["challenge"]["pooled"][key] for t in scored],
                              dtype=float)  # null (undefined) as nan
            assert row["mean"][key] == json_approx(np.mean(values))
            assert row["std"][key] == json_approx(np.std(values))
    text = (results / "phantom-v3-smoke-seeds-challenge.md").read_text()
    assert "nDSC (%)" in text and text.count("| a=") == 5
    with open(results / "phantom-v3-smoke-seeds-challenge.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 5


def test_cells_from_before_the_challenge_metrics_still_make_both_tables(smoke_run, tmp_path):
    root, _ = smoke_run
    old = tmp_path / "phantom-v3-smoke"
    shutil.copytree(root / "results" / "phantom-v3-smoke", old)
    current = assemble(table1.Experiment(old, phantom_folder(table1.PROFILES["smoke"],
                                                             root / "cache"),
                                         table1.PROFILES["smoke"]))
    for metrics in old.glob("*/fold*/metrics.json"):   # as the older code wrote them
        scores = json.loads(metrics.read_text())
        metrics.write_text(json.dumps({s: {k: v for k, v in d.items() if k in METRICS}
                                       for s, d in scores.items()}))
    for path in old.glob("*/fold*/test/*.npz"):
        with np.load(path) as data:
            kept = {k: data[k] for k in data.files if k != "spacing"}
        np.savez_compressed(path, **kept)
    experiment = table1.Experiment(old, phantom_folder(table1.PROFILES["smoke"], root / "cache"),
                                   table1.PROFILES["smoke"])
    # The voxel size comes from the subject's scan: the same scores as the new cells'.
    table = assemble(experiment)
    for row, new in zip(table["rows"], current["rows"]):
        assert_same_scores(row["challenge"]["pooled"], new["challenge"]["pooled"])
    # Without a readable scan the voxel size is unknown: no challenge scores, named cells.
    experiment.subjects = {}
    table = assemble(experiment)
    assert all(row["challenge"] is None for row in table["rows"])
    assert len(table["challenge_unscored_cells"]) == 10
    table_module.write_outputs(table, tmp_path / "out")
    text = (tmp_path / "out" / "table1-challenge.md").read_text()
    # Per row: five pooled values and five per-subject "n/a ± n/a".
    assert text.count("n/a") == 5 * (5 + 2 * 5) and "Not scored" in text
    assert "53.42" in (tmp_path / "out" / "table1.md").read_text()
    assert table_module.challenge_seed_summary([table])[0]["mean"]["ndsc"] is None


@pytest.mark.parametrize("alpha, beta", [(0.5, 0.5), (0.3, 0.7), (0.1, 0.9), (0.05, 0.95)])
def test_row_penalties_is_row_names_inverse(alpha, beta):
    from reproduce.experiment import row_penalties

    assert row_name(alpha, beta) == f"a{alpha:g}_b{beta:g}"
    assert row_penalties(row_name(alpha, beta)) == (alpha, beta)
    with pytest.raises(ValueError, match="no row name"):
        row_penalties("fold0")


def test_a_helper_that_ignores_sigterm_is_killed_after_its_grace(tmp_path):
    """The lead never waits forever on a helper stuck where no Python signal handler runs
    (stood in for by one that ignores SIGTERM)."""
    import subprocess
    import sys
    import time

    from reproduce import grid

    ready = tmp_path / "ready"
    stuck = subprocess.Popen([sys.executable, "-c",
                              "import signal, time, pathlib; "
                              "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                              f"pathlib.Path({str(ready)!r}).touch(); time.sleep(600)"])
    try:
        while not ready.exists() and stuck.poll() is None:
            time.sleep(0.05)  # polling a condition: the handler is in place
        assert stuck.poll() is None
        grid._stop_helpers([stuck], grace_s=0.5)
        assert stuck.returncode == -signal.SIGKILL
    finally:
        stuck.kill()
        stuck.wait()
