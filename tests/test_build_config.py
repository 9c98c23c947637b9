"""The build accepts Eigen 3.4.x only: CMake stops on any other version with the version found and the one
supported (the packed recurrent product uses Eigen's internal GEMM kernels). Configures the checkout against a
stand-in Eigen package of each version, compiling nothing (skipped without CMake or outside a checkout)."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CMAKE = shutil.which("cmake")

pytestmark = [pytest.mark.skipif(CMAKE is None, reason="needs cmake"),
              pytest.mark.skipif(not (ROOT / "CMakeLists.txt").is_file(), reason="needs the source checkout")]


def _configure(tmp_path: pathlib.Path, version: str) -> subprocess.CompletedProcess[str]:
    package = tmp_path / "eigen"
    package.mkdir()
    (package / "Eigen3Config.cmake").write_text("add_library(Eigen3::Eigen INTERFACE IMPORTED)\n")
    (package / "Eigen3ConfigVersion.cmake").write_text(
        f'set(PACKAGE_VERSION "{version}")\nset(PACKAGE_VERSION_COMPATIBLE TRUE)\n')
    assert CMAKE is not None
    return subprocess.run(
        [CMAKE, "-S", str(ROOT), "-B", str(tmp_path / "build"), f"-DEigen3_DIR={package}",
         "-DRNNFAST_BUILD_TESTS=OFF", "-DRNNFAST_BUILD_PYTHON=OFF", "-DPython_EXECUTABLE=/nonexistent"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "LD_PRELOAD"})  # not the sanitizer runs' ASan runtime


@pytest.mark.parametrize("version", ["3.3.9", "3.4.90", "5.0.0"])
def test_other_eigen_versions_stop_the_build(tmp_path: pathlib.Path, version: str) -> None:
    result = _configure(tmp_path, version)
    message = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0, message
    assert f"rnnfast: found Eigen {version} ({tmp_path / 'eigen'}); rnnfast supports Eigen 3.4.x only" in message


@pytest.mark.parametrize("version", ["3.4.0", "3.4.1"])
def test_eigen_3_4_is_accepted(tmp_path: pathlib.Path, version: str) -> None:
    result = _configure(tmp_path, version)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"rnnfast: Eigen {version} from {tmp_path / 'eigen'}" in result.stdout
