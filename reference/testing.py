"""The tolerance table and the one checker every test and chapter uses.

An element passes when  |actual - expected| <= floor + atol * scale + rtol * |expected|.
Each (kind, dtype) row below says where its numbers come from. ``scale`` is the
magnitude the absolute error is proportional to (for attention: max|V| times
(1 + max|score|), see ``attention_scale``); it is 1 unless the math says otherwise.

Kinds:
  exact    same operations in the same order and dtype: bitwise equality.
  rewrite  two algebraically equal computations, both in the given dtype.
  gpu      a GPU kernel (float32 arithmetic, storage in the given dtype) against
           the float64 reference on the same inputs.

Nothing here imports anything but NumPy and the standard library: copy it freely.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Unit roundoff u (half the distance from 1 to the next number) per storage dtype.
UNIT_ROUNDOFF = {
    "float64": 2.0**-53,
    "float32": 2.0**-24,
    "float16": 2.0**-11,
}

# Longest reduction the tests draw (cache length S or width C), and the factor of the
# probabilistic bound |error| <= lam * sqrt(n) * u of Higham & Mary (2019), which
# holds for independent rounding errors with probability >= 1 - 2 exp(-lam^2 / 2)
# per sum (lam = 6: 3e-8).
N_MAX = 2**15
LAM = 6.0


def _sum_bound(u: float, n: int = N_MAX) -> float:
    return LAM * math.sqrt(n) * u


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float  # multiplied by ``scale`` in assert_close
    why: str
    floor: float = 0.0  # absolute, not scaled (e.g. fp16 rounding below 2^-14)


_U64, _U32, _U16 = (UNIT_ROUNDOFF[k] for k in ("float64", "float32", "float16"))

TOLERANCES: dict[tuple[str, str], Tolerance] = {
    **{
        ("exact", dt): Tolerance(0.0, 0.0, "same ops, same order, same dtype: bitwise")
        for dt in ("float64", "float32", "float16")
    },
    ("rewrite", "float64"): Tolerance(
        # Worst case, not probabilistic: each side is a chain of <= 10 stages (norm,
        # attention, MLP, a few layers), each a reduction of <= 2^15 terms with
        # error <= n*u = 3.6e-12; both sides err, so 2*10*n*u = 7.3e-11.
        rtol=2 * 10 * N_MAX * _U64,
        atol=2 * 10 * N_MAX * _U64,
        why="2 sides x 10 stages x worst-case n*u, n <= 2^15, fp64",
    ),
    ("rewrite", "float32"): Tolerance(
        # The same chain in fp32, with the probabilistic sum bound per stage.
        rtol=2 * 10 * _sum_bound(_U32),
        atol=2 * 10 * _sum_bound(_U32),
        why="2 sides x 10 stages x 6*sqrt(n)*u, n <= 2^15, fp32",
    ),
    ("gpu", "float32"): Tolerance(
        # A kernel with float32 arithmetic against the float64 truth on the same
        # inputs. The relative part covers the last few roundings (a division, an
        # exp); everything that grows with the sizes and magnitudes of the problem
        # is in ``scale``, which the caller derives for its computation (for
        # attention: attention_scale). lam*u with lam = 6 as above.
        rtol=LAM * _U32,
        atol=LAM * _U32,
        why="6*u32 relative; 6*u32 x the caller's derived error scale",
    ),
    ("gpu", "float16"): Tolerance(
        # Inputs are fp16 and the reference sees the same fp16 values, so the only
        # new error is the output rounded to fp16 (u16 = 2^-11, relative; 2^-25
        # absolute below the normal range) on top of the float32 row.
        rtol=_U16 + LAM * _U32,
        atol=LAM * _U32,
        floor=2.0**-25,
        why="u16 output rounding + the float32 row",
    ),
}


def tolerance(kind: str, dtype) -> Tolerance:
    """Look up the row for (kind, dtype); a KeyError names the rows that exist."""
    key = (kind, np.dtype(dtype).name)
    if key not in TOLERANCES:
        raise KeyError(f"no tolerance for {key}; rows: {sorted(TOLERANCES)}")
    return TOLERANCES[key]


def assert_close(actual, expected, kind: str, dtype, scale: float = 1.0) -> float:
    """Check |actual - expected| <= floor + atol*scale + rtol*|expected| elementwise.

    Args:
        actual: the result under test (any array-like; compared in float64).
        expected: the float64 reference, same shape.
        kind, dtype: the row of TOLERANCES (dtype is the faster side's storage).
        scale: magnitude the absolute error is proportional to (default 1).
    Returns:
        the fraction of the budget used by the worst element (0.07 = "7 % of
        tolerance"), for reports.
    Raises:
        AssertionError naming the count of bad elements, the worst index, both values
        and how far over the limit it is. NaN or inf in ``actual`` always fails.
    """
    tol = tolerance(kind, dtype)
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        raise AssertionError(f"shape {a.shape} != expected {e.shape}")
    if not np.all(np.isfinite(e)):
        raise AssertionError("expected (the reference) holds NaN or inf")
    if a.size == 0:
        return 0.0
    limit = tol.floor + tol.atol * scale + tol.rtol * np.abs(e)
    err = np.abs(a - e)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(limit > 0, err / limit, np.where(err == 0, 0.0, np.inf))
    ratio = np.where(np.isfinite(a), ratio, np.inf)  # NaN and inf count as bad
    bad = int(np.count_nonzero(ratio > 1))
    worst = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
    if bad:
        raise AssertionError(
            f"{bad}/{a.size} elements out of tolerance ({kind}, {tol.why}); "
            f"worst at {tuple(int(i) for i in worst)}: got {a[worst]!r}, "
            f"want {e[worst]!r}, |diff| {err[worst]:.3g} = {ratio[worst]:.3g}x limit"
        )
    return float(ratio[worst])


def describe(used: float) -> str:
    """'error = 7 % of tolerance' for a fraction returned by assert_close."""
    return f"error = {100 * used:.3g} % of tolerance"


def attention_scale(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> float:
    """The ``scale`` for decode-attention outputs, from the error analysis below.

    With s_j = q.k_j / sqrt(D), p = softmax(s), o = sum_j p_j v_j, float arithmetic
    with unit roundoff u and the probabilistic factor lam (see _sum_bound):
      * the sum over S keys errs by lam*sqrt(S)*u * sum_j p_j|v_j| <= ... * max|v|;
      * each score errs by |ds_j| <= lam*sqrt(D)*u * a_j, with
        a_j = sum_i |q_i k_ji| / sqrt(D);
        exp turns that into relative errors of p_j of at most 2*max|ds|, so o errs
        by 2*lam*sqrt(D)*u * max_j a_j * max|v|;
      * exp, the running max and the final division add a few u * max|v|.
    So |o_err| <= lam*u * max|v| * (sqrt(S) + 2*sqrt(D)*max_j a_j + 4), and this
    returns max|v| * (sqrt(S) + 2*sqrt(D)*max_j a_j + 4) for the "gpu" rows' atol.
    Shapes: q (B, H, D); k, v (B, G, S, D), H % G == 0.
    """
    q = np.asarray(q, np.float64)
    k = np.asarray(k, np.float64)
    v = np.asarray(v, np.float64)
    b, h, d = q.shape
    g, s = k.shape[1], k.shape[2]
    qg = np.abs(q).reshape(b, g, h // g, d)  # (B, G, H/G, D)
    a = np.einsum("bgrd,bgsd->bgrs", qg, np.abs(k)) / math.sqrt(d)  # (B, G, H/G, S)
    vmax = np.abs(v).max(initial=0.0)
    return float(vmax * (math.sqrt(s) + 2 * math.sqrt(d) * a.max(initial=0.0) + 4))
