"""Slim attention v6 (gpu/slim_attention.cu, attend_v6) at the book's shape, and v7's
warp roles (draw_v7).

One decode step over a K-only cache, fp16, H = 32 heads of D = 128 (C = 4096). The
cache of each sequence is split along S into chunks; each (sequence, chunk) is one
thread-block cluster of CL = 8 blocks on 8 SMs. Block r owns the columns
[512 r, 512 r + 512) of the cache, that is whole heads 4 r .. 4 r + 3, and is the
only one to read them from global memory. The figure draws:

- top: global memory, the cache of one chunk cut into the 8 column slices, one
  64-key tile, and what the step writes and reads after the loop (the float32
  partials, W_KV for the second kernel);
- middle: the cluster. Each block loads its slice of the tile with cp.async,
  scores its own 4 heads on tensor cores into its own shared memory, and reads the
  scores of the other 28 heads from their owners through distributed shared memory
  (DSMEM) after a cluster barrier; then every block runs the same online softmax
  for all 32 heads and accumulates P . K over its own 512 columns. Right: one
  block's shared memory and what each of its 16 warps owns;
- bottom: the order of one iteration t of v6's loop, with the three stages of the
  tile ring, and the cluster barrier that completes while P . K runs.

Sizes come from the launcher's constants (gpu/slim_attention.py); nothing here
needs a GPU or results/.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.colors import to_rgb
from matplotlib.patches import Rectangle

from gpu import bookplot as bp
from gpu import slim_attention as gsa
from gpu.diagrams import arrow

H, D = 32, 128  # the book's shape
C = H * D
CL = gsa.CL  # blocks per cluster
CS = C // CL  # columns per block
HB = CS // D  # heads per block
NW = CS // 32  # warps per block (v4-v6: one per 32 columns)
NK = gsa.NK4  # keys per tile
ST = 3  # v6's tile stages (ST in attend_v6)
M = 16 * -(-H // 16)  # query rows, padded to m16 tiles

K_COLOR = bp.FAMILY["slim"]
SMEM = "#d9f0e6"
REGS = "#dbe9f6"
DSMEM = "#E69F00"
HBM = "#eeeeee"
BAR = "#555555"


def _tint(color, t):
    """color mixed with white: t = 1 the colour itself, t = 0 white."""
    return tuple(1 - t * (1 - c) for c in to_rgb(color))


def _box(ax, x, y, w, h, text="", fc="white", ec="0.3", fs=6.0, lw=0.8, **kw):
    ax.add_patch(Rectangle((x, y), w, h, fc=fc, ec=ec, lw=lw))
    if text:
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fs, **kw)


def _arrow(ax, a, b, color="0.25", lw=0.9, style="-|>", rad=0.0, ls="-"):
    arrow(
        ax,
        a,
        b,
        rad=rad,
        arrowstyle=style,
        color=color,
        lw=lw,
        ls=ls,
        shrinkA=0,
        shrinkB=0,
    )


def draw() -> plt.Figure:
    """The v6 kernel at H = 32, D = 128: ownership, tile flow and DSMEM exchange."""
    fig = plt.figure(figsize=bp.figsize(7.2, 6.6))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.axis("off")
    smem_kib = gsa.v4_smem_bytes(M // 16, CS, False, 6) / 1024
    n_split, chunk = gsa.plan(6, 8, H, 16384, D)

    # --- top: global memory -------------------------------------------------
    _box(ax, 0.5, 74.0, 99, 25.5, fc=HBM, ec="0.6")
    ax.text(1.5, 99.0, "global memory (HBM)", fontsize=7, va="top", weight="bold")
    x0, w_all, y_k, h_k = 6.0, 56.0, 76.0, 15.0
    ws = w_all / CL
    for r in range(CL):
        _box(
            ax,
            x0 + r * ws,
            y_k,
            ws,
            h_k,
            fc=_tint(K_COLOR, 0.35 if r % 2 else 0.22),
            ec="0.35",
        )
        ax.text(
            x0 + (r + 0.5) * ws,
            y_k + h_k - 1.2,
            f"r = {r}\nh {HB * r}–{HB * r + HB - 1}",
            ha="center",
            va="top",
            fontsize=5.0,
        )
    # one tile: NK keys across all C columns
    y_t = y_k + 3.0
    ax.add_patch(
        Rectangle((x0, y_t), w_all, 3.2, fc=K_COLOR, ec="k", lw=0.9, alpha=0.75)
    )
    ax.text(
        x0 + w_all / 2,
        y_t + 1.6,
        f"tile t: {NK} keys × {C} columns (each block loads only its {CS})",
        ha="center",
        va="center",
        fontsize=5.6,
        color="white",
        weight="bold",
    )
    ax.text(
        x0 + w_all / 2,
        y_k + h_k + 0.6,
        f"K cache of sequence b, one chunk of S (B = 8, S = 16K: {n_split} chunks"
        f" of ≤ {chunk} keys)\nslice r: columns {CS}r … {CS}r + {CS - 1}"
        f" = heads {HB}r … {HB}r + {HB - 1}",
        ha="center",
        va="bottom",
        fontsize=6.0,
    )
    ax.annotate(
        "keys",
        xy=(x0 - 1.2, y_k + 1),
        xytext=(x0 - 1.2, y_k + h_k - 1),
        fontsize=5.5,
        ha="center",
        va="top",
        rotation=90,
        arrowprops=dict(arrowstyle="-|>", lw=0.6, color="0.3"),
    )
    # after the loop
    _box(
        ax,
        65.5,
        84.0,
        15.5,
        9.5,
        "u partials\n(B, n_split, H, C) fp32\n+ (m, l) per head",
        fc="white",
        fs=5.4,
    )
    _box(ax, 83.0, 84.0, 15.0, 9.5, f"W_KV\n({C} × {C}) fp16", fc="white", fs=5.6)
    ax.text(
        82.0,
        81.8,
        "after the last tile, each block writes u over its\n"
        "512 columns; kernel 2 combines the chunks and\n"
        "multiplies by W_KV; kernel 3 adds b_V",
        ha="center",
        va="top",
        fontsize=5.3,
    )

    # --- middle: the cluster ----------------------------------------------------
    yb, hbk = 47.0, 21.0
    _box(
        ax,
        x0 - 3.5,
        35.0,
        w_all + 7,
        yb + hbk + 2.5 - 35.0,
        fc="none",
        ec=K_COLOR,
        lw=1.2,
    )
    ax.text(
        x0 - 3.0,
        yb + hbk + 1.9,
        f"one cluster = {CL} blocks on {CL} SMs, one per (b, chunk)",
        fontsize=6.2,
        va="top",
        color=K_COLOR,
        weight="bold",
        bbox=dict(fc="white", ec="none", pad=0.5),
    )
    for r in range(CL):
        bx = x0 + r * ws + 0.4
        bw = ws - 0.8
        _box(ax, bx, yb, bw, hbk - 2.4, fc="white", ec="0.3")
        ax.text(
            bx + bw / 2,
            yb + hbk - 3.1,
            f"block {r}",
            ha="center",
            va="top",
            fontsize=5.4,
            weight="bold",
        )
        _box(
            ax,
            bx + 0.5,
            yb + 11.0,
            bw - 1.0,
            4.2,
            f"scores\nh {HB * r}–{HB * r + HB - 1}",
            fc=SMEM,
            fs=4.9,
        )
        _box(
            ax,
            bx + 0.5,
            yb + 5.6,
            bw - 1.0,
            4.4,
            "softmax\nall 32 h",
            fc="white",
            fs=4.9,
        )
        _box(ax, bx + 0.5, yb + 0.6, bw - 1.0, 4.2, f"P·K\n{CS} cols", fc=REGS, fs=4.9)
        # cp.async of the block's slice of the tile
        _arrow(
            ax,
            (x0 + (r + 0.5) * ws, y_t),
            (x0 + (r + 0.5) * ws, yb + hbk - 2.4),
            color=K_COLOR,
            lw=1.0,
        )
        # DSMEM: scores out to the bus, back into the softmax
        _arrow(ax, (bx + 0.9, yb + 11.0), (bx + 0.9, yb - 3.3), color=DSMEM, lw=0.8)
        _arrow(
            ax,
            (bx + bw - 0.9, yb - 3.3),
            (bx + bw - 0.9, yb + 5.6),
            color=DSMEM,
            lw=0.8,
        )
    ax.text(
        x0 + w_all / 2,
        72.2,
        f"cp.async: each block loads its {NK} × {CS} fp16 part of the tile"
        f" ({NK * CS * 2 // 1024} KiB) into its own shared memory",
        ha="center",
        va="center",
        fontsize=5.6,
        color=K_COLOR,
        bbox=dict(fc="white", ec="none", pad=0.6),
    )
    _box(ax, x0, yb - 4.6, w_all, 1.3, fc=DSMEM, ec=DSMEM)
    ax.text(
        x0 + w_all / 2,
        yb - 5.0,
        f"DSMEM: after the cluster barrier, every block reads the {NK} scores"
        f" of head h\nfrom block ⌊h / {HB}⌋'s shared memory (map_shared_rank):"
        f" {H - HB} of its {H} rows\ncome from the other {CL - 1} blocks",
        ha="center",
        va="top",
        fontsize=5.5,
        color="#8a5a00",
    )

    # --- middle right: one block ------------------------------------------------
    zx, zw = 65.5, 33.5
    ax.text(
        zx,
        69.5,
        f"block r: {NW} warps ({NW * 32} threads), {smem_kib:.0f} KiB shared",
        fontsize=6.0,
        va="top",
        weight="bold",
    )
    rows = [
        (f"tile ring: {ST} stages × {NK} keys × {CS} cols fp16", SMEM),
        (
            f"scores: 2 buffers × {M} heads × {NK} keys fp32\n"
            f"(this block writes only rows 4r–4r+3)",
            SMEM,
        ),
        (f"P: 2 buffers × {M} × {NK} fp16;  α: 2 × {M} fp32", SMEM),
        (
            f"registers of warp w: acc = {M} heads × 32 cols\n"
            f"fp32 (cols 32w–32w+31 of the slice), m, l",
            REGS,
        ),
    ]
    y = 66.6
    for text, fc in rows:
        hgt = 4.6 if "\n" in text else 3.0
        _box(ax, zx, y - hgt, zw, hgt, text, fc=fc, fs=5.3)
        y -= hgt + 0.6
    ax.text(
        zx,
        y - 0.4,
        f"warp w = 0–{NW - 1}, in each tile:\n"
        f"• scores: keys 16(w mod 4)…+15 × head 4r + ⌊w/4⌋,\n"
        f"   {D // 16} mma.m16n8k16 over D\n"
        f"• softmax: heads w and w + {NW}; lane: keys lane,\n"
        "   lane + 32 (scores pulled over DSMEM)\n"
        f"• P·K: P ({M} × {NK}) · tile ({NK} × its 32 cols), mma",
        fontsize=5.3,
        va="top",
        linespacing=1.35,
    )

    # --- bottom: one iteration of the loop ---------------------------------------
    ax.text(
        1.0,
        32.5,
        "iteration t of v6's loop (every warp, every block)",
        fontsize=6.5,
        weight="bold",
        va="top",
    )
    steps = [
        ("1 softmax(t)\nread scores over\nDSMEM → P(t), α", "white"),
        ("2 cp.async wait,\n__syncthreads;\nload tile t+2", SMEM),
        ("3 scores(t+1)\non tensor cores\n→ own smem", SMEM),
        ("cluster\narrive", DSMEM),
        ("4 acc = α·acc\n+ P(t)·tile t\n(mma)", REGS),
        ("cluster wait:\nscores(t+1)\nvisible", DSMEM),
    ]
    sx, sw, gap, sy, sh = 1.5, 14.0, 2.3, 17.0, 10.5
    widths = [sw, sw, sw, 8.0, sw, sw]
    xs = []
    x = sx
    for (text, fc), w in zip(steps, widths, strict=True):
        _box(ax, x, sy, w, sh, text, fc=fc, fs=5.5)
        xs.append((x, w))
        x += w + gap
    for (xa, wa), (xb, _) in zip(xs[:-1], xs[1:], strict=True):
        _arrow(ax, (xa + wa, sy + sh / 2), (xb, sy + sh / 2))
    # loop back
    xe, we = xs[-1]
    _arrow(
        ax, (xe + we / 2, sy), (xs[0][0] + xs[0][1] / 2, sy), rad=-0.12, ls="--", lw=0.7
    )
    ax.text(
        xs[0][0] + xs[0][1] / 2 + 2.0,
        sy - 2.2,
        "next t",
        fontsize=5.5,
        ha="left",
        va="top",
    )
    # the barrier in flight
    xa = xs[3][0] + xs[3][1] / 2
    xb = xs[5][0] + xs[5][1] / 2
    ax.add_patch(Rectangle((xa, sy + sh + 0.8), xb - xa, 1.0, fc=DSMEM, ec="none"))
    ax.text(
        (xa + xb) / 2,
        sy + sh + 2.2,
        "the cluster barrier completes while P·K runs",
        ha="center",
        va="bottom",
        fontsize=5.5,
        color="#8a5a00",
    )
    # the tile ring during iteration t
    ax.text(1.0, 5.2, "tile ring in iteration t:", fontsize=5.8, va="center")
    ring = [
        (f"stage t mod {ST}: tile t\n(P·K reads it)", REGS),
        (f"stage (t+1) mod {ST}: tile t+1\n(scores read it)", SMEM),
        (f"stage (t+2) mod {ST}: tile t+2\n(cp.async writes it)", "white"),
    ]
    for i, (text, fc) in enumerate(ring):
        _box(ax, 22.0 + i * 26.0, 1.5, 24.0, 7.4, text, fc=fc, fs=5.4)
    return fig


def draw_v7() -> plt.Figure:
    """v7 at H = 32, D = 128: one block's three warp roles, the mbarriers that
    order them, and the score exchange with the other blocks of its cluster."""
    ns, nx, nk, nsc = gsa.NS7, gsa.NX7, gsa.NK7, gsa.NSC7
    nwc = CS // 32  # consumer warps
    smem_kib = gsa.v7_smem_bytes(M // 16, CS) / 1024
    fig = plt.figure(figsize=bp.figsize(7.2, 5.0))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.axis("off")

    # --- top: the block's slice of the cache and the tile ring -------------------
    _box(ax, 0.5, 86.0, 63.0, 13.5, fc=HBM, ec="0.6")
    ax.text(1.5, 99.0, "HBM: block r's slice of the K cache", fontsize=6.5,
            va="top", weight="bold")  # fmt: skip
    for i in range(8):
        _box(ax, 3.0 + i * 7.4, 87.5, 7.0, 6.5, f"tile\nt+{i}" if i else "tile\nt",
             fc=_tint(K_COLOR, 0.25 + 0.05 * (i % 2)), fs=5.2)  # fmt: skip
    ax.text(62.5, 99.0, f"a tile: {nk} keys × {CS} cols, {nk} rows of {CS * 2} B",
            fontsize=5.3, ha="right", va="top")  # fmt: skip
    ring_y = 70.0
    _box(ax, 0.5, ring_y - 1.0, 63.0, 11.5, fc=SMEM, ec="0.5")
    ax.text(1.5, ring_y + 10.0, f"tile ring in shared memory: {ns} stages, rows "
            f"padded to {CS + 8} halves (conflict-free ldmatrix)", fontsize=5.6,
            va="top")  # fmt: skip
    for s in range(ns):
        _box(ax, 2.0 + s * 10.2, ring_y + 0.5, 9.6, 5.6, f"stage {s}", fc="white",
             fs=5.2)  # fmt: skip
        ax.text(2.0 + s * 10.2 + 4.8, ring_y - 0.3, "full/empty", fontsize=4.4,
                ha="center", va="top", color="0.3")  # fmt: skip
    _arrow(ax, (30.0, 87.5), (30.0, ring_y + 6.2), color=K_COLOR, lw=1.2)
    ax.text(31.0, 83.2, "warp 0: lane j bulk-copies row j (cp.async.bulk),\n"
            "completing on the stage's full mbarrier", fontsize=5.3, va="center",
            color=K_COLOR)  # fmt: skip

    # --- middle: the three roles ---------------------------------------------
    cols = [
        (
            "producer: warp 0",
            "white",
            [
                "wait empty[s]",
                "expect_tx(full[s])",
                f"{nk} row copies",
                "(up to 6 tiles ahead)",
            ],
        ),
        (
            f"scorers: warps 1–{nsc}",
            SMEM,
            [
                "wait full[s]",
                f"scores of heads {HB}r…{HB}r+{HB - 1}",
                "(mma, block-diagonal q)",
                "arrive empty[s]",
                "wait xempty[x]",
                "lane r' pushes to block r'",
            ],
        ),
        (
            f"consumers: warps {nsc + 1}–{nsc + nwc}",
            REGS,
            [
                "wait xfull[x]",
                f"softmax, all {H} heads",
                "(local shared memory)",
                "named barrier",
                "lane r' frees x in block r'",
                "wait full[s]; P·K; arrive empty[s]",
            ],
        ),
    ]
    cx, cw, top = 1.0, 20.5, 64.0
    for i, (title, fc, lines) in enumerate(cols):
        x = cx + i * (cw + 1.0)
        _box(ax, x, 20.0, cw, top - 20.0, fc=fc, ec="0.35")
        ax.text(x + cw / 2, top - 1.2, title, ha="center", va="top", fontsize=5.8,
                weight="bold")  # fmt: skip
        for j, line in enumerate(lines):
            ax.text(x + 1.0, top - 7.0 - j * 5.8, line, fontsize=5.2, va="top")
    ax.text(cx + 1.5 * (cw + 1.0), 17.5, "no cluster barrier inside the loop: every "
            "wait is on an mbarrier", ha="center", va="top", fontsize=5.6,
            weight="bold")  # fmt: skip

    # --- right: the exchange with the other blocks -------------------------------
    ex, ew = 66.5, 33.0
    _box(ax, ex, 20.0, ew, 79.5, fc="none", ec=K_COLOR, lw=1.2)
    ax.text(ex + 1.0, 98.8, f"cluster of {CL} blocks; block r owns heads "
            f"{HB}r…{HB}r+{HB - 1}", fontsize=5.6, va="top", color=K_COLOR,
            weight="bold")  # fmt: skip
    _box(ax, ex + 2.0, 70.0, ew - 4.0, 22.0, fc=SMEM, ec="0.4")
    ax.text(ex + ew / 2, 91.0, f"exchange slots in every block:\n{nx} slots × {H} "
            f"heads × {nk} keys fp32", ha="center", va="top", fontsize=5.4)  # fmt: skip
    for k in range(CL):
        _box(ax, ex + 3.0 + k * 3.4, 72.0, 3.0, 8.0, f"{k}", fc="white", fs=4.8)
    ax.text(ex + ew / 2, 71.0, "rows of block 0 … 7", ha="center", va="top",
            fontsize=4.8)  # fmt: skip
    _arrow(ax, (cx + cw + 1.0 + cw / 2 + 5.0, 34.0), (ex + 5.0, 72.0), color=DSMEM,
           lw=1.0, rad=-0.2)  # fmt: skip
    ax.text(ex + 1.5, 62.0, "push: bulk copy shared::cta →\nshared::cluster, "
            f"{HB * nk * 4} B to each block,\ncompleting on its xfull[x]",
            fontsize=5.3, va="top", color="#8a5a00")  # fmt: skip
    _arrow(ax, (ex + ew - 6.0, 72.0), (cx + 2 * (cw + 1.0) + cw / 2 + 4.0, 60.0),
           color=DSMEM, lw=1.0, rad=-0.2)  # fmt: skip
    ax.text(ex + 1.5, 47.0, "free: once all consumers read\nslot x, one arrive on "
            "xempty[x]\nof every block (8 lanes, one\ninstruction); a block pushes\n"
            "into x again only when all 8\nhave freed it", fontsize=5.3,
            va="top", color="#8a5a00")  # fmt: skip
    ax.text(ex + 1.5, 28.0, f"{nsc + 1 + nwc} warps, {smem_kib:.0f} KiB shared\n"
            "per block, one block per SM", fontsize=5.4, va="top")  # fmt: skip

    # --- bottom: how far ahead each role may run --------------------------------
    ax.text(1.0, 12.0, "How far ahead: the producer up to "
            f"{ns} tiles ahead of the block's slowest reader (the ring); the "
            f"scorers up to {nx} tiles ahead of the slowest consumer in the whole "
            "cluster (the exchange slots);\nthe consumers wait only for the scores "
            "and the tile they use. A block's pace is set by the slowest of its "
            "three roles, and through the slots by the slowest block of its "
            "cluster.", fontsize=5.4, va="top", wrap=True)  # fmt: skip
    return fig
