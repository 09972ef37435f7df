"""Benchmark cases of the chapter "Approximating two-layer FFNs" (via gpu/bench.py).

    python -m gpu.bench ffn_approx [--quick] [--out results]

One sigma-MoE layer in prefill, fp16 (the paper's WT103-big layer, DESIGN.md §5):
* "ffn_approx": T = 4096, C = 1024, E = 32, G = 128, K = 4. Our layer (router,
  counting sort, up, down, combine; six launches) for v2, v3 and v4 (v1 is a
  correctness anchor: naive, many ms), each stage of v2, v3 and v4 alone (the
  v2 layer uses router and sort v1, v3 and v4 their v2: field "router"), and two
  cuBLAS baselines from the same run: the parameter-equal dense MLP (F = E G =
  4096) and the compute-equal one (F = K G = 512), relu(x W1) W2 with cupy.matmul
  (cublas_param_equal, cublas_compute_equal), and the same two in PyTorch under
  CUDA graphs, torch.relu(x @ W1) @ W2 in fp16 with out= into the same buffers
  (torch_param_equal, torch_compute_equal; no biases, as the cuBLAS rows).
* "ffn_approx_experts": E in {8, 16, 32, 64, 128} (quick: 8, 32, 128) at fixed
  K = 4, G = 128: the FLOPs per token stay fixed while the parameter-equal dense MLP
  grows with E (the paper's benchmark.py sweeps N_E the same way). v3, v4, v5 and the
  parameter-equal dense MLPs at each E; the compute-equal ones once (they do not
  depend on E; their rows carry E = 0).
* "ffn_approx_tokens": T in {1, 16, 256, 4096} (quick: 1, 16, 4096) at E = 32: decode
  sizes, where every expert's weights are read for a handful of tokens. v3, v5 and
  both dense MLPs (torch and cuBLAS) at each T.

Every row is validated first against the float64 reference (reference.ffn_approx)
on 64 + 64 of the tokens (the first and the last), outputs poisoned with NaN; a row
that fails is recorded as failed and not timed. Our kernels are timed in CUDA
graphs (bench.time_cupy); cuBLAS cannot be captured by CuPy, so the baselines use
CUDA events (bench.time_events); torch's are captured (bench.time_torch). Input sets
are rotated beyond 2x L2. Floors: flop_floor_us = FLOPs / the fp16 GEMM ceiling,
bytes_floor_us = bytes / read ceiling; the larger is the floor of the row
(floor_us; of_floor = floor / time). Each moe_v* row gets vs_best_baseline against
the faster parameter-equal dense MLP at its E (torch or cuBLAS): the layer the MoE
replaces at the same parameter count. The compute-equal rows are the reference for
"FLOPs alone", not an alternative of the same capacity: no row is compared with
them (the book reads them from the rows).
"""

from __future__ import annotations

import math
import sys

import numpy as np

from gpu import bench
from gpu import ffn_approx as gfa

T, C, G, K = 4096, 1024, 128, 4
E_MAIN = 32
E_SWEEP = (8, 16, 32, 64, 128)
E_QUICK = (8, 32, 128)
T_SWEEP = (1, 16, 256, 4096)
T_QUICK = (1, 16, 4096)
F16 = np.float16
N_CHECK = 64  # tokens validated at each end
GRID = bench.Grid(
    # "ffn_approx_experts" sweeps E, "ffn_approx_tokens" T; "ffn_approx" is E_MAIN, T
    axes=dict(E=E_SWEEP, T=T_SWEEP),
    quick=dict(E=E_QUICK, T=T_QUICK),
    fixed=dict(T=T, C=C, G=G, K=K, E_main=E_MAIN, dtype="float16", n_check=N_CHECK),
    versions=dict(
        ffn_approx=(2, 3, 4, 5, 6, 7, 8, 9, 10),
        ffn_approx_experts=(3, 4, 5, 6, 7, 8, 9, 10),
        ffn_approx_tokens=(3, 5, 6, 7, 8, 9, 10),
    ),
    baselines={"torch_param_equal": ("E", "T"), "cublas_param_equal": ("E", "T")},
    kernels=("moe_",),  # whole layers; the v*_<stage> rows are parts of one
)
COLUMNS = (
    ("case", "name", "<22"),
    ("E", "E", ">5"),
    ("median us", "median_us", ">11.1f"),
    ("floor us", "floor_us", ">10.1f"),
    bench.OF_FLOOR,
    ("TFLOP/s", lambda r: r["flops"] / (r["median_us"] * 1e-6) / 1e12, ">9.0f"),
    bench.ERR,
    bench.VS_BEST,
    bench.BEST,
)


def _weights(rng, e):
    """sigma-MoE init in fp16 (reference.ffn_approx.init_sigma_moe, on the GPU)."""
    import cupy as cp

    w1 = rng.standard_normal((e, C, G), dtype=cp.float32) / math.sqrt(C)
    w2 = rng.standard_normal((e, G, C), dtype=cp.float32) / math.sqrt(e * G)
    w3 = rng.standard_normal((C, e), dtype=cp.float32)
    w3 /= cp.linalg.norm(w3, axis=0, keepdims=True) * math.sqrt(C)
    return tuple(a.astype(F16) for a in (w1, w2, w3))


def _rows(n: int) -> np.ndarray:
    return np.unique(
        np.r_[np.arange(min(N_CHECK, n)), np.arange(max(0, n - N_CHECK), n)]
    )


def _moe_truth(x, w, idx):
    """float64 reference of the checked tokens for the routing idx the GPU chose,
    and its scale (h and z stored in fp16; the float32 gate against float64)."""
    import cupy as cp

    from reference import ffn_approx as fa
    from reference.testing import moe_scale

    r = _rows(x.shape[0])
    x64 = cp.asnumpy(x[cp.asarray(r)]).astype(np.float64)
    w64 = fa.MoEWeights(*(cp.asnumpy(a).astype(np.float64) for a in w))
    i = idx[r]
    gate = fa.sigmoid(np.take_along_axis(x64 @ w64.w3, i.astype(np.int64), 1))
    ref = fa.moe_loop(x64, w64, i, gate)
    return r, ref, moe_scale(x64, w64.w1, w64.w2, i, gate, w64.w3, h16=True, z16=True)


def _dense_truth(x, w1, w2):
    import cupy as cp

    from reference import ffn_approx as fa
    from reference.testing import moe_scale

    r = _rows(x.shape[0])
    x64 = cp.asnumpy(x[cp.asarray(r)]).astype(np.float64)
    a, b = (cp.asnumpy(m).astype(np.float64) for m in (w1, w2))
    one = np.zeros((len(r), 1), np.int32)
    sc = moe_scale(x64, a[None], b[None], one, np.ones((len(r), 1)), h16=True)
    return r, fa.dense_mlp(x64, a, b), sc


def _check(out, truth) -> float:
    import cupy as cp

    from reference.testing import assert_close

    r, ref, sc = truth
    return assert_close(cp.asnumpy(out[cp.asarray(r)]), ref, "gpu", F16, sc)


def _base(e, ceil, name, f=None, t=T, **extra) -> dict:
    if f is None:
        fl, nb = gfa.flops(t, C, e, G, K), gfa.bytes_moved(t, C, e, G, K, 2)
    else:
        fl, nb = gfa.dense_flops(t, C, f), gfa.dense_bytes(t, C, f, 2)
    row = dict(name=name, T=t, C=C, E=e, G=G, K=K, F=f, dtype="float16", **extra)
    return bench.set_floors(row, nb, fl, ceil)


def _timed(row, check, calls, timer) -> dict:
    try:
        row["error_used"] = check()
    except (AssertionError, ValueError, TypeError, RuntimeError) as err:
        row["status"] = f"FAILED validation: {type(err).__name__}: {err}"
        print(f"  {row['name']} E={row['E']}: {row['status']}", file=sys.stderr)
        return row
    return bench.finish(row, timer(calls))


def _moe_rows(rng, e, ceil, versions, stages: bool, t=T) -> list[dict]:
    import cupy as cp

    n = bench.n_copies(gfa.bytes_moved(t, C, e, G, K, 2))
    sets = [_weights(rng, e) for _ in range(n)]
    xs = [rng.standard_normal((t, C), dtype=cp.float32).astype(F16) for _ in sets]
    rows = []
    for v in versions:
        if not gfa.rt.version_runs(gfa.SLUG, v):
            continue  # v8's wgmma: compute capability 9.0 only
        wss = [gfa.workspace(t, C, e, G, K, F16) for _ in sets]
        outs = [cp.full((t, C), np.nan, F16) for _ in sets]
        # v8's K-major weights, made once per weight set (a model stores them so)
        wts = [gfa.kmajor_weights(*st) if v in gfa.KMAJOR else None for st in sets]

        def call(j, v=v, wss=wss, outs=outs, wts=wts):
            w1, w2, w3 = sets[j]
            return gfa.moe(
                xs[j], w1, w2, w3, K, version=v, out=outs[j], ws=wss[j], wt=wts[j]
            )

        def check(v=v, wss=wss, call=call):
            out = call(0)
            truth = _moe_truth(xs[0], sets[0], cp.asnumpy(wss[0].idx))
            return _check(out, truth)

        calls = [lambda j=j: call(j) for j in range(n)]
        base = _base(e, ceil, f"moe_v{v}", t=t, router=gfa.router_for(v, e))
        base["sort"] = gfa.sort_for(v)
        rows.append(_timed(base, check, calls, _graph))
        if stages and rows[-1].get("status") == "ok":
            rows += _stage_rows(e, v, sets, xs, wss, outs, ceil, wts)
        bench.free(wts)
    bench.free(sets)
    return rows


def _stage_rows(e, v, sets, xs, wss, outs, ceil, wts) -> list[dict]:
    """Each launch of the layer alone (inputs from the validated full run)."""
    import cupy as cp

    i32 = np.int32
    bm = gfa.TILE[v]
    rows = []
    p = T * K

    def gemm(stage, j):
        w1, w2, _ = sets[j]
        gfa.gemm_stage(
            stage, xs[j], w1, w2, wss[j].gate, wss[j], v, out=outs[j], wt=wts[j]
        )

    def combine(j):
        ws = wss[j]
        gfa.rt.kernel("ffn_approx", "ffn_approx_combine_v2_f16")(
            (math.ceil(C // 8 / 256), T),
            (256,),
            (ws.z, outs[j], i32(T), i32(C), i32(K)),
        )

    rv, sv = gfa.router_for(v, e), gfa.sort_for(v)
    stages = {
        "router": lambda j: gfa.route(
            xs[j],
            sets[j][2],
            K,
            idx=wss[j].idx,
            gate=wss[j].gate,
            version=rv,
            bhist=wss[j].bhist,
            w3t=wts[j] and wts[j][2],
        ),  # fmt: skip
        "sort": lambda j: gfa.sort_pairs(
            wss[j].idx,
            e,
            bm,
            wss[j],
            check_idx=False,
            version=sv,
            hist_ready=rv >= 3 and sv == 3,
            tickets=gfa.fused_combine(v),
        ),  # fmt: skip
        "up": lambda j: gemm("up", j),
        "down": lambda j: gemm("down", j),
        "combine": combine,  # from v7 on, inside "down"
    }
    if gfa.fused_combine(v):
        del stages["combine"]
    fl = {"router": 2 * T * C * e, "up": 2 * p * C * G, "down": 2 * p * C * G}
    for name, fn in stages.items():
        row = dict(name=f"v{v}_{name}", T=T, C=C, E=e, G=G, K=K, F=None)
        row.update(dtype="float16", flops=fl.get(name, 0), bytes=0, router=rv, sort=sv)
        if name in fl and ceil.get("gemm_fp16_flop_per_s"):
            row["floor_us"] = fl[name] / ceil["gemm_fp16_flop_per_s"] * 1e6
        calls = [lambda j=j, fn=fn: fn(j) for j in range(len(sets))]
        rows.append(bench.finish(row, _graph(calls)))
        cp.cuda.Device().synchronize()
    return rows


def _dense_rows(rng, f, ceil, e, kind, t=T) -> list[dict]:
    """relu(x W1) W2, F = f, fp16: through cuBLAS (cublas_<kind>) and in PyTorch
    (torch_<kind>), the same weights, inputs and outputs (poisoned before each
    row's validation)."""
    import cupy as cp

    nb = gfa.dense_bytes(t, C, f, 2)
    n = bench.n_copies(nb)
    w = [
        (
            (rng.standard_normal((C, f), dtype=cp.float32) / math.sqrt(C)).astype(F16),
            (rng.standard_normal((f, C), dtype=cp.float32) / math.sqrt(f)).astype(F16),
        )
        for _ in range(n)
    ]
    xs = [rng.standard_normal((t, C), dtype=cp.float32).astype(F16) for _ in w]
    hs = [cp.empty((t, f), F16) for _ in w]
    outs = [cp.full((t, C), np.nan, F16) for _ in w]

    def call(j):
        cp.matmul(xs[j], w[j][0], out=hs[j])
        cp.maximum(hs[j], 0, out=hs[j])
        return cp.matmul(hs[j], w[j][1], out=outs[j])

    truth = _dense_truth(xs[0], *w[0])

    def check():
        return _check(call(0), truth)

    calls = [lambda j=j: call(j) for j in range(n)]
    rows = [
        _timed(
            _base(e, ceil, f"cublas_{kind}", f=f, t=t), check, calls, bench.time_events
        )
    ]
    name = f"torch_{kind}"
    row0 = _base(e, ceil, name, f=f, t=t)

    def torch_row():
        if not bench.torch_available():
            return bench.torch_skipped(name, row0)
        torch = bench.torch_for_baselines()
        t = torch.from_dlpack
        tsets = [
            (t(xs[j]), t(w[j][0]), t(w[j][1]), t(hs[j]), t(outs[j])) for j in range(n)
        ]

        def tcall(j):
            x, a, b, h, out = tsets[j]
            torch.matmul(x, a, out=h)
            torch.relu_(h)
            torch.matmul(h, b, out=out)
            return outs[j]

        def tcheck():
            outs[0].fill(np.nan)
            got = tcall(0)
            torch.cuda.synchronize()
            return _check(got, truth)

        tcalls = [lambda j=j: tcall(j) for j in range(n)]
        base = dict(row0, torch=torch.__version__)
        return _timed(base, tcheck, tcalls, _torch_timer)

    rows.append(bench.guarded(name, row0, torch_row))
    bench.free(w)
    return rows


def _torch_timer(calls):
    return bench.time_torch(calls, samples=30)


def _graph(calls):
    return bench.time_cupy(calls, samples=30)


def main_case(rng, ceil) -> list[dict]:
    rows = _moe_rows(rng, E_MAIN, ceil, GRID.versions["ffn_approx"], stages=True)
    rows += _dense_rows(rng, E_MAIN * G, ceil, E_MAIN, "param_equal")
    rows += _dense_rows(rng, K * G, ceil, E_MAIN, "compute_equal")
    return rows


def expert_sweep(rng, es, ceil) -> list[dict]:
    rows = _dense_rows(rng, K * G, ceil, 0, "compute_equal")
    for e in es:
        rows += _moe_rows(rng, e, ceil, GRID.versions["ffn_approx_experts"], False)
        rows += _dense_rows(rng, e * G, ceil, e, "param_equal")
    return rows


def token_sweep(rng, ts, ceil) -> list[dict]:
    rows = []
    for t in ts:
        rows += _moe_rows(
            rng, E_MAIN, ceil, GRID.versions["ffn_approx_tokens"], False, t
        )
        rows += _dense_rows(rng, E_MAIN * G, ceil, E_MAIN, "param_equal", t)
        rows += _dense_rows(rng, K * G, ceil, E_MAIN, "compute_equal", t)
    return rows


def run(quick: bool = False, ceil: dict | None = None) -> dict[str, list[dict]]:
    import cupy as cp

    ceil = ceil or {}
    rng = cp.random.default_rng(2310)
    return {
        "ffn_approx": main_case(rng, ceil),
        "ffn_approx_experts": expert_sweep(rng, GRID.values("E", quick), ceil),
        "ffn_approx_tokens": token_sweep(rng, GRID.values("T", quick), ceil),
    }
