"""Ablations of slim attention v7's, v8's or v10's attend kernel: the same kernel
with parts cut out by text substitution, compiled and timed alone
(gpu.bench.time_events: CUDA events, no graph). Timing only: the cut variants compute
wrong outputs by design. It is how the notes found which stage limits v7
(gpu/NOTES_slim_attention.md, "v7, second build"), v8 and v10.

PYTHONPATH=$PWD python3 tools/ablate_slim.py [B S [VARIANT,...] [VERSION]]

VERSION 7 (default), 8, 9, 10, 11 or 12 (v9-v12 are attend_v8 instantiations;
v11 and v12 are timed whole only);
ABLATE_NSPLIT=n in the environment sets n_split (v8-v10: P, the clusters).
Variants: full (unchanged; v7 also times v6 at B = 8, S = 16K), load_only (scorers
and consumers only wait for each stage and release it), load_score (the scorers
compute, nothing is exchanged, the consumers only release), load_pk (the consumers
run P . K without scores, the scorers only release). H = 32, D = 128 (C = 4096).
"""

import os
import sys
from functools import partial

import cupy as cp
import numpy as np

from gpu import bench
from gpu import runtime as rt
from gpu import slim_attention as sa

SRC = open("gpu/slim_attention.cu").read()
WAIT_TILE = "      mbar_wait(&full[s], (t / NS7) & 1);\n"
RELEASE = "      __syncwarp();\n      if (lane == 0) mbar_arrive(&empty[s]);\n    }\n"
PK = {
    7: "      pk_accumulate7<MT, NT, RW>(acc_r, alt, pst, kt + s * NK7 * RW, cw, "
    "lane);\n",
    8: "      pk_accumulate7<MT, NT, RW, TM>(acc_r, alt, pst, kt + s * NK7 * RW, cw,\n"
    "                                     lane);\n",
}
ENDS = {7: '// extern "C": one symbol per storage type', 8: "// v8's partial slots"}


NSPLIT = int(os.environ["ABLATE_NSPLIT"]) if "ABLATE_NSPLIT" in os.environ else None


def body_of(ver: int) -> tuple[int, int, str]:
    """(start, end, text) of the function v<ver> runs (v9-v12: attend_v8's)."""
    fn = 8 if ver in (9, 10, 11, 12) else ver
    i0 = SRC.rindex("template <", 0, SRC.index(f"__device__ void attend_v{fn}("))
    i1 = SRC.index(ENDS[fn], i0)
    return i0, i1, SRC[i0:i1]


def variants(ver: int) -> dict:
    if ver in sa.SOFTMAX_WARP:  # v11, v12: their roles differ; timed whole only
        return {"full": []}
    _, _, body = body_of(ver)

    def region(start: str, end: str) -> str:
        i = body.index(start) + len(start)
        return body[i : body.index(end, i)]

    fn = 8 if ver in (9, 10) else ver
    scorer = region(WAIT_TILE, f"    // [v{fn} scorers end]")
    consumer = region(
        "float* alt = alpha + (t & 1) * M;\n", f"    // [v{fn} consumers end]"
    )
    score_only = (
        scorer[: scorer.index("      named_sync(2, 32 * NSC7);  // the last push")]
        + "      if (lane == 0) stg[sw] = c4[0][0];\n    }\n"
    )
    return {
        "full": [],
        "load_only": [(scorer, RELEASE), (consumer, WAIT_TILE + RELEASE)],
        "load_score": [(scorer, score_only), (consumer, WAIT_TILE + RELEASE)],
        "load_pk": [(scorer, RELEASE), (consumer, WAIT_TILE + PK[fn] + RELEASE)],
    }


def variant(ver: int, subs) -> str:
    i0, i1, body = body_of(ver)
    for old, new in subs:
        assert old in body, old[:60]
        body = body.replace(old, new)
    return SRC[:i0] + body + SRC[i1:]


def main():
    b, s = (int(a) for a in sys.argv[1:3]) if len(sys.argv) > 2 else (8, 16384)
    top = int(sys.argv[4]) if len(sys.argv) > 4 else 7
    table = variants(top)
    names = sys.argv[3].split(",") if len(sys.argv) > 3 else list(table)
    h, d = 32, 128
    c = h * d
    cs, mt = c // sa.CL, 2
    rng = cp.random.default_rng(0)
    q = rng.standard_normal((b, h, d), dtype=cp.float32).astype(cp.float16)
    cache = rng.standard_normal((b, s, c), dtype=cp.float32).astype(cp.float16)
    i32 = np.int32
    for name in names:
        mod = cp.RawModule(code=variant(top, table[name]), options=rt.NVRTC_OPTIONS)
        both = name == "full" and top == 7 and (b, s) == (8, 16384)
        for ver in (6, 7) if both else (top,):
            n, chunk = sa.plan(ver, b, h, s, d, NSPLIT)
            rows = n + b - 1 if ver in sa.PERSISTENT else b * n
            acc = cp.zeros(rows * h * c, cp.float32)
            ml = cp.zeros(rows * h * 2, cp.float32)
            last = i32(b) if ver in sa.PERSISTENT else i32(chunk)
            src = sa.v10_tensor_map(cache, s) if ver in sa.TENSOR_MAP else cache
            args = (q, src, acc, ml, i32(h), i32(s), i32(s), i32(d), last)
            fn = mod.get_function(f"slim_attention_attend_v{ver}_m{mt}c{cs}")
            smem = sa.v4_smem_bytes(mt, cs, False, ver)
            fn.max_dynamic_shared_size_bytes = smem
            grid = (sa.CL, n) if ver in sa.PERSISTENT else (sa.CL, n, b)
            launch = [partial(fn, grid, (sa.threads(ver, cs),), args,
                              shared_mem=smem)]  # fmt: skip
            t = bench.time_events(launch, samples=20, warmup=3).median_us
            gbs = 2 * b * s * c / t / 1e3
            print(f"{name:12s} v{ver} B={b} S={s} n={n} attend {t:8.1f} us", end="")
            print(f" {gbs:6.0f} GB/s")


if __name__ == "__main__":
    main()
