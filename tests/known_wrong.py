"""Known-wrong variants: small, realistic mistakes per trick, and the check that
must reject each (STYLE R8; gpu-mode's ``solutions/wrong/``).

Every trick has one or two *cases*: fixed inputs, the float64 truth, the right
computation, and the *check* its property test applies to that quantity (the same
reference.testing.assert_close kind, dtype and scale; in float32 also the typical
check of TypicalError). A *variant* is the right computation with one mistake a
person writing the kernel or the reference could make: an off-by-one key, a RoPE
sign or pairing, an fp16 intermediate, a dropped bias, a transposed weight, a stale
cache row, a wrong gate, a wrong union, a wrong stagger offset. ``run()`` applies
each case's check to the right result (which must pass) and to every variant
(which must fail); tests/test_known_wrong.py requires that, and
``caught_per_trick()`` gives the counts a chapter can print:

    import sys; sys.path.insert(0, "../tests")
    import known_wrong; known_wrong.caught_per_trick()

CPU only, NumPy only (the variants are NumPy twins of the kernels' mistakes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from reference import common as cm
from reference import deja_vu as dv
from reference import ffn_approx as fa
from reference import precompute as pc
from reference import slim_attention as sa
from reference import stagformer as sf
from reference.testing import (
    TypicalError,
    assert_close,
    attention_scale,
    attention_typical,
    kv_fold_scale,
    moe_scale,
    slim_typical,
    sparse_mlp_scale,
)

F64, F32, F16 = np.float64, np.float32, np.float16


@dataclass(frozen=True)
class Case:
    """One quantity a property test checks: inputs and truth (``make``), the right
    computation, the check (raises AssertionError) and the mistakes it must catch."""

    trick: str
    name: str
    make: Callable[[], dict]
    right: Callable[[dict], object]
    check: Callable[[dict, object], None]
    variants: dict[str, Callable[[dict], object]]


@dataclass(frozen=True)
class Outcome:
    trick: str
    case: str
    variant: str
    caught: bool
    why: str


# --- attention (chapter 1, the baseline of every attention chapter) ---------------


def _att_make() -> dict:
    rng = np.random.default_rng(0)
    b, h, g, s, d = 2, 6, 2, 300, 32
    q = rng.standard_normal((b, h, d)).astype(F32)
    k = rng.standard_normal((b, g, s, d)).astype(F32)
    v = rng.standard_normal((b, g, s, d)).astype(F32)
    f64 = [a.astype(F64) for a in (q, k, v)]
    return dict(q=q, k=k, v=v, want=cm.decode_attention(*f64), f64=f64)


def _decode32(q, k, v, scale=True, p16=False, head=None, axis=-1):
    """Decode attention in float32 with one knob per mistake."""
    b, h, d = q.shape
    g = k.shape[1]
    heads = [i // (h // g) for i in range(h)] if head is None else head(h, g)
    kk, vv = k[:, heads], v[:, heads]  # (B, H, S, D)
    s = np.einsum("bhd,bhsd->bhs", q, kk)  # (B, H, S)
    if scale:
        s = s / F32(math.sqrt(d))
    p = cm.softmax(s, axis=axis)
    if p16:
        p = p.astype(F16).astype(F32)
    return np.einsum("bhs,bhsd->bhd", p, vv)  # (B, H, D)


def _att_check(c: dict, got) -> None:
    """tests/test_attention.py: the "gpu" float32 row with attention_scale, then the
    typical error (attention_typical)."""
    q, k, v = c["f64"]
    assert_close(got, c["want"], "gpu", F32, attention_scale(q, k, v))
    t = TypicalError("attention")
    t.add(got, c["want"], attention_typical(q, k, v))
    t.check()


def _stale(c):  # the newest row not written yet: it still holds the previous one
    k, v = c["k"].copy(), c["v"].copy()
    k[:, :, -1], v[:, :, -1] = k[:, :, -2], v[:, :, -2]
    return _decode32(c["q"], k, v)


ATTENTION = Case(
    "attention", "decode attention, float32 vs float64", _att_make,
    lambda c: _decode32(c["q"], c["k"], c["v"]), _att_check,
    {
        "dropped last key": lambda c: _decode32(
            c["q"], c["k"][:, :, :-1], c["v"][:, :, :-1]),
        "first key skipped (off by one)": lambda c: _decode32(
            c["q"], c["k"][:, :, 1:], c["v"][:, :, 1:]),
        "stale cache row": _stale,
        "no 1/sqrt(D)": lambda c: _decode32(c["q"], c["k"], c["v"], scale=False),
        "probabilities stored in fp16": lambda c: _decode32(
            c["q"], c["k"], c["v"], p16=True),
        "GQA head h reads KV head h % G": lambda c: _decode32(
            c["q"], c["k"], c["v"], head=lambda h, g: [i % g for i in range(h)]),
        "softmax over heads, not keys": lambda c: _decode32(
            c["q"], c["k"], c["v"], axis=1),
    },
)  # fmt: skip


# --- precompute (chapter 2) ---------------------------------------------------------


def _pre_make() -> dict:
    cfg = cm.DecoderConfig(V=11, C=24, H=4, G=2, D=6, F=8, L=1, norm="layernorm",
                           act="gelu", rot_dim=4)  # fmt: skip
    rng = np.random.default_rng(1)
    w = cm.init_decoder(cfg, rng)
    tokens, step = rng.integers(0, 11, (2, 5)), rng.integers(0, 11, (2, 1))
    tokens[0, 0] = 10
    cache = cm.KVCache.empty(2, cfg.G, cfg.D)
    y1, cache = cm.serial_block(w.embed[tokens], w.layers[0], cfg, cache)
    y2, cache = cm.serial_block(w.embed[step], w.layers[0], cfg, cache)
    return dict(cfg=cfg, w=w, tokens=tokens, step=step, want=(y1, y2, cache.k))


def _rope_pairs(x, pos, r, base, inverse=False):
    """RoPE with the pairs (2i, 2i + 1) (GPT-J's interleaved form) instead of the
    model's (i, i + R/2): the wrong order for a GPT-NeoX/Llama checkpoint."""
    cos, sin = cm.rope_cos_sin(pos, r, base)
    y = x.copy()
    x1, x2 = x[..., 0:r:2], x[..., 1:r:2]
    y[..., 0:r:2], y[..., 1:r:2] = x1 * cos - x2 * sin, x2 * cos + x1 * sin
    return y


def _table_layer(c, table=None, rope_q=None, rope_k=None, k_before_rope=False,
                 shift=0, ids=lambda t: t):  # fmt: skip
    """pc.first_layer_from_table + pc.attend over a prefill and one step, with one
    knob per mistake. Returns (y1, y2, cached keys) like _pre_make's truth."""
    cfg, w = c["cfg"], c["w"]
    layer = w.layers[0]
    table = pc.build_table(w.embed, layer, cfg) if table is None else table
    lay, a = pc.row_layout(cfg), layer.attn

    def rot(x, pos):
        return cm.apply_rope(x, pos, cfg.rot_dim, cfg.rope_base)

    rope_q, rope_k = rope_q or rot, rope_k or rot
    cache, outs = cm.KVCache.empty(2, cfg.G, cfg.D), []
    for tok in (c["tokens"], c["step"]):
        row = table[ids(tok)]  # (B, T, W)
        b, t = tok.shape
        s0 = cache.k.shape[2]
        pos = np.arange(s0, s0 + t) + shift

        def heads(y, n, b=b, t=t):  # (B, T, n*D) -> (B, n, T, D)
            return y.reshape(b, t, n, cfg.D).transpose(0, 2, 1, 3)

        q = rope_q(heads(row[..., lay["q"]], cfg.H), pos)
        kr = heads(row[..., lay["k"]], cfg.G)
        k = rope_k(kr, pos)
        cache = cache.append(
            kr if k_before_rope else k, heads(row[..., lay["v"]], cfg.G)
        )
        o = cm.attention(q, cache.k, cache.v, causal=True, q_offset=s0)
        att = pc.linear(o.transpose(0, 2, 1, 3).reshape(b, t, -1), a.w_o, a.b_o)
        h = row[..., lay["x"]] + att
        outs.append(h + pc.ffn(cm.norm(h, layer.norm2, cfg.norm), layer.mlp, cfg.act))
    return outs[0], outs[1], cache.k


def _pre_check(c: dict, got) -> None:
    """tests/test_precompute.py: both first layers against reference.common's block,
    the "rewrite" float64 row, outputs and cached keys."""
    for g, w in zip(got, c["want"], strict=True):
        assert_close(g, w, "rewrite", F64)


def _pre_table(c, **attn_or_layer):
    w, cfg = c["w"], c["cfg"]
    layer = w.layers[0]
    attn = {k: v for k, v in attn_or_layer.items() if k.startswith(("w_", "b_"))}
    layer = dataclasses.replace(layer, attn=dataclasses.replace(layer.attn, **attn))
    if "norm1" in attn_or_layer:
        layer = dataclasses.replace(layer, norm1=attn_or_layer["norm1"])
    return pc.build_table(w.embed, layer, cfg)


def _rope_inverse(c):
    cfg = c["cfg"]

    def inv(x, pos):
        return cm.apply_rope(x, pos, cfg.rot_dim, cfg.rope_base, inverse=True)

    return _table_layer(c, rope_q=inv, rope_k=inv)


def _rope_interleaved(c):
    cfg = c["cfg"]

    def pairs(x, pos):
        return _rope_pairs(x, pos, cfg.rot_dim, cfg.rope_base)

    return _table_layer(c, rope_q=pairs, rope_k=pairs)


PRECOMPUTE = Case(
    "precompute", "first layer from the table vs common's block", _pre_make,
    _table_layer, _pre_check,
    {
        "table built with N2 instead of N1": lambda c: _table_layer(
            c, table=_pre_table(c, norm1=c["w"].layers[0].norm2)),
        "b_K left out of the table": lambda c: _table_layer(
            c, table=_pre_table(c, b_k=None)),
        "W_Q transposed (square here, so the shapes pass)": lambda c: _table_layer(
            c, table=_pre_table(c, w_q=c["w"].layers[0].attn.w_q.T.copy())),
        "row of the next token id": lambda c: _table_layer(
            c, ids=lambda t: (t + 1) % c["cfg"].V),
        "RoPE sign flipped": _rope_inverse,
        "RoPE pairs interleaved (GPT-J order)": _rope_interleaved,
        "k cached before RoPE": lambda c: _table_layer(c, k_before_rope=True),
        "RoPE dropped on k": lambda c: _table_layer(c, rope_k=lambda x, pos: x),
        "positions start at 1": lambda c: _table_layer(c, shift=1),
    },
)  # fmt: skip


# --- slim attention (chapter 3) ----------------------------------------------------


def _slim_make() -> dict:
    rng = np.random.default_rng(2)
    b, h, d, s = 2, 4, 8, 24
    c = h * d
    x = rng.standard_normal((b, s, c))
    w_k = sa.matrix_with_cond(c, 100.0, rng)
    w_v = rng.standard_normal((c, c)) / math.sqrt(c)
    b_k, b_v = rng.standard_normal(c), rng.standard_normal(c)
    q = rng.standard_normal((b, h, d))
    k, v = x @ w_k + b_k, x @ w_v + b_v
    w_kv = sa.fold_w_kv(w_k, w_v)
    att = attention_scale(q, sa.split_heads(k, h), sa.split_heads(v, h))
    return dict(q=q, x=x, w_k=w_k, w_v=w_v, b_k=b_k, b_v=b_v, w_kv=w_kv,
                want=sa.kv_decode(q, k, v), k_raw=x @ w_k,
                scale=2 * att + kv_fold_scale(x, w_k, w_kv))  # fmt: skip


def _slim32(c, cache=None, w=None, b_v="right", heads_only=False):
    """slim_decode in float32 on rounded inputs, one knob per mistake."""
    q = c["q"].astype(F32)
    kc = (c["k_raw"] if cache is None else cache).astype(F32)
    w = (c["w_kv"] if w is None else w).astype(F32)
    bv = c["b_v"].astype(F32) if isinstance(b_v, str) else b_v
    if not heads_only:
        return sa.slim_decode(q, kc, w, bv)
    h, d = q.shape[1:]
    out = np.empty_like(q)  # each head accumulates only its own D columns of K
    for i in range(h):
        cols = slice(i * d, (i + 1) * d)
        one = sa.slim_decode(q[:, i : i + 1], kc[..., cols], w[cols, cols])
        out[:, i] = one[:, 0] + bv[cols]
    return out


def _slim_check(c: dict, got) -> None:
    """tests/test_slim_attention.py, float32: the "gpu" row with kv_fold_scale +
    attention_scale, then the typical error (slim_typical)."""
    assert_close(got, c["want"], "gpu", F32, c["scale"])
    t = TypicalError("slim")
    t.add(got, c["want"], slim_typical(c["q"], c["k_raw"], c["w_kv"], c["b_v"]))
    t.check()


def _next_head_scores(c):
    """Head h scores against head h + 1's key columns (a head offset off by one)."""
    q, kc = c["q"].astype(F32), c["k_raw"].astype(F32)
    h, d = q.shape[1:]
    k = np.roll(sa.split_heads(kc, h), -1, axis=1)  # (B, H, S, D): head h + 1's
    p = cm.softmax(np.einsum("bhd,bhsd->bhs", q, k) / F32(math.sqrt(d)))
    u = np.einsum("bhs,bse->bhe", p, kc)  # (B, H, C)
    w_h = c["w_kv"].astype(F32).reshape(h * d, h, d).transpose(1, 0, 2)
    return np.einsum("bhe,hed->bhd", u, w_h) + c["b_v"].astype(F32).reshape(h, d)


SLIM = Case(
    "slim_attention", "K-only decode, float32 vs the K+V baseline", _slim_make,
    _slim32, _slim_check,
    {
        "b_V forgotten": lambda c: _slim32(c, b_v=None),
        "b_K left in the cache": lambda c: _slim32(c, cache=c["k_raw"] + c["b_k"]),
        "W_V used instead of W_KV": lambda c: _slim32(c, w=c["w_v"]),
        "W_KV transposed": lambda c: _slim32(c, w=c["w_kv"].T),
        "each head sums only its own columns of K": lambda c: _slim32(
            c, heads_only=True),
        "W_KV stored in fp16": lambda c: _slim32(c, w=c["w_kv"].astype(F16)),
        "head h scored on head h + 1's key columns": _next_head_scores,
    },
)  # fmt: skip


def _rope_make() -> dict:
    rng = np.random.default_rng(3)
    b, h, d, s = 2, 3, 8, 12
    c = h * d
    x = rng.standard_normal((b, s, c))
    w_k = sa.matrix_with_cond(c, 100.0, rng)
    w_v = rng.standard_normal((c, c)) / math.sqrt(c)
    b_k, b_v = rng.standard_normal(c), rng.standard_normal(c)
    pos = np.arange(s)
    q = cm.apply_rope(rng.standard_normal((b, h, 1, d)), pos[-1:])[:, :, 0]
    k_raw = x @ w_k + b_k  # (B, S, C): raw keys with their bias
    k_rot = cm.apply_rope(sa.split_heads(k_raw, h), pos)  # the standard cache
    v = x @ w_v + b_v
    w_kv = sa.fold_w_kv(w_k, w_v)
    scale = 2 * attention_scale(q, k_rot, sa.split_heads(v, h))
    return dict(q=q, k_raw=k_raw, k_rot=k_rot.transpose(0, 2, 1, 3).reshape(b, s, c),
                w_kv=w_kv, b_v=b_v, b_fold=sa.fold_b_v(w_kv, b_k, b_v), pos=pos,
                want=cm.decode_attention(q, k_rot, sa.split_heads(v, h)),
                scale=scale + kv_fold_scale(x, w_k, w_kv))  # fmt: skip


SLIM_ROPE = Case(
    "slim_attention", "K-only decode with RoPE, float64", _rope_make,
    lambda c: sa.slim_decode(c["q"], c["k_raw"], c["w_kv"], c["b_fold"],
                             positions=c["pos"]),
    lambda c, got: assert_close(got, c["want"], "slim", F64, c["scale"]),
    {
        "RoPE'd keys fed to W_KV": lambda c: sa.slim_decode(
            c["q"], c["k_rot"], c["w_kv"], c["b_fold"]),
        "b_K not folded into b_V under RoPE": lambda c: sa.slim_decode(
            c["q"], c["k_raw"], c["w_kv"], c["b_v"], positions=c["pos"]),
        "keys rotated one position late": lambda c: sa.slim_decode(
            c["q"], c["k_raw"], c["w_kv"], c["b_fold"], positions=c["pos"] + 1),
    },
)  # fmt: skip


# --- Deja Vu (chapter 4) -----------------------------------------------------------


def _dv_make() -> dict:
    rng = np.random.default_rng(4)
    w = dv.random_mlp(rng, 64, 256, 0.1)
    x = rng.standard_normal((3, 64))
    mask = dv.active_set(x, w)  # (B, F)
    t = rng.permutation(dv.union_indices(mask))  # unsorted, as a predictor gives
    scale = sparse_mlp_scale(x, w.w1, w.b1, w.w2, w.b2, worst_case=True)
    return dict(x=x, w=w, t=t, mask=mask, want=dv.dense_mlp(x, w), scale=scale)


def _gathered(c, t=None, b1=None, w2_rows=None, b2=True, relu_first=False):
    """The gathered MLP relu(x W1[T]^T + b1[T]) W2[T] + b2 with one knob per mistake."""
    w, x = c["w"], c["x"]
    t = c["t"] if t is None else t
    b1 = w.b1[t] if b1 is None else b1
    z = x @ w.w1[t].T  # (B, K)
    a = np.maximum(z, 0) + b1 if relu_first else np.maximum(z + b1, 0)
    y = a @ w.w2[t if w2_rows is None else w2_rows]
    return y + w.b2 if b2 else y


def _dv_missing(c):
    z = dv.preactivations(c["x"], c["w"])
    top = int(np.argmax(z.max(axis=0)))  # the largest activation of the batch
    return _gathered(c, t=c["t"][c["t"] != top])


DEJA_VU = Case(
    "deja_vu", "sparse MLP over the batch's union vs dense", _dv_make, _gathered,
    lambda c, got: assert_close(got, c["want"], "dot", F64, c["scale"]),
    {
        "one active neuron missing": _dv_missing,
        "union replaced by row 0's active set": lambda c: _gathered(
            c, t=np.flatnonzero(c["mask"][0])),
        "intersection instead of union": lambda c: _gathered(
            c, t=np.flatnonzero(c["mask"].all(axis=0))),
        "b1[:K] instead of b1[T]": lambda c: _gathered(
            c, b1=c["w"].b1[: c["t"].size]),
        "b2 dropped": lambda c: _gathered(c, b2=False),
        "ReLU before the bias": lambda c: _gathered(c, relu_first=True),
        "W2 rows gathered in sorted order": lambda c: _gathered(
            c, w2_rows=np.sort(c["t"])),
    },
)  # fmt: skip


# --- StagFormer (chapter 5) --------------------------------------------------------


def _sf_make() -> dict:
    base = cm.DecoderConfig(V=13, C=8, H=2, G=2, D=4, F=8, L=1, norm="rmsnorm",
                            act="relu")  # fmt: skip
    cfg = sf.StagConfig(base)
    rng = np.random.default_rng(5)
    w = sf.init_stagformer(cfg, rng)
    tokens = rng.integers(0, 13, (2, 6))
    want, _ = sf.prefill(w, cfg, tokens)
    return dict(cfg=cfg, w=w, tokens=tokens, want=want)


def _sf_decode(c, cfg=None):
    cfg = c["cfg"] if cfg is None else cfg
    state, out = sf.empty_state(cfg, c["tokens"].shape[0]), []
    for i in range(c["tokens"].shape[1]):
        lg, state = sf.decode_step(c["w"], cfg, c["tokens"][:, i], state)
        out.append(lg)
    return np.stack(out, axis=1)  # (B, T, V)


@contextlib.contextmanager
def _mask(lag: int, null: bool = True):
    """sf.visible with the memory lag ``lag`` (right: 1, query t sees h_j, j <= t -
    1) and with or without the null slot: the stagger a variant gets wrong."""
    right = sf.visible

    def wrong(t_q, n_mem, window):
        ok = right(np.asarray(t_q) - (lag - 1), n_mem, window)
        if not null:
            ok[:, 0] = False
        return ok

    sf.visible = wrong
    try:
        yield
    finally:
        sf.visible = right


def _sf_prefill(c, lag=1, null=True, window=None):
    cfg = dataclasses.replace(c["cfg"], window=window)
    with _mask(lag, null), np.errstate(invalid="ignore"):
        return sf.prefill(c["w"], cfg, c["tokens"])[0]


STAGFORMER = Case(
    "stagformer", "staggered decode vs the masked prefill", _sf_make, _sf_decode,
    lambda c, got: assert_close(got, c["want"], "rewrite", F64,
                                float(np.abs(c["want"]).max())),
    {
        "stagger off by one (h_i visible at i)": lambda c: _sf_prefill(c, lag=0),
        "memory two steps late (h_{i-1} hidden)": lambda c: _sf_prefill(c, lag=2),
        "window too short (W = T - 2)": lambda c: _sf_prefill(
            c, window=c["tokens"].shape[1] - 2),
        "no null slot (position 0 attends to nothing)": lambda c: _sf_prefill(
            c, null=False),
    },
)  # fmt: skip


# --- approximating two-layer FFNs (chapter 6) --------------------------------------


def _moe_make() -> dict:
    rng = np.random.default_rng(6)
    w = fa.init_sigma_moe(rng, 16, 8, 8)
    x = rng.standard_normal((9, 16))
    idx, gate = fa.route(x, w.w3, 2)
    scale = moe_scale(x, w.w1, w.w2, idx, gate, worst_case=True)
    return dict(x=x, w=w, idx=idx, gate=gate, want=fa.moe_loop(x, w, idx, gate),
                scale=scale)  # fmt: skip


def _moe(c, idx=None, gate=None):
    i = c["idx"] if idx is None else idx
    return fa.moe_cvmm(c["x"], c["w"], i, c["gate"] if gate is None else gate)


def _moe_misrouted(c):
    bad = c["idx"].copy()
    bad[0, 0] = (bad[0, 0] + 1) % c["w"].w1.shape[0]
    if bad[0, 0] == bad[0, 1]:
        bad[0, 0] = (bad[0, 0] + 1) % c["w"].w1.shape[0]
    return _moe(c, idx=bad)


def _moe_softmax_gate(c):  # a softmax router's gate on a sigmoid-MoE
    p = cm.softmax(c["x"] @ c["w"].w3)  # (T, E)
    return _moe(c, gate=np.take_along_axis(p, c["idx"], axis=1))


def _moe_lowest(c):  # top-K of -s: the K lowest scores
    idx = fa.top_k_indices(-fa.sigmoid(c["x"] @ c["w"].w3), c["idx"].shape[1])
    s = fa.sigmoid(c["x"] @ c["w"].w3)
    return _moe(c, idx=idx, gate=np.take_along_axis(s, idx, axis=1))


def _moe_unsorted_back(c):
    """The down GEMM's rows left in sorted order (no scatter back to pairs)."""
    x, w, idx, gate = c["x"], c["w"], c["idx"], c["gate"]
    t, k = idx.shape
    order, _, offsets = fa.counting_sort(idx.ravel(), w.w1.shape[0])
    h = np.maximum(fa.cvmm(x, order // k, order, offsets, w.w1), 0)
    h = h * gate.ravel()[order][:, None]
    z = fa.cvmm(h, np.arange(order.size), order, offsets, w.w2)  # sorted order
    return z.reshape(t, k, -1).sum(axis=1)


def _moe_gate_twice(c):  # the gate in the up epilogue and again in the combine
    return _moe(c, gate=c["gate"] ** 2)


def _moe_no_relu(c):
    x, w, idx, gate = c["x"], c["w"], c["idx"], c["gate"]
    y = np.zeros((x.shape[0], w.w2.shape[2]))
    for t in range(x.shape[0]):
        for j in range(idx.shape[1]):
            e = idx[t, j]
            y[t] += gate[t, j] * (x[t] @ w.w1[e] @ w.w2[e])
    return y


FFN_APPROX = Case(
    "ffn_approx", "sigma-MoE CVMM vs the pair loop", _moe_make, _moe,
    lambda c, got: assert_close(got, c["want"], "dot", F64, c["scale"]),
    {
        "pair sent to the next expert": _moe_misrouted,
        "second slot lost": lambda c: _moe(
            c, gate=c["gate"] * np.array([1.0, 0.0])),
        "softmax gate instead of sigmoid": _moe_softmax_gate,
        "top-K of the lowest scores": _moe_lowest,
        "rows not scattered back to pair order": _moe_unsorted_back,
        "gate applied twice": _moe_gate_twice,
        "ReLU dropped in the experts": _moe_no_relu,
    },
)  # fmt: skip


CASES = (ATTENTION, PRECOMPUTE, SLIM, SLIM_ROPE, DEJA_VU, STAGFORMER, FFN_APPROX)
TRICKS = tuple(dict.fromkeys(c.trick for c in CASES))


def run(trick: str | None = None) -> list[Outcome]:
    """Every case's check on its right result (AssertionError if that fails: the
    check or the case is broken) and on each variant (caught = rejected)."""
    out = []
    for case in CASES:
        if trick is not None and case.trick != trick:
            continue
        c = case.make()
        case.check(c, case.right(c))  # must pass
        for name, fn in case.variants.items():
            try:
                case.check(c, fn(c))
            except AssertionError as e:
                out.append(Outcome(case.trick, case.name, name, True, str(e)[:120]))
            else:
                out.append(Outcome(case.trick, case.name, name, False, "accepted"))
    return out


def caught_per_trick(outcomes: list[Outcome] | None = None) -> dict[str, tuple]:
    """trick -> (variants caught, variants in the catalogue)."""
    outcomes = run() if outcomes is None else outcomes
    return {
        t: (sum(o.caught for o in outcomes if o.trick == t),
            sum(o.trick == t for o in outcomes))
        for t in TRICKS
    }  # fmt: skip
