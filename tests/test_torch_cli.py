"""``python -m rnnfast.torch``: its options, a tiny run, both libraries pinned to the same thread count, and the
timing method of ``rnnfast bench``. No timing assertions."""

from __future__ import annotations

import subprocess
import sys
from typing import Any, Callable, Dict, List

import pytest

pytest.importorskip("torch")

import torch  # noqa: E402

import rnnfast  # noqa: E402
import rnnfast.bench  # noqa: E402
import rnnfast.torch  # noqa: E402
from rnnfast import _torch_cli  # noqa: E402
from rnnfast.bench import timing  # noqa: E402


def run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rnnfast.torch", *args], capture_output=True, text=True,
                          timeout=300)


def test_help_exits_0_with_usage() -> None:
    proc = run_module("--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python -m rnnfast.torch")
    for option in ("--cases", "--threads", "--repeat", "--dropout", "--quick"):
        assert option in proc.stdout
    assert "Traceback" not in proc.stderr


def test_a_tiny_run_prints_a_table() -> None:
    proc = run_module("--cases", "seed_1layer", "--repeat", "1", "--threads", "1", "--quick")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "1 thread(s) for torch and rnnfast, median of 1 repetition(s)" in proc.stdout
    header = next(i for i, line in enumerate(lines) if line.startswith("case"))
    assert "torch.nn.RNN" in lines[header] and "rnnfast.torch" in lines[header]
    (row,) = lines[header + 1:]
    assert row.split()[0] == "seed_1layer" and row.endswith("x")


def test_dropout_applies_between_the_layers_of_both_models(monkeypatch: pytest.MonkeyPatch) -> None:
    made: List[Any] = []
    for cls in (torch.nn.RNN, rnnfast.torch.RNN):
        monkeypatch.setattr(cls, "__init__", _recording_init(cls, made))
    case = rnnfast.bench.CASES["seed_4layer"]
    steps = _torch_cli._training_steps(case, 0.25)
    assert [(type(m).__module__.split(".")[0], m.dropout, m.training) for m in made] == [
        ("torch", 0.25, True), ("rnnfast", 0.25, True)]
    for step in steps.values():
        step()
    proc = run_module("seed_4layer", "--repeat", "1", "--threads", "1", "--quick", "--dropout", "0.2")
    assert proc.returncode == 0, proc.stderr
    assert "float32, dropout 0.2 between layers:" in proc.stdout


def _recording_init(cls: Any, made: List[Any]) -> Any:
    init = cls.__init__

    def recorded(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if type(self) is cls:  # rnnfast.torch.RNN's __init__ runs torch.nn.RNN's
            made.append(self)
    return recorded


def test_bad_arguments_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    # In this process (each `python -m rnnfast.torch` imports PyTorch anew, two seconds apiece); the entry point
    # itself runs in the tests above.
    for args in (["--cases", "no_such_case"], ["cell_step_H20"], ["--threads", "0"], ["--repeat", "x"],
                 ["--dropout", "1"], ["--dropout", "-0.1"], ["--dropout", "x"]):
        with pytest.raises(SystemExit) as exit_info:
            _torch_cli.main(args)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, (args, err)
        assert err.startswith("usage:") and "Traceback" not in err, args


def test_both_libraries_run_at_the_chosen_thread_count_and_are_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: List[Dict[str, int]] = []
    real = _torch_cli._training_steps

    def recording(case: Any, dropout: float = 0.0) -> Dict[str, Callable[[], None]]:
        steps = real(case, dropout)

        def wrap(step: Callable[[], None]) -> Callable[[], None]:
            def run() -> None:
                seen.append({"torch": torch.get_num_threads(), "rnnfast": rnnfast.get_num_threads()})
                step()
            return run

        return {label: wrap(step) for label, step in steps.items()}

    monkeypatch.setattr(_torch_cli, "_training_steps", recording)
    before = (torch.get_num_threads(), rnnfast.get_num_threads())
    threads = 1 if before != (1, 1) else 2
    (result,) = _torch_cli.time_training_steps(["seed_1layer"], threads=threads, repeat=1, quick=True)
    assert seen and all(s == {"torch": threads, "rnnfast": threads} for s in seen)
    assert (torch.get_num_threads(), rnnfast.get_num_threads()) == before
    assert result["name"] == "seed_1layer" and result["threads"] == threads
    assert result["speedup"] == pytest.approx(result["torch_ms"] / result["rnnfast_ms"])


def test_timed_with_the_benchmark_method(monkeypatch: pytest.MonkeyPatch) -> None:
    """The steps go through rnnfast.bench's time_interleaved, with the settings of Timing.for_run."""
    calls: List[Dict[str, Any]] = []
    real = timing.time_interleaved

    def recording(run_ns: Any, repeat: int, min_seconds: float, settle: float) -> timing.Timings:
        calls.append({"names": list(run_ns), "repeat": repeat, "min_seconds": min_seconds, "settle": settle})
        return real(run_ns, repeat, min_seconds, settle)

    monkeypatch.setattr(timing, "time_interleaved", recording)
    results = _torch_cli.time_training_steps(["seed_1layer", "seed_4layer"], threads=1, repeat=2, quick=True)
    expected = timing.Timing.for_run(2, quick=True)
    assert [r["name"] for r in results] == ["seed_1layer", "seed_4layer"]
    assert calls == [{"names": ["torch", "rnnfast"], "repeat": expected.repeat, "min_seconds": expected.min_loop_s,
                      "settle": expected.settle_s}] * 2
    for r in results:
        assert {label: len(samples) for label, samples in r["samples_ms"].items()} == {"torch": 2, "rnnfast": 2}
