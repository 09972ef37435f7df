"""StagFormer: reference properties (CPU) and the GPU decode step (marked ``gpu``).

CPU: the stacks of a step commute (any order, or all from the snapshot of step i-1:
bitwise identical logits, outputs and caches, p = 2 and 3); decode equals the masked
prefill; the stack-1 caches equal its prefill projections; perturbing memory rows
h_j, j >= i, leaves outputs <= i unchanged and changes output i + 1; causality;
W >= T is full cross-attention; the shift form equals the strict mask; a zero cross
output projection makes stack 2 an ordinary decoder; recurrent mode is a fixed
point of stack 2 on its own outputs. Known-wrong variants (an off-by-one stagger, a
too-short window) must be rejected by the same checks.
GPU: gpu/stagformer.cu's GEMV, norm and stores against float64; a whole step against
the reference step; the parallel schedule bitwise equal to both sequential ones;
outputs poisoned with NaN; bad input rejected before launch.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from reference import stagformer as sf
from reference.common import DecoderConfig, DecoderWeights, prefill, rms_norm
from reference.testing import assert_close, describe, linear_scale

F64, F32, F16, U64 = np.float64, np.float32, np.float16, np.uint64
ROOT = Path(__file__).resolve().parents[1]
seeds = st.integers(0, 2**32 - 1)


@st.composite
def model_case(draw, p=None, gpu=False):
    """A small StagFormer (shapes 1, primes), its weights and tokens (B, T)."""
    h = draw(st.sampled_from([1, 2, 3]))
    g = draw(st.sampled_from([x for x in (1, h) if h % x == 0]))
    # GPU: 8 and 16 take attention v3, 64 and 128 the fused v7 (gpu/attention.py)
    d = draw(st.sampled_from([8, 16, 64, 128] if gpu else [1, 2, 4]))
    f = draw(st.sampled_from([8, 40] if gpu else [1, 5, 8]))
    lz = draw(st.sampled_from([1, 2]))
    p = p or draw(st.sampled_from([2, 3]))
    t = draw(st.integers(1, 6))
    win = draw(st.sampled_from([None, None, 1, 2, 5]))
    base = DecoderConfig(
        V=13, C=h * d, H=h, G=g, D=d, F=f, L=lz, norm="rmsnorm", act="relu",
        rot_dim=0 if gpu or d % 2 else draw(st.sampled_from([None, 0])),
    )  # fmt: skip
    cfg = sf.StagConfig(base, p=p, shared=draw(st.booleans()), window=win)
    rng = np.random.default_rng(draw(seeds))
    w = sf.init_stagformer(cfg, rng)
    if draw(st.booleans()):  # large values too
        w = dataclasses.replace(w, embed=1e3 * w.embed)
    tokens = rng.integers(0, 13, (draw(st.sampled_from([1, 2])), t))
    return cfg, w, tokens


def _decode_all(w, cfg, tokens, order="snapshot"):
    state = sf.empty_state(cfg, tokens.shape[0])
    logits = []
    for i in range(tokens.shape[1]):
        lg, state = sf.decode_step(w, cfg, tokens[:, i], state, order)
        logits.append(lg)
    return np.stack(logits, axis=1), state  # (B, T, V)


def _arrays(state):
    """Every array of a StagState, in a fixed order."""
    out = list(state.outputs)
    for cs in (*state.self_caches, *state.cross_caches):
        for c in cs:
            out += [c.k, c.v]
    return out


# --- schedule invariance, decode = prefill ------------------------------------------


@given(data=st.data())
def test_any_schedule_is_bitwise_identical(data):
    cfg, w, tokens = data.draw(model_case())
    pre = tokens.shape[1] - 1
    state = sf.prefill(w, cfg, tokens[:, :pre])[1] if pre else None
    state = state or sf.empty_state(cfg, tokens.shape[0])
    want, ref = sf.decode_step(w, cfg, tokens[:, pre], state, "snapshot")
    for order in itertools.permutations(range(cfg.p)):
        got, s2 = sf.decode_step(w, cfg, tokens[:, pre], state, list(order))
        assert_close(got, want, "exact", F64)
        for a, b in zip(_arrays(s2), _arrays(ref), strict=True):
            assert_close(a, b, "exact", F64)


@given(data=st.data())
def test_decode_equals_masked_prefill(data):
    cfg, w, tokens = data.draw(model_case())
    want, pst = sf.prefill(w, cfg, tokens)
    got, dst = _decode_all(w, cfg, tokens)
    used = assert_close(got, want, "rewrite", F64, np.abs(want).max())
    for a, b in zip(dst.outputs, pst.outputs, strict=True):
        assert_close(a, b, "rewrite", F64, np.abs(b).max())
    # the self caches (stack 1's too) equal the prefill projections
    for cs, ps in zip(dst.self_caches, pst.self_caches, strict=True):
        for c, p in zip(cs, ps, strict=True):
            assert_close(c.k, p.k, "rewrite", F64, np.abs(p.k).max(initial=1))
            assert_close(c.v, p.v, "rewrite", F64, np.abs(p.v).max(initial=1))
    print(describe(used))


def test_checker_rejects_an_off_by_one_stagger():
    """Known-wrong: cross-attention that sees h_i at position i (the mask j <= i,
    i.e. t0 shifted by one) differs from the staggered prefill."""
    base = DecoderConfig(V=13, C=8, H=2, G=2, D=4, F=8, L=1, norm="rmsnorm",
                         act="relu")  # fmt: skip
    cfg = sf.StagConfig(base)
    rng = np.random.default_rng(3)
    w = sf.init_stagformer(cfg, rng)
    x = rng.standard_normal((1, 5, 8))
    mem = rng.standard_normal((1, 5, 8))
    aw = w.cross[0][0].attn
    good = sf.cross_attention(x, aw, base, mem, 0)
    leaky = sf.cross_attention(x, aw, base, mem, 1)  # query t sees h_t
    with pytest.raises(AssertionError):
        assert_close(leaky, good, "rewrite", F64, np.abs(good).max())


def test_decode_step_rejects_bad_orders():
    cfg = sf.StagConfig(DecoderConfig(V=5, C=4, H=1, G=1, D=4, F=4, L=1), p=3)
    w = sf.init_stagformer(cfg, np.random.default_rng(0))
    state = sf.empty_state(cfg, 1)
    for bad in ([0, 1], [0, 0, 1], "parallel"):
        with pytest.raises(ValueError, match="order"):
            sf.decode_step(w, cfg, np.array([1]), state, bad)


# --- staggering, causality, window, shift form ---------------------------------------


@given(data=st.data(), seed=seeds)
def test_perturbing_memory_at_or_after_i_changes_only_later_outputs(data, seed):
    cfg, w, tokens = data.draw(model_case(p=2))
    t = tokens.shape[1]
    assume(t >= 2)  # a draw with T = 1 has no later output to check: draw again
    cfg = dataclasses.replace(cfg, window=None)
    x = w.embed[tokens]
    h, _ = sf.stack_forward(w, cfg, 0, x, None)
    o, _ = sf.stack_forward(w, cfg, 1, x, h)
    i = data.draw(st.integers(0, t - 2))
    bumped = h.copy()
    bumped[:, i:] += np.random.default_rng(seed).standard_normal(h[:, i:].shape)
    o2, _ = sf.stack_forward(w, cfg, 1, x, bumped)
    assert_close(o2[:, : i + 1], o[:, : i + 1], "exact", F64)
    if cfg.base.C > 1:  # C = 1: RMSNorm outputs sign(x) gamma, blind to a nudge
        assert not np.array_equal(o2[:, i + 1], o[:, i + 1])


@given(data=st.data())
def test_causality(data):
    cfg, w, tokens = data.draw(model_case())
    t = tokens.shape[1]
    m = data.draw(st.integers(0, t - 1))
    other = tokens.copy()
    other[:, m:] = (other[:, m:] + 1) % 13
    a, _ = sf.prefill(w, cfg, tokens)
    b, _ = sf.prefill(w, cfg, other)
    assert_close(b[:, :m], a[:, :m], "exact", F64)


@given(data=st.data())
def test_window_at_least_t_is_full_cross_attention(data):
    cfg, w, tokens = data.draw(model_case())
    t = tokens.shape[1]
    full, _ = sf.prefill(w, dataclasses.replace(cfg, window=None), tokens)
    for wnd in (t, t + 3):
        got, _ = sf.prefill(w, dataclasses.replace(cfg, window=wnd), tokens)
        assert_close(got, full, "exact", F64)


def test_checker_rejects_a_window_too_short():
    """Known-wrong: W = T - 2 hides h_0 from the last position."""
    base = DecoderConfig(V=13, C=8, H=2, G=1, D=4, F=8, L=1, norm="rmsnorm",
                         act="relu")  # fmt: skip
    cfg = sf.StagConfig(base)
    w = sf.init_stagformer(cfg, np.random.default_rng(4))
    tokens = np.random.default_rng(5).integers(0, 13, (1, 6))
    full, _ = sf.prefill(w, cfg, tokens)
    short, _ = sf.prefill(w, dataclasses.replace(cfg, window=4), tokens)
    with pytest.raises(AssertionError):
        assert_close(short, full, "rewrite", F64, np.abs(full).max())


@given(data=st.data())
def test_shift_form_equals_strict_mask(data):
    cfg, w, tokens = data.draw(model_case())
    rng = np.random.default_rng(tokens.sum())
    b, t = tokens.shape
    x = rng.standard_normal((b, t, cfg.base.C))
    mem = rng.standard_normal((b, t, cfg.base.C))
    aw = w.cross[0][0].attn
    want = sf.cross_attention(x, aw, cfg.base, mem, 0)
    got = sf.cross_attention_shift(x, aw, cfg.base, mem)
    assert_close(got, want, "rewrite", F64, np.abs(want).max())
    assert_close(want[:, 0], np.zeros_like(want[:, 0]), "exact", F64)  # null slot


@given(data=st.data())
def test_zero_cross_output_makes_stack_2_an_ordinary_decoder(data):
    cfg, w, tokens = data.draw(model_case(p=2))
    cross = tuple(
        tuple(dataclasses.replace(c, attn=dataclasses.replace(
            c.attn, w_o=np.zeros_like(c.attn.w_o))) for c in cs)
        for cs in w.cross
    )  # fmt: skip
    w0 = dataclasses.replace(w, cross=cross)
    got, _ = sf.prefill(w0, cfg, tokens)
    plain = DecoderWeights(w.embed, w.layers[1], w.norm_f[1], w.unembed)
    want, _ = prefill(plain, cfg.base, tokens)
    assert_close(got, want, "exact", F64)


@given(data=st.data())
def test_recurrent_mode_is_a_fixed_point_of_stack_2(data):
    """o = S_2(e; memory o_{<i}): stack 2's masked forward with its own recurrent
    outputs as memory reproduces them."""
    cfg, w, tokens = data.draw(model_case(p=2))
    cfg = dataclasses.replace(cfg, shared=True)
    w = dataclasses.replace(w, layers=(w.layers[0], w.layers[0]))
    o = sf.recurrent_decode(w, cfg, tokens)
    again, _ = sf.stack_forward(w, cfg, 1, w.embed[tokens], o)
    assert_close(again, o, "rewrite", F64, np.abs(o).max())


def test_recurrent_mode_needs_shared_weights():
    cfg = sf.StagConfig(DecoderConfig(V=5, C=4, H=1, G=1, D=4, F=4, L=1))
    w = sf.init_stagformer(cfg, np.random.default_rng(0))
    with pytest.raises(ValueError, match="shared"):
        sf.recurrent_decode(w, cfg, np.zeros((1, 2), int))


def test_bench_rel_err_compares_every_row():
    """The torch baseline's check (gpu/bench_stagformer.rel_err) compares whole
    (B, C) arrays. Known-wrong: the first run compared them with row 0 only, which
    numpy broadcast over the batch (passing at B = 1, "failing" at B > 1)."""
    from gpu.bench import rel_err

    rng = np.random.default_rng(1)
    ref = rng.standard_normal((8, 64))
    assert rel_err(ref, ref) == 0
    assert rel_err(ref[::-1], ref) > 0.5  # rows swapped: caught
    with pytest.raises(ValueError, match="shapes"):
        rel_err(ref, ref[0])
    # what the broadcast did: sqrt(B - 1) times a row distance, as measured
    wrong = [np.linalg.norm(ref[:b] - ref[0]) / np.linalg.norm(ref[0]) for b in (1, 8)]
    assert wrong[0] == 0 and wrong[1] > 2


def test_gemv_v3_rows_and_workspace_cover_both_versions():
    from gpu import stagformer as gs

    assert [gs.rows_v3(n) for n in (1, 2, 3, 4, 5, 8, 9, 64)] == [
        1, 2, 4, 4, 8, 8, 8, 8,
    ]  # fmt: skip
    for n, k, m in itertools.product((1, 2, 5, 9, 16), (7, 2048), (48, 2048)):
        ws, cnt = gs.gemv_workspace(n, k, m, F16, 2)
        kb, _ = gs.k_split(k, m, F16)
        tiles = -(-m // (32 * gs.vec(F16)))
        for r in (gs.NR, gs.rows_v3(n)):  # v2's and v3's row tiles
            rt_n = -(-n // r)
            assert ws >= 2 * rt_n * tiles * kb * r * 32 * gs.vec(F16)
            assert cnt >= 2 * rt_n * tiles
        for p, tw in (
            (gs.v4_plan(n, k, m), gs.TW4),
            (gs.v5_plan(n, k, m), gs.TW4),
            (gs.v6_plan(n, k, m), gs.TW6),
        ):  # 8 nt rows a tile
            assert ws >= 2 * p["rt"] * p["tiles"] * p["kb"] * p["rows"] * tw
            assert cnt >= 2 * p["rt"] * p["tiles"]


@pytest.mark.parametrize("n", [1, 2, 8, 9, 16, 17, 33, 64, 65, 128])
@pytest.mark.parametrize(
    "k, m", [(1, 8), (7, 24), (600, 264), (2048, 6144), (8192, 2048)]
)
def test_gemv_v4_plan_covers_the_rows_and_k_and_fits_shared_memory(n, k, m):
    """v4's to v9's split of K depends on (K, M) only (a row's bits must not
    depend on the batch), every row and every k is covered, and the ring and x tile
    fit the 227 KB a block may opt in to on sm_90 (Plan4-Plan7 in the .cu): two
    blocks an SM for v4 and v5, one for v6 to v9, whose grid stays within the 132
    SMs of an H100 or H200 unless kc is capped at 512; v7 splits as v6 (the same
    partials and finish launch); v9 in clusters of 2, 4 or 8 blocks, else as v7."""
    from gpu import stagformer as gs

    for plan, kcmax, tiles, tw, per_sm in (
        (gs.v4_plan, gs.KC4, gs.V4_TILES, gs.TW4, 2),
        (gs.v5_plan, gs.KC5, gs.V5_TILES, gs.TW4, 2),
        (gs.v6_plan, gs.KC6, gs.V6_TILES, gs.TW6, 1),
        (gs.v7_plan, gs.KC7, gs.V7_TILES, gs.TW7, 1),
        (gs.v9_plan, gs.KC9, gs.V7_TILES, gs.TW7, 1),
    ):
        p = plan(n, k, m)
        assert (p["kb"], p["kc"]) == (plan(1, k, m)["kb"], plan(1, k, m)["kc"])
        assert p["kc"] % gs.KS4 == 0 and gs.KS4 <= p["kc"] <= kcmax
        assert (p["kb"] - 1) * p["kc"] < k <= p["kb"] * p["kc"]  # no empty block
        assert p["nt"] in tiles and p["rows"] == 8 * p["nt"]
        assert p["rt"] * p["rows"] >= n > (p["rt"] - 1) * p["rows"]
        assert p["nt"] == tiles[-1] or n <= 8 or p["rows"] // 2 < n <= p["rows"]
        assert p["tiles"] * tw >= m > (p["tiles"] - 1) * tw
        if plan is gs.v6_plan:
            assert p["st"] == gs.V6_STAGES[p["nt"]]
            assert p["tiles"] * p["kb"] <= gs.TARGET_BLOCKS_V6 or p["kc"] == kcmax
        if plan is gs.v9_plan and p["cluster"]:  # one cluster of kb blocks a tile
            assert p["kb"] == p["cluster"] in gs.V9_CLUSTERS and p["fin"] == 0
            assert p["tiles"] * p["kb"] <= gs.V9_MAX_BLOCKS
        if plan is gs.v9_plan and not p["cluster"]:  # v8 runs: v7_plan's launch
            assert {q: p[q] for q in p if q != "cluster"} == gs.v7_plan(n, k, m)
        if plan is gs.v7_plan:
            assert p["st"] == gs.V7_STAGES[p["nt"]]
            six = gs.v6_plan(n, k, m)
            assert {q: p[q] for q in six if q not in ("st", "smem")} == {
                q: six[q] for q in six if q not in ("st", "smem")
            }
        for x_float in (True, False):
            smem = plan(n, k, m, x_float)["smem"]
            assert smem <= 227 * 1024
            assert per_sm * (smem + 1024) <= 228 * 1024  # blocks an SM at least


def test_best_version_follows_the_measured_batches():
    """The recorded H100 run's fastest plain step at each measured B is
    best_version's choice there; unmeasured batches take the nearer measured one's
    (on a log scale)."""
    import json

    from gpu import stagformer as gs

    doc = json.loads((ROOT / "results" / "h100" / "stagformer.json").read_text())
    ok = [r for r in doc["rows"] if r["name"] == "plain_24" and r["status"] == "ok"]
    for b in sorted({r["B"] for r in ok}):
        fastest = min((r for r in ok if r["B"] == b), key=lambda r: r["median_us"])
        assert gs.best_version(b) == fastest["version"], b
    assert [gs.best_version(b) for b in (1, 2, 3, 5, 6, 22, 23, 512)] == [
        3, 3, 8, 8, 9, 9, 9, 9,
    ]  # fmt: skip
    with pytest.raises(ValueError, match="b must be"):
        gs.best_version(0)


# --- GPU (gpu/stagformer.cu) ---------------------------------------------------------


def _cast(obj, dtype):
    """Every float array of a (nested) weights dataclass rounded to dtype, float64."""
    if isinstance(obj, np.ndarray):
        return obj.astype(dtype).astype(F64) if obj.dtype.kind == "f" else obj
    if isinstance(obj, tuple):
        return tuple(_cast(o, dtype) for o in obj)
    if dataclasses.is_dataclass(obj):
        kw = {
            f.name: _cast(getattr(obj, f.name), dtype) for f in dataclasses.fields(obj)
        }
        return dataclasses.replace(obj, **kw)
    return obj


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("version", [1, 2, 3, 4, 5, 6, 7, 8, 9])
@given(
    n=st.sampled_from([1, 2, 5, 9, 33, 70]),
    k=st.sampled_from([1, 7, 33, 600]),
    mv=st.sampled_from([1, 3, 33, 40]),
    z=st.sampled_from([1, 2]),
    act=st.sampled_from([0, 1]),
    res=st.booleans(),
    x16=st.booleans(),
    norm=st.booleans(),
    mag=st.sampled_from([1.0, 1e-30, 1e6, 1e30]),
    seed=seeds,
)
def test_gpu_gemv_matches_reference(
    dtype, version, n, k, mv, z, act, res, x16, norm, mag, seed
):
    import cupy as cp

    from gpu import stagformer as gs

    norm = norm and version == 3  # v3 only: the RMSNorm fused into the GEMV
    x16 = x16 and dtype == F16 and not norm
    # float32 x far outside fp16's range (v4 scales each row's chunk by 2^p); not
    # with the fused norm, whose sum of squares overflows float32 beyond |x| ~ 1e19
    mag = 1.0 if x16 or norm else mag
    # v7, v8 round float32 x to fp16 (the reference rounds it too): magnitudes
    # inside fp16's range, from its subnormals (1e-6) to near its largest (1e4)
    x_to16 = version in gs.ROUNDS_X and dtype == F16 and not x16
    mag = {1e-30: 1e-6, 1e6: 1e3, 1e30: 1e4}.get(mag, mag) if x_to16 else mag
    m = mv * gs.vec(dtype)
    rng = np.random.default_rng(seed)
    xs = [
        (mag * rng.standard_normal((n, k))).astype(F16 if x16 else F32)
        for _ in range(z)
    ]
    ws = [(rng.standard_normal((k, m)) / np.sqrt(k)).astype(dtype) for _ in range(z)]
    rs = [rng.standard_normal((n, m)).astype(F32) for _ in range(z)]
    gs_ = [(1 + 0.1 * rng.standard_normal(k)).astype(dtype) for _ in range(z)]
    ys = [cp.full((n, m), np.nan, F32) for _ in range(z)]
    need, cnt = gs.gemv_workspace(n, k, m, dtype, z)
    scratch = gs.new_scratch(need, cnt)
    scratch.ws.fill(np.nan)  # partials are written before they are read

    def run(xl, wl, yl, rl, ver, gl):
        return gs.gemv(
            [cp.asarray(a) for a in xl], [cp.asarray(a) for a in wl], yl,
            res=[cp.asarray(a) for a in rl] if res else None, act=act,
            version=ver, scratch=scratch,
            norm=[cp.asarray(a) for a in gl] if norm else None,
        )  # fmt: skip

    run(xs, ws, ys, rs, version, gs_)
    for i in range(z):
        x64, w64 = (
            xs[i].astype(F16 if x_to16 else xs[i].dtype).astype(F64),
            ws[i].astype(F64),
        )
        if norm:
            x64 = rms_norm(x64, gs_[i].astype(F64))
        want = x64 @ w64
        want = np.maximum(want, 0) if act else want
        want = want + rs[i] if res else want
        used = assert_close(cp.asnumpy(ys[i]), want, "gpu", F32, linear_scale(x64, w64))
        print(f"gemv v{version} {np.dtype(dtype).name} norm={norm}: {describe(used)}")
    assert int(scratch.cnt.sum()) == 0  # counters left zero for the next launch
    if version >= 2 and n > 1:  # a row's sum does not depend on the other rows
        one = cp.full((1, m), np.nan, F32)
        run([xs[0][1:2]], ws[:1], [one], [rs[0][1:2]], version, gs_[:1])
        assert np.array_equal(cp.asnumpy(one)[0], cp.asnumpy(ys[0])[1])
    # v3 sums in v2's order, v8 in v7's, and v9 in v8's where its split is v8's
    split = ("kb", "kc")
    same9 = (
        version == 9
        and dtype == F16
        and all(gs.v9_plan(n, k, m)[q] == gs.v7_plan(n, k, m)[q] for q in split)
    )
    if (version == 3 and not norm) or version == 8 or same9:
        two = [cp.full((n, m), np.nan, F32) for _ in range(z)]  # the same bits
        run(xs, ws, two, rs, version - 1, gs_)
        for a, b in zip(two, ys, strict=True):
            assert np.array_equal(cp.asnumpy(a), cp.asnumpy(b))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [F32, F16])
@given(n=st.sampled_from([1, 3]), c=st.sampled_from([1, 24, 300, 2048]), seed=seeds)
def test_gpu_rmsnorm_matches_reference(dtype, n, c, seed):
    import cupy as cp

    from gpu import stagformer as gs

    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((2, n, c)) * 10).astype(F32)
    g = [(1 + 0.1 * rng.standard_normal(c)).astype(dtype) for _ in range(2)]
    y = cp.full((2, n, c), np.nan, F32)
    gs.rmsnorm(cp.asarray(x), [cp.asarray(a) for a in g], y)
    for z in range(2):
        want = rms_norm(x[z].astype(F64), g[z].astype(F64))
        assert_close(
            cp.asnumpy(y[z]), want, "gpu", F32, np.sqrt(c) * np.abs(want).max()
        )


def _gpu_case(cfg, w, tokens, dtype):
    """Reference step at pos = T - 1 from a state whose caches hold the dtype's
    values, and the GPU model and buffers loaded with the same state."""
    import cupy as cp

    from gpu import stagformer as gs

    w = _cast(w, dtype)
    b, pos = tokens.shape[0], tokens.shape[1] - 1
    state = sf.prefill(w, cfg, tokens[:, :pos])[1] if pos else sf.empty_state(cfg, b)
    state = dataclasses.replace(
        state,
        self_caches=_cast(state.self_caches, dtype),
        cross_caches=_cast(state.cross_caches, dtype),
        outputs=tuple(o.astype(F32).astype(F64) for o in state.outputs),
    )
    _, after = sf.decode_step(w, cfg, tokens[:, pos], state)
    m = gs.to_gpu(w, cfg, dtype)
    bf = gs.new_buffers(m, b, pos)
    for j in range(cfg.base.L):
        for s in range(2):
            bf.k[j, s, :, :, :pos] = cp.asarray(state.self_caches[s][j].k.astype(dtype))
            bf.v[j, s, :, :, :pos] = cp.asarray(state.self_caches[s][j].v.astype(dtype))
        ring = cfg.window or max(pos, 1)
        for r in range(pos - 1):  # memory rows < pos - 1, in ring order
            c = state.cross_caches[0][j]
            bf.xk[j, :, :, 1 + r % ring] = cp.asarray(c.k[:, :, 1 + r].astype(dtype))
            bf.xv[j, :, :, 1 + r % ring] = cp.asarray(c.v[:, :, 1 + r].astype(dtype))
    e = cp.asarray(w.embed[tokens[:, pos]].astype(F32))
    h_prev = cp.asarray(state.outputs[0][:, pos - 1].astype(F32)) if pos else None
    return m, bf, e, h_prev, pos, after


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("version", [1, 2, 3, 4, 5, 6, 7, 8, 9])
@given(data=st.data())
def test_gpu_step_matches_reference_and_schedules_agree(dtype, version, data):
    import cupy as cp

    from gpu import stagformer as gs

    cfg, w, tokens = data.draw(model_case(p=2, gpu=True))
    m, bf, e, h_prev, pos, after = _gpu_case(cfg, w, tokens, dtype)
    results = []
    for sched in gs.SCHEDULES:
        bf.out.fill(np.nan)
        gs.decode_step(m, bf, e, h_prev, pos, schedule=sched, version=version)
        results.append([cp.asnumpy(a).copy() for a in (bf.out, bf.k, bf.v, bf.xk)])
    h_ref, o_ref = after.outputs[0][:, -1], after.outputs[1][:, -1]
    sc = max(np.abs(h_ref).max(), np.abs(o_ref).max())
    # v7, v8 round every GEMV's float32 input to fp16 (with fp16 weights)
    kind = gs.step_tolerance(version, dtype)
    used = assert_close(results[0][0][0], h_ref, kind, dtype, sc)
    used = max(used, assert_close(results[0][0][1], o_ref, kind, dtype, sc))
    for j in range(cfg.base.L):  # the K/V rows this step wrote
        for s in range(2):
            want = after.self_caches[s][j].k[:, :, pos]
            got = results[0][1][j, s, :, :, pos]
            assert_close(got, want, kind, dtype, np.abs(want).max(initial=1))
    print(f"step v{version} {np.dtype(dtype).name}: {describe(used)}")
    for other in results[1:]:  # parallel == stack 1 first == stack 2 first
        for a, b in zip(other, results[0], strict=True):
            assert np.array_equal(a, b, equal_nan=True)


@pytest.mark.gpu
def test_gpu_step_rejects_a_wrong_memory_row():
    """Known-wrong: feeding h_pos (this step's stack-1 output) instead of h_{pos-1}
    must fail the same check."""
    import cupy as cp

    from gpu import stagformer as gs

    base = DecoderConfig(V=13, C=32, H=2, G=2, D=16, F=40, L=1, norm="rmsnorm",
                         act="relu", rot_dim=0)  # fmt: skip
    cfg = sf.StagConfig(base)
    w = sf.init_stagformer(cfg, np.random.default_rng(8))
    tokens = np.random.default_rng(9).integers(0, 13, (2, 4))
    m, bf, e, h_prev, pos, after = _gpu_case(cfg, w, tokens, F32)
    wrong = cp.asarray(after.outputs[0][:, pos].astype(F32))
    gs.decode_step(m, bf, e, wrong, pos)
    o_ref = after.outputs[1][:, -1]
    with pytest.raises(AssertionError):
        assert_close(
            cp.asnumpy(bf.out[1]), o_ref, "stag_step", F32, np.abs(o_ref).max()
        )


@pytest.mark.gpu
def test_gpu_bad_inputs_rejected_before_launch():
    import cupy as cp

    from gpu import stagformer as gs

    x, w, y = cp.zeros((2, 64), F32), cp.zeros((64, 48), F16), cp.zeros((2, 48), F32)
    sc = gs.new_scratch(*gs.gemv_workspace(2, 64, 48, F16))
    with pytest.raises(TypeError, match="ws"):
        gs.gemv([x], [w.astype(cp.float64)], [y], scratch=sc)
    with pytest.raises(TypeError, match="ys"):
        gs.gemv([x], [w], [y.astype(F16)], scratch=sc)
    with pytest.raises(ValueError, match="xs"):
        gs.gemv([x[:, :60].copy()], [w], [y], scratch=sc)
    with pytest.raises(ValueError, match="M % 8"):
        gs.gemv([x], [w[:, :44].copy()], [y[:, :44].copy()], scratch=sc)
    with pytest.raises(ValueError, match="scratch"):
        gs.gemv([x], [w], [y])
    with pytest.raises(ValueError, match="version"):
        gs.gemv([x], [w], [y], version=max(gs.VERSIONS) + 1, scratch=sc)
    with pytest.raises(ValueError, match="version 3"):
        gs.gemv([x], [w], [y], version=4, scratch=sc, norm=[cp.ones(64, F16)])
    g = cp.ones(64, F16)
    with pytest.raises(ValueError, match="version 3"):
        gs.gemv([x], [w], [y], version=2, scratch=sc, norm=[g])
    with pytest.raises(TypeError, match="norm"):
        gs.gemv([x], [w], [y], version=3, scratch=sc, norm=[g.astype(F32)])
    with pytest.raises(ValueError, match="float32 xs"):
        gs.gemv([x.astype(F16)], [w], [y], version=3, scratch=sc, norm=[g])
    with pytest.raises(ValueError, match="act"):
        gs.gemv([x], [w], [y], act=2, scratch=sc)
    with pytest.raises(ValueError, match="pos"):
        gs.store_qkv(
            cp.zeros((1, 48), F32),
            cp.zeros((1, 1, 16), F16),
            cp.zeros((1, 1, 3, 16), F16),
            cp.zeros((1, 1, 3, 16), F16),
            3,
        )
    bad = sf.StagConfig(DecoderConfig(V=5, C=4, H=1, G=1, D=4, F=4, L=1))
    with pytest.raises(ValueError, match="rmsnorm"):
        gs.check_config(bad)  # swiglu, RoPE: not what the kernels cover


# --- the persistent B = 1 step (p1) -------------------------------------------------


@given(k=st.integers(1, 70), m8=st.integers(1, 9), seed=seeds)
def test_pack_w_puts_each_unit_of_8_columns_in_one_run(k, m8, seed):
    from gpu import stagformer as gs

    w = np.random.default_rng(seed).standard_normal((k, 8 * m8)).astype(F16)
    p = gs.pack_w(w)
    assert p.shape == (m8, k, 8) and p.flags.c_contiguous
    for g in range(m8):
        assert np.array_equal(p[g], w[:, 8 * g : 8 * g + 8])


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5, 6])
def test_p1_ring_fits_the_benchmark_model_with_one_block_an_sm(version):
    from gpu import bench_stagformer as bs
    from gpu import stagformer as gs

    m = gs.Model(bs.H, bs.G, bs.D, bs.C, bs.F, 1, False, None, F16, [[]], [], None, [])
    optin, per_sm = 227 * 1024, 228 * 1024  # sm_90's limits
    ak = 1 if version == 1 else gs.p2_slots(bs.H, bs.S, bs.D, 132)
    st_ = gs.p1_stages(m, optin, ak, version, bs.S)
    assert 8 <= st_ <= gs.P1_MAX_STAGES
    smem = gs.p1_smem(m, st_, ak, version, bs.S)
    assert smem <= optin < 2 * smem > per_sm
    assert gs.p1_smem(m, st_ + 1, ak, version, bs.S) > optin or st_ == gs.P1_MAX_STAGES


def test_p1_smem_counts_p5s_combine_buffer_and_p3s_count():
    """p5 and p6 add 256 floats of P V sums and 2 H nc + H floats (even) of the
    combine, nc = ceil(S / (ak P0)); p3 adds 16 bytes (the producer's count)."""
    from gpu import stagformer as gs

    m = gs.Model(4, 4, 64, 256, 512, 1, False, None, F16, [[]], [], None, [])
    base = gs.p1_smem(m, 4, 2, 2, 1000)
    nc = -(-1000 // (2 * gs.p1_chunk_rows(64)))
    assert gs.p1_smem(m, 4, 2, 1, 1000) == base == gs.p1_smem(m, 4, 2, 4, 1000)
    assert gs.p1_smem(m, 4, 2, 3, 1000) == base + 16
    for v in (5, 6):
        assert gs.p1_smem(m, 4, 2, v, 1000) == base + 4 * (256 + 2 * 4 * nc + 4)


@st.composite
def p1_case(draw):
    """A small plain model p1 covers (D 64 or 128, fp16) and a position whose
    cache crosses attention chunks (P = 16 KB / 2D rows), T = 1 and chunk edges."""
    h = draw(st.sampled_from([1, 2, 3]))
    g = draw(st.sampled_from([x for x in (1, h) if h % x == 0]))
    d = draw(st.sampled_from([64, 128]))
    p = 16384 // (2 * d)
    t = draw(st.one_of(st.sampled_from([1, 2, p, p + 1, p + 2, 2 * p + 1]),
                       st.integers(1, 2 * p + 3)))  # fmt: skip
    base = DecoderConfig(
        V=13, C=h * d, H=h, G=g, D=d, F=draw(st.sampled_from([8, 40])),
        L=draw(st.sampled_from([1, 2])), norm="rmsnorm", act="relu", rot_dim=0,
    )  # fmt: skip
    cfg = sf.StagConfig(base, p=2)
    w = sf.init_stagformer(cfg, np.random.default_rng(draw(seeds)))
    if draw(st.booleans()):  # large values too
        w = dataclasses.replace(w, embed=1e3 * w.embed)
    tokens = np.random.default_rng(draw(seeds)).integers(0, 13, (1, t))
    return cfg, w, tokens


@pytest.mark.gpu
@pytest.mark.parametrize("version", [1, 2, 3, 4, 5, 6])
@given(
    case=p1_case(),
    slots=st.sampled_from([None, 1, 2, 3]),
    stages=st.sampled_from([None, 3, 5]),
    window=st.sampled_from([None, 1, 2]),
)
def test_gpu_persistent_step_matches_reference(version, case, slots, stages, window):
    """p1-p6 against stack 1 of the float64 reference step (a plain decoder), with
    outputs, scratch and the cache rows it writes poisoned with NaN first; p2-p6
    with 1-3 cache slots an attention unit (the benchmark's shape takes 2) and a
    trace whose stamps must run forward; rings of 3 and 5 slots besides the
    largest, and p4-p6 with windows of 1 and 2 chunks in flight besides the
    default."""
    import cupy as cp

    from gpu import runtime as rt
    from gpu import stagformer as gs

    cfg, w, tokens = case
    w = _cast(w, F16)
    pos = tokens.shape[1] - 1
    state = sf.prefill(w, cfg, tokens[:, :pos])[1] if pos else sf.empty_state(cfg, 1)
    state = dataclasses.replace(state, self_caches=_cast(state.self_caches, F16))
    _, after = sf.decode_step(w, cfg, tokens[:, pos], state)
    m = gs.to_gpu(w, cfg, F16)
    bf = gs.new_buffers(m, 1, pos, stacks=1)
    for j in range(cfg.base.L):
        bf.k[j, 0, :, :, :pos] = cp.asarray(state.self_caches[0][j].k.astype(F16))
        bf.v[j, 0, :, :, :pos] = cp.asarray(state.self_caches[0][j].v.astype(F16))
    bf.k[:, :, :, :, pos] = np.nan
    bf.v[:, :, :, :, pos] = np.nan
    pk = gs.pack_plain(m, pos + 1)
    for a in (bf.out, bf.x, pk.q, pk.o, pk.u, pk.part):
        a.fill(np.nan)
    e = cp.asarray(w.embed[tokens[:, pos]].astype(F32))
    kw = dict(stages=stages)
    if version >= 2:
        tr = cp.zeros((rt.sm_count(), cfg.base.L, 12), U64)
        kw.update(slots=slots, trace=tr)
    elif slots is not None:
        return  # p1 has one slot an attention unit
    if version >= 4:
        kw.update(window=window)
    elif window is not None:
        return  # the window is for p4-p6
    got = cp.asnumpy(gs.persistent_step(pk, bf, e, pos, version, **kw))
    if version >= 2:  # thread 0's stamps of block 0 run forward; every producer
        t0 = cp.asnumpy(tr[0, :, :11]).ravel().astype(np.int64)  # finished
        assert (t0 > 0).all() and (np.diff(t0) >= 0).all()
        assert (cp.asnumpy(tr[:, :, 11]) > 0).all()
    h_ref = after.outputs[0][:, -1]
    used = assert_close(got, h_ref, "stag_step", F16, np.abs(h_ref).max())
    for j in range(cfg.base.L):  # the K/V rows this step wrote
        for cache, ref in ((bf.k, after.self_caches[0][j].k),
                           (bf.v, after.self_caches[0][j].v)):  # fmt: skip
            want = ref[:, :, pos]
            got_kv = cp.asnumpy(cache[j, 0, :, :, pos])
            assert_close(got_kv, want, "stag_step", F16, np.abs(want).max(initial=1))
    print(f"step p{version} S={pos + 1} slots={slots} stages={stages} "
          f"window={window}: {describe(used)}")  # fmt: skip


@pytest.mark.gpu
def test_gpu_persistent_step_rejects_bad_inputs_before_launch():
    import cupy as cp

    from gpu import stagformer as gs

    base = DecoderConfig(V=13, C=64, H=1, G=1, D=64, F=40, L=1, norm="rmsnorm",
                         act="relu", rot_dim=0)  # fmt: skip
    w = sf.init_stagformer(sf.StagConfig(base), np.random.default_rng(3))
    with pytest.raises(TypeError, match="float16"):
        gs.pack_plain(gs.to_gpu(w, sf.StagConfig(base), F32), 4)
    m = gs.to_gpu(w, sf.StagConfig(base), F16)
    pk = gs.pack_plain(m, 4)
    bf = gs.new_buffers(m, 1, 3, stacks=1)
    e = cp.zeros((1, 64), F32)
    with pytest.raises(ValueError, match="pos"):
        gs.persistent_step(pk, bf, e, 4)
    with pytest.raises(ValueError, match="B = 1"):
        gs.persistent_step(pk, gs.new_buffers(m, 2, 3, stacks=1), e, 3)
    with pytest.raises(ValueError, match="e"):
        gs.persistent_step(pk, bf, cp.zeros((1, 60), F32), 3)
    with pytest.raises(TypeError, match="e"):
        gs.persistent_step(pk, bf, e.astype(F16), 3)
    d32 = DecoderConfig(V=13, C=64, H=2, G=2, D=32, F=40, L=1, norm="rmsnorm",
                        act="relu", rot_dim=0)  # fmt: skip
    w32 = sf.init_stagformer(sf.StagConfig(d32), np.random.default_rng(4))
    with pytest.raises(ValueError, match="version"):
        gs.persistent_step(pk, bf, e, 3, version=max(gs.P1_VERSIONS) + 1)
    with pytest.raises(ValueError, match="slots"):
        gs.persistent_step(pk, bf, e, 3, version=2, slots=gs.P2_MAX_SLOTS + 1)
    with pytest.raises(ValueError, match="trace needs version 2 or 3"):
        gs.persistent_step(pk, bf, e, 3, version=1, trace=cp.zeros((1, 1, 12), U64))
    with pytest.raises(ValueError, match="trace"):
        gs.persistent_step(pk, bf, e, 3, version=2, trace=cp.zeros((1, 1, 12), U64))
    with pytest.raises(ValueError, match="window is for p4-p6"):
        gs.persistent_step(pk, bf, e, 3, version=2, window=2)
    with pytest.raises(ValueError, match="stages must be"):
        gs.persistent_step(pk, bf, e, 3, version=2, stages=1)
    with pytest.raises(ValueError, match="stages must be"):
        gs.persistent_step(pk, bf, e, 3, version=2, stages=gs.P1_MAX_STAGES + 1)
    with pytest.raises(ValueError, match="window must be"):
        gs.persistent_step(pk, bf, e, 3, version=4, stages=3, window=3)
    with pytest.raises(ValueError, match="window must be"):
        gs.persistent_step(pk, bf, e, 3, version=4, window=0)
    with pytest.raises(ValueError, match="D in"):
        gs.pack_plain(gs.to_gpu(w32, sf.StagConfig(d32), F16), 4)


def test_trace_summary_reads_phases_barriers_and_the_producers_lead():
    from gpu.bench_stagformer import TRACE_PHASES, trace_summary

    t = np.zeros((3, 2, 12), np.uint64)
    steps = np.arange(1, 11) * 1000  # phase i: i + 1 µs (stamps in ns)
    for b in range(3):
        for lz in range(2):
            base = 10**6 * (lz + 1) + 500 * b
            t[b, lz, :11] = base + np.concatenate([[0], np.cumsum(steps)])
            t[b, lz, 11] = t[b, lz, 10] - 7000  # the producer 7 µs ahead
    s = trace_summary(t)
    assert s["phases_median_us"] == {p: i + 1.0 for i, p in enumerate(TRACE_PHASES)}
    assert s["phases_max_us"]["barrier_down"] == 10.0
    assert s["producer_lead_median_us"] == 7.0
    assert s["step_us"] == (10**6 + 1000 + 55000) / 1e3
