"""Tables for the book: result rows under a chapter's columns, as one HTML table.

A chapter used to ``print()`` its tables: fixed-width text that the page cut off at
the output box's edge, split over several boxes, and that showed ``nan`` where a
figure was missing. ``table`` (rows under ``gpu.bench`` style columns) and ``grid``
(a header and a body of plain cells) return a ``Table``: one HTML table in the
HTML book and in a notebook (``_repr_html_``), fixed-width text in a terminal
(``__repr__``). A missing figure (None, NaN, a column the row lacks) shows a dash,
and a note under the table says why (``why``: one reason, or a reason per column
header). Nothing here needs a GPU, CuPy or IPython.

    from gpu import bench_attention as ba, booktable as bt
    bt.table(rows, ba.COLUMNS, why="not run at this size")
    bt.grid(["B", "S", "us"], [[1, 1024, 12.1], [8, 1024, None]], fmt=["", "", ".1f"])
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable, Mapping, Sequence

DASH = "—"  # what a missing figure shows
MISSING = "not recorded for this case"  # the default reason a cell is a dash

# One style block per table: the HTML book and a notebook both show it, and it is
# scoped to the tables this module writes.
_STYLE = """<style>
table.tt-table { border-collapse: collapse; font-size: 0.85em; margin: 0.3em 0;
  font-variant-numeric: tabular-nums; width: auto; max-width: 100%; }
table.tt-table th, table.tt-table td { padding: 0.2em 0.45em; border: none;
  border-bottom: 1px solid rgba(128, 128, 128, 0.35); vertical-align: top; }
table.tt-table thead th { border-bottom: 2px solid rgba(128, 128, 128, 0.7);
  font-weight: 600; }
table.tt-table td.num, table.tt-table th.num { text-align: right; }
table.tt-table td.num { white-space: nowrap; }
table.tt-table td.txt, table.tt-table th.txt { text-align: left;
  overflow-wrap: anywhere; }
table.tt-table th { overflow-wrap: anywhere; }
table.tt-table caption { caption-side: top; text-align: left; font-weight: 600;
  padding-bottom: 0.3em; }
p.tt-table-note { font-size: 0.8em; margin: 0.2em 0 0.8em 0; opacity: 0.85; }
</style>"""

# a format spec's type letter (the last character of ".2f", ">9.3f", ",")
_NUMERIC_TYPE = re.compile(r"[bcdeEfFgGnoxX%,_]$")


def is_missing(v) -> bool:
    """None, an empty string, or a float NaN."""
    if v is None or (isinstance(v, str) and not v.strip()):
        return True
    return isinstance(v, float) and math.isnan(v)


def _value(row: Mapping, what) -> object:
    """A row's value for a column: ``row[what]``, or ``what(row)``; None when the
    row lacks it (a KeyError, TypeError, ValueError or ZeroDivisionError)."""
    try:
        return what(row) if callable(what) else row[what]
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None


def _strip_layout(fmt: str) -> str:
    """A format spec without its fill, alignment and width: '>9.3f' -> '.3f'.
    An HTML cell is as wide as its content; the text layout's padding would only
    add spaces."""
    m = re.match(r"^(?:.?[<>^=])?([+\- ]?)#?0?\d*(.*)$", fmt or "")
    return (m.group(1) + m.group(2)) if m else ""


def fmt_cell(v, fmt: str = "") -> str:
    """One cell as text; DASH when missing. Numbers go through ``fmt`` (alignment
    and width are dropped); anything else through ``str``."""
    if is_missing(v):
        return DASH
    spec = _strip_layout(fmt)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)


def _is_numeric(values: Sequence, fmt: str) -> bool:
    spec = _strip_layout(fmt)
    if spec and _NUMERIC_TYPE.search(spec):
        return True
    present = [v for v in values if not is_missing(v)]
    return bool(present) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in present
    )


class Table:
    """A rendered table: ``head`` (column headers), ``cells`` (rows of display
    strings), which columns are numeric (right-aligned), a caption and the notes
    under it. ``_repr_html_`` for the book and notebooks, ``text()`` for a
    terminal."""

    def __init__(
        self,
        head: Sequence[str],
        cells: Sequence[Sequence[str]],
        numeric: Sequence[bool],
        caption: str = "",
        notes: Sequence[str] = (),
    ):
        self.head = [str(h) for h in head]
        self.cells = [[str(c) for c in r] for r in cells]
        self.numeric = list(numeric)
        self.caption = caption
        self.notes = list(notes)
        for r in self.cells:
            if len(r) != len(self.head):
                raise ValueError(f"a row of {len(r)} cells under {len(self.head)}")

    def _repr_html_(self) -> str:
        cls = ["num" if n else "txt" for n in self.numeric]
        out = [_STYLE, '<table class="tt-table">']
        if self.caption:
            out.append(f"<caption>{html.escape(self.caption)}</caption>")
        out.append("<thead><tr>")
        out += [
            f'<th class="{c}">{html.escape(h)}</th>'
            for h, c in zip(self.head, cls, strict=True)
        ]
        out.append("</tr></thead><tbody>")
        for r in self.cells:
            tds = (
                f'<td class="{c}">{html.escape(v)}</td>'
                for v, c in zip(r, cls, strict=True)
            )
            out.append("<tr>" + "".join(tds) + "</tr>")
        out.append("</tbody></table>")
        out += [f'<p class="tt-table-note">{html.escape(n)}</p>' for n in self.notes]
        return "\n".join(out)

    def text(self) -> str:
        widths = [
            max([len(h)] + [len(r[i]) for r in self.cells])
            for i, h in enumerate(self.head)
        ]

        def line(cells):
            return "  ".join(
                c.rjust(w) if n else c.ljust(w)
                for c, w, n in zip(cells, widths, self.numeric, strict=True)
            ).rstrip()

        out = [self.caption] if self.caption else []
        out += [line(self.head), "  ".join("-" * w for w in widths)]
        out += [line(r) for r in self.cells]
        return "\n".join(out + self.notes)

    def __repr__(self) -> str:
        return self.text()

    def __str__(self) -> str:
        return self.text()


def _notes(
    dashed: Sequence[str], why: str | Mapping[str, str] | None, extra: Sequence[str]
) -> list[str]:
    """The note under a table: why each column with a dash has one."""
    notes = []
    if dashed:
        if isinstance(why, Mapping):
            reasons: dict[str, list[str]] = {}
            for h in dashed:
                reasons.setdefault(why.get(h, why.get("*", MISSING)), []).append(h)
            parts = [
                f"{', '.join(hs)}: {r}" if len(reasons) > 1 else r
                for r, hs in reasons.items()
            ]
            notes.append(f"{DASH} " + "; ".join(parts) + ".")
        else:
            notes.append(f"{DASH} {why or MISSING}.")
    return notes + list(extra)


def grid(
    head: Sequence[str],
    body: Sequence[Sequence[object]],
    fmt: Sequence[str] | None = None,
    *,
    caption: str = "",
    why: str | Mapping[str, str] | None = None,
    notes: Sequence[str] = (),
) -> Table:
    """A table of plain cells: ``head`` (headers), ``body`` (rows of values),
    ``fmt`` (a format spec per column for numbers; '' for none). Missing values
    show DASH; ``why`` says why in a note (one reason, or header -> reason, '*'
    for the rest); ``notes`` are further lines under the table."""
    fmt = list(fmt) if fmt is not None else [""] * len(head)
    if len(fmt) != len(head):
        raise ValueError(f"{len(fmt)} formats for {len(head)} columns")
    cols = list(zip(*body, strict=True)) if body else [() for _ in head]
    if body and len(cols) != len(head):
        raise ValueError(f"rows of {len(cols)} cells under {len(head)} headers")
    numeric = [_is_numeric(c, f) for c, f in zip(cols, fmt, strict=True)]
    cells = [[fmt_cell(v, f) for v, f in zip(r, fmt, strict=True)] for r in body]
    dashed = [h for i, h in enumerate(head) if any(r[i] == DASH for r in cells)]
    return Table(head, cells, numeric, caption, _notes(dashed, why, notes))


def table(
    rows: Sequence[Mapping],
    columns: Sequence[tuple[str, str | Callable, str]],
    *,
    caption: str = "",
    why: str | Mapping[str, str] | None = None,
    notes: Sequence[str] = (),
    status: bool = True,
) -> Table:
    """Result rows under a chapter's COLUMNS ((header, field or callable(row),
    format spec) triples, as ``gpu.bench.print_table`` takes them). A row that is
    not ok (failed, skipped) shows dashes for what it lacks, and, with
    ``status``, a last column gives its status; its dashes are then explained by
    that column, not by ``why``."""
    columns = list(columns)
    bad = [r for r in rows if r.get("status", "ok") != "ok"]
    head = [h.strip() for h, _, _ in columns]
    body = [[_value(r, what) for _, what, _ in columns] for r in rows]
    fmt = [f for _, _, f in columns]
    if status and bad:
        head.append("status")
        fmt.append("")
        for b, r in zip(body, rows, strict=True):
            b.append(r.get("status", "ok"))
    # dashes of the rows that are not ok are explained by their status column
    ok_body = [
        b for b, r in zip(body, rows, strict=True) if r.get("status", "ok") == "ok"
    ]
    t = grid(head, body, fmt, caption=caption, notes=())
    dashed = [
        h
        for i, h in enumerate(head)
        if any(is_missing(b[i]) for b in (ok_body if status and bad else body))
    ]
    t.notes = _notes(dashed, why, notes)
    return t


def sources(docs: Mapping[str, dict | None], card: str | None, here: str = "") -> Table:
    """Where a page's GPU figures come from: one row per results file (card,
    driver, CuPy, commit, date, or "not recorded"), and what GPU the build ran on."""
    from gpu import results

    recorded = ", ".join(results.cards()) or "none"
    return grid(
        ["file", "recorded on"],
        [[f"results/{card}/{n}.json", results.source(d)] for n, d in docs.items()],
        caption="GPU figures on this page (set TT_CARD to read another card; "
        f"recorded: {recorded})",
        notes=[f"GPU here: {here}"] if here else [],
    )


def compile_table(reports, keep: Callable[[str], bool] | None = None, **kw) -> Table:
    """The compile gate's report (``gpu.check_kernels.compile_report``) as a
    table: registers, shared memory and spills per kernel, sorted by name."""
    rows = [
        r for r in sorted(reports, key=lambda r: r.name) if not keep or keep(r.name)
    ]
    kw.setdefault("caption", "Compiled here with NVRTC for sm_90")
    kw.setdefault("notes", [] if rows else ["Compile report unavailable here."])
    return grid(
        ["kernel", "registers", "shared memory, B", "spills, B"],
        [[r.name, r.registers, r.smem, r.spill_stores + r.spill_loads] for r in rows],
        **kw,
    )
