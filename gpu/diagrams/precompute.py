"""The v3 gather + RoPE kernel of gpu/precompute.cu on one Mistral-7B row (fp16).

Top: the table row that ``tokens[n]`` selects, in global memory, and its column
ranges [x | q | k | v]. Middle: which thread of which block owns which columns. The
grid is (ceil(U / (UNITS · THREADS)), N): blockIdx.y is the token, and a row's U units
(a unit is one 16-byte vector that is copied, or a pair of vectors that is rotated)
are dealt to blocks of THREADS threads, UNITS units a thread: thread t of block b
takes units (b · UNITS + k) · THREADS + t for k = 0, 1. The unit map is a Python twin
of ``unit_col`` in the .cu, so the picture follows the code. Bottom: one rotated unit
(vector j of a head pairs with vector j + R / 16, dims d and d + R / 2) going from
global memory to registers, through the float32 rotation and back to global memory,
and one thread's order of work: both units' loads before either store. There is no
shared memory in this kernel.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle

from gpu import bookplot as bp
from gpu.diagrams import arrow
from gpu.precompute import THREADS, UNITS

# Mistral-7B's serial row [x | q | k | v] in fp16 (reference/models.py).
C, H, G, D, R = 4096, 32, 8, 128, 128
VEC = 8  # fp16 values in 16 bytes (Vec<__half>::N)
ROT_OFF, N_ROT = C, H + G  # the q and k heads are adjacent, from column C
W = C + H * D + 2 * G * D  # 10,240


def unit_col(u: int) -> tuple[int, bool]:
    """First column of unit u and whether it is a rotated pair (unit_col in the .cu)."""
    u0, pairs = ROT_OFF // VEC, R // (2 * VEC)
    per_head = D // VEC - pairs
    if u < u0:
        return u * VEC, False
    r = u - u0
    if r >= N_ROT * per_head:
        return (u + N_ROT * pairs) * VEC, False
    head, k = divmod(r, per_head)
    pair = k < pairs
    return ROT_OFF + head * D + (k * VEC if pair else (k + pairs) * VEC), pair


def owners() -> list[tuple[int, int, int, int, int, int]]:
    """Runs of consecutive units with one owner: (block, k, first unit, last unit,
    first column, one past the last column), k being the thread's unit slot."""
    units = W // VEC - N_ROT * (R // (2 * VEC))
    runs: list[list[int]] = []
    for u in range(units):
        blk, rest = divmod(u, UNITS * THREADS)
        k = rest // THREADS
        col, pair = unit_col(u)
        end = col + (VEC + R // 2 if pair else VEC)
        if runs and runs[-1][:2] == [blk, k]:
            runs[-1][3], runs[-1][5] = u, max(runs[-1][5], end)
        else:
            runs.append([blk, k, u, u, col, end])
    return [tuple(r) for r in runs]


def _box(ax, x, y, w, h, text="", fc="white", ec="0.25", fs=6.5, **kw):
    ax.add_patch(Rectangle((x, y), w, h, fc=fc, ec=ec, lw=0.7, **kw))
    if text:
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fs)


def _arrow(ax, a, b, **kw):
    arrow(ax, a, b, **{"color": "0.2", **kw})


def draw():
    """The figure (7.2 x 4.7 inches); draws on the CPU, reads no results."""
    hue = bp.FAMILY["precompute"]
    light, mid, full = (bp._shade(hue, t) for t in (0.25, 0.55, 1.0))
    fig = plt.figure(figsize=bp.figsize(7.2, 4.7))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set(xlim=(0, 7.2), ylim=(0, 4.7))
    ax.axis("off")
    x0, x1 = 1.0, 7.05
    sx = (x1 - x0) / W

    def cx(col):
        return x0 + col * sx

    units = W // VEC - N_ROT * (R // (2 * VEC))
    blocks = -(-units // (UNITS * THREADS))
    ax.text(0.05, 4.6, "v3 gather + RoPE on one Mistral-7B row (fp16)",
            fontsize=7.5, va="center", weight="bold")  # fmt: skip
    ax.text(
        0.05, 4.42,
        f"grid ({blocks}, N), blockIdx.y = token n; {THREADS} threads a block, "
        f"{UNITS} units a thread; a row has {units} units (a unit: one 16-byte "
        "vector to copy, or a pair of vectors to rotate)",
        fontsize=6.5, va="center",
    )  # fmt: skip

    # The table row in global memory.
    y_row = 3.9
    ax.text(0.05, y_row + 0.13, "table[tokens[n]]\nglobal, 20 KB", fontsize=6.5,
            va="center")  # fmt: skip
    segs = (
        ("x", 0, C, light, f"x: {C // VEC} vectors, copied"),
        ("q", C, C + H * D, mid, f"q: {H} heads of {D}, rotated"),
        ("k", C + H * D, C + (H + G) * D, mid, f"k: {G} heads"),
        ("v", C + (H + G) * D, W, light, "v: copied"),
    )
    for _, a, b, fc, label in segs:
        _box(ax, cx(a), y_row, (b - a) * sx, 0.26, label, fc=fc, fs=6.3)
    for col in (0, C, C + H * D, C + (H + G) * D, W):
        ax.text(cx(col), y_row - 0.02, f"{col:,}", fontsize=5.5, ha="center",
                va="top", color="0.35")  # fmt: skip

    # Who owns which columns: blocks and the threads' unit slots.
    y_own = 3.2
    ax.text(0.05, y_own + 0.21, "owner of the\ncolumns", fontsize=6.5, va="center")
    for blk, k, ua, ub, ca, cb in owners():
        n_thr = ub - ua + 1
        pairs = sum(unit_col(u)[1] for u in range(ua, ub + 1))
        what = (f"{pairs} pairs" if pairs == n_thr else
                f"{n_thr} copies" if not pairs else
                f"{pairs} pairs + {n_thr - pairs} copies")  # fmt: skip
        fc = full if blk % 2 else mid
        hatch = "////" if k else None
        ax.add_patch(Rectangle((cx(ca), y_own), (cb - ca) * sx, 0.42, fc=fc,
                               ec="white", lw=1.0, hatch=hatch, alpha=0.9))  # fmt: skip
        ax.text(cx((ca + cb) / 2), y_own + 0.21,
                f"block {blk}, unit {k + 1}\nthreads 0-{n_thr - 1}:\n{what}",
                fontsize=5.6, ha="center", va="center",
                bbox=dict(fc="white", ec="none", alpha=0.8, pad=0.6))  # fmt: skip
    idle = UNITS * THREADS * blocks - units
    ax.text(x1, y_own - 0.05,
            f"thread t takes units t and t + {THREADS} of its block's "
            f"{UNITS * THREADS}; {idle} slots of the last block are empty",
            fontsize=5.8, ha="right", va="top", color="0.3")  # fmt: skip

    # One rotated head, zoomed: vector j pairs with vector j + R/16.
    y_head, vw = 2.3, 0.16
    hx = 1.0
    nv, half_v, j = D // VEC, R // (2 * VEC), 2
    y_top = y_own - 0.2
    ax.plot([cx(C), hx], [y_top, y_head + 0.2], color="0.6", lw=0.6, ls=":")
    ax.plot([cx(C + D), hx + nv * vw], [y_top, y_head + 0.2], color="0.6",
            lw=0.6, ls=":")  # fmt: skip
    for i in range(nv):
        fc = full if i in (j, j + half_v) else (mid if i < half_v else light)
        _box(ax, hx + i * vw, y_head, vw, 0.2, fc=fc, ec="0.4")
    ax.text(hx, y_head + 0.27, f"q head 0: {nv} vectors of {VEC} halves; unit j "
            f"rotates vectors j and j + {half_v} (dims d, d + {R // 2})",
            fontsize=6.2, va="bottom")  # fmt: skip
    ax.text(hx + (j + 0.5) * vw, y_head - 0.03, "j", fontsize=6, ha="center",
            va="top")  # fmt: skip
    ax.text(hx + (j + half_v + 0.5) * vw, y_head - 0.03, f"j+{half_v}",
            fontsize=6, ha="center", va="top")  # fmt: skip

    # Registers, cos/sin, the rotation, the stores.
    y_reg = 1.55
    _box(ax, 0.35, y_reg, 1.05, 0.3, "a = load16(row + col)\n8 halves", fc=light,
         fs=5.8)  # fmt: skip
    _box(ax, 1.75, y_reg, 1.25, 0.3, f"b = load16(row + col + {R // 2})\n8 halves",
         fc=light, fs=5.8)  # fmt: skip
    _arrow(ax, (hx + (j + 0.5) * vw, y_head - 0.12), (0.9, y_reg + 0.31))
    _arrow(ax, (hx + (j + half_v + 0.5) * vw, y_head - 0.12), (2.4, y_reg + 0.31))
    _box(ax, 3.2, y_reg, 1.2, 0.3, "cos, sin [pos, d..d+7]\nfloat32, 32 B each",
         fc="0.93", fs=5.8)  # fmt: skip
    ax.text(3.8, y_reg + 0.36, "from the (P, R/2) tables", fontsize=5.6,
            ha="center", color="0.3")  # fmt: skip
    y_rot = 0.9
    _box(ax, 0.6, y_rot, 3.5, 0.36,
         "registers, in float32:  y1 = x1 cos - x2 sin,  y2 = x2 cos + x1 sin\n"
         "then packed back to fp16", fc="white", fs=6.2)  # fmt: skip
    for xa in (0.9, 2.4, 3.8):
        _arrow(ax, (xa, y_reg - 0.01), (xa if xa < 3.5 else 3.6, y_rot + 0.37))
    y_out = 0.22
    for i in range(nv):
        fc = full if i in (j, j + half_v) else "white"
        _box(ax, hx + i * vw, y_out, vw, 0.2, fc=fc, ec="0.4")
    ax.text(hx + nv * vw + 0.08, y_out + 0.1,
            "out[n], same columns:\ntwo 16-byte stores", fontsize=6,
            va="center")  # fmt: skip
    _arrow(ax, (1.2, y_rot - 0.01), (hx + (j + 0.5) * vw, y_out + 0.22))
    _arrow(ax, (2.6, y_rot - 0.01), (hx + (j + half_v + 0.5) * vw, y_out + 0.22))

    # One thread's order of work.
    tx, ty = 4.75, 2.35
    ax.text(tx, ty + 0.12, "one thread, in order", fontsize=6.8, weight="bold")
    steps = (
        ("load unit 1 (a, and b if a pair)", light),
        ("load unit 2 (a, and b if a pair)", light),
        ("rotate unit 1 if a pair; store", mid),
        ("rotate unit 2 if a pair; store", mid),
    )
    for i, (text, fc) in enumerate(steps):
        _box(ax, tx, ty - 0.32 * (i + 1), 2.2, 0.26, text, fc=fc, fs=6)
    ax.text(tx, ty - 1.42,
            f"up to {2 * UNITS} x 16 B loads in flight per thread\n"
            "before the first store.\n"
            "No shared memory: global -> registers -> global.\n"
            "Copy unit: one vector, loaded and stored as is.\n"
            "Bad id or position: no load, a NaN row.",
            fontsize=6, va="top", color="0.2")  # fmt: skip
    return fig


if __name__ == "__main__":
    bp.use()
    draw().savefig("/tmp/precompute_diagram.png")
