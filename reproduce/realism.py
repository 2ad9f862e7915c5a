"""How real does the phantom look? Its intensities next to real scans', region by region.

    python -m reproduce.realism [--data ../shared/data/mslub-mni] [--subjects 4] [--spacing 2]
                                [--seed 0] [--json OUT] [--baseline OLD.json]

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
"""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # the data package may import TensorFlow

import numpy as np  # noqa: E402
from nibabel.orientations import inv_ornt_aff  # noqa: E402
from scipy import ndimage, stats  # noqa: E402

from reproduce.report import markdown_head, markdown_row  # noqa: E402
from tversky_keras.atomic import write_json  # noqa: E402
from tversky_keras.data import (MODALITIES, discover_subjects, lesion_loads,  # noqa: E402
                                load_subject, synthesize_subject, zscore_in_brain)
from tversky_keras.data.phantom import mni152_tissue, subject_seed  # noqa: E402

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
    for index, load in enumerate(lesion_loads(n_subjects, seed)):
        subject = synthesize_subject(subject_seed(seed, index), spacing, load)
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="real subjects registered to MNI space")
    parser.add_argument("--subjects", type=int, default=4, help="phantom subjects")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spacing", type=float, default=2.0, help="voxel size in mm")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    parser.add_argument("--baseline", type=Path,
                        help="the --json of an earlier run, shown as 'before'")
    args = parser.parse_args(argv)
    if args.subjects < 1:
        parser.error(f"--subjects must be at least 1, got {args.subjects}")
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
