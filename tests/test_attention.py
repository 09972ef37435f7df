"""Decode attention on the GPU (gpu/attention.cu) against the float64 reference.

Every version, both storage dtypes, Hypothesis-drawn shapes that are not multiples of
any tile (S = 1, odd S, H not a power of two, GQA), outputs poisoned with NaN, and
bad inputs rejected before any launch. All tests here need a GPU (marked ``gpu``).
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference.common import decode_attention as ref_decode
from reference.testing import (
    assert_close,
    assert_typical,
    attention_scale,
    attention_typical,
    describe,
)

pytestmark = pytest.mark.gpu

DTYPES = [np.float32, np.float16]
VERSIONS = [1, 2, 3, 4, 5, 6, 7, 8]


@st.composite
def attention_case(draw, version: int):
    g = draw(st.sampled_from([1, 2, 3, 5]))
    h = g * draw(st.sampled_from([1, 2, 3, 4]))  # MHA, GQA, MQA; H not a power of two
    if version >= 4:
        d = draw(st.sampled_from([64, 80, 96, 128]))
    else:
        d = draw(st.sampled_from([1, 7, 33, 64, 80, 128]))
    s = draw(st.one_of(st.integers(1, 40), st.integers(41, 1500)))
    b = draw(st.integers(1, 3))
    amp = draw(st.sampled_from([0.1, 1.0, 4.0]))  # large values: peaked softmax
    n_split = draw(st.one_of(st.none(), st.integers(1, s)))
    seed = draw(st.integers(0, 2**32 - 1))
    return b, h, g, s, d, amp, n_split, seed


def _inputs(b, h, g, s, d, amp, seed, dtype):
    rng = np.random.default_rng(seed)
    q = (amp * rng.standard_normal((b, h, d))).astype(dtype)
    k = (amp * rng.standard_normal((b, g, s, d))).astype(dtype)
    v = rng.standard_normal((b, g, s, d)).astype(dtype)
    return q, k, v


def _run(version, q, k, v, n_split=None):
    import cupy as cp

    from gpu import runtime as rt
    from gpu.attention import decode_attention

    out = rt.poisoned(q.shape, q.dtype)  # unwritten elements stay NaN and fail
    dq, dk, dv = (cp.asarray(x) for x in (q, k, v))
    res = decode_attention(dq, dk, dv, version=version, n_split=n_split, out=out)
    assert res is out
    return cp.asnumpy(out)


def _check(version, case, dtype):
    b, h, g, s, d, amp, n_split, seed = case
    q, k, v = _inputs(b, h, g, s, d, amp, seed, dtype)
    if version < 3:
        n_split = None
    got = _run(version, q, k, v, n_split)
    q64, k64, v64 = (x.astype(np.float64) for x in (q, k, v))
    want = ref_decode(q64, k64, v64)
    return assert_close(got, want, "gpu", dtype, scale=attention_scale(q64, k64, v64))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f16"])
@pytest.mark.parametrize("version", VERSIONS)
def test_matches_reference(version, dtype):
    @given(case=attention_case(version))
    def prop(case):
        _check(version, case, dtype)

    prop()


LONG = (1, 4, 2, 20000, 128, 1.0, 7)  # B, H, G, S, D, amp, seed


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f16"])
@pytest.mark.parametrize("version", VERSIONS)
def test_long_cache(version, dtype):
    """One long cache (S = 20000 > any chunk) with T = 1: the worst-case row, then
    the typical error over its 512 outputs (attention_typical, LAM_TYPICAL). The
    worst case alone accepts a kernel that drops the last key (24 % of its budget
    in NumPy's float32, tests/test_testing.py); the typical check does not (263
    sigma in float32, 64 in float16)."""
    q, k, v = _inputs(*LONG, dtype)
    got = _run(version, q, k, v)
    q64, k64, v64 = (x.astype(np.float64) for x in (q, k, v))
    want = ref_decode(q64, k64, v64)
    used = assert_close(got, want, "gpu", dtype, attention_scale(q64, k64, v64))
    z = assert_typical(got, want, attention_typical(q64, k64, v64, dtype))
    name = np.dtype(dtype).name
    print(f"v{version} {name} S=20000: {describe(used)}, typical {z:.3g} sigma")


@pytest.mark.parametrize("tile", [(2, 4), (8, 4), (2, 8), (4, 8), (4, 2), (8, 2)])
def test_v9_tiles_match_reference(tile):
    """The v9 experiment (v7 with other tile shapes; fp16, D = 128 only)."""
    import cupy as cp

    from gpu import runtime as rt
    from gpu.attention import decode_attention_v9, new_workspace

    @given(case=attention_case(4))
    def prop(case):
        b, h, g, s, _, amp, n_split, seed = case
        q, k, v = _inputs(b, h, g, s, 128, amp, seed, np.float16)
        out = rt.poisoned(q.shape, q.dtype)
        ws = new_workspace(7, b, h, s, 128, n_split)
        dq, dk, dv = (cp.asarray(x) for x in (q, k, v))
        u, nw = tile
        decode_attention_v9(
            dq, dk, dv, u=u, nw=nw, n_split=n_split, out=out, workspace=ws
        )
        q64, k64, v64 = (x.astype(np.float64) for x in (q, k, v))
        want = ref_decode(q64, k64, v64)
        scale = attention_scale(q64, k64, v64)
        assert_close(cp.asnumpy(out), want, "gpu", np.float16, scale)

    prop()


def test_deterministic():
    """Same inputs twice, bitwise same output: no race, no order-dependent sum."""
    q, k, v = _inputs(2, 6, 3, 999, 128, 1.0, 3, np.float16)
    for version in VERSIONS:
        assert np.array_equal(_run(version, q, k, v), _run(version, q, k, v))


def test_checker_rejects_dropped_last_key():
    """Known-wrong: the kernel run on S-1 keys must fail against the S-key reference."""
    q, k, v = _inputs(1, 4, 4, 300, 64, 1.0, 11, np.float32)
    got = _run(5, q, k[:, :, :-1].copy(), v[:, :, :-1].copy())
    q64, k64, v64 = (x.astype(np.float64) for x in (q, k, v))
    with pytest.raises(AssertionError):
        assert_close(
            got,
            ref_decode(q64, k64, v64),
            "gpu",
            np.float32,
            attention_scale(q64, k64, v64),
        )


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f16"])
@pytest.mark.parametrize("version", [1, 4, 7, 8])
def test_typical_check_rejects_dropped_last_key_at_long_cache(version, dtype):
    """Known-wrong: the long cache run on S - 1 keys. Its error, p_last |v_last - o|
    ~ 1/S, fits the worst-case budget (printed) but not the typical error."""
    q, k, v = _inputs(*LONG, dtype)
    got = _run(version, q, k[:, :, :-1].copy(), v[:, :, :-1].copy())
    q64, k64, v64 = (x.astype(np.float64) for x in (q, k, v))
    want = ref_decode(q64, k64, v64)
    try:
        used = assert_close(got, want, "gpu", dtype, attention_scale(q64, k64, v64))
        print(f"v{version} S-1 keys: worst case {describe(used)} (accepted)")
    except AssertionError:
        print(f"v{version} S-1 keys: worst case rejects it")
    with pytest.raises(AssertionError, match="systematic"):
        assert_typical(got, want, attention_typical(q64, k64, v64, dtype))


@pytest.mark.parametrize("version", [5, 7, 8])
def test_fused_workspace_reusable(version):
    """The fused versions' counters reset themselves: ten calls on one workspace."""
    import cupy as cp

    from gpu.attention import decode_attention, new_workspace

    q, k, v = _inputs(2, 8, 2, 777, 128, 1.0, 5, np.float16)
    dq, dk, dv = (cp.asarray(x) for x in (q, k, v))
    ws = new_workspace(version, 2, 8, 777, 128)
    outs = [
        cp.asnumpy(decode_attention(dq, dk, dv, version=version, workspace=ws))
        for _ in range(10)
    ]
    assert all(np.array_equal(o, outs[0]) for o in outs)
    counters = ws[-2 * 8 :].view(cp.uint32)
    assert int(counters.max()) == 0
    q64, k64, v64 = (x.astype(np.float64) for x in (q, k, v))
    want = ref_decode(q64, k64, v64)
    assert_close(outs[-1], want, "gpu", np.float16, attention_scale(q64, k64, v64))


def test_bad_inputs_rejected_before_launch():
    import cupy as cp

    from gpu.attention import decode_attention

    q = cp.ones((2, 4, 64), cp.float16)
    k = cp.ones((2, 2, 10, 64), cp.float16)
    with pytest.raises(TypeError, match="q must be a cupy.ndarray"):
        decode_attention(cp.asnumpy(q), k, k)
    with pytest.raises(TypeError, match="k_cache must have dtype float16"):
        decode_attention(q, k.astype(cp.float32), k)
    with pytest.raises(TypeError, match="float32 or float16"):
        decode_attention(q.astype(cp.float64), k, k)
    with pytest.raises(ValueError, match="multiple of G"):
        decode_attention(cp.ones((2, 5, 64), cp.float16), k, k)
    with pytest.raises(ValueError, match="v_cache must have shape"):
        decode_attention(q, k, cp.ones((2, 2, 11, 64), cp.float16))
    with pytest.raises(ValueError, match="C-contiguous"):
        decode_attention(
            q, cp.ones((2, 2, 64, 10), cp.float16).transpose(0, 1, 3, 2), k
        )
    with pytest.raises(ValueError, match="needs D in"):
        decode_attention(
            cp.ones((2, 4, 48), cp.float16), *(cp.ones((2, 2, 10, 48), cp.float16),) * 2
        )
    with pytest.raises(ValueError, match="16-byte aligned"):
        flat = cp.ones(2 * 2 * 10 * 64 + 1, cp.float16)
        decode_attention(q, flat[1:].reshape(k.shape), k)
    with pytest.raises(ValueError, match="n_split"):
        decode_attention(q, k, k, version=3, n_split=11)
    with pytest.raises(ValueError, match="S must be >= 1"):
        decode_attention(q, k[:, :, :0], k[:, :, :0])
    with pytest.raises(ValueError, match="grid limit"):
        big = cp.ones((65536, 1, 64), cp.float16)
        decode_attention(big, big[:, :, None], big[:, :, None])
    with pytest.raises(ValueError, match="version"):
        decode_attention(q, k, k, version=99)
