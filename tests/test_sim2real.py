"""reproduce.sim2real: a phantom-trained model, outputs in each scan's geometry, an independent oracle."""

import json
from pathlib import Path

import keras
import nibabel as nib
import numpy as np
import pytest

from reproduce import sim2real
from reproduce.experiment import PROFILES
from conftest import json_approx
from tiny_data import write_tiny_subjects
from tversky_keras.atomic import strict
from tversky_keras.evaluation import challenge_metrics
from tversky_keras.scan_spec import scan_spec

KEYS = {"dsc", "sensitivity", "specificity", "lesion_tpr", "lesion_fpr", "threshold_dsc"}
# Left-handed storage (x runs right to left): the outputs must come back in file order.
LAS = np.diag([-2.0, 2.0, 2.0, 1.0])


def make_clipping_matter(folder):
    """A small, very bright lesion among slightly less bright non-lesion voxels.

    With 8 lesion voxels at 5 and 20 others at 4 in about 2,700 brain voxels,
    the brain's 99.5th percentile is 4: a FLAIR clipped there cannot tell the
    lesion from the others (best DSC 16/36), the unclipped one can (DSC 1).
    """
    truth_image = nib.load(folder / "consensus_gt.nii.gz")
    flair_image = nib.load(folder / "FLAIR.nii.gz")
    truth, flair = np.asarray(truth_image.dataobj), flair_image.get_fdata().astype(np.float32)
    lesion = np.flatnonzero(truth)[:8]
    others = np.flatnonzero((flair != 0) & (truth == 0))[::50][:20]
    truth = np.zeros_like(truth)
    truth.flat[lesion] = 1
    flair.flat[lesion], flair.flat[others] = 5.0, 4.0
    nib.save(nib.Nifti1Image(truth, truth_image.affine), folder / "consensus_gt.nii.gz")
    nib.save(nib.Nifti1Image(flair, flair_image.affine), folder / "FLAIR.nii.gz")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim2real")
    folders = write_tiny_subjects(root / "data", n=2, affine=LAS)
    make_clipping_matter(folders[0])
    argv = ["--data", str(root / "data"), "--profile", "smoke", "--results",
            str(root / "results"), "--cache", str(root / "cache"), "--mirror", "none",
            "--threshold-union", "none"]
    assert sim2real.main(argv) == 0
    return root / "results" / "sim2real-smoke-v3-randomized-rim-wmpeak-ce1", folders, argv


def read(path):
    image = nib.load(path)
    return np.asarray(image.dataobj), image.affine


def oracle_by_trying_every_threshold(truth, intensity):
    """The best DSC of ``intensity >= t`` over every value t (and calling nothing: 0)."""
    best = 0.0
    for t in np.unique(intensity):
        called = intensity >= t
        best = max(best, 2 * np.sum(called & truth) / (called.sum() + truth.sum()))
    return best


def test_outputs_are_in_each_scans_own_geometry(smoke_run):
    root, folders, _ = smoke_run
    for folder in folders:
        flair, affine = read(folder / "FLAIR.nii.gz")
        for name in ("probability.nii.gz", "mask.nii.gz"):
            data, written_affine = read(root / folder.name / name)
            assert data.shape == flair.shape
            np.testing.assert_allclose(written_affine, affine)
        probability, _ = read(root / folder.name / "probability.nii.gz")
        assert probability.dtype == np.float32 and 0 <= probability.min() <= probability.max() <= 1


def test_json_has_every_metric_and_the_settings(smoke_run):
    root, folders, _ = smoke_run
    result = json.loads((root / "sim2real.json").read_text())
    assert set(result["subjects"]) == {f.name for f in folders}
    for scores in result["subjects"].values():
        assert KEYS <= set(scores)
    assert (result["alpha"], result["beta"]) == (0.3, 0.7)
    assert result["profile"]["name"] == "smoke"
    assert result["training"]["spacing"] == PROFILES["smoke"].phantom_spacing
    assert result["training"]["ce_weight"] == 1.0  # the recipe's Tversky + cross-entropy
    assert result["phantom"]["spacing"] == PROFILES["smoke"].phantom_spacing
    assert "| sub00 |" in (root / "sim2real.md").read_text()


def test_metrics_match_an_independent_computation_in_the_brain(smoke_run):
    root, folders, _ = smoke_run
    result = json.loads((root / "sim2real.json").read_text())
    for folder in folders:
        scans = [read(folder / f"{m}.nii.gz")[0] for m in ("T1W", "T2W", "FLAIR")]
        brain = np.logical_or.reduce([scan != 0 for scan in scans])   # no brain mask
        truth = read(folder / "consensus_gt.nii.gz")[0][brain] != 0
        # DSC is unchanged by any increasing map of the intensity, z-scoring included.
        expected = oracle_by_trying_every_threshold(truth, scans[2][brain])
        scores = result["subjects"][folder.name]
        assert scores["threshold_dsc"] == pytest.approx(expected, abs=1e-12)
        called = read(root / folder.name / "mask.nii.gz")[0][brain] != 0
        tp = np.sum(called & truth)
        assert scores["dsc"] == pytest.approx(2 * tp / (called.sum() + truth.sum()))
        assert scores["sensitivity"] == pytest.approx(tp / truth.sum())
        assert scores["specificity"] == pytest.approx(np.sum(~called & ~truth) / np.sum(~truth))
    # The unclipped FLAIR separates the bright lesion; the network's clipped input could not.
    assert result["subjects"]["sub00"]["threshold_dsc"] == 1.0


def test_challenge_metrics_match_the_written_probability_at_the_scans_zooms(smoke_run):
    root, folders, _ = smoke_run
    result = json.loads((root / "sim2real.json").read_text())
    for folder in folders:
        scans = [read(folder / f"{m}.nii.gz")[0] for m in ("T1W", "T2W", "FLAIR")]
        brain = np.logical_or.reduce([scan != 0 for scan in scans])
        truth = read(folder / "consensus_gt.nii.gz")[0] != 0
        probability = read(root / folder.name / "probability.nii.gz")[0]
        zooms = nib.load(folder / "FLAIR.nii.gz").header.get_zooms()[:3]
        expected = challenge_metrics(truth, probability, zooms, threshold=0.5, overlap="any",
                                     mask=brain)
        scores = result["subjects"][folder.name]
        for key, value in strict(expected).items():  # JSON holds NaN as null
            assert scores[key] == (pytest.approx(value, abs=1e-9)
                                   if isinstance(value, float) else value), key
    text = (root / "sim2real.md").read_text()
    assert "| nDSC | lesion F1 | HD95 mm |" in text


def test_the_model_resamples_scans_to_the_phantom_spacing(smoke_run):
    root, _, _ = smoke_run
    model = keras.saving.load_model(root / "run" / "last.keras")
    assert scan_spec(model)["spacing"] == PROFILES["smoke"].phantom_spacing == 4.0
    result = json.loads((root / "sim2real.json").read_text())
    assert result["model_spacing"] == 4.0


def test_a_rerun_skips_finished_work_and_other_settings_are_refused(smoke_run, tmp_path, capsys):
    root, folders, argv = smoke_run
    written = {f.name: (root / f.name / "probability.nii.gz").stat().st_mtime_ns for f in folders}
    before = json.loads((root / "sim2real.json").read_text())
    assert sim2real.main(argv) == 0
    assert {f.name: (root / f.name / "probability.nii.gz").stat().st_mtime_ns
            for f in folders} == written
    out = capsys.readouterr().out
    assert [f"skip {f.name}: finished" in out for f in folders] == [True] * len(folders)
    assert "finished earlier" in out and "nothing to train" in out  # the run, not retrained
    assert json.loads((root / "sim2real.json").read_text()) == before
    other = tmp_path / "other"
    write_tiny_subjects(other, n=1)
    changed = list(argv)
    changed[changed.index("--data") + 1] = str(other)
    with pytest.raises(SystemExit, match="other settings .*data"):
        sim2real.main(changed)


@pytest.mark.parametrize("profile, spacing", [("quick", 2.0), ("smoke", 4.0), ("paper", 1.0)])
def test_training_uses_the_phantom_spacing_and_every_subject(profile, spacing):
    config = sim2real.train_config(PROFILES[profile], 0.3, 0.7, n_subjects=15)
    assert config.spacing == spacing
    assert (config.alpha, config.beta, config.init) == (0.3, 0.7, None)
    assert config.steps_per_epoch == (PROFILES[profile].steps_per_epoch or 15)


def test_a_phantom_of_another_generator_version_is_refused(tmp_path):
    (tmp_path / "phantom.json").write_text(json.dumps({"version": 2}))
    with pytest.raises(SystemExit, match="version 2, not 3"):
        sim2real.phantom_manifest(tmp_path, 3)


def manifest_naming(folder, name):
    """A manifest in ``folder`` whose one subject, ``folder/sub00``'s scans, is called ``name``."""
    files = ",".join(f"sub00/{stem}.nii.gz" for stem in ("T1W", "T2W", "FLAIR", "consensus_gt"))
    (folder / "m.csv").write_text(f"subject,t1,t2,flair,mask\n{name},{files}\n")
    return folder / "m.csv"


@pytest.mark.parametrize("name, problem", [
    ("../../victim", "it holds the path separator /"),
    ("ABSOLUTE", "it is an absolute path"),
    ("site1/p01", "it holds the path separator /"),
    ("..", "it is the folder itself or the one above"),
    ("run", "it is the name of the output's own 'run'"),
    ("RUN", "it is the name of the output's own 'run'"),
    ("settings.json", "it is the name of the output's own 'settings.json'"),
])
def test_a_subject_name_that_cannot_be_a_results_folder_is_refused_before_any_work(
        name, problem, tmp_path, capsys):
    write_tiny_subjects(tmp_path / "data", n=1)
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "mask.nii.gz").write_text("the user's own file")
    name = str(tmp_path / "victim") if name == "ABSOLUTE" else name
    manifest = manifest_naming(tmp_path / "data", name)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    results = tmp_path / "deep" / "results"   # ../../victim from its experiment's folder
    assert sim2real.main(["--data", str(manifest), "--profile", "smoke", "--results",
                          str(results), "--cache", str(tmp_path / "cache")]) == 1
    err = capsys.readouterr().err
    assert f"{manifest}: " in err and f"subject {name!r} cannot be a file or folder name: " \
        f"{problem}" in err and err.count("\n") == 1
    # Nothing written, in --results or out of it, and no phantom made: no work began.
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


def test_another_seed_trains_another_model_into_its_own_folder(smoke_run):
    folder, _, argv = smoke_run
    assert sim2real.main([*argv, "--seed", "3"]) == 0
    seeded = folder.parent / "sim2real-smoke-v3-randomized-rim-wmpeak-ce1-seed3"
    settings = json.loads((seeded / "settings.json").read_text())
    assert settings["training"]["seed"] == 3
    assert json.loads((folder / "settings.json").read_text())["training"]["seed"] == 0
    # Same phantom, same budget, another seed: other weights.
    ours, theirs = (keras.saving.load_model(f / "run" / "last.keras").get_weights()
                    for f in (folder, seeded))
    assert any(not np.array_equal(a, b) for a, b in zip(ours, theirs))


def test_another_phantom_spacing_augmentation_and_oversampling_train_into_their_own_folder(
        smoke_run):
    folder, _, argv = smoke_run
    assert sim2real.main([*argv, "--phantom-spacing", "6", "--intensity-augmentation",
                          "--oversample", "0.5"]) == 0
    other = folder.parent / "sim2real-smoke-v3-randomized-rim-6mm-augment-wmpeak-oversample0.5-ce1"
    settings = json.loads((other / "settings.json").read_text())
    assert settings["training"]["intensity_augmentation"] is True
    assert settings["training"]["foreground_ratio"] == 0.5
    assert settings["training"]["spacing"] == settings["phantom"]["spacing"] == 6.0
    model = keras.saving.load_model(other / "run" / "last.keras")
    assert scan_spec(model)["spacing"] == 6.0
    assert json.loads((folder / "settings.json").read_text())["training"][
        "intensity_augmentation"] is False


@pytest.mark.parametrize("value, message", [("-0.1", "-0.1: a fraction between 0 and 1"),
                                            ("1.5", "1.5: a fraction between 0 and 1"),
                                            ("nan", "'nan' is not a finite number")])
def test_an_oversampling_fraction_outside_zero_one_is_refused(capsys, value, message):
    with pytest.raises(SystemExit):
        sim2real.build_parser().parse_args(["--data", "d", "--oversample", value])
    assert f"--oversample: {message}" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0.4", "9", "nan"])
def test_a_phantom_spacing_the_generator_cannot_make_is_refused(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as stopped:
        sim2real.main(["--data", str(tmp_path), "--results", str(tmp_path / "r"),
                       "--phantom-spacing", value])
    assert stopped.value.code == 2
    assert "--phantom-spacing" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_the_default_recipe_trains_on_four_randomized_looks_per_profile_subject(smoke_run):
    root, _, _ = smoke_run
    result = json.loads((root / "sim2real.json").read_text())
    assert result["recipe"]["name"] == sim2real.DEFAULT_RECIPE == "randomized-rim"
    assert result["phantom"]["version"] == 3
    assert result["phantom"]["appearance"] == "randomized-rim"
    assert result["phantom"]["n_subjects"] == 4 * PROFILES["smoke"].phantom_subjects
    assert result["training_summary"]["n_train"] == result["phantom"]["n_subjects"]
    assert result["training"]["intensity_normalization"] == "wm-peak"
    model = keras.saving.load_model(root / "run" / "last.keras")
    assert scan_spec(model)["intensity_normalization"] == "wm-peak"


def test_seeds_report_each_subjects_mean_and_std_of_the_seed_files(smoke_run):
    root, folders, argv = smoke_run
    assert sim2real.main([*argv, "--seeds", "2"]) == 0
    summary = json.loads(root.with_name(root.name + "-seeds.json").read_text())
    runs = [json.loads((f / "sim2real.json").read_text())
            for f in (root, root.with_name(root.name + "-seed1"))]
    assert summary["seeds"] == [0, 1] and summary["variant"]["phantom_version"] == 3
    for folder in folders:
        scores = [run["subjects"][folder.name] for run in runs]
        entry = summary["subjects"][folder.name]
        for key in ("dsc", "sensitivity", "specificity", "ndsc", "lesion_f1", "hd95_mm",
                    "abs_volume_difference_ml"):
            values = np.array([s[key] for s in scores], dtype=float)  # null (undefined): nan
            assert entry[key]["mean"] == json_approx(np.mean(values)), key
            assert entry[key]["std"] == json_approx(np.std(values)), key
        assert entry["above_oracle"] == sum(s["dsc"] > s["threshold_dsc"] for s in scores)
    assert {"date", "commit", "machine", "command"} <= set(summary["made"])
    assert summary["seconds"]["training"] == [r["training_summary"]["seconds_this_session"]
                                              for r in runs]


def test_threshold_union_raises_the_networks_probability_where_the_phantom_k_calls(smoke_run):
    from reproduce.scoring import scan_reference

    root, folders, argv = smoke_run
    assert sim2real.main([*argv, "--threshold-union", "phantom"]) == 0
    united = root.with_name(root.name + "-union")
    assert not (united / "run").exists()  # the same network, not trained again
    result = json.loads((united / "sim2real.json").read_text())
    k = result["threshold_union_k"]
    assert k == result["baselines"]["phantom_k"] and np.isfinite(k)
    for subject in sim2real.discover_subjects(folders[0].parent):
        network, _ = read(root / subject.id / "probability.nii.gz")
        written, _ = read(united / subject.id / "probability.nii.gz")
        truth, brain, flair_z = scan_reference(subject)
        called = (flair_z >= k) & brain
        # Independently: 1 where the threshold calls, the network's probability elsewhere.
        np.testing.assert_allclose(written[called], 1.0)
        np.testing.assert_allclose(written[~called], network[~called], atol=1e-6)
        mask = read(united / subject.id / "mask.nii.gz")[0] != 0
        np.testing.assert_array_equal(mask, (network >= 0.5) | called)
        tp = np.sum(mask & truth & brain)
        assert result["subjects"][subject.id]["dsc"] == pytest.approx(
            2 * tp / (np.sum(mask & brain) + np.sum(truth & brain)))
    # The network alone stays in its own folder, untouched.
    assert json.loads((root / "sim2real.json").read_text()).get("threshold_union_k") is None


def test_the_core_union_thresholds_the_core_statistics_z_at_the_core_phantom_k(smoke_run):
    from reproduce.scoring import scan_reference

    root, folders, argv = smoke_run
    assert sim2real.main([*argv, "--threshold-union", "phantom-core"]) == 0
    united = root.with_name(root.name + "-union-core6")
    assert not (united / "run").exists()
    result = json.loads((united / "sim2real.json").read_text())
    k = result["threshold_union_k"]
    assert k == result["baselines"]["phantom_core_k"] and result["threshold_union_core_mm"] == 6
    for subject in sim2real.discover_subjects(folders[0].parent):
        network, _ = read(root / subject.id / "probability.nii.gz")
        written, _ = read(united / subject.id / "probability.nii.gz")
        _, brain, flair_z = scan_reference(subject, 6.0)
        called = (flair_z >= k) & brain
        np.testing.assert_allclose(written[called], 1.0)
        np.testing.assert_allclose(written[~called], network[~called], atol=1e-6)
        about = json.loads((united / subject.id / "segmentation.json").read_text())
        assert about["threshold_union_core_mm"] == 6.0


def test_mirroring_predicts_with_the_seeds_network_without_training_again(smoke_run):
    root, folders, argv = smoke_run
    assert sim2real.main([*argv, "--mirror", "x"]) == 0
    mirrored = root.with_name(root.name + "-mirror-x")
    assert not (mirrored / "run").exists()
    assert json.loads((mirrored / "settings.json").read_text())["mirror_axes"] == [0]
    model = keras.saving.load_model(root / "run" / "last.keras")
    subject = next(s for s in sim2real.discover_subjects(folders[0].parent)
                   if s.id == folders[0].name)
    expected, _ = sim2real.segment_subject(model, subject, mirror_axes=(0,))
    written, _ = read(mirrored / subject.id / "probability.nii.gz")
    np.testing.assert_allclose(written, expected, atol=1e-6)
    plain, _ = read(root / subject.id / "probability.nii.gz")
    assert np.abs(plain - written).max() > 1e-4


def test_a_folder_recorded_before_a_training_setting_existed_is_accepted(tmp_path):
    settings = {"alpha": 0.3, "training": {"seed": 0, "intensity_normalization": "zscore"}}
    (tmp_path / "settings.json").write_text(json.dumps(
        {"alpha": 0.3, "training": {"seed": 0}}))
    sim2real.check_settings(tmp_path, settings)
    with pytest.raises(SystemExit, match="other settings .*training"):
        sim2real.check_settings(tmp_path, {**settings, "training": {
            "seed": 0, "intensity_normalization": "wm-peak"}})


@pytest.mark.parametrize("options, name", [
    ([], "sim2real-quick-v3-randomized-rim-wmpeak-ce1"),
    (["--recipe", "calibrated"], "sim2real-quick-v3-calibrated-wmpeak-ce1"),
    (["--phantom-version", "2", "--recipe", "calibrated", "--intensity-normalization", "zscore",
      "--ce-weight", "0"], "sim2real-quick-v2-calibrated"),
    (["--phantom-subjects", "60"], "sim2real-quick-v3-randomized-rim-wmpeak-ce1"),
    (["--phantom-subjects", "30"], "sim2real-quick-v3-randomized-rim-30subjects-wmpeak-ce1"),
    (["--intensity-normalization", "zscore", "--intensity-augmentation"],
     "sim2real-quick-v3-randomized-rim-augment-ce1"),
    (["--oversample", "0.33"], "sim2real-quick-v3-randomized-rim-wmpeak-oversample0.33-ce1"),
    (["--oversample", "0"], "sim2real-quick-v3-randomized-rim-wmpeak-ce1"),
    (["--ce-weight", "0"], "sim2real-quick-v3-randomized-rim-wmpeak"),
    (["--ce-weight", "0.5"], "sim2real-quick-v3-randomized-rim-wmpeak-ce0.5"),
    (["--intensity-normalization", "wm-peak-core"],
     "sim2real-quick-v3-randomized-rim-wmpeakcore-ce1"),
    (["--recipe", "mixed"], "sim2real-quick-v3-mixed-wmpeak-ce1"),
])
def test_every_training_setting_names_its_own_folder(options, name):
    args = sim2real.build_parser().parse_args(["--data", "d", *options])
    assert sim2real.experiment_name(args, sim2real.recipe_profile(args)) == name


def test_the_default_recipe_mirrors_and_none_turns_it_off():
    parse = sim2real.build_parser().parse_args
    assert parse(["--data", "d"]).mirror == (0,)
    assert parse(["--data", "d"]).threshold_union == "phantom"
    assert parse(["--data", "d"]).ce_weight == 1.0
    assert parse(["--data", "d", "--mirror", "none"]).mirror == ()
    assert parse(["--data", "d", "--mirror", "x,z"]).mirror == (0, 2)
    assert parse(["--data", "d"]).intensity_normalization == "wm-peak"


def test_threshold_baselines_match_brute_force_on_the_other_subject_and_the_phantom(smoke_run):
    """Each subject's leave-one-out k is the best threshold on the other subject's brain
    z-scored FLAIR, tried value by value; the phantom's k is the phantom's pooled best
    against a thousand other candidates; each baseline's DSC is recounted here."""
    root, folders, _ = smoke_run
    result = json.loads((root / "sim2real.json").read_text())
    baselines = result["baselines"]

    def reference(folder):
        scans = [read(folder / f"{m}.nii.gz")[0] for m in ("T1W", "T2W", "FLAIR")]
        brain = np.logical_or.reduce([scan != 0 for scan in scans])
        flair = scans[2].astype(np.float64)
        z = np.where(brain, (flair - flair[brain].mean()) / flair[brain].std(), 0)
        return read(folder / "consensus_gt.nii.gz")[0] != 0, brain, z

    def dsc_at(references, k):
        tp = called = n_true = 0
        for truth, brain, z in references:
            mask = (z >= k) & brain
            tp, called, n_true = tp + np.sum(mask & truth), called + mask.sum(), n_true + np.sum(
                truth & brain)
        return 2 * tp / (called + n_true)

    scans = {f.name: reference(f) for f in folders}
    for name, (truth, brain, z) in scans.items():
        (other,) = [v for k, v in scans.items() if k != name]
        candidates = np.unique(other[2][other[1]])
        best = max(dsc_at([other], k) for k in candidates)
        loo = baselines["subjects"][name]["leave_one_out"]
        assert dsc_at([other], loo["k"]) == pytest.approx(best, abs=1e-6)
        assert loo["dsc"] == pytest.approx(dsc_at([(truth, brain, z)], loo["k"]), abs=1e-6)
        called = (z >= loo["k"]) & brain
        assert loo["sensitivity"] == pytest.approx(np.sum(called & truth) / np.sum(truth & brain))
        assert loo["specificity"] == pytest.approx(np.sum(~called & ~truth & brain)
                                                   / np.sum(~truth & brain))
    def phantom_k_is_the_pooled_best(phantom, scans, suffix, candidates):
        """The phantom's k (``phantom<suffix>_k``) reaches its recorded pooled DSC, no
        quantile of the phantom's z-scores beats it, and each subject's DSC at it is
        recounted here."""
        k = baselines[f"phantom{suffix}_k"]
        assert dsc_at(phantom, k) == pytest.approx(baselines[f"phantom{suffix}_dsc"], abs=1e-6)
        pooled = np.concatenate([z[b] for _, b, z in phantom])
        for candidate in np.quantile(pooled, np.linspace(0.5, 1, candidates)):
            assert dsc_at(phantom, candidate) <= baselines[f"phantom{suffix}_dsc"] + 1e-9
        for name, (truth, brain, z) in scans.items():
            assert baselines["subjects"][name][f"phantom{suffix}"]["dsc"] == pytest.approx(
                dsc_at([(truth, brain, z)], k), abs=1e-6)

    phantom_folders = sorted(f for f in Path(result["phantom_folder"]).iterdir() if f.is_dir())
    phantom = [reference(f) for f in phantom_folders]
    assert len(phantom) == baselines["n_phantom_subjects"]
    phantom_k_is_the_pooled_best(phantom, scans, "", 1000)
    assert "FLAIR threshold, k from the phantom" in (root / "sim2real.md").read_text()

    # Core statistics: the mean and std of the brain deeper than 6 mm, applied to the brain.
    from tversky_keras.baseline import brain_core

    def core(reference_of_scan, folder):
        truth, brain, _ = reference_of_scan
        flair = read(folder / "FLAIR.nii.gz")[0].astype(np.float64)
        spacing = np.abs(np.diag(nib.load(folder / "FLAIR.nii.gz").affine)[:3])
        inner = flair[brain_core(brain, spacing, baselines["core_mm"])]
        # float32, as the package stores a z-score: k is one of its values.
        z = np.where(brain, (flair - inner.mean()) / inner.std(), 0).astype(np.float32)
        return truth, brain, z

    assert baselines["core_mm"] == 6.0
    cores = {f.name: core(scans[f.name], f) for f in folders}
    for name, (truth, brain, z) in cores.items():
        (other,) = [v for n, v in cores.items() if n != name]
        best = max(dsc_at([other], c) for c in np.unique(other[2][other[1]]))
        loo = baselines["subjects"][name]["leave_one_out_core"]
        assert dsc_at([other], loo["k"]) == pytest.approx(best, abs=1e-6)
        assert loo["dsc"] == pytest.approx(dsc_at([(truth, brain, z)], loo["k"]), abs=1e-6)
    phantom_core = [core(reference(f), f) for f in phantom_folders]
    phantom_k_is_the_pooled_best(phantom_core, cores, "_core", 300)
    assert "(core statistics), k from the phantom" in (root / "sim2real.md").read_text()


def test_every_normalisation_the_package_has_names_a_sim2real_folder():
    from tversky_keras.data.normalize import INTENSITY_NORMALIZATIONS

    assert tuple(sim2real.NORMALIZATION_SUFFIX) == INTENSITY_NORMALIZATIONS
    assert len(set(sim2real.NORMALIZATION_SUFFIX.values())) == len(INTENSITY_NORMALIZATIONS)
