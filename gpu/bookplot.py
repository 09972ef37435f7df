"""One figure style for the whole book: resolution, sizes, colours, floor lines.

Every chapter calls ``use()`` once, then draws its series through ``kernel`` (a
kernel of one family: one hue per family across the book, darker for later
versions, a line style and marker per version), ``baseline`` (every baseline in
one style: near-black, dashed, open markers) and ``floor`` / ``floor_curve`` (a
grey line with its label written beside it, not only in the legend).

Figures are drawn at ``DPI`` dots per inch and at most ``MAX_WIDTH`` inches wide,
so that the HTML book shows them close to their physical size (the text column
is about 690 CSS pixels, 7.2 inches at 96 px an inch) with more than 1.5 image
pixels per screen pixel; ``tests/test_book.py`` checks both in the built book.
Nothing here needs a GPU.
"""

from __future__ import annotations

import re

DPI = 200  # what every figure is drawn and embedded at (>= 150: the test's bound)
MAX_WIDTH = 7.2  # inches: the book's text column at 96 CSS px an inch
WIDTH = 7.0  # the default figure width

# One hue per kernel family, the same in every chapter; a family's versions are
# shades of it (``kernel``). Colour-blind-safe hues (Okabe and Ito).
FAMILY = {
    "attention": "#0072B2",  # K+V decode attention (chapters 1 and 3)
    "precompute": "#CC79A7",
    "slim": "#009E73",  # K-only cache
    "xcache": "#56B4E9",  # X cache
    "deja_vu": "#E69F00",
    "stagformer": "#D55E00",
    "moe": "#8C564B",
    "dense": "#7F7F7F",  # our own dense kernels where they are not the baseline
}
BASELINE_COLOR = "#222222"
FLOOR_COLOR = "0.45"
LINESTYLES = (
    "-",
    "--",
    "-.",
    ":",
    (0, (5, 1, 1, 1)),
    (0, (1, 1)),
    (0, (3, 1, 1, 1, 1, 1)),
)
MARKERS = ("o", "^", "s", "D", "v", "P", "X", "*")
BASELINE_STYLES = ("--", "-.", ":", (0, (5, 2)))


def use() -> None:
    """The book's Matplotlib settings (call once, after importing pyplot)."""
    import matplotlib as mpl

    mpl.rcParams.update(
        {
            "figure.dpi": DPI,  # IPython's inline backend embeds at the figure's dpi
            "savefig.dpi": DPI,
            "figure.figsize": (WIDTH, 3.6),
            "font.size": 9,
            "axes.titlesize": 9,
            "axes.labelsize": 9,
            "xtick.labelsize": 8,
            "ytick.labelsize": 8,
            "legend.fontsize": 7.5,
            "legend.framealpha": 0.85,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "lines.markersize": 4,
            "figure.constrained_layout.use": False,
        }
    )


def figsize(width: float = WIDTH, height: float = 3.6) -> tuple[float, float]:
    """A figure size no wider than the text column (MAX_WIDTH inches)."""
    return (min(width, MAX_WIDTH), height)


def _shade(hex_color: str, t: float) -> tuple[float, float, float]:
    """hex_color mixed with white: t = 1 the colour itself, t = 0 white."""
    r, g, b = (int(hex_color[i : i + 2], 16) / 255 for i in (1, 3, 5))
    return tuple(1 - t * (1 - c) for c in (r, g, b))


def kernel(family: str, i: int = 0, n: int = 1) -> dict:
    """Line keywords for the i-th of n versions of a kernel family: the family's
    hue, lighter for earlier versions (the last, n - 1, is the full colour), and
    a line style and marker of its own."""
    if family not in FAMILY:
        raise ValueError(f"family {family!r}: one of {sorted(FAMILY)}")
    t = 1.0 if n <= 1 else 0.45 + 0.55 * i / (n - 1)
    return dict(
        color=_shade(FAMILY[family], t),
        ls=LINESTYLES[i % len(LINESTYLES)],
        marker=MARKERS[i % len(MARKERS)],
    )


def kernels(family: str, names) -> dict[str, dict]:
    """``kernel`` keywords for each of ``names`` (oldest first), as a dict."""
    names = list(names)
    return {nm: kernel(family, i, len(names)) for i, nm in enumerate(names)}


def baseline(i: int = 0) -> dict:
    """Line keywords of the i-th baseline of a figure: every baseline of the book
    is near-black with open markers; i picks its dash pattern."""
    return dict(
        color=BASELINE_COLOR,
        ls=BASELINE_STYLES[i % len(BASELINE_STYLES)],
        marker=MARKERS[(i + 2) % len(MARKERS)],
        mfc="none",
        lw=1.3,
    )


def floor(ax, y: float, label: str, where: str = "right", **kw):
    """A horizontal floor line at y, labelled on the plot (and in the legend)."""
    style = dict(color=FLOOR_COLOR, lw=1.2, ls=(0, (6, 2)), zorder=1)
    style.update(kw)
    line = ax.axhline(y, label=label, **style)
    x, ha = (0.99, "right") if where == "right" else (0.01, "left")
    ax.annotate(
        label, xy=(x, y), xycoords=("axes fraction", "data"), ha=ha, va="bottom",
        fontsize=7.5, color=style["color"], xytext=(0, 1.5),
        textcoords="offset points",
    )  # fmt: skip
    return line


def floor_curve(ax, x, y, label: str, **kw):
    """A floor that varies along x (a line through the points), labelled at its
    last point (and in the legend)."""
    style = dict(color=FLOOR_COLOR, lw=1.2, ls=(0, (6, 2)), zorder=1)
    style.update(kw)
    x, y = list(x), list(y)
    (line,) = ax.plot(x, y, label=label, **style)
    if x:
        ax.annotate(
            label, xy=(x[-1], y[-1]), ha="right", va="bottom", fontsize=7.5,
            color=style["color"], xytext=(0, 2), textcoords="offset points",
        )  # fmt: skip
    return line


def version_key(name: str) -> tuple:
    """Sort key of a version name: 'v10' after 'v9'; numbers compare as numbers."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))
