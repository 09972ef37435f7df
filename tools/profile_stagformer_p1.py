"""The plain 24-layer step of chapter 5's model at B = 1 (C = 2048, H = G = 16,
D = 128, F = 8192, S = 1024, fp16), as one persistent launch (gs.persistent_step,
p1-p6) and as GEMV v3's layered step: a quick look, not a recorded figure
(``python -m gpu.bench stagformer_persistent`` records them), and a process for a
profiler to attach to (tools/ncu_source.sh).

PYTHONPATH=$PWD python3 tools/profile_stagformer_p1.py [REPEATS] [LAYERS]

Runs each step REPEATS times (default 3; under ``ncu -k regex:stag_step_p`` the
first warms the module), checks the last version against v3 (relative norm of the
difference), then times each in a CUDA graph (bench.time_cupy) and prints
microseconds and the fraction of the step's floor (step_bytes over the card's read
ceiling, when results/<card>/ceilings.json has one). TT_TRACE_DIR=DIR first saves
the raw globaltimer stamps of 5 traced steps of p2-p6 as DIR/trace_pV.npy (steps,
SMs, L, 12); TT_PROFILE_ONLY=1 stops before the timing.
"""

import os
import sys
from functools import partial

import cupy as cp
import numpy as np

from gpu import bench, results
from gpu import bench_stagformer as bs
from gpu import runtime as rt
from gpu import stagformer as gs

reps = int(sys.argv[1]) if len(sys.argv) > 1 else 3
lz = int(sys.argv[2]) if len(sys.argv) > 2 else 2 * bs.L
rng = cp.random.default_rng(0)
doc = results.load("ceilings", results.card_slug(rt.device_info()["card"]))
read_bw = (doc or {}).get("ceilings", {}).get("read_bytes_per_s")
m, bf, e = bs.persistent_inputs(rng, lz)
pk = gs.pack_plain(m, bs.S)
k0, v0 = bf.k.copy(), bf.v.copy()
for ver in gs.P1_VERSIONS:
    for _ in range(reps):
        p1 = cp.asnumpy(gs.persistent_step(pk, bf, e, bs.S - 1, ver)).copy()
kp, vp = bf.k.copy(), bf.v.copy()
bf.k[...], bf.v[...] = k0, v0
for _ in range(reps):
    v3 = cp.asnumpy(gs.plain_step(m, bf, e, bs.S - 1, 3)).copy()
same_kv = bool(cp.array_equal(kp, bf.k)) and bool(cp.array_equal(vp, bf.v))
err = bench.rel_err(p1, v3)
print(
    f"p1 vs v3: rel err {err:.3g}; finite {np.isfinite(p1).all()}; K/V rows equal "
    f"{same_kv}; kv max diff {float(cp.abs(kp.astype(cp.float32) - bf.k).max()):.3g}"
)
tdir = os.environ.get("TT_TRACE_DIR")
if tdir:  # raw globaltimer stamps (steps, SMs, L, 12) of traced steps, as .npy
    os.makedirs(tdir, exist_ok=True)
    for ver in gs.P1_VERSIONS[1:]:
        trs = []
        for _ in range(5):
            tr = cp.zeros((rt.device_info()["sm_count"], lz, 12), cp.uint64)
            gs.persistent_step(pk, bf, e, bs.S - 1, ver, trace=tr)
            trs.append(cp.asnumpy(tr))
        np.save(os.path.join(tdir, f"trace_p{ver}.npy"), np.stack(trs))
if os.environ.get("TT_PROFILE_ONLY"):
    sys.exit(0)
nbytes = gs.step_bytes("plain", 1, bs.S, bs.C, bs.F, bs.H, bs.G, bs.D, lz // 2, 2)
cases = [(f"p{v}", partial(gs.persistent_step, pk, bf, e, bs.S - 1, v))
         for v in gs.P1_VERSIONS]  # fmt: skip
for name, fn in cases + [("v3", partial(gs.plain_step, m, bf, e, bs.S - 1, 3))]:
    t = bench.time_cupy([fn], samples=20).median_us
    floor = f" {nbytes / read_bw * 1e6 / t:.2f} of floor" if read_bw else ""
    print(f"{name} L={lz}: {t:9.1f} us{floor}")
