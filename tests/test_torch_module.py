"""rnnfast.torch: drop-in torch.nn.RNN / nn.RNNCell on rnnfast's kernels (skipped when torch is not installed)."""

from __future__ import annotations

import copy
import io
import itertools
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import rnnfast  # noqa: E402
import rnnfast.torch as rt  # noqa: E402  (needs torch)
from torch.nn.utils.rnn import pack_padded_sequence, pack_sequence, pad_sequence  # noqa: E402

T, B, I, H = 6, 3, 5, 4
TOL = {torch.float32: dict(rtol=2e-4, atol=2e-5), torch.float64: dict(rtol=1e-9, atol=1e-11)}


def _pair(cls_torch, cls_fast, *args, seed=0, **kwargs):
    """The PyTorch module and the rnnfast one, both constructed after the same seed (so with equal weights)."""
    torch.manual_seed(seed)
    ref = cls_torch(*args, **kwargs)
    torch.manual_seed(seed)
    fast = cls_fast(*args, **kwargs)
    return ref, fast


def _grads(module, *tensors):
    return [t.grad for t in tensors if t is not None] + [p.grad for p in module.parameters()]


def _assert_same(actual, expected, dtype, what=""):
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert (a is None) == (e is None), (what, i)
        if a is not None:
            torch.testing.assert_close(a, e, **TOL[dtype], msg=f"{what} [{i}]")


def _shared(module) -> bool:
    """Whether every parameter is a view of the rnnfast buffer the kernels read."""
    weights = module._rnnfast_weights()
    runner = module._rnnfast_runners[("all", weights[0].dtype)]
    return all(rt._runner._is_view_of(w, v) for w, v in zip(weights, runner.views))


# ---------------------------------------------------------------------------------------------------------------------
# Import: torch stays optional
# ---------------------------------------------------------------------------------------------------------------------

def test_import_rnnfast_does_not_import_or_link_torch() -> None:
    code = ("import sys, rnnfast; rnnfast.RNN(3, 4)(__import__('numpy').zeros((2, 1, 3), 'float32'));"
            "assert 'torch' not in sys.modules, 'torch imported';"
            "maps = open('/proc/self/maps').read() if sys.platform.startswith('linux') else '';"
            "assert 'libtorch' not in maps and 'libc10' not in maps, 'torch libraries loaded'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_inner_import_torch_is_the_real_torch() -> None:
    assert rt.torch is torch
    for part in (rt._runner, rt._functions, rt._modules, rt._convert):  # the package is itself named torch
        assert part.torch is torch, part.__name__
    assert rt.RNN.__mro__[1:3] == (rt._modules._Shared, torch.nn.RNN)
    assert issubclass(rt.RNNCell, torch.nn.RNNCell)


# ---------------------------------------------------------------------------------------------------------------------
# Same module as torch's
# ---------------------------------------------------------------------------------------------------------------------

def test_same_constructor_parameters_state_dict_and_repr_as_torch() -> None:
    import inspect

    params = list(inspect.signature(rt.RNN.__init__).parameters.values())[1:]
    assert [(p.name, p.default) for p in params] == [
        ("input_size", inspect.Parameter.empty), ("hidden_size", inspect.Parameter.empty), ("num_layers", 1),
        ("nonlinearity", "tanh"), ("bias", True), ("batch_first", False), ("dropout", 0.0), ("bidirectional", False),
        ("device", None), ("dtype", None)]
    cell_params = list(inspect.signature(rt.RNNCell.__init__).parameters)
    assert cell_params == list(inspect.signature(torch.nn.RNNCell.__init__).parameters)

    ref, fast = _pair(torch.nn.RNN, rt.RNN, 5, 4, 3, "relu", False, True, 0.0, True)
    assert repr(fast) == repr(ref)
    assert [(n, p.shape) for n, p in fast.named_parameters()] == [(n, p.shape) for n, p in ref.named_parameters()]
    for (name, a), (_, b) in zip(fast.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), name  # same initialization from the same seed
    assert fast._flat_weights_names == ref._flat_weights_names
    assert [[p.shape for p in layer] for layer in fast.all_weights] == [[p.shape for p in layer]
                                                                        for layer in ref.all_weights]
    ref_cell, cell = _pair(torch.nn.RNNCell, rt.RNNCell, 5, 4, bias=False, nonlinearity="relu",
                           dtype=torch.float64)
    assert repr(cell) == repr(ref_cell)
    assert all(torch.equal(a, b) for a, b in zip(cell.parameters(), ref_cell.parameters()))
    # Bad arguments raise PyTorch's own errors.
    with pytest.raises(ValueError, match="nonlinearity"):
        rt.RNN(3, 4, nonlinearity="gelu")
    with pytest.raises(ValueError):
        rt.RNN(3, 4, dropout=1.5)


def test_the_same_random_numbers_are_drawn_as_by_torch() -> None:
    # Swapping the class leaves every later initialization of a model unchanged.
    torch.manual_seed(3)
    torch.nn.RNN(5, 4, 2)
    after_torch = torch.rand(3)
    torch.manual_seed(3)
    rt.RNN(5, 4, 2)
    assert torch.equal(torch.rand(3), after_torch)


def test_parameters_share_the_rnnfast_buffer() -> None:
    fast = rt.RNN(5, 4, 2, bidirectional=True)
    assert _shared(fast)
    before = [p.data_ptr() for p in fast.parameters()]
    params = list(fast.parameters())
    opt = torch.optim.SGD(fast.parameters(), lr=0.1, momentum=0.9)
    fast(torch.randn(T, B, I))[0].sum().backward()
    opt.step()
    fast.load_state_dict(rt.RNN(5, 4, 2, bidirectional=True).state_dict())
    assert [p.data_ptr() for p in fast.parameters()] == before and _shared(fast)
    # .double() keeps the Parameter objects and shares a float64 buffer.
    fast.double()
    assert list(fast.parameters()) == params and all(p.dtype == torch.float64 for p in params)
    assert _shared(fast)
    # An in-place update of a parameter is what the next forward computes with (no stale copy).
    ref = torch.nn.RNN(5, 4, 2, bidirectional=True, dtype=torch.float64)
    ref.load_state_dict(fast.state_dict())
    with torch.no_grad():
        fast.weight_hh_l1.mul_(2)
        ref.weight_hh_l1.mul_(2)
    x = torch.randn(T, B, I, dtype=torch.float64)
    _assert_same(fast(x), ref(x), torch.float64)


# ---------------------------------------------------------------------------------------------------------------------
# Outputs and gradients equal torch.nn.RNN's
# ---------------------------------------------------------------------------------------------------------------------

GRID = list(itertools.product([1, 2, 3], [False, True], [False, True], [True, False], ["tanh", "relu"],
                              [torch.float32, torch.float64], [False, True], [False, True]))


@pytest.mark.parametrize("layers,bidi,batch_first,bias,act,dtype,unbatched,with_h0", GRID)
def test_rnn_matches_torch(layers, bidi, batch_first, bias, act, dtype, unbatched, with_h0) -> None:
    ref, fast = _pair(torch.nn.RNN, rt.RNN, I, H, num_layers=layers, nonlinearity=act, bias=bias,
                      batch_first=batch_first, bidirectional=bidi, dtype=dtype)
    D = 2 if bidi else 1
    gen = torch.Generator().manual_seed(1)
    shape = (T, I) if unbatched else ((B, T, I) if batch_first else (T, B, I))
    x = torch.randn(shape, generator=gen, dtype=dtype)
    h0 = torch.randn((layers * D, H) if unbatched else (layers * D, B, H), generator=gen, dtype=dtype)
    results = []
    for module in (ref, fast):
        xi = x.clone().requires_grad_()
        hi = h0.clone().requires_grad_() if with_h0 else None
        out, h_n = module(xi, hi)
        g_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
        g_h = torch.randn(h_n.shape, generator=torch.Generator().manual_seed(3), dtype=dtype)
        ((out * g_out).sum() + (h_n * g_h).sum()).backward()
        results.append([out, h_n, *_grads(module, xi, hi)])
    assert results[1][0].shape == results[0][0].shape and results[1][1].shape == results[0][1].shape
    _assert_same(results[1], results[0], dtype)


@pytest.mark.parametrize("bias,act,dtype,unbatched,with_h",
                         list(itertools.product([True, False], ["tanh", "relu"], [torch.float32, torch.float64],
                                                [False, True], [False, True])))
def test_cell_matches_torch(bias, act, dtype, unbatched, with_h) -> None:
    ref, fast = _pair(torch.nn.RNNCell, rt.RNNCell, I, H, bias=bias, nonlinearity=act, dtype=dtype)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn((I,) if unbatched else (B, I), generator=gen, dtype=dtype)
    h = torch.randn((H,) if unbatched else (B, H), generator=gen, dtype=dtype)
    results = []
    for module in (ref, fast):
        xi = x.clone().requires_grad_()
        hi = h.clone().requires_grad_() if with_h else None
        h_new = module(xi, hi)
        (h_new * torch.linspace(-1, 1, H, dtype=dtype)).sum().backward()
        results.append([h_new, *_grads(module, xi, hi)])
    _assert_same(results[1], results[0], dtype)


def test_cells_stepped_by_hand_with_bptt_match_torch() -> None:
    ref1, fast1 = _pair(torch.nn.RNNCell, rt.RNNCell, I, 7, seed=1)
    ref2, fast2 = _pair(torch.nn.RNNCell, rt.RNNCell, 7, H, seed=2, nonlinearity="relu")
    x = torch.randn(T, B, I, generator=torch.Generator().manual_seed(0))
    results = []
    for c1, c2 in ((ref1, ref2), (fast1, fast2)):
        h1 = h2 = None
        loss = 0
        for x_t in x:
            h1 = c1(x_t, h1)
            h2 = c2(h1, h2)
            loss = loss + h2.square().mean()
        loss.backward()
        results.append([h2, *_grads(c1), *_grads(c2)])
    _assert_same(results[1], results[0], torch.float32)


def test_only_h_n_or_only_output_in_the_loss() -> None:
    ref, fast = _pair(torch.nn.RNN, rt.RNN, I, H, 2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    for pick in (0, 1):
        results = []
        for module in (ref, fast):
            module.zero_grad()
            xi = x.clone().requires_grad_()
            module(xi)[pick].sin().sum().backward()
            results.append(_grads(module, xi))
        _assert_same(results[1], results[0], torch.float64, what=f"pick {pick}")


def test_inference_under_no_grad_and_inference_mode() -> None:
    ref, fast = _pair(torch.nn.RNN, rt.RNN, I, H, 2, batch_first=True)
    x = torch.randn(B, T, I)
    expected = ref(x)
    with torch.no_grad():
        got = fast(x)
    assert got[0].grad_fn is None
    _assert_same(got, expected, torch.float32)
    with torch.inference_mode():
        _assert_same(fast(x), expected, torch.float32)


# ---------------------------------------------------------------------------------------------------------------------
# gradcheck (float64)
# ---------------------------------------------------------------------------------------------------------------------

def _gradcheck_module(module, *inputs) -> None:
    names = [name for name, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]

    def fn(*args):
        tensors = dict(zip(names, args[len(inputs):]))
        return torch.func.functional_call(module, tensors, args[:len(inputs)])

    assert torch.autograd.gradcheck(fn, (*inputs, *params), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("layers,bidi,batch_first,bias,act,with_h0", [
    (2, True, False, True, "tanh", True),
    (2, True, True, True, "tanh", True),
    (1, False, True, False, "relu", True),
    (3, False, False, True, "tanh", False),
])
def test_gradcheck_rnn(layers, bidi, batch_first, bias, act, with_h0) -> None:
    torch.manual_seed(0)
    module = rt.RNN(3, 4, layers, act, bias, batch_first, 0.0, bidi, dtype=torch.float64)
    D = 2 if bidi else 1
    x = torch.randn((2, 4, 3) if batch_first else (4, 2, 3), dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(layers * D, 2, 4, dtype=torch.float64, requires_grad=True) if with_h0 else None
    _gradcheck_module(module, x, h0)


def test_gradcheck_packed_input() -> None:
    torch.manual_seed(0)
    module = rt.RNN(3, 4, 2, bidirectional=True, dtype=torch.float64)
    lengths = torch.tensor([2, 4, 3])
    x = torch.randn(4, 3, 3, dtype=torch.float64)
    h0 = torch.randn(4, 3, 4, dtype=torch.float64, requires_grad=True)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    data = packed.data.clone().requires_grad_()

    def fn(data, h0):
        out, h_n = module(type(packed)(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices), h0)
        return out.data, h_n

    assert torch.autograd.gradcheck(fn, (data, h0), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("bias,act,unbatched", [(True, "tanh", False), (False, "relu", False), (True, "tanh", True)])
def test_gradcheck_cell(bias, act, unbatched) -> None:
    torch.manual_seed(0)
    cell = rt.RNNCell(3, 4, bias=bias, nonlinearity=act, dtype=torch.float64)
    x = torch.randn((3,) if unbatched else (2, 3), dtype=torch.float64, requires_grad=True)
    h = torch.randn((4,) if unbatched else (2, 4), dtype=torch.float64, requires_grad=True)
    _gradcheck_module(cell, x, h)


# ---------------------------------------------------------------------------------------------------------------------
# PackedSequence, dropout
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("enforce_sorted,with_h0,batch_first,dtype", [
    (False, True, False, torch.float64), (False, False, True, torch.float32), (True, True, False, torch.float32)])
def test_packed_sequence_matches_torch(enforce_sorted, with_h0, batch_first, dtype) -> None:
    ref, fast = _pair(torch.nn.RNN, rt.RNN, I, H, 2, bidirectional=True, batch_first=batch_first, dtype=dtype)
    lengths = [6, 5, 2, 1] if enforce_sorted else [2, 6, 1, 5]
    gen = torch.Generator().manual_seed(0)
    seqs = [torch.randn(n, I, generator=gen, dtype=dtype) for n in lengths]
    h0 = torch.randn(4, len(lengths), H, generator=gen, dtype=dtype)
    results = []
    for module in (ref, fast):
        leaves = [s.clone().requires_grad_() for s in seqs]
        hi = h0.clone().requires_grad_() if with_h0 else None
        packed = pack_sequence(leaves, enforce_sorted=enforce_sorted)
        out, h_n = module(packed, hi)
        assert isinstance(out, torch.nn.utils.rnn.PackedSequence)
        results.append(out)
        ((out.data * torch.cos(out.data)).sum() + (h_n ** 2).sum()).backward()
        results[-1] = [out, out.data, h_n, *[leaf.grad for leaf in leaves], *_grads(module, hi)]
    (ref_out, *expected), (fast_out, *got) = results
    assert torch.equal(fast_out.batch_sizes, ref_out.batch_sizes)
    for name in ("sorted_indices", "unsorted_indices"):
        a, b = getattr(fast_out, name), getattr(ref_out, name)
        assert (a is None and b is None) or torch.equal(a, b), name
    _assert_same(got, expected, dtype)
    # The padded output, as pad_packed_sequence gives it, also matches a padded run with rnnfast's lengths.
    padded = pad_sequence(seqs)
    out_pad, _ = fast.eval()(padded.transpose(0, 1) if batch_first else padded)
    assert out_pad.shape[-1] == 2 * H


@pytest.mark.parametrize("packed", [False, True])
def test_dropout_in_training_draws_torch_masks(packed) -> None:
    ref, fast = _pair(torch.nn.RNN, rt.RNN, I, H, 3, dropout=0.4, bidirectional=True, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([4, 6, 2])
    results = []
    for module in (ref, fast):
        xi = x.clone().requires_grad_()
        torch.manual_seed(7)
        if packed:
            out, h_n = module(pack_padded_sequence(xi, lengths, enforce_sorted=False))
            out = out.data
        else:
            out, h_n = module(xi)
        (out.sum() + h_n.sum()).backward()
        results.append([out, h_n, *_grads(module, xi)])
    _assert_same(results[1], results[0], torch.float64)
    # Different seeds, different masks; eval() has none.
    torch.manual_seed(7)
    first = fast(x)[0]
    torch.manual_seed(8)
    assert not torch.allclose(fast(x)[0], first)
    ref.eval()
    fast.eval()
    _assert_same(fast(x), ref(x), torch.float64)


# ---------------------------------------------------------------------------------------------------------------------
# Training with torch's machinery
# ---------------------------------------------------------------------------------------------------------------------

class _Model(torch.nn.Module):
    def __init__(self, rnn_class, cell_class) -> None:
        super().__init__()
        self.rnn = rnn_class(1, 8, 2, batch_first=True, dtype=torch.float64)
        self.cell = cell_class(8, 6, dtype=torch.float64)
        self.head = torch.nn.Linear(6, 1, dtype=torch.float64)

    def forward(self, x):
        out, _ = self.rnn(x)
        h = None
        for t in range(out.shape[1]):
            h = self.cell(out[:, t], h)
        return self.head(h)


def test_optimizer_steps_with_clipping_match_torch() -> None:
    models = []
    for rnn_class, cell_class in ((torch.nn.RNN, torch.nn.RNNCell), (rt.RNN, rt.RNNCell)):
        torch.manual_seed(0)
        models.append(_Model(rnn_class, cell_class))
    t = torch.linspace(0, 12, 41, dtype=torch.float64)
    x = torch.stack([torch.sin(t[:-1] + k) for k in range(4)])[:, :, None]   # [4, 40, 1]
    y = torch.stack([torch.sin(t[-1] + k) for k in range(4)])[:, None]
    norms, losses = [], []
    for model in models:
        opt = torch.optim.Adam(model.parameters(), lr=0.02)
        steps = []
        for _ in range(10):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)))
            opt.step()
            steps.append(float(loss.detach()))
        losses.append(steps)
    assert losses[1] == pytest.approx(losses[0], rel=1e-9)
    assert losses[1][-1] < losses[1][0]
    for (name, a), (_, b) in zip(models[1].state_dict().items(), models[0].state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=name)


def test_hooks_see_the_gradients() -> None:
    fast = rt.RNN(I, H)
    seen, calls = {}, []
    fast.weight_hh_l0.register_hook(lambda g: seen.setdefault("hh", g.clone()))
    fast.register_forward_hook(lambda module, inputs, output: calls.append(output[0].shape))
    fast.register_full_backward_hook(lambda module, g_in, g_out: calls.append("backward"))
    fast(torch.randn(T, B, I, requires_grad=True))[0].sum().backward()
    assert calls == [(T, B, H), "backward"]
    torch.testing.assert_close(seen["hh"], fast.weight_hh_l0.grad)


def test_in_place_change_of_a_weight_before_backward_is_refused() -> None:
    fast = rt.RNN(I, H)
    out, _ = fast(torch.randn(T, B, I))
    with torch.no_grad():
        fast.weight_hh_l0.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_in_place_change_of_the_input_or_output_before_backward_is_refused() -> None:
    # The forward's cache refers to the input's and the output's memory rather than copying them.
    fast = rt.RNN(I, H)
    x = torch.randn(T, B, I)
    out, _ = fast(x)
    x.add_(1)
    with pytest.raises(ValueError, match="^x: it was modified in place"):
        out.sum().backward()
    out, _ = fast(x)
    loss = out.sum()
    with torch.no_grad():
        out.mul_(2)
    with pytest.raises(ValueError, match="^output: it was modified in place"):
        loss.backward()


def test_input_without_grad_gets_none_and_the_weights_match_torch() -> None:
    ref, fast = _pair(torch.nn.RNN, rt.RNN, I, H, 2, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    ref(x)[0].square().sum().backward()
    fast(x)[0].square().sum().backward()
    assert x.grad is None
    for (name, a), (_, b) in zip(fast.named_parameters(), ref.named_parameters()):
        _assert_same([a.grad], [b.grad], torch.float64, name)


def test_retain_graph_backward_twice_accumulates() -> None:
    fast = rt.RNN(I, H, dtype=torch.float64)
    out, _ = fast(torch.randn(T, B, I, dtype=torch.float64))
    out.sum().backward(retain_graph=True)
    once = fast.weight_ih_l0.grad.clone()
    out.sum().backward()
    torch.testing.assert_close(fast.weight_ih_l0.grad, 2 * once)


def test_state_dict_round_trip_save_load_deepcopy_pickle() -> None:
    ref, fast = _pair(torch.nn.RNN, rt.RNN, I, H, 2, bidirectional=True)
    other = torch.nn.RNN(I, H, 2, bidirectional=True)
    buffer = io.BytesIO()
    torch.save(other.state_dict(), buffer)
    buffer.seek(0)
    fast.load_state_dict(torch.load(buffer))
    assert _shared(fast)
    x = torch.randn(T, B, I)
    _assert_same(fast(x), other(x), torch.float32)
    ref.load_state_dict(fast.state_dict())  # and back into torch.nn.RNN
    _assert_same(ref(x), other(x), torch.float32)
    assert list(fast.state_dict()) == list(ref.state_dict())

    twin = copy.deepcopy(fast)
    assert _shared(twin) and twin.weight_ih_l0.data_ptr() != fast.weight_ih_l0.data_ptr()
    with torch.no_grad():
        twin.weight_ih_l0.zero_()
    assert fast.weight_ih_l0.abs().sum() > 0
    _assert_same(fast(x), other(x), torch.float32)

    buffer = io.BytesIO()
    torch.save(fast, buffer)  # the whole module
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert type(loaded) is rt.RNN and _shared(loaded)
    _assert_same(loaded(x), other(x), torch.float32)

    # load_state_dict(assign=True) replaces the parameters: they are shared again.
    fast.load_state_dict({k: v.clone() for k, v in other.state_dict().items()}, assign=True)
    assert _shared(fast)
    _assert_same(fast(x), other(x), torch.float32)


def test_functional_call_uses_the_given_tensors() -> None:
    ref, fast = _pair(torch.nn.RNN, rt.RNN, I, H, 2, dtype=torch.float64)
    tensors = {k: torch.randn_like(v).requires_grad_() for k, v in fast.named_parameters()}
    x = torch.randn(T, B, I, dtype=torch.float64)
    out_f, _ = torch.func.functional_call(fast, tensors, (x,))
    out_r, _ = torch.func.functional_call(ref, tensors, (x,))
    torch.testing.assert_close(out_f, out_r, **TOL[torch.float64])
    g_f = torch.autograd.grad(out_f.sum(), list(tensors.values()))
    g_r = torch.autograd.grad(out_r.sum(), list(tensors.values()))
    _assert_same(g_f, g_r, torch.float64)
    assert _shared(fast)  # the module's own parameters were left alone
    _assert_same(fast(x), ref(x), torch.float64)


class _Symmetric(torch.nn.Module):
    def forward(self, w):
        return (w + w.T) / 2


def test_parametrized_and_shared_memory_weights_are_copied_in() -> None:
    ref, fast = _pair(torch.nn.RNN, rt.RNN, I, H, 2, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    for module in (ref, fast):
        torch.nn.utils.parametrize.register_parametrization(module, "weight_hh_l1", _Symmetric())
    for step in ("parametrized", "shared memory"):
        results = []
        for module in (ref, fast):
            module.zero_grad()
            out, h_n = module(x)
            (out.sum() + h_n.square().sum()).backward()
            results.append([out, h_n, *_grads(module)])
        _assert_same(results[1], results[0], torch.float64, what=step)
        fast.share_memory()
        ref.share_memory()
    assert all(p.is_shared() for p in fast.parameters())


def test_cpu_and_to_keep_or_renew_the_sharing() -> None:
    fast = rt.RNN(I, H, 2)
    pointers = [p.data_ptr() for p in fast.parameters()]
    fast.cpu().to(torch.float32).train()
    assert [p.data_ptr() for p in fast.parameters()] == pointers and _shared(fast)
    fast.to(torch.float64)
    assert _shared(fast) and list(fast._rnnfast_runners) == [("all", torch.float64)]
    fast.half()  # not a fast-path dtype: PyTorch's implementation runs
    assert fast._rnnfast_runners == {} and fast(torch.randn(T, B, I, dtype=torch.half))[0].dtype == torch.half


# ---------------------------------------------------------------------------------------------------------------------
# Fallbacks and errors
# ---------------------------------------------------------------------------------------------------------------------

def test_other_dtypes_and_bad_arguments_go_to_torch() -> None:
    ref, fast = _pair(torch.nn.RNN, rt.RNN, I, H, dtype=torch.bfloat16)
    x = torch.randn(T, B, I, dtype=torch.bfloat16)
    assert torch.equal(fast(x)[0], ref(x)[0])  # PyTorch's own implementation
    fast32 = rt.RNN(I, H)
    cases = [
        (torch.randn(T, B, I, dtype=torch.float64), None),   # dtype differs from the weights'
        (torch.randn(T, B, I + 1), None),                    # wrong input size
        (torch.randn(T, B, I), torch.zeros(1, B + 1, H)),    # wrong state shape
        (torch.randn(T, B, I), torch.zeros(B, H)),           # state of the wrong rank
        (torch.randn(B, I, 2, 2), None),                     # 4-D input
    ]
    for x_bad, h_bad in cases:
        ref32 = torch.nn.RNN(I, H)
        with pytest.raises((RuntimeError, ValueError)) as expected:
            ref32(x_bad, h_bad)
        with pytest.raises(expected.type, match=re.escape(str(expected.value))):
            fast32(x_bad, h_bad)
    with pytest.raises(ValueError, match="1D or 2D"):
        rt.RNNCell(I, H)(torch.randn(1, 2, I))


# ---------------------------------------------------------------------------------------------------------------------
# convert()
# ---------------------------------------------------------------------------------------------------------------------

class _MyRNN(torch.nn.RNN):
    pass


def test_convert_swaps_every_rnn_keeping_weights_mode_parameters_and_hooks() -> None:
    torch.manual_seed(0)
    shared = torch.nn.RNN(4, 4)
    model = torch.nn.Sequential(
        torch.nn.RNN(3, 4, 2, dropout=0.5, batch_first=True),
        torch.nn.ModuleList([torch.nn.RNNCell(4, 5), shared]),
        torch.nn.ModuleDict({"again": shared, "mine": _MyRNN(4, 4), "head": torch.nn.Linear(4, 1)}),
    )
    model.eval()
    model[1][0].train()
    reference = copy.deepcopy(model)
    calls = []
    model[0].register_forward_hook(lambda *args: calls.append("hook"))
    params = list(model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rng_state = torch.get_rng_state()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        converted = rt.convert(model)
    assert converted is model
    assert torch.equal(torch.get_rng_state(), rng_state)  # nothing drawn
    assert type(model[0]) is rt.RNN and type(model[1][0]) is rt.RNNCell and type(model[1][1]) is rt.RNN
    assert model[2]["again"] is model[1][1]  # one module, one replacement
    assert type(model[2]["mine"]) is _MyRNN  # subclasses are left alone
    assert list(model.parameters()) == params  # the very same Parameter objects (the optimizer keeps working)
    assert not model[0].training and model[1][0].training
    assert model[0].batch_first and model[0].dropout == 0.5 and model[0].num_layers == 2
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name
    assert _shared(model[0]) and _shared(model[1][0])

    x = torch.randn(2, 5, 3)
    out, _ = model[0](x)
    _assert_same([out], [reference[0](x)[0]], torch.float32)
    assert calls == ["hook"]
    h = model[1][0](out[:, -1])
    _assert_same([h], [reference[1][0](reference[0](x)[0][:, -1])], torch.float32)
    (out.sum() + h.sum()).backward()
    opt.step()

    lone = torch.nn.RNNCell(2, 3, bias=False, nonlinearity="relu", dtype=torch.float64)
    new = rt.convert(lone)
    assert type(new) is rt.RNNCell and new.weight_ih is lone.weight_ih and not new.bias
    assert rt.convert(new) is new


def test_benchmark_smoke() -> None:
    (result,) = rt.benchmark(["seed_1layer"], repeat=1, min_seconds=0.0)
    assert result["name"] == "seed_1layer" and result["torch_ms"] > 0 and result["rnnfast_ms"] > 0
    assert "seed_1layer" in rt.format_benchmark([result])


@pytest.mark.parametrize("default,large", [(True, False), (False, False), (True, True)])
def test_default_threads_lend_small_calls_only_the_cores_torch_leaves(monkeypatch, default, large) -> None:
    # PyTorch's workers spin after its parallel regions: a small call under rnnfast's default thread count runs on
    # the cores they leave; a count set by the user, or a large call, runs as set.
    caps = []
    monkeypatch.setattr(rt._runner._core, "num_threads_is_default", lambda: default)
    monkeypatch.setattr(rt._runner._core, "set_thread_cap", caps.append)
    if large:
        monkeypatch.setattr(rt._runner, "_SHARED_CORES_MAX_WORK", 0)
    saved = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        rnn = rt.RNN(I, H, 2, dropout=0.5)
        x = torch.randn(T, B, I, requires_grad=True)
        rnn(x)[0].sum().backward()
        with torch.no_grad():
            rnn(x)
    finally:
        torch.set_num_threads(saved)
    cap = max(1, rnnfast.get_num_threads() - 2)
    assert caps == ([cap, 0] * 3 if default and not large else [])
