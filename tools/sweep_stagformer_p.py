"""Chapter 5's plain 24-layer step at B = 1 as one persistent launch, swept over the
ring's slots and the producer's in-flight window (p2, p4, p5): an experiment for
gpu/NOTES_stagformer.md, not a recorded figure (``python -m gpu.bench
stagformer_persistent`` records the versions at their defaults).

PYTHONPATH=$PWD python3 tools/sweep_stagformer_p.py [OUT.json]

For each (version, stages, window): checks the step against v3's layered step
(relative norm), times it in a CUDA graph (bench.time_cupy, median of 20), traces
one step (trace_summary: median µs of each phase and barrier) and prints a row;
the rows go to OUT.json when given.
"""

import json
import sys
from functools import partial

import cupy as cp
import numpy as np

from gpu import bench
from gpu import bench_stagformer as bs
from gpu import runtime as rt
from gpu import stagformer as gs

# the first sweep (NOTES): p2 with 4, 6, 8 and 11 slots, p4 with windows 1-8
# the second (H200): p2, p4 with windows 1 and 2, p5 with 1-3, p5 with 6 slots
CONFIGS = [(2, None, None), (5, None, 2)] + [(6, None, w) for w in (1, 2, 3, 4)]

rng = cp.random.default_rng(0)
lz = 2 * bs.L
m, bf, e = bs.persistent_inputs(rng, lz)
pk = gs.pack_plain(m, bs.S)
k0, v0 = bf.k.copy(), bf.v.copy()
ref = cp.asnumpy(gs.plain_step(m, bf, e, bs.S - 1, 3)).copy()
rows = []
for ver, st, win in CONFIGS:
    kw = dict(stages=st)
    if ver >= 4:
        kw["window"] = win
    bf.k[...], bf.v[...] = k0, v0
    bf.out.fill(np.nan)
    try:
        got = cp.asnumpy(gs.persistent_step(pk, bf, e, bs.S - 1, ver, **kw)).copy()
    except ValueError as err:  # a configuration that does not fit: say so, go on
        print(f"p{ver} st={st} win={win}: {err}", flush=True)
        continue
    err = bs.rel_err(got, ref) if np.isfinite(got).all() else float("nan")
    t = bench.time_cupy(
        [partial(gs.persistent_step, pk, bf, e, bs.S - 1, ver, **kw)], samples=20
    ).median_us
    tr = cp.zeros((rt.sm_count(), lz, 12), np.uint64)
    gs.persistent_step(pk, bf, e, bs.S - 1, ver, trace=tr, **kw)
    ts = bs.trace_summary(cp.asnumpy(tr))
    ph = ts["phases_median_us"]
    rows.append(dict(version=ver, stages=st, window=win, median_us=t, rel_err=err,
                     trace=ts))  # fmt: skip
    print(
        f"p{ver} st={st} win={win}: {t:8.1f} us err {err:.2g} | "
        + " ".join(f"{k}={v:.1f}" for k, v in ph.items())
        + f" | lead {ts['producer_lead_median_us']:.1f}",
        flush=True,
    )
if len(sys.argv) > 1:
    with open(sys.argv[1], "w") as f:
        json.dump(dict(device=rt.device_info(), rows=rows), f, indent=1)
