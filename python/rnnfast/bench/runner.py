"""Running the grid: ``run`` (what ``--json`` writes) and ``_bench_case`` (one case, every backend)."""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, replace
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
from numpy.typing import DTypeLike

import rnnfast

from .backends import (_JOB_BUILDERS, _OPTIONAL_BACKENDS, _TOLERANCES, _VARIANTS, BACKEND_TABLE, _grad_mismatch,
                       _import_optional, _Job, _make_workload, _output_mismatch, _quick_exclusion, _Skip)
from .cases import KIND_GATES, Case, check_dtype, select_cases
from .memory import _MEMORY_BACKENDS, measure_train_memory
from .timing import GEMM_SIZE, Timing, _BlasThreads, _machine_info, _measure_gemm, gemm_rate, time_interleaved


def _bench_case(case: Case, backends: Sequence[str], env: Dict[str, Any], repeat: int, min_seconds: float,
                settle: float, quick: bool = False) -> Dict[str, Any]:
    """Check every backend in ``backends`` against rnnfast on ``case``, then time those that agree, interleaved
    (``timing.time_interleaved``). A backend that fails or disagrees is recorded in ``skipped``, not timed.
    ``quick``: the agreement check's call stands in for the calibration call of a backend slower than
    ``min_seconds``."""
    w = _make_workload(case)
    output_tolerance, grad_relative, grad_floor = _TOLERANCES[case.dtype]
    jobs: Dict[str, Dict[str, _Job]] = {}
    skipped: Dict[str, Dict[str, str]] = {mode: {} for mode in case.modes}
    expected: Dict[str, Any] = {}
    check_s: Dict[str, Dict[str, float]] = {mode: {} for mode in case.modes}
    for backend in backends:
        try:
            built = _JOB_BUILDERS[backend](w, env)
        except _Skip:
            continue
        except Exception as exc:  # a backend that fails on this case is reported, not fatal
            if backend == "rnnfast":
                raise
            for mode in case.modes:
                skipped[mode][backend] = f"error: {type(exc).__name__}: {exc}"
            continue
        for mode, job in built.items():
            try:
                start = time.perf_counter()
                probed = job.probe()
                check_s[mode][backend] = time.perf_counter() - start
                if backend == "rnnfast":
                    expected[mode] = tuple(probed) if mode == "inference" else probed
                    problem = None
                elif mode == "inference":
                    problem = _output_mismatch(probed, expected[mode], output_tolerance)
                else:
                    problem = _grad_mismatch(probed, expected[mode], grad_relative, grad_floor)
            except Exception as exc:
                if backend == "rnnfast":
                    raise
                problem = f"error: {type(exc).__name__}: {exc}"
            if problem is not None:
                skipped[mode][backend] = f"mismatch: {problem}" if not problem.startswith("error") else problem
            else:
                jobs.setdefault(mode, {})[backend] = job

    result: Dict[str, Any] = {**asdict(case), "flops": case.flops, "modes": {}}
    for mode in case.modes:
        mode_jobs = jobs.get(mode, {})
        timings = time_interleaved({name: job.run_n for name, job in mode_jobs.items()}, repeat, min_seconds, settle,
                                   check_s[mode] if quick else None)
        median = timings.median_s
        base = median["rnnfast"]
        # Against each backend at its fastest row: its own, or one of its variants (PyTorch on one thread).
        fastest = {name: min([name, *_VARIANTS[name]], key=lambda row: median.get(row, float("inf")))
                   for name in median if name != "rnnfast" and BACKEND_TABLE[name].variant_of is None}
        result["modes"][mode] = {
            "median_s": median,
            "speedup": {name: median[row] / base for name, row in fastest.items()},
            "speedup_row": fastest,
            "samples_s": timings.samples_s,
            "calls_per_sample": timings.calls_per_sample,
            "skipped": skipped[mode],
        }
    return result


def run(cases: Optional[Sequence[str]] = None, threads: int = 2, repeat: int = 5, quick: bool = False,
        reference: bool = True, backends: Optional[Sequence[str]] = None,
        progress: Optional[Callable[[str], None]] = None, memory: bool = False, cell: str = "rnn",
        dtype: DTypeLike = "float32") -> Dict[str, Any]:
    """Run the benchmark and return its results (the dict that ``--json`` writes).

    Parameters
    ----------
    cases : names or substrings of names in ``CASES``; None runs the whole grid
    threads : threads for every backend (and for NumPy's BLAS, where it can be set)
    repeat : repetitions; each backend's time is the median over them
    quick : a smoke run: fewer (at most 3) and shorter (``QUICK_MIN_LOOP_SECONDS``) repetitions, and the NumPy
        reference only on cases of at most ``QUICK_REFERENCE_MAX_FLOPS`` (each case's ``not_run`` says where not)
    reference : also time the NumPy reference (slow on the big cases)
    backends : the optional backends to try, among "torch", "onnxruntime", "openvino"; None tries all of them.
        With "torch" and ``threads`` above 1, PyTorch also runs pinned to one thread (the "torch1" row), and the
        speedup over PyTorch is against the faster of its two rows
    progress : called with a line of text as each case starts
    memory : also measure each training case's peak memory per step, rnnfast's and PyTorch's (when it runs),
        with ``measure_train_memory``
    cell : the cell kind of every case: "rnn", "lstm" or "gru"
    dtype : the element type of every case, "float32" or "float64" (or the NumPy dtype): rnnfast's models,
        PyTorch's modules and the reference compute in it, and the GEMM rate is measured in it; ONNX Runtime and
        OpenVINO run in float32 only (in float64 they are listed as not run, with the reason)

    Results: ``{"cases": {name: {..., "flops", "modes": {"inference"|"train": {"median_s": {backend: seconds per
    call}, "speedup": {backend: backend_time / rnnfast_time}, "speedup_row": {backend: the row of it that speedup
    used, itself or a variant such as "torch1"}, "samples_s", "calls_per_sample", "skipped":
    {backend: why}}}, "not_run": {backend: why}}}, "gemm": {...}, "backends": {...}, "machine": {...},
    "versions": {...}, "threads", "dtype", ...}``; inference also has ``"rnnfast_gflops"`` and
    ``"percent_of_gemm"``; with ``memory``, training cases have ``"train_peak_bytes": {backend: bytes or None}``.
    ``"gemm"`` is NumPy's product rate measured before the cases and again after them (``"before"``, ``"after"``);
    its ``"gflops"``, which ``percent_of_gemm`` divides by, is the faster of the two (``gemm_rate``).
    """
    if cell not in KIND_GATES:
        raise ValueError(f"cell: expected one of {', '.join(map(repr, KIND_GATES))}, got {cell!r}")
    dtype = check_dtype(dtype)
    selected = [replace(case, kind=cell, dtype=dtype) for case in select_cases(cases)]
    threads = rnnfast._checks.positive_int("threads", threads)
    repeat = rnnfast._checks.positive_int("repeat", repeat)
    timing = Timing.for_run(repeat, quick)
    wanted = list(_OPTIONAL_BACKENDS) if backends is None else list(backends)
    unknown = [b for b in wanted if b not in _OPTIONAL_BACKENDS]
    if unknown:
        raise ValueError(f"backends: unknown {unknown}; expected some of {list(_OPTIONAL_BACKENDS)}")

    versions: Dict[str, Optional[str]] = {"rnnfast": rnnfast.__version__, "numpy": np.__version__,
                                          "python": platform.python_version()}
    backend_info: Dict[str, Dict[str, Any]] = {}
    env: Dict[str, Any] = {"threads": threads}
    active: List[str] = []
    for row in BACKEND_TABLE.values():
        # The optional backends are chosen with `backends` (a variant with its backend), the reference with
        # `reference`; rnnfast always runs.
        chosen = row.variant_of if row.variant_of is not None else row.name
        requested = (chosen in wanted) if row.optional else (reference if row.name == "reference" else True)
        if not requested:
            backend_info[row.name] = {"available": False, "reason": "not requested"}
            continue
        if dtype not in row.dtypes:
            backend_info[row.name] = {"available": False, "reason": f"{dtype}: {row.why_not_dtype}"}
            continue
        reasons = []
        for module_name in row.requires:
            if module_name not in env:
                module, reason = _import_optional(module_name)
                env[module_name] = module
                versions[module_name] = getattr(module, "__version__", None) if module is not None else None
                if reason is not None:
                    env[f"{module_name}_error"] = reason
            if env[module_name] is None:
                reasons.append(f"{module_name}: {env[f'{module_name}_error']}")
        backend_info[row.name] = {"available": not reasons}
        if reasons:
            backend_info[row.name]["reason"] = "; ".join(reasons)
        else:
            active.append(row.name)
    if env.get("onnxruntime") is not None:
        env["onnxruntime"].set_default_logger_severity(3)

    blas = _BlasThreads()
    saved_rnnfast, saved_blas = rnnfast.get_num_threads(), blas.get()
    saved_torch = env["torch"].get_num_threads() if env.get("torch") is not None else None
    try:
        rnnfast.set_num_threads(threads)
        blas.set(threads)
        if env.get("torch") is not None:
            env["torch"].set_num_threads(threads)
        if timing.startup_settle_s > 0:
            time.sleep(timing.startup_settle_s)
        if progress:
            progress(f"GEMM rate: NumPy {dtype} {GEMM_SIZE}x{GEMM_SIZE} products, {threads} thread(s)")
        gemm_before = _measure_gemm(blas.get(), timing.repeat, timing.min_loop_s, dtype)
        results_cases: Dict[str, Any] = {}
        for index, case in enumerate(selected, 1):
            not_run = {}
            if quick:
                for backend in active:
                    why = _quick_exclusion(backend, case)
                    if why is not None:
                        not_run[backend] = why
            if progress:
                left_out = "".join(f"; {b} not run (--quick)" for b in not_run)
                progress(f"[{index}/{len(selected)}] {case.name}{left_out}")
            result = _bench_case(case, [b for b in active if b not in not_run], env, timing.repeat,
                                 timing.min_loop_s, timing.settle_s, quick)
            result["not_run"] = not_run
            inference = result["modes"]["inference"]
            inference["rnnfast_gflops"] = case.flops / inference["median_s"]["rnnfast"] / 1e9
            if memory and "train" in case.modes:
                result["train_peak_bytes"] = {backend: measure_train_memory(case, backend, threads)
                                              for backend in _MEMORY_BACKENDS if backend in active}
            results_cases[case.name] = result
        if progress:
            progress("GEMM rate again, after the cases")
        gemm = gemm_rate(gemm_before, _measure_gemm(blas.get(), timing.repeat, timing.min_loop_s, dtype))
        for result in results_cases.values():
            inference = result["modes"]["inference"]
            inference["percent_of_gemm"] = 100.0 * inference["rnnfast_gflops"] / gemm["gflops"]
    finally:
        rnnfast.set_num_threads(saved_rnnfast)
        blas.set(saved_blas)
        if saved_torch is not None:
            env["torch"].set_num_threads(saved_torch)

    return {
        "schema": 1,
        "cell": cell,
        "dtype": dtype,
        "threads": threads,
        "repeat": timing.repeat,
        "quick": bool(quick),
        "min_loop_s": timing.min_loop_s,
        "machine": _machine_info(blas),
        "versions": versions,
        "backends": backend_info,
        "gemm": gemm,
        "cases": results_cases,
    }
