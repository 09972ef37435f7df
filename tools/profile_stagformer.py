"""The GEMVs of one StagFormer layer (chapter 5's model: C = 2048, H = G = 16,
D = 128, F = 8192, fp16 weights) alone, for a profiler to attach to (ncu), or a
quick graph-timed sweep of the GEMV versions.

PYTHONPATH=$PWD python3 tools/profile_stagformer.py [VERSIONS] [NS] [SHAPES] [REPEATS]

VERSIONS and NS (rows of x) are comma lists (default 2,3,4,5 and 1,8,64); SHAPES a
comma list of qkv, o, up, down (default all four; TT_V4_TARGET sets v4's
target block count, which sets its split of K): q|k|v (2048 x 6144, float32 x),
o (2048 x 2048, fp16 x: the attention's output), up (2048 x 8192, ReLU), down
(8192 x 2048, residual). Each case runs REPEATS times (default 3) on its first
weight copy, so that under ``ncu -k regex:stag_gemv --launch-skip N`` the first
calls warm the module and a later one is profiled (TT_PROFILE_ONLY=1 stops there);
then it is timed as the benchmark times (one CUDA graph cycling over 4 weight
copies, more than 2x L2 for every shape but o; median of the replays) and one line
is printed: microseconds, the weight's bytes over that time, and the same against
the card's read ceiling when results/<card>/ceilings.json has one. A quick look,
not a recorded figure: ``python -m gpu.bench stagformer`` records the steps.
"""

import functools
import math
import os
import sys

import cupy as cp
import numpy as np

from gpu import bench, results
from gpu import runtime as rt
from gpu import stagformer as gs
from gpu.bench_stagformer_gemv import SHAPES  # name: (K, M, x dtype, act, res)

vers = [int(v) for v in (sys.argv[1] if len(sys.argv) > 1 else "2,3,4,5").split(",")]
ns = [int(v) for v in (sys.argv[2] if len(sys.argv) > 2 else "1,8,64").split(",")]
names = (sys.argv[3] if len(sys.argv) > 3 else "qkv,o,up,down").split(",")
reps = int(sys.argv[4]) if len(sys.argv) > 4 else 3
COPIES = 4
if os.environ.get("TT_V4_TARGET"):  # v4's blocks a launch (sets KB and kc)
    gs.TARGET_BLOCKS_V4 = int(os.environ["TT_V4_TARGET"])
rng = cp.random.default_rng(0)
doc = results.load("ceilings", results.card_slug(rt.device_info()["card"]))
read_bw = (doc or {}).get("ceilings", {}).get("read_bytes_per_s")
print(rt.device_info()["card"], f"read ceiling {read_bw and read_bw / 1e12:.3} TB/s")


def gemv_one(x, y, r, act, v, sc, w):
    return gs.gemv(
        [x], [w], [y], res=None if r is None else [r], act=act, version=v, scratch=sc
    )


for name in names:
    k, m, xdt, act, res = SHAPES[name]
    ws = [
        (rng.standard_normal((k, m), dtype=cp.float32) / math.sqrt(k)).astype(
            cp.float16
        )
        for _ in range(COPIES)
    ]
    for n in ns:
        x = rng.standard_normal((n, k), dtype=cp.float32).astype(xdt)
        r = rng.standard_normal((n, m), dtype=cp.float32) if res else None
        y = cp.zeros((n, m), cp.float32)
        sc = gs.new_scratch(*gs.gemv_workspace(n, k, m, np.float16, 1))
        for v in vers:
            call = functools.partial(gemv_one, x, y, r if res else None, act, v, sc)

            for _ in range(reps):
                call(ws[0])
            cp.cuda.Device().synchronize()
            if os.environ.get("TT_PROFILE_ONLY"):
                continue
            t = bench.time_cupy([lambda w=w, c=call: c(w) for w in ws], samples=30)
            us = t.median_us
            gbs = k * m * 2 / (us * 1e-6) / 1e9
            share = f"{gbs * 1e9 / read_bw:.2f} of read" if read_bw else ""
            p = gs.v4_plan(n, k, m, xdt == np.float32) if v == 4 else {}
            plan = (
                f"  KB={p['kb']} kc={p['kc']} blocks={p['tiles'] * p['kb']}"
                if p
                else ""
            )
            print(
                f"{name:5s} N={n:3d} v{v}: {us:8.2f} us  {gbs:7.0f} GB/s  {share}{plan}"
            )
