"""A chapter as a notebook: converted (tools/notebooks.py, as ``make notebooks``
does) and executed with nbclient on the CPU, so the "run it as a notebook" path is
checked, not assumed.

The chapter is chapter 2 (precompute): it runs in seconds and reads recorded GPU
figures, draws figures and renders tables, as every chapter does. Skipped (with the
reason) where jupytext, nbclient or an IPython kernel is not installed, e.g. on the
GPU machine.
"""

from __future__ import annotations

import base64
import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHAPTER = ROOT / "book" / "02_precompute.md"
sys.path.insert(0, str(ROOT / "tools"))


def _need(*mods):
    for m in mods:
        if importlib.util.find_spec(m) is None:
            pytest.skip(f"{m} is not installed (requirements.txt)")


def test_a_chapter_runs_as_a_notebook(tmp_path):
    _need("jupytext", "nbclient", "nbformat", "ipykernel")
    import nbformat
    import notebooks

    nb = notebooks.convert(CHAPTER)
    assert notebooks.NOTE_TAG in nb.cells[0].metadata["tags"]
    assert "only the HTML book renders" in nb.cells[0].source
    assert notebooks.with_note(nb).cells[1].cell_type != "markdown" or (
        notebooks.NOTE_TAG not in nb.cells[1].get("metadata", {}).get("tags", [])
    )  # the note is added once
    notebooks.execute(nb, CHAPTER.parent, timeout=600)
    nbformat.write(nb, tmp_path / "02_precompute.ipynb")
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html = [o.data["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any('class="tt-table"' in h for h in html), "no table rendered"
    assert not [h for h in html if re.search(r">\s*nan\s*<", h, re.I)]
    pngs = [o.data["image/png"] for o in outputs if "image/png" in o.get("data", {})]
    assert pngs, "no figure drawn"
    from test_book import MIN_DPI, png_dpi

    dpis = [png_dpi(base64.b64decode(p)) for p in pngs]
    assert all(d and d >= MIN_DPI - 0.5 for d in dpis), dpis
