"""Plain-text tables for the CLI (`panicd status`, `panicd incidents`): one line per row.

Every cell goes through `cell`, which escapes control characters (`panicd.text.printable`):
guest names, socket and dump paths come from QEMU, config files and guests, and a newline or
`ESC [` in one must not make a fake row or recolour the operator's terminal.
"""

from __future__ import annotations

from collections.abc import Sequence

from panicd.text import printable


def cell(value: object) -> str:
    """One table cell, escaped; `-` for nothing."""
    return "-" if value is None or value == "" else printable(str(value))


def human_size(size: int) -> str:
    """`268435456` as `256.0 MiB`."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def render(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The header and the rows, each column as wide as its widest cell (cells already escaped)."""
    widths = [max(len(name), *(len(row[i]) for row in rows)) if rows else len(name)
              for i, name in enumerate(columns)]
    return ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
            for line in (columns, *rows)]
