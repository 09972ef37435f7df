"""The tolerance table and the one checker every test and chapter uses.

An element passes when  |actual - expected| <= floor + atol * scale + rtol * |expected|.
Each (kind, dtype) row below says where its numbers come from. ``scale`` is the
magnitude the absolute error is proportional to (for attention: max|V| times
(1 + max|score|), see ``attention_scale``); it is 1 unless the math says otherwise.

Kinds:
  exact    same operations in the same order and dtype: bitwise equality.
  rewrite  two algebraically equal computations, both in the given dtype.
  gpu      float32 arithmetic (a GPU kernel, or a reference run in float32; storage
           in the given dtype) against the float64 reference on the same inputs.
  (and the chapter-specific rows below: slim, dot, stag_step, stag_step_x16.)

Beside the worst-case rows, a statistical check (TypicalError, assert_typical, with
attention_typical and slim_typical): over many elements and draws the observed error
must sit within the typical error the probabilistic model derives, which catches
small systematic errors a worst-case bound accepts (see "The typical error" below).

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
N_REWRITE32 = 2**8  # the longest float32 sum of the ("rewrite", "float32") users
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
        # A chain in fp32, with the probabilistic sum bound per stage. float32
        # rewrites are compared on the tests' tiny models only: a decoder of L <= 2
        # layers is <= 20 stages deep (per layer norm, q|k|v, scores, softmax, p.v,
        # W_O, norm, two MLP products; then the final norm and the unembedding) and
        # no float32 sum there has more than n = 2^8 terms. 2 x 20 x 6 sqrt(2^8) u =
        # 2.3e-4 < u16: a float32 rewrite that passes could not have been computed
        # in fp16. (It was 2 x 10 x 6 sqrt(2^15) u = 1.3e-3, looser than fp16
        # rounding.) Larger float32 computations are compared with the "gpu" rows.
        rtol=2 * 20 * _sum_bound(_U32, N_REWRITE32),
        atol=2 * 20 * _sum_bound(_U32, N_REWRITE32),
        why="2 sides x 20 stages x 6*sqrt(n)*u, n <= 2^8, fp32",
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


# --- Slim attention (chapter 3): rewrites whose error grows with cond(W_K) ----------
#
# A float64 row for comparisons whose whole error the caller derives: pass the scale
# of the variant at hand, kv_fold_scale (a cache rebuilt through a solved matrix) or
# xcache_scale (absorbed weights), plus attention_scale for the attention both sides
# compute. atol is the probabilistic factor lam*u of _sum_bound; the relative part,
# as in the ("gpu", "float32") row, covers the last few roundings of a value (a
# division, an exp, the bias add): lam*u. (An earlier n*u relative part, n = 2^15,
# was said to keep the limit above what a float64 comparison resolves; it is not
# needed: |a - e| is computed exactly when a and e are within a factor 2 of each
# other (Sterbenz), so a limit of a few u*|e| is resolved. It accepted a systematic
# relative error of 3e-12.) The float32 twin is ("gpu", "float32"): float32
# arithmetic against the float64 truth, with the same scales.
TOLERANCES[("slim", "float64")] = Tolerance(
    rtol=LAM * _U64,
    atol=LAM * _U64,
    why="6*u64 x (kv_fold_scale or xcache_scale + attention_scale); 6*u64 relative",
)


def _col_norms(w: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.asarray(w, np.float64), axis=0)


def kv_fold_scale(x: np.ndarray, w_k: np.ndarray, w_kv: np.ndarray) -> float:
    """The ``scale`` for a value rebuilt from a cached key, v = (x W_K) W_KV.

    Forward error analysis (Higham, Accuracy and Stability of Numerical
    Algorithms, 2002, ch. 3 and 7-9), with lam*sqrt(n)*u per inner product of
    length n (see _sum_bound). Every error is a perturbation dK of the key row
    k_s = x_s W_K, which W_KV then multiplies, so |dv_sj| <= |dk_s| |W_KV[:, j]|:
      * k_s = x_s W_K rounded: |dk_sc| <= lam sqrt(C) u |x_s| |W_K[:, c]|, so
        |dk_s| <= lam sqrt(C) u |x_s| |W_K|_F (Cauchy-Schwarz);
      * W_KV from LU with partial pivoting is the exact solution for a perturbed
        W_K + dW_j, column by column, with |dW_j|_F <~ lam sqrt(3e) u |W_K|_F
        (gamma_3n, growth factor O(1), as LAPACK's GEPP gives in practice); the
        rebuilt v then errs by x_s dW_j W_KV[:, j];
      * k_s W_KV rounded: lam sqrt(e) u |k_s| |W_KV[:, j]|, and |k_s| <= |x_s||W_K|_F;
      * the accumulate-K order sums sum_s p_s k_s first: lam sqrt(S) u max|k_s|.
    So |dv| <= lam u (sqrt(C) + (1 + sqrt(3)) sqrt(e) + sqrt(S)) * M with
    M = max_s |x_s| |W_K|_F max_j |W_KV[:, j]|, and this returns that scale. Since
    |W_KV[:, j]| <= |W_K^-1|_2 |W_V[:, j]|, M <= cond(W_K) |W_K|_F/|W_K|_2 max|x_s|
    max_j |W_V[:, j]|: the tolerance grows linearly with cond(W_K), as the forward
    error of any linear solve does (Higham Thm 7.2). Rows: "slim".
    Shapes: x (..., S, C) the inputs whose keys are cached; w_k (C, e); w_kv (e, e).
    """
    x = np.asarray(x, np.float64)
    c, e = np.shape(w_k)
    s = x.shape[-2]
    xmax = np.linalg.norm(x, axis=-1).max(initial=0.0)
    m = xmax * np.linalg.norm(np.asarray(w_k, np.float64)) * _col_norms(w_kv).max()
    return float(m * (math.sqrt(c) + (1 + math.sqrt(3)) * math.sqrt(e) + math.sqrt(s)))


def xcache_scale(
    q: np.ndarray, x: np.ndarray, w_k: np.ndarray, w_v: np.ndarray
) -> float:
    """The ``scale`` for decode attention over an X cache with absorbed weights.

    score_h,s = (q_h W_K,h^T) . x_s / sqrt(D): two inner products, of lengths D and
    C, so |ds| <= lam u (sqrt(D) + sqrt(C)) A with A = max (|q_h| |W_K,h|^T) |x_s|
    / sqrt(D); exp turns it into relative errors of p of at most 2|ds|, so the
    output errs by 2|ds| max|v|, with |v_sj| <= V = max_s |x_s| max_j |W_V[:, j]|.
    out_h = (sum_s p_h,s x_s) W_V,h: lam u (sqrt(S) + sqrt(C)) V (Cauchy-Schwarz);
    exp, max and the division add a few u V. Returns
    V (sqrt(S) + sqrt(C) + 4 + 2 (sqrt(D) + sqrt(C)) A). No inverse: no cond(W_K).
    Shapes: q (B, H, D); x (B, S, C); w_k, w_v (C, G*D), H % G == 0. Rows: "slim".
    """
    q, x = np.asarray(q, np.float64), np.asarray(x, np.float64)
    b, h, d = q.shape
    c, g, s = x.shape[-1], np.shape(w_k)[1] // d, x.shape[-2]
    wk = np.abs(np.asarray(w_k, np.float64)).reshape(c, g, d)  # (C, G, D)
    wk = np.repeat(wk.transpose(1, 0, 2), h // g, axis=0)  # (H, C, D)
    qa = np.einsum("bhd,hcd->bhc", np.abs(q), wk)  # (B, H, C)
    a = np.einsum("bhc,bsc->bhs", qa, np.abs(x)).max(initial=0.0) / math.sqrt(d)
    v = np.linalg.norm(x, axis=-1).max(initial=0.0) * _col_norms(w_v).max()
    rc, rd = math.sqrt(c), math.sqrt(d)
    return float(v * (math.sqrt(s) + rc + 4 + 2 * (rd + rc) * a))


def slim_kernel_scale(
    q: np.ndarray,
    cache: np.ndarray,
    w: np.ndarray,
    w_k: np.ndarray | None = None,
    fp16_p: bool = False,
    fp16_qt: bool = False,
) -> float:
    """The ``scale`` (for the "gpu" rows) of a slim-attention decode kernel against
    the float64 truth on the same stored inputs (gpu/slim_attention.cu).

    The kernel forms u_h = sum_j p_hj c_j over the cache rows c_j (C,), then
    out_h = u_h W[:, h*D:(h+1)*D] (+ b). With the probabilistic factor lam*u32 of
    _sum_bound, and every error of p_hj written as a relative one, |dp| <= e p:
      * scores: the K-only s_hj = q_h . c_j[head h] / sqrt(D) errs by
        lam sqrt(D) u32 a_hj, a_hj = sum_i |q_hi c_ji| / sqrt(D). The X cache
        (w_k given) scores q~_h . c_j, q~_h = q_h W_K,h^T: the sum over C errs by
        lam sqrt(C) u32 a_hj with a_hj = sum_c |q~_hc c_jc| / sqrt(D), and q~'s own
        sums over D by lam sqrt(D) u32 a'_hj, a'_hj = (|q_h| |W_K,h|^T) . |c_j|
        / sqrt(D). If q~ is rounded to fp16 for the tensor cores (fp16_qt), its
        independent relative errors (<= u16 each) move the score by at most
        lam u16 b_hj, b_hj = |q~_h * c_j|_2 / sqrt(D) (Higham & Mary's model).
        exp and the normalisation turn |ds| into |dp_j| <= 2 max|ds| p_j;
      * P rounded to fp16 for the tensor cores (fp16_p): |dp_j| <= u16 p_j;
      * u_c = sum_j p_j c_jc errs by lam sqrt(S) u32 ubar_c plus
        sum_j |dp_j| |c_jc| <= e ubar_c, with ubar_c = sum_j p_j |c_jc|; the split
        combine adds a few u32 ubar_c;
      * out_d = sum_c u_c W_cd: sum_c |du_c| |W_cd| + lam sqrt(C) u32 sum |u_c W_cd|.
    So |d out| <= lam u32 A (sqrt(S) + sqrt(C) + 4 + 2 sqrt(Dk) a [+ 2 sqrt(D) a']
    [+ 2 (u16/u32) b] [+ u16 / (lam u32)]) with A = max_hd sum_c ubar_hc |W_cd|,
    Dk = D (K-only) or C (X cache), a, a', b the maxima over (h, j). Returns that
    scale. It is a worst case over signs: on random data the kernels use ~1 % of it.
    Shapes: q (B, H, D); cache (B, S, C) as attended; w (C, C); w_k (C, C) or None.
    """
    q = np.asarray(q, np.float64)
    x = np.asarray(cache, np.float64)
    b, h, d = q.shape
    s, c = x.shape[1], x.shape[2]
    rd = math.sqrt(d)
    if w_k is None:
        qt = np.zeros((b, h, c))
        for i in range(h):  # q_h in head h's columns: the K-only score
            qt[:, i, i * d : (i + 1) * d] = q[:, i]
    else:
        wk = np.asarray(w_k, np.float64).reshape(c, h, d)
        qt = np.einsum("bhd,chd->bhc", q, wk)  # q~ (B, H, C)
    xt, ax = x.transpose(0, 2, 1), np.abs(x)  # matmul, not einsum: S*C can be 2^28
    scores = qt @ xt / rd
    p = np.exp(scores - scores.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    ubar = p @ ax  # (B, H, C)
    wa = np.abs(np.asarray(w, np.float64)).reshape(c, h, d)
    big_a = float(np.einsum("bhc,chd->bhd", ubar, wa).max(initial=0.0))
    a = float((np.abs(qt) @ ax.transpose(0, 2, 1)).max(initial=0.0)) / rd
    terms = math.sqrt(s) + math.sqrt(c) + 4
    k16 = _U16 / (LAM * _U32)  # an fp16 rounding in units of the row's lam*u32
    if w_k is None:
        terms += 2 * rd * a
    else:
        qa = np.einsum("bhd,chd->bhc", np.abs(q), np.abs(wk))
        a1 = float((qa @ ax.transpose(0, 2, 1)).max(initial=0.0)) / rd
        terms += 2 * math.sqrt(c) * a + 2 * rd * a1
        if fp16_qt:
            b2 = np.sqrt((qt**2) @ (x**2).transpose(0, 2, 1)).max(initial=0.0)
            terms += 2 * (_U16 / _U32) * float(b2) / rd
    if fp16_p:
        terms += k16
    return big_a * terms


# --- Deja Vu (chapter 4): sparse MLP, dense vs gathered, and its kernels ------------
#
# Worst-case dot-product bound (Higham 2002, eq. 3.5): a sum of n terms computed in
# any order errs by at most gamma_n * sum |terms|, gamma_n = n u / (1 - n u) <= 1.01
# n u while n u <= 0.01 (n <= 2^15 in float32). Two BLAS computations of the same
# MLP (dense, and gathered over T >= S(x)) each err by at most that from the exact
# value, so they differ by at most twice it: atol = 2 * 1.01 * u times the scale of
# sparse_mlp_scale(worst_case=True), which carries the n's; rtol covers the final
# rounding of each side (2u), in float64 as in float32. (The float64 row once had a
# relative part of 2 * 1.01 * 2^15 u, "because a limit of 2u is below what the
# float64 comparison resolves": it is not, |a - e| is exact when a and e are within
# a factor 2 (Sterbenz), and the padding accepted a systematic relative error of
# 7e-12.) Deterministic: never flaky.
TOLERANCES[("dot", "float64")] = Tolerance(
    rtol=2 * _U64,
    atol=2 * 1.01 * _U64,
    why="2 sides x worst-case gamma_n dot-product bound (sparse_mlp_scale)",
)
TOLERANCES[("dot", "float32")] = Tolerance(
    rtol=2 * _U32,
    atol=2 * 1.01 * _U32,
    why="2 sides x worst-case gamma_n dot-product bound (sparse_mlp_scale)",
)


def sparse_mlp_scale(
    x: np.ndarray,
    w1: np.ndarray,
    b1: np.ndarray,
    w2: np.ndarray,
    b2: np.ndarray,
    idx: np.ndarray | None = None,
    worst_case: bool = False,
    a_split: bool = False,
) -> float:
    """The ``scale`` of a (sparse) ReLU MLP y = relu(x w1[T]^T + b1[T]) w2[T] + b2.

    Error analysis, with g(n) = n (worst case, rows "dot") or sqrt(n) (the
    probabilistic lam*sqrt(n)*u of _sum_bound, rows "gpu"), per row b and column j:
      * z_i = sum_c x_c w1_ic + b1_i, C + 1 terms: |dz_i| <= g(C+1) u m_i with
        m_i = sum_c |x_c w1_ic| + |b1_i|; ReLU is 1-Lipschitz, so |da_i| <= |dz_i|;
      * y_j = sum_{i in T} a_i w2_ij + b2_j, |T| + 1 terms: its own rounding
        g(|T|+1) u (sum_i |a_i w2_ij| + |b2_j|), plus the propagated
        sum_i |da_i| |w2_ij| <= g(C+1) u sum_i m_i |w2_ij|.
    Returns max_bj [g(|T|+1) (sum_i a_i |w2_ij| + |b2_j|) + g(C+1) sum_i m_i |w2_ij|]
    (a_i exact, from float64). idx=None means all F neurons (the dense side, which
    bounds any T). Shapes: x (B, C); w1, w2 (F, C); b1 (F,); b2 (C,); idx (K,).

    a_split: the kernel hands a_i to fp16 tensor cores as two halves, hi = fp16(a_i)
    and lo = fp16(a_i - hi) (gpu/deja_vu.cu v8). a_i - hi is exact in float32
    (Sterbenz), so |a_i - hi - lo| <= u16 |a_i - hi| <= u16^2 |a_i| while lo is a
    normal fp16, and <= 2^-25 (half the subnormal spacing) below: y_j moves by at
    most sum_i (u16^2 a_i + 2^-25) |w2_ij|, added here in units of lam*u32 (the
    "gpu" rows' atol) to the probabilistic part. Needs |a_i| < 65504 (fp16's range).
    """
    g = (lambda n: float(n)) if worst_case else math.sqrt
    x = np.asarray(x, np.float64)
    sel = slice(None) if idx is None else np.asarray(idx, np.int64)
    w1s = np.asarray(w1, np.float64)[sel]  # (K, C)
    b1s = np.asarray(b1, np.float64)[sel]  # (K,)
    w2a = np.abs(np.asarray(w2, np.float64)[sel])  # (K, C)
    k, c = w1s.shape
    a = np.maximum(x @ w1s.T + b1s, 0.0)  # (B, K)
    m = np.abs(x) @ np.abs(w1s).T + np.abs(b1s)  # (B, K)
    b2a = np.abs(np.asarray(b2, np.float64))
    own = a @ w2a + b2a  # (B, C)
    prop = m @ w2a  # (B, C)
    total = g(k + 1) * own + g(c + 1) * prop
    if a_split:  # the (hi, lo) fp16 pair's representation error, in lam*u32 units
        total = total + (_U16**2 * (a @ w2a) + 2.0**-25 * w2a.sum(axis=0)) / (
            LAM * _U32
        )
    return float(total.max(initial=0.0))


def lowrank_scale(x, mean, a, b, bias) -> float:
    """The ``scale`` (rows "gpu") of Deja Vu's predictor scores s = (x - mean) a b +
    bias computed in float32 (gpu/deja_vu_predict.cu), against the float64 truth on
    the same stored values.

    Error analysis, with g(n) = sqrt(n) (the probabilistic lam*sqrt(n)*u of
    _sum_bound; any summation order), per row and column j:
      * d_c = x_c - mean_c rounds once: |dd_c| <= u |d_c|;
      * h_k = sum_c d_c a_ck, C terms: its own rounding g(C) u m_k plus the
        propagated sum_c |dd_c| |a_ck| <= u m_k, with m_k = sum_c |d_c a_ck|;
      * s_j = sum_k h_k b_kj + bias_j, r + 1 terms: its own rounding g(r+1) u
        (sum_k |h_k b_kj| + |bias_j|), plus the propagated sum_k |dh_k| |b_kj|
        <= (g(C) + 1) u sum_k m_k |b_kj|.
    Returns max_j [g(r+1) (sum_k |h_k b_kj| + |bias_j|) + (g(C) + 1) sum_k m_k
    |b_kj|] (h exact, from float64). The scores are float32 for either storage
    dtype: compare them with the ("gpu", "float32") row. Shapes: x (B, C); mean
    (C,); a (C, r); b (r, F); bias (F,).
    """
    x, mean = np.asarray(x, np.float64), np.asarray(mean, np.float64)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    c, r = a.shape
    d = x - mean  # (B, C)
    h = d @ a  # (B, r)
    m = np.abs(d) @ np.abs(a)  # (B, r)
    ba = np.abs(b)
    own = np.abs(h) @ ba + np.abs(np.asarray(bias, np.float64))  # (B, F)
    prop = m @ ba  # (B, F)
    return float((math.sqrt(r + 1) * own + (math.sqrt(c) + 1) * prop).max(initial=0))


def assert_top_k(ids, truth, k: int, kind: str, dtype, scale: float = 1.0) -> float:
    """Check that ``ids`` (N, k) is a top-k set of each row of the float64 scores
    ``truth`` (N, F) up to the tolerance of (kind, dtype) with ``scale``.

    A kernel ranks its own rounded scores, each within limit_i = floor + atol *
    scale + rtol |truth_i| of the truth (assert_close's limit), so it may swap ids
    whose true scores lie within two limits of each other, and nothing else. The
    set passes when some scores within those limits rank it first:
    min over chosen (truth + limit) >= max over the rest (truth - limit). Each row
    must also be ascending, distinct and in [0, F) (a sparse MLP's index set).
    Returns the fraction of the limits used (the least alpha for which alpha *
    limit still passes; 0 when no unchosen score exceeds a chosen one). Raises
    AssertionError naming the row and the two ids that break it.
    """
    tol = tolerance(kind, dtype)
    s = np.asarray(truth, np.float64)
    got = np.asarray(ids)
    n, f = s.shape
    if got.shape != (n, k):
        raise AssertionError(f"ids shape {got.shape} != (N, k) = {(n, k)}")
    if not np.all(np.isfinite(s)):
        raise AssertionError("truth (the reference) holds NaN or inf")
    if k == 0:
        return 0.0
    if got.min() < 0 or got.max() >= f:
        raise AssertionError(f"ids outside [0, F={f}): {got.min()}..{got.max()}")
    if k > 1 and not np.all(np.diff(got, axis=1) > 0):
        row = int(np.flatnonzero((np.diff(got, axis=1) <= 0).any(axis=1))[0])
        raise AssertionError(f"row {row}: ids not ascending and distinct: {got[row]}")
    if k == f:
        return 0.0
    lim = tol.floor + tol.atol * scale + tol.rtol * np.abs(s)
    chosen = np.zeros((n, f), bool)
    np.put_along_axis(chosen, got.astype(np.int64), True, axis=1)

    def gap(alpha: float) -> np.ndarray:  # (N,): >= 0 where the row passes
        top = np.where(chosen, s + alpha * lim, np.inf)
        rest = np.where(chosen, -np.inf, s - alpha * lim)
        return top.min(axis=1) - rest.max(axis=1)

    bad = np.flatnonzero(gap(1.0) < 0)
    if bad.size:
        row = int(bad[0])
        i = int(np.argmin(np.where(chosen[row], s[row] + lim[row], np.inf)))
        j = int(np.argmax(np.where(chosen[row], -np.inf, s[row] - lim[row])))
        raise AssertionError(
            f"{bad.size}/{n} rows are no top-{k} set within tolerance ({kind}, "
            f"{tol.why}); row {row}: chose id {i} (truth {s[row, i]!r}) over id {j} "
            f"(truth {s[row, j]!r}), |diff| {s[row, j] - s[row, i]:.3g} > limits "
            f"{lim[row, i] + lim[row, j]:.3g}"
        )
    if np.all(gap(0.0) >= 0):
        return 0.0
    lo, hi = 0.0, 1.0
    for _ in range(40):  # gap grows with alpha: bisect for the least passing one
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if np.all(gap(mid) >= 0) else (mid, hi)
    return hi


# --- Approximating two-layer FFNs (chapter 6): sigma-MoE, CVMM and its kernels -------
#
# The "dot" rows above (worst case, two float64 computations) and the "gpu" rows
# (a float32 kernel against the float64 truth) with the scale of moe_scale.


def moe_scale(
    x: np.ndarray,
    w1: np.ndarray,
    w2: np.ndarray,
    idx: np.ndarray,
    gate: np.ndarray,
    w3: np.ndarray | None = None,
    worst_case: bool = False,
    h16: bool = False,
    z16: bool = False,
) -> float:
    """The ``scale`` of a mixture of ReLU experts y_t = sum_j s_tj relu(x_t w1[e])
    w2[e], e = idx[t, j] (-1: an empty slot), as moe_cvmm and gpu/ffn_approx.cu
    compute it.

    Error analysis, with g(n) = n (worst case, rows "dot") or sqrt(n) (the
    probabilistic lam*sqrt(n)*u of _sum_bound, rows "gpu"), per token t, column c,
    and per slot with m_i = sum_c |x_c w1[e]_ci| and a_i = relu(x w1[e])_i:
      * z_i = x . w1[e][:, i], C terms: |dz_i| <= g(C) u m_i; ReLU is 1-Lipschitz
        and the gate multiplies: h_i = s a_i errs by |s| (g(C) + 1) u m_i;
      * Z_c = sum_i h_i w2[e]_ic, G terms: g(G) u sum_i |h_i w2_ic| plus the
        propagated sum_i |dh_i| |w2_ic|;
      * y_c = sum over the K slots: g(K) u sum_slots |Z_c| <= g(K) u sum |h_i w2_ic|;
      * h or Z stored in fp16 (h16, z16): u16 sum_i |h_i w2_ic| each, written in
        units of the row's lam*u32 (the "gpu" rows);
      * the router (w3 given: the kernel's float32 gate against the float64 gate of
        the same expert): the logit x . w3[:, e] errs by g(C) u r, r = sum_c
        |x_c w3_ce|, sigmoid' <= 1/4, and exp and the division add ~2 u: |ds| <=
        (g(C) r / 4 + 2) u, times sum_i a_i |w2_ic|.
    Returns the max over (t, c) of the sum over slots. Shapes: x (T, C); w1
    (E, C, G); w2 (E, G, C); idx, gate (T, K); w3 (C, E) or None.
    """
    g = (lambda n: float(n)) if worst_case else math.sqrt
    k16 = _U16 / (LAM * _U32)
    x = np.asarray(x, np.float64)
    w1, w2 = np.asarray(w1, np.float64), np.asarray(w2, np.float64)
    t, k = np.shape(idx)
    n_c, n_g = w1.shape[1], w1.shape[2]
    tok = np.repeat(np.arange(t), k)  # (P,)
    e_of = np.asarray(idx).ravel()  # (P,)
    s_abs = np.abs(np.asarray(gate, np.float64)).ravel()  # (P,)
    per = np.zeros((t * k, w2.shape[2]))  # (P, C)
    for e in np.unique(e_of[e_of >= 0]):
        p = np.flatnonzero(e_of == e)
        xa = x[tok[p]]  # (n_e, C)
        m = np.abs(xa) @ np.abs(w1[e])  # (n_e, G)
        a = np.maximum(xa @ w1[e], 0.0)  # (n_e, G)
        wa = np.abs(w2[e])  # (G, C)
        own = (s_abs[p, None] * a) @ wa  # sum_i |h_i w2_ic|
        c = (g(n_g) + g(k)) * own + (g(n_c) + 1) * (s_abs[p, None] * m) @ wa
        if h16:
            c += k16 * own
        if z16:
            c += k16 * own
        if w3 is not None:
            r = np.abs(xa) @ np.abs(np.asarray(w3, np.float64)[:, e])  # (n_e,)
            c += (g(n_c) * r / 4 + 2)[:, None] * (a @ wa)
        per[p] = c
    return float(per.reshape(t, k, -1).sum(axis=1).max(initial=0.0))


# --- StagFormer (chapter 5): GEMVs and a whole decode step --------------------------


def linear_scale(x: np.ndarray, w: np.ndarray, r: np.ndarray | None = None) -> float:
    """The ``scale`` (rows "gpu") of y = act(x @ w) (+ r), act 1-Lipschitz (ReLU).

    Each y_nm is a sum of K products: it errs by lam sqrt(K) u sum_k |x_nk w_km|
    (_sum_bound's probabilistic model); the residual add rounds once more, u |y|,
    inside the rows' relative part. Returns sqrt(K) max_nm sum_k |x_nk w_km|.
    Shapes: x (N, K); w (K, M); r (N, M) or None (it adds nothing to the scale).
    """
    x, w = np.abs(np.asarray(x, np.float64)), np.abs(np.asarray(w, np.float64))
    return float(math.sqrt(x.shape[-1]) * (x @ w).max(initial=0.0))


# A whole StagFormer decode step of L <= 2 layers a stack (the GPU tests' models)
# against the float64 reference on the same stored weights and caches. The longest
# chain is stack 2's: per layer 11 stages (norm, q|k|v GEMV, attention, o GEMV, norm,
# cross q GEMV, cross attention, cross o GEMV, norm, up GEMV, down GEMV), then the
# final norm and the memory projection: n_s = 11 L + 2 = 24 stages, each a float32
# sum of <= 2^15 terms (lam sqrt(n) u32 relative to its operands, _sum_bound). With
# float16 storage each layer also rounds q, k, v, the cross q and the cross k, v to
# fp16: 6 L = 12 roundings of u16. The scale passed is max|out| of the normed outputs
# (RMSNorm brings every stage's operands to that order: the bound assumes, as the
# "rewrite" rows do, that no stage amplifies its input error by more than O(1)).
_STAG_STAGES, _STAG_ROUNDINGS = 24, 12
TOLERANCES[("stag_step", "float32")] = Tolerance(
    rtol=_STAG_STAGES * _sum_bound(_U32),
    atol=_STAG_STAGES * _sum_bound(_U32),
    why="24 stages x 6*sqrt(n)*u32, n <= 2^15 (L <= 2 layers a stack)",
)
TOLERANCES[("stag_step", "float16")] = Tolerance(
    rtol=_STAG_STAGES * _sum_bound(_U32) + _STAG_ROUNDINGS * _U16,
    atol=_STAG_STAGES * _sum_bound(_U32) + _STAG_ROUNDINGS * _U16,
    why="the float32 row + 12 fp16 roundings of stored q, k, v (L <= 2)",
)
# gemv v7-v9 round each GEMV's float32 input to fp16 before its products, as a model
# in fp16 does. Along stack 2's chain that is at most 6 inputs a layer (q|k|v, o,
# cross q, cross o, up, down) and the memory projection's: 6 L + 1 = 13 more
# roundings of u16 (L <= 2), on top of the float16 row.
_STAG_X16 = 6 * 2 + 1
TOLERANCES[("stag_step_x16", "float16")] = Tolerance(
    rtol=_STAG_STAGES * _sum_bound(_U32) + (_STAG_ROUNDINGS + _STAG_X16) * _U16,
    atol=_STAG_STAGES * _sum_bound(_U32) + (_STAG_ROUNDINGS + _STAG_X16) * _U16,
    why="the float16 row + 13 fp16 roundings of the GEMVs' inputs (gemv v7-v9, L <= 2)",
)


# The capstone's GPU decoder (gpu/decoder.py) in float32 against the float64
# reference decoder (reference/decoder.py) on the same weights, logits of one step.
# Its longest chain is tests/test_decoder.py's count, 11 L + 2 stages (per layer:
# norm, q|k|v, the scores, softmax, the sum over S, W_KV or the X cache's rebuild,
# W_O, norm, W_in, W_out; then norm_f and the unembedding), each a float32 sum of at
# most N_DEC terms (6 sqrt(n) u32 relative to its operands, _sum_bound), for L <= 4
# layers: 46 stages. The derived arrays (the table, W_KV) are rounded to float32
# once, one more u32 inside a stage's budget. The scale the tests pass is max|logit|
# (RMSNorm brings every stage's operands to that order: no stage amplifies an error
# by more than O(1), the "rewrite" rows' premise), plus, for the K-only and X caches,
# the "slim" budget of their rebuilt attention carried through W_O, in units of u32
# (tests/test_decoder.py: logit_scale, which grows with cond(W_K)).
N_DEC, _DEC_STAGES = 2**12, 11 * 4 + 2
TOLERANCES[("decoder", "float32")] = Tolerance(
    rtol=_DEC_STAGES * _sum_bound(_U32, N_DEC),
    atol=_DEC_STAGES * _sum_bound(_U32, N_DEC),
    why="46 stages x 6*sqrt(n)*u32, n <= 2^12 (L <= 4 layers)",
)


# --- The typical error: a statistical check beside the worst-case rows ---------------
#
# Every row above is a worst case: lam = 6 per sum, |x| bounded by its maximum, sums
# of |terms| by Cauchy-Schwarz. On random data the observed error sits 100-1000x
# below it, so a systematic error of that size (a dropped key, an fp16 intermediate,
# a 1e-3 relative slip) passes in a good share of draws. The typical bound is the
# same probabilistic model (Higham & Mary 2019), evaluated on the actual magnitudes:
#
#   * every rounding r (a product, a partial sum, an exp, a stored input) perturbs
#     the value it rounds by v_r delta_r, |delta_r| <= u, the delta_r independent
#     with mean zero; to first order the output errs by sum_r c_r delta_r, c_r = v_r
#     times the output's sensitivity to v_r. So E[err] = 0, Var[err] <= u^2 sum_r
#     c_r^2 =: sigma^2, and err / sigma is sub-Gaussian (Hoeffding);
#   * a sum y = sum_k t_k of n terms, in ANY order (recursive, pairwise, split into
#     blocks and combined) rounds n - 1 partial sums s, each a sum over a subset of
#     the terms. For exchangeable data (the tests draw i.i.d. rows) a subset of m
#     terms has E[s^2] <= m/n |t|_2^2 + (m/n)^2 y^2 <= |t|_2^2 + y^2, so
#     sum_s s^2 <= n (|t|_2^2 + y^2) (typical_sum). The worst case n (sum_k |t_k|)^2
#     is what the rows above use: |t|_1 ~ sqrt(n) |t|_2 is the factor they lose;
#   * a kernel whose running sums are also rescaled (an online softmax) rounds each
#     partial sum at most twice per step: 2n.
#
# For many elements and draws, the root mean square of z = |actual - expected| /
# sigma is then <= 1 (E[z^2] <= 1 for each element; Var[delta] is u^2/3 for uniform
# rounding errors, so about 0.6 is expected). TypicalError accumulates z^2 over draws
# and fails when the RMS exceeds LAM_TYPICAL = 2: the model would have to be off by
# more than 2x on average, over many independent draws, which sub-Gaussian tails
# make negligible (P(mean z^2 > 4) < 1e-6 for 30 draws, each a mean of sub-
# exponential terms). It is a statistical statement, so it needs many elements or
# draws, random data, and inputs independent of the rounding (the tests' v is drawn
# independently of q and k). It does not replace the worst-case rows: a single bad
# element still fails those; this one catches small systematic errors they accept.
LAM_TYPICAL = 2.0


def typical_sum(t: np.ndarray, axis: int = -1) -> np.ndarray:
    """sqrt(n (|t|_2^2 + y^2)), y = sum(t): the typical error of a float sum of the n
    terms t along ``axis``, in units of u, in any summation order (see above).
    Shapes: t (..., n, ...) -> (...) without ``axis``."""
    t = np.asarray(t, np.float64)
    n = t.shape[axis]
    return np.sqrt(n * ((t * t).sum(axis=axis) + t.sum(axis=axis) ** 2))


def _softmax64(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = scores.max(axis=-1, keepdims=True)
    e = np.exp(scores - m)
    return e / e.sum(axis=-1, keepdims=True), m


def _attention_sigma2(s, m, p, tt, w, o, d: int, steps: int) -> np.ndarray:
    """The softmax part of attention's variance proxy (units u^2), per output.

    s, m, p (B, H, S): scores, their max, softmax; tt (B, H, S) = sum_i (q_i k_i)^2
    / D, the squared terms of each score; w (B, H, S, D) = p_s (v_s - o), the
    sensitivity of the output to score s (d o / d s_s); o (B, H, D) before bias.
      * score s = q . k / sqrt(D): D products and D - 1 partial sums, typical_sum's
        (D + 1) tt + D s^2; the scalings (1/sqrt(D) by rsqrtf, <= 2 ulp = 4u, a
        log2(e) for exp2, the shift by the max) err by <= 5u (|s| + |m|): 30 (|s|
        + |m|)^2 with some room. The output moves by sum_s w_s ds_s;
      * exp (expf, exp2f: <= 2 ulp = 4u) and the division by l: 17 sum_s w_s^2;
      * l = sum_s e_s, ``steps`` roundings per term (2: a running sum rescaled),
        relative to l: typical_sum of p with n = steps * S; o moves by -o dl/l.
    """
    s_var = (d + 1) * tt + d * s**2 + 30 * (np.abs(s) + np.abs(m)) ** 2  # (B, H, S)
    w2 = w * w  # (B, H, S, D)
    n = steps * p.shape[-1]
    den = n * ((p * p).sum(-1) + 1.0)  # (B, H): (dl / l)^2, l's terms are p l
    return _bsd(s_var, w2) + 17 * w2.sum(axis=2) + o * o * den[..., None]


def _bsd(a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """sum_s a[b, h, s] x[b, h, s, d] -> (B, H, D), through matmul (BLAS)."""
    return (a[..., None, :] @ x)[..., 0, :]


def attention_typical(q, k, v, out_dtype=np.float32) -> np.ndarray:
    """The typical error sigma (absolute, per output element) of decode attention in
    float32 arithmetic on the same stored q, k, v (gpu/attention.cu, any version):
    the softmax part (_attention_sigma2) plus the S-term weighted sum of v, rounded
    twice per key (an online softmax rescales it: steps = 2), and the final
    division; a float16 output adds its rounding, u16 |o| (in quadrature: a
    different rounding). See the block comment above for the model.
    Shapes: q (B, H, D); k, v (B, G, S, D), H % G == 0. Returns (B, H, D).
    """
    q = np.asarray(q, np.float64)
    b, h, d = q.shape
    g = np.shape(k)[1]
    var = np.empty((b, h, d))
    for i in range(h):  # one head at a time: (B, S, D) temporaries, no repeat
        kk = np.asarray(k[:, i // (h // g)], np.float64)[:, None]  # (B, 1, S, D)
        vv = np.asarray(v[:, i // (h // g)], np.float64)[:, None]  # (B, 1, S, D)
        qi = q[:, i : i + 1]  # (B, 1, D)
        s = (kk @ qi[..., None])[..., 0] / math.sqrt(d)  # (B, 1, S)
        p, m = _softmax64(s)
        o = _bsd(p, vv)  # (B, 1, D)
        tt = ((kk * kk) @ (qi * qi)[..., None])[..., 0] / d  # (B, 1, S)
        w = p[..., None] * (vv - o[:, :, None])  # (B, 1, S, D)
        pv = p[..., None] * vv  # (B, 1, S, D): the terms of o
        n = 2 * pv.shape[2]
        vi = _attention_sigma2(s, m, p, tt, w, o, d, steps=2)
        vi += n * ((pv * pv).sum(axis=2) + o * o) + o * o  # the sum, the division
        vi *= UNIT_ROUNDOFF["float32"] ** 2
        if np.dtype(out_dtype) == np.float16:
            vi += (UNIT_ROUNDOFF["float16"] * o) ** 2
        var[:, i : i + 1] = vi
    return np.sqrt(var)


def slim_typical(
    q: np.ndarray,
    k_cache: np.ndarray,
    w_kv: np.ndarray,
    b_v: np.ndarray | None = None,
    order: str = "accumulate_k",
    dtype=np.float32,
) -> np.ndarray:
    """The typical error sigma (absolute) of reference.slim_attention.slim_decode run
    in ``dtype`` on inputs rounded to ``dtype`` (q, the raw-key cache K, W_KV, b_V),
    against the float64 truth on the unrounded inputs.

    Per head h and output column d, with p the softmax over s, V = K W_KV,h,
    o = p.V (before b_V) and w_s = p_s (V_s - o) (see the block comment above;
    the sensitivities are d o / d(.) of o = p(K_h q / sqrt(D)) . (K W_KV,h)):
      * the softmax: _attention_sigma2, one rounding per step (NumPy: no rescale);
      * "accumulate_k": u_c = sum_s p_s K_sc, typical_sum over S, carried by
        W_KV[c, d]; then o = sum_c u_c W_KV[c, d], typical_sum over C;
        "rebuild_v": V_sd = sum_c K_sc W_KV[c, d], typical_sum over C, carried by
        p_s; then o = sum_s p_s V_sd, typical_sum over S; the bias add |o + b|;
      * stored inputs, one rounding each: W_KV[c, d] moves o by u_c W_KV[c, d]; K_sc
        by p_s K_sc W_KV[c, d] (through V) and, in head h's columns, by w_s q_i K_si
        / sqrt(D) (through the score: the same rounding, so these two add, not in
        quadrature); q_i by q_i sum_s w_s K_si / sqrt(D); b_V by |b_d|.
    Independent roundings add in quadrature. Shapes: q (B, H, D); k_cache (B, S, C),
    C = H D; w_kv (C, C); b_v (C,) or None. Returns (B, H, D).
    """
    q = np.asarray(q, np.float64)
    kc = np.asarray(k_cache, np.float64)
    b, h, d = q.shape
    c = kc.shape[-1]
    kh = kc.reshape(b, -1, h, d).transpose(0, 2, 1, 3)  # (B, H, S, D): head columns
    wh = np.asarray(w_kv, np.float64).reshape(c, h, d).transpose(1, 0, 2)  # (H, C, D)
    rd = math.sqrt(d)
    s = np.einsum("bhd,bhsd->bhs", q, kh) / rd  # (B, H, S)
    p, m = _softmax64(s)
    v = np.einsum("bsc,hcd->bhsd", kc, wh)  # (B, H, S, D)
    o = np.einsum("bhs,bhsd->bhd", p, v)  # (B, H, D)
    u = np.einsum("bhs,bsc->bhc", p, kc)  # (B, H, C)
    w = p[..., None] * (v - o[:, :, None])  # (B, H, S, D)
    tt = np.einsum("bhd,bhsd->bhs", q * q, kh * kh) / d  # (B, H, S)
    n_s = kc.shape[1]
    var = _attention_sigma2(s, m, p, tt, w, o, d, steps=1)
    p2, wh2 = p * p, wh * wh
    if order == "accumulate_k":
        pk2 = np.einsum("bhs,bsc->bhc", p2, kc * kc)  # sum_s (p_s K_sc)^2
        var_u = n_s * (pk2 + u * u)  # (B, H, C): typical_sum over S, squared
        var += np.einsum("bhc,hcd->bhd", var_u, wh2)
        uw2 = np.einsum("bhc,hcd->bhd", u * u, wh2)  # sum_c (u_c W_cd)^2
        var += c * (uw2 + o * o)
    elif order == "rebuild_v":
        kw2 = np.einsum("bsc,hcd->bhsd", kc * kc, wh2)  # sum_c (K_sc W_cd)^2
        var += np.einsum("bhs,bhsd->bhd", p2, c * (kw2 + v * v))
        pv = p[..., None] * v
        var += n_s * ((pv * pv).sum(axis=2) + o * o)
    else:
        raise ValueError(f"order must be accumulate_k or rebuild_v; got {order!r}")
    bias = 0.0 if b_v is None else np.asarray(b_v, np.float64).reshape(h, d)
    var += (o + bias) ** 2  # the bias add (or, without a bias, the last rounding)
    # stored inputs
    var += np.einsum("bhc,hcd->bhd", u * u, wh2)  # W_KV
    via_v = np.einsum("bhs,bsc,hcd->bhd", p2, kc * kc, wh2)  # K, through V
    via_s = np.einsum("bhsd,bhs->bhd", w * w, tt)  # K, through the score
    var += (np.sqrt(via_v) + np.sqrt(via_s)) ** 2
    a = np.einsum("bhsd,bhsi->bhid", w, kh) / rd  # (B, H, D_i, D): d o_d / d q_i / q_i
    var += np.einsum("bhi,bhid->bhd", q * q, a * a)  # q
    var += np.broadcast_to(bias, o.shape) ** 2  # b_V
    return UNIT_ROUNDOFF[np.dtype(dtype).name] * np.sqrt(var)


@dataclass
class TypicalError:
    """Accumulates z = |actual - expected| / sigma over draws (see LAM_TYPICAL).

    add() one draw (sigma from attention_typical, slim_typical, ...); check() at the
    end raises AssertionError when the RMS of z over everything added exceeds
    ``lam``, naming the worst draw. ``rms`` and ``n`` are there for reports.
    """

    what: str
    lam: float = LAM_TYPICAL
    sum_z2: float = 0.0
    n: int = 0
    draws: int = 0
    worst: float = 0.0

    def add(self, actual, expected, sigma) -> float:
        """Add one draw; returns its own RMS z. NaN or inf count as infinite z."""
        a = np.asarray(actual, np.float64)
        e = np.asarray(expected, np.float64)
        sg = np.broadcast_to(np.asarray(sigma, np.float64), e.shape)
        if a.shape != e.shape:
            raise AssertionError(f"shape {a.shape} != expected {e.shape}")
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(sg > 0, np.abs(a - e) / sg, np.where(a == e, 0.0, np.inf))
        z = np.where(np.isfinite(a), z, np.inf)
        rms = float(np.sqrt(np.mean(z * z))) if z.size else 0.0
        self.sum_z2 += float(np.sum(z * z))
        self.n += z.size
        self.draws += 1
        self.worst = max(self.worst, rms)
        return rms

    @property
    def rms(self) -> float:
        return math.sqrt(self.sum_z2 / self.n) if self.n else 0.0

    def check(self) -> float:
        """Raise unless RMS(z) <= lam over all draws; returns the RMS."""
        if not self.n:
            raise AssertionError(f"{self.what}: no draws added")
        if not self.rms <= self.lam:
            raise AssertionError(
                f"{self.what}: typical error {self.rms:.3g} sigma (RMS over "
                f"{self.n} elements, {self.draws} draws) > {self.lam} sigma; the "
                f"worst draw {self.worst:.3g} sigma: a systematic error"
            )
        return self.rms


def assert_typical(actual, expected, sigma, what: str = "result") -> float:
    """One draw with many elements through TypicalError: RMS(z) <= LAM_TYPICAL."""
    t = TypicalError(what)
    t.add(actual, expected, sigma)
    return t.check()
