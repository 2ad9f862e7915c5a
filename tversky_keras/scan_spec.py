"""What a trained model expects of a scan, stored inside the saved model.

A model trained on (T1W, T2W, FLAIR) at 2 mm must be fed the same modalities
in the same order on the same grid. That knowledge has to travel with the
``.keras`` file, so it lives in the configuration of an identity layer at the
model's input: ``keras.saving.load_model`` restores it with the model, and
``scan_spec(model)`` reads it back.
"""

import keras

SPEC_LAYER_NAME = "scan_spec"


def _spacing(spacing):
    """``None``, a float (isotropic), or a list of three floats."""
    if spacing is None:
        return None
    values = [float(v) for v in (spacing if isinstance(spacing, (list, tuple)) else [spacing])]
    if len(values) not in (1, 3) or min(values) <= 0:
        raise ValueError(f"ScanSpec: spacing must be one or three positive sizes, got {spacing}")
    return values[0] if len(set(values)) == 1 else values


@keras.saving.register_keras_serializable(package="tversky_keras")
class ScanSpec(keras.layers.Layer):
    """Identity layer whose configuration describes the expected input scan.

    Args:
        modalities: the input channels in order, e.g. ``["T1W", "T2W", "FLAIR"]``.
        spacing: voxel size in mm the model was trained at (one number, or
            three for anisotropic voxels), or ``None`` for the scans' own grid.
        multiple_of: every spatial size fed to the model must be a multiple of it
            (``2 ** depth`` for the U-Net).
        intensity_normalization: how each modality was normalised in training
            (``tversky_keras.data.normalize.INTENSITY_NORMALIZATIONS``); models
            saved before there was a choice load with ``"zscore"``, which they used.
    """

    def __init__(self, modalities, spacing=None, multiple_of=1, intensity_normalization="zscore",
                 **kwargs):
        from tversky_keras.data.normalize import normalize_method

        kwargs.setdefault("name", SPEC_LAYER_NAME)
        super().__init__(**kwargs)
        self.modalities = list(modalities)
        self.spacing = _spacing(spacing)
        self.multiple_of = int(multiple_of)
        self.intensity_normalization = normalize_method(intensity_normalization)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is not None and channels != len(self.modalities):
            raise ValueError(
                f"ScanSpec: the input has {channels} channels but the spec names "
                f"{len(self.modalities)} modalities {self.modalities}"
            )

    def call(self, inputs):
        # A known size that cannot fit would otherwise fail deep inside the
        # network (the U-Net's skip connections do not line up): name it here.
        for axis, size in enumerate(tuple(inputs.shape)[1:4]):
            if size is not None and size % self.multiple_of:
                raise ValueError(
                    f"spatial axis {axis} of the input has size {size}, not a multiple of "
                    f"{self.multiple_of} as this model needs: pad or crop it (predict_volume, "
                    f"segment_subject and tversky-keras predict pad for you)")
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "modalities": self.modalities,
            "spacing": self.spacing,
            "multiple_of": self.multiple_of,
            "intensity_normalization": self.intensity_normalization,
        }


def with_scan_spec(network, modalities, spacing=None, multiple_of=1,
                   intensity_normalization="zscore"):
    """Wrap ``network`` so its saved configuration records the scan it expects."""
    inputs = keras.Input(shape=network.input_shape[1:], name="scan")
    spec = ScanSpec(modalities, spacing=spacing, multiple_of=multiple_of,
                    intensity_normalization=intensity_normalization)
    outputs = network(spec(inputs))
    return keras.Model(inputs, outputs, name=network.name)


def scan_spec(model):
    """The scan description of a model as a dict, or ``None`` if it has none."""
    try:
        layer = model.get_layer(SPEC_LAYER_NAME)
    except ValueError:
        return None
    return {"modalities": layer.modalities, "spacing": layer.spacing,
            "multiple_of": layer.multiple_of,
            "intensity_normalization": layer.intensity_normalization}


def check_model_modalities(model, modalities, source="the scan"):
    """Raise a clear error when ``modalities`` are not what ``model`` was trained on."""
    spec = scan_spec(model)
    expected = spec["modalities"] if spec else None
    channels = model.input_shape[-1]
    if expected is not None and list(modalities) != expected:
        raise ValueError(
            f"the model expects modalities {', '.join(expected)} (in that order) but "
            f"{source} provides {', '.join(modalities) or 'none'}"
        )
    if channels is not None and channels != len(modalities):
        raise ValueError(
            f"the model expects {channels} input channels but {source} provides "
            f"{len(modalities)} ({', '.join(modalities)})"
        )
