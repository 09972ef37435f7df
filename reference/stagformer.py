"""StagFormer (Cutler et al. 2025, arXiv 2501.15665): time-staggered decoder stacks.

The decoder is split into p stacks that all read the same token embeddings. Stack s
(s >= 2) has, in every layer, a cross-attention whose memory for position i is the
output of stack s-1 at positions j <= i - 1 only (optionally only j >= i - W). So at
decode step i no stack waits for another stack's output of step i: the p stack
updates of one step commute, and can run at the same time.

  StagConfig, init_stagformer       shapes, variants (p, shared weights, window W)
  cross_attention                   the strict mask j <= i-1 over [null, h_0, h_1, ...]
  cross_attention_shift             the same as a causal mask over the shifted memory
  stack_forward, prefill            masked full-sequence forward (all positions)
  StagState, stack_step, decode_step  one decode step with caches, any schedule
  recurrent_decode                  shared weights, recurrent mode (one stack a step)

Position 0 (the paper's position 1) has no earlier output to attend to. Our choice:
a *null slot*, a zero memory row that every position always sees. Cross-attention
has no biases, so the null slot's key and value are exactly 0: at position 0 the
cross-attention output is exactly 0 (stack s starts as an ordinary decoder), every
softmax is over >= 1 slot (never empty), and it needs no parameter. The shift form
[null, h_0, ..., h_{T-2}] with a plain causal mask is the same computation.

Memory rows are the stacks' outputs after their final norm. Blocks are pre-norm and
serial (GPT-2, Llama); cross-attention uses no RoPE (memory has no own position).
Row vectors (y = x @ W); functions keep the dtype they are given (pass float64 for
the truth). Shapes: B batch, T tokens, C width, H/G heads, D head dim, L layers per
stack, V vocab, W window, p stacks.
Imports: NumPy, the standard library and reference.common.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from reference.common import (
    AttnWeights,
    Caches,
    DecoderConfig,
    KVCache,
    LayerWeights,
    NormWeights,
    attention,
    attention_layer,
    decode_attention,
    init_decoder,
    mlp,
    norm,
    serial_block,
    softmax,
)

Array = np.ndarray


@dataclass(frozen=True)
class StagConfig:
    """p stacks of ``base.L`` serial layers each; shared=True: every stack uses stack
    1's layer weights (cross-attention weights stay per stack); window=None: the
    whole past of the previous stack, else its last W outputs."""

    base: DecoderConfig
    p: int = 2
    shared: bool = False
    window: int | None = None

    def __post_init__(self):
        if self.p < 1 or self.base.parallel:
            raise ValueError(f"need p >= 1 and serial blocks: {self}")
        if self.window is not None and self.window < 1:
            raise ValueError(f"window must be None or >= 1, got {self.window}")


@dataclass(frozen=True)
class CrossWeights:
    """Cross-attention sublayer of a stack >= 2: norm, then attention without biases
    (so the null slot's key and value are exactly 0)."""

    norm: NormWeights
    attn: AttnWeights  # w_q (C, H*D), w_k, w_v (C, G*D), w_o (H*D, C)


@dataclass(frozen=True)
class StagWeights:
    embed: Array  # (V, C), shared by all stacks
    layers: tuple[tuple[LayerWeights, ...], ...]  # p stacks x L layers
    cross: tuple[tuple[CrossWeights, ...], ...]  # stacks 2..p: (p-1) x L
    norm_f: tuple[NormWeights, ...]  # p final norms: memory rows and outputs
    unembed: Array  # (C, V), applied to the last stack's output


def init_stagformer(cfg: StagConfig, rng: np.random.Generator, dtype=np.float64):
    """Random weights as common.init_decoder (N(0, 1/fan_in) matrices), per stack;
    shared=True reuses stack 1's layers object for every stack."""
    b = cfg.base
    stacks = [init_decoder(b, rng, dtype)]
    for _ in range(1, cfg.p):
        stacks.append(stacks[0] if cfg.shared else init_decoder(b, rng, dtype))

    def mat(n_in, n_out):
        return (rng.standard_normal((n_in, n_out)) / math.sqrt(n_in)).astype(dtype)

    def cross():
        g = (1 + 0.1 * rng.standard_normal(b.C)).astype(dtype)
        hd, gd = b.H * b.D, b.G * b.D
        aw = AttnWeights(mat(b.C, hd), mat(b.C, gd), mat(b.C, gd), mat(hd, b.C))
        return CrossWeights(NormWeights(g), aw)

    xs = tuple(tuple(cross() for _ in range(b.L)) for _ in range(cfg.p - 1))
    norm_f = tuple(st.norm_f for st in stacks)
    layers = tuple(st.layers for st in stacks)
    return StagWeights(stacks[0].embed, layers, xs, norm_f, stacks[-1].unembed)


def visible(t_q: Array, n_mem: int, window: int | None) -> Array:
    """Mask (T, 1 + n_mem) over slots [null, h_0, ..., h_{n_mem-1}]: query position t
    sees the null slot and h_j for max(0, t - W) <= j <= t - 1."""
    j = np.arange(n_mem)[None, :]  # (1, n_mem)
    t = np.asarray(t_q)[:, None]  # (T, 1)
    ok = j <= t - 1
    if window is not None:
        ok &= j >= t - window
    return np.concatenate([np.ones((t.shape[0], 1), bool), ok], axis=1)


def _heads(y: Array, n: int, d: int) -> Array:
    b, t, _ = y.shape  # (B, T, n*D) -> (B, n, T, D)
    return y.reshape(b, t, n, d).transpose(0, 2, 1, 3)


def cross_attention(
    x: Array, w: AttnWeights, cfg: DecoderConfig, mem: Array, t0: int, window=None
) -> Array:
    """Staggered cross-attention, strict form. Query t (= t0..t0+T-1) attends to
    slots m = [0, mem_0, mem_1, ...] it may see (``visible``):
        o_t = softmax_s(q_t . k_s / sqrt(D) over visible s) v_s,
        q = x W_q, k = m W_k, v = m W_v,  out = o W_o   (k_null = v_null = 0).
    x: (B, T, C) normed queries; mem: (B, M, C) memory rows. Returns (B, T, C)."""
    b, t, _ = x.shape
    slots = np.concatenate([np.zeros_like(mem[:, :1]), mem], axis=1)  # (B, 1+M, C)
    q = _heads(x @ w.w_q, cfg.H, cfg.D)  # (B, H, T, D)
    k = _heads(slots @ w.w_k, cfg.G, cfg.D)  # (B, G, 1+M, D)
    v = _heads(slots @ w.w_v, cfg.G, cfg.D)
    k, v = (np.repeat(a, cfg.H // cfg.G, axis=1) for a in (k, v))  # (B, H, 1+M, D)
    s = q @ k.swapaxes(-1, -2) / math.sqrt(cfg.D)  # (B, H, T, 1+M)
    ok = visible(np.arange(t0, t0 + t), mem.shape[1], window)  # (T, 1+M)
    o = softmax(np.where(ok, s, s.dtype.type(-np.inf))) @ v  # (B, H, T, D)
    return o.transpose(0, 2, 1, 3).reshape(b, t, -1) @ w.w_o  # (B, T, C)


def cross_attention_shift(
    x: Array, w: AttnWeights, cfg: DecoderConfig, mem: Array
) -> Array:
    """The shift form (no window): memory m' = [null, h_0, ..., h_{T-2}] under the
    ordinary causal mask (slot s <= t) is cross_attention with t0 = 0. x, mem: (B, T,
    C); returns (B, T, C)."""
    b, t, _ = x.shape
    shifted = np.concatenate([np.zeros_like(mem[:, :1]), mem[:, : t - 1]], axis=1)
    q = _heads(x @ w.w_q, cfg.H, cfg.D)  # (B, H, T, D)
    k = _heads(shifted @ w.w_k, cfg.G, cfg.D)  # (B, G, T, D)
    v = _heads(shifted @ w.w_v, cfg.G, cfg.D)
    o = attention(q, k, v, causal=True)  # (B, H, T, D)
    return o.transpose(0, 2, 1, 3).reshape(b, t, -1) @ w.w_o


def _stag_block(x, lw, cw, cfg: StagConfig, cache, mem, t0):
    """h = x + SA(N1 x); h = h + CA(Nc h, mem); y = h + MLP(N2 h). Stack 1 (cw None)
    is common.serial_block. x: (B, T, C) at positions t0..; returns y, cache."""
    b = cfg.base
    if cw is None:
        return serial_block(x, lw, b, cache)
    a, cache = attention_layer(norm(x, lw.norm1, b.norm), lw.attn, b, cache)
    h = x + a
    h = h + cross_attention(norm(h, cw.norm, b.norm), cw.attn, b, mem, t0, cfg.window)
    return h + mlp(norm(h, lw.norm2, b.norm), lw.mlp, b.act), cache


def stack_forward(
    w: StagWeights, cfg: StagConfig, s: int, x: Array, mem: Array | None
) -> tuple[Array, Caches]:
    """Stack s (0-based) on embeddings x (B, T, C) from position 0, with memory
    mem (B, T, C) = stack s-1's outputs (None for s = 0). Returns its outputs
    N_f(x_L) (B, T, C) and its L self-attention caches."""
    caches = []
    for j, lw in enumerate(w.layers[s]):
        cw = w.cross[s - 1][j] if s else None
        empty = KVCache.empty(x.shape[0], cfg.base.G, cfg.base.D, x.dtype)
        x, c = _stag_block(x, lw, cw, cfg, empty, mem, 0)
        caches.append(c)
    return norm(x, w.norm_f[s], cfg.base.norm), tuple(caches)


@dataclass(frozen=True)
class StagState:
    """Everything decode needs after positions 0..i-1 (i = ``pos``).

    self_caches[s][j]: stack s layer j's K/V of positions < i.
    cross_caches[s-1][j]: stack s layer j's cross K/V of slots [null, h_0, ...,
        h_{n-1}] (n = rows projected so far; a step projects the rows it misses).
    outputs[s]: (B, i, C) stack s's outputs; the last stack's are the model's.
    """

    pos: int
    self_caches: tuple[Caches, ...]
    cross_caches: tuple[Caches, ...]
    outputs: tuple[Array, ...]


def prefill(w: StagWeights, cfg: StagConfig, tokens: Array):
    """Masked full-sequence forward of tokens (B, T): every stack on E[tokens], stack
    s reading stack s-1's outputs under the staggered mask. Returns logits (B, T, V)
    and the StagState after T positions (cross caches hold rows < T - 1, as decode
    would have left them)."""
    x = w.embed[np.asarray(tokens)]  # (B, T, C)
    outs, selfc, crossc = [], [], []
    for s in range(cfg.p):
        o, c = stack_forward(w, cfg, s, x, outs[-1] if s else None)
        outs.append(o)
        selfc.append(c)
        if s:
            crossc.append(_cross_cache(w, cfg, s, outs[s - 1][:, : x.shape[1] - 1]))
    logits = outs[-1] @ w.unembed  # (B, T, V)
    return logits, StagState(x.shape[1], tuple(selfc), tuple(crossc), tuple(outs))


def _cross_kv(cw: CrossWeights, cfg: DecoderConfig, rows: Array):
    """Keys and values (B, G, n, D) of memory rows (B, n, C)."""
    return _heads(rows @ cw.attn.w_k, cfg.G, cfg.D), _heads(
        rows @ cw.attn.w_v, cfg.G, cfg.D
    )


def _cross_cache(w, cfg: StagConfig, s: int, rows: Array) -> Caches:
    """Stack s's cross caches holding [null] + the given memory rows (B, n, C)."""
    b, g, d = rows.shape[0], cfg.base.G, cfg.base.D
    null = KVCache(*(np.zeros((b, g, 1, d), rows.dtype) for _ in range(2)))
    return tuple(null.append(*_cross_kv(cw, cfg.base, rows)) for cw in w.cross[s - 1])


def stack_step(w: StagWeights, cfg: StagConfig, s: int, e: Array, st: StagState):
    """Stack s at position i = st.pos, reading only st (the state after i - 1).

    Its cross caches first take the memory rows they miss, h_n..h_{i-1} of stack s-1
    (never h_i); then the L layers run on e (B, C). Returns (output (B, C), its self
    caches, its cross caches or None)."""
    b, i = cfg.base, st.pos
    x, caches = e[:, None], []
    cross = None
    if s:
        cross = []
        for j, c in enumerate(st.cross_caches[s - 1]):
            n = c.k.shape[2] - 1  # memory rows already projected
            new = st.outputs[s - 1][:, n:i]  # (B, i - n, C)
            cross.append(c.append(*_cross_kv(w.cross[s - 1][j], b, new)))
    for j, lw in enumerate(w.layers[s]):
        c = st.self_caches[s][j]
        if s == 0:
            x, c = serial_block(x, lw, b, c)
        else:
            a, c = attention_layer(norm(x, lw.norm1, b.norm), lw.attn, b, c)
            h = x + a
            xc = norm(h, w.cross[s - 1][j].norm, b.norm)
            h = h + _cross_decode(xc, w.cross[s - 1][j].attn, b, cross[j], i, cfg)
            x = h + mlp(norm(h, lw.norm2, b.norm), lw.mlp, b.act)
        caches.append(c)
    out = norm(x, w.norm_f[s], b.norm)[:, 0]  # (B, C)
    return out, tuple(caches), None if cross is None else tuple(cross)


def _cross_decode(x, aw: AttnWeights, cfg: DecoderConfig, cache: KVCache, i, scfg):
    """One query at position i over [null] + the last W cached memory rows."""
    k, v = cache.k, cache.v  # (B, G, 1 + i, D)
    if scfg.window is not None and k.shape[2] - 1 > scfg.window:
        keep = np.r_[0, np.arange(k.shape[2] - scfg.window, k.shape[2])]
        k, v = k[:, :, keep], v[:, :, keep]
    q = _heads(x @ aw.w_q, cfg.H, cfg.D)[:, :, 0]  # (B, H, D)
    o = decode_attention(q, k, v)  # (B, H, D)
    return o.reshape(o.shape[0], 1, -1) @ aw.w_o  # (B, 1, C)


def decode_step(
    w: StagWeights, cfg: StagConfig, token: Array, st: StagState, order="snapshot"
):
    """Decode step i = st.pos for token (B,). order: "snapshot" (every stack reads the
    state of step i-1: the parallel schedule) or a permutation of range(p) (stacks
    run one after another, each seeing the state the previous ones left).
    Returns logits (B, V) and the state after position i."""
    e = w.embed[np.asarray(token)]  # (B, C)
    seq = range(cfg.p) if isinstance(order, str) else order
    if isinstance(order, str) and order != "snapshot":
        raise ValueError(f"order must be 'snapshot' or a permutation, got {order!r}")
    if sorted(seq) != list(range(cfg.p)):
        raise ValueError(f"order must be a permutation of range({cfg.p})")
    cur = st
    for s in seq:
        out, sc, cc = stack_step(w, cfg, s, e, st if order == "snapshot" else cur)
        cur = _with(cur, s, out, sc, cc)
    done = replace(cur, pos=st.pos + 1)
    return done.outputs[-1][:, -1] @ w.unembed, done


def _with(st: StagState, s, out, sc, cc) -> StagState:
    """st with stack s's new output row, self caches and cross caches."""
    outs = list(st.outputs)
    outs[s] = np.concatenate([outs[s], out[:, None]], axis=1)
    selfc = list(st.self_caches)
    selfc[s] = sc
    crossc = list(st.cross_caches)
    if s:
        crossc[s - 1] = cc
    return replace(st, self_caches=tuple(selfc), cross_caches=tuple(crossc),
                   outputs=tuple(outs))  # fmt: skip


def empty_state(cfg: StagConfig, b: int, dtype=np.float64) -> StagState:
    """The state before position 0: empty caches, null-only cross caches."""
    c = cfg.base
    selfc = tuple(
        tuple(KVCache.empty(b, c.G, c.D, dtype) for _ in range(c.L))
        for _ in range(cfg.p)
    )
    null = KVCache(*(np.zeros((b, c.G, 1, c.D), dtype) for _ in range(2)))
    crossc = tuple(tuple(null for _ in range(c.L)) for _ in range(cfg.p - 1))
    outs = tuple(np.zeros((b, 0, c.C), dtype) for _ in range(cfg.p))
    return StagState(0, selfc, crossc, outs)


def recurrent_decode(w: StagWeights, cfg: StagConfig, tokens: Array) -> Array:
    """Shared weights, recurrent mode (p = 2): skip stack 1; stack 2 cross-attends to
    its OWN earlier outputs, o_i = S_2(e_{<=i}; memory o_{<i}). One stack pass a step.
    tokens (B, T) -> outputs o (B, T, C)."""
    if cfg.p != 2 or not cfg.shared:
        raise ValueError("recurrent mode needs p = 2 and shared weights")
    tokens = np.asarray(tokens)
    st = empty_state(cfg, tokens.shape[0], w.embed.dtype)
    for t in range(tokens.shape[1]):
        # the memory of stack 2 is its own output: alias it as "stack 1's"
        st = replace(st, outputs=(st.outputs[1], st.outputs[1]))
        out, sc, cc = stack_step(w, cfg, 1, w.embed[tokens[:, t]], st)
        st = replace(_with(st, 1, out, sc, cc), pos=t + 1)
    return st.outputs[1]
