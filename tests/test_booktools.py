"""The book's table, figure and source helpers (gpu/booktable.py, gpu/bookplot.py,
gpu/booksource.py), on the CPU.

Tables: a missing figure (None, NaN, an absent field) shows a dash and a note says
why, never "nan"; failed rows get a status column; formats drop their text
padding. Figures: one hue per kernel family, the baselines in one style, a figure
no wider than the text column. Sources: a version's diff is read from the kernel
file (a changed file changes the diff), listings take literalinclude's options.
"""

from __future__ import annotations

import math
import re

import pytest

from gpu import bench, bookplot, booksource, booktable

NAN = re.compile(r"\bnan\b", re.I)


def row(**kw):
    base = dict(name="v7", B=1, S=1024, median_us=12.1, p10_us=11.0, p90_us=13.0,
                gb_per_s=1000.0, floor_us=10.0, of_floor=0.83, error_used=0.04,
                status="ok")  # fmt: skip
    base.update(kw)
    return base


@pytest.mark.parametrize("missing", [None, math.nan, "drop"])
def test_a_missing_figure_is_a_dash_with_a_note(missing):
    r = row(error_used=missing)
    if missing == "drop":
        del r["error_used"]
    t = booktable.table([r], bench.DEFAULT_COLUMNS, why="not checked here")
    html = t._repr_html_()
    assert not NAN.search(html) and not NAN.search(t.text())
    assert booktable.DASH in t.cells[0]
    assert t.notes == [f"{booktable.DASH} not checked here."]


def test_no_dash_no_note_and_formats_lose_their_padding():
    t = booktable.table([row()], bench.DEFAULT_COLUMNS)
    assert not t.notes
    assert t.cells[0][3] == "12.10"  # ">11.2f" without its width
    assert t.numeric[3] and not t.numeric[0]


def test_failed_rows_get_a_status_column_and_the_reasons_per_column():
    rows = [row(), dict(name="v1", B=64, S=32768, status="FAILED: validation")]
    t = booktable.table(rows, bench.DEFAULT_COLUMNS)
    assert t.head[-1] == "status"
    assert t.cells[1][-1] == "FAILED: validation"
    assert not t.notes  # the failed row's dashes are explained by its status
    g = booktable.grid(["a", "b", "c"], [[1, None, None]], ["", ".1f", ".1f"],
                       why={"b": "not run", "*": "no baseline"})  # fmt: skip
    assert "b: not run" in g.notes[0] and "c: no baseline" in g.notes[0]


def test_html_escapes_and_every_row_has_every_column():
    t = booktable.grid(["x<y"], [["a&b"]])
    assert "x&lt;y" in t._repr_html_() and "a&amp;b" in t._repr_html_()
    with pytest.raises(ValueError):
        booktable.Table(["a", "b"], [["1"]], [False, False])


def test_one_hue_per_family_and_baselines_alike():
    hues = {f: bookplot.kernel(f)["color"] for f in bookplot.FAMILY}
    assert len(set(hues.values())) == len(hues)
    shades = bookplot.kernels("attention", ["v1", "v2", "v3"])
    assert shades["v3"]["color"] == hues["attention"]  # the newest: full colour
    assert len({s["color"] for s in shades.values()}) == 3
    assert len({s["ls"] for s in shades.values()}) == 3
    b0, b1 = bookplot.baseline(0), bookplot.baseline(1)
    assert b0["color"] == b1["color"] == bookplot.BASELINE_COLOR
    assert b0["mfc"] == "none" and b0["ls"] != b1["ls"]
    assert bookplot.figsize(13, 4)[0] == bookplot.MAX_WIDTH
    assert bookplot.DPI >= 150
    with pytest.raises(ValueError):
        bookplot.kernel("no such family")
    assert sorted(["v10", "v9", "v2"], key=bookplot.version_key) == ["v2", "v9", "v10"]


CU = """// header
// --- v1 ---
template <typename T>
__device__ void step_v1(const T* x, T* y) {
  y[0] = x[0];  // { a brace in a comment
}
// --- v2: wider ---
template <typename T>
__device__ void step_v2(const T* x, T* y) {
  if (x) {
    y[0] = x[0] + x[1];
  }
}
"""


def test_sections_functions_and_diffs_come_from_the_file(tmp_path):
    cu = tmp_path / "toy.cu"
    cu.write_text(CU)
    assert list(booksource.sections(cu)) == ["v1", "v2"]
    f1 = booksource.function(cu, "step_v1")
    assert f1.startswith("template") and f1.rstrip().endswith("}")
    assert "step_v2" not in f1
    a, b = booksource.function(cu, "step_v1"), booksource.function(cu, "step_v2")
    text = booksource.unified(a, b, "v1", "v2")
    assert "+    y[0] = x[0] + x[1];" in text and "-  y[0] = x[0];" in text
    cu.write_text(CU.replace("x[0] + x[1]", "x[0] * x[1]"))  # the code moves...
    b2 = booksource.function(cu, "step_v2")
    assert "+    y[0] = x[0] * x[1];" in booksource.unified(a, b2, "v1", "v2")
    with pytest.raises(KeyError):
        booksource.function(cu, "step_v3")


def test_the_chapters_diffs_and_listings_resolve():
    d = booksource.diff_functions("attention", "decode_v4", "decode_v6")
    assert d.text.startswith("--- attention.cu decode_v4")
    assert '<span class="tt-add">' in d._repr_html_()
    src = booksource.listing("reference/common.py", pyobject="decode_attention")
    assert src.text.startswith("def decode_attention")
    part = booksource.listing("gpu/attention.cu", start_after="// --- v1 ---",
                              end_before="// --- v2 ---")  # fmt: skip
    assert "decode_v1" in part.text and "decode_v2(" not in part.text


def test_the_chapters_have_no_literalinclude_and_their_listings_exist():
    """A literalinclude vanishes from a chapter made into a notebook; a listing
    through booksource does not. Every listing must name a file that exists."""
    book = booksource.ROOT / "book"
    chapters = sorted(book.glob("*.md"))
    assert chapters
    left = [
        f"{md.relative_to(booksource.ROOT)}:{k}"
        for md in chapters
        for k, line in enumerate(md.read_text().splitlines(), 1)
        if "{literalinclude}" in line
    ]
    assert not left, "literalinclude left (use bs.listing): " + ", ".join(left)
    call = re.compile(r"""bs\.listing\(\s*(["'])(.+?)\1""")
    named, missing = 0, []
    for md in chapters:
        text = md.read_text()
        for m in call.finditer(text):
            named += 1
            if not (booksource.ROOT / m.group(2)).is_file():
                k = text.count("\n", 0, m.start()) + 1
                missing.append(f"{md.relative_to(booksource.ROOT)}:{k}: {m.group(2)}")
    assert named, "no bs.listing call found in the chapters"
    assert not missing, "listings of missing files: " + ", ".join(missing)
