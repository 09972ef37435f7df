"""One slim-attention decode case for a profiler to attach to (ncu), and its
per-stage times with CUDA events.

PYTHONPATH=$PWD python3 tools/profile_slim.py B S VERSION [x] [n_split]
"""

import math
import sys

import cupy as cp

from gpu import slim_attention as sa
from gpu.bench import random_normal

b, s, ver = (int(a) for a in sys.argv[1:4])
xc = len(sys.argv) > 4 and sys.argv[4] == "x"
n_split = int(sys.argv[5]) if len(sys.argv) > 5 else None
h, d = 32, 128
c = h * d
rng = cp.random.default_rng(0)
q = rng.standard_normal((b, h, d), dtype=cp.float32).astype(cp.float16)
cache = random_normal(rng, (b, s, c), cp.float16)  # no float32 temporary of it
w = (rng.standard_normal((c, c), dtype=cp.float32) / math.sqrt(c)).astype(cp.float16)
wkt = sa.xcache_wkt(w, h) if xc else None
out = cp.empty_like(q)
ws = sa.new_workspace(ver, b, h, s, d, n_split, xc)


def step():
    if xc:
        return sa.xcache_decode(
            q, cache, wkt, w, None, version=ver, n_split=n_split, out=out, workspace=ws
        )
    return sa.slim_decode(
        q, cache, w, None, version=ver, n_split=n_split, out=out, workspace=ws
    )


for _ in range(3):
    step()
e0, e1 = cp.cuda.Event(), cp.cuda.Event()
e0.record()
for _ in range(10):
    step()
e1.record()
e1.synchronize()
t = cp.cuda.get_elapsed_time(e0, e1) / 10 * 1e3
print(
    f"B={b} S={s} v{ver}{' x' if xc else ''} n_split={sa.split_plan(b, s, n_split)}"
    f" step {t:.1f} us ({2 * b * s * c / t / 1e3:.0f} GB/s of cache)"
)
