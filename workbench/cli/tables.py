"""Tables that fit the terminal: what `workbench endpoint list` and the other listings print.

A cell that holds a list (labels, rules, backends) shows one item per line,
as `cilium endpoint list` shows labels. Labels are abbreviated the way a
terminal needs them: the ``k8s:`` source prefix is dropped, the namespace
labels (``io.kubernetes.pod.namespace`` and ``io.cilium.k8s.namespace.labels.*``)
fold into one ``ns=NAME`` line, and other cilium-internal labels
(``io.cilium.*``) are left out. Columns then shrink, widest first, until the
table fits the width; cells wrap inside their column, preferably after
``/ = , . : -``. A table may come in sections, one per endpoint, as `cilium
bpf policy get` prints one map per endpoint. ``wide=True`` (``-o wide``) keeps
every label in full and never wraps.

Example::

    >>> short_labels(["k8s:class=xwing", "k8s:io.kubernetes.pod.namespace=default", "reserved:world"])
    ['class=xwing', 'reserved:world', 'ns=default']
    >>> print(format_lines([["ID", "LABELS"], ["258", "class=xwing\\norg=alliance"]], width=20))
    ID   LABELS
    258  class=xwing
         org=alliance
"""

from __future__ import annotations

import re
import shutil
import textwrap
from collections.abc import Sequence
from typing import Any

from workbench.lab.model import NAMESPACE_LABEL, parse_label

GAP = "  "
# Labels Cilium adds for its own bookkeeping (namespace labels, policy cluster, service account).
CILIUM_INTERNAL_PREFIX = "io.cilium."
# The sources a terminal does not need to name: Kubernetes labels, and labels written without a source.
IMPLIED_SOURCES = ("k8s", "any")


def terminal_width() -> int:
    """The terminal's width: ``$COLUMNS``, else the terminal's own, else 80 (as `shutil` decides)."""
    return shutil.get_terminal_size().columns


def short_labels(labels: Sequence[str]) -> list[str]:
    """Labels as a terminal shows them (see the module docstring); the namespace comes last."""
    shown: list[str] = []
    namespace = None
    for label in labels:
        source, key, value = parse_label(str(label))
        if key == NAMESPACE_LABEL:
            namespace = value
            continue
        if key.startswith(CILIUM_INTERNAL_PREFIX):
            continue
        text = f"{key}={value}" if value else key
        shown.append(text if source in IMPLIED_SOURCES else f"{source}:{text}")
    if namespace is not None:
        shown.append(f"ns={namespace}")
    return shown


def is_label_column(name: str) -> bool:
    """``labels``, ``peer_labels``, ``src_labels``...: columns that hold Cilium label lists."""
    return name == "labels" or name.endswith("_labels")


def cell_text(value: Any, *, labels: bool = False, wide: bool = False) -> str:
    """One cell as text: lists and dicts one item per line, labels abbreviated unless ``wide``."""
    if value is None:
        return ""
    if hasattr(value, "tolist") and not isinstance(value, str):   # numpy arrays and scalars
        value = value.tolist()
    if isinstance(value, dict):
        value = [f"{k}={v}" for k, v in value.items()]
    if isinstance(value, (list, tuple)):
        items = [str(item) for item in value]
        return "\n".join(short_labels(items) if labels and not wide else items)
    if isinstance(value, float):
        if value != value:          # NaN: a missing value
            return ""
        if value.is_integer():      # an id or a count in a column pandas made float by a missing value
            return str(int(value))
    return str(value)


def fit_widths(natural: list[int], floors: list[int], available: int) -> list[int]:
    """Column widths that sum to at most ``available``: the widest columns shrink first.

    A column never shrinks below its floor (its header's longest word) unless
    even the floors do not fit; then every column may shrink to one character.

    Example::

        >>> fit_widths([2, 40, 30], [2, 6, 4], 50)
        [2, 24, 24]
    """
    if sum(natural) <= available:
        return list(natural)
    for floor_of in (lambda n, f: min(n, f), lambda n, f: min(n, 1)):
        bounded = [floor_of(n, f) for n, f in zip(natural, floors, strict=True)]
        for cap in range(max(natural), 0, -1):
            widths = [min(n, max(cap, f)) for n, f in zip(natural, bounded, strict=True)]
            if sum(widths) <= available:
                return widths
    return [min(n, 1) for n in natural]


class _CellWrapper(textwrap.TextWrapper):
    # Break after the separators of labels, paths, names and addresses, not only at spaces and hyphens.
    wordsep_re = re.compile(r"(\s+|[^\s/=,.:\-]*[/=,.:\-]+|[^\s/=,.:\-]+)")


def wrap_cell(text: str, width: int | None) -> list[str]:
    """The lines of a cell ``width`` characters wide (None: its own lines).

    Example::

        >>> wrap_cell("app.kubernetes.io/name=deathstar", 20)
        ['app.kubernetes.io/', 'name=deathstar']
    """
    lines = text.splitlines() or [""]
    if width is None:
        return lines
    wrapper = _CellWrapper(width=max(width, 1), break_long_words=True, break_on_hyphens=True)
    return [part for line in lines for part in (wrapper.wrap(line) or [""])]


def format_lines(rows: list[list[str]], width: int | None, *, sections: list[str] | None = None) -> str:
    """Rows of cell texts (the first is the header) as aligned columns within ``width`` (None: no limit).

    ``sections`` (one title per body row): a new section, with its title and
    the header again, starts wherever the title changes.
    """
    header, body = rows[0], rows[1:]
    natural = [max((len(line) for row in rows for line in row[i].splitlines()), default=0)
               for i in range(len(header))]
    if width is None:
        widths = natural
    else:
        floors = [max((len(word) for word in title.split()), default=0) for title in header]
        widths = fit_widths(natural, floors, width - len(GAP) * (len(natural) - 1))

    def lines_of(row: list[str]) -> list[str]:
        cells = [wrap_cell(text, w if width is not None else None) for text, w in zip(row, widths, strict=True)]
        return [GAP.join((cell[i] if i < len(cell) else "").ljust(w) for cell, w in zip(cells, widths, strict=True))
                .rstrip() for i in range(max(len(cell) for cell in cells))]

    out = [] if sections else lines_of(header)
    for index, row in enumerate(body):
        if sections and (index == 0 or sections[index] != sections[index - 1]):
            out.extend(([""] if index else []) + wrap_cell(sections[index], width) + lines_of(header))
        out.extend(lines_of(row))
    return "\n".join(out)


def format_table(frame: Any, width: int | None, *, wide: bool = False, sections: str | None = None) -> str:
    """A DataFrame as a terminal table ``width`` columns wide (None: as wide as its cells).

    Headers are the column names in capitals, ``_`` read as a space (so they
    may wrap). ``wide`` shows labels in full. ``sections``: a column whose
    value titles each section (rows with the same title in a row form one).
    """
    columns = [str(c) for c in frame.columns if c != sections]
    labels = [is_label_column(c) for c in columns]
    cells = frame.astype(object).where(frame.notna(), None)
    rows = [[c.replace("_", " ").upper() for c in columns]]
    for record in cells[columns].itertuples(index=False, name=None):
        rows.append([cell_text(v, labels=is_labels, wide=wide) for v, is_labels in zip(record, labels, strict=True)])
    titles = [cell_text(v) for v in cells[sections]] if sections else None
    return format_lines(rows, width, sections=titles)
