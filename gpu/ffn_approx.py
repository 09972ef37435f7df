"""Launchers for gpu/ffn_approx.cu: one sigma-MoE layer (router, CVMM, combine).

The CuPy twin of ``reference.ffn_approx.route`` and ``moe_cvmm``. The launchers
check every precondition before the first launch (dtypes, contiguity, shapes, K <= E
<= 256, idx in [0, E), the tensor-core versions' fp16 and divisibility needs), cast
scalars to int32, pick the grids and launch. No maths, no host sync after the
checks: pass ``ws`` (a ``Workspace``) and ``out`` to launch without allocating (CUDA
graphs), and ``check_idx=False`` for routing that came from ``route`` itself.

One layer is six launches for v1 and v2 (router, count, scatter, up, down, combine)
and five for v3, v4 and v5, which use later versions of the router and the sort
(``router_for``, ``sort_for``): router v1 is a thread per expert, router v2 a warp per
four tokens with lanes over C and a fixed-order warp reduction, router v3 a tensor-core
GEMM with the top-K and the sort's per-block histogram in its epilogue (fp16, C and E
multiples of 8); sort v1 is count then scatter (a block per expert), sort v2 one block
with per-warp histograms, sort v3 per-block histograms (written by router v3, or by
``hist_v3``) and a scatter spread over one block per 16 tokens. v5's GEMMs are a
3-stage ``cp.async`` ring of 64 x 128 tensor-core tiles with 16-byte epilogue stores;
v6 computes each thread's copy plan once (router v4 with 128-deep slabs, up v6 with
a 4-deep ring) and its down GEMM keeps a 128-column slice of w2[e] in shared memory
while it walks up to four 64-row tiles of the expert (G <= 256; larger G uses v5's).
v7 takes 128 x 128 tiles of 8 warps for both GEMMs and fuses the combine into the
down GEMM: four launches, with the same bits as v6 (``ws.ticket`` counts each
token's finished slots per 128-column slice; the block that finishes a token sums
its K rows of z in slot order).
v8 runs both GEMMs on the Hopper tensor cores' warpgroup instruction (wgmma, sm_90a:
compute capability 9.0 only) from a 6-deep ``cp.async`` ring of 128 x 128 x 64
tiles; it takes the expert weights K-major (``kmajor_weights``: w1t (E, G, C) and
w2t (E, C, G), ``torch.nn.Linear``'s layout), made once and passed as ``wt``, and
the combine is a launch of its own again.
v9 is v8 with router v5: the router's mma.sync fragments loaded straight from
global memory by 8 warps, each a k-range of C (no shared-memory ring, no barrier per
slab), from w3t = w3 transposed (``kmajor_weights``' third matrix). v10 keeps v8's
wgmma loop with a 3-stage ring so that two blocks share an SM, the epilogue through
shared memory as 16-byte rows, the tile table in shared memory, and down split into
blocks of four 128-column tiles.
``moe`` takes ``router_version`` to override the router.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gpu import runtime as rt

SLUG = "ffn_approx"
VERSIONS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
ROUTER_VERSIONS = (1, 2, 3, 4, 5)
SORT_VERSIONS = (1, 2, 3)
DTYPES = (np.float32, np.float16)
_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16"}
MAX_E = 256  # MAX_E in the .cu (router and count keep E values in shared memory)
RT = 16  # tokens per router block (and per block of sort v3's histogram)
# BM (rows) and BN (columns) of the GEMM tiles
TILE = {1: 64, 2: 64, 3: 64, 4: 128, 5: 64, 6: 64, 7: 128, 8: 128, 9: 128, 10: 128}
TILE_N = {1: 64, 2: 64, 3: 64, 4: 128, 5: 128, 6: 128, 7: 128, 8: 128, 9: 128, 10: 128}
THREADS = {
    1: 128,
    2: 256,
    3: 128,
    4: 256,
    5: 128,
    6: 128,
    7: 256,
    8: 256,
    9: 256,
    10: 256,
}
CHUNK = 256  # down v6: rows of one expert per block (D6R row tiles of 64)
D6_GMAX = 256  # down v6 keeps G x 128 of w2 and three 64 x G tiles of h in smem
ROUTER4_SMEM = 3 * (16 * 136 + 128 * 72) * 2  # RouterTile6::SMEM (bytes)
UP6_SMEM = 4 * (64 * 40 + 32 * 136) * 2  # UpTile6::SMEM
TILE7_SMEM = 4 * (128 * 40 + 32 * 136) * 2  # Tile7::SMEM (up and down v7)
GEMM8_SMEM = 6 * (128 + 128) * 64 * 2 + 1024  # ST8 stages of A and B, + alignment
GEMM10_SMEM = 3 * (128 + 128) * 64 * 2 + 1024  # ST10 stages: two blocks per SM
DOWN10_CT = 4  # down v10: column tiles of 128 per block (two blocks per row tile)
KMAJOR = (8, 9, 10)  # the versions that take the weights K-major (wt)


def fused_combine(version: int) -> bool:
    """Whether this version's down GEMM does the combine (v7 only: it saved nothing,
    so v8 went back to a combine launch)."""
    return version == 7


def kmajor_weights(w1, w2, w3=None):
    """(w1t, w2t, w3t): w1 (E, C, G), w2 (E, G, C) and w3 (C, E) with each matrix
    transposed, contiguous: w1t (E, G, C), w2t (E, C, G), w3t (E, C) (None without
    w3). v8's GEMM tiles and router v5 read rows of K from both operands; a model
    stores its weights this way once (``torch.nn.Linear`` keeps (out, in))."""
    import cupy as cp

    return (
        cp.ascontiguousarray(w1.transpose(0, 2, 1)),
        cp.ascontiguousarray(w2.transpose(0, 2, 1)),
        None if w3 is None else cp.ascontiguousarray(w3.T),
    )


def _check_wt(wt, w1, w2):
    """wt = (w1t, w2t, w3t) as kmajor_weights makes them (shapes, dtype,
    alignment); w3t is route's to check."""
    if not isinstance(wt, tuple) or len(wt) != 3:
        raise TypeError("wt must be the triple (w1t, w2t, w3t) from kmajor_weights")
    e, c, g = w1.shape
    rt.check_array("w1t", wt[0], (w1.dtype,), 3)
    rt.check_array("w2t", wt[1], (w1.dtype,), 3)
    rt.check_shape("w1t", wt[0], (e, g, c), "EGC")
    rt.check_shape("w2t", wt[1], (e, c, g), "ECG")
    rt.check_aligned(16, w1t=wt[0], w2t=wt[1])


def down6_smem(g: int) -> int:
    """down v6's dynamic shared memory: w2 slice GP x 136, ring 3 x 64 x (GP + 8),
    the output tile 64 x 136, halves; GP = G rounded up to the MMA's k step (16)."""
    gp = -(-g // 16) * 16
    return (gp * 136 + 3 * 64 * (gp + 8) + 64 * 136) * 2


MAX_GRID_Y = 65535


def flops(t: int, c: int, e: int, g: int, k: int) -> int:
    """Router 2 T C E, up and down 2 T K C G each: 2 T C (E + 2 K G)."""
    return 2 * t * c * (e + 2 * k * g)


def dense_flops(t: int, c: int, f: int) -> int:
    """The dense MLP relu(x W1) W2 with F hidden units: 4 T C F."""
    return 4 * t * c * f


def bytes_moved(t: int, c: int, e: int, g: int, k: int, itemsize: int) -> int:
    """Fewest bytes: x and out once, every expert's weights (all E are touched when
    T K >> E), the router, and idx/gate (T K (4 + 4)). The h and z workspaces are
    not counted: they are what a fused kernel would avoid (see workspace_bytes)."""
    return (2 * t * c + 2 * e * c * g + c * e) * itemsize + 8 * t * k


def workspace_bytes(t: int, c: int, g: int, k: int, itemsize: int) -> int:
    """h written and read (T K G) plus z written and read (T K C), storage dtype."""
    return 2 * t * k * (g + c) * itemsize


def dense_bytes(t: int, c: int, f: int, itemsize: int) -> int:
    """The dense MLP's fewest bytes: x, out, W1, W2 and the hidden activations
    (written and read once by the two cuBLAS GEMMs)."""
    return (2 * t * c + 2 * c * f + 2 * t * f) * itemsize


@dataclass
class Workspace:
    """Scratch of one layer call (CuPy arrays)."""

    idx: object  # (T, K) int32
    gate: object  # (T, K) float32
    counts: object  # (E,) int32
    offsets: object  # (E + 1,) int32
    tiles: object  # (E + 1,) int32
    order: object  # (P,) int32
    h: object  # (P, G) storage dtype
    z: object  # (P, C) storage dtype
    bhist: object = None  # (ceil(T / RT), E) int32: sort v3's per-block histograms
    tiles2: object = None  # (E + 1,) int32: chunks of CHUNK rows per expert (down v6)
    ticket: object = None  # (T, ceil(C / 128)) int32: down v7's, zeroed by sort v3


def workspace(t: int, c: int, e: int, g: int, k: int, dtype) -> Workspace:
    import cupy as cp

    i32, p = cp.int32, t * k
    return Workspace(
        cp.empty((t, k), i32), cp.empty((t, k), cp.float32), cp.empty(e, i32),
        cp.empty(e + 1, i32), cp.empty(e + 1, i32), cp.empty(p, i32),
        cp.empty((p, g), dtype), cp.empty((p, c), dtype),
        cp.empty((math.ceil(t / RT), e), i32), cp.empty(e + 1, i32),
        cp.zeros((t, math.ceil(c / TILE_N[7])), i32),
    )  # fmt: skip


def router_for(version: int, n_experts: int | None = None) -> int:
    """The router version a layer of this version uses by default: 1 for v1 and v2
    (which keep their first timings), 2 for v3 and v4, 3 for v5, 4 for v6-v8 and 5
    from v9 on when E % 8 == 0 (routers v3-v5 load 16-byte rows of w3; otherwise
    router v2)."""
    if version >= 5 and (n_experts is None or n_experts % 8 == 0):
        return 5 if version >= 9 else 4 if version >= 6 else 3
    return 2 if version >= 3 else 1


def sort_for(version: int) -> int:
    """The sort version a layer of this version uses: 1 (v1, v2), 2 (v3, v4), 3 (v5)."""
    return 3 if version >= 5 else (2 if version >= 3 else 1)


def _check_weights(x, w1, w2, version):
    """The checks of experts() and moe(); returns (T, C, E, G, version), the version
    being the one this card runs (runtime.pick_version: the best it supports)."""
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
    version = rt.pick_version(SLUG, version, tuple(reversed(VERSIONS)))
    rt.check_array("x", x, DTYPES, 2)
    rt.check_array("w1", w1, (x.dtype,), 3)
    rt.check_array("w2", w2, (x.dtype,), 3)
    (t, c), (e, _, g) = x.shape, w1.shape
    rt.check_positive(T=t, C=c, E=e, G=g)
    rt.check_shape("w1", w1, (e, c, g), "ECG")
    rt.check_shape("w2", w2, (e, g, c), "EGC")
    if e > MAX_E:
        raise ValueError(f"E = {e} exceeds the kernels' limit {MAX_E}")
    if version >= 3:
        if x.dtype != np.float16:
            raise TypeError(f"x: v{version} (tensor cores) needs float16")
        if c % 8 or g % 8:
            raise ValueError(f"v{version} needs C % 8 == 0 and G % 8 == 0; C={c} G={g}")
    return t, c, e, g, version


def _check_k(k, e):
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= e:
        raise ValueError(f"k must be an integer in [1, E={e}], got {k!r}")


def route(
    x, w3, k: int, *, idx=None, gate=None, version=2, bhist=None, w3t=None
):  # fmt: skip
    """idx (T, K) int32, gate (T, K) float32 = top-K of sigmoid(x w3) per token
    (descending, ties to the lower expert id). x (T, C), w3 (C, E), x's dtype.
    version: 1 or 2 (any C, E <= 256), or 3 to 5 (tensor cores: float16,
    C % 8 == 0, E % 8 == 0, 16-byte aligned x and w3), which also write bhist
    (ceil(T / 16), E) int32, each block of 16 tokens' expert histogram (sort v3's
    first half). Router v5 reads w3t = w3 transposed, (E, C) contiguous (made here
    when None)."""
    import cupy as cp

    if version not in ROUTER_VERSIONS:
        raise ValueError(
            f"router version must be one of {ROUTER_VERSIONS}, got {version!r}"
        )
    version = rt.pick_version(
        "ffn_approx_router", version, tuple(reversed(ROUTER_VERSIONS))
    )

    rt.check_array("x", x, DTYPES, 2)
    rt.check_array("w3", w3, (x.dtype,), 2)
    (t, c), e = x.shape, w3.shape[1]
    rt.check_positive(T=t, C=c, E=e)
    rt.check_shape("w3", w3, (c, e), "CE")
    if e > MAX_E:
        raise ValueError(f"E = {e} exceeds the router's limit {MAX_E}")
    _check_k(k, e)
    rt.check_int32(TC=t * c, CE=c * e, TK=t * k)
    if version >= 3:
        if x.dtype != np.float16:
            raise TypeError(f"x: router v{version} (tensor cores) needs float16")
        if c % 8 or e % 8:
            raise ValueError(
                f"router v{version} needs C % 8 == 0 and E % 8 == 0; C={c} E={e}"
            )
        rt.check_aligned(16, x=x, w3=w3)
        nb = math.ceil(t / RT)
        bhist = cp.empty((nb, e), cp.int32) if bhist is None else bhist
        rt.check_array("bhist", bhist, (np.int32,), 2)
        rt.check_shape("bhist", bhist, (nb, e), "BE")
    if version == 5:
        w3t = cp.ascontiguousarray(w3.T) if w3t is None else w3t
        rt.check_array("w3t", w3t, (x.dtype,), 2)
        rt.check_shape("w3t", w3t, (e, c), "EC")
        rt.check_aligned(16, w3t=w3t)
    idx = cp.empty((t, k), cp.int32) if idx is None else idx
    gate = cp.empty((t, k), cp.float32) if gate is None else gate
    rt.check_array("idx", idx, (np.int32,), 2)
    rt.check_shape("idx", idx, (t, k), "TK")
    rt.check_array("gate", gate, (np.float32,), 2)
    rt.check_shape("gate", gate, (t, k), "TK")
    i32 = np.int32
    extra = (bhist,) if version >= 3 else ()
    fn = rt.kernel(SLUG, f"ffn_approx_router_v{version}_{_SUFFIX[x.dtype]}")
    smem = ROUTER4_SMEM if version == 4 else 0
    if smem:
        fn.max_dynamic_shared_size_bytes = smem  # beyond 48 KB needs the opt-in
    fn(
        (math.ceil(t / RT),), (256 if version == 5 else 128,),
        (x, w3t if version == 5 else w3, idx, gate, *extra, i32(t), i32(c), i32(e),
         i32(k)),
        shared_mem=smem,
    )  # fmt: skip
    return idx, gate


def sort_pairs(
    idx,
    n_experts: int,
    bm: int,
    ws: Workspace,
    check_idx=True,
    version=2,
    hist_ready=False,
    tickets=False,
):
    """The stable counting sort of the T K pairs by expert: fills ws.counts,
    ws.offsets (E + 1), ws.tiles (tiles of bm rows per expert) and ws.order (P).
    idx (T, K) int32 in [0, E). version 1: count (one block) then scatter (a block
    per expert, each walking all P pairs); version 2: one block, per-warp histograms
    and ranks (the same order); version 3: ws.bhist, each 16-token block's histogram
    (hist_v3, or router v3 already: hist_ready=True), then a scatter of one block per
    16 tokens (the same order), which also zeroes ws.ticket (T, ceil(C / 128)) for
    down v7 when ``tickets``."""
    if version not in SORT_VERSIONS:
        raise ValueError(f"sort version must be one of {SORT_VERSIONS}: {version!r}")
    rt.check_array("idx", idx, (np.int32,), 2)
    p, e = idx.size, n_experts
    if check_idx:  # one reduction and a host sync
        import cupy as cp

        lo, hi = (int(v) for v in cp.asnumpy(cp.stack([idx.min(), idx.max()])))
        if lo < 0 or hi >= e:
            raise ValueError(f"idx must lie in [0, E={e}), got {lo}..{hi}")
    i32 = np.int32
    if version == 3:
        t, k = idx.shape
        nb = math.ceil(t / RT)
        if ws.bhist is None or ws.bhist.shape != (nb, e):
            raise ValueError(f"ws.bhist must be ({nb}, {e}) int32 for sort v3")
        if ws.tiles2 is None or ws.tiles2.shape != (e + 1,):
            raise ValueError(f"ws.tiles2 must be ({e + 1},) int32 for sort v3")
        ticket, nslice = ws.order, 0  # a valid pointer that is never written
        if tickets:
            rt.check_array("ws.ticket", ws.ticket, (np.int32,), 2)
            if ws.ticket.shape[0] != t:
                raise ValueError(f"ws.ticket must have T = {t} rows")
            ticket, nslice = ws.ticket, ws.ticket.shape[1]
        if not hist_ready:
            rt.kernel(SLUG, "ffn_approx_hist_v3")(
                (nb,), (256,), (idx, i32(p), i32(e), i32(k), ws.bhist)
            )
        rt.kernel(SLUG, "ffn_approx_scatter_v3")(
            (nb,), (256,),
            (idx, ws.bhist, i32(p), i32(e), i32(k), i32(nb), i32(bm), ws.counts,
             ws.offsets, ws.tiles, ws.order, i32(CHUNK), ws.tiles2, ticket,
             i32(nslice)),
        )  # fmt: skip
        return ws
    if version == 2:
        rt.kernel(SLUG, "ffn_approx_sort_v2")(
            (1,), (1024,),
            (idx, i32(p), i32(e), i32(bm), ws.counts, ws.offsets, ws.tiles,
             ws.order),
        )  # fmt: skip
        return ws
    rt.kernel(SLUG, "ffn_approx_count_v1")(
        (1,), (1024,),
        (idx, i32(p), i32(e), i32(bm), ws.counts, ws.offsets, ws.tiles),
    )  # fmt: skip
    rt.kernel(SLUG, "ffn_approx_scatter_v1")(
        (e,), (256,), (idx, i32(p), ws.offsets, ws.order)
    )
    return ws


def experts(
    x, w1, w2, idx, gate, *, version=3, out=None, ws=None, check_idx=True,
    hist_ready=False, wt=None,
):  # fmt: skip
    """out[t] = sum_j gate[t, j] relu(x[t] w1[idx[t, j]]) w2[idx[t, j]] (CVMM).

    Args:
        x: (T, C) float32 or float16; w1 (E, C, G), w2 (E, G, C) of x's dtype.
        idx: (T, K) int32 in [0, E) (repeats allowed); gate: (T, K) float32.
        version: 1..10 (gpu/ffn_approx.cu); 3 to 10 need float16, C, G % 8 == 0;
            8 to 10 need a compute capability 9.0 card (wgmma).
        out: optional (T, C) output of x's dtype; ws: optional Workspace.
        check_idx: check idx's range on the device first (a host sync).
        hist_ready: (v5) ws.bhist already holds idx's block histograms (router v3).
        wt: (v8-v10) the K-major weights ``kmajor_weights(w1, w2)`` (its w3t
            may be None here); made here (two transposes, allocated) when None.
    Returns:
        out (T, C): the K slots of each token summed in order j = 0..K-1.
    """
    import cupy as cp

    t, c, e, g, version = _check_weights(x, w1, w2, version)
    rt.check_array("idx", idx, (np.int32,), 2)
    k = idx.shape[1]
    rt.check_shape("idx", idx, (t, k), "TK")
    rt.check_positive(K=k)
    rt.check_array("gate", gate, (np.float32,), 2)
    rt.check_shape("gate", gate, (t, k), "TK")
    p = t * k
    rt.check_int32(PC=p * c, PG=p * g, ECG=e * c * g)
    if t > MAX_GRID_Y:
        raise ValueError(f"T = {t} exceeds the combine grid's limit {MAX_GRID_Y}")
    ws = ws or workspace(t, c, e, g, k, x.dtype)
    if ws.z.shape != (p, c) or ws.h.shape != (p, g) or ws.z.dtype != x.dtype:
        raise ValueError("ws does not match (T K, C), (T K, G) and x's dtype")
    if ws.counts.size != e:
        raise ValueError(f"ws was made for E = {ws.counts.size}, not {e}")
    if out is None:
        out = cp.empty((t, c), x.dtype)
    rt.check_array("out", out, (x.dtype,), 2)
    rt.check_shape("out", out, (t, c), "TC")
    if version >= 3:  # 16-byte loads of x, w1, w2, the workspace; stores of out
        rt.check_aligned(16, x=x, w1=w1, w2=w2, out=out, ws_z=ws.z, ws_h=ws.h)
    if version in KMAJOR:
        wt = kmajor_weights(w1, w2) if wt is None else wt
        _check_wt(wt, w1, w2)
    fused = fused_combine(version)
    if fused:
        rt.check_array("ws.ticket", ws.ticket, (np.int32,), 2)
        rt.check_shape("ws.ticket", ws.ticket, (t, math.ceil(c / TILE_N[7])), "TS")
    bm = TILE[version]
    sort_pairs(
        idx, e, bm, ws, check_idx, version=sort_for(version), hist_ready=hist_ready,
        tickets=fused,
    )  # fmt: skip
    i32, sfx = np.int32, _SUFFIX[x.dtype]
    for stage in ("up", "down"):
        gemm_stage(stage, x, w1, w2, gate, ws, version, out=out, wt=wt)
    if fused:  # down v7 has written out
        return out
    if version >= 3:
        grid = (math.ceil(c // 8 / 256), t)
        rt.kernel(SLUG, "ffn_approx_combine_v2_f16")(
            grid, (256,), (ws.z, out, i32(t), i32(c), i32(k))
        )
    else:
        rt.kernel(SLUG, f"ffn_approx_combine_v1_{sfx}")(
            (math.ceil(c / 256), t), (256,), (ws.z, out, i32(t), i32(c), i32(k))
        )
    return out


def gemm_stage(
    stage: str, x, w1, w2, gate, ws: Workspace, version: int, out=None, wt=None
) -> None:
    """One grouped GEMM of the layer, on a workspace the sort has filled (no
    checks: ``experts`` makes them; the benchmark times the stages alone with it).
    stage "up": ws.h = gate relu(x[order / K] w1[e]); "down": ws.z[order] = ws.h
    w2[e], and for v7 also out (T, C) = the combine (ws.ticket zeroed). v8-v10
    read the weights from wt = kmajor_weights(w1, w2)."""
    t, c = x.shape
    e, _, g = w1.shape
    k, p = gate.shape[1], ws.order.size
    bm, bn, nt = TILE[version], TILE_N[version], THREADS[version]
    a, w, dst, kd, n = (x, w1, ws.h, c, g) if stage == "up" else (ws.h, w2, ws.z, g, c)
    rows = p if version == 1 else math.ceil(p / bm) + e
    cols = math.ceil(n / (nt if version == 1 else bn))
    i32 = np.int32
    args = (a, w, ws.order, gate, ws.offsets, ws.tiles, dst)
    args += (i32(e), i32(k), i32(kd), i32(n))
    ver, smem = version, 0
    if version in KMAJOR:
        if wt is None:
            raise ValueError(f"v{version} reads K-major weights: pass wt")
        w = wt[0] if stage == "up" else wt[1]
        ntile = math.ceil(n / bn)
        # v8, v9: a block walks all its row tile's columns; v10 down: DOWN10_CT
        ct = DOWN10_CT if version == 10 and stage == "down" else ntile
        args = (a, w, ws.order, gate, ws.offsets, ws.tiles, dst)
        args += (i32(e), i32(k), i32(kd), i32(n), i32(ct))
        cols = math.ceil(ntile / ct)
        smem = GEMM10_SMEM if version == 10 else GEMM8_SMEM
    elif version == 7:
        smem = TILE7_SMEM
        if stage == "down":
            if out is None:
                raise ValueError("down v7 writes the layer's out: pass out (T, C)")
            args = (*args, ws.ticket, out)
    elif version == 6 and stage == "up":
        smem = UP6_SMEM
    elif version == 6 and g <= D6_GMAX:  # down v6: chunks of CHUNK rows
        rows, smem = math.ceil(p / CHUNK) + e, down6_smem(g)
        args = (*args, ws.tiles2)
    elif version == 6:
        ver = 5  # G > 256: w2's slice and the h ring do not fit
    fn = rt.kernel(SLUG, f"ffn_approx_{stage}_v{ver}_{_SUFFIX[x.dtype]}")
    if smem:
        fn.max_dynamic_shared_size_bytes = smem  # beyond 48 KB needs the opt-in
    fn((rows, cols), (nt,), args, shared_mem=smem)


def moe(
    x, w1, w2, w3, k: int, *, version=3, out=None, ws=None, router_version=None,
    wt=None,
):  # fmt: skip
    """One sigma-MoE layer: route (top-K of sigmoid(x w3)), then ``experts``.
    Shapes as ``experts`` plus w3 (C, E). No host sync: graph capturable.
    router_version: None for ``router_for(version)``, else 1 to 4.
    wt: (v8-v10) ``kmajor_weights(w1, w2, w3)``, made once by the caller (made
    here when None)."""
    t, c, e, g, version = _check_weights(x, w1, w2, version)
    _check_k(k, e)
    rv = router_for(version, e) if router_version is None else router_version
    ws = ws or workspace(t, c, e, g, k, x.dtype)
    if version in KMAJOR and wt is None:
        wt = kmajor_weights(w1, w2, w3)
    w3t = wt[2] if wt is not None else None
    route(x, w3, k, idx=ws.idx, gate=ws.gate, version=rv, bhist=ws.bhist, w3t=w3t)
    ready = rv >= 3 and sort_for(version) == 3  # router v3 or v4 wrote ws.bhist
    return experts(
        x, w1, w2, ws.idx, ws.gate, version=version, out=out, ws=ws,
        check_idx=False, hist_ready=ready, wt=wt,
    )  # fmt: skip
