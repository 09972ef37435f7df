"""Slim-attention decode on the GPU (gpu/slim_attention.cu) against float64 truth.

The truth is float64 on the same stored values: the reference's accumulate order for
the Hypothesis cases (cheap at C = 4096), and the *baseline* itself, standard attention
over a K and a V cache rebuilt in float64 (V = K W_KV + b_V; K = X W_K, V = X W_V +
b_V), for the fixed cases, so the trick and the kernel are checked at once.
Hypothesis draws shapes that are not multiples of any tile (S = 1, odd S, lengths
shorter than the allocation), every version and both storage dtypes; outputs are
poisoned with NaN; bad inputs are rejected before any launch. All tests here need a
GPU (marked ``gpu``).
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference import slim_attention as ref_slim
from reference.common import decode_attention
from reference.testing import assert_close, describe, slim_kernel_scale

pytestmark = pytest.mark.gpu

FAST_HD = [(8, 128), (16, 64), (16, 128), (24, 128), (32, 64), (32, 128)]


@st.composite
def case(draw, fast: bool):
    if fast:
        h, d = draw(st.sampled_from(FAST_HD))
    else:
        h = draw(st.sampled_from([1, 2, 3, 5]))
        d = draw(st.sampled_from([1, 7, 16, 33, 64]))
    sa = draw(st.one_of(st.integers(1, 40), st.integers(41, 1200)))
    length = draw(st.one_of(st.none(), st.integers(1, sa)))
    s = sa if length is None else length
    b = draw(st.integers(1, 3))
    amp = draw(st.sampled_from([0.1, 1.0, 4.0]))  # large values: peaked softmax
    n_split = draw(st.one_of(st.none(), st.integers(1, min(s, 512)))) if fast else None
    bias = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    return b, h, d, sa, length, amp, n_split, bias, seed


def _inputs(b, h, d, sa, amp, bias, seed, dtype, xcache=False):
    rng = np.random.default_rng(seed)
    c = h * d
    q = (amp * rng.standard_normal((b, h, d))).astype(dtype)
    cache = (amp * rng.standard_normal((b, sa, c)) / (c**0.25 if xcache else 1)).astype(
        dtype
    )
    w = (rng.standard_normal((c, c)) / math.sqrt(c)).astype(dtype)
    b_v = rng.standard_normal(c).astype(dtype) if bias else None
    w_k = (rng.standard_normal((c, c)) / math.sqrt(c)).astype(dtype) if xcache else None
    return q, cache, w, b_v, w_k


def _truth(q, cache, w, b_v, w_k=None):
    """float64 truth in the accumulate order (reference.slim_attention): equal to the
    baseline up to float64 rounding (tests/test_slim_attention.py proves it), and
    H*S*C work instead of S*C^2 for rebuilding V."""
    f64 = (np.asarray(a, np.float64) for a in (q, cache, w))
    bv = None if b_v is None else np.asarray(b_v, np.float64)
    if w_k is None:
        return ref_slim.slim_decode(*f64, bv, order="accumulate_k")
    qq, xx, ww = f64
    return ref_slim.xcache_decode(qq, xx, np.asarray(w_k, np.float64), ww, bv)


def _baseline(q, cache, w, b_v, w_k=None):
    """Baseline attention in float64: per-head K and V caches, built from the cache."""
    q, cache, w = (np.asarray(a, np.float64) for a in (q, cache, w))
    b, h, d = q.shape
    s = cache.shape[1]
    k = cache if w_k is None else cache @ np.asarray(w_k, np.float64)
    v = cache @ w + (0.0 if b_v is None else np.asarray(b_v, np.float64))
    k4 = k.reshape(b, s, h, d).transpose(0, 2, 1, 3)
    v4 = v.reshape(b, s, h, d).transpose(0, 2, 1, 3)
    return decode_attention(q, k4, v4)


def _run_slim(version, q, cache, w, b_v, length, n_split):
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


def _run_x(version, q, cache, w_k, w_v, b_v, length, n_split):
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


def _check(version, cs, dtype, xcache):
    b, h, d, sa, length, amp, n_split, bias, seed = cs
    q, cache, w, b_v, w_k = _inputs(b, h, d, sa, amp, bias, seed, dtype, xcache)
    s = sa if length is None else length
    att = cache[:, :s]
    fast = version != 1
    if xcache:
        got = _run_x(version, q, cache, w_k, w, b_v, length, n_split)
    else:
        got = _run_slim(version, q, cache, w, b_v, length, n_split)
    ref = _truth(q, att, w, b_v, w_k)
    scale = slim_kernel_scale(q, att, w, w_k, fp16_p=fast, fp16_qt=fast and xcache)
    used = assert_close(got, ref, "gpu", dtype, scale)
    print(f"{'x' if xcache else ''}v{version} {dtype.__name__}: {describe(used)}")


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@given(cs=case(fast=False))
def test_v1_matches_baseline(dtype, cs):
    _check(1, cs, dtype, xcache=False)


@pytest.mark.parametrize("version", [2, 3, 4, 5, 6])
@given(cs=case(fast=True))
def test_fast_matches_baseline(version, cs):
    _check(version, cs, np.float16, xcache=False)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@given(cs=case(fast=False))
def test_xv1_matches_baseline(dtype, cs):
    _check(1, cs, dtype, xcache=True)


@pytest.mark.parametrize("version", [3, 4, 5])
@given(cs=case(fast=True))
def test_xfast_matches_baseline(version, cs):
    _check(version, cs, np.float16, xcache=True)


def test_checker_rejects_a_forgotten_bias():
    """Known-wrong: v3 without b_V must fail the same check the right call passes."""
    cs = (2, 32, 128, 300, None, 1.0, None, True, 7)
    b, h, d, sa, length, amp, n_split, bias, seed = cs
    q, cache, w, b_v, _ = _inputs(b, h, d, sa, amp, bias, seed, np.float16)
    ref = _baseline(q, cache, w, b_v)
    scale = slim_kernel_scale(q, cache, w, fp16_p=True)
    assert_close(
        _run_slim(3, q, cache, w, b_v, None, None), ref, "gpu", np.float16, scale
    )
    wrong = _run_slim(3, q, cache, w, None, None, None)
    with pytest.raises(AssertionError):
        assert_close(wrong, ref, "gpu", np.float16, scale)


def test_checker_rejects_xcache_mistakes():
    """Known-wrong for the X cache: a forgotten b_V, and W_K of the wrong head order
    (W_K,h taken as rows instead of columns), must fail where the right call passes."""
    # amp = 4: a peaked softmax, so that the scores (and a wrong W_K) matter
    cs = (2, 32, 128, 300, None, 4.0, None, True, 8)
    b, h, d, sa, length, amp, n_split, bias, seed = cs
    q, cache, w, b_v, w_k = _inputs(b, h, d, sa, amp, bias, seed, np.float16, True)
    ref = _baseline(q, cache, w, b_v, w_k)
    scale = slim_kernel_scale(q, cache, w, w_k, fp16_p=True, fp16_qt=True)
    right = _run_x(5, q, cache, w_k, w, b_v, None, None)
    assert_close(right, ref, "gpu", np.float16, scale)
    for wrong in (
        _run_x(5, q, cache, w_k, w, None, None, None),
        _run_x(5, q, cache, np.ascontiguousarray(w_k.T), w, b_v, None, None),
    ):
        with pytest.raises(AssertionError):
            assert_close(wrong, ref, "gpu", np.float16, scale)


def test_every_split_plan_agrees():
    """n_split from 1 to S/NK: the same output within the same derived tolerance."""
    b, h, d, sa = 1, 32, 128, 1000
    q, cache, w, b_v, _ = _inputs(b, h, d, sa, 1.0, True, 11, np.float16)
    ref = _truth(q, cache, w, b_v)
    scale = slim_kernel_scale(q, cache, w, fp16_p=True)
    for version in (3, 4, 5, 6):
        for n in (1, 2, 3, 7, 15, 16, 31, 32):
            got = _run_slim(version, q, cache, w, b_v, None, n)
            assert_close(got, ref, "gpu", np.float16, scale)


def test_bad_inputs_rejected_before_launch():
    import cupy as cp

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
        slim_decode(q, k, w, version=7)
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
