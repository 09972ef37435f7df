"""The compile gate (gpu/check_kernels.py), on the CPU: NVRTC from the pip wheels.

Every ``gpu/*.cu`` must compile for sm_90 without spilling, and planted bad kernels
prove that the gate bites (STYLE.md R8, R15).
"""

import subprocess
import sys
from pathlib import Path

import pytest

from gpu.check_kernels import CompileError, compile_report, nvrtc_version

try:
    NVRTC = nvrtc_version()
except Exception as e:  # no cuda.bindings (ImportError) or no libnvrtc (not found)
    pytest.skip(f"NVRTC unavailable ({type(e).__name__}: {e})", allow_module_level=True)

REPO = Path(__file__).resolve().parents[1]
CU_FILES = sorted((REPO / "gpu").glob("*.cu"))
ARCH = "sm_90"

BAD = 'extern "C" __global__ void bad_v1(float* o) { o[0] = undefined_var; }\n'
# 2 blocks of 1024 threads per SM caps it at 32 registers; 64 accumulators stay live.
SPILLER = r"""
extern "C" __global__ void __launch_bounds__(1024, 2)
spill_demo_v1(float* out, const float* in, int n) {
  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = in[threadIdx.x + i * n];
  for (int k = 0; k < n; ++k) {
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[i] = acc[i] * acc[(i + 1) & 63] + in[k + i];
  }
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 64; ++i) s += acc[i];
  out[threadIdx.x] = s;
}
"""
HALF = r"""
#include <cuda_fp16.h>
#include <cuda_bf16.h>
extern "C" __global__ void halves_v1(const __half* x, __nv_bfloat16* y, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = __float2bfloat16(__half2float(x[i]) * 2.0f);
}
"""
TEMPLATE = r"""
template <int D, typename T>
__global__ void scale_v1(T* x) { x[threadIdx.x] *= T(D); }
"""
NAMES = "// check_kernels: name_expressions=scale_v1<4, float>,scale_v1<8, double>\n"


def _write(tmp_path, text, name="k.cu"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _cli(*args):
    cmd = [sys.executable, "-m", "gpu.check_kernels", "--arch", ARCH, *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("path", CU_FILES or [None], ids=lambda p: p and p.name)
def test_repo_kernels_compile_without_spills(path):
    if path is None:
        pytest.skip("no gpu/*.cu yet")
    reports = compile_report(path, ARCH)
    text = "\n".join(r.line() for r in reports)
    assert reports, f"{path.name}: no kernel (a template needs name_expressions)"
    spilling = [r for r in reports if r.spill_stores or r.spill_loads]
    assert not spilling, f"NVRTC {NVRTC}, {ARCH}: kernels spill\n{text}"


def test_gate_rejects_a_compile_error(tmp_path):
    path = _write(tmp_path, BAD)
    with pytest.raises(CompileError, match="undefined_var"):
        compile_report(path, ARCH)
    run = _cli(path)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "FAIL" in run.stdout and "undefined_var" in run.stdout


def test_gate_reports_spills_and_fails_on_them_when_asked(tmp_path):
    path = _write(tmp_path, SPILLER)
    (r,) = compile_report(path, ARCH)
    assert r.name == "spill_demo_v1"
    assert r.spill_stores > 0 and r.spill_loads > 0, r.line()
    assert r.registers <= 32, r.line()
    run = _cli(path)
    assert run.returncode == 0 and "SPILLS" in run.stdout, run.stdout + run.stderr
    run = _cli("--fail-on-spill", path)
    assert run.returncode != 0, run.stdout + run.stderr


def test_fp16_and_bf16_headers_compile(tmp_path):
    (r,) = compile_report(_write(tmp_path, HALF), ARCH)
    assert r.name == "halves_v1" and r.registers > 0, r.line()
    assert r.spill_stores == r.spill_loads == 0, r.line()


def test_template_is_reported_under_its_name_expression(tmp_path):
    reports = compile_report(_write(tmp_path, NAMES + TEMPLATE), ARCH)
    names = sorted(r.name for r in reports)
    assert names == ["scale_v1<4, float>", "scale_v1<8, double>"], reports
    assert all(r.registers > 0 for r in reports), reports


def test_gate_rejects_a_file_whose_template_is_never_instantiated(tmp_path):
    path = _write(tmp_path, TEMPLATE)
    assert compile_report(path, ARCH) == []
    run = _cli(path)
    assert run.returncode == 1 and "no kernel" in run.stdout, run.stdout


# --- one source for kernel geometry (STYLE.md R19) ---------------------------------
# Each launcher mirrors some of its .cu's constants (tile sizes, stages, cluster size,
# shared-memory layouts). NVRTC checks every pair: a static_assert per constant,
# compiled with the .cu itself, so a constant changed on one side only fails here.


def _geometry():
    """(cu file, [(C++ expression, Python value)]) for every mirrored constant."""
    from gpu import attention as att
    from gpu import deja_vu as dv
    from gpu import ffn_approx as fa
    from gpu import precompute as pc
    from gpu import slim_attention as sa

    slim = [("CL", sa.CL), ("NK", sa.NK), ("PST", sa.PST), ("NK4", sa.NK4)]
    slim += [("PST4", sa.PST4), ("GT", sa.GT), ("BG", sa.BG)]
    slim += [("NWF * 32", sa.THREADS_FAST)]
    for mt, nt in sa.FAST_SHAPES:
        for st in sorted(set(sa.STAGES.values())):
            expr = f"fast_smem<{mt}, {nt}, {st}>()"
            slim.append((expr, sa.fast_smem_bytes(mt, nt, st)))
    for mt, cs in ((1, 128), (1, 256), (2, 256), (2, 384), (2, 512)):
        for xc in (False, True):
            st = sa.STAGES_V4[xc]
            expr = f"v4_smem<{mt}, {cs}, {str(xc).lower()}, {st}>()"
            slim.append((expr, sa.v4_smem_bytes(mt, cs, xc)))
        slim.append((f"v6_smem<{mt}, {cs}>()", sa.v4_smem_bytes(mt, cs, False, 6)))
        slim.append((f"v7_smem<{mt}, {cs}>()", sa.v4_smem_bytes(mt, cs, False, 7)))
        slim.append((f"32 * (1 + NSC7) + {cs}", sa.threads(7, cs)))
        slim.append((f"32 * (1 + NSC7) + {cs}", sa.threads(8, cs)))
        slim.append((f"32 * (1 + NSC7) + {cs}", sa.threads(9, cs)))
        slim.append((f"32 * (1 + NSC7) + {cs}", sa.threads(10, cs)))
        slim.append((f"v10_smem<{mt}, {cs}>()", sa.v4_smem_bytes(mt, cs, False, 10)))
        slim.append((f"32 * (2 + NSC7) + {cs}", sa.threads(11, cs)))
        slim.append((f"32 * (2 + NSC7) + {cs}", sa.threads(12, cs)))
        slim.append((f"v11_smem<{mt}, {cs}>()", sa.v4_smem_bytes(mt, cs, False, 11)))
    slim += [("GT8", sa.GT8), ("PF9", sa.PF9), ("NP11", sa.NP11)]
    slim += [("NK7", sa.NK7), ("NS7", sa.NS7), ("NX7", sa.NX7), ("NSC7", sa.NSC7)]
    slim += [("PST7", sa.PST7)]
    return {
        "attention.cu": [("ST8", att.ST8), ("NW4 * 32", att.THREADS)],
        "deja_vu.cu": [("RC2", dv.RC2), ("R3", dv.R3)],
        "ffn_approx.cu": [("MAX_E", fa.MAX_E), ("RT", fa.RT)],
        "precompute.cu": [("UNITS", pc.UNITS)],
        "slim_attention.cu": slim,
    }


def _asserts(pairs) -> str:
    return "".join(
        f'static_assert(({e}) == {v}, "{e} != {v} (the Python side)");\n'
        for e, v in pairs
    )


@pytest.mark.parametrize("cu", sorted(_geometry()))
def test_python_and_cuda_geometry_agree(tmp_path, cu):
    src = f'#include "{cu}"\n' + _asserts(_geometry()[cu])
    assert compile_report(_write(tmp_path, src, f"geometry_{cu}"), ARCH)


def test_geometry_check_bites(tmp_path):
    src = '#include "deja_vu.cu"\n' + _asserts([("R3", 7)])
    with pytest.raises(CompileError, match="R3 != 7"):
        compile_report(_write(tmp_path, src), ARCH)


# --- one header of helpers (gpu/common.cuh) ----------------------------------------

_DEF_RE = r"__device__[^;{(]*?\b(\w+)\s*\("


def _helpers(text: str) -> set[str]:
    import re

    names = set(re.findall(_DEF_RE, text))
    names |= set(re.findall(r"^#define (\w+)", text, flags=re.M))
    names |= set(re.findall(r"struct (\w+) \{", text))
    return names


def test_no_kernel_file_redefines_a_common_helper():
    common = _helpers((REPO / "gpu" / "common.cuh").read_text())
    assert {"to_f", "warp_sum", "cp_async16", "mma16816", "last_block_done"} <= common
    for path in CU_FILES:
        again = common & _helpers(path.read_text())
        assert not again, f"{path.name} redefines {sorted(again)} (gpu/common.cuh)"


def test_every_kernel_file_with_helpers_includes_the_header():
    for path in CU_FILES:
        text = path.read_text()
        if path.name != "ceilings.cu":  # plain loads and stores only
            assert '#include "common.cuh"' in text, path.name


def test_header_changes_change_the_compile_options(tmp_path, monkeypatch):
    # CuPy's kernel cache keys on source + options: the header's hash must be in
    # the options, or an edited header would be served from an old binary.
    from gpu import runtime

    monkeypatch.setattr(runtime, "COMMON_HEADER", _write(tmp_path, "// a\n", "h"))
    a = runtime._header_hash()
    runtime.COMMON_HEADER.write_text("// b\n")
    assert a != runtime._header_hash()
    assert any(o.startswith("-DTT_COMMON_CUH_SHA=") for o in runtime.NVRTC_OPTIONS)
