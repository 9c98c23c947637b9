"""The kernels' own threading (row-split products, column bands in the recurrence, directions side by side)
gives the same results as one thread, on sizes large enough to take every parallel path."""

from __future__ import annotations

import numpy as np
import pytest

import rnnfast
from rnnfast import reference as ref


@pytest.fixture
def restore_threads():
    before = rnnfast.get_num_threads()
    yield
    rnnfast.set_num_threads(before)


@pytest.mark.parametrize("bidirectional,lengths", [(False, None), (True, None), (False, "ragged"), (True, "ragged")])
def test_two_threads_match_one_thread_and_the_reference(restore_threads, bidirectional, lengths) -> None:
    T, B, I, H = 7, 20, 48, 160  # B*H*H and the products exceed the thresholds for splitting
    rng = np.random.default_rng(0)
    model = rnnfast.RNN(I, H, num_layers=2, bidirectional=bidirectional, dtype="float64", seed=1)
    x = rng.standard_normal((T, B, I))
    lens = rng.integers(1, T + 1, size=B) if lengths else None
    results = []
    for threads in (1, 2):
        rnnfast.set_num_threads(threads)
        model.zero_grad()
        out, h_n, cache = model.forward(x, lengths=lens, return_cache=True)
        g = np.cos(out)
        gx, gh0 = model.backward(cache, g, np.sin(h_n))
        results.append((out, h_n, gx, gh0, {k: v.copy() for k, v in model.grads.items()}))
    (o1, n1, x1, h1, g1), (o2, n2, x2, h2, g2) = results
    for a, b in [(o1, o2), (n1, n2), (x1, x2), (h1, h2)] + [(g1[k], g2[k]) for k in g1]:
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    kw = dict(num_layers=2, bidirectional=bidirectional)
    r_out, r_h_n, r_cache = ref.rnn_forward(x, model.state_dict(), lengths=lens, **kw)
    r_gx, r_gh0, r_grads = ref.rnn_backward(r_cache, np.cos(r_out), np.sin(r_h_n))
    np.testing.assert_allclose(o2, r_out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(x2, r_gx, rtol=1e-9, atol=1e-11)
    for k in g2:
        np.testing.assert_allclose(g2[k], r_grads[k], rtol=1e-9, atol=1e-10)
