"""reference/models.py: the config table is self-consistent and reproduces the papers'
numbers (weights, parameters, cache sizes, weights read per token).

The paper-table formulas of one chapter are tested with that chapter's trick
(tests/test_precompute.py, tests/test_slim_attention.py); the MiniLM loader in
tests/test_minilm.py.
"""

from __future__ import annotations

import math

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
