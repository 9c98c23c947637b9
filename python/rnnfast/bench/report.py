"""The results as a plain-text table (``format_table``) and as a bar chart (``write_plot``)."""

from __future__ import annotations

import importlib
from typing import Any, Dict, List, Optional, Sequence

from .backends import _COLORS, _SHORT_NAMES, BACKEND_TABLE, BACKENDS
from .cases import MODES
from .timing import GEMM_DRIFT, gemm_drift


def _fmt_ms(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    if ms < 0.1:
        return f"{ms:.4f}"
    if ms < 10:
        return f"{ms:.3f}"
    if ms < 1000:
        return f"{ms:.1f}"
    return f"{ms:.0f}"


def _backends_in(results: Dict[str, Any]) -> List[str]:
    seen = set()
    for case in results["cases"].values():
        for mode in case["modes"].values():
            seen.update(mode["median_s"])
            seen.update(mode["skipped"])
    return [b for b in BACKENDS if b in seen]


def _compared(backends: Sequence[str]) -> List[str]:
    """The backends rnnfast's speedups are over: all but rnnfast and the variants (rows of another backend at other
    settings, which count toward that backend's speedup)."""
    return [b for b in backends if b != "rnnfast" and BACKEND_TABLE[b].variant_of is None]


def _quick_notes(results: Dict[str, Any]) -> List[str]:
    """One line per backend that a quick run left out of some cases, naming them."""
    left_out: Dict[str, List[str]] = {}
    for name, case in results["cases"].items():
        for backend in case.get("not_run", {}):
            left_out.setdefault(backend, []).append(name)
    notes = []
    for backend, names in left_out.items():
        limit = getattr(BACKEND_TABLE.get(backend), "quick_max_flops", None)
        why = f" (over {limit / 1e6:.0f} MFLOP per forward pass)" if limit is not None else ""
        notes.append(f"--quick: {_SHORT_NAMES.get(backend, backend)} not run on {', '.join(names)}{why}; "
                     f"a run without --quick times it there.")
    return notes


def format_table(results: Dict[str, Any]) -> str:
    """The results as a plain-text table (times in milliseconds per call)."""
    backends = _backends_in(results)
    others = _compared(backends)
    header = (["case", "mode"] + [f"{_SHORT_NAMES[b]} ms" for b in backends]
              + [f"vs {_SHORT_NAMES[b]}" for b in others] + ["GFLOP/s", "% GEMM"])
    rows, notes = [], []
    for name, case in results["cases"].items():
        for mode, m in case["modes"].items():
            row = [name, mode]
            for b in backends:
                if b in m["median_s"]:
                    row.append(_fmt_ms(m["median_s"][b]))
                elif b in m["skipped"]:
                    row.append("mismatch" if m["skipped"][b].startswith("mismatch") else "error")
                    notes.append(f"{name} {mode} {b}: {m['skipped'][b]}")
                else:
                    row.append("-")
            # "*": the speedup is over one of the backend's variants, which was faster than its own row.
            row += [f"{m['speedup'][b]:.2f}x" + ("*" if m.get("speedup_row", {}).get(b, b) != b else "")
                    if b in m["speedup"] else "-" for b in others]
            if "rnnfast_gflops" in m:
                row += [f"{m['rnnfast_gflops']:.2f}", f"{m['percent_of_gemm']:.1f}"]
            else:
                row += ["", ""]
            rows.append(row)
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(wd) if i < 2 else c.rjust(wd) for i, (c, wd) in enumerate(zip(cells, widths)))

    machine, gemm = results["machine"], results["gemm"]
    drift = gemm_drift(gemm)  # None: results of one GEMM measurement (older JSON)
    dtype = results.get("dtype", "float32")
    out = [
        f"rnnfast {results['versions']['rnnfast']} benchmark ({results.get('cell', 'rnn')} cells) in {dtype}: "
        f"{machine['cpu_model']}, {results['threads']} thread(s), "
        f"median of {results['repeat']} repetition(s){' (quick)' if results['quick'] else ''}",
        f"GEMM rate (NumPy {gemm.get('dtype', 'float32')} {gemm['size']}x{gemm['size']}): "
        f"{gemm['gflops']:.1f} GFLOP/s" + ("" if drift is None else
                                            f" (the faster of {gemm['before']['gflops']:.1f} before the cases and "
                                            f"{gemm['after']['gflops']:.1f} after them)"),
        "",
        line(header),
        line(["-" * wd for wd in widths]),
    ]
    out += [line(r) for r in rows]
    out += ["",
            "vs X = X's time / rnnfast's time (above 1: rnnfast is faster). GFLOP/s and % GEMM: rnnfast inference."]
    for variant in backends:
        of = BACKEND_TABLE[variant].variant_of
        if of is None:
            continue
        out.append(f"vs {_SHORT_NAMES[of]} = against the faster of {_SHORT_NAMES[of]} ({results['threads']} threads) "
                   f"and {_SHORT_NAMES[variant]} (one thread); * where {_SHORT_NAMES[variant]} was the faster.")
    peaks = {name: case["train_peak_bytes"] for name, case in results["cases"].items() if "train_peak_bytes" in case}
    if peaks:
        out += ["", "Training-step peak memory (MiB above the step's start, each backend in a fresh process):"]
        for name, peak in peaks.items():
            cells = [f"{b} {peak[b] / 2**20:.1f}" if peak[b] is not None else f"{b} -" for b in peak]
            if (peak.get("rnnfast") or 0) >= 2**20 and (peak.get("torch") or 0) >= 2**20:  # ratios of noise below
                cells.append(f"torch / rnnfast {peak['torch'] / peak['rnnfast']:.2f}x")
            out.append(f"  {name}: " + ", ".join(cells))
    missing = [f"{b} ({info['reason']})" for b, info in results["backends"].items()
               if not info["available"] and info.get("reason") != "not requested"]
    if missing:
        out.append("Not run: " + "; ".join(missing))
    if drift is not None and drift > GEMM_DRIFT:
        out.append(f"The GEMM rate moved {drift:.2f}x between the start and the end of the run: the machine's speed "
                   "changed while it ran. Speedups compare backends timed side by side in each repetition; GFLOP/s "
                   "and % GEMM, and cases timed far apart, compare less surely.")
    out += _quick_notes(results)
    out += notes
    return "\n".join(out)


def write_plot(results: Dict[str, Any], path: str) -> None:
    """A PNG bar chart of rnnfast's speedup over each other backend, per case (one panel per mode). Needs
    matplotlib (ImportError otherwise)."""
    figure_module = importlib.import_module("matplotlib.figure")
    backends = _compared(_backends_in(results))
    modes = [mode for mode in MODES if any(mode in c["modes"] for c in results["cases"].values())]
    fig = figure_module.Figure(figsize=(max(6.0, 1.1 * len(results["cases"]) + 2), 3.6 * len(modes)))
    axes = fig.subplots(len(modes), 1, squeeze=False)[:, 0]
    width = 0.8 / max(len(backends), 1)
    for ax, mode in zip(axes, modes):
        names = [n for n, c in results["cases"].items() if mode in c["modes"]]
        for k, backend in enumerate(backends):
            xs, ys = [], []
            for i, name in enumerate(names):
                speedup = results["cases"][name]["modes"][mode]["speedup"].get(backend)
                if speedup is not None:
                    xs.append(i + (k - (len(backends) - 1) / 2) * width)
                    ys.append(speedup)
            if xs:
                ax.bar(xs, ys, width=width, label=f"vs {backend}", color=_COLORS.get(backend))
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=25, ha="right", fontsize=8)
        ax.set_ylabel("speedup (other / rnnfast)")
        ax.set_title(f"{mode}, {results['threads']} thread(s), {results.get('dtype', 'float32')}")
        ax.legend(fontsize=8)
    fig.suptitle(f"rnnfast speedups on {results['machine']['cpu_model']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
