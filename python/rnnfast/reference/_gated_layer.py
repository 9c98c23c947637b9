"""The LSTM and the GRU: parameter layout, one step and one layer of each, with their backward."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ._common import Array, Cache, Grads, _direction_suffixes, _layer_names, _time_order
from ._elman import param_names, param_shapes


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
    return _layer_names(kinds, num_layers, bidirectional)


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
