"""Shared building blocks of a decoder, in plain NumPy (row vectors: y = x @ W).

Every function keeps the floating dtype it is given (pass float64 to get the truth).
Shapes: B batch, T query length (1 in decode), S cache length, H query heads, G KV
heads, D head dim, C width (= H*D), F FFN width, V vocab, L layers.
Imports: NumPy and the standard library only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

NORMS = ("layernorm", "rmsnorm")
ACTS = ("relu", "gelu", "gelu_tanh", "swiglu")
Array = np.ndarray


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """softmax(x)_i = exp(x_i - max x) / sum_j exp(x_j - max x), along ``axis``."""
    x = np.asarray(x)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def layer_norm(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5
) -> np.ndarray:
    """LayerNorm over the last axis: (x - mean) / sqrt(var + eps) * gamma + beta.

    x: (..., C); gamma, beta: (C,). Returns (..., C) in x's dtype.
    """
    mu = x.mean(axis=-1, keepdims=True)  # (..., 1)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)  # (..., 1)
    y = (x - mu) / np.sqrt(var + x.dtype.type(eps))
    return (y * gamma + beta).astype(x.dtype, copy=False)


_erf = np.frompyfunc(math.erf, 1, 1)


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU, exact form (BERT): x * Phi(x) = x/2 * (1 + erf(x / sqrt(2)))."""
    x = np.asarray(x)
    phi = 0.5 * (1.0 + _erf(x.astype(np.float64) / math.sqrt(2.0)).astype(np.float64))
    return (x * phi).astype(x.dtype, copy=False)


def rms_norm(x: Array, gamma: Array, eps: float = 1e-6) -> Array:
    """RMSNorm (Zhang & Sennrich 2019): x / sqrt(mean(x^2) + eps) * gamma.

    x: (..., C); gamma: (C,). Returns (..., C) in x's dtype.
    """
    ms = (x * x).mean(axis=-1, keepdims=True)  # (..., 1)
    y = x / np.sqrt(ms + x.dtype.type(eps))
    return (y * gamma).astype(x.dtype, copy=False)


def relu(x: Array) -> Array:
    """ReLU: max(x, 0), elementwise."""
    return np.maximum(x, 0)


def gelu_tanh(x: Array) -> Array:
    """GELU, tanh form (GPT-2): x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))."""
    c = math.sqrt(2.0 / math.pi)
    return 0.5 * x * (1.0 + np.tanh(c * (x + 0.044715 * x**3)))


def silu(x: Array) -> Array:
    """SiLU (swish): x * sigmoid(x) = x / (1 + exp(-x)), elementwise."""
    with np.errstate(over="ignore"):  # x << 0: exp(-x) = inf, x / inf = -0 (the limit)
        return x / (1.0 + np.exp(-x))


def rope_cos_sin(
    positions: Array, rot_dim: int, base: float = 10000.0
) -> tuple[Array, Array]:
    """RoPE tables (Su et al. 2021): angle[t, i] = positions[t] * base^(-2i / rot_dim).

    positions: (T,) ints. Returns cos, sin: each (T, rot_dim // 2), float64.
    """
    inv_freq = base ** (-np.arange(0, rot_dim, 2, dtype=np.float64) / rot_dim)
    angle = np.asarray(positions, np.float64)[:, None] * inv_freq  # (T, rot_dim/2)
    return np.cos(angle), np.sin(angle)


def apply_rope(
    x: Array,
    positions: Array,
    rot_dim: int | None = None,
    base: float = 10000.0,
    inverse: bool = False,
) -> Array:
    """Rotary embedding, GPT-NeoX "rotate half" form, on the first R = rot_dim dims.

    With x1 = x[..., :R/2], x2 = x[..., R/2:R] and (cos, sin) from rope_cos_sin:
        y1 = x1 cos - x2 sin,   y2 = x2 cos + x1 sin,   y[..., R:] = x[..., R:]
    (partial rotary, as Pythia with R = D/4). inverse=True rotates by -angle.
    x: (..., T, D); positions: (T,) ints; R even, 0 <= R <= D, default D.
    Returns (..., T, D) in x's dtype.
    """
    d = x.shape[-1]
    r = d if rot_dim is None else rot_dim
    if r % 2 or not 0 <= r <= d:
        raise ValueError(f"rot_dim must be even and in [0, D={d}]; got {r}")
    positions = np.asarray(positions)
    if positions.shape != x.shape[-2:-1]:
        raise ValueError(f"positions {positions.shape} must be (T,) for x {x.shape}")
    cos, sin = (a.astype(x.dtype) for a in rope_cos_sin(positions, r, base))
    if inverse:
        sin = -sin
    x1, x2 = x[..., : r // 2], x[..., r // 2 : r]  # (..., T, R/2) each
    y = [x1 * cos - x2 * sin, x2 * cos + x1 * sin, x[..., r:]]
    return np.concatenate(y, axis=-1)  # (..., T, D)


def _kv_heads(q_shape: tuple[int, ...], k: Array, v: Array) -> int:
    """Check k, v (B, G, S, D) against q (B, H, [T,] D) with H % G == 0; return G."""
    b, h, d = q_shape[0], q_shape[1], q_shape[-1]
    if k.ndim != 4 or k.shape != v.shape or k.shape[0] != b or k.shape[3] != d:
        raise ValueError(
            f"k, v must both be (B={b}, G, S, D={d}); got {k.shape}, {v.shape}"
        )
    if k.shape[1] == 0 or h % k.shape[1]:
        raise ValueError(f"H={h} query heads is not a multiple of G={k.shape[1]}")
    return k.shape[1]


def attention(
    q: Array, k: Array, v: Array, *, causal: bool = True, q_offset: int = 0
) -> Array:
    """Scaled dot-product attention (Vaswani et al. 2017) with grouped KV heads.

    o = softmax(q k^T / sqrt(D) + M) v, where query head h reads KV head h // (H/G)
    (MHA: G = H; GQA: 1 < G < H; MQA: G = 1). If causal, query t sits at absolute
    position q_offset + t and M[t, s] = -inf for s > q_offset + t; otherwise M = 0.
    q: (B, H, T, D); k, v: (B, G, S, D). Returns (B, H, T, D) in q's dtype.
    """
    if q.ndim != 4:
        raise ValueError(f"q must be (B, H, T, D); got {q.shape}")
    b, h, t, d = q.shape
    g, s = _kv_heads(q.shape, k, v), k.shape[2]
    k = np.repeat(k, h // g, axis=1)  # (B, H, S, D)
    v = np.repeat(v, h // g, axis=1)  # (B, H, S, D)
    scores = q @ k.swapaxes(-1, -2) / math.sqrt(d)  # (B, H, T, S)
    if causal:
        hidden = np.arange(s)[None, :] > q_offset + np.arange(t)[:, None]  # (T, S)
        scores = np.where(hidden, scores.dtype.type(-np.inf), scores)
    return softmax(scores) @ v  # (B, H, T, D)


def decode_attention(q: Array, k_cache: Array, v_cache: Array) -> Array:
    """Decode attention: one new token per sequence attends to its whole cache.

    With j = h // (H/G):  s[b,h,n] = q[b,h] . k[b,j,n] / sqrt(D),  p = softmax_n(s),
    o[b,h] = sum_n p[b,h,n] v[b,j,n]. No mask: the cache holds only past tokens and
    the new one. This is the specification of the GPU decode-attention kernel.
    q: (B, H, D); k_cache, v_cache: (B, G, S, D). Returns (B, H, D) in q's dtype.
    """
    if q.ndim != 3:
        raise ValueError(f"q must be (B, H, D); got {q.shape}")
    h, g = q.shape[1], _kv_heads(q.shape, k_cache, v_cache)
    k = np.repeat(k_cache, h // g, axis=1)  # (B, H, S, D)
    v = np.repeat(v_cache, h // g, axis=1)  # (B, H, S, D)
    s = np.einsum("bhd,bhnd->bhn", q, k) / math.sqrt(q.shape[-1])  # (B, H, S)
    return np.einsum("bhn,bhnd->bhd", softmax(s), v)  # (B, H, D)


def _linear(x: Array, w: Array, b: Array | None) -> Array:
    """y = x @ w (+ b): (..., in) -> (..., out)."""
    y = x @ w
    return y if b is None else y + b


@dataclass(frozen=True)
class MLPWeights:
    """Weights of a position-wise FFN (row vectors: h = x @ w_in + b_in)."""

    w_in: Array  # (C, F)
    b_in: Array | None  # (F,)
    w_out: Array  # (F, C)
    b_out: Array | None  # (C,)
    w_gate: Array | None = None  # (C, F), SwiGLU only


def mlp(x: Array, w: MLPWeights, act: str) -> Array:
    """FFN: act(x W_in + b_in) W_out + b_out, act in relu, gelu, gelu_tanh; or
    SwiGLU (Shazeer 2020): (silu(x W_gate) * (x W_in + b_in)) W_out + b_out.

    x: (..., C) -> (..., C).
    """
    acts = {"relu": relu, "gelu": gelu, "gelu_tanh": gelu_tanh}
    if act == "swiglu":
        if w.w_gate is None:
            raise ValueError("act='swiglu' needs w_gate")
        h = silu(x @ w.w_gate) * _linear(x, w.w_in, w.b_in)  # (..., F)
    elif act in acts:
        h = acts[act](_linear(x, w.w_in, w.b_in))  # (..., F)
    else:
        raise ValueError(f"act must be one of {ACTS}; got {act!r}")
    return _linear(h, w.w_out, w.b_out)  # (..., C)


@dataclass(frozen=True)
class AttnWeights:
    """Projections of one attention layer (row vectors: q = x @ w_q + b_q)."""

    w_q: Array  # (C, H*D)
    w_k: Array  # (C, G*D)
    w_v: Array  # (C, G*D)
    w_o: Array  # (H*D, C)
    b_q: Array | None = None  # (H*D,)
    b_k: Array | None = None  # (G*D,)
    b_v: Array | None = None  # (G*D,)
    b_o: Array | None = None  # (C,)


@dataclass(frozen=True)
class KVCache:
    """Keys and values of the S tokens seen so far, one layer. Keys are stored AFTER
    RoPE (standard practice: each key is rotated once, at its own position)."""

    k: Array  # (B, G, S, D)
    v: Array  # (B, G, S, D)

    @staticmethod
    def empty(b: int, g: int, d: int, dtype=np.float64) -> KVCache:
        """A cache with S = 0: k, v of shape (B, G, 0, D)."""
        z = np.zeros((b, g, 0, d), dtype)
        return KVCache(z, z)

    def append(self, k_new: Array, v_new: Array) -> KVCache:
        """A new cache with k_new, v_new (B, G, T, D) appended; self is unchanged."""
        k = np.concatenate([self.k, k_new], axis=2)  # (B, G, S + T, D)
        v = np.concatenate([self.v, v_new], axis=2)  # (B, G, S + T, D)
        return KVCache(k, v)


Caches = tuple[KVCache, ...]  # one per layer


@dataclass(frozen=True)
class NormWeights:
    """Gain and (LayerNorm only) bias of a norm."""

    gamma: Array  # (C,)
    beta: Array | None = None  # (C,), LayerNorm only


def norm(x: Array, w: NormWeights, kind: str) -> Array:
    """LayerNorm (eps 1e-5; beta None means 0) or RMSNorm (eps 1e-6) of x (..., C)."""
    if kind == "layernorm":
        beta = np.zeros_like(w.gamma) if w.beta is None else w.beta
        return layer_norm(x, w.gamma, beta)
    if kind == "rmsnorm":
        return rms_norm(x, w.gamma)
    raise ValueError(f"norm must be one of {NORMS}; got {kind!r}")


@dataclass(frozen=True)
class DecoderConfig:
    """Shape and flavour of a decoder. parallel=False: pre-norm serial block (GPT-2,
    Llama); True: parallel block (GPT-J, Pythia). rot_dim=None rotates all D dims."""

    V: int
    C: int
    H: int
    G: int
    D: int
    F: int
    L: int
    parallel: bool = False
    norm: str = "rmsnorm"
    act: str = "swiglu"
    rot_dim: int | None = None
    rope_base: float = 10000.0

    def __post_init__(self):
        r = self.D if self.rot_dim is None else self.rot_dim
        if self.G < 1 or self.H % self.G or r % 2 or not 0 <= r <= self.D:
            raise ValueError(f"need H % G == 0 and even rot_dim <= D: {self}")
        if self.norm not in NORMS or self.act not in ACTS:
            raise ValueError(f"norm in {NORMS}, act in {ACTS}: {self}")


@dataclass(frozen=True)
class LayerWeights:
    """One block: norm1 before attention, norm2 before the MLP."""

    norm1: NormWeights
    attn: AttnWeights
    norm2: NormWeights
    mlp: MLPWeights


@dataclass(frozen=True)
class DecoderWeights:
    """A whole decoder: logits = norm_f(blocks(embed[tokens])) @ unembed."""

    embed: Array  # (V, C)
    layers: tuple[LayerWeights, ...]  # L of them
    norm_f: NormWeights
    unembed: Array  # (C, V)


def attention_layer(
    x: Array, w: AttnWeights, cfg: DecoderConfig, cache: KVCache
) -> tuple[Array, KVCache]:
    """Causal self-attention of T new tokens over cache + themselves.

    q, k, v = x W_q, x W_k, x W_v (+ biases), split in heads; RoPE on q and k at
    positions S..S+T-1; k (rotated) and v appended to the cache; o W_o + b_o.
    T = 1 (decode) goes through decode_attention. x: (B, T, C) -> (B, T, C).
    """
    b, t, _ = x.shape
    s0 = cache.k.shape[2]  # S, tokens already cached
    pos = np.arange(s0, s0 + t)  # absolute positions of the new tokens

    def heads(y, n):  # (B, T, n*D) -> (B, n, T, D)
        return y.reshape(b, t, n, cfg.D).transpose(0, 2, 1, 3)

    q = heads(_linear(x, w.w_q, w.b_q), cfg.H)  # (B, H, T, D)
    k = heads(_linear(x, w.w_k, w.b_k), cfg.G)  # (B, G, T, D)
    v = heads(_linear(x, w.w_v, w.b_v), cfg.G)  # (B, G, T, D)
    q = apply_rope(q, pos, cfg.rot_dim, cfg.rope_base)
    cache = cache.append(apply_rope(k, pos, cfg.rot_dim, cfg.rope_base), v)
    if t == 1:
        o = decode_attention(q[:, :, 0], cache.k, cache.v)[:, :, None]  # (B, H, 1, D)
    else:
        o = attention(q, cache.k, cache.v, causal=True, q_offset=s0)  # (B, H, T, D)
    o = o.transpose(0, 2, 1, 3).reshape(b, t, cfg.H * cfg.D)  # (B, T, H*D)
    return _linear(o, w.w_o, w.b_o), cache  # (B, T, C)


def serial_block(
    x: Array, w: LayerWeights, cfg: DecoderConfig, cache: KVCache
) -> tuple[Array, KVCache]:
    """Pre-norm block (GPT-2, Llama): h = x + Attn(N1(x)); y = h + MLP(N2(h)).

    x: (B, T, C) at positions S..S+T-1 (S = cache.length; T = 1 to decode).
    Returns y (B, T, C) and the cache grown to S + T.
    """
    a, cache = attention_layer(norm(x, w.norm1, cfg.norm), w.attn, cfg, cache)
    h = x + a
    return h + mlp(norm(h, w.norm2, cfg.norm), w.mlp, cfg.act), cache


def parallel_block(
    x: Array, w: LayerWeights, cfg: DecoderConfig, cache: KVCache
) -> tuple[Array, KVCache]:
    """Parallel block (GPT-J, Pythia): y = x + Attn(N1(x)) + MLP(N2(x)).

    Shapes and cache as serial_block.
    """
    a, cache = attention_layer(norm(x, w.norm1, cfg.norm), w.attn, cfg, cache)
    return x + a + mlp(norm(x, w.norm2, cfg.norm), w.mlp, cfg.act), cache


def init_decoder(
    cfg: DecoderConfig, rng: np.random.Generator, dtype=np.float64
) -> DecoderWeights:
    """Random weights, N(0, 1/fan_in) matrices so activations stay O(1).

    Embedding N(0, 1); gammas 1 + 0.1 N(0, 1); betas and biases 0.1 N(0, 1), present
    only with norm='layernorm' (GPT-NeoX style; 'rmsnorm' models, like Llama, have
    none); w_gate only with act='swiglu'.
    """
    c, f, hd, gd = cfg.C, cfg.F, cfg.H * cfg.D, cfg.G * cfg.D
    ln = cfg.norm == "layernorm"

    def mat(n_in, n_out):  # N(0, 1/n_in)
        return (rng.standard_normal((n_in, n_out)) / math.sqrt(n_in)).astype(dtype)

    def vec(n, mean=0.0, present=True):  # mean + 0.1 N(0, 1), or None
        return (mean + 0.1 * rng.standard_normal(n)).astype(dtype) if present else None

    def layer():
        b = [vec(n, present=ln) for n in (hd, gd, gd, c, f, c)]
        attn = AttnWeights(mat(c, hd), mat(c, gd), mat(c, gd), mat(hd, c), *b[:4])
        gate = mat(c, f) if cfg.act == "swiglu" else None
        ffn = MLPWeights(mat(c, f), b[4], mat(f, c), b[5], gate)
        norm1, norm2 = (NormWeights(vec(c, 1.0), vec(c, present=ln)) for _ in range(2))
        return LayerWeights(norm1, attn, norm2, ffn)

    layers = tuple(layer() for _ in range(cfg.L))
    embed = rng.standard_normal((cfg.V, c)).astype(dtype)
    norm_f = NormWeights(vec(c, 1.0), vec(c, present=ln))
    return DecoderWeights(embed, layers, norm_f, mat(c, cfg.V))


def prefill(
    weights: DecoderWeights,
    cfg: DecoderConfig,
    tokens: Array,
    caches: Caches | None = None,
) -> tuple[Array, Caches]:
    """Causal forward of T tokens per sequence: logits = N_f(blocks(E[tokens])) U.

    tokens: (B, T) ints in [0, V), at positions S..S+T-1 after the L caches (None:
    empty, S = 0). Returns logits (B, T, V) in the weights' dtype and the L caches
    grown to S + T (keys stored after RoPE).
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.size and (tokens.min() < 0 or tokens.max() >= cfg.V):
        raise ValueError(f"tokens must be (B, T) ints in [0, V={cfg.V})")
    if caches is None:
        dt = weights.embed.dtype
        caches = tuple(
            KVCache.empty(tokens.shape[0], cfg.G, cfg.D, dt) for _ in range(cfg.L)
        )
    block = parallel_block if cfg.parallel else serial_block
    x = weights.embed[tokens]  # (B, T, C)
    grown = []
    for w, cache in zip(weights.layers, caches, strict=True):
        x, cache = block(x, w, cfg, cache)
        grown.append(cache)
    logits = norm(x, weights.norm_f, cfg.norm) @ weights.unembed  # (B, T, V)
    return logits, tuple(grown)


def decode_step(
    weights: DecoderWeights, cfg: DecoderConfig, token: Array, caches: Caches | None
) -> tuple[Array, Caches]:
    """One decode step: token (B,) at position S -> logits (B, V), caches S + 1."""
    logits, caches = prefill(weights, cfg, np.asarray(token)[:, None], caches)
    return logits[:, 0], caches  # (B, V)


def greedy_generate(
    weights: DecoderWeights, cfg: DecoderConfig, prompt: Array, n_new: int
) -> Array:
    """Greedy decoding: prefill prompt (B, T0), then n_new times append the argmax
    token and decode it. Returns all tokens, (B, T0 + n_new)."""
    tokens = np.asarray(prompt)
    logits, caches = prefill(weights, cfg, tokens)
    last = logits[:, -1]  # (B, V)
    for i in range(n_new):
        if i:
            last, caches = decode_step(weights, cfg, tokens[:, -1], caches)
        nxt = last.argmax(axis=-1)  # (B,)
        tokens = np.concatenate([tokens, nxt[:, None]], axis=1)  # (B, T0 + i + 1)
    return tokens
