"""Tutorial example 2: four stacked layers, feature 100 -> hidden 20, batch 3, sequence length 10.

Layer k > 0 reads the output of layer k - 1; h_n holds the final state of every layer.

Run: python examples/four_layer_rnn.py
"""

import numpy as np

import rnnfast

rng = np.random.default_rng(0)
rnn = rnnfast.RNN(100, 20, num_layers=4, seed=0)
print(rnn)

x = rng.standard_normal((10, 3, 100)).astype(np.float32)
output, h_n = rnn(x)
print("output", output.shape)  # (10, 3, 20): the last layer's states
print("h_n", h_n.shape)        # (4, 3, 20): one final state per layer

# Feeding a state back in continues the sequence: two halves give the same as the whole.
first, h_mid = rnn(x[:5])
second, h_end = rnn(x[5:], h_mid)
print("halves match the whole:", bool(np.allclose(np.concatenate([first, second]), output, atol=1e-6)
                                      and np.allclose(h_end, h_n, atol=1e-6)))
