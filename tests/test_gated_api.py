"""rnnfast.LSTM, GRU, LSTMCell and GRUCell: the API behaviour they share with rnnfast.RNN (shapes, parameters,
gradients and caches, pickling, state dicts, modes, threads, borrowed inputs)."""

from __future__ import annotations

import copy
import functools
import math
import pickle
from typing import Any, Callable

import numpy as np
import pytest
from conftest import assert_close
from gated_common import (B, H, I, LENGTHS, PROJ, T, _arrays, _forward_backward, _gru, _lstm, _normal, _params64,
                          _rejects, _rng, _snapshot, _state_shape, _x_shape)

import rnnfast
from rnnfast import reference as ref




@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("layout", ["time_major", "batch_first", "unbatched"])
@pytest.mark.parametrize("bidi", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_shapes_and_dtypes_of_everything_returned(kind: str, layout: str, bidi: bool, dtype: str) -> None:
    layers, D = 2, (2 if bidi else 1)
    unb, bf = layout == "unbatched", layout == "batch_first"
    rng = np.random.default_rng(0)
    x = _normal(rng, _x_shape(unb, bf), dtype)
    if kind == "lstm":
        model: Any = _lstm(num_layers=layers, bidirectional=bidi, batch_first=bf, proj_size=PROJ, dtype=dtype)
        P = PROJ
        out, (h_n, c_n) = model(x)
        out2, (h_n2, c_n2) = model.forward(x)
        out3, (h_n3, c_n3), cache = model.forward(x, return_cache=True)
        states = [(h_n, h_n2, h_n3, _state_shape(layers * D, P, unb)), (c_n, c_n2, c_n3, _state_shape(layers * D, H, unb))]
    else:
        model = _gru(num_layers=layers, bidirectional=bidi, batch_first=bf, dtype=dtype)
        P = H
        out, h_n = model(x)
        out2, h_n2 = model.forward(x)
        out3, h_n3, cache = model.forward(x, return_cache=True)
        states = [(h_n, h_n2, h_n3, _state_shape(layers * D, H, unb))]
    assert isinstance(cache, rnnfast.RNNCache)
    expected_out = x.shape[:-1] + (D * P,)
    for a in (out, out2, out3):
        assert a.shape == expected_out and a.dtype == np.dtype(dtype) and a.flags.writeable
    np.testing.assert_array_equal(out, out2)
    np.testing.assert_array_equal(out, out3)
    for a, a2, a3, shape in states:
        for v in (a, a2, a3):
            assert v.shape == shape and v.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(a, a2)
        np.testing.assert_array_equal(a, a3)
    r = _forward_backward(model, x)
    assert r["gx"].shape == x.shape and r["gx"].dtype == np.dtype(dtype)
    assert r["gh0"].shape == states[0][3] and r["gh0"].dtype == np.dtype(dtype)
    if kind == "lstm":
        assert r["gc0"].shape == states[1][3] and r["gc0"].dtype == np.dtype(dtype)
    for name, g in r["grads"].items():
        assert g.shape == model.named_parameters()[name].shape and g.dtype == np.dtype(dtype)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("unbatched", [False, True])
def test_cell_shapes_and_dtypes(kind: str, dtype: str, unbatched: bool) -> None:
    x = np.ones((I,) if unbatched else (B, I), dtype)
    shape = (H,) if unbatched else (B, H)
    if kind == "lstm":
        cell: Any = rnnfast.LSTMCell(I, H, dtype=dtype, seed=0)
        h, c = cell(x)
        h2, c2, cache = cell.forward(x, return_cache=True)
        assert isinstance(cache, rnnfast.GatedCellCache)
        for a in (h, c, h2, c2):
            assert a.shape == shape and a.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(h, h2)
        np.testing.assert_array_equal(c, c2)
        gx, (gh, gc) = cell.backward(cache, np.ones_like(h2))
        assert gc.shape == shape and gc.dtype == np.dtype(dtype)
    else:
        cell = rnnfast.GRUCell(I, H, dtype=dtype, seed=0)
        h = cell(x)
        h2, cache = cell.forward(x, return_cache=True)
        assert isinstance(cache, rnnfast.GatedCellCache)
        assert h.shape == h2.shape == shape and h.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(h, h2)
        gx, gh = cell.backward(cache, np.ones_like(h2))
    assert gx.shape == x.shape and gx.dtype == np.dtype(dtype)
    assert gh.shape == shape and gh.dtype == np.dtype(dtype)


PARAM_CONFIGS = [dict(num_layers=1), dict(num_layers=2, bidirectional=True), dict(num_layers=3, bias=False),
                 dict(num_layers=2, bidirectional=True, bias=False)]


@pytest.mark.parametrize("config", PARAM_CONFIGS, ids=str)
@pytest.mark.parametrize("proj", [0, PROJ])
def test_parameter_names_and_shapes_match_the_reference(config: dict[str, Any], proj: int) -> None:
    lstm = _lstm(proj_size=proj, **config)
    expected = ref.lstm_param_shapes(I, H, config["num_layers"], config.get("bidirectional", False),
                                     config.get("bias", True), proj)
    assert [(k, v.shape) for k, v in lstm.named_parameters().items()] == list(expected.items())
    assert [(k, v.shape) for k, v in lstm.grads.items()] == list(expected.items())
    assert list(lstm.state_dict()) == list(expected)
    if proj == 0:
        gru = _gru(**config)
        expected = ref.gru_param_shapes(I, H, config["num_layers"], config.get("bidirectional", False),
                                        config.get("bias", True))
        assert [(k, v.shape) for k, v in gru.named_parameters().items()] == list(expected.items())
    for cell, gates in ((rnnfast.LSTMCell(I, H, bias=config.get("bias", True)), 4),
                        (rnnfast.GRUCell(I, H, bias=config.get("bias", True)), 3)):
        names = [(k, v.shape) for k, v in cell.named_parameters().items()]
        want = [("weight_ih", (gates * H, I)), ("weight_hh", (gates * H, H))]
        if config.get("bias", True):
            want += [("bias_ih", (gates * H,)), ("bias_hh", (gates * H,))]
        assert names == want


@pytest.mark.parametrize("config", PARAM_CONFIGS, ids=str)
@pytest.mark.parametrize("proj", [0, PROJ])
def test_parameter_names_and_shapes_match_torch(config: dict[str, Any], proj: int) -> None:
    torch = pytest.importorskip("torch")
    pairs = [(_lstm(proj_size=proj, **config), torch.nn.LSTM(I, H, proj_size=proj, **config))]
    if proj == 0:
        pairs.append((_gru(**config), torch.nn.GRU(I, H, **config)))
        bias = config.get("bias", True)
        pairs.append((rnnfast.LSTMCell(I, H, bias=bias), torch.nn.LSTMCell(I, H, bias=bias)))
        pairs.append((rnnfast.GRUCell(I, H, bias=bias), torch.nn.GRUCell(I, H, bias=bias)))
    for model, module in pairs:
        assert [(k, v.shape) for k, v in model.named_parameters().items()] == \
            [(k, tuple(p.shape)) for k, p in module.named_parameters()]


@pytest.mark.parametrize("make", [
    lambda seed: rnnfast.LSTM(20, 30, num_layers=2, bidirectional=True, proj_size=7, seed=seed),
    lambda seed: rnnfast.GRU(20, 30, num_layers=2, bidirectional=True, dtype="float64", seed=seed),
    lambda seed: rnnfast.LSTMCell(20, 30, seed=seed),
    lambda seed: rnnfast.GRUCell(20, 30, dtype="float64", seed=seed),
], ids=["LSTM", "GRU", "LSTMCell", "GRUCell"])
def test_initialization_is_uniform_within_the_bound_and_seeded(make: Callable[[int], Any]) -> None:
    model = make(3)
    bound = 1 / math.sqrt(30)  # 1/sqrt(hidden_size), also with a projection (as PyTorch)
    values = np.concatenate([p.ravel() for p in model.named_parameters().values()])
    assert np.all(np.abs(values) <= bound)
    assert values.max() > 0.95 * bound and values.min() < -0.95 * bound
    assert abs(values.mean()) < 0.05 * bound
    for name, p in model.named_parameters().items():
        assert np.all(np.abs(p) <= bound) and np.std(p) > 0.4 * bound, name  # every parameter, biases included
    same, other = make(3), make(4)
    for name, p in model.named_parameters().items():
        np.testing.assert_array_equal(same.named_parameters()[name], p)
        assert not np.array_equal(other.named_parameters()[name], p)
    assert all(np.all(g == 0) for g in model.grads.values())


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_grads_accumulate_and_zero_grad_clears_the_views_in_place(kind: str) -> None:
    rng = np.random.default_rng(1)
    model: Any = _lstm(num_layers=2, bidirectional=True, proj_size=PROJ, dtype="float64") if kind == "lstm" \
        else _gru(num_layers=2, bidirectional=True, dtype="float64")
    x1, x2 = rng.standard_normal((T, B, I)), rng.standard_normal((T, B, I))
    r1 = _forward_backward(model, x1, seed=1)
    r2 = _forward_backward(model, x2, seed=2)
    views = model.grads
    model.zero_grad()
    # Two forwards, both caches alive, backwards in reverse order: the sum of the separate gradients.
    rng1, rng2 = np.random.default_rng(1), np.random.default_rng(2)
    if kind == "lstm":
        out1, (h1, c1), cache1 = model.forward(x1, return_cache=True)
        out2, (h2, c2), cache2 = model.forward(x2, return_cache=True)
        g1 = [rng1.standard_normal(a.shape) for a in (out1, h1, c1)]
        g2 = [rng2.standard_normal(a.shape) for a in (out2, h2, c2)]
    else:
        out1, h1, cache1 = model.forward(x1, return_cache=True)
        out2, h2, cache2 = model.forward(x2, return_cache=True)
        g1 = [rng1.standard_normal(a.shape) for a in (out1, h1)]
        g2 = [rng2.standard_normal(a.shape) for a in (out2, h2)]
    model.backward(cache2, *g2)
    model.backward(cache1, *g1)
    for name, v in views.items():
        np.testing.assert_allclose(v, r1["grads"][name] + r2["grads"][name], rtol=1e-12, atol=1e-14, err_msg=name)
        assert np.any(v != 0)
    model.zero_grad()
    assert all(np.all(v == 0) for v in views.values())  # the views taken before are still live
    assert all(np.all(v == 0) for v in model.grads.values())


def test_cell_grads_accumulate_and_zero_grad_clears_in_place() -> None:
    rng = np.random.default_rng(2)
    for cell in (rnnfast.LSTMCell(I, H, dtype="float64", seed=0), rnnfast.GRUCell(I, H, dtype="float64", seed=0)):
        x, g = rng.standard_normal((B, I)), rng.standard_normal((B, H))
        views = cell.grads
        h = rng.standard_normal((B, H))  # a state, so that weight_hh gets a gradient
        result = cell.forward(x, (h, h) if isinstance(cell, rnnfast.LSTMCell) else h, return_cache=True)
        cell.backward(result[-1], g, retain_cache=True)
        once = {k: v.copy() for k, v in views.items()}
        assert all(np.any(v != 0) for v in once.values())
        cell.backward(result[-1], g)
        for name, v in views.items():
            np.testing.assert_allclose(v, 2 * once[name], rtol=1e-12)
        cell.zero_grad()
        assert all(np.all(v == 0) for v in views.values())


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("config", [dict(), dict(num_layers=2, bidirectional=True), dict(batch_first=True),
                                    dict(lengths=True), dict(unbatched=True)], ids=str)
def test_input_grad_false_returns_none_and_the_same_other_gradients(kind: str, config: dict[str, Any]) -> None:
    config = dict(config)
    lengths = np.array(LENGTHS["ragged"]) if config.pop("lengths", False) else None
    unb = config.pop("unbatched", False)
    model: Any = _lstm(dtype="float64", proj_size=PROJ, **config) if kind == "lstm" \
        else _gru(dtype="float64", **config)
    x = np.random.default_rng(3).standard_normal(_x_shape(unb, model.batch_first))
    full = _forward_backward(model, x, lengths=lengths)
    skipped = _forward_backward(model, x, lengths=lengths, input_grad=False)
    assert skipped["gx"] is None
    assert isinstance(full["gx"], np.ndarray) and np.abs(full["gx"]).max() > 1e-3
    for key in ("gh0", "gc0"):
        if key in full:
            np.testing.assert_array_equal(skipped[key], full[key])
    for name, g in full["grads"].items():
        np.testing.assert_array_equal(skipped["grads"][name], g, err_msg=name)


@pytest.mark.parametrize("kind", ["lstm", "gru", "lstm_cell", "gru_cell"])
def test_retain_cache_allows_a_second_backward_and_its_absence_refuses_one(kind: str) -> None:
    rng = np.random.default_rng(4)
    if kind == "lstm":
        model: Any = _lstm(num_layers=2, dtype="float64")
        x = rng.standard_normal((T, B, I))
        out, (h_n, c_n), cache = model.forward(x, return_cache=True)
        backward = lambda **kw: model.backward(cache, out, h_n, c_n, **kw)  # noqa: E731
    elif kind == "gru":
        model = _gru(num_layers=2, dtype="float64")
        x = rng.standard_normal((T, B, I))
        out, h_n, cache = model.forward(x, return_cache=True)
        backward = lambda **kw: model.backward(cache, out, h_n, **kw)  # noqa: E731
    elif kind == "lstm_cell":
        model = rnnfast.LSTMCell(I, H, dtype="float64", seed=0)
        h, c, cache = model.forward(rng.standard_normal((B, I)), return_cache=True)
        backward = lambda **kw: model.backward(cache, h, c, **kw)  # noqa: E731
    else:
        model = rnnfast.GRUCell(I, H, dtype="float64", seed=0)
        h, cache = model.forward(rng.standard_normal((B, I)), return_cache=True)
        backward = lambda **kw: model.backward(cache, h, **kw)  # noqa: E731
    first = backward(retain_cache=True)
    once = {k: v.copy() for k, v in model.grads.items()}
    second = backward()  # allowed by retain_cache; this one releases the cache
    for a, b in zip(_arrays(first), _arrays(second)):
        np.testing.assert_array_equal(a, b)
    for name, v in model.grads.items():
        np.testing.assert_allclose(v, 2 * once[name], rtol=1e-12)
    _rejects(lambda: backward(), ValueError, "cache: backward already ran", model)
    _rejects(lambda: backward(retain_cache=True), ValueError, "retain_cache=True", model)
    with pytest.raises(TypeError, match="retain_cache"):
        backward(retain_cache="yes")


@pytest.mark.parametrize("kind", ["lstm", "gru", "lstm_cell", "gru_cell"])
@pytest.mark.parametrize("how", ["load_state_dict", "assignment"])
def test_stale_cache_after_replacing_the_parameters_is_refused(kind: str, how: str) -> None:
    rng = np.random.default_rng(5)
    if kind in ("lstm", "gru"):
        model: Any = _lstm(num_layers=2, proj_size=PROJ) if kind == "lstm" else _gru(num_layers=2)
        result = model.forward(rng.standard_normal((T, B, I)).astype(np.float32), return_cache=True)
        grads = [result[0]] + ([result[1][0], result[1][1]] if kind == "lstm" else [result[1]])
        name = "weight_hh_l1"
    else:
        model = rnnfast.LSTMCell(I, H, seed=0) if kind == "lstm_cell" else rnnfast.GRUCell(I, H, seed=0)
        result = model.forward(rng.standard_normal((B, I)).astype(np.float32), return_cache=True)
        grads = list(result[:-1])
        name = "weight_hh"
    cache = result[-1]
    # A rejected load changes nothing, so the cache stays good.
    bad = model.state_dict()
    bad.pop(name)
    with pytest.raises(ValueError, match="missing"):
        model.load_state_dict(bad)
    model.backward(cache, *grads, retain_cache=True)
    # In-place updates through the live views (an optimizer step) do not invalidate it either.
    for p in model.named_parameters().values():
        p *= 0.5
    model.backward(cache, *grads, retain_cache=True)
    if how == "load_state_dict":
        model.load_state_dict(model.state_dict())
    else:
        setattr(model, name, model.named_parameters()[name] * 2)
    _rejects(lambda: model.backward(cache, *grads), ValueError, "cache: the parameters were replaced", model)


def test_caches_of_other_models_are_refused() -> None:
    rng = np.random.default_rng(6)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    lstm, twin, gru, rnn = _lstm(), _lstm(), _gru(), rnnfast.RNN(I, H, seed=0)
    out, (h_n, c_n), cache = lstm.forward(x, return_cache=True)
    g_out, g_h, g_cache = gru.forward(x, return_cache=True)
    _, _, r_cache = rnn.forward(x, return_cache=True)
    _rejects(lambda: twin.backward(cache, out), ValueError, "cache: it was made by another model", twin)
    _rejects(lambda: lstm.backward(g_cache, out), ValueError, "another model", lstm)
    _rejects(lambda: gru.backward(cache, g_out), ValueError, "another model", gru)
    _rejects(lambda: lstm.backward(r_cache, out), ValueError, "another model", lstm)
    _rejects(lambda: rnn.backward(g_cache, g_out), ValueError, "another model", rnn)
    cell, gcell = rnnfast.LSTMCell(I, H, seed=0), rnnfast.GRUCell(I, H, seed=0)
    h, c, cell_cache = cell.forward(x[0], return_cache=True)
    gh, gcell_cache = gcell.forward(x[0], return_cache=True)
    _rejects(lambda: lstm.backward(cell_cache, out), TypeError, "cache: expected an RNNCache", lstm)
    _rejects(lambda: cell.backward(cache, h), TypeError, "cache: expected a GatedCellCache", cell)
    _rejects(lambda: gcell.backward(cell_cache, gh), ValueError, "cache: it was made by another cell", gcell)
    _rejects(lambda: rnnfast.LSTMCell(I, H, seed=0).backward(cell_cache, h), ValueError, "another cell")
    # The caches are still good for their own models.
    lstm.backward(cache, out)
    gru.backward(g_cache, g_out)
    cell.backward(cell_cache, h)
    gcell.backward(gcell_cache, gh)


def test_dropout_with_one_layer_warns() -> None:
    for cls in (rnnfast.LSTM, rnnfast.GRU):
        with pytest.warns(UserWarning, match="dropout"):
            cls(I, H, dropout=0.5)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("options", [dict(), dict(num_layers=2, bidirectional=True), dict(batch_first=True)],
                         ids=str)
def test_batch_size_zero_forward_and_backward(kind: str, options: dict[str, Any]) -> None:
    model: Any = _lstm(proj_size=PROJ, **options) if kind == "lstm" else _gru(**options)
    LD = model.num_layers * (2 if model.bidirectional else 1)
    P = PROJ if kind == "lstm" else H
    x = np.zeros(_x_shape(False, model.batch_first, batch=0), np.float32)
    if kind == "lstm":
        hx = (np.zeros((LD, 0, P), np.float32), np.zeros((LD, 0, H), np.float32))
        for state in (None, hx):
            out, (h_n, c_n) = model(x, state)
            out, (h_n, c_n), cache = model.forward(x, state, np.zeros(0, np.int64), return_cache=True)
            assert out.shape == x.shape[:2] + (out.shape[2],) and out.shape[2] == P * LD // model.num_layers
            assert h_n.shape == (LD, 0, P) and c_n.shape == (LD, 0, H)
            gx, (gh0, gc0) = model.backward(cache, grad_c_n=np.zeros_like(c_n))
            assert gx.shape == x.shape and gh0.shape == (LD, 0, P) and gc0.shape == (LD, 0, H)
    else:
        for state in (None, np.zeros((LD, 0, H), np.float32)):
            out, h_n = model(x, state)
            out, h_n, cache = model.forward(x, state, [], return_cache=True)
            assert h_n.shape == (LD, 0, H)
            gx, gh0 = model.backward(cache, np.zeros_like(out))
            assert gx.shape == x.shape and gh0.shape == (LD, 0, H)
    assert all(np.all(g == 0) for g in model.grads.values())


def test_cell_batch_size_zero() -> None:
    x = np.zeros((0, I), np.float32)
    cell = rnnfast.LSTMCell(I, H, seed=0)
    h, c, cache = cell.forward(x, (np.zeros((0, H), np.float32),) * 2, return_cache=True)
    assert h.shape == c.shape == (0, H)
    gx, (gh, gc) = cell.backward(cache, h, c)
    assert gx.shape == (0, I) and gh.shape == gc.shape == (0, H)
    gcell = rnnfast.GRUCell(I, H, seed=0)
    h, cache = gcell.forward(x, return_cache=True)
    gx, gh = gcell.backward(cache, h)
    assert h.shape == gh.shape == (0, H) and gx.shape == (0, I)
    assert all(np.all(g == 0) for m in (cell, gcell) for g in m.grads.values())


@pytest.mark.parametrize("kind", ["lstm", "gru", "lstm_cell", "gru_cell"])
def test_pickle_and_deepcopy_round_trips(kind: str) -> None:
    rng = np.random.default_rng(7)
    if kind == "lstm":
        model: Any = _lstm(num_layers=2, bidirectional=True, proj_size=PROJ, dropout=0.3, batch_first=True,
                           dtype="float64", seed=5)
        x = rng.standard_normal((B, T, I))
    elif kind == "gru":
        model = _gru(num_layers=3, dropout=0.3, bias=False, dtype="float64", seed=5)
        x = rng.standard_normal((T, B, I))
    elif kind == "lstm_cell":
        model = rnnfast.LSTMCell(I, H, bias=False, dtype="float64", seed=5)
        x = rng.standard_normal((B, I))
    else:
        model = rnnfast.GRUCell(I, H, dtype="float64", seed=5)
        x = rng.standard_normal((B, I))
    # Non-trivial gradients, so that they are seen to travel too.
    result = model.forward(x, return_cache=True)
    model.backward(result[-1], result[0])
    for round_trip in (lambda m: pickle.loads(pickle.dumps(m)), copy.deepcopy):
        clone = round_trip(model)
        assert type(clone) is type(model) and repr(clone) == repr(model)
        for name in model._CONFIG:
            assert getattr(clone, name) == getattr(model, name)
        assert clone.training == model.training
        for name, p in model.named_parameters().items():
            np.testing.assert_array_equal(clone.named_parameters()[name], p)
            np.testing.assert_array_equal(clone.grads[name], model.grads[name])
        # Equal outputs, dropout masks included (the generator's state travels), and independent storage.
        a, b = clone.forward(x, return_cache=True), model.forward(x, return_cache=True)
        for u, v in zip(_arrays(a[:-1]), _arrays(b[:-1])):
            np.testing.assert_array_equal(u, v)
        if kind in ("lstm", "gru"):
            assert a[-1].dropout_masks is not None
            np.testing.assert_array_equal(a[-1].dropout_masks, b[-1].dropout_masks)
        next(iter(clone.named_parameters().values()))[...] = 0
        assert np.any(next(iter(model.named_parameters().values())) != 0)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(result[-1])


def test_pickled_model_draws_the_same_dropout_masks() -> None:
    model = _lstm(num_layers=3, dropout=0.5, dtype="float64", seed=9)
    x = np.random.default_rng(0).standard_normal((T, B, I))
    clone = pickle.loads(pickle.dumps(model))
    for _ in range(2):
        a = model.forward(x, return_cache=True)
        b = clone.forward(x, return_cache=True)
        np.testing.assert_array_equal(a[2].dropout_masks, b[2].dropout_masks)
        np.testing.assert_array_equal(a[0], b[0])


@pytest.mark.parametrize("make,names", [
    (lambda: _lstm(num_layers=2, proj_size=PROJ),
     ["input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional", "proj_size",
      "dtype"]),
    (lambda: _gru(num_layers=2),
     ["input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional", "dtype"]),
    (lambda: rnnfast.LSTMCell(I, H), ["input_size", "hidden_size", "bias", "dtype"]),
    (lambda: rnnfast.GRUCell(I, H), ["input_size", "hidden_size", "bias", "dtype"]),
], ids=["LSTM", "GRU", "LSTMCell", "GRUCell"])
def test_configuration_is_read_only(make: Callable[[], Any], names: list[str]) -> None:
    model = make()
    before = _snapshot(model)
    for name in names:
        value = getattr(model, name)
        with pytest.raises(AttributeError, match=f"^{name}: read-only"):
            setattr(model, name, value)
        with pytest.raises(AttributeError, match=name):
            delattr(model, name)
        assert getattr(model, name) == value
    assert _snapshot(model) == before
    if isinstance(model, rnnfast.LSTM):
        with pytest.raises(AttributeError, match="proj_size"):
            model.proj_size = 2


@pytest.mark.parametrize("kind", ["lstm", "gru", "lstm_cell"])
def test_parameter_assignment_copies_in_and_named_parameters_are_live(kind: str) -> None:
    rng = np.random.default_rng(8)
    if kind == "lstm":
        model: Any = _lstm(num_layers=2, proj_size=PROJ, dtype="float64")
        name, x = "weight_hr_l1", rng.standard_normal((T, B, I))
    elif kind == "gru":
        model = _gru(num_layers=2, dtype="float64")
        name, x = "bias_hh_l1", rng.standard_normal((T, B, I))
    else:
        model = rnnfast.LSTMCell(I, H, dtype="float64", seed=0)
        name, x = "weight_hh", rng.standard_normal((B, I))
    view = model.named_parameters()[name]
    call = model if kind != "lstm_cell" else functools.partial(model, hx=(np.ones((B, H)), np.ones((B, H))))
    first = call(x)  # (with a state for the cell, so that weight_hh matters)
    value = rng.standard_normal(view.shape)
    setattr(model, name, value)
    assert getattr(model, name) is not value
    np.testing.assert_array_equal(view, value)  # copied into the storage the views see
    value[...] = 0  # the caller's array is not kept
    assert np.any(view != 0)
    second = call(x)
    assert not np.array_equal(np.asarray(first[0]), np.asarray(second[0]))
    view *= 0.5  # an in-place update through the live view is seen by the next forward
    third = call(x)
    assert not np.array_equal(np.asarray(second[0]), np.asarray(third[0]))
    with pytest.raises(ValueError, match=f"^{name}: expected shape"):
        setattr(model, name, np.zeros(view.shape + (1,)))
    with pytest.raises(TypeError, match=f"^{name}"):
        setattr(model, name, np.zeros(view.shape, complex))


@pytest.mark.parametrize("kind", ["lstm", "gru", "lstm_cell", "gru_cell"])
def test_load_state_dict_strict_and_not(kind: str) -> None:
    make: Callable[[int], Any] = {
        "lstm": lambda s: _lstm(num_layers=2, bidirectional=True, proj_size=PROJ, seed=s),
        "gru": lambda s: _gru(num_layers=2, bidirectional=True, seed=s),
        "lstm_cell": lambda s: rnnfast.LSTMCell(I, H, seed=s),
        "gru_cell": lambda s: rnnfast.GRUCell(I, H, seed=s),
    }[kind]
    model, other = make(0), make(1)
    views = model.named_parameters()
    state = other.state_dict()
    missing = dict(state)
    dropped = list(state)[1]
    missing.pop(dropped)
    extra = dict(state, weight_extra=np.zeros(3))
    _rejects(lambda: model.load_state_dict(missing), ValueError, "missing", model)
    _rejects(lambda: model.load_state_dict(extra), ValueError, "unexpected", model)
    wrong_shape = dict(state)
    wrong_shape[dropped] = np.zeros(3)
    _rejects(lambda: model.load_state_dict(wrong_shape), ValueError, "expected shape", model)
    _rejects(lambda: model.load_state_dict(wrong_shape, strict=False), ValueError, "expected shape", model)
    keep = views[dropped].copy()
    result = model.load_state_dict(missing, strict=False)
    assert result.missing_keys == [dropped] and result.unexpected_keys == []
    np.testing.assert_array_equal(views[dropped], keep)
    result = model.load_state_dict(extra, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == ["weight_extra"]
    result = model.load_state_dict(state)
    assert tuple(result) == ([], [])
    for name, p in views.items():  # the earlier views see the loaded values
        np.testing.assert_array_equal(p, state[name])


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_train_and_eval_modes(kind: str) -> None:
    rng = np.random.default_rng(9)
    x = rng.standard_normal((T, B, I))
    model: Any = _lstm(num_layers=3, dropout=0.5, proj_size=PROJ, dtype="float64") if kind == "lstm" \
        else _gru(num_layers=3, dropout=0.5, dtype="float64")
    plain: Any = _lstm(num_layers=3, proj_size=PROJ, dtype="float64") if kind == "lstm" \
        else _gru(num_layers=3, dtype="float64")
    plain.load_state_dict(model.state_dict())
    assert model.training
    a, b = model.forward(x, return_cache=True), model.forward(x, return_cache=True)
    assert a[2].dropout_masks is not None and not np.array_equal(a[2].dropout_masks, b[2].dropout_masks)
    assert not np.array_equal(a[0], b[0])  # fresh masks per call
    assert model.eval() is model and not model.training
    out, _, cache = model.forward(x, return_cache=True)
    assert cache.dropout_masks is None
    np.testing.assert_array_equal(out, plain(x)[0])
    np.testing.assert_array_equal(model(x)[0], plain(x)[0])
    assert model.train() is model and model.training
    with pytest.raises(TypeError, match="mode"):
        model.train("no")
    # p = 1 drops everything between layers: the last layer sees zeros.
    dead: Any = _lstm(num_layers=2, dropout=1.0, dtype="float64") if kind == "lstm" \
        else _gru(num_layers=2, dropout=1.0, dtype="float64")
    out, _, cache = dead.forward(x, return_cache=True)
    assert np.all(cache.dropout_masks == 0)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_float32_and_float64_agree(kind: str) -> None:
    rng = np.random.default_rng(10)
    opts = dict(num_layers=3, bidirectional=True, batch_first=True)
    if kind == "lstm":
        opts["proj_size"] = PROJ
    make = (lambda d: _lstm(dtype=d, **opts)) if kind == "lstm" else (lambda d: _gru(dtype=d, **opts))
    m64, m32 = make("float64"), make("float32")
    m32.load_state_dict(m64.state_dict())
    x = rng.standard_normal((B, T, I))
    lengths = np.array(LENGTHS["ragged"])
    r64 = _forward_backward(m64, x, lengths=lengths)
    r32 = _forward_backward(m32, x.astype(np.float32), lengths=lengths)
    for key, value in r64.items():
        if key == "grads":
            for name, g in value.items():
                assert r32["grads"][name].dtype == np.float32
                assert_close(r32["grads"][name], g, np.float32, 3 * T * B)
        else:
            assert r32[key].dtype == np.float32
            assert_close(r32[key], value, np.float32, 3 * T)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_results_do_not_depend_on_the_thread_count(kind: str) -> None:
    """Large enough for the threaded kernels (over 2**21 multiply-adds); results within float tolerance."""
    rng = np.random.default_rng(11)
    big_I, big_H, big_T, big_B = 32, 64, 12, 16
    if kind == "lstm":
        model: Any = rnnfast.LSTM(big_I, big_H, num_layers=2, bidirectional=True, proj_size=16, seed=0)
    else:
        model = rnnfast.GRU(big_I, big_H, num_layers=2, bidirectional=True, seed=0)
    x = rng.standard_normal((big_T, big_B, big_I)).astype(np.float32)
    lengths = rng.integers(1, big_T + 1, big_B)
    saved = rnnfast.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            rnnfast.set_num_threads(n)
            assert rnnfast.get_num_threads() == n
            results.append((_forward_backward(model, x), _forward_backward(model, x, lengths=lengths)))
    finally:
        rnnfast.set_num_threads(saved)
    assert rnnfast.get_num_threads() == saved
    for one, two in zip(*results):
        for key, value in one.items():
            if key == "grads":
                for name, g in value.items():
                    assert_close(two["grads"][name], g, np.float32, 2 * big_T * big_B)
            else:
                assert_close(two[key], value, np.float32, 2 * big_T)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("what", ["x", "output"])
def test_borrowed_x_and_output_modified_in_place_are_refused(kind: str, dtype: str, what: str) -> None:
    rng = np.random.default_rng(12)
    model: Any = _lstm(num_layers=2, bidirectional=True, dtype=dtype) if kind == "lstm" \
        else _gru(num_layers=2, bidirectional=True, dtype=dtype)
    x = _normal(rng, (T, B, I), dtype)
    result = model.forward(x, return_cache=True)
    out, cache = result[0], result[-1]
    grad = _normal(rng, out.shape, dtype)
    if what == "x":
        x[...] = _normal(rng, x.shape, dtype)  # the next batch, in the same buffer
    else:
        out -= 1.0
    _rejects(lambda: model.backward(cache, grad), ValueError, rf"^{what}: it was modified in place", model)
    assert all(not g.any() for g in model.grads.values())


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_copied_inputs_may_change_freely(kind: str) -> None:
    """A ragged or batch_first input is copied into the cache; h0 / c0 are never borrowed."""
    rng = np.random.default_rng(13)
    for opts, lengths in ((dict(), LENGTHS["ragged"]), (dict(batch_first=True), None), (dict(), None)):
        model: Any = _lstm(dtype="float64", **opts) if kind == "lstm" else _gru(dtype="float64", **opts)
        x = rng.standard_normal(_x_shape(False, model.batch_first))
        state = ((rng.standard_normal((1, B, H)), rng.standard_normal((1, B, H))) if kind == "lstm"
                 else rng.standard_normal((1, B, H)))
        expected = _forward_backward(model, x, state, lengths)
        x_copy = x.copy()
        state_copy = copy.deepcopy(state)
        model.zero_grad()
        result = model.forward(x_copy, state_copy, lengths, return_cache=True)
        for s in (state_copy if kind == "lstm" else (state_copy,)):
            s[...] = 5.0
        if lengths is not None or opts:
            x_copy[...] = 7.0
        g = np.random.default_rng(0)
        grads = [g.standard_normal(a.shape) for a in ([result[0]] + list(result[1]) if kind == "lstm"
                                                       else [result[0], result[1]])]
        got = model.backward(result[-1], *grads)
        np.testing.assert_array_equal(got[0], expected["gx"])
        for name, v in model.grads.items():
            np.testing.assert_array_equal(v, expected["grads"][name])


@pytest.mark.parametrize("kind", ["lstm_cell", "gru_cell"])
@pytest.mark.parametrize("unbatched", [False, True])
def test_cell_caches_hold_copies(kind: str, unbatched: bool) -> None:
    rng = np.random.default_rng(14)
    shape = (H,) if unbatched else (B, H)
    x = rng.standard_normal((I,) if unbatched else (B, I))
    h, c = rng.standard_normal(shape), rng.standard_normal(shape)
    g_h, g_c = rng.standard_normal(shape), rng.standard_normal(shape)
    cell: Any = rnnfast.LSTMCell(I, H, dtype="float64", seed=0) if kind == "lstm_cell" \
        else rnnfast.GRUCell(I, H, dtype="float64", seed=0)

    def run(modify: bool) -> tuple[Any, dict[str, np.ndarray]]:
        cell.zero_grad()
        xs, hs, cs = x.copy(), h.copy(), c.copy()
        if kind == "lstm_cell":
            h_new, c_new, cache = cell.forward(xs, (hs, cs), return_cache=True)
            news = (h_new, c_new)
        else:
            h_new, cache = cell.forward(xs, hs, return_cache=True)
            news = (h_new,)
        if modify:  # stepping by hand reuses the arrays
            for a in (xs, hs, cs) + news:
                a[...] = 3.0
        back = cell.backward(cache, g_h, g_c) if kind == "lstm_cell" else cell.backward(cache, g_h)
        return back, {k: v.copy() for k, v in cell.grads.items()}

    (want, want_grads), (got, got_grads) = run(False), run(True)
    for a, b in zip(_arrays(got), _arrays(want)):
        np.testing.assert_array_equal(a, b)
    for name in want_grads:
        np.testing.assert_array_equal(got_grads[name], want_grads[name])


def test_lengths_equal_to_t_are_bitwise_no_lengths_and_padding_does_not_matter() -> None:
    rng = np.random.default_rng(15)
    for model in (_lstm(num_layers=2, bidirectional=True, proj_size=PROJ, dtype="float64"),
                  _gru(num_layers=2, bidirectional=True, dtype="float64")):
        x = rng.standard_normal((T, B, I))
        full = _forward_backward(model, x)
        same = _forward_backward(model, x, lengths=[T] * B)
        for key in full:
            if key != "grads":
                np.testing.assert_array_equal(full[key], same[key])
        lengths = np.array(LENGTHS["ragged"])
        a = _forward_backward(model, x, lengths=lengths)
        noisy = x.copy()
        noisy[np.arange(T)[:, None] >= lengths[None, :]] = 1e3  # the padding holds garbage
        b = _forward_backward(model, noisy, lengths=lengths)
        for key in a:
            if key != "grads":
                np.testing.assert_array_equal(a[key], b[key])
        # Each item alone gives its own result (PackedSequence semantics), whatever the order of the batch.
        for item in range(B):
            n = int(lengths[item])
            alone = model(x[:n, item:item + 1])
            np.testing.assert_allclose(a["out"][:n, item], alone[0][:, 0], rtol=1e-12, atol=1e-14)
            h_alone = alone[1][0] if isinstance(model, rnnfast.LSTM) else alone[1]
            np.testing.assert_allclose(a["h_n"][:, item], h_alone[:, 0], rtol=1e-12, atol=1e-14)


def test_calls_with_the_contracts_keyword_names() -> None:
    """The signatures of the contract, called with keywords exactly as written there."""
    rng = np.random.default_rng(16)
    x = rng.standard_normal((T, B, I))
    lengths = LENGTHS["ragged"]
    lstm = rnnfast.LSTM(input_size=I, hidden_size=H, num_layers=2, bias=True, batch_first=False, dropout=0.0,
                        bidirectional=True, proj_size=PROJ, dtype="float64", seed=0)
    hx = (rng.standard_normal((4, B, PROJ)), rng.standard_normal((4, B, H)))
    out, (h_n, c_n) = lstm(x, hx=hx, lengths=lengths)
    out2, (h_n2, c_n2), cache = lstm.forward(x, hx=hx, lengths=lengths, return_cache=True)
    for a, b in ((out, out2), (h_n, h_n2), (c_n, c_n2)):
        np.testing.assert_array_equal(a, b)
    grad_input, (grad_h0, grad_c0) = lstm.backward(cache, grad_output=out, grad_h_n=h_n, grad_c_n=c_n,
                                                   input_grad=True, retain_cache=True)
    none, (grad_h0_b, grad_c0_b) = lstm.backward(cache, grad_c_n=c_n, input_grad=False)
    assert none is None and grad_input.shape == x.shape

    gru = rnnfast.GRU(input_size=I, hidden_size=H, num_layers=2, bias=False, batch_first=True, dropout=0.0,
                      bidirectional=False, dtype="float64", seed=0)
    xb = x.transpose(1, 0, 2)
    out, h_n = gru(xb, h0=np.zeros((2, B, H)), lengths=lengths)
    out2, h_n2, cache = gru.forward(xb, h0=None, lengths=lengths, return_cache=True)
    np.testing.assert_array_equal(out, out2)
    grad_input, grad_h0 = gru.backward(cache, grad_output=out, grad_h_n=h_n, input_grad=True)
    assert grad_input.shape == xb.shape and grad_h0.shape == (2, B, H)

    cell = rnnfast.LSTMCell(input_size=I, hidden_size=H, bias=True, dtype="float64", seed=0)
    h_new, c_new = cell(x[0], hx=(hx[1][0], hx[1][1]))
    h_new, c_new, cache = cell.forward(x[0], hx=None, return_cache=True)
    grad_x, (grad_h, grad_c) = cell.backward(cache, grad_h_new=h_new, grad_c_new=None)
    assert grad_x.shape == (B, I) and grad_h.shape == grad_c.shape == (B, H)

    gcell = rnnfast.GRUCell(input_size=I, hidden_size=H, bias=True, dtype="float64", seed=0)
    h_new = gcell(x[0], h=None)
    h_new, cache = gcell.forward(x[0], h=h_new, return_cache=True)
    grad_x, grad_h = gcell.backward(cache, grad_h_new=h_new)
    assert grad_x.shape == (B, I) and grad_h.shape == (B, H)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_unbatched_lengths_as_a_scalar_or_one_entry(kind: str) -> None:
    model: Any = _lstm(num_layers=2, bidirectional=True, proj_size=PROJ, dtype="float64") if kind == "lstm" \
        else _gru(num_layers=2, bidirectional=True, dtype="float64")
    x = np.random.default_rng(17).standard_normal((T, I))
    a, b, c = (_forward_backward(model, x, lengths=n) for n in (3, [3], np.array([3], np.int32)))
    alone = _forward_backward(model, x[:3])
    for key in a:
        if key != "grads":
            np.testing.assert_array_equal(a[key], b[key])
            np.testing.assert_array_equal(a[key], c[key])
    assert np.all(a["out"][3:] == 0) and np.all(a["gx"][3:] == 0)
    np.testing.assert_allclose(a["out"][:3], alone["out"], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(a["h_n"], alone["h_n"], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cls", [rnnfast.LSTM, rnnfast.LSTMCell])
def test_an_lstm_state_pair_with_one_none_is_refused_as_pytorch_does(cls) -> None:
    model = cls(3, 4, seed=0)
    x = np.zeros((2, 3) if cls is rnnfast.LSTMCell else (5, 2, 3), np.float32)
    state = np.zeros((2, 4) if cls is rnnfast.LSTMCell else (1, 2, 4), np.float32)
    for hx, which in (((None, state), "h0"), ((state, None), "c0")):
        with pytest.raises(TypeError, match=f"hx: expected a pair .* got None for {which}"):
            model(x, hx)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_wide_input_gradients_match_reference(kind: str, with_lengths: bool) -> None:
    """A chunk whose inputs are too large for the step tiles' weight gradients (recurrent.hpp: kPanelGradientL2s,
    a few MB on usual machines) takes Eigen's GEMM for dW_ih and dW_hh, full and ragged: the same gradients."""
    rng = _rng(("wide", kind, with_lengths))
    T, Bw, Iw, Hw = 300, 2, 4096, 4
    model = rnnfast.LSTM(Iw, Hw, dtype="float64", seed=5) if kind == "lstm" else rnnfast.GRU(Iw, Hw, dtype="float64", seed=5)
    x = _normal(rng, (T, Bw, Iw), "float64")
    lengths = np.array([T, T - 40]) if with_lengths else None
    if kind == "lstm":
        out, _, cache = model.forward(x, None, lengths, return_cache=True)
        r_out, _, r_cache = ref.lstm_forward(x, _params64(model), lengths=lengths)
    else:
        out, _, cache = model.forward(x, None, lengths, return_cache=True)
        r_out, _, r_cache = ref.gru_forward(x, _params64(model), lengths=lengths)
    assert_close(out, r_out, "float64", T)
    g = _normal(rng, out.shape, "float64")
    model.backward(cache, g, input_grad=False)
    r_grads = (ref.lstm_backward if kind == "lstm" else ref.gru_backward)(r_cache, g)[2]
    for name, grad in model.grads.items():
        assert_close(grad, r_grads[name], "float64", T * Bw)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("batch", [1, 3])
def test_weights_changed_in_place_between_calls(kind: str, batch: int) -> None:
    """Small weights keep their per-step layout from one call to the next while their bytes are the same
    (packed_product.hpp: PackedCopies): a change in place to any single element, between calls, shows in the next
    forward and backward, which match the reference on the new weights."""
    rng = _rng(("in place", kind, batch))
    Ti, Ii, Hi = 20, 100, 20  # one-row steps of batch 1 are laid out too (steps >= 16)
    cls = {"rnn": rnnfast.RNN, "lstm": rnnfast.LSTM, "gru": rnnfast.GRU}[kind]
    model = cls(Ii, Hi, dtype="float64", seed=3)
    forward = {"rnn": ref.rnn_forward, "lstm": ref.lstm_forward, "gru": ref.gru_forward}[kind]
    backward = {"rnn": ref.rnn_backward, "lstm": ref.lstm_backward, "gru": ref.gru_backward}[kind]
    x = _normal(rng, (Ti, batch, Ii), "float64")
    g = _normal(rng, (Ti, batch, Hi), "float64")
    params = model.named_parameters()
    changes = [("weight_ih_l0", (0, 0)), ("weight_hh_l0", (-1, -1)), ("weight_ih_l0", (Hi // 2, Ii // 2)),
               ("weight_hh_l0", (0, Hi - 1))]
    for name, where in [(None, None)] + changes:
        if name is not None:
            params[name][where] += 0.5
        model.zero_grad()
        out, _, cache = model.forward(x, return_cache=True)
        r_out, _, r_cache = forward(x, _params64(model))
        assert_close(out, r_out, "float64", Ti)
        model.backward(cache, g, input_grad=False)
        r_grads = backward(r_cache, g)[2]
        for grad_name, grad in model.grads.items():
            assert_close(grad, r_grads[grad_name], "float64", Ti * batch)
