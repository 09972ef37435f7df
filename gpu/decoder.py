"""The capstone decoder on the GPU: reference/decoder.py's tricks, composed from the
chapters' launchers (issue 20).

One decode step of a Llama-shaped MHA decoder (RMSNorm, RoPE, ReLU MLP, serial
blocks, no biases: reference.decoder.check_config) for a batch of B sequences at
one position ``pos``, with any combination of ``reference.decoder.Tricks``:

  precompute  layer 1's x, q, k, v gathered from the enlarged embedding table with
              RoPE applied on the way (chapter 2's gather_rope)
  cache "kv"  the plain path: K after RoPE and V (B, H, S, D) each, chapter 1's
              decode attention
  cache "k"   slim attention: raw keys (B, S, C), rotated on read for the scores
              and V = K W_KV (chapter 3's slim_decode with ``rope``: its v1 kernel,
              the only one that rotates)
  cache "x"   the normed layer inputs (B, S, C); under full RoPE the rotated keys
              cannot be absorbed, so every step rebuilds K = RoPE(X W_K) and
              V = X W_V for the whole cache with one GEMM and attends as "kv"
              (the cost the reference's xcache_attention documents, measured)
  kept        Deja Vu's sparse MLP (chapter 4's sparse_mlp) over a GIVEN neuron
              set per layer, or, when none is given, the ORACLE set: each row's
              ceil(kept F) largest pre-activations (reading all of W_in, so only
              for correctness), their union over the batch

The projections and the unembedding are cuBLAS GEMMs through CuPy; the glue
(RMSNorm with the residual add, the split of a projected row into q and a cache
slot with RoPE) is gpu/decoder.cu. The residual stream is float32; weights,
caches and activations are the model's dtype (float32 or float16).

Caches hold S = pos + 1 rows: a step writes slot pos and attends to all S. A
CUDA graph of one step (``Step``) is a step at a fixed S, as chapter 5's; to go
on decoding, ``grow`` copies the caches into S + 1 rows (correctness runs).

Shapes: B batch, S cache length, C width, H heads, D = C / H, F MLP width,
V vocabulary, L layers, W row width of the fused projection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from gpu import attention as att
from gpu import deja_vu as gdv
from gpu import precompute as gpc
from gpu import runtime as rt
from gpu import slim_attention as gsa
from reference import common as cm
from reference import decoder as rdec
from reference import deja_vu as rdv
from reference import precompute as rpc

SLUG = "decoder"
DTYPES = (np.float32, np.float16)
_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16"}
THREADS = 256  # DEC_THREADS in the .cu
EPS = 1e-6  # reference.common.rms_norm's


@dataclass
class Layer:
    """One layer's arrays on the GPU; None where the tricks read nothing.
    wproj: the fused projection of N1(x): [W_Q | W_K | W_V] ("kv"), [W_Q | W_K]
    ("k"), W_Q ("x"); None in layer 1 with precompute. wrebuild: [W_K | W_V]
    ("x"). w_kv: W_K^-1 W_V ("k"). w_in (C, F) dense; w1 (F, C) sparse."""

    g1: object
    wproj: object
    wrebuild: object
    w_kv: object
    wo: object
    g2: object
    w_in: object
    w1: object
    w_out: object


@dataclass
class Model:
    cfg: cm.DecoderConfig
    tricks: rdec.Tricks
    dtype: np.dtype
    embed: object  # (V, C) or None (precompute)
    table: object  # (V, C + 3 H D) or None
    layers: list
    gf: object  # (C,)
    unembed: object  # (C, V)
    cos: object  # (P, R/2) float32
    sin: object
    zeros_f: object  # (F,) the sparse MLP's b1 (no biases)
    zeros_c: object  # (C,) its b2


def rot_dim(cfg: cm.DecoderConfig) -> int:
    return cfg.D if cfg.rot_dim is None else cfg.rot_dim


def to_gpu(
    weights: cm.DecoderWeights,
    cfg: cm.DecoderConfig,
    tricks: rdec.Tricks,
    dtype,
    n_pos: int,
) -> Model:
    """The model prepared for its tricks (reference.decoder.prepare: table, W_KV
    solved in float64, W_in^T) on the GPU in ``dtype``, with RoPE tables for
    positions 0..n_pos-1. Pass float64 weights: the derived arrays are rounded
    to dtype once."""
    import cupy as cp

    dtype = np.dtype(dtype)
    if dtype not in DTYPES:
        raise TypeError(f"dtype must be float32 or float16; got {dtype}")
    if isinstance(n_pos, bool) or not isinstance(n_pos, int) or n_pos < 1:
        raise ValueError(f"n_pos must be an int >= 1; got {n_pos!r}")
    rdec.check_config(cfg)
    r = rot_dim(cfg)
    if r == 0:
        raise ValueError("the GPU decoder needs RoPE (rot_dim > 0 or None)")
    pm = rdec.prepare(weights, cfg, tricks)

    def dev(a):
        return None if a is None else cp.asarray(np.ascontiguousarray(a, dtype))

    def cat(*ws):
        return None if any(w is None for w in ws) else dev(np.concatenate(ws, 1))

    layers = []
    for lay in pm.layers:
        kind = tricks.cache
        proj = {"kv": (lay.w_q, lay.w_k, lay.w_v), "k": (lay.w_q, lay.w_k)}
        layers.append(
            Layer(
                g1=None if lay.norm1 is None else dev(lay.norm1.gamma),
                wproj=cat(*proj.get(kind, (lay.w_q,))),
                wrebuild=cat(lay.w_k, lay.w_v) if kind == "x" else None,
                w_kv=dev(lay.w_kv),
                wo=dev(lay.w_o),
                g2=dev(lay.norm2.gamma),
                w_in=dev(lay.w_in),
                w1=dev(lay.w1),
                w_out=dev(lay.w_out),
            )
        )
    cos, sin = gpc.rope_tables(n_pos, r, cfg.rope_base)
    return Model(
        cfg, tricks, dtype, dev(pm.embed), dev(pm.table), layers,
        dev(pm.norm_f.gamma), dev(pm.unembed), cos, sin,
        cp.zeros(cfg.F, dtype), cp.zeros(cfg.C, dtype),
    )  # fmt: skip


# --- the glue kernels ------------------------------------------------------------


def add_rmsnorm(x, gamma, y, add=None):
    """x += add (if given), then y = x / sqrt(mean(x^2) + 1e-6) * gamma.
    x (N, C) float32, updated in place; add, y (N, C) and gamma (C,) of one dtype."""
    rt.check_array("x", x, (np.float32,), 2)
    rt.check_array("y", y, DTYPES, 2)
    rt.check_array("gamma", gamma, (y.dtype,), 1)
    n, c = x.shape
    rt.check_shape("y", y, (n, c), "NC")
    rt.check_shape("gamma", gamma, (c,), "C")
    if add is not None:
        rt.check_array("add", add, (y.dtype,), 2)
        rt.check_shape("add", add, (n, c), "NC")
    rt.check_positive(N=n, C=c)
    fn = rt.kernel(SLUG, f"dec_add_rmsnorm_{_SUFFIX[y.dtype]}")
    fn((n,), (THREADS,), (x, add, gamma, y, np.int32(c), np.float32(EPS)))
    return y


def split(
    y,
    cos,
    sin,
    *,
    n_heads: int,
    head_dim: int,
    rot: int,
    pos0: int,
    per_b: int = 1,
    x=None,
    xo: int = -1,
    q=None,
    qo: int = -1,
    rq: bool = True,
    k=None,
    ko: int = -1,
    rk: bool = True,
    v=None,
    vo: int = -1,
):
    """Scatter the rows of y (N, W): row n is sequence n // per_b at position
    pos0 + n % per_b. x (N, C) float32 <- y[:, xo:xo+C]; q (N, H, D) <- the H
    heads at qo, rotated (rq); k, v: caches (B, H, S, D) or (B, S, H D), slot of
    each row's position <- the heads at ko (rotated if rk) and vo. RoPE: rotate-
    half on the first ``rot`` dims of each head, tables cos, sin (P, rot/2)."""
    rt.check_array("y", y, DTYPES, 2)
    n, w = y.shape
    h, d = n_heads, head_dim
    c = h * d
    rt.check_positive(N=n, H=h, D=d, per_b=per_b)
    rt.check_array("cos", cos, (np.float32,), 2)
    rt.check_array("sin", sin, (np.float32,), 2)
    if rot % 2 or not 0 <= rot <= d or cos.shape != sin.shape:
        raise ValueError(f"rot must be even in [0, D={d}]; cos, sin (P, rot/2)")
    if rot and cos.shape[1] != rot // 2:
        raise ValueError(f"cos, sin must be (P, {rot // 2}); got {cos.shape}")
    if n % per_b:
        raise ValueError(f"N = {n} rows must be a whole number of per_b = {per_b}")
    b = n // per_b
    last = pos0 + per_b - 1
    if pos0 < 0 or (rot and last >= cos.shape[0]):
        raise ValueError(f"positions {pos0}..{last} outside the tables' P")
    for nm, off in (("xo", xo), ("qo", qo), ("ko", ko), ("vo", vo)):
        if off >= 0 and off + c > w:
            raise ValueError(f"{nm} = {off} + C = {c} exceeds the row width {w}")
    if x is not None:
        rt.check_array("x", x, (np.float32,), 2)
        rt.check_shape("x", x, (n, c), "NC")
    if q is not None:
        rt.check_array("q", q, (y.dtype,), 3)
        rt.check_shape("q", q, (n, h, d), "NHD")
    strides = []
    for nm, a in (("k", k), ("v", v)):
        if a is None:
            strides.append((0, 0, 0))
            continue
        if a.ndim == 4:
            rt.check_array(nm, a, (y.dtype,), 4)
            rt.check_shape(nm, a, (b, h, a.shape[2], d), "BHSD")
            s = a.shape[2]
            strides.append((h * s * d, s * d, d))
        else:
            rt.check_array(nm, a, (y.dtype,), 3)
            rt.check_shape(nm, a, (b, a.shape[1], c), "BSC")
            s = a.shape[1]
            strides.append((s * c, d, c))
        if last >= s:
            raise ValueError(f"{nm} holds {s} positions; row positions reach {last}")
    pairs = (("x", x, xo), ("q", q, qo), ("k", k, ko), ("v", v, vo))
    for nm, a, off in pairs:
        if (a is None) != (off < 0):
            raise ValueError(f"{nm} and its offset must be given together")
    i32, i64 = np.int32, np.int64
    (kb, kh, ks), (vb, vh, vs) = strides
    args = (y, i32(w), x, i32(xo), q, i32(qo), i32(bool(rq)), k, i32(ko), i32(bool(rk)))
    args += (i64(kb), i64(kh), i64(ks), v, i32(vo), i64(vb), i64(vh), i64(vs))
    args += (cos, sin, i32(rot), i32(pos0), i32(per_b), i32(h), i32(d))
    fn = rt.kernel(SLUG, f"dec_split_{_SUFFIX[y.dtype]}")
    fn((n,), (THREADS,), args)


# --- one step ----------------------------------------------------------------------


def mlp_version(b: int, dtype) -> int:
    """Chapter 4's kernel for B rows: v7 at B = 1, v8 (tensor cores) up to 64 in
    float16; v1 (the naive twin) in float32 and beyond."""
    if np.dtype(dtype) == np.float16:
        return 7 if b == 1 else 8 if b <= gdv.V8_MAX_B else 1
    return 1


@dataclass
class State:
    """Caches and scratch of one step for B sequences with caches of S rows.
    caches[l]: (K, V) (B, H, S, D) each for "kv"; (K,) (B, S, C) for "k"; (X,)
    (B, S, C) for "x". Filled slots are < S - 1; the step writes slot S - 1."""

    b: int
    s: int
    caches: list
    x: object  # (B, C) float32 residual
    xn: object  # (B, C)
    y: object  # (B, W) the fused projection of N1(x)
    row: object  # (B, C + 3 H D) layer 1's table rows (precompute), or None
    emb: object  # (B, C) the embeddings (no precompute), or None
    positions: object  # (B,) int32, all S - 1
    q: object  # (B, H, D)
    o: object  # (B, H, D)
    po: object  # (B, C) o W_O
    hn: object  # (B, C)
    u: object  # (B, F) dense MLP
    m: object  # (B, C) MLP output
    hf: object  # (B, C)
    logits: object  # (B, V)
    gemm: object = None  # gemm(a, b, out): out = a @ b (cupy_gemm or torch_gemm)
    rebuild: object = None  # "x": (B S, 2C) and K, V (B, H, S, D)
    ws_att: object = None
    ws_slim: object = None
    ws_mlp: dict = field(default_factory=dict)
    oracle: dict = field(default_factory=dict)  # layer -> the last oracle set


def cupy_gemm(a, b, out) -> None:
    """out = a @ b through CuPy (cuBLAS). CuPy refuses cuBLAS calls while a stream
    is being captured, so a step with this GEMM runs eagerly only."""
    import cupy as cp

    cp.matmul(a, b, out=out)


def torch_gemm(a, b, out) -> None:
    """out = a @ b through PyTorch (cuBLAS) on CuPy arrays, zero-copy (DLPack), on
    torch's current stream: what a step captured in a torch CUDA graph uses (run
    it inside ``on_torch_stream`` so that the glue kernels share that stream)."""
    import torch

    t = torch.from_dlpack
    torch.matmul(t(a), t(b), out=t(out))


def on_torch_stream(fn):
    """fn() with CuPy's current stream set to torch's, so that CuPy's launches and
    torch's GEMMs are ordered on one stream (and captured together in a torch
    CUDA graph)."""
    import cupy as cp
    import torch

    with cp.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream):
        return fn()


def new_state(m: Model, b: int, s: int, gemm=cupy_gemm) -> State:
    """Zeroed caches of S rows and the scratch of a step for B sequences; gemm:
    cupy_gemm (eager) or torch_gemm (for a torch CUDA graph)."""
    import cupy as cp

    cfg, dt = m.cfg, m.dtype
    rt.check_positive(B=b, S=s)
    h, d, c = cfg.H, cfg.D, cfg.C
    kind = m.tricks.cache
    if kind == "kv":
        caches = [
            (cp.zeros((b, h, s, d), dt), cp.zeros((b, h, s, d), dt))
            for _ in range(cfg.L)
        ]
    else:
        caches = [(cp.zeros((b, s, c), dt),) for _ in range(cfg.L)]
    w = {"kv": 3 * c, "k": 2 * c, "x": c}[kind]
    tab = m.table is not None
    st = State(
        b, s, caches,
        x=cp.zeros((b, c), np.float32), xn=cp.zeros((b, c), dt),
        y=cp.zeros((b, w), dt),
        row=cp.zeros((b, rpc.row_width(cfg)), dt) if tab else None,
        emb=None if tab else cp.zeros((b, c), dt),
        positions=cp.full(b, s - 1, np.int32), q=cp.zeros((b, h, d), dt),
        o=cp.zeros((b, h, d), dt), po=cp.zeros((b, c), dt),
        hn=cp.zeros((b, c), dt), u=cp.zeros((b, cfg.F), dt),
        m=cp.zeros((b, c), dt), hf=cp.zeros((b, c), dt),
        logits=cp.zeros((b, cfg.V), dt), gemm=gemm,
    )  # fmt: skip
    av = att.fused_version(d, dt)
    if kind == "x":
        st.rebuild = (
            cp.zeros((b * s, 2 * c), dt),
            cp.zeros((b, h, s, d), dt),
            cp.zeros((b, h, s, d), dt),
        )
    if kind in ("kv", "x"):
        st.ws_att = att.new_workspace(av, b, h, s, d)
    else:
        st.ws_slim = cp.zeros(max(gsa.workspace_elems(1, b, h, s, d), 1), np.float32)
    return st


def grow(m: Model, st: State) -> State:
    """A state with caches of S + 1 rows holding st's S (the next step's)."""
    new = new_state(m, st.b, st.s + 1, st.gemm)
    for old, nw in zip(st.caches, new.caches, strict=True):
        for a, z in zip(old, nw, strict=True):
            if a.ndim == 4:
                z[:, :, : st.s] = a
            else:
                z[:, : st.s] = a
    return new


def oracle_ids(hn, w1, kept: float):
    """The oracle set of one layer: per row the ceil(kept F) largest of hn W_in
    (reference.deja_vu.top_k_ids: ties to the lower id), united over the rows;
    sorted int32 ids. Reads all of W_in: correctness runs only."""
    import cupy as cp

    f = w1.shape[0]
    k = min(f, math.ceil(kept * f))
    z = (hn.astype(cp.float64) @ w1.T.astype(cp.float64)).get()  # (B, F)
    return cp.asarray(np.unique(rdv.top_k_ids(z, k)).astype(np.int32))


def _mlp(m: Model, st: State, j: int, lay: Layer, ids, check_ids: bool):
    import cupy as cp

    if m.tricks.kept is None:
        st.gemm(st.hn, lay.w_in, st.u)
        cp.maximum(st.u, 0, out=st.u)
        st.gemm(st.u, lay.w_out, st.m)
        return
    if ids is None:
        idx = oracle_ids(st.hn, lay.w1, m.tricks.kept)
        st.oracle[j] = idx  # what a graph of this step can be given (ids)
    else:
        idx = ids[j]
    ver = mlp_version(st.b, m.dtype)
    mode = "deterministic"
    key = (ver, int(idx.size))
    if key not in st.ws_mlp:
        st.ws_mlp[key] = gdv.new_workspace(ver, st.b, m.cfg.C, int(idx.size), mode)
    gdv.sparse_mlp(
        st.hn, lay.w1, m.zeros_f, lay.w_out, m.zeros_c, idx, version=ver,
        mode=mode, out=st.m, workspace=st.ws_mlp[key], check_idx=check_ids,
    )  # fmt: skip


def _attend(m: Model, st: State, j: int, lay: Layer, pos: int, first: bool):
    """q and this step's cache slot from the projection (or the table row), then
    attention into st.o."""

    cfg, kind = m.cfg, m.tricks.cache
    h, d, c, r = cfg.H, cfg.D, cfg.C, rot_dim(cfg)
    cache = st.caches[j]
    table = first and m.table is not None
    rope = dict(n_heads=h, head_dim=d, rot=r, pos0=pos)
    if table:
        # the row [x | q | k | v] came from gather_rope with q (and k for "kv")
        # rotated; x went to st.x already. q, k at C, 2C; v at 3C.
        y, qo, rq = st.row, c, False
    else:
        y, qo, rq = st.y, 0, True
        st.gemm(st.xn, lay.wproj, y)
    if kind == "kv":
        split(y, m.cos, m.sin, **rope, q=st.q, qo=qo, rq=rq, k=cache[0],
              ko=qo + c, rk=not table, v=cache[1], vo=qo + 2 * c)  # fmt: skip
        k_all, v_all = cache
    elif kind == "k":
        split(y, m.cos, m.sin, **rope, q=st.q, qo=qo, rq=rq, k=cache[0],
              ko=qo + c, rk=False)  # fmt: skip
        gsa.slim_decode(
            st.q, cache[0], lay.w_kv, version=1, out=st.o, workspace=st.ws_slim,
            rope=(m.cos, m.sin),
        )  # fmt: skip
        return
    else:  # "x": the slot takes N1(x); keys and values rebuilt for all S
        split(y, m.cos, m.sin, **rope, q=st.q, qo=qo, rq=rq)
        split(st.xn, m.cos, m.sin, **rope, k=cache[0], ko=0, rk=False)
        yr, k_all, v_all = st.rebuild
        st.gemm(cache[0].reshape(st.b * st.s, c), lay.wrebuild, yr)
        split(yr, m.cos, m.sin, n_heads=h, head_dim=d, rot=r, pos0=0, per_b=st.s,
              k=k_all, ko=0, v=v_all, vo=c)  # fmt: skip
    att.decode_attention(
        st.q, k_all, v_all, version=att.fused_version(d, m.dtype), out=st.o,
        workspace=st.ws_att,
    )  # fmt: skip


def _check_tokens(tokens, v: int) -> None:
    lo, hi = int(tokens.min()), int(tokens.max())  # a sync: not inside a graph
    if lo < 0 or hi >= v:
        raise ValueError(f"tokens must lie in [0, V={v}); got {lo}..{hi}")


def decode_step(
    m: Model, st: State, tokens, pos: int, ids=None, check_ids: bool = True
):
    """One step: tokens (B,) int32 at position pos = S - 1 -> st.logits (B, V).
    Writes slot pos of every cache. ids: None (the oracle set, correctness
    runs) or, with kept, one int32 id array per layer (the given set; what a
    CUDA graph captures). check_ids: check tokens (and given ids) on the device
    first, a host sync; pass False inside a graph capture, for ids checked
    before. Returns st.logits."""
    import cupy as cp

    cfg = m.cfg
    if not isinstance(st, State):
        raise TypeError(f"st must be a State (new_state); got {type(st).__name__}")
    rt.check_array("tokens", tokens, (np.int32,), 1)
    rt.check_shape("tokens", tokens, (st.b,), "B")
    if pos != st.s - 1:
        raise ValueError(f"pos must be S - 1 = {st.s - 1} (the state's last slot)")
    if pos >= m.cos.shape[0]:
        raise ValueError(f"pos = {pos} is beyond the RoPE tables ({m.cos.shape[0]})")
    if ids is not None and (m.tricks.kept is None or len(ids) != cfg.L):
        raise ValueError("ids: one array per layer, and only with tricks.kept")
    c = cfg.C
    if m.table is not None:  # q (and k for "kv": "k" caches raw keys) rotated
        n_rot = 2 * cfg.H if m.tricks.cache == "kv" else cfg.H
        gpc.gather_rope(
            m.table, tokens, st.positions, m.cos, m.sin,
            rot_off=gpc.layout_of(cfg)["rot_off"], n_heads=n_rot, head_dim=cfg.D,
            rot_dim=rot_dim(cfg), out=st.row, check_ids=check_ids,
        )  # fmt: skip
        split(st.row, m.cos, m.sin, n_heads=cfg.H, head_dim=cfg.D, rot=0,
              pos0=pos, x=st.x, xo=0)  # fmt: skip
    else:
        if check_ids:
            _check_tokens(tokens, cfg.V)
        cp.take(m.embed, tokens, axis=0, out=st.emb)
        st.x[...] = st.emb
    add = None
    for j, lay in enumerate(m.layers):
        first = j == 0
        if lay.g1 is not None:
            add_rmsnorm(st.x, lay.g1, st.xn, add)
            add = None
        elif add is not None:  # cannot happen: only layer 1 skips N1
            raise AssertionError("a later layer without its norm")
        _attend(m, st, j, lay, pos, first)
        st.gemm(st.o.reshape(st.b, c), lay.wo, st.po)
        add_rmsnorm(st.x, lay.g2, st.hn, st.po)
        _mlp(m, st, j, lay, ids, check_ids)
        add = st.m
    add_rmsnorm(st.x, m.gf, st.hf, add)
    st.gemm(st.hf, m.unembed, st.logits)
    return st.logits


# --- whole sequences (correctness runs) --------------------------------------------


def poison_state(st: State) -> None:
    """NaN into everything a step must write before it reads it: the scratch
    arrays and every cache's last slot (S - 1). A step that forgets an element
    leaves NaN in the logits. (Workspaces whose counters must come zeroed, the
    attention's and the sparse MLP's, are left alone.)"""
    nan = np.nan
    for a in (st.x, st.xn, st.y, st.q, st.o, st.po, st.hn, st.u, st.m, st.hf,
              st.logits, st.row, st.emb, *(st.rebuild or ())):  # fmt: skip
        if a is not None:
            a.fill(nan)
    for cache in st.caches:
        for a in cache:
            if a.ndim == 4:
                a[:, :, -1] = nan
            else:
                a[:, -1] = nan


def _advance(m: Model, st: State, i: int, tok, ids, poison: bool):
    """Step i of a sequence: the caches grown to i + 1 rows (after step 0),
    poisoned if asked, then decode_step on tok (B,) ints. Returns (state, logits)."""
    import cupy as cp

    if i:
        st = grow(m, st)
    if poison:
        poison_state(st)
    return st, decode_step(m, st, cp.asarray(np.asarray(tok, np.int32)), i, ids)


def forced_logits(
    m: Model, tokens, n_prompt: int, ids=None, poison: bool = False
) -> np.ndarray:
    """Teacher forcing as reference.decoder.forced_logits, one decode step per
    token: tokens (B, T) ints; returns the float64 logits (B, T - T0, V) that
    predict tokens[:, T0:] (T0 = n_prompt). Caches grow by a copy each step;
    poison: poison_state before each step (tests)."""
    import cupy as cp

    tokens = np.asarray(tokens)
    b, t = tokens.shape
    if not 1 <= n_prompt < t:
        raise ValueError(f"n_prompt must lie in [1, T) for tokens {tokens.shape}")
    st, out = new_state(m, b, 1), []
    for i in range(t - 1):
        st, logits = _advance(m, st, i, tokens[:, i], ids, poison)
        if i >= n_prompt - 1:
            out.append(cp.asnumpy(logits).astype(np.float64))
    return np.stack(out, axis=1)


def greedy_generate(
    m: Model, prompt, n_new: int, ids=None, poison: bool = False
) -> np.ndarray:
    """Greedy decoding as reference.decoder.greedy_generate: prompt (B, T0) ints;
    returns all tokens (B, T0 + n_new). poison: as forced_logits."""
    import cupy as cp

    tokens = np.asarray(prompt)
    b, t0 = tokens.shape
    st = new_state(m, b, 1)
    for i in range(t0 + n_new - 1):
        st, logits = _advance(m, st, i, tokens[:, i], ids, poison)
        if i >= t0 - 1:
            nxt = cp.asnumpy(cp.argmax(logits, axis=1)).astype(tokens.dtype)
            tokens = np.concatenate([tokens, nxt[:, None]], axis=1)
    return tokens


# --- the full shape on the GPU (the benchmark) ---------------------------------------


@dataclass
class Base:
    """A random model's base weights on the GPU (one dtype): embed (V, C); per
    layer g1, wq, wk, wv, wo, g2, w_in, w_out; gf, unembed. W_K is drawn with
    cond(W_K) = ``cond`` (K-only caches in fp16 need a well-conditioned W_K:
    chapter 3). Weights random: what a step costs does not depend on them."""

    cfg: cm.DecoderConfig
    dtype: np.dtype
    embed: object
    layers: list  # dicts of the arrays above
    gf: object
    unembed: object


def random_base(cfg: cm.DecoderConfig, dtype, seed: int, cond: float = 4.0) -> Base:
    """Random base weights with the reference's scales (cm.init_decoder: N(0, 1/C)
    projections, W_out N(0, 1/F), unit norms), drawn on the GPU."""
    import cupy as cp

    rdec.check_config(cfg)
    rng = cp.random.default_rng(seed)
    dt = np.dtype(dtype)
    c, f = cfg.C, cfg.F

    def normal(shape, std):
        return (rng.standard_normal(shape, dtype=np.float32) * std).astype(dt)

    def well_conditioned():  # U diag(sigma) V^T, sigma from 1 to 1/cond
        u, _ = cp.linalg.qr(rng.standard_normal((c, c), dtype=np.float32))
        v, _ = cp.linalg.qr(rng.standard_normal((c, c), dtype=np.float32))
        sig = cp.geomspace(1.0, 1.0 / cond, c, dtype=np.float32)
        w = (u * sig) @ v.T
        return (w * math.sqrt(c) / cp.linalg.norm(w)).astype(dt)  # |W|_F^2 = C

    layers = []
    for _ in range(cfg.L):
        layers.append(
            dict(
                g1=cp.ones(c, dt),
                wq=normal((c, c), c**-0.5),
                wk=well_conditioned(),
                wv=normal((c, c), c**-0.5),
                wo=normal((c, c), c**-0.5),
                g2=cp.ones(c, dt),
                w_in=normal((c, f), c**-0.5),
                w_out=normal((f, c), f**-0.5),
            )  # fmt: skip
        )
    embed = normal((cfg.V, c), 1.0)
    return Base(cfg, dt, embed, layers, cp.ones(c, dt), normal((c, cfg.V), c**-0.5))


def from_base(base: Base, tricks: rdec.Tricks, n_pos: int) -> Model:
    """The Model of ``tricks`` derived on the GPU from base (as
    reference.decoder.prepare: the table [E | N1(E) W_Q | N1(E) W_K | N1(E) W_V],
    W_KV = solve(W_K, W_V) in float32, W_in^T), sharing base's arrays where it
    can. Arrays the tricks do not read are None."""
    import cupy as cp

    cfg, dt = base.cfg, base.dtype
    layers = []
    for i, w in enumerate(base.layers):
        tab = i == 0 and tricks.precompute
        kind = tricks.cache
        reads = rdec._reads(tricks, i == 0)
        proj = {"kv": ("wq", "wk", "wv"), "k": ("wq", "wk"), "x": ("wq",)}[kind]
        wproj = None if tab else cp.concatenate([w[n] for n in proj], axis=1)
        w_kv = None
        if kind == "k":
            w_kv = cp.linalg.solve(
                w["wk"].astype(np.float32), w["wv"].astype(np.float32)
            )
            w_kv = w_kv.astype(dt)
        layers.append(
            Layer(
                g1=w["g1"] if "norm1" in reads else None,
                wproj=wproj,
                wrebuild=cp.concatenate([w["wk"], w["wv"]], axis=1)
                if kind == "x"
                else None,
                w_kv=w_kv,
                wo=w["wo"],
                g2=w["g2"],
                w_in=w["w_in"] if tricks.kept is None else None,
                w1=cp.ascontiguousarray(w["w_in"].T)
                if tricks.kept is not None
                else None,
                w_out=w["w_out"],
            )  # fmt: skip
        )
    table = None
    if tricks.precompute:
        w0 = base.layers[0]
        en = cp.empty_like(base.embed)  # N1(E), V rows
        add_rmsnorm(base.embed.astype(np.float32), w0["g1"], en)
        table = cp.concatenate(
            [base.embed] + [en @ w0[n] for n in ("wq", "wk", "wv")], axis=1
        )
    cos, sin = gpc.rope_tables(n_pos, rot_dim(cfg), cfg.rope_base)
    return Model(
        cfg, tricks, dt, None if tricks.precompute else base.embed, table, layers,
        base.gf, base.unembed, cos, sin, cp.zeros(cfg.F, dt), cp.zeros(cfg.C, dt),
    )  # fmt: skip


def fill_caches(base: Base, m: Model, st: State, seed: int) -> None:
    """Consistent caches for rows 0..S-2 of every layer from one random past: the
    normed inputs X_l (B, S-1, C) ~ N(0, 1), drawn from seed + l, give the X cache
    X_l, the K-only cache X_l W_K and the K+V cache RoPE(X_l W_K), X_l W_V (base's
    W_K, W_V). So every composition of one base attends to the same keys and
    values, and their logits agree. Eager (CuPy's GEMM): not inside a capture."""
    import cupy as cp

    cfg, kind = m.cfg, m.tricks.cache
    b, s, c = st.b, st.s, cfg.C
    if s < 2:
        return
    for j, cache in enumerate(st.caches):
        rng = cp.random.default_rng(seed + j)
        x = rng.standard_normal((b * (s - 1), c), dtype=np.float32).astype(m.dtype)
        if kind == "x":
            cache[0][:, : s - 1] = x.reshape(b, s - 1, c)
            continue
        w = base.layers[j]
        if kind == "k":
            cache[0][:, : s - 1] = (x @ w["wk"]).reshape(b, s - 1, c)
            continue
        kv = cp.concatenate([x @ w["wk"], x @ w["wv"]], axis=1)  # (B (S-1), 2C)
        del x
        tmp = [cp.empty((b, cfg.H, s - 1, cfg.D), m.dtype) for _ in range(2)]
        split(kv, m.cos, m.sin, n_heads=cfg.H, head_dim=cfg.D, rot=rot_dim(cfg),
              pos0=0, per_b=s - 1, k=tmp[0], ko=0, v=tmp[1], vo=c)  # fmt: skip
        cache[0][:, :, : s - 1] = tmp[0]
        cache[1][:, :, : s - 1] = tmp[1]
        del kv, tmp


def step_bytes(
    cfg: cm.DecoderConfig, tricks: rdec.Tricks, b: int, s: int, item: int,
    n_kept: int | None = None,
) -> int:  # fmt: skip
    """Bytes one step must move at least: every weight it reads once (4 C^2 of
    attention weights a layer: W_Q, W_K, W_V, W_O; or W_KV for W_V; the X cache's
    rebuild reads W_K and W_V), the MLP (2 C F; the sparse MLP: n_kept rows of
    W_in^T and of W_out, the union), the norms, the caches read (B S tokens of
    every layer: 2C ("kv") or C ("k", "x") values each), the unembedding C V, the
    B logits and B embedding rows. Layer 1 with precompute reads B table rows
    instead of N1 and the projections the table holds (kv: W_Q, W_K, W_V; k: W_Q,
    W_K; x: W_Q). Scratch traffic is not counted: it is what an implementation
    adds (the X cache's rebuilt K and V are such)."""
    c, f, v, lz = cfg.C, cfg.F, cfg.V, cfg.L
    per_tok = 2 * c if tricks.cache == "kv" else c
    mlp = 2 * c * (f if tricks.kept is None else (n_kept or 0))
    n = lz * (4 * c * c + mlp + 2 * c) + lz * b * s * per_tok + c * v + b * v + c
    if tricks.precompute:
        saved = {"kv": 3 * c * c + c, "k": 2 * c * c + c, "x": c * c}[tricks.cache]
        n += b * rpc.row_width(cfg) - saved
    else:
        n += b * c
    return n * item


def step_flops(
    cfg: cm.DecoderConfig, tricks: rdec.Tricks, b: int, s: int,
    n_kept: int | None = None,
) -> int:  # fmt: skip
    """FLOPs of one step: 2 B per weight read as above (the table rows: none), the
    attention (K+V: 4 B S C; K-only: the scores 2 B S C, the sum over all C
    columns for every head 2 B H S C, W_KV's 2 B C^2 counted with the weights;
    X cache as implemented here: the rebuild 4 B S C^2 plus the K+V attention),
    the unembedding 2 B C V."""
    c, f, v, lz, h = cfg.C, cfg.F, cfg.V, cfg.L, cfg.H
    mlp = 2 * c * (f if tricks.kept is None else (n_kept or 0))
    attn = {
        "kv": 4 * b * s * c,
        "k": 2 * b * s * c + 2 * b * h * s * c,
        "x": 4 * b * s * c * c + 4 * b * s * c,
    }[tricks.cache]
    n = lz * (2 * b * (4 * c * c + mlp) + attn) + 2 * b * c * v
    if tricks.precompute:
        saved = {"kv": 3 * c * c, "k": 2 * c * c, "x": c * c}[tricks.cache]
        n -= 2 * b * saved
    return n
