"""A subject's anatomy: the template shrunk to a real brain's size and deformed.

Sharp tissue boundaries are made from the template's blurred maps, its
collapsed sulci re-opened as thin CSF sheets with vessels in them, the
ventricles widened with atrophy, and skull stripping leaves partial voxels at
the brain's edge. Version 3's real lesions are sampled through the same warp
(``lesions._lesion_prior``), so they move with the subject's brain.
"""

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from tversky_keras.data.phantom.calibration import (_BRAIN_SCALE, _DEEP_WHITE_MM, _DEFORMATIONS,
                                                    _MISREGISTRATION_DEGREES,
                                                    _MISREGISTRATION_MM, _PARENCHYMA_THRESHOLD,
                                                    _RIM_MM, _SULCUS_HALF_WIDTH_MM,
                                                    _TENTORIUM_Z_MM, _VENTRICLE_WIDENING_MM,
                                                    _VESSEL_RADIUS_MM, _VESSEL_SPACING_MM,
                                                    _WHITE_THRESHOLD)
from tversky_keras.data.phantom.fields import _smooth_field
from tversky_keras.data.phantom.lesions import _lesion_prior


@dataclass(frozen=True)
class _Anatomy:
    brain: np.ndarray
    tissue: dict                   # CSF (vessels included), GM, WM fractions
    vessels: np.ndarray            # fraction of each voxel inside a vessel
    ventricle_band: np.ndarray     # strength of the ventricles' bright lining, ~1 at the wall
    deep_white: np.ndarray         # strength of the deep white matter's diffuse change
    ventricle_distance_mm: np.ndarray
    brain_depth_mm: np.ndarray
    infratentorial: np.ndarray     # below the tentorium, in template coordinates
    deep_grey: np.ndarray          # 0..1: how much of the grey matter is a deep nucleus
    lesion_prior: tuple | None = None  # version 3: the real lesions (_lesion_prior), moved


def _deformed_anatomy(rng, template, spacing, lesion_source=None,
                      widening_mm=_VENTRICLE_WIDENING_MM):
    """A subject's anatomy: the template shrunk to a real brain's size under a
    smooth displacement, with sharp tissue boundaries, re-opened sulci and
    their vessels, widened ventricles and a skull-stripped edge.

    ``lesion_source`` (version 3: a ``LesionSource``) is sampled through the
    same scaling, turn and displacement (``_lesion_prior``), so the real
    lesions shrink and deform with the subject's brain. ``widening_mm``: the range the
    ventricles' walls move out by (atrophy)."""
    shape = template.gm.shape
    centre = (np.array(shape) - 1) / 2
    scale = rng.uniform(*_BRAIN_SCALE) * rng.uniform(0.97, 1.03, size=3)
    # Where each voxel's tissue comes from in the template: scaled, then
    # turned and shifted as a rigid registration leaves a brain, then displaced.
    turn = _rotation(np.radians(_MISREGISTRATION_DEGREES) * rng.standard_normal(3))
    shift = _MISREGISTRATION_MM / spacing * rng.standard_normal(3)
    offsets = np.indices(shape, dtype=np.float32).reshape(3, -1) - centre[:, None]
    points = ((turn @ offsets) / scale[:, None] + (centre + shift)[:, None]).reshape(3, *shape)
    points = points.astype(np.float32)
    for axis in range(3):
        points[axis] += sum(sd / spacing * _smooth_field(rng, shape, spacing, length)
                            for length, sd in _DEFORMATIONS)

    def warp(volume, **kwargs):
        return ndimage.map_coordinates(volume, points, order=1, **kwargs)

    def warp_distance(volume):
        # Template millimetres are this subject's millimetres times its scale.
        return warp(volume, mode="nearest") * float(np.mean(scale))

    # Skull stripping cuts through voxels: the outermost ones are partly background.
    gm, wm = warp(template.gm), warp(template.wm)
    inside = _crisp(warp(template.stripped), 0.5, spacing)
    brain = inside > 0
    # The template's maps are averages, blurred across each boundary; a brain's
    # tissues meet at sharp boundaries, which only the voxel size blurs.
    threshold = _PARENCHYMA_THRESHOLD + 0.05 * _smooth_field(rng, shape, spacing, 30.0)
    parenchyma = _crisp(gm + wm, threshold, spacing)
    white = _crisp(wm / np.maximum(gm + wm, 1e-6), _WHITE_THRESHOLD, spacing)
    sulci = _sulcal_csf(rng, warp_distance(template.sulcus_distance_mm), spacing)
    # Atrophy widens the ventricles: their walls move out by a subject's margin.
    widening = rng.uniform(*widening_mm)
    ventricle_distance = warp_distance(template.ventricle_distance_mm)
    ventricles = np.clip((widening - ventricle_distance) / spacing, 0.0, 1.0)
    ventricle_distance = np.maximum(ventricle_distance - widening, 0.0)
    keep = inside * (1 - sulci) * (1 - ventricles)
    gm = parenchyma * (1 - white) * keep
    wm = parenchyma * white * keep
    csf = np.clip(inside - gm - wm, 0.0, 1.0)
    vessels = _vessel_curves(rng, shape, spacing) * csf * (ventricle_distance > 0)
    template_z_mm = template.affine[2, 2] * points[2] + template.affine[2, 3]
    return _Anatomy(brain=brain, tissue={"CSF": csf, "GM": gm, "WM": wm}, vessels=vessels,
                    ventricle_band=_ventricle_band(rng, ventricle_distance, spacing, _RIM_MM),
                    deep_white=_ventricle_band(rng, ventricle_distance, spacing, _DEEP_WHITE_MM),
                    ventricle_distance_mm=ventricle_distance,
                    brain_depth_mm=warp_distance(template.brain_depth_mm),
                    infratentorial=template_z_mm < _TENTORIUM_Z_MM,
                    deep_grey=warp(template.deep_grey),
                    lesion_prior=None if lesion_source is None else _lesion_prior(
                        lesion_source, points, spacing))


def _rotation(angles):
    """Rotation matrix turning by ``angles`` (radians) about the three axes in turn."""
    matrix = np.eye(3)
    for axis, angle in enumerate(angles):
        a, b = [k for k in range(3) if k != axis]
        turn = np.eye(3)
        turn[[a, a, b, b], [a, b, a, b]] = np.cos(angle), -np.sin(angle), np.sin(angle), np.cos(angle)
        matrix = turn @ matrix
    return matrix


def _ventricle_band(rng, ventricle_distance_mm, spacing, decay_mm):
    """A change that is strongest at the walls of the lateral ventricles and
    fades over ``decay_mm``: patchy along the wall, and more marked in some
    subjects than in others."""
    patches = np.clip(1 + 0.5 * _smooth_field(rng, ventricle_distance_mm.shape, spacing, 15.0),
                      0.0, None)
    return (rng.uniform(0.5, 1.5) * patches
            * np.exp(-ventricle_distance_mm / decay_mm)).astype(np.float32)


def _crisp(probability, threshold, spacing):
    """The share of each voxel on the high side of a sharp boundary placed at
    ``probability == threshold``, its distance to the boundary taken as the
    difference over the gradient."""
    gradient = np.sqrt(sum(g ** 2 for g in np.gradient(probability, spacing)))
    distance = (probability - threshold) / np.maximum(gradient, 1e-6)
    return np.clip(0.5 + distance / spacing, 0.0, 1.0).astype(np.float32)


def _slab_fraction(distance_mm, half_width_mm, spacing):
    """Share of a voxel (side ``spacing``) at ``distance_mm`` from the middle of
    a slab ``2 * half_width_mm`` thick that lies inside it."""
    distance_mm = np.abs(distance_mm)
    inside = (np.minimum(distance_mm + spacing / 2, half_width_mm)
              - np.maximum(distance_mm - spacing / 2, -half_width_mm))
    return np.clip(inside / spacing, 0.0, 1.0).astype(np.float32)


def _sulcal_csf(rng, sulcus_distance_mm, spacing):
    """CSF fraction of the re-opened sulci: sheets of a subject's width, wider
    in places (atrophy is patchy)."""
    half_width = rng.uniform(*_SULCUS_HALF_WIDTH_MM) * np.clip(
        1 + 0.35 * _smooth_field(rng, sulcus_distance_mm.shape, spacing, 25.0), 0.3, None)
    return _slab_fraction(sulcus_distance_mm, half_width, spacing)


def _vessel_curves(rng, shape, spacing):
    """Fraction of each voxel inside thin random tubes: where the zero sets
    (sheets) of two random fields cross, each sheet's distance taken as the
    field over its gradient."""
    tubes = np.ones(shape, np.float32)
    for _ in range(2):
        field = _smooth_field(rng, shape, spacing, _VESSEL_SPACING_MM)
        gradient = np.sqrt(sum(g ** 2 for g in np.gradient(field, spacing)))
        tubes *= _slab_fraction(field / np.maximum(gradient, 1e-6), _VESSEL_RADIUS_MM, spacing)
    return tubes
