"""``--memory``: the peak resident memory one training step adds, each backend measured in a fresh process.

A process's allocator keeps memory that earlier work freed, so in one process the backend measured later would
look smaller. Allocations of 64 KiB and more are mapped and unmapped directly (``MALLOC_MMAP_THRESHOLD_``), so what
a step frees leaves the resident set at once.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import json
import os
import subprocess
import sys
from dataclasses import replace
from typing import Any, Dict, Optional, Union

import rnnfast

from .backends import _JOB_BUILDERS, BACKEND_TABLE, _make_workload
from .cases import CASES, Case, check_dtype

_MEMORY_BACKENDS = tuple(b.name for b in BACKEND_TABLE.values() if b.train_memory)
_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def _resident_bytes(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field}")


def _memory_child(case_name: str, backend: str, threads: int, kind: str = "rnn", dtype: str = "float32") -> None:
    """Run in a fresh process: two warm-up training steps, then one measured; print the peak resident memory
    above the resident memory at its start, in bytes, as JSON."""
    case = replace(CASES[case_name], kind=kind, dtype=dtype)
    env: Dict[str, Any] = {"threads": threads}
    rnnfast.set_num_threads(threads)
    if backend == "torch":
        env["torch"] = importlib.import_module("torch")
        env["torch"].set_num_threads(threads)
    job = _JOB_BUILDERS[backend](_make_workload(case), env)["train"]
    job.run_n(2)
    gc.collect()
    ctypes.CDLL(None).malloc_trim(0)
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # resets the peak (VmHWM) to the current resident set
    start = _resident_bytes("VmRSS")
    # What the step before kept for this one (rnnfast: its cache's storage) is resident already: this step's.
    kept = job.kept_bytes()
    job.run_n(1)
    print(json.dumps({"peak_bytes": _resident_bytes("VmHWM") - start + kept}))


def measure_train_memory(case: Union[str, Case], backend: str, threads: int = 2) -> Optional[int]:
    """Peak resident memory, in bytes, that one training step of ``case`` adds on top of what the process held
    when the step started (model, inputs and gradient buffers; the storage rnnfast kept from the step before for
    this step's cache counts as the step's), measured in a fresh process; None where it cannot
    be measured (not Linux, or ``backend``'s package missing). A ``Case`` brings its cell kind and dtype; a name
    means the grid's case (RNN, float32)."""
    name = case.name if isinstance(case, Case) else case
    kind = case.kind if isinstance(case, Case) else "rnn"
    dtype = check_dtype(case.dtype) if isinstance(case, Case) else "float32"
    if name not in CASES or CASES[name].cell:
        raise ValueError(f"case: expected the name of a sequence case in CASES, got {name!r}")
    if backend not in _MEMORY_BACKENDS:
        raise ValueError(f"backend: expected one of {list(_MEMORY_BACKENDS)}, got {backend!r}")
    if not sys.platform.startswith("linux"):
        return None
    code = (f"from rnnfast.bench.memory import _memory_child; "
            f"_memory_child({name!r}, {backend!r}, {int(threads)}, {kind!r}, {dtype!r})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **_MEMORY_ENV}, timeout=600)
    if proc.returncode != 0:
        return None
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"])
