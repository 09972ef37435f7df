"""The capstone decoder (reference/decoder.py): the exact tricks compose.

CPU only, float64 truth. For every combination of the exact tricks (precompute on or
off, a K+V, K-only or X cache) greedy decoding yields reference.common's tokens, and
the logits of every step agree within a derived tolerance: the ("rewrite",
"float64") row for the chain of stages, plus, for the K-only and X caches, the
"slim" row's budget of each rebuilt attention (kv_fold_scale, which grows with
cond(W_K), or xcache_scale), carried through W_O (``logit_scale``). Deja Vu's oracle
is exact at kept = 1 and at any kept above the largest active fraction, and the
checker catches a kept below it. Known-wrong variants are rejected; the cache and
weight byte counts match the arrays held; the capacity inverts cache_bytes.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference import common as cm
from reference import decoder as dec
from reference import deja_vu as dv
from reference import slim_attention as sa
from reference.testing import (
    N_MAX,
    assert_close,
    attention_scale,
    describe,
    kv_fold_scale,
    slim_kernel_scale,
    sparse_mlp_scale,
    tolerance,
    xcache_scale,
)

F64, F32 = np.float64, np.float32
REWRITE, SLIM = tolerance("rewrite", F64), tolerance("slim", F64)
EXACT = [dec.Tricks(precompute=p, cache=c) for p in (False, True) for c in dec.CACHES]
seeds = st.integers(0, 2**32 - 1)


def family(v, c, h, f, n_layers, rot_dim):
    """A DecoderConfig of the capstone's family (MHA, RMSNorm, ReLU, serial)."""
    return cm.DecoderConfig(V=v, C=c, H=h, G=h, D=c // h, F=f, L=n_layers,
                            norm="rmsnorm", act="relu", rot_dim=rot_dim)  # fmt: skip


CFGS = {
    "rot_dim<D": family(96, 64, 4, 256, 2, rot_dim=8),  # D = 16, partial rotary
    "rot_dim=D": family(128, 128, 4, 256, 4, rot_dim=None),  # D = 32, full rotary
}
N_NEW, T0, B = 64, 5, 2


@functools.cache
def case(name: str, kappa: float | None = None):
    """Weights, prompt, common's greedy tokens and its teacher-forced logits.
    kappa: every layer's W_K replaced by one with cond(W_K) = kappa."""
    cfg = CFGS[name]
    rng = np.random.default_rng(20)
    w = cm.init_decoder(cfg, rng)
    if kappa is not None:
        layers = tuple(
            dataclasses.replace(lw, attn=dataclasses.replace(
                lw.attn, w_k=sa.matrix_with_cond(cfg.C, kappa, rng)))
            for lw in w.layers
        )  # fmt: skip
        w = dataclasses.replace(w, layers=layers)
    prompt = rng.integers(0, cfg.V, (B, T0))
    want = cm.greedy_generate(w, cfg, prompt, N_NEW)  # (B, T0 + N_NEW)
    return cfg, w, prompt, want, dec.baseline_forced_logits(w, cfg, want, T0)


# --- the tolerance --------------------------------------------------------------------


def _swap_rotary(q: np.ndarray, r: int) -> np.ndarray:
    """q with dims i and i + R/2 exchanged, i < R/2 (the pairs RoPE mixes)."""
    out = q.copy()
    out[..., : r // 2], out[..., r // 2 : r] = q[..., r // 2 : r], q[..., : r // 2]
    return out


def logit_scale(w: cm.DecoderWeights, cfg, cache: str, tokens) -> float:
    """The ("rewrite", "float64") row's scale for the tricked logits against
    common's on ``tokens`` (B, S) (teacher forcing or prefill).

    * The chain: the rewrite row budgets 2 sides x 10 stages x 2^15 terms of n u
      each; our decoder has at most 11 L + 2 stages (per layer: norm, q|k|v, the
      scores (two sums with an X cache), softmax, sum over S, W_KV or W_V,
      W_O, norm, W_in, W_out; then norm_f and the unembedding) of at most
      max(C, F, S) terms. ``chain_fits`` checks that this fits; later stages
      amplify an error by O(1), as the row assumes.
    * The K-only and X caches add, per layer, the "slim" row's budget of the
      attention output (B, H, D): 6 u (2 attention_scale + kv_fold_scale), or 6 u
      (attention_scale + xcache_scale), as tests/test_slim_attention.py derives
      them, over every query and key of the sequence (each query's bound is at
      most this). In the X cache the rotary dims of the key are R_s(x W_K): RoPE
      mixes dims i and i + R/2, so the query's |q_i| + |q_i'| multiplies the
      error of key dim i; xcache_scale gets that bound as its q. An error of e
      per element of o moves (o W_O)_c by e sum_i |W_O[i, c]|.
    Returned as 1 + (sum of those budgets) / the rewrite row's atol.
    """
    if cache == "kv":
        return 1.0
    b, s = tokens.shape
    pos, r = np.arange(s), cfg.D if cfg.rot_dim is None else cfg.rot_dim
    x, extra = w.embed[tokens], 0.0  # (B, S, C)
    for lw in w.layers:
        a = lw.attn
        xn = cm.norm(x, lw.norm1, cfg.norm)  # (B, S, C)
        q, k, v = (sa.split_heads(xn @ m, cfg.H) for m in (a.w_q, a.w_k, a.w_v))
        q, k = (cm.apply_rope(y, pos, cfg.rot_dim, cfg.rope_base) for y in (q, k))
        qs = q.reshape(b, cfg.H * s, cfg.D)  # every query; head h's in group h
        if cache == "k":
            w_kv = sa.fold_w_kv(a.w_k, a.w_v)
            att = 2 * attention_scale(qs, k, v) + kv_fold_scale(xn, a.w_k, w_kv)
        else:
            qb = np.abs(qs) + np.abs(_swap_rotary(qs, r))
            qb[..., r:] = np.abs(qs[..., r:])
            att = attention_scale(qs, k, v) + xcache_scale(qb, xn, a.w_k, a.w_v)
        extra += float(np.abs(a.w_o).sum(axis=0).max()) * att
        x, _ = cm.serial_block(x, lw, cfg, cm.KVCache.empty(b, cfg.G, cfg.D))
    return 1.0 + extra * SLIM.atol / REWRITE.atol


def chain_fits(cfg, s: int) -> bool:
    """The rewrite row's premise: (11 L + 2) stages of <= max(C, F, S) terms fit
    in its 10 stages x 2^15."""
    return (11 * cfg.L + 2) * max(cfg.C, cfg.F, s) <= 10 * N_MAX


def check_logits(got, want, w, cfg, cache, tokens) -> float:
    assert chain_fits(cfg, tokens.shape[1])
    assert got.dtype == F64
    return assert_close(got, want, "rewrite", F64, logit_scale(w, cfg, cache, tokens))


# --- 1. every combination of the exact tricks is common's decoder -------------------


@pytest.mark.parametrize("tricks", EXACT, ids=lambda t: f"pre={t.precompute}-{t.cache}")
@pytest.mark.parametrize("name", CFGS)
def test_exact_tricks_generate_commons_tokens_and_logits(name, tricks):
    cfg, w, prompt, want, ref = case(name)
    assert_close(ref.argmax(-1), want[:, T0:], "exact", F64)  # forcing = greedy
    model = dec.prepare(w, cfg, tricks)
    assert_close(dec.greedy_generate(model, prompt, N_NEW), want, "exact", F64)
    got = dec.forced_logits(model, want, T0)  # (B, N_NEW, V)
    used = check_logits(got, ref, w, cfg, tricks.cache, want)
    print(f"{name} {tricks}: logits {describe(used)}")


@pytest.mark.parametrize("precompute", [False, True])
@pytest.mark.parametrize("kappa", [1e2, 1e6])
def test_k_cache_tolerance_grows_with_cond_w_k(kappa, precompute):
    """W_K drawn with cond 1e2 and 1e6: tokens still common's; the logits within
    the tolerance whose slim part grows linearly with cond(W_K)."""
    cfg, w, prompt, want, ref = case("rot_dim<D", kappa)
    model = dec.prepare(w, cfg, dec.Tricks(precompute, "k"))
    assert_close(dec.greedy_generate(model, prompt, N_NEW), want, "exact", F64)
    used = check_logits(dec.forced_logits(model, want, T0), ref, w, cfg, "k", want)
    sc = logit_scale(w, cfg, "k", want)
    print(f"cond(W_K) = {kappa:g}: scale {sc:.3g}, logits {describe(used)}")
    if kappa == 1e6:
        low = case("rot_dim<D", 1e2)
        assert sc > 1e3 * logit_scale(low[1], cfg, "k", low[3])


@st.composite
def small_models(draw):
    h, d = draw(st.sampled_from([1, 2, 3])), draw(st.sampled_from([2, 4, 6]))
    rot = draw(st.sampled_from([None, 0, 2]))
    cfg = family(draw(st.integers(1, 17)), h * d, h, draw(st.sampled_from([1, 3, 8])),
                 draw(st.sampled_from([1, 2])), rot)  # fmt: skip
    tricks = dec.Tricks(draw(st.booleans()), draw(st.sampled_from(dec.CACHES)),
                        draw(st.sampled_from([None, 1.0])))  # fmt: skip
    return cfg, tricks


@given(model=small_models(), b=st.sampled_from([1, 2]), t0=st.integers(1, 4),
       n=st.integers(1, 5), seed=seeds)  # fmt: skip
def test_any_tricks_decode_and_prefill_equal_common(model, b, t0, n, seed):
    """Tiny shapes (H = 1, D = 2, V = 1, no rotary, F = 1 included): teacher-forced
    decode steps and one prefill of the whole sequence both equal common's."""
    cfg, tricks = model
    rng = np.random.default_rng(seed)
    w = cm.init_decoder(cfg, rng)
    tokens = rng.integers(0, cfg.V, (b, t0 + n))
    ref = dec.baseline_forced_logits(w, cfg, tokens, t0)  # (B, n, V)
    m = dec.prepare(w, cfg, tricks)
    check_logits(dec.forced_logits(m, tokens, t0), ref, w, cfg, tricks.cache, tokens)
    whole = dec.prefill(m, tokens)[0][:, t0 - 1 : -1]  # (B, n, V)
    check_logits(whole, ref, w, cfg, tricks.cache, tokens)


# --- 2. Deja Vu with the oracle set ---------------------------------------------------


@pytest.mark.parametrize("name", CFGS)
def test_oracle_exact_at_kept_one_and_above_the_active_fraction(name):
    cfg, w, prompt, want, ref = case(name)
    frac = dec.active_fraction(w, cfg, want)
    assert 0 < frac < 1
    for kept in (1.0, frac):
        model = dec.prepare(w, cfg, dec.Tricks(precompute=True, cache="k", kept=kept))
        assert_close(dec.greedy_generate(model, prompt, N_NEW), want, "exact", F64)
        check_logits(dec.forced_logits(model, want, T0), ref, w, cfg, "k", want)
        rep = dec.agreement(w, cfg, dec.Tricks(kept=kept), prompt, N_NEW)
        assert rep["token_agreement"] == 1.0 and rep["first_divergence"] == N_NEW
    print(f"{name}: largest active fraction {frac:.3f}")


@pytest.mark.parametrize("name", CFGS)
def test_checker_catches_a_kept_below_the_active_fraction(name):
    """One neuron short of the largest active set, and half of it: the logits
    leave the tolerance. The agreement report is what the chapter shows."""
    cfg, w, prompt, want, ref = case(name)
    frac = dec.active_fraction(w, cfg, want)
    for kept in (frac - 1 / cfg.F, frac / 2):
        assert math.ceil(kept * cfg.F) < round(frac * cfg.F)  # (F = 256: exact)
        model = dec.prepare(w, cfg, dec.Tricks(kept=kept))
        with pytest.raises(AssertionError, match="out of tolerance"):
            check_logits(dec.forced_logits(model, want, T0), ref, w, cfg, "kv", want)
    for kept in (1.0, frac, 0.5, 0.3, 0.1):
        rep = dec.agreement(w, cfg, dec.Tricks(kept=kept), prompt, N_NEW)
        assert 0 <= rep["token_agreement"] <= 1 and rep["steps"] == N_NEW
        print(f"{name} kept {kept:.3f}: {rep}")
    rep = dec.agreement(w, cfg, dec.Tricks(kept=0.1), prompt, N_NEW)
    assert rep["token_agreement"] < 1 and rep["max_logit_error"] > 1e-3


@given(n=st.integers(1, 4), c=st.integers(1, 9), f=st.integers(1, 40),
       kept=st.floats(0.01, 1.0), seed=seeds)  # fmt: skip
def test_oracle_sparse_mlp_is_the_top_k_masked_mlp(n, c, f, kept, seed):
    """Per row, the ceil(kept F) largest pre-activations: dv.masked_mlp with
    dv.top_k_mask, within the "dot" row (two BLAS orders of the same sums)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c))
    w1, w2 = rng.standard_normal((f, c)), rng.standard_normal((f, c)) / math.sqrt(f)
    sw = dv.SparseMLPWeights(w1, np.zeros(f), w2, np.zeros(c))
    k = math.ceil(kept * f)
    want = dv.masked_mlp(x, sw, dv.top_k_mask(dv.preactivations(x, sw), k))
    got = dec.oracle_sparse_mlp(x, w1, w2, kept)
    sc = sparse_mlp_scale(x, w1, sw.b1, w2, sw.b2, worst_case=True)
    assert_close(got, want, "dot", F64, sc)
    if k >= (dv.preactivations(x, sw) > 0).sum(axis=1).max():
        assert_close(got, dv.dense_mlp(x, sw), "dot", F64, sc)


# --- 3. known-wrong variants ----------------------------------------------------------


def _caught(model, name, cache):
    cfg, w, _, want, ref = case(name)
    with pytest.raises(AssertionError, match="out of tolerance"):
        check_logits(dec.forced_logits(model, want, T0), ref, w, cfg, cache, want)


@pytest.mark.parametrize("name", CFGS)
def test_checker_rejects_k_cache_rotated_before_caching(name, monkeypatch):
    """Keys cached after RoPE, V rebuilt from the rotated keys: the scores are
    right, V = R(K) W_KV is not."""

    def wrong(q, k, w_kv, cache, cfg):
        s0, t = cache.k.shape[1], q.shape[1]
        pos = np.arange(s0, s0 + t)

        def rot(y):
            return cm.apply_rope(sa.split_heads(y, cfg.H), pos, cfg.rot_dim,
                                 cfg.rope_base)  # fmt: skip

        kr = rot(k).transpose(0, 2, 1, 3).reshape(k.shape)  # (B, T, H*D)
        cache = dec.KCache(np.concatenate([cache.k, kr], axis=1))
        o = sa.slim_attention(rot(q), cache.k, w_kv, None, q_offset=s0)
        return o, cache

    monkeypatch.setattr(dec, "_attend_k", wrong)
    cfg, w = case(name)[:2]
    _caught(dec.prepare(w, cfg, dec.Tricks(cache="k")), name, "k")


@pytest.mark.parametrize("name", CFGS)
def test_checker_rejects_x_cache_absorbing_the_rotary_dims(name, monkeypatch):
    """All of W_K absorbed as if there were no RoPE: the keys are never rotated."""
    right = dec.xcache_attention

    def wrong(q, x, w_k, w_v, cfg, q_offset):
        return right(q, x, w_k, w_v, dataclasses.replace(cfg, rot_dim=0), q_offset)

    monkeypatch.setattr(dec, "xcache_attention", wrong)
    cfg, w = case(name)[:2]
    _caught(dec.prepare(w, cfg, dec.Tricks(cache="x")), name, "x")


@pytest.mark.parametrize("cache", ["kv", "k"])
def test_checker_rejects_table_built_without_norm1(cache):
    cfg, w = case("rot_dim<D")[:2]
    e, a = w.embed, w.layers[0].attn
    wrong = np.concatenate([e, e @ a.w_q, e @ a.w_k, e @ a.w_v], axis=-1)  # (V, W)
    model = dec.prepare(w, cfg, dec.Tricks(precompute=True, cache=cache))
    assert wrong.shape == model.table.shape
    _caught(dataclasses.replace(model, table=wrong), "rot_dim<D", cache)


def test_checker_rejects_w_kv_folded_the_wrong_way():
    """W_V^-1 W_K (the V direction's matrix) in place of W_K^-1 W_V."""
    cfg, w = case("rot_dim=D")[:2]
    model = dec.prepare(w, cfg, dec.Tricks(cache="k"))
    layers = tuple(
        dataclasses.replace(lay, w_kv=sa.fold_w_kv(lw.attn.w_v, lw.attn.w_k))
        for lay, lw in zip(model.layers, w.layers, strict=True)
    )
    _caught(dataclasses.replace(model, layers=layers), "rot_dim=D", "k")


def test_family_has_no_biases():
    """So there is no b_V to forget: LayerNorm configs and biased weights are
    rejected before anything runs."""
    cfg = family(11, 8, 2, 4, 1, None)
    ln = dataclasses.replace(cfg, norm="layernorm")
    with pytest.raises(ValueError, match="rmsnorm"):
        dec.check_config(ln)
    w = cm.init_decoder(cfg, np.random.default_rng(0))
    lw = w.layers[0]
    biased = dataclasses.replace(lw, attn=dataclasses.replace(lw.attn, b_v=np.ones(8)))
    with pytest.raises(ValueError, match="no biases"):
        dec.prepare(
            dataclasses.replace(w, layers=(biased,)), cfg, dec.Tricks(cache="k")
        )
    with pytest.raises(ValueError, match="rmsnorm"):
        dec.prepare(cm.init_decoder(ln, np.random.default_rng(0)), ln, dec.Tricks())


# --- 4. bytes: caches, weights, capacity ---------------------------------------------


def _arrays(obj):
    """Every ndarray inside a (nested) dataclass or tuple."""
    if isinstance(obj, np.ndarray):
        yield obj
    elif isinstance(obj, tuple):
        for o in obj:
            yield from _arrays(o)
    elif dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            yield from _arrays(getattr(obj, f.name))


ALL = [dataclasses.replace(t, kept=k) for t in EXACT for k in (None, 0.5)]


@given(h=st.integers(1, 8), d=st.integers(1, 16), n_layers=st.integers(1, 6),
       b=st.integers(0, 9), s=st.integers(0, 99),
       item=st.sampled_from([1, 2, 4, 8]))  # fmt: skip
def test_k_and_x_caches_are_half_of_kv(h, d, n_layers, b, s, item):
    cfg = family(7, h * d, h, 3, n_layers, 0)
    kv, k, x = (
        dec.cache_bytes(cfg, dec.Tricks(cache=c), b, s, item) for c in dec.CACHES
    )
    assert kv == 2 * k == 2 * x == 2 * n_layers * b * s * h * d * item


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("tricks", ALL, ids=str)
def test_bytes_count_the_arrays_held(tricks, dtype):
    """cache_bytes is the caches' nbytes after a prefill and 3 steps; weight_bytes
    the nbytes of what prepare keeps; with no tricks, of common's weights."""
    cfg = family(13, 12, 3, 10, 3, 2)
    w = cm.init_decoder(cfg, np.random.default_rng(1), dtype)
    item = np.dtype(dtype).itemsize
    model = dec.prepare(w, cfg, tricks)
    _, caches = dec.prefill(model, np.array([[1, 2], [3, 4], [5, 6]]))
    for t in range(3):
        _, caches = dec.decode_step(model, np.array([t, 7, 12]), caches)
    assert all(dec.cache_length(c) == 5 for c in caches)
    assert sum(a.nbytes for a in _arrays(caches)) == dec.cache_bytes(
        cfg, tricks, 3, 5, item
    )
    assert all(a.dtype == dtype for a in _arrays(model))
    assert sum(a.nbytes for a in _arrays(model)) == dec.weight_bytes(cfg, tricks, item)
    if tricks == dec.Tricks():
        assert sum(a.nbytes for a in _arrays(w)) == dec.weight_bytes(cfg, tricks, item)


@pytest.mark.parametrize("tricks", ALL, ids=str)
def test_every_array_kept_is_read(tricks):
    """Drop any array prepare keeps (layers 1 and 2) and the forward fails: the
    weight bytes count nothing the tricks do not read."""
    cfg = family(13, 12, 3, 10, 2, 2)
    model = dec.prepare(cm.init_decoder(cfg, np.random.default_rng(2)), cfg, tricks)
    tokens = np.array([[1, 2, 3]])
    for i, lay in enumerate(model.layers):
        for f in dataclasses.fields(lay):
            if getattr(lay, f.name) is None:
                continue
            layers = list(model.layers)
            layers[i] = dataclasses.replace(lay, **{f.name: None})
            with pytest.raises((TypeError, AttributeError, ValueError)):
                dec.prefill(dataclasses.replace(model, layers=tuple(layers)), tokens)


@given(h=st.integers(1, 8), d=st.integers(1, 16), n_layers=st.integers(1, 6),
       v=st.integers(1, 1000), f=st.integers(1, 64), tricks=st.sampled_from(ALL),
       item=st.sampled_from([1, 2, 4, 8]), budget=st.integers(0, 10**9))  # fmt: skip
def test_capacity_inverts_cache_bytes(h, d, n_layers, v, f, tricks, item, budget):
    cfg = family(v, h * d, h, f, n_layers, 0)
    n = dec.max_cached_tokens(cfg, tricks, budget, item)
    wb = dec.weight_bytes(cfg, tricks, item)
    if budget < wb:
        assert n == 0
        return
    assert wb + dec.cache_bytes(cfg, tricks, 1, n, item) <= budget
    assert wb + dec.cache_bytes(cfg, tricks, 1, n + 1, item) > budget
    for b in (1, 2, 3):  # only B * S matters
        assert dec.cache_bytes(cfg, tricks, b, n, item) == dec.cache_bytes(
            cfg, tricks, 1, b * n, item
        )


# --- 5. bad inputs --------------------------------------------------------------------


GOOD = family(11, 8, 2, 4, 1, None)


@pytest.mark.parametrize(
    "cfg, match",
    [
        (dataclasses.replace(GOOD, G=1), "G == H"),
        (dataclasses.replace(GOOD, C=10), "C == H"),
        (dataclasses.replace(GOOD, act="swiglu"), "relu"),
        (dataclasses.replace(GOOD, parallel=True), "parallel=False"),
    ],
)
def test_config_outside_the_family_is_rejected(cfg, match):
    with pytest.raises(ValueError, match=match):
        dec.check_config(cfg)
    with pytest.raises(ValueError, match=match):
        dec.cache_bytes(cfg, dec.Tricks(), 1, 1, 2)


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(precompute=1), TypeError, "precompute"),
        (dict(cache=3), TypeError, "cache"),
        (dict(cache="v"), ValueError, "cache"),
        (dict(kept="half"), TypeError, "kept"),
        (dict(kept=True), TypeError, "kept"),
        (dict(kept=0.0), ValueError, "kept"),
        (dict(kept=1.5), ValueError, "kept"),
        (dict(kept=math.nan), ValueError, "kept"),
    ],
)
def test_bad_tricks_raise(kwargs, err, match):
    with pytest.raises(err, match=match):
        dec.Tricks(**kwargs)


def test_bad_calls_raise():
    w = cm.init_decoder(GOOD, np.random.default_rng(0))
    model = dec.prepare(w, GOOD, dec.Tricks(cache="x"))
    bad = [
        (lambda: dec.prefill(model, np.array([[0, 11]])), ValueError, "tokens"),
        (lambda: dec.prefill(model, np.array([[-1]])), ValueError, "tokens"),
        (lambda: dec.prefill(model, np.array([0, 1])), ValueError, "tokens"),
        (lambda: dec.prefill(model, np.array([[0.5]])), TypeError, "tokens"),
        (lambda: dec.prefill(w, np.array([[1]])), TypeError, "model"),
        (lambda: dec.decode_step(model, np.array([[1]]), None), ValueError, "token"),
        (
            lambda: dec.decode_step(
                model, np.array([1, 2]), dec.prefill(model, np.array([[1]]))[1]
            ),
            ValueError,
            "caches",
        ),
        (
            lambda: dec.prefill(
                dec.prepare(w, GOOD, dec.Tricks()),
                np.array([[1]]),
                dec.prefill(model, np.array([[1]]))[1],
            ),
            ValueError,
            "caches",
        ),
        (lambda: dec.greedy_generate(model, np.array([[1]]), -1), ValueError, "n_new"),
        (
            lambda: dec.forced_logits(model, np.array([[1, 2]]), 2),
            ValueError,
            "n_prompt",
        ),
        (
            lambda: dec.agreement(w, GOOD, dec.Tricks(), np.array([[1]]), 0),
            ValueError,
            "n_new",
        ),
        (lambda: dec.greedy_generate(model, np.array([[1]]), 2.0), TypeError, "n_new"),
        (lambda: dec.prepare(w, GOOD, "kv"), TypeError, "tricks"),
        (
            lambda: dec.prepare(w, dataclasses.replace(GOOD, L=2), dec.Tricks()),
            ValueError,
            "weights",
        ),
        (lambda: dec.cache_bytes(GOOD, dec.Tricks(), -1, 1, 2), ValueError, "^b must"),
        (lambda: dec.cache_bytes(GOOD, dec.Tricks(), 1, 1.5, 2), TypeError, "^s must"),
        (lambda: dec.cache_bytes(GOOD, dec.Tricks(), 1, 1, 0), ValueError, "itemsize"),
        (lambda: dec.cache_bytes(GOOD, "x", 1, 1, 2), TypeError, "tricks"),
        (
            lambda: dec.max_cached_tokens(GOOD, dec.Tricks(), -5, 2),
            ValueError,
            "budget",
        ),
    ]
    for call, err, match in bad:
        with pytest.raises(err, match=match):
            call()


# --- 5. the decoder on the GPU (gpu/decoder.py) --------------------------------------
#
# The shape for the end-to-end check: C = 256, L = 4, float32, 64 steps. The
# GPU decoder runs float32 weights (the float64 draws rounded once, which the float64
# reference then reads too) and is checked against the float64 reference decoder with
# and without its tricks: the ("decoder", "float32") row, scale max|logit| plus the
# rebuilt attention's budget (logit_scale) in u32 units. Greedy tokens must be
# common's exactly. Every scratch array and the cache slot a step writes are NaN
# before the step (gpu.decoder.poison_state): an element it forgets fails.

GPU_CFG = family(128, 256, 4, 512, 4, rot_dim=None)  # D = 64
GPU_B, GPU_T0, GPU_NEW = 2, 5, 64
# W_K drawn with cond(W_K) = 4: the K-only cache's budget grows with cond(W_K)
# (test_k_cache_tolerance_grows_with_cond_w_k shows it in float64); with float32's
# u it would swallow the check at a random Gaussian W_K's cond of ~10^3.
GPU_COND = 4.0


def _rounded(obj):
    """Every array of a weights dataclass rounded to float32, kept as float64."""
    if isinstance(obj, np.ndarray):
        return obj.astype(F32).astype(F64)
    if isinstance(obj, tuple):
        return tuple(_rounded(o) for o in obj)
    if dataclasses.is_dataclass(obj):
        return dataclasses.replace(
            obj,
            **{f.name: _rounded(getattr(obj, f.name)) for f in dataclasses.fields(obj)},
        )
    return obj


@functools.cache
def gpu_case():
    cfg = GPU_CFG
    rng = np.random.default_rng(21)
    w = cm.init_decoder(cfg, rng)
    layers = tuple(
        dataclasses.replace(lw, attn=dataclasses.replace(
            lw.attn, w_k=sa.matrix_with_cond(cfg.C, GPU_COND, rng)))
        for lw in w.layers
    )  # fmt: skip
    w = _rounded(dataclasses.replace(w, layers=layers))
    prompt = rng.integers(0, cfg.V, (GPU_B, GPU_T0))
    want = cm.greedy_generate(w, cfg, prompt, GPU_NEW)  # (B, T0 + NEW)
    return cfg, w, prompt, want, dec.baseline_forced_logits(w, cfg, want, GPU_T0)


@functools.cache
def gpu_ref(tricks):
    """The float64 tricked decoder's teacher-forced logits and the GPU row's scale.
    Only the K-only cache adds to max|logit|: its V = (sum p k) W_KV amplifies the
    error of the sum by |W_KV| (logit_scale's kv_fold_scale part). The GPU's X
    cache rebuilds K and V with one GEMM over C, the same sums as the K+V path's
    projection (a stage of the row), not the reference's absorbed order."""
    cfg, w, _, want, base = gpu_case()
    ref = dec.forced_logits(dec.prepare(w, cfg, tricks), want, GPU_T0)
    extra = 0.0
    if tricks.cache == "k":
        ls = logit_scale(w, cfg, "k", want)
        extra = (ls - 1) * REWRITE.atol / SLIM.atol
    dec_tol, gpu32 = tolerance("decoder", F32), tolerance("gpu", F32)
    scale = float(np.abs(base).max()) + extra * gpu32.atol / dec_tol.atol
    return ref, scale


def _gpu_model(tricks, cfg=None):
    from gpu import decoder as gdec

    c0, w, *_ = gpu_case()
    return gdec.to_gpu(w, cfg or c0, tricks, F32, n_pos=GPU_T0 + GPU_NEW)


def _gpu_check(tricks, cfg=None) -> float:
    from gpu import decoder as gdec

    c0, _, _, want, base = gpu_case()
    assert 11 * c0.L + 2 <= 46 and max(c0.C, c0.F, want.shape[1]) <= 2**12
    ref, scale = gpu_ref(tricks)
    got = gdec.forced_logits(_gpu_model(tricks, cfg), want, GPU_T0, poison=True)
    used = assert_close(got, ref, "decoder", F32, scale)
    assert_close(got, base, "decoder", F32, scale)  # and common's, untricked
    return used


@pytest.mark.gpu
@pytest.mark.parametrize("tricks", EXACT, ids=lambda t: f"pre={t.precompute}-{t.cache}")
def test_gpu_decoder_exact_tricks_are_commons(tricks):
    """Greedy tokens equal common's; teacher-forced logits within the row."""
    from gpu import decoder as gdec

    _, _, prompt, want, _ = gpu_case()
    got = gdec.greedy_generate(_gpu_model(tricks), prompt, GPU_NEW, poison=True)
    assert_close(got, want, "exact", F64)
    print(f"gpu {tricks}: logits {describe(_gpu_check(tricks))}")


@pytest.mark.gpu
@pytest.mark.parametrize("precompute", [False, True])
def test_gpu_decoder_oracle_above_active_is_exact(precompute):
    """Deja Vu's oracle at kept = 1 and just above the largest active fraction on
    these tokens (the union over the batch) is the dense MLP."""
    cfg, w, _, want, _ = gpu_case()
    frac = dec.active_fraction(w, cfg, want)
    for kept in (1.0, min(1.0, frac + 1 / cfg.F)):
        used = _gpu_check(dec.Tricks(precompute, "kv", kept))
        print(f"gpu kept {kept:.3f} (active {frac:.3f}): {describe(used)}")


@pytest.mark.gpu
@pytest.mark.parametrize("cache", dec.CACHES)
def test_gpu_checker_rejects_the_wrong_rope_base(cache):
    """A decoder whose RoPE tables use base 500 instead of 10000 (every key and
    query rotated by the wrong angles) fails the row."""
    cfg = dataclasses.replace(GPU_CFG, rope_base=500.0)
    with pytest.raises(AssertionError, match="out of tolerance"):
        _gpu_check(dec.Tricks(cache=cache), cfg)


def _swap_env(k: np.ndarray, r: int) -> np.ndarray:
    """|k| + |k with the RoPE pairs exchanged| on the rotary dims: a bound on every
    rotated key's magnitude, dim by dim."""
    env = np.abs(k).copy()
    env[..., :r] += np.abs(_swap_rotary(k, r))[..., :r]
    return env


@pytest.mark.gpu
@given(h=st.integers(1, 4), d=st.sampled_from([2, 6, 16, 64]), b=st.integers(1, 3),
       s_alloc=st.integers(1, 300), data=st.data(), seed=seeds)  # fmt: skip
def test_gpu_slim_rope_on_read_matches_reference(h, d, b, s_alloc, data, seed):
    """slim_decode(rope=...) (rv1) against reference.slim_attention.slim_decode with
    positions: raw keys rotated on read for the scores only; rot_dim < D too."""
    import cupy as cp

    from gpu import precompute as gpc
    from gpu import runtime as rt
    from gpu import slim_attention as gsa

    r = data.draw(st.sampled_from(sorted({2, d - d % 4, d} - {0})))
    length = data.draw(st.integers(1, s_alloc))
    rng = np.random.default_rng(seed)
    c = h * d
    q = rng.standard_normal((b, h, d)).astype(F32)
    kc = rng.standard_normal((b, s_alloc, c)).astype(F32)
    w = (rng.standard_normal((c, c)) / math.sqrt(c)).astype(F32)
    cos, sin = gpc.rope_tables(length + 3, r)
    out = rt.poisoned(q.shape, F32)
    gsa.slim_decode(cp.asarray(q), cp.asarray(kc), cp.asarray(w), length=length,
                    out=out, rope=(cos, sin))  # fmt: skip
    att = kc[:, :length].astype(F64)
    ref = sa.slim_decode(q.astype(F64), att, w.astype(F64), None, "accumulate_k",
                         positions=np.arange(length), rot_dim=r)  # fmt: skip
    env = _swap_env(att.reshape(b, length, h, d), r).reshape(att.shape)
    used = assert_close(cp.asnumpy(out), ref, "gpu", F32, slim_kernel_scale(q, env, w))
    # known-wrong: the same keys read unrotated
    plain = sa.slim_decode(q.astype(F64), att, w.astype(F64), None, "accumulate_k")
    if np.abs(plain - ref).max() > 1e-3:
        with pytest.raises(AssertionError):
            assert_close(
                cp.asnumpy(out), plain, "gpu", F32, slim_kernel_scale(q, env, w)
            )
    print(f"rv1 r={r}: {describe(used)}")


def _rope_rows(y: np.ndarray, pos: np.ndarray, r: int) -> np.ndarray:
    """reference.common.apply_rope row by row: y (N, H, D), row n at pos[n]."""
    return np.stack([cm.apply_rope(y[n][:, None], pos[n : n + 1], r)[:, 0]
                     for n in range(y.shape[0])])  # fmt: skip


@pytest.mark.gpu
@given(b=st.integers(1, 3), per_b=st.integers(1, 5), h=st.integers(1, 3),
       d=st.sampled_from([2, 6, 64]), layout=st.sampled_from(["bhsd", "bsc"]),
       amp=st.sampled_from([1.0, 1e3]), dtype=st.sampled_from([F32, np.float16]),
       data=st.data(), seed=seeds)  # fmt: skip
def test_gpu_glue_kernels_match_numpy(b, per_b, h, d, layout, amp, dtype, data, seed):
    """dec_split (rows to q and cache slots, RoPE where asked) and dec_add_rmsnorm
    against NumPy, outputs NaN-poisoned: every element they own is written, the
    rest of the caches stays NaN."""
    import cupy as cp

    from gpu import decoder as gdec
    from gpu import precompute as gpc
    from gpu import runtime as rt

    r = data.draw(st.sampled_from(sorted({0, 2, d - d % 4, d})))
    c, n = h * d, b * per_b
    s = data.draw(st.integers(per_b, per_b + 4))
    pos0 = data.draw(st.integers(0, s - per_b))
    rng = np.random.default_rng(seed)
    w = 3 * c + data.draw(st.integers(0, 5))
    y = (amp * rng.standard_normal((n, w))).astype(dtype)
    cos, sin = gpc.rope_tables(s + 2, max(r, 2))
    x = rt.poisoned((n, c), F32)
    q = rt.poisoned((n, h, d), dtype)
    shape = (b, h, s, d) if layout == "bhsd" else (b, s, c)
    k, v = rt.poisoned(shape, dtype), rt.poisoned(shape, dtype)
    off = data.draw(st.integers(0, w - 3 * c))
    gdec.split(cp.asarray(y), cos, sin, n_heads=h, head_dim=d, rot=r, pos0=pos0,
               per_b=per_b, x=x, xo=off, q=q, qo=off, rq=True, k=k, ko=off + c,
               rk=bool(seed % 2), v=v, vo=off + 2 * c)  # fmt: skip
    pos = pos0 + np.arange(n) % per_b
    heads = y[:, off : off + 3 * c].astype(F64).reshape(n, 3, h, d)
    want_q = _rope_rows(heads[:, 0], pos, r)
    want_k = _rope_rows(heads[:, 1], pos, r if seed % 2 else 0)
    # a rotated value y1 c - y2 s errs by u32 (|y1| + |y2|) from the float32 tables
    # and by about 2 u32 (|y1 c| + |y2 s|) from its products and sum: <= 6 u32 m,
    # m = max|y|, inside the "gpu" row's 6 u32 scale at scale 2 m
    tol = dict(kind="gpu", dtype=dtype, scale=2 * float(np.abs(heads).max()))
    assert_close(cp.asnumpy(x), y[:, off : off + c], "exact", F32)
    assert_close(cp.asnumpy(q), want_q, tol["kind"], dtype, tol["scale"])
    kk, vv = cp.asnumpy(k).astype(F64), cp.asnumpy(v).astype(F64)
    if layout == "bsc":  # (B, S, C) -> (B, H, S, D)
        kk, vv = (a.reshape(b, s, h, d).transpose(0, 2, 1, 3) for a in (kk, vv))
    bi = np.arange(n) // per_b
    assert_close(kk[bi, :, pos], want_k, tol["kind"], dtype, tol["scale"])
    assert_close(vv[bi, :, pos], heads[:, 2], "exact", dtype)
    untouched = np.ones(kk.shape, bool)
    untouched[bi, :, pos] = False
    assert np.isnan(kk[untouched]).all() and np.isnan(vv[untouched]).all()
    # RMSNorm with the residual add
    res = (amp * rng.standard_normal((n, c))).astype(F32)
    add = (amp * rng.standard_normal((n, c))).astype(dtype)
    gam = rng.standard_normal(c).astype(dtype)
    xd, yo = cp.asarray(res), rt.poisoned((n, c), dtype)
    gdec.add_rmsnorm(xd, cp.asarray(gam), yo, cp.asarray(add))
    h64 = res.astype(F64) + add.astype(F64)
    want = cm.rms_norm(h64, gam.astype(F64))
    assert_close(cp.asnumpy(xd), h64, "gpu", F32, np.abs(h64).max())
    used = assert_close(cp.asnumpy(yo), want, "gpu", dtype,
                        math.sqrt(c) * np.abs(want).max())  # fmt: skip
    print(f"glue {dtype.__name__}: rmsnorm {describe(used)}")
