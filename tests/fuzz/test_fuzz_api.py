"""A short, deterministic run of the fuzz harness (tests/fuzz/fuzz_api.py): 2000 inputs of malformed arguments
thrown at every public entry point, in a subprocess so that a crash or hang fails this test instead of the suite."""

from __future__ import annotations

import os
import re
import subprocess
import sys

HARNESS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz_api.py")


def test_fuzz_harness_2000_inputs_without_failure() -> None:
    runs = 2000
    proc = subprocess.run(
        [sys.executable, HARNESS, "--runs", str(runs), "--engine", "random", "--seed", "0"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    match = re.search(r"fuzz_api: (\d+) inputs ran, no failure", proc.stdout)
    assert match and int(match.group(1)) == runs, proc.stdout[-2000:]
