"""The README's quickstart: the tutorial's examples and one training step (tests/test_examples.py checks
that this file and the README stay the same)."""

import numpy as np
import rnnfast

rng = np.random.default_rng(0)

# One layer: feature 100 -> hidden 20, a batch of 3 sequences of length 10.
rnn = rnnfast.RNN(input_size=100, hidden_size=20, num_layers=1, seed=0)
x = rng.standard_normal((10, 3, 100)).astype(np.float32)
out, h_n = rnn(x)
print(out.shape, h_n.shape)          # (10, 3, 20) (1, 3, 20)

# Four stacked layers.
rnn4 = rnnfast.RNN(100, 20, num_layers=4, seed=0)
out, h_n = rnn4(x)
print(out.shape, h_n.shape)          # (10, 3, 20) (4, 3, 20)

# One cell stepped by hand over the sequence.
cell = rnnfast.RNNCell(100, 20, seed=0)
h = np.zeros((3, 20), np.float32)
for x_t in x:
    h = cell(x_t, h)
print(h.shape)                       # (3, 20)

# Two cells, 100 -> 20 -> 15, stepped by hand, with backward through the loop.
cell1, cell2 = rnnfast.RNNCell(100, 20, seed=1), rnnfast.RNNCell(20, 15, seed=2)
h1, h2, caches = None, None, []
for x_t in x:
    h1, c1 = cell1.forward(x_t, h1, return_cache=True)
    h2, c2 = cell2.forward(h1, h2, return_cache=True)
    caches.append((c1, c2))
print(h2.shape)                      # (3, 15)
grad_h2 = np.ones_like(h2)           # d(sum(h2))/d(h2) at the last step
grad_h1 = np.zeros((3, 20), np.float32)
for c1, c2 in reversed(caches):
    grad_in2, grad_h2 = cell2.backward(c2, grad_h2)
    grad_x_t, grad_h1 = cell1.backward(c1, grad_h1 + grad_in2)
print(cell1.grads["weight_ih"].shape, cell2.grads["weight_hh"].shape)   # (20, 100) (15, 15)

import numpy as np
import rnnfast

t = np.linspace(0, 8 * np.pi, 201, dtype=np.float32)
wave = np.sin(t)[:, None, None]                  # [T+1, B=1, 1]
inputs, targets = wave[:-1], wave[1:]            # predict the next value

rnn = rnnfast.RNN(input_size=1, hidden_size=16, seed=0)
head = np.random.default_rng(0).uniform(-0.25, 0.25, (16, 1)).astype(np.float32)   # linear read-out

def loss_and_step(lr=0.05):
    out, h_n, cache = rnn.forward(inputs, return_cache=True)      # out: [T, 1, 16]
    pred = out @ head                                             # [T, 1, 1]
    diff = pred - targets
    loss = float(np.mean(diff ** 2))
    grad_pred = 2 * diff / diff.size                              # d(MSE)/d(pred)
    grad_head = np.einsum("tbh,tbo->ho", out, grad_pred)
    rnn.zero_grad()
    rnn.backward(cache, grad_output=grad_pred @ head.T)           # BPTT
    for name, p in rnn.named_parameters().items():                # SGD, in place
        p -= lr * rnn.grads[name]
    head[...] -= lr * grad_head
    return loss

first = loss_and_step()
for _ in range(200):
    last = loss_and_step()
print(f"MSE {first:.4f} -> {last:.4f}")
assert last < first
