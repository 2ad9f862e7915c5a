"""The lesions: version 2 draws ovoids, version 3 carries real MSLUB patients' masks.

Version 2: lesion loads stratified over the 30 MSLUB patients' distribution
(``lesion_loads``), one confluent lesion beside a lateral ventricle and many
smaller ovoids, most in deep white matter near the ventricles, some
juxtacortical and some infratentorial. Version 3: each subject carries one
or two of the embedded consensus masks (``lesion_sources`` deals them,
``LesionSource`` names them), sampled through the subject's own warp and kept
to its parenchyma. Both return a lesion fraction per voxel, the lesion mask
and a severity map, which ``imaging`` draws.
"""

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from tversky_keras.data.phantom.calibration import (_JUXTACORTICAL_DEPTH_MM,
                                                    _JUXTACORTICAL_VENTRICLE_MM,
                                                    _LESION_LOG_SIGMA,
                                                    _LESION_MASK_BRAIN_SCALE,
                                                    _LESION_MEDIAN_MM3, _LESION_SITES,
                                                    _LOAD_QUANTILES, _PERIVENTRICULAR_MM,
                                                    _PERIVENTRICULAR_WEIGHT)
from tversky_keras.data.phantom.fields import _smooth_field
from tversky_keras.data.phantom.template import _template, _template_1mm


# --- version 2: drawn ovoids --------------------------------------------------

def lesion_loads(n_subjects, seed=0):
    """Lesion loads (mm^3) for a data set, spread over the real distribution.

    Stratified sampling: the unit interval is cut into ``n_subjects`` equal
    strata, one uniform draw per stratum goes through the quantile function of
    the 30 MSLUB patients' loads (log-linear between their quartiles), and the
    strata are dealt to subjects in random order. The lowest load therefore
    always lies in the bottom ``1/n_subjects`` of the real distribution and the
    highest in the top one (with 15 subjects: below 503 and above 44282 mm^3),
    so the very-low and very-high load subjects the paper's figures need are
    there for any seed.

    Args:
        n_subjects: number of loads.
        seed: int or ``SeedSequence``.

    Returns:
        float array of ``n_subjects`` loads in mm^3.
    """
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be at least 1, got {n_subjects}")
    rng = np.random.default_rng(seed)
    strata = (rng.permutation(n_subjects) + rng.uniform(size=n_subjects)) / n_subjects
    return _load_quantile(strata)


def _load_quantile(u):
    probs, loads = np.array(_LOAD_QUANTILES).T
    return np.exp(np.interp(u, probs, np.log(loads)))


def _lesion_volumes(rng, load_mm3, voxel_mm3):
    """Volumes (mm^3) of a subject's lesions; the first is the confluent one.

    Three kinds, as in the real patients: many small lesions (log-normal,
    median 17 mm^3), their count growing with the load (about 25 at 1000 mm^3,
    95 at 14000 mm^3); one largest, often confluent lesion holding 15-35 % of
    a low load and up to 90 % of a high one; and medium lesions of 100-2000
    mm^3 for whatever load is left. A low load that the small lesions would
    overfill shrinks them instead. Lesions below a voxel cannot be drawn, so at
    coarse spacings there is at most one small lesion per two voxels of load.
    """
    count = 25 * np.sqrt(load_mm3 / 1000) * np.exp(0.35 * rng.standard_normal())
    count = int(np.clip(round(min(count, load_mm3 / (2 * voxel_mm3))), 0, 400))
    heaviness = np.clip(np.log(load_mm3 / 3000) / np.log(10), 0.0, 1.0)
    largest = load_mm3 * (rng.uniform(0.15, 0.35 + 0.55 * heaviness) if count else 1.0)
    small = _LESION_MEDIAN_MM3 * np.exp(_LESION_LOG_SIGMA * rng.standard_normal(count))
    small = np.clip(small, voxel_mm3, 500.0)
    left = load_mm3 - largest - small.sum()
    if left < 0:
        small *= (load_mm3 - largest) / small.sum()
    return np.concatenate([[largest], small, _medium_lesions(rng, left)])


def _medium_lesions(rng, volume_mm3):
    """Lesions of 100-2000 mm^3 (log-uniform) adding up to ``volume_mm3``."""
    volumes = []
    while sum(volumes) < volume_mm3:
        volumes.append(np.exp(rng.uniform(np.log(100), np.log(2000))))
    volumes = np.array(volumes)
    return volumes * volume_mm3 / volumes.sum() if volumes.size else volumes


def _random_rotation(rng):
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _ellipsoid_axes(rng, volume_mm3, elongation):
    """Semi-axes (mm) of an ovoid of the given volume, random proportions."""
    ratios = np.exp(elongation * rng.standard_normal(3))
    ratios /= np.cbrt(ratios.prod())
    return np.cbrt(volume_mm3 * 3 / (4 * np.pi)) * ratios


@dataclass(frozen=True)
class _Ovoid:
    centre: np.ndarray     # voxel coordinates
    axes_mm: np.ndarray
    rotation: np.ndarray
    severity: float


def _lesion_sites(rng, count, anatomy):
    """Centres (voxel coordinates) of ``count`` lesions, dealt to the places of
    ``_LESION_SITES``; a place with no white matter at this voxel size (coarse
    grids) gives its share to deep white matter."""
    wm, below = anatomy.tissue["WM"], anatomy.infratentorial
    places = {
        "deep": (wm > 0.6) & ~below,
        "juxtacortical": (wm > 0.5) & (wm < 0.85) & ~below
        & (anatomy.brain_depth_mm < _JUXTACORTICAL_DEPTH_MM)
        & (anatomy.ventricle_distance_mm > _JUXTACORTICAL_VENTRICLE_MM),
        "infratentorial": (wm > 0.6) & below,
    }
    places = {name: np.argwhere(where) for name, where in places.items()}
    shares = np.array([_LESION_SITES[name] if places[name].size else 0.0 for name in places])
    shares[0] += 1 - shares.sum()
    kinds = rng.choice(len(places), size=count, p=shares)
    centres = np.zeros((count, 3))
    for kind, voxels in enumerate(places.values()):
        chosen = kinds == kind
        weight = np.ones(len(voxels))
        if kind == 0:   # deep white matter: denser near the ventricles
            weight += _PERIVENTRICULAR_WEIGHT * np.exp(
                -anatomy.ventricle_distance_mm[tuple(voxels.T)] / _PERIVENTRICULAR_MM)
        if chosen.any():
            centres[chosen] = voxels[rng.choice(len(voxels), size=chosen.sum(),
                                                p=weight / weight.sum())]
    return centres + rng.uniform(-0.5, 0.5, size=centres.shape)


def _lesion_ovoids(rng, volumes, anatomy, spacing):
    """Place the lesions: the first as a chain of overlapping ovoids along a
    ventricle (confluent), the others as single ovoids at ``_lesion_sites``."""
    centres = _lesion_sites(rng, len(volumes) - 1, anatomy)
    ovoids = [_Ovoid(c, _ellipsoid_axes(rng, v, 0.3), _random_rotation(rng),
                     float(np.exp(0.25 * rng.standard_normal())))
              for c, v in zip(centres, volumes[1:])]
    return _confluent_ovoids(rng, volumes[0], anatomy.tissue["WM"],
                             anatomy.ventricle_distance_mm, spacing) + ovoids


def _confluent_ovoids(rng, volume_mm3, wm, ventricle_distance, spacing):
    """Overlapping ovoids in the white matter around a ventricle, each one
    centred within reach of an earlier one, so that they merge."""
    pieces = int(np.clip(round(volume_mm3 / 2500), 1, 16))
    rim = np.argwhere((wm > 0.5) & (ventricle_distance < 10.0))
    centres = [rim[rng.integers(len(rim))].astype(float)]
    ovoids = []
    for _ in range(pieces):
        # Overlap: each piece is 30 % bigger than its share of the volume.
        axes = _ellipsoid_axes(rng, 1.3 * volume_mm3 / pieces, 0.4)
        ovoids.append(_Ovoid(centres[-1], axes, _random_rotation(rng),
                             float(np.exp(0.25 * rng.standard_normal()))))
        anchor = centres[rng.integers(len(centres))]
        reach = np.linalg.norm((rim - anchor) * spacing, axis=1)
        near = np.flatnonzero((reach > 0.3 * axes.mean()) & (reach < 0.9 * axes.mean()))
        centres.append(rim[rng.choice(near)] if near.size else anchor)
    return ovoids


def _render_ovoids(ovoids, shape, spacing, size_factor):
    """Occupancy (0..1, a one-voxel ramp at the border) and severity maps."""
    occupancy = np.zeros(shape, np.float32)
    severity = np.zeros(shape, np.float32)
    for ovoid in ovoids:
        axes = ovoid.axes_mm * size_factor
        half = int(np.ceil(axes.max() / spacing)) + 1
        low = np.maximum(np.floor(ovoid.centre).astype(int) - half, 0)
        high = np.minimum(np.floor(ovoid.centre).astype(int) + half + 1, shape)
        box = tuple(slice(lo, hi) for lo, hi in zip(low, high))
        offsets = np.stack(np.meshgrid(*[np.arange(lo, hi) for lo, hi in zip(low, high)],
                                       indexing="ij"), axis=-1)
        local = (offsets - ovoid.centre) * spacing @ ovoid.rotation
        radius = np.sqrt(((local / axes) ** 2).sum(-1))
        occ = np.clip(0.5 + (1 - radius) * axes.min() / spacing, 0, 1)
        inside = occ > occupancy[box]
        occupancy[box] = np.where(inside, occ, occupancy[box])
        severity[box] = np.where(inside, ovoid.severity, severity[box])
    return occupancy, severity


def _lesions(rng, load_mm3, anatomy, spacing):
    """Lesion fraction per voxel, its mask, and the lesions' severity map.

    Lesions live in white matter only (WM probability > 0.5). Ovoids cut by
    grey matter or overlapping each other lose volume, so all sizes are
    rescaled, a few times, until the mask's volume is within 10 % of the load.
    """
    volumes = _lesion_volumes(rng, load_mm3, spacing**3)
    ovoids = _lesion_ovoids(rng, volumes, anatomy, spacing)
    wm = anatomy.tissue["WM"]
    in_wm = wm > 0.5
    size_factor = 1.0
    for _ in range(4):
        occupancy, severity = _render_ovoids(ovoids, wm.shape, spacing, size_factor)
        fraction = occupancy * in_wm
        mask = fraction >= 0.5
        achieved = mask.sum() * spacing**3
        if abs(achieved - load_mm3) <= 0.1 * load_mm3:
            break
        size_factor *= np.clip(load_mm3 / max(achieved, spacing**3), 0.5, 2.0) ** (1 / 3)
    # Real lesions are patchy inside, too: +-20 % over a few millimetres.
    patches = 1 + 0.2 * _smooth_field(rng, wm.shape, spacing, 6.0)
    return fraction, mask, severity * np.clip(patches, 0.2, None)


# --- version 3: real lesions --------------------------------------------------

@dataclass(frozen=True)
class LesionSource:
    """Whose lesions a version-3 subject carries: one or two of the embedded real
    masks (``tversky_keras.data.lesion_atlas``), each possibly mirrored left-right.

    Attributes:
        names: embedded mask names, e.g. ``("patient12",)``.
        mirrored: one bool per name: flipped across the midsagittal plane
            (MNI x -> -x; the template is symmetric).
    """

    names: tuple
    mirrored: tuple

    def __post_init__(self):
        from tversky_keras.data.lesion_atlas import lesion_mask_names

        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "mirrored", tuple(bool(m) for m in self.mirrored))
        if not self.names or len(self.names) != len(self.mirrored):
            raise ValueError(f"LesionSource needs one mirrored flag per mask, got "
                             f"{self.names} and {self.mirrored}")
        unknown = [n for n in self.names if n not in lesion_mask_names()]
        if unknown:
            raise ValueError(f"no embedded lesion mask {unknown[0]!r}")

    @property
    def label(self):
        """``patient12``, ``patient12-mirrored``, ``patient03+patient20-mirrored``."""
        return "+".join(n + ("-mirrored" if m else "") for n, m in zip(self.names, self.mirrored))


_LESION_SOURCE_STREAM = 3  # lesion_sources' random numbers: their own stream of the seed


def lesion_sources(n_subjects, seed=0):
    """The real lesions of each subject of a version-3 data set.

    Up to 27 subjects, each carries a different patient's mask: the masks,
    sorted by lesion load, are cut into ``n_subjects`` strata of neighbouring
    loads and one is drawn from each (so the lightest and heaviest loads the
    paper's figures need are always there), then dealt to subjects in random
    order. More subjects vary the real shapes without inventing any: the
    next 27 carry every mask mirrored left-right, and the rest the union of
    two different patients' lesions (each mirrored or not at random), kept to
    white matter like any other.

    Args:
        n_subjects: number of subjects.
        seed: the data set's seed (int).

    Returns:
        list of ``LesionSource``, one per subject.
    """
    from tversky_keras.data.lesion_atlas import lesion_mask_loads

    if n_subjects < 1:
        raise ValueError(f"n_subjects must be at least 1, got {n_subjects}")
    rng = np.random.default_rng([seed, _LESION_SOURCE_STREAM])
    loads = lesion_mask_loads()
    by_load = sorted(loads, key=loads.get)
    picked = [rng.choice(stratum) for stratum in
              np.array_split(np.array(by_load), min(n_subjects, len(by_load)))]
    sources = [LesionSource((str(name),), (False,)) for name in rng.permutation(picked)]
    if n_subjects > len(by_load):
        mirrored = rng.permutation(by_load)[:n_subjects - len(by_load)]
        sources += [LesionSource((str(name),), (True,)) for name in mirrored]
    while len(sources) < n_subjects:
        first, second = rng.choice(len(by_load), size=2, replace=False)
        sources.append(LesionSource((by_load[first], by_load[second]),
                                    tuple(rng.uniform(size=2) < 0.5)))
    return sources


def _lesion_prior(source, points, spacing):
    """How much of each voxel the source's lesions fill, at the template-grid
    coordinates ``points`` (``_template(spacing)``'s voxels, a subject's warp).

    The 1-mm masks are sampled through MNI coordinates (the masks' grid is
    FSL's 182x218x182, the template's nilearn's 197x233x189), scaled to the
    template's size (``_LESION_MASK_BRAIN_SCALE``): once smoothed as the
    template is for this voxel size (the lesions' partial volume), and once
    as they are (whether the voxel's centre is in a lesion, which is what a
    real mask resampled to the grid keeps: nearest neighbour in ``load_subject``).

    Returns:
        ``(share, centre)``, float32 arrays of the shape of ``points[0]``.
    """
    from tversky_keras.data.lesion_atlas import read_lesion_mask

    affine = _template(float(spacing)).affine
    shape = points.shape[1:]
    world = affine[:3, :3] @ points.reshape(3, -1) + affine[:3, 3:]
    brain = np.argwhere(_template_1mm()[0] > 0)
    middle = (_template_1mm()[3] @ np.r_[(brain.min(0) + brain.max(0)) / 2, 1.0])[:3, None]
    world = middle + _LESION_MASK_BRAIN_SCALE * (world - middle)
    share, centre = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    for name, mirrored in zip(source.names, source.mirrored):
        mask, mask_affine = read_lesion_mask(name)
        # The symmetric template's midsagittal plane is MNI x = 0.
        where = world * np.array([[-1.0], [1.0], [1.0]]) if mirrored else world
        voxels = (np.linalg.inv(mask_affine)[:3, :3] @ where
                  + np.linalg.inv(mask_affine)[:3, 3:]).astype(np.float32)
        mask = mask.astype(np.float32)
        smoothed = ndimage.gaussian_filter(mask, max(spacing - 1.0, 0.0) / 2)
        share = np.maximum(share, ndimage.map_coordinates(smoothed, voxels, order=1)
                           .reshape(shape))
        centre = np.maximum(centre, ndimage.map_coordinates(mask, voxels, order=0)
                            .reshape(shape))
    return share, centre


def _real_lesions(rng, anatomy, spacing):
    """Lesion fraction per voxel, its mask, and the lesions' severity map, from
    the real lesions the anatomy carries (``_Anatomy.lesion_prior``).

    The template is an average brain, its white matter thinner than a
    patient's: of the 27 masks' lesion voxels, 30-87 % fall on its white
    matter (probability > 0.5) but 79-99 % on its parenchyma (grey + white).
    So lesions keep the share of each voxel that is parenchyma, lose what
    falls in CSF (sulci, widened ventricles), and are imaged as changed white
    matter wherever they lie. Each lesion (26-connected) has its own severity,
    log-normal as version 2's, patchy inside by +-20 %. The mask holds the
    voxels whose centre lies in a lesion (as a real mask resampled to the
    grid) and that are mostly parenchyma; the fraction, which the images
    draw, is the lesions' partial volume.
    """
    share, centre = anatomy.lesion_prior
    parenchyma = np.clip(anatomy.tissue["GM"] + anatomy.tissue["WM"], 0.0, 1.0)
    fraction = np.clip(share, 0.0, 1.0) * parenchyma
    mask = (centre >= 0.5) & (parenchyma >= 0.5)
    labels, count = ndimage.label(fraction > 0.05, structure=np.ones((3, 3, 3)))
    severity = np.exp(0.25 * rng.standard_normal(count + 1)).astype(np.float32)[labels]
    patches = 1 + 0.2 * _smooth_field(rng, mask.shape, spacing, 6.0)
    return fraction.astype(np.float32), mask, severity * np.clip(patches, 0.2, None)
