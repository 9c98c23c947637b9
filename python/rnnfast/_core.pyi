"""Type stubs of rnnfast._core: the private compiled module (python/bindings/*.cpp) for the instruction-set
level the loader chose (python/rnnfast/_core.py).

Arrays are C-contiguous and of exactly the kernel's dtype (the bindings do not convert); the public classes
``rnnfast.RNN`` and ``rnnfast.RNNCell`` take care of that. Shape errors raise ValueError.
"""

from typing import List, Optional, Tuple

import numpy as np
import numpy.typing as npt

_F32 = npt.NDArray[np.float32]
_F64 = npt.NDArray[np.float64]
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

def cpu_supports(level: str) -> bool:
    """Whether this CPU can run the kernels of an instruction-set level (baseline, avx2, avx512, native)."""

def get_num_threads() -> int:
    """Threads the kernels split their work across."""

def set_num_threads(n: int) -> None:
    """Set the threads the kernels split their work across (n >= 1, else ValueError)."""

def simd_instruction_sets() -> str:
    """Eigen's description of the SIMD instruction sets the kernels were compiled for."""

def eigen_version() -> str:
    """E.g. "Eigen 3.4.0"."""

def compiler() -> str:
    """Compiler name and version."""

class StackCacheF32:
    """What backward needs from one forward of a stacked RNN (opaque)."""

    @property
    def seq_len(self) -> int: ...
    @property
    def batch(self) -> int: ...
    @property
    def borrows(self) -> bool:
        """Whether it refers to x and the output instead of holding copies."""

class StackCacheF64:
    """What backward needs from one forward of a stacked RNN (opaque)."""

    @property
    def seq_len(self) -> int: ...
    @property
    def batch(self) -> int: ...
    @property
    def borrows(self) -> bool:
        """Whether it refers to x and the output instead of holding copies."""

class StackF32:
    """Stacked, optionally bidirectional Elman RNN kernels, float32."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, bidirectional: bool, bias: bool,
                 nonlinearity: str) -> None: ...
    def param_layout(self) -> _Layout: ...
    @property
    def param_count(self) -> int: ...
    def forward(self, params: _F32, x: _F32, h0: Optional[_F32], masks: Optional[_F32], lengths: Optional[_I64],
                want_cache: bool) -> Tuple[_F32, _F32, Optional[StackCacheF32]]:
        """params [P], x [T, B, I], h0 [L*D, B, H], masks [L-1, T, B, D*H], lengths [B]
        -> (output [T, B, D*H], h_n [L*D, B, H], cache or None)."""
    def backward(self, params: _F32, cache: StackCacheF32, grad_output: Optional[_F32], grad_h_n: Optional[_F32],
                 grads: _F32, want_dx: bool = True) -> Tuple[Optional[_F32], _F32]:
        """Adds into grads [P]; -> (grad_x [T, B, I] or None without want_dx, grad_h0 [L*D, B, H])."""

class StackF64:
    """Stacked, optionally bidirectional Elman RNN kernels, float64."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, bidirectional: bool, bias: bool,
                 nonlinearity: str) -> None: ...
    def param_layout(self) -> _Layout: ...
    @property
    def param_count(self) -> int: ...
    def forward(self, params: _F64, x: _F64, h0: Optional[_F64], masks: Optional[_F64], lengths: Optional[_I64],
                want_cache: bool) -> Tuple[_F64, _F64, Optional[StackCacheF64]]:
        """params [P], x [T, B, I], h0 [L*D, B, H], masks [L-1, T, B, D*H], lengths [B]
        -> (output [T, B, D*H], h_n [L*D, B, H], cache or None)."""
    def backward(self, params: _F64, cache: StackCacheF64, grad_output: Optional[_F64], grad_h_n: Optional[_F64],
                 grads: _F64, want_dx: bool = True) -> Tuple[Optional[_F64], _F64]:
        """Adds into grads [P]; -> (grad_x [T, B, I] or None without want_dx, grad_h0 [L*D, B, H])."""

class CellCacheF32:
    """What backward needs from one cell step (opaque)."""

class CellCacheF64:
    """What backward needs from one cell step (opaque)."""

class CellF32:
    """Elman RNN cell kernels, float32."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool, nonlinearity: str) -> None: ...
    def param_layout(self) -> _Layout: ...
    @property
    def param_count(self) -> int: ...
    def forward(self, params: _F32, x: _F32, h: Optional[_F32], want_cache: bool
                ) -> Tuple[_F32, Optional[CellCacheF32]]:
        """params [P], x [B, I], h [B, H] -> (h_new [B, H], cache or None)."""
    def backward(self, params: _F32, cache: CellCacheF32, grad_h_new: _F32, grads: _F32) -> Tuple[_F32, _F32]:
        """Adds into grads [P]; -> (grad_x [B, I], grad_h [B, H])."""

class CellF64:
    """Elman RNN cell kernels, float64."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool, nonlinearity: str) -> None: ...
    def param_layout(self) -> _Layout: ...
    @property
    def param_count(self) -> int: ...
    def forward(self, params: _F64, x: _F64, h: Optional[_F64], want_cache: bool
                ) -> Tuple[_F64, Optional[CellCacheF64]]:
        """params [P], x [B, I], h [B, H] -> (h_new [B, H], cache or None)."""
    def backward(self, params: _F64, cache: CellCacheF64, grad_h_new: _F64, grads: _F64) -> Tuple[_F64, _F64]:
        """Adds into grads [P]; -> (grad_x [B, I], grad_h [B, H])."""

SmallStackF32 = StackF32  # the stack kernels of small_isa_level's module
SmallStackF64 = StackF64
