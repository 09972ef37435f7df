"""Launchers for gpu/precompute.cu: gather precomputed first-layer rows + RoPE.

The CuPy twin of ``reference.precompute.gather_rope``. The launcher checks every
precondition before launch (dtypes, contiguity, shapes, the row layout, token ids and
positions in range, the vector versions' divisibility and 16-byte alignment), casts
scalars to int32, picks the grid and launches. No maths.
"""

from __future__ import annotations

import math

import numpy as np

from gpu import runtime as rt

SLUG = "precompute"
VERSIONS = (1, 2, 3)
VECTOR_VERSIONS = (2, 3)  # 16-byte loads: need the divisibility and alignment below
DTYPES = (np.float32, np.float16)
_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16"}
THREADS = 256  # __launch_bounds__(256) in the .cu
UNITS = 2  # v3: units per thread (UNITS in the .cu)
MAX_GRID_Y = 65535  # N is gridDim.y
# Best first: on a card that cannot run the version asked for, the launcher runs the
# first of these it can, with a notice (gpu.runtime.pick_version, gpu/capability.json;
# NVRTC 13.0 compiles all three for every card it supports, sm_75 and up).
FALLBACK = (3, 2, 1)


def runnable_version(version: int) -> int:
    """The version this card runs when ``version`` is asked for (itself, or the
    best of FALLBACK it supports, with one CapabilityFallback warning)."""
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
    return rt.pick_version(SLUG, version, FALLBACK)


def layout_of(cfg) -> dict[str, int]:
    """The kernel's row description for a reference.common.DecoderConfig:
    rot_off (first column of q), n_heads = H + G (the q and k heads, adjacent),
    head_dim D, rot_dim R (D when cfg.rot_dim is None)."""
    from reference.precompute import row_layout

    return dict(
        rot_off=row_layout(cfg)["q"].start,
        n_heads=cfg.H + cfg.G,
        head_dim=cfg.D,
        rot_dim=cfg.D if cfg.rot_dim is None else cfg.rot_dim,
    )


def rope_tables(n_pos: int, rot_dim: int, base: float = 10000.0):
    """cos, sin (P, R/2) float32 CuPy arrays for positions 0..P-1 (from
    reference.precompute.rope_table: float64 angles, rounded once)."""
    import cupy as cp

    from reference.precompute import rope_table

    return tuple(cp.asarray(t) for t in rope_table(n_pos, rot_dim, base))


def vector_ok(dtype, width: int, rot_off: int, head_dim: int, rot_dim: int) -> bool:
    """Whether v2/v3's 16-byte vectors tile the row: W, rot_off, D and R/2 all
    multiples of 16 / itemsize (8 halves or 4 floats)."""
    vec = 16 // np.dtype(dtype).itemsize
    return all(x % vec == 0 for x in (width, rot_off, head_dim, rot_dim // 2))


def _units(w: int, n_heads: int, rot_dim: int, vec: int) -> int:
    return w // vec - n_heads * (rot_dim // (2 * vec))


def _pick(table, cos, sin, lay) -> int:
    """v3 when the 16-byte vectors tile the row and the inputs are aligned, else v1."""
    aligned = all(a.data.ptr % 16 == 0 for a in (table, cos, sin) if a.size)
    r, d, off = lay["rot_dim"], lay["head_dim"], lay["rot_off"]
    return 3 if aligned and vector_ok(table.dtype, table.shape[1], off, d, r) else 1


def _check(table, tokens, positions, cos, sin, lay, version, check_ids):
    if version is not None and version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS} or None, got {version!r}")
    rt.check_array("table", table, DTYPES, 2)
    rt.check_array("tokens", tokens, (np.int32,), 1)
    rt.check_array("positions", positions, (np.int32,), 1)
    rt.check_array("cos", cos, (np.float32,), 2)
    rt.check_array("sin", sin, (np.float32,), 2)
    (v, w), n, p = table.shape, tokens.shape[0], cos.shape[0]
    r, d, nh, off = lay["rot_dim"], lay["head_dim"], lay["n_heads"], lay["rot_off"]
    version = runnable_version(
        _pick(table, cos, sin, lay) if version is None else version
    )
    rt.check_positive(V=v, W=w, N=n, P=p, head_dim=d, n_heads=nh)
    rt.check_shape("positions", positions, (n,), "N")
    if r % 2 or not 0 <= r <= d:
        raise ValueError(f"rot_dim must be even and in [0, head_dim={d}], got {r}")
    rt.check_shape("cos", cos, (p, r // 2), ("P", "R/2"))
    rt.check_shape("sin", sin, (p, r // 2), ("P", "R/2"))
    if off < 0 or off + nh * d > w:
        raise ValueError(
            f"rotated heads [rot_off={off}, +n_heads*head_dim={nh * d}) "
            f"must lie inside the row of W={w}"
        )
    rt.check_int32(V=v, W=w, N=n, P=p)
    if n > MAX_GRID_Y:
        raise ValueError(f"N = {n} tokens exceeds the grid limit {MAX_GRID_Y}")
    if check_ids:  # one reduction and a sync each: skipped inside graph capture
        for name, ids, hi in (("tokens", tokens, v), ("positions", positions, p)):
            lo_, hi_ = int(ids.min()), int(ids.max())
            if lo_ < 0 or hi_ >= hi:
                raise ValueError(f"{name} must lie in [0, {hi}), got {lo_}..{hi_}")
    if version in VECTOR_VERSIONS:
        if not vector_ok(table.dtype, w, off, d, r):
            raise ValueError(
                f"v{version} ({table.dtype.name}) needs W, rot_off, head_dim and "
                f"rot_dim/2 multiples of {16 // table.itemsize}; "
                f"got {w}, {off}, {d}, {r // 2}"
            )
        for name, a in (("table", table), ("cos", cos), ("sin", sin)):
            if a.size and a.data.ptr % 16:
                raise ValueError(f"v{version} needs {name} 16-byte aligned")
    return n, w, version


def gather_rope(
    table,
    tokens,
    positions,
    cos,
    sin,
    *,
    rot_off: int,
    n_heads: int,
    head_dim: int,
    rot_dim: int,
    version: int | None = None,
    out=None,
    check_ids: bool = True,
):
    """out[n] = table[tokens[n]] with RoPE at positions[n] on the n_heads heads of
    head_dim columns starting at rot_off (rotate-half on their first rot_dim dims).

    Args:
        table: (V, W) float32 or float16, C-contiguous CuPy array (build_table rows).
        tokens, positions: (N,) int32, ids in [0, V) and positions in [0, P).
        cos, sin: (P, R/2) float32 (rope_tables).
        rot_off, n_heads, head_dim, rot_dim: the row layout (layout_of(cfg)).
        version: 1..3 (gpu/precompute.cu); None picks 3 when the 16-byte vectors
            tile the row (vector_ok) and the pointers are aligned, else 1.
        out: optional (N, W) array of table's dtype to write into (no allocation:
            CUDA graphs).
        check_ids: check tokens and positions on the device first (a reduction and
            a host sync). Pass False only for ids already checked (inside a CUDA
            graph capture); the kernel still never reads out of bounds: a bad id
            or position turns its output row into NaN.
    Returns:
        out (N, W), table's dtype. The rotation is computed in float32.
    """
    import cupy as cp

    lay = dict(rot_off=rot_off, n_heads=n_heads, head_dim=head_dim, rot_dim=rot_dim)
    n, w, version = _check(table, tokens, positions, cos, sin, lay, version, check_ids)
    if out is None:
        out = cp.empty((n, w), dtype=table.dtype)
    else:
        rt.check_array("out", out, (table.dtype,), 2)
        rt.check_shape("out", out, (n, w), "NW")
        if version in VECTOR_VERSIONS and out.data.ptr % 16:
            raise ValueError(f"v{version} needs out 16-byte aligned")
    i32 = np.int32
    vec = 16 // table.itemsize
    if version == 1:
        grid = (math.ceil(w / THREADS), n)
    elif version == 2:
        grid = (math.ceil(w / vec / THREADS), n)
    else:
        grid = (math.ceil(_units(w, n_heads, rot_dim, vec) / (UNITS * THREADS)), n)
    fn = rt.kernel(SLUG, f"precompute_gather_v{version}_{_SUFFIX[table.dtype]}")
    args = (table, tokens, positions, cos, sin, out, i32(table.shape[0]))
    args += (i32(cos.shape[0]), i32(w), i32(rot_off), i32(n_heads))
    fn(grid, (THREADS,), args + (i32(head_dim), i32(rot_dim)))
    return out


def bytes_moved(n: int, w: int, itemsize: int, rot_dim: int) -> int:
    """Fewest bytes a gather of N rows must move: each row read and written once,
    the ids and positions (4 bytes each), and one cos and one sin row of R/2
    float32 per token (shared by all its heads)."""
    return 2 * n * w * itemsize + 8 * n + 4 * n * rot_dim


def flops(n: int, n_heads: int, rot_dim: int) -> int:
    """3 FLOPs per rotated value (two products, one add): 3·N·(H+G)·R."""
    return 3 * n * n_heads * rot_dim
