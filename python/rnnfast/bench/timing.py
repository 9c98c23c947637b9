"""How the benchmark times calls, and what it records about the machine.

The method (``time_interleaved``): every backend's loop of calls is calibrated to last at least ``min_loop_s``
(a backend slower than that makes one call per loop); then each repetition times every backend in turn
(round-robin, starting from a different backend each time), each after a pause (``settle_s``) and one untimed
call; a backend's time per call is the median over the repetitions. ``Timing.for_run`` gives the settings of a
normal and of a ``quick`` run. ``_measure_gemm`` gives the machine's matrix product rate at the same thread count
(a run measures it before and after its cases, ``gemm_rate``),
``_BlasThreads`` sets the thread count of NumPy's OpenBLAS, ``_machine_info`` describes the machine.
"""

from __future__ import annotations

import ctypes
import gc
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np

# Target length of one timed loop of calls; a repetition of a slow backend is a single call.
MIN_LOOP_SECONDS = 0.02
QUICK_MIN_LOOP_SECONDS = 0.002
QUICK_MAX_REPEAT = 3
GEMM_SIZE = 1024
# Pause before each timed loop so that the thread pool of the backend timed before it has gone idle: OpenBLAS
# (under the NumPy reference) and OpenMP runtimes keep their workers spinning for a while after a call, and a
# spinning neighbour takes a core from whatever runs next. An untimed call follows the pause (see time_interleaved).
# A quick run makes neither (a smoke run: fewer calls, rougher times).
_SETTLE_SECONDS = 0.3
_QUICK_SETTLE_SECONDS = 0.0
# Pause once after importing the backends, before anything is timed: on the development VM, kernels ran up to 2x
# slower for a second or two after `import torch` (no thread of the process busy: the system's own work after
# a large import), which hit whichever case came first.
_STARTUP_SETTLE_SECONDS = 2.0


@dataclass(frozen=True)
class Timing:
    """The timing settings of one run: repetitions, the shortest timed loop, the pause before each timed loop and
    the pause after the imports."""

    repeat: int
    min_loop_s: float
    settle_s: float
    startup_settle_s: float

    @classmethod
    def for_run(cls, repeat: int, quick: bool = False) -> "Timing":
        """A normal run's settings, or a quick run's: at most ``QUICK_MAX_REPEAT`` repetitions of shorter loops,
        without the pauses (and so without the untimed calls after them)."""
        if quick:
            return cls(min(repeat, QUICK_MAX_REPEAT), QUICK_MIN_LOOP_SECONDS, _QUICK_SETTLE_SECONDS, 0.0)
        return cls(repeat, MIN_LOOP_SECONDS, _SETTLE_SECONDS, _STARTUP_SETTLE_SECONDS)


@dataclass
class Timings:
    """What ``time_interleaved`` measured, per backend: the median seconds per call, every repetition's seconds
    per call, and the calls in each timed loop."""

    median_s: Dict[str, float]
    samples_s: Dict[str, List[float]]
    calls_per_sample: Dict[str, int]


# A first call within this factor of the loop length is timed twice before it counts as slow.
_CONFIRM_BELOW = 4.0


def _time_loop(run_n: Callable[[int], None], calls: int) -> float:
    """Seconds taken by ``run_n(calls)``, with the garbage collector paused as it runs."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        run_n(calls)
        return time.perf_counter() - start
    finally:
        if gc_was_enabled:
            gc.enable()


def _calibrate(run_n: Callable[[int], None], min_seconds: float, first_call_s: Optional[float] = None) -> int:
    """How many calls make a loop last at least ``min_seconds`` (1 for a backend slower than that). A known time of
    one call (``first_call_s``) of at least ``min_seconds`` answers 1 without calling."""
    if first_call_s is not None and first_call_s >= min_seconds:
        return 1
    calls = 1
    for _ in range(12):
        elapsed = _time_loop(run_n, calls)
        if calls == 1 and min_seconds <= elapsed < _CONFIRM_BELOW * min_seconds:
            # One call near the loop length may be a stall (a preempted thread, a page fault), not a slow backend:
            # a second call decides, or a fast backend would be timed one call per loop.
            elapsed = min(elapsed, _time_loop(run_n, 1))
        if elapsed >= min_seconds:
            return calls
        grow = min_seconds * 1.2 / max(elapsed, 1e-7)
        calls = max(calls + 1, min(int(math.ceil(calls * grow)), calls * 100))
    return calls


def time_interleaved(run_ns: Mapping[str, Callable[[int], None]], repeat: int, min_seconds: float,
                     settle: float, first_call_s: Optional[Mapping[str, float]] = None) -> Timings:
    """Time each ``run_n(n)`` (n calls of one backend) interleaved with the others; see the module's docstring.

    ``run_ns`` maps a backend's name to its function; ``repeat`` repetitions; loops of at least ``min_seconds``;
    ``settle`` seconds of pause, then one untimed call, before every timed loop (neither with ``settle`` 0).
    ``first_call_s``: seconds that one call of a backend took already (a quick run passes its agreement check's),
    which spares a backend slower than ``min_seconds`` its calibration call.
    """
    names = list(run_ns)
    known = first_call_s or {}
    calls = {name: _calibrate(run_ns[name], min_seconds, known.get(name)) for name in names}
    samples: Dict[str, List[float]] = {name: [] for name in names}
    for rep in range(repeat):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            if settle > 0:
                time.sleep(settle)
                # One untimed call after the pause: the first call after an idle spell waits for the system to
                # wake the threads and cores it runs on (up to several ms on the development VM).
                run_ns[name](1)
            samples[name].append(_time_loop(run_ns[name], calls[name]) / calls[name])
    median = {name: statistics.median(samples[name]) for name in names}
    return Timings(median, samples, calls)


def _measure_gemm(threads_note: Optional[int], repeat: int, min_seconds: float,
                  dtype: str = "float32") -> Dict[str, Any]:
    """The rate of NumPy ``GEMM_SIZE`` x ``GEMM_SIZE`` matrix products of ``dtype``: the median over ``repeat``
    loops of at least ``min_seconds``."""
    rng = np.random.default_rng(1234)
    element = np.dtype(dtype)
    a = rng.standard_normal((GEMM_SIZE, GEMM_SIZE), dtype=element)
    b = rng.standard_normal((GEMM_SIZE, GEMM_SIZE), dtype=element)
    out = np.empty((GEMM_SIZE, GEMM_SIZE), dtype=element)

    def run_n(n: int) -> None:
        for _ in range(n):
            np.matmul(a, b, out=out)

    run_n(1)
    calls = _calibrate(run_n, min_seconds)
    samples = [_time_loop(run_n, calls) / calls for _ in range(max(repeat, 1))]
    seconds = statistics.median(samples)
    flops = 2 * GEMM_SIZE ** 3
    return {"size": GEMM_SIZE, "dtype": element.name, "median_s": seconds, "gflops": flops / seconds / 1e9,
            "blas_threads": threads_note}


#: The factor between the GEMM rates measured before and after a run's cases above which the table says that the
#: machine's speed changed while the run went on.
GEMM_DRIFT = 1.25


def gemm_rate(before: Dict[str, Any], after: Dict[str, Any]) -> Dict[str, Any]:
    """The run's GEMM rate from its two measurements (``_measure_gemm`` before and after the cases): the faster of
    the two, with both kept under ``"before"`` and ``"after"``. A slow spell of a shared machine during one of them
    would otherwise lower the rate that ``% GEMM`` divides by (values above 100 were seen), and the faster rate
    never flatters rnnfast."""
    faster = before if before["gflops"] >= after["gflops"] else after
    rate = dict(faster)
    rate["before"] = {"median_s": before["median_s"], "gflops": before["gflops"]}
    rate["after"] = {"median_s": after["median_s"], "gflops": after["gflops"]}
    return rate


def gemm_drift(gemm: Mapping[str, Any]) -> Optional[float]:
    """How many times faster the faster of a run's two GEMM measurements was than the slower (None for results
    with one measurement)."""
    if "before" not in gemm or "after" not in gemm:
        return None
    rates = sorted((gemm["before"]["gflops"], gemm["after"]["gflops"]))
    return rates[1] / rates[0] if rates[0] > 0 else math.inf


class _BlasThreads:
    """Get and set the thread count of the OpenBLAS that NumPy uses (and the NumPy reference with it).

    Looks the library up among the shared objects loaded in this process; does nothing where there is none.
    """

    _SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads", "openblas_set_num_threads64_",
                "openblas_set_num_threads")
    _GETTERS = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads", "openblas_get_num_threads64_",
                "openblas_get_num_threads")

    def __init__(self) -> None:
        self._set: Optional[Callable[[int], None]] = None
        self._get: Optional[Callable[[], int]] = None
        for path in self._loaded_libraries():
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            setter = next((getattr(lib, s) for s in self._SETTERS if hasattr(lib, s)), None)
            getter = next((getattr(lib, g) for g in self._GETTERS if hasattr(lib, g)), None)
            if setter is not None and getter is not None:
                setter.argtypes, setter.restype = [ctypes.c_int], None
                getter.argtypes, getter.restype = [], ctypes.c_int
                self._set, self._get = setter, getter
                break

    @staticmethod
    def _loaded_libraries() -> List[str]:
        try:
            with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
                paths = {line.split(None, 5)[-1].strip() for line in maps if "openblas" in line.lower()}
        except OSError:
            return []
        return sorted(p for p in paths if p.startswith("/"))

    @property
    def available(self) -> bool:
        return self._set is not None

    def get(self) -> Optional[int]:
        return int(self._get()) if self._get is not None else None

    def set(self, n: Optional[int]) -> None:
        if self._set is not None and n is not None:
            self._set(int(n))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model", "Hardware"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _machine_info(blas: _BlasThreads) -> Dict[str, Any]:
    try:
        usable: Optional[int] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    info: Dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy_blas_thread_control": blas.available,
    }
    try:
        show_config: Any = getattr(np, "show_config")  # its `mode` is not in every NumPy's type stubs
        blas_config = show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["numpy_blas"] = f"{blas_config.get('name', '?')} {blas_config.get('version', '')}".strip()
    except Exception:  # older NumPy without the dict mode
        info["numpy_blas"] = "unknown"
    return info
