"""The paper's 3D U-Net, and the spatial-size rule it imposes on its inputs."""

import math
import numbers

import keras
from keras import layers, ops

# The longest side of a patch or sliding window the U-Net is fed in one piece; past it a
# batch no longer fits any machine's memory (training's patches, predict's windows).
MAX_INPUT_SIDE = 512

NORMALIZATIONS = (None, "batch", "instance", "group")
DATA_FORMATS = ("channels_last", "channels_first")


@keras.saving.register_keras_serializable(package="tversky_keras")
class UpConv3D(layers.Conv3DTranspose):
    """The U-Net's 2x2x2 stride-2 transposed convolution, as a matrix product and a depth-to-space.

    With a 2x2x2 kernel and stride 2 the windows of a transposed convolution do
    not overlap: output voxel ``(2i + a, 2j + b, 2k + c)`` is input voxel
    ``(i, j, k)`` times the kernel's tap ``(a, b, c)``. So the layer is exactly
    a 1x1x1 convolution to 8x the filters (one matrix product over the
    channels) followed by a 3-D depth-to-space, which avoids the transposed
    convolution's gradient kernels (slow in XLA: jax-ml/jax#31662,
    openxla/xla#34273) and the layout copies Keras' torch backend makes around
    ``conv_transpose``.

    It is a ``Conv3DTranspose``: same constructor, same ``(2, 2, 2, filters,
    in_channels)`` kernel and bias, same initialisation and config, so weights
    move one-to-one between the two and its outputs equal
    ``Conv3DTranspose``'s up to float rounding. Only ``kernel_size=2`` with
    ``strides=2`` (and no dilation or output padding) is accepted.
    """

    def __init__(self, filters, kernel_size=2, strides=2, **kwargs):
        super().__init__(filters, kernel_size, strides=strides, **kwargs)
        if (self.kernel_size != (2, 2, 2) or self.strides != (2, 2, 2)
                or self.dilation_rate != (1, 1, 1) or self.output_padding is not None):
            raise ValueError(
                f"UpConv3D computes only a 2x2x2 stride-2 transposed convolution without "
                f"dilation or output padding; got kernel_size={self.kernel_size}, "
                f"strides={self.strides}, dilation_rate={self.dilation_rate}, "
                f"output_padding={self.output_padding} (use keras.layers.Conv3DTranspose)")

    def call(self, inputs):
        filters, channels = self.kernel.shape[-2], self.kernel.shape[-1]
        first = self.data_format == "channels_first"
        shape = ops.shape(inputs)
        x, y, z = shape[2:] if first else shape[1:4]
        # Kernel (a, b, c, filter, channel) as a (channel, a*b*c*filter) matrix.
        kernel = ops.reshape(ops.transpose(self.kernel, (4, 0, 1, 2, 3)), (channels, 8 * filters))
        if first:
            # (B, C, X, Y, Z) -> (B, 8F, XYZ) -> (B, a, b, c, F, X, Y, Z) -> (B, F, X, a, Y, b, Z, c)
            taps = ops.matmul(ops.transpose(kernel), ops.reshape(inputs, (shape[0], channels, -1)))
            taps = ops.reshape(taps, (shape[0], 2, 2, 2, filters, x, y, z))
            out = ops.transpose(taps, (0, 4, 5, 1, 6, 2, 7, 3))
            out = ops.reshape(out, (shape[0], filters, 2 * x, 2 * y, 2 * z))
        else:
            # (B*X*Y*Z, C) @ (C, 8F) -> (B, X, Y, Z, a, b, c, F) -> (B, X, a, Y, b, Z, c, F)
            taps = ops.matmul(ops.reshape(inputs, (-1, channels)), kernel)
            taps = ops.reshape(taps, (shape[0], x, y, z, 2, 2, 2, filters))
            out = ops.transpose(taps, (0, 1, 4, 2, 5, 3, 6, 7))
            out = ops.reshape(out, (shape[0], 2 * x, 2 * y, 2 * z, filters))
        if self.use_bias:
            bias_shape = (1, filters, 1, 1, 1) if first else (1, 1, 1, 1, filters)
            out = ops.add(out, ops.reshape(self.bias, bias_shape))
        if self.activation is not None:
            out = self.activation(out)
        return out


def unet3d(
    input_shape: tuple = (None, None, None, 3),
    n_classes: int = 2,
    base_filters: int = 16,
    depth: int = 4,
    normalization: str | None = None,
    dropout: float = 0.0,
    data_format: str = "channels_last",
    name: str = "unet3d",
) -> "keras.Model":
    """3D U-Net for voxel-wise segmentation (Salehi et al. 2017, after Auto-Net).

    Contracting path: per level two padded 3x3x3 convolutions with ReLU, then
    2x2x2 max pooling with stride 2; the filters double after each pooling
    (``base_filters * 2**level``). After ``depth`` poolings a bottleneck level
    of two convolutions. Expanding path: per level a 2x2x2 transposed
    convolution with stride 2 that halves the filters, concatenation with the
    contracting features of the same level, two 3x3x3 convolutions with ReLU.
    Last layer: 1x1x1 convolution to ``n_classes`` channels with softmax
    (sigmoid when ``n_classes == 1``), computed in float32 so that a loss sees
    float32 probabilities under a ``mixed_float16`` policy.

    The paper gives no levels or filter counts (they are in its unavailable
    supplement) and mentions no normalization or dropout, so both are off by
    default and the sizes are options.

    Args:
        input_shape: channel-last ``(x, y, z, channels)``; spatial sizes may
            be ``None`` (any size that is a multiple of ``2**depth``).
        n_classes: output channels; 2 for background/lesion as in the paper.
        base_filters: filters of the first level.
        depth: number of poolings (the bottleneck is level ``depth``).
        normalization: ``None``, ``"batch"``, ``"instance"`` or ``"group"``,
            placed between each convolution and its ReLU. Group normalization
            uses ``gcd(filters, 8)`` groups so every level's filters divide.
        dropout: rate of ``SpatialDropout3D`` after each pair of
            convolutions, in [0, 1); 0 adds no dropout layer.
        data_format: the layout of the layers inside the network:
            ``"channels_last"`` (the default), or ``"channels_first"``,
            which Keras' torch backend runs without permuting every
            convolution's input and output (cuDNN's native layout). The
            model's input and output stay channel-last either way (one
            transpose after the input and one before the softmax), so losses,
            metrics, pipelines and ``predict`` do not change, and the same
            weights give the same outputs in both layouts. TensorFlow on a CPU
            has no channels-first 3D convolution and compiles each one with
            XLA: keep the default there.
        name: name of the model.

    Returns:
        An uncompiled functional ``keras.Model`` mapping
        ``(batch, x, y, z, channels)`` to ``(batch, x, y, z, n_classes)``
        probabilities.

    Raises:
        ValueError: an option is out of range, or a known spatial size is not
            a multiple of ``2**depth``.

    Reference:
        Salehi, Erdogmus, Gholipour. Tversky loss function for image
        segmentation using 3D fully convolutional deep networks. MLMI 2017.
    """
    _check_positive_int("depth", depth)
    _check_positive_int("base_filters", base_filters)
    _check_positive_int("n_classes", n_classes)
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a rate in [0, 1), got {dropout!r}")
    if data_format not in DATA_FORMATS:
        raise ValueError(f"data_format must be one of {DATA_FORMATS}, got {data_format!r}")
    _check_input_shape(input_shape)
    check_spatial_shape(input_shape[:3], depth)

    first = data_format == "channels_first"
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = layers.Permute((4, 1, 2, 3), name="to_channels_first")(inputs) if first else inputs
    skips = []
    for level in range(depth):
        x = _conv_block(x, base_filters * 2**level, normalization, dropout, data_format,
                        f"encoder{level}")
        skips.append(x)
        x = layers.MaxPooling3D(pool_size=2, strides=2, data_format=data_format,
                                name=f"encoder{level}_pool")(x)
    x = _conv_block(x, base_filters * 2**depth, normalization, dropout, data_format, "bottleneck")
    for level in reversed(range(depth)):
        filters = base_filters * 2**level
        x = UpConv3D(filters, 2, strides=2, data_format=data_format,
                     name=f"decoder{level}_upsample")(x)
        x = layers.Concatenate(axis=1 if first else -1, name=f"decoder{level}_concat")(
            [skips[level], x])
        x = _conv_block(x, filters, normalization, dropout, data_format, f"decoder{level}")
    logits = layers.Conv3D(n_classes, 1, data_format=data_format, name="logits")(x)
    if first:
        logits = layers.Permute((2, 3, 4, 1), name="to_channels_last")(logits)
    # float32 even under mixed precision: softmax and the loss's sums need the range.
    outputs = layers.Activation(
        "softmax" if n_classes > 1 else "sigmoid", dtype="float32", name="probabilities"
    )(logits)
    return keras.Model(inputs, outputs, name=name)


def model_depth(model):
    """Number of poolings of a U-Net built by :func:`unet3d` (also after loading)."""
    depth = sum(isinstance(layer, layers.MaxPooling3D) for layer in model.layers)
    if depth == 0:
        raise ValueError(f"model {model.name!r} has no MaxPooling3D layer; not a unet3d model")
    return depth


def required_multiple(model_or_depth):
    """The number every spatial size must be a multiple of: ``2**depth``.

    Args:
        model_or_depth: a model built by :func:`unet3d`, or its ``depth``.
    """
    if isinstance(model_or_depth, keras.Model):
        return 2 ** model_depth(model_or_depth)
    _check_positive_int("depth", model_or_depth)
    return 2 ** int(model_or_depth)


def check_spatial_shape(shape, depth):
    """Raise a ``ValueError`` unless every known spatial size fits the U-Net.

    Each pooling halves the size and each transposed convolution doubles it,
    so the skip connections only line up when every size is a multiple of
    ``2**depth``.

    Args:
        shape: the spatial sizes ``(x, y, z)`` (no batch or channel axis);
            ``None`` entries (unknown sizes) are skipped.
        depth: number of poolings of the U-Net.

    Raises:
        ValueError: naming the first axis that does not fit, its size, the
            required multiple and the nearest sizes that would fit.
    """
    multiple = required_multiple(depth)
    for axis, size in enumerate(shape):
        if size is None or size % multiple == 0:
            continue
        lower, upper = size - size % multiple, size - size % multiple + multiple
        fits = f"{lower} or {upper}" if lower else f"{upper}"
        raise ValueError(
            f"spatial axis {axis} has size {size}, which is not a multiple of {multiple} "
            f"(2**depth with depth={depth}); pad or crop it to {fits}"
        )


def _conv_block(x, filters, normalization, dropout, data_format, name):
    for index in (1, 2):
        x = layers.Conv3D(
            filters,
            3,
            padding="same",
            data_format=data_format,
            # A normalization's own offset makes the convolution's bias redundant.
            use_bias=normalization is None,
            # He initialisation keeps the activations' scale through ReLU layers.
            kernel_initializer="he_normal",
            name=f"{name}_conv{index}",
        )(x)
        if normalization is not None:
            x = _normalization_layer(normalization, filters, data_format,
                                     f"{name}_norm{index}")(x)
        x = layers.ReLU(name=f"{name}_relu{index}")(x)
    if dropout > 0:
        x = layers.SpatialDropout3D(dropout, data_format=data_format, name=f"{name}_dropout")(x)
    return x


def _normalization_layer(normalization, filters, data_format, name):
    axis = 1 if data_format == "channels_first" else -1
    if normalization == "batch":
        return layers.BatchNormalization(axis=axis, name=name)
    if normalization == "instance":
        return layers.GroupNormalization(groups=-1, axis=axis, name=name)  # a group per channel
    return layers.GroupNormalization(groups=math.gcd(filters, 8), axis=axis, name=name)


def _check_input_shape(input_shape):
    if not (isinstance(input_shape, (tuple, list)) and len(input_shape) == 4):
        raise ValueError(
            "input_shape must be channel-last (x, y, z, channels) without the batch "
            f"axis, got {input_shape!r}"
        )
    *spatial, channels = input_shape
    if not (_is_int(channels) and channels >= 1):
        raise ValueError(
            f"input_shape must end with a known number of channels >= 1, got {input_shape!r}"
        )
    if not all(size is None or (_is_int(size) and size >= 1) for size in spatial):
        raise ValueError(
            f"input_shape spatial sizes must be positive integers or None, got {input_shape!r}"
        )


def _check_positive_int(option, value):
    if not (_is_int(value) and value >= 1):
        raise ValueError(f"{option} must be an integer >= 1, got {value!r}")


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
