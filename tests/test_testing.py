"""The checker itself: it must accept what is within a row's budget and bite otherwise.

STYLE R8: every checker has a known-wrong case it must reject. Here: for every row of
the tolerance table, a result 2x outside the limit in one element is rejected, a
result at half the limit is accepted, and NaN, inf or a wrong shape always fail.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference.testing import (
    LAM_TYPICAL,
    TOLERANCES,
    TypicalError,
    assert_close,
    assert_typical,
    attention_scale,
    attention_typical,
    describe,
    tolerance,
    typical_sum,
)

ROWS = sorted(TOLERANCES)


def _expected(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal(n) * 10.0 ** rng.integers(-3, 3, n)


@pytest.mark.parametrize("kind,dtype", ROWS, ids=[f"{k}-{d}" for k, d in ROWS])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 50), scale=st.floats(0.5, 8))
def test_rejects_twice_the_limit(kind, dtype, seed, n, scale):
    tol = tolerance(kind, dtype)
    want = _expected(seed, n)
    limit = tol.floor + tol.atol * scale + tol.rtol * np.abs(want)
    i = seed % n
    bad = want.copy()
    # one element moved to twice its limit (or, for "exact", to the next float)
    bad[i] = want[i] + 2 * limit[i] if limit[i] > 0 else np.nextafter(want[i], np.inf)
    with pytest.raises(AssertionError, match="out of tolerance"):
        assert_close(bad, want, kind, dtype, scale=scale)


@pytest.mark.parametrize("kind,dtype", ROWS, ids=[f"{k}-{d}" for k, d in ROWS])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 50))
def test_accepts_half_the_limit_and_reports_budget(kind, dtype, seed, n):
    tol = tolerance(kind, dtype)
    want = _expected(seed, n)
    limit = tol.floor + tol.atol + tol.rtol * np.abs(want)
    got = want + 0.5 * limit * np.sign(np.cos(np.arange(n)))
    used = assert_close(got, want, kind, dtype)
    # want + limit/2 is rounded to float64: off by up to half an ulp of got, which
    # is a visible share of the limit when the limit is a few ulps (rtol ~ 2u)
    with np.errstate(divide="ignore", invalid="ignore"):
        slack = np.where(limit > 0, np.spacing(np.abs(got)) / limit, 0.0).max()
    assert used <= 0.5 + slack + 1e-4
    if limit.max() > 0:
        assert used >= 0.5 - slack - 1e-4
    assert describe(used).endswith("% of tolerance")


@pytest.mark.parametrize("kind,dtype", ROWS, ids=[f"{k}-{d}" for k, d in ROWS])
def test_nan_inf_and_shape_always_fail(kind, dtype):
    want = np.ones(5)
    for poison in (np.nan, np.inf, -np.inf):
        got = want.copy()
        got[3] = poison
        with pytest.raises(AssertionError):
            assert_close(got, want, kind, dtype, scale=1e30)
    with pytest.raises(AssertionError, match="shape"):
        assert_close(np.ones(4), want, kind, dtype)


def test_every_row_says_where_it_comes_from():
    for key, tol in TOLERANCES.items():
        assert tol.why, key
        assert tol.rtol >= 0 and tol.atol >= 0 and tol.floor >= 0, key
        if key[0] == "exact":
            assert tol.rtol == tol.atol == tol.floor == 0


def test_unknown_row_is_a_key_error():
    with pytest.raises(KeyError, match="no tolerance"):
        tolerance("gpu", np.int32)


def test_attention_scale_bounds_the_observed_fp32_error():
    """The derived scale is an upper bound in practice: float32 attention computed in
    NumPy errs by less than the "gpu" float32 budget, and not by orders less."""
    from reference.common import decode_attention

    rng = np.random.default_rng(0)
    for amp in (0.1, 1.0, 4.0):
        q = (amp * rng.standard_normal((2, 4, 64))).astype(np.float32)
        k = (amp * rng.standard_normal((2, 2, 500, 64))).astype(np.float32)
        v = rng.standard_normal((2, 2, 500, 64)).astype(np.float32)
        f64 = [x.astype(np.float64) for x in (q, k, v)]
        want = decode_attention(*f64)
        got = decode_attention(q, k, v)
        assert got.dtype == np.float32
        used = assert_close(got, want, "gpu", np.float32, attention_scale(*f64))
        assert used > 1e-4, f"budget barely touched ({describe(used)}): too loose?"


# --- the typical error (a statistical check beside the worst-case rows) ------------


def _f32_attention(q, k, v, chunk):
    """Decode attention in float32 as a kernel does it: an online softmax over
    chunks of keys, each chunk summed sequentially (np.cumsum), then combined."""
    f = np.float32
    q, k, v = (a.astype(f) for a in (q, k, v))
    b, h, d = q.shape
    kk, vv = (np.repeat(a, h // k.shape[1], axis=1) for a in (k, v))
    sc = np.einsum("bhd,bhsd->bhs", q, kk) * f(1 / np.sqrt(d))  # (B, H, S)
    ms, ls, accs = [], [], []
    for c0 in range(0, sc.shape[-1], chunk):
        part = sc[..., c0 : c0 + chunk]
        m = part.max(-1)
        e = np.exp(part - m[..., None])
        ms.append(m)
        ls.append(np.cumsum(e, axis=-1, dtype=f)[..., -1])
        ev = e[..., None] * vv[:, :, c0 : c0 + chunk]
        accs.append(np.cumsum(ev, axis=2, dtype=f)[:, :, -1])
    m, l_, acc = np.stack(ms, -1), np.stack(ls, -1), np.stack(accs, -2)
    a = np.exp(m - m.max(-1, keepdims=True))  # (B, H, n_chunks)
    return (a[..., None] * acc).sum(-2, dtype=f) / (a * l_).sum(-1, dtype=f)[..., None]


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["f32", "f16"])
def test_typical_check_catches_a_dropped_key_the_worst_case_accepts(dtype):
    """tests/test_attention.py's long cache (S = 20000) in float32 on the CPU, summed
    sequentially and split in chunks of 512: the right computation sits far inside
    the typical bound; the one that drops the last key passes the worst-case row (a
    quarter of its budget) and fails this one."""
    from reference.common import decode_attention

    rng = np.random.default_rng(7)
    q = rng.standard_normal((1, 4, 128)).astype(dtype)
    k = rng.standard_normal((1, 2, 20000, 128)).astype(dtype)
    v = rng.standard_normal((1, 2, 20000, 128)).astype(dtype)
    q64, k64, v64 = (x.astype(np.float64) for x in (q, k, v))
    want = decode_attention(q64, k64, v64)
    sigma = attention_typical(q64, k64, v64, dtype)
    scale = attention_scale(q64, k64, v64)
    for chunk in (20000, 512) if dtype == np.float32 else (20000,):
        got = _f32_attention(q, k, v, chunk).astype(dtype)
        assert_close(got, want, "gpu", dtype, scale)
        z = assert_typical(got, want, sigma)
        drop = _f32_attention(q, k[:, :, :-1], v[:, :, :-1], chunk).astype(dtype)
        used = assert_close(drop, want, "gpu", dtype, scale)  # the gap: accepted
        print(f"chunk {chunk}: right {z:.3g} sigma; dropped key: {describe(used)}")
        assert used < 0.5
        with pytest.raises(AssertionError, match="systematic"):
            assert_typical(drop, want, sigma)


def test_typical_sum_is_the_exchangeable_bound():
    """sqrt(n (|t|^2 + y^2)) and, on i.i.d. terms, the observed float32 error of a
    sequential sum sits at a fraction of u times it (and not at 1e-3 of it)."""
    t = np.array([3.0, -4.0])
    assert typical_sum(t) == np.sqrt(2 * (25 + 1))
    rng = np.random.default_rng(0)
    terms = rng.standard_normal((2000, 1000))
    exact = terms.sum(axis=1)
    f32 = np.cumsum(terms.astype(np.float32), axis=1, dtype=np.float32)[:, -1]
    err = f32.astype(np.float64) - terms.astype(np.float32).astype(np.float64).sum(1)
    z = err / (2.0**-24 * typical_sum(terms))
    rms = float(np.sqrt(np.mean(z**2)))
    assert 0.05 < rms < 1, rms
    del exact


def test_typical_error_accumulates_and_names_the_draw():
    t = TypicalError("demo")
    assert t.add(np.ones(4), np.ones(4), 1.0) == 0
    t.add(np.ones(4) + 3 * LAM_TYPICAL, np.ones(4), 1.0)
    assert (t.n, t.draws) == (8, 2)
    with pytest.raises(AssertionError, match="demo: typical error"):
        t.check()
    with pytest.raises(AssertionError, match="no draws"):
        TypicalError("empty").check()
    nan = TypicalError("nan")
    nan.add(np.array([np.nan, 1.0]), np.ones(2), 1.0)
    with pytest.raises(AssertionError):
        nan.check()
