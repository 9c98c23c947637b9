"""One step of LSTMCell and GRUCell, and its backward."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ._common import Array, ArrayLike, Cache, Grads, Params, _param_dtype
from ._gated_layer import _gru_gates_backward, _gru_step, _lstm_gates_backward, _lstm_step


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
