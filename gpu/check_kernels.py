"""Compile gate: every ``gpu/*.cu`` through NVRTC for one arch; no GPU, no toolkit.

Checks what CI can know without a card: each file compiles with the options CuPy uses
on the card, and what ptxas reports per kernel (registers, static shared memory, stack
frame, spill bytes). ``make check-cu`` runs it on every ``gpu/*.cu``::

    python -m gpu.check_kernels --arch sm_80 --arch sm_89 --arch sm_90 [paths...]

Exit 1 on a compile error (the NVRTC log is printed), on a file with no kernel, and with
``--fail-on-spill`` on any spill. For a ``gpu/*.cu`` of the repository the gate also
holds each architecture to ``gpu/capability.json`` (the minimum compute capability of
each file and launcher version, written by ``python -m gpu.capability --write``): a
file the table says does not compile for that architecture is skipped with its
minimum, and a file that compiles must have exactly the versions the table says run
there (a version guarded by ``__CUDA_ARCH__`` that went missing, or a table gone
stale, fails). Options: ``gpu.runtime.NVRTC_OPTIONS`` (what the
launchers give ``cp.RawModule``), what CuPy >= 12 appends to them (``-ftz=true
--device-as-default-execution-space -arch=sm_XX``), ``-Xptxas=-v`` for the report, and
``-I`` for ``cuda_fp16.h``/``cuda_bf16.h``/CCCL, found in the pip wheels (or $CUDA_HOME)
by ``cuda.pathfinder``. Templates only produce code when instantiated: list instances
in a comment anywhere in the file; they become NVRTC name expressions and are reported
under those names (``extern "C"`` kernels need nothing)::

    // check_kernels: name_expressions=attention_decode<64>,attention_decode<128>

``compile_report(path, arch) -> list[KernelReport]`` is the same check for tests and
the book; it raises ``CompileError`` carrying the NVRTC log.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from gpu import capability
from gpu.runtime import COMMON_HEADER, GPU_DIR, NVRTC_OPTIONS, arch_options

# cupy/cuda/compiler.py appends these to the caller's options (NVRTC >= 12).
CUPY_ADDS = ("-ftz=true", "--device-as-default-execution-space")
_NAMES_RE = re.compile(r"//\s*check_kernels:\s*name_expressions\s*=\s*(.+)")
_ENTRY_RE = re.compile(r"Compiling entry function '([^']+)'")
_PROPS_RE = re.compile(r"Function properties for (\S+)")
_FRAME_RE = re.compile(
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"
)
_REGS_RE = re.compile(
    r"Used (\d+) registers(?:, used \d+ barriers)?(?:, (\d+) bytes smem)?"
)


class CompileError(RuntimeError):
    """NVRTC rejected a file; the message is the NVRTC log."""


@dataclass(frozen=True)
class KernelReport:
    file: str
    name: str  # the extern "C" symbol, or a template's name expression
    registers: int = 0
    smem: int = 0  # static shared memory, bytes
    stack: int = 0  # stack frame, bytes (local arrays live there too)
    spill_stores: int = 0
    spill_loads: int = 0

    def line(self) -> str:
        flag = "  <-- SPILLS" if self.spill_stores or self.spill_loads else ""
        return (
            f"ok   {self.file}:{self.name}  regs={self.registers} smem={self.smem}B "
            f"stack={self.stack}B spill_st={self.spill_stores}B "
            f"spill_ld={self.spill_loads}B{flag}"
        )


def nvrtc_version() -> str:
    """'13.0'. Raises if cuda.bindings or the NVRTC library is missing."""
    from cuda.bindings import nvrtc

    res, major, minor = nvrtc.nvrtcVersion()
    if res != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise RuntimeError(f"nvrtcVersion: {res.name}")
    return f"{major}.{minor}"


def include_dirs() -> list[str]:
    """The CUDA runtime and CCCL headers, plus CuPy's own when it is installed."""
    from cuda.pathfinder import find_nvidia_header_directory

    dirs = [find_nvidia_header_directory(lib) for lib in ("cudart", "cccl")]
    cupy = importlib.util.find_spec("cupy")  # found without importing; CuPy adds it
    for p in (cupy and cupy.submodule_search_locations) or []:
        dirs.append(str(Path(p) / "_core" / "include"))
    return [d for d in dirs if d and Path(d).is_dir()]


def name_expressions(source: str) -> list[str]:
    """Names from ``// check_kernels: name_expressions=f<1>,g<2, 3>`` comments."""
    # split at the commas that are not inside <...> (not followed by '>' before '<')
    parts = [re.split(r",(?![^<>]*>)", spec) for spec in _NAMES_RE.findall(source)]
    return [p.strip() for ps in parts for p in ps if p.strip()]


def _parse(log: str, file: str, names: dict[str, str]) -> list[KernelReport]:
    kernels: dict[str, dict] = {}  # symbol -> numbers; device functions are skipped
    entry = props = None
    for line in log.splitlines():
        if m := _ENTRY_RE.search(line):
            entry = m.group(1)
            kernels[entry] = {}
        elif m := _PROPS_RE.search(line):
            props = m.group(1)
        elif (m := _FRAME_RE.search(line)) and props in kernels:
            stack, st, ld = map(int, m.groups())
            kernels[props].update(stack=stack, spill_stores=st, spill_loads=ld)
        elif (m := _REGS_RE.search(line)) and entry:
            kernels[entry].update(registers=int(m[1]), smem=int(m[2] or 0))
    return [KernelReport(file, names.get(k, k), **v) for k, v in kernels.items()]


# compile_report's results for the repository's own files, per process: the tests and
# gpu.capability compile the same file for the same arch more than once. The key holds
# the source and the shared header, so an edited file is compiled again.
_CACHE: dict[tuple, list[KernelReport]] = {}


def compile_report(path, arch: str = "sm_90") -> list[KernelReport]:
    """Compile one .cu file with NVRTC for ``arch``; one KernelReport per kernel."""
    path = Path(path)
    source = path.read_text()
    if path.resolve().parent != GPU_DIR:
        return _compile(path, source, arch)
    key = (path.resolve(), source, COMMON_HEADER.read_text(), NVRTC_OPTIONS, arch)
    if key not in _CACHE:
        _CACHE[key] = _compile(path, source, arch)
    return list(_CACHE[key])


def _compile(path: Path, source: str, arch: str) -> list[KernelReport]:
    from cuda.bindings import nvrtc as nv

    file = _display(path)
    exprs = name_expressions(source)
    # what the launchers give CuPy on such a card (runtime.arch_options: sm_90a on
    # 9.0), then CuPy's own -arch
    extra = arch_options(capability.cc_of(arch))
    opts = [*NVRTC_OPTIONS, *extra, *CUPY_ADDS, f"-arch={arch}", "-Xptxas=-v"]
    opts += [f"-I{d}" for d in include_dirs()]
    _, prog = nv.nvrtcCreateProgram(source.encode(), file.encode(), 0, [], [])
    try:
        for e in exprs:
            nv.nvrtcAddNameExpression(prog, e.encode())
        (res,) = nv.nvrtcCompileProgram(prog, len(opts), [o.encode() for o in opts])
        buf = b" " * nv.nvrtcGetProgramLogSize(prog)[1]
        nv.nvrtcGetProgramLog(prog, buf)
        log = buf.rstrip(b"\0 ").decode(errors="replace")
        if res != nv.nvrtcResult.NVRTC_SUCCESS:
            raise CompileError(f"{file}: {res.name}\n{log}")
        lowered = {
            nv.nvrtcGetLoweredName(prog, e.encode())[1].decode(): e for e in exprs
        }
    finally:
        nv.nvrtcDestroyProgram(prog)
    warnings = [s for s in log.splitlines() if s.strip() and not s.startswith("ptxas")]
    if warnings:  # shown, not fatal
        print("\n".join(warnings), file=sys.stderr)
    return _parse(log, file, lowered)


def _display(path: Path) -> str:
    full, cwd = path.resolve(), Path.cwd()
    return str(full.relative_to(cwd)) if full.is_relative_to(cwd) else str(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("paths", nargs="*", type=Path, help="default: gpu/*.cu")
    ap.add_argument(
        "--arch", action="append", help="repeat for several (default: sm_90)"
    )
    ap.add_argument("--fail-on-spill", action="store_true", help="spills are errors")
    args = ap.parse_args(argv)
    paths = args.paths or sorted(GPU_DIR.glob("*.cu"))
    status = 0
    for arch in args.arch or ["sm_90"]:
        status |= _gate(paths, arch, args.fail_on_spill)
    return status


def _gate(paths, arch: str, fail_on_spill: bool) -> int:
    print(f"NVRTC {nvrtc_version()}, arch {arch}, {len(paths)} file(s)")
    kernels = errors = spills = skipped = 0
    for path in paths:
        ours = Path(path).resolve().parent == GPU_DIR
        need = capability.load()["files"].get(path.stem, 0) if ours else 0
        if need is None or need > capability.cc_of(arch):
            why = f"needs sm_{need} or newer" if need else "compiles for no arch"
            print(f"skip {_display(path)}: {why} ({capability.TABLE_PATH.name})")
            skipped += 1
            continue
        try:
            reports = compile_report(path, arch)
        except (CompileError, OSError) as e:
            print(f"FAIL {e}")
            reports, errors = [], errors + 1
        else:
            if not reports:
                print(f"FAIL {_display(path)}: no kernel (templates: name_expressions)")
                errors += 1
            elif ours:
                names = [r.name for r in reports]
                for problem in capability.expected_kernels(path.stem, arch, names):
                    print(f"FAIL {problem}")
                    errors += 1
        for r in reports:
            print(r.line())
            spills += bool(r.spill_stores or r.spill_loads)
        kernels += len(reports)
    fatal = " (fatal: --fail-on-spill)" if spills and fail_on_spill else ""
    print(
        f"{arch}: {len(paths)} file(s), {skipped} skipped, {kernels} kernel(s), ",
        end="",
    )
    print(f"{errors} error(s), {spills} kernel(s) spilling{fatal}")
    return 1 if errors or fatal else 0


if __name__ == "__main__":
    sys.exit(main())
