"""tversky_keras.scan_spec: the input contract a saved model carries (modalities, voxel size, multiple)."""

import keras
import numpy as np
import pytest

import tversky_keras  # noqa: F401  (registration for load_model)
from tversky_keras.models import unet3d
from tversky_keras.scan_spec import ScanSpec, check_model_modalities, scan_spec, with_scan_spec


def network(channels=3):
    return unet3d(input_shape=(None, None, None, channels), base_filters=2, depth=2)


@pytest.mark.parametrize("spacing, stored, normalization", [
    (None, None, "zscore"), (2, 2.0, "wm-peak"), ((1.0, 1.0, 1.0), 1.0, "zscore"),
    ([0.9, 0.9, 3.0], [0.9, 0.9, 3.0], "wm-peak")])
def test_the_contract_survives_save_and_load(tmp_path, spacing, stored, normalization):
    model = with_scan_spec(network(), ["T1W", "T2W", "FLAIR"], spacing=spacing, multiple_of=4,
                           intensity_normalization=normalization)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert scan_spec(loaded) == {"modalities": ["T1W", "T2W", "FLAIR"], "spacing": stored,
                                 "multiple_of": 4, "intensity_normalization": normalization}
    x = np.random.default_rng(0).standard_normal((1, 8, 8, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict_on_batch(x), model.predict_on_batch(x), atol=1e-6)


def test_a_model_without_the_contract_has_none():
    assert scan_spec(network()) is None


@pytest.mark.parametrize("spacing", [0, -1.0, (1.0, 2.0), (1.0, 0.0, 1.0)])
def test_a_bad_spacing_is_refused(spacing):
    with pytest.raises(ValueError, match="spacing must be one or three positive sizes"):
        ScanSpec(["FLAIR"], spacing=spacing)


def test_channels_must_match_the_modalities():
    with pytest.raises(ValueError, match="input has 3 channels but the spec names 2"):
        with_scan_spec(network(3), ["T1W", "FLAIR"])


def test_check_model_modalities_names_the_expected_order():
    model = with_scan_spec(network(), ["T1W", "T2W", "FLAIR"])
    check_model_modalities(model, ["T1W", "T2W", "FLAIR"])
    with pytest.raises(ValueError, match="expects modalities T1W, T2W, FLAIR .* provides FLAIR, "
                                         "T2W, T1W"):
        check_model_modalities(model, ["FLAIR", "T2W", "T1W"], source="the scan")


def test_a_size_the_network_cannot_take_is_named_not_a_concat_error():
    # A None-sized U-Net fed 10 voxels along x (depth 2 needs multiples of 4)
    # used to fail inside TensorFlow's ConcatV2 at the first skip connection.
    network = unet3d(input_shape=(None, None, None, 3), base_filters=2, depth=2)
    model = with_scan_spec(network, ["T1W", "T2W", "FLAIR"], multiple_of=4)
    assert model(np.zeros((1, 8, 12, 4, 3), np.float32)).shape == (1, 8, 12, 4, 2)
    for call in (model, model.predict_on_batch):
        with pytest.raises(ValueError, match="spatial axis 1 of the input has size 10, not a "
                                             "multiple of 4"):
            call(np.zeros((1, 8, 10, 4, 3), np.float32))
