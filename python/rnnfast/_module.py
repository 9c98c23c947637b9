"""Parameter storage and PyTorch-style state handling shared by RNN and RNNCell."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np

_M = TypeVar("_M", bound="Module")


def _check_fits_in_memory(count: int, dtype: np.dtype) -> None:
    """Refuse parameter buffers larger than the machine's memory up front: with overcommit, the allocation itself
    could succeed and the process be killed later while filling it."""
    needed = 2 * count * dtype.itemsize  # parameters and gradients
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not available on this platform
        return
    if needed > physical:
        raise MemoryError(
            f"sizes: {count} parameters need {needed / 2**30:.1f} GiB for parameters and gradients, "
            f"more than this machine's {physical / 2**30:.1f} GiB"
        )


class Module:
    """Parameters and gradients as single flat buffers, with live named views into them.

    The compiled kernels read the flat buffers directly, so the named views (``named_parameters()``, ``grads``)
    and the kernels always see the same numbers.
    """

    training: bool

    def _init_parameters(self, kernel: Any, dtype: np.dtype, hidden_size: int, rng: np.random.Generator) -> None:
        count = kernel.param_count
        _check_fits_in_memory(count, dtype)
        self._flat = np.empty(count, dtype=dtype)
        self._grad_flat = np.zeros(count, dtype=dtype)
        self._params: dict[str, np.ndarray] = {}
        self._grads: dict[str, np.ndarray] = {}
        for name, offset, shape in kernel.param_layout():
            size = math.prod(shape)
            self._params[name] = self._flat[offset : offset + size].reshape(shape)
            self._grads[name] = self._grad_flat[offset : offset + size].reshape(shape)
        # U(-1/sqrt(H), 1/sqrt(H)) for every parameter, as PyTorch initializes nn.RNN / nn.RNNCell.
        bound = 1.0 / math.sqrt(hidden_size)
        # Drawn in chunks (the same values as one draw), so peak memory stays at the buffers themselves.
        chunk = 1 << 20
        for start in range(0, count, chunk):
            stop = min(count, start + chunk)
            self._flat[start:stop] = rng.uniform(-bound, bound, size=stop - start)
        # Bumped whenever load_state_dict replaces the parameters, so stale caches are refused.
        self._version = 0
        self.training = True

    def named_parameters(self) -> dict[str, np.ndarray]:
        """Parameters by PyTorch name, in PyTorch's order: live, writable views (an in-place update is seen by
        the next forward)."""
        return dict(self._params)

    @property
    def grads(self) -> dict[str, np.ndarray]:
        """Gradients by parameter name (same names and shapes): live views that backward adds into."""
        return dict(self._grads)

    def zero_grad(self) -> None:
        """Set every gradient to zero (in place; views taken earlier stay live)."""
        self._grad_flat.fill(0)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters by name; loads into the matching PyTorch module."""
        return {name: value.copy() for name, value in self._params.items()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Copy parameters in from a mapping of name -> array (e.g. a PyTorch state_dict converted with .numpy()).

        Strict: exactly this model's keys, each with its parameter's shape. Values are cast to the model's dtype and
        copied into the existing storage, so views from ``named_parameters()`` stay live. A rejected mapping
        changes nothing.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict: expected a mapping of name -> array, got {type(state_dict).__name__}")
        missing = [k for k in self._params if k not in state_dict]
        unexpected = [k for k in state_dict if k not in self._params]
        if missing or unexpected:
            raise ValueError(
                f"state_dict: expected exactly the keys {list(self._params)}; missing {missing}, unexpected {unexpected}"
            )
        staged = {}
        for name, target in self._params.items():
            try:
                value = np.asarray(state_dict[name])
            except Exception as exc:  # an object NumPy cannot turn into an array
                raise TypeError(f"state_dict[{name!r}]: expected a numeric array, got {type(state_dict[name]).__name__}") from exc
            if value.dtype.kind not in "biuf":
                raise TypeError(f"state_dict[{name!r}]: expected a real numeric array, got dtype {value.dtype}")
            if value.shape != target.shape:
                raise ValueError(f"state_dict[{name!r}]: expected shape {target.shape}, got {value.shape}")
            # A copy even when the dtype matches: the value may be a view of this model's own storage.
            staged[name] = np.array(value, dtype=target.dtype, copy=True)
        for name, value in staged.items():
            self._params[name][...] = value
        self._version += 1

    def train(self: _M, mode: bool = True) -> _M:
        """Training mode (dropout active) or not; returns self."""
        if not isinstance(mode, (bool, np.bool_)):
            raise TypeError(f"mode: expected a bool, got {mode!r}")
        self.training = bool(mode)
        return self

    def eval(self: _M) -> _M:
        """Inference mode (no dropout); returns self."""
        return self.train(False)

    def __getattr__(self, name: str) -> np.ndarray:
        # rnn.weight_ih_l0 etc., as on a PyTorch module (only reached when normal lookup fails).
        params = self.__dict__.get("_params")
        if params is not None and name in params:
            return params[name]  # type: ignore[no-any-return]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
