"""Shared helpers for the test suite, and its closing note on the oracle tests that could not run."""

from __future__ import annotations

import os
import re
import threading
from typing import Any, Callable, Dict, List

import numpy as np
import pytest

# Many-thread splits run on small machines too (the kernels otherwise use at most the CPUs the process may use):
# set before rnnfast is imported, and inherited by the scripts tests run.
os.environ["RNNFAST_OVERSUBSCRIBE"] = "1"

# Python source that a child process which limits its own address space (RLIMIT_AS) runs first: on_a_thread(fn)
# runs fn on a thread whose stack is mapped whole before any limit is set and returns fn's result (exiting with an
# error when fn raised: its traceback is printed above). The main thread's stack grows on demand, and growth past
# the limit is a SIGSEGV in any code. Start the child with limited_child_env(): one malloc arena, as the main
# thread's, since a thread's own arena reserves 64 MB of address space up front, inside which allocations never
# meet the limit.
ON_A_THREAD = """
import sys as _sys, threading as _threading

def on_a_thread(fn):
    _threading.stack_size(32 << 20)
    result = []
    thread = _threading.Thread(target=lambda: result.append(fn()))
    thread.start()
    thread.join()
    if not result:
        _sys.exit("the calls on the thread failed (the exception is above)")
    return result[0]
"""


def limited_child_env() -> Dict[str, str]:
    """The environment of a child that limits its address space (see ON_A_THREAD)."""
    return dict(os.environ, MALLOC_ARENA_MAX="1")


# The packages of the [oracle] extra, which the suite checks rnnfast against: tests that need one skip without it.
ORACLE_PACKAGES = {"torch": "PyTorch", "expecttest": "expecttest (PyTorch's module_db inputs)", "onnx": "onnx",
                   "onnxruntime": "ONNX Runtime"}
ORACLE_INSTALL = "pip install \".[test,oracle]\""


def _missing_package(report: Any) -> str:
    """The oracle package whose absence made this report skip, or "" (pytest.importorskip's reason names it)."""
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    match = re.search(r"could not import '([\w.]+)'|No module named '([\w.]+)'", reason)
    package = (match.group(1) or match.group(2)).partition(".")[0] if match else ""
    return package if package in ORACLE_PACKAGES else ""


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say how many oracle tests were skipped, for want of which package, and the command that runs them: a whole
    test module skips as one (its tests are not even collected), so it is counted apart."""
    skipped: Dict[str, List[int]] = {}  # package -> [modules, tests]
    for report in terminalreporter.stats.get("skipped", []):
        package = _missing_package(report)
        if package:
            counts = skipped.setdefault(package, [0, 0])
            counts[0 if isinstance(report, pytest.CollectReport) else 1] += 1
    if not skipped:
        return
    terminalreporter.write_sep("=", "oracle tests skipped", yellow=True)
    for package, (modules, tests) in skipped.items():
        what = " and ".join(part for part in (f"{modules} test module{'s' * (modules != 1)} (all of their tests)"
                                              if modules else "", f"{tests} test{'s' * (tests != 1)}" if tests else "")
                            if part)
        terminalreporter.write_line(f"{what} skipped: {ORACLE_PACKAGES[package]} is not installed ({ORACLE_INSTALL} "
                                    f"runs them)", yellow=True)


def assert_close(actual: np.ndarray, expected: np.ndarray, dtype: np.dtype, depth: int = 1) -> None:
    """Compare a result of the model's dtype with a float64 oracle.

    float32 tolerances grow with the depth of the computation (layers, steps), as accumulated rounding does.
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    if np.dtype(dtype) == np.float32:
        rtol, atol = 1e-4 * depth, 1e-5 * depth * scale
    else:
        rtol, atol = 1e-10, 1e-12 * depth * scale
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def run_threads(count: int, work: Callable[[int, Any], None]) -> None:
    """Run ``work(k, barrier)`` on ``count`` threads that share a barrier; re-raise the first error. A thread that
    fails aborts the barrier, so the others do not wait forever; a hang fails after 120 s."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def target(k: int) -> None:
        try:
            work(k, barrier)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=target, args=(k,)) for k in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "threads hung"
    if errors:
        raise errors[0]
