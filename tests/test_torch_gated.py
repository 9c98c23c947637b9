"""rnnfast.torch.LSTM / GRU / LSTMCell / GRUCell: drop-in torch.nn modules on rnnfast's gated kernels (skipped when
torch is not installed). Each is compared with the stock torch.nn module of the same weights."""

from __future__ import annotations

import copy
import inspect
import io
import itertools
import pickle
import re
import warnings

import pytest

torch = pytest.importorskip("torch")

import rnnfast.torch as rt  # noqa: E402  (needs torch)
from conftest import run_threads  # noqa: E402
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pack_sequence, pad_packed_sequence  # noqa: E402

T, B, I, H, P = 5, 3, 4, 5, 3
F32, F64 = torch.float32, torch.float64
# PyTorch's own LSTM warns (once) when oneDNN cannot run a projection; the stock modules here trigger it.
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN:UserWarning")
TOL = {F32: dict(rtol=3e-4, atol=3e-5), F64: dict(rtol=1e-9, atol=1e-11)}
STACKS = {"lstm": (torch.nn.LSTM, rt.LSTM), "gru": (torch.nn.GRU, rt.GRU)}
CELLS = {"lstm": (torch.nn.LSTMCell, rt.LSTMCell), "gru": (torch.nn.GRUCell, rt.GRUCell)}


def _pair(cls_torch, cls_fast, *args, seed=0, **kwargs):
    """The PyTorch module and the rnnfast one, both constructed after the same seed (so with equal weights)."""
    torch.manual_seed(seed)
    ref = cls_torch(*args, **kwargs)
    torch.manual_seed(seed)
    fast = cls_fast(*args, **kwargs)
    return ref, fast


def _randn(*shape, seed=0, dtype=F64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _flat(result):
    """A module's result as a flat list of tensors: (out, (h, c)) -> [out, h, c]; PackedSequence -> its data."""
    if isinstance(result, PackedSequence):  # a named tuple: not flattened
        return [result.data]
    if isinstance(result, (tuple, list)):
        return [t for r in result for t in _flat(r)]
    return [result]


def _loss(tensors, seed=10):
    """A loss using every output with its own random weights (so every output's gradient matters)."""
    return sum((t * _randn(*t.shape, seed=seed + k, dtype=t.dtype)).sum() + t.square().sum()
               for k, t in enumerate(tensors))


def _param_grads(module):
    return [p.grad for p in module.parameters()]


def _assert_same(actual, expected, dtype=F64, what=""):
    assert len(actual) == len(expected), what
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert (a is None) == (e is None), (what, i)
        if a is not None:
            assert a.shape == e.shape, (what, i, a.shape, e.shape)
            torch.testing.assert_close(a, e, **TOL[dtype], msg=f"{what} [{i}]")


def _shared(module) -> bool:
    """Whether every parameter is a view of the rnnfast buffer the kernels read."""
    weights = module._rnnfast_weights()
    runner = module._rnnfast_runners[("all", weights[0].dtype)]
    return all(rt._runner._is_view_of(w, v) for w, v in zip(weights, runner.views))


def _state(kind, layers, D, batch, proj=0, seed=1, dtype=F64, hidden=H):
    """hx for a stack: a tensor (GRU) or an (h0, c0) pair (LSTM); batch None for unbatched."""
    lead = (layers * D,) if batch is None else (layers * D, batch)
    if kind == "gru":
        return _randn(*lead, hidden, seed=seed, dtype=dtype)
    return (_randn(*lead, proj or hidden, seed=seed, dtype=dtype),
            _randn(*lead, hidden, seed=seed + 1, dtype=dtype))


def _leaf(state):
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.clone().requires_grad_() for s in state)
    return state.clone().requires_grad_()


def _leaves(state):
    return [] if state is None else (list(state) if isinstance(state, tuple) else [state])


# ---------------------------------------------------------------------------------------------------------------------
# The same modules as torch.nn's
# ---------------------------------------------------------------------------------------------------------------------

def test_same_classes_constructors_parameters_repr_and_random_draws() -> None:
    for ref_cls, fast_cls in [*STACKS.values(), *CELLS.values()]:
        assert fast_cls.__mro__[1:3] == (rt._modules._Shared, ref_cls)
        assert fast_cls.__name__ in rt.__all__
    lstm_params = list(inspect.signature(rt.LSTM.__init__).parameters.values())[1:]
    assert [(p.name, p.default) for p in lstm_params] == [
        ("input_size", inspect.Parameter.empty), ("hidden_size", inspect.Parameter.empty), ("num_layers", 1),
        ("bias", True), ("batch_first", False), ("dropout", 0.0), ("bidirectional", False), ("proj_size", 0),
        ("device", None), ("dtype", None)]
    gru_params = list(inspect.signature(rt.GRU.__init__).parameters)[1:]
    assert gru_params == [p.name for p in lstm_params if p.name != "proj_size"]
    for ref_cls, fast_cls in CELLS.values():
        assert list(inspect.signature(fast_cls.__init__).parameters) == list(
            inspect.signature(ref_cls.__init__).parameters)

    cases = [(torch.nn.LSTM, rt.LSTM, (I, H, 2, False, True, 0.0, True, P)),
             (torch.nn.GRU, rt.GRU, (I, H, 3, True, True, 0.0, True)),
             (torch.nn.LSTMCell, rt.LSTMCell, (I, H, False)), (torch.nn.GRUCell, rt.GRUCell, (I, H))]
    for ref_cls, fast_cls, args in cases:
        ref, fast = _pair(ref_cls, fast_cls, *args, dtype=F64)
        after_torch = torch.rand(3)
        torch.manual_seed(0)
        fast_cls(*args, dtype=F64)
        assert torch.equal(torch.rand(3), after_torch)  # swapping the class changes no later random number
        assert repr(fast) == repr(ref)
        assert [(n, p.shape) for n, p in fast.named_parameters()] == [(n, p.shape) for n, p in ref.named_parameters()]
        for (name, a), (_, b) in zip(fast.state_dict().items(), ref.state_dict().items()):
            assert torch.equal(a, b), name
        assert _shared(fast)
        if isinstance(ref, torch.nn.RNNBase):
            assert fast._flat_weights_names == ref._flat_weights_names
    # Bad arguments raise PyTorch's own errors.
    for bad in (dict(proj_size=H), dict(proj_size=-1), dict(dropout=1.5)):
        with pytest.raises(ValueError) as expected:
            torch.nn.LSTM(I, H, **bad)
        with pytest.raises(ValueError, match=re.escape(str(expected.value))):
            rt.LSTM(I, H, **bad)


def test_parameters_share_the_buffer_through_optimizer_steps_and_dtype_changes() -> None:
    for fast in (rt.LSTM(I, H, 2, bidirectional=True, proj_size=P), rt.GRU(I, H, 2), rt.LSTMCell(I, H),
                 rt.GRUCell(I, H)):
        params = list(fast.parameters())
        pointers = [p.data_ptr() for p in params]
        opt = torch.optim.SGD(fast.parameters(), lr=0.1, momentum=0.9)
        x = torch.randn(T, B, I) if isinstance(fast, torch.nn.RNNBase) else torch.randn(B, I)
        _loss(_flat(fast(x))).backward()
        opt.step()
        assert [p.data_ptr() for p in params] == pointers and _shared(fast)
        fast.double()
        assert list(fast.parameters()) == params and all(p.dtype == F64 for p in params) and _shared(fast)


# ---------------------------------------------------------------------------------------------------------------------
# Outputs and gradients equal torch.nn's
# ---------------------------------------------------------------------------------------------------------------------

def _compare_stack(ref, fast, x, hx, dtype, what=""):
    results = []
    for module in (ref, fast):
        xi = x.clone().requires_grad_()
        hi = _leaf(hx)
        outputs = _flat(module(xi, hi))
        _loss(outputs).backward()
        results.append([*outputs, xi.grad, *[h.grad for h in _leaves(hi)], *_param_grads(module)])
    _assert_same(results[1], results[0], dtype, what)


STACK_GRID = [(kind, layers, bidi, batch_first, bias, dtype, unbatched, with_hx, proj)
              for kind, layers, bidi, batch_first, bias, dtype, unbatched, with_hx, proj in itertools.product(
                  ["lstm", "gru"], [1, 2, 3], [False, True], [False, True], [True, False], [F32, F64],
                  [False, True], [False, True], [0, P])
              if not (kind == "gru" and proj)]


@pytest.mark.parametrize("kind,layers,bidi,batch_first,bias,dtype,unbatched,with_hx,proj", STACK_GRID)
def test_stack_matches_torch(kind, layers, bidi, batch_first, bias, dtype, unbatched, with_hx, proj) -> None:
    ref_cls, fast_cls = STACKS[kind]
    extra = dict(proj_size=proj) if kind == "lstm" else {}
    ref, fast = _pair(ref_cls, fast_cls, I, H, layers, bias, batch_first, 0.0, bidi, **extra, dtype=dtype)
    shape = (T, I) if unbatched else ((B, T, I) if batch_first else (T, B, I))
    x = _randn(*shape, dtype=dtype)
    hx = _state(kind, layers, 2 if bidi else 1, None if unbatched else B, proj, dtype=dtype) if with_hx else None
    _compare_stack(ref, fast, x, hx, dtype)
    assert fast._rnnfast_runners  # it ran on rnnfast's kernels


@pytest.mark.parametrize("kind,bias,dtype,unbatched,with_hx",
                         list(itertools.product(["lstm", "gru"], [True, False], [F32, F64], [False, True],
                                                [False, True])))
def test_cell_matches_torch(kind, bias, dtype, unbatched, with_hx) -> None:
    ref_cls, fast_cls = CELLS[kind]
    ref, fast = _pair(ref_cls, fast_cls, I, H, bias, dtype=dtype)
    x = _randn(*((I,) if unbatched else (B, I)), dtype=dtype)
    shape = (H,) if unbatched else (B, H)
    hx = None
    if with_hx:
        hx = (_randn(*shape, seed=1, dtype=dtype), _randn(*shape, seed=2, dtype=dtype)) if kind == "lstm" \
            else _randn(*shape, seed=1, dtype=dtype)
    _compare_stack(ref, fast, x, hx, dtype)
    assert fast._rnnfast_runners


def test_only_some_outputs_in_the_loss() -> None:
    # Each output alone (the others' gradients are None in the kernels' backward), and an LSTM's c_n alone.
    for kind, module_args in (("lstm", (I, H, 2)), ("lstm_proj", (I, H, 2)), ("gru", (I, H, 2))):
        ref_cls, fast_cls = STACKS[kind[:4] if kind != "gru" else "gru"]
        extra = dict(proj_size=P) if kind == "lstm_proj" else {}
        ref, fast = _pair(ref_cls, fast_cls, *module_args, bidirectional=True, **extra, dtype=F64)
        x = _randn(T, B, I)
        count = 3 if kind != "gru" else 2
        for pick in range(count):
            results = []
            for module in (ref, fast):
                module.zero_grad()
                xi = x.clone().requires_grad_()
                _flat(module(xi))[pick].sin().sum().backward()
                results.append([xi.grad, *_param_grads(module)])
            _assert_same(results[1], results[0], F64, f"{kind} output {pick}")
    ref, fast = _pair(torch.nn.LSTMCell, rt.LSTMCell, I, H, dtype=F64)
    for pick in (0, 1):
        results = []
        for module in (ref, fast):
            xi = _randn(B, I).requires_grad_()
            h = _randn(B, H, seed=1).requires_grad_()
            c = _randn(B, H, seed=2).requires_grad_()
            module(xi, (h, c))[pick].sin().sum().backward()
            results.append([xi.grad, h.grad, c.grad, *_param_grads(module)])
        _assert_same(results[1], results[0], F64, f"cell output {pick}")


def test_only_part_of_the_state_requires_grad_and_inference() -> None:
    ref, fast = _pair(torch.nn.LSTM, rt.LSTM, I, H, 2, proj_size=P, dtype=F64)
    x = _randn(T, B, I)
    h0, c0 = _state("lstm", 2, 1, B, P)
    results = []
    for module in (ref, fast):
        module.zero_grad()
        c = c0.clone().requires_grad_()
        outputs = _flat(module(x, (h0, c)))
        _loss(outputs).backward()
        results.append([*outputs, c.grad, *_param_grads(module)])
    _assert_same(results[1], results[0])
    for ref_cls, fast_cls in [*STACKS.values(), *CELLS.values()]:
        ref, fast = _pair(ref_cls, fast_cls, I, H, dtype=F32)
        x = torch.randn(T, B, I) if isinstance(ref, torch.nn.RNNBase) else torch.randn(B, I)
        expected = _flat(ref(x))
        with torch.no_grad():
            got = _flat(fast(x))
        assert all(t.grad_fn is None for t in got)
        _assert_same(got, expected, F32)
        with torch.inference_mode():
            _assert_same(_flat(fast(x)), expected, F32)


def test_cells_stepped_by_hand_match_torch() -> None:
    ref1, fast1 = _pair(torch.nn.LSTMCell, rt.LSTMCell, I, 6, seed=1, dtype=F64)
    ref2, fast2 = _pair(torch.nn.GRUCell, rt.GRUCell, 6, H, seed=2, dtype=F64)
    x = _randn(T, B, I)
    results = []
    for c1, c2 in ((ref1, ref2), (fast1, fast2)):
        hx1, h2, loss = None, None, 0
        for x_t in x:
            hx1 = c1(x_t, hx1)
            h2 = c2(hx1[0] * hx1[1], h2)
            loss = loss + h2.square().mean()
        loss.backward()
        results.append([*hx1, h2, *_param_grads(c1), *_param_grads(c2)])
    _assert_same(results[1], results[0])


# ---------------------------------------------------------------------------------------------------------------------
# PackedSequence and dropout
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,enforce_sorted,with_hx,batch_first,dtype", [
    ("lstm", False, True, False, F64), ("lstm", True, False, True, F32), ("lstm", True, True, False, F64),
    ("lstm", False, False, False, F32), ("gru", False, True, False, F64), ("gru", True, False, True, F32),
    ("gru", True, True, False, F64), ("gru", False, False, True, F64)])
def test_packed_sequence_matches_torch(kind, enforce_sorted, with_hx, batch_first, dtype) -> None:
    ref_cls, fast_cls = STACKS[kind]
    extra = dict(proj_size=P) if kind == "lstm" and dtype == F64 else {}
    ref, fast = _pair(ref_cls, fast_cls, I, H, 2, bidirectional=True, batch_first=batch_first, **extra,
                      dtype=dtype)
    lengths = [5, 4, 2, 1] if enforce_sorted else [2, 5, 1, 4]
    seqs = [_randn(n, I, seed=k, dtype=dtype) for k, n in enumerate(lengths)]
    hx = _state(kind, 2, 2, len(lengths), extra.get("proj_size", 0), seed=7, dtype=dtype) if with_hx else None
    results = []
    for module in (ref, fast):
        leaves = [s.clone().requires_grad_() for s in seqs]
        hi = _leaf(hx)
        out, state = module(pack_sequence(leaves, enforce_sorted=enforce_sorted), hi)
        assert isinstance(out, PackedSequence)
        outputs = _flat((out, state))
        _loss(outputs).backward()
        results.append((out, [*outputs, *[s.grad for s in leaves], *[h.grad for h in _leaves(hi)],
                              *_param_grads(module)]))
    (ref_out, expected), (fast_out, got) = results
    assert torch.equal(fast_out.batch_sizes, ref_out.batch_sizes)
    for name in ("sorted_indices", "unsorted_indices"):
        a, b = getattr(fast_out, name), getattr(ref_out, name)
        assert (a is None and b is None) or torch.equal(a, b), name
    _assert_same(got, expected, dtype)


@pytest.mark.parametrize("kind,packed", list(itertools.product(["lstm", "gru"], [False, True])))
def test_dropout_in_training_draws_torch_masks(kind, packed) -> None:
    ref_cls, fast_cls = STACKS[kind]
    extra = dict(proj_size=P) if kind == "lstm" else {}
    ref, fast = _pair(ref_cls, fast_cls, I, H, 3, dropout=0.4, bidirectional=True, **extra, dtype=F64)
    x = _randn(T, B, I)
    hx = _state(kind, 3, 2, B, extra.get("proj_size", 0))
    lengths = torch.tensor([4, 5, 2])
    results = []
    for module in (ref, fast):
        xi = x.clone().requires_grad_()
        hi = _leaf(hx)
        torch.manual_seed(7)
        arg = pack_padded_sequence(xi, lengths, enforce_sorted=False) if packed else xi
        outputs = _flat(module(arg, hi))
        _loss(outputs).backward()
        results.append([*outputs, xi.grad, *[h.grad for h in _leaves(hi)], *_param_grads(module)])
    _assert_same(results[1], results[0])
    # Other seeds give other masks; eval() has none.
    torch.manual_seed(7)
    first = _flat(fast(x))[0]
    torch.manual_seed(8)
    assert not torch.allclose(_flat(fast(x))[0], first)
    ref.eval()
    fast.eval()
    _assert_same(_flat(fast(x)), _flat(ref(x)))


@pytest.mark.parametrize("p", [0.5, 1.0])  # 1.0: everything dropped, and nothing drawn (as PyTorch)
def test_dropout_matches_torch_and_leaves_the_generator_as_torch_does(p) -> None:
    for kind in STACKS:
        ref_cls, fast_cls = STACKS[kind]
        ref, fast = _pair(ref_cls, fast_cls, I, H, 2, dropout=p, dtype=F64)
        results = []
        for module in (ref, fast):
            torch.manual_seed(3)
            x = _randn(T, B, I).requires_grad_()
            outputs = _flat(module(x))
            _loss(outputs).backward()
            results.append([*outputs, x.grad, *_param_grads(module), torch.rand(4)])
        _assert_same(results[1], results[0])


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_dropout_masks_are_those_torch_dropout_draws(packed, dtype) -> None:
    # Bit for bit what F.dropout multiplies each layer's output by, in the same order from the same seed.
    rnn = rt.LSTM(I, H, 4, dropout=0.3, bidirectional=True, proj_size=P, dtype=dtype)
    x = _randn(T, B, I, dtype=dtype)
    lengths = torch.tensor([4, 5, 2])
    source = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else None
    torch.manual_seed(11)
    masks = rnn._dropout_masks(x, source)
    assert masks.shape == (3, T, B, 2 * P) and masks.dtype == dtype
    torch.manual_seed(11)
    for layer in range(3):
        if packed:
            ones = torch.ones(source.data.size(0), 2 * P, dtype=dtype)
            expected = pad_packed_sequence(PackedSequence(torch.nn.functional.dropout(ones, 0.3, True),
                                              source.batch_sizes, source.sorted_indices, source.unsorted_indices))[0]
        else:
            expected = torch.nn.functional.dropout(torch.ones(T, B, 2 * P, dtype=dtype), 0.3, True)
        assert torch.equal(masks[layer], expected), layer
    assert set(masks.unique().tolist()) == {0.0, torch.tensor(1 / 0.7, dtype=dtype).item()}


def test_dropout_runs_the_whole_stack_in_one_kernel_call(monkeypatch) -> None:
    calls = []
    run = rt._modules._FastLSTM._run

    def counting(self, *args):
        calls.append(args[-1] is not None)  # the masks argument
        return run(self, *args)

    monkeypatch.setattr(rt._modules._FastLSTM, "_run", counting)
    rnn = rt.LSTM(I, H, 3, dropout=0.5)
    x = _randn(T, B, I, dtype=torch.float32).requires_grad_()
    rnn(x)[0].sum().backward()
    with torch.no_grad():
        rnn(x)
    assert calls == [True, True]
    rnn.eval()
    rnn(x)
    assert calls == [True, True, False]


# ---------------------------------------------------------------------------------------------------------------------
# gradcheck / gradgradcheck (float64), in the inputs, states and every parameter
# ---------------------------------------------------------------------------------------------------------------------

def _check_module(check, module, inputs, **kwargs) -> None:
    """``check`` of the module's outputs in its inputs, states and parameters (via functional_call); ``inputs``
    holds x and then the state tensors (an LSTM's pair flattened)."""
    names = [name for name, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]
    n = len(inputs)
    lstm = isinstance(module, (torch.nn.LSTM, torch.nn.LSTMCell))

    def fn(*args):
        x, states = args[0], args[1:n]
        hx = None if not states else (tuple(states) if lstm else states[0])
        out = torch.func.functional_call(module, dict(zip(names, args[n:])), (x, hx))
        return tuple(_flat(out))

    assert check(fn, (*inputs, *params), eps=1e-6, atol=1e-5, rtol=1e-4, **kwargs)


GRADCHECK_STACKS = [  # kind, layers, bidirectional, batch_first, proj, with_hx
    ("lstm", 2, True, False, 2, True),
    ("lstm", 1, False, True, 0, False),
    ("gru", 2, True, True, 0, True),
    ("gru", 1, False, False, 0, False),
]


@pytest.mark.parametrize("kind,layers,bidi,batch_first,proj,with_hx", GRADCHECK_STACKS)
def test_gradcheck_and_gradgradcheck_stack(kind, layers, bidi, batch_first, proj, with_hx) -> None:
    torch.manual_seed(0)
    extra = dict(proj_size=proj) if kind == "lstm" else {}
    module = STACKS[kind][1](3, 3, layers, batch_first=batch_first, bidirectional=bidi, **extra, dtype=F64)
    x = _randn(*((2, 3, 3) if batch_first else (3, 2, 3))).requires_grad_()
    states = []
    if with_hx:
        hx = _state(kind, layers, 2 if bidi else 1, 2, proj, hidden=3)
        states = [s.clone().requires_grad_() for s in (hx if isinstance(hx, tuple) else (hx,))]
    _check_module(torch.autograd.gradcheck, module, (x, *states))
    _check_module(torch.autograd.gradgradcheck, module, (x, *states), fast_mode=True)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_gradcheck_and_gradgradcheck_packed_sequence(kind) -> None:
    torch.manual_seed(0)
    module = STACKS[kind][1](3, 3, 2, bidirectional=True, dtype=F64)
    packed = pack_padded_sequence(_randn(4, 3, 3), torch.tensor([2, 4, 3]), enforce_sorted=False)
    data = packed.data.clone().requires_grad_()
    hx = _state(kind, 2, 2, 3, hidden=3)
    states = [s.clone().requires_grad_() for s in (hx if isinstance(hx, tuple) else (hx,))]

    def fn(data, *states):
        seq = PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
        return tuple(_flat(module(seq, tuple(states) if kind == "lstm" else states[0])))

    assert torch.autograd.gradcheck(fn, (data, *states), eps=1e-6, atol=1e-5, rtol=1e-4)
    assert torch.autograd.gradgradcheck(fn, (data, *states), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize("kind,bias,unbatched", [("lstm", True, False), ("lstm", False, True),
                                                 ("gru", True, False), ("gru", False, True)])
def test_gradcheck_and_gradgradcheck_cell(kind, bias, unbatched) -> None:
    torch.manual_seed(0)
    cell = CELLS[kind][1](3, 4, bias=bias, dtype=F64)
    shape = (4,) if unbatched else (2, 4)
    x = _randn(*((3,) if unbatched else (2, 3))).requires_grad_()
    states = [_randn(*shape, seed=1 + k).requires_grad_() for k in range(2 if kind == "lstm" else 1)]
    _check_module(torch.autograd.gradcheck, cell, (x, *states))
    _check_module(torch.autograd.gradcheck, cell, (x,))
    _check_module(torch.autograd.gradgradcheck, cell, (x, *states))


def test_gradcheck_with_batched_grad() -> None:
    torch.manual_seed(0)
    lstm = rt.LSTM(3, 3, 2, bidirectional=True, proj_size=2, dtype=F64)
    x = _randn(3, 2, 3).requires_grad_()
    _check_module(torch.autograd.gradcheck, lstm, (x,), check_batched_grad=True)
    cell = rt.GRUCell(3, 4, dtype=F64)
    _check_module(torch.autograd.gradcheck, cell, (_randn(2, 3).requires_grad_(), _randn(2, 4).requires_grad_()),
                  check_batched_grad=True)


def test_gradient_penalty_matches_torch() -> None:
    ref, fast = _pair(torch.nn.LSTM, rt.LSTM, I, H, 2, dropout=0.3, proj_size=P, batch_first=True, dtype=F64)
    ref_cell, fast_cell = _pair(torch.nn.GRUCell, rt.GRUCell, P, H, seed=1, dtype=F64)
    x = _randn(B, T, I)
    results = []
    for rnn, cell in ((ref, ref_cell), (fast, fast_cell)):
        xi = x.clone().requires_grad_()
        torch.manual_seed(5)
        out, (h_n, c_n) = rnn(xi)
        h = cell(out[:, -1])
        loss = out.tanh().sum() + h.square().sum() + c_n.sin().sum()
        (gx,) = torch.autograd.grad(loss, xi, create_graph=True)
        (loss + gx.square().sum()).backward()
        results.append([gx, xi.grad, *_param_grads(rnn), *_param_grads(cell)])
    _assert_same(results[1], results[0])


def test_ordinary_backward_stays_on_the_kernels(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("PyTorch's implementation ran")

    monkeypatch.setattr(rt._functions, "_torch_stack", refuse)
    monkeypatch.setattr(rt._functions, "_torch_cell", refuse)
    lstm, gru = rt.LSTM(I, H, 2, proj_size=P, dtype=F64), rt.GRU(P, H, dtype=F64)
    lstm_cell, gru_cell = rt.LSTMCell(H, H, dtype=F64), rt.GRUCell(H, H, dtype=F64)
    x = _randn(T, B, I).requires_grad_()
    out, (h_n, c_n) = lstm(x)
    out2, h2 = gru(out)
    h, c = lstm_cell(out2[-1])
    (gru_cell(h).sum() + c.sum() + h_n.sum() + c_n.sum() + h2.sum()).backward()
    assert x.grad is not None
    assert all(p.grad is not None for m in (lstm, gru, lstm_cell, gru_cell) for p in m.parameters())


def test_in_place_changes_before_backward_are_refused() -> None:
    lstm = rt.LSTM(I, H, dtype=F64)
    x = _randn(T, B, I)
    out, _ = lstm(x)
    x.add_(1)
    with pytest.raises(ValueError, match="^x: it was modified in place"):
        out.sum().backward()
    h0, c0 = _state("lstm", 1, 1, B)
    out, _ = lstm(_randn(T, B, I), (h0, c0))
    c0.add_(1)
    with pytest.raises(ValueError, match=re.escape("hx[1]: it was modified in place")):
        torch.autograd.grad(out.sum(), lstm.weight_hh_l0, create_graph=True)
    out, _ = lstm(_randn(T, B, I))
    with torch.no_grad():
        lstm.weight_hh_l0.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_retain_graph_backward_twice_accumulates() -> None:
    for fast in (rt.LSTM(I, H, proj_size=P, dtype=F64), rt.GRUCell(I, H, dtype=F64)):
        x = _randn(T, B, I) if isinstance(fast, torch.nn.RNNBase) else _randn(B, I)
        loss = _loss(_flat(fast(x)))
        loss.backward(retain_graph=True)
        once = fast.weight_ih_l0.grad.clone() if hasattr(fast, "weight_ih_l0") else fast.weight_ih.grad.clone()
        loss.backward()
        twice = fast.weight_ih_l0.grad if hasattr(fast, "weight_ih_l0") else fast.weight_ih.grad
        torch.testing.assert_close(twice, 2 * once)


# ---------------------------------------------------------------------------------------------------------------------
# state_dict, pickling, deepcopy, torch.save, functional_call
# ---------------------------------------------------------------------------------------------------------------------

MODULES = [("lstm", (I, H, 2), dict(bidirectional=True, proj_size=P)), ("gru", (I, H, 2), dict(bidirectional=True)),
           ("lstm_cell", (I, H), {}), ("gru_cell", (I, H), {})]


def _classes(kind):
    return STACKS[kind] if kind in STACKS else CELLS[kind[:-5]]


@pytest.mark.parametrize("kind,args,kwargs", MODULES)
def test_state_dict_both_ways_pickle_deepcopy_and_torch_save(kind, args, kwargs) -> None:
    ref_cls, fast_cls = _classes(kind)
    ref, fast = _pair(ref_cls, fast_cls, *args, **kwargs)
    other = ref_cls(*args, **kwargs)
    x = torch.randn(T, B, I) if kind in STACKS else torch.randn(B, I)
    buffer = io.BytesIO()
    torch.save(other.state_dict(), buffer)
    buffer.seek(0)
    fast.load_state_dict(torch.load(buffer))  # torch.nn -> rnnfast.torch
    assert _shared(fast)
    expected = _flat(other(x))
    _assert_same(_flat(fast(x)), expected, F32)
    ref.load_state_dict(fast.state_dict())  # and back
    _assert_same(_flat(ref(x)), expected, F32)
    assert list(fast.state_dict()) == list(ref.state_dict())

    buffer = io.BytesIO()
    torch.save(fast, buffer)
    buffer.seek(0)
    for twin in (copy.deepcopy(fast), pickle.loads(pickle.dumps(fast)), torch.load(buffer, weights_only=False)):
        assert type(twin) is fast_cls and _shared(twin)
        assert all(a.data_ptr() != b.data_ptr() for a, b in zip(twin.parameters(), fast.parameters()))
        _assert_same(_flat(twin(x)), expected, F32)
        with torch.no_grad():
            next(twin.parameters()).zero_()
    _assert_same(_flat(fast(x)), expected, F32)  # the copies are independent

    fast.load_state_dict({k: v.clone() for k, v in other.state_dict().items()}, assign=True)
    assert _shared(fast)
    _assert_same(_flat(fast(x)), expected, F32)


@pytest.mark.parametrize("kind,args,kwargs", MODULES)
def test_functional_call_uses_the_given_tensors(kind, args, kwargs) -> None:
    ref_cls, fast_cls = _classes(kind)
    ref, fast = _pair(ref_cls, fast_cls, *args, **kwargs, dtype=F64)
    tensors = {k: torch.randn_like(v).requires_grad_() for k, v in fast.named_parameters()}
    x = _randn(T, B, I) if kind in STACKS else _randn(B, I)
    results = []
    for module in (ref, fast):
        outputs = _flat(torch.func.functional_call(module, tensors, (x,)))
        results.append([*outputs, *torch.autograd.grad(_loss(outputs), list(tensors.values()))])
    _assert_same(results[1], results[0])
    assert _shared(fast)  # the module's own parameters were left alone
    _assert_same(_flat(fast(x)), _flat(ref(x)))


# ---------------------------------------------------------------------------------------------------------------------
# Fallbacks: other dtypes, bad arguments, torch.func
# ---------------------------------------------------------------------------------------------------------------------

def test_other_dtypes_and_bad_arguments_go_to_torch() -> None:
    for ref_cls, fast_cls in [*STACKS.values(), *CELLS.values()]:
        ref, fast = _pair(ref_cls, fast_cls, I, H, dtype=torch.bfloat16)
        x = torch.randn(T, B, I, dtype=torch.bfloat16) if issubclass(ref_cls, torch.nn.RNNBase) \
            else torch.randn(B, I, dtype=torch.bfloat16)
        assert all(torch.equal(a, b) for a, b in zip(_flat(fast(x)), _flat(ref(x))))
    x = torch.randn(T, B, I)
    h, c = torch.zeros(1, B, H), torch.zeros(1, B, H)
    stack_cases = {
        "lstm": [(x.double(), None), (torch.randn(T, B, I + 1), None), (x, (h, torch.zeros(1, B + 1, H))),
                 (x, (torch.zeros(B, H), c)), (x, h), (x, (h,)), (x, (h, c.double())), (torch.randn(B, I, 2, 2), None)],
        "gru": [(x.double(), None), (torch.randn(T, B, I + 1), None), (x, torch.zeros(1, B + 1, H)),
                (x, torch.zeros(B, H)), (torch.randn(B, I, 2, 2), None)],
    }
    cell_cases = {
        "lstm": [(torch.randn(1, 2, I), None), (torch.randn(B, I), (torch.zeros(B + 1, H), torch.zeros(B, H))),
                 (torch.randn(B, I), (torch.zeros(1, B, H), torch.zeros(B, H)))],
        "gru": [(torch.randn(1, 2, I), None), (torch.randn(B, I), torch.zeros(B + 1, H))],
    }
    for classes, cases_of in ((STACKS, stack_cases), (CELLS, cell_cases)):
        for kind, cases in cases_of.items():
            ref_cls, fast_cls = classes[kind]
            for x_bad, hx_bad in cases:
                ref, fast = _pair(ref_cls, fast_cls, I, H)
                with pytest.raises(Exception) as expected:
                    ref(x_bad, hx_bad)
                with pytest.raises(expected.type, match=re.escape(str(expected.value))):
                    fast(x_bad, hx_bad)
    # Zero sizes, which torch.nn's cells take, run PyTorch's implementation.
    for ref_cls, fast_cls in CELLS.values():
        for args in ((0, H), (I, 0)):
            ref, fast = _pair(ref_cls, fast_cls, *args)
            x = torch.randn(B, args[0])
            _assert_same(_flat(fast(x)), _flat(ref(x)), F32)


def _same_behaviour(fn, ref, fast, what=""):
    """``fn(fast)`` gives ``fn(ref)``'s values, or raises its error (vmap over torch.nn's recurrent ops has no
    batching rule in some versions; the rnnfast module, which runs PyTorch's implementation there, raises it too)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="There is a performance drop")
        try:
            expected = fn(ref)
        except RuntimeError as exc:
            with pytest.raises(type(exc), match=re.escape(str(exc))):
                fn(fast)
            return
        _assert_same(fn(fast), expected, F64, what)


def test_torch_func_transforms_match_torch() -> None:
    ref, fast = _pair(torch.nn.LSTM, rt.LSTM, I, H, 2, proj_size=P, batch_first=True, dtype=F64)
    params = {name: p.detach().clone() for name, p in ref.named_parameters()}
    x = _randn(B, T, I)
    examples = _randn(4, T, I, seed=1)

    def loss(module, params, x):
        out, (h_n, c_n) = torch.func.functional_call(module, params, (x,))
        return out.sin().sum() + h_n.square().sum() + c_n.sum()

    _same_behaviour(lambda m: list(torch.func.grad(loss, argnums=(1, 2))(m, params, x)[0].values()), ref, fast,
                    "grad")
    _same_behaviour(lambda m: list(torch.func.jacrev(lambda x: m(x)[1][1])(x)), ref, fast, "jacrev")
    _same_behaviour(lambda m: _flat(torch.func.vmap(m)(examples)), ref, fast, "vmap")

    ref_cell, fast_cell = _pair(torch.nn.GRUCell, rt.GRUCell, I, H, dtype=F64)
    cell_params = {name: p.detach().clone() for name, p in ref_cell.named_parameters()}
    steps = _randn(4, B, I, seed=3)

    def cell_loss(cell, params, x):
        return torch.func.functional_call(cell, params, (x,)).tanh().sum()

    _same_behaviour(lambda c: list(torch.func.vmap(torch.func.grad(cell_loss, argnums=1), in_dims=(None, None, 0))(
        c, cell_params, steps).values()), ref_cell, fast_cell, "cell per-example grads")


# ---------------------------------------------------------------------------------------------------------------------
# convert()
# ---------------------------------------------------------------------------------------------------------------------

class _MyLSTM(torch.nn.LSTM):
    pass


def test_convert_swaps_every_kind_keeping_parameters_mode_and_hooks() -> None:
    torch.manual_seed(0)
    shared = torch.nn.GRU(4, 4)
    model = torch.nn.Sequential(
        torch.nn.LSTM(3, 4, 2, dropout=0.5, batch_first=True, proj_size=2, bidirectional=True),
        torch.nn.ModuleList([torch.nn.LSTMCell(4, 5, bias=False), torch.nn.GRUCell(5, 4), shared]),
        torch.nn.ModuleDict({"again": shared, "mine": _MyLSTM(4, 4), "rnn": torch.nn.RNN(4, 4)}),
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
    assert [type(m) for m in (model[0], *model[1], model[2]["rnn"])] == [rt.LSTM, rt.LSTMCell, rt.GRUCell, rt.GRU,
                                                                       rt.RNN]
    assert model[2]["again"] is model[1][2]
    assert type(model[2]["mine"]) is _MyLSTM  # subclasses are left alone
    assert list(model.parameters()) == params  # the very same Parameter objects
    assert not model[0].training and model[1][0].training
    lstm = model[0]
    assert (lstm.batch_first, lstm.dropout, lstm.num_layers, lstm.proj_size, lstm.bidirectional) == (
        True, 0.5, 2, 2, True)
    assert not model[1][0].bias
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name
    assert all(_shared(m) for m in (model[0], *model[1]))

    x = torch.randn(2, 5, 3)
    out, (h_n, c_n) = lstm(x)
    ref_out, (ref_h, ref_c) = reference[0](x)
    _assert_same([out, h_n, c_n], [ref_out, ref_h, ref_c], F32)
    assert calls == ["hook"]
    for m, r, arg in zip(model[1], reference[1], (torch.randn(2, 4), torch.randn(2, 5), torch.randn(5, 2, 4))):
        _assert_same(_flat(m(arg)), _flat(r(arg)), F32)
    (out.sum() + c_n.sum() + model[1][1](torch.randn(2, 5)).sum()).backward()
    opt.step()

    for lone_cls, fast_cls in [*STACKS.values(), *CELLS.values()]:
        lone = lone_cls(2, 3, bias=False, dtype=F64)
        new = rt.convert(lone)
        assert type(new) is fast_cls and not new.bias and rt.convert(new) is new
        assert list(new.parameters()) == list(lone.parameters()) and _shared(new)


# ---------------------------------------------------------------------------------------------------------------------
# Backwards through one module in 4 threads at once; a training loop
# ---------------------------------------------------------------------------------------------------------------------



@pytest.mark.parametrize("kind,args,kwargs", MODULES)
def test_concurrent_backwards_through_one_module_add_up_every_loss(kind, args, kwargs) -> None:
    threads, iterations = 4, 4
    ref_cls, fast_cls = _classes(kind)
    ref, fast = _pair(ref_cls, fast_cls, *args, **kwargs, dtype=F64)
    stack = kind in STACKS
    xs = _randn(iterations, threads, 12, 3, I, seed=4)

    def loss_of(module, x):
        if stack:
            return _loss(_flat(module(x)))
        hx, loss = None, 0
        for x_t in x:  # BPTT through the cell by hand
            hx = module(x_t, hx)
            loss = loss + sum(t.sin().sum() for t in _flat(hx))
        return loss

    fast_x = [[xs[i, k].clone().requires_grad_() for k in range(threads)] for i in range(iterations)]
    ref_x = [[xs[i, k].clone().requires_grad_() for k in range(threads)] for i in range(iterations)]
    for i in range(iterations):  # the expectation: every loss's gradient, one after the other
        for k in range(threads):
            loss_of(ref, ref_x[i][k]).backward()

    def work(k, barrier):
        for i in range(iterations):
            loss = loss_of(fast, fast_x[i][k])  # forwards overlap too
            barrier.wait()  # so do the backwards
            loss.backward()

    run_threads(threads, work)
    _assert_same(_param_grads(fast), _param_grads(ref), F64, "parameters")
    _assert_same([x.grad for row in fast_x for x in row], [x.grad for row in ref_x for x in row], F64, "inputs")


class _Model(torch.nn.Module):
    def __init__(self, lstm, gru, lstm_cell, gru_cell) -> None:
        super().__init__()
        self.lstm = lstm(1, 8, 2, batch_first=True, proj_size=4, dropout=0.2, dtype=F64)
        self.gru = gru(4, 6, batch_first=True, bidirectional=True, dtype=F64)
        self.lstm_cell = lstm_cell(12, 6, dtype=F64)
        self.gru_cell = gru_cell(6, 5, dtype=F64)
        self.head = torch.nn.Linear(5, 1, dtype=F64)

    def forward(self, x):
        out, _ = self.lstm(x)
        out, _ = self.gru(out)
        hx, h = None, None
        for t in range(out.shape[1]):
            hx = self.lstm_cell(out[:, t], hx)
            h = self.gru_cell(hx[0], h)
        return self.head(h)


def test_training_with_adam_matches_torch() -> None:
    models = []
    for classes in ((torch.nn.LSTM, torch.nn.GRU, torch.nn.LSTMCell, torch.nn.GRUCell),
                    (rt.LSTM, rt.GRU, rt.LSTMCell, rt.GRUCell)):
        torch.manual_seed(0)
        models.append(_Model(*classes))
    t = torch.linspace(0, 12, 25, dtype=F64)
    x = torch.stack([torch.sin(t[:-1] + k) for k in range(4)])[:, :, None]  # [4, 24, 1]
    y = torch.stack([torch.sin(t[-1] + k) for k in range(4)])[:, None]
    losses = []
    for model in models:
        opt = torch.optim.Adam(model.parameters(), lr=0.02)
        torch.manual_seed(1)  # the same dropout masks
        steps = []
        for _ in range(8):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            steps.append(float(loss.detach()))
        losses.append(steps)
    assert losses[1] == pytest.approx(losses[0], rel=1e-9)
    assert losses[1][-1] < losses[1][0]
    for (name, a), (_, b) in zip(models[1].state_dict().items(), models[0].state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=name)


# ---------------------------------------------------------------------------------------------------------------------
# PyTorch's own module test inputs (torch.testing._internal.common_modules)
# ---------------------------------------------------------------------------------------------------------------------

def _module_db_inputs():
    try:
        from torch.testing._internal.common_modules import module_db
    except Exception as exc:  # a torch without its testing internals, or without their dependencies (expecttest)
        pytest.skip(f"torch.testing._internal.common_modules: {exc!r}")
    fast_classes = {ref_cls: fast_cls for ref_cls, fast_cls in [*STACKS.values(), *CELLS.values()]}
    cases = []
    for info in module_db:
        if info.module_cls in fast_classes:
            inputs = info.module_inputs_func(info, device="cpu", dtype=F64, requires_grad=True, training=True)
            cases.extend((info.module_cls, fast_classes[info.module_cls], module_input) for module_input in inputs)
    return cases


def _copied(a):
    """A fresh leaf copy of a forward argument (tensors, tuples of them, anything else as is)."""
    if isinstance(a, torch.Tensor):
        return a.detach().clone().requires_grad_(a.requires_grad)
    if isinstance(a, tuple):
        return tuple(_copied(t) for t in a)
    return a


def _grad_leaves(args):
    return [t for a in args for t in (a if isinstance(a, tuple) else (a,))
            if isinstance(t, torch.Tensor) and t.requires_grad]


def test_pytorch_module_db_inputs() -> None:
    cases = _module_db_inputs()
    assert {ref_cls for ref_cls, _, _ in cases} == {torch.nn.LSTM, torch.nn.GRU, torch.nn.LSTMCell, torch.nn.GRUCell}
    for ref_cls, fast_cls, module_input in cases:
        c_args, c_kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
        what = f"{ref_cls.__name__}{c_args}{c_kwargs}"
        ref = ref_cls(*c_args, **c_kwargs).to(F64)
        fast = fast_cls(*c_args, **c_kwargs).to(F64)
        fast.load_state_dict(ref.state_dict())
        f_args, f_kwargs = module_input.forward_input.args, module_input.forward_input.kwargs
        assert not f_kwargs
        results = []
        for module in (ref, fast):
            args = [_copied(a) for a in f_args]
            outputs = _flat(module(*args))
            _loss(outputs).backward()
            results.append([*outputs, *[t.grad for t in _grad_leaves(args)], *_param_grads(module)])
        _assert_same(results[1], results[0], F64, what)
        assert fast._rnnfast_runners, what  # on rnnfast's kernels

        # gradcheck and gradgradcheck as PyTorch's test_modules.py runs them (batched gradients, fast mode), in
        # the inputs (an LSTM's state pair flattened) and the module's own parameters, which it perturbs in place.
        args = [_copied(a) for a in f_args]
        flat_args = [t for a in args for t in (a if isinstance(a, tuple) else (a,))]
        params = tuple(fast.parameters())

        def fn(*flat, structure=[isinstance(a, tuple) for a in args]):
            rebuilt, k = [], 0
            for is_pair in structure:
                rebuilt.append((flat[k], flat[k + 1]) if is_pair else flat[k])
                k += 2 if is_pair else 1
            return tuple(_flat(fast(*rebuilt)))

        checks = [torch.autograd.gradcheck]
        # gradgradcheck (second derivatives are PyTorch's own ops) for the cells and, to keep the time down, the
        # stacks with bias and batch_first: every projection, direction and state option still.
        if not issubclass(ref_cls, torch.nn.RNNBase) or (c_kwargs.get("bias") and c_kwargs.get("batch_first")):
            checks.append(torch.autograd.gradgradcheck)
        for check in checks:
            assert check(fn, [*flat_args, *params], check_batched_grad=True, fast_mode=True), (check.__name__, what)
