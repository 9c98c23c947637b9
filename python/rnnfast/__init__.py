"""rnnfast: fast RNN, LSTM and GRU forward and backpropagation through time on the CPU.

``RNN``, ``LSTM``, ``GRU``, ``RNNCell``, ``LSTMCell`` and ``GRUCell`` follow ``torch.nn``'s classes of the same names:
same shapes, parameter names and initialization, and their ``state_dict`` moves both ways. ``rnnfast.reference`` is
a plain NumPy implementation of the same semantics, the oracle of the test suite; ``rnnfast.optim`` has
``torch.optim``'s SGD, Adam and AdamW and gradient clipping for these models; ``rnnfast.torch`` has the drop-in
``torch.nn`` modules.
"""

from __future__ import annotations

from typing import IO, Any, Dict, List, Optional

import numpy as np

from . import _checks, _core, _threadpoolctl
from ._cell import RNNCell, RNNCellCache
from ._gated_cell import GatedCellCache, GRUCell, LSTMCell
from ._rnn import GRU, LSTM, RNN, RNNCache
from . import optim  # NumPy only (never imports torch)

_threadpoolctl.register()

__version__: str = _core.__version__

__all__ = ["GRU", "GRUCell", "GatedCellCache", "LSTM", "LSTMCell", "RNN", "RNNCache", "RNNCell", "RNNCellCache", "__version__", "get_num_threads", "optim",
           "set_num_threads", "show_config"]


def set_num_threads(n: int) -> None:
    """Split the kernels' work of every model in this process across ``n`` threads (n >= 1)."""
    threads = _checks.positive_int("n", n)
    if threads > 2**31 - 1:
        raise ValueError(f"n: expected a positive integer below 2**31, got {threads}")
    _core.set_num_threads(threads)


def get_num_threads() -> int:
    """Threads the kernels split their work across (default: the CPUs this process may run on)."""
    return int(_core.get_num_threads())


# SIMD extensions looked up in the CPU's flags by show_config (names as /proc/cpuinfo spells them).
_CPU_SIMD_FLAGS = ("avx2", "fma", "avx512f")


def _cpu_simd_flags(cpuinfo: str = "/proc/cpuinfo") -> Optional[List[str]]:
    """Which of ``_CPU_SIMD_FLAGS`` the CPU reports, or None where that is unknown (no /proc/cpuinfo)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.partition(":")[2].split())
                    return [flag for flag in _CPU_SIMD_FLAGS if flag in flags]
    except OSError:
        return None
    return None


def _config() -> Dict[str, Any]:
    import os
    import platform

    cpu_flags = _cpu_simd_flags()
    return {
        "version": __version__,
        "compiler": str(_core.compiler()),
        "eigen_version": str(_core.eigen_version()),
        "simd_compiled": _core.instruction_sets(),
        "isa_level": str(_core.isa_level),
        "isa_level_small": str(_core.small_isa_level),
        "isa_levels_installed": _core.installed_levels(),
        "cpu_simd_flags": cpu_flags,
        "threads": get_num_threads(),
        "threads_default": int(_core.default_num_threads()),
        "threads_default_source": str(_core.default_threads_source()),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": str(np.__version__),
        "platform": platform.platform(),
    }


def show_config(file: Optional[IO[str]] = None) -> Dict[str, Any]:
    """Print how this rnnfast was built and how it will run (the output of ``rnnfast info``); return it as a dict.

    The core is compiled once per instruction-set level and the best level the CPU runs is loaded at import
    (``RNNFAST_ISA`` caps it); RNN, LSTM and GRU calls of under 2**21 multiply-adds may run on another level's
    kernels (avx2's where avx512 is loaded). Keys: ``version``, ``compiler``, ``eigen_version``,
    ``simd_compiled`` (a dict: each loaded level -> the SIMD instruction sets its kernels were compiled for),
    ``isa_level`` (the level loaded: baseline, avx2, avx512 or native), ``isa_level_small`` (the level of the
    small calls), ``isa_levels_installed``, ``cpu_simd_flags`` (which of avx2, fma, avx512f the CPU reports; None
    where unknown), ``threads`` (``get_num_threads()``: rnnfast's own thread pool), ``threads_default`` and
    ``threads_default_source`` (the CPUs this process may use -- its affinity mask, capped by a container's cgroup
    CPU quota -- and which of those decided), ``cpu_count``, ``python``,
    ``numpy``, ``platform``. ``file`` defaults to sys.stdout.
    """
    import sys

    config = _config()
    flags = config["cpu_simd_flags"]
    level, small, compiled = config["isa_level"], config["isa_level_small"], config["simd_compiled"]
    rows = [
        ("compiler", config["compiler"]),
        ("Eigen", config["eigen_version"]),
        ("ISA levels", " ".join(config["isa_levels_installed"]) + " installed; RNNFAST_ISA caps the choice"),
        ("kernels", f"{level}, compiled for {compiled[level]}"),
        ("small problems", (f"{small}, compiled for {compiled[small]}" if small != level else f"{small} as well")
         + " (RNN, LSTM and GRU calls of under 2**21 multiply-adds)"),
        ("CPU SIMD flags", "unknown" if flags is None else " ".join(flags) or "none of " + " ".join(_CPU_SIMD_FLAGS)),
        ("threads", f"{config['threads']} in rnnfast's own pool (default {config['threads_default']}: "
                    f"{config['threads_default_source']}; {config['cpu_count']} CPUs in the machine)"),
        ("Python", f"{config['python']}, NumPy {config['numpy']}"),
        ("platform", config["platform"]),
    ]
    lines = [f"rnnfast {config['version']}"] + [f"  {name + ':':<16}{value}" for name, value in rows]
    print("\n".join(lines), file=sys.stdout if file is None else file)
    return config
