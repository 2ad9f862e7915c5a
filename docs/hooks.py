"""MkDocs hooks: the command-line reference from the argparse parsers, and the figures.

- ``<!-- cli-reference -->`` in a page becomes each command's ``--help``, as argparse
  prints it, so the page cannot drift from the options.
- The PNGs under ``figures/`` are added to the site, so pages link to them as
  ``figures/<experiment>/<name>.png``.
"""

import contextlib
import importlib
import io
import os
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- cli-reference -->"

# (title, module whose main(argv) parses argv, the argv before --help)
COMMANDS = [("tversky-keras", "tversky_keras.cli", [])] + [
    (f"tversky-keras {sub}", "tversky_keras.cli", [sub])
    for sub in ("synth", "preprocess", "train", "predict", "evaluate", "baseline")
] + [(f"python -m {module}", module, []) for module in (
    "reproduce.table1", "reproduce.sim2real", "reproduce.sim2real_grid",
    "reproduce.realism", "reproduce.robustness", "reproduce.histograms", "reproduce.figures",
    "reproduce.readme_tables")]


def help_text(module, argv):
    """What ``module``'s command prints for ``argv + ["--help"]``."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            importlib.import_module(module).main([*argv, "--help"])
        except SystemExit:
            pass
    return out.getvalue().rstrip()


def cli_reference():
    os.environ["COLUMNS"] = "88"  # one width, whatever the terminal
    sections = []
    for title, module, argv in COMMANDS:
        sections.append(f"### `{title}`\n\n```text\n{help_text(module, argv)}\n```")
    return "\n\n".join(sections)


def on_page_markdown(markdown, page, config, files):
    if MARKER in markdown:
        return markdown.replace(MARKER, cli_reference())
    return markdown


def on_files(files, config):
    for png in sorted((ROOT / "figures").rglob("*.png")):
        files.append(File(str(png.relative_to(ROOT)), src_dir=str(ROOT),
                          dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    return files
