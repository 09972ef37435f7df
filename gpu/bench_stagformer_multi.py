"""The StagFormer step across two GPUs (issue 8), run through gpu/bench.py.

    python -m gpu.bench stagformer_multi [--quick] [--out results]

Needs >= 2 devices: with fewer, ``run`` returns one row a case with status
"skipped: needs >= 2 GPUs" (gpu/bench.py neither fails on those nor records a table
made only of them). The model and shapes are gpu/bench_stagformer.py's (C = 2048,
2 x 12 layers, cache length 1024, fp16, B in {1, 8, 64}; quick: B = 1). For
separate and for shared weights, at each GEMV version:

  <kind>_one_gpu_sequential  gs.decode_step, schedule "stack1_first", on GPU 0
                             (floor: its step_bytes over the read ceiling)
  <kind>_two_gpu             stack 1 on GPU 0, stack 2 on GPU 1
                             (gpu/stagformer_multi.py); floor:
                             max(bytes of stack 1, bytes of stack 2) / read ceiling
                             + B C 4 bytes / the measured peer bandwidth

Validation before timing: the two-GPU step's h and o must equal the one-GPU
sequential step's bit for bit on the timed model (same caches, same inputs). Timing:
whole steps captured in one CUDA graph on GPU 0's origin stream (both devices'
streams fork from it and join it); if the capture fails across devices, eager
launches between events on the origin stream (field "timing" says which). The peer
bandwidth is measured in the same run (256 MiB copies), and the time of one B C 4
byte copy alone is recorded beside it ("transfer_us_measured").
"""

from __future__ import annotations

import sys
from functools import partial

import numpy as np

from gpu import bench
from gpu import bench_stagformer as bs
from gpu import runtime as rt
from gpu import stagformer as gs
from gpu import stagformer_multi as sm
from gpu.bench_stagformer import (
    QUICK_BATCHES,
    VERSIONS,
    C,
    D,
    F,
    G,
    H,
    L,
    S,
    fill_caches,
    random_model,
)

BATCHES = (1, 8, 64)  # the one-GPU step also times B = 4; two GPUs keep these
SKIP = "skipped: needs >= 2 GPUs"
KINDS = (("sep", False), ("shared", True))
# bench_stagformer's model; no baseline rows: each two_gpu row carries
# speedup_vs_one_gpu against the one-GPU sequential step of the same model.
GRID = bench.Grid(
    axes=dict(B=BATCHES, kind=tuple(t for t, _ in KINDS)),
    quick=dict(B=QUICK_BATCHES),
    fixed=dict(bs.GRID.fixed, devices=2),
    versions=VERSIONS,
)
COLUMNS = (
    ("case", "name", "<27"),
    ("v", "version", ">3"),
    ("B", "B", ">4"),
    bench.MEDIAN,
    bench.FLOOR,
    bench.OF_FLOOR,
    ("x 1 GPU", "speedup_vs_one_gpu", ">9.2f"),
    ("timing", "timing", ">8"),
)


def n_devices() -> int:
    """CUDA devices here (0 without CuPy or a device)."""
    if not rt.available():
        return 0
    import cupy as cp

    return int(cp.cuda.runtime.getDeviceCount())


def _row(name: str, kind: str, b: int, version: int) -> dict:
    return dict(
        name=name, kind=kind, B=b, S=S, C=C, F=F, L_stack=L, dtype="float16",
        version=version,
    )  # fmt: skip


def skipped_rows(batches, n: int) -> list[dict]:
    rows = []
    for b, (tag, shared) in ((b, k) for b in batches for k in KINDS):
        for ver in VERSIONS[b]:
            for what in ("one_gpu_sequential", "two_gpu"):
                row = _row(f"{tag}_{what}", "shared" if shared else "separate", b, ver)
                row.update(status=SKIP, devices_here=n)
                rows.append(row)
    return rows


def peer_bandwidth(src: int, dst: int, nbytes: int = 256 << 20) -> float:
    """Bytes/s of cudaMemcpyPeerAsync from device src to dst (median of 10)."""
    import cupy as cp

    with cp.cuda.Device(dst):
        b = cp.empty(nbytes, cp.uint8)
    with cp.cuda.Device(src):
        a = cp.empty(nbytes, cp.uint8)
        t = _copy_time_us(a, b, reps=1, samples=10)
    return nbytes / (t * 1e-6)


def _copy_time_us(a, b, reps: int, samples: int) -> float:
    """Median us per copy a -> b of ``reps`` back-to-back copies, on a stream of
    a's device (current)."""
    import cupy as cp

    stream = cp.cuda.Stream(non_blocking=True)
    start, end = cp.cuda.Event(), cp.cuda.Event()
    for _ in range(2):
        sm.copy_async(b, a, stream)
    ts = []
    for _ in range(samples):
        start.record(stream)
        for _ in range(reps):
            sm.copy_async(b, a, stream)
        end.record(stream)
        end.synchronize()
        ts.append(cp.cuda.get_elapsed_time(start, end) * 1e3 / reps)
    return float(np.median(ts))


def transfer_us(src: int, dst: int, nbytes: int) -> float:
    """Time of one copy of nbytes from src to dst, measured alone (latency included)."""
    import cupy as cp

    with cp.cuda.Device(dst):
        b = cp.empty(nbytes // 4, cp.float32)
    with cp.cuda.Device(src):
        a = cp.zeros(nbytes // 4, cp.float32)
        return _copy_time_us(a, b, reps=64, samples=20)


def time_multi(ms, es, pos, version, samples: int = 20, warmup: int = 3):
    """(Timing, method) of ``ms.step``: bench.MIN_CALLS steps a sample, in one CUDA
    graph on an origin stream of stage 0's device, or eagerly if capture fails."""
    import cupy as cp

    calls = bench.MIN_CALLS
    d0 = ms.stages[0].device
    with cp.cuda.Device(d0):
        origin = cp.cuda.Stream(non_blocking=True)
        ms.step(es, pos, version=version, origin=origin)  # load modules, outside
        origin.synchronize()
        ms.reset_events()
        method = "graph"
        try:
            with origin:
                origin.begin_capture()
                try:
                    for _ in range(calls):
                        ms.step(es, pos, version=version, origin=origin)
                except Exception:
                    origin.end_capture()
                    raise
                graph = origin.end_capture()
            graph.upload(origin)

            def run():
                graph.launch(origin)

        except Exception as err:  # multi-device capture refused: time eagerly
            method = f"eager ({type(err).__name__}: {err})"[:200]
            cp.cuda.Device(d0).synchronize()
            ms.reset_events()

            def run():
                for _ in range(calls):
                    ms.step(es, pos, version=version, origin=origin)

        start, end = cp.cuda.Event(), cp.cuda.Event()
        per = []
        for i in range(warmup + samples):
            start.record(origin)
            run()
            end.record(origin)
            end.synchronize()
            if i >= warmup:
                per.append(cp.cuda.get_elapsed_time(start, end) * 1e3 / calls)
    ms.reset_events()  # the events' records were inside the graph
    return bench.summarise(per, calls), method


def _cases(b, tag, shared, devices, rng, ceil, peer_bw) -> list[dict]:
    import cupy as cp

    d0, d1 = devices
    pos = S - 1
    kind = "shared" if shared else "separate"
    with cp.cuda.Device(d0):
        m = random_model(L, shared, rng)
        bf = gs.new_buffers(m, b, pos)
        fill_caches(bf, rng)
        e = rng.standard_normal((b, C), dtype=cp.float32)
        h_prev = rng.standard_normal((b, C), dtype=cp.float32)
    ms = sm.place(m, devices, b, pos)
    ms.load(bf)
    ms.prime(h_prev)
    with cp.cuda.Device(d1):
        e1 = cp.empty_like(e)
        sm.copy_async(e1, e, ms.stages[1].stream)
    ms.synchronize()
    read_bw = ceil.get("read_bytes_per_s")
    s1, s2 = sm.stage_bytes(b, S, C, F, H, G, D, L, 2)
    xfer = sm.transfer_bytes(b, C)
    xfer_us = transfer_us(d0, d1, xfer)
    rows = []
    for ver in VERSIONS[b]:
        one = _row(f"{tag}_one_gpu_sequential", kind, b, ver)
        one["bytes"] = gs.step_bytes(
            "shared_seq" if shared else "separate", b, S, C, F, H, G, D, L, 2
        )
        two = _row(f"{tag}_two_gpu", kind, b, ver)
        two.update(
            devices=list(devices), bytes=s1 + s2, bytes_stack1=s1, bytes_stack2=s2,
            transfer_bytes=xfer, peer_bytes_per_s=peer_bw,
            transfer_us_measured=xfer_us,
        )  # fmt: skip
        if read_bw:
            one["floor_us"] = one["bytes"] / read_bw * 1e6
            two["floor_us"] = sm.floor_us(s1, s2, xfer, read_bw, peer_bw)
        with cp.cuda.Device(d0):
            bf.out.fill(np.nan)
            gs.decode_step(m, bf, e, h_prev, pos, schedule="stack1_first", version=ver)
            want = cp.asnumpy(bf.out)
        for st in ms.stages:
            with cp.cuda.Device(st.device), st.stream:
                st.bufs.out.fill(np.nan)
        h, o = ms.step([e, e1], pos, version=ver)
        ms.synchronize()
        with cp.cuda.Device(d0):
            got_h = cp.asnumpy(h)
        with cp.cuda.Device(d1):
            got_o = cp.asnumpy(o)
        ok = np.isfinite(want).all() and np.array_equal(got_h, want[0])
        ok = ok and np.array_equal(got_o, want[1])
        if not ok:
            for r in (one, two):
                r["status"] = "FAILED validation (two-GPU step != one-GPU, bitwise)"
                print(f"  {r['name']} v{ver} B={b}: {r['status']}", file=sys.stderr)
            rows += [one, two]
            continue
        with cp.cuda.Device(d0):
            step = partial(
                gs.decode_step, m, bf, e, h_prev, pos, schedule="stack1_first",
                version=ver,
            )  # fmt: skip
            one = bench.finish(one, bench.time_cupy([step], samples=20))
        t, method = time_multi(ms, [e, e1], pos, ver)
        two = bench.finish(two, t)
        two["timing"] = method
        two["speedup_vs_one_gpu"] = one["median_us"] / two["median_us"]
        rows += [one, two]
    del m, bf, ms
    for d in devices:
        with cp.cuda.Device(d):
            bench.free([])
    return rows


def run(quick: bool = False, ceil: dict | None = None) -> dict[str, list[dict]]:
    batches = QUICK_BATCHES if quick else BATCHES
    n = n_devices()
    if n < 2:
        return {"stagformer_multi": skipped_rows(batches, n)}
    import cupy as cp

    ceil = ceil or {}
    devices = [0, 1]
    sm.enable_peer_access(devices)
    peer_bw = peer_bandwidth(0, 1)
    with cp.cuda.Device(0):
        rng = cp.random.default_rng(2026)
    rows = []
    for b in batches:
        for tag, shared in KINDS:
            rows += _cases(b, tag, shared, devices, rng, ceil, peer_bw)
    return {"stagformer_multi": rows}


def print_table(rows: list[dict]) -> None:
    """The table under COLUMNS (gpu.bench.print_table)."""
    bench.print_table(rows, COLUMNS)
