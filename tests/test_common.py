"""Properties of the shared decoder blocks in reference/common.py.

Every comparison goes through reference.testing.assert_close. Shapes are drawn to
include 1, primes and odd sizes; T = 1 (decode) is always possible.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference import common as cm
from reference.testing import assert_close, attention_scale

F64, F32 = np.float64, np.float32
seeds = st.integers(0, 2**32 - 1)
sizes = st.sampled_from([1, 2, 3, 5, 7])  # B, T, S: 1, primes, odd
head_dims = st.sampled_from([2, 4, 6, 8])  # even, so full rotary is possible


@st.composite
def head_counts(draw, kind=None):
    """(H, G): MHA (G = H), GQA (1 < G < H) or MQA (G = 1)."""
    kind = kind or draw(st.sampled_from(["mha", "gqa", "mqa"]))
    if kind == "mha":
        h = draw(st.sampled_from([1, 2, 3, 5]))
        return h, h
    if kind == "mqa":
        return draw(st.sampled_from([1, 2, 3, 5])), 1
    g = draw(st.sampled_from([2, 3]))
    return g * draw(st.sampled_from([2, 3])), g


heads = head_counts()


@st.composite
def configs(draw, parallel=None, kind=None, min_c=1):
    """A tiny DecoderConfig; rot_dim is None (full), 0 (none) or partial."""
    h, g = draw(head_counts(kind))
    d = draw(head_dims.filter(lambda d: h * d >= min_c))
    return cm.DecoderConfig(
        V=draw(st.sampled_from([2, 5, 13])),
        C=h * d,
        H=h,
        G=g,
        D=d,
        F=draw(st.sampled_from([1, 3, 8])),
        L=draw(st.sampled_from([1, 2])),
        parallel=draw(st.booleans()) if parallel is None else parallel,
        norm=draw(st.sampled_from(cm.NORMS)),
        act=draw(st.sampled_from(cm.ACTS)),
        rot_dim=draw(st.sampled_from([None, *range(0, d + 1, 2)])),
        rope_base=draw(st.sampled_from([10000.0, 100.0])),
    )


def qkv(rng, b, h, g, t, s, d, dtype=F64):
    """Standard-normal q (B, H, T, D), k and v (B, G, S, D)."""
    q = rng.standard_normal((b, h, t, d)).astype(dtype)
    k = rng.standard_normal((b, g, s, d)).astype(dtype)
    v = rng.standard_normal((b, g, s, d)).astype(dtype)
    return q, k, v


def att_scale(q, k, v) -> float:
    """attention_scale for q of shape (B, H, D) or (B, H, T, D): the max over t."""
    if q.ndim == 3:
        return attention_scale(q, k, v)
    return max(attention_scale(q[:, :, i], k, v) for i in range(q.shape[2]))


def attention_loop(q, k, v, causal, q_offset=0, shift=0):
    """Textbook attention, one (b, h, t) at a time with Python floats.

    shift > 0 lets query t also see the next `shift` keys: a known-wrong variant.
    """
    b, h, t, d = q.shape
    g, s = k.shape[1], k.shape[2]
    out = np.zeros(q.shape)
    for bi in range(b):
        for hi in range(h):
            j = hi // (h // g)
            for ti in range(t):
                n = min(s, q_offset + ti + 1 + shift) if causal else s
                sc = [float(q[bi, hi, ti] @ k[bi, j, m]) for m in range(n)]
                e = [math.exp((x - max(sc)) / math.sqrt(d)) for x in sc]
                out[bi, hi, ti] = sum(e[m] / sum(e) * v[bi, j, m] for m in range(n))
    return out


# --- 1. decode step by step == masked prefill of the whole sequence -----------


@pytest.mark.parametrize("kind", ["mha", "gqa", "mqa"])
@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
@given(data=st.data(), b=sizes, t=sizes, seed=seeds)
def test_decode_steps_equal_masked_prefill(parallel, kind, data, b, t, seed):
    cfg = data.draw(configs(parallel=parallel, kind=kind), label="cfg")
    p = data.draw(st.integers(0, t - 1), label="prefix")  # 0: decode from empty
    rng = np.random.default_rng(seed)
    w = cm.init_decoder(cfg, rng)
    tokens = rng.integers(0, cfg.V, (b, t))
    full, full_caches = cm.prefill(w, cfg, tokens)
    caches = None
    if p:
        logits, caches = cm.prefill(w, cfg, tokens[:, :p])
        assert_close(logits, full[:, :p], "rewrite", F64)
    for i in range(p, t):
        step, caches = cm.decode_step(w, cfg, tokens[:, i], caches)
        assert_close(step, full[:, i], "rewrite", F64)
    for c, fc in zip(caches, full_caches, strict=True):
        assert_close(c.k, fc.k, "rewrite", F64)
        assert_close(c.v, fc.v, "rewrite", F64)


def test_greedy_generate_is_argmax_of_prefill():
    cfg = cm.DecoderConfig(V=7, C=16, H=4, G=2, D=4, F=5, L=2, rot_dim=2)
    w = cm.init_decoder(cfg, np.random.default_rng(0))
    prompt = np.array([[1, 2, 3], [6, 0, 5]])
    out = cm.greedy_generate(w, cfg, prompt, n_new=4)
    assert out.shape == (2, 7)
    for i in range(3, 7):  # each new token is the argmax of a from-scratch prefill
        want = cm.prefill(w, cfg, out[:, :i])[0][:, -1].argmax(-1)
        assert_close(out[:, i], want, "exact", F64)


def test_kv_cache_append_does_not_mutate():
    rng = np.random.default_rng(1)
    cache = cm.KVCache.empty(2, 3, 4).append(*rng.standard_normal((2, 2, 3, 1, 4)))
    k0 = cache.k.copy()
    grown = cache.append(*rng.standard_normal((2, 2, 3, 2, 4)))
    assert grown.k.shape == (2, 3, 3, 4) and cache.k.shape == (2, 3, 1, 4)
    assert_close(cache.k, k0, "exact", F64)


# --- 2. GQA vs MHA ------------------------------------------------------------


@given(b=sizes, h=sizes, t=sizes, s=sizes, d=sizes, off=st.integers(0, 4), seed=seeds)
def test_gqa_with_g_equal_h_is_textbook_mha(b, h, t, s, d, off, seed):
    # "rewrite", not "exact": the textbook loop sums in another order (Python floats,
    # one dot product at a time) than the batched matmul, so rounding differs.
    q, k, v = qkv(np.random.default_rng(seed), b, h, h, t, s, d)
    for causal in (True, False):
        got = cm.attention(q, k, v, causal=causal, q_offset=off)
        want = attention_loop(q, k, v, causal, off)
        assert_close(got, want, "rewrite", F64, scale=att_scale(q, k, v))


@given(b=sizes, hg=heads, t=sizes, s=sizes, d=sizes, c=st.booleans(), seed=seeds)
def test_gqa_equals_mha_with_repeated_kv_heads(b, hg, t, s, d, c, seed):
    # "exact": attention repeats K/V heads itself, so both calls run the same
    # operations on the same numbers in the same order.
    (h, g), rng = hg, np.random.default_rng(seed)
    q, k, v = qkv(rng, b, h, g, t, s, d)
    kr, vr = np.repeat(k, h // g, axis=1), np.repeat(v, h // g, axis=1)
    off = max(s - t, 0)  # the T queries are the last T of S tokens
    got = cm.attention(q, k, v, causal=c, q_offset=off)
    assert_close(got, cm.attention(q, kr, vr, causal=c, q_offset=off), "exact", F64)
    got = cm.decode_attention(q[:, :, 0], k, v)
    assert_close(got, cm.decode_attention(q[:, :, 0], kr, vr), "exact", F64)


# --- 3. RoPE ------------------------------------------------------------------


positions = st.integers(0, 2048)


@given(d=head_dims, data=st.data(), m=positions, n=positions, c=positions, seed=seeds)
def test_rope_score_depends_only_on_offset(d, data, m, n, c, seed):
    r = data.draw(st.sampled_from(range(2, d + 1, 2)), label="rot_dim")
    c = c - min(m, n, c)  # any shift in [-min(m, n), 2048]: positions stay >= 0
    rng = np.random.default_rng(seed)
    q, k = rng.standard_normal((2, 1, d))  # each (T=1, D)

    def score(mq, nk):
        return (cm.apply_rope(q, [mq], r) * cm.apply_rope(k, [nk], r)).sum()

    scale = float(np.linalg.norm(q) * np.linalg.norm(k))  # |score| <= |q| |k|
    assert_close(score(m + c, n + c), score(m, n), "rewrite", F64, scale=scale)


@given(d=head_dims, data=st.data(), pos=positions, seed=seeds)
def test_rope_rotates_dim_i_with_dim_i_plus_half(d, data, pos, seed):
    # The GPT-NeoX "rotate half" pairing, written out one pair at a time.
    r = data.draw(st.sampled_from(range(2, d + 1, 2)), label="rot_dim")
    x = np.random.default_rng(seed).standard_normal((1, d))  # (T=1, D)
    want = x.copy()
    for i in range(r // 2):
        a = pos * 10000.0 ** (-2 * i / r)
        x1, x2 = x[0, i], x[0, i + r // 2]
        want[0, i] = x1 * math.cos(a) - x2 * math.sin(a)
        want[0, i + r // 2] = x2 * math.cos(a) + x1 * math.sin(a)
    got = cm.apply_rope(x, [pos], r)
    assert_close(got, want, "rewrite", F64, scale=float(np.abs(x).max()))


@given(shape=st.tuples(sizes, sizes, sizes), d=head_dims, data=st.data(), seed=seeds)
def test_rope_inverse_undoes_rope_and_spares_the_rest(shape, d, data, seed):
    r = data.draw(st.sampled_from(range(0, d + 1, 2)), label="rot_dim")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((*shape, d))  # (B, H, T, D)
    pos = rng.integers(0, 5000, shape[-1])
    y = cm.apply_rope(x, pos, r)
    back = cm.apply_rope(y, pos, r, inverse=True)
    assert_close(back, x, "rewrite", F64, scale=float(np.abs(x).max()))
    assert_close(y[..., r:], x[..., r:], "exact", F64)  # partial: the rest is copied
    y32 = cm.apply_rope(x.astype(F32), pos, r)
    assert_close(y32[..., r:], x.astype(F32)[..., r:], "exact", F32)


# --- 4. causality -------------------------------------------------------------


@given(data=st.data(), b=sizes, t=sizes, seed=seeds)
def test_future_tokens_never_change_past_logits(data, b, t, seed):
    # min_c=3: a LayerNorm over C = 2 maps every vector to one of two points, so a
    # changed token could leave the logits unchanged.
    cfg = data.draw(configs(min_c=3), label="cfg")
    pos = data.draw(st.integers(0, t - 1), label="pos")
    rng = np.random.default_rng(seed)
    w = cm.init_decoder(cfg, rng)
    tokens = rng.integers(0, cfg.V, (b, t))
    logits = cm.prefill(w, cfg, tokens)[0]
    later = tokens.copy()
    later[:, pos + 1 :] = rng.integers(0, cfg.V, (b, t - pos - 1))
    # "rewrite", not "exact": BLAS may block the rows differently.
    got = cm.prefill(w, cfg, later)[0][:, : pos + 1]
    assert_close(got, logits[:, : pos + 1], "rewrite", F64)
    now = tokens.copy()
    now[:, pos] = (tokens[:, pos] + rng.integers(1, cfg.V, b)) % cfg.V  # all differ
    with pytest.raises(AssertionError):
        assert_close(cm.prefill(w, cfg, now)[0][:, pos], logits[:, pos], "rewrite", F64)


# --- 5. decode attention, three ways ------------------------------------------


@given(b=sizes, hg=heads, s=sizes, d=sizes, seed=seeds)
def test_decode_attention_equals_attention_and_loop(b, hg, s, d, seed):
    (h, g), rng = hg, np.random.default_rng(seed)
    q, k, v = qkv(rng, b, h, g, 1, s, d)
    got = cm.decode_attention(q[:, :, 0], k, v)  # (B, H, D)
    scale = att_scale(q, k, v)
    want = cm.attention(q, k, v, causal=False)[:, :, 0]
    assert_close(got, want, "rewrite", F64, scale=scale)
    loop = attention_loop(q, k, v, causal=False)[:, :, 0]
    assert_close(got, loop, "rewrite", F64, scale=scale)


# --- 6. dtype preservation ----------------------------------------------------


def cast(obj, dtype):
    """obj with every float array (in dataclasses, tuples, dicts) cast to dtype."""
    if isinstance(obj, np.ndarray):
        return obj.astype(dtype) if obj.dtype.kind == "f" else obj
    if dataclasses.is_dataclass(obj):
        fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        return dataclasses.replace(obj, **cast(fields, dtype))
    if isinstance(obj, dict):
        return {key: cast(o, dtype) for key, o in obj.items()}
    if isinstance(obj, tuple | list):
        return type(obj)(cast(o, dtype) for o in obj)
    return obj


def float_arrays(obj) -> list[np.ndarray]:
    """Every float array in obj (an array, or tuples and dataclasses of them)."""
    if dataclasses.is_dataclass(obj):
        obj = [getattr(obj, f.name) for f in dataclasses.fields(obj)]
    if isinstance(obj, tuple | list):
        return [a for o in obj for a in float_arrays(o)]
    is_float = isinstance(obj, np.ndarray) and obj.dtype.kind == "f"
    return [obj] if is_float else []


def dtype_cases(rng, cfg, b, t):
    """name -> (function, float64 arguments) for every public function."""
    c = cfg.C
    x = 3 * rng.standard_normal((b, t, c))
    gamma, beta = 1 + rng.standard_normal((2, c))
    q, k, v = qkv(rng, b, cfg.H, cfg.G, t, t + 2, cfg.D)
    w = cm.init_decoder(cfg, rng)
    tokens = rng.integers(0, cfg.V, (b, t))
    caches = cm.prefill(w, cfg, tokens)[1]
    cache = cm.KVCache(k, v)
    return {
        "softmax": (cm.softmax, (x,)),
        "layer_norm": (cm.layer_norm, (x, gamma, beta)),
        "rms_norm": (cm.rms_norm, (x, gamma)),
        "relu": (cm.relu, (x,)),
        "gelu": (cm.gelu, (x,)),
        "gelu_tanh": (cm.gelu_tanh, (x,)),
        "silu": (cm.silu, (10 * x,)),  # reaches exp overflow for x << 0
        "apply_rope": (cm.apply_rope, (q, np.arange(t) + 7, cfg.rot_dim)),
        "attention": (cm.attention, (q, k, v)),
        "decode_attention": (cm.decode_attention, (q[:, :, 0], k, v)),
        "mlp": (cm.mlp, (x, w.layers[0].mlp, cfg.act)),
        "norm": (cm.norm, (x, w.layers[0].norm1, cfg.norm)),
        "attention_layer": (cm.attention_layer, (x, w.layers[0].attn, cfg, cache)),
        "serial_block": (cm.serial_block, (x, w.layers[0], cfg, cache)),
        "parallel_block": (cm.parallel_block, (x, w.layers[0], cfg, cache)),
        "prefill": (cm.prefill, (w, cfg, tokens)),
        "decode_step": (cm.decode_step, (w, cfg, tokens[:, 0], caches)),
        "KVCache.append": (lambda cache, k, v: cache.append(k, v), (cache, k, v)),
    }


TINY = cm.DecoderConfig(V=2, C=2, H=1, G=1, D=2, F=1, L=1)
DTYPE_CASES = list(dtype_cases(np.random.default_rng(0), TINY, 1, 1))

# The functions with a handful of stages each: a reduction (a sum, a norm's mean or
# variance, a dot product), an exp, erf or tanh, a division or a square root each
# count one. The blocks and the decoder (attention_layer, serial_block,
# parallel_block, prefill, decode_step) compose these; they keep the chain row
# ("rewrite", float32: 2 sides x 10 stages x 6 sqrt(n) u, n <= 2^15).
STAGES = {
    "softmax": 3, "layer_norm": 4, "rms_norm": 3, "relu": 0, "gelu": 2,
    "gelu_tanh": 3, "silu": 2, "apply_rope": 2, "attention": 5,
    "decode_attention": 5, "mlp": 5, "norm": 4, "KVCache.append": 0,
}  # fmt: skip


def dtype_scale(name, cfg, t, args, want) -> float:
    """The error scale of one function run in float32 against float64 on the same
    float32 inputs: each of its STAGES errs by at most lam sqrt(n) u relative to its
    operands (_sum_bound's model), n <= max(C, F, V, T + 2) the longest sum these
    shapes have, and no operand exceeds M = max(1, |inputs|, |outputs|); the errors
    of the stages add. So |err| <= lam u (stages sqrt(n) + 1) M: the ("gpu",
    "float32") row (float32 arithmetic against the float64 truth on the same
    inputs) with this scale; its relative part is lam u. LayerNorm is the exception
    to "no operand exceeds M": the mean's error, lam sqrt(C) u max|x|, is divided by
    the standard deviation, so its M is max|x| max|gamma| / sqrt(var + eps) where
    that is larger. (The chain row, 1.3e-3 in float32, is looser than fp16
    rounding: it accepted a softmax computed in fp16.)"""
    n = max(cfg.C, cfg.F, cfg.V, t + 2)
    m = max([1.0] + [float(np.abs(a).max(initial=0)) for a in args])
    m = max([m] + [float(np.abs(e).max(initial=0)) for e in want])
    if name == "layer_norm" or (name == "norm" and cfg.norm == "layernorm"):
        x, gamma = args[0].astype(F64), args[1].astype(F64)
        sd = np.sqrt(x.var(axis=-1) + 1e-5)  # (B, T)
        m = max(m, float((np.abs(x).max(-1) / sd).max() * np.abs(gamma).max()))
    return (STAGES[name] * math.sqrt(n) + 1) * m


@pytest.mark.parametrize("name", DTYPE_CASES)
@given(data=st.data(), b=sizes, t=sizes, seed=seeds)
def test_float32_in_float32_out_close_to_float64(name, data, b, t, seed):
    """float32 in, float32 out, and close to the float64 result on the same inputs:
    within the derived ("gpu", "float32") bound for the functions of STAGES (tight
    enough to catch an fp16 intermediate), the chain row for the compositions."""
    cfg = data.draw(configs(), label="cfg")
    fn, args = dtype_cases(np.random.default_rng(seed), cfg, b, t)[name]
    args32 = cast(args, F32)
    got = float_arrays(fn(*args32))
    want = float_arrays(fn(*cast(args32, F64)))  # the same numbers, in float64
    assert got and all(a.dtype == F32 for a in got), [a.dtype for a in got]
    for a, e in zip(got, want, strict=True):
        if name in STAGES:
            sc = dtype_scale(name, cfg, t, float_arrays(args32), want)
            assert_close(a, e, "gpu", F32, scale=sc)
        else:
            assert_close(a, e, "rewrite", F32, scale=max(1.0, float(np.abs(e).max())))


def test_init_decoder_dtype_and_rope_tables_float64():
    cfg = cm.DecoderConfig(V=5, C=6, H=3, G=1, D=2, F=4, L=2, norm="layernorm")
    w = cm.init_decoder(cfg, np.random.default_rng(0), dtype=F32)
    assert {a.dtype for a in float_arrays(w)} == {np.dtype(F32)}
    cos, sin = cm.rope_cos_sin(np.arange(3), 4)
    assert cos.dtype == sin.dtype == F64 and cos.shape == sin.shape == (3, 2)


# --- 7. the checker rejects known-wrong variants (STYLE R8) -------------------


@given(b=sizes, hg=heads, t=sizes, s=st.integers(2, 7), d=sizes, seed=seeds)
def test_checker_rejects_off_by_one_causal_mask(b, hg, t, s, d, seed):
    (h, g), rng = hg, np.random.default_rng(seed)
    q, k, v = qkv(rng, b, h, g, t, s, d)
    want = cm.attention(q, k, v, causal=True)  # q_offset 0: row 0 sees key 0 only
    scale = att_scale(q, k, v)
    assert_close(attention_loop(q, k, v, True), want, "rewrite", F64, scale=scale)
    with pytest.raises(AssertionError):  # row 0 also sees key 1
        bad = attention_loop(q, k, v, True, shift=1)
        assert_close(bad, want, "rewrite", F64, scale=scale)


@given(b=sizes, hg=heads, s=st.integers(2, 7), d=sizes, seed=seeds)
def test_checker_rejects_dropped_last_key(b, hg, s, d, seed):
    (h, g), rng = hg, np.random.default_rng(seed)
    q, k, v = qkv(rng, b, h, g, 1, s, d)
    want = cm.decode_attention(q[:, :, 0], k, v)
    bad = cm.decode_attention(q[:, :, 0], k[:, :, :-1], v[:, :, :-1])
    with pytest.raises(AssertionError):
        assert_close(bad, want, "rewrite", F64, scale=att_scale(q, k, v))


@given(t=sizes, s=st.integers(1, 7), d=head_dims, data=st.data(), seed=seeds)
def test_checker_rejects_keys_rotated_one_position_late(t, s, d, data, seed):
    r = data.draw(st.sampled_from(range(2, d + 1, 2)), label="rot_dim")
    rng = np.random.default_rng(seed)
    q, k = rng.standard_normal((t, d)), rng.standard_normal((s, d))
    qr = cm.apply_rope(q, np.arange(t), r)
    want = qr @ cm.apply_rope(k, np.arange(s), r).T  # scores (T, S)
    bad = qr @ cm.apply_rope(k, np.arange(s) + 1, r).T
    scale = float(np.linalg.norm(q, axis=1).max() * np.linalg.norm(k, axis=1).max())
    with pytest.raises(AssertionError):
        assert_close(bad, want, "rewrite", F64, scale=scale)


# --- 8. bad input -------------------------------------------------------------


def test_bad_inputs_raise_value_error():
    q, k, v = qkv(np.random.default_rng(0), 1, 3, 2, 1, 4, 4)  # H=3, G=2
    with pytest.raises(ValueError, match="multiple"):
        cm.attention(q, k, v)
    with pytest.raises(ValueError, match="multiple"):
        cm.decode_attention(q[:, :, 0], k, v)
    with pytest.raises(ValueError):
        cm.attention(q, k, v[:, :, :-1])  # S differs between k and v
    with pytest.raises(ValueError, match="even"):
        cm.apply_rope(q, np.arange(1), rot_dim=3)
    with pytest.raises(ValueError, match="even"):
        cm.apply_rope(q, np.arange(1), rot_dim=6)  # > D
    with pytest.raises(ValueError):
        cm.DecoderConfig(V=2, C=4, H=3, G=2, D=4, F=1, L=1)
    cfg = cm.DecoderConfig(V=2, C=4, H=2, G=1, D=2, F=1, L=1)
    with pytest.raises(ValueError, match="tokens"):
        cm.prefill(cm.init_decoder(cfg, np.random.default_rng(0)), cfg, [[0, 2]])


# --- activations, MLPs and blocks are the equations in their docstrings ------


@given(n=sizes, seed=seeds)
def test_activations_match_their_equations(n, seed):
    x = 8 * np.random.default_rng(seed).standard_normal(4 * n)
    sigmoid = 0.5 * (1.0 + np.tanh(x / 2))  # = 1 / (1 + exp(-x))
    assert_close(cm.silu(x), x * sigmoid, "rewrite", F64)
    u = math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)
    with np.errstate(over="ignore"):  # exp(-2u) = inf for x << 0: x / inf = -0
        assert_close(cm.gelu_tanh(x), x / (1.0 + np.exp(-2 * u)), "rewrite", F64)
    phi = np.array([0.5 * math.erfc(-xi / math.sqrt(2)) for xi in x])  # normal CDF
    assert_close(cm.gelu(x), x * phi, "rewrite", F64)
    assert_close(cm.relu(x), np.where(x > 0, x, 0.0), "exact", F64)


@given(data=st.data(), b=sizes, t=sizes, seed=seeds)
def test_mlp_and_blocks_match_their_equations(data, b, t, seed):
    cfg = data.draw(configs(), label="cfg")
    rng = np.random.default_rng(seed)
    lw = cm.init_decoder(cfg, rng).layers[0]
    w, x = lw.mlp, rng.standard_normal((b, t, cfg.C))
    h_in = x @ w.w_in + (0 if w.b_in is None else w.b_in)  # (B, T, F)
    act = {"relu": cm.relu, "gelu": cm.gelu, "gelu_tanh": cm.gelu_tanh}
    if cfg.act == "swiglu":
        h = cm.silu(x @ w.w_gate) * h_in
    else:
        h = act[cfg.act](h_in)
    want = h @ w.w_out + (0 if w.b_out is None else w.b_out)  # (B, T, C)
    assert_close(cm.mlp(x, w, cfg.act), want, "rewrite", F64)

    cache = cm.KVCache(*rng.standard_normal((2, b, cfg.G, 3, cfg.D)))
    a, grown = cm.attention_layer(cm.norm(x, lw.norm1, cfg.norm), lw.attn, cfg, cache)
    assert grown.k.shape == (b, cfg.G, 3 + t, cfg.D)

    def ffn(y):
        return cm.mlp(cm.norm(y, lw.norm2, cfg.norm), lw.mlp, cfg.act)

    assert_close(
        cm.serial_block(x, lw, cfg, cache)[0], x + a + ffn(x + a), "rewrite", F64
    )
    assert_close(
        cm.parallel_block(x, lw, cfg, cache)[0], x + a + ffn(x), "rewrite", F64
    )


# --- softmax and norms --------------------------------------------------------


@given(shape=st.tuples(sizes, sizes), shift=st.floats(-100, 100), seed=seeds)
def test_softmax_rows_sum_to_one_and_ignore_row_shifts(shape, shift, seed):
    rng = np.random.default_rng(seed)
    x = 5 * rng.standard_normal(shape)
    p = cm.softmax(x)
    assert_close(p.sum(axis=-1), np.ones(shape[0]), "rewrite", F64)
    c = shift * rng.standard_normal((shape[0], 1))  # one constant per row
    assert_close(cm.softmax(x + c), p, "rewrite", F64)


@given(shape=st.tuples(sizes, st.sampled_from([1, 2, 3, 7, 64, 97])), seed=seeds)
def test_norm_outputs_have_zero_mean_and_unit_rms(shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * rng.uniform(0.01, 10) + rng.uniform(-5, 5)
    ones, zeros = np.ones(shape[-1]), np.zeros(shape[-1])
    ln = cm.layer_norm(x, ones, zeros)
    var = x.var(axis=-1)
    assert_close(ln.mean(axis=-1), np.zeros(shape[0]), "rewrite", F64)
    # mean(y^2) = var / (var + eps): eps keeps it just under 1
    assert_close((ln**2).mean(axis=-1), var / (var + 1e-5), "rewrite", F64)
    ms = (x**2).mean(axis=-1)
    rms = cm.rms_norm(x, ones)
    assert_close((rms**2).mean(axis=-1), ms / (ms + 1e-6), "rewrite", F64)
