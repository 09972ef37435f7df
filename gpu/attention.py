"""Launchers for gpu/attention.cu: standard decode attention over a K and a V cache.

The CuPy twin of ``reference.common.decode_attention``. Each launcher checks every
precondition of the kernel before launching (dtype, contiguity, shapes, head-dim
limits, alignment), casts scalars to int32, picks the grid and launches. No maths.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from gpu import runtime as rt

SLUG = "attention"
VERSIONS = (1, 2, 3, 4, 5, 6, 7, 8)
FUSED = (5, 7, 8)  # versions that combine in the same launch (need zeroed counters)
# Blocks of a version that fit one SM: 4 for v3-v7 (registers), 3 for v8 (68 KB of
# shared memory each at D = 128, fp16). split_plan sizes one wave from it.
PER_SM = {8: 3}
DTYPES = (np.float32, np.float16)
_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16"}
# v2/v3 keep D/32 values per lane in registers sized for D <= 256 (MAXD in the .cu).
MAX_D_V23 = 256
# v4 is instantiated for these head dims (see ENTRY_V4 in the .cu).
V4_HEAD_DIMS = {
    np.dtype(np.float32): (64, 80, 96, 128),
    np.dtype(np.float16): (64, 80, 96, 128, 256),
}
THREADS = 128  # 4 warps: NW and NW4 in the .cu
MAX_GRID_YZ = 65535  # CUDA's limit on gridDim.y and gridDim.z
ST8 = 4  # v8's shared-memory stages (ST8 in the .cu)
MIN_CHUNK = 128  # fewest keys worth a block (v4-v7 cover 32 rows per tile); sweep: S=1K
# The ladder, best first. On a card that cannot run the version asked for (v8 needs
# cp.async, sm_80), the launchers run the first of these it can, with a notice
# (gpu.runtime.pick_version; the minimum of each version: gpu/capability.json).
# v4-v8 take the same head dims, so v8 -> v7 needs nothing else of the caller.
FALLBACK = (8, 7, 6, 5, 4, 3, 2, 1)


def fused_version(d: int, dtype) -> int:
    """The version a model's decode step uses at head dim D: v7 (fused combine,
    instantiated per D) where it is built for D and the dtype, else v3."""
    return 7 if d in V4_HEAD_DIMS[np.dtype(dtype)] else 3


def runnable_version(version: int) -> int:
    """The version this card runs when ``version`` is asked for: itself, or the
    best of FALLBACK it supports (one CapabilityFallback warning). ``version``
    itself without a device."""
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
    return rt.pick_version(SLUG, version, FALLBACK)


def _check(q, k_cache, v_cache, version: int) -> tuple[int, int, int, int, int]:
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
    rt.check_array("q", q, DTYPES, 3)
    rt.check_array("k_cache", k_cache, (q.dtype,), 4)
    rt.check_array("v_cache", v_cache, (q.dtype,), 4)
    b, h, d = q.shape
    g, s = k_cache.shape[1], k_cache.shape[2]
    rt.check_positive(B=b, H=h, D=d, G=g, S=s)
    rt.check_shape("k_cache", k_cache, (b, g, s, d), "BGSD")
    rt.check_shape("v_cache", v_cache, (b, g, s, d), "BGSD")
    if h % g:
        raise ValueError(f"H = {h} query heads must be a multiple of G = {g} KV heads")
    rt.check_int32(S=s, D=d, H=h, B=b)
    if b > MAX_GRID_YZ:  # B is gridDim.y (v1, v2) or gridDim.z (v3-v8)
        raise ValueError(
            f"B = {b} exceeds the grid limit {MAX_GRID_YZ}; split the batch"
        )
    if version in (2, 3) and d > MAX_D_V23:
        raise ValueError(f"v{version} needs D <= {MAX_D_V23}, got D = {d}")
    if version >= 4:
        dims = V4_HEAD_DIMS[q.dtype]
        if d not in dims:
            raise ValueError(
                f"v{version} ({q.dtype.name}) needs D in {dims}, got D = {d}"
            )
        for name, a in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
            if a.data.ptr % 16:
                raise ValueError(
                    f"v{version} needs {name} 16-byte aligned (16-byte loads)"
                )
    return b, h, g, s, d


def split_plan(
    b: int, h: int, s: int, n_split: int | None = None, version: int = 7
) -> tuple[int, int]:
    """(n_split, chunk) for v3-v9: one wave of PER_SM blocks per SM (at least one
    chunk), none shorter than MIN_CHUNK keys.

    Chosen from the n_split sweep on the H100 (gpu/NOTES_attention.md,
    results/attention_split): v7 is flat from 2 to 8 blocks per SM and loses beyond.
    (Two blocks per SM, rounded up, won at B = 1, S = 4K and lost at S >= 16K:
    results/attention_v7_plan_trial.)
    The last chunk may be shorter; none is empty (n_split = ceil(S / chunk)).
    """
    if n_split is None:
        sms = rt.sm_count() if rt.available() else 132
        per_sm = PER_SM.get(version, 4)
        n_split = max(1, min(per_sm * sms // (b * h), math.ceil(s / MIN_CHUNK)))
    if not 1 <= int(n_split) <= min(s, MAX_GRID_YZ):
        raise ValueError(
            f"n_split must be in [1, min(S = {s}, {MAX_GRID_YZ})], got {n_split}"
        )
    chunk = math.ceil(s / int(n_split))
    return math.ceil(s / chunk), chunk


def workspace_elems(version: int, b: int, h: int, s: int, d: int, n_split=None) -> int:
    """float32 elements of scratch a version needs (v1: scores; v3-v5: partials;
    v5 also B*H uint32 counters at the end, which must be zero before first use).
    On a card that cannot run ``version``: what its fallback needs."""
    version = runnable_version(version)
    if version == 1:
        return b * h * s
    if version == 2:
        return 0
    n, _ = split_plan(b, h, s, n_split, version)
    return b * h * n * (d + 2) + (b * h if version in FUSED else 0)


def tile_smem_bytes(dtype, d: int) -> int:
    """v8's dynamic shared memory: ST8 stages x (K, V) x TR rows x D (see the .cu)."""
    item = np.dtype(dtype).itemsize
    nv = d // (16 // item)  # 16-byte vectors per row
    lg = next(x for x in (4, 8, 16, 32) if nv <= x)  # lanes per row
    tr = 4 * (32 // lg) * 4  # NW4 warps x groups per warp x U rows
    return ST8 * 2 * tr * d * item


@functools.cache
def _v8_kernel(suf: str, d: int, smem: int):
    fn = rt.kernel(SLUG, f"attention_decode_v8_{suf}_d{d}")
    fn.max_dynamic_shared_size_bytes = smem  # beyond 48 KB needs the opt-in
    return fn


def new_workspace(version: int, b: int, h: int, s: int, d: int, n_split=None):
    """A zeroed float32 workspace for ``decode_attention(..., workspace=...)``."""
    import cupy as cp

    return cp.zeros(max(workspace_elems(version, b, h, s, d, n_split), 1), cp.float32)


def decode_attention(
    q, k_cache, v_cache, *, version: int = 4, n_split=None, out=None, workspace=None
):
    """out[b, h] = softmax(q[b, h] . K[b, g]^T / sqrt(D)) . V[b, g],  g = h // (H // G).

    Args:
        q: (B, H, D) float32 or float16, C-contiguous CuPy array.
        k_cache, v_cache: (B, G, S, D), same dtype, H % G == 0.
        version: 1..8, the kernel ladder of gpu/attention.cu; on a card that
            cannot run it, the best of FALLBACK it can (runnable_version).
        n_split: v3-v8 only: number of chunks S is split into (default: split_plan).
        out: optional (B, H, D) array of q's dtype to write into.
        workspace: optional float32 scratch of >= workspace_elems(...) elements.
            Pass ``out`` and ``workspace`` to launch without allocating (CUDA graphs);
            for v5, v7, v8 it must come zeroed (new_workspace) and is left zeroed.
    Returns:
        out (B, H, D), q's dtype. Accumulation is float32 in every version.
    """
    import cupy as cp

    b, h, g, s, d = _check(q, k_cache, v_cache, version)
    version = runnable_version(version)
    if out is None:
        out = cp.empty_like(q)
    else:
        rt.check_array("out", out, (q.dtype,), 3)
        rt.check_shape("out", out, (b, h, d), "BHD")
    need = workspace_elems(version, b, h, s, d, n_split)
    if workspace is None:
        workspace = new_workspace(version, b, h, s, d, n_split)
    else:
        rt.check_array("workspace", workspace, (np.float32,), 1)
        if workspace.size < need:
            raise ValueError(
                f"workspace needs >= {need} float32 elements, got {workspace.size}"
            )
    suf = _SUFFIX[q.dtype]
    i32 = np.int32
    if version == 1:
        scores = workspace[: b * h * s]  # the naive version's (B, H, S) scratch
        fn = rt.kernel(SLUG, f"attention_decode_v1_{suf}")
        fn(
            (h, b),
            (THREADS,),
            (q, k_cache, v_cache, out, scores, i32(h), i32(g), i32(s), i32(d)),
        )
        return out
    if version == 2:
        fn = rt.kernel(SLUG, f"attention_decode_v2_{suf}")
        fn(
            (h, b),
            (THREADS,),
            (q, k_cache, v_cache, out, i32(h), i32(g), i32(s), i32(d)),
        )
        return out
    n, chunk = split_plan(b, h, s, n_split, version)
    part_acc = workspace[: b * h * n * d]  # (B, H, n, D)
    part_ml = workspace[b * h * n * d : b * h * n * (d + 2)]  # (B, H, n, 2): m, l
    if version in FUSED:
        counters = workspace[b * h * n * (d + 2) : b * h * n * (d + 2) + b * h]
        args = (q, k_cache, v_cache, out, part_acc, part_ml, counters.view(cp.uint32))
        args += (i32(h), i32(g), i32(s), i32(chunk))
        if version == 8:
            smem = tile_smem_bytes(q.dtype, d)
            _v8_kernel(suf, d, smem)((h, n, b), (THREADS,), args, shared_mem=smem)
        else:
            fn = rt.kernel(SLUG, f"attention_decode_v{version}_{suf}_d{d}")
            fn((h, n, b), (THREADS,), args)
        return out
    # v3 takes D at run time; v4 and v6 are instantiated per head dim
    name = (
        f"attention_decode_v3_{suf}"
        if version == 3
        else f"attention_decode_v{version}_{suf}_d{d}"
    )
    dims = (i32(h), i32(g), i32(s)) + ((i32(d),) if version == 3 else ())
    fn = rt.kernel(SLUG, name)
    args = (q, k_cache, v_cache, part_acc, part_ml) + dims + (i32(chunk),)
    fn((h, n, b), (THREADS,), args)
    combine = rt.kernel(SLUG, f"attention_combine_v3_{suf}")
    combine((b * h,), (THREADS,), (part_acc, part_ml, out, i32(n), i32(d)))
    return out


def bytes_moved(b: int, h: int, g: int, s: int, d: int, itemsize: int) -> int:
    """Fewest bytes decode attention must move: K and V once, q read, out written."""
    return itemsize * (2 * b * g * s * d + 2 * b * h * d)


def flops(b: int, h: int, s: int, d: int) -> int:
    """2*S*D for the scores and 2*S*D for P.V, per query head (exp not counted)."""
    return 4 * b * h * s * d


# --- v9: v7's kernel with other tile shapes (an experiment; fp16, D = 128 only) ----
V9_TILES = ((2, 4), (8, 4), (2, 8), (4, 8), (4, 2), (8, 2))  # (U rows, NW warps)


def decode_attention_v9(
    q, k_cache, v_cache, *, u: int, nw: int, n_split, out, workspace
):
    """v7 with U rows per lane group per tile and NW warps per block (V9_TILES).

    Same contract as decode_attention(version=7) otherwise; ``out`` and a zeroed
    ``workspace`` (new_workspace(7, ...)) are required.
    """
    import cupy as cp

    b, h, g, s, d = _check(q, k_cache, v_cache, 7)
    rt.pick_version(SLUG, 9, (9,))  # RuntimeError on a card that cannot run it
    if (u, nw) not in V9_TILES or q.dtype != np.float16 or d != 128:
        raise ValueError(f"v9 is built for fp16, D = 128, (U, NW) in {V9_TILES}")
    rt.check_array("out", out, (q.dtype,), 3)
    rt.check_shape("out", out, (b, h, d), "BHD")
    n, chunk = split_plan(b, h, s, n_split, 9)
    need = workspace_elems(7, b, h, s, d, n)
    rt.check_array("workspace", workspace, (np.float32,), 1)
    if workspace.size < need:
        raise ValueError(f"workspace needs >= {need} float32 elements")
    part_acc = workspace[: b * h * n * d]
    part_ml = workspace[b * h * n * d : b * h * n * (d + 2)]
    counters = workspace[b * h * n * (d + 2) : need].view(cp.uint32)
    i32 = np.int32
    fn = rt.kernel(SLUG, f"attention_decode_v9_f16_d128_u{u}w{nw}")
    args = (q, k_cache, v_cache, out, part_acc, part_ml, counters)
    fn((h, n, b), (32 * nw,), args + (i32(h), i32(g), i32(s), i32(chunk)))
    return out
