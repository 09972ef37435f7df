"""Benchmark cases of the Deja Vu chapter (run through gpu/bench.py).

    python -m gpu.bench deja_vu [--quick] [--out results]

The sparse ReLU MLP of one decode step, C = 4096, F = 16384, fp16 (OPT-6.7B's MLP):
* "deja_vu": B = 1, kept fraction K/F from 2 % to 100 % (quick: 2, 10, 100 %), every
  kernel version and reduction mode of gpu/deja_vu.cu (v1 only up to 10 %: it is
  slow), beside two baselines from the same run: the dense MLP through cuBLAS
  (cupy.matmul, two GEMVs and fused epilogues) and gather-then-GEMV (cupy.take of
  the K rows of both matrices, then the same GEMVs on the gathered copies), and
  the same two in PyTorch under CUDA graphs: torch_dense (F.linear's addmm with
  b1, relu in place, addmm with b2) and torch_gather_gemv (index_select of the K
  rows of W1, b1 and W2, then the same GEMVs), into NaN-poisoned outputs.
* "deja_vu_timeline": where one launch of v5-v7 spends its time (B = 1, 2 % and
  10 % kept): global-timer stamps at eight points of every block (``timeline``).
* "deja_vu_batch": B in {1, 4, 16, 64} (quick: 1, 16) with T = the union of the B
  rows' active sets, measured on the weights (b1 set for ~10 % active per row;
  independent random rows, the worst case for the union), v2-v8 (v5-v7 up to
  B = 4) against the same four baselines; v8 and v9 are the tensor-core kernels for
  the batch (fp16 mma from gathered rows, their FLOP floor over the fp16 ceiling).

Every row is validated against the float64 NumPy reference (reference.deja_vu) on
its first input set, outputs poisoned with NaN; a row that fails is recorded as
failed and not timed. Our kernels are timed in CUDA graphs (bench.time_cupy); cuBLAS
cannot be captured by CuPy, so the CuPy baselines use CUDA events
(bench.time_events); torch's are captured (bench.time_torch). Each input set carries
its own weights, rotated so that together they exceed 2x L2; the torch rows rotate
over the same sets. Floors: bytes_moved / read ceiling (floor_us, the issue's
2 |S| C bytes + small terms) and FLOPs over the GEMM ceiling of the units that do
the work (flop_floor_us): the fp32 ceiling for our CUDA-core kernels, the fp16 one
for cuBLAS and torch, which use tensor cores (the fp32 ceiling does not bound them:
cuBLAS's dense MLP at B = 64 ran at 2.5x it on the H100). Every kernel row gets
vs_best_baseline against the fastest ok baseline of its case (dense: same B;
gather: same B and K; gpu.bench.mark_baselines).
"""

from __future__ import annotations

import math
import sys

import numpy as np

from gpu import bench
from gpu import deja_vu as gdv

C, F = 4096, 16384
F16 = np.float16
KEPT = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
QUICK_KEPT = (0.02, 0.1, 1.0)
BATCHES = (1, 4, 16, 64)
QUICK_BATCHES = (1, 16)
VARIANTS = ((1, "deterministic"), (2, "atomic"), (2, "deterministic"))
VARIANTS += ((3, "atomic"), (3, "deterministic"), (4, "atomic"))
VARIANTS += ((5, "deterministic"), (6, "deterministic"), (7, "deterministic"))
VARIANTS += ((8, "deterministic"), (9, "deterministic"))
BATCH_VARIANTS = ((3, "atomic"), (3, "deterministic"), (2, "atomic"), (4, "atomic"))
BATCH_VARIANTS += ((5, "deterministic"), (6, "deterministic"), (7, "deterministic"))
BATCH_VARIANTS += ((8, "deterministic"), (9, "deterministic"))
ACTIVE_SHIFT = -1.2816  # b1 mean: P(N(0, 1) > 1.2816) = 10 % active per row
K16 = 2.0**-11 / (6 * 2.0**-24)  # one fp16 rounding in units of the gpu row's atol
GRID = bench.Grid(
    axes=dict(kept=KEPT, B=BATCHES),  # kept: "deja_vu" (B = 1); B: "deja_vu_batch"
    quick=dict(kept=QUICK_KEPT, B=QUICK_BATCHES),
    fixed=dict(
        C=C, F=F, dtype="float16", active_shift=ACTIVE_SHIFT,
        v1_max_kept=0.1, v1_max_b=4,  # v1 reads rows with 2-byte loads, serially
        v5_max_b=4,  # gpu.deja_vu.VPT5 at C = 4096
    ),
    versions=dict(deja_vu=VARIANTS, deja_vu_batch=BATCH_VARIANTS),
    baselines={
        "torch_dense": ("B",), "cublas_dense": ("B",),
        "torch_gather_gemv": ("B", "K"), "gather_gemv": ("B", "K"),
    },
    kernels=("v",),
)  # fmt: skip
COLUMNS = (
    ("case", "name", "<18"),
    ("B", "B", ">4"),
    ("kept", "kept", ">7.3f"),
    bench.MEDIAN,
    bench.FLOOR,
    bench.OF_FLOOR,
    bench.ERR,
    bench.VS_BEST,
    bench.BEST,
)


def _weights(rng, n: int, shift: float):
    """n independent layers: w1, w2 (F, C) N(0, 1/C) and N(0, 1/(0.1 F)) in fp16,
    b1 = shift + N(0, 0.1^2), b2 = N(0, 0.1^2)."""
    import cupy as cp

    sets = []
    for _ in range(n):
        w1 = (rng.standard_normal((F, C), dtype=cp.float32) / math.sqrt(C)).astype(F16)
        w2 = (
            rng.standard_normal((F, C), dtype=cp.float32) / math.sqrt(0.1 * F)
        ).astype(F16)
        b1 = (shift + 0.1 * rng.standard_normal(F, dtype=cp.float32)).astype(F16)
        b2 = (0.1 * rng.standard_normal(C, dtype=cp.float32)).astype(F16)
        sets.append((w1, b1, w2, b2))
    return sets


def _truth(x, w, idx, cublas: bool, a_split: bool = False):
    """float64 reference of set 0 (rows idx gathered on the host) and its scale;
    cublas=True adds the fp16 roundings of the baselines' intermediates (z, a and
    y before + b2 are stored in fp16: u16 relative each, K16 in the row's units);
    a_split=True, v8's (hi, lo) halves of a (sparse_mlp_scale)."""
    import cupy as cp

    from reference.deja_vu import SparseMLPWeights, sparse_mlp
    from reference.testing import sparse_mlp_scale

    w1, b1, w2, b2 = w
    di = cp.asarray(idx)
    h = [cp.asnumpy(a).astype(np.float64) for a in (w1[di], b1[di], w2[di], b2, x)]
    g1, gb1, g2, gb2, x64 = h
    wk = SparseMLPWeights(g1, gb1, g2, gb2)
    ref = sparse_mlp(x64, wk, np.arange(len(idx)))
    scale = sparse_mlp_scale(x64, g1, gb1, g2, gb2, a_split=a_split)
    if cublas:
        z = x64 @ g1.T
        a = np.maximum(z + gb1, 0)
        scale += K16 * float(
            ((np.abs(z) + np.abs(a)) @ np.abs(g2) + np.abs(a @ g2)).max()
        )
    return ref, scale


def _validate(fn, ref, scale) -> float:
    import cupy as cp

    from reference.testing import assert_close

    return assert_close(cp.asnumpy(fn()), ref, "gpu", F16, scale)


def _row(name, base, check, calls, ref, scale, timer) -> dict:
    """Validate check() (the first set, poisoned output), then time the calls."""
    row = dict(name=name, **base)
    try:
        row["error_used"] = _validate(check, ref, scale)
    except (AssertionError, ValueError, RuntimeError) as e:  # RuntimeError: torch's
        row["status"] = f"FAILED validation: {type(e).__name__}: {e}"
        print(f"  {name} B={base['B']} K={base['K']}: {row['status']}", file=sys.stderr)
        return row
    return bench.finish(row, timer(calls))


def _graph(calls):
    return bench.time_cupy(calls, samples=40)


def _ours(sets, xs, idxs, version, mode):
    """Calls of our kernel over the rotated sets; the first checks idx and poisons
    its output (validation), the rest launch without a sync (graph capture)."""
    import cupy as cp

    b, k = xs[0].shape[0], max(len(i) for i in idxs)  # the sets' unions differ
    n_ws = max(gdv.workspace_elems(version, b, C, k, mode), 1)
    outs = [cp.full((b, C), np.nan, F16) for _ in sets]
    wss = [cp.zeros(n_ws, cp.float32) for _ in sets]
    didx = [cp.asarray(i, cp.int32) for i in idxs]

    def call(j, check=False):
        return gdv.sparse_mlp(
            xs[j], *sets[j], didx[j], version=version, mode=mode,
            out=outs[j], workspace=wss[j], check_idx=check,
        )  # fmt: skip

    return (lambda: call(0, True)), [lambda j=j: call(j) for j in range(len(sets))]


def _cublas(sets, xs, idxs, gather: bool):
    """Baseline calls: [take rows,] z = x W1^T, a = relu(z + b1), y = a W2 + b2."""
    import cupy as cp

    relu_bias = cp.ElementwiseKernel(
        "float16 z, float16 b", "float16 a", "a = fmaxf((float)z + (float)b, 0.f)",
        "dv_relu_bias",
    )  # fmt: skip
    add = cp.ElementwiseKernel(
        "float16 y, float16 b", "float16 o", "o = (float)y + (float)b", "dv_add"
    )
    calls = []
    for (w1, b1, w2, b2), x, idx in zip(sets, xs, idxs, strict=True):
        b, k = x.shape[0], len(idx) if gather else F
        buf = dict(z=cp.empty((b, k), F16), a=cp.empty((b, k), F16))
        buf.update(y=cp.empty((b, C), F16), o=cp.full((b, C), np.nan, F16))
        if gather:
            di = cp.asarray(idx, cp.int32)
            buf.update(g1=cp.empty((k, C), F16), g2=cp.empty((k, C), F16))
            buf["gb1"] = cp.empty(k, F16)

        def call(w1=w1, b1=b1, w2=w2, b2=b2, x=x, buf=buf, di=di if gather else None):
            if gather:
                cp.take(w1, di, axis=0, out=buf["g1"])
                cp.take(b1, di, out=buf["gb1"])
                cp.take(w2, di, axis=0, out=buf["g2"])
                w1, b1, w2 = buf["g1"], buf["gb1"], buf["g2"]
            cp.matmul(x, w1.T, out=buf["z"])
            relu_bias(buf["z"], b1, buf["a"])
            cp.matmul(buf["a"], w2, out=buf["y"])
            return add(buf["y"], b2, buf["o"])

        calls.append(call)
    return calls


def _base(b, k, ceil, copies, tensor_cores=False, **extra) -> dict:
    """The fields of a case's rows; tensor_cores: the FLOP floor over the fp16 GEMM
    ceiling (cuBLAS, torch), else over the fp32 one (our CUDA-core kernels)."""
    nbytes = gdv.bytes_moved(b, C, k, 2)
    base = dict(B=b, C=C, F=F, K=k, kept=k / F, dtype="float16", bytes=nbytes)
    base.update(flops=gdv.flops(b, C, k), copies=copies, **extra)
    if ceil.get("read_bytes_per_s"):
        base["floor_us"] = nbytes / ceil["read_bytes_per_s"] * 1e6
        base["dense_floor_us"] = (
            gdv.dense_bytes(b, C, F, 2) / ceil["read_bytes_per_s"] * 1e6
        )
    peak = ceil.get("gemm_fp16_flop_per_s" if tensor_cores else "gemm_fp32_flop_per_s")
    if peak:
        base["flop_floor_us"] = base["flops"] / peak * 1e6
    return base


def _tensor_cores(base: dict, ceil: dict) -> dict:
    """base with the FLOP floor of the tensor-core baselines (see _base)."""
    out = dict(base)
    out.pop("flop_floor_us", None)
    if ceil.get("gemm_fp16_flop_per_s"):
        out["flop_floor_us"] = out["flops"] / ceil["gemm_fp16_flop_per_s"] * 1e6
    return out


def _torch_mlp(sets, xs, idxs, gather: bool):
    """The baselines in PyTorch: [index_select the K rows of W1, b1, W2,]
    z = F.linear(x, W1, b1) (its addmm, out=), relu in place, y = addmm(b2, a, W2),
    into NaN-poisoned preallocated outputs. Returns (check, calls): check runs
    set 0 and returns its output (CuPy), calls launch without a sync."""
    import cupy as cp

    torch = bench.torch_for_baselines()
    t = torch.from_dlpack
    calls, outs = [], []
    for (w1, b1, w2, b2), x, idx in zip(sets, xs, idxs, strict=True):
        b, k = x.shape[0], len(idx) if gather else F
        o = cp.full((b, C), np.nan, F16)
        args = [t(a) for a in (w1, b1, w2, b2, x, cp.empty((b, k), F16), o)]
        if gather:
            di = t(cp.asarray(idx, cp.int32))
            bufs = [t(cp.empty(sh, F16)) for sh in ((k, C), (k,), (k, C))]
        else:
            di, bufs = None, None

        def call(args=args, di=di, bufs=bufs, o=o):
            w1, b1, w2, b2, x, z, y = args
            if di is not None:
                for src, dst in zip((w1, b1, w2), bufs, strict=True):
                    torch.index_select(src, 0, di, out=dst)
                w1, b1, w2 = bufs
            torch.addmm(b1, x, w1.t(), out=z)
            torch.relu_(z)
            torch.addmm(b2, z, w2, out=y)
            return o

        calls.append(call)
        outs.append(o)

    def check():
        out = calls[0]()
        torch.cuda.synchronize()
        return out

    return check, calls


def _torch_timer(calls):
    return bench.time_torch(calls, samples=40)


def _torch_row(name, base, sets, xs, idxs, gather, truth) -> dict:
    if not bench.torch_available():
        return bench.torch_skipped(name, base)
    import torch

    check, calls = _torch_mlp(sets, xs, idxs, gather)
    base = dict(base, torch=torch.__version__)
    return _row(name, base, check, calls, *truth, _torch_timer)


def _case(sets, xs, idxs, ceil, variants, with_gather=True, **extra) -> list[dict]:
    b = xs[0].shape[0]
    k = round(float(np.mean([len(i) for i in idxs])))  # rotated sets: mean size
    base = _base(b, k, ceil, len(sets), **extra)
    ref, scale = _truth(xs[0], sets[0], idxs[0], cublas=False)
    scale8 = None
    if any(v in gdv.TENSOR for v, _ in variants):
        scale8 = _truth(xs[0], sets[0], idxs[0], cublas=False, a_split=True)[1]
    rows = []
    for version, mode in variants:
        fixed = GRID.fixed
        if version == 1 and (k > fixed["v1_max_kept"] * F or b > fixed["v1_max_b"]):
            continue  # v1 reads rows with 2-byte loads, serially: its trend is clear
        if version in gdv.RING and b > fixed["v5_max_b"]:  # B <= 4 only
            continue  # v5 holds B rows in registers: the small-batch kernel
        check, calls = _ours(sets, xs, idxs, version, mode)
        name = f"v{version}_{mode[:3]}"
        if version in gdv.TENSOR:  # its FLOP floor: the fp16 tensor-core ceiling
            rows.append(
                _row(name, _tensor_cores(base, ceil), check, calls, ref, scale8, _graph)
            )
            continue
        rows.append(_row(name, base, check, calls, ref, scale, _graph))
    if with_gather:
        truth_c = _truth(xs[0], sets[0], idxs[0], cublas=True)
        calls = _cublas(sets, xs, idxs, gather=True)
        tc = _tensor_cores(base, ceil)
        rows.append(
            _row("gather_gemv", tc, calls[0], calls, *truth_c, bench.time_events)
        )
        rows.append(
            bench.guarded(
                "torch_gather_gemv",
                tc,
                _torch_row,
                "torch_gather_gemv",
                tc,
                sets,
                xs,
                idxs,
                True,
                truth_c,
            )  # fmt: skip
        )
    return rows


def _dense(sets, xs, ceil, **extra) -> list[dict]:
    """The dense MLP through cuBLAS and in PyTorch (one weight set: > 2x L2)."""
    b = xs[0].shape[0]
    every = np.arange(F)
    base = _base(b, F, ceil, 1, tensor_cores=True, **extra)
    truth = _truth(xs[0], sets[0], every, cublas=True)
    calls = _cublas(sets[:1], xs[:1], [every], gather=False)
    return [
        _row("cublas_dense", base, calls[0], calls, *truth, bench.time_events),
        bench.guarded(
            "torch_dense",
            base,
            _torch_row,
            "torch_dense",
            base,
            sets[:1],
            xs[:1],
            [every],
            False,
            truth,
        ),  # fmt: skip
    ]


def kept_sweep(rng, rng_np, kept, ceil) -> list[dict]:
    """B = 1, K = kept * F random distinct ids per set (sorted, as a predictor's
    mask gives them); b1 ~ 0 so about half the selected neurons are active."""
    import cupy as cp

    n_max = bench.n_copies(gdv.bytes_moved(1, C, int(min(kept) * F), 2))
    sets = _weights(rng, n_max, 0.0)
    xs = [rng.standard_normal((1, C), dtype=cp.float32).astype(F16) for _ in sets]
    rows = _dense(sets, xs, ceil)
    for fr in kept:
        k = round(fr * F)
        n = bench.n_copies(gdv.bytes_moved(1, C, k, 2))
        idxs = [np.sort(rng_np.permutation(F)[:k]).astype(np.int32) for _ in range(n)]
        rows += _case(sets[:n], xs[:n], idxs, ceil, VARIANTS)
    bench.free(sets)
    return rows


def batch_sweep(rng, batches, ceil) -> list[dict]:
    """T = union of the active sets of B random rows (b1 ~ -1.28: ~10 % per row)."""
    import cupy as cp

    rows = []
    n_max = bench.n_copies(gdv.bytes_moved(1, C, F // 10, 2))
    sets = _weights(rng, n_max, ACTIVE_SHIFT)
    for b in batches:
        xs = [rng.standard_normal((b, C), dtype=cp.float32).astype(F16) for _ in sets]
        idxs = []
        for (w1, b1, _, _), x in zip(sets, xs, strict=True):
            z = x.astype(cp.float32) @ w1.astype(cp.float32).T + b1.astype(cp.float32)
            idxs.append(
                cp.asnumpy(cp.flatnonzero((z > 0).any(axis=0))).astype(np.int32)
            )
        k = round(float(np.mean([len(i) for i in idxs])))
        n = max(1, min(len(sets), bench.n_copies(gdv.bytes_moved(b, C, k, 2))))
        per_row = float(np.mean([cp.asnumpy((z > 0).mean())]))  # last set's rows
        extra = dict(union=k / F, active_per_row=per_row)
        rows += _dense(sets, xs, ceil, **extra)
        rows += _case(sets[:n], xs[:n], idxs[:n], ceil, BATCH_VARIANTS, **extra)
    bench.free(sets)
    return rows


TIMELINE = ("entry", "ids", "row0", "a", "phase2", "ticket", "all_in", "end")
TIMELINE_KEPT = (0.02, 0.1)
TIMELINE_CALLS = 9


def timeline(rng, rng_np, ceil) -> list[dict]:
    """Where one launch of the ring versions spends its time: each block stamps the
    global timer (ns) at eight points (gpu/deja_vu.cu, ``stamp``); per call, the
    median and the latest block at each point, counted from the first block's
    entry; rows hold the median of those over TIMELINE_CALLS calls, each on a
    weight copy not touched for n_copies - 1 calls (cold in L2, as in the sweep).
    The launch itself, before the first block starts, is not seen."""
    import cupy as cp

    n = bench.n_copies(gdv.bytes_moved(1, C, int(min(TIMELINE_KEPT) * F), 2))
    sets = _weights(rng, n, 0.0)
    x = rng.standard_normal((1, C), dtype=cp.float32).astype(F16)
    rows = []
    for fr in TIMELINE_KEPT:
        k = round(fr * F)
        idxs = [cp.asarray(np.sort(rng_np.permutation(F)[:k]), cp.int32) for _ in sets]
        for version in gdv.RING:
            ws = gdv.new_workspace(version, 1, C, k, "deterministic")
            out = cp.empty((1, C), F16)
            tr = cp.zeros(8 * max(gdv.v5_plan(1, C, k, 2)["blocks"], 1), cp.uint64)
            per_call = []
            for j in range(n + TIMELINE_CALLS):  # the first n warm the kernel
                kw = dict(version=version, out=out, workspace=ws, check_idx=False)
                tr.fill(0)
                gdv.sparse_mlp(x, *sets[j % n], idxs[j % n], trace=tr, **kw)
                if j >= n:
                    t = cp.asnumpy(tr).reshape(-1, 8).astype(np.int64)
                    per_call.append(t[t[:, 0] > 0])
            base = dict(name=f"v{version}_det", B=1, C=C, F=F, K=k, kept=k / F)
            base.update(blocks=len(per_call[0]), calls=TIMELINE_CALLS, status="ok")
            for i, point in enumerate(TIMELINE):
                med, late = [], []
                for t in per_call:
                    v = t[:, i][t[:, i] > 0] - t[:, 0].min()
                    if v.size:
                        med.append(np.median(v) / 1e3)
                        late.append(v.max() / 1e3)
                if med:
                    rows.append(dict(base, point=point, at_us=float(np.median(med)),
                                     latest_us=float(np.median(late))))  # fmt: skip
                    print(f"  timeline {base['name']} kept {fr:.2f} {point:>7}: "
                          f"{rows[-1]['at_us']:6.2f} us median block, "
                          f"{rows[-1]['latest_us']:6.2f} us the latest")  # fmt: skip
    bench.free(sets)
    return rows


def run(quick: bool = False, ceil: dict | None = None) -> dict[str, list[dict]]:
    import cupy as cp

    ceil = ceil or {}
    rng, rng_np = cp.random.default_rng(2023), np.random.default_rng(2023)
    return {
        "deja_vu": kept_sweep(rng, rng_np, GRID.values("kept", quick), ceil),
        "deja_vu_batch": batch_sweep(rng, GRID.values("B", quick), ceil),
        "deja_vu_timeline": timeline(rng, rng_np, ceil),
    }
