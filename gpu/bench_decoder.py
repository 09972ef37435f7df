"""Benchmark of the capstone: the tricks composed in one decoder (via gpu/bench.py).

    python -m gpu.bench decoder [--quick] [--out results]

A Llama-shaped MHA decoder with RoPE, RMSNorm and a ReLU MLP (C = 4096, H = 32,
D = 128, F = 11008, L = 32, V = 32000), fp16, random weights (a step's cost does not
depend on them; W_K drawn with cond 4, as the K-only cache needs in fp16: chapter
3). One decode step of B sequences at cache length S, captured in a torch CUDA graph
with the glue on torch's stream (gpu.decoder.torch_gemm, on_torch_stream: CuPy
cannot capture cuBLAS), timed by bench.time_torch. Compositions (gpu/decoder.py):

  plain       K+V cache, dense MLP: our decoder without tricks
  pre         + the precomputed first layer
  dv10        + Deja Vu at 10 % per token: the ORACLE set of the step (each row's
              top 10 % of N2(h) W_in, united over the batch; random weights have
              no trained predictor), given to the captured step as fixed ids
  pre_dv10    both
  k           the K-only cache (slim attention, RoPE on read: rv1, the naive
              kernel, the only one that rotates), S = 1K, B <= 8
  x           the X cache (K and V rebuilt from X each step: one GEMM over the
              cache), S = 1K, B <= 8
  torch       the same model in PyTorch: matmul + SDPA over the same K+V caches
              (RoPE, RMSNorm in float32 statistics), under a CUDA graph

At each S, our plain decoder and torch's also run at the largest batch whose K+V
caches fit in CAP_MARGIN of the card's memory (capacity_batch; at_capacity rows):
the throughput where the K+V cache runs out of room. The K-only cache holds twice
that batch; its throughput there is not timed (rv1, the only kernel that rotates
on read, is the naive one).

Every composition reads caches built from one random past (gpu.decoder.fill_caches),
so its logits must agree with plain's: rel_err_vs_plain (||d logits|| / ||logits||)
is recorded, and exact compositions (not dv10) above 1e-2 fail. Floors:
bytes (gpu.decoder.step_bytes) / the read ceiling and FLOPs (step_flops) / the fp16
GEMM ceiling, the larger. cache_bytes, weight_bytes and memory_bytes give the
capacity (reference.decoder.max_cached_tokens: the largest B S that fits).
"""

from __future__ import annotations

import sys

import numpy as np

from gpu import bench
from gpu import decoder as gdec
from gpu import runtime as rt
from reference import common as cm
from reference import decoder as rdec

CFG = cm.DecoderConfig(V=32000, C=4096, H=32, G=32, D=128, F=11008, L=32,
                       norm="rmsnorm", act="relu", rot_dim=None)  # fmt: skip
F16 = np.float16
KEPT = 0.1
SEED = 2026
COMPOSITIONS = {
    "plain": rdec.Tricks(),
    "pre": rdec.Tricks(precompute=True),
    "dv10": rdec.Tricks(kept=KEPT),
    "pre_dv10": rdec.Tricks(precompute=True, kept=KEPT),
    "k": rdec.Tricks(cache="k"),
    "x": rdec.Tricks(cache="x"),
}
EXACT = ("plain", "pre", "k", "x")
SLOW = ("k", "x")  # naive paths: S = 1K, B <= 8 only
CAP_MARGIN = 0.75  # share of the card's memory the capacity rows may fill
GRID = bench.Grid(
    axes=dict(B=(1, 8, 64), S=(1024, 16384)),
    quick=dict(B=(1, 8), S=(1024,)),
    fixed=dict(
        C=CFG.C, H=CFG.H, D=CFG.D, F=CFG.F, L=CFG.L, V=CFG.V, dtype="float16", kept=KEPT
    ),  # fmt: skip
    versions=tuple(COMPOSITIONS),
    baselines={"torch": ("B", "S")},
)
COLUMNS = (
    bench.NAME,
    ("B", "B", ">4"),
    ("S", "S", ">6"),
    bench.MEDIAN,
    bench.SPREAD,
    bench.FLOOR,
    bench.OF_FLOOR,
    ("tok/s", "tokens_per_s", ">9.0f"),
    ("rel err", "rel_err_vs_plain", ">9.2e"),
    bench.VS_BEST,
)


def fits(tricks: rdec.Tricks, b: int, s: int, free: int) -> bool:
    """Caches, weights and a step's scratch (the X cache's rebuilt K and V) fit."""
    need = rdec.cache_bytes(CFG, tricks, b, s, 2) + rdec.weight_bytes(CFG, tricks, 2)
    if tricks.cache == "x":
        need += 3 * b * s * CFG.C * 2 * 2
    return need < 0.9 * free


def torch_step(base: gdec.Base, m: gdec.Model, st: gdec.State, tokens, pos: int):
    """The plain decoder's step in PyTorch fp16 over the plain model's weights and
    state's K+V caches: RMSNorm (float32 statistics), torch.matmul, RoPE
    (rotate-half), the new K and V written at pos, SDPA. Returns step() -> logits."""
    torch = bench.torch_for_baselines()
    import torch.nn.functional as tf

    t = torch.from_dlpack
    h, d, c = CFG.H, CFG.D, CFG.C
    lay = [(t(w.g1), t(w.wproj), t(w.wo), t(w.g2), t(w.w_in), t(w.w_out))
           for w in m.layers]  # fmt: skip
    caches = [(t(k), t(v)) for k, v in st.caches]
    cos, sin = (t(a)[pos].half() for a in (m.cos, m.sin))  # (D/2,)
    emb, gf, un, tok = t(base.embed), t(base.gf), t(base.unembed), t(tokens).long()
    b = st.b

    def norm(x, g):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).half() * g

    def rope(y):  # (B, H, D)
        y1, y2 = y[..., : d // 2], y[..., d // 2 :]
        return torch.cat([y1 * cos - y2 * sin, y2 * cos + y1 * sin], dim=-1)

    def step():
        x = emb[tok].float()
        for j, (g1, wqkv, wo, g2, w_in, w_out) in enumerate(lay):
            y = norm(x, g1) @ wqkv  # (B, 3C)
            q, k, v = y.view(b, 3, h, d).unbind(1)
            kc, vc = caches[j]
            kc[:, :, pos] = rope(k)
            vc[:, :, pos] = v
            o = tf.scaled_dot_product_attention(rope(q)[:, :, None], kc, vc)
            x = x + (o.reshape(b, c) @ wo).float()
            x = x + (torch.relu(norm(x, g2) @ w_in) @ w_out).float()
        return norm(x, gf) @ un

    return step


def _row(name, tricks, b, s, ceil, n_kept=None) -> dict:
    nbytes = gdec.step_bytes(CFG, tricks, b, s, 2, n_kept)
    flops = gdec.step_flops(CFG, tricks, b, s, n_kept)
    row = dict(
        name=name, B=b, S=s, cache=tricks.cache, precompute=tricks.precompute,
        kept=tricks.kept, n_kept=n_kept,
        cache_bytes=rdec.cache_bytes(CFG, tricks, b, s, 2),
        weight_bytes=rdec.weight_bytes(CFG, tricks, 2),
        C=CFG.C, H=CFG.H, D=CFG.D, F=CFG.F, L=CFG.L, V=CFG.V, dtype="float16",
    )  # fmt: skip
    return bench.set_floors(row, nbytes, flops, ceil)


def _finish(row, t):
    row = bench.finish(row, t)
    row["tokens_per_s"] = row["B"] / (row["median_us"] * 1e-6)
    return row


def _case(base, name, tricks, b, s, ceil, plain_logits, samples) -> tuple[dict, object]:
    """One composition at (B, S): build, fill, one checked eager step, then the
    captured step timed. Returns the row and the eager logits (numpy)."""
    import cupy as cp
    import torch

    m = gdec.from_base(base, tricks, n_pos=s)
    st = gdec.new_state(m, b, s, gemm=gdec.torch_gemm)
    gdec.fill_caches(base, m, st, SEED)
    tok = cp.asarray(np.random.default_rng(SEED + b).integers(0, CFG.V, b), np.int32)
    logits = gdec.on_torch_stream(lambda: gdec.decode_step(m, st, tok, s - 1))
    torch.cuda.synchronize()
    got = cp.asnumpy(logits).astype(np.float64)
    ids = None
    n_kept = None
    if tricks.kept is not None:
        ids = [st.oracle[j] for j in range(CFG.L)]
        n_kept = int(np.mean([int(i.size) for i in ids]))
    row = _row(name, tricks, b, s, ceil, n_kept)
    if not np.isfinite(got).all():
        row["status"] = "FAILED validation: non-finite logits"
        return row, None
    if plain_logits is not None:
        row["rel_err_vs_plain"] = bench.rel_err(got, plain_logits)
        if name in EXACT and not row["rel_err_vs_plain"] <= 1e-2:
            row["status"] = (
                f"FAILED validation: rel. error {row['rel_err_vs_plain']:.3g}"
            )
            return row, got

    def call():
        gdec.on_torch_stream(
            lambda: gdec.decode_step(m, st, tok, s - 1, ids, check_ids=False)
        )

    t = bench.time_torch(
        [call], samples=samples, warmup=2, capture_error_mode="thread_local"
    )
    return _finish(row, t), got


def _torch_case(base, b, s, ceil, plain_logits, samples) -> dict:
    import cupy as cp
    import torch

    row = _row("torch", rdec.Tricks(), b, s, ceil)
    row["torch"] = torch.__version__
    m = gdec.from_base(base, rdec.Tricks(), n_pos=s)
    st = gdec.new_state(m, b, s, gemm=gdec.torch_gemm)
    gdec.fill_caches(base, m, st, SEED)
    tok = cp.asarray(np.random.default_rng(SEED + b).integers(0, CFG.V, b), np.int32)
    step = torch_step(base, m, st, tok, s - 1)
    got = step().float()
    torch.cuda.synchronize()
    row["rel_err_vs_plain"] = bench.rel_err(
        cp.asnumpy(cp.from_dlpack(got)), plain_logits
    )
    if not row["rel_err_vs_plain"] <= 1e-2:
        row["status"] = f"FAILED validation: rel. error {row['rel_err_vs_plain']:.3g}"
        return row
    return _finish(row, bench.time_torch([step], samples=samples, warmup=2))


def _free():
    import cupy as cp
    import torch

    cp.get_default_memory_pool().free_all_blocks()
    torch.cuda.empty_cache()


def _point(base, b, s, names, ceil, mem) -> list[dict]:
    """The compositions ``names`` that fit at (B, S), then torch's plain decoder
    (validated against ours)."""
    samples = 10 if b * s <= 8 * 1024 else 5
    rows, plain = [], None
    for name in names:
        tricks = COMPOSITIONS[name]
        if name in SLOW and (s > 1024 or b > 8):
            continue
        if not fits(tricks, b, s, mem):
            continue
        try:
            row, got = _case(base, name, tricks, b, s, ceil, plain, samples)
        except Exception as e:  # noqa: BLE001 - recorded, the run goes on
            row = _row(name, tricks, b, s, ceil)
            row["status"] = f"FAILED: {type(e).__name__}: {e}"
            got = None
        print(f"  {name} B={b} S={s}: {row.get('median_us')} us "
              f"{row.get('status')}", file=sys.stderr)  # fmt: skip
        if name == "plain":
            plain = got
        rows.append(row)
        _free()
    if plain is not None:
        try:
            rows.append(_torch_case(base, b, s, ceil, plain, samples))
        except Exception as e:  # noqa: BLE001
            row = _row("torch", rdec.Tricks(), b, s, ceil)
            row["status"] = f"FAILED: {type(e).__name__}: {e}"
            rows.append(row)
        _free()
    return rows


def capacity_batch(s: int, mem: int) -> int:
    """The largest B whose K+V caches of S tokens fit beside the weights in
    CAP_MARGIN of the card's memory (the rest: the copies from_base makes, the
    caches' filling, a step's scratch)."""
    tokens = rdec.max_cached_tokens(CFG, rdec.Tricks(), int(CAP_MARGIN * mem), 2)
    return tokens // s


def run(quick: bool = False, ceil: dict | None = None, tables=None) -> dict:
    """The table "decoder": every composition that fits at each (B, S) of the
    grid, torch's plain decoder beside; then, at each S, our plain decoder and
    torch's at the largest batch the K+V cache allows (capacity_batch; rows with
    at_capacity). Every row carries the card's memory_bytes."""
    ceil = ceil or {}
    if not bench.torch_available():
        print("decoder: needs torch (a captured step's GEMMs)", file=sys.stderr)
        return {}
    bench.torch_for_baselines()  # torch's settings for every row, ours included
    base = gdec.random_base(CFG, F16, SEED)
    mem = rt.device_info()["memory_bytes"]
    rows = []
    for s in GRID.values("S", quick):
        for b in GRID.values("B", quick):
            rows += _point(base, b, s, tuple(COMPOSITIONS), ceil, mem)
    for s in GRID.values("S", quick):
        b = capacity_batch(s, mem)
        if b >= 1 and b not in GRID.values("B", quick):
            for r in _point(base, b, s, ("plain",), ceil, mem):
                rows.append(dict(r, at_capacity=True))
    for r in rows:
        r["memory_bytes"] = mem  # the capacity: reference.decoder.max_cached_tokens
    return {"decoder": rows}
