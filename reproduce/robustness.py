"""The invariance suite: real scans changed the way another scanner or centre changes them.

    python -m reproduce.robustness --data ../shared/data/mslub-mni --model MODEL.keras --out DIR
    python -m reproduce.robustness --data PATH --model A.keras --model B.keras --transforms a,e,h \\
        --mirror none --seed 1 --out DIR

Every subject of PATH is changed by each transform in its own voxel grid (issue 31, item 2),
written as a subject folder of its own, segmented by the model (several models: their
probabilities averaged) and scored inside its brain at probability 0.5, next to the unchanged
scan, which goes through the same writing, segmenting and scoring. A network that learnt
lesions rather than one scanner's look keeps its DSC under every transform.

The transforms (``--transforms``: items ``a``-``h`` or the names; all by default):

- (a) ``scale0.25``, ``scale4``: raw scanner units, every modality times 0.25 or 4 plus an offset;
- (b) ``gamma0.6``, ``gamma1.6``: a non-linear intensity response, every modality;
- (c) ``bias``: a smooth receive-coil field of exactly ±20 % inside the brain, one per modality;
- (d) ``slices5mm``: FLAIR and T2W acquired as 5-mm axial slices, then interpolated back;
- (e) ``rim``: a looser skull-strip, a 4-6 mm rim of fat-, skin- and bone-like tissue;
- (f) ``zoom0.88``, ``zoom1.12``: the brain 12 % smaller or larger in the grid;
- (g) ``t1-contrast``: T1W grey-white contrast halved;
- (h) ``lesion-load``: the confluent lesions of the package's high-load masks (patients 12,
  22, 06) pasted into the white matter at the patient's own lesion contrast; scored also on
  the added lesions alone, with the change of the normalisation statistics.

The brain a cell is scored in is the subject's brain before the transform (its brain mask,
else its non-zero voxels), moved with it by (f). The rim of (e) lies outside it: the
written scan's non-zero region, which is the brain ``load_subject`` and so the network find,
grows by the rim, and what the network calls there counts as nothing. A subject read with a
brain mask is written skull-stripped by it (zero outside), and without the mask.

Layout (a rerun skips what is finished; other settings for the same folder are refused)::

    DIR/settings.json                                  data, models, mirroring, seed
    DIR/<subject>/<transform>/{T1W,T2W,FLAIR,consensus_gt}.nii.gz   the changed scan
    DIR/<subject>/<transform>/added_lesions.nii.gz     lesion-load: the pasted lesions
    DIR/<subject>/<transform>/probability.nii.gz, mask.nii.gz, segmentation.json
    DIR/<subject>/<transform>/metrics.json             written last
    DIR/robustness.{json,md}                           every finished cell; unchanged first

``<transform>`` is ``unchanged`` for the scan as read. ``render_markdown`` makes
``robustness.md`` from ``robustness.json``, so a docs page can be generated from the
committed JSON.
"""

import argparse
import dataclasses
import itertools
import json
import math
import os
import sys
import time
import zlib
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation  # noqa: E402
from scipy import ndimage  # noqa: E402

from reproduce import report  # noqa: E402
from reproduce.scoring import THRESHOLD, scan_reference  # noqa: E402
from tversky_keras.arguments import (finite, mirror_or_none, non_negative,  # noqa: E402
                                     output_folder)
from tversky_keras.arguments import seed as seed_option  # noqa: E402
from tversky_keras.atomic import strict, write_json, write_text  # noqa: E402
from tversky_keras.baseline import threshold_union  # noqa: E402
from tversky_keras.data import (MODALITIES, discover_subjects, from_grid, load_subject,  # noqa: E402
                                save_nifti_like, subject_from_folder)
from tversky_keras.data.grid import Geometry, canonical_affine  # noqa: E402
from tversky_keras.data.lesion_atlas import lesion_mask_names, read_lesion_mask  # noqa: E402
from tversky_keras.data.names import path_name  # noqa: E402
from tversky_keras.data.normalize import (wm_peak_in_brain, wm_peak_statistics,  # noqa: E402
                                          zscore_in_brain)
from tversky_keras.evaluation import lesion_metrics  # noqa: E402
from tversky_keras.inference import segment_subject, write_segmentation  # noqa: E402
from tversky_keras.saving import load_saved_model  # noqa: E402

UNCHANGED = "unchanged"
METRICS = "metrics.json"
ADDED_LESIONS = "added_lesions.nii.gz"
# What the output folder holds beside its subjects' folders.
OWN_FILES = ("settings.json", "robustness.json", "robustness.md")
REPORTED = ("dsc", "sensitivity", "specificity", "lesion_tpr", "lesion_fpr")
# The package's masks with the most confluent periventricular lesions (lesion_atlas).
HIGH_LOAD_DONORS = ("patient12", "patient22", "patient06")
# Left-right test-time mirroring: the default recipe's (reproduce.sim2real, which a
# command of the reproduction does not import).
DEFAULT_MIRROR = (0,)


@dataclasses.dataclass(frozen=True, eq=False)
class Scan:
    """One subject's arrays in its own voxel grid (canonical RAS+ order), as the transforms
    take and return them.

    Attributes:
        images: modality name -> float32 ``(X, Y, Z)`` intensities.
        brain: bool ``(X, Y, Z)``, the brain the scan is scored in.
        truth: bool ``(X, Y, Z)`` lesion mask.
        spacing: the voxel size in mm along the three axes.
        affine: the voxel-to-world affine of the arrays, or ``None`` (arrays made by hand).
    """

    images: dict
    brain: np.ndarray
    truth: np.ndarray
    spacing: tuple
    affine: np.ndarray | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class LesionStress:
    """What ``paste_lesions`` returns.

    Attributes:
        scan: the scan with the lesions pasted in; its truth is the old truth or the added.
        added: bool ``(X, Y, Z)``, the pasted lesion voxels alone.
        normalisation: per modality, ``normalisation_statistics`` before and after, and
            their change (after minus before).
    """

    scan: Scan
    added: np.ndarray
    normalisation: dict


def _brain_values_changed(scan, change, modalities=None):
    """The scan with ``change(brain values as float64)`` put in the brain of each of
    ``modalities`` (all when ``None``); voxels outside the brain are kept."""
    images = dict(scan.images)
    for modality in modalities or scan.images:
        image = np.array(scan.images[modality], dtype=np.float32)
        image[scan.brain] = change(image[scan.brain].astype(np.float64))
        images[modality] = image
    return dataclasses.replace(scan, images=images)


def scale_intensities(scan, factor, offset_fraction=0.5):
    """Raw scanner units: every modality times ``factor`` plus an offset, inside the brain.

    Another scanner, coil or reconstruction stores its intensities in its own arbitrary
    units, scaled and shifted. The offset is ``offset_fraction`` times the modality's
    scaled brain median, so it means the same in any units: ``y = f x + c f median(x)``.
    Voxels outside the brain are kept (0 in a skull-stripped scan).

    Args:
        scan: a ``Scan``.
        factor: the scale, e.g. 0.25 or 4.
        offset_fraction: ``c``, the offset in scaled brain medians.

    Returns:
        the changed ``Scan``.
    """
    return _brain_values_changed(
        scan, lambda values: factor * values + offset_fraction * factor * np.median(values))


def gamma(scan, exponent):
    """A non-linear intensity response (another sequence or reconstruction): a gamma curve.

    Each modality's brain intensities are rescaled to [0, 1] (brain minimum to
    maximum), raised to ``exponent`` and mapped back to their range:
    ``y = lo + (hi - lo) ((x - lo) / (hi - lo)) ** exponent``. The order of the
    intensities is kept; below 1 the dark end is stretched, above 1 the bright end.

    Args:
        scan: a ``Scan``.
        exponent: the gamma, e.g. 0.6 or 1.6.

    Returns:
        the changed ``Scan``.
    """
    def change(values):
        low, high = values.min(), values.max()
        if high == low:
            return values
        return low + (high - low) * ((values - low) / (high - low)) ** exponent

    return _brain_values_changed(scan, change)


def bias_field(brain, spacing, rng, strength=0.2, degree=3):
    """A smooth multiplicative field: from exactly ``1 - strength`` to exactly
    ``1 + strength`` inside the brain, 1 outside.

    It is a random polynomial of the voxels' positions in mm (every monomial of
    degree 1 to ``degree``, standard normal coefficients; positions centred on the
    brain's bounding box and divided by its largest half-extent, so that the field is
    as smooth along every axis whatever the voxel size), rescaled linearly so that its
    minimum and maximum in the brain are the two bounds.

    Args:
        brain: bool ``(X, Y, Z)``.
        spacing: the voxel size in mm.
        rng: a ``numpy.random.Generator``.
        strength: the largest relative deviation from 1.
        degree: the polynomial's degree.

    Returns:
        float64 ``(X, Y, Z)`` field.
    """
    inside = np.nonzero(brain)
    positions = [(axis - (axis.min() + axis.max()) / 2) * size
                 for axis, size in zip(inside, spacing)]
    extent = max(max(np.abs(p).max() for p in positions), 1e-12)
    x, y, z = (p / extent for p in positions)
    polynomial = np.zeros(len(x))
    for i, j, k in itertools.product(range(degree + 1), repeat=3):
        if 1 <= i + j + k <= degree:
            polynomial += rng.standard_normal() * x ** i * y ** j * z ** k
    field = np.ones(brain.shape)
    low, high = polynomial.min(), polynomial.max()
    if high > low:
        field[inside] = 1 + strength * (2 * (polynomial - low) / (high - low) - 1)
    return field


def bias(scan, rng, strength=0.2):
    """Receive-coil inhomogeneity: each modality times its own ``bias_field``.

    A scanner's coils see the head unevenly, and each sequence differently, so
    every modality gets its own smooth field of ±``strength`` (exactly, inside
    the brain).

    Returns:
        the changed ``Scan``.
    """
    images = {modality: (image * bias_field(scan.brain, scan.spacing, rng, strength))
              .astype(np.float32) for modality, image in scan.images.items()}
    return dataclasses.replace(scan, images=images)


def thick_slice_axis(image, weight, voxels, axis):
    """``image`` acquired in slabs of ``voxels`` slices along ``axis``, then interpolated back.

    Each slab holds the mean of its voxels weighted by ``weight`` (the brain, so
    that the zeros around a skull-stripped brain do not darken its edge); the slab
    means, placed at the slabs' centres, are interpolated linearly back to every
    slice (held constant beyond the first and last centre), the weights likewise,
    and divided. A volume constant along ``axis`` comes back unchanged; where the
    weights are all 0 the image is kept.
    """
    image = np.moveaxis(np.asarray(image, np.float64), axis, -1)
    weight = np.moveaxis(np.asarray(weight, np.float64), axis, -1)
    size = image.shape[-1]
    starts = np.arange(0, size, voxels)
    lengths = np.diff(np.append(starts, size))
    centres = starts + (lengths - 1) / 2
    # Column k: slab k's share of every slice (linear between centres), a hat function.
    back = np.stack([np.interp(np.arange(size), centres, unit) for unit in np.eye(len(starts))],
                    axis=1)
    sums = np.add.reduceat(image * weight, starts, axis=-1) / lengths
    counts = np.add.reduceat(weight, starts, axis=-1) / lengths
    numerator, denominator = sums @ back.T, counts @ back.T
    out = np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), image)
    return np.moveaxis(out, -1, axis)


def thick_slices(scan, thickness_mm=5.0, axis=2, modalities=("FLAIR", "T2W")):
    """FLAIR and T2W acquired as thick slices: the routine 2D protocols of many centres.

    Along ``axis`` (2, inferior-superior in RAS order: axial slices) the slices are
    averaged in slabs of ``thickness_mm`` (``round(thickness_mm / voxel size)``
    slices) inside the brain and interpolated back linearly to the original grid
    (``thick_slice_axis``); T1W, a 3D acquisition, is unchanged. A scan whose
    slices are already that thick is returned as it is.

    Returns:
        the changed ``Scan``.
    """
    voxels = int(round(thickness_mm / scan.spacing[axis]))
    if voxels <= 1:
        return scan
    images = dict(scan.images)
    for modality in modalities:
        thick = thick_slice_axis(scan.images[modality], scan.brain, voxels, axis)
        images[modality] = np.where(scan.brain, thick, scan.images[modality]).astype(np.float32)
    return dataclasses.replace(scan, images=images)


def smooth_noise(shape, spacing, rng, sigma_mm):
    """Gaussian noise smoothed over ``sigma_mm`` (in mm along every axis), scaled to
    zero mean and unit standard deviation: a texture."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape),
                                    [sigma_mm / size for size in spacing])
    return (noise - noise.mean()) / max(noise.std(), 1e-12)


def skull_rim(scan, rng, width_mm=(4.0, 6.0)):
    """A looser skull-strip: a rim of non-brain tissue around the brain, in every modality.

    Another centre's skull-strip may keep meninges, bone marrow, fat and skin. The
    rim is every voxel outside the brain whose distance to it (in mm, the
    Euclidean distance transform at the voxel size) is at most a thickness that
    varies smoothly around the head between ``width_mm``. It is split by a
    smooth random pattern into bright fat and skin (each modality's brain 99th
    percentile times 1.1) and dark bone (a tenth of its brain median), with a
    smooth texture of 15 % and voxel noise of 5 %, and never 0. The brain keeps its
    voxels, and the returned scan's brain is the original one (the rim is scored
    as outside it), but the scan's non-zero region, which ``load_subject`` takes as
    the brain of a skull-stripped scan, grows by the rim.

    Returns:
        the changed ``Scan``.
    """
    shape, spacing = scan.brain.shape, scan.spacing
    distance = ndimage.distance_transform_edt(~scan.brain, sampling=spacing)
    near = ~scan.brain & (distance <= width_mm[1])
    if not near.any():  # the brain fills the field of view: no room for a rim
        return scan
    varying = smooth_noise(shape, spacing, rng, sigma_mm=10.0)
    low, high = varying[near].min(), varying[near].max()
    thickness = width_mm[0] + (width_mm[1] - width_mm[0]) * (varying - low) / max(high - low,
                                                                                    1e-12)
    rim = near & (distance <= thickness)
    fat = smooth_noise(shape, spacing, rng, sigma_mm=3.0) > 0
    images = {}
    for modality, image in scan.images.items():
        inside = image[scan.brain]
        floor = 0.05 * np.median(np.abs(inside)) or 1e-3
        tissue = np.where(fat[rim], 1.1 * np.percentile(inside, 99), 0.1 * np.median(inside))
        texture = (1 + 0.15 * smooth_noise(shape, spacing, rng, sigma_mm=2.0)[rim]
                   + 0.05 * rng.standard_normal(np.count_nonzero(rim)))
        changed = np.array(image, dtype=np.float32)
        changed[rim] = np.maximum(tissue * texture, floor)
        images[modality] = changed
    return dataclasses.replace(scan, images=images)


def zoom_brain(scan, factor):
    """A bigger or smaller brain in the grid: the scan scaled by ``factor`` about the
    brain's centre of mass, on the same grid and affine.

    Heads differ in size, and another centre's registration may fill more of the
    template's grid (issue 31: 2.0 M non-zero voxels against MSLUB's 1.1 M).
    Output voxel ``p`` takes the input at ``c + (p - c) / factor``: images linearly
    (and 0 outside the moved brain), the brain and truth by nearest neighbour.

    Returns:
        the changed ``Scan``, whose brain is the moved brain.
    """
    centre = np.array(ndimage.center_of_mass(scan.brain))
    matrix = np.full(3, 1.0 / factor)

    def moved(array, order):
        return ndimage.affine_transform(array, matrix, offset=centre - matrix * centre,
                                        order=order, mode="constant", cval=0.0)

    brain = moved(scan.brain.astype(np.uint8), 0) > 0
    images = {modality: np.where(brain, moved(np.asarray(image, np.float32), 1), 0.0)
              .astype(np.float32) for modality, image in scan.images.items()}
    return dataclasses.replace(scan, images=images, brain=brain,
                               truth=moved(scan.truth.astype(np.uint8), 0) > 0)


def t1_contrast(scan, fraction=0.5, modality="T1W"):
    """A weaker grey-white contrast in T1W (another sequence or field strength).

    Every brain value below the brain median of T1W is pulled ``fraction`` of the
    way towards it (``y = x + fraction (median - x)``: halved at 0.5), so grey
    matter and CSF come closer to white matter; values above are kept.

    Returns:
        the changed ``Scan``.
    """
    def change(values):
        median = np.median(values)
        return np.where(values < median, values + fraction * (median - values), values)

    return _brain_values_changed(scan, change, modalities=(modality,))


def white_matter_like(images, brain, spacing, modality="T1W"):
    """The brain voxels whose T1W, smoothed over 1 mm, lies in the brightest of three
    intensity classes.

    The classes (CSF, grey and white matter in a T1W scan) are a one-dimensional
    k-means of the brain's T1W values, started at their 10th, 50th and 90th
    percentiles; a voxel is white matter-like where its T1W smoothed over 1 mm
    (so that noise does not punch holes in the white matter) reaches the midpoint
    between the grey and the white matter class. CSF, grey matter and T1W-dark
    lesions are not, nor the partial-volume voxels at their borders.

    Returns:
        bool ``(X, Y, Z)``.
    """
    values = images[modality][brain].astype(np.float64)
    centres = np.percentile(values, (10, 50, 90))
    for _ in range(100):
        classes = np.searchsorted((centres[1:] + centres[:-1]) / 2, values)
        counts = np.bincount(classes, minlength=3)
        updated = np.where(counts > 0, np.bincount(classes, values, 3) / np.maximum(counts, 1),
                           centres)
        if np.array_equal(updated, centres):
            break
        centres = updated
    smooth = ndimage.gaussian_filter(np.asarray(images[modality], np.float32),
                                     [1.0 / size for size in spacing])
    return brain & (smooth >= (centres[1] + centres[2]) / 2)


def normalisation_statistics(image, brain, normal):
    """What the two normalisations read from one modality, and where they put normal tissue.

    Returns:
        dict: the brain's ``brain_mean`` and ``brain_std``; its ``wm_peak`` and
        ``wm_scale`` (``wm_peak_statistics``); and the median of the ``normal``
        voxels (normal-appearing white matter) in the network's input units,
        ``normal_zscore`` (``zscore_in_brain``) and ``normal_wm_peak``
        (``wm_peak_in_brain``).
    """
    values = image[brain].astype(np.float64)
    peak, scale = wm_peak_statistics(values)
    return {"brain_mean": float(values.mean()), "brain_std": float(values.std()),
            "wm_peak": peak, "wm_scale": scale,
            "normal_zscore": float(np.median(zscore_in_brain(image, brain)[normal])),
            "normal_wm_peak": float(np.median(wm_peak_in_brain(image, brain)[normal]))}


def paste_lesions(scan, donor, rng):
    """Lesion-load stress: another patient's lesions pasted in at this patient's own contrast.

    A heavy lesion load shifts the histogram that normalisation reads, and large
    confluent lesions look unlike small ones. The added lesions are the
    ``donor`` voxels that are white matter-like in this scan
    (``white_matter_like``: not CSF, not grey matter, not outside the brain) and not
    already lesion. In each modality a pasted voxel keeps its own value shifted by
    this patient's lesion contrast (mean of its lesions minus mean of its
    normal-appearing white matter, the white matter-like voxels more than 2 voxels
    from a lesion), plus a texture that widens the normal tissue's spread to the
    lesions' (its standard deviation: the square root of the lesions' variance minus
    the normal tissue's, if positive). The texture is Gaussian noise smoothed over
    1 mm, made zero-mean and unit-variance over the added voxels (so the mean shift
    is the contrast exactly), and shared by the modalities with the sign of each
    one's contrast: a more damaged voxel is brighter in FLAIR and darker in T1W.

    Args:
        scan: a ``Scan`` with lesions in its truth.
        donor: bool ``(X, Y, Z)`` lesion mask on the scan's grid.
        rng: a ``numpy.random.Generator``.

    Returns:
        a ``LesionStress``.

    Raises:
        ValueError: the donor is not on the scan's grid, or the scan has no lesion or
            no normal-appearing white matter to take the contrast from.
    """
    donor = np.asarray(donor, bool)
    if donor.shape != scan.brain.shape:
        raise ValueError(f"the lesion mask has shape {donor.shape}, the scan "
                         f"{scan.brain.shape}: not one grid")
    lesions = scan.truth & scan.brain
    white = white_matter_like(scan.images, scan.brain, scan.spacing)
    normal = white & ~ndimage.binary_dilation(lesions, iterations=2)
    if not lesions.any() or not normal.any():
        raise ValueError("the scan has no lesion, or no normal-appearing white matter, to take "
                         "its lesion contrast from")
    added = donor & white & ~scan.truth
    texture = smooth_noise(added.shape, scan.spacing, rng, sigma_mm=1.0)[added]
    if texture.size:
        texture = (texture - texture.mean()) / max(texture.std(), 1e-12)
    images = {}
    for modality, image in scan.images.items():
        lesion_values, normal_values = image[lesions].astype(np.float64), image[normal]
        shift = lesion_values.mean() - normal_values.mean(dtype=np.float64)
        spread = math.sqrt(max(lesion_values.var() - normal_values.var(dtype=np.float64), 0.0))
        changed = np.array(image, dtype=np.float32)
        changed[added] = changed[added] + shift + np.copysign(spread, shift) * texture
        images[modality] = changed
    stressed = dataclasses.replace(scan, images=images, truth=scan.truth | added)
    untouched = normal & ~added
    normalisation = {}
    for modality in scan.images:
        before, after = (normalisation_statistics(s.images[modality], scan.brain, untouched)
                         for s in (scan, stressed))
        normalisation[modality] = {"before": before, "after": after,
                                   "change": {k: after[k] - before[k] for k in before}}
    return LesionStress(stressed, added, normalisation)


def high_load_donor(shape, spacing, affine=None, donors=HIGH_LOAD_DONORS):
    """The union of the package's ``donors`` masks that exist, in canonical order, for a
    scan of ``shape`` and voxel size ``spacing`` (canonical order), and ``affine`` if known.

    Raises:
        ValueError: one line, when the scan is not on the masks' MNI152 1-mm grid
            (shape, voxel size, and position when ``affine`` is given), or no donor
            mask is in the package.
    """
    names = [name for name in donors if name in lesion_mask_names()]
    if not names:
        raise ValueError(f"none of the lesion masks {', '.join(donors)} is in the package")
    union = None
    for name in names:
        stored, stored_affine = read_lesion_mask(name)
        orientation = io_orientation(stored_affine)
        mask = apply_orientation(stored, orientation)
        grid_affine = stored_affine @ inv_ornt_aff(orientation, stored.shape)
        union = mask if union is None else union | mask
    grid = "x".join(map(str, union.shape))
    grid_spacing = np.linalg.norm(grid_affine[:3, :3], axis=0)
    if tuple(shape) != union.shape or not np.allclose(spacing, grid_spacing, atol=1e-3):
        raise ValueError(f"lesion-load pastes the package's lesion masks, which lie on the "
                         f"MNI152 1-mm grid ({grid} voxels): this scan is "
                         f"{'x'.join(map(str, shape))} voxels of "
                         f"{'x'.join(f'{s:g}' for s in spacing)} mm; register it to MNI152 "
                         f"first")
    if affine is not None and not np.allclose(affine, grid_affine, atol=1e-3):
        raise ValueError(f"lesion-load pastes the package's lesion masks: this scan has their "
                         f"{grid} grid but not their MNI152 position (origin "
                         f"{np.round(affine[:3, 3], 1).tolist()} mm, not "
                         f"{np.round(grid_affine[:3, 3], 1).tolist()})")
    return union


def lesion_load(scan, rng, donors=HIGH_LOAD_DONORS):
    """``paste_lesions`` of the package's high-load masks (``high_load_donor``) into a scan
    on their MNI152 grid; a one-line ValueError for a scan on another grid."""
    return paste_lesions(scan, high_load_donor(scan.brain.shape, scan.spacing, scan.affine,
                                               donors), rng)


@dataclasses.dataclass(frozen=True)
class Transform:
    """One cell of the suite: its name (a folder name), its item of issue 31, what it
    does, and ``apply(scan, rng)``, which returns a ``Scan`` or a ``LesionStress``."""

    name: str
    item: str
    description: str
    apply: object


TRANSFORMS = {transform.name: transform for transform in (
    Transform("scale0.25", "a", "every modality x0.25, plus half its scaled brain median",
              lambda scan, rng: scale_intensities(scan, 0.25)),
    Transform("scale4", "a", "every modality x4, plus half its scaled brain median",
              lambda scan, rng: scale_intensities(scan, 4.0)),
    Transform("gamma0.6", "b", "every modality: gamma 0.6 on its brain range",
              lambda scan, rng: gamma(scan, 0.6)),
    Transform("gamma1.6", "b", "every modality: gamma 1.6 on its brain range",
              lambda scan, rng: gamma(scan, 1.6)),
    Transform("bias", "c", "a smooth bias field of exactly ±20 % in the brain, one per modality",
              bias),
    Transform("slices5mm", "d", "FLAIR and T2W as 5-mm axial slices, linear back; T1W unchanged",
              lambda scan, rng: thick_slices(scan)),
    Transform("rim", "e", "a 4-6 mm rim of fat-, skin- and bone-like tissue around the brain",
              skull_rim),
    Transform("zoom0.88", "f", "the brain scaled by 0.88 about its centre",
              lambda scan, rng: zoom_brain(scan, 0.88)),
    Transform("zoom1.12", "f", "the brain scaled by 1.12 about its centre",
              lambda scan, rng: zoom_brain(scan, 1.12)),
    Transform("t1-contrast", "g", "T1W below its brain median pulled halfway to it",
              lambda scan, rng: t1_contrast(scan)),
    Transform("lesion-load", "h", "the lesions of patients 12, 22 and 06 pasted into the white "
              "matter at the patient's own lesion contrast", lesion_load),
)}


def cell_generator(seed, subject_id, name):
    """The random generator of one (subject, transform) cell: the same for a rerun, and
    whichever other cells are run."""
    return np.random.default_rng([seed, zlib.crc32(subject_id.encode()),
                                  zlib.crc32(name.encode())])


def read_scan(subject):
    """A subject's scans as a ``Scan``, and the geometry to write arrays back to its files' grid.

    The brain is ``load_subject``'s (its brain mask, else its non-zero voxels), and
    the scans are made zero outside it (skull-stripped by it).
    """
    volume = load_subject(subject, modalities=MODALITIES, normalize=False)
    brain = np.asarray(volume.brain, bool)
    images = {modality: np.where(brain, volume.image[..., channel], 0.0).astype(np.float32)
              for channel, modality in enumerate(volume.modalities)}
    affine = canonical_affine(nib.load(subject.images[volume.modalities[0]]))
    return Scan(images, brain, np.asarray(volume.label) > 0, volume.geometry.spacing,
                affine), volume.geometry


def write_scan(scan, geometry, folder, added=None):
    """``scan`` as a subject folder (``{T1W,T2W,FLAIR,consensus_gt}.nii.gz``, and
    ``added_lesions.nii.gz`` when given) in the files' grid, affine and storage order."""
    folder.mkdir(parents=True, exist_ok=True)
    for modality in MODALITIES:
        save_nifti_like(from_grid(scan.images[modality], geometry, order=0), geometry,
                        folder / f"{modality}.nii.gz", np.float32)
    masks = {"consensus_gt.nii.gz": scan.truth} | ({ADDED_LESIONS: added} if added is not None
                                                  else {})
    for name, mask in masks.items():
        save_nifti_like(from_grid(mask.astype(np.uint8), geometry, order=0), geometry,
                        folder / name, np.uint8)


def score_scan(scan, probability, added=None):
    """``REPORTED`` metrics at ``THRESHOLD`` inside the scan's brain, the voxels counted,
    and with ``added``, the sensitivity (voxels and lesions) on the added lesions alone."""
    ours = lesion_metrics(scan.truth, probability, threshold=THRESHOLD, mask=scan.brain)
    nonzero = np.logical_or.reduce([image != 0 for image in scan.images.values()])
    scores = {**{key: ours[key] for key in REPORTED},
              "lesion_voxels": int(np.count_nonzero(scan.truth & scan.brain)),
              "brain_voxels": int(np.count_nonzero(scan.brain)),
              "scan_voxels": int(np.count_nonzero(nonzero))}
    if added is not None:
        on_added = lesion_metrics(added, probability, threshold=THRESHOLD, mask=scan.brain)
        scores |= {"added_voxels": int(np.count_nonzero(added)),
                   "added_sensitivity": on_added["sensitivity"],
                   "added_lesion_tpr": on_added["lesion_tpr"]}
    return scores


def run_cell(models, subject, scan, geometry, name, folder, seed, mirror_axes, about,
             union=None):
    """Change ``scan`` by transform ``name`` (``UNCHANGED``: as it is), write, segment and
    score it into ``folder``; ``metrics.json`` last. Returns the metrics.

    ``union``: ``{"threshold_union_k": k}``, and ``"threshold_union_core_mm"`` if given:
    the probability raised to 1 where the written scan's FLAIR brain z-score (its brain as
    ``load_subject`` finds it, rim included; the mean and std read over the brain deeper
    than the core depth when given) reaches k (``tversky_keras.baseline.threshold_union``)."""
    started = time.perf_counter()
    changed, added, extra = scan, None, {}
    if name != UNCHANGED:
        changed = TRANSFORMS[name].apply(scan, cell_generator(seed, subject.id, name))
        if isinstance(changed, LesionStress):
            changed, added, extra = (changed.scan, changed.added,
                                     {"normalisation": changed.normalisation})
    write_scan(changed, geometry, folder, added)
    written = subject_from_folder(folder)
    probability, probability_geometry = segment_subject(models, written,
                                                        mirror_axes=mirror_axes)
    if union is not None:
        _, brain, flair_z = scan_reference(written, union.get("threshold_union_core_mm", 0.0))
        probability = threshold_union(probability, flair_z, brain, union["threshold_union_k"])
    write_segmentation(probability, probability_geometry, folder, threshold=THRESHOLD,
                       about={**about, "subject": subject.id, "transform": name})
    # In canonical order, as read_nifti reads a file: the order the Scan's arrays are in.
    canonical = apply_orientation(probability, probability_geometry.orientation)
    metrics = strict({**score_scan(changed, canonical, added), **extra,
                      "seconds": round(time.perf_counter() - started, 1)})
    write_json(metrics, folder / METRICS)
    return metrics


def record_settings(folder, settings):
    """Write ``settings.json`` into ``folder``, or refuse (ValueError) a folder whose
    finished cells were made with other settings: they would be skipped, not redone."""
    changed = report.record_settings(folder, settings)
    if changed:
        raise ValueError(f"{folder} holds results made with other settings "
                         f"({', '.join(changed)}): give another --out, or delete it")


def _points(value, base):
    """``value - base`` in percentage points, signed; empty when either is missing."""
    return "" if value is None or base is None else f"{100 * (value - base):+.2f}"


def render_markdown(record):
    """The suite's page from ``robustness.json``: per subject, each transform's DSC,
    sensitivity and specificity (percent) next to the unchanged scan's and the difference
    in points, the added lesions' sensitivity, and for lesion-load the normalisation
    statistics before and after."""
    settings = record["settings"]
    head = ["subject", "transform", "item", "DSC", "Δ DSC", "sensitivity", "Δ sensitivity",
            "specificity", "Δ specificity", "added lesions: sensitivity"]
    rows, stats = [], []
    # The suite's order: the JSON's keys are sorted.
    names = sorted(record["transforms"], key=lambda n: list(TRANSFORMS).index(n)
                   if n in TRANSFORMS else len(TRANSFORMS))
    for subject_id, cells in sorted(record["subjects"].items()):
        base = cells.get(UNCHANGED, {})
        for name in [UNCHANGED, *names]:
            if name not in cells:
                continue
            cell = cells[name]
            item = record["transforms"].get(name, {}).get("item", "")
            rows.append([subject_id, name, item]
                        + [text for key in ("dsc", "sensitivity", "specificity")
                           for text in (report.percent(cell[key]),
                                        "" if name == UNCHANGED else
                                        _points(cell[key], base.get(key)))]
                        + [report.percent(cell["added_sensitivity"])
                           if "added_sensitivity" in cell else ""])
            for modality, change in sorted(cell.get("normalisation", {}).items()):
                before, after = change["before"], change["after"]
                stats.append([subject_id, modality]
                             + [f"{before[k]:.4g} → {after[k]:.4g}"
                                for k in ("brain_mean", "brain_std", "wm_peak", "wm_scale")]
                             + [f"{before[k]:+.3f} → {after[k]:+.3f}"
                                for k in ("normal_zscore", "normal_wm_peak")])
    mirror = "".join("xyz"[axis] for axis in settings["mirror_axes"]) or "none"
    union, core = settings.get("threshold_union_k"), settings.get("threshold_union_core_mm")
    union = ("" if union is None else
             f" The models' mask is united with the FLAIR threshold z >= {union:.3f} (each "
             f"changed scan's brain z-score"
             + ("" if core is None else f", its mean and std from the brain deeper than "
                                        f"{core:g} mm")
             + ").")
    lines = [f"# Invariance suite (percent, inside the brain, at probability {THRESHOLD})", "",
             f"Models: {', '.join(settings['models'])} (probabilities averaged); test-time "
             f"mirroring: {mirror}; seed {settings['seed']}.{union}", "",
             report.markdown_table(head, rows), "",
             "Transforms:", ""]
    lines += [f"- `{name}` ({record['transforms'][name]['item']}): "
              f"{record['transforms'][name]['description']}" for name in names]
    if stats:
        lines += ["", "Lesion-load: the normalisation statistics before → after the lesions "
                  "are pasted (normal white matter: the median of the normal-appearing white "
                  "matter left untouched, in each normalisation's units).", "",
                  report.markdown_table(["subject", "modality", "brain mean", "brain std",
                                         "WM peak", "WM scale (IQR / 1.349)",
                                         "normal WM, z-score", "normal WM, wm-peak"], stats)]
    return "\n".join(lines) + "\n"


def transform_list(text):
    """``--transforms``: items ``a``-``h`` or transform names, comma-separated, for argparse;
    the chosen names in the suite's order."""
    chosen = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        named = [name for name, t in TRANSFORMS.items() if part in (name, t.item)]
        if not named:
            raise argparse.ArgumentTypeError(
                f"{part!r}: give items a-h or names among {', '.join(TRANSFORMS)}")
        chosen.update(named)
    if not chosen:
        raise argparse.ArgumentTypeError("give at least one transform")
    return [name for name in TRANSFORMS if name in chosen]


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m reproduce.robustness",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True,
                        help="real subjects with lesion masks (any layout discover_subjects reads)")
    parser.add_argument("--model", type=Path, action="append", required=True, metavar="MODEL",
                        help="a saved .keras model; give it again for an ensemble (their "
                             "probabilities averaged)")
    parser.add_argument("--mirror", type=mirror_or_none, default=DEFAULT_MIRROR,
                        help="test-time mirroring along these RAS axes (x = left-right, the "
                             "default, as reproduce.sim2real), or none")
    parser.add_argument("--transforms", type=transform_list, default=list(TRANSFORMS),
                        help="items a-h or names, comma-separated (default: all): "
                             + ", ".join(f"{t.item} {name}" for name, t in TRANSFORMS.items()))
    parser.add_argument("--seed", type=seed_option, default=0,
                        help="seed of the random transforms (0); each cell draws from its own "
                             "generator of seed, subject and transform")
    parser.add_argument("--threshold-union", type=finite, default=None, metavar="K",
                        help="unite the model's mask with the FLAIR threshold z >= K, the "
                             "brain z-score of each changed scan as written (reproduce.sim2real "
                             "--threshold-union phantom: its threshold_union_k); default: the "
                             "model alone")
    parser.add_argument("--union-core-mm", type=non_negative, default=0.0, metavar="MM",
                        help="with --threshold-union: read the z-score's mean and std over the "
                             "changed scan's brain deeper than MM mm (sim2real "
                             "--threshold-union phantom-core: its threshold_union_core_mm); "
                             "default 0: the whole brain")
    parser.add_argument("--out", type=output_folder, required=True,
                        help="output folder (made if absent; a rerun skips finished cells)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return report.run_or_one_line("python -m reproduce.robustness", _run, args)


def _run(args):
    started = time.perf_counter()
    subjects = discover_subjects(args.data)
    for subject in subjects:  # each is written to <out>/<subject>/
        path_name(subject.id, "subject", args.data, reserved=OWN_FILES)
    if "lesion-load" in args.transforms:  # refused before any work, not after hours
        for subject in subjects:
            image = nib.load(subject.images[MODALITIES[0]])
            geometry = Geometry.from_image(image)
            try:
                high_load_donor(geometry.grid.shape, geometry.spacing, canonical_affine(image))
            except ValueError as error:
                raise ValueError(f"subject {subject.id}: {error}; or leave lesion-load out "
                                 f"(--transforms a,b,c,d,e,f,g)") from None
    settings = {"data": str(Path(args.data).resolve()),
                "models": [str(Path(path).resolve()) for path in args.model],
                "mirror_axes": list(args.mirror), "seed": args.seed, "threshold": THRESHOLD}
    union = None
    if args.threshold_union is not None:  # only then: earlier folders stay valid
        union = {"threshold_union_k": args.threshold_union}
        if args.union_core_mm:
            union["threshold_union_core_mm"] = args.union_core_mm
    elif args.union_core_mm:
        raise ValueError("--union-core-mm is for --threshold-union K")
    settings |= union or {}
    record_settings(args.out, settings)
    models = [load_saved_model(path) for path in args.model]
    about = {"models": settings["models"], "mirror_axes": settings["mirror_axes"],
             **(union or {})}
    for subject in subjects:
        scan = geometry = None
        for name in [UNCHANGED, *args.transforms]:
            folder = args.out / subject.id / name
            if (folder / METRICS).is_file():
                print(f"skip {subject.id} / {name}: finished", flush=True)
            else:
                if scan is None:
                    scan, geometry = read_scan(subject)
                run_cell(models, subject, scan, geometry, name, folder, args.seed,
                         args.mirror, about, union)
            print(_progress(subject.id, name, finished_cells(args.out, subject.id)), flush=True)
    results = {subject.id: finished_cells(args.out, subject.id) for subject in subjects}
    shown = [name for name in TRANSFORMS if any(name in cells for cells in results.values())]
    record = {"settings": settings, "order": [UNCHANGED, *shown],
              "transforms": {name: {"item": TRANSFORMS[name].item,
                                    "description": TRANSFORMS[name].description}
                             for name in shown},
              "subjects": results, "made": report.provenance(time.perf_counter() - started)}
    record = strict(record)
    text = render_markdown(record)
    write_json(record, args.out / "robustness.json")
    write_text(args.out / "robustness.md", text)
    print(f"\n{text}\ntotal {time.perf_counter() - started:.0f} s")
    return 0


def finished_cells(out, subject_id):
    """``{transform: metrics}`` of every finished cell of a subject, this run's or an
    earlier one's (the same settings), unchanged first and then in the suite's order."""
    folder = Path(out) / subject_id
    return {name: json.loads((folder / name / METRICS).read_text())
            for name in [UNCHANGED, *TRANSFORMS] if (folder / name / METRICS).is_file()}


def _progress(subject_id, name, cells):
    """One line: a cell's DSC, sensitivity and specificity, and the DSC's change from the
    unchanged scan."""
    cell, base = cells[name], cells[UNCHANGED]
    line = (f"{subject_id} / {name}: DSC {report.percent(cell['dsc'])}, sensitivity "
            f"{report.percent(cell['sensitivity'])}, specificity "
            f"{report.percent(cell['specificity'])}")
    if name != UNCHANGED:
        line += f" ({_points(cell['dsc'], base['dsc'])} DSC points)"
    if "added_sensitivity" in cell:
        line += f"; added lesions: sensitivity {report.percent(cell['added_sensitivity'])}"
    return line + f" in {cell['seconds']} s"


if __name__ == "__main__":
    sys.exit(main())
