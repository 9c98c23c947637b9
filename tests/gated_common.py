"""What the LSTM/GRU test modules share: the small problem, option grids covered by a subset, and helpers."""

from __future__ import annotations

import itertools
import math
import zlib
from typing import Any, Callable

import numpy as np
import pytest

import rnnfast

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
