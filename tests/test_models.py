"""tversky_keras.models, the 3D U-Net: shapes, parameter count, structure, options, mixed
precision (saving and loading in a fresh process: tests/test_training.py)."""

from collections import Counter
from pathlib import Path

import keras
import numpy as np
import pytest

from tversky_keras.models import check_spatial_shape, model_depth, required_multiple, unet3d


def _layer_types(model):
    return Counter(type(layer).__name__ for layer in model.layers)


def _conv_params(kernel, cin, cout):
    """Weights plus biases of a convolution (also of a transposed one)."""
    return kernel**3 * cin * cout + cout


def _expected_params(channels, n_classes, base_filters, depth):
    """The U-Net's parameters, level by level, without normalization."""
    total, cin = 0, channels
    for level in range(depth + 1):  # contracting levels, then the bottleneck
        filters = base_filters * 2**level
        total += _conv_params(3, cin, filters) + _conv_params(3, filters, filters)
        cin = filters
    for level in reversed(range(depth)):
        filters = base_filters * 2**level
        total += _conv_params(2, cin, filters)  # transposed convolution
        # the first convolution reads the skip and the upsampled features
        total += _conv_params(3, 2 * filters, filters) + _conv_params(3, filters, filters)
        cin = filters
    return total + _conv_params(1, cin, n_classes)


@pytest.mark.parametrize(
    "channels, n_classes, base_filters, depth, hand_count",
    [
        # encoder 3->2: 27*3*2+2 = 164, 2->2: 110; bottleneck 2->4: 220, 4->4: 436;
        # transposed 4->2: 8*4*2+2 = 66; decoder (2+2)->2: 218, 2->2: 110;
        # head 2->2: 2*2+2 = 6. Sum: 1330.
        (3, 2, 2, 1, 1330),
        (3, 2, 4, 2, None),
        (2, 1, 3, 3, None),
    ],
)
def test_parameter_count_matches_formula(channels, n_classes, base_filters, depth, hand_count):
    model = unet3d((None, None, None, channels), n_classes, base_filters, depth)
    expected = _expected_params(channels, n_classes, base_filters, depth)
    if hand_count is not None:
        assert expected == hand_count
    assert model.count_params() == expected


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_layer_structure_follows_depth(depth):
    model = unet3d(base_filters=2, depth=depth)
    types = _layer_types(model)
    # two 3x3x3 convolutions per contracting level, bottleneck and expanding
    # level, plus the 1x1x1 head
    assert types["Conv3D"] == 4 * depth + 3
    assert types["MaxPooling3D"] == types["UpConv3D"] == types["Concatenate"] == depth
    assert model_depth(model) == depth
    assert required_multiple(model) == required_multiple(depth) == 2**depth


@pytest.mark.parametrize("n_classes, activation", [(2, "softmax"), (3, "softmax"), (1, "sigmoid")])
def test_output_is_activation_of_logits(rng, n_classes, activation):
    model = unet3d((8, 8, 8, 3), n_classes=n_classes, base_filters=2, depth=1)
    x = rng.normal(size=(2, 8, 8, 8, 3)).astype(np.float32)
    probabilities = model.predict(x, verbose=0)
    logits = keras.Model(model.input, model.get_layer("logits").output).predict(x, verbose=0)
    assert probabilities.shape == (2, 8, 8, 8, n_classes)
    if activation == "softmax":
        exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
        expected = exp / exp.sum(axis=-1, keepdims=True)
        np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-6)
    else:
        expected = 1 / (1 + np.exp(-logits))
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)


@pytest.mark.parametrize(
    "input_shape, depth, message",
    [
        ((12, 16, 16, 3), 3, r"spatial axis 0 has size 12, which is not a multiple of 8 "
                             r"\(2\*\*depth with depth=3\); pad or crop it to 8 or 16"),
        ((16, None, 6, 1), 2, r"spatial axis 2 has size 6, .* multiple of 4 .* to 4 or 8"),
        ((16, 3, 16, 1), 2, r"spatial axis 1 has size 3, .* multiple of 4 .* to 4$"),
    ],
)
def test_indivisible_spatial_size_is_named(input_shape, depth, message):
    with pytest.raises(ValueError, match=message):
        unet3d(input_shape, base_filters=2, depth=depth)
    with pytest.raises(ValueError, match=message):
        check_spatial_shape(input_shape[:3], depth)


def test_divisible_and_unknown_sizes_pass():
    assert check_spatial_shape((16, None, 32), 4) is None
    assert unet3d((16, None, 8, 1), base_filters=2, depth=3).output.shape[1:4] == (16, None, 8)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"depth": 0}, "depth must be an integer >= 1"),
        ({"depth": 1.5}, "depth must be an integer >= 1"),
        ({"base_filters": 0}, "base_filters must be an integer >= 1"),
        ({"n_classes": 0}, "n_classes must be an integer >= 1"),
        ({"normalization": "layer"}, "normalization must be one of"),
        ({"dropout": 1.0}, r"dropout must be a rate in \[0, 1\)"),
        ({"dropout": -0.1}, r"dropout must be a rate in \[0, 1\)"),
        ({"input_shape": (16, 16, 3)}, r"input_shape must be channel-last \(x, y, z, channels\)"),
        ({"input_shape": (16, 16, 16, None)}, "known number of channels"),
        ({"input_shape": (16, 0, 16, 3)}, "spatial sizes must be positive integers or None"),
        ({"data_format": "NCDHW"}, "data_format must be one of"),
    ],
)
def test_bad_options_raise_naming_the_option(kwargs, message):
    with pytest.raises(ValueError, match=message):
        unet3d(**{"base_filters": 2, "depth": 1, **kwargs})


def test_depth_of_a_model_without_pooling_is_an_error():
    inputs = keras.Input((4, 4, 4, 1))
    model = keras.Model(inputs, keras.layers.Conv3D(1, 1)(inputs), name="plain")
    with pytest.raises(ValueError, match="'plain' has no MaxPooling3D layer"):
        model_depth(model)
    with pytest.raises(ValueError, match="depth must be an integer >= 1"):
        required_multiple(0)


# depth 1, base 2, 3 channels: 1330 parameters without normalization (above);
# the six 3x3x3 convolutions have 2+2+4+4+2+2 = 16 output channels, whose biases
# are dropped; batch norm adds 4 values per channel (2 trainable), group and
# instance norm add 2.
@pytest.mark.parametrize(
    "normalization, layer_type, n_params, groups",
    [
        ("batch", "BatchNormalization", 1330 - 16 + 4 * 16, None),
        ("instance", "GroupNormalization", 1330 - 16 + 2 * 16, [2, 2, 4, 4, 2, 2]),
        ("group", "GroupNormalization", 1330 - 16 + 2 * 16, [2, 2, 4, 4, 2, 2]),
    ],
)
def test_normalization_between_convolution_and_relu(normalization, layer_type, n_params, groups):
    model = unet3d((8, 8, 8, 3), base_filters=2, depth=1, normalization=normalization)
    names = [type(layer).__name__ for layer in model.layers]
    assert names.count(layer_type) == 6
    for index, name in enumerate(names):
        if name == layer_type:
            assert (names[index - 1], names[index + 1]) == ("Conv3D", "ReLU")
    assert model.count_params() == n_params
    if groups is not None:
        norms = [layer for layer in model.layers if type(layer).__name__ == layer_type]
        assert [layer.groups for layer in norms] == groups


def test_group_normalization_uses_at_most_eight_groups():
    model = unet3d((8, 8, 8, 1), base_filters=12, depth=1, normalization="group")
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.GroupNormalization)]
    # gcd(12, 8) = 4 groups for the 12-filter level, gcd(24, 8) = 8 for the bottleneck
    assert [layer.groups for layer in norms] == [4, 4, 8, 8, 4, 4]


def test_dropout_after_each_convolution_pair(rng):
    model = unet3d((8, 8, 8, 1), base_filters=2, depth=2, dropout=0.5)
    assert _layer_types(model)["SpatialDropout3D"] == 5  # 2 encoder, bottleneck, 2 decoder
    assert "SpatialDropout3D" not in _layer_types(unet3d(base_filters=2, depth=2))
    x = rng.normal(size=(1, 8, 8, 8, 1)).astype(np.float32)
    # Off at inference (deterministic), on in training (different outputs).
    np.testing.assert_array_equal(model(x, training=False), model(x, training=False))
    assert not np.allclose(model(x, training=True), model(x, training=False))


@pytest.fixture
def mixed_float16():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy(previous)


def test_output_is_float32_under_mixed_precision(rng, mixed_float16):
    model = unet3d((8, 8, 8, 3), base_filters=2, depth=1)
    assert model.get_layer("logits").compute_dtype == "float16"  # the policy applies
    assert model.output.dtype == "float32"
    # XLA: TensorFlow has no float16 MaxPool3D kernel for CPUs (GPUs have one).
    model.compile(jit_compile=True)
    probabilities = model.predict(rng.normal(size=(1, 8, 8, 8, 3)), verbose=0)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-6)


# --- UpConv3D and the channels-first layout: the same function as Keras' Conv3DTranspose ---

FIXTURES = Path(__file__).parent / "fixtures"
# Saved by tversky-keras 0.1.0 at commit 81bfa50 (build_model with base_filters=4, depth=2,
# spacing 2 mm; weights drawn from N(0, 0.3) with seed 0), whose decoder used
# keras.layers.Conv3DTranspose: saved models from before UpConv3D must keep loading.
OLD_MODEL = FIXTURES / "unet3d-0.1.0-conv3dtranspose.keras"


def _grads(layer, x, channels_first=False):
    """The layer's output (channels-last) and the gradients of a fixed weighting of it."""
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        if channels_first:  # weigh each voxel as the channels-last output's same voxel
            y = tf.transpose(y, (0, 2, 3, 4, 1))
        # A fixed weighting, so each output voxel's gradient differs.
        value = tf.reduce_sum(y * tf.reshape(tf.sin(tf.range(tf.size(y), dtype=y.dtype)), y.shape))
    return y, tape.gradient(value, [x, *layer.trainable_weights])


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_upconv3d_equals_conv3d_transpose_values_and_gradients(rng, data_format):
    import tensorflow as tf

    from tversky_keras.models import UpConv3D

    last = (2, 3, 4, 5, 6)
    x_last = rng.normal(size=last).astype("float32")
    # The reference runs channels-last whatever the layout tested: TensorFlow's CPU
    # kernels for a channels-first transposed convolution exist only with oneDNN
    # (AVX-512 CPUs). Kernels are laid out alike in both layouts; the channels-first
    # input, output and input gradient are the channels-last ones transposed.
    first = data_format == "channels_first"
    x = tf.constant(np.moveaxis(x_last, -1, 1) if first else x_last)
    reference = keras.layers.Conv3DTranspose(5, 2, strides=2)
    ours = UpConv3D(5, 2, strides=2, data_format=data_format)
    reference.build(last), ours.build(tuple(x.shape))
    weights = [rng.normal(size=w.shape).astype("float32") for w in reference.get_weights()]
    reference.set_weights(weights), ours.set_weights(weights)
    (y_ref, g_ref), (y_ours, g_ours) = _grads(reference, tf.constant(x_last)), _grads(ours, x,
                                                                                      first)
    y_ours, g_ours = y_ours.numpy(), [g.numpy() for g in g_ours]
    assert tuple(ours(x).shape) == ((2, 5, 6, 8, 10) if first else (2, 6, 8, 10, 5))
    if first:  # the input gradient back to channels-last, to compare
        g_ours[0] = np.moveaxis(g_ours[0], 1, -1)
    np.testing.assert_allclose(y_ours, y_ref.numpy(), rtol=1e-5, atol=1e-5)
    for a, b in zip(g_ours, g_ref):  # input, kernel and bias gradients
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-4, atol=1e-4)


def test_upconv3d_places_each_tap_by_hand():
    from tversky_keras.models import UpConv3D

    # One input voxel, one channel, one filter: the output block is the kernel's taps.
    layer = UpConv3D(1, 2, strides=2)
    layer.build((1, 1, 1, 1, 1))
    taps = np.arange(1, 9, dtype="float32").reshape(2, 2, 2, 1, 1)
    layer.set_weights([taps, np.array([0.5], "float32")])
    out = np.asarray(layer(np.full((1, 1, 1, 1, 1), 2.0, "float32")))
    np.testing.assert_array_equal(out[0, ..., 0], 2.0 * taps[..., 0, 0] + 0.5)


@pytest.mark.parametrize("kwargs", [dict(kernel_size=3), dict(strides=1),
                                    dict(output_padding=1)])
def test_upconv3d_refuses_what_it_does_not_compute(kwargs):
    from tversky_keras.models import UpConv3D

    with pytest.raises(ValueError, match="only a 2x2x2 stride-2"):
        UpConv3D(4, **{"kernel_size": 2, "strides": 2, **kwargs})


def _conv3d_transpose_unet(monkeypatch, **kwargs):
    """The U-Net as it was built before UpConv3D (keras.layers.Conv3DTranspose)."""
    import tversky_keras.models as models

    with monkeypatch.context() as patch:
        patch.setattr(models, "UpConv3D", keras.layers.Conv3DTranspose)
        return unet3d(**kwargs)


@pytest.mark.parametrize("normalization", [None, "group"])
def test_unet_outputs_equal_the_conv3d_transpose_unet(rng, monkeypatch, normalization):
    kwargs = dict(base_filters=4, depth=2, normalization=normalization)
    before = _conv3d_transpose_unet(monkeypatch, **kwargs)
    assert "Conv3DTranspose" in _layer_types(before)
    now = unet3d(**kwargs)
    now.set_weights([rng.normal(0, 0.3, w.shape).astype("float32") for w in before.weights])
    before.set_weights(now.get_weights())
    x = rng.normal(size=(2, 8, 12, 16, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(now(x)), np.asarray(before(x)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("normalization", [None, "batch", "instance", "group"])
def test_channels_first_layout_computes_the_same_function(rng, normalization):
    last = unet3d(base_filters=8, depth=2, normalization=normalization)
    first = unet3d(base_filters=8, depth=2, normalization=normalization,
                   data_format="channels_first")
    assert "Permute" in _layer_types(first) and "Permute" not in _layer_types(last)
    assert [w.shape for w in first.weights] == [w.shape for w in last.weights]
    last.set_weights([rng.normal(0, 0.3, w.shape).astype("float32") for w in last.weights])
    first.set_weights(last.get_weights())
    x = rng.normal(size=(2, 8, 12, 16, 3)).astype("float32")
    out_first = np.asarray(first(x, training=True))
    assert out_first.shape == (2, 8, 12, 16, 2)  # channel-last outside, whatever the inside
    np.testing.assert_allclose(out_first, np.asarray(last(x, training=True)), rtol=1e-4,
                               atol=1e-5)


def test_channels_first_model_saves_and_loads(rng, tmp_path):
    import tversky_keras  # noqa: F401  (registers UpConv3D)

    model = unet3d(base_filters=2, depth=1, data_format="channels_first")
    model.set_weights([rng.normal(0, 0.3, w.shape).astype("float32") for w in model.weights])
    model.save(tmp_path / "first.keras")
    loaded = keras.saving.load_model(tmp_path / "first.keras")
    assert {type(layer).__name__ for layer in loaded.layers} >= {"UpConv3D", "Permute"}
    assert loaded.get_layer("decoder0_upsample").data_format == "channels_first"
    x = rng.normal(size=(1, 4, 6, 8, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))


def test_models_saved_with_conv3d_transpose_still_load_and_segment(rng):
    from tversky_keras.inference import predict_volume
    from tversky_keras.saving import load_saved_model
    from tversky_keras.scan_spec import scan_spec

    old = load_saved_model(OLD_MODEL)
    network = old.layers[-1]
    assert _layer_types(network)["Conv3DTranspose"] == 2
    # Saved before the choice of normalisation: it was trained on z-scores, and says so.
    assert scan_spec(old) == {"modalities": ["T1W", "T2W", "FLAIR"], "spacing": 2.0,
                              "multiple_of": 4, "intensity_normalization": "zscore"}
    # Its weights are today's U-Net's, one to one, and compute the same function.
    now = unet3d(base_filters=4, depth=2)
    now.set_weights(network.get_weights())
    x = rng.normal(size=(1, 12, 8, 16, 3)).astype("float32")
    expected = np.asarray(network(x))
    np.testing.assert_allclose(np.asarray(now(x)), expected, rtol=1e-5, atol=1e-6)
    assert 0.05 < expected[..., 1].mean() < 0.95  # not a saturated map: the test can fail
    # And it still segments a scan: the padded window path gives its own whole-volume map.
    image = rng.normal(size=(10, 7, 13, 3)).astype("float32")
    whole = predict_volume(old, image)
    windows = predict_volume(old, image, window=(8, 8, 8), overlap=0.5)
    assert whole.shape == windows.shape == (10, 7, 13, 2)
    assert np.isfinite(windows).all()


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_fine_tuning_starts_from_a_conv3d_transpose_model_in_either_layout(rng, data_format):
    from tversky_keras.saving import load_saved_model
    from tversky_keras.training import TrainConfig, build_model, initialise_from

    config = TrainConfig(base_filters=4, depth=2, spacing=2.0, init=str(OLD_MODEL),
                         data_format=data_format)
    model = build_model(config)
    initialise_from(model, config)
    x = rng.normal(size=(1, 8, 8, 12, 3)).astype("float32")
    # Channels-first convolutions run through XLA on a CPU without oneDNN: float32 sums
    # in another order (measured: at most 4.2e-5 apart, in 1 of 1536 probabilities).
    tolerance = dict(rtol=1e-4, atol=1e-5) if data_format == "channels_last" else dict(
        rtol=1e-3, atol=2e-4)
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(load_saved_model(OLD_MODEL)(x)),
                               **tolerance)
