"""reproduce.realism --lesions: lesion counts, sizes and sites, checked on hand-made masks
and on the real masks' own README."""

import itertools
import json

import numpy as np
import pytest
from scipy import ndimage

from reproduce import realism
from tversky_keras.data.lesion_atlas import read_lesion_mask
from tversky_keras.data.phantom import mni152_tissue

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
