"""Benchmark cases for chapter 2: the precomputed-table gather + RoPE against what it
replaces, the first layer's norm and projections through cuBLAS.

    python -m gpu.bench precompute [--quick] [--out results]

Shapes of two real models, fp16 (reference/models.py): Mistral-7B (serial, GQA,
row [x | Q | K | V] of W = 10,240, full rotary) and Pythia-6.9B (parallel, MHA,
row [Q | K | V | x + FFN] of W = 16,384, rotary on 32 of 128 dims), for
B in {1, 16, 256, 1024} tokens (quick: {1, 1024}). Each token is one decoded
sequence's new token: B distinct ids from the full vocabulary, random positions.

* gather v1..v3 (gpu/precompute.cu): validated against reference.precompute's
  gather_rope in float64, then timed in CUDA graphs (gpu.bench.time_cupy), id sets
  rotated so that together they exceed 2x L2. Floor: bytes_moved / copy ceiling
  (each row read once and written once).
* cublas_layer1: the baseline, the embedding rows E[ids], the norm(s)
  (precompute_norm_v1), the Q/K/V projection with cupy.matmul (cuBLAS), and for
  Pythia LN2, W_in + bias + GELU, W_out + bias + residual. Each stage is validated
  against float64 on its own fp16 input (rows 0 and B-1), then the whole chain is
  timed with CUDA events (gpu.bench.time_events: CuPy cannot capture cuBLAS in a
  graph, so Python issues each launch; at small B that overhead is in the figure).
  Floor: max(weights + rows read once / read ceiling, FLOPs / fp16 GEMM ceiling).
* cublas_gemm: the projections' matmuls alone, the least cuBLAS must do (not an
  alternative to the trick: a bound on the baseline; no row is compared with it).
* torch_index_select_rope: what the kernel does, in PyTorch: torch.index_select of
  the table rows into the same preallocated (NaN-poisoned) outputs, then RoPE
  (rotate-half in float32, partial for Pythia) on the q and k heads in place;
  validated as the gather rows are, timed under CUDA graphs (bench.time_torch)
  over the same rotated id sets.
* torch_layer1: what the table replaces, in PyTorch under CUDA graphs: E[ids]
  (index_select), the norm (F.layer_norm; Mistral's RMSNorm with F.rms_norm in
  float32), Q/K/V with torch.matmul (Pythia: torch.addmm, bias in the GEMM's
  epilogue), for Pythia also LN2, addmm + F.gelu, addmm + residual. Validated
  stage by stage as cublas_layer1 is (the biases inside the GEMMs).

Every gather row carries paper_factor (the paper's read-reduction factor for this
model and B), vs_cublas (cublas_layer1 time / this time, same run) and, from
gpu.bench.mark_baselines, vs_best_baseline against the fastest of the torch rows
and cublas_layer1 of its (model, B).
Results: results/<card>/precompute.json (gpu.bench.record adds provenance).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np

from gpu import bench
from gpu import precompute as gp
from gpu import runtime as rt

BATCHES = (1, 16, 256, 1024)
QUICK_BATCHES = (1, 1024)
N_POS = 4096  # positions drawn from [0, N_POS): Mistral's sliding window
MODEL_NAMES = ("mistral-7b", "pythia-6.9b")
F16 = np.float16
LN_EPS, RMS_EPS = 1e-5, 1e-5  # GPT-NeoX LayerNorm, Mistral RMSNorm
BASELINES = ("torch_index_select_rope", "torch_layer1", "cublas_layer1")
GRID = bench.Grid(
    axes=dict(model=MODEL_NAMES, B=BATCHES, version=gp.VERSIONS),
    quick=dict(B=QUICK_BATCHES, version=(1, 3)),
    fixed=dict(dtype="float16", n_pos=N_POS, ln_eps=LN_EPS, rms_eps=RMS_EPS),
    baselines={name: ("model", "B") for name in BASELINES},
    kernels=("v",),  # the gather versions; cublas_gemm is a bound, not compared
)
COLUMNS = (
    ("model", "model", "<12"),
    ("case", "name", "<24"),
    ("B", "B", ">5"),
    bench.MEDIAN,
    bench.SPREAD,
    ("GB/s", "gb_per_s", ">7.0f"),
    ("floor us", "floor_us", ">9.2f"),
    bench.OF_FLOOR,
    ("err/tol", "error_used", ">8.3f"),
    ("vs cuBLAS", "vs_cublas", ">10.1f"),
    ("paper x", "paper_factor", ">9.0f"),
    bench.VS_BEST,
)


@dataclass(frozen=True)
class Shape:
    """One model's first-layer shape (from reference/models.py)."""

    name: str
    C: int
    H: int
    G: int
    D: int
    F: int
    V: int
    R: int  # rotary dims per head
    parallel: bool

    @property
    def qkv(self) -> int:
        return (self.H + 2 * self.G) * self.D

    @property
    def W(self) -> int:
        return self.C + self.qkv


def shape_of(name: str) -> Shape:
    from reference.models import MODELS

    m = MODELS[name]
    return Shape(
        name=name, C=m.d_model, H=m.n_heads, G=m.n_kv_heads, D=m.head_dim,
        F=m.d_ff, V=m.vocab, R=round(m.head_dim * (m.rot_pct or 1.0)),
        parallel=bool(m.parallel_block),
    )  # fmt: skip


def decoder_config(s: Shape, v: int):
    """A reference.common.DecoderConfig with this row layout (V rows)."""
    from reference.common import DecoderConfig

    return DecoderConfig(
        V=v, C=s.C, H=s.H, G=s.G, D=s.D, F=1, L=1, parallel=s.parallel, rot_dim=s.R
    )


def paper_factor(name: str, b: int) -> float:
    """The paper's predicted first-layer read reduction (reference/precompute.py)."""
    from reference.models import MODELS
    from reference.precompute import precompute_reduction

    return precompute_reduction(MODELS[name], b)


def _normal(rng, shape, scale=1.0):
    """fp16 N(0, scale^2) drawn in float32 in slabs of 4096 rows (no 2x temp)."""
    import cupy as cp

    out = cp.empty(shape, dtype=F16)
    for i in range(0, shape[0], 4096):
        out[i : i + 4096] = rng.standard_normal(
            (min(4096, shape[0] - i),) + tuple(shape[1:]), dtype=cp.float32
        ) * np.float32(scale)
    return out


# --- the trick: gather + RoPE --------------------------------------------------


def _id_sets(rng_np, s: Shape, b: int, n: int):
    """n disjoint sets of B distinct ids (no row is read twice) and positions."""
    import cupy as cp

    perm = rng_np.permutation(s.V)[: n * b].reshape(n, b)
    pos = rng_np.integers(0, N_POS, (n, b))
    return [
        (cp.asarray(perm[i], cp.int32), cp.asarray(pos[i], cp.int32)) for i in range(n)
    ]


def gather_cases(s: Shape, table, cos, sin, b, versions, ceil, rng_np) -> list[dict]:
    import cupy as cp

    from reference.precompute import gather_rope
    from reference.testing import assert_close

    lay = dict(rot_off=0 if s.parallel else s.C, n_heads=s.H + s.G)
    lay.update(head_dim=s.D, rot_dim=s.R)
    nbytes = gp.bytes_moved(b, s.W, 2, s.R)
    copies = max(1, min(bench.n_copies(nbytes), s.V // b))  # disjoint id sets
    sets = _id_sets(rng_np, s, b, copies)
    outs = [cp.empty((b, s.W), F16) for _ in sets]
    pos0 = cp.asnumpy(sets[0][1])
    rows64 = cp.asnumpy(table[sets[0][0]]).astype(np.float64)  # (B, W)
    truth = gather_rope(rows64, np.arange(b), pos0, decoder_config(s, b))
    scale = float(np.abs(rows64).max())  # tests/test_precompute.py::gpu_scale
    base = dict(model=s.name, B=b, S=0, W=s.W, dtype="float16", bytes=nbytes)
    base.update(flops=gp.flops(b, s.H + s.G, s.R), copies=len(sets))
    base["paper_factor"] = paper_factor(s.name, b)
    if "copy_bytes_per_s" in ceil:
        base["floor_us"] = nbytes / ceil["copy_bytes_per_s"] * 1e6
    rows = []
    for ver in versions:
        row = dict(name=f"v{ver}", **base)

        def call(i, ver=ver, check=False):
            tok, pos = sets[i]
            return gp.gather_rope(
                table, tok, pos, cos, sin, **lay, version=ver, out=outs[i],
                check_ids=check,
            )  # fmt: skip

        try:
            outs[0].fill(np.nan)  # poisoned: an unwritten element fails
            got = cp.asnumpy(call(0, check=True))
            row["error_used"] = assert_close(got, truth, "gpu", F16, scale)
        except (AssertionError, ValueError) as e:
            row["status"] = f"FAILED validation: {e}"
            print(f"  {s.name} B={b} v{ver}: {row['status']}", file=sys.stderr)
            rows.append(row)
            continue
        calls = [lambda i=i, c=call: c(i) for i in range(len(sets))]
        rows.append(bench.finish(row, bench.time_cupy(calls, samples=30)))
    rows.append(
        bench.guarded(
            "torch_index_select_rope",
            base,
            _torch_gather,
            s,
            table,
            cos,
            sin,
            lay,
            sets,
            outs,
            truth,
            scale,
            base,
        )
    )
    return rows


def _torch_gather(s: Shape, table, cos, sin, lay, sets, outs, truth, scale, base):
    """torch.index_select + RoPE into the gather rows' outputs, same id sets."""
    name = "torch_index_select_rope"
    if not bench.torch_available():
        return bench.torch_skipped(name, base)
    import cupy as cp

    from reference.testing import assert_close

    torch = bench.torch_for_baselines()
    t = torch.from_dlpack
    b, nh, d, r = base["B"], lay["n_heads"], lay["head_dim"], lay["rot_dim"]
    lo = lay["rot_off"]
    tab, cos_t = t(table), t(cos)  # cos, sin: (P, R/2) float32
    sin2 = torch.stack((-t(sin), t(sin)), dim=1)  # (P, 2, R/2)
    tsets = [
        (t(tok), t(pos), t(out)) for (tok, pos), out in zip(sets, outs, strict=True)
    ]

    def call(i):
        """y1 = x1 cos - x2 sin, y2 = x2 cos + x1 sin on each q and k head's first
        R dims (x = (x1, x2), reference.common.apply_rope), in float32."""
        tok, pos, out = tsets[i]
        torch.index_select(tab, 0, tok, out=out)
        heads = out[:, lo : lo + nh * d].view(b, nh, d)[..., :r]  # (B, H + G, R)
        x = heads.float().view(b, nh, 2, r // 2)
        c = torch.index_select(cos_t, 0, pos)[:, None, None, :]  # (B, 1, 1, R/2)
        sn = torch.index_select(sin2, 0, pos)[:, None]  # (B, 1, 2, R/2)
        heads.copy_(torch.addcmul(x * c, x.flip(2), sn).view(b, nh, r))
        return out

    row = dict(name=name, **base, torch=torch.__version__)
    try:
        outs[0].fill(np.nan)  # poisoned: an unwritten element fails
        call(0)
        torch.cuda.synchronize()
        row["error_used"] = assert_close(cp.asnumpy(outs[0]), truth, "gpu", F16, scale)
    except (AssertionError, RuntimeError) as e:  # RuntimeError: torch's own
        row["status"] = f"FAILED validation: {type(e).__name__}: {e}"
        print(f"  {s.name} B={b} {name}: {row['status']}", file=sys.stderr)
        return row
    calls = [lambda i=i: call(i) for i in range(len(sets))]
    return bench.finish(row, bench.time_torch(calls, samples=30))


# --- the baseline: what the table replaces, through cuBLAS -----------------------


def _elementwise():
    """Fused fp32 epilogues for the baseline (one fp16 rounding each)."""
    import cupy as cp

    bias = cp.ElementwiseKernel(
        "float16 y, float16 b", "float16 z", "z = (float)y + (float)b", "pc_bias"
    )
    gelu = cp.ElementwiseKernel(
        "float16 y, float16 b",
        "float16 z",
        "float h = (float)y + (float)b; z = 0.5f * h * (1.0f + erff(h * 0.70710678f))",
        "pc_bias_gelu",
    )
    resid = cp.ElementwiseKernel(
        "float16 y, float16 b, float16 x",
        "float16 z",
        "z = (float)y + (float)b + (float)x",
        "pc_bias_residual",
    )
    return bias, gelu, resid


def _baseline_weights(s: Shape, rng):
    """Random fp16 weights N(0, 1/fan_in), biases and norm parameters for Pythia."""
    w = dict(
        E=_normal(rng, (s.V, s.C)), qkv=_normal(rng, (s.C, s.qkv), s.C**-0.5),
        g1=1 + _normal(rng, (s.C,), 0.1), b1=_normal(rng, (s.C,), 0.1),
    )  # fmt: skip
    if s.parallel:
        w.update(
            b_qkv=_normal(rng, (s.qkv,), 0.1), g2=1 + _normal(rng, (s.C,), 0.1),
            b2=_normal(rng, (s.C,), 0.1), w_in=_normal(rng, (s.C, s.F), s.C**-0.5),
            b_in=_normal(rng, (s.F,), 0.1), w_out=_normal(rng, (s.F, s.C), s.F**-0.5),
            b_out=_normal(rng, (s.C,), 0.1),
        )  # fmt: skip
    return w


def _gemm_values(s: Shape) -> int:
    """Matrix weights the projections read: W_QKV (+ W_in, W_out)."""
    return s.C * s.qkv + (2 * s.C * s.F if s.parallel else 0)


def _weight_values(s: Shape) -> int:
    """All weights the baseline reads per call: matrices, norms, biases."""
    small = 2 * s.C + (s.qkv + 2 * s.C + s.F + s.C if s.parallel else 0)
    return _gemm_values(s) + small


def _layer1(s: Shape, w: dict, tok, buf: dict, kernels, gemm_only=False):
    """The baseline: x = E[ids]; N1(x) W_QKV (+b); parallel: + N2, FFN, residual.
    Writes into ``buf`` (preallocated); returns it."""
    import cupy as cp

    bias, gelu, resid = kernels
    if not gemm_only:
        cp.take(w["E"], tok, axis=0, out=buf["x"])
        _norm(buf["x"], w["g1"], w["b1"], buf["xn1"], s.parallel)
    cp.matmul(buf["xn1"], w["qkv"], out=buf["y0"])
    if not s.parallel:
        return buf
    if not gemm_only:
        bias(buf["y0"], w["b_qkv"], buf["qkv"])
        _norm(buf["x"], w["g2"], w["b2"], buf["xn2"], True)
    cp.matmul(buf["xn2"], w["w_in"], out=buf["h0"])
    if not gemm_only:
        gelu(buf["h0"], w["b_in"], buf["h"])
    cp.matmul(buf["h"], w["w_out"], out=buf["y2"])
    if not gemm_only:
        resid(buf["y2"], w["b_out"], buf["x"], buf["r"])
    return buf


def _norm(x, g, b, y, layer: bool) -> None:
    fn = rt.kernel(gp.SLUG, "precompute_norm_v1_f16")
    eps = np.float32(LN_EPS if layer else RMS_EPS)
    args = (x, g, b, y, np.int32(x.shape[1]), eps, np.int32(layer))
    fn((x.shape[0],), (256,), args)


def _buffers(s: Shape, b: int) -> dict:
    import cupy as cp

    shapes = dict(x=s.C, xn1=s.C, y0=s.qkv)
    if s.parallel:
        shapes.update(qkv=s.qkv, xn2=s.C, h0=s.F, h=s.F, y2=s.C, r=s.C)
    return {k: cp.full((b, n), np.nan, F16) for k, n in shapes.items()}


def _validate_layer1(
    s: Shape, w: dict, w64: dict, buf: dict, tok, fused=False
) -> float:
    """Each stage against float64 on its own fp16 input, rows 0 and B-1; the
    tolerance is the 'gpu' fp16 row with a derived scale (see each comment).
    buf: stage name -> (B, n) array (CuPy, or torch through DLPack). fused: the
    biases were added inside the GEMMs (torch.addmm: qkv, h0 and y2 include them,
    no y0), else by the fp32 epilogues after them."""
    import cupy as cp

    from reference.common import gelu
    from reference.testing import assert_close

    rows = sorted({0, buf["x"].shape[0] - 1})
    h = {k: cp.asnumpy(cp.asarray(v)[rows]).astype(np.float64) for k, v in buf.items()}
    e_rows = cp.asnumpy(w["E"][tok[cp.asarray(rows)]]).astype(np.float64)
    used = [assert_close(h["x"], e_rows, "exact", F16)]

    def norm_check(xn, g, bb, layer):
        x = h["x"]
        mu = x.mean(-1, keepdims=True) if layer else 0.0
        eps = LN_EPS if layer else RMS_EPS
        inv = 1 / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)
        want = (x - mu) * inv * g + (bb if layer else 0.0)
        # fp32 sums over C: lam*sqrt(C)*u relative in the variance, a few u more
        # in rsqrt and the products: scale (sqrt(C) + 4) * max|x - mu| inv |g|
        sc = (math.sqrt(s.C) + 4) * float(
            (np.abs(x - mu) * inv).max() * np.abs(g).max()
        )
        return assert_close(xn, want, "gpu", F16, sc)

    def gemm_check(x, wm, y, bias=None):
        # K-term fp32 sum: lam*sqrt(K)*u * sum_i |x_i w_ij|; output rounding in rtol
        # (a bias added in fp32 before it rounds once more: u32 |y|, in rtol too)
        sc = math.sqrt(wm.shape[0]) * float((np.abs(x) @ np.abs(wm)).max())
        want = x @ wm + (0.0 if bias is None else bias)
        return assert_close(y, want, "gpu", F16, sc)

    used.append(norm_check(h["xn1"], w64["g1"], w64["b1"], s.parallel))
    if not s.parallel:
        used.append(gemm_check(h["xn1"], w64["qkv"], h["y0"]))
        return max(used)
    if fused:
        used.append(gemm_check(h["xn1"], w64["qkv"], h["qkv"], w64["b_qkv"]))
    else:
        used.append(gemm_check(h["xn1"], w64["qkv"], h["y0"]))
        # fp32 epilogues: one u32 rounding of |terms|, then one fp16 rounding (rtol)
        y0, yb = h["y0"], w64["b_qkv"]
        sc = float((np.abs(y0) + np.abs(yb)).max())
        used.append(assert_close(h["qkv"], y0 + yb, "gpu", F16, sc))
    used.append(norm_check(h["xn2"], w64["g2"], w64["b2"], True))
    if fused:
        used.append(gemm_check(h["xn2"], w64["w_in"], h["h0"], w64["b_in"]))
        pre = h["h0"]
    else:
        used.append(gemm_check(h["xn2"], w64["w_in"], h["h0"]))
        pre = h["h0"] + w64["b_in"]
    # the add, erff (<= 2 ulp) and two products: a few u32 of |pre|
    sc = 4 * float(np.abs(pre).max())
    used.append(assert_close(h["h"], gelu(pre), "gpu", F16, sc))
    if fused:
        used.append(gemm_check(h["h"], w64["w_out"], h["y2"], w64["b_out"]))
        want, terms = h["y2"] + h["x"], np.abs(h["y2"]) + np.abs(h["x"])
    else:
        used.append(gemm_check(h["h"], w64["w_out"], h["y2"]))
        want = h["y2"] + w64["b_out"] + h["x"]
        terms = np.abs(h["y2"]) + np.abs(w64["b_out"]) + np.abs(h["x"])
    used.append(assert_close(h["r"], want, "gpu", F16, float(terms.max())))
    return max(used)


def _floor_us(nbytes: int, flops: int, ceil: dict) -> float:
    """max(bytes / read ceiling, FLOPs / fp16 GEMM ceiling), in us. The GEMM
    ceiling is the maximum over square sizes 4096-16384 through CuPy and torch
    (gpu.bench.ceilings): taken at one size through CuPy alone it was below what
    cuBLAS reached here at B = 1024 (1.04x and 1.10x their floor on the H100). A
    row under this floor fails the run (gpu.bench.finish)."""
    t = nbytes / ceil["read_bytes_per_s"]
    if "gemm_fp16_flop_per_s" in ceil:
        t = max(t, flops / ceil["gemm_fp16_flop_per_s"])
    return t * 1e6


def baseline_cases(s: Shape, b: int, w: dict, w64: dict, ceil, rng_np) -> list[dict]:
    import cupy as cp

    kernels = _elementwise()
    wbytes = 2 * _weight_values(s)
    out_w = s.W if s.parallel else s.qkv  # what the table row gives, less x
    nbytes = wbytes + 2 * b * (s.C + out_w) + 4 * b
    base = dict(model=s.name, B=b, S=0, W=s.W, dtype="float16", bytes=nbytes)
    base.update(flops=2 * b * _gemm_values(s), paper_factor=paper_factor(s.name, b))
    if ceil:
        base["floor_us"] = _floor_us(nbytes, base["flops"], ceil)
    # weights rotated too: copies of the whole set until > 2x L2 (1 for Pythia)
    n = bench.n_copies(nbytes)
    wsets = [w] + [
        {k: v if k == "E" else v.copy() for k, v in w.items()} for _ in range(n - 1)
    ]
    toks = [cp.asarray(rng_np.permutation(s.V)[:b], cp.int32) for _ in wsets]
    bufs = [_buffers(s, b) for _ in wsets]
    rows = []
    for name, gemm_only in (("cublas_layer1", False), ("cublas_gemm", True)):
        row = dict(name=name, **base, copies=n)
        if gemm_only:  # matrices, and each GEMM's input and output once
            io = b * (s.C + s.qkv) + (2 * b * (s.C + s.F) if s.parallel else 0)
            row["bytes"] = 2 * (_gemm_values(s) + io)
            if ceil:
                row["floor_us"] = _floor_us(row["bytes"], row["flops"], ceil)
        calls = [
            lambda i=i, g=gemm_only: _layer1(s, wsets[i], toks[i], bufs[i], kernels, g)
            for i in range(n)
        ]
        if not gemm_only:
            try:
                calls[0]()
                row["error_used"] = _validate_layer1(s, w, w64, bufs[0], toks[0])
            except AssertionError as e:
                row["status"] = f"FAILED validation: {e}"
                print(f"  {s.name} B={b} {name}: {row['status']}", file=sys.stderr)
                rows.append(row)
                continue
        elif "error_used" not in rows[0]:  # same matmuls: not timed either
            rows.append(dict(row, status="FAILED validation: see cublas_layer1"))
            continue
        else:
            row["error_used"] = rows[0]["error_used"]
        rows.append(bench.finish(row, bench.time_events(calls * 4, samples=10)))
    base1 = dict(base, copies=n)
    rows.append(
        bench.guarded(
            "torch_layer1",
            base1,
            _torch_layer1,
            s,
            base1,
            w,
            w64,
            wsets,
            toks,
            bufs,
        )
    )
    return rows


def _torch_layer1(s: Shape, base: dict, w, w64, wsets, toks, bufs) -> dict:
    """cublas_layer1's computation in PyTorch (F.linear's addmm with the biases in
    the GEMM epilogue), writing into the same buffers over the same rotated sets;
    intermediates torch allocates itself are returned for the validation."""
    name = "torch_layer1"
    if not bench.torch_available():
        return bench.torch_skipped(name, base)
    import cupy as cp

    torch = bench.torch_for_baselines()
    import torch.nn.functional as tf

    t = torch.from_dlpack
    sets = [
        ({k: t(v) for k, v in wi.items()}, t(tok), {k: t(v) for k, v in buf.items()})
        for wi, tok, buf in zip(wsets, toks, bufs, strict=True)
    ]
    g1f = sets[0][0]["g1"].float()  # RMSNorm's gain in float32 (Mistral)

    def call(i):
        tw, tok, tb = sets[i]
        x = torch.index_select(tw["E"], 0, tok, out=tb["x"])
        if not s.parallel:  # RMSNorm in float32, one fp16 rounding; Q|K|V
            xn1 = tf.rms_norm(x.float(), (s.C,), g1f, RMS_EPS).half()
            torch.matmul(xn1, tw["qkv"], out=tb["y0"])
            return dict(xn1=xn1)
        xn1 = tf.layer_norm(x, (s.C,), tw["g1"], tw["b1"], LN_EPS)
        torch.addmm(tw["b_qkv"], xn1, tw["qkv"], out=tb["qkv"])
        xn2 = tf.layer_norm(x, (s.C,), tw["g2"], tw["b2"], LN_EPS)
        torch.addmm(tw["b_in"], xn2, tw["w_in"], out=tb["h0"])
        h = tf.gelu(tb["h0"])
        torch.addmm(tw["b_out"], h, tw["w_out"], out=tb["y2"])
        torch.add(tb["y2"], x, out=tb["r"])
        return dict(xn1=xn1, xn2=xn2, h=h)

    row = dict(name=name, **base, torch=torch.__version__)
    written = ("x", "qkv", "h0", "y2", "r") if s.parallel else ("x", "y0")
    try:
        for a in bufs[0].values():
            a.fill(np.nan)  # poisoned: an unwritten element fails
        inter = call(0)
        torch.cuda.synchronize()
        got = {k: bufs[0][k] for k in written}
        got.update({k: cp.from_dlpack(v.contiguous()) for k, v in inter.items()})
        row["error_used"] = _validate_layer1(s, w, w64, got, toks[0], fused=True)
    except (AssertionError, RuntimeError) as e:  # RuntimeError: torch's own
        row["status"] = f"FAILED validation: {type(e).__name__}: {e}"
        print(f"  {s.name} B={base['B']} {name}: {row['status']}", file=sys.stderr)
        return row
    calls = [lambda i=i: call(i) for i in range(len(sets))]
    return bench.finish(row, bench.time_torch(calls, samples=20))


# --- driver ------------------------------------------------------------------------


def run(quick: bool = False, ceil: dict | None = None) -> dict[str, list[dict]]:
    """All cases: {"precompute": rows}. gpu.bench.run_trick prints and records it."""
    import cupy as cp

    ceil = ceil or {}
    batches = GRID.values("B", quick)
    versions = GRID.values("version", quick)
    rows = []
    rng = cp.random.default_rng(2402)
    rng_np = np.random.default_rng(13388)
    for name in GRID.values("model", quick):
        s = shape_of(name)
        table = _normal(rng, (s.V, s.W))  # the enlarged embedding table, fp16
        cos, sin = gp.rope_tables(N_POS, s.R)
        w = _baseline_weights(s, rng)
        w64 = {k: cp.asnumpy(v).astype(np.float64) for k, v in w.items() if k != "E"}
        for b in batches:
            gathered = gather_cases(s, table, cos, sin, b, versions, ceil, rng_np)
            base = baseline_cases(s, b, w, w64, ceil, rng_np)
            ref = next((r for r in base if r["name"] == "cublas_layer1"), {})
            for r in gathered:
                if not r["name"].startswith("v"):  # the torch row: vs_best_baseline
                    continue
                if r.get("status") == "ok" and ref.get("status") == "ok":
                    r["vs_cublas"] = ref["median_us"] / r["median_us"]
            rows += gathered + base
        del table, w, w64
        cp.get_default_memory_pool().free_all_blocks()
    return {"precompute": rows}


def print_table(rows: list[dict]) -> None:
    """The table under COLUMNS (gpu.bench.print_table)."""
    bench.print_table(rows, COLUMNS)
