"""The README's result tables, rendered from the committed result files.

    python -m reproduce.readme_tables                      # print the tables
    python -m reproduce.readme_tables --readme README.md   # put them into README.md
    python -m reproduce.readme_tables --check README.md    # exit 1 if README.md differs
    python -m reproduce.readme_tables --docs docs/results  # write the docs' results pages
    python -m reproduce.readme_tables --check-docs docs/results  # exit 1 if a page differs

Each table sits between two marker lines (in the README, the blocks it holds;
on the docs' results pages, all of them), so that its numbers come from the
files, never typed:

- ``sim2real-v3``: each ``figures/sim2real-v3/<name>-seeds.json`` that
  ``python -m reproduce.sim2real --seeds N`` wrote is one row: the variant, and
  per real subject the mean ± std over the training seeds of DSC, sensitivity
  and specificity, with how many seeds beat the subject's FLAIR-threshold oracle.
- ``table1-v3``: ``figures/phantom-v3-quick/phantom-v3-quick-seeds.json``, the
  mean ± std over seeds of Table 1 on phantom version 3 (``python -m
  reproduce.table1 --seeds 5``), next to the paper's Table 1.
- ``retention``: ``figures/sim2real-grid-v3/retention.json``, what ``python -m
  reproduce.sim2real_grid --ensemble --mirror x --uncertainty`` wrote: the areas
  under each row's ensemble's retention curves on the real patients, against the
  ideal and random rankings, and how false and correct lesions rank.
- ``cpu-kinds``: ``benchmarks/cpu-kinds.json``, what ``python -m benchmarks.cpu_kinds``
  wrote: the quick training step under oneDNN, Eigen, JAX and PyTorch, with the machine.
- ``benchmarks``: ``benchmarks/results.json``, what ``python -m benchmarks`` wrote: when,
  where and how it ran, then a table per section of its rows and the loss values.
"""

import argparse
import json
import re
import sys
from pathlib import Path

from reproduce import report

FIGURES = Path(__file__).resolve().parents[1] / "figures"
SIM2REAL = FIGURES / "sim2real-v3"
TABLE1_SEEDS = FIGURES / "phantom-v3-quick" / "phantom-v3-quick-seeds.json"
BENCHMARKS = FIGURES.parent / "benchmarks" / "results.json"
GRID_VERSIONS = FIGURES.parent / "benchmarks" / "grid-versions.json"
CPU_KINDS = FIGURES.parent / "benchmarks" / "cpu-kinds.json"
RETENTION = FIGURES / "sim2real-grid-v3" / "retention.json"
HISTOGRAMS = SIM2REAL / "histograms.json"


def markers(block):
    """The lines that open and close a block in the README."""
    return (f"<!-- {block} table: python -m reproduce.readme_tables --readme README.md -->",
            f"<!-- end of {block} table -->")


def variant_label(variant):
    """``v3 randomized (60 subjects), wm-peak, + mirror x`` and so on."""
    label = (f"v{variant['phantom_version']} {variant['recipe']['name']} "
             f"({variant['phantom_subjects']} subjects, {variant['phantom_spacing']:g} mm)")
    if variant["intensity_normalization"] != "zscore":
        label += f", {variant['intensity_normalization']} normalisation"
    if variant["intensity_augmentation"]:
        label += ", + nnU-Net intensity augmentation"
    if variant.get("foreground_ratio"):
        label += f", {variant['foreground_ratio']:g} of patches on lesions"
    if variant.get("ce_weight"):
        label += f", + {variant['ce_weight']:g} x cross-entropy"
    if variant["mirror_axes"]:
        label += ", + mirroring " + ",".join("xyz"[a] for a in variant["mirror_axes"])
    if variant.get("threshold_union_k") is not None:
        core = variant.get("threshold_union_core_mm")
        label += (f", ∪ FLAIR threshold (k = {variant['threshold_union_k']:.2f} from the "
                  f"phantom" + ("" if core is None else f"; core statistics, {core:g} mm")
                  + ")")
    if variant.get("ensemble"):
        label += f", ensemble of {variant['ensemble']} seeds' networks"
    if variant.get("profile", "quick") != "quick":
        label += f"; {variant['profile']} profile ({variant['steps']:,} steps)"
    return label


def summaries(folder):
    """Every sim2real ``*-seeds.json`` in ``folder``, by file name (the invariance suite's
    ``robustness-*`` summaries have their own page)."""
    return {path.name: json.loads(path.read_text())
            for path in sorted(Path(folder).glob("*-seeds.json"))
            if not path.name.startswith("robustness-")}


def render_sim2real(folder=SIM2REAL):
    """The Markdown table of every summary in ``folder``, then the oracle row."""
    found = summaries(folder)
    if not found:
        raise ValueError(f"{folder}: no *-seeds.json (python -m reproduce.sim2real --seeds N "
                         f"writes them into results/)")
    subject_ids = sorted(next(iter(found.values()))["subjects"])
    head = ["variant", "file", "seeds"]
    for subject_id in subject_ids:
        head += [f"{subject_id} DSC (seeds above oracle)", f"{subject_id} sensitivity",
                 f"{subject_id} specificity"]
    head.append("training s / seed (median; an ensemble: all its seeds)")

    rows = []
    for name, summary in found.items():
        n = len(summary["seeds"])

        def cell(value, n=n):  # one run (an ensemble) has no spread
            mean = f"{100 * value['mean']:.2f}"
            return mean if n == 1 else f"{mean} ± {100 * value['std']:.2f}"

        row = [variant_label(summary["variant"]), f"`{name}`", n]
        for subject_id in subject_ids:
            s = summary["subjects"][subject_id]
            row += [f"{cell(s['dsc'])} ({s['above_oracle']}/{n})", cell(s["sensitivity"]),
                    cell(s["specificity"])]
        times = sorted(summary["seconds"]["training"])
        row.append(f"{times[len(times) // 2]:.0f}")
        rows.append(row)
    first = next(iter(found.values()))
    oracle = ["FLAIR-threshold oracle (best single threshold, answer known)", "", ""]
    for subject_id in subject_ids:
        oracle += [report.percent(first["subjects"][subject_id]["threshold_dsc"]), "", ""]
    rows.append(oracle + [""])
    rows += baseline_rows(found, subject_ids)
    return report.markdown_table(head, rows)


# The default sim2real recipe's summary (python -m reproduce.sim2real --data PATH --seeds 5):
# its networks' masks united with the phantom-k FLAIR threshold; the networks alone beside it.
DEFAULT_SIM2REAL = "sim2real-quick-v3-randomized-rim-wmpeak-ce1-mirror-x-union-seeds.json"


# The README sentence's baselines, in order; the core-statistics ones where recorded.
BASELINE_LABELS = {"leave_one_out": "k from the other patient",
                   "phantom": "k from the phantom",
                   "leave_one_out_core": "core statistics, k from the other patient",
                   "phantom_core": "core statistics, k from the phantom"}


def network_alone_name(name):
    """The ``-seeds.json`` of the same networks without the threshold union."""
    return re.sub(r"-union(-core[0-9.]+)?-seeds\.json$", "-seeds.json", name)


def render_sim2real_baselines(folder=SIM2REAL):
    """The README's sentence on the default sim-to-real recipe against the FLAIR-threshold
    baselines, from its committed ``-seeds.json`` (which records the baselines), with the
    same networks alone where their summary is committed too."""
    path = Path(folder) / DEFAULT_SIM2REAL
    summary = json.loads(path.read_text()) if path.is_file() else {}
    baselines = summary.get("baselines")
    if not baselines:
        return (f"(No committed run of the default recipe with its baselines yet: "
                f"`figures/sim2real-v3/{DEFAULT_SIM2REAL}` from `python -m reproduce.sim2real "
                f"--data PATH --seeds 5`.)")
    n = len(summary["seeds"])
    parts, beaten = [], []
    for subject_id, s in sorted(summary["subjects"].items()):
        methods = baselines["subjects"][subject_id]
        shown = {key: methods[key] for key in BASELINE_LABELS if key in methods}
        parts.append(f"{subject_id} {_mean_std(s['dsc'])} "
                     f"against " + ", ".join(
                         f"{100 * scores['dsc']:.1f} ({BASELINE_LABELS[key]})"
                         for key, scores in shown.items() if scores is not None))
        beaten.append(all(s["dsc"]["mean"] > scores["dsc"] for scores in shown.values()
                          if scores is not None))
    verdict = ("beats every baseline on every development patient" if all(beaten) else
               "does **not** beat every baseline on every development patient")
    union = summary.get("variant", {}).get("threshold_union_k")
    core = summary.get("variant", {}).get("threshold_union_core_mm")
    alone_path = Path(folder) / network_alone_name(DEFAULT_SIM2REAL)
    networks = summary
    if union is not None and alone_path.is_file():
        networks = json.loads(alone_path.read_text())
        verdict += ("; the same networks alone score " + "; ".join(
            f"{subject_id} {_mean_std(s['dsc'])}"
            for subject_id, s in sorted(networks["subjects"].items())))
    called_nothing = sum(all(s["sensitivity"]["values"][i] == 0 for s in
                             networks["subjects"].values())
                         for i in range(len(networks["seeds"])))
    if called_nothing:
        verdict += (f"; {called_nothing} of the {len(networks['seeds'])} seeds' networks "
                    f"called no lesion at all (a collapsed training), which the means include")
    above = _stronger_elsewhere(folder, summary)
    if above:
        verdict += ("; but a threshold of another committed phantom scores higher on "
                    + "; ".join(above))
    what = ("the default recipe" if union is None else
            f"the default recipe, each network's mask united with the FLAIR threshold "
            f"z >= {union:.2f}" + ("" if core is None else
                                   f" (its mean and std from the brain deeper than {core:g} mm)")
            + " whose k was chosen on the phantom alone,")
    return (f"On the two development patients, {what} scores a DSC (percent, mean ± std "
            f"over {n} training seeds) of {'; '.join(parts)}, the FLAIR-threshold baselines "
            f"(brain z-score >= k): it {verdict}. These patients chose the recipe; see the "
            f"[sim-to-real results](docs/results/sim2real.md).")


def _stronger_elsewhere(folder, summary):
    """Per subject, the best FLAIR-threshold baseline of every committed summary (any
    phantom's k, either statistics), where it scores above the default's mean DSC."""
    best = {}
    for other in summaries(folder).values():
        recipe = other.get("variant", {}).get("recipe", {}).get("name", "?")
        for subject_id, methods in (other.get("baselines") or {}).get("subjects", {}).items():
            for key, scores in methods.items():
                if scores is not None and scores["dsc"] > best.get(subject_id, (0, ""))[0]:
                    where = ("" if key.startswith("leave_one_out") else
                             f", the {recipe} phantom's k = {scores['k']:.2f}")
                    best[subject_id] = (scores["dsc"], f"{BASELINE_LABELS[key]}{where}")
    return [f"{subject_id} {100 * dsc:.1f} ({label})"
            for subject_id, (dsc, label) in sorted(best.items())
            if dsc > summary["subjects"].get(subject_id, {}).get("dsc", {}).get("mean", 1.0)]


def _mean_std(value):
    return f"{100 * value['mean']:.1f} ± {100 * value['std']:.1f}"


def baseline_rows(found, subject_ids):
    """The FLAIR-threshold baselines (``reproduce.scoring.threshold_baselines``) of the
    summaries that recorded them: k from the other subject(s) once (it depends on the
    real data alone), k from the phantom once per phantom (its version, recipe and size)."""
    rows, seen = [], set()
    for name, summary in found.items():
        baselines = summary.get("baselines")
        if not baselines:
            continue
        variant = summary["variant"]
        phantom = (f"v{variant['phantom_version']} {variant['recipe']['name']}, "
                   f"{variant['phantom_subjects']} subjects, {variant['phantom_spacing']:g} mm")
        core = (f"core statistics (brain deeper than {baselines['core_mm']:g} mm), "
                if "core_mm" in baselines else "")
        rows_of = [("leave_one_out", "FLAIR threshold, k chosen on the other subject(s)"),
                   ("phantom", f"FLAIR threshold, k chosen on the phantom ({phantom}; "
                               f"k = {baselines['phantom_k']:.2f})")]
        if core:
            rows_of += [("leave_one_out_core", f"FLAIR threshold, {core}k chosen on the other "
                                               f"subject(s)"),
                        ("phantom_core", f"FLAIR threshold, {core}k chosen on the phantom "
                                         f"({phantom}; k = {baselines['phantom_core_k']:.2f})")]
        for key, label in rows_of:
            if label in seen:
                continue
            seen.add(label)
            row = [label, f"`{name}`", ""]
            for subject_id in subject_ids:
                scores = baselines["subjects"].get(subject_id, {}).get(key)
                row += (["n/a", "", ""] if scores is None else
                        [f"{report.percent(scores['dsc'])} (k = {scores['k']:.2f})",
                         report.percent(scores["sensitivity"]),
                         report.percent(scores["specificity"])])
            rows.append(row + [""])
    return rows


def render_table1(path=TABLE1_SEEDS):
    """Table 1 over seeds (``reproduce.table1 --seeds N``'s JSON) beside the paper's, with
    when, where and how it was made."""
    from reproduce.experiment import METRICS, PAPER_TABLE1
    from reproduce.table import LABELS

    path = Path(path)
    if not path.is_file():
        shown = path.relative_to(FIGURES.parent) if path.is_relative_to(FIGURES.parent) else path
        return (f"(No committed run yet: `{shown}` is what `python -m reproduce.table1 "
                f"--seeds 5` writes into results/, copied there.)")
    summary = json.loads(Path(path).read_text())
    head = ["penalties", "seeds", "collapsed cells"] + [
        f"{LABELS[m]} ours / paper" for m in METRICS]
    rows = [[f"a={row['alpha']:g}, b={row['beta']:g}", row["n_seeds"], row["collapsed_cells"]]
            + [f"{report.percent(row['mean'][m])} ± {report.percent(row['std'][m])} / "
               f"{PAPER_TABLE1[(row['alpha'], row['beta'])][i]:.2f}"
               for i, m in enumerate(METRICS)]
            for row in summary["rows"]]
    made = summary["made"]
    per_seed = ", ".join(f"{seconds / 60:.1f}" for seconds in summary["cell_seconds"])
    return (report.markdown_table(head, rows) + f"\n\nMade by `{' '.join(made['command'])}` "
            f"(assembled on {made['date'][:10]} at commit {made['commit'][:7]}, "
            f"{made['machine']['cores']} cores of an {made['machine']['cpu']}); its cells took "
            f"{per_seed} min per seed's grid of 10 (their own times, without the phantom's "
            f"generation and the figures).")


def render_grid_versions(path=GRID_VERSIONS):
    """The default grid's cells on phantom v2 and v3, timed back to back
    (``python -m benchmarks.bench_grid_versions``'s JSON)."""
    path = Path(path)
    if not path.is_file():
        return ("(No committed timing yet: `python -m benchmarks.bench_grid_versions --json "
                "benchmarks/grid-versions.json` writes it.)")
    timing = json.loads(path.read_text())
    made = timing["made"]
    has_cpu = all("cpu_seconds" in run for run in timing["runs"])  # recorded since 2026-12-03
    rows = [[index, f"v{run['version']}", ", ".join(f"{cell} {seconds:.1f}" for cell, seconds
                                                    in run["cells"].items())]
            + ([f"{run['cpu_seconds']:.1f}"] if has_cpu else [])
            for index, run in enumerate(timing["runs"])]
    totals = timing["total_seconds"]
    cpu = (f" Command CPU time (all threads, user + system) v3 / v2: "
           f"{timing['cpu_ratio_v3_over_v2']:.3f} ({timing['cpu_seconds']['v3']:.1f} s against "
           f"{timing['cpu_seconds']['v2']:.1f} s)." if has_cpu else "")
    return ("Time on the same machine, back to back: the same cells of the "
            f"{timing.get('profile', 'quick')} grid trained on each phantom version in "
            f"turn, v2 then v3 then v3 then v2 (`{' '.join(made['command'])}`, "
            f"{made['date'][:10]}, commit {made['commit'][:7]}"
            f"{' with uncommitted changes' if made.get('uncommitted_changes') else ''}, "
            f"{made['machine']['cores']} "
            f"cores of an {made['machine']['cpu']}):\n\n"
            + report.markdown_table(["run", "phantom", "cell seconds"]
                                    + (["command CPU seconds"] if has_cpu else []), rows)
            + f"\n\nv3 / v2: {timing['ratio_v3_over_v2']:.3f} ({totals['v3']:.1f} s against "
              f"{totals['v2']:.1f} s in all).{cpu}")


def benchmark_machine(run):
    """One paragraph: the command, when it finished, the commit, the machine, the versions
    and how busy the machine was, as ``python -m benchmarks``'s JSON records them."""
    machine, versions = run["machine"], dict(run["versions"])
    date = run["date"]
    commit = f"at commit {run['commit'][:7]}" if run.get("commit") else "(no commit recorded)"
    cpu = (f"{machine['cores']} cores of an {machine['cpu']}, {machine['clock_mhz']:.0f} MHz "
           f"({machine['clock_source']}), fp32 peak {machine['fp32_peak_gflops']:.0f} GFLOP/s "
           f"at {machine['fp32_peak_flops_per_cycle']} flops per cycle and core, "
           f"{machine['fp32_peak_gflops_avx512']:.0f} with AVX-512 "
           f"({'present' if machine['avx512'] else 'absent'})")
    if machine.get("gemm_gflops") is not None:
        cpu += f", a 1024² fp32 NumPy GEMM at {machine['gemm_gflops']:g} GFLOP/s"
    backend = versions.pop("keras_backend", None)
    installed = ", ".join(f"{name} {version}" + (f" (backend {backend})" if name == "keras"
                                                   else "")
                          for name, version in versions.items() if version is not None)
    missing = [name for name, version in versions.items() if version is None]
    if missing:
        installed += f"; not installed: {', '.join(missing)}"
    return (f"Made by `{run['command'].strip()}`, finished {date[:10]} at {date[11:16]} "
            f"{date[19:]} {commit}, in {run['wall_s']:.0f} s. Machine: {cpu}. "
            f"Versions: {installed}. 1-minute load average {run['before']['load_average'][0]:.2f} "
            f"before, {run['after']['load_average'][0]:.2f} after.")


def benchmark_tables(rows):
    """A heading and a table per section of ``rows``, in the order the run measured them."""
    head = ["measure", "ours", "peer", "unit", "speed-up ours vs peer", "peer is", "note"]
    sections = {}
    for row in rows:
        sections.setdefault(row["section"], []).append(
            [row["measure"], report.figure(row["ours"]), report.figure(row["peer"]),
             row["unit"], "" if row["speedup"] is None else f"{row['speedup']:.2f}x",
             row["peer_name"], row["note"]])
    return "\n\n".join(f"## {section}\n\n{report.markdown_table(head, table)}"
                        for section, table in sections.items())


def benchmark_loss_values(loss):
    """The loss section's values and which term the installed ``keras.losses.tversky``'s
    alpha weighs."""
    table = report.markdown_table(["loss", "value"], ([name, f"{value:.7f}"]
                                                     for name, value in loss["values"].items()))
    return (f"## Loss values\n\nalpha={loss['alpha']}, beta={loss['beta']}, "
            f"smooth={loss['smooth']} (Keras adds 1e-7 to its denominator instead):\n\n"
            f"{table}\n\nThe installed `keras.losses.tversky`'s alpha weighs "
            f"**{loss['keras_alpha_weighs']}**: with alpha=1, beta=0 on TP=1, FP=2, FN=1 it "
            f"gives {loss['keras_probe_value']:.4f} (2/3 if alpha weighed false positives).")


def render_benchmarks(path=BENCHMARKS):
    """``python -m benchmarks``' JSON as a page's body: how it was made, a table per
    section, the loss values."""
    path = Path(path)
    if not path.is_file():
        return "(No committed run yet: `python -m benchmarks` writes `benchmarks/results.json`.)"
    run = json.loads(path.read_text())
    parts = [benchmark_machine(run), benchmark_tables(run["rows"])]
    if "loss" in run.get("sections", {}):
        parts.append(benchmark_loss_values(run["sections"]["loss"]))
    return "\n\n".join(parts)


def render_cpu_kinds(path=CPU_KINDS):
    """``benchmarks/cpu-kinds.json``: the training step under each CPU execution
    (``python -m benchmarks.cpu_kinds``), the one ``tversky_keras.cpu`` chooses among them."""
    head = ("## CPU kernels and Keras backends\n\n"
            "`import tversky_keras` turns TensorFlow's oneDNN kernels on where TensorFlow "
            "would run its Eigen kernels on an x86 CPU with AVX2 (`tversky_keras.cpu`; "
            "`TF_ENABLE_ONEDNN_OPTS` set by you wins). The rows that back that choice:\n\n")
    if not Path(path).is_file():
        return head + ("(No committed run yet: `python -m benchmarks.cpu_kinds --out "
                       "benchmarks/cpu-kinds.json`.)")
    return head + report.cpu_kinds_markdown(json.loads(Path(path).read_text()))


def render_robustness(folder=SIM2REAL):
    """Every ``robustness-*.json`` in ``folder`` (``python -m reproduce.robustness``, copied
    there): per transform and subject, each file's DSC and its change from the unchanged
    scan in points, then the added lesions' sensitivity (lesion-load)."""
    found = {path.name: json.loads(path.read_text())
             for path in sorted(Path(folder).glob("robustness-*.json"))}
    if not found:
        return ("(No committed run yet: `python -m reproduce.robustness --data PATH --model "
                "MODEL --out DIR`, then copy `DIR/robustness.json` to "
                "`figures/sim2real-v3/robustness-<name>.json`.)")
    subjects = sorted({s for record in found.values() for s in record["subjects"]})
    order = []
    for record in found.values():
        order += [name for name in record.get("order", record["transforms"]) if name not in order]
    head = ["transform", "item"] + [f"{name} {subject} DSC (Δ points)" for name in found
                                    for subject in subjects]
    rows = []
    for transform in order:
        item = next((r["transforms"][transform]["item"] for r in found.values()
                     if transform in r["transforms"]), "")
        row = [transform, item]
        for record in found.values():
            for subject in subjects:
                cell = record["subjects"].get(subject, {}).get(transform)
                base = record["subjects"].get(subject, {}).get("unchanged")
                if cell is None:
                    row.append("")
                    continue
                row.append(_robustness_cell(cell, base, transform))
        rows.append(row)
    described = []
    for name, record in found.items():
        settings = record["settings"]
        trained = ", ".join(Path(m).parent.parent.name for m in settings["models"])
        mirror = "".join("xyz"[a] for a in settings["mirror_axes"]) or "none"
        union, core = settings.get("threshold_union_k"), settings.get("threshold_union_core_mm")
        union = "" if union is None else f", mask united with FLAIR z >= {union:.2f}"
        union += "" if core is None else f" (core statistics, {core:g} mm)"
        seeds = (f"{record['seeds']} training seeds' networks, each alone; mean ± std"
                 if "seeds" in record else "one network")
        described.append(f"`{name}`: {trained} ({seeds}; transform seed {settings['seed']}, "
                         f"mirroring {mirror}{union}, {record['made']['date'][:10]})")
    models = "; ".join(described)
    verdicts = [_robustness_verdict(name, record) for name, record in found.items()
                if "seeds" in record]
    return (report.markdown_table(head, rows) + f"\n\nModels: {models}."
            + "".join(f"\n\n{v}" for v in verdicts))


def _robustness_cell(cell, base, transform):
    """One file's cell: DSC (Δ points from the unchanged scan), and the added lesions'
    sensitivity; over seeds (``reproduce.robustness_seeds``) the mean ± std and mean Δ."""
    if isinstance(cell["dsc"], dict):
        text = f"{100 * cell['dsc']['mean']:.2f} ± {100 * cell['dsc']['std']:.2f}"
        if "delta_dsc" in cell:
            text += f" ({100 * cell['delta_dsc']['mean']:+.1f})"
        if "added_sensitivity" in cell:
            text += (f"; added lesions found "
                     f"{report.percent(cell['added_sensitivity']['mean'])} %")
        return text
    text = report.percent(cell["dsc"])
    if transform != "unchanged" and base:
        text += f" ({100 * (cell['dsc'] - base['dsc']):+.1f})"
    if "added_sensitivity" in cell:
        text += f"; added lesions found {report.percent(cell['added_sensitivity'])} %"
    return text


def _robustness_verdict(name, record):
    """Whether a seeds summary meets issue 31's bar: no transform (a)-(g) moves the mean DSC
    by more than 5 points, and lesion-load's added lesions are found at 60 % or more."""
    parts = []
    for subject_id, change in sorted(record["largest_change"].items()):
        added = record["subjects"][subject_id].get("lesion-load", {}).get("added_sensitivity")
        parts.append(f"{subject_id}: {change['transform']} "
                     f"{100 * change['delta_dsc_mean']:+.1f} points"
                     + ("" if added is None else
                        f", added lesions found {report.percent(added['mean'])} %"))
    within = all(abs(c["delta_dsc_mean"]) <= 0.05 for c in record["largest_change"].values())
    found = all(e.get("lesion-load", {}).get("added_sensitivity", {}).get("mean", 1.0) >= 0.6
                for e in record["subjects"].values())
    verdict = ("meets" if within and found else "does **not** meet")
    return (f"`{name}`, the largest mean change of (a)-(g) and the added lesions found: "
            f"{'; '.join(parts)}. It {verdict} the bar of no change above 5 points and 60 % "
            f"of the added lesions found.")


def render_histograms(path=HISTOGRAMS):
    """``figures/sim2real-v3/histograms.json`` (``python -m reproduce.histograms``)."""
    if not Path(path).is_file():
        return ("(No committed run yet: `python -m reproduce.histograms --data PATH --phantom "
                "FOLDER --out figures/sim2real-v3/histograms.json`.)")
    return report.histograms_markdown(json.loads(Path(path).read_text()))


def render_retention(path=RETENTION):
    """``sim2real_grid --uncertainty``'s ``retention.json``: the table of every row and
    subject, the figure beside it, and how it was made."""
    from reproduce.uncertainty import markdown

    path = Path(path)
    shown = path.relative_to(FIGURES.parent) if path.is_relative_to(FIGURES.parent) else path
    if not path.is_file():
        return (f"(No committed run yet: `{shown}` is what `python -m reproduce.sim2real_grid "
                f"--ensemble --mirror x --uncertainty` writes into its --out folder, copied "
                f"there.)")
    saved = json.loads(path.read_text())
    made = saved["made"]
    figure = shown.with_name("retention.png")
    return (markdown(saved["rows"]) + f"\n\n![Retention curves](../{figure.as_posix()})"
            f"\n\nMade by `{' '.join(made['command'])}` ({made['date'][:10]}, commit "
            f"{made['commit'][:7]}, {made['machine']['cores']} cores of an "
            f"{made['machine']['cpu']}, {made['seconds']:.0f} s).")


# The documentation's results pages: a title, what the numbers are, then the blocks.
PAGES = {
    "table1.md": (
        "Table 1 on the phantom",
        "`python -m reproduce.table1 --seeds 5` on phantom version 3 (the default: real MSLUB "
        "patients' lesions, calibrated look), percent, pooled over the two test folds, mean ± "
        "std over the five training seeds, ours / the paper's Table 1. The paper's data were "
        "real MS scans; ours are synthetic, so the comparison is of the shape of the table "
        "(how the metrics move with alpha and beta), not of its values. Copy the run's "
        "`results/phantom-v3-quick-seeds.json` to `figures/phantom-v3-quick/` and run "
        "`python -m reproduce.readme_tables --docs docs/results` to update this page.",
        ("table1-v3", "grid-versions")),
    "sim2real.md": (
        "Sim-to-real on the development patients",
        "Networks trained on the phantom alone, applied to the two real MSLUB patients the "
        "project holds (patients 07 and 26). **These are development patients**: the recipe "
        "was chosen on them, so these numbers are not evidence of generalisation. Each row "
        "is one `figures/sim2real-v3/<name>-seeds.json` written by `python -m "
        "reproduce.sim2real --seeds 5` (with the variant's options); percent, mean ± std "
        "over the training seeds, with how many seeds beat the best single FLAIR threshold "
        "chosen knowing the answer (the oracle row). The rows after the oracle are the "
        "FLAIR-threshold baselines a network has to beat, recorded by the runs that computed "
        "them: brain z-scored FLAIR >= k, with k chosen on the other patient (its lesions "
        "known) or on the training phantom alone; neither looks at the scored patient's "
        "lesions. The training times come from the "
        "machines each file names (`made.machine`: CPU, cores, a GEMM reading): compare them "
        "within a file, not across files.",
        ("sim2real-v3",)),
    "uncertainty.md": (
        "Uncertainty on the development patients",
        "Does an ensemble's uncertainty point at its errors on real scans? Each (alpha, beta) "
        "row's phantom-trained models of the Table 1 grid, with test-time mirroring, are one "
        "ensemble (every model and mirror a member); it segments the two real MSLUB patients "
        "the project holds (**development patients**) at probability 0.5, inside the brain. "
        "Its predictive entropy ranks the voxels, and each lesion by its mean entropy: keep "
        "the most certain fraction, let a perfect reader correct the rest, and score nDSC "
        "(voxels) or lesion F1 (lesions). The areas under those retention curves (percent) "
        "are compared with the ideal ranking (every error less certain than every correct "
        "voxel or lesion) and a random one (`tversky_keras.retention`); the last columns "
        "say whether false predicted lesions carry more entropy than correct ones (AUROC "
        "0.5 is chance). Copy the run's `retention.json` and `retention.png` to "
        "`figures/sim2real-grid-v3/` and run `python -m reproduce.readme_tables --docs "
        "docs/results` to update this page.",
        ("retention",)),
    "robustness.md": (
        "Invariance suite and phantom realism on the development patients",
        "Would the network survive another scanner or centre? `python -m reproduce.robustness` "
        "changes the two real MSLUB patients the project holds (**development patients**) the "
        "way another scanner, protocol or skull strip would (items (a)-(h) of issue 31: "
        "intensity scale and offset, gamma, a ±20 % bias field, 5-mm FLAIR and T2W slices, a "
        "4-6 mm rim of non-brain tissue, the brain scaled by ±12 %, T1W grey-white contrast "
        "halved, and the confluent lesions of high-load patients pasted into the white "
        "matter) and segments each changed scan with the same network. Each cell is the "
        "DSC in percent at probability 0.5 inside the patient's brain, with its change from "
        "the unchanged scan in points; for the pasted lesions also the share of them found. "
        "A `-seeds.json` column is one suite run per training seed's network, summarised by "
        "`python -m reproduce.robustness_seeds DIR... --out FILE.json` (mean ± std over the "
        "seeds, and the mean change). The second table compares whole-brain intensity "
        "histograms (each statistic relative to the brain's median) of the two patients "
        "with the range over each training phantom's subjects (`python -m "
        "reproduce.histograms`). Copy the runs' JSON to "
        "`figures/sim2real-v3/` and run `python -m reproduce.readme_tables --docs "
        "docs/results` to update this page.",
        ("robustness", "histograms")),
    "benchmarks.md": (
        "Benchmarks",
        "`python -m benchmarks` measures the package against the same U-Net in PyTorch with "
        "MONAI's `TverskyLoss` and `sliding_window_inference`, and against "
        "`keras.losses.Tversky`, in one run: each figure is the median of several timed "
        "repetitions after an untimed warm-up, and each comparison is measured in the same "
        "run. The speed-up is how many times faster ours is than the peer: peer / ours for a "
        "time, ours / peer for a rate. Compare ratios across runs, not times: the machines "
        "differ in speed (the GEMM readings say by how much). The run writes "
        "`benchmarks/results.json`; commit it and run `python -m reproduce.readme_tables "
        "--docs docs/results` to update this page. How the figures are measured, what they "
        "say, and the GPU runs: [Performance](../performance.md).",
        ("cpu-kinds", "benchmarks")),
}


def page_marker(name):
    """The first line of a generated page, saying how it was made."""
    return f"<!-- generated by python -m reproduce.readme_tables --docs: do not edit {name} -->"


def render_page(name, tables):
    """The page ``name`` of ``PAGES`` with ``tables`` (block -> Markdown) filled in."""
    title, intro, blocks = PAGES[name]
    body = "\n\n".join(tables[block] for block in blocks)
    return f"{page_marker(name)}\n# {title}\n\n{intro}\n\n{body}\n"


def replace_block(text, block, table):
    """``text`` with the lines between ``block``'s markers replaced by ``table``."""
    begin, end = markers(block)
    if text.count(begin) != 1 or text.count(end) != 1:
        raise ValueError(f"the README needs the line {begin!r} and, after it, {end!r} once each")
    before, rest = text.split(begin)
    _, after = rest.split(end)
    return f"{before}{begin}\n{table}\n{end}{after}"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m reproduce.readme_tables",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--sim2real", type=Path, default=SIM2REAL,
                        help="folder of sim2real *-seeds.json (figures/sim2real-v3)")
    parser.add_argument("--table1", type=Path, default=TABLE1_SEEDS,
                        help="Table 1 seeds JSON (figures/phantom-v3-quick/...-seeds.json)")
    parser.add_argument("--benchmarks", type=Path, default=BENCHMARKS,
                        help="python -m benchmarks' JSON (benchmarks/results.json)")
    parser.add_argument("--retention", type=Path, default=RETENTION,
                        help="sim2real_grid --uncertainty's JSON "
                             "(figures/sim2real-grid-v3/retention.json)")
    parser.add_argument("--grid-versions", type=Path, default=GRID_VERSIONS,
                        help="python -m benchmarks.bench_grid_versions' JSON "
                             "(benchmarks/grid-versions.json)")
    parser.add_argument("--cpu-kinds", type=Path, default=CPU_KINDS,
                        help="python -m benchmarks.cpu_kinds' JSON (benchmarks/cpu-kinds.json)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--readme", type=Path, help="write the table into this file")
    action.add_argument("--check", type=Path,
                        help="exit 1 when this file's table differs from the files'")
    action.add_argument("--docs", type=Path, metavar="FOLDER",
                        help="write the documentation's results pages into FOLDER")
    action.add_argument("--check-docs", type=Path, metavar="FOLDER",
                        help="exit 1 when a results page in FOLDER differs from the files'")
    args = parser.parse_args(argv)
    return report.run_or_one_line("python -m reproduce.readme_tables", _run, args)


def _run(args):
    tables = {"sim2real-v3": render_sim2real(args.sim2real),
              "table1-v3": render_table1(args.table1),
              "benchmarks": render_benchmarks(args.benchmarks),
              "grid-versions": render_grid_versions(args.grid_versions),
              "cpu-kinds": render_cpu_kinds(args.cpu_kinds),
              "sim2real-baselines": render_sim2real_baselines(args.sim2real),
              "robustness": render_robustness(args.sim2real),
              "histograms": render_histograms(args.sim2real / "histograms.json"),
              "retention": render_retention(args.retention)}
    if args.docs or args.check_docs:
        return _pages(tables, args.docs or args.check_docs, check=bool(args.check_docs))
    target = args.readme or args.check
    if target is None:
        print("\n\n".join(tables.values()))
        return 0
    text = target.read_text()
    # The README holds the headline block(s); the others live on the docs' results pages.
    present = {b: t for b, t in tables.items() if markers(b)[0] in text} or tables
    updated = text
    for block, table in present.items():
        updated = replace_block(updated, block, table)
    if args.check:
        if updated != text:
            stale = [b for b, t in present.items() if replace_block(text, b, t) != text]
            print(f"{target}: the {', '.join(stale)} table differs from the result files; run "
                  f"python -m reproduce.readme_tables --readme {target}", file=sys.stderr)
            return 1
        return 0
    from tversky_keras.atomic import write_text

    write_text(target, updated)
    return 0


def _pages(tables, folder, check):
    from tversky_keras.atomic import write_text

    stale = []
    for name in PAGES:
        text = render_page(name, tables)
        path = folder / name
        if check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path))
        else:
            folder.mkdir(parents=True, exist_ok=True)
            write_text(path, text)
    if stale:
        print(f"{', '.join(stale)}: differs from the result files; run python -m "
              f"reproduce.readme_tables --docs {folder}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
