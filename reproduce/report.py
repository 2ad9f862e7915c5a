"""The one Markdown table renderer of the reproduction and the benchmarks, and how their
commands report bad input."""

import sys


def markdown_row(cells):
    """One table line: ``| a | b |``; cells are turned into text with ``str``."""
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def markdown_head(head):
    """The header line and the rule under it."""
    return [markdown_row(head), "|" + "---|" * len(head)]


def markdown_table(head, rows):
    """A whole table as text: header, rule, one line per row (each as long as ``head``)."""
    rows = [list(row) for row in rows]
    short = [row for row in rows if len(row) != len(head)]
    if short:
        raise ValueError(f"a row has {len(short[0])} cells for {len(head)} columns: {short[0]}")
    return "\n".join(markdown_head(head) + [markdown_row(row) for row in rows])


def percent(value):
    """A fraction as a percentage with two decimals; an em dash for a missing value."""
    return "—" if value is None or value != value else f"{100 * value:.2f}"


def run_or_one_line(program, run, args):
    """``run(args)``'s exit code; bad data or settings (ValueError, OSError) print one
    line naming ``program`` and give 1, never a traceback."""
    try:
        return run(args)
    except (ValueError, OSError) as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        return 1


def provenance(seconds=None):
    """Where a result file came from: when (UTC), the commit (and whether the tree
    had changes), the machine, the command line and, when given, its seconds."""
    import datetime
    import os
    import platform
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]

    def git(*args):
        try:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                                  text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    cpu = next((line.partition(":")[2].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown") \
        if Path("/proc/cpuinfo").is_file() else platform.processor() or "unknown"
    made = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": git("rev-parse", "HEAD") or None,
            "uncommitted_changes": bool(git("status", "--porcelain", "--untracked-files=no")),
            "machine": {"cpu": cpu, "cores": os.cpu_count(), "load_average": os.getloadavg()},
            "command": ["python", *sys.orig_argv[1:]]}
    if seconds is not None:
        made["seconds"] = round(float(seconds), 1)
    return made
