"""The GEMVs of chapter 5's step, alone (run through gpu/bench.py).

    python -m gpu.bench stagformer_gemv [--quick] [--out results]

One layer of the chapter's model (C = 2048, H = G = 16, D = 128, F = 8192) has four
GEMVs y = x W with fp16 weights: q|k|v (2048 x 6144, x float32, the normed
residual), o (2048 x 2048, x fp16, the attention's output, residual added), up
(2048 x 8192, ReLU) and down (8192 x 2048, residual added). Each is timed at N rows
of x, N in {1, 4, 8, 64} (quick: 1, 64), with every GEMV version of the chapter
that has a fast path (v2-v9) and two baselines that read the same weights:

  torch_matmul  torch.matmul(x16, W) under CUDA graphs: cuBLAS on tensor cores,
                x already in fp16, no residual, no ReLU (less work than ours)
  cupy_matmul   cupy.matmul(x16, W, out=y16), cuBLAS through CuPy, timed with
                CUDA events around many calls (CuPy cannot capture cuBLAS)

Each case cycles over copies of W that together exceed 3x L2, so every call reads
its weight from DRAM. Validation first, with outputs poisoned: our versions against
the float64 product (of x rounded to fp16 for gs.ROUNDS_X: v7-v9) under the
("gpu", "float32") tolerance (linear_scale), the
baselines by relative error (fp16 output: <= 1e-2). Floors: bytes (W, x, y, and
the residual where there is one) over the read ceiling (floor_us), FLOPs 2 N K M
over the fp16 GEMM ceiling (flop_floor_us: tensor cores; v2 and v3 use CUDA cores,
whose fp32 ceiling is 14x lower, but the row keeps the tensor-core floor that a
GEMV could reach). Every kernel row gets vs_best_baseline against the faster
baseline of its (shape, N).
"""

from __future__ import annotations

import math

import numpy as np

from gpu import bench
from gpu import stagformer as gs

C, F, HD = 2048, 8192, 2048
SHAPES = {  # name: (K, M, x dtype, act, residual)
    "qkv": (C, 3 * HD, np.float32, 0, False),
    "o": (HD, C, np.float16, 0, True),
    "up": (C, F, np.float32, 1, False),
    "down": (F, C, np.float32, 0, True),
}
NS, QUICK_NS = (1, 4, 8, 64), (1, 64)
VERSIONS = (2, 3, 4, 5, 6, 7, 8, 9)
GRID = bench.Grid(
    axes=dict(shape=tuple(SHAPES), N=NS),
    quick=dict(N=QUICK_NS),
    fixed=dict(C=C, F=F, dtype="float16"),
    versions=VERSIONS,
    baselines={"torch_matmul": ("shape", "N"), "cupy_matmul": ("shape", "N")},
)
COLUMNS = (
    ("GEMV", "name", "<13"),
    ("shape", "shape", "<5"),
    ("N", "N", ">3"),
    bench.MEDIAN,
    bench.FLOOR,
    bench.OF_FLOOR,
    bench.ERR,
    bench.VS_BEST,
)


def gemv_bytes(
    n: int, k: int, m: int, x_item: int, residual: bool, y_item: int = 4
) -> int:
    """Fewest bytes of one GEMV: W (fp16) once, x, y and the float32 residual."""
    return 2 * k * m + x_item * n * k + y_item * n * m + (4 * n * m if residual else 0)


def _base(name, shape, n, ceil, baseline=False, **extra) -> dict:
    """A row's fields; baseline: fp16 x and y, no residual (what the baselines
    read and write), else the shape's x, float32 y and its residual."""
    k, m, xdt, _, res = SHAPES[shape]
    if baseline:
        nbytes = gemv_bytes(n, k, m, 2, False, 2)
    else:
        nbytes = gemv_bytes(n, k, m, np.dtype(xdt).itemsize, res)
    row = dict(name=name, shape=shape, N=n, K=k, M=m, dtype="float16", **extra)
    row.update(bytes=nbytes, flops=2 * n * k * m)
    if ceil.get("read_bytes_per_s"):
        row["floor_us"] = nbytes / ceil["read_bytes_per_s"] * 1e6
    if ceil.get("gemm_fp16_flop_per_s"):
        row["flop_floor_us"] = row["flops"] / ceil["gemm_fp16_flop_per_s"] * 1e6
    return row


def _copies(k: int, m: int) -> int:
    """Weight copies that together exceed 3x an H200's 60 MB L2."""
    return max(2, math.ceil(3 * 60e6 / (2 * k * m)))


def _case(shape, n, ceil, rng) -> list[dict]:
    import cupy as cp

    from reference.testing import assert_close, linear_scale

    k, m, xdt, act, res = SHAPES[shape]
    ws = [
        (rng.standard_normal((k, m), dtype=cp.float32) / math.sqrt(k)).astype(
            cp.float16
        )
        for _ in range(_copies(k, m))
    ]
    x = rng.standard_normal((n, k), dtype=cp.float32).astype(xdt)
    r = rng.standard_normal((n, m), dtype=cp.float32) if res else None
    w64 = cp.asnumpy(ws[0]).astype(np.float64)

    def truth(x64):  # the float64 product and its error scale
        want = x64 @ w64
        want = np.maximum(want, 0) if act else want
        return (want + cp.asnumpy(r) if res else want), linear_scale(x64, w64)

    x64 = cp.asnumpy(x).astype(np.float64)
    exact = truth(x64)
    rounded = truth(cp.asnumpy(x.astype(cp.float16)).astype(np.float64))
    y = cp.zeros((n, m), cp.float32)
    scratch = gs.new_scratch(*gs.gemv_workspace(n, k, m, np.float16, 1))
    rows = []
    for v in VERSIONS:

        def call(w, v=v):
            return gs.gemv(
                [x], [w], [y], res=None if r is None else [r], act=act, version=v,
                scratch=scratch,
            )  # fmt: skip

        row = _base(f"gemv_v{v}", shape, n, ceil, version=v, copies=len(ws))
        y.fill(np.nan)
        scratch.ws.fill(np.nan)
        call(ws[0])
        want, scale = rounded if v in gs.ROUNDS_X else exact  # x rounded to fp16
        try:
            row["error_used"] = assert_close(
                cp.asnumpy(y), want, "gpu", np.float32, scale
            )
        except AssertionError as e:
            row["status"] = f"FAILED validation: {e}"
            rows.append(row)
            continue
        calls = [lambda w=w, c=call: c(w) for w in ws]
        rows.append(bench.finish(row, bench.time_cupy(calls, samples=30)))
    x16 = x.astype(cp.float16)
    want16 = cp.asnumpy(x16).astype(np.float64) @ w64
    rows.append(
        bench.guarded(
            "torch_matmul",
            dict(shape=shape, N=n),
            _torch_row,
            shape,
            n,
            ceil,
            x16,
            ws,
            want16,
        )
    )
    y16 = cp.zeros((n, m), cp.float16)
    row = _base("cupy_matmul", shape, n, ceil, True, copies=len(ws))
    y16.fill(np.nan)
    cp.matmul(x16, ws[0], out=y16)
    row["rel_err"] = bench.rel_err(cp.asnumpy(y16), want16)
    if not row["rel_err"] <= 1e-2:
        row["status"] = f"FAILED validation: rel. error {row['rel_err']:.3g}"
        rows.append(row)
    else:
        calls = [lambda w=w: cp.matmul(x16, w, out=y16) for w in ws]
        rows.append(bench.finish(row, bench.time_events(calls * 20, samples=20)))
    del ws
    bench.free([])
    return rows


def _torch_row(shape, n, ceil, x16, ws, want16) -> dict:
    import cupy as cp
    import torch

    tx = torch.from_dlpack(x16)
    tws = [torch.from_dlpack(w) for w in ws]
    out = torch.full((n, tws[0].shape[1]), float("nan"), dtype=torch.float16,
                     device=tx.device)  # fmt: skip
    torch.matmul(tx, tws[0], out=out)
    torch.cuda.synchronize()
    row = _base("torch_matmul", shape, n, ceil, True, copies=len(ws))
    row["torch"] = torch.__version__
    row["rel_err"] = bench.rel_err(cp.asnumpy(cp.from_dlpack(out)), want16)
    if not row["rel_err"] <= 1e-2:
        row["status"] = f"FAILED validation: rel. error {row['rel_err']:.3g}"
        return row
    calls = [lambda w=w: torch.matmul(tx, w, out=out) for w in tws]
    return bench.finish(row, bench.time_torch(calls, samples=30))


def run(quick: bool = False, ceil: dict | None = None) -> dict[str, list[dict]]:
    import cupy as cp

    ceil = ceil or {}
    rng = cp.random.default_rng(2026)
    rows = []
    for shape in GRID.values("shape", quick):
        for n in GRID.values("N", quick):
            rows += _case(shape, n, ceil, rng)
    if not bench.torch_available():
        for row in rows:  # torch rows then carry the import's failure
            if row["name"] == "torch_matmul":
                row["status"] = "skipped: torch not importable"
    return {"stagformer_gemv": rows}
