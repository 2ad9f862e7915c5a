"""reproduce.realism: the phantom-to-real comparison of intensities and, with --lesions,
of lesion counts, sizes and sites, checked on cases with known answers, on hand-made masks
and on the real masks' own README."""

import itertools
import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from reproduce import realism
from tversky_keras.data import (discover_subjects, load_subject, synthesize_dataset,
                                synthesize_subject)
from tversky_keras.data.lesion_atlas import read_lesion_mask
from tversky_keras.data.phantom import mni152_tissue


def write_subject(folder, affine, shape=(6, 8, 4)):
    folder.mkdir(parents=True)
    image = np.zeros(shape, np.float32)
    image[1:-1, 1:-1, 1:-1] = np.arange(1, image[1:-1, 1:-1, 1:-1].size + 1).reshape(
        image[1:-1, 1:-1, 1:-1].shape)
    for scale, name in enumerate(("T1W", "T2W", "FLAIR"), 1):  # three scans, not copies
        nib.save(nib.Nifti1Image(scale * image, affine), folder / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image((image > 20).astype(np.uint8), affine),
             folder / "consensus_gt.nii.gz")


def test_grid_affine_of_a_flipped_scan_resampled_to_2mm(tmp_path):
    # Stored LAS like the MSLUB files: file voxel 0 is the rightmost (x = 90).
    affine = np.array([[-1.0, 0, 0, 90], [0, 1, 0, -126], [0, 0, 1, -72], [0, 0, 0, 1]])
    write_subject(tmp_path / "s", affine)
    (subject,) = discover_subjects(tmp_path)
    volume = load_subject(subject, target_spacing=2.0)
    assert volume.shape == (3, 4, 2)
    grid = realism.grid_affine(volume)
    # Canonical voxel 0 is the leftmost: file voxel 5, x = 90 - 5 = 85. Grid voxel 0
    # averages canonical voxels 0 and 1, so its centre is x = 85.5, and steps +2 mm.
    np.testing.assert_allclose(grid @ [0, 0, 0, 1], [85.5, -125.5, -71.5, 1])
    np.testing.assert_allclose(grid @ [1, 1, 1, 1], [87.5, -123.5, -69.5, 1])


def test_regions_are_the_template_s_and_leave_lesions_out():
    subject = synthesize_subject(3, 4.0, 5000.0, version=2)
    brain = subject.images["T1W"] != 0
    regions = realism.region_masks(subject.affine, brain, subject.lesion)
    template = mni152_tissue(subject.affine, brain.shape)
    assert set(realism.REGIONS) <= set(regions)
    for name in realism.REGIONS:
        assert regions[name].any() and not (regions[name] & ~brain).any()
        if name != "lesion":   # lesions, grown by a voxel, are left out
            assert not (regions[name] & (subject.lesion > 0)).any()
    np.testing.assert_array_equal(regions["lesion"], subject.lesion > 0)
    for name in ("CSF", "GM", "WM"):
        assert np.all(template[name][regions[name]] > 0.5)
    assert not (regions["cortex"] & ~regions["GM"]).any()
    assert np.all(template["brain_depth_mm"][regions["cortex"]] < realism.CORTEX_DEPTH_MM)
    distance = template["ventricle_distance_mm"][regions["periventricular"]]
    assert np.all((distance > 0) & (distance <= realism.PERIVENTRICULAR_MM))


@pytest.mark.parametrize("mni_mm, tissue, deep", [
    ((-26, -10, 30), "WM", True),    # centrum semiovale, beside the lateral ventricle
    ((26, -10, 30), "WM", True),     # its mirror image (a symmetric template)
    ((-50, -20, 10), "GM", False),   # superior temporal cortex
    ((0, -20, 18), "CSF", True),     # between the lateral ventricles
])
def test_mni152_tissue_at_known_places(mni_mm, tissue, deep):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = mni_mm
    maps = {k: float(v[0, 0, 0]) for k, v in mni152_tissue(affine, (1, 1, 1)).items()}
    assert maps[tissue] > 0.5   # the dominant tissue, at 2 mm
    assert maps["CSF"] + maps["GM"] + maps["WM"] <= 1.0 + 1e-5
    assert (maps["brain_depth_mm"] > 30) == deep
    assert (maps["ventricle_distance_mm"] < 15) == deep


@pytest.fixture(scope="module")
def phantom_as_real(tmp_path_factory):
    """The first phantom subject written to disk: 'real' data identical to the phantom."""
    folder = tmp_path_factory.mktemp("as-real")
    synthesize_dataset(folder, n_subjects=1, seed=0, spacing=4.0, progress=False)
    return folder


def test_the_phantom_against_itself_is_at_distance_zero(phantom_as_real):
    result = realism.measure(phantom_as_real, n_subjects=1, seed=0, spacing=4.0)
    assert result["settings"]["real_subjects"] == ["synth00"]
    for modality in ("T1W", "T2W", "FLAIR"):
        for region in realism.REGIONS:
            phantom = result["regions"][modality][region]["phantom"]
            real = result["regions"][modality][region]["synth00"]
            assert phantom == pytest.approx(real, abs=1e-5)
            assert result["wasserstein"][modality][region]["synth00"] == pytest.approx(
                0, abs=1e-5)
    assert realism.mean_tissue_distance(result, "synth00") == pytest.approx(0, abs=1e-5)
    for modality, properties in result["properties"]["phantom"].items():
        assert properties == pytest.approx(result["properties"]["synth00"][modality], nan_ok=True)
    for statistic, values in result["intensity"]["phantom"].items():
        assert values == pytest.approx([result["intensity"]["synth00"][statistic]])


def test_intensity_statistics_of_a_hand_made_brain():
    # A 10x10x10 brain in deep white matter (no cortex): T1W z 0 ("GM-like") in
    # one half, 1 ("WM-like") in the other, with T2W 0.3 / -0.6 and FLAIR 0.5 /
    # 0.0; one lesion voxel with wild values is left out with its neighbours.
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (-36, -20, 20)
    brain = np.zeros((14, 14, 14), bool)
    brain[2:12, 2:12, 2:12] = True
    z = np.zeros(brain.shape + (3,), np.float32)
    z[2:12, 2:12, 7:12] = (1.0, -0.6, 0.0)
    z[2:12, 2:12, 2:7] = (0.0, 0.3, 0.5)
    lesion = np.zeros(brain.shape, np.uint8)
    lesion[6, 6, 9] = 1
    z[6, 6, 9] = (-9.0, 9.0, 9.0)
    stats = realism.intensity_statistics(z, brain, lesion, affine)
    assert (stats["T1W q10"], stats["T1W q90"]) == (0.0, 1.0)
    assert (stats["T2W GM-like"], stats["T2W WM-like"]) == pytest.approx((0.3, -0.6))
    assert (stats["FLAIR GM-like"], stats["FLAIR WM-like"]) == pytest.approx((0.5, 0.0))
    assert np.isnan(stats["cortex T2W z > 1"])
    # The outermost voxels: 488 of the cube's 1000, 244 in each half (a face
    # and four rings of 36), so their median lies midway: (0.3 - 0.6) / 2.
    assert stats["T2W edge"] == pytest.approx(-0.15)


def test_wasserstein_of_shifted_samples_is_the_shift():
    rng = np.random.default_rng(0)
    values = rng.standard_normal(1000)
    assert realism.wasserstein(values, values + 0.3, rng) == pytest.approx(0.3)
    assert np.isnan(realism.wasserstein(values, values[:0], rng))


def test_command_line_prints_tables_writes_json_and_shows_a_baseline(phantom_as_real,
                                                                     tmp_path, capsys):
    out = tmp_path / "now.json"
    args = ["--data", str(phantom_as_real), "--subjects", "1", "--spacing", "4"]
    assert realism.main([*args, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| T1W | WM |" in printed and "fine texture" in printed
    saved = json.loads(out.read_text())
    assert set(saved) == {"settings", "regions", "wasserstein", "properties", "intensity"}
    # A baseline whose phantom WM T1W median was 9.99 shows up as "phantom before".
    saved["regions"]["T1W"]["WM"]["phantom"]["median"] = 9.99
    old = tmp_path / "old.json"
    old.write_text(json.dumps(saved))
    assert realism.main([*args, "--baseline", str(old)]) == 0
    printed = capsys.readouterr().out
    assert "phantom before" in printed and "| T1W | WM | 9.99 [" in printed
    assert "(before: 0.000)" in printed


def test_command_line_refuses_bad_options(tmp_path):
    with pytest.raises(SystemExit):
        realism.main(["--subjects", "0", "--data", str(tmp_path)])
    with pytest.raises(SystemExit):
        realism.main(["--data", str(tmp_path / "absent")])


def test_bright_spots_of_gaussian_texture_and_of_planted_spots():
    # White noise in a 40^3 white-matter core: the fine texture is Gaussian, so
    # 1 - Phi(3) = 1.35 per 1000 voxels lie over 3 robust SDs. 864 lone voxels
    # planted at +12 SDs in FLAIR (-5 in T1W, +4 in T2W) add 864 / 64000 = 13.5
    # per 1000, and spot_signature reads back their T1W and T2W values (less
    # the 4-5 % a 2-mm smoothing at 2 mm takes from a lone voxel's centre).
    rng = np.random.default_rng(0)
    shape = (40, 40, 40)
    core = np.ones(shape, bool)
    regions = {"WM core": core}
    z = rng.standard_normal(shape + (3,)).astype(np.float32)
    plain = realism.image_properties(z[..., 2], regions, core, 2.0)
    assert plain[realism.BRIGHT_SPOTS] == pytest.approx(1.35, abs=0.4)
    spots = np.zeros(shape, bool)
    spots[2:-2:6, 2:-2:6, 2:-2:3] = True
    spots[5:-2:6, 5:-2:6, 2:-2:3] = True
    assert spots.sum() == 864
    z[spots] += (-5.0, 4.0, 12.0)
    spotted = realism.image_properties(z[..., 2], regions, core, 2.0)
    assert spotted[realism.BRIGHT_SPOTS] == pytest.approx(13.5 + 1.35, rel=0.1)
    signature = realism.spot_signature(z, regions, 2.0)
    assert signature == pytest.approx({"T1W": -5.0, "T2W": 4.0}, rel=0.1)


# --- lesions: counts, sizes and sites ------------------------------------------------------

# The MNI152 2-mm grid: voxel (45, 63, 36) is MNI (0, 0, 0).
GRID = np.array([[2.0, 0, 0, -90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])
SHAPE = (91, 109, 91)


@pytest.fixture(scope="module")
def template():
    """The template on the 2-mm grid, and each voxel's MNI z."""
    maps = mni152_tissue(GRID, SHAPE)
    maps["z_mm"] = np.broadcast_to(GRID[2, 3] + 2.0 * np.arange(SHAPE[2]), SHAPE)
    maps["cortex"] = (maps["GM"] > 0.5) & (maps["brain_depth_mm"] < realism.CORTEX_DEPTH_MM)
    return maps


def a_voxel(where):
    """One voxel where ``where`` holds (the middle one, in C order)."""
    voxels = np.argwhere(where)
    assert len(voxels), "no such voxel on the template"
    return tuple(voxels[len(voxels) // 2])


def mask_of(*voxels):
    mask = np.zeros(SHAPE, np.uint8)
    for voxel in voxels:
        mask[tuple(voxel)] = 1
    return mask


def test_two_cubes_are_two_lesions_of_known_size():
    # A 2x2x2-voxel cube (8 voxels of 8 mm^3: 64 mm^3) and a 3x3x3 one (216 mm^3)
    # with one more voxel touching it at a corner only: 26-connected, so it is
    # part of that lesion (224 mm^3), where 6-connectivity would make three.
    mask = np.zeros(SHAPE, bool)
    mask[30:32, 60:62, 60:62] = True
    mask[50:53, 60:63, 60:63] = True
    mask[53, 63, 63] = True
    geometry = realism.lesion_geometry(mask, GRID)
    assert geometry["count"] == 2
    assert geometry["load_mm3"] == pytest.approx(288.0)
    # Percentiles of (64, 224), interpolated: 64 + q * 160.
    assert geometry["volume_p25_mm3"] == pytest.approx(104.0)
    assert geometry["volume_median_mm3"] == pytest.approx(144.0)
    assert geometry["volume_p75_mm3"] == pytest.approx(184.0)
    assert geometry["volume_p95_mm3"] == pytest.approx(216.0)
    for by in ("by_count", "by_volume"):
        assert sum(geometry[by].values()) == pytest.approx(1.0)


def test_an_empty_mask_has_no_lesions():
    geometry = realism.lesion_geometry(np.zeros(SHAPE, bool), GRID)
    assert (geometry["count"], geometry["load_mm3"]) == (0, 0.0)
    assert np.isnan(geometry["volume_median_mm3"])
    assert np.isnan(geometry["by_count"]["deep"])


def periventricular_wall(t):
    return (t["ventricle_distance_mm"] > 0) & (t["ventricle_distance_mm"] <= 3) & (
        t["WM"] > 0.5) & (t["z_mm"] > 0)


def cube_at(mni_mm):
    """A 3x3x3-voxel lesion centred on an MNI point."""
    i, j, k = np.round(np.linalg.inv(GRID) @ [*mni_mm, 1]).astype(int)[:3]
    mask = np.zeros(SHAPE, bool)
    mask[i - 1:i + 2, j - 1:j + 2, k - 1:k + 2] = True
    return mask


def cortex_at(t, offsets):
    """Where a cortex voxel lies at one of the voxel ``offsets``."""
    return np.any([np.roll(t["cortex"], -np.array(o), axis=(0, 1, 2)) for o in offsets], 0)


# The 2-mm voxels within 3 mm of a voxel: offsets of -1, 0 or 1 with at most
# two of them non-zero (2 * sqrt(2) < 3 < 2 * sqrt(3)); and those 4 mm away.
WITHIN_3MM = [o for o in itertools.product((-1, 0, 1), repeat=3) if np.count_nonzero(o) <= 2]
AT_4MM = [tuple(2 * sign * np.eye(3, dtype=int)[axis]) for axis in range(3) for sign in (-1, 1)]


def away_from_ventricles(t):
    return (t["ventricle_distance_mm"] > 10) & (t["z_mm"] > 0)


SITE_CASES = [
    ("cerebellum", lambda t: cube_at((10, -60, -36)), "infratentorial"),
    ("inside a lateral ventricle", lambda t: mask_of(a_voxel(
        (t["ventricle_distance_mm"] == 0) & (t["z_mm"] > 0))), "periventricular"),
    ("white matter 2-3 mm from a ventricle", lambda t: mask_of(a_voxel(
        periventricular_wall(t))), "periventricular"),
    ("cortex far from the ventricles", lambda t: mask_of(a_voxel(
        t["cortex"] & away_from_ventricles(t))), "juxtacortical"),
    ("white matter beside the cortex", lambda t: mask_of(a_voxel(
        (t["WM"] > 0.5) & ~t["cortex"] & cortex_at(t, [(1, 0, 0)])
        & away_from_ventricles(t))), "juxtacortical"),
    ("4 mm from the cortex", lambda t: mask_of(a_voxel(
        (t["WM"] > 0.5) & ~cortex_at(t, WITHIN_3MM) & cortex_at(t, AT_4MM)
        & away_from_ventricles(t))), "deep"),
    # Over 25 mm deep, so over 10 mm from any voxel less than 15 mm deep (the
    # cortex), and 3-5 mm from a ventricle: just outside the 3-mm tolerance.
    ("deep white matter near a ventricle", lambda t: mask_of(a_voxel(
        (t["WM"] > 0.5) & (t["brain_depth_mm"] > 25) & (t["ventricle_distance_mm"] > 3.2)
        & (t["ventricle_distance_mm"] < 5) & (t["z_mm"] > -20))), "deep"),
    ("centrum semiovale", lambda t: mask_of(a_voxel(
        (t["WM"] > 0.5) & (t["brain_depth_mm"] > 25) & (t["ventricle_distance_mm"] > 6)
        & (t["z_mm"] > 0))), "deep"),
]


@pytest.mark.parametrize("place, lesion, site", SITE_CASES, ids=[c[0] for c in SITE_CASES])
def test_a_lesion_s_site(template, place, lesion, site):
    geometry = realism.lesion_geometry(lesion(template), GRID)
    assert geometry["count"] == 1
    assert geometry["by_count"] == {s: float(s == site) for s in realism.LESION_SITES}
    assert geometry["by_volume"] == geometry["by_count"]


def line(start, end):
    """Voxels of a straight line, each 26-connected to the next."""
    steps = int(np.max(np.abs(np.subtract(end, start)))) + 1
    return np.round(np.linspace(start, end, steps)).astype(int)


def test_periventricular_comes_before_juxtacortical_and_infratentorial_before_both(template):
    ventricle = a_voxel((template["ventricle_distance_mm"] == 0) & (template["z_mm"] > 0)
                        & (template["z_mm"] < 25))
    cortex = a_voxel(template["cortex"] & (template["ventricle_distance_mm"] > 10)
                     & (template["z_mm"] > 0))
    # A bar from the ventricle to the cortex touches both: periventricular.
    bar = realism.lesion_geometry(mask_of(*line(ventricle, cortex)), GRID)
    assert bar["count"] == 1 and bar["by_count"]["periventricular"] == 1.0
    # A column from the same ventricle voxel (MNI z < 25) down to the grid's
    # floor (z = -72) is centred below z = -24: infratentorial, though it
    # touches the ventricle.
    column = realism.lesion_geometry(mask_of(*line(ventricle, ventricle[:2] + (0,))), GRID)
    assert column["count"] == 1 and column["by_count"]["infratentorial"] == 1.0


def test_site_shares_by_count_and_by_volume(template):
    # An 8-voxel periventricular lesion and a lone deep voxel: half the lesions,
    # 8/9 of the load, are periventricular.
    wall = a_voxel(periventricular_wall(template))
    deep = a_voxel((template["WM"] > 0.5) & (template["brain_depth_mm"] > 25)
                   & (template["ventricle_distance_mm"] > 6) & (template["z_mm"] > 0))
    mask = mask_of(deep)
    mask[wall[0]:wall[0] + 2, wall[1]:wall[1] + 2, wall[2]:wall[2] + 2] = 1
    geometry = realism.lesion_geometry(mask, GRID)
    assert geometry["count"] == 2
    assert geometry["by_count"]["periventricular"] == pytest.approx(0.5)
    assert geometry["by_count"]["deep"] == pytest.approx(0.5)
    assert geometry["by_volume"]["periventricular"] == pytest.approx(8 / 9)
    assert geometry["by_volume"]["deep"] == pytest.approx(1 / 9)


ONE_MM = np.array([[-1.0, 0, 0, 90], [0, 1, 0, -126], [0, 0, 1, -72], [0, 0, 0, 1]])


def test_coarsening_an_aligned_cube_keeps_its_load_and_centre():
    # 20 mm cube starting on an even voxel: exactly 10x10x10 voxels of 2 mm.
    mask = np.zeros((40, 44, 36), bool)
    mask[4:24, 10:30, 6:26] = True
    coarse, affine = realism.coarsen_mask(mask, ONE_MM, 2.0)
    assert coarse.shape == (20, 22, 18)
    assert coarse.sum() == 1000
    np.testing.assert_allclose(realism.voxel_size(affine), 2.0)

    def centre(m, a):
        return (a @ [*np.argwhere(m).mean(0), 1])[:3]

    np.testing.assert_allclose(centre(coarse, affine), centre(mask, ONE_MM))
    # Coarse voxel 0 spans fine voxels 0 and 1: its centre is fine voxel 0.5.
    np.testing.assert_allclose(affine @ [0, 0, 0, 1], ONE_MM @ [0.5, 0.5, 0.5, 1])


def test_coarsening_an_unaligned_cube_keeps_its_load_within_half_a_voxel():
    # A 21-mm cube on fine voxels 3..23: along each axis the 2-mm voxel [2, 3]
    # is half lesion and the ten [4, 5] ... [22, 23] are whole. A voxel is
    # lesion where its share (the product over axes) is >= 0.5: the 10^3 whole
    # ones and the 3 x 10^2 with one half axis, 1300 voxels (10400 mm^3 for
    # 9261): each side grows by half a 2-mm voxel, none by more.
    mask = np.zeros((30, 30, 30), bool)
    mask[3:24, 3:24, 3:24] = True
    coarse, affine = realism.coarsen_mask(mask, ONE_MM, 2.0)
    assert coarse.sum() == 1300
    low, high = np.argwhere(coarse).min(0), np.argwhere(coarse).max(0)
    assert list(low) == [1] * 3 and list(high) == [11] * 3
    load = realism.lesion_geometry(coarse, np.diag([2.0, 2, 2, 1]))["load_mm3"]
    assert load == pytest.approx(10400.0)


@pytest.mark.parametrize("fine, coarse", [((1, 1, 0), (True, False)),
                                          ((0, 1, 1), (False, True)),
                                          ((1, 0, 1), (True, True))])
def test_coarsening_by_a_non_integer_factor(fine, coarse):
    # Three 1-mm voxels into two of 1.5 mm: new voxel 0 is old voxel 0 and half
    # of voxel 1 (shares 2/3 and 1/3), new voxel 1 the rest.
    mask = np.array(fine, bool).reshape(3, 1, 1)
    result, affine = realism.coarsen_mask(mask, np.eye(4), 1.5)
    assert result.shape == (2, 1, 1)
    assert tuple(result.ravel()) == coarse
    np.testing.assert_allclose(affine[0], [1.5, 0, 0, 0.25])


# The masks' README (tversky_keras/data/lesion_masks/README.md): lesion voxels,
# 26-connected lesions, median lesion size in voxels (1 mm^3).
@pytest.mark.parametrize("name, voxels, lesions, median", [("patient02", 1381, 27, 20),
                                                            ("patient18", 875, 20, 15)])
def test_a_real_mask_at_1mm_matches_its_readme(name, voxels, lesions, median):
    geometry = realism.lesion_geometry(*read_lesion_mask(name))
    assert geometry["count"] == lesions
    assert geometry["load_mm3"] == pytest.approx(voxels)
    assert geometry["volume_median_mm3"] == pytest.approx(median)


def test_report_rows_are_median_and_quartiles_over_subjects():
    def geometry(count):
        shares = {s: float(s == "deep") for s in realism.LESION_SITES}
        return {"count": count, "load_mm3": 100.0 * count, "volume_median_mm3": 8.0,
                "volume_p95_mm3": 80.0, "by_count": shares, "by_volume": shares}

    result = {"lesions": {"real masks, 1 mm": {"a": geometry(10), "b": geometry(20),
                                               "c": geometry(40)}}}
    text = realism.lesion_report(result)
    assert ("| real masks, 1 mm | 3 | 20 [15, 30] | 2000 [1500, 3000] | 8 [8, 8] | 80 [80, 80] "
            "| 0 [0, 0] | 0 [0, 0] | 0 [0, 0] | 100 [100, 100] |") in text


def test_command_line_lesions_needs_no_data(tmp_path, monkeypatch, capsys):
    cube = np.zeros((20, 20, 20), bool)
    cube[5:9, 5:9, 5:9] = True

    def real(spacing):
        yield "patient00", cube, np.diag([spacing, spacing, spacing, 1.0])

    def phantom(n_subjects, seed, spacing, version):
        assert (n_subjects, seed, spacing) == (2, 3, 2.0)
        for index in range(n_subjects):
            yield f"synth{index:02d}", cube[:, :, :10 * (index + 1)], np.diag([2.0, 2, 2, 1])

    monkeypatch.setattr(realism, "real_lesion_masks", real)
    monkeypatch.setattr(realism, "phantom_lesion_masks", phantom)
    out = tmp_path / "lesions.json"
    args = ["--lesions", "--subjects", "2", "--seed", "3", "--data", str(tmp_path / "absent")]
    assert realism.main([*args, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    for source in ("real masks, 1 mm", "real masks, 2 mm", "phantom v2, 2 mm",
                   "phantom v3, 2 mm"):
        assert f"| {source} |" in printed
    assert "| real masks, 1 mm | 1 | 1 [1, 1] | 64 [64, 64] |" in printed
    assert "| real masks, 2 mm | 1 | 1 [1, 1] | 512 [512, 512] |" in printed
    saved = json.loads(out.read_text())
    assert list(saved["lesions"]["phantom v3, 2 mm"]) == ["synth00", "synth01"]
    assert saved["lesions"]["phantom v2, 2 mm"]["synth01"]["load_mm3"] == 512.0
    with pytest.raises(SystemExit):
        realism.main(["--lesions", "--baseline", str(out)])


def test_the_normalisation_shift_is_what_the_lesions_do_to_the_statistics():
    """Hand-computed: z-scores with and without the lesions in the statistics."""
    rng = np.random.default_rng(0)
    image = (100.0 + 4.0 * rng.standard_normal((30, 30, 30))).astype(np.float32)
    brain = np.ones(image.shape, bool)
    lesion = np.zeros(image.shape, bool)
    lesion[5:12, 5:12, 5:12] = True
    image[lesion] += 40.0
    assert realism.normalization_shift(image, brain, np.zeros_like(lesion), "zscore") == 0.0
    normal = ~ndimage.binary_dilation(lesion)

    def zscored_median(stats_from):
        values = image[stats_from]
        low, high = np.percentile(values, [0.5, 99.5])
        clipped = np.clip(values, low, high)
        z = (np.clip(image[normal], low, high) - clipped.mean()) / clipped.std()
        return np.median(z)

    expected = zscored_median(brain) - zscored_median(normal)
    assert expected < -0.05   # 1.3 % of voxels 10 SDs up pull normal tissue down
    assert realism.normalization_shift(image, brain, lesion, "zscore") == pytest.approx(
        expected, abs=1e-5)
    assert abs(realism.normalization_shift(image, brain, lesion, "wm-peak")) < abs(expected) / 3
