"""The time-series demo: learn to predict the next value of a noisy sine wave, end to end in NumPy + rnnfast.

Run it as ``python -m rnnfast demo`` (``--help`` lists the options) or from Python::

    from rnnfast import demo
    metrics = demo.run(epochs=5, progress=False)
    print(metrics["test_mse"], metrics["naive_test_mse"])

What it does, all seeded:

* **Data.** ``make_series`` generates ``sin(2 pi t / 40) + 0.5 sin(2 pi t / 13)`` plus Gaussian noise (standard
  deviation ``noise``); the first ``train_fraction`` of it trains, the rest tests. ``make_windows`` cuts a part into
  overlapping windows of ``window`` steps: each window is one sequence, and the target of step t is the value at
  step t + 1.
* **Model.** An ``rnnfast.RNN`` (or ``LSTM`` / ``GRU`` with ``cell=``; one feature in, ``hidden`` features of
  state) and a linear read-out written in NumPy, ``prediction = output @ W + b``, applied at every step.
* **Training.** Mean squared error over every step of a window but the first ``warmup`` (the state is still
  filling up there); backpropagation through time with ``rnn.forward(..., return_cache=True)`` and
  ``rnn.backward``; gradients clipped to a global norm of ``clip`` (``rnnfast.optim.clip_grad_norm_``);
  ``rnnfast.optim.Adam`` (or ``SGD``) updating the model's parameters and the read-out's arrays in place. A
  progress bar shows the loss.
* **Evaluation.** Each value of a part (after its first ``window`` steps) is predicted from the window of the
  ``window`` values before it, and compared with the naive forecast that repeats the last value. The model cannot
  predict the noise, so its error stays above ``noise ** 2``; the naive forecast's is about ``2 * noise ** 2``
  plus the change of the wave between steps.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from . import _checks, _core, optim
from ._rnn import GRU, LSTM, RNN

__all__ = ["Adam", "SGD", "clip_grad_norm", "format_report", "main", "make_series", "make_windows", "naive_mse", "run",
           "write_plot"]

PERIODS = (40.0, 13.0)
AMPLITUDES = (1.0, 0.5)
# The recurrent layer of each --cell choice.
CELLS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}
# The demo succeeds when the model's test MSE is below this fraction of the naive forecast's.
SUCCESS_RATIO = 0.5


def make_series(length: int = 2000, noise: float = 0.1, seed: int = 0) -> np.ndarray:
    """``[length]`` float32 samples of two sine waves plus Gaussian noise of standard deviation ``noise``."""
    rng = np.random.default_rng(seed)
    t = np.arange(length, dtype=np.float64)
    phase = rng.uniform(0, 2 * math.pi, size=len(PERIODS))
    clean = sum(a * np.sin(2 * math.pi * t / p + ph) for a, p, ph in zip(AMPLITUDES, PERIODS, phase))
    return np.asarray(clean + noise * rng.standard_normal(length), dtype=np.float32)


def make_windows(series: np.ndarray, window: int) -> Tuple[np.ndarray, np.ndarray]:
    """Every window of ``window`` steps as a sequence: ``(inputs, targets)``, both ``[window, N, 1]`` (time-major)
    with ``N = len(series) - window``; ``targets`` is ``inputs`` shifted one step ahead."""
    n = len(series) - window
    if n < 1:
        raise ValueError(f"series: expected more than window={window} values, got {len(series)}")
    index = np.arange(window)[:, None] + np.arange(n)[None, :]  # [window, N]
    return series[index][:, :, None], series[index + 1][:, :, None]


def naive_mse(series: np.ndarray, window: int) -> float:
    """MSE of "the next value equals the last one" on the values that ``evaluate`` scores."""
    return float(np.mean((series[window:] - series[window - 1:-1]) ** 2))


def clip_grad_norm(grads: Iterable[np.ndarray], max_norm: float) -> float:
    """Scale the gradient arrays in place so that their global L2 norm is at most ``max_norm``; return the norm
    before. Kept for earlier callers: ``rnnfast.optim.clip_grad_norm_`` (models and (param, grad) pairs) is what
    the demo uses."""
    return optim._clip_norm(list(grads), max_norm, 2.0, False)


class _GivenGradients:
    """An ``rnnfast.optim`` optimizer over a dict of parameter arrays whose gradients come with each step."""

    def __init__(self, params: Dict[str, np.ndarray], make: Callable[[List[Any]], optim.Optimizer]) -> None:
        self.params = params
        self._grads = {name: np.zeros_like(p) for name, p in params.items()}
        self._opt = make([(p, self._grads[name]) for name, p in params.items()])

    def step(self, grads: Dict[str, np.ndarray]) -> None:
        for name, g in self._grads.items():
            g[...] = grads[name]
        self._opt.step()


class Adam(_GivenGradients):
    """Adam on a dict of parameter arrays, updated in place, with the gradients passed to each ``step(grads)``.
    Kept for earlier callers: ``rnnfast.optim.Adam``, which reads the gradients itself, is what the demo uses."""

    def __init__(self, params: Dict[str, np.ndarray], lr: float = 1e-2, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        super().__init__(params, lambda pairs: optim.Adam(pairs, lr=lr, betas=betas, eps=eps))


class SGD(_GivenGradients):
    """Plain gradient descent on a dict of parameter arrays, updated in place, with the gradients passed to each
    ``step(grads)``. Kept for earlier callers: the demo uses ``rnnfast.optim.SGD``."""

    def __init__(self, params: Dict[str, np.ndarray], lr: float = 0.1) -> None:
        super().__init__(params, lambda pairs: optim.SGD(pairs, lr=lr))


class _Model:
    """The recurrent layer (RNN, LSTM or GRU) and its NumPy linear read-out, with the read-out's gradients."""

    def __init__(self, hidden: int, seed: int, cell: str = "rnn") -> None:
        self.rnn: Any = CELLS[cell](input_size=1, hidden_size=hidden, seed=seed)
        bound = 1.0 / math.sqrt(hidden)
        rng = np.random.default_rng(seed + 1)
        self.head = {"head.weight": rng.uniform(-bound, bound, (hidden, 1)).astype(np.float32),
                     "head.bias": np.zeros(1, np.float32)}
        self.head_grads = {name: np.zeros_like(p) for name, p in self.head.items()}

    def params(self) -> List[Any]:
        """What rnnfast.optim takes: the recurrent model (its parameters and ``grads``) and (param, grad) pairs."""
        return [self.rnn, *((p, self.head_grads[name]) for name, p in self.head.items())]

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        out, _ = self.rnn(inputs)
        return out @ self.head["head.weight"] + self.head["head.bias"]  # type: ignore[no-any-return]

    def loss_and_backward(self, inputs: np.ndarray, targets: np.ndarray, warmup: int) -> float:
        """MSE over steps >= warmup; adds the gradients of every parameter into ``rnn.grads`` (BPTT) and
        ``head_grads`` (zero them first)."""
        out, _, cache = self.rnn.forward(inputs, return_cache=True)  # out [T, B, H]
        w, b = self.head["head.weight"], self.head["head.bias"]
        pred = out @ w + b  # [T, B, 1]
        diff = (pred - targets)[warmup:]
        loss = float(np.mean(diff ** 2))
        grad_pred = np.zeros_like(pred)
        grad_pred[warmup:] = 2 * diff / diff.size  # d(MSE)/d(pred)
        self.rnn.backward(cache, grad_output=grad_pred @ w.T)  # BPTT into rnn.grads
        self.head_grads["head.weight"] += np.einsum("tbh,tbo->ho", out, grad_pred)
        self.head_grads["head.bias"] += grad_pred.sum(axis=(0, 1))
        return loss


def _evaluate(model: _Model, series: np.ndarray, window: int) -> Tuple[np.ndarray, float]:
    """Predict each value from the ``window`` before it (the last output of that window): ``(predictions, MSE)``,
    predictions ``[len(series) - window]`` for ``series[window:]``."""
    inputs, _ = make_windows(series, window)
    pred = model.predict(inputs)[-1, :, 0]
    return pred, float(np.mean((pred - series[window:]) ** 2))


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        tqdm = importlib.import_module("tqdm").tqdm  # a declared dependency; a missing one only loses the bar
    except ImportError:
        print("(no progress bar: pip install tqdm)", file=sys.stderr)
        return None
    return tqdm(total=total, desc="training", unit="epoch", file=sys.stderr, dynamic_ncols=True)


def run(epochs: int = 40, hidden: int = 32, seed: int = 0, *, window: int = 40, warmup: int = 10,
        series_length: int = 2000, train_fraction: float = 0.75, noise: float = 0.1, batch_size: int = 32,
        optimizer: str = "adam", lr: Optional[float] = None, clip: float = 1.0, threads: Optional[int] = None,
        progress: bool = True, plot: Optional[str] = None, log: Optional[Callable[[str], None]] = None,
        cell: str = "rnn") -> Dict[str, Any]:
    """Train on the first part of the generated series and evaluate on both parts.

    Parameters
    ----------
    epochs : passes over the training windows (in shuffled mini-batches of ``batch_size``).
    hidden : the RNN's hidden size.
    seed : seeds the data, the initialization and the shuffling.
    window, warmup : sequence length, and the first steps of each that the loss ignores.
    series_length, train_fraction, noise : the generated data (see ``make_series``).
    optimizer : "adam" or "sgd"; lr : its learning rate (default 0.01 for Adam, 0.1 for SGD).
    clip : maximum global gradient norm.
    threads : thread limit of the kernels while the demo runs (restored afterwards); None keeps the process's
        setting (``rnnfast.get_num_threads()``), under which each call of these small sizes picks 1 thread itself.
    progress : show a tqdm progress bar on stderr.
    plot : write a PNG of prediction vs truth on the test part to this path (needs matplotlib; ImportError if
        missing).
    log : called with one line per epoch when there is no progress bar (None: silent).
    cell : "rnn", "lstm" or "gru": the recurrent layer (rnnfast.RNN, LSTM or GRU).

    Returns
    -------
    dict with ``train_mse``, ``test_mse``, ``naive_train_mse``, ``naive_test_mse``, ``test_ratio``
    (``test_mse / naive_test_mse``), ``noise_mse`` (``noise ** 2``, what a perfect model would score),
    ``losses`` (mean training loss per epoch), ``seconds`` (training time), ``plot`` (the path written or None),
    and the settings used.
    """
    epochs = _checks.positive_int("epochs", epochs)
    window = _checks.positive_int("window", window)
    batch_size = _checks.positive_int("batch_size", batch_size)
    if cell not in CELLS:
        raise ValueError(f"cell: expected one of {', '.join(map(repr, CELLS))}, got {cell!r}")
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer: expected 'adam' or 'sgd', got {optimizer!r}")
    if not 0 <= warmup < window:
        raise ValueError(f"warmup: expected 0 <= warmup < window={window}, got {warmup}")
    previous_threads = _core.get_num_threads()
    threads = previous_threads if threads is None else _checks.positive_int("threads", threads)
    _core.set_num_threads(threads)
    try:
        return _run(epochs, hidden, seed, window, warmup, series_length, train_fraction, noise, batch_size,
                    optimizer, lr, clip, progress, plot, log, cell)
    finally:
        _core.set_num_threads(previous_threads)


def _run(epochs: int, hidden: int, seed: int, window: int, warmup: int, series_length: int, train_fraction: float,
         noise: float, batch_size: int, optimizer: str, lr: Optional[float], clip: float, progress: bool,
         plot: Optional[str], log: Optional[Callable[[str], None]], cell: str) -> Dict[str, Any]:
    series = make_series(series_length, noise, seed)
    split = int(series_length * train_fraction)
    train, test = series[:split], series[split - window:]  # test windows may look back into the train part
    inputs, targets = make_windows(train, window)
    count = inputs.shape[1]

    model = _Model(hidden, seed, cell)
    params = model.params()
    opt: optim.Optimizer
    if optimizer == "adam":
        opt = optim.Adam(params, lr=1e-2 if lr is None else lr)
    else:
        opt = optim.SGD(params, lr=0.1 if lr is None else lr)
    rng = np.random.default_rng(seed + 2)
    losses: List[float] = []
    bar = _progress_bar(epochs, progress)
    start = time.perf_counter()
    try:
        for epoch in range(epochs):
            order = rng.permutation(count)
            total = 0.0
            for first in range(0, count, batch_size):
                batch = order[first:first + batch_size]
                opt.zero_grad()
                loss = model.loss_and_backward(np.ascontiguousarray(inputs[:, batch]), targets[:, batch], warmup)
                optim.clip_grad_norm_(params, clip)
                opt.step()
                total += loss * len(batch)
            losses.append(total / count)
            if bar is not None:
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                bar.update(1)
            elif log is not None:
                log(f"epoch {epoch + 1}/{epochs}  loss {losses[-1]:.4f}")
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start

    _, train_mse = _evaluate(model, train, window)
    test_pred, test_mse = _evaluate(model, test, window)
    naive_test = naive_mse(test, window)
    result: Dict[str, Any] = {
        "train_mse": train_mse,
        "test_mse": test_mse,
        "naive_train_mse": naive_mse(train, window),
        "naive_test_mse": naive_test,
        "test_ratio": test_mse / naive_test,
        "noise_mse": noise ** 2,
        "losses": losses,
        "seconds": seconds,
        "plot": None,
        "epochs": epochs, "hidden": hidden, "seed": seed, "window": window, "optimizer": optimizer, "cell": cell,
        "threads": _core.get_num_threads(),
    }
    if plot is not None:
        write_plot(test[window:], test_pred, test[window - 1:-1], plot,
                   title=f"Next-value prediction on the test part: MSE {test_mse:.4f} (naive {naive_test:.4f})",
                   label=f"rnnfast.{CELLS[cell].__name__}")
        result["plot"] = plot
    return result


def write_plot(truth: np.ndarray, prediction: np.ndarray, naive: np.ndarray, path: str, steps: int = 200,
               title: str = "Next-value prediction on the test part", label: str = "rnnfast.RNN") -> None:
    """PNG of the first ``steps`` values: truth, the model's prediction and the naive forecast (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(steps, len(truth))
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(truth[:n], color="black", lw=1, label="truth (noisy)")
    ax.plot(naive[:n], color="tab:gray", lw=1, ls=":", label="naive: repeat last value")
    ax.plot(prediction[:n], color="tab:red", lw=1.5, label=f"{label} prediction")
    ax.set_xlabel("test step")
    ax.set_ylabel("value")
    ax.set_title(title)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_report(metrics: Dict[str, Any]) -> str:
    """The lines ``rnnfast demo`` prints after training."""
    model = f"rnnfast.{CELLS[metrics.get('cell', 'rnn')].__name__}"
    lines = [
        f"{'':12}{model:>14}{'naive (repeat last)':>22}{'ratio':>8}",
        f"{'train MSE':12}{metrics['train_mse']:>14.5f}{metrics['naive_train_mse']:>22.5f}"
        f"{metrics['train_mse'] / metrics['naive_train_mse']:>8.2f}",
        f"{'test MSE':12}{metrics['test_mse']:>14.5f}{metrics['naive_test_mse']:>22.5f}{metrics['test_ratio']:>8.2f}",
        f"noise floor (noise variance, the best any model can do): {metrics['noise_mse']:.5f}",
        f"trained {metrics['epochs']} epochs in {metrics['seconds']:.1f} s "
        f"(hidden {metrics['hidden']}, {metrics['optimizer']}, seed {metrics['seed']})",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------

def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m rnnfast demo",
        description="Train an rnnfast.RNN (or LSTM, GRU) and a NumPy linear read-out to predict the next value of a generated, "
                    "noisy sine wave (MSE loss, backpropagation through time, gradient clipping, Adam or SGD), "
                    "then compare its train and test MSE with the naive forecast that repeats the last value. "
                    f"Exit status 1 when the test MSE is not below {SUCCESS_RATIO}x the naive one.")
    parser.add_argument("--epochs", type=_checks.cli_int(1), default=40, help="passes over the training data (default 40)")
    parser.add_argument("--hidden", type=_checks.cli_int(1), default=32, help="hidden size of the RNN (default 32)")
    parser.add_argument("--seed", type=_checks.cli_int(0), default=0,
                        help="seeds the data, the initialization and the shuffling (default 0)")
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="default adam")
    parser.add_argument("--cell", choices=tuple(CELLS), default="rnn",
                        help="the recurrent layer: rnnfast.RNN, LSTM or GRU (default rnn)")
    parser.add_argument("--plot", metavar="FILE", help="write a PNG of prediction vs truth on the test part "
                                                       "(needs matplotlib)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar; print only the results")
    return parser


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    """``python -m rnnfast demo``: train, print the results, write the plot asked for."""
    args = build_parser(prog).parse_args(argv)
    plot = args.plot
    if plot is not None and importlib.util.find_spec("matplotlib") is None:
        print(f"--plot: matplotlib is not installed, so no plot will be written to {plot} (pip install matplotlib)",
              file=sys.stderr)
        plot = None
    if not args.quiet:
        print(f"training rnnfast.{CELLS[args.cell].__name__}(1, {args.hidden}) on a noisy sine wave: {args.epochs} epochs, "
              f"{args.optimizer}, seed {args.seed}", file=sys.stderr)
    metrics = run(epochs=args.epochs, hidden=args.hidden, seed=args.seed, optimizer=args.optimizer,
                  progress=not args.quiet, plot=plot, cell=args.cell)
    print(format_report(metrics))
    if metrics["plot"] is not None:
        print(f"plot written to {metrics['plot']}")
    if metrics["test_ratio"] < SUCCESS_RATIO:
        print(f"OK: the model's test MSE is {metrics['test_ratio']:.2f}x the naive forecast's")
        return 0
    print(f"NOT GOOD ENOUGH: the model's test MSE is {metrics['test_ratio']:.2f}x the naive forecast's "
          f"(expected below {SUCCESS_RATIO}x; try more --epochs)")
    return 1
