"""Deja Vu's lookahead predictor on the GPU: gpu/deja_vu_predict.cu and its launchers.

CPU: reference.deja_vu.top_k_ids, the exact tie rule the kernels implement (highest
score first, the lower id among equal scores, -0.0 == +0.0, NaN below every number),
against a brute force and against top_k_mask where there are no ties; a NumPy twin of
topk_v1's and topk_v2's radix selects and in-order compaction (the algorithm, pass
by pass, early stop included) against it; the float32 predictor within the derived scale
(reference.testing.lowrank_scale); and the known-wrong cases each checker rejects.
GPU (marked ``gpu``): predict_topk on Hypothesis shapes off every tile (C not a
multiple of the 32 x VEC a warp reads, F not of the 16 VEC columns a block owns,
neither of VEC: the scalar paths), r in {1, 3, 17, 64, 256}, B in 1..4, K = 0, 1, F or
any; random and quantised inputs (integer values: every sum exact, so ties abound and
the GPU's scores equal the float64 truth bit for bit). Outputs and workspaces are
poisoned. The scores are held to the float64 reference within lowrank_scale; the ids
must equal top_k_ids of the GPU's own float32 scores exactly, and be a top-K set of
the float64 truth within the same tolerance (assert_top_k: a float32 kernel may swap
ids whose true scores lie within two limits of each other, nothing else). top_k alone
on crafted scores (ties, +-0, +-inf, NaN, subnormals, F up to 65536), union against
np.union1d, and bad input rejected before launch.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference import deja_vu as dv
from reference.testing import assert_close, assert_top_k, describe, lowrank_scale

F64, F32, F16 = np.float64, np.float32, np.float16
seeds = st.integers(0, 2**32 - 1)
SPECIAL = np.array(
    [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 1e-40, 1.0, -1.0,
     3.4e38, -3.4e38, 0.5],
    dtype=F32,
)  # fmt: skip


@st.composite
def score_rows(draw, max_f: int = 300):
    """Float32 scores (N, F) with ties on purpose, and a k: random, quantised (few
    values), special (NaN of both signs, +-inf, +-0, subnormals, the extremes) or
    one value everywhere; k = 0, 1, F or any."""
    n = draw(st.integers(1, 4))
    f = draw(st.integers(1, max_f))
    rng = np.random.default_rng(draw(seeds))
    kind = draw(st.sampled_from(["normal", "quantised", "special", "equal"]))
    if kind == "normal":
        s = rng.standard_normal((n, f))
    elif kind == "quantised":
        s = rng.integers(-3, 4, (n, f)) / 2
    elif kind == "special":
        s = rng.choice(SPECIAL, (n, f))
    else:
        s = np.full((n, f), rng.choice(SPECIAL))
    which = draw(st.sampled_from(["zero", "one", "all", "any"]))
    k = {"zero": 0, "one": 1, "all": f}.get(which)
    if k is None:
        k = draw(st.integers(0, f))
    return s.astype(F32), k


def _brute(s: np.ndarray, k: int) -> np.ndarray:
    """The rule spelt out: sort ids by (NaN last, score down, id up), keep k."""
    out = []
    for row in s:
        nan = np.isnan(row)
        down = np.where(nan, 0, -row)  # NaN last whatever its sign; score down
        rank = sorted(range(row.size), key=lambda i: (nan[i], down[i], i))
        out.append(sorted(rank[:k]))
    return np.array(out, np.int64).reshape(s.shape[0], k)


# --- the tie rule (reference.deja_vu.top_k_ids) ---------------------------------------


@given(case=score_rows())
def test_top_k_ids_is_the_brute_force(case):
    s, k = case
    got = dv.top_k_ids(s, k)
    assert got.dtype == np.int64 and got.shape == (s.shape[0], k)
    assert np.array_equal(got, _brute(s, k))


@given(case=score_rows())
def test_top_k_ids_ranks_every_chosen_above_every_other(case):
    """Chosen >= unchosen; among equal scores at the boundary the lower ids."""
    s, k = case
    ids = dv.top_k_ids(s, k)
    for row, chosen in zip(s, ids, strict=True):
        mask = np.zeros(row.size, bool)
        mask[chosen] = True
        key = np.where(np.isnan(row), -np.inf, row).astype(F64)
        nan = np.isnan(row)
        if mask.any() and (~mask).any():
            lo = key[mask & ~nan].min(initial=np.inf)
            assert not (nan[mask].any() and (~nan & ~mask).any())  # NaN only last
            assert lo >= key[~mask & ~nan].max(initial=-np.inf)
            tie = ~nan & (key == lo)  # the boundary's tied ids: the lowest chosen
            if tie.any() and not nan[mask].any():
                t = np.flatnonzero(tie)
                assert np.array_equal(
                    np.flatnonzero(mask & tie), t[: (mask & tie).sum()]
                )


@given(n=st.integers(1, 3), f=st.integers(1, 200), seed=seeds, data=st.data())
def test_top_k_ids_is_top_k_mask_without_ties(n, f, seed, data):
    s = np.random.default_rng(seed).standard_normal((n, f))  # distinct a.s.
    k = data.draw(st.integers(0, f))
    mask = np.zeros((n, f), bool)
    np.put_along_axis(mask, dv.top_k_ids(s, k), True, axis=1)
    assert np.array_equal(mask, dv.top_k_mask(s, k))


def test_top_k_ids_edges_and_bad_k():
    s = np.array([[1.0, 3.0, 3.0, -0.0, 0.0, np.nan, -np.inf]], F32)
    assert dv.top_k_ids(s, 0).shape == (1, 0)
    assert dv.top_k_ids(s, 1).tolist() == [[1]]  # 3 = 3: the lower id
    assert dv.top_k_ids(s, 4).tolist() == [[0, 1, 2, 3]]  # -0 = +0: the lower id
    assert dv.top_k_ids(s, 6).tolist() == [[0, 1, 2, 3, 4, 6]]  # -inf above NaN
    assert dv.top_k_ids(s, 7).tolist() == [list(range(7))]
    for bad in (-1, 8):
        with pytest.raises(ValueError, match="k must lie"):
            dv.top_k_ids(s, bad)


def test_exact_rule_rejects_the_higher_id_winning():
    """Known-wrong: the opposite tie rule (higher id first) selects other ids on
    tied scores, and the exact comparison the GPU tests use catches it."""
    s = np.array([[2.0, 1.0, 1.0, 1.0, 0.0]], F32)
    f = s.shape[1]
    flipped = (f - 1 - dv.top_k_ids(s[:, ::-1], 2))[:, ::-1]  # ties: higher id
    assert flipped.tolist() == [[0, 3]]
    assert not np.array_equal(np.sort(flipped, axis=1), dv.top_k_ids(s, 2))


# --- topk_v1's algorithm, in NumPy ----------------------------------------------------


def _order_key(s: np.ndarray) -> np.ndarray:
    """order_key of the .cu: float32 -> uint32, order-preserving; -0 -> +0 and
    every NaN -> 0 (below -inf)."""
    u = np.ascontiguousarray(s, F32).view(np.uint32).copy()
    u[u == 0x80000000] = 0
    key = np.where(u & 0x80000000, ~u, u | 0x80000000).astype(np.uint32)
    key[np.isnan(s)] = 0
    return key


WIDTHS = {1: (8, 8, 8, 8), 2: (11, 11, 10)}  # topk_v1's and topk_v2's digits


def _topk_twin(row: np.ndarray, k: int, widths=WIDTHS[1]) -> np.ndarray:
    """topk_v1 (or v2, by its digit widths) for one row, step by step: digits
    from the top, the chosen bin's count, the early stop, then the in-order
    compaction. (v2's candidate buffer only changes where the keys are read.)"""
    if k == 0:
        return np.zeros(0, np.int64)
    key = _order_key(row)
    prefix, mask, need, shift = 0, 0, k, 32
    for bits in widths:
        shift -= bits
        top = (1 << bits) - 1
        cand = (key & np.uint32(mask)) == prefix
        hist = np.bincount((key[cand] >> np.uint32(shift)) & top, minlength=top + 1)
        above = 0
        for d in range(top, -1, -1):  # the scan from the top bin down
            if above < need <= above + hist[d]:
                break
            above += int(hist[d])
        prefix |= d << shift
        need -= above
        mask |= top << shift
        if need == hist[d]:
            break
    mk = key & np.uint32(mask)
    gt, eq = mk > prefix, mk == prefix
    eq_before = np.cumsum(eq) - eq
    return np.flatnonzero(gt | (eq & (eq_before < need)))


@pytest.mark.parametrize("version", sorted(WIDTHS))
@given(case=score_rows(max_f=600))
def test_radix_select_twin_is_top_k_ids(version, case):
    s, k = case
    got = [_topk_twin(row, k, WIDTHS[version]) for row in s]
    got = np.array(got).reshape(s.shape[0], k)
    assert np.array_equal(got, dv.top_k_ids(s, k))


def test_order_key_orders_floats():
    v = np.array([-np.inf, -3.4e38, -1.0, -1e-45, 0.0, 1e-45, 1.0, 3.4e38, np.inf], F32)
    key = _order_key(v)
    assert np.all(np.diff(key.astype(np.int64)) > 0)
    assert _order_key(np.array([-0.0], F32))[0] == _order_key(np.array([0.0], F32))[0]
    assert _order_key(np.array([np.nan, -np.nan], F32)).tolist() == [0, 0]
    assert key[0] > 0  # -inf above NaN


# --- the scores' tolerance and the checkers ------------------------------------------


def _predictor(rng, b, c, r, f, dtype, kind="random"):
    """Host arrays x (B, C), mean (C,), a_t (r, C), b (r, F), bias (F,) in dtype.
    quantised: small integers (every float32 sum exact while |s| < 2^24)."""
    if kind == "quantised":
        x = rng.integers(-2, 3, (b, c))
        mean = rng.integers(-1, 2, c)
        a_t = rng.integers(-1, 2, (r, c))
        bm = rng.integers(-1, 2, (r, f))
        bias = rng.integers(-2, 3, f)
    else:
        x = rng.standard_normal((b, c))
        mean = 0.5 * rng.standard_normal(c)
        a_t = rng.standard_normal((r, c)) / math.sqrt(c)
        bm = rng.standard_normal((r, f)) / math.sqrt(r)
        bias = 0.1 * rng.standard_normal(f)
    return tuple(np.asarray(a, dtype) for a in (x, mean, a_t, bm, bias))


def _truth(x, mean, a_t, bm, bias):
    """float64 scores (B, F) of the stored values and their scale."""
    h64 = [np.asarray(a, F64) for a in (x, mean, a_t, bm, bias)]
    x64, m64, at64, b64, bias64 = h64
    p = dv.LowRankPredictor(m64, at64.T, b64, bias64)
    return dv.predict(p, x64), lowrank_scale(x64, m64, at64.T, b64, bias64)


@pytest.mark.parametrize("dtype", [F32, F16])
@given(
    b=st.integers(1, 4),
    c=st.sampled_from([1, 7, 64, 264]),
    r=st.sampled_from([1, 3, 17, 64]),
    f=st.sampled_from([1, 9, 136, 300]),
    seed=seeds,
)
def test_float32_predictor_within_lowrank_scale(dtype, b, c, r, f, seed):
    """The predictor computed in float32 (on dtype-stored values) stays inside the
    ("gpu", "float32") row with lowrank_scale: the tolerance the kernels are held
    to is not too tight."""
    arrs = _predictor(np.random.default_rng(seed), b, c, r, f, dtype)
    x, mean, a_t, bm, bias = (np.asarray(a, F32) for a in arrs)
    got = ((x - mean) @ a_t.T) @ bm + bias
    assert got.dtype == F32
    want, scale = _truth(*arrs)
    assert_close(got, want, "gpu", F32, scale)


def test_lowrank_scale_rejects_known_wrong_predictors():
    """Known-wrong: mean not subtracted, bias dropped, h stored in fp16, A used
    untransposed (a square a_t): each fails the check the GPU tests apply."""
    rng = np.random.default_rng(7)
    x, mean, a_t, bm, bias = (
        np.asarray(a, F32) for a in _predictor(rng, 2, 96, 96, 200, F32)
    )
    want, scale = _truth(x, mean, a_t, bm, bias)
    h = (x - mean) @ a_t.T
    right = h @ bm + bias
    assert_close(right, want, "gpu", F32, scale)
    for bad in (
        (x @ a_t.T) @ bm + bias,
        h @ bm,
        h.astype(F16).astype(F32) @ bm + bias,
        ((x - mean) @ a_t) @ bm + bias,
    ):
        with pytest.raises(AssertionError):
            assert_close(bad, want, "gpu", F32, scale)


def test_assert_top_k_accepts_near_swaps_and_rejects_far_ones():
    s = np.array([[5.0, 4.0, 3.0, 3.0 - 1e-9, 1.0, 0.0]])
    assert assert_top_k([[0, 1, 2]], s, 3, "gpu", F32, 1.0) == 0.0
    used = assert_top_k([[0, 1, 3]], s, 3, "gpu", F32, 1.0)  # 1e-9 apart: a swap
    assert 0 < used <= 1  # within tolerance, and it says how much it used
    with pytest.raises(AssertionError, match="chose id 4"):
        assert_top_k([[0, 1, 4]], s, 3, "gpu", F32, 1.0)  # 2 below the k-th
    with pytest.raises(AssertionError, match="ascending"):
        assert_top_k([[1, 0, 2]], s, 3, "gpu", F32, 1.0)
    with pytest.raises(AssertionError, match="ascending"):
        assert_top_k([[0, 0, 1]], s, 3, "gpu", F32, 1.0)
    with pytest.raises(AssertionError, match="outside"):
        assert_top_k([[0, 1, 6]], s, 3, "gpu", F32, 1.0)
    with pytest.raises(AssertionError, match="shape"):
        assert_top_k([[0, 1]], s, 3, "gpu", F32, 1.0)


# --- GPU (gpu/deja_vu_predict.cu) -----------------------------------------------------

POISON_ID = -7  # no valid id: an id a kernel forgot to write fails every check


@st.composite
def gpu_case(draw, dtype):
    """Shapes off every tile: C past and between the 32 VEC a warp reads (and not a
    multiple of VEC: scalar loads); F past and between the 16 VEC columns of a block
    (and not a multiple of VEC); r as the issue lists; B = 1..4; K = 0, 1, F, any;
    random or quantised inputs (ties)."""
    v = 16 // np.dtype(dtype).itemsize
    c = draw(st.sampled_from([v, 3 * v, 17 * v, 33 * v, 129 * v, 5, 37, 300]))
    f = draw(st.sampled_from([1, 9, 40, 17 * v, 257, 1000, 129 * v, 4104]))
    r = draw(st.sampled_from([1, 3, 17, 64, 256]))
    b = draw(st.integers(1, 4))
    which = draw(st.sampled_from(["zero", "one", "all", "any", "any"]))
    k = {"zero": 0, "one": 1, "all": f}.get(which)
    if k is None:
        k = draw(st.integers(0, f))
    kind = draw(st.sampled_from(["random", "random", "quantised"]))
    arrs = _predictor(np.random.default_rng(draw(seeds)), b, c, r, f, dtype, kind)
    return arrs, k, kind


def _run_predict(arrs, k, version=2):
    """predict_topk into a poisoned out and workspace: (ids, h, scores) on the host."""
    import cupy as cp

    from gpu import deja_vu_predict as gp
    from gpu import runtime as rt

    x, mean, a_t, bm, bias = (cp.asarray(a) for a in arrs)
    b, r, f = x.shape[0], a_t.shape[0], bm.shape[1]
    out = cp.full((b, k), POISON_ID, cp.int32)
    ws = rt.poisoned((gp.workspace_elems(b, r, f),), np.float32)
    res = gp.predict_topk(
        x, mean, a_t, bm, bias, k, out=out, workspace=ws, version=version
    )
    assert res is out
    h, scores = gp.split_workspace(ws, b, r, f)
    return cp.asnumpy(out), cp.asnumpy(h), cp.asnumpy(scores)


GPU_VERSIONS = (1, 2)


@pytest.mark.gpu
@pytest.mark.parametrize("version", GPU_VERSIONS)
@pytest.mark.parametrize("dtype", [F32, F16])
@given(data=st.data())
def test_gpu_predict_topk_matches_reference(version, dtype, data):
    arrs, k, kind = data.draw(gpu_case(dtype))
    ids, h, scores = _run_predict(arrs, k, version)
    want, scale = _truth(*arrs)
    assert np.isfinite(h).all(), "h not fully written"
    if kind == "quantised":  # integer sums below 2^24: exact in float32
        assert_close(scores, want, "exact", F32)
        assert np.array_equal(ids, dv.top_k_ids(want, k)), "tie rule against float64"
    used = assert_close(scores, want, "gpu", F32, scale)
    assert np.array_equal(ids, dv.top_k_ids(scores, k)), "ids of the GPU's scores"
    used_ids = assert_top_k(ids, want, k, "gpu", F32, scale)
    name = f"v{version} {np.dtype(dtype).name}"
    print(f"{name}: scores {describe(used)}, ids {describe(used_ids)}")
    again = _run_predict(arrs, k, version)  # deterministic: the same bits
    assert np.array_equal(again[0], ids)
    assert np.array_equal(again[2].view(np.uint32), scores.view(np.uint32))


@pytest.mark.gpu
@pytest.mark.parametrize("version", GPU_VERSIONS)
@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("b", [1, 4])
def test_gpu_predict_topk_at_the_bench_shape(version, dtype, b):
    """C = 4096, F = 16384, r = 256, K = 10 % of F: the vector paths at size."""
    rng = np.random.default_rng(16)
    k = 1638
    arrs = _predictor(rng, b, 4096, 256, 16384, dtype)
    ids, _, scores = _run_predict(arrs, k, version)
    want, scale = _truth(*arrs)
    assert_close(scores, want, "gpu", F32, scale)
    assert np.array_equal(ids, dv.top_k_ids(scores, k))
    assert_top_k(ids, want, k, "gpu", F32, scale)


@pytest.mark.gpu
@pytest.mark.parametrize("version", GPU_VERSIONS)
@given(case=score_rows(max_f=2000))
def test_gpu_top_k_exact_on_crafted_scores(version, case):
    import cupy as cp

    from gpu import deja_vu_predict as gp

    s, k = case
    out = cp.full((s.shape[0], k), POISON_ID, cp.int32)
    assert gp.top_k(cp.asarray(s), k, out=out, version=version) is out
    assert np.array_equal(cp.asnumpy(out), dv.top_k_ids(s, k))


@pytest.mark.gpu
@pytest.mark.parametrize("version", GPU_VERSIONS)
@pytest.mark.parametrize("f", [1025, 16384, 65535, 65536])
@pytest.mark.parametrize("kind", ["normal", "quantised", "special", "equal", "bins"])
def test_gpu_top_k_wide_rows(version, f, kind):
    """Rows up to the largest F (64 ids a thread in v1's compaction), K = 1, 10 %,
    F - 1, F. "bins": values that share their top 11 key bits in groups larger and
    smaller than v2's candidate buffer (its overflow path and its buffer)."""
    import cupy as cp

    from gpu import deja_vu_predict as gp

    rng = np.random.default_rng(f)
    s = {
        "normal": lambda: rng.standard_normal((2, f)),
        "quantised": lambda: rng.integers(-3, 4, (2, f)) / 2,
        "special": lambda: rng.choice(SPECIAL, (2, f)),
        "equal": lambda: np.full((2, f), -0.0),
        "bins": lambda: 1 + rng.integers(0, 2**12, (2, f)) * 2.0**-20,
    }[kind]().astype(F32)
    for k in (1, f // 10, f - 1, f):
        out = cp.full((2, k), POISON_ID, cp.int32)
        gp.top_k(cp.asarray(s), k, out=out, version=version)
        assert np.array_equal(cp.asnumpy(out), dv.top_k_ids(s, k)), k


@pytest.mark.gpu
@given(
    b=st.integers(1, 4),
    f=st.sampled_from([1, 31, 32, 33, 1000, 4104, 65536]),
    seed=seeds,
    data=st.data(),
)
def test_gpu_union_is_the_sorted_union(b, f, seed, data):
    import cupy as cp

    from gpu import deja_vu_predict as gp

    rng = np.random.default_rng(seed)
    k = data.draw(st.sampled_from([0, 1, f, int(rng.integers(0, f + 1))]))
    ids = np.array([np.sort(rng.permutation(f)[:k]) for _ in range(b)], np.int32)
    ids = ids.reshape(b, k)
    cap = min(f, b * k)
    out = cp.full(cap, POISON_ID, cp.int32)
    count = cp.full(1, POISON_ID, cp.int32)
    res = gp.union(cp.asarray(ids), f, out=out, count=count)
    assert res[0] is out and res[1] is count
    want = np.union1d(ids.ravel(), [])
    n = int(count.get()[0])
    got = cp.asnumpy(out)
    assert n == want.size
    assert np.array_equal(got[:n], want)
    assert np.all(got[n:] == -1)


@pytest.mark.gpu
def test_gpu_union_of_predicted_rows_and_defaults():
    """predict_topk and union with nothing preallocated: the union of the B rows'
    predicted sets, as a batch's sparse MLP needs it."""
    import cupy as cp

    from gpu import deja_vu_predict as gp

    arrs = _predictor(np.random.default_rng(3), 4, 256, 64, 1000, F16)
    dev = [cp.asarray(a) for a in arrs]
    ids = gp.predict_topk(*dev, 100)
    assert ids.dtype == cp.int32 and ids.shape == (4, 100)
    scores = gp.predict_scores(*dev)
    assert scores.shape == (4, 1000) and scores.dtype == cp.float32
    assert np.array_equal(cp.asnumpy(ids), dv.top_k_ids(cp.asnumpy(scores), 100))
    out, count = gp.union(ids, 1000)
    want = dv.union_indices(np.isin(np.arange(1000), cp.asnumpy(ids).ravel())[None])
    assert np.array_equal(cp.asnumpy(out[: int(count.get()[0])]), want)


@pytest.mark.gpu
def test_gpu_bad_inputs_rejected_before_launch():
    import cupy as cp

    from gpu import deja_vu_predict as gp

    f16 = cp.float16
    c, r, f = 64, 8, 100
    x, mean = cp.zeros((2, c), f16), cp.zeros(c, f16)
    a_t, bm, bias = cp.zeros((r, c), f16), cp.zeros((r, f), f16), cp.zeros(f, f16)
    out = cp.full((2, 10), POISON_ID, cp.int32)

    def call(*args, k=10, **kw):
        args = args or (x, mean, a_t, bm, bias)
        return gp.predict_topk(*args, k, out=kw.pop("out", out), **kw)

    cases = [
        (TypeError, "x", dict(args=(np.zeros((2, c), F16), mean, a_t, bm, bias))),
        (TypeError, "x", dict(args=(x.astype(cp.float64), mean, a_t, bm, bias))),
        (TypeError, "mean", dict(args=(x, mean.astype(cp.float32), a_t, bm, bias))),
        (ValueError, "a_t", dict(args=(x, mean, a_t[:, :32].copy(), bm, bias))),
        (ValueError, "b must", dict(args=(x, mean, a_t, bm[:4].copy(), bias))),
        (ValueError, "bias", dict(args=(x, mean, a_t, bm, bias[:99].copy()))),
        (ValueError, "B <= 4", dict(args=(cp.zeros((5, c), f16), mean, a_t, bm, bias))),
        (ValueError, "C-contiguous", dict(args=(x[:, ::2], mean[::2], a_t, bm, bias))),
        (ValueError, "mean must be 16-byte", dict(args=(x, cp.zeros(c + 1, f16)[1:], a_t, bm, bias))),  # noqa: E501
        (ValueError, "k must lie", dict(k=-1)),
        (ValueError, "k must lie", dict(k=f + 1)),
        (TypeError, "k must be an int", dict(k=10.0)),
        (TypeError, "k must be an int", dict(k=True)),
        (TypeError, "out", dict(out=cp.zeros((2, 10), cp.int64))),
        (ValueError, "out", dict(out=cp.zeros((2, 11), cp.int32))),
        (ValueError, "workspace needs", dict(workspace=cp.zeros(8, cp.float32))),
        (TypeError, "workspace", dict(workspace=cp.zeros(4096, f16))),
    ]  # fmt: skip
    for exc, msg, kw in cases:
        args = kw.pop("args", ())
        with pytest.raises(exc, match=msg):
            call(*args, **kw)
        assert (out == POISON_ID).all(), f"{msg}: launched before the check"
    wide = cp.zeros((1, gp.MAX_F + 1), f16)
    with pytest.raises(ValueError, match="F <= 65536"):
        gp.predict_topk(x, mean, a_t[:1].copy(), wide, cp.zeros(gp.MAX_F + 1, f16), 1)
    s = cp.zeros((2, f), cp.float32)
    with pytest.raises(TypeError, match="scores"):
        gp.top_k(s.astype(f16), 3)
    with pytest.raises(ValueError, match="k must lie"):
        gp.top_k(s, f + 1)
    with pytest.raises(ValueError, match="version"):
        gp.top_k(s, 3, version=3)
    with pytest.raises(ValueError, match="version"):
        gp.predict_topk(x, mean, a_t, bm, bias, 3, version=0)
    ids = cp.zeros((2, 3), cp.int32)
    with pytest.raises(TypeError, match="ids"):
        gp.union(ids.astype(cp.int64), f)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, F=100\)"):
        gp.union(cp.array([[0, 100]], cp.int32), f)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, F=100\)"):
        gp.union(cp.array([[-1, 3]], cp.int32), f)
    with pytest.raises(ValueError, match="f"):
        gp.union(ids, 0)
    with pytest.raises(ValueError, match="out"):
        gp.union(ids, f, out=cp.zeros(5, cp.int32))
