"""The public API type-checks under ``mypy --strict`` (tests/typing/usage.py), against the installed package with
its ``py.typed`` marker and the stubs of its compiled module; the usage file runs; and the mistakes in
tests/typing/misspelt.py are caught, each with the error its comment names."""

from __future__ import annotations

import importlib.util
import pathlib
import re
import subprocess
import sys
from typing import List

import pytest

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
USAGE = HERE / "usage.py"
MISSPELT = HERE / "misspelt.py"


def _mypy(path: pathlib.Path, tmp_path: pathlib.Path) -> "subprocess.CompletedProcess[str]":
    pytest.importorskip("mypy")
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(tmp_path / "mypy_cache"), "--python-executable", sys.executable, str(path)],
        capture_output=True, text=True, cwd=tmp_path, timeout=600)  # cwd outside the checkout: the installed rnnfast


def test_package_ships_type_information() -> None:
    spec = importlib.util.find_spec("rnnfast")
    assert spec is not None and spec.origin is not None
    package = pathlib.Path(spec.origin).parent
    assert (package / "py.typed").is_file()
    assert (package / "_core.pyi").is_file()


def test_usage_passes_mypy_strict(tmp_path: pathlib.Path) -> None:
    result = _mypy(USAGE, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_misspelt_parameter_attributes_fail_mypy_strict(tmp_path: pathlib.Path) -> None:
    expected: List[str] = []
    for number, line in enumerate(MISSPELT.read_text().splitlines(), start=1):
        if "  # error: " in line:
            expected.append(f"{number}: {line.split('  # error: ', 1)[1]}")
    assert len(expected) == 3
    result = _mypy(MISSPELT, tmp_path)
    found = [f"{m.group(1)}: {m.group(2)}"
             for m in re.finditer(r"^.*misspelt\.py:(\d+): error: (.*?)(?:  \[[a-z-]+\])?$", result.stdout, re.M)]
    assert result.returncode == 1 and found == expected, result.stdout + result.stderr


def test_usage_runs() -> None:
    result = subprocess.run([sys.executable, str(USAGE)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "usage ok"
