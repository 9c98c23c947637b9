"""What the robustness test modules share: the small problem, a module's observable state, a rejected call's
check, and arrays in other memory layouts."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest

import rnnfast

T, B, I, H = 4, 3, 5, 6


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


def _model(**kw: Any) -> rnnfast.RNN:
    kw.setdefault("num_layers", 2)
    kw.setdefault("seed", 0)
    return rnnfast.RNN(I, H, **kw)


def _x(dtype: str = "float32", shape: tuple[int, ...] = (T, B, I)) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)
