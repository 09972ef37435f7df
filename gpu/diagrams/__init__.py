"""One diagram per chapter: which thread, warp, block or cluster of the chapter's
best kernel owns which data, and how its tiles flow through shared memory and
registers. Each module ``gpu/diagrams/<slug>.py`` has ``draw() -> Figure``, drawn
with Matplotlib alone (no GPU, no CuPy) in the book's figure style
(``gpu.bookplot``); the chapter shows it, and ``tests/test_diagrams.py`` draws every
one on the CPU.
"""

SLUGS = (
    "attention",
    "precompute",
    "slim_attention",
    "deja_vu",
    "stagformer",
    "ffn_approx",
)


def arrow(ax, a, b, *, rad: float = 0.0, **style) -> None:
    """An arrow from point a to point b on ``ax`` (a FancyArrowPatch), bent by
    ``rad`` (arc3); ``style`` overrides the defaults below (arrowstyle,
    mutation_scale, lw, color, ls, shrinkA, shrinkB, ...). Each diagram keeps its
    own defaults in a one-line ``_arrow``."""
    from matplotlib.patches import FancyArrowPatch

    kw = dict(arrowstyle="-|>", mutation_scale=7, lw=0.8, color="0.25")
    kw.update(style)
    if rad:
        kw["connectionstyle"] = f"arc3,rad={rad}"
    ax.add_patch(FancyArrowPatch(a, b, **kw))
