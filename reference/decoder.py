"""The capstone: one decoder in which the exact tricks of the chapters compose.

The model family is reference.common's Llama-shaped decoder restricted to what every
trick below needs: multi-head attention with a square W_K (G = H, C = H*D), RMSNorm,
ReLU MLPs, serial pre-norm blocks, RoPE on the first R = rot_dim dims of each head,
and no biases. ``Tricks`` picks what runs:

  precompute  layer 1's pre-RoPE Q, K, V (and x) are gathered from the enlarged
              embedding table [x | N1(x) W_Q | N1(x) W_K | N1(x) W_V] (precompute.py)
  cache "kv"  the baseline: K after RoPE and V, 2 G*D values per token and layer
  cache "k"   slim attention: raw keys x W_K before RoPE, rotated on read for the
              scores, V = K W_KV, W_KV = W_K^-1 W_V (slim_attention.py): G*D values
  cache "x"   the normed layer input N1(x), W_K and W_V absorbed as in MLA's decode;
              RoPE keeps the rotary R dims of each key from being absorbed (R_s sits
              between q and W_K), so those are rebuilt from x on read: C values
  kept        Deja Vu's sparse MLP over an ORACLE set (deja_vu.py): per token the
              ceil(kept F) neurons with the largest pre-activations. Random weights
              have no trained predictor, so the oracle reads all of W_in; it shows
              what a perfect predictor of that size would give. With ReLU it is
              exact once ceil(kept F) >= the token's active count.

precompute, "k" and "x" are exact rewrites (rounding aside); kept is exact only above
every token's active fraction. ``prepare`` derives the weights once (table, W_KV,
neuron-major W_in^T) and keeps only the arrays the chosen tricks read, so
``weight_bytes`` and ``cache_bytes`` give the capacity figure of the chapter.
With precompute, layer 1 reads only the slices of a row its cache kind needs (kv: x,
q, k, v; k: x, q, k; x: x, q; the table is build_table's, all slices counted),
and its cache is of the same kind as the others.

Shapes: B batch, T new tokens, S cache length, H heads (= G), D head dim, C width
(= H*D), F FFN width, V vocab, L layers, N = B*T rows. Imports: NumPy, the standard
library and reference.common, precompute, slim_attention, deja_vu.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from reference import common as cm
from reference import deja_vu as dv
from reference import precompute as pc
from reference import slim_attention as sa

Array = np.ndarray
CACHES = ("kv", "k", "x")


@dataclass(frozen=True)
class Tricks:
    """Which exact tricks run. kept=None: dense MLP; else the oracle fraction."""

    precompute: bool = False
    cache: str = "kv"
    kept: float | None = None

    def __post_init__(self):
        if not isinstance(self.precompute, bool):
            raise TypeError(f"precompute must be a bool; got {self.precompute!r}")
        if not isinstance(self.cache, str):
            raise TypeError(f"cache must be a str in {CACHES}; got {self.cache!r}")
        if self.cache not in CACHES:
            raise ValueError(f"cache must be one of {CACHES}; got {self.cache!r}")
        k = self.kept
        if k is None:
            return
        if isinstance(k, bool) or not isinstance(k, numbers.Real):
            raise TypeError(f"kept must be None or a real in (0, 1]; got {k!r}")
        if not 0 < k <= 1:  # NaN fails too
            raise ValueError(f"kept must lie in (0, 1]; got {k!r}")


def check_config(cfg: cm.DecoderConfig) -> None:
    """ValueError unless cfg is the family: G = H, C = H*D, rmsnorm, relu, serial."""
    if not isinstance(cfg, cm.DecoderConfig):
        raise TypeError(f"cfg must be a reference.common.DecoderConfig; got {cfg!r}")
    need = {
        "MHA (G == H)": cfg.G == cfg.H,
        "a square W_K (C == H*D)": cfg.C == cfg.H * cfg.D,
        "norm='rmsnorm' (the family has no biases)": cfg.norm == "rmsnorm",
        "act='relu' (Deja Vu's exact sparsity)": cfg.act == "relu",
        "serial blocks (parallel=False)": not cfg.parallel,
    }
    bad = [k for k, ok in need.items() if not ok]
    if bad:
        raise ValueError(f"cfg must have {', '.join(bad)}; got {cfg}")


def _check_tricks(tricks: Tricks) -> None:
    if not isinstance(tricks, Tricks):
        raise TypeError(f"tricks must be a Tricks; got {tricks!r}")


def _check_weights(w: cm.DecoderWeights, cfg: cm.DecoderConfig) -> None:
    if not isinstance(w, cm.DecoderWeights):
        raise TypeError(f"weights must be reference.common.DecoderWeights; got {w!r}")
    if w.embed.shape != (cfg.V, cfg.C) or len(w.layers) != cfg.L:
        raise ValueError(f"weights: embed {w.embed.shape}, {len(w.layers)} layers")
    for lw in w.layers:
        a, m = lw.attn, lw.mlp
        biases = (a.b_q, a.b_k, a.b_v, a.b_o, m.b_in, m.b_out, lw.norm1.beta,
                  lw.norm2.beta, m.w_gate)  # fmt: skip
        if any(b is not None for b in biases):
            raise ValueError("weights: the family has no biases, betas or w_gate")


@dataclass(frozen=True)
class TrickLayer:
    """What one layer reads under the tricks; None where it reads nothing."""

    norm1: cm.NormWeights | None  # None in layer 1 with precompute (unless "x")
    w_q: Array | None  # (C, H*D); None in layer 1 with precompute
    w_k: Array | None  # (C, H*D); None in layer 1 with precompute (unless "x")
    w_v: Array | None  # (C, H*D); caches "kv" (not layer 1 with precompute), "x"
    w_kv: Array | None  # (H*D, H*D) = W_K^-1 W_V; cache "k" only
    w_o: Array  # (H*D, C)
    norm2: cm.NormWeights
    w_in: Array | None  # (C, F); dense MLP only
    w1: Array | None  # (F, C) = W_in^T, neuron-major; sparse MLP only
    w_out: Array  # (F, C)


@dataclass(frozen=True)
class TrickModel:
    """A decoder prepared for its tricks (``prepare``)."""

    cfg: cm.DecoderConfig
    tricks: Tricks
    embed: Array | None  # (V, C); None with precompute: the table's x slice
    table: Array | None  # (V, C + 3 H*D), precompute only
    layers: tuple[TrickLayer, ...]
    norm_f: cm.NormWeights
    unembed: Array  # (C, V)


def _reads(tricks: Tricks, first: bool) -> set[str]:
    """Names of the TrickLayer arrays a layer reads (first: layer 1)."""
    tab, kind = first and tricks.precompute, tricks.cache
    out = {"w_o", "norm2", "w_out", "w_in" if tricks.kept is None else "w1"}
    if not tab:
        out |= {"norm1", "w_q", "w_k"} | ({"w_v"} if kind == "kv" else set())
    return out | {"k": {"w_kv"}, "x": {"norm1", "w_k", "w_v"}, "kv": set()}[kind]


def prepare(
    weights: cm.DecoderWeights, cfg: cm.DecoderConfig, tricks: Tricks
) -> TrickModel:
    """Derive once what the tricks read: the table (pc.build_table, layer 1), W_KV =
    W_K^-1 W_V per layer (sa.fold_w_kv, solved in float64), W_in^T neuron-major.
    Arrays a trick makes unnecessary are dropped (None). Returns a TrickModel in
    the weights' dtype."""
    check_config(cfg)
    _check_weights(weights, cfg)
    _check_tricks(tricks)
    layers = []
    for i, lw in enumerate(weights.layers):
        a = lw.attn
        full = dict(norm1=lw.norm1, w_q=a.w_q, w_k=a.w_k, w_v=a.w_v, w_o=a.w_o,
                    norm2=lw.norm2, w_in=lw.mlp.w_in, w_out=lw.mlp.w_out)  # fmt: skip
        if tricks.cache == "k":
            full["w_kv"] = sa.fold_w_kv(a.w_k, a.w_v)  # (C, C)
        if tricks.kept is not None:
            full["w1"] = np.ascontiguousarray(lw.mlp.w_in.T)  # (F, C)
        reads = _reads(tricks, i == 0)
        names = TrickLayer.__dataclass_fields__
        layers.append(
            TrickLayer(**{n: full.get(n) if n in reads else None for n in names})
        )
    tab = (
        pc.build_table(weights.embed, weights.layers[0], cfg)
        if tricks.precompute
        else None
    )
    embed = None if tricks.precompute else weights.embed
    return TrickModel(
        cfg, tricks, embed, tab, tuple(layers), weights.norm_f, weights.unembed
    )


# --- caches, one per layer ----------------------------------------------------------


@dataclass(frozen=True)
class KCache:
    """Slim attention's cache of one layer: raw keys x W_K BEFORE RoPE. They are
    rotated on read for the scores only: V = K W_KV needs the unrotated keys."""

    k: Array  # (B, S, H*D)


@dataclass(frozen=True)
class XCache:
    """The X cache of one layer: the normed layer inputs N1(x)."""

    x: Array  # (B, S, C)


LayerCache = cm.KVCache | KCache | XCache
Caches = tuple[LayerCache, ...]  # one per layer
_CACHE_TYPE = {"kv": cm.KVCache, "k": KCache, "x": XCache}


def cache_length(cache: LayerCache) -> int:
    """S, the tokens a layer cache holds."""
    return cache.k.shape[2] if isinstance(cache, cm.KVCache) else _rows(cache).shape[1]


def _rows(cache: KCache | XCache) -> Array:
    return cache.k if isinstance(cache, KCache) else cache.x


def empty_caches(model: TrickModel, b: int) -> Caches:
    """L empty caches (S = 0) of the model's kind for a batch of b sequences."""
    cfg, dt = model.cfg, model.unembed.dtype
    kind = model.tricks.cache
    if kind == "kv":
        return tuple(cm.KVCache.empty(b, cfg.G, cfg.D, dt) for _ in range(cfg.L))
    width = cfg.G * cfg.D if kind == "k" else cfg.C
    z = np.zeros((b, 0, width), dt)
    return tuple(_CACHE_TYPE[kind](z) for _ in range(cfg.L))


# --- attention over each cache kind -------------------------------------------------


def xcache_attention(
    q: Array,
    x_cache: Array,
    w_k: Array,
    w_v: Array,
    cfg: cm.DecoderConfig,
    q_offset: int,
) -> Array:
    """Causal attention of T rotated queries over an X cache, weights absorbed.

    With R = rot_dim, the key of head h splits into its rotary dims r (the first R)
    and the rest p; R_s is RoPE at position s:
        score[h,t,s] = (q^p_ht (W^p_Kh)^T . x_s + q^r_ht . R_s(x_s W^r_Kh)) / sqrt(D)
        o[h,t] = (sum_s softmax_s(score)[h,t,s] x_s) W_V,h
    The p part and the value side are MLA's absorption (no K or V formed); R_s sits
    between q and W^r_K and depends on s, so the R rotary dims of every key are
    rebuilt from x on read (2 S C R FLOPs per head; R = D rebuilds all of K). Query
    t sits at q_offset + t and sees s <= q_offset + t.
    q (B, H, T, D) after RoPE; x_cache (B, S, C); w_k, w_v (C, H*D).
    Returns (B, H, T, D) in q's dtype.
    """
    b, h, t, d = q.shape
    s, c = x_cache.shape[1:]
    r = d if cfg.rot_dim is None else cfg.rot_dim
    wk = w_k.reshape(c, h, d).transpose(1, 0, 2)  # (H, C, D)
    q_abs = np.einsum("bhtd,hcd->bhtc", q[..., r:], wk[..., r:])  # (B, H, T, C)
    scores = np.einsum("bhtc,bsc->bhts", q_abs, x_cache)  # (B, H, T, S)
    if r:
        k_r = np.einsum("bsc,hcd->bhsd", x_cache, wk[..., :r])  # (B, H, S, R)
        k_r = cm.apply_rope(k_r, np.arange(s), r, cfg.rope_base)
        scores = scores + q[..., :r] @ k_r.swapaxes(-1, -2)  # (B, H, T, S)
    scores = scores / math.sqrt(d)
    hidden = np.arange(s)[None, :] > q_offset + np.arange(t)[:, None]  # (T, S)
    scores = np.where(hidden, scores.dtype.type(-np.inf), scores)
    u = cm.softmax(scores) @ x_cache[:, None]  # (B, H, T, C)
    return np.einsum("bhtc,hcd->bhtd", u, w_v.reshape(c, h, d).transpose(1, 0, 2))


def _attend_kv(q, k, v, cache: cm.KVCache, cfg):
    """Baseline: rotate q, k at S..S+T-1; cache R(k), v; attend (common's code)."""
    s0, t = cache.k.shape[2], q.shape[1]
    pos = np.arange(s0, s0 + t)
    q = cm.apply_rope(sa.split_heads(q, cfg.H), pos, cfg.rot_dim, cfg.rope_base)
    k = cm.apply_rope(sa.split_heads(k, cfg.H), pos, cfg.rot_dim, cfg.rope_base)
    cache = cache.append(k, sa.split_heads(v, cfg.H))
    if t == 1:
        return cm.decode_attention(q[:, :, 0], cache.k, cache.v)[:, :, None], cache
    return cm.attention(q, cache.k, cache.v, causal=True, q_offset=s0), cache


def _attend_k(q, k, w_kv, cache: KCache, cfg):
    """Slim attention: cache raw k; RoPE on read for the scores; V = K W_KV."""
    s0, t = cache.k.shape[1], q.shape[1]
    q = cm.apply_rope(
        sa.split_heads(q, cfg.H), np.arange(s0, s0 + t), cfg.rot_dim, cfg.rope_base
    )
    cache = KCache(np.concatenate([cache.k, k], axis=1))  # (B, S + T, H*D)
    rope = dict(
        positions=np.arange(s0 + t), rot_dim=cfg.rot_dim, rope_base=cfg.rope_base
    )
    if t == 1:
        o = sa.slim_decode(q[:, :, 0], cache.k, w_kv, None, "accumulate_k", **rope)
        return o[:, :, None], cache  # (B, H, 1, D)
    o = sa.slim_attention(q, cache.k, w_kv, None, "accumulate_k", True, s0, **rope)
    return o, cache


def _attend_x(q, xn, w_k, w_v, cache: XCache, cfg):
    """X cache: cache N1(x); absorbed attention (xcache_attention)."""
    s0, t = cache.x.shape[1], q.shape[1]
    q = cm.apply_rope(
        sa.split_heads(q, cfg.H), np.arange(s0, s0 + t), cfg.rot_dim, cfg.rope_base
    )
    cache = XCache(np.concatenate([cache.x, xn], axis=1))  # (B, S + T, C)
    return xcache_attention(q, cache.x, w_k, w_v, cfg, s0), cache


# --- the MLP: dense, or Deja Vu over the oracle set -------------------------------


def oracle_sparse_mlp(x: Array, w1: Array, w_out: Array, kept: float) -> Array:
    """Deja Vu's sparse ReLU MLP over an ORACLE set, one set per row.

    z = x W_in (all F neurons: the oracle, standing in for a trained predictor),
    T_n = the K = ceil(kept F) largest z_n (dv.top_k_ids: ties to the lower id),
    y_n = relu(x_n W_in[:, T_n]) W_out[T_n, :]  (dv.sparse_mlp, rows of w1, w_out).
    Exact (rounding aside) when K >= |{i : z_n,i > 0}| for every row n.
    x (..., C); w1 (F, C) = W_in^T; w_out (F, C). Returns (..., C) in x's dtype.
    """
    f, c = w1.shape
    sw = dv.SparseMLPWeights(w1, np.zeros(f, w1.dtype), w_out, np.zeros(c, w1.dtype))
    rows = x.reshape(-1, c)  # (N, C)
    ids = dv.top_k_ids(dv.preactivations(rows, sw), min(f, math.ceil(kept * f)))
    y = [dv.sparse_mlp(rows[n : n + 1], sw, ids[n]) for n in range(rows.shape[0])]
    return np.concatenate(y, axis=0).reshape(x.shape)  # (..., C)


def _mlp(x: Array, lay: TrickLayer, kept: float | None) -> Array:
    if kept is None:
        return cm.mlp(x, cm.MLPWeights(lay.w_in, None, lay.w_out, None), "relu")
    return oracle_sparse_mlp(x, lay.w1, lay.w_out, kept)


# --- the decoder ----------------------------------------------------------------------


def _layer(x: Array, lay: TrickLayer, model: TrickModel, cache, row=None):
    """One serial block: h = x + Attn(N1(x)), y = h + MLP(N2(h)). row (B, T, W):
    layer 1's table rows (precompute), which replace N1 and W_Q, W_K, W_V."""
    cfg, kind = model.cfg, model.tricks.cache
    xn = None if lay.norm1 is None else cm.norm(x, lay.norm1, "rmsnorm")  # (B, T, C)
    if row is not None:
        lay_ = pc.row_layout(cfg)
        q, k, v = (row[..., lay_[n]] for n in "qkv")  # pre-RoPE, (B, T, H*D) each
    else:
        q = xn @ lay.w_q  # (B, T, H*D)
        k = xn @ lay.w_k if kind != "x" else None
        v = xn @ lay.w_v if kind == "kv" else None
    if kind == "kv":
        o, cache = _attend_kv(q, k, v, cache, cfg)
    elif kind == "k":
        o, cache = _attend_k(q, k, lay.w_kv, cache, cfg)
    else:
        o, cache = _attend_x(q, xn, lay.w_k, lay.w_v, cache, cfg)
    b, _, t, _ = o.shape
    h = x + o.transpose(0, 2, 1, 3).reshape(b, t, -1) @ lay.w_o  # (B, T, C)
    return h + _mlp(cm.norm(h, lay.norm2, "rmsnorm"), lay, model.tricks.kept), cache


def _check_tokens(tokens, v: int, name: str, ndim: int) -> Array:
    tokens = np.asarray(tokens)
    if tokens.size and not np.issubdtype(tokens.dtype, np.integer):
        raise TypeError(f"{name} must hold integers; got {tokens.dtype}")
    if tokens.ndim != ndim or 0 in tokens.shape:
        raise ValueError(
            f"{name} must be a non-empty {ndim}-D array; got {tokens.shape}"
        )
    if tokens.min() < 0 or tokens.max() >= v:
        raise ValueError(
            f"{name} must lie in [0, V={v}); got {tokens.min()}..{tokens.max()}"
        )
    return tokens


def _check_caches(model: TrickModel, caches, b: int):
    if caches is None:
        return empty_caches(model, b)
    kind = _CACHE_TYPE[model.tricks.cache]
    ok = isinstance(caches, tuple) and len(caches) == model.cfg.L
    if not ok or not all(isinstance(c, kind) for c in caches):
        raise ValueError(f"caches must be a tuple of L={model.cfg.L} {kind.__name__}")
    if any(
        (c.k if isinstance(c, cm.KVCache) else _rows(c)).shape[0] != b for c in caches
    ):
        raise ValueError(f"caches must hold B={b} sequences, as tokens do")
    return caches


def prefill(
    model: TrickModel, tokens: Array, caches: Caches | None = None
) -> tuple[Array, Caches]:
    """Causal forward of T tokens per sequence, as reference.common.prefill:
    logits = N_f(blocks(E[tokens])) U, each block reading its cache kind, layer 1
    its table rows with precompute. tokens (B, T) ints in [0, V) at positions
    S..S+T-1 after the L caches (None: empty). Returns logits (B, T, V) and the L
    caches grown to S + T."""
    if not isinstance(model, TrickModel):
        raise TypeError(f"model must be a TrickModel (prepare); got {model!r}")
    tokens = _check_tokens(tokens, model.cfg.V, "tokens", 2)
    caches = _check_caches(model, caches, tokens.shape[0])
    row = None if model.table is None else model.table[tokens]  # (B, T, W)
    x = model.embed[tokens] if row is None else row[..., : model.cfg.C]  # (B, T, C)
    grown = []
    for i, (lay, cache) in enumerate(zip(model.layers, caches, strict=True)):
        x, cache = _layer(x, lay, model, cache, row if i == 0 else None)
        grown.append(cache)
    logits = cm.norm(x, model.norm_f, "rmsnorm") @ model.unembed  # (B, T, V)
    return logits, tuple(grown)


def decode_step(
    model: TrickModel, token: Array, caches: Caches | None
) -> tuple[Array, Caches]:
    """One decode step, as reference.common.decode_step: token (B,) at position S ->
    logits (B, V) and the caches grown to S + 1."""
    token = _check_tokens(token, model.cfg.V, "token", 1)
    logits, caches = prefill(model, token[:, None], caches)
    return logits[:, 0], caches  # (B, V)


def greedy_generate(model: TrickModel, prompt: Array, n_new: int) -> Array:
    """Greedy decoding, as reference.common.greedy_generate: prefill prompt (B, T0),
    then n_new times append argmax and decode it. Returns all tokens (B, T0 + n_new)."""
    if isinstance(n_new, bool) or not isinstance(n_new, numbers.Integral):
        raise TypeError(f"n_new must be an int; got {n_new!r}")
    if n_new < 0:
        raise ValueError(f"n_new must be >= 0; got {n_new}")
    tokens = np.asarray(prompt)
    logits, caches = prefill(model, tokens)
    last = logits[:, -1]  # (B, V)
    for i in range(n_new):
        if i:
            last, caches = decode_step(model, tokens[:, -1], caches)
        tokens = np.concatenate([tokens, last.argmax(axis=-1)[:, None]], axis=1)
    return tokens


# --- memory: weights, caches, capacity ----------------------------------------------


def _count(x, name: str) -> int:
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{name} must be an int; got {x!r}")
    if x < 0:
        raise ValueError(f"{name} must be >= 0; got {x}")
    return int(x)


def _itemsize(itemsize) -> int:
    if _count(itemsize, "itemsize") == 0:
        raise ValueError("itemsize must be >= 1 byte")
    return int(itemsize)


def cache_bytes(
    cfg: cm.DecoderConfig, tricks: Tricks, b: int, s: int, itemsize: int
) -> int:
    """Bytes of the caches of all L layers for b sequences of s tokens:
    L b s itemsize (2 G*D for "kv", G*D for "k", C for "x"). With G*D = C (MHA)
    "k" and "x" are half of "kv"."""
    check_config(cfg)
    _check_tricks(tricks)
    b, s, itemsize = _count(b, "b"), _count(s, "s"), _itemsize(itemsize)
    per = {"kv": 2 * cfg.G * cfg.D, "k": cfg.G * cfg.D, "x": cfg.C}[tricks.cache]
    return cfg.L * b * s * per * itemsize


def weight_bytes(cfg: cm.DecoderConfig, tricks: Tricks, itemsize: int) -> int:
    """Bytes of the arrays a prepared model reads (those ``prepare`` keeps).

    embed V C (precompute: the table, V (C + 3 H*D)), unembed C V, norm_f C; per
    layer norm1, norm2 C each, W_Q, W_K, W_V C H*D each, W_KV (H*D)^2, W_O H*D C,
    W_in or W_in^T C F, W_out F C, each only where _reads says the tricks read it.
    """
    check_config(cfg)
    _check_tricks(tricks)
    itemsize = _itemsize(itemsize)
    c, e, f = cfg.C, cfg.H * cfg.D, cfg.F
    size = dict(norm1=c, w_q=c * e, w_k=c * e, w_v=c * e, w_kv=e * e, w_o=e * c,
                norm2=c, w_in=c * f, w1=f * c, w_out=f * c)  # fmt: skip
    n = (cfg.V * pc.row_width(cfg) if tricks.precompute else cfg.V * c) + c * cfg.V + c
    n += sum(size[k] for i in range(cfg.L) for k in _reads(tricks, i == 0))
    return n * itemsize


def max_cached_tokens(
    cfg: cm.DecoderConfig, tricks: Tricks, budget: int, itemsize: int
) -> int:
    """The capacity: the largest N = B*S with
    weight_bytes + cache_bytes(cfg, tricks, 1, N) <= budget (bytes); 0 when the
    weights alone do not leave room for one token."""
    free = _count(budget, "budget") - weight_bytes(cfg, tricks, itemsize)
    return max(free, 0) // cache_bytes(cfg, tricks, 1, 1, itemsize)


# --- what the chapter shows: agreement with reference.common ------------------------


def _forced(prefill_fn, step_fn, tokens: Array, n_prompt: int) -> Array:
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or not 1 <= n_prompt < tokens.shape[1]:
        raise ValueError(f"n_prompt must lie in [1, T) for tokens {tokens.shape}")
    logits, caches = prefill_fn(tokens[:, :n_prompt])
    out = [logits[:, -1]]
    for i in range(n_prompt, tokens.shape[1] - 1):
        step, caches = step_fn(tokens[:, i], caches)
        out.append(step)
    return np.stack(out, axis=1)  # (B, T - T0, V)


def forced_logits(model: TrickModel, tokens: Array, n_prompt: int) -> Array:
    """Teacher forcing: prefill tokens[:, :T0] (T0 = n_prompt), then decode_step
    each later token but the last. Returns (B, T - T0, V): the logits that predict
    tokens[:, T0:], as greedy decoding computes them."""
    return _forced(
        lambda t: prefill(model, t),
        lambda t, c: decode_step(model, t, c),
        tokens,
        n_prompt,
    )


def baseline_forced_logits(
    weights: cm.DecoderWeights, cfg: cm.DecoderConfig, tokens: Array, n_prompt: int
) -> Array:
    """forced_logits for reference.common's decoder (the truth). (B, T - T0, V)."""
    return _forced(
        lambda t: cm.prefill(weights, cfg, t),
        lambda t, c: cm.decode_step(weights, cfg, t, c),
        tokens,
        n_prompt,
    )


def active_fraction(
    weights: cm.DecoderWeights, cfg: cm.DecoderConfig, tokens: Array
) -> float:
    """max over layers and tokens of |{i : z_i > 0}| / F, z = N2(h) W_in, in
    reference.common's decoder on tokens (B, T): an oracle kept at least this is
    exact on these tokens (ReLU)."""
    check_config(cfg)
    tokens = _check_tokens(tokens, cfg.V, "tokens", 2)
    x, frac = weights.embed[tokens], 0.0  # (B, T, C)
    for lw in weights.layers:
        cache = cm.KVCache.empty(tokens.shape[0], cfg.G, cfg.D, x.dtype)
        h = (
            x
            + cm.attention_layer(cm.norm(x, lw.norm1, cfg.norm), lw.attn, cfg, cache)[0]
        )
        hn = cm.norm(h, lw.norm2, cfg.norm)  # (B, T, C)
        frac = max(frac, float(((hn @ lw.mlp.w_in) > 0).sum(axis=-1).max()) / cfg.F)
        x = h + cm.mlp(hn, lw.mlp, cfg.act)  # common.serial_block's last step
    return frac


def agreement(
    weights: cm.DecoderWeights,
    cfg: cm.DecoderConfig,
    tricks: Tricks,
    prompt: Array,
    n_new: int,
) -> dict:
    """How far the tricked decoder is from reference.common's over n_new steps.

    Both read common's own greedy continuation of prompt (teacher forcing, so one
    miss does not derail the rest). Returns
      steps              n_new
      token_agreement    fraction of the B n_new next-token argmaxes that agree
      max_logit_error    max |logits - common's logits|
      max_logit          max |common's logits| (the error's yardstick)
      first_divergence   first step where free-running greedy outputs differ in any
                         row (n_new if they never do)
    """
    model = prepare(weights, cfg, tricks)
    prompt = _check_tokens(prompt, cfg.V, "prompt", 2)
    if isinstance(n_new, bool) or not isinstance(n_new, numbers.Integral) or n_new < 1:
        raise ValueError(f"n_new must be an int >= 1; got {n_new!r}")
    want = cm.greedy_generate(weights, cfg, prompt, n_new)  # (B, T0 + n_new)
    t0 = prompt.shape[1]
    ref = baseline_forced_logits(weights, cfg, want, t0)  # (B, n_new, V)
    got = forced_logits(model, want, t0)
    differ = np.flatnonzero((greedy_generate(model, prompt, n_new) != want).any(axis=0))
    return dict(
        steps=n_new,
        token_agreement=float((got.argmax(-1) == ref.argmax(-1)).mean()),
        max_logit_error=float(np.abs(got - ref).max(initial=0.0)),
        max_logit=float(np.abs(ref).max(initial=0.0)),
        first_divergence=int(differ[0] - t0) if differ.size else n_new,
    )
