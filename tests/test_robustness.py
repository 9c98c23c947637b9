"""Robustness (issue 5), bad input: every bad argument is a clear TypeError / ValueError (MemoryError for impossible
sizes) that names the argument, never a crash, and a rejected call changes nothing.

test_api.py covers the first, most common bad inputs; this file covers the rest of issue 5's list, and
test_robustness_values.py its other half (layouts, NaN / Inf, batch size 0, leaks).
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from robustness_common import B, H, I, T, _equal_bitwise, _layout, _model, _rejects, _x

import rnnfast


# --------------------------------------------------------------------------------------------------------------
# Constructors
# --------------------------------------------------------------------------------------------------------------

SIZE_ARGS = ["input_size", "hidden_size"]
BAD_SIZES = [
    (0, ValueError), (-1, ValueError), (-(1 << 70), ValueError),
    (2.0, TypeError), (np.float64(3.0), TypeError), ("3", TypeError), (None, TypeError), (True, TypeError),
    (np.bool_(True), TypeError), ([3], TypeError), (3 + 0j, TypeError), (np.array([3]), TypeError),
]


@pytest.mark.parametrize("arg", SIZE_ARGS)
@pytest.mark.parametrize("value,err", BAD_SIZES, ids=repr)
def test_cell_constructor_rejects_bad_sizes(arg, value, err) -> None:
    kwargs = dict(input_size=I, hidden_size=H)
    kwargs[arg] = value
    with pytest.raises(err, match=arg):
        rnnfast.RNNCell(**kwargs)


@pytest.mark.parametrize("arg", SIZE_ARGS + ["num_layers"])
@pytest.mark.parametrize("value,err", BAD_SIZES, ids=repr)
def test_rnn_constructor_rejects_bad_sizes(arg, value, err) -> None:
    kwargs = dict(input_size=I, hidden_size=H, num_layers=2)
    kwargs[arg] = value
    with pytest.raises(err, match=arg):
        rnnfast.RNN(**kwargs)


def test_sizes_accept_numpy_integers() -> None:
    model = rnnfast.RNN(np.int64(I), np.uint8(H), num_layers=np.int32(2), seed=np.uint64(3))
    assert (model.input_size, model.hidden_size, model.num_layers) == (I, H, 2)
    assert type(model.input_size) is int
    cell = rnnfast.RNNCell(np.int16(I), np.int64(H))
    assert cell.weight_ih.shape == (H, I)


BAD_OPTIONS = [
    # (kwargs, error, the argument named in the message)
    (dict(nonlinearity=None), ValueError, "nonlinearity"),
    (dict(nonlinearity=1), ValueError, "nonlinearity"),
    (dict(nonlinearity=b"tanh"), ValueError, "nonlinearity"),
    (dict(nonlinearity="Tanh"), ValueError, "nonlinearity"),
    (dict(nonlinearity=" relu"), ValueError, "nonlinearity"),
    (dict(nonlinearity=""), ValueError, "nonlinearity"),
    (dict(bias=None), TypeError, "bias"),
    (dict(bias="True"), TypeError, "bias"),
    (dict(bias=np.array(True)), TypeError, "bias"),
    (dict(bias=0), TypeError, "bias"),
    (dict(dtype="int32"), ValueError, "dtype"),
    (dict(dtype=np.int64), ValueError, "dtype"),
    (dict(dtype="complex64"), ValueError, "dtype"),
    (dict(dtype=np.complex128), ValueError, "dtype"),
    (dict(dtype="float16"), ValueError, "dtype"),
    (dict(dtype=np.longdouble), ValueError, "dtype"),
    (dict(dtype=object), ValueError, "dtype"),
    (dict(dtype=">f4"), ValueError, "dtype"),  # non-native byte order
    (dict(dtype="S3"), ValueError, "dtype"),
    (dict(dtype="V8"), ValueError, "dtype"),
    (dict(dtype=[("a", "f4")]), ValueError, "dtype"),
    (dict(dtype="floaty"), TypeError, "dtype"),
    (dict(dtype=3), TypeError, "dtype"),
    (dict(dtype=[]), (TypeError, ValueError), "dtype"),
    (dict(seed="0"), TypeError, "seed"),
    (dict(seed=1.5), TypeError, "seed"),
    (dict(seed=[1]), TypeError, "seed"),
    (dict(seed=True), TypeError, "seed"),
    (dict(seed=np.int64(-1)), ValueError, "seed"),
    (dict(seed=-(1 << 70)), ValueError, "seed"),
]


@pytest.mark.parametrize("kwargs,err,name", BAD_OPTIONS, ids=repr)
@pytest.mark.parametrize("cls", ["RNN", "RNNCell"])
def test_constructors_reject_bad_options(cls, kwargs, err, name) -> None:
    with pytest.raises(err, match=name):
        getattr(rnnfast, cls)(I, H, **kwargs)


RNN_ONLY_BAD_OPTIONS = [
    (dict(dropout=-1e-9), ValueError, "dropout"),
    (dict(dropout=float("inf")), ValueError, "dropout"),
    (dict(dropout=float("-inf")), ValueError, "dropout"),
    (dict(dropout=np.float32("nan")), ValueError, "dropout"),
    (dict(dropout=1 + 1e-12), ValueError, "dropout"),
    (dict(dropout=2), ValueError, "dropout"),
    (dict(dropout=0.1 + 0j), TypeError, "dropout"),
    (dict(dropout=True), TypeError, "dropout"),
    (dict(dropout=None), TypeError, "dropout"),
    (dict(dropout=[0.1]), TypeError, "dropout"),
    (dict(dropout=np.array(0.1)), TypeError, "dropout"),
    (dict(batch_first=1), TypeError, "batch_first"),
    (dict(batch_first=None), TypeError, "batch_first"),
    (dict(bidirectional="no"), TypeError, "bidirectional"),
    (dict(bidirectional=0), TypeError, "bidirectional"),
]


@pytest.mark.parametrize("kwargs,err,name", RNN_ONLY_BAD_OPTIONS, ids=repr)
def test_rnn_constructor_rejects_bad_options(kwargs, err, name) -> None:
    with pytest.raises(err, match=name):
        rnnfast.RNN(I, H, num_layers=2, **kwargs)


def test_constructor_accepts_edge_values() -> None:
    for p in (0.0, -0.0, 1.0, np.float32(0.5), 1, 0):
        assert rnnfast.RNN(I, H, num_layers=2, dropout=p).dropout == float(p)
    for dtype in ("f4", "f8", "float", np.dtype("<f4"), "double", "single"):
        assert rnnfast.RNN(I, H, dtype=dtype).dtype in (np.float32, np.float64)
    assert rnnfast.RNN(I, H, seed=1 << 200).input_size == I  # any non-negative integer seeds
    assert rnnfast.RNN(1, 1).weight_hh_l0.shape == (1, 1)
    assert rnnfast.RNNCell(1, 1, bias=False).named_parameters().keys() == {"weight_ih", "weight_hh"}


@pytest.mark.parametrize("cls", ["RNN", "RNNCell"])
def test_dtype_none_means_the_default_float32_as_in_pytorch(cls) -> None:
    assert getattr(rnnfast, cls)(I, H, dtype=None).dtype == np.float32


HUGE = [
    # (class, args, accepted errors): sizes that cannot be allocated, or whose parameter count overflows int64
    ("RNNCell", (1 << 20, 1 << 20), MemoryError),
    ("RNNCell", (1 << 40, 1 << 40), (ValueError, MemoryError)),
    ("RNNCell", (1, 1 << 31), (ValueError, MemoryError)),
    ("RNNCell", (1 << 62, 1), (ValueError, MemoryError)),
    ("RNN", (1 << 62, 1), (ValueError, MemoryError)),
    ("RNN", (1, 1 << 31), (ValueError, MemoryError)),
    ("RNN", (1 << 16, 1 << 16, 1 << 10), (ValueError, MemoryError)),
    ("RNN", (2, 2, 1 << 62), (ValueError, MemoryError)),
    ("RNN", (3, 1 << 31, 3, "tanh", True, False, 0.0, True), (ValueError, MemoryError)),
]


@pytest.mark.parametrize("cls,args,err", HUGE, ids=repr)
def test_impossible_sizes_are_refused_before_allocating(cls, args, err) -> None:
    with pytest.raises(err, match="size|sizes|num_layers"):
        getattr(rnnfast, cls)(*args)


@pytest.mark.parametrize("cls,kwargs,name", [
    ("RNN", dict(input_size=1 << 70, hidden_size=2), "input_size"),
    ("RNN", dict(input_size=2, hidden_size=1 << 63), "hidden_size"),
    ("RNN", dict(input_size=2, hidden_size=2, num_layers=1 << 64), "num_layers"),
    ("RNNCell", dict(input_size=1 << 63, hidden_size=2), "input_size"),
])
def test_sizes_beyond_int64_name_the_argument(cls, kwargs, name) -> None:
    with pytest.raises((ValueError, MemoryError), match=name):
        getattr(rnnfast, cls)(**kwargs)


def test_huge_num_layers_is_refused_promptly() -> None:
    code = "import rnnfast\ntry:\n    rnnfast.RNN(2, 2, num_layers=1 << 40)\nexcept (ValueError, MemoryError) as e:\n" \
           "    print(type(e).__name__)\n"
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=5)
    except subprocess.TimeoutExpired:
        pytest.fail("RNN(2, 2, num_layers=2**40) did not return within 5 s")
    assert proc.returncode == 0 and proc.stdout.strip() in ("ValueError", "MemoryError"), proc.stderr


@pytest.mark.parametrize("n,err", [
    (None, TypeError), ([], TypeError), ("1", TypeError), (2.0, TypeError), (True, TypeError),
    (np.int64(0), ValueError), (-(1 << 70), ValueError), (np.uint8(0), ValueError),
])
def test_set_num_threads_rejects_bad_values_and_keeps_the_setting(n, err) -> None:
    before = rnnfast.get_num_threads()
    with pytest.raises(err, match="n: expected"):
        rnnfast.set_num_threads(n)
    assert rnnfast.get_num_threads() == before


@pytest.mark.parametrize("n", [1 << 31, 1 << 70])
def test_set_num_threads_beyond_int_names_the_argument(n) -> None:
    before = rnnfast.get_num_threads()
    try:
        with pytest.raises(ValueError, match="n: expected"):
            rnnfast.set_num_threads(n)
    finally:
        rnnfast.set_num_threads(before)


# --------------------------------------------------------------------------------------------------------------
# RNN.forward
# --------------------------------------------------------------------------------------------------------------


BAD_X = [
    (None, TypeError, "x: expected a numpy.ndarray"),
    (1.0, TypeError, "x: expected a numpy.ndarray"),
    (np.float32(1.0), TypeError, "x: expected a numpy.ndarray"),
    ("x", TypeError, "x: expected a numpy.ndarray"),
    (((0.0,) * I,) * T, TypeError, "x: expected a numpy.ndarray"),
    (memoryview(np.zeros((T, B, I), np.float32)), TypeError, "x: expected a numpy.ndarray"),
    (np.zeros((T, B, I), np.float16), TypeError, "x: expected dtype float32"),
    (np.zeros((T, B, I), np.bool_), TypeError, "x: expected dtype float32"),
    (np.zeros((T, B, I), np.uint8), TypeError, "x: expected dtype float32"),
    (np.zeros((T, B, I), np.int64), TypeError, "x: expected dtype float32"),
    (np.zeros((T, B, I), np.complex128), TypeError, "x: expected dtype float32"),
    (np.zeros((T, B, I), np.longdouble), TypeError, "x: expected dtype float32"),
    (np.zeros((T, B, I), ">f4"), TypeError, "x: expected dtype float32"),
    (np.zeros((T, B, I), "U3"), TypeError, "x: expected dtype float32"),
    (np.zeros((T, B, I), "datetime64[s]"), TypeError, "x: expected dtype float32"),
    (np.zeros((T, B), [("a", "f4"), ("b", "f4")]), TypeError, "x: expected dtype float32"),
    (np.array(1.0, np.float32), ValueError, "x: expected shape"),
    (np.zeros((T, B, I, 1), np.float32), ValueError, "x: expected shape"),
    (np.zeros((1, T, B, I, 1), np.float32), ValueError, "x: expected shape"),
    (np.zeros((T, B, 0), np.float32), ValueError, "x: expected shape"),
    (np.zeros((T, 0), np.float32), ValueError, "x: expected shape"),
    (np.zeros((0, I), np.float32), ValueError, "x: expected a sequence of length >= 1"),
    (np.zeros((0, 0, I), np.float32), ValueError, "x: expected a sequence of length >= 1"),
    (np.zeros((T, B, I), np.float32).T, ValueError, "x: expected shape"),  # [I, B, T]: features last
]


@pytest.mark.parametrize("x,err,match", BAD_X, ids=lambda v: getattr(v, "shape", type(v).__name__)
                         if not isinstance(v, (type, str)) else str(v))
@pytest.mark.parametrize("entry", ["forward", "call", "forward_cache"])
def test_rnn_forward_rejects_bad_x(entry, x, err, match) -> None:
    model = _model(dropout=0.5)  # a rejected call must not draw dropout masks either
    twin = _model(dropout=0.5)
    call = {"forward": lambda: model.forward(x), "call": lambda: model(x),
            "forward_cache": lambda: model.forward(x, return_cache=True)}[entry]
    _rejects(call, err, match, model)
    # The dropout generator did not advance: the next forward draws the same masks as an untouched twin's.
    _, _, c1 = model.forward(_x(), return_cache=True)
    _, _, c2 = twin.forward(_x(), return_cache=True)
    _equal_bitwise(c1.dropout_masks, c2.dropout_masks)


def test_batch_first_model_rejects_a_time_major_shape_it_cannot_read() -> None:
    model = _model(batch_first=True)
    with pytest.raises(ValueError, match=r"x: expected shape \[B, T, I\]"):
        model(np.zeros((T, B, I + 1), np.float32))


BAD_H0 = [
    (np.zeros((4, B, H), np.int32), TypeError, "h0: expected dtype float32"),
    (np.zeros((4, B, H), np.complex64), TypeError, "h0: expected dtype float32"),
    (np.zeros((4, B, H), ">f4"), TypeError, "h0: expected dtype float32"),
    (np.zeros((4, B, H), object), TypeError, "h0: expected dtype float32"),
    (np.array(0.0, np.float32), ValueError, r"h0: expected shape \(4, 3, 6\), got \(\)"),
    (np.zeros((4, B, H, 1), np.float32), ValueError, "h0: expected shape"),
    (np.zeros((4, B + 1, H), np.float32), ValueError, "h0: expected shape"),
    (np.zeros((4, B, H + 1), np.float32), ValueError, "h0: expected shape"),
    (np.zeros((B, 4, H), np.float32), ValueError, "h0: expected shape"),  # batch-first states are not a thing
    (np.zeros((4, 0, H), np.float32), ValueError, "h0: expected shape"),
    (np.zeros((4 * B * H,), np.float32), ValueError, "h0: expected shape"),
    (0.0, TypeError, "h0: expected a numpy.ndarray"),
    ("h0", TypeError, "h0: expected a numpy.ndarray"),
]


@pytest.mark.parametrize("h0,err,match", BAD_H0, ids=lambda v: str(getattr(v, "shape", v)))
def test_rnn_forward_rejects_bad_h0(h0, err, match) -> None:
    model = _model(bidirectional=True)
    _rejects(lambda: model.forward(_x(), h0, return_cache=True), err, match, model)


def test_rnn_unbatched_rejects_batched_h0() -> None:
    model = _model()
    with pytest.raises(ValueError, match=r"h0: expected shape \(2, 6\), got \(2, 1, 6\)"):
        model(_x(shape=(T, I)), np.zeros((2, 1, H), np.float32))


BAD_LENGTHS = [
    ([], "lengths: expected"),
    ([1] * (B + 1), r"lengths: expected shape \(3,\)"),
    (np.array([[1, 2, 3]]), "lengths: expected shape"),
    (np.array(2), "lengths: expected shape"),  # a scalar only for a batch of 1
    ([1.5, 2, 3], "lengths: expected integers"),
    ([float("nan")] * B, "lengths: expected integers"),
    ([1 + 0j] * B, "lengths: expected integers"),
    ([True] * B, "lengths: expected integers"),
    ([None] * B, "lengths: expected integers"),
    ([1 << 70, 1, 1], "lengths"),
    (np.array([1, 2, 2**64 - 1], np.uint64), r"lengths\[2\]"),
    (np.array([1, 2, -(2**63)], np.int64), r"lengths\[2\]"),
    ({1: 2}, "lengths"),
    (object(), "lengths"),
    ("123", "lengths"),
]


@pytest.mark.parametrize("lengths,match", BAD_LENGTHS, ids=repr)
def test_rnn_forward_rejects_bad_lengths(lengths, match) -> None:
    model = _model(bidirectional=True, dropout=0.3)
    _rejects(lambda: model.forward(_x(), lengths=lengths, return_cache=True), ValueError, match, model)


def test_unbatched_lengths_must_be_one_length() -> None:
    model = _model()
    with pytest.raises(ValueError, match=r"lengths: expected shape \(1,\)"):
        model(_x(shape=(T, I)), lengths=[2, 2])
    with pytest.raises(ValueError, match=r"lengths\[0\]"):
        model(_x(shape=(T, I)), lengths=T + 1)


# --------------------------------------------------------------------------------------------------------------
# RNN.backward
# --------------------------------------------------------------------------------------------------------------


def _forward(model: rnnfast.RNN, x: np.ndarray | None = None, **kw: Any):
    return model.forward(_x(model.dtype.name) if x is None else x, return_cache=True, **kw)


def _backward_cases():
    # (description, call(model, cache, out, h_n), error, match)
    f32 = np.float32
    return [
        ("grad_output list", lambda m, c, o, h: m.backward(c, o.tolist()), TypeError, "grad_output: expected a numpy"),
        ("grad_output int", lambda m, c, o, h: m.backward(c, o.astype(np.int32)), TypeError, "grad_output: expected dtype"),
        ("grad_output complex", lambda m, c, o, h: m.backward(c, o.astype(np.complex64)), TypeError, "grad_output"),
        ("grad_output object", lambda m, c, o, h: m.backward(c, o.astype(object)), TypeError, "grad_output"),
        ("grad_output >f4", lambda m, c, o, h: m.backward(c, o.astype(">f4")), TypeError, "grad_output"),
        ("grad_output scalar", lambda m, c, o, h: m.backward(c, f32(1)), TypeError, "grad_output"),
        ("grad_output 0-d", lambda m, c, o, h: m.backward(c, np.array(1, f32)), ValueError, "grad_output: expected shape"),
        ("grad_output flat", lambda m, c, o, h: m.backward(c, o.ravel()), ValueError, "grad_output: expected shape"),
        ("grad_output T+1", lambda m, c, o, h: m.backward(c, np.zeros((T + 1,) + o.shape[1:], f32)), ValueError,
         "grad_output: expected shape"),
        ("grad_output batch-first", lambda m, c, o, h: m.backward(c, np.zeros((B, T, o.shape[2]), f32)), ValueError,
         "grad_output: expected shape"),
        ("grad_output of h_n", lambda m, c, o, h: m.backward(c, np.zeros_like(h)), ValueError, "grad_output"),
        ("grad_h_n list", lambda m, c, o, h: m.backward(c, None, h.tolist()), TypeError, "grad_h_n: expected a numpy"),
        ("grad_h_n float64", lambda m, c, o, h: m.backward(c, None, h.astype(np.float64)), TypeError, "grad_h_n"),
        ("grad_h_n bool", lambda m, c, o, h: m.backward(c, None, h > 0), TypeError, "grad_h_n"),
        ("grad_h_n unbatched", lambda m, c, o, h: m.backward(c, None, h[:, 0]), ValueError, "grad_h_n: expected shape"),
        ("grad_h_n good, grad_output bad", lambda m, c, o, h: m.backward(c, o[:-1], h), ValueError, "grad_output"),
        ("grad_output good, grad_h_n bad", lambda m, c, o, h: m.backward(c, o, h[:1]), ValueError, "grad_h_n"),
        ("both None", lambda m, c, o, h: m.backward(c), ValueError, "grad_output, grad_h_n"),
        ("cache None", lambda m, c, o, h: m.backward(None, o), TypeError, "cache: expected an RNNCache"),
        ("cache int", lambda m, c, o, h: m.backward(0, o), TypeError, "cache: expected an RNNCache"),
        ("cache dict", lambda m, c, o, h: m.backward({}, o), TypeError, "cache: expected an RNNCache"),
        ("cache tuple", lambda m, c, o, h: m.backward((o, h, c), o), TypeError, "cache: expected an RNNCache"),
        ("cache class", lambda m, c, o, h: m.backward(rnnfast.RNNCache, o), TypeError, "cache: expected an RNNCache"),
        ("grads swapped", lambda m, c, o, h: m.backward(c, h, o), ValueError, "grad_output: expected shape"),
    ]


@pytest.mark.parametrize("case", _backward_cases(), ids=lambda c: c[0])
def test_rnn_backward_rejects_bad_arguments_and_changes_nothing(case) -> None:
    _, call, err, match = case
    model = _model(bidirectional=True)
    out, h_n, cache = _forward(model)
    model.backward(cache, np.ones_like(out), retain_cache=True)  # grads are non-zero: "unchanged" is a real check
    _rejects(lambda: call(model, cache, out, h_n), err, match, model)
    # The cache is still good after the rejected call.
    before = {k: v.copy() for k, v in model.grads.items()}
    model.backward(cache, np.ones_like(out))
    for k, v in model.grads.items():
        np.testing.assert_allclose(v, 2 * before[k], rtol=1e-6, atol=1e-7)


def test_rnn_backward_refuses_caches_of_other_models() -> None:
    model = _model(bidirectional=True)
    out, h_n, cache = _forward(model)
    same_config = _model(bidirectional=True)  # identical configuration and weights: still another model
    other_dtype = _model(bidirectional=True, dtype="float64")
    out64, _, cache64 = _forward(other_dtype)
    smaller = rnnfast.RNN(I, H, num_layers=1, seed=0)
    _, _, small_cache = _forward(smaller)
    _rejects(lambda: same_config.backward(cache, out), ValueError, "cache: it was made by another model", same_config)
    _rejects(lambda: model.backward(cache64, out), ValueError, "cache: it was made by another model", model)
    _rejects(lambda: other_dtype.backward(cache, out64), ValueError, "cache: it was made by another model",
             other_dtype)
    _rejects(lambda: model.backward(small_cache, out), ValueError, "another model", model)
    cell = rnnfast.RNNCell(I, H)
    _, cell_cache = cell.forward(_x(shape=(B, I)), return_cache=True)
    _rejects(lambda: model.backward(cell_cache, out), TypeError, "cache: expected an RNNCache", model, cell)


def test_stale_cache_is_refused_but_a_rejected_load_does_not_invalidate_caches() -> None:
    model = _model()
    out, _, cache = _forward(model)
    bad = model.state_dict()
    bad.pop("bias_hh_l1")
    with pytest.raises(ValueError, match="missing"):
        model.load_state_dict(bad)
    model.backward(cache, np.ones_like(out), retain_cache=True)  # the rejected load changed nothing, so the cache is still current
    model.load_state_dict(model.state_dict())
    _rejects(lambda: model.backward(cache, np.ones_like(out)), ValueError, "load_state_dict", model)
    # In-place updates through named_parameters() (the training recipe) do not invalidate caches.
    out, _, cache = _forward(model)
    for p in model.named_parameters().values():
        p *= 0.5
    model.backward(cache, np.ones_like(out))


# --------------------------------------------------------------------------------------------------------------
# RNNCell forward / backward
# --------------------------------------------------------------------------------------------------------------

BAD_CELL_X = [
    (None, TypeError, "x: expected a numpy.ndarray"),
    ([0.0] * I, TypeError, "x: expected a numpy.ndarray"),
    (0.5, TypeError, "x: expected a numpy.ndarray"),
    (np.zeros((B, I), np.int32), TypeError, "x: expected dtype float32"),
    (np.zeros((B, I), np.complex64), TypeError, "x: expected dtype float32"),
    (np.zeros((B, I), object), TypeError, "x: expected dtype float32"),
    (np.zeros((B, I), np.float16), TypeError, "x: expected dtype float32"),
    (np.zeros((B, I), ">f4"), TypeError, "x: expected dtype float32"),
    (np.zeros((B, I), np.float64), TypeError, "x: expected dtype float32"),
    (np.array(1.0, np.float32), ValueError, "x: expected shape"),
    (np.zeros((T, B, I), np.float32), ValueError, "x: expected shape"),
    (np.zeros((I + 1,), np.float32), ValueError, "x: expected shape"),
    (np.zeros((B, 0), np.float32), ValueError, "x: expected shape"),
    (np.zeros((I, B), np.float32), ValueError, "x: expected shape"),
]


@pytest.mark.parametrize("x,err,match", BAD_CELL_X, ids=lambda v: str(getattr(v, "shape", v)))
def test_cell_forward_rejects_bad_x(x, err, match) -> None:
    cell = rnnfast.RNNCell(I, H, seed=0)
    _rejects(lambda: cell.forward(x, return_cache=True), err, match, cell)
    _rejects(lambda: cell(x), err, match, cell)


BAD_CELL_H = [
    ([0.0] * H, TypeError, "h: expected a numpy.ndarray"),
    (np.zeros((B, H), np.float64), TypeError, "h: expected dtype float32"),
    (np.zeros((B, H), np.int64), TypeError, "h: expected dtype float32"),
    (np.zeros((B, H), np.bool_), TypeError, "h: expected dtype float32"),
    (np.array(0.0, np.float32), ValueError, r"h: expected shape \(3, 6\), got \(\)"),
    (np.zeros((H,), np.float32), ValueError, r"h: expected shape \(3, 6\), got \(6,\)"),  # no broadcasting
    (np.zeros((1, H), np.float32), ValueError, "h: expected shape"),
    (np.zeros((B, H + 1), np.float32), ValueError, "h: expected shape"),
    (np.zeros((1, B, H), np.float32), ValueError, "h: expected shape"),
]


@pytest.mark.parametrize("h,err,match", BAD_CELL_H, ids=lambda v: str(getattr(v, "shape", v)))
def test_cell_forward_rejects_bad_h(h, err, match) -> None:
    cell = rnnfast.RNNCell(I, H, seed=0)
    _rejects(lambda: cell.forward(_x(shape=(B, I)), h, return_cache=True), err, match, cell)


def test_cell_batch_zero_rejects_a_state_of_batch_one() -> None:
    cell = rnnfast.RNNCell(I, H)
    with pytest.raises(ValueError, match=r"h: expected shape \(0, 6\), got \(1, 6\)"):
        cell(np.zeros((0, I), np.float32), np.zeros((1, H), np.float32))


def test_cell_backward_rejects_bad_arguments_and_changes_nothing() -> None:
    cell = rnnfast.RNNCell(I, H, seed=0)
    other = rnnfast.RNNCell(I, H, seed=0)
    h, cache = cell.forward(_x(shape=(B, I)), return_cache=True)
    hu, cache_u = cell.forward(_x(shape=(I,)), return_cache=True)
    _, other_cache = other.forward(_x(shape=(B, I)), return_cache=True)
    cell.backward(cache, np.ones_like(h), retain_cache=True)
    model = _model()
    _, _, rnn_cache = _forward(model)
    cases = [
        (lambda: cell.backward(cache, None), TypeError, "grad_h_new: expected a numpy.ndarray"),
        (lambda: cell.backward(cache, h.tolist()), TypeError, "grad_h_new: expected a numpy.ndarray"),
        (lambda: cell.backward(cache, h.astype(np.float64)), TypeError, "grad_h_new: expected dtype float32"),
        (lambda: cell.backward(cache, h.astype(np.int8)), TypeError, "grad_h_new"),
        (lambda: cell.backward(cache, h.astype(np.complex64)), TypeError, "grad_h_new"),
        (lambda: cell.backward(cache, np.array(1, np.float32)), ValueError, "grad_h_new: expected shape"),
        (lambda: cell.backward(cache, h[0]), ValueError, r"grad_h_new: expected shape \(3, 6\)"),
        (lambda: cell.backward(cache, h.T.copy()), ValueError, "grad_h_new: expected shape"),
        (lambda: cell.backward(cache_u, h), ValueError, r"grad_h_new: expected shape \(6,\)"),
        (lambda: cell.backward(cache_u, hu[None]), ValueError, r"grad_h_new: expected shape \(6,\)"),
        (lambda: cell.backward(None, h), TypeError, "cache: expected an RNNCellCache"),
        (lambda: cell.backward(h, h), TypeError, "cache: expected an RNNCellCache"),
        (lambda: cell.backward((h, cache), h), TypeError, "cache: expected an RNNCellCache"),
        (lambda: cell.backward(rnn_cache, h), TypeError, "cache: expected an RNNCellCache"),
        (lambda: cell.backward(other_cache, h), ValueError, "cache: it was made by another cell"),
        (lambda: cell.backward(cache), TypeError, "grad_h_new"),
    ]
    for call, err, match in cases:
        _rejects(call, err, match, cell, other, model)
    cell.backward(cache, np.ones_like(h))  # still good


# --------------------------------------------------------------------------------------------------------------
# load_state_dict: all-or-nothing for the cell too (test_api.py covers RNN)
# --------------------------------------------------------------------------------------------------------------


def _cell_state_cases():
    return [
        ("missing", lambda s: s.pop("bias_hh"), ValueError, r"missing \['bias_hh'\]"),
        ("unexpected", lambda s: s.update(bias=np.zeros(H)), ValueError, r"unexpected \['bias'\]"),
        ("RNN names", lambda s: s.update({k + "_l0": s.pop(k) for k in list(s)}), ValueError, "missing"),
        ("non-str key", lambda s: s.update({0: np.zeros(H)}), ValueError, "unexpected"),
        ("transposed", lambda s: s.update(weight_ih=s["weight_ih"].T), ValueError,
         r"state_dict\['weight_ih'\]: expected shape \(6, 5\), got \(5, 6\)"),
        ("column bias", lambda s: s.update(bias_ih=s["bias_ih"][:, None]), ValueError, r"state_dict\['bias_ih'\]"),
        ("scalar", lambda s: s.update(bias_hh=1.0), ValueError, r"state_dict\['bias_hh'\]: expected shape"),
        ("None", lambda s: s.update(weight_hh=None), TypeError, r"state_dict\['weight_hh'\]"),
        ("string", lambda s: s.update(weight_hh="w"), TypeError, r"state_dict\['weight_hh'\]"),
        ("ragged", lambda s: s.update(bias_hh=[[1.0], [1.0, 2.0]]), TypeError, r"state_dict\['bias_hh'\]"),
        ("complex", lambda s: s.update(bias_hh=s["bias_hh"] + 0j), TypeError, "complex"),
        ("object", lambda s: s.update(bias_hh=s["bias_hh"].astype(object)), TypeError, "object"),
        ("datetime", lambda s: s.update(bias_hh=np.zeros(H, "datetime64[s]")), TypeError, r"state_dict\['bias_hh'\]"),
    ]


@pytest.mark.parametrize("case", _cell_state_cases(), ids=lambda c: c[0])
def test_cell_rejected_state_dict_changes_nothing(case) -> None:
    _, mutate, err, match = case
    cell = rnnfast.RNNCell(I, H, seed=0)
    h, cache = cell.forward(_x(shape=(B, I)), return_cache=True)
    cell.backward(cache, np.ones_like(h), retain_cache=True)
    new = {k: v + 1 for k, v in cell.state_dict().items()}
    mutate(new)
    _rejects(lambda: cell.load_state_dict(new), err, match, cell)
    cell.backward(cache, np.ones_like(h))  # not invalidated


def test_load_state_dict_accepts_any_real_numeric_values_and_mapping_types() -> None:
    from types import MappingProxyType

    model = _model(dtype="float64")
    state = model.state_dict()
    for convert in (lambda v: v.astype(np.float32), lambda v: v.tolist(), lambda v: np.asfortranarray(v),
                    lambda v: (v > 0), lambda v: v.astype(np.int16), lambda v: _layout(v, "negative")):
        model.load_state_dict(MappingProxyType({k: convert(v) for k, v in state.items()}))
        for k, v in model.state_dict().items():
            np.testing.assert_array_equal(v, np.asarray(convert(state[k]), dtype=np.float64))
    # NaN / Inf are values like any other.
    model.load_state_dict({k: np.full(v.shape, np.nan) for k, v in state.items()})
    assert all(np.isnan(v).all() for v in model.state_dict().values())


def test_load_state_dict_with_values_aliasing_the_parameters() -> None:
    model = rnnfast.RNN(H, H, bias=False, seed=0)  # weight_ih_l0 and weight_hh_l0 are both [H, H]
    old = model.state_dict()
    live = model.named_parameters()
    model.load_state_dict({"weight_ih_l0": live["weight_hh_l0"], "weight_hh_l0": live["weight_ih_l0"]})
    new = model.state_dict()
    np.testing.assert_array_equal(new["weight_ih_l0"], old["weight_hh_l0"])
    np.testing.assert_array_equal(new["weight_hh_l0"], old["weight_ih_l0"])


def test_load_state_dict_does_not_modify_the_mapping_or_keep_references() -> None:
    model = _model()
    source = {k: v * 2 for k, v in model.state_dict().items()}
    copies = {k: v.copy() for k, v in source.items()}
    model.load_state_dict(source)
    for k, v in source.items():
        _equal_bitwise(v, copies[k])
        v[...] = 7  # the model copied the values in
    assert not any(np.any(p == 7) for p in model.named_parameters().values())
