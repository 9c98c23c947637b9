"""The rnnfast model behind a module (``_Runner``), tensors <-> arrays, and the kernels of every cell kind behind
one set of calls."""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .. import _core
from .._cell import RNNCell as _FastCell
from .._gated_cell import _GatedCell as _FastGatedCell
from .._rnn import _Stack as _FastStack

_FastCellModel = Union[_FastCell, _FastGatedCell]
_FastModel = Union[_FastStack, _FastCell, _FastGatedCell]

_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}
_TORCH_DTYPES = {np.float32: torch.float32, np.float64: torch.float64}


# ---------------------------------------------------------------------------------------------------------------------
# Tensors <-> arrays
# ---------------------------------------------------------------------------------------------------------------------

def _np(t: torch.Tensor) -> np.ndarray:
    """A NumPy view of a CPU tensor (a copy only where a lazy negation / conjugation must be resolved)."""
    return t.detach().resolve_conj().resolve_neg().numpy()


def _tensor(a: np.ndarray) -> torch.Tensor:
    """A tensor over a kernel's result array (no copy)."""
    if not a.flags.writeable:
        a = a.copy()
    return torch.from_numpy(a)


def _is_view_of(w: torch.Tensor, view: np.ndarray) -> bool:
    """Whether tensor ``w`` is exactly the memory of array ``view`` (so the kernels already read its values)."""
    return (w.data_ptr() == view.ctypes.data and tuple(w.shape) == view.shape and w.is_contiguous()
            and _NUMPY_DTYPES.get(w.dtype) == view.dtype)


class _Runner:
    """An rnnfast model and, for each of a list of torch weights, the array view of its buffer that holds it.

    A runner either *backs* a module's parameters (they are views of its buffer, which is then never written by
    ``load``) or is a scratch one that ``load`` fills by copy.
    """

    __slots__ = ("model", "names", "views", "backs_params", "_layout")

    def __init__(self, model: _FastModel, names: Sequence[str]) -> None:
        self.model = model
        self.names = list(names)  # the model's name of each weight
        params = model.named_parameters()
        self.views = [params[name] for name in names]
        self.backs_params = False
        # (address, shape) of each view, for a cheap "is this weight that view" test on every call
        self._layout = [(view.ctypes.data, torch.Size(view.shape)) for view in self.views]

    def holds(self, weights: Sequence[torch.Tensor]) -> bool:
        """Whether every weight is exactly the memory of its view (and so a dense CPU tensor of its dtype)."""
        dtype = _TORCH_DTYPES[self.views[0].dtype.type]
        for (address, shape), w in zip(self._layout, weights):
            if w.data_ptr() != address or w.shape != shape or w.dtype != dtype or not w.is_contiguous():
                return False
        return True

    def load(self, weights: Sequence[torch.Tensor]) -> None:
        """Make the buffer hold ``weights``: nothing to do for those that share its memory, a copy for the rest."""
        if self.holds(weights):
            return
        for view, w in zip(self.views, weights):
            if not _is_view_of(w, view):
                if self.backs_params:  # never overwrite parameters with other values
                    raise RuntimeError("rnnfast.torch: the parameters were replaced between this forward and its "
                                       "backward; run forward again")
                view[...] = _np(w)

    def share(self, weights: Sequence[torch.Tensor]) -> None:
        """Copy ``weights`` into the buffer and make each tensor a view of it (``.data`` is swapped, so the
        ``Parameter`` objects, their optimizer state and their hooks stay the same)."""
        with torch.no_grad():
            for view, w in zip(self.views, weights):
                view[...] = _np(w)
                w.data = torch.from_numpy(view)
        self.backs_params = True


def _needs_grad(*tensors: Optional[torch.Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


_functorch = getattr(torch._C, "_functorch", None)
_is_functorch_wrapped = getattr(_functorch, "is_functorch_wrapped_tensor", None)
_is_legacy_batched = getattr(_functorch, "is_legacy_batchedtensor", None)
_transforms_active = getattr(torch._C, "_are_functorch_transforms_active", None)


def _is_wrapped(t: Optional[torch.Tensor]) -> bool:
    """Whether ``t`` wraps other tensors: those of ``torch.func`` transforms (vmap's batched, grad's tracking
    tensors) or of the legacy vmap that batches gradients (``is_grads_batched``, gradcheck's batched-gradient
    check). They have no memory of their own for the kernels to read."""
    if t is None:
        return False
    return bool((_is_functorch_wrapped is not None and _is_functorch_wrapped(t))
                or (_is_legacy_batched is not None and _is_legacy_batched(t)))


def _fast_dtype(tensors: Sequence[Optional[torch.Tensor]]) -> Optional[torch.dtype]:
    """The common dtype when every tensor is a dense CPU float32 / float64 tensor of one dtype, else None."""
    dtype = None
    for t in tensors:
        if t is None:
            continue
        if (not isinstance(t, torch.Tensor) or t.device.type != "cpu" or t.layout != torch.strided
                or t.dtype not in _NUMPY_DTYPES or t.is_nested or (dtype is not None and t.dtype != dtype)
                or _is_wrapped(t)):
            return None
        dtype = t.dtype
    return dtype


def _cpu_autocast_enabled() -> bool:
    return bool(torch.is_autocast_enabled("cpu"))


try:
    _cpu_autocast_enabled()
except TypeError:  # torch < 2.4 has no device argument
    def _cpu_autocast_enabled() -> bool:  # type: ignore[misc]
        return bool(torch.is_autocast_cpu_enabled())


_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)


def _fast_context_ok() -> bool:
    """False while tracing / scripting / compiling, under autocast or inside a ``torch.func`` transform (grad,
    vmap, jacrev, functional_call under them...): PyTorch's own implementation runs then."""
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return False
    if _is_compiling is not None and _is_compiling():
        return False
    if _transforms_active is not None and _transforms_active():
        return False
    return not _cpu_autocast_enabled()


# ---------------------------------------------------------------------------------------------------------------------
# Kernels of every kind behind one set of calls
# ---------------------------------------------------------------------------------------------------------------------

def _kind(model: Any) -> str:
    """The cell kind of an rnnfast model: "rnn", "lstm" or "gru" (the Elman cell has no ``_CELL``)."""
    return getattr(model, "_CELL", "rnn")


def _opt_np(t: Optional[torch.Tensor]) -> Optional[np.ndarray]:
    return None if t is None else _np(t)


def _opt_tensor(a: Optional[np.ndarray]) -> Optional[torch.Tensor]:
    return None if a is None else _tensor(a)


# Multiply-adds of a stack's forward below which _sharing_cores lends a call only the cores PyTorch's threads leave:
# about the work of a few milliseconds, which PyTorch's spinning workers would otherwise share cores with throughout.
_SHARED_CORES_MAX_WORK = 2**28


@contextlib.contextmanager
def _sharing_cores(model: _FastStack, x: torch.Tensor) -> Iterator[None]:
    """Cooperate with PyTorch's threads. After each of its parallel regions PyTorch's OpenMP workers spin for some
    milliseconds before they sleep, on the cores rnnfast's threads would use; a kernel call split across all of
    them then waits for whichever shares a core (a word-language-model step ran slower at 2 threads than at 1). So
    while PyTorch runs more than one thread, a call of modest work (``_SHARED_CORES_MAX_WORK``) runs on the cores
    its workers leave, at least one. Only rnnfast's default thread count cooperates: a count set with
    ``rnnfast.set_num_threads`` is used as set."""
    cap = 0
    work = float(model._work_per_row) * x.size(0) * x.size(1)
    if work < _SHARED_CORES_MAX_WORK and _core.num_threads_is_default():
        torch_threads = torch.get_num_threads()
        if torch_threads > 1:
            cap = max(1, _core.get_num_threads() - (torch_threads - 1))
    if cap == 0:
        yield
        return
    _core.set_thread_cap(cap)
    try:
        yield
    finally:
        _core.set_thread_cap(0)


def _cell_step(model: _FastCellModel, x: np.ndarray, h: Optional[np.ndarray], c: Optional[np.ndarray],
               return_cache: bool) -> Tuple[np.ndarray, Optional[np.ndarray], Any]:
    """One step of any cell kind: (h_new, c_new or None, cache or None)."""
    if isinstance(model, _FastCell):
        if return_cache:
            h_new, cache = model.forward(x, h, return_cache=True)
            return h_new, None, cache
        return model.forward(x, h), None, None
    return model._step(x, h, c, "hx[0]" if model._CELL == "lstm" else "h", return_cache)


def _cell_step_backward(model: _FastCellModel, cache: Any, grad_h: Optional[np.ndarray],
                        grad_c: Optional[np.ndarray]
                        ) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray], Dict[str, np.ndarray]]:
    """The gradients of one step of any cell kind into a buffer of this call's own (``grads`` is not touched):
    (grad_x, grad_h, grad_c or None, parameter grads). The cache stays usable for another backward."""
    if isinstance(model, _FastCell):
        assert grad_h is not None
        gx, gh, grads = model._backward(cache, grad_h, True, False)
        gc = None
    else:
        gx, gh, gc, grads = model._step_backward(cache, grad_h, grad_c, True, False)
    assert grads is not None
    return gx, gh, gc, grads
