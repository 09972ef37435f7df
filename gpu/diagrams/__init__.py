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
