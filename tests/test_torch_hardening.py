"""rnnfast.torch under harder use: backwards in several threads at once, double backward, torch.func transforms and
batched gradients, torch's argument types, and PyTorch's own module test inputs (skipped without torch)."""

from __future__ import annotations

import copy
import io
import pickle
import re
import warnings

import pytest

torch = pytest.importorskip("torch")

import rnnfast.torch as rt  # noqa: E402  (needs torch)
from conftest import run_threads  # noqa: E402
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence  # noqa: E402

T, B, I, H = 4, 2, 3, 4
F64 = torch.float64
TOL = dict(rtol=1e-9, atol=1e-11)


def _pair(cls_torch, cls_fast, *args, seed=0, **kwargs):
    """The PyTorch module and the rnnfast one, both constructed after the same seed (so with equal weights)."""
    torch.manual_seed(seed)
    ref = cls_torch(*args, **kwargs)
    torch.manual_seed(seed)
    fast = cls_fast(*args, **kwargs)
    return ref, fast


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _assert_close(actual, expected, what=""):
    assert len(actual) == len(expected), what
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert (a is None) == (e is None), (what, i)
        if a is not None:
            torch.testing.assert_close(a, e, **TOL, msg=f"{what} [{i}]")


def _param_grads(module):
    return [p.grad for p in module.parameters()]


# ---------------------------------------------------------------------------------------------------------------------
# 1. Backwards through one shared module in several threads at once (Hogwild)
# ---------------------------------------------------------------------------------------------------------------------



def _stack_loss(module, x):
    out, h_n = module(x)
    return (out.sin() * torch.linspace(-1, 1, out.shape[-1], dtype=F64)).sum() + h_n.square().sum()


@pytest.mark.parametrize("layers,bidi", [(1, False), (2, True)])
def test_concurrent_backwards_through_one_rnn_add_up_every_loss(layers, bidi) -> None:
    threads, iterations = 8, 6
    ref, fast = _pair(torch.nn.RNN, rt.RNN, 6, 16, layers, bidirectional=bidi, dtype=F64)
    xs = _randn(iterations, threads, 24, 3, 6)  # each thread and iteration its own input, so its own loss
    fast_x = [[xs[i, k].clone().requires_grad_() for k in range(threads)] for i in range(iterations)]
    ref_x = [[xs[i, k].clone().requires_grad_() for k in range(threads)] for i in range(iterations)]
    for i in range(iterations):  # the expectation: every loss's gradient, one after the other
        for k in range(threads):
            _stack_loss(ref, ref_x[i][k]).backward()

    def work(k, barrier):
        for i in range(iterations):
            loss = _stack_loss(fast, fast_x[i][k])  # forwards overlap too
            barrier.wait()  # so do the backwards
            loss.backward()

    run_threads(threads, work)
    _assert_close(_param_grads(fast), _param_grads(ref), "parameters")
    _assert_close([x.grad for row in fast_x for x in row], [x.grad for row in ref_x for x in row], "inputs")


def test_concurrent_backwards_through_one_cell_add_up_every_loss() -> None:
    threads, iterations = 8, 6
    ref, fast = _pair(torch.nn.RNNCell, rt.RNNCell, 6, 16, dtype=F64)
    xs = _randn(iterations, threads, 12, 3, 6, seed=1)

    def loss_of(cell, x):
        h, loss = None, 0
        for x_t in x:  # BPTT through the cell by hand
            h = cell(x_t, h)
            loss = loss + h.sin().sum()
        return loss

    for i in range(iterations):
        for k in range(threads):
            loss_of(ref, xs[i, k]).backward()

    def work(k, barrier):
        for i in range(iterations):
            loss = loss_of(fast, xs[i, k])
            barrier.wait()
            loss.backward()

    run_threads(threads, work)
    _assert_close(_param_grads(fast), _param_grads(ref), "parameters")


# ---------------------------------------------------------------------------------------------------------------------
# 2. Double backward
# ---------------------------------------------------------------------------------------------------------------------

def _check_module(check, module, inputs, **kwargs) -> None:
    """gradcheck / gradgradcheck of the module's outputs in its inputs and every parameter (via functional_call)."""
    names = [name for name, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]

    def fn(*args):
        out = torch.func.functional_call(module, dict(zip(names, args[len(inputs):])), args[:len(inputs)])
        return tuple(o.data if isinstance(o, PackedSequence) else o for o in (out if isinstance(out, tuple)
                                                                                else (out,)))

    assert check(fn, (*inputs, *params), eps=1e-6, atol=1e-5, rtol=1e-4, **kwargs)


RNN_CASES = [  # layers, bidirectional, batch_first, nonlinearity, with_h0
    (1, False, False, "tanh", True),
    (1, False, True, "relu", False),
    (2, True, False, "tanh", False),
    (2, True, True, "tanh", True),
]


@pytest.mark.parametrize("layers,bidi,batch_first,act,with_h0", RNN_CASES)
def test_gradgradcheck_rnn(layers, bidi, batch_first, act, with_h0) -> None:
    torch.manual_seed(0)
    module = rt.RNN(I, H, layers, act, batch_first=batch_first, bidirectional=bidi, dtype=F64)
    D = 2 if bidi else 1
    x = _randn(*((B, T, I) if batch_first else (T, B, I))).requires_grad_()
    h0 = _randn(layers * D, B, H, seed=1).requires_grad_() if with_h0 else None
    _check_module(torch.autograd.gradgradcheck, module, (x, h0) if with_h0 else (x,))


def test_gradgradcheck_packed_sequence() -> None:
    torch.manual_seed(0)
    module = rt.RNN(I, H, 2, bidirectional=True, dtype=F64)
    packed = pack_padded_sequence(_randn(T, 3, I), torch.tensor([2, 4, 3]), enforce_sorted=False)
    data = packed.data.clone().requires_grad_()
    h0 = _randn(4, 3, H, seed=1).requires_grad_()
    names = [name for name, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]

    def fn(data, h0, *weights):
        seq = PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
        out, h_n = torch.func.functional_call(module, dict(zip(names, weights)), (seq, h0))
        return out.data, h_n

    assert torch.autograd.gradgradcheck(fn, (data, h0, *params), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("bias,act,unbatched", [(True, "tanh", False), (False, "relu", False), (True, "tanh", True)])
def test_gradgradcheck_cell(bias, act, unbatched) -> None:
    torch.manual_seed(0)
    cell = rt.RNNCell(I, H, bias=bias, nonlinearity=act, dtype=F64)
    x = _randn(*((I,) if unbatched else (B, I))).requires_grad_()
    h = _randn(*((H,) if unbatched else (B, H)), seed=1).requires_grad_()
    _check_module(torch.autograd.gradgradcheck, cell, (x, h))
    _check_module(torch.autograd.gradgradcheck, cell, (x,))


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_gradient_penalty_matches_torch(dropout) -> None:
    ref, fast = _pair(torch.nn.RNN, rt.RNN, I, H, 3, dropout=dropout, bidirectional=True, batch_first=True,
                      dtype=F64)
    ref_cell, fast_cell = _pair(torch.nn.RNNCell, rt.RNNCell, 2 * H, H, seed=1, dtype=F64)
    x = _randn(B, T, I)
    results = []
    for rnn, cell in ((ref, ref_cell), (fast, fast_cell)):
        xi = x.clone().requires_grad_()
        torch.manual_seed(5)  # the same dropout masks
        out, h_n = rnn(xi)
        h = cell(out[:, -1], h_n[-1])
        loss = out.tanh().sum() + h.square().sum()
        (gx,) = torch.autograd.grad(loss, xi, create_graph=True)
        assert gx.grad_fn is not None
        (loss + gx.square().sum()).backward()  # the penalty's second derivatives reach the weights
        results.append([gx, xi.grad, *_param_grads(rnn), *_param_grads(cell)])
    _assert_close(results[1], results[0])


def test_ordinary_backward_stays_on_the_kernels(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("PyTorch's implementation ran")

    monkeypatch.setattr(rt._functions, "_torch_stack", refuse)
    monkeypatch.setattr(rt._functions, "_torch_cell", refuse)
    rnn = rt.RNN(I, H, 2, dtype=F64)
    cell = rt.RNNCell(H, H, dtype=F64)
    x = _randn(T, B, I).requires_grad_()
    out, h_n = rnn(x)
    (cell(out[-1]).sum() + h_n.sum()).backward()
    assert x.grad is not None and all(p.grad is not None for p in [*rnn.parameters(), *cell.parameters()])


def test_create_graph_backward_refuses_an_input_modified_in_place() -> None:
    rnn = rt.RNN(I, H, dtype=F64)
    x = _randn(T, B, I)
    out, _ = rnn(x)
    x.add_(1)
    with pytest.raises(ValueError, match="^x: it was modified in place"):
        torch.autograd.grad(out.sum(), rnn.weight_hh_l0, create_graph=True)


# ---------------------------------------------------------------------------------------------------------------------
# 3. Batched gradients and torch.func
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layers,bidi,batch_first,act,with_h0", RNN_CASES[::3])
def test_gradcheck_with_batched_grad_rnn(layers, bidi, batch_first, act, with_h0) -> None:
    torch.manual_seed(0)
    module = rt.RNN(I, H, layers, act, batch_first=batch_first, bidirectional=bidi, dtype=F64)
    D = 2 if bidi else 1
    x = _randn(*((B, T, I) if batch_first else (T, B, I))).requires_grad_()
    h0 = _randn(layers * D, B, H, seed=1).requires_grad_() if with_h0 else None
    _check_module(torch.autograd.gradcheck, module, (x, h0) if with_h0 else (x,), check_batched_grad=True)


def test_gradcheck_with_batched_grad_packed_and_cell() -> None:
    torch.manual_seed(0)
    module = rt.RNN(I, H, 2, bidirectional=True, dtype=F64)
    packed = pack_padded_sequence(_randn(T, 3, I), torch.tensor([2, 4, 3]), enforce_sorted=False)
    data = packed.data.clone().requires_grad_()

    def fn(data):
        out, h_n = module(PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices))
        return out.data, h_n

    assert torch.autograd.gradcheck(fn, (data,), eps=1e-6, atol=1e-5, rtol=1e-4, check_batched_grad=True)
    cell = rt.RNNCell(I, H, nonlinearity="relu", dtype=F64)
    _check_module(torch.autograd.gradcheck, cell, (_randn(B, I).requires_grad_(), _randn(B, H).requires_grad_()),
                  check_batched_grad=True)


def test_batched_grads_of_autograd_grad_match_torch() -> None:
    ref, fast = _pair(torch.nn.RNN, rt.RNN, I, H, 2, bidirectional=True, dtype=F64)
    x = _randn(T, B, I)
    vectors = _randn(5, T, B, 2 * H, seed=2)
    results = []
    for module in (ref, fast):
        xi = x.clone().requires_grad_()
        out, _ = module(xi)
        results.append(torch.autograd.grad(out, [xi, *module.parameters()], vectors, is_grads_batched=True))
    _assert_close(results[1], results[0])


def _same_behaviour(fn, ref, fast, what=""):
    """``fn(fast)`` gives ``fn(ref)``'s values, or raises its error: vmap over ``torch.nn.RNN``'s forward raises
    in this torch ("Batching rule not implemented for aten::rnn_tanh.input"), and the rnnfast module, which runs
    PyTorch's implementation there, raises the same."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="There is a performance drop")  # vmap's per-item fallback
            expected = fn(ref)
    except RuntimeError as exc:
        with pytest.raises(type(exc), match=re.escape(str(exc))):
            fn(fast)
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="There is a performance drop")
        _assert_close(fn(fast), expected, what)


def test_torch_func_grad_and_vmap_match_torch() -> None:
    ref, fast = _pair(torch.nn.RNN, rt.RNN, I, H, 2, bidirectional=True, batch_first=True, dtype=F64)
    params = {name: p.detach().clone() for name, p in ref.named_parameters()}
    x = _randn(B, T, I)
    h0 = _randn(4, B, H, seed=2)
    examples = _randn(5, T, I, seed=1)

    def loss(module, params, x, h0=None):
        out, h_n = torch.func.functional_call(module, params, (x, h0))
        return out.sin().sum() + h_n.square().sum()

    _same_behaviour(lambda m: list(torch.func.grad(loss, argnums=(1, 2, 3))(m, params, x, h0)[0].values()),
                    ref, fast, "grad")
    _same_behaviour(lambda m: list(torch.func.grad_and_value(loss, argnums=2)(m, params, x)), ref, fast, "value")
    _same_behaviour(lambda m: list(torch.func.jacrev(lambda x: m(x)[1])(x)), ref, fast, "jacrev")
    _same_behaviour(lambda m: list(torch.func.vmap(m)(examples)), ref, fast, "vmap")
    _same_behaviour(lambda m: list(torch.func.vmap(torch.func.grad(loss, argnums=1), in_dims=(None, None, 0))(
        m, params, examples).values()), ref, fast, "per-example grads")

    ref_cell, fast_cell = _pair(torch.nn.RNNCell, rt.RNNCell, I, H, dtype=F64)
    cell_params = {name: p.detach().clone() for name, p in ref_cell.named_parameters()}
    steps = _randn(5, B, I, seed=3)

    def cell_loss(cell, params, x):
        return torch.func.functional_call(cell, params, (x,)).tanh().sum()

    _same_behaviour(lambda c: list(torch.func.jacrev(lambda p: torch.func.functional_call(c, p, (steps[0],)))(
        cell_params).values()), ref_cell, fast_cell, "cell jacrev")
    _same_behaviour(lambda c: [torch.func.vmap(c)(steps)], ref_cell, fast_cell, "cell vmap")
    _same_behaviour(lambda c: list(torch.func.vmap(torch.func.grad(cell_loss, argnums=1), in_dims=(None, None, 0))(
        c, cell_params, steps).values()), ref_cell, fast_cell, "cell per-example grads")


# ---------------------------------------------------------------------------------------------------------------------
# 4. The argument types torch.nn.RNN / RNNCell accept
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [dict(bias=1), dict(bias=0), dict(bidirectional=1), dict(bidirectional=0),
                                    dict(batch_first=1)])
def test_non_bool_flags_as_torch_accepts_them(kwargs) -> None:
    classes = [(torch.nn.RNN, rt.RNN, (I, H, 2))]
    if "bias" in kwargs:
        classes.append((torch.nn.RNNCell, rt.RNNCell, (I, H)))
    for ref_cls, fast_cls, args in classes:
        try:
            ref_cls(*args, **kwargs)
        except Exception as exc:  # what torch refuses (bias=1 for RNN), rnnfast refuses the same way
            with pytest.raises(type(exc), match=re.escape(str(exc))):
                fast_cls(*args, **kwargs)
            continue
        # torch.nn.RNN takes bidirectional=1 but its forward then refuses it; compare with the bool.
        ref, _ = _pair(ref_cls, ref_cls, *args, **{k: bool(v) for k, v in kwargs.items()}, dtype=F64)
        _, fast = _pair(ref_cls, fast_cls, *args, **kwargs, dtype=F64)
        assert [n for n, _ in fast.named_parameters()] == [n for n, _ in ref.named_parameters()]
        x = _randn(*((T, B, I) if fast_cls is rt.RNN else (B, I)))
        results = []
        for module in (ref, fast):
            xi = x.clone().requires_grad_()
            out = module(xi)
            outputs = list(out) if isinstance(out, tuple) else [out]
            (gx,) = torch.autograd.grad(outputs[0].sin().sum(), xi, create_graph=True)  # PyTorch's ops too
            (outputs[0].sum() + gx.sum()).backward()
            results.append([*outputs, gx, xi.grad, *_param_grads(module)])
        _assert_close(results[1], results[0], f"{fast_cls.__name__} {kwargs}")
        assert fast._rnnfast_runners  # on rnnfast's kernels


def test_cell_sizes_and_nonlinearity_that_only_torch_runs() -> None:
    # torch.nn.RNNCell takes zero sizes (and refuses an unknown nonlinearity only in forward): PyTorch's
    # implementation runs them.
    for args in ((0, H), (I, 0)):
        ref, fast = _pair(torch.nn.RNNCell, rt.RNNCell, *args)
        x = torch.randn(B, args[0])
        torch.testing.assert_close(fast(x), ref(x))
    cell = rt.RNNCell(I, H, nonlinearity="gelu")
    with pytest.raises(RuntimeError, match="Unknown nonlinearity"):
        cell(torch.randn(B, I))


# ---------------------------------------------------------------------------------------------------------------------
# 5. PyTorch's own module test inputs (torch.testing._internal.common_modules)
# ---------------------------------------------------------------------------------------------------------------------

def _module_db_inputs():
    try:
        from torch.testing._internal.common_modules import module_db
    except Exception as exc:  # a torch without its testing internals, or without their dependencies (expecttest)
        pytest.skip(f"torch.testing._internal.common_modules: {exc!r}")
    cases = []
    for info in module_db:
        if info.module_cls not in (torch.nn.RNN, torch.nn.RNNCell):
            continue
        fast_cls = rt.RNN if info.module_cls is torch.nn.RNN else rt.RNNCell
        inputs = info.module_inputs_func(info, device="cpu", dtype=F64, requires_grad=True, training=True)
        cases.extend((info.module_cls, fast_cls, module_input) for module_input in inputs)
    return cases


def _flat(output):
    outputs = output if isinstance(output, tuple) else (output,)
    return [o.data if isinstance(o, PackedSequence) else o for o in outputs]


def _detached_inputs(module_input):
    """A fresh copy of a ModuleInput's forward arguments (leaves that require grad where the originals did)."""
    def copy_arg(a):
        if isinstance(a, torch.Tensor):
            return a.detach().clone().requires_grad_(a.requires_grad)
        if isinstance(a, PackedSequence):
            return PackedSequence(copy_arg(a.data), a.batch_sizes, a.sorted_indices, a.unsorted_indices)
        return a
    return [copy_arg(a) for a in module_input.forward_input.args], {
        k: copy_arg(v) for k, v in module_input.forward_input.kwargs.items()}


def _leaves(args, kwargs):
    tensors = [a.data if isinstance(a, PackedSequence) else a for a in [*args, *kwargs.values()]]
    return [t for t in tensors if isinstance(t, torch.Tensor) and t.requires_grad]


def test_pytorch_module_db_inputs() -> None:
    cases = _module_db_inputs()
    assert {ref_cls for ref_cls, _, _ in cases} == {torch.nn.RNN, torch.nn.RNNCell}
    seen = set()
    for ref_cls, fast_cls, module_input in cases:
        c_args, c_kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
        seen.add((ref_cls.__name__, *sorted(c_kwargs.items())))
        what = f"{ref_cls.__name__}{c_args}{c_kwargs}"
        ref = ref_cls(*c_args, **c_kwargs).to(F64)
        fast = fast_cls(*c_args, **c_kwargs).to(F64)
        fast.load_state_dict(ref.state_dict())
        ref.train()
        fast.train()

        # Forward and first-order gradients equal torch's, for the inputs and the parameters.
        results = []
        for module in (ref, fast):
            args, kwargs = _detached_inputs(module_input)
            outputs = _flat(module(*args, **kwargs))
            sum(((o * torch.linspace(-1, 1, o.numel(), dtype=F64).view_as(o)).sum() for o in outputs)).backward()
            results.append([*outputs, *[t.grad for t in _leaves(args, kwargs)], *_param_grads(module)])
        _assert_close(results[1], results[0], what)

        # gradcheck and gradgradcheck as PyTorch's test_modules.py runs them (its wrappers' defaults: batched
        # gradients, fast mode), in the inputs and the module's own parameters, which it perturbs in place.
        args, kwargs = _detached_inputs(module_input)
        params = tuple(fast.parameters())
        flat_inputs = [*args, *params]

        def fn(*flat, args=args, kwargs=kwargs):
            return tuple(_flat(fast(*flat[:len(args)], **kwargs)))

        for check in (torch.autograd.gradcheck, torch.autograd.gradgradcheck):
            assert check(fn, flat_inputs, check_batched_grad=True, fast_mode=True), (check.__name__, what)

        # Pickling and deepcopy keep the outputs.
        args, kwargs = _detached_inputs(module_input)
        expected = _flat(fast(*args, **kwargs))
        buffer = io.BytesIO()
        torch.save(fast, buffer)
        buffer.seek(0)
        for twin in (copy.deepcopy(fast), pickle.loads(pickle.dumps(fast)), torch.load(buffer, weights_only=False)):
            assert type(twin) is fast_cls
            _assert_close(_flat(twin(*args, **kwargs)), expected, f"{what} copied")
    # Every constructor option of the entries ran, each value of each.
    options = {(name, key, value) for name, *items in seen for key, value in items}
    assert {("RNN", key, value) for key in ("bias", "batch_first", "bidirectional") for value in (False, True)
            } | {("RNN", "nonlinearity", "relu"), ("RNNCell", "nonlinearity", "relu")} <= options
