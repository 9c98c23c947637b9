"""rnnfast.LSTMCell and rnnfast.GRUCell: one step of an LSTM / GRU with torch.nn.LSTMCell / GRUCell's semantics.

A cell is one step of a one-layer stack: it runs on the same compiled driver as ``LSTM`` and ``GRU`` (a sequence of
length 1), with its parameters named as PyTorch names a cell's (``weight_ih``, ``weight_hh``, ``bias_ih``,
``bias_hh``).
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union, overload

import numpy as np

from . import _checks, _core
from ._module import Module, check_cache_usable


class GatedCellCache:
    """What ``LSTMCell.backward`` / ``GRUCell.backward`` needs from one ``forward(..., return_cache=True)``. It
    holds copies of the step's input and states, so the caller may reuse or modify its own arrays.
    ``backward`` releases it unless called with ``retain_cache=True``; caches do not pickle."""

    __slots__ = ("_core", "_owner", "_version", "_x_shape", "_state_shape", "_consumed")

    def __init__(self, core: Any, owner: _GatedCell, x_shape: tuple[int, ...], state_shape: tuple[int, ...]) -> None:
        self._core = core
        self._owner = owner
        self._version = owner._versions.value
        self._x_shape = x_shape
        self._state_shape = state_shape
        self._consumed = False

    def __reduce__(self) -> Any:
        raise TypeError("GatedCellCache: a cache belongs to one forward in this process and cannot be pickled or "
                        "copied; run forward again where it is needed")


class _GatedCell(Module):
    """One step of a gated kind on the stack kernels (T = 1, one layer, one direction)."""

    _CELL = "lstm"
    _NAME = "LSTMCell"
    _CONFIG = ("input_size", "hidden_size", "bias", "dtype")

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device: Any = None,
                 dtype: _checks.DTypeLike = "float32", seed: Optional[int] = None) -> None:
        _checks.device(device)
        self.input_size = _checks.positive_int("input_size", input_size)
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        self.bias = _checks.boolean("bias", bias)
        self.dtype = _checks.model_dtype(dtype)
        rng = _checks.rng(seed)
        kernel_class = _core.StackF32 if self.dtype == np.float32 else _core.StackF64
        self._kernel = kernel_class(self.input_size, self.hidden_size, 1, False, self.bias, "tanh", self._CELL, 0)
        self._init_parameters(_CellLayout(self._kernel), self.dtype, self.hidden_size, rng)

    def __repr__(self) -> str:
        extra = "" if self.bias else ", bias=False"
        return f"{self._NAME}({self.input_size}, {self.hidden_size}{extra}, dtype={self.dtype.name})"

    def _check_state(self, name: str, value: Any, shape: tuple[int, ...]) -> np.ndarray:
        value = _checks.array(name, value, self.dtype)
        if value.shape != shape:
            raise _checks.shape_error(name, str(shape), value.shape)
        return _checks.for_kernel(value.reshape(1, 1, -1) if len(shape) == 1 else value[None])

    def _fast_step(self, x: Any, h: Any, c: Any) -> Optional[tuple[np.ndarray, Optional[np.ndarray]]]:
        """The common step without a cache -- x ``[B, I]`` and the states ``[B, H]`` (or None), aligned C-contiguous
        arrays of the model's dtype, B > 0 -- straight to the kernel, which checks that in C++ (the general handling
        cost up to a fifth of an LSTMCell step of 20 units, and the same checks in Python a tenth); None for
        anything else, which the general path checks."""
        return self._kernel.step(self._flat, x, h, c)

    def _step(self, x: Any, h: Any, c: Any, h_name: str, return_cache: bool
              ) -> tuple[np.ndarray, Optional[np.ndarray], Optional[GatedCellCache]]:
        if not return_cache:
            fast = self._fast_step(x, h, c)
            if fast is not None:
                return fast[0], fast[1], None
        x = _checks.array("x", x, self.dtype)
        if x.ndim not in (1, 2) or x.shape[-1] != self.input_size:
            raise _checks.shape_error("x", f"[B, {self.input_size}] or unbatched [{self.input_size}]", x.shape)
        unbatched = x.ndim == 1
        state_shape = (self.hidden_size,) if unbatched else (x.shape[0], self.hidden_size)
        h0 = None if h is None else self._check_state(h_name, h, state_shape)
        c0 = None if c is None else self._check_state("hx[1]", c, state_shape)
        batch = 1 if unbatched else x.shape[0]
        if batch == 0:
            h_new = np.zeros(state_shape, self.dtype)
            c_new = np.zeros(state_shape, self.dtype) if self._CELL == "lstm" else None
            cache = GatedCellCache(None, self, x.shape, state_shape) if return_cache else None
            return h_new, c_new, cache
        seq = _checks.for_kernel(x.reshape(1, 1, -1) if unbatched else x[None])
        # The cache copies x and h_new (no borrowing): callers step by hand and reuse their arrays.
        _, h_n, c_n, core = self._kernel.forward(self._flat, seq, h0, None, None, bool(return_cache), c0, False)
        h_new = h_n[0, 0] if unbatched else h_n[0]
        c_new = None if c_n is None else (c_n[0, 0] if unbatched else c_n[0])
        cache = GatedCellCache(core, self, x.shape, state_shape) if return_cache else None
        return h_new, c_new, cache

    def _step_backward(self, cache: GatedCellCache, grad_h: Any, grad_c: Any, retain_cache: bool, accumulate: bool
                       ) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray], Optional[dict[str, np.ndarray]]]:
        if not isinstance(cache, GatedCellCache):
            raise TypeError(f"cache: expected a GatedCellCache from {self._NAME}.forward(..., return_cache=True), "
                            f"got {type(cache).__name__}")
        if cache._owner is not self:
            raise ValueError("cache: it was made by another cell's forward, not this one's")
        check_cache_usable(cache, self)
        if grad_h is None and grad_c is None:
            raise ValueError("grad_h_new, grad_c_new: expected at least one gradient, got None for both")
        shape = cache._state_shape
        gh = None if grad_h is None else self._check_state("grad_h_new", grad_h, shape)
        gc = None if grad_c is None else self._check_state("grad_c_new", grad_c, shape)
        lstm = self._CELL == "lstm"
        if cache._core is None:  # an empty batch
            if not retain_cache:
                cache._consumed = True
            zeros = np.zeros(shape, self.dtype)
            return (np.zeros(cache._x_shape, self.dtype), zeros, zeros.copy() if lstm else None,
                    None if accumulate else self._views(np.zeros_like(self._flat)))
        grad_x, grad_h0, grad_c0, flat = self._kernel.backward(
            self._flat, cache._core, None, gh, self._grad_flat if accumulate else None, True, gc)
        assert grad_x is not None  # asked for (want_dx)
        if not retain_cache:
            cache._core = None
            cache._consumed = True
        unbatched = len(shape) == 1
        grad_x = grad_x[0, 0] if unbatched else grad_x[0]
        grad_h0 = grad_h0[0, 0] if unbatched else grad_h0[0]
        if grad_c0 is not None:
            grad_c0 = grad_c0[0, 0] if unbatched else grad_c0[0]
        return grad_x, grad_h0, grad_c0, None if flat is None else self._views(flat)


class _CellLayout:
    """The stack kernel's parameter layout under a cell's names (``weight_ih`` for ``weight_ih_l0``)."""

    def __init__(self, kernel: Any) -> None:
        self.param_count = kernel.param_count
        self._layout = [(name[:-3], offset, shape) for name, offset, shape in kernel.param_layout()]

    def param_layout(self) -> list[tuple[str, int, tuple[int, ...]]]:
        return self._layout


class LSTMCell(_GatedCell):
    """One LSTM step, as ``torch.nn.LSTMCell``: gates i, f, g, o from ``x W_ih^T + b_ih + h W_hh^T + b_hh``,
    ``c' = f * c + i * g``, ``h' = o * tanh(c')``.

    Parameters ``weight_ih`` ``[4H, I]``, ``weight_hh`` ``[4H, H]``, ``bias_ih`` / ``bias_hh`` ``[4H]``, initialized
    from U(-1/sqrt(H), 1/sqrt(H)). ``x`` is ``[B, I]`` (unbatched ``[I]``); h and c are ``[B, H]`` (``[H]``).
    """

    _CELL = "lstm"
    _NAME = "LSTMCell"

    def __call__(self, x: np.ndarray, hx: Optional[tuple[np.ndarray, np.ndarray]] = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Same as ``forward(x, hx)``."""
        return self.forward(x, hx)

    @overload
    def forward(self, x: np.ndarray, hx: Optional[tuple[np.ndarray, np.ndarray]] = None,
                return_cache: Literal[False] = False) -> tuple[np.ndarray, np.ndarray]: ...

    @overload
    def forward(self, x: np.ndarray, hx: Optional[tuple[np.ndarray, np.ndarray]] = None, *,
                return_cache: Literal[True]) -> tuple[np.ndarray, np.ndarray, GatedCellCache]: ...

    @overload
    def forward(self, x: np.ndarray, hx: Optional[tuple[np.ndarray, np.ndarray]], return_cache: Literal[True]
                ) -> tuple[np.ndarray, np.ndarray, GatedCellCache]: ...

    @overload
    def forward(self, x: np.ndarray, hx: Optional[tuple[np.ndarray, np.ndarray]] = None, return_cache: bool = False
                ) -> Union[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, GatedCellCache]]: ...

    def forward(self, x: np.ndarray, hx: Optional[tuple[np.ndarray, np.ndarray]] = None, return_cache: bool = False
                ) -> Union[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, GatedCellCache]]:
        """One step: ``hx`` is ``(h, c)`` or None (zeros). Returns ``(h_new, c_new)``, and the cache with
        ``return_cache=True``."""
        h, c = _checks.state_pair(hx)
        h_new, c_new, cache = self._step(x, h, c, "hx[0]", bool(return_cache))
        assert c_new is not None
        if cache is None:
            return h_new, c_new
        return h_new, c_new, cache

    def backward(self, cache: GatedCellCache, grad_h_new: Optional[np.ndarray] = None,
                 grad_c_new: Optional[np.ndarray] = None, *, retain_cache: bool = False
                 ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Gradient of one step (None means zeros; at least one); adds every parameter's gradient into ``grads``.
        Returns ``(grad_x, (grad_h, grad_c))``, also when hx was None. ``retain_cache`` as for ``RNN.backward``."""
        retain_cache = _checks.boolean("retain_cache", retain_cache)
        grad_x, grad_h, grad_c, _ = self._step_backward(cache, grad_h_new, grad_c_new, retain_cache, True)
        assert grad_c is not None
        return grad_x, (grad_h, grad_c)


class GRUCell(_GatedCell):
    """One GRU step, as ``torch.nn.GRUCell``: ``r = sigma(W_ir x + b_ir + W_hr h + b_hr)``,
    ``z = sigma(W_iz x + b_iz + W_hz h + b_hz)``, ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``,
    ``h' = (1 - z) * n + z * h``.

    Parameters ``weight_ih`` ``[3H, I]``, ``weight_hh`` ``[3H, H]``, ``bias_ih`` / ``bias_hh`` ``[3H]``; the same
    calls as ``rnnfast.RNNCell``.
    """

    _CELL = "gru"
    _NAME = "GRUCell"

    def __call__(self, x: np.ndarray, h: Optional[np.ndarray] = None) -> np.ndarray:
        """Same as ``forward(x, h)``."""
        return self.forward(x, h)

    @overload
    def forward(self, x: np.ndarray, h: Optional[np.ndarray] = None, return_cache: Literal[False] = False
                ) -> np.ndarray: ...

    @overload
    def forward(self, x: np.ndarray, h: Optional[np.ndarray] = None, *, return_cache: Literal[True]
                ) -> tuple[np.ndarray, GatedCellCache]: ...

    @overload
    def forward(self, x: np.ndarray, h: Optional[np.ndarray], return_cache: Literal[True]
                ) -> tuple[np.ndarray, GatedCellCache]: ...

    @overload
    def forward(self, x: np.ndarray, h: Optional[np.ndarray] = None, return_cache: bool = False
                ) -> Union[np.ndarray, tuple[np.ndarray, GatedCellCache]]: ...

    def forward(self, x: np.ndarray, h: Optional[np.ndarray] = None, return_cache: bool = False
                ) -> Union[np.ndarray, tuple[np.ndarray, GatedCellCache]]:
        """One step: ``h`` ``[B, H]`` (unbatched ``[H]``) or None (zeros). Returns ``h_new``, and the cache with
        ``return_cache=True``."""
        h_new, _, cache = self._step(x, h, None, "h", bool(return_cache))
        if cache is None:
            return h_new
        return h_new, cache

    def backward(self, cache: GatedCellCache, grad_h_new: np.ndarray, *, retain_cache: bool = False
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Gradient of one step; adds every parameter's gradient into ``grads``. Returns ``(grad_x, grad_h)``,
        ``grad_h`` also when h was None. ``retain_cache`` as for ``RNN.backward``."""
        retain_cache = _checks.boolean("retain_cache", retain_cache)
        grad_x, grad_h, _, _ = self._step_backward(cache, grad_h_new, None, retain_cache, True)
        return grad_x, grad_h
