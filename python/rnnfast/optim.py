"""Optimizers and gradient clipping for rnnfast models, with ``torch.optim``'s update rules: ``SGD``, ``Adam``,
``AdamW``, ``clip_grad_norm_`` and ``clip_grad_value_``.

An optimizer takes a list of rnnfast models (``RNN``, ``LSTM``, ``GRU``, ``RNNCell``, ``LSTMCell``, ``GRUCell``:
all their parameters, with the gradients that ``backward`` adds into ``model.grads``) and ``(param, grad)`` pairs
of NumPy arrays (a read-out written in NumPy, say), and updates the parameters in place at each ``step()``, reading
the gradients as they are then::

    import numpy as np
    import rnnfast

    rnn = rnnfast.RNN(1, 16, seed=0)
    head, head_grad = np.zeros((16, 1), np.float32), np.zeros((16, 1), np.float32)
    params = [rnn, (head, head_grad)]
    opt = rnnfast.optim.Adam(params, lr=1e-2)
    for x, y in batches:
        opt.zero_grad()                                  # rnn.grads and head_grad, in place
        out, _, cache = rnn.forward(x, return_cache=True)
        grad_pred = 2 * (out @ head - y) / y.size
        head_grad[...] = np.einsum("tbh,tbo->ho", out, grad_pred)
        rnn.backward(cache, grad_output=grad_pred @ head.T)
        rnnfast.optim.clip_grad_norm_(params, 1.0)
        opt.step()

A model's parameters are updated where they live (the arrays of ``named_parameters()`` stay the model's storage,
so the next forward sees the new values; nothing is rebound), exactly as an in-place update through
``named_parameters()`` would: the kernels read the parameters at each call, so nothing needs telling, and as with
such an update, ``step()`` belongs after ``backward`` (a cache made before the step would run backward with the new
values). A model's parameters and gradients are each one flat buffer, and the update rules are elementwise, so a
model is updated with a few whole-buffer operations.

The update rules, defaults, checks of the hyperparameters and the layout of ``state_dict()`` are those of
``torch.optim.SGD`` / ``Adam`` / ``AdamW`` and ``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_`` (the
single-tensor CPU code path, operation for operation), so a training run gives PyTorch's numbers to rounding. One
parameter group: the hyperparameters are in ``opt.param_groups[0]`` (a dict; change ``"lr"`` there for a
schedule).
"""

from __future__ import annotations

import math
import numbers
import weakref
from collections.abc import Iterable, Mapping
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ._module import Module, _as_numpy

__all__ = ["SGD", "Adam", "AdamW", "Optimizer", "Params", "clip_grad_norm_", "clip_grad_value_"]

# What an optimizer and the clipping functions take: rnnfast models and (param, grad) pairs of arrays, in a list
# (any iterable), or a single model.
Params = Union[Module, Iterable[Union[Module, Tuple[np.ndarray, np.ndarray]]]]

# Keys of torch.optim's parameter groups that choose an implementation, not the numbers: ignored when a PyTorch
# optimizer's state_dict is loaded.
_TORCH_IMPLEMENTATION_KEYS = frozenset({"foreach", "differentiable", "fused", "capturable", "param_names"})


# ---------------------------------------------------------------------------------------------------------------------
# The parameters: models and pairs, checked, as "segments" updated with whole-array operations
# ---------------------------------------------------------------------------------------------------------------------

class _Segment:
    """Arrays updated together: one parameter of a (param, grad) pair, or all of a model's parameters as its flat
    parameter and gradient buffers. ``parts`` holds each parameter's ``(offset, shape)`` in the flat buffers (None
    for a pair: the arrays are the one parameter); ``views`` the parameter arrays as the caller knows them;
    ``name`` and ``part_names`` name them in messages."""

    __slots__ = ("param", "grad", "parts", "views", "name", "part_names")

    def __init__(self, param: np.ndarray, grad: np.ndarray, parts: Optional[List[Tuple[int, Tuple[int, ...]]]],
                 views: List[np.ndarray], name: str, part_names: Optional[List[str]] = None) -> None:
        self.param = param
        self.grad = grad
        self.parts = parts
        self.views = views
        self.name = name  # "params[2]"; for a model "params[0] (RNN)"
        self.part_names = part_names  # a model's parameter names

    def part(self, array: np.ndarray, k: int) -> np.ndarray:
        """Parameter ``k``'s share of ``array`` (an array shaped like ``param``: the state of this segment)."""
        if self.parts is None:
            return array
        offset, shape = self.parts[k]
        return array[offset:offset + math.prod(shape)].reshape(shape)

    def label(self, k: int) -> str:
        """Parameter ``k`` in a message."""
        return self.name if self.part_names is None else f"{self.name[:-1]}.{self.part_names[k]})"


def _address(a: np.ndarray) -> int:
    return int(a.__array_interface__["data"][0])


def _byte_span(a: np.ndarray) -> Tuple[int, int]:
    """The lowest and one past the highest byte address ``a`` touches (``a`` not empty)."""
    low = high = _address(a)
    for n, stride in zip(a.shape, a.strides):
        extent = (n - 1) * stride
        if extent < 0:
            low += extent
        else:
            high += extent
    return low, high + a.itemsize


def _flat_offsets(flat: Any, views: Sequence[np.ndarray]) -> Optional[List[int]]:
    """Each view's offset (in elements) in ``flat`` when the views are contiguous pieces of the 1-D contiguous
    ``flat`` that cover it exactly, without overlap; else None."""
    if not isinstance(flat, np.ndarray) or flat.ndim != 1 or not flat.flags.c_contiguous:
        return None
    base, itemsize = _address(flat), flat.itemsize
    offsets, spans = [], []
    for v in views:
        start, remainder = divmod(_address(v) - base, itemsize)
        if v.dtype != flat.dtype or not v.flags.c_contiguous or remainder or start < 0 or start + v.size > flat.size:
            return None
        offsets.append(start)
        spans.append((start, start + v.size))
    position = 0
    for start, stop in sorted(spans):
        if start != position:
            return None
        position = stop
    return offsets if position == flat.size else None


# Each model's layout: its flat parameter and gradient buffers and every parameter's offset in them (None: the
# views do not tile the buffers). Found once per model, since checking it reads the address of every view, which
# costs more than a small model's whole update; kept while the model lives and holds the same buffers.
_LAYOUTS: weakref.WeakKeyDictionary[Module, Tuple[Any, Any, Optional[List[int]]]] = weakref.WeakKeyDictionary()


def _model_segments(model: Module, label: str) -> List[_Segment]:
    """A model's parameters as one segment over its flat buffers, or (should its views not tile them) one segment
    per parameter."""
    named = model.named_parameters()
    grads = model.grads
    names = list(named)
    params = [named[name] for name in names]
    flat: Any = model.__dict__.get("_flat")
    grad_flat: Any = model.__dict__.get("_grad_flat")
    layout = _LAYOUTS.get(model)
    if layout is not None and layout[0] is flat and layout[1] is grad_flat:
        offsets = layout[2]
    else:
        offsets = _flat_offsets(flat, params)
        if offsets is not None and _flat_offsets(grad_flat, [grads[name] for name in names]) != offsets:
            offsets = None
        _LAYOUTS[model] = (flat, grad_flat, offsets)
    kind = type(model).__name__
    if offsets is not None:
        parts = [(offset, tuple(p.shape)) for offset, p in zip(offsets, params)]
        return [_Segment(flat, grad_flat, parts, params, f"{label} ({kind})", names)]
    return [_Segment(p, grads[name], None, [p], f"{label} ({kind}.{name})") for name, p in zip(names, params)]


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"a numpy.ndarray of shape {value.shape}"
    kind = type(value)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"


def _pair_segment(item: Any, label: str) -> _Segment:
    if len(item) != 2:
        raise TypeError(f"{label}: expected an rnnfast model or a (param, grad) pair of arrays, got a "
                        f"{type(item).__name__} of length {len(item)}")
    param, grad = item
    for what, a in (("param", param), ("grad", grad)):
        if not isinstance(a, np.ndarray):
            hint = " (rnnfast.optim works on NumPy arrays; use torch.optim for tensors)" \
                if type(a).__module__.startswith("torch") else ""
            raise TypeError(f"{label}: expected the {what} to be a numpy.ndarray, got {_describe(a)}{hint}")
        if a.dtype.kind != "f":
            raise TypeError(f"{label}: expected the {what} to be a floating-point array, got dtype {a.dtype}")
    if grad.dtype != param.dtype:
        raise TypeError(f"{label}: expected the grad to have the param's dtype {param.dtype}, got {grad.dtype}")
    if grad.shape != param.shape:
        raise ValueError(f"{label}: expected the grad to have the param's shape {param.shape}, got {grad.shape}")
    return _Segment(param, grad, None, [param], label)


def _collect(params: Any, name: str = "params", allow_empty: bool = False) -> List[_Segment]:
    """Check ``params`` (models and (param, grad) pairs) completely and return its segments, or raise TypeError /
    ValueError naming the offending entry (nothing is changed either way)."""
    if isinstance(params, Module):
        params = [params]
    elif isinstance(params, (np.ndarray, str, bytes, Mapping)) or not isinstance(params, Iterable):
        hint = ""
        if isinstance(params, Mapping):
            hint = ("; pass the model itself for all its parameters with their gradients (named_parameters() has "
                    "no gradients), and parameter groups (dicts) are not supported")
        raise TypeError(f"{name}: expected a list of rnnfast models and (param, grad) pairs of arrays, got "
                        f"{_describe(params)}{hint}")
    items = list(params)
    if not items and allow_empty:
        return []
    if not items:
        raise ValueError(f"{name}: expected at least one rnnfast model or (param, grad) pair, got an empty list")
    single_pair = len(items) == 2 and all(isinstance(a, np.ndarray) for a in items) and isinstance(params, tuple)
    segments: List[_Segment] = []
    for i, item in enumerate(items):
        label = f"{name}[{i}]"
        if isinstance(item, Module):
            segments.extend(_model_segments(item, label))
        elif isinstance(item, (tuple, list)):
            segments.append(_pair_segment(item, label))
        else:
            hint = ""
            if isinstance(item, np.ndarray):
                hint = ("; a bare array has no gradient: pass the model itself (not model.parameters()), or the "
                        "pair (array, grad)")
                if single_pair:
                    hint += ", and a single pair inside a list: [(param, grad)]"
            elif isinstance(item, Mapping):
                hint = "; parameter groups (dicts) are not supported"
            elif type(item).__module__.startswith("torch"):
                hint = "; use torch.optim for torch modules and tensors"
            raise TypeError(f"{label}: expected an rnnfast model or a (param, grad) pair of arrays, got "
                            f"{_describe(item)}{hint}")
    for seg in segments:
        if not seg.param.flags.writeable:
            raise ValueError(f"{seg.name}: expected a writeable param (it is updated in place), got a "
                             f"read-only array")
        if not seg.grad.flags.writeable:
            raise ValueError(f"{seg.name}: expected a writeable grad (zero_grad and clipping change it in "
                             f"place), got a read-only array")
    _check_disjoint(name, segments)
    return segments


def _check_disjoint(name: str, segments: List[_Segment]) -> None:
    """No two arrays (parameters and gradients) may share memory: a parameter listed twice would be updated twice,
    a gradient shared by two parameters clipped twice. Sweeps the arrays by address, so only neighbours whose byte
    ranges overlap are compared exactly."""
    arrays = [(seg, what, a) for seg in segments for what, a in (("param", seg.param), ("grad", seg.grad)) if a.size]
    spans = sorted((_byte_span(a) + (i,) for i, (_, _, a) in enumerate(arrays)))
    open_spans: List[Tuple[int, int, int]] = []
    for low, high, i in spans:
        open_spans = [span for span in open_spans if span[1] > low]
        for span in open_spans:
            j = span[2]
            if np.shares_memory(arrays[i][2], arrays[j][2]):
                first, second = (f"{seg.name} {what}" + ("s" if seg.parts is not None else "")
                                 for seg, what, _ in (arrays[j], arrays[i]))
                raise ValueError(f"{name}: expected distinct arrays, got {first} and {second} sharing memory (a model "
                                 f"or an array listed twice?)")
        open_spans.append((low, high, i))


# ---------------------------------------------------------------------------------------------------------------------
# Hyperparameter checks
# ---------------------------------------------------------------------------------------------------------------------

def _number(name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {value!r} of type {type(value).__name__}")
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    return x


def _non_negative(name: str, value: Any) -> float:
    x = _number(name, value)
    if x < 0:
        raise ValueError(f"{name}: expected a number >= 0, got {value!r}")
    return x


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {value!r} of type {type(value).__name__}")
    return bool(value)


def _betas(name: str, value: Any) -> Tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name}: expected a pair (beta1, beta2) of numbers in [0, 1), got {value!r}")
    pair = (_number(f"{name}[0]", value[0]), _number(f"{name}[1]", value[1]))
    for k, beta in enumerate(pair):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"{name}[{k}]: expected a number in [0, 1), got {value[k]!r} (betas={tuple(value)!r})")
    return pair


# ---------------------------------------------------------------------------------------------------------------------
# Optimizers
# ---------------------------------------------------------------------------------------------------------------------

class Optimizer:
    """What SGD, Adam and AdamW share: the parameters, one parameter group of hyperparameters, the per-parameter
    state, ``step``, ``zero_grad`` and ``state_dict`` / ``load_state_dict`` in ``torch.optim``'s layout.

    Attributes
    ----------
    defaults : dict
        The hyperparameters given to the constructor (checked, numbers as floats).
    param_groups : list of one dict
        The hyperparameters in use (``param_groups[0]["lr"] = ...`` changes the learning rate from the next step;
        every step checks them first), and under ``"params"`` the parameter arrays in order: a model's in its
        ``named_parameters()`` order, a pair's param. Other keys are kept, and saved by ``state_dict``.
    """

    def __init__(self, params: Params, defaults: Dict[str, Any]) -> None:
        hyper = self._check_hyper(defaults, "")
        self._segments = _collect(params)
        # Parameter i (the numbering of state_dict) is part k of segment s; segment s starts at parameter _starts[s].
        self._index = [(s, k) for s, seg in enumerate(self._segments) for k in range(len(seg.views))]
        self._starts = [i for i, (_, k) in enumerate(self._index) if k == 0]
        self._state: List[Dict[str, Any]] = [{} for _ in self._segments]
        self.defaults: Dict[str, Any] = dict(hyper)
        self.param_groups: List[Dict[str, Any]] = [
            {**hyper, "params": [view for seg in self._segments for view in seg.views]}]

    # --- what each optimizer defines ----------------------------------------------------------------------------

    def _check_hyper(self, group: Mapping[str, Any], where: str) -> Dict[str, Any]:
        """The hyperparameters of ``group``, checked; messages name them ``where[key]`` (or ``key``)."""
        raise NotImplementedError

    def _state_keys(self, hyper: Dict[str, Any]) -> Tuple[Tuple[str, ...], Tuple[str, ...], Tuple[str, ...]]:
        """The state of a parameter that has stepped: its scalar keys, its required and its optional array keys."""
        raise NotImplementedError

    def _update(self, seg: _Segment, state: Dict[str, Any], hyper: Dict[str, Any]) -> None:
        """One step of one segment, in place."""
        raise NotImplementedError

    # --- the public API ----------------------------------------------------------------------------------------

    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        """Update every parameter in place from its gradient as it is now. ``closure`` (optional, as PyTorch's)
        is called first, typically to recompute the loss and the gradients; its value is returned."""
        group = self.param_groups[0]
        missing = [key for key in self.defaults if key not in group]
        if missing:
            raise ValueError(f"param_groups[0]: expected the hyperparameters {sorted(self.defaults)}, got no "
                             f"{missing}")
        hyper = self._check_hyper(group, "param_groups[0]")
        loss = None
        if closure is not None:
            loss = closure()
        for seg, state in zip(self._segments, self._state):
            self._update(seg, state, hyper)
        return loss

    def zero_grad(self) -> None:
        """Set every gradient to zero, in place: a model's ``grads`` arrays (the same arrays, as
        ``model.zero_grad()``) and each pair's grad. (PyTorch's default ``set_to_none=True`` has no NumPy
        equivalent; this is its ``set_to_none=False``.)"""
        for seg in self._segments:
            seg.grad[...] = 0

    def state_dict(self) -> Dict[str, Any]:
        """The optimizer's state in ``torch.optim``'s layout: ``{"state": {i: {...}}, "param_groups": [{...,
        "params": [0, 1, ...]}]}``, parameters numbered in order (a model's in ``named_parameters()`` order).
        ``state`` holds only parameters that have stepped (SGD with momentum: ``"momentum_buffer"``; Adam and
        AdamW: ``"step"``, ``"exp_avg"``, ``"exp_avg_sq"`` and with amsgrad ``"max_exp_avg_sq"``). The arrays are
        copies, so the dict is a snapshot (PyTorch's refers to live tensors); it pickles."""
        state: Dict[int, Dict[str, Any]] = {}
        for i, (s, k) in enumerate(self._index):
            seg, seg_state = self._segments[s], self._state[s]
            if seg_state:
                state[i] = {key: seg.part(value, k).copy() if isinstance(value, np.ndarray) else value
                            for key, value in seg_state.items()}
        group = {key: value for key, value in self.param_groups[0].items() if key != "params"}
        group["params"] = list(range(len(self._index)))
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load what ``state_dict()`` returned (of an optimizer of the same class over parameters of the same
        shapes, in the same order), so that training continues exactly as it would have. The hyperparameters are
        loaded too, as PyTorch does. A ``torch.optim`` state_dict of the same optimizer loads as well (tensors are
        converted). Everything is checked first: a rejected dict changes nothing."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict: expected a mapping with 'state' and 'param_groups', got "
                            f"{_describe(state_dict)}")
        if "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError(f"state_dict: expected the keys 'param_groups' and 'state', got "
                             f"{sorted(map(str, state_dict))}")
        groups = state_dict["param_groups"]
        if not isinstance(groups, (list, tuple)) or len(groups) != 1 or not isinstance(groups[0], Mapping):
            raise ValueError(f"state_dict['param_groups']: expected a list of one parameter group (a dict), got "
                             f"{groups!r:.200}")
        saved, where = groups[0], "state_dict['param_groups'][0]"
        ids = saved.get("params")
        if not isinstance(ids, (list, tuple)) or len(ids) != len(self._index):
            raise ValueError(f"{where}['params']: expected {len(self._index)} parameter ids (one per parameter of "
                             f"this optimizer), got {ids!r:.200}")
        group = {key: value for key, value in self.param_groups[0].items() if key != "params"}
        group.update((key, value) for key, value in saved.items()
                     if key != "params" and key not in _TORCH_IMPLEMENTATION_KEYS)
        hyper = self._check_hyper(group, where)
        states = state_dict["state"]
        if not isinstance(states, Mapping):
            raise TypeError(f"state_dict['state']: expected a mapping of parameter id -> state, got "
                            f"{_describe(states)}")
        position: Dict[Any, int] = {}
        for i, pid in enumerate(ids):
            if not isinstance(pid, (int, np.integer)) or pid in position:
                raise ValueError(f"{where}['params']: expected distinct integer ids, got {list(ids)!r:.200}")
            position[pid] = i
        entries: List[Optional[Mapping[str, Any]]] = [None] * len(self._index)
        for pid, entry in states.items():
            if pid not in position:
                raise ValueError(f"state_dict['state']: expected the ids of {where}['params'], got {pid!r}")
            if not isinstance(entry, Mapping):
                raise TypeError(f"state_dict['state'][{pid!r}]: expected a mapping, got {_describe(entry)}")
            if any(value is not None for value in entry.values()):  # all None: no state (PyTorch's SGD can save that)
                entries[position[pid]] = entry
        new_state = [self._stage(s, entries[self._starts[s]:self._starts[s] + len(seg.views)], hyper)
                     for s, seg in enumerate(self._segments)]
        # Everything is checked: commit.
        self._state = new_state
        self.param_groups[0].clear()
        self.param_groups[0].update(group)
        self.param_groups[0].update(hyper)
        self.param_groups[0]["params"] = [view for seg in self._segments for view in seg.views]

    def _stage(self, s: int, entries: List[Optional[Mapping[str, Any]]], hyper: Dict[str, Any]) -> Dict[str, Any]:
        """Segment ``s``'s new state from the loaded entries of its parameters: checked, converted, copied."""
        seg, first = self._segments[s], self._starts[s]
        if all(entry is None for entry in entries):
            return {}
        if any(entry is None for entry in entries):
            k = entries.index(None)
            raise ValueError(f"state_dict['state']: expected a state for every parameter of {seg.name} or for none "
                             f"(its parameters step together), got none for parameter {first + k} "
                             f"({seg.label(k)})")
        scalar_keys, required, optional = self._state_keys(hyper)
        staged: Dict[str, Any] = {}
        keys_of_first: set[str] = set()
        for k, entry in enumerate(entries):
            assert entry is not None
            label = f"state_dict['state'][{first + k}]"
            present = {str(key) for key, value in entry.items() if value is not None}
            expected = set(scalar_keys) | set(required)
            if not expected <= present or not present <= expected | set(optional):
                raise ValueError(f"{label}: expected the keys {sorted(expected)}"
                                 + (f" (and optionally {sorted(optional)})" if optional else "")
                                 + f" for {type(self).__name__} with these hyperparameters, got {sorted(present)}")
            if k == 0:
                keys_of_first = present
            elif present != keys_of_first:
                raise ValueError(f"{label}: expected the keys {sorted(keys_of_first)} of the other parameters of "
                                 f"{seg.name} (they step together), got {sorted(present)}")
            for key in scalar_keys:
                value = _as_numpy(f"{label}[{key!r}]", entry[key])
                if value.size != 1 or value.dtype.kind not in "iuf":
                    raise TypeError(f"{label}[{key!r}]: expected a number, got {entry[key]!r:.100}")
                number = _non_negative(f"{label}[{key!r}]", float(value.reshape(())))
                if k > 0 and staged[key] != number:
                    raise ValueError(f"{label}[{key!r}]: expected the {key} of the other parameters of {seg.name} "
                                     f"({staged[key]}: they step together), got {number}")
                staged[key] = number
            for key in sorted(present - set(scalar_keys)):
                value = _as_numpy(f"{label}[{key!r}]", entry[key])
                if value.dtype.kind not in "biuf":
                    raise TypeError(f"{label}[{key!r}]: expected a real numeric array, got dtype {value.dtype}")
                if value.shape != seg.views[k].shape:
                    raise ValueError(f"{label}[{key!r}]: expected the parameter's shape {seg.views[k].shape}, got "
                                     f"{value.shape}")
                if k == 0:
                    staged[key] = np.empty(seg.param.shape, dtype=seg.param.dtype)
                seg.part(staged[key], k)[...] = value
        return staged

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} (", "Parameter Group 0"]
        lines += [f"    {key}: {value}" for key, value in sorted(self.param_groups[0].items()) if key != "params"]
        return "\n".join(lines) + "\n)"


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with momentum (and dampening, Nesterov) and L2 weight decay, as
    ``torch.optim.SGD``. At each step, for every parameter p with gradient g::

        g = -g if maximize
        g = g + weight_decay * p                      (weight_decay != 0)
        b = g  at the first step, else  b = momentum * b + (1 - dampening) * g      (momentum != 0)
        g = g + momentum * b if nesterov else b       (momentum != 0)
        p = p - lr * g

    Parameters
    ----------
    params : list of rnnfast models and (param, grad) pairs of NumPy float arrays (or one model).
    lr : learning rate, >= 0 (PyTorch's default 1e-3).
    momentum : >= 0. dampening : a number. nesterov : needs momentum > 0 and dampening 0, as PyTorch.
    weight_decay : >= 0.
    maximize : ascend instead.

    Positionally ``nesterov`` comes before ``weight_decay`` (``torch.optim.SGD`` has them the other way round); a
    call in PyTorch's order is refused, since ``nesterov`` must be a bool and ``weight_decay`` a number.
    """

    def __init__(self, params: Params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0, *, maximize: bool = False) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "dampening": dampening,
                                  "weight_decay": weight_decay, "nesterov": nesterov, "maximize": maximize})

    def _check_hyper(self, group: Mapping[str, Any], where: str) -> Dict[str, Any]:
        def name(key: str) -> str:
            return f"{where}[{key!r}]" if where else key

        hyper = {"lr": _non_negative(name("lr"), group["lr"]),
                 "momentum": _non_negative(name("momentum"), group["momentum"]),
                 "dampening": _number(name("dampening"), group["dampening"]),
                 "weight_decay": _non_negative(name("weight_decay"), group["weight_decay"]),
                 "nesterov": _flag(name("nesterov"), group["nesterov"]),
                 "maximize": _flag(name("maximize"), group["maximize"])}
        if hyper["nesterov"] and (hyper["momentum"] <= 0 or hyper["dampening"] != 0):
            raise ValueError(f"{name('nesterov')}: Nesterov momentum needs momentum > 0 and dampening == 0 (as "
                             f"torch.optim.SGD), got momentum={group['momentum']!r}, "
                             f"dampening={group['dampening']!r}")
        return hyper

    def _state_keys(self, hyper: Dict[str, Any]) -> Tuple[Tuple[str, ...], Tuple[str, ...], Tuple[str, ...]]:
        return (), ("momentum_buffer",), ()

    def _update(self, seg: _Segment, state: Dict[str, Any], hyper: Dict[str, Any]) -> None:
        p = seg.param
        g = -seg.grad if hyper["maximize"] else seg.grad
        weight_decay, momentum = hyper["weight_decay"], hyper["momentum"]
        if weight_decay != 0:
            g = g + weight_decay * p
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = np.array(g, dtype=p.dtype, order="C", copy=True)
            else:
                buf *= momentum
                buf += (1 - hyper["dampening"]) * g
            g = g + momentum * buf if hyper["nesterov"] else buf
        p -= hyper["lr"] * g


class Adam(Optimizer):
    """Adam (Kingma and Ba), optionally with AMSGrad, as ``torch.optim.Adam``. At step t, for every parameter p
    with gradient g::

        g = -g if maximize
        p = p * (1 - lr * weight_decay)               (decoupled_weight_decay: AdamW)
        g = g + weight_decay * p                      (otherwise, weight_decay != 0: L2 penalty)
        m = m + (1 - beta1) * (g - m)                 (a lerp, as PyTorch's)
        v = beta2 * v + (1 - beta2) * g * g
        v_max = max(v_max, v)                         (amsgrad; the denominator then uses v_max)
        p = p - lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    Parameters
    ----------
    params : list of rnnfast models and (param, grad) pairs of NumPy float arrays (or one model).
    lr : learning rate, >= 0. betas : (beta1, beta2), each in [0, 1). eps : >= 0. weight_decay : >= 0.
    amsgrad : keep the maximum of the second moment. maximize : ascend instead.
    decoupled_weight_decay : AdamW's decay (as the PyTorch argument of the same name).
    """

    def __init__(self, params: Params, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, *, maximize: bool = False,
                 decoupled_weight_decay: bool = False) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                                  "amsgrad": amsgrad, "maximize": maximize,
                                  "decoupled_weight_decay": decoupled_weight_decay})

    def _check_hyper(self, group: Mapping[str, Any], where: str) -> Dict[str, Any]:
        def name(key: str) -> str:
            return f"{where}[{key!r}]" if where else key

        return {"lr": _non_negative(name("lr"), group["lr"]),
                "betas": _betas(name("betas"), group["betas"]),
                "eps": _non_negative(name("eps"), group["eps"]),
                "weight_decay": _non_negative(name("weight_decay"), group["weight_decay"]),
                "amsgrad": _flag(name("amsgrad"), group["amsgrad"]),
                "maximize": _flag(name("maximize"), group["maximize"]),
                "decoupled_weight_decay": _flag(name("decoupled_weight_decay"), group["decoupled_weight_decay"])}

    def _state_keys(self, hyper: Dict[str, Any]) -> Tuple[Tuple[str, ...], Tuple[str, ...], Tuple[str, ...]]:
        if hyper["amsgrad"]:
            return ("step",), ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"), ()
        return ("step",), ("exp_avg", "exp_avg_sq"), ("max_exp_avg_sq",)

    def _update(self, seg: _Segment, state: Dict[str, Any], hyper: Dict[str, Any]) -> None:
        p = seg.param
        if not state:
            state["step"] = 0.0
            state["exp_avg"] = np.zeros(p.shape, p.dtype)
            state["exp_avg_sq"] = np.zeros(p.shape, p.dtype)
        if hyper["amsgrad"] and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = np.zeros(p.shape, p.dtype)
        lr, (beta1, beta2), eps, weight_decay = hyper["lr"], hyper["betas"], hyper["eps"], hyper["weight_decay"]
        step = state["step"] = state["step"] + 1.0
        g = -seg.grad if hyper["maximize"] else seg.grad
        if weight_decay != 0:
            if hyper["decoupled_weight_decay"]:
                p *= 1 - lr * weight_decay
            else:
                g = g + weight_decay * p
        m, v = state["exp_avg"], state["exp_avg_sq"]
        weight = 1 - beta1  # m.lerp(g, weight), computed the way PyTorch's lerp does on either side of 0.5
        if abs(weight) < 0.5:
            m += weight * (g - m)
        else:
            m[...] = g - (g - m) * (1 - weight)
        v *= beta2
        v += (1 - beta2) * g * g
        step_size = lr / (1 - beta1 ** step)
        correction2_sqrt = (1 - beta2 ** step) ** 0.5
        if hyper["amsgrad"]:
            v_max = state["max_exp_avg_sq"]
            np.maximum(v_max, v, out=v_max)
            denom = np.sqrt(v_max)
        else:
            denom = np.sqrt(v)
        denom /= correction2_sqrt
        denom += eps
        p -= step_size * (m / denom)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov and Hutter), as ``torch.optim.AdamW``: each step first
    multiplies the parameters by ``1 - lr * weight_decay``, then takes Adam's step without an L2 term. Same
    arguments as ``Adam``, with PyTorch's default ``weight_decay=1e-2``."""

    def __init__(self, params: Params, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         decoupled_weight_decay=True)


# ---------------------------------------------------------------------------------------------------------------------
# Gradient clipping
# ---------------------------------------------------------------------------------------------------------------------

def _norm_type(value: Any) -> float:
    if isinstance(value, str):
        try:
            p = float(value)
        except ValueError:
            raise ValueError(f"norm_type: expected a number > 0 or 'inf', got {value!r}") from None
    elif isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"norm_type: expected a number > 0 or 'inf', got {value!r} of type {type(value).__name__}")
    else:
        p = float(value)
    if not p > 0:  # also NaN
        raise ValueError(f"norm_type: expected a number > 0 or 'inf', got {value!r}")
    return p


def _total_norm(grads: Sequence[np.ndarray], p: float) -> float:
    """The p-norm of all the gradients together: the p-norm of their norms, as PyTorch computes it (in float64
    here, whatever the gradients' dtype)."""
    norms = []
    for g in grads:
        a = np.asarray(g, dtype=np.float64).ravel()
        if a.size == 0:
            norms.append(0.0)
        elif p == math.inf:
            norms.append(float(np.max(np.abs(a))))
        elif p == 2:
            norms.append(math.sqrt(float(np.dot(a, a))))
        elif p == 1:
            norms.append(float(np.sum(np.abs(a))))
        else:
            norms.append(float(np.sum(np.abs(a) ** p)) ** (1 / p))
    if p == math.inf:
        return max(norms)
    if p == 2:
        return math.sqrt(math.fsum(n * n for n in norms))
    return float(sum(n ** p for n in norms) ** (1 / p))


def _clip_norm(grads: Sequence[np.ndarray], max_norm: float, p: float, error_if_nonfinite: bool) -> float:
    if not grads:
        return 0.0
    total = _total_norm(grads, p)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"clip_grad_norm_: the total norm of order {p} of the gradients is {total}, so they "
                           f"cannot be clipped (nothing was changed); pass error_if_nonfinite=False to scale them "
                           f"by it anyway, as PyTorch")
    coefficient = min(max_norm / (total + 1e-6), 1.0) if not math.isnan(total) else math.nan
    if coefficient != 1.0:
        with np.errstate(invalid="ignore"):  # inf * 0 from a non-finite norm gives NaN, as PyTorch's does
            for g in grads:
                g *= coefficient
    return total


def clip_grad_norm_(params: Params, max_norm: float, norm_type: Union[float, str] = 2.0,
                    error_if_nonfinite: bool = False) -> float:
    """Scale the gradients of ``params`` in place so that their total norm is at most ``max_norm``, as
    ``torch.nn.utils.clip_grad_norm_``: the total norm is the ``norm_type``-norm of all the gradients together
    (``inf``: the largest absolute value), and every gradient is multiplied by ``min(max_norm / (total + 1e-6),
    1)``.

    ``params`` are rnnfast models (their ``grads``) and (param, grad) pairs, as for the optimizers. Returns the
    total norm before clipping, as a float (computed in float64). With ``error_if_nonfinite=True`` a NaN or
    infinite total norm raises ``RuntimeError`` (as PyTorch) and changes nothing; without it the gradients are
    scaled by the non-finite coefficient, as PyTorch does. ``max_norm`` must be >= 0 and ``norm_type`` > 0 (a
    number, ``math.inf`` or ``"inf"``).
    """
    if isinstance(max_norm, (bool, np.bool_)) or not isinstance(max_norm, numbers.Real):
        raise TypeError(f"max_norm: expected a number >= 0, got {max_norm!r} of type {type(max_norm).__name__}")
    if not float(max_norm) >= 0:  # also NaN
        raise ValueError(f"max_norm: expected a number >= 0, got {max_norm!r}")
    p = _norm_type(norm_type)
    flag = _flag("error_if_nonfinite", error_if_nonfinite)
    grads = _clip_grads(params)
    return _clip_norm(grads, float(max_norm), p, flag)


def clip_grad_value_(params: Params, clip_value: float) -> None:
    """Clamp every gradient of ``params`` to ``[-clip_value, clip_value]`` in place, as
    ``torch.nn.utils.clip_grad_value_``; ``clip_value`` must be >= 0."""
    if isinstance(clip_value, (bool, np.bool_)) or not isinstance(clip_value, numbers.Real):
        raise TypeError(f"clip_value: expected a number >= 0, got {clip_value!r} of type "
                        f"{type(clip_value).__name__}")
    value = float(clip_value)
    if not value >= 0:  # also NaN
        raise ValueError(f"clip_value: expected a number >= 0, got {clip_value!r}")
    for g in _clip_grads(params):
        np.clip(g, -value, value, out=g)


def _clip_grads(params: Params) -> List[np.ndarray]:
    """The gradients of ``params`` (checked as the optimizers check them); an empty list clips nothing, as
    PyTorch's clipping of no gradients."""
    return [seg.grad for seg in _collect(params, allow_empty=True)]
