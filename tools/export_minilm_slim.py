"""Export what the GPU needs to repeat the chapter's MiniLM study of slim attention.

    .venv/bin/python tools/export_minilm_slim.py [OUT]   (default .data/minilm_slim.npz)

The GPU machine has no MiniLM package, safetensors or tokenizers, so this runs where
the reference does (CPU) and writes, per layer i of all-MiniLM-L6-v2 on
reference.slim_attention.MINILM_TEXT: the layer's input x_i (T, C) and its attention
projections w_q, w_k, w_v, b_q, b_k, b_v, all float64, plus n_heads. A device call
carries the file (run's ``carry``: ".data/minilm_slim.npz") and the benchmark
(gpu/bench_slim_attention.py, minilm_errors) runs each layer through the GPU
kernels in float16 beside the NumPy study.
"""

import sys
from pathlib import Path

import numpy as np

from reference import minilm
from reference import slim_attention as sa

DEFAULT = Path(".data/minilm_slim.npz")


def export(out: Path = DEFAULT) -> Path:
    mini = minilm.load_minilm(np.float64)
    ids = np.asarray(minilm.load_minilm_tokenizer().encode(sa.MINILM_TEXT).ids)
    _, trace = minilm.minilm_encode(mini, ids, return_layers=True)
    arrays = {"n_heads": np.int64(mini.n_heads), "ids": ids}
    for i, lw in enumerate(mini.layers):
        aw = minilm.minilm_attn_weights(lw)
        arrays[f"x{i}"] = np.asarray(trace.hidden[i], np.float64)
        for name in ("w_q", "w_k", "w_v", "b_q", "b_k", "b_v"):
            arrays[f"{name}{i}"] = np.asarray(getattr(aw, name), np.float64)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    return out


if __name__ == "__main__":
    print(export(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT))
