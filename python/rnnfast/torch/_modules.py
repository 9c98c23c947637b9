"""The six modules: ``torch.nn``'s classes whose forward runs the kernels (``_Shared``: what they have in common)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .._cell import RNNCell as _FastCell
from .._gated_cell import GRUCell as _FastGRUCell
from .._gated_cell import LSTMCell as _FastLSTMCell
from .._rnn import GRU as _FastGRU
from .._rnn import LSTM as _FastLSTM
from .._rnn import RNN as _FastRNN
from .._rnn import _Stack as _FastStack
from ._functions import _has_shape, _run_cell, _run_stack, _state_pair
from ._runner import _fast_context_ok, _fast_dtype, _FastCellModel, _FastModel, _NUMPY_DTYPES, _Runner


class _Shared:
    """What every module here has in common: the rnnfast runners, the parameter-buffer sharing, and the forward
    of a stack (``_rnnfast_stack_forward``) or of a cell (``_rnnfast_cell_forward``) for any cell kind."""

    _rnnfast_runners: Dict[Any, _Runner]
    _rnnfast_kind = "rnn"  # the cell kind: "rnn", "lstm" or "gru"
    _rnnfast_is_stack = True  # a stack (torch.nn.RNNBase) rather than a cell

    def _rnnfast_names(self) -> List[str]:
        """The names of the weights, in the order of the rnnfast model's (and of ``_flat_weights``)."""
        this: Any = self
        if self._rnnfast_is_stack:
            return list(this._flat_weights_names)
        return ["weight_ih", "weight_hh", "bias_ih", "bias_hh"] if this.bias else ["weight_ih", "weight_hh"]

    def _rnnfast_new_model(self, key: Any, dtype: Any) -> Tuple[_FastModel, List[str]]:
        """The rnnfast model for ``key`` and the name of each of its parameters, in ``_rnnfast_names`` order
        (or that of the key's slice of them)."""
        if self._rnnfast_is_stack:
            return self._rnnfast_stack_model(key, dtype)
        return self._rnnfast_cell_model(dtype)

    def _rnnfast_supported(self) -> bool:
        """Whether rnnfast can build this configuration (else PyTorch's implementation always runs)."""
        if self._rnnfast_is_stack:
            return True  # torch.nn.RNNBase refuses what rnnfast cannot build
        # torch.nn's cells also take zero sizes (and RNNCell any nonlinearity until forward refuses it).
        this: Any = self
        return this.input_size > 0 and this.hidden_size > 0 and (
            self._rnnfast_kind != "rnn" or this.nonlinearity in ("tanh", "relu"))

    def _rnnfast_weights(self) -> List[torch.Tensor]:
        """The weights as the module holds them now: its parameters, or what replaced them (``functional_call``,
        parametrizations, an assigned tensor)."""
        params = self.__dict__["_parameters"]
        weights = []
        for name in self._rnnfast_names():
            w = params.get(name)
            weights.append(w if w is not None else getattr(self, name))
        return weights

    def _rnnfast_runner(self, key: Any, dtype: torch.dtype) -> _Runner:
        runners = self.__dict__.get("_rnnfast_runners")
        if runners is None:
            runners = self.__dict__["_rnnfast_runners"] = {}
        runner = runners.get((key, dtype))
        if runner is None:
            model, names = self._rnnfast_new_model(key, _NUMPY_DTYPES[dtype])
            model.eval()
            runner = runners[(key, dtype)] = _Runner(model, names)
        return runner

    def _rnnfast_full_runner(self, weights: Sequence[torch.Tensor], dtype: Optional[torch.dtype]
                             ) -> Optional[_Runner]:
        """The full model's runner for these weights and this input dtype (None: not a fast-path case): the one
        whose buffer they are, else a scratch one (for tensors given by ``functional_call``, say) that they are
        copied into."""
        if dtype is None or not self._rnnfast_supported():
            return None
        runners = self.__dict__.get("_rnnfast_runners")
        runner = None if runners is None else runners.get(("all", dtype))
        if runner is not None and runner.backs_params and runner.holds(weights):
            return runner  # the common case, checked cheaply
        if _fast_dtype(weights) != dtype:
            return None
        runner = self._rnnfast_runner("all", dtype)
        if runner.backs_params:  # and these weights are not its views
            runner = self._rnnfast_runner("scratch", dtype)
        return runner

    def _rnnfast_share(self) -> None:
        """Make the parameters views of the full model's rnnfast buffer, where they can be (CPU, float32 or
        float64, not in shared memory); otherwise leave them alone (forward copies them in). Runners of another
        dtype, left over from before a ``.to()``, are dropped."""
        weights = self._rnnfast_weights()
        dtype = _fast_dtype(weights)
        runners = self.__dict__.get("_rnnfast_runners", {})
        for key in [key for key in runners if key[1] != dtype]:
            del runners[key]
        if dtype is None or not self._rnnfast_supported() or any(w.is_shared() or w.is_meta for w in weights):
            return
        runner = self._rnnfast_runner("all", dtype)
        if runner.holds(weights):
            return
        if runner.backs_params:  # other parameters (load_state_dict(assign=True)): a fresh buffer for them, so
            del self._rnnfast_runners[("all", dtype)]  # the replaced ones keep theirs
            runner = self._rnnfast_runner("all", dtype)
        runner.share(weights)

    # --- keep the sharing through .to() / .double() / deepcopy / pickling / load_state_dict(assign=True) ---

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        ret = super()._apply(fn, *args, **kwargs)  # type: ignore[misc]
        self._rnnfast_share()
        return ret

    def __getstate__(self) -> Dict[str, Any]:
        parent = getattr(super(), "__getstate__", None)
        state = dict(parent() if parent is not None else self.__dict__)
        state.pop("_rnnfast_runners", None)  # rebuilt on demand (the kernels do not pickle)
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)  # type: ignore[misc]
        self._rnnfast_share()

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)  # type: ignore[misc]
        self._rnnfast_share()  # a no-op unless assign=True replaced the parameters

    # --- stacks: torch.nn.RNN / LSTM / GRU ---

    def _rnnfast_stack_model(self, key: Any, dtype: Any) -> Tuple[_FastStack, List[str]]:
        """``_rnnfast_new_model`` of a stack ("all" or "scratch")."""
        this: Any = self
        kind = self._rnnfast_kind
        # bool(): torch.nn.RNN takes any truthy bidirectional (and RNNCell any bias); rnnfast wants bools.
        common: Dict[str, Any] = dict(bias=bool(this.bias), bidirectional=bool(this.bidirectional), dtype=dtype,
                                      seed=0)
        if kind == "rnn":
            common["nonlinearity"] = this.nonlinearity
        elif kind == "lstm":
            common["proj_size"] = this.proj_size
        cls = {"rnn": _FastRNN, "lstm": _FastLSTM, "gru": _FastGRU}[kind]
        return cls(this.input_size, this.hidden_size, this.num_layers, **common), self._rnnfast_names()

    def _rnnfast_stack_forward(self, input: Any, hx: Any) -> Any:  # noqa: A002 - torch's name
        this: Any = self
        weights = self._rnnfast_weights()
        lstm = self._rnnfast_kind == "lstm"
        packed = isinstance(input, PackedSequence)
        runner = None
        if _fast_context_ok() and self._rnnfast_stack_shapes_ok(input, hx):
            states = [None] if hx is None else (list(hx) if lstm else [hx])
            runner = self._rnnfast_full_runner(weights, _fast_dtype([input.data if packed else input, *states]))
        if runner is None:
            return super().forward(input, hx)  # type: ignore[misc]  # PyTorch's implementation (and its errors)
        h0, c0 = (None, None) if hx is None else ((hx[0], hx[1]) if lstm else (hx, None))
        lengths: Optional[torch.Tensor] = None
        unbatched = False
        if packed:
            x, lengths = pad_packed_sequence(input)  # [T, B, I] in the caller's batch order; lengths int64 [B]
        else:
            unbatched = input.dim() == 2
            if unbatched:
                x = input.unsqueeze(1)
                h0 = None if h0 is None else h0.unsqueeze(1)
                c0 = None if c0 is None else c0.unsqueeze(1)
            else:
                x = input.transpose(0, 1) if this.batch_first else input
        lengths_np = None if lengths is None else np.ascontiguousarray(lengths.numpy(), dtype=np.int64)

        masks = None
        if this.training and this.dropout > 0 and this.num_layers > 1:
            masks = self._dropout_masks(x, input if packed else None)
        out, h_n, c_n = _run_stack(runner, x, h0, c0, lengths_np, weights, masks)

        output: Any = out
        if packed:
            assert lengths is not None
            output = PackedSequence(_pack_like(out, lengths, input), input.batch_sizes, input.sorted_indices,
                                    input.unsorted_indices)
        elif unbatched:
            output = out.squeeze(1)
            h_n = h_n.squeeze(1)
            c_n = None if c_n is None else c_n.squeeze(1)
        elif this.batch_first:
            output = out.transpose(0, 1)
        return (output, (h_n, c_n)) if lstm else (output, h_n)

    def _dropout_masks(self, x: torch.Tensor, packed: Optional[PackedSequence]) -> torch.Tensor:
        """Every layer's dropout mask but the last's, ``[L-1, T, B, D*P]``, drawn from PyTorch's generator as
        PyTorch's CPU implementation draws them: in layer order, ``empty_like(output).bernoulli_(1 - p)`` then
        ``div_(1 - p)`` on the time-major output, or on a PackedSequence's data (scattered here to the padded
        layout); p = 1 draws nothing (PyTorch multiplies by zeros)."""
        this: Any = self
        p = float(this.dropout)
        D = 2 if this.bidirectional else 1
        DP = D * (this.proj_size if self._rnnfast_kind == "lstm" and this.proj_size > 0 else this.hidden_size)
        T, B = x.size(0), x.size(1)
        layers = []
        for _ in range(this.num_layers - 1):
            shape = (T, B, DP) if packed is None else (packed.data.size(0), DP)
            if p >= 1.0:
                noise = torch.zeros(shape, dtype=x.dtype, device="cpu")
            else:  # on the CPU, as the input is: its generator, whatever the default device
                noise = torch.empty(shape, dtype=x.dtype, device="cpu").bernoulli_(1 - p).div_(1 - p)
            if packed is not None:
                noise = pad_packed_sequence(PackedSequence(noise, packed.batch_sizes, packed.sorted_indices,
                                                           packed.unsorted_indices), total_length=T)[0]
            layers.append(noise)
        return torch.stack(layers)

    def _rnnfast_stack_shapes_ok(self, input: Any, hx: Any) -> bool:
        """Whether the arguments are ones the fast path runs; anything else goes to PyTorch's forward."""
        this: Any = self
        count = this.num_layers * (2 if this.bidirectional else 1)
        P = this.proj_size if self._rnnfast_kind == "lstm" and this.proj_size > 0 else this.hidden_size
        if isinstance(input, PackedSequence):
            data, batch_sizes = input.data, input.batch_sizes
            if data.dim() != 2 or data.size(-1) != this.input_size or batch_sizes.numel() == 0:
                return False
            batched: Tuple[int, ...] = (int(batch_sizes[0]),)
        else:
            if not isinstance(input, torch.Tensor) or input.dim() not in (2, 3) or input.size(-1) != this.input_size:
                return False
            if input.dim() == 2:
                seq_len, batched = input.size(0), ()
            else:
                seq_len, batch = ((input.size(1), input.size(0)) if this.batch_first
                                  else (input.size(0), input.size(1)))
                if batch == 0:
                    return False
                batched = (batch,)
            if seq_len == 0:
                return False
        if hx is None:
            return True
        if self._rnnfast_kind != "lstm":
            return _has_shape(hx, (count, *batched, P))
        pair = _state_pair(hx)
        return (pair is not None and _has_shape(pair[0], (count, *batched, P))
                and _has_shape(pair[1], (count, *batched, this.hidden_size)))

    # --- cells: torch.nn.RNNCell / LSTMCell / GRUCell ---

    def _rnnfast_cell_model(self, dtype: Any) -> Tuple[_FastCellModel, List[str]]:
        this: Any = self
        model: _FastCellModel
        if self._rnnfast_kind == "rnn":
            model = _FastCell(this.input_size, this.hidden_size, bias=bool(this.bias),
                              nonlinearity=this.nonlinearity, dtype=dtype, seed=0)
        else:
            cls = _FastLSTMCell if self._rnnfast_kind == "lstm" else _FastGRUCell
            model = cls(this.input_size, this.hidden_size, bias=bool(this.bias), dtype=dtype, seed=0)
        return model, self._rnnfast_names()

    def _rnnfast_cell_forward(self, input: Any, hx: Any) -> Any:  # noqa: A002
        weights = self._rnnfast_weights()
        lstm = self._rnnfast_kind == "lstm"
        runner = None
        if _fast_context_ok() and self._rnnfast_cell_shapes_ok(input, hx):
            states = [None] if hx is None else (list(hx) if lstm else [hx])
            runner = self._rnnfast_full_runner(weights, _fast_dtype([input, *states]))
        if runner is None:
            return super().forward(input, hx)  # type: ignore[misc]
        h, c = (None, None) if hx is None else ((hx[0], hx[1]) if lstm else (hx, None))
        unbatched = input.dim() == 1
        if unbatched:
            input = input.unsqueeze(0)
            h = None if h is None else h.unsqueeze(0)
            c = None if c is None else c.unsqueeze(0)
        h_new, c_new = _run_cell(runner, input, h, c, weights)
        if unbatched:
            h_new = h_new.squeeze(0)
            c_new = None if c_new is None else c_new.squeeze(0)
        return (h_new, c_new) if lstm else h_new

    def _rnnfast_cell_shapes_ok(self, input: Any, hx: Any) -> bool:
        this: Any = self
        if not isinstance(input, torch.Tensor) or input.dim() not in (1, 2) or input.size(-1) != this.input_size:
            return False
        if input.dim() == 2 and input.size(0) == 0:
            return False
        shape = (this.hidden_size,) if input.dim() == 1 else (input.size(0), this.hidden_size)
        if hx is None:
            return True
        if self._rnnfast_kind != "lstm":
            return _has_shape(hx, shape)
        pair = _state_pair(hx)
        return pair is not None and _has_shape(pair[0], shape) and _has_shape(pair[1], shape)


class RNN(_Shared, torch.nn.RNN):
    """``torch.nn.RNN`` with rnnfast's CPU kernels: same constructor, parameters, ``state_dict`` and forward.

    ``forward(input, hx=None) -> (output, h_n)``, ``input`` a tensor ``[T, B, I]`` (``[B, T, I]`` with
    ``batch_first``, unbatched ``[T, I]``) or a ``PackedSequence``, as ``torch.nn.RNN``. See the module docstring.
    """

    _rnnfast_kind = "rnn"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__(input_size, hidden_size, num_layers=num_layers, nonlinearity=nonlinearity, bias=bias,
                         batch_first=batch_first, dropout=dropout, bidirectional=bidirectional, device=device,
                         dtype=dtype)
        self._rnnfast_share()

    def forward(self, input: Any, hx: Optional[torch.Tensor] = None) -> Any:  # noqa: A002 - torch's name
        return self._rnnfast_stack_forward(input, hx)


class LSTM(_Shared, torch.nn.LSTM):
    """``torch.nn.LSTM`` with rnnfast's CPU kernels: same constructor (``proj_size`` included), parameters,
    ``state_dict`` and forward.

    ``forward(input, hx=None) -> (output, (h_n, c_n))``, ``input`` a tensor ``[T, B, I]`` (``[B, T, I]`` with
    ``batch_first``, unbatched ``[T, I]``) or a ``PackedSequence``, ``hx`` a pair ``(h0 [L*D, B, P], c0 [L*D, B,
    H])`` or None, as ``torch.nn.LSTM``. See the module docstring.
    """

    _rnnfast_kind = "lstm"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__(input_size, hidden_size, num_layers=num_layers, bias=bias, batch_first=batch_first,
                         dropout=dropout, bidirectional=bidirectional, proj_size=proj_size, device=device,
                         dtype=dtype)
        self._rnnfast_share()

    def forward(self, input: Any, hx: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> Any:  # noqa: A002
        return self._rnnfast_stack_forward(input, hx)


class GRU(_Shared, torch.nn.GRU):
    """``torch.nn.GRU`` with rnnfast's CPU kernels: same constructor, parameters, ``state_dict`` and forward.

    ``forward(input, hx=None) -> (output, h_n)`` as ``torch.nn.GRU`` (and ``RNN``). See the module docstring.
    """

    _rnnfast_kind = "gru"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__(input_size, hidden_size, num_layers=num_layers, bias=bias, batch_first=batch_first,
                         dropout=dropout, bidirectional=bidirectional, device=device, dtype=dtype)
        self._rnnfast_share()

    def forward(self, input: Any, hx: Optional[torch.Tensor] = None) -> Any:  # noqa: A002 - torch's name
        return self._rnnfast_stack_forward(input, hx)


def _pack_like(padded: torch.Tensor, lengths: torch.Tensor, like: PackedSequence) -> torch.Tensor:
    """The packed data of a padded time-major batch (caller's order), with ``like``'s batch sizes and ordering."""
    if like.sorted_indices is not None:
        padded = padded.index_select(1, like.sorted_indices)
        lengths = lengths.index_select(0, like.sorted_indices.to(lengths.device))
    return pack_padded_sequence(padded, lengths, enforce_sorted=True).data


class RNNCell(_Shared, torch.nn.RNNCell):
    """``torch.nn.RNNCell`` with rnnfast's CPU kernel: same constructor, parameters, ``state_dict`` and forward.

    ``forward(input, hx=None) -> h'``, ``input`` ``[B, I]`` or unbatched ``[I]``, ``hx`` ``[B, H]`` / ``[H]``.
    """

    _rnnfast_kind = "rnn"
    _rnnfast_is_stack = False

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__(input_size, hidden_size, bias=bias, nonlinearity=nonlinearity, device=device, dtype=dtype)
        self._rnnfast_share()

    def forward(self, input: torch.Tensor, hx: Optional[torch.Tensor] = None) -> torch.Tensor:  # noqa: A002
        return self._rnnfast_cell_forward(input, hx)  # type: ignore[no-any-return]


class LSTMCell(_Shared, torch.nn.LSTMCell):
    """``torch.nn.LSTMCell`` with rnnfast's CPU kernels: same constructor, parameters, ``state_dict`` and forward.

    ``forward(input, hx=None) -> (h', c')``, ``input`` ``[B, I]`` or unbatched ``[I]``, ``hx`` a pair ``(h, c)``
    of ``[B, H]`` / ``[H]`` or None.
    """

    _rnnfast_kind = "lstm"
    _rnnfast_is_stack = False

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device: Any = None, dtype: Any = None
                 ) -> None:
        super().__init__(input_size, hidden_size, bias=bias, device=device, dtype=dtype)
        self._rnnfast_share()

    def forward(self, input: torch.Tensor, hx: Optional[Tuple[torch.Tensor, torch.Tensor]] = None  # noqa: A002
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        return self._rnnfast_cell_forward(input, hx)  # type: ignore[no-any-return]


class GRUCell(_Shared, torch.nn.GRUCell):
    """``torch.nn.GRUCell`` with rnnfast's CPU kernels: same constructor, parameters, ``state_dict`` and forward.

    ``forward(input, hx=None) -> h'``, ``input`` ``[B, I]`` or unbatched ``[I]``, ``hx`` ``[B, H]`` / ``[H]``.
    """

    _rnnfast_kind = "gru"
    _rnnfast_is_stack = False

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device: Any = None, dtype: Any = None
                 ) -> None:
        super().__init__(input_size, hidden_size, bias=bias, device=device, dtype=dtype)
        self._rnnfast_share()

    def forward(self, input: torch.Tensor, hx: Optional[torch.Tensor] = None) -> torch.Tensor:  # noqa: A002
        return self._rnnfast_cell_forward(input, hx)  # type: ignore[no-any-return]


# A whole model saved with torch.save(model) loads with torch.load's default weights_only=True (PyTorch >= 2.6):
# its pickle names these classes and otherwise only what torch.nn's own modules hold (the rnnfast kernels are not
# pickled: __getstate__ leaves them out and they are rebuilt on use). PyTorch >= 2.4 has the allowlist.
if hasattr(torch.serialization, "add_safe_globals"):
    torch.serialization.add_safe_globals([RNN, LSTM, GRU, RNNCell, LSTMCell, GRUCell])
