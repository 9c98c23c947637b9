"""Parameter storage and PyTorch-style state handling shared by RNN and RNNCell."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import numpy as np

from . import _checks

_M = TypeVar("_M", bound="Module")


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict`` returns, as PyTorch's: the model's keys the mapping lacked, and its extra keys."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class _Versions:
    """The parameters' version, bumped whenever they are replaced (load_state_dict, assignment); shared by a model
    and its shallow copies, which share the parameters, so a cache made before a replacement is refused by all."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


def check_cache_usable(cache: Any, model: Module) -> None:
    """Raise ValueError when ``cache`` was released by a backward or predates a replacement of the parameters."""
    if cache._consumed:
        raise ValueError("cache: backward already ran on it and released it; pass retain_cache=True to the earlier "
                         "backward to run another (as PyTorch's retain_graph=True), or run forward again")
    if cache._version != model._versions.value:
        raise ValueError("cache: the parameters were replaced (load_state_dict or assignment) after this forward; "
                         "run forward again")


def _as_numpy(name: str, value: Any) -> np.ndarray:
    """A value of a state dict as an array: torch tensors (Parameters included) are detached and moved to the
    CPU first."""
    if type(value).__module__.startswith("torch") and hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except Exception as exc:  # an object NumPy cannot turn into an array
        raise TypeError(f"{name}: expected a numeric array, got {type(value).__name__}") from exc


def _check_fits_in_memory(count: int, dtype: np.dtype) -> None:
    """Refuse parameter buffers larger than the machine's memory up front: with overcommit, the allocation itself
    could succeed and the process be killed later while filling it."""
    needed = 2 * count * dtype.itemsize  # parameters and gradients
    physical = _checks.physical_memory()
    if physical <= 0:  # unknown on this platform
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
    # Constructor arguments that fix the kernels' shapes: read-only once set (a new model is needed to change one).
    _CONFIG: tuple[str, ...] = ()

    if TYPE_CHECKING:
        # The parameters reached as attributes (``rnn.weight_ih_l0``), as type checkers see them. At run time
        # ``__getattr__`` / ``__setattr__`` below serve every parameter name; for type checkers those two are
        # hidden, so a misspelt attribute (``rnn.wieght_ih_l0``, read or assigned) is an error, and only these
        # names are declared: the cells' four and the first layer's of RNN, LSTM and GRU (both directions, and
        # the LSTM's projection). Which ones a model has depends on its configuration (bias, bidirectional,
        # proj_size, and cell or layer), which the types do not know. Deeper layers' parameters, named by
        # num_layers, are typed through ``named_parameters()["weight_ih_l1"]``.
        weight_ih: np.ndarray
        weight_hh: np.ndarray
        bias_ih: np.ndarray
        bias_hh: np.ndarray
        weight_ih_l0: np.ndarray
        weight_hh_l0: np.ndarray
        bias_ih_l0: np.ndarray
        bias_hh_l0: np.ndarray
        weight_hr_l0: np.ndarray
        weight_ih_l0_reverse: np.ndarray
        weight_hh_l0_reverse: np.ndarray
        bias_ih_l0_reverse: np.ndarray
        bias_hh_l0_reverse: np.ndarray
        weight_hr_l0_reverse: np.ndarray

    def _config(self) -> dict[str, Any]:
        """The constructor's keyword arguments that rebuild this model's configuration (pickling, deepcopy)."""
        return {name: getattr(self, name) for name in self._CONFIG}

    def _init_parameters(self, kernel: Any, dtype: np.dtype, hidden_size: int, rng: np.random.Generator) -> None:
        count = kernel.param_count
        _check_fits_in_memory(count, dtype)
        self._flat = np.empty(count, dtype=dtype)
        self._grad_flat = np.zeros(count, dtype=dtype)
        self._params: dict[str, np.ndarray] = {}
        self._grads: dict[str, np.ndarray] = {}
        self._slices: dict[str, tuple[int, tuple[int, ...]]] = {}
        for name, offset, shape in kernel.param_layout():
            size = math.prod(shape)
            self._slices[name] = (offset, tuple(shape))
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
        self._versions = _Versions()
        self.training = True

    def _views(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Named views, shaped like the parameters, into a flat buffer laid out like them."""
        return {name: flat[offset:offset + math.prod(shape)].reshape(shape)
                for name, (offset, shape) in self._slices.items()}

    # --- attributes: parameters copy in, the configuration is read-only ------------------------------------------
    # Hidden from type checkers (see the declarations above), which would otherwise accept any attribute name.

    if not TYPE_CHECKING:
        def __setattr__(self, name: str, value: Any) -> None:
            params = self.__dict__.get("_params")
            if params is not None and name in params:
                self._assign_parameter(name, value)
            elif name in self._CONFIG and name in self.__dict__:
                raise AttributeError(
                    f"{name}: read-only (the kernels were built for {name}={self.__dict__[name]!r}); "
                    f"make a new {type(self).__name__} and load_state_dict into it"
                )
            else:
                object.__setattr__(self, name, value)

        def __getattr__(self, name: str) -> np.ndarray:
            # rnn.weight_ih_l0 etc., as on a PyTorch module (only reached when normal lookup fails).
            params = self.__dict__.get("_params")
            if params is not None and name in params:
                return params[name]
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        params = self.__dict__.get("_params")
        if (params is not None and name in params) or name in self._CONFIG:
            raise AttributeError(f"{name}: cannot be deleted from a {type(self).__name__}")
        object.__delattr__(self, name)

    def _assign_parameter(self, name: str, value: Any) -> None:
        """``model.weight_ih_l0 = array``: the values are copied into the parameter (checked like
        load_state_dict), so the kernels and the views see them."""
        staged = self._stage(name, value, f"{name}")
        self._params[name][...] = staged
        self._versions.value += 1

    def _stage(self, name: str, value: Any, label: str) -> np.ndarray:
        target = self._params[name]
        array = _as_numpy(label, value)
        if array.dtype.kind not in "biuf":
            raise TypeError(f"{label}: expected a real numeric array, got dtype {array.dtype}")
        if array.shape != target.shape:
            raise ValueError(f"{label}: expected shape {target.shape}, got {array.shape}")
        # A copy even when the dtype matches: the value may be a view of this model's own storage.
        return np.array(array, dtype=target.dtype, copy=True)

    # --- copies and pickling ---------------------------------------------------------------------------------------

    def __copy__(self: _M) -> _M:
        """A shallow copy shares the parameters, gradients and their version (as copy.copy of a torch module
        shares its Parameters)."""
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def __deepcopy__(self: _M, memo: dict[int, Any]) -> _M:
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__setstate__(self.__getstate__())
        return new

    def __getstate__(self) -> dict[str, Any]:
        """Configuration, parameters, gradients, training mode and the random generator's state."""
        rng = self.__dict__.get("_rng")
        return {
            "config": self._config(),
            "params": self._flat.copy(),
            "grads": self._grad_flat.copy(),
            "training": self.training,
            "rng": None if rng is None else rng.bit_generator.state,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the constructor's warnings were given when the model was made
            cls: Any = type(self)
            fresh = cls(**state["config"], seed=0)
        self.__dict__.update(fresh.__dict__)
        self._flat[...] = state["params"]
        self._grad_flat[...] = state["grads"]
        self.training = bool(state["training"])
        rng = self.__dict__.get("_rng")
        if state.get("rng") is not None and rng is not None:
            rng.bit_generator.state = state["rng"]

    def named_parameters(self) -> dict[str, np.ndarray]:
        """Parameters by PyTorch name, in PyTorch's order: live, writable views (an in-place update is seen by
        the next forward).

        A dict, not PyTorch's iterator of pairs: iterate with ``for name, p in model.named_parameters().items():``
        (``for name, p in model.named_parameters():`` unpacks the names and fails).
        """
        return dict(self._params)

    def parameters(self) -> list[np.ndarray]:
        """The parameter arrays in ``named_parameters()`` order: the same live, writable views. A list (PyTorch's
        ``parameters()`` is an iterator; a list iterates the same way, and more than once)."""
        return list(self._params.values())

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

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> IncompatibleKeys:
        """Copy parameters in from a mapping of name -> array (a PyTorch state_dict works as it is: tensors and
        Parameters are detached and converted).

        Strict by default: exactly this model's keys, else ValueError. With ``strict=False`` keys may be missing
        or extra, as PyTorch's: the named parameters are loaded and the rest left alone. Every value must have its
        parameter's shape in either mode. Values are cast to the model's dtype and copied into the existing
        storage, so views from ``named_parameters()`` stay live. A rejected mapping changes nothing. Returns the
        missing and unexpected keys, as PyTorch does.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict: expected a mapping of name -> array, got {type(state_dict).__name__}")
        if not isinstance(strict, (bool, np.bool_)):
            raise TypeError(f"strict: expected a bool, got {strict!r}")
        missing = [k for k in self._params if k not in state_dict]
        unexpected = [k for k in state_dict if k not in self._params]
        if strict and (missing or unexpected):
            raise ValueError(
                f"state_dict: expected exactly the keys {list(self._params)}; missing {missing}, unexpected {unexpected}"
            )
        staged = {}
        for name in self._params:
            if name in state_dict:
                staged[name] = self._stage(name, state_dict[name], f"state_dict[{name!r}]")
        for name, value in staged.items():
            self._params[name][...] = value
        if staged:
            self._versions.value += 1
        return IncompatibleKeys(missing, unexpected)

    def train(self: _M, mode: bool = True) -> _M:
        """Training mode (dropout active) or not; returns self."""
        if not isinstance(mode, (bool, np.bool_)):
            raise TypeError(f"mode: expected a bool, got {mode!r}")
        self.training = bool(mode)
        return self

    def eval(self: _M) -> _M:
        """Inference mode (no dropout); returns self."""
        return self.train(False)
