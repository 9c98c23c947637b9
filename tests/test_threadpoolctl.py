"""threadpoolctl sees rnnfast's thread pool and limits it (skipped without threadpoolctl, which the test extra
installs)."""

from __future__ import annotations

import numpy as np
import pytest

threadpoolctl = pytest.importorskip("threadpoolctl")

import rnnfast  # noqa: E402
from rnnfast import _core  # noqa: E402


def _ours(info: list[dict]) -> list[dict]:
    return [entry for entry in info if entry["user_api"] == "rnnfast"]


def test_threadpool_info_lists_the_loaded_level_once() -> None:
    ours = _ours(threadpoolctl.threadpool_info())
    assert len(ours) == 1, ours
    assert ours[0]["internal_api"] == "rnnfast"
    assert ours[0]["num_threads"] == rnnfast.get_num_threads()
    assert ours[0]["version"] == rnnfast.__version__
    assert _core.module_name in ours[0]["filepath"]


@pytest.mark.parametrize("user_api", [None, "rnnfast"])
def test_threadpool_limits_limits_and_restores(user_api: object) -> None:
    before = rnnfast.get_num_threads()
    rnnfast.set_num_threads(3)
    try:
        with threadpoolctl.threadpool_limits(limits=1, user_api=user_api):
            assert rnnfast.get_num_threads() == 1
            model = rnnfast.RNN(4, 8, seed=0)
            out, _ = model(np.ones((5, 2, 4), np.float32))  # runs under the limit
            assert out.shape == (5, 2, 8)
        assert rnnfast.get_num_threads() == 3
        with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
            assert rnnfast.get_num_threads() == 3  # another API's limit leaves rnnfast alone
    finally:
        rnnfast.set_num_threads(before)
