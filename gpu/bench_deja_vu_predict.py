"""Benchmark cases of Deja Vu's lookahead predictor (run through gpu/bench.py).

    python -m gpu.bench deja_vu_predict [--quick] [--out results]

The predictor of one decode step for the MLP of gpu/bench_deja_vu.py (C = 4096,
F = 16384, fp16): scores = (x - mean) A B + bias, then the K = 10 % of F highest
ids of each row, ascending (what gpu.deja_vu.sparse_mlp takes), for r in {256, 1024}
and B in {1, 4} (quick: B = 1). Rows:

* for each version N of gpu/deja_vu_predict.cu: vN (predict_topk: proj, scores,
  topk), vN_scores (the two GEMV kernels alone), vN_topk (the top-K kernel alone,
  on recorded scores), and at B > 1 vN_union (predict_topk, then union_v1: the
  set a batch's sparse MLP needs);
* torch_predict, the baseline, in PyTorch under CUDA graphs: sub, mm, addmm (fp16
  intermediates, as a practitioner writes it), torch.topk (unsorted), torch.sort of
  the ids and a copy into int32;
* the MLP the predictor serves, from the same run: torch_dense_mlp (F.linear's addmm
  with b1, relu in place, addmm with b2) and sparse_mlp_v5 (gpu.deja_vu's sparse MLP,
  version 5, over the predicted ids). Each of our rows gets ``mlp_saved_us``
  (dense minus sparse, same B) and ``of_saved`` (its time over that): the share of
  the MLP's saving the predictor spends; ``bytes_of_saved`` does the same in bytes.

Validation before timing, on the first input set, outputs poisoned: our scores
within reference.testing.lowrank_scale of the float64 reference, our ids equal to
reference.deja_vu.top_k_ids of our own float32 scores, and a top-K set of the float64
truth within that tolerance (assert_top_k); torch's ids within the same check with
its fp16 roundings added to the scale; the MLP rows against the float64 MLP (their
own fp16 roundings likewise). Timing: bench.time_cupy (CUDA graphs) for ours,
bench.time_torch for torch's, input sets rotated past 2x L2. Floors: bytes_moved /
read ceiling (floor_us), FLOPs / the fp32 GEMM ceiling for our CUDA-core kernels and
the fp16 one for torch (flop_floor_us).
"""

from __future__ import annotations

import math
import sys

import numpy as np

from gpu import bench
from gpu import deja_vu as gdv
from gpu import deja_vu_predict as gp

C, F = 4096, 16384
F16 = np.float16
KEPT = 0.1
K = round(KEPT * F)
RANKS = (256, 1024)
BATCHES = (1, 4)
QUICK_BATCHES = (1,)
MLP_VERSION = 5  # gpu.deja_vu's small-batch sparse MLP (B <= 4, deterministic)
K16 = 2.0**-11 / (6 * 2.0**-24)  # one fp16 rounding in units of the gpu row's atol
GRID = bench.Grid(
    axes=dict(r=RANKS, B=BATCHES),
    quick=dict(B=QUICK_BATCHES),
    fixed=dict(C=C, F=F, K=K, kept=KEPT, dtype="float16", mlp_version=MLP_VERSION),
    versions=gp.VERSIONS,
    baselines={"torch_predict": ("B", "r")},
    kernels=("v",),
)
COLUMNS = (
    ("case", "name", "<16"),
    ("r", "r", ">6"),
    ("B", "B", ">3"),
    bench.MEDIAN,
    bench.FLOOR,
    bench.OF_FLOOR,
    bench.ERR,
    bench.VS_BEST,
    bench.BEST,
    ("of saved", "of_saved", ">9.3f"),
)


def _predictors(rng, n: int, b: int, r: int):
    """n independent predictors and inputs, fp16: a_t (r, C) N(0, 1/C), b (r, F)
    N(0, 1/r), mean and bias N(0, 0.1^2), x (B, C) N(0, 1)."""
    import cupy as cp

    def normal(shape, sd):
        return (sd * rng.standard_normal(shape, dtype=cp.float32)).astype(F16)

    return [
        (normal((b, C), 1.0), normal(C, 0.1), normal((r, C), 1 / math.sqrt(C)),
         normal((r, F), 1 / math.sqrt(r)), normal(F, 0.1))
        for _ in range(n)
    ]  # fmt: skip


def _truth(p):
    """float64 scores (B, F) of predictor set p, their scale, and the scale of
    torch's fp16 steps: x - mean and h stored in fp16 (u16 each, propagated
    through b: sum_k (m_k + |h_k|) |b_kj|, in the row's units K16) added; its
    fp16 scores are the ("gpu", "float16") row's u16."""
    from reference.deja_vu import LowRankPredictor, predict
    from reference.testing import lowrank_scale

    x, mean, a_t, bm, bias = (np.asarray(a.get(), np.float64) for a in p)
    truth = predict(LowRankPredictor(mean, a_t.T, bm, bias), x)
    scale = lowrank_scale(x, mean, a_t.T, bm, bias)
    d = x - mean
    m_h = np.abs(d) @ np.abs(a_t.T) + np.abs(d @ a_t.T)  # (B, r)
    return truth, scale, scale + K16 * float((m_h @ np.abs(bm)).max())


def _check_ours(ids, scores, truth, scale) -> float:
    """Our ids: exactly top_k_ids of our own scores; the scores within the scale;
    the ids a top-K set of the truth within it. The larger share of tolerance."""
    from reference.deja_vu import top_k_ids
    from reference.testing import assert_close, assert_top_k

    ids, scores = ids.get(), scores.get()
    used = assert_close(scores, truth, "gpu", np.float32, scale)
    if not np.array_equal(ids, top_k_ids(scores, ids.shape[1])):
        raise AssertionError("ids differ from top_k_ids of the kernel's own scores")
    return max(used, assert_top_k(ids, truth, ids.shape[1], "gpu", np.float32, scale))


def _row(name, base, check, calls, timer) -> dict:
    """Validate check() (set 0: returns the share of tolerance used), then time."""
    row = dict(name=name, **base)
    try:
        row["error_used"] = check()
    except (AssertionError, ValueError, RuntimeError) as e:  # RuntimeError: torch's
        row["status"] = f"FAILED validation: {type(e).__name__}: {e}"
        print(
            f"  {name} r={base.get('r')} B={base['B']}: {row['status']}",
            file=sys.stderr,
        )
        return row
    return bench.finish(row, timer(calls))


def _graph(calls):
    return bench.time_cupy(calls, samples=40)


def _base(b: int, r, ceil: dict, copies: int, nbytes: int, flops: int, tc=False):
    base = dict(B=b, C=C, F=F, r=r, K=K, kept=KEPT, dtype="float16", bytes=nbytes)
    base.update(flops=flops, copies=copies)
    if ceil.get("read_bytes_per_s"):
        base["floor_us"] = nbytes / ceil["read_bytes_per_s"] * 1e6
    peak = ceil.get("gemm_fp16_flop_per_s" if tc else "gemm_fp32_flop_per_s")
    if peak:
        base["flop_floor_us"] = flops / peak * 1e6
    return base


def _ours(sets, b: int, r: int, ceil: dict, truth, version: int) -> list[dict]:
    """vN, vN_scores, vN_topk and (B > 1) vN_union over the rotated sets."""
    import cupy as cp

    n_ws = gp.workspace_elems(b, r, F)
    outs = [cp.full((b, K), -7, cp.int32) for _ in sets]
    wss = [cp.full(n_ws, np.nan, cp.float32) for _ in sets]
    cap = min(F, b * K)
    uouts = [cp.full(cap, -7, cp.int32) for _ in sets]
    ucnts = [cp.full(1, -7, cp.int32) for _ in sets]
    nbytes = gp.bytes_moved(b, C, r, F, K, 2)
    base = _base(b, r, ceil, len(sets), nbytes, gp.flops(b, C, r, F))
    base["version"] = version
    v = f"v{version}"

    def full(j):
        return gp.predict_topk(
            *sets[j], K, out=outs[j], workspace=wss[j], version=version
        )

    def check_full():
        full(0)
        scores = gp.split_workspace(wss[0], b, r, F)[1]
        return _check_ours(outs[0], scores, *truth[:2])

    def scores(j):
        return gp.predict_scores(*sets[j], workspace=wss[j], version=version)

    def check_scores():
        from reference.testing import assert_close

        got = cp.full((b, F), np.nan, cp.float32)  # poisoned: every element written
        got[...] = scores(0)
        return assert_close(got.get(), truth[0], "gpu", np.float32, truth[1])

    rng = range(len(sets))
    rows = [
        _row(v, base, check_full, [lambda j=j: full(j) for j in rng], _graph),
        _row(f"{v}_scores", dict(base, bytes=nbytes - 4 * b * K), check_scores,
             [lambda j=j: scores(j) for j in rng], _graph),
    ]  # fmt: skip
    recorded = [gp.split_workspace(ws, b, r, F)[1] for ws in wss]  # from the runs

    def topk(j):
        return gp.top_k(recorded[j], K, out=outs[j], version=version)

    def check_topk():
        from reference.deja_vu import top_k_ids

        outs[0].fill(-7)
        topk(0)
        want = top_k_ids(recorded[0].get(), K)
        if not np.array_equal(outs[0].get(), want):
            raise AssertionError("top_k differs from top_k_ids of the same scores")
        return 0.0

    tb = dict(base, bytes=4 * b * (F + K), flops=0)
    tb.pop("flop_floor_us", None)
    if ceil.get("read_bytes_per_s"):
        tb["floor_us"] = tb["bytes"] / ceil["read_bytes_per_s"] * 1e6
    rows.append(
        _row(f"{v}_topk", tb, check_topk, [lambda j=j: topk(j) for j in rng], _graph)
    )
    if b > 1:

        def both(j):
            full(j)
            return gp.union(outs[j], F, out=uouts[j], count=ucnts[j], check_ids=False)

        def check_both():
            used = check_full()
            both(0)
            ids = outs[0].get()
            want = np.union1d(ids.ravel(), [])
            n, got = int(ucnts[0].get()[0]), uouts[0].get()
            if (
                n != want.size
                or not np.array_equal(got[:n], want)
                or (got[n:] != -1).any()
            ):
                raise AssertionError("union_v1 is not the sorted union of the rows")
            return used

        ub = dict(base, bytes=nbytes + 4 * (b * K + cap))
        if ceil.get("read_bytes_per_s"):
            ub["floor_us"] = ub["bytes"] / ceil["read_bytes_per_s"] * 1e6
        rows.append(
            _row(
                f"{v}_union", ub, check_both, [lambda j=j: both(j) for j in rng], _graph
            )
        )
    return rows


def _torch_predict(sets, b: int, r: int, ceil: dict, truth) -> dict:
    nbytes = gp.bytes_moved(b, C, r, F, K, 2)
    base = _base(b, r, ceil, len(sets), nbytes, gp.flops(b, C, r, F), tc=True)
    if not bench.torch_available():
        return bench.torch_skipped("torch_predict", base)
    import cupy as cp

    torch = bench.torch_for_baselines()
    t = torch.from_dlpack
    calls, outs = [], []
    for x, mean, a_t, bm, bias in sets:
        o = cp.full((b, K), -7, cp.int32)
        args = [t(a) for a in (x, mean, a_t, bm, bias, o)]
        bufs = dict(
            xc=torch.empty((b, C), dtype=torch.float16, device="cuda"),
            h=torch.empty((b, r), dtype=torch.float16, device="cuda"),
            s=torch.empty((b, F), dtype=torch.float16, device="cuda"),
            v=torch.empty((b, K), dtype=torch.float16, device="cuda"),
            i=torch.empty((b, K), dtype=torch.int64, device="cuda"),
            si=torch.empty((b, K), dtype=torch.int64, device="cuda"),
            perm=torch.empty((b, K), dtype=torch.int64, device="cuda"),
        )

        def call(args=args, q=bufs):
            x, mean, a_t, bm, bias, o = args
            torch.sub(x, mean, out=q["xc"])
            torch.mm(q["xc"], a_t.t(), out=q["h"])
            torch.addmm(bias, q["h"], bm, out=q["s"])
            torch.topk(q["s"], K, dim=1, sorted=False, out=(q["v"], q["i"]))
            torch.sort(q["i"], dim=1, out=(q["si"], q["perm"]))
            o.copy_(q["si"])
            return o

        calls.append(call)
        outs.append(o)

    def check():
        from reference.testing import assert_top_k

        calls[0]()
        torch.cuda.synchronize()
        return assert_top_k(outs[0].get(), truth[0], K, "gpu", F16, truth[2])

    base = dict(base, torch=torch.__version__)
    return _row("torch_predict", base, check, calls, lambda c: bench.time_torch(c, 40))


# --- the MLP the predictor serves ----------------------------------------------------


def _mlps(rng, b: int, ids, ceil: dict) -> list[dict]:
    """torch_dense_mlp and sparse_mlp_v5 over ids (the union of the predicted
    rows of one input set), fp16, weights drawn as gpu/bench_deja_vu.py's."""
    import cupy as cp

    idx = np.asarray(ids, np.int32)
    k = idx.size
    n = bench.n_copies(gdv.bytes_moved(b, C, k, 2))
    sets = []
    for _ in range(n):
        w1 = (rng.standard_normal((F, C), dtype=cp.float32) / math.sqrt(C)).astype(F16)
        w2 = (
            rng.standard_normal((F, C), dtype=cp.float32) / math.sqrt(0.1 * F)
        ).astype(F16)
        b1 = (0.1 * rng.standard_normal(F, dtype=cp.float32)).astype(F16)
        b2 = (0.1 * rng.standard_normal(C, dtype=cp.float32)).astype(F16)
        sets.append((w1, b1, w2, b2))
    xs = [rng.standard_normal((b, C), dtype=cp.float32).astype(F16) for _ in sets]
    rows = [
        bench.guarded("torch_dense_mlp", dict(B=b, C=C, F=F, K=F), _torch_dense,
                      sets[:1], xs[:1], ceil),
        bench.guarded("sparse_mlp_v5", dict(B=b, C=C, F=F, K=k), _sparse,
                      sets, xs, idx, ceil),
    ]  # fmt: skip
    bench.free(sets)
    return rows


def _mlp_truth(x, w, idx, fp16_steps: bool):
    """float64 sparse MLP over idx (rows gathered on the host) and its scale;
    fp16_steps adds torch's fp16 z, a and y (u16 each, in the row's units K16)."""
    import cupy as cp

    from reference.deja_vu import SparseMLPWeights, sparse_mlp
    from reference.testing import sparse_mlp_scale

    w1, b1, w2, b2 = w
    di = cp.asarray(idx)
    g1, gb1, g2, gb2, x64 = (
        a.get().astype(np.float64) for a in (w1[di], b1[di], w2[di], b2, x)
    )
    ref = sparse_mlp(x64, SparseMLPWeights(g1, gb1, g2, gb2), np.arange(len(idx)))
    scale = sparse_mlp_scale(x64, g1, gb1, g2, gb2)
    if fp16_steps:
        z = x64 @ g1.T
        a = np.maximum(z + gb1, 0)
        scale += K16 * float(
            ((np.abs(z) + np.abs(a)) @ np.abs(g2) + np.abs(a @ g2)).max()
        )
    return ref, scale


def _mlp_base(b: int, k: int, ceil: dict, copies: int, nbytes: int) -> dict:
    base = dict(B=b, C=C, F=F, K=k, kept=k / F, dtype="float16", bytes=nbytes)
    base.update(flops=4 * b * k * C, copies=copies)
    if ceil.get("read_bytes_per_s"):
        base["floor_us"] = nbytes / ceil["read_bytes_per_s"] * 1e6
    return base


def _torch_dense(sets, xs, ceil) -> dict:
    b = xs[0].shape[0]
    base = _mlp_base(b, F, ceil, 1, gdv.dense_bytes(b, C, F, 2))
    if not bench.torch_available():
        return bench.torch_skipped("torch_dense_mlp", base)
    import cupy as cp

    from reference.testing import assert_close

    torch = bench.torch_for_baselines()
    (w1, b1, w2, b2), x = sets[0], xs[0]
    o = cp.full((b, C), np.nan, F16)
    args = [torch.from_dlpack(a) for a in (w1, b1, w2, b2, x, cp.empty((b, F), F16), o)]

    def call():
        w1, b1, w2, b2, x, z, y = args
        torch.addmm(b1, x, w1.t(), out=z)
        torch.relu_(z)
        torch.addmm(b2, z, w2, out=y)
        return o

    ref, scale = _mlp_truth(x, sets[0], np.arange(F), fp16_steps=True)

    def check():
        call()
        torch.cuda.synchronize()
        return assert_close(o.get(), ref, "gpu", F16, scale)

    base = dict(base, torch=torch.__version__)
    return _row(
        "torch_dense_mlp", base, check, [call], lambda c: bench.time_torch(c, 40)
    )


def _sparse(sets, xs, idx, ceil) -> dict:
    import cupy as cp

    from reference.testing import assert_close

    b, k = xs[0].shape[0], idx.size
    base = _mlp_base(b, k, ceil, len(sets), gdv.bytes_moved(b, C, k, 2))
    base["version"] = MLP_VERSION
    n_ws = max(gdv.workspace_elems(MLP_VERSION, b, C, k, "deterministic"), 1)
    outs = [cp.full((b, C), np.nan, F16) for _ in sets]
    wss = [cp.zeros(n_ws, cp.float32) for _ in sets]
    di = cp.asarray(idx)

    def call(j, check=False):
        return gdv.sparse_mlp(
            xs[j], *sets[j], di, version=MLP_VERSION, out=outs[j], workspace=wss[j],
            check_idx=check,
        )  # fmt: skip

    ref, scale = _mlp_truth(xs[0], sets[0], idx, fp16_steps=False)

    def check():
        return assert_close(call(0, True).get(), ref, "gpu", F16, scale)

    return _row(
        "sparse_mlp_v5",
        base,
        check,
        [lambda j=j: call(j) for j in range(len(sets))],
        _graph,
    )


def _mark_saved(rows: list[dict]) -> None:
    """Our rows (vN...): the MLP's saving beside the row's cost, same B. In bytes always
    (mlp_saved_bytes = dense - sparse MLP bytes, bytes_of_saved = the row's bytes
    over it); in time where both MLP rows are ok (mlp_saved_us = torch_dense_mlp -
    sparse_mlp_v5 medians, of_saved = the row's median over it)."""
    for b in {r["B"] for r in rows}:
        mlp = {r["name"]: r for r in rows if r["B"] == b and "bytes" in r}
        dense, sparse = mlp.get("torch_dense_mlp"), mlp.get("sparse_mlp_v5")
        mine = [r for r in rows if r["B"] == b and str(r["name"]).startswith("v")]
        if not (dense and sparse):
            continue
        saved_bytes = dense["bytes"] - sparse["bytes"]
        for r in mine:
            r["mlp_saved_bytes"] = saved_bytes
            r["bytes_of_saved"] = r["bytes"] / saved_bytes
        if not (bench.is_ok(dense) and bench.is_ok(sparse)):
            continue
        saved = dense["median_us"] - sparse["median_us"]
        for r in mine:
            r["mlp_saved_us"] = saved
            if bench.is_ok(r) and saved > 0:
                r["of_saved"] = r["median_us"] / saved


def run(quick: bool = False, ceil: dict | None = None) -> dict[str, list[dict]]:
    import cupy as cp

    from reference.deja_vu import top_k_ids

    ceil = ceil or {}
    rng = cp.random.default_rng(2023)
    rows: list[dict] = []
    for b in GRID.values("B", quick):
        ids = None
        for r in GRID.values("r", quick):
            n = bench.n_copies(gp.bytes_moved(b, C, r, F, K, 2))
            sets = _predictors(rng, n, b, r)
            truth = _truth(sets[0])
            if ids is None:  # the union of set 0's predicted rows feeds the MLPs
                ids = np.union1d(top_k_ids(truth[0], K).ravel(), [])
            for version in GRID.versions:
                rows += _ours(sets, b, r, ceil, truth, version)
            rows.append(bench.guarded("torch_predict", dict(B=b, r=r), _torch_predict,
                                      sets, b, r, ceil, truth))  # fmt: skip
            bench.free(sets)
        rows += _mlps(rng, b, ids, ceil)
    _mark_saved(rows)
    return {"deja_vu_predict": rows}
