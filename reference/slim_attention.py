"""Slim attention (Graef & Wasielewski 2025, arXiv 2503.05840): a K-only cache.

For multi-head attention W_K is square, so X = K W_K^-1 and (paper eq. 4-6)

    V = X W_V = K (W_K^-1 W_V) = K W_KV.

The V cache can be dropped: V is rebuilt from the K cache. Baseline and tricks side
by side (STYLE R2):

  kv_decode, kv_attention   baseline: K and V caches
  slim_decode               trick: K-only cache, two evaluation orders (eq. 7)
  slim_attention            the same for T queries (prefill), causal or not
  vcache_decode             the other direction: V cache, K = V W_VK
  xcache_decode             X cache with absorbed weights (MLA-style), no inverse
  fold_w_kv, fold_b_v       the folded matrix (solve in float64) and bias
  kv_lstsq_residual         GQA (e < C): no exact map K -> V; the best one's residual
  decode_costs              the paper's Table 2 (OPs and reads per token)
  slim_step_reads, whisper_slim_table: the paper's step reads, Table 7 (Whisper)
  matrix_with_cond, round_bf16, stored, cache_errors: the numerics studies

Row vectors (y = x @ W, W of shape (in, out)). Caches are token-major, (B, S, H*D):
row s holds every head of token s, head h in columns h*D:(h+1)*D (the layout the GPU
kernel reads). Functions keep the dtype they are given; pass float64 for the truth.
Shapes: B batch, T queries, S cache length, H heads, D head dim, C width (= H*D).
Imports: NumPy, reference.common and reference.models (itself NumPy only).
"""

from __future__ import annotations

import math

import numpy as np

from reference.common import (
    AttnWeights,
    apply_rope,
    attention,
    decode_attention,
    softmax,
)
from reference.models import ModelConfig, kv_cache_values, need

Array = np.ndarray
ORDERS = ("rebuild_v", "accumulate_k")
STORAGE = ("float64", "float32", "float16", "bfloat16")


def split_heads(y: Array, h: int) -> Array:
    """(B, S, H*D) -> (B, H, S, D): head h takes columns h*D:(h+1)*D."""
    b, s, c = y.shape
    if c % h:
        raise ValueError(f"width {c} is not a multiple of H={h}")
    return y.reshape(b, s, h, c // h).transpose(0, 2, 1, 3)


def fold_w_kv(w_k: Array, w_v: Array) -> Array:
    """W_KV with  K @ W_KV == X @ W_V  for K = X @ W_K (paper eq. 5), in float64.

    Row convention: X (n, C), W_K (C, e), W_V (C, e). We need W_K @ W_KV = W_V.
      e == C (MHA): W_KV = W_K^-1 W_V, by np.linalg.solve (LU with pivoting; never
               inv(W_K) @ W_V, which adds an error of the same order again).
      e >  C (H*D > C, e.g. CodeGemma, T5): W_K has full row rank, and a RIGHT
               inverse R = W_K^T (W_K W_K^T)^-1 (e, C), W_K R = I_C. W_KV = R W_V
               is the minimum-norm solution of W_K Z = W_V; np.linalg.lstsq (SVD)
               computes it without forming W_K W_K^T, which squares cond(W_K).
      e <  C (GQA, MQA): V is not a function of K; see kv_lstsq_residual.
    Swap the arguments for the V direction: fold_w_kv(w_v, w_k) = W_VK.
    Returns (e, e) in the inputs' dtype; entries beyond its range become inf
    (float16: |W_KV| > 65504). The error of the fold grows with cond(W_K).
    """
    dtype = np.result_type(w_k, w_v)
    a, b = np.asarray(w_k, np.float64), np.asarray(w_v, np.float64)
    c, e = a.shape
    if b.shape[0] != c:
        raise ValueError(f"W_K {a.shape} and W_V {b.shape} need the same rows")
    if e == c:
        w = np.linalg.solve(a, b)  # (C, e)
    elif e > c:
        w = np.linalg.lstsq(a, b, rcond=None)[0]  # (e, e): R @ W_V
    else:
        raise ValueError(f"e={e} < C={c}: no exact W_KV; see kv_lstsq_residual")
    with np.errstate(over="ignore"):
        return w.astype(dtype)


def fold_b_v(w_kv: Array, b_k: Array | None, b_v: Array | None) -> Array | None:
    """The bias of the rebuilt V when the cached K carries the K bias b_K.

    K = X W_K + b_K gives X W_K = K - b_K, so V = K W_KV + (b_V - b_K W_KV).
    Without RoPE, cache K without b_K instead (it cancels in the softmax) and keep
    b_V. With RoPE b_K does not cancel (R_s b_K depends on s): cache K with b_K and
    use this bias. w_kv (e, e); b_k, b_v (e,) or None. Returns (e,) or None.
    """
    if b_k is None:
        return b_v
    out = -(b_k @ w_kv)
    return out if b_v is None else out + b_v


def kv_decode(q: Array, k_cache: Array, v_cache: Array) -> Array:
    """Baseline: decode attention over a K and a V cache (reference.common).

    q (B, H, D); k_cache, v_cache (B, S, H*D), biases included. Returns (B, H, D).
    """
    h = q.shape[1]
    return decode_attention(q, split_heads(k_cache, h), split_heads(v_cache, h))


def kv_attention(
    q: Array, k_cache: Array, v_cache: Array, causal: bool = True, q_offset: int = 0
) -> Array:
    """Baseline for T queries: q (B, H, T, D); caches (B, S, H*D) -> (B, H, T, D)."""
    h = q.shape[1]
    k, v = split_heads(k_cache, h), split_heads(v_cache, h)  # (B, H, S, D)
    return attention(q, k, v, causal=causal, q_offset=q_offset)


def slim_decode(
    q: Array,
    k_cache: Array,
    w_kv: Array,
    b_v: Array | None = None,
    order: str = "accumulate_k",
    positions: Array | None = None,
    rot_dim: int | None = None,
    rope_base: float = 10000.0,
) -> Array:
    """Decode attention over a K-only cache: V = K W_KV + b_V is never stored.

    s_h = q_h . K_h,s / sqrt(D) uses head h's own D columns of K; p_h = softmax(s_h).
      "rebuild_v":    o_h = sum_s p_h,s (K_s W_KV,h) + b_V,h    (paper eq. 7, first)
      "accumulate_k": o_h = (sum_s p_h,s K_s) W_KV,h + b_V,h    (eq. 7, second)
    with W_KV,h = W_KV[:, h*D:(h+1)*D]: every head needs ALL columns of K. b_V moves
    out of the sum because sum_s p_h,s = 1. RoPE (positions (S,) given): the cache
    holds raw keys; they are rotated on read for the scores only, and the raw keys
    feed W_KV (q must already be rotated at its own position).
    q (B, H, D); k_cache (B, S, H*D) raw keys (no b_K); w_kv (H*D, H*D); b_v
    (H*D,) or None. Returns (B, H, D) in q's dtype.
    """
    b, h, d = q.shape
    e = k_cache.shape[-1]
    k = split_heads(k_cache, h)  # (B, H, S, D)
    if positions is not None:
        k = apply_rope(k, positions, rot_dim, rope_base)  # rotated copy, for scores
    p = softmax(np.einsum("bhd,bhsd->bhs", q, k) / math.sqrt(d))  # (B, H, S)
    if order == "rebuild_v":
        v = split_heads(k_cache @ w_kv, h)  # (B, H, S, D)
        o = np.einsum("bhs,bhsd->bhd", p, v)  # (B, H, D)
    elif order == "accumulate_k":
        u = np.einsum("bhs,bse->bhe", p, k_cache)  # (B, H, e): all of K, per head
        w_h = w_kv.reshape(e, h, d).transpose(1, 0, 2)  # (H, e, D): W_KV,h
        o = np.einsum("bhe,hed->bhd", u, w_h)  # (B, H, D)
    else:
        raise ValueError(f"order must be one of {ORDERS}; got {order!r}")
    return o if b_v is None else o + b_v.reshape(h, d)


def slim_attention(
    q: Array,
    k_cache: Array,
    w_kv: Array,
    b_v: Array | None = None,
    order: str = "accumulate_k",
    causal: bool = True,
    q_offset: int = 0,
    positions: Array | None = None,
    rot_dim: int | None = None,
    rope_base: float = 10000.0,
) -> Array:
    """slim_decode for T queries (prefill): query t sits at position q_offset + t.

    Causal: query t sees keys s <= q_offset + t. Same formulas and arguments as
    slim_decode; q (B, H, T, D), k_cache (B, S, H*D). Returns (B, H, T, D).
    """
    b, h, t, d = q.shape
    s, e = k_cache.shape[1:]
    k = split_heads(k_cache, h)  # (B, H, S, D)
    if positions is not None:
        k = apply_rope(k, positions, rot_dim, rope_base)
    scores = q @ k.swapaxes(-1, -2) / math.sqrt(d)  # (B, H, T, S)
    if causal:
        hidden = np.arange(s)[None, :] > q_offset + np.arange(t)[:, None]  # (T, S)
        scores = np.where(hidden, scores.dtype.type(-np.inf), scores)
    p = softmax(scores)  # (B, H, T, S)
    if order == "rebuild_v":
        o = p @ split_heads(k_cache @ w_kv, h)  # (B, H, T, D)
    elif order == "accumulate_k":
        u = p @ k_cache[:, None]  # (B, H, T, e)
        o = u @ w_kv.reshape(e, h, d).transpose(1, 0, 2)  # (B, H, T, D)
    else:
        raise ValueError(f"order must be one of {ORDERS}; got {order!r}")
    return o if b_v is None else o + b_v.reshape(h, 1, d)


def vcache_decode(
    q: Array, v_cache: Array, w_vk: Array, b_v: Array | None = None
) -> Array:
    """The V direction: cache V = X W_V (no b_V), rebuild K = V W_VK for the scores.

    W_VK = fold_w_kv(w_v, w_k). b_K is dropped (no RoPE: q.b_K is the same for
    every s and cancels in the softmax); b_V is added to the output.
    q (B, H, D); v_cache (B, S, H*D); w_vk (H*D, H*D). Returns (B, H, D).
    """
    h, d = q.shape[1:]
    k = split_heads(v_cache @ w_vk, h)  # (B, H, S, D): rebuilt keys
    o = decode_attention(q, k, split_heads(v_cache, h))  # (B, H, D)
    return o if b_v is None else o + b_v.reshape(h, d)


def xcache_decode(
    q: Array, x_cache: Array, w_k: Array, w_v: Array, b_v: Array | None = None
) -> Array:
    """Cache the layer input X and absorb W_K and W_V (MLA's absorbed decode).

    score_h,s = (q_h W_K,h^T) . x_s / sqrt(D),  out_h = (sum_s p_h,s x_s) W_V,h + b_V,h
    with W_K,h = W_K[:, g*D:(g+1)*D] for query head h's KV head g (MHA: g = h;
    GQA works too). No inverse. b_K is dropped: without RoPE, q_h . b_K,h is the
    same for every s and cancels in the softmax. RoPE cannot be applied to x.
    q (B, H, D); x_cache (B, S, C); w_k, w_v (C, G*D); b_v (G*D,) or None.
    Returns (B, H, D).
    """
    b, h, d = q.shape
    c, g = w_k.shape[0], w_k.shape[1] // d

    def per_head(w: Array) -> Array:  # (C, G*D) -> (H, C, D)
        return np.repeat(w.reshape(c, g, d).transpose(1, 0, 2), h // g, axis=0)

    q_abs = np.einsum("bhd,hcd->bhc", q, per_head(w_k))  # (B, H, C): q_h W_K,h^T
    p = softmax(np.einsum("bhc,bsc->bhs", q_abs, x_cache) / math.sqrt(d))  # (B,H,S)
    u = np.einsum("bhs,bsc->bhc", p, x_cache)  # (B, H, C)
    o = np.einsum("bhc,hcd->bhd", u, per_head(w_v))  # (B, H, D)
    if b_v is None:
        return o
    return o + np.repeat(b_v.reshape(g, d), h // g, axis=0)


def kv_lstsq_residual(x: Array, w_k: Array, w_v: Array, x_test: Array | None = None):
    """GQA/MQA (e < C): how far the best LINEAR map M from K to V is from exact.

    M = argmin ||K M - V||_F with K = X W_K, V = X W_V (X: (n, C), n >= C; W_K, W_V
    (C, e)). Returns ||K M - V||_F / ||V||_F on X (in-sample) and on x_test. Both
    are ~0 for e >= C; for e < C they stay large: V is not a function of K.
    """
    k, v = x @ w_k, x @ w_v  # (n, e)
    m = np.linalg.lstsq(k, v, rcond=None)[0]  # (e, e)
    res = np.linalg.norm(k @ m - v) / np.linalg.norm(v)
    if x_test is None:
        return float(res)
    kt, vt = x_test @ w_k, x_test @ w_v
    return float(res), float(np.linalg.norm(kt @ m - vt) / np.linalg.norm(vt))


def decode_costs(c: int, h: int, s: int) -> dict[str, tuple[int, int, int, int]]:
    """Slim attention's Table 2: per decoded token and layer, batch 1, MHA (C = H*D).

    (projection OPs, projection reads, attention OPs, attention reads) per variant;
    one multiply-add = 2 OPs, reads in values. Projections: W_Q, W_K, W_V (or
    W_KV), W_O, each C^2 values and 2 C^2 OPs. Attention over S cached tokens:
      vanilla      q.k and p.v for H heads of D: 4 S C OPs; reads K and V: 2 S C
      rebuild_v    V = K W_KV for all S tokens: +2 S C^2 projection OPs; reads S C
      accumulate_k q.k: 2 S C; sum_s p_h,s K_s for H heads over all C: 2 S C H
    """
    proj = (8 * c * c, 4 * c * c)
    return {
        "vanilla": (*proj, 4 * s * c, 2 * s * c),
        "rebuild_v": ((2 * s + 6) * c * c, 4 * c * c, 4 * s * c, s * c),
        "accumulate_k": (*proj, 2 * s * c * (h + 1), s * c),
    }


def slim_step_reads(params: float, cache: float, batch: int) -> float:
    """Values a memory-bound decode step reads per token: (params + B·cache) / B.

    Weights are read once per step and shared by the batch; each sequence reads
    its own cache. The paper's speedups are ratios of this quantity.
    """
    return (params + batch * cache) / batch


def whisper_slim_table(cfg: ModelConfig, batches: tuple[int, ...] = (1, 64)) -> dict:
    """Slim attention Table 7 for a Whisper config (values, not bytes).

    Decoder caches: cross KV 2·p·C·L over the p encoder frames, self KV 2·S·C·L over
    S decoder tokens; E-cache p·C (the encoder output). baseline = cross + self;
    option1 = K-only caches (half); option2 = self K-only, cross attention
    recomputed from the E-cache, which the paper keeps in SRAM and does NOT count
    ("savings" = baseline / option2; "savings_with_e" counts it). Parameters (as
    the paper counts them): C·V + L·(6·C² + 2·C·F), option1 + C²·L (cross W_KV),
    option2 + 2·C²·L (cross W_K and W_V, read every step). reads/speedup per batch
    size B from slim_step_reads.
    """
    c, n = cfg.d_model, cfg.n_layers
    p, s = need(cfg, "enc_context"), need(cfg, "context")
    cross, self_kv = kv_cache_values(cfg, p), kv_cache_values(cfg, s)
    base_params = c * need(cfg, "vocab") + n * (6 * c * c + 2 * c * need(cfg, "d_ff"))
    caches = {"baseline": cross + self_kv, "option1": (cross + self_kv) / 2,
              "option2": self_kv / 2}  # fmt: skip
    params = {"baseline": base_params, "option1": base_params + c * c * n,
              "option2": base_params + 2 * c * c * n}  # fmt: skip
    out = dict(
        e_cache=p * c, cross_kv=cross, self_kv=self_kv, decoder_tokens=s,
        cache=caches, params=params,
        savings=caches["baseline"] / caches["option2"],
        savings_with_e=caches["baseline"] / (caches["option2"] + p * c),
        reads={}, speedup={},
    )  # fmt: skip
    for b in batches:
        r = {k: slim_step_reads(params[k], caches[k], b) for k in caches}
        out["reads"][b] = r
        out["speedup"][b] = {k: r["baseline"] / r[k] for k in ("option1", "option2")}
    return out


def matrix_with_cond(
    c: int, kappa: float, rng: np.random.Generator, cols: int | None = None
) -> Array:
    """A (C, cols) float64 matrix with condition number kappa, entries var ~ 1/C.

    W = U diag(sigma) V^T with U, V random orthonormal and sigma geometrically
    spaced from 1 to 1/kappa, scaled so that ||W||_F^2 = cols (variance 1/C, the
    fan-in init), hence cond(W) = kappa exactly up to rounding.
    """
    e = c if cols is None else cols
    r = min(c, e)
    u = np.linalg.qr(rng.standard_normal((c, c)))[0][:, :r]  # (C, r)
    v = np.linalg.qr(rng.standard_normal((e, e)))[0][:, :r]  # (e, r)
    sigma = np.geomspace(1.0, 1.0 / kappa, r)
    return (u * sigma) @ v.T * math.sqrt(e / np.sum(sigma**2))  # (C, e)


def round_bf16(x: Array) -> Array:
    """Round float32 values to bfloat16 (NumPy has no bf16), returned as float32.

    bf16 is the top 16 bits of a float32. Round to nearest, ties to even: add
    0x7FFF plus the lowest kept bit, then clear the low 16 bits. Overflow gives
    inf, as in hardware; NaN stays NaN.
    """
    x = np.asarray(x, np.float32)
    bits = x.view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    out = bits.astype(np.uint32).view(np.float32)
    return np.where(np.isnan(x), x, out)


def stored(x: Array, storage: str) -> Array:
    """x rounded to ``storage`` and returned in the dtype arithmetic runs in.

    float64, float32: cast. float16, bfloat16: rounded, then float32 (16-bit
    storage, float32 arithmetic, as on tensor cores). Overflow gives inf.
    """
    if storage not in STORAGE:
        raise ValueError(f"storage must be one of {STORAGE}; got {storage!r}")
    if storage == "bfloat16":
        return round_bf16(np.asarray(x, np.float32))
    with np.errstate(over="ignore"):
        y = np.asarray(x).astype(storage)
    return y.astype(np.float32) if storage == "float16" else y


def rel_error(a: Array, ref: Array) -> float:
    """max|a - ref| / max|ref|; inf when a holds NaN or inf."""
    a = np.asarray(a, np.float64)
    if not np.all(np.isfinite(a)):
        return math.inf
    return float(np.abs(a - ref).max() / np.abs(ref).max())


# The text the chapter's MiniLM study encodes (and tools/export_minilm_slim.py, for
# the same study on the GPU).
MINILM_TEXT = (
    "Slim attention keeps only the keys of a multi-head attention layer "
    "and rebuilds the values from them with one extra matrix, because the "
    "key projection is square and almost never singular. Whether that is "
    "safe in sixteen-bit arithmetic is a question of how well conditioned "
    "that matrix is, and trained weights answer it."
)


def encoder_truth(x: Array, w: AttnWeights, h: int) -> Array:
    """The float64 truth of cache_errors: every token of x (T, C) queries the K and
    V caches of all T tokens (an encoder layer's attention, run as T decode steps).
    Returns (T, H, D), per head, before W_O: softmax(q K^T / sqrt(D)) V with
    q = x W_Q + b_Q, K = x W_K + b_K, V = x W_V + b_V."""
    x64 = np.asarray(x, np.float64)
    t, c = x64.shape

    def f64(a: Array | None) -> Array:
        return np.zeros(c) if a is None else np.asarray(a, np.float64)

    q = (x64 @ f64(w.w_q) + f64(w.b_q)).reshape(t, h, c // h)
    k = np.broadcast_to(x64 @ f64(w.w_k) + f64(w.b_k), (t, t, c))
    v = np.broadcast_to(x64 @ f64(w.w_v) + f64(w.b_v), (t, t, c))
    return kv_decode(q, k, v)


def cache_errors(x: Array, w: AttnWeights, h: int, storage: str) -> dict[str, float]:
    """Relative error (rel_error) of each cache choice against the float64 truth.

    Every token of x (T, C) queries a cache of all T tokens (an encoder layer's
    attention, run as T decode steps). Truth: the K+V baseline in float64. Each
    variant stores x, the weights, the folded matrix, q and its cache in
    ``storage`` and computes in float32 (float64 for "float64"):
      kv      the baseline, K and V caches;  k_only  K cache, V = K W_KV + b_V;
      v_dir   V cache, K = V W_VK;           x_cache X cache, absorbed weights.
    Also returns cond(W_K), cond(W_V) and max|W_KV|. Output per head, before W_O.
    """
    x64 = np.asarray(x, np.float64)
    t, c = x64.shape
    w64 = AttnWeights(*(None if a is None else np.asarray(a, np.float64) for a in (
        w.w_q, w.w_k, w.w_v, w.w_o, w.b_q, w.b_k, w.b_v, w.b_o)))  # fmt: skip
    w_kv, w_vk = fold_w_kv(w64.w_k, w64.w_v), fold_w_kv(w64.w_v, w64.w_k)

    def tile(a: Array) -> Array:  # (S, e) -> (T, S, e): one cache, T queries
        return np.broadcast_to(a, (t, *a.shape))

    def bias(b: Array | None) -> Array:
        return np.zeros(c) if b is None else b

    def run(st) -> dict[str, float]:
        xs, wq, wk, wv = st(x64), st(w64.w_q), st(w64.w_k), st(w64.w_v)
        bq, bk, bv = st(bias(w64.b_q)), st(bias(w64.b_k)), st(bias(w64.b_v))
        q = st(xs @ wq + bq).reshape(t, h, c // h)  # (T, H, D)
        with np.errstate(over="ignore", invalid="ignore"):
            return {
                "kv": kv_decode(q, tile(st(xs @ wk + bk)), tile(st(xs @ wv + bv))),
                "k_only": slim_decode(q, tile(st(xs @ wk)), st(w_kv), bv),
                "v_dir": vcache_decode(q, tile(st(xs @ wv)), st(w_vk), bv),
                "x_cache": xcache_decode(q, tile(xs), wk, wv, bv),
            }

    truth = encoder_truth(x64, w64, h)  # (T, H, D), float64
    out = {k: rel_error(v, truth) for k, v in run(lambda a: stored(a, storage)).items()}
    out["cond_k"] = float(np.linalg.cond(w64.w_k))
    out["cond_v"] = float(np.linalg.cond(w64.w_v))
    out["max_w_kv"] = float(np.abs(w_kv).max())
    return out
