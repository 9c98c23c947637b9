"""``python -m rnnfast.torch``: one full PyTorch training step of a model with ``rnnfast.torch.RNN`` against the
same model with ``torch.nn.RNN``, on the RNN cases of ``rnnfast bench``'s grid, timed with ``rnnfast bench``'s
method (``rnnfast.bench.timing``: calibrated loops, interleaved repetitions, a pause and an untimed call before
each timed loop, the median).

The step: ``zero_grad``, forward, a linear head on every step's output, MSE loss against a fixed random target,
``backward``, ``torch.optim.Adam`` ``step``; float32, CPU. Ragged cases feed both models the same
``PackedSequence``, packed once outside the timed step.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence

if TYPE_CHECKING:
    from .bench.timing import Timing

PROG = "python -m rnnfast.torch"


def _case_list(values: Sequence[str]) -> List[str]:
    return [item for value in values for item in value.split(",") if item]


def _threads_arg(text: str) -> Optional[int]:
    from . import _checks

    return None if text == "default" else _checks.cli_int(1)(text)


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    from . import _checks
    from .bench import CASES

    sequence_cases = [name for name, case in CASES.items() if not case.cell]
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Time one full PyTorch training step (zero_grad, forward, linear head, MSE loss, backward, "
                    "Adam step) of a model with rnnfast.torch.RNN against the same model with torch.nn.RNN, "
                    "with the timing method of 'rnnfast bench'.",
        epilog="cases: " + ", ".join(sequence_cases))
    parser.add_argument("names", nargs="*", metavar="CASE",
                        help="case names or substrings of names, as with --cases")
    parser.add_argument("--cases", nargs="+", metavar="NAME", default=[],
                        help="case names or substrings of names (comma- or space-separated; default: every RNN "
                             "case of rnnfast bench's grid)")
    parser.add_argument("--threads", type=_threads_arg, default=2,
                        help="threads for both libraries: torch.set_num_threads and rnnfast.set_num_threads, or "
                             "'default': each library's own default (rnnfast's then cooperates with PyTorch's "
                             "threads) "
                             "(default 2)")
    parser.add_argument("--repeat", type=_checks.cli_int(1), default=5,
                        help="repetitions; times are their median (default 5; at most 3 with --quick)")
    parser.add_argument("--dropout", type=_checks.cli_float(0.0, 1.0), default=0.0,
                        help="dropout between the layers of both models (training mode; default 0): PyTorch's "
                             "word-language-model example trains with 0.2")
    parser.add_argument("--quick", action="store_true", help="fewer and shorter repetitions (smoke runs)")
    return parser


def _training_steps(case: Any, dropout: float = 0.0) -> Dict[str, Callable[[], None]]:
    """One training step of each model on ``case`` (a ``rnnfast.bench.Case``): ``{"torch": ..., "rnnfast": ...}``,
    both models with the same initial weights, input and target, and ``dropout`` between their layers."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence

    from .torch import RNN

    gen = torch.Generator().manual_seed(0)
    x: Any = torch.randn(case.seq_len, case.batch, case.input_size, generator=gen)
    if case.ragged:
        lengths = torch.randint(1, case.seq_len + 1, (case.batch,), generator=gen)
        x = pack_padded_sequence(x, lengths, enforce_sorted=False)
        target = torch.randn(x.data.shape[0], 1, generator=gen)
    else:
        target = torch.randn(case.seq_len, case.batch, 1, generator=gen)
    steps: Dict[str, Callable[[], None]] = {}
    for label, cls in (("torch", torch.nn.RNN), ("rnnfast", RNN)):
        torch.manual_seed(0)
        rnn = cls(case.input_size, case.hidden_size, case.num_layers, case.nonlinearity,
                  bidirectional=case.bidirectional, dropout=dropout if case.num_layers > 1 else 0.0)
        head = torch.nn.Linear(case.directions * case.hidden_size, 1)
        optimizer = torch.optim.Adam([*rnn.parameters(), *head.parameters()], lr=1e-3)

        def step(rnn: torch.nn.Module = rnn, head: torch.nn.Module = head, optimizer: Any = optimizer) -> None:
            optimizer.zero_grad()
            out = rnn(x)[0]
            loss = torch.nn.functional.mse_loss(head(out.data if case.ragged else out), target)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()

        steps[label] = step
    return steps


def _loop(step: Callable[[], None]) -> Callable[[int], None]:
    """``run_n(n)``: n calls of ``step``."""

    def run_n(n: int) -> None:
        for _ in range(n):
            step()

    return run_n


def time_training_steps(cases: Optional[Sequence[str]] = None, threads: Optional[int] = 2, repeat: int = 5,
                        quick: bool = False, progress: Optional[Callable[[str], None]] = None,
                        dropout: float = 0.0, timing: Optional[Timing] = None) -> List[Dict[str, Any]]:
    """Time the training step of both models on each RNN case named by ``cases`` (names or substrings; None for
    all), both libraries at ``threads`` threads (restored afterwards; None: each at its default), with ``rnnfast
    bench``'s timing method (``timing``: other settings than a run's of ``repeat`` and ``quick``); ``dropout``
    between the layers of stacks.

    Returns one dict per case, as ``rnnfast.torch.benchmark``: ``name``, ``threads``, ``torch_ms``, ``rnnfast_ms``,
    ``speedup`` (torch's time / rnnfast's), and ``samples_ms`` (every repetition's time per step, per model).
    """
    import torch

    from . import _core, get_num_threads, set_num_threads
    from .bench import select_cases
    from .bench.timing import Timing, time_interleaved

    if timing is None:
        timing = Timing.for_run(repeat, quick)
    selected = [case for case in select_cases(cases) if not case.cell]
    saved_torch, saved_rnnfast = torch.get_num_threads(), get_num_threads()
    rnnfast_default = _core.num_threads_is_default()
    results = []
    try:
        if threads is not None:
            torch.set_num_threads(threads)
            set_num_threads(threads)
        if timing.startup_settle_s > 0:
            time.sleep(timing.startup_settle_s)
        for index, case in enumerate(selected, 1):
            if progress:
                progress(f"[{index}/{len(selected)}] {case.name}")
            steps = _training_steps(case, dropout)
            for step in steps.values():
                step()  # warm-up: the first step allocates the optimizer's state

            timings = time_interleaved({label: _loop(step) for label, step in steps.items()}, timing.repeat,
                                       timing.min_loop_s, timing.settle_s)
            torch_ms, rnnfast_ms = 1e3 * timings.median_s["torch"], 1e3 * timings.median_s["rnnfast"]
            results.append({"name": case.name, "threads": threads, "torch_ms": torch_ms, "rnnfast_ms": rnnfast_ms,
                             "speedup": torch_ms / rnnfast_ms,
                             "samples_ms": {label: [1e3 * s for s in samples]
                                            for label, samples in timings.samples_s.items()}})
    finally:
        torch.set_num_threads(saved_torch)
        if rnnfast_default:
            _core.reset_num_threads()
        else:
            set_num_threads(saved_rnnfast)
    return results


def main(argv: Optional[Sequence[str]] = None, prog: str = PROG) -> int:
    """``python -m rnnfast.torch``: time the steps, print the table."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    from .bench import select_cases

    patterns = _case_list([*args.names, *args.cases]) or None
    try:
        chosen = select_cases(patterns)
    except ValueError as exc:
        parser.error(str(exc))
    if all(case.cell for case in chosen):
        parser.error("cases: only cell_step_* cases chosen; the training step runs on the RNN cases")
    from .torch import format_benchmark

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    results = time_training_steps([case.name for case in chosen], threads=args.threads, repeat=args.repeat,
                                  quick=args.quick, progress=progress, dropout=args.dropout)
    from .bench.timing import Timing

    repeat = Timing.for_run(args.repeat, args.quick).repeat
    dropout = f", dropout {args.dropout:g} between layers" if args.dropout > 0 else ""
    print(f"One training step (zero_grad, forward, linear head, MSE loss, backward, Adam step), float32{dropout}:")
    if args.threads is None:
        import torch

        from . import get_num_threads

        threads = (f"default thread counts (torch {torch.get_num_threads()}, rnnfast {get_num_threads()}, lending "
                   "calls of modest work only the cores torch's threads leave)")
    else:
        threads = f"{args.threads} thread(s) for torch and rnnfast"
    print(f"{threads}, median of {repeat} repetition(s){' (quick)' if args.quick else ''}")
    print(format_benchmark(results))
    return 0
