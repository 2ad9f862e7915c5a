"""The same 3D U-Net as ``tversky_keras.models.unet3d``, in PyTorch (the peer).

Layer for layer: two padded 3x3x3 convolutions with ReLU per level, 2x2x2 max
pooling, filters doubling per level, 2x2x2 stride-2 transposed convolutions,
concatenation ``[skip, upsampled]``, a 1x1x1 head with softmax over channels.
Channel-first ``(B, C, X, Y, Z)``, as PyTorch and MONAI expect.
"""

import numpy as np
import torch
from torch import nn


def _conv_block(cin, filters):
    return nn.Sequential(
        nn.Conv3d(cin, filters, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv3d(filters, filters, 3, padding=1), nn.ReLU(inplace=True),
    )


class TorchUNet3d(nn.Module):
    """PyTorch twin of ``unet3d(normalization=None, dropout=0.0)``."""

    def __init__(self, in_channels=3, n_classes=2, base_filters=16, depth=4):
        super().__init__()
        filters = [base_filters * 2**level for level in range(depth + 1)]
        self.encoders = nn.ModuleList()
        cin = in_channels
        for level in range(depth):
            self.encoders.append(_conv_block(cin, filters[level]))
            cin = filters[level]
        self.pool = nn.MaxPool3d(2, 2)
        self.bottleneck = _conv_block(cin, filters[depth])
        self.upsamples = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(depth)):
            self.upsamples.append(nn.ConvTranspose3d(filters[level + 1], filters[level], 2, 2))
            self.decoders.append(_conv_block(2 * filters[level], filters[level]))
        self.head = nn.Conv3d(filters[0], n_classes, 1)

    def forward(self, x):
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for upsample, decoder, skip in zip(self.upsamples, self.decoders, reversed(skips)):
            x = decoder(torch.cat([skip, upsample(x)], dim=1))
        return torch.softmax(self.head(x), dim=1)


def twin_of(keras_model):
    """A ``TorchUNet3d`` shaped like a Keras ``unet3d``, parameter counts asserted equal."""
    convs = _keras_layers(keras_model, "Conv3D")
    if any("Normalization" in type(layer).__name__ for layer in keras_model.layers):
        raise ValueError("the PyTorch twin has no normalization layers; build unet3d without")
    first = convs[0]
    twin = TorchUNet3d(in_channels=first.kernel.shape[3], n_classes=convs[-1].filters,
                       base_filters=first.filters,
                       depth=len(_keras_layers(keras_model, "MaxPooling3D")))
    ours = keras_model.count_params()
    theirs = sum(p.numel() for p in twin.parameters())
    assert ours == theirs, f"parameter counts differ: Keras {ours}, PyTorch {theirs}"
    return twin


def _keras_layers(keras_model, kind):
    """Layers of one Keras class (``UpConv3D`` counts as the ``Conv3DTranspose`` it is)."""
    names = {"Conv3DTranspose": ("Conv3DTranspose", "UpConv3D")}.get(kind, (kind,))
    return [layer for layer in keras_model.layers if type(layer).__name__ in names]


def copy_keras_weights(keras_model, twin):
    """Load a Keras ``unet3d``'s weights into its twin (so both compute the same function).

    Keras kernels are ``(kx, ky, kz, in, out)`` for convolutions and
    ``(kx, ky, kz, out, in)`` for transposed ones; PyTorch's are
    ``(out, in, k...)`` and ``(in, out, k...)``: the same axis permutation.
    """
    torch_convs = [m for m in twin.modules() if type(m) is nn.Conv3d]
    torch_ups = [m for m in twin.modules() if type(m) is nn.ConvTranspose3d]
    pairs = list(zip(_keras_layers(keras_model, "Conv3D"), torch_convs))
    pairs += list(zip(_keras_layers(keras_model, "Conv3DTranspose"), torch_ups))
    with torch.no_grad():
        for layer, module in pairs:
            kernel, bias = (np.asarray(w) for w in layer.get_weights())
            module.weight.copy_(torch.from_numpy(kernel.transpose(4, 3, 0, 1, 2).copy()))
            module.bias.copy_(torch.from_numpy(bias))
    return twin
