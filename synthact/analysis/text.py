"""Plain-text tables and paragraphs that fit a width (WIDTH characters): what `synthact compare` and the run
summary print.

A table's long cells wrap onto continuation lines (at most `cell` characters a line), and where its columns
still do not fit, they are split into blocks, each repeating the `keys` columns. Numbers are right-aligned.
"""

from __future__ import annotations

import textwrap

import pandas as pd

WIDTH = 120
GAP = "  "
CELL = 40


def paragraph(text: str, width: int = WIDTH, indent: str = "") -> list[str]:
    """A sentence or heading wrapped to `width` (continuation lines indented by two more spaces; a word longer
    than that, such as a path, is kept whole)."""
    return textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=indent + "  ",
                         break_on_hyphens=False, break_long_words=False) or [indent]


def table(frame: pd.DataFrame, width: int = WIDTH, keys: tuple[str, ...] = (), cell: int | dict = 40,
          indent: str = "") -> list[str]:
    """The rows of `frame` as lines of at most `width` characters (NaN and None as blanks); `cell`: the widest a
    cell gets before it wraps (a number, or per column name: CELL for the others)."""
    if frame.empty:
        return []
    columns = list(frame.columns)
    widest = cell if isinstance(cell, dict) else {}
    cells = {c: [_wrap(_text(v), widest.get(c, CELL if widest else cell)) for v in frame[c]] for c in columns}
    right = {c: pd.api.types.is_numeric_dtype(frame[c]) for c in columns}
    sizes = {c: max(len(str(c)), *(len(part) for parts in cells[c] for part in parts)) for c in columns}
    keys = [c for c in keys if c in columns]
    blocks, block = [], list(keys)
    room = width - len(indent)
    for c in columns:
        if c in keys:
            continue
        if block != keys and _span(block + [c], sizes) > room:
            blocks.append(block)
            block = list(keys)
        block.append(c)
    blocks.append(block)
    lines = []
    for n, shown in enumerate(blocks):
        if n:
            lines.append("")
        lines.append(indent + _line([str(c) for c in shown], shown, sizes, right))
        for i in range(len(frame)):
            height = max(len(cells[c][i]) for c in shown)
            for k in range(height):
                parts = [cells[c][i][k] if k < len(cells[c][i]) else "" for c in shown]
                lines.append(indent + _line(parts, shown, sizes, right))
    return lines


def _line(parts: list[str], shown: list[str], sizes: dict, right: dict) -> str:
    return GAP.join(p.rjust(sizes[c]) if right[c] else p.ljust(sizes[c]) for p, c in zip(parts, shown)).rstrip()


def _span(columns: list[str], sizes: dict) -> int:
    return sum(sizes[c] for c in columns) + len(GAP) * (len(columns) - 1)


def _text(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value)


def _wrap(text: str, cell: int) -> list[str]:
    if len(text) <= cell:
        return [text]
    return textwrap.wrap(text, cell, break_on_hyphens=False) or [text[:cell]]
