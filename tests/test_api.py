"""The Python API's contract: state handling, caches, dtype rules and clear errors for bad input."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pytest

import rnnfast

T, B, I, H = 4, 2, 3, 5


def test_version_and_threads() -> None:
    assert isinstance(rnnfast.__version__, str) and rnnfast.__version__.count(".") == 2
    before = rnnfast.get_num_threads()
    try:
        rnnfast.set_num_threads(1)
        assert rnnfast.get_num_threads() == 1
    finally:
        rnnfast.set_num_threads(before)
    for bad, err in [(0, ValueError), (-2, ValueError), (1.5, TypeError), ("2", TypeError)]:
        with pytest.raises(err, match="n: expected a positive integer"):
            rnnfast.set_num_threads(bad)


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(input_size=0), ValueError, "input_size: expected a positive integer, got 0"),
    (dict(hidden_size=-3), ValueError, "hidden_size: expected a positive integer, got -3"),
    (dict(num_layers=0), ValueError, "num_layers"),
    (dict(input_size=2.0), TypeError, "input_size: expected a positive integer, got 2.0"),
    (dict(hidden_size=True), TypeError, "hidden_size"),
    (dict(nonlinearity="sigmoid"), ValueError, "nonlinearity: expected 'tanh' or 'relu', got 'sigmoid'"),
    (dict(dropout=1.5), ValueError, r"dropout: expected a number in \[0, 1\], got 1.5"),
    (dict(dropout=float("nan")), ValueError, "dropout"),
    (dict(dropout="0.1"), TypeError, "dropout"),
    (dict(dtype="float16"), ValueError, "dtype: expected 'float32' or 'float64', got 'float16'"),
    (dict(dtype="not a dtype"), TypeError, "dtype"),
    (dict(bias=1), TypeError, "bias: expected a bool"),
    (dict(batch_first="yes"), TypeError, "batch_first"),
    (dict(bidirectional=None), TypeError, "bidirectional"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(seed=1.0), TypeError, "seed"),
    (dict(hidden_size=1 << 40, input_size=1 << 40), ValueError, "hidden_size"),
    (dict(hidden_size=1 << 20, input_size=1 << 20), MemoryError, "sizes: .* parameters need"),
])
def test_rnn_constructor_rejects_bad_arguments(kwargs, err, match) -> None:
    args = dict(input_size=I, hidden_size=H, num_layers=2)
    args.update(kwargs)
    with pytest.raises(err, match=match):
        rnnfast.RNN(**args)


def test_dtype_accepts_names_and_numpy_dtypes() -> None:
    for spec in ["float32", np.float32, np.dtype("float32")]:
        assert rnnfast.RNN(I, H, dtype=spec).dtype == np.float32
    for spec in ["float64", np.float64, np.dtype("float64")]:
        assert rnnfast.RNNCell(I, H, dtype=spec).dtype == np.float64


def test_dtype_accepts_torch_float_dtypes() -> None:
    torch = pytest.importorskip("torch")
    for cls in (rnnfast.RNN, rnnfast.LSTM, rnnfast.GRU, rnnfast.RNNCell, rnnfast.LSTMCell, rnnfast.GRUCell):
        for dtype, expected in ((torch.float32, np.float32), (torch.float64, np.float64)):
            model = cls(3, 4, dtype=dtype, seed=0)
            assert model.dtype == expected and model.named_parameters()["weight_hh" if "Cell" in cls.__name__
                                                                         else "weight_hh_l0"].dtype == expected
        with pytest.raises(ValueError, match=r"^dtype: expected 'float32' or 'float64' .*got torch\.float16$"):
            cls(3, 4, dtype=torch.float16)


def test_cell_constructor_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="input_size"):
        rnnfast.RNNCell(0, H)
    with pytest.raises(ValueError, match="nonlinearity"):
        rnnfast.RNNCell(I, H, nonlinearity="gelu")


def _rnn(**kw) -> rnnfast.RNN:
    return rnnfast.RNN(I, H, num_layers=2, seed=0, **kw)


@pytest.mark.parametrize("x,err,match", [
    ([[0.0] * I] * T, TypeError, "x: expected a numpy.ndarray of dtype float32, got list"),
    (np.zeros((T, B, I), np.float64), TypeError, "x: expected dtype float32 .*, got float64"),
    (np.zeros((T, B, I), np.int32), TypeError, "got int32"),
    (np.zeros((T, B, I), np.complex64), TypeError, "got complex64"),
    (np.zeros((T, B, I), object), TypeError, "got object"),
    (np.zeros((T, B, I + 1), np.float32), ValueError, r"x: expected shape .*I = 3.*, got \(4, 2, 4\)"),
    (np.zeros((T, B, 1, I), np.float32), ValueError, "x: expected shape"),
    (np.zeros((I,), np.float32), ValueError, "x: expected shape"),
    (np.zeros((0, B, I), np.float32), ValueError, "x: expected a sequence of length >= 1"),
])
def test_forward_rejects_bad_input(x, err, match) -> None:
    with pytest.raises(err, match=match):
        _rnn().forward(x)


@pytest.mark.parametrize("h0,err,match", [
    (np.zeros((2, B, H), np.float64), TypeError, "h0: expected dtype float32"),
    (np.zeros((1, B, H), np.float32), ValueError, r"h0: expected shape \(2, 2, 5\), got \(1, 2, 5\)"),
    (np.zeros((2, 1, H), np.float32), ValueError, "h0: expected shape"),  # a batch of 1 does not broadcast
    (np.zeros((2, H), np.float32), ValueError, "h0: expected shape"),
    ([0.0], TypeError, "h0: expected a numpy.ndarray"),
])
def test_forward_rejects_bad_h0(h0, err, match) -> None:
    with pytest.raises(err, match=match):
        _rnn()(np.zeros((T, B, I), np.float32), h0)


def test_backward_rejects_bad_gradients_and_foreign_caches() -> None:
    model = _rnn()
    x = np.zeros((T, B, I), np.float32)
    out, h_n, cache = model.forward(x, return_cache=True)
    with pytest.raises(ValueError, match=r"grad_output: expected shape \(4, 2, 5\), got \(4, 2, 4\)"):
        model.backward(cache, np.zeros((T, B, H - 1), np.float32))
    with pytest.raises(TypeError, match="grad_output: expected dtype float32"):
        model.backward(cache, np.zeros(out.shape))
    with pytest.raises(ValueError, match="grad_h_n: expected shape"):
        model.backward(cache, grad_h_n=np.zeros((1, B, H), np.float32))
    with pytest.raises(TypeError, match="cache: expected an RNNCache"):
        model.backward(object(), np.zeros_like(out))
    other = _rnn()
    with pytest.raises(ValueError, match="another model"):
        other.backward(cache, np.zeros_like(out))
    cell = rnnfast.RNNCell(I, H)
    _, cell_cache = cell.forward(np.zeros((B, I), np.float32), return_cache=True)
    with pytest.raises(TypeError, match="cache: expected an RNNCache"):
        model.backward(cell_cache, np.zeros_like(out))
    with pytest.raises(TypeError, match="cache: expected an RNNCellCache"):
        cell.backward(cache, np.zeros((B, H), np.float32))
    assert all(np.all(g == 0) for g in model.grads.values())  # nothing was half-done
    model.backward(cache, np.zeros_like(out), np.zeros_like(h_n))  # the cache is still good


def test_backward_after_load_state_dict_is_refused() -> None:
    model = _rnn()
    x = np.ones((T, B, I), np.float32)
    out, _, cache = model.forward(x, return_cache=True)
    model.load_state_dict(model.state_dict())
    with pytest.raises(ValueError, match="load_state_dict"):
        model.backward(cache, np.ones_like(out))
    cell = rnnfast.RNNCell(I, H)
    h, cell_cache = cell.forward(np.ones((B, I), np.float32), return_cache=True)
    cell.load_state_dict(cell.state_dict())
    with pytest.raises(ValueError, match="load_state_dict"):
        cell.backward(cell_cache, np.ones_like(h))


def test_cell_rejects_bad_input() -> None:
    cell = rnnfast.RNNCell(I, H, dtype="float64")
    with pytest.raises(TypeError, match="x: expected dtype float64"):
        cell(np.zeros((B, I), np.float32))
    with pytest.raises(ValueError, match="x: expected shape"):
        cell(np.zeros((B, I + 1)))
    with pytest.raises(ValueError, match=r"h: expected shape \(5,\), got \(2, 5\)"):
        cell(np.zeros(I), np.zeros((B, H)))
    with pytest.raises(ValueError, match=r"h: expected shape \(2, 5\)"):
        cell(np.zeros((B, I)), np.zeros((1, H)))
    h, cache = cell.forward(np.zeros((B, I)), return_cache=True)
    with pytest.raises(ValueError, match="grad_h_new: expected shape"):
        cell.backward(cache, np.zeros((B, H + 1)))


def test_load_state_dict_is_strict_casts_and_keeps_views_live() -> None:
    model = rnnfast.RNN(I, H, num_layers=2, seed=0)
    views = model.named_parameters()
    source = rnnfast.RNN(I, H, num_layers=2, dtype="float64", seed=1).state_dict()
    model.load_state_dict(source)
    for name, view in views.items():
        assert view.dtype == np.float32
        np.testing.assert_array_equal(view, source[name].astype(np.float32))
        assert np.shares_memory(view, model.named_parameters()[name])
    # state_dict() returns copies.
    state = model.state_dict()
    state["weight_ih_l0"][...] = 7
    assert not np.any(model.named_parameters()["weight_ih_l0"] == 7)


@pytest.mark.parametrize("mutate,err,match", [
    (lambda s: s.pop("bias_hh_l1"), ValueError, r"missing \['bias_hh_l1'\]"),
    (lambda s: s.update(extra=np.zeros(3)), ValueError, r"unexpected \['extra'\]"),
    (lambda s: s.update(weight_hh_l1=np.zeros((H, H + 1))), ValueError,
     r"state_dict\['weight_hh_l1'\]: expected shape \(5, 5\), got \(5, 6\)"),
    (lambda s: s.update(bias_ih_l1=np.array(["a"] * H)), TypeError, "bias_ih_l1"),
    (lambda s: s.update(bias_ih_l1=np.zeros(H, np.complex128)), TypeError, "complex128"),
    (lambda s: s.update(bias_ih_l1=object()), TypeError, "bias_ih_l1"),
])
def test_rejected_state_dict_changes_nothing(mutate, err, match) -> None:
    model = rnnfast.RNN(I, H, num_layers=2, seed=0)
    before = model.state_dict()
    new = {k: v + 1 for k, v in before.items()}
    mutate(new)
    with pytest.raises(err, match=match):
        model.load_state_dict(new)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])
    with pytest.raises(TypeError, match="state_dict: expected a mapping"):
        model.load_state_dict([("weight_ih_l0", 1)])


def test_training_flag_follows_pytorch() -> None:
    for module in (rnnfast.RNN(I, H), rnnfast.RNNCell(I, H)):
        assert module.training is True
        assert module.eval() is module and module.training is False
        assert module.train() is module and module.training is True
        module.train(False)
        assert module.training is False
        with pytest.raises(TypeError, match="mode"):
            module.train("no")


def test_unknown_attribute_is_an_attribute_error() -> None:
    model = rnnfast.RNN(I, H)
    assert model.weight_ih_l0.shape == (H, I)
    with pytest.raises(AttributeError, match="weight_ih_l1"):
        model.weight_ih_l1


@pytest.mark.parametrize("cls", [rnnfast.RNN, rnnfast.LSTM, rnnfast.GRU, rnnfast.RNNCell, rnnfast.LSTMCell,
                                 rnnfast.GRUCell])
def test_constructors_take_pytorchs_device_argument(cls: Any) -> None:
    for device in (None, "cpu", "cpu:0"):
        assert cls(3, 4, device=device).hidden_size == 4
    with pytest.raises(ValueError, match=r"device: rnnfast runs on the CPU only.*got 'cuda:0'"):
        cls(3, 4, device="cuda:0")
    with pytest.raises(TypeError, match="device: expected None, 'cpu' or torch.device"):
        cls(3, 4, device=0)
    # In torch.nn's order: device, then dtype.
    names = list(inspect.signature(cls).parameters)
    assert names.index("device") + 1 == names.index("dtype")


def test_constructors_take_a_cpu_torch_device() -> None:
    torch = pytest.importorskip("torch")
    assert rnnfast.LSTM(3, 4, device=torch.device("cpu"), dtype=torch.float64).dtype == np.float64
    with pytest.raises(ValueError, match="device: rnnfast runs on the CPU only"):
        rnnfast.GRU(3, 4, device=torch.device("meta"))
