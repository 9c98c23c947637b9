"""The autograd Functions that run the kernels (a stack, a cell), and PyTorch's differentiable implementation for
the backwards the kernels cannot do."""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import _VF
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .._cell import RNNCell as _FastCell
from .._gated_cell import _GatedCell as _FastGatedCell
from .._rnn import _Stack as _FastStack
from ._runner import (_cell_step, _cell_step_backward, _FastCellModel, _is_wrapped, _kind, _needs_grad, _np, _opt_np,
                      _opt_tensor, _Runner, _sharing_cores, _tensor, _transforms_active)


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
