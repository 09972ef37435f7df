"""Fuzzing the public launchers of gpu/<slug>.py (marked ``gpu``).

Each Hypothesis example draws a valid call (dtype, shapes off every tile, version)
and then 0, 1 or 2 mutations of it: another dtype, a host array, a non-contiguous
view, a view misaligned by one element, a wrong or empty dimension, an out-of-range
or duplicate id, ``length`` outside [1, S], a bad ``n_split`` or ``version``. The
call must then either

  * raise TypeError or ValueError whose message names the offending argument (its
    name, or the shape letter of the dimension it breaks), with the poisoned
    output still untouched (nothing was launched that wrote it), or
  * return the float64 reference's result within reference.testing.assert_close
    (the same row and scale as the launcher's own tests): a mutation that keeps
    the values (a strided or a misaligned view) may be accepted.

A valid call (no mutation) must be accepted. Any other exception (a CUDA error, an
IndexError, a wrong result) fails. Outcomes are tallied per launcher and printed
at the end of the module (``TALLY``; with TT_FUZZ_REPORT=path also written there as
JSON). A misaligned view that a launcher fails to reject can fault the CUDA context
(a sticky error; the failure names the call, TT_FUZZ_NO_MISALIGN=1 leaves those
views out): run this file in its own process (tools/gpu_session.sh does),
``pytest tests/test_fuzz_launchers.py -m gpu --hypothesis-profile=ci`` (a few
minutes), and under ``compute-sanitizer --tool memcheck`` with
``--hypothesis-profile=sanitizer``.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference import common as cm
from reference import deja_vu as dv
from reference import ffn_approx as fa
from reference import precompute as pc
from reference import slim_attention as sa
from reference.testing import (
    assert_close,
    attention_scale,
    linear_scale,
    moe_scale,
    slim_kernel_scale,
    sparse_mlp_scale,
)

pytestmark = pytest.mark.gpu

F64, F32, F16 = np.float64, np.float32, np.float16
seeds = st.integers(0, 2**32 - 1)
TALLY: Counter = Counter()  # (launcher, outcome) -> calls


@pytest.fixture(scope="module", autouse=True)
def _report(request):
    yield
    lines = [f"fuzz {k[0]:<22} {k[1]:<34} {v}" for k, v in sorted(TALLY.items())]
    calls = sum(v for k, v in TALLY.items() if k[1] == "calls")
    lines.append(f"fuzz total: {calls} calls")
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    for line in lines:
        (tr.write_line if tr else print)(line)
    path = os.environ.get("TT_FUZZ_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump({f"{a}|{b}": v for (a, b), v in TALLY.items()}, f, indent=1)


# --- mutations of device arrays ------------------------------------------------------


def _misaligned(a):
    """The same values, C-contiguous, starting one element past an aligned base."""
    import cupy as cp

    flat = cp.empty(a.size + 1, a.dtype)
    view = flat[1:].reshape(a.shape)
    view[...] = a
    return view


def _strided(a):
    """The same values as a non-contiguous view (every other element of the last axis
    of a buffer twice as wide)."""
    import cupy as cp

    big = cp.zeros((*a.shape[:-1], 2 * max(a.shape[-1], 1)), a.dtype)
    view = big[..., : 2 * a.shape[-1] : 2]
    view[...] = a
    return view


def _reshaped(a, axis: int, grow: bool):
    """One more row (a copy of the last) or one fewer along ``axis``."""
    import cupy as cp

    if grow:
        return cp.concatenate([a, a.take([a.shape[axis] - 1], axis=axis)], axis=axis)
    return cp.ascontiguousarray(a.take(range(a.shape[axis] - 1), axis=axis))


# TT_FUZZ_NO_MISALIGN=1 leaves out the misaligned views (a launcher that lets one
# through to a 16-byte load faults the CUDA context for the rest of the process).
KINDS = ["dtype", "host", "strided", "shape", "empty"]
if not os.environ.get("TT_FUZZ_NO_MISALIGN"):
    KINDS.append("misaligned")
OTHER_DTYPE = {np.dtype(F32): F64, np.dtype(F16): F32, np.dtype(np.int32): np.int64}


@dataclass
class Arg:
    """One array argument of a launcher: its name (as its errors spell it) and the
    shape letter of each axis (what an error about that axis may name instead)."""

    name: str
    letters: str
    is_out: bool = False


@dataclass
class Plan:
    """The mutations drawn for one call: [argument, kind, axis] lists, and scalar
    overrides of keyword arguments; ``names``: what an error may name."""

    arrays: list = field(default_factory=list)
    scalars: dict = field(default_factory=dict)
    names: set = field(default_factory=set)

    @property
    def kinds(self) -> list[str]:
        out = [f"{k} {a.name}" for a, k, _ in self.arrays if k != "noop"]
        return out + [f"{k}={v}" for k, v in self.scalars.items()]

    @property
    def touches_out(self) -> bool:
        return any(a.is_out and k != "noop" for a, k, _ in self.arrays)


@st.composite
def plans(draw, args: list[Arg], scalars: dict[str, tuple]):
    """0-2 mutations over ``args`` (array kinds) and ``scalars`` (name -> (bad values,
    names an error may use)). A dtype mismatch may be reported on the argument it
    is checked against, so a dtype mutation lets an error name any argument."""
    plan = Plan()
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2]))):
        if scalars and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(scalars)))
            bad, names = scalars[key]
            plan.scalars[key] = draw(st.sampled_from(bad))
            plan.names |= set(names)
            continue
        a = draw(st.sampled_from(args))
        kind = draw(st.sampled_from(KINDS))
        axis = draw(st.integers(0, len(a.letters) - 1))
        plan.arrays.append([a, kind, axis])
        plan.names |= {a.name}
        if kind == "dtype":
            plan.names |= {b.name for b in args}
        if kind in ("shape", "empty"):  # C = H D: a head count or dim moves C
            plan.names |= {a.letters[axis]} | (
                {"C"} if a.letters[axis] in "HD" else set()
            )
    return plan


def _apply(plan: Plan, dev: dict):
    """dev (name -> CuPy array) with the plan's array mutations applied; a mutation
    that changes nothing (an axis already empty) becomes "noop"."""
    import cupy as cp

    out = dict(dev)
    for entry in plan.arrays:
        a, kind, axis = entry
        x = out[a.name]
        if not isinstance(x, cp.ndarray) or (
            kind in ("empty", "shape") and x.shape[axis] == 0
        ):
            entry[1] = "noop"  # already a host array, or that axis already empty
            continue
        if kind == "dtype":
            out[a.name] = x.astype(OTHER_DTYPE.get(x.dtype, F64))
        elif kind == "host":
            out[a.name] = cp.asnumpy(x)
        elif kind == "strided":
            out[a.name] = _strided(x)
        elif kind == "misaligned":
            out[a.name] = _misaligned(x)
        elif kind == "shape":
            out[a.name] = _reshaped(x, axis, grow=x.shape[axis] < 2 or axis % 2 == 0)
        elif kind == "empty":
            out[a.name] = cp.ascontiguousarray(x.take([], axis=axis))
    return out


def _host(m: dict) -> dict:
    """The arrays as passed, on the host (what the reference is given)."""
    import cupy as cp

    return {k: cp.asnumpy(v) if isinstance(v, cp.ndarray) else v for k, v in m.items()}


def _named(msg: str, names) -> bool:
    """True when the message names one of ``names`` as a word."""
    return any(re.search(rf"(?<![A-Za-z_]){re.escape(n)}(?![A-Za-z_])", msg)
               for n in names)  # fmt: skip


def _run(launcher: str, plan: Plan, call, truth, m: dict, out=None):
    """Make the call; judge it by the module docstring's rule; tally the outcome.

    call() -> result (CuPy); truth(host) -> (want, kind, scale) for the arrays as
    passed (``m``, copied to the host), or a callable check(result); it raises
    ValueError or IndexError when the reference itself refuses them. out: the
    poisoned output buffer (None when the plan mutated it)."""
    import cupy as cp

    TALLY[launcher, "calls"] += 1
    try:
        res = call()
        cp.cuda.Device().synchronize()  # a kernel fault surfaces here
    except (TypeError, ValueError) as e:
        msg = f"{type(e).__name__}: {e}"
        assert plan.kinds, f"{launcher}: a valid call was refused: {msg}"
        assert _named(str(e), plan.names), (
            f"{launcher} {plan.kinds}: the error does not name {sorted(plan.names)}: "
            f"{msg}"
        )
        if out is not None:
            cp.cuda.Device().synchronize()
            kept = cp.isnan(out) if out.dtype.kind == "f" else out == -1
            assert bool(kept.all()), f"{launcher}: out written before the error"
        TALLY[launcher, f"rejected ({type(e).__name__})"] += 1
        return
    except Exception as e:  # a CUDA fault (sticky: later calls fail too), ...
        TALLY[launcher, f"FAULT ({type(e).__name__})"] += 1
        raise AssertionError(
            f"{launcher} {plan.kinds}: the call failed with {type(e).__name__}: {e}"
        ) from e
    try:
        t = truth(_host(m))
    except (ValueError, IndexError) as e:
        raise AssertionError(
            f"{launcher}: accepted {plan.kinds}, which the reference refuses: {e}"
        ) from e
    if callable(t):
        t(res)
    else:
        want, kind, scale = t
        got = cp.asnumpy(res)
        assert_close(got, want, kind, got.dtype, scale)
    TALLY[
        launcher, "matched" + (f" ({','.join(plan.kinds)})" if plan.kinds else "")
    ] += 1


def _dev(arrays: dict) -> dict:
    import cupy as cp

    return {k: cp.asarray(v) for k, v in arrays.items()}


VERSION_BAD = ((0, 99, -1, 2.5), ("version",))


# --- attention ----------------------------------------------------------------------


@st.composite
def attention_calls(draw):
    from gpu import attention as ga

    version = draw(st.sampled_from(list(ga.VERSIONS)))
    dtype = draw(st.sampled_from([F32, F16]))
    g = draw(st.sampled_from([1, 2, 3]))
    h = g * draw(st.sampled_from([1, 2, 3]))
    if version >= 4:
        d = draw(st.sampled_from(list(ga.V4_HEAD_DIMS[np.dtype(dtype)])))
    else:
        d = draw(st.sampled_from([1, 7, 33, 64]))
    s = draw(st.one_of(st.integers(1, 40), st.integers(41, 700)))
    b = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(seeds))
    arrays = {
        "q": rng.standard_normal((b, h, d)).astype(dtype),
        "k_cache": rng.standard_normal((b, g, s, d)).astype(dtype),
        "v_cache": rng.standard_normal((b, g, s, d)).astype(dtype),
    }
    scalars = {"version": VERSION_BAD}
    if version >= 3:
        scalars["n_split"] = ((0, s + 1, -3), ("n_split",))
    args = [Arg("q", "BHD"), Arg("k_cache", "BGSD"), Arg("v_cache", "BGSD"),
            Arg("out", "BHD", True)]  # fmt: skip
    return version, arrays, draw(plans(args, scalars))


@given(case=attention_calls())
def test_fuzz_attention(case):
    from gpu import attention as ga
    from gpu import runtime as rt

    version, arrays, plan = case
    dev = _dev(arrays)
    dev["out"] = rt.poisoned(arrays["q"].shape, arrays["q"].dtype)
    m = _apply(plan, dev)
    kw = dict(version=version) | plan.scalars

    def truth(a):
        f64 = [np.asarray(a[k], F64) for k in ("q", "k_cache", "v_cache")]
        return cm.decode_attention(*f64), "gpu", attention_scale(*f64)

    def call():
        return ga.decode_attention(
            m["q"], m["k_cache"], m["v_cache"], out=m["out"], **kw
        )

    out = None if plan.touches_out else dev["out"]
    _run(f"attention v{version}", plan, call, truth, m, out)


# --- precompute -----------------------------------------------------------------------


@st.composite
def precompute_calls(draw):
    from gpu import precompute as gp

    version = draw(st.sampled_from([None, 1, 2, 3]))
    dtype = draw(st.sampled_from([F32, F16]))
    g = draw(st.sampled_from([1, 2]))
    h = g * draw(st.sampled_from([1, 3]))
    vec = 16 // np.dtype(dtype).itemsize
    if version in (2, 3):
        d = vec * draw(st.sampled_from([2, 3]))
        rot = draw(st.sampled_from(sorted({0, 2 * vec, d - d % (2 * vec)})))
    else:
        d = draw(st.sampled_from([2, 6, 7, 24]))
        rot = draw(st.sampled_from(sorted({0, d - d % 2})))
    v = draw(st.sampled_from([1, 5, 37]))
    n = draw(st.integers(1, 60))
    p = draw(st.sampled_from([1, 17, 300]))
    cfg = cm.DecoderConfig(V=v, C=h * d, H=h, G=g, D=d, F=1, L=1,
                           parallel=draw(st.booleans()), rot_dim=rot)  # fmt: skip
    rng = np.random.default_rng(draw(seeds))
    lay = gp.layout_of(cfg)
    cos, sin = pc.rope_table(p, lay["rot_dim"], cfg.rope_base)
    arrays = {
        "table": rng.standard_normal((v, pc.row_width(cfg))).astype(dtype),
        "tokens": rng.integers(0, v, n).astype(np.int32),
        "positions": rng.integers(0, p, n).astype(np.int32),
        "cos": cos, "sin": sin,
    }  # fmt: skip
    scalars = {
        "version": ((0, 4, 1.5), ("version",)),
        "bad_id": (("tokens", "positions"), ("tokens", "positions")),
    }
    args = [Arg("table", "VW"), Arg("tokens", "N"), Arg("positions", "N"),
            Arg("cos", "PR"), Arg("sin", "PR"), Arg("out", "NW", True)]  # fmt: skip
    return version, cfg, lay, arrays, draw(plans(args, scalars))


def _bad_id(dev: dict, key: str, hi: int) -> None:
    """One id of dev[key] past the end (odd size) or negative (even size)."""
    ids = dev[key].copy()
    ids[-1] = hi if ids.size % 2 else -1
    dev[key] = ids


@given(case=precompute_calls())
def test_fuzz_precompute_gather_rope(case):
    from gpu import precompute as gp
    from gpu import runtime as rt

    version, cfg, lay, arrays, plan = case
    table = arrays["table"]
    dev = _dev(arrays)
    which = plan.scalars.get("bad_id")
    if which:
        hi = table.shape[0] if which == "tokens" else arrays["cos"].shape[0]
        _bad_id(dev, which, hi)
    dev["out"] = rt.poisoned((arrays["tokens"].size, table.shape[1]), table.dtype)
    m = _apply(plan, dev)
    kw = dict(lay, version=plan.scalars.get("version", version))

    def truth(a):
        t64 = np.asarray(a["table"], F64)
        want = pc.gather_rope(t64, a["tokens"], a["positions"], cfg)
        if a["positions"].size and (a["positions"].max() >= arrays["cos"].shape[0]
                                    or a["positions"].min() < 0):  # fmt: skip
            raise ValueError("positions outside the RoPE table")
        scale = float(np.abs(t64[np.asarray(a["tokens"])]).max(initial=0.0))
        return want, "gpu", scale

    def call():
        return gp.gather_rope(m["table"], m["tokens"], m["positions"], m["cos"],
                              m["sin"], out=m["out"], **kw)  # fmt: skip

    out = None if plan.touches_out else dev["out"]
    _run(f"precompute v{version}", plan, call, truth, m, out)


# --- slim attention -------------------------------------------------------------------

FAST_HD = [(8, 128), (16, 64), (16, 128), (32, 64)]


@st.composite
def slim_calls(draw, xcache: bool):
    from gpu import slim_attention as gs

    versions = gs.XVERSIONS if xcache else gs.VERSIONS
    version = draw(st.sampled_from(list(versions)))
    if version == 1:
        dtype = draw(st.sampled_from([F32, F16]))
        h, d = draw(st.sampled_from([1, 2, 5])), draw(st.sampled_from([1, 7, 16, 33]))
    else:
        dtype = F16
        h, d = draw(st.sampled_from(FAST_HD))
    c = h * d
    s_alloc = draw(st.one_of(st.integers(1, 40), st.integers(41, 400)))
    length = draw(st.one_of(st.none(), st.integers(1, s_alloc)))
    s = s_alloc if length is None else length
    n_split = None
    if version != 1:
        n_split = draw(st.one_of(st.none(), st.integers(1, min(s, 64))))
    b = draw(st.integers(1, 2))
    rng = np.random.default_rng(draw(seeds))
    cname = "x_cache" if xcache else "k_cache"
    arrays = {
        "q": rng.standard_normal((b, h, d)).astype(dtype),
        cname: (rng.standard_normal((b, s_alloc, c)) / (c**0.25 if xcache else 1)
                ).astype(dtype),
        "w": (rng.standard_normal((c, c)) / math.sqrt(c)).astype(dtype),
        "b_v": rng.standard_normal(c).astype(dtype),
    }  # fmt: skip
    if xcache:
        arrays["w_k"] = (rng.standard_normal((c, c)) / math.sqrt(c)).astype(dtype)
    scalars = {
        "version": VERSION_BAD,
        "length": ((0, -1, s_alloc + 1), ("length",)),
    }
    if version != 1:
        scalars["n_split"] = ((0, s + 1, 600), ("n_split",))
    args = [Arg("q", "BHD"), Arg(cname, "BSC"), Arg("w", "CC"), Arg("b_v", "C"),
            Arg("out", "BHD", True)]  # fmt: skip
    return version, length, n_split, arrays, draw(plans(args, scalars))


def _slim_fuzz(case, xcache: bool):
    from gpu import runtime as rt
    from gpu import slim_attention as gs

    version, length, n_split, arrays, plan = case
    q = arrays["q"]
    cname = "x_cache" if xcache else "k_cache"
    dev = _dev(arrays)
    dev["out"] = rt.poisoned(q.shape, q.dtype)
    w_kt = gs.xcache_wkt(dev.pop("w_k"), q.shape[1]) if xcache else None
    m = _apply(plan, dev)
    kw = dict(version=version, length=length, n_split=n_split) | plan.scalars

    def truth(a):
        q64, x64 = np.asarray(a["q"], F64), np.asarray(a[cname], F64)
        n = x64.shape[1] if kw["length"] is None else kw["length"]
        if not 1 <= n <= x64.shape[1]:
            raise ValueError(f"length {n} outside [1, {x64.shape[1]}]")
        x64 = x64[:, :n]
        w64, b64 = np.asarray(a["w"], F64), np.asarray(a["b_v"], F64)
        fast = kw["version"] != 1
        if xcache:
            wk = arrays["w_k"].astype(F64)
            want = sa.xcache_decode(q64, x64, wk, w64, b64)
            scale = slim_kernel_scale(q64, x64, w64, wk, fp16_p=fast, fp16_qt=fast)
        else:
            want = sa.slim_decode(q64, x64, w64, b64, order="accumulate_k")
            scale = slim_kernel_scale(q64, x64, w64, fp16_p=fast)
        return want, "gpu", scale

    if xcache:

        def call():
            return gs.xcache_decode(m["q"], m[cname], w_kt, m["w"], m["b_v"],
                                    out=m["out"], **kw)  # fmt: skip
    else:

        def call():
            return gs.slim_decode(m["q"], m[cname], m["w"], m["b_v"], out=m["out"],
                                  **kw)  # fmt: skip

    out = None if plan.touches_out else dev["out"]
    _run(f"{'x' if xcache else ''}slim v{version}", plan, call, truth, m, out)


@given(case=slim_calls(xcache=False))
def test_fuzz_slim_decode(case):
    _slim_fuzz(case, xcache=False)


@given(case=slim_calls(xcache=True))
def test_fuzz_xcache_decode(case):
    _slim_fuzz(case, xcache=True)


# --- Deja Vu --------------------------------------------------------------------------


@st.composite
def deja_vu_calls(draw):
    version, mode = draw(st.sampled_from([
        (1, "deterministic"), (2, "atomic"), (2, "deterministic"), (3, "atomic"),
        (3, "deterministic"), (4, "atomic"), (5, "deterministic"),
        (6, "deterministic"), (7, "deterministic")]))  # fmt: skip
    dtype = draw(st.sampled_from([F32, F16]))
    vec = 16 // np.dtype(dtype).itemsize
    c = draw(st.sampled_from([1, 5, 33])) if version == 1 else vec * draw(
        st.sampled_from([1, 3, 17]))  # fmt: skip
    f = draw(st.sampled_from([1, 9, 40, 257]))
    b = draw(st.sampled_from([1, 2] if version >= 5 else [1, 2, 5]))  # v5, v6: B <= 4
    rng = np.random.default_rng(draw(seeds))
    k = draw(st.integers(0, f))
    w = dv.random_mlp(rng, c, f, 0.5)
    arrays = {
        "x": rng.standard_normal((b, c)).astype(dtype),
        "w1": w.w1.astype(dtype), "b1": w.b1.astype(dtype),
        "w2": w.w2.astype(dtype), "b2": w.b2.astype(dtype),
        "idx": rng.permutation(f)[:k].astype(np.int32),
    }  # fmt: skip
    bad_modes = ("fast", "atomic") if version in (1, 5, 6, 7) else ("fast", "exact")
    scalars = {"version": VERSION_BAD, "mode": (bad_modes, ("mode",))}
    if k:
        scalars["bad_idx"] = (("past", "negative", "duplicate"), ("idx",))
    args = [Arg("x", "BC"), Arg("w1", "FC"), Arg("b1", "F"), Arg("w2", "FC"),
            Arg("b2", "C"), Arg("out", "BC", True)]  # fmt: skip
    return version, mode, arrays, draw(plans(args, scalars))


@given(case=deja_vu_calls())
def test_fuzz_deja_vu_sparse_mlp(case):
    from gpu import deja_vu as gdv
    from gpu import runtime as rt

    version, mode, arrays, plan = case
    x, f = arrays["x"], arrays["w1"].shape[0]
    dev = _dev(arrays)
    bad = plan.scalars.get("bad_idx")
    if bad is not None:
        idx = dev["idx"].copy()
        if bad == "duplicate" and idx.size > 1:
            idx[-1] = idx[0]
        else:
            idx[-1] = f if bad == "past" or idx.size < 2 else -1
        dev["idx"] = idx
    dev["out"] = rt.poisoned(x.shape, x.dtype)
    m = _apply(plan, dev)
    kw = dict(version=version, mode=mode) | {
        k: v for k, v in plan.scalars.items() if k in ("version", "mode")
    }

    def truth(a):
        w64 = dv.SparseMLPWeights(*(np.asarray(a[k], F64)
                                    for k in ("w1", "b1", "w2", "b2")))  # fmt: skip
        x64 = np.asarray(a["x"], F64)
        idx = dv.check_indices(a["idx"], w64.w1.shape[0])  # refuses bad ids
        scale = sparse_mlp_scale(x64, w64.w1, w64.b1, w64.w2, w64.b2, idx=idx)
        return dv.sparse_mlp(x64, w64, idx), "gpu", scale

    def call():
        return gdv.sparse_mlp(m["x"], m["w1"], m["b1"], m["w2"], m["b2"], m["idx"],
                              out=m["out"], **kw)  # fmt: skip

    out = None if plan.touches_out else dev["out"]
    _run(f"deja_vu v{version} {mode}", plan, call, truth, m, out)


# --- approximating two-layer FFNs -----------------------------------------------------


@st.composite
def experts_calls(draw):
    version = draw(st.sampled_from(list(range(1, 11))))
    dtype = F16 if version >= 3 else draw(st.sampled_from([F32, F16]))
    vec = 8 if version >= 3 else 1
    t = draw(st.sampled_from([1, 3, 65]))
    c, g = (vec * draw(st.sampled_from([1, 3, 5])) for _ in range(2))
    e = draw(st.sampled_from([1, 3, 8]))
    k = min(e, draw(st.sampled_from([1, 2])))
    rng = np.random.default_rng(draw(seeds))
    w = fa.init_sigma_moe(rng, c, e, g, dtype=dtype)
    arrays = {
        "x": rng.standard_normal((t, c)).astype(dtype), "w1": w.w1, "w2": w.w2,
        "idx": rng.integers(0, e, (t, k)).astype(np.int32),
        "gate": rng.random((t, k)).astype(F32),
    }  # fmt: skip
    scalars = {"version": VERSION_BAD, "bad_idx": (("past", "negative"), ("idx",))}
    args = [Arg("x", "TC"), Arg("w1", "ECG"), Arg("w2", "EGC"), Arg("idx", "TK"),
            Arg("gate", "TK"), Arg("out", "TC", True)]  # fmt: skip
    return version, arrays, draw(plans(args, scalars))


@given(case=experts_calls())
def test_fuzz_ffn_experts(case):
    from gpu import ffn_approx as gfa
    from gpu import runtime as rt

    version, arrays, plan = case
    x, e = arrays["x"], arrays["w1"].shape[0]
    dev = _dev(arrays)
    bad = plan.scalars.get("bad_idx")
    if bad is not None:
        idx = dev["idx"].copy()
        idx[-1, -1] = e if bad == "past" else -1
        dev["idx"] = idx
    dev["out"] = rt.poisoned(x.shape, x.dtype)
    m = _apply(plan, dev)
    kw = {"version": plan.scalars.get("version", version)}

    def truth(a):
        w1, w2 = np.asarray(a["w1"], F64), np.asarray(a["w2"], F64)
        idx, x64 = np.asarray(a["idx"]), np.asarray(a["x"], F64)
        if idx.size and (idx.min() < 0 or idx.max() >= w1.shape[0]):
            raise ValueError("idx outside [0, E)")  # moe_loop would skip -1
        g64 = np.asarray(a["gate"], F64)
        w64 = fa.MoEWeights(w1, w2, np.zeros((x64.shape[1], w1.shape[0])))
        half = np.asarray(a["x"]).dtype == F16
        sc = moe_scale(x64, w1, w2, idx, g64, h16=half, z16=half)
        return fa.moe_loop(x64, w64, idx, g64), "gpu", sc

    def call():
        return gfa.experts(m["x"], m["w1"], m["w2"], m["idx"], m["gate"],
                           out=m["out"], **kw)  # fmt: skip

    out = None if plan.touches_out else dev["out"]
    _run(f"ffn experts v{version}", plan, call, truth, m, out)


@st.composite
def route_calls(draw):
    version = draw(st.sampled_from([1, 2, 3, 4, 5]))
    t = draw(st.sampled_from([1, 5, 17]))
    if version >= 3:  # tensor cores: float16, C and E multiples of 8
        dtype = F16
        c, e = draw(st.sampled_from([8, 136])), draw(st.sampled_from([8, 256]))
    else:
        dtype = draw(st.sampled_from([F32, F16]))
        c, e = (
            draw(st.sampled_from([1, 8, 129])),
            draw(st.sampled_from([1, 4, 17, 256])),
        )
    k = min(e, draw(st.sampled_from([1, 2, 4])))
    rng = np.random.default_rng(draw(seeds))
    arrays = {
        "x": rng.standard_normal((t, c)).astype(dtype),
        "w3": (rng.standard_normal((c, e)) / math.sqrt(c)).astype(dtype),
    }
    scalars = {"version": VERSION_BAD, "k": ((0, e + 1), ("k",))}
    args = [Arg("x", "TC"), Arg("w3", "CE")]
    return version, k, arrays, draw(plans(args, scalars))


@given(case=route_calls())
def test_fuzz_ffn_route(case):
    import cupy as cp

    from gpu import ffn_approx as gfa
    from gpu import runtime as rt

    version, k, arrays, plan = case
    x = arrays["x"]
    t = x.shape[0]
    m = _apply(plan, _dev(arrays))
    kk = plan.scalars.get("k", k)
    ver = plan.scalars.get("version", version)
    idx_out = cp.full((t, max(int(kk), 1)), -1, cp.int32)
    gate_out = rt.poisoned((t, max(int(kk), 1)), F32)

    def truth(a):
        x64, w64 = np.asarray(a["x"], F64), np.asarray(a["w3"], F64)
        e, c = w64.shape[1], x64.shape[1]
        if x64.shape != (t, w64.shape[0]) or not 1 <= kk <= e:
            raise ValueError("shapes or k the reference refuses")

        def check(res):
            idx, gate = (cp.asnumpy(r) for r in res)
            logit = x64 @ w64
            err = 6 * math.sqrt(c) * 2**-24 * (np.abs(x64) @ np.abs(w64)) + 1e-30
            for r in range(t):  # a top-K of the logits up to their own rounding
                sel = idx[r]
                assert np.unique(sel).size == kk and 0 <= sel.min() <= sel.max() < e
                rest = np.setdiff1d(np.arange(e), sel)
                if rest.size:
                    lo = (logit[r, sel] + err[r, sel]).min()
                    assert lo >= (logit[r, rest] - err[r, rest]).max(), r
            s = 1 / (1 + np.exp(-np.take_along_axis(logit, idx.astype(np.int64), 1)))
            sc = float(math.sqrt(c) * (np.abs(x64) @ np.abs(w64)).max() / 4 + 2)
            assert_close(gate, s, "gpu", F32, sc)

        return check

    def call():
        return gfa.route(m["x"], m["w3"], kk, idx=idx_out, gate=gate_out, version=ver)

    _run(f"ffn route v{version}", plan, call, truth, m, gate_out)


# --- StagFormer -----------------------------------------------------------------------


@st.composite
def gemv_calls(draw):
    from gpu import stagformer as gst

    version = draw(st.sampled_from([1, 2, 3]))
    dtype = draw(st.sampled_from([F32, F16]))
    n = draw(st.sampled_from([1, 2, 5]))
    k = draw(st.sampled_from([1, 7, 33, 600]))
    m = draw(st.sampled_from([1, 3, 33])) * gst.vec(dtype)
    act = draw(st.sampled_from([0, 1]))
    rng = np.random.default_rng(draw(seeds))
    arrays = {
        "xs[0]": rng.standard_normal((n, k)).astype(F32),
        "ws[0]": (rng.standard_normal((k, m)) / math.sqrt(k)).astype(dtype),
    }
    scalars = {"version": VERSION_BAD, "act": ((2, -1), ("act",))}
    args = [Arg("xs[0]", "NK"), Arg("ws[0]", "KM"), Arg("ys[0]", "NM", True)]
    return version, act, arrays, draw(plans(args, scalars))


@given(case=gemv_calls())
def test_fuzz_stagformer_gemv(case):
    import cupy as cp

    from gpu import stagformer as gst

    version, act, arrays, plan = case
    x, w = arrays["xs[0]"], arrays["ws[0]"]
    n, (k, mm) = x.shape[0], w.shape
    dev = _dev(arrays)
    dev["ys[0]"] = cp.full((n, mm), np.nan, F32)
    m = _apply(plan, dev)
    kw = dict(version=version, act=act) | plan.scalars
    # scratch for the drawn shapes; a shape mutation may make it too small (refused)
    scratch = gst.new_scratch(*gst.gemv_workspace(n, k, mm, w.dtype, 1))

    def truth(a):
        x64, w64 = np.asarray(a["xs[0]"], F64), np.asarray(a["ws[0]"], F64)
        want = x64 @ w64
        want = np.maximum(want, 0) if kw["act"] else want
        return want, "gpu", linear_scale(x64, w64)

    def call():
        ys = gst.gemv([m["xs[0]"]], [m["ws[0]"]], [m["ys[0]"]], scratch=scratch, **kw)
        return ys[0]

    out = None if plan.touches_out else dev["ys[0]"]
    _run(f"stagformer gemv v{version}", plan, call, truth, m, out)


@st.composite
def rmsnorm_calls(draw):
    dtype = draw(st.sampled_from([F32, F16]))
    z, n = draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 3]))
    c = draw(st.sampled_from([1, 24, 300]))
    rng = np.random.default_rng(draw(seeds))
    arrays = {"x": (10 * rng.standard_normal((z, n, c))).astype(F32)}
    for i in range(z):
        arrays[f"gammas[{i}]"] = (1 + 0.1 * rng.standard_normal(c)).astype(dtype)
    args = [Arg("x", "ZNC"), Arg("y", "ZNC", True), Arg("gammas[0]", "C")]
    return arrays, draw(plans(args, {}))


@given(case=rmsnorm_calls())
def test_fuzz_stagformer_rmsnorm(case):
    import cupy as cp

    from gpu import stagformer as gst

    arrays, plan = case
    z = arrays["x"].shape[0]
    dev = _dev(arrays)
    dev["y"] = cp.full(arrays["x"].shape, np.nan, F32)
    m = _apply(plan, dev)
    gammas = [m[f"gammas[{i}]"] for i in range(z)]

    def truth(a):
        x64 = np.asarray(a["x"], F64)
        gs = [np.asarray(a[f"gammas[{i}]"], F64) for i in range(z)]
        if x64.shape[0] != z or any(g.shape != x64.shape[2:] for g in gs):
            raise ValueError("shapes the reference refuses")
        want = np.stack([cm.rms_norm(x64[i], gs[i]) for i in range(z)])
        return want, "gpu", float(np.sqrt(x64.shape[2]) * np.abs(want).max(initial=1))

    def call():
        return gst.rmsnorm(m["x"], gammas, m["y"])

    out = None if plan.touches_out else dev["y"]
    _run("stagformer rmsnorm", plan, call, truth, m, out)
