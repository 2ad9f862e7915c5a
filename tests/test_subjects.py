"""tversky_keras.data.subjects: finding subjects in each layout, loading them as checked volumes."""

import nibabel as nib
import numpy as np
import pytest

from tiny_data import write_nifti as write

from tversky_keras.data import (
    MODALITIES,
    DataError,
    Subject,
    discover_subjects,
    from_grid,
    load_subject,
    subject_from_folder,
    zscore_in_brain,
)

SHAPE = (6, 8, 4)


def scans(rng, n_lesion_voxels=3):
    """Skull-stripped test scans: brain = a box inside the volume; lesions inside it."""
    brain = np.zeros(SHAPE, bool)
    brain[1:5, 1:7, 1:3] = True
    images = {m: np.where(brain, rng.uniform(1.0, 2.0, SHAPE), 0) for m in MODALITIES}
    images = {m: image.astype(np.float32) for m, image in images.items()}
    mask = np.zeros(SHAPE, np.uint8)
    mask[2, 2:2 + n_lesion_voxels, 1] = 1
    return images, mask, brain


def write_subject(folder, rng, names=None, ext=".nii.gz", n_lesion_voxels=3):
    """One subject folder; ``names`` maps modality/mask to file stems (default: plain layout)."""
    folder.mkdir(parents=True)
    images, mask, _ = scans(rng, n_lesion_voxels)
    names = names or {}
    for modality, data in images.items():
        write(folder / f"{names.get(modality, modality)}{ext}", data)
    write(folder / f"{names.get('consensus_gt', 'consensus_gt')}{ext}", mask)
    return images, mask


# ---------------------------------------------------------------- discovery


def test_plain_layout_is_found_sorted_with_nii_and_nii_gz(tmp_path, rng):
    write_subject(tmp_path / "s2", rng)
    write_subject(tmp_path / "s1", rng, ext=".nii")
    (tmp_path / "notes").mkdir()  # a folder without scans is not a subject
    subjects = discover_subjects(tmp_path)
    assert [s.id for s in subjects] == ["s1", "s2"]
    assert subjects[0].images == {m: tmp_path / "s1" / f"{m}.nii" for m in MODALITIES}
    assert subjects[1].mask == tmp_path / "s2" / "consensus_gt.nii.gz"
    assert subjects[1].brainmask is None


def test_mslub_layout_with_brainmask(tmp_path, rng):
    folder = tmp_path / "patient03"
    prefixed = {n: f"patient03_{n}" for n in (*MODALITIES, "consensus_gt")}
    write_subject(folder, rng, names=prefixed)
    write(folder / "patient03_brainmask.nii.gz", np.ones(SHAPE, np.uint8))
    (subject,) = discover_subjects(tmp_path)
    assert subject.id == "patient03"
    assert subject.images["FLAIR"] == folder / "patient03_FLAIR.nii.gz"
    assert subject.mask == folder / "patient03_consensus_gt.nii.gz"
    assert subject.brainmask == folder / "patient03_brainmask.nii.gz"


def test_one_subject_folder(tmp_path, rng):
    write_subject(tmp_path / "p1", rng, names={"FLAIR": "p1_FLAIR"})
    subject = subject_from_folder(tmp_path / "p1", modalities=("FLAIR", "T2W"))
    assert subject.id == "p1"
    assert subject.images == {"FLAIR": tmp_path / "p1" / "p1_FLAIR.nii.gz",
                              "T2W": tmp_path / "p1" / "T2W.nii.gz"}
    with pytest.raises(DataError, match="subject folder not found") as error:
        subject_from_folder(tmp_path / "p2")
    assert "p2" in str(error.value)


def test_modalities_select_subset_and_order(tmp_path, rng):
    folder = tmp_path / "a"
    folder.mkdir()
    images, _, _ = scans(rng)
    write(folder / "FLAIR.nii.gz", images["FLAIR"])
    write(folder / "T1W.nii.gz", images["T1W"])
    (subject,) = discover_subjects(tmp_path, modalities=("FLAIR", "T1W"), require_mask=False)
    assert list(subject.images) == ["FLAIR", "T1W"]
    assert subject.mask is None


def test_manifest(tmp_path, rng):
    for name in ("x", "y"):
        write_subject(tmp_path / "scans" / name, rng)
    write(tmp_path / "scans" / "x" / "brain.nii.gz", np.ones(SHAPE, np.uint8))

    def row(name, brainmask=""):
        files = [f"scans/{name}/{stem}.nii.gz" for stem in (*MODALITIES, "consensus_gt")]
        return ",".join([name, *files, brainmask]) + "\n"

    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "Subject, t1, t2, flair, mask, brainmask\n"
        + row("y")
        + "\n"  # blank lines are skipped
        + row("x", "scans/x/brain.nii.gz")
    )
    x, y = discover_subjects(manifest)
    assert (x.id, y.id) == ("x", "y")
    assert x.images == {m: tmp_path / "scans" / "x" / f"{m}.nii.gz" for m in MODALITIES}
    assert x.brainmask == tmp_path / "scans" / "x" / "brain.nii.gz" and y.brainmask is None
    assert y.mask == tmp_path / "scans" / "y" / "consensus_gt.nii.gz"


def test_a_manifest_saved_by_excel_with_a_bom_and_crlf_is_read(tmp_path, rng):
    write_subject(tmp_path / "scans" / "x", rng)
    files = [f"scans/x/{stem}.nii.gz" for stem in (*MODALITIES, "consensus_gt")]
    manifest = tmp_path / "manifest.csv"
    manifest.write_bytes("subject,t1,t2,flair,mask\r\n".encode("utf-8-sig")
                         + (",".join(["x", *files]) + "\r\n").encode())
    (subject,) = discover_subjects(manifest)
    assert subject.id == "x" and subject.mask == tmp_path / "scans" / "x" / "consensus_gt.nii.gz"


def test_manifest_needs_only_the_chosen_columns(tmp_path, rng):
    write_subject(tmp_path / "x", rng)
    manifest = tmp_path / "flair.csv"
    manifest.write_text("subject,flair\nx,x/FLAIR.nii.gz\n")
    (x,) = discover_subjects(manifest, modalities=("FLAIR",), require_mask=False)
    assert x.images == {"FLAIR": tmp_path / "x" / "FLAIR.nii.gz"} and x.mask is None


def test_real_patients_are_found(mslub_root):
    subjects = discover_subjects(mslub_root)
    assert [s.id for s in subjects] == ["patient07", "patient26"]
    for subject in subjects:
        for path in (*subject.images.values(), subject.mask):
            assert nib.load(path).shape == (182, 218, 182)


def missing_flair(tmp_path, rng):
    write_subject(tmp_path / "s1", rng)
    (tmp_path / "s1" / "FLAIR.nii.gz").unlink()
    return tmp_path, "s1"


def missing_mask(tmp_path, rng):
    write_subject(tmp_path / "s1", rng)
    (tmp_path / "s1" / "consensus_gt.nii.gz").unlink()
    return tmp_path, "s1"


def two_t2w(tmp_path, rng):
    write_subject(tmp_path / "s1", rng)
    write(tmp_path / "s1" / "s1_T2W.nii", np.ones(SHAPE, np.float32))
    return tmp_path, "s1"


def empty_folder(tmp_path, rng):
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty", "empty"


def manifest(text):
    """A subject ``x`` in the plain layout and a manifest ``m.csv`` holding ``text``."""

    def make(tmp_path, rng):
        write_subject(tmp_path / "x", rng)
        (tmp_path / "m.csv").write_text(text)
        return tmp_path / "m.csv", "m.csv"

    return make


HEADER = "subject,t1,t2,flair,mask\n"
ROW_X = "x,x/T1W.nii.gz,x/T2W.nii.gz,x/FLAIR.nii.gz,x/consensus_gt.nii.gz\n"

BAD_DATA_SETS = [
    (missing_flair, "missing the FLAIR scan: none of FLAIR.nii.gz"),
    (missing_mask, "missing the consensus_gt scan"),
    (two_t2w, "ambiguous T2W: found T2W.nii.gz, s1_T2W.nii"),
    (empty_folder, "no subjects found; looked for .*CSV manifest"),
    (lambda tmp_path, rng: (tmp_path / "nowhere", "nowhere"), "not found"),
    (manifest("subject,t1,flair\n"), "lacks the columns t2, mask"),
    (manifest(HEADER + ROW_X + ROW_X), "duplicate subject id x"),
    (manifest(HEADER + ROW_X.replace("x/consensus_gt.nii.gz", "")), "subject x has no mask file"),
    (manifest(HEADER), "no subjects found"),
    (manifest(HEADER + ROW_X.replace("T2W", "T2")), "T2.nii.gz: file of subject x listed in m.csv"),
]


@pytest.mark.parametrize("make, problem", BAD_DATA_SETS)
def test_bad_data_sets_raise_data_error_naming_the_file(tmp_path, rng, make, problem):
    root, name = make(tmp_path, rng)
    with pytest.raises(DataError, match=problem) as error:
        discover_subjects(root)
    assert name in str(error.value)


# Subject ids that would write outside an output folder, or onto another subject's files.
UNSAFE_IDS = [
    ("../../victim", "it holds the path separator /"),
    ("/tmp/victim", "it is an absolute path"),
    ("site1/p01", "it holds the path separator /"),
    ("site1\\p01", "it holds the path separator \\"),
    ("..", "it is the folder itself or the one above"),
    (".", "it is the folder itself or the one above"),
    ("C:victim", "it names the drive C:"),
    ("p\t01", "it holds the control character U+0009"),
    ("x", "it collides with line 2: subject 'x'"),  # case ignored, as on macOS
    ("X", "it collides with line 2: subject 'x'"),
    ("x ", "it collides with line 2: subject 'x'"),  # cells are stripped: a duplicate
    ("p\u200b01", "it holds the control character U+200B"),
]


@pytest.mark.parametrize("name, problem", UNSAFE_IDS)
def test_a_manifest_id_that_cannot_be_a_folder_name_is_refused_naming_its_line(
        tmp_path, rng, name, problem):
    write_subject(tmp_path / "x", rng)
    manifest = tmp_path / "m.csv"
    manifest.write_text(HEADER + ROW_X + ROW_X.replace("x,", f"{name},", 1), newline="")
    with pytest.raises(DataError) as error:
        discover_subjects(manifest)
    message = str(error.value)
    if name.strip() == "x":
        assert message == f"{manifest}: duplicate subject id x"
    else:
        assert message.startswith(f"{manifest}: line 3: subject {name!r} cannot be a file or "
                                  f"folder name: {problem}")
        assert "\n" not in message


def test_an_empty_manifest_id_names_its_line(tmp_path, rng):
    write_subject(tmp_path / "x", rng)
    (tmp_path / "m.csv").write_text(HEADER + ROW_X + ROW_X.replace("x,", "  ,", 1))
    with pytest.raises(DataError, match="m.csv: line 3 has an empty subject id"):
        discover_subjects(tmp_path / "m.csv")


def test_ids_that_only_the_cache_s_sanitising_tells_apart_collide(tmp_path, rng):
    write_subject(tmp_path / "x", rng)
    rows = "".join(ROW_X.replace("x,", f"{name},", 1) for name in ("p 01", "p_01"))
    (tmp_path / "m.csv").write_text(HEADER + rows)
    with pytest.raises(DataError, match="line 3: subject 'p_01' .* collides with line 2: "
                                        "subject 'p 01'"):
        discover_subjects(tmp_path / "m.csv")


@pytest.mark.parametrize("names, problem", [
    (("P01", "p01"), "subject folder 'p01' cannot be a file or folder name: it collides with "
                     "subject folder 'P01'"),
    (("a\\b",), "subject folder 'a\\\\b' cannot be a file or folder name: it holds the path "
                "separator \\"),
    (("a\x7fb",), "subject folder 'a\\x7fb' cannot be a file or folder name: it holds the "
                 "control character U+007F"),
])
def test_subject_folders_that_cannot_be_output_folders_are_refused(tmp_path, rng, names, problem):
    for name in names:
        write_subject(tmp_path / name, rng)
    with pytest.raises(DataError) as error:
        discover_subjects(tmp_path)
    assert str(error.value).startswith(f"{tmp_path}: {problem}")


def test_names_with_spaces_dashes_and_dots_are_kept_as_they_are(tmp_path, rng):
    write_subject(tmp_path / "data" / "site 1-p.01", rng)
    (subject,) = discover_subjects(tmp_path / "data")
    assert subject.id == "site 1-p.01"
    (tmp_path / "m.csv").write_text(HEADER + ROW_X.replace("x/", "data/site 1-p.01/")
                                    .replace("x,", "Site 2 - p.02 (rescan),", 1))
    (subject,) = discover_subjects(tmp_path / "m.csv")
    assert subject.id == "Site 2 - p.02 (rescan)"


def test_unknown_modality_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="modalities must be distinct names from"):
        discover_subjects(tmp_path, modalities=("FLAIR", "PD"))


# ---------------------------------------------------------------- loading


@pytest.fixture
def subject(tmp_path, rng):
    images, mask = write_subject(tmp_path / "s1", rng)
    (subject,) = discover_subjects(tmp_path)
    return subject, images, mask


def test_load_subject_normalises_each_modality_in_the_brain(subject):
    subject, images, mask = subject
    volume = load_subject(subject, modalities=("FLAIR", "T1W"))
    brain = images["FLAIR"] != 0
    assert volume.id == "s1" and volume.modalities == ("FLAIR", "T1W")
    assert volume.image.shape == (*SHAPE, 2) and volume.image.dtype == np.float32
    np.testing.assert_array_equal(volume.brain, brain)
    for channel, modality in enumerate(("FLAIR", "T1W")):
        expected = zscore_in_brain(images[modality], brain)
        np.testing.assert_allclose(volume.image[..., channel], expected, rtol=1e-6)
    assert volume.label.dtype == np.uint8
    np.testing.assert_array_equal(volume.label, mask)


def test_load_subject_without_normalisation_keeps_intensities(subject):
    subject, images, _ = subject
    volume = load_subject(subject, normalize=False)
    np.testing.assert_array_equal(volume.image, np.stack([images[m] for m in MODALITIES], axis=-1))


def test_brainmask_defines_the_brain(subject):
    subject, images, _ = subject
    brainmask = np.zeros(SHAPE, np.uint8)
    brainmask[2:4, 2:6, 1] = 1
    path = write(subject.mask.parent / "brainmask.nii.gz", brainmask)
    volume = load_subject(Subject(subject.id, subject.images, subject.mask, path))
    np.testing.assert_array_equal(volume.brain, brainmask.astype(bool))
    assert not volume.image[~volume.brain].any()


def test_load_subject_resamples_and_pads(subject):
    subject, _, mask = subject
    volume = load_subject(subject, target_spacing=0.5, multiple_of=16)
    assert volume.image.shape == (16, 16, 16, 3)  # resampled (12, 16, 8), padded
    assert volume.geometry.grid.resampled_shape == (12, 16, 8)
    assert volume.label.sum() == 8 * mask.sum()  # each 1 mm voxel became 2x2x2 voxels
    np.testing.assert_array_equal(from_grid(volume.label, volume.geometry, order=0), mask)


def test_mask_without_lesions_is_valid(tmp_path, rng):
    write_subject(tmp_path / "healthy", rng, n_lesion_voxels=0)
    volume = load_subject(discover_subjects(tmp_path)[0])
    assert volume.label.shape == SHAPE and not volume.label.any()


def shifted(affine_shift=(0, 0, 0), shape=SHAPE):
    affine = np.eye(4)
    affine[:3, 3] = affine_shift
    return np.ones(shape, np.float32), affine


@pytest.mark.parametrize(
    "replaced, data_affine, problem",
    [
        ("T2W", shifted(shape=(6, 8, 5)), r"T2W.nii.gz: has shape \(6, 8, 5\) but .*T1W.nii.gz "
                                          r"has \(6, 8, 4\)"),
        ("FLAIR", shifted(affine_shift=(0, 0, 0.5)),
         r"FLAIR.nii.gz: is not aligned with .*T1W.nii.gz.*origin shift \[0.0, 0.0, 0.5\]"),
        ("consensus_gt", shifted(shape=(6, 8, 3)), r"has shape \(6, 8, 3\) but"),
        ("consensus_gt", shifted(affine_shift=(1, 0, 0)), "is not aligned with"),
    ],
)
def test_misaligned_files_raise_data_error_naming_both(subject, replaced, data_affine, problem):
    subject, _, _ = subject
    write(subject.mask.parent / f"{replaced}.nii.gz", *data_affine)
    with pytest.raises(DataError, match=problem) as error:
        load_subject(subject)
    assert error.value.path.endswith(f"{replaced}.nii.gz")


def test_load_subject_without_a_requested_modality(subject):
    subject, _, _ = subject
    flair_only = Subject(subject.id, {"FLAIR": subject.images["FLAIR"]}, subject.mask)
    with pytest.raises(DataError, match="subject s1 has no T1W, T2W scan"):
        load_subject(flair_only)


def test_one_grid_stored_in_another_axis_order_is_accepted_and_lines_up(subject):
    """T2W stored with its first axis flipped (LAS, same voxels in the world): read in
    canonical order it is the same array, so it is accepted, not refused as misaligned."""
    subject, images, _ = subject
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = SHAPE[0] - 1  # voxel i of the flipped file is voxel SHAPE[0]-1-i in the world
    write(subject.images["T2W"], images["T2W"][::-1], flip)
    plain = load_subject(subject, normalize=False)
    np.testing.assert_array_equal(plain.image[..., 1], images["T2W"])
    # A shift of the flipped file is still refused.
    flip[0, 3] += 1.0
    write(subject.images["T2W"], images["T2W"][::-1], flip)
    with pytest.raises(DataError, match="is not aligned with"):
        load_subject(subject)


def test_tiny_affine_differences_are_tolerated(subject):
    subject, images, _ = subject
    affine = np.eye(4)
    affine[0, 3] = 1e-4
    write(subject.images["T2W"], images["T2W"], affine)
    assert load_subject(subject).image.shape == (*SHAPE, 3)


@pytest.fixture(scope="module")
def patient07_flair(mslub_root):
    (patient07, _) = discover_subjects(mslub_root)
    return load_subject(patient07, modalities=("FLAIR",))


def test_real_patient_round_trips_to_its_own_voxels(patient07_flair, mslub_root):
    """The files are stored left-to-right flipped (LAS); the label must come back in that order."""
    volume = patient07_flair
    stored = np.asarray(nib.load(mslub_root / "patient07" / "consensus_gt.nii.gz").dataobj)
    assert volume.image.shape == (182, 218, 182, 1)
    assert volume.label.sum() == 1300  # lesion volume of patient07 in the data's README
    np.testing.assert_array_equal(volume.label, stored[::-1])
    np.testing.assert_array_equal(from_grid(volume.label, volume.geometry, order=0), stored)
    brain = volume.image[..., 0][volume.brain]
    assert abs(brain.mean()) < 0.05 and 0.9 < brain.std() < 1.1


@pytest.mark.parametrize("case, problem", [
    ("zero FLAIR", "FLAIR.nii.gz: the FLAIR scan is constant \\(0\\) inside the brain"),
    ("constant T1W", "T1W.nii.gz: the T1W scan is constant \\(7\\) inside the brain"),
    ("empty brain mask", "brainmask.nii.gz: no brain voxels"),
])
def test_an_empty_or_constant_scan_is_refused_not_normalised(tmp_path, rng, case, problem):
    folder = tmp_path / "s1"
    images, _ = write_subject(folder, rng)
    if case == "zero FLAIR":
        write(folder / "FLAIR.nii.gz", np.zeros(SHAPE, np.float32))
        write(folder / "brainmask.nii.gz", (images["T1W"] != 0).astype(np.uint8))
    elif case == "constant T1W":
        write(folder / "T1W.nii.gz", np.where(images["T1W"] != 0, 7.0, 0).astype(np.float32))
    else:
        write(folder / "brainmask.nii.gz", np.zeros(SHAPE, np.uint8))
    with pytest.raises(DataError, match=problem):
        load_subject(subject_from_folder(folder))


def test_two_subjects_reading_one_file_are_refused(tmp_path):
    from tiny_data import write_tiny_subjects
    from tversky_keras.data import DataError, discover_subjects

    write_tiny_subjects(tmp_path / "real", n=1)
    data = tmp_path / "data"
    data.mkdir()
    (data / "a").symlink_to(tmp_path / "real" / "sub00")
    (data / "b").symlink_to(tmp_path / "real" / "sub00")
    with pytest.raises(DataError, match="subjects a and b read the same file"):
        discover_subjects(data)


def test_a_manifest_naming_a_column_twice_is_refused(tmp_path):
    from tiny_data import write_tiny_subjects
    from tversky_keras.data import DataError, discover_subjects

    write_tiny_subjects(tmp_path, n=2)
    manifest = tmp_path / "m.csv"
    manifest.write_text("subject,t1,t2,flair,mask,flair\n"
                        "s0,sub00/T1W.nii.gz,sub00/T2W.nii.gz,sub00/FLAIR.nii.gz,"
                        "sub00/consensus_gt.nii.gz,sub01/FLAIR.nii.gz\n")
    with pytest.raises(DataError, match="names the column flair more than once"):
        discover_subjects(manifest)


def test_a_byte_identical_copy_given_as_another_modality_is_refused(tmp_path):
    import shutil

    from tiny_data import write_tiny_subjects
    from tversky_keras.data import DataError, Subject, load_subject

    (folder,) = write_tiny_subjects(tmp_path, n=1)
    shutil.copy(folder / "FLAIR.nii.gz", tmp_path / "copy.nii.gz")
    subject = Subject("s", {"T1W": tmp_path / "copy.nii.gz", "T2W": folder / "T2W.nii.gz",
                            "FLAIR": folder / "FLAIR.nii.gz"}, mask=None, brainmask=None)
    with pytest.raises(DataError, match=r"a byte-identical copy of .*\.nii\.gz, given as "
                                        r"(T1W and FLAIR|FLAIR and T1W)"):
        load_subject(subject)
