"""``convert``: swap the ``torch.nn`` recurrent modules of a model for rnnfast.torch's, weights and hooks included."""

from __future__ import annotations

import warnings
from typing import Any, Dict, Sequence, Tuple

import torch

from ._modules import GRU, GRUCell, LSTM, LSTMCell, RNN, RNNCell

# Module hook registries carried over by convert() (those this torch version has).
_HOOK_ATTRIBUTES = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
                    "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_backward_pre_hooks",
                    "_backward_hooks", "_is_full_backward_hook", "_state_dict_hooks", "_state_dict_pre_hooks",
                    "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")


# torch.nn's class -> rnnfast.torch's, and the constructor arguments taken from the old module.
_STACK_ARGS = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional")
_CELL_ARGS = ("input_size", "hidden_size", "bias")
_SWAPS: Dict[type, Tuple[type, Tuple[str, ...]]] = {
    torch.nn.RNN: (RNN, _STACK_ARGS + ("nonlinearity",)),
    torch.nn.LSTM: (LSTM, _STACK_ARGS + ("proj_size",)),
    torch.nn.GRU: (GRU, _STACK_ARGS),
    torch.nn.RNNCell: (RNNCell, _CELL_ARGS + ("nonlinearity",)),
    torch.nn.LSTMCell: (LSTMCell, _CELL_ARGS),
    torch.nn.GRUCell: (GRUCell, _CELL_ARGS),
}


def convert(module: torch.nn.Module) -> torch.nn.Module:
    """Swap every ``torch.nn.RNN`` / ``LSTM`` / ``GRU`` / ``RNNCell`` / ``LSTMCell`` / ``GRUCell`` in ``module``
    (the module itself included) for rnnfast.torch's class of the same name; return the module, or its replacement
    when it is itself one.

    Children are replaced in place in their parents. The new modules take over the old ones' very ``Parameter``
    objects (so the weights, an optimizer made before the swap, and parameter hooks all carry over), their training
    mode and their module hooks. Only those exact classes are swapped: a subclass of them may override
    ``forward``. A module reachable along several paths becomes one replacement. No random numbers are drawn.
    """
    return _convert(module, {})


def _convert(module: torch.nn.Module, memo: Dict[int, torch.nn.Module]) -> torch.nn.Module:
    if id(module) in memo:
        return memo[id(module)]
    new: torch.nn.Module
    swap = _SWAPS.get(type(module))
    if swap is not None:
        new = _swap(module, *swap)
    else:
        new = module
        for name, child in list(module.named_children()):
            converted = _convert(child, memo)
            if converted is not child:
                setattr(module, name, converted)
    memo[id(module)] = new
    return new


def _swap(old: Any, cls: type, arg_names: Sequence[str]) -> torch.nn.Module:
    weights = list(old.parameters(recurse=False))
    dtype = weights[0].dtype if weights else None
    kwargs = {name: getattr(old, name) for name in arg_names}
    if "dropout" in kwargs:
        kwargs["dropout"] = float(kwargs["dropout"])
    new: Any
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTorch's dropout warning, given already when `old` was made
        # On the meta device: no memory, no random numbers; the old parameters are then taken over.
        new = cls(**kwargs, device="meta", dtype=dtype)
    for name, param in old.named_parameters(recurse=False):
        setattr(new, name, param)
    if isinstance(new, torch.nn.RNNBase):
        new._init_flat_weights()
    new.train(old.training)
    for attr in _HOOK_ATTRIBUTES:
        if attr in old.__dict__:
            new.__dict__[attr] = old.__dict__[attr]
    new._rnnfast_share()
    return new
