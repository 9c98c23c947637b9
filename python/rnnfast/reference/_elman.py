"""The Elman RNN: parameter layout, one layer, the stack (``rnn_forward`` / ``rnn_backward``), variable-length
batches and the cell (``cell_forward`` / ``cell_backward``)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import numpy.typing as npt

from ._common import (
    Array, ArrayLike, Cache, Grads, Params, _canonical_input, _check_lengths, _checked_params, _direction_suffixes,
    _layer_names, _param_dtype, _time_order)


_NONLINEARITIES = ("tanh", "relu")


# ---------------------------------------------------------------------------
# Parameter layout
# ---------------------------------------------------------------------------


def param_names(num_layers: int = 1, bidirectional: bool = False, bias: bool = True) -> list[str]:
    """Names of the parameters of a (stacked, maybe bidirectional) RNN.

    The order is layer by layer, and within a layer the forward direction
    before the reverse one; each direction lists weight_ih, weight_hh and then,
    if ``bias``, bias_ih and bias_hh. Example for one bidirectional layer:
    ``weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0, weight_ih_l0_reverse, ...``.
    """
    kinds = ("weight_ih", "weight_hh", "bias_ih", "bias_hh") if bias else ("weight_ih", "weight_hh")
    return _layer_names(kinds, num_layers, bidirectional)


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
    p = _checked_params(params, shapes, dtype)

    # Bring x to the canonical layout [T, B, I] (time-major, batched).
    x, unbatched = _canonical_input(x, dtype, batch_first, input_size)
    num_steps, batch = x.shape[0], x.shape[1]

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
