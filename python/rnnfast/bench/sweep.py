"""``rnnfast bench --threads 1,2,4,...``: the benchmark at several thread counts (``sweep``), as a table of each
backend's time against the thread count (``format_sweep``) and a plot of it (``write_sweep_plot``)."""

from __future__ import annotations

import importlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .backends import _COLORS, _SHORT_NAMES, BACKEND_TABLE, BACKENDS
from .report import _backends_in, _fmt_ms
from .runner import run

# Times within this factor of one another are the same (the machine is shared and noisy).
SWEEP_NOISE = 1.05


def sweep(threads: Sequence[int], **options: Any) -> List[Dict[str, Any]]:
    """``run(threads=n, **options)`` for each n of ``threads``, in order: every backend pinned to n threads."""
    counts = list(threads)
    if not counts:
        raise ValueError("threads: expected at least one thread count, got none")
    return [run(threads=n, **options) for n in counts]


def _series(runs: Sequence[Dict[str, Any]]) -> Dict[Tuple[str, str, str], List[Optional[float]]]:
    """(case, mode, backend) -> its median time at each run's thread count (None where it did not run). Variants
    (PyTorch pinned to one thread) are left out: the sweep times every backend at each count."""
    backends = [b for b in BACKENDS
                if BACKEND_TABLE[b].variant_of is None and any(b in _backends_in(r) for r in runs)]
    series: Dict[Tuple[str, str, str], List[Optional[float]]] = {}
    for name, case in runs[0]["cases"].items():
        for mode in case["modes"]:
            for backend in backends:
                times = [r["cases"][name]["modes"][mode]["median_s"].get(backend) for r in runs]
                if any(t is not None for t in times):
                    series[(name, mode, backend)] = times
    return series


def slowdown_with_more_threads(times: Sequence[Optional[float]]) -> float:
    """The largest time(n) / time(m) over thread counts m < n (runs in increasing order of count): above 1, more
    threads were slower than fewer."""
    worst = 1.0
    for i, t_m in enumerate(times):
        for t_n in times[i + 1:]:
            if t_m is not None and t_n is not None and t_m > 0:
                worst = max(worst, t_n / t_m)
    return worst


def format_sweep(runs: Sequence[Dict[str, Any]]) -> str:
    """The sweep as a table: per case, mode and backend, the time at each thread count, the fastest count, and the
    worst slowdown from more threads (marked where it exceeds the noise)."""
    counts = [r["threads"] for r in runs]
    first = runs[0]
    header = ["case", "mode", "backend"] + [f"{n} thr ms" for n in counts] + ["fastest", "more threads"]
    rows = []
    for (name, mode, backend), times in _series(runs).items():
        timed = [(t, n) for t, n in zip(times, counts) if t is not None]
        fastest = min(timed)[1] if timed else "-"
        worst = slowdown_with_more_threads(times)
        rows.append([name, mode, _SHORT_NAMES.get(backend, backend), *[_fmt_ms(t) for t in times], str(fastest),
                     f"{worst:.2f}x slower" + (" !" if worst > SWEEP_NOISE else "")])
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    gemm = ", ".join(f"{r['threads']} thr {r['gemm']['gflops']:.1f}" for r in runs)
    out = [f"rnnfast {first['versions']['rnnfast']} thread sweep ({first.get('cell', 'rnn')} cells) in "
           f"{first.get('dtype', 'float32')}: {first['machine']['cpu_model']}, every backend at "
           f"{', '.join(map(str, counts))} thread(s), median of {first['repeat']} repetition(s)"
           f"{' (quick)' if first['quick'] else ''}",
           f"GEMM rate (GFLOP/s): {gemm}", "", line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    out += ["", f"more threads = the largest time(n) / time(m) over counts m < n; ! where above {SWEEP_NOISE:.2f} "
                "(beyond noise). rnnfast uses at most the CPUs the process may use, whatever the count."]
    return "\n".join(out)


def write_sweep_plot(runs: Sequence[Dict[str, Any]], path: str) -> None:
    """A PNG of time against thread count, one panel per case, a line per backend and mode (log-log). Needs
    matplotlib (ImportError otherwise)."""
    figure_module = importlib.import_module("matplotlib.figure")
    counts = [r["threads"] for r in runs]
    series = _series(runs)
    names = list(runs[0]["cases"])
    columns = min(3, len(names))
    rows = (len(names) + columns - 1) // columns
    fig = figure_module.Figure(figsize=(4.2 * columns, 3.2 * rows))
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, name in zip(axes, names):
        for (case, mode, backend), times in series.items():
            if case != name:
                continue
            points = [(n, 1e3 * t) for n, t in zip(counts, times) if t is not None]
            if points:
                ax.plot(*zip(*points), marker="o", linestyle="-" if mode == "inference" else "--",
                        color=_COLORS.get(backend), label=f"{_SHORT_NAMES.get(backend, backend)} {mode}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(counts)
        ax.set_xticklabels([str(n) for n in counts])
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("threads")
        ax.set_ylabel("ms per call")
        ax.legend(fontsize=6)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    fig.suptitle(f"rnnfast thread sweep on {runs[0]['machine']['cpu_model']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
