"""Convolution FLOPs of a Keras 3D U-Net, and the CPU's fp32 peak to compare with."""

import math
from pathlib import Path

import keras
from keras import layers

# Two 256-bit FMA pipes x 8 fp32 lanes x 2 FLOPs (multiply + add) per cycle and
# core: the AVX2 figure the suite reports against. A core that issues two
# 512-bit FMAs per cycle (e.g. AMD Zen 5 with AVX-512) peaks at twice this.
FP32_FLOPS_PER_CYCLE = 32


def conv_forward_flops(model, input_shape):
    """FLOPs of one forward pass through the model's 3D (transposed) convolutions.

    A convolution costs ``2 * k^3 * Cin * Cout`` per output voxel (a multiply
    and an add per weight). A transposed convolution with ``stride == kernel``
    touches each output voxel with one tap per input channel, i.e.
    ``2 * k^3 * Cin * Cout`` per *input* voxel. Bias adds, activations,
    pooling and the softmax are left out (well under 1% of the total).

    Args:
        model: a functional Keras model, possibly nesting others (e.g. the
            ``ScanSpec`` wrapper of ``build_model``).
        input_shape: ``(batch, x, y, z, channels)`` of the input.

    Returns:
        The FLOPs as an int, for the whole batch.
    """
    total = 0
    for network in _functional_models(model):
        convs = [layer for layer in network.layers
                 if isinstance(layer, (layers.Conv3D, layers.Conv3DTranspose))]
        if not convs:
            continue
        probe = keras.Model(network.inputs, [layer.output for layer in convs])
        outputs = probe.compute_output_spec(keras.KerasTensor(tuple(input_shape)))
        for layer, output in zip(convs, outputs):
            total += _layer_flops(layer, output.shape)
    return total


def training_flops(model, input_shape):
    """FLOPs of a training step: forward, plus the input and weight gradients (~2x forward)."""
    return 3 * conv_forward_flops(model, input_shape)


def _functional_models(model):
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    return [model] if not nested else nested


def _layer_flops(layer, output_shape):
    in_channels, out_channels = layer.kernel.shape[-2], layer.kernel.shape[-1]
    spatial = output_shape[2:] if layer.data_format == "channels_first" else output_shape[1:-1]
    voxels = output_shape[0] * math.prod(spatial)
    if isinstance(layer, layers.Conv3DTranspose):
        in_channels, out_channels = out_channels, in_channels  # kernel is (k, k, k, out, in)
        voxels //= math.prod(layer.strides)  # costs count per input voxel
    return 2 * math.prod(layer.kernel_size) * in_channels * out_channels * voxels


def cpu_clock_mhz(cpuinfo=Path("/proc/cpuinfo")):
    """The clock in MHz and where it came from: ``cpu MHz``, else ``BogoMIPS / 2``."""
    text = Path(cpuinfo).read_text()
    for key, scale, source in (("cpu MHz", 1.0, "/proc/cpuinfo cpu MHz"),
                               ("bogomips", 0.5, "/proc/cpuinfo BogoMIPS / 2")):
        for line in text.splitlines():
            name, _, value = line.partition(":")
            if name.strip().lower() == key.lower() and value.strip():
                return float(value) * scale, source
    raise RuntimeError(f"{cpuinfo} gives neither 'cpu MHz' nor 'bogomips'")


def fp32_peak_flops(cores, clock_mhz, flops_per_cycle=FP32_FLOPS_PER_CYCLE):
    """Peak fp32 FLOP/s: cores x clock x FLOPs per cycle."""
    return cores * clock_mhz * 1e6 * flops_per_cycle
