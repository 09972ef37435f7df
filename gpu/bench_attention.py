"""Benchmark cases of chapter 1, "Measuring a kernel": standard decode attention.

    python -m gpu.bench attention [--quick] [--version N] [--out results]
    python -m gpu.bench split [--out results]   the n_split sweep alone
    python -m gpu.bench tiles [--out results]   the v9 tile experiment (not in "all")

Decode, fp16, H = G = 32, D = 128: every version of gpu/attention.cu (v1-v8) and
torch's scaled_dot_product_attention on the same tensors, B in {1, 8, 64} x S in
{1K, 4K, 16K, 32K} (quick: B in {1, 8}, S in {1K, 16K}); v1 only up to B S = 128K
(it is ~10x slower; its trend is clear below). Every row is validated against the
float64 reference (batch rows 0 and B-1) first, outputs poisoned with NaN; torch's
SDPA is timed under CUDA graphs as our kernels are, over the same rotated inputs.
Floor: bytes_moved (K and V once, q and out) / the read ceiling.

Tables: "attention" (the grid above), "attention_split" (n_split from 1 to 128 at
four cases, versions 4, 6, 7, 8; not under --quick) and, only when asked,
"attention_tiles" (v9: v7 with other tile shapes, against v7 and SDPA).
The helpers (attention_case, run_launcher, launch_version, run_torch_sdpa) are
public: gpu/bench_slim_attention.py times its K+V baselines with them.
"""

from __future__ import annotations

import sys
from functools import partial

import numpy as np

from gpu import bench

GRID = bench.Grid(
    axes=dict(B=(1, 8, 64), S=(1024, 4096, 16384, 32768)),
    quick=dict(B=(1, 8), S=(1024, 16384)),
    fixed=dict(H=32, G=32, D=128, dtype="float16", v1_max_bs=8 * 16384),
    versions=(1, 2, 3, 4, 5, 6, 7, 8),
    baselines={"torch_sdpa": ("B", "S")},
    sweeps=dict(
        attention_split=dict(
            cases=((1, 1024), (8, 1024), (1, 16384), (8, 16384)),  # (B, S)
            versions=(4, 6, 7, 8),
            n_split=(1, 2, 4, 8, 16, 32, 64, 128),  # those with 32 n_split <= S
        ),
        attention_tiles=dict(
            cases=((1, 4096), (1, 16384), (8, 1024), (64, 1024)),
            n_split=(1, 2, 4, 8, 16),  # those with 128 n_split <= S
        ),
    ),
)
COLUMNS = (
    bench.NAME,
    ("B", "B", ">4"),
    ("S", "S", ">7"),
    bench.MEDIAN,
    bench.SPREAD,
    bench.GBPS,
    bench.FLOOR,
    bench.OF_FLOOR,
    bench.ERR,
    ("n_split", "n_split", ">8"),
    bench.VS_BEST,
)


def attention_truth(q, k, v) -> list[tuple[int, np.ndarray, float]]:
    """The float64 NumPy reference for batch rows {0, B-1} of one input set, with
    each row's error scale: [(b, ref (1, H, D), scale)]. Computed once per case."""
    import cupy as cp

    from reference.common import decode_attention
    from reference.testing import attention_scale

    truth = []
    for b in sorted({0, q.shape[0] - 1}):
        qb, kb, vb = (cp.asnumpy(x[b : b + 1]).astype(np.float64) for x in (q, k, v))
        truth.append((b, decode_attention(qb, kb, vb), attention_scale(qb, kb, vb)))
    return truth


def validate_attention(fn, truth, dtype) -> float:
    """Compare fn()'s output (B, H, D) with the reference rows in ``truth``.

    Returns the fraction of the tolerance used; raises AssertionError on failure."""
    import cupy as cp

    from reference.testing import assert_close

    out = cp.asnumpy(fn())
    return max(
        assert_close(out[b : b + 1], ref, "gpu", dtype, sc) for b, ref, sc in truth
    )


def attention_case(rng, b: int, s: int, read_bw, h: int = 32, d: int = 128):
    """One benchmark case of fp16 decode attention (H = G = h): the input sets to
    rotate (together > 2x L2), the float64 truth for the first set, and the fields
    every row of this case carries (shape, bytes, FLOPs, floor)."""
    from gpu import attention as att

    nbytes = att.bytes_moved(b, h, h, s, d, 2)
    shapes = ((b, h, d), (b, h, s, d), (b, h, s, d))  # q, K, V
    sets = [
        tuple(bench.random_normal(rng, sh, np.float16) for sh in shapes)
        for _ in range(bench.n_copies(nbytes))
    ]
    base = dict(
        B=b,
        H=h,
        G=h,
        S=s,
        D=d,
        dtype="float16",
        bytes=nbytes,
        flops=att.flops(b, h, s, d),
        copies=len(sets),
    )
    if read_bw:
        base["floor_us"] = nbytes / read_bw * 1e6
    return sets, attention_truth(*sets[0]), base


def _samples(base: dict) -> int:
    return 20 if base["bytes"] > 1 << 30 else 40


def run_case(name: str, base: dict, calls, truth, dtype, **extra) -> dict:
    """Validate calls[0] against truth, then time every call in a CUDA graph."""
    row = dict(name=name, **base, **extra)
    try:
        row["error_used"] = validate_attention(calls[0], truth, dtype)
    except AssertionError as e:
        row["status"] = f"FAILED validation: {e}"
        print(f"  {name}: {row['status']}", file=sys.stderr)
        return row
    return bench.finish(row, bench.time_cupy(calls, samples=_samples(base)))


def run_launcher(name, launch, ws_elems: int, sets, truth, base, **extra) -> dict:
    """Validate, then time ``launch(qkv, out, workspace) -> out`` over every input
    set, each with its own NaN-poisoned output and zeroed workspace."""
    import cupy as cp

    b, h, d = base["B"], base["H"], base["D"]
    outs = [cp.full((b, h, d), np.nan, dtype=np.float16) for _ in sets]
    wss = [cp.zeros(max(ws_elems, 1), dtype=cp.float32) for _ in sets]
    calls = [
        partial(launch, st, o, w) for st, o, w in zip(sets, outs, wss, strict=True)
    ]
    return run_case(name, base, calls, truth, np.float16, **extra)


def launch_version(version, n_split, qkv, out, ws):
    from gpu import attention as att

    return att.decode_attention(
        *qkv, version=version, n_split=n_split, out=out, workspace=ws
    )


def launch_tile(u, nw, n_split, qkv, out, ws):
    from gpu import attention as att

    if (u, nw) == (4, 4):  # v7 itself, through its own launcher
        return launch_version(7, n_split, qkv, out, ws)
    return att.decode_attention_v9(
        *qkv, u=u, nw=nw, n_split=n_split, out=out, workspace=ws
    )


def run_torch_sdpa(base: dict, sets, truth, dtype) -> dict:
    """torch's scaled_dot_product_attention over the same rotated sets, validated
    against the same truth, timed under CUDA graphs (bench.time_torch); a failure
    of any kind is a failed row (bench.guarded), never the end of the chapter."""
    return bench.guarded("torch_sdpa", base, _torch_sdpa_row, base, sets, truth, dtype)


def _torch_sdpa_row(base: dict, sets, truth, dtype) -> dict:
    if not bench.torch_available():
        return bench.torch_skipped("torch_sdpa", base)
    import cupy as cp
    import torch
    import torch.nn.functional as F

    tq = [
        (torch.from_dlpack(q)[:, :, None], torch.from_dlpack(k), torch.from_dlpack(v))
        for q, k, v in sets
    ]
    gqa = base["H"] != base["G"]
    calls = [
        (lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa))
        for q, k, v in tq
    ]
    row = dict(name="torch_sdpa", torch=torch.__version__, **base)

    def first():
        out = calls[0]()[:, :, 0].contiguous()
        torch.cuda.synchronize()
        return cp.from_dlpack(out)

    try:
        row["error_used"] = validate_attention(first, truth, dtype)
    except (AssertionError, RuntimeError) as e:  # RuntimeError: torch's own
        row["status"] = f"FAILED validation: {type(e).__name__}: {e}"
        print(f"  torch_sdpa: {row['status']}", file=sys.stderr)
        return row
    return bench.finish(row, bench.time_torch(calls, samples=_samples(base)))


def attention(
    quick: bool = False, versions=GRID.versions, ceil: dict | None = None
) -> list[dict]:
    """Decode attention, H = G = 32, D = 128, fp16: our versions and torch SDPA
    over GRID's B x S."""
    import cupy as cp

    from gpu import attention as att

    read_bw = (ceil or bench.ceilings_or_recorded()).get("read_bytes_per_s")
    rows = []
    rng = cp.random.default_rng(2026)
    for b in GRID.values("B", quick):
        for s in GRID.values("S", quick):
            sets, truth, base = attention_case(rng, b, s, read_bw)
            h, d = base["H"], base["D"]
            for ver in versions:
                if ver == 1 and b * s > GRID.fixed["v1_max_bs"] and not quick:
                    continue  # v1 is ~10x slower; its trend is clear from smaller sizes
                n = att.split_plan(b, h, s, None, ver)[0] if ver >= 3 else 1
                launch = partial(launch_version, ver, None)
                ws_elems = att.workspace_elems(ver, b, h, s, d)
                rows.append(
                    run_launcher(
                        f"v{ver}", launch, ws_elems, sets, truth, base, n_split=n
                    )
                )
            rows.append(run_torch_sdpa(base, sets, truth, np.float16))
            bench.free(sets)
    return rows


def split_sweep(ceil: dict | None = None) -> list[dict]:
    """How the number of S-chunks (blocks per (b, h)) moves time: GRID's
    attention_split cases, H = G = 32, D = 128, fp16, n_split from 1 to 128."""
    import cupy as cp

    from gpu import attention as att

    sweep = GRID.sweeps["attention_split"]
    read_bw = (ceil or bench.ceilings_or_recorded()).get("read_bytes_per_s")
    rng = cp.random.default_rng(7)
    rows = []
    for b, s in sweep["cases"]:
        sets, truth, base = attention_case(rng, b, s, read_bw)
        h, d = base["H"], base["D"]
        for ver in sweep["versions"]:
            for n in (n for n in sweep["n_split"] if n * 32 <= s):
                launch = partial(launch_version, ver, n)
                ws_elems = att.workspace_elems(ver, b, h, s, d, n)
                rows.append(
                    run_launcher(
                        f"v{ver}", launch, ws_elems, sets, truth, base, n_split=n
                    )
                )
        bench.free(sets)
    return rows


def tile_sweep(ceil: dict | None = None) -> list[dict]:
    """v9 (v7 with U rows per group and NW warps per block) against v7 and SDPA where
    v7 trails SDPA: GRID's attention_tiles cases; fp16, D = 128."""
    import cupy as cp

    from gpu import attention as att

    sweep = GRID.sweeps["attention_tiles"]
    read_bw = (ceil or bench.ceilings_or_recorded()).get("read_bytes_per_s")
    rng = cp.random.default_rng(9)
    rows = []
    for b, s in sweep["cases"]:
        sets, truth, base = attention_case(rng, b, s, read_bw)
        h, d = base["H"], base["D"]
        for u, nw in ((4, 4),) + att.V9_TILES:
            for n in (n for n in sweep["n_split"] if n * 128 <= s):
                name = "v7" if (u, nw) == (4, 4) else f"v9_u{u}w{nw}"
                launch = partial(launch_tile, u, nw, n)
                ws_elems = att.workspace_elems(7, b, h, s, d, n)
                rows.append(
                    run_launcher(name, launch, ws_elems, sets, truth, base, n_split=n)
                )
        rows.append(run_torch_sdpa(base, sets, truth, np.float16))
        bench.free(sets)
    return rows


def run(
    quick: bool = False,
    ceil: dict | None = None,
    versions: tuple | None = None,
    tables: tuple | None = None,
) -> dict[str, list[dict]]:
    """The chapter's tables: {"attention", "attention_split"} by default (quick:
    "attention" only); ``tables`` picks others ("attention_tiles")."""
    if tables is None:
        tables = ("attention",) if quick else ("attention", "attention_split")
    out = {}
    if "attention" in tables:
        out["attention"] = attention(quick, versions or GRID.versions, ceil)
    if "attention_split" in tables:
        out["attention_split"] = split_sweep(ceil)
    if "attention_tiles" in tables:
        out["attention_tiles"] = tile_sweep(ceil)
    return out
