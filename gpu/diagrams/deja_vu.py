"""The Deja Vu chapter's best kernel: v3 of gpu/deja_vu.cu in deterministic mode.

What it draws, true to ``fused_v3`` and ``finish_v1`` and to the launcher
``gpu/deja_vu.py`` (fp16 storage, float32 sums):

- the grid: ceil(K / R3) blocks, R3 = 8 selected neurons a block; block p owns the
  ids idx[8p .. 8p + 7], so the same 8 gathered rows of w1 and of w2;
- phase 1 (``block_acts``): warp w of the block's 8 warps computes neuron 8p + w,
  its lanes striding over the w1 row and the x rows in 16-byte vectors (8 halves),
  a shuffle sum, then lane 0 writes relu(z + b1) into shared memory a_s[8][B];
- a barrier, then phase 2 (``load_rows``, ``rows_times_a``): thread t of the
  block's 256 takes the column vectors v = t, t + 256, ...; for each it loads one
  16-byte vector of each of the 8 w2 rows into registers (raw[8]), multiplies them
  by the 8 activations from shared memory into s[4][8] (a tile of 4 batch rows by
  8 columns, float32), and stores it with float4 stores into partial p of acc;
- the second launch, ``finish_v1``: a block per 128 columns and batch row, 8 warps;
  warp w sums partials w, w + 8, ... in order, the 8 warp sums add in warp order,
  then + b2 into out. The sum order is fixed, so the output is bitwise
  reproducible. (Atomic mode differs only in phase 2's write: float4 atomicAdd into
  one zeroed partial.)

Matplotlib only: no GPU, no CuPy, no results.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle

from gpu import bookplot as bp
from gpu.diagrams import arrow

R3 = 8  # neurons (and warps) per block, R3 in gpu/deja_vu.cu
THREADS = 32 * R3  # threads per block of fused_v3
BT = 4  # batch rows per register tile
VEC = 8  # fp16 values per 16-byte load
C_EXAMPLE = 4096  # the chapter's case (OPT-6.7B's MLP)

GLOBAL = "#F2F2F2"
SHARED = "#DDEEFF"
REG = "#FFF1CC"
ACCENT = bp.FAMILY["deja_vu"]
INK = "#222222"


def _box(ax, x, y, w, h, face, label=None, size=7, edge=INK, lw=0.9, **kw):
    ax.add_patch(Rectangle((x, y), w, h, facecolor=face, edgecolor=edge, lw=lw))
    if label:
        ax.text(
            x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=size,
            color=INK, **kw,
        )  # fmt: skip


def _arrow(ax, a, b, color=INK, rad=0.0, lw=1.0, ls="-"):
    arrow(
        ax,
        a,
        b,
        rad=rad,
        mutation_scale=8,
        color=color,
        lw=lw,
        ls=ls,
        shrinkA=1,
        shrinkB=1,
    )


def _matrix(ax, x, y, w, h, name, rows, col=None):
    """An (F, C) matrix in global memory with the block's gathered rows (fractions
    of the height, from the top) drawn as orange stripes; col: a column vector."""
    _box(ax, x, y, w, h, GLOBAL)
    for r in rows:
        ax.add_patch(
            Rectangle((x, y + h * (1 - r) - 0.35), w, 0.7, facecolor=ACCENT, lw=0)
        )
    if col is not None:
        ax.add_patch(
            Rectangle(
                (x + w * col, y),
                w * 0.06,
                h,
                facecolor="none",
                edgecolor=INK,
                lw=0.8,
                ls=(0, (2, 1)),
            )  # fmt: skip
        )
    ax.text(x, y + h + 0.6, name, ha="left", va="bottom", fontsize=7, color=INK)


def draw():
    """The v3 kernel (deterministic mode) of gpu/deja_vu.cu as a Figure."""
    fig, ax = plt.subplots(figsize=bp.figsize(7.2, 5.0))
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 70)
    ax.axis("off")
    ax.text(
        50, 69.5, "v3, deterministic: a grid of ⌈K/8⌉ blocks; block p owns the 8 "
        "neurons idx[8p … 8p+7] (8 warps, 256 threads)",
        ha="center", va="top", fontsize=7.5, weight="bold", color=INK,
    )  # fmt: skip

    # --- global memory (left column) -----------------------------------------
    ax.text(14, 64.5, "global memory (HBM)", ha="center", fontsize=7.5,
            weight="bold")  # fmt: skip
    # idx: K int32 ids, block p's 8 of them highlighted
    for i in range(24):
        face = ACCENT if 8 <= i < 16 else GLOBAL
        _box(ax, 2 + i, 59, 1, 2.2, face, lw=0.4)
    ax.text(2, 61.8, "idx (K,) int32: block p reads 8 ids", fontsize=6.5,
            va="bottom")  # fmt: skip
    rows = (0.12, 0.25, 0.33, 0.5, 0.58, 0.71, 0.8, 0.92)
    _matrix(ax, 2, 41, 18, 13, "w1 (F, C) fp16: 8 gathered rows", rows)
    _box(ax, 22, 47, 6, 3, GLOBAL, "x (B, C)", size=6)
    _matrix(ax, 2, 21, 18, 13, "w2 (F, C) fp16: the same 8 rows", rows, col=0.55)
    ax.text(11, 19.8, "dashed: column vector v\n(16 B of each row)", fontsize=6,
            ha="center", va="top")  # fmt: skip
    # the partials: one (B, C) float32 slab per block, side by side
    ax.text(2, 12.2, "acc (P, B, C) fp32, P = ⌈K/8⌉", fontsize=6.5, va="bottom")
    for j in range(6):
        face = ACCENT if j == 2 else GLOBAL
        _box(ax, 2 + j * 4.2, 6.5, 3.8, 5, face, lw=0.6)
    ax.text(2 + 2 * 4.2 + 1.9, 5.8, "partial p", fontsize=6, ha="center",
            va="top")  # fmt: skip

    # --- the block (middle column) ------------------------------------------
    bx, bw = 32, 38
    _box(ax, bx, 4, bw, 58.5, "white", edge=ACCENT, lw=1.4)
    ax.text(bx + bw / 2, 61.7, "block p of fused_v3 (launch 1)", ha="center",
            va="top", fontsize=7.5, weight="bold")  # fmt: skip
    # phase 1: 8 warps, one neuron each
    ax.text(bx + 1, 57.5, "phase 1: warp w → neuron 8p + w", fontsize=7,
            weight="bold", va="center")  # fmt: skip
    ww = (bw - 2) / R3
    for w in range(R3):
        _box(ax, bx + 1 + w * ww, 50, ww - 0.4, 5, "#FBE3BD", f"warp\n{w}",
             size=5.5)  # fmt: skip
    ax.text(
        bx + 1, 48.8,
        "32 lanes stride the w1 row and x in 16-B vectors\n"
        "(8 halves, 4 loads in flight); shuffle sum;\nlane 0: a = relu(z + b1)",
        fontsize=6, va="top",
    )  # fmt: skip
    # shared memory a_s[8][B]
    _box(ax, bx + 1, 37.2, bw - 2, 4.8, SHARED)
    for r in range(R3):
        _box(ax, bx + 2 + r * 2.0, 38.2, 1.8, 2.8, "white", lw=0.5)
    ax.text(bx + 27.5, 39.6, "shared a_s[8][B] fp32\n(a never leaves the SM)",
            fontsize=6.5, va="center", ha="center")  # fmt: skip
    ax.plot([bx + 1, bx + bw - 1], [35.4, 35.4], color=INK, lw=0.8, ls=(0, (3, 2)))
    ax.text(bx + bw / 2, 35.7, "__syncthreads()", fontsize=6, ha="center",
            va="bottom", family="monospace")  # fmt: skip
    # phase 2: thread -> column vectors
    ax.text(bx + 1, 33, "phase 2: thread t → column vectors",
            fontsize=7, weight="bold", va="center")  # fmt: skip
    ax.text(bx + 1, 31, f"v = t, t + 256, … (C/8 of them: {C_EXAMPLE // VEC} at "
            f"C = {C_EXAMPLE})", fontsize=6, va="center")  # fmt: skip
    _box(ax, bx + 1, 21.5, 16, 7.5, REG)
    for r in range(R3):
        _box(ax, bx + 2 + r * 1.75, 22.3, 1.5, 3.0, ACCENT, lw=0.4)
    ax.text(bx + 9, 27.6, "registers raw[8]", fontsize=6.5, ha="center",
            va="center")  # fmt: skip
    ax.text(bx + 9, 26.3, "16 B of each w2 row", fontsize=5.5, ha="center",
            va="center")  # fmt: skip
    _box(ax, bx + 21, 21.5, 16, 7.5, REG)
    for t in range(BT):
        for e in range(VEC):
            _box(ax, bx + 23 + e * 1.5, 22.1 + t * 0.8, 1.4, 0.7, "white", lw=0.3)
    ax.text(bx + 29, 27.9, f"registers s[{BT}][{VEC}] fp32", fontsize=6.5,
            ha="center", va="center")  # fmt: skip
    ax.text(bx + 29, 26.6, "4 batch rows × 8 columns", fontsize=5.5,
            ha="center", va="center")  # fmt: skip
    ax.text(
        bx + 1, 17.5,
        "s[b][e] += a_s[r][b] · raw[r][e], r = 0 … 7:\n"
        "each w2 vector is loaded once\nand used for every batch row",
        fontsize=6, ha="left", va="center",
    )  # fmt: skip
    _box(ax, bx + 7, 6.5, bw - 9, 6, "white",
         "float4 stores of s into partial p\n(atomic mode: float4 atomicAdd\n"
         "into one zeroed partial)", size=6)  # fmt: skip

    # --- the finish kernel (right column) ------------------------------------
    fx, fw = 74, 24.5
    _box(ax, fx, 24, fw, 38.5, "white", edge=INK, lw=1.2)
    ax.text(fx + fw / 2, 61.7, "finish_v1 (launch 2)", ha="center", va="top",
            fontsize=7.5, weight="bold")  # fmt: skip
    ax.text(
        fx + 1, 57.5,
        "a block per 128 columns and\nbatch row, 8 warps;\nlane → 4 columns\n\n"
        "warp w sums partials\nw, w + 8, w + 16, … in order\n\n"
        "shared part[8][32] float4\n\nwarp 0 adds the 8 warp sums\nin warp "
        "order, then + b2",
        fontsize=6, va="top",
    )  # fmt: skip
    ax.text(fx + fw / 2, 36, "a fixed order:\nbitwise reproducible",
            fontsize=6.5, ha="center", va="center", style="italic")  # fmt: skip
    _box(ax, fx + 5, 8, fw - 6, 5, GLOBAL, "out (B, C) fp16\n(global)", size=6.5)

    # --- the flow ------------------------------------------------------------
    _arrow(ax, (20, 50), (bx + 1, 53), color=ACCENT, lw=1.3)  # w1 rows -> warps
    _arrow(ax, (28, 48.5), (bx + 1, 51), lw=0.8)  # x -> warps
    _arrow(ax, (bx + 30, 50), (bx + 30, 42), lw=0.8)  # warps -> a_s
    _arrow(ax, (13, 27), (bx + 1, 25), color=ACCENT, lw=1.3)  # w2 vector -> raw
    _arrow(ax, (bx + 17, 25.2), (bx + 21, 25.2), lw=0.8)  # raw -> s
    _arrow(ax, (bx + 34.5, 37.2), (bx + 34.5, 29), color="#5588BB", lw=0.8)  # a_s -> s
    _arrow(ax, (bx + 33, 21.5), (bx + 33, 12.5), lw=0.8)  # s -> stores
    _arrow(ax, (bx + 7, 9.5), (25.5, 9.5), lw=1.1)  # stores -> partial p
    # the partials -> the finish kernel, under the block
    ax.plot([20, 20, fx + 2.5, fx + 2.5], [6.5, 1.5, 1.5, 18], color=INK, lw=1.1,
            ls=(0, (4, 2)))  # fmt: skip
    _arrow(ax, (fx + 2.5, 17.5), (fx + 2.5, 24), lw=1.1)
    ax.text(fx + 3.2, 16, "all P\npartials", fontsize=6, va="center")
    _arrow(ax, (fx + fw / 2 + 3, 24), (fx + fw / 2 + 3, 13), lw=0.8)  # -> out
    fig.tight_layout(pad=0.2)
    return fig
