"""What every launcher shares: is there a GPU, what is it, load a .cu, check inputs.

Importing this module never needs CuPy or a device: ``available()`` says whether both
are there, and ``why_unavailable()`` says why not. CuPy is imported lazily.
"""

from __future__ import annotations

import datetime as _dt
import functools
import subprocess
import warnings
from pathlib import Path

import numpy as np

GPU_DIR = Path(__file__).resolve().parent
COMMON_HEADER = GPU_DIR / "common.cuh"


def _header_hash() -> str:
    import hashlib

    return hashlib.sha256(COMMON_HEADER.read_bytes()).hexdigest()[:16]


# Options CuPy passes through NVRTC; the compile gate (gpu/check_kernels.py) uses the
# same ones so that what compiles in CI is what runs on the card. Every .cu includes
# gpu/common.cuh through -I; CuPy's kernel cache keys on the source and the options
# only, so the header's hash rides along as a define: a changed header is a new key.
NVRTC_OPTIONS = (
    "-std=c++17",
    f"-I{GPU_DIR}",
    f"-DTT_COMMON_CUH_SHA={_header_hash()}",
)


def arch_options(cc: int) -> tuple[str, ...]:
    """What the launchers add to NVRTC_OPTIONS for a card of compute capability ``cc``:
    on 9.0 (H100, H200) the architecture-specific target sm_90a, whose wgmma and
    setmaxnreg every 9.0 card has (kernels that use them are guarded by
    ``__CUDA_ARCH_FEAT_SM90_ALL``). CuPy appends its own ``-arch=sm_90``; NVRTC
    13.0 keeps sm_90a (checked: the PTX target and the cubin's EF_CUDA_ACCELERATORS
    flag), and the machine code of every kernel that does not use the extras is
    the same instruction for instruction as for sm_90 (cuobjdump -sass, all files,
    2026-12-07)."""
    return ("-arch=sm_90a",) if cc == 90 else ()


@functools.cache
def _probe() -> tuple[bool, str]:
    try:
        import cupy as cp
    except Exception as e:  # ImportError, or a broken CUDA install
        return False, f"cupy not importable ({type(e).__name__}: {e})"
    try:
        n = cp.cuda.runtime.getDeviceCount()
    except Exception as e:
        return False, f"cupy imported but no CUDA device ({type(e).__name__})"
    if n < 1:
        return False, "cupy imported but no CUDA device"
    return True, ""


def available() -> bool:
    """True when CuPy imports and a CUDA device answers."""
    return _probe()[0]


def why_unavailable() -> str:
    """Empty when ``available()``; else one line saying what is missing."""
    return _probe()[1]


@functools.cache
def device_info() -> dict:
    """Card, driver, CUDA and CuPy versions, SM count and L2 size (for provenance)."""
    import cupy as cp

    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    drv = cp.cuda.runtime.driverGetVersion()
    rt = cp.cuda.runtime.runtimeGetVersion()
    try:
        driver = (
            subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            .stdout.split("\n")[0]
            .strip()
        )
    except (OSError, subprocess.SubprocessError):
        driver = ""
    name = props["name"]
    return {
        "card": name.decode() if isinstance(name, bytes) else str(name),
        "compute_capability": f"{props['major']}.{props['minor']}",
        "sm_count": int(props["multiProcessorCount"]),
        "l2_bytes": int(props["l2CacheSize"]),
        "memory_bytes": int(props["totalGlobalMem"]),
        "driver": driver or f"CUDA driver API {drv // 1000}.{drv % 1000 // 10}",
        "cuda_driver_api": f"{drv // 1000}.{drv % 1000 // 10}",
        "cuda_runtime": f"{rt // 1000}.{rt % 1000 // 10}",
        "cupy": cp.__version__,
        "numpy": np.__version__,
    }


@functools.cache
def sm_count() -> int:
    """Streaming multiprocessors of the current device. Cached: launchers size their
    grids with it on every call, and device_info() also runs nvidia-smi."""
    import cupy as cp

    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    return int(props["multiProcessorCount"])


def device_summary() -> str:
    """One line: card, driver, CuPy."""
    if not available():
        return why_unavailable()
    i = device_info()
    sm = i["compute_capability"].replace(".", "")
    return f"{i['card']} (sm_{sm}), driver {i['driver']}, CuPy {i['cupy']}"


def provenance() -> dict:
    """Everything a recorded figure must carry: device_info + commit + UTC date.

    The commit comes from git, or from $TT_COMMIT where the tree was copied without
    its .git folder (as onto a lent GPU machine)."""
    import os

    commit, dirty = os.environ.get("TT_COMMIT", ""), ""
    if not commit:
        try:
            commit = subprocess.run(
                ["git", "rev-parse", "--short=12", "HEAD"],
                capture_output=True,
                text=True,
                cwd=GPU_DIR,
                timeout=10,
            ).stdout.strip()
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                cwd=GPU_DIR,
                timeout=10,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            commit = ""
    info = dict(device_info()) if available() else {}
    info["commit"] = (commit or "unknown") + ("-dirty" if dirty else "")
    info["date"] = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return info


# --- which versions this card runs (the table: gpu/capability.json) ----------------


class CapabilityFallback(UserWarning):
    """A launcher runs another version than asked: this card cannot run that one."""


def compute_capability() -> int:
    """The current device's compute capability as major * 10 + minor (80 for 8.0)."""
    import cupy as cp

    return _cc_of(cp.cuda.Device().id)


@functools.cache
def _cc_of(dev: int) -> int:
    import cupy as cp

    return int(cp.cuda.Device(dev).compute_capability)


def device_name() -> str:
    """The current device's name, as the driver reports it."""
    import cupy as cp

    name = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


_NOTICED: set[tuple] = set()  # (family, requested, chosen) already announced


def version_runs(slug: str, version) -> bool:
    """Whether this card runs ``version`` of launcher family ``slug``
    (gpu/capability.json); True without a device, as pick_version."""
    from gpu import capability as cap

    if not available():
        return True
    need = cap.min_cc(slug, version)
    return need is not None and need <= compute_capability()


def pick_version(slug: str, requested, supported_order):
    """``requested`` when this card can run it, else the first of
    ``supported_order`` (best first) that it can, with one CapabilityFallback
    warning per (slug, requested, chosen) in a process.

    ``slug`` is a launcher family of gpu/capability.py (``attention``,
    ``slim_attention_x``, ...); the minimum compute capability of each version is
    the table's (gpu/capability.json, found by compiling with NVRTC). Without a
    device (CuPy missing, no GPU) there is nothing to check: ``requested`` is
    returned. RuntimeError, naming the card and the minimum, when no version of
    ``supported_order`` runs on it.
    """
    from gpu import capability as cap

    if version_runs(slug, requested):  # also: no device, nothing to check
        return requested
    cc, need = compute_capability(), cap.min_cc(slug, requested)
    mins = {v: cap.min_cc(slug, v) for v in supported_order}
    for v in supported_order:
        if version_runs(slug, v):
            if (slug, requested, v) not in _NOTICED:
                _NOTICED.add((slug, requested, v))
                warnings.warn(
                    f"{slug} v{requested} needs compute capability "
                    f"{_need_text(need)}; {device_name()} is {cap.cc_text(cc)}: "
                    f"running v{v} instead (gpu/capability.json)",
                    CapabilityFallback,
                    stacklevel=3,
                )
            return v
    known = [m for m in mins.values() if m is not None]
    least = f"at least {cap.cc_text(min(known))}" if known else "a newer NVRTC"
    raise RuntimeError(
        f"{device_name()}, compute capability {cap.cc_text(cc)}, cannot run any "
        f"{slug} kernel: v{requested} needs {_need_text(need)}, and every version "
        f"needs {least} (gpu/capability.json)"
    )


def _need_text(need) -> str:
    from gpu import capability as cap

    return "none in the table" if need is None else cap.cc_text(need)


def check_file_supported(slug: str) -> None:
    """RuntimeError naming the card and the minimum when gpu/<slug>.cu does not
    compile for this card (gpu/capability.json); nothing without a device."""
    from gpu import capability as cap

    if not available():
        return
    try:
        need = cap.file_min_cc(slug)
    except KeyError:  # a file the table does not list: let NVRTC say
        return
    cc = compute_capability()
    if need is None or need > cc:
        raise RuntimeError(
            f"gpu/{slug}.cu does not compile for {device_name()}, compute "
            f"capability {cap.cc_text(cc)}: it needs {_need_text(need)} "
            f"(gpu/capability.json)"
        )


@functools.cache
def module(slug: str):
    """``gpu/<slug>.cu`` compiled once into a ``cupy.RawModule`` (RuntimeError first
    when the table says the file does not compile for this card)."""
    check_file_supported(slug)
    import cupy as cp

    src = (GPU_DIR / f"{slug}.cu").read_text()
    opts = NVRTC_OPTIONS + arch_options(compute_capability())
    return cp.RawModule(code=src, options=opts)


def kernel(slug: str, name: str):
    """The kernel ``name`` from ``gpu/<slug>.cu``. A kernel left out for this card
    (a version guarded by ``__CUDA_ARCH__``) raises RuntimeError saying so."""
    mod = module(slug)
    try:
        return mod.get_function(name)
    except Exception as e:  # CuPy's CUDADriverError: named symbol not found
        if "NOT_FOUND" not in str(e) and "not found" not in str(e):
            raise
        raise RuntimeError(
            f"{name} is not in gpu/{slug}.cu as compiled for {device_name()} "
            f"(sm_{compute_capability()}): a version this card "
            f"cannot run (gpu/capability.json; launchers call pick_version)"
        ) from e


# --- argument checks shared by the launchers (run before any launch) ---------------


# A CUtensorMap as CuPy passes it by value (a NumPy structured scalar of the
# driver's 128 bytes; the kernel declares it ``const __grid_constant__ TensorMap``,
# gpu/common.cuh). CU_TENSOR_MAP_DATA_TYPE_FLOAT16 = 6, CU_TENSOR_MAP_SWIZZLE_128B
# = 3, CU_TENSOR_MAP_L2_PROMOTION_L2_256B = 3 (cuda.h).
TENSOR_MAP = np.dtype({"names": ["w"], "formats": [(np.uint64, (16,))]})
TMAP_FLOAT16, TMAP_SWIZZLE_128B, TMAP_L2_256B = 6, 3, 3


def check_tensor_map(dims, strides, box, itemsize: int, swizzle: int) -> None:
    """The driver's rules for a tiled tensor map (cuTensorMapEncodeTiled), checked
    here so that a bad geometry is a ValueError naming what is wrong: rank 1-5; each
    dimension in [1, 2^32]; the rank - 1 strides (bytes, dimension 1 on) multiples of
    16 below 2^40; each box side in [1, 256]; with the 128-byte swizzle, the box's
    inner side at most 128 bytes."""
    rank = len(dims)
    if not 1 <= rank <= 5 or len(strides) != rank - 1 or len(box) != rank:
        raise ValueError(
            f"tensor map: rank {rank} needs rank - 1 strides and rank box sides, "
            f"got {len(strides)} and {len(box)}"
        )
    for i, d in enumerate(dims):
        if not 1 <= int(d) <= 2**32:
            raise ValueError(f"tensor map: dims[{i}] = {d} not in [1, 2^32]")
    for i, st in enumerate(strides):
        if int(st) % 16 or not 0 < int(st) < 2**40:
            raise ValueError(
                f"tensor map: strides[{i}] = {st} bytes must be a positive multiple "
                f"of 16 below 2^40"
            )
    for i, bx in enumerate(box):
        if not 1 <= int(bx) <= 256:
            raise ValueError(f"tensor map: box[{i}] = {bx} not in [1, 256]")
    if swizzle == TMAP_SWIZZLE_128B and int(box[0]) * itemsize > 128:
        raise ValueError(
            f"tensor map: the 128-byte swizzle takes an inner box side of at most "
            f"128 bytes, got {int(box[0]) * itemsize}"
        )


@functools.cache
def _encode_tiled():
    import ctypes

    lib = ctypes.CDLL("libcuda.so.1")  # the driver, which CuPy has loaded
    fn = lib.cuTensorMapEncodeTiled
    u64p, u32p = ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_uint32)
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p]
    fn.argtypes += [u64p, u64p, u32p, u32p] + [ctypes.c_int] * 4
    fn.restype = ctypes.c_int
    return fn


def tensor_map_tiled(ptr: int, dims, strides, box, swizzle: int = TMAP_SWIZZLE_128B):
    """A tiled tensor map of float16 elements at device address ``ptr`` (16-byte
    aligned): ``dims`` (innermost first, elements), ``strides`` (bytes, dimensions
    1..rank-1), ``box`` (elements per copy), no interleave, the given swizzle, L2
    promotion to 256 B, and elements outside the tensor read as zeros. Returns the
    (1,) TENSOR_MAP array a RawKernel takes as a by-value argument."""
    import ctypes

    check_tensor_map(dims, strides, box, 2, swizzle)
    if ptr % 16:
        raise ValueError(f"tensor map: the address must be 16-byte aligned, got {ptr}")
    rank = len(dims)
    raw = np.zeros(TENSOR_MAP.itemsize + 64, np.uint8)  # the driver wants 64-B
    off = -raw.ctypes.data % 64
    out = raw[off : off + TENSOR_MAP.itemsize].view(TENSOR_MAP)

    def arr(ct, vals):
        return (ct * max(len(vals), 1))(*[int(v) for v in vals])

    rc = _encode_tiled()(
        ctypes.c_void_p(out.ctypes.data),
        TMAP_FLOAT16,
        rank,
        ctypes.c_void_p(int(ptr)),
        arr(ctypes.c_uint64, dims),
        arr(ctypes.c_uint64, strides),
        arr(ctypes.c_uint32, box),
        arr(ctypes.c_uint32, [1] * rank),
        0,
        swizzle,
        TMAP_L2_256B,
        0,
    )
    if rc != 0:
        raise RuntimeError(
            f"cuTensorMapEncodeTiled failed (CUresult {rc}) for dims {list(dims)}, "
            f"strides {list(strides)}, box {list(box)}"
        )
    return out


def check_array(name: str, a, dtypes, ndim: int) -> None:
    """TypeError unless ``a`` is a C-contiguous CuPy array of one of ``dtypes``
    with ``ndim`` dimensions; ValueError for the wrong ndim or a non-contiguous one."""
    import cupy as cp

    if not isinstance(a, cp.ndarray):
        raise TypeError(f"{name} must be a cupy.ndarray, got {type(a).__name__}")
    allowed = tuple(np.dtype(d) for d in dtypes)
    if a.dtype not in allowed:
        names = " or ".join(d.name for d in allowed)
        raise TypeError(f"{name} must have dtype {names}, got {a.dtype.name}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (call cupy.ascontiguousarray)")
    if a.size and a.data.device_id != cp.cuda.Device().id:
        raise ValueError(
            f"{name} lives on device {a.data.device_id}, not the current one"
        )


def check_aligned(nbytes: int, **arrays) -> None:
    """ValueError naming each non-empty array whose data does not start on an
    ``nbytes`` boundary (a view that starts mid-vector): kernels that load or store
    16-byte vectors would fault on it."""
    for name, a in arrays.items():
        if a.size and a.data.ptr % nbytes:
            raise ValueError(
                f"{name} must be {nbytes}-byte aligned ({nbytes}-byte vector "
                f"loads); its data starts {a.data.ptr % nbytes} bytes past a "
                f"boundary (a view into the middle of an array?)"
            )


def check_shape(name: str, a, expected: tuple, letters: str) -> None:
    """ValueError naming each mismatching dimension by its shape letter."""
    if tuple(a.shape) != tuple(expected):
        raise ValueError(
            f"{name} must have shape ({', '.join(letters)}) = {tuple(expected)}, "
            f"got {tuple(a.shape)}"
        )


def check_positive(**dims: int) -> None:
    """ValueError for any dimension < 1."""
    for k, v in dims.items():
        if int(v) < 1:
            raise ValueError(f"{k} must be >= 1, got {v}")


def check_int32(**sizes: int) -> None:
    """ValueError when a size or element offset would overflow the kernels' int32."""
    for k, v in sizes.items():
        if int(v) >= 2**31:
            raise ValueError(f"{k} = {v} does not fit the kernels' int32 indexing")


def poisoned(shape, dtype):
    """A new CuPy array filled with NaN: elements a kernel forgets to write fail."""
    import cupy as cp

    return cp.full(shape, np.nan, dtype=dtype)
