"""The public API type-checks under ``mypy --strict`` (tests/typing/usage.py), against the installed package with
its ``py.typed`` marker and the stubs of its compiled module; and the usage file runs."""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
USAGE = HERE / "usage.py"


def test_package_ships_type_information() -> None:
    spec = importlib.util.find_spec("rnnfast")
    assert spec is not None and spec.origin is not None
    package = pathlib.Path(spec.origin).parent
    assert (package / "py.typed").is_file()
    assert (package / "_core.pyi").is_file()


def test_usage_passes_mypy_strict(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("mypy")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(tmp_path / "mypy_cache"), "--python-executable", sys.executable, str(USAGE)],
        capture_output=True, text=True, cwd=tmp_path, timeout=600)  # cwd outside the checkout: the installed rnnfast
    assert result.returncode == 0, result.stdout + result.stderr


def test_usage_runs() -> None:
    result = subprocess.run([sys.executable, str(USAGE)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "usage ok"
