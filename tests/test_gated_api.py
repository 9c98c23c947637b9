"""rnnfast.LSTM, GRU, LSTMCell and GRUCell: against the NumPy reference over the option grid, against PyTorch (when
installed), and the API behaviour they share with rnnfast.RNN.

The reference grid has 11 options (LSTM), too many for the full product: it runs on a covering subset in which
every combination of values of any four options occurs in some case (greedy, deterministic); the PyTorch grid
(float64) on one of strength three.
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
import pickle
import zlib
from typing import Any, Callable

import numpy as np
import pytest
from conftest import assert_close

import rnnfast
from rnnfast import reference as ref

T, B, I, H, PROJ = 5, 4, 3, 5, 3
LENGTHS = {"ragged": [3, 5, 1, 4], "sorted": [5, 4, 2, 1]}  # any order (with a length-1 and a full item); sorted
UNBATCHED_LENGTHS = {"ragged": [3], "sorted": [T]}
F64 = np.float64


# --------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------


def covering(options: dict[str, list[Any]], strength: int,
             valid: Callable[[dict[str, Any]], bool] = lambda case: True) -> list[dict[str, Any]]:
    """A subset of the product of `options` (name -> values) containing every combination of values of any
    `strength` options that occurs in a valid case (greedy, deterministic)."""
    names = list(options)
    sizes = [len(options[n]) for n in names]
    cases = [c for c in itertools.product(*[range(s) for s in sizes])
             if valid({n: options[n][i] for n, i in zip(names, c)})]
    idx = np.array(cases, dtype=np.int64)
    cols, offset = [], 0
    for combo in itertools.combinations(range(len(names)), strength):
        tid = np.zeros(len(cases), np.int64)
        for k in combo:
            tid = tid * sizes[k] + idx[:, k]
        cols.append(tid + offset)
        offset += math.prod(sizes[k] for k in combo)
    ids = np.stack(cols, axis=1)
    uncovered = np.zeros(offset, bool)
    uncovered[ids.ravel()] = True
    chosen = []
    while uncovered.any():
        best = int(np.argmax(uncovered[ids].sum(axis=1)))
        chosen.append({n: options[n][i] for n, i in zip(names, cases[best])})
        uncovered[ids[best]] = False
    return chosen


def _case_id(case: dict[str, Any]) -> str:
    return "-".join(f"{k}={v}" for k, v in case.items())


def _rng(case: Any) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(case).encode()))


def _x_shape(unbatched: bool, batch_first: bool, batch: int = B, steps: int = T, features: int = I
             ) -> tuple[int, ...]:
    if unbatched:
        return (steps, features)
    return (batch, steps, features) if batch_first else (steps, batch, features)


def _state_shape(count: int, size: int, unbatched: bool, batch: int = B) -> tuple[int, ...]:
    return (count, size) if unbatched else (count, batch, size)


def _normal(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


def _params64(model: Any) -> dict[str, np.ndarray]:
    return {k: v.astype(F64) for k, v in model.named_parameters().items()}


def _arrays(values: Any) -> list[np.ndarray]:
    """The arrays of a (nested) tuple of results, flattened."""
    if isinstance(values, (tuple, list)):
        return [a for v in values for a in _arrays(v)]
    return [values]


def _snapshot(module: Any) -> dict[str, bytes]:
    snap = {f"param:{k}": v.tobytes() for k, v in module.named_parameters().items()}
    snap.update({f"grad:{k}": v.tobytes() for k, v in module.grads.items()})
    snap["training"] = bytes([module.training])
    return snap


def _rejects(call: Callable[[], Any], err: type[BaseException], match: str, *modules: Any) -> None:
    """`call` raises `err` matching `match` and leaves every module bitwise as it was."""
    before = [_snapshot(m) for m in modules]
    with pytest.raises(err, match=match):
        call()
    for module, snap in zip(modules, before):
        assert _snapshot(module) == snap, f"a rejected call changed {module!r}"


def _lengths_for(kind: Any, unbatched: bool) -> Any:
    if kind is None:
        return None
    return np.array(UNBATCHED_LENGTHS[kind] if unbatched else LENGTHS[kind])


def _padded_mask(lengths: Any) -> np.ndarray:
    """Boolean [T, B'] (B' = 1 unbatched): True at the padded steps."""
    n = np.asarray(lengths)
    return np.arange(T)[:, None] >= n[None, :]


def _time_major(a: np.ndarray, unbatched: bool, batch_first: bool) -> np.ndarray:
    if unbatched:
        return a[:, None, :]
    return a.transpose(1, 0, 2) if batch_first else a


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


# --------------------------------------------------------------------------------------------------------------
# 3. API behaviour
# --------------------------------------------------------------------------------------------------------------


def _lstm(**kw: Any) -> rnnfast.LSTM:
    kw.setdefault("seed", 0)
    return rnnfast.LSTM(I, H, **kw)


def _gru(**kw: Any) -> rnnfast.GRU:
    kw.setdefault("seed", 0)
    return rnnfast.GRU(I, H, **kw)


def _forward_backward(model: Any, x: np.ndarray, state: Any = None, lengths: Any = None, seed: int = 0,
                      **backward_kw: Any) -> dict[str, Any]:
    """Everything one forward and backward of an LSTM or GRU returns, with the parameter gradients it added."""
    rng = np.random.default_rng(seed)
    model.zero_grad()
    if isinstance(model, rnnfast.LSTM):
        out, (h_n, c_n), cache = model.forward(x, state, lengths, return_cache=True)
        g = [rng.standard_normal(a.shape).astype(model.dtype) for a in (out, h_n, c_n)]
        gx, (gh0, gc0) = model.backward(cache, *g, **backward_kw)
        result = dict(out=out, h_n=h_n, c_n=c_n, gx=gx, gh0=gh0, gc0=gc0)
    else:
        out, h_n, cache = model.forward(x, state, lengths, return_cache=True)
        g = [rng.standard_normal(a.shape).astype(model.dtype) for a in (out, h_n)]
        gx, gh0 = model.backward(cache, *g, **backward_kw)
        result = dict(out=out, h_n=h_n, gx=gx, gh0=gh0)
    result["grads"] = {k: v.copy() for k, v in model.grads.items()}
    return result


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
