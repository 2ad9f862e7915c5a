"""reproduce.robustness: each transform of the invariance suite on small arrays, checked by
an independent computation, and the command end to end on a tiny subject."""

import json
import math

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.distance import cdist

from reproduce import robustness
from tiny_data import write_tiny_subjects

SHAPE = (24, 28, 24)
# Tissue means per modality of the small head: T1W bright white matter, FLAIR dark CSF.
TISSUES = {"T1W": {"csf": 20.0, "grey": 60.0, "white": 100.0},
           "T2W": {"csf": 200.0, "grey": 80.0, "white": 50.0},
           "FLAIR": {"csf": 10.0, "grey": 75.0, "white": 60.0}}
# What the lesions add to white matter (mean, standard deviation).
LESION_CONTRAST = {"T1W": (-25.0, 4.0), "T2W": (60.0, 6.0), "FLAIR": (40.0, 6.0)}
NOISE = 2.0


def small_head(semi_axes=(9, 11, 9), spacing=(1.0, 1.0, 1.0), seed=0):
    """A ``Scan`` of an ellipsoid brain: ventricles, white matter around them, a grey-matter
    shell, two lesions in the white matter; and its tissue masks by construction."""
    rng = np.random.default_rng(seed)
    axes = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in SHAPE], indexing="ij")
    radius = np.sqrt(sum((axis / semi) ** 2 for axis, semi in zip(axes, semi_axes)))
    brain = radius < 1
    tissue = {"csf": radius < 0.25, "white": (radius >= 0.25) & (radius < 0.7),
              "grey": brain & (radius >= 0.7)}
    lesions = np.zeros(SHAPE, bool)
    for dy in (-6, 6):
        centre = np.array([(n - 1) / 2 for n in SHAPE]) + [0, dy, 0]
        lesions |= sum((axis + (n - 1) / 2 - c) ** 2
                       for axis, n, c in zip(axes, SHAPE, centre)) <= 2.2 ** 2
    lesions &= tissue["white"]
    images = {}
    for modality, means in TISSUES.items():
        image = sum(means[name] * mask for name, mask in tissue.items())
        image = image + NOISE * rng.standard_normal(SHAPE)
        mean, spread = LESION_CONTRAST[modality]
        image[lesions] += mean + spread * rng.standard_normal(np.count_nonzero(lesions))
        images[modality] = np.where(brain, image, 0.0).astype(np.float32)
    return robustness.Scan(images, brain, lesions, spacing), tissue


@pytest.fixture
def head():
    return small_head()


def test_scaling_and_offset_are_exact_inside_the_brain(head):
    scan, _ = head
    for factor in (0.25, 4.0):
        changed = robustness.scale_intensities(scan, factor)
        for modality, image in scan.images.items():
            inside = image[scan.brain].astype(np.float64)
            expected = factor * inside + 0.5 * factor * np.median(inside)
            np.testing.assert_allclose(changed.images[modality][scan.brain], expected, rtol=1e-6)
            assert not changed.images[modality][~scan.brain].any()


@pytest.mark.parametrize("exponent", [0.6, 1.6])
def test_gamma_matches_the_formula_and_keeps_the_order(head, exponent):
    scan, _ = head
    changed = robustness.gamma(scan, exponent)
    for modality, image in scan.images.items():
        inside = image[scan.brain].astype(np.float64)
        low, high = inside.min(), inside.max()
        for index in (0, 17, 500, int(np.argmax(inside)), int(np.argmin(inside))):
            x = inside[index]
            assert changed.images[modality][scan.brain][index] == pytest.approx(
                low + (high - low) * ((x - low) / (high - low)) ** exponent, rel=1e-5)
        order = np.argsort(inside, kind="stable")
        assert np.all(np.diff(changed.images[modality][scan.brain][order]) >= 0)
        assert not np.array_equal(changed.images[modality], image)


def test_bias_field_reaches_both_bounds_and_multiplies_each_modality(head, rng):
    scan, _ = head
    field = robustness.bias_field(scan.brain, scan.spacing, rng)
    assert field[scan.brain].min() == pytest.approx(0.8, abs=1e-6)
    assert field[scan.brain].max() == pytest.approx(1.2, abs=1e-6)
    assert np.all(field[~scan.brain] == 1)
    # Smooth: one voxel to the next inside the brain moves it by a small part of its range.
    for axis in range(3):
        first, second = (np.moveaxis(a, axis, 0) for a in (field, scan.brain))
        both = second[:-1] & second[1:]
        assert np.abs(np.diff(first, axis=0))[both].max() < 0.1
    changed = robustness.bias(scan, np.random.default_rng(5))
    ratios = {m: changed.images[m][scan.brain] / scan.images[m][scan.brain] for m in scan.images}
    for ratio in ratios.values():
        assert ratio.min() == pytest.approx(0.8, abs=1e-5)
        assert ratio.max() == pytest.approx(1.2, abs=1e-5)
    assert not np.allclose(ratios["T1W"], ratios["FLAIR"])  # one field per modality


def slab_scan(values, spacing=(1.0, 1.0, 1.0)):
    """A ``Scan`` whose brain fills the grid and whose every modality is ``values``."""
    images = {m: np.asarray(values, np.float32) for m in robustness.MODALITIES}
    return robustness.Scan(images, np.ones(SHAPE, bool), np.zeros(SHAPE, bool), spacing)


def test_thick_slices_keep_constant_and_linear_volumes_and_destroy_a_checkerboard():
    z = np.arange(SHAPE[2], dtype=np.float64)[None, None, :]
    constant = robustness.thick_slices(slab_scan(np.full(SHAPE, 7.0)))
    for modality in robustness.MODALITIES:
        np.testing.assert_allclose(constant.images[modality], 7.0, rtol=1e-6)
    ramp = np.broadcast_to(10 + 3 * z, SHAPE)
    thick = robustness.thick_slices(slab_scan(ramp))
    # Slabs of 5 slices centred at 2, 7, ..., 17 and (the last, of 4) at 21.5: exact
    # between the first and last centre, held constant beyond them.
    inner = slice(2, 22)
    np.testing.assert_allclose(thick.images["FLAIR"][..., inner], ramp[..., inner], rtol=1e-5)
    assert np.abs(thick.images["FLAIR"] - ramp).max() <= 3 * 2 + 1e-4
    checkerboard = np.broadcast_to(5 + (-1.0) ** z, SHAPE)
    thick = robustness.thick_slices(slab_scan(checkerboard))
    for modality in ("FLAIR", "T2W"):
        assert np.abs(thick.images[modality] - 5).max() <= 0.2 + 1e-5
    np.testing.assert_array_equal(thick.images["T1W"], checkerboard)  # a 3D acquisition


def test_thick_slices_follow_the_voxel_size_and_ignore_the_zeros_around_the_brain(head):
    scan, _ = head
    flat = robustness.Scan({m: np.where(scan.brain, 4.0, 0.0).astype(np.float32)
                            for m in scan.images}, scan.brain, scan.truth, (1.0, 1.0, 2.5))
    thick = robustness.thick_slices(flat)
    np.testing.assert_allclose(thick.images["FLAIR"][scan.brain], 4.0, rtol=1e-6)
    z = np.arange(SHAPE[2])[None, None, :]
    checkerboard = slab_scan(np.broadcast_to((-1.0) ** z, SHAPE), spacing=(1.0, 1.0, 2.5))
    # 5 mm at 2.5 mm: slabs of two slices, whose means are 0.
    assert np.abs(robustness.thick_slices(checkerboard).images["T2W"]).max() < 1e-6
    unchanged = slab_scan(np.broadcast_to((-1.0) ** z, SHAPE), spacing=(1.0, 1.0, 5.0))
    assert robustness.thick_slices(unchanged) is unchanged


def test_rim_is_4_to_6_mm_of_non_zero_tissue_outside_the_brain():
    spacing = (1.0, 1.0, 1.5)
    scan, _ = small_head(semi_axes=(5, 7, 4), spacing=spacing)
    changed = robustness.skull_rim(scan, np.random.default_rng(3))
    rim = (changed.images["FLAIR"] != 0) & ~scan.brain
    position = lambda mask: np.argwhere(mask) * spacing  # noqa: E731
    # Brute force: each outside voxel's distance (mm) to the nearest brain voxel.
    outside = ~scan.brain
    distance = np.full(SHAPE, np.inf)
    distance[outside] = cdist(position(outside), position(scan.brain)).min(axis=1)
    assert rim.any() and np.all(distance[rim] <= 6 + 1e-9)
    assert np.all(rim[outside & (distance <= 4)])
    assert (outside & (distance > 4) & (distance <= 6) & ~rim).any()  # varies in between
    for modality, image in changed.images.items():
        assert np.all(image[rim] > 0)
        np.testing.assert_array_equal((image != 0) & ~scan.brain, rim)
        np.testing.assert_array_equal(image[scan.brain], scan.images[modality][scan.brain])
        median = np.median(scan.images[modality][scan.brain])
        assert (image[rim] > median).any() and (image[rim] < median).any()  # fat and bone
    np.testing.assert_array_equal(changed.brain, scan.brain)  # scored in the original brain


@pytest.mark.parametrize("factor", [0.88, 1.12])
def test_zoom_scales_the_brain_and_its_lesions_about_its_centre(factor):
    scan, _ = small_head()
    half = robustness.Scan(scan.images, scan.brain, scan.brain & (np.arange(SHAPE[0]) > 11.5)
                           [:, None, None], scan.spacing)
    ramp = np.broadcast_to(np.arange(SHAPE[0], dtype=np.float32)[:, None, None], SHAPE)
    half = robustness.Scan({**half.images, "T1W": ramp}, half.brain,
                           half.truth, half.spacing)
    changed = robustness.zoom_brain(half, factor)
    for before, after in ((half.brain, changed.brain), (half.truth, changed.truth)):
        assert np.count_nonzero(after) / np.count_nonzero(before) == pytest.approx(
            factor ** 3, rel=0.03)
    assert not (changed.truth & ~changed.brain).any()
    # A linear image comes back linear: voxel x holds c + (x - c) / factor.
    centre = np.argwhere(scan.brain).mean(axis=0)[0]
    x = np.broadcast_to(np.arange(SHAPE[0])[:, None, None], SHAPE)
    np.testing.assert_allclose(changed.images["T1W"][changed.brain],
                               (centre + (x - centre) / factor)[changed.brain], atol=1e-3)
    assert not changed.images["T1W"][~changed.brain].any()


def test_t1_contrast_halves_each_distance_below_the_median(head):
    scan, _ = head
    changed = robustness.t1_contrast(scan)
    before = scan.images["T1W"][scan.brain].astype(np.float64)
    after = changed.images["T1W"][scan.brain].astype(np.float64)
    median = np.median(before)
    below = before < median
    np.testing.assert_allclose(median - after[below], (median - before[below]) / 2, rtol=1e-5,
                               atol=1e-4)
    np.testing.assert_array_equal(after[~below], before[~below])
    for modality in ("T2W", "FLAIR"):
        np.testing.assert_array_equal(changed.images[modality], scan.images[modality])


def test_pasted_lesions_land_in_white_matter_at_the_patients_own_contrast(head):
    scan, tissue = head
    donor = np.zeros(SHAPE, bool)
    donor[10:, :, 6:18] = True  # over ventricles, white and grey matter and outside the brain
    stress = robustness.paste_lesions(scan, donor, np.random.default_rng(0))
    added, stressed = stress.added, stress.scan
    assert np.count_nonzero(added) > 500
    assert not (added & ~tissue["white"]).any() and not (added & ~scan.brain).any()
    assert not (added & ~donor).any() and not (added & scan.truth).any()
    assert not (added & ~robustness.white_matter_like(scan.images, scan.brain,
                                                      scan.spacing)).any()
    np.testing.assert_array_equal(stressed.truth, scan.truth | added)
    for modality, (contrast, spread) in LESION_CONTRAST.items():
        image = scan.images[modality].astype(np.float64)
        # The patient's lesion contrast: its lesions' mean minus its normal white matter's.
        measured = image[scan.truth].mean() - image[tissue["white"] & ~scan.truth].mean()
        assert measured == pytest.approx(contrast, abs=2.5)
        shift = stressed.images[modality][added] - image[added]
        assert shift.mean() == pytest.approx(measured, abs=1.0)
        # The noise widens normal tissue's spread (NOISE) to the lesions'.
        lesions = np.hypot(NOISE, spread)
        assert shift.std() == pytest.approx(math.sqrt(lesions ** 2 - NOISE ** 2), rel=0.2)
        np.testing.assert_array_equal(stressed.images[modality][~added],
                                      scan.images[modality][~added])
        change = stress.normalisation[modality]["change"]
        brain_means = [s.images[modality][scan.brain].mean(dtype=np.float64)
                       for s in (scan, stressed)]
        assert change["brain_mean"] == pytest.approx(brain_means[1] - brain_means[0], rel=1e-6)
        assert np.sign(change["brain_mean"]) == np.sign(contrast)


def test_lesion_load_refuses_a_scan_off_the_masks_grid_in_one_line(head, rng):
    scan, _ = head
    with pytest.raises(ValueError, match="182x218x182") as caught:
        robustness.lesion_load(scan, rng)
    assert "\n" not in str(caught.value) and "24x28x24" in str(caught.value)


@pytest.mark.parametrize("name", [n for n in robustness.TRANSFORMS if n != "lesion-load"])
def test_each_transform_is_deterministic_and_leaves_its_input_alone(name):
    scan, _ = small_head(semi_axes=(6, 8, 6))
    kept = {m: image.copy() for m, image in scan.images.items()}
    apply = robustness.TRANSFORMS[name].apply
    first, second = (apply(scan, robustness.cell_generator(0, "sub", name)) for _ in range(2))
    for modality in scan.images:
        np.testing.assert_array_equal(scan.images[modality], kept[modality])
        np.testing.assert_array_equal(first.images[modality], second.images[modality])
        assert first.images[modality].dtype == np.float32
    assert any(not np.array_equal(first.images[m], scan.images[m]) for m in scan.images)


def no_constant(text):
    raise ValueError(f"not strict JSON: {text}")


def test_the_command_scores_each_transform_beside_the_unchanged_scan_and_resumes(
        tiny_model, tmp_path, capsys):
    write_tiny_subjects(tmp_path / "data", n=1)
    argv = ["--data", str(tmp_path / "data"), "--model", str(tiny_model), "--mirror", "none",
            "--transforms", "scale4,g", "--out", str(tmp_path / "out")]
    assert robustness.main(argv) == 0
    record = json.loads((tmp_path / "out" / "robustness.json").read_text(),
                        parse_constant=no_constant)
    cells = record["subjects"]["sub00"]
    assert set(cells) == {"unchanged", "scale4", "t1-contrast"}
    for cell in cells.values():
        for key in ("dsc", "sensitivity", "specificity"):
            assert 0 <= cell[key] <= 1
    assert record["made"]["command"] and record["settings"]["mirror_axes"] == []
    markdown = (tmp_path / "out" / "robustness.md").read_text()
    assert markdown == robustness.render_markdown(record)
    assert "| sub00 | t1-contrast | g |" in markdown
    folder = tmp_path / "out" / "sub00" / "t1-contrast"
    for name in ("T1W", "T2W", "FLAIR", "consensus_gt", "probability", "mask"):
        assert (folder / f"{name}.nii.gz").is_file()
    assert markdown.index("| scale4 |") < markdown.index("| t1-contrast |")
    finished = (folder / "metrics.json").stat().st_mtime_ns
    capsys.readouterr()
    rerun = [*argv[:-4], "--transforms", "t1-contrast", *argv[-2:]]
    assert robustness.main(rerun) == 0
    out = capsys.readouterr().out
    assert "skip sub00 / unchanged: finished" in out and "skip sub00 / t1-contrast: finished" in out
    assert (folder / "metrics.json").stat().st_mtime_ns == finished
    again = json.loads((tmp_path / "out" / "robustness.json").read_text())
    assert again["subjects"] == record["subjects"]  # scale4, finished before, is kept
    assert robustness.main([*argv, "--seed", "1"]) == 1
    assert "holds results made with other settings (seed)" in capsys.readouterr().err
    assert robustness.main([*argv[:-4], "--transforms", "h", "--out", str(tmp_path / "h")]) == 1
    error = capsys.readouterr().err
    assert "182x218x182" in error and len(error.strip().splitlines()) == 1


def test_the_threshold_union_uses_each_changed_scans_own_flair_zscore(tiny_model, tmp_path):
    from reproduce.scoring import scan_reference

    write_tiny_subjects(tmp_path / "data", n=1)
    plain = ["--data", str(tmp_path / "data"), "--model", str(tiny_model), "--mirror", "none",
             "--transforms", "rim"]
    assert robustness.main([*plain, "--out", str(tmp_path / "alone")]) == 0
    assert robustness.main([*plain, "--threshold-union", "1.5", "--out",
                            str(tmp_path / "union")]) == 0
    record = json.loads((tmp_path / "union" / "robustness.json").read_text())
    assert record["settings"]["threshold_union_k"] == 1.5
    assert "z >= 1.500" in (tmp_path / "union" / "robustness.md").read_text()

    def united_where_the_threshold_calls(folder, core_mm):
        for name in ("unchanged", "rim"):
            alone = nib.load(tmp_path / "alone" / "sub00" / name /
                             "probability.nii.gz").get_fdata()
            united = nib.load(folder / "sub00" / name / "probability.nii.gz").get_fdata()
            written = robustness.subject_from_folder(folder / "sub00" / name)
            # The rim is in the written scan's brain.
            _, brain, flair_z = scan_reference(written, core_mm)
            called = (flair_z >= 1.5) & brain
            assert called.any()
            np.testing.assert_allclose(united[called], 1.0)
            np.testing.assert_allclose(united[~called], alone[~called], atol=1e-6)

    united_where_the_threshold_calls(tmp_path / "union", 0.0)
    # Another k for the same folder is refused: its finished cells would be skipped.
    assert robustness.main([*plain, "--threshold-union", "2", "--out",
                            str(tmp_path / "union")]) == 1
    # Core statistics: the z-score's mean and std from the brain deeper than 4 mm.
    assert robustness.main([*plain, "--threshold-union", "1.5", "--union-core-mm", "4",
                            "--out", str(tmp_path / "core")]) == 0
    record = json.loads((tmp_path / "core" / "robustness.json").read_text())
    assert record["settings"]["threshold_union_core_mm"] == 4.0
    assert "deeper than 4 mm" in (tmp_path / "core" / "robustness.md").read_text()
    united_where_the_threshold_calls(tmp_path / "core", 4.0)
    assert robustness.main([*plain, "--union-core-mm", "4", "--out",
                            str(tmp_path / "nothing")]) == 1
    assert not (tmp_path / "nothing" / "settings.json").exists()


def robustness_record(dsc, added=None, union=None):
    """A robustness.json of one seed: ``dsc`` per transform of patient26."""
    cells = {name: {"dsc": value, "sensitivity": value / 2, "specificity": 0.999}
             for name, value in dsc.items()}
    if added is not None:
        cells["lesion-load"]["added_sensitivity"] = added
    settings = {"data": "/d", "models": [f"/m{len(dsc)}"], "mirror_axes": [0], "seed": 0,
                "threshold": 0.5}
    if union is not None:
        settings["threshold_union_k"] = union
    return {"settings": settings, "order": list(dsc),
            "transforms": {n: {"item": "x", "description": "y"} for n in dsc if n != "unchanged"},
            "subjects": {"patient26": cells}, "made": {"date": "2026-12-07"}}


def test_the_seeds_summary_gives_each_cells_mean_and_the_largest_change(tmp_path):
    from reproduce import robustness_seeds

    runs = []
    for index, (base, rim, gamma, added) in enumerate(((0.5, 0.4, 0.48, 0.2),
                                                      (0.6, 0.3, 0.62, 0.4))):
        run = tmp_path / f"seed{index}"
        run.mkdir()
        (run / "robustness.json").write_text(json.dumps(robustness_record(
            {"unchanged": base, "rim": rim, "gamma0.6": gamma, "lesion-load": 0.1}, added)))
        runs.append(run)
    out = tmp_path / "summary" / "robustness-x-seeds.json"
    assert robustness_seeds.main([*map(str, runs), "--out", str(out)]) == 0
    summary = json.loads(out.read_text())
    cell = summary["subjects"]["patient26"]
    assert cell["rim"]["dsc"]["mean"] == pytest.approx(0.35)
    assert cell["rim"]["delta_dsc"]["values"] == pytest.approx([-0.1, -0.3])
    assert cell["rim"]["delta_dsc"]["std"] == pytest.approx(0.1)
    assert cell["lesion-load"]["added_sensitivity"]["mean"] == pytest.approx(0.3)
    # lesion-load (h) is judged on its added lesions, not on the change of DSC
    assert summary["largest_change"]["patient26"] == {"transform": "rim",
                                                      "delta_dsc_mean": pytest.approx(-0.2)}
    from reproduce import readme_tables

    text = readme_tables.render_robustness(out.parent)
    assert "35.00 ± 5.00 (-20.0)" in text and "does **not** meet" in text
    assert "2 training seeds' networks, each alone" in text
    # Runs of another suite (another union k) are refused in one line.
    (runs[1] / "robustness.json").write_text(json.dumps(robustness_record(
        {"unchanged": 0.5}, union=2.0)))
    assert robustness_seeds.main([*map(str, runs), "--out", str(out)]) == 1
    assert robustness_seeds.main([str(tmp_path / "absent"), "--out", str(out)]) == 1
