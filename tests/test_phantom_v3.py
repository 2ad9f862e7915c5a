"""Phantom version 3: real MSLUB lesions in synthetic brains, and domain randomisation."""

import json

import nibabel as nib
import numpy as np
import pytest

from tversky_keras.data.io import MODALITIES
from tversky_keras.data.lesion_atlas import lesion_mask_loads, lesion_mask_names, read_lesion_mask
from tversky_keras.data.phantom import (PHANTOM_VERSION, LesionSource, dataset_subjects,
                                        lesion_sources, subject_seed, synthesize_dataset,
                                        synthesize_subject)
from tversky_keras.data.phantom.calibration import _LESION_RATIO

# The embedded masks' lesion voxels, typed from the table of the data's README
# (../shared/data/mslub-lesion-masks/README.md), not read from the files.
README_LOADS = {
    "patient01": 30620, "patient02": 1381, "patient03": 1052, "patient04": 40373,
    "patient05": 29922, "patient06": 48859, "patient08": 6090, "patient09": 19093,
    "patient10": 16701, "patient11": 13606, "patient12": 52190, "patient13": 29903,
    "patient14": 13125, "patient15": 14263, "patient16": 16718, "patient17": 1605,
    "patient18": 875, "patient20": 9171, "patient21": 34976, "patient22": 23018,
    "patient23": 20384, "patient24": 1125, "patient25": 15491, "patient27": 2393,
    "patient28": 10042, "patient29": 316, "patient30": 630}


def world_centroid(mask, affine):
    voxels = np.argwhere(mask)
    return (affine[:3, :3] @ voxels.mean(0)) + affine[:3, 3]


@pytest.fixture(scope="module")
def heavy():
    """A 3-mm subject carrying patient04's lesions (40,373 mm^3), mirrored and not,
    and with a second patient's added: same seed, so the same brain."""
    seed = subject_seed(9, 0)
    made = {}
    for key, source in {"plain": LesionSource(("patient04",), (False,)),
                        "mirrored": LesionSource(("patient04",), (True,)),
                        "union": LesionSource(("patient04", "patient21"), (False, False))}.items():
        made[key] = synthesize_subject(seed, 3.0, version=3, lesion_source=source)
    return made


def test_the_embedded_masks_are_the_27_of_the_readme():
    assert lesion_mask_loads() == README_LOADS
    # The development patients and the held-out one are not among them.
    assert not {"patient07", "patient19", "patient26"} & set(lesion_mask_names())
    mask, affine = read_lesion_mask("patient02")
    assert mask.shape == (182, 218, 182) and mask.dtype == bool
    np.testing.assert_allclose(np.abs(np.diag(affine)[:3]), 1.0)


def test_fifteen_subjects_carry_fifteen_patients_one_per_load_stratum():
    sources = lesion_sources(15, seed=0)
    names = [s.names[0] for s in sources]
    assert len(set(names)) == 15 and all(s.mirrored == (False,) for s in sources)
    by_load = sorted(README_LOADS, key=README_LOADS.get)
    strata = np.array_split(np.array(by_load), 15)
    assert sorted(by_load.index(n) for n in names) == sorted(
        by_load.index(next(n for n in names if n in stratum)) for stratum in strata)
    # The lightest and heaviest strata are always there (the paper's figures).
    assert set(names) & {"patient29", "patient30"} and set(names) & {"patient12", "patient06"}
    assert [s.label for s in lesion_sources(15, seed=0)] == [s.label for s in sources]
    assert [s.label for s in lesion_sources(15, seed=1)] != [s.label for s in sources]


def test_more_subjects_mirror_then_combine_real_patients():
    sources = lesion_sources(60, seed=0)
    assert sorted(s.names[0] for s in sources[:27]) == sorted(README_LOADS)
    assert all(s.mirrored == (True,) and len(s.names) == 1 for s in sources[27:54])
    assert len({s.names[0] for s in sources[27:54]}) == 27
    unions = sources[54:]
    assert len(unions) == 6 and all(len(s.names) == 2 and s.names[0] != s.names[1]
                                    for s in unions)


def test_real_lesions_lie_in_parenchyma_at_a_patients_size(heavy):
    subject = heavy["plain"]
    lesion = subject.lesion > 0
    parenchyma = subject.tissue["GM"] + subject.tissue["WM"]
    assert lesion.any() and parenchyma[lesion].min() >= 0.5
    # Shrunk with the brain (0.80-0.90 of the template, lesions scaled from 0.85):
    # within (0.8 / 0.85)^3 - 10 % and (0.9 / 0.85)^3 + 10 % of the real load.
    load = lesion.sum() * 27.0
    assert 0.75 * 40373 < load < 1.3 * 40373, load
    assert subject.lesion_source == "patient04" and subject.lesion_load_target_mm3 == 40373


def test_the_real_lesions_sit_where_the_patients_are(heavy):
    mask, affine = read_lesion_mask("patient04")
    real = world_centroid(mask, affine)
    ours = world_centroid(heavy["plain"].lesion > 0, heavy["plain"].affine)
    # Shrinkage (about the template's centre) and misregistration move it by millimetres.
    assert np.linalg.norm(ours - real) < 12.0, (ours, real)


def test_a_mirrored_source_flips_the_lesions_left_right(heavy):
    plain = world_centroid(heavy["plain"].lesion > 0, heavy["plain"].affine)
    mirrored = world_centroid(heavy["mirrored"].lesion > 0, heavy["mirrored"].affine)
    mask, affine = read_lesion_mask("patient04")
    assert np.sign(plain[0]) == np.sign(world_centroid(mask, affine)[0])
    assert abs(plain[0] + mirrored[0]) < 3.0 and abs(plain[1] - mirrored[1]) < 3.0
    assert abs(heavy["mirrored"].lesion.sum() / heavy["plain"].lesion.sum() - 1) < 0.15


def test_a_union_holds_each_patients_lesions(heavy):
    plain, union = heavy["plain"].lesion > 0, heavy["union"].lesion > 0
    assert np.all(union[plain]) and union.sum() > 1.3 * plain.sum()
    assert heavy["union"].lesion_source == "patient04+patient21"


def test_the_dataset_records_the_version_and_whose_lesions(tmp_path):
    folders = synthesize_dataset(tmp_path, n_subjects=2, seed=4, spacing=6.0, progress=False)
    manifest = json.loads((tmp_path / "phantom.json").read_text())
    assert PHANTOM_VERSION == 3 and manifest["version"] == 3
    assert manifest["appearance"] == "calibrated"
    assert manifest["lesions"]["subjects"] == [s.label for s in lesion_sources(2, seed=4)]
    for folder, subject in zip(folders, dataset_subjects(2, seed=4, spacing=6.0)):
        np.testing.assert_array_equal(
            np.asarray(nib.load(folder / "consensus_gt.nii.gz").dataobj), subject.lesion)
    # Version 2's manifest is as it was, so its folders stay valid.
    synthesize_dataset(tmp_path / "v2", n_subjects=1, seed=4, spacing=6.0, progress=False,
                       version=2)
    old = json.loads((tmp_path / "v2" / "phantom.json").read_text())
    assert old["version"] == 2 and "appearance" not in old and "lesions" not in old


def contrasts(subject):
    """CSF / WM and lesion / WM median intensity ratios per modality, measured on the images."""
    wm = subject.tissue["WM"] > 0.95
    csf = subject.tissue["CSF"] > 0.95
    lesion = subject.lesion > 0
    return {m: (np.median(image[csf]) / np.median(image[wm]),
                np.median(image[lesion]) / np.median(image[wm]))
            for m, image in subject.images.items()}


def test_randomized_looks_differ_between_subjects_within_their_ranges():
    source = LesionSource(("patient12",), (False,))
    looks = {appearance: [contrasts(synthesize_subject(subject_seed(0, i), 3.0, version=3,
                                                       lesion_source=source,
                                                       appearance=appearance))
                          for i in range(3)]
             for appearance in ("calibrated", "randomized")}

    def spread(subjects, modality):
        return np.ptp([np.log(look[modality][0]) for look in subjects])

    for modality in MODALITIES:
        # CSF's contrast is scaled by 0.5-1.5 (log ratio), the calibrated look's by +-1.5 %;
        # at 3 mm the measured ratio is mostly partial volume, which both share.
        assert spread(looks["randomized"], modality) > 1.5 * spread(looks["calibrated"], modality)
    for look in looks["randomized"]:
        for modality, (_, lesion_ratio) in look.items():
            low, high = _LESION_RATIO[modality]
            # Blur, partial volume and severity (+-25 %) widen the drawn range a little.
            assert 0.85 * low < lesion_ratio < 1.15 * high, (modality, lesion_ratio)


@pytest.mark.parametrize("kwargs, message", [
    ({"version": 4}, "version must be one of"),
    ({"appearance": "cartoon"}, "appearance must be one of"),
    ({"version": 3, "lesion_load_mm3": 1000.0}, "takes its lesion load from real lesions"),
    ({"version": 2, "lesion_source": LesionSource(("patient02",), (False,))},
     "lesion_source is for version 3"),
])
def test_bad_options_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthesize_subject(0, 6.0, **kwargs)


@pytest.mark.parametrize("names, mirrored, message", [
    (("patient19",), (False,), "no embedded lesion mask 'patient19'"),
    (("patient02",), (), "one mirrored flag per mask"),
])
def test_bad_lesion_sources_are_named(names, mirrored, message):
    with pytest.raises(ValueError, match=message):
        LesionSource(names, mirrored)
