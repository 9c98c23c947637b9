"""The backends: one job builder each, and ``BACKEND_TABLE``, one row per backend saying what it needs and where
it runs. A new backend is one builder and one row.

A builder takes a case's ``_Workload`` (the rnnfast model every backend copies its weights from, the input, the
state or target) and the run's ``env`` (``threads`` and the imported optional packages) and returns a ``_Job`` per
mode it runs: ``run_n(n)`` makes n calls, ``probe()`` returns what is compared with rnnfast's (outputs for
inference, gradients by parameter name for training). It raises ``_Skip`` where the case does not apply to it.
"""

from __future__ import annotations

import importlib
import os
import tempfile
import warnings
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

import rnnfast

from .cases import DTYPES, Case

# The NumPy reference is plain untyped NumPy: it is used as a module object, so that mypy --strict on this package
# checks the benchmark and not the reference.
reference = importlib.import_module("rnnfast.reference")

# Output agreement needed before a backend is timed, per dtype: outputs within OUTPUT_TOLERANCE of rnnfast's,
# training gradients within GRAD_RELATIVE_TOLERANCE of their largest magnitude (plus a floor for all-zero ones).
# float64's is tight enough to catch a backend that computes in float32.
OUTPUT_TOLERANCE = 1e-3
GRAD_RELATIVE_TOLERANCE = 1e-3
_TOLERANCES: Dict[str, Tuple[float, float, float]] = {
    "float32": (OUTPUT_TOLERANCE, GRAD_RELATIVE_TOLERANCE, 1e-7),
    "float64": (1e-8, 1e-8, 1e-12),
}

_RNNFAST_CLASSES = {"rnn": (rnnfast.RNN, rnnfast.RNNCell), "lstm": (rnnfast.LSTM, rnnfast.LSTMCell),
                    "gru": (rnnfast.GRU, rnnfast.GRUCell)}


@dataclass
class _Workload:
    case: Case
    model: Any                      # rnnfast.RNN / LSTM / GRU, or a cell
    x: np.ndarray                   # [T, B, I], or [B, I] for a cell
    h: Any                          # the cell's input state (an LSTM cell's: the pair (h, c)); None for stacks
    target: Optional[np.ndarray]    # the training target, output's shape; None for cells
    lengths: Optional[np.ndarray] = None  # [B] for ragged cases


@dataclass
class _Job:
    """One backend in one mode: ``run_n(n)`` makes n calls; ``probe()`` gives what is compared with rnnfast
    (outputs for inference, gradients by parameter name for training); ``kept_bytes()``, the memory a call keeps
    for the next one to use (``--memory`` counts it as the next call's)."""

    run_n: Callable[[int], None]
    probe: Callable[[], Any]
    kept_bytes: Callable[[], int] = lambda: 0


class _Skip(Exception):
    """This backend does not apply to this case."""


JobBuilder = Callable[[_Workload, Dict[str, Any]], Dict[str, _Job]]


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


def _make_workload(case: Case) -> _Workload:
    """The case's rnnfast model (seeded by the case's name), input and state or target, in the case's dtype."""
    seed = zlib.crc32(case.name.encode())
    rng = np.random.default_rng(seed)
    dtype = np.dtype(case.dtype)
    stack_class, cell_class = _RNNFAST_CLASSES[case.kind]
    extra: Dict[str, Any] = {"nonlinearity": case.nonlinearity} if case.kind == "rnn" else {}
    if case.cell:
        model: Any = cell_class(case.input_size, case.hidden_size, dtype=case.dtype, seed=seed, **extra)
        x = rng.standard_normal((case.batch, case.input_size), dtype=dtype)
        h = rng.standard_normal((case.batch, case.hidden_size), dtype=dtype)
        # An LSTM cell's state is the pair (h, c): c starts as another draw.
        state = (h, rng.standard_normal(h.shape, dtype=dtype)) if case.kind == "lstm" else h
        return _Workload(case, model, x, state, None)
    model = stack_class(case.input_size, case.hidden_size, num_layers=case.num_layers,
                        bidirectional=case.bidirectional, dtype=case.dtype, seed=seed, **extra)
    x = rng.standard_normal((case.seq_len, case.batch, case.input_size), dtype=dtype)
    target = rng.standard_normal((case.seq_len, case.batch, case.directions * case.hidden_size), dtype=dtype)
    lengths = rng.integers(1, case.seq_len + 1, size=case.batch) if case.ragged else None
    return _Workload(case, model, x, None, target, lengths)


def _mse_grad(out: np.ndarray, target: np.ndarray) -> Tuple[float, np.ndarray]:
    """The mean squared error and its gradient with respect to ``out`` (one new array, scaled in place).

    The loss is NumPy's own sum, not a BLAS dot product: OpenBLAS's threads keep spinning on the cores after a call,
    and took them from the backward that follows (a float64 mid-sized step measured 2.8x slower)."""
    diff = out - target
    loss = float(np.square(diff).sum()) / diff.size
    diff *= out.dtype.type(2.0 / diff.size)
    return loss, diff


def _target(w: _Workload) -> np.ndarray:
    if w.target is None:
        raise ValueError(f"{w.case.name}: a cell case has no training target")
    return w.target


# ---------------------------------------------------------------------------------------------------------------------
# The builders
# ---------------------------------------------------------------------------------------------------------------------

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

    target, lengths = _target(w), w.lengths

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

    # The storage of a released cache, which the next step's forward refills.
    return {"inference": _Job(infer_n, infer_probe), "train": _Job(train_n, train_probe, model._spare_cache_bytes)}


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
    target = _target(w)

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
    # Modules of the case's dtype (torch.float64 for float64 rows), loaded with the rnnfast model's weights.
    extra: Dict[str, Any] = {"dtype": getattr(torch, case.dtype)}
    if case.kind == "rnn":
        extra["nonlinearity"] = case.nonlinearity
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
    target = torch.from_numpy(_target(w))
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


def _torch_one_thread_jobs(w: _Workload, env: Dict[str, Any]) -> Dict[str, _Job]:
    """PyTorch's jobs pinned to one thread (its thread count set back to the run's after each call of a job): at
    small sizes PyTorch is fastest on one thread, and rnnfast's speedup over PyTorch is against its faster count."""
    if env["threads"] == 1:
        raise _Skip("the run is at one thread: the torch row's")
    torch = env["torch"]

    def pinned(f: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            torch.set_num_threads(1)
            try:
                return f(*args)
            finally:
                torch.set_num_threads(env["threads"])
        return call

    return {mode: _Job(pinned(job.run_n), pinned(job.probe), job.kept_bytes)
            for mode, job in _torch_jobs(w, env).items()}


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


# ---------------------------------------------------------------------------------------------------------------------
# The table of backends
# ---------------------------------------------------------------------------------------------------------------------

#: In a quick run the NumPy reference runs only on cases of at most this many floating-point operations per
#: forward pass (``Case.flops``): the small cases (seed, stream, mid, cell steps). Its Python loop over time steps of
#: small matrix products takes from tens of milliseconds to seconds per call on the big ones (more on a busy machine,
#: where NumPy's BLAS threads wait for cores), and a quick run is a smoke run.
QUICK_REFERENCE_MAX_FLOPS = 200_000_000


@dataclass(frozen=True)
class Backend:
    """One backend: its name, its label in the table, its job builder and where it runs.

    ``requires``: the Python packages it needs (imported once per run; missing ones make it unavailable, with the
    reason). ``optional``: chosen with ``run(backends=...)`` (rnnfast always runs; the reference is chosen with
    ``run(reference=...)``). ``dtypes``: the dtypes it computes in; in another it does not run, for the reason
    ``why_not_dtype``. ``quick_max_flops``: in a quick run, only on cases of at most this many flops per forward
    pass. ``train_memory``: ``--memory`` measures its training step. ``variant_of``: another backend's row at other
    settings, run when that backend is; rnnfast's speedup over that backend is against the faster of the two.
    """

    name: str
    label: str
    build: JobBuilder
    requires: Tuple[str, ...] = ()
    optional: bool = True
    dtypes: Tuple[str, ...] = DTYPES
    why_not_dtype: str = ""
    quick_max_flops: Optional[int] = None
    train_memory: bool = False
    color: Optional[str] = None
    variant_of: Optional[str] = None


#: Every backend, in display order; "rnnfast" is always first and the baseline of every speedup.
BACKEND_TABLE: Dict[str, Backend] = {b.name: b for b in [
    Backend("rnnfast", "rnnfast", _rnnfast_jobs, optional=False, train_memory=True),
    Backend("torch", "torch", _torch_jobs, requires=("torch",), train_memory=True, color="tab:red"),
    # PyTorch at one thread, beside it at the run's N: the anchor is PyTorch at its best of 1 and N threads.
    Backend("torch1", "torch 1t", _torch_one_thread_jobs, requires=("torch",), variant_of="torch"),
    # ONNX Runtime's CPU kernels of RNN, LSTM and GRU are float only: a float64 graph fails ("Could not find an
    # implementation for RNN(14)", "LSTM operator does not support double yet").
    Backend("onnxruntime", "ort", _onnxruntime_jobs, requires=("onnx", "onnxruntime"), dtypes=("float32",),
            why_not_dtype="ONNX Runtime's CPU RNN, LSTM and GRU kernels are float32 only", color="tab:blue"),
    # OpenVINO's CPU plugin runs a float64 graph in float32 (INFERENCE_PRECISION_HINT takes f32, bf16 or f16 only):
    # timing it would compare float32 arithmetic with rnnfast's float64.
    Backend("openvino", "openvino", _openvino_jobs, requires=("onnx", "openvino"), dtypes=("float32",),
            why_not_dtype="OpenVINO's CPU plugin computes a float64 graph in float32", color="tab:purple"),
    Backend("reference", "numpy-ref", _reference_jobs, optional=False, quick_max_flops=QUICK_REFERENCE_MAX_FLOPS,
            color="tab:gray"),
]}

BACKENDS = tuple(BACKEND_TABLE)
_OPTIONAL_BACKENDS = tuple(b.name for b in BACKEND_TABLE.values() if b.optional and b.variant_of is None)
#: Backend -> its variants (rows at other settings), which run when it does.
_VARIANTS: Dict[str, Tuple[str, ...]] = {
    name: tuple(b.name for b in BACKEND_TABLE.values() if b.variant_of == name) for name in BACKEND_TABLE}
_SHORT_NAMES = {b.name: b.label for b in BACKEND_TABLE.values()}
_COLORS = {b.name: b.color for b in BACKEND_TABLE.values() if b.color is not None}
#: The job builders in use, by backend (the benchmark calls them from here; a test may replace one).
_JOB_BUILDERS: Dict[str, JobBuilder] = {b.name: b.build for b in BACKEND_TABLE.values()}


def _quick_exclusion(backend: str, case: Case) -> Optional[str]:
    """Why a quick run leaves ``backend`` out of ``case``, or None where it runs."""
    row = BACKEND_TABLE.get(backend)
    if row is None or row.quick_max_flops is None or case.flops <= row.quick_max_flops:
        return None
    return (f"not run with --quick: {case.flops / 1e6:.0f} MFLOP per forward pass, over the quick run's "
            f"{row.quick_max_flops / 1e6:.0f}")


# ---------------------------------------------------------------------------------------------------------------------
# Agreement with rnnfast
# ---------------------------------------------------------------------------------------------------------------------

def _output_mismatch(got: Any, expected: Tuple[np.ndarray, ...],
                     tolerance: float = OUTPUT_TOLERANCE) -> Optional[str]:
    got = tuple(got)
    if len(got) != len(expected):
        return f"expected {len(expected)} outputs, got {len(got)}"
    worst = 0.0
    for g, e in zip(got, expected):
        g = np.asarray(g)
        if g.shape != e.shape:
            return f"output shape {g.shape}, expected {e.shape}"
        worst = max(worst, float(np.max(np.abs(g.astype(np.float64) - e))) if e.size else 0.0)
    if not worst <= tolerance:  # also catches NaN
        return f"max abs difference from rnnfast {worst:.3g} > {tolerance:g}"
    return None


def _grad_mismatch(got: Dict[str, np.ndarray], expected: Dict[str, np.ndarray],
                   relative: float = GRAD_RELATIVE_TOLERANCE, floor: float = 1e-7) -> Optional[str]:
    if set(got) != set(expected):
        return f"gradient names {sorted(got)}, expected {sorted(expected)}"
    for name, e in expected.items():
        g = np.asarray(got[name], dtype=np.float64)
        if g.shape != e.shape:
            return f"gradient {name}: shape {g.shape}, expected {e.shape}"
        scale = float(np.max(np.abs(e))) if e.size else 0.0
        worst = float(np.max(np.abs(g - e))) if e.size else 0.0
        if not worst <= relative * scale + floor:
            return f"gradient {name}: max abs difference from rnnfast {worst:.3g} > {relative:g} x {scale:.3g}"
    return None
