"""How real does the phantom look? Its intensities next to real scans', region by region.

    python -m reproduce.realism [--data ../shared/data/mslub-mni] [--subjects 4] [--spacing 2]
                                [--seed 0] [--json OUT] [--baseline OLD.json]
    python -m reproduce.realism --lesions [--subjects 15] [--spacing 2] [--seed 0] [--json OUT]
    python -m reproduce.realism --normalization [--data ...] [--spacing 2] [--json OUT]

A few phantom subjects (those ``synthesize_dataset(n_subjects=N, seed=S)``
writes) and every real subject under ``--data`` (registered to MNI space) are
put on one voxel size: the real scans with ``load_subject(...,
target_spacing=...)``, which z-scores each modality inside the brain, and the
phantom with ``zscore_in_brain``, as ``load_subject`` reads its files. Every
subject is then cut into the same regions, taken from the MNI152 template the
phantom is drawn from (``mni152_tissue``): CSF, GM and WM where the template's
probability is over 0.5, the cortex (grey matter within 15 mm of the brain's
surface), the periventricular band (within 5 mm of a lateral ventricle), and
the lesions. Lesion voxels, grown by one voxel, are left out of every region
but "lesion".

Printed as Markdown, per modality and region: the z-score median and
interquartile range of the phantom (its subjects pooled) and of each real
subject, and the 1-D Wasserstein distance between the phantom's distribution
and each real one, next to the distance between the real subjects themselves
(what "as close as two patients" means). A second table holds properties of
the images rather than of a region: fine texture and noise, slow white-matter
drift (bias field), how well the template's white matter fits the image, and
the white matter's tiny bright spots (voxels whose fine texture is over 3
robust SDs) with, for FLAIR's spots, what T1W and T2W show there (dark and
bright where a spot is lesion-like).
A third needs no template at all, as registration errors blur the regions of
real scans: brain z-score quantiles, the T2W and FLAIR medians of the voxels
that T1W calls GM-like and WM-like, the share of the cortex that is CSF-bright
in T2W (sulci), and the brain's outermost voxels (``intensity_statistics``).
``--baseline`` takes the JSON of an earlier run (``--json``) and adds its
phantom numbers as a "before" column.

The real subjects' lesion masks only set which voxels to leave out of the
tissue regions and the "lesion" row; nothing here is fitted to them.

``--lesions`` prints instead the lesions' geometry (``lesion_geometry``): their
count, load, sizes and sites, for the 27 real MSLUB masks embedded in the
package (at 1 mm, and resampled to ``--spacing`` as a pipeline would) and for
the first subjects of phantom versions 2 (ovoids) and 3 (real masks moved with
a deformed brain); median [IQR] over subjects. It needs no ``--data``.

``--normalization`` prints how far the lesions move the normalised intensity
of normal tissue (``normalization_shift``) under the z-score and under the
white-matter peak (``tversky_keras.data.normalize``), for phantom-v3 subjects
carrying the lightest, the quartiles' and the heaviest real loads, and for
``--data``'s subjects.
"""

import argparse
import functools
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # the data package may import TensorFlow

import numpy as np  # noqa: E402
from nibabel.orientations import inv_ornt_aff  # noqa: E402
from scipy import ndimage, stats  # noqa: E402

from reproduce.report import markdown_head, markdown_row, markdown_table  # noqa: E402
from tversky_keras.atomic import write_json  # noqa: E402
from tversky_keras.data import (MODALITIES, discover_subjects, load_subject,  # noqa: E402
                                zscore_in_brain)
from tversky_keras.data.lesion_atlas import (lesion_mask_loads, lesion_mask_names,  # noqa: E402
                                             read_lesion_mask)
from tversky_keras.data.normalize import normalize_in_brain  # noqa: E402
from tversky_keras.data.phantom import (LesionSource, dataset_subjects,  # noqa: E402
                                        mni152_tissue, subject_seed, synthesize_subject)

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mslub-mni"
PHANTOM = "phantom"
REGIONS = ("CSF", "GM", "WM", "cortex", "periventricular", "lesion")
CORTEX_DEPTH_MM = 15.0
PERIVENTRICULAR_MM = 5.0
TEXTURE_SIGMA_MM = 2.0   # what a Gaussian of this width removes is "fine texture"
DRIFT_SIGMA_MM = 20.0    # white matter smoothed this much is its slow drift
# Tiny bright spots in white matter: fine texture over 3 robust SDs above its
# median (a Gaussian texture has 1.3 per 1000).
BRIGHT_SPOTS = "bright spots (fine texture > 3 robust SD, per 1000 WM-core voxels)"
SPOT_SIGNATURE = "fine texture at FLAIR's bright spots (robust SDs)"
MAX_SAMPLES = 200_000    # per distribution, for the Wasserstein distances
# Lesion sites of the MAGNIMS criteria (Filippi et al., Lancet Neurol 2016):
# infratentorial lesions lie in the brainstem or cerebellum, periventricular
# ones touch the lateral ventricles, juxtacortical ones the cortex; the rest
# are deep. In that order, the first that fits: a lesion touching both the
# ventricles and the cortex is periventricular. "Touching" is read as within
# 3 mm of the MNI152 template's structure, which absorbs the registration of a
# real brain (and the phantom's deformation) to the template.
LESION_SITES = ("infratentorial", "periventricular", "juxtacortical", "deep")
SITE_TOLERANCE_MM = 3.0
TENTORIUM_Z_MM = -20.0   # the phantom's: lesions centred below this MNI z are infratentorial
PHANTOM_VERSIONS = (2, 3)
LESION_COLUMNS = (("lesions", "count"), ("load (mm^3)", "load_mm3"),
                  ("median lesion (mm^3)", "volume_median_mm3"),
                  ("p95 lesion (mm^3)", "volume_p95_mm3"))


def grid_affine(volume):
    """Voxel-to-world affine of a ``Volume``'s grid (canonical order, resampled, cropped)."""
    geometry = volume.geometry
    canonical = geometry.affine @ inv_ornt_aff(geometry.orientation, geometry.shape)
    zoom = np.array(geometry.grid.zoom)
    # Resampling maps voxel edges onto voxel edges (grid_mode), then the crop shifts.
    to_source = np.eye(4)
    to_source[:3, :3] = np.diag(1 / zoom)
    to_source[:3, 3] = (np.array(geometry.grid.offset) + 0.5) / zoom - 0.5
    return canonical @ to_source


def region_masks(affine, brain, lesion):
    """Boolean masks of ``REGIONS`` on a grid, from the MNI152 template."""
    template = mni152_tissue(affine, brain.shape)
    lesion = lesion.astype(bool)
    keep = brain & ~ndimage.binary_dilation(lesion)
    gm = template["GM"] > 0.5
    ventricle_distance = template["ventricle_distance_mm"]
    return {"CSF": keep & (template["CSF"] > 0.5), "GM": keep & gm,
            "WM": keep & (template["WM"] > 0.5),
            "cortex": keep & gm & (template["brain_depth_mm"] < CORTEX_DEPTH_MM),
            "periventricular": keep & (ventricle_distance > 0)
            & (ventricle_distance <= PERIVENTRICULAR_MM),
            "lesion": brain & lesion,
            "WM core": keep & ndimage.binary_erosion(template["WM"] > 0.9)}


def image_properties(z, regions, brain, spacing):
    """Texture, drift and template fit of one z-scored modality."""
    core = regions["WM core"]
    fine, spread = fine_texture(z, core, spacing)
    weights = ndimage.gaussian_filter(core.astype(np.float32), DRIFT_SIGMA_MM / spacing)
    drift = ndimage.gaussian_filter(np.where(core, z, 0), DRIFT_SIGMA_MM / spacing)
    drift = drift[core] / np.maximum(weights[core], 1e-6)
    return {"fine texture (robust SD in WM core)": spread,
            "WM drift (SD of WM smoothed 20 mm)": float(np.std(drift)),
            BRIGHT_SPOTS: float(1000 * np.mean(fine[core] > 3))}


def fine_texture(z, core, spacing):
    """Fine texture of one z-scored modality (what a 2-mm Gaussian removes), in robust
    SDs from its WM-core median, and that robust SD in z-score units."""
    fine = z - ndimage.gaussian_filter(z, TEXTURE_SIGMA_MM / spacing)
    values = fine[core]
    spread = 1.4826 * _mad(values)
    return (fine - np.median(values)) / max(spread, 1e-6), spread


def spot_signature(z, regions, spacing):
    """Median fine texture of each modality where FLAIR's is over 3 robust SDs
    in the WM core: lesion-like spots are dark in T1W and bright in T2W."""
    core = regions["WM core"]
    fine = [fine_texture(z[..., i], core, spacing)[0] for i in range(len(MODALITIES))]
    spots = core & (fine[MODALITIES.index("FLAIR")] > 3)
    return {m: float(np.median(fine[i][spots])) if spots.any() else float("nan")
            for i, m in enumerate(MODALITIES) if m != "FLAIR"}


def template_fit(t1_z, regions, brain):
    """Dice of the template's WM with the same number of the brightest T1 voxels.

    An intensity-only measure of how far the anatomy departs from the template:
    real brains after registration, or the phantom's deformed template.
    """
    wm = regions["WM"]
    values = t1_z[brain & ~regions["lesion"]]
    threshold = np.quantile(values, 1 - wm.sum() / values.size)
    bright = brain & (t1_z > threshold)
    return float(2 * (bright & wm).sum() / (bright.sum() + wm.sum()))


def intensity_statistics(z, brain, lesion, affine):
    """Brain z-score statistics of one subject (``z``: X, Y, Z, modality), outside
    its lesions grown by a voxel.

    Quantiles (10, 50, 90) per modality; the T2W and FLAIR medians of the
    voxels that T1W calls GM-like (z between -0.5 and 0.25) and WM-like (over
    0.6); the share of the template's cortex that is CSF-bright in T2W (z > 1,
    sulci); and the median of the brain's outermost voxels in T1W and T2W.
    """
    keep = brain & ~ndimage.binary_dilation(lesion > 0)
    values = z[keep]
    t1 = values[:, 0]
    stats = {}
    for i, modality in enumerate(MODALITIES):
        for q in (10, 50, 90):
            stats[f"{modality} q{q}"] = float(np.percentile(values[:, i], q))
    like = {"GM-like": (t1 > -0.5) & (t1 < 0.25), "WM-like": t1 > 0.6}
    for name, where in like.items():
        stats[f"T2W {name}"] = float(np.median(values[where, 1]))
        stats[f"FLAIR {name}"] = float(np.median(values[where, 2]))
    template = mni152_tissue(affine, brain.shape)
    cortex = keep & (template["GM"] > 0.5) & (template["brain_depth_mm"] < CORTEX_DEPTH_MM)
    stats["cortex T2W z > 1"] = float(np.mean(z[..., 1][cortex] > 1)) if cortex.any() else np.nan
    edge = brain & ~ndimage.binary_erosion(brain)
    for i, modality in enumerate(MODALITIES[:2]):
        stats[f"{modality} edge"] = float(np.median(z[..., i][edge]))
    return stats


def _mad(values):
    return float(np.median(np.abs(values - np.median(values))))


def subject_samples(z, brain, lesion, affine, spacing):
    """Region values and image properties of one subject (``z``: X, Y, Z, modality)."""
    regions = region_masks(affine, brain, lesion)
    values = {m: {r: z[..., i][regions[r]] for r in REGIONS} for i, m in enumerate(MODALITIES)}
    properties = {m: image_properties(z[..., i], regions, brain, spacing)
                  for i, m in enumerate(MODALITIES)}
    properties["T1W"]["template WM fit (Dice, T1)"] = template_fit(z[..., 0], regions, brain)
    for modality, value in spot_signature(z, regions, spacing).items():
        properties[modality][SPOT_SIGNATURE] = value
    return values, properties


def phantom_subjects(n_subjects, seed, spacing):
    """The first subjects of ``synthesize_dataset(n_subjects, seed, spacing)``, z-scored."""
    for index, subject in enumerate(dataset_subjects(n_subjects, seed, spacing)):
        brain = subject.images[MODALITIES[0]] != 0
        z = np.stack([zscore_in_brain(subject.images[m], brain) for m in MODALITIES], -1)
        yield f"synth{index:02d}", z, brain, subject.lesion, subject.affine


def real_subjects(data, spacing):
    for subject in discover_subjects(data):
        volume = load_subject(subject, target_spacing=spacing)
        yield subject.id, volume.image, volume.brain, volume.label, grid_affine(volume)


def summary(values):
    p5, p25, p50, p75, p95 = np.percentile(values, [5, 25, 50, 75, 95]) if values.size else [
        np.nan] * 5
    return {"median": float(p50), "p25": float(p25), "p75": float(p75), "p5": float(p5),
            "p95": float(p95), "n": int(values.size)}


def _subsample(values, rng):
    return rng.choice(values, MAX_SAMPLES, replace=False) if values.size > MAX_SAMPLES else values


def wasserstein(u, v, rng):
    if not (u.size and v.size):
        return float("nan")
    return float(stats.wasserstein_distance(_subsample(u, rng), _subsample(v, rng)))


def measure(data, n_subjects=4, seed=0, spacing=2.0):
    """Region statistics, Wasserstein distances and image properties, as a JSON-able dict."""
    samples, properties, intensity = {}, {}, {}
    phantom, phantom_intensity = [], []
    for _, z, brain, lesion, affine in phantom_subjects(n_subjects, seed, spacing):
        phantom.append(subject_samples(z, brain, lesion, affine, spacing))
        phantom_intensity.append(intensity_statistics(z, brain, lesion, affine))
    samples[PHANTOM] = {m: {r: np.concatenate([s[0][m][r] for s in phantom]) for r in REGIONS}
                        for m in MODALITIES}
    properties[PHANTOM] = {m: {k: float(np.mean([s[1][m][k] for s in phantom]))
                               for k in phantom[0][1][m]} for m in MODALITIES}
    intensity[PHANTOM] = {k: [s[k] for s in phantom_intensity] for k in phantom_intensity[0]}
    for name, z, brain, lesion, affine in real_subjects(data, spacing):
        samples[name], properties[name] = subject_samples(z, brain, lesion, affine, spacing)
        intensity[name] = intensity_statistics(z, brain, lesion, affine)
    real = [name for name in samples if name != PHANTOM]
    rng = np.random.default_rng(0)
    regions = {m: {r: {source: summary(samples[source][m][r]) for source in samples}
                   for r in REGIONS} for m in MODALITIES}
    distances = {m: {r: {**{name: wasserstein(samples[PHANTOM][m][r], samples[name][m][r], rng)
                            for name in real},
                         **{f"{a}-{b}": wasserstein(samples[a][m][r], samples[b][m][r], rng)
                            for i, a in enumerate(real) for b in real[i + 1:]}}
                     for r in REGIONS} for m in MODALITIES}
    return {"settings": {"data": str(data), "phantom_subjects": n_subjects, "seed": seed,
                         "spacing": spacing, "real_subjects": real},
            "regions": regions, "wasserstein": distances, "properties": properties,
            "intensity": intensity}


def mean_tissue_distance(result, source):
    """Mean Wasserstein distance of the phantom to ``source`` over every modality and
    every region but the lesions."""
    return float(np.mean([result["wasserstein"][m][r][source] for m in MODALITIES
                          for r in REGIONS if r != "lesion"]))


def _cell(s):
    return f"{s['median']:.2f} [{s['p25']:.2f}, {s['p75']:.2f}]"


def region_table(result, baseline=None):
    real = result["settings"]["real_subjects"]
    pairs = [k for k in result["wasserstein"][MODALITIES[0]][REGIONS[0]] if "-" in k]
    head = (["modality", "region"] + (["phantom before"] if baseline else []) + ["phantom"]
            + real + (["W1 before: " + ", ".join(real)] if baseline else [])
            + ["W1 to " + ", ".join(real)] + [f"W1 {p}" for p in pairs])
    lines = markdown_head(head)
    for m in MODALITIES:
        for r in REGIONS:
            stat, distance = result["regions"][m][r], result["wasserstein"][m][r]
            row = [m, r]
            if baseline:
                row.append(_cell(baseline["regions"][m][r][PHANTOM]))
            row += [_cell(stat[PHANTOM])] + [_cell(stat[name]) for name in real]
            if baseline:
                row.append(", ".join(f"{baseline['wasserstein'][m][r].get(n, np.nan):.2f}"
                                     for n in real))
            row += [", ".join(f"{distance[n]:.2f}" for n in real)]
            row += [f"{distance[p]:.2f}" for p in pairs]
            lines.append(markdown_row(row))
    return "\n".join(lines)


def property_table(result, baseline=None):
    sources = list(result["properties"])
    head = (["modality", "property"] + (["phantom before"] if baseline else []) + sources)
    lines = markdown_head(head)
    for m in MODALITIES:
        for key in result["properties"][PHANTOM][m]:
            row = [m, key]
            if baseline:
                row.append(f"{baseline['properties'][PHANTOM][m].get(key, np.nan):.3f}")
            row += [f"{result['properties'][s][m][key]:.3f}" for s in sources]
            lines.append(markdown_row(row))
    return "\n".join(lines)


def intensity_table(result, baseline=None):
    """Phantom subjects' range and each real subject's value, per statistic."""
    real = result["settings"]["real_subjects"]
    before = (baseline or {}).get("intensity", {}).get(PHANTOM)
    head = (["statistic"] + (["phantom before (min, max)"] if baseline else [])
            + ["phantom (min, max)"] + real)
    lines = markdown_head(head)

    def span(values):
        return f"{min(values):.2f}, {max(values):.2f}"

    for key, values in result["intensity"][PHANTOM].items():
        row = [key]
        if baseline:
            row.append(span(before[key]) if before and key in before else "-")
        row += [span(values)] + [f"{result['intensity'][name][key]:.2f}" for name in real]
        lines.append(markdown_row(row))
    return "\n".join(lines)


def report(result, baseline=None):
    settings = result["settings"]
    lines = [f"Phantom: {settings['phantom_subjects']} subjects (seed {settings['seed']}) vs "
             f"{', '.join(settings['real_subjects'])}, at {settings['spacing']:g} mm; "
             f"brain z-scores, median [IQR].", "", region_table(result, baseline), "",
             property_table(result, baseline), "", intensity_table(result, baseline), ""]
    for name in settings["real_subjects"]:
        line = (f"Mean W1 over modalities and tissue regions, phantom to {name}: "
                f"{mean_tissue_distance(result, name):.3f}")
        if baseline and name in baseline["settings"]["real_subjects"]:
            line += f" (before: {mean_tissue_distance(baseline, name):.3f})"
        lines.append(line)
    real = settings["real_subjects"]
    for i, a in enumerate(real):
        for b in real[i + 1:]:
            lines.append(f"Mean W1, {a} to {b}: {mean_tissue_distance(result, f'{a}-{b}'):.3f}")
    return "\n".join(lines)


def lesion_geometry(mask, affine):
    """Count, load, sizes and sites of the lesions of one binary mask on an MNI grid.

    A lesion is a 26-connected component. Each lesion gets one site of
    ``LESION_SITES``, the first that fits: infratentorial (its centroid below
    MNI z = ``TENTORIUM_Z_MM``), periventricular (a voxel within
    ``SITE_TOLERANCE_MM`` of the template's lateral ventricles), juxtacortical
    (a voxel within ``SITE_TOLERANCE_MM`` of the template's cortex: grey
    matter, probability over 0.5, less than ``CORTEX_DEPTH_MM`` below the
    brain's surface), else deep.

    Args:
        mask: 3D array, non-zero where there is lesion.
        affine: the grid's 4x4 voxel-to-MNI-millimetre affine (any voxel size).

    Returns:
        dict: ``count``; ``load_mm3``; ``volume_p25_mm3``,
        ``volume_median_mm3``, ``volume_p75_mm3``, ``volume_p95_mm3`` (the
        lesions' volumes, NaN without lesions); ``by_count`` and ``by_volume``:
        site -> share of the lesions, and of the load, at that site (NaN
        without lesions).
    """
    mask = np.asarray(mask) > 0
    affine = np.asarray(affine, float)
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    voxels = np.nonzero(mask)
    lesion_of = labels[voxels] - 1
    volumes = np.bincount(lesion_of, minlength=count) * np.prod(voxel_size(affine))
    z_mm = affine[2, :3] @ np.array(voxels) + affine[2, 3]
    centroid_z = np.bincount(lesion_of, z_mm, count) / np.maximum(np.bincount(lesion_of), 1)

    def touches(near):
        return np.bincount(lesion_of, near[voxels], count) > 0

    near_ventricles, near_cortex = lesion_site_maps(affine, mask.shape)
    site = np.select([centroid_z < TENTORIUM_Z_MM, touches(near_ventricles),
                      touches(near_cortex)], [0, 1, 2], 3)
    quartiles = np.percentile(volumes, [25, 50, 75, 95]) if count else [np.nan] * 4
    shares = {"by_count": {}, "by_volume": {}}
    for index, name in enumerate(LESION_SITES):
        shares["by_count"][name] = float(np.mean(site == index)) if count else np.nan
        shares["by_volume"][name] = (float(volumes[site == index].sum() / volumes.sum())
                                     if count else np.nan)
    return {"count": int(count), "load_mm3": float(volumes.sum()),
            **{f"volume_{q}_mm3": float(v) for q, v in zip(("p25", "median", "p75", "p95"),
                                                            quartiles)},
            **shares}


def voxel_size(affine):
    """The voxel's edge lengths in mm along the grid's axes (an affine without shear)."""
    return np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)


def lesion_site_maps(affine, shape):
    """Where a lesion voxel makes its lesion periventricular, and where juxtacortical
    (``lesion_geometry``), on a grid in MNI space: two read-only boolean arrays of
    ``shape``, cached per grid."""
    return _lesion_site_maps(np.asarray(affine, float).tobytes(), tuple(int(n) for n in shape))


@functools.lru_cache(maxsize=4)
def _lesion_site_maps(affine_bytes, shape):
    affine = np.frombuffer(affine_bytes).reshape(4, 4)
    template = mni152_tissue(affine, shape)
    cortex = (template["GM"] > 0.5) & (template["brain_depth_mm"] < CORTEX_DEPTH_MM)
    near_cortex = np.zeros(shape, bool)
    if cortex.any():
        near_cortex = (ndimage.distance_transform_edt(~cortex, sampling=voxel_size(affine))
                       <= SITE_TOLERANCE_MM)
    near_ventricles = template["ventricle_distance_mm"] <= SITE_TOLERANCE_MM
    for near in (near_ventricles, near_cortex):
        near.setflags(write=False)
    return near_ventricles, near_cortex


def coarsen_mask(mask, affine, spacing):
    """A lesion mask on a coarser grid: lesion where at least half of a new voxel is.

    The new grid covers the old one's field of view, its outer voxel edges on
    the old ones' (as ``load_subject`` resamples), with ``round(n * old voxel
    size / spacing)`` voxels along an axis of ``n``; a new voxel's lesion share
    is the exact overlap of the old lesion voxels with it.

    Args:
        mask: 3D array, non-zero where there is lesion.
        affine: its 4x4 voxel-to-world affine.
        spacing: the new voxel size in mm.

    Returns:
        ``(bool array, 4x4 voxel-to-world affine of the new grid)``.
    """
    affine = np.asarray(affine, float)
    share = (np.asarray(mask) > 0).astype(np.float32)
    to_old = np.eye(4)
    for axis, voxel_mm in enumerate(voxel_size(affine)):
        n = share.shape[axis]
        size = max(1, round(n * voxel_mm / spacing))
        share = np.moveaxis(np.tensordot(_overlap(n, size), share, axes=(1, axis)), 0, axis)
        to_old[axis, axis] = n / size
        to_old[axis, 3] = n / size / 2 - 0.5
    return share >= 0.5, affine @ to_old


def _overlap(n, size):
    """``(size, n)`` float32: the share of each of ``size`` equal new voxels, laid over
    ``n`` old ones, that each old voxel covers."""
    new_edges = np.arange(size + 1) * (n / size)
    old_edges = np.arange(n + 1)
    overlap = (np.minimum(new_edges[1:, None], old_edges[None, 1:])
               - np.maximum(new_edges[:-1, None], old_edges[None, :-1]))
    return (np.clip(overlap, 0, None) * (size / n)).astype(np.float32)


def real_lesion_masks(spacing=1.0):
    """The embedded real masks (MSLUB, MNI 1 mm) at ``spacing``: ``(name, mask, affine)``."""
    for name in lesion_mask_names():
        mask, affine = read_lesion_mask(name)
        if not np.allclose(voxel_size(affine), spacing):
            mask, affine = coarsen_mask(mask, affine, spacing)
        yield name, mask, affine


def phantom_lesion_masks(n_subjects, seed, spacing, version):
    """The lesion masks of the first subjects of a phantom data set of ``version``:
    ``(id, mask, affine)``."""
    for index, subject in enumerate(dataset_subjects(n_subjects, seed, spacing, version)):
        yield f"synth{index:02d}", subject.lesion, subject.affine


def measure_lesions(n_subjects=15, seed=0, spacing=2.0, versions=PHANTOM_VERSIONS):
    """``lesion_geometry`` of the real masks (at 1 mm and ``spacing``) and of
    ``n_subjects`` phantom subjects of each version (at ``spacing``), as a JSON-able
    dict: ``settings`` and ``lesions``: source -> subject -> geometry."""
    sources = {}
    for mm in sorted({1.0, float(spacing)}):
        sources[f"real masks, {mm:g} mm"] = {name: lesion_geometry(mask, affine) for
                                             name, mask, affine in real_lesion_masks(mm)}
    for version in versions:
        sources[f"phantom v{version}, {spacing:g} mm"] = {
            name: lesion_geometry(mask, affine) for name, mask, affine
            in phantom_lesion_masks(n_subjects, seed, spacing, version)}
    return {"settings": {"phantom_subjects": n_subjects, "seed": seed, "spacing": spacing,
                         "phantom_versions": list(versions)},
            "lesions": sources}


def _median_iqr(values, scale=1.0):
    p25, p50, p75 = scale * np.nanpercentile(np.asarray(values, float), [25, 50, 75])
    return f"{p50:.0f} [{p25:.0f}, {p75:.0f}]"


def lesion_report(result):
    """The lesion geometry of ``measure_lesions`` as a Markdown table, a row per source."""
    head = (["source", "subjects"] + [label for label, _ in LESION_COLUMNS]
            + [f"{site} % ({by})" for by in ("count", "volume") for site in LESION_SITES])
    rows = []
    for source, subjects in result["lesions"].items():
        geometries = list(subjects.values())
        row = [source, len(geometries)]
        row += [_median_iqr([g[key] for g in geometries]) for _, key in LESION_COLUMNS]
        row += [_median_iqr([g[f"by_{by}"][site] for g in geometries], 100)
                for by in ("count", "volume") for site in LESION_SITES]
        rows.append(row)
    return "\n".join([
        "Lesion geometry: median [IQR] over subjects. Lesions are 26-connected; each has the "
        "first site that fits of " + ", ".join(LESION_SITES) + " (MAGNIMS sites on the "
        f"MNI152 template, {SITE_TOLERANCE_MM:g} mm tolerance), as a % of the lesions "
        "(count) and of the load (volume).", "", markdown_table(head, rows)])


# --- does the normalisation move with the lesion load? ----------------------------

# The whole-brain normalisations this measures (wm-peak-core reads wm-peak's statistics
# over the brain's core: the invariance suite's lesion-load cell measures it).
SHIFT_METHODS = ("zscore", "wm-peak")

def normalization_shift(image, brain, lesion, method):
    """How far the lesions move normal tissue under ``method``: the median of the
    normalised normal tissue (brain minus the lesions grown by a voxel) when the
    whole brain sets the statistics, minus the same when only normal tissue does."""
    normal = brain & ~ndimage.binary_dilation(lesion)
    with_lesions = normalize_in_brain(image, brain, method)[normal]
    without = normalize_in_brain(image, normal, method)[normal]
    return float(np.median(with_lesions) - np.median(without))


def measure_normalization(data, spacing=2.0, seed=0):
    """``normalization_shift`` of both methods for phantom-v3 subjects carrying the
    lightest, the quartiles' and the heaviest real loads, and each real subject of
    ``data`` (raw intensities at their own resolution)."""
    loads = lesion_mask_loads()
    by_load = sorted(loads, key=loads.get)
    picks = [by_load[round(q * (len(by_load) - 1))] for q in (0.0, 0.25, 0.5, 0.75, 1.0)]
    sources = []
    for index, name in enumerate(picks):
        subject = synthesize_subject(subject_seed(seed, index), spacing, version=3,
                                     lesion_source=LesionSource((name,), (False,)))
        brain = subject.images[MODALITIES[0]] != 0
        sources.append((f"phantom v3 ({name})", [subject.images[m] for m in MODALITIES], brain,
                        subject.lesion > 0))
    if data is not None and Path(data).exists():
        for subject in discover_subjects(data):
            volume = load_subject(subject, normalize=False)
            sources.append((f"{subject.id} (real)", [volume.image[..., i] for i in
                                                     range(len(MODALITIES))],
                            volume.brain.astype(bool), volume.label.astype(bool)))
    rows = []
    for name, images, brain, lesion in sources:
        for modality, image in zip(MODALITIES, images):
            rows.append({"source": name, "lesion_share": float(lesion.sum() / brain.sum()),
                         "modality": modality,
                         **{method: normalization_shift(image, brain, lesion, method)
                            for method in SHIFT_METHODS}})
    return {"settings": {"data": None if data is None else str(data), "spacing": spacing,
                         "seed": seed}, "rows": rows}


def normalization_report(result):
    head = ["source", "lesions (% of brain)", "modality",
            *[f"shift of normal tissue, {m}" for m in SHIFT_METHODS]]
    rows = [[r["source"], f"{100 * r['lesion_share']:.2f}", r["modality"],
             *[f"{r[m]:+.3f}" for m in SHIFT_METHODS]] for r in result["rows"]]
    return ("How far the lesions move normal tissue's normalised intensity (median, in units "
            "of each method's scale): statistics of the whole brain minus those of the brain "
            "without its lesions.\n\n" + markdown_table(head, rows))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m reproduce.realism",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="real subjects registered to MNI space")
    parser.add_argument("--subjects", type=int,
                        help="phantom subjects (default: 4; with --lesions, 15 of each version)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spacing", type=float, default=2.0, help="voxel size in mm")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    parser.add_argument("--baseline", type=Path,
                        help="the --json of an earlier run, shown as 'before'")
    parser.add_argument("--lesions", action="store_true",
                        help="only the lesion geometry of the real masks and the phantom; "
                             "needs no --data")
    parser.add_argument("--normalization", action="store_true",
                        help="only how far lesions move normal tissue's normalised intensity, "
                             "z-score vs white-matter peak (phantom v3 at five real loads, and "
                             "--data's subjects when present)")
    args = parser.parse_args(argv)
    if args.subjects is None:
        args.subjects = 15 if args.lesions else 4
    if args.subjects < 1:
        parser.error(f"--subjects must be at least 1, got {args.subjects}")
    if args.normalization:
        result = measure_normalization(args.data, args.spacing, args.seed)
        print(normalization_report(result))
    elif args.lesions:
        if args.baseline:
            parser.error("--baseline goes with the intensity tables, not with --lesions")
        result = measure_lesions(args.subjects, args.seed, args.spacing)
        print(lesion_report(result))
    else:
        if not args.data.exists():
            parser.error(f"no real data at {args.data}")
        baseline = json.loads(args.baseline.read_text()) if args.baseline else None
        result = measure(args.data, args.subjects, args.seed, args.spacing)
        print(report(result, baseline))
    if args.json:
        write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
