"""Tutorial example 4: two cells, 100 -> 20 -> 15, stepped by hand, with backpropagation through the loop.

The loss is the sum of the second cell's last state. Backward walks the steps in reverse: at each step the
gradient reaching cell 2's state goes into cell2.backward, whose input gradient joins the gradient flowing back
along cell 1's state. A finite-difference check in float64 confirms one weight's gradient.

Run: python examples/two_cells_backward.py
"""

import numpy as np

import rnnfast


def build(dtype: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    cell1 = rnnfast.RNNCell(100, 20, dtype=dtype, seed=1)
    cell2 = rnnfast.RNNCell(20, 15, dtype=dtype, seed=2)
    x = rng.standard_normal((10, 3, 100)).astype(dtype)
    return cell1, cell2, x


def forward(cell1, cell2, x, keep_caches=False):
    h1 = h2 = None
    caches = []
    for x_t in x:
        if keep_caches:
            h1, c1 = cell1.forward(x_t, h1, return_cache=True)
            h2, c2 = cell2.forward(h1, h2, return_cache=True)
            caches.append((c1, c2))
        else:
            h1 = cell1(x_t, h1)
            h2 = cell2(h1, h2)
    return h2, caches


def backward(cell1, cell2, h2, caches):
    grad_h2 = np.ones_like(h2)                             # d(sum(h2)) / d(h2) at the last step
    grad_h1 = np.zeros((h2.shape[0], cell1.hidden_size), h2.dtype)
    grad_x = []
    for c1, c2 in reversed(caches):
        grad_in2, grad_h2 = cell2.backward(c2, grad_h2)    # into cell 2's input (h1) and previous state
        grad_x_t, grad_h1 = cell1.backward(c1, grad_h1 + grad_in2)
        grad_x.append(grad_x_t)
    return np.stack(grad_x[::-1])


cell1, cell2, x = build("float32")
h2, caches = forward(cell1, cell2, x, keep_caches=True)
print("h2", h2.shape)                                             # (3, 15)
grad_x = backward(cell1, cell2, h2, caches)
print("grad_x", grad_x.shape)                                     # (10, 3, 100)
print("cell1 grads", {k: v.shape for k, v in cell1.grads.items()})
print("cell2 grads", {k: v.shape for k, v in cell2.grads.items()})

# Finite-difference check of d(loss)/d(cell1.weight_ih[0, 0]) in float64.
cell1, cell2, x = build("float64")
h2, caches = forward(cell1, cell2, x, keep_caches=True)
backward(cell1, cell2, h2, caches)
analytic = cell1.grads["weight_ih"][0, 0]
w = cell1.named_parameters()["weight_ih"]  # a live view: editing it changes the cell
eps = 1e-6
w[0, 0] += eps
up = forward(cell1, cell2, x)[0].sum()
w[0, 0] -= 2 * eps
down = forward(cell1, cell2, x)[0].sum()
w[0, 0] += eps
numeric = (up - down) / (2 * eps)
print(f"gradient check: analytic {analytic:.8f}, numeric {numeric:.8f}, "
      f"relative error {abs(analytic - numeric) / max(abs(numeric), 1e-12):.1e}")
