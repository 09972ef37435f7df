"""The one benchmark harness: validate, then time; every figure beside its floor.

    python -m gpu.bench ceilings [--out results]   copy/read bandwidth, GEMM peaks
    python -m gpu.bench <slug> [--quick] [--out results]
                                 one chapter's cases (gpu/bench_<slug>.py)
    python -m gpu.bench attention --version 7      some attention versions only
    python -m gpu.bench split | tiles              attention's n_split sweep; the v9
                                                   tile experiment (not in "all")
    python -m gpu.bench slim_crossover             slim attention's dense B x S grid
                                                   (not in "all")
    python -m gpu.bench all [--quick] [--out results]
                                 ceilings, then every slug, each in a fresh process
    python -m gpu.bench list                       the slugs, one a line

Method (see the chapter "Measuring a kernel"):
  * each case is checked against the float64 NumPy reference before it is timed;
    a case that fails validation is recorded as failed and never timed;
  * the calls are captured in a CUDA graph, so Python launch overhead is not timed;
  * inputs are rotated over enough copies that together exceed 2x the L2 cache, so
    every call reads from HBM, as it would in a model;
  * one sample = one graph replay (CUDA events) / calls in it; we report the median
    and the 10th-90th percentile spread of many samples, after warm-up replays;
  * floors use the ceilings of this card (``ceilings_or_recorded``): the maximum
    over several methods, each recorded; a row faster than its floor is an error.

A chapter's module gpu/bench_<slug>.py declares its grid as data (``GRID``, a
``Grid``), its table columns (``COLUMNS``, for ``print_table``) and
``run(quick, ceil) -> {results name: rows}``; ``run_trick`` prints and records it.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from gpu import results
from gpu import runtime as rt

RESULTS = results.RESULTS


# --- timing ----------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    median_us: float
    p10_us: float
    p90_us: float
    samples: int
    calls_per_sample: int


def summarise(per_call_us: list[float], calls: int) -> Timing:
    """Median and 10th/90th percentiles of per-call times (us) of many samples."""
    a = np.asarray(per_call_us)
    return Timing(
        float(np.median(a)),
        float(np.percentile(a, 10)),
        float(np.percentile(a, 90)),
        len(a),
        calls,
    )


def n_copies(bytes_per_call: int, l2_bytes: int | None = None, cap: int = 64) -> int:
    """Input sets to rotate so that together they exceed 2x L2 (1 if one set does)."""
    l2 = l2_bytes or (rt.device_info()["l2_bytes"] if rt.available() else 50 << 20)
    return max(1, min(cap, math.ceil(2 * l2 / max(bytes_per_call, 1))))


MIN_CALLS = 16  # calls per graph replay: amortises the replay's own launch (~4 us)


def _cycle(calls: list) -> list:
    """The calls repeated whole until there are at least MIN_CALLS of them: a model
    runs its kernels back to back, and one graph launch per kernel would add its
    launch latency to every figure (it did: ~8 us at B = 1, S = 16K)."""
    return list(calls) * math.ceil(MIN_CALLS / len(calls))


def time_cupy(calls, samples: int = 30, warmup: int = 3) -> Timing:
    """Time a list of zero-argument callables that launch CuPy kernels.

    They are captured once into a CUDA graph (they must not allocate: pass
    preallocated outputs), cycled to at least MIN_CALLS launches, replayed
    ``warmup`` times, then ``samples`` times between CUDA events. Returns the
    per-call time of each replay, summarised.
    """
    import cupy as cp

    calls = _cycle(calls)
    for c in calls:  # first launch compiles and loads the module, outside the graph
        c()
    cp.cuda.Device().synchronize()
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        try:
            for c in calls:
                c()
        except BaseException:
            try:  # leave the stream out of capture mode, then report the error
                stream.end_capture()
            except Exception:  # noqa: BLE001 - the first error is the one to see
                pass
            raise
        graph = stream.end_capture()
    graph.upload(stream)
    start, end = cp.cuda.Event(), cp.cuda.Event()
    per_call = []
    for i in range(warmup + samples):
        start.record(stream)
        graph.launch(stream)
        end.record(stream)
        end.synchronize()
        if i >= warmup:
            per_call.append(cp.cuda.get_elapsed_time(start, end) * 1e3 / len(calls))
    return summarise(per_call, len(calls))


def time_events(calls, samples: int = 10, warmup: int = 2) -> Timing:
    """Time callables that cannot be captured in a graph (cuBLAS through CuPy):
    CUDA events around the whole list on the current stream. Only for work long
    enough (a large GEMM: ms) that launch overhead does not matter."""
    import cupy as cp

    start, end = cp.cuda.Event(), cp.cuda.Event()
    per_call = []
    for i in range(warmup + samples):
        start.record()
        for c in calls:
            c()
        end.record()
        end.synchronize()
        if i >= warmup:
            per_call.append(cp.cuda.get_elapsed_time(start, end) * 1e3 / len(calls))
    return summarise(per_call, len(calls))


def time_torch(
    calls, samples: int = 30, warmup: int = 3, capture_error_mode: str = "global"
) -> Timing:
    """As ``time_cupy`` for callables that launch PyTorch work (torch.cuda graphs).
    capture_error_mode: torch's ("global"; "thread_local" lets calls that also
    launch CuPy kernels look up their functions during the capture)."""
    import torch

    calls = _cycle(calls)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # torch wants a warm-up on a side stream
        for c in calls:
            c()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode=capture_error_mode):
        for c in calls:
            c()
    start, end = (
        torch.cuda.Event(enable_timing=True),
        torch.cuda.Event(enable_timing=True),
    )
    per_call = []
    for i in range(warmup + samples):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        if i >= warmup:
            per_call.append(start.elapsed_time(end) * 1e3 / len(calls))
    return summarise(per_call, len(calls))


def seconds(t: Timing) -> float:
    """The median of a Timing in seconds (for bytes/s and FLOP/s)."""
    return t.median_us * 1e-6


# --- torch, the baseline -----------------------------------------------------------

TORCH_SKIP = "skipped: torch not importable"


def torch_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def torch_for_baselines():
    """torch, set so that its fp16 GEMMs accumulate as the tolerances assume: no
    TF32, and no reduced-precision (fp16/bf16) reductions inside cuBLAS (torch's
    default allows them; the float64 checks would then need a wider tolerance
    than the kernels get). Every torch row is validated against the same float64
    truth and scale as the kernel rows of its case."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    return torch


def torch_skipped(name: str, base: dict) -> dict:
    """The row of a torch baseline on a machine without torch: recorded, never
    dropped; ``is_skipped`` treats it as neither failure nor figure."""
    row = {"name": name, **base}  # name first, whether or not base has one
    row.update(name=name, status=TORCH_SKIP)
    return row


def guarded(name: str, base: dict, make_row, *args) -> dict:
    """``make_row(*args)`` (a baseline's whole row: set-up, validation, timing), or, if
    it raises, a failed row that names the exception, with the traceback on stderr.
    A baseline that breaks must not take the chapter's other rows with it; the
    failed row still makes the run exit non-zero."""
    import traceback

    try:
        return make_row(*args)
    except Exception as e:  # noqa: BLE001 - recorded as a failure, never hidden
        traceback.print_exc(file=sys.stderr)
        row = {"name": name, **base}
        row.update(name=name, status=f"FAILED: {type(e).__name__}: {e}")
        print(f"  {name}: {row['status']}", file=sys.stderr)
        return row


# --- a chapter's grid, declared as data -----------------------------------------------


@dataclass(frozen=True)
class Grid:
    """What a chapter times, as data (in the spirit of Triton's perf_report and
    gpu-mode's task.yml); its run() reads it.

    axes: shape axis (or "version") -> the values of the full run; quick: the axes
    that --quick replaces; fixed: the shape constants every case shares; versions:
    the kernel versions or variants timed (a tuple, or family -> tuple); baselines:
    row name of each baseline -> the fields a row must share with it to be its
    case (``mark_baselines``); kernels: name prefixes of the rows compared with
    the baselines (empty: every row that is not a baseline); sweeps: the grids of
    the chapter's secondary tables, by results name."""

    axes: Mapping[str, tuple]
    quick: Mapping[str, tuple] = field(default_factory=dict)
    fixed: Mapping[str, object] = field(default_factory=dict)
    versions: object = ()
    baselines: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    kernels: tuple[str, ...] = ()
    sweeps: Mapping[str, Mapping[str, object]] = field(default_factory=dict)

    def values(self, axis: str, quick: bool = False) -> tuple:
        """The values of ``axis`` timed in this run (quick: the quick ones)."""
        src = self.quick if quick and axis in self.quick else self.axes
        return tuple(src[axis])


# --- one row: finish, the floor check, the baselines ----------------------------

# The floors a row can carry (us); each is a lower bound on its time. floor_us is
# the row's floor (of_floor = floor_us / median); flop_floor_us and bytes_floor_us
# are its parts, where a row gives them.
FLOORS = ("floor_us", "flop_floor_us", "bytes_floor_us")


def is_ok(row: dict) -> bool:
    """Validated and timed, within its floors."""
    return row.get("status") == "ok"


def is_skipped(row: dict) -> bool:
    """A case this machine cannot run (e.g. "skipped: needs >= 2 GPUs", or
    TORCH_SKIP): neither a failure nor a figure."""
    return str(row.get("status", "")).startswith("skipped")


def floor_beaten(row: dict, p90_us: float) -> list[str]:
    """The floors of ``row`` that its 90th-percentile time is below: each says
    that floor is wrong (bytes or FLOPs undercounted, or a ceiling too low). p90,
    not the median, so that a kernel at 0.99 of its floor does not trip on noise."""
    return [
        f"p90 {p90_us:.4g} us < {k} {row[k]:.4g} us"
        for k in FLOORS
        if row.get(k) and p90_us < row[k]
    ]


def rel_err(got, ref) -> float:
    """||got - ref|| / ||ref|| over whole arrays of one shape. (The first run compared
    torch's (B, C) output with our row 0 only, ``ours[0]``: numpy broadcast it over
    the B rows, so the check passed at B = 1 and "failed" at B = 8 and 64 with
    sqrt(B - 1) times the distance between two rows, 2.68 and 8.02.)"""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape:
        raise ValueError(f"shapes differ: {got.shape} vs {ref.shape}")
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def set_floors(row: dict, nbytes: int, flops: int, ceil: Mapping) -> dict:
    """The row's bytes and FLOPs and its floors from the ceilings it can use:
    bytes_floor_us (bytes / read bandwidth), flop_floor_us (FLOPs / fp16 GEMM
    rate) and floor_us, the larger."""
    row.update(bytes=nbytes, flops=flops)
    if ceil.get("read_bytes_per_s"):
        row["bytes_floor_us"] = nbytes / ceil["read_bytes_per_s"] * 1e6
    if ceil.get("gemm_fp16_flop_per_s"):
        row["flop_floor_us"] = flops / ceil["gemm_fp16_flop_per_s"] * 1e6
    floors = [row[k] for k in ("bytes_floor_us", "flop_floor_us") if k in row]
    if floors:
        row["floor_us"] = max(floors)
    return row


def finish(row: dict, t: Timing) -> dict:
    """Add the timing, GB/s and of_floor to a validated row; a row faster than any
    of its floors gets the status "FLOOR BEATEN: ..." (the run then fails)."""
    row.update(status="ok", **asdict(t))
    row["gb_per_s"] = row.get("bytes", 0) / (t.median_us * 1e-6) / 1e9
    if row.get("floor_us"):
        row["of_floor"] = row["floor_us"] / t.median_us  # 1.0 = at the floor
    beaten = floor_beaten(row, t.p90_us)
    if beaten:
        row["status"] = (
            "FLOOR BEATEN: " + "; ".join(beaten) + " (the floor is wrong: check the "
            "row's bytes and FLOPs and the ceilings it was computed from)"
        )
        print(f"  {row.get('name')}: {row['status']}", file=sys.stderr)
    return row


def mark_baselines(
    rows: list[dict],
    baselines: Mapping[str, tuple[str, ...]],
    kernels: tuple[str, ...] = (),
) -> list[dict]:
    """Give every ok kernel row ``best_baseline`` (the name of the fastest ok
    baseline row of its case) and ``vs_best_baseline`` (that row's median / this
    row's median: 2.0 = twice as fast as the strongest baseline). A baseline row
    is of a kernel row's case when they agree on the fields ``baselines`` lists
    for it. Failed, skipped and floor-beaten rows are neither compared nor used."""
    base = [r for r in rows if r.get("name") in baselines and is_ok(r)]
    for r in rows:
        if r.get("name") in baselines or not is_ok(r):
            continue
        if kernels and not str(r.get("name", "")).startswith(tuple(kernels)):
            continue
        same = [
            b for b in base if all(b.get(k) == r.get(k) for k in baselines[b["name"]])
        ]
        if same:
            best = min(same, key=lambda b: b["median_us"])
            r["best_baseline"] = best["name"]
            r["vs_best_baseline"] = best["median_us"] / r["median_us"]
    return rows


def free(sets) -> None:
    """Drop a list of input sets and return their memory (CuPy's pool, torch's)."""
    import cupy as cp

    sets.clear()
    cp.get_default_memory_pool().free_all_blocks()
    if torch_available():
        import torch

        torch.cuda.empty_cache()


def random_normal(rng, shape: tuple, dtype):
    """N(0, 1) values of ``dtype`` drawn in float32 one leading-axis row at a time, so
    a 17 GB fp16 cache never needs a 34 GB float32 temporary."""
    import cupy as cp

    out = cp.empty(shape, dtype=dtype)
    for i in range(shape[0]):
        out[i] = rng.standard_normal(shape[1:], dtype=cp.float32)
    return out


# --- the one table printer -------------------------------------------------------


def spread(r: dict) -> str:
    """p10-p90 of a row, for a column."""
    return f"{r['p10_us']:.1f}-{r['p90_us']:.1f}"


# Columns: (header, row field or callable(row), format spec; its width and
# alignment also place the header). Chapters compose theirs from these.
NAME = ("case", "name", "<16")
MEDIAN = ("median us", "median_us", ">11.2f")
SPREAD = ("p10-p90", spread, ">16")
GBPS = ("GB/s", "gb_per_s", ">8.0f")
FLOOR = ("floor us", "floor_us", ">10.2f")
OF_FLOOR = ("of floor", "of_floor", ">9.2f")
ERR = ("err/tol", "error_used", ">9.3f")
VS_BEST = ("vs best", "vs_best_baseline", ">8.2f")
BEST = ("best baseline", "best_baseline", ">20")
DEFAULT_COLUMNS = (
    NAME,
    ("B", "B", ">5"),
    ("S", "S", ">7"),
    MEDIAN,
    SPREAD,
    GBPS,
    FLOOR,
    OF_FLOOR,
    ERR,
)

_SPEC = re.compile(r"^(?:.?[<>^=])?[+\- ]?#?0?(\d*)")


def _align_width(fmt: str) -> str:
    """The alignment and width of a format spec, for text in its place."""
    m = _SPEC.match(fmt)
    align = next((c for c in fmt[:2] if c in "<>^"), ">")
    return align + (m.group(1) if m else "")


def _cell(row: dict, what) -> object:
    try:
        v = what(row) if callable(what) else row[what]
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    return v


def format_row(row: dict, columns) -> str:
    """One line of the table. An ok row shows every column ("-" where a value is
    missing); any other row shows its columns up to the first missing value (a
    failed row has no timing), then its status."""
    out = []
    for _, what, fmt in columns:
        v = _cell(row, what)
        if v is None:
            if not is_ok(row):
                break
            out.append(format("-", _align_width(fmt)))
            continue
        try:
            out.append(format(v, fmt))
        except (TypeError, ValueError):
            out.append(format(str(v), _align_width(fmt)))
    line = "".join(out)
    return line if is_ok(row) else f"{line}  {row.get('status', 'no status')}"


def print_table(rows: list[dict], columns=None, file=None) -> None:
    """Print rows under the columns a chapter declares (its module's COLUMNS:
    (header, field or callable, format) triples; default DEFAULT_COLUMNS)."""
    columns = columns or DEFAULT_COLUMNS
    head = "".join(format(h, _align_width(f)) for h, _, f in columns)
    print(head, file=file)
    for r in rows:
        print(format_row(r, columns), file=file)


# --- recording -------------------------------------------------------------------


def record(slug: str, rows: list[dict], out_dir: Path = RESULTS, **extra) -> Path:
    """Write <out_dir>/<card>/<slug>.json (card: ``results.card_slug`` of this GPU):
    provenance (card, driver, CUDA, CuPy, commit, date) and the rows. The book plots
    these files when it is built without a GPU."""
    prov = rt.provenance()
    card_dir = Path(out_dir) / results.card_slug(prov.get("card", "unknown"))
    card_dir.mkdir(parents=True, exist_ok=True)
    path = card_dir / f"{slug}.json"
    doc = {"benchmark": slug, "provenance": prov, **extra, "rows": rows}
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def load(slug: str, card: str | None = None) -> dict | None:
    """The recorded results/<card>/<slug>.json (default: ``results.default_card``),
    or None when it has not been measured."""
    return results.load(slug, card)


# --- ceilings --------------------------------------------------------------------

# A method's name is "<kind>/<how>"; a ceiling is the maximum over its kind's methods.
CEILING_KEYS = {
    "copy": "copy_bytes_per_s",  # bytes read + bytes written, per second
    "read": "read_bytes_per_s",
    "gemm_fp16": "gemm_fp16_flop_per_s",
    "gemm_bf16": "gemm_bf16_flop_per_s",
    "gemm_tf32": "gemm_tf32_flop_per_s",
    "gemm_fp32": "gemm_fp32_flop_per_s",
}
CEILING_BYTES = 2 << 30  # 2 GiB a copy's source and destination; reads read both
PER_SM = (2, 4, 8, 16)  # blocks per SM of our copy and read kernels
QUICK_PER_SM = (4, 8)
GEMM_SIZES = (4096, 8192, 16384)  # square; fp16 and bf16
QUICK_GEMM_SIZES = (4096, 8192)
GEMM32_SIZES = (4096, 8192)  # fp32 and tf32 (16384 at fp32 takes ~0.2 s a call)


def ceiling_maxima(methods: Mapping[str, float]) -> dict:
    """The ceilings from the figures of each method: for each kind (the part of a
    method's name before "/"), the maximum over its methods, under the kind's key
    (CEILING_KEYS), and ``best``: key -> the method that gave it. Methods that
    were not measured (None, NaN, <= 0) are left out."""
    out: dict = {}
    best: dict[str, str] = {}
    for name, v in methods.items():
        kind = name.split("/", 1)[0]
        if kind not in CEILING_KEYS:
            raise ValueError(
                f"method {name!r}: kind must be one of {list(CEILING_KEYS)}"
            )
        if v is None or not math.isfinite(v) or v <= 0:
            continue
        key = CEILING_KEYS[kind]
        if v > out.get(key, 0.0):
            out[key], best[key] = float(v), name
    out["best"] = best
    return out


def _attempt(methods: dict, name: str, measure: Callable[[], float]) -> None:
    """methods[name] = measure(), or a line on stderr if it cannot be measured here
    (the ceiling is then the maximum over the others)."""
    try:
        methods[name] = float(measure())
    except Exception as e:  # noqa: BLE001 - one method must not stop the others
        print(f"  {name}: not measured ({type(e).__name__}: {e})", file=sys.stderr)
        return
    unit = "FLOP/s" if name.startswith("gemm") else "B/s"
    print(f"  {name:<28}{methods[name] / 1e12:9.3f} T{unit}")


def _rate(amount: float, timer, calls, **kw) -> Callable[[], float]:
    """A measurement: amount (bytes or FLOPs) per second of one call of ``calls``."""
    return lambda: amount / seconds(timer(calls, **kw))


def measure_ceilings(quick: bool = False) -> dict[str, float]:
    """Each method's figure on the card at hand: {"<kind>/<method>": per second}.

    copy: cudaMemcpyAsync device to device, our copy kernels at several grids,
    cupy.copyto, a CuPy elementwise copy, torch's copy_ (bytes read + written).
    read: our read kernels v1-v4 at several grids, a CuPy sum, a torch sum and
    torch's SDPA decoding one query over K and V caches (bytes read). gemm: fp16
    (CuPy's cuBLAS and torch) and bf16 (torch) at several square sizes, fp32
    without TF32 (both) and tf32 (torch). Random data, never zeros (a GEMM of
    zeros draws less power and runs faster than a real one)."""
    import cupy as cp

    methods: dict[str, float] = {}
    _bandwidth(methods, quick)
    cp.get_default_memory_pool().free_all_blocks()
    _gemm(methods, quick)
    return methods


def _bandwidth(methods: dict, quick: bool) -> None:
    import cupy as cp

    n = CEILING_BYTES
    # one buffer of 2n bytes: the copies go from its first half to its second, the
    # reads read all of it (the longer a pass, the less its ramp-up and tail weigh:
    # a 2 GiB read takes ~0.5 ms on an H200, a few us of which are the grid's tail)
    whole = cp.random.default_rng(0).integers(0, 2**31 - 1, n // 2, dtype=cp.int32)
    src, dst = whole[: n // 4], whole[n // 4 :]
    sms = rt.device_info()["sm_count"]
    per_sm = QUICK_PER_SM if quick else PER_SM
    n16 = np.int64(n // 16)  # 16-byte vectors in a half

    def memcpy():
        s = cp.cuda.get_current_stream().ptr
        d2d = cp.cuda.runtime.memcpyDeviceToDevice
        cp.cuda.runtime.memcpyAsync(dst.data.ptr, src.data.ptr, n, d2d, s)

    _attempt(methods, "copy/cudaMemcpy", _rate(2 * n, time_cupy, [memcpy], samples=20))
    for ver in (1, 2):
        fn = rt.kernel("ceilings", f"ceilings_copy_v{ver}")
        for k in per_sm:
            call = [lambda fn=fn, g=sms * k: fn((g,), (256,), (src, dst, n16))]
            name = f"copy/kernel_v{ver}_g{k}"
            _attempt(methods, name, _rate(2 * n, time_cupy, call, samples=20))
    copyto = [lambda: cp.copyto(dst, src)] * 4
    _attempt(methods, "copy/cupy_copyto", _rate(2 * n, time_events, copyto))
    ew = cp.ElementwiseKernel("T x", "T y", "y = x", "tt_ceiling_copy")
    s64, d64 = src.view(cp.int64), dst.view(cp.int64)
    elementwise = [lambda: ew(s64, d64)] * 4
    _attempt(methods, "copy/cupy_elementwise", _rate(2 * n, time_events, elementwise))
    flag = cp.zeros(1, dtype=cp.uint32)
    n16_all = np.int64(2 * n16)
    for ver in (1, 2, 3, 4):
        fn = rt.kernel("ceilings", f"ceilings_read_v{ver}")
        for k in per_sm:
            call = [lambda fn=fn, g=sms * k: fn((g,), (256,), (whole, n16_all, flag))]
            name = f"read/kernel_v{ver}_g{k}"
            _attempt(methods, name, _rate(2 * n, time_cupy, call, samples=20))
    total = cp.zeros((), dtype=cp.int64)  # preallocated: the sum allocates nothing
    summed = [lambda: cp.sum(whole, dtype=cp.int64, out=total)] * 4
    _attempt(methods, "read/cupy_sum", _rate(2 * n, time_events, summed))
    if not torch_available():
        return
    import torch

    ts, td, tw = (torch.from_dlpack(a) for a in (src, dst, whole))
    t_total = torch.zeros((), dtype=torch.int64, device=tw.device)
    copy_ = [lambda: td.copy_(ts)]
    _attempt(methods, "copy/torch_copy_", _rate(2 * n, time_torch, copy_, samples=20))
    t_sum = [lambda: torch.sum(tw, dim=0, dtype=torch.int64, out=t_total)]
    _attempt(methods, "read/torch_sum", _rate(2 * n, time_torch, t_sum, samples=20))
    # Decode attention streams K and V once, and on the H100 torch's SDPA read them
    # ~1 % faster than every method above (results/h100/slim_attention.json of
    # 2026-12-06 flagged it FLOOR BEATEN): a read ceiling must include it.
    b_, h_, d_ = 8, 32, 128
    s_ = n // (2 * b_ * h_ * d_)  # K and V of n bytes each
    kv = [torch.randn(b_, h_, s_, d_, dtype=torch.float16, device=tw.device)]
    kv.append(torch.randn_like(kv[0]))
    q1 = torch.randn(b_, h_, 1, d_, dtype=torch.float16, device=tw.device)
    sdpa = [lambda: torch.nn.functional.scaled_dot_product_attention(q1, *kv)]
    _attempt(methods, "read/torch_sdpa", _rate(2 * n, time_torch, sdpa, samples=20))
    torch.cuda.empty_cache()


def _gemm(methods: dict, quick: bool) -> None:
    """Square GEMMs C = A B of random N(0, 1) matrices. torch runs with its
    defaults (fp16/bf16 reduced-precision reductions allowed: the fastest it
    goes, so that the ceiling stays an upper bound)."""
    import cupy as cp

    sizes = QUICK_GEMM_SIZES if quick else GEMM_SIZES
    sizes32 = GEMM32_SIZES[:1] if quick else GEMM32_SIZES
    rng = cp.random.default_rng(1)
    for kind, dt, ms in (("fp16", cp.float16, sizes), ("fp32", cp.float32, sizes32)):
        for m in ms:  # CuPy: cuBLAS; fp32 without TF32 (CuPy's default)
            a, b = (
                rng.standard_normal((m, m), dtype=cp.float32).astype(dt) for _ in "ab"
            )
            c = cp.empty_like(a)
            mm = [lambda a=a, b=b, c=c: cp.matmul(a, b, out=c)]
            _attempt(methods, f"gemm_{kind}/cupy_{m}", _rate(2 * m**3, time_events, mm))
            del a, b, c, mm
            cp.get_default_memory_pool().free_all_blocks()
    if not torch_available():
        return
    import torch

    mm_flags = torch.backends.cuda.matmul
    saved = (
        mm_flags.allow_fp16_reduced_precision_reduction,
        mm_flags.allow_bf16_reduced_precision_reduction,
    )
    mm_flags.allow_fp16_reduced_precision_reduction = True  # torch's defaults
    mm_flags.allow_bf16_reduced_precision_reduction = True
    for kind, dt, tf32, ms in (
        ("fp16", torch.float16, False, sizes),
        ("bf16", torch.bfloat16, False, sizes),
        ("tf32", torch.float32, True, sizes32),
        ("fp32", torch.float32, False, sizes32),
    ):
        mm_flags.allow_tf32 = tf32
        for m in ms:
            a, b = (torch.randn(m, m, device="cuda", dtype=dt) for _ in "ab")
            c = torch.empty_like(a)
            mm = [lambda a=a, b=b, c=c: torch.matmul(a, b, out=c)]
            reps = 10 if m <= 8192 else 5  # 16384: 16 calls of ~12 ms a replay
            rate = _rate(2 * m**3, time_torch, mm, samples=reps)
            _attempt(methods, f"gemm_{kind}/torch_{m}", rate)
            del a, b, c, mm
            torch.cuda.empty_cache()
    mm_flags.allow_tf32 = False
    (
        mm_flags.allow_fp16_reduced_precision_reduction,
        mm_flags.allow_bf16_reduced_precision_reduction,
    ) = saved


def ceilings(quick: bool = False) -> dict:
    """Measured ceilings of the card at hand: the maxima over the methods of
    ``measure_ceilings`` (copy and read in bytes/s, GEMMs in FLOP/s, keys of
    CEILING_KEYS), ``best`` (which method gave each) and ``methods`` (every
    method's figure)."""
    methods = measure_ceilings(quick)
    return {**ceiling_maxima(methods), "methods": methods, "quick": quick}


def ceilings_or_recorded(measure: bool = True, root: Path = RESULTS) -> dict:
    """The ceilings a run's floors use: those recorded for THIS card under root
    (root/<card_slug>/ceilings.json, written by ``python -m gpu.bench ceilings
    --out root``) when present and made by this harness (they carry ``methods``),
    else, when ``measure``, measured now (quick), else {} (no floors). Never
    another card's. Without a GPU: the recorded ones of ``results.default_card``
    (what the book plots; no run uses them)."""
    if not rt.available():
        doc = results.load("ceilings", root=Path(root))
        return doc["ceilings"] if doc else {}
    card = results.card_slug(rt.device_info()["card"])
    doc = results.load("ceilings", card, Path(root))
    if doc and "methods" in doc.get("ceilings", {}):
        print(f"ceilings: recorded {results.path('ceilings', card, Path(root))}")
        return doc["ceilings"]
    if not measure:
        return {}
    print(f"ceilings: none recorded for {card} under {root}: measuring (quick)")
    return ceilings(quick=True)


def print_ceilings(ceil: dict) -> None:
    for key in CEILING_KEYS.values():
        if key in ceil:
            best = ceil.get("best", {}).get(key, "")
            print(f"  {key:<26}{ceil[key] / 1e12:10.3f} T   {best}")


# --- the chapters' benchmarks ---------------------------------------------------
# Each chapter's cases live in gpu/bench_<slug>.py and use this module's harness.
TRICKS = tuple(
    sorted(p.stem.removeprefix("bench_") for p in rt.GPU_DIR.glob("bench_*.py"))
)


def run_trick(slug: str, quick: bool, ceil: dict | None, out: Path | None, **kw) -> int:
    """Run gpu/bench_<slug>.py's cases (``run(quick, ceil, **kw)``), mark each
    kernel row's best baseline (its GRID), print each table under its COLUMNS and
    record it; 1 if any row failed (validation, or a floor beaten). Rows marked
    skipped (``is_skipped``) are no failure, and a table of skipped rows only is
    not recorded."""
    import importlib

    mod = importlib.import_module(f"gpu.bench_{slug}")
    ceil = ceil or ceilings_or_recorded(root=out or RESULTS)
    grid = getattr(mod, "GRID", None)
    status = 0
    for name, rows in mod.run(quick=quick, ceil=ceil, **kw).items():
        if grid is not None:
            mark_baselines(rows, grid.baselines, grid.kernels)
        print(f"--- {name}")
        print_table(rows, getattr(mod, "COLUMNS", None))
        skipped = [is_skipped(r) for r in rows]
        if out and not all(skipped):  # a table of skipped rows measured nothing
            print(f"recorded {record(name, rows, out, ceilings=ceil)}")
        bad = [r for r, s in zip(rows, skipped, strict=True) if not is_ok(r) and not s]
        for r in bad:
            print(f"{name}: {r.get('name')}: {r.get('status')}", file=sys.stderr)
        status |= bool(bad)
    return int(status)


def run_all(quick: bool, out: Path | None) -> int:
    """Ceilings, then every slug, each in a fresh Python process (one chapter's
    memory and failures do not reach another); non-zero if any failed."""
    flags = (["--quick"] if quick else []) + (["--out", str(out)] if out else [])
    status, report = 0, []
    for what in ("ceilings", *TRICKS):
        t0 = time.time()
        rc = subprocess.run(
            [sys.executable, "-m", "gpu.bench", what, *flags]
        ).returncode
        report.append(f"  {what:<20} rc {rc}  {time.time() - t0:7.1f} s")
        status |= rc != 0
    print("\n".join(["=== gpu.bench all", *report]))
    return int(status)


# Subcommands that run one table of a chapter alone: (slug, table).
SUBSETS = {
    "split": ("attention", "attention_split"),  # attention's n_split sweep
    "tiles": ("attention", "attention_tiles"),  # attention's v9 tile experiment
    "slim_crossover": ("slim_attention", "slim_attention_crossover"),
    "stagformer_persistent": ("stagformer", "stagformer_persistent"),  # B = 1
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m gpu.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "what",
        choices=("ceilings", *TRICKS, *SUBSETS, "all", "list"),
    )
    ap.add_argument(
        "--quick", action="store_true", help="smaller grid, for trying things"
    )
    ap.add_argument(
        "--version", type=int, action="append", help="attention version(s) to time"
    )
    ap.add_argument("--out", type=Path, default=None, help="record into this folder")
    args = ap.parse_args(argv)
    if args.what == "list":
        print("\n".join(TRICKS))
        return 0
    if args.what == "all":
        return run_all(args.quick, args.out)
    if not rt.available():
        print(f"no GPU here: {rt.why_unavailable()}", file=sys.stderr)
        return 2
    print(rt.device_summary())
    if args.what == "ceilings":
        ceil = ceilings(quick=args.quick)
        print_ceilings(ceil)
        if args.out:
            print(f"recorded {record('ceilings', [], args.out, ceilings=ceil)}")
        return 0
    kw = {}
    slug = args.what
    if args.what in SUBSETS:  # one table of a chapter, never part of "all"
        slug, table = SUBSETS[args.what]
        kw["tables"] = (table,)
    elif args.what == "attention" and args.version:
        kw["versions"] = tuple(args.version)
    return run_trick(slug, args.quick, None, args.out, **kw)


if __name__ == "__main__":
    sys.exit(main())
