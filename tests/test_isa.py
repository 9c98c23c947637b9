"""Instruction-set levels: every installed level this CPU runs gives the same results (within float rounding),
the loader picks the best one, and RNNFAST_ISA caps it."""

from __future__ import annotations

import importlib
import io
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

import rnnfast
from conftest import assert_close
from rnnfast import _core, reference

RUNNABLE = [level for level in _core.installed_levels() if _core.cpu_supports(level)]


def test_baseline_is_installed_and_the_best_runnable_level_is_loaded() -> None:
    assert "baseline" in _core.installed_levels()
    forced = os.environ.get("RNNFAST_ISA")
    expected = RUNNABLE[0] if not forced else next(l for l in RUNNABLE if _core.LEVELS.index(l) >= _core.LEVELS.index(forced))
    assert _core.isa_level == expected


@pytest.mark.parametrize("level", RUNNABLE)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_levels_agree(level: str, dtype: str) -> None:
    module = importlib.import_module(f"rnnfast._core_{level}")
    baseline = importlib.import_module("rnnfast._core_baseline")
    assert module.isa_level == level
    rng = np.random.default_rng(0)
    T, B, I, H = 9, 5, 24, 40
    suffix = "F32" if dtype == "float32" else "F64"
    results = []
    for mod in (baseline, module):
        kernel = getattr(mod, "Stack" + suffix)(I, H, 2, True, True, "tanh")
        params = np.random.default_rng(1).uniform(-0.2, 0.2, kernel.param_count).astype(dtype)
        x = rng.standard_normal((T, B, I)).astype(dtype) if not results else results[0][0]
        out, h_n, _, cache = kernel.forward(params, x, None, None, None, True)
        grads = np.zeros_like(params)
        gx, gh0, _, _ = kernel.backward(params, cache, np.ones_like(out), None, grads)
        results.append((x, out, h_n, gx, gh0, grads))
    for a, b in zip(results[0][1:], results[1][1:]):
        assert_close(b, a, np.dtype(dtype), depth=2)


@pytest.mark.parametrize("level", ["baseline", "avx2"])
def test_rnnfast_isa_caps_the_level(level: str) -> None:
    code = "import rnnfast._core as c; print(c.isa_level)"
    env = dict(os.environ, RNNFAST_ISA=level)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    chosen = out.strip()
    assert _core.LEVELS.index(chosen) >= _core.LEVELS.index(level)
    if level in RUNNABLE:
        assert chosen == level


def test_unknown_rnnfast_isa_is_a_clear_error() -> None:
    env = dict(os.environ, RNNFAST_ISA="sse9")
    proc = subprocess.run([sys.executable, "-c", "import rnnfast"], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "RNNFAST_ISA: expected one of" in proc.stderr


def test_show_config_reports_the_level() -> None:
    assert rnnfast.show_config(file=io.StringIO())["isa_level"] == _core.isa_level


def test_small_problems_run_on_the_avx2_level_only_on_amd_when_the_best_is_avx512_and_nothing_is_forced() -> None:
    forced = os.environ.get("RNNFAST_ISA")
    amd = _core.cpu_vendor() == "amd"
    if not forced and amd and _core.isa_level in ("avx512", "native") and "avx2" in RUNNABLE:
        assert _core.small_isa_level == "avx2"
    else:
        assert _core.small_isa_level == _core.isa_level
    code = "import rnnfast._core as c; print(c.isa_level, c.small_isa_level)"
    env = dict(os.environ, RNNFAST_ISA=RUNNABLE[0])
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    level, small = out.split()
    assert small == level  # a forced level runs every call


def test_each_call_picks_its_kernels_by_size_and_backward_uses_the_same() -> None:
    def level_of(kernel: object) -> str:
        return type(kernel).__module__.rpartition("_core_")[2]

    model = rnnfast.RNN(16, 32, dtype="float64", seed=0)
    rng = np.random.default_rng(0)
    small_x = rng.standard_normal((4, 2, 16))  # 4 * 2 * 32 * 48 multiply-adds
    big_x = rng.standard_normal((400, 64, 16))  # about 39 million
    caches = {}
    for name, x in (("small", small_x), ("big", big_x)):
        out, _, cache = model.forward(x, return_cache=True)
        caches[name] = (x, out, cache)
    assert level_of(caches["small"][2]._kernel) == _core.small_isa_level
    assert level_of(caches["big"][2]._kernel) == _core.isa_level
    # Backward runs on the kernels that made the cache, whichever came last.
    for name in ("big", "small"):
        x, out, cache = caches[name]
        model.zero_grad()
        gx, _ = model.backward(cache, np.ones_like(out))
        ref_out, _, ref_cache = reference.rnn_forward(x, model.state_dict())
        ref_gx, _, ref_grads = reference.rnn_backward(ref_cache, np.ones_like(out))
        assert_close(out, ref_out, np.float64, depth=4)
        assert_close(gx, ref_gx, np.float64, depth=8)
        for key, g in model.grads.items():
            assert_close(g, ref_grads[key], np.float64, depth=8)


@pytest.mark.skipif(sys.platform != "linux" or shutil.which("nm") is None, reason="reads ELF symbols with nm")
def test_the_level_modules_share_no_process_wide_objects() -> None:
    # A function-local static of an inline function exported with default visibility is STB_GNU_UNIQUE under GCC:
    # one object for the whole process, shared by every level's module even when loaded RTLD_LOCAL. The kernels'
    # per-thread buffers were, and a buffer the avx2 module had aligned for AVX2 crashed the avx512 one.
    package = pathlib.Path(rnnfast.__file__).parent
    modules = sorted(package.glob("_core_*.so"))
    assert modules
    for module in modules:
        symbols = subprocess.run(["nm", "-DC", "--defined-only", str(module)], capture_output=True, text=True,
                                 check=True).stdout.splitlines()
        # (The C++ library's own, e.g. std::to_chars' digit table, are constants it marks visible on purpose.)
        unique = [name for _, kind, name in (line.split(maxsplit=2) for line in symbols if line.count(" ") >= 2)
                  if kind == "u" and "std::" not in name.split("(")[0]]
        assert not unique, (module.name, unique[:5])


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="needs /proc/cpuinfo")
def test_cpu_vendor_matches_cpuinfo() -> None:
    with open("/proc/cpuinfo") as f:
        ids = {line.split(":", 1)[1].strip() for line in f if line.startswith("vendor_id")}
    expected = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}.get(next(iter(ids), ""), "")
    assert _core.cpu_vendor() == expected
