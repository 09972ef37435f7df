"""Precomputing the first layer (Graef 2024, arXiv 2402.13388), in plain NumPy.

With RoPE, the first layer's Q, K, V *before rotation* depend on the token id alone,
so they can be computed once per vocabulary entry and stored in a wider embedding
table. In a parallel block (GPT-J, Pythia) the FFN and the skip connection read the
same input and fold in too:

    serial   (Llama, Mistral):  row[t] = [ x | N1(x) W_Q | N1(x) W_K | N1(x) W_V ]
    parallel (GPT-J, Pythia):   row[t] = [ N1(x) W_Q | N1(x) W_K | N1(x) W_V |
                                           x + FFN(N2(x)) ],      x = E[t]

(biases added where the model has them). Both rows are C + H·D + 2·G·D wide, which is
2(C + e) with the paper's e = G·D when H·D = C. What still runs per token: RoPE on the
q and k slices, attention, W_O, the residual, and for serial blocks the FFN.

Side by side (STYLE R2): ``first_layer`` is the standard first layer, and
``first_layer_from_table`` the same layer read from ``build_table``'s rows.
``gather_rope`` is the specification of the GPU kernel (gpu/precompute.cu).

Bitwise equality needs the same operations in the same order on both paths, and a
BLAS matrix product is not that: OpenBLAS sums in an order that depends on the
number of rows (it even switches to a matrix-vector kernel for one row). So every
projection here goes through ``linear``, whose sum order per output row does not
depend on the other rows.

The paper's tables (its "Examples" and savings tables; e = G·D, d = C) are computed
from a reference.models.ModelConfig at the end: ``precompute_row_width``,
``precompute_eliminated_weights``, ``precompute_reads``, ``precompute_reduction``,
``precompute_memory``, ``precompute_read_saving`` and ``precompute_tradeoff``.
Imports: NumPy, reference.common and reference.models (itself NumPy only).
Shapes: B batch, T new tokens, S cache, H query heads, G KV heads, D head dim,
C width, F FFN width, V vocab, W row width, N gathered rows, R rotary dims.
"""

from __future__ import annotations

import numpy as np

from reference import common as cm
from reference.models import (
    ModelConfig,
    expected_experts,
    ffn_params_per_layer,
    need,
    total_params,
    weights_read_per_token,
)

Array = np.ndarray


def linear(x: Array, w: Array, b: Array | None = None) -> Array:
    """y = x W (+ b), each output row summed in one fixed order.

    ``np.einsum`` without ``optimize`` runs its own loops, not BLAS, so row i of the
    result has the same bits whether x holds 1 row or the whole vocabulary. That is
    what makes the table's rows *bitwise* equal to the layer computed online.
    x: (..., in); w: (in, out); b: (out,). Returns (..., out) in x's dtype.
    """
    y = np.einsum("...i,io->...o", x, w)  # (..., out)
    return y if b is None else y + b


def ffn(x: Array, w: cm.MLPWeights, act: str) -> Array:
    """reference.common.mlp with ``linear`` for every product (see its docstring):
    act(x W_in + b_in) W_out + b_out, or SwiGLU. x: (..., C) -> (..., C)."""
    acts = {"relu": cm.relu, "gelu": cm.gelu, "gelu_tanh": cm.gelu_tanh}
    if act == "swiglu":
        if w.w_gate is None:
            raise ValueError("act='swiglu' needs w_gate")
        h = cm.silu(linear(x, w.w_gate)) * linear(x, w.w_in, w.b_in)  # (..., F)
    elif act in acts:
        h = acts[act](linear(x, w.w_in, w.b_in))  # (..., F)
    else:
        raise ValueError(f"act must be one of {cm.ACTS}; got {act!r}")
    return linear(h, w.w_out, w.b_out)  # (..., C)


def row_layout(cfg: cm.DecoderConfig) -> dict[str, slice]:
    """Column slices of a table row. Serial: x, q, k, v; parallel: q, k, v, r.

    q is H·D wide, k and v G·D, x and r C. The q and k slices are adjacent in both
    layouts: the H + G heads a kernel rotates are one contiguous run of columns.
    """
    hd, gd, c = cfg.H * cfg.D, cfg.G * cfg.D, cfg.C
    o = 0 if cfg.parallel else c  # where q starts
    parts = {"q": slice(o, o + hd), "k": slice(o + hd, o + hd + gd)}
    parts["v"] = slice(o + hd + gd, o + hd + 2 * gd)
    if cfg.parallel:
        parts["r"] = slice(hd + 2 * gd, hd + 2 * gd + c)
    else:
        parts = {"x": slice(0, c), **parts}
    return parts


def row_width(cfg: cm.DecoderConfig) -> int:
    """W = C + H·D + 2·G·D: 2(C + e) in the paper's notation when H·D = C."""
    return cfg.C + cfg.H * cfg.D + 2 * cfg.G * cfg.D


def build_table(embed: Array, layer: cm.LayerWeights, cfg: cm.DecoderConfig) -> Array:
    """The enlarged embedding table, one row per token id (layout: row_layout).

    q, k, v = N1(E) W_{Q,K,V} + b (before RoPE: RoPE needs the position);
    serial rows keep x = E for the residual; parallel rows store r = E + FFN(N2(E)).
    embed: (V, C). Returns (V, W) in embed's dtype.
    """
    xn = cm.norm(embed, layer.norm1, cfg.norm)  # (V, C)
    a = layer.attn
    q = linear(xn, a.w_q, a.b_q)  # (V, H*D)
    k = linear(xn, a.w_k, a.b_k)  # (V, G*D)
    v = linear(xn, a.w_v, a.b_v)  # (V, G*D)
    if not cfg.parallel:
        return np.concatenate([embed, q, k, v], axis=-1)  # (V, W)
    r = embed + ffn(cm.norm(embed, layer.norm2, cfg.norm), layer.mlp, cfg.act)
    return np.concatenate([q, k, v, r], axis=-1)  # (V, W)


def attend(
    q: Array,
    k: Array,
    v: Array,
    w: cm.AttnWeights,
    cfg: cm.DecoderConfig,
    cache: cm.KVCache,
) -> tuple[Array, cm.KVCache]:
    """What runs online on both paths: RoPE on q and k at positions S..S+T-1, the
    rotated k and v appended to the cache, causal attention, then o W_O + b_O.

    q: (B, T, H*D); k, v: (B, T, G*D) before RoPE. Returns (B, T, C) and the cache.
    """
    b, t, _ = q.shape
    s0 = cache.k.shape[2]
    pos = np.arange(s0, s0 + t)  # (T,)

    def heads(y, n):  # (B, T, n*D) -> (B, n, T, D)
        return y.reshape(b, t, n, cfg.D).transpose(0, 2, 1, 3)

    q = cm.apply_rope(heads(q, cfg.H), pos, cfg.rot_dim, cfg.rope_base)
    k = cm.apply_rope(heads(k, cfg.G), pos, cfg.rot_dim, cfg.rope_base)
    cache = cache.append(k, heads(v, cfg.G))
    o = cm.attention(q, cache.k, cache.v, causal=True, q_offset=s0)  # (B, H, T, D)
    o = o.transpose(0, 2, 1, 3).reshape(b, t, cfg.H * cfg.D)  # (B, T, H*D)
    return linear(o, w.w_o, w.b_o), cache  # (B, T, C)


def first_layer(
    embed: Array,
    layer: cm.LayerWeights,
    cfg: cm.DecoderConfig,
    tokens: Array,
    cache: cm.KVCache,
    pos_embed: Array | None = None,
) -> tuple[Array, cm.KVCache]:
    """The standard first layer (the baseline): x = E[tokens], then
    serial: h = x + Attn(N1(x)), y = h + FFN(N2(h));
    parallel: y = (x + Attn(N1(x))) + FFN(N2(x))   (common.parallel_block's order).

    pos_embed (P, C), if given, makes it a model with absolute positions:
    x = E[tokens] + P[positions], the case a token-only table cannot serve.
    tokens: (B, T) ints at positions S..S+T-1, S = cache length.
    Returns y (B, T, C) in embed's dtype and the cache grown to S + T.
    """
    x = embed[tokens]  # (B, T, C)
    if pos_embed is not None:
        s0 = cache.k.shape[2]
        x = x + pos_embed[s0 : s0 + x.shape[1]]  # (B, T, C)
    a = layer.attn
    xn = cm.norm(x, layer.norm1, cfg.norm)  # (B, T, C)
    qkv = (linear(xn, a.w_q, a.b_q), linear(xn, a.w_k, a.b_k), linear(xn, a.w_v, a.b_v))
    att, cache = attend(*qkv, a, cfg, cache)  # (B, T, C)
    if cfg.parallel:
        f = ffn(cm.norm(x, layer.norm2, cfg.norm), layer.mlp, cfg.act)  # (B, T, C)
        return (x + att) + f, cache
    h = x + att
    return h + ffn(cm.norm(h, layer.norm2, cfg.norm), layer.mlp, cfg.act), cache


def first_layer_from_table(
    table: Array,
    layer: cm.LayerWeights,
    cfg: cm.DecoderConfig,
    tokens: Array,
    cache: cm.KVCache,
) -> tuple[Array, cm.KVCache]:
    """The first layer read from the table (the trick): row = table[tokens], then
    serial: h = x + Attn(q, k, v), y = h + FFN(N2(h));  parallel: y = r + Attn(q, k, v).

    N1, W_Q, W_K, W_V (and for parallel blocks N2 and the FFN) are never applied
    here. Serial: bitwise equal to first_layer. Parallel: (x + FFN) + Attn instead of
    (x + Attn) + FFN, so equal up to one reordered add (add_order_bound).
    table: (V, W); tokens: (B, T). Returns y (B, T, C) and the cache grown to S + T.
    """
    lay = row_layout(cfg)
    row = table[tokens]  # (B, T, W)
    q, k, v = (row[..., lay[n]] for n in "qkv")  # (B, T, H*D), (B, T, G*D) x 2
    att, cache = attend(q, k, v, layer.attn, cfg, cache)  # (B, T, C)
    if cfg.parallel:
        return row[..., lay["r"]] + att, cache
    h = row[..., lay["x"]] + att
    return h + ffn(cm.norm(h, layer.norm2, cfg.norm), layer.mlp, cfg.act), cache


def add_order_bound(x: Array, a: Array, f: Array, u: float) -> Array:
    """Largest |fl(fl(x + f) + a) - fl(fl(x + a) + f)|, elementwise.

    With s = x + a + f, each side is s + (x + f)δ1(1 + δ2) + s·δ2 (and the same with
    a), |δ| <= u. So each side is within u(1 + u)(|x| + |f|) + u|s| of s, and the two
    sides within (4u + 2u^2)(|x| + |a| + |f|) of each other: one rounding per add,
    nothing else. x, a, f: any matching shapes (float64 values of each side's terms).
    """
    m = np.abs(x) + np.abs(a) + np.abs(f)
    return (4 * u + 2 * u * u) * m


def prefill_with_table(
    weights: cm.DecoderWeights,
    cfg: cm.DecoderConfig,
    table: Array,
    tokens: Array,
    caches: cm.Caches | None = None,
) -> tuple[Array, cm.Caches]:
    """reference.common.prefill with layer 1 read from ``table`` (the rest as is).

    tokens: (B, T) ints in [0, V). Returns logits (B, T, V) and the L caches.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.size and (tokens.min() < 0 or tokens.max() >= cfg.V):
        raise ValueError(f"tokens must be (B, T) ints in [0, V={cfg.V})")
    if caches is None:
        dt, b = table.dtype, tokens.shape[0]
        caches = tuple(cm.KVCache.empty(b, cfg.G, cfg.D, dt) for _ in range(cfg.L))
    block = cm.parallel_block if cfg.parallel else cm.serial_block
    x, first = first_layer_from_table(table, weights.layers[0], cfg, tokens, caches[0])
    grown = [first]
    for w, cache in zip(weights.layers[1:], caches[1:], strict=True):
        x, cache = block(x, w, cfg, cache)
        grown.append(cache)
    logits = cm.norm(x, weights.norm_f, cfg.norm) @ weights.unembed  # (B, T, V)
    return logits, tuple(grown)


def greedy_generate_with_table(
    weights: cm.DecoderWeights,
    cfg: cm.DecoderConfig,
    table: Array,
    prompt: Array,
    n_new: int,
) -> Array:
    """reference.common.greedy_generate with layer 1 from the table.

    prompt: (B, T0) ints. Returns all tokens, (B, T0 + n_new).
    """
    tokens = np.asarray(prompt)
    logits, caches = prefill_with_table(weights, cfg, table, tokens)
    last = logits[:, -1]  # (B, V)
    for i in range(n_new):
        if i:
            step, caches = prefill_with_table(
                weights, cfg, table, tokens[:, -1:], caches
            )
            last = step[:, 0]  # (B, V)
        nxt = last.argmax(axis=-1)  # (B,)
        tokens = np.concatenate([tokens, nxt[:, None]], axis=1)  # (B, T0 + i + 1)
    return tokens


def rope_table(n_pos: int, rot_dim: int, base: float = 10000.0) -> tuple[Array, Array]:
    """cos, sin (P, R/2) for positions 0..P-1, computed in float64 and rounded once
    to float32: the GPU kernel's input. (An angle p·base^(-2i/R) formed in float32
    is off by up to p·2^-24 radians, 2.4e-4 at p = 4096: far above float32 output
    rounding. Rounding the float64 result once keeps the error at u32.)
    """
    cos, sin = cm.rope_cos_sin(np.arange(n_pos), rot_dim, base)  # (P, R/2) float64
    return cos.astype(np.float32), sin.astype(np.float32)


def gather_rope(
    table: Array, tokens: Array, positions: Array, cfg: cm.DecoderConfig
) -> Array:
    """Specification of the GPU kernel: the table rows of ``tokens``, with RoPE
    applied to every q and k head at its token's position (common.apply_rope's
    rotate-half on the first R dims of each head; the rest of the row copied).

    table: (V, W); tokens, positions: (N,) ints. Returns (N, W) in table's dtype.
    """
    tokens, positions = np.asarray(tokens), np.asarray(positions)
    if tokens.ndim != 1 or positions.shape != tokens.shape:
        raise ValueError(f"tokens {tokens.shape}, positions {positions.shape}: (N,)")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= table.shape[0]):
        raise ValueError(f"token ids must lie in [0, V={table.shape[0]})")
    out = table[tokens].copy()  # (N, W)
    n, lay = tokens.shape[0], row_layout(cfg)
    rot = slice(lay["q"].start, lay["k"].stop)  # the H + G heads, adjacent columns
    heads = out[:, rot].reshape(n, cfg.H + cfg.G, cfg.D).transpose(1, 0, 2)
    rotated = cm.apply_rope(heads, positions, cfg.rot_dim, cfg.rope_base)
    out[:, rot] = rotated.transpose(1, 0, 2).reshape(n, -1)  # (N, (H+G)*D)
    return out


# --- the paper's tables: sizes and the trade-off, from a model's config -------------
#
# Graef, arXiv 2402.13388, tables "Examples" and savings; e = G·D, d = C. Values, not
# bytes, unless a name says bytes.


def _parallel(cfg: ModelConfig, parallel: bool | None) -> bool:
    return bool(cfg.parallel_block) if parallel is None else parallel


def precompute_row_width(cfg: ModelConfig) -> int:
    """Width of a table row: C + H·D + 2·G·D (= 2(d + e) when H·D = C).

    Serial blocks store [x | Q | K | V], parallel blocks [Q | K | V | x + FFN(x)].
    """
    return cfg.d_model + cfg.q_width + 2 * cfg.kv_width


def precompute_eliminated_weights(
    cfg: ModelConfig, parallel: bool | None = None, n_experts: int | None = None
) -> int:
    """Weights a token no longer reads: W_Q, W_K, W_V (C·(H·D + 2·G·D)), and for a
    parallel block the FFN of ``n_experts`` experts (default all E, as the paper
    counts; pass top_k for what one token reads). ``parallel`` overrides the
    config (the paper's hypothetical parallel Mixtral)."""
    qkv = cfg.d_model * (cfg.q_width + 2 * cfg.kv_width)
    if not _parallel(cfg, parallel):
        return qkv
    return qkv + ffn_params_per_layer(cfg, n_experts=n_experts)


def precompute_reads(
    cfg: ModelConfig,
    batch: int,
    table: bool,
    parallel: bool | None = None,
    n_experts: int | None = None,
) -> int:
    """Values the precomputable part of layer 1 reads for B tokens (paper's table):
    without the table B·d + eliminated weights; with it B·2(d + e)."""
    if table:
        return batch * precompute_row_width(cfg)
    return batch * cfg.d_model + precompute_eliminated_weights(cfg, parallel, n_experts)


def precompute_reduction(
    cfg: ModelConfig,
    batch: int,
    parallel: bool | None = None,
    n_experts: int | None = None,
) -> float:
    """The paper's first-layer reduction factor: reads without / reads with table."""
    without = precompute_reads(cfg, batch, False, parallel, n_experts)
    return without / precompute_reads(cfg, batch, True, parallel, n_experts)


def precompute_memory(cfg: ModelConfig, parallel: bool | None = None) -> dict:
    """Weights stored with the table minus without it (values, not bytes).

    increase: the table replaces the input embedding, (W − C)·V = (2e + d)·V. With
    tied embeddings and a parallel block the rows hold no x, so E stays for the LM
    head and the whole W·V is new (research/papers_graef.md B.3.5); a serial row
    holds x and can serve the LM head. net = increase − eliminated weights;
    relative = net / total_params(cfg).
    """
    par = _parallel(cfg, parallel)
    keeps_embedding = bool(cfg.tied_embeddings) and par
    width = precompute_row_width(cfg) - (0 if keeps_embedding else cfg.d_model)
    increase = width * need(cfg, "vocab")
    eliminated = precompute_eliminated_weights(cfg, par)
    net = increase - eliminated
    return dict(
        increase=increase,
        eliminated=eliminated,
        net=net,
        relative=net / total_params(cfg),
    )


def precompute_read_saving(
    cfg: ModelConfig, batch: int = 1, parallel: bool | None = None
) -> float:
    """Share of *all* weight values read per decoded token that the table saves.

    Per token: (reads without − reads with) / B, over weights_read_per_token (the
    FFN of a parallel MoE counts the expected_experts the batch touches). This is
    what the paper's "up to 1/L" becomes: 0.35 % for Mistral-7B at B = 1.
    """
    par = _parallel(cfg, parallel)
    experts = None
    if par and cfg.is_moe:
        experts = expected_experts(cfg.n_experts, cfg.top_k, batch)
    saved = precompute_reads(cfg, batch, False, par, experts) - precompute_reads(
        cfg, batch, True, par, experts
    )
    return saved / batch / weights_read_per_token(cfg, batch)


def precompute_tradeoff(
    cfg: ModelConfig,
    batches: tuple[int, ...] = (1, 16, 256, 1024),
    bytes_per_value: float = 2,
) -> dict:
    """Everything a reader needs to decide for their own model, from its config.

    applies: only with RoPE (absolute positions enter before the norm). memory: the
    table's size and the net change of stored weights (precompute_memory), in
    bytes. flops_saved_per_token: 2 per eliminated weight (one multiply-add each;
    with a parallel MoE, only the top_k experts a token runs). Per batch size: the
    paper's first-layer reduction factor and the share of all weight reads saved.
    """
    mem = precompute_memory(cfg)
    par = _parallel(cfg, None)
    run = precompute_eliminated_weights(cfg, par, cfg.top_k if cfg.is_moe else None)
    return dict(
        name=cfg.name,
        applies=cfg.positional == "rope",
        positional=cfg.positional,
        parallel=par,
        row_width=precompute_row_width(cfg),
        table_bytes=precompute_row_width(cfg) * need(cfg, "vocab") * bytes_per_value,
        extra_bytes=mem["net"] * bytes_per_value,
        extra_relative=mem["relative"],
        flops_saved_per_token=2 * run,
        per_batch={
            b: dict(
                reduction=precompute_reduction(cfg, b),
                read_saving=precompute_read_saving(cfg, b),
            )
            for b in batches
        },
    )
