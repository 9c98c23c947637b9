"""Code that must NOT type-check: tests/typing/test_usage_types.py runs ``mypy --strict`` on this file and expects
exactly the errors named in the ``# error:`` comments (the text mypy prints after the line number's "error: ")."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

import rnnfast

rnn = rnnfast.RNN(4, 8, seed=0)
weight: npt.NDArray[np.float32] = rnn.wieght_ih_l0  # error: "RNN" has no attribute "wieght_ih_l0"
rnn.bias_hh_10 = np.zeros(8, np.float32)  # error: "RNN" has no attribute "bias_hh_10"
cell = rnnfast.LSTMCell(4, 8, seed=0)
cell.weight_ih_10 += 1  # error: "LSTMCell" has no attribute "weight_ih_10"
