"""Precomputing the first layer: reference properties (CPU) and the GPU gather+RoPE.

CPU: the table row is norm -> projection of the embedding (bitwise), the first layer
from the table equals the standard one (serial: bitwise; parallel: within the derived
bound of one reordered add), absolute positions break a token-only table, a decoder
with the table generates the same tokens, and the paper's tables are reproduced.
GPU (marked ``gpu``): gpu/precompute.cu against the float64 reference on
Hypothesis-drawn shapes and ids, outputs poisoned, bad input rejected before launch.
Every comparison goes through reference.testing.assert_close; every checker has a
known-wrong case it must reject.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference import common as cm
from reference import models as md
from reference import precompute as pc
from reference.testing import UNIT_ROUNDOFF, assert_close, describe

F64, F32, F16 = np.float64, np.float32, np.float16
seeds = st.integers(0, 2**32 - 1)


@st.composite
def configs(draw, parallel=None, rope=True):
    """A tiny DecoderConfig: MHA, GQA or MQA; full, partial (2 of D dims, as Pythia
    rotates D/4) or, with rope=False, no rotary; LayerNorm with biases (GPT-NeoX)
    or RMSNorm without (Llama)."""
    kind = draw(st.sampled_from(["mha", "gqa", "mqa"]))
    if kind == "mha":
        h = g = draw(st.sampled_from([1, 2, 3]))
    elif kind == "gqa":
        g = draw(st.sampled_from([2, 3]))
        h = g * draw(st.sampled_from([2, 3]))
    else:
        h, g = draw(st.sampled_from([1, 2, 5])), 1
    d = draw(st.sampled_from([2, 4, 6, 8]))
    rot = draw(st.sampled_from([None, 2])) if rope else 0
    return cm.DecoderConfig(
        V=draw(st.sampled_from([1, 2, 5, 13])),
        C=h * d,
        H=h,
        G=g,
        D=d,
        F=draw(st.sampled_from([1, 3, 8])),
        L=draw(st.sampled_from([1, 2])),
        parallel=draw(st.booleans()) if parallel is None else parallel,
        norm=draw(st.sampled_from(cm.NORMS)),
        act=draw(st.sampled_from(cm.ACTS)),
        rot_dim=rot,
        rope_base=draw(st.sampled_from([10000.0, 100.0])),
    )


@st.composite
def token_ids(draw, v: int, b: int, t: int):
    """(B, T) ids in [0, V) that include the last id V-1 and, if T > 1, a repeat."""
    ids = draw(st.lists(st.integers(0, v - 1), min_size=b * t, max_size=b * t))
    ids[0] = v - 1
    if len(ids) > 1:
        ids[-1] = ids[0]
    return np.array(ids).reshape(b, t)


def _weights(cfg, seed, dtype, amp=1.0):
    w = cm.init_decoder(cfg, np.random.default_rng(seed), F64)
    w = dataclasses.replace(w, embed=amp * w.embed)  # large values too
    return _cast(w, dtype)


def _cast(tree, dtype):
    """Every array in a (nested) weights dataclass cast to dtype."""
    if isinstance(tree, np.ndarray):
        return tree.astype(dtype)
    if isinstance(tree, tuple):
        return tuple(_cast(x, dtype) for x in tree)
    if dataclasses.is_dataclass(tree):
        fields = dataclasses.fields(tree)
        return dataclasses.replace(
            tree, **{f.name: _cast(getattr(tree, f.name), dtype) for f in fields}
        )
    return tree


def _assert_within(actual, expected, bound) -> float:
    """|actual - expected| <= bound elementwise (a derived bound); the share used."""
    diff = np.abs(np.asarray(actual, F64) - np.asarray(expected, F64))
    assert np.all(np.isfinite(diff)), "NaN or inf"
    over = diff > bound
    assert not over.any(), (
        f"{int(over.sum())}/{diff.size} beyond the derived bound; "
        f"worst diff {diff.max():.3g}"
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.nanmax(np.where(bound > 0, diff / bound, 0.0), initial=0.0))


# --- 1. the table row is norm -> projection of the embedding --------------------


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@given(data=st.data(), b=st.sampled_from([1, 2, 3]), t=st.sampled_from([1, 2, 7]))
def test_table_row_is_norm_then_projection(dtype, data, b, t):
    cfg = data.draw(configs(), label="cfg")
    w = _weights(cfg, data.draw(seeds, label="seed"), dtype)
    tokens = data.draw(token_ids(cfg.V, b, t), label="tokens")
    layer, a = w.layers[0], w.layers[0].attn
    table = pc.build_table(w.embed, layer, cfg)
    assert table.shape == (cfg.V, pc.row_width(cfg)) and table.dtype == dtype
    row, lay = table[tokens], pc.row_layout(cfg)  # (B, T, W)
    x = w.embed[tokens]  # (B, T, C): computed from the embedding rows alone
    xn = cm.norm(x, layer.norm1, cfg.norm)
    want = {
        "q": pc.linear(xn, a.w_q, a.b_q),
        "k": pc.linear(xn, a.w_k, a.b_k),
        "v": pc.linear(xn, a.w_v, a.b_v),
    }
    if cfg.parallel:
        want["r"] = x + pc.ffn(cm.norm(x, layer.norm2, cfg.norm), layer.mlp, cfg.act)
    else:
        want["x"] = x
    assert set(want) == set(lay)
    for name, value in want.items():  # same dtype, same order: bitwise
        assert_close(row[..., lay[name]], value, "exact", dtype)
    # and it is what the library's own layer computes (BLAS: another sum order)
    blas = {"q": (a.w_q, a.b_q), "k": (a.w_k, a.b_k), "v": (a.w_v, a.b_v)}
    for name, (wm, bias) in blas.items():
        ref = cm._linear(xn, wm, bias)
        assert_close(row[..., lay[name]], ref, "rewrite", dtype)
    if cfg.parallel:
        ref = x + cm.mlp(cm.norm(x, layer.norm2, cfg.norm), layer.mlp, cfg.act)
        assert_close(row[..., lay["r"]], ref, "rewrite", dtype)


def test_checker_rejects_table_with_wrong_norm_or_shifted_rows():
    cfg = cm.DecoderConfig(V=9, C=16, H=4, G=2, D=4, F=6, L=1, norm="layernorm")
    w = _weights(cfg, 3, F64)
    layer, tokens = w.layers[0], np.array([[0, 8, 8, 3]])
    table = pc.build_table(w.embed, layer, cfg)
    swapped = dataclasses.replace(layer, norm1=layer.norm2)  # N2 instead of N1
    for bad in (pc.build_table(w.embed, swapped, cfg)[tokens], table[(tokens + 1) % 9]):
        with pytest.raises(AssertionError):
            assert_close(bad, table[tokens], "rewrite", F64)


# --- 2. the first layer from the table equals the standard first layer ----------


def _both_layers(cfg, w, tokens, step_tokens):
    """(standard, from table) outputs of a prefill and one decode step, with caches."""
    layer, b = w.layers[0], tokens.shape[0]
    table = pc.build_table(w.embed, layer, cfg)
    outs = []
    for run in (
        lambda tok, c: pc.first_layer(w.embed, layer, cfg, tok, c),
        lambda tok, c: pc.first_layer_from_table(table, layer, cfg, tok, c),
    ):
        cache = cm.KVCache.empty(b, cfg.G, cfg.D, w.embed.dtype)
        y1, cache = run(tokens, cache)
        y2, cache = run(step_tokens, cache)  # T = 1 against the cache
        outs.append((y1, y2, cache))
    return outs


def _parallel_bound(cfg, w, tokens, step_tokens, u):
    """add_order_bound for both calls: terms x, Attn, FFN of the standard layer."""
    layer, b = w.layers[0], tokens.shape[0]
    cache = cm.KVCache.empty(b, cfg.G, cfg.D, w.embed.dtype)
    bounds = []
    for tok in (tokens, step_tokens):
        x = w.embed[tok]
        xn = cm.norm(x, layer.norm1, cfg.norm)
        a = layer.attn
        q, k, v = (
            pc.linear(xn, m, bb)
            for m, bb in ((a.w_q, a.b_q), (a.w_k, a.b_k), (a.w_v, a.b_v))
        )
        att, cache = pc.attend(q, k, v, a, cfg, cache)
        f = pc.ffn(cm.norm(x, layer.norm2, cfg.norm), layer.mlp, cfg.act)
        bounds.append(pc.add_order_bound(x, att, f, u))
    return bounds


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
@given(data=st.data(), b=st.sampled_from([1, 2]), t=st.sampled_from([1, 3, 5]))
def test_first_layer_from_table_equals_first_layer(dtype, parallel, data, b, t):
    cfg = data.draw(configs(parallel=parallel), label="cfg")
    amp = data.draw(st.sampled_from([1.0, 30.0]), label="amp")
    w = _weights(cfg, data.draw(seeds, label="seed"), dtype, amp)
    tokens = data.draw(token_ids(cfg.V, b, t), label="tokens")
    step = data.draw(token_ids(cfg.V, b, 1), label="step")
    (s1, s2, sc), (t1, t2, tc) = _both_layers(cfg, w, tokens, step)
    assert t1.dtype == t2.dtype == dtype
    assert_close(tc.k, sc.k, "exact", dtype)  # the same rotated keys are cached
    assert_close(tc.v, sc.v, "exact", dtype)
    if not parallel:
        assert_close(t1, s1, "exact", dtype)
        assert_close(t2, s2, "exact", dtype)
        return
    # parallel: (x + FFN) + Attn vs (x + Attn) + FFN, one reordered add
    u = UNIT_ROUNDOFF[np.dtype(dtype).name]
    for got, want, bound in zip(
        (t1, t2), (s1, s2), _parallel_bound(cfg, w, tokens, step, u), strict=True
    ):
        _assert_within(got, want, bound)
        assert_close(got, want, "rewrite", dtype)


def _common_block(cfg, w, tokens, step_tokens):
    """The same prefill and decode step through reference.common's block: its own
    attention_layer (BLAS projections, RoPE, the cache, decode_attention at T = 1),
    no code shared with pc.attend. Returns (y1, y2, cache)."""
    layer, b = w.layers[0], tokens.shape[0]
    block = cm.parallel_block if cfg.parallel else cm.serial_block
    cache = cm.KVCache.empty(b, cfg.G, cfg.D, w.embed.dtype)
    y1, cache = block(w.embed[tokens], layer, cfg, cache)
    y2, cache = block(w.embed[step_tokens], layer, cfg, cache)
    return y1, y2, cache


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
@given(data=st.data(), b=st.sampled_from([1, 2]), t=st.sampled_from([1, 3, 5]))
def test_both_first_layers_equal_the_common_block(dtype, parallel, data, b, t):
    """The test above compares two paths that both call pc.attend, so a bug inside
    it (k cached before RoPE, RoPE dropped on k, the wrong positions) cancels. Here
    both are held against reference.common's block, an independent path: outputs
    and caches agree within the "rewrite" row (BLAS sums in another order)."""
    cfg = data.draw(configs(parallel=parallel), label="cfg")
    amp = data.draw(st.sampled_from([1.0, 30.0]), label="amp")
    w = _weights(cfg, data.draw(seeds, label="seed"), dtype, amp)
    tokens = data.draw(token_ids(cfg.V, b, t), label="tokens")
    step = data.draw(token_ids(cfg.V, b, 1), label="step")
    c1, c2, cc = _common_block(cfg, w, tokens, step)
    for y1, y2, cache in _both_layers(cfg, w, tokens, step):
        assert_close(y1, c1, "rewrite", dtype)
        assert_close(y2, c2, "rewrite", dtype)
        assert_close(cache.k, cc.k, "rewrite", dtype)  # keys stored after RoPE
        assert_close(cache.v, cc.v, "rewrite", dtype)


def test_parallel_difference_is_one_reordered_add_and_the_bound_bites():
    """The bound is tight enough to matter: it holds for the real reordering, uses
    a visible share, and rejects a table that left out the FFN."""
    cfg = cm.DecoderConfig(
        V=50, C=64, H=8, G=8, D=8, F=96, L=1, parallel=True, norm="layernorm",
        act="gelu", rot_dim=2,
    )  # fmt: skip
    w = _weights(cfg, 11, F32)
    rng = np.random.default_rng(0)
    tokens, step = rng.integers(0, 50, (3, 40)), rng.integers(0, 50, (3, 1))
    (s1, _, _), (t1, _, _) = _both_layers(cfg, w, tokens, step)
    (bound, _) = _parallel_bound(cfg, w, tokens, step, UNIT_ROUNDOFF["float32"])
    used = _assert_within(t1, s1, bound)
    print("parallel fp32, table vs standard:", f"{100 * used:.3g} % of the bound")
    assert used > 0.01  # the reordering is visible, so the bound is not vacuous
    no_ffn = dataclasses.replace(
        w.layers[0],
        mlp=dataclasses.replace(w.layers[0].mlp, w_out=0 * w.layers[0].mlp.w_out),
    )
    table = pc.build_table(w.embed, no_ffn, cfg)
    cache = cm.KVCache.empty(3, cfg.G, cfg.D, F32)
    bad, _ = pc.first_layer_from_table(table, w.layers[0], cfg, tokens, cache)
    with pytest.raises(AssertionError):
        _assert_within(bad, s1, bound)
    with pytest.raises(AssertionError):
        assert_close(bad, s1, "rewrite", F32)


# --- 3. negative: absolute positions break a token-only table --------------------


@given(data=st.data(), t=st.sampled_from([2, 3, 6]))
def test_absolute_positions_break_a_token_only_table(data, t):
    cfg = data.draw(configs(rope=False), label="cfg")  # rot_dim = 0: no RoPE
    seed = data.draw(seeds, label="seed")
    w = _weights(cfg, seed, F64)
    tokens = data.draw(token_ids(cfg.V, 1, t), label="tokens")
    pos_embed = np.random.default_rng(seed + 1).standard_normal((t, cfg.C))  # (P, C)
    layer = w.layers[0]
    table = pc.build_table(w.embed, layer, cfg)  # can only see E[token]
    cache = cm.KVCache.empty(1, cfg.G, cfg.D, F64)
    got, _ = pc.first_layer_from_table(table, layer, cfg, tokens, cache)
    want, _ = pc.first_layer(w.embed, layer, cfg, tokens, cache, pos_embed=pos_embed)
    with pytest.raises(AssertionError):
        assert_close(got, want, "rewrite", F64)
    # with all-zero position vectors the same table is right again (the control)
    zero, _ = pc.first_layer(w.embed, layer, cfg, tokens, cache, 0 * pos_embed)
    if cfg.parallel:
        assert_close(got, zero, "rewrite", F64)
    else:
        assert_close(got, zero, "exact", F64)


# --- 4. a whole decoder with the table generates the same tokens ------------------


@given(
    cfg=configs(),
    b=st.sampled_from([1, 2]),
    t0=st.sampled_from([1, 3]),
    seed=seeds,
)
def test_decoder_with_table_generates_same_tokens(cfg, b, t0, seed):
    w = _weights(cfg, seed, F64)
    prompt = np.random.default_rng(seed).integers(0, cfg.V, (b, t0))
    table = pc.build_table(w.embed, w.layers[0], cfg)
    want = cm.greedy_generate(w, cfg, prompt, n_new=4)  # the library's decoder
    got = pc.greedy_generate_with_table(w, cfg, table, prompt, n_new=4)
    assert_close(got, want, "exact", F64)
    logits, _ = cm.prefill(w, cfg, want)
    logits_t, _ = pc.prefill_with_table(w, cfg, table, want)
    assert_close(logits_t, logits, "rewrite", F64)


def test_checker_rejects_decoder_with_the_wrong_layers_table():
    cfg = cm.DecoderConfig(V=13, C=12, H=3, G=1, D=4, F=8, L=2)
    w = _weights(cfg, 5, F64)
    prompt = np.array([[12, 3, 3]])
    wrong = pc.build_table(w.embed, w.layers[1], cfg)  # layer 2's weights
    logits, _ = cm.prefill(w, cfg, prompt)
    with pytest.raises(AssertionError):
        assert_close(
            pc.prefill_with_table(w, cfg, wrong, prompt)[0], logits, "rewrite", F64
        )


def test_bad_token_ids_raise():
    cfg = cm.DecoderConfig(V=5, C=8, H=2, G=1, D=4, F=3, L=1)
    w = _weights(cfg, 0, F64)
    table = pc.build_table(w.embed, w.layers[0], cfg)
    with pytest.raises(ValueError, match="tokens"):
        pc.prefill_with_table(w, cfg, table, np.array([[5]]))
    with pytest.raises(ValueError, match="token ids"):
        pc.gather_rope(table, np.array([-1]), np.array([0]), cfg)
    with pytest.raises(ValueError, match="positions"):
        pc.gather_rope(table, np.array([1, 2]), np.array([0]), cfg)


# --- 5. the gather+RoPE specification and its GPU tolerance -----------------------


def gpu_scale(table, tokens) -> float:
    """The 'gpu' rows' error scale for gather+RoPE: max|x| over the gathered rows.

    Derivation: a rotated value y1 = x1 c - x2 s in float32, with c and s rounded
    once to float32 (rope_table), errs by at most u(|x1| + |x2|) from the rounded
    c, s plus 2u(|x1| + |x2|) from two products and a sum (fewer with an FMA): 3u
    (|x1| + |x2|) <= 6u max|x| = atol * scale. Copied values are exact; the fp16
    row adds the output rounding (rtol u16).
    """
    return float(np.abs(np.asarray(table, F64)[np.asarray(tokens)]).max(initial=0.0))


@pytest.mark.parametrize("dtype", [F32, F16], ids=["f32", "f16"])
@given(cfg=configs(), n=st.integers(1, 9), seed=seeds)
def test_gather_rope_in_float32_within_the_gpu_tolerance(dtype, cfg, n, seed):
    """The reference run in float32 (the GPU's arithmetic, float32 cos/sin)
    stays inside the 'gpu' tolerance the GPU tests use: the derivation holds."""
    rng = np.random.default_rng(seed)
    table = (40 * rng.standard_normal((cfg.V, pc.row_width(cfg)))).astype(dtype)
    tokens, pos = rng.integers(0, cfg.V, n), rng.integers(0, 5000, n)
    truth = pc.gather_rope(table.astype(F64), tokens, pos, cfg)
    got = pc.gather_rope(table.astype(F32), tokens, pos, cfg).astype(dtype)
    assert_close(got, truth, "gpu", dtype, gpu_scale(table, tokens))


def test_gather_rope_is_the_rotated_layer_q_and_k():
    """gather_rope's q and k are exactly what the first layer's attention uses."""
    cfg = cm.DecoderConfig(V=11, C=24, H=4, G=2, D=6, F=5, L=1, rot_dim=4)
    w = _weights(cfg, 2, F64)
    table = pc.build_table(w.embed, w.layers[0], cfg)
    tokens = np.array([10, 0, 10, 4])
    out = pc.gather_rope(table, tokens, np.arange(4), cfg)  # positions 0..3
    lay, a = pc.row_layout(cfg), w.layers[0].attn
    xn = cm.norm(w.embed[tokens], w.layers[0].norm1, cfg.norm)  # (4, C)
    for name, wm, n in (("q", a.w_q, cfg.H), ("k", a.w_k, cfg.G)):
        heads = pc.linear(xn, wm).reshape(4, n, cfg.D).transpose(1, 0, 2)
        want = cm.apply_rope(heads, np.arange(4), cfg.rot_dim).transpose(1, 0, 2)
        assert_close(out[:, lay[name]], want.reshape(4, -1), "exact", F64)
    assert_close(out[:, lay["v"]], table[tokens][:, lay["v"]], "exact", F64)


def test_checker_rejects_rope_one_position_late():
    cfg = cm.DecoderConfig(V=7, C=32, H=4, G=4, D=8, F=4, L=1, parallel=True)
    rng = np.random.default_rng(4)
    table = rng.standard_normal((7, pc.row_width(cfg))).astype(F32)
    tokens, pos = np.array([6, 1, 6]), np.array([0, 1, 2])
    truth = pc.gather_rope(table.astype(F64), tokens, pos, cfg)
    late = pc.gather_rope(table, tokens, pos + 1, cfg)
    with pytest.raises(AssertionError):
        assert_close(late, truth, "gpu", F32, gpu_scale(table, tokens))


# --- 6. the paper's tables ---------------------------------------------------------

PAPER = {  # name: (parallel, eliminated, reads B=1, factors B=1,16,256,1024, net)
    "pythia-6.9b": (
        None, 184_549_376, 184_553_472, (11264, 704, 44, 11), 434_765_824,
    ),
    "mistral-7b": (None, 25_165_824, 25_169_920, (2458, 154, 10, 3), 171_442_176),
    "mixtral-8x7b": (  # the paper's hypothetical parallel Mixtral
        True, 1_434_451_968, 1_434_456_064, (140084, 8756, 548, 137), -1_237_843_968,
    ),
}  # fmt: skip
PAPER_NET_PCT = {"pythia-6.9b": 6, "mistral-7b": 2, "mixtral-8x7b": -3}


@pytest.mark.parametrize("name", list(PAPER))
def test_paper_savings_table_reproduced(name):
    cfg = md.as_in_paper(md.MODELS[name])
    par, elim, reads1, factors, net = PAPER[name]
    assert pc.precompute_eliminated_weights(cfg, par) == elim
    assert pc.precompute_reads(cfg, 1, False, par) == reads1
    assert pc.precompute_reads(cfg, 1, True, par) == 2 * (cfg.d_model + cfg.kv_width)
    got = tuple(round(pc.precompute_reduction(cfg, b, par)) for b in (1, 16, 256, 1024))
    assert got == factors
    mem = pc.precompute_memory(cfg, par)
    assert mem["increase"] == (2 * cfg.kv_width + cfg.d_model) * cfg.vocab
    assert mem["net"] == net
    assert round(100 * mem["relative"]) == PAPER_NET_PCT[name]


def test_honest_numbers():
    """What the paper's headline hides (research/papers_graef.md B.3)."""
    mistral, pythia = md.MODELS["mistral-7b"], md.MODELS["pythia-6.9b"]
    assert 0.0034 < pc.precompute_read_saving(mistral) < 0.0036  # ~0.35 %
    assert 0.026 < pc.precompute_read_saving(pythia) < 0.029  # ~2.7 %
    assert pc.precompute_memory(pythia)["increase"] == 619_708_416  # V = 50,432
    mixtral = md.MODELS["mixtral-8x7b"]
    assert round(pc.precompute_reduction(mixtral, 1, True, n_experts=2)) == 36_864
    tied = dataclasses.replace(pythia, tied_embeddings=True)  # E kept for the head
    assert pc.precompute_memory(tied)["increase"] == 16_384 * 50_432
    serial_tied = dataclasses.replace(mistral, tied_embeddings=True)
    assert (
        pc.precompute_memory(serial_tied)["increase"]
        == pc.precompute_memory(mistral)["increase"]
    )
    assert not pc.precompute_tradeoff(md.MODELS["whisper-tiny"])["applies"]
    assert pc.precompute_tradeoff(mistral)["applies"]


# --- 7. GPU: gather+RoPE kernel against the float64 reference ----------------------

VEC = {np.dtype(F32): 4, np.dtype(F16): 8}


@st.composite
def gpu_cases(draw, version: int, dtype):
    """(cfg, tokens, positions, P, amp, seed) for a kernel version: v1 any D and
    even R; v2/v3 D and R/2 multiples of the 16-byte vector (4 floats, 8 halves).
    Ids include the last one and a repeat; N = 1 is always possible."""
    g = draw(st.sampled_from([1, 2, 3, 5]))
    h = g * draw(st.sampled_from([1, 2, 3, 4]))  # MHA, GQA, MQA; H not a power of 2
    if version == 1:
        d = draw(st.sampled_from([1, 2, 6, 7, 24, 64, 128]))
        rot = draw(st.sampled_from(sorted({0, d - d % 2, d // 4 - d // 4 % 2})))
    else:
        vec = VEC[np.dtype(dtype)]
        d = vec * draw(st.sampled_from([2, 3, 8, 16]))  # 16 * 8 = 128
        quarter = d // 4 // (2 * vec) * 2 * vec  # Pythia: R = D/4 = 32 at D = 128
        full = d // (2 * vec) * 2 * vec  # all of D when D/2 is whole vectors
        rot = draw(st.sampled_from(sorted({0, 2 * vec, quarter, full})))
    v = draw(st.sampled_from([1, 2, 37, 300]))
    n = draw(st.one_of(st.just(1), st.integers(2, 70), st.integers(71, 700)))
    p = draw(st.sampled_from([1, 17, 5000]))
    seed = draw(seeds)
    rng = np.random.default_rng(seed)
    ids, pos = rng.integers(0, v, n), rng.integers(0, p, n)
    ids[0] = ids[-1] = v - 1  # the last id, repeated
    cfg = cm.DecoderConfig(
        V=v, C=h * d, H=h, G=g, D=d, F=1, L=1, parallel=draw(st.booleans()),
        rot_dim=rot,
    )  # fmt: skip
    amp = draw(st.sampled_from([1.0, 100.0]))
    return cfg, ids, pos, p, amp, seed


def _gpu_gather(table, tokens, pos, p, cfg, version, **kw):
    import cupy as cp

    from gpu import precompute as gp
    from gpu import runtime as rt

    lay = gp.layout_of(cfg)
    cos, sin = gp.rope_tables(p, lay["rot_dim"], cfg.rope_base)
    out = rt.poisoned((tokens.shape[0], table.shape[1]), table.dtype)
    res = gp.gather_rope(
        cp.asarray(table),
        cp.asarray(tokens, dtype=cp.int32),
        cp.asarray(pos, dtype=cp.int32),
        cos,
        sin,
        **lay,
        version=version,
        out=out,
        **kw,
    )
    assert res is out
    return cp.asnumpy(out)


def _check_gpu(case, version, dtype):
    cfg, tokens, pos, p, amp, seed = case
    rng = np.random.default_rng(seed)
    table = (amp * rng.standard_normal((cfg.V, pc.row_width(cfg)))).astype(dtype)
    got = _gpu_gather(table, tokens, pos, p, cfg, version)
    truth = pc.gather_rope(table.astype(F64), tokens, pos, cfg)
    return assert_close(got, truth, "gpu", dtype, gpu_scale(table, tokens))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [F32, F16], ids=["f32", "f16"])
@pytest.mark.parametrize("version", [1, 2, 3])
def test_gpu_gather_matches_reference(version, dtype):
    @given(case=gpu_cases(version, dtype))
    def prop(case):
        _check_gpu(case, version, dtype)

    prop()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [F32, F16], ids=["f32", "f16"])
@pytest.mark.parametrize(
    "name", ["mistral-7b", "pythia-6.9b"], ids=["mistral", "pythia"]
)
def test_gpu_gather_real_row_shapes(name, dtype):
    """The benchmark's shapes (W = 10,240 / 16,384; R = 128 / 32), N = 1024 tokens
    from a 512-row table, every version and the default pick."""
    m = md.MODELS[name]
    rot = round(m.head_dim * (m.rot_pct or 1.0))
    cfg = cm.DecoderConfig(
        V=512, C=m.d_model, H=m.n_heads, G=m.n_kv_heads, D=m.head_dim, F=1, L=1,
        parallel=bool(m.parallel_block), rot_dim=rot,
    )  # fmt: skip
    rng = np.random.default_rng(1)
    tokens, pos = rng.integers(0, 512, 1024), rng.integers(0, 4096, 1024)
    tokens[-1] = 511
    for version in (1, 2, 3, None):
        used = _check_gpu((cfg, tokens, pos, 4096, 1.0, 3), version, dtype)
        print(f"{name} {np.dtype(dtype).name} v{version}: {describe(used)}")


@pytest.mark.gpu
def test_gpu_default_version_falls_back_for_unaligned_rows():
    """D = 6 does not tile into 16-byte vectors: version=None takes v1, v3 refuses."""
    cfg = cm.DecoderConfig(V=5, C=12, H=2, G=1, D=6, F=1, L=1, rot_dim=4)
    tokens, pos = np.array([4, 0, 4]), np.array([0, 3, 9])
    _check_gpu((cfg, tokens, pos, 10, 1.0, 0), None, F16)
    with pytest.raises(ValueError, match="multiples of 8"):
        _check_gpu((cfg, tokens, pos, 10, 1.0, 0), 3, F16)


@pytest.mark.gpu
@pytest.mark.parametrize("version", [1, 2, 3])
def test_gpu_bad_id_reads_nothing_and_writes_nan(version):
    """With the launcher's check skipped, an out-of-range id or position still reads
    nothing (compute-sanitizer's memcheck runs this) and its row is NaN."""
    cfg = cm.DecoderConfig(V=4, C=64, H=4, G=2, D=16, F=1, L=1, parallel=True)
    rng = np.random.default_rng(0)
    table = rng.standard_normal((4, pc.row_width(cfg))).astype(F16)
    tokens, pos = np.array([3, 4, 1, -7, 2]), np.array([0, 1, 99, 2, -1])
    got = _gpu_gather(table, tokens, pos, 8, cfg, version, check_ids=False)
    assert np.isnan(got[1:]).all()  # id 4 = V, id -7, position 99 >= P, position -1
    truth = pc.gather_rope(table.astype(F64), tokens[:1], pos[:1], cfg)
    assert_close(got[:1], truth, "gpu", F16, gpu_scale(table, tokens[:1]))


@pytest.mark.gpu
def test_gpu_deterministic_and_checker_rejects_late_rope():
    cfg = cm.DecoderConfig(V=300, C=512, H=4, G=2, D=128, F=1, L=1, rot_dim=32)
    rng = np.random.default_rng(2)
    table = rng.standard_normal((300, pc.row_width(cfg))).astype(F16)
    tokens, pos = rng.integers(0, 300, 257), rng.integers(0, 999, 257)
    truth = pc.gather_rope(table.astype(F64), tokens, pos, cfg)
    for version in (1, 2, 3):
        a = _gpu_gather(table, tokens, pos, 1000, cfg, version)
        assert np.array_equal(a, _gpu_gather(table, tokens, pos, 1000, cfg, version))
        late = _gpu_gather(table, tokens, pos + 1, 1000, cfg, version)
        with pytest.raises(AssertionError):
            assert_close(late, truth, "gpu", F16, gpu_scale(table, tokens))


@pytest.mark.gpu
def test_gpu_bad_inputs_rejected_before_launch():
    import cupy as cp

    from gpu import precompute as gp

    table = cp.ones((10, 64), cp.float16)
    tok, pos = cp.zeros(3, cp.int32), cp.zeros(3, cp.int32)
    cos, sin = gp.rope_tables(8, 16)
    lay = dict(rot_off=0, n_heads=2, head_dim=16, rot_dim=16)

    def call(t=table, k=tok, p=pos, c=cos, s=sin, **kw):
        return gp.gather_rope(t, k, p, c, s, **{**lay, **kw})

    with pytest.raises(ValueError, match=r"tokens must lie in \[0, 10\)"):
        call(k=cp.asarray([0, 10, 1], cp.int32))
    with pytest.raises(ValueError, match="tokens must lie"):
        call(k=cp.asarray([-1], cp.int32), p=cp.zeros(1, cp.int32))
    with pytest.raises(ValueError, match=r"positions must lie in \[0, 8\)"):
        call(p=cp.asarray([0, 8, 1], cp.int32))
    with pytest.raises(TypeError, match="tokens must have dtype int32"):
        call(k=tok.astype(cp.int64))
    with pytest.raises(TypeError, match="table must have dtype"):
        call(t=table.astype(cp.float64))
    with pytest.raises(TypeError, match="table must be a cupy.ndarray"):
        call(t=cp.asnumpy(table))
    with pytest.raises(ValueError, match="positions must have shape"):
        call(p=cp.zeros(4, cp.int32))
    with pytest.raises(ValueError, match="cos must have shape"):
        call(rot_dim=8)
    with pytest.raises(ValueError, match="rot_dim must be even"):
        call(rot_dim=7)
    with pytest.raises(ValueError, match="inside the row"):
        call(rot_off=48)
    with pytest.raises(ValueError, match="C-contiguous"):
        call(t=cp.ones((64, 10), cp.float16).T)
    with pytest.raises(ValueError, match="16-byte aligned"):
        flat = cp.ones(10 * 64 + 1, cp.float16)
        call(t=flat[1:].reshape(10, 64), version=2)
    with pytest.raises(ValueError, match="out must have shape"):
        call(out=cp.empty((3, 63), cp.float16))
    with pytest.raises(ValueError, match="grid limit"):
        big = cp.zeros(65536, cp.int32)
        call(k=big, p=big)
    with pytest.raises(ValueError, match="N must be >= 1"):
        call(k=tok[:0], p=pos[:0])
    with pytest.raises(ValueError, match="version"):
        call(version=4)


@pytest.mark.gpu
@pytest.mark.parametrize("layer", [False, True], ids=["rmsnorm", "layernorm"])
@given(b=st.sampled_from([1, 3]), c=st.sampled_from([1, 7, 300, 4096]), seed=seeds)
def test_gpu_baseline_norm_matches_reference(layer, b, c, seed):
    """precompute_norm_v1, the benchmark baseline's first step, against float64:
    fp32 sums over C give lam sqrt(C) u relative in the variance, a few u more in
    rsqrt and the products, so scale = (sqrt(C) + 4) max|x - mu| inv max|g|."""
    import cupy as cp

    from gpu import precompute as gp
    from gpu import runtime as rt

    rng = np.random.default_rng(seed)
    x = (3 * rng.standard_normal((b, c)) + 1).astype(F16)
    g, beta = (rng.standard_normal(c).astype(F16) for _ in range(2))
    y = rt.poisoned((b, c), F16)
    fn = rt.kernel(gp.SLUG, "precompute_norm_v1_f16")
    args = (cp.asarray(x), cp.asarray(g), cp.asarray(beta), y, np.int32(c))
    fn((b,), (256,), args + (np.float32(1e-5), np.int32(layer)))
    x64, g64, b64 = (a.astype(F64) for a in (x, g, beta))
    mu = x64.mean(-1, keepdims=True) if layer else 0.0
    inv = 1 / np.sqrt(((x64 - mu) ** 2).mean(-1, keepdims=True) + 1e-5)
    want = (x64 - mu) * inv * g64 + (b64 if layer else 0.0)
    scale = (np.sqrt(c) + 4) * float((np.abs(x64 - mu) * inv).max() * np.abs(g64).max())
    assert_close(cp.asnumpy(y), want, "gpu", F16, scale)
