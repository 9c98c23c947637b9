"""rnnfast.onnx: export to ONNX and load back.

Round trips: rnnfast -> ONNX -> ONNX Runtime / OpenVINO / onnx's reference evaluator equal to rnnfast (ragged
``lengths`` and given initial states included); ``torch.onnx.export`` of ``torch.nn.RNN`` / ``LSTM`` / ``GRU`` ->
``rnnfast.onnx.load`` equal to PyTorch; rnnfast -> ONNX -> load bitwise the same parameters and configuration; and
one small hand-built graph for each thing ``load`` refuses. Each test skips when a package it needs is missing.
"""

from __future__ import annotations

import io
import itertools
import os
import subprocess
import sys
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest

import rnnfast
import rnnfast.onnx as rox
from conftest import assert_close

KINDS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
T, B, I, H = 5, 3, 4, 6


@pytest.fixture
def onnx() -> Any:
    return pytest.importorskip("onnx")


@pytest.fixture
def ort(onnx: Any) -> Any:
    return pytest.importorskip("onnxruntime")


def make_model(kind: str, dtype: str = "float32", seed: int = 0, **kwargs: Any) -> Any:
    if kind.startswith("rnn"):
        return rnnfast.RNN(I, H, nonlinearity=kind[4:], dtype=dtype, seed=seed, **kwargs)
    cls = {"lstm": rnnfast.LSTM, "gru": rnnfast.GRU}[kind]
    return cls(I, H, dtype=dtype, seed=seed, **kwargs)


def inputs_for(model: Any, seq_len: int, batch: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray,
                                                                                        List[np.ndarray]]:
    """x (in the model's layout), ragged lengths with one full-length item, and random initial states."""
    dtype = model.dtype
    shape = (batch, seq_len, I) if model.batch_first else (seq_len, batch, I)
    x = rng.standard_normal(shape).astype(dtype)
    lengths = rng.integers(1, seq_len + 1, size=batch).astype(np.int32)
    lengths[rng.integers(batch)] = seq_len
    count = model.num_layers * (2 if model.bidirectional else 1)
    states = [rng.standard_normal((count, batch, H)).astype(dtype)
              for _ in range(2 if isinstance(model, rnnfast.LSTM) else 1)]
    return x, lengths, states


def rnnfast_outputs(model: Any, x: np.ndarray, lengths: Optional[np.ndarray] = None,
                    states: Optional[List[np.ndarray]] = None) -> List[np.ndarray]:
    """[output, h_n] (and c_n for an LSTM), the graph's outputs."""
    state: Any = None
    if states is not None:
        state = tuple(states) if isinstance(model, rnnfast.LSTM) else states[0]
    output, final = model(x, state, lengths=lengths)
    return [output, *final] if isinstance(final, tuple) else [output, final]


def feeds_for(x: np.ndarray, lengths: Optional[np.ndarray] = None,
              states: Optional[List[np.ndarray]] = None) -> Dict[str, np.ndarray]:
    feeds = {"input": x}
    if lengths is not None:
        feeds["lengths"] = lengths
    for name, value in zip(("h0", "c0"), states or []):
        feeds[name] = value
    return feeds


def ort_session(ort: Any, proto: Any) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def valid_steps(output: np.ndarray, lengths: np.ndarray, batch_first: bool) -> np.ndarray:
    """A mask of the output's valid steps (t < lengths[b]), broadcast over its features."""
    seq_len = output.shape[1] if batch_first else output.shape[0]
    mask = np.arange(seq_len)[:, None] < lengths[None, :]  # [T, B]
    return (mask.T if batch_first else mask)[..., None]


# ---------------------------------------------------------------------------------------------------------------------
# The optional dependency
# ---------------------------------------------------------------------------------------------------------------------

def test_import_rnnfast_without_onnx() -> None:
    # onnx made unimportable: rnnfast and rnnfast.onnx import, and a call names the extra to install.
    code = (
        "import sys\n"
        "sys.modules['onnx'] = None\n"
        "import rnnfast, rnnfast.onnx\n"
        "assert 'onnx' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "try:\n"
        "    rnnfast.onnx.to_onnx(rnnfast.RNN(2, 3, seed=0))\n"
        "except ImportError as exc:\n"
        "    print('ImportError:', exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "ImportError:" in proc.stdout and "pip install 'rnnfast[onnx]'" in proc.stdout, proc.stdout


# ---------------------------------------------------------------------------------------------------------------------
# Export: the file itself
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_graph_interface(onnx: Any, kind: str, batch_first: bool) -> None:
    model = make_model(kind, num_layers=2, bidirectional=True, batch_first=batch_first)
    proto = rox.to_onnx(model, with_lengths=True, with_initial_state=True)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.producer_name == "rnnfast" and proto.producer_version == rnnfast.__version__
    assert [o.domain for o in proto.opset_import] == [""]
    assert proto.opset_import[0].version == rox.DEFAULT_OPSET

    def dims(value: Any) -> List[Any]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    lstm = kind == "lstm"
    seq = ["batch", "seq_len"] if batch_first else ["seq_len", "batch"]
    state = [4, "batch", H]
    assert [(v.name, dims(v)) for v in proto.graph.input] == (
        [("input", [*seq, I]), ("lengths", ["batch"]), ("h0", state)] + ([("c0", state)] if lstm else []))
    assert [(v.name, dims(v)) for v in proto.graph.output] == (
        [("output", [*seq, 2 * H]), ("h_n", state)] + ([("c_n", state)] if lstm else []))
    assert proto.graph.input[1].type.tensor_type.elem_type == onnx.TensorProto.INT32
    recurrent = [n for n in proto.graph.node if n.op_type in ("RNN", "LSTM", "GRU")]
    assert [n.op_type for n in recurrent] == [{"lstm": "LSTM", "gru": "GRU"}.get(kind, "RNN")] * 2
    if kind == "gru":
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in recurrent[0].attribute}
        assert attrs["linear_before_reset"] == 1

    plain = rox.to_onnx(model)
    assert [v.name for v in plain.graph.input] == ["input"]
    onnx.checker.check_model(plain, full_check=True)


def test_fixed_dims_and_opsets(onnx: Any, ort: Any) -> None:
    model = make_model("lstm", num_layers=2)
    proto = rox.to_onnx(model, seq_len=7, batch=2)
    onnx.checker.check_model(proto, full_check=True)
    shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert shape == [7, 2, I]
    assert [d.dim_value for d in proto.graph.output[1].type.tensor_type.shape.dim] == [2, 2, H]
    newest = onnx.defs.onnx_opset_version()
    for opset in (rox.MIN_OPSET, newest):
        p = rox.to_onnx(model, opset=opset)
        onnx.checker.check_model(p, full_check=True)
        assert p.opset_import[0].version == opset
    x = np.random.default_rng(0).standard_normal((3, 2, I)).astype(np.float32)
    got = ort_session(ort, rox.to_onnx(model, opset=rox.MIN_OPSET)).run(None, {"input": x})
    for g, e in zip(got, rnnfast_outputs(model, x)):
        assert_close(g, e, np.float32, depth=2)


def test_export_to_path_and_file_object(onnx: Any, tmp_path: Any) -> None:
    model = make_model("gru", bidirectional=True)
    expected = rox.to_onnx(model, with_lengths=True).SerializeToString()
    rox.export(model, str(tmp_path / "a.onnx"), with_lengths=True)
    rox.export(model, tmp_path / "b.onnx", with_lengths=True)
    buffer = io.BytesIO()
    rox.export(model, buffer, with_lengths=True)
    assert (tmp_path / "a.onnx").read_bytes() == expected
    assert (tmp_path / "b.onnx").read_bytes() == expected
    assert buffer.getvalue() == expected
    onnx.checker.check_model(str(tmp_path / "a.onnx"), full_check=True)


def test_export_refusals(onnx: Any) -> None:
    with pytest.raises(ValueError, match="proj_size=2"):
        rox.to_onnx(rnnfast.LSTM(I, H, proj_size=2, seed=0))
    with pytest.raises(ValueError, match="proj_size"):
        rox.export(rnnfast.LSTM(I, H, proj_size=2, seed=0), io.BytesIO())
    with pytest.raises(TypeError, match="model: expected an rnnfast.RNN, rnnfast.LSTM or rnnfast.GRU, got RNNCell"):
        rox.to_onnx(rnnfast.RNNCell(I, H, seed=0))
    with pytest.raises(TypeError, match="model: .* got dict"):
        rox.export({}, io.BytesIO())  # type: ignore[arg-type]
    model = make_model("rnn_tanh")
    with pytest.raises(TypeError, match="with_lengths"):
        rox.to_onnx(model, with_lengths="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="with_initial_state"):
        rox.to_onnx(model, with_initial_state=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"opset: expected None or an integer in \[13, \d+\].*got 7"):
        rox.to_onnx(model, opset=7)
    with pytest.raises(ValueError, match="opset: .* got 1000"):
        rox.to_onnx(model, opset=1000)
    with pytest.raises(TypeError, match="opset"):
        rox.to_onnx(model, opset=17.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seq_len"):
        rox.to_onnx(model, seq_len=0)
    with pytest.raises(TypeError, match="batch"):
        rox.to_onnx(model, batch="2")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="f: expected a path"):
        rox.export(model, 3)
    with pytest.raises(TypeError, match="f: expected a binary file object"):
        rox.export(model, io.StringIO())


# ---------------------------------------------------------------------------------------------------------------------
# rnnfast -> ONNX -> runtimes
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_layers,bidirectional,batch_first,bias",
                         [c for c in itertools.product([1, 2], [False, True], [False, True], [True, False])])
def test_onnxruntime_equals_rnnfast(ort: Any, kind: str, num_layers: int, bidirectional: bool, batch_first: bool,
                                    bias: bool) -> None:
    model = make_model(kind, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
                       bias=bias, seed=num_layers)
    rng = np.random.default_rng(1)
    full = ort_session(ort, rox.to_onnx(model))
    ragged = ort_session(ort, rox.to_onnx(model, with_lengths=True, with_initial_state=True))
    for seq_len, batch in [(T, B), (2, 1)]:  # one graph, two sizes: T and B are symbolic
        x, lengths, states = inputs_for(model, seq_len, batch, rng)
        for g, e in zip(full.run(None, {"input": x}), rnnfast_outputs(model, x)):
            assert_close(g, e, np.float32, depth=num_layers)
        got = ragged.run(None, feeds_for(x, lengths, states))
        expected = rnnfast_outputs(model, x, lengths, states)
        for g, e in zip(got, expected):
            assert_close(g, e, np.float32, depth=num_layers)
        # Past each item's length: zeros from rnnfast, and from ONNX Runtime too.
        invalid = ~np.broadcast_to(valid_steps(got[0], lengths, batch_first), got[0].shape)
        assert np.all(got[0][invalid] == 0) and np.all(expected[0][invalid] == 0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_openvino_equals_rnnfast(onnx: Any, kind: str, bidirectional: bool) -> None:
    ov = pytest.importorskip("openvino")
    core = ov.Core()
    model = make_model(kind, num_layers=2, bidirectional=bidirectional, batch_first=True, seed=3)
    rng = np.random.default_rng(2)
    x, lengths, states = inputs_for(model, T, B, rng)
    names = ["output", "h_n"] + (["c_n"] if kind == "lstm" else [])
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1}

    def run(proto: Any, feeds: Dict[str, np.ndarray], static: bool) -> List[np.ndarray]:
        ov_model = core.read_model(proto.SerializeToString(), b"")
        if static:  # OpenVINO 2026.4's CPU plugin honours sequence_lens only with static shapes
            ov_model.reshape({name: list(value.shape) for name, value in feeds.items()})
        compiled = core.compile_model(ov_model, "CPU", config)
        result = compiled(feeds)
        return [np.asarray(result[compiled.output(name)]) for name in names]

    for g, e in zip(run(rox.to_onnx(model), {"input": x}, False), rnnfast_outputs(model, x)):
        assert_close(g, e, np.float32, depth=2)
    proto = rox.to_onnx(model, with_lengths=True, with_initial_state=True)
    got = run(proto, feeds_for(x, lengths, states), True)
    expected = rnnfast_outputs(model, x, lengths, states)
    for g, e in zip(got, expected):
        assert_close(g, e, np.float32, depth=2)
    invalid = ~np.broadcast_to(valid_steps(got[0], lengths, True), got[0].shape)
    assert np.all(got[0][invalid] == 0)


@pytest.mark.parametrize("kind", ["rnn_tanh", "lstm", "gru"])
def test_float64_graph_with_onnx_reference_evaluator(onnx: Any, kind: str) -> None:
    # ONNX Runtime's CPU RNN, LSTM and GRU kernels are float32 only; onnx's reference evaluator runs float64 (full
    # lengths: it does not implement sequence_lens; no Relu either).
    reference = pytest.importorskip("onnx.reference")
    model = make_model(kind, dtype="float64", num_layers=2, bidirectional=True, batch_first=True, seed=5)
    proto = rox.to_onnx(model, with_initial_state=True)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    x, _, states = inputs_for(model, T, B, np.random.default_rng(3))
    got = reference.ReferenceEvaluator(proto).run(None, feeds_for(x, None, states))
    for g, e in zip(got, rnnfast_outputs(model, x, None, states)):
        assert g.dtype == np.float64
        assert_close(g, e, np.float64, depth=2)


# ---------------------------------------------------------------------------------------------------------------------
# rnnfast -> ONNX -> rnnfast
# ---------------------------------------------------------------------------------------------------------------------

CONFIG_NAMES = ("input_size", "hidden_size", "num_layers", "nonlinearity", "bias", "batch_first", "dropout",
                "bidirectional", "proj_size", "dtype")


def config_of(model: Any) -> Dict[str, Any]:
    return {name: getattr(model, name) for name in CONFIG_NAMES if hasattr(model, name)}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("num_layers,bidirectional,batch_first,bias,dropout",
                         [(1, False, False, True, 0.0), (2, True, True, False, 0.25), (3, False, True, True, 0.5),
                          (2, True, False, True, 0.0)])
def test_load_round_trip_is_bitwise(onnx: Any, tmp_path: Any, kind: str, dtype: str, num_layers: int,
                                    bidirectional: bool, batch_first: bool, bias: bool, dropout: float) -> None:
    model = make_model(kind, dtype, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
                       bias=bias, dropout=dropout, seed=7)
    path = tmp_path / "model.onnx"
    rox.export(model, path, with_lengths=True, with_initial_state=True)
    for source in (path, str(path), io.BytesIO(path.read_bytes()), path.read_bytes(), onnx.load(str(path))):
        loaded = rox.load(source)
        assert type(loaded) is type(model)
        assert config_of(loaded) == config_of(model)
        expected = model.state_dict()
        state = loaded.state_dict()
        assert list(state) == list(expected)
        for name in expected:
            assert state[name].dtype == expected[name].dtype
            assert np.array_equal(state[name], expected[name]), name


def test_load_reads_constant_nodes_and_ignores_other_metadata(onnx: Any) -> None:
    # Weights as Constant nodes instead of initializers, and no rnnfast metadata: dropout 0.
    model = make_model("gru", num_layers=2, dropout=0.5, seed=4)
    proto = rox.to_onnx(model)
    graph = proto.graph
    constants = [onnx.helper.make_node("Constant", [], [t.name], value=t) for t in graph.initializer]
    nodes = constants + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    del proto.metadata_props[:]
    onnx.checker.check_model(proto, full_check=True)
    loaded = rox.load(proto)
    assert loaded.dropout == 0.0 and loaded.num_layers == 2
    for name, value in model.state_dict().items():
        assert np.array_equal(loaded.state_dict()[name], value)


# ---------------------------------------------------------------------------------------------------------------------
# PyTorch -> ONNX -> rnnfast
# ---------------------------------------------------------------------------------------------------------------------

def torch_export(torch: Any, module: Any, x: Any, constant_folding: bool = True) -> bytes:
    """``torch.onnx.export`` of ``module`` with symbolic T and B; the TorchScript exporter first (``dynamo=False``:
    the torch.export-based one needs onnxscript), the default one where that keyword is unknown."""
    buffer = io.BytesIO()
    axes = {0: "batch", 1: "seq_len"} if module.batch_first else {0: "seq_len", 1: "batch"}
    kwargs = dict(input_names=["input"], output_names=["output"], dynamic_axes={"input": axes},
                  do_constant_folding=constant_folding)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' deprecation and batch-size notices
        try:
            torch.onnx.export(module, (x,), buffer, dynamo=False, **kwargs)
        except TypeError:
            torch.onnx.export(module, (x,), buffer, **kwargs)
        except Exception as exc:  # pragma: no cover - an environment whose exporter does not run
            pytest.skip(f"torch.onnx.export is unusable here: {type(exc).__name__}: {exc}")
    return buffer.getvalue()


TORCH_CASES = [c for c in itertools.product(KINDS, [1, 2], [False, True], [False, True], [True, False])]


@pytest.mark.parametrize("kind,num_layers,bidirectional,batch_first,bias", TORCH_CASES)
def test_load_torch_export(onnx: Any, kind: str, num_layers: int, bidirectional: bool, batch_first: bool,
                           bias: bool) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(num_layers)
    kwargs = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias)
    if kind.startswith("rnn"):
        module = torch.nn.RNN(I, H, nonlinearity=kind[4:], **kwargs)
    else:
        module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind](I, H, **kwargs)
    module.eval()
    shape = (B, T, I) if batch_first else (T, B, I)
    data = torch_export(torch, module, torch.randn(*shape))
    model = rox.load(data)
    assert type(model).__name__ == {"lstm": "LSTM", "gru": "GRU"}.get(kind, "RNN")
    assert (model.num_layers, model.bidirectional, model.batch_first, model.bias) == (
        num_layers, bidirectional, batch_first, bias)
    assert model.dtype == np.float32 and model.hidden_size == H and model.input_size == I
    if kind.startswith("rnn"):
        assert model.nonlinearity == kind[4:]
    # The weights are PyTorch's, bitwise, and so the outputs agree at another T and B.
    for name, value in module.state_dict().items():
        assert np.array_equal(model.state_dict()[name], value.numpy()), name
    x = torch.randn(*((2, 7, I) if batch_first else (7, 2, I)))
    with torch.no_grad():
        out, state = module(x)
    states = state if isinstance(state, tuple) else (state,)
    for g, e in zip(rnnfast_outputs(model, x.numpy()), [out, *states]):
        assert_close(g, e.numpy().astype(np.float64), np.float32, depth=num_layers)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_relu"])
def test_load_torch_export_without_constant_folding_and_float64(onnx: Any, kind: str) -> None:
    # Unfolded, the exporter computes W, R and B from the parameters with Slice, Concat and Unsqueeze nodes.
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn_relu": torch.nn.RNN}[kind]
    extra = {"nonlinearity": "relu"} if kind == "rnn_relu" else {}
    module = cls(I, H, num_layers=2, bidirectional=True, **extra).double().eval()
    model = rox.load(torch_export(torch, module, torch.randn(T, B, I, dtype=torch.float64),
                                  constant_folding=False))
    assert model.dtype == np.float64
    for name, value in module.state_dict().items():
        assert np.array_equal(model.state_dict()[name], value.numpy()), name
    x = torch.randn(T, B, I, dtype=torch.float64)
    with torch.no_grad():
        out, state = module(x)
    states = state if isinstance(state, tuple) else (state,)
    for g, e in zip(rnnfast_outputs(model, x.numpy()), [out, *states]):
        assert_close(g, e.numpy(), np.float64, depth=2)


# ---------------------------------------------------------------------------------------------------------------------
# What load refuses
# ---------------------------------------------------------------------------------------------------------------------

GATES = {"RNN": 1, "LSTM": 4, "GRU": 3}


def layer_node(onnx: Any, op: str, k: int, x: str, input_size: int, hidden: int = H, directions: int = 1,
               inputs_extra: Sequence[str] = (), dtype: Any = np.float32, **attributes: Any) -> Tuple[Any, List[Any]]:
    """One recurrent node ``layer{k}`` reading ``x``, with random W, R, B initializers."""
    rng = np.random.default_rng(k)
    G = GATES[op]
    init = [onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(dtype), f"{name}{k}") for name, shape in
            (("W", (directions, G * hidden, input_size)), ("R", (directions, G * hidden, hidden)),
             ("B", (directions, 2 * G * hidden)))]
    if op == "GRU":
        attributes.setdefault("linear_before_reset", 1)
    attributes.setdefault("direction", "bidirectional" if directions == 2 else "forward")
    node = onnx.helper.make_node(op, [x, f"W{k}", f"R{k}", f"B{k}", *inputs_extra],
                                 [f"Y{k}", f"Y_h{k}"], name=f"layer{k}", hidden_size=hidden, **attributes)
    return node, init


def squeeze(onnx: Any, k: int) -> Tuple[Any, List[Any]]:
    """Y{k} [T, 1, B, H] -> out{k} [T, B, H]."""
    axes = onnx.numpy_helper.from_array(np.array([1], np.int64), f"axes{k}")
    return onnx.helper.make_node("Squeeze", [f"Y{k}", f"axes{k}"], [f"out{k}"], name=f"squeeze{k}"), [axes]


def build(onnx: Any, nodes: List[Any], initializers: List[Any], extra_inputs: Sequence[Any] = ()) -> Any:
    graph = onnx.helper.make_graph(
        nodes, "g", [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["T", "B", I]),
                     *extra_inputs],
        [onnx.helper.make_tensor_value_info(nodes[-1].output[0], onnx.TensorProto.FLOAT, None)],
        initializer=initializers)
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


def one_layer(onnx: Any, op: str, **attributes: Any) -> Any:
    node, init = layer_node(onnx, op, 0, "input", I, **attributes)
    return build(onnx, [node], init)


def two_layers(onnx: Any, op0: str, op1: str, hidden1: int = H, between: Optional[str] = None,
               attributes1: Optional[Dict[str, Any]] = None) -> Any:
    n0, i0 = layer_node(onnx, op0, 0, "input", I)
    s0, a0 = squeeze(onnx, 0)
    nodes, init = [n0, s0], i0 + a0
    x1 = "out0"
    if between is not None:
        nodes.append(onnx.helper.make_node(between, ["out0"], ["mid"], name="between"))
        x1 = "mid"
    n1, i1 = layer_node(onnx, op1, 1, x1, H, hidden=hidden1, **(attributes1 or {}))
    return build(onnx, nodes + [n1], init + i1)


def test_hand_built_graph_loads(onnx: Any) -> None:
    # The builders below make valid graphs: without the one bad detail each loads.
    model = rox.load(two_layers(onnx, "LSTM", "LSTM"))
    assert isinstance(model, rnnfast.LSTM) and model.num_layers == 2 and not model.batch_first
    model = rox.load(two_layers(onnx, "GRU", "GRU", between="Identity"))
    assert isinstance(model, rnnfast.GRU) and model.num_layers == 2
    model = rox.load(one_layer(onnx, "RNN", activations=["Relu"]))
    assert isinstance(model, rnnfast.RNN) and model.nonlinearity == "relu"
    model = rox.load(one_layer(onnx, "RNN", activations=["tanh", "TANH"], directions=2))
    assert model.bidirectional and model.nonlinearity == "tanh"
    model = rox.load(one_layer(onnx, "LSTM", activations=["Sigmoid", "Tanh", "Tanh"]))
    assert isinstance(model, rnnfast.LSTM)


@pytest.mark.parametrize("op,attributes,message", [
    ("LSTM", {"clip": 5.0}, "node 'layer0' \\(LSTM\\) has clip=5.0"),
    ("RNN", {"clip": 1.0}, "node 'layer0' \\(RNN\\) has clip"),
    ("LSTM", {"input_forget": 1}, "node 'layer0' \\(LSTM\\) has input_forget=1"),
    ("RNN", {"activations": ["Sigmoid"]}, "node 'layer0' \\(RNN\\) has activations=\\['Sigmoid'\\]"),
    ("RNN", {"activations": ["Tanh", "Relu"], "directions": 2}, "node 'layer0' \\(RNN\\) has activations"),
    ("LSTM", {"activations": ["Sigmoid", "Tanh", "Relu"]}, "node 'layer0' \\(LSTM\\) has activations"),
    ("GRU", {"activations": ["HardSigmoid", "Tanh"]}, "node 'layer0' \\(GRU\\) has activations"),
    ("GRU", {"linear_before_reset": 0}, "node 'layer0' \\(GRU\\) has linear_before_reset=0"),
    ("LSTM", {"direction": "reverse"}, "node 'layer0' \\(LSTM\\) has direction='reverse'"),
    ("GRU", {"layout": 1}, "node 'layer0' \\(GRU\\) has layout=1"),
    ("RNN", {"activation_alpha": [0.5]}, "node 'layer0' \\(RNN\\) has activation_alpha"),
])
def test_load_refuses_attribute(onnx: Any, op: str, attributes: Dict[str, Any], message: str) -> None:
    directions = attributes.pop("directions", 1)
    node, init = layer_node(onnx, op, 0, "input", I, directions=directions, **attributes)
    with pytest.raises(ValueError, match=message):
        rox.load(build(onnx, [node], init))


def test_load_refuses_gru_without_linear_before_reset(onnx: Any) -> None:
    node, init = layer_node(onnx, "GRU", 0, "input", I)
    del node.attribute[:]
    node.attribute.extend([onnx.helper.make_attribute("hidden_size", H)])  # the default: linear_before_reset=0
    with pytest.raises(ValueError, match="node 'layer0' \\(GRU\\) has linear_before_reset=0"):
        rox.load(build(onnx, [node], init))


def test_load_refuses_peepholes(onnx: Any) -> None:
    peepholes = onnx.numpy_helper.from_array(np.zeros((1, 3 * H), np.float32), "P0")
    node, init = layer_node(onnx, "LSTM", 0, "input", I, inputs_extra=["", "", "", "P0"])
    with pytest.raises(ValueError, match="node 'layer0' \\(LSTM\\) has peephole weights \\(input P 'P0'\\)"):
        rox.load(build(onnx, [node], init + [peepholes]))


def test_load_refuses_mixed_layers(onnx: Any) -> None:
    with pytest.raises(ValueError, match="mixed kinds of recurrent nodes: node 'layer0' \\(LSTM\\) and node "
                                         "'layer1' \\(GRU\\)"):
        rox.load(two_layers(onnx, "LSTM", "GRU"))
    with pytest.raises(ValueError, match="mixed hidden sizes: node 'layer1' \\(LSTM\\) has hidden_size=3, the first "
                                         "layer 6"):
        rox.load(two_layers(onnx, "LSTM", "LSTM", hidden1=3))
    with pytest.raises(ValueError, match="mixed activations: node 'layer1' \\(RNN\\) has activations=relu"):
        rox.load(two_layers(onnx, "RNN", "RNN", attributes1={"activations": ["Relu"]}))


def test_load_refuses_other_operators_between_layers(onnx: Any) -> None:
    with pytest.raises(ValueError, match="node 'between' \\(Relu\\) feeds the input X of node 'layer1' \\(RNN\\)"):
        rox.load(two_layers(onnx, "RNN", "RNN", between="Relu"))
    # Before the first layer too.
    relu = onnx.helper.make_node("Relu", ["input"], ["relu"], name="pre")
    node, init = layer_node(onnx, "GRU", 0, "relu", I)
    with pytest.raises(ValueError, match="node 'pre' \\(Relu\\) feeds the input X of node 'layer0' \\(GRU\\)"):
        rox.load(build(onnx, [relu, node], init))


def test_load_refuses_graphs_that_are_not_one_chain(onnx: Any) -> None:
    # Two nodes reading the first layer's output.
    n0, i0 = layer_node(onnx, "GRU", 0, "input", I)
    s0, a0 = squeeze(onnx, 0)
    n1, i1 = layer_node(onnx, "GRU", 1, "out0", H)
    n2, i2 = layer_node(onnx, "GRU", 2, "out0", H)
    with pytest.raises(ValueError, match="both read the output of node 'layer0' \\(GRU\\)"):
        rox.load(build(onnx, [n0, s0, n1, n2], i0 + a0 + i1 + i2))
    # A node reading the previous layer's final state instead of its output sequence.
    n1, i1 = layer_node(onnx, "GRU", 1, "Y_h0", H)
    with pytest.raises(ValueError, match="reads 'Y_h0', the final state of node 'layer0' \\(GRU\\)"):
        rox.load(build(onnx, [n0, n1], i0 + i1))
    # Two graph inputs, two separate layers.
    n1, i1 = layer_node(onnx, "GRU", 1, "other", I)
    other = onnx.helper.make_tensor_value_info("other", onnx.TensorProto.FLOAT, ["T", "B", I])
    with pytest.raises(ValueError, match="both read a graph input"):
        rox.load(build(onnx, [n0, n1], i0 + i1, [other]))


def test_load_refuses_weights_it_cannot_read(onnx: Any) -> None:
    node, init = layer_node(onnx, "LSTM", 0, "input", I)
    weights = onnx.helper.make_tensor_value_info("W0", onnx.TensorProto.FLOAT, [1, 4 * H, I])
    with pytest.raises(ValueError, match="the input W \\('W0'\\) of node 'layer0' \\(LSTM\\) is not a constant"):
        rox.load(build(onnx, [node], init[1:], [weights]))
    node, init = layer_node(onnx, "LSTM", 0, "input", I, dtype=np.float16)
    with pytest.raises(ValueError, match="the weights of node 'layer0' \\(LSTM\\) are float16"):
        rox.load(build(onnx, [node], init))
    node, init = layer_node(onnx, "LSTM", 0, "input", I)
    init[1] = onnx.numpy_helper.from_array(np.zeros((1, 4 * H, H + 1), np.float32), "R0")
    with pytest.raises(ValueError, match="the input R of node 'layer0' \\(LSTM\\) has shape \\(1, 24, 7\\)"):
        rox.load(build(onnx, [node], init))


def test_load_refuses_bad_files(onnx: Any, tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="no RNN, LSTM or GRU node \\(its operators: Relu\\)"):
        rox.load(build(onnx, [onnx.helper.make_node("Relu", ["input"], ["y"])], []))
    with pytest.raises(ValueError, match="f: not an ONNX model"):
        rox.load(b"\xff\xfe not protobuf")
    with pytest.raises(TypeError, match="f: expected a path"):
        rox.load(3.5)
    with pytest.raises(TypeError, match="binary file object"):
        rox.load(io.StringIO("text"))
    with pytest.raises(FileNotFoundError):
        rox.load(tmp_path / "missing.onnx")


def test_load_reads_layout_from_the_input_path(onnx: Any) -> None:
    # A Transpose of the input's first two axes before the first layer: batch_first.
    transpose = onnx.helper.make_node("Transpose", ["input"], ["x_tbi"], name="to_time_major", perm=[1, 0, 2])
    node, init = layer_node(onnx, "GRU", 0, "x_tbi", I)
    model = rox.load(build(onnx, [transpose, node], init))
    assert model.batch_first
    transpose = onnx.helper.make_node("Transpose", ["input"], ["x_odd"], name="odd", perm=[2, 1, 0])
    node, init = layer_node(onnx, "GRU", 0, "x_odd", I)
    with pytest.raises(ValueError, match="node 'odd' \\(Transpose\\) with perm=\\[2, 1, 0\\] lies between the graph "
                                         "input and the first layer"):
        rox.load(build(onnx, [transpose, node], init))
    # The input's declared features must be what the first layer reads (here a Concat doubles them).
    concat = onnx.helper.make_node("Concat", ["input", "input"], ["twice"], axis=2)
    node, init = layer_node(onnx, "RNN", 0, "twice", 2 * I)
    with pytest.raises(ValueError, match=f"the graph input 'input' has {I} features per step, but the first layer "
                                         f"node 'layer0' \\(RNN\\) reads {2 * I}"):
        rox.load(build(onnx, [concat, node], init))
    # A node without a name is named by its outputs.
    node, init = layer_node(onnx, "GRU", 0, "input", I, linear_before_reset=0)
    node.name = ""
    with pytest.raises(ValueError, match="the GRU node with outputs \\['Y0', 'Y_h0'\\] has linear_before_reset=0"):
        rox.load(build(onnx, [node], init))


def test_readme_onnx_block_runs(ort: Any, tmp_path: Any, monkeypatch: Any, capsys: Any) -> None:
    readme = (os.path.join(os.path.dirname(__file__), os.pardir, "README.md"))
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("## Deploying with ONNX"):]
    section = section[:section.index("\n## ")]
    blocks = section.split("```python3\n")[1:]
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0].split("```")[0], "README.md", "exec"), {"__name__": "readme"})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("training MSE ") and float(lines[0].split()[-1]) < 0.01
    assert (tmp_path / "lstm.onnx").exists()
