"""The layout's import directions (docs/development.md): checked on the source, not by running it."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("reproduce.table1", "reproduce.sim2real", "reproduce.sim2real_grid",
            "reproduce.readme_tables", "reproduce.realism", "reproduce.robustness",
            "reproduce.histograms")


def module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path):
    """Every absolute module an import statement of ``path`` names, lazy imports included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def graph(package):
    return {module_name(path): imports(path) for path in sorted((ROOT / package).rglob("*.py"))}


def within(names, prefix):
    return sorted(n for n in names if n == prefix or n.startswith(prefix + "."))


@pytest.mark.parametrize("other", ["reproduce", "benchmarks"])
def test_the_package_never_imports_the_reproduction_or_the_benchmarks(other):
    found = {module: within(names, other) for module, names in graph("tversky_keras").items()}
    assert {m: n for m, n in found.items() if n} == {}


def test_the_reproduction_never_imports_the_cli_the_benchmarks_or_a_command():
    found = {}
    for module, names in graph("reproduce").items():
        bad = within(names, "tversky_keras.cli") + within(names, "benchmarks")
        bad += [n for command in COMMANDS if command != module for n in within(names, command)]
        if module == "reproduce.table1":  # the command regenerates the figures it made
            bad = [n for n in bad if not n.startswith("reproduce.figures")]
        if bad:
            found[module] = bad
    assert found == {}


def test_the_benchmarks_import_no_command_of_the_reproduction():
    found = {m: [n for c in COMMANDS for n in within(names, c)]
             for m, names in graph("benchmarks").items()}
    assert {m: n for m, n in found.items() if n} == {}


@pytest.mark.parametrize("module, forbidden", [
    ("tversky_keras.training.config", ("tversky_keras.training.distribute",
                                       "tversky_keras.training.fit")),
    ("tversky_keras.training.distribute", ("tversky_keras.training.fit",)),
    ("tversky_keras.data.phantom.calibration", ("tversky_keras.data.phantom.",)),
    ("tversky_keras.data.phantom.template", ("tversky_keras.data.phantom.lesions",
                                             "tversky_keras.data.phantom.anatomy",
                                             "tversky_keras.data.phantom.imaging",
                                             "tversky_keras.data.phantom.generate",
                                             "tversky_keras.data.phantom.dataset")),
    ("tversky_keras.data.phantom.generate", ("tversky_keras.data.phantom.dataset",)),
])
def test_subpackages_import_one_way(module, forbidden):
    names = graph(module.split(".")[0])[module]
    assert sorted(n for n in names if n.startswith(forbidden)) == []


def test_every_test_file_that_reads_the_smoke_grid_shares_its_worker():
    """conftest's scheduler keeps the smoke grid's readers on one xdist worker; a file
    missing from its list would make the grid again (two minutes) on another one."""
    from conftest import SMOKE_GRID_FILES

    def reads_the_grid(path):
        return any(isinstance(node, ast.arg) and node.arg == "smoke_grid"
                   for node in ast.walk(ast.parse(path.read_text())))

    readers = {f"tests/{p.name}" for p in (ROOT / "tests").glob("test_*.py") if reads_the_grid(p)}
    assert readers == set(SMOKE_GRID_FILES)
