"""The benchmark grid: one ``Case`` per configuration, the cell kinds and dtypes a case can take, and
``select_cases``. A new configuration is one more row of ``CASES``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

MODES = ("inference", "train")
#: The cell kinds and their gate counts.
KIND_GATES = {"rnn": 1, "lstm": 4, "gru": 3}
#: The element types a case runs in (rnnfast's two model dtypes).
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class Case:
    """One benchmark configuration. ``cell`` cases time a single ``RNNCell`` step (``seq_len`` is 1)."""

    name: str
    seq_len: int          # T
    batch: int            # B
    input_size: int       # I
    hidden_size: int      # H
    num_layers: int = 1   # L
    bidirectional: bool = False
    cell: bool = False
    nonlinearity: str = "tanh"
    ragged: bool = False  # lengths drawn uniformly from 1..T (rnnfast's `lengths`, PyTorch's packed path)
    kind: str = "rnn"     # the cell kind: "rnn", "lstm" or "gru"
    dtype: str = "float32"  # the element type of weights, inputs and states: "float32" or "float64"

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def modes(self) -> Tuple[str, ...]:
        return ("inference",) if self.cell else MODES

    @property
    def flops(self) -> int:
        """Floating-point operations of one forward pass: ``2*T*B*G*H*(I_layer + H)`` per layer and direction."""
        total = 0
        gates = KIND_GATES[self.kind]
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else self.directions * self.hidden_size
            total += self.directions * 2 * self.seq_len * self.batch * gates * self.hidden_size * (
                layer_input + self.hidden_size)
        return total


def _cell_case(name: str, hidden: int) -> Case:
    return Case(name, seq_len=1, batch=1, input_size=hidden, hidden_size=hidden, cell=True)


#: The benchmark grid, by name, in the order it runs.
CASES: Dict[str, Case] = {c.name: c for c in [
    Case("seed_1layer", 10, 3, 100, 20, 1),
    Case("seed_4layer", 10, 3, 100, 20, 4),
    Case("stream_T1000_B1", 1000, 1, 32, 64, 1),
    Case("mid_T50_B16_H128", 50, 16, 64, 128, 1),
    Case("big_T100_B64_H256", 100, 64, 256, 256, 1),
    Case("big_T100_B64_H512", 100, 64, 512, 512, 1),
    Case("bidir2_T50_B32_H128", 50, 32, 128, 128, 2, bidirectional=True),
    # PyTorch's word-language-model example: bptt 35, batch 20, 200 units, 2 layers.
    Case("wlm_T35_B20_H200_L2", 35, 20, 200, 200, 2),
    # Variable lengths: the ragged batch against the same batch at full length.
    Case("ragged_T200_B64_H128", 200, 64, 128, 128, 1, ragged=True),
    Case("full_T200_B64_H128", 200, 64, 128, 128, 1),
    _cell_case("cell_step_H20", 20),
    _cell_case("cell_step_H128", 128),
]}


def select_cases(patterns: Optional[Sequence[str]] = None) -> List[Case]:
    """The cases named by ``patterns`` (exact names or substrings of names), in grid order; None means all."""
    if patterns is None:
        return list(CASES.values())
    if isinstance(patterns, str):
        patterns = [patterns]
    chosen = set()
    for pattern in patterns:
        matches = [pattern] if pattern in CASES else [name for name in CASES if pattern in name]
        if not matches:
            raise ValueError(f"cases: {pattern!r} matches no case; the cases are: {', '.join(CASES)}")
        chosen.update(matches)
    return [case for name, case in CASES.items() if name in chosen]


def check_dtype(dtype: object) -> str:
    """``dtype`` ("float32", "float64", or a NumPy dtype / type of those) as its name; ValueError otherwise."""
    name: Optional[str] = None
    if dtype is not None:  # np.dtype(None) is float64
        try:
            name = np.dtype(dtype).name  # type: ignore[call-overload]
        except TypeError:
            pass
    if name not in DTYPES:
        raise ValueError(f"dtype: expected one of {', '.join(map(repr, DTYPES))}, got {dtype!r}")
    return str(name)
