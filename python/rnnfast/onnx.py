"""rnnfast.onnx: export ``rnnfast.RNN``, ``LSTM`` and ``GRU`` to ONNX, and load ONNX recurrent graphs back.

Needs the ``onnx`` package (``pip install 'rnnfast[onnx]'``), imported when a function here is first called, so
``import rnnfast`` and ``import rnnfast.onnx`` work without it.

* ``to_onnx(model, ...)`` returns the ``onnx.ModelProto`` of a model; ``export(model, f, ...)`` writes it to a path
  or a binary file object. The graph has one ONNX ``RNN``, ``LSTM`` or ``GRU`` node per layer.
* ``load(f)`` reads a graph whose recurrent part is a chain of such nodes (as ``export`` and PyTorch's
  ``torch.onnx.export`` of ``torch.nn.RNN`` / ``LSTM`` / ``GRU`` write them) into an rnnfast model.

The exported graph
------------------
Inputs, in this order: ``input`` (``[T, B, I]``, ``[B, T, I]`` for a ``batch_first`` model), then with
``with_lengths=True`` ``lengths`` (int32 ``[B]``, each in ``[1, T]``, fed to every node's ``sequence_lens``),
then with ``with_initial_state=True`` ``h0`` (``[L*D, B, H]``) and, for an LSTM, ``c0`` (``[L*D, B, H]``).
Outputs: ``output`` (``[T, B, D*H]``, ``[B, T, D*H]`` for ``batch_first``), ``h_n`` (``[L*D, B, H]``) and, for an
LSTM, ``c_n`` (``[L*D, B, H]``): the layouts of the model's own call. T and B are symbolic dimensions
(``seq_len`` and ``batch``) unless fixed with the keyword arguments of the same names.

Per layer k, the node's W is ``[D, G*H, I_k]``, R ``[D, G*H, H]`` and B ``[D, 2*G*H]`` (``bias_ih`` then
``bias_hh``; no B without bias), with the gate blocks in ONNX's order: i, o, f, c for the LSTM (rnnfast and
PyTorch store i, f, g, o) and z, r, h for the GRU (rnnfast: r, z, n), exported with ``linear_before_reset=1``,
which is the GRU rnnfast computes. A node's Y ``[T, D, B, H]`` becomes the next layer's input ``[T, B, D*H]``
through a Squeeze (D = 1) or a Transpose and a Reshape (D = 2).

The graph computes the model in evaluation mode (no dropout). With ``lengths``, item b runs its first
``lengths[b]`` steps (the reverse direction from its own last valid step) and ``h_n`` / ``c_n`` are its states after
its last valid step, as in rnnfast; ONNX leaves ``output`` past an item's length to the runtime, and ONNX Runtime
and OpenVINO write zeros there, as rnnfast does (the tests check both).

Runtimes: ONNX Runtime's CPU kernels of these nodes are float32 only (a float64 graph is valid ONNX, and runs on
OpenVINO or ``onnx.reference``). OpenVINO (2026.4, CPU) honours ``sequence_lens`` only when the shapes are static:
for ragged batches there, ``reshape`` the model read by OpenVINO to the batch's shapes, or export with ``seq_len``
and ``batch``; with symbolic shapes it runs every item for all T steps.
"""

from __future__ import annotations

import importlib
import json
import os
import warnings
from typing import IO, Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _checks, _core
from ._rnn import GRU, LSTM, RNN

__all__ = ["DEFAULT_OPSET", "MIN_OPSET", "export", "load", "to_onnx"]

Model = Union[RNN, LSTM, GRU]

# The opset written when none is asked for: supported by every ONNX Runtime and OpenVINO release of recent years.
DEFAULT_OPSET = 17
# Squeeze with its axes as an input, which the graph uses, appeared in opset 13.
MIN_OPSET = 13

_INSTALL_HINT = "pip install 'rnnfast[onnx]'"
_OP_TYPES = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}
_KINDS = {op: kind for kind, op in _OP_TYPES.items()}
_GATES = {"rnn": 1, "lstm": 4, "gru": 3}
# Gate blocks in ONNX's order, by their index in rnnfast's (PyTorch's) order: LSTM i f g o -> i o f c, GRU
# r z n -> z r h; and back.
_TO_ONNX_ORDER = {"rnn": (0,), "lstm": (0, 3, 1, 2), "gru": (1, 0, 2)}
_FROM_ONNX_ORDER = {"rnn": (0,), "lstm": (0, 2, 3, 1), "gru": (1, 0, 2)}
# The activations rnnfast computes, per direction, as ONNX names them (compared without case).
_LSTM_ACTIVATIONS = ("sigmoid", "tanh", "tanh")
_GRU_ACTIVATIONS = ("sigmoid", "tanh")
_RNN_ACTIVATIONS = {"tanh": "tanh", "relu": "relu"}
# Where export records the configuration the graph does not carry (dropout) and load reads it back.
_CONFIG_KEY = "rnnfast.config"


def _import_onnx() -> Any:
    try:
        return importlib.import_module("onnx")
    except ImportError as exc:
        raise ImportError(f"rnnfast.onnx needs the onnx package, which is not installed: {_INSTALL_HINT}") from exc


def _numpy_helper() -> Any:
    _import_onnx()
    return importlib.import_module("onnx.numpy_helper")


def _kind_of(model: Any) -> str:
    for cls, kind in ((RNN, "rnn"), (LSTM, "lstm"), (GRU, "gru")):
        if isinstance(model, cls):
            return kind
    raise TypeError(f"model: expected an rnnfast.RNN, rnnfast.LSTM or rnnfast.GRU, got {type(model).__name__}")


def _reorder(a: np.ndarray, order: Sequence[int]) -> np.ndarray:
    """The G row blocks of ``a`` (``[G*H, ...]`` or ``[G*H]``) in the given order (a new array)."""
    blocks = np.split(a, len(order), axis=0)
    return np.concatenate([blocks[i] for i in order], axis=0)


def _opset_version(onnx: Any, opset: Any) -> int:
    newest = int(onnx.defs.onnx_opset_version())
    if opset is None:
        return min(DEFAULT_OPSET, newest)
    if isinstance(opset, (bool, np.bool_)) or not isinstance(opset, (int, np.integer)):
        raise TypeError(f"opset: expected None or an integer, got {opset!r} of type {type(opset).__name__}")
    if not MIN_OPSET <= opset <= newest:
        raise ValueError(f"opset: expected None or an integer in [{MIN_OPSET}, {newest}] (the newest this onnx "
                         f"{onnx.__version__} knows), got {opset}")
    return int(opset)


def _optional_dim(name: str, value: Any) -> Optional[int]:
    return None if value is None else _checks.positive_int(name, value)


# ---------------------------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------------------------

def to_onnx(model: Model, *, with_lengths: bool = False, with_initial_state: bool = False,
            opset: Optional[int] = None, seq_len: Optional[int] = None, batch: Optional[int] = None) -> Any:
    """The ONNX graph of ``model`` as an ``onnx.ModelProto``, computing ``model(x, h0, lengths)`` in eval mode.

    Parameters
    ----------
    model : rnnfast.RNN, rnnfast.LSTM (without ``proj_size``) or rnnfast.GRU
        Any number of layers, bidirectional or not, ``batch_first`` or not, with or without bias, float32 or
        float64 (the graph's tensors have the model's dtype).
    with_lengths : bool, keyword-only
        Add the input ``lengths`` (int32 ``[B]``, each in ``[1, T]``): the valid steps of each item.
    with_initial_state : bool, keyword-only
        Add the inputs ``h0`` (and ``c0`` for an LSTM), ``[L*D, B, H]``; without them the states start at zero.
    opset : int or None, keyword-only
        The ONNX opset to write, in ``[MIN_OPSET, onnx.defs.onnx_opset_version()]``; None means ``DEFAULT_OPSET``.
    seq_len, batch : int or None, keyword-only
        Fix T / B in the graph's shapes (some runtimes plan better for fixed shapes); None leaves them symbolic.

    The inputs and outputs are described in the module's docstring. The model records its producer (``rnnfast``
    and ``rnnfast.__version__``) and, in ``metadata_props``, the model's configuration as JSON under
    ``"rnnfast.config"`` (``load`` reads ``dropout`` back from it, the one setting the graph does not carry).
    Raises TypeError for another kind of model and ValueError for an LSTM with ``proj_size > 0`` (ONNX's LSTM has
    no projection).
    """
    onnx = _import_onnx()
    numpy_helper = _numpy_helper()
    helper = onnx.helper
    kind = _kind_of(model)
    with_lengths = _checks.boolean("with_lengths", with_lengths)
    with_initial_state = _checks.boolean("with_initial_state", with_initial_state)
    opset_version = _opset_version(onnx, opset)
    t_dim: Union[int, str] = _optional_dim("seq_len", seq_len) or "seq_len"
    b_dim: Union[int, str] = _optional_dim("batch", batch) or "batch"
    if kind == "lstm" and model.proj_size > 0:
        raise ValueError(f"model: an LSTM with proj_size={model.proj_size} cannot be written as ONNX LSTM nodes "
                         "(ONNX's LSTM has no projection of the hidden state); export a model with proj_size=0")

    op_type = _OP_TYPES[kind]
    order = _TO_ONNX_ORDER[kind]
    H, L = model.hidden_size, model.num_layers
    D = 2 if model.bidirectional else 1
    dtype = np.dtype(model.dtype)
    elem_type = onnx.TensorProto.FLOAT if dtype == np.float32 else onnx.TensorProto.DOUBLE
    suffixes = ("", "_reverse")[:D]
    params = model.state_dict()
    state_names = ["h", "c"] if kind == "lstm" else ["h"]

    nodes: List[Any] = []
    initializers: List[Any] = []

    def constant(name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    layer_input = "input"
    if model.batch_first:
        nodes.append(helper.make_node("Transpose", ["input"], ["input_time_major"], name="input_to_time_major",
                                      perm=[1, 0, 2]))
        layer_input = "input_time_major"
    if D == 1:
        constant("direction_axis", np.array([1], np.int64))
    else:
        constant("merge_directions", np.array([0, 0, -1], np.int64))
    if with_initial_state and L > 1:
        constant("state_axis", np.array([0], np.int64))
    final_states: Dict[str, List[str]] = {s: [] for s in state_names}
    for k in range(L):
        w = np.stack([_reorder(params[f"weight_ih_l{k}{s}"], order) for s in suffixes])
        r = np.stack([_reorder(params[f"weight_hh_l{k}{s}"], order) for s in suffixes])
        inputs = [layer_input, constant(f"W_l{k}", w), constant(f"R_l{k}", r)]
        if model.bias:
            b = np.stack([np.concatenate([_reorder(params[f"bias_ih_l{k}{s}"], order),
                                          _reorder(params[f"bias_hh_l{k}{s}"], order)]) for s in suffixes])
            inputs.append(constant(f"B_l{k}", b))
        else:
            inputs.append("")
        inputs.append("lengths" if with_lengths else "")
        for s in state_names:
            if not with_initial_state:
                inputs.append("")
            elif L == 1:
                inputs.append(f"{s}0")
            else:  # this layer's rows of h0 / c0
                nodes.append(helper.make_node(
                    "Slice", [f"{s}0", constant(f"{s}0_start_l{k}", np.array([k * D], np.int64)),
                              constant(f"{s}0_end_l{k}", np.array([(k + 1) * D], np.int64)), "state_axis"],
                    [f"{s}0_l{k}"], name=f"{s}0_slice_l{k}"))
                inputs.append(f"{s}0_l{k}")
        while inputs[-1] == "":  # trailing optional inputs are left out
            inputs.pop()
        attributes: Dict[str, Any] = {"hidden_size": H, "direction": "bidirectional" if D == 2 else "forward"}
        if kind == "rnn":
            attributes["activations"] = [{"tanh": "Tanh", "relu": "Relu"}[model.nonlinearity]] * D
        elif kind == "gru":
            attributes["linear_before_reset"] = 1
        states = ["h_n" if L == 1 else f"h_n_l{k}"]
        if kind == "lstm":
            states.append("c_n" if L == 1 else f"c_n_l{k}")
        nodes.append(helper.make_node(op_type, inputs, [f"Y_l{k}", *states], name=f"{kind}_l{k}", **attributes))
        for s, name in zip(state_names, states):
            final_states[s].append(name)

        last = k == L - 1
        layer_output = "output" if last and not model.batch_first else ("output_time_major" if last else f"out_l{k}")
        if D == 1:  # Y [T, 1, B, H] -> [T, B, H]
            nodes.append(helper.make_node("Squeeze", [f"Y_l{k}", "direction_axis"], [layer_output],
                                          name=f"merge_directions_l{k}"))
        else:  # Y [T, 2, B, H] -> [T, B, 2, H] -> [T, B, 2H]
            nodes.append(helper.make_node("Transpose", [f"Y_l{k}"], [f"Y_tbdh_l{k}"], name=f"transpose_l{k}",
                                          perm=[0, 2, 1, 3]))
            nodes.append(helper.make_node("Reshape", [f"Y_tbdh_l{k}", "merge_directions"], [layer_output],
                                          name=f"merge_directions_l{k}"))
        layer_input = layer_output
    if model.batch_first:
        nodes.append(helper.make_node("Transpose", ["output_time_major"], ["output"], name="output_to_batch_first",
                                      perm=[1, 0, 2]))
    if L > 1:
        for s in state_names:
            nodes.append(helper.make_node("Concat", final_states[s], [f"{s}_n"], name=f"{s}_n_concat", axis=0))

    sequence_dims = [b_dim, t_dim] if model.batch_first else [t_dim, b_dim]
    state_dims = [L * D, b_dim, H]
    graph_inputs = [helper.make_tensor_value_info("input", elem_type, [*sequence_dims, model.input_size])]
    if with_lengths:
        graph_inputs.append(helper.make_tensor_value_info("lengths", onnx.TensorProto.INT32, [b_dim]))
    if with_initial_state:
        graph_inputs += [helper.make_tensor_value_info(f"{s}0", elem_type, state_dims) for s in state_names]
    graph_outputs = [helper.make_tensor_value_info("output", elem_type, [*sequence_dims, D * H])]
    graph_outputs += [helper.make_tensor_value_info(f"{s}_n", elem_type, state_dims) for s in state_names]
    graph = helper.make_graph(nodes, f"rnnfast_{kind}", graph_inputs, graph_outputs, initializer=initializers)
    graph.doc_string = f"rnnfast.{repr(model)}, evaluation mode"

    opset_imports = [helper.make_opsetid("", opset_version)]
    proto = helper.make_model(graph, producer_name="rnnfast", producer_version=str(_core.__version__),
                              opset_imports=opset_imports)
    # The oldest IR version that holds this opset, so that runtimes older than this onnx package read the file.
    proto.ir_version = int(helper.find_min_ir_version_for(opset_imports))
    proto.doc_string = f"rnnfast.{repr(model)} exported by rnnfast {_core.__version__}"
    config = {"kind": _OP_TYPES[kind], "dropout": float(model.dropout), "batch_first": bool(model.batch_first)}
    helper.set_model_props(proto, {_CONFIG_KEY: json.dumps(config, sort_keys=True)})
    return proto


def export(model: Model, f: Union[str, "os.PathLike[str]", IO[bytes]], *, with_lengths: bool = False,
           with_initial_state: bool = False, opset: Optional[int] = None, seq_len: Optional[int] = None,
           batch: Optional[int] = None) -> None:
    """Write the ONNX graph of ``model`` to ``f``: a path (str or os.PathLike) or a binary file object.

    The keyword arguments and the graph are those of ``to_onnx``. ONNX Runtime then runs it as::

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        output, h_n = session.run(None, {"input": x})      # LSTM: output, h_n, c_n
    """
    if not isinstance(f, (str, os.PathLike)) and not callable(getattr(f, "write", None)):
        raise TypeError(f"f: expected a path (str or os.PathLike) or a binary file object, got {type(f).__name__}")
    data = to_onnx(model, with_lengths=with_lengths, with_initial_state=with_initial_state, opset=opset,
                   seq_len=seq_len, batch=batch).SerializeToString()
    if isinstance(f, (str, os.PathLike)):
        with open(f, "wb") as out:
            out.write(data)
        return
    try:
        f.write(data)
    except TypeError:  # a text file object
        raise TypeError(f"f: expected a binary file object (opened with 'wb'), got {type(f).__name__}, which "
                        "refused bytes") from None


# ---------------------------------------------------------------------------------------------------------------------
# Load
# ---------------------------------------------------------------------------------------------------------------------

# Operators that only move data between a graph input or a layer's output and the next layer's input. Only the
# inputs listed (their data inputs) can carry data; the others are shapes, axes or indices.
_DATA_MOVEMENT: Dict[str, Optional[Tuple[int, ...]]] = {
    "Identity": (0,), "Cast": (0,), "CastLike": (0,), "Transpose": (0,), "Reshape": (0,), "Squeeze": (0,),
    "Unsqueeze": (0,), "Flatten": (0,), "Slice": (0,), "Dropout": (0,), "Concat": None,
}
# Operators that read only the shape of their input.
_SHAPE_ONLY = ("Shape", "Size")


def _describe(node: Any) -> str:
    if node.name:
        return f"node {node.name!r} ({node.op_type})"
    return f"the {node.op_type} node with outputs {list(node.output)}"


class _Graph:
    """What load needs from a graph: the producers of values, and the values computable from constants."""

    def __init__(self, onnx: Any, graph: Any) -> None:
        self._onnx = onnx
        self._numpy_helper = _numpy_helper()
        self.initializers = {t.name: t for t in graph.initializer}
        self.data_inputs = [i.name for i in graph.input if i.name not in self.initializers]
        self.producers: Dict[str, Any] = {}
        self.output_index: Dict[str, int] = {}
        for node in graph.node:
            for i, name in enumerate(node.output):
                if name:
                    self.producers[name] = node
                    self.output_index[name] = i
        self._constants: Dict[str, Optional[np.ndarray]] = {}

    def attributes(self, node: Any) -> Dict[str, Any]:
        values = {}
        for a in node.attribute:
            value = self._onnx.helper.get_attribute_value(a)
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            elif isinstance(value, list):
                value = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
            values[a.name] = value
        return values

    def constant(self, name: str) -> Optional[np.ndarray]:
        """The value of ``name`` when it is an initializer, a Constant, or computed from those by a few data
        movement operators (as graphs exported without constant folding compute weights); None otherwise."""
        if name in self._constants:
            return self._constants[name]
        value: Optional[np.ndarray] = None
        if name in self.initializers:
            value = np.asarray(self._numpy_helper.to_array(self.initializers[name]))
        elif name in self.producers:
            node = self.producers[name]
            try:
                value = self._fold(node, self.output_index[name])
            except (ValueError, IndexError, TypeError, KeyError):
                value = None
        self._constants[name] = value
        return value

    def _fold(self, node: Any, output: int) -> Optional[np.ndarray]:
        """Output ``output`` of ``node`` where its inputs are constants and it is one of the operators that graphs
        use to arrange weights; None otherwise."""
        if output != 0:  # every operator folded here has one output
            return None
        op, attrs = node.op_type, self.attributes(node)
        if op == "Constant":
            if "value" in attrs:
                return np.asarray(self._numpy_helper.to_array(attrs["value"]))
            for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                               ("value_ints", np.int64)):
                if key in attrs:
                    return np.asarray(attrs[key], dtype=dtype)
            return None
        args: List[Optional[np.ndarray]] = [self.constant(n) if n else None for n in node.input]
        if not args or args[0] is None:
            return None
        x = args[0]
        if op == "Identity":
            return x
        if op == "Cast":
            return x.astype(self._onnx.helper.tensor_dtype_to_np_dtype(attrs["to"]))
        if op == "Transpose":
            return np.transpose(x, attrs.get("perm"))
        if op == "Concat":
            if any(a is None for a in args):
                return None
            return np.concatenate([a for a in args if a is not None], axis=attrs["axis"])
        if op in ("Unsqueeze", "Squeeze"):
            axes = attrs.get("axes") if len(args) < 2 or args[1] is None else args[1].tolist()
            if op == "Squeeze":
                return np.squeeze(x, axis=None if axes is None else tuple(int(a) for a in axes))
            if axes is None:
                return None
            out = x
            for axis in sorted(int(a) % (x.ndim + len(axes)) for a in axes):
                out = np.expand_dims(out, axis)
            return out
        if op == "Reshape":
            if len(args) < 2 or args[1] is None:
                return None
            shape = [int(s) for s in args[1]]
            if not attrs.get("allowzero", 0):
                shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
            return x.reshape(shape)
        if op == "Slice":
            if len(args) >= 3 and args[1] is not None and args[2] is not None:
                starts, ends = args[1].tolist(), args[2].tolist()
                axes = args[3].tolist() if len(args) > 3 and args[3] is not None else list(range(len(starts)))
                steps = args[4].tolist() if len(args) > 4 and args[4] is not None else [1] * len(starts)
            elif "starts" in attrs:
                starts, ends = attrs["starts"], attrs["ends"]
                axes = attrs.get("axes", list(range(len(starts))))
                steps = [1] * len(starts)
            else:
                return None
            index = [slice(None)] * x.ndim
            for start, end, axis, step in zip(starts, ends, axes, steps):
                index[int(axis)] = slice(int(start), int(end), int(step))
            return x[tuple(index)]
        return None

    def sources(self, name: str, memo: Dict[str, Tuple[frozenset[str], Tuple[Any, ...]]],
                reader: Any) -> Tuple[frozenset[str], Tuple[Any, ...]]:
        """The graph inputs and recurrent-node outputs whose data flows into ``name`` through data movement
        operators, and the Transpose nodes on the way; a ValueError names any other operator on the way."""
        if name in memo:
            return memo[name]
        node = self.producers.get(name)
        result: Tuple[frozenset[str], Tuple[Any, ...]]
        if name in self.data_inputs or (node is not None and node.op_type in _KINDS and node.domain in ("",
                                                                                                     "ai.onnx")):
            result = (frozenset([name]), ())
        elif node is None or node.op_type in _SHAPE_ONLY or node.op_type == "Constant":
            result = (frozenset(), ())
        else:
            moves_data = node.op_type in _DATA_MOVEMENT and node.domain in ("", "ai.onnx")
            data_inputs = _DATA_MOVEMENT[node.op_type] if moves_data else None
            indices: Sequence[int] = range(len(node.input)) if data_inputs is None else data_inputs
            found: set[str] = set()
            transposes: List[Any] = []
            for i in indices:
                if i < len(node.input) and node.input[i]:
                    s, t = self.sources(node.input[i], memo, reader)
                    found |= s
                    transposes += t
            if not moves_data and found:
                raise ValueError(
                    f"f: {_describe(node)} feeds the input X of {_describe(reader)}: between the graph input and "
                    "the first layer and between layers rnnfast.onnx.load reads only data movement ("
                    + ", ".join(sorted(_DATA_MOVEMENT)) + ")")
            if node.op_type == "Transpose":
                transposes.append(node)
            result = (frozenset(found), tuple(transposes))
        memo[name] = result
        return result


def _read_model(onnx: Any, f: Any) -> Any:
    if isinstance(f, onnx.ModelProto):
        return f
    if isinstance(f, (bytes, bytearray, memoryview)):
        data = bytes(f)
    elif isinstance(f, (str, os.PathLike)):
        with open(os.fspath(f), "rb") as file:
            data = file.read()
    elif callable(getattr(f, "read", None)):
        data = f.read()
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"f: expected a binary file object (opened with 'rb'), got {type(f).__name__} that "
                            f"reads {type(data).__name__}")
    else:
        raise TypeError(f"f: expected a path (str or os.PathLike), a binary file object, bytes or an "
                        f"onnx.ModelProto, got {type(f).__name__}")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(bytes(data))
    except Exception as exc:  # protobuf's DecodeError
        raise ValueError(f"f: not an ONNX model ({type(exc).__name__}: {exc})") from None
    if isinstance(f, (str, os.PathLike)) and any(
            t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        onnx.external_data_helper.load_external_data_for_model(proto, os.path.dirname(os.fspath(f)) or ".")
    return proto


def _check_node(graph: _Graph, node: Any, kind: str) -> Dict[str, Any]:
    """The node's attributes, checked to be what rnnfast computes; a ValueError names the node and attribute."""
    attrs = graph.attributes(node)
    where = _describe(node)
    known = {"hidden_size", "direction", "activations", "activation_alpha", "activation_beta", "clip", "layout"}
    known |= {"lstm": {"input_forget"}, "gru": {"linear_before_reset"}, "rnn": set()}[kind]
    for name in attrs:
        if name not in known:
            raise ValueError(f"f: {where} has the attribute {name}={attrs[name]!r}, which rnnfast cannot represent")
    if "clip" in attrs:
        raise ValueError(f"f: {where} has clip={attrs['clip']} (cell clipping), which rnnfast cannot represent")
    for name in ("activation_alpha", "activation_beta"):
        if attrs.get(name):
            raise ValueError(f"f: {where} has {name}={attrs[name]}, which rnnfast cannot represent")
    if attrs.get("layout", 0) != 0:
        raise ValueError(f"f: {where} has layout={attrs['layout']} (batch-major node tensors), which "
                         "rnnfast.onnx.load does not read; expected layout=0")
    direction = attrs.get("direction", "forward")
    if direction not in ("forward", "bidirectional"):
        raise ValueError(f"f: {where} has direction={direction!r}, which rnnfast cannot represent; expected "
                         "'forward' or 'bidirectional'")
    D = 2 if direction == "bidirectional" else 1
    activations = [str(a).lower() for a in attrs.get("activations", [])]
    if kind == "lstm":
        if attrs.get("input_forget", 0) != 0:
            raise ValueError(f"f: {where} has input_forget={attrs['input_forget']} (coupled input and forget "
                             "gates), which rnnfast cannot represent; expected 0")
        if len(node.input) > 7 and node.input[7]:
            raise ValueError(f"f: {where} has peephole weights (input P {node.input[7]!r}), which rnnfast cannot "
                             "represent")
        if activations and activations != list(_LSTM_ACTIVATIONS) * D:
            raise ValueError(f"f: {where} has activations={attrs['activations']}, which rnnfast cannot represent; "
                             f"expected {['Sigmoid', 'Tanh', 'Tanh'] * D}")
    elif kind == "gru":
        if attrs.get("linear_before_reset", 0) != 1:
            raise ValueError(f"f: {where} has linear_before_reset={attrs.get('linear_before_reset', 0)} (the reset "
                             "gate applied before the recurrent product), which rnnfast cannot represent; rnnfast's "
                             "GRU (and PyTorch's) is linear_before_reset=1")
        if activations and activations != list(_GRU_ACTIVATIONS) * D:
            raise ValueError(f"f: {where} has activations={attrs['activations']}, which rnnfast cannot represent; "
                             f"expected {['Sigmoid', 'Tanh'] * D}")
    else:
        activations = activations or ["tanh"] * D
        if len(activations) != D or activations[0] not in _RNN_ACTIVATIONS or len(set(activations)) != 1:
            raise ValueError(f"f: {where} has activations={attrs.get('activations')}, which rnnfast cannot "
                             f"represent; expected {['Tanh'] * D} or {['Relu'] * D}")
    attrs["_directions"] = D
    attrs["_nonlinearity"] = activations[0] if kind == "rnn" else None
    return attrs


def _chain(graph: _Graph, nodes: List[Any]) -> Tuple[List[Any], str, Tuple[Any, ...]]:
    """The recurrent nodes in layer order (the first reads a graph input, each next one the previous one's Y),
    the graph input the first reads, and the Transpose nodes on the way from it."""
    memo: Dict[str, Tuple[frozenset[str], Tuple[Any, ...]]] = {}
    first: Optional[Tuple[Any, str, Tuple[Any, ...]]] = None
    successor: Dict[int, Any] = {}
    for node in nodes:
        if not node.input or not node.input[0]:
            raise ValueError(f"f: {_describe(node)} has no input X")
        found, transposes = graph.sources(node.input[0], memo, node)
        if len(found) != 1:
            raise ValueError(f"f: the input X of {_describe(node)} comes from {sorted(found) or 'constants only'}; "
                             "expected one graph input or the output Y of one recurrent node")
        (source,) = found
        if source in graph.data_inputs:
            if first is not None:
                raise ValueError(f"f: {_describe(first[0])} and {_describe(node)} both read a graph input: the "
                                 "recurrent nodes are not one chain of layers")
            first = (node, source, transposes)
            continue
        previous = graph.producers[source]
        if graph.output_index[source] != 0:
            raise ValueError(f"f: {_describe(node)} reads {source!r}, the final state of {_describe(previous)}, "
                             "rather than its output sequence Y; rnnfast's layers read the previous layer's output")
        if id(previous) in successor:
            raise ValueError(f"f: {_describe(successor[id(previous)])} and {_describe(node)} both read the output of "
                             f"{_describe(previous)}: the recurrent nodes are not one chain of layers")
        successor[id(previous)] = node
    if first is None:
        raise ValueError("f: no recurrent node reads a graph input")
    chain = [first[0]]
    while id(chain[-1]) in successor:
        chain.append(successor[id(chain[-1])])
    if len(chain) != len(nodes):
        raise ValueError(f"f: the recurrent nodes are not one chain of layers: {len(nodes)} nodes, {len(chain)} "
                         "of them in the chain from the graph input")
    return chain, first[1], first[2]


def _batch_first(graph: _Graph, transposes: Tuple[Any, ...]) -> bool:
    """Whether the graph input reaches the first layer through a Transpose of its first two axes."""
    batch_first = False
    for transpose in transposes:
        perm = list(graph.attributes(transpose).get("perm", []))
        if perm == [1, 0, 2]:
            batch_first = not batch_first
        elif perm != [0, 1, 2]:
            raise ValueError(f"f: {_describe(transpose)} with perm={perm} lies between the graph input and the "
                             "first layer; rnnfast reads [T, B, I] or, with batch_first, [B, T, I] (perm [1, 0, 2])")
    return batch_first


def _layer_weights(graph: _Graph, node: Any) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """The node's W, R and B (None where it has no B), which must be constants."""
    weights: List[Optional[np.ndarray]] = []
    for index, label in ((1, "W"), (2, "R"), (3, "B")):
        name = node.input[index] if len(node.input) > index else ""
        if not name:
            if label != "B":
                raise ValueError(f"f: {_describe(node)} has no input {label}")
            weights.append(None)
            continue
        value = graph.constant(name)
        if value is None:
            raise ValueError(f"f: the input {label} ({name!r}) of {_describe(node)} is not a constant (an "
                             "initializer, a Constant node or data movement of those); rnnfast needs the weights")
        weights.append(value)
    w, r, b = weights
    assert w is not None and r is not None
    return w, r, b


def _declared_features(graph: Any, name: str) -> Optional[int]:
    """The last dimension of the graph input ``name`` where the graph declares it, else None."""
    for value in graph.input:
        if value.name == name and value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            dims = value.type.tensor_type.shape.dim
            if dims and dims[-1].HasField("dim_value"):
                return int(dims[-1].dim_value)
    return None


def load(f: Union[str, "os.PathLike[str]", Any]) -> Model:
    """An rnnfast model computing the recurrent layers of an ONNX graph.

    Parameters
    ----------
    f : a path (str or os.PathLike), a binary file object, the file's bytes, or an ``onnx.ModelProto``

    The graph's recurrent part must be a chain of ONNX ``RNN``, ``LSTM`` or ``GRU`` nodes (one per layer, all of
    one kind, hidden size and direction), as ``export`` and ``torch.onnx.export`` of ``torch.nn.RNN`` / ``LSTM`` /
    ``GRU`` write them: the first node reads a graph input and each next node the previous node's output Y,
    through data movement only (Transpose, Reshape, Squeeze, Concat, Slice, ...). Weights come from initializers,
    Constant nodes, or data movement of those. What follows the last layer (a classifier, say) is not part of the
    returned model; the states' initial values and ``sequence_lens`` are inputs of the model's call instead.

    Returns an ``rnnfast.RNN`` (tanh or relu), ``LSTM`` or ``GRU`` of the weights' dtype (float32 or float64), with
    ``bias=False`` when no node has a B input, ``batch_first=True`` when the graph input reaches the first node
    through a Transpose of its first two axes (as ``torch.onnx.export`` writes a ``batch_first`` model), and the
    ``dropout`` that ``export`` recorded (else 0). The model is in training mode, as a new one; ``eval()`` it for
    inference with dropout.

    Raises ValueError, naming the node and attribute, for what rnnfast cannot represent: ``clip``,
    ``input_forget=1``, peepholes (LSTM input P), activations other than Tanh / Relu (RNN), Sigmoid, Tanh, Tanh
    (LSTM), Sigmoid, Tanh (GRU), ``linear_before_reset=0`` (GRU), ``direction="reverse"``, ``layout=1``, mixed
    hidden sizes, directions, nonlinearities or kinds, other operators between the layers, and weights that are
    not constants.
    """
    onnx = _import_onnx()
    proto = _read_model(onnx, f)
    graph = _Graph(onnx, proto.graph)
    nodes = [n for n in proto.graph.node if n.op_type in _KINDS and n.domain in ("", "ai.onnx")]
    if not nodes:
        ops = sorted({n.op_type for n in proto.graph.node})
        raise ValueError(f"f: the graph has no RNN, LSTM or GRU node (its operators: {', '.join(ops) or 'none'})")
    first_kind = nodes[0].op_type
    for node in nodes[1:]:
        if node.op_type != first_kind:
            raise ValueError(f"f: mixed kinds of recurrent nodes: {_describe(nodes[0])} and {_describe(node)}; an "
                             "rnnfast model has one kind")
    kind = _KINDS[first_kind]

    chain, source, transposes = _chain(graph, nodes)
    batch_first = _batch_first(graph, transposes)
    G = _GATES[kind]
    order = _FROM_ONNX_ORDER[kind]
    reference: Optional[Dict[str, Any]] = None
    layers: List[Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]] = []
    for k, node in enumerate(chain):
        attrs = _check_node(graph, node, kind)
        where = _describe(node)
        w, r, b = _layer_weights(graph, node)
        D = attrs["_directions"]
        H = int(attrs["hidden_size"]) if "hidden_size" in attrs else int(r.shape[-1])
        if w.dtype not in (np.float32, np.float64):
            raise ValueError(f"f: the weights of {where} are {w.dtype}; rnnfast models are float32 or float64")
        for label, value, shape in (("W", w, (D, G * H, w.shape[-1])), ("R", r, (D, G * H, H)),
                                    ("B", b, (D, 2 * G * H))):
            if value is not None and (value.shape != shape or value.dtype != w.dtype):
                raise ValueError(f"f: the input {label} of {where} has shape {value.shape} ({value.dtype}); expected "
                                 f"{shape} ({w.dtype}) for hidden_size={H} and {D} direction(s)")
        summary = {"hidden_size": H, "direction": attrs.get("direction", "forward"), "dtype": w.dtype,
                   "activations": attrs["_nonlinearity"]}
        if reference is None:
            reference = summary
        else:
            for key in summary:
                if summary[key] != reference[key]:
                    label = {"hidden_size": "hidden sizes", "direction": "directions", "dtype": "dtypes",
                             "activations": "activations"}[key]
                    raise ValueError(f"f: mixed {label}: {where} has {key}={summary[key]}, the first layer "
                                     f"{reference[key]}; an rnnfast model has one")
            if w.shape[-1] != D * H:
                raise ValueError(f"f: {where} reads {w.shape[-1]} features per step (W {w.shape}); layer {k} of "
                                 f"an rnnfast model reads the previous layer's D*H = {D * H}")
        layers.append((w, r, b))

    assert reference is not None
    input_size = int(layers[0][0].shape[-1])
    declared = _declared_features(proto.graph, source)
    if declared is not None and declared != input_size:
        raise ValueError(f"f: the graph input {source!r} has {declared} features per step, but the first layer "
                         f"{_describe(chain[0])} reads {input_size} (W {layers[0][0].shape})")
    D = 2 if reference["direction"] == "bidirectional" else 1
    H = reference["hidden_size"]
    bias = any(b is not None for _, _, b in layers)
    kwargs: Dict[str, Any] = dict(num_layers=len(chain), bias=bias, batch_first=batch_first, bidirectional=D == 2,
                                  dtype=reference["dtype"], dropout=_recorded_dropout(proto), seed=0)
    if kind == "rnn":
        kwargs["nonlinearity"] = reference["activations"]
    cls = {"rnn": RNN, "lstm": LSTM, "gru": GRU}[kind]
    with warnings.catch_warnings():  # the exported model's dropout with one layer warned when it was made
        warnings.filterwarnings("ignore", message="dropout:", category=UserWarning)
        model: Model = cls(input_size, H, **kwargs)
    state: Dict[str, np.ndarray] = {}
    for k, (w, r, b) in enumerate(layers):
        for d, suffix in enumerate(("", "_reverse")[:D]):
            state[f"weight_ih_l{k}{suffix}"] = _reorder(w[d], order)
            state[f"weight_hh_l{k}{suffix}"] = _reorder(r[d], order)
            if bias:
                both = b[d] if b is not None else np.zeros(2 * G * H, w.dtype)
                state[f"bias_ih_l{k}{suffix}"] = _reorder(both[:G * H], order)
                state[f"bias_hh_l{k}{suffix}"] = _reorder(both[G * H:], order)
    model.load_state_dict(state)
    return model


def _recorded_dropout(proto: Any) -> float:
    """The dropout ``export`` recorded in the model's metadata, or 0."""
    for prop in proto.metadata_props:
        if prop.key == _CONFIG_KEY:
            try:
                value = json.loads(prop.value).get("dropout", 0.0)
                dropout = float(value)
            except (ValueError, TypeError, AttributeError):
                return 0.0
            return dropout if 0.0 <= dropout <= 1.0 else 0.0
    return 0.0
