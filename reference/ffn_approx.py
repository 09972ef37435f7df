"""Approximating two-layer FFNs (Csordás, Irie & Schmidhuber 2023, arXiv 2310.10837).

The dense MLP y = relu(x W1) W2 is a sum over its F hidden units, y = sum_i u_i w2_i
with u = relu(x W1) and w2_i row i of W2. Top-K activation, product-key memory and
mixtures of experts all keep only some of those terms. Baseline and tricks side by
side (STYLE R2):

  dense_mlp                          the baseline
  topk_mlp, topk_error_bound         Top-K activation (rank by u_i or u_i |w2_i|)
  pkm_topk, pkm_topk_bruteforce, pkm  product-key memory: search and output
  init_sigma_moe, renorm_keep_std    sigma-MoE weights and the paper's init
  route, entropy_reg                 sigmoid gate, expert dropout, top-K; regulariser
  moe_loop, moe_as_dense, gate_scaled_dense   the MoE by definition, and its dense twins
  counting_sort, cvmm, moe_cvmm      CVMM: sort pairs by expert, grouped GEMM, sum
  moe_flops, dense_flops             FLOPs per token (prefill) for the paper's configs

Row vectors (y = x @ W). No biases (sigma-MoE has none). Functions keep the dtype
they are given; pass float64 for the truth. Shapes: T tokens, C width, F hidden
units, E experts, G expert size (F = E G for the parameter-equal dense MLP), K top-k
(experts, units or product keys), P = T K (token, slot) pairs, N keys per half (PKM).
Imports: NumPy and the standard library only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Array = np.ndarray


def _relu(z: Array) -> Array:
    return np.maximum(z, z.dtype.type(0))


def top_k_indices(scores: Array, k: int) -> Array:
    """The k largest entries of each row, in descending order; ties go to the lower
    index (a stable sort of -scores). scores (T, F) -> (T, k) int64."""
    return np.argsort(-scores, axis=-1, kind="stable")[:, :k]  # (T, k)


def sigmoid(z: Array) -> Array:
    """1 / (1 + exp(-z)), written with tanh so that no exp overflows."""
    return 0.5 * (1 + np.tanh(z / 2))


def dense_mlp(x: Array, w1: Array, w2: Array) -> Array:
    """Baseline: y = relu(x W1) W2. x (T, C), w1 (C, F), w2 (F, C) -> (T, C)."""
    return _relu(x @ w1) @ w2  # (T, C)


# --- Top-K activation ------------------------------------------------------------


def topk_mlp(x: Array, w1: Array, w2: Array, k: int, by_norm: bool = False):
    """Top-K activation: y_K = sum_{i in TopK} u_i w2_i, u = relu(x W1).

    The paper's section 3.1; by_norm ranks the units by u_i |w2_i| (its variant) instead
    of u_i. The up-projection stays dense; only W2 is read sparsely. For every
    k >= nnz(u) the result is the dense MLP exactly (the dropped terms are zeros).
    x (T, C), w1 (C, F), w2 (F, C) -> (T, C).
    """
    u = _relu(x @ w1)  # (T, F)
    score = u * np.linalg.norm(w2, axis=1) if by_norm else u  # (T, F)
    keep = np.zeros(u.shape, bool)
    np.put_along_axis(keep, top_k_indices(score, k), True, axis=-1)
    return np.where(keep, u, u.dtype.type(0)) @ w2  # (T, C)


def topk_error_bound(x: Array, w1: Array, w2: Array, k: int, by_norm: bool = False):
    """|y - y_K| <= sum_{i not in TopK} u_i |w2_i| per token (triangle inequality on
    the dropped terms): (T,). Ranking by u_i |w2_i| minimises this bound."""
    u = _relu(x @ w1)  # (T, F)
    norms = np.linalg.norm(w2, axis=1)  # (F,)
    score = u * norms if by_norm else u
    drop = u.copy()
    np.put_along_axis(drop, top_k_indices(score, k), 0, axis=-1)
    return drop @ norms  # (T,)


# --- product-key memory ----------------------------------------------------------


def pkm_topk_bruteforce(q: Array, keys_a: Array, keys_b: Array, k: int):
    """Top-k over all N^2 product keys [a_i; b_j], score = q_A.a_i + q_B.b_j.

    q (T, 2 Dk) = [q_A | q_B], keys_a, keys_b (N, Dk). Returns (scores (T, k)
    descending, ids (T, k) with id = i N + j)."""
    dk, n = keys_a.shape[1], keys_a.shape[0]
    sa, sb = q[:, :dk] @ keys_a.T, q[:, dk:] @ keys_b.T  # (T, N) each
    full = (sa[:, :, None] + sb[:, None, :]).reshape(q.shape[0], n * n)  # (T, N^2)
    ids = top_k_indices(full, k)  # (T, k)
    return np.take_along_axis(full, ids, axis=-1), ids


def pkm_topk(q: Array, keys_a: Array, keys_b: Array, k: int):
    """Product-key search (Lample et al. 2019): the top-k of the N^2 sums lies in
    TopK(q_A.K_A) x TopK(q_B.K_B), so score k^2 candidates instead of N^2.

    If (i, j) is in the overall top-k, fewer than k keys a beat a_i (each would
    pair with b_j to beat (i, j)), so i is in the top-k of the A half; the same for
    j. Shapes and returns as pkm_topk_bruteforce; k <= N."""
    dk, n = keys_a.shape[1], keys_a.shape[0]
    sa, sb = q[:, :dk] @ keys_a.T, q[:, dk:] @ keys_b.T  # (T, N) each
    ia, ib = top_k_indices(sa, k), top_k_indices(sb, k)  # (T, k) each
    va = np.take_along_axis(sa, ia, axis=-1)  # (T, k)
    vb = np.take_along_axis(sb, ib, axis=-1)  # (T, k)
    cand = (va[:, :, None] + vb[:, None, :]).reshape(q.shape[0], k * k)  # (T, k^2)
    cid = (ia[:, :, None] * n + ib[:, None, :]).reshape(q.shape[0], k * k)
    best = np.argsort(-cand, axis=-1, kind="stable")[:, :k]  # (T, k)
    return np.take_along_axis(cand, best, -1), np.take_along_axis(cid, best, -1)


def pkm(x: Array, w_q: Array, keys_a, keys_b, values: Array, k: int, act="relu"):
    """PKM layer: y = sum_{(i,j) in top-k} act(score)_ij v_{iN+j}. act "relu" (the
    paper's parameter-matched PKM) or "softmax" over the k scores (the original).
    x (T, C), w_q (C, 2 Dk), keys (N, Dk), values (N^2, C) -> (T, C)."""
    s, ids = pkm_topk(x @ w_q, keys_a, keys_b, k)  # (T, k) each
    if act == "relu":
        a = _relu(s)
    elif act == "softmax":
        e = np.exp(s - s.max(axis=-1, keepdims=True))
        a = e / e.sum(axis=-1, keepdims=True)
    else:
        raise ValueError(f"act must be 'relu' or 'softmax', got {act!r}")
    return np.einsum("tk,tkc->tc", a, values[ids])  # (T, C)


# --- sigma-MoE ----------------------------------------------------------------------


@dataclass(frozen=True)
class MoEWeights:
    """E experts of G units each, and the router. Expert e is the dense MLP
    relu(x w1[e]) w2[e]; concatenating the experts gives a dense MLP with F = E G."""

    w1: Array  # (E, C, G)  the paper's keys
    w2: Array  # (E, G, C)  the paper's values
    w3: Array  # (C, E)     the router (the paper's expert_sel, transposed)


def renorm_keep_std(w: Array, axis: int = 0) -> Array:
    """Scale each slice along ``axis`` to unit norm, then the whole array back to its
    old standard deviation (torch's unbiased std, as the paper's code). Afterwards
    all slices have equal norm and std(w) is unchanged."""
    std = w.std(ddof=1) if w.size > 1 else 0.0
    w = w / np.linalg.norm(w, axis=axis, keepdims=True)
    new = w.std(ddof=1) if w.size > 1 else 0.0
    return w * (std / new) if new > 0 else w  # (e.g. C = 1: all slices +-1)


def init_sigma_moe(rng, c: int, e: int, g: int, std_scale: float = 1.0, dtype=None):
    """The paper's init (moe_layer reset_parameters): w1 ~ N(0, s^2/C), w2 ~
    N(0, s^2/(E G)) (as a dense MLP with F = E G), router ~ N(0, s^2/C) with every
    expert's router column renormalised to one common norm (renorm_keep_std).
    s = std_scale: 1 for post-LN, sqrt(2 / n_layers) for pre-LN."""
    w1 = rng.standard_normal((e, c, g)) * (std_scale / math.sqrt(c))
    w2 = rng.standard_normal((e, g, c)) * (std_scale / math.sqrt(e * g))
    w3 = renorm_keep_std(rng.standard_normal((c, e)) * (std_scale / math.sqrt(c)), 0)
    return MoEWeights(*(a.astype(dtype or np.float64) for a in (w1, w2, w3)))


def route(x: Array, w3: Array, k: int, dropout: float = 0.0, rng=None):
    """sigma-MoE routing: s = sigmoid(x W3), expert dropout, top-K.

    During training each (token, expert) is dropped with probability ``dropout``
    (its score set to -inf before the top-K, as the paper's code does); the gate of a
    selected expert is its sigmoid score. If fewer than K experts survive, the
    empty slots get expert -1 and gate 0 (the paper's code would select a dropped
    expert with gate -inf there). x (T, C), w3 (C, E) -> (idx (T, K) int64,
    descending score, ties to the lower id; gate (T, K))."""
    s = sigmoid(x @ w3)  # (T, E)
    sel = s
    if dropout > 0:
        sel = np.where(rng.random(s.shape) < dropout, -np.inf, s)  # (T, E)
    idx = top_k_indices(sel, k)  # (T, K)
    chosen = np.take_along_axis(sel, idx, axis=-1)  # (T, K)
    gate = np.where(np.isfinite(chosen), chosen, 0).astype(s.dtype)
    return np.where(np.isfinite(chosen), idx, -1), gate


def entropy_reg(logits: Array) -> Array:
    """The paper's regulariser L = -H(p_bar) = sum_e p_bar_e log p_bar_e, with
    p_bar = mean_t softmax(logits_t), all in log space (logsumexp). Between -log E
    (uniform use of the experts) and 0 (every token to one expert).
    logits (T, E) -> scalar."""
    m = logits.max(axis=-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(axis=-1, keepdims=True))
    mm = logp.max(axis=0)  # (E,)
    logp_bar = mm + np.log(np.exp(logp - mm).mean(axis=0))  # (E,) log mean_t p
    return (np.exp(logp_bar) * logp_bar).sum()


def moe_loop(x: Array, w: MoEWeights, idx: Array, gate: Array) -> Array:
    """The MoE by definition, one (token, slot) pair at a time (expert -1: skipped):
    y_t = sum_j gate_tj relu(x_t w1[e_tj]) w2[e_tj]. x (T, C), idx, gate (T, K)."""
    y = np.zeros((x.shape[0], w.w2.shape[2]), np.result_type(x, w.w2))  # (T, C)
    for t in range(x.shape[0]):
        for j in range(idx.shape[1]):
            e = idx[t, j]
            if e >= 0:
                y[t] += gate[t, j] * (_relu(x[t] @ w.w1[e]) @ w.w2[e])  # (C,)
    return y


def moe_as_dense(w: MoEWeights) -> tuple[Array, Array]:
    """The experts concatenated: W1 (C, E G), W2 (E G, C); unit e G + g is unit g of
    expert e. The parameter-equal dense MLP has exactly these shapes."""
    e, c, g = w.w1.shape
    return w.w1.transpose(1, 0, 2).reshape(c, e * g), w.w2.reshape(e * g, c)


def gate_scaled_dense(x: Array, w: MoEWeights, s: Array) -> Array:
    """(relu(x W1) * repeat(s, G)) W2 with the concatenated experts: what an MoE
    with all E experts selected and gates s (T, E) computes. -> (T, C)."""
    w1, w2 = moe_as_dense(w)
    g = w.w1.shape[2]
    return (_relu(x @ w1) * np.repeat(s, g, axis=1)) @ w2  # (T, C)


# --- CVMM: sort by expert, grouped GEMM, scatter back -------------------------------


def counting_sort(experts: Array, n_experts: int):
    """Stable counting sort of pair ids by expert: what the GPU does instead of a
    comparison sort. experts (P,) in [-1, E); -1 (an empty slot) is left out.

    counts[e] = #pairs of expert e; offsets = [0, cumsum(counts)] (E + 1,);
    order (sum counts,): pair ids, expert 0's first, in ascending pair id within
    an expert (stable), so the result does not depend on any scheduling."""
    experts = np.asarray(experts)
    counts = np.zeros(n_experts, np.int64)
    for e in experts:  # histogram
        if e >= 0:
            counts[e] += 1
    offsets = np.concatenate([[0], np.cumsum(counts)])  # exclusive scan, (E + 1,)
    cursor = offsets[:-1].copy()
    order = np.empty(offsets[-1], np.int64)
    for p, e in enumerate(experts):  # stable scatter, pairs in ascending order
        if e >= 0:
            order[cursor[e]] = p
            cursor[e] += 1
    return order, counts, offsets


def cvmm(a: Array, rows: Array, order: Array, offsets: Array, w: Array) -> Array:
    """Conditional vector-matrix multiply on sorted pairs: Z[q] = a[rows[q]] @ w[e]
    for every sorted position q of expert e (offsets[e] <= q < offsets[e+1]): one
    dense GEMM per expert segment. a (R, Cin), rows (P,) gather index per sorted
    position, w (E, Cin, Cout) -> Z (P, Cout) in sorted order."""
    z = np.zeros((order.size, w.shape[2]), np.result_type(a, w))  # (P, Cout)
    for e in range(w.shape[0]):
        seg = slice(offsets[e], offsets[e + 1])
        z[seg] = a[rows[seg]] @ w[e]  # (n_e, Cout): the grouped GEMM's group e
    return z


def moe_cvmm(x: Array, w: MoEWeights, idx: Array, gate: Array) -> Array:
    """moe_loop as the GPU computes it. Pairs p = t K + j are sorted by expert; the
    up GEMM gathers x rows and applies ReLU and the gate (its epilogue); the down GEMM
    runs on the same segments; Z goes back to pair order, and the K slots of each
    token add in order j = 0..K-1 (deterministic). x (T, C), idx, gate (T, K)."""
    t, k = idx.shape
    order, _, offsets = counting_sort(idx.ravel(), w.w1.shape[0])  # (P,), (E + 1,)
    h = _relu(cvmm(x, order // k, order, offsets, w.w1))  # (P, G), sorted
    h = h * gate.ravel()[order][:, None]  # the gate, fused in the up epilogue
    z = np.zeros((t * k, w.w2.shape[2]), h.dtype)  # (P, C), pair order
    z[order] = cvmm(h, np.arange(order.size), order, offsets, w.w2)  # scatter back
    z = z.reshape(t, k, -1)
    y = z[:, 0].copy()  # (T, C)
    for j in range(1, k):  # fixed slot order
        y += z[:, j]
    return y


# --- FLOPs per token (prefill) ----------------------------------------------------


def dense_flops(c: int, f: int) -> int:
    """The dense MLP: 2 C F for each of the two matrix products, 4 C F per token."""
    return 4 * c * f


def moe_flops(c: int, e: int, g: int, k: int) -> int:
    """sigma-MoE: K experts of G units (4 C G K) plus the router (2 C E) per token.
    Against the parameter-equal dense MLP (F = E G) the ratio is about K/E."""
    return 4 * c * g * k + 2 * c * e
