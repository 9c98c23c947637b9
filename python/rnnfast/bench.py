"""Benchmark: rnnfast against the NumPy reference and, when installed, PyTorch, ONNX Runtime and OpenVINO.

Run it as ``python -m rnnfast bench`` (``--help`` lists the options) or from Python::

    from rnnfast import bench
    results = bench.run(cases=["seed_1layer"], threads=2, quick=True)

What is timed, per case of the grid ``CASES``:

The grid runs for one cell kind (``cell``: ``rnn``, ``lstm`` or ``gru``; ``--cell`` on the command line): the
model is ``rnnfast.RNN``, ``LSTM`` or ``GRU`` (``RNNCell``, ``LSTMCell`` or ``GRUCell`` for the ``cell_step_*``
cases) against ``torch.nn``'s class of the same kind.

* ``inference``: ``rnn(x)`` (one cell call for the ``cell_step_*`` cases); PyTorch under
  ``torch.inference_mode()``; ONNX Runtime and OpenVINO run the model's ONNX graph (``rnnfast.onnx.to_onnx``,
  with T and B fixed to the case's: one ``RNN``, ``LSTM`` or ``GRU`` node per layer, the same weights).
* ``train``: one training step against a fixed random target with the mean squared error loss: forward keeping
  what backward needs, the loss gradient ``2 * (output - target) / output.size``, backpropagation through time.
  PyTorch's step is ``zero_grad``, forward, ``F.mse_loss``, ``backward``. (RNN cases only; no ONNX backends.)

Every backend loads the weights of one rnnfast model and is checked once per case against rnnfast's results
(outputs within 1e-3; training gradients within 1e-3 relative to their largest magnitude). A backend that does not
match is reported as a mismatch and not timed.

All backends use the same number of threads and run interleaved in one process: each repetition times every
backend in turn (round-robin, starting from a different backend each time), each timing (after a pause and one
untimed call) a loop of calls that lasts at least ``MIN_LOOP_SECONDS`` (``QUICK_MIN_LOOP_SECONDS`` with
``quick``); the reported time per call is the median over repetitions. The speedup of rnnfast over another backend
is ``other_time / rnnfast_time`` (above 1: rnnfast is faster).

The same run measures the machine's single-precision matrix product rate (NumPy ``float32`` 1024 x 1024 products
at the same thread count) and reports rnnfast's inference rate as a percentage of it, counting
``2 * T * B * G * H * (I_layer + H)`` floating-point operations per layer and direction (G gates: 1, 4 for the LSTM,
3 for the GRU). The ONNX backends time every kind, on full-length batches (not the ``ragged`` cases).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
import zlib
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

import rnnfast
from rnnfast import reference

__all__ = ["CASES", "BACKENDS", "Case", "format_table", "main", "run", "select_cases", "write_plot"]

# Target length of one timed loop of calls; a repetition of a slow backend is a single call.
MIN_LOOP_SECONDS = 0.02
QUICK_MIN_LOOP_SECONDS = 0.002
QUICK_MAX_REPEAT = 3
GEMM_SIZE = 1024
# Pause before each timed loop so that the thread pool of the backend timed before it has gone idle: OpenBLAS
# (under the NumPy reference) and OpenMP runtimes keep their workers spinning for a while after a call, and a
# spinning neighbour takes a core from whatever runs next. An untimed call follows the pause (see _bench_case).
_SETTLE_SECONDS = 0.3
_QUICK_SETTLE_SECONDS = 0.005
# Pause once after importing the backends, before anything is timed: on the development VM, kernels ran up to 2x
# slower for a second or two after `import torch` (no thread of the process busy: the system's own work after
# a large import), which hit whichever case came first.
_STARTUP_SETTLE_SECONDS = 2.0
# Output agreement needed before a backend is timed.
OUTPUT_TOLERANCE = 1e-3
GRAD_RELATIVE_TOLERANCE = 1e-3

MODES = ("inference", "train")
# Display order; "rnnfast" is always first and the baseline of every speedup.
BACKENDS = ("rnnfast", "torch", "onnxruntime", "openvino", "reference")
_OPTIONAL_BACKENDS = ("torch", "onnxruntime", "openvino")
_COLORS = {"torch": "tab:red", "onnxruntime": "tab:blue", "openvino": "tab:purple", "reference": "tab:gray"}
_SHORT_NAMES = {"rnnfast": "rnnfast", "torch": "torch", "onnxruntime": "ort", "openvino": "openvino",
                "reference": "numpy-ref"}


# ---------------------------------------------------------------------------------------------------------------------
# The grid
# ---------------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One benchmark configuration. ``cell`` cases time a single ``RNNCell`` step (``seq_len`` is 1)."""

    name: str
    seq_len: int          # T
    batch: int            # B
    input_size: int       # I
    hidden_size: int      # H
    num_layers: int = 1   # L
    bidirectional: bool = False
    cell: bool = False
    nonlinearity: str = "tanh"
    ragged: bool = False  # lengths drawn uniformly from 1..T (rnnfast's `lengths`, PyTorch's packed path)
    kind: str = "rnn"     # the cell kind: "rnn", "lstm" or "gru"

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def modes(self) -> Tuple[str, ...]:
        return ("inference",) if self.cell else MODES

    @property
    def flops(self) -> int:
        """Floating-point operations of one forward pass: ``2*T*B*G*H*(I_layer + H)`` per layer and direction."""
        total = 0
        gates = KIND_GATES[self.kind]
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else self.directions * self.hidden_size
            total += self.directions * 2 * self.seq_len * self.batch * gates * self.hidden_size * (
                layer_input + self.hidden_size)
        return total


#: The cell kinds and their gate counts.
KIND_GATES = {"rnn": 1, "lstm": 4, "gru": 3}
_RNNFAST_CLASSES = {"rnn": (rnnfast.RNN, rnnfast.RNNCell), "lstm": (rnnfast.LSTM, rnnfast.LSTMCell),
                    "gru": (rnnfast.GRU, rnnfast.GRUCell)}


def _cell_case(name: str, hidden: int) -> Case:
    return Case(name, seq_len=1, batch=1, input_size=hidden, hidden_size=hidden, cell=True)


#: The benchmark grid, by name, in the order it runs.
CASES: Dict[str, Case] = {c.name: c for c in [
    Case("seed_1layer", 10, 3, 100, 20, 1),
    Case("seed_4layer", 10, 3, 100, 20, 4),
    Case("stream_T1000_B1", 1000, 1, 32, 64, 1),
    Case("mid_T50_B16_H128", 50, 16, 64, 128, 1),
    Case("big_T100_B64_H256", 100, 64, 256, 256, 1),
    Case("big_T100_B64_H512", 100, 64, 512, 512, 1),
    Case("bidir2_T50_B32_H128", 50, 32, 128, 128, 2, bidirectional=True),
    # Variable lengths: the ragged batch against the same batch at full length.
    Case("ragged_T200_B64_H128", 200, 64, 128, 128, 1, ragged=True),
    Case("full_T200_B64_H128", 200, 64, 128, 128, 1),
    _cell_case("cell_step_H20", 20),
    _cell_case("cell_step_H128", 128),
]}


def select_cases(patterns: Optional[Sequence[str]] = None) -> List[Case]:
    """The cases named by ``patterns`` (exact names or substrings of names), in grid order; None means all."""
    if patterns is None:
        return list(CASES.values())
    if isinstance(patterns, str):
        patterns = [patterns]
    chosen = set()
    for pattern in patterns:
        matches = [pattern] if pattern in CASES else [name for name in CASES if pattern in name]
        if not matches:
            raise ValueError(f"cases: {pattern!r} matches no case; the cases are: {', '.join(CASES)}")
        chosen.update(matches)
    return [case for name, case in CASES.items() if name in chosen]


# ---------------------------------------------------------------------------------------------------------------------
# Optional packages and thread control
# ---------------------------------------------------------------------------------------------------------------------

def _import_optional(name: str) -> Tuple[Any, Optional[str]]:
    """(module, None), or (None, why it could not be imported)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(name), None
    except ModuleNotFoundError as exc:
        if exc.name == name.split(".")[0]:
            return None, "not installed"
        return None, f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # an install that fails to load
        return None, f"{type(exc).__name__}: {exc}"


class _BlasThreads:
    """Get and set the thread count of the OpenBLAS that NumPy uses (and the NumPy reference with it).

    Looks the library up among the shared objects loaded in this process; does nothing where there is none.
    """

    _SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads", "openblas_set_num_threads64_",
                "openblas_set_num_threads")
    _GETTERS = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads", "openblas_get_num_threads64_",
                "openblas_get_num_threads")

    def __init__(self) -> None:
        self._set: Optional[Callable[[int], None]] = None
        self._get: Optional[Callable[[], int]] = None
        for path in self._loaded_libraries():
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            setter = next((getattr(lib, s) for s in self._SETTERS if hasattr(lib, s)), None)
            getter = next((getattr(lib, g) for g in self._GETTERS if hasattr(lib, g)), None)
            if setter is not None and getter is not None:
                setter.argtypes, setter.restype = [ctypes.c_int], None
                getter.argtypes, getter.restype = [], ctypes.c_int
                self._set, self._get = setter, getter
                break

    @staticmethod
    def _loaded_libraries() -> List[str]:
        try:
            with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
                paths = {line.split(None, 5)[-1].strip() for line in maps if "openblas" in line.lower()}
        except OSError:
            return []
        return sorted(p for p in paths if p.startswith("/"))

    @property
    def available(self) -> bool:
        return self._set is not None

    def get(self) -> Optional[int]:
        return int(self._get()) if self._get is not None else None

    def set(self, n: Optional[int]) -> None:
        if self._set is not None and n is not None:
            self._set(int(n))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model", "Hardware"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _machine_info(blas: _BlasThreads) -> Dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    info: Dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy_blas_thread_control": blas.available,
    }
    try:
        blas_config = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["numpy_blas"] = f"{blas_config.get('name', '?')} {blas_config.get('version', '')}".strip()
    except Exception:  # older NumPy without the dict mode
        info["numpy_blas"] = "unknown"
    return info


# ---------------------------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------------------------

def _time_loop(run_n: Callable[[int], None], calls: int) -> float:
    """Seconds taken by ``run_n(calls)``, with the garbage collector paused as it runs."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        run_n(calls)
        return time.perf_counter() - start
    finally:
        if gc_was_enabled:
            gc.enable()


def _calibrate(run_n: Callable[[int], None], min_seconds: float) -> int:
    """How many calls make a loop last at least ``min_seconds`` (1 for a backend slower than that)."""
    calls = 1
    for _ in range(12):
        elapsed = _time_loop(run_n, calls)
        if elapsed >= min_seconds:
            return calls
        grow = min_seconds * 1.2 / max(elapsed, 1e-7)
        calls = max(calls + 1, min(int(math.ceil(calls * grow)), calls * 100))
    return calls


def _measure_gemm(threads_note: Optional[int], repeat: int, min_seconds: float) -> Dict[str, Any]:
    rng = np.random.default_rng(1234)
    a = rng.standard_normal((GEMM_SIZE, GEMM_SIZE), dtype=np.float32)
    b = rng.standard_normal((GEMM_SIZE, GEMM_SIZE), dtype=np.float32)
    out = np.empty((GEMM_SIZE, GEMM_SIZE), dtype=np.float32)

    def run_n(n: int) -> None:
        for _ in range(n):
            np.matmul(a, b, out=out)

    run_n(1)
    calls = _calibrate(run_n, min_seconds)
    samples = [_time_loop(run_n, calls) / calls for _ in range(max(repeat, 1))]
    seconds = statistics.median(samples)
    flops = 2 * GEMM_SIZE ** 3
    return {"size": GEMM_SIZE, "dtype": "float32", "median_s": seconds, "gflops": flops / seconds / 1e9,
            "blas_threads": threads_note}


# ---------------------------------------------------------------------------------------------------------------------
# Workloads and backends
# ---------------------------------------------------------------------------------------------------------------------

@dataclass
class _Workload:
    case: Case
    model: Any                      # rnnfast.RNN or rnnfast.RNNCell
    x: np.ndarray                   # [T, B, I], or [B, I] for a cell
    h: Optional[np.ndarray]         # the cell's input state; None for RNN cases
    target: Optional[np.ndarray]    # the training target, output's shape; None for cells
    lengths: Optional[np.ndarray] = None  # [B] for ragged cases


@dataclass
class _Job:
    """One backend in one mode: ``run_n(n)`` makes n calls; ``probe()`` gives what is compared with rnnfast
    (outputs for inference, gradients by parameter name for training)."""

    run_n: Callable[[int], None]
    probe: Callable[[], Any]


class _Skip(Exception):
    """This backend does not apply to this case."""


def _make_workload(case: Case) -> _Workload:
    seed = zlib.crc32(case.name.encode())
    rng = np.random.default_rng(seed)
    stack_class, cell_class = _RNNFAST_CLASSES[case.kind]
    extra: Dict[str, Any] = {"nonlinearity": case.nonlinearity} if case.kind == "rnn" else {}
    if case.cell:
        model = cell_class(case.input_size, case.hidden_size, seed=seed, **extra)
        x = rng.standard_normal((case.batch, case.input_size), dtype=np.float32)
        h = rng.standard_normal((case.batch, case.hidden_size), dtype=np.float32)
        # An LSTM cell's state is the pair (h, c): c starts as another draw.
        state = (h, rng.standard_normal(h.shape, dtype=np.float32)) if case.kind == "lstm" else h
        return _Workload(case, model, x, state, None)
    model = stack_class(case.input_size, case.hidden_size, num_layers=case.num_layers,
                        bidirectional=case.bidirectional, seed=seed, **extra)
    x = rng.standard_normal((case.seq_len, case.batch, case.input_size), dtype=np.float32)
    target = rng.standard_normal((case.seq_len, case.batch, case.directions * case.hidden_size), dtype=np.float32)
    lengths = rng.integers(1, case.seq_len + 1, size=case.batch) if case.ragged else None
    return _Workload(case, model, x, None, target, lengths)


def _mse_grad(out: np.ndarray, target: np.ndarray) -> Tuple[float, np.ndarray]:
    """The mean squared error and its gradient with respect to ``out`` (one new array, scaled in place)."""
    diff = out - target
    loss = float(np.vdot(diff, diff)) / diff.size
    diff *= out.dtype.type(2.0 / diff.size)
    return loss, diff


def _rnnfast_jobs(w: _Workload, env: Dict[str, Any]) -> Dict[str, _Job]:
    model, x = w.model, w.x
    if w.case.cell:
        h = w.h

        def cell_n(n: int) -> None:
            for _ in range(n):
                model(x, h)

        def cell_probe() -> Tuple[np.ndarray, ...]:
            h_new = model(x, h)
            return tuple(h_new) if isinstance(h_new, tuple) else (h_new,)

        return {"inference": _Job(cell_n, cell_probe)}

    target, lengths = w.target, w.lengths

    def infer_n(n: int) -> None:
        for _ in range(n):
            model(x, lengths=lengths)

    def infer_probe() -> Tuple[np.ndarray, ...]:
        out, state = model(x, lengths=lengths)
        return (out, *state) if isinstance(state, tuple) else (out, state)

    def step() -> None:
        model.zero_grad()
        out, _, cache = model.forward(x, lengths=lengths, return_cache=True)
        _, grad = _mse_grad(out, target)
        model.backward(cache, grad, input_grad=False)  # x is data: no gradient, as in PyTorch's step

    def train_n(n: int) -> None:
        for _ in range(n):
            step()

    def train_probe() -> Dict[str, np.ndarray]:
        step()
        return {name: g.copy() for name, g in model.grads.items()}

    return {"inference": _Job(infer_n, infer_probe), "train": _Job(train_n, train_probe)}


def _reference_jobs(w: _Workload, env: Dict[str, Any]) -> Dict[str, _Job]:
    params = w.model.state_dict()
    case, x = w.case, w.x
    if case.cell:
        h = w.h
        if case.kind == "rnn":
            def cell() -> Tuple[np.ndarray, ...]:
                return (reference.cell_forward(x, h, params, nonlinearity=case.nonlinearity)[0],)
        elif case.kind == "lstm":
            def cell() -> Tuple[np.ndarray, ...]:
                return tuple(reference.lstm_cell_forward(x, h, params)[0])
        else:
            def cell() -> Tuple[np.ndarray, ...]:
                return (reference.gru_cell_forward(x, h, params)[0],)

        def cell_n(n: int) -> None:
            for _ in range(n):
                cell()

        return {"inference": _Job(cell_n, cell)}

    kwargs: Dict[str, Any] = dict(num_layers=case.num_layers, bias=True, bidirectional=case.bidirectional,
                                  lengths=w.lengths)
    kinds: Dict[str, Any] = {"rnn": (reference.rnn_forward, reference.rnn_backward),
                             "lstm": (reference.lstm_forward, reference.lstm_backward),
                             "gru": (reference.gru_forward, reference.gru_backward)}
    forward, backward = kinds[case.kind]
    if case.kind == "rnn":
        kwargs["nonlinearity"] = case.nonlinearity
    target = w.target

    def infer() -> Tuple[np.ndarray, ...]:
        out, state, _ = forward(x, params, **kwargs)
        return (out, *state) if isinstance(state, tuple) else (out, state)

    def infer_n(n: int) -> None:
        for _ in range(n):
            infer()

    def step() -> Dict[str, np.ndarray]:
        out, _, cache = forward(x, params, **kwargs)
        _, grad = _mse_grad(out, target)
        grads: Dict[str, np.ndarray] = backward(cache, grad)[2]
        return grads

    def train_n(n: int) -> None:
        for _ in range(n):
            step()

    return {"inference": _Job(infer_n, infer), "train": _Job(train_n, step)}


def _torch_jobs(w: _Workload, env: Dict[str, Any]) -> Dict[str, _Job]:
    torch = env["torch"]
    case = w.case
    state = {name: torch.from_numpy(value) for name, value in w.model.state_dict().items()}
    x = torch.from_numpy(w.x)
    extra: Dict[str, Any] = {"nonlinearity": case.nonlinearity} if case.kind == "rnn" else {}
    stack_class, cell_class = {"rnn": (torch.nn.RNN, torch.nn.RNNCell), "lstm": (torch.nn.LSTM, torch.nn.LSTMCell),
                               "gru": (torch.nn.GRU, torch.nn.GRUCell)}[case.kind]
    if case.cell:
        cell = cell_class(case.input_size, case.hidden_size, **extra)
        cell.load_state_dict(state)
        h = tuple(torch.from_numpy(a) for a in w.h) if isinstance(w.h, tuple) else torch.from_numpy(w.h)

        def cell_n(n: int) -> None:
            with torch.inference_mode():
                for _ in range(n):
                    cell(x, h)

        def cell_probe() -> Tuple[np.ndarray, ...]:
            with torch.inference_mode():
                h_new = cell(x, h)
                return tuple(t.numpy().copy() for t in (h_new if isinstance(h_new, tuple) else (h_new,)))

        return {"inference": _Job(cell_n, cell_probe)}

    functional = importlib.import_module("torch.nn.functional")
    rnn = stack_class(case.input_size, case.hidden_size, num_layers=case.num_layers,
                      bidirectional=case.bidirectional, **extra)
    rnn.load_state_dict(state)
    target = torch.from_numpy(w.target)
    utils = importlib.import_module("torch.nn.utils.rnn")
    lengths = None if w.lengths is None else torch.from_numpy(w.lengths)

    def run(inputs: Any) -> Tuple[Any, Any]:
        if lengths is None:
            return rnn(inputs)  # type: ignore[no-any-return]
        # PyTorch's path for a ragged batch: pack, run, pad back to T.
        packed = utils.pack_padded_sequence(inputs, lengths, enforce_sorted=False)
        out, h_n = rnn(packed)
        return utils.pad_packed_sequence(out, total_length=case.seq_len)[0], h_n

    def infer_n(n: int) -> None:
        with torch.inference_mode():
            for _ in range(n):
                run(x)

    def infer_probe() -> Tuple[np.ndarray, ...]:
        with torch.inference_mode():
            out, state = run(x)
            states = state if isinstance(state, tuple) else (state,)
            return (out.numpy().copy(), *(t.numpy().copy() for t in states))

    def step() -> None:
        rnn.zero_grad(set_to_none=False)  # kept and zeroed, as rnnfast's are: the same memory in both
        out, _ = run(x)
        functional.mse_loss(out, target).backward()

    def train_n(n: int) -> None:
        for _ in range(n):
            step()

    def train_probe() -> Dict[str, np.ndarray]:
        step()
        return {name: p.grad.numpy().copy() for name, p in rnn.named_parameters()}

    return {"inference": _Job(infer_n, infer_probe), "train": _Job(train_n, train_probe)}


def _onnx_model_for(w: _Workload, env: Dict[str, Any]) -> Any:
    """The ONNX graph of the case's model (``rnnfast.onnx.to_onnx``), its T and B fixed to the case's."""
    if w.case.cell:
        raise _Skip("RNN, LSTM and GRU cases only")
    if w.case.ragged:
        raise _Skip("full-length batches only (the graph has no lengths input)")
    from rnnfast import onnx as rnnfast_onnx

    return rnnfast_onnx.to_onnx(w.model, seq_len=w.case.seq_len, batch=w.case.batch)


def _onnx_output_names(w: _Workload) -> List[str]:
    """The graph's outputs, in the order rnnfast's probe returns them."""
    return ["output", "h_n", "c_n"] if w.case.kind == "lstm" else ["output", "h_n"]


def _onnxruntime_jobs(w: _Workload, env: Dict[str, Any]) -> Dict[str, _Job]:
    ort = env["onnxruntime"]
    model = _onnx_model_for(w, env)
    options = ort.SessionOptions()
    options.intra_op_num_threads = env["threads"]
    options.inter_op_num_threads = 1
    # Spinning worker threads would keep burning the cores after each call and slow whichever backend runs next
    # in the interleaved loop; without spinning each backend gets the machine to itself.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {"input": w.x}
    names = _onnx_output_names(w)

    def infer_n(n: int) -> None:
        for _ in range(n):
            session.run(names, feeds)

    return {"inference": _Job(infer_n, lambda: tuple(session.run(names, feeds)))}


def _openvino_jobs(w: _Workload, env: Dict[str, Any]) -> Dict[str, _Job]:
    ov = env["openvino"]
    model = _onnx_model_for(w, env)
    core = env.get("openvino_core")
    if core is None:
        core = env["openvino_core"] = ov.Core()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{w.case.name}.onnx")
        with open(path, "wb") as f:
            f.write(model.SerializeToString())
        ov_model = core.read_model(path)
    config = {"INFERENCE_NUM_THREADS": int(env["threads"]), "INFERENCE_PRECISION_HINT": "f32",
              "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
    compiled = core.compile_model(ov_model, "CPU", config)
    request = compiled.create_infer_request()
    feeds = {0: w.x}
    ports = [compiled.output(name) for name in _onnx_output_names(w)]

    def infer_n(n: int) -> None:
        for _ in range(n):
            request.infer(feeds, share_inputs=True)

    def probe() -> Tuple[np.ndarray, ...]:
        result = request.infer(feeds, share_inputs=True)
        return tuple(np.array(result[port]) for port in ports)

    return {"inference": _Job(infer_n, probe)}


_JOB_BUILDERS: Dict[str, Callable[[_Workload, Dict[str, Any]], Dict[str, _Job]]] = {
    "rnnfast": _rnnfast_jobs,
    "torch": _torch_jobs,
    "onnxruntime": _onnxruntime_jobs,
    "openvino": _openvino_jobs,
    "reference": _reference_jobs,
}


def _output_mismatch(got: Any, expected: Tuple[np.ndarray, ...]) -> Optional[str]:
    got = tuple(got)
    if len(got) != len(expected):
        return f"expected {len(expected)} outputs, got {len(got)}"
    worst = 0.0
    for g, e in zip(got, expected):
        g = np.asarray(g)
        if g.shape != e.shape:
            return f"output shape {g.shape}, expected {e.shape}"
        worst = max(worst, float(np.max(np.abs(g.astype(np.float64) - e))) if e.size else 0.0)
    if not worst <= OUTPUT_TOLERANCE:  # also catches NaN
        return f"max abs difference from rnnfast {worst:.3g} > {OUTPUT_TOLERANCE:g}"
    return None


def _grad_mismatch(got: Dict[str, np.ndarray], expected: Dict[str, np.ndarray]) -> Optional[str]:
    if set(got) != set(expected):
        return f"gradient names {sorted(got)}, expected {sorted(expected)}"
    for name, e in expected.items():
        g = np.asarray(got[name], dtype=np.float64)
        if g.shape != e.shape:
            return f"gradient {name}: shape {g.shape}, expected {e.shape}"
        scale = float(np.max(np.abs(e))) if e.size else 0.0
        worst = float(np.max(np.abs(g - e))) if e.size else 0.0
        if not worst <= GRAD_RELATIVE_TOLERANCE * scale + 1e-7:
            return (f"gradient {name}: max abs difference from rnnfast {worst:.3g} "
                    f"> {GRAD_RELATIVE_TOLERANCE:g} x {scale:.3g}")
    return None


# ---------------------------------------------------------------------------------------------------------------------
# Running the grid
# ---------------------------------------------------------------------------------------------------------------------

def _bench_case(case: Case, backends: Sequence[str], env: Dict[str, Any], repeat: int, min_seconds: float,
                settle: float) -> Dict[str, Any]:
    w = _make_workload(case)
    jobs: Dict[str, Dict[str, _Job]] = {}
    skipped: Dict[str, Dict[str, str]] = {mode: {} for mode in case.modes}
    expected: Dict[str, Any] = {}
    for backend in backends:
        try:
            built = _JOB_BUILDERS[backend](w, env)
        except _Skip:
            continue
        except Exception as exc:  # a backend that fails on this case is reported, not fatal
            if backend == "rnnfast":
                raise
            for mode in case.modes:
                skipped[mode][backend] = f"error: {type(exc).__name__}: {exc}"
            continue
        for mode, job in built.items():
            try:
                probed = job.probe()
                if backend == "rnnfast":
                    expected[mode] = tuple(probed) if mode == "inference" else probed
                    problem = None
                elif mode == "inference":
                    problem = _output_mismatch(probed, expected[mode])
                else:
                    problem = _grad_mismatch(probed, expected[mode])
            except Exception as exc:
                if backend == "rnnfast":
                    raise
                problem = f"error: {type(exc).__name__}: {exc}"
            if problem is not None:
                skipped[mode][backend] = f"mismatch: {problem}" if not problem.startswith("error") else problem
            else:
                jobs.setdefault(mode, {})[backend] = job

    result: Dict[str, Any] = {**asdict(case), "flops": case.flops, "modes": {}}
    for mode in case.modes:
        mode_jobs = jobs.get(mode, {})
        names = list(mode_jobs)
        calls = {name: _calibrate(mode_jobs[name].run_n, min_seconds) for name in names}
        samples: Dict[str, List[float]] = {name: [] for name in names}
        for rep in range(repeat):
            order = names[rep % len(names):] + names[:rep % len(names)]
            for name in order:
                if settle > 0:
                    time.sleep(settle)
                    # One untimed call after the pause: the first call after an idle spell waits for the system to
                    # wake the threads and cores it runs on (up to several ms on the development VM).
                    mode_jobs[name].run_n(1)
                samples[name].append(_time_loop(mode_jobs[name].run_n, calls[name]) / calls[name])
        median = {name: statistics.median(samples[name]) for name in names}
        base = median["rnnfast"]
        result["modes"][mode] = {
            "median_s": median,
            "speedup": {name: median[name] / base for name in names if name != "rnnfast"},
            "samples_s": samples,
            "calls_per_sample": calls,
            "skipped": skipped[mode],
        }
    return result


# Training-step peak memory: each backend in a fresh process (a process's allocator keeps memory that earlier work
# freed, so in one process the later backend would look smaller). Allocations of 64 KiB and more are mapped and
# unmapped directly (MALLOC_MMAP_THRESHOLD_), so what a step frees leaves the resident set at once.
_MEMORY_BACKENDS = ("rnnfast", "torch")
_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def _resident_bytes(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field}")


def _memory_child(case_name: str, backend: str, threads: int, kind: str = "rnn") -> None:
    """Run in a fresh process: two warm-up training steps, then one measured; print the peak resident memory
    above the resident memory at its start, in bytes, as JSON."""
    case = replace(CASES[case_name], kind=kind)
    env: Dict[str, Any] = {"threads": threads}
    rnnfast.set_num_threads(threads)
    if backend == "torch":
        env["torch"] = importlib.import_module("torch")
        env["torch"].set_num_threads(threads)
    job = _JOB_BUILDERS[backend](_make_workload(case), env)["train"]
    job.run_n(2)
    gc.collect()
    ctypes.CDLL(None).malloc_trim(0)
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # resets the peak (VmHWM) to the current resident set
    start = _resident_bytes("VmRSS")
    job.run_n(1)
    print(json.dumps({"peak_bytes": _resident_bytes("VmHWM") - start}))


def measure_train_memory(case: Union[str, Case], backend: str, threads: int = 2) -> Optional[int]:
    """Peak resident memory, in bytes, that one training step of ``case`` adds on top of what the process held
    when the step started (model, inputs and gradient buffers), measured in a fresh process; None where it cannot
    be measured (not Linux, or ``backend``'s package missing)."""
    name = case.name if isinstance(case, Case) else case
    kind = case.kind if isinstance(case, Case) else "rnn"
    if name not in CASES or CASES[name].cell:
        raise ValueError(f"case: expected the name of a sequence case in CASES, got {name!r}")
    if backend not in _MEMORY_BACKENDS:
        raise ValueError(f"backend: expected one of {list(_MEMORY_BACKENDS)}, got {backend!r}")
    if not sys.platform.startswith("linux"):
        return None
    code = (f"from rnnfast.bench import _memory_child; "
            f"_memory_child({name!r}, {backend!r}, {int(threads)}, {kind!r})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **_MEMORY_ENV}, timeout=600)
    if proc.returncode != 0:
        return None
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"])


def run(cases: Optional[Sequence[str]] = None, threads: int = 2, repeat: int = 5, quick: bool = False,
        reference: bool = True, backends: Optional[Sequence[str]] = None,
        progress: Optional[Callable[[str], None]] = None, memory: bool = False, cell: str = "rnn"
        ) -> Dict[str, Any]:
    """Run the benchmark and return its results (the dict that ``--json`` writes).

    Parameters
    ----------
    cases : names or substrings of names in ``CASES``; None runs the whole grid
    threads : threads for every backend (and for NumPy's BLAS, where it can be set)
    repeat : repetitions; each backend's time is the median over them
    quick : fewer (at most 3) and shorter (``QUICK_MIN_LOOP_SECONDS``) repetitions, for tests and smoke runs
    reference : also time the NumPy reference (slow on the big cases)
    backends : the optional backends to try, among "torch", "onnxruntime", "openvino"; None tries all of them
    progress : called with a line of text as each case starts
    memory : also measure each training case's peak memory per step, rnnfast's and PyTorch's (when it runs),
        with ``measure_train_memory``
    cell : the cell kind of every case: "rnn", "lstm" or "gru"

    Results: ``{"cases": {name: {..., "flops", "modes": {"inference"|"train": {"median_s": {backend: seconds per
    call}, "speedup": {backend: backend_time / rnnfast_time}, "samples_s", "calls_per_sample", "skipped":
    {backend: why}}}}}, "gemm": {...}, "backends": {...}, "machine": {...}, "versions": {...}, "threads", ...}``;
    inference also has ``"rnnfast_gflops"`` and ``"percent_of_gemm"``; with ``memory``, training cases have
    ``"train_peak_bytes": {backend: bytes or None}``.
    """
    if cell not in KIND_GATES:
        raise ValueError(f"cell: expected one of {', '.join(map(repr, KIND_GATES))}, got {cell!r}")
    selected = [replace(case, kind=cell) for case in select_cases(cases)]
    threads = rnnfast._checks.positive_int("threads", threads)
    repeat = rnnfast._checks.positive_int("repeat", repeat)
    if quick:
        repeat = min(repeat, QUICK_MAX_REPEAT)
    min_seconds = QUICK_MIN_LOOP_SECONDS if quick else MIN_LOOP_SECONDS
    settle = _QUICK_SETTLE_SECONDS if quick else _SETTLE_SECONDS
    wanted = list(_OPTIONAL_BACKENDS) if backends is None else list(backends)
    unknown = [b for b in wanted if b not in _OPTIONAL_BACKENDS]
    if unknown:
        raise ValueError(f"backends: unknown {unknown}; expected some of {list(_OPTIONAL_BACKENDS)}")

    versions: Dict[str, Optional[str]] = {"rnnfast": rnnfast.__version__, "numpy": np.__version__,
                                          "python": platform.python_version()}
    backend_info: Dict[str, Dict[str, Any]] = {"rnnfast": {"available": True}}
    env: Dict[str, Any] = {"threads": threads}
    active = ["rnnfast"]
    needs = {"torch": ("torch",), "onnxruntime": ("onnx", "onnxruntime"), "openvino": ("onnx", "openvino")}
    for backend in _OPTIONAL_BACKENDS:
        if backend not in wanted:
            backend_info[backend] = {"available": False, "reason": "not requested"}
            continue
        reasons = []
        for module_name in needs[backend]:
            if module_name not in env:
                module, reason = _import_optional(module_name)
                env[module_name] = module
                versions[module_name] = getattr(module, "__version__", None) if module is not None else None
                if reason is not None:
                    env[f"{module_name}_error"] = reason
            if env[module_name] is None:
                reasons.append(f"{module_name}: {env[f'{module_name}_error']}")
        backend_info[backend] = {"available": not reasons}
        if reasons:
            backend_info[backend]["reason"] = "; ".join(reasons)
        else:
            active.append(backend)
    if reference:
        active.append("reference")
        backend_info["reference"] = {"available": True}
    else:
        backend_info["reference"] = {"available": False, "reason": "not requested"}
    if env.get("onnxruntime") is not None:
        env["onnxruntime"].set_default_logger_severity(3)

    blas = _BlasThreads()
    saved = {"rnnfast": rnnfast.get_num_threads(), "blas": blas.get(),
             "torch": env["torch"].get_num_threads() if env.get("torch") is not None else None}
    try:
        rnnfast.set_num_threads(threads)
        blas.set(threads)
        if env.get("torch") is not None:
            env["torch"].set_num_threads(threads)
        if not quick:
            time.sleep(_STARTUP_SETTLE_SECONDS)
        if progress:
            progress(f"GEMM rate: NumPy float32 {GEMM_SIZE}x{GEMM_SIZE} products, {threads} thread(s)")
        gemm = _measure_gemm(blas.get(), repeat, min_seconds)
        results_cases: Dict[str, Any] = {}
        for index, case in enumerate(selected, 1):
            if progress:
                progress(f"[{index}/{len(selected)}] {case.name}")
            result = _bench_case(case, active, env, repeat, min_seconds, settle)
            inference = result["modes"]["inference"]
            gflops = case.flops / inference["median_s"]["rnnfast"] / 1e9
            inference["rnnfast_gflops"] = gflops
            inference["percent_of_gemm"] = 100.0 * gflops / gemm["gflops"]
            if memory and "train" in case.modes:
                result["train_peak_bytes"] = {backend: measure_train_memory(case, backend, threads)
                                              for backend in _MEMORY_BACKENDS if backend in active}
            results_cases[case.name] = result
    finally:
        rnnfast.set_num_threads(saved["rnnfast"])
        blas.set(saved["blas"])
        if saved["torch"] is not None:
            env["torch"].set_num_threads(saved["torch"])

    return {
        "schema": 1,
        "cell": cell,
        "threads": threads,
        "repeat": repeat,
        "quick": bool(quick),
        "min_loop_s": min_seconds,
        "machine": _machine_info(blas),
        "versions": versions,
        "backends": backend_info,
        "gemm": gemm,
        "cases": results_cases,
    }


# ---------------------------------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------------------------------

def _fmt_ms(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    if ms < 0.1:
        return f"{ms:.4f}"
    if ms < 10:
        return f"{ms:.3f}"
    if ms < 1000:
        return f"{ms:.1f}"
    return f"{ms:.0f}"


def _backends_in(results: Dict[str, Any]) -> List[str]:
    seen = set()
    for case in results["cases"].values():
        for mode in case["modes"].values():
            seen.update(mode["median_s"])
            seen.update(mode["skipped"])
    return [b for b in BACKENDS if b in seen]


def format_table(results: Dict[str, Any]) -> str:
    """The results as a plain-text table (times in milliseconds per call)."""
    backends = _backends_in(results)
    others = [b for b in backends if b != "rnnfast"]
    header = (["case", "mode"] + [f"{_SHORT_NAMES[b]} ms" for b in backends]
              + [f"vs {_SHORT_NAMES[b]}" for b in others] + ["GFLOP/s", "% GEMM"])
    rows, notes = [], []
    for name, case in results["cases"].items():
        for mode, m in case["modes"].items():
            row = [name, mode]
            for b in backends:
                if b in m["median_s"]:
                    row.append(_fmt_ms(m["median_s"][b]))
                elif b in m["skipped"]:
                    row.append("mismatch" if m["skipped"][b].startswith("mismatch") else "error")
                    notes.append(f"{name} {mode} {b}: {m['skipped'][b]}")
                else:
                    row.append("-")
            row += [f"{m['speedup'][b]:.2f}x" if b in m["speedup"] else "-" for b in others]
            if "rnnfast_gflops" in m:
                row += [f"{m['rnnfast_gflops']:.2f}", f"{m['percent_of_gemm']:.1f}"]
            else:
                row += ["", ""]
            rows.append(row)
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(wd) if i < 2 else c.rjust(wd) for i, (c, wd) in enumerate(zip(cells, widths)))

    machine, gemm = results["machine"], results["gemm"]
    out = [
        f"rnnfast {results['versions']['rnnfast']} benchmark ({results.get('cell', 'rnn')} cells): "
        f"{machine['cpu_model']}, {results['threads']} thread(s), "
        f"median of {results['repeat']} repetition(s){' (quick)' if results['quick'] else ''}",
        f"GEMM rate (NumPy float32 {gemm['size']}x{gemm['size']}): {gemm['gflops']:.1f} GFLOP/s",
        "",
        line(header),
        line(["-" * wd for wd in widths]),
    ]
    out += [line(r) for r in rows]
    out += ["",
            "vs X = X's time / rnnfast's time (above 1: rnnfast is faster). GFLOP/s and % GEMM: rnnfast inference."]
    peaks = {name: case["train_peak_bytes"] for name, case in results["cases"].items() if "train_peak_bytes" in case}
    if peaks:
        out += ["", "Training-step peak memory (MiB above the step's start, each backend in a fresh process):"]
        for name, peak in peaks.items():
            cells = [f"{b} {peak[b] / 2**20:.1f}" if peak[b] is not None else f"{b} -" for b in peak]
            if (peak.get("rnnfast") or 0) >= 2**20 and (peak.get("torch") or 0) >= 2**20:  # ratios of noise below
                cells.append(f"torch / rnnfast {peak['torch'] / peak['rnnfast']:.2f}x")
            out.append(f"  {name}: " + ", ".join(cells))
    missing = [f"{b} ({info['reason']})" for b, info in results["backends"].items()
               if not info["available"] and info.get("reason") != "not requested"]
    if missing:
        out.append("Not run: " + "; ".join(missing))
    out += notes
    return "\n".join(out)


def write_plot(results: Dict[str, Any], path: str) -> None:
    """A PNG bar chart of rnnfast's speedup over each other backend, per case (one panel per mode). Needs
    matplotlib (ImportError otherwise)."""
    figure_module = importlib.import_module("matplotlib.figure")
    backends = [b for b in _backends_in(results) if b != "rnnfast"]
    modes = [mode for mode in MODES if any(mode in c["modes"] for c in results["cases"].values())]
    fig = figure_module.Figure(figsize=(max(6.0, 1.1 * len(results["cases"]) + 2), 3.6 * len(modes)))
    axes = fig.subplots(len(modes), 1, squeeze=False)[:, 0]
    width = 0.8 / max(len(backends), 1)
    for ax, mode in zip(axes, modes):
        names = [n for n, c in results["cases"].items() if mode in c["modes"]]
        for k, backend in enumerate(backends):
            xs, ys = [], []
            for i, name in enumerate(names):
                speedup = results["cases"][name]["modes"][mode]["speedup"].get(backend)
                if speedup is not None:
                    xs.append(i + (k - (len(backends) - 1) / 2) * width)
                    ys.append(speedup)
            if xs:
                ax.bar(xs, ys, width=width, label=f"vs {backend}", color=_COLORS.get(backend))
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=25, ha="right", fontsize=8)
        ax.set_ylabel("speedup (other / rnnfast)")
        ax.set_title(f"{mode}, {results['threads']} thread(s)")
        ax.legend(fontsize=8)
    fig.suptitle(f"rnnfast speedups on {results['machine']['cpu_model']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------

def _split_list(values: Optional[Sequence[str]]) -> Optional[List[str]]:
    if values is None:
        return None
    return [item for value in values for item in value.split(",") if item]


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m rnnfast bench",
        description="Time rnnfast's inference and training step against the NumPy reference and, when installed, "
                    "PyTorch, ONNX Runtime and OpenVINO, at one thread count.",
        epilog="cases: " + ", ".join(CASES))
    parser.add_argument("--cases", nargs="+", metavar="NAME",
                        help="case names or substrings of names (comma- or space-separated; default: all)")
    parser.add_argument("--threads", type=rnnfast._checks.cli_int(1), default=2,
                        help="threads for every backend (default 2)")
    parser.add_argument("--repeat", type=rnnfast._checks.cli_int(1), default=5,
                        help="repetitions; times are their median (default 5; at most 3 with --quick)")
    parser.add_argument("--quick", action="store_true", help="fewer and shorter repetitions (smoke runs, tests)")
    parser.add_argument("--backends", nargs="+", metavar="NAME",
                        help=f"optional backends to try, among {', '.join(_OPTIONAL_BACKENDS)} (default: all)")
    parser.add_argument("--no-reference", dest="reference", action="store_false",
                        help="skip the (slow) NumPy reference")
    parser.add_argument("--cell", choices=tuple(KIND_GATES), default="rnn",
                        help="the cell kind of every case: rnnfast.RNN, LSTM or GRU against torch.nn's (default rnn)")
    parser.add_argument("--memory", action="store_true",
                        help="also measure the training step's peak memory, rnnfast's and PyTorch's (Linux)")
    parser.add_argument("--json", metavar="FILE", help="write all results to FILE as JSON")
    parser.add_argument("--plot", metavar="FILE", help="write a PNG bar chart of the speedups (needs matplotlib)")
    return parser


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    """``python -m rnnfast bench``: run the benchmark, print the table, write the JSON / plot asked for."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        cases = select_cases(_split_list(args.cases))
        backends = _split_list(args.backends)
        if backends is not None:
            unknown = [b for b in backends if b not in _OPTIONAL_BACKENDS]
            if unknown:
                raise ValueError(f"--backends: unknown {unknown}; expected some of {list(_OPTIONAL_BACKENDS)}")
    except ValueError as exc:
        parser.error(str(exc))
    plot = args.plot
    if plot is not None and _import_optional("matplotlib")[0] is None:
        print(f"--plot: matplotlib is not installed, so no plot will be written to {plot} "
              f"(pip install matplotlib)", file=sys.stderr)
        plot = None

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    results = run(cases=[c.name for c in cases], threads=args.threads, repeat=args.repeat, quick=args.quick,
                  reference=args.reference, backends=backends, progress=progress, memory=args.memory,
                  cell=args.cell)
    print(format_table(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
        print(f"results written to {args.json}", file=sys.stderr)
    if plot is not None:
        write_plot(results, plot)
        print(f"plot written to {plot}", file=sys.stderr)
    return 0
