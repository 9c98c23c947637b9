"""Pure-NumPy reference implementation of the Elman RNN, the LSTM and the GRU.

This package is the oracle of the test suite and a teaching aid. It favours
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

The modules: ``_elman`` (the Elman RNN: layer, stack, lengths, cell),
``_gated_layer`` (LSTM and GRU parameter layout, steps and layers),
``_gated_stack`` (their stacks) and ``_gated_cell`` (their cells), over
``_common`` (types and helpers they share).
"""

from __future__ import annotations

from ._common import Array as Array, ArrayLike as ArrayLike, Cache as Cache, Grads as Grads, Params as Params
from ._elman import (cell_backward, cell_forward, layer_backward, layer_forward, param_names, param_shapes,
                     rnn_backward, rnn_forward)
from ._gated_cell import gru_cell_backward, gru_cell_forward, lstm_cell_backward, lstm_cell_forward
from ._gated_layer import (gru_layer_backward, gru_layer_forward, gru_param_names, gru_param_shapes,
                           lstm_layer_backward, lstm_layer_forward, lstm_param_names, lstm_param_shapes)
from ._gated_stack import gru_backward, gru_forward, lstm_backward, lstm_forward

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
