"""rnnfast.RNN, LSTM and GRU: stacked, optionally bidirectional recurrent layers with torch.nn's semantics.

One base class, ``_Stack``, holds what every kind shares (the kernels, argument checks, ragged batches, dropout,
caches, backward); each kind adds its constructor, its states (LSTM: ``(h, c)``) and the signatures of
``torch.nn.RNN`` / ``LSTM`` / ``GRU``.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal, Optional, Union, overload

import numpy as np

from . import _checks, _core
from ._module import Module, check_cache_usable


# Calls of fewer multiply-adds than this run on _core's kernels for small problems.
_SMALL_WORK = 1 << 21


class RNNCache:
    """What ``backward`` needs from one ``forward(..., return_cache=True)`` of an RNN, LSTM or GRU.

    Several caches can be alive at once (one per chunk in truncated BPTT, say). ``dropout_masks`` holds the masks
    this forward multiplied into each layer's output but the last, ``[L-1, T, B, D*P]`` (time-major, B = 1 for
    unbatched input), or None when no dropout was applied. ``backward`` releases the cache unless called with
    ``retain_cache=True``; a released cache is refused. The model keeps the storage of the last cache released (or
    dropped) for its next forward that keeps a cache, and frees it at a forward without one. Caches do not pickle.
    """

    __slots__ = ("_core", "_kernel", "_owner", "_version", "_x_shape", "_output_shape", "_h_n_shape", "_c_n_shape",
                 "_consumed", "dropout_masks")

    def __init__(self, core: Any, kernel: Any, owner: _Stack, x_shape: tuple[int, ...], output_shape: tuple[int, ...],
                 h_n_shape: tuple[int, ...], dropout_masks: Optional[np.ndarray],
                 c_n_shape: Optional[tuple[int, ...]] = None) -> None:
        self._core = core
        self._kernel = kernel  # the kernel object whose forward made it: its backward reads it
        self._owner = owner
        self._version = owner._versions.value
        self._x_shape = x_shape
        self._output_shape = output_shape
        self._h_n_shape = h_n_shape
        self._c_n_shape = c_n_shape
        self._consumed = False
        self.dropout_masks = dropout_masks

    def _check_usable(self, model: Module) -> None:
        check_cache_usable(self, model)

    def _release(self) -> None:
        self._core = None
        self._consumed = True

    def __reduce__(self) -> Any:
        raise TypeError("RNNCache: a cache refers to the arrays and kernels of one forward in this process and "
                        "cannot be pickled or copied; run forward again where it is needed")


class _Stack(Module):
    """What RNN, LSTM and GRU share: a stack of L layers of D directions on the compiled driver of one cell kind."""

    _CELL = "rnn"
    _NAME = "RNN"
    nonlinearity: str
    proj_size: int

    def _setup(self, input_size: int, hidden_size: int, num_layers: int, bias: bool, batch_first: bool,
               dropout: float, bidirectional: bool, dtype: _checks.DTypeLike, seed: Optional[int],
               nonlinearity: str = "tanh", proj_size: int = 0) -> None:
        self.input_size = _checks.positive_int("input_size", input_size)
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        self.num_layers = _checks.positive_int("num_layers", num_layers)
        if self._CELL == "rnn":
            self.nonlinearity = _checks.nonlinearity(nonlinearity)
        self.bias = _checks.boolean("bias", bias)
        self.batch_first = _checks.boolean("batch_first", batch_first)
        self.dropout = _checks.probability("dropout", dropout)
        self.bidirectional = _checks.boolean("bidirectional", bidirectional)
        if self._CELL == "lstm":
            self.proj_size = _checks.proj_size(proj_size, self.hidden_size)
        self.dtype = _checks.model_dtype(dtype)
        rng = _checks.rng(seed)
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn(
                "dropout: it applies after every layer but the last, so it has no effect with num_layers=1 "
                f"(got dropout={self.dropout})",
                UserWarning,
                stacklevel=3,
            )
        kernel_args = (self.input_size, self.hidden_size, self.num_layers, self.bidirectional, self.bias,
                       nonlinearity if self._CELL == "rnn" else "tanh", self._CELL, proj_size)
        kernel_class = _core.StackF32 if self.dtype == np.float32 else _core.StackF64
        try:
            self._kernel = kernel_class(*kernel_args)
        except ValueError as exc:  # sizes whose parameter count overflows
            raise ValueError(str(exc)) from None
        self._init_parameters(self._kernel, self.dtype, self.hidden_size, rng)
        self._rng = rng
        self._directions = D = 2 if self.bidirectional else 1
        self._state_size = P = proj_size if proj_size > 0 else self.hidden_size
        # Small problems run on the kernels of the instruction-set level that is fastest for them (see _core).
        small_class = _core.SmallStackF32 if self.dtype == np.float32 else _core.SmallStackF64
        self._small_kernel = self._kernel if small_class is kernel_class else small_class(*kernel_args)
        # Multiply-adds per item and step over all layers and directions: a call's work is this times T * B.
        GH = {"rnn": 1, "lstm": 4, "gru": 3}[self._CELL] * self.hidden_size
        per_direction = GH * (self.input_size + P) + (P * self.hidden_size if proj_size > 0 else 0)
        upper = GH * (D * P + P) + (P * self.hidden_size if proj_size > 0 else 0)
        self._work_per_row = D * (per_direction + (self.num_layers - 1) * upper)

    def __repr__(self) -> str:
        options = [("num_layers", 1), ("nonlinearity", "tanh"), ("bias", True), ("batch_first", False),
                   ("dropout", 0.0), ("bidirectional", False), ("proj_size", 0)]
        extra = "".join(f", {name}={getattr(self, name)!r}" for name, default in options
                        if name in self._CONFIG and getattr(self, name) != default)
        return f"{self._NAME}({self.input_size}, {self.hidden_size}{extra}, dtype={self.dtype.name})"

    def _kernel_for(self, seq_len: int, batch: int) -> Any:
        """The kernels a call of this size runs on: those for small problems under _SMALL_WORK multiply-adds."""
        return self._small_kernel if seq_len * batch * self._work_per_row < _SMALL_WORK else self._kernel

    def _spare_cache_bytes(self) -> int:
        """Bytes its kernels keep from released caches for the next forward that keeps one (see _core)."""
        kernels = {id(k): k for k in (self._kernel, self._small_kernel)}
        return sum(int(k.spare_bytes) for k in kernels.values())

    def _draws_dropout_masks(self) -> bool:
        return self.dropout > 0 and self.training and self.num_layers > 1

    def _state_shapes(self, unbatched: bool, batch: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The shapes of h0 / h_n and of c0 / c_n for an input of this batch."""
        count = self.num_layers * self._directions
        if unbatched:
            return (count, self._state_size), (count, self.hidden_size)
        return (count, batch, self._state_size), (count, batch, self.hidden_size)

    def _fast_call(self, x: Any) -> Optional[tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]]:
        """The common call, an aligned C-contiguous [T, B, I] batch of the model's dtype and nothing else, straight
        to the kernel, which checks that in C++ (at the smallest sizes the general handling costs a sixth of the
        call); None otherwise."""
        if type(x) is np.ndarray and x.ndim == 3 and not self.batch_first and not self._draws_dropout_masks():
            result = self._kernel_for(x.shape[0], x.shape[1]).call(self._flat, x)
            if result is not None:
                return result[0], result[1], result[2]
        return None

    def _run(self, x: np.ndarray, h0: Optional[np.ndarray], c0: Optional[np.ndarray], lengths: Optional[Any],
             return_cache: bool, masks: Optional[np.ndarray] = None
             ) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray], Optional[RNNCache]]:
        """forward's work, for every kind: (output, h_n, c_n or None, cache or None) in the caller's layout.
        ``masks``: dropout masks ``[L-1, T, B, D*P]`` (time-major, this dtype) drawn by the caller (rnnfast.torch,
        from PyTorch's generator), used instead of the model's own whatever its mode."""
        x = _checks.array("x", x, self.dtype)
        shape = x.shape
        unbatched = len(shape) == 2
        if not 2 <= len(shape) <= 3 or shape[-1] != self.input_size:
            layout = "[B, T, I]" if self.batch_first else "[T, B, I]"
            raise _checks.shape_error("x", f"{layout} or unbatched [T, I] with I = {self.input_size}", shape)
        if unbatched:
            seq = x[:, None, :]
            seq_len, batch = shape[0], 1
        elif self.batch_first:
            seq = x.transpose(1, 0, 2)
            batch, seq_len = shape[0], shape[1]
        else:
            seq = x
            seq_len, batch = shape[0], shape[1]
        if seq_len == 0:
            raise ValueError(f"x: expected a sequence of length >= 1, got shape {shape}")
        h_shape, c_shape = self._state_shapes(unbatched, batch)
        state_count = self.num_layers * self._directions
        h0_name = "hx[0]" if self._CELL == "lstm" else "h0"
        if h0 is not None:
            h0 = _checks.array(h0_name, h0, self.dtype)
            if h0.shape != h_shape:
                raise _checks.shape_error(h0_name, str(h_shape), h0.shape)
            h0 = _checks.for_kernel(h0.reshape(state_count, batch, self._state_size))
        if c0 is not None:
            c0 = _checks.array("hx[1]", c0, self.dtype)
            if c0.shape != c_shape:
                raise _checks.shape_error("hx[1]", str(c_shape), c0.shape)
            c0 = _checks.for_kernel(c0.reshape(state_count, batch, self.hidden_size))
        if lengths is not None:
            lengths = _checks.lengths(lengths, batch, seq_len)
        DP = self._directions * self._state_size
        lstm = self._CELL == "lstm"
        if batch == 0:  # nothing to compute: no work and no memory proportional to T
            output = np.zeros((seq_len, 0, DP), self.dtype)
            h_n = np.zeros((state_count, 0, self._state_size), self.dtype)
            c_n = np.zeros((state_count, 0, self.hidden_size), self.dtype) if lstm else None
            masks, core_cache, kernel = None, None, self._kernel
        else:
            # Every large array this call makes, checked before any copy or work.
            sizes: list[tuple[str, tuple[int, ...]]] = [("output", (seq_len, batch, DP))]
            if not (seq.flags.c_contiguous and seq.flags.aligned):
                sizes.append(("x (its contiguous copy)", seq.shape))
            if masks is None and self._draws_dropout_masks():
                sizes.append(("dropout masks", (self.num_layers - 1, seq_len, batch, DP)))
            if return_cache:
                saved = DP + (self._directions * self.hidden_size * (5 if lstm else 4) if self._CELL != "rnn" else 0)
                sizes.append(("cache (every layer's states and gates)", (self.num_layers, seq_len, batch, saved)))
            _checks.fits_in_memory(sizes, self.dtype)
            rng_state = self._rng.bit_generator.state if masks is None and self._draws_dropout_masks() else None
            if rng_state is not None:
                masks = self._dropout_masks(seq_len, batch)
            elif masks is not None:
                expected = (self.num_layers - 1, seq_len, batch, DP)
                if masks.shape != expected or masks.dtype != self.dtype:
                    raise ValueError(f"masks: expected {self.dtype.name} {expected}, got {masks.dtype.name} "
                                     f"{masks.shape}")
                masks = _checks.for_kernel(masks)
            kernel = self._kernel_for(seq_len, batch)
            try:
                output, h_n, c_n, core_cache = kernel.forward(self._flat, _checks.for_kernel(seq), h0, masks, lengths,
                                                              bool(return_cache), c0)
            except BaseException:
                if rng_state is not None:  # an interrupted or failed call leaves the model as it was
                    self._rng.bit_generator.state = rng_state
                raise
        if unbatched:
            output = output[:, 0, :]
            h_n = h_n[:, 0, :]
            c_n = None if c_n is None else c_n[:, 0, :]
        elif self.batch_first:
            output = output.transpose(1, 0, 2)
        if not return_cache:
            return output, h_n, c_n, None
        cache = RNNCache(core_cache, kernel, self, shape, output.shape, h_n.shape, masks,
                         None if c_n is None else c_n.shape)
        return output, h_n, c_n, cache

    def _run_backward(self, cache: RNNCache, grad_output: Optional[np.ndarray], grad_h_n: Optional[np.ndarray],
                      grad_c_n: Optional[np.ndarray], input_grad: bool, retain_cache: bool, accumulate: bool
                      ) -> tuple[Optional[np.ndarray], np.ndarray, Optional[np.ndarray], Optional[dict[str, np.ndarray]]]:
        """backward's work, for every kind. With ``accumulate`` False the parameter gradients come back as a fresh
        dict and ``grads`` is not touched: concurrent calls on one cache (autograd's) are then independent."""
        if not isinstance(cache, RNNCache):
            raise TypeError(f"cache: expected an RNNCache from {self._NAME}.forward(..., return_cache=True), "
                            f"got {type(cache).__name__}")
        if cache._owner is not self:
            raise ValueError("cache: it was made by another model's forward, not this one's")
        cache._check_usable(self)
        lstm = self._CELL == "lstm"
        if grad_output is None and grad_h_n is None and grad_c_n is None:
            names = "grad_output, grad_h_n, grad_c_n" if lstm else "grad_output, grad_h_n"
            raise ValueError(f"{names}: expected at least one gradient, got None for all")
        unbatched = len(cache._x_shape) == 2
        go = None
        if grad_output is not None:
            grad_output = _checks.array("grad_output", grad_output, self.dtype)
            if grad_output.shape != cache._output_shape:
                raise _checks.shape_error("grad_output", str(cache._output_shape), grad_output.shape)
            if unbatched:
                go = grad_output[:, None, :]
            elif self.batch_first:
                go = grad_output.transpose(1, 0, 2)
            else:
                go = grad_output
            go = _checks.for_kernel(go)
        gh = None
        if grad_h_n is not None:
            grad_h_n = _checks.array("grad_h_n", grad_h_n, self.dtype)
            if grad_h_n.shape != cache._h_n_shape:
                raise _checks.shape_error("grad_h_n", str(cache._h_n_shape), grad_h_n.shape)
            gh = _checks.for_kernel(grad_h_n[:, None, :] if unbatched else grad_h_n)
        gc = None
        if grad_c_n is not None:
            grad_c_n = _checks.array("grad_c_n", grad_c_n, self.dtype)
            if grad_c_n.shape != cache._c_n_shape:
                raise _checks.shape_error("grad_c_n", str(cache._c_n_shape), grad_c_n.shape)
            gc = _checks.for_kernel(grad_c_n[:, None, :] if unbatched else grad_c_n)
        core = cache._core
        if core is None:  # an empty batch: nothing to add
            flat = None if accumulate else np.zeros_like(self._flat)
            grad_input = np.zeros(cache._x_shape, self.dtype) if input_grad else None
            grad_h0 = np.zeros(cache._h_n_shape, self.dtype)
            grad_c0 = np.zeros(cache._c_n_shape, self.dtype) if cache._c_n_shape is not None else None
            if not retain_cache:
                cache._consumed = True
            return grad_input, grad_h0, grad_c0, None if flat is None else self._views(flat)
        # The kernel adds into `grads` only once the whole backward has succeeded (an error or Ctrl-C leaves it
        # as it was), and without `grads` returns a buffer of its own.
        grad_input, grad_h0, grad_c0, flat = cache._kernel.backward(
            self._flat, core, go, gh, self._grad_flat if accumulate else None, input_grad, gc)
        if not retain_cache:
            cache._release()
        if unbatched:
            grad_input = None if grad_input is None else grad_input[:, 0, :]
            grad_h0 = grad_h0[:, 0, :]
            grad_c0 = None if grad_c0 is None else grad_c0[:, 0, :]
        elif self.batch_first and grad_input is not None:
            grad_input = grad_input.transpose(1, 0, 2)
        return grad_input, grad_h0, grad_c0, None if flat is None else self._views(flat)

    def _dropout_masks(self, seq_len: int, batch: int) -> np.ndarray:
        """``[L-1, T, B, D*P]`` masks: 0 with probability p, else 1/(1-p) (inverted dropout, as in PyTorch)."""
        shape = (self.num_layers - 1, seq_len, batch, self._directions * self._state_size)
        keep = self._rng.random(shape, dtype=self.dtype) >= self.dropout
        masks = keep.astype(self.dtype)
        if self.dropout < 1.0:
            masks *= self.dtype.type(1.0 / (1.0 - self.dropout))
        return masks


class _SingleState(_Stack):
    """The calls of a kind whose state is h alone (RNN, GRU): ``(output, h_n)``."""

    def __call__(self, x: np.ndarray, h0: Optional[np.ndarray] = None, lengths: Optional[Any] = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Forward without a cache: same as ``forward(x, h0, lengths)`` (dropout applies in training mode)."""
        if h0 is None and lengths is None:
            fast = self._fast_call(x)
            if fast is not None:
                return fast[0], fast[1]
        return self.forward(x, h0, lengths)

    @overload
    def forward(self, x: np.ndarray, h0: Optional[np.ndarray] = None, lengths: Optional[Any] = None,
                return_cache: Literal[False] = False) -> tuple[np.ndarray, np.ndarray]: ...

    @overload
    def forward(self, x: np.ndarray, h0: Optional[np.ndarray] = None, lengths: Optional[Any] = None, *,
                return_cache: Literal[True]) -> tuple[np.ndarray, np.ndarray, RNNCache]: ...

    @overload
    def forward(self, x: np.ndarray, h0: Optional[np.ndarray], lengths: Optional[Any], return_cache: Literal[True]
                ) -> tuple[np.ndarray, np.ndarray, RNNCache]: ...

    @overload
    def forward(self, x: np.ndarray, h0: Optional[np.ndarray] = None, lengths: Optional[Any] = None,
                return_cache: bool = False
                ) -> Union[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, RNNCache]]: ...

    def forward(self, x: np.ndarray, h0: Optional[np.ndarray] = None, lengths: Optional[Any] = None,
                return_cache: bool = False
                ) -> Union[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, RNNCache]]:
        """Run the sequence through every layer and direction.

        Parameters
        ----------
        x : ndarray, ``[T, B, I]`` (``[B, T, I]`` if batch_first) or unbatched ``[T, I]``, the model's dtype
        h0 : ndarray or None, ``[L*D, B, H]`` (unbatched: ``[L*D, H]``); None means zeros
        lengths : integer array-like ``[B]`` (unbatched: ``[1]``) or None
            Valid steps of each sequence, any order, ``1 <= lengths[b] <= T``; None means all T. Item b only runs
            steps ``t < lengths[b]`` (the reverse direction starts at its own last step), its outputs past them
            are zero and ``h_n[:, b]`` is its state after its last valid step, as with PyTorch's
            ``pack_padded_sequence(x, lengths, enforce_sorted=False)``. Padded steps cost no compute.
        return_cache : bool
            Also return the cache ``backward`` needs. For a full-length batch (no ``lengths``) the cache refers to
            ``x`` and to ``output`` rather than holding copies, as PyTorch's autograd saves its tensors: a training
            step then holds one copy of the sequence, not three. Modify either in place before ``backward`` and
            backward raises ValueError (a checksum of every byte is compared); modify a copy instead.

        Returns
        -------
        output : ``[T, B, D*H]`` (``[B, T, D*H]`` if batch_first; unbatched ``[T, D*H]``): the last layer's states,
            forward direction in columns ``[0, H)``, reverse in ``[H, 2H)``.
        h_n : ``[L*D, B, H]`` (unbatched ``[L*D, H]``): final states, ordered layer 0 forward, layer 0 reverse,
            layer 1 forward, ...
        cache : RNNCache, only with ``return_cache=True``.
        """
        output, h_n, _, cache = self._run(x, h0, None, lengths, bool(return_cache))
        if cache is None:
            return output, h_n
        return output, h_n, cache

    @overload
    def backward(self, cache: RNNCache, grad_output: Optional[np.ndarray] = None,
                 grad_h_n: Optional[np.ndarray] = None, *, input_grad: Literal[True] = True,
                 retain_cache: bool = False) -> tuple[np.ndarray, np.ndarray]: ...

    @overload
    def backward(self, cache: RNNCache, grad_output: Optional[np.ndarray] = None,
                 grad_h_n: Optional[np.ndarray] = None, *, input_grad: Literal[False],
                 retain_cache: bool = False) -> tuple[None, np.ndarray]: ...

    @overload
    def backward(self, cache: RNNCache, grad_output: Optional[np.ndarray] = None,
                 grad_h_n: Optional[np.ndarray] = None, *, input_grad: bool = True,
                 retain_cache: bool = False) -> tuple[Optional[np.ndarray], np.ndarray]: ...

    def backward(self, cache: RNNCache, grad_output: Optional[np.ndarray] = None,
                 grad_h_n: Optional[np.ndarray] = None, *, input_grad: bool = True,
                 retain_cache: bool = False) -> tuple[Optional[np.ndarray], np.ndarray]:
        """Backpropagation through time for one forward; adds every parameter's gradient into ``grads``.

        Parameters
        ----------
        cache : RNNCache from this model's ``forward(..., return_cache=True)``
        grad_output : ndarray or None, the output's shape: gradient of the loss with respect to ``output``
        grad_h_n : ndarray or None, ``h_n``'s shape: gradient of the loss with respect to ``h_n``
            (one of the two may be None, meaning zeros; not both)
        input_grad : bool, keyword-only
            Compute ``grad_input``. False skips its product (a sixth of a one-layer training step's work) and
            its memory, and returns None in its place: for a first layer fed with data, as PyTorch skips the
            gradient of an input that does not require one.
        retain_cache : bool, keyword-only
            Keep the cache for another backward (which adds its gradients into ``grads`` again), as PyTorch's
            ``retain_graph=True``. By default backward releases the cache (its storage goes to the model's next
            forward that keeps a cache) and a second backward on it raises ValueError, as PyTorch refuses a
            second backward through a freed graph.

        Returns
        -------
        grad_input : x's shape, or None with ``input_grad=False``
        grad_h0 : h0's shape (``[L*D, B, H]``, unbatched ``[L*D, H]``), also when h0 was None

        ``grads`` changes only when the whole backward succeeds: an error, or Ctrl-C (KeyboardInterrupt), leaves
        it and the cache as they were. Raises ValueError when the cache refers to an ``x`` or ``output`` that was
        modified in place since the forward (see ``forward``), was released by an earlier backward, or predates
        a ``load_state_dict`` or parameter assignment.
        """
        input_grad = _checks.boolean("input_grad", input_grad)
        retain_cache = _checks.boolean("retain_cache", retain_cache)
        grad_input, grad_h0, _, _ = self._run_backward(cache, grad_output, grad_h_n, None, input_grad, retain_cache,
                                                       True)
        return grad_input, grad_h0


class RNN(_SingleState):
    """A multi-layer Elman RNN: ``h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)`` per layer and direction.

    Same constructor, shapes, parameter names and initialization as ``torch.nn.RNN``.

    Parameters
    ----------
    input_size : int
        I, the number of features of each input step.
    hidden_size : int
        H, the number of features of the hidden state.
    num_layers : int
        L, the number of stacked layers; layer k > 0 reads layer k-1's output.
    nonlinearity : {"tanh", "relu"}
    bias : bool
        Whether the layers have ``bias_ih_l{k}`` and ``bias_hh_l{k}``.
    batch_first : bool
        Input and output are ``[B, T, F]`` instead of ``[T, B, F]`` (states stay ``[L*D, B, H]``).
    dropout : float
        Probability of zeroing each element of every layer's output but the last, in training mode.
    bidirectional : bool
        D = 2 directions per layer; the reverse one reads the sequence from its end.
    device : None, "cpu" or torch.device("cpu")
        PyTorch's argument; rnnfast computes on the CPU (any other device: ValueError).
    dtype : "float32" or "float64" (or the NumPy dtype, or torch.float32 / torch.float64)
    seed : int or None
        Seeds the initialization and the dropout masks; None draws fresh entropy.
    """

    _CELL = "rnn"
    _NAME = "RNN"
    _CONFIG = ("input_size", "hidden_size", "num_layers", "nonlinearity", "bias", "batch_first", "dropout",
               "bidirectional", "dtype")

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device: Any = None, dtype: _checks.DTypeLike = "float32", seed: Optional[int] = None) -> None:
        _checks.device(device)
        self._setup(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, dtype, seed,
                    nonlinearity=nonlinearity)


class GRU(_SingleState):
    """A multi-layer GRU, as ``torch.nn.GRU``: per layer and direction, with gates r, z, n,

    ``r = sigma(W_ir x + b_ir + W_hr h + b_hr)``, ``z = sigma(W_iz x + b_iz + W_hz h + b_hz)``,
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, ``h' = (1 - z) * n + z * h``.

    Same constructor, shapes, parameter names (``weight_ih_l{k}`` ``[3H, I]`` holding the r, z, n blocks,
    ``weight_hh_l{k}`` ``[3H, H]``, ``bias_ih_l{k}`` / ``bias_hh_l{k}`` ``[3H]``) and initialization as
    ``torch.nn.GRU``; the same calls as ``rnnfast.RNN`` (``gru(x, h0=None, lengths=None) -> (output, h_n)``,
    ``forward``, ``backward``). See ``RNN`` for the arguments.
    """

    _CELL = "gru"
    _NAME = "GRU"
    _CONFIG = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional", "dtype")

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device: Any = None, dtype: _checks.DTypeLike = "float32", seed: Optional[int] = None) -> None:
        _checks.device(device)
        self._setup(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, dtype, seed)


class LSTM(_Stack):
    """A multi-layer LSTM, as ``torch.nn.LSTM``: per layer and direction, with gates i, f, g, o,

    ``i, f, o = sigma(W_i* x + b_i* + W_h* h + b_h*)``, ``g = tanh(W_ig x + b_ig + W_hg h + b_hg)``,
    ``c' = f * c + i * g``, ``h' = o * tanh(c')`` (with ``proj_size > 0``: ``h' = W_hr (o * tanh(c'))``).

    Same constructor, shapes, parameter names (``weight_ih_l{k}`` ``[4H, I]``, ``weight_hh_l{k}`` ``[4H, P]``,
    biases ``[4H]``, with a projection ``weight_hr_l{k}`` ``[P, H]``; P = proj_size or H) and initialization as
    ``torch.nn.LSTM``. The state is a pair ``hx = (h, c)``: h ``[L*D, B, P]``, c ``[L*D, B, H]``.
    """

    _CELL = "lstm"
    _NAME = "LSTM"
    _CONFIG = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional",
               "proj_size", "dtype")

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device: Any = None, dtype: _checks.DTypeLike = "float32", seed: Optional[int] = None) -> None:
        _checks.device(device)
        self._setup(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, dtype, seed,
                    proj_size=_checks.non_negative_int("proj_size", proj_size))

    def __call__(self, x: np.ndarray, hx: Optional[tuple[np.ndarray, np.ndarray]] = None,
                 lengths: Optional[Any] = None) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Forward without a cache: same as ``forward(x, hx, lengths)`` (dropout applies in training mode)."""
        if hx is None and lengths is None:
            fast = self._fast_call(x)
            if fast is not None:
                assert fast[2] is not None
                return fast[0], (fast[1], fast[2])
        return self.forward(x, hx, lengths)

    @overload
    def forward(self, x: np.ndarray, hx: Optional[tuple[np.ndarray, np.ndarray]] = None,
                lengths: Optional[Any] = None, return_cache: Literal[False] = False
                ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]: ...

    @overload
    def forward(self, x: np.ndarray, hx: Optional[tuple[np.ndarray, np.ndarray]] = None,
                lengths: Optional[Any] = None, *, return_cache: Literal[True]
                ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], RNNCache]: ...

    @overload
    def forward(self, x: np.ndarray, hx: Optional[tuple[np.ndarray, np.ndarray]], lengths: Optional[Any],
                return_cache: Literal[True]) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], RNNCache]: ...

    @overload
    def forward(self, x: np.ndarray, hx: Optional[tuple[np.ndarray, np.ndarray]] = None,
                lengths: Optional[Any] = None, return_cache: bool = False
                ) -> Union[tuple[np.ndarray, tuple[np.ndarray, np.ndarray]],
                           tuple[np.ndarray, tuple[np.ndarray, np.ndarray], RNNCache]]: ...

    def forward(self, x: np.ndarray, hx: Optional[tuple[np.ndarray, np.ndarray]] = None,
                lengths: Optional[Any] = None, return_cache: bool = False
                ) -> Union[tuple[np.ndarray, tuple[np.ndarray, np.ndarray]],
                           tuple[np.ndarray, tuple[np.ndarray, np.ndarray], RNNCache]]:
        """Run the sequence through every layer and direction.

        ``x``, ``lengths`` and ``return_cache`` as for ``RNN.forward``. ``hx`` is ``(h0, c0)`` or None (zeros):
        h0 ``[L*D, B, P]``, c0 ``[L*D, B, H]`` (unbatched: without B). Returns ``(output, (h_n, c_n))`` and the
        cache with ``return_cache=True``; output ``[T, B, D*P]`` (``[B, T, D*P]`` if batch_first), h_n and c_n
        each item's states after its last valid step.
        """
        h0, c0 = _checks.state_pair(hx)
        output, h_n, c_n, cache = self._run(x, h0, c0, lengths, bool(return_cache))
        assert c_n is not None
        if cache is None:
            return output, (h_n, c_n)
        return output, (h_n, c_n), cache

    @overload
    def backward(self, cache: RNNCache, grad_output: Optional[np.ndarray] = None,
                 grad_h_n: Optional[np.ndarray] = None, grad_c_n: Optional[np.ndarray] = None, *,
                 input_grad: Literal[True] = True, retain_cache: bool = False
                 ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]: ...

    @overload
    def backward(self, cache: RNNCache, grad_output: Optional[np.ndarray] = None,
                 grad_h_n: Optional[np.ndarray] = None, grad_c_n: Optional[np.ndarray] = None, *,
                 input_grad: Literal[False], retain_cache: bool = False
                 ) -> tuple[None, tuple[np.ndarray, np.ndarray]]: ...

    @overload
    def backward(self, cache: RNNCache, grad_output: Optional[np.ndarray] = None,
                 grad_h_n: Optional[np.ndarray] = None, grad_c_n: Optional[np.ndarray] = None, *,
                 input_grad: bool = True, retain_cache: bool = False
                 ) -> tuple[Optional[np.ndarray], tuple[np.ndarray, np.ndarray]]: ...

    def backward(self, cache: RNNCache, grad_output: Optional[np.ndarray] = None,
                 grad_h_n: Optional[np.ndarray] = None, grad_c_n: Optional[np.ndarray] = None, *,
                 input_grad: bool = True, retain_cache: bool = False
                 ) -> tuple[Optional[np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """Backpropagation through time for one forward; adds every parameter's gradient into ``grads``.

        Gradients of the loss with respect to ``output``, ``h_n`` and ``c_n`` (None means zeros; at least one).
        ``input_grad`` and ``retain_cache`` as for ``RNN.backward``. Returns ``(grad_input, (grad_h0, grad_c0))``;
        ``grad_h0`` / ``grad_c0`` are returned also when hx was None.
        """
        input_grad = _checks.boolean("input_grad", input_grad)
        retain_cache = _checks.boolean("retain_cache", retain_cache)
        grad_input, grad_h0, grad_c0, _ = self._run_backward(cache, grad_output, grad_h_n, grad_c_n, input_grad,
                                                             retain_cache, True)
        assert grad_c0 is not None
        return grad_input, (grad_h0, grad_c0)
