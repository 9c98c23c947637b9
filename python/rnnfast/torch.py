"""rnnfast.torch: ``torch.nn.RNN``, ``LSTM``, ``GRU``, ``RNNCell``, ``LSTMCell`` and ``GRUCell`` whose forward and
backward run rnnfast's kernels.

Change one import and keep the rest of a PyTorch program -- optimizer, checkpoints, gradient clipping, hooks,
``DistributedDataParallel``::

    from rnnfast.torch import LSTM           # instead of: from torch.nn import LSTM
    lstm = LSTM(input_size=1, hidden_size=32, num_layers=2, batch_first=True)

or swap every ``nn.RNN`` / ``LSTM`` / ``GRU`` / ``RNNCell`` / ``LSTMCell`` / ``GRUCell`` of an existing model,
weights included: ``model = rnnfast.torch.convert(model)``.

Each class subclasses ``torch.nn``'s class of the same name: same constructor (``proj_size`` of ``LSTM``
included), parameters (names, shapes, order, initialization), ``state_dict``, ``repr`` and forward signature and
results (``LSTM``: ``(output, (h_n, c_n))``; ``LSTMCell``: ``(h', c')``); only ``forward`` is replaced. The fast
path covers CPU tensors of dtype float32 / float64 (input, states and weights of one dtype); anything else
(another device or dtype, autocast, tracing or compiling) runs PyTorch's own implementation, which also raises
PyTorch's own errors for bad arguments.

How it works: each module keeps an rnnfast model of the same configuration whose flat parameter buffer *is* the
storage of the module's ``Parameter`` s (each parameter is a view into it), so an optimizer step or
``load_state_dict`` writes straight into the buffer the kernels read and no copy is made on forward. Where that
sharing is not possible (weights replaced by ``torch.func.functional_call`` or a parametrization, parameters moved
to shared memory) the values are copied into a separate buffer on each forward and backward instead. Forward and
backward go through one ``torch.autograd.Function`` for the stacks (an LSTM's ``c0`` an input and ``c_n`` an
output too) and one for the cells: backward runs rnnfast's BPTT into gradient buffers of its own call (so
backwards through one module in several threads at once stay independent) and hands the gradients of the input,
states and parameters to autograd, which accumulates them into ``.grad`` and runs any hooks. Modifying a parameter
in place between forward and backward raises PyTorch's usual version-counter error.

Double backward works: a backward that builds a graph (``create_graph=True``, for a gradient penalty or a
Hessian-vector product, say) recomputes the forward with PyTorch's own ops (``_VF.rnn_tanh``, ``lstm``, ``gru``,
``lstm_cell``, ..., as ``torch.nn`` calls them) from the saved input, states and weights and differentiates that,
so second derivatives are PyTorch's; so does a backward of batched gradients (``is_grads_batched``, gradcheck's
``check_batched_grad``). Inside ``torch.func`` transforms (``grad``, ``vmap``, ``jacrev``, ... over the module or
``functional_call``) forward runs PyTorch's implementation. Only the ordinary first-order backward runs on the
kernels.

Dropout of a stack (``dropout > 0``, ``num_layers > 1``, training mode): every layer's mask is drawn from PyTorch's
random generator before the call, as ``torch.nn.functional.dropout`` draws it (``bernoulli_(1 - p)`` then
``div_(1 - p)``, on the time-major ``[T, B, D*P]`` output or a PackedSequence's data) and in PyTorch's order, so the
masks equal PyTorch's for the same seed; the whole stack then runs in one kernel call that applies them.

PackedSequence input is unpacked to a padded batch that runs with rnnfast's ``lengths`` (padded steps cost no
compute) and the output is packed again with the input's ``batch_sizes`` and ordering, as PyTorch returns it.

The kernels split their work across ``rnnfast.set_num_threads`` threads (default: the CPUs this process may run
on), independently of ``torch.set_num_threads``.

Importing ``rnnfast`` never imports torch; this module needs torch (``pip install "rnnfast[torch]"``).
"""

from __future__ import annotations

if __name__ == "torch":  # pragma: no cover - only when the package folder itself is on sys.path
    raise ImportError(
        "rnnfast/torch.py was imported as the top-level module 'torch' because the folder python/rnnfast is on "
        "sys.path (a script run from inside it); run scripts from elsewhere, or with python -m"
    )

import contextlib
import warnings
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised without torch
    raise ImportError("rnnfast.torch needs PyTorch: pip install \"rnnfast[torch]\" (or pip install torch)") from exc
from torch import _VF
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import _core
from ._cell import RNNCell as _FastCell
from ._gated_cell import GRUCell as _FastGRUCell
from ._gated_cell import LSTMCell as _FastLSTMCell
from ._gated_cell import _GatedCell as _FastGatedCell
from ._rnn import GRU as _FastGRU
from ._rnn import LSTM as _FastLSTM
from ._rnn import RNN as _FastRNN
from ._rnn import _Stack as _FastStack

__all__ = ["GRU", "GRUCell", "LSTM", "LSTMCell", "RNN", "RNNCell", "benchmark", "convert", "format_benchmark"]

_FastCellModel = Union[_FastCell, _FastGatedCell]
_FastModel = Union[_FastStack, _FastCell, _FastGatedCell]

_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}
_TORCH_DTYPES = {np.float32: torch.float32, np.float64: torch.float64}

# Module hook registries carried over by convert() (those this torch version has).
_HOOK_ATTRIBUTES = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
                    "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_backward_pre_hooks",
                    "_backward_hooks", "_is_full_backward_hook", "_state_dict_hooks", "_state_dict_pre_hooks",
                    "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")


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


# ---------------------------------------------------------------------------------------------------------------------
# autograd Functions
# ---------------------------------------------------------------------------------------------------------------------

class _StackFunction(torch.autograd.Function):
    """x ``[T, B, I]``, h0 ``[L*D, B, P]`` or None, c0 ``[L*D, B, H]`` or None (LSTM only), lengths (int64 array
    ``[B]``) or None, then the weights in the runner's order -> (output ``[T, B, D*P]``, h_n), and c_n for an
    LSTM."""

    @staticmethod
    def forward(ctx: Any, runner: _Runner, x: torch.Tensor, h0: Optional[torch.Tensor], c0: Optional[torch.Tensor],
                lengths: Optional[np.ndarray], masks: Optional[torch.Tensor], *weights: torch.Tensor
                ) -> Tuple[torch.Tensor, ...]:
        runner.load(weights)
        model = runner.model
        assert isinstance(model, _FastStack)
        with _sharing_cores(model, x):
            out, h_n, c_n, cache = model._run(_np(x), _opt_np(h0), _opt_np(c0), lengths, True, _opt_np(masks))
        ctx.runner = runner
        ctx.cache = cache
        ctx.lengths = lengths
        ctx.masks = masks
        _keep_inputs(ctx, x, h0, c0)
        ctx.save_for_backward(*weights)  # no copy; lets autograd refuse weights modified in place before backward
        ctx.set_materialize_grads(False)
        if c_n is None:
            return _tensor(out), _tensor(h_n)
        return _tensor(out), _tensor(h_n), _tensor(c_n)

    @staticmethod
    def backward(ctx: Any, grad_output: Optional[torch.Tensor], grad_h_n: Optional[torch.Tensor],
                 grad_c_n: Optional[torch.Tensor] = None) -> Tuple[Optional[torch.Tensor], ...]:
        weights = ctx.saved_tensors
        if grad_output is None and grad_h_n is None and grad_c_n is None:
            return (None,) * (6 + len(weights))
        runner: _Runner = ctx.runner
        model = runner.model
        assert isinstance(model, _FastStack)
        needs = ctx.needs_input_grad
        if _differentiable_backward_needed(grad_output, grad_h_n, grad_c_n):
            x, h0, c0 = _kept_inputs(ctx)
            g = _torch_vjp(lambda: _torch_stack(model, x, h0, c0, ctx.lengths, weights, ctx.masks),
                           (grad_output, grad_h_n, grad_c_n), (x, h0, c0, *weights), (*needs[1:4], *needs[6:]))
            return (None, g[0], g[1], g[2], None, None, *g[3:])
        runner.load(weights)  # a scratch buffer may hold other values since this forward
        # The gradients come back in a buffer of this call's own (the model's `grads` is not touched), so backwards
        # through one module in several threads at once do not mix; the cache stays usable for another backward
        # (autograd itself refuses one through a freed graph).
        with _sharing_cores(model, ctx.inputs[0]):
            gx, gh0, gc0, grads = model._run_backward(ctx.cache, _opt_np(grad_output), _opt_np(grad_h_n),
                                                      _opt_np(grad_c_n), needs[1], True, False)
        assert grads is not None
        weight_grads = [_tensor(grads[name]) if needs[6 + i] else None for i, name in enumerate(runner.names)]
        has_h, has_c = ctx.has_state
        return (None, _opt_tensor(gx), _tensor(gh0) if has_h and needs[2] else None,
                _opt_tensor(gc0) if has_c and needs[3] else None, None, None, *weight_grads)


class _CellFunction(torch.autograd.Function):
    """x ``[B, I]``, h ``[B, H]`` or None, c ``[B, H]`` or None (LSTMCell only), then the weights -> h_new
    ``[B, H]``, or (h_new, c_new) for an LSTMCell."""

    @staticmethod
    def forward(ctx: Any, runner: _Runner, x: torch.Tensor, h: Optional[torch.Tensor], c: Optional[torch.Tensor],
                *weights: torch.Tensor) -> Any:
        runner.load(weights)
        model = runner.model
        assert isinstance(model, (_FastCell, _FastGatedCell))
        h_new, c_new, cache = _cell_step(model, _np(x), _opt_np(h), _opt_np(c), True)
        ctx.runner = runner
        ctx.cache = cache
        _keep_inputs(ctx, x, h, c)
        ctx.save_for_backward(*weights)
        ctx.set_materialize_grads(False)
        if c_new is None:
            return _tensor(h_new)
        return _tensor(h_new), _tensor(c_new)

    @staticmethod
    def backward(ctx: Any, grad_h_new: Optional[torch.Tensor], grad_c_new: Optional[torch.Tensor] = None
                 ) -> Tuple[Optional[torch.Tensor], ...]:
        weights = ctx.saved_tensors
        if grad_h_new is None and grad_c_new is None:
            return (None,) * (4 + len(weights))
        runner: _Runner = ctx.runner
        model = runner.model
        assert isinstance(model, (_FastCell, _FastGatedCell))
        needs = ctx.needs_input_grad
        if _differentiable_backward_needed(grad_h_new, grad_c_new):
            x, h, c = _kept_inputs(ctx)
            g = _torch_vjp(lambda: _torch_cell(model, x, h, c, weights), (grad_h_new, grad_c_new),
                           (x, h, c, *weights), needs[1:])
            return (None, *g)
        runner.load(weights)
        gx, gh, gc, grads = _cell_step_backward(model, ctx.cache, _opt_np(grad_h_new), _opt_np(grad_c_new))
        weight_grads = [_tensor(grads[name]) if needs[4 + i] else None for i, name in enumerate(runner.names)]
        has_h, has_c = ctx.has_state
        return (None, _tensor(gx) if needs[1] else None, _tensor(gh) if has_h and needs[2] else None,
                _opt_tensor(gc) if has_c and needs[3] else None, *weight_grads)


# --- PyTorch's differentiable implementation, for the backwards the kernels cannot do ---

def _differentiable_backward_needed(*grads: Optional[torch.Tensor]) -> bool:
    """Whether this backward must run on PyTorch ops rather than the kernels: when it builds a graph of its own
    (``create_graph=True``: grad mode is on inside backward then, for a second derivative) or when a gradient is
    batched (``is_grads_batched``, gradcheck's batched check, ``torch.func`` transforms over ``autograd.grad``)."""
    return (torch.is_grad_enabled() or any(_is_wrapped(g) for g in grads)
            or (_transforms_active is not None and _transforms_active()))


def _keep_inputs(ctx: Any, x: torch.Tensor, h: Optional[torch.Tensor], c: Optional[torch.Tensor]) -> None:
    """Keep the input and states for a backward on PyTorch's implementation, with their versions. Not through
    ``save_for_backward``: the kernels' own check reports an input modified in place (ValueError naming it),
    as for NumPy users, and the states are copied by the forward, so a later change of them does no harm there."""
    ctx.has_state = (h is not None, c is not None)
    ctx.inputs = (x, h, c)
    ctx.versions = tuple(None if t is None else t._version for t in (x, h, c))


def _kept_inputs(ctx: Any) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """The input and states ``_keep_inputs`` kept; ValueError when one was modified in place since."""
    x, h, c = ctx.inputs
    names = ("x", "hx[0]", "hx[1]") if c is not None else ("x", "hx", "")
    for name, t, version in zip(names, ctx.inputs, ctx.versions):
        if t is not None and t._version != version:
            raise ValueError(f"{name}: it was modified in place after the forward; backward needs the values "
                             "forward saw (modify a copy)")
    return x, h, c


def _torch_vjp(forward: Any, grads: Sequence[Optional[torch.Tensor]], inputs: Sequence[Optional[torch.Tensor]],
               needs: Sequence[bool]) -> List[Optional[torch.Tensor]]:
    """The gradients (``grads`` pulled back) of the inputs that ``needs`` marks, through ``forward()`` recomputed
    with PyTorch ops; differentiable in turn when grad mode is on (``create_graph=True``). None for the others."""
    with torch.enable_grad():
        outputs = forward()
    pairs = [(out, g) for out, g in zip(outputs, grads) if g is not None]
    wanted = [(i, t) for i, (t, need) in enumerate(zip(inputs, needs)) if need and t is not None]
    result: List[Optional[torch.Tensor]] = [None] * len(inputs)
    if pairs and wanted:
        got = torch.autograd.grad([out for out, _ in pairs], [t for _, t in wanted], [g for _, g in pairs],
                                  create_graph=torch.is_grad_enabled(), allow_unused=True)
        for (i, _), g in zip(wanted, got):
            result[i] = g
    return result


class _OneLayer:
    """A stack's configuration as one of its layers (its other attributes are the stack's)."""

    num_layers = 1

    def __init__(self, model: _FastStack) -> None:
        self._model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def _torch_stack(model: _FastStack, x: torch.Tensor, h0: Optional[torch.Tensor], c0: Optional[torch.Tensor],
                 lengths: Optional[np.ndarray], weights: Sequence[torch.Tensor],
                 masks: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, ...]:
    """``model``'s time-major forward on PyTorch's implementation (``_VF.rnn_tanh`` / ``rnn_relu`` / ``lstm`` /
    ``gru``, as ``torch.nn.RNN`` / ``LSTM`` / ``GRU`` call them), with rnnfast's ``lengths`` run as PyTorch runs a
    PackedSequence: (output, h_n), and c_n for an LSTM. With dropout ``masks`` ``[L-1, T, B, D*P]``, layer by
    layer, each output but the last multiplied by its mask."""
    kind = _kind(model)
    D = 2 if model.bidirectional else 1
    count = model.num_layers * D
    if h0 is None:
        h0 = x.new_zeros(count, x.size(1), model._state_size)  # P: proj_size or H
    if kind == "lstm" and c0 is None:
        c0 = x.new_zeros(count, x.size(1), model.hidden_size)
    if masks is not None:
        per_layer = len(weights) // model.num_layers
        layer_input, states = x, []
        for layer in range(model.num_layers):
            part = slice(layer * D, (layer + 1) * D)
            one: Any = _OneLayer(model)
            out, *layer_states = _torch_stack(one, layer_input, h0[part], None if c0 is None else c0[part], lengths,
                                              weights[layer * per_layer:(layer + 1) * per_layer])
            states.append(layer_states)
            layer_input = out * masks[layer] if layer < model.num_layers - 1 else out
        return (layer_input, *(torch.cat(parts, 0) for parts in zip(*states)))
    run: Any
    if kind == "lstm":
        run = _VF.lstm
    elif kind == "gru":
        run = _VF.gru
    else:
        run = _VF.rnn_tanh if model.nonlinearity == "tanh" else _VF.rnn_relu
    flat = list(weights)
    config = (model.bias, model.num_layers, 0.0, False, model.bidirectional)
    if lengths is None:
        result = run(x, [h0, c0] if kind == "lstm" else h0, flat, *config, False)
        return tuple(result)
    packed = pack_padded_sequence(x, torch.from_numpy(lengths), enforce_sorted=False)
    order, unorder = packed.sorted_indices, packed.unsorted_indices
    assert order is not None and unorder is not None  # enforce_sorted=False sets them
    hx: Any = h0.index_select(1, order)
    if kind == "lstm":
        assert c0 is not None
        hx = [hx, c0.index_select(1, order)]
    data, *states = run(packed.data, packed.batch_sizes, hx, flat, *config)
    out, _ = pad_packed_sequence(PackedSequence(data, packed.batch_sizes, order, unorder), total_length=x.size(0))
    return (out, *(s.index_select(1, unorder) for s in states))


def _torch_cell(model: _FastCellModel, x: torch.Tensor, h: Optional[torch.Tensor], c: Optional[torch.Tensor],
                weights: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
    """``model``'s step on PyTorch's implementation (``_VF.rnn_tanh_cell`` / ``rnn_relu_cell`` / ``lstm_cell`` /
    ``gru_cell``): (h_new,), or (h_new, c_new) for an LSTMCell."""
    kind = _kind(model)
    if h is None:
        h = x.new_zeros(x.size(0), model.hidden_size)
    w_ih, w_hh, *biases = weights
    b_ih, b_hh = biases if biases else (None, None)
    if kind == "lstm":
        if c is None:
            c = x.new_zeros(x.size(0), model.hidden_size)
        return tuple(_VF.lstm_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh))
    if kind == "gru":
        return (_VF.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh),)
    step = _VF.rnn_tanh_cell if getattr(model, "nonlinearity") == "tanh" else _VF.rnn_relu_cell
    return (step(x, h, w_ih, w_hh, b_ih, b_hh),)


def _run_stack(runner: _Runner, x: torch.Tensor, h0: Optional[torch.Tensor], c0: Optional[torch.Tensor],
               lengths: Optional[np.ndarray], weights: Sequence[torch.Tensor], masks: Optional[torch.Tensor] = None
               ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Time-major forward through the runner: through autograd when a gradient is wanted, else inference only.
    (output, h_n, c_n or None). ``masks``: dropout masks ``[L-1, T, B, D*P]``, or None."""
    if _needs_grad(x, h0, c0, *weights):
        out, h_n, *c_n = _StackFunction.apply(runner, x, h0, c0, lengths, masks, *weights)
        return out, h_n, (c_n[0] if c_n else None)
    runner.load(weights)
    model = runner.model
    assert isinstance(model, _FastStack)
    with _sharing_cores(model, x):
        out_np, h_n_np, c_n_np, _ = model._run(_np(x), _opt_np(h0), _opt_np(c0), lengths, False, _opt_np(masks))
    return _tensor(out_np), _tensor(h_n_np), _opt_tensor(c_n_np)


def _run_cell(runner: _Runner, x: torch.Tensor, h: Optional[torch.Tensor], c: Optional[torch.Tensor],
              weights: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """One step through the runner: (h_new, c_new or None)."""
    if _needs_grad(x, h, c, *weights):
        result = _CellFunction.apply(runner, x, h, c, *weights)
        if isinstance(result, torch.Tensor):
            return result, None
        return result[0], result[1]
    runner.load(weights)
    h_new, c_new, _ = _cell_step(runner.model, _np(x), _opt_np(h), _opt_np(c), False)  # type: ignore[arg-type]
    return _tensor(h_new), _opt_tensor(c_new)


def _state_pair(hx: Any) -> Optional[Tuple[Any, Any]]:
    """An LSTM state ``(h, c)`` as a pair when it is a tuple or list of two items, else None."""
    if isinstance(hx, (tuple, list)) and len(hx) == 2:
        return hx[0], hx[1]
    return None


def _has_shape(t: Any, shape: Tuple[int, ...]) -> bool:
    return isinstance(t, torch.Tensor) and tuple(t.shape) == shape


# ---------------------------------------------------------------------------------------------------------------------
# The modules
# ---------------------------------------------------------------------------------------------------------------------

class _Shared:
    """What every module here has in common: the rnnfast runners, the parameter-buffer sharing, and the forward
    of a stack (``_rnnfast_stack_forward``) or of a cell (``_rnnfast_cell_forward``) for any cell kind."""

    _rnnfast_runners: Dict[Any, _Runner]
    _rnnfast_kind = "rnn"  # the cell kind: "rnn", "lstm" or "gru"
    _rnnfast_is_stack = True  # a stack (torch.nn.RNNBase) rather than a cell

    def _rnnfast_names(self) -> List[str]:
        """The names of the weights, in the order of the rnnfast model's (and of ``_flat_weights``)."""
        this: Any = self
        if self._rnnfast_is_stack:
            return list(this._flat_weights_names)
        return ["weight_ih", "weight_hh", "bias_ih", "bias_hh"] if this.bias else ["weight_ih", "weight_hh"]

    def _rnnfast_new_model(self, key: Any, dtype: Any) -> Tuple[_FastModel, List[str]]:
        """The rnnfast model for ``key`` and the name of each of its parameters, in ``_rnnfast_names`` order
        (or that of the key's slice of them)."""
        if self._rnnfast_is_stack:
            return self._rnnfast_stack_model(key, dtype)
        return self._rnnfast_cell_model(dtype)

    def _rnnfast_supported(self) -> bool:
        """Whether rnnfast can build this configuration (else PyTorch's implementation always runs)."""
        if self._rnnfast_is_stack:
            return True  # torch.nn.RNNBase refuses what rnnfast cannot build
        # torch.nn's cells also take zero sizes (and RNNCell any nonlinearity until forward refuses it).
        this: Any = self
        return this.input_size > 0 and this.hidden_size > 0 and (
            self._rnnfast_kind != "rnn" or this.nonlinearity in ("tanh", "relu"))

    def _rnnfast_weights(self) -> List[torch.Tensor]:
        """The weights as the module holds them now: its parameters, or what replaced them (``functional_call``,
        parametrizations, an assigned tensor)."""
        params = self.__dict__["_parameters"]
        weights = []
        for name in self._rnnfast_names():
            w = params.get(name)
            weights.append(w if w is not None else getattr(self, name))
        return weights

    def _rnnfast_runner(self, key: Any, dtype: torch.dtype) -> _Runner:
        runners = self.__dict__.get("_rnnfast_runners")
        if runners is None:
            runners = self.__dict__["_rnnfast_runners"] = {}
        runner = runners.get((key, dtype))
        if runner is None:
            model, names = self._rnnfast_new_model(key, _NUMPY_DTYPES[dtype])
            model.eval()
            runner = runners[(key, dtype)] = _Runner(model, names)
        return runner

    def _rnnfast_full_runner(self, weights: Sequence[torch.Tensor], dtype: Optional[torch.dtype]
                             ) -> Optional[_Runner]:
        """The full model's runner for these weights and this input dtype (None: not a fast-path case): the one
        whose buffer they are, else a scratch one (for tensors given by ``functional_call``, say) that they are
        copied into."""
        if dtype is None or not self._rnnfast_supported():
            return None
        runners = self.__dict__.get("_rnnfast_runners")
        runner = None if runners is None else runners.get(("all", dtype))
        if runner is not None and runner.backs_params and runner.holds(weights):
            return runner  # the common case, checked cheaply
        if _fast_dtype(weights) != dtype:
            return None
        runner = self._rnnfast_runner("all", dtype)
        if runner.backs_params:  # and these weights are not its views
            runner = self._rnnfast_runner("scratch", dtype)
        return runner

    def _rnnfast_share(self) -> None:
        """Make the parameters views of the full model's rnnfast buffer, where they can be (CPU, float32 or
        float64, not in shared memory); otherwise leave them alone (forward copies them in). Runners of another
        dtype, left over from before a ``.to()``, are dropped."""
        weights = self._rnnfast_weights()
        dtype = _fast_dtype(weights)
        runners = self.__dict__.get("_rnnfast_runners", {})
        for key in [key for key in runners if key[1] != dtype]:
            del runners[key]
        if dtype is None or not self._rnnfast_supported() or any(w.is_shared() or w.is_meta for w in weights):
            return
        runner = self._rnnfast_runner("all", dtype)
        if runner.holds(weights):
            return
        if runner.backs_params:  # other parameters (load_state_dict(assign=True)): a fresh buffer for them, so
            del self._rnnfast_runners[("all", dtype)]  # the replaced ones keep theirs
            runner = self._rnnfast_runner("all", dtype)
        runner.share(weights)

    # --- keep the sharing through .to() / .double() / deepcopy / pickling / load_state_dict(assign=True) ---

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        ret = super()._apply(fn, *args, **kwargs)  # type: ignore[misc]
        self._rnnfast_share()
        return ret

    def __getstate__(self) -> Dict[str, Any]:
        parent = getattr(super(), "__getstate__", None)
        state = dict(parent() if parent is not None else self.__dict__)
        state.pop("_rnnfast_runners", None)  # rebuilt on demand (the kernels do not pickle)
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)  # type: ignore[misc]
        self._rnnfast_share()

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)  # type: ignore[misc]
        self._rnnfast_share()  # a no-op unless assign=True replaced the parameters

    # --- stacks: torch.nn.RNN / LSTM / GRU ---

    def _rnnfast_stack_model(self, key: Any, dtype: Any) -> Tuple[_FastStack, List[str]]:
        """``_rnnfast_new_model`` of a stack ("all" or "scratch")."""
        this: Any = self
        kind = self._rnnfast_kind
        # bool(): torch.nn.RNN takes any truthy bidirectional (and RNNCell any bias); rnnfast wants bools.
        common: Dict[str, Any] = dict(bias=bool(this.bias), bidirectional=bool(this.bidirectional), dtype=dtype,
                                      seed=0)
        if kind == "rnn":
            common["nonlinearity"] = this.nonlinearity
        elif kind == "lstm":
            common["proj_size"] = this.proj_size
        cls = {"rnn": _FastRNN, "lstm": _FastLSTM, "gru": _FastGRU}[kind]
        return cls(this.input_size, this.hidden_size, this.num_layers, **common), self._rnnfast_names()

    def _rnnfast_stack_forward(self, input: Any, hx: Any) -> Any:  # noqa: A002 - torch's name
        this: Any = self
        weights = self._rnnfast_weights()
        lstm = self._rnnfast_kind == "lstm"
        packed = isinstance(input, PackedSequence)
        runner = None
        if _fast_context_ok() and self._rnnfast_stack_shapes_ok(input, hx):
            states = [None] if hx is None else (list(hx) if lstm else [hx])
            runner = self._rnnfast_full_runner(weights, _fast_dtype([input.data if packed else input, *states]))
        if runner is None:
            return super().forward(input, hx)  # type: ignore[misc]  # PyTorch's implementation (and its errors)
        h0, c0 = (None, None) if hx is None else ((hx[0], hx[1]) if lstm else (hx, None))
        lengths: Optional[torch.Tensor] = None
        unbatched = False
        if packed:
            x, lengths = pad_packed_sequence(input)  # [T, B, I] in the caller's batch order; lengths int64 [B]
        else:
            unbatched = input.dim() == 2
            if unbatched:
                x = input.unsqueeze(1)
                h0 = None if h0 is None else h0.unsqueeze(1)
                c0 = None if c0 is None else c0.unsqueeze(1)
            else:
                x = input.transpose(0, 1) if this.batch_first else input
        lengths_np = None if lengths is None else np.ascontiguousarray(lengths.numpy(), dtype=np.int64)

        masks = None
        if this.training and this.dropout > 0 and this.num_layers > 1:
            masks = self._dropout_masks(x, input if packed else None)
        out, h_n, c_n = _run_stack(runner, x, h0, c0, lengths_np, weights, masks)

        output: Any = out
        if packed:
            assert lengths is not None
            output = PackedSequence(_pack_like(out, lengths, input), input.batch_sizes, input.sorted_indices,
                                    input.unsorted_indices)
        elif unbatched:
            output = out.squeeze(1)
            h_n = h_n.squeeze(1)
            c_n = None if c_n is None else c_n.squeeze(1)
        elif this.batch_first:
            output = out.transpose(0, 1)
        return (output, (h_n, c_n)) if lstm else (output, h_n)

    def _dropout_masks(self, x: torch.Tensor, packed: Optional[PackedSequence]) -> torch.Tensor:
        """Every layer's dropout mask but the last's, ``[L-1, T, B, D*P]``, drawn from PyTorch's generator as
        PyTorch's CPU implementation draws them: in layer order, ``empty_like(output).bernoulli_(1 - p)`` then
        ``div_(1 - p)`` on the time-major output, or on a PackedSequence's data (scattered here to the padded
        layout); p = 1 draws nothing (PyTorch multiplies by zeros)."""
        this: Any = self
        p = float(this.dropout)
        D = 2 if this.bidirectional else 1
        DP = D * (this.proj_size if self._rnnfast_kind == "lstm" and this.proj_size > 0 else this.hidden_size)
        T, B = x.size(0), x.size(1)
        layers = []
        for _ in range(this.num_layers - 1):
            shape = (T, B, DP) if packed is None else (packed.data.size(0), DP)
            if p >= 1.0:
                noise = torch.zeros(shape, dtype=x.dtype, device="cpu")
            else:  # on the CPU, as the input is: its generator, whatever the default device
                noise = torch.empty(shape, dtype=x.dtype, device="cpu").bernoulli_(1 - p).div_(1 - p)
            if packed is not None:
                noise = pad_packed_sequence(PackedSequence(noise, packed.batch_sizes, packed.sorted_indices,
                                                           packed.unsorted_indices), total_length=T)[0]
            layers.append(noise)
        return torch.stack(layers)

    def _rnnfast_stack_shapes_ok(self, input: Any, hx: Any) -> bool:
        """Whether the arguments are ones the fast path runs; anything else goes to PyTorch's forward."""
        this: Any = self
        count = this.num_layers * (2 if this.bidirectional else 1)
        P = this.proj_size if self._rnnfast_kind == "lstm" and this.proj_size > 0 else this.hidden_size
        if isinstance(input, PackedSequence):
            data, batch_sizes = input.data, input.batch_sizes
            if data.dim() != 2 or data.size(-1) != this.input_size or batch_sizes.numel() == 0:
                return False
            batched: Tuple[int, ...] = (int(batch_sizes[0]),)
        else:
            if not isinstance(input, torch.Tensor) or input.dim() not in (2, 3) or input.size(-1) != this.input_size:
                return False
            if input.dim() == 2:
                seq_len, batched = input.size(0), ()
            else:
                seq_len, batch = ((input.size(1), input.size(0)) if this.batch_first
                                  else (input.size(0), input.size(1)))
                if batch == 0:
                    return False
                batched = (batch,)
            if seq_len == 0:
                return False
        if hx is None:
            return True
        if self._rnnfast_kind != "lstm":
            return _has_shape(hx, (count, *batched, P))
        pair = _state_pair(hx)
        return (pair is not None and _has_shape(pair[0], (count, *batched, P))
                and _has_shape(pair[1], (count, *batched, this.hidden_size)))

    # --- cells: torch.nn.RNNCell / LSTMCell / GRUCell ---

    def _rnnfast_cell_model(self, dtype: Any) -> Tuple[_FastCellModel, List[str]]:
        this: Any = self
        model: _FastCellModel
        if self._rnnfast_kind == "rnn":
            model = _FastCell(this.input_size, this.hidden_size, bias=bool(this.bias),
                              nonlinearity=this.nonlinearity, dtype=dtype, seed=0)
        else:
            cls = _FastLSTMCell if self._rnnfast_kind == "lstm" else _FastGRUCell
            model = cls(this.input_size, this.hidden_size, bias=bool(this.bias), dtype=dtype, seed=0)
        return model, self._rnnfast_names()

    def _rnnfast_cell_forward(self, input: Any, hx: Any) -> Any:  # noqa: A002
        weights = self._rnnfast_weights()
        lstm = self._rnnfast_kind == "lstm"
        runner = None
        if _fast_context_ok() and self._rnnfast_cell_shapes_ok(input, hx):
            states = [None] if hx is None else (list(hx) if lstm else [hx])
            runner = self._rnnfast_full_runner(weights, _fast_dtype([input, *states]))
        if runner is None:
            return super().forward(input, hx)  # type: ignore[misc]
        h, c = (None, None) if hx is None else ((hx[0], hx[1]) if lstm else (hx, None))
        unbatched = input.dim() == 1
        if unbatched:
            input = input.unsqueeze(0)
            h = None if h is None else h.unsqueeze(0)
            c = None if c is None else c.unsqueeze(0)
        h_new, c_new = _run_cell(runner, input, h, c, weights)
        if unbatched:
            h_new = h_new.squeeze(0)
            c_new = None if c_new is None else c_new.squeeze(0)
        return (h_new, c_new) if lstm else h_new

    def _rnnfast_cell_shapes_ok(self, input: Any, hx: Any) -> bool:
        this: Any = self
        if not isinstance(input, torch.Tensor) or input.dim() not in (1, 2) or input.size(-1) != this.input_size:
            return False
        if input.dim() == 2 and input.size(0) == 0:
            return False
        shape = (this.hidden_size,) if input.dim() == 1 else (input.size(0), this.hidden_size)
        if hx is None:
            return True
        if self._rnnfast_kind != "lstm":
            return _has_shape(hx, shape)
        pair = _state_pair(hx)
        return pair is not None and _has_shape(pair[0], shape) and _has_shape(pair[1], shape)


class RNN(_Shared, torch.nn.RNN):
    """``torch.nn.RNN`` with rnnfast's CPU kernels: same constructor, parameters, ``state_dict`` and forward.

    ``forward(input, hx=None) -> (output, h_n)``, ``input`` a tensor ``[T, B, I]`` (``[B, T, I]`` with
    ``batch_first``, unbatched ``[T, I]``) or a ``PackedSequence``, as ``torch.nn.RNN``. See the module docstring.
    """

    _rnnfast_kind = "rnn"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__(input_size, hidden_size, num_layers=num_layers, nonlinearity=nonlinearity, bias=bias,
                         batch_first=batch_first, dropout=dropout, bidirectional=bidirectional, device=device,
                         dtype=dtype)
        self._rnnfast_share()

    def forward(self, input: Any, hx: Optional[torch.Tensor] = None) -> Any:  # noqa: A002 - torch's name
        return self._rnnfast_stack_forward(input, hx)


class LSTM(_Shared, torch.nn.LSTM):
    """``torch.nn.LSTM`` with rnnfast's CPU kernels: same constructor (``proj_size`` included), parameters,
    ``state_dict`` and forward.

    ``forward(input, hx=None) -> (output, (h_n, c_n))``, ``input`` a tensor ``[T, B, I]`` (``[B, T, I]`` with
    ``batch_first``, unbatched ``[T, I]``) or a ``PackedSequence``, ``hx`` a pair ``(h0 [L*D, B, P], c0 [L*D, B,
    H])`` or None, as ``torch.nn.LSTM``. See the module docstring.
    """

    _rnnfast_kind = "lstm"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__(input_size, hidden_size, num_layers=num_layers, bias=bias, batch_first=batch_first,
                         dropout=dropout, bidirectional=bidirectional, proj_size=proj_size, device=device,
                         dtype=dtype)
        self._rnnfast_share()

    def forward(self, input: Any, hx: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> Any:  # noqa: A002
        return self._rnnfast_stack_forward(input, hx)


class GRU(_Shared, torch.nn.GRU):
    """``torch.nn.GRU`` with rnnfast's CPU kernels: same constructor, parameters, ``state_dict`` and forward.

    ``forward(input, hx=None) -> (output, h_n)`` as ``torch.nn.GRU`` (and ``RNN``). See the module docstring.
    """

    _rnnfast_kind = "gru"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__(input_size, hidden_size, num_layers=num_layers, bias=bias, batch_first=batch_first,
                         dropout=dropout, bidirectional=bidirectional, device=device, dtype=dtype)
        self._rnnfast_share()

    def forward(self, input: Any, hx: Optional[torch.Tensor] = None) -> Any:  # noqa: A002 - torch's name
        return self._rnnfast_stack_forward(input, hx)


def _pack_like(padded: torch.Tensor, lengths: torch.Tensor, like: PackedSequence) -> torch.Tensor:
    """The packed data of a padded time-major batch (caller's order), with ``like``'s batch sizes and ordering."""
    if like.sorted_indices is not None:
        padded = padded.index_select(1, like.sorted_indices)
        lengths = lengths.index_select(0, like.sorted_indices.to(lengths.device))
    return pack_padded_sequence(padded, lengths, enforce_sorted=True).data


class RNNCell(_Shared, torch.nn.RNNCell):
    """``torch.nn.RNNCell`` with rnnfast's CPU kernel: same constructor, parameters, ``state_dict`` and forward.

    ``forward(input, hx=None) -> h'``, ``input`` ``[B, I]`` or unbatched ``[I]``, ``hx`` ``[B, H]`` / ``[H]``.
    """

    _rnnfast_kind = "rnn"
    _rnnfast_is_stack = False

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__(input_size, hidden_size, bias=bias, nonlinearity=nonlinearity, device=device, dtype=dtype)
        self._rnnfast_share()

    def forward(self, input: torch.Tensor, hx: Optional[torch.Tensor] = None) -> torch.Tensor:  # noqa: A002
        return self._rnnfast_cell_forward(input, hx)  # type: ignore[no-any-return]


class LSTMCell(_Shared, torch.nn.LSTMCell):
    """``torch.nn.LSTMCell`` with rnnfast's CPU kernels: same constructor, parameters, ``state_dict`` and forward.

    ``forward(input, hx=None) -> (h', c')``, ``input`` ``[B, I]`` or unbatched ``[I]``, ``hx`` a pair ``(h, c)``
    of ``[B, H]`` / ``[H]`` or None.
    """

    _rnnfast_kind = "lstm"
    _rnnfast_is_stack = False

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device: Any = None, dtype: Any = None
                 ) -> None:
        super().__init__(input_size, hidden_size, bias=bias, device=device, dtype=dtype)
        self._rnnfast_share()

    def forward(self, input: torch.Tensor, hx: Optional[Tuple[torch.Tensor, torch.Tensor]] = None  # noqa: A002
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        return self._rnnfast_cell_forward(input, hx)  # type: ignore[no-any-return]


class GRUCell(_Shared, torch.nn.GRUCell):
    """``torch.nn.GRUCell`` with rnnfast's CPU kernels: same constructor, parameters, ``state_dict`` and forward.

    ``forward(input, hx=None) -> h'``, ``input`` ``[B, I]`` or unbatched ``[I]``, ``hx`` ``[B, H]`` / ``[H]``.
    """

    _rnnfast_kind = "gru"
    _rnnfast_is_stack = False

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device: Any = None, dtype: Any = None
                 ) -> None:
        super().__init__(input_size, hidden_size, bias=bias, device=device, dtype=dtype)
        self._rnnfast_share()

    def forward(self, input: torch.Tensor, hx: Optional[torch.Tensor] = None) -> torch.Tensor:  # noqa: A002
        return self._rnnfast_cell_forward(input, hx)  # type: ignore[no-any-return]


# A whole model saved with torch.save(model) loads with torch.load's default weights_only=True (PyTorch >= 2.6):
# its pickle names these classes and otherwise only what torch.nn's own modules hold (the rnnfast kernels are not
# pickled: __getstate__ leaves them out and they are rebuilt on use). PyTorch >= 2.4 has the allowlist.
if hasattr(torch.serialization, "add_safe_globals"):
    torch.serialization.add_safe_globals([RNN, LSTM, GRU, RNNCell, LSTMCell, GRUCell])


# ---------------------------------------------------------------------------------------------------------------------
# convert
# ---------------------------------------------------------------------------------------------------------------------

# torch.nn's class -> rnnfast.torch's, and the constructor arguments taken from the old module.
_STACK_ARGS = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional")
_CELL_ARGS = ("input_size", "hidden_size", "bias")
_SWAPS: Dict[type, Tuple[type, Tuple[str, ...]]] = {
    torch.nn.RNN: (RNN, _STACK_ARGS + ("nonlinearity",)),
    torch.nn.LSTM: (LSTM, _STACK_ARGS + ("proj_size",)),
    torch.nn.GRU: (GRU, _STACK_ARGS),
    torch.nn.RNNCell: (RNNCell, _CELL_ARGS + ("nonlinearity",)),
    torch.nn.LSTMCell: (LSTMCell, _CELL_ARGS),
    torch.nn.GRUCell: (GRUCell, _CELL_ARGS),
}


def convert(module: torch.nn.Module) -> torch.nn.Module:
    """Swap every ``torch.nn.RNN`` / ``LSTM`` / ``GRU`` / ``RNNCell`` / ``LSTMCell`` / ``GRUCell`` in ``module``
    (the module itself included) for rnnfast.torch's class of the same name; return the module, or its replacement
    when it is itself one.

    Children are replaced in place in their parents. The new modules take over the old ones' very ``Parameter``
    objects (so the weights, an optimizer made before the swap, and parameter hooks all carry over), their training
    mode and their module hooks. Only those exact classes are swapped: a subclass of them may override
    ``forward``. A module reachable along several paths becomes one replacement. No random numbers are drawn.
    """
    return _convert(module, {})


def _convert(module: torch.nn.Module, memo: Dict[int, torch.nn.Module]) -> torch.nn.Module:
    if id(module) in memo:
        return memo[id(module)]
    new: torch.nn.Module
    swap = _SWAPS.get(type(module))
    if swap is not None:
        new = _swap(module, *swap)
    else:
        new = module
        for name, child in list(module.named_children()):
            converted = _convert(child, memo)
            if converted is not child:
                setattr(module, name, converted)
    memo[id(module)] = new
    return new


def _swap(old: Any, cls: type, arg_names: Sequence[str]) -> torch.nn.Module:
    weights = list(old.parameters(recurse=False))
    dtype = weights[0].dtype if weights else None
    kwargs = {name: getattr(old, name) for name in arg_names}
    if "dropout" in kwargs:
        kwargs["dropout"] = float(kwargs["dropout"])
    new: Any
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTorch's dropout warning, given already when `old` was made
        # On the meta device: no memory, no random numbers; the old parameters are then taken over.
        new = cls(**kwargs, device="meta", dtype=dtype)
    for name, param in old.named_parameters(recurse=False):
        setattr(new, name, param)
    if isinstance(new, torch.nn.RNNBase):
        new._init_flat_weights()
    new.train(old.training)
    for attr in _HOOK_ATTRIBUTES:
        if attr in old.__dict__:
            new.__dict__[attr] = old.__dict__[attr]
    new._rnnfast_share()
    return new


# ---------------------------------------------------------------------------------------------------------------------
# Benchmark: a full training step against the same model with torch.nn.RNN
# ---------------------------------------------------------------------------------------------------------------------

def benchmark(cases: Optional[Sequence[str]] = None, threads: Optional[int] = None, repeat: int = 5,
              min_seconds: float = 0.05) -> List[Dict[str, Any]]:
    """Time one full training step of a model with ``rnnfast.torch.RNN`` against the same model with
    ``torch.nn.RNN``: ``zero_grad``, forward, a linear head on every step's output, MSE loss against a fixed
    random target, ``backward``, ``torch.optim.Adam`` ``step``; float32, CPU.

    ``cases``: names (or substrings of names) of RNN cases of ``rnnfast.bench.CASES``, None for all of them
    (ragged cases feed a ``PackedSequence`` to both). ``threads``: set for both torch and rnnfast during the run
    (None leaves them as they are). Each repetition times both models in turn, alternating which goes first, each
    in a loop of at least ``min_seconds``; the result per case is the median time per step over the repetitions.
    Returns one dict per case: ``name``, ``threads``, ``torch_ms``, ``rnnfast_ms``, ``speedup`` (torch's time /
    rnnfast's).
    """
    from . import get_num_threads
    from ._torch_cli import time_training_steps
    from .bench.timing import Timing

    results = time_training_steps(cases, threads=threads, timing=Timing(repeat, min_seconds, 0.0, 0.0))
    return [{"name": r["name"], "threads": get_num_threads() if threads is None else threads, "torch_ms": r["torch_ms"],
             "rnnfast_ms": r["rnnfast_ms"], "speedup": r["speedup"]} for r in results]


def format_benchmark(results: Sequence[Dict[str, Any]]) -> str:
    """The results of ``benchmark`` as a table."""
    lines = [f"{'case':<22}{'torch.nn.RNN':>14}{'rnnfast.torch':>15}{'speedup':>9}"]
    for r in results:
        lines.append(f"{r['name']:<22}{r['torch_ms']:>11.3f} ms{r['rnnfast_ms']:>12.3f} ms{r['speedup']:>8.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - python -m rnnfast.torch (the command line: rnnfast._torch_cli)
    import sys

    from rnnfast._torch_cli import main

    sys.exit(main())
