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
