"""Test helpers: tiny NIfTI subjects for fast end-to-end tests (not the phantom: seconds,
not minutes), one NIfTI writer and the two-class form of lesion probabilities."""

import nibabel as nib
import numpy as np

MODALITY_MEANS = {"T1W": 1.0, "T2W": 0.6, "FLAIR": 0.8}
# TrainConfig settings of a seconds-long training run on tiny subjects.
TINY_TRAINING = dict(base_filters=2, depth=2, patch_size=(8, 8, 8), batch_size=2,
                     steps_per_epoch=3, learning_rate=1e-3, mixed_precision="off",
                     jit_compile="off")


def write_tiny_subjects(root, n=3, shape=(20, 24, 16), seed=0, affine=None):
    """Write ``n`` subjects as ``root/<id>/{T1W,T2W,FLAIR,consensus_gt}.nii.gz``.

    A brain-shaped ellipsoid with a few bright FLAIR/T2 blobs as lesions; the
    affine (2 mm, non-trivial origin) is shared by all files of a subject.
    """
    rng = np.random.default_rng(seed)
    affine = np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine
    affine = affine.copy()
    affine[:3, 3] = [-20.0, -24.0, -16.0]
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    brain = (grid ** 2).sum(0) < 0.85
    folders = []
    for i in range(n):
        mask = np.zeros(shape, np.uint8)
        for _ in range(rng.integers(2, 5)):
            centre = [rng.integers(s // 4, 3 * s // 4) for s in shape]
            radius = rng.uniform(1.2, 2.5)
            d = sum((np.arange(s)[tuple(slice(None) if a == k else None for k in range(3))]
                     - c) ** 2 for a, (s, c) in enumerate(zip(shape, centre)))
            mask[(d <= radius ** 2) & brain] = 1
        folder = root / f"sub{i:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for modality, mean in MODALITY_MEANS.items():
            image = mean + 0.1 * rng.standard_normal(shape)
            if modality != "T1W":
                image += 0.8 * mask
            image = np.where(brain, image, 0).astype(np.float32)
            nib.save(nib.Nifti1Image(image, affine), folder / f"{modality}.nii.gz")
        nib.save(nib.Nifti1Image(mask, affine), folder / "consensus_gt.nii.gz")
        folders.append(folder)
    return folders


def write_nifti(path, data, affine=np.eye(4)):
    """``data`` saved as a NIfTI file with ``affine``; returns ``path``."""
    nib.save(nib.Nifti1Image(np.asarray(data), affine), path)
    return path


def two_class(lesion):
    """Softmax-like ``(..., 2)`` prediction from lesion probabilities."""
    lesion = np.asarray(lesion, dtype="float32")
    return np.stack([1.0 - lesion, lesion], axis=-1)
