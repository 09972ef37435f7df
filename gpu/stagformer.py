"""Launchers for gpu/stagformer.cu and one StagFormer decode step on the GPU.

The GPU twin of ``reference.stagformer.decode_step`` for p = 2 stacks of the model
family the kernels cover: RMSNorm, ReLU MLP, no biases, no RoPE (rot_dim = 0),
serial blocks. Weights (and KV caches, q) in float32 or float16; the residual stream
and every sum in float32. Self- and cross-attention use the foundation's decode
kernel (gpu/attention.py) with a fixed number of S-chunks (so a stack's result does
not depend on the batch the launch carries); the cross cache holds the null slot
(zeros) at slot 0 and the window W as a ring buffer, slot 1 + j % W for memory row j.

Schedules of ``decode_step``: "parallel" computes layer j of both stacks in one
launch (separate weights: gridDim.z = 2; shared weights: one weight, N = 2B rows);
"stack1_first" / "stack2_first" run one stack after the other. All three give
bitwise identical results (the GPU tests check it). ``plain_step`` is the ordinary
decoder of the same kernels (the sequential baseline). Launchers validate every
argument before the first launch; pass preallocated buffers for CUDA graphs.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from gpu import attention as att
from gpu import runtime as rt

SLUG = "stagformer"
VERSIONS = (1, 2, 3, 4, 5, 6, 7, 8, 9)
DTYPES = (np.float32, np.float16)
_SFX = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16"}
NR, NW, KC = 4, 8, 512  # as in the .cu
TARGET_BLOCKS = 264  # 2 per SM on an H100 (132 SMs): sizes KB from (K, M) only
TW4, KS4, KC4 = 128, 32, 256  # gemv v4: columns a block, rows a stage, most rows
TARGET_BLOCKS_V4 = 396  # v4: 3 blocks an SM of 132 (KB from (K, M) only)
V4_TILES = (1, 2, 4, 8)  # v4's row tiles: NT tiles of 8 rows
KC5, TARGET_BLOCKS_V5, V5_TILES = 512, 264, (1, 2, 4)  # v5: kc <= 512, ~2 an SM
TW6, KC6, TARGET_BLOCKS_V6 = 256, 512, 132  # v6: 256 columns, kc <= 512, 1 an SM
V6_TILES, V6_STAGES = (1, 2, 4, 8), {1: 12, 2: 10, 4: 8, 8: 5}  # Plan6 in the .cu
FIN6_BYTES = 128 * 1024  # v6: more partials a tile than this: a finish launch
TW7, KC7, XS7 = 256, 512, 40  # v7, v8: v6's split; an x slot row of 40 elements
V7_TILES, V7_STAGES = (1, 2, 4, 8), {1: 12, 2: 12, 4: 10, 8: 8}  # Plan7 in the .cu
KC9, V9_CLUSTERS = 2048, (8, 4, 2)  # v9: kc <= 2048; clusters of kb blocks
# v9: at most this many blocks in clusters (H100, 2026-12-06: up's 32 clusters of 4,
# 128 blocks, ran 1.2x slower than v8's same split without clusters, while q|k|v's
# 24 clusters of 4 ran faster: clusters are placed whole in a GPC, and 132 SMs in
# GPCs of 16-18 do not hold 32 clusters of 4 at once)
V9_MAX_BLOCKS = 96
SCHEDULES = ("parallel", "stack1_first", "stack2_first")
# GEMV versions, best first: on a card that cannot run the one asked for, the best of
# these it can runs, with a notice (gpu.runtime.pick_version, gpu/capability.json;
# NVRTC 13.0 compiles v1-v3 for sm_75 and up, v4-v8 (tensor cores, cp.async)
# for sm_80 and up, v9 (clusters) for sm_90). The attention of a step falls back on
# its own (gpu.attention.runnable_version).
FALLBACK = (9, 8, 7, 6, 5, 4, 3, 2, 1)
# GEMV versions that round float32 x to fp16 before the products (fp16 weights):
# their references round x too, and a step's tolerance row is step_tolerance's
ROUNDS_X = (7, 8, 9)


def step_tolerance(version: int, dtype) -> str:
    """The reference.testing row (kind) a decode step with GEMV ``version`` and
    weights of ``dtype`` is checked with: "stag_step_x16" where the GEMVs round
    their inputs to fp16 (ROUNDS_X with fp16 weights), else "stag_step"."""
    x16 = version in ROUNDS_X and np.dtype(dtype) == np.float16
    return "stag_step_x16" if x16 else "stag_step"


def runnable_version(version: int) -> int:
    """The GEMV version this card runs when ``version`` is asked for (itself, or the
    best of FALLBACK it supports, with one CapabilityFallback warning)."""
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
    return rt.pick_version(SLUG, version, FALLBACK)


def vec(dtype) -> int:
    """Columns a lane of gemv v2 covers: one 16-byte load."""
    return 16 // np.dtype(dtype).itemsize


def k_split(k: int, m: int, dtype) -> tuple[int, int]:
    """(KB, kc) of gemv v2: K split over KB blocks of kc rows (a multiple of 32,
    <= KC), from K and M only, so every launch of a weight sums in the same order."""
    tiles = math.ceil(m / (32 * vec(dtype)))
    kb = max(1, math.ceil(TARGET_BLOCKS / tiles))
    kc = min(KC, max(32, 32 * math.ceil(math.ceil(k / kb) / 32)))
    return math.ceil(k / kc), kc


def rows_v3(n: int) -> int:
    """Rows a thread of gemv v3 keeps (R): the smallest power of two >= N, <= 8.
    A row's sum does not depend on R (the same k order, the same sums)."""
    return min(8, 1 << max(0, n - 1).bit_length())


def best_version(b: int) -> int:
    """GEMV version of the fastest measured decode step at batch b.

    Measured at B = 1, 4, 8 and 64 (results/h100/stagformer.json, H100, commit
    730fc2271506; the H200's set has v2 and v3 only): v3 (the fused norm) was the
    fastest at B = 1, v8 at B = 4 (v9 was not timed there), v9 at B = 8 and 64. An
    unmeasured batch takes the version of the nearer measured batch on a log scale
    (boundaries at 2 and 5.7): v3 up to 2, v8 from 3 to 5, v9 from 6. v8 and v9
    round each GEMV's float32 input to fp16 (ROUNDS_X), as PyTorch's fp16 model
    does. (decode_step and plain_step keep version=2 as their default; the
    persistent B = 1 step, persistent_step, is another launcher.)"""
    if b < 1:
        raise ValueError(f"b must be >= 1, got {b!r}")
    return 3 if b <= 2 else 8 if b <= 5 else 9


def _tc_split(
    n: int, k: int, m: int, row_tiles: tuple, target: int, kc_max: int,
    tw: int = TW4, at_most: bool = False,
) -> dict[str, int]:  # fmt: skip
    """The grid of gemv v4-v6: nt (the smallest of row_tiles with 8 nt >= N, else
    the largest), rows = 8 nt, rt row tiles, tiles of tw columns, and K split over
    kb blocks of kc rows (a multiple of KS4, <= kc_max) for about ``target`` blocks
    (at_most: no more than target unless kc is capped), from (K, M) only."""
    nt = next((t for t in row_tiles if 8 * t >= n), row_tiles[-1])
    tiles = math.ceil(m / tw)
    kb = max(1, target // tiles if at_most else math.ceil(target / tiles))
    kc = min(kc_max, max(KS4, KS4 * math.ceil(math.ceil(k / kb) / KS4)))
    return dict(
        nt=nt, rows=8 * nt, rt=math.ceil(n / (8 * nt)), tiles=tiles,
        kb=math.ceil(k / kc), kc=kc,
    )  # fmt: skip


def v4_plan(n: int, k: int, m: int, x_float: bool = True) -> dict[str, int]:
    """gemv v4's launch for N rows of x and a (K, M) fp16 weight.

    nt: tiles of 8 rows a block (the smallest of V4_TILES covering N, at most 8),
    rows = 8 nt, rt: row tiles (blocks along N), tiles: column tiles of TW4 = 128,
    (kb, kc): K split over kb blocks of kc rows (a multiple of 32, <= KC4 = 256),
    from (K, M) only, so a row's sum is the same whatever N the launch carries;
    st: ring stages; smem: dynamic shared-memory bytes (as Plan4 in the .cu:
    the W ring, the hi (and lo, for float32 x) halves of x, a float a row)."""
    p = _tc_split(n, k, m, V4_TILES, TARGET_BLOCKS_V4, KC4)
    st = {1: 8, 2: 6}.get(p["nt"], 4)
    halves = st * KS4 * TW4 + (2 if x_float else 1) * p["rows"] * (KC4 + 8)
    return dict(p, st=st, smem=2 * halves + 4 * p["rows"])


def v5_plan(n: int, k: int, m: int, x_float: bool = True) -> dict[str, int]:
    """gemv v5's launch (keys as v4_plan): nt in V5_TILES (at most 4: 32 rows a
    block, more rows make more row tiles), kc <= KC5 = 512 and about
    TARGET_BLOCKS_V5 = 264 blocks, both from (K, M) only; st ring stages; smem: the
    ring, R rows of KC5 + 4 float slots of x (float32 x is split into its hi and lo
    halves in the same bytes), a float a row (Plan5 in the .cu). x_float is
    accepted for v4_plan's signature; the bytes do not depend on it."""
    p = _tc_split(n, k, m, V5_TILES, TARGET_BLOCKS_V5, KC5)
    st = 6 if p["nt"] == 1 else 4
    smem = 2 * st * KS4 * TW4 + 4 * p["rows"] * (KC5 + 4) + 4 * p["rows"]
    return dict(p, st=st, smem=smem)


def v6_plan(n: int, k: int, m: int, x_float: bool = True) -> dict[str, int]:
    """gemv v6's launch (keys as v4_plan): nt in V6_TILES (up to 8: 64 rows a
    block, so W is read once up to N = 64), tiles of TW6 = 256 columns, K split
    over kb = floor(TARGET_BLOCKS_V6 / tiles) blocks (at least 1) of kc rows (a
    multiple of 32, <= KC6 = 512), from (K, M) only: about one block an SM, never
    more than 132 unless kc is capped; st ring stages of 32 x 256 halves; smem: the
    ring, R rows of KC6 + 4 float slots of x, a float a row (Plan6 in the .cu);
    fin: 1 when a column tile's partials (kb R 256 floats) exceed FIN6_BYTES, so the
    sum over kb runs as its own launch over every SM (stag_gemv_finish_v6) rather
    than in the tile's last block (0); both sum in the same order: the same bits.
    x_float is accepted for v4_plan's signature; the bytes do not depend on it."""
    p = _tc_split(n, k, m, V6_TILES, TARGET_BLOCKS_V6, KC6, TW6, at_most=True)
    st, rows = V6_STAGES[p["nt"]], p["rows"]
    smem = 2 * st * KS4 * TW6 + 4 * rows * (KC6 + 4) + 4 * rows
    fin = int(p["kb"] > 1 and 4 * p["kb"] * rows * TW6 > FIN6_BYTES)
    return dict(p, st=st, smem=smem, fin=fin)


def v7_plan(n: int, k: int, m: int, x_float: bool = True) -> dict[str, int]:
    """gemv v7's and v8's launch: v6's split (v6_plan's nt, rows, rt, tiles, kb,
    kc and fin: the same partials and finish), st ring stages of a W slot (32 x 256
    halves) and an x slot (rows x XS7 = 40 elements of x, float32 if x_float else
    float16) each; smem: the ring's bytes (Plan7 in the .cu)."""
    p = _tc_split(n, k, m, V7_TILES, TARGET_BLOCKS_V6, KC7, TW7, at_most=True)
    st, rows = V7_STAGES[p["nt"]], p["rows"]
    smem = st * (2 * KS4 * TW7 + (4 if x_float else 2) * rows * XS7)
    fin = int(p["kb"] > 1 and 4 * p["kb"] * rows * TW7 > FIN6_BYTES)
    return dict(p, st=st, smem=smem, fin=fin)


def v9_plan(n: int, k: int, m: int, x_float: bool = True) -> dict[str, int]:
    """gemv v9's launch: v7_plan's row tiles, ring and shared memory, with K split
    over kb = 8, 4 or 2 blocks (the first with tiles * kb <= V9_MAX_BLOCKS and
    exactly kb blocks of kc = 32 ceil(K / 32 kb) <= KC9 rows: no empty block), one
    cluster (1, kb, 1) a tile, from (K, M) only; cluster = kb. Where none fits,
    cluster = 0 and the rest is v7_plan's: v8's kernel runs (split, finish and
    all)."""
    p = v7_plan(n, k, m, x_float)
    for kb in V9_CLUSTERS:
        kc = KS4 * math.ceil(math.ceil(k / kb) / KS4)
        if p["tiles"] * kb <= V9_MAX_BLOCKS and kc <= KC9 and -(-k // kc) == kb:
            return dict(p, kb=kb, kc=kc, fin=0, cluster=kb)
    return dict(p, cluster=0)


def gemv_workspace(n: int, k: int, m: int, dtype, z: int = 2) -> tuple[int, int]:
    """(float32 partials, uint32 counters) gemv v2-v7 need for N rows, Z stacks
    (the largest: v2 pads N to NR = 4 rows, v3 to R = rows_v3(N), v4-v7 to 8 nt
    rows a row tile, v4_plan to v7_plan)."""
    kb, _ = k_split(k, m, dtype)
    tiles = math.ceil(m / (32 * vec(dtype)))
    nr3 = rows_v3(n)
    padded = max(math.ceil(n / NR) * NR, math.ceil(n / nr3) * nr3)
    rts = max(math.ceil(n / NR), math.ceil(n / nr3))
    elems, cnt = z * padded * tiles * kb * 32 * vec(dtype), z * rts * tiles
    if np.dtype(dtype) == np.float16:
        for p, tw in ((v4_plan(n, k, m), TW4), (v5_plan(n, k, m), TW4),
                      (v6_plan(n, k, m), TW6), (v7_plan(n, k, m), TW7)):  # fmt: skip
            elems = max(elems, z * p["rt"] * p["tiles"] * p["kb"] * p["rows"] * tw)
            cnt = max(cnt, z * p["rt"] * p["tiles"])
    return elems, cnt


@dataclass
class Scratch:
    """the GEMVs' (v2-v6) partials and counters (counters zero, and left zero), and the
    attention workspaces (zero, left zero by v7), one per attention shape
    (rows, cache length): v7 keeps its counters after the partials, at an offset
    that depends on the shape, so one shared buffer would let one call's partials
    overwrite another's counters. One Scratch per stream."""

    ws: object
    cnt: object
    attn: dict


def new_scratch(gemv_elems: int, counters: int, attn: dict | None = None) -> Scratch:
    """attn: {(rows, cache length): float32 elements} of the attention calls."""
    import cupy as cp

    return Scratch(
        cp.zeros(max(gemv_elems, 1), cp.float32),
        cp.zeros(max(counters, 1), cp.uint32),
        {key: cp.zeros(max(n, 1), cp.float32) for key, n in (attn or {}).items()},
    )


def gemv(
    xs, ws, ys, *, res=None, act: int = 0, version: int = 2, scratch=None, norm=None
):
    """ys[z] = act(xs[z] @ ws[z]) (+ res[z]) for z < len(xs) (1 or 2), one launch.

    xs[z]: (N, K) float32, or the weights' dtype (float16 only); ws[z]: (K, M)
    float32/float16; ys[z], res[z]: (N, M) float32 (res may be ys: in place).
    versions 2-9 need M % VEC == 0, 16-byte aligned weights and ``scratch``.
    v4-v9 run on tensor cores and have fp16 weights only: with float32
    weights, versions 4-9 run v2's kernel (the same sums as v3 without a norm).
    v7-v9 round float32 x to fp16 (round to nearest) before the products, as a
    model in fp16 does: |x| beyond fp16's range (65504) becomes inf there;
    v8 is v7 with cheaper copies (the same sums: v7's bits); v9 is v8 with the
    split over K summed in a cluster's shared memory (v8's bits where v9_plan's
    split is v7_plan's; where v9_plan finds no cluster split, v8 runs).
    norm (v3 only): gammas[z] (K,) of the weights' dtype: xs[z] (float32) is
    RMS-normed with them inside the GEMV, ys[z] = act(rmsnorm(xs[z]) @ ws[z]) ...
    """
    version = runnable_version(version)
    if act not in (0, 1):
        raise ValueError(f"act must be 0 (none) or 1 (relu), got {act!r}")
    z = len(xs)
    if z not in (1, 2) or len(ws) != z or len(ys) != z or (res and len(res) != z):
        raise ValueError("xs, ws, ys (and res) must be lists of 1 or 2 arrays")
    rt.check_array("ws[0]", ws[0], DTYPES, 2)
    wdt = ws[0].dtype
    k, m = ws[0].shape
    n = xs[0].shape[0]
    xdts = (np.float32, np.float16) if wdt == np.float16 else (np.float32,)
    rt.check_array("xs[0]", xs[0], xdts, 2)
    for i in range(z):
        rt.check_array(f"ws[{i}]", ws[i], (wdt,), 2)
        rt.check_array(f"xs[{i}]", xs[i], (xs[0].dtype,), 2)
        rt.check_array(f"ys[{i}]", ys[i], (np.float32,), 2)
        rt.check_shape(f"ws[{i}]", ws[i], (k, m), "KM")
        rt.check_shape(f"xs[{i}]", xs[i], (n, k), "NK")
        rt.check_shape(f"ys[{i}]", ys[i], (n, m), "NM")
        if res:
            rt.check_array(f"res[{i}]", res[i], (np.float32,), 2)
            rt.check_shape(f"res[{i}]", res[i], (n, m), "NM")
    if norm is not None:
        if version != 3:
            raise ValueError(f"norm (a fused RMSNorm) needs version 3, not {version}")
        if len(norm) != z:
            raise ValueError(f"norm needs one gamma per stack: {z}, got {len(norm)}")
        if xs[0].dtype != np.float32:
            raise ValueError("norm needs float32 xs (the residual stream)")
        for i, g in enumerate(norm):
            rt.check_array(f"norm[{i}]", g, (wdt,), 1)
            rt.check_shape(f"norm[{i}]", g, (k,), "K")
    rt.check_positive(N=n, K=k, M=m)
    rt.check_int32(KM=k * m, NM=n * m, NK=n * k)
    sfx = _SFX[wdt] + ("x16" if xs[0].dtype == np.float16 else "")
    i32 = np.int32
    r = (res[0], res[-1]) if res else (0, 0)
    args = (xs[0], xs[-1], ws[0], ws[-1], *r, ys[0], ys[-1], i32(n), i32(k), i32(m))
    if version == 1:
        fn = rt.kernel(SLUG, f"stag_gemv_v1_{sfx}")
        fn((math.ceil(m / 128), n, z), (128,), args + (i32(act),))
        return ys
    v = f"v{version}"
    if m % vec(wdt):
        raise ValueError(f"{v} ({wdt.name}) needs M % {vec(wdt)} == 0; M = {m}")
    for i in range(z):
        if ws[i].data.ptr % 16:
            raise ValueError(f"{v} needs ws[{i}] 16-byte aligned")
    if scratch is None:
        raise ValueError(f"{v} needs scratch (new_scratch with gemv_workspace sizes)")
    need, cnt = gemv_workspace(n, k, m, wdt, z)
    if scratch.ws.size < need or scratch.cnt.size < cnt:
        raise ValueError(f"scratch too small: needs {need} floats, {cnt} counters")
    if version == 9 and wdt == np.float16:  # clusters: no partials in memory
        p = v9_plan(n, k, m, xs[0].dtype == np.float32)
        if p["cluster"]:
            fn = rt.kernel(SLUG, f"stag_gemv_v9_{sfx}_n{p['nt']}_c{p['cluster']}")
            fn.max_dynamic_shared_size_bytes = p["smem"]
            grid = (z * p["rt"], p["kb"], p["tiles"])
            fn(grid, (32 * NW,), args + (i32(act), i32(p["kc"])), shared_mem=p["smem"])
            return ys
        version = 8  # no cluster split for this shape: v8, as v9_plan says
    if version in (4, 5, 6, 7, 8) and wdt == np.float16:  # tensor cores
        plan = {4: v4_plan, 5: v5_plan, 6: v6_plan, 7: v7_plan, 8: v7_plan}[version]
        p = plan(n, k, m, xs[0].dtype == np.float32)
        fn = rt.kernel(SLUG, f"stag_gemv_v{version}_{sfx}_n{p['nt']}")
        fn.max_dynamic_shared_size_bytes = p["smem"]  # beyond 48 KB: opt in
        tail = (i32(act), i32(p["kc"]), scratch.ws, scratch.cnt)
        tail += (i32(p["fin"]),) if version >= 6 else ()
        grid = (p["tiles"], p["kb"], z * p["rt"])
        if version >= 5:  # the row tiles of one K chunk adjacent (blockIdx.x)
            grid = grid[::-1]
        fn(grid, (32 * NW,), args + tail, shared_mem=p["smem"])
        if version >= 6 and p["fin"]:  # the sum over kb, every SM (v6's finish)
            zr, tiles = z * p["rt"], z * p["rt"] * p["tiles"]
            quads = tiles * p["rows"] * TW6 // 4
            fin = rt.kernel(SLUG, "stag_gemv_finish_v6")
            fin(
                (math.ceil(quads / 256),), (256,),
                (scratch.ws, *r, ys[0], ys[-1], i32(n), i32(m), i32(act),
                 i32(p["kb"]), i32(p["rows"]), i32(zr), i32(tiles)),
            )  # fmt: skip
        return ys
    kb, kc = k_split(k, m, wdt)
    tiles = math.ceil(m / (32 * vec(wdt)))
    tail = (i32(act), i32(kc), scratch.ws, scratch.cnt)
    if version in (2, 4, 5, 6, 7, 8, 9):  # 4-9 with float32 weights: v2's kernel
        fn = rt.kernel(SLUG, f"stag_gemv_v2_{sfx}")
        fn((tiles, kb, z * math.ceil(n / NR)), (32 * NW,), args + tail)
        return ys
    nr = rows_v3(n)
    g = (norm[0], norm[-1]) if norm is not None else (0, 0)
    args = (xs[0], xs[-1], ws[0], ws[-1], *g, *r, ys[0], ys[-1], i32(n), i32(k))
    fn = rt.kernel(SLUG, f"stag_gemv_v3_{sfx}_r{nr}")
    fn((tiles, kb, z * math.ceil(n / nr)), (32 * NW,), args + (i32(m),) + tail)
    return ys


def rmsnorm(x, gammas, y):
    """y[z] = x[z] / sqrt(mean(x[z]^2) + 1e-6) * gammas[z]: x, y (Z, N, C) float32,
    gammas Z arrays (C,) of the weights' dtype, Z in {1, 2}."""
    rt.check_array("x", x, (np.float32,), 3)
    rt.check_array("y", y, (np.float32,), 3)
    z, n, c = x.shape
    rt.check_shape("y", y, (z, n, c), "ZNC")
    if len(gammas) != z or z not in (1, 2):
        raise ValueError(f"need one gamma per stack: Z = {z}, got {len(gammas)}")
    for i, g in enumerate(gammas):
        rt.check_array(f"gammas[{i}]", g, DTYPES, 1)
        rt.check_shape(f"gammas[{i}]", g, (c,), "C")
    rt.check_positive(N=n, C=c)
    fn = rt.kernel(SLUG, f"stag_rmsnorm_v1_{_SFX[gammas[0].dtype]}")
    fn((n, z), (256,), (x, gammas[0], gammas[-1], y, np.int32(n), np.int32(c)))
    return y


def store_qkv(y, q, k_cache, v_cache, pos: int):
    """Split the fused row y (N, (H + 2G) D) float32 into q (N, H, D) and slot pos of
    the caches (N, G, S, D), all of the weights' dtype."""
    rt.check_array("y", y, (np.float32,), 2)
    rt.check_array("q", q, DTYPES, 3)
    rt.check_array("k_cache", k_cache, (q.dtype,), 4)
    rt.check_array("v_cache", v_cache, (q.dtype,), 4)
    n, h, d = q.shape
    g, s = k_cache.shape[1], k_cache.shape[2]
    rt.check_shape("k_cache", k_cache, (n, g, s, d), "NGSD")
    rt.check_shape("v_cache", v_cache, (n, g, s, d), "NGSD")
    rt.check_shape("y", y, (n, (h + 2 * g) * d), "N(H+2G)D")
    if not 0 <= pos < s:
        raise ValueError(f"pos must be in [0, S={s}), got {pos}")
    i32 = np.int32
    fn = rt.kernel(SLUG, f"stag_store_qkv_v1_{_SFX[q.dtype]}")
    grid = (math.ceil((h + 2 * g) * d / 256), n)
    fn(
        grid,
        (256,),
        (y, q, k_cache, v_cache, i32(n), i32(h), i32(g), i32(d), i32(s), i32(pos)),
    )
    return q


def scatter(y, dst, c0: int, ystride: int, pos: int):
    """dst[l, n, g, pos, :] = y[n, c0 + l ystride + g D : ... + D] for every layer l:
    y (N, Y) float32; dst (L, N, G, S, D) of the weights' dtype."""
    rt.check_array("y", y, (np.float32,), 2)
    rt.check_array("dst", dst, DTYPES, 5)
    lz, n, g, s, d = dst.shape
    if y.shape[0] != n or c0 < 0 or c0 + (lz - 1) * ystride + g * d > y.shape[1]:
        raise ValueError(f"y {y.shape} does not hold the columns dst {dst.shape} needs")
    if not 0 <= pos < s:
        raise ValueError(f"pos must be in [0, S={s}), got {pos}")
    i32 = np.int32
    fn = rt.kernel(SLUG, f"stag_scatter_v1_{_SFX[dst.dtype]}")
    fn(
        (math.ceil(g * d / 256), n, lz),
        (256,),
        (
            y,
            dst,
            i32(n),
            i32(y.shape[1]),
            i32(c0),
            i32(ystride),
            np.int64(n * g * s * d),
            i32(g),
            i32(d),
            i32(s),
            i32(pos),
        ),
    )
    return dst


# --- the model on the GPU -----------------------------------------------------------


@dataclass
class Layer:
    """One layer of one stack on the GPU: fused q|k|v, o, MLP, norms."""

    g1: object  # (C,)
    wqkv: object  # (C, (H + 2G) D)
    wo: object  # (H D, C)
    g2: object  # (C,)
    wup: object  # (C, F)
    wdown: object  # (F, C)


@dataclass
class Model:
    """stacks[s][j]: Layer; cross[j]: (gc, wcq, wco) of stack 2; wckv (C, L 2 G D):
    every layer's cross W_K | W_V side by side (one GEMV projects a memory row
    for all layers); gf: the final norms. Shapes from the reference config."""

    H: int
    G: int
    D: int
    C: int
    F: int
    L: int
    shared: bool
    window: int | None
    dtype: object
    stacks: list
    cross: list
    wckv: object
    gf: list


def check_config(cfg) -> None:
    """ValueError unless the kernels cover this reference.stagformer.StagConfig."""
    b = cfg.base
    ok = b.norm == "rmsnorm" and b.act == "relu" and b.rot_dim == 0
    if not ok or cfg.p != 2 or b.parallel:
        raise ValueError(
            "the GPU step covers p = 2, serial blocks, norm='rmsnorm', act='relu', "
            f"rot_dim=0 (no RoPE), no biases; got {cfg}"
        )


def to_gpu(w, cfg, dtype) -> Model:
    """The reference weights (reference.stagformer.StagWeights) in the GPU layout."""
    import cupy as cp

    check_config(cfg)
    b = cfg.base

    def dev(a):
        return cp.asarray(np.ascontiguousarray(a, dtype=dtype))

    def layer(lw):
        a = lw.attn
        if any(v is not None for v in (a.b_q, a.b_k, a.b_v, a.b_o, lw.mlp.b_in)):
            raise ValueError("the GPU step has no biases")
        wqkv = np.concatenate([a.w_q, a.w_k, a.w_v], axis=1)
        return Layer(
            dev(lw.norm1.gamma),
            dev(wqkv),
            dev(a.w_o),
            dev(lw.norm2.gamma),
            dev(lw.mlp.w_in),
            dev(lw.mlp.w_out),
        )

    s1 = [layer(lw) for lw in w.layers[0]]
    s2 = s1 if cfg.shared else [layer(lw) for lw in w.layers[1]]
    cross = [(dev(c.norm.gamma), dev(c.attn.w_q), dev(c.attn.w_o)) for c in w.cross[0]]
    ckv = np.concatenate(
        [np.concatenate([c.attn.w_k, c.attn.w_v], axis=1) for c in w.cross[0]], axis=1
    )
    gf = [dev(n.gamma) for n in w.norm_f]
    return Model(
        b.H,
        b.G,
        b.D,
        b.C,
        b.F,
        b.L,
        cfg.shared,
        cfg.window,
        np.dtype(dtype),
        [s1, s2],
        cross,
        dev(ckv),
        gf,
    )


@dataclass
class Buffers:
    """Everything one step reads and writes, preallocated (CUDA graphs).

    x (2, B, C): the residual streams, set to the embeddings before a step; out
    (2, B, C): h (stack 1's output, the next step's memory row) and o; k, v (L, 2,
    B, G, S, D): self caches, S = pos + 1; xk, xv (L, B, G, Sx, D): cross caches,
    Sx = 1 + min(pos, W); the rest is scratch."""

    x: object
    out: object
    k: object
    v: object
    xk: object
    xv: object
    xn: object
    yq: object
    q: object
    o: object
    u: object
    cq: object
    cqt: object
    co: object
    ckv: object
    scratch: Scratch


def cross_len(pos: int, window: int | None) -> int:
    """Slots of the cross cache at step pos: the null slot and min(pos, W) rows."""
    return 1 + (pos if window is None else min(pos, window))


def n_split(s: int) -> int:
    """S-chunks of the attention kernel: from S alone (not B), up to 16."""
    return max(1, min(16, math.ceil(s / 128)))


def attn_version(d: int, dtype) -> int:
    return att.fused_version(d, dtype)


def new_buffers(m: Model, b: int, pos: int, stacks: int = 2) -> Buffers:
    """Buffers for one step at position pos with batch b (stacks = 1: plain)."""
    import cupy as cp

    dt, f32 = m.dtype, cp.float32
    h, g, d, c, f, lz = m.H, m.G, m.D, m.C, m.F, m.L
    s, sx = pos + 1, cross_len(pos, m.window)
    lx = lz if stacks == 2 else 0  # plain: no cross caches
    dims = ((c, (h + 2 * g) * d), (h * d, c), (c, f), (f, c), (c, 2 * lz * g * d))
    sizes = [gemv_workspace(stacks * b, kk, mm, dt, 2) for kk, mm in dims]
    gw = (max(x[0] for x in sizes), max(x[1] for x in sizes))
    av = attn_version(d, dt)
    shapes = {(z * b, s) for z in range(1, stacks + 1)} | {(b, sx)}
    ae = {(r, n): att.workspace_elems(av, r, h, n, d, n_split(n)) for r, n in shapes}
    return Buffers(
        x=cp.zeros((stacks, b, c), f32),
        out=cp.zeros((stacks, b, c), f32),
        k=cp.zeros((lz, stacks, b, g, s, d), dt),
        v=cp.zeros((lz, stacks, b, g, s, d), dt),
        xk=cp.zeros((lx, b, g, sx, d), dt),
        xv=cp.zeros((lx, b, g, sx, d), dt),
        xn=cp.zeros((stacks, b, c), f32),
        yq=cp.zeros((stacks, b, (h + 2 * g) * d), f32),
        q=cp.zeros((stacks, b, h, d), dt),
        o=cp.zeros((stacks, b, h, d), dt),
        u=cp.zeros((stacks, b, f), f32),
        cq=cp.zeros((b, h * d), f32),
        cqt=cp.zeros((b, h, d), dt),
        co=cp.zeros((b, h, d), dt),
        ckv=cp.zeros((b, 2 * lz * g * d), f32),
        scratch=new_scratch(gw[0], gw[1], ae),
    )


def _attend(q, k, v, out, scratch):
    s = k.shape[2]
    return att.decode_attention(
        q,
        k,
        v,
        version=attn_version(q.shape[-1], q.dtype),
        n_split=n_split(s),
        out=out,
        workspace=scratch.attn[q.shape[0], s],
    )


def run_layers(m: Model, bf: Buffers, sel: list[int], pos: int, version: int):
    """All L layers of the stacks in sel ([0], [1] or [0, 1]: one launch for both)."""
    version = runnable_version(version)  # before `fused` is decided from it
    b = bf.x.shape[1]
    sl = slice(sel[0], sel[-1] + 1)
    both = len(sel) == 2
    one = m.shared and both  # shared weights: one weight, N = 2B rows

    def rows(a):  # (Z, B, ...) slice of the stacks in sel, as (Z*B, ...)
        return a[sl].reshape((len(sel) * b,) + a.shape[2:])

    def flat(a):  # the same as (Z*B, row)
        return a[sl].reshape(len(sel) * b, -1)

    def mm(xs, wname, ys, j, **kw):
        wl = [getattr(m.stacks[s][j], wname) for s in sel]
        res = kw.pop("res", None)  # (Z, B, ...) residual, added in place
        norm = kw.pop("norm", None)  # gammas of the stacks in sel (v3: fused)
        if one:  # shared weights: one weight and one gamma (the same layer)
            xs_, ys_ = [flat(xs)], [flat(ys)]
            r = None if res is None else [flat(res)]
            g = None if norm is None else norm[:1]
            return gemv(
                xs_, wl[:1], ys_, res=r, version=version, scratch=bf.scratch,
                norm=g, **kw,
            )  # fmt: skip
        xl = [xs[s].reshape(b, -1) for s in sel]
        yl = [ys[s].reshape(b, -1) for s in sel]
        r = None if res is None else [res[s].reshape(b, -1) for s in sel]
        return gemv(
            xl, wl, yl, res=r, version=version, scratch=bf.scratch, norm=norm, **kw
        )

    fused = version == 3  # v3 RMS-norms inside the GEMV: no rmsnorm launch

    def normed(gammas, rng=sl):
        """(GEMV input, its norm argument): x itself (v3) or the normed xn."""
        if fused:
            return bf.x, gammas
        rmsnorm(bf.x[rng], gammas, bf.xn[rng])
        return bf.xn, None

    for j in range(m.L):
        lay = [m.stacks[s][j] for s in sel]
        xin, g = normed([ly.g1 for ly in lay])
        mm(xin, "wqkv", bf.yq, j, norm=g)
        store_qkv(rows(bf.yq), rows(bf.q), rows(bf.k[j]), rows(bf.v[j]), pos)
        _attend(rows(bf.q), rows(bf.k[j]), rows(bf.v[j]), rows(bf.o), bf.scratch)
        mm(bf.o, "wo", bf.x, j, res=bf.x)
        if 1 in sel:  # stack 2's cross-attention over [null, h_<pos]
            gc, wcq, wco = m.cross[j]
            xin, g = normed([gc], slice(1, 2))
            gemv([xin[1]], [wcq], [bf.cq], version=version, scratch=bf.scratch, norm=g)
            scatter(bf.cq, bf.cqt.reshape(1, b, m.H, 1, m.D), 0, 0, 0)
            _attend(bf.cqt, bf.xk[j], bf.xv[j], bf.co, bf.scratch)
            gemv(
                [bf.co.reshape(b, -1)],
                [wco],
                [bf.x[1]],
                res=[bf.x[1]],
                version=version,
                scratch=bf.scratch,
            )
        xin, g = normed([ly.g2 for ly in lay])
        mm(xin, "wup", bf.u, j, act=1, norm=g)
        mm(bf.u, "wdown", bf.x, j, res=bf.x)
    rmsnorm(bf.x[sl], [m.gf[s] for s in sel], bf.out[sl])


def project_memory(m: Model, bf: Buffers, h_prev, pos: int, version: int = 2):
    """Stack 2's cross caches take memory row pos - 1 (h_prev (B, C) float32, stack
    1's output of the previous step) at ring slot 1 + (pos - 1) % W."""
    gd = m.G * m.D
    gemv([h_prev], [m.wckv], [bf.ckv], version=version, scratch=bf.scratch)
    slot = 1 + (pos - 1) % (m.window or pos)
    scatter(bf.ckv, bf.xk, 0, 2 * gd, slot)
    scatter(bf.ckv, bf.xv, gd, 2 * gd, slot)


def decode_step(
    m: Model,
    bf: Buffers,
    e,
    h_prev,
    pos: int,
    *,
    schedule: str = "parallel",
    version: int = 2,
):
    """Step pos of both stacks. e (B, C) float32: the embeddings of the tokens;
    h_prev (B, C) float32: stack 1's output at pos - 1 (None at pos 0). Caches in
    bf hold positions < pos (self) and the memory rows < pos - 1 (cross). Writes
    h_pos = bf.out[0] and o_pos = bf.out[1]. version: the GEMV's; the default 2 is
    not the fastest at every B (v3 at B = 1, v5 from B = 4 on): see best_version."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    version = runnable_version(version)
    b = bf.x.shape[1]
    rt.check_array("e", e, (np.float32,), 2)
    rt.check_shape("e", e, (b, m.C), "BC")
    if bf.k.shape[4] != pos + 1 or bf.xk.shape[3] != cross_len(pos, m.window):
        raise ValueError(f"buffers were made for another position than pos = {pos}")
    if (h_prev is None) != (pos == 0):
        raise ValueError("h_prev must be given exactly when pos > 0")
    if h_prev is not None:
        rt.check_array("h_prev", h_prev, (np.float32,), 2)
        rt.check_shape("h_prev", h_prev, (b, m.C), "BC")
    bf.x[...] = e[None]
    if schedule == "parallel":
        if h_prev is not None:
            project_memory(m, bf, h_prev, pos, version)
        run_layers(m, bf, [0, 1], pos, version)
        return bf.out
    order = [0, 1] if schedule == "stack1_first" else [1, 0]
    for s in order:
        if s == 1 and h_prev is not None:
            project_memory(m, bf, h_prev, pos, version)
        run_layers(m, bf, [s], pos, version)
    return bf.out


def plain_step(m: Model, bf: Buffers, e, pos: int, version: int = 2):
    """The ordinary decoder made of stack 1's layers (no cross-attention), with the
    same kernels: the sequential baseline. bf from new_buffers(..., stacks=1)."""
    bf.x[...] = e[None]
    run_layers(m, bf, [0], pos, version)
    return bf.out[0]


# --- the persistent B = 1 step (p1) -------------------------------------------------

P1_SLOT, P1_GRP, P1_THREADS, P1_MAX_STAGES = 16384, 8, 288, 12  # as p1:: in the .cu
P1_HEAD_DIMS = (64, 128)
P1_VERSIONS = (1, 2, 3, 4, 5, 6)  # p1; p2 (cheaper barrier, one attention unit a
# block, trace); p3 (p2 + a prefetcher warp streaming the same chunks into L2
# ahead); p4 (p2 with at most `window` chunks of the ring in flight); p5 (p4 with a
# shorter chain a layer: gamma loaded with x, the residual early, the attention's
# scores and P V spread over all threads, its chunks combined by the o phase); p6
# (p5 whose combine issues its loads together, from a float4-aligned layout)
P4_WINDOW = 2  # p4's default window: chunks in flight an SM (32 KB; the sweep in NOTES)
P2_MAX_SLOTS = 8  # p2: at most 8 slots of K (and of V) an attention unit


@dataclass
class Packed:
    """A plain model's layers for stag_step_p1: each W (K, M) packed as (M / 8, K,
    8) (pack_w), the 6 pointers a layer (g1, wqkv, wo, g2, wup, wdown) in a table,
    and the launch's scratch: q, o (H D) fp16, u (F), part (the attention's chunk
    partials), sync (1 + H counters, zeroed before each launch)."""

    model: Model
    weights: list
    table: object
    q: object
    o: object
    u: object
    part: object
    sync: object
    s: int


def pack_w(w):
    """W (K, M) as (M / 8, K, 8): the 8 columns of unit g over all K contiguous."""
    k, m = w.shape
    return w.reshape(k, m // P1_GRP, P1_GRP).transpose(1, 0, 2).copy()


def p1_chunk_rows(d: int) -> int:
    """Cache rows of one attention unit of p1: one 16-KB slot of K (and one of V)."""
    return P1_SLOT // (2 * d)


def p2_slots(h: int, s: int, d: int, blocks: int) -> int:
    """Slots of K (and of V) in one attention unit of p2: the fewest with at most
    one unit a block (H ceil(S / P) <= blocks, P = slots x p1_chunk_rows), up to
    P2_MAX_SLOTS. p1 takes 1."""
    units = h * -(-s // p1_chunk_rows(d))
    return max(1, min(P2_MAX_SLOTS, -(-units // blocks)))


def p1_smem(m: Model, stages: int, ak: int = 1, version: int = 1, s: int = 1) -> int:
    """Dynamic shared memory of stag_step_p1-p6 (the .cu's layout): the ring, the
    activation row, the attention unit's buffers (ak slots of scores; p5, p6:
    twice the P V sums), two reduction buffers, p5's and p6's combine buffer
    (2 H nc + H floats, nc the attention chunks a head at cache length s), the
    mbarriers (p3: and the producer's count)."""
    na = -(-max(m.C, m.H * m.D, m.F) // 4) * 4
    att = 3 * m.D + ak * p1_chunk_rows(m.D) + (512 if version >= 5 else 256) + 4
    nc = -(-s // (ak * p1_chunk_rows(m.D)))
    cmb = (2 * m.H * nc + m.H + 1) // 2 * 2 if version >= 5 else 0
    bars = 16 * stages + (16 if version == 3 else 0)
    return stages * P1_SLOT + 4 * (na + att + 2 * 8 * P1_GRP + cmb) + bars


def p1_stages(m: Model, optin: int, ak: int = 1, version: int = 1, s: int = 1) -> int:
    """Ring slots: as many as fit the card's shared memory, up to P1_MAX_STAGES."""
    st = P1_MAX_STAGES
    while st > 2 and p1_smem(m, st, ak, version, s) > optin:
        st -= 1
    return st


@functools.cache
def _smem_limits(dev: int) -> tuple[int, int]:
    """(shared memory a block may opt in to, shared memory an SM has), bytes."""
    import cupy as cp

    props = cp.cuda.runtime.getDeviceProperties(dev)
    return int(props["sharedMemPerBlockOptin"]), int(
        props["sharedMemPerMultiprocessor"]
    )


def pack_plain(m: Model, s: int) -> Packed:
    """Stack 1's layers of m packed for persistent_step at cache length s (the
    scratch depends on S: ceil(S / P) attention chunks a head). Validates the
    model family p1 covers: fp16 weights, D in P1_HEAD_DIMS, C, F, H D multiples of
    8, G dividing H."""
    import cupy as cp

    if np.dtype(m.dtype) != np.float16:
        raise TypeError(f"persistent_step needs float16 weights, got {m.dtype}")
    if m.D not in P1_HEAD_DIMS:
        raise ValueError(f"persistent_step needs D in {P1_HEAD_DIMS}, got {m.D}")
    for name, v in (("C", m.C), ("F", m.F), ("H*D", m.H * m.D)):
        if v % P1_GRP:
            raise ValueError(f"persistent_step needs {name} % 8 == 0, got {v}")
    if m.H % m.G:
        raise ValueError(f"persistent_step needs G to divide H, got H={m.H}, G={m.G}")
    rt.check_positive(S=s)
    weights, ptrs = [], []
    for ly in m.stacks[0]:
        packed = [ly.g1, pack_w(ly.wqkv), pack_w(ly.wo), ly.g2]
        packed += [pack_w(ly.wup), pack_w(ly.wdown)]
        weights.append(packed)
        ptrs += [a.data.ptr for a in packed]
    nc = -(-s // p1_chunk_rows(m.D))
    return Packed(
        model=m,
        weights=weights,
        table=cp.asarray(np.array(ptrs, np.uint64)),
        q=cp.zeros(m.H * m.D, cp.float16),
        o=cp.zeros(m.H * m.D, cp.float16),
        u=cp.zeros(m.F, cp.float32),
        part=cp.zeros(m.H * nc * (m.D + 2), cp.float32),
        sync=cp.zeros(1 + m.H, cp.uint32),
        s=s,
    )


def persistent_step(
    pk: Packed,
    bf: Buffers,
    e,
    pos: int,
    version: int = 2,
    trace=None,
    slots: int | None = None,
    stages: int | None = None,
    window: int | None = None,
):
    """The plain step (plain_step's math) at B = 1 as one persistent launch
    (stag_step_p1 to _p6; sm_90): one block an SM streams every layer's weights
    and cache rows through a ring of bulk copies while its consumer warps meet the
    others at a grid barrier after each phase. e (1, C) float32; bf from
    new_buffers(m, 1, pos, stacks=1); pk from pack_plain(m, pos + 1). Writes and
    returns bf.out[0].
    version 1 (p1), 2 (p2: one fence a grid barrier, one attention unit a block),
    3 (p3: p2 with a prefetcher warp walking the chunks into L2 ahead of the ring),
    4 (p4: p2 whose producer keeps at most `window` chunks in flight), 5 (p5:
    p4 with a shorter chain of dependent steps a layer) or 6 (p6: p5 whose o phase
    loads the attention's partials all at once);
    trace (p2-p6): a (SMs, L, 12) uint64 array for the blocks' globaltimer
    stamps (phase ends, barrier exits, the producer's last copy of each layer);
    slots (p2-p6): K slots an attention unit instead of p2_slots' (tests);
    stages: ring slots instead of the most that fit (2 up to that; experiments);
    window (p4-p6): chunks in flight, 1 <= window < stages (default P4_WINDOW)."""
    import cupy as cp

    m = pk.model
    rt.check_array("e", e, (np.float32,), 2)
    rt.check_shape("e", e, (1, m.C), "1C")
    if bf.x.shape[:2] != (1, 1):
        raise ValueError(f"persistent_step needs B = 1 and one stack, got {bf.x.shape}")
    if bf.k.shape[4] != pos + 1 or pk.s != pos + 1:
        raise ValueError(f"buffers were made for another position than pos = {pos}")
    if version not in P1_VERSIONS:
        raise ValueError(f"version must be one of {P1_VERSIONS}, got {version!r}")
    nb = rt.sm_count()
    if trace is not None:
        if version < 2:
            raise ValueError("trace needs version 2 or 3")
        rt.check_array("trace", trace, (np.uint64,), 3)
        rt.check_shape("trace", trace, (nb, len(pk.weights), 12), "SL12")
    if slots is not None and (version < 2 or not 1 <= slots <= P2_MAX_SLOTS):
        raise ValueError(f"slots needs version >= 2, 1..{P2_MAX_SLOTS}, got {slots}")
    if window is not None and version < 4:
        raise ValueError(f"window is for p4-p6, got version {version}")
    if rt.compute_capability() < 90:
        raise RuntimeError("persistent_step needs sm_90 (bulk copies, mbarriers)")
    optin, per_sm = _smem_limits(cp.cuda.Device().id)
    ak = 1 if version == 1 else slots or p2_slots(m.H, pos + 1, m.D, nb)
    st_max = p1_stages(m, optin, ak, version, pos + 1)
    if stages is not None and not 2 <= stages <= st_max:
        raise ValueError(f"stages must be in 2..{st_max} (what fits), got {stages}")
    st = st_max if stages is None else stages
    win = min(P4_WINDOW, st - 1) if window is None else window
    if version >= 4 and not 1 <= win < st:
        raise ValueError(f"window must be in 1..{st - 1} (stages - 1), got {win}")
    # shared memory past the layout's keeps a small ring at one block an SM too
    smem = max(p1_smem(m, st, ak, version, pos + 1), min(optin, per_sm // 2 + 1))
    if smem > optin or 2 * smem <= per_sm:
        raise ValueError(f"p{version} needs one block an SM: {smem} B of {optin} B")
    fn = rt.kernel(SLUG, f"stag_step_p{version}_d{m.D}")
    fn.max_dynamic_shared_size_bytes = smem
    i32 = np.int32
    bf.x[0, 0] = e[0]
    pk.sync.fill(0)
    args = (pk.table, bf.k, bf.v, m.gf[0], bf.x, bf.out, pk.q, pk.o, pk.u, pk.part,
            pk.sync, i32(len(pk.weights)), i32(m.C), i32(m.F), i32(m.H), i32(m.G),
            i32(pos + 1), i32(st))  # fmt: skip
    if version >= 2:
        args += (i32(ak), np.uint64(0) if trace is None else trace)
    if version >= 4:
        args += (i32(win),)
    threads = P1_THREADS + (32 if version == 3 else 0)  # p3: the prefetcher warp
    fn((nb,), (threads,), args, shared_mem=smem)
    return bf.out[0]


# --- napkin maths ---------------------------------------------------------------


def weight_bytes(c: int, f: int, hd: int, gd: int, item: int) -> dict[str, int]:
    """Bytes of one layer's weights: self-attention + MLP ("layer"), cross ("cross"),
    and one memory row's cross K/V projection ("ckv")."""
    layer = (c * (hd + 2 * gd) + hd * c + 2 * c * f + 2 * c) * item
    cross = (c * hd + hd * c + c) * item
    return {"layer": layer, "cross": cross, "ckv": 2 * c * gd * item}


def step_bytes(
    kind: str,
    b: int,
    s: int,
    c: int,
    f: int,
    h: int,
    g: int,
    d: int,
    l_stack: int,
    item: int,
    sx: int | None = None,
) -> int:
    """Fewest bytes of one decode step at cache length s (each weight and cache row
    read once; activations are a few B C floats, counted too):
      plain:     2L layers, self caches of 2L layers
      separate:  2 stacks x L layers + L cross sublayers and projections, self
                 caches of 2L layers and cross caches (sx slots) of L layers
      shared:    L layers (read once for both stacks) + the cross weights
      shared_seq: as shared, but the layers read twice (one pass per stack)."""
    wb = weight_bytes(c, f, h * d, g * d, item)
    sx = s if sx is None else sx
    kv_self = 2 * b * g * s * d * item * 2 * l_stack  # K and V, 2L layers
    kv_cross = 2 * b * g * sx * d * item * l_stack
    act = 16 * b * c * 4 * 2 * l_stack  # residual/normed rows, both ways (small)
    cross = l_stack * (wb["cross"] + wb["ckv"]) + kv_cross
    if kind == "plain":
        return 2 * l_stack * wb["layer"] + kv_self + act
    if kind == "separate":
        return 2 * l_stack * wb["layer"] + cross + kv_self + act
    if kind == "shared":
        return l_stack * wb["layer"] + cross + kv_self + act
    if kind == "shared_seq":
        return 2 * l_stack * wb["layer"] + cross + kv_self + act
    raise ValueError(f"kind must be plain, separate, shared or shared_seq: {kind!r}")


def step_flops(
    kind: str,
    b: int,
    s: int,
    c: int,
    f: int,
    h: int,
    g: int,
    d: int,
    l_stack: int,
    sx: int | None = None,
) -> int:
    """2 per multiply-add of every GEMV row and attention score/value."""
    sx = s if sx is None else sx
    hd, gd = h * d, g * d
    layer = 2 * b * (c * (hd + 2 * gd) + hd * c + 2 * c * f) + 4 * b * h * s * d
    cross = 2 * b * (2 * c * hd + 2 * c * gd) + 4 * b * h * sx * d
    if kind == "plain":
        return 2 * l_stack * layer
    return 2 * l_stack * layer + l_stack * cross
