"""rnnfast.RNNCell: one Elman step with torch.nn.RNNCell's semantics, for stepping by hand."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union, overload

import numpy as np

from . import _checks, _core
from ._module import Module, check_cache_usable


class RNNCellCache:
    """What ``RNNCell.backward`` needs from one ``RNNCell.forward(..., return_cache=True)``. It holds copies of the
    step's input and states, so the caller may reuse or modify its own arrays. ``backward`` releases it unless
    called with ``retain_cache=True``; caches do not pickle."""

    __slots__ = ("_core", "_owner", "_version", "_h_new_shape", "_consumed")

    def __init__(self, core: Any, owner: RNNCell, h_new_shape: tuple[int, ...]) -> None:
        self._core = core
        self._owner = owner
        self._version = owner._versions.value
        self._h_new_shape = h_new_shape
        self._consumed = False

    def __reduce__(self) -> Any:
        raise TypeError("RNNCellCache: a cache belongs to one forward in this process and cannot be pickled or "
                        "copied; run forward again where it is needed")


class RNNCell(Module):
    """One Elman step: ``h_new = act(x W_ih^T + b_ih + h W_hh^T + b_hh)``.

    Same constructor, shapes, parameter names (``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``) and
    initialization as ``torch.nn.RNNCell``.

    Parameters
    ----------
    input_size : int
        I, features of the input.
    hidden_size : int
        H, features of the state.
    bias : bool
    nonlinearity : {"tanh", "relu"}
    device : None, "cpu" or torch.device("cpu")
        PyTorch's argument; rnnfast computes on the CPU (any other device: ValueError).
    dtype : "float32" or "float64" (or the NumPy dtype, or torch.float32 / torch.float64)
    seed : int or None
        Seeds the initialization; None draws fresh entropy.
    """

    _CONFIG = ("input_size", "hidden_size", "bias", "nonlinearity", "dtype")

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 device: Any = None, dtype: _checks.DTypeLike = "float32", seed: Optional[int] = None) -> None:
        _checks.device(device)
        self.input_size = _checks.positive_int("input_size", input_size)
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        self.bias = _checks.boolean("bias", bias)
        self.nonlinearity = _checks.nonlinearity(nonlinearity)
        self.dtype = _checks.model_dtype(dtype)
        rng = _checks.rng(seed)
        kernel_class = _core.CellF32 if self.dtype == np.float32 else _core.CellF64
        self._kernel = kernel_class(self.input_size, self.hidden_size, self.bias, self.nonlinearity)
        self._init_parameters(self._kernel, self.dtype, self.hidden_size, rng)

    def __repr__(self) -> str:
        extra = "" if self.bias else ", bias=False"
        extra += "" if self.nonlinearity == "tanh" else f", nonlinearity={self.nonlinearity!r}"
        return f"RNNCell({self.input_size}, {self.hidden_size}{extra}, dtype={self.dtype.name})"

    def __call__(self, x: np.ndarray, h: Optional[np.ndarray] = None) -> np.ndarray:
        """Forward without a cache: same as ``forward(x, h)``."""
        return self.forward(x, h)

    def _fast_step(self, x: Any, h: Any) -> Optional[np.ndarray]:
        """The common step without a cache -- x ``[B, I]`` and h ``[B, H]`` (or None), aligned C-contiguous arrays
        of the model's dtype, B > 0 -- straight to the kernel, which checks that in C++; None for anything else,
        which the general path checks."""
        return self._kernel.step(self._flat, x, h)

    @overload
    def forward(self, x: np.ndarray, h: Optional[np.ndarray] = None, return_cache: Literal[False] = False
                ) -> np.ndarray: ...

    @overload
    def forward(self, x: np.ndarray, h: Optional[np.ndarray] = None, *, return_cache: Literal[True]
                ) -> tuple[np.ndarray, RNNCellCache]: ...

    @overload
    def forward(self, x: np.ndarray, h: Optional[np.ndarray], return_cache: Literal[True]
                ) -> tuple[np.ndarray, RNNCellCache]: ...

    @overload
    def forward(self, x: np.ndarray, h: Optional[np.ndarray] = None, return_cache: bool = False
                ) -> Union[np.ndarray, tuple[np.ndarray, RNNCellCache]]: ...

    def forward(self, x: np.ndarray, h: Optional[np.ndarray] = None, return_cache: bool = False
                ) -> Union[np.ndarray, tuple[np.ndarray, RNNCellCache]]:
        """One step.

        Parameters
        ----------
        x : ndarray ``[B, I]`` or unbatched ``[I]``, the model's dtype
        h : ndarray or None, ``[B, H]`` (unbatched ``[H]``); None means zeros
        return_cache : bool
            Also return the cache ``backward`` needs.

        Returns
        -------
        h_new : ``[B, H]`` (unbatched ``[H]``), and the cache with ``return_cache=True``.
        """
        if not return_cache:
            fast = self._fast_step(x, h)
            if fast is not None:
                return fast
        x = _checks.array("x", x, self.dtype)
        if x.ndim not in (1, 2) or x.shape[-1] != self.input_size:
            raise _checks.shape_error("x", f"[B, {self.input_size}] or unbatched [{self.input_size}]", x.shape)
        unbatched = x.ndim == 1
        x2 = _checks.for_kernel(x[None, :] if unbatched else x)
        state_shape = (self.hidden_size,) if unbatched else (x.shape[0], self.hidden_size)
        h2 = None
        if h is not None:
            h = _checks.array("h", h, self.dtype)
            if h.shape != state_shape:
                raise _checks.shape_error("h", str(state_shape), h.shape)
            h2 = _checks.for_kernel(h[None, :] if unbatched else h)
        h_new, core_cache = self._kernel.forward(self._flat, x2, h2, bool(return_cache))
        out = h_new[0] if unbatched else h_new
        if not return_cache:
            return out
        return out, RNNCellCache(core_cache, self, out.shape)

    def backward(self, cache: RNNCellCache, grad_h_new: np.ndarray, *, retain_cache: bool = False
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Gradient of one step; adds every parameter's gradient into ``grads``.

        Parameters
        ----------
        cache : RNNCellCache from this cell's ``forward(..., return_cache=True)``
        grad_h_new : ndarray, ``h_new``'s shape: gradient of the loss with respect to ``h_new``
        retain_cache : bool, keyword-only
            Keep the cache for another backward, as PyTorch's ``retain_graph=True``; by default the cache is
            released and a second backward on it raises ValueError.

        Returns
        -------
        grad_x : x's shape;  grad_h : h's shape (also when h was None)

        ``grads`` changes only when the backward succeeds: an error leaves it as it was.
        """
        retain_cache = _checks.boolean("retain_cache", retain_cache)
        grad_x, grad_h, _ = self._backward(cache, grad_h_new, retain_cache, True)
        return grad_x, grad_h

    def _backward(self, cache: RNNCellCache, grad_h_new: np.ndarray, retain_cache: bool, accumulate: bool
                  ) -> tuple[np.ndarray, np.ndarray, Optional[dict[str, np.ndarray]]]:
        """backward's work; with ``accumulate`` False the parameter gradients come back as a fresh dict and
        ``grads`` is not touched."""
        if not isinstance(cache, RNNCellCache):
            raise TypeError(f"cache: expected an RNNCellCache from RNNCell.forward(..., return_cache=True), "
                            f"got {type(cache).__name__}")
        if cache._owner is not self:
            raise ValueError("cache: it was made by another cell's forward, not this one's")
        check_cache_usable(cache, self)
        grad_h_new = _checks.array("grad_h_new", grad_h_new, self.dtype)
        if grad_h_new.shape != cache._h_new_shape:
            raise _checks.shape_error("grad_h_new", str(cache._h_new_shape), grad_h_new.shape)
        unbatched = len(cache._h_new_shape) == 1
        g = _checks.for_kernel(grad_h_new[None, :] if unbatched else grad_h_new)
        grad_x, grad_h, flat = self._kernel.backward(self._flat, cache._core, g,
                                                     self._grad_flat if accumulate else None)
        if not retain_cache:
            cache._core = None
            cache._consumed = True
        views = None if flat is None else self._views(flat)
        if unbatched:
            return grad_x[0], grad_h[0], views
        return grad_x, grad_h, views
