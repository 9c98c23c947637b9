"""The README's code and the examples run, and say what they claim."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
from typing import List

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
# The blocks of the Quickstart section (up to the next "## " heading): examples/quickstart.py holds them verbatim.
QUICKSTART = re.search(r"^## Quickstart\n(.*?)(?=^## )", README, re.S | re.M)
QUICKSTART_BLOCKS = re.findall(r"```python\n(.*?)```", QUICKSTART.group(1) if QUICKSTART else "", re.S)


def run_example(name: str, *args: str) -> List[str]:
    result = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.splitlines()


def test_readme_python_blocks_run() -> None:
    assert len(BLOCKS) >= 4
    for block in BLOCKS:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})


def test_readme_documents_lengths_and_truncated_bptt() -> None:
    assert any("lengths=" in block for block in BLOCKS)
    assert any("grad_h0" in block and "return_cache=True" in block and ", h, return_cache" in block
               for block in BLOCKS)
    assert "<!-- bench-table -->" in README


def test_quickstart_example_is_the_readme_and_prints_the_tutorial_shapes() -> None:
    assert len(QUICKSTART_BLOCKS) >= 2
    source = (EXAMPLES / "quickstart.py").read_text()
    for block in QUICKSTART_BLOCKS:
        assert block in source
    lines = run_example("quickstart.py")
    assert lines[:5] == ["(10, 3, 20) (1, 3, 20)", "(10, 3, 20) (4, 3, 20)", "(3, 20)", "(3, 15)",
                         "(20, 100) (15, 15)"]
    first, last = (float(v) for v in re.findall(r"[0-9.]+", lines[5]))
    assert last < first / 10


def test_every_example_is_tested_and_listed_in_the_readme() -> None:
    tested = {"ddp_train.py", "quickstart.py", "one_layer_rnn.py", "four_layer_rnn.py", "cell_by_hand.py",
              "two_cells_backward.py",
              "sentiment_classification.py", "pytorch_interop.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested
    for name in tested:
        assert f"`{name}`" in README, name


def test_one_layer_rnn() -> None:
    lines = run_example("one_layer_rnn.py")
    assert lines[:3] == ["RNN(100, 20, dtype=float32)", "output (10, 3, 20)", "h_n (1, 3, 20)"]
    assert lines[3:] == ["weight_ih_l0 (20, 100)", "weight_hh_l0 (20, 20)", "bias_ih_l0 (20,)", "bias_hh_l0 (20,)"]


def test_four_layer_rnn() -> None:
    assert run_example("four_layer_rnn.py") == ["RNN(100, 20, num_layers=4, dtype=float32)", "output (10, 3, 20)",
                                                 "h_n (4, 3, 20)", "halves match the whole: True"]


def test_cell_by_hand() -> None:
    assert run_example("cell_by_hand.py") == ["RNNCell(100, 20, dtype=float32)", "h (3, 20)", "states (10, 3, 20)",
                                               "same as RNN: True"]


def test_two_cells_backward() -> None:
    lines = run_example("two_cells_backward.py")
    assert lines[:2] == ["h2 (3, 15)", "grad_x (10, 3, 100)"]
    assert lines[2] == ("cell1 grads {'weight_ih': (20, 100), 'weight_hh': (20, 20), 'bias_ih': (20,), "
                        "'bias_hh': (20,)}")
    assert lines[3] == ("cell2 grads {'weight_ih': (15, 20), 'weight_hh': (15, 15), 'bias_ih': (15,), "
                        "'bias_hh': (15,)}")
    error = float(re.fullmatch(r"gradient check: analytic \S+, numeric \S+, relative error (\S+)", lines[4]).group(1))
    assert error < 1e-6


def test_sentiment_classification_beats_chance_clearly() -> None:
    lines = run_example("sentiment_classification.py")
    values = {m.group(1): float(m.group(2)) for m in (re.fullmatch(r"(\w+ accuracy): ([0-9.]+)", line)
                                                      for line in lines) if m}
    assert 0.45 < values["chance accuracy"] < 0.6
    assert values["train accuracy"] > 0.9
    assert values["test accuracy"] > 0.85  # chance is about 0.5


def test_pytorch_interop() -> None:
    pytest.importorskip("torch")
    lines = run_example("pytorch_interop.py")
    differences = [float(v) for line in lines if "difference" in line
                   for v in re.findall(r"difference\| ([0-9.e+-]+)", line)]
    assert len(differences) == 5, lines
    assert max(differences) < 1e-4, lines
    tuned = next(line for line in lines if line.startswith("rnnfast fine-tuning"))
    before, after = (float(v) for v in re.findall(r"MSE ([0-9.]+) -> ([0-9.]+)", tuned)[0])
    assert after < before
    assert lines[-1] == "state dict keys: weight_ih, weight_hh, bias_ih, bias_hh"


def test_pytorch_interop_skips_cleanly_without_torch() -> None:
    code = ("import runpy, sys; sys.modules['torch'] = None; "  # makes `import torch` fail
            f"runpy.run_path({str(EXAMPLES / 'pytorch_interop.py')!r}, run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("torch is not installed: skipping")
