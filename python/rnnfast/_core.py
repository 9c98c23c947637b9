"""The compiled kernels, for the best instruction-set level this CPU supports.

The extension is built once per level (``_core_baseline``: any x86-64, or the compiler's default elsewhere;
``_core_avx2``: x86-64-v3, AVX2 + FMA; ``_core_avx512``: x86-64-v4; ``_core_native``: an opt-in source build for
the building machine). This module imports the best one that is installed and that the CPU runs, and takes its
names. ``RNNFAST_ISA=baseline|avx2|avx512|native`` caps the level (for tests, or to step around a problem).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import warnings
from types import ModuleType
from typing import Any, Dict

LEVELS = ("native", "avx512", "avx2", "baseline")  # best first


def installed_levels() -> list[str]:
    """The levels whose module is installed, best first."""
    return [level for level in LEVELS if importlib.util.find_spec(f"{__package__}._core_{level}") is not None]


def _choose(baseline: Any) -> str:
    """The level to load: the best installed one the CPU runs, at or below RNNFAST_ISA when that is set. A
    requested level that is not installed, or that the CPU lacks, falls back to the next one down, with a
    warning (once: at import)."""
    forced = os.environ.get("RNNFAST_ISA", "").strip().lower()
    if forced and forced not in LEVELS:
        raise ImportError(f"RNNFAST_ISA: expected one of {', '.join(LEVELS)}, got {forced!r}")
    installed = installed_levels()
    allowed = LEVELS[LEVELS.index(forced):] if forced else LEVELS
    chosen = "baseline"
    for level in allowed:
        if level in installed and (level == "baseline" or baseline.cpu_supports(level)):
            chosen = level
            break
    if forced and chosen != forced:
        why = "is not installed" if forced not in installed else "needs instructions this CPU lacks"
        warnings.warn(f"RNNFAST_ISA={forced}: that level {why}; using {chosen}, the best installed level below it "
                      f"that this CPU runs", RuntimeWarning, stacklevel=2)
    return chosen


def _load() -> ModuleType:
    baseline = importlib.import_module(f"{__package__}._core_baseline")  # runs on any CPU of its architecture
    level = _choose(baseline)
    return baseline if level == "baseline" else importlib.import_module(f"{__package__}._core_{level}")


def _load_small(module: ModuleType) -> ModuleType:
    """The module for small problems. On AMD's AVX-512 CPUs, which split 512-bit instructions in two, the AVX2
    level's 8-wide kernels ran problems of a few thousand multiply-adds per step faster than the AVX-512 level's
    (measured on Zen 4: seed_1layer inference 6.3 against 6.7 us per call, seed_4layer 15.0 against 16.7); on Intel's
    the AVX-512 level's are faster (a Xeon: LSTM seed_1layer 10.2 against 11.5 us, GRU 9.8 against 10.0), and run
    everything. Not when RNNFAST_ISA names a level: then every call runs that level, as the tests of each level need."""
    if os.environ.get("RNNFAST_ISA", "").strip() or module.isa_level not in ("avx512", "native"):
        return module
    if module.cpu_vendor() != "amd" or "avx2" not in installed_levels() or not module.cpu_supports("avx2"):
        return module
    return importlib.import_module(f"{__package__}._core_avx2")


_module = _load()
globals().update({name: getattr(_module, name) for name in dir(_module) if not name.startswith("__")})
__version__: str = _module.__version__
module_name: str = _module.__name__.rpartition(".")[2]  # e.g. "_core_avx2"
_small = _load_small(_module)
small_isa_level: str = _small.isa_level
SmallStackF32: Any = _small.StackF32
SmallStackF64: Any = _small.StackF64


# Eigen's SimdInstructionSetsInUse() says "AVX" also for code compiled with AVX2 and FMA (it has no AVX2 case); the
# avx2 level's -march=x86-64-v3 enables both. (avx512's x86-64-v4 string names them; native's depends on the machine.)
_LEVEL_ADDS = {"avx2": ("AVX2", "FMA")}


def _instruction_sets(module: ModuleType) -> str:
    eigen = str(module.simd_instruction_sets()).replace("AVX SSE,", "AVX, SSE,")  # a comma Eigen's string lacks
    names = [name for name in re.split(r",\s*", eigen) if name and name != "None"]
    names = [name for name in _LEVEL_ADDS.get(module.isa_level, ()) if name not in names] + names
    return ", ".join(names) or "none (scalar code)"


def instruction_sets() -> Dict[str, str]:
    """The SIMD instruction sets each loaded level's kernels were compiled for, by level: the level chosen, then the
    level for small problems where that differs."""
    return {module.isa_level: _instruction_sets(module) for module in (_module, _small)}


def set_num_threads(n: int) -> None:
    """Set the thread count of every loaded kernel module."""
    _module.set_num_threads(n)
    if _small is not _module:
        _small.set_num_threads(n)


def reset_num_threads() -> None:
    """Every loaded kernel module back to the default thread count."""
    _module.reset_num_threads()
    if _small is not _module:
        _small.reset_num_threads()


def set_thread_cap(n: int) -> None:
    """Cap the thread count of the calling thread's kernel calls in every loaded kernel module (0: no cap)."""
    _module.set_thread_cap(n)
    if _small is not _module:
        _small.set_thread_cap(n)
