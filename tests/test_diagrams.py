"""The chapters' kernel diagrams (gpu/diagrams/<slug>.py) draw on the CPU, one per
chapter, at the book's resolution, and each chapter shows its own."""

from __future__ import annotations

import importlib
import io
import struct
from pathlib import Path

import pytest

from gpu import bookplot as bp
from gpu import diagrams

ROOT = Path(__file__).resolve().parents[1]


def _png_dpi(data: bytes) -> float:
    """Horizontal dots per inch from a PNG's pHYs chunk (0 if it has none)."""
    i = data.find(b"pHYs")
    if i < 0:
        return 0.0
    ppm_x, _, unit = struct.unpack(">IIB", data[i + 4 : i + 13])
    return ppm_x * 0.0254 if unit == 1 else 0.0


def test_every_chapter_has_a_diagram_module():
    found = {p.stem for p in (ROOT / "gpu" / "diagrams").glob("*.py")} - {"__init__"}
    assert found == set(diagrams.SLUGS)


@pytest.mark.parametrize("slug", diagrams.SLUGS)
def test_diagram_draws_at_the_book_resolution(slug):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bp.use()
    fig = importlib.import_module(f"gpu.diagrams.{slug}").draw()
    assert isinstance(fig, matplotlib.figure.Figure)
    width, _ = fig.get_size_inches()
    assert width <= bp.MAX_WIDTH + 1e-9, f"{slug}: wider than the text column"
    texts = [t for ax in fig.axes for t in ax.texts if t.get_text().strip()]
    assert len(texts) >= 5, f"{slug}: a diagram should label what it shows"
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    assert _png_dpi(buf.getvalue()) >= 150


@pytest.mark.parametrize("slug", diagrams.SLUGS)
def test_the_chapter_shows_its_diagram(slug):
    (chapter,) = (ROOT / "book").glob(f"[0-9][0-9]_{slug}.md")
    assert f"gpu.diagrams import {slug}" in chapter.read_text(), chapter.name


def test_slim_attention_v7_diagram_draws_and_is_shown():
    """The chapter's second slim-attention diagram (v7's warp roles) draws within
    the column at the book's resolution, and chapter 3 shows it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gpu.diagrams import slim_attention

    bp.use()
    fig = slim_attention.draw_v7()
    assert fig.get_size_inches()[0] <= bp.MAX_WIDTH + 1e-9
    assert len([t for t in fig.axes[0].texts if t.get_text().strip()]) >= 5
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    assert _png_dpi(buf.getvalue()) >= 150
    (chapter,) = (ROOT / "book").glob("[0-9][0-9]_slim_attention.md")
    assert "diagram.draw_v7()" in chapter.read_text()
