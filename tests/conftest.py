"""Shared helpers for the test suite."""

from __future__ import annotations

import threading
from typing import Any, Callable

import numpy as np


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
