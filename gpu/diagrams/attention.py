"""Decode attention v7 (gpu/attention.cu, decode_v6 with FUSED = true), fp16, D = 128.

What the diagram draws, as the code does it:

* the grid: one block per (query head h, chunk sp, batch row b), grid (H, n_split, B);
  block (h, sp, b) reads keys [sp * chunk, (sp + 1) * chunk) of KV head g = h / (H / G);
* one block: 128 threads = 4 warps = 8 lane groups of LG = 16 lanes (2 per warp);
  a group owns one key row at a time, and lane ``sub`` of the group loads 16 bytes
  (8 halves, columns 8 * sub ... 8 * sub + 7) of it;
* one tile: U = 4 rows per group, so 32 rows a block, row base + 8 u + grp; its K
  and V go straight from HBM into registers (kc, vc), while the next tile's loads
  (kn, vn) are already in flight; no shared memory holds a tile;
* per tile, per group: 4 partial dots, a shuffle-xor sum over the 16 lanes, one max,
  one rescale, 4 exps, acc += p_u V_u;
* at the end: the 8 groups meet in shared memory (gm, gl, gacc), the block writes
  its partial (m, l, acc) to global memory, takes an atomic ticket, and the last
  block of (b, h) merges the n_split partials into out[b, h].
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle

from gpu import bookplot as bp
from gpu.diagrams import arrow

# The kernel's constants at fp16, D = 128 (gpu/attention.cu, decode_v6).
D, VEC = 128, 8  # head dim; halves a lane loads (16 bytes)
NV = D // VEC  # 16-byte vectors a row: 16
LG = 16  # lanes a row (lane group)
NW = 4  # warps a block (NW4)
NG = NW * (32 // LG)  # lane groups a block: 8
U = 4  # rows a group takes per tile
TR = NG * U  # rows a tile: 32

HUE = bp.FAMILY["attention"]
WARP = [bp._shade(HUE, t) for t in (0.25, 0.45, 0.7, 1.0)]  # warp 0..3
GREY = "0.55"


def _box(ax, x, y, w, h, text="", fc="white", ec="0.3", size=6.5, **kw):
    ax.add_patch(Rectangle((x, y), w, h, fc=fc, ec=ec, lw=0.8))
    if text:
        ax.text(
            x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size, **kw
        )


def _arrow(ax, a, b, color="0.25", style="-|>", **kw):
    arrow(ax, a, b, arrowstyle=style, mutation_scale=8, color=color, lw=0.9, **kw)


def _cache(ax):
    """Left: the K cache of one (b, g), split into chunks, one block each."""
    x0, y0, w, h = 5.0, 37.0, 20.0, 22.0
    ax.text(x0, 63.0, "HBM: K[b, g] and V[b, g]", fontsize=7, weight="bold")
    ax.text(x0, 60.3, "S rows × 128 halves each", fontsize=6.5)
    chunks = 4
    for c in range(chunks):
        yy = y0 + h - (c + 1) * h / chunks
        fc = bp._shade(HUE, 0.18) if c else bp._shade(HUE, 0.4)
        _box(ax, x0, yy, w * 0.45, h / chunks, fc=fc)
        ax.text(
            x0 + w * 0.5,
            yy + h / chunks * 0.4,
            f"chunk sp = {c}\n→ block (h, {c}, b)"
            if c < chunks - 1
            else "…  n_split chunks",
            fontsize=6,
            va="center",
        )
    # the tiles of chunk 0
    ty = y0 + h - h / chunks
    for t in range(4):
        ax.plot([x0, x0 + w * 0.45], [ty + t * h / chunks / 4] * 2, color="0.4", lw=0.4)
    ax.text(
        x0 - 0.5, y0 + h - h / chunks / 8, "tile 0", fontsize=5, ha="right", va="center"
    )
    ax.text(
        x0,
        y0 - 2.6,
        "grid (H, n_split, B): one block per\n(query head h, chunk sp, row b);\n"
        "a chunk is read 32 rows (one tile) at a time",
        fontsize=6,
        va="top",
    )
    return (x0 + w * 0.45, y0 + h - h / chunks / 8)


def _tile(ax, src):
    """Middle: one tile of 32 rows x 16 vectors, coloured by the warp that loads it."""
    x0, y0, cw, rh = 33.0, 30.0, 1.35, 0.85
    ax.text(
        x0, 63.0, f"one tile: {TR} rows, row base + 8u + grp", fontsize=7, weight="bold"
    )
    ax.text(x0, 60.3, "cell = 16 bytes = 8 halves = one lane's load", fontsize=6.5)
    top = y0 + TR * rh
    for r in range(TR):
        u, grp = divmod(r, NG)
        warp = grp // (32 // LG)
        y = top - (r + 1) * rh
        for col in range(NV):
            ax.add_patch(
                Rectangle((x0 + col * cw, y), cw, rh, fc=WARP[warp], ec="white", lw=0.3)
            )
        if grp == 0:
            ax.plot([x0 - 0.3, x0 + NV * cw + 0.3], [y + rh] * 2, color="0.2", lw=0.8)
            ax.text(
                x0 - 0.6, y - 3 * rh, f"u = {u}", fontsize=6, ha="right", va="center"
            )
    # the rows of u = 0: group grp, in warp grp // 2
    bx = x0 + NV * cw + 0.5
    ax.plot(
        [bx, bx + 0.6, bx + 0.6, bx],
        [top, top, top - NG * rh, top - NG * rh],
        color="0.2",
        lw=0.6,
    )
    ax.text(
        bx + 1.1,
        top - NG * rh / 2,
        "8 rows, one per\ngroup grp = 0..7;\nwarp w owns\ngrp 2w, 2w + 1",
        fontsize=5.5,
        va="center",
    )
    ax.text(x0 + 0.5 * cw, y0 - 1.3, "sub = 0", fontsize=5.5, ha="center", va="top")
    ax.text(
        x0 + (NV - 0.5) * cw, y0 - 1.3, "sub = 15", fontsize=5.5, ha="center", va="top"
    )
    ax.text(
        x0 + NV * cw / 2,
        y0 - 3.6,
        "lane sub of the group: 16 lanes = half a warp",
        fontsize=5.5,
        ha="center",
        va="top",
    )
    _arrow(ax, src, (x0 - 3.5, top - 0.8))
    ax.text(
        x0 - 4.5,
        top + 1.6,
        "16-byte loads,\nHBM → registers",
        fontsize=5.5,
        ha="center",
    )
    return (x0 + NV * cw + 0.5, top - 11.0)


def _lane(ax, src):
    """Right: one lane's registers and one tile's work."""
    x0, w = 70.0, 28.0
    ax.text(x0, 63.0, "one lane (thread), registers", fontsize=7, weight="bold")
    rows = [
        ("qr[8]: q · 1/√D, its 8 columns", "white"),
        ("kc[4], vc[4]: tile t (in use)", bp._shade(HUE, 0.5)),
        ("kn[4], vn[4]: tile t + 1 (in flight)", bp._shade(HUE, 0.2)),
        ("acc[8], m, l: online softmax", "white"),
    ]
    for i, (label, fc) in enumerate(rows):
        _box(ax, x0, 56.0 - i * 3.6, w, 3.0, label, fc=fc, size=6)
    _arrow(ax, src, (x0, 52.5))
    steps = [
        "per tile t, per group:",
        "1. issue tile t + 1's loads into kn, vn",
        "2. sc[u] = qr · K_u (8 products a lane)",
        "3. shuffle-xor sum over the 16 lanes",
        "4. one max, one rescale of acc and l",
        "5. p_u = e^(sc[u] − m); acc += Σ p_u V_u",
        "6. kc, vc ← kn, vn",
    ]
    for i, s in enumerate(steps):
        ax.text(x0, 41.0 - i * 2.4, s, fontsize=6, weight="bold" if i == 0 else None)


def _epilogue(ax):
    """Bottom: how the block's 8 groups and the n_split blocks of (b, h) merge."""
    y, h = 3.0, 7.5
    boxes = [
        (
            2.0,
            20.0,
            "shared memory:\ngm[8], gl[8], gacc[8][128]\n(the 8 groups' m, l, acc)",
        ),
        (26.5, 20.0, "global: partial of block\n(m, l, acc[128])\npart_ml, part_acc"),
        (51.0, 20.0, "atomic ticket\ncounters[b·H + h]\n(after a fence)"),
        (75.5, 22.5, "last of n_split blocks:\nmerge the partials\n→ out[b, h, :]"),
    ]
    for x, w, text in boxes:
        _box(ax, x, y, w, h, text, fc=bp._shade(HUE, 0.12), size=6)
    for (x, w, _), (nx, _, _) in zip(boxes[:-1], boxes[1:], strict=True):
        _arrow(ax, (x + w, y + h / 2), (nx, y + h / 2))
    ax.text(
        2.0,
        y + h + 1.2,
        "after the last tile (one launch, no separate combine kernel):",
        fontsize=6.5,
        weight="bold",
    )


def draw():
    """The figure: v7's grid, one tile's owners, one lane's registers, the epilogue."""
    fig, ax = plt.subplots(figsize=bp.figsize(7.2, 4.8))
    ax.set(xlim=(0, 100), ylim=(0, 66))
    ax.axis("off")
    src = _cache(ax)
    nxt = _tile(ax, src)
    _lane(ax, nxt)
    _epilogue(ax)
    for w, c in enumerate(WARP):  # legend for the tile colours
        _box(ax, 33.0 + w * 6.0, 19.5, 1.6, 1.4, fc=c, ec="white")
        ax.text(35.0 + w * 6.0, 20.2, f"warp {w}", fontsize=5.5, va="center")
    ax.text(
        33.0,
        15.5,
        "K and V tiles never pass through shared memory:"
        " only the groups' results do, once, at the end.",
        fontsize=6,
        style="italic",
    )
    fig.suptitle(
        "Decode attention v7, fp16, D = 128: 128 threads a block, tiles of 32 rows",
        fontsize=8.5,
    )
    fig.subplots_adjust(left=0.01, right=0.99, top=0.93, bottom=0.01)
    return fig
