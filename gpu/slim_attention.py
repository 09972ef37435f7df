"""Launchers for gpu/slim_attention.cu: decode over a K-only cache and over an X cache.

The CuPy twins of ``reference.slim_attention.slim_decode`` (order "accumulate_k")
and ``reference.slim_attention.xcache_decode``. Each launcher checks every
precondition before the first launch (dtypes, contiguity, shapes, MHA weights, the
cache length against the allocation, alignment, the tile shapes a version supports),
casts scalars to int32, picks the grids and launches. No maths.

One decode step is three or four launches (see the .cu header): [xq,] attend, gemv,
finish. Pass ``out`` and ``workspace`` to launch without allocating (CUDA graphs).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from gpu import runtime as rt

SLUG = "slim_attention"
VERSIONS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)  # K-only cache
XVERSIONS = (1, 3, 4, 5)  # X cache with absorbed weights
DTYPES = (np.float32, np.float16)
FAST_DTYPES = (np.float16,)  # v2, v3, xv3: fp16 tensor cores
_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16"}
CL = 8  # blocks per cluster (CL in the .cu)
NK = 32  # keys per tile (NK in the .cu)
PST = 40  # row stride of the P tile (PST in the .cu)
STAGES = {2: 1, 3: 4}  # tile buffers of v2 and v3/xv3 (ST in the .cu)
STAGES_V4 = {False: 3, True: 2}  # v4 and xv4
NK4 = 64  # v4's keys per tile (NK4 in the .cu)
PST4 = 72  # v4's P-tile row stride
NK7, NS7, NX7, NSC7, PST7 = 32, 6, 4, 4, 40  # v7: keys per tile, tile stages,
# score-exchange slots, scorer warps, P-tile row stride (as in the .cu)
# Clusters of 8 one-block-per-SM blocks resident at once: ncu's Launch Statistics
# on the H100 (132 SMs) report 15 for v3 (not 132 // 8 = 16: GPCs differ in size).
ACTIVE_CLUSTERS = {132: 15}
FAST_SHAPES = ((1, 2), (1, 4), (2, 4), (2, 6), (2, 8))  # (MT, NT) instantiated
THREADS_FAST = 256
GT = 128  # gemv threads (GT in the .cu)
BG = 8  # batch rows per gemv pass (BG in the .cu)
MAX_SPLIT = 512  # gemv keeps BG x n_split weights in shared memory
MAX_GRID_YZ = 65535
# Best first. v2-v12 and xv3-xv5 run as thread-block clusters (sm_90): on an older card
# the launchers run the first of these it can (v1 or xv1, which take float16 and
# float32 and any H, D), with a notice (gpu.runtime.pick_version, gpu/capability.json).
FALLBACK = (12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1)
# The version a launcher runs when none is named, where the fast path takes the shape:
# the fastest measured on the H200, the book's card (gpu/NOTES_slim_attention.md:
# v12 at every B = 8 and B = 64 case of results/h200/slim_attention.json, commit
# 2388f5738b18; on the H100 v11 was faster at B = 8, S = 16K).
DEFAULT_FAST, XDEFAULT_FAST = 12, 5
GT8 = 256  # gemv8 threads (GT8 in the .cu)
WARP_SPECIALISED = (7, 8, 9, 10, 11, 12)  # producer, scorers, consumers (v7_smem)
PERSISTENT = (8, 9, 10, 11, 12)  # versions on v8's persistent schedule, with gemv8
TENSOR_MAP = (10, 11, 12)  # the tile ring filled by tensor-map copies (v10_tensor_map)
SOFTMAX_WARP = (11, 12)  # one more warp: the softmax, with a ring of NP11 P slots
NP11 = 4  # v11's P slots (NP11 in the .cu)
PF9 = 10  # v9's L2 prefetch distance, tiles (PF9 in the .cu)
XFALLBACK = (5, 4, 3, 1)
FAMILY, XFAMILY = SLUG, SLUG + "_x"  # the K-only and the X-cache ladders in the table


def runnable_version(version: int, xcache: bool = False) -> int:
    """The version this card runs when ``version`` is asked for (itself, or the best
    of FALLBACK / XFALLBACK it supports, with one CapabilityFallback warning)."""
    versions = XVERSIONS if xcache else VERSIONS
    if version not in versions:
        raise ValueError(f"version must be one of {versions}, got {version!r}")
    if xcache:
        return rt.pick_version(XFAMILY, version, XFALLBACK)
    return rt.pick_version(FAMILY, version, FALLBACK)


def default_version(q, xcache: bool = False) -> int:
    """The version a launcher runs when the caller names none: the fastest measured
    (DEFAULT_FAST for the K-only cache, XDEFAULT_FAST for the X cache) where the
    fast path takes q's dtype and (H, D), else v1 (xv1), which takes float32 and
    float16 and any H and D. A q that is not a (B, H, D) array gets the fast
    version, and the launcher's checks name what is wrong with it."""
    fast = XDEFAULT_FAST if xcache else DEFAULT_FAST
    shape = getattr(q, "shape", ())
    if len(shape) != 3:
        return fast
    if np.dtype(getattr(q, "dtype", np.float16)) not in FAST_DTYPES:
        return 1
    try:
        fast_shape(int(shape[1]), int(shape[2]))
    except ValueError:
        return 1
    return fast


def fast_shape(h: int, d: int) -> tuple[int, int]:
    """(MT, NT) of the cluster kernel for H heads of dim D: MT m16 tiles cover the
    H query rows, each of the CL blocks owns C / CL = 64 NT columns (whole heads).
    Raises ValueError for shapes v2/v3/xv3 do not support."""
    c = h * d
    if h % CL or h > 32 or d % 16 or c % (64 * CL):
        raise ValueError(
            f"v2/v3 need H % {CL} == 0, H <= 32, D % 16 == 0 and H*D % 512 == 0; "
            f"got H = {h}, D = {d}"
        )
    shape = (math.ceil(h / 16), c // CL // 64)
    if shape not in FAST_SHAPES:
        raise ValueError(
            f"v2/v3 are built for H*D in {{1024, 2048, 3072, 4096}} (MT, NT) in "
            f"{FAST_SHAPES}; got H = {h}, D = {d} -> {shape}"
        )
    return shape


def fast_smem_bytes(mt: int, nt: int, stages: int) -> int:
    """Dynamic shared memory of the cluster kernel (fast_smem in the .cu): the tile
    ring, the query rows, the P tile, two partial-score buffers and alpha."""
    m, cs = 16 * mt, 64 * nt
    return stages * NK * cs * 2 + m * cs * 2 + m * PST * 2 + 2 * m * NK * 4 + m * 4


def v4_smem_bytes(mt: int, cs: int, xc: bool, version: int = 4) -> int:
    """Dynamic shared memory of v4/v5/xv4/xv5 (v4_smem in the .cu), v6 (v6_smem:
    three tile stages, P, scores and alpha double-buffered), v7-v9
    (v7_smem_bytes), v10 (v10_smem: unpadded rows, 1 KB to align the ring) and v11,
    v12 (v11_smem: v10's with NP11 P slots and their mbarriers)."""
    m, st = 16 * mt, STAGES_V4[xc]
    if version in TENSOR_MAP:
        v10 = v7_smem_bytes(mt, cs) - NS7 * NK7 * 8 * 2 + 1024
        if version in SOFTMAX_WARP:
            return v10 + (NP11 - 2) * m * (PST7 * 2 + 4) + 2 * NP11 * 8
        return v10
    if version in WARP_SPECIALISED:
        return v7_smem_bytes(mt, cs)
    if version == 6:
        return 3 * NK4 * cs * 2 + 2 * m * PST4 * 2 + 2 * m * NK4 * 4 + 2 * m * 4
    return (
        st * NK4 * cs * 2
        + (m * cs * 2 if xc else 0)
        + m * PST4 * 2
        + 2 * m * NK4 * 4
        + m * 4
    )


def v7_smem_bytes(mt: int, cs: int) -> int:
    """Dynamic shared memory of v7-v9 (v7_smem in the .cu): the tile ring of
    padded rows, the score-exchange slots, P and alpha double-buffered, the own
    heads' scores and q, and the mbarriers."""
    m = 16 * mt
    return (
        NS7 * NK7 * (cs + 8) * 2
        + NX7 * m * NK7 * 4
        + 2 * m * PST7 * 2
        + 2 * m * 4
        + 4 * NK7 * 4
        + 4 * 128 * 2
        + (2 * NS7 + 2 * NX7) * 8
    )


def threads(version: int, cs: int) -> int:
    """Threads per block of v4-v11: a warp per 32 columns (v7-v11 add their
    producer and scorer warps, v11 its softmax warp)."""
    extra = 1 if version in SOFTMAX_WARP else 0
    return cs + (32 * (1 + NSC7 + extra) if version in WARP_SPECIALISED else 0)


def split_plan(
    b: int, s: int, n_split: int | None = None, h: int = 32, c: int = 4096, nk: int = NK
) -> tuple[int, int]:
    """(n_split, chunk) for v2-v7: S in n_split chunks, one cluster each per sequence.

    The default minimises a byte model of the step: A clusters run at once (one
    block per SM), so the cache streams in ceil(B n / A) waves, each as long as one
    chunk; splitting writes and reads B n H C float32 partials. Time ~
    ceil(B n / A) ceil(S / n / nk) nk C 2 A + 8 B n H C, over n <= min(S / nk,
    MAX_SPLIT). The last chunk may be shorter; none is empty."""
    if n_split is None:
        sms = rt.sm_count() if rt.available() else 132
        a = ACTIVE_CLUSTERS.get(sms, sms // CL - 1)

        def cost(n):
            tiles = math.ceil(math.ceil(s / n) / nk)
            return math.ceil(b * n / a) * tiles * nk * c * 2 * a + 8 * b * n * h * c

        top = max(1, min(MAX_SPLIT, math.ceil(s / nk)))
        n_split = min(range(1, top + 1), key=cost)
    if not 1 <= int(n_split) <= min(s, MAX_SPLIT):
        raise ValueError(
            f"n_split must be in [1, min(S = {s}, {MAX_SPLIT})], got {n_split}"
        )
    chunk = math.ceil(s / int(n_split))
    return math.ceil(s / chunk), chunk


def plan(version: int, b: int, h: int, s: int, d: int, n_split=None):
    """(n_split, chunk) of a cluster version (v2-v7) at these sizes; for v8-v12 (P, T):
    P clusters over the B T tiles of T = ceil(S / NK7) keys (persistent_plan)."""
    if version in PERSISTENT:
        return persistent_plan(b, s, n_split)
    nk = NK7 if version == 7 else NK4 if version >= 4 else NK
    return split_plan(b, s, n_split, h, h * d, nk)


def persistent_plan(b: int, s: int, n_split: int | None = None) -> tuple[int, int]:
    """(P, T) of v8-v12: T = ceil(S / NK7) tiles per sequence, and P clusters that take
    the B T tiles of all sequences, laid end to end, in P equal ranges (FlashMLA's
    tile scheduler). P defaults to the clusters resident at once (ACTIVE_CLUSTERS);
    ``n_split`` names it instead (1 <= n_split <= min(S, MAX_SPLIT), as for v2-v7).
    Never more clusters than tiles: P <= B T. Sequence b's partials go to slots
    c + b, so a step has at most P + B - 1 of them."""
    t = math.ceil(s / NK7)
    if n_split is None:
        sms = rt.sm_count() if rt.available() else 132
        p = ACTIVE_CLUSTERS.get(sms, sms // CL - 1)
    else:
        if not 1 <= int(n_split) <= min(s, MAX_SPLIT):
            raise ValueError(
                f"n_split must be in [1, min(S = {s}, {MAX_SPLIT})], got {n_split}"
            )
        p = int(n_split)
    return max(1, min(p, b * t)), t


def v10_map_geometry(b: int, s: int, sa: int, c: int) -> tuple[tuple, tuple, tuple]:
    """(dims, strides, box) of v10's tensor map over a (B, SA, C) float16 cache of
    which the first S rows are read: innermost first, (64 columns, S rows, C / 64
    column chunks, B sequences), strides in bytes of dimensions 1-3 (a row 2 C, a
    chunk 128, a sequence 2 SA C), and the box one block's tile, (64, NK7, CS / 64,
    1) with CS = C / CL: NK7 CS 2 bytes per copy. The row extent is S, not SA, so
    that the rows of a last tile past S arrive as zeros."""
    cs = c // CL
    dims = (64, s, c // 64, b)
    strides = (2 * c, 128, 2 * sa * c)
    box = (64, NK7, cs // 64, 1)
    return dims, strides, box


def v10_tensor_map(cache, s: int):
    """v10's tensor map (a by-value kernel argument) over ``cache`` (B, SA, C),
    length ``s`` (v10_map_geometry)."""
    b, sa, c = cache.shape
    dims, strides, box = v10_map_geometry(b, s, sa, c)
    return rt.tensor_map_tiled(cache.data.ptr, dims, strides, box)


def gemv8_plan(h: int, c: int) -> tuple[int, int]:
    """(KC, cc) of gemv8: W's C rows in KC chunks of cc (a multiple of 16), with
    H x KC <= 264 blocks (two per SM on a 132-SM card: one wave) and cc >= 64."""
    kc = max(1, min(c // 64, 264 // h))
    cc = math.ceil(c / kc / 16) * 16
    return math.ceil(c / cc), cc


def gemv_plan(h: int, c: int) -> tuple[int, int]:
    """(KC, cc): W's C rows in KC chunks of cc, so that H x KC blocks are about two
    per SM and cc <= 512 (shared memory of the gemv)."""
    kc = max(math.ceil(264 / h), math.ceil(c / 512))
    cc = math.ceil(c / kc)
    return math.ceil(c / cc), cc


def _layout(version, b, h, s, d, n_split=None) -> dict[str, tuple[int, int]]:
    """Offsets and sizes (float32 elements) of the scratch arrays of one step."""
    c = h * d
    n = 1 if version == 1 else plan(version, b, h, s, d, n_split)[0]
    rows = n + b - 1 if version in PERSISTENT else b * n  # v8: P + B - 1 slots
    kc, _ = gemv8_plan(h, c) if version in PERSISTENT else gemv_plan(h, c)
    sizes = {
        "acc": rows * h * c,  # u partials (B, n, H, C); v8 (P + B - 1, H, C)
        "ml": rows * h * 2,  # (m, l) per split (B, n, H, 2); v8 (P + B - 1, H, 2)
        "part": b * h * kc * d,  # gemv partial sums (B, H, KC, D)
        "scores": b * h * s if version == 1 else 0,  # v1's (B, H, S)
        # q~ (B, H, C) of the X cache: float32 for xv1, fp16 (half the room) for xv3
        "qt": b * h * c if version == 1 else math.ceil(b * h * c / 2),
    }
    out, o = {}, 0
    for k, v in sizes.items():
        out[k] = (o, v)
        o += v
    return out


def workspace_elems(
    version: int, b: int, h: int, s: int, d: int, n_split=None, xcache=False
) -> int:
    """float32 elements of scratch one step needs: u partials (B, n, H, C), (m, l)
    (B, n, H, 2), gemv partials (B, H, KC, D); v1 also its (B, H, S) scores; the X
    cache also q~ (B, H, C) (float32 for xv1, fp16 for xv3). On a card that cannot
    run ``version``: what its fallback needs (runnable_version)."""
    version = runnable_version(version, xcache)
    lay = _layout(version, b, h, s, d, n_split)
    o, n = lay["qt"] if xcache else lay["scores"]
    return o + n


def new_workspace(version, b, h, s, d, n_split=None, xcache=False):
    import cupy as cp

    n = workspace_elems(version, b, h, s, d, n_split, xcache)
    return cp.zeros(max(n, 1), cp.float32)


def xcache_wkt(w_k, h: int):
    """W_K (C, C), row convention, as the (H, D, C) stack of W_K,h^T that the xq
    kernel reads (one copy, made once per model, like folding W_KV)."""
    import cupy as cp

    rt.check_array("w_k", w_k, DTYPES, 2)
    c = w_k.shape[0]
    if w_k.shape != (c, c) or c % h:
        raise ValueError(f"w_k must be (C, C) with C % H == 0, got {w_k.shape}")
    d = c // h
    return cp.ascontiguousarray(w_k.reshape(c, h, d).transpose(1, 2, 0))


def _check(q, cache, w, b_v, version, versions, length, name):
    if version not in versions:
        raise ValueError(f"version must be one of {versions}, got {version!r}")
    dtypes = DTYPES if version == 1 else FAST_DTYPES
    rt.check_array("q", q, dtypes, 3)
    rt.check_array(name, cache, (q.dtype,), 3)
    b, h, d = q.shape
    c = h * d
    sa = cache.shape[1]
    rt.check_positive(B=b, H=h, D=d, S=sa)
    rt.check_shape(name, cache, (b, sa, c), "BSC")
    if w.shape != (c, c):
        raise ValueError(
            f"slim attention needs MHA weights: W must be (C, C) = ({c}, {c}) with "
            f"C = H*D; got {tuple(w.shape)}"
        )
    rt.check_array("w", w, (q.dtype,), 2)
    if b_v is not None:
        rt.check_array("b_v", b_v, (q.dtype,), 1)
        rt.check_shape("b_v", b_v, (c,), "C")
    s = sa if length is None else int(length)
    if not 1 <= s <= sa:
        raise ValueError(
            f"length = {length} must be in [1, S = {sa}] (the allocated cache rows)"
        )
    rt.check_int32(S=sa * c, C=c, B=b * h * c)
    if b > MAX_GRID_YZ:
        raise ValueError(f"B = {b} exceeds the grid limit {MAX_GRID_YZ}")
    if version != 1:
        fast_shape(h, d)
        w16 = (("w", w),) if version in PERSISTENT else ()  # gemv8: 16-byte loads
        for nm, a in (("q", q), (name, cache)) + w16:
            if a.data.ptr % 16:
                raise ValueError(f"v{version} needs {nm} 16-byte aligned")
    return b, h, d, c, s, sa


@functools.cache
def _fast_kernel(prefix: str, mt: int, tile: str, smem: int):
    fn = rt.kernel(SLUG, f"slim_attention_attend_{prefix}_m{mt}{tile}")
    fn.max_dynamic_shared_size_bytes = smem  # beyond 48 KB needs the opt-in
    return fn


def _out_and_ws(q, out, workspace, need):
    import cupy as cp

    if out is None:
        out = cp.empty_like(q)
    else:
        rt.check_array("out", out, (q.dtype,), 3)
        rt.check_shape("out", out, q.shape, "BHD")
    if workspace is None:
        workspace = cp.zeros(max(need, 1), cp.float32)
    else:
        rt.check_array("workspace", workspace, (np.float32,), 1)
        if workspace.size < need:
            raise ValueError(
                f"workspace needs >= {need} float32 elements, got {workspace.size}"
            )
    return out, workspace


def _views(ws, version, b, h, s, d, n_split):
    lay = _layout(version, b, h, s, d, n_split)
    return {k: ws[o : o + n] for k, (o, n) in lay.items()}


def _attend_gemv_finish(
    prefix, version, qx, cache, w, b_v, out, v, dims, n_split, extra=()
):
    """Shared tail of both launchers: attend (v1 or the cluster kernel), gemv,
    finish. ``v`` holds the workspace views, ``dims`` (B, H, D, S, SA); ``extra``
    the arguments v1's kernel takes after its own (rv1's RoPE tables)."""
    b, h, d, s, sa = dims
    c = h * d
    i32 = np.int32
    suf = _SUFFIX[cache.dtype]
    n, chunk = (1, s) if version == 1 else plan(version, b, h, s, d, n_split)
    acc, ml = v["acc"], v["ml"]
    if version == 1:
        fn = rt.kernel(SLUG, f"slim_attention_attend_{prefix}_{suf}")
        args = (qx, cache, acc, ml, v["scores"], i32(h), i32(s), i32(sa), i32(c))
        fn((h, b), (128,), args + (i32(d), i32(qx.shape[2])) + tuple(extra))
    else:
        mt, nt = fast_shape(h, d)
        # v8: (CL, P) persistent clusters over all B sequences; its last argument
        # is B where v2-v7's is the chunk length
        last = i32(b) if version in PERSISTENT else i32(chunk)
        src = v10_tensor_map(cache, s) if version in TENSOR_MAP else cache
        args = (qx, src, acc, ml, i32(h), i32(s), i32(sa), i32(d), last)
        grid = (CL, n) if version in PERSISTENT else (CL, n, b)
        if version >= 4:
            cs = c // CL
            smem = v4_smem_bytes(mt, cs, prefix.startswith("x"), version)
            fn = _fast_kernel(prefix, mt, f"c{cs}", smem)
            fn(grid, (threads(version, cs),), args, shared_mem=smem)
        else:
            smem = fast_smem_bytes(mt, nt, STAGES.get(version, 4))
            fn = _fast_kernel(prefix, mt, f"n{nt}", smem)
            fn(grid, (THREADS_FAST,), args, shared_mem=smem)
    if version in PERSISTENT:  # slots c + b of P clusters (chunk = T per sequence)
        kc, cc = gemv8_plan(h, c)
        gemv = rt.kernel(SLUG, "slim_attention_gemv8_f16")
        args = (acc, ml, w, v["part"], i32(b), i32(h), i32(c), i32(d), i32(n))
        smem = 4 * BG * (cc + n + 2)
        gemv((h, kc), (GT8,), args + (i32(chunk), i32(cc)), shared_mem=smem)
    else:
        kc, cc = gemv_plan(h, c)
        gemv = rt.kernel(SLUG, f"slim_attention_gemv_{suf}")
        args = (acc, ml, w, v["part"], i32(b), i32(h), i32(c), i32(d), i32(n), i32(cc))
        gemv((h, kc), (GT,), args, shared_mem=4 * BG * (cc + n))
    fin = rt.kernel(SLUG, f"slim_attention_finish_{suf}")
    fin((b * h,), (128,), (v["part"], b_v, out, i32(h), i32(d), i32(kc)))
    return out


def slim_decode(
    q,
    k_cache,
    w_kv,
    b_v=None,
    *,
    version: int | None = None,
    length: int | None = None,
    n_split: int | None = None,
    out=None,
    workspace=None,
    rope=None,
):
    """out[b, h] = (sum_j p[b, h, j] k[b, j]) . W_KV[:, h*D:(h+1)*D] + b_V[h*D:...],
    p[b, h] = softmax_j(q[b, h] . k[b, j, h*D:(h+1)*D] / sqrt(D)), j < length;
    with rope, p[b, h] = softmax_j(q[b, h] . R_j k[b, j, h*D:(h+1)*D] / sqrt(D)).

    Args:
        q: (B, H, D) query of the new token (RoPE, if any, already applied to q and
            to the cached keys: this kernel does not rotate).
        k_cache: (B, S, C) keys, C = H*D, the only cache; rows >= length unused.
        w_kv: (C, C) = W_K^-1 W_V (reference.slim_attention.fold_w_kv), q's dtype.
        b_v: (C,) value bias or None (the key bias is dropped: it cancels).
        version: 1 (float32 or float16, any H and D), 2-9 (float16, tensor cores,
            the shapes of fast_shape). None (the default): default_version, i.e.
            DEFAULT_FAST where the fast path takes the shape and dtype, else v1. A
            version named for a shape it cannot take raises ValueError.
        length: keys to attend (default S).
        n_split: v2-v7: chunks S is split into (default split_plan); v8-v12: the
            clusters that share all B S keys (default persistent_plan).
        out, workspace: optional preallocated (B, H, D) output of q's dtype and
            float32 scratch of >= workspace_elems(version, B, H, length, D) elements.
        rope: None, or RoPE on read (rv1, the capstone's K-only cache under RoPE):
            (cos, sin), float32 (P, R/2) tables of positions 0..P-1, P >= length
            (gpu.precompute.rope_tables). The cache then holds the raw keys x W_K;
            key j is rotated to position j on the first R dims of each head for
            the scores only (rotate-half, reference.common.apply_rope), and q must
            come rotated to its own position. v1 only (None picks it): the fast
            versions do not rotate.
    Returns:
        out (B, H, D), q's dtype; float32 accumulation throughout.
    On a card without clusters (below sm_90) v2-v12 run as v1 (runnable_version).
    """
    if rope is not None and version is None:
        version = 1
    version = runnable_version(default_version(q) if version is None else version)
    b, h, d, c, s, sa = _check(
        q, k_cache, w_kv, b_v, version, VERSIONS, length, "k_cache"
    )
    extra = () if rope is None else _check_rope(rope, version, s, d)
    need = workspace_elems(version, b, h, s, d, n_split)
    out, ws = _out_and_ws(q, out, workspace, need)
    v = _views(ws, version, b, h, s, d, n_split)
    dims = (b, h, d, s, sa)
    prefix = "rv1" if extra else f"v{version}"
    return _attend_gemv_finish(
        prefix, version, q, k_cache, w_kv, b_v, out, v, dims, n_split, extra
    )


def _check_rope(rope, version: int, s: int, d: int) -> tuple:
    """rv1's extra kernel arguments (cos, sin, R) after checking ``rope``."""
    if version != 1:
        raise ValueError(
            f"rope (RoPE on read) runs in v1 only: the fast versions do not rotate; "
            f"got version = {version}"
        )
    if not isinstance(rope, tuple) or len(rope) != 2:
        raise TypeError("rope must be a (cos, sin) tuple of float32 (P, R/2) arrays")
    cos, sin = rope
    rt.check_array("rope cos", cos, (np.float32,), 2)
    rt.check_array("rope sin", sin, (np.float32,), 2)
    if cos.shape != sin.shape:
        raise ValueError(f"rope cos {cos.shape} and sin {sin.shape} must match")
    p, half = cos.shape
    if not 0 < 2 * half <= d:
        raise ValueError(f"rope tables give R = {2 * half}; need 0 < R <= D = {d}")
    if p < s:
        raise ValueError(f"rope tables hold {p} positions; the keys need {s}")
    return (cos, sin, np.int32(2 * half))


def xcache_decode(
    q,
    x_cache,
    w_kt,
    w_v,
    b_v=None,
    *,
    version: int | None = None,
    length: int | None = None,
    n_split: int | None = None,
    out=None,
    workspace=None,
):
    """The X cache with absorbed weights (MLA's absorbed decode, latent = x):
    q~[b, h] = q[b, h] . W_K,h^T (C,),
    p[b, h] = softmax_j(q~[b, h] . x[b, j] / sqrt(D)),
    out[b, h] = (sum_j p[b, h, j] x[b, j]) . W_V[:, h*D:(h+1)*D] + b_V[h*D:(h+1)*D].

    Args:
        q: (B, H, D) query of the new token (no RoPE: the X cache cannot rotate keys).
        x_cache: (B, S, C) the layer inputs (after the norm), C = H*D.
        w_kt: (H, D, C), W_K re-laid out by xcache_wkt(w_k, H); q's dtype.
        w_v: (C, C) value projection; b_v: (C,) or None (the key bias cancels).
        version: 1 (float32 or float16, any H and D), 3-5 (float16, tensor cores;
            q~ is rounded to fp16 for them). None (the default): default_version,
            i.e. xv5 where the fast path takes the shape and dtype, else xv1.
        length, n_split, out, workspace: as slim_decode, with
            workspace_elems(..., xcache=True).
    Returns:
        out (B, H, D), q's dtype.
    On a card without clusters (below sm_90) xv3-xv5 run as xv1 (runnable_version).
    """
    version = runnable_version(
        default_version(q, xcache=True) if version is None else version, xcache=True
    )
    b, h, d, c, s, sa = _check(
        q, x_cache, w_v, b_v, version, XVERSIONS, length, "x_cache"
    )
    rt.check_array("w_kt", w_kt, (q.dtype,), 3)
    rt.check_shape("w_kt", w_kt, (h, d, c), "HDC")
    need = workspace_elems(version, b, h, s, d, n_split, xcache=True)
    out, ws = _out_and_ws(q, out, workspace, need)
    v = _views(ws, version, b, h, s, d, n_split)
    import cupy as cp

    suf = _SUFFIX[q.dtype]
    if version == 1:
        qt = v["qt"]  # float32 (B, H, C)
        xq = rt.kernel(SLUG, f"slim_attention_xq_{suf}_f32")
    else:
        qt = v["qt"].view(cp.float16)[: b * h * c]  # fp16 (B, H, C)
        xq = rt.kernel(SLUG, "slim_attention_xq_f16")
    i32 = np.int32
    xq((math.ceil(c / 128), h), (128,), (q, w_kt, qt, i32(b), i32(h), i32(d), i32(c)))
    qt = qt.reshape(b, h, c)
    dims = (b, h, d, s, sa)
    return _attend_gemv_finish(
        f"xv{version}", version, qt, x_cache, w_v, b_v, out, v, dims, n_split
    )


def bytes_moved(b: int, s: int, c: int, itemsize: int, xcache: bool = False) -> int:
    """Fewest bytes one step must move: the cache once, W_KV (or W_K and W_V for
    the X cache) once, q read and out written (B*C each)."""
    weights = (2 if xcache else 1) * c * c
    return itemsize * (b * s * c + weights + 2 * b * c)


def flops(b: int, h: int, s: int, d: int, xcache: bool = False) -> int:
    """Useful FLOPs of one step: scores 2*S*D per head (2*S*C for the X cache, plus
    2*D*C for q~), P.K 2*S*C per head, the GEMV by W 2*C*D per head."""
    c = h * d
    score = 2 * s * (c if xcache else d) + (2 * d * c if xcache else 0)
    return b * h * (score + 2 * s * c + 2 * c * d)
