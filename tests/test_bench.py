"""The benchmark's plumbing: result structure, speedup arithmetic, the command line and the ONNX graph.

No timing assertions: these tests run tiny cases in quick mode and check only that the numbers are well formed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import pytest

import rnnfast
from rnnfast import bench
from rnnfast.__main__ import main as cli_main

QUICK_CASES = ["seed_1layer", "cell_step_H20"]
# Under AddressSanitizer freed memory sits in a quarantine, so a step's peak says nothing about the kernels.
SANITIZED = bool(os.environ.get("RNNFAST_SANITIZED")) or "asan" in os.environ.get("LD_PRELOAD", "")
REPEAT = 2


@pytest.fixture(scope="module")
def quick_results() -> dict:
    return bench.run(cases=QUICK_CASES, threads=1, repeat=REPEAT, quick=True, reference=True)


def check_mode(mode: dict, repeat: int) -> None:
    times = mode["median_s"]
    assert "rnnfast" in times
    for backend, seconds in times.items():
        assert backend in bench.BACKENDS
        assert math.isfinite(seconds) and seconds > 0, (backend, seconds)
        samples = mode["samples_s"][backend]
        assert len(samples) == repeat and all(s > 0 for s in samples)
        assert seconds == pytest.approx(statistics.median(samples))
        assert mode["calls_per_sample"][backend] >= 1
    variants = {b for b in times if bench.BACKEND_TABLE[b].variant_of is not None}
    assert set(mode["speedup"]) == set(times) - {"rnnfast"} - variants
    for backend, speedup in mode["speedup"].items():
        # Against the backend's faster row: its own or a variant's (PyTorch on one thread).
        rows = [backend] + [v for v in variants if bench.BACKEND_TABLE[v].variant_of == backend]
        fastest = min(rows, key=lambda row: times[row])
        assert mode["speedup_row"][backend] == fastest
        assert speedup == pytest.approx(times[fastest] / times["rnnfast"])
    # Every backend that ran agreed with rnnfast: nothing was skipped as a mismatch or an error.
    assert mode["skipped"] == {}


def test_grid() -> None:
    assert list(bench.CASES) == ["seed_1layer", "seed_4layer", "stream_T1000_B1", "mid_T50_B16_H128",
                                 "big_T100_B64_H256", "big_T100_B64_H512", "bidir2_T50_B32_H128",
                                 "wlm_T35_B20_H200_L2", "ragged_T200_B64_H128", "full_T200_B64_H128",
                                 "cell_step_H20", "cell_step_H128"]
    assert bench.CASES["ragged_T200_B64_H128"].ragged and not bench.CASES["full_T200_B64_H128"].ragged
    assert bench.CASES["seed_1layer"].flops == 2 * 10 * 3 * 20 * (100 + 20)
    assert bench.CASES["seed_4layer"].flops == 2 * 10 * 3 * 20 * ((100 + 20) + 3 * (20 + 20))
    assert bench.CASES["bidir2_T50_B32_H128"].flops == 2 * 2 * 50 * 32 * 128 * ((128 + 128) + (256 + 128))
    assert bench.CASES["cell_step_H128"].flops == 2 * 128 * (128 + 128)
    assert [c.name for c in bench.select_cases(["seed"])] == ["seed_1layer", "seed_4layer"]
    assert [c.name for c in bench.select_cases(["cell_step_H128", "stream"])] == ["stream_T1000_B1",
                                                                                  "cell_step_H128"]
    with pytest.raises(ValueError, match="matches no case"):
        bench.select_cases(["no_such_case"])


def test_run_structure(quick_results: dict) -> None:
    r = quick_results
    assert list(r["cases"]) == QUICK_CASES
    assert r["threads"] == 1 and r["repeat"] == REPEAT and r["quick"] is True
    assert r["gemm"]["gflops"] > 0 and r["gemm"]["median_s"] > 0
    # Measured before the cases and after them; % GEMM divides by the faster of the two.
    before, after = r["gemm"]["before"], r["gemm"]["after"]
    assert r["gemm"]["gflops"] == max(before["gflops"], after["gflops"])
    assert r["gemm"]["median_s"] == min(before["median_s"], after["median_s"])
    assert r["machine"]["cpu_model"]
    assert r["versions"]["rnnfast"] == rnnfast.__version__
    assert r["backends"]["rnnfast"]["available"] and r["backends"]["reference"]["available"]
    for name in ("torch", "onnxruntime", "openvino"):
        assert isinstance(r["backends"][name]["available"], bool)

    seed = r["cases"]["seed_1layer"]
    assert set(seed["modes"]) == {"inference", "train"}
    assert seed["flops"] == bench.CASES["seed_1layer"].flops
    cell = r["cases"]["cell_step_H20"]
    assert set(cell["modes"]) == {"inference"}
    for case in (seed, cell):
        for mode in case["modes"].values():
            check_mode(mode, REPEAT)
            assert "reference" in mode["median_s"]
            if r["backends"]["torch"]["available"]:
                assert "torch" in mode["median_s"]
        inference = case["modes"]["inference"]
        gflops = case["flops"] / inference["median_s"]["rnnfast"] / 1e9
        assert inference["rnnfast_gflops"] == pytest.approx(gflops)
        assert inference["percent_of_gemm"] == pytest.approx(100 * gflops / r["gemm"]["gflops"])
    # The ONNX backends run the RNN cases' inference only.
    for name in ("onnxruntime", "openvino"):
        assert (name in seed["modes"]["inference"]["median_s"]) == r["backends"][name]["available"]
        assert name not in seed["modes"]["train"]["median_s"]
        assert name not in cell["modes"]["inference"]["median_s"]

    json.loads(json.dumps(r))  # plain JSON types only
    table = bench.format_table(r)
    assert "seed_1layer" in table and "cell_step_H20" in table and "train" in table
    # The global thread setting is restored afterwards.
    assert rnnfast.get_num_threads() >= 1


def _gemm_measurement(gflops: float, dtype: str = "float32", blas_threads: "int | None" = 2) -> dict:
    """What ``_measure_gemm`` returns for a machine at ``gflops``."""
    size = bench.GEMM_SIZE
    return {"size": size, "dtype": dtype, "median_s": 2 * size ** 3 / gflops / 1e9, "gflops": gflops,
            "blas_threads": blas_threads}


def test_the_gemm_rate_is_the_faster_of_two_measurements_and_the_table_says_when_they_disagree(
        quick_results: dict) -> None:
    measured = _gemm_measurement
    # A slow spell during the first measurement does not lower the rate % GEMM divides by.
    rate = bench.gemm_rate(measured(80.0), measured(200.0))
    assert rate["gflops"] == 200.0 and rate["median_s"] == measured(200.0)["median_s"]
    assert rate["before"]["gflops"] == 80.0 and rate["after"]["gflops"] == 200.0
    assert bench.gemm_drift(rate) == pytest.approx(2.5)
    assert bench.gemm_rate(measured(190.0), measured(150.0))["gflops"] == 190.0
    assert bench.gemm_drift(measured(100.0)) is None  # results of one measurement (older JSON)

    results = dict(quick_results)
    results["gemm"] = rate
    table = bench.format_table(results)
    assert "200.0 GFLOP/s (the faster of 80.0 before the cases and 200.0 after them)" in table
    assert "The GEMM rate moved 2.50x" in table
    steady = bench.gemm_rate(measured(200.0), measured(200.0 / (0.99 * bench.GEMM_DRIFT)))
    results["gemm"] = steady
    assert "moved" not in bench.format_table(results)
    results["gemm"] = measured(100.0)
    table = bench.format_table(results)
    assert "100.0 GFLOP/s\n" in table and "before the cases" not in table and "moved" not in table


def test_percent_of_gemm_divides_by_the_faster_of_the_runs_two_measurements(monkeypatch) -> None:
    """The run measures the rate before its cases and after them; a slow first measurement does not lower it."""
    rates = iter([80.0, 200.0])

    def fake_measure(threads_note, repeat, min_seconds, dtype="float32"):
        return _gemm_measurement(next(rates), dtype, threads_note)

    monkeypatch.setattr(bench.runner, "_measure_gemm", fake_measure)
    r = bench.run(cases=["seed_1layer"], threads=1, repeat=1, quick=True, reference=False, backends=[])
    assert r["gemm"]["before"]["gflops"] == 80.0 and r["gemm"]["after"]["gflops"] == 200.0
    inference = r["cases"]["seed_1layer"]["modes"]["inference"]
    assert inference["percent_of_gemm"] == pytest.approx(inference["rnnfast_gflops"] / 2.0)
    assert "The GEMM rate moved 2.50x" in bench.format_table(r)


def test_plot(quick_results: dict, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "speedups.png"
    bench.write_plot(quick_results, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_json(tmp_path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "rnnfast", "bench", "--cases", "seed_1layer", "--quick", "--threads", "1",
         "--json", str(out)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr
    assert "seed_1layer" in proc.stdout and "GEMM" in proc.stdout
    r = json.loads(out.read_text())
    assert list(r["cases"]) == ["seed_1layer"]
    assert r["quick"] is True and r["threads"] == 1
    for mode in r["cases"]["seed_1layer"]["modes"].values():
        check_mode(mode, r["repeat"])


def test_cli_errors(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli_main([])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        cli_main(["no-such-command"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        cli_main(["bench", "--cases", "no_such_case"])
    assert exc.value.code == 2
    assert "matches no case" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli_main(["bench", "--threads", "0"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        cli_main(["bench", "--help"])
    assert exc.value.code == 0
    assert "--no-reference" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_onnx_graph_matches_rnnfast(kind: str) -> None:
    # The ONNX backends run rnnfast.onnx's graph of the case's model, T and B fixed to the case's.
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    case = dataclasses.replace(bench.CASES["seed_4layer"], kind=kind)
    w = bench._make_workload(case)
    model = bench._onnx_model_for(w, {})
    onnx.checker.check_model(model, full_check=True)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [case.seq_len, case.batch, case.input_size]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = ["output", "h_n", "c_n"] if kind == "lstm" else ["output", "h_n"]
    got = session.run(names, {"input": w.x})
    output, state = w.model(w.x)
    expected = [output, *state] if kind == "lstm" else [output, state]
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)
    for name in ("ragged_T200_B64_H128", "cell_step_H20"):
        with pytest.raises(bench._Skip):
            bench._onnx_model_for(bench._make_workload(dataclasses.replace(bench.CASES[name], kind=kind)), {})


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak memory is read from /proc (Linux)")
@pytest.mark.skipif(SANITIZED, reason="peak memory is not meaningful under AddressSanitizer")
def test_train_memory_is_about_one_sequence_per_array_the_step_needs() -> None:
    # One step of big_T100_B64_H512 needs the output (which the cache refers to), the output's gradient and a
    # chunk of pre-activation gradients: about 2.5 sequence-sized arrays. Copies of x and of the states in the
    # cache, a full-length dz and an unwanted grad_input would make it 6.
    case = bench.CASES["big_T100_B64_H512"]
    sequence = case.seq_len * case.batch * case.hidden_size * 4
    peak = bench.measure_train_memory("big_T100_B64_H512", "rnnfast", threads=1)
    assert peak is not None
    assert 1.5 * sequence < peak < 3.5 * sequence, peak / sequence


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak memory is read from /proc (Linux)")
@pytest.mark.skipif(SANITIZED, reason="peak memory is not meaningful under AddressSanitizer")
def test_train_memory_no_larger_than_pytorch() -> None:
    pytest.importorskip("torch")
    ours = bench.measure_train_memory("big_T100_B64_H512", "rnnfast", threads=1)
    theirs = bench.measure_train_memory("big_T100_B64_H512", "torch", threads=1)
    assert ours is not None and theirs is not None
    assert ours <= theirs, (ours / 2**20, theirs / 2**20)


def test_the_train_job_reports_the_cache_storage_kept_for_the_next_step() -> None:
    # --memory adds a job's kept_bytes() to the step's peak: for rnnfast, the storage of the released cache that
    # the next step's forward refills (every step's gates and cell state, 5 H per row of an LSTM, at least).
    case = dataclasses.replace(bench.CASES["mid_T50_B16_H128"], kind="lstm")
    jobs = bench._JOB_BUILDERS["rnnfast"](bench._make_workload(case), {"threads": 1})
    assert jobs["train"].kept_bytes() == 0
    jobs["train"].run_n(1)
    gates_and_c = case.seq_len * case.batch * 5 * case.hidden_size * 4
    assert gates_and_c <= jobs["train"].kept_bytes() < 3 * gates_and_c
    jobs["inference"].run_n(1)  # a forward without a cache frees it
    assert jobs["train"].kept_bytes() == 0 and jobs["inference"].kept_bytes() == 0


def test_memory_arguments_and_report() -> None:
    with pytest.raises(ValueError, match="case"):
        bench.measure_train_memory("cell_step_H20", "rnnfast")
    with pytest.raises(ValueError, match="backend"):
        bench.measure_train_memory("seed_1layer", "onnxruntime")
    results = bench.run(cases=["seed_1layer"], threads=1, repeat=1, quick=True, reference=False, backends=[],
                        memory=True)
    peak = results["cases"]["seed_1layer"]["train_peak_bytes"]
    assert list(peak) == ["rnnfast"]
    if sys.platform.startswith("linux"):
        assert isinstance(peak["rnnfast"], int) and peak["rnnfast"] >= 0
        assert "Training-step peak memory" in bench.format_table(results)


@pytest.mark.parametrize("settle", [0.0, 0.001])
def test_each_timed_loop_after_a_pause_follows_one_untimed_call(monkeypatch, settle: float) -> None:
    """After the settle pause every backend makes one untimed call before its timed loop (the first call after an
    idle spell pays for waking threads); without a pause there is none."""
    calls: list[int] = []
    real = bench._JOB_BUILDERS["rnnfast"]

    def recording(w, env):  # type: ignore[no-untyped-def]
        jobs = real(w, env)
        job = jobs["inference"]

        def run_n(n: int) -> None:
            calls.append(n)
            job.run_n(n)

        return {"inference": bench._Job(run_n, job.probe)}

    monkeypatch.setitem(bench._JOB_BUILDERS, "rnnfast", recording)
    # min_seconds well above one call's time also under sanitizers on a busy machine
    result = bench._bench_case(bench.CASES["cell_step_H20"], ["rnnfast"], {"threads": 1}, repeat=3,
                               min_seconds=5e-3, settle=settle)
    per_loop = result["modes"]["inference"]["calls_per_sample"]["rnnfast"]
    assert per_loop > 1  # a timed loop is told apart from the untimed call by its length
    expected = ([1, per_loop] if settle > 0 else [per_loop]) * 3
    assert calls[-len(expected):] == expected


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_grid_runs_with_gated_cells_and_every_backend_agrees(cell: str) -> None:
    """--cell runs the same grid with LSTMs / GRUs; the reference (and PyTorch, when installed) match rnnfast."""
    backends = ["torch"] if importlib.util.find_spec("torch") is not None else []
    results = bench.run(cases=["seed_1layer", "cell_step_H20"], threads=1, repeat=1, quick=True, backends=backends,
                        cell=cell)
    assert results["cell"] == cell
    for name, case in results["cases"].items():
        for mode, m in case["modes"].items():
            assert not m["skipped"].get("reference", "").startswith("mismatch"), (name, mode, m["skipped"])
            assert "reference" in m["median_s"], (name, mode, m["skipped"])
            if backends:
                assert "torch" in m["median_s"], (name, mode, m["skipped"])
    gates = {"lstm": 4, "gru": 3}[cell]
    assert results["cases"]["seed_1layer"]["flops"] == 2 * 10 * 3 * gates * 20 * (100 + 20)
    assert "(%s cells)" % cell in bench.format_table(results)


def test_an_unknown_cell_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="cell: expected one of"):
        bench.run(cases=["seed_1layer"], quick=True, cell="elman")


# ------------------------------------------------------------------------------------------------------- float64

def test_float64_rows_run_rnnfast_torch_and_the_reference_in_float64() -> None:
    results = bench.run(cases=["seed_1layer", "cell_step_H20"], threads=1, repeat=1, quick=True, dtype="float64")
    assert results["dtype"] == "float64" and results["gemm"]["dtype"] == "float64"
    # ONNX Runtime and OpenVINO are listed as not run, with the reason, whether installed or not.
    for name in ("onnxruntime", "openvino"):
        info = results["backends"][name]
        assert info["available"] is False and info["reason"].startswith("float64: "), info
    torch_ran = results["backends"]["torch"]["available"]
    for name, case in results["cases"].items():
        assert case["dtype"] == "float64"
        for mode in case["modes"].values():
            check_mode(mode, 1)  # every backend agreed with rnnfast within float64's tolerance
            expected = {"rnnfast", "reference"} | ({"torch"} if torch_ran else set())
            assert set(mode["median_s"]) == expected, (name, mode["skipped"])
    table = bench.format_table(results)
    assert "(rnn cells) in float64" in table and "GEMM rate (NumPy float64 1024x1024)" in table
    not_run = [line for line in table.splitlines() if line.startswith("Not run: ")]
    assert len(not_run) == 1 and "onnxruntime (float64: " in not_run[0], table
    json.loads(json.dumps(results))


def test_float32_is_the_default_and_says_so() -> None:
    results = bench.run(cases=["cell_step_H20"], threads=1, repeat=1, quick=True, reference=False, backends=[])
    assert results["dtype"] == "float32" and results["gemm"]["dtype"] == "float32"
    assert results["cases"]["cell_step_H20"]["dtype"] == "float32"
    assert "(rnn cells) in float32" in bench.format_table(results)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_the_workload_is_of_the_case_dtype(kind: str, dtype: str) -> None:
    for name in ("seed_4layer", "ragged_T200_B64_H128", "cell_step_H20"):
        w = bench._make_workload(dataclasses.replace(bench.CASES[name], kind=kind, dtype=dtype))
        assert w.model.dtype == np.dtype(dtype) and w.x.dtype == np.dtype(dtype)
        states = w.h if isinstance(w.h, tuple) else (w.h,) if w.h is not None else ()
        assert all(s.dtype == np.dtype(dtype) for s in states)
        assert w.target is None or w.target.dtype == np.dtype(dtype)


def test_a_bad_dtype_is_refused(capsys) -> None:
    for bad in ("float16", "int32", None, "double precision"):
        with pytest.raises(ValueError, match="dtype: expected one of"):
            bench.run(cases=["cell_step_H20"], quick=True, dtype=bad)
    assert bench.run(cases=["cell_step_H20"], threads=1, repeat=1, quick=True, reference=False, backends=[],
                     dtype=np.float64)["dtype"] == "float64"
    with pytest.raises(SystemExit) as exc:
        cli_main(["bench", "--dtype", "float16"])
    assert exc.value.code == 2
    assert "--dtype" in capsys.readouterr().err


def test_the_float32_only_backends_really_cannot_run_float64() -> None:
    """Why ONNX Runtime and OpenVINO have no float64 rows: ONNX Runtime refuses a float64 RNN / LSTM / GRU graph and
    OpenVINO computes it in float32 (its results are float32-close, not float64-close, to rnnfast's)."""
    pytest.importorskip("onnx")
    case = dataclasses.replace(bench.CASES["seed_1layer"], dtype="float64")
    assert bench.BACKEND_TABLE["onnxruntime"].dtypes == ("float32",)
    assert bench.BACKEND_TABLE["openvino"].dtypes == ("float32",)
    for kind in ("rnn", "lstm", "gru"):
        w = bench._make_workload(dataclasses.replace(case, kind=kind))
        expected = bench._JOB_BUILDERS["rnnfast"](w, {})["inference"].probe()
        if importlib.util.find_spec("onnxruntime") is not None:
            with pytest.raises(Exception):
                bench._JOB_BUILDERS["onnxruntime"](w, {"threads": 1, "onnxruntime": importlib.import_module(
                    "onnxruntime")})["inference"].probe()
        if importlib.util.find_spec("openvino") is not None:
            got = bench._JOB_BUILDERS["openvino"](w, {"threads": 1, "openvino": importlib.import_module(
                "openvino")})["inference"].probe()
            assert bench._output_mismatch(got, expected, 1e-3) is None
            assert bench._output_mismatch(got, expected, bench.backends._TOLERANCES["float64"][0]) is not None


# ------------------------------------------------------------------------------------------------------- --quick

QUICK_REFERENCE_CASES = ["seed_1layer", "seed_4layer", "stream_T1000_B1", "mid_T50_B16_H128", "cell_step_H20",
                         "cell_step_H128"]


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_quick_runs_the_reference_on_the_small_cases_only(kind: str) -> None:
    for case in bench.CASES.values():
        case = dataclasses.replace(case, kind=kind)
        why = bench._quick_exclusion("reference", case)
        assert (why is None) == (case.name in QUICK_REFERENCE_CASES), (case.name, why)
        for backend in ("rnnfast", "torch", "onnxruntime", "openvino"):
            assert bench._quick_exclusion(backend, case) is None


def test_quick_leaves_the_reference_out_of_big_cases_and_says_so() -> None:
    results = bench.run(cases=["seed_1layer", "big_T100_B64_H256"], threads=1, repeat=1, quick=True, backends=[])
    small, big = results["cases"]["seed_1layer"], results["cases"]["big_T100_B64_H256"]
    assert small["not_run"] == {}
    assert list(big["not_run"]) == ["reference"] and "--quick" in big["not_run"]["reference"]
    for mode in small["modes"].values():
        assert set(mode["median_s"]) == {"rnnfast", "reference"}
    for mode in big["modes"].values():
        assert set(mode["median_s"]) == {"rnnfast"} and mode["skipped"] == {}
    assert "--quick: numpy-ref not run on big_T100_B64_H256" in bench.format_table(results)


def test_a_known_slow_call_spares_the_calibration_call() -> None:
    """time_interleaved with the time of one call already known (a quick run passes its agreement check's): a
    backend slower than the loop length is timed one call per loop, without a calibration call."""
    calls: dict = {"slow": [], "fast": []}
    run_ns = {name: (lambda n, name=name: calls[name].append(n)) for name in calls}
    timings = bench.time_interleaved(run_ns, repeat=3, min_seconds=0.5, settle=0.0, first_call_s={"slow": 0.6})
    assert calls["slow"] == [1, 1, 1] and timings.calls_per_sample["slow"] == 1
    # Without a known time (and for "fast", whose calls take no time) the loop length is calibrated first.
    assert len(calls["fast"]) > 3 and timings.calls_per_sample["fast"] > 1


def test_a_stalled_first_call_is_not_taken_for_a_slow_backend(monkeypatch) -> None:
    """Calibration: a single call that reaches the loop length once (a stall) is timed again; only a backend whose
    calls take that long each time is timed one call per loop."""
    stall = iter([0.02])  # seconds that the first loop appears to take; later loops take 1 ms per call

    def fake_loop(run_n, calls):  # type: ignore[no-untyped-def]
        return next(stall, 1e-3 * calls)

    monkeypatch.setattr(bench.timing, "_time_loop", fake_loop)
    assert bench._calibrate(lambda n: None, min_seconds=0.01) > 1
    monkeypatch.setattr(bench.timing, "_time_loop", lambda run_n, calls: 0.02 * calls)
    assert bench._calibrate(lambda n: None, min_seconds=0.01) == 1


def test_quick_runs_pause_neither_before_loops_nor_after_imports() -> None:
    quick, full = bench.Timing.for_run(5, quick=True), bench.Timing.for_run(5)
    assert (quick.repeat, quick.min_loop_s, quick.settle_s, quick.startup_settle_s) == (
        bench.QUICK_MAX_REPEAT, bench.QUICK_MIN_LOOP_SECONDS, 0.0, 0.0)
    assert (full.repeat, full.min_loop_s) == (5, bench.MIN_LOOP_SECONDS) and full.settle_s > 0


def test_the_package_passes_mypy_strict(tmp_path) -> None:
    pytest.importorskip("mypy")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # The source tree's package (where the suite runs against an installed wheel, checking the copy inside the
    # venv would make mypy take the venv's site-packages for the project's own modules).
    package = os.path.join(root, "python", "rnnfast", "bench")
    old_numpy = [] if np.lib.NumpyVersion(np.__version__) >= "2.1.0" else ["--disable-error-code=type-arg"]
    result = subprocess.run(
        # The bench package's own code, strictly; the modules it imports are typed by the public-API test
        # (tests/typing). A bare np.ndarray is complete from NumPy 2.1's stubs on (its parameters have defaults).
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", *old_numpy, "--config-file",
         os.path.join(root, "pyproject.toml"), "--cache-dir", str(tmp_path / "mypy_cache"), package],
        capture_output=True, text=True, cwd=root, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def test_slowdown_with_more_threads() -> None:
    assert bench.slowdown_with_more_threads([4.0, 2.0, 1.0]) == 1.0
    assert bench.slowdown_with_more_threads([1.0, 2.0, 1.5]) == 2.0
    assert bench.slowdown_with_more_threads([2.0, None, 3.0]) == 1.5


def test_cli_thread_sweep(tmp_path) -> None:
    out, plot = tmp_path / "sweep.json", tmp_path / "sweep.png"
    proc = subprocess.run(
        [sys.executable, "-m", "rnnfast", "bench", "--cases", "seed_1layer", "--quick", "--no-reference",
         "--backends=", "--threads", "2,1", "--json", str(out), "--plot", str(plot)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr
    runs = json.loads(out.read_text())["sweep"]
    assert [r["threads"] for r in runs] == [1, 2]  # in increasing order
    for r in runs:
        for mode in r["cases"]["seed_1layer"]["modes"].values():
            check_mode(mode, r["repeat"])
    table = proc.stdout[proc.stdout.index("thread sweep"):].splitlines()
    header = next(line for line in table if line.startswith("case"))
    assert header.split()[3:8] == ["1", "thr", "ms", "2", "thr"]
    rows = [line.split() for line in table if line.startswith("seed_1layer")]
    assert [row[:3] for row in rows] == [["seed_1layer", "inference", "rnnfast"], ["seed_1layer", "train", "rnnfast"]]
    for row in rows:  # the times, the fastest count, the slowdown from more threads, as the runs measured them
        times = [r["cases"]["seed_1layer"]["modes"][row[1]]["median_s"]["rnnfast"] for r in runs]
        assert row[3:5] == [bench._fmt_ms(t) for t in times]
        assert int(row[5]) == [1, 2][times.index(min(times))]
        assert row[6] == f"{max(1.0, times[1] / times[0]):.2f}x"
    if importlib.util.find_spec("matplotlib") is not None:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("bad", ["1,1", "0,2", "2,x", ""])
def test_cli_thread_counts_must_be_distinct_positive_integers(bad, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli_main(["bench", "--threads", bad])
    assert exc.value.code == 2
    assert "--threads" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- PyTorch at 1 and N threads

def _fake_torch_builders(monkeypatch, torch_s: float, torch1_s: float) -> None:
    """"torch" and "torch1" rows that give rnnfast's own results and take the given seconds per call."""
    def builder(seconds: float):  # type: ignore[no-untyped-def]
        def build(w, env):  # type: ignore[no-untyped-def]
            real = bench._JOB_BUILDERS["rnnfast"](w, env)["inference"]
            return {"inference": bench._Job(lambda n: time.sleep(seconds * n), real.probe)}
        return build

    monkeypatch.setitem(bench._JOB_BUILDERS, "torch", builder(torch_s))
    monkeypatch.setitem(bench._JOB_BUILDERS, "torch1", builder(torch1_s))


@pytest.mark.parametrize("one_thread_faster", [True, False])
def test_the_speedup_over_pytorch_is_against_its_faster_thread_count(monkeypatch, quick_results: dict,
                                                                     one_thread_faster: bool) -> None:
    """The issue's anchor is PyTorch at its best of 1 and N threads: the speedup over "torch" divides the faster of
    its row and its one-thread row ("torch1"), the table marks which, and a thread sweep leaves the variant out."""
    fast, slow = 2e-3, 8e-3
    _fake_torch_builders(monkeypatch, slow if one_thread_faster else fast, fast if one_thread_faster else slow)
    result = bench._bench_case(bench.CASES["cell_step_H20"], ["rnnfast", "torch", "torch1"], {"threads": 2},
                               repeat=2, min_seconds=1e-2, settle=0.0)
    mode = result["modes"]["inference"]
    check_mode(mode, 2)
    assert set(mode["median_s"]) == {"rnnfast", "torch", "torch1"} and set(mode["speedup"]) == {"torch"}
    assert mode["speedup_row"]["torch"] == ("torch1" if one_thread_faster else "torch")
    times = mode["median_s"]
    assert mode["speedup"]["torch"] == pytest.approx(min(times["torch"], times["torch1"]) / times["rnnfast"])

    results = {**quick_results, "threads": 2, "cases": {"cell_step_H20": result}}
    table = bench.format_table(results).splitlines()
    header = next(line for line in table if line.startswith("case"))
    assert "torch 1t ms" in header and "vs torch" in header and "vs torch 1t" not in header
    row = next(line for line in table if line.startswith("cell_step_H20"))
    speedup = f"{mode['speedup']['torch']:.2f}x"
    assert (speedup + "*" in row.split()) == one_thread_faster and (speedup in row.split()) != one_thread_faster
    assert any(line.startswith("vs torch = against the faster of torch (2 threads) and torch 1t") for line in table)

    # A sweep times every backend at each count itself: no "torch 1t" row.
    one = {**quick_results, "threads": 1, "cases": {"cell_step_H20": json.loads(json.dumps(result))}}
    del one["cases"]["cell_step_H20"]["modes"]["inference"]["median_s"]["torch1"]
    sweep_rows = [line.split() for line in bench.format_sweep([one, results]).splitlines()
                  if line.startswith("cell_step_H20")]
    assert sorted(row[2] for row in sweep_rows) == ["rnnfast", "torch"]


def test_the_one_thread_pytorch_row_follows_the_torch_backend() -> None:
    assert "torch1" not in bench._OPTIONAL_BACKENDS and "torch" in bench._OPTIONAL_BACKENDS
    assert bench.BACKEND_TABLE["torch1"].variant_of == "torch"
    with pytest.raises(ValueError, match="backends: unknown"):
        bench.run(cases=["cell_step_H20"], quick=True, backends=["torch1"])
    # Not requested with torch left out; not run in a one-thread run (where it would repeat torch's row).
    for threads, backends in ((2, []), (1, ["torch"])):
        results = bench.run(cases=["cell_step_H20"], threads=threads, repeat=1, quick=True, reference=False,
                            backends=backends)
        assert "torch1" not in results["cases"]["cell_step_H20"]["modes"]["inference"]["median_s"]


def test_pytorch_runs_pinned_to_one_thread_beside_its_row(monkeypatch) -> None:
    torch = pytest.importorskip("torch")
    results = bench.run(cases=["cell_step_H20"], threads=2, repeat=1, quick=True, reference=False,
                        backends=["torch"])
    mode = results["cases"]["cell_step_H20"]["modes"]["inference"]
    check_mode(mode, 1)
    assert {"torch", "torch1"} <= set(mode["median_s"])

    w = bench._make_workload(dataclasses.replace(bench.CASES["seed_1layer"], kind="lstm"))
    with pytest.raises(bench.backends._Skip):
        bench._JOB_BUILDERS["torch1"](w, {"threads": 1, "torch": torch})
    # Each call of a job sets PyTorch to one thread and back to the run's count, also when it fails.
    counts: list[int] = []
    real_set = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (counts.append(n), real_set(n))[1])
    saved = torch.get_num_threads()
    try:
        real_set(2)
        jobs = bench._JOB_BUILDERS["torch1"](w, {"threads": 2, "torch": torch})
        grads = jobs["train"].probe()
        jobs["inference"].run_n(2)
        assert counts == [1, 2, 1, 2] and torch.get_num_threads() == 2
        torch_jobs = bench._JOB_BUILDERS["torch"](w, {"threads": 2, "torch": torch})
        assert bench._grad_mismatch(grads, torch_jobs["train"].probe()) is None

        def failing_jobs(w, env):  # type: ignore[no-untyped-def]
            def fail(n: int) -> None:
                raise RuntimeError("a failing call")
            return {"inference": bench._Job(fail, lambda: None)}

        monkeypatch.setattr(bench.backends, "_torch_jobs", failing_jobs)
        counts.clear()
        with pytest.raises(RuntimeError, match="a failing call"):
            bench._JOB_BUILDERS["torch1"](w, {"threads": 2, "torch": torch})["inference"].run_n(1)
        assert counts == [1, 2] and torch.get_num_threads() == 2
    finally:
        real_set(saved)
