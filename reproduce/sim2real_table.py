"""The sim-to-real variants side by side, rendered from the committed summaries.

    python -m reproduce.sim2real_table                      # print the table
    python -m reproduce.sim2real_table --readme README.md   # put it into README.md
    python -m reproduce.sim2real_table --check README.md    # exit 1 if README.md differs

Each ``<results>/<name>-seeds.json`` that ``python -m reproduce.sim2real --seeds N``
writes (committed under ``figures/sim2real-v3/``) is one row: the variant, and
per real subject the mean ± std over the training seeds of DSC, sensitivity and
specificity, with how many seeds beat the subject's FLAIR-threshold oracle.
The table goes into the README between two marker lines, so that its numbers
come from the files, never typed.
"""

import argparse
import json
import sys
from pathlib import Path

from reproduce import report

DEFAULT_FOLDER = Path(__file__).resolve().parents[1] / "figures" / "sim2real-v3"
BEGIN = "<!-- sim2real-v3 table: python -m reproduce.sim2real_table --readme README.md -->"
END = "<!-- end of sim2real-v3 table -->"


def variant_label(variant):
    """``v3 randomized (60 subjects), wm-peak, + mirror x`` and so on."""
    label = (f"v{variant['phantom_version']} {variant['recipe']['name']} "
             f"({variant['phantom_subjects']} subjects, {variant['phantom_spacing']:g} mm)")
    if variant["intensity_normalization"] != "zscore":
        label += f", {variant['intensity_normalization']} normalisation"
    if variant["intensity_augmentation"]:
        label += ", + nnU-Net intensity augmentation"
    if variant["mirror_axes"]:
        label += ", + mirroring " + ",".join("xyz"[a] for a in variant["mirror_axes"])
    if variant.get("ensemble"):
        label += f", ensemble of {variant['ensemble']} seeds' networks"
    return label


def summaries(folder):
    """Every ``*-seeds.json`` in ``folder``, by file name."""
    return {path.name: json.loads(path.read_text())
            for path in sorted(Path(folder).glob("*-seeds.json"))}


def render(folder):
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

        def cell(value):  # one run (an ensemble) has no spread
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
    return report.markdown_table(head, rows)


def replace_block(text, table):
    """``text`` with the lines between ``BEGIN`` and ``END`` replaced by ``table``."""
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise ValueError(f"the README needs the line {BEGIN!r} and, after it, {END!r} once each")
    before, rest = text.split(BEGIN)
    _, after = rest.split(END)
    return f"{before}{BEGIN}\n{table}\n{END}{after}"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m reproduce.sim2real_table",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=DEFAULT_FOLDER,
                        help="folder of *-seeds.json (figures/sim2real-v3)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--readme", type=Path, help="write the table into this file")
    action.add_argument("--check", type=Path,
                        help="exit 1 when this file's table differs from the files'")
    args = parser.parse_args(argv)
    return report.run_or_one_line("python -m reproduce.sim2real_table", _run, args)


def _run(args):
    table = render(args.results)
    target = args.readme or args.check
    if target is None:
        print(table)
        return 0
    text = target.read_text()
    updated = replace_block(text, table)
    if args.check:
        if updated != text:
            print(f"{target}: the sim-to-real table differs from {args.results}; run python -m "
                  f"reproduce.sim2real_table --readme {target}", file=sys.stderr)
            return 1
        return 0
    from tversky_keras.atomic import write_text

    write_text(target, updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
