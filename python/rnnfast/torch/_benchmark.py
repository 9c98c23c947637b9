"""A full training step with rnnfast.torch against the same model with torch.nn (``python -m rnnfast.torch``)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence




def benchmark(cases: Optional[Sequence[str]] = None, threads: Optional[int] = None, repeat: int = 5,
              min_seconds: float = 0.05) -> List[Dict[str, Any]]:
    """Time one full training step of a model with ``rnnfast.torch.RNN`` against the same model with
    ``torch.nn.RNN``: ``zero_grad``, forward, a linear head on every step's output, MSE loss against a fixed
    random target, ``backward``, ``torch.optim.Adam`` ``step``; float32, CPU.

    ``cases``: names (or substrings of names) of RNN cases of ``rnnfast.bench.CASES``, None for all of them
    (ragged cases feed a ``PackedSequence`` to both). ``threads``: set for both torch and rnnfast during the run
    (None leaves them as they are). Each repetition times both models in turn, alternating which goes first, each
    in a loop of at least ``min_seconds``; the result per case is the median time per step over the repetitions.
    Returns one dict per case: ``name``, ``threads``, ``torch_ms``, ``rnnfast_ms``, ``speedup`` (torch's time /
    rnnfast's).
    """
    from .. import get_num_threads
    from .._torch_cli import time_training_steps
    from ..bench.timing import Timing

    results = time_training_steps(cases, threads=threads, timing=Timing(repeat, min_seconds, 0.0, 0.0))
    return [{"name": r["name"], "threads": get_num_threads() if threads is None else threads, "torch_ms": r["torch_ms"],
             "rnnfast_ms": r["rnnfast_ms"], "speedup": r["speedup"]} for r in results]


def format_benchmark(results: Sequence[Dict[str, Any]]) -> str:
    """The results of ``benchmark`` as a table."""
    lines = [f"{'case':<22}{'torch.nn.RNN':>14}{'rnnfast.torch':>15}{'speedup':>9}"]
    for r in results:
        lines.append(f"{r['name']:<22}{r['torch_ms']:>11.3f} ms{r['rnnfast_ms']:>12.3f} ms{r['speedup']:>8.2f}x")
    return "\n".join(lines)
