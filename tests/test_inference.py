"""Whole-volume and sliding-window inference, NIfTI outputs in the scan's geometry."""

import keras
import nibabel as nib
import numpy as np
import pytest

from tiny_data import write_tiny_subjects
from tversky_keras.data import discover_subjects
from tversky_keras.inference import (gaussian_importance, predict_volume, segment_subject,
                                     window_starts, write_segmentation)
from tversky_keras.models import unet3d
from tversky_keras.scan_spec import with_scan_spec


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(3)
    network = unet3d(input_shape=(None, None, None, 3), base_filters=2, depth=2)
    return with_scan_spec(network, ["T1W", "T2W", "FLAIR"], spacing=None, multiple_of=4)


@pytest.mark.parametrize("size, window, step, expected", [
    (10, 4, 2, [0, 2, 4, 6]),      # 6 = 10 - 4: the last window is flush with the end
    (10, 4, 3, [0, 3, 6]),
    (11, 4, 3, [0, 3, 6, 7]),
    (4, 4, 2, [0]),
    (3, 4, 2, [0]),                 # smaller than the window: padded, one window
])
def test_window_starts_cover_the_axis(size, window, step, expected):
    starts = window_starts(size, window, step)
    assert starts == expected
    covered = np.zeros(max(size, window), bool)
    for s in starts:
        covered[s:s + window] = True
    assert covered[:size].all()


def test_gaussian_importance_peaks_in_the_centre():
    w = gaussian_importance((8, 8, 8))
    assert w.shape == (8, 8, 8) and w.max() == pytest.approx(1.0)
    assert w[3:5, 3:5, 3:5].min() > w[0, 0, 0] > 0
    np.testing.assert_allclose(w, w[::-1, ::-1, ::-1])


def test_sliding_window_equals_whole_volume_for_one_window(model):
    image = np.random.default_rng(0).standard_normal((16, 20, 12, 3)).astype(np.float32)
    whole = predict_volume(model, image)
    single = predict_volume(model, image, window=(16, 20, 12))
    np.testing.assert_allclose(single, whole, atol=1e-6)


def test_sliding_window_close_to_whole_volume_with_overlap(model):
    # The receptive field crosses window borders, so agreement is approximate;
    # with Gaussian blending and 50% overlap the difference stays small.
    image = np.random.default_rng(1).standard_normal((24, 24, 24, 3)).astype(np.float32)
    whole = predict_volume(model, image)
    windows = predict_volume(model, image, window=(16, 16, 16), overlap=0.5, batch_size=3)
    assert windows.shape == whole.shape == (24, 24, 24, 2)
    np.testing.assert_allclose(windows.sum(-1), 1.0, atol=1e-5)
    assert np.abs(windows - whole).mean() < 0.02


def _identity_model(channels):
    """A 'model' whose probabilities are its input: every blend of it must return the image."""
    inputs = keras.Input((None, None, None, channels))
    return keras.Model(inputs, keras.layers.Identity()(inputs))


@pytest.mark.parametrize("shape, message", [((0, 8, 8, 3), "non-empty"), ((8, 8, 8), "non-empty"),
                                            ((8, 8, 8, 2), "takes 3 input channels, the image "
                                                           "has 2")])
def test_an_image_the_model_cannot_take_is_refused(model, shape, message):
    with pytest.raises(ValueError, match=message):
        predict_volume(model, np.zeros(shape, np.float32), window=(8, 8, 8))


@pytest.mark.parametrize("device_windows", [True, False])
@pytest.mark.parametrize("window, overlap, batch_size, blend", [
    ((8, 8, 8), 0.5, 1, "gaussian"),
    ((8, 12, 4), 0.25, 5, "gaussian"),   # 5 does not divide the 12 windows: a padded last batch
    ((8, 8, 8), 0.0, 2, "constant"),
])
def test_blending_a_model_that_returns_its_input_gives_the_input(window, overlap, batch_size,
                                                                  blend, device_windows):
    # Each voxel is a weighted mean of identical values, whatever the weights and overlaps:
    # a window put in the wrong place, counted twice or missed changes the result.
    image = np.random.default_rng(2).uniform(0, 1, (13, 21, 10, 2)).astype(np.float32)
    out = predict_volume(_identity_model(2), image, window=window, overlap=overlap,
                         batch_size=batch_size, blend=blend, multiple_of=4,
                         device_windows=device_windows)
    np.testing.assert_allclose(out, image, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch_size, overlap", [(1, 0.5), (5, 0.5), (5, 0.75)])  # 36, 112 windows
def test_device_windows_equal_the_host_loop(model, batch_size, overlap):
    image = np.random.default_rng(3).standard_normal((20, 28, 13, 3)).astype(np.float32)
    options = dict(window=(8, 16, 8), overlap=overlap, batch_size=batch_size)
    host = predict_volume(model, image, device_windows=False, **options)
    device = predict_volume(model, image, **options)
    np.testing.assert_allclose(device, host, rtol=1e-5, atol=1e-6)
    assert np.abs(host - 0.5).max() > 1e-3  # not a constant map: the comparison can fail


def test_a_model_without_a_known_class_count_is_blended_through_the_host():
    image = np.random.default_rng(4).uniform(0, 1, (9, 9, 9, 2)).astype(np.float32)
    model = _identity_model(None)  # output channels unknown until called
    assert model.output_shape[-1] is None
    out = predict_volume(model, image, window=(8, 8, 8), overlap=0.5, multiple_of=4)
    np.testing.assert_allclose(out, image, rtol=1e-5, atol=1e-6)


def test_device_windows_let_a_model_and_its_compiled_loop_go():
    import gc
    import weakref

    from tversky_keras import inference

    refs = []
    for seed in range(3):
        keras.utils.set_random_seed(seed)
        network = unet3d(input_shape=(None, None, None, 3), base_filters=2, depth=1)
        predict_volume(network, np.zeros((6, 6, 6, 3), np.float32), window=(4, 4, 4))
        refs.append(weakref.ref(network))
        del network
    gc.collect()
    assert [ref() for ref in refs] == [None] * 3  # nothing keeps the models alive
    assert not any(ref() in inference._COMPILED for ref in refs)


def test_device_windows_trace_once_for_every_volume_shape(model):
    from tversky_keras import inference

    for shape in ((16, 16, 16, 3), (24, 20, 9, 3), (8, 8, 8, 3)):
        predict_volume(model, np.zeros(shape, np.float32), window=(8, 8, 8), batch_size=2)
    function = inference._compiled_window_loop(model, (8, 8, 8), 2, 3)
    assert function.experimental_get_tracing_count() == 1


def test_whole_volume_pads_sizes_that_are_not_multiples(model):
    image = np.random.default_rng(2).standard_normal((13, 18, 9, 3)).astype(np.float32)
    probs = predict_volume(model, image)
    assert probs.shape == (13, 18, 9, 2)
    padded = np.zeros((16, 20, 12, 3), np.float32)
    padded[:13, :18, :9] = image
    np.testing.assert_allclose(probs, model.predict_on_batch(padded[None])[0][:13, :18, :9],
                               atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"window": (10, 16, 16)}, "multiple of 4"),
    ({"window": (16, 16, 16), "overlap": 1.0}, "overlap"),
    ({"window": (16, 16, 16), "blend": "median"}, "blend"),
    ({"window": (16, 16, 16), "batch_size": 0}, "batch_size=0: must be an integer >= 1"),
    ({"window": (16, 16, 16), "batch_size": 2.0}, "batch_size=2.0: must be an integer"),
    ({"window": (16.5, 16, 16)}, "sizes must be integers"),
])
def test_bad_inference_options_are_refused(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        predict_volume(model, np.zeros((16, 16, 16, 3), np.float32), **kwargs)


def test_outputs_have_the_input_shape_and_affine(model, tmp_path):
    # An oblique-free but flipped (LPS-like) affine checks the reorientation round trip.
    affine = np.diag([-2.0, -2.0, 2.0, 1.0])
    write_tiny_subjects(tmp_path / "data", n=1, shape=(18, 22, 14), affine=affine)
    subject = discover_subjects(tmp_path / "data")[0]
    probability, geometry = segment_subject(model, subject)
    prob_path, mask_path = write_segmentation(probability, geometry, tmp_path / "out", 0.5)
    source = nib.load(subject.images["FLAIR"])
    for path, dtype in ((prob_path, np.float32), (mask_path, np.uint8)):
        written = nib.load(path)
        assert written.shape == source.shape
        np.testing.assert_allclose(written.affine, source.affine)
        assert written.get_data_dtype() == dtype
    prob = nib.load(prob_path).get_fdata()
    mask = np.asarray(nib.load(mask_path).dataobj)
    np.testing.assert_array_equal(mask, (prob >= 0.5).astype(np.uint8))
    # Outside the brain (zero in every modality) the probability is 0 by construction.
    assert prob[np.asarray(source.dataobj) == 0].max() == 0.0


def test_missing_modality_names_what_the_model_expects(model, tmp_path):
    write_tiny_subjects(tmp_path / "data", n=1)
    subject = discover_subjects(tmp_path / "data")[0]
    del subject.images["T2W"]
    with pytest.raises(ValueError, match="expects modalities T1W, T2W, FLAIR.*no T2W"):
        segment_subject(model, subject)


def _direct(model, image):
    """The model's probabilities for one image, called directly (no padding needed)."""
    return np.asarray(keras.ops.convert_to_numpy(model(image[None], training=False)))[0]


def test_mirroring_averages_the_prediction_of_every_flip(model):
    # Sizes that are multiples of 4, so no padding: the expectation is the
    # model called on the image and on its flips, each flipped back.
    image = np.random.default_rng(1).standard_normal((16, 12, 8, 3)).astype(np.float32)
    flips = [(), (0,), (2,), (0, 2)]
    expected = np.mean([np.flip(_direct(model, np.flip(image, axes)), axes) if axes
                        else _direct(model, image) for axes in flips], axis=0)
    mirrored = predict_volume(model, image, mirror_axes=(2, 0))
    np.testing.assert_allclose(mirrored, expected, atol=1e-6)
    # The random network is not symmetric: mirroring changes its answer.
    assert np.abs(mirrored - _direct(model, image)).max() > 1e-3
    # Through the sliding windows too: the same average of windowed predictions.
    windowed = [predict_volume(model, np.flip(image, (1,)), window=(8, 8, 8)), None]
    windowed[1] = predict_volume(model, image, window=(8, 8, 8))
    expected = (np.flip(windowed[0], (1,)) + windowed[1]) / 2
    np.testing.assert_allclose(predict_volume(model, image, window=(8, 8, 8), mirror_axes=(1,)),
                               expected, atol=1e-6)


def test_mirroring_leaves_a_voxelwise_model_unchanged():
    image = np.random.default_rng(2).random((8, 12, 16, 3)).astype(np.float32)
    identity = _identity_model(3)
    np.testing.assert_allclose(predict_volume(identity, image, mirror_axes=(0, 1, 2)), image,
                               atol=1e-6)


@pytest.mark.parametrize("axes", [(3,), (0, 0), ("x",), (True,), None, (-1,)])
def test_bad_mirror_axes_are_refused(model, axes):
    with pytest.raises(ValueError, match="mirror_axes"):
        predict_volume(model, np.zeros((8, 8, 8, 3), np.float32), mirror_axes=axes)


def test_an_ensemble_averages_its_models_probabilities(model, tmp_path):
    keras.utils.set_random_seed(4)
    other = with_scan_spec(unet3d(input_shape=(None, None, None, 3), base_filters=2, depth=2),
                           ["T1W", "T2W", "FLAIR"], spacing=None, multiple_of=4)
    write_tiny_subjects(tmp_path / "data", n=1)
    subject = discover_subjects(tmp_path / "data")[0]
    one, geometry = segment_subject(model, subject)
    two, _ = segment_subject(other, subject)
    both, both_geometry = segment_subject([model, other], subject)
    np.testing.assert_allclose(both, (one + two) / 2, atol=1e-6)
    assert np.abs(one - two).max() > 1e-3 and both_geometry.shape == geometry.shape
    # Models that expect another scan cannot vote together.
    elsewhere = with_scan_spec(unet3d(input_shape=(None, None, None, 3), base_filters=2, depth=2),
                               ["T1W", "T2W", "FLAIR"], spacing=2.0, multiple_of=4)
    with pytest.raises(ValueError, match="model 2 of the ensemble expects another scan"):
        segment_subject([model, elsewhere], subject)
    with pytest.raises(ValueError, match="no model given"):
        segment_subject([], subject)
