"""Benchmark: rnnfast against the NumPy reference and, when installed, PyTorch, ONNX Runtime and OpenVINO.

Run it as ``python -m rnnfast bench`` (``--help`` lists the options) or from Python::

    from rnnfast import bench
    results = bench.run(cases=["seed_1layer"], threads=2, quick=True)

What is timed, per case of the grid ``CASES``:

The grid runs for one cell kind (``cell``: ``rnn``, ``lstm`` or ``gru``; ``--cell`` on the command line) and one
dtype (``dtype``: ``float32`` or ``float64``; ``--dtype``): the model is ``rnnfast.RNN``, ``LSTM`` or ``GRU``
(``RNNCell``, ``LSTMCell`` or ``GRUCell`` for the ``cell_step_*`` cases) of that dtype against ``torch.nn``'s class
of the same kind and dtype.

* ``inference``: ``rnn(x)`` (one cell call for the ``cell_step_*`` cases); PyTorch under
  ``torch.inference_mode()``; ONNX Runtime and OpenVINO run the model's ONNX graph (``rnnfast.onnx.to_onnx``,
  with T and B fixed to the case's: one ``RNN``, ``LSTM`` or ``GRU`` node per layer, the same weights), in float32
  only (ONNX Runtime has no float64 kernels of these operators and OpenVINO's CPU plugin computes a float64 graph
  in float32, so in float64 both are listed as not run).
* ``train``: one training step against a fixed random target with the mean squared error loss: forward keeping
  what backward needs, the loss gradient ``2 * (output - target) / output.size``, backpropagation through time.
  PyTorch's step is ``zero_grad``, forward, ``F.mse_loss``, ``backward``. (Not the cell cases; no ONNX backends.)

Every backend loads the weights of one rnnfast model and is checked once per case against rnnfast's results
(float32: outputs within 1e-3, training gradients within 1e-3 relative to their largest magnitude; float64: 1e-8).
A backend that does not match is reported as a mismatch and not timed.

All backends use the same number of threads and run interleaved in one process: each repetition times every
backend in turn (round-robin, starting from a different backend each time), each timing (after a pause and one
untimed call) a loop of calls that lasts at least ``MIN_LOOP_SECONDS``; the reported time per call is the median
over repetitions. The speedup of rnnfast over another backend is ``other_time / rnnfast_time`` (above 1: rnnfast
is faster). PyTorch, at small sizes often fastest on one thread, also runs pinned to one thread beside its row at the
run's count (the ``torch1`` row, "torch 1t"; not in a one-thread run), and the speedup over PyTorch is against the
faster of the two: PyTorch at its best of 1 and N threads.

The same run measures the machine's matrix product rate in the run's dtype (NumPy 1024 x 1024 products at the same
thread count), before its cases and again after them, and reports rnnfast's inference rate as a percentage of the
faster of the two (the table says so when they differ by more than ``GEMM_DRIFT``: the machine's speed changed while
the run went on), counting
``2 * T * B * G * H * (I_layer + H)`` floating-point operations per layer and direction (G gates: 1, 4 for the LSTM,
3 for the GRU). The ONNX backends time every kind, on full-length batches (not the ``ragged`` cases).

``quick`` (``--quick``) is a smoke run: every backend is still checked, but the timing is rough: at most
``QUICK_MAX_REPEAT`` repetitions of loops of at least ``QUICK_MIN_LOOP_SECONDS`` without the pauses and untimed
calls, the agreement check's call standing in for a slow backend's calibration call, and the NumPy reference only on
the cases of at most ``QUICK_REFERENCE_MAX_FLOPS`` per forward pass (each case's ``not_run`` and a line under the
table name the others).

The package: ``cases`` (the grid), ``timing`` (the timing method, the GEMM rate, BLAS threads, the machine),
``backends`` (one job builder per backend and ``BACKEND_TABLE``, a row per backend), ``memory`` (``--memory``),
``runner`` (``run``), ``report`` (``format_table``, ``write_plot``) and ``cli`` (``build_parser``, ``main``).
"""

from __future__ import annotations

from .backends import _COLORS as _COLORS
from .backends import _JOB_BUILDERS as _JOB_BUILDERS
from .backends import _OPTIONAL_BACKENDS as _OPTIONAL_BACKENDS
from .backends import _RNNFAST_CLASSES as _RNNFAST_CLASSES
from .backends import _SHORT_NAMES as _SHORT_NAMES
from .backends import BACKEND_TABLE, BACKENDS, GRAD_RELATIVE_TOLERANCE, OUTPUT_TOLERANCE, QUICK_REFERENCE_MAX_FLOPS
from .backends import Backend as Backend
from .backends import _grad_mismatch as _grad_mismatch
from .backends import _import_optional as _import_optional
from .backends import _Job as _Job
from .backends import _make_workload as _make_workload
from .backends import _mse_grad as _mse_grad
from .backends import _onnx_model_for as _onnx_model_for
from .backends import _onnx_output_names as _onnx_output_names
from .backends import _onnxruntime_jobs as _onnxruntime_jobs
from .backends import _openvino_jobs as _openvino_jobs
from .backends import _output_mismatch as _output_mismatch
from .backends import _quick_exclusion as _quick_exclusion
from .backends import _reference_jobs as _reference_jobs
from .backends import _rnnfast_jobs as _rnnfast_jobs
from .backends import _Skip as _Skip
from .backends import _torch_jobs as _torch_jobs
from .backends import _Workload as _Workload
from .backends import reference as reference
from .cases import CASES, DTYPES, KIND_GATES, MODES, Case, select_cases
from .cases import _cell_case as _cell_case
from .cli import _split_list as _split_list
from .cli import build_parser, main
from .memory import _MEMORY_BACKENDS as _MEMORY_BACKENDS
from .memory import _MEMORY_ENV as _MEMORY_ENV
from .memory import _memory_child as _memory_child
from .memory import _resident_bytes as _resident_bytes
from .memory import measure_train_memory
from .report import _backends_in as _backends_in
from .report import _fmt_ms as _fmt_ms
from .report import format_table, write_plot
from .runner import _bench_case as _bench_case
from .runner import run
from .sweep import SWEEP_NOISE, format_sweep, slowdown_with_more_threads, sweep, write_sweep_plot
from .timing import _QUICK_SETTLE_SECONDS as _QUICK_SETTLE_SECONDS
from .timing import _SETTLE_SECONDS as _SETTLE_SECONDS
from .timing import _STARTUP_SETTLE_SECONDS as _STARTUP_SETTLE_SECONDS
from .timing import (GEMM_DRIFT, GEMM_SIZE, MIN_LOOP_SECONDS, QUICK_MAX_REPEAT, QUICK_MIN_LOOP_SECONDS, Timing,
                     gemm_drift, gemm_rate, time_interleaved)
from .timing import _BlasThreads as _BlasThreads
from .timing import _calibrate as _calibrate
from .timing import _cpu_model as _cpu_model
from .timing import _machine_info as _machine_info
from .timing import _measure_gemm as _measure_gemm
from .timing import _time_loop as _time_loop

__all__ = ["BACKENDS", "BACKEND_TABLE", "CASES", "DTYPES", "GEMM_DRIFT", "GEMM_SIZE", "GRAD_RELATIVE_TOLERANCE",
           "KIND_GATES", "MIN_LOOP_SECONDS", "MODES", "OUTPUT_TOLERANCE", "QUICK_MAX_REPEAT", "QUICK_MIN_LOOP_SECONDS",
           "QUICK_REFERENCE_MAX_FLOPS", "Case", "Timing", "build_parser", "format_table", "main",
           "measure_train_memory", "run", "select_cases", "time_interleaved", "write_plot", "SWEEP_NOISE", "format_sweep",
           "slowdown_with_more_threads", "sweep", "write_sweep_plot", "gemm_drift", "gemm_rate"]
