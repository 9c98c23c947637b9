"""What the reference's modules share: the types of its signatures, direction suffixes, time order, dtypes and
lengths."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import numpy.typing as npt


Array = npt.NDArray[Any]
"""A float array of the computation's dtype (float32 or float64: that of the parameters)."""
ArrayLike = npt.ArrayLike
Params = Mapping[str, npt.ArrayLike]
"""Parameter name (``weight_ih_l0``, ...) -> array."""
Cache = dict[str, Any]
"""What a backward function needs from its forward (its keys are not an interface)."""
Grads = dict[str, Array]
"""Parameter name -> gradient, of the parameter's shape."""


def _direction_suffixes(bidirectional: bool) -> tuple[str, ...]:
    """Name suffixes of the directions: forward first, then reverse."""
    return ("", "_reverse") if bidirectional else ("",)


def _layer_names(kinds: Sequence[str], num_layers: int, bidirectional: bool) -> list[str]:
    """``{kind}_l{layer}{suffix}`` layer by layer, the forward direction before the reverse one."""
    return [f"{kind}_l{layer}{sfx}" for layer in range(num_layers) for sfx in _direction_suffixes(bidirectional)
            for kind in kinds]


def _time_order(num_steps: int, reverse: bool) -> list[int]:
    """The time indices in the order a direction visits them."""
    return list(range(num_steps - 1, -1, -1)) if reverse else list(range(num_steps))


def _param_dtype(params: Params, name: str) -> np.dtype[Any]:
    dtype = np.asarray(params[name]).dtype
    if not np.issubdtype(dtype, np.floating):
        raise TypeError(f"parameter {name} must be floating point, got {dtype}")
    return dtype


def _check_lengths(lengths: ArrayLike, num_steps: int, batch: int, unbatched: bool) -> npt.NDArray[np.int64]:
    """Validate rnn_forward's lengths; return them as an int64 array [B]."""
    arr = np.asarray(lengths)
    scalar = arr.ndim == 0
    if unbatched and scalar:
        arr = arr.reshape(1)
    if arr.shape != (batch,):
        expected = "a scalar or shape (1,)" if unbatched else f"shape ({batch},), one entry per batch item"
        raise ValueError(f"lengths has shape {np.shape(lengths)}, expected {expected}")
    # Booleans are not integers here (np.bool_ is not a subtype of np.integer).
    if arr.size > 0 and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"lengths: expected integers, got dtype {arr.dtype}")
    for b, n in enumerate(arr):
        if not 1 <= n <= num_steps:
            name = "lengths" if scalar else f"lengths[{b}]"
            raise ValueError(f"{name}: expected an integer in [1, T={num_steps}], got {n}")
    return arr.astype(np.int64)


def _canonical_input(x: ArrayLike, dtype: np.dtype[Any], batch_first: bool, input_size: int) -> tuple[Array, bool]:
    """x as [T, B, I] (time-major, batched), and whether it was unbatched."""
    xa = np.asarray(x, dtype=dtype)
    if xa.ndim not in (2, 3):
        raise ValueError(f"x must have 2 (unbatched) or 3 dimensions, got shape {xa.shape}")
    unbatched = xa.ndim == 2
    if unbatched:
        xa = xa[:, None, :]
    elif batch_first:
        xa = xa.transpose(1, 0, 2)
    if xa.shape[2] != input_size:
        raise ValueError(f"x has input size {xa.shape[2]}, weight_ih_l0 expects {input_size}")
    return xa, unbatched


def _checked_params(params: Params, shapes: Mapping[str, tuple[int, ...]], dtype: np.dtype[Any]
                    ) -> dict[str, Array]:
    """The parameters named in shapes, converted to dtype and checked against their shapes."""
    p: dict[str, Array] = {}
    for name, shape in shapes.items():
        if name not in params:
            raise KeyError(f"missing parameter {name}")
        p[name] = np.asarray(params[name], dtype=dtype)
        if p[name].shape != shape:
            raise ValueError(f"parameter {name} has shape {p[name].shape}, expected {shape}")
    return p
