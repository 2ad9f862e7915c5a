"""Smooth random fields, drawn on by the anatomy, the lesions and the imaging."""

import numpy as np
from scipy import ndimage


def _smooth_field(rng, shape, spacing, length_mm):
    """A unit-variance random field that varies over about ``length_mm``."""
    coarse_shape = np.maximum(np.ceil(np.array(shape) * spacing / length_mm).astype(int) + 1, 2)
    coarse = rng.standard_normal(coarse_shape)
    field = ndimage.zoom(coarse, np.array(shape) / coarse_shape, order=1, mode="nearest",
                         grid_mode=True)
    return ((field - field.mean()) / field.std()).astype(np.float32)
