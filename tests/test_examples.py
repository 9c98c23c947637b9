"""The README's code and the examples run, and say what they claim."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


def test_readme_python_blocks_run() -> None:
    assert len(BLOCKS) >= 2
    for block in BLOCKS:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})


def test_quickstart_example_is_the_readme_and_prints_the_tutorial_shapes() -> None:
    source = (ROOT / "examples" / "quickstart.py").read_text()
    for block in BLOCKS:
        assert block in source
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")], capture_output=True,
                            text=True, check=True)
    lines = result.stdout.splitlines()
    assert lines[:5] == ["(10, 3, 20) (1, 3, 20)", "(10, 3, 20) (4, 3, 20)", "(3, 20)", "(3, 15)",
                         "(20, 100) (15, 15)"]
    first, last = (float(v) for v in re.findall(r"[0-9.]+", lines[5]))
    assert last < first / 10
