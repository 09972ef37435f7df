"""The sparse MLP of one decode step (chapter 4's main case, C = 4096, F = 16384,
fp16) for a profiler to attach to (ncu), or a quick sweep of graph-timed versions.

PYTHONPATH=$PWD python3 tools/profile_deja_vu.py [VERSIONS] [KEPT] [B] [REPEATS]

VERSIONS a comma list (default 5), KEPT a comma list of kept fractions (default 0.1).
Environment: TT_V5="blocks=66,finishers=16" (v5/v6 plan), TT_SETS (weight copies
to rotate), TT_IDX=contig (the first K rows instead of K random ones). v5 and v6
also print a timeline: eight global-timer stamps per block.
Each (version, kept) runs REPEATS times (default 3) on one weight set, so that under
``ncu -k regex:... --launch-skip N`` the first calls warm the kernel cache and a
later one is profiled (TT_PROFILE_ONLY=1 stops there); then it is timed as the
benchmark times it (a CUDA graph over weight copies that together exceed 2x L2,
median of the replays), and one line per case is printed. A quick look, not a
recorded figure: the benchmark (python -m gpu.bench deja_vu) records those.
"""

import math
import os
import sys

import cupy as cp
import numpy as np

from gpu import bench
from gpu import deja_vu as gdv

vers = [int(v) for v in (sys.argv[1] if len(sys.argv) > 1 else "5").split(",")]
kepts = [float(v) for v in (sys.argv[2] if len(sys.argv) > 2 else "0.1").split(",")]
b = int(sys.argv[3]) if len(sys.argv) > 3 else 1
reps = int(sys.argv[4]) if len(sys.argv) > 4 else 3
c, f = 4096, 16384
rng = cp.random.default_rng(0)
f16 = cp.float16


def layer():
    w1 = (rng.standard_normal((f, c), dtype=cp.float32) / math.sqrt(c)).astype(f16)
    w2 = (rng.standard_normal((f, c), dtype=cp.float32) / 40.0).astype(f16)
    b1 = (0.1 * rng.standard_normal(f, dtype=cp.float32)).astype(f16)
    b2 = (0.1 * rng.standard_normal(c, dtype=cp.float32)).astype(f16)
    return w1, b1, w2, b2


tune = os.environ.get("TT_V5", "").split(",")
TRACE = ("entry", "ids", "row0", "a", "phase2", "ticket", "all_in", "end")
n_sets = bench.n_copies(gdv.bytes_moved(b, c, int(min(kepts) * f), 2))
n_sets = int(os.environ.get("TT_SETS", n_sets))  # 1: L2- and TLB-warm
sets = [layer() for _ in range(n_sets)]
x = rng.standard_normal((b, c), dtype=cp.float32).astype(f16)
for kept in kepts:
    k = round(kept * f)
    idx = [cp.asarray(np.sort(np.random.default_rng(j).permutation(f)[:k]), cp.int32)
           for j in range(n_sets)]  # fmt: skip
    if os.environ.get("TT_IDX") == "contig":  # the first K rows: few pages
        idx = [cp.arange(k, dtype=cp.int32) for _ in range(n_sets)]
    for ver in vers:
        mode = "atomic" if ver in (2, 3, 4) else "deterministic"
        ws = [gdv.new_workspace(ver, b, c, k, mode) for _ in sets]
        outs = [cp.empty((b, c), f16) for _ in sets]

        def call(j, ver=ver, mode=mode, ws=ws, outs=outs, idx=idx):
            kw = dict(version=ver, mode=mode, out=outs[j], workspace=ws[j])
            if ver == 5:  # TT_V5="finishers=16" to try another plan
                kw |= {a: int(v) for a, v in (p.split("=") for p in tune if p)}
            return gdv.sparse_mlp(x, *sets[j], idx[j], check_idx=False, **kw)

        for _ in range(reps):
            call(0)
        cp.cuda.Device().synchronize()
        if os.environ.get("TT_PROFILE_ONLY"):  # under ncu: the calls above suffice
            continue
        t = bench.time_cupy([lambda j=j: call(j) for j in range(n_sets)], samples=20)
        if ver in gdv.RING:  # one more call with a trace, on a set not in L2
            tr = cp.zeros(8 * 4096, cp.uint64)
            kw = dict(version=ver, out=outs[0], workspace=ws[0], trace=tr)
            kw |= {a: int(v) for a, v in (p.split("=") for p in tune if p)}
            gdv.sparse_mlp(x, *sets[0], idx[0], check_idx=False, **kw)
            tr = cp.asnumpy(tr).reshape(-1, 8).astype(np.int64)
            tr = tr[tr[:, 0] > 0]
            t0 = tr[:, 0].min()
            cols = []
            for i, what in enumerate(TRACE):
                v = tr[:, i][tr[:, i] > 0] - t0
                if v.size:
                    cols.append(f"{what} {np.median(v) / 1e3:.1f}/{v.max() / 1e3:.1f}")
            print(f"  trace v{ver} kept={kept:.2f} G={len(tr)} (median/max us from "
                  f"the first entry): " + ", ".join(cols))  # fmt: skip
        tbs = gdv.bytes_moved(b, c, k, 2) / t.median_us / 1e6
        print(f"v{ver} B={b} kept={kept:.2f} K={k}: {t.median_us:7.2f} us, "
              f"{tbs:.2f} TB/s of the fewest bytes")  # fmt: skip
