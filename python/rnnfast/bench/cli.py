"""``rnnfast bench`` / ``python -m rnnfast bench``: the options, and ``main``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, List, Optional, Sequence

import rnnfast

from .backends import _OPTIONAL_BACKENDS, QUICK_REFERENCE_MAX_FLOPS, _import_optional
from .cases import CASES, DTYPES, KIND_GATES, select_cases
from .report import format_table, write_plot
from .runner import run
from .sweep import format_sweep, sweep, write_sweep_plot


def _split_list(values: Optional[Sequence[str]]) -> Optional[List[str]]:
    if values is None:
        return None
    return [item for value in values for item in value.split(",") if item]


def _thread_counts(text: str) -> List[int]:
    """``--threads``: one count, or several separated by commas (a sweep), each a positive integer."""
    parse = rnnfast._checks.cli_int(1)
    counts = [parse(item) for item in text.split(",")]
    if len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f"expected distinct thread counts, got {text!r}")
    return sorted(counts)


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m rnnfast bench",
        description="Time rnnfast's inference and training step against the NumPy reference and, when installed, "
                    "PyTorch, ONNX Runtime and OpenVINO, at one thread count or a sweep of several.",
        epilog="cases: " + ", ".join(CASES))
    parser.add_argument("--cases", nargs="+", metavar="NAME",
                        help="case names or substrings of names (comma- or space-separated; default: all)")
    parser.add_argument("--threads", type=_thread_counts, default=[2], metavar="N[,N...]",
                        help="threads for every backend (default 2); several counts, e.g. 1,2,4,8,16, sweep them: "
                             "the benchmark at each, then each backend's time against the thread count")
    parser.add_argument("--repeat", type=rnnfast._checks.cli_int(1), default=5,
                        help="repetitions; times are their median (default 5; at most 3 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="a short smoke run: fewer and shorter repetitions, and the NumPy reference only on "
                             f"cases of at most {QUICK_REFERENCE_MAX_FLOPS // 10**6} MFLOP per forward pass")
    parser.add_argument("--backends", nargs="+", metavar="NAME",
                        help=f"optional backends to try, among {', '.join(_OPTIONAL_BACKENDS)} (default: all)")
    parser.add_argument("--no-reference", dest="reference", action="store_false",
                        help="skip the (slow) NumPy reference")
    parser.add_argument("--cell", choices=tuple(KIND_GATES), default="rnn",
                        help="the cell kind of every case: rnnfast.RNN, LSTM or GRU against torch.nn's (default rnn)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="the element type of every case, and of the GEMM rate's products (default float32); "
                             "ONNX Runtime and OpenVINO run float32 only")
    parser.add_argument("--memory", action="store_true",
                        help="also measure the training step's peak memory, rnnfast's and PyTorch's (Linux)")
    parser.add_argument("--json", metavar="FILE", help="write all results to FILE as JSON")
    parser.add_argument("--plot", metavar="FILE",
                        help="write a PNG bar chart of the speedups, or for a sweep time against threads (needs "
                             "matplotlib)")
    return parser


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    """``python -m rnnfast bench``: run the benchmark, print the table, write the JSON / plot asked for."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        cases = select_cases(_split_list(args.cases))
        backends = _split_list(args.backends)
        if backends is not None:
            unknown = [b for b in backends if b not in _OPTIONAL_BACKENDS]
            if unknown:
                raise ValueError(f"--backends: unknown {unknown}; expected some of {list(_OPTIONAL_BACKENDS)}")
    except ValueError as exc:
        parser.error(str(exc))
    plot = args.plot
    if plot is not None and _import_optional("matplotlib")[0] is None:
        print(f"--plot: matplotlib is not installed, so no plot will be written to {plot} "
              f"(pip install matplotlib)", file=sys.stderr)
        plot = None

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    options = dict(cases=[c.name for c in cases], repeat=args.repeat, quick=args.quick, reference=args.reference,
                   backends=backends, progress=progress, memory=args.memory, cell=args.cell, dtype=args.dtype)
    results: Any
    if len(args.threads) == 1:
        results = run(threads=args.threads[0], **options)
        print(format_table(results))
    else:
        runs = sweep(args.threads, **options)
        for one in runs:
            print(format_table(one), end="\n\n")
        print(format_sweep(runs))
        results = {"sweep": runs}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
        print(f"results written to {args.json}", file=sys.stderr)
    if plot is not None:
        if len(args.threads) == 1:
            write_plot(results, plot)
        else:
            write_sweep_plot(results["sweep"], plot)
        print(f"plot written to {plot}", file=sys.stderr)
    return 0
