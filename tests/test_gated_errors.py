"""rnnfast.LSTM, GRU, LSTMCell and GRUCell: bad arguments are refused with an exception naming them, and leave the
model unchanged."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
from gated_common import B, H, I, PROJ, T, _gru, _lstm, _rejects

import rnnfast


# Bad inputs: (call on a float32 model, error, message pattern naming the argument).
_X = np.zeros((T, B, I), np.float32)
_H0 = np.zeros((1, B, H), np.float32)
_LSTM_BAD_FORWARD = [
    (lambda m: m(_X.astype(np.float64)), TypeError, r"^x: expected dtype float32"),
    (lambda m: m(list(_X)), TypeError, r"^x: expected a numpy.ndarray"),
    (lambda m: m(np.zeros((T, B, I + 1), np.float32)), ValueError, r"^x: expected shape"),
    (lambda m: m(np.zeros((T, B, 1, I), np.float32)), ValueError, r"^x: expected shape"),
    (lambda m: m(np.zeros((I,), np.float32)), ValueError, r"^x: expected shape"),
    (lambda m: m(np.zeros((0, B, I), np.float32)), ValueError, r"^x: expected a sequence of length >= 1"),
    (lambda m: m(np.zeros((0, I), np.float32)), ValueError, r"^x: expected a sequence of length >= 1"),
    (lambda m: m(_X, _H0), TypeError, r"^hx: expected None or a pair"),
    (lambda m: m(_X, (_H0,)), TypeError, r"^hx: expected None or a pair .* of length 1"),
    (lambda m: m(_X, (_H0, _H0, _H0)), TypeError, r"^hx: expected None or a pair .* of length 3"),
    (lambda m: m(_X, {"h": _H0, "c": _H0}), TypeError, r"^hx: "),
    (lambda m: m(_X, (np.zeros((2, B, H), np.float32), _H0)), ValueError, r"^hx\[0\]: expected shape"),
    (lambda m: m(_X, (np.zeros((1, B + 1, H), np.float32), _H0)), ValueError, r"^hx\[0\]: expected shape"),
    (lambda m: m(_X, (_H0, np.zeros((1, B, H + 1), np.float32))), ValueError, r"^hx\[1\]: expected shape"),
    (lambda m: m(_X, (_H0.astype(np.float64), _H0)), TypeError, r"^hx\[0\]: expected dtype float32"),
    (lambda m: m(_X, (_H0, _H0.astype(np.float64))), TypeError, r"^hx\[1\]: expected dtype float32"),
    (lambda m: m(_X, None, [T] * (B + 1)), ValueError, r"^lengths: expected shape"),
    (lambda m: m(_X, None, [0] + [T] * (B - 1)), ValueError, r"^lengths\[0\]"),
    (lambda m: m(_X, None, [T + 1] * B), ValueError, r"^lengths\[0\]"),
    (lambda m: m(_X, None, [1.5] * B), ValueError, r"^lengths: expected integers"),
]


@pytest.mark.parametrize("index", range(len(_LSTM_BAD_FORWARD)))
def test_lstm_forward_rejects_bad_arguments_naming_them(index: int) -> None:
    call, err, match = _LSTM_BAD_FORWARD[index]
    model = _lstm()
    _rejects(lambda: call(model), err, match, model)


def test_lstm_forward_rejects_states_of_a_projected_model_shaped_without_the_projection() -> None:
    model = _lstm(proj_size=PROJ, num_layers=2, bidirectional=True)
    good_h, good_c = np.zeros((4, B, PROJ), np.float32), np.zeros((4, B, H), np.float32)
    model(_X, (good_h, good_c))
    _rejects(lambda: model(_X, (good_c, good_c)), ValueError, r"^hx\[0\]: expected shape \(4, 4, 3\)", model)
    _rejects(lambda: model(_X, (good_h, good_h)), ValueError, r"^hx\[1\]: expected shape \(4, 4, 5\)", model)
    # Unbatched input: states without B.
    model(_X[:, 0], (good_h[:, 0], good_c[:, 0]))
    _rejects(lambda: model(_X[:, 0], (good_h, good_c)), ValueError, r"^hx\[0\]: expected shape \(4, 3\)", model)


_GRU_BAD_FORWARD = [
    (lambda m: m(_X.astype(np.float64)), TypeError, r"^x: expected dtype float32"),
    (lambda m: m(np.zeros((T, B, I + 1), np.float32)), ValueError, r"^x: expected shape"),
    (lambda m: m(np.zeros((0, B, I), np.float32)), ValueError, r"^x: expected a sequence of length >= 1"),
    (lambda m: m(_X, np.zeros((2, B, H), np.float32)), ValueError, r"^h0: expected shape"),
    (lambda m: m(_X, _H0.astype(np.float64)), TypeError, r"^h0: expected dtype float32"),
    (lambda m: m(_X, (_H0, _H0)), TypeError, r"^h0: expected a numpy.ndarray"),
    (lambda m: m(_X, None, [T] * (B - 1)), ValueError, r"^lengths: expected shape"),
]


@pytest.mark.parametrize("index", range(len(_GRU_BAD_FORWARD)))
def test_gru_forward_rejects_bad_arguments_naming_them(index: int) -> None:
    call, err, match = _GRU_BAD_FORWARD[index]
    model = _gru()
    _rejects(lambda: call(model), err, match, model)


def _lstm_backward_cases() -> list[tuple[str, Callable[..., Any], type[BaseException], str]]:
    f32 = np.float32
    return [
        ("no gradient", lambda m, c, o, h, cc: m.backward(c), ValueError, r"grad_output, grad_h_n, grad_c_n"),
        ("grad_output shape", lambda m, c, o, h, cc: m.backward(c, o[:-1]), ValueError, r"^grad_output: expected shape"),
        ("grad_output dtype", lambda m, c, o, h, cc: m.backward(c, o.astype(np.float64)), TypeError,
         r"^grad_output: expected dtype float32"),
        ("grad_h_n shape", lambda m, c, o, h, cc: m.backward(c, None, cc), ValueError, r"^grad_h_n: expected shape"),
        ("grad_h_n dtype", lambda m, c, o, h, cc: m.backward(c, None, h.astype(np.float64)), TypeError,
         r"^grad_h_n: expected dtype"),
        ("grad_c_n shape", lambda m, c, o, h, cc: m.backward(c, None, None, h), ValueError,
         r"^grad_c_n: expected shape"),
        ("grad_c_n list", lambda m, c, o, h, cc: m.backward(c, grad_c_n=cc.tolist()), TypeError,
         r"^grad_c_n: expected a numpy.ndarray"),
        ("grad_c_n dtype", lambda m, c, o, h, cc: m.backward(c, grad_c_n=cc.astype(np.float16)), TypeError,
         r"^grad_c_n: expected dtype"),
        ("input_grad", lambda m, c, o, h, cc: m.backward(c, o, input_grad=1), TypeError, r"^input_grad"),
        ("cache type", lambda m, c, o, h, cc: m.backward(None, o), TypeError, r"^cache: expected an RNNCache"),
        ("positional input_grad", lambda m, c, o, h, cc: m.backward(c, o, h, cc, False), TypeError, r"positional"),
        ("grad_output rank", lambda m, c, o, h, cc: m.backward(c, np.zeros((1,) + o.shape, f32)), ValueError, r"^grad_output"),
    ]


@pytest.mark.parametrize("case", _lstm_backward_cases(), ids=lambda c: c[0])
def test_lstm_backward_rejects_bad_arguments_and_changes_nothing(case: tuple[Any, ...]) -> None:
    _, call, err, match = case
    model = _lstm(proj_size=PROJ, num_layers=2)
    out, (h_n, c_n), cache = model.forward(np.ones((T, B, I), np.float32), return_cache=True)
    model.backward(cache, np.ones_like(out), retain_cache=True)  # non-zero grads: "unchanged" is a real check
    _rejects(lambda: call(model, cache, out, h_n, c_n), err, match, model)
    before = {k: v.copy() for k, v in model.grads.items()}
    model.backward(cache, np.ones_like(out))  # the cache is still good
    for k, v in model.grads.items():
        np.testing.assert_allclose(v, 2 * before[k], rtol=1e-6, atol=1e-7)


def test_gru_backward_rejects_bad_arguments() -> None:
    model = _gru(num_layers=2)
    out, h_n, cache = model.forward(np.ones((T, B, I), np.float32), return_cache=True)
    _rejects(lambda: model.backward(cache), ValueError, r"grad_output, grad_h_n: expected at least one", model)
    _rejects(lambda: model.backward(cache, h_n), ValueError, r"^grad_output: expected shape", model)
    _rejects(lambda: model.backward(cache, None, out), ValueError, r"^grad_h_n: expected shape", model)
    _rejects(lambda: model.backward(cache, out.astype(np.float64)), TypeError, r"^grad_output: expected dtype", model)
    with pytest.raises(TypeError):
        model.backward(cache, out, h_n, h_n)  # no grad_c_n: the calls of RNN
    model.backward(cache, out, h_n)


def test_cell_arguments_are_checked_naming_them() -> None:
    cell = rnnfast.LSTMCell(I, H, seed=0)
    x, s = np.zeros((B, I), np.float32), np.zeros((B, H), np.float32)
    _rejects(lambda: cell(x.astype(np.float64)), TypeError, r"^x: expected dtype float32", cell)
    _rejects(lambda: cell(np.zeros((B, I + 1), np.float32)), ValueError, r"^x: expected shape", cell)
    _rejects(lambda: cell(np.zeros((T, B, I), np.float32)), ValueError, r"^x: expected shape", cell)
    _rejects(lambda: cell(x, s), TypeError, r"^hx: expected None or a pair", cell)
    _rejects(lambda: cell(x, (s, s, s)), TypeError, r"^hx: ", cell)
    _rejects(lambda: cell(x, (s[:-1], s)), ValueError, r"^hx\[0\]: expected shape", cell)
    _rejects(lambda: cell(x, (s, s[:, :-1])), ValueError, r"^hx\[1\]: expected shape", cell)
    _rejects(lambda: cell(x, (s.astype(np.float64), s)), TypeError, r"^hx\[0\]: expected dtype", cell)
    _rejects(lambda: cell(x[0], (s, s)), ValueError, r"^hx\[0\]: expected shape", cell)  # unbatched x, batched hx
    h, c, cache = cell.forward(x, return_cache=True)
    _rejects(lambda: cell.backward(cache), ValueError, r"grad_h_new, grad_c_new", cell)
    _rejects(lambda: cell.backward(cache, h[:-1]), ValueError, r"^grad_h_new: expected shape", cell)
    _rejects(lambda: cell.backward(cache, None, c[:, :-1]), ValueError, r"^grad_c_new: expected shape", cell)
    _rejects(lambda: cell.backward(cache, None, c.astype(np.float64)), TypeError, r"^grad_c_new: expected dtype",
             cell)
    cell.backward(cache, None, c)

    gcell = rnnfast.GRUCell(I, H, seed=0)
    _rejects(lambda: gcell(x.astype(np.float64)), TypeError, r"^x: expected dtype float32", gcell)
    _rejects(lambda: gcell(x, s[:-1]), ValueError, r"^h: expected shape", gcell)
    _rejects(lambda: gcell(x, (s, s)), TypeError, r"^h: expected a numpy.ndarray", gcell)
    h, cache = gcell.forward(x, return_cache=True)
    _rejects(lambda: gcell.backward(cache, h[:-1]), ValueError, r"^grad_h_new: expected shape", gcell)
    _rejects(lambda: gcell.backward(cache, None), ValueError, r"grad_h_new", gcell)
    gcell.backward(cache, h)


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(proj_size=H), ValueError, r"^proj_size: expected 0 or an integer below hidden_size=5, got 5"),
    (dict(proj_size=H + 3), ValueError, r"^proj_size"),
    (dict(proj_size=-1), ValueError, r"^proj_size"),
    (dict(proj_size=2.0), TypeError, r"^proj_size"),
    (dict(proj_size=True), TypeError, r"^proj_size"),
    (dict(proj_size=None), TypeError, r"^proj_size"),
    (dict(dropout=1.5), ValueError, r"^dropout"),
    (dict(dropout="0.1"), TypeError, r"^dropout"),
    (dict(bidirectional=1), TypeError, r"^bidirectional"),
    (dict(batch_first="yes"), TypeError, r"^batch_first"),
    (dict(bias=None), TypeError, r"^bias"),
    (dict(num_layers=0), ValueError, r"^num_layers"),
    (dict(dtype="float16"), ValueError, r"^dtype"),
    (dict(seed=-1), ValueError, r"^seed"),
    (dict(seed=1.5), TypeError, r"^seed"),
    (dict(nonlinearity="relu"), TypeError, r"nonlinearity"),  # LSTM / GRU have no nonlinearity argument
], ids=str)
def test_lstm_constructor_rejects_bad_options(kwargs: dict[str, Any], err: type[BaseException], match: str) -> None:
    with pytest.raises(err, match=match):
        rnnfast.LSTM(I, H, **kwargs)
    if "proj_size" not in kwargs:
        with pytest.raises(err, match=match):
            rnnfast.GRU(I, H, **kwargs)


def test_gru_and_cells_have_no_proj_size_and_accept_numpy_integers() -> None:
    with pytest.raises(TypeError, match="proj_size"):
        rnnfast.GRU(I, H, proj_size=2)
    with pytest.raises(TypeError, match="proj_size"):
        rnnfast.LSTMCell(I, H, proj_size=2)
    assert not hasattr(rnnfast.GRU(I, H), "proj_size")
    lstm = rnnfast.LSTM(np.int64(I), np.int32(H), num_layers=np.uint8(2), proj_size=np.int16(PROJ))
    assert (lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.proj_size) == (I, H, 2, PROJ)
    assert type(lstm.proj_size) is int
    assert rnnfast.LSTM(I, H).proj_size == 0
    for cls in (rnnfast.LSTMCell, rnnfast.GRUCell):
        with pytest.raises(ValueError, match="^hidden_size"):
            cls(I, 0)
        with pytest.raises(TypeError, match="^bias"):
            cls(I, H, bias=1)
