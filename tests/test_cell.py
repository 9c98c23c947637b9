"""rnnfast.RNNCell against the NumPy reference, and stepping cells by hand."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from conftest import assert_close

import rnnfast
from rnnfast import reference as ref

I, H, B = 7, 5, 4


@pytest.mark.parametrize("dtype,bias,act,unbatched,with_h",
                         list(itertools.product(["float32", "float64"], [True, False], ["tanh", "relu"],
                                                [False, True], [False, True])))
def test_matches_reference(dtype: str, bias: bool, act: str, unbatched: bool, with_h: bool) -> None:
    rng = np.random.default_rng(hash((dtype, bias, act, unbatched, with_h)) % 2**32)
    cell = rnnfast.RNNCell(I, H, bias=bias, nonlinearity=act, dtype=dtype, seed=3)
    x = rng.standard_normal((I,) if unbatched else (B, I)).astype(dtype)
    h = rng.standard_normal((H,) if unbatched else (B, H)).astype(dtype) if with_h else None
    h_new, cache = cell.forward(x, h, return_cache=True)
    assert h_new.dtype == np.dtype(dtype) and h_new.shape == ((H,) if unbatched else (B, H))
    np.testing.assert_array_equal(cell(x, h), h_new)
    params64 = {k: v.astype(np.float64) for k, v in cell.named_parameters().items()}
    r_h_new, r_cache = ref.cell_forward(x.astype(np.float64), None if h is None else h.astype(np.float64),
                                        params64, nonlinearity=act)
    assert_close(h_new, r_h_new, dtype)
    g = rng.standard_normal(h_new.shape).astype(dtype)
    gx, gh = cell.backward(cache, g)
    r_gx, r_gh, r_grads = ref.cell_backward(r_cache, g.astype(np.float64))
    assert gx.shape == x.shape and gh.shape == h_new.shape
    assert_close(gx, r_gx, dtype)
    assert_close(gh, r_gh, dtype)
    assert list(cell.grads) == list(r_grads)
    for name, grad in cell.grads.items():
        assert_close(grad, r_grads[name], dtype, B)


def test_parameter_names_and_shapes() -> None:
    cell = rnnfast.RNNCell(100, 20)
    assert {k: v.shape for k, v in cell.named_parameters().items()} == {
        "weight_ih": (20, 100), "weight_hh": (20, 20), "bias_ih": (20,), "bias_hh": (20,)}
    assert list(rnnfast.RNNCell(3, 2, bias=False).named_parameters()) == ["weight_ih", "weight_hh"]
    assert rnnfast.RNNCell(3, 2).training


def test_cell_loop_equals_one_layer_rnn_forward_and_backward() -> None:
    rng = np.random.default_rng(0)
    T = 6
    rnn = rnnfast.RNN(I, H, dtype="float64", seed=1)
    cell = rnnfast.RNNCell(I, H, dtype="float64", seed=2)
    cell.load_state_dict({k[: -len("_l0")]: v for k, v in rnn.state_dict().items()})
    x = rng.standard_normal((T, B, I))
    out, h_n, cache = rnn.forward(x, return_cache=True)
    h, caches, steps = None, [], []
    for x_t in x:
        h, c = cell.forward(x_t, h, return_cache=True)
        steps.append(h)
        caches.append(c)
    np.testing.assert_allclose(np.stack(steps), out, rtol=1e-12, atol=1e-14)
    g = rng.standard_normal(out.shape)
    gx, gh0 = rnn.backward(cache, g)
    grad_h = np.zeros((B, H))
    gxs = []
    for t in reversed(range(T)):
        gx_t, grad_h = cell.backward(caches[t], grad_h + g[t])
        gxs.append(gx_t)
    np.testing.assert_allclose(np.stack(gxs[::-1]), gx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grad_h, gh0[0], rtol=1e-10, atol=1e-12)
    for name, grad in rnn.grads.items():
        np.testing.assert_allclose(cell.grads[name[: -len("_l0")]], grad, rtol=1e-10, atol=1e-12)


def test_two_cells_100_20_15_by_hand_against_reference() -> None:
    rng = np.random.default_rng(1)
    T = 10
    cell1 = rnnfast.RNNCell(100, 20, dtype="float64", seed=1)
    cell2 = rnnfast.RNNCell(20, 15, dtype="float64", seed=2)
    x = rng.standard_normal((T, 3, 100))
    h1 = h2 = None
    r1 = r2 = None
    caches, r_caches = [], []
    for x_t in x:
        h1, c1 = cell1.forward(x_t, h1, return_cache=True)
        h2, c2 = cell2.forward(h1, h2, return_cache=True)
        r1, rc1 = ref.cell_forward(x_t, r1, cell1.state_dict())
        r2, rc2 = ref.cell_forward(r1, r2, cell2.state_dict())
        caches.append((c1, c2))
        r_caches.append((rc1, rc2))
    np.testing.assert_allclose(h2, r2, rtol=1e-12, atol=1e-14)
    g2 = np.ones_like(h2)
    g1 = np.zeros_like(h1)
    rg2, rg1 = g2.copy(), g1.copy()
    totals1 = {k: np.zeros_like(v) for k, v in cell1.named_parameters().items()}
    for (c1, c2), (rc1, rc2) in zip(reversed(caches), reversed(r_caches)):
        gin2, g2 = cell2.backward(c2, g2)
        gx, g1 = cell1.backward(c1, g1 + gin2)
        rgin2, rg2, _ = ref.cell_backward(rc2, rg2)
        rgx, rg1, rgrads1 = ref.cell_backward(rc1, rg1 + rgin2)
        np.testing.assert_allclose(gx, rgx, rtol=1e-10, atol=1e-12)
        for k in totals1:
            totals1[k] += rgrads1[k]
    np.testing.assert_allclose(g1, rg1, rtol=1e-10, atol=1e-12)
    for k, v in cell1.grads.items():
        np.testing.assert_allclose(v, totals1[k], rtol=1e-10, atol=1e-12)


def test_cache_holds_copies_so_callers_may_reuse_their_arrays() -> None:
    rng = np.random.default_rng(2)
    cell = rnnfast.RNNCell(I, H, dtype="float64", seed=0)
    x = rng.standard_normal((B, I))
    h = rng.standard_normal((B, H))
    h_new, cache = cell.forward(x, h, return_cache=True)
    expected = cell.backward(cache, np.ones_like(h_new), retain_cache=True)
    cell.zero_grad()
    x[...] = 0
    h[...] = 0
    h_new[...] = 0
    again = cell.backward(cache, np.ones((B, H)))
    for a, b in zip(expected, again):
        np.testing.assert_array_equal(a, b)


def test_batch_zero_and_repr() -> None:
    cell = rnnfast.RNNCell(I, H)
    assert cell(np.zeros((0, I), np.float32)).shape == (0, H)
    assert repr(rnnfast.RNNCell(3, 2, bias=False, nonlinearity="relu")) == \
        "RNNCell(3, 2, bias=False, nonlinearity='relu', dtype=float32)"


@pytest.mark.parametrize("kind", ["RNNCell", "LSTMCell", "GRUCell"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("with_state", [False, True])
def test_a_step_without_cache_takes_the_short_path_for_plain_arrays_with_the_general_paths_bits(
        monkeypatch: pytest.MonkeyPatch, kind: str, dtype: str, batch: int, with_state: bool) -> None:
    # Aligned C-contiguous [B, I] / [B, H] arrays of the model's dtype skip the general checks; any other layout, the
    # unbatched form and return_cache=True take the general path. All give the same bits.
    cell = getattr(rnnfast, kind)(20, 24, dtype=dtype, seed=3)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((batch, 20)).astype(dtype)
    states = [rng.standard_normal((batch, 24)).astype(dtype) for _ in range(2 if kind == "LSTMCell" else 1)]

    def state_arg(arrays: list) -> Any:
        if not with_state:
            return None
        return tuple(arrays) if kind == "LSTMCell" else arrays[0]

    def as_list(result: Any) -> list:
        return list(result) if isinstance(result, tuple) else [result]

    def strided(a: np.ndarray) -> np.ndarray:
        wide = np.zeros((a.shape[0], 2 * a.shape[1]), a.dtype)
        wide[:, ::2] = a
        return wide[:, ::2]

    general = as_list(cell(strided(x), state_arg([strided(s) for s in states])))
    with_cache = as_list(cell.forward(x, state_arg(states), return_cache=True))[:-1]
    # Unbatched, one item: the general path with the same batch of one (a batch of several items may split its
    # products otherwise, within rounding).
    unbatched = as_list(cell(x[0], state_arg([s[0] for s in states]))) if batch == 1 else None
    with monkeypatch.context() as patch:  # the short path checks nothing through _checks
        patch.setattr(rnnfast._checks, "array", lambda *a, **k: pytest.fail("the general path ran"))
        short = as_list(cell(x, state_arg(states)))
    assert len(short) == len(general) == len(with_cache) == (2 if kind == "LSTMCell" else 1)
    for got, expected in zip(short, general):
        assert got.shape == (batch, 24) and got.dtype == np.dtype(dtype)
        assert np.array_equal(got, expected)
    for got, expected in zip(short, with_cache):
        assert np.array_equal(got, expected)
    if unbatched is not None:
        for got, expected in zip(short, unbatched):
            assert np.array_equal(got[0], expected)


class _Subclass(np.ndarray):
    pass


@pytest.mark.parametrize("kind", ["RNNCell", "LSTMCell", "GRUCell"])
def test_the_kernels_step_takes_only_plain_arrays_and_leaves_anything_else_to_the_general_path(kind: str) -> None:
    # The short path's checks run in C++ (the kernel's step): it returns None for any array the kernel cannot take
    # as it is, and the cell's call then takes the general path, which gives the plain arrays' bits for every
    # layout that holds the same values.
    cell = getattr(rnnfast, kind)(6, 5, seed=1)
    lstm = kind == "LSTMCell"
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 6)).astype(np.float32)
    h = rng.standard_normal((3, 5)).astype(np.float32)
    c = rng.standard_normal((3, 5)).astype(np.float32)

    def step(x_: Any, h_: Any, c_: Any = None) -> Any:
        if kind == "RNNCell":
            return cell._kernel.step(cell._flat, x_, h_)
        return cell._kernel.step(cell._flat, x_, h_, c_)

    def call(x_: Any, h_: Any, c_: Any) -> list:
        out = cell(x_, (h_, c_) if lstm else h_)
        return list(out) if lstm else [out]

    def misaligned(a: np.ndarray) -> np.ndarray:
        buffer = np.zeros(a.nbytes + 1, np.uint8)
        view = np.frombuffer(buffer.data, a.dtype, a.size, offset=1).reshape(a.shape)
        view[...] = a
        assert not view.flags.aligned and view.flags.c_contiguous
        return view

    def strided(a: np.ndarray) -> np.ndarray:
        return np.repeat(a, 2, axis=1)[:, ::2]

    same_values = {"strided": strided, "misaligned": misaligned, "Fortran order": np.asfortranarray,
                   "a subclass": lambda a: a.view(_Subclass)}
    other = {"float64": lambda a: a.astype(np.float64), "big-endian": lambda a: a.astype(">f4"),
             "a column fewer": lambda a: a[:, :-1].copy(), "a row fewer": lambda a: a[:-1].copy(),
             "one dimension": lambda a: a[0].copy(), "a list": lambda a: a.tolist()}
    c_arg = c if lstm else None
    plain = step(x, h, c_arg)
    assert plain is not None
    expected = call(x, h, c_arg)
    for name, change in {**same_values, **other}.items():
        assert step(change(x), h, c_arg) is None, f"x as {name}"
        assert step(x, change(h), c_arg) is None, f"h as {name}"
        if lstm:
            assert step(x, h, change(c)) is None, f"c as {name}"
    for name, change in same_values.items():
        for got, want in zip(call(change(x), change(h), change(c) if lstm else None), expected):
            assert np.array_equal(got, want), name
    assert step(x[:0].copy(), h[:0].copy(), c[:0].copy() if lstm else None) is None  # B = 0: the general path's
    if kind == "GRUCell":
        assert step(x, h, c) is None  # a cell state for a kernel without one
    if kind != "RNNCell":  # the stack kernels step only as a cell: one layer, one direction
        model = getattr(rnnfast, kind[:-4])(6, 5, num_layers=2)
        with pytest.raises(ValueError, match="step: only a one-layer, one-direction kernel"):
            model._kernel.step(model._flat, x, None, None)
