"""Tables that fit the terminal: one line per row, cells cut with an ellipsis rather than
wrapped, the most compressible columns cut first; and the console they print on.

The width is ``$COLUMNS`` when set, else the terminal's; output that goes to no terminal (a
pipe, a file) is not cut at all, so ``grep`` and ``awk`` see every value whole."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console, RenderableType
from rich.table import Table

__all__ = ["Col", "console", "fitted", "out"]

_GAP = 2
"""Spaces between two columns."""


@dataclass(frozen=True, slots=True)
class Col:
    """A table column: its header, the width it may be cut down to, and how soon it is cut
    (lower ``give`` is cut first)."""

    header: str
    least: int = 0
    """The narrowest it is cut to (its header's width if larger)."""
    give: int = 9
    """The order in which columns are cut down to fit (0 first)."""
    right: bool = False
    """Right-aligned (numbers)."""


_UNCUT = 100_000
"""The width of output that goes to no terminal: nothing is cut or wrapped."""


def console() -> Console:
    """A console on the current stdout, with no markup or highlighting (text is shown as it
    is), as wide as ``$COLUMNS``, the terminal, or (to no terminal) unlimited."""
    columns = os.environ.get("COLUMNS", "")
    width = int(columns) if columns.isdigit() and int(columns) > 0 else None
    if width is None and not sys.stdout.isatty():
        width = _UNCUT
    return Console(
        file=sys.stdout, width=width, markup=False, highlight=False, emoji=False, soft_wrap=False
    )


def out(*renderables: RenderableType) -> None:
    """Print on stdout through a fitted console."""
    con = console()
    for r in renderables:
        con.print(r)


def fitted(cols: Sequence[Col], rows: Sequence[Sequence[str]], width: int | None = None) -> Table:
    """A table of ``rows`` whose every line fits ``width`` (the console's by default)."""
    width = width or console().width
    natural = [max([len(c.header), *(len(r[i]) for r in rows)]) for i, c in enumerate(cols)]
    sizes = _fit(natural, cols, width - _GAP * (len(cols) - 1))
    table = Table(
        box=None,
        pad_edge=False,
        padding=(0, _GAP // 2),
        header_style="bold",
    )
    for col, size in zip(cols, sizes, strict=True):
        table.add_column(
            col.header,
            width=size,
            no_wrap=True,
            overflow="ellipsis",
            justify="right" if col.right else "left",
        )
    for row in rows:
        table.add_row(*row)
    return table


def _fit(natural: list[int], cols: Sequence[Col], budget: int) -> list[int]:
    """Widths no wider than ``natural``, cut in ``give`` order (each to its least) until their
    sum is within ``budget``; past every least, the widest columns give way evenly."""
    sizes = list(natural)
    excess = sum(sizes) - budget
    for i in sorted(range(len(cols)), key=lambda i: cols[i].give):
        if excess <= 0:
            return sizes
        floor = min(sizes[i], max(cols[i].least, len(cols[i].header), 1))
        cut = min(excess, sizes[i] - floor)
        sizes[i] -= cut
        excess -= cut
    while excess > 0 and max(sizes) > 1:
        widest = sizes.index(max(sizes))
        sizes[widest] -= 1
        excess -= 1
    return sizes
