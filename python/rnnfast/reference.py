"""Pure-NumPy reference implementation of the Elman RNN, the LSTM and the GRU.

This module is the oracle of the test suite and a teaching aid. It favours
clarity over speed: one equation per line, explicit loops over time, and the
backward pass written out as textbook backpropagation through time (BPTT).

The Elman recurrence of one layer in one direction is

    a_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh      (pre-activation)
    h_t = act(a_t)                                       (act = tanh or relu)

Shapes and parameter names follow the conventions of ``torch.nn.RNN`` and
``torch.nn.RNNCell``. Letters used in the docstrings:

    T  sequence length          B  batch size
    I  input size               H  hidden size
    L  number of layers         D  directions (2 if bidirectional else 1)
    P  LSTM projection size (proj_size, or H without projection)

The gated recurrences follow ``torch.nn.LSTM`` / ``torch.nn.GRU`` (and their
cells) exactly; their equations are in the docstrings of lstm_forward and
gru_forward. Their stacking, directions, layouts, dropout masks and lengths
work as for the Elman RNN (see rnn_forward).

Variable-length batches (``rnn_forward(..., lengths=...)``) are handled the
textbook way: every batch item is run on its own, truncated sequence, and the
results are padded with zeros and stacked.

Only NumPy is imported; nothing here depends on the compiled core.

Types: the functions take anything ``numpy.asarray`` takes (``ArrayLike``) and
return float arrays (``Array``); a forward's ``Cache`` is a dict to hand to the
matching backward, and ``Grads`` maps parameter names to their gradients.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

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

__all__ = [
    "param_names",
    "param_shapes",
    "rnn_forward",
    "rnn_backward",
    "cell_forward",
    "cell_backward",
    "layer_forward",
    "layer_backward",
    "lstm_param_names",
    "lstm_param_shapes",
    "lstm_forward",
    "lstm_backward",
    "lstm_cell_forward",
    "lstm_cell_backward",
    "lstm_layer_forward",
    "lstm_layer_backward",
    "gru_param_names",
    "gru_param_shapes",
    "gru_forward",
    "gru_backward",
    "gru_cell_forward",
    "gru_cell_backward",
    "gru_layer_forward",
    "gru_layer_backward",
]

_NONLINEARITIES = ("tanh", "relu")


# ---------------------------------------------------------------------------
# Parameter layout
# ---------------------------------------------------------------------------

def _direction_suffixes(bidirectional: bool) -> tuple[str, ...]:
    """Name suffixes of the directions: forward first, then reverse."""
    return ("", "_reverse") if bidirectional else ("",)


def param_names(num_layers: int = 1, bidirectional: bool = False, bias: bool = True) -> list[str]:
    """Names of the parameters of a (stacked, maybe bidirectional) RNN.

    The order is layer by layer, and within a layer the forward direction
    before the reverse one; each direction lists weight_ih, weight_hh and then,
    if ``bias``, bias_ih and bias_hh. Example for one bidirectional layer:
    ``weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0, weight_ih_l0_reverse, ...``.
    """
    kinds = ("weight_ih", "weight_hh", "bias_ih", "bias_hh") if bias else ("weight_ih", "weight_hh")
    names: list[str] = []
    for layer in range(num_layers):
        for sfx in _direction_suffixes(bidirectional):
            for kind in kinds:
                names.append(f"{kind}_l{layer}{sfx}")
    return names


def param_shapes(input_size: int, hidden_size: int, num_layers: int = 1, bidirectional: bool = False,
                 bias: bool = True) -> dict[str, tuple[int, ...]]:
    """Shape of every parameter, keyed by name (in ``param_names`` order).

    weight_ih_l0: (H, I); weight_ih_l{k>0}: (H, D*H) because a deeper layer
    reads the concatenated outputs of both directions below it;
    weight_hh_l{k}: (H, H); bias_ih_l{k}, bias_hh_l{k}: (H,).
    """
    num_dirs = 2 if bidirectional else 1
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in range(num_layers):
        layer_in = input_size if layer == 0 else num_dirs * hidden_size
        for sfx in _direction_suffixes(bidirectional):
            shapes[f"weight_ih_l{layer}{sfx}"] = (hidden_size, layer_in)
            shapes[f"weight_hh_l{layer}{sfx}"] = (hidden_size, hidden_size)
            if bias:
                shapes[f"bias_ih_l{layer}{sfx}"] = (hidden_size,)
                shapes[f"bias_hh_l{layer}{sfx}"] = (hidden_size,)
    return shapes


# ---------------------------------------------------------------------------
# Nonlinearity
# ---------------------------------------------------------------------------

def _check_nonlinearity(nonlinearity: str) -> None:
    if nonlinearity not in _NONLINEARITIES:
        raise ValueError(f"unknown nonlinearity {nonlinearity!r}; expected 'tanh' or 'relu'")


def _activate(a: Array, nonlinearity: str) -> Array:
    """act(a) for the pre-activation a."""
    if nonlinearity == "tanh":
        return np.tanh(a)
    return np.maximum(a, 0)


def _through_activation(dh: Array, h: Array, nonlinearity: str) -> Array:
    """dL/da = dL/dh * act'(a), with act' written in terms of the output h = act(a) (that is all we keep)."""
    if nonlinearity == "tanh":
        da: Array = dh * (1 - h * h)          # tanh' = 1 - tanh^2
        return da
    # relu' = 1 where the unit is on, else 0. A select, not a product, so a NaN/Inf gradient at an inactive
    # unit is stopped (0 * NaN would be NaN), as PyTorch does.
    return np.where(h <= 0, 0, dh).astype(dh.dtype)


# ---------------------------------------------------------------------------
# One layer, one direction, whole sequence
# ---------------------------------------------------------------------------

def _time_order(num_steps: int, reverse: bool) -> list[int]:
    """The time indices in the order a direction visits them."""
    return list(range(num_steps - 1, -1, -1)) if reverse else list(range(num_steps))


def layer_forward(x: Array, h0: Array, weight_ih: Array, weight_hh: Array, bias_ih: Optional[Array] = None,
                  bias_hh: Optional[Array] = None, nonlinearity: str = "tanh", reverse: bool = False
                  ) -> tuple[Array, Array, Cache]:
    """Run one direction of one layer over a whole sequence.

    x: [T, B, In] layer input (time-major, batched).
    h0: [B, H] initial state.
    weight_ih: [H, In]; weight_hh: [H, H]; bias_ih, bias_hh: [H] or None.
    reverse: visit t = T-1 .. 0 instead of t = 0 .. T-1.
    Returns (hs, h_last, cache): hs [T, B, H] where hs[t] is the state after
    step t (for the reverse direction: after having read x[t..T-1]); h_last
    [B, H] is the state after the last step visited (hs[T-1] forward, hs[0]
    reverse; h0 when T = 0).
    """
    _check_nonlinearity(nonlinearity)
    num_steps, batch = x.shape[0], x.shape[1]
    hidden = weight_hh.shape[0]
    hs = np.zeros((num_steps, batch, hidden), dtype=h0.dtype)
    h = h0
    for t in _time_order(num_steps, reverse):
        a = x[t] @ weight_ih.T + h @ weight_hh.T   # a_t = x_t W_ih^T + h_{t-1} W_hh^T
        if bias_ih is not None:
            a = a + bias_ih + bias_hh              # ... + b_ih + b_hh
        h = _activate(a, nonlinearity)             # h_t = act(a_t)
        hs[t] = h
    cache: Cache = {
        "x": x, "h0": h0, "hs": hs,
        "weight_ih": weight_ih, "weight_hh": weight_hh,
        "has_bias": bias_ih is not None,
        "nonlinearity": nonlinearity, "reverse": reverse,
    }
    return hs, h, cache


def layer_backward(cache: Cache, grad_hs: Array, grad_h_last: Array) -> tuple[Array, Array, Grads]:
    """BPTT through one direction of one layer.

    cache: from layer_forward.
    grad_hs: [T, B, H] gradient of the loss w.r.t. hs (the layer's outputs).
    grad_h_last: [B, H] gradient w.r.t. the final state (the layer's h_n entry).
    Returns (grad_x [T, B, In], grad_h0 [B, H], grads) where grads is a dict
    with keys weight_ih, weight_hh and, if the layer had biases, bias_ih, bias_hh.
    """
    x, h0, hs = cache["x"], cache["h0"], cache["hs"]
    weight_ih, weight_hh = cache["weight_ih"], cache["weight_hh"]
    order = _time_order(x.shape[0], cache["reverse"])

    grad_x = np.zeros_like(x)
    grad_w_ih = np.zeros_like(weight_ih)
    grad_w_hh = np.zeros_like(weight_hh)
    grad_b = np.zeros(weight_hh.shape[0], dtype=hs.dtype)

    # Visit the steps in the opposite order of the forward pass. "Previous"
    # means previously visited: t-1 forward, t+1 for the reverse direction.
    # dh_next carries the gradient flowing into h_t from the step after it;
    # for the last step visited that is the gradient of the final state.
    dh_next = grad_h_last
    for k in reversed(range(len(order))):
        t = order[k]
        h_prev = h0 if k == 0 else hs[order[k - 1]]
        dh = grad_hs[t] + dh_next                                    # h_t feeds the output and the next step
        da = _through_activation(dh, hs[t], cache["nonlinearity"])  # through act
        grad_w_ih += da.T @ x[t]                                     # a_t = x_t W_ih^T + ...
        grad_w_hh += da.T @ h_prev                                   # ... + h_{t-1} W_hh^T
        grad_b += da.sum(axis=0)                                     # biases are shared over the batch
        grad_x[t] = da @ weight_ih
        dh_next = da @ weight_hh                                     # on to h_{t-1}
    grad_h0 = dh_next

    grads: Grads = {"weight_ih": grad_w_ih, "weight_hh": grad_w_hh}
    if cache["has_bias"]:
        # b_ih and b_hh enter a_t the same way, so they get the same gradient.
        grads["bias_ih"] = grad_b
        grads["bias_hh"] = grad_b.copy()
    return grad_x, grad_h0, grads


# ---------------------------------------------------------------------------
# Stacked, maybe bidirectional RNN
# ---------------------------------------------------------------------------

def _param_dtype(params: Params, name: str) -> np.dtype[Any]:
    dtype = np.asarray(params[name]).dtype
    if not np.issubdtype(dtype, np.floating):
        raise TypeError(f"parameter {name} must be floating point, got {dtype}")
    return dtype


def rnn_forward(x: ArrayLike, params: Params, *, num_layers: int = 1, nonlinearity: str = "tanh", bias: bool = True,
                batch_first: bool = False, bidirectional: bool = False, h0: Optional[ArrayLike] = None,
                dropout_masks: Optional[ArrayLike] = None, lengths: Optional[ArrayLike] = None
                ) -> tuple[Array, Array, Cache]:
    """Forward pass of a multi-layer Elman RNN.

    x: [T, B, I] ([B, T, I] if batch_first); an unbatched input [T, I]
       (ndim 2) is accepted regardless of batch_first.
    params: mapping name -> array, names and shapes as in param_names /
       param_shapes (weight_ih_l0 [H, I], weight_hh_l0 [H, H], bias_ih_l0 [H], ...).
    num_layers: L, number of stacked layers.
    nonlinearity: "tanh" or "relu".
    bias: whether the bias_* parameters are used (and expected in params).
    batch_first: layout of x and output for batched input.
    bidirectional: whether each layer also runs a reverse direction (D = 2).
    h0: [L*D, B, H] ([L*D, H] unbatched) initial states, or None for zeros.
    dropout_masks: None, or array-like [L-1, T, B, D*H], always time-major and
       batched (B = 1 for unbatched input): the output of layer l < L-1 is
       multiplied by dropout_masks[l] before it becomes layer l+1's input.
    lengths: None (every sequence has all T steps), or the valid length of
       each batch item: integers of shape [B] (for unbatched input shape [1]
       or a scalar), in any order, each in [1, T]. Item b then only uses its
       steps t < lengths[b]: the forward direction stops after step
       lengths[b]-1, the reverse direction starts there, and each stacked
       layer reads only the valid steps of the layer below. Its output rows
       t >= lengths[b] are zero, its h_n column is the state after its last
       valid step (step 0 for the reverse direction), and the dropout mask
       entries at its padded steps are ignored. The padding in x is never read.

    Returns (output, h_n, cache):
      output: [T, B, D*H] ([B, T, D*H] if batch_first, [T, D*H] unbatched);
         the forward direction in columns [0:H], the reverse one in [H:2H].
      h_n: [L*D, B, H] ([L*D, H] unbatched), ordered layer 0 fwd, layer 0 rev,
         layer 1 fwd, ...; the reverse entry is its state after reading t = 0.
      cache: what rnn_backward needs.
    Computation happens in the dtype of weight_ih_l0; x, h0, the other
    parameters and the masks are converted to it.
    """
    _check_nonlinearity(nonlinearity)
    if num_layers < 1:
        raise ValueError("num_layers must be at least 1")
    num_dirs = 2 if bidirectional else 1
    dtype = _param_dtype(params, "weight_ih_l0")

    # Parameters, checked against the expected shapes.
    input_size = np.shape(params["weight_ih_l0"])[1]
    hidden = np.shape(params["weight_hh_l0"])[0]
    shapes = param_shapes(input_size, hidden, num_layers, bidirectional, bias)
    p: dict[str, Array] = {}
    for name, shape in shapes.items():
        if name not in params:
            raise KeyError(f"missing parameter {name}")
        p[name] = np.asarray(params[name], dtype=dtype)
        if p[name].shape != shape:
            raise ValueError(f"parameter {name} has shape {p[name].shape}, expected {shape}")

    # Bring x to the canonical layout [T, B, I] (time-major, batched).
    x = np.asarray(x, dtype=dtype)
    if x.ndim not in (2, 3):
        raise ValueError(f"x must have 2 (unbatched) or 3 dimensions, got shape {x.shape}")
    unbatched = x.ndim == 2
    if unbatched:
        x = x[:, None, :]
    elif batch_first:
        x = x.transpose(1, 0, 2)
    num_steps, batch = x.shape[0], x.shape[1]
    if x.shape[2] != input_size:
        raise ValueError(f"x has input size {x.shape[2]}, weight_ih_l0 expects {input_size}")

    # Initial states as [L*D, B, H].
    if h0 is None:
        h0 = np.zeros((num_layers * num_dirs, batch, hidden), dtype=dtype)
    else:
        h0 = np.asarray(h0, dtype=dtype)
        expected = (num_layers * num_dirs, hidden) if unbatched else (num_layers * num_dirs, batch, hidden)
        if h0.shape != expected:
            raise ValueError(f"h0 has shape {h0.shape}, expected {expected}")
        if unbatched:
            h0 = h0[:, None, :]

    masks: Optional[Array] = None
    if dropout_masks is not None and num_layers > 1:
        masks = np.asarray(dropout_masks, dtype=dtype)
        expected_masks = (num_layers - 1, num_steps, batch, num_dirs * hidden)
        if masks.shape != expected_masks:
            raise ValueError(f"dropout_masks has shape {masks.shape}, expected {expected_masks}")

    if lengths is not None:
        checked_lengths = _check_lengths(lengths, num_steps, batch, unbatched)
        output, h_n, item_caches = _forward_by_item(
            x, h0, p, masks, checked_lengths, num_layers=num_layers, nonlinearity=nonlinearity,
            bias=bias, bidirectional=bidirectional)
        cache: Cache = {
            "num_layers": num_layers, "num_dirs": num_dirs,
            "hidden": hidden, "dtype": dtype,
            "unbatched": unbatched, "batch_first": batch_first,
            "masks": masks, "lengths": checked_lengths, "item_caches": item_caches,
            "input_shape": x.shape, "param_shapes": shapes,
            "output_shape": output.shape, "h_n_shape": h_n.shape,
            "names": list(shapes),
        }
        output, h_n = _to_caller_layout(output, h_n, unbatched, batch_first)
        return output, h_n, cache

    # The stacking loop: each layer reads the (dropped-out) output of the one below.
    layer_input = x
    layer_caches: list[list[Cache]] = []
    h_n = np.zeros_like(h0)
    for layer in range(num_layers):
        if layer > 0 and masks is not None:
            layer_input = layer_input * masks[layer - 1]   # dropout between layers only
        outputs: list[Array] = []
        caches: list[Cache] = []
        for d, sfx in enumerate(_direction_suffixes(bidirectional)):
            hs, h_last, layer_cache = layer_forward(
                layer_input, h0[layer * num_dirs + d],
                p[f"weight_ih_l{layer}{sfx}"], p[f"weight_hh_l{layer}{sfx}"],
                p.get(f"bias_ih_l{layer}{sfx}"), p.get(f"bias_hh_l{layer}{sfx}"),
                nonlinearity, reverse=(d == 1))
            h_n[layer * num_dirs + d] = h_last
            outputs.append(hs)
            caches.append(layer_cache)
        layer_caches.append(caches)
        layer_input = np.concatenate(outputs, axis=2)      # [T, B, D*H]

    output = layer_input
    cache = {
        "num_layers": num_layers, "num_dirs": num_dirs,
        "hidden": hidden, "dtype": dtype,
        "unbatched": unbatched, "batch_first": batch_first,
        "masks": masks, "lengths": None, "layer_caches": layer_caches,
        "output_shape": output.shape, "h_n_shape": h_n.shape,
        "names": list(shapes),
    }

    output, h_n = _to_caller_layout(output, h_n, unbatched, batch_first)
    return output, h_n, cache


def rnn_backward(cache: Cache, grad_output: Optional[ArrayLike] = None, grad_h_n: Optional[ArrayLike] = None
                 ) -> tuple[Array, Array, Grads]:
    """Backward pass of rnn_forward (backpropagation through time).

    cache: the third value returned by rnn_forward.
    grad_output: gradient w.r.t. output, same shape and layout as output, or None.
    grad_h_n: gradient w.r.t. h_n, same shape as h_n, or None.
    None counts as zeros, but at least one must be given (else ValueError).
    With lengths, the entries of grad_output at padded steps are ignored
    (those outputs are constant zeros).

    Returns (grad_x, grad_h0, grads):
      grad_x: x's shape and layout; zero at the padded steps of a
         variable-length batch (the padding is never read).
      grad_h0: h0's shape ([L*D, B, H] or [L*D, H]), also when h0 was None.
      grads: dict name -> gradient, one entry per parameter in param_names order.
    """
    if grad_output is None and grad_h_n is None:
        raise ValueError("rnn_backward needs grad_output or grad_h_n (or both)")
    dtype = cache["dtype"]
    num_layers, num_dirs, hidden = cache["num_layers"], cache["num_dirs"], cache["hidden"]
    unbatched, batch_first = cache["unbatched"], cache["batch_first"]

    # Bring the incoming gradients to the canonical layouts [T, B, D*H] and [L*D, B, H].
    grad_out: Array
    grad_hn: Array
    if grad_output is None:
        grad_out = np.zeros(cache["output_shape"], dtype=dtype)
    else:
        grad_out = np.asarray(grad_output, dtype=dtype)
        if unbatched:
            grad_out = grad_out[:, None, :]
        elif batch_first:
            grad_out = grad_out.transpose(1, 0, 2)
        if grad_out.shape != cache["output_shape"]:
            raise ValueError("grad_output must have the shape of output")
    if grad_h_n is None:
        grad_hn = np.zeros(cache["h_n_shape"], dtype=dtype)
    else:
        grad_hn = np.asarray(grad_h_n, dtype=dtype)
        if unbatched:
            grad_hn = grad_hn[:, None, :]
        if grad_hn.shape != cache["h_n_shape"]:
            raise ValueError("grad_h_n must have the shape of h_n")

    if cache["lengths"] is not None:
        grad_x, grad_h0, grads = _backward_by_item(cache, grad_out, grad_hn)
        grad_x, grad_h0 = _to_caller_layout(grad_x, grad_h0, unbatched, batch_first)
        return grad_x, grad_h0, grads

    grads = {}
    grad_h0 = np.zeros(cache["h_n_shape"], dtype=dtype)
    suffixes = ("", "_reverse")[:num_dirs]
    # Walk the stack from the top: the gradient w.r.t. a layer's input is the
    # gradient w.r.t. the output of the layer below (through its dropout mask).
    grad_layer_out: Array = grad_out
    for layer in reversed(range(num_layers)):
        grad_layer_in: Optional[Array] = None
        for d in range(num_dirs):
            idx = layer * num_dirs + d
            g_hs = grad_layer_out[:, :, d * hidden:(d + 1) * hidden]
            g_x, g_h0, g = layer_backward(cache["layer_caches"][layer][d], g_hs, grad_hn[idx])
            grad_h0[idx] = g_h0
            for kind, value in g.items():
                grads[f"{kind}_l{layer}{suffixes[d]}"] = value
            # Both directions read the same input, so their gradients add up.
            grad_layer_in = g_x if grad_layer_in is None else grad_layer_in + g_x
        assert grad_layer_in is not None  # every layer has a direction
        if layer > 0 and cache["masks"] is not None:
            grad_layer_in = grad_layer_in * cache["masks"][layer - 1]
        grad_layer_out = grad_layer_in
    grad_x = grad_layer_out

    grads = {name: grads[name] for name in cache["names"]}
    grad_x, grad_h0 = _to_caller_layout(grad_x, grad_h0, unbatched, batch_first)
    return grad_x, grad_h0, grads


def _to_caller_layout(seq: Array, states: Array, unbatched: bool, batch_first: bool) -> tuple[Array, Array]:
    """From the canonical layouts [T, B, .] and [L*D, B, H] back to the caller's."""
    if unbatched:
        return seq[:, 0, :], states[:, 0, :]
    if batch_first:
        seq = seq.transpose(1, 0, 2)
    return seq, states


# ---------------------------------------------------------------------------
# Variable-length batches
# ---------------------------------------------------------------------------

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


def _forward_by_item(x: Array, h0: Array, p: Params, masks: Optional[Array], lengths: npt.NDArray[np.int64], *,
                     num_layers: int, nonlinearity: str, bias: bool, bidirectional: bool
                     ) -> tuple[Array, Array, list[Cache]]:
    """Run each batch item alone on its valid steps, then pad with zeros and stack.

    x: [T, B, I]; h0: [L*D, B, H]; masks: [L-1, T, B, D*H] or None; lengths: [B].
    Item b is the batch of one x[:n, b:b+1] with n = lengths[b], its own h0
    column and its own slice of the masks; the full-length rnn_forward does
    the rest. Returns (output [T, B, D*H], h_n [L*D, B, H], one cache per item).
    """
    num_steps, batch = x.shape[0], x.shape[1]
    num_dirs, hidden = 2 if bidirectional else 1, h0.shape[2]
    output = np.zeros((num_steps, batch, num_dirs * hidden), dtype=x.dtype)   # padded rows stay 0
    h_n = np.zeros_like(h0)
    item_caches: list[Cache] = []
    for b, n in enumerate(lengths):
        out_b, h_n_b, cache_b = rnn_forward(
            x[:n, b:b + 1], p, num_layers=num_layers, nonlinearity=nonlinearity, bias=bias,
            bidirectional=bidirectional, h0=h0[:, b:b + 1],
            dropout_masks=None if masks is None else masks[:, :n, b:b + 1])
        output[:n, b] = out_b[:, 0]
        h_n[:, b] = h_n_b[:, 0]
        item_caches.append(cache_b)
    return output, h_n, item_caches


def _backward_by_item(cache: Cache, grad_out: Array, grad_hn: Array) -> tuple[Array, Array, Grads]:
    """Backward of _forward_by_item, in the canonical layouts.

    grad_out: [T, B, D*H]; grad_hn: [L*D, B, H]. Each item's backward gets its
    own slices; the parameters are shared by all items, so their gradients
    add up. grad_x stays zero at the padded steps.
    """
    dtype = cache["dtype"]
    grad_x = np.zeros(cache["input_shape"], dtype=dtype)
    grad_h0 = np.zeros(cache["h_n_shape"], dtype=dtype)
    grads = {name: np.zeros(shape, dtype=dtype) for name, shape in cache["param_shapes"].items()}
    for b, (n, cache_b) in enumerate(zip(cache["lengths"], cache["item_caches"])):
        # Outputs at padded steps are constant zeros: their gradient is dropped.
        g_x, g_h0, g = rnn_backward(cache_b, grad_out[:n, b:b + 1], grad_hn[:, b:b + 1])
        grad_x[:n, b] = g_x[:, 0]
        grad_h0[:, b] = g_h0[:, 0]
        for name in grads:
            grads[name] += g[name]
    return grad_x, grad_h0, grads


# ---------------------------------------------------------------------------
# Single step (RNNCell)
# ---------------------------------------------------------------------------

def cell_forward(x: ArrayLike, h: Optional[ArrayLike], params: Params, nonlinearity: str = "tanh"
                 ) -> tuple[Array, Cache]:
    """One step of an Elman RNN cell: h_new = act(x W_ih^T + b_ih + h W_hh^T + b_hh).

    x: [B, I], or unbatched [I].
    h: [B, H] ([H] unbatched), or None for zeros.
    params: weight_ih [H, I], weight_hh [H, H], and optionally bias_ih [H],
       bias_hh [H] (both present or both absent; absent means no bias).
    nonlinearity: "tanh" or "relu".
    Returns (h_new, cache); h_new: [B, H] ([H] unbatched).
    Computation happens in the dtype of weight_ih.
    """
    _check_nonlinearity(nonlinearity)
    dtype = _param_dtype(params, "weight_ih")
    weight_ih = np.asarray(params["weight_ih"], dtype=dtype)
    weight_hh = np.asarray(params["weight_hh"], dtype=dtype)
    if ("bias_ih" in params) != ("bias_hh" in params):
        raise ValueError("give both bias_ih and bias_hh, or neither")
    has_bias = "bias_ih" in params
    hidden = weight_hh.shape[0]

    x = np.asarray(x, dtype=dtype)
    if x.ndim not in (1, 2):
        raise ValueError(f"x must have 1 (unbatched) or 2 dimensions, got shape {x.shape}")
    unbatched = x.ndim == 1
    xb = x[None, :] if unbatched else x          # work on [B, I] throughout
    if h is None:
        hb = np.zeros((xb.shape[0], hidden), dtype=dtype)
    else:
        h_arr = np.asarray(h, dtype=dtype)
        hb = h_arr[None, :] if h_arr.ndim == 1 else h_arr
        if hb.shape != (xb.shape[0], hidden) or h_arr.ndim != x.ndim:
            raise ValueError(f"h has shape {h_arr.shape}, which does not match x {x.shape} and hidden size {hidden}")

    a = xb @ weight_ih.T + hb @ weight_hh.T                  # a = x W_ih^T + h W_hh^T
    if has_bias:
        a = a + np.asarray(params["bias_ih"], dtype=dtype) + np.asarray(params["bias_hh"], dtype=dtype)
    h_new = _activate(a, nonlinearity)                      # h' = act(a)

    cache: Cache = {
        "x": xb, "h": hb, "h_new": h_new,
        "weight_ih": weight_ih, "weight_hh": weight_hh,
        "has_bias": has_bias, "nonlinearity": nonlinearity,
        "unbatched": unbatched,
    }
    return (h_new[0] if unbatched else h_new), cache


def cell_backward(cache: Cache, grad_h_new: ArrayLike) -> tuple[Array, Array, Grads]:
    """Backward pass of cell_forward.

    cache: from cell_forward.
    grad_h_new: gradient w.r.t. h_new, h_new's shape ([B, H] or [H]).
    Returns (grad_x, grad_h, grads): grad_x has x's shape, grad_h has h's shape
    (the shape h would have had when it was None), and grads maps weight_ih,
    weight_hh (and bias_ih, bias_hh if the cell had biases) to gradients of
    the parameters' shapes.
    """
    dtype = cache["h_new"].dtype
    g = np.asarray(grad_h_new, dtype=dtype)
    if cache["unbatched"]:
        g = g[None, :]
    if g.shape != cache["h_new"].shape:
        raise ValueError("grad_h_new must have the shape of h_new")

    da = _through_activation(g, cache["h_new"], cache["nonlinearity"])  # through act
    grads: Grads = {
        "weight_ih": da.T @ cache["x"],
        "weight_hh": da.T @ cache["h"],
    }
    if cache["has_bias"]:
        grads["bias_ih"] = da.sum(axis=0)      # biases are shared over the batch
        grads["bias_hh"] = da.sum(axis=0)
    grad_x = da @ cache["weight_ih"]
    grad_h = da @ cache["weight_hh"]
    if cache["unbatched"]:
        return grad_x[0], grad_h[0], grads
    return grad_x, grad_h, grads


# ===========================================================================
# Gated recurrences: LSTM and GRU
# ===========================================================================
#
# Both follow torch.nn.LSTM / torch.nn.GRU (and LSTMCell / GRUCell) exactly:
# the gates are row blocks of weight_ih / weight_hh (and of the biases), in
# PyTorch's order: i, f, g, o for the LSTM and r, z, n for the GRU.

# ---------------------------------------------------------------------------
# Parameter layout
# ---------------------------------------------------------------------------

def _check_proj_size(proj_size: int, hidden_size: Optional[int] = None) -> None:
    """proj_size must be 0 (no projection) or a positive integer below hidden_size (as in PyTorch)."""
    if isinstance(proj_size, bool) or not isinstance(proj_size, (int, np.integer)) or proj_size < 0:
        raise ValueError(f"proj_size should be a positive integer or zero to disable projections, got {proj_size!r}")
    if hidden_size is not None and proj_size > 0 and proj_size >= hidden_size:
        raise ValueError(f"proj_size has to be smaller than hidden_size, got proj_size={proj_size}, "
                         f"hidden_size={hidden_size}")


def lstm_param_names(num_layers: int = 1, bidirectional: bool = False, bias: bool = True,
                     proj_size: int = 0) -> list[str]:
    """Names of the parameters of a (stacked, maybe bidirectional) LSTM.

    The order of param_names, plus weight_hr (the projection) as the last
    entry of each direction when proj_size > 0, as in torch.nn.LSTM:
    ``weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0, weight_hr_l0,
    weight_ih_l0_reverse, ..., weight_hr_l0_reverse, weight_ih_l1, ...``.
    """
    _check_proj_size(proj_size)
    kinds = ["weight_ih", "weight_hh"]
    if bias:
        kinds += ["bias_ih", "bias_hh"]
    if proj_size > 0:
        kinds.append("weight_hr")
    names: list[str] = []
    for layer in range(num_layers):
        for sfx in _direction_suffixes(bidirectional):
            for kind in kinds:
                names.append(f"{kind}_l{layer}{sfx}")
    return names


def lstm_param_shapes(input_size: int, hidden_size: int, num_layers: int = 1, bidirectional: bool = False,
                      bias: bool = True, proj_size: int = 0) -> dict[str, tuple[int, ...]]:
    """Shape of every LSTM parameter, keyed by name (in ``lstm_param_names`` order).

    With P = proj_size if proj_size > 0 else H (the size of h and of each
    direction's output):
    weight_ih_l0: (4H, I); weight_ih_l{k>0}: (4H, D*P); weight_hh_l{k}: (4H, P);
    bias_ih_l{k}, bias_hh_l{k}: (4H,); weight_hr_l{k} (proj_size > 0 only): (P, H).
    The 4H rows are the blocks of the gates i, f, g, o, in this order.
    """
    _check_proj_size(proj_size, hidden_size)
    num_dirs = 2 if bidirectional else 1
    out_size = proj_size if proj_size > 0 else hidden_size
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in range(num_layers):
        layer_in = input_size if layer == 0 else num_dirs * out_size
        for sfx in _direction_suffixes(bidirectional):
            shapes[f"weight_ih_l{layer}{sfx}"] = (4 * hidden_size, layer_in)
            shapes[f"weight_hh_l{layer}{sfx}"] = (4 * hidden_size, out_size)
            if bias:
                shapes[f"bias_ih_l{layer}{sfx}"] = (4 * hidden_size,)
                shapes[f"bias_hh_l{layer}{sfx}"] = (4 * hidden_size,)
            if proj_size > 0:
                shapes[f"weight_hr_l{layer}{sfx}"] = (out_size, hidden_size)
    return shapes


def gru_param_names(num_layers: int = 1, bidirectional: bool = False, bias: bool = True) -> list[str]:
    """Names of the parameters of a (stacked, maybe bidirectional) GRU: those of param_names."""
    return param_names(num_layers, bidirectional, bias)


def gru_param_shapes(input_size: int, hidden_size: int, num_layers: int = 1, bidirectional: bool = False,
                     bias: bool = True) -> dict[str, tuple[int, ...]]:
    """Shape of every GRU parameter, keyed by name (in ``gru_param_names`` order).

    Those of param_shapes with 3H rows: weight_ih_l0: (3H, I);
    weight_ih_l{k>0}: (3H, D*H); weight_hh_l{k}: (3H, H); bias_*: (3H,).
    The 3H rows are the blocks of the gates r, z, n, in this order.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for name, shape in param_shapes(input_size, hidden_size, num_layers, bidirectional, bias).items():
        shapes[name] = (3 * hidden_size,) + shape[1:]
    return shapes


# ---------------------------------------------------------------------------
# Gate nonlinearities
# ---------------------------------------------------------------------------

def _sigmoid(a: Array) -> Array:
    """sigmoid(a) = 1 / (1 + exp(-a)), written as (1 + tanh(a/2)) / 2, which never overflows."""
    s: Array = 0.5 * (1 + np.tanh(0.5 * a))
    return s


# ---------------------------------------------------------------------------
# One LSTM step and its backward
# ---------------------------------------------------------------------------

def _lstm_step(x: Array, h: Array, c: Array, weight_ih: Array, weight_hh: Array, bias_ih: Optional[Array] = None,
               bias_hh: Optional[Array] = None, weight_hr: Optional[Array] = None) -> tuple[Array, Array, Cache]:
    """One LSTM step on a batch.

    x: [B, In]; h: [B, P]; c: [B, H]; weight_ih: [4H, In]; weight_hh: [4H, P];
    bias_ih, bias_hh: [4H] or None; weight_hr: [P, H] or None (then P = H).
    Returns (h_new [B, P], c_new [B, H], step) where step keeps what the
    backward pass needs.
    """
    hidden = c.shape[1]
    a = x @ weight_ih.T + h @ weight_hh.T              # a = x W_ih^T + h W_hh^T       [B, 4H]
    if bias_ih is not None:
        a = a + bias_ih + bias_hh                      #     + b_ih + b_hh
    i = _sigmoid(a[:, 0 * hidden:1 * hidden])          # input gate      i = sigmoid(a_i)
    f = _sigmoid(a[:, 1 * hidden:2 * hidden])          # forget gate     f = sigmoid(a_f)
    g = np.tanh(a[:, 2 * hidden:3 * hidden])           # cell candidate  g = tanh(a_g)
    o = _sigmoid(a[:, 3 * hidden:4 * hidden])          # output gate     o = sigmoid(a_o)
    c_new = f * c + i * g                              # c' = f * c + i * g
    tanh_c = np.tanh(c_new)
    m = o * tanh_c                                     # m = o * tanh(c')
    h_new = m if weight_hr is None else m @ weight_hr.T   # h' = m, or h' = m W_hr^T with a projection
    step: Cache = {"x": x, "h": h, "c": c, "i": i, "f": f, "g": g, "o": o, "tanh_c": tanh_c, "m": m}
    return h_new, c_new, step


def _lstm_gates_backward(step: Cache, dh_new: Array, dc_new: Array, weight_hr: Optional[Array] = None
                         ) -> tuple[Array, Array, Optional[Array]]:
    """From the gradients w.r.t. h' and c' of one _lstm_step back to its pre-activations.

    dh_new: [B, P] gradient w.r.t. h'; dc_new: [B, H] gradient w.r.t. c' from
    outside the step (the next step, or c_n).
    Returns (da [B, 4H], dc [B, H], grad_weight_hr [P, H] or None): da is the
    gradient w.r.t. the pre-activations a (blocks i, f, g, o), dc the one
    w.r.t. the previous cell state c.
    """
    i, f, g, o, tanh_c = step["i"], step["f"], step["g"], step["o"], step["tanh_c"]
    grad_w_hr: Optional[Array] = None
    if weight_hr is None:
        dm = dh_new                                        # h' = m
    else:
        grad_w_hr = dh_new.T @ step["m"]                   # h' = m W_hr^T
        dm = dh_new @ weight_hr
    do = dm * tanh_c                                       # m = o * tanh(c')
    dc_total = dc_new + dm * o * (1 - tanh_c * tanh_c)     # c' feeds the next step and, through tanh, m
    di = dc_total * g                                      # c' = f * c + i * g
    df = dc_total * step["c"]
    dg = dc_total * i
    dc = dc_total * f                                      # on to c
    da = np.concatenate([
        di * i * (1 - i),                                  # sigmoid' = s (1 - s)
        df * f * (1 - f),
        dg * (1 - g * g),                                  # tanh' = 1 - tanh^2
        do * o * (1 - o),
    ], axis=1)
    return da, dc, grad_w_hr


# ---------------------------------------------------------------------------
# One GRU step and its backward
# ---------------------------------------------------------------------------

def _gru_step(x: Array, h: Array, weight_ih: Array, weight_hh: Array, bias_ih: Optional[Array] = None,
              bias_hh: Optional[Array] = None) -> tuple[Array, Cache]:
    """One GRU step on a batch.

    x: [B, In]; h: [B, H]; weight_ih: [3H, In]; weight_hh: [3H, H];
    bias_ih, bias_hh: [3H] or None.
    Returns (h_new [B, H], step).
    """
    hidden = h.shape[1]
    gi = x @ weight_ih.T                               # input part    x W_ih^T + b_ih   [B, 3H]
    gh = h @ weight_hh.T                               # hidden part   h W_hh^T + b_hh   [B, 3H]
    if bias_ih is not None:
        gi = gi + bias_ih
        gh = gh + bias_hh
    r_, z_, n_ = slice(0, hidden), slice(hidden, 2 * hidden), slice(2 * hidden, 3 * hidden)
    r = _sigmoid(gi[:, r_] + gh[:, r_])                # reset gate   r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z = _sigmoid(gi[:, z_] + gh[:, z_])                # update gate  z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = np.tanh(gi[:, n_] + r * gh[:, n_])             # candidate    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h_new = (1 - z) * n + z * h                        # h' = (1 - z) * n + z * h
    step: Cache = {"x": x, "h": h, "r": r, "z": z, "n": n, "gh_n": gh[:, n_]}
    return h_new, step


def _gru_gates_backward(step: Cache, dh_new: Array) -> tuple[Array, Array, Array]:
    """From the gradient w.r.t. h' of one _gru_step back to its pre-activations.

    Returns (dgi [B, 3H], dgh [B, 3H], dh [B, H]): the gradients w.r.t. the
    input part gi = x W_ih^T + b_ih, the hidden part gh = h W_hh^T + b_hh,
    and w.r.t. h along the direct path z * h only (the caller adds dgh W_hh).
    """
    h, r, z, n = step["h"], step["r"], step["z"], step["n"]
    dn = dh_new * (1 - z)                              # h' = (1 - z) * n + z * h
    dz = dh_new * (h - n)
    dh = dh_new * z
    da_n = dn * (1 - n * n)                            # n = tanh(a_n), tanh' = 1 - tanh^2
    dr = da_n * step["gh_n"]                           # a_n = gi_n + r * gh_n
    da_r = dr * r * (1 - r)                            # sigmoid' = s (1 - s)
    da_z = dz * z * (1 - z)
    dgi = np.concatenate([da_r, da_z, da_n], axis=1)
    dgh = np.concatenate([da_r, da_z, da_n * r], axis=1)   # r scales the whole hidden part of n, bias included
    return dgi, dgh, dh


# ---------------------------------------------------------------------------
# One layer, one direction, whole sequence
# ---------------------------------------------------------------------------

def lstm_layer_forward(x: Array, h0: Array, c0: Array, weight_ih: Array, weight_hh: Array,
                       bias_ih: Optional[Array] = None, bias_hh: Optional[Array] = None,
                       weight_hr: Optional[Array] = None, reverse: bool = False
                       ) -> tuple[Array, tuple[Array, Array], Cache]:
    """Run one direction of one LSTM layer over a whole sequence.

    x: [T, B, In] layer input (time-major, batched).
    h0: [B, P] and c0: [B, H] initial states (P = H without projection).
    weight_ih: [4H, In]; weight_hh: [4H, P]; bias_ih, bias_hh: [4H] or None;
    weight_hr: [P, H] or None.
    reverse: visit t = T-1 .. 0 instead of t = 0 .. T-1.
    Returns (hs, (h_last, c_last), cache): hs [T, B, P] where hs[t] is h
    after step t; h_last [B, P], c_last [B, H] are the states after the last
    step visited.
    """
    num_steps, batch = x.shape[0], x.shape[1]
    hs = np.zeros((num_steps, batch, h0.shape[1]), dtype=h0.dtype)
    steps: list[Cache] = [{} for _ in range(num_steps)]   # by time index, filled in visiting order
    h, c = h0, c0
    for t in _time_order(num_steps, reverse):
        h, c, steps[t] = _lstm_step(x[t], h, c, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr)
        hs[t] = h
    cache: Cache = {
        "x": x, "h0": h0, "c0": c0, "steps": steps,
        "weight_ih": weight_ih, "weight_hh": weight_hh, "weight_hr": weight_hr,
        "has_bias": bias_ih is not None, "reverse": reverse,
    }
    return hs, (h, c), cache


def lstm_layer_backward(cache: Cache, grad_hs: Array, grad_h_last: Array, grad_c_last: Array
                        ) -> tuple[Array, tuple[Array, Array], Grads]:
    """BPTT through one direction of one LSTM layer.

    cache: from lstm_layer_forward.
    grad_hs: [T, B, P] gradient w.r.t. hs; grad_h_last: [B, P] and
    grad_c_last: [B, H] gradients w.r.t. the final states.
    Returns (grad_x [T, B, In], (grad_h0 [B, P], grad_c0 [B, H]), grads) where
    grads has keys weight_ih, weight_hh, then bias_ih, bias_hh if the layer
    had biases, then weight_hr if it had a projection.
    """
    x = cache["x"]
    weight_ih, weight_hh, weight_hr = cache["weight_ih"], cache["weight_hh"], cache["weight_hr"]
    steps = cache["steps"]
    order = _time_order(x.shape[0], cache["reverse"])

    grad_x = np.zeros_like(x)
    grad_w_ih = np.zeros_like(weight_ih)
    grad_w_hh = np.zeros_like(weight_hh)
    grad_b = np.zeros(weight_ih.shape[0], dtype=x.dtype)
    grad_w_hr = None if weight_hr is None else np.zeros_like(weight_hr)

    # As in layer_backward: visit the steps in the opposite order of the forward
    # pass; dh_next and dc_next carry the gradients flowing into h_t and c_t
    # from the step visited after t (for the last step, those of the final states).
    dh_next, dc_next = grad_h_last, grad_c_last
    for t in reversed(order):
        step = steps[t]
        dh = grad_hs[t] + dh_next                                  # h_t feeds the output and the next step
        da, dc_next, g_hr = _lstm_gates_backward(step, dh, dc_next, weight_hr)
        grad_w_ih += da.T @ step["x"]                              # a_t = x_t W_ih^T + ...
        grad_w_hh += da.T @ step["h"]                              # ... + h_{t-1} W_hh^T
        grad_b += da.sum(axis=0)                                   # biases are shared over the batch
        if g_hr is not None and grad_w_hr is not None:
            grad_w_hr += g_hr
        grad_x[t] = da @ weight_ih
        dh_next = da @ weight_hh                                   # on to h_{t-1}

    grads: Grads = {"weight_ih": grad_w_ih, "weight_hh": grad_w_hh}
    if cache["has_bias"]:
        # b_ih and b_hh enter a_t the same way, so they get the same gradient.
        grads["bias_ih"] = grad_b
        grads["bias_hh"] = grad_b.copy()
    if grad_w_hr is not None:
        grads["weight_hr"] = grad_w_hr
    return grad_x, (dh_next, dc_next), grads


def gru_layer_forward(x: Array, h0: Array, weight_ih: Array, weight_hh: Array, bias_ih: Optional[Array] = None,
                      bias_hh: Optional[Array] = None, reverse: bool = False) -> tuple[Array, Array, Cache]:
    """Run one direction of one GRU layer over a whole sequence.

    x: [T, B, In]; h0: [B, H]; weight_ih: [3H, In]; weight_hh: [3H, H];
    bias_ih, bias_hh: [3H] or None.
    Returns (hs [T, B, H], h_last [B, H], cache), as layer_forward.
    """
    num_steps, batch = x.shape[0], x.shape[1]
    hs = np.zeros((num_steps, batch, h0.shape[1]), dtype=h0.dtype)
    steps: list[Cache] = [{} for _ in range(num_steps)]   # by time index, filled in visiting order
    h = h0
    for t in _time_order(num_steps, reverse):
        h, steps[t] = _gru_step(x[t], h, weight_ih, weight_hh, bias_ih, bias_hh)
        hs[t] = h
    cache: Cache = {
        "x": x, "h0": h0, "steps": steps,
        "weight_ih": weight_ih, "weight_hh": weight_hh,
        "has_bias": bias_ih is not None, "reverse": reverse,
    }
    return hs, h, cache


def gru_layer_backward(cache: Cache, grad_hs: Array, grad_h_last: Array) -> tuple[Array, Array, Grads]:
    """BPTT through one direction of one GRU layer.

    cache: from gru_layer_forward; grad_hs: [T, B, H]; grad_h_last: [B, H].
    Returns (grad_x [T, B, In], grad_h0 [B, H], grads) with keys weight_ih,
    weight_hh and, if the layer had biases, bias_ih, bias_hh (which differ
    here: only b_hn sits inside r * (.)).
    """
    x = cache["x"]
    weight_ih, weight_hh = cache["weight_ih"], cache["weight_hh"]
    steps = cache["steps"]
    order = _time_order(x.shape[0], cache["reverse"])

    grad_x = np.zeros_like(x)
    grad_w_ih = np.zeros_like(weight_ih)
    grad_w_hh = np.zeros_like(weight_hh)
    grad_b_ih = np.zeros(weight_ih.shape[0], dtype=x.dtype)
    grad_b_hh = np.zeros(weight_hh.shape[0], dtype=x.dtype)

    dh_next = grad_h_last
    for t in reversed(order):
        step = steps[t]
        dh = grad_hs[t] + dh_next                                  # h_t feeds the output and the next step
        dgi, dgh, dh_direct = _gru_gates_backward(step, dh)
        grad_w_ih += dgi.T @ step["x"]                             # gi = x_t W_ih^T + b_ih
        grad_b_ih += dgi.sum(axis=0)
        grad_w_hh += dgh.T @ step["h"]                             # gh = h_{t-1} W_hh^T + b_hh
        grad_b_hh += dgh.sum(axis=0)
        grad_x[t] = dgi @ weight_ih
        dh_next = dh_direct + dgh @ weight_hh                      # on to h_{t-1}: through z * h and through gh

    grads: Grads = {"weight_ih": grad_w_ih, "weight_hh": grad_w_hh}
    if cache["has_bias"]:
        grads["bias_ih"] = grad_b_ih
        grads["bias_hh"] = grad_b_hh
    return grad_x, dh_next, grads


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


# ---------------------------------------------------------------------------
# Single step (LSTMCell, GRUCell)
# ---------------------------------------------------------------------------

def _gated_cell_params(params: Params, num_gates: int
                       ) -> tuple[np.dtype[Any], Array, Array, Optional[Array], Optional[Array], int]:
    """dtype, weight_ih, weight_hh, bias_ih, bias_hh (None without bias) and H of a gated cell, checked."""
    dtype = _param_dtype(params, "weight_ih")
    weight_ih = np.asarray(params["weight_ih"], dtype=dtype)
    weight_hh = np.asarray(params["weight_hh"], dtype=dtype)
    if ("bias_ih" in params) != ("bias_hh" in params):
        raise ValueError("give both bias_ih and bias_hh, or neither")
    hidden = weight_hh.shape[1] if weight_hh.ndim == 2 else -1
    rows = num_gates * hidden
    if weight_hh.shape != (rows, hidden) or weight_ih.ndim != 2 or weight_ih.shape[0] != rows:
        raise ValueError(f"weight_ih {weight_ih.shape} and weight_hh {weight_hh.shape} must have shapes "
                         f"({num_gates}H, I) and ({num_gates}H, H)")
    bias_ih: Optional[Array] = None
    bias_hh: Optional[Array] = None
    if "bias_ih" in params:
        bias_ih = np.asarray(params["bias_ih"], dtype=dtype)
        bias_hh = np.asarray(params["bias_hh"], dtype=dtype)
        if bias_ih.shape != (rows,) or bias_hh.shape != (rows,):
            raise ValueError(f"bias_ih and bias_hh must have shape ({rows},)")
    return dtype, weight_ih, weight_hh, bias_ih, bias_hh, hidden


def _cell_input(x: ArrayLike, dtype: np.dtype[Any], input_size: int) -> tuple[Array, bool]:
    """x as [B, I], and whether it was unbatched."""
    xa = np.asarray(x, dtype=dtype)
    if xa.ndim not in (1, 2):
        raise ValueError(f"x must have 1 (unbatched) or 2 dimensions, got shape {xa.shape}")
    if xa.shape[-1] != input_size:
        raise ValueError(f"x has input size {xa.shape[-1]}, weight_ih expects {input_size}")
    return (xa[None, :] if xa.ndim == 1 else xa), xa.ndim == 1


def _cell_state(s: Optional[ArrayLike], name: str, xb: Array, unbatched: bool, hidden: int, dtype: np.dtype[Any]
                ) -> Array:
    """A cell state as [B, H]; None means zeros."""
    if s is None:
        return np.zeros((xb.shape[0], hidden), dtype=dtype)
    sa = np.asarray(s, dtype=dtype)
    expected = (hidden,) if unbatched else (xb.shape[0], hidden)
    if sa.shape != expected:
        raise ValueError(f"{name} has shape {sa.shape}, expected {expected}")
    return sa[None, :] if unbatched else sa


def _cell_grad(g: Optional[ArrayLike], shape: tuple[int, ...], unbatched: bool, dtype: np.dtype[Any], what: str,
               of: str) -> Array:
    if g is None:
        return np.zeros(shape, dtype=dtype)
    ga = np.asarray(g, dtype=dtype)
    if unbatched and ga.ndim == 1:
        ga = ga[None, :]
    if ga.shape != shape:
        raise ValueError(f"{what} must have the shape of {of}")
    return ga


def lstm_cell_forward(x: ArrayLike, hx: Optional[tuple[Optional[ArrayLike], Optional[ArrayLike]]], params: Params
                      ) -> tuple[tuple[Array, Array], Cache]:
    """One step of an LSTM cell (torch.nn.LSTMCell); equations as in lstm_forward, without projection.

    x: [B, I], or unbatched [I].
    hx: the pair (h, c), each [B, H] ([H] unbatched), or None for zeros.
    params: weight_ih [4H, I], weight_hh [4H, H], and optionally bias_ih [4H],
       bias_hh [4H] (both present or both absent; absent means no bias).
    Returns ((h_new, c_new), cache); h_new, c_new: [B, H] ([H] unbatched).
    Computation happens in the dtype of weight_ih.
    """
    dtype, weight_ih, weight_hh, bias_ih, bias_hh, hidden = _gated_cell_params(params, 4)
    xb, unbatched = _cell_input(x, dtype, weight_ih.shape[1])
    h: Optional[ArrayLike] = None
    c: Optional[ArrayLike] = None
    if hx is not None:
        if len(hx) != 2:
            raise ValueError("hx must be None or a pair (h, c)")
        h, c = hx
    hb = _cell_state(h, "h", xb, unbatched, hidden, dtype)
    cb = _cell_state(c, "c", xb, unbatched, hidden, dtype)

    h_new, c_new, step = _lstm_step(xb, hb, cb, weight_ih, weight_hh, bias_ih, bias_hh)

    cache: Cache = {
        "step": step, "weight_ih": weight_ih, "weight_hh": weight_hh,
        "has_bias": bias_ih is not None, "unbatched": unbatched, "dtype": dtype, "state_shape": h_new.shape,
    }
    if unbatched:
        return (h_new[0], c_new[0]), cache
    return (h_new, c_new), cache


def lstm_cell_backward(cache: Cache, grad_h_new: Optional[ArrayLike] = None, grad_c_new: Optional[ArrayLike] = None
                       ) -> tuple[Array, tuple[Array, Array], Grads]:
    """Backward pass of lstm_cell_forward.

    grad_h_new, grad_c_new: gradients w.r.t. h_new and c_new, of their shapes,
    or None (zeros); at least one must be given (else ValueError).
    Returns (grad_x, (grad_h, grad_c), grads): grad_x has x's shape, grad_h
    and grad_c have the states' shapes (also when hx was None); grads maps
    weight_ih, weight_hh (and bias_ih, bias_hh if the cell had biases) to
    gradients of the parameters' shapes.
    """
    if grad_h_new is None and grad_c_new is None:
        raise ValueError("lstm_cell_backward needs grad_h_new or grad_c_new (or both)")
    dtype, unbatched, shape = cache["dtype"], cache["unbatched"], cache["state_shape"]
    gh = _cell_grad(grad_h_new, shape, unbatched, dtype, "grad_h_new", "h_new")
    gc = _cell_grad(grad_c_new, shape, unbatched, dtype, "grad_c_new", "c_new")
    step = cache["step"]

    da, grad_c, _ = _lstm_gates_backward(step, gh, gc)
    grads: Grads = {
        "weight_ih": da.T @ step["x"],          # a = x W_ih^T + h W_hh^T + b_ih + b_hh
        "weight_hh": da.T @ step["h"],
    }
    if cache["has_bias"]:
        grads["bias_ih"] = da.sum(axis=0)      # biases are shared over the batch
        grads["bias_hh"] = da.sum(axis=0)
    grad_x = da @ cache["weight_ih"]
    grad_h = da @ cache["weight_hh"]
    if unbatched:
        return grad_x[0], (grad_h[0], grad_c[0]), grads
    return grad_x, (grad_h, grad_c), grads


def gru_cell_forward(x: ArrayLike, h: Optional[ArrayLike], params: Params) -> tuple[Array, Cache]:
    """One step of a GRU cell (torch.nn.GRUCell); equations as in gru_forward.

    x: [B, I], or unbatched [I]; h: [B, H] ([H] unbatched), or None for zeros.
    params: weight_ih [3H, I], weight_hh [3H, H], and optionally bias_ih [3H],
       bias_hh [3H] (both present or both absent).
    Returns (h_new, cache); h_new: [B, H] ([H] unbatched).
    """
    dtype, weight_ih, weight_hh, bias_ih, bias_hh, hidden = _gated_cell_params(params, 3)
    xb, unbatched = _cell_input(x, dtype, weight_ih.shape[1])
    hb = _cell_state(h, "h", xb, unbatched, hidden, dtype)

    h_new, step = _gru_step(xb, hb, weight_ih, weight_hh, bias_ih, bias_hh)

    cache: Cache = {
        "step": step, "weight_ih": weight_ih, "weight_hh": weight_hh,
        "has_bias": bias_ih is not None, "unbatched": unbatched, "dtype": dtype, "state_shape": h_new.shape,
    }
    return (h_new[0] if unbatched else h_new), cache


def gru_cell_backward(cache: Cache, grad_h_new: ArrayLike) -> tuple[Array, Array, Grads]:
    """Backward pass of gru_cell_forward.

    grad_h_new: gradient w.r.t. h_new, of its shape.
    Returns (grad_x, grad_h, grads) as cell_backward.
    """
    dtype, unbatched, shape = cache["dtype"], cache["unbatched"], cache["state_shape"]
    if grad_h_new is None:
        raise ValueError("gru_cell_backward needs grad_h_new")
    g = _cell_grad(grad_h_new, shape, unbatched, dtype, "grad_h_new", "h_new")
    step = cache["step"]

    dgi, dgh, grad_h = _gru_gates_backward(step, g)
    grads: Grads = {
        "weight_ih": dgi.T @ step["x"],         # gi = x W_ih^T + b_ih
        "weight_hh": dgh.T @ step["h"],         # gh = h W_hh^T + b_hh
    }
    if cache["has_bias"]:
        grads["bias_ih"] = dgi.sum(axis=0)
        grads["bias_hh"] = dgh.sum(axis=0)
    grad_x = dgi @ cache["weight_ih"]
    grad_h = grad_h + dgh @ cache["weight_hh"]
    if unbatched:
        return grad_x[0], grad_h[0], grads
    return grad_x, grad_h, grads
