"""reproduce.realism: the phantom-to-real comparison, checked on cases with known answers."""

import json

import nibabel as nib
import numpy as np
import pytest

from reproduce import realism
from tversky_keras.data import (discover_subjects, load_subject, synthesize_dataset,
                                synthesize_subject)
from tversky_keras.data.phantom import mni152_tissue


def write_subject(folder, affine, shape=(6, 8, 4)):
    folder.mkdir(parents=True)
    image = np.zeros(shape, np.float32)
    image[1:-1, 1:-1, 1:-1] = np.arange(1, image[1:-1, 1:-1, 1:-1].size + 1).reshape(
        image[1:-1, 1:-1, 1:-1].shape)
    for name in ("T1W", "T2W", "FLAIR"):
        nib.save(nib.Nifti1Image(image, affine), folder / f"{name}.nii.gz")
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
