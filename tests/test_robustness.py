"""Robustness (issue 5): every bad input is a clear TypeError / ValueError (MemoryError for impossible sizes) that
names the argument, never a crash; a rejected call changes nothing; any array layout gives the contiguous result
and is never modified; NaN / Inf propagate as in the reference; batch size 0 works everywhere.

test_api.py covers the first, most common bad inputs; this file covers the rest of issue 5's list.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from conftest import ON_A_THREAD, limited_child_env

import rnnfast
from rnnfast import reference as ref

T, B, I, H = 4, 3, 5, 6

# --------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------


def _snapshot(module: Any) -> dict[str, bytes]:
    """Every observable bit of a module's state: parameters, gradients, the training flag."""
    snap = {f"param:{k}": v.tobytes() for k, v in module.named_parameters().items()}
    snap.update({f"grad:{k}": v.tobytes() for k, v in module.grads.items()})
    snap["training"] = bytes([module.training])
    return snap


def _rejects(call: Callable[[], Any], err: type[BaseException] | tuple[type[BaseException], ...], match: str,
             *modules: Any) -> None:
    """`call` raises `err` with a message matching `match`, and leaves every module in `modules` bitwise as it was."""
    before = [_snapshot(m) for m in modules]
    with pytest.raises(err, match=match):
        call()
    for module, snap in zip(modules, before):
        assert _snapshot(module) == snap, f"a rejected call changed {module!r}"


def _layout(a: np.ndarray, kind: str) -> np.ndarray:
    """The values of `a` in another memory layout (a fresh array or view; `a` itself is not touched)."""
    a = np.asarray(a)
    if kind == "C":
        return a.copy()
    if kind == "F":
        return np.asfortranarray(a)
    if kind == "strided":  # every axis has stride 2 elements (or more)
        big = np.zeros(tuple(2 * n + 1 for n in a.shape), a.dtype)
        view = big[tuple(slice(1, None, 2) for _ in a.shape)]
        view[...] = a
        return view
    if kind == "negative":  # every axis has a negative stride
        flipped = np.ascontiguousarray(a[tuple(slice(None, None, -1) for _ in a.shape)])
        return flipped[tuple(slice(None, None, -1) for _ in a.shape)]
    if kind == "readonly":
        out = a.copy()
        out.flags.writeable = False
        return out
    if kind == "unaligned":  # C-contiguous, but the data start one byte past an aligned address
        buf = np.zeros(a.nbytes + a.itemsize + 1, np.uint8)[1 : 1 + a.nbytes]
        out = buf.view(a.dtype).reshape(a.shape)
        out[...] = a
        assert not out.flags.aligned or a.size == 0
        return out
    raise AssertionError(kind)


LAYOUTS = ["F", "strided", "negative", "readonly", "unaligned"]


def _equal_bitwise(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


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


def _model(**kw: Any) -> rnnfast.RNN:
    kw.setdefault("num_layers", 2)
    kw.setdefault("seed", 0)
    return rnnfast.RNN(I, H, **kw)


def _x(dtype: str = "float32", shape: tuple[int, ...] = (T, B, I)) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


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


# --------------------------------------------------------------------------------------------------------------
# Layouts: any layout gives the contiguous result; inputs are never modified
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("batch_first,bidirectional,dtype", [(False, False, "float32"), (True, True, "float64")])
def test_rnn_any_layout_gives_the_contiguous_result(kind, batch_first, bidirectional, dtype) -> None:
    rng = np.random.default_rng(1)
    model = _model(batch_first=batch_first, bidirectional=bidirectional, dtype=dtype)
    D = 2 if bidirectional else 1
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(dtype)
    h0 = rng.standard_normal((2 * D, B, H)).astype(dtype)
    lengths = np.array([T, 1, T - 1], np.int64)

    def run(conv):
        model.zero_grad()
        args = {"x": conv(x), "h0": conv(h0), "lengths": conv(lengths)}
        saved = {k: (v.copy(), v.strides, v.flags.writeable) for k, v in args.items()}
        out, h_n, cache = model.forward(args["x"], args["h0"], lengths=args["lengths"], return_cache=True)
        g = {"grad_output": conv(np.cos(out)), "grad_h_n": conv(np.sin(h_n))}
        saved.update({k: (v.copy(), v.strides, v.flags.writeable) for k, v in g.items()})
        gx, gh0 = model.backward(cache, g["grad_output"], g["grad_h_n"])
        for k, (copy, strides, writeable) in saved.items():  # inputs untouched, flags included
            v = {**args, **g}[k]
            _equal_bitwise(v, copy)
            assert v.strides == strides and v.flags.writeable == writeable
        for r in (out, h_n, gx, gh0):  # results never alias an input
            assert not any(np.shares_memory(r, v) for v in {**args, **g}.values())
        return [out, h_n, gx, gh0] + [v.copy() for v in model.grads.values()]

    for a, b in zip(run(lambda a: _layout(a, "C")), run(lambda a: _layout(a, kind))):
        _equal_bitwise(a, b)


@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("unbatched", [False, True])
def test_cell_any_layout_gives_the_contiguous_result(kind, unbatched) -> None:
    rng = np.random.default_rng(2)
    cell = rnnfast.RNNCell(I, H, dtype="float64", seed=0)
    x = rng.standard_normal((I,) if unbatched else (B, I))
    h = rng.standard_normal((H,) if unbatched else (B, H))

    def run(conv):
        cell.zero_grad()
        xc, hc = conv(x), conv(h)
        h_new, cache = cell.forward(xc, hc, return_cache=True)
        g = conv(np.cos(h_new))
        copies = [a.copy() for a in (xc, hc, g)]
        gx, gh = cell.backward(cache, g)
        for a, c in zip((xc, hc, g), copies):
            _equal_bitwise(a, c)
        return [h_new, gx, gh] + [v.copy() for v in cell.grads.values()]

    for a, b in zip(run(lambda a: _layout(a, "C")), run(lambda a: _layout(a, kind))):
        _equal_bitwise(a, b)


class _KernelSpy:
    """Wraps a model's compiled kernel and records every array handed to it."""

    def __init__(self, kernel: Any, seen: list[tuple[str, np.ndarray]]) -> None:
        self._kernel, self._seen = kernel, seen

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._kernel, name)
        if name not in ("forward", "backward"):
            return attr

        def call(*args: Any) -> Any:
            self._seen.extend((f"{name} argument {i}", a) for i, a in enumerate(args) if isinstance(a, np.ndarray))
            return attr(*args)

        return call


def test_the_kernels_only_ever_see_aligned_contiguous_arrays() -> None:
    seen: list[tuple[str, np.ndarray]] = []
    model = _model(dtype="float64", bidirectional=True)
    model._kernel = _KernelSpy(model._kernel, seen)
    model._small_kernel = _KernelSpy(model._small_kernel, seen)  # the kernels small calls run on
    cell = rnnfast.RNNCell(I, H, dtype="float64", seed=0)
    cell._kernel = _KernelSpy(cell._kernel, seen)
    u = lambda a: _layout(np.asarray(a), "unaligned")  # noqa: E731
    out, h_n, cache = model.forward(u(_x("float64")), u(np.zeros((4, B, H))), lengths=u(np.array([T, 1, 2])),
                                    return_cache=True)
    model.backward(cache, u(np.ones_like(out)), u(np.ones_like(h_n)))
    h, c = cell.forward(u(_x("float64", (B, I))), u(np.zeros((B, H))), return_cache=True)
    cell.backward(c, u(np.ones_like(h)))
    for kind in LAYOUTS:  # model(x) goes straight to the kernel for aligned C-contiguous batches only
        model(_layout(_x("float64"), kind))
    assert len(seen) > 15
    bad = [name for name, a in seen if not (a.flags.aligned and a.flags.c_contiguous)]
    assert not bad, f"unaligned or non-contiguous arrays passed to the kernels: {bad}"


@pytest.mark.parametrize("kw", [dict(), dict(batch_first=True), dict(num_layers=2, dropout=0.5),
                                dict(num_layers=2, bidirectional=True, nonlinearity="relu")])
def test_calling_the_model_is_forward(kw: dict[str, Any]) -> None:
    """model(x) has a shortcut for plain batches; it must give forward's results bitwise in every mode (dropout
    included: two models with one seed draw the same masks) and forward's errors for bad input."""
    called, forwarded = (rnnfast.RNN(I, H, dtype="float64", seed=5, **kw) for _ in range(2))
    x = _x("float64")
    if kw.get("batch_first"):
        x = np.ascontiguousarray(x.transpose(1, 0, 2))
    for training in (True, False):
        called.train(training)
        forwarded.train(training)
        for args in [(x,), (x, None, np.array([T, 1, 2])), (x[0],)]:
            for a, b in zip(called(*args), forwarded.forward(*args)):
                _equal_bitwise(a, b)
    if kw.get("dropout"):  # the masks really apply in training
        assert not np.array_equal(called.train()(x)[0], called.eval()(x)[0])
    _rejects(lambda: called(x.astype(np.float32)), TypeError, "x: expected dtype float64", called)
    _rejects(lambda: called(x[..., :-1].copy()), ValueError, r"x: expected shape", called)
    _rejects(lambda: called(x.tolist()), TypeError, "x: expected a numpy.ndarray", called)
    if not kw.get("batch_first"):
        _rejects(lambda: called(x[:0].copy()), ValueError, "x: expected a sequence of length >= 1", called)


def test_zero_stride_broadcast_inputs() -> None:
    model = _model(dtype="float64")
    row = np.random.default_rng(3).standard_normal((1, 1, I))
    x = np.broadcast_to(row, (T, B, I))  # read-only, strides 0
    assert x.strides[:2] == (0, 0)
    out, h_n = model(x)
    out_c, h_n_c = model(np.ascontiguousarray(x))
    _equal_bitwise(out, out_c)
    _equal_bitwise(h_n, h_n_c)
    cell = rnnfast.RNNCell(I, H, dtype="float64", seed=0)
    _equal_bitwise(cell(x[0]), cell(np.ascontiguousarray(x[0])))


def test_the_cache_copies_h0_and_refuses_a_reused_x() -> None:
    model = _model(dtype="float64")
    x = _x("float64")
    h0 = np.ones((2, B, H))
    out, _, cache = model.forward(x, h0, return_cache=True)
    expected = model.backward(cache, np.ones_like(out))
    model.zero_grad()
    out, _, cache = model.forward(x, h0, return_cache=True)
    h0[...] = np.nan  # the caller reuses its buffer: the cache holds a copy of h0
    got = model.backward(cache, np.ones_like(out))
    for a, b in zip(expected, got):
        _equal_bitwise(a, b)
    # x and the output are referred to, not copied (as PyTorch saves them): reusing x's buffer is refused.
    model.zero_grad()
    out, _, cache = model.forward(x, h0=None, return_cache=True)
    x[...] = np.nan
    with pytest.raises(ValueError, match="^x: it was modified in place"):
        model.backward(cache, np.ones_like(out))
    assert all(not g.any() for g in model.grads.values())


def test_outputs_are_fresh_writable_arrays() -> None:
    model = _model()
    out1, h1 = model(_x())
    out2, h2 = model(_x())
    assert out1.flags.writeable and h1.flags.writeable and not np.shares_memory(out1, out2)
    out1[...] = 0  # writing into a result affects nothing else
    _equal_bitwise(model(_x())[0], out2)


# --------------------------------------------------------------------------------------------------------------
# NaN / Inf propagate as in the reference (and PyTorch, when installed); never an exception or a warning
# --------------------------------------------------------------------------------------------------------------


def _poisoned(shape: tuple[int, ...], dtype: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape).astype(dtype)
    flat = a.reshape(-1)
    picks = rng.choice(flat.size, size=3, replace=False)
    flat[picks] = [np.nan, np.inf, -np.inf]
    return a


def _ref_params(model: Any) -> dict[str, np.ndarray]:
    return {k: v.astype(np.float64) for k, v in model.named_parameters().items()}


def _where_cases(bugs: dict[tuple[str, str], Any]) -> list[Any]:
    return [pytest.param(act, where, marks=bugs.get((act, where), ()), id=f"{act}-{where}")
            for act in ("tanh", "relu") for where in ("x", "h0", "grad", "weight")]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("act,where", _where_cases({}))
@pytest.mark.parametrize("bidirectional", [False, True])
def test_nan_and_inf_propagate_like_the_reference(dtype, act, where, bidirectional) -> None:
    model = rnnfast.RNN(I, H, num_layers=2, nonlinearity=act, bidirectional=bidirectional, dtype=dtype, seed=0)
    D = 2 if bidirectional else 1
    x = _poisoned((T, B, I), dtype, 1) if where == "x" else _x(dtype)
    h0 = _poisoned((2 * D, B, H), dtype, 2) if where == "h0" else np.zeros((2 * D, B, H), dtype)
    if where == "weight":
        state = model.state_dict()
        state["weight_hh_l0"] = _poisoned(state["weight_hh_l0"].shape, dtype, 3)
        model.load_state_dict(state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rnnfast itself never warns about non-finite values
        out, h_n, cache = model.forward(x, h0, return_cache=True)
        g_out = _poisoned(out.shape, dtype, 4) if where == "grad" else np.ones_like(out)
        gx, gh0 = model.backward(cache, g_out, np.ones_like(h_n))
    with np.errstate(all="ignore"):
        r_out, r_h_n, r_cache = ref.rnn_forward(x.astype(np.float64), _ref_params(model), h0=h0.astype(np.float64),
                                                num_layers=2, nonlinearity=act, bidirectional=bidirectional)
        r_gx, r_gh0, r_grads = ref.rnn_backward(r_cache, g_out.astype(np.float64), np.ones(r_h_n.shape))
    pairs = [(out, r_out), (h_n, r_h_n), (gx, r_gx), (gh0, r_gh0)] + [(model.grads[k], r_grads[k]) for k in r_grads]
    assert any(np.isnan(a).any() for a, _ in pairs), "the poison did not reach the results"
    for a, r in pairs:
        np.testing.assert_array_equal(np.isnan(a), np.isnan(r))
        np.testing.assert_array_equal(np.isposinf(a), np.isposinf(r))
        np.testing.assert_array_equal(np.isneginf(a), np.isneginf(r))
        finite = np.isfinite(r)
        tol = 1e-3 if dtype == "float32" else 1e-9
        np.testing.assert_allclose(a[finite], r[finite], rtol=tol, atol=tol * max(1.0, np.abs(r[finite]).max(initial=0)))


@pytest.mark.parametrize("act,where", _where_cases({}))
def test_nan_and_inf_propagate_like_pytorch(act, where) -> None:
    torch = pytest.importorskip("torch")
    model = rnnfast.RNN(I, H, num_layers=2, nonlinearity=act, bidirectional=True, dtype="float64", seed=0)
    if where == "weight":
        state = model.state_dict()
        state["weight_hh_l0"] = _poisoned(state["weight_hh_l0"].shape, "float64", 3)
        model.load_state_dict(state)
    net = torch.nn.RNN(I, H, num_layers=2, nonlinearity=act, bidirectional=True, dtype=torch.float64)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    x = _poisoned((T, B, I), "float64", 5) if where == "x" else _x("float64")
    h0 = _poisoned((4, B, H), "float64", 6) if where == "h0" else np.zeros((4, B, H))
    out, h_n, cache = model.forward(x, h0, return_cache=True)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    h0t = torch.from_numpy(h0.copy()).requires_grad_(True)
    t_out, t_h_n = net(xt, h0t)
    g = _poisoned(out.shape, "float64", 7) if where == "grad" else np.cos(np.arange(out.size, dtype=np.float64)).reshape(out.shape)
    gx, gh0 = model.backward(cache, g)
    t_out.backward(torch.from_numpy(g))
    pairs = [(out, t_out.detach().numpy()), (h_n, t_h_n.detach().numpy()), (gx, xt.grad.numpy()),
             (gh0, h0t.grad.numpy())] + [(model.grads[k], p.grad.numpy()) for k, p in net.named_parameters()]
    assert any(np.isnan(a).any() for a, _ in pairs)
    for a, b in pairs:
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_array_equal(np.isinf(a), np.isinf(b))


@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_cell_nan_and_inf_propagate_like_the_reference(act) -> None:
    cell = rnnfast.RNNCell(I, H, nonlinearity=act, dtype="float64", seed=0)
    x, h = _poisoned((B, I), "float64", 6), _poisoned((B, H), "float64", 7)
    h_new, cache = cell.forward(x, h, return_cache=True)
    gx, gh = cell.backward(cache, np.ones_like(h_new))
    with np.errstate(all="ignore"):
        r_h, r_cache = ref.cell_forward(x, h, cell.state_dict(), nonlinearity=act)
        r_gx, r_gh, r_grads = ref.cell_backward(r_cache, np.ones_like(r_h))
    for a, r in [(h_new, r_h), (gx, r_gx), (gh, r_gh)] + [(cell.grads[k], r_grads[k]) for k in r_grads]:
        np.testing.assert_array_equal(np.isnan(a), np.isnan(r))
        np.testing.assert_array_equal(np.isinf(a), np.isinf(r))


def test_lengths_keep_nan_in_the_padding_out() -> None:
    model = _model(bidirectional=True, dtype="float64")
    x = _x("float64")
    lengths = np.array([T, 2, 1])
    pad = np.arange(T)[:, None] >= lengths[None, :]
    dirty = x.copy()
    dirty[pad] = np.nan  # padding is never read
    out, h_n, cache = model.forward(dirty, lengths=lengths, return_cache=True)
    assert np.isfinite(out).all() and np.isfinite(h_n).all()
    g = np.ones_like(out)
    g[pad] = np.nan  # gradients at padded steps are ignored
    gx, gh0 = model.backward(cache, g)
    assert np.isfinite(gx).all() and np.isfinite(gh0).all()
    assert all(np.isfinite(v).all() for v in model.grads.values())


# --------------------------------------------------------------------------------------------------------------
# Batch size 0, and lengths with every option
# --------------------------------------------------------------------------------------------------------------

OPTIONS = [
    dict(num_layers=1),
    dict(num_layers=3, bidirectional=True),
    dict(num_layers=2, batch_first=True, dropout=0.5),
    dict(num_layers=2, bias=False, nonlinearity="relu", dtype="float64"),
    dict(num_layers=2, bidirectional=True, batch_first=True, dtype="float64", dropout=0.2),
]


@pytest.mark.parametrize("opts", OPTIONS, ids=repr)
@pytest.mark.parametrize("with_h0,with_lengths", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("grads", ["output", "h_n", "both"])
def test_batch_size_zero_forward_and_backward(opts, with_h0, with_lengths, grads) -> None:
    model = rnnfast.RNN(I, H, seed=0, **opts)
    D = 2 if model.bidirectional else 1
    dtype = model.dtype
    x = np.zeros((0, T, I) if model.batch_first else (T, 0, I), dtype)
    h0 = np.zeros((model.num_layers * D, 0, H), dtype) if with_h0 else None
    lengths = np.zeros(0, np.int64) if with_lengths else None
    out, h_n, cache = model.forward(x, h0, lengths=lengths, return_cache=True)
    assert out.shape == ((0, T, D * H) if model.batch_first else (T, 0, D * H)) and out.dtype == dtype
    assert h_n.shape == (model.num_layers * D, 0, H) and h_n.dtype == dtype
    assert model(x, h0, lengths)[0].shape == out.shape
    g_out = np.zeros_like(out) if grads in ("output", "both") else None
    g_h_n = np.zeros_like(h_n) if grads in ("h_n", "both") else None
    gx, gh0 = model.backward(cache, g_out, g_h_n, retain_cache=True)
    assert gx.shape == x.shape and gh0.shape == h_n.shape and gx.dtype == gh0.dtype == dtype
    assert all(np.all(v == 0) for v in model.grads.values())
    # Bad gradients are still refused for an empty batch.
    with pytest.raises(ValueError, match="grad_output: expected shape"):
        model.backward(cache, np.zeros((T, 1, D * H), dtype))


def test_batch_size_zero_accepts_an_empty_list_of_lengths() -> None:
    model = _model()
    out, h_n = model(np.zeros((T, 0, I), np.float32), lengths=[])
    assert out.shape == (T, 0, H)


@pytest.mark.parametrize("unbatched_h", [False, True])
def test_cell_batch_size_zero_forward_and_backward(unbatched_h) -> None:
    for dtype in ("float32", "float64"):
        cell = rnnfast.RNNCell(I, H, dtype=dtype, seed=0)
        h = np.zeros((0, H), dtype) if unbatched_h else None
        h_new, cache = cell.forward(np.zeros((0, I), dtype), h, return_cache=True)
        assert h_new.shape == (0, H) and h_new.dtype == dtype
        gx, gh = cell.backward(cache, np.zeros((0, H), dtype))
        assert gx.shape == (0, I) and gh.shape == (0, H)
        assert all(np.all(v == 0) for v in cell.grads.values())


@pytest.mark.parametrize("opts", OPTIONS, ids=repr)
def test_lengths_in_every_integer_form_give_the_same_result(opts) -> None:
    model = rnnfast.RNN(I, H, seed=0, **opts).eval()
    x = np.random.default_rng(7).standard_normal((B, T, I) if model.batch_first else (T, B, I)).astype(model.dtype)
    lens = [T, 1, 3]
    expected = model(x, lengths=np.array(lens))
    forms = [lens, tuple(lens), np.array(lens, np.int8), np.array(lens, np.uint16), np.array(lens, np.int32),
             np.array(lens, np.uint64), _layout(np.array(lens), "negative"), _layout(np.array(lens), "strided"),
             _layout(np.array(lens), "readonly"), [np.int64(n) for n in lens]]
    for form in forms:
        before = np.array(form, copy=True)
        got = model(x, lengths=form)
        for a, b in zip(got, expected):
            _equal_bitwise(a, b)
        np.testing.assert_array_equal(np.asarray(form), before)  # not modified


def test_lengths_with_unbatched_input_and_a_scalar() -> None:
    model = _model(bidirectional=True, dtype="float64")
    xu = _x("float64", (T, I))
    expected = model(xu[:2])
    for form in (2, np.int8(2), [2], np.array([2], np.uint8), np.array(2)):
        out, h_n = model(xu, lengths=form)
        np.testing.assert_allclose(out[:2], expected[0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(h_n, expected[1], rtol=1e-12, atol=1e-14)
        assert np.all(out[2:] == 0)


# --------------------------------------------------------------------------------------------------------------
# No leaks, no runaway memory
# --------------------------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
SANITIZED = bool(os.environ.get("RNNFAST_SANITIZED")) or "asan" in os.environ.get("LD_PRELOAD", "")


@pytest.mark.skipif(SANITIZED, reason="AddressSanitizer's quarantine holds freed memory, so RSS grows by design")
def test_100000_forward_backward_calls_keep_resident_memory_flat() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "leak_check.py"), "--calls", "100000"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK, memory stays flat" in proc.stdout


@pytest.mark.skipif(SANITIZED, reason="peak RSS is not meaningful under AddressSanitizer")
def test_a_model_that_passes_the_memory_check_fits_in_memory_while_it_is_built() -> None:
    # Pretend the machine has 256 MiB; build a float32 model whose parameters and gradients just fit (240 MB).
    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs /proc/self/status (VmHWM)")
    # VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's peak (kept across fork and exec).
    code = textwrap.dedent("""
        import os
        def hwm():
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
        real = os.sysconf
        os.sysconf = lambda name: (256 * 2**20) // real("SC_PAGE_SIZE") if name == "SC_PHYS_PAGES" else real(name)
        import rnnfast
        before = hwm()
        cell = rnnfast.RNNCell(28_998, 1000)  # 1000 * (28998 + 1000 + 2) = 30,000,000 parameters
        print(hwm() - before)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) <= 256 * 2**20, f"building the model touched {int(proc.stdout) / 2**20:.0f} MiB"


_ADDRESS_SPACE_SWEEP = ON_A_THREAD + textwrap.dedent("""
    import resource, sys
    import numpy as np
    import rnnfast

    cls = getattr(rnnfast, sys.argv[1])
    cell = sys.argv[1].endswith("Cell")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2048, 64) if cell else (60, 16, 64)).astype(np.float32)
    target = rng.standard_normal((2048, 128) if cell else (60, 16, 128)).astype(np.float32)

    def make():
        return cls(64, 128, seed=0) if cell else cls(64, 128, num_layers=2, seed=0)

    def flat(values):
        out = []
        for v in values if isinstance(values, tuple) else (values,):
            if isinstance(v, tuple):
                out += flat(v)
            elif v is not None:
                out.append(np.array(v))  # a copy: the next call may reuse a released cache's storage
        return out

    def run(model, train):
        if not train:
            return flat(model(x))
        model.zero_grad()
        if cell:
            *states, cache = model.forward(x, return_cache=True)
            grads = model.backward(cache, *(s - target for s in states))
            return flat(tuple(states)) + flat(grads) + [g.copy() for g in model.grads.values()]
        out, _, cache = model.forward(x, return_cache=True)
        grads = model.backward(cache, out - target)
        return [out.copy()] + flat(grads) + [g.copy() for g in model.grads.values()]

    def same(a, b):
        return len(a) == len(b) and all(np.array_equal(p, q) for p, q in zip(a, b))

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        print("skip: the address space has a hard limit here")
        sys.exit(0)

    def sweep():
        failures = successes = 0
        for threads in (2, 1):
            rnnfast.set_num_threads(threads)
            for train in (False, True):
                model = make()
                params = [p.copy() for p in model.parameters()]
                # Ascending room: each failed call may have grown some of the kernels' kept workspaces, so that the
                # next, with more room, fails further in; the first call that fits ends the sweep.
                for room in range(0, 64 << 20, 256 << 10):
                    in_use = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
                    resource.setrlimit(resource.RLIMIT_AS, (in_use + room, hard))
                    try:
                        got = run(model, train)
                    except MemoryError:
                        got = None
                    finally:
                        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
                    if got is None:
                        failures += 1
                        # Nothing half-changed: the parameters as they were, the gradients as before the call.
                        assert all(np.array_equal(p, q) for p, q in zip(params, model.parameters())), room
                        # The gradients as before backward: zero (run zeroes them first).
                        assert not any(g.any() for g in model.grads.values()), (threads, train, room)
                        continue
                    successes += 1
                    assert same(got, run(make(), train)), (threads, train, room)
                    break
                # The calls that failed left the model working.
                assert same(run(model, train), run(make(), train)), (threads, train)
        return failures, successes

    print(*on_a_thread(sweep))
""")


@pytest.mark.skipif(sys.platform != "linux", reason="limits the address space (RLIMIT_AS)")
@pytest.mark.skipif(SANITIZED, reason="AddressSanitizer's shadow memory reserves terabytes: RLIMIT_AS cannot bound it")
@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"])
def test_a_call_that_runs_out_of_address_space_raises_memory_error_and_changes_nothing(kind: str) -> None:
    # As the room grows from nothing, successive calls fail at successive allocations -- NumPy's arrays, the
    # kernels' workspaces and packed weights, a worker thread's stack: each failure is a MemoryError (never a crash,
    # another exception or wrong numbers), leaves the parameters as they were, and the next call works.
    proc = subprocess.run([sys.executable, "-c", _ADDRESS_SPACE_SWEEP, kind], capture_output=True, text=True,
                          env=limited_child_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    if proc.stdout.startswith("skip: "):
        pytest.skip(proc.stdout[6:].strip())
    failures, successes = map(int, proc.stdout.split())
    assert successes == 4 and failures >= 4, proc.stdout  # 10 to 45 on the development machine
