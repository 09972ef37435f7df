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
    TOLERANCES,
    assert_close,
    attention_scale,
    describe,
    tolerance,
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
