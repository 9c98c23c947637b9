"""The command line: ``rnnfast info`` / ``rnnfast.show_config()``, ``rnnfast demo`` (on a shortened setting, which
must still beat the naive forecast clearly), ``--help``, and the ``rnnfast`` console script."""

from __future__ import annotations

import io
import json
import os
import pathlib
import re
import subprocess
import sys
import types
from typing import Any, Dict, List

import numpy as np
import pytest

import rnnfast
from rnnfast import _core, demo
from rnnfast.__main__ import COMMANDS, main

ROOT = pathlib.Path(__file__).resolve().parents[1]
# A shortened demo: a quarter of the default epochs and half the hidden size, still well below half the naive MSE.
SHORT = dict(epochs=15, hidden=16, seed=0)
RUNNABLE = [level for level in _core.installed_levels() if _core.cpu_supports(level)]
SHORT_ARGS = ["--epochs", "15", "--hidden", "16", "--seed", "0"]


def run_cli(*args: str, **kwargs: Any) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rnnfast", *args], capture_output=True, text=True, timeout=300,
                          **kwargs)


# ------------------------------------------------------------------------------------------------------------- help

def test_commands_are_registered() -> None:
    assert list(COMMANDS) == ["info", "demo", "bench"]


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in ("info", "demo", "bench"):
        assert re.search(rf"^  {name} +\S", out, re.M), out


@pytest.mark.parametrize("name", ["info", "demo", "bench"])
def test_each_command_has_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: rnnfast {name}" in capsys.readouterr().out


def test_demo_help_lists_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = capsys.readouterr().out
    for option in ("--epochs", "--hidden", "--seed", "--plot", "--quiet", "--optimizer"):
        assert option in out


@pytest.mark.parametrize("argv", [[], ["nonsense"], ["demo", "--epochs", "0"], ["demo", "--optimizer", "rmsprop"],
                                  ["info", "--bogus"]])
def test_usage_errors_exit_2(argv: List[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"rnnfast {rnnfast.__version__}"


def test_python_dash_m_help() -> None:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    assert "info" in result.stdout and "demo" in result.stdout and "bench" in result.stdout


# ------------------------------------------------------------------------------------------------------ info

INFO_KEYS = {"version", "compiler", "eigen_version", "simd_compiled", "isa_level", "isa_level_small",
             "isa_levels_installed", "cpu_simd_flags", "threads", "threads_default",
             "threads_default_source", "cpu_count", "python", "numpy", "platform"}
# Eigen's SimdInstructionSetsInUse() for an x86-64-v3 build: it has no AVX2 case.
EIGEN_AVX = "AVX SSE, SSE2, SSE3, SSSE3, SSE4.1, SSE4.2"


def test_show_config_prints_and_returns_the_configuration() -> None:
    buffer = io.StringIO()
    config = rnnfast.show_config(file=buffer)
    assert set(config) == INFO_KEYS
    assert config["version"] == rnnfast.__version__ == _core.__version__
    assert config["compiler"] == _core.compiler() and config["compiler"]
    assert config["eigen_version"] == _core.eigen_version() and config["eigen_version"].startswith("Eigen 3.")
    assert config["simd_compiled"] == _core.instruction_sets()
    assert list(config["simd_compiled"]) == list(dict.fromkeys([config["isa_level"], config["isa_level_small"]]))
    assert config["isa_level"] == _core.isa_level and config["isa_level"] in config["isa_levels_installed"]
    assert config["threads"] == rnnfast.get_num_threads() >= 1
    assert config["numpy"] == np.__version__
    flags = config["cpu_simd_flags"]
    assert flags is None or set(flags) <= {"avx2", "fma", "avx512f"}
    text = buffer.getvalue()
    assert text.splitlines()[0] == f"rnnfast {rnnfast.__version__}"
    level = config["isa_level"]
    for label, value in [("compiler", config["compiler"]), ("Eigen", config["eigen_version"]),
                         ("kernels", f"{level}, compiled for {config['simd_compiled'][level]}"),
                         ("small problems", config["isa_level_small"]), ("threads", str(config["threads"]))]:
        assert re.search(rf"^  {label}: +{re.escape(value)}", text, re.M), (label, text)
    assert re.search(r"^  CPU SIMD flags: +\S", text, re.M)


def test_show_config_defaults_to_stdout_and_follows_the_thread_setting(capsys: pytest.CaptureFixture[str]) -> None:
    before = rnnfast.get_num_threads()
    try:
        rnnfast.set_num_threads(3)
        config = rnnfast.show_config()
    finally:
        rnnfast.set_num_threads(before)
    assert config["threads"] == 3
    assert re.search(r"^  threads: +3 ", capsys.readouterr().out, re.M)


def test_cpu_simd_flags_from_cpuinfo(tmp_path: pathlib.Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw\n"
                       "\nprocessor\t: 1\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw\n")
    assert rnnfast._cpu_simd_flags(str(cpuinfo)) == ["avx2", "fma", "avx512f"]
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx\n")
    assert rnnfast._cpu_simd_flags(str(cpuinfo)) == []
    cpuinfo.write_text("processor\t: 0\n")  # e.g. another architecture's format
    assert rnnfast._cpu_simd_flags(str(cpuinfo)) is None
    assert rnnfast._cpu_simd_flags(str(tmp_path / "missing")) is None


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="needs /proc/cpuinfo")
def test_cpu_simd_flags_of_this_machine() -> None:
    flags = rnnfast._cpu_simd_flags()
    assert flags is not None
    with open("/proc/cpuinfo") as f:
        words = set(next(line for line in f if line.startswith("flags")).split())
    assert flags == [flag for flag in ("avx2", "fma", "avx512f") if flag in words]


def test_info_command() -> None:
    result = run_cli("info")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"rnnfast {rnnfast.__version__}"
    labels = [line.split(":")[0].strip() for line in lines[1:]]
    assert labels == ["compiler", "Eigen", "ISA levels", "kernels", "small problems", "CPU SIMD flags", "threads",
                      "Python", "platform"]
    for level, sets in _core.instruction_sets().items():
        assert f"{level}, compiled for {sets}" in result.stdout


def test_info_json() -> None:
    result = run_cli("info", "--json")
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert set(config) == INFO_KEYS
    assert config["version"] == rnnfast.__version__
    assert config["simd_compiled"] == _core.instruction_sets()


def test_instruction_sets_name_what_each_level_was_compiled_for() -> None:
    def module(level: str, eigen: str) -> Any:
        return types.SimpleNamespace(isa_level=level, simd_instruction_sets=lambda: eigen)

    # avx2 (-march=x86-64-v3) has AVX2 and FMA, which Eigen's string leaves out; the others are Eigen's.
    assert _core._instruction_sets(module("avx2", EIGEN_AVX)) == "AVX2, FMA, AVX, SSE, SSE2, SSE3, SSSE3, SSE4.1, SSE4.2"
    avx512 = "AVX512, FMA, AVX2, AVX, SSE, SSE2, SSE3, SSSE3, SSE4.1, SSE4.2"
    assert _core._instruction_sets(module("avx512", avx512)) == avx512
    assert _core._instruction_sets(module("baseline", "SSE, SSE2")) == "SSE, SSE2"
    assert _core._instruction_sets(module("baseline", "ARM NEON")) == "ARM NEON"
    assert _core._instruction_sets(module("baseline", "None")) == "none (scalar code)"


@pytest.mark.parametrize("level", ["avx2", "avx512"])
def test_info_under_rnnfast_isa_reports_the_levels_loaded(level: str) -> None:
    if level not in RUNNABLE:
        pytest.skip(f"the {level} level is not installed or this CPU lacks it")
    result = subprocess.run([sys.executable, "-m", "rnnfast", "info", "--json"], capture_output=True, text=True,
                            timeout=120, env=dict(os.environ, RNNFAST_ISA=level))
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert config["isa_level"] == config["isa_level_small"] == level and list(config["simd_compiled"]) == [level]
    assert {"AVX2", "FMA"} <= set(config["simd_compiled"][level].split(", "))


# ------------------------------------------------------------------------------------------------------ demo

@pytest.fixture(scope="module")
def short_run() -> Dict[str, Any]:
    return demo.run(progress=False, **SHORT)


def test_demo_beats_the_naive_forecast_clearly(short_run: Dict[str, Any]) -> None:
    m = short_run
    assert m["test_mse"] < 0.5 * m["naive_test_mse"], m
    assert m["train_mse"] < 0.5 * m["naive_train_mse"], m
    assert m["test_ratio"] == pytest.approx(m["test_mse"] / m["naive_test_mse"])
    # It learned the wave, not the noise: above the noise floor, and the training loss went down.
    assert m["noise_mse"] < m["test_mse"]
    assert len(m["losses"]) == SHORT["epochs"] and m["losses"][-1] < 0.5 * m["losses"][0]
    assert m["plot"] is None and m["epochs"] == 15 and m["hidden"] == 16


def test_demo_is_seeded(short_run: Dict[str, Any]) -> None:
    again = demo.run(progress=False, **SHORT)
    assert again["losses"] == short_run["losses"]
    assert again["test_mse"] == short_run["test_mse"]
    other = demo.run(epochs=2, hidden=16, seed=1, progress=False)
    assert other["losses"][0] != short_run["losses"][0]


def test_demo_restores_the_thread_setting() -> None:
    before = rnnfast.get_num_threads()
    assert demo.run(epochs=1, hidden=4, series_length=200, progress=False, threads=before + 1)["threads"] == before + 1
    assert rnnfast.get_num_threads() == before
    assert demo.run(epochs=1, hidden=4, series_length=200, progress=False)["threads"] == before
    with pytest.raises(ValueError, match="threads"):
        demo.run(epochs=1, threads=0)


def test_demo_sgd_and_log() -> None:
    lines: List[str] = []
    m = demo.run(epochs=3, hidden=8, series_length=400, optimizer="sgd", progress=False, log=lines.append)
    assert lines == [f"epoch {e}/3  loss {loss:.4f}" for e, loss in zip((1, 2, 3), m["losses"])]
    assert m["optimizer"] == "sgd" and m["losses"][-1] < m["losses"][0]


def test_demo_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="optimizer"):
        demo.run(epochs=1, optimizer="rmsprop")
    with pytest.raises(ValueError, match="warmup"):
        demo.run(epochs=1, window=5, warmup=5)


def test_demo_data() -> None:
    series = demo.make_series(500, noise=0.0, seed=3)
    assert series.shape == (500,) and series.dtype == np.float32
    assert np.abs(series).max() <= 1.5 + 1e-6
    assert not np.array_equal(series, demo.make_series(500, noise=0.0, seed=4))
    inputs, targets = demo.make_windows(series, 10)
    assert inputs.shape == targets.shape == (10, 490, 1)
    np.testing.assert_array_equal(inputs[1:], targets[:-1])
    np.testing.assert_array_equal(inputs[:, 7, 0], series[7:17])
    np.testing.assert_array_equal(targets[:, 7, 0], series[8:18])
    assert demo.naive_mse(series, 10) == pytest.approx(float(np.mean((series[10:] - series[9:-1]) ** 2)))


def test_clip_grad_norm_scales_in_place() -> None:
    grads = [np.full(4, 3.0), np.full((2, 2), 4.0)]  # norm sqrt(4*9 + 4*16) = 10
    assert demo.clip_grad_norm(grads, 5.0) == pytest.approx(10.0)
    assert np.sqrt(sum(float(np.sum(g ** 2)) for g in grads)) == pytest.approx(5.0, rel=1e-6)
    small = [np.ones(2)]
    demo.clip_grad_norm(small, 5.0)
    np.testing.assert_array_equal(small[0], np.ones(2))


def test_adam_updates_in_place_and_minimizes() -> None:
    p = {"w": np.array([3.0, -2.0])}
    view = p["w"]
    opt = demo.Adam(p, lr=0.1)
    for _ in range(300):
        opt.step({"w": 2 * p["w"]})  # gradient of |w|^2
    assert p["w"] is view and np.abs(view).max() < 0.05


def test_demo_command_beats_the_baseline_with_a_progress_bar_and_a_plot(tmp_path: pathlib.Path) -> None:
    plot = tmp_path / "demo.png"
    result = run_cli("demo", *SHORT_ARGS, "--plot", str(plot))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    train = re.search(r"^train MSE +([0-9.]+) +([0-9.]+) +([0-9.]+)$", out, re.M)
    test = re.search(r"^test MSE +([0-9.]+) +([0-9.]+) +([0-9.]+)$", out, re.M)
    assert train and test, out
    model, naive, ratio = (float(v) for v in test.groups())
    assert model < 0.5 * naive and ratio < 0.5
    assert "OK: the model's test MSE is" in out
    assert "training" in result.stderr and "loss=" in result.stderr  # the tqdm bar
    if "matplotlib is not installed" in result.stderr:
        assert not plot.exists()
    else:
        assert f"plot written to {plot}" in out
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_command_quiet_and_missing_matplotlib(tmp_path: pathlib.Path) -> None:
    plot = tmp_path / "demo.png"
    code = ("import sys; sys.modules['matplotlib'] = None; from rnnfast.__main__ import main; "
            f"sys.exit(main(['demo', *{SHORT_ARGS!r}, '--quiet', '--plot', {str(plot)!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--plot: matplotlib is not installed" in result.stderr
    assert "loss=" not in result.stderr  # --quiet: no progress bar
    assert not plot.exists()
    assert "test MSE" in result.stdout


def test_demo_command_fails_when_the_model_does_not_beat_the_baseline(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--epochs", "1", "--hidden", "2", "--quiet"]) == 1
    assert "NOT GOOD ENOUGH" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ console script

def _pyproject_scripts() -> Dict[str, str]:
    text = (ROOT / "pyproject.toml").read_text()
    try:
        import tomllib
    except ImportError:  # Python < 3.11: read the one table by hand
        table = re.search(r"^\[project\.scripts\]\n(.*?)(?=^\[|\Z)", text, re.M | re.S)
        assert table, "no [project.scripts] table"
        return {k: v for k, v in re.findall(r'^(\S+)\s*=\s*"([^"]+)"', table.group(1), re.M)}
    return dict(tomllib.loads(text)["project"]["scripts"])


def test_console_script_is_declared() -> None:
    assert _pyproject_scripts().get("rnnfast") == "rnnfast.__main__:main"


def test_console_script_is_installed() -> None:
    from importlib.metadata import entry_points

    found = entry_points()
    if hasattr(found, "select"):  # Python >= 3.10 (entry_points(group=...) is new in 3.10)
        group = found.select(group="console_scripts")
    else:  # Python 3.9: a dict of group -> entry points
        group = found.get("console_scripts", [])
    scripts = [e for e in group if e.name == "rnnfast"]
    assert [e.value for e in scripts] == ["rnnfast.__main__:main"]
    assert scripts[0].load() is main
    executable = pathlib.Path(sys.executable).parent / ("rnnfast.exe" if os.name == "nt" else "rnnfast")
    if not executable.exists():
        pytest.skip(f"no {executable.name} next to {sys.executable}")
    result = subprocess.run([str(executable), "info"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"rnnfast {rnnfast.__version__}\n")


@pytest.mark.parametrize("cell,name", [("lstm", "rnnfast.LSTM"), ("gru", "rnnfast.GRU")])
def test_demo_trains_the_cell_kind_asked_for(cell: str, name: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "rnnfast", "demo", "--cell", cell, "--epochs", "25", "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[0].split()[0] == name
    assert "OK: the model's test MSE" in proc.stdout
