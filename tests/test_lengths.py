"""Variable-length batches (`lengths`) against the NumPy reference, and the truncated-BPTT recipe."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import assert_close

import rnnfast
from rnnfast import reference as ref

T, B, I, H = 6, 4, 3, 5
LENGTHS = np.array([3, 6, 1, 4])  # unsorted, with a length-1 and a full-length item

GRID = [
    combo
    for combo in itertools.product([1, 2, 3], [False, True], [False, True], [True, False], ["tanh", "relu"],
                                   ["float32", "float64"], [False, True], [0.0, 0.3])
    if not (combo[0] == 1 and combo[-1] > 0)
]


@pytest.mark.parametrize("layers,bidi,batch_first,bias,act,dtype,with_h0,dropout", GRID)
def test_matches_reference(layers, bidi, batch_first, bias, act, dtype, with_h0, dropout) -> None:
    rng = np.random.default_rng(layers * 100 + bidi * 10 + batch_first)
    model = rnnfast.RNN(I, H, num_layers=layers, nonlinearity=act, bias=bias, batch_first=batch_first,
                        dropout=dropout, bidirectional=bidi, dtype=dtype, seed=4)
    D = 2 if bidi else 1
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(dtype)
    h0 = rng.standard_normal((layers * D, B, H)).astype(dtype) if with_h0 else None
    out, h_n, cache = model.forward(x, h0, lengths=LENGTHS, return_cache=True)
    masks = cache.dropout_masks
    kw = dict(num_layers=layers, nonlinearity=act, bias=bias, batch_first=batch_first, bidirectional=bidi)
    r_out, r_h_n, r_cache = ref.rnn_forward(
        x.astype(np.float64), {k: v.astype(np.float64) for k, v in model.named_parameters().items()},
        h0=None if h0 is None else h0.astype(np.float64),
        dropout_masks=None if masks is None else masks.astype(np.float64), lengths=LENGTHS, **kw)
    depth = layers * T
    assert_close(out, r_out, dtype, depth)
    assert_close(h_n, r_h_n, dtype, depth)
    padded = np.arange(T)[:, None] >= LENGTHS[None, :]  # [T, B]
    out_tm = out.transpose(1, 0, 2) if batch_first else out
    assert np.all(out_tm[padded] == 0)

    g_out = rng.standard_normal(out.shape).astype(dtype)
    g_h_n = rng.standard_normal(h_n.shape).astype(dtype)
    gx, gh0 = model.backward(cache, g_out, g_h_n)
    r_gx, r_gh0, r_grads = ref.rnn_backward(r_cache, g_out.astype(np.float64), g_h_n.astype(np.float64))
    assert_close(gx, r_gx, dtype, depth)
    assert_close(gh0, r_gh0, dtype, depth)
    gx_tm = gx.transpose(1, 0, 2) if batch_first else gx
    assert np.all(gx_tm[padded] == 0)  # padded inputs get no gradient
    for name, g in model.grads.items():
        assert_close(g, r_grads[name], dtype, depth * B)


def test_full_lengths_equal_no_lengths_bitwise_and_unbatched_lengths() -> None:
    rng = np.random.default_rng(0)
    model = rnnfast.RNN(I, H, num_layers=2, bidirectional=True, dtype="float64", seed=0)
    x = rng.standard_normal((T, B, I))
    a = model(x)
    b = model(x, lengths=[T] * B)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    xu = x[:, 0]
    out, h_n = model(xu, lengths=[4])
    expected, expected_h_n = model(xu[:4])
    np.testing.assert_allclose(out[:4], expected, rtol=1e-12)
    assert np.all(out[4:] == 0)
    np.testing.assert_allclose(h_n, expected_h_n, rtol=1e-12)
    np.testing.assert_array_equal(model(xu, lengths=4)[0], out)


def test_padded_steps_do_not_matter_and_lengths_any_order() -> None:
    rng = np.random.default_rng(1)
    model = rnnfast.RNN(I, H, num_layers=2, bidirectional=True, dtype="float64", seed=0)
    x = rng.standard_normal((T, B, I))
    out, h_n = model(x, lengths=LENGTHS)
    noisy = x.copy()
    noisy[np.arange(T)[:, None] >= LENGTHS[None, :]] = 1e3
    out2, h_n2 = model(noisy, lengths=LENGTHS)
    np.testing.assert_array_equal(out, out2)
    np.testing.assert_array_equal(h_n, h_n2)
    # Each item equals that item run alone on its own valid steps.
    for b, n in enumerate(LENGTHS):
        alone, alone_h_n = model(x[:n, b])
        np.testing.assert_allclose(out[:n, b], alone, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(h_n[:, b], alone_h_n, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("lengths,match", [
    ([3, 6, 0, 4], r"lengths\[2\]: expected an integer in \[1, T=6\], got 0"),
    ([3, -1, 2, 4], r"lengths\[1\]"),
    ([3, 7, 2, 4], r"lengths\[1\]: expected an integer in \[1, T=6\], got 7"),
    ([3, 6, 2], r"lengths: expected shape \(4,\)"),
    ([[3, 6, 2, 1]], "lengths: expected shape"),
    ([3.0, 6.0, 2.0, 1.0], "lengths: expected integers"),
    (["a", "b", "c", "d"], "lengths: expected integers"),
])
def test_bad_lengths_are_value_errors(lengths, match) -> None:
    model = rnnfast.RNN(I, H)
    with pytest.raises(ValueError, match=match):
        model(np.zeros((T, B, I), np.float32), lengths=lengths)


def _chunked_tbptt(model, x, chunk, grad_out):
    """The truncated-BPTT recipe: forward chunk by chunk carrying h_n into the next chunk's h0, backward per
    chunk, and drop grad_h0 at each chunk boundary."""
    h = None
    grads_x = []
    for start in range(0, len(x), chunk):
        out, h, cache = model.forward(x[start:start + chunk], h, return_cache=True)
        gx, _ = model.backward(cache, grad_out[start:start + chunk])  # grad_h0 dropped: the truncation
        grads_x.append(gx)
    return np.concatenate(grads_x), h


def test_truncated_bptt_with_one_chunk_is_full_bptt() -> None:
    rng = np.random.default_rng(2)
    model = rnnfast.RNN(I, H, num_layers=2, dtype="float64", seed=1)
    x = rng.standard_normal((12, B, I))
    g = rng.standard_normal((12, B, H))
    gx, h = _chunked_tbptt(model, x, 12, g)
    chunked = {k: v.copy() for k, v in model.grads.items()}
    model.zero_grad()
    out, h_n, cache = model.forward(x, return_cache=True)
    full_gx, _ = model.backward(cache, g)
    np.testing.assert_array_equal(gx, full_gx)
    np.testing.assert_array_equal(h, h_n)
    for k, v in model.grads.items():
        np.testing.assert_array_equal(chunked[k], v)


def test_truncated_bptt_chunk_gradient_depends_on_the_past_only_through_the_carried_state() -> None:
    rng = np.random.default_rng(3)
    model = rnnfast.RNN(I, H, num_layers=2, dtype="float64", seed=2)
    x = rng.standard_normal((12, B, I))
    g = np.zeros((12, B, H))
    g[8:] = rng.standard_normal((4, B, H))  # the loss only looks at the last chunk
    gx, _ = _chunked_tbptt(model, x, 4, g)
    assert np.all(gx[:8] == 0)  # nothing flows back across a chunk boundary
    last_chunk = {k: v.copy() for k, v in model.grads.items()}
    # Different earlier inputs that end in the same carried state give the same last-chunk gradient: run the
    # last chunk alone from the state the first two chunks reached.
    _, h_carry = model(x[:8])
    model.zero_grad()
    _, _, cache = model.forward(x[8:], h_carry, return_cache=True)
    gx_alone, _ = model.backward(cache, g[8:])
    np.testing.assert_allclose(gx_alone, gx[8:], rtol=1e-12, atol=1e-14)
    for k, v in model.grads.items():
        np.testing.assert_allclose(v, last_chunk[k], rtol=1e-12, atol=1e-14)
    # And full BPTT differs: the truncation really cut something.
    model.zero_grad()
    _, _, cache = model.forward(x, return_cache=True)
    full_gx, _ = model.backward(cache, g)
    assert np.any(full_gx[:8] != 0)
