"""What a training cache holds: a full-length batch's cache refers to x and the output (no copies) and refuses a
backward after either was changed in place; ``backward(..., input_grad=False)`` skips only the input gradient."""

from __future__ import annotations

import numpy as np
import pytest

import rnnfast
from rnnfast import reference
from conftest import assert_close

CONFIGS = [
    dict(num_layers=1),
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=2, batch_first=True),
]


def make(config: dict, dtype: str = "float64", seed: int = 0) -> tuple[rnnfast.RNN, np.ndarray, np.ndarray]:
    rnn = rnnfast.RNN(4, 5, dtype=dtype, seed=seed, **config)
    rng = np.random.default_rng(seed)
    T, B = 6, 3
    shape = (B, T, 4) if rnn.batch_first else (T, B, 4)
    x = rng.standard_normal(shape).astype(dtype)
    out_shape = shape[:2] + (5 * (2 if rnn.bidirectional else 1),)
    grad = rng.standard_normal(out_shape).astype(dtype)
    return rnn, x, grad


def gradients(rnn: rnnfast.RNN, x: np.ndarray, grad: np.ndarray, **backward_kwargs: bool
              ) -> tuple[object, np.ndarray, dict]:
    rnn.zero_grad()
    _, _, cache = rnn.forward(x, return_cache=True)
    gx, gh0 = rnn.backward(cache, grad, **backward_kwargs)
    return gx, gh0, {k: v.copy() for k, v in rnn.grads.items()}


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_backward_without_input_grad_gives_the_other_gradients(config: dict) -> None:
    rnn, x, grad = make(config)
    gx, gh0, grads = gradients(rnn, x, grad)
    none, gh0_skip, grads_skip = gradients(rnn, x, grad, input_grad=False)
    assert none is None
    assert isinstance(gx, np.ndarray) and gx.shape == x.shape and np.abs(gx).max() > 1e-3
    np.testing.assert_array_equal(gh0_skip, gh0)
    for name in grads:
        np.testing.assert_array_equal(grads_skip[name], grads[name], err_msg=name)
    # And both agree with the NumPy reference.
    seq = x.transpose(1, 0, 2) if rnn.batch_first else x
    g = grad.transpose(1, 0, 2) if rnn.batch_first else grad
    kwargs = dict(num_layers=rnn.num_layers, nonlinearity="tanh", bias=True, bidirectional=rnn.bidirectional)
    _, _, ref_cache = reference.rnn_forward(seq, rnn.state_dict(), **kwargs)
    ref_gx, _, ref_grads = reference.rnn_backward(ref_cache, g)
    for name in grads:
        assert_close(grads_skip[name], ref_grads[name], np.float64, depth=2)
    assert_close(gx.transpose(1, 0, 2) if rnn.batch_first else gx, ref_gx, np.float64, depth=2)


def test_input_grad_must_be_a_bool() -> None:
    rnn, x, grad = make(CONFIGS[0])
    _, _, cache = rnn.forward(x, return_cache=True)
    with pytest.raises(TypeError, match="input_grad"):
        rnn.backward(cache, grad, input_grad="no")  # type: ignore[call-overload]


def test_unbatched_backward_without_input_grad() -> None:
    rnn = rnnfast.RNN(3, 4, dtype="float64", seed=1)
    x = np.random.default_rng(1).standard_normal((5, 3))
    out, _, cache = rnn.forward(x, return_cache=True)
    gx, gh0 = rnn.backward(cache, np.ones_like(out), input_grad=False)
    assert gx is None and gh0.shape == (1, 4)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_full_batch_cache_borrows_x_and_output(dtype: str) -> None:
    rnn, x, grad = make(CONFIGS[0], dtype)
    _, _, cache = rnn.forward(x, return_cache=True)
    assert cache._core.borrows
    _, _, cache = rnn.forward(x, lengths=[6, 2, 4], return_cache=True)
    assert not cache._core.borrows  # a ragged batch is packed into copies


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_x_refilled_before_backward_is_refused_and_changes_nothing(dtype: str) -> None:
    rnn, x, grad = make(CONFIGS[0], dtype)
    _, _, cache = rnn.forward(x, return_cache=True)
    x[...] = np.random.default_rng(9).standard_normal(x.shape).astype(dtype)  # the next batch, in the same buffer
    with pytest.raises(ValueError, match=r"^x: it was modified in place"):
        rnn.backward(cache, grad)
    assert all(not g.any() for g in rnn.grads.values())  # nothing accumulated


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_output_updated_in_place_before_backward_is_refused(dtype: str) -> None:
    rnn, x, grad = make(CONFIGS[1], dtype)
    out, _, cache = rnn.forward(x, return_cache=True)
    out -= 1.0
    with pytest.raises(ValueError, match=r"^output: it was modified in place"):
        rnn.backward(cache, grad)
    assert all(not g.any() for g in rnn.grads.values())


def test_nan_input_is_not_mistaken_for_a_change() -> None:
    rnn, x, grad = make(CONFIGS[0])
    x[0, 0, 0] = np.nan
    x[-1, -1, -1] = np.nan  # both ends are sampled
    _, _, grads = gradients(rnn, x, grad)
    assert any(np.isnan(g).any() for g in grads.values())


def test_changes_after_backward_and_dropped_references_are_fine() -> None:
    rnn, x, grad = make(CONFIGS[0])
    expected = gradients(rnn, x, grad)
    rnn.zero_grad()
    x_copy = x.copy()
    out, _, cache = rnn.forward(x_copy, return_cache=True)
    del x_copy, out  # the cache keeps what it refers to alive
    gx, gh0 = rnn.backward(cache, grad)
    np.testing.assert_array_equal(gx, expected[0])
    np.testing.assert_array_equal(gh0, expected[1])
    rnn.zero_grad()
    out, _, cache = rnn.forward(x, return_cache=True)
    rnn.backward(cache, grad, retain_cache=True)
    x[...] = 0.0
    out[...] = 0.0
    with pytest.raises(ValueError, match="^x: "):
        rnn.backward(cache, grad)  # a second backward (allowed by retain_cache) sees the change


def test_copied_inputs_may_change_freely() -> None:
    # A ragged batch's cache and a batch_first input's (transposed into a private copy) do not refer to x.
    for config, lengths in ((CONFIGS[0], [6, 3, 1]), (CONFIGS[2], None)):
        rnn, x, grad = make(config)
        rnn.zero_grad()
        _, _, cache = rnn.forward(x, lengths=lengths, return_cache=True)
        expected = rnn.backward(cache, grad)
        rnn.zero_grad()
        _, _, cache = rnn.forward(x, lengths=lengths, return_cache=True)
        x[...] = 7.0
        got = rnn.backward(cache, grad)
        np.testing.assert_array_equal(got[0], expected[0])


# The storage of a released cache is kept for the model's next forward that keeps a cache (see _core's
# SpareCache): every later call must still give the bits of a model that starts from fresh memory.
_KINDS = {"rnn": rnnfast.RNN, "lstm": rnnfast.LSTM, "gru": rnnfast.GRU}


def _one_step(model: object, x: np.ndarray, lengths: object, dtype: str, seed: int) -> list[np.ndarray]:
    """Outputs, input and state gradients and parameter gradients of one forward + backward (which releases)."""
    model.zero_grad()  # type: ignore[attr-defined]
    out, *states, cache = model.forward(x, lengths=lengths, return_cache=True)  # type: ignore[attr-defined]
    grad = np.random.default_rng(seed).standard_normal(out.shape).astype(dtype)
    grads_in = model.backward(cache, grad)  # type: ignore[attr-defined]
    flat = [out, *[s for s in states if s is not None], *[g for g in grads_in if g is not None]]
    return flat + [v.copy() for v in model.grads.values()]  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", list(_KINDS))
def test_kept_cache_storage_gives_the_bits_of_fresh_memory(kind: str) -> None:
    dtype = "float64"
    config = dict(num_layers=2, bidirectional=True)
    model = _KINDS[kind](4, 5, dtype=dtype, seed=3, **config)
    rng = np.random.default_rng(0)
    # Shapes that grow, shrink and change layout between calls: full length (a borrowing cache), ragged (packed,
    # copies), unbatched, then a longer full batch and the first shape again.
    calls = [((6, 3, 4), None), ((6, 3, 4), [6, 2, 4]), ((5, 4), None), ((9, 2, 4), None), ((6, 3, 4), None)]
    for i, (shape, lengths) in enumerate(calls):
        x = rng.standard_normal(shape).astype(dtype)
        fresh = _KINDS[kind](4, 5, dtype=dtype, seed=3, **config)
        expected = _one_step(fresh, x, lengths, dtype, i)
        got = _one_step(model, x, lengths, dtype, i)
        assert model._spare_cache_bytes() > 0, i
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a, b, err_msg=f"call {i}")


def test_kept_cache_storage_is_freed_by_inference_and_kept_from_dropped_caches() -> None:
    model = rnnfast.LSTM(4, 5, num_layers=2, seed=0)
    x = np.random.default_rng(0).standard_normal((6, 3, 4)).astype(np.float32)
    assert model._spare_cache_bytes() == 0
    out, _, cache = model.forward(x, return_cache=True)
    model.backward(cache, np.ones_like(out))
    kept = model._spare_cache_bytes()
    # gates and c of both layers at least
    assert kept >= 2 * 6 * 3 * (4 * 5 + 5) * 4
    model(x)
    assert model._spare_cache_bytes() == 0
    _, _, cache = model.forward(x, return_cache=True)
    assert model._spare_cache_bytes() == 0  # the forward took nothing, and its cache is alive
    del cache
    assert model._spare_cache_bytes() == kept


def test_a_cache_reusing_kept_storage_that_borrowed_copies_when_told_not_to_borrow() -> None:
    # A kept cache that referred to x is refilled by a forward that must copy x: a later change to x cannot reach
    # the backward.
    model = rnnfast.RNN(4, 5, dtype="float64", seed=0)
    kernel = model._kernel
    params = model._flat
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 3, 4))
    grad = rng.standard_normal((6, 3, 5))
    out, _, _, cache = kernel.forward(params, x, None, None, None, True)  # borrows x
    assert cache.borrows
    del cache
    x2 = x.copy()
    out, _, _, cache = kernel.forward(params, x2, None, None, None, True, None, False)
    assert not cache.borrows
    expected = kernel.backward(params, cache, grad, None, None)
    x2[...] = 7.0
    got = kernel.backward(params, cache, grad, None, None)
    for a, b in zip(got, expected):
        if a is not None:
            np.testing.assert_array_equal(a, b)
