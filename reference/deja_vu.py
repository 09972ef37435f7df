"""Deja Vu (Liu et al. 2023, arXiv 2310.17157): contextual sparsity at decode time.

For one input most MLP neurons are inactive (ReLU output 0) and many attention heads
contribute little. Small predictors, run one layer ahead, pick the neurons and heads
that matter, and the sparse layer skips the rest. Baseline and trick side by side
(STYLE R2):

  dense_mlp, sparse_mlp            the ReLU MLP and the MLP over an index set T
  dense_mlp_fixed, sparse_mlp_fixed  the same with a fixed-order sum (bitwise)
  active_set, union_indices        the oracle set S(x) = {i : z_i > tau}, batch union
  dropped_error_bound, recall      what a predicted set T costs
  union_growth                     |union of B active sets| / F, against B
  head_outputs, head_sparse_attention  MHA as a sum over heads, and over a subset
  HeadSparseCache, head_sparse_decode  decode with K/V catch-up for skipped heads
  LowRankPredictor, fit_predictor, predict, top_k_mask, top_k_ids  the predictor

Layout: neuron i owns ROW i of both matrices, so a gather reads contiguous rows. In
our row convention (y = x @ W) the MLP is relu(x @ W_in + b_in) @ W_out + b_out with
W_in (C, F), W_out (F, C): we store w1 = W_in^T (F, C) and w2 = W_out (F, C). (In the
paper's column convention W_2 is (C, F), and it is W_2 that is stored transposed.)
Functions keep the dtype they are given; pass float64 for the truth.
Shapes: B batch, C width, F FFN width, K = |T| selected neurons, H heads, D head dim.
Imports: NumPy, the standard library and reference.common.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from reference.common import AttnWeights, gelu, softmax

Array = np.ndarray
ACTS = ("relu", "gelu")


@dataclass(frozen=True)
class SparseMLPWeights:
    """A two-layer MLP, neuron-major: row i of w1 and of w2 belong to neuron i."""

    w1: Array  # (F, C) = W_in^T: neuron i's input weights
    b1: Array  # (F,)
    w2: Array  # (F, C) = W_out: neuron i's output weights
    b2: Array  # (C,)


def neuron_major(w_in: Array, b_in: Array, w_out: Array, b_out: Array):
    """SparseMLPWeights from row-convention W_in (C, F), W_out (F, C) (one copy)."""
    return SparseMLPWeights(np.ascontiguousarray(w_in.T), b_in, w_out, b_out)


def random_mlp(
    rng: np.random.Generator, c: int, f: int, active: float = 0.1, dtype=np.float64
):
    """Random weights whose pre-activations for x ~ N(0, I) are N(0, 1) + b1, with
    b1 = -Phi^-1(1 - active): about ``active`` of the neurons fire per input."""
    w1 = rng.standard_normal((f, c)) / math.sqrt(c)  # (F, C)
    if 0 < active < 1:
        shift = _probit(1.0 - active)
    else:  # none or all fire
        shift = 8.0 if active <= 0 else -8.0
    b1 = -shift + 0.1 * rng.standard_normal(f)  # (F,)
    w2 = rng.standard_normal((f, c)) / math.sqrt(f * max(active, 1e-3))  # (F, C)
    b2 = 0.1 * rng.standard_normal(c)  # (C,)
    return SparseMLPWeights(*(a.astype(dtype) for a in (w1, b1, w2, b2)))


def _probit(p: float) -> float:
    """Phi^-1(p) by bisection on math.erf (no SciPy)."""
    lo, hi = -10.0, 10.0
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (
            (mid, hi) if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p else (lo, mid)
        )
    return (lo + hi) / 2


def check_indices(idx, f: int) -> Array:
    """idx as an int64 array; ValueError if not 1-D, out of [0, F) or duplicated
    (a duplicate would count its neuron twice)."""
    idx = np.asarray(idx)
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise ValueError(
            f"idx must be a 1-D integer array, got {idx.dtype} {idx.shape}"
        )
    idx = idx.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= f):
        raise ValueError(f"idx must lie in [0, F={f}), got {idx.min()}..{idx.max()}")
    if np.unique(idx).size != idx.size:
        raise ValueError("idx holds duplicates")
    return idx


def _act(z: Array, act: str) -> Array:
    if act == "relu":
        return np.maximum(z, z.dtype.type(0))
    if act == "gelu":
        return gelu(z)
    raise ValueError(f"act must be one of {ACTS}, got {act!r}")


def preactivations(x: Array, w: SparseMLPWeights) -> Array:
    """z = x W_in + b_in: x (B, C) -> (B, F)."""
    return x @ w.w1.T + w.b1  # (B, F)


def dense_mlp(x: Array, w: SparseMLPWeights, act: str = "relu") -> Array:
    """Baseline: y = act(x W_in + b_in) W_out + b_out. x (B, C) -> (B, C)."""
    return _act(preactivations(x, w), act) @ w.w2 + w.b2  # (B, C)


def sparse_mlp(x: Array, w: SparseMLPWeights, idx, act: str = "relu") -> Array:
    """The trick: only the neurons in T = idx (any order, no duplicates).

    a_T = act(x W_in[:, T] + b_in[T]),  y_T = a_T W_out[T, :] + b_out  (rows T of w1
    and w2 gathered). For ReLU, y_T = y exactly for every T containing S(x) (the
    zeros dropped are exact zeros); T = {} gives b_out. x (B, C) -> (B, C).
    """
    idx = check_indices(idx, w.w1.shape[0])
    a = _act(x @ w.w1[idx].T + w.b1[idx], act)  # (B, K)
    return a @ w.w2[idx] + w.b2  # (B, C)


def sparse_mlp_fixed(x: Array, w: SparseMLPWeights, idx) -> Array:
    """sparse_mlp (ReLU) with every sum in a fixed order: z_i sums over c = 0..C-1,
    y over the neurons of T in ascending id order, then + b_out.

    A neuron outside S(x) adds a_i w2_i = 0 * w2_i = 0, and y + 0 == y exactly, so
    for every T >= S(x) this equals dense_mlp_fixed bitwise. x (B, C) -> (B, C).
    """
    idx = np.sort(check_indices(idx, w.w1.shape[0]))
    w1, w2 = w.w1[idx], w.w2[idx]  # (K, C)
    z = np.zeros((x.shape[0], idx.size), dtype=np.result_type(x, w1))  # (B, K)
    for c in range(x.shape[1]):
        z += x[:, c : c + 1] * w1[:, c]  # (B, K), one term at a time
    a = np.maximum(z + w.b1[idx], 0)  # (B, K)
    y = np.zeros((x.shape[0], w2.shape[1]), dtype=z.dtype)  # (B, C)
    for j in range(idx.size):
        y += a[:, j : j + 1] * w2[j]  # (B, C), ascending neuron id
    return y + w.b2


def dense_mlp_fixed(x: Array, w: SparseMLPWeights) -> Array:
    """dense_mlp (ReLU) in sparse_mlp_fixed's order: T = all F neurons."""
    return sparse_mlp_fixed(x, w, np.arange(w.w1.shape[0]))


def masked_mlp(x: Array, w: SparseMLPWeights, mask: Array, act: str = "relu"):
    """A different set per row: y_b = (act(z_b) * mask_b) W_out + b_out, mask (B, F).
    Computes every neuron and zeroes the dropped ones (what the paper's accuracy
    runs do): the error study, not a fast path. x (B, C) -> (B, C)."""
    a = _act(preactivations(x, w), act)  # (B, F)
    return np.where(mask, a, a.dtype.type(0)) @ w.w2 + w.b2  # (B, C)


def active_set(x: Array, w: SparseMLPWeights, tau: float = 0.0) -> Array:
    """The oracle set as a mask: S(x) = {i : z_i > tau}, (B, C) -> (B, F) bool.
    For ReLU tau = 0 is exact; for GELU every neuron is nonzero and tau < 0 trades
    kept neurons for error (the chapter measures it)."""
    return preactivations(x, w) > tau  # (B, F)


def union_indices(mask: Array) -> Array:
    """The neurons active for ANY row of a batch: mask (B, F) -> sorted ids (K,).
    A batch must use the union: a neuron missing for one row drops its term."""
    return np.flatnonzero(np.asarray(mask).any(axis=0))


def dropped_error_bound(x: Array, w: SparseMLPWeights, idx) -> Array:
    """|y - y_T| <= sum_{i in S(x) - T} a_i |w2_i|  (ReLU), per batch row: (B,).

    y - y_T = sum_{i not in T} a_i w2_i exactly, and a_i = 0 outside S(x): only false
    negatives (active neurons missing from T) cost anything; false positives cost
    only time."""
    idx = check_indices(idx, w.w1.shape[0])
    a = np.maximum(preactivations(x, w), 0)  # (B, F)
    a[:, idx] = 0  # the kept ones cost nothing
    return a @ np.linalg.norm(w.w2, axis=1)  # (B,)


def recall(pred: Array, true: Array) -> Array:
    """|T ∩ S| / |S| per row, for masks pred, true (..., F); 1 where S is empty."""
    pred, true = np.asarray(pred, bool), np.asarray(true, bool)
    hit = (pred & true).sum(axis=-1)
    n = true.sum(axis=-1)
    return np.where(n > 0, hit / np.maximum(n, 1), 1.0)


def union_growth(mask: Array, batches, rng: np.random.Generator, trials: int = 20):
    """Mean |union of B active sets| / F over random batches of rows of mask (N, F)
    drawn without replacement: {B: fraction}. Independent rows would give
    1 - (1 - p)^B; correlated ones (real text) grow more slowly."""
    mask = np.asarray(mask, bool)
    out = {}
    for b in batches:
        fr = [
            mask[rng.choice(mask.shape[0], b, replace=False)].any(axis=0).mean()
            for _ in range(trials)
        ]
        out[int(b)] = float(np.mean(fr))
    return out


# --- heads ----------------------------------------------------------------------------


def head_outputs(q: Array, k: Array, v: Array, w_o: Array) -> Array:
    """Each head's contribution to the attention output, after W_O.

    o_h = softmax(q_h K_h^T / sqrt(D)) V_h, and MHA = concat_h(o_h) W_O + b_O
    = sum_h o_h W_O[hD:(h+1)D, :] + b_O. q (B, H, D); k, v (B, H, S, D); w_o (H*D, C).
    Returns (B, H, C); summing over H (and adding b_O) gives MHA.
    """
    b, h, d = q.shape
    p = softmax(np.einsum("bhd,bhsd->bhs", q, k) / math.sqrt(d))  # (B, H, S)
    o = np.einsum("bhs,bhsd->bhd", p, v)  # (B, H, D)
    return np.einsum("bhd,hdc->bhc", o, w_o.reshape(h, d, -1))  # (B, H, C)


def head_sparse_attention(q, k, v, w_o, heads, b_o=None) -> Array:
    """Attention over the heads in ``heads`` only: sum_{h in T} o_h W_O,h + b_O.
    Shapes as head_outputs; returns (B, C). All heads: MHA."""
    b, h, d = q.shape
    heads = check_indices(heads, h)
    w_t = w_o.reshape(h, d, -1)[heads].reshape(heads.size * d, -1)  # (K*D, C)
    y = head_outputs(q[:, heads], k[:, heads], v[:, heads], w_t).sum(axis=1)  # (B, C)
    return y if b_o is None else y + b_o


@dataclass(frozen=True)
class HeadSparseCache:
    """One sequence's decode state for head-sparse attention.

    x holds every token's layer input (the paper's x_cache), so a head skipped at
    some steps can compute its missing K/V later; have[h, s] says whether head h's
    K/V of token s exist yet."""

    x: Array  # (S, C)
    k: Array  # (H, S, D)
    v: Array  # (H, S, D)
    have: Array  # (H, S) bool

    @staticmethod
    def empty(h: int, d: int, c: int, dtype=np.float64) -> HeadSparseCache:
        return HeadSparseCache(
            np.zeros((0, c), dtype), np.zeros((h, 0, d), dtype),
            np.zeros((h, 0, d), dtype), np.zeros((h, 0), bool),
        )  # fmt: skip


def _kv_row(x_s: Array, aw: AttnWeights, h: int, d: int) -> tuple[Array, Array]:
    """Head h's key and value of one token, always by the same operations."""
    cols = slice(h * d, (h + 1) * d)
    k = x_s @ aw.w_k[:, cols] + aw.b_k[cols]  # (D,)
    return k, x_s @ aw.w_v[:, cols] + aw.b_v[cols]  # (D,)


def head_sparse_decode(
    cache: HeadSparseCache, x_t: Array, aw: AttnWeights, n_heads: int, heads
):
    """One decode step that runs only the heads in ``heads``.

    The new token's x is appended; each selected head first catches up the K/V of
    every token it skipped (from x), then attends over all S tokens. Skipped heads
    do no work and keep their gaps. Returns (y (C,) = sum_{h in T} o_h W_O,h + b_O,
    the new cache). With all heads selected the output equals dense decode exactly,
    whatever was skipped before (each K/V row is computed by _kv_row either way).
    aw: AttnWeights with biases (C, C) matrices; x_t (C,).
    """
    heads = np.sort(check_indices(heads, n_heads))
    c = x_t.shape[0]
    d = c // n_heads
    x = np.concatenate([cache.x, x_t[None]])  # (S, C)
    s = x.shape[0]
    k = np.concatenate([cache.k, np.zeros((n_heads, 1, d), cache.k.dtype)], 1)
    v = np.concatenate([cache.v, np.zeros((n_heads, 1, d), cache.v.dtype)], 1)
    have = np.concatenate([cache.have, np.zeros((n_heads, 1), bool)], 1)  # (H, S)
    y = np.zeros(c, dtype=np.result_type(x_t, aw.w_o)) + aw.b_o  # (C,)
    for h in heads:
        for j in np.flatnonzero(~have[h]):  # catch-up: the K/V this head skipped
            k[h, j], v[h, j] = _kv_row(x[j], aw, h, d)
        have[h] = True
        q = x_t @ aw.w_q[:, h * d : (h + 1) * d] + aw.b_q[h * d : (h + 1) * d]  # (D,)
        p = softmax(k[h, :s] @ q / math.sqrt(d))  # (S,)
        y = y + (p @ v[h, :s]) @ aw.w_o[h * d : (h + 1) * d]  # (C,)
    return y, replace(cache, x=x, k=k, v=v, have=have)


# --- the lookahead predictor ---------------------------------------------------------


@dataclass(frozen=True)
class LowRankPredictor:
    """score = (x - mean) A B + bias: a rank-r linear map from an earlier residual
    stream to the F pre-activations (the paper's predictor is also linear and low
    rank, d -> 1000 -> F, with no nonlinearity in between)."""

    mean: Array  # (C,)
    a: Array  # (C, r)
    b: Array  # (r, F)
    bias: Array  # (F,)


def fit_predictor(
    x_prev: Array, z: Array, rank: int, ridge: float = 1e-3
) -> LowRankPredictor:
    """Reduced-rank ridge regression of the pre-activations z (N, F) on the earlier
    residual stream x_prev (N, C), in closed form (no SGD):

      W = argmin |X W - Z|^2 + ridge |X|^2/C |W|^2   (X, Z centred), then the
      best rank-r fit: W_r = W V_r V_r^T with V_r the top-r right singular vectors
      of X W (Reinsel & Velu, reduced-rank regression). A = W V_r, B = V_r^T.
    """
    mx, mz = x_prev.mean(axis=0), z.mean(axis=0)
    xc, zc = x_prev - mx, z - mz  # (N, C), (N, F)
    lam = ridge * float((xc**2).sum()) / xc.shape[1]
    g = xc.T @ xc + lam * np.eye(xc.shape[1])  # (C, C)
    w = np.linalg.solve(g, xc.T @ zc)  # (C, F)
    _, _, vt = np.linalg.svd(xc @ w, full_matrices=False)  # vt (min(N, F), F)
    vr = vt[:rank].T  # (F, r)
    return LowRankPredictor(mx, w @ vr, vr.T, mz)


def predict(p: LowRankPredictor, x_prev: Array) -> Array:
    """Predicted pre-activations (scores): x_prev (N, C) -> (N, F)."""
    return ((x_prev - p.mean) @ p.a) @ p.b + p.bias  # (N, F)


def top_k_mask(scores: Array, k: int) -> Array:
    """Keep the k highest scores per row: (N, F) -> (N, F) bool (k in [0, F])."""
    n, f = scores.shape
    mask = np.zeros((n, f), bool)
    if k > 0:
        top = np.argpartition(-scores, min(k, f) - 1, axis=1)[:, :k]  # (N, k)
        np.put_along_axis(mask, top, True, axis=1)
    return mask


def top_k_ids(scores: Array, k: int) -> Array:
    """The k highest scores of each row as ascending ids: (N, F) -> (N, k) int64.

    Exact and deterministic, the rule gpu/deja_vu_predict.cu implements: rank by
    score, highest first, and among equal scores the lower id first (-0.0 equals
    +0.0); NaN ranks below every number, -inf included. The ids come sorted, as
    a sparse MLP's index set. Without ties the set is top_k_mask's.
    """
    s = np.asarray(scores)
    n, f = s.shape
    if not 0 <= k <= f:
        raise ValueError(f"k must lie in [0, F={f}], got {k}")
    nan = np.isnan(s)
    ids = np.broadcast_to(np.arange(f), (n, f))
    # lexsort: the last key is the primary one (NaN last, then score down, then id)
    order = np.lexsort((ids, -np.where(nan, 0, s), nan), axis=-1)  # (N, F)
    return np.sort(order[:, :k], axis=1).astype(np.int64)
