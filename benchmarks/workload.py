"""What the benchmarks run: the reproduction's profiles, models compiled as in training, data."""

import contextlib
import math
from pathlib import Path

import nibabel as nib
import numpy as np

from reproduce.experiment import FOLDS, PROFILES, ROWS, two_fold_split
from tversky_keras.data import MODALITIES, discover_subjects, preprocess
from tversky_keras.data.subjects import MASK_NAME, Volume
from tversky_keras.training import build_model, make_loss, make_metrics, paper_optimizer

MNI_1MM = (182, 218, 182)  # a whole brain at 1 mm (MNI152)
PAPER_INPUT = (128, 224, 256)  # the paper's registered volumes
ALPHA, BETA = 0.3, 0.7  # the paper's best row; any values time the same
CHANNELS = len(MODALITIES)
N_SUBJECTS = 15  # the paper's data set


def profile_config(name, **overrides):
    """The ``TrainConfig`` a reproduction profile trains with (``Profile.train_config``)."""
    return PROFILES[name].train_config(N_SUBJECTS // 2, alpha=ALPHA, beta=BETA, **overrides)


def compiled_model(config, metrics=True, jit_compile=False, steps_per_execution=1):
    """``build_model`` compiled as ``tversky_keras.training`` compiles it."""
    model = build_model(config)
    model.compile(optimizer=paper_optimizer(config), loss=make_loss(config),
                  metrics=make_metrics() if metrics else None, jit_compile=jit_compile,
                  steps_per_execution=steps_per_execution)
    return model


@contextlib.contextmanager
def conv3d_transpose_decoder(active=True):
    """Within it (when ``active``), ``unet3d`` builds 0.1.0's decoder: ``keras.layers.Conv3DTranspose``.

    The same function and weights as ``UpConv3D``; for timing what the rewrite is worth.
    """
    import keras

    from tversky_keras import models

    if not active:
        yield
        return
    saved = models.UpConv3D
    models.UpConv3D = keras.layers.Conv3DTranspose
    try:
        yield
    finally:
        models.UpConv3D = saved


def network(model):
    """The U-Net inside ``build_model``'s ScanSpec wrapper."""
    return model.get_layer("unet3d")


def quick_volume_shape():
    """Grid of a quick-profile phantom: MNI at its spacing, padded to ``2**depth``."""
    p = PROFILES["quick"]
    multiple = 2**p.depth
    return tuple(math.ceil(math.ceil(s / p.phantom_spacing) / multiple) * multiple
                 for s in MNI_1MM)


def random_image(shape, channels=CHANNELS, rng=0):
    """Standard normal float32 noise ``(*shape, channels)``; ``rng`` a Generator or a seed."""
    rng = np.random.default_rng(rng)
    return rng.normal(size=(*shape, channels)).astype(np.float32)


def random_lesions(shape, fraction, rng=0):
    """A boolean mask with each voxel a lesion with probability ``fraction``."""
    return np.random.default_rng(rng).random(shape) < fraction


def synthetic_batch(batch, spatial, channels=CHANNELS, n_classes=2, lesion_fraction=0.01,
                    seed=0):
    """Normal image noise and a one-hot label with ``lesion_fraction`` lesion voxels.

    Returns:
        ``(image, label)``: float32 ``(B, X, Y, Z, C)`` and one-hot float32
        ``(B, X, Y, Z, n_classes)``, channel-last.
    """
    rng = np.random.default_rng(seed)
    image = random_image((batch, *spatial), channels, rng)
    lesion = random_lesions((batch, *spatial), lesion_fraction, rng).astype(np.int64)
    return image, np.eye(n_classes, dtype=np.float32)[lesion]


def synthetic_volumes(count, shape, lesion_fraction=0.005, seed=0):
    """``Volume`` objects of noise with an ellipsoid brain and scattered lesion voxels."""
    rng = np.random.default_rng(seed)
    axes = np.meshgrid(*(np.linspace(-1, 1, s) for s in shape), indexing="ij")
    brain = sum(a**2 for a in axes) < 0.8
    volumes = []
    for index in range(count):
        image = random_image(shape, CHANNELS, rng) * brain[..., None]
        label = (brain & random_lesions(shape, lesion_fraction, rng)).astype(np.uint8)
        volumes.append(Volume(id=f"synthetic{index}", image=image, label=label, brain=brain,
                              geometry=None, modalities=MODALITIES))
    return volumes


def cached_volumes(volumes, folder):
    """``volumes`` written as NIfTI subjects under ``folder`` and preprocessed into its cache.

    Training reads its examples from the preprocessed cache (memory maps), so
    the benchmarks of the pipeline read from it too. The files stay in
    ``folder``; the returned volumes read them on every access.

    Returns:
        list of ``CachedVolume``, in ``volumes``' order of ids.
    """
    scans = Path(folder) / "scans"
    for volume in volumes:
        subject = scans / volume.id
        subject.mkdir(parents=True, exist_ok=True)
        for channel, modality in enumerate(volume.modalities):
            nib.save(nib.Nifti1Image(volume.image[..., channel], np.eye(4)),
                     subject / f"{modality}.nii")
        nib.save(nib.Nifti1Image(volume.label, np.eye(4)), subject / f"{MASK_NAME}.nii")
    return preprocess(discover_subjects(scans), Path(folder) / "preprocessed")


def paper_grid_steps():
    """Training steps of the paper profile's whole grid: rows x folds x epochs x steps/epoch."""
    paper = PROFILES["paper"]
    train_sizes = [len(train) for train, _ in two_fold_split([str(i) for i in range(N_SUBJECTS)])]
    steps_per_epoch = [math.ceil(n / paper.batch_size) for n in train_sizes]
    return len(ROWS) * paper.epochs * sum(steps_per_epoch[fold] for fold in FOLDS)
