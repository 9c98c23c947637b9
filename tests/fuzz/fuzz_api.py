#!/usr/bin/env python3
"""Fuzz harness for rnnfast's public API.

Every input is a short program: a few calls on a small world of models, cells and caches, with arguments that are
valid, nearly valid (one dimension, dtype or layout off) or garbage (None, huge integers, strings, NaN, objects,
caches of other models, stale caches...). Each call into rnnfast may only

- succeed, with results of the documented shapes and dtype, or
- raise TypeError, ValueError or MemoryError, leaving the model or cell bitwise unchanged.

Anything else (another exception type, a crash, a hang) is a failure: the harness prints the input and exits 1.

    python tests/fuzz/fuzz_api.py --runs 100000               # atheris (coverage-guided) when installed
    python tests/fuzz/fuzz_api.py --runs 2000 --engine random # seeded random bytes: deterministic, no dependency
    python tests/fuzz/fuzz_api.py --replay crash-file         # rerun one input

The last line printed is "fuzz_api: N inputs ran, no failure (...)".
"""

from __future__ import annotations

import argparse
import faulthandler
import math
import operator
import os
import random
import struct
import tempfile
import sys
import traceback
import warnings
from typing import Any, Callable, List, Optional, Tuple

import numpy as np

try:
    import atheris
except ImportError:  # the random engine needs nothing
    atheris = None

rnnfast: Any = None  # imported by main(), instrumented for coverage when the engine is atheris


def import_rnnfast(instrument: bool) -> None:
    global rnnfast
    if instrument:
        with atheris.instrument_imports(include=["rnnfast"]):
            import rnnfast as module
    else:
        import rnnfast as module
    rnnfast = module

ALLOWED = (TypeError, ValueError, MemoryError)
PER_INPUT_TIMEOUT_S = 20


# Sizes that the memory check accepts but that really allocate and fill gigabytes are legitimate, only slow and
# hungry: a size in this range is replaced by 2**40 (refused at once, as the parameter count overflows or cannot
# fit in memory).
REALLY_ALLOCATES = range(2**12, 2**40)


class Data:
    """Decisions drawn from the fuzzer's bytes (zeros once they run out, so every input is a valid program)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def below(self, n: int) -> int:
        """An integer in [0, n)."""
        if n <= 1:
            return 0
        value = 0
        for _ in range((n.bit_length() + 7) // 8):
            value = (value << 8) | self.byte()
        return value % n

    def chance(self, p: float) -> bool:
        return self.byte() < p * 256

    def pick(self, options: list[Any]) -> Any:
        return options[self.below(len(options))]

    def small(self, lo: int = 1, hi: int = 6) -> int:
        return lo + self.below(hi - lo + 1)

    def double(self) -> float:
        raw = bytes(self.byte() for _ in range(8))
        return struct.unpack("<d", raw)[0]


# --------------------------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------------------------

HUGE_INTS = [2**31 - 1, 2**31, 2**32, 2**40, 2**62, 2**63 - 1, 2**63, 2**64, 2**70, 10**30, -(2**63), -(2**70)]
SPECIAL_FLOATS = [0.0, -0.0, 0.5, 1.0, 1.5, -1e-9, float("nan"), float("inf"), float("-inf"), 1e308, 5e-324, 1e38]
DTYPES = ["float32", "float64", "float16", "int32", "int64", "uint8", "bool", "complex64", "object", ">f4", ">f8",
          "U2", "datetime64[s]", "longdouble"]


def garbage(d: Data, world: "World") -> Any:
    """Anything at all."""
    kind = d.below(22)
    if kind == 0:
        return None
    if kind == 1:
        return d.pick(HUGE_INTS + [0, 1, -1, 2, 3])
    if kind == 2:
        return d.pick(SPECIAL_FLOATS)
    if kind == 3:
        return d.pick([True, False, np.bool_(True)])
    if kind == 4:
        return d.pick(["", "tanh", "relu", "float32", "float64", "x" * 100, "0", "nan", "\x00"])
    if kind == 5:
        return d.pick([b"", b"tanh", bytearray(b"\x00" * 8)])
    if kind == 6:
        return [d.small(0, 3)] * d.small(0, 4)
    if kind == 7:
        return tuple(d.double() for _ in range(d.small(0, 3)))
    if kind == 8:
        return d.pick([{}, {"weight_ih_l0": 1}, {0: 0}])
    if kind == 9:
        return object()
    if kind == 10:
        return d.pick([np.int64(d.small(-2, 4)), np.uint64(2**64 - 1), np.float32(d.double()), np.float64("nan")])
    if kind == 11:
        return complex(d.double(), 1.0)
    if kind == 12:
        with np.errstate(all="ignore"):
            return np.array(d.double()).astype(d.pick(["float32", "float64", "int64"]))
    if kind == 13:
        return d.pick([np.dtype("float32"), np.float64, int, float, object])
    if kind == 14:
        return d.pick(world.modules) if world.modules else None
    if kind == 15:
        return d.pick(world.caches)[0] if world.caches else None
    if kind == 16:
        return lambda: None
    if kind == 17:
        return memoryview(b"\x00" * 16)
    if kind == 18:
        return range(d.small(0, 5))
    if kind == 19:
        return d.pick([rnnfast.RNNCache, rnnfast.RNNCellCache, rnnfast.RNN])
    if kind == 20:
        return np.zeros((d.small(0, 3),) * d.small(0, 3), dtype=d.pick(DTYPES))
    return d.double()


def perturb_shape(d: Data, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape, or one like it with one thing off."""
    shape = list(shape)
    how = d.below(14)
    if how < 9 or not shape:
        return tuple(shape)
    if how == 5:
        shape.insert(d.below(len(shape) + 1), d.small(0, 3))
    elif how == 6:
        shape.pop(d.below(len(shape)))
    elif how in (7, 10):
        i = d.below(len(shape))
        shape[i] = max(0, shape[i] + d.pick([-1, 1, 2]))
    elif how in (8, 11):
        shape[d.below(len(shape))] = d.pick([0, 1])
    else:  # an empty array with a huge dimension: no memory, but huge loops if something iterates it
        i = d.below(len(shape))
        shape[i] = 0
        shape[(i + 1) % len(shape)] = d.pick([10**4, 10**5])
    return tuple(shape)


def array_like(d: Data, shape: tuple[int, ...], dtype: np.dtype) -> Any:
    """An array for an argument of this shape and dtype: usually right, sometimes off in one way."""
    if d.chance(0.05):
        return garbage(d, WORLD)
    shape = perturb_shape(d, shape)
    if math.prod(shape) > 20000:
        shape = tuple(min(n, 8) for n in shape)
    dt = np.dtype(dtype) if d.chance(0.9) else np.dtype(d.pick(DTYPES))
    seed = d.below(2**16)
    values = np.asarray(np.random.default_rng(seed).standard_normal(shape) * d.pick([1.0, 1.0, 1e-30, 1e30, 0.0]))
    if values.size and d.chance(0.15):
        flat = values.reshape(-1)
        flat[d.below(flat.size)] = d.pick([np.nan, np.inf, -np.inf, 1e300])
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr = np.asarray(values.astype(dt) if dt.kind not in "OUSVM" else np.zeros(shape, dt))
    return layout(d, arr)


def layout(d: Data, a: np.ndarray) -> Any:
    kind = d.below(14)
    if kind == 0:
        return np.asfortranarray(a)
    if kind == 1 and a.ndim:
        big = np.zeros(tuple(2 * n + 1 for n in a.shape), a.dtype)
        view = big[tuple(slice(1, None, 2) for _ in a.shape)]
        view[...] = a
        return view
    if kind == 2 and a.ndim:
        flip = tuple(slice(None, None, -1) for _ in a.shape)
        return np.ascontiguousarray(a[flip])[flip]
    if kind == 3:
        a = a.copy()
        a.flags.writeable = False
        return a
    if kind == 4 and a.dtype.kind not in "OUM":
        buf = np.zeros(a.nbytes + a.itemsize + 1, np.uint8)[1 : 1 + a.nbytes]
        out = buf.view(a.dtype).reshape(a.shape)
        out[...] = a
        return out
    if kind == 5 and a.ndim and a.shape[0] > 0:
        return np.broadcast_to(a[:1], a.shape)
    if kind == 6 and a.ndim == 2:
        return np.asmatrix(a)
    if kind == 7:
        return np.ma.masked_array(a)
    if kind == 8 and a.dtype.kind in "fiu" and d.chance(0.3):
        return a.tolist()
    return a


# --------------------------------------------------------------------------------------------------------------
# The world and its checks
# --------------------------------------------------------------------------------------------------------------


class Failure(Exception):
    pass


class World:
    def __init__(self) -> None:
        self.modules: list[Any] = []
        self.caches: list[Any] = []


WORLD = World()


def snapshot(module: Any) -> tuple:
    return (tuple(v.tobytes() for v in module.named_parameters().values()),
            tuple(v.tobytes() for v in module.grads.values()), module.training)


STATS = {"inputs": 0, "calls": 0, "ok": 0, "TypeError": 0, "ValueError": 0, "MemoryError": 0}
BY_ENTRY: dict[str, dict[str, int]] = {}  # entry point -> outcome -> count (printed with --verbose)


def count(name: str, outcome: str) -> None:
    entry = BY_ENTRY.setdefault(name.split("(")[0], {})
    entry[outcome] = entry.get(outcome, 0) + 1


def guarded(name: str, call: Callable[[], Any], *modules: Any) -> Any:
    """Run one API call: a result, or one of the allowed errors with every module unchanged."""
    before = [snapshot(m) for m in modules]
    STATS["calls"] += 1
    try:
        result = call()
    except ALLOWED as exc:
        kind = next(c.__name__ for c in ALLOWED if isinstance(exc, c))
        STATS[kind] += 1
        count(name, kind)
        if not str(exc):
            raise Failure(f"{name}: {type(exc).__name__} without a message") from exc
        for m, snap in zip(modules, before):
            if snapshot(m) != snap:
                raise Failure(f"{name}: rejected with {type(exc).__name__}({exc}) but changed {m!r}") from exc
        return None
    except Failure:
        raise
    except BaseException as exc:
        raise Failure(f"{name}: unexpected {type(exc).__name__}: {exc}") from exc
    STATS["ok"] += 1
    count(name, "ok")
    return result


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise Failure(message)


def rnn_kwargs(d: Data) -> dict:
    def size(name: str) -> Any:
        if d.chance(0.85):
            return d.small(1, 6)
        value = garbage(d, WORLD) if d.chance(0.5) else d.pick(HUGE_INTS + [0, -1])
        try:  # what the constructor's integer check will see (ints, NumPy integers, 0-d integer arrays)
            n = operator.index(value)
        except TypeError:
            return value
        if n in REALLY_ALLOCATES:
            return 2**40
        return value

    kwargs = {"input_size": size("input_size"), "hidden_size": size("hidden_size")}
    for key, good in [("num_layers", lambda: d.small(1, 3)), ("nonlinearity", lambda: d.pick(["tanh", "relu"])),
                      ("bias", lambda: d.chance(0.7)), ("batch_first", lambda: d.chance(0.5)),
                      ("dropout", lambda: d.pick([0.0, 0.0, 0.5, 1.0])), ("bidirectional", lambda: d.chance(0.5)),
                      ("dtype", lambda: d.pick(["float32", "float64", np.float32, np.dtype("float64")])),
                      ("seed", lambda: d.below(100))]:
        if d.chance(0.6):
            kwargs[key] = good() if d.chance(0.9) else (size(key) if key == "num_layers" else garbage(d, WORLD))
    return kwargs


def new_rnn(d: Data) -> Any:
    kwargs = rnn_kwargs(d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dropout with one layer warns, as PyTorch does
        model = guarded(f"RNN(**{kwargs!r})", lambda: rnnfast.RNN(**kwargs))
    if model is not None:
        expect(isinstance(model, rnnfast.RNN), "RNN() returned something else")
        WORLD.modules.append(model)
    return model


def new_cell(d: Data) -> Any:
    kwargs = rnn_kwargs(d)
    kwargs = {k: v for k, v in kwargs.items() if k in ("input_size", "hidden_size", "bias", "nonlinearity", "dtype",
                                                     "seed")}
    cell = guarded(f"RNNCell(**{kwargs!r})", lambda: rnnfast.RNNCell(**kwargs))
    if cell is not None:
        WORLD.modules.append(cell)
    return cell


def some(d: Data, cls: type, make: Callable[[], Any]) -> Any:
    existing = [m for m in WORLD.modules if isinstance(m, cls)]
    if existing and d.chance(0.7):
        return d.pick(existing)
    return make()


def rnn_forward(d: Data, model: Any) -> None:
    D = 2 if model.bidirectional else 1
    T, B = d.small(1, 4), d.pick([0, 1, 2, 3])
    unbatched = d.chance(0.2)
    I, H, L = model.input_size, model.hidden_size, model.num_layers
    if unbatched:
        shape = (T, I)
    else:
        shape = (B, T, I) if model.batch_first else (T, B, I)
    x = array_like(d, shape, model.dtype)
    h0 = array_like(d, (L * D, H) if unbatched else (L * D, B, H), model.dtype) if d.chance(0.4) else None
    lengths = None
    if d.chance(0.35):
        n = 1 if unbatched else B
        lengths = d.pick([lambda: [d.small(1, T) for _ in range(n)], lambda: np.array([d.small(0, T + 1)] * n),
                          lambda: d.small(1, T), lambda: garbage(d, WORLD),
                          lambda: array_like(d, (n,), np.dtype(d.pick(["int64", "int8", "uint64", "float64"])))])()
    entry = d.below(3)
    if entry == 0:
        result = guarded("RNN.__call__", lambda: model(x, h0, lengths), model)
    else:
        want = entry == 2 or d.chance(0.5)
        result = guarded("RNN.forward", lambda: model.forward(x, h0, lengths=lengths, return_cache=want), model)
    if result is None:
        return
    out, h_n = result[0], result[1]
    expect(isinstance(out, np.ndarray) and out.dtype == model.dtype and h_n.dtype == model.dtype, "forward dtype")
    xs = np.shape(x)
    if len(xs) == 2:
        expect(out.shape == (xs[0], D * H) and h_n.shape == (L * D, H), f"unbatched shapes {out.shape} {h_n.shape}")
    else:
        expect(out.shape == xs[:2] + (D * H,), f"output shape {out.shape} for x {xs}")
        expect(h_n.shape == (L * D, xs[0] if model.batch_first else xs[1], H), f"h_n shape {h_n.shape}")
    if len(result) == 3:
        WORLD.caches.append((result[2], out.shape, h_n.shape))


def clean_forward(d: Data, model: Any) -> None:
    """A forward with valid arguments, for the cache a backward needs."""
    D = 2 if model.bidirectional else 1
    T, B = d.small(1, 4), d.pick([0, 1, 2, 3])
    shape = (B, T, model.input_size) if model.batch_first else (T, B, model.input_size)
    if d.chance(0.2):
        shape = (T, model.input_size)
    x = np.random.default_rng(d.below(256)).standard_normal(shape).astype(model.dtype)
    lengths = None
    if len(shape) == 3 and B and d.chance(0.3):
        lengths = [d.small(1, T) for _ in range(B)]
    out, h_n, cache = model.forward(x, lengths=lengths, return_cache=True)
    expect(out.shape == shape[:-1] + (D * model.hidden_size,), "clean forward shape")
    WORLD.caches.append((cache, out.shape, h_n.shape))


def pick_cache(d: Data, kind: type, owner: Any) -> Any:
    """One of the world's (cache, shapes...) entries of `kind`, most often one of `owner`'s; None: use a bad one."""
    own = [c for c in WORLD.caches if isinstance(c[0], kind)]
    mine = [c for c in own if getattr(c[0], "_owner", None) is owner]
    if mine and d.chance(0.7):
        own = mine
    return d.pick(own) if own and d.chance(0.8) else None


def rnn_backward(d: Data, model: Any) -> None:
    if d.chance(0.6):
        clean_forward(d, model)
    entry = pick_cache(d, rnnfast.RNNCache, model)
    if entry is not None:
        cache, out_shape, h_n_shape = entry
    else:
        cache, out_shape, h_n_shape = garbage(d, WORLD), (d.small(1, 3), 1, 2), (1, 1, 2)
        for entry in WORLD.caches:  # one of the world's caches (of anything): the shapes that go with it
            if entry[0] is cache:
                out_shape, h_n_shape = entry[1], entry[2] or h_n_shape
    g_out = array_like(d, out_shape, model.dtype) if d.chance(0.75) else None
    g_h_n = array_like(d, h_n_shape, model.dtype) if d.chance(0.5) or g_out is None and d.chance(0.8) else None
    result = guarded("RNN.backward", lambda: model.backward(cache, g_out, g_h_n), model)
    if result is not None:
        gx, gh0 = result
        expect(gx.dtype == gh0.dtype == model.dtype and gh0.shape == h_n_shape, "backward shapes/dtypes")
        expect(gx.shape[:-1] == out_shape[:-1] and gx.shape[-1] == model.input_size, f"grad_input {gx.shape}")


def cell_forward(d: Data, cell: Any) -> None:
    B = d.pick([None, 0, 1, 3])
    xs = (cell.input_size,) if B is None else (B, cell.input_size)
    hs = (cell.hidden_size,) if B is None else (B, cell.hidden_size)
    x = array_like(d, xs, cell.dtype)
    h = array_like(d, hs, cell.dtype) if d.chance(0.5) else None
    if d.chance(0.3):
        h_new = guarded("RNNCell.__call__", lambda: cell(x, h), cell)
    else:
        res = guarded("RNNCell.forward", lambda: cell.forward(x, h, return_cache=True), cell)
        h_new = None if res is None else res[0]
        if res is not None:
            WORLD.caches.append((res[1], h_new.shape, None))
    if h_new is not None:
        expect(h_new.dtype == cell.dtype and h_new.shape == np.shape(x)[:-1] + (cell.hidden_size,), "cell shape")


def cell_backward(d: Data, cell: Any) -> None:
    if d.chance(0.6):
        B = d.pick([None, 0, 1, 3])
        shape = (cell.input_size,) if B is None else (B, cell.input_size)
        x = np.random.default_rng(d.below(256)).standard_normal(shape).astype(cell.dtype)
        h_new, cache = cell.forward(x, return_cache=True)
        WORLD.caches.append((cache, h_new.shape, None))
    entry = pick_cache(d, rnnfast.RNNCellCache, cell)
    if entry is not None:
        cache, shape, _ = entry
    else:
        cache, shape = garbage(d, WORLD), (1, 2)
        for entry in WORLD.caches:  # one of the world's caches (of anything): the shape that goes with it
            if entry[0] is cache:
                shape = entry[1]
    g = array_like(d, shape, cell.dtype)
    result = guarded("RNNCell.backward", lambda: cell.backward(cache, g), cell)
    if result is not None:
        gx, gh = result
        expect(gx.dtype == gh.dtype == cell.dtype and gh.shape == shape,
               f"cell backward: {gx.dtype} {gh.dtype} {gx.shape} {gh.shape} for {cell!r} and h_new {shape}")


def load_state(d: Data, module: Any) -> None:
    state = {k: v for k, v in module.state_dict().items()}
    if d.chance(0.7):
        for _ in range(d.small(1, 2)):
            how = d.below(6)
            keys = list(state)
            if how == 0 and keys:
                state.pop(d.pick(keys))
            elif how == 1:
                state[d.pick(["extra", "weight_ih_l9", "weight_ih", 0, None])] = np.zeros(2)
            elif keys:
                k = d.pick(keys)
                params = module.named_parameters()
                shape = params[k].shape if k in params else (2,)
                state[k] = array_like(d, shape, np.dtype(d.pick(["float32", "float64", "int32"])))
    mapping = state if d.chance(0.9) else garbage(d, WORLD)
    guarded(f"{type(module).__name__}.load_state_dict", lambda: module.load_state_dict(mapping), module)


def misc(d: Data, module: Any) -> None:
    what = d.below(6)
    if what == 0:
        mode = d.pick([True, False, garbage(d, WORLD)])
        guarded("train", lambda: module.train(mode), module)
    elif what == 1:
        module.eval()
    elif what == 2:
        module.zero_grad()
        expect(all(not v.any() for v in module.grads.values()), "zero_grad")
    elif what == 3:
        state = module.state_dict()
        expect(list(state) == list(module.named_parameters()), "state_dict keys")
    elif what == 4:
        before = rnnfast.get_num_threads()
        n = d.pick([1, 2, 3, 0, -1, garbage(d, WORLD)])
        try:
            guarded("set_num_threads", lambda: rnnfast.set_num_threads(n))
        finally:
            rnnfast.set_num_threads(before)
    else:
        name = d.pick(list(module.named_parameters()) + ["weight_ih_l7", "nothing", "_params"])
        try:
            getattr(module, name)
        except AttributeError:
            pass


def one_input(data: bytes) -> None:
    """Run one fuzz input; raise Failure on a contract violation."""
    d = Data(data)
    STATS["inputs"] += 1
    WORLD.modules.clear()
    WORLD.caches.clear()
    for _ in range(d.small(1, 6)):
        pick_target, action = OPERATIONS[d.below(len(OPERATIONS))]
        if pick_target is None:
            action(d)
        else:
            target = pick_target(d)
            if target is not None:
                action(d, target)


def _some_rnn(d: Data) -> Any:
    return some(d, rnnfast.RNN, lambda: new_rnn(d))


def _some_cell(d: Data) -> Any:
    return some(d, rnnfast.RNNCell, lambda: new_cell(d))


def _any_module(make: Callable[[Data], Any]) -> Callable[[Data], Any]:
    return lambda d: d.pick(WORLD.modules) if WORLD.modules else make(d)


# (how to get the object, what to do with it), drawn uniformly; None: the action makes its own object.
OPERATIONS: List[Tuple[Optional[Callable[[Data], Any]], Callable[..., Any]]] = [
    (None, new_rnn), (None, new_cell), (_some_rnn, rnn_forward), (_some_rnn, rnn_forward), (_some_rnn, rnn_backward),
    (_some_cell, cell_forward), (_some_cell, cell_backward), (_any_module(new_rnn), load_state),
    (_any_module(new_cell), misc), (_any_module(new_cell), misc),
]


def summary(engine: str) -> str:
    errors = ", ".join(f"{k} {STATS[k]}" for k in ("ok", "TypeError", "ValueError", "MemoryError"))
    return (f"fuzz_api: {STATS['inputs']} inputs ran, no failure (engine {engine}; {STATS['calls']} API calls: "
            f"{errors})")


def report_failure(data: bytes, exc: BaseException) -> None:
    print("fuzz_api: FAILURE", file=sys.stderr)
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    print(f"fuzz_api: input ({len(data)} bytes): {data.hex()}", file=sys.stderr)
    sys.stderr.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10000, help="number of inputs")
    parser.add_argument("--engine", choices=["auto", "atheris", "random"], default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-len", type=int, default=256, help="bytes per input")
    parser.add_argument("--artifacts", default=os.path.join(tempfile.gettempdir(), "rnnfast_fuzz"),
                        help="where atheris writes failing inputs")
    parser.add_argument("--verbose", action="store_true", help="print outcomes per entry point at the end")
    parser.add_argument("--replay", metavar="FILE", help="run one input from a file (or hex on the command line)")
    args, rest = parser.parse_known_args()
    warnings.simplefilter("ignore")  # NumPy's cast warnings on garbage values are not the harness's business
    faulthandler.enable()
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if atheris is not None and not args.replay else "random"
    if engine == "atheris" and atheris is None:
        parser.error("atheris is not installed (pip install atheris), use --engine random")
    import_rnnfast(instrument=engine == "atheris")

    if args.replay:
        data = open(args.replay, "rb").read() if os.path.exists(args.replay) else bytes.fromhex(args.replay)
        try:
            one_input(data)
        except Failure as exc:
            report_failure(data, exc)
            return 1
        print(summary("replay"))
        return 0

    if engine == "atheris":
        target = args.runs

        def test_one_input(data: bytes) -> None:
            faulthandler.dump_traceback_later(PER_INPUT_TIMEOUT_S, exit=True)
            try:
                one_input(data)
            except Failure as exc:
                report_failure(data, exc)
                raise
            finally:
                faulthandler.cancel_dump_traceback_later()
            if STATS["inputs"] == target:
                print(summary("atheris"), flush=True)

        argv = [sys.argv[0], f"-runs={args.runs}", f"-seed={args.seed}", f"-max_len={args.max_len}",
                f"-timeout={PER_INPUT_TIMEOUT_S}", "-rss_limit_mb=4096",
                f"-artifact_prefix={os.path.join(args.artifacts, '')}", *rest]
        os.makedirs(args.artifacts, exist_ok=True)
        atheris.Setup(argv, test_one_input)
        atheris.Fuzz()  # exits the process when done
        return 0

    rng = random.Random(args.seed)
    for _ in range(args.runs):
        data = rng.randbytes(rng.randint(0, args.max_len))
        faulthandler.dump_traceback_later(PER_INPUT_TIMEOUT_S, exit=True)
        try:
            one_input(data)
        except Failure as exc:
            report_failure(data, exc)
            return 1
        finally:
            faulthandler.cancel_dump_traceback_later()
    if args.verbose:
        for name, outcomes in sorted(BY_ENTRY.items()):
            print(f"  {name:28s} " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    print(summary("random"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
