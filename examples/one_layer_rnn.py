"""Tutorial example 1: a one-layer RNN, feature 100 -> hidden 20, on a batch of 3 sequences of length 10.

Run: python examples/one_layer_rnn.py
"""

import numpy as np

import rnnfast

rng = np.random.default_rng(0)
rnn = rnnfast.RNN(input_size=100, hidden_size=20, num_layers=1, seed=0)
print(rnn)

x = rng.standard_normal((10, 3, 100)).astype(np.float32)  # [seq_len, batch, feature]
h0 = np.zeros((1, 3, 20), np.float32)                      # [num_layers, batch, hidden]; None means zeros too
output, h_n = rnn(x, h0)
print("output", output.shape)  # (10, 3, 20): the state at every step
print("h_n", h_n.shape)        # (1, 3, 20): the state after the last step

# The last output step is the final state, and the parameters have PyTorch's names and shapes.
assert np.array_equal(output[-1], h_n[0])
for name, p in rnn.named_parameters().items():
    print(name, p.shape)
