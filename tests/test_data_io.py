"""tversky_keras.data.io and .grid: reading NIfTI files, the network grid's round trip to the scan."""

import gzip
import io
import warnings

import nibabel as nib
import numpy as np
import pytest

from tiny_data import write_nifti as write
from tiny_data import write_tiny_subjects

from tversky_keras.data import (
    DataError,
    DataWarning,
    Geometry,
    discover_subjects,
    load_subject,
    crop_or_pad,
    from_grid,
    pad_to_multiple,
    read_mask,
    read_nifti,
    save_nifti_like,
    to_grid,
)

# File axis 0 runs posterior (-y) at 2 mm, axis 1 left to right (+x) at 1.5 mm,
# axis 2 downwards (-z) at 3 mm: permuted, flipped and anisotropic at once.
OBLIQUE_AFFINE = np.array(
    [
        [0.0, 1.5, 0.0, -10.0],
        [-2.0, 0.0, 0.0, 20.0],
        [0.0, 0.0, -3.0, 5.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
FILE_SHAPE = (10, 8, 6)
CANONICAL_SHAPE = (8, 10, 6)
CANONICAL_SPACING = (1.5, 2.0, 3.0)


@pytest.fixture
def oblique_scan(tmp_path, rng):
    data = rng.uniform(1.0, 2.0, FILE_SHAPE).astype(np.float32)
    return write(tmp_path / "scan.nii.gz", data, OBLIQUE_AFFINE), data


def test_read_nifti_reorients_like_nibabel(oblique_scan):
    path, data = oblique_scan
    array, image = read_nifti(path)
    expected = nib.as_closest_canonical(nib.load(path)).get_fdata(dtype=np.float32)
    assert array.dtype == np.float32 and array.shape == CANONICAL_SHAPE
    np.testing.assert_array_equal(array, expected)
    np.testing.assert_array_equal(image.affine, OBLIQUE_AFFINE)
    np.testing.assert_array_equal(np.asarray(image.dataobj), data)


def test_geometry_of_an_oblique_scan(oblique_scan):
    geometry = Geometry.from_image(nib.load(oblique_scan[0]))
    assert geometry.shape == FILE_SHAPE
    assert geometry.spacing == pytest.approx(CANONICAL_SPACING)
    assert geometry.grid.shape == CANONICAL_SHAPE and geometry.grid.zoom == (1.0, 1.0, 1.0)


def test_identity_grid_round_trip_is_exact(oblique_scan, tmp_path):
    path, data = oblique_scan
    array, image = read_nifti(path)
    geometry = Geometry.from_image(image)
    grid, mapping = to_grid(array, geometry.spacing)
    assert mapping == geometry.grid
    back = from_grid(grid, geometry)
    np.testing.assert_array_equal(back, data)
    save_nifti_like(back, geometry, tmp_path / "out.nii.gz", np.float32)
    saved = nib.load(tmp_path / "out.nii.gz")
    np.testing.assert_array_equal(saved.affine, OBLIQUE_AFFINE)
    np.testing.assert_array_equal(np.asarray(saved.dataobj), data)


def test_resampled_and_cropped_round_trip(oblique_scan, tmp_path):
    """To 1 mm: canonical (8,10,6) at (1.5,2,3) mm becomes (12,20,18), then (10,24,18)."""
    path, _ = oblique_scan
    array, image = read_nifti(path)
    geometry = Geometry.from_image(image)
    grid, mapping = to_grid(array, geometry.spacing, target_spacing=1.0, target_shape=(10, 24, 18))
    assert mapping.resampled_shape == (12, 20, 18)
    assert mapping.offset == (1, -2, 0)
    assert mapping.zoom == pytest.approx((1.5, 2.0, 3.0))
    assert grid.shape == (10, 24, 18)
    assert not grid[:, :2].any() and not grid[:, 22:].any()  # the zero padding
    geometry = Geometry.from_image(image, mapping)
    back = from_grid(grid, geometry)
    assert back.shape == FILE_SHAPE
    save_nifti_like(back, geometry, tmp_path / "out.nii.gz", np.float32)
    np.testing.assert_array_equal(nib.load(tmp_path / "out.nii.gz").affine, OBLIQUE_AFFINE)


def test_round_trip_of_a_linear_ramp_is_exact_inside(tmp_path):
    """Linear interpolation reproduces a ramp: 2 mm -> 1 mm -> 2 mm returns it inside."""
    ramp = np.add.outer(np.add.outer(np.arange(8.0), 2 * np.arange(6.0)), 3 * np.arange(4.0))
    path = write(tmp_path / "ramp.nii", ramp.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    array, image = read_nifti(path)
    geometry = Geometry.from_image(image)
    grid, mapping = to_grid(array, geometry.spacing, target_spacing=1.0)
    assert grid.shape == (16, 12, 8)
    back = from_grid(grid, Geometry.from_image(image, mapping))
    np.testing.assert_allclose(back[1:-1, 1:-1, 1:-1], ramp[1:-1, 1:-1, 1:-1], atol=1e-5)


def test_cropped_voxels_come_back_as_zero(oblique_scan):
    """Canonical axis 0 (8 voxels) cropped to 4 keeps voxels 2..5; the rest return as 0."""
    path, _ = oblique_scan
    array, image = read_nifti(path)
    geometry = Geometry.from_image(image)
    grid, mapping = to_grid(array, geometry.spacing, target_shape=(4, 10, 6))
    back = from_grid(grid, Geometry.from_image(image, mapping))
    canonical_back = nib.as_closest_canonical(nib.Nifti1Image(back, OBLIQUE_AFFINE)).get_fdata()
    expected = array.copy()
    expected[:2] = 0
    expected[6:] = 0
    np.testing.assert_array_equal(canonical_back, expected)


def test_channels_and_masks_go_through_the_grid(oblique_scan):
    path, _ = oblique_scan
    array, image = read_nifti(path)
    geometry = Geometry.from_image(image)
    stacked = np.stack([array, 2 * array], axis=-1)
    grid, mapping = to_grid(stacked, geometry.spacing, target_spacing=0.5, order=1)
    assert grid.shape == (24, 40, 36, 2)
    np.testing.assert_allclose(grid[..., 1], 2 * grid[..., 0], rtol=1e-6)
    mask, _ = to_grid(array > 1.5, geometry.spacing, target_spacing=0.5, order=0)
    assert mask.dtype == bool
    # nearest-neighbour 3x..6x upsampling repeats every voxel of the mask
    np.testing.assert_array_equal(mask[::3, ::4, ::6], array > 1.5)
    back = from_grid(mask, Geometry.from_image(image, mapping), order=0)
    np.testing.assert_array_equal(back, np.asarray(image.dataobj) > 1.5)


@pytest.mark.parametrize(
    "shape, multiple, expected",
    [((91, 109, 91), 8, (96, 112, 96)), ((8, 16, 24), 8, (8, 16, 24)), ((1, 2, 3), 4, (4, 4, 4))],
)
def test_pad_to_multiple(shape, multiple, expected):
    assert pad_to_multiple(shape, multiple) == expected


@pytest.mark.parametrize(
    "start, size, expected",
    [
        (-2, 4, [0, 0, 1, 2]),
        (3, 4, [4, 5, 0, 0]),
        (1, 3, [2, 3, 4]),
        (6, 2, [0, 0]),
        (-1, 7, [0, 1, 2, 3, 4, 5, 0]),
    ],
)
def test_crop_or_pad(start, size, expected):
    array = np.arange(1, 6)[:, None] * np.array([1, 10])  # 5 voxels, 2 channels
    window = crop_or_pad(array, [start], [size])
    np.testing.assert_array_equal(window, np.array(expected)[:, None] * np.array([1, 10]))


def test_to_grid_rejects_two_target_shapes():
    with pytest.raises(ValueError, match="target_shape or multiple_of"):
        to_grid(np.zeros((4, 4, 4)), 1.0, target_shape=(4, 4, 4), multiple_of=4)


def test_from_grid_rejects_an_array_off_the_grid(oblique_scan):
    geometry = Geometry.from_image(nib.load(oblique_scan[0]))
    with pytest.raises(ValueError, match="grid"):
        from_grid(np.zeros(FILE_SHAPE), geometry)


def test_save_nifti_like_writes_dtype_atomically(oblique_scan, tmp_path):
    path, data = oblique_scan
    geometry = Geometry.from_image(nib.load(path))
    labels = (data > 1.5).astype(np.float32)
    out = tmp_path / "pred" / "labels.nii.gz"
    out.parent.mkdir()
    save_nifti_like(labels, geometry, out, np.uint8)
    saved = nib.load(out)
    assert saved.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(saved.dataobj), labels)
    assert [p.name for p in out.parent.iterdir()] == ["labels.nii.gz"]  # no temporary left


@pytest.mark.parametrize(
    "name, shape, problem",
    [("out.nii.gz", (3, 3, 3), "does not match"), ("out.mha", FILE_SHAPE, ".nii or .nii.gz")],
)
def test_save_nifti_like_rejects(oblique_scan, tmp_path, name, shape, problem):
    geometry = Geometry.from_image(nib.load(oblique_scan[0]))
    with pytest.raises(ValueError, match=problem):
        save_nifti_like(np.zeros(shape), geometry, tmp_path / name, np.uint8)
    assert list(tmp_path.glob("out*")) == []


def test_4d_file_with_one_volume_is_read_as_3d(tmp_path, rng):
    data = rng.uniform(size=(4, 5, 6, 1)).astype(np.float32)
    array, _ = read_nifti(write(tmp_path / "single.nii.gz", data))
    np.testing.assert_array_equal(array, data[..., 0])


def truncated_gzip(tmp_path):
    """Cut inside the compressed voxels (random data barely compresses), past the header."""
    noise = np.random.default_rng(0).uniform(size=(16, 16, 16)).astype(np.float32)
    path = write(tmp_path / "truncated.nii.gz", noise)
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    return path


def truncated_nii(tmp_path):
    path = write(tmp_path / "truncated.nii", np.ones((16, 16, 16), np.float32))
    path.write_bytes(path.read_bytes()[:600])
    return path


def not_nifti(tmp_path):
    path = tmp_path / "notes.nii.gz"
    path.write_text("not an image")
    return path


def with_nan(tmp_path):
    data = np.ones((4, 4, 4), np.float32)
    data[1, 2, 3] = np.nan
    return write(tmp_path / "nan.nii.gz", data)


def with_inf(tmp_path):
    data = np.ones((4, 4, 4), np.float32)
    data[0, 0, 0] = np.inf
    return write(tmp_path / "inf.nii.gz", data)


BAD_SCANS = [
    (lambda tmp_path: tmp_path / "absent.nii.gz", "not found"),
    (truncated_gzip, "cannot read"),
    (truncated_nii, "cannot read"),
    (not_nifti, "cannot read"),
    (lambda tmp_path: write(tmp_path / "slice.nii.gz", np.ones((4, 5))), r"3D.*\(4, 5\)"),
    (lambda tmp_path: write(tmp_path / "run.nii.gz", np.ones((4, 4, 4, 2))), r"3D.*\(4, 4, 4, 2\)"),
    (with_nan, "1 voxels are NaN or infinite"),
    (with_inf, "1 voxels are NaN or infinite"),
]


@pytest.mark.parametrize("make, problem", BAD_SCANS)
def test_bad_scans_raise_data_error_naming_the_file(tmp_path, make, problem):
    path = make(tmp_path)
    with pytest.raises(DataError, match=problem) as error:
        read_nifti(path)
    assert path.name in str(error.value)
    assert error.value.path == str(path)


@pytest.mark.parametrize(
    "values, dtype",
    [([0.0, 1.0], np.float32), ([0, 1], np.uint8), ([0, 0], np.int16)],
)
def test_read_mask_accepts_zero_one(tmp_path, values, dtype):
    data = np.zeros((4, 4, 4), dtype)
    data[..., :2] = values[1]
    data[..., 2:] = values[0]
    mask = read_mask(write(tmp_path / "mask.nii.gz", data))
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, data.astype(np.uint8))


@pytest.mark.parametrize("bad, shown", [(0.5, "0.5"), (2.0, "2"), (-1.0, "-1")])
def test_read_mask_rejects_other_values(tmp_path, bad, shown):
    data = np.zeros((4, 4, 4), np.float32)
    data[0, 0, :2] = 1.0
    data[1, 1, 1] = bad
    path = write(tmp_path / "mask.nii.gz", data)
    with pytest.raises(DataError, match=f"only 0 and 1, found also {shown}$") as error:
        read_mask(path)
    assert "mask.nii.gz" in str(error.value)


def test_a_voxel_size_that_makes_a_huge_grid_is_refused_before_allocating():
    with pytest.raises(ValueError, match=r"grid would be .* voxels .*--spacing"):
        to_grid(np.zeros((10, 10, 10), np.float32), spacing=1.0, target_spacing=1e-4)


def test_a_mask_value_next_to_one_is_shown_with_every_digit(tmp_path):
    data = np.zeros((4, 4, 4), np.float32)
    data[0, 0, 0] = np.float32(1.0000001)
    with pytest.raises(DataError, match=r"only 0 and 1, found also 1\.0000001$"):
        read_mask(write(tmp_path / "mask.nii.gz", data))


def rewrite_header(path, change):
    """``path`` (a .nii.gz) with ``change(header)`` applied to its header bytes alone: the
    voxel data stay as they were written, whatever the header now claims."""
    raw = gzip.decompress(path.read_bytes())
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(raw))
    change(header)
    path.write_bytes(gzip.compress(header.binaryblock + raw[len(header.binaryblock):]))
    return path


def test_a_gzip_file_whose_header_claims_more_than_it_can_hold_is_refused_at_once(tmp_path):
    # A 1-KB file whose header claims 2000^3 int16 voxels (16 GB).
    path = rewrite_header(write(tmp_path / "liar.nii.gz", np.zeros((4, 4, 4), np.int16)),
                          lambda header: header.set_data_shape((2000, 2000, 2000)))
    assert nib.load(path).shape == (2000, 2000, 2000) and path.stat().st_size < 2000
    with pytest.raises(DataError, match=r"liar\.nii\.gz: the header claims 2000x2000x2000 "
                                        r"voxels of int16 \(16 GB\), more than a [\d,]+-byte "
                                        r"gzip file can hold"):
        read_nifti(path)


def test_a_file_without_orientation_is_read_with_a_warning_naming_it(tmp_path):
    def no_orientation(header):
        header["qform_code"] = 0
        header["sform_code"] = 0

    path = rewrite_header(write(tmp_path / "plain.nii.gz", np.ones((4, 4, 4), np.float32)),
                          no_orientation)
    with pytest.warns(DataWarning, match=r"plain\.nii\.gz: the header gives no orientation"):
        read_nifti(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_nifti(write(tmp_path / "oriented.nii.gz", np.ones((4, 4, 4), np.float32)))


def test_a_scaled_integer_scan_keeps_its_background_out_of_the_brain(tmp_path):
    # int16 with scl_slope/scl_inter: a stored 0 reads as 1.1e-7, not 0.
    write_tiny_subjects(tmp_path / "plain", n=1)
    scaled = tmp_path / "scaled" / "sub00"
    scaled.mkdir(parents=True)
    for name in ("T1W", "T2W", "FLAIR", "consensus_gt"):
        image = nib.load(tmp_path / "plain" / "sub00" / f"{name}.nii.gz")
        if name != "consensus_gt":  # stored as int16 steps of 0.001, 0 reading as 1.1e-7
            stored = np.round(np.asarray(image.dataobj) / 0.001).astype(np.int16)
            image = nib.Nifti1Image(stored, image.affine)
            image.header.set_slope_inter(0.001, 1.1e-7)
        nib.save(image, scaled / f"{name}.nii.gz")
    flair = nib.load(scaled / "FLAIR.nii.gz")
    assert flair.get_data_dtype() == np.int16 and np.asarray(
        flair.dataobj, np.float32).min() == np.float32(1.1e-7)
    (plain,), (ours,) = (discover_subjects(tmp_path / k) for k in ("plain", "scaled"))
    expected = load_subject(plain).brain
    assert 0 < expected.sum() < expected.size
    np.testing.assert_array_equal(load_subject(ours).brain, expected)


def test_a_brain_that_fills_the_field_of_view_is_a_warning_naming_the_file(tmp_path):
    write_tiny_subjects(tmp_path, n=1)
    for name in ("T1W", "T2W", "FLAIR"):
        path = tmp_path / "sub00" / f"{name}.nii.gz"
        image = nib.load(path)
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj) + 5.0, image.affine), path)
    (subject,) = discover_subjects(tmp_path)
    with pytest.warns(DataWarning, match=r"T1W\.nii\.gz: no voxel of subject sub00's scans is "
                                         r"background.*give a brain mask"):
        volume = load_subject(subject)
    assert volume.brain.all()


def test_an_analyze_file_is_read_with_a_warning_that_it_has_no_orientation(tmp_path):
    data = np.arange(4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)
    nib.save(nib.AnalyzeImage(data, np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "scan.img")
    with pytest.warns(DataWarning, match=r"scan\.img: an Analyze header gives no orientation"):
        read, _ = read_nifti(tmp_path / "scan.img")
    assert read.shape == (4, 5, 3)


def test_a_singular_affine_is_a_data_error_naming_the_file(tmp_path):
    header = nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.diag([2.0, 2.0, 2.0, 1.0])).header
    header["pixdim"][3] = 0
    header["srow_z"] = [0, 0, 0, 0]
    header["qform_code"], header["sform_code"] = 0, 1
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), None, header), tmp_path / "z.nii.gz")
    with pytest.raises(DataError, match=r"z\.nii\.gz: the header's affine gives no orientation"):
        read_nifti(tmp_path / "z.nii.gz")
