"""The one benchmark harness: validate, then time; every figure beside its floor.

    python -m gpu.bench ceilings            copy/read bandwidth and GEMM peaks
    python -m gpu.bench attention [--quick] [--version N]
    python -m gpu.bench <slug> [--quick]    one trick's cases (gpu/bench_<slug>.py)
    python -m gpu.bench all --out results   everything, recorded with provenance

Method (see the chapter "Measuring a kernel"):
  * each case is checked against the float64 NumPy reference before it is timed;
    a case that fails validation is recorded as failed and never timed;
  * the calls are captured in a CUDA graph, so Python launch overhead is not timed;
  * inputs are rotated over enough copies that together exceed 2x the L2 cache, so
    every call reads from HBM, as it would in a model;
  * one sample = one graph replay (CUDA events) / calls in it; we report the median
    and the 10th-90th percentile spread of many samples, after warm-up replays;
  * floors use the ceilings measured on the same card in the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np

from gpu import results
from gpu import runtime as rt

RESULTS = results.RESULTS


@dataclass(frozen=True)
class Timing:
    median_us: float
    p10_us: float
    p90_us: float
    samples: int
    calls_per_sample: int


def _summarise(per_call_us: list[float], calls: int) -> Timing:
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
        for c in calls:
            c()
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
    return _summarise(per_call, len(calls))


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
    return _summarise(per_call, len(calls))


def time_torch(calls, samples: int = 30, warmup: int = 3) -> Timing:
    """As ``time_cupy`` for callables that launch PyTorch work (torch.cuda graphs)."""
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
    with torch.cuda.graph(graph):
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
    return _summarise(per_call, len(calls))


def torch_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


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


def ceilings(quick: bool = False) -> dict:
    """Measured ceilings of the card at hand: copy and read bandwidth (bytes/s), GEMM
    throughput (FLOP/s) for fp16 (cuBLAS via cupy), fp32 without TF32, and bf16/tf32
    through torch when it is importable."""
    import cupy as cp

    n = 1 << 30  # 1 GiB a buffer: ramp-up and tail are < 1 % of a pass
    src = cp.random.default_rng(0).integers(0, 2**31, n // 4, dtype=cp.int32)
    dst = cp.empty_like(src)
    d2d = cp.cuda.runtime.memcpyDeviceToDevice

    def copy():
        ptr = cp.cuda.get_current_stream().ptr
        cp.cuda.runtime.memcpyAsync(dst.data.ptr, src.data.ptr, n, d2d, ptr)

    t = time_cupy([copy], samples=20)
    res = {"copy_bytes_per_s": 2 * n / (t.median_us * 1e-6)}  # read + write
    copy_k = rt.kernel("ceilings", "ceilings_copy_v1")
    for per_sm in (4, 8, 16):  # our copy kernel; the faster of the two is the ceiling
        grid = rt.device_info()["sm_count"] * per_sm
        t = time_cupy(
            [lambda g=grid: copy_k((g,), (256,), (src, dst, np.int64(n // 16)))]
        )
        bw = 2 * n / (t.median_us * 1e-6)
        res["copy_bytes_per_s"] = max(res["copy_bytes_per_s"], bw)
    flag = cp.zeros(1, dtype=cp.uint32)
    n16 = np.int64(n // 16)
    for ver in (1, 2, 3):  # the fastest read kernel is the ceiling
        read = rt.kernel("ceilings", f"ceilings_read_v{ver}")
        for per_sm in (4, 8, 16):
            grid = rt.device_info()["sm_count"] * per_sm
            t = time_cupy([lambda r=read, g=grid: r((g,), (256,), (src, n16, flag))])
            bw = n / (t.median_us * 1e-6)
            res["read_bytes_per_s"] = max(res.get("read_bytes_per_s", 0.0), bw)
    m = 4096 if quick else 8192
    for name, dt in (("fp16", cp.float16), ("fp32", cp.float32)):
        a = (
            cp.random.default_rng(1)
            .standard_normal((m, m), dtype=cp.float32)
            .astype(dt)
        )
        c = cp.empty_like(a)
        t = time_events([lambda a=a, c=c: cp.matmul(a, a, out=c)])
        res[f"gemm_{name}_flop_per_s"] = 2 * m**3 / (t.median_us * 1e-6)
    if torch_available():
        import torch

        for name, dt, tf32 in (
            ("bf16", torch.bfloat16, False),
            ("tf32", torch.float32, True),
        ):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            a = torch.randn(m, m, device="cuda", dtype=dt)
            c = torch.empty_like(a)
            t = time_torch([lambda a=a, c=c: torch.matmul(a, a, out=c)], samples=10)
            res[f"gemm_{name}_flop_per_s"] = 2 * m**3 / (t.median_us * 1e-6)
        torch.backends.cuda.matmul.allow_tf32 = False
    return res


def ceilings_or_recorded(measure: bool = True) -> dict:
    """Ceilings measured now (GPU present) or the recorded ones."""
    if measure and rt.available():
        return ceilings(quick=True)
    doc = load("ceilings")
    return doc["ceilings"] if doc else {}


# --- decode attention --------------------------------------------------------------


def random_normal(rng, shape: tuple, dtype):
    """N(0, 1) values of ``dtype`` drawn in float32 one leading-axis row at a time, so
    a 17 GB fp16 cache never needs a 34 GB float32 temporary."""
    import cupy as cp

    out = cp.empty(shape, dtype=dtype)
    for i in range(shape[0]):
        out[i] = rng.standard_normal(shape[1:], dtype=cp.float32)
    return out


def attention_truth(q, k, v) -> list[tuple[int, np.ndarray, float]]:
    """The float64 NumPy reference for batch rows {0, B-1} of one input set, with
    each row's error scale: [(b, ref (1, H, D), scale)]. Computed once per case."""
    import cupy as cp

    from reference.common import decode_attention
    from reference.testing import attention_scale

    truth = []
    for b in sorted({0, q.shape[0] - 1}):
        qb, kb, vb = (cp.asnumpy(x[b : b + 1]).astype(np.float64) for x in (q, k, v))
        truth.append((b, decode_attention(qb, kb, vb), attention_scale(qb, kb, vb)))
    return truth


def _validate_attention(fn, truth, dtype) -> float:
    """Compare fn()'s output (B, H, D) with the reference rows in ``truth``.

    Returns the fraction of the tolerance used; raises AssertionError on failure."""
    import cupy as cp

    from reference.testing import assert_close

    out = cp.asnumpy(fn())
    return max(
        assert_close(out[b : b + 1], ref, "gpu", dtype, sc) for b, ref, sc in truth
    )


def _attention_case(rng, b: int, s: int, read_bw, h: int = 32, d: int = 128):
    """One benchmark case of fp16 decode attention (H = G = h): the input sets to
    rotate (together > 2x L2), the float64 truth for the first set, and the fields
    every row of this case carries (shape, bytes, FLOPs, floor)."""
    from gpu import attention as att

    nbytes = att.bytes_moved(b, h, h, s, d, 2)
    shapes = ((b, h, d), (b, h, s, d), (b, h, s, d))  # q, K, V
    sets = [
        tuple(random_normal(rng, sh, np.float16) for sh in shapes)
        for _ in range(n_copies(nbytes))
    ]
    base = dict(
        B=b,
        H=h,
        G=h,
        S=s,
        D=d,
        dtype="float16",
        bytes=nbytes,
        flops=att.flops(b, h, s, d),
        copies=len(sets),
    )
    if read_bw:
        base["floor_us"] = nbytes / read_bw * 1e6
    return sets, attention_truth(*sets[0]), base


def _run_launcher(name, launch, ws_elems: int, sets, truth, base, **extra) -> dict:
    """Validate, then time ``launch(qkv, out, workspace) -> out`` over every input
    set, each with its own NaN-poisoned output and zeroed workspace."""
    import cupy as cp

    b, h, d = base["B"], base["H"], base["D"]
    outs = [cp.full((b, h, d), np.nan, dtype=np.float16) for _ in sets]
    wss = [cp.zeros(max(ws_elems, 1), dtype=cp.float32) for _ in sets]
    calls = [
        partial(launch, st, o, w) for st, o, w in zip(sets, outs, wss, strict=True)
    ]
    return _run_case(name, base, calls, truth, np.float16, **extra)


def _launch_version(version, n_split, qkv, out, ws):
    from gpu import attention as att

    return att.decode_attention(
        *qkv, version=version, n_split=n_split, out=out, workspace=ws
    )


def _launch_tile(u, nw, n_split, qkv, out, ws):
    from gpu import attention as att

    if (u, nw) == (4, 4):  # v7 itself, through its own launcher
        return _launch_version(7, n_split, qkv, out, ws)
    return att.decode_attention_v9(
        *qkv, u=u, nw=nw, n_split=n_split, out=out, workspace=ws
    )


def _free(sets) -> None:
    import cupy as cp

    sets.clear()
    cp.get_default_memory_pool().free_all_blocks()
    if torch_available():
        import torch

        torch.cuda.empty_cache()


def attention(
    quick: bool = False, versions=(1, 2, 3, 4, 5, 6, 7, 8), ceil: dict | None = None
) -> list[dict]:
    """Decode attention, H = G = 32, D = 128, fp16: our versions and torch SDPA.

    Grid: B in {1, 8, 64} x S in {1K, 4K, 16K, 32K}
    (quick: B in {1, 8}, S in {1K, 16K}).
    """
    import cupy as cp

    from gpu import attention as att

    read_bw = (ceil or ceilings_or_recorded()).get("read_bytes_per_s")
    bs, ss = (
        ((1, 8), (1024, 16384)) if quick else ((1, 8, 64), (1024, 4096, 16384, 32768))
    )
    rows = []
    rng = cp.random.default_rng(2026)
    for b in bs:
        for s in ss:
            sets, truth, base = _attention_case(rng, b, s, read_bw)
            h, d = base["H"], base["D"]
            for ver in versions:
                if ver == 1 and b * s > 8 * 16384 and not quick:
                    continue  # v1 is ~10x slower; its trend is clear from smaller sizes
                n = att.split_plan(b, h, s, None, ver)[0] if ver >= 3 else 1
                launch = partial(_launch_version, ver, None)
                ws_elems = att.workspace_elems(ver, b, h, s, d)
                rows.append(
                    _run_launcher(
                        f"v{ver}", launch, ws_elems, sets, truth, base, n_split=n
                    )
                )
            if torch_available():
                rows.append(_run_torch_sdpa(base, sets, truth, np.float16))
            _free(sets)
    return rows


def split_sweep(versions=(4, 6, 7, 8), ceil: dict | None = None) -> list[dict]:
    """How the number of S-chunks (blocks per (b, h)) moves time: B in {1, 8},
    S in {1K, 16K}, H = G = 32, D = 128, fp16, n_split from 1 to 128."""
    import cupy as cp

    from gpu import attention as att

    read_bw = (ceil or ceilings_or_recorded()).get("read_bytes_per_s")
    rng = cp.random.default_rng(7)
    rows = []
    for b, s in ((1, 1024), (8, 1024), (1, 16384), (8, 16384)):
        sets, truth, base = _attention_case(rng, b, s, read_bw)
        h, d = base["H"], base["D"]
        for ver in versions:
            for n in (n for n in (1, 2, 4, 8, 16, 32, 64, 128) if n * 32 <= s):
                launch = partial(_launch_version, ver, n)
                ws_elems = att.workspace_elems(ver, b, h, s, d, n)
                rows.append(
                    _run_launcher(
                        f"v{ver}", launch, ws_elems, sets, truth, base, n_split=n
                    )
                )
        _free(sets)
    return rows


def tile_sweep(ceil: dict | None = None) -> list[dict]:
    """v9 (v7 with U rows per group and NW warps per block) against v7 and SDPA where
    v7 trails SDPA: B = 1 at S = 4K and 16K, B = 8 and B = 64 at S = 1K; fp16, D = 128;
    n_split in {1, 2, 4, 8, 16}."""
    import cupy as cp

    from gpu import attention as att

    read_bw = (ceil or ceilings_or_recorded()).get("read_bytes_per_s")
    rng = cp.random.default_rng(9)
    rows = []
    for b, s in ((1, 4096), (1, 16384), (8, 1024), (64, 1024)):
        sets, truth, base = _attention_case(rng, b, s, read_bw)
        h, d = base["H"], base["D"]
        for u, nw in ((4, 4),) + att.V9_TILES:
            for n in (n for n in (1, 2, 4, 8, 16) if n * 128 <= s):
                name = "v7" if (u, nw) == (4, 4) else f"v9_u{u}w{nw}"
                launch = partial(_launch_tile, u, nw, n)
                ws_elems = att.workspace_elems(7, b, h, s, d, n)
                rows.append(
                    _run_launcher(name, launch, ws_elems, sets, truth, base, n_split=n)
                )
        if torch_available():
            rows.append(_run_torch_sdpa(base, sets, truth, np.float16))
        _free(sets)
    return rows


def _run_case(name: str, base: dict, calls, truth, dtype, **extra) -> dict:
    row = dict(name=name, **base, **extra)
    try:
        row["error_used"] = _validate_attention(calls[0], truth, dtype)
    except AssertionError as e:
        row["status"] = f"FAILED validation: {e}"
        print(f"  {name}: {row['status']}", file=sys.stderr)
        return row
    t = time_cupy(calls, samples=20 if base["bytes"] > 1 << 30 else 40)
    return _finish(row, t)


def _finish(row: dict, t: Timing) -> dict:
    row.update(status="ok", **asdict(t))
    row["gb_per_s"] = row["bytes"] / (t.median_us * 1e-6) / 1e9
    if "floor_us" in row:
        row["of_floor"] = row["floor_us"] / t.median_us  # 1.0 = at the floor
    return row


def _run_torch_sdpa(base: dict, sets, truth, dtype) -> dict:
    import torch
    import torch.nn.functional as F

    tq = [
        (torch.from_dlpack(q)[:, :, None], torch.from_dlpack(k), torch.from_dlpack(v))
        for q, k, v in sets
    ]
    gqa = base["H"] != base["G"]
    calls = [
        (lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa))
        for q, k, v in tq
    ]
    row = dict(name="torch_sdpa", torch=torch.__version__, **base)
    import cupy as cp

    def first():
        out = calls[0]()[:, :, 0].contiguous()
        torch.cuda.synchronize()
        return cp.from_dlpack(out)

    try:
        row["error_used"] = _validate_attention(first, truth, dtype)
    except AssertionError as e:
        row["status"] = f"FAILED validation: {e}"
        return row
    t = time_torch(calls, samples=20 if base["bytes"] > 1 << 30 else 40)
    return _finish(row, t)


def print_table(rows: list[dict], extra: str | None = None) -> None:
    nan = float("nan")
    print(
        f"{'case':<10}{'B':>4}{'S':>7}{'median us':>12}{'p10-p90':>16}"
        f"{'GB/s':>8}{'floor us':>10}{'of floor':>9}{'err/tol':>9}"
        + (f"{extra:>9}" if extra else "")
    )
    for r in rows:
        if r.get("status") != "ok":
            print(f"{r['name']:<10}{r['B']:>4}{r['S']:>7}  {r.get('status')}")
            continue
        print(
            f"{r['name']:<10}{r['B']:>4}{r['S']:>7}{r['median_us']:>12.1f}"
            f"{r['p10_us']:>8.1f}-{r['p90_us']:<7.1f}{r['gb_per_s']:>8.0f}"
            f"{r.get('floor_us', nan):>10.1f}{r.get('of_floor', nan):>9.2f}"
            f"{r['error_used']:>9.3f}" + (f"{r.get(extra, ''):>9}" if extra else "")
        )


# --- the tricks' benchmarks ----------------------------------------------------------
# Each trick's cases live in gpu/bench_<slug>.py and use this module's harness (time_*,
# n_copies, _finish, record). Its run(quick, ceil) returns {results name: rows}.
TRICKS = tuple(
    sorted(p.stem.removeprefix("bench_") for p in rt.GPU_DIR.glob("bench_*.py"))
)


def run_trick(slug: str, quick: bool, ceil: dict | None, out: Path | None) -> int:
    """Run gpu/bench_<slug>.py's cases, print them, record each table; 1 if any row
    failed validation. Rows marked skipped (``is_skipped``) are no failure, and a
    table of skipped rows only is not recorded."""
    import importlib

    mod = importlib.import_module(f"gpu.bench_{slug}")
    ceil = ceil or ceilings_or_recorded()
    status = 0
    for name, rows in mod.run(quick=quick, ceil=ceil).items():
        print(f"--- {name}")
        getattr(mod, "print_table", print_table)(rows)
        skipped = [is_skipped(r) for r in rows]
        if out and not all(skipped):  # a table of skipped rows measured nothing
            record(name, rows, out, ceilings=ceil)
        status |= any(
            r.get("status") != "ok" and not s
            for r, s in zip(rows, skipped, strict=True)
        )
    return int(status)


def is_skipped(row: dict) -> bool:
    """A case this machine cannot run (e.g. "skipped: needs >= 2 GPUs"): neither a
    failure nor a figure."""
    return str(row.get("status", "")).startswith("skipped")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m gpu.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "what", choices=("ceilings", "attention", "split", "tiles", *TRICKS, "all")
    )
    ap.add_argument(
        "--quick", action="store_true", help="smaller grid, for trying things"
    )
    ap.add_argument("--version", type=int, action="append", help="kernel version(s)")
    ap.add_argument("--out", type=Path, default=None, help="record into this folder")
    args = ap.parse_args(argv)
    if not rt.available():
        print(f"no GPU here: {rt.why_unavailable()}", file=sys.stderr)
        return 2
    print(rt.device_summary())
    ceil = None
    if args.what in ("ceilings", "all"):
        ceil = ceilings(quick=args.quick)
        for k, v in ceil.items():
            print(f"  {k:<26}{v / 1e12:10.3f} T")
        if args.out:
            record("ceilings", [], args.out, ceilings=ceil)
    if args.what in ("attention", "all"):
        rows = attention(
            quick=args.quick,
            versions=tuple(args.version or (1, 2, 3, 4, 5, 6, 7, 8)),
            ceil=ceil,
        )
        print_table(rows)
        if args.out:
            record(
                "attention",
                rows,
                args.out,
                ceilings=ceil or ceilings_or_recorded(False),
            )
        if any(r.get("status") != "ok" for r in rows):
            return 1
    if args.what == "tiles":  # an experiment, not part of "all"
        rows = tile_sweep(ceil=ceil)
        print_table(rows, extra="n_split")
        if args.out:
            record("attention_tiles", rows, args.out)
    if args.what in ("split", "all"):
        rows = split_sweep(ceil=ceil)
        print_table(rows, extra="n_split")
        if args.out:
            record("attention_split", rows, args.out)
    status = 0
    for slug in TRICKS:
        if args.what in (slug, "all"):
            status |= run_trick(slug, args.quick, ceil, args.out)
    return status


if __name__ == "__main__":
    sys.exit(main())
