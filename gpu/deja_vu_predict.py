"""Launchers for gpu/deja_vu_predict.cu: Deja Vu's lookahead predictor on the GPU.

The CuPy twin of ``reference.deja_vu.predict`` followed by ``top_k_ids``: run one
layer ahead, it turns the residual stream x into the ascending ids of the K neurons
the next layer's sparse MLP (``gpu.deja_vu.sparse_mlp``) computes,

    scores = (x - mean) A B + bias,    ids = the K highest scores of each row,

with A stored transposed (a_t = A^T, (r, C)) so that a warp reads one of its rows
with 16-byte loads. The top-K is exact and deterministic: the lower id wins among
equal scores, -0.0 equals +0.0 and NaN ranks below every number, as
``reference.deja_vu.top_k_ids`` states it. ``union`` gives the ascending union of
a batch's B id rows (the set its sparse MLP needs).

Each launcher checks every precondition before the first launch (dtypes, shapes,
contiguity, 16-byte alignment of the arrays read with 16-byte loads, 0 <= k <= F,
B <= 4, F <= 65536), casts scalars to int32, picks the grids and launches. No maths.
Pass ``out`` and ``workspace`` to launch without allocating (CUDA graphs).
"""

from __future__ import annotations

import numpy as np

from gpu import runtime as rt

SLUG = "deja_vu_predict"
VERSIONS = (1, 2)  # proj and topk of each; scores_v1 and union_v1 serve both
DTYPES = (np.float32, np.float16)
_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16"}
MAX_B = 4  # BMAX in the .cu: the register tiles of proj_v1 and scores_v1
MAX_F = 65536  # the union's bitmap (F / 8 bytes of shared memory) and the tests
PW = 4  # warps (outputs j) per block of proj_v1
QW, RJ = 8, 1  # proj_v2: warps sharing a row of a_t x rows a block
SG, SL = 32, 16  # row groups x lanes a group: the 512 threads of scores_v1
TK = 1024  # threads of topk_v1 and union_v1


def vec(dtype) -> int:
    """Values per 16-byte load: 8 halves or 4 floats."""
    return 16 // np.dtype(dtype).itemsize


def _h_elems(b: int, r: int) -> int:
    """Floats reserved for h (B, r) at the start of the workspace: 4 | the count."""
    return -(-b * r // 4) * 4


def workspace_elems(b: int, r: int, f: int) -> int:
    """float32 scratch of one predict call: h (B, r), padded to 16 bytes, then the
    scores (B, F)."""
    return _h_elems(b, r) + b * f


def split_workspace(workspace, b: int, r: int, f: int):
    """Views (h (B, r), scores (B, F)) of a workspace: the kernels' float32
    intermediates, for tests and for callers that want the scores too."""
    hn = _h_elems(b, r)
    return workspace[: b * r].reshape(b, r), workspace[hn : hn + b * f].reshape(b, f)


def bytes_moved(b: int, c: int, r: int, f: int, k: int, itemsize: int) -> int:
    """Fewest bytes one predict call moves: both factors, mean, bias and x read once,
    the ids written: (r C + r F + C + F + B C) s + 4 B K."""
    return (r * c + r * f + c + f + b * c) * itemsize + 4 * b * k


def flops(b: int, c: int, r: int, f: int) -> int:
    """2 B r C for (x - mean) A, 2 B r F for h B: 2 B r (C + F)."""
    return 2 * b * r * (c + f)


def _check_version(version) -> int:
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
    return version


def _check_k(k, f: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if not 0 <= int(k) <= f:
        raise ValueError(f"k must lie in [0, F={f}], got {k}")
    return int(k)


def _check_out(out, b: int, k: int):
    import cupy as cp

    if out is None:
        return cp.empty((b, k), dtype=cp.int32)
    rt.check_array("out", out, (np.int32,), 2)
    rt.check_shape("out", out, (b, k), "BK")
    return out


def _check(x, mean, a_t, b, bias, k):
    rt.check_array("x", x, DTYPES, 2)
    for name, arr, nd in (("mean", mean, 1), ("a_t", a_t, 2), ("b", b, 2)):
        rt.check_array(name, arr, (x.dtype,), nd)
    rt.check_array("bias", bias, (x.dtype,), 1)
    (n_b, c), r, f = x.shape, a_t.shape[0], b.shape[-1]
    rt.check_positive(B=n_b, C=c, r=r, F=f)
    if n_b > MAX_B:
        raise ValueError(f"x holds B = {n_b} rows; the predictor takes B <= {MAX_B}")
    if f > MAX_F:
        raise ValueError(f"b has F = {f} columns; the predictor takes F <= {MAX_F}")
    rt.check_shape("mean", mean, (c,), "C")
    rt.check_shape("a_t", a_t, (r, c), "rC")
    rt.check_shape("b", b, (r, f), "rF")
    rt.check_shape("bias", bias, (f,), "F")
    rt.check_int32(rC=r * c, rF=r * f, BF=n_b * f)
    rt.check_aligned(16, x=x, mean=mean, a_t=a_t, b=b)
    return n_b, c, r, f, _check_k(k, f)


def _workspace(workspace, need: int):
    import cupy as cp

    if workspace is None:
        return cp.empty(need, cp.float32)
    rt.check_array("workspace", workspace, (np.float32,), 1)
    if workspace.size < need:
        raise ValueError(f"workspace needs {need} float32, got {workspace.size}")
    return workspace


def predict_scores(x, mean, a_t, b, bias, *, workspace=None, version: int = 2):
    """scores = (x - mean) a_t^T b + bias on the GPU (two launches), float32.

    Args:
        x: (B, C) float32 or float16, C-contiguous CuPy array, B <= 4.
        mean: (C,); a_t: (r, C) = A^T; b: (r, F); bias: (F,); x's dtype, F <= 65536.
            x, mean, a_t and b 16-byte aligned.
        workspace: optional float32 array of >= workspace_elems(B, r, F) elements.
        version: 1 or 2 (gpu/deja_vu_predict.cu; each bitwise reproducible, but
            their proj kernels sum h in different orders: last bits differ).
    Returns:
        scores (B, F) float32, a view into the workspace (split_workspace).
    """
    _check_version(version)
    n_b, c, r, f, _ = _check(x, mean, a_t, b, bias, 0)
    ws = _workspace(workspace, workspace_elems(n_b, r, f))
    _launch_scores(x, mean, a_t, b, bias, ws, n_b, c, r, f, version)
    return split_workspace(ws, n_b, r, f)[1]


def _launch_scores(x, mean, a_t, b, bias, ws, n_b, c, r, f, version):
    i32, sfx = np.int32, _SUFFIX[x.dtype]
    h, scores = split_workspace(ws, n_b, r, f)
    grid, block = (
        ((-(-r // PW),), (32 * PW,))
        if version == 1
        else ((-(-r // RJ),), (32 * QW * RJ,))
    )
    rt.kernel(SLUG, f"deja_vu_predict_proj_v{version}_{sfx}")(
        grid, block,
        (x, mean, a_t, h, i32(n_b), i32(c), i32(r), i32(c % vec(x.dtype) == 0)),
    )  # fmt: skip
    cb = SL * vec(x.dtype)  # columns a block
    rt.kernel(SLUG, f"deja_vu_predict_scores_v1_{sfx}")(  # both versions
        (-(-f // cb),), (SG * SL,),
        (h, b, bias, scores, i32(n_b), i32(r), i32(f), i32(f % vec(x.dtype) == 0)),
    )  # fmt: skip
    return scores


def predict_topk(
    x, mean, a_t, b, bias, k, *, out=None, workspace=None, version: int = 2
):
    """The K neurons the predictor ranks highest, per batch row, on the GPU.

        scores = (x - mean) A B + bias   (a_t = A^T),   ids[t] = top-K of scores[t]

    Three launches (proj, scores_v1, topk of the version); every sum in float32
    in a fixed order, so the ids are bitwise reproducible (per version: v1 and
    v2 sum h in different orders).

    Args:
        x: (B, C) float32 or float16, C-contiguous CuPy array, 1 <= B <= 4.
        mean: (C,); a_t: (r, C) = A^T, row j = column j of A; b: (r, F);
            bias: (F,); all x's dtype, C-contiguous. x, mean, a_t and b
            16-byte aligned (C % VEC != 0 or F % VEC != 0 take scalar loads).
        k: int, 0 <= k <= F (<= 65536).
        out: optional (B, K) int32 output (no allocation: CUDA graphs).
        workspace: optional float32 array of >= workspace_elems(B, r, F)
            elements; after the call split_workspace(...) views h and the
            float32 scores the ids were chosen from.
        version: 1 or 2 (gpu/deja_vu_predict.cu); 2 is the faster.
    Returns:
        ids (B, K) int32: each row ascending, distinct, in [0, F); among equal
        scores the lower id is chosen (reference.deja_vu.top_k_ids).
    """
    _check_version(version)
    n_b, c, r, f, k = _check(x, mean, a_t, b, bias, k)
    out = _check_out(out, n_b, k)
    ws = _workspace(workspace, workspace_elems(n_b, r, f))
    scores = _launch_scores(x, mean, a_t, b, bias, ws, n_b, c, r, f, version)
    if k:
        _launch_topk(scores, out, n_b, f, k, version)
    return out


def _launch_topk(scores, out, rows: int, f: int, k: int, version: int) -> None:
    rt.kernel(SLUG, f"deja_vu_predict_topk_v{version}_f32")(
        (rows,), (TK,), (scores, out, np.int32(f), np.int32(k))
    )


def top_k(scores, k, *, out=None, version: int = 2):
    """ids (N, K) int32 of the K highest of each row of scores (N, F) float32 (any
    N; F <= 65536), each row ascending; ties to the lower id, -0.0 == +0.0, NaN
    lowest (reference.deja_vu.top_k_ids). One launch, a block per row; version
    1 or 2 (topk_v1, topk_v2)."""
    _check_version(version)
    rt.check_array("scores", scores, (np.float32,), 2)
    n, f = scores.shape
    rt.check_positive(N=n, F=f)
    if f > MAX_F:
        raise ValueError(f"scores has F = {f} columns; top_k takes F <= {MAX_F}")
    rt.check_int32(NF=n * f)
    k = _check_k(k, f)
    out = _check_out(out, n, k)
    if k:
        _launch_topk(scores, out, n, f, k, version)
    return out


def union(ids, f: int, *, out=None, count=None, check_ids: bool = True):
    """The ascending union of the rows of ids (B, K) int32 (ids in [0, F)): what a
    batch's sparse MLP computes. One launch, one block.

    Returns (out, count): out (min(F, B K),) int32 holds the union first, then -1;
    count (1,) int32 its size, on the device (no sync: CUDA graphs). The union
    itself is ``out[: int(count[0])]``. check_ids: check first that every id lies
    in [0, F) (a device reduction and a host sync; the kernel skips any other id).
    """
    import cupy as cp

    rt.check_array("ids", ids, (np.int32,), 2)
    if isinstance(f, bool) or not isinstance(f, (int, np.integer)):
        raise TypeError(f"f must be an int, got {type(f).__name__}")
    f = int(f)
    if not 1 <= f <= MAX_F:
        raise ValueError(f"f (F) must lie in [1, {MAX_F}], got {f}")
    n = ids.size
    rt.check_int32(BK=n)
    cap = min(f, n)
    if check_ids and n:
        lo, hi = (int(v) for v in cp.asnumpy(cp.stack([ids.min(), ids.max()])))
        if lo < 0 or hi >= f:
            raise ValueError(f"ids must lie in [0, F={f}), got {lo}..{hi}")
    if out is None:
        out = cp.empty(cap, cp.int32)
    else:
        rt.check_array("out", out, (np.int32,), 1)
        rt.check_shape("out", out, (cap,), ["min(F, B K)"])
    if count is None:
        count = cp.empty(1, cp.int32)
    else:
        rt.check_array("count", count, (np.int32,), 1)
        rt.check_shape("count", count, (1,), ["1"])
    i32 = np.int32
    rt.kernel(SLUG, "deja_vu_predict_union_v1_i32")(
        (1,), (TK,), (ids, i32(n), i32(f), out, i32(cap), count),
        shared_mem=4 * (-(-f // 32)),
    )  # fmt: skip
    return out, count
