"""rnnfast: fast vanilla (Elman) RNN forward and backpropagation through time on the CPU.

``RNN`` and ``RNNCell`` follow ``torch.nn.RNN`` / ``torch.nn.RNNCell``: same shapes, parameter names and
initialization, and their ``state_dict`` moves both ways. ``rnnfast.reference`` is a plain NumPy implementation
of the same semantics, the oracle of the test suite.
"""

from __future__ import annotations

from . import _checks, _core
from ._cell import RNNCell, RNNCellCache
from ._rnn import RNN, RNNCache

__version__: str = _core.__version__

__all__ = ["RNN", "RNNCache", "RNNCell", "RNNCellCache", "__version__", "get_num_threads", "set_num_threads"]


def set_num_threads(n: int) -> None:
    """Use ``n`` threads (n >= 1) for the matrix products of every model in this process."""
    _core.set_num_threads(_checks.positive_int("n", n))


def get_num_threads() -> int:
    """Threads used for the matrix products (1 when built without OpenMP)."""
    return int(_core.get_num_threads())
