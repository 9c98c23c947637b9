"""Type stubs of rnnfast._core: the private compiled module (python/bindings/*.cpp) for the instruction-set
level the loader chose (python/rnnfast/_core.py).

Arrays are C-contiguous and of exactly the kernel's dtype (the bindings do not convert); the public classes
``rnnfast.RNN`` and ``rnnfast.RNNCell`` take care of that. Shape errors raise ValueError.
"""

from typing import Dict, Generic, List, Optional, Tuple, TypeVar

import numpy as np
import numpy.typing as npt

_I64 = npt.NDArray[np.int64]
# (name, offset into the flat parameter buffer, shape), in PyTorch's order.
_Layout = List[Tuple[str, int, Tuple[int, ...]]]

__version__: str
isa_level: str
module_name: str  # the loaded module, e.g. "_core_avx2"
small_isa_level: str  # the level whose kernels run small problems
LEVELS: Tuple[str, ...]

def installed_levels() -> List[str]:
    """The instruction-set levels whose module is installed, best first."""

def instruction_sets() -> Dict[str, str]:
    """The SIMD instruction sets each loaded level's kernels were compiled for, by level (the level chosen, then the
    level for small problems where that differs)."""

def cpu_supports(level: str) -> bool:
    """Whether this CPU can run the kernels of an instruction-set level (baseline, avx2, avx512, native)."""

def get_num_threads() -> int:
    """Threads the kernels split their work across."""

def set_num_threads(n: int) -> None:
    """Set the threads the kernels split their work across (n >= 1, else ValueError)."""

def default_num_threads() -> int:
    """The default thread count: the CPUs this process may use (affinity, capped by a cgroup CPU quota)."""

def num_threads_is_default() -> bool:
    """Whether set_num_threads was never called (the thread count is still the default)."""

def reset_num_threads() -> None:
    """Back to the default thread count, as if set_num_threads had never been called."""

def set_thread_cap(n: int) -> None:
    """At most n threads for the calling thread's kernel calls from now on; 0 removes the cap."""

def default_threads_source() -> str:
    """Which bound decided default_num_threads(): "affinity mask", "cgroup quota (FILE)" or "hardware threads"."""

def simd_instruction_sets() -> str:
    """Eigen's description of the SIMD instruction sets the kernels were compiled for."""

def eigen_version() -> str:
    """E.g. "Eigen 3.4.0"."""

def compiler() -> str:
    """Compiler name and version."""

# The kernels and caches exist once per dtype (F32, F64) with the same methods: generic bases, typed by the scalar.
_S = TypeVar("_S", np.float32, np.float64)

class _StackCache(Generic[_S]):
    """What backward needs from one forward of a stacked RNN (opaque)."""

    @property
    def seq_len(self) -> int: ...
    @property
    def batch(self) -> int: ...
    @property
    def borrows(self) -> bool:
        """Whether it refers to x and the output instead of holding copies."""

class _Stack(Generic[_S]):
    """Stacked, optionally bidirectional recurrent kernels (Elman, LSTM, GRU)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, bidirectional: bool, bias: bool,
                 nonlinearity: str, cell: str = "rnn", proj_size: int = 0) -> None: ...
    def param_layout(self) -> _Layout: ...
    @property
    def param_count(self) -> int: ...
    @property
    def spare_bytes(self) -> int:
        """Bytes of the storage kept from the last released cache for the next forward that keeps one (0 after a
        forward that keeps none)."""
    def forward(self, params: npt.NDArray[_S], x: npt.NDArray[_S], h0: Optional[npt.NDArray[_S]],
                masks: Optional[npt.NDArray[_S]], lengths: Optional[_I64], want_cache: bool,
                c0: Optional[npt.NDArray[_S]] = None, borrow: bool = True
                ) -> Tuple[npt.NDArray[_S], npt.NDArray[_S], Optional[npt.NDArray[_S]], Optional[_StackCache[_S]]]:
        """params [N], x [T, B, I], h0 [L*D, B, P], masks [L-1, T, B, D*P], lengths [B], c0 [L*D, B, H] (LSTM)
        -> (output [T, B, D*P], h_n [L*D, B, P], c_n [L*D, B, H] or None, cache or None). With borrow (and no
        lengths) the cache refers to x and the output instead of copying them."""
    def call(self, params: npt.NDArray[_S], x: object
             ) -> Optional[Tuple[npt.NDArray[_S], npt.NDArray[_S], Optional[npt.NDArray[_S]], None]]:
        """forward of x [T, B, I] from zero states, no cache -> (output, h_n, c_n or None, None); None when x is not
        an ndarray of exactly the kernel's dtype and shape, C-contiguous and aligned (the caller's general path then
        checks)."""
    def step(self, params: npt.NDArray[_S], x: object, h: object, c: object = None
             ) -> Optional[Tuple[npt.NDArray[_S], Optional[npt.NDArray[_S]]]]:
        """One step of a one-layer, one-direction kernel (a cell), no cache: params [N], x [B, I], h [B, P] or None,
        c [B, H] (LSTM) or None -> (h_new [B, P], c_new [B, H] or None); None when x, h or c is not an ndarray of
        exactly the kernel's dtype and shape, C-contiguous and aligned (the caller's general path then checks)."""
    def backward(self, params: npt.NDArray[_S], cache: _StackCache[_S], grad_output: Optional[npt.NDArray[_S]],
                 grad_h_n: Optional[npt.NDArray[_S]], grads: Optional[npt.NDArray[_S]], want_dx: bool = True,
                 grad_c_n: Optional[npt.NDArray[_S]] = None
                 ) -> Tuple[Optional[npt.NDArray[_S]], npt.NDArray[_S], Optional[npt.NDArray[_S]],
                            Optional[npt.NDArray[_S]]]:
        """-> (grad_x [T, B, I] or None without want_dx, grad_h0 [L*D, B, P], grad_c0 [L*D, B, H] or None,
        parameter gradients [N] or None). Adds into grads [N] once everything succeeded; with grads None,
        returns the call's own buffer instead."""

class _CellCache(Generic[_S]):
    """What backward needs from one cell step (opaque)."""

class _Cell(Generic[_S]):
    """Elman RNN cell kernels."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool, nonlinearity: str) -> None: ...
    def param_layout(self) -> _Layout: ...
    @property
    def param_count(self) -> int: ...
    def forward(self, params: npt.NDArray[_S], x: npt.NDArray[_S], h: Optional[npt.NDArray[_S]], want_cache: bool
                ) -> Tuple[npt.NDArray[_S], Optional[_CellCache[_S]]]:
        """params [P], x [B, I], h [B, H] -> (h_new [B, H], cache or None)."""
    def step(self, params: npt.NDArray[_S], x: object, h: object) -> Optional[npt.NDArray[_S]]:
        """params [P], x [B, I], h [B, H] or None -> h_new [B, H]; None when x or h is not an ndarray of exactly the
        kernel's dtype and shape, C-contiguous and aligned (the caller's general path then checks)."""
    def backward(self, params: npt.NDArray[_S], cache: _CellCache[_S], grad_h_new: npt.NDArray[_S],
                 grads: Optional[npt.NDArray[_S]]
                 ) -> Tuple[npt.NDArray[_S], npt.NDArray[_S], Optional[npt.NDArray[_S]]]:
        """-> (grad_x [B, I], grad_h [B, H], parameter gradients [P] or None); as the stack's backward."""

class StackCacheF32(_StackCache[np.float32]): ...
class StackCacheF64(_StackCache[np.float64]): ...
class StackF32(_Stack[np.float32]): ...
class StackF64(_Stack[np.float64]): ...
class CellCacheF32(_CellCache[np.float32]): ...
class CellCacheF64(_CellCache[np.float64]): ...
class CellF32(_Cell[np.float32]): ...
class CellF64(_Cell[np.float64]): ...

SmallStackF32 = StackF32  # the stack kernels of small_isa_level's module
SmallStackF64 = StackF64
