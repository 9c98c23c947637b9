"""rnnfast.LSTM, GRU, LSTMCell and GRUCell against the NumPy reference over the option grid, and against PyTorch
(when installed), same weights both ways.

The reference grid has 11 options (LSTM), too many for the full product: it runs on a covering subset in which
every combination of values of any four options occurs in some case (greedy, deterministic); the PyTorch grid
(float64) on one of strength three.
"""

from __future__ import annotations

import itertools
import zlib
from typing import Any

import numpy as np
import pytest
from conftest import assert_close
from gated_common import (B, F64, H, I, PROJ, T, _case_id, _lengths_for, _normal, _padded_mask, _params64, _rng,
                          _state_shape, _time_major, _x_shape, covering)

import rnnfast
from rnnfast import reference as ref


# --------------------------------------------------------------------------------------------------------------
# 1. Against the NumPy reference, over a covering subset of the option grid
# --------------------------------------------------------------------------------------------------------------

_COMMON = dict(layers=[1, 2, 3], bidi=[False, True], batch_first=[False, True], bias=[True, False],
               dtype=["float32", "float64"], unbatched=[False, True], hx=[False, True],
               lengths=[None, "ragged", "sorted"], dropout=[0.0, 0.4])
LSTM_GRID = covering({**_COMMON, "proj": [0, PROJ], "grads": ["output", "h_n", "c_n", "all"]}, 4,
                     valid=lambda c: c["layers"] > 1 or c["dropout"] == 0)  # dropout warns with one layer
GRU_GRID = covering({**_COMMON, "grads": ["output", "h_n", "all"]}, 4,
                    valid=lambda c: c["layers"] > 1 or c["dropout"] == 0)


def _check_padding(out: np.ndarray, gx: np.ndarray, lengths: Any, unbatched: bool, batch_first: bool) -> None:
    if lengths is None:
        return
    padded = _padded_mask(lengths)
    assert np.all(_time_major(out, unbatched, batch_first)[padded] == 0)
    assert np.all(_time_major(gx, unbatched, batch_first)[padded] == 0)  # padded inputs get no gradient


@pytest.mark.parametrize("case", LSTM_GRID, ids=_case_id)
def test_lstm_matches_reference(case: dict[str, Any]) -> None:
    rng = _rng(case)
    layers, bidi, bf, unb, dtype = case["layers"], case["bidi"], case["batch_first"], case["unbatched"], case["dtype"]
    D, P = (2 if bidi else 1), (case["proj"] or H)
    model = rnnfast.LSTM(I, H, num_layers=layers, bias=case["bias"], batch_first=bf, dropout=case["dropout"],
                         bidirectional=bidi, proj_size=case["proj"], dtype=dtype, seed=zlib.crc32(_case_id(case).encode()))
    assert model.training
    x = _normal(rng, _x_shape(unb, bf), dtype)
    h_shape, c_shape = _state_shape(layers * D, P, unb), _state_shape(layers * D, H, unb)
    hx = (_normal(rng, h_shape, dtype), _normal(rng, c_shape, dtype)) if case["hx"] else None
    lengths = _lengths_for(case["lengths"], unb)

    out, (h_n, c_n), cache = model.forward(x, hx, lengths, return_cache=True)
    masks = cache.dropout_masks
    if case["dropout"] > 0:
        assert masks is not None and masks.dtype == np.dtype(dtype)
        assert masks.shape == (layers - 1, T, 1 if unb else B, D * P)
        assert set(np.unique(masks)) <= {0.0, np.dtype(dtype).type(1 / 0.6)}
    else:
        assert masks is None
    r_out, (r_h_n, r_c_n), r_cache = ref.lstm_forward(
        x.astype(F64), _params64(model), num_layers=layers, bias=case["bias"], batch_first=bf, bidirectional=bidi,
        proj_size=case["proj"], hx=None if hx is None else (hx[0].astype(F64), hx[1].astype(F64)),
        dropout_masks=None if masks is None else masks.astype(F64), lengths=lengths)
    depth = layers * T
    for got, want in ((out, r_out), (h_n, r_h_n), (c_n, r_c_n)):
        assert got.dtype == np.dtype(dtype)
        assert_close(got, want, dtype, depth)

    which = case["grads"]
    g_out = _normal(rng, out.shape, dtype) if which in ("output", "all") else None
    g_h = _normal(rng, h_n.shape, dtype) if which in ("h_n", "all") else None
    g_c = _normal(rng, c_n.shape, dtype) if which in ("c_n", "all") else None
    gx, (gh0, gc0) = model.backward(cache, g_out, g_h, g_c)
    as64 = lambda a: None if a is None else a.astype(F64)  # noqa: E731
    r_gx, (r_gh0, r_gc0), r_grads = ref.lstm_backward(r_cache, as64(g_out), as64(g_h), as64(g_c))
    assert gx.shape == x.shape and gh0.shape == h_shape and gc0.shape == c_shape
    for got, want in ((gx, r_gx), (gh0, r_gh0), (gc0, r_gc0)):
        assert got.dtype == np.dtype(dtype)
        assert_close(got, want, dtype, depth)
    _check_padding(out, gx, lengths, unb, bf)
    grads = model.grads
    assert list(grads) == list(r_grads) == ref.lstm_param_names(layers, bidi, case["bias"], case["proj"])
    for name, g in grads.items():
        assert_close(g, r_grads[name], dtype, depth * B)


@pytest.mark.parametrize("case", GRU_GRID, ids=_case_id)
def test_gru_matches_reference(case: dict[str, Any]) -> None:
    rng = _rng(case)
    layers, bidi, bf, unb, dtype = case["layers"], case["bidi"], case["batch_first"], case["unbatched"], case["dtype"]
    D = 2 if bidi else 1
    model = rnnfast.GRU(I, H, num_layers=layers, bias=case["bias"], batch_first=bf, dropout=case["dropout"],
                        bidirectional=bidi, dtype=dtype, seed=zlib.crc32(_case_id(case).encode()))
    x = _normal(rng, _x_shape(unb, bf), dtype)
    h_shape = _state_shape(layers * D, H, unb)
    h0 = _normal(rng, h_shape, dtype) if case["hx"] else None
    lengths = _lengths_for(case["lengths"], unb)

    out, h_n, cache = model.forward(x, h0, lengths, return_cache=True)
    masks = cache.dropout_masks
    if case["dropout"] > 0:
        assert masks is not None and masks.shape == (layers - 1, T, 1 if unb else B, D * H)
    else:
        assert masks is None
    r_out, r_h_n, r_cache = ref.gru_forward(
        x.astype(F64), _params64(model), num_layers=layers, bias=case["bias"], batch_first=bf, bidirectional=bidi,
        h0=None if h0 is None else h0.astype(F64), dropout_masks=None if masks is None else masks.astype(F64),
        lengths=lengths)
    depth = layers * T
    for got, want in ((out, r_out), (h_n, r_h_n)):
        assert got.dtype == np.dtype(dtype)
        assert_close(got, want, dtype, depth)

    which = case["grads"]
    g_out = _normal(rng, out.shape, dtype) if which in ("output", "all") else None
    g_h = _normal(rng, h_n.shape, dtype) if which in ("h_n", "all") else None
    gx, gh0 = model.backward(cache, g_out, g_h)
    r_gx, r_gh0, r_grads = ref.gru_backward(r_cache, None if g_out is None else g_out.astype(F64),
                                            None if g_h is None else g_h.astype(F64))
    assert gx.shape == x.shape and gh0.shape == h_shape
    assert gx.dtype == gh0.dtype == np.dtype(dtype)
    assert_close(gx, r_gx, dtype, depth)
    assert_close(gh0, r_gh0, dtype, depth)
    _check_padding(out, gx, lengths, unb, bf)
    grads = model.grads
    assert list(grads) == list(r_grads) == ref.gru_param_names(layers, bidi, case["bias"])
    for name, g in grads.items():
        assert_close(g, r_grads[name], dtype, depth * B)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_large_problems_match_reference(kind: str, dtype: str, with_lengths: bool) -> None:
    """Over rnnfast's small-problem size (2**21 multiply-adds per call), where the work is split across threads."""
    rng = _rng((kind, dtype, with_lengths))
    big_I, big_H, big_T, big_B, L, proj = 16, 48, 8, 12, 2, (20 if kind == "lstm" else 0)
    P = proj or big_H
    opts = dict(num_layers=L, bidirectional=True, dropout=0.3, batch_first=True, dtype=dtype, seed=1)
    model: Any = rnnfast.LSTM(big_I, big_H, proj_size=proj, **opts) if kind == "lstm" \
        else rnnfast.GRU(big_I, big_H, **opts)
    assert big_T * big_B * model._work_per_row > 2**21
    x = _normal(rng, (big_B, big_T, big_I), dtype)
    lengths = rng.integers(1, big_T + 1, big_B) if with_lengths else None
    h0 = _normal(rng, (2 * L, big_B, P), dtype)
    c0 = _normal(rng, (2 * L, big_B, big_H), dtype)
    kw = dict(num_layers=L, bidirectional=True, batch_first=True, lengths=lengths)
    if kind == "lstm":
        out, (h_n, c_n), cache = model.forward(x, (h0, c0), lengths, return_cache=True)
        finals = [h_n, c_n]
        r_out, r_finals, r_cache = ref.lstm_forward(x.astype(F64), _params64(model), proj_size=proj,
                                                    hx=(h0.astype(F64), c0.astype(F64)),
                                                    dropout_masks=cache.dropout_masks.astype(F64), **kw)
    else:
        out, h_n, cache = model.forward(x, h0, lengths, return_cache=True)
        finals = [h_n]
        r_out, r_h_n, r_cache = ref.gru_forward(x.astype(F64), _params64(model), h0=h0.astype(F64),
                                                dropout_masks=cache.dropout_masks.astype(F64), **kw)
        r_finals = (r_h_n,)
    depth = L * big_T
    assert_close(out, r_out, dtype, depth)
    for got, want in zip(finals, r_finals):
        assert_close(got, want, dtype, depth)
    grads = [_normal(rng, a.shape, dtype) for a in [out] + finals]
    if kind == "lstm":
        gx, (gh0, gc0) = model.backward(cache, *grads)
        r_gx, (r_gh0, r_gc0), r_grads = ref.lstm_backward(r_cache, *[g.astype(F64) for g in grads])
        assert_close(gc0, r_gc0, dtype, depth)
    else:
        gx, gh0 = model.backward(cache, *grads)
        r_gx, r_gh0, r_grads = ref.gru_backward(r_cache, *[g.astype(F64) for g in grads])
    assert_close(gx, r_gx, dtype, depth)
    assert_close(gh0, r_gh0, dtype, depth)
    for name, g in model.grads.items():
        assert_close(g, r_grads[name], dtype, depth * big_B)


CELL_GRID = list(itertools.product([True, False], ["float32", "float64"], [False, True], [False, True]))


@pytest.mark.parametrize("which", ["h", "c", "both"])
@pytest.mark.parametrize("bias,dtype,unbatched,with_hx", CELL_GRID)
def test_lstm_cell_matches_reference(bias: bool, dtype: str, unbatched: bool, with_hx: bool, which: str) -> None:
    rng = _rng((bias, dtype, unbatched, with_hx, which))
    cell = rnnfast.LSTMCell(I, H, bias=bias, dtype=dtype, seed=3)
    x = _normal(rng, (I,) if unbatched else (B, I), dtype)
    shape = (H,) if unbatched else (B, H)
    hx = (_normal(rng, shape, dtype), _normal(rng, shape, dtype)) if with_hx else None
    h_new, c_new, cache = cell.forward(x, hx, return_cache=True)
    (r_h, r_c), r_cache = ref.lstm_cell_forward(x.astype(F64), None if hx is None else tuple(a.astype(F64) for a in hx),
                                                _params64(cell))
    for got, want in ((h_new, r_h), (c_new, r_c)):
        assert got.dtype == np.dtype(dtype)
        assert_close(got, want, dtype)
    g_h = _normal(rng, shape, dtype) if which in ("h", "both") else None
    g_c = _normal(rng, shape, dtype) if which in ("c", "both") else None
    gx, (gh, gc) = cell.backward(cache, g_h, g_c)
    r_gx, (r_gh, r_gc), r_grads = ref.lstm_cell_backward(
        r_cache, None if g_h is None else g_h.astype(F64), None if g_c is None else g_c.astype(F64))
    assert gx.shape == x.shape and gh.shape == gc.shape == shape
    for got, want in ((gx, r_gx), (gh, r_gh), (gc, r_gc)):
        assert got.dtype == np.dtype(dtype)
        assert_close(got, want, dtype)
    assert list(cell.grads) == list(r_grads)
    for name, g in cell.grads.items():
        assert_close(g, r_grads[name], dtype, B)


@pytest.mark.parametrize("bias,dtype,unbatched,with_h", CELL_GRID)
def test_gru_cell_matches_reference(bias: bool, dtype: str, unbatched: bool, with_h: bool) -> None:
    rng = _rng((bias, dtype, unbatched, with_h))
    cell = rnnfast.GRUCell(I, H, bias=bias, dtype=dtype, seed=4)
    x = _normal(rng, (I,) if unbatched else (B, I), dtype)
    shape = (H,) if unbatched else (B, H)
    h = _normal(rng, shape, dtype) if with_h else None
    h_new, cache = cell.forward(x, h, return_cache=True)
    r_h, r_cache = ref.gru_cell_forward(x.astype(F64), None if h is None else h.astype(F64), _params64(cell))
    assert h_new.dtype == np.dtype(dtype)
    assert_close(h_new, r_h, dtype)
    g = _normal(rng, shape, dtype)
    gx, gh = cell.backward(cache, g)
    r_gx, r_gh, r_grads = ref.gru_cell_backward(r_cache, g.astype(F64))
    assert gx.shape == x.shape and gh.shape == shape
    assert_close(gx, r_gx, dtype)
    assert_close(gh, r_gh, dtype)
    assert list(cell.grads) == list(r_grads)
    for name, grad in cell.grads.items():
        assert_close(grad, r_grads[name], dtype, B)


# --------------------------------------------------------------------------------------------------------------
# 2. Against PyTorch (float64), same weights both ways, PackedSequence for lengths; SGD training runs
# --------------------------------------------------------------------------------------------------------------

TORCH_TOL = dict(rtol=1e-9, atol=1e-11)

_TORCH_COMMON = dict(layers=[1, 2, 3], bidi=[False, True], batch_first=[False, True], bias=[True, False],
                     unbatched=[False, True], hx=[False, True], lengths=[None, "ragged", "sorted"],
                     weights=["from_torch", "to_torch"])
LSTM_TORCH_GRID = covering({**_TORCH_COMMON, "proj": [0, PROJ]}, 3,
                           valid=lambda c: not (c["unbatched"] and c["lengths"]))  # torch packs batches only
GRU_TORCH_GRID = covering(_TORCH_COMMON, 3, valid=lambda c: not (c["unbatched"] and c["lengths"]))


def _share_weights(model: Any, module: Any, direction: str) -> None:
    torch = pytest.importorskip("torch")
    if direction == "from_torch":
        result = model.load_state_dict(module.state_dict())  # tensors are accepted as they are
        assert result.missing_keys == [] and result.unexpected_keys == []
    else:
        module.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})  # strict in torch
    for name, p in module.named_parameters():
        np.testing.assert_array_equal(model.named_parameters()[name], p.detach().numpy())


def _torch_run(module: Any, x: np.ndarray, states: Any, lengths: Any, batch_first: bool) -> tuple[Any, Any, Any]:
    """(tx, output, final states) of a torch recurrent module, through a PackedSequence with lengths."""
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    tx = torch.tensor(x, requires_grad=True)
    if lengths is None:
        out, finals = module(tx, states)
        return tx, out, finals
    packed = pack_padded_sequence(tx, torch.as_tensor(lengths), batch_first=batch_first, enforce_sorted=False)
    out, finals = module(packed, states)
    out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=T)
    return tx, out, finals


@pytest.mark.parametrize("case", LSTM_TORCH_GRID, ids=_case_id)
def test_lstm_matches_torch(case: dict[str, Any]) -> None:
    torch = pytest.importorskip("torch")
    rng = _rng(case)
    layers, bidi, bf, unb = case["layers"], case["bidi"], case["batch_first"], case["unbatched"]
    D, P = (2 if bidi else 1), (case["proj"] or H)
    kw = dict(num_layers=layers, bias=case["bias"], batch_first=bf, bidirectional=bidi, proj_size=case["proj"])
    torch.manual_seed(zlib.crc32(_case_id(case).encode()))
    module = torch.nn.LSTM(I, H, dtype=torch.float64, **kw)
    model = rnnfast.LSTM(I, H, dtype="float64", seed=1, **kw)
    _share_weights(model, module, case["weights"])
    x = rng.standard_normal(_x_shape(unb, bf))
    h_shape, c_shape = _state_shape(layers * D, P, unb), _state_shape(layers * D, H, unb)
    hx = (rng.standard_normal(h_shape), rng.standard_normal(c_shape)) if case["hx"] else None
    lengths = _lengths_for(case["lengths"], unb)

    t_hx = None if hx is None else tuple(torch.tensor(a, requires_grad=True) for a in hx)
    tx, t_out, (t_h, t_c) = _torch_run(module, x, t_hx, lengths, bf)
    out, (h_n, c_n), cache = model.forward(x, hx, lengths, return_cache=True)
    for got, want in ((out, t_out), (h_n, t_h), (c_n, t_c)):
        np.testing.assert_allclose(got, want.detach().numpy(), **TORCH_TOL)

    g_out, g_h, g_c = (rng.standard_normal(a.shape) for a in (out, h_n, c_n))
    loss = (t_out * torch.tensor(g_out)).sum() + (t_h * torch.tensor(g_h)).sum() + (t_c * torch.tensor(g_c)).sum()
    loss.backward()
    gx, (gh0, gc0) = model.backward(cache, g_out, g_h, g_c)
    np.testing.assert_allclose(gx, tx.grad.numpy(), **TORCH_TOL)
    if t_hx is not None:
        np.testing.assert_allclose(gh0, t_hx[0].grad.numpy(), **TORCH_TOL)
        np.testing.assert_allclose(gc0, t_hx[1].grad.numpy(), **TORCH_TOL)
    assert list(model.grads) == [name for name, _ in module.named_parameters()]
    for name, p in module.named_parameters():
        np.testing.assert_allclose(model.grads[name], p.grad.numpy(), **TORCH_TOL, err_msg=name)


@pytest.mark.parametrize("case", GRU_TORCH_GRID, ids=_case_id)
def test_gru_matches_torch(case: dict[str, Any]) -> None:
    torch = pytest.importorskip("torch")
    rng = _rng(case)
    layers, bidi, bf, unb = case["layers"], case["bidi"], case["batch_first"], case["unbatched"]
    D = 2 if bidi else 1
    kw = dict(num_layers=layers, bias=case["bias"], batch_first=bf, bidirectional=bidi)
    torch.manual_seed(zlib.crc32(_case_id(case).encode()))
    module = torch.nn.GRU(I, H, dtype=torch.float64, **kw)
    model = rnnfast.GRU(I, H, dtype="float64", seed=1, **kw)
    _share_weights(model, module, case["weights"])
    x = rng.standard_normal(_x_shape(unb, bf))
    h_shape = _state_shape(layers * D, H, unb)
    h0 = rng.standard_normal(h_shape) if case["hx"] else None
    lengths = _lengths_for(case["lengths"], unb)

    t_h0 = None if h0 is None else torch.tensor(h0, requires_grad=True)
    tx, t_out, t_h = _torch_run(module, x, t_h0, lengths, bf)
    out, h_n, cache = model.forward(x, h0, lengths, return_cache=True)
    np.testing.assert_allclose(out, t_out.detach().numpy(), **TORCH_TOL)
    np.testing.assert_allclose(h_n, t_h.detach().numpy(), **TORCH_TOL)

    g_out, g_h = rng.standard_normal(out.shape), rng.standard_normal(h_n.shape)
    ((t_out * torch.tensor(g_out)).sum() + (t_h * torch.tensor(g_h)).sum()).backward()
    gx, gh0 = model.backward(cache, g_out, g_h)
    np.testing.assert_allclose(gx, tx.grad.numpy(), **TORCH_TOL)
    if t_h0 is not None:
        np.testing.assert_allclose(gh0, t_h0.grad.numpy(), **TORCH_TOL)
    assert list(model.grads) == [name for name, _ in module.named_parameters()]
    for name, p in module.named_parameters():
        np.testing.assert_allclose(model.grads[name], p.grad.numpy(), **TORCH_TOL, err_msg=name)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("bias,unbatched,with_hx,weights",
                         list(itertools.product([True, False], [False, True], [False, True],
                                                ["from_torch", "to_torch"])))
def test_cells_match_torch(kind: str, bias: bool, unbatched: bool, with_hx: bool, weights: str) -> None:
    torch = pytest.importorskip("torch")
    rng = _rng((kind, bias, unbatched, with_hx, weights))
    torch.manual_seed(5)
    if kind == "lstm":
        module = torch.nn.LSTMCell(I, H, bias=bias, dtype=torch.float64)
        cell: Any = rnnfast.LSTMCell(I, H, bias=bias, dtype="float64", seed=2)
    else:
        module = torch.nn.GRUCell(I, H, bias=bias, dtype=torch.float64)
        cell = rnnfast.GRUCell(I, H, bias=bias, dtype="float64", seed=2)
    _share_weights(cell, module, weights)
    x = rng.standard_normal((I,) if unbatched else (B, I))
    shape = (H,) if unbatched else (B, H)
    tx = torch.tensor(x, requires_grad=True)
    if kind == "lstm":
        hx = (rng.standard_normal(shape), rng.standard_normal(shape)) if with_hx else None
        t_hx = None if hx is None else tuple(torch.tensor(a, requires_grad=True) for a in hx)
        t_h, t_c = module(tx, t_hx)
        h_new, c_new, cache = cell.forward(x, hx, return_cache=True)
        np.testing.assert_allclose(h_new, t_h.detach().numpy(), **TORCH_TOL)
        np.testing.assert_allclose(c_new, t_c.detach().numpy(), **TORCH_TOL)
        g_h, g_c = rng.standard_normal(shape), rng.standard_normal(shape)
        ((t_h * torch.tensor(g_h)).sum() + (t_c * torch.tensor(g_c)).sum()).backward()
        gx, (gh, gc) = cell.backward(cache, g_h, g_c)
        if t_hx is not None:
            np.testing.assert_allclose(gh, t_hx[0].grad.numpy(), **TORCH_TOL)
            np.testing.assert_allclose(gc, t_hx[1].grad.numpy(), **TORCH_TOL)
    else:
        h = rng.standard_normal(shape) if with_hx else None
        t_h0 = None if h is None else torch.tensor(h, requires_grad=True)
        t_h = module(tx, t_h0)
        h_new, cache = cell.forward(x, h, return_cache=True)
        np.testing.assert_allclose(h_new, t_h.detach().numpy(), **TORCH_TOL)
        g_h = rng.standard_normal(shape)
        (t_h * torch.tensor(g_h)).sum().backward()
        gx, gh = cell.backward(cache, g_h)
        if t_h0 is not None:
            np.testing.assert_allclose(gh, t_h0.grad.numpy(), **TORCH_TOL)
    np.testing.assert_allclose(gx, tx.grad.numpy(), **TORCH_TOL)
    for name, p in module.named_parameters():
        np.testing.assert_allclose(cell.grads[name], p.grad.numpy(), **TORCH_TOL, err_msg=name)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_sgd_training_matches_torch(kind: str) -> None:
    """50 SGD steps in float64: rnnfast (forward, backward, p -= lr * grad on the live views) and torch.optim.SGD
    end at the same parameters and losses."""
    torch = pytest.importorskip("torch")
    steps, lr, steps_T, batch = 50, 0.2, 6, 4
    rng = np.random.default_rng(11)
    if kind == "lstm":
        kw = dict(num_layers=2, bidirectional=True, proj_size=3)
        model: Any = rnnfast.LSTM(I, H, dtype="float64", seed=0, **kw)
        module = torch.nn.LSTM(I, H, dtype=torch.float64, **kw)
        width = 2 * 3
    else:
        kw = dict(num_layers=2, bidirectional=True)
        model = rnnfast.GRU(I, H, dtype="float64", seed=0, **kw)
        module = torch.nn.GRU(I, H, dtype=torch.float64, **kw)
        width = 2 * H
    module.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    opt = torch.optim.SGD(module.parameters(), lr=lr)
    W = rng.standard_normal((I, width))  # a learnable target: y_t = tanh(x_t W)
    data = [(x, np.tanh(x @ W)) for x in (rng.standard_normal((steps_T, batch, I)) for _ in range(5))]
    params = model.named_parameters()
    grads = model.grads
    losses, t_losses = [], []
    for step in range(steps):
        x, y = data[step % len(data)]
        model.zero_grad()
        out, _, cache = model.forward(x, return_cache=True)
        diff = out - y
        losses.append(0.5 * float(np.sum(diff * diff)) / batch)
        model.backward(cache, diff / batch)
        for name, p in params.items():
            p -= lr * grads[name]

        opt.zero_grad()
        t_out, _ = module(torch.from_numpy(x))
        t_loss = 0.5 * ((t_out - torch.from_numpy(y)) ** 2).sum() / batch
        t_loss.backward()
        opt.step()
        t_losses.append(float(t_loss.detach()))
    np.testing.assert_allclose(losses, t_losses, rtol=1e-8)
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])  # it did train
    for name, p in module.named_parameters():
        np.testing.assert_allclose(params[name], p.detach().numpy(), rtol=1e-8, atol=1e-12, err_msg=name)
