"""rnnfast.torch: ``torch.nn.RNN``, ``LSTM``, ``GRU``, ``RNNCell``, ``LSTMCell`` and ``GRUCell`` whose forward and
backward run rnnfast's kernels.

Change one import and keep the rest of a PyTorch program -- optimizer, checkpoints, gradient clipping, hooks,
``DistributedDataParallel``::

    from rnnfast.torch import LSTM           # instead of: from torch.nn import LSTM
    lstm = LSTM(input_size=1, hidden_size=32, num_layers=2, batch_first=True)

or swap every ``nn.RNN`` / ``LSTM`` / ``GRU`` / ``RNNCell`` / ``LSTMCell`` / ``GRUCell`` of an existing model,
weights included: ``model = rnnfast.torch.convert(model)``.

Each class subclasses ``torch.nn``'s class of the same name: same constructor (``proj_size`` of ``LSTM``
included), parameters (names, shapes, order, initialization), ``state_dict``, ``repr`` and forward signature and
results (``LSTM``: ``(output, (h_n, c_n))``; ``LSTMCell``: ``(h', c')``); only ``forward`` is replaced. The fast
path covers CPU tensors of dtype float32 / float64 (input, states and weights of one dtype); anything else
(another device or dtype, autocast, tracing or compiling) runs PyTorch's own implementation, which also raises
PyTorch's own errors for bad arguments.

How it works: each module keeps an rnnfast model of the same configuration whose flat parameter buffer *is* the
storage of the module's ``Parameter`` s (each parameter is a view into it), so an optimizer step or
``load_state_dict`` writes straight into the buffer the kernels read and no copy is made on forward. Where that
sharing is not possible (weights replaced by ``torch.func.functional_call`` or a parametrization, parameters moved
to shared memory) the values are copied into a separate buffer on each forward and backward instead. Forward and
backward go through one ``torch.autograd.Function`` for the stacks (an LSTM's ``c0`` an input and ``c_n`` an
output too) and one for the cells: backward runs rnnfast's BPTT into gradient buffers of its own call (so
backwards through one module in several threads at once stay independent) and hands the gradients of the input,
states and parameters to autograd, which accumulates them into ``.grad`` and runs any hooks. Modifying a parameter
in place between forward and backward raises PyTorch's usual version-counter error.

Double backward works: a backward that builds a graph (``create_graph=True``, for a gradient penalty or a
Hessian-vector product, say) recomputes the forward with PyTorch's own ops (``_VF.rnn_tanh``, ``lstm``, ``gru``,
``lstm_cell``, ..., as ``torch.nn`` calls them) from the saved input, states and weights and differentiates that,
so second derivatives are PyTorch's; so does a backward of batched gradients (``is_grads_batched``, gradcheck's
``check_batched_grad``). Inside ``torch.func`` transforms (``grad``, ``vmap``, ``jacrev``, ... over the module or
``functional_call``) forward runs PyTorch's implementation. Only the ordinary first-order backward runs on the
kernels.

Dropout of a stack (``dropout > 0``, ``num_layers > 1``, training mode): every layer's mask is drawn from PyTorch's
random generator before the call, as ``torch.nn.functional.dropout`` draws it (``bernoulli_(1 - p)`` then
``div_(1 - p)``, on the time-major ``[T, B, D*P]`` output or a PackedSequence's data) and in PyTorch's order, so the
masks equal PyTorch's for the same seed; the whole stack then runs in one kernel call that applies them.

PackedSequence input is unpacked to a padded batch that runs with rnnfast's ``lengths`` (padded steps cost no
compute) and the output is packed again with the input's ``batch_sizes`` and ordering, as PyTorch returns it.

The kernels split their work across ``rnnfast.set_num_threads`` threads (default: the CPUs this process may run
on), independently of ``torch.set_num_threads``.

Importing ``rnnfast`` never imports torch; this module needs torch (``pip install "rnnfast[torch]"``).
"""

from __future__ import annotations

if __name__ == "torch":  # pragma: no cover - only when the folder python/rnnfast itself is on sys.path
    raise ImportError(
        "rnnfast/torch was imported as the top-level package 'torch' because the folder python/rnnfast is on "
        "sys.path (a script run from inside it); run scripts from elsewhere, or with python -m"
    )

try:
    import torch  # noqa: F401 - the clear error below, before any submodule fails on it
except ImportError as exc:  # pragma: no cover - exercised without torch
    raise ImportError("rnnfast.torch needs PyTorch: pip install \"rnnfast[torch]\" (or pip install torch)") from exc

from ._benchmark import benchmark, format_benchmark
from ._convert import convert
from ._modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

__all__ = ["GRU", "GRUCell", "LSTM", "LSTMCell", "RNN", "RNNCell", "benchmark", "convert", "format_benchmark"]

# The classes' public home: a pickled model (torch.save of a whole model) names them rnnfast.torch.RNN and so on,
# wherever they are defined.
for _cls in (RNN, LSTM, GRU, RNNCell, LSTMCell, GRUCell):
    _cls.__module__ = __name__
del _cls
