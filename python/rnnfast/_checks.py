"""Argument checks shared by the public classes: each raises TypeError / ValueError naming the argument."""

from __future__ import annotations

import argparse
import functools
import math
import operator
import os
from typing import Any, Callable, Union

import numpy as np

DTypeLike = Union[str, type, np.dtype]

_SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_MAX_SIZE = 2**63 - 1
NONLINEARITIES = ("tanh", "relu")


def integer(name: str, value: Any, minimum: int) -> int:
    """An int >= ``minimum`` (0 or 1) and below 2**63; bools and floats are refused."""
    what = "a positive integer" if minimum == 1 else "a non-negative integer"
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected {what}, got {value!r}")
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected {what}, got {value!r} of type {type(value).__name__}") from None
    if n < minimum:
        raise ValueError(f"{name}: expected {what}, got {n}")
    if n > _MAX_SIZE:
        raise ValueError(f"{name}: expected {what} below 2**63, got {n}")
    return n


def positive_int(name: str, value: Any) -> int:
    return integer(name, value, 1)


def non_negative_int(name: str, value: Any) -> int:
    return integer(name, value, 0)


def proj_size(value: int, hidden_size: int) -> int:
    """LSTM's proj_size: 0 (no projection) or below hidden_size, as PyTorch requires."""
    if value >= hidden_size:
        raise ValueError(f"proj_size: expected 0 or an integer below hidden_size={hidden_size}, got {value}")
    return value


def state_pair(hx: Any) -> tuple[Any, Any]:
    """An LSTM's ``hx``: None, or a pair (h0, c0)."""
    if hx is None:
        return None, None
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
        raise TypeError(f"hx: expected None or a pair (h0, c0) of arrays, got {type(hx).__name__}"
                        + (f" of length {len(hx)}" if isinstance(hx, (tuple, list)) else ""))
    if hx[0] is None or hx[1] is None:  # as PyTorch: both states or neither
        raise TypeError("hx: expected a pair (h0, c0) of arrays, got None for "
                        + ("both" if hx[0] is None and hx[1] is None else "h0" if hx[0] is None else "c0")
                        + "; pass hx=None for zero states")
    return hx[0], hx[1]


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {value!r} of type {type(value).__name__}")
    return bool(value)


def nonlinearity(value: Any) -> str:
    if not isinstance(value, str) or value not in NONLINEARITIES:
        raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {value!r}")
    return value


def probability(name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number in [0, 1], got {value!r} of type {type(value).__name__}")
    p = float(value)
    if not 0.0 <= p <= 1.0:  # also rejects NaN
        raise ValueError(f"{name}: expected a number in [0, 1], got {value!r}")
    return p


def model_dtype(value: Any) -> np.dtype:
    """"float32" / "float64", the NumPy dtype or type, or torch.float32 / torch.float64 (told apart without
    importing torch); None is PyTorch's default, float32."""
    if value is None:  # PyTorch's dtype=None: the default dtype
        return np.dtype(np.float32)
    if type(value).__module__ == "torch" and type(value).__name__ == "dtype":
        name = str(value).rpartition(".")[2]  # "torch.float64" -> "float64"
        if name not in ("float32", "float64"):
            raise ValueError(f"dtype: expected 'float32' or 'float64' (or torch.float32, torch.float64), got {value}")
        return np.dtype(name)
    try:
        dt: np.dtype = np.dtype(value)
    except TypeError:
        raise TypeError(f"dtype: expected 'float32' or 'float64', got {value!r}") from None
    if dt not in _SUPPORTED_DTYPES:
        raise ValueError(f"dtype: expected 'float32' or 'float64', got {value!r}")
    return dt


def device(value: Any) -> None:
    """PyTorch's ``device`` argument, for constructors that mirror torch.nn's: None, "cpu" ("cpu:N") or a CPU
    torch.device (told apart without importing torch). rnnfast computes on the CPU only."""
    if value is None:
        return
    if type(value).__module__ == "torch" and type(value).__name__ == "device":
        kind = str(getattr(value, "type", ""))
    elif isinstance(value, str):
        kind = value.partition(":")[0].strip()
    else:
        raise TypeError(f"device: expected None, 'cpu' or torch.device('cpu'), got {type(value).__name__} {value!r}")
    if kind != "cpu":
        raise ValueError(f"device: rnnfast runs on the CPU only: expected None, 'cpu' or torch.device('cpu'), "
                         f"got {str(value)!r}")


def rng(seed: Any) -> np.random.Generator:
    if seed is not None and (isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer))):
        raise TypeError(f"seed: expected None or a non-negative integer, got {seed!r}")
    if seed is not None and seed < 0:
        raise ValueError(f"seed: expected None or a non-negative integer, got {seed}")
    return np.random.default_rng(seed)


def array(name: str, value: Any, dtype: np.dtype) -> np.ndarray:
    """An ndarray of exactly the model's dtype; anything else is a TypeError (no silent casts)."""
    if not isinstance(value, np.ndarray):
        kind = type(value)
        if kind.__module__.startswith("torch"):
            raise TypeError(
                f"{name}: expected a numpy.ndarray of dtype {dtype}, got a torch.{kind.__name__}; rnnfast.torch has "
                f"the drop-in torch.nn modules, or pass {name}.detach().numpy()"
            )
        if isinstance(value, np.generic):
            raise TypeError(
                f"{name}: expected a numpy.ndarray of dtype {dtype}, got the NumPy scalar numpy.{kind.__name__}("
                f"{value.item()!r}), which has no shape; pass an array (numpy.asarray(..., dtype=numpy.{dtype}) of the "
                f"expected shape)"
            )
        raise TypeError(
            f"{name}: expected a numpy.ndarray of dtype {dtype}, got {kind.__name__} "
            f"(convert with numpy.asarray({name}, dtype=numpy.{dtype}))"
        )
    if value.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (the model's dtype), got {value.dtype}")
    return value


@functools.lru_cache(maxsize=None)
def physical_memory() -> int:
    """Bytes of physical memory, or 0 where unknown (read once: every forward checks against it)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 0


def fits_in_memory(arrays: list[tuple[str, tuple[int, ...]]], dtype: np.dtype) -> None:
    """MemoryError naming the array, its shape and size, when the arrays a call is about to make cannot fit in
    physical memory (each alone, or all together); checked before any copy or work."""
    memory = physical_memory()
    if memory <= 0:
        return
    total = 0
    for name, shape in arrays:
        nbytes = math.prod(shape) * dtype.itemsize
        total += nbytes
        if nbytes > memory or total > memory:
            what = f"{name} of shape {tuple(shape)} ({dtype}) needs {nbytes / 2**30:.1f} GiB"
            if nbytes <= memory:
                what += f", {total / 2**30:.1f} GiB with the call's other arrays"
            raise MemoryError(f"{what}, more than this machine's {memory / 2**30:.1f} GiB")


def shape_error(name: str, expected: str, actual: tuple[int, ...]) -> ValueError:
    return ValueError(f"{name}: expected shape {expected}, got {actual}")


def lengths(value: Any, batch: int, seq_len: int) -> np.ndarray:
    """Sequence lengths as a contiguous int64 array of shape [batch], each in [1, seq_len]."""
    arr = np.asarray(value)
    if arr.size == 0 and arr.dtype.kind == "f":  # np.asarray([]) is float64: an empty list for an empty batch
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"lengths: expected integers, got dtype {arr.dtype}")
    if arr.ndim == 0 and batch == 1:
        arr = arr.reshape(1)
    if arr.shape != (batch,):
        raise ValueError(f"lengths: expected shape ({batch},) (one length per sequence), got {arr.shape}")
    bad = np.flatnonzero((arr < 1) | (arr > seq_len))
    if bad.size:
        b = int(bad[0])
        raise ValueError(f"lengths[{b}]: expected an integer in [1, T={seq_len}], got {arr[b]}")
    return for_kernel(arr.astype(np.int64, copy=False))


def cli_float(low: float, high: float) -> Callable[[str], float]:
    """An argparse ``type`` for numbers in [low, high), with a clear message otherwise."""
    what = f"a number >= {low:g} and < {high:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not low <= value < high:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


def cli_int(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` for integers >= ``minimum``, with a clear message otherwise."""
    what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


def for_kernel(a: np.ndarray) -> np.ndarray:
    """``a`` as the kernels need it: C-contiguous and aligned (a copy only when it is not). Contiguity alone is not
    enough: a view at an odd byte offset is contiguous but misaligned, and reading it is undefined behaviour."""
    flags = a.flags
    if flags.c_contiguous and flags.aligned:
        return a
    return np.require(a, requirements=["C", "A"])
