"""GEMV v3 of gpu/stagformer.cu: who computes what, and one layer's launches.

The diagram follows the q|k|v GEMV of the benchmark model (C = 2048, H = G = 16,
D = 128, fp16 weights): W has d_in = 2048 rows (the reduction dimension, ``K`` in
the code) and d_out = 6144 columns (``M``); x has N rows (``N``: B for one stack,
2B for two stacks that share W). The grid and the chunk length come from the
launcher itself (``gpu.stagformer.k_split``, ``rows_v3``), so the numbers drawn
are the ones it launches.

(a) The grid: blockIdx.x picks a tile of 256 columns (32 lanes x 8 fp16 values,
    one 16-byte load a lane), blockIdx.y a chunk of kc rows of W (and of x),
    blockIdx.z the stack and the row tile. The last block of a column tile to
    finish sums the KB partials in order and writes y.
(b) One block: 8 warps share the chunk; warp w reads rows k0 + w + 8i, lane l
    columns 8l..8l+7; a lane keeps U3 = 8 loads of 16 bytes in flight (64 rows a
    round for the block).
(c) Inside a thread: the first 8 loads go out before the fused RMSNorm and the x
    tile; each loaded 16 bytes of W is multiplied into all R rows of x kept in
    shared memory. With shared weights both stacks' rows are among those R rows,
    so W is read once for both stacks; with separate weights gridDim.z = 2 and
    each stack's blocks read their own W.
(d) The epilogue: warps summed in order, the block's partial to global memory,
    the last block sums the partials in order kb = 0..KB-1 (bitwise the same in
    every schedule).
(e) One layer of the parallel decode step with v3: 10 launches, the GEMVs and
    self-attention of both stacks in one launch each, stack 2's cross-attention
    reading stack 1's output of the previous step.

Matplotlib only; nothing here needs a GPU or recorded results.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from gpu import bookplot as bp
from gpu import stagformer as gs
from gpu.diagrams import arrow

C, HD, GD = 2048, 16 * 128, 16 * 128  # the benchmark model: d_in, H D, G D
D_OUT = HD + 2 * GD  # the fused q|k|v row: 6144 columns
U3 = 8  # 16-byte loads of W in flight a lane (gpu/stagformer.cu, v3)
ORANGE = bp.FAMILY["stagformer"]
BLUE = bp.FAMILY["attention"]
GREY = "0.55"
WARP_COLORS = (
    "#E69F00",
    "#56B4E9",
    "#009E73",
    "#F0E442",
    "#0072B2",
    "#D55E00",
    "#CC79A7",
    "#999999",
)


def _box(ax, x, y, w, h, text="", fc="white", ec="0.2", fs=6.5, **kw):
    ax.add_patch(Rectangle((x, y), w, h, fc=fc, ec=ec, lw=kw.pop("lw", 0.7), **kw))
    if text:
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fs)


def _arrow(ax, p, q, color="0.2", style="-|>", **kw):
    arrow(ax, p, q, arrowstyle=style, color=color, **kw)


def _title(ax, x, y, text):
    ax.text(x, y, text, fontsize=7.5, fontweight="bold", ha="left", va="bottom")


def _grid(ax, kb, kc, tiles):
    """(a): W as column tiles x chunks, x^T beside it, y under it."""
    _title(ax, 0, 131, "(a) one launch over W (q|k|v, fp16)")
    x0, y0, w, h = 13.0, 93.0, 52.0, 30.0
    rows = [min(kc, C - i * kc) for i in range(kb)]
    tops = y0 + h - h * np.cumsum([0] + rows) / C  # chunk boundaries, top down
    bx, by = 5, 3  # the block drawn in (b)
    tw = w / tiles
    ax.add_patch(Rectangle((x0, y0), w, h, fc="#FBE3D3", ec="0.2", lw=0.7))
    for i in range(1, tiles):
        ax.plot([x0 + i * tw] * 2, [y0, y0 + h], color="0.55", lw=0.3)
    for t in tops[1:-1]:
        ax.plot([x0, x0 + w], [t, t], color="0.55", lw=0.3)
    ax.add_patch(
        Rectangle(
            (x0 + bx * tw, tops[by + 1]),
            tw,
            tops[by] - tops[by + 1],
            fc=ORANGE,
            ec="k",
            lw=0.8,
        )  # fmt: skip
    )
    ax.text(
        x0 + w / 2, y0 + h + 1.2,
        f"blockIdx.x: {tiles} column tiles of 256 (32 lanes x 8 values)",
        ha="center", va="bottom", fontsize=6.3,
    )  # fmt: skip
    ax.text(
        2.2, y0 + h / 2,
        f"blockIdx.y: KB = {kb} chunks of kc = {kc}\n"
        f"rows of d_in = {C} (K in the code)",
        ha="center", va="center", fontsize=6.0, rotation=90,
    )  # fmt: skip
    # x^T: the input rows, one chunk of them per block row
    _box(ax, 7.0, y0, 3.0, h, fc="#D9E8F5")
    ax.add_patch(
        Rectangle(
            (7.0, tops[by + 1]), 3.0, tops[by] - tops[by + 1], fc=BLUE, ec="k", lw=0.8
        )
    )
    ax.text(8.5, y0 - 1.0, "$x^T$", ha="center", va="top", fontsize=6.3)
    # y: written by the last block of each column tile
    _box(ax, x0, y0 - 7.0, w, 3.0, fc="#E8E8E8")
    ax.add_patch(Rectangle((x0 + bx * tw, y0 - 7.0), tw, 3.0, fc=ORANGE, ec="k"))
    ax.text(
        x0 + w / 2, y0 - 8.0,
        f"y (N x d_out = {D_OUT}): a tile is written by the last of its {kb} blocks"
        f"\nblockIdx.z: stack and row tile of R rows; grid ({tiles}, {kb}, Z ceil(N/R))"
        f"\n= {tiles * kb} blocks a stack; Z = 2 for separate weights, else 1",
        ha="center", va="top", fontsize=6.0, linespacing=1.25,
    )  # fmt: skip
    _arrow(ax, (x0 + (bx + 0.5) * tw, tops[by + 1]), (x0 + (bx + 0.5) * tw, y0 - 3.8))
    return (x0 + (bx + 1) * tw, tops[by]), (x0 + (bx + 1) * tw, tops[by + 1])


def _block(ax, corner_top, corner_bottom, kc):
    """(b): one block's tile, rows by warp, columns by lane."""
    _title(ax, 80, 131, f"(b) one block: its {kc} x 256 tile of W")
    x0, y0, w, h = 88.0, 93.0, 52.0, 30.0
    shown = 16  # rows drawn: two groups of 8 (one row a warp each)
    rh = h / (shown + 1)
    for i in range(shown):
        ax.add_patch(
            Rectangle(
                (x0, y0 + h - (i + 1) * rh),
                w,
                rh,
                fc=WARP_COLORS[i % 8],
                alpha=0.55,
                ec="0.3",
                lw=0.3,
            )  # fmt: skip
        )
        ax.text(
            x0 - 0.6, y0 + h - (i + 0.5) * rh, f"warp {i % 8}",
            ha="right", va="center", fontsize=5.0,
        )  # fmt: skip
    ax.text(x0 + w / 2, y0 + rh / 2, "...", ha="center", va="center", fontsize=6.0)
    ax.add_patch(Rectangle((x0, y0), w, h, fc="none", ec="0.2", lw=0.7))
    lw_ = w / 32
    for lane in range(1, 32):
        ax.plot([x0 + lane * lw_] * 2, [y0 + rh, y0 + h], color="0.35", lw=0.25)
    for lane, lab in ((0, "0"), (1, "1"), (31, "31")):
        ax.text(
            x0 + (lane + 0.5) * lw_, y0 + h + 0.6, lab,
            ha="center", va="bottom", fontsize=5.3,
        )  # fmt: skip
    ax.text(
        x0 + 16 * lw_, y0 + h + 0.6, "lane l: columns 8l..8l+7",
        ha="center", va="bottom", fontsize=6.0,
    )  # fmt: skip
    # one lane's 16-byte loads: warp 2, lane 5, rows k0 + 2 and k0 + 10
    for i in (2, 10):
        ax.add_patch(
            Rectangle(
                (x0 + 5 * lw_, y0 + h - (i + 1) * rh),
                lw_,
                rh,
                fc="k",
                ec="k",
                lw=0.5,
            )  # fmt: skip
        )
    ax.text(
        x0 - 8.0, y0 - 1.2,
        f"warp w reads rows k0 + w + 8i: {kc // 8} rows, {kc // (8 * U3)} rounds "
        f"of {U3} loads a lane\n"
        "\u25a0 warp 2, lane 5: rows k0 + 2, k0 + 10, ... (16 bytes = 8 fp16 "
        "a load)",
        ha="left", va="top", fontsize=6.0, linespacing=1.4,
    )  # fmt: skip
    for a, b in ((corner_top, y0 + h), (corner_bottom, y0)):  # zoom from (a)
        ax.plot([a[0], x0], [a[1], b], color="0.5", lw=0.5, ls=":")


def _thread(ax):
    """(c): shared memory, registers, and the one-load-many-rows product."""
    _title(ax, 0, 73, "(c) one thread: each 16-byte load of W feeds all R rows")
    # prologue, in issue order
    steps = [
        ("8 loads of W\nissued first\n(wr[0..7], registers)", "#FBE3D3"),
        ("fused RMSNorm:\neach block sums its\nR rows over d_in", "#EEEEEE"),
        ("x tile, normed,\nxs[R][kc] in\nshared memory", "#D9E8F5"),
    ]
    for i, (t, fc) in enumerate(steps):
        _box(ax, 1.0 + i * 23.0, 59.0, 20.0, 11.0, t, fc=fc, fs=6.0)
        if i:
            _arrow(ax, (1.0 + i * 23.0 - 3.0, 64.5), (1.0 + i * 23.0, 64.5))
    # the product: one weight load, R accumulator rows
    _box(ax, 3.0, 41.0, 22.0, 8.0, "W[k, 8 columns]\none 16-byte load", "#FBE3D3")
    _box(ax, 33.0, 48.0, 32.0, 5.0, "stack 1's row: xs[0][k]", "#D9E8F5", fs=6.0)
    _box(ax, 33.0, 38.0, 32.0, 5.0, "stack 2's row: xs[1][k]", "#D9E8F5", fs=6.0)
    _box(ax, 33.0, 29.5, 32.0, 5.0, "acc[R][8] += x * w (registers)", "#FFF3C4", fs=6.0)
    _arrow(ax, (25.0, 46.0), (33.0, 50.5))
    _arrow(ax, (25.0, 44.0), (33.0, 40.5))
    _arrow(ax, (49.0, 38.0), (49.0, 34.5))
    ax.text(
        1.0, 34.5,
        "shared weights: one W,\nN = 2B rows (R = 2 at\nB = 1): W read once\n"
        "for both stacks",
        fontsize=6.0, va="center", ha="left", color=ORANGE,
    )  # fmt: skip
    ax.text(
        1.0, 24.5,
        "separate weights: gridDim.z = 2; blocks z = 1 read stack 2's W",
        fontsize=6.0, va="center", ha="left",
    )  # fmt: skip


def _epilogue(ax, kb):
    """(d): in-block reduction, partials, the last block."""
    _title(ax, 74, 73, "(d) the sums, in a fixed order")
    items = [
        ("red[8 warps][256]\nshared memory", "#EEEEEE"),
        ("sum warps 0..7\nin order: fin[R][256]", "#EEEEEE"),
        (f"partial of block kb\nto global memory\n({kb} per column tile)", "#E8E8E8"),
        (
            f"last block (counter):\nkb = 0..{kb - 1} in order,\nReLU, + residual -> y",
            "#FBE3D3",
        ),
    ]
    for i, (t, fc) in enumerate(items):
        y = 60.0 - i * 11.5
        _box(ax, 84.0, y, 40.0, 9.5, t, fc=fc, fs=6.0)
        if i:
            _arrow(ax, (104.0, y + 11.5), (104.0, y + 9.5))
    ax.text(
        126.0, 42.0, "a row's sum\nnever depends\non N, R or the\nother stack",
        fontsize=5.8, va="center", ha="left", color="0.3",
    )  # fmt: skip


def _layer(ax):
    """(e): one layer of the parallel step, v3."""
    _title(ax, 0, 17.5, "(e) one layer of the parallel step, v3: 10 launches")
    ax.text(
        1.0, 15.2, "(v2: 13, an RMSNorm launch before each norm+ GEMV)",
        fontsize=5.8, ha="left", va="bottom", color="0.3",
    )  # fmt: skip
    both, two, other = "#F3B48A", "#FBE3D3", "#D9E8F5"
    seq = [
        ("norm+\nq|k|v", both),
        ("store\nq,k,v", other),
        ("self-\nattn.", other),
        ("o\n+res", both),
        ("norm+\ncross q", two),
        ("scatter\nq", other),
        ("cross-\nattn.", other),
        ("cross o\n+res", two),
        ("norm+\nup, ReLU", both),
        ("down\n+res", both),
    ]
    w, gap = 12.2, 1.6
    for i, (t, fc) in enumerate(seq):
        x = 1.0 + i * (w + gap)
        _box(ax, x, 6.0, w, 8.0, t, fc=fc, fs=5.8)
        if i:
            _arrow(ax, (x - gap, 10.0), (x, 10.0))
    legend = [
        (both, "GEMV v3, both stacks in one launch"),
        (two, "GEMV v3, stack 2 only"),
        (other, "stores and attention (both stacks, or stack 2)"),
    ]
    for i, (fc, t) in enumerate(legend):
        _box(ax, 1.0 + i * 44.0, 0.5, 3.0, 3.0, fc=fc)
        ax.text(5.0 + i * 44.0, 2.0, t, fontsize=5.8, va="center", ha="left")
    ax.text(
        143.0, 17.6,
        "cross-attention reads h(i-1): stack 1's output of the last step",
        fontsize=5.8, ha="right", va="bottom", color="0.3",
    )  # fmt: skip


def draw() -> plt.Figure:
    """The diagram, as a Matplotlib figure (book style: ``bp.use()`` first)."""
    kb, kc = gs.k_split(C, D_OUT, np.float16)
    tiles = D_OUT // 256
    fig = plt.figure(figsize=bp.figsize(7.2, 6.75))
    ax = fig.add_axes((0.005, 0.005, 0.99, 0.99))
    ax.set_xlim(0, 144)
    ax.set_ylim(-1, 135)
    ax.set_aspect("equal")
    ax.axis("off")
    top, bottom = _grid(ax, kb, kc, tiles)
    _block(ax, top, bottom, kc)
    _thread(ax)
    _epilogue(ax, kb)
    _layer(ax)
    return fig
