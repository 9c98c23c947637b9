"""The stacked, maybe bidirectional LSTM and GRU (``lstm_forward``, ``gru_forward`` and their backward)."""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from ._common import (
    Array, ArrayLike, Cache, Grads, Params, _canonical_input, _check_lengths, _checked_params, _direction_suffixes,
    _param_dtype)
from ._gated_layer import (
    _check_proj_size, gru_layer_backward, gru_layer_forward, gru_param_shapes, lstm_layer_backward,
    lstm_layer_forward, lstm_param_shapes)


# The stack below handles both kinds through these adapters. A layer's states
# travel as a tuple: (h, c) for the LSTM, (h,) for the GRU.

States = tuple[Array, ...]
_LayerForward = Callable[[Array, States, dict[str, Array], bool], tuple[Array, States, Cache]]
_LayerBackward = Callable[[Cache, Array, States], tuple[Array, States, Grads]]


def _lstm_layer(x: Array, states: States, w: dict[str, Array], reverse: bool) -> tuple[Array, States, Cache]:
    hs, (h, c), cache = lstm_layer_forward(x, states[0], states[1], w["weight_ih"], w["weight_hh"],
                                           w.get("bias_ih"), w.get("bias_hh"), w.get("weight_hr"), reverse)
    return hs, (h, c), cache


def _lstm_layer_back(cache: Cache, grad_hs: Array, grad_last: States) -> tuple[Array, States, Grads]:
    grad_x, (grad_h0, grad_c0), grads = lstm_layer_backward(cache, grad_hs, grad_last[0], grad_last[1])
    return grad_x, (grad_h0, grad_c0), grads


def _gru_layer(x: Array, states: States, w: dict[str, Array], reverse: bool) -> tuple[Array, States, Cache]:
    hs, h, cache = gru_layer_forward(x, states[0], w["weight_ih"], w["weight_hh"],
                                     w.get("bias_ih"), w.get("bias_hh"), reverse)
    return hs, (h,), cache


def _gru_layer_back(cache: Cache, grad_hs: Array, grad_last: States) -> tuple[Array, States, Grads]:
    grad_x, grad_h0, grads = gru_layer_backward(cache, grad_hs, grad_last[0])
    return grad_x, (grad_h0,), grads


_GATED_LAYERS: dict[str, tuple[_LayerForward, _LayerBackward]] = {
    "lstm": (_lstm_layer, _lstm_layer_back), "gru": (_gru_layer, _gru_layer_back)}
_LAYER_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")


# ---------------------------------------------------------------------------
# Stacked, maybe bidirectional LSTM / GRU
# ---------------------------------------------------------------------------

def _canonical_state(s: Optional[ArrayLike], name: str, num_states: int, batch: int, size: int, unbatched: bool,
                     dtype: np.dtype[Any]) -> Array:
    """An initial state as [L*D, B, S]; None means zeros."""
    if s is None:
        return np.zeros((num_states, batch, size), dtype=dtype)
    sa = np.asarray(s, dtype=dtype)
    expected = (num_states, size) if unbatched else (num_states, batch, size)
    if sa.shape != expected:
        raise ValueError(f"{name} has shape {sa.shape}, expected {expected}")
    return sa[:, None, :] if unbatched else sa


def _canonical_masks(dropout_masks: Optional[ArrayLike], num_layers: int, num_steps: int, batch: int, width: int,
                     dtype: np.dtype[Any]) -> Optional[Array]:
    """The dropout masks as [L-1, T, B, D*out], or None (also for a single layer)."""
    if dropout_masks is None or num_layers == 1:
        return None
    masks = np.asarray(dropout_masks, dtype=dtype)
    expected = (num_layers - 1, num_steps, batch, width)
    if masks.shape != expected:
        raise ValueError(f"dropout_masks has shape {masks.shape}, expected {expected}")
    return masks


def _seq_to_caller(seq: Array, unbatched: bool, batch_first: bool) -> Array:
    """[T, B, .] back to the caller's layout."""
    if unbatched:
        return seq[:, 0, :]
    return seq.transpose(1, 0, 2) if batch_first else seq


def _state_to_caller(s: Array, unbatched: bool) -> Array:
    """[L*D, B, .] back to the caller's layout."""
    return s[:, 0, :] if unbatched else s


def _layer_weights(p: dict[str, Array], layer: int, sfx: str) -> dict[str, Array]:
    """The parameters of one layer and direction, keyed by kind (weight_ih, ...)."""
    return {kind: p[f"{kind}_l{layer}{sfx}"] for kind in _LAYER_KINDS if f"{kind}_l{layer}{sfx}" in p}


def _stack_forward(kind: str, x: Array, states: States, p: dict[str, Array], masks: Optional[Array], num_layers: int,
                   num_dirs: int) -> tuple[Array, States, list[list[Cache]]]:
    """The stacking loop of lstm_forward / gru_forward, in the canonical layouts.

    x: [T, B, I]; states: tuple of initial states, each [L*D, B, S];
    masks: [L-1, T, B, D*out] or None.
    Returns (output [T, B, D*out], final states (tuple like states), layer caches).
    """
    layer_fn = _GATED_LAYERS[kind][0]
    finals = tuple(np.zeros_like(s) for s in states)
    layer_input = x
    layer_caches: list[list[Cache]] = []
    for layer in range(num_layers):
        if layer > 0 and masks is not None:
            layer_input = layer_input * masks[layer - 1]   # dropout between layers only
        outputs: list[Array] = []
        caches: list[Cache] = []
        for d, sfx in enumerate(_direction_suffixes(num_dirs == 2)):
            idx = layer * num_dirs + d
            hs, last, cache = layer_fn(layer_input, tuple(s[idx] for s in states),
                                       _layer_weights(p, layer, sfx), d == 1)   # d == 1: reverse
            for final, value in zip(finals, last):
                final[idx] = value
            outputs.append(hs)
            caches.append(cache)
        layer_caches.append(caches)
        layer_input = np.concatenate(outputs, axis=2)      # [T, B, D*out]
    return layer_input, finals, layer_caches


def _stack_backward(kind: str, layer_caches: list[list[Cache]], masks: Optional[Array], grad_out: Array,
                    grad_finals: States, num_layers: int, num_dirs: int) -> tuple[Array, States, Grads]:
    """Backward of _stack_forward. Returns (grad_x, grad of the initial states (tuple), grads by name)."""
    layer_back = _GATED_LAYERS[kind][1]
    out_size = grad_out.shape[2] // num_dirs
    grad_inits = tuple(np.zeros_like(g) for g in grad_finals)
    grads: Grads = {}
    # Walk the stack from the top: the gradient w.r.t. a layer's input is the
    # gradient w.r.t. the output of the layer below (through its dropout mask).
    grad_layer_out = grad_out
    for layer in reversed(range(num_layers)):
        grad_layer_in: Optional[Array] = None
        for d, sfx in enumerate(_direction_suffixes(num_dirs == 2)):
            idx = layer * num_dirs + d
            g_hs = grad_layer_out[:, :, d * out_size:(d + 1) * out_size]
            g_x, g_init, g = layer_back(layer_caches[layer][d], g_hs, tuple(gf[idx] for gf in grad_finals))
            for grad_init, value in zip(grad_inits, g_init):
                grad_init[idx] = value
            for k, value in g.items():
                grads[f"{k}_l{layer}{sfx}"] = value
            # Both directions read the same input, so their gradients add up.
            grad_layer_in = g_x if grad_layer_in is None else grad_layer_in + g_x
        assert grad_layer_in is not None  # every layer has a direction
        if layer > 0 and masks is not None:
            grad_layer_in = grad_layer_in * masks[layer - 1]
        grad_layer_out = grad_layer_in
    return grad_layer_out, grad_inits, grads


def _gated_forward(kind: str, x: Array, states: States, p: dict[str, Array], masks: Optional[Array],
                   lengths: Optional[ArrayLike], *, num_layers: int, num_dirs: int, unbatched: bool,
                   batch_first: bool, shapes: dict[str, tuple[int, ...]], dtype: np.dtype[Any]
                   ) -> tuple[Array, States, Cache]:
    """Shared part of lstm_forward and gru_forward, from the canonical layouts on.

    Runs the stack on the whole batch, or with lengths each item alone on its
    valid steps (the textbook way, as _forward_by_item). Returns (output
    [T, B, D*out], final states (tuple), cache).
    """
    num_steps, batch = x.shape[0], x.shape[1]
    cache: Cache = {
        "kind": kind, "num_layers": num_layers, "num_dirs": num_dirs, "dtype": dtype,
        "unbatched": unbatched, "batch_first": batch_first, "masks": masks,
        "input_shape": x.shape, "state_shapes": [s.shape for s in states],
        "param_shapes": shapes, "names": list(shapes), "lengths": None,
    }
    if lengths is None:
        output, finals, layer_caches = _stack_forward(kind, x, states, p, masks, num_layers, num_dirs)
        cache["layer_caches"] = layer_caches
    else:
        checked_lengths = _check_lengths(lengths, num_steps, batch, unbatched)
        out_size = states[0].shape[2]
        output = np.zeros((num_steps, batch, num_dirs * out_size), dtype=dtype)   # padded rows stay 0
        finals = tuple(np.zeros_like(s) for s in states)
        item_caches: list[list[list[Cache]]] = []
        for b, n in enumerate(checked_lengths):
            # Item b is the batch of one x[:n, b:b+1], with its own state columns and mask slices.
            out_b, finals_b, caches_b = _stack_forward(
                kind, x[:n, b:b + 1], tuple(s[:, b:b + 1] for s in states), p,
                None if masks is None else masks[:, :n, b:b + 1], num_layers, num_dirs)
            output[:n, b] = out_b[:, 0]
            for final, value in zip(finals, finals_b):
                final[:, b] = value[:, 0]
            item_caches.append(caches_b)
        cache["lengths"] = checked_lengths
        cache["item_caches"] = item_caches
    cache["output_shape"] = output.shape
    return output, finals, cache


def _gated_backward(cache: Cache, grad_out: Array, grad_finals: States) -> tuple[Array, States, Grads]:
    """Shared part of lstm_backward and gru_backward, in the canonical layouts."""
    kind, masks = cache["kind"], cache["masks"]
    num_layers, num_dirs = cache["num_layers"], cache["num_dirs"]
    if cache["lengths"] is None:
        grad_x, grad_inits, grads = _stack_backward(kind, cache["layer_caches"], masks, grad_out, grad_finals,
                                                    num_layers, num_dirs)
        return grad_x, grad_inits, {name: grads[name] for name in cache["names"]}

    dtype = cache["dtype"]
    grad_x = np.zeros(cache["input_shape"], dtype=dtype)                # stays zero at the padded steps
    grad_inits = tuple(np.zeros(shape, dtype=dtype) for shape in cache["state_shapes"])
    grads = {name: np.zeros(shape, dtype=dtype) for name, shape in cache["param_shapes"].items()}
    for b, (n, caches_b) in enumerate(zip(cache["lengths"], cache["item_caches"])):
        # Outputs at padded steps are constant zeros: their gradient is dropped.
        g_x, g_inits, g = _stack_backward(
            kind, caches_b, None if masks is None else masks[:, :n, b:b + 1], grad_out[:n, b:b + 1],
            tuple(gf[:, b:b + 1] for gf in grad_finals), num_layers, num_dirs)
        grad_x[:n, b] = g_x[:, 0]
        for grad_init, value in zip(grad_inits, g_inits):
            grad_init[:, b] = value[:, 0]
        for name in grads:
            grads[name] += g[name]       # the parameters are shared by all items
    return grad_x, grad_inits, grads


def _canonical_grad_seq(grad: Optional[ArrayLike], cache: Cache, what: str) -> Array:
    """grad_output as [T, B, D*out] (zeros for None)."""
    if grad is None:
        return np.zeros(cache["output_shape"], dtype=cache["dtype"])
    g = np.asarray(grad, dtype=cache["dtype"])
    if g.ndim != 3 - cache["unbatched"]:
        raise ValueError(f"{what} must have the shape of output")
    if cache["unbatched"]:
        g = g[:, None, :]
    elif cache["batch_first"]:
        g = g.transpose(1, 0, 2)
    if g.shape != cache["output_shape"]:
        raise ValueError(f"{what} must have the shape of output")
    return g


def _canonical_grad_state(grad: Optional[ArrayLike], shape: tuple[int, ...], cache: Cache, what: str, of: str
                          ) -> Array:
    """A gradient w.r.t. a final state as [L*D, B, S] (zeros for None)."""
    if grad is None:
        return np.zeros(shape, dtype=cache["dtype"])
    g = np.asarray(grad, dtype=cache["dtype"])
    if cache["unbatched"] and g.ndim == 2:
        g = g[:, None, :]
    if g.shape != shape:
        raise ValueError(f"{what} must have the shape of {of}")
    return g


def lstm_forward(x: ArrayLike, params: Params, *, num_layers: int = 1, bias: bool = True, batch_first: bool = False,
                 bidirectional: bool = False, proj_size: int = 0,
                 hx: Optional[tuple[Optional[ArrayLike], Optional[ArrayLike]]] = None,
                 dropout_masks: Optional[ArrayLike] = None, lengths: Optional[ArrayLike] = None
                 ) -> tuple[Array, tuple[Array, Array], Cache]:
    """Forward pass of a multi-layer LSTM (torch.nn.LSTM).

    One step of one layer and direction, with the gates as row blocks i, f, g, o:

        a  = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh            [B, 4H]
        i, f, g, o = sigmoid(a_i), sigmoid(a_f), tanh(a_g), sigmoid(a_o)
        c_t = f * c_{t-1} + i * g
        h_t = o * tanh(c_t)              (proj_size > 0: h_t = (o * tanh(c_t)) W_hr^T)

    x: [T, B, I] ([B, T, I] if batch_first); an unbatched input [T, I]
       (ndim 2) is accepted regardless of batch_first.
    params: mapping name -> array, names and shapes as in lstm_param_names /
       lstm_param_shapes.
    proj_size: P, the size of h (0: no projection, P = H); must be below H.
    hx: None (zeros), or the pair (h0, c0) with h0 [L*D, B, P] and
       c0 [L*D, B, H] ([L*D, P] and [L*D, H] unbatched).
    num_layers, bias, batch_first, bidirectional, dropout_masks, lengths: as
       in rnn_forward, with D*P for the width of the outputs and masks; with
       lengths, h_n and c_n are each item's states after its last valid step
       (step 0 for the reverse direction).

    Returns (output, (h_n, c_n), cache):
      output: [T, B, D*P] ([B, T, D*P] if batch_first, [T, D*P] unbatched);
         the forward direction in columns [0:P], the reverse one in [P:2P].
      h_n: [L*D, B, P], c_n: [L*D, B, H] ([L*D, P], [L*D, H] unbatched),
         ordered as in rnn_forward.
      cache: what lstm_backward needs.
    Computation happens in the dtype of weight_ih_l0.
    """
    if num_layers < 1:
        raise ValueError("num_layers must be at least 1")
    num_dirs = 2 if bidirectional else 1
    dtype = _param_dtype(params, "weight_ih_l0")
    input_size = np.shape(params["weight_ih_l0"])[1]
    hidden = np.shape(params["weight_ih_l0"])[0] // 4
    _check_proj_size(proj_size, hidden)
    out_size = proj_size if proj_size > 0 else hidden
    shapes = lstm_param_shapes(input_size, hidden, num_layers, bidirectional, bias, proj_size)
    p = _checked_params(params, shapes, dtype)

    xa, unbatched = _canonical_input(x, dtype, batch_first, input_size)
    num_steps, batch = xa.shape[0], xa.shape[1]
    h0: Optional[ArrayLike] = None
    c0: Optional[ArrayLike] = None
    if hx is not None:
        if len(hx) != 2:
            raise ValueError("hx must be None or a pair (h0, c0)")
        h0, c0 = hx
    h0a = _canonical_state(h0, "h0", num_layers * num_dirs, batch, out_size, unbatched, dtype)
    c0a = _canonical_state(c0, "c0", num_layers * num_dirs, batch, hidden, unbatched, dtype)
    masks = _canonical_masks(dropout_masks, num_layers, num_steps, batch, num_dirs * out_size, dtype)

    output, (h_n, c_n), cache = _gated_forward(
        "lstm", xa, (h0a, c0a), p, masks, lengths, num_layers=num_layers, num_dirs=num_dirs,
        unbatched=unbatched, batch_first=batch_first, shapes=shapes, dtype=dtype)
    return (_seq_to_caller(output, unbatched, batch_first),
            (_state_to_caller(h_n, unbatched), _state_to_caller(c_n, unbatched)), cache)


def lstm_backward(cache: Cache, grad_output: Optional[ArrayLike] = None, grad_h_n: Optional[ArrayLike] = None,
                  grad_c_n: Optional[ArrayLike] = None) -> tuple[Array, tuple[Array, Array], Grads]:
    """Backward pass of lstm_forward (backpropagation through time).

    cache: the third value returned by lstm_forward.
    grad_output, grad_h_n, grad_c_n: gradients w.r.t. output, h_n and c_n,
       each of that value's shape and layout, or None (zeros); at least one
       must be given (else ValueError). With lengths, the entries of
       grad_output at padded steps are ignored.

    Returns (grad_x, (grad_h0, grad_c0), grads): grad_x has x's shape and
    layout (zero at padded steps); grad_h0 and grad_c0 have the shapes of
    h0 and c0, also when hx was None; grads maps every parameter name, in
    lstm_param_names order, to its gradient.
    """
    if grad_output is None and grad_h_n is None and grad_c_n is None:
        raise ValueError("lstm_backward needs grad_output, grad_h_n or grad_c_n (at least one)")
    h_shape, c_shape = cache["state_shapes"]
    grad_out = _canonical_grad_seq(grad_output, cache, "grad_output")
    grad_hn = _canonical_grad_state(grad_h_n, h_shape, cache, "grad_h_n", "h_n")
    grad_cn = _canonical_grad_state(grad_c_n, c_shape, cache, "grad_c_n", "c_n")
    grad_x, (grad_h0, grad_c0), grads = _gated_backward(cache, grad_out, (grad_hn, grad_cn))
    unbatched = cache["unbatched"]
    return (_seq_to_caller(grad_x, unbatched, cache["batch_first"]),
            (_state_to_caller(grad_h0, unbatched), _state_to_caller(grad_c0, unbatched)), grads)


def gru_forward(x: ArrayLike, params: Params, *, num_layers: int = 1, bias: bool = True, batch_first: bool = False,
                bidirectional: bool = False, h0: Optional[ArrayLike] = None, dropout_masks: Optional[ArrayLike] = None,
                lengths: Optional[ArrayLike] = None) -> tuple[Array, Array, Cache]:
    """Forward pass of a multi-layer GRU (torch.nn.GRU).

    One step of one layer and direction, with the gates as row blocks r, z, n:

        r = sigmoid(x_t W_ir^T + b_ir + h_{t-1} W_hr^T + b_hr)
        z = sigmoid(x_t W_iz^T + b_iz + h_{t-1} W_hz^T + b_hz)
        n = tanh(x_t W_in^T + b_in + r * (h_{t-1} W_hn^T + b_hn))
        h_t = (1 - z) * n + z * h_{t-1}

    (W_ir, W_hr, ... are the gate blocks of weight_ih / weight_hh; this W_hr
    is not the LSTM's projection weight_hr.) Note that r multiplies b_hn too,
    so b_in and b_hn are not interchangeable as the other biases are.
    Arguments and results as in rnn_forward (without nonlinearity), with the
    parameters of gru_param_names / gru_param_shapes.
    Returns (output, h_n, cache): output [T, B, D*H] ([B, T, D*H] if
    batch_first, [T, D*H] unbatched), h_n [L*D, B, H] ([L*D, H] unbatched).
    """
    if num_layers < 1:
        raise ValueError("num_layers must be at least 1")
    num_dirs = 2 if bidirectional else 1
    dtype = _param_dtype(params, "weight_ih_l0")
    input_size = np.shape(params["weight_ih_l0"])[1]
    hidden = np.shape(params["weight_ih_l0"])[0] // 3
    shapes = gru_param_shapes(input_size, hidden, num_layers, bidirectional, bias)
    p = _checked_params(params, shapes, dtype)

    xa, unbatched = _canonical_input(x, dtype, batch_first, input_size)
    num_steps, batch = xa.shape[0], xa.shape[1]
    h0a = _canonical_state(h0, "h0", num_layers * num_dirs, batch, hidden, unbatched, dtype)
    masks = _canonical_masks(dropout_masks, num_layers, num_steps, batch, num_dirs * hidden, dtype)

    output, (h_n,), cache = _gated_forward(
        "gru", xa, (h0a,), p, masks, lengths, num_layers=num_layers, num_dirs=num_dirs,
        unbatched=unbatched, batch_first=batch_first, shapes=shapes, dtype=dtype)
    return _seq_to_caller(output, unbatched, batch_first), _state_to_caller(h_n, unbatched), cache


def gru_backward(cache: Cache, grad_output: Optional[ArrayLike] = None, grad_h_n: Optional[ArrayLike] = None
                 ) -> tuple[Array, Array, Grads]:
    """Backward pass of gru_forward (backpropagation through time).

    As rnn_backward: returns (grad_x, grad_h0, grads) with grads in
    gru_param_names order; None counts as zeros, but at least one gradient
    must be given (else ValueError).
    """
    if grad_output is None and grad_h_n is None:
        raise ValueError("gru_backward needs grad_output or grad_h_n (or both)")
    grad_out = _canonical_grad_seq(grad_output, cache, "grad_output")
    grad_hn = _canonical_grad_state(grad_h_n, cache["state_shapes"][0], cache, "grad_h_n", "h_n")
    grad_x, (grad_h0,), grads = _gated_backward(cache, grad_out, (grad_hn,))
    unbatched = cache["unbatched"]
    return _seq_to_caller(grad_x, unbatched, cache["batch_first"]), _state_to_caller(grad_h0, unbatched), grads
