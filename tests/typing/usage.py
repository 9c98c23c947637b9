"""The public API as a user's typed code calls it; tests/typing/test_usage_types.py checks that it passes
``mypy --strict`` (and runs it, so it stays correct code). Any reveal of ``Any`` or a needed cast here is a gap in
the types. Arrays are annotated ``npt.NDArray[...]``, which every supported NumPy accepts under ``--strict`` (a
bare ``np.ndarray`` is "missing type arguments" with the NumPy releases of Python 3.9 and 3.10).

misspelt.py beside it holds what must fail to type-check."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import tempfile
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

import rnnfast
from rnnfast import demo, reference

Array = npt.NDArray[Any]


def sequence_model() -> Tuple[Array, Array]:
    rnn = rnnfast.RNN(input_size=4, hidden_size=8, num_layers=2, nonlinearity="relu", bias=True,
                      batch_first=True, dropout=0.1, bidirectional=True, dtype="float64", seed=0)
    x: npt.NDArray[np.float64] = np.zeros((3, 5, 4))
    h0: Optional[Array] = np.zeros((4, 3, 8))
    out, h_n = rnn(x, h0)
    out, h_n = rnn(x, lengths=[5, 2, 4])
    out, h_n = rnn.forward(x)
    out, h_n, cache = rnn.forward(x, h0, return_cache=True)
    out, h_n, cache = rnn.forward(x, None, np.array([5, 2, 4]), True)
    masks: Optional[Array] = cache.dropout_masks
    grad_x, grad_h0 = rnn.backward(cache, grad_output=np.ones_like(out), retain_cache=True)
    grad_x, grad_h0 = rnn.backward(cache, grad_h_n=np.ones_like(h_n))
    assert grad_x.shape == x.shape and grad_h0.shape == h_n.shape and masks is not None
    return out, h_n


def training_step(rnn: rnnfast.RNN, x: Array, target: Array, lr: float = 0.01) -> float:
    out, _, cache = rnn.forward(x, return_cache=True)
    diff = out - target
    rnn.zero_grad()
    rnn.backward(cache, 2 * diff / diff.size)
    grads: Dict[str, Array] = rnn.grads
    for name, p in rnn.named_parameters().items():
        p -= lr * grads[name]
    return float(np.mean(diff ** 2))


def cells() -> Array:
    cell = rnnfast.RNNCell(3, 6, bias=False, nonlinearity="tanh", dtype=np.float32, seed=1)
    x = np.ones((2, 3), np.float32)
    h: Array = cell(x)
    h = cell(x, h)
    h = cell.forward(x, h)
    h, cache = cell.forward(x, h, return_cache=True)
    h, cache = cell.forward(x, h, True)
    caches: List[rnnfast.RNNCellCache] = [cache]
    grad_x, grad_h = cell.backward(caches[0], np.ones_like(h))
    assert grad_h.shape == h.shape
    return grad_x


def gated() -> Tuple[Array, Array]:
    lstm = rnnfast.LSTM(4, 8, num_layers=2, bias=True, batch_first=False, dropout=0.0, bidirectional=True,
                        proj_size=3, dtype="float32", seed=0)
    x = np.ones((5, 2, 4), np.float32)
    out, (h_n, c_n) = lstm(x)
    out, (h_n, c_n) = lstm(x, (h_n, c_n), [5, 3])
    out, (h_n, c_n), cache = lstm.forward(x, return_cache=True)
    grad_x, (grad_h0, grad_c0) = lstm.backward(cache, np.ones_like(out), None, np.ones_like(c_n))
    gru = rnnfast.GRU(4, 8, num_layers=1, seed=0)
    g_out, g_h_n = gru(x)
    g_out, g_h_n, g_cache = gru.forward(x, return_cache=True)
    g_x, g_h0 = gru.backward(g_cache, np.ones_like(g_out), input_grad=True)
    lstm_cell = rnnfast.LSTMCell(4, 8, seed=0)
    h, c = lstm_cell(x[0])
    h, c, cell_cache = lstm_cell.forward(x[0], (h, c), return_cache=True)
    caches: List[rnnfast.GatedCellCache] = [cell_cache]
    cx, (ch, cc) = lstm_cell.backward(caches[0], np.ones_like(h))
    gru_cell = rnnfast.GRUCell(4, 8, seed=0)
    gh: Array = gru_cell(x[0], gru_cell(x[0]))
    gh, gcache = gru_cell.forward(x[0], gh, return_cache=True)
    gx, gh = gru_cell.backward(gcache, np.ones_like(gh))
    assert grad_x.shape == x.shape and grad_c0.shape == (4, 2, 8) and g_h0.shape == g_h_n.shape and cx.shape == gx.shape
    return out, h_n


def state(model: rnnfast.RNN) -> rnnfast.RNN:
    saved: Dict[str, Array] = model.state_dict()
    model.load_state_dict(saved)
    weight: Array = model.weight_ih_l0  # PyTorch-style attribute access
    assert weight.shape == (model.hidden_size, model.input_size)
    evaluated: rnnfast.RNN = model.eval()  # train() / eval() return the model itself, with its type
    trained: rnnfast.RNN = evaluated.train(True)
    assert trained.training and model.dtype == np.float32 and model.num_layers == 1
    return trained


def parameters_by_name(lstm: rnnfast.LSTM, cell: rnnfast.GRUCell) -> Array:
    first: Array = lstm.weight_hr_l0_reverse  # the first layer's parameters as attributes
    deeper: Array = lstm.named_parameters()["weight_ih_l1"]  # deeper layers' by name
    lstm.weight_ih_l0 = np.zeros_like(lstm.weight_ih_l0)  # assigning copies into the parameter
    cell_weight: Array = cell.weight_hh
    assert first.shape == (lstm.proj_size, lstm.hidden_size) and deeper.shape[0] == 4 * lstm.hidden_size
    return cell_weight


def reference_oracle() -> Tuple[Array, Array]:
    shapes = reference.param_shapes(input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    params: Dict[str, Array] = {name: np.full(shape, 0.1) for name, shape in shapes.items()}
    x = np.ones((5, 2, 3))
    out, h_n, cache = reference.rnn_forward(x, params, num_layers=2, bidirectional=True, lengths=[5, 3])
    grad_x, grad_h0, grads = reference.rnn_backward(cache, grad_output=np.ones_like(out))
    lstm_params = {name: np.full(shape, 0.1) for name, shape in reference.lstm_param_shapes(3, 4, proj_size=2).items()}
    lstm_out, (lstm_h, lstm_c), lstm_cache = reference.lstm_forward(x, lstm_params, proj_size=2, hx=None)
    lstm_grad_x, (lstm_grad_h0, lstm_grad_c0), lstm_grads = reference.lstm_backward(lstm_cache, grad_c_n=lstm_c)
    cell_params = {"weight_ih": np.ones((12, 3)), "weight_hh": np.ones((12, 4))}
    h_new, cell_cache = reference.gru_cell_forward(x[0], None, cell_params)
    cell_grad_x, cell_grad_h, cell_grads = reference.gru_cell_backward(cell_cache, np.ones_like(h_new))
    assert grad_x.shape == x.shape and sorted(grads) == sorted(shapes) and grad_h0.shape == h_n.shape
    assert lstm_grad_x.shape == x.shape and lstm_grad_h0.shape == lstm_h.shape and "weight_hr_l0" in lstm_grads
    assert lstm_grad_c0.shape == lstm_c.shape and cell_grad_h.shape == h_new.shape and cell_grads["weight_ih"].ndim == 2
    return lstm_out, cell_grad_x


def configuration() -> Dict[str, Any]:
    rnnfast.set_num_threads(1)
    threads: int = rnnfast.get_num_threads()
    version: str = rnnfast.__version__
    config = rnnfast.show_config()
    assert config["threads"] == threads and config["version"] == version
    return config


def demo_metrics() -> float:
    metrics: Dict[str, Any] = demo.run(epochs=1, hidden=4, seed=0, series_length=200, progress=False)
    ratio: float = metrics["test_ratio"]
    return ratio


def onnx_round_trip(model: rnnfast.LSTM, directory: str) -> Union[rnnfast.RNN, rnnfast.LSTM, rnnfast.GRU]:
    from rnnfast import onnx as rnnfast_onnx  # imports without the onnx package; its functions need it

    path = os.path.join(directory, "lstm.onnx")
    rnnfast_onnx.export(model, path, with_lengths=True, with_initial_state=True, opset=17)
    with open(path, "rb") as f:
        loaded = rnnfast_onnx.load(f)
    proto: Any = rnnfast_onnx.to_onnx(model, seq_len=5, batch=2)
    assert proto.producer_name == "rnnfast" and loaded.hidden_size == model.hidden_size
    return rnnfast_onnx.load(pathlib.Path(path))


if __name__ == "__main__":
    sequence_model()
    rnn = rnnfast.RNN(2, 3, seed=0)
    x = np.zeros((4, 1, 2), np.float32)
    training_step(rnn, x, np.zeros((4, 1, 3), np.float32))
    cells()
    gated()
    state(rnn)
    parameters_by_name(rnnfast.LSTM(2, 4, num_layers=2, bidirectional=True, proj_size=3, seed=0),
                       rnnfast.GRUCell(2, 3, seed=0))
    reference_oracle()
    configuration()
    demo_metrics()
    if importlib.util.find_spec("onnx") is not None:
        with tempfile.TemporaryDirectory() as tmp:
            onnx_round_trip(rnnfast.LSTM(2, 3, seed=0), tmp)
    print("usage ok")
