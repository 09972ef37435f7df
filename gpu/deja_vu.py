"""Launchers for gpu/deja_vu.cu: the sparse ReLU MLP over an index set of neurons.

The CuPy twin of ``reference.deja_vu.sparse_mlp`` (act "relu"). The launcher checks
every precondition before the first launch (dtypes, contiguity, shapes, the index set:
int32, in [0, F), no duplicates; the vector versions' divisibility and 16-byte
alignment), casts scalars to int32, picks the grids and launches. No maths.

One call is one to four launches (see the .cu header): v1 up + down; v2 [zero,] up,
down, finish; v3 [zero,] fused, finish; v4 fused alone (atomic mode only; its
workspace must come zeroed, new_workspace, and is left zeroed); v5-v7 fused alone
(deterministic, B <= 4; its workspace's four counters must come zeroed, and are left
zeroed; the partials after them need not); v8 and v9 up, down, finish on tensor
cores (deterministic, float16, B <= 64; v9 is v8 software-pipelined). Pass ``out`` and
``workspace`` to launch without allocating (CUDA graphs), and ``check_idx=False`` for
an index set already checked (the check is a device reduction and a host sync).
"""

from __future__ import annotations

import math

import numpy as np

from gpu import runtime as rt

SLUG = "deja_vu"
VERSIONS = (1, 2, 3, 4, 5, 6, 7, 8, 9)
RING = (5, 6, 7)  # the one-launch ring versions: plan v5_plan, B <= 4
TENSOR = (8, 9)  # tensor-core versions: float16 only, B <= V8_MAX_B, plan v8_plan
MODES = ("atomic", "deterministic")
DTYPES = (np.float32, np.float16)
_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16"}
THREADS = 256  # v1 and finish
UP2_WARPS = 4  # warps (neurons) per block of up_v2
DOWN2_THREADS = 128  # column vectors per block of down_v2
RC2 = 32  # rows per chunk of down_v2 (RC2 in the .cu)
R3 = 8  # neurons per block of v3 (R3 in the .cu)
MAX_B = 1024  # v3, v4 keep a (R3, B) float32 tile in shared memory (32 KB)
W5 = 8  # consumer warps of v5 (W5 in the .cu)
NT5 = 32 * W5  # consumer threads; + one producer warp
NR5 = 128  # most neurons per block of v5 (NR5 in the .cu)
VPT5 = {1: 4, 2: 4, 4: 2}  # v5 instances: column vectors per thread -> most B
SMEM5 = 227 * 1024  # shared memory a block may opt in to on sm_90
FINISHERS5 = 64  # most blocks that sum v5's partials (< blocks resident at once)
MAX_GRID_Y = 65535
W8 = 8  # warps per block of up_v8 and down_v8 (W8 in the .cu)
V8_MAX_B = 64  # 8 NT batch rows for the largest instance, NT = 8
# NT (batch rows / 8, rounded up) -> (MT: m-tiles of 16 rows per up_v8 block, MD:
# m-tiles of 16 columns per down_v8 warp), as instantiated in the .cu
V8_SHAPES = {1: (1, 4), 2: (1, 4), 4: (2, 2), 8: (2, 2)}


def vec(dtype) -> int:
    """Values per 16-byte load: 8 halves or 4 floats."""
    return 16 // np.dtype(dtype).itemsize


def v5_plan(
    b: int,
    c: int,
    k: int,
    itemsize: int,
    blocks: int | None = None,
    finishers: int | None = None,
) -> dict:
    """v5's launch: G blocks (one per SM, at most NR5 neurons each), VPT column
    vectors per consumer thread, S ring stages of rb bytes (one row each; 2n when
    they fit), L finishers, and the dynamic shared memory it all takes."""
    vec_ = 16 // itemsize
    nv = -(-c // vec_)
    vpt = next((v for v in sorted(VPT5) if nv <= NT5 * v), None)
    if vpt is None:
        most = NT5 * max(VPT5) * vec_
        raise ValueError(f"v5 handles C <= {most} at this dtype; C = {c}")
    if b > VPT5[vpt]:
        raise ValueError(f"v5 handles B <= {VPT5[vpt]} at C = {c}; B = {b}")
    if blocks is None:
        g = max(min(_sms(), k), -(-k // NR5), 1)
    else:
        g = int(blocks)
        if g < 1 or (k and g > k) or -(-k // g) > NR5:
            raise ValueError(
                f"blocks must lie in [{max(1, -(-k // NR5))}, {max(k, 1)}] for K = {k}"
            )
    n = -(-k // g)
    rb = -(-c * itemsize // 128) * 128
    fixed = 4 * NR5 + 4 * n * b * (W5 + 1) + 16
    s_max = (SMEM5 - fixed) // (rb + 16)
    if s_max < 1:
        raise ValueError(f"v5 needs a {rb}-byte ring stage; C = {c} is too wide")
    stages = max(1, min(2 * n, s_max))
    nq = c // 4
    fin = max(1, min(g, FINISHERS5, nq // 16))
    if finishers is not None:
        fin = int(finishers)
        if not 1 <= fin <= min(g, FINISHERS5):
            raise ValueError(f"finishers must lie in [1, {min(g, FINISHERS5)}]")
    smem = max(stages * rb, 16 * NT5) + 16 * stages + fixed  # ring: finishers' too
    return dict(blocks=g, vpt=vpt, stages=stages, finishers=fin, smem=smem, n=n)


def v8_plan(b: int, c: int, k: int, sms: int | None = None) -> dict:
    """v8's launches: NT = ceil(B / 8) n-tiles (1, 2, 4, 8), KP = K rounded up to
    16, up_v8 over ceil(KP / 16 MT) blocks with W8 16 MT 8 NT floats of shared
    memory, down_v8 over (gx, P) blocks: gx column blocks of W8 16 MD columns, P
    splits of spp 16-row steps each, P chosen for about two blocks per SM (at least
    two steps a split); finish_v1 sums the P partials in split order."""
    if not 1 <= b <= V8_MAX_B:
        raise ValueError(f"v8 handles 1 <= B <= {V8_MAX_B}; B = {b}")
    nt = next(n for n in sorted(V8_SHAPES) if b <= 8 * n)
    mt, md = V8_SHAPES[nt]
    kp = -(-k // 16) * 16
    steps = kp // 16
    gx = -(-c // (W8 * 16 * md))
    parts = spp = 0
    if steps:
        sms = _sms() if sms is None else sms
        parts = max(1, min(-(-2 * sms // gx), -(-steps // 2)))
        spp = -(-steps // parts)
        parts = -(-steps // spp)
    return dict(
        nt=nt, mt=mt, md=md, kp=kp, up_blocks=-(-kp // (16 * mt)),
        up_smem=W8 * 16 * mt * 8 * nt * 4, gx=gx, parts=parts, spp=spp,
    )  # fmt: skip


def _sms() -> int:
    return rt.sm_count()


def n_parts(version: int, k: int, mode: str) -> int:
    """Partials (P, B, C) the finish sums: 1 for atomics, one per chunk of rows for
    the deterministic mode (ceil(K / 32) for v2, ceil(K / 8) for v3), 0 for v1."""
    if version == 1:
        return 0
    if version in TENSOR:
        raise ValueError("v8's and v9's partials come from v8_plan (B, C, SMs)")
    if mode == "atomic":
        return 1
    return math.ceil(k / (RC2 if version == 2 else R3))


def new_workspace(
    version: int, b: int, c: int, k: int, mode: str, blocks: int | None = None
):
    """A zeroed float32 workspace (v4 and v5 need it, or v5 its four counters,
    zeroed on entry, and leave it so)."""
    import cupy as cp

    n = workspace_elems(version, b, c, k, mode, blocks)
    return cp.zeros(max(n, 1), cp.float32)


def workspace_elems(
    version: int, b: int, c: int, k: int, mode: str, blocks: int | None = None
) -> int:
    """float32 scratch of one call: a (B, K) for v1/v2, padded to 16 bytes so that
    the partials (P, B, C) after it take 16-byte float4 stores and atomics. v5: four
    counters (zero on entry), then one (B, C) partial per block (G: v5_plan, which
    asks the device for its SM count unless ``blocks`` is given)."""
    if version == 4:  # acc (B, C), then the arrival counter (one 16-byte slot)
        return b * c + 4
    if version in TENSOR:  # a as (hi, lo) halves (B, KP), then (P, B, C) partials
        pl = v8_plan(b, c, k)  # P depends on the SM count of the device in use
        return b * pl["kp"] + pl["parts"] * b * c
    if version in RING:
        g = blocks if blocks is not None else max(min(_sms(), k), -(-k // NR5), 1)
        return 4 + g * b * c
    return _a_elems(version, b, k) + n_parts(version, k, mode) * b * c


def _a_elems(version: int, b: int, k: int) -> int:
    """Floats reserved for a (B, K) at the start of the workspace: 4 | the count."""
    return -(-b * k // 4) * 4 if version in (1, 2) else 0


def bytes_moved(b: int, c: int, k: int, itemsize: int) -> int:
    """Fewest bytes one call must move: the K selected rows of w1 and w2 and their
    biases, x and out once, the ids: 2 K C s + K (s + 4) + 2 B C s + C s."""
    return 2 * k * c * itemsize + k * (itemsize + 4) + (2 * b + 1) * c * itemsize


def dense_bytes(b: int, c: int, f: int, itemsize: int) -> int:
    """The dense MLP's fewest bytes: both matrices, biases, x and out."""
    return 2 * f * c * itemsize + f * itemsize + (2 * b + 1) * c * itemsize


def flops(b: int, c: int, k: int) -> int:
    """2 B K C for each of the two GEMVs: 4 B K C."""
    return 4 * b * k * c


def _check(x, w1, b1, w2, b2, idx, version, mode, check_idx):
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
    only = {1: ("deterministic",), 4: ("atomic",), 5: ("deterministic",)}
    only[6] = only[7] = only[8] = only[9] = only[5]
    if mode not in only.get(version, MODES):
        ok = only.get(version, MODES)
        raise ValueError(f"mode for v{version} must be one of {ok}, got {mode!r}")
    rt.check_array("x", x, DTYPES, 2)
    for name, arr, nd in (("w1", w1, 2), ("b1", b1, 1), ("w2", w2, 2), ("b2", b2, 1)):
        rt.check_array(name, arr, (x.dtype,), nd)
    rt.check_array("idx", idx, (np.int32,), 1)
    if version in TENSOR and x.dtype != np.float16:
        raise TypeError(f"v{version} runs on tensor cores: x must be float16, got "
                        f"{x.dtype.name}")  # fmt: skip
    (b, c), f, k = x.shape, w1.shape[0], idx.shape[0]
    rt.check_positive(B=b, C=c, F=f)
    rt.check_shape("w1", w1, (f, c), "FC")
    rt.check_shape("b1", b1, (f,), "F")
    rt.check_shape("w2", w2, (f, c), "FC")
    rt.check_shape("b2", b2, (c,), "C")
    if k > f:
        raise ValueError(f"idx holds K = {k} > F = {f} ids: some must repeat")
    rt.check_int32(FC=f * c, BC=b * c, BK=b * k)  # partials index in size_t
    if (
        b > MAX_GRID_Y
        or (version in (3, 4) and b > MAX_B)
        or (version in TENSOR and b > V8_MAX_B)
    ):
        lim = {3: MAX_B, 4: MAX_B, 8: V8_MAX_B, 9: V8_MAX_B}.get(version, MAX_GRID_Y)
        raise ValueError(f"B = {b} exceeds v{version}'s limit {lim}")
    if k and check_idx:  # one sort, one reduction and a host sync
        import cupy as cp

        s = cp.sort(idx)
        dups = (s[1:] == s[:-1]).sum(dtype=cp.int32)  # 0 when K = 1
        lo, hi, dup = (int(v) for v in cp.asnumpy(cp.stack([s[0], s[-1], dups])))
        if lo < 0 or hi >= f:
            raise ValueError(f"idx must lie in [0, F={f}), got {lo}..{hi}")
        if dup:
            raise ValueError(f"idx holds {dup} duplicate id(s): a neuron counts once")
    if version != 1:
        if c % vec(x.dtype):
            raise ValueError(
                f"v{version} ({x.dtype.name}) needs C % {vec(x.dtype)} == 0; C = {c}"
            )
        for name, arr in (("x", x), ("w1", w1), ("w2", w2)):
            if arr.data.ptr % 16:
                raise ValueError(f"v{version} needs {name} 16-byte aligned")
    return b, c, f, k


def sparse_mlp(
    x,
    w1,
    b1,
    w2,
    b2,
    idx,
    *,
    version: int = 3,
    mode: str | None = None,
    out=None,
    workspace=None,
    check_idx: bool = True,
    blocks: int | None = None,
    finishers: int | None = None,
    trace=None,
):
    """out = relu(x w1[idx]^T + b1[idx]) w2[idx] + b2 on the GPU.

    Args:
        x: (B, C) float32 or float16, C-contiguous CuPy array.
        w1, w2: (F, C) of x's dtype: neuron-major (w1 = W_in^T, w2 = W_out).
        b1: (F,); b2: (C,), x's dtype.
        idx: (K,) int32, distinct ids in [0, F), any order; K = 0 gives b2.
        version: 1..9 (gpu/deja_vu.cu); v5-v7 take B <= 4 (2 at the widest C),
            v8 and v9 float16 and B <= 64.
        mode: "atomic" (fast; the sum order varies from run to run) or
            "deterministic" (bitwise reproducible); None: v1, v5-v9
            "deterministic", v2-v4 "atomic". v1, v5-v9 are deterministic only,
            v4 atomic only.
        out: optional (B, C) output of x's dtype (no allocation: CUDA graphs).
        workspace: optional float32 array of >= workspace_elems(...) elements;
            for v4 zeroed (new_workspace), and v4 leaves it zeroed; for v5 its
            first four elements zeroed (new_workspace), left zeroed.
        check_idx: check idx on the device first (sort + reduction + sync);
            pass False only for a set already checked. The kernels never read
            out of bounds: a bad id drops its neuron.
        blocks: v5-v7 only, their grid (default: one block per SM, at most NR5
            neurons each); for tests and tuning.
        finishers: v5-v7 only, how many of the last blocks sum the partials
            (default min(G, 64, C / 64)); for tests and tuning.
        trace: v5-v7 only, an optional (>= 8 G,) uint64 array that receives
            eight global-timer stamps (ns) per block (tools/profile_deja_vu.py).
    Returns:
        out (B, C), x's dtype; every sum in float32.
    """
    import cupy as cp

    mode = mode or ("deterministic" if version in (1, *RING, *TENSOR) else "atomic")
    b, c, f, k = _check(x, w1, b1, w2, b2, idx, version, mode, check_idx)
    if (blocks is not None or finishers is not None) and version not in RING:
        raise ValueError(f"blocks and finishers are v5-v7 options; version = {version}")
    if trace is not None and version not in RING:
        raise ValueError(f"trace is a v5-v7 option; version = {version}")
    plan = None
    if version in RING:
        plan = v5_plan(b, c, k, x.dtype.itemsize, blocks, finishers)
    if out is None:
        out = cp.empty((b, c), dtype=x.dtype)
    else:
        rt.check_array("out", out, (x.dtype,), 2)
        rt.check_shape("out", out, (b, c), "BC")
    g5 = plan["blocks"] if plan else None
    need = workspace_elems(version, b, c, k, mode, g5)
    if workspace is None:  # v4 reads its accumulator and counter as zero, v5 its
        zeroed = version in (4, 5)  # counters
        workspace = (cp.zeros if zeroed else cp.empty)(max(need, 1), cp.float32)
    else:
        rt.check_array("workspace", workspace, (np.float32,), 1)
        if workspace.size < need:
            raise ValueError(f"workspace needs {need} float32, got {workspace.size}")
        if workspace.data.ptr % 16:
            raise ValueError("workspace must be 16-byte aligned (float4 partials)")
    i32, sfx = np.int32, _SUFFIX[x.dtype]
    dims = (i32(b), i32(c), i32(f), i32(k))
    if version in TENSOR:
        pl = v8_plan(b, c, k)
        kp, nt, parts = pl["kp"], pl["nt"], pl["parts"]
        a2, part = workspace[: b * kp], workspace[b * kp :]
        if k:
            up = rt.kernel(SLUG, f"deja_vu_up_v{version}_f16_n{nt}")
            up.max_dynamic_shared_size_bytes = pl["up_smem"]  # 64 KB at NT = 8
            up((pl["up_blocks"],), (32 * W8,), (x, w1, b1, idx, a2, *dims, i32(kp)),
               shared_mem=pl["up_smem"])  # fmt: skip
            rt.kernel(SLUG, f"deja_vu_down_v{version}_f16_n{nt}")(
                (pl["gx"], parts),
                (32 * W8,),
                (a2, w2, idx, part, *dims, i32(kp), i32(pl["spp"])),
            )
        rt.kernel(SLUG, f"deja_vu_finish_v1_{sfx}")(
            (math.ceil(c / 128), b), (THREADS,), (part, i32(parts), b2, out, i32(b),
                                                   i32(c))
        )  # fmt: skip
        return out
    if version in RING:
        if trace is not None:
            rt.check_array("trace", trace, (np.uint64,), 1)
            if trace.size < 8 * plan["blocks"]:
                raise ValueError(f"trace needs {8 * plan['blocks']} uint64")
        fn = rt.kernel(SLUG, f"deja_vu_fused_v{version}_{sfx}_p{plan['vpt']}")
        fn.max_dynamic_shared_size_bytes = plan["smem"]  # beyond 48 KB: opt in
        fn(
            (plan["blocks"],),
            (NT5 + 32,),
            (x, w1, b1, w2, b2, idx, workspace[:4].view(cp.uint32), workspace[4:],
             out, *dims, i32(plan["stages"]), i32(plan["finishers"]),
             np.uint64(0) if trace is None else trace),
            shared_mem=plan["smem"],
        )  # fmt: skip
        return out
    if version == 4:
        cnt = workspace[b * c : b * c + 1].view(cp.uint32)
        fn = rt.kernel(SLUG, f"deja_vu_fused_v4_{sfx}")
        fn(
            (max(1, math.ceil(k / R3)),),
            (32 * R3,),
            (x, w1, b1, w2, b2, idx, workspace, cnt, out, *dims),
            shared_mem=R3 * b * 4,
        )
        return out
    a = workspace[: b * k]
    acc = workspace[_a_elems(version, b, k) :]
    n_p = n_parts(version, k, mode)
    fn = rt.kernel
    if version == 1:
        if k:
            fn(SLUG, f"deja_vu_up_v1_{sfx}")(
                (math.ceil(k / THREADS), b), (THREADS,), (x, w1, b1, idx, a, *dims)
            )
        grid = (math.ceil(c / THREADS), b)
        fn(SLUG, f"deja_vu_down_v1_{sfx}")(
            grid, (THREADS,), (a, w2, b2, idx, out, *dims)
        )
        return out
    if mode == "atomic":
        acc[: b * c].fill(0)
    if k and version == 2:
        fn(SLUG, f"deja_vu_up_v2_{sfx}")(
            (math.ceil(k / UP2_WARPS),), (32 * UP2_WARPS,), (x, w1, b1, idx, a, *dims)
        )
        nvec = c // vec(x.dtype)
        grid = (math.ceil(k / RC2), math.ceil(nvec / DOWN2_THREADS))
        at = i32(mode == "atomic")
        fn(SLUG, f"deja_vu_down_v2_{sfx}")(
            grid, (DOWN2_THREADS,), (a, w2, idx, acc, *dims, at)
        )
    elif k:
        fn(SLUG, f"deja_vu_fused_v3_{sfx}")(
            (math.ceil(k / R3),),
            (32 * R3,),
            (x, w1, b1, w2, idx, acc, *dims, i32(mode == "atomic")),
            shared_mem=R3 * b * 4,
        )
    grid = (math.ceil(c / 128), b)
    p = n_p if k else 0
    if mode == "atomic":
        p = 1  # the zeroed partial (b2 alone when K = 0)
    fn(SLUG, f"deja_vu_finish_v1_{sfx}")(
        grid, (THREADS,), (acc, i32(p), b2, out, i32(b), i32(c))
    )
    return out


# --- dispatch: which kernel (or the dense GEMM) a decode step should run ------------
DISPATCH_KERNELS = ("v7_det", "v8_det")  # B = 1 ring kernel, tensor-core kernel
DISPATCH_MAX_B = {"v7_det": 1, "v8_det": 8}  # where the fit below was checked (NT = 1)
DENSE_BASELINES = ("torch_dense", "cublas_dense")  # strongest first


def fit_costs(rows: list[dict]) -> dict:
    """A cost model per path from a benchmark's rows (results/<card>/deja_vu.json):
    for each kernel of DISPATCH_KERNELS, t = t0 + K / rate fitted by least squares to
    its B = 1 rows over the kept fractions (t0 in µs: launches, ramp and tail; rate in
    rows per µs: the marginal streaming of one w1 row and one w2 row); for the dense
    MLP, the median time of the strongest dense baseline present (it reads every row
    whatever K). Rows not "ok" are ignored. Returns {path: (t0_us, rate)}, with
    rate = inf for "dense"; a kernel with fewer than two B = 1 rows is left out."""
    costs: dict[str, tuple[float, float]] = {}
    ok = [r for r in rows if r.get("status") == "ok" and r.get("median_us")]
    for name in DISPATCH_KERNELS:
        pts = [
            (r["K"], r["median_us"]) for r in ok if r["name"] == name and r["B"] == 1
        ]
        if len({k for k, _ in pts}) < 2:
            continue
        k = np.array([p[0] for p in pts], float)
        t = np.array([p[1] for p in pts], float)
        slope, t0 = np.polyfit(k, t, 1)
        costs[name] = (float(t0), float(1.0 / slope) if slope > 0 else math.inf)
    for name in DENSE_BASELINES:
        ts = [r["median_us"] for r in ok if r["name"] == name]
        if ts:
            costs["dense"] = (float(np.median(ts)), math.inf)
            break
    return costs


def predicted_us(path: str, k: int, costs: dict) -> float:
    """t0 + K / rate of one path of fit_costs (the dense path ignores K)."""
    t0, rate = costs[path]
    return t0 + (0.0 if math.isinf(rate) else k / rate)


def dispatch(b: int, k: int, costs: dict) -> str:
    """The path with the smallest predicted time for B rows whose union holds K
    neurons: a kernel of DISPATCH_KERNELS within its checked batch range
    (DISPATCH_MAX_B), or "dense" (run the dense MLP's GEMMs). Beyond every kernel's
    range only "dense" is left, since the fit was not checked there (v8 at B = 16 and
    64 fell well short of its B = 1 line). Raises ValueError if no path applies."""
    if b < 1 or k < 0:
        raise ValueError(f"dispatch needs B >= 1 and K >= 0, got B = {b}, K = {k}")
    paths = [p for p in costs if p == "dense" or b <= DISPATCH_MAX_B.get(p, 0)]
    if not paths:
        raise ValueError(f"no path in costs applies at B = {b}: {sorted(costs)}")
    return min(paths, key=lambda p: predicted_us(p, k, costs))
