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


def _simd_in_use(compiled: str) -> str:
    """The instruction-set level whose kernels were loaded (see rnnfast._core), with what it was compiled for."""
    return f"{_core.isa_level} ({compiled})"


def _config() -> Dict[str, Any]:
    import os
    import platform

    compiled = str(_core.simd_instruction_sets())
    cpu_flags = _cpu_simd_flags()
    return {
        "version": __version__,
        "compiler": str(_core.compiler()),
        "eigen_version": str(_core.eigen_version()),
        "simd_compiled": compiled,
        "simd_in_use": _simd_in_use(compiled),
        "isa_level": str(_core.isa_level),
        "isa_level_small": str(_core.small_isa_level),
        "isa_levels_installed": _core.installed_levels(),
        "cpu_simd_flags": cpu_flags,
        "threads": get_num_threads(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": str(np.__version__),
        "platform": platform.platform(),
    }


def show_config(file: Optional[IO[str]] = None) -> Dict[str, Any]:
    """Print how this rnnfast was built and how it will run (the output of ``rnnfast info``); return it as a dict.

    Keys: ``version``, ``compiler``, ``eigen_version``, ``simd_compiled`` (the instruction sets the kernels were
    compiled for, as Eigen names them), ``simd_in_use``, ``isa_level`` (the level loaded: baseline, avx2, avx512
    or native; ``RNNFAST_ISA`` caps it), ``isa_level_small`` (the level that runs calls of under 2**21
    multiply-adds: avx2 where the loaded level is avx512, else the same), ``isa_levels_installed``, ``cpu_simd_flags`` (which of avx2, fma, avx512f the CPU
    reports; None where unknown), ``threads`` (``get_num_threads()``), ``cpu_count``, ``python``, ``numpy``,
    ``platform``. ``file`` defaults to sys.stdout.
    """
    import sys

    config = _config()
    flags = config["cpu_simd_flags"]
    rows = [
        ("compiler", config["compiler"]),
        ("Eigen", config["eigen_version"]),
        ("SIMD compiled", config["simd_compiled"]),
        ("SIMD in use", config["simd_in_use"]),
        ("ISA levels", " ".join(config["isa_levels_installed"]) + " installed; RNNFAST_ISA caps the choice"),
        ("small problems", f"{config['isa_level_small']} kernels (RNN calls of under 2**21 multiply-adds)"),
        ("CPU SIMD flags", "unknown" if flags is None else " ".join(flags) or "none of " + " ".join(_CPU_SIMD_FLAGS)),
        ("threads", f"{config['threads']} (of {config['cpu_count']} CPUs)"),
        ("Python", f"{config['python']}, NumPy {config['numpy']}"),
        ("platform", config["platform"]),
    ]
    lines = [f"rnnfast {config['version']}"] + [f"  {name + ':':<16}{value}" for name, value in rows]
    print("\n".join(lines), file=sys.stdout if file is None else file)
    return config
