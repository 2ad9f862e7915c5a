"""The documentation: the site builds with ``mkdocs build --strict``, and the README's links resolve."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def build_strict(root, site):
    """``mkdocs build --strict`` of the project at ``root`` (not ``--quiet``, which drops
    the warnings strict mode counts); the finished process."""
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                           "--site-dir", str(site)],
                          cwd=root, capture_output=True, text=True,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


def test_the_site_builds_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is in the test extra: pip install -e '.[test]'")
    done = build_strict(ROOT, tmp_path / "site")
    assert done.returncode == 0, done.stderr[-4000:]
    site = tmp_path / "site"
    # the command-line page holds every command's generated --help
    cli = (site / "command-line" / "index.html").read_text()
    for option in ("--phantom-version", "--mirror", "--intensity-normalization", "--seeds"):
        assert option in cli
    assert "<!-- cli-reference -->" not in cli
    # the API reference comes from the docstrings
    api = (site / "api" / "index.html").read_text()
    assert "tversky_index" in api and "TverskyLoss" in api
    # the changelog page is CHANGELOG.md
    assert "0.2.0" in (site / "changelog" / "index.html").read_text()


def test_a_docstring_griffe_rejects_fails_the_strict_build(tmp_path):
    """The build test can fail: a copy of the project with one docstring naming two
    parameters on one line (griffe warns) does not build."""
    pytest.importorskip("mkdocs", reason="mkdocs is in the test extra: pip install -e '.[test]'")
    copy = tmp_path / "project"
    copy.mkdir()
    for name in ("mkdocs.yml", "docs", "tversky_keras", "README.md", "CHANGELOG.md"):
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, copy / name)
    for extra in ("reproduce", "benchmarks", "figures"):  # pages may include their files
        if (ROOT / extra).is_dir():
            shutil.copytree(ROOT / extra, copy / extra)
    path = copy / "tversky_keras" / "retention.py"
    text = path.read_text()
    planted = text.replace("        y_true: binary mask.\n        y_pred: binary mask of the same "
                           "shape.\n", "        y_true, y_pred: binary masks of the same shape.\n")
    assert planted != text
    path.write_text(planted)
    done = build_strict(copy, tmp_path / "site")
    assert done.returncode != 0
    assert "does not appear in the function signature" in done.stderr


def test_every_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert pages and all(page in nav for page in pages), pages - set(re.findall(r"\S+\.md", nav))


def test_the_readme_is_short_and_its_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [t.split("#")[0] for t in targets if not re.match(r"[a-z]+://", t) and t.split("#")[0]]
    assert local, "the README links to its documentation"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, missing
    assert all(t.startswith("https://") for t in targets if re.match(r"[a-z]+://", t))
