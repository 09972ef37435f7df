"""Benchmark cases of the slim-attention chapter (run through gpu/bench.py).

    python -m gpu.bench slim_attention [--quick] [--out results]

Decode, fp16, H = 32, D = 128 (C = 4096), B in {1, 8, 64}, S from 1K to 64K (where
the K+V baseline fits): the K-only kernels (v1-v3) and the X-cache kernel (xv3)
against our K+V decode kernel (attention v7) and torch SDPA over K and V, measured in
the same run on the same card. Every row is validated against the float64 truth
first. Each K-only/X-cache input set carries its own weights (W_KV, or W_K and W_V),
rotated with the cache, so the weights are read from HBM as in a model whose layers
each have their own.

Floors: K-only = (K cache + W_KV) bytes; X cache = (X cache + W_K + W_V) bytes; K+V =
(K + V) bytes; each over the measured read bandwidth.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np

from gpu import bench
from gpu import slim_attention as sa

H, D = 32, 128
C = H * D


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
    return bench._run_case(name, base, calls, truth, np.float16, n_split=n)


def decode(quick: bool, read_bw) -> list[dict]:
    import cupy as cp

    from gpu import attention as att

    bs, ss = (
        ((1, 8), (1024, 16384)) if quick else ((1, 8, 64), (1024, 4096, 16384, 65536))
    )
    rows = []
    rng = cp.random.default_rng(2025)
    for b in bs:
        for s in ss:
            if 4 * b * s * C > 40e9:  # K + V of the baseline: at most 40 GB
                continue
            # baselines: K+V, our v7 and torch SDPA
            kv_sets, kv_truth, kv_base = bench._attention_case(rng, b, s, read_bw)
            n7 = att.split_plan(b, H, s, None, 7)[0]
            rows.append(
                bench._run_launcher(
                    "kv_v7",
                    partial(bench._launch_version, 7, None),
                    att.workspace_elems(7, b, H, s, D),
                    kv_sets,
                    kv_truth,
                    kv_base,
                    n_split=n7,
                )
            )
            if bench.torch_available():
                rows.append(
                    bench._run_torch_sdpa(kv_base, kv_sets, kv_truth, np.float16)
                )
            bench._free(kv_sets)
            # K-only
            sets, base = _sets(rng, b, s, False, read_bw)
            truth = _truth(*sets[0][:4])
            for ver in (1, 2, 3, 4, 5, 6):
                if ver == 1 and b * s > 16384:
                    continue  # v1 reads the cache H times; its trend is clear below
                rows.append(_run(f"slim_v{ver}", ver, False, sets, truth, base))
            bench._free(sets)
            # X cache
            sets, base = _sets(rng, b, s, True, read_bw)
            q, cache, w, b_v, wkt = sets[0]
            truth = _truth(q, cache, w, b_v, wkt, fp16_qt=True)
            for ver in (3, 4, 5):
                rows.append(_run(f"x_v{ver}", ver, True, sets, truth, base))
            bench._free(sets)
    return rows


def split_sweep(read_bw) -> list[dict]:
    """v3's and v4's time against n_split at B = 1 and 8, S = 16K (split_plan's
    byte model picks one of these)."""
    import cupy as cp

    rows = []
    rng = cp.random.default_rng(5)
    for b in (1, 8):
        sets, base = _sets(rng, b, 16384, False, read_bw)
        truth = _truth(*sets[0][:4])
        for ver in (3, 6):
            for n in (1, 2, 4, 8, 15, 16, 30, 32, 64):
                rows.append(_run(f"slim_v{ver}", ver, False, sets, truth, base, n))
        bench._free(sets)
    return rows


def run(quick: bool = False, ceil: dict | None = None) -> dict[str, list[dict]]:
    read_bw = (ceil or {}).get("read_bytes_per_s")
    out = {"slim_attention": decode(quick, read_bw)}
    if not quick:
        out["slim_attention_split"] = split_sweep(read_bw)
    return out


def print_table(rows: list[dict]) -> None:
    bench.print_table(rows, extra="n_split")
