"""Tutorial example 3: one RNNCell stepped by hand over a sequence (feature 100 -> hidden 20, batch 3, 10 steps).

Run: python examples/cell_by_hand.py
"""

import numpy as np

import rnnfast

rng = np.random.default_rng(0)
cell = rnnfast.RNNCell(100, 20, seed=0)
print(cell)

x = rng.standard_normal((10, 3, 100)).astype(np.float32)
h = np.zeros((3, 20), np.float32)
states = []
for x_t in x:          # x_t: [batch, feature]
    h = cell(x_t, h)   # h: [batch, hidden]
    states.append(h)
print("h", h.shape)                      # (3, 20)
print("states", np.stack(states).shape)  # (10, 3, 20)

# The same weights in a one-layer RNN give the same states: the cell is one step of it.
rnn = rnnfast.RNN(100, 20, seed=0)
rnn.load_state_dict({f"{name}_l0": value for name, value in cell.state_dict().items()})
output, _ = rnn(x)
print("same as RNN:", bool(np.allclose(output, np.stack(states), atol=1e-6)))
