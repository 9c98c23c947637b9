"""rnnfast.torch modules saved whole with ``torch.save(model)`` load with ``torch.load``'s default
``weights_only=True`` (PyTorch >= 2.6), alone and inside a model, and compute what they computed (skipped without
torch)."""

from __future__ import annotations

import pathlib

import pytest

torch = pytest.importorskip("torch")

import rnnfast.torch as rt  # noqa: E402  (needs torch)

if not hasattr(torch.serialization, "safe_globals"):  # PyTorch < 2.5: no allowlist to test
    pytest.skip("torch.serialization.safe_globals needs PyTorch >= 2.5", allow_module_level=True)

STACKS = [(rt.RNN, dict(num_layers=2, nonlinearity="relu")), (rt.LSTM, dict(num_layers=2, proj_size=3)),
          (rt.GRU, dict(bidirectional=True))]
CELLS = [(rt.RNNCell, {}), (rt.LSTMCell, {}), (rt.GRUCell, {})]


class _Forecaster(torch.nn.Module):
    """A user's model holding rnnfast modules: a class of the user's, so the user allowlists it (as here)."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = rt.LSTM(3, 8, num_layers=2, batch_first=True)
        self.cell = rt.GRUCell(8, 4)
        self.head = torch.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(self.cell(out[:, -1]))


def _saved_and_loaded(model: torch.nn.Module, path: pathlib.Path) -> torch.nn.Module:
    torch.save(model, path)
    loaded = torch.load(path)  # PyTorch's default: weights_only=True from 2.6 on
    again = torch.load(path, weights_only=True)  # the same, whatever this PyTorch's default
    assert type(again) is type(model)
    return loaded


@pytest.mark.parametrize("cls,kwargs", STACKS + CELLS, ids=lambda v: getattr(v, "__name__", ""))
def test_whole_module_loads_with_weights_only(cls, kwargs, tmp_path: pathlib.Path) -> None:
    torch.manual_seed(0)
    module = cls(3, 5, **kwargs).double()
    x = torch.randn(2, 3, dtype=torch.float64) if cls in dict(CELLS) else torch.randn(4, 2, 3, dtype=torch.float64)
    expected = module(x)
    loaded = _saved_and_loaded(module, tmp_path / "module.pt")
    assert type(loaded) is cls
    for (name, p), (name2, q) in zip(module.named_parameters(), loaded.named_parameters()):
        assert name == name2 and torch.equal(p, q)
    torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)


def test_model_holding_rnnfast_modules_trains_on_after_load(tmp_path: pathlib.Path) -> None:
    torch.manual_seed(0)
    model = _Forecaster()
    x, y = torch.randn(6, 10, 3), torch.randn(6, 1)
    torch.nn.functional.mse_loss(model(x), y).backward()
    # torch.nn's own classes are not allowlisted by default either; rnnfast.torch's are (by importing it).
    with torch.serialization.safe_globals([_Forecaster, torch.nn.Linear]):
        loaded = _saved_and_loaded(model, tmp_path / "model.pt")
    assert isinstance(loaded.rnn, rt.LSTM) and isinstance(loaded.cell, rt.GRUCell)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    # The loaded model trains as the original does: the same gradients, on rnnfast's kernels again.
    model.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    torch.nn.functional.mse_loss(loaded(x), y).backward()
    for p, q in zip(model.parameters(), loaded.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=0)
    assert loaded.rnn.__dict__.get("_rnnfast_runners"), "the loaded LSTM does not run on rnnfast's kernels"


def test_modules_inside_sequential(tmp_path: pathlib.Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(rt.GRUCell(3, 4), torch.nn.Tanh(), rt.RNNCell(4, 2))
    x = torch.randn(5, 3)
    with torch.serialization.safe_globals([torch.nn.Sequential, torch.nn.Tanh]):
        loaded = _saved_and_loaded(model, tmp_path / "sequential.pt")
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_constructors_take_torch_device_and_dtype() -> None:
    for device in ("cpu", torch.device("cpu"), None):
        for dtype in (torch.float32, torch.float64, None):
            for cls, kwargs in STACKS + CELLS:
                module = cls(3, 5, **kwargs, device=device, dtype=dtype)
                weight = next(module.parameters())
                assert weight.device.type == "cpu" and weight.dtype == (dtype or torch.get_default_dtype())
