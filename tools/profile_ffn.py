"""One sigma-MoE layer (chapter 6's main case) for a profiler to attach to (ncu),
and its per-stage times with CUDA events.

PYTHONPATH=$PWD python3 tools/profile_ffn.py [VERSION] [T] [E] [REPEATS]

Runs the layer REPEATS times (default 3) after building its inputs; under
``ncu -k regex:... --launch-skip N`` the first layers warm the caches and the kernel
cache, and a later one is profiled.
"""

import math
import sys

import cupy as cp

from gpu import ffn_approx as gfa

ver = int(sys.argv[1]) if len(sys.argv) > 1 else 5
t = int(sys.argv[2]) if len(sys.argv) > 2 else 4096
e = int(sys.argv[3]) if len(sys.argv) > 3 else 32
reps = int(sys.argv[4]) if len(sys.argv) > 4 else 3
c, g, k = 1024, 128, 4
rng = cp.random.default_rng(0)
f16 = cp.float16
x = rng.standard_normal((t, c), dtype=cp.float32).astype(f16)
w1 = (rng.standard_normal((e, c, g), dtype=cp.float32) / math.sqrt(c)).astype(f16)
w2 = (rng.standard_normal((e, g, c), dtype=cp.float32) / math.sqrt(e * g)).astype(f16)
w3 = (rng.standard_normal((c, e), dtype=cp.float32) / math.sqrt(c)).astype(f16)
ws = gfa.workspace(t, c, e, g, k, f16)
out = cp.empty((t, c), f16)
for _ in range(reps):
    gfa.moe(x, w1, w2, w3, k, version=ver, out=out, ws=ws)
e0, e1 = cp.cuda.Event(), cp.cuda.Event()
e0.record()
for _ in range(10):
    gfa.moe(x, w1, w2, w3, k, version=ver, out=out, ws=ws)
e1.record()
e1.synchronize()
us = cp.cuda.get_elapsed_time(e0, e1) / 10 * 1e3
print(f"moe v{ver} T={t} E={e}: {us:.1f} us per layer (events, no graph)")
