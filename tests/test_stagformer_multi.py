"""StagFormer across devices (gpu/stagformer_multi.py, issue 8).

CPU: the placement plan (p stages, repeats allowed, bad device lists rejected), p > 2
refused with NotImplementedError, the per-stage byte split and the floor formula,
and the bench hook skipping cleanly (no failure, nothing recorded) with < 2 GPUs.
GPU (marked ``gpu``): several decode steps in a row on Hypothesis-drawn small models
(separate and shared weights, window W, D in {8, 64}, B in {1, 2}, fp32/fp16, GEMV
v1-v3), placed on devices [0, 0] (two streams on one GPU) and, where there are two
GPUs, [0, 1]: after every step the stages' outputs, self caches, cross caches and the
received memory row equal the single-GPU sequential step's bit for bit (outputs
poisoned with NaN before each step). Known-wrong: skipping the inter-stage copy, or
reading h_pos instead of h_{pos-1}, must mismatch. Bad input raises before launch.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpu import stagformer as gs
from gpu import stagformer_multi as sm
from reference import stagformer as sf
from reference.common import DecoderConfig

F32, F16 = np.float32, np.float16
seeds = st.integers(0, 2**32 - 1)


# --- CPU: the plan, p > 2, bytes, the bench hook --------------------------------------


def test_plan_places_p_stages_in_a_chain():
    two = sm.plan(2, [0, 0])
    assert [(s.stack, s.device, s.source, s.sink, s.peer) for s in two] == [
        (0, 0, None, 1, False),
        (1, 0, 0, None, False),
    ]
    three = sm.plan(3, (0, 1, 1), n_devices=2)
    assert [(s.source, s.sink, s.peer) for s in three] == [
        (None, 1, False), (0, 2, True), (1, None, False),
    ]  # fmt: skip
    assert [s.device for s in sm.plan(2, np.array([1, 0]))] == [1, 0]


@pytest.mark.parametrize(
    "devices, match",
    [
        ([0], "one id a stack"),
        ([0, 0, 0], "one id a stack"),
        ([0, -1], ">= 0"),
        ([0, 1.0], "ints"),
        ([0, True], "ints"),
        (["0", 1], "ints"),
        (None, "list"),
        ([0, 2], "does not exist"),
    ],
)
def test_plan_rejects_bad_device_lists(devices, match):
    with pytest.raises(ValueError, match=match):
        sm.plan(2, devices, n_devices=2)


def test_p_above_2_is_refused_not_faked():
    base = DecoderConfig(V=5, C=8, H=1, G=1, D=8, F=8, L=1, norm="rmsnorm",
                         act="relu", rot_dim=0)  # fmt: skip
    cfg = sf.StagConfig(base, p=3)
    w = sf.init_stagformer(cfg, np.random.default_rng(0))
    with pytest.raises(NotImplementedError, match="only p = 2"):
        sm.from_reference(w, cfg, F32, [0, 0, 0], b=1)
    with pytest.raises(ValueError, match="one id a stack"):  # validated first
        sm.from_reference(w, cfg, F32, [0, 0], b=1)
    assert len(sm.plan(3, [0, 0, 0])) == 3  # the plan itself is general


def test_stage_bytes_split_the_staggered_step():
    args = (8, 1024, 2048, 8192, 16, 16, 128, 12, 2)
    s1, s2 = sm.stage_bytes(*args)
    assert 2 * s1 == gs.step_bytes("plain", *args)
    assert s1 + s2 == gs.step_bytes("separate", *args)
    assert s2 > s1  # the cross sublayers and caches live on stage 2
    assert sm.transfer_bytes(8, 2048) == 8 * 2048 * 4
    us = sm.floor_us(s1, s2, 65536, read_bw=2e12, peer_bw=1e11)
    assert us == pytest.approx((s2 / 2e12 + 65536 / 1e11) * 1e6)


def test_bench_hook_skips_cleanly_below_two_gpus(tmp_path, monkeypatch):
    from gpu import bench
    from gpu import bench_stagformer_multi as bm

    monkeypatch.setattr(bm, "n_devices", lambda: 1)
    rows = bm.run(quick=False)["stagformer_multi"]
    assert {r["B"] for r in rows} == {1, 8, 64}
    assert all(r["status"] == "skipped: needs >= 2 GPUs" for r in rows)
    bm.print_table(rows)
    assert (
        bench.run_trick("stagformer_multi", True, {"read_bytes_per_s": 1.0}, tmp_path)
        == 0
    )
    assert not (tmp_path / "stagformer_multi.json").exists()
    assert "stagformer_multi" in bench.TRICKS  # what `make bench` runs


# --- GPU ------------------------------------------------------------------------------


@st.composite
def multi_case(draw):
    """A small p = 2 StagFormer the kernels cover, tokens (B, T), dtype, version."""
    h = draw(st.sampled_from([1, 2]))
    g = draw(st.sampled_from([x for x in (1, h) if h % x == 0]))
    d = draw(st.sampled_from([8, 64]))
    base = DecoderConfig(
        V=13, C=h * d, H=h, G=g, D=d, F=draw(st.sampled_from([8, 40])),
        L=draw(st.sampled_from([1, 2])), norm="rmsnorm", act="relu", rot_dim=0,
    )  # fmt: skip
    win = draw(st.sampled_from([None, None, 1, 2, 5]))
    cfg = sf.StagConfig(base, p=2, shared=draw(st.booleans()), window=win)
    rng = np.random.default_rng(draw(seeds))
    w = sf.init_stagformer(cfg, rng)
    tokens = rng.integers(
        0, 13, (draw(st.sampled_from([1, 2])), draw(st.integers(1, 6)))
    )
    return (
        cfg,
        w,
        tokens,
        draw(st.sampled_from([F32, F16])),
        draw(st.sampled_from([1, 2, 3])),
    )


def _placements():
    import cupy as cp

    return [[0, 0]] + ([[0, 1]] if cp.cuda.runtime.getDeviceCount() >= 2 else [])


def _host(a):
    import cupy as cp

    with cp.cuda.Device(a.device.id):
        return cp.asnumpy(a)


def _poison(ms):
    import cupy as cp

    for stg in ms.stages:
        with cp.cuda.Device(stg.device), stg.stream:
            stg.bufs.out.fill(np.nan)


def _mismatches(ms, bf, tick):
    """Names of the arrays where the stages differ from the single-GPU buffers bf
    (after ms.synchronize()); outputs must also be finite."""
    s0, s1 = ms.stages
    pairs = {
        "h": (s0.bufs.out[0], bf.out[0]),
        "o": (s1.bufs.out[1], bf.out[1]),
        "k1": (s0.bufs.k[:, 0], bf.k[:, 0]),
        "v1": (s0.bufs.v[:, 0], bf.v[:, 0]),
        "k2": (s1.bufs.k[:, 1], bf.k[:, 1]),
        "v2": (s1.bufs.v[:, 1], bf.v[:, 1]),
        "xk": (s1.bufs.xk, bf.xk),
        "xv": (s1.bufs.xv, bf.xv),
        "recv": (s1.recv[(tick - 1) % 2], bf.out[0]),  # next step's memory row
    }
    bad = []
    for name, (a, b) in pairs.items():
        ha, hb = _host(a), _host(b)
        if not np.array_equal(ha, hb) or (
            name in ("h", "o") and not np.isfinite(hb).all()
        ):
            bad.append(name)
    return bad


def _run(cfg, w, tokens, dtype, version, devices, hack=None):
    """Decode every token on one GPU (sequential schedule) and on the placement;
    returns [(pos, mismatching arrays)] after each step."""
    import cupy as cp

    b, t = tokens.shape
    with cp.cuda.Device(0):
        m = gs.to_gpu(w, cfg, dtype)
        bf = gs.new_buffers(m, b, 0)
    ms = sm.place(m, devices, b, 0)
    if hack:
        hack(ms)
    h_prev, log = None, []
    for pos in range(t):
        with cp.cuda.Device(0):
            e = cp.asarray(w.embed[tokens[:, pos]].astype(F32))
            bf.out.fill(np.nan)
            gs.decode_step(
                m, bf, e, h_prev, pos, schedule="stack1_first", version=version
            )
        _poison(ms)
        ms.step(e, pos, version=version)
        ms.synchronize()
        with cp.cuda.Device(0):
            cp.cuda.Device().synchronize()
            log.append((pos, _mismatches(ms, bf, ms.tick)))
            h_prev = bf.out[0].copy()
            if pos + 1 < t:
                bf = sm.grow_buffers(m, bf, pos + 1, 2)
        if pos + 1 < t:
            ms.grow(pos + 1)
    return log


@pytest.mark.gpu
@given(case=multi_case())
def test_gpu_multi_device_steps_equal_single_gpu_bitwise(case):
    cfg, w, tokens, dtype, version = case
    for devices in _placements():
        log = _run(cfg, w, tokens, dtype, version, devices)
        assert all(not bad for _, bad in log), (devices, log)


def _fixed_case():
    base = DecoderConfig(V=13, C=32, H=2, G=2, D=16, F=40, L=2, norm="rmsnorm",
                         act="relu", rot_dim=0)  # fmt: skip
    cfg = sf.StagConfig(base)
    w = sf.init_stagformer(cfg, np.random.default_rng(8))
    return cfg, w, np.random.default_rng(9).integers(0, 13, (2, 4))


@pytest.mark.gpu
def test_gpu_multi_known_wrong_variants_are_caught():
    cfg, w, tokens = _fixed_case()
    good = _run(cfg, w, tokens, F32, 2, [0, 0])
    assert all(not bad for _, bad in good)

    def no_copy(ms):  # the inter-stage copy skipped: stage 2 reads stale zeros
        ms._send = lambda stg, dst, t: None

    def leaky(ms):  # stage 2 reads this step's h_pos, not h_{pos-1}
        def receive(stg, pos, t, version):
            k = t % 2
            stg.stream.wait_event(ms.stages[0].sent[k])
            gs.project_memory(stg.model, stg.bufs, stg.recv[k], pos, version)

        ms._receive = receive

    for hack in (no_copy, leaky):
        log = _run(cfg, w, tokens, F32, 2, [0, 0], hack)
        assert any("o" in bad for _, bad in log), (hack.__name__, log)


@pytest.mark.gpu
def test_gpu_multi_bad_input_rejected_before_launch():
    import cupy as cp

    cfg, w, tokens = _fixed_case()
    m = gs.to_gpu(w, cfg, F32)
    n = cp.cuda.runtime.getDeviceCount()
    for bad in ([0], [0, 0, 0], [0, -1], [0, n], "01"):
        with pytest.raises(ValueError):
            sm.place(m, bad, 2)
    with pytest.raises(ValueError, match="b must"):
        sm.place(m, [0, 0], 0)
    ms = sm.place(m, [0, 0], 2, 0)
    _poison(ms)
    e = cp.zeros((2, 32), F32)
    with pytest.raises(ValueError, match="pos"):
        ms.step(e, 1)
    with pytest.raises(ValueError, match="shape"):
        ms.step(cp.zeros((1, 32), F32), 0)
    with pytest.raises(TypeError, match="dtype"):
        ms.step(e.astype(F16), 0)
    with pytest.raises(ValueError, match="version"):
        ms.step(e, 0, version=4)
    with pytest.raises(ValueError, match="grow"):
        ms.grow(2)
    ms.synchronize()
    for stg in ms.stages:  # nothing ran: the outputs are still poisoned
        assert np.isnan(_host(stg.bufs.out)).all()
