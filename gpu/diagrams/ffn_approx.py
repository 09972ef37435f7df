"""The σ-MoE layer v5 (the chapter's fastest): its five launches, and the grouped
GEMM tile that its up and down launches share (``gemm_v5`` on ``Tile5<64, 128, 32,
32, 64, 3>`` in gpu/ffn_approx.cu).

Top: the launches in order (router v3, sort v3 = ``scatter_v3``, up v5, down v5,
combine v2), with their grids and what each writes for the next. Bottom: one block
of the up GEMM. Its tile is 64 consecutive rows of the sorted pair order, all of
one expert e (the tile table never lets a tile straddle two experts; rows past the
segment are zero-filled and never stored). Each tile row m is the pair
p = order[q0 + m], kept in shared memory (``rowp``), and its A row is x[p / K],
gathered from x. B is w1[e] (C x M; the code calls M ``G``), read in 32-deep slabs.
A 3-stage ``cp.async`` ring holds slab kt (being read by ``ldmatrix``), slab kt + 1
(in flight) and slab kt + 2 (issued this step), each stage an A part of 64 x 40 and
a B part of 32 x 136 halves (padded rows: conflict-free ``ldmatrix``): 3 x 13,824
bytes. Four warps split the 64 x 128 fp32 accumulator tile into 32 x 64 quarters,
2 x 8 ``mma.m16n8k16`` fragments each. The epilogue scales by gate x ReLU, rounds
to fp16 into shared memory (the drained ring, 64 x 136 halves), and stores whole
16-byte row pieces: h row q (sorted order) in the up GEMM; in the down GEMM (same
tile, A = h rows, B = w2[e]) z row p = order[q] (pair order).

Drawn with Matplotlib alone; nothing here reads results or needs a GPU.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle

from gpu import bookplot as bp
from gpu.diagrams import arrow

MOE = bp.FAMILY["moe"]
INK = "#222222"
GREY = "0.82"
LIGHT = "#EADBD3"  # a pale shade of the MoE hue
MID = "#C29A86"
WARP = ("#8C564B", "#B07A68", "#6E4035", "#CFA595")  # warps 0-3
BLUE = "#56B4E9"  # in-flight copies
FS = 6.2  # the diagram's body text size


def _box(ax, x, y, w, h, fc="white", ec=INK, lw=0.7, **kw):
    ax.add_patch(Rectangle((x, y), w, h, facecolor=fc, edgecolor=ec, lw=lw, **kw))


def _text(ax, x, y, s, size=FS, ha="center", va="center", **kw):
    kw.setdefault("color", INK)
    ax.text(x, y, s, fontsize=size, ha=ha, va=va, **kw)


def _arrow(ax, a, b, color=INK, lw=0.8, style="-|>", rad=0.0, ls="-"):
    arrow(
        ax,
        a,
        b,
        rad=rad,
        arrowstyle=style,
        mutation_scale=6,
        lw=lw,
        color=color,
        ls=ls,
        shrinkA=0,
        shrinkB=0,
    )


def _pipeline(ax):
    """The five launches of layer v5 and what each writes."""
    steps = (
        (
            "router v3",
            "a block per 16 tokens,\n4 warps (tensor cores)",
            "idx, gate (T × K)\nbhist: each block's\nexpert histogram",
        ),
        (
            "sort v3 (scatter)",
            "a block per 16 tokens,\n256 threads",
            "counts, offsets, tiles (E + 1)\norder (P = TK pairs,\nsorted by expert)",
        ),
        (
            "up v5",
            "a block per 64-row tile,\n4 warps",
            "h (P × M), fp16,\nrow q: sorted order",
        ),
        (
            "down v5",
            "a block per tile and\n128 columns of C",
            "z (P × C), fp16,\nrow p = order[q]",
        ),
        (
            "combine v2",
            "a block per token,\n16-byte vectors",
            "out (T × C): Σ over\nslots j = 0..K−1, in order",
        ),
    )
    w, gap, y0, h = 17.6, 2.5, 90.0, 7.2
    for i, (name, grid, writes) in enumerate(steps):
        x = 1.0 + i * (w + gap)
        hot = i in (2, 3)
        _box(
            ax,
            x,
            y0,
            w,
            h,
            fc=LIGHT if hot else "white",
            ec=MOE if hot else INK,
            lw=1.1 if hot else 0.7,
        )
        _text(ax, x + w / 2, y0 + h - 1.9, name, size=7, weight="bold")
        _text(ax, x + w / 2, y0 + 2.3, grid, size=5.6)
        _text(ax, x + w / 2, y0 - 4.6, writes, size=5.6, style="italic")
        if i:
            _arrow(ax, (x - gap, y0 + h / 2), (x, y0 + h / 2))
    _text(
        ax,
        50,
        99.3,
        "Layer v5: five launches, one CUDA graph, no host sync",
        size=7.2,
        weight="bold",
    )


def _tile(ax):
    """One block of up v5: gather, ring, warps, epilogue."""
    _text(
        ax,
        50,
        79.0,
        "One block of up v5 (down v5 is the same tile: A = h rows q, B = w2[e])",
        size=7.2,
        weight="bold",
    )

    # --- the sorted pair order and the tile table -------------------------
    ox, ow, top, bot = 10.0, 4.0, 73.0, 44.0
    segs = ((73.0, 69.0, GREY), (69.0, 51.5, MID), (51.5, 44.0, GREY))
    for y1, y2, fc in segs:
        _box(ax, ox, y2, ow, y1 - y2, fc=fc, lw=0.5)
    _text(ax, ox + ow / 2, 71.0, "e − 1", size=5.4)
    _text(ax, ox + ow / 2, 66.0, "e", size=6.0, weight="bold")
    _text(ax, ox + ow / 2, 47.5, "e + 1", size=5.4)
    bx = ox + ow + 0.5  # the tile table's brackets: 64 sorted rows each
    for y1, y2 in ((69.0, 62.5), (62.5, 56.0), (56.0, 51.5)):
        ax.plot(
            [bx, bx + 0.6, bx + 0.6, bx],
            [y1 - 0.2, y1 - 0.2, y2 + 0.2, y2 + 0.2],
            color=INK,
            lw=0.6,
        )
    ax.plot([bx + 0.6] * 2, [51.5, 49.7], color=INK, lw=0.6, ls=(0, (1.5, 1)))
    ax.plot([bx, bx + 0.6], [49.7, 49.7], color=INK, lw=0.6)
    _box(ax, ox - 0.3, 56.0, ow + 0.6, 6.5, fc="none", ec=MOE, lw=1.6)
    _text(ax, ox + ow / 2, top + 3.2, "order", size=6.5, weight="bold")
    _text(ax, ox - 0.6, 69.0, "offsets[e]", size=5.0, ha="right")
    _text(ax, ox - 0.6, 51.5, "offsets[e+1]", size=5.0, ha="right")
    _text(
        ax,
        ox - 0.6,
        59.3,
        "tile b:\n64 rows\nq0…q0+63",
        size=5.0,
        ha="right",
        color=MOE,
    )
    _text(
        ax,
        ox - 0.6,
        46.2,
        "last tile:\nrows past\nthe segment:\nzero, not stored",
        size=4.8,
        ha="right",
    )
    _text(ax, ox + ow / 2 - 2.0, bot - 3.6, "P = TK pairs,\nsorted by expert", size=5.2)

    # --- x in global memory, rows gathered --------------------------------
    xx, xw = 20.0, 11.0
    _box(ax, xx, bot, xw, top - bot, fc="white", lw=0.6)
    _text(ax, xx + xw / 2, top + 3.2, "x (T × C)", size=6.5, weight="bold")
    rows = (71.0, 66.5, 63.0, 58.0, 53.5, 47.0)  # tokens p / K, in ascending order
    kx0, kw = xx + 3.0, 2.2  # the current 32-column slab kt
    ax.add_patch(Rectangle((kx0, bot), kw, top - bot, facecolor=LIGHT, lw=0))
    for i, ry in enumerate(rows):
        ax.plot([xx, xx + xw], [ry, ry], color=MOE, lw=1.3)
        _arrow(ax, (bx + 0.8, 61.8 - i * 1.1), (xx, ry), color=MOE, lw=0.45, style="-")
    _text(
        ax,
        xx + xw / 2,
        bot - 3.6,
        "A row m = x[p / K],\np = rowp[m] = order[q0+m]",
        size=5.2,
    )
    _text(ax, kx0 + kw / 2, top + 0.5, "k0…k0+31", size=4.8, va="bottom")

    # --- w1[e] in global memory, slabs -------------------------------------
    wx, ww = 35.0, 8.0
    _box(ax, wx, bot, ww, top - bot, fc="white", lw=0.6)
    _text(ax, wx + ww / 2, top + 3.2, "w1[e] (C × M)", size=6.5, weight="bold")
    for j, (fc, name) in enumerate(((MID, "slab kt"), (BLUE, "kt+1"), (BLUE, "kt+2"))):
        y = top - 9.0 - j * 3.0
        _box(ax, wx, y, ww, 3.0, fc=fc, lw=0.4, alpha=1.0 if j == 0 else 0.5)
        _text(ax, wx + ww / 2, y + 1.5, name, size=5.2)
    _text(ax, wx + ww / 2, bot - 3.6, "B: 32 × 128 slabs,\nC / 32 of them", size=5.2)

    # --- shared memory: the 3-stage cp.async ring ----------------------------
    rx, ry0 = 48.0, 46.0
    _text(
        ax,
        rx + 25.0,
        top + 3.2,
        "shared memory: a 3-stage cp.async ring, 3 × 13.8 KB",
        size=6.5,
        weight="bold",
    )
    states = (
        ("slot kt mod 3", "slab kt: ldmatrix → MMAs", MID),
        ("slot (kt+1) mod 3", "slab kt+1: in flight", BLUE),
        ("slot (kt+2) mod 3", "slab kt+2: issued now", BLUE),
    )
    s = 0.085  # drawing units per half
    for j, (slot, what, fc) in enumerate(states):
        x = rx + j * 17.0
        _box(ax, x - 0.6, ry0 - 1.0, 16.0, 26.0, fc="none", ec="0.55", lw=0.5, ls="--")
        a_w, a_h = 40 * s * 1.2, 64 * s * 2.2  # A: 64 rows x (32 + 8) halves
        b_w, b_h = 136 * s, 32 * s * 2.2  # B: 32 rows x (128 + 8) halves
        alpha = 1.0 if j == 0 else 0.55
        _box(ax, x, ry0 + 8.0, a_w, a_h, fc=fc, lw=0.5, alpha=alpha)
        _box(
            ax,
            x + a_w + 0.5,
            ry0 + 8.0 + a_h - b_h,
            b_w - a_w - 0.6,
            b_h,
            fc=fc,
            lw=0.5,
            alpha=alpha,
        )
        _text(ax, x + a_w / 2, ry0 + 8.0 + a_h / 2, "A\n64 ×\n40", size=5.0)
        _text(
            ax,
            x + a_w + (b_w - a_w) / 2,
            ry0 + 8.0 + a_h - b_h / 2,
            "B  32 × 136",
            size=5.0,
        )
        _text(ax, x + 7.4, ry0 + 3.6, what, size=5.2)
        _text(ax, x + 7.4, ry0 + 1.0, slot, size=5.0, style="italic")
    _text(
        ax,
        rx + 25.0,
        ry0 - 4.0,
        "per slab: one cp.async wait, one __syncthreads, then the next copy;\n"
        "each of the 128 threads copies 2 A and 4 B chunks of 16 B "
        "(zeros past the data)",
        size=5.2,
    )
    _arrow(ax, (xx + xw, 60.0), (rx - 0.6, 62.0), color=BLUE, lw=0.9, rad=-0.1)
    _arrow(ax, (wx + ww, 62.0), (rx - 0.6, 66.0), color=BLUE, lw=0.9, rad=-0.1)

    # --- registers: 4 warps of 32 x 64 ---------------------------------------
    cx, cy, cw, ch = 4.0, 6.0, 30.0, 20.0
    _text(
        ax,
        cx + cw / 2,
        cy + ch + 3.2,
        "registers: the 64 × 128 fp32 tile, 4 warps of 32 × 64",
        size=6.5,
        weight="bold",
    )
    for wi in range(4):
        wm, wn = wi // 2, wi % 2  # warp / (BN / WN), warp % (BN / WN)
        x, y = cx + wn * cw / 2, cy + ch / 2 * (1 - wm)
        _box(ax, x, y, cw / 2, ch / 2, fc=WARP[wi], lw=0.8, alpha=0.55)
        for f in range(1, 8):  # 8 n8 fragments across
            ax.plot([x + f * cw / 16] * 2, [y, y + ch / 2], color="white", lw=0.35)
        ax.plot([x, x + cw / 2], [y + ch / 4] * 2, color="white", lw=0.35)
        _text(
            ax,
            x + cw / 4,
            y + ch / 4,
            f"warp {wi}\nrows {32 * wm}–{32 * wm + 31}\ncols {64 * wn}–{64 * wn + 63}",
            size=5.4,
            weight="bold",
        )
    _text(
        ax,
        cx + cw / 2,
        cy - 3.0,
        "each warp: 2 × 8 mma.m16n8k16 tiles; per 16-deep step\n"
        "2 ldmatrix.x4 (A), 4 ldmatrix.x4.trans (B), 16 MMAs",
        size=5.2,
    )
    _arrow(
        ax,
        (rx + 4.0, ry0 - 1.2),
        (cx + cw + 0.4, cy + ch - 2.0),
        color=MOE,
        lw=0.9,
        rad=0.12,
    )

    # --- epilogue through shared memory, then global stores ------------------
    ex, ew = 44.0, 18.0
    _box(ax, ex, cy + 3.0, ew, 14.0, fc=LIGHT, ec=MOE, lw=0.8)
    _text(
        ax,
        ex + ew / 2,
        cy + 10.0,
        "shared: 64 × 136 fp16\n(the drained ring)\nv = gate[p] · relu(acc)\n"
        "(down: v = acc)",
        size=5.4,
    )
    _text(ax, ex + ew / 2, cy + ch + 3.2, "epilogue", size=6.5, weight="bold")
    _arrow(ax, (cx + cw + 0.5, cy + ch / 2), (ex, cy + 10.0), color=MOE, lw=0.9)
    gx, gw = 70.0, 27.0
    _box(ax, gx, cy + 10.5, gw, 7.0, fc="white", lw=0.6)
    _text(
        ax,
        gx + gw / 2,
        cy + 14.0,
        "up: h row q0 + m\n(sorted order, contiguous)",
        size=5.4,
    )
    _box(ax, gx, cy + 1.0, gw, 7.0, fc="white", lw=0.6)
    _text(
        ax,
        gx + gw / 2,
        cy + 4.5,
        "down: z row p = order[q0 + m]\n(pair order)",
        size=5.4,
    )
    _text(ax, gx + gw / 2, cy + ch + 3.2, "global memory", size=6.5, weight="bold")
    _arrow(ax, (ex + ew, cy + 11.5), (gx, cy + 14.0), color=MOE, lw=0.9)
    _arrow(ax, (ex + ew, cy + 8.5), (gx, cy + 4.5), color=MOE, lw=0.9, ls="--")
    _text(ax, (ex + ew + gx) / 2, cy + 19.0, "16-byte\nrow pieces", size=5.0)


def draw() -> plt.Figure:
    """The launches of layer v5 and one block of its grouped GEMM tile."""
    fig = plt.figure(figsize=bp.figsize(7.2, 7.0))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set(xlim=(0, 100), ylim=(0, 101))
    ax.axis("off")
    _pipeline(ax)
    _tile(ax)
    return fig


if __name__ == "__main__":
    bp.use()
    draw().savefig("/tmp/ffn_approx_diagram.png")
