"""Ablations of slim attention v7's attend kernel: the same kernel with parts cut
out by text substitution, compiled and timed alone (gpu.bench.time_events: CUDA
events, no graph). Timing only: the cut variants compute wrong outputs by design.
It is how the notes found which stage limits v7 (gpu/NOTES_slim_attention.md,
"v7, second build").

PYTHONPATH=$PWD python3 tools/ablate_slim.py [B S [VARIANT,...]]

Variants: v7 (unchanged; also times v6 at B = 8, S = 16K), load_only (scorers and
consumers only wait for each stage and release it), load_score (the scorers
compute, nothing is exchanged, the consumers only release), load_pk (the consumers
run P . K without scores, the scorers only release). H = 32, D = 128 (C = 4096).
"""

import sys
from functools import partial

import cupy as cp
import numpy as np

from gpu import bench
from gpu import runtime as rt
from gpu import slim_attention as sa

SRC = open("gpu/slim_attention.cu").read()
I0 = SRC.index("template <int MT, int CS>\n__device__ void attend_v7(")
I1 = SRC.index('// extern "C": one symbol per storage type')
BODY = SRC[I0:I1]


def region(start: str, end: str) -> str:
    i = BODY.index(start) + len(start)
    return BODY[i : BODY.index(end, i)]


WAIT_TILE = "      mbar_wait(&full[s], (t / NS7) & 1);\n"
SCORER = region(WAIT_TILE, "    // [v7 scorers end]")
CONSUMER = region("float* alt = alpha + (t & 1) * M;\n", "    // [v7 consumers end]")
RELEASE = "      __syncwarp();\n      if (lane == 0) mbar_arrive(&empty[s]);\n    }\n"
PK = "      pk_accumulate7<MT, NT, RW>(acc_r, alt, pst, kt + s * NK7 * RW, cw, lane);\n"
SCORE_ONLY = (
    SCORER[: SCORER.index("      named_sync(2, 32 * NSC7);  // the last push")]
    + "      if (lane == 0) stg[sw] = c4[0][0];\n    }\n"
)
VARIANTS = {
    "v7": [],
    "load_only": [(SCORER, RELEASE), (CONSUMER, WAIT_TILE + RELEASE)],
    "load_score": [(SCORER, SCORE_ONLY), (CONSUMER, WAIT_TILE + RELEASE)],
    "load_pk": [(SCORER, RELEASE), (CONSUMER, WAIT_TILE + PK + RELEASE)],
}


def variant(subs) -> str:
    body = BODY
    for old, new in subs:
        assert old in body, old[:60]
        body = body.replace(old, new)
    return SRC[:I0] + body + SRC[I1:]


def main():
    b, s = (int(a) for a in sys.argv[1:3]) if len(sys.argv) > 2 else (8, 16384)
    names = sys.argv[3].split(",") if len(sys.argv) > 3 else list(VARIANTS)
    h, d = 32, 128
    c = h * d
    cs, mt = c // sa.CL, 2
    rng = cp.random.default_rng(0)
    q = rng.standard_normal((b, h, d), dtype=cp.float32).astype(cp.float16)
    cache = rng.standard_normal((b, s, c), dtype=cp.float32).astype(cp.float16)
    i32 = np.int32
    for name in names:
        mod = cp.RawModule(code=variant(VARIANTS[name]), options=rt.NVRTC_OPTIONS)
        both = name == "v7" and (b, s) == (8, 16384)
        for ver in (6, 7) if both else (7,):
            n, chunk = sa.plan(ver, b, h, s, d)
            acc = cp.zeros(b * n * h * c, cp.float32)
            ml = cp.zeros(b * n * h * 2, cp.float32)
            args = (q, cache, acc, ml, i32(h), i32(s), i32(s), i32(d), i32(chunk))
            fn = mod.get_function(f"slim_attention_attend_v{ver}_m{mt}c{cs}")
            smem = sa.v4_smem_bytes(mt, cs, False, ver)
            fn.max_dynamic_shared_size_bytes = smem
            launch = [partial(fn, (sa.CL, n, b), (sa.threads(ver, cs),), args,
                              shared_mem=smem)]  # fmt: skip
            t = bench.time_events(launch, samples=20, warmup=3).median_us
            gbs = 2 * b * s * c / t / 1e3
            print(f"{name:12s} v{ver} B={b} S={s} n={n} attend {t:8.1f} us", end="")
            print(f" {gbs:6.0f} GB/s")


if __name__ == "__main__":
    main()
