"""Benchmark cases of the slim-attention chapter (run through gpu/bench.py).

    python -m gpu.bench slim_attention [--quick] [--out results]

Decode, fp16, H = 32, D = 128 (C = 4096), GRID's B x S (B in {1, 8, 64}, S from 1K
to 64K, where the K+V baseline fits): the K-only kernels (slim_v1-v8 and v10-v12; v9
ran in a trial of its own) and the X-cache kernels (x_v3-v5) against our K+V decode
kernel (kv_v7, attention v7) and torch SDPA over K and V (torch_sdpa, under CUDA
graphs), measured in the same run on the same card. Every row is validated against
the float64 truth first. Each K-only/X-cache input set carries its own weights (W_KV,
or W_K and W_V), rotated with the cache, so the weights are read from HBM as in a
model whose layers each have their own. Every kernel row gets vs_best_baseline
against the faster of kv_v7 and torch_sdpa at its (B, S) (gpu.bench.mark_baselines).

Floors: K-only = (K cache + W_KV) bytes; X cache = (X cache + W_K + W_V) bytes; K+V =
(K + V) bytes; each over the measured read bandwidth."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import numpy as np

from gpu import bench
from gpu import bench_attention as ba
from gpu import slim_attention as sa

H, D = 32, 128
C = H * D
GRID = bench.Grid(
    axes=dict(B=(1, 8, 64), S=(1024, 4096, 16384, 65536)),
    quick=dict(B=(1, 8), S=(1024, 16384)),
    fixed=dict(
        H=H, D=D, C=C, dtype="float16",
        kv_max_bytes=40e9,  # cases whose K + V baseline exceeds this are left out
        v1_max_bs=16384,  # v1 reads the cache H times: only up to this B S
    ),
    # v9 ran in a trial of its own (results/<card>/slim_attention_v9_trial.json)
    versions=dict(slim=(1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12), x=(3, 4, 5)),
    baselines={"torch_sdpa": ("B", "S"), "kv_v7": ("B", "S")},
    sweeps=dict(
        slim_attention_split=dict(
            B=(1, 8), S=16384, versions=(7, 8, 12),
            n_split=(1, 2, 4, 8, 15, 16, 30, 32, 64),
        ),
        # the crossover at finer steps (python -m gpu.bench slim_crossover; not
        # part of the chapter's default run): the default versions and baselines
        slim_attention_crossover=dict(
            B=(1, 2, 4, 8, 16, 64),
            S=(1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072),
        ),
    ),
)  # fmt: skip
COLUMNS = ba.COLUMNS


def _truth(q, cache, w, b_v, w_kt=None, fp16_qt=False):
    """float64 truth for batch rows {0, B-1}, in the accumulate order
    (u = p . cache, out = u . W_h + b): algebraically the baseline, and cheap."""
    import cupy as cp

    from reference.common import softmax
    from reference.testing import slim_kernel_scale

    wh = cp.asnumpy(w).astype(np.float64).reshape(C, H, D)
    bias = 0.0 if b_v is None else cp.asnumpy(b_v).astype(np.float64).reshape(H, D)
    wk = None
    if w_kt is not None:  # (H, D, C) -> W_K (C, C)
        wk = cp.asnumpy(w_kt).astype(np.float64).transpose(2, 0, 1).reshape(C, C)
    truth = []
    for b in sorted({0, q.shape[0] - 1}):
        qb = cp.asnumpy(q[b]).astype(np.float64)  # (H, D)
        xb = cp.asnumpy(cache[b]).astype(np.float64)  # (S, C)
        if wk is None:
            s = np.einsum("hd,shd->hs", qb, xb.reshape(-1, H, D)) / math.sqrt(D)
        else:
            qt = np.einsum("hd,chd->hc", qb, wk.reshape(C, H, D))
            s = qt @ xb.T / math.sqrt(D)
        u = softmax(s, axis=-1) @ xb  # (H, C)
        ref = np.einsum("hc,chd->hd", u, wh) + bias
        scale = slim_kernel_scale(
            qb[None], xb[None], wh.reshape(C, C), wk, fp16_p=True, fp16_qt=fp16_qt
        )
        truth.append((b, ref[None], scale))
    return truth


def _sets(rng, b, s, xcache, read_bw):
    nbytes = sa.bytes_moved(b, s, C, 2, xcache)
    sets = []
    for _ in range(bench.n_copies(nbytes)):
        q = bench.random_normal(rng, (b, H, D), np.float16)
        cache = bench.random_normal(rng, (b, s, C), np.float16)
        w = (rng.standard_normal((C, C), dtype=np.float32) / math.sqrt(C)).astype(
            np.float16
        )
        b_v = rng.standard_normal(C, dtype=np.float32).astype(np.float16)
        wkt = None
        if xcache:  # keep the scores O(1): x ~ N(0, 1), W_K ~ N(0, 1/C)
            wk = (rng.standard_normal((C, C), dtype=np.float32) / math.sqrt(C)).astype(
                np.float16
            )
            wkt = sa.xcache_wkt(wk, H)
            del wk
        sets.append((q, cache, w, b_v, wkt))
    base = dict(
        B=b,
        H=H,
        G=H,
        S=s,
        D=D,
        dtype="float16",
        bytes=nbytes,
        flops=sa.flops(b, H, s, D, xcache),
        copies=len(sets),
    )
    if read_bw:
        base["floor_us"] = nbytes / read_bw * 1e6
    return sets, base


def _launch(version, xcache, n_split, st, out, ws):
    q, cache, w, b_v, wkt = st
    if xcache:
        return sa.xcache_decode(
            q,
            cache,
            wkt,
            w,
            b_v,
            version=version,
            n_split=n_split,
            out=out,
            workspace=ws,
        )
    return sa.slim_decode(
        q, cache, w, b_v, version=version, n_split=n_split, out=out, workspace=ws
    )


def _run(name, version, xcache, sets, truth, base, n_split=None):
    import cupy as cp

    b, s = base["B"], base["S"]
    ws_n = sa.workspace_elems(version, b, H, s, D, n_split, xcache)
    calls = []
    for st in sets:
        out = cp.full((b, H, D), np.nan, dtype=np.float16)
        ws = cp.zeros(ws_n, cp.float32)
        calls.append(partial(_launch, version, xcache, n_split, st, out, ws))
    n = 1 if version == 1 else sa.plan(version, b, H, s, D, n_split)[0]
    return ba.run_case(name, base, calls, truth, np.float16, n_split=n)


def case_rows(rng, b, s, read_bw, slim_versions, x_versions) -> list[dict]:
    """One (B, S) case: the baselines (our K+V kernel v7 and torch SDPA), then the
    K-only versions and the X-cache versions named, each against its float64 truth."""
    from gpu import attention as att

    fixed = GRID.fixed
    rows = []
    kv_sets, kv_truth, kv_base = ba.attention_case(rng, b, s, read_bw)
    n7 = att.split_plan(b, H, s, None, 7)[0]
    rows.append(
        ba.run_launcher(
            "kv_v7",
            partial(ba.launch_version, 7, None),
            att.workspace_elems(7, b, H, s, D),
            kv_sets,
            kv_truth,
            kv_base,
            n_split=n7,
        )
    )
    rows.append(ba.run_torch_sdpa(kv_base, kv_sets, kv_truth, np.float16))
    bench.free(kv_sets)
    # K-only
    sets, base = _sets(rng, b, s, False, read_bw)
    truth = _truth(*sets[0][:4])
    for ver in slim_versions:
        if ver == 1 and b * s > fixed["v1_max_bs"]:
            continue  # v1 reads the cache H times; its trend is clear below
        rows.append(_run(f"slim_v{ver}", ver, False, sets, truth, base))
    bench.free(sets)
    # X cache
    sets, base = _sets(rng, b, s, True, read_bw)
    q, cache, w, b_v, wkt = sets[0]
    truth = _truth(q, cache, w, b_v, wkt, fp16_qt=True)
    for ver in x_versions:
        rows.append(_run(f"x_v{ver}", ver, True, sets, truth, base))
    bench.free(sets)
    return rows


def fits(b: int, s: int) -> bool:
    """Whether the case's K + V baseline stays under GRID's kv_max_bytes."""
    return 4 * b * s * C <= GRID.fixed["kv_max_bytes"]


def decode(quick: bool, read_bw) -> list[dict]:
    import cupy as cp

    versions = GRID.versions
    rows = []
    rng = cp.random.default_rng(2025)
    for b in GRID.values("B", quick):
        for s in GRID.values("S", quick):
            if fits(b, s):
                rows += case_rows(rng, b, s, read_bw, versions["slim"], versions["x"])
    return rows


def crossover(read_bw) -> list[dict]:
    """The launchers' default versions (sa.DEFAULT_FAST, sa.XDEFAULT_FAST) and both
    baselines over GRID's slim_attention_crossover cases, for the chapter's plot of
    time over the faster baseline's by cached tokens."""
    import cupy as cp

    sweep = GRID.sweeps["slim_attention_crossover"]
    rows = []
    rng = cp.random.default_rng(7)
    for b in sweep["B"]:
        for s in sweep["S"]:
            if fits(b, s):
                rows += case_rows(
                    rng, b, s, read_bw, (sa.DEFAULT_FAST,), (sa.XDEFAULT_FAST,)
                )
    return rows


def split_sweep(read_bw) -> list[dict]:
    """v7's, v8's and v12's time against n_split at B = 1 and 8, S = 16K (split_plan's
    byte model picks one of these): GRID's slim_attention_split."""
    import cupy as cp

    sweep = GRID.sweeps["slim_attention_split"]
    rows = []
    rng = cp.random.default_rng(5)
    for b in sweep["B"]:
        sets, base = _sets(rng, b, sweep["S"], False, read_bw)
        truth = _truth(*sets[0][:4])
        for ver in sweep["versions"]:
            for n in sweep["n_split"]:
                rows.append(_run(f"slim_v{ver}", ver, False, sets, truth, base, n))
        bench.free(sets)
    return rows


MINILM_NPZ = Path(".data/minilm_slim.npz")  # tools/export_minilm_slim.py writes it


def _minilm_layer(x, w, h, rows, i):
    """One MiniLM layer through the GPU kernels in float16 (the launchers' default
    version for its shape), beside reference.slim_attention.cache_errors's float16
    study of the same layer. Each kernel is first checked against the float64
    result on its own stored inputs (the tolerance of slim_kernel_scale); then both
    studies' errors against the float64 K+V truth are recorded."""
    import cupy as cp

    from reference import slim_attention as rsa
    from reference.common import AttnWeights
    from reference.testing import assert_close, slim_kernel_scale

    t, c = x.shape
    d = c // h
    aw = AttnWeights(w["w_q"], w["w_k"], w["w_v"], None, w["b_q"], w["b_k"], w["b_v"])
    study = rsa.cache_errors(x, aw, h, "float16")
    truth = rsa.encoder_truth(x, aw, h)

    def st(a):  # stored in float16, arithmetic in float32 (as the study)
        return rsa.stored(a, "float16")

    def f16(a):
        return np.ascontiguousarray(np.asarray(a, np.float32).astype(np.float16))

    xs = st(x)
    q16 = f16((xs @ st(w["w_q"]) + st(w["b_q"])).reshape(t, h, d))
    bv16 = f16(w["b_v"])
    k16 = f16(np.broadcast_to(xs @ st(w["w_k"]), (t, t, c)))
    x16 = f16(np.broadcast_to(xs, (t, t, c)))
    wkv16, wk16, wv16 = (
        f16(a) for a in (rsa.fold_w_kv(w["w_k"], w["w_v"]), w["w_k"], w["w_v"])
    )
    f64 = [np.asarray(a, np.float64) for a in (q16, k16, x16, wkv16, wk16, wv16, bv16)]
    dev = [cp.asarray(a) for a in (q16, k16, x16, wkv16, wk16, wv16, bv16)]
    for cache in ("k_only", "x_cache"):
        xc = cache == "x_cache"
        ver = sa.default_version(dev[0], xcache=xc)
        fast = ver != 1
        if xc:
            got = sa.xcache_decode(dev[0], dev[2], sa.xcache_wkt(dev[4], h), dev[5],
                                   dev[6])  # fmt: skip
            same = rsa.xcache_decode(f64[0], f64[2], f64[4], f64[5], f64[6])
            scale = slim_kernel_scale(q16, x16, wv16, wk16, fast, fast)
        else:
            got = sa.slim_decode(dev[0], dev[1], dev[3], dev[6])
            same = rsa.slim_decode(f64[0], f64[1], f64[3], f64[6], order="accumulate_k")
            scale = slim_kernel_scale(q16, k16, wkv16, fp16_p=fast)
        got = cp.asnumpy(got)
        row = dict(name=f"minilm_{cache}", layer=i, T=t, C=c, H=h, D=d,
                   dtype="float16", version=ver, cond_k=study["cond_k"],
                   numpy_rel_error=study[cache], kv_rel_error=study["kv"],
                   gpu_rel_error=rsa.rel_error(got, truth))  # fmt: skip
        try:
            row["error_used"] = assert_close(got, same, "gpu", np.float16, scale)
            row["status"] = "ok"
        except AssertionError as e:
            row["status"] = f"failed validation: {str(e).splitlines()[0]}"
        rows.append(row)


def minilm_errors(path: Path = MINILM_NPZ) -> list[dict]:
    """The chapter's MiniLM study of the float16 caches, on the GPU kernels: one
    row per layer and cache (K-only, X cache). Needs the arrays that
    tools/export_minilm_slim.py writes (the GPU machine has no MiniLM package);
    without them, one skipped row (not recorded)."""
    if not Path(path).exists():
        why = f"skipped: {path} not found (tools/export_minilm_slim.py, then carry it)"
        return [dict(name="minilm", status=why)]
    z = np.load(path)
    h, rows = int(z["n_heads"]), []
    names = ("w_q", "w_k", "w_v", "b_q", "b_k", "b_v")
    i = 0
    while f"x{i}" in z:
        _minilm_layer(z[f"x{i}"], {n: z[f"{n}{i}"] for n in names}, h, rows, i)
        i += 1
    return rows


def run(
    quick: bool = False, ceil: dict | None = None, tables: tuple | None = None
) -> dict[str, list[dict]]:
    """The chapter's tables: slim_attention, slim_attention_split and
    slim_attention_minilm by default (quick: the first alone); ``tables`` picks
    others (slim_attention_crossover, a run of its own)."""
    read_bw = (ceil or {}).get("read_bytes_per_s")
    if tables is None:
        tables = ("slim_attention",) + (
            () if quick else ("slim_attention_split", "slim_attention_minilm")
        )
    makers = {
        "slim_attention": lambda: decode(quick, read_bw),
        "slim_attention_split": lambda: split_sweep(read_bw),
        "slim_attention_minilm": minilm_errors,
        "slim_attention_crossover": lambda: crossover(read_bw),
    }
    return {name: makers[name]() for name in tables}
