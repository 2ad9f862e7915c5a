"""Real MS lesion geometry shipped with the package: 27 MSLUB consensus masks in MNI space.

The masks (``tversky_keras/data/lesion_masks/``, CC-BY, see its README and the
project's NOTICE) are those of 27 of the 30 patients of the MSLUB database
(Lesjak et al., Neuroinformatics 2017) registered to the MNI152 1-mm grid
(182x218x182). Phantom version 3 draws its subjects' lesions from them.
"""

import functools
import importlib.resources

import nibabel as nib
import numpy as np

def _folder():
    return importlib.resources.files("tversky_keras.data.lesion_masks")


@functools.lru_cache(maxsize=1)
def lesion_mask_names():
    """Names of the embedded masks (``patient01``, ...), sorted."""
    names = sorted(entry.name.removesuffix(".nii.gz") for entry in _folder().iterdir()
                   if entry.name.endswith(".nii.gz"))
    if not names:
        raise RuntimeError(f"no lesion masks in {_folder()}: the package is installed without "
                           f"its data (reinstall tversky-keras)")
    return tuple(names)


@functools.lru_cache(maxsize=32)
def read_lesion_mask(name):
    """One embedded mask: ``(bool array, 4x4 voxel-to-MNI-millimetre affine)``.

    The arrays are shared between calls (cached): do not modify them.
    """
    if name not in lesion_mask_names():
        raise ValueError(f"no embedded lesion mask {name!r}; there are "
                         f"{', '.join(lesion_mask_names())}")
    image = nib.load(str(_folder() / f"{name}.nii.gz"))
    mask = np.asarray(image.dataobj) > 0
    mask.setflags(write=False)
    return mask, image.affine.copy()


@functools.lru_cache(maxsize=1)
def lesion_mask_loads():
    """``{name: lesion voxels}`` of every embedded mask (1-mm voxels, so mm^3)."""
    return {name: int(np.count_nonzero(read_lesion_mask(name)[0])) for name in lesion_mask_names()}
