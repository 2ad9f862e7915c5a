"""reproduce.sim2real_grid: the Table-1 grid's models on real subjects, every finished cell scored."""

import json
import shutil
from pathlib import Path

import keras
import nibabel as nib
import numpy as np
import pytest
from sklearn.metrics import f1_score

from reproduce import sim2real_grid
from reproduce.experiment import cell_folder
from reproduce.scoring import scan_reference
from conftest import json_approx
from tiny_data import write_tiny_subjects
from tversky_keras.data import discover_subjects
from tversky_keras.evaluation import challenge_metrics, lesion_detection, normalised_dsc
from tversky_keras.inference import segment_subject


@pytest.fixture(scope="module")
def grids(tmp_path_factory, smoke_grid):
    """Two smoke grids (seeds 0 and 1) of three cells each, one cell left unfinished,
    and two tiny "real" subjects; the command run once over both grids."""
    root = tmp_path_factory.mktemp("grid")
    names = ["phantom-v3-smoke", "phantom-v3-smoke-seed1"]
    folders = [root / "results" / name for name in names]
    kept = {("a0.5_b0.5", "fold0"), ("a0.1_b0.9", "fold0"), ("a0.1_b0.9", "fold1")}
    for name, folder in zip(names, folders):   # the session's grids, three cells of each
        shutil.copytree(smoke_grid[0] / "results" / name, folder)
        for cell in folder.glob("a*/fold*"):
            if (cell.parent.name, cell.name) not in kept:
                shutil.rmtree(cell)
    (cell_folder(folders[1], 0.1, 0.9, 1) / "done.json").unlink()   # as if interrupted
    write_tiny_subjects(root / "data", n=2)
    out = root / "out"
    command = ["--data", str(root / "data"), "--grid", *map(str, folders), "--out", str(out)]
    assert sim2real_grid.main(command) == 0
    return root, folders, out, command


def test_every_finished_cell_is_scored_and_no_other(grids):
    root, folders, out, _ = grids
    summary = json.loads((out / "sim2real-grid.json").read_text())
    assert len(summary["models"]) == 5   # 3 + 3 cells, one unfinished
    for subject in ("sub00", "sub01"):
        rows = summary["subjects"][subject]
        assert set(rows) == {"a0.5_b0.5", "a0.1_b0.9"}
        assert rows["a0.5_b0.5"]["models"] == 2 and rows["a0.1_b0.9"]["models"] == 3
    assert not (out / folders[1].name / "a0.1_b0.9" / "fold1").exists()
    assert (out / folders[1].name / "a0.1_b0.9" / "fold0" / "sub01.json").is_file()


def test_a_model_s_score_is_an_independent_dsc_and_the_summary_its_mean(grids):
    root, folders, out, _ = grids
    subjects = discover_subjects(root / "data")
    cell = cell_folder(folders[0], 0.1, 0.9, 1)
    model = keras.saving.load_model(cell / "run" / "last.keras")
    for subject in subjects:
        truth, brain, _ = scan_reference(subject)
        probability, _ = segment_subject(model, subject)
        expected = f1_score(truth[brain], probability[brain] >= 0.5, zero_division=1.0)
        scored = json.loads((out / folders[0].name / "a0.1_b0.9" / "fold1"
                             / f"{subject.id}.json").read_text())
        assert scored["dsc"] == pytest.approx(expected, abs=1e-6)
        # The challenge metrics at the scan's NIfTI zooms, inside its brain, overlap "any".
        zooms = nib.load(subject.images["FLAIR"]).header.get_zooms()[:3]
        challenge = challenge_metrics(truth, probability, zooms, overlap="any", mask=brain)
        for key, value in challenge.items():
            assert scored[key] == (json_approx(value, abs=1e-9)
                                   if isinstance(value, float) else value), key
    summary = json.loads((out / "sim2real-grid.json").read_text())["subjects"]
    for subject in subjects:
        files = sorted(out.glob(f"*/a0.1_b0.9/fold*/{subject.id}.json"))
        scores = [json.loads(f.read_text()) for f in files]
        entry = summary[subject.id]["a0.1_b0.9"]
        dsc = [s["dsc"] for s in scores]
        assert entry["dsc"]["mean"] == pytest.approx(np.mean(dsc))
        assert entry["dsc"]["std"] == pytest.approx(np.std(dsc, ddof=1))
        assert entry["above_oracle"] == sum(s["dsc"] > s["threshold_dsc"] for s in scores)
        for key in ("ndsc", "lesion_f1", "hd95_mm", "abs_volume_difference_ml"):
            values = np.array([s[key] for s in scores], dtype=float)  # null as nan
            assert entry[key]["mean"] == json_approx(np.mean(values))
            assert entry[key]["std"] == json_approx(np.std(values, ddof=1))
    table = (out / "sim2real-grid.md").read_text()
    assert "### sub00" in table and "| a=0.1, b=0.9 | 3 |" in table
    assert "nDSC" in table and "HD95 mm" in table


def test_scores_written_before_the_challenge_metrics_show_them_as_missing(grids):
    root, folders, out, _ = grids
    files = sorted(out.glob("*/a0.1_b0.9/fold*/sub00.json"))
    rows = {(0.1, 0.9): {"sub00": [json.loads(f.read_text()) for f in files]}}
    rows[(0.1, 0.9)]["sub00"][0].pop("ndsc")   # as an older run wrote it
    entry = sim2real_grid.summarise(rows)["sub00"]["a0.1_b0.9"]
    assert entry["ndsc"] is None and entry["lesion_f1"]["values"]
    assert "n/a ± n/a" in sim2real_grid.markdown({"sub00": {"a0.1_b0.9": entry}})


def test_a_rerun_scores_nothing_again(grids, capsys):
    root, folders, out, command = grids
    files = sorted(out.glob("*/*/fold*/*.json"))
    written = {f: f.stat().st_mtime_ns for f in files}
    assert sim2real_grid.main(command) == 0
    assert "] phantom-v3-smoke" not in capsys.readouterr().out   # no model loaded
    assert {f: f.stat().st_mtime_ns for f in files} == written


def test_bad_grid_folders_get_one_line(grids, tmp_path, capsys):
    root, folders, _, _ = grids
    data = str(root / "data")
    twin = tmp_path / "elsewhere" / folders[0].name
    shutil.copytree(folders[0], twin)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "experiment.json").write_text("{}")
    damaged = tmp_path / "damaged"
    shutil.copytree(folders[0], damaged)
    model = cell_folder(damaged, 0.5, 0.5, 0) / "run" / "last.keras"
    model.write_bytes(b"not a zip")
    cases = {
        str(tmp_path): "not a reproduce.table1 results folder",
        str(damaged): f"{model}: not a readable Keras model",
        f"{folders[0]} {twin}": "two grid folders are named 'phantom-v3-smoke'",
        str(empty): "no finished cell",
    }
    for grid, message in cases.items():
        code = sim2real_grid.main(["--data", data, "--grid", *grid.split(), "--out",
                                   str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_scores_with_other_mirroring_are_not_mixed_in(grids, capsys):
    root, folders, out, command = grids
    assert sim2real_grid.main(command + ["--mirror", "x"]) == 1
    err = capsys.readouterr().err
    assert "was scored with mirror axes [], not [0]: use another --out" in err
    assert not list(out.glob("*/*/fold*/*.json.tmp*"))


def test_each_row_as_an_ensemble_is_the_average_of_its_models(grids, capsys):
    root, folders, out, command = grids
    assert sim2real_grid.main(command + ["--ensemble"]) == 0
    printed = capsys.readouterr().out
    assert "ensemble of 2 a0.5_b0.5 models" in printed and "ensemble of 3 a0.1_b0.9" in printed
    summary = json.loads((out / "sim2real-grid.json").read_text())["ensembles"]
    models = [keras.saving.load_model(cell_folder(f, 0.5, 0.5, 0) / "run" / "last.keras")
              for f in folders]
    for subject in discover_subjects(root / "data"):
        truth, brain, _ = scan_reference(subject)
        average = np.mean([segment_subject(m, subject)[0] for m in models], axis=0)
        expected = f1_score(truth[brain], average[brain] >= 0.5, zero_division=1.0)
        entry = summary[subject.id]["a0.5_b0.5"]
        assert entry["dsc"] == pytest.approx(expected, abs=1e-6) and entry["models"] == 2
    assert "each row's models as one ensemble" in (out / "sim2real-grid.md").read_text()
    # Run again: every score, the ensembles' too, is read back, no model loaded.
    assert sim2real_grid.main(command + ["--ensemble"]) == 0
    printed = capsys.readouterr().out
    assert "ensemble of" not in printed and "] phantom-v3-smoke" not in printed


def test_each_rows_ensemble_retention_curves_end_at_its_own_scores(grids, capsys):
    root, folders, out, command = grids
    assert sim2real_grid.main(command + ["--ensemble", "--uncertainty"]) == 0
    printed = capsys.readouterr().out
    assert "uncertainty of the a0.5_b0.5 ensemble (2 members) on sub00" in printed
    saved = json.loads((out / "retention.json").read_text())
    assert set(saved["rows"]) == {"a0.5_b0.5", "a0.1_b0.9"}
    assert {"date", "commit", "machine"} <= set(saved["made"]) and saved["overlap"] == "any"
    models = [keras.saving.load_model(cell_folder(f, 0.5, 0.5, 0) / "run" / "last.keras")
              for f in folders]
    for subject in discover_subjects(root / "data"):
        entry = saved["rows"]["a0.5_b0.5"][subject.id]
        assert entry["members"] == 2 and set(entry["measures"]) == {"entropy",
                                                                    "mutual_information"}
        truth, brain, _ = scan_reference(subject)
        predicted = (segment_subject(models, subject)[0] >= 0.5) & brain
        entropy = entry["measures"]["entropy"]
        # Everything retained: the ensemble's own nDSC and lesion F1 inside the brain.
        assert entropy["voxel"]["ndsc"][-1] == pytest.approx(
            normalised_dsc(truth, predicted, mask=brain))
        assert entropy["voxel"]["voxels"] == brain.sum()
        detection = lesion_detection(truth & brain, predicted)
        assert entropy["lesion"]["f1"][-1] == pytest.approx(detection["lesion_f1"])
        ranks = entropy["lesions"]
        assert (ranks["correct"], ranks["false"]) == (detection["lesion_tp_pred"],
                                                      detection["lesion_fp"])
    table = (out / "retention.md").read_text().splitlines()
    rows = [line.split(" | ")[:2] for line in table if line.startswith("| a=")]
    assert rows == [["| a=0.5, b=0.5", "sub00"], ["| a=0.5, b=0.5", "sub01"],
                    ["| a=0.1, b=0.9", "sub00"], ["| a=0.1, b=0.9", "sub01"]]   # paper's order
    assert (out / "retention.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Run again: read back, no model loaded.
    assert sim2real_grid.main(command + ["--ensemble", "--uncertainty"]) == 0
    assert "uncertainty of the" not in capsys.readouterr().out


def test_uncertainty_without_an_ensemble_is_refused(grids, capsys):
    _, _, _, command = grids
    with pytest.raises(SystemExit) as stopped:
        sim2real_grid.main(command + ["--uncertainty"])
    assert stopped.value.code == 2
    assert "--uncertainty scores each row's ensemble: give --ensemble too" in \
        capsys.readouterr().err


def subject_named(folder, name):
    """A manifest in ``folder`` whose one subject, tiny scans of ``folder/scans``, is ``name``."""
    write_tiny_subjects(folder / "scans", n=1)
    files = ",".join(f"scans/sub00/{stem}.nii.gz"
                     for stem in ("T1W", "T2W", "FLAIR", "consensus_gt"))
    (folder / "m.csv").write_text(f"subject,t1,t2,flair,mask\nsub01,{files}\n{name},{files}\n")
    return folder / "m.csv"


@pytest.mark.parametrize("name, problem", [
    ("../../victim", "it holds the path separator /"),
    ("ABSOLUTE", "it is an absolute path"),
    ("site1/p01", "it holds the path separator /"),
    ("..", "it is the folder itself or the one above"),
    ("SUB01", "it collides with line 2: subject 'sub01'"),
])
def test_a_subject_name_that_cannot_be_a_score_file_is_refused_before_any_work(
        name, problem, tmp_path, capsys):
    name = str(tmp_path / "victim") if name == "ABSOLUTE" else name
    manifest = subject_named(tmp_path / "data", name)
    (tmp_path / "grid").mkdir()
    (tmp_path / "grid" / "experiment.json").write_text("{}")
    before = sorted(tmp_path.rglob("*"))
    assert sim2real_grid.main(["--data", str(manifest), "--grid", str(tmp_path / "grid"),
                               "--out", str(tmp_path / "deep" / "out")]) == 1
    err = capsys.readouterr().err
    assert (f"{manifest}: line 3: subject {name!r} cannot be a file or folder name: {problem}"
            in err and err.count("\n") == 1)
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("grids_named, problem", [
    (("results/Grid", "other/grid"), "--grid {1}: the folder name 'grid' cannot be a file or "
                                     "folder name: it collides with --grid {0}"),
    (("ensemble",), "--grid {0}: the folder name 'ensemble' cannot be a file or folder name: "
                    "it is the name of the output's own 'ensemble'"),
    (("results/sub/..",), "--grid {0}: the folder name '..' cannot be a file or folder name"),
])
def test_a_grid_folder_name_that_cannot_be_a_folder_of_out_is_refused(
        grids_named, problem, tmp_path, capsys):
    write_tiny_subjects(tmp_path / "data", n=1)
    grids = [tmp_path / name for name in grids_named]
    for grid in grids:
        grid.mkdir(parents=True, exist_ok=True)
        (grid / "experiment.json").write_text("{}")   # else refused as no results folder
    assert sim2real_grid.main(["--data", str(tmp_path / "data"), "--grid", *map(str, grids),
                               "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert problem.format(*grids) in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_a_subject_name_with_spaces_dashes_and_dots_is_scored_under_it(grids, tmp_path):
    root, folders, _, _ = grids
    shutil.copytree(root / "data" / "sub00", tmp_path / "data" / "site 1-p.01")
    out = tmp_path / "out"
    assert sim2real_grid.main(["--data", str(tmp_path / "data"), "--grid", str(folders[0]),
                               "--out", str(out)]) == 0
    scores = sorted(p.relative_to(out) for p in out.rglob("*.json"))
    assert scores == sorted([Path("sim2real-grid.json")] + [
        Path(folders[0].name, row, fold, "site 1-p.01.json")
        for row, fold in (("a0.5_b0.5", "fold0"), ("a0.1_b0.9", "fold0"), ("a0.1_b0.9", "fold1"))])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out"]


def test_the_grids_phantom_gives_the_threshold_baselines(grids):
    """The phantom-only baseline's k is chosen on the phantom the grid trained on (its
    experiment.json's data), and each subject's DSC at that k is recounted here."""
    root, folders, out, _ = grids
    result = json.loads((out / "sim2real-grid.json").read_text())
    phantom = Path(json.loads((folders[0] / "experiment.json").read_text())["data"])
    baselines = result["baselines"]
    assert baselines["n_phantom_subjects"] == len(discover_subjects(phantom))
    for subject in discover_subjects(root / "data"):
        truth, brain, z = scan_reference(subject)
        called = (z >= baselines["phantom_k"]) & brain
        expected = 2 * np.sum(called & truth) / (called.sum() + np.sum(truth & brain))
        assert baselines["subjects"][subject.id]["phantom"]["dsc"] == pytest.approx(expected)
    assert "FLAIR threshold, k from the phantom" in (out / "sim2real-grid.md").read_text()
