"""Deja Vu: reference properties (CPU) and the GPU sparse MLP (marked ``gpu``).

CPU: the sparse MLP over any superset of the active set equals the dense MLP (bitwise
with a fixed-order sum, within the derived worst-case dot-product bound with BLAS);
only false negatives change the output, by at most the stated bound; for a batch the
union of active sets is sufficient and each of its neurons is necessary; the sum of
per-head outputs is MHA; head-sparse decode with K/V catch-up equals dense decode
exactly whenever all heads are selected; the predictor and the index checks.
GPU: gpu/deja_vu.cu against the float64 reference on Hypothesis-drawn shapes and
index sets (empty, one, all, unsorted), outputs poisoned, bad input rejected before
launch. Every comparison goes through reference.testing.assert_close; every checker
has a known-wrong case it must reject.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference import deja_vu as dv
from reference.common import AttnWeights, decode_attention
from reference.testing import assert_close, describe, sparse_mlp_scale

F64, F32, F16 = np.float64, np.float32, np.float16
seeds = st.integers(0, 2**32 - 1)


@st.composite
def mlp_case(draw, dtype=F64):
    """Weights, a batch and a superset T of the batch's active set, unsorted."""
    c = draw(st.sampled_from([1, 3, 8, 17, 64]))
    f = draw(st.sampled_from([1, 2, 7, 32, 100]))
    b = draw(st.sampled_from([1, 1, 2, 5]))
    active = draw(st.sampled_from([0.0, 0.05, 0.3, 1.0]))
    amp = draw(st.sampled_from([1.0, 1e3]))  # large values too
    rng = np.random.default_rng(draw(seeds))
    w = dv.random_mlp(rng, c, f, active, F64)
    w = dv.SparseMLPWeights(*(a.astype(dtype) for a in (w.w1, w.b1, w.w2, w.b2)))
    x = (amp * rng.standard_normal((b, c))).astype(dtype)
    s = dv.union_indices(dv.active_set(x, w))
    extra = draw(st.sampled_from(["none", "some", "all"]))
    rest = np.setdiff1d(np.arange(f), s)
    if extra == "all":
        t = np.arange(f)
    elif extra == "some":
        t = np.union1d(s, rest[rng.random(rest.size) < 0.5])
    else:
        t = s
    return x, w, rng.permutation(t)


# --- the MLP --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F64, F32])
@given(data=st.data())
def test_superset_of_active_set_is_bitwise_dense_with_fixed_order(dtype, data):
    x, w, t = data.draw(mlp_case(dtype))
    got = dv.sparse_mlp_fixed(x, w, t)
    assert got.dtype == dtype
    assert_close(got, dv.dense_mlp_fixed(x, w), "exact", dtype)


@pytest.mark.parametrize("dtype", [F64, F32])
@given(data=st.data())
def test_superset_of_active_set_within_dot_bound_with_blas(dtype, data):
    x, w, t = data.draw(mlp_case(dtype))
    got, want = dv.sparse_mlp(x, w, t), dv.dense_mlp(x, w)
    assert got.dtype == want.dtype == dtype
    scale = sparse_mlp_scale(x, w.w1, w.b1, w.w2, w.b2, worst_case=True)
    assert_close(got, want, "dot", dtype, scale)


def test_checker_rejects_a_missing_active_neuron():
    """Known-wrong: T = S minus its largest activation fails both checks."""
    rng = np.random.default_rng(1)
    w = dv.random_mlp(rng, 64, 256, 0.1)
    x = rng.standard_normal((1, 64))
    z = dv.preactivations(x, w)[0]
    s = np.flatnonzero(z > 0)
    t = s[s != np.argmax(z)]
    with pytest.raises(AssertionError):
        assert_close(
            dv.sparse_mlp_fixed(x, w, t), dv.dense_mlp_fixed(x, w), "exact", F64
        )
    scale = sparse_mlp_scale(x, w.w1, w.b1, w.w2, w.b2, worst_case=True)
    with pytest.raises(AssertionError):
        assert_close(dv.sparse_mlp(x, w, t), dv.dense_mlp(x, w), "dot", F64, scale)


def test_mutation_wrong_bias_gather_is_caught():
    """Mutation: b1[:K] instead of b1[T] (a plausible gather bug) must fail."""
    rng = np.random.default_rng(2)
    w = dv.random_mlp(rng, 32, 128, 0.3)
    x = rng.standard_normal((2, 32))
    t = np.arange(128)[::-1][:100]  # unsorted, not a prefix
    a = np.maximum(x @ w.w1[t].T + w.b1[: t.size], 0)  # the bug
    bad = a @ w.w2[t] + w.b2
    scale = sparse_mlp_scale(x, w.w1, w.b1, w.w2, w.b2, worst_case=True)
    with pytest.raises(AssertionError):
        assert_close(
            bad, dv.masked_mlp(x, w, np.isin(np.arange(128), t)), "dot", F64, scale
        )


@given(data=st.data(), seed=seeds)
def test_only_false_negatives_change_the_output(data, seed):
    """y_T depends on T only through T ∩ S (bitwise), and |y - y_T| obeys the bound."""
    x, w, _ = data.draw(mlp_case(F64))
    f = w.w1.shape[0]
    rng = np.random.default_rng(seed)
    t = np.flatnonzero(rng.random(f) < data.draw(st.sampled_from([0.0, 0.3, 0.9])))
    s_mask = dv.active_set(x, w)
    if x.shape[0] == 1:
        t_and_s = np.intersect1d(t, np.flatnonzero(s_mask[0]))
        assert_close(
            dv.sparse_mlp_fixed(x, w, t),
            dv.sparse_mlp_fixed(x, w, t_and_s),
            "exact",
            F64,
        )
    err = np.linalg.norm(dv.dense_mlp(x, w) - dv.sparse_mlp(x, w, t), axis=1)  # (B,)
    bound = dv.dropped_error_bound(x, w, t)
    scale = sparse_mlp_scale(x, w.w1, w.b1, w.w2, w.b2, worst_case=True)
    slack = 2 * 1.01 * 2**-53 * scale * math.sqrt(x.shape[1])  # rounding, 2-norm
    assert np.all(err <= bound * (1 + 1e-12) + slack), (err, bound)
    missed = dv.recall(np.isin(np.arange(f), t)[None], s_mask) < 1
    assert np.all(bound[~missed] == 0)  # recall 1: nothing dropped


@given(data=st.data())
def test_batch_union_is_sufficient_and_each_member_necessary(data):
    x, w, _ = data.draw(mlp_case(F64))
    mask = dv.active_set(x, w)  # (B, F)
    u = dv.union_indices(mask)
    dense = dv.dense_mlp_fixed(x, w)
    assert_close(dv.sparse_mlp_fixed(x, w, u), dense, "exact", F64)
    if u.size:
        a = np.maximum(dv.preactivations(x, w), 0)  # (B, F)
        b, i = np.unravel_index(np.argmax(a[:, u]), (x.shape[0], u.size))
        if a[b, u[i]] * np.abs(w.w2[u[i]]).max() > 1e-6 * np.abs(dense[b]).max():
            drop = dv.sparse_mlp_fixed(x, w, np.delete(u, i))
            assert not np.array_equal(drop[b], dense[b])


def test_union_growth_matches_independent_rows():
    rng = np.random.default_rng(3)
    p = 0.1
    mask = rng.random((4000, 2000)) < p
    got = dv.union_growth(mask, (1, 4, 16), rng, trials=10)
    for b, fr in got.items():
        want = 1 - (1 - p) ** b
        assert abs(fr - want) < 0.02, (b, fr, want)


def test_check_indices_rejects_bad_sets():
    for bad in ([0, 0], [-1], [5], np.array([0.5]), np.zeros((1, 1), int)):
        with pytest.raises(ValueError, match="idx"):
            dv.sparse_mlp(
                np.ones((1, 2)), dv.random_mlp(np.random.default_rng(0), 2, 5), bad
            )
    assert dv.check_indices([], 3).size == 0


@pytest.mark.parametrize("dtype", [F32])
@given(data=st.data())
def test_float32_twin_within_the_gpu_tolerance(dtype, data):
    """The float32 NumPy MLP against float64 stays inside the "gpu" row with the
    probabilistic scale: the tolerance the kernels are held to is not too tight."""
    x, w, t = data.draw(mlp_case(dtype))
    w64 = dv.SparseMLPWeights(*(np.asarray(a, F64) for a in (w.w1, w.b1, w.w2, w.b2)))
    x64 = x.astype(F64)
    scale = sparse_mlp_scale(x64, w.w1, w.b1, w.w2, w.b2, idx=t)
    assert_close(
        dv.sparse_mlp(x, w, t), dv.sparse_mlp(x64, w64, t), "gpu", dtype, scale
    )


# --- heads ----------------------------------------------------------------------------


def _attn(rng, h, d, amp=1.0):
    c = h * d
    m = [amp * rng.standard_normal((c, c)) / math.sqrt(c) for _ in range(4)]
    bs = [0.1 * rng.standard_normal(c) for _ in range(4)]
    return AttnWeights(*m, *bs)


@given(
    h=st.sampled_from([1, 2, 3, 8]),
    d=st.sampled_from([1, 4, 16]),
    s=st.integers(1, 40),
    b=st.sampled_from([1, 3]),
    seed=seeds,
)
def test_sum_of_head_outputs_is_mha(h, d, s, b, seed):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, h, d))
    k, v = rng.standard_normal((2, b, h, s, d))
    w_o, b_o = rng.standard_normal((h * d, h * d)), rng.standard_normal(h * d)
    mha = decode_attention(q, k, v).reshape(b, h * d) @ w_o + b_o  # (B, C)
    per_head = dv.head_outputs(q, k, v, w_o)  # (B, H, C)
    assert_close(per_head.sum(axis=1) + b_o, mha, "rewrite", F64, np.abs(mha).max())
    every = rng.permutation(h)
    assert_close(
        dv.head_sparse_attention(q, k, v, w_o, every, b_o), mha, "rewrite", F64,
        np.abs(mha).max(),
    )  # fmt: skip
    if h > 1:  # known-wrong: one head short
        with pytest.raises(AssertionError):
            short = dv.head_sparse_attention(q, k, v, w_o, every[1:], b_o)
            assert_close(short, mha, "rewrite", F64, np.abs(mha).max())


def _dense_decode(xs, aw, h):
    """Every head at every step: the baseline."""
    cache, outs = dv.HeadSparseCache.empty(h, xs.shape[1] // h, xs.shape[1]), []
    for x_t in xs:
        y, cache = dv.head_sparse_decode(cache, x_t, aw, h, np.arange(h))
        outs.append(y)
    return np.array(outs)


@given(
    h=st.sampled_from([1, 2, 4]),
    d=st.sampled_from([2, 8]),
    steps=st.integers(1, 12),
    seed=seeds,
    p_keep=st.sampled_from([0.0, 0.3, 0.7]),
)
def test_all_heads_at_step_t_is_dense_whatever_was_skipped(h, d, steps, seed, p_keep):
    rng = np.random.default_rng(seed)
    aw = _attn(rng, h, d)
    xs = rng.standard_normal((steps, h * d))
    dense = _dense_decode(xs, aw, h)
    cache = dv.HeadSparseCache.empty(h, d, h * d)
    all_at = set(rng.choice(steps, size=max(1, steps // 3), replace=False).tolist())
    for t, x_t in enumerate(xs):
        heads = np.arange(h) if t in all_at else np.flatnonzero(rng.random(h) < p_keep)
        y, cache = dv.head_sparse_decode(cache, x_t, aw, h, rng.permutation(heads))
        if t in all_at:
            assert_close(y, dense[t], "exact", F64)
        assert cache.have[heads].all() and cache.x.shape == (t + 1, h * d)


def test_checker_rejects_decode_without_catch_up():
    """Known-wrong: a head that skipped steps and then attends without computing
    the K/V it missed (zeros in its cache) differs from dense decode."""
    rng = np.random.default_rng(5)
    h, d = 2, 8
    aw = _attn(rng, h, d)
    xs = rng.standard_normal((4, h * d))
    dense = _dense_decode(xs, aw, h)
    cache = dv.HeadSparseCache.empty(h, d, h * d)
    for x_t in xs[:3]:
        _, cache = dv.head_sparse_decode(cache, x_t, aw, h, [0])  # head 1 skips
    cache = dv.HeadSparseCache(cache.x, cache.k, cache.v, np.ones_like(cache.have))
    y, _ = dv.head_sparse_decode(cache, xs[3], aw, h, [0, 1])
    with pytest.raises(AssertionError):
        assert_close(y, dense[3], "exact", F64)


# --- the predictor ---------------------------------------------------------------


@given(r=st.sampled_from([1, 3, 8]), seed=seeds)
def test_predictor_recovers_an_exact_low_rank_map(r, seed):
    """If z is exactly a rank-r affine map of x_prev, the fit finds it (ridge -> 0):
    predicted scores equal z and the top-k set has recall 1."""
    rng = np.random.default_rng(seed)
    n, c, f = 300, 16, 40
    x = rng.standard_normal((n, c))
    z = (x @ rng.standard_normal((c, r))) @ rng.standard_normal((r, f)) + 0.5
    p = dv.fit_predictor(x, z, r, ridge=0.0)
    pred = dv.predict(p, x)
    assert_close(pred, z, "rewrite", F64, np.abs(z).max() * c)
    k = 10
    assert np.all(dv.recall(dv.top_k_mask(pred, k), dv.top_k_mask(z, k)) == 1)


def test_top_k_mask_and_recall_edges():
    s = np.array([[3.0, 1.0, 2.0]])
    assert dv.top_k_mask(s, 0).sum() == 0
    assert dv.top_k_mask(s, 3).all()
    assert dv.top_k_mask(s, 1)[0, 0]
    assert dv.recall(np.zeros((1, 3), bool), np.zeros((1, 3), bool))[0] == 1.0
    assert dv.recall(np.array([[1, 0, 0]], bool), np.array([[1, 1, 0]], bool))[0] == 0.5


# --- GPU (gpu/deja_vu.cu) -------------------------------------------------------------

GPU_VERSIONS = [(1, "deterministic"), (2, "atomic"), (2, "deterministic")]
GPU_VERSIONS += [(3, "atomic"), (3, "deterministic"), (4, "atomic")]
GPU_VERSIONS += [(5, "deterministic"), (6, "deterministic"), (7, "deterministic")]
GPU_VERSIONS += [(8, "deterministic"), (9, "deterministic")]


@st.composite
def gpu_case(draw, version: int, dtype):
    """Shapes off every block size (C not a multiple of 128 or 256, K not of 8 or
    32), B = 1 and past the 4-row tile; index sets empty, one, all, or a random
    unsorted subset; large values too."""
    v = 16 // np.dtype(dtype).itemsize
    if version == 1:
        c = draw(st.sampled_from([1, 5, 33, 130, 300]))
    elif version in (5, 6, 7):  # past each of its 1, 2 and 4 vectors a thread
        c = v * draw(st.sampled_from([1, 3, 17, 129, 257, 300, 513, 700]))
    elif version in (8, 9):  # off its 32-column steps and 512- / 256-column blocks
        c = 8 * draw(st.sampled_from([1, 3, 17, 33, 64, 129, 513]))
    else:
        c = v * draw(st.sampled_from([1, 3, 17, 33, 64, 129]))
    f = draw(st.sampled_from([1, 9, 40, 257, 1000]))
    if version in (5, 6, 7):  # the small-batch kernels: B <= 4, or 2 past 512 vectors
        b = draw(st.sampled_from([1, 1, 2, 3, 4] if c // v <= 512 else [1, 2]))
    elif version in (
        8,
        9,
    ):  # every instance (NT = 1, 2, 4, 8), full and partial n-tiles
        b = draw(st.sampled_from([1, 1, 2, 5, 8, 9, 16, 17, 33, 64]))
    else:
        b = draw(st.sampled_from([1, 1, 2, 4, 5, 9]))
    kind = draw(st.sampled_from(["empty", "one", "all", "subset", "subset"]))
    amp = draw(st.sampled_from([1.0, 8.0]))
    seed = draw(seeds)
    rng = np.random.default_rng(seed)
    if kind == "empty":
        idx = np.zeros(0, np.int32)
    elif kind == "one":
        idx = np.array([rng.integers(f)], np.int32)
    elif kind == "all":
        idx = rng.permutation(f).astype(np.int32)
    else:
        idx = rng.permutation(f)[: rng.integers(1, f + 1)].astype(np.int32)
    w = dv.random_mlp(rng, c, f, draw(st.sampled_from([0.1, 0.5, 1.0])))
    w = dv.SparseMLPWeights(*(a.astype(dtype) for a in (w.w1, w.b1, w.w2, w.b2)))
    x = (amp * rng.standard_normal((b, c))).astype(dtype)
    return x, w, idx


def _run_gpu(x, w, idx, version, mode, blocks=None, finishers=None):
    import cupy as cp

    from gpu import deja_vu as gdv
    from gpu import runtime as rt

    out = rt.poisoned(x.shape, x.dtype)  # unwritten elements stay NaN and fail
    # the scratch too: a partial that is read but never written poisons the sum
    # (v4's contract is a zeroed workspace, which it must leave zeroed; v5's is
    # four zeroed counters, left zeroed, before partials it must write first)
    b, c, k = x.shape[0], x.shape[1], idx.size
    n_ws = max(gdv.workspace_elems(version, b, c, k, mode, blocks), 1)
    if version == 4:
        ws = gdv.new_workspace(version, b, c, k, mode)
    else:
        ws = rt.poisoned((n_ws,), np.float32)
        if version in (5, 6, 7):
            ws[:4] = 0
    args = [cp.asarray(a) for a in (x, w.w1, w.b1, w.w2, w.b2, idx)]
    kw = {} if blocks is None else {"blocks": blocks}
    kw |= {} if finishers is None else {"finishers": finishers}
    res = gdv.sparse_mlp(*args, version=version, mode=mode, out=out, workspace=ws,
                         **kw)  # fmt: skip
    assert res is out
    if version == 4:
        assert not cp.asnumpy(ws).any(), "v4 must leave its workspace zeroed"
    if version in (5, 6, 7):
        assert not cp.asnumpy(ws[:4]).any(), f"v{version} left its counters dirty"
    return cp.asnumpy(out)


def _truth(x, w, idx, version=None):
    """float64 truth and its error scale; v8 and v9 hand a to the tensor cores as
    a (hi, lo) pair of halves, whose representation error the scale adds."""
    w64 = dv.SparseMLPWeights(*(np.asarray(a, F64) for a in (w.w1, w.b1, w.w2, w.b2)))
    x64 = x.astype(F64)
    return dv.sparse_mlp(x64, w64, idx), sparse_mlp_scale(
        x64, w64.w1, w64.b1, w64.w2, w64.b2, idx=idx, a_split=version in (8, 9)
    )


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("version,mode", GPU_VERSIONS)
@given(data=st.data())
def test_gpu_matches_reference(version, mode, dtype, data):
    x, w, idx = data.draw(gpu_case(version, dtype))
    if version in (8, 9) and dtype == F32:  # tensor cores take fp16: refused at launch
        with pytest.raises(TypeError, match="float16"):
            _run_gpu(x, w, idx, version, mode)
        return
    got = _run_gpu(x, w, idx, version, mode)
    ref, scale = _truth(x, w, idx, version)
    used = assert_close(got, ref, "gpu", dtype, scale)
    print(f"v{version} {mode} {np.dtype(dtype).name}: {describe(used)}")
    if mode == "deterministic":  # bitwise reproducible
        assert np.array_equal(got, _run_gpu(x, w, idx, version, mode), equal_nan=True)


@pytest.mark.gpu
@pytest.mark.parametrize("version,mode", GPU_VERSIONS)
def test_gpu_all_indices_is_dense_and_a_missing_neuron_fails(version, mode):
    """All F ids reproduce the dense MLP; dropping the most active neuron (a known-
    wrong set) must fail the same check."""
    rng = np.random.default_rng(11)
    c, f = 264, 600
    w = dv.random_mlp(rng, c, f, 0.2)
    w = dv.SparseMLPWeights(*(a.astype(F16) for a in (w.w1, w.b1, w.w2, w.b2)))
    x = rng.standard_normal((3, c)).astype(F16)
    w64 = dv.SparseMLPWeights(*(np.asarray(a, F64) for a in (w.w1, w.b1, w.w2, w.b2)))
    dense = dv.dense_mlp(x.astype(F64), w64)
    scale = sparse_mlp_scale(
        x.astype(F64), w64.w1, w64.b1, w64.w2, w64.b2, a_split=version in (8, 9)
    )
    every = rng.permutation(f).astype(np.int32)
    assert_close(_run_gpu(x, w, every, version, mode), dense, "gpu", F16, scale)
    z = dv.preactivations(x.astype(F64), w64)
    top = np.argmax(z.max(axis=0))
    wrong = every[every != top]
    with pytest.raises(AssertionError):
        assert_close(_run_gpu(x, w, wrong, version, mode), dense, "gpu", F16, scale)


@pytest.mark.gpu
def test_gpu_bad_inputs_rejected_before_launch():
    import cupy as cp

    from gpu.deja_vu import sparse_mlp

    f16 = cp.float16
    x, b2 = cp.zeros((2, 64), f16), cp.zeros(64, f16)
    w1, w2, b1 = cp.zeros((100, 64), f16), cp.zeros((100, 64), f16), cp.zeros(100, f16)
    ok = cp.arange(10, dtype=cp.int32)
    for bad, msg in (
        (cp.array([3, 5, 3], cp.int32), "duplicate"),
        (cp.array([0, 100], cp.int32), r"\[0, F=100\)"),
        (cp.array([-1, 2], cp.int32), r"\[0, F=100\)"),
        (cp.arange(101, dtype=cp.int32), "K = 101"),
    ):
        with pytest.raises(ValueError, match=msg):
            sparse_mlp(x, w1, b1, w2, b2, bad)
    with pytest.raises(TypeError, match="idx"):
        sparse_mlp(x, w1, b1, w2, b2, ok.astype(cp.int64))
    with pytest.raises(TypeError, match="w1"):
        sparse_mlp(x, w1.astype(cp.float32), b1, w2, b2, ok)
    with pytest.raises(ValueError, match="w2"):
        sparse_mlp(x, w1, b1, w2[:, :32], b2, ok)
    with pytest.raises(ValueError, match="b2"):
        sparse_mlp(x, w1, b1, w2, cp.zeros(63, f16), ok)
    with pytest.raises(ValueError, match="C % 8"):
        sparse_mlp(x[:, :60].copy(), w1[:, :60].copy(), b1, w2[:, :60].copy(),
                   b2[:60].copy(), ok, version=3)  # fmt: skip
    with pytest.raises(ValueError, match="version"):
        sparse_mlp(x, w1, b1, w2, b2, ok, version=99)
    with pytest.raises(ValueError, match="B <= 4"):  # v5 is the small-batch kernel
        sparse_mlp(cp.zeros((5, 64), f16), w1, b1, w2, b2, ok, version=5)
    with pytest.raises(ValueError, match="blocks must lie"):  # 10 ids, 11 blocks
        sparse_mlp(x, w1, b1, w2, b2, ok, version=5, blocks=11)
    with pytest.raises(ValueError, match="blocks and finishers are v5-v7 options"):
        sparse_mlp(x, w1, b1, w2, b2, ok, version=3, blocks=2)
    with pytest.raises(ValueError, match="mode"):
        sparse_mlp(x, w1, b1, w2, b2, ok, version=5, mode="atomic")
    with pytest.raises(ValueError, match="mode"):
        sparse_mlp(x, w1, b1, w2, b2, ok, version=4, mode="deterministic")
    with pytest.raises(ValueError, match="mode"):
        sparse_mlp(x, w1, b1, w2, b2, ok, version=1, mode="atomic")
    with pytest.raises(ValueError, match="mode"):
        sparse_mlp(x, w1, b1, w2, b2, ok, version=8, mode="atomic")
    with pytest.raises(TypeError, match="float16"):  # v8: tensor cores, fp16 only
        f32 = cp.float32
        sparse_mlp(x.astype(f32), w1.astype(f32), b1.astype(f32), w2.astype(f32),
                   b2.astype(f32), ok, version=8)  # fmt: skip
    with pytest.raises(ValueError, match="limit 64"):  # v8's largest n-tile set
        sparse_mlp(cp.zeros((65, 64), f16), w1, b1, w2, b2, ok, version=8)
    with pytest.raises(TypeError, match="x"):
        sparse_mlp(np.zeros((2, 64), np.float16), w1, b1, w2, b2, ok)
    ws = cp.zeros(4096, cp.float32)
    with pytest.raises(ValueError, match="workspace must be 16-byte"):
        sparse_mlp(x, w1, b1, w2, b2, ok, version=2, workspace=ws[1:])
    with pytest.raises(ValueError, match="workspace needs"):
        sparse_mlp(x, w1, b1, w2, b2, ok, version=2, workspace=ws[:8])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("version", [5, 6, 7])
@given(data=st.data())
def test_gpu_v5_ring_wraps_and_few_blocks(version, dtype, data):
    """v5-v7 with a grid far below one block per SM: each block owns up to NR5
    neurons, so its ring (a handful of stages at wide C) wraps many times, the
    producer waits on the consumers, and one to a few finishers sum the partials.
    Deterministic: the same call twice gives the same bits."""
    from gpu import deja_vu as gdv

    v = 16 // np.dtype(dtype).itemsize
    c = v * data.draw(st.sampled_from([3, 257, 513, 1000]))
    f = data.draw(st.sampled_from([130, 300, 500]))
    rng = np.random.default_rng(data.draw(seeds))
    k = data.draw(st.integers(1, f))
    lo = -(-k // gdv.NR5)
    blocks = data.draw(st.integers(lo, min(k, lo + 3)))
    fin = data.draw(st.integers(1, min(blocks, gdv.FINISHERS5)))
    w = dv.random_mlp(rng, c, f, 0.5)
    w = dv.SparseMLPWeights(*(a.astype(dtype) for a in (w.w1, w.b1, w.w2, w.b2)))
    b = data.draw(st.sampled_from([1, 2]))
    x = rng.standard_normal((b, c)).astype(dtype)
    idx = rng.permutation(f)[:k].astype(np.int32)
    got = _run_gpu(x, w, idx, version, "deterministic", blocks, fin)
    ref, scale = _truth(x, w, idx)
    used = assert_close(got, ref, "gpu", dtype, scale)
    plan = gdv.v5_plan(b, c, k, np.dtype(dtype).itemsize, blocks, fin)
    print(f"v{version} G={blocks} L={fin} S={plan['stages']} n={plan['n']}:",
          describe(used))  # fmt: skip
    again = _run_gpu(x, w, idx, version, "deterministic", blocks, fin)
    assert np.array_equal(got, again)


def test_v5_plan_fits_and_wraps():
    """The plan's shared memory stays under the opt-in limit; at 10 % of OPT-6.7B's
    MLP on 132 SMs every row a block needs has a stage (2n); at 100 % the ring
    wraps; the finishers never outnumber the blocks."""
    from gpu import deja_vu as gdv

    for k in (1, 328, 1638, 16384):
        p = gdv.v5_plan(1, 4096, k, 2, blocks=max(min(132, k), -(-k // gdv.NR5)))
        assert p["smem"] <= gdv.SMEM5 and 1 <= p["finishers"] <= p["blocks"]
        assert p["n"] <= gdv.NR5 and p["stages"] >= 1
    assert gdv.v5_plan(1, 4096, 1638, 2, blocks=132)["stages"] == 2 * 13
    assert gdv.v5_plan(1, 4096, 16384, 2, blocks=132)["stages"] < 2 * 125
    with pytest.raises(ValueError, match="B <= 2"):
        gdv.v5_plan(3, 8192, 10, 2, blocks=1)
    with pytest.raises(ValueError, match="C <= 8192"):
        gdv.v5_plan(1, 8200, 10, 2, blocks=1)


@pytest.mark.gpu
def test_gpu_v4_without_a_workspace_allocates_a_zeroed_one():
    """v4 reads its accumulator and arrival counter as zero. Called without a
    workspace, the launcher must allocate a zeroed one: CuPy's pool hands back a
    freed block with its old contents (dirtied here first), and an uncleared
    counter means no block ever finishes (the launcher fuzz found it: NaN out)."""
    import cupy as cp

    from gpu import deja_vu as gdv
    from gpu import runtime as rt

    rng = np.random.default_rng(5)
    b, c, f, k = 1, 64, 300, 40
    w = dv.random_mlp(rng, c, f, 0.5)
    w = dv.SparseMLPWeights(*(a.astype(F32) for a in (w.w1, w.b1, w.w2, w.b2)))
    x = rng.standard_normal((b, c)).astype(F32)
    idx = rng.permutation(f)[:k].astype(np.int32)
    args = [cp.asarray(a) for a in (x, w.w1, w.b1, w.w2, w.b2, idx)]
    ref, scale = _truth(x, w, idx)
    for _ in range(3):  # dirty the pool's block of the workspace's size, then call
        n = max(gdv.workspace_elems(4, b, c, k, "atomic"), 1)
        junk = cp.full(n, 7.0, cp.float32)
        del junk
        out = rt.poisoned(x.shape, x.dtype)
        gdv.sparse_mlp(*args, version=4, out=out)
        assert_close(cp.asnumpy(out), ref, "gpu", F32, scale)


# --- v8's fragment plumbing, emulated on the CPU (no GPU needed) -------------------
# up_v8 and down_v8 (gpu/deja_vu.cu) feed mma.sync m16n8k16 from plain 16-byte loads
# with the k index permuted, and down_v8 builds A fragments from four rows with byte
# permutes. An index slip there would still compile; this emulation replays each
# lane's loads, permutes and fragment layout (PTX ISA, "Matrix Fragments for
# mma.m16n8k16") with exact float64 values and checks the products come out right.


def _mma16816(acc, a, b):
    """acc (32, 4) += A . B over the warp, from per-lane fragments: a (32, 4, 2), b
    (32, 2, 2) halves (low, high), laid out as the PTX ISA gives for .f16 m16n8k16."""
    big_a, big_b = np.zeros((16, 16)), np.zeros((16, 8))
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for h in range(2):
            big_a[g, 2 * t + h], big_a[g + 8, 2 * t + h] = a[lane, 0, h], a[lane, 1, h]
            big_a[g, 2 * t + 8 + h] = a[lane, 2, h]
            big_a[g + 8, 2 * t + 8 + h] = a[lane, 3, h]
            big_b[2 * t + h, g], big_b[2 * t + 8 + h, g] = b[lane, 0, h], b[lane, 1, h]
    d = big_a @ big_b
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        acc[lane] += (
            d[g, 2 * t],
            d[g, 2 * t + 1],
            d[g + 8, 2 * t],
            d[g + 8, 2 * t + 1],
        )


def _words(row, col, n):
    """n 32-bit words (pairs of halves) of a row from column col: zero past its end."""
    v = np.zeros(2 * n)
    seg = row[col : col + 2 * n]
    v[: seg.size] = seg
    return v.reshape(n, 2)


def _pair(x, y, half):
    """PRMT: (half of x, the same half of y) per lane, as down_v8's lo/hi_pair."""
    return np.stack([x[:, half], y[:, half]], axis=1)


def _up_v8_emulated(x, w1, b1, idx, mt, nt, n_warps=8):
    """a (B, KP) as up_v8 computes it, one block (16 MT rows) at a time."""
    bsz, c = x.shape
    k, f = idx.size, w1.shape[0]
    kp = -(-k // 16) * 16
    a = np.zeros((bsz, kp))
    for r0 in range(0, kp, 16 * mt):
        red = np.zeros((n_warps, 16 * mt, 8 * nt))
        for warp in range(n_warps):
            acc = np.zeros((mt, nt, 32, 4))
            for s in range(warp, -(-c // 32), n_warps):
                wv = np.zeros((mt, 2, 32, 4, 2))
                xv = np.zeros((nt, 32, 4, 2))
                for lane in range(32):
                    g, t = lane >> 2, lane & 3
                    col = 32 * s + 8 * t
                    for i in range(mt):
                        for h in range(2):
                            r = r0 + 16 * i + g + 8 * h
                            i_d = idx[r] if r < k else -1
                            wv[i, h, lane] = _words(
                                w1[i_d if 0 <= i_d < f else 0], col, 4
                            )
                    for j in range(nt):
                        xv[j, lane] = _words(x[min(8 * j + g, bsz - 1)], col, 4)
                for i in range(mt):
                    for j in range(nt):
                        p, q, v = wv[i, 0], wv[i, 1], xv[j]
                        for u in range(2):  # words (0, 1), then (2, 3)
                            fa = np.stack([p[:, 2 * u], q[:, 2 * u], p[:, 2 * u + 1],
                                           q[:, 2 * u + 1]], axis=1)  # fmt: skip
                            fb = np.stack([v[:, 2 * u], v[:, 2 * u + 1]], axis=1)
                            _mma16816(acc[i, j], fa, fb)
            for lane in range(32):
                g, t = lane >> 2, lane & 3
                for i in range(mt):
                    for j in range(nt):
                        for e in range(4):
                            row, n = 16 * i + g + 8 * (e >> 1), 8 * j + 2 * t + (e & 1)
                            red[warp, row, n] = acc[i, j, lane, e]
        z = red.sum(axis=0)
        for row in range(16 * mt):
            r = r0 + row
            if r >= kp:
                continue
            i_d = idx[r] if r < k else -1
            for n in range(bsz):
                if 0 <= i_d < f:
                    a[n, r] = max(z[row, n] + b1[i_d], 0.0)
    return a


def _down_v8_emulated(a, w2, idx, md, nt, spp, n_warps=8):
    """The (P, B, C) partials of down_v8 over a (B, KP)."""
    bsz, kp = a.shape
    k, (f, c) = idx.size, w2.shape
    steps = kp // 16
    parts = -(-steps // spp) if steps else 0
    part = np.full((parts, bsz, c), np.nan)
    gx = -(-c // (n_warps * 16 * md))
    for y in range(parts):
        for bx in range(gx):
            for warp in range(n_warps):
                acc = np.zeros((md, nt, 32, 4))
                for ks in range(y * spp, min((y + 1) * spp, steps)):
                    rows = np.zeros((4, md, 32, 2))
                    fb = np.zeros((nt, 32, 2, 2))
                    for lane in range(32):
                        g, t = lane >> 2, lane & 3
                        cb = 16 * md * (bx * n_warps + warp) + 2 * md * g
                        j = 16 * ks + 2 * t
                        for qq in range(4):
                            r = j + (qq & 1) + 8 * (qq >> 1)
                            i_d = idx[r] if r < k else 0
                            i_d = i_d if 0 <= i_d < f else 0
                            if cb < c:
                                rows[qq, :, lane] = _words(w2[i_d], cb, md)
                        for jn in range(nt):
                            ar = a[min(8 * jn + g, bsz - 1)]
                            fb[jn, lane, 0], fb[jn, lane, 1] = (
                                ar[j : j + 2],
                                ar[j + 8 : j + 10],
                            )
                    for m in range(md):  # __byte_perm 0x5410 (low halves), 0x7632
                        r0_, r1_, r2_, r3_ = (rows[qq, m] for qq in range(4))
                        fa = np.stack([_pair(r0_, r1_, 0), _pair(r0_, r1_, 1),
                                       _pair(r2_, r3_, 0), _pair(r2_, r3_, 1)],
                                      axis=1)  # fmt: skip
                        for jn in range(nt):
                            _mma16816(acc[m, jn], fa, fb[jn])
                for lane in range(32):
                    g, t = lane >> 2, lane & 3
                    cb = 16 * md * (bx * n_warps + warp) + 2 * md * g
                    if cb >= c:
                        continue
                    for jn in range(nt):
                        for e in range(2):
                            n = 8 * jn + 2 * t + e
                            if n >= bsz:
                                continue
                            for m in range(md):
                                part[y, n, cb + 2 * m] = acc[m, jn, lane, e]
                                part[y, n, cb + 2 * m + 1] = acc[m, jn, lane, 2 + e]
    return part


@pytest.mark.parametrize("b,c,k,mt,nt,md,spp", [
    (3, 72, 20, 1, 1, 4, 1),   # C past a 32-column step and a 64-column warp
    (9, 40, 37, 2, 2, 2, 2),   # two n-tiles, a partial m-tile, two steps a split
])  # fmt: skip
def test_v8_fragments_emulated(b, c, k, mt, nt, md, spp):
    """up_v8's and down_v8's lane-level loads, byte permutes and fragment layout,
    replayed on the CPU in float64, give relu(x w1[T]^T + b1[T]) and its product
    with w2[T] exactly (up to float64 rounding): the kernels' index plumbing."""
    rng = np.random.default_rng(5)
    f = 50
    w = dv.random_mlp(rng, c, f, 1.0)
    x = rng.standard_normal((b, c))
    idx = rng.permutation(f)[:k].astype(np.int32)
    a = _up_v8_emulated(x, w.w1, w.b1, idx, mt, nt)
    want = np.maximum(x @ w.w1[idx].T + w.b1[idx], 0.0)
    np.testing.assert_allclose(a[:, :k], want, rtol=1e-12, atol=1e-12)
    assert not a[:, k:].any()  # rows past K hold a = 0
    part = _down_v8_emulated(a, w.w2, idx, md, nt, spp)
    np.testing.assert_allclose(part.sum(axis=0), want @ w.w2[idx], rtol=1e-12,
                               atol=1e-12)  # fmt: skip


def test_dispatch_fits_lines_and_picks_the_cheapest_path():
    """fit_costs recovers t = t0 + K / rate from exact rows; dispatch takes the
    cheapest path within each kernel's checked batch range, else the dense MLP; a
    known-wrong pick (the slower line) is not what it returns."""
    from gpu import deja_vu as gdv

    def rows(name, t0, rate, ks, b=1):
        return [dict(name=name, B=b, K=k, median_us=t0 + k / rate, status="ok")
                for k in ks]  # fmt: skip

    ks = (300, 1600, 8000, 16000)
    data = rows("v7_det", 10.0, 150.0, ks) + rows("v8_det", 16.0, 260.0, ks)
    data += [dict(name="torch_dense", B=1, K=16384, median_us=72.0, status="ok")]
    data += [dict(name="v8_det", B=1, K=5, median_us=1.0, status="FAILED")]
    costs = gdv.fit_costs(data)
    assert costs["v7_det"] == pytest.approx((10.0, 150.0))
    assert costs["v8_det"] == pytest.approx((16.0, 260.0))
    assert costs["dense"] == (72.0, math.inf)
    cross = (16.0 - 10.0) / (1 / 150.0 - 1 / 260.0)  # v7 = v8 at this K
    assert gdv.dispatch(1, int(cross) - 50, costs) == "v7_det"
    assert gdv.dispatch(1, int(cross) + 50, costs) == "v8_det"
    assert gdv.dispatch(4, 300, costs) == "v8_det"  # v7 only where it was checked
    assert gdv.dispatch(4, 16000, costs) == "dense"  # 16 + 61.5 > 72
    assert gdv.dispatch(9, 10, costs) == "dense"  # beyond every kernel's range
    with pytest.raises(ValueError, match="B >= 1"):
        gdv.dispatch(0, 10, costs)
    with pytest.raises(ValueError, match="no path"):
        gdv.dispatch(9, 10, {k: v for k, v in costs.items() if k != "dense"})
