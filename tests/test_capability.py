"""Which versions run on which cards (gpu/capability.py, gpu/capability.json) and the
fallback of the launchers (gpu.runtime.pick_version), on the CPU.

The table must say what NVRTC compiles for each architecture: it is recompiled here.
The fallback is checked with the device's compute capability mocked.
"""

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from gpu import attention as att
from gpu import capability as cap
from gpu import precompute as pc
from gpu import runtime as rt
from gpu import slim_attention as sa
from gpu import stagformer as gs

REPO = Path(__file__).resolve().parents[1]


def _nvrtc():
    try:
        from gpu.check_kernels import nvrtc_version

        return nvrtc_version()
    except Exception as e:  # no cuda.bindings, or no libnvrtc
        pytest.skip(f"NVRTC unavailable ({type(e).__name__}: {e})")


# --- the table against NVRTC --------------------------------------------------------


def test_table_is_what_nvrtc_compiles_for_each_arch():
    nvrtc = _nvrtc()
    table = cap.load()
    found = cap.derive()
    if table["nvrtc"] != nvrtc:
        pytest.skip(f"table from NVRTC {table['nvrtc']}, this is NVRTC {nvrtc}")
    diff = [
        f"{k}: table {table[k]} != NVRTC {found[k]}"
        for k in ("archs", "files")
        if table[k] != found[k]
    ]
    for fam in sorted(table["versions"].keys() | found["versions"].keys()):
        t, f = table["versions"].get(fam), found["versions"].get(fam)
        if t != f:
            diff.append(f"{fam}: table {t} != NVRTC {f}")
    assert not diff, "rerun python -m gpu.capability --write:\n" + "\n".join(diff)


GUARDED = r"""
extern "C" __global__ void g_v1_f32(float* o) { o[0] = 1.0f; }
#if __CUDA_ARCH__ >= 800
extern "C" __global__ void g_v2_f32(float* o) {
  asm volatile("cp.async.commit_group;\n" ::);
  o[0] = 2.0f;
}
#endif
#if __CUDA_ARCH__ >= 900
extern "C" __global__ void __cluster_dims__(2, 1, 1) g_v3_f32(float* o) {
  o[0] = 3.0f;
}
#endif
"""


def test_derivation_sees_guards_and_unguarded_features(tmp_path):
    _nvrtc()
    guarded = tmp_path / "guarded.cu"
    guarded.write_text(GUARDED)
    plain = tmp_path / "plain.cu"  # the same kernels without the guards
    plain.write_text(GUARDED.replace("#if", "// #if").replace("#endif", "// #endif"))
    fams = {"g": ("guarded", r"g_v(\d+)_"), "p": ("plain", r"g_v(\d+)_")}
    archs = ("sm_75", "sm_80", "sm_90")
    t = cap.derive([guarded, plain], archs, fams)
    assert t["files"] == {"guarded": 75, "plain": 90}, t
    assert t["versions"]["g"] == {"1": 75, "2": 80, "3": 90}, t
    assert t["versions"]["p"] == {"1": 90, "2": 90, "3": 90}, t


def test_launcher_versions_are_in_the_table_and_fall_back_within_their_ladder():
    from gpu import deja_vu as dv
    from gpu import ffn_approx as fa

    ladders = [
        ("attention", att.VERSIONS, att.FALLBACK),
        ("precompute", pc.VERSIONS, pc.FALLBACK),
        ("slim_attention", sa.VERSIONS, sa.FALLBACK),
        ("slim_attention_x", sa.XVERSIONS, sa.XFALLBACK),
        ("stagformer", gs.VERSIONS, gs.FALLBACK),
        ("deja_vu", dv.VERSIONS, None),
        ("ffn_approx", fa.VERSIONS, None),
    ]
    for fam, versions, fallback in ladders:
        for v in versions:
            cap.min_cc(fam, v)  # KeyError when missing
        if fallback is not None:
            assert sorted(fallback) == sorted(versions), fam
    cap.min_cc("attention", 9)
    with pytest.raises(KeyError, match="rerun"):
        cap.min_cc("attention", 99)


def test_the_gate_holds_each_arch_to_the_table():
    v1_7 = [f"attention_decode_v{v}_f16" for v in (1, 2, 3, 4, 5, 6, 7, 9)]
    assert cap.expected_kernels("attention", "sm_75", v1_7) == []
    missing = cap.expected_kernels("attention", "sm_80", v1_7)
    assert len(missing) == 1 and "attention v8" in missing[0], missing
    assert not cap.expected_kernels(
        "attention", "sm_80", v1_7 + ["attention_decode_v8_f16"]
    )
    slim = ["slim_attention_attend_v1_f16", "slim_attention_attend_xv1_f16"]
    assert cap.expected_kernels("slim_attention", "sm_80", slim) == []
    extra = cap.expected_kernels(
        "slim_attention", "sm_80", slim + ["slim_attention_attend_v2_m1n2"]
    )
    assert len(extra) == 1 and "needs 90" in extra[0], extra
    failed = cap.expected_kernels("slim_attention", "sm_80", None)
    assert failed and "did not compile" in failed[0], failed


def test_gate_skips_a_file_below_its_minimum_and_builds_several_archs():
    need = cap.file_min_cc("deja_vu")
    if need is None or need <= 80:
        pytest.skip(f"deja_vu.cu compiles for sm_80 now (minimum {need})")
    cmd = [sys.executable, "-m", "gpu.check_kernels", "--arch", "sm_80"]
    cmd += ["--arch", "sm_89", "gpu/deja_vu.cu"]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    for arch in ("sm_80", "sm_89"):
        assert f"arch {arch}" in run.stdout, run.stdout
    assert run.stdout.count(f"skip gpu/deja_vu.cu: needs sm_{need}") == 2, run.stdout


# --- the fallback, with the device mocked -------------------------------------------


@pytest.fixture
def card(monkeypatch):
    """card(cc, name): pretend the current device is that card."""

    def set_card(cc: int, name: str):
        monkeypatch.setattr(rt, "available", lambda: True)
        monkeypatch.setattr(rt, "compute_capability", lambda: cc)
        monkeypatch.setattr(rt, "device_name", lambda: name)
        monkeypatch.setattr(rt, "sm_count", lambda: 108)
        monkeypatch.setattr(rt, "_NOTICED", set())

    return set_card


def _quiet(fn, *args, **kw):
    """fn(*args) with a CapabilityFallback warning turned into an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", rt.CapabilityFallback)
        return fn(*args, **kw)


def test_no_device_means_no_check():
    assert not rt.available(), "this test is for machines without a GPU"
    assert _quiet(att.runnable_version, 8) == 8
    assert _quiet(sa.runnable_version, 6) == 6


def test_a_card_that_runs_the_version_gets_it_silently(card):
    card(90, "NVIDIA H200")
    assert _quiet(att.runnable_version, 8) == 8
    assert _quiet(sa.runnable_version, 6) == 6
    assert _quiet(sa.runnable_version, 5, xcache=True) == 5
    card(80, "NVIDIA A100-SXM4-80GB")
    assert _quiet(att.runnable_version, 8) == 8
    assert _quiet(gs.runnable_version, 3) == 3
    assert _quiet(pc.runnable_version, 3) == 3


def test_an_older_card_falls_back_with_one_notice(card):
    card(75, "Tesla T4")
    match = r"attention v8 needs compute capability 8\.0 \(sm_80\); Tesla T4 is 7\.5"
    with pytest.warns(rt.CapabilityFallback, match=match + r".*running v7 instead"):
        assert att.runnable_version(8) == 7
    assert _quiet(att.runnable_version, 8) == 7  # once per launcher and version
    card(80, "NVIDIA A100-SXM4-80GB")
    with pytest.warns(rt.CapabilityFallback, match=r"slim_attention v6 .*9\.0.*v1"):
        assert sa.runnable_version(6) == 1
    with pytest.warns(rt.CapabilityFallback, match=r"slim_attention_x v4 .*running v1"):
        assert sa.runnable_version(4, xcache=True) == 1
    with pytest.warns(rt.CapabilityFallback, match="slim_attention v3"):
        assert sa.runnable_version(3) == 1  # another version: its own notice
    assert _quiet(sa.runnable_version, 6) == 1


def test_workspaces_are_sized_for_the_version_that_runs(card):
    shape = dict(b=1, h=32, s=8192, d=128)
    card(90, "NVIDIA H200")  # runs every version: each its own size
    s6, s1 = (_quiet(sa.workspace_elems, v, **shape) for v in (6, 1))
    a8, a7 = (_quiet(att.workspace_elems, v, **shape) for v in (8, 7))
    assert s6 != s1 and a8 != a7  # else this test could not fail
    card(80, "NVIDIA A100-SXM4-80GB")
    with pytest.warns(rt.CapabilityFallback):
        assert sa.workspace_elems(6, **shape) == s1
    card(75, "Tesla T4")
    with pytest.warns(rt.CapabilityFallback):
        assert att.workspace_elems(8, **shape) == a7


def test_a_card_below_every_version_is_refused_by_name(card):
    card(70, "Tesla V100-SXM2-16GB")
    for fn in (att.runnable_version, pc.runnable_version, gs.runnable_version):
        with pytest.raises(RuntimeError, match=r"Tesla V100-SXM2-16GB, .*7\.0.*7\.5"):
            fn(1)
    card(89, "NVIDIA GeForce RTX 4090")
    with pytest.raises(RuntimeError, match=r"RTX 4090, .*8\.9.*deja_vu.*9\.0"):
        rt.pick_version("deja_vu", 3, (4, 3, 2, 1))
    with pytest.raises(RuntimeError, match=r"gpu/deja_vu.cu .*RTX 4090.*9\.0"):
        rt.module("deja_vu")  # before CuPy is imported


def test_fallback_follows_the_launchers_order(monkeypatch, card):
    # a table in which stagformer's v3 needs sm_90 and v2 sm_89: an sm_80 card
    # gets v1, an sm_89 card v2 (the first of FALLBACK it can run)
    fake = {
        "versions": {
            "stagformer": {"1": 75, "2": 89} | {str(v): 90 for v in gs.VERSIONS[2:]}
        },
        "files": {},
    }
    monkeypatch.setattr(cap, "load", lambda path=None: fake)
    card(80, "NVIDIA A100-SXM4-80GB")
    with pytest.warns(rt.CapabilityFallback, match="stagformer v3.*running v1"):
        assert gs.runnable_version(3) == 1
    card(89, "NVIDIA L4")
    with pytest.warns(rt.CapabilityFallback, match="stagformer v3.*running v2"):
        assert gs.runnable_version(3) == 2
    with pytest.raises(ValueError, match="version must be one of"):
        gs.runnable_version(max(gs.VERSIONS) + 1)
