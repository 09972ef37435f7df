"""One decode-attention case for a profiler to attach to (ncu), v7 then torch SDPA.

PYTHONPATH=$PWD ncu --section SpeedOfLight ...
    python3 tools/profile_attention.py B S [VERSION ...]
"""

import sys

import cupy as cp
import numpy as np

from gpu.attention import decode_attention
from gpu.bench import random_normal

b, s = (int(a) for a in sys.argv[1:3])
versions = [int(a) for a in sys.argv[3:]] or [7]
h = g = 32
d = 128
rng = cp.random.default_rng(0)
q, k, v = (  # drawn a batch row at a time: no float32 temporary of a whole cache
    random_normal(rng, shape, cp.float16)
    for shape in ((b, h, d), (b, g, s, d), (b, g, s, d))
)
for ver in versions:
    for _ in range(3):
        decode_attention(q, k, v, version=ver)
cp.cuda.Device().synchronize()
try:
    import torch
    import torch.nn.functional as F

    tq, tk, tv = (torch.from_dlpack(x) for x in (q[:, :, None], k, v))
    for _ in range(3):
        F.scaled_dot_product_attention(tq, tk, tv)
    torch.cuda.synchronize()
except ImportError:
    pass
print("done", np.__version__)
