"""Tutorial example 4 with LSTM cells: two LSTMCells, 100 -> 20 -> 15, stepped by hand, with backpropagation
through the loop.

An LSTM cell's state is the pair (h, c): forward takes and returns both, and backward takes the gradients of both
and returns those of the input and of the previous pair. The loss is the sum of the second cell's last h. Backward
walks the steps in reverse, carrying (grad_h, grad_c) along each cell's state; cell 2's input gradient joins the
gradient flowing back along cell 1's h. A finite-difference check in float64 confirms one weight's gradient.

Run: python examples/two_lstm_cells_backward.py
"""

import numpy as np

import rnnfast


def build(dtype, seed=0):
    rng = np.random.default_rng(seed)
    cell1 = rnnfast.LSTMCell(100, 20, dtype=dtype, seed=1)
    cell2 = rnnfast.LSTMCell(20, 15, dtype=dtype, seed=2)
    x = rng.standard_normal((10, 3, 100)).astype(dtype)
    return cell1, cell2, x


def forward(cell1, cell2, x, keep_caches=False):
    s1 = s2 = None                                         # (h, c) pairs; None: zeros
    caches = []
    for x_t in x:
        if keep_caches:
            h1, c1, k1 = cell1.forward(x_t, s1, return_cache=True)
            h2, c2, k2 = cell2.forward(h1, s2, return_cache=True)
            caches.append((k1, k2))
        else:
            h1, c1 = cell1(x_t, s1)
            h2, c2 = cell2(h1, s2)
        s1, s2 = (h1, c1), (h2, c2)
    return s2[0], caches


def backward(cell1, cell2, h2, caches):
    grad_h2, grad_c2 = np.ones_like(h2), None              # d(sum(h2)) / d(h2) at the last step; c2 unused
    grad_h1 = grad_c1 = None                               # nothing reaches cell 1's last state but through cell 2
    grad_x = []
    for k1, k2 in reversed(caches):
        grad_in2, (grad_h2, grad_c2) = cell2.backward(k2, grad_h2, grad_c2)
        grad_h1 = grad_in2 if grad_h1 is None else grad_h1 + grad_in2
        grad_x_t, (grad_h1, grad_c1) = cell1.backward(k1, grad_h1, grad_c1)
        grad_x.append(grad_x_t)
    return np.stack(grad_x[::-1])


cell1, cell2, x = build("float32")
h2, caches = forward(cell1, cell2, x, keep_caches=True)
print("h2", h2.shape)                                             # (3, 15)
grad_x = backward(cell1, cell2, h2, caches)
print("grad_x", grad_x.shape)                                     # (10, 3, 100)
print("cell1 grads", {k: v.shape for k, v in cell1.grads.items()})
print("cell2 grads", {k: v.shape for k, v in cell2.grads.items()})

# Finite-difference check of d(loss)/d(cell1.weight_hh[25, 3]) in float64: row 20 + 5, the forget gate of unit 5.
cell1, cell2, x = build("float64")
h2, caches = forward(cell1, cell2, x, keep_caches=True)
backward(cell1, cell2, h2, caches)
analytic = cell1.grads["weight_hh"][25, 3]
w = cell1.named_parameters()["weight_hh"]  # a live view: editing it changes the cell
eps = 1e-6
w[25, 3] += eps
up = forward(cell1, cell2, x)[0].sum()
w[25, 3] -= 2 * eps
down = forward(cell1, cell2, x)[0].sum()
w[25, 3] += eps
numeric = (up - down) / (2 * eps)
print(f"gradient check: analytic {analytic:.8f}, numeric {numeric:.8f}, "
      f"relative error {abs(analytic - numeric) / max(abs(numeric), 1e-12):.1e}")
