"""The same bits at any thread count: outputs, final states, the input and initial-state gradients and every
parameter gradient are bitwise identical at 1, 2, 3, 4, 7, 8, 16 and 64 threads, for every cell kind, option and
dtype (the suite runs oversubscribed, RNNFAST_OVERSUBSCRIBE=1 in conftest.py, so the many-thread splits really run
on a small machine: this checks bits, not speed).

The shapes reach every way the kernels split work: by items (a batch of 8 items or more per thread), by bands of
state units (large steps, or few items for many threads), a batch of one item (matrix-vector steps in place, bands),
ragged lengths, two directions side by side, the chunked input projection of inference, and chunked products."""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import pytest

import rnnfast

THREADS = [1, 2, 3, 4, 7, 8, 16, 64]
Result = Dict[str, np.ndarray]


def _bits(a: np.ndarray) -> Tuple[Any, ...]:
    return a.shape, a.dtype.str, a.tobytes()


def _at_threads(run: Callable[[], Result]) -> Iterator[Tuple[int, Result]]:
    before = rnnfast.get_num_threads()
    try:
        for threads in THREADS:
            rnnfast.set_num_threads(threads)
            yield threads, run()
    finally:
        rnnfast.set_num_threads(before)


def _assert_same_bits(run: Callable[[], Result]) -> None:
    """run() at every thread count of THREADS gives the bits it gives at one thread."""
    first: Optional[Result] = None
    for threads, result in _at_threads(run):
        if first is None:
            first = result
            continue
        differ = [name for name in first if _bits(first[name]) != _bits(result[name])]
        assert not differ, f"at {threads} threads, not bitwise equal to 1 thread: {differ}"


MODELS = {"rnn": rnnfast.RNN, "lstm": rnnfast.LSTM, "gru": rnnfast.GRU}


def _stack_run(kind: str, T: int, B: int, I: int, H: int, *, layers: int = 1, bidirectional: bool = False,
               dtype: Any = np.float32, lengths: Optional[List[int]] = None, batch_first: bool = False,
               proj_size: int = 0) -> Callable[[], Result]:
    extra = {"proj_size": proj_size} if proj_size else {}
    model = MODELS[kind](I, H, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first, dtype=dtype,
                         seed=3, **extra)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(dtype)

    def run() -> Result:
        model.zero_grad()
        inference = model(x, None, lengths)  # the path without a cache (chunked input projection)
        output, h_n, cache = model.forward(x, None, lengths, return_cache=True)
        g = np.random.default_rng(11)
        grad_output = g.standard_normal(output.shape).astype(dtype)
        result = {"inference": inference[0], "output": output}
        if kind == "lstm":
            grad_h = g.standard_normal(h_n[0].shape).astype(dtype)
            grad_c = g.standard_normal(h_n[1].shape).astype(dtype)
            grad_x, (grad_h0, grad_c0) = model.backward(cache, grad_output, grad_h, grad_c)
            result.update(h_n=h_n[0], c_n=h_n[1], grad_h0=grad_h0, grad_c0=grad_c0)
        else:
            grad_h = g.standard_normal(h_n.shape).astype(dtype)
            grad_x, grad_h0 = model.backward(cache, grad_output, grad_h)
            result.update(h_n=h_n, grad_h0=grad_h0)
        result["grad_input"] = grad_x
        result.update({"grad." + name: np.array(value) for name, value in model.grads.items()})
        return result

    return run


# (T, B, I, H): items split at 2 threads and bands at many (hidden 200, batch 20: a word-language-model layer);
# items of odd counts and widths off whole packets; a batch of one item with a large W_hh (matrix-vector steps in
# place) and a small one (panels); a large step, split by bands at any thread count; a batch of one item whose input
# projection could use more threads than its recurrence (the projection's path must not follow the thread count).
SHAPES = [(6, 20, 30, 200), (4, 37, 13, 15), (3, 67, 16, 33), (12, 1, 24, 160), (12, 1, 8, 16), (2, 64, 64, 512),
          (200, 1, 24, 40)]


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T%d_B%d_I%d_H%d" % s)
def test_one_layer_float32(kind: str, shape: Tuple[int, int, int, int]) -> None:
    _assert_same_bits(_stack_run(kind, *shape))


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_two_layers_bidirectional(kind: str, dtype: Any) -> None:
    _assert_same_bits(_stack_run(kind, 5, 24, 20, 72, layers=2, bidirectional=True, dtype=dtype))


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_float64(kind: str) -> None:
    _assert_same_bits(_stack_run(kind, 6, 20, 30, 200, dtype=np.float64))


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_ragged_lengths_batch_first(kind: str) -> None:
    lengths = [9, 3, 5, 1, 9, 2, 8, 7, 6, 9, 4, 3, 2, 1, 5, 6, 7, 8, 9, 2, 3, 9, 9, 4, 1]
    _assert_same_bits(_stack_run(kind, 9, len(lengths), 11, 40, layers=2, bidirectional=True, lengths=lengths,
                                 batch_first=True))


def test_lstm_projection() -> None:
    _assert_same_bits(_stack_run("lstm", 5, 33, 12, 48, layers=2, bidirectional=True, proj_size=20))


def test_chunked_products() -> None:
    """A forward and backward whose input products run in chunks of rows (their size depends on the threads)."""
    _assert_same_bits(_stack_run("lstm", 12, 64, 1024, 256))


CELLS = {"rnn": rnnfast.RNNCell, "lstm": rnnfast.LSTMCell, "gru": rnnfast.GRUCell}


@pytest.mark.parametrize("kind", sorted(CELLS))
@pytest.mark.parametrize("batch", [1, 40])
def test_cells(kind: str, batch: int) -> None:
    cell = CELLS[kind](50, 300, seed=5)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((batch, 50)).astype(np.float32)
    h = rng.standard_normal((batch, 300)).astype(np.float32)
    hx: Any = (h, h[::-1].copy()) if kind == "lstm" else h
    grad = rng.standard_normal((batch, 300)).astype(np.float32)

    def run() -> Result:
        cell.zero_grad()
        *new, cache = cell.forward(x, hx, return_cache=True)
        result = {"state%d" % i: part for i, part in enumerate(new)}
        grads = cell.backward(cache, grad)
        for i, g in enumerate(grads if isinstance(grads, tuple) else (grads,)):
            for j, part in enumerate(g if isinstance(g, tuple) else (g,)):
                result["grad%d.%d" % (i, j)] = part
        result.update({"grad." + name: np.array(value) for name, value in cell.grads.items()})
        return result

    _assert_same_bits(run)


def test_through_rnnfast_torch() -> None:
    torch = pytest.importorskip("torch")
    import rnnfast.torch as rt

    torch.manual_seed(0)
    model = rt.LSTM(30, 200, num_layers=2, bidirectional=True)
    x = torch.randn(6, 20, 30, requires_grad=True)

    def run() -> Result:
        model.zero_grad()
        x.grad = None
        output, (h_n, c_n) = model(x)
        (output.square().sum() + h_n.sum() + c_n.square().sum()).backward()
        result = {"output": output.detach().numpy().copy(), "grad_input": x.grad.numpy().copy()}
        result.update({name: p.grad.numpy().copy() for name, p in model.named_parameters()})
        return result

    _assert_same_bits(run)
