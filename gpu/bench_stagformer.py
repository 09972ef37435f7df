"""Benchmark cases of the StagFormer chapter (run through gpu/bench.py).

    python -m gpu.bench stagformer [--quick] [--out results]

One decode step at cache length S = 1024 (position 1023), C = 2048, H = G = 16,
D = 128, F = 4C = 8192, ReLU MLP, RMSNorm, fp16 weights and caches, float32
activations; B in {1, 4, 8, 64} (quick: 1). Every case is one CUDA graph of whole
steps (bench.time_cupy), beside its floor (step_bytes / read ceiling):

  plain_24          the sequential decoder of the same depth: 24 layers
  sep_parallel      staggered, separate weights, 2 x 12 layers, both stacks'
                    layer j in one launch
  sep_sequential    the same model, stack 1 then stack 2
  shared_parallel   staggered, shared weights: one pass over each weight serves
                    both stacks (N = 2B right-hand rows)
  shared_sequential the same model, stack 1 then stack 2: each weight read twice
  torch_plain_24    plain_24 in PyTorch (fp16, matmul + SDPA) under CUDA graphs,
                    when torch is importable (else the row says "skipped: torch
                    not importable")

A second table, stagformer_persistent (also alone: ``python -m gpu.bench
stagformer_persistent``), times plain_24 at B = 1 as one persistent launch
(gs.persistent_step: p1-p6; p6 also eagerly, without a graph) beside GEMV
v3's layered step (in a graph and eagerly) and PyTorch's, in one run; p2-p6's
rows carry the per-phase times of one traced step (trace_summary).

Every case but torch is timed with GEMV v2, v3 (fused RMSNorm), v4 and v5 (tensor
cores; field "version") at B = 1, 8 and 64, v6 (tensor cores, many rows), v8
(fp16 x streamed with W) and v9 (its split summed in a cluster) at B = 8 and 64,
and v3, v5, v6, v8 and v9 at B = 4: the ladder, same model, same buffers.

Validation before timing (DESIGN §2): each schedule and weight kind is first run
on a model of the same width with one layer a stack, B = 2, position 5, and
compared with the float64 reference step (reference.stagformer) under the
("stag_step", "float16") tolerance (("stag_step_x16", "float16") for the GEMV
versions that round x to fp16, gs.ROUNDS_X); the timed models differ only in
depth, B and S (same kernels, same launch sequence per layer). Then the parallel
schedule must equal the sequential one bit for bit on the timed model itself. The
torch step is
validated the same way: on the 1-layer model, its output is stack 1's (a plain
decoder's) h, checked against the float64 reference under the same tolerance and
scale (field error_used); on the timed model it must also agree with our plain
step to 1 % in relative norm (rel_err_vs_plain_24). A case that fails is recorded
as failed and not timed. Every kernel row gets vs_best_baseline against
torch_plain_24 at its B (gpu.bench.mark_baselines): the plain decoder of the same
depth in PyTorch is what the staggered model would replace.
"""

from __future__ import annotations

import itertools
import math
import sys
from functools import partial

import numpy as np

from gpu import bench
from gpu import runtime as rt
from gpu import stagformer as gs

C, H, G, D, F, L = 2048, 16, 16, 128, 8192, 12
S = 1024  # cache length after this step: position S - 1
BATCHES, QUICK_BATCHES = (1, 4, 8, 64), (1,)
# GEMV versions timed at each B (at B = 4: the B = 1 winner and the B = 8 one; v7,
# v8's sums with slower copies, is timed in the GEMV bench only)
VERSIONS = {
    1: (2, 3, 4, 5),
    4: (3, 5, 6, 8, 9),
    8: (2, 3, 4, 5, 6, 8, 9),
    64: (2, 3, 4, 5, 6, 8, 9),
}
F16 = np.float16
GRID = bench.Grid(
    axes=dict(B=BATCHES),
    quick=dict(B=QUICK_BATCHES),
    fixed=dict(C=C, H=H, G=G, D=D, F=F, L_stack=L, S=S, dtype="float16"),
    versions=VERSIONS,
    baselines={"torch_plain_24": ("B",)},
    # the persistent step's table (persistent_table): B = 1, p1-p6 (graph; p6
    # also eagerly), beside v3's layered step (graph, eager) and torch
    sweeps=dict(stagformer_persistent=dict(B=(1,), kernels=gs.P1_VERSIONS)),
)
COLUMNS = (
    ("case", "name", "<20"),
    ("v", "version", ">3"),
    ("B", "B", ">4"),
    bench.MEDIAN,
    bench.FLOOR,
    bench.OF_FLOOR,
    bench.ERR,
    bench.VS_BEST,
)


def _base_cfg(lz: int, shared: bool):
    from reference.common import DecoderConfig
    from reference.stagformer import StagConfig

    base = DecoderConfig(
        V=64, C=C, H=H, G=G, D=D, F=F, L=lz, norm="rmsnorm", act="relu", rot_dim=0
    )
    return StagConfig(base, p=2, shared=shared)


def _validation_case(shared: bool):
    """The 1-layer model of the benchmark's width (B = 2, position 5) on the GPU,
    its buffers and inputs, and the float64 reference's h and o with their scale."""
    import cupy as cp

    from reference import stagformer as sf

    cfg = _base_cfg(1, shared)
    rng = np.random.default_rng(2025)
    w = sf.init_stagformer(cfg, rng)
    w = _round(w)
    tokens = rng.integers(0, 64, (2, 6))
    pos = 5
    state = sf.prefill(w, cfg, tokens[:, :pos])[1]
    state = _round_state(state)
    _, after = sf.decode_step(w, cfg, tokens[:, pos], state)
    m = gs.to_gpu(w, cfg, F16)
    bf = gs.new_buffers(m, 2, pos)
    for s in range(2):
        bf.k[0, s, :, :, :pos] = cp.asarray(state.self_caches[s][0].k.astype(F16))
        bf.v[0, s, :, :, :pos] = cp.asarray(state.self_caches[s][0].v.astype(F16))
    c = state.cross_caches[0][0]
    bf.xk[0, :, :, :pos] = cp.asarray(c.k.astype(F16))
    bf.xv[0, :, :, :pos] = cp.asarray(c.v.astype(F16))
    e = cp.asarray(w.embed[tokens[:, pos]].astype(np.float32))
    h_prev = cp.asarray(state.outputs[0][:, pos - 1].astype(np.float32))
    h_ref, o_ref = after.outputs[0][:, -1], after.outputs[1][:, -1]
    sc = max(np.abs(h_ref).max(), np.abs(o_ref).max())
    return m, bf, e, h_prev, pos, h_ref, o_ref, sc


def validate(shared: bool, version: int = 2) -> dict[str, float]:
    """Error used (fraction of the tolerance) of each schedule on a 1-layer model of
    the benchmark's width against the float64 reference; raises on failure."""
    import cupy as cp

    from reference.testing import assert_close

    m, bf, e, h_prev, pos, h_ref, o_ref, sc = _validation_case(shared)
    kind = gs.step_tolerance(version, F16)
    used = {}
    for sched in gs.SCHEDULES:
        bf.out.fill(np.nan)
        gs.decode_step(m, bf, e, h_prev, pos, schedule=sched, version=version)
        out = cp.asnumpy(bf.out)
        used[sched] = max(
            assert_close(out[0], h_ref, kind, F16, sc),
            assert_close(out[1], o_ref, kind, F16, sc),
        )
    return used


def _round(w):
    import dataclasses

    def go(o):
        if isinstance(o, np.ndarray):
            return o.astype(F16).astype(np.float64) if o.dtype.kind == "f" else o
        if isinstance(o, tuple):
            return tuple(go(x) for x in o)
        if dataclasses.is_dataclass(o):
            return dataclasses.replace(
                o, **{f.name: go(getattr(o, f.name)) for f in dataclasses.fields(o)}
            )
        return o

    return go(w)


def _round_state(state):
    import dataclasses

    return dataclasses.replace(
        state,
        self_caches=_round(state.self_caches),
        cross_caches=_round(state.cross_caches),
        outputs=tuple(o.astype(np.float32).astype(np.float64) for o in state.outputs),
    )


def random_model(lz: int, shared: bool, rng) -> gs.Model:
    """Random fp16 weights made on the GPU in the launcher's layout: N(0, 1/fan_in)
    matrices, gains 1 + 0.1 N(0, 1)."""
    import cupy as cp

    def mat(k, m):
        return (rng.standard_normal((k, m), dtype=cp.float32) / math.sqrt(k)).astype(
            F16
        )

    def gain():
        return (1 + 0.1 * rng.standard_normal(C, dtype=cp.float32)).astype(F16)

    def layer():
        return gs.Layer(
            gain(), mat(C, 3 * H * D), mat(H * D, C), gain(), mat(C, F), mat(F, C)
        )

    s1 = [layer() for _ in range(lz)]
    s2 = s1 if shared else [layer() for _ in range(lz)]
    cross = [(gain(), mat(C, H * D), mat(H * D, C)) for _ in range(lz)]
    return gs.Model(
        H,
        G,
        D,
        C,
        F,
        lz,
        shared,
        None,
        np.dtype(F16),
        [s1, s2],
        cross,
        mat(C, 2 * lz * G * D),
        [gain(), gain()],
    )


def fill_caches(bf, rng):
    """Caches and inputs with N(0, 1) values (never zeros: METHOD.md)."""
    for a in (bf.k, bf.v, bf.xk, bf.xv):
        for i in range(a.shape[0]):
            a[i] = rng.standard_normal(a.shape[1:], dtype=np.float32).astype(a.dtype)
    bf.xk[:, :, :, 0] = 0  # the null slot
    bf.xv[:, :, :, 0] = 0


def _row(name, kind, b, ceil, calls, tensor_cores=False, **extra) -> dict:
    """A case's row, timed when calls are given. flop_floor_us: FLOPs over the fp32
    GEMM ceiling for GEMV v1-v3 (CUDA-core FMAs), over the fp16 one for v4-v6 and
    torch (tensor cores: the fp32 ceiling does not bound them)."""
    nbytes = gs.step_bytes(kind, b, S, C, F, H, G, D, L, 2)
    row = dict(
        name=name,
        kind=kind,
        B=b,
        S=S,
        C=C,
        F=F,
        L_stack=L,
        dtype="float16",
        bytes=nbytes,
        flops=gs.step_flops(kind, b, S, C, F, H, G, D, L),
        **extra,
    )
    if ceil.get("read_bytes_per_s"):
        row["floor_us"] = nbytes / ceil["read_bytes_per_s"] * 1e6
    peak = ceil.get("gemm_fp16_flop_per_s" if tensor_cores else "gemm_fp32_flop_per_s")
    if peak:
        row["flop_floor_us"] = row["flops"] / peak * 1e6
    if calls is None:
        return row
    return bench.finish(row, bench.time_cupy(calls, samples=20))


def _stag_cases(b, shared, rng, ceil, checked, versions=(3,)) -> list[dict]:
    import cupy as cp

    tag = "shared" if shared else "sep"
    m = random_model(L, shared, rng)
    bf = gs.new_buffers(m, b, S - 1)
    fill_caches(bf, rng)
    e = rng.standard_normal((b, C), dtype=cp.float32)
    h_prev = rng.standard_normal((b, C), dtype=cp.float32)
    kind_seq = "shared_seq" if shared else "separate"
    kind_par = "shared" if shared else "separate"
    rows = []
    for ver, (sched, name, kind) in itertools.product(
        versions,
        (
            ("stack1_first", f"{tag}_sequential", kind_seq),
            ("parallel", f"{tag}_parallel", kind_par),
        ),
    ):
        if sched == "stack1_first":
            outs = {}
        bf.out.fill(np.nan)
        gs.decode_step(m, bf, e, h_prev, S - 1, schedule=sched, version=ver)
        outs[sched] = cp.asnumpy(bf.out)
        ok = checked.get((shared, sched, ver))
        bad = not np.isfinite(outs[sched]).all() or ok is None
        if sched == "parallel":
            bad |= not np.array_equal(outs["parallel"], outs["stack1_first"])
        if bad:
            row = _row(name, kind, b, ceil, None, ver >= 4, version=ver)
            row["status"] = "FAILED validation (reference or bitwise schedule check)"
            print(f"  {name} v{ver} B={b}: {row['status']}", file=sys.stderr)
            rows.append(row)
            continue
        step = partial(
            gs.decode_step, m, bf, e, h_prev, S - 1, schedule=sched, version=ver
        )
        rows.append(
            _row(name, kind, b, ceil, [step], ver >= 4, version=ver, error_used=ok)
        )
    del m, bf
    bench.free([])
    return rows


def _plain_case(b, rng, ceil, checked, versions=(3,), torch_used=None) -> list[dict]:
    import cupy as cp

    m = random_model(2 * L, False, rng)
    bf = gs.new_buffers(m, b, S - 1, stacks=1)
    for a in (bf.k, bf.v):
        for i in range(a.shape[0]):
            a[i] = rng.standard_normal(a.shape[1:], dtype=np.float32).astype(F16)
    e = rng.standard_normal((b, C), dtype=cp.float32)
    rows = []
    for ver in versions:
        bf.out.fill(np.nan)
        ours = cp.asnumpy(gs.plain_step(m, bf, e, S - 1, ver)).copy()
        ok = checked.get((False, "stack1_first", ver))
        if not np.isfinite(ours).all():
            ok = None
        step = partial(gs.plain_step, m, bf, e, S - 1, ver)
        calls = [step] if ok is not None else None
        rows.append(_row("plain_24", "plain", b, ceil, calls, ver >= 4, version=ver))
        if ok is None:
            rows[-1]["status"] = "FAILED validation"
        else:
            rows[-1]["error_used"] = ok
    rows.append(  # vs the last
        bench.guarded(
            "torch_plain_24",
            dict(B=b),
            _torch_plain,
            m,
            bf,
            e,
            ours,
            b,
            ceil,
            torch_used,
        )
    )
    return rows


def validate_p1(version: int) -> float:
    """Error used of the persistent step (gs.persistent_step, B = 1, p1-p6) on
    the 1-layer model of the benchmark's width at position 5 against stack 1 of the
    float64 reference step (a plain decoder), under ("stag_step", "float16")."""
    import cupy as cp

    from reference import stagformer as sf
    from reference.testing import assert_close

    cfg = _base_cfg(1, False)
    rng = np.random.default_rng(2026)
    w = _round(sf.init_stagformer(cfg, rng))
    tokens = rng.integers(0, 64, (1, 6))
    pos = 5
    state = _round_state(sf.prefill(w, cfg, tokens[:, :pos])[1])
    _, after = sf.decode_step(w, cfg, tokens[:, pos], state)
    m = gs.to_gpu(w, cfg, F16)
    bf = gs.new_buffers(m, 1, pos, stacks=1)
    bf.k[0, 0, :, :, :pos] = cp.asarray(state.self_caches[0][0].k.astype(F16))
    bf.v[0, 0, :, :, :pos] = cp.asarray(state.self_caches[0][0].v.astype(F16))
    pk = gs.pack_plain(m, pos + 1)
    bf.out.fill(np.nan)
    e = cp.asarray(w.embed[tokens[:, pos]].astype(np.float32))
    got = cp.asnumpy(gs.persistent_step(pk, bf, e, pos, version))
    h_ref = after.outputs[0][:, -1]
    return assert_close(got, h_ref, "stag_step", F16, np.abs(h_ref).max())


TRACE_PHASES = ("qkv", "barrier_qkv", "attention", "barrier_attention", "o",
                "barrier_o", "up", "barrier_up", "down", "barrier_down")  # fmt: skip


def trace_summary(tr) -> dict:
    """p2's globaltimer stamps (SMs, L, 12) as microseconds: per phase (TRACE_PHASES:
    each phase's work from the previous barrier's exit, then the barrier: arrival
    to exit) the median and the max over blocks and layers; the step from the first
    stamp to the last; and the producer's lead (the consumers' end of a layer minus
    the producer's last copy of it; median over blocks and layers)."""
    t = np.asarray(tr, np.int64)
    d = np.diff(t[:, :, :11], axis=2) / 1e3  # (SMs, L, 10)
    lead = (t[:, :, 10] - t[:, :, 11]) / 1e3
    return dict(
        phases_median_us={
            p: float(np.median(d[:, :, i])) for i, p in enumerate(TRACE_PHASES)
        },  # fmt: skip
        phases_max_us={p: float(d[:, :, i].max()) for i, p in enumerate(TRACE_PHASES)},
        step_us=float((t[:, :, :11].max() - t[:, :, :11].min()) / 1e3),
        producer_lead_median_us=float(np.median(lead)),
    )


def persistent_inputs(rng, layers: int = 2 * L):
    """The persistent step's timed inputs: random_model(layers) (plain), B = 1
    buffers at position S - 1 with random fp16 caches, and a random (1, C)
    embedding row, drawn from the CuPy generator rng in that order."""
    import cupy as cp

    m = random_model(layers, False, rng)
    bf = gs.new_buffers(m, 1, S - 1, stacks=1)
    for a in (bf.k, bf.v):
        for i in range(a.shape[0]):
            a[i] = rng.standard_normal(a.shape[1:], dtype=np.float32).astype(F16)
    e = rng.standard_normal((1, C), dtype=cp.float32)
    return m, bf, e


def persistent_table(ceil) -> list[dict]:
    """plain_24 at B = 1 as one persistent launch (gs.persistent_step: p1-p6), each
    timed in a CUDA graph, p6 also eagerly (bench.time_events: a step's 3
    launches from Python), beside GEMV v3's layered step (graph and eager) and
    PyTorch's under CUDA graphs, all in this run. Each version must pass
    validate_p1 and agree with v3's step on the timed model to 1e-2 in relative
    norm (field rel_err_vs_v3). p2-p6's rows carry trace_summary of one
    traced step."""
    import cupy as cp

    m, bf, e = persistent_inputs(cp.random.default_rng(2025))
    checked = {}
    for ver in gs.P1_VERSIONS:
        try:
            checked[ver] = validate_p1(ver)
        except (AssertionError, ValueError, RuntimeError) as err:  # RuntimeError:
            checked[ver] = f"FAILED validation: {type(err).__name__}: {err}"  # sm<90
            print(f"  persistent p{ver}: {checked[ver]}", file=sys.stderr)
    torch_used = None
    if bench.torch_available():
        try:
            torch_used = validate_torch()
        except (AssertionError, RuntimeError) as err:
            torch_used = f"FAILED validation: {type(err).__name__}: {err}"
    try:
        v3_used = validate(False, 3)["stack1_first"]
    except AssertionError as err:
        v3_used = f"FAILED validation: {err}"
    k0, v0 = bf.k.copy(), bf.v.copy()
    bf.out.fill(np.nan)
    ours = cp.asnumpy(gs.plain_step(m, bf, e, S - 1, 3)).copy()
    layered = partial(gs.plain_step, m, bf, e, S - 1, 3)
    rows = []
    for name, timer in (("plain_24", bench.time_cupy),
                        ("plain_24_eager", bench.time_events)):  # fmt: skip
        row = _row(name, "plain", 1, ceil, None, version=3)
        if not isinstance(v3_used, float) or not np.isfinite(ours).all():
            rows.append(dict(row, status=str(v3_used)))
            continue
        row["error_used"] = v3_used
        rows.append(bench.finish(row, timer([layered], samples=20)))
    pk = gs.pack_plain(m, S)
    for ver, eager in ((1, False), (2, False), (3, False), (4, False), (5, False),
                       (6, False), (6, True)):  # fmt: skip
        name = "plain_24_persistent" + ("_eager" if eager else "")
        row = _row(name, "plain", 1, ceil, None, kernel=f"p{ver}")
        bf.k[...], bf.v[...] = k0, v0
        bf.out.fill(np.nan)
        got = cp.asnumpy(gs.persistent_step(pk, bf, e, S - 1, ver)).copy()
        err = bench.rel_err(got, ours) if np.isfinite(got).all() else float("nan")
        if not isinstance(checked[ver], float) or not err <= 1e-2:
            row["status"] = f"FAILED validation ({checked[ver]}; rel_err_vs_v3 {err})"
            rows.append(row)
            continue
        row.update(error_used=checked[ver], rel_err_vs_v3=err)
        step = partial(gs.persistent_step, pk, bf, e, S - 1, ver)
        timer = bench.time_events if eager else bench.time_cupy
        row = bench.finish(row, timer([step], samples=20))
        if ver >= 2 and not eager:
            tr = cp.zeros((rt.sm_count(), 2 * L, 12), np.uint64)
            gs.persistent_step(pk, bf, e, S - 1, ver, trace=tr)
            row["trace"] = trace_summary(cp.asnumpy(tr))
        rows.append(row)
    del pk
    bench.free([])
    bf.k[...], bf.v[...] = k0, v0
    rows.append(_torch_plain(m, bf, e, ours, 1, ceil, torch_used))
    return rows


def torch_plain_step(layers, gf, kc, vc, e, pos: int):
    """A plain decoder's step in PyTorch fp16 over gs.Layer weights (stack 1 of a
    gs.Model): RMSNorm by hand (float32 statistics), torch.matmul, SDPA over the
    caches kc, vc (L, B, G, S, D) torch tensors, the new K/V row written in place
    at pos. e (B, C) float32 CuPy embeddings. Returns step() -> (B, C) fp16."""
    torch = bench.torch_for_baselines()
    import torch.nn.functional as tf

    if G != H:  # y.view(b, 3, H, D) below splits q | k | v in three equal parts
        raise ValueError("the torch baseline assumes G == H")
    t = torch.from_dlpack
    lay = [
        (t(ly.g1), t(ly.wqkv), t(ly.wo), t(ly.g2), t(ly.wup), t(ly.wdown))
        for ly in layers
    ]
    gft, x0 = t(gf), t(e).half()
    b = x0.shape[0]

    def norm(x, g):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).half() * g

    def step():
        x = x0
        for j, (g1, wqkv, wo, g2, wup, wdown) in enumerate(lay):
            y = norm(x, g1) @ wqkv  # (B, 3 H D)
            q, k, v = y.view(b, 3, H, D).unbind(1)
            kc[j, :, :, pos] = k
            vc[j, :, :, pos] = v
            o = tf.scaled_dot_product_attention(q[:, :, None], kc[j], vc[j])
            x = x + o.reshape(b, H * D) @ wo
            x = x + torch.relu(norm(x, g2) @ wup) @ wdown
        return norm(x, gft)

    return step


def validate_torch() -> float:
    """Error used of torch_plain_step on the validation model (stack 1 of the
    1-layer model with separate weights is a plain decoder: its output is h)
    against the float64 reference, under the kernels' tolerance and scale."""
    import cupy as cp
    import torch

    from reference.testing import assert_close

    m, bf, e, _, pos, h_ref, _, sc = _validation_case(False)
    kc, vc = (torch.from_dlpack(a.copy())[:, 0] for a in (bf.k, bf.v))
    h = torch_plain_step(m.stacks[0], m.gf[0], kc, vc, e, pos)().float()
    torch.cuda.synchronize()
    return assert_close(cp.asnumpy(cp.from_dlpack(h)), h_ref, "stag_step", F16, sc)


def _torch_plain(m, bf, e, ours, b, ceil, torch_used) -> dict:
    """The same 24-layer model in PyTorch fp16 (torch_plain_step) over the same
    caches, under CUDA graphs. torch_used: validate_torch's result (a float), or
    the failure's status (a str)."""
    row = _row("torch_plain_24", "plain", b, ceil, None, tensor_cores=True)
    if not bench.torch_available():
        return dict(row, status=bench.TORCH_SKIP)
    import cupy as cp
    import torch

    row["torch"] = torch.__version__
    if isinstance(torch_used, str) or torch_used is None:
        row["status"] = torch_used or "FAILED validation: not validated"
        return row
    t = torch.from_dlpack
    step = torch_plain_step(
        m.stacks[0], m.gf[0], t(bf.k)[:, 0], t(bf.v)[:, 0], e, S - 1
    )
    got = step().float()
    torch.cuda.synchronize()
    rel = bench.rel_err(cp.asnumpy(cp.from_dlpack(got)), ours)
    row.update(error_used=torch_used, rel_err_vs_plain_24=rel)
    if not rel <= 1e-2:
        row["status"] = f"FAILED validation: rel. error {rel:.3g} vs plain_24"
        return row
    return bench.finish(row, bench.time_torch([step], samples=20))


def run(
    quick: bool = False, ceil: dict | None = None, tables=None
) -> dict[str, list[dict]]:
    """The tables in ``tables`` (default both): "stagformer" (every case, B, GEMV
    version) and "stagformer_persistent" (persistent_table: B = 1)."""
    import cupy as cp

    ceil = ceil or {}
    tables = tables or ("stagformer", "stagformer_persistent")
    out = {}
    if "stagformer_persistent" in tables:
        out["stagformer_persistent"] = persistent_table(ceil)
    if "stagformer" not in tables:
        return out
    checked = {}
    timed = sorted({v for vs in VERSIONS.values() for v in vs})
    for shared, ver in itertools.product((False, True), timed):
        try:
            for sched, used in validate(shared, ver).items():
                checked[(shared, sched, ver)] = used
        except AssertionError as e:
            print(
                f"  validation failed (shared={shared}, v{ver}): {e}", file=sys.stderr
            )
    torch_used = None
    if bench.torch_available():
        try:
            torch_used = validate_torch()
        except (AssertionError, RuntimeError) as e:  # RuntimeError: torch's own
            torch_used = f"FAILED validation: {type(e).__name__}: {e}"
            print(f"  torch_plain_24: {torch_used}", file=sys.stderr)
    rng = cp.random.default_rng(2025)
    rows = []
    for b in GRID.values("B", quick):
        vs = VERSIONS[b]
        rows += _plain_case(b, rng, ceil, checked, vs, torch_used)
        bench.free([])
        rows += _stag_cases(b, False, rng, ceil, checked, vs)
        rows += _stag_cases(b, True, rng, ceil, checked, vs)
    out["stagformer"] = rows
    return out
