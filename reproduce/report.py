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
