"""Robustness (issue 5), valid but unusual input: any array layout gives the contiguous result and is never
modified; NaN / Inf propagate as in the reference; batch size 0 works everywhere; nothing leaks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ON_A_THREAD, limited_child_env
from robustness_common import LAYOUTS, B, H, I, T, _equal_bitwise, _layout, _model, _rejects, _x

import rnnfast
from rnnfast import reference as ref


# --------------------------------------------------------------------------------------------------------------
# Layouts: any layout gives the contiguous result; inputs are never modified
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("batch_first,bidirectional,dtype", [(False, False, "float32"), (True, True, "float64")])
def test_rnn_any_layout_gives_the_contiguous_result(kind, batch_first, bidirectional, dtype) -> None:
    rng = np.random.default_rng(1)
    model = _model(batch_first=batch_first, bidirectional=bidirectional, dtype=dtype)
    D = 2 if bidirectional else 1
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(dtype)
    h0 = rng.standard_normal((2 * D, B, H)).astype(dtype)
    lengths = np.array([T, 1, T - 1], np.int64)

    def run(conv):
        model.zero_grad()
        args = {"x": conv(x), "h0": conv(h0), "lengths": conv(lengths)}
        saved = {k: (v.copy(), v.strides, v.flags.writeable) for k, v in args.items()}
        out, h_n, cache = model.forward(args["x"], args["h0"], lengths=args["lengths"], return_cache=True)
        g = {"grad_output": conv(np.cos(out)), "grad_h_n": conv(np.sin(h_n))}
        saved.update({k: (v.copy(), v.strides, v.flags.writeable) for k, v in g.items()})
        gx, gh0 = model.backward(cache, g["grad_output"], g["grad_h_n"])
        for k, (copy, strides, writeable) in saved.items():  # inputs untouched, flags included
            v = {**args, **g}[k]
            _equal_bitwise(v, copy)
            assert v.strides == strides and v.flags.writeable == writeable
        for r in (out, h_n, gx, gh0):  # results never alias an input
            assert not any(np.shares_memory(r, v) for v in {**args, **g}.values())
        return [out, h_n, gx, gh0] + [v.copy() for v in model.grads.values()]

    for a, b in zip(run(lambda a: _layout(a, "C")), run(lambda a: _layout(a, kind))):
        _equal_bitwise(a, b)


@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("unbatched", [False, True])
def test_cell_any_layout_gives_the_contiguous_result(kind, unbatched) -> None:
    rng = np.random.default_rng(2)
    cell = rnnfast.RNNCell(I, H, dtype="float64", seed=0)
    x = rng.standard_normal((I,) if unbatched else (B, I))
    h = rng.standard_normal((H,) if unbatched else (B, H))

    def run(conv):
        cell.zero_grad()
        xc, hc = conv(x), conv(h)
        h_new, cache = cell.forward(xc, hc, return_cache=True)
        g = conv(np.cos(h_new))
        copies = [a.copy() for a in (xc, hc, g)]
        gx, gh = cell.backward(cache, g)
        for a, c in zip((xc, hc, g), copies):
            _equal_bitwise(a, c)
        return [h_new, gx, gh] + [v.copy() for v in cell.grads.values()]

    for a, b in zip(run(lambda a: _layout(a, "C")), run(lambda a: _layout(a, kind))):
        _equal_bitwise(a, b)


class _KernelSpy:
    """Wraps a model's compiled kernel and records every array handed to it."""

    def __init__(self, kernel: Any, seen: list[tuple[str, np.ndarray]]) -> None:
        self._kernel, self._seen = kernel, seen

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._kernel, name)
        if name not in ("forward", "backward"):
            return attr

        def call(*args: Any) -> Any:
            self._seen.extend((f"{name} argument {i}", a) for i, a in enumerate(args) if isinstance(a, np.ndarray))
            return attr(*args)

        return call


def test_the_kernels_only_ever_see_aligned_contiguous_arrays() -> None:
    seen: list[tuple[str, np.ndarray]] = []
    model = _model(dtype="float64", bidirectional=True)
    model._kernel = _KernelSpy(model._kernel, seen)
    model._small_kernel = _KernelSpy(model._small_kernel, seen)  # the kernels small calls run on
    cell = rnnfast.RNNCell(I, H, dtype="float64", seed=0)
    cell._kernel = _KernelSpy(cell._kernel, seen)
    u = lambda a: _layout(np.asarray(a), "unaligned")  # noqa: E731
    out, h_n, cache = model.forward(u(_x("float64")), u(np.zeros((4, B, H))), lengths=u(np.array([T, 1, 2])),
                                    return_cache=True)
    model.backward(cache, u(np.ones_like(out)), u(np.ones_like(h_n)))
    h, c = cell.forward(u(_x("float64", (B, I))), u(np.zeros((B, H))), return_cache=True)
    cell.backward(c, u(np.ones_like(h)))
    for kind in LAYOUTS:  # model(x) goes straight to the kernel for aligned C-contiguous batches only
        model(_layout(_x("float64"), kind))
    assert len(seen) > 15
    bad = [name for name, a in seen if not (a.flags.aligned and a.flags.c_contiguous)]
    assert not bad, f"unaligned or non-contiguous arrays passed to the kernels: {bad}"


@pytest.mark.parametrize("kw", [dict(), dict(batch_first=True), dict(num_layers=2, dropout=0.5),
                                dict(num_layers=2, bidirectional=True, nonlinearity="relu")])
def test_calling_the_model_is_forward(kw: dict[str, Any]) -> None:
    """model(x) has a shortcut for plain batches; it must give forward's results bitwise in every mode (dropout
    included: two models with one seed draw the same masks) and forward's errors for bad input."""
    called, forwarded = (rnnfast.RNN(I, H, dtype="float64", seed=5, **kw) for _ in range(2))
    x = _x("float64")
    if kw.get("batch_first"):
        x = np.ascontiguousarray(x.transpose(1, 0, 2))
    for training in (True, False):
        called.train(training)
        forwarded.train(training)
        for args in [(x,), (x, None, np.array([T, 1, 2])), (x[0],)]:
            for a, b in zip(called(*args), forwarded.forward(*args)):
                _equal_bitwise(a, b)
    if kw.get("dropout"):  # the masks really apply in training
        assert not np.array_equal(called.train()(x)[0], called.eval()(x)[0])
    _rejects(lambda: called(x.astype(np.float32)), TypeError, "x: expected dtype float64", called)
    _rejects(lambda: called(x[..., :-1].copy()), ValueError, r"x: expected shape", called)
    _rejects(lambda: called(x.tolist()), TypeError, "x: expected a numpy.ndarray", called)
    if not kw.get("batch_first"):
        _rejects(lambda: called(x[:0].copy()), ValueError, "x: expected a sequence of length >= 1", called)


def test_zero_stride_broadcast_inputs() -> None:
    model = _model(dtype="float64")
    row = np.random.default_rng(3).standard_normal((1, 1, I))
    x = np.broadcast_to(row, (T, B, I))  # read-only, strides 0
    assert x.strides[:2] == (0, 0)
    out, h_n = model(x)
    out_c, h_n_c = model(np.ascontiguousarray(x))
    _equal_bitwise(out, out_c)
    _equal_bitwise(h_n, h_n_c)
    cell = rnnfast.RNNCell(I, H, dtype="float64", seed=0)
    _equal_bitwise(cell(x[0]), cell(np.ascontiguousarray(x[0])))


def test_the_cache_copies_h0_and_refuses_a_reused_x() -> None:
    model = _model(dtype="float64")
    x = _x("float64")
    h0 = np.ones((2, B, H))
    out, _, cache = model.forward(x, h0, return_cache=True)
    expected = model.backward(cache, np.ones_like(out))
    model.zero_grad()
    out, _, cache = model.forward(x, h0, return_cache=True)
    h0[...] = np.nan  # the caller reuses its buffer: the cache holds a copy of h0
    got = model.backward(cache, np.ones_like(out))
    for a, b in zip(expected, got):
        _equal_bitwise(a, b)
    # x and the output are referred to, not copied (as PyTorch saves them): reusing x's buffer is refused.
    model.zero_grad()
    out, _, cache = model.forward(x, h0=None, return_cache=True)
    x[...] = np.nan
    with pytest.raises(ValueError, match="^x: it was modified in place"):
        model.backward(cache, np.ones_like(out))
    assert all(not g.any() for g in model.grads.values())


def test_outputs_are_fresh_writable_arrays() -> None:
    model = _model()
    out1, h1 = model(_x())
    out2, h2 = model(_x())
    assert out1.flags.writeable and h1.flags.writeable and not np.shares_memory(out1, out2)
    out1[...] = 0  # writing into a result affects nothing else
    _equal_bitwise(model(_x())[0], out2)


# --------------------------------------------------------------------------------------------------------------
# NaN / Inf propagate as in the reference (and PyTorch, when installed); never an exception or a warning
# --------------------------------------------------------------------------------------------------------------


def _poisoned(shape: tuple[int, ...], dtype: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape).astype(dtype)
    flat = a.reshape(-1)
    picks = rng.choice(flat.size, size=3, replace=False)
    flat[picks] = [np.nan, np.inf, -np.inf]
    return a


def _ref_params(model: Any) -> dict[str, np.ndarray]:
    return {k: v.astype(np.float64) for k, v in model.named_parameters().items()}


def _where_cases(bugs: dict[tuple[str, str], Any]) -> list[Any]:
    return [pytest.param(act, where, marks=bugs.get((act, where), ()), id=f"{act}-{where}")
            for act in ("tanh", "relu") for where in ("x", "h0", "grad", "weight")]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("act,where", _where_cases({}))
@pytest.mark.parametrize("bidirectional", [False, True])
def test_nan_and_inf_propagate_like_the_reference(dtype, act, where, bidirectional) -> None:
    model = rnnfast.RNN(I, H, num_layers=2, nonlinearity=act, bidirectional=bidirectional, dtype=dtype, seed=0)
    D = 2 if bidirectional else 1
    x = _poisoned((T, B, I), dtype, 1) if where == "x" else _x(dtype)
    h0 = _poisoned((2 * D, B, H), dtype, 2) if where == "h0" else np.zeros((2 * D, B, H), dtype)
    if where == "weight":
        state = model.state_dict()
        state["weight_hh_l0"] = _poisoned(state["weight_hh_l0"].shape, dtype, 3)
        model.load_state_dict(state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rnnfast itself never warns about non-finite values
        out, h_n, cache = model.forward(x, h0, return_cache=True)
        g_out = _poisoned(out.shape, dtype, 4) if where == "grad" else np.ones_like(out)
        gx, gh0 = model.backward(cache, g_out, np.ones_like(h_n))
    with np.errstate(all="ignore"):
        r_out, r_h_n, r_cache = ref.rnn_forward(x.astype(np.float64), _ref_params(model), h0=h0.astype(np.float64),
                                                num_layers=2, nonlinearity=act, bidirectional=bidirectional)
        r_gx, r_gh0, r_grads = ref.rnn_backward(r_cache, g_out.astype(np.float64), np.ones(r_h_n.shape))
    pairs = [(out, r_out), (h_n, r_h_n), (gx, r_gx), (gh0, r_gh0)] + [(model.grads[k], r_grads[k]) for k in r_grads]
    assert any(np.isnan(a).any() for a, _ in pairs), "the poison did not reach the results"
    for a, r in pairs:
        np.testing.assert_array_equal(np.isnan(a), np.isnan(r))
        np.testing.assert_array_equal(np.isposinf(a), np.isposinf(r))
        np.testing.assert_array_equal(np.isneginf(a), np.isneginf(r))
        finite = np.isfinite(r)
        tol = 1e-3 if dtype == "float32" else 1e-9
        np.testing.assert_allclose(a[finite], r[finite], rtol=tol, atol=tol * max(1.0, np.abs(r[finite]).max(initial=0)))


@pytest.mark.parametrize("act,where", _where_cases({}))
def test_nan_and_inf_propagate_like_pytorch(act, where) -> None:
    torch = pytest.importorskip("torch")
    model = rnnfast.RNN(I, H, num_layers=2, nonlinearity=act, bidirectional=True, dtype="float64", seed=0)
    if where == "weight":
        state = model.state_dict()
        state["weight_hh_l0"] = _poisoned(state["weight_hh_l0"].shape, "float64", 3)
        model.load_state_dict(state)
    net = torch.nn.RNN(I, H, num_layers=2, nonlinearity=act, bidirectional=True, dtype=torch.float64)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    x = _poisoned((T, B, I), "float64", 5) if where == "x" else _x("float64")
    h0 = _poisoned((4, B, H), "float64", 6) if where == "h0" else np.zeros((4, B, H))
    out, h_n, cache = model.forward(x, h0, return_cache=True)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    h0t = torch.from_numpy(h0.copy()).requires_grad_(True)
    t_out, t_h_n = net(xt, h0t)
    g = _poisoned(out.shape, "float64", 7) if where == "grad" else np.cos(np.arange(out.size, dtype=np.float64)).reshape(out.shape)
    gx, gh0 = model.backward(cache, g)
    t_out.backward(torch.from_numpy(g))
    pairs = [(out, t_out.detach().numpy()), (h_n, t_h_n.detach().numpy()), (gx, xt.grad.numpy()),
             (gh0, h0t.grad.numpy())] + [(model.grads[k], p.grad.numpy()) for k, p in net.named_parameters()]
    assert any(np.isnan(a).any() for a, _ in pairs)
    for a, b in pairs:
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_array_equal(np.isinf(a), np.isinf(b))


@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_cell_nan_and_inf_propagate_like_the_reference(act) -> None:
    cell = rnnfast.RNNCell(I, H, nonlinearity=act, dtype="float64", seed=0)
    x, h = _poisoned((B, I), "float64", 6), _poisoned((B, H), "float64", 7)
    h_new, cache = cell.forward(x, h, return_cache=True)
    gx, gh = cell.backward(cache, np.ones_like(h_new))
    with np.errstate(all="ignore"):
        r_h, r_cache = ref.cell_forward(x, h, cell.state_dict(), nonlinearity=act)
        r_gx, r_gh, r_grads = ref.cell_backward(r_cache, np.ones_like(r_h))
    for a, r in [(h_new, r_h), (gx, r_gx), (gh, r_gh)] + [(cell.grads[k], r_grads[k]) for k in r_grads]:
        np.testing.assert_array_equal(np.isnan(a), np.isnan(r))
        np.testing.assert_array_equal(np.isinf(a), np.isinf(r))


def test_lengths_keep_nan_in_the_padding_out() -> None:
    model = _model(bidirectional=True, dtype="float64")
    x = _x("float64")
    lengths = np.array([T, 2, 1])
    pad = np.arange(T)[:, None] >= lengths[None, :]
    dirty = x.copy()
    dirty[pad] = np.nan  # padding is never read
    out, h_n, cache = model.forward(dirty, lengths=lengths, return_cache=True)
    assert np.isfinite(out).all() and np.isfinite(h_n).all()
    g = np.ones_like(out)
    g[pad] = np.nan  # gradients at padded steps are ignored
    gx, gh0 = model.backward(cache, g)
    assert np.isfinite(gx).all() and np.isfinite(gh0).all()
    assert all(np.isfinite(v).all() for v in model.grads.values())


# --------------------------------------------------------------------------------------------------------------
# Batch size 0, and lengths with every option
# --------------------------------------------------------------------------------------------------------------

OPTIONS = [
    dict(num_layers=1),
    dict(num_layers=3, bidirectional=True),
    dict(num_layers=2, batch_first=True, dropout=0.5),
    dict(num_layers=2, bias=False, nonlinearity="relu", dtype="float64"),
    dict(num_layers=2, bidirectional=True, batch_first=True, dtype="float64", dropout=0.2),
]


@pytest.mark.parametrize("opts", OPTIONS, ids=repr)
@pytest.mark.parametrize("with_h0,with_lengths", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("grads", ["output", "h_n", "both"])
def test_batch_size_zero_forward_and_backward(opts, with_h0, with_lengths, grads) -> None:
    model = rnnfast.RNN(I, H, seed=0, **opts)
    D = 2 if model.bidirectional else 1
    dtype = model.dtype
    x = np.zeros((0, T, I) if model.batch_first else (T, 0, I), dtype)
    h0 = np.zeros((model.num_layers * D, 0, H), dtype) if with_h0 else None
    lengths = np.zeros(0, np.int64) if with_lengths else None
    out, h_n, cache = model.forward(x, h0, lengths=lengths, return_cache=True)
    assert out.shape == ((0, T, D * H) if model.batch_first else (T, 0, D * H)) and out.dtype == dtype
    assert h_n.shape == (model.num_layers * D, 0, H) and h_n.dtype == dtype
    assert model(x, h0, lengths)[0].shape == out.shape
    g_out = np.zeros_like(out) if grads in ("output", "both") else None
    g_h_n = np.zeros_like(h_n) if grads in ("h_n", "both") else None
    gx, gh0 = model.backward(cache, g_out, g_h_n, retain_cache=True)
    assert gx.shape == x.shape and gh0.shape == h_n.shape and gx.dtype == gh0.dtype == dtype
    assert all(np.all(v == 0) for v in model.grads.values())
    # Bad gradients are still refused for an empty batch.
    with pytest.raises(ValueError, match="grad_output: expected shape"):
        model.backward(cache, np.zeros((T, 1, D * H), dtype))


def test_batch_size_zero_accepts_an_empty_list_of_lengths() -> None:
    model = _model()
    out, h_n = model(np.zeros((T, 0, I), np.float32), lengths=[])
    assert out.shape == (T, 0, H)


@pytest.mark.parametrize("unbatched_h", [False, True])
def test_cell_batch_size_zero_forward_and_backward(unbatched_h) -> None:
    for dtype in ("float32", "float64"):
        cell = rnnfast.RNNCell(I, H, dtype=dtype, seed=0)
        h = np.zeros((0, H), dtype) if unbatched_h else None
        h_new, cache = cell.forward(np.zeros((0, I), dtype), h, return_cache=True)
        assert h_new.shape == (0, H) and h_new.dtype == dtype
        gx, gh = cell.backward(cache, np.zeros((0, H), dtype))
        assert gx.shape == (0, I) and gh.shape == (0, H)
        assert all(np.all(v == 0) for v in cell.grads.values())


@pytest.mark.parametrize("opts", OPTIONS, ids=repr)
def test_lengths_in_every_integer_form_give_the_same_result(opts) -> None:
    model = rnnfast.RNN(I, H, seed=0, **opts).eval()
    x = np.random.default_rng(7).standard_normal((B, T, I) if model.batch_first else (T, B, I)).astype(model.dtype)
    lens = [T, 1, 3]
    expected = model(x, lengths=np.array(lens))
    forms = [lens, tuple(lens), np.array(lens, np.int8), np.array(lens, np.uint16), np.array(lens, np.int32),
             np.array(lens, np.uint64), _layout(np.array(lens), "negative"), _layout(np.array(lens), "strided"),
             _layout(np.array(lens), "readonly"), [np.int64(n) for n in lens]]
    for form in forms:
        before = np.array(form, copy=True)
        got = model(x, lengths=form)
        for a, b in zip(got, expected):
            _equal_bitwise(a, b)
        np.testing.assert_array_equal(np.asarray(form), before)  # not modified


def test_lengths_with_unbatched_input_and_a_scalar() -> None:
    model = _model(bidirectional=True, dtype="float64")
    xu = _x("float64", (T, I))
    expected = model(xu[:2])
    for form in (2, np.int8(2), [2], np.array([2], np.uint8), np.array(2)):
        out, h_n = model(xu, lengths=form)
        np.testing.assert_allclose(out[:2], expected[0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(h_n, expected[1], rtol=1e-12, atol=1e-14)
        assert np.all(out[2:] == 0)


# --------------------------------------------------------------------------------------------------------------
# No leaks, no runaway memory
# --------------------------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
SANITIZED = bool(os.environ.get("RNNFAST_SANITIZED")) or "asan" in os.environ.get("LD_PRELOAD", "")


@pytest.mark.skipif(SANITIZED, reason="AddressSanitizer's quarantine holds freed memory, so RSS grows by design")
def test_100000_forward_backward_calls_keep_resident_memory_flat() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "leak_check.py"), "--calls", "100000"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK, memory stays flat" in proc.stdout


@pytest.mark.skipif(SANITIZED, reason="peak RSS is not meaningful under AddressSanitizer")
def test_a_model_that_passes_the_memory_check_fits_in_memory_while_it_is_built() -> None:
    # Pretend the machine has 256 MiB; build a float32 model whose parameters and gradients just fit (240 MB).
    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs /proc/self/status (VmHWM)")
    # VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's peak (kept across fork and exec).
    code = textwrap.dedent("""
        import os
        def hwm():
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
        real = os.sysconf
        os.sysconf = lambda name: (256 * 2**20) // real("SC_PAGE_SIZE") if name == "SC_PHYS_PAGES" else real(name)
        import rnnfast
        before = hwm()
        cell = rnnfast.RNNCell(28_998, 1000)  # 1000 * (28998 + 1000 + 2) = 30,000,000 parameters
        print(hwm() - before)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) <= 256 * 2**20, f"building the model touched {int(proc.stdout) / 2**20:.0f} MiB"


_ADDRESS_SPACE_SWEEP = ON_A_THREAD + textwrap.dedent("""
    import resource, sys
    import numpy as np
    import rnnfast

    cls = getattr(rnnfast, sys.argv[1])
    cell = sys.argv[1].endswith("Cell")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2048, 64) if cell else (60, 16, 64)).astype(np.float32)
    target = rng.standard_normal((2048, 128) if cell else (60, 16, 128)).astype(np.float32)

    def make():
        return cls(64, 128, seed=0) if cell else cls(64, 128, num_layers=2, seed=0)

    def flat(values):
        out = []
        for v in values if isinstance(values, tuple) else (values,):
            if isinstance(v, tuple):
                out += flat(v)
            elif v is not None:
                out.append(np.array(v))  # a copy: the next call may reuse a released cache's storage
        return out

    def run(model, train):
        if not train:
            return flat(model(x))
        model.zero_grad()
        if cell:
            *states, cache = model.forward(x, return_cache=True)
            grads = model.backward(cache, *(s - target for s in states))
            return flat(tuple(states)) + flat(grads) + [g.copy() for g in model.grads.values()]
        out, _, cache = model.forward(x, return_cache=True)
        grads = model.backward(cache, out - target)
        return [out.copy()] + flat(grads) + [g.copy() for g in model.grads.values()]

    def same(a, b):
        return len(a) == len(b) and all(np.array_equal(p, q) for p, q in zip(a, b))

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        print("skip: the address space has a hard limit here")
        sys.exit(0)

    def sweep():
        failures = successes = 0
        for threads in (2, 1):
            rnnfast.set_num_threads(threads)
            for train in (False, True):
                model = make()
                params = [p.copy() for p in model.parameters()]
                # Ascending room: each failed call may have grown some of the kernels' kept workspaces, so that the
                # next, with more room, fails further in; the first call that fits ends the sweep.
                for room in range(0, 64 << 20, 256 << 10):
                    in_use = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
                    resource.setrlimit(resource.RLIMIT_AS, (in_use + room, hard))
                    try:
                        got = run(model, train)
                    except MemoryError:
                        got = None
                    finally:
                        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
                    if got is None:
                        failures += 1
                        # Nothing half-changed: the parameters as they were, the gradients as before the call.
                        assert all(np.array_equal(p, q) for p, q in zip(params, model.parameters())), room
                        # The gradients as before backward: zero (run zeroes them first).
                        assert not any(g.any() for g in model.grads.values()), (threads, train, room)
                        continue
                    successes += 1
                    assert same(got, run(make(), train)), (threads, train, room)
                    break
                # The calls that failed left the model working.
                assert same(run(model, train), run(make(), train)), (threads, train)
        return failures, successes

    print(*on_a_thread(sweep))
""")


@pytest.mark.skipif(sys.platform != "linux", reason="limits the address space (RLIMIT_AS)")
@pytest.mark.skipif(SANITIZED, reason="AddressSanitizer's shadow memory reserves terabytes: RLIMIT_AS cannot bound it")
@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"])
def test_a_call_that_runs_out_of_address_space_raises_memory_error_and_changes_nothing(kind: str) -> None:
    # As the room grows from nothing, successive calls fail at successive allocations -- NumPy's arrays, the
    # kernels' workspaces and packed weights, a worker thread's stack: each failure is a MemoryError (never a crash,
    # another exception or wrong numbers), leaves the parameters as they were, and the next call works.
    proc = subprocess.run([sys.executable, "-c", _ADDRESS_SPACE_SWEEP, kind], capture_output=True, text=True,
                          env=limited_child_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    if proc.stdout.startswith("skip: "):
        pytest.skip(proc.stdout[6:].strip())
    failures, successes = map(int, proc.stdout.split())
    assert successes == 4 and failures >= 4, proc.stdout  # 10 to 45 on the development machine
