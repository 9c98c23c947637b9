"""threadpoolctl support: ``threadpool_info()`` lists rnnfast's thread pool and ``threadpool_limits(n)`` limits it,
as it does BLAS and OpenMP pools. Registered when rnnfast is imported, if threadpoolctl (3.0 or newer) is
installed; rnnfast does not need it otherwise."""

from __future__ import annotations

from typing import Any

from . import _core


def register() -> bool:
    """Register rnnfast's controller with threadpoolctl; False when threadpoolctl is missing or too old."""
    try:
        import threadpoolctl  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        return False
    if not hasattr(threadpoolctl, "register") or not hasattr(threadpoolctl, "LibController"):
        return False
    base: Any = threadpoolctl.LibController

    class RnnfastController(base):  # type: ignore[misc]
        """The thread limit of the kernel module that rnnfast loaded (the one instruction-set level in use)."""

        user_api = "rnnfast"
        internal_api = "rnnfast"
        # The compiled module's file (e.g. _core_avx2.cpython-311-x86_64-linux-gnu.so); only the level in use
        # matches, by its init symbol, so the baseline module loaded for CPU detection is not listed twice.
        filename_prefixes = ("_core_",)
        check_symbols = (f"PyInit_{_core.module_name}",)

        def get_num_threads(self) -> int:
            return int(_core.get_num_threads())

        def set_num_threads(self, num_threads: int) -> None:
            # Clamped to what the pool takes, as other pools clamp: threadpool_limits(2**31) must not raise.
            _core.set_num_threads(min(max(1, int(num_threads)), 2**31 - 1))

        def get_version(self) -> str:
            return str(_core.__version__)

    threadpoolctl.register(RnnfastController)
    return True
