"""Approximating two-layer FFNs: reference properties (CPU) and the GPU sigma-MoE
layer (marked ``gpu``).

CPU: Top-K with K >= nnz equals the dense MLP and its error bound holds for smaller
K; product-key top-k equals brute force; the MoE with all experts and gate 1 equals
the concatenated dense MLP, with the sigmoid gate the gate-scaled dense one; CVMM
equals the per-pair loop and commutes with token permutation; the counting sort
equals bincount/cumsum/stable argsort; the entropy regulariser is -log E for
uniform routing and >= -log E always; a dropped expert is never selected; after the
init every router column has the same norm and the std is kept.
GPU: gpu/ffn_approx.cu stage by stage and whole against the float64 reference on
Hypothesis-drawn shapes and routings (T = 1, T off the tiles, experts with no
tokens, all tokens to one expert, large values), outputs poisoned; bad input
rejected before launch. Every checker has a known-wrong case it must reject.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference import ffn_approx as fa
from reference.testing import assert_close, describe, moe_scale, sparse_mlp_scale

F64, F32, F16 = np.float64, np.float32, np.float16
seeds = st.integers(0, 2**32 - 1)


def _mlp(rng, t, c, f, amp=1.0):
    x = amp * rng.standard_normal((t, c))
    w1 = rng.standard_normal((c, f)) / math.sqrt(c)
    w2 = rng.standard_normal((f, c)) / math.sqrt(f)
    return x, w1, w2


def _dot_scale(x, w1, w2):
    """sparse_mlp_scale (worst case) in the neuron-major layout it expects."""
    f, c = w2.shape
    return sparse_mlp_scale(x, w1.T, np.zeros(f), w2, np.zeros(c), worst_case=True)


# --- Top-K activation -------------------------------------------------------------


@given(
    t=st.sampled_from([1, 2, 5]),
    c=st.sampled_from([1, 4, 17]),
    f=st.sampled_from([1, 8, 33]),
    by_norm=st.booleans(),
    amp=st.sampled_from([1.0, 1e3]),
    seed=seeds,
)
def test_topk_with_k_at_least_nnz_is_dense(t, c, f, by_norm, amp, seed):
    rng = np.random.default_rng(seed)
    x, w1, w2 = _mlp(rng, t, c, f, amp)
    nnz = int((x @ w1 > 0).sum(axis=1).max())
    k = int(rng.integers(nnz, f + 1)) if nnz < f else f
    got = fa.topk_mlp(x, w1, w2, max(k, 1), by_norm)
    assert_close(got, fa.dense_mlp(x, w1, w2), "dot", F64, _dot_scale(x, w1, w2))


@given(
    k=st.integers(1, 40),
    by_norm=st.booleans(),
    seed=seeds,
)
def test_topk_error_bound_holds_and_norm_ranking_minimises_it(k, by_norm, seed):
    rng = np.random.default_rng(seed)
    x, w1, w2 = _mlp(rng, 4, 16, 40)
    err = np.linalg.norm(
        fa.dense_mlp(x, w1, w2) - fa.topk_mlp(x, w1, w2, k, by_norm), axis=1
    )
    bound = fa.topk_error_bound(x, w1, w2, k, by_norm)
    slack = 4 * 2**-53 * _dot_scale(x, w1, w2) * math.sqrt(16)
    assert np.all(err <= bound * (1 + 1e-12) + slack), (err, bound)
    best = fa.topk_error_bound(x, w1, w2, k, by_norm=True)
    assert np.all(best <= fa.topk_error_bound(x, w1, w2, k) * (1 + 1e-12))


def test_checker_rejects_topk_below_nnz():
    """Known-wrong: K = nnz - 1 drops an active unit and must fail."""
    rng = np.random.default_rng(1)
    x, w1, w2 = _mlp(rng, 1, 32, 64)
    nnz = int((x @ w1 > 0).sum())
    with pytest.raises(AssertionError):
        assert_close(
            fa.topk_mlp(x, w1, w2, nnz - 1), fa.dense_mlp(x, w1, w2), "dot", F64,
            _dot_scale(x, w1, w2),
        )  # fmt: skip


# --- product keys -----------------------------------------------------------------


@given(
    n=st.sampled_from([1, 3, 8, 16]),
    dk=st.sampled_from([1, 4]),
    t=st.sampled_from([1, 3]),
    k=st.integers(1, 16),
    seed=seeds,
)
def test_product_key_topk_equals_brute_force(n, dk, t, k, seed):
    rng = np.random.default_rng(seed)
    k = min(k, n)
    q = rng.standard_normal((t, 2 * dk))
    ka, kb = rng.standard_normal((2, n, dk))
    s, ids = fa.pkm_topk(q, ka, kb, k)
    s_bf, ids_bf = fa.pkm_topk_bruteforce(q, ka, kb, k)
    assert_close(s, s_bf, "exact", F64)  # the same sums, so bitwise
    for r in range(t):  # the same sets (ties among equal scores aside)
        if np.unique(s_bf[r]).size == k:
            assert set(ids[r]) == set(ids_bf[r])


def test_pkm_outputs_and_a_wrong_search_is_caught():
    rng = np.random.default_rng(2)
    n, dk, c, k = 8, 4, 6, 5
    x, w_q = rng.standard_normal((3, c)), rng.standard_normal((c, 2 * dk))
    ka, kb = rng.standard_normal((2, n, dk))
    vals = rng.standard_normal((n * n, c))
    for act in ("relu", "softmax"):
        s, ids = fa.pkm_topk_bruteforce(x @ w_q, ka, kb, k)
        a = (
            np.maximum(s, 0)
            if act == "relu"
            else np.exp(s) / np.exp(s).sum(1, keepdims=True)
        )
        want = np.einsum("tk,tkc->tc", a, vals[ids])
        got = fa.pkm(x, w_q, ka, kb, vals, k, act)
        assert_close(got, want, "rewrite", F64, np.abs(vals).max() * k)
    # known-wrong: searching only the top-1 of each half misses keys
    s1, _ = fa.pkm_topk(x @ w_q, ka, kb, 1)
    with pytest.raises(AssertionError):
        assert_close(
            np.repeat(s1, k, 1),
            fa.pkm_topk_bruteforce(x @ w_q, ka, kb, k)[0],
            "exact",
            F64,
        )
    with pytest.raises(ValueError, match="act"):
        fa.pkm(x, w_q, ka, kb, vals, k, "gelu")


# --- sigma-MoE ----------------------------------------------------------------------


@st.composite
def moe_case(draw):
    t = draw(st.sampled_from([1, 2, 7, 20]))
    c = draw(st.sampled_from([2, 5, 16]))
    e = draw(st.sampled_from([1, 2, 5, 8]))
    g = draw(st.sampled_from([1, 3, 8]))
    amp = draw(st.sampled_from([1.0, 1e3]))
    rng = np.random.default_rng(draw(seeds))
    w = fa.init_sigma_moe(rng, c, e, g)
    return (amp * rng.standard_normal((t, c))), w, rng


@given(data=st.data())
def test_all_experts_gate_one_is_dense_and_sigmoid_gate_is_scaled_dense(data):
    x, w, _ = data.draw(moe_case())
    e = w.w1.shape[0]
    idx, gate = fa.route(x, w.w3, e)
    w1, w2 = fa.moe_as_dense(w)
    ones = np.ones_like(gate)
    sc = moe_scale(x, w.w1, w.w2, idx, ones, worst_case=True)
    assert_close(fa.moe_cvmm(x, w, idx, ones), fa.dense_mlp(x, w1, w2), "dot", F64, sc)
    s = fa.sigmoid(x @ w.w3)
    sc = moe_scale(x, w.w1, w.w2, idx, gate, worst_case=True)
    assert_close(
        fa.moe_cvmm(x, w, idx, gate), fa.gate_scaled_dense(x, w, s), "dot", F64, sc
    )


@given(data=st.data(), k=st.integers(1, 8))
def test_cvmm_equals_the_pair_loop_and_commutes_with_permutation(data, k):
    x, w, rng = data.draw(moe_case())
    k = min(k, w.w1.shape[0])
    idx, gate = fa.route(x, w.w3, k)
    want = fa.moe_loop(x, w, idx, gate)
    sc = moe_scale(x, w.w1, w.w2, idx, gate, worst_case=True)
    assert_close(fa.moe_cvmm(x, w, idx, gate), want, "dot", F64, sc)
    perm = rng.permutation(x.shape[0])
    got = fa.moe_cvmm(x[perm], w, idx[perm], gate[perm])
    assert_close(got, want[perm], "dot", F64, sc)


def test_checker_rejects_a_misrouted_pair_and_a_lost_slot():
    """Known-wrong: one pair sent to the next expert, or a slot left out."""
    rng = np.random.default_rng(3)
    w = fa.init_sigma_moe(rng, 16, 8, 8)
    x = rng.standard_normal((5, 16))
    idx, gate = fa.route(x, w.w3, 2)
    want = fa.moe_loop(x, w, idx, gate)
    sc = moe_scale(x, w.w1, w.w2, idx, gate, worst_case=True)
    bad = idx.copy()
    bad[0, 0] = (bad[0, 0] + 3) % 8
    assert bad[0, 0] != bad[0, 1]
    with pytest.raises(AssertionError):
        assert_close(fa.moe_cvmm(x, w, bad, gate), want, "dot", F64, sc)
    lost = gate.copy()
    lost[:, 1] = 0
    with pytest.raises(AssertionError):
        assert_close(fa.moe_cvmm(x, w, idx, lost), want, "dot", F64, sc)


@given(
    p=st.integers(0, 60),
    e=st.sampled_from([1, 2, 7, 32]),
    kind=st.sampled_from(["random", "one", "skewed"]),
    seed=seeds,
)
def test_counting_sort_is_bincount_cumsum_and_stable(p, e, kind, seed):
    rng = np.random.default_rng(seed)
    if kind == "one":  # every pair to one expert; the others get none
        ex = np.full(p, rng.integers(e))
    elif kind == "skewed":
        ex = np.minimum(rng.geometric(0.5, p) - 1, e - 1)
    else:
        ex = rng.integers(0, e, p)
    order, counts, offsets = fa.counting_sort(ex, e)
    assert np.array_equal(counts, np.bincount(ex, minlength=e))
    assert np.array_equal(offsets, np.concatenate([[0], np.cumsum(counts)]))
    assert np.array_equal(order, np.argsort(ex, kind="stable"))


@given(
    t=st.integers(1, 30),
    e=st.sampled_from([1, 2, 8, 32]),
    amp=st.sampled_from([0.1, 1.0, 30.0]),
    seed=seeds,
)
def test_entropy_regulariser_bounds(t, e, amp, seed):
    rng = np.random.default_rng(seed)
    big = 1e-12 * math.log(e) + 1e-15
    assert abs(fa.entropy_reg(np.full((t, e), amp)) + math.log(e)) <= big
    reg = fa.entropy_reg(amp * rng.standard_normal((t, e)))
    assert -math.log(e) - big <= reg <= big
    collapsed = np.zeros((t, e))
    collapsed[:, 0] = 1000.0
    assert abs(fa.entropy_reg(collapsed)) <= 1e-12  # every token to one expert
    perm = np.tile(np.eye(e) * 1000.0, (1, 1))  # token i to expert i: uniform mean
    assert abs(fa.entropy_reg(perm) + math.log(e)) <= big


@given(data=st.data(), drop=st.sampled_from([0.1, 0.5, 0.9]), k=st.integers(1, 4))
def test_dropped_expert_is_never_selected(data, drop, k):
    x, w, rng = data.draw(moe_case())
    e = w.w1.shape[0]
    k = min(k, e)
    state = rng.bit_generator.state
    idx, gate = fa.route(x, w.w3, k, drop, rng)
    rng.bit_generator.state = state
    dropped = rng.random((x.shape[0], e)) < drop  # the same draws
    for t in range(x.shape[0]):
        sel = idx[t][idx[t] >= 0]
        assert not dropped[t, sel].any()
        assert sel.size == min(k, int((~dropped[t]).sum()))
    assert np.all(gate[idx < 0] == 0)


@given(
    c=st.sampled_from([2, 16, 412]),
    e=st.sampled_from([2, 16, 32]),
    s=st.sampled_from([1.0, math.sqrt(2 / 16)]),
    seed=seeds,
)
def test_init_router_columns_equal_norm_std_kept(c, e, s, seed):
    rng = np.random.default_rng(seed)
    w = fa.init_sigma_moe(rng, c, e, 4, std_scale=s)
    norms = np.linalg.norm(w.w3, axis=0)
    assert np.allclose(norms, norms[0], rtol=1e-12)
    raw = np.random.default_rng(seed).standard_normal((c, e)) * (s / math.sqrt(c))
    assert abs(fa.renorm_keep_std(raw).std(ddof=1) / raw.std(ddof=1) - 1) < 1e-12


def test_flops_ratio_of_the_paper_configs():
    """Prefill FLOPs per token against the parameter-equal dense MLP: ~K/E."""
    for c, e, g, k, want in ((412, 16, 128, 4, 0.25), (1024, 32, 128, 4, 0.125)):
        r = fa.moe_flops(c, e, g, k) / fa.dense_flops(c, e * g)
        assert want < r < want * 1.07, (c, r)


@pytest.mark.parametrize("dtype", [F32])
@given(data=st.data(), k=st.integers(1, 4))
def test_float32_twin_within_the_gpu_tolerance(dtype, data, k):
    """The float32 NumPy CVMM against float64 stays inside the "gpu" row with the
    probabilistic scale: the tolerance the kernels are held to is not too tight."""
    x, w, _ = data.draw(moe_case())
    k = min(k, w.w1.shape[0])
    idx, gate = fa.route(x, w.w3, k)
    w32 = fa.MoEWeights(*(a.astype(dtype) for a in (w.w1, w.w2, w.w3)))
    got = fa.moe_cvmm(x.astype(dtype), w32, idx, gate.astype(dtype))
    x64 = x.astype(dtype).astype(F64)
    w64 = fa.MoEWeights(*(a.astype(F64) for a in (w32.w1, w32.w2, w32.w3)))
    g64 = gate.astype(dtype).astype(F64)
    sc = moe_scale(x64, w64.w1, w64.w2, idx, g64)
    assert_close(got, fa.moe_loop(x64, w64, idx, g64), "gpu", dtype, sc)


# --- GPU (gpu/ffn_approx.cu) ----------------------------------------------------------

GPU_VERSIONS = [(1, F32), (2, F32), *((v, F16) for v in range(1, 11))]


@st.composite
def gpu_case(draw, version, dtype):
    """Shapes off every tile (64, 128; v5's 64 x 128 and 32-deep slabs) with T = 1
    and past a tile; routings that leave experts empty, send every token to one
    expert, or are the router's. E = 33 takes v5 through hist_v3 (no router v3);
    G = 264 takes v6's down GEMM back to v5's (its w2 slice would not fit); T = 200
    with one expert spans several of down v6's 256-row chunks."""
    vec = 8 if version >= 3 else 1
    t = draw(st.sampled_from([1, 3, 64, 65, 200]))
    c = vec * draw(st.sampled_from([1, 3, 17, 40]))
    g = vec * draw(st.sampled_from([1, 2, 9, 16, 17, 33]))  # v6: G > 256 too
    e = draw(st.sampled_from([1, 3, 8, 33]))
    k = min(e, draw(st.sampled_from([1, 2, 4])))
    amp = draw(st.sampled_from([1.0, 8.0]))
    how = draw(st.sampled_from(["router", "one", "empty", "random"]))
    rng = np.random.default_rng(draw(seeds))
    w = fa.init_sigma_moe(rng, c, e, g, dtype=dtype)
    x = (amp * rng.standard_normal((t, c))).astype(dtype)
    if how == "one":
        idx = np.full((t, k), rng.integers(e))
    elif how == "empty":  # only the first half of the experts
        idx = rng.integers(0, max(1, e // 2), (t, k))
    elif how == "random":
        idx = rng.integers(0, e, (t, k))
    else:
        idx = fa.route(x.astype(F64), w.w3.astype(F64), k)[0]
    gate = rng.random((t, k)).astype(np.float32)
    return x, w, idx.astype(np.int32), gate


def _f64(w):
    return fa.MoEWeights(*(np.asarray(a, F64) for a in (w.w1, w.w2, w.w3)))


def _poisoned_workspace(t, c, e, g, k, dtype):
    """gfa.workspace with every buffer poisoned: CuPy's pool hands back freed blocks,
    so cp.empty often holds the previous call's right answer. Router slots get -1
    (out of range, which the sorts skip: no out-of-bounds access) and NaN gates, the
    sort's tables -7, the intermediates NaN."""
    from gpu import ffn_approx as gfa

    ws = gfa.workspace(t, c, e, g, k, dtype)
    ws.idx.fill(-1)
    for a in (ws.gate, ws.h, ws.z):
        a.fill(np.nan)
    tables = (ws.counts, ws.offsets, ws.tiles, ws.order, ws.bhist, ws.tiles2)
    for a in (*tables, ws.ticket):  # down v7's tickets too: sort v3 zeroes them
        a.fill(-7)
    return ws


def _run_experts(x, w, idx, gate, version):
    import cupy as cp

    from gpu import ffn_approx as gfa
    from gpu import runtime as rt

    t, c = x.shape
    e, _, g = w.w1.shape
    ws = _poisoned_workspace(t, c, e, g, idx.shape[1], x.dtype)
    out = rt.poisoned(x.shape, x.dtype)
    dev = [cp.asarray(a) for a in (x, w.w1, w.w2, idx, gate)]
    res = gfa.experts(*dev, version=version, out=out, ws=ws)
    assert res is out
    return cp.asnumpy(out), ws


@pytest.mark.gpu
@pytest.mark.parametrize("version,dtype", GPU_VERSIONS)
@given(data=st.data())
def test_gpu_experts_match_reference(version, dtype, data):
    import cupy as cp

    x, w, idx, gate = data.draw(gpu_case(version, dtype))
    got, ws = _run_experts(x, w, idx, gate, version)
    order, counts, offsets = fa.counting_sort(idx.ravel(), w.w1.shape[0])
    assert np.array_equal(cp.asnumpy(ws.counts), counts)
    assert np.array_equal(cp.asnumpy(ws.offsets), offsets)
    assert np.array_equal(cp.asnumpy(ws.order), order)  # stable, deterministic
    x64, w64, g64 = x.astype(F64), _f64(w), gate.astype(F64)
    half = dtype == F16
    sc = moe_scale(x64, w64.w1, w64.w2, idx, g64, h16=half, z16=half)
    used = assert_close(got, fa.moe_loop(x64, w64, idx, g64), "gpu", dtype, sc)
    print(f"v{version} {np.dtype(dtype).name}: {describe(used)}")
    again, _ = _run_experts(x, w, idx, gate, version)
    assert np.array_equal(got, again)  # bitwise reproducible


@pytest.mark.gpu
@given(data=st.data())
def test_gpu_v7_fused_combine_has_v6s_bits(data):
    """v7's down GEMM does the combine itself (a ticket per token and 128-column
    slice; the block that takes the K-th sums the token's rows of z in slot order):
    on any draw it gives v6's bits, whose combine is a launch of its own; and down
    alone again, on the tickets the first call left, gives them once more (the
    completing block resets each ticket)."""
    import cupy as cp

    from gpu import ffn_approx as gfa
    from gpu import runtime as rt

    x, w, idx, gate = data.draw(gpu_case(7, F16))
    v6, _ = _run_experts(x, w, idx, gate, 6)
    v7, ws = _run_experts(x, w, idx, gate, 7)
    assert np.array_equal(v6, v7)
    assert not cp.asnumpy(ws.ticket).any(), "a ticket left unreset"
    again = rt.poisoned(x.shape, x.dtype)
    xd, w1, w2, gd = (cp.asarray(a) for a in (x, w.w1, w.w2, gate))
    gfa.gemm_stage("down", xd, w1, w2, gd, ws, 7, out=again)
    assert np.array_equal(cp.asnumpy(again), v7)


@pytest.mark.gpu
@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("dtype", [F32, F16])
@given(
    t=st.sampled_from([1, 5, 16, 17, 100]),
    c=st.sampled_from([1, 8, 40, 100, 129, 300]),
    e=st.sampled_from([1, 4, 17, 32, 129, 256]),
    k=st.sampled_from([1, 2, 4, 8]),
    seed=seeds,
)
def test_gpu_router_selects_a_valid_top_k(version, dtype, t, c, e, k, seed):
    """The selected set is a top-K of the float64 logits up to the logits' own
    rounding (near-ties may go either way), and the gates match sigmoid. C past
    router v2's staged chunk (128) and E off its expert chunk (16); run twice and
    compared bitwise (v2's warp reduction has a fixed order)."""
    _check_router(version, dtype, t, c, e, k, seed)


@pytest.mark.gpu
@pytest.mark.parametrize("version", [3, 4, 5])
@given(
    t=st.sampled_from([1, 5, 16, 17, 100]),
    c=st.sampled_from([8, 40, 136, 1032]),
    e=st.sampled_from([8, 16, 32, 72, 256]),
    k=st.sampled_from([1, 2, 4, 8]),
    amp=st.sampled_from([1.0, 300.0]),
    seed=seeds,
)
def test_gpu_router_v3_selects_a_valid_top_k(version, t, c, e, k, amp, seed):
    """Routers v3 to v5 (tensor cores, fp16, C and E multiples of 8) as the test
    above: C off their 32- and 128-deep slabs (v5: its 32-wide chunks and its
    8 warps' k-ranges) and past many slabs, E off the 64-expert pass (v5: 32) and
    past several, T off the 16-token block; large x too. Their block histograms
    equal bincount over each block's 16 tokens."""
    _check_router(version, F16, t, c, e, k, seed, amp)


def _check_router(version, dtype, t, c, e, k, seed, amp=1.0):
    import cupy as cp

    from gpu import ffn_approx as gfa
    from gpu import runtime as rt

    k = min(k, e)
    rng = np.random.default_rng(seed)
    x = (amp * rng.standard_normal((t, c))).astype(dtype)
    w3 = (rng.standard_normal((c, e)) / math.sqrt(c)).astype(dtype)
    xd, wd = cp.asarray(x), cp.asarray(w3)
    nb = math.ceil(t / gfa.RT)

    def run():  # into poisoned outputs: an unwritten slot is -1, a gate NaN
        out = (cp.full((t, k), -1, cp.int32), rt.poisoned((t, k), np.float32))
        bh = cp.full((nb, e), -7, cp.int32)
        kw = dict(bhist=bh) if version >= 3 else {}
        res = gfa.route(xd, wd, k, idx=out[0], gate=out[1], version=version, **kw)
        assert res[0] is out[0] and res[1] is out[1]
        return [cp.asnumpy(a) for a in (*out, bh)]

    idx, gate, bh = run()
    again = run()
    assert np.array_equal(idx, again[0]) and np.array_equal(gate, again[1])
    if version >= 3:
        blocks = np.arange(t) // gfa.RT  # the block of each token
        want = np.zeros((nb, e), np.int64)
        np.add.at(want, (np.repeat(blocks, k), idx.ravel()), 1)
        assert np.array_equal(bh, want)
    x64, w64 = x.astype(F64), w3.astype(F64)
    logit = x64 @ w64  # (T, E)
    err = 6 * math.sqrt(c) * 2**-24 * (np.abs(x64) @ np.abs(w64)) + 1e-30  # (T, E)
    for r in range(t):
        sel = idx[r]
        assert np.unique(sel).size == k and sel.min() >= 0 and sel.max() < e
        rest = np.setdiff1d(np.arange(e), sel)
        if rest.size:
            lo = (logit[r, sel] + err[r, sel]).min()
            assert lo >= (logit[r, rest] - err[r, rest]).max(), r
    s = 1 / (1 + np.exp(-np.take_along_axis(logit, idx.astype(np.int64), 1)))
    r_sc = np.abs(x64) @ np.abs(w64)
    sc = float(math.sqrt(c) * r_sc.max() / 4 + 2)
    assert_close(gate, s, "gpu", F32, sc)


@pytest.mark.gpu
@pytest.mark.parametrize("version", [1, 2, 3])
@given(
    t=st.sampled_from([1, 7, 33, 257, 2000]),
    k=st.sampled_from([1, 2, 4, 8]),
    e=st.sampled_from([1, 3, 33, 256]),
    kind=st.sampled_from(["random", "one", "skewed"]),
    seed=seeds,
)
def test_gpu_sort_is_the_stable_counting_sort(version, t, k, e, kind, seed):
    """Every sort version gives counting_sort's counts, offsets and order exactly,
    and the tile table, for P from 1 to past many 32-pair chunks per warp (sort v2
    gives each of its 32 warps ceil(P / 32) pairs) and T off sort v3's 16-token
    blocks (its histograms come from hist_v3 here)."""
    import cupy as cp

    from gpu import ffn_approx as gfa

    rng = np.random.default_rng(seed)
    if kind == "one":
        idx = np.full((t, k), rng.integers(e))
    elif kind == "skewed":  # most pairs on expert 0, a few elsewhere
        idx = np.where(rng.random((t, k)) < 0.9, 0, rng.integers(0, e, (t, k)))
    else:
        idx = rng.integers(0, e, (t, k))
    idx = idx.astype(np.int32)
    ws = gfa.workspace(t, 8, e, 8, k, np.float16)
    tables = (ws.counts, ws.offsets, ws.tiles, ws.order, ws.bhist, ws.tiles2)
    for a in (*tables, ws.ticket):
        a.fill(-7)
    tickets = version == 3  # for down v7: zeroed by sort v3 (v5, v6: left alone)
    gfa.sort_pairs(cp.asarray(idx), e, 64, ws, version=version, tickets=tickets)
    order, counts, offsets = fa.counting_sort(idx.ravel(), e)
    assert np.array_equal(cp.asnumpy(ws.counts), counts)
    assert np.array_equal(cp.asnumpy(ws.offsets), offsets)
    assert np.array_equal(cp.asnumpy(ws.order), order)
    tiles = np.r_[0, np.cumsum((counts + 63) // 64)]
    assert np.array_equal(cp.asnumpy(ws.tiles), tiles)
    if version == 3:  # and down v6's chunk table, and down v7's tickets zeroed
        chunks = np.r_[0, np.cumsum((counts + gfa.CHUNK - 1) // gfa.CHUNK)]
        assert np.array_equal(cp.asnumpy(ws.tiles2), chunks)
        assert not cp.asnumpy(ws.ticket).any()


@pytest.mark.gpu
@pytest.mark.parametrize(
    "version,e",
    [(v, 8) for v in range(1, 11)] + [(v, 9) for v in (5, 6, 7, 8, 9, 10)],
)
def test_gpu_whole_layer_and_a_wrong_expert_fails(version, e):
    """route + experts against the reference on the GPU's own routing; the same
    output checked against a misrouted reference (a known-wrong case) fails."""
    import cupy as cp

    from gpu import ffn_approx as gfa
    from gpu import runtime as rt

    rng = np.random.default_rng(7)
    t, c, g, k = 130, 64, 24, 2  # v5 with E = 9: router v2, then hist_v3
    w = fa.init_sigma_moe(rng, c, e, g, dtype=F16)
    x = rng.standard_normal((t, c)).astype(F16)
    dev = [cp.asarray(a) for a in (x, w.w1, w.w2, w.w3)]
    ws = _poisoned_workspace(t, c, e, g, k, F16)  # the router writes ws.idx, ws.gate
    res = rt.poisoned((t, c), F16)
    assert gfa.moe(*dev, k, version=version, ws=ws, out=res) is res
    out = cp.asnumpy(res)
    idx, gpu_gate = cp.asnumpy(ws.idx), cp.asnumpy(ws.gate)
    assert idx.min() >= 0 and idx.max() < e, "a router slot left unwritten"
    x64, w64 = x.astype(F64), _f64(w)
    logit = np.take_along_axis(x64 @ w64.w3, idx.astype(np.int64), 1)  # (T, K)
    gate = 1 / (1 + np.exp(-logit))
    r_sc = float(math.sqrt(c) * (np.abs(x64) @ np.abs(w64.w3)).max() / 4 + 2)
    assert_close(gpu_gate, gate, "gpu", F32, r_sc)  # as the router test derives
    sc = moe_scale(x64, w64.w1, w64.w2, idx, gate, w64.w3, h16=True, z16=True)
    assert_close(out, fa.moe_loop(x64, w64, idx, gate), "gpu", F16, sc)
    bad = idx.copy()
    bad[:, 0] = (bad[:, 0] + 1) % e
    with pytest.raises(AssertionError):
        assert_close(out, fa.moe_loop(x64, w64, bad, gate), "gpu", F16, sc)


@pytest.mark.gpu
def test_gpu_bad_inputs_rejected_before_launch():
    import cupy as cp

    from gpu import ffn_approx as gfa

    f16 = cp.float16
    x, w3 = cp.zeros((4, 16), f16), cp.zeros((16, 8), f16)
    w1, w2 = cp.zeros((8, 16, 8), f16), cp.zeros((8, 8, 16), f16)
    idx, gate = cp.zeros((4, 2), cp.int32), cp.zeros((4, 2), cp.float32)
    with pytest.raises(ValueError, match=r"\[0, E=8\)"):
        gfa.experts(x, w1, w2, idx + 8, gate)
    with pytest.raises(ValueError, match=r"\[0, E=8\)"):
        gfa.experts(x, w1, w2, idx - 1, gate)
    with pytest.raises(TypeError, match="idx"):
        gfa.experts(x, w1, w2, idx.astype(cp.int64), gate)
    with pytest.raises(TypeError, match="gate"):
        gfa.experts(x, w1, w2, idx, gate.astype(f16))
    with pytest.raises(TypeError, match="w1"):
        gfa.experts(x, w1.astype(cp.float32), w2, idx, gate)
    with pytest.raises(ValueError, match="w2"):
        gfa.experts(x, w1, w2[:, :, :8].copy(), idx, gate)
    with pytest.raises(TypeError, match="float16"):
        gfa.experts(x.astype(cp.float32), w1.astype(cp.float32),
                    w2.astype(cp.float32), idx, gate, version=3)  # fmt: skip
    with pytest.raises(ValueError, match="C % 8"):
        gfa.experts(x[:, :12].copy(), w1[:, :12].copy(), w2[:, :, :12].copy(),
                    idx, gate, version=4)  # fmt: skip
    with pytest.raises(ValueError, match="version"):
        gfa.experts(x, w1, w2, idx, gate, version=99)
    w1t, w2t, _ = gfa.kmajor_weights(w1, w2)
    with pytest.raises(TypeError, match="wt"):
        gfa.experts(x, w1, w2, idx, gate, version=8, wt=[w1t, w2t])
    with pytest.raises(ValueError, match="w1t"):  # not transposed
        gfa.experts(x, w1, w2, idx, gate, version=8, wt=(w2t, w2t, None))
    with pytest.raises(TypeError, match="w2t"):
        wt = (w1t, w2t.astype(cp.float32), None)
        gfa.experts(x, w1, w2, idx, gate, version=8, wt=wt)
    with pytest.raises(ValueError, match="w3t"):  # not transposed
        gfa.route(x, w3, 2, version=5, w3t=cp.zeros((16, 8), f16))
    # a view that starts one element in: v3/v4's 16-byte loads would fault
    xs = cp.zeros(4 * 16 + 1, f16)[1:].reshape(4, 16)
    with pytest.raises(ValueError, match="x must be 16-byte aligned"):
        gfa.experts(xs, w1, w2, idx, gate, version=3)
    w2s = cp.zeros(w2.size + 1, f16)[1:].reshape(w2.shape)
    with pytest.raises(ValueError, match="w2 must be 16-byte aligned"):
        gfa.experts(x, w1, w2s, idx, gate, version=4)
    with pytest.raises(ValueError, match="k must"):
        gfa.route(x, w3, 9)
    with pytest.raises(ValueError, match="router version"):
        gfa.route(x, w3, 2, version=5)
    with pytest.raises(TypeError, match="router v3"):
        gfa.route(x.astype(cp.float32), w3.astype(cp.float32), 2, version=3)
    with pytest.raises(ValueError, match="E % 8"):
        gfa.route(x, cp.zeros((16, 12), f16), 2, version=3)
    with pytest.raises(ValueError, match="bhist"):
        gfa.route(x, w3, 2, version=3, bhist=cp.zeros((2, 8), cp.int32))
    ws = gfa.workspace(4, 16, 8, 8, 2, f16)
    with pytest.raises(ValueError, match="sort version"):
        gfa.sort_pairs(idx, 8, 64, ws, version=4)
    ws.bhist = cp.zeros((1, 9), cp.int32)
    with pytest.raises(ValueError, match="bhist"):
        gfa.sort_pairs(idx, 8, 64, ws, version=3)
    with pytest.raises(ValueError, match="E = 300"):
        gfa.route(x, cp.zeros((16, 300), f16), 2)
    with pytest.raises(ValueError, match="w3"):
        gfa.route(x, cp.zeros((15, 8), f16), 2)
    with pytest.raises(TypeError, match="x"):
        gfa.route(np.zeros((4, 16), np.float16), w3, 2)


def _router_v5_emulated(x, w3t, warps=8):
    """router_v5's lane-level loads and m16n8k16 fragments replayed in float64:
    lane l of warp w loads 8 consecutive k (k0 + 8 (l % 4) ..) of token rows l / 4
    and l / 4 + 8 and of w3t's row 8 j + l / 4; halves 0-3 feed one MMA's slots
    2 (l % 4) + {0, 1} and 8 + 2 (l % 4) + {0, 1}, halves 4-7 a second MMA's (the
    hardware's fragment layout, PTX ISA m16n8k16); the warps' partial tiles are
    summed in warp order."""
    t, c = x.shape
    e = w3t.shape[0]
    nb = -(-t // 16)
    xp = np.zeros((nb * 16, c))
    xp[:t] = x
    nch = -(-c // 32)
    per = -(-nch // warps)
    logit = np.zeros((nb * 16, e))
    for b in range(nb):
        for e0 in range(0, e, 32):
            part = np.zeros((warps, 16, 32))
            for w in range(warps):
                for ch in range(w * per, min(w * per + per, nch)):
                    ra, rb = np.zeros((32, 8)), np.zeros((32, 8))  # lane registers
                    wv = np.zeros((32, 4, 8))
                    for lane in range(32):
                        g, q = divmod(lane, 4)
                        k = ch * 32 + 8 * q
                        if k >= c:
                            continue
                        ra[lane] = xp[b * 16 + g, k : k + 8]
                        rb[lane] = xp[b * 16 + g + 8, k : k + 8]
                        for j in range(4):
                            if e0 + 8 * j + g < e:
                                wv[lane, j] = w3t[e0 + 8 * j + g, k : k + 8]
                    for h in (0, 1):  # the two MMAs of a 32-wide chunk
                        for j in range(4):
                            a_s, b_s = np.zeros((16, 16)), np.zeros((16, 8))
                            for lane in range(32):
                                g, q = divmod(lane, 4)
                                lo, hi = (
                                    slice(2 * q, 2 * q + 2),
                                    slice(8 + 2 * q, 10 + 2 * q),
                                )
                                a_s[g, lo] = ra[lane, 4 * h : 4 * h + 2]  # reg 0
                                a_s[g + 8, lo] = rb[lane, 4 * h : 4 * h + 2]  # reg 1
                                a_s[g, hi] = ra[lane, 4 * h + 2 : 4 * h + 4]  # reg 2
                                a_s[g + 8, hi] = rb[lane, 4 * h + 2 : 4 * h + 4]  # 3
                                b_s[lo, g] = wv[lane, j, 4 * h : 4 * h + 2]
                                b_s[hi, g] = wv[lane, j, 4 * h + 2 : 4 * h + 4]
                            part[w, :, 8 * j : 8 * j + 8] += a_s @ b_s
            n = min(32, e - e0)
            logit[b * 16 : b * 16 + 16, e0 : e0 + n] = part.sum(axis=0)[:, :n]
    return logit[:t]


@pytest.mark.parametrize("t,c,e", [(17, 40, 8), (3, 136, 72), (1, 1032, 16)])
def test_router_v5_fragments_emulated(t, c, e):
    """Router v5 feeds its MMAs 16-byte loads whose k order is not the fragment's:
    replayed lane by lane in float64 it still gives x w3 (the k permutation is the
    same in A and B), over C off the 32-wide chunk and the warps' k-ranges, E off
    the 32-expert pass and T off the 16-token block; swapping B's two registers,
    a plausible slip, does not."""
    rng = np.random.default_rng(3)
    x, w3 = rng.standard_normal((t, c)), rng.standard_normal((c, e))
    got = _router_v5_emulated(x, np.ascontiguousarray(w3.T))
    np.testing.assert_allclose(got, x @ w3, rtol=1e-12, atol=1e-12)
    w3_swapped = w3.copy()  # B's registers crossed: k + {2, 3} read where k + {0, 1}
    for k0 in range(0, c - 3, 4):
        w3_swapped[[k0, k0 + 1, k0 + 2, k0 + 3]] = w3[[k0 + 2, k0 + 3, k0, k0 + 1]]
    bad = _router_v5_emulated(x, np.ascontiguousarray(w3_swapped.T))
    assert not np.allclose(bad, x @ w3, rtol=1e-6, atol=1e-6)


def _sw128(off):
    """CUTLASS's Swizzle<3, 4, 3>, the 128-byte swizzle wgmma's descriptor names:
    bits 4-6 of a byte offset XORed with bits 7-9."""
    return off ^ (((off >> 7) & 7) << 4)


def test_v8_v10_shared_layouts_emulated():
    """The index plumbing of gemm_v8 / gemm_v10 (gpu/ffn_approx.cu), replayed for the
    256 threads: (1) the copy plan writes each 16-byte chunk of the 128 x 64-half
    A and B tiles exactly once, where the 128-byte swizzle puts it, and v10's one
    offset + 4096 i is v8's per-row offset; (2) v10's epilogue staging, written
    from the wgmma fragments (warp w of group wg, lane l: rows 64 wg + 16 w + l / 4
    (+ 8), columns 8 j + 2 (l % 4)) and read back as 16-byte row chunks, returns
    every element to its row and column, and neither side has a shared-memory bank
    conflict; a read without the XOR, a plausible slip, scrambles the columns."""
    seen = np.zeros(128 * 8, int)
    for tid in range(256):
        r0, c = divmod(tid, 8)
        off10 = r0 * 128 + ((c ^ (r0 & 7)) * 16)
        for i in range(4):
            r = r0 + 32 * i
            off8 = r * 128 + ((c ^ (r & 7)) * 16)
            assert off8 == off10 + 4096 * i == _sw128(r * 128 + c * 16)
            seen[off8 // 16] += 1
    assert (seen == 1).all()

    stage = np.full(128 * 256 // 2, -1, np.int64)  # halves of the staging tile
    want = np.arange(128 * 128).reshape(128, 128)  # element id = row * 128 + col
    for j in range(16):
        for h in range(2):
            for warp in range(8):  # one store instruction of one warp
                banks = []
                for l in range(32):
                    tid = warp * 32 + l
                    wg, w = divmod(tid // 32, 4)
                    m = wg * 64 + w * 16 + l // 4 + 8 * h
                    n = 8 * j + 2 * (l % 4)
                    a = m * 256 + ((j ^ (m & 7)) * 16) + 4 * (l % 4)
                    stage[a // 2 : a // 2 + 2] = want[m, n : n + 2]
                    banks.append((a // 4) % 32)
                assert len(set(banks)) == 32  # a half2 a lane: 32 banks
    assert (stage >= 0).all()

    def read(xor):
        got = np.zeros_like(want)
        for i in range(128 * 16 // 256):
            for warp in range(8):
                for quarter in range(4):  # 8 lanes of 16 bytes: one wavefront
                    banks = set()
                    for l in range(8 * quarter, 8 * quarter + 8):
                        v = i * 256 + warp * 32 + l
                        m, cc = divmod(v, 16)
                        a = m * 256 + (((cc ^ (m & 7)) if xor else cc) * 16)
                        got[m, 8 * cc : 8 * cc + 8] = stage[a // 2 : a // 2 + 8]
                        banks |= {(a // 4 + b) % 32 for b in range(4)}
                    assert len(banks) == 32
        return got

    assert np.array_equal(read(True), want)
    assert not np.array_equal(read(False), want)
