"""Optional oracle: PyTorch's nn.RNN / nn.RNNCell with the same weights (skipped when torch is not installed)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import rnnfast

torch = pytest.importorskip("torch")

T, B, I, H = 6, 3, 5, 4
TOL = {"float32": dict(rtol=2e-4, atol=2e-5), "float64": dict(rtol=1e-9, atol=1e-11)}


def _numpy_state(module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


@pytest.mark.parametrize(
    "layers,bidi,batch_first,bias,act,dtype,unbatched,with_h0",
    list(itertools.product([1, 2, 3], [False, True], [False, True], [True, False], ["tanh", "relu"],
                           ["float32", "float64"], [False, True], [False, True])),
)
def test_rnn_matches_torch(layers, bidi, batch_first, bias, act, dtype, unbatched, with_h0) -> None:
    torch.manual_seed(0)
    tdtype = getattr(torch, dtype)
    module = torch.nn.RNN(I, H, num_layers=layers, nonlinearity=act, bias=bias, batch_first=batch_first,
                          bidirectional=bidi, dtype=tdtype)
    model = rnnfast.RNN(I, H, num_layers=layers, nonlinearity=act, bias=bias, batch_first=batch_first,
                        bidirectional=bidi, dtype=dtype, seed=0)
    model.load_state_dict(_numpy_state(module))
    rng = np.random.default_rng(1)
    D = 2 if bidi else 1
    shape = (T, I) if unbatched else ((B, T, I) if batch_first else (T, B, I))
    x = rng.standard_normal(shape).astype(dtype)
    state_shape = (layers * D, H) if unbatched else (layers * D, B, H)
    h0 = rng.standard_normal(state_shape).astype(dtype) if with_h0 else None

    tx = torch.tensor(x, requires_grad=True)
    th0 = torch.tensor(h0, requires_grad=True) if with_h0 else None
    t_out, t_h_n = module(tx, th0)
    out, h_n, cache = model.forward(x, h0, return_cache=True)
    np.testing.assert_allclose(out, t_out.detach().numpy(), **TOL[dtype])
    np.testing.assert_allclose(h_n, t_h_n.detach().numpy(), **TOL[dtype])

    g_out = rng.standard_normal(out.shape).astype(dtype)
    g_h_n = rng.standard_normal(h_n.shape).astype(dtype)
    (t_out * torch.tensor(g_out)).sum().add((t_h_n * torch.tensor(g_h_n)).sum()).backward()
    gx, gh0 = model.backward(cache, g_out, g_h_n)
    np.testing.assert_allclose(gx, tx.grad.numpy(), **TOL[dtype])
    if with_h0:
        np.testing.assert_allclose(gh0, th0.grad.numpy(), **TOL[dtype])
    for name, p in module.named_parameters():
        np.testing.assert_allclose(model.grads[name], p.grad.numpy(), **TOL[dtype], err_msg=name)


@pytest.mark.parametrize("bias,act,dtype,unbatched,with_h",
                         list(itertools.product([True, False], ["tanh", "relu"], ["float32", "float64"],
                                                [False, True], [False, True])))
def test_cell_matches_torch(bias, act, dtype, unbatched, with_h) -> None:
    torch.manual_seed(1)
    module = torch.nn.RNNCell(I, H, bias=bias, nonlinearity=act, dtype=getattr(torch, dtype))
    cell = rnnfast.RNNCell(I, H, bias=bias, nonlinearity=act, dtype=dtype, seed=0)
    cell.load_state_dict(_numpy_state(module))
    rng = np.random.default_rng(2)
    x = rng.standard_normal((I,) if unbatched else (B, I)).astype(dtype)
    h = rng.standard_normal((H,) if unbatched else (B, H)).astype(dtype) if with_h else None
    tx = torch.tensor(x, requires_grad=True)
    th = torch.tensor(h, requires_grad=True) if with_h else None
    t_new = module(tx, th)
    h_new, cache = cell.forward(x, h, return_cache=True)
    np.testing.assert_allclose(h_new, t_new.detach().numpy(), **TOL[dtype])
    g = rng.standard_normal(h_new.shape).astype(dtype)
    (t_new * torch.tensor(g)).sum().backward()
    gx, gh = cell.backward(cache, g)
    np.testing.assert_allclose(gx, tx.grad.numpy(), **TOL[dtype])
    if with_h:
        np.testing.assert_allclose(gh, th.grad.numpy(), **TOL[dtype])
    for name, p in module.named_parameters():
        np.testing.assert_allclose(cell.grads[name], p.grad.numpy(), **TOL[dtype], err_msg=name)


def test_state_dict_loads_into_torch_both_ways() -> None:
    model = rnnfast.RNN(100, 20, num_layers=4, bidirectional=True, seed=3)
    module = torch.nn.RNN(100, 20, num_layers=4, bidirectional=True)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})  # strict in torch too
    x = np.random.default_rng(0).standard_normal((10, 3, 100)).astype(np.float32)
    out, h_n = model(x)
    t_out, t_h_n = module(torch.from_numpy(x))
    np.testing.assert_allclose(out, t_out.detach().numpy(), **TOL["float32"])
    np.testing.assert_allclose(h_n, t_h_n.detach().numpy(), **TOL["float32"])
    # Tensors themselves are accepted too, and a float64 torch module loads into a float32 model (cast).
    module64 = torch.nn.RNN(100, 20, num_layers=4, bidirectional=True, dtype=torch.float64)
    model.load_state_dict(module64.state_dict())
    np.testing.assert_allclose(model.named_parameters()["weight_hh_l3_reverse"],
                               module64.weight_hh_l3_reverse.detach().numpy().astype(np.float32))
    assert model.named_parameters()["weight_hh_l3_reverse"].dtype == np.float32
