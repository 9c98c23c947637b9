"""rnnfast.optim: SGD, Adam, AdamW and gradient clipping.

1. Against torch.optim and torch.nn.utils (float64, 100 steps, relative 1e-8), training real rnnfast models (their
   gradients from backward) together with a (param, grad) pair, step for step; skipped without torch.
2. Against a short NumPy statement of the same algorithms, written from their published definitions (Adam in its
   bias-corrected m_hat / v_hat form), for the suite without torch; and a check that this comparison does fail
   on an update that is off by one part in a million.
3. The models: ``parameters()``, updates in place (the arrays stay the model's storage, the next forward and
   backward see them), ``zero_grad`` on the same arrays.
4. ``state_dict`` / ``load_state_dict``: a fresh optimizer continues bit for bit; rejected dicts change nothing.
5. Bad input: TypeError / ValueError naming the argument, the expected and the actual value; nothing changed.
"""

from __future__ import annotations

import copy
import math
import pickle
import subprocess
import sys
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
import pytest

import rnnfast
from rnnfast import optim

KINDS = ("RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell")
STEPS = 100
RTOL = 1e-8


# ---------------------------------------------------------------------------------------------------------------------
# A small regression task: a model and a linear read-out (a (param, grad) pair), MSE loss, gradients by backward
# ---------------------------------------------------------------------------------------------------------------------

def make_model(kind: str, seed: int = 0, dtype: str = "float64") -> Any:
    if kind == "RNN":
        return rnnfast.RNN(3, 5, num_layers=2, bidirectional=True, dtype=dtype, seed=seed)
    if kind == "LSTM":
        return rnnfast.LSTM(3, 5, num_layers=2, proj_size=2, dtype=dtype, seed=seed)
    if kind == "GRU":
        return rnnfast.GRU(3, 5, dtype=dtype, seed=seed)
    if kind == "RNNCell":
        return rnnfast.RNNCell(3, 5, dtype=dtype, seed=seed)
    if kind == "LSTMCell":
        return rnnfast.LSTMCell(3, 5, dtype=dtype, seed=seed)
    assert kind == "GRUCell"
    return rnnfast.GRUCell(3, 5, dtype=dtype, seed=seed)


class Task:
    """``model`` and a read-out ``head`` [F, 1] with its gradient array ``head_grad``; ``backward()`` adds the
    gradients of the MSE into ``model.grads`` and writes ``head_grad``, and returns the loss."""

    def __init__(self, kind: str, seed: int = 0, dtype: str = "float64") -> None:
        rng = np.random.default_rng(seed + 100)
        self.kind = kind
        self.model = make_model(kind, seed, dtype)
        cell = kind.endswith("Cell")
        self.x = rng.standard_normal((4, 3) if cell else (6, 4, 3)).astype(dtype)
        features = {"RNN": 10, "LSTM": 2}.get(kind, 5)
        self.y = rng.standard_normal((4, 1) if cell else (6, 4, 1)).astype(dtype)
        self.head = rng.uniform(-0.5, 0.5, (features, 1)).astype(dtype)
        self.head_grad = np.zeros_like(self.head)

    def twin(self) -> Task:
        other = copy.copy(self)
        other.model = copy.deepcopy(self.model)
        other.head = self.head.copy()
        other.head_grad = self.head_grad.copy()
        return other

    def params(self) -> List[Any]:
        return [self.model, (self.head, self.head_grad)]

    def arrays(self) -> Dict[str, np.ndarray]:
        """Every parameter by name, live."""
        return {**self.model.named_parameters(), "head": self.head}

    def grads(self) -> Dict[str, np.ndarray]:
        return {**self.model.grads, "head": self.head_grad}

    def backward(self) -> float:
        m = self.model
        if self.kind in ("RNNCell", "GRUCell"):
            out, cache = m.forward(self.x, return_cache=True)
        elif self.kind == "LSTMCell":
            out, _, cache = m.forward(self.x, return_cache=True)
        else:
            result = m.forward(self.x, return_cache=True)
            out, cache = result[0], result[-1]
        diff = out @ self.head - self.y
        grad_pred = 2 * diff / diff.size
        features = out.shape[-1]
        self.head_grad[...] = out.reshape(-1, features).T @ grad_pred.reshape(-1, 1)
        grad_out = grad_pred @ self.head.T
        if self.kind in ("RNNCell", "GRUCell", "LSTMCell"):
            m.backward(cache, grad_out)
        else:
            m.backward(cache, grad_output=grad_out)
        return float(np.mean(diff ** 2))

    def zero(self) -> None:
        self.model.zero_grad()
        self.head_grad[...] = 0


def assert_same(task: Task, other: Task, step: int, rtol: float = RTOL) -> None:
    """Every parameter equal to ``rtol`` relative to its largest element (an element crossing zero has no relative
    error of its own)."""
    ours, theirs = task.arrays(), other.arrays()
    for name in ours:
        scale = float(np.max(np.abs(theirs[name])))
        np.testing.assert_allclose(ours[name], theirs[name], rtol=rtol, atol=rtol * scale,
                                   err_msg=f"{name} after step {step}")


def _train(runs: Sequence[Tuple[Task, optim.Optimizer]], steps: int) -> None:
    """``steps`` training steps of each (task, optimizer), in turn: zero_grad, backward, step."""
    for _ in range(steps):
        for task, opt in runs:
            opt.zero_grad()
            task.backward()
            opt.step()


def _assert_same_arrays(task: Task, other: Task) -> None:
    """Bit for bit the same parameters, head included."""
    for n, p in task.arrays().items():
        np.testing.assert_array_equal(p, other.arrays()[n], err_msg=n)


# The hyperparameters exercised, as keyword arguments of both rnnfast.optim's and torch.optim's constructors.
CONFIGS: List[Tuple[str, Dict[str, Any]]] = [
    ("SGD", {"lr": 0.05}),
    ("SGD", {"lr": 0.05, "momentum": 0.9}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.02}),
    ("SGD", {"lr": 0.02, "momentum": 0.8, "nesterov": True}),
    ("SGD", {"lr": 0.002, "momentum": 0.5, "weight_decay": 0.1, "maximize": True}),
    ("Adam", {}),
    ("Adam", {"lr": 0.01}),
    ("Adam", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.05}),
    ("Adam", {"lr": 0.01, "amsgrad": True}),
    ("Adam", {"lr": 0.01, "betas": (0.3, 0.9), "amsgrad": True, "weight_decay": 0.01}),
    ("Adam", {"lr": 0.003, "maximize": True}),
    ("AdamW", {}),
    ("AdamW", {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True}),
    ("AdamW", {"lr": 0.005, "betas": (0.5, 0.95), "weight_decay": 0.5}),
]
CONFIG_IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'defaults'}" for name, kw in CONFIGS]


# ---------------------------------------------------------------------------------------------------------------------
# 1. Against torch.optim
# ---------------------------------------------------------------------------------------------------------------------

def torch_params(task: Task) -> List[Any]:
    """torch Parameters over ``task``'s own arrays (shared memory), with .grad over its gradient arrays: a torch
    optimizer over them updates the twin model in place."""
    torch = pytest.importorskip("torch")
    params = []
    for name, array in task.arrays().items():
        p = torch.nn.Parameter(torch.from_numpy(array))
        p.grad = torch.from_numpy(task.grads()[name])
        params.append(p)
    return params


def lockstep(ours: Task, theirs: Task, opt: optim.Optimizer, reference: Any, steps: range) -> None:
    """Train ``ours`` with ``opt`` and ``theirs`` with the torch optimizer ``reference`` side by side, the two
    checked equal after every step."""
    for step in steps:
        for task in (ours, theirs):
            task.zero()
            task.backward()
        opt.step()
        reference.step()
        assert_same(ours, theirs, step)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_matches_torch_optim_step_for_step(kind: str, config: Tuple[str, Dict[str, Any]]) -> None:
    torch = pytest.importorskip("torch")
    name, kwargs = config
    ours, theirs = Task(kind), Task(kind)
    opt = getattr(optim, name)(ours.params(), **kwargs)
    reference = getattr(torch.optim, name)(torch_params(theirs), **kwargs)
    start = ours.model.state_dict()
    lockstep(ours, theirs, opt, reference, range(1, STEPS + 1))
    # The run went somewhere: the parameters moved well beyond the tolerance.
    moved = max(float(np.max(np.abs(p - start[n]))) for n, p in ours.model.named_parameters().items())
    assert moved > 1e-3


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_matches_torch_optim_to_the_last_bits_on_given_gradients(config: Tuple[str, Dict[str, Any]]) -> None:
    """With gradients that do not depend on the parameters nothing amplifies rounding: the parameters and the
    whole state agree with torch's to a few units in the last place, and every state array is there."""
    torch = pytest.importorskip("torch")
    name, kwargs = config
    rng = np.random.default_rng(1)
    shapes = [(7, 5), (5,), (), (0, 3)]
    params = [rng.standard_normal(s) for s in shapes]
    grads = [np.zeros(s) for s in shapes]
    tensors = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params]
    for t in tensors:
        t.grad = torch.zeros_like(t)
    opt = getattr(optim, name)(list(zip(params, grads)), **kwargs)
    reference = getattr(torch.optim, name)(tensors, **kwargs)
    for step in range(STEPS):
        scale = rng.uniform(1e-3, 1e2)
        for g, t in zip(grads, tensors):
            g[...] = scale * rng.standard_normal(g.shape)
            t.grad.copy_(torch.from_numpy(g))
        opt.step()
        reference.step()
        for p, t in zip(params, tensors):
            largest = float(np.max(np.abs(p), initial=1.0))
            np.testing.assert_allclose(p, t.detach().numpy(), rtol=1e-13, atol=1e-15 * largest)
    ours, theirs = opt.state_dict(), reference.state_dict()
    assert ours["state"].keys() == {i for i, v in theirs["state"].items() if any(x is not None for x in v.values())}
    for i, entry in ours["state"].items():
        assert entry.keys() == theirs["state"][i].keys()
        for key, value in entry.items():
            np.testing.assert_allclose(value, np.asarray(theirs["state"][i][key]), rtol=1e-12, atol=1e-300)
    group = theirs["param_groups"][0]
    for key, value in ours["param_groups"][0].items():
        assert value == (group[key] if key != "betas" else tuple(group[key])), key


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRUCell"])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf, 3.5, 0.5, "inf"])
def test_clipping_and_adam_match_torch(kind: str, norm_type: Any) -> None:
    torch = pytest.importorskip("torch")
    ours, theirs = Task(kind), Task(kind)
    opt = optim.Adam(ours.params(), lr=0.01)
    params = torch_params(theirs)
    reference = torch.optim.Adam(params, lr=0.01)
    clipped = 0
    for step in range(1, STEPS + 1):
        for task in (ours, theirs):
            task.zero()
            task.backward()
        max_norm = 0.05 if step % 2 else 10.0  # clips on odd steps only
        norm = optim.clip_grad_norm_(ours.params(), max_norm, norm_type=norm_type)
        expected = float(torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type))
        assert isinstance(norm, float)
        assert norm == pytest.approx(expected, rel=RTOL)
        clipped += norm > max_norm
        for name, g in ours.grads().items():
            expected_g = theirs.grads()[name]
            np.testing.assert_allclose(g, expected_g, rtol=RTOL, atol=RTOL * float(np.max(np.abs(expected_g))),
                                       err_msg=name)
        opt.step()
        reference.step()
        assert_same(ours, theirs, step)
    assert clipped >= 10  # the clipping was active (the gradients shrink as the loss falls)


def test_clip_grad_value_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    ours, theirs = Task("LSTM"), Task("LSTM")
    ours.backward()
    theirs.backward()
    params = torch_params(theirs)
    optim.clip_grad_value_(ours.params(), 0.01)
    torch.nn.utils.clip_grad_value_(params, 0.01)
    for name, g in ours.grads().items():
        np.testing.assert_array_equal(g, theirs.grads()[name])
    assert max(float(np.abs(g).max()) for g in ours.grads().values()) == 0.01


def test_clip_grad_norm_nonfinite_as_torch() -> None:
    torch = pytest.importorskip("torch")
    for bad in (math.nan, math.inf):
        g, tg = np.array([1.0, bad, 2.0]), torch.tensor([1.0, bad, 2.0], dtype=torch.float64)
        p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
        p.grad = tg
        norm = optim.clip_grad_norm_([(np.zeros(3), g)], 1.0)
        expected = float(torch.nn.utils.clip_grad_norm_([p], 1.0))
        assert (math.isnan(norm) and math.isnan(expected)) or norm == expected
        np.testing.assert_array_equal(g, tg.numpy())  # same NaN / zero pattern


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_loads_a_torch_optimizer_state_dict_and_continues_as_torch(name: str) -> None:
    """A torch.optim state_dict (tensors, torch's extra keys) loads, and training continues as torch's does."""
    torch = pytest.importorskip("torch")
    kwargs: Dict[str, Any] = {"lr": 0.05, "momentum": 0.9} if name == "SGD" else {"lr": 0.01, "amsgrad": True}
    theirs = Task("GRU")
    reference = getattr(torch.optim, name)(torch_params(theirs), **kwargs)
    for _ in range(10):
        theirs.zero()
        theirs.backward()
        reference.step()
    ours = theirs.twin()
    opt = getattr(optim, name)(ours.params(), lr=0.5)  # the hyperparameters come from the state dict
    opt.load_state_dict(reference.state_dict())
    assert opt.param_groups[0]["lr"] == kwargs["lr"]
    lockstep(ours, theirs, opt, reference, range(10))


# ---------------------------------------------------------------------------------------------------------------------
# 2. Against the algorithms as published, in plain NumPy (no torch needed)
# ---------------------------------------------------------------------------------------------------------------------

class ReferenceSGD:
    """SGD as torch.optim.SGD's documentation states it, one parameter at a time, without in-place updates."""

    def __init__(self, lr: float, momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, maximize: bool = False) -> None:
        self.h = dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov, weight_decay=weight_decay,
                      maximize=maximize)
        self.b: Dict[str, np.ndarray] = {}

    def step(self, params: Dict[str, np.ndarray], grads: Dict[str, np.ndarray]) -> None:
        h = self.h
        for name, theta in params.items():
            g = grads[name] * (-1.0 if h["maximize"] else 1.0)
            if h["weight_decay"]:
                g = g + h["weight_decay"] * theta
            if h["momentum"]:
                b = g if name not in self.b else h["momentum"] * self.b[name] + (1 - h["dampening"]) * g
                self.b[name] = b
                g = g + h["momentum"] * b if h["nesterov"] else b
            theta[...] = theta - h["lr"] * g


class ReferenceAdam:
    """Adam / AdamW in the bias-corrected form of the paper and of torch.optim's documentation."""

    def __init__(self, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, maximize: bool = False,
                 decoupled: bool = False) -> None:
        self.lr, (self.b1, self.b2), self.eps, self.wd = lr, betas, eps, weight_decay
        self.amsgrad, self.maximize, self.decoupled = amsgrad, maximize, decoupled
        self.t = 0
        self.m: Dict[str, np.ndarray] = {}
        self.v: Dict[str, np.ndarray] = {}
        self.v_max: Dict[str, np.ndarray] = {}

    def step(self, params: Dict[str, np.ndarray], grads: Dict[str, np.ndarray]) -> None:
        self.t += 1
        for name, theta in params.items():
            g = -grads[name] if self.maximize else grads[name]
            new = theta
            if self.decoupled:
                new = theta * (1 - self.lr * self.wd)
            elif self.wd:
                g = g + self.wd * theta
            m = self.b1 * self.m.get(name, 0.0) + (1 - self.b1) * g
            v = self.b2 * self.v.get(name, 0.0) + (1 - self.b2) * np.square(g)
            self.m[name], self.v[name] = m, v
            m_hat = m / (1 - self.b1 ** self.t)
            if self.amsgrad:
                self.v_max[name] = np.maximum(self.v_max.get(name, 0.0), v)
                v_hat = self.v_max[name] / (1 - self.b2 ** self.t)
            else:
                v_hat = v / (1 - self.b2 ** self.t)
            theta[...] = new - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


def reference_for(name: str, kwargs: Dict[str, Any]) -> Any:
    if name == "SGD":
        return ReferenceSGD(**kwargs)
    if name == "AdamW":
        return ReferenceAdam(**{"weight_decay": 1e-2, **kwargs}, decoupled=True)
    return ReferenceAdam(**kwargs)


def run_against_reference(kind: str, name: str, kwargs: Dict[str, Any], reference: Any, steps: int = STEPS,
                          rtol: float = RTOL) -> None:
    ours = Task(kind)
    theirs = ours.twin()
    opt = getattr(optim, name)(ours.params(), **kwargs)
    for step in range(1, steps + 1):
        for task in (ours, theirs):
            task.zero()
            task.backward()
        opt.step()
        reference.step(theirs.arrays(), theirs.grads())
        assert_same(ours, theirs, step, rtol)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_matches_the_published_algorithms(kind: str, config: Tuple[str, Dict[str, Any]]) -> None:
    name, kwargs = config
    run_against_reference(kind, name, kwargs, reference_for(name, kwargs))


@pytest.mark.parametrize("name, kwargs, wrong", [
    ("SGD", {"lr": 0.05, "momentum": 0.9}, {"lr": 0.05 * (1 + 1e-6), "momentum": 0.9}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "dampening": 0.5}, {"lr": 0.05, "momentum": 0.9}),
    ("Adam", {"lr": 0.01}, {"lr": 0.01, "eps": 1e-3}),
    ("Adam", {"lr": 0.01, "amsgrad": True}, {"lr": 0.01}),
    ("Adam", {"lr": 0.01, "weight_decay": 0.1}, {"lr": 0.01, "weight_decay": 0.1, "decoupled": True}),
])
def test_the_reference_comparison_catches_small_errors(name: str, kwargs: Dict[str, Any],
                                                      wrong: Dict[str, Any]) -> None:
    """The comparison above can fail: against a reference with a slightly different rule it does."""
    with pytest.raises(AssertionError):
        run_against_reference("GRU", name, kwargs, reference_for(name, wrong))


def reference_clip(grads: List[np.ndarray], max_norm: float, p: float) -> Tuple[float, List[np.ndarray]]:
    flat = np.concatenate([g.ravel() for g in grads])
    total = float(np.max(np.abs(flat))) if p == math.inf else float(np.sum(np.abs(flat) ** p) ** (1 / p))
    coefficient = min(1.0, max_norm / (total + 1e-6))
    return total, [g * coefficient for g in grads]


@pytest.mark.parametrize("norm_type", [2.0, 1, math.inf, 3.0, 0.5])
@pytest.mark.parametrize("max_norm", [0.01, 0.3, 100.0])
def test_clip_grad_norm_matches_its_definition(norm_type: float, max_norm: float) -> None:
    task = Task("LSTM")
    task.backward()
    rng = np.random.default_rng(3)
    pair = (np.zeros((2, 3)), rng.standard_normal((2, 3)))
    before = [g.copy() for g in task.grads().values()] + [pair[1].copy()]
    norm = optim.clip_grad_norm_([task.model, (task.head, task.head_grad), pair], max_norm, norm_type)
    total, expected = reference_clip(before, max_norm, float(norm_type))
    assert norm == pytest.approx(total, rel=1e-12)
    after = list(task.grads().values()) + [pair[1]]
    for g, e in zip(after, expected):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=0)
    if max_norm < total:
        assert reference_clip(after, max_norm, float(norm_type))[0] == pytest.approx(max_norm, rel=1e-4)
    else:
        for g, b in zip(after, before):
            np.testing.assert_array_equal(g, b)


def test_clip_grad_value_and_norm_edge_cases() -> None:
    g = np.array([-3.0, 0.5, 2.0])
    optim.clip_grad_value_([(np.zeros(3), g)], 1.0)
    np.testing.assert_array_equal(g, [-1.0, 0.5, 1.0])
    assert optim.clip_grad_norm_([], 1.0) == 0.0  # no gradients: norm 0, as PyTorch
    optim.clip_grad_value_([], 1.0)
    g = np.array([3.0, 4.0])
    assert optim.clip_grad_norm_([(np.zeros(2), g)], 0.0) == 5.0
    np.testing.assert_array_equal(g, [0.0, 0.0])
    # A single model alone works as a list of one (as PyTorch takes a single tensor).
    task = Task("GRU")
    task.backward()
    assert optim.clip_grad_norm_(task.model, 1e-3) > 1e-3
    total = math.sqrt(sum(float(np.sum(g ** 2)) for g in task.model.grads.values()))
    assert total == pytest.approx(1e-3, rel=1e-3)


def test_clip_grad_norm_error_if_nonfinite_changes_nothing() -> None:
    g = np.array([1.0, np.inf, 2.0])
    other = np.array([5.0, 6.0])
    with pytest.raises(RuntimeError, match="inf"):
        optim.clip_grad_norm_([(np.zeros(3), g), (np.zeros(2), other)], 1.0, error_if_nonfinite=True)
    np.testing.assert_array_equal(g, [1.0, np.inf, 2.0])
    np.testing.assert_array_equal(other, [5.0, 6.0])
    norm = optim.clip_grad_norm_([(np.zeros(3), g)], 1.0)  # without the flag: scaled by 0, as PyTorch
    assert norm == math.inf and g[0] == 0 and np.isnan(g[1])


def test_float32_models_train_as_the_float64_reference() -> None:
    ours = Task("LSTM", dtype="float32")
    opt = optim.Adam(ours.params(), lr=0.01)
    theirs = Task("LSTM")
    reference = ReferenceAdam(lr=0.01)
    losses = []
    for _ in range(30):
        for task in (ours, theirs):
            task.zero()
            losses.append(task.backward())
        opt.step()
        reference.step(theirs.arrays(), theirs.grads())
    for name, p in ours.arrays().items():
        assert p.dtype == np.float32
        np.testing.assert_allclose(p, theirs.arrays()[name], rtol=1e-3, atol=1e-4)
    assert losses[-2] < losses[0]


# ---------------------------------------------------------------------------------------------------------------------
# 3. Models: parameters(), in-place updates, zero_grad
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_parameters_are_the_named_parameters_in_order(kind: str) -> None:
    model = make_model(kind, dtype="float32")
    named = model.named_parameters()
    params = model.parameters()
    assert isinstance(params, list) and len(params) == len(named)
    for p, (name, q) in zip(params, named.items()):
        assert p is q, name
        assert p.flags.writeable
    params[0][...] = 0.25  # a live view of the model's storage
    assert np.all(model.state_dict()[next(iter(named))] == 0.25)


@pytest.mark.parametrize("kind", KINDS)
def test_updates_in_place_and_the_next_forward_and_backward_see_them(kind: str) -> None:
    task = Task(kind)
    views = task.model.named_parameters()
    grads = task.model.grads
    opt = optim.SGD(task.params(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        losses.append(task.backward())
        opt.step()
    assert losses[-1] < losses[0]
    # Nothing was rebound: the model's views are the same arrays, and they hold the new values.
    after = task.model.named_parameters()
    for name, view in views.items():
        assert after[name] is view
        assert task.model.grads[name] is grads[name]
    assert opt.param_groups[0]["params"][0] is task.model.parameters()[0]
    # A model made from the updated values computes exactly the same loss and gradients.
    fresh = Task(kind)
    fresh.model.load_state_dict(task.model.state_dict())
    fresh.head[...] = task.head
    task.zero()
    assert fresh.backward() == task.backward()
    for name, g in fresh.model.grads.items():
        np.testing.assert_array_equal(g, task.model.grads[name])


@pytest.mark.parametrize("kind", KINDS)
def test_zero_grad_zeroes_the_models_own_gradient_arrays(kind: str) -> None:
    task = Task(kind)
    grads = task.model.grads
    task.backward()
    assert sum(np.count_nonzero(g) for g in grads.values()) > 10 and np.any(task.head_grad != 0)
    opt = optim.Adam(task.params())
    opt.zero_grad()
    for name, g in task.model.grads.items():
        assert g is grads[name] and not np.any(g)
    assert not np.any(task.head_grad)
    task.backward()  # and backward adds into them again
    assert sum(np.count_nonzero(g) for g in grads.values()) > 10


@pytest.mark.parametrize("name, kwargs", [("SGD", {"lr": 0.05, "momentum": 0.9}),
                                          ("Adam", {"lr": 0.01, "amsgrad": True})])
def test_a_model_updated_whole_equals_one_updated_parameter_by_parameter(name: str, kwargs: Dict[str, Any],
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A model is updated through its flat buffers at once; the same optimizer over each parameter as its own
    (param, grad) pair gives bit for bit the same parameters and the same state_dict."""
    whole = Task("LSTM")
    apart = whole.twin()
    pairs = [(p, apart.model.grads[n]) for n, p in apart.model.named_parameters().items()]
    opt_whole = getattr(optim, name)(whole.params(), **kwargs)
    opt_apart = getattr(optim, name)([*pairs, (apart.head, apart.head_grad)], **kwargs)
    _train(((whole, opt_whole), (apart, opt_apart)), 5)
    _assert_same_arrays(whole, apart)
    a, b = opt_whole.state_dict(), opt_apart.state_dict()
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        for key, value in a["state"][i].items():
            np.testing.assert_array_equal(value, b["state"][i][key])
    # And the state of one loads into the other.
    opt_apart.load_state_dict(a)
    # Should a model's views not tile its buffers, it is updated parameter by parameter: the same numbers.
    monkeypatch.setattr(optim, "_flat_offsets", lambda flat, views: None)
    fallback = Task("LSTM")
    opt_fallback = getattr(optim, name)(fallback.params(), **kwargs)
    again = Task("LSTM")
    opt_again = getattr(optim, name)([*((p, again.model.grads[n]) for n, p in again.model.named_parameters().items()),
                                      (again.head, again.head_grad)], **kwargs)
    _train(((fallback, opt_fallback), (again, opt_again)), 5)
    _assert_same_arrays(fallback, again)


def test_plain_pairs_minimize_a_quadratic() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((6, 4))
    w, gw = np.zeros((4, 2)), np.zeros((4, 2))
    b, gb = np.zeros(2), np.zeros(2)
    target = rng.standard_normal((6, 2))
    for name, kwargs in [("SGD", {"lr": 0.05, "momentum": 0.9}), ("Adam", {"lr": 0.05}), ("AdamW", {"lr": 0.05})]:
        w[...], b[...] = 0, 0
        opt = getattr(optim, name)([(w, gw), (b, gb)], **kwargs)

        def closure() -> float:
            opt.zero_grad()
            diff = a @ w + b - target
            gw[...] = 2 * a.T @ diff / diff.size
            gb[...] = 2 * diff.sum(axis=0) / diff.size
            return float(np.mean(diff ** 2))

        first = closure()
        for _ in range(300):
            last = opt.step(closure)
        assert last is not None and last < 0.5 * first, name


def test_learning_rate_changes_through_param_groups() -> None:
    p, g = np.ones(3), np.full(3, 2.0)
    opt = optim.SGD([(p, g)], lr=0.1)
    opt.step()
    np.testing.assert_allclose(p, 0.8)
    opt.param_groups[0]["lr"] = 0.25
    opt.step()
    np.testing.assert_allclose(p, 0.3)
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['lr'\].*-1.0"):
        opt.step()
    np.testing.assert_allclose(p, 0.3)


def test_sgd_positional_order_is_the_documented_one() -> None:
    """lr, momentum, dampening, nesterov, weight_decay (PyTorch's order, weight_decay before nesterov, is refused
    above: the flag and the number do not pass for each other)."""
    a, b = np.ones(3), np.ones(3)
    positional = optim.SGD([(a, np.full(3, 0.5))], 0.1, 0.9, 0.0, True, 0.01)
    keywords = optim.SGD([(b, np.full(3, 0.5))], lr=0.1, momentum=0.9, dampening=0.0, nesterov=True,
                         weight_decay=0.01)
    assert positional.param_groups[0] == {**keywords.param_groups[0], "params": positional.param_groups[0]["params"]}
    for opt in (positional, keywords):
        opt.step()
        opt.step()
    np.testing.assert_array_equal(a, b)


def test_defaults_are_torchs() -> None:
    p = [(np.zeros(2), np.zeros(2))]
    assert optim.SGD(p).param_groups[0]["lr"] == 1e-3
    adam = optim.Adam(p).param_groups[0]
    assert (adam["lr"], adam["betas"], adam["eps"], adam["weight_decay"], adam["amsgrad"]) == \
        (1e-3, (0.9, 0.999), 1e-8, 0.0, False)
    adamw = optim.AdamW(p).param_groups[0]
    assert (adamw["lr"], adamw["weight_decay"], adamw["decoupled_weight_decay"]) == (1e-3, 1e-2, True)
    assert "AdamW (" in repr(optim.AdamW(p)) and "lr: 0.001" in repr(optim.AdamW(p))


def test_optim_is_reachable_after_import_rnnfast_without_torch() -> None:
    code = ("import sys, rnnfast; assert rnnfast.optim.Adam is not None; import rnnfast.optim; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------------------------------------------------
# 4. state_dict / load_state_dict
# ---------------------------------------------------------------------------------------------------------------------

ROUND_TRIP = [("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True}), ("Adam", {"lr": 0.01, "amsgrad": True}),
              ("AdamW", {"lr": 0.01, "weight_decay": 0.1})]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("config", ROUND_TRIP, ids=[name for name, _ in ROUND_TRIP])
def test_state_dict_round_trip_continues_bit_identically(kind: str, config: Tuple[str, Dict[str, Any]]) -> None:
    name, kwargs = config
    task = Task(kind)
    opt = getattr(optim, name)(task.params(), **kwargs)
    _train(((task, opt),), 7)
    saved = pickle.loads(pickle.dumps(opt.state_dict()))  # it pickles (checkpoints)
    copy_ = task.twin()
    fresh = getattr(optim, name)(copy_.params(), lr=123.0)  # other hyperparameters: the saved ones are loaded
    fresh.load_state_dict(saved)
    assert fresh.param_groups[0]["lr"] == kwargs["lr"]
    _train(((task, opt), (copy_, fresh)), 7)
    _assert_same_arrays(task, copy_)
    # Same state again, key for key.
    a, b = opt.state_dict(), fresh.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        assert a["state"][i].keys() == b["state"][i].keys()
        for key, value in a["state"][i].items():
            np.testing.assert_array_equal(value, b["state"][i][key])


def test_state_dict_layout_is_torchs() -> None:
    task = Task("GRU")
    opt = optim.Adam(task.params(), lr=0.01)
    empty = opt.state_dict()
    assert empty["state"] == {}
    count = len(task.model.named_parameters()) + 1
    assert empty["param_groups"][0]["params"] == list(range(count))
    task.backward()
    opt.step()
    sd = opt.state_dict()
    assert sorted(sd["state"]) == list(range(count))
    for i, (name, p) in enumerate(task.arrays().items()):
        entry = sd["state"][i]
        assert sorted(entry) == ["exp_avg", "exp_avg_sq", "step"] and entry["step"] == 1.0
        assert entry["exp_avg"].shape == p.shape and entry["exp_avg"].dtype == p.dtype, name
    # A snapshot: later steps do not change it, and changing it does not change the optimizer.
    before = sd["state"][0]["exp_avg"].copy()
    task.backward()
    opt.step()
    np.testing.assert_array_equal(sd["state"][0]["exp_avg"], before)
    sd["state"][0]["exp_avg"][...] = 7
    assert not np.any(opt.state_dict()["state"][0]["exp_avg"] == 7)
    # SGD without momentum has no state, as PyTorch's.
    sgd = optim.SGD(task.params(), lr=0.1)
    sgd.step()
    assert sgd.state_dict()["state"] == {}


def _trained(name: str = "Adam", **kwargs: Any) -> Tuple[Task, optim.Optimizer]:
    task = Task("LSTM")
    opt = getattr(optim, name)(task.params(), **kwargs)
    _train(((task, opt),), 3)
    return task, opt


def _bad_state_dicts() -> List[Tuple[str, Callable[[Dict[str, Any]], Any], type, str]]:
    def set_state(i: int, key: str, value: Any) -> Callable[[Dict[str, Any]], Any]:
        def edit(sd: Dict[str, Any]) -> Any:
            sd["state"][i][key] = value
            return sd
        return edit

    def drop_state(i: int) -> Callable[[Dict[str, Any]], Any]:
        def edit(sd: Dict[str, Any]) -> Any:
            del sd["state"][i]
            return sd
        return edit

    def group(key: str, value: Any) -> Callable[[Dict[str, Any]], Any]:
        def edit(sd: Dict[str, Any]) -> Any:
            sd["param_groups"][0][key] = value
            return sd
        return edit

    return [
        ("not a mapping", lambda sd: [sd], TypeError, "state_dict: expected a mapping"),
        ("no state", lambda sd: {"param_groups": sd["param_groups"]}, ValueError, "expected the keys"),
        ("two groups", lambda sd: {**sd, "param_groups": sd["param_groups"] * 2}, ValueError, "one parameter group"),
        ("fewer params", group("params", [0, 1]), ValueError,
         r"\['params'\]: expected 11 parameter ids .*got \[0, 1\]"),
        ("bad lr", group("lr", -0.5), ValueError, r"\['lr'\]: expected a number >= 0, got -0.5"),
        ("bad betas", group("betas", (0.9, 1.0)), ValueError, r"\['betas'\]\[1\]: expected a number in \[0, 1\)"),
        ("wrong shape", set_state(1, "exp_avg", np.zeros((2, 2))), ValueError, r"expected the parameter's shape"),
        ("missing key", lambda sd: (sd["state"][2].pop("exp_avg_sq"), sd)[1], ValueError,
         r"state_dict\['state'\]\[2\]: expected the keys"),
        ("text array", set_state(0, "exp_avg", "abc"), TypeError, "expected a real numeric array"),
        ("bad step", set_state(0, "step", -1.0), ValueError, r"\['step'\]: expected a number >= 0, got -1.0"),
        ("steps differ", set_state(1, "step", 99.0), ValueError, "step together"),
        ("part of a model", drop_state(1), ValueError, "for every parameter of params"),
        ("unknown id", lambda sd: (sd["state"].__setitem__(99, sd["state"][0]), sd)[1], ValueError, "99"),
    ]


@pytest.mark.parametrize("label, edit, error, message", _bad_state_dicts(), ids=[b[0] for b in _bad_state_dicts()])
def test_a_rejected_state_dict_changes_nothing(label: str, edit: Callable[[Dict[str, Any]], Any], error: type,
                                               message: str) -> None:
    task, opt = _trained()
    twin_task = task.twin()
    twin = optim.Adam(twin_task.params())
    twin.load_state_dict(opt.state_dict())
    before = opt.state_dict()
    with pytest.raises(error, match=message):
        opt.load_state_dict(edit(copy.deepcopy(opt.state_dict())))
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    # It continues exactly as an optimizer that never saw the bad dict.
    _train(((task, opt), (twin_task, twin)), 1)
    _assert_same_arrays(task, twin_task)


def test_load_state_dict_switching_amsgrad_on_needs_its_state() -> None:
    _, opt = _trained("Adam", lr=0.01)
    sd = opt.state_dict()
    sd["param_groups"][0]["amsgrad"] = True
    with pytest.raises(ValueError, match="max_exp_avg_sq"):
        opt.load_state_dict(sd)
    assert opt.param_groups[0]["amsgrad"] is False


# ---------------------------------------------------------------------------------------------------------------------
# 5. Bad input
# ---------------------------------------------------------------------------------------------------------------------

def _pairs() -> List[Tuple[np.ndarray, np.ndarray]]:
    return [(np.ones((2, 3)), np.ones((2, 3)))]


@pytest.mark.parametrize("make, error, message", [
    (lambda p: optim.SGD(p, lr=-0.1), ValueError, r"lr: expected a number >= 0, got -0.1"),
    (lambda p: optim.Adam(p, lr=-1e-3), ValueError, r"lr: expected a number >= 0, got -0.001"),
    (lambda p: optim.AdamW(p, lr=float("nan")), ValueError, r"lr: expected a finite number, got nan"),
    (lambda p: optim.SGD(p, lr="0.1"), TypeError, r"lr: expected a real number, got '0.1' of type str"),
    (lambda p: optim.SGD(p, lr=True), TypeError, r"lr: expected a real number, got True"),
    (lambda p: optim.SGD(p, lr=0.1, momentum=-0.5), ValueError, r"momentum: expected a number >= 0, got -0.5"),
    (lambda p: optim.SGD(p, lr=0.1, weight_decay=-1), ValueError, r"weight_decay: expected a number >= 0, got -1"),
    (lambda p: optim.SGD(p, lr=0.1, nesterov=True), ValueError,
     r"nesterov: .*momentum > 0 and dampening == 0.*got momentum=0.0, dampening=0.0"),
    (lambda p: optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), ValueError,
     r"nesterov: .*got momentum=0.9, dampening=0.1"),
    (lambda p: optim.SGD(p, 0.1, 0.9, 0.0, 0.01, True), TypeError, r"weight_decay: expected a real number, got True"),
    (lambda p: optim.Adam(p, betas=(1.0, 0.999)), ValueError, r"betas\[0\]: expected a number in \[0, 1\), got 1.0"),
    (lambda p: optim.Adam(p, betas=(0.9, -0.1)), ValueError, r"betas\[1\]: expected a number in \[0, 1\), got -0.1"),
    (lambda p: optim.AdamW(p, betas=(0.9, 1.5)), ValueError, r"betas\[1\]: .*got 1.5"),
    (lambda p: optim.Adam(p, betas=0.9), TypeError, r"betas: expected a pair \(beta1, beta2\).*got 0.9"),
    (lambda p: optim.Adam(p, eps=-1e-8), ValueError, r"eps: expected a number >= 0, got -1e-08"),
    (lambda p: optim.Adam(p, weight_decay=-0.1), ValueError, r"weight_decay: expected a number >= 0, got -0.1"),
    (lambda p: optim.AdamW(p, amsgrad=1), TypeError, r"amsgrad: expected a bool, got 1"),
])
def test_bad_hyperparameters(make: Callable[[Any], Any], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        make(_pairs())


def _bad_params() -> List[Tuple[str, Callable[[], Any], type, str]]:
    readonly = np.ones(3)
    readonly.flags.writeable = False
    shared = np.ones(4)
    model = rnnfast.GRU(2, 3)
    return [
        ("empty list", lambda: [], ValueError, r"params: expected at least one .*got an empty list"),
        ("shapes differ", lambda: [(np.ones((2, 3)), np.ones((3, 2)))], ValueError,
         r"params\[0\]: expected the grad to have the param's shape \(2, 3\), got \(3, 2\)"),
        ("int param", lambda: [(np.ones(3, np.int64), np.ones(3))], TypeError,
         r"params\[0\]: expected the param to be a floating-point array, got dtype int64"),
        ("int grad", lambda: [(np.ones(3), np.ones(3, np.int32))], TypeError,
         r"params\[0\]: expected the grad to be a floating-point array, got dtype int32"),
        ("complex", lambda: [(np.ones(3, complex), np.ones(3, complex))], TypeError, r"got dtype complex128"),
        ("dtypes differ", lambda: [(np.ones(3), np.ones(3, np.float32))], TypeError,
         r"params\[0\]: expected the grad to have the param's dtype float64, got float32"),
        ("read-only param", lambda: [(np.ones(2), np.ones(2)), (readonly, np.ones(3))], ValueError,
         r"params\[1\]: expected a writeable param .*got a read-only array"),
        ("read-only grad", lambda: [(np.ones(3), readonly)], ValueError,
         r"params\[0\]: expected a writeable grad .*got a read-only array"),
        ("bare arrays", lambda: model.parameters(), TypeError,
         r"params\[0\]: expected an rnnfast model or a \(param, grad\) pair.*got a numpy.ndarray.*model itself"),
        ("a named_parameters dict", lambda: model.named_parameters(), TypeError, r"params: expected a list.*dict"),
        ("a single array", lambda: np.ones(3), TypeError, r"params: expected a list.*numpy.ndarray"),
        ("a single pair", lambda: (np.ones(3), np.ones(3)), TypeError, r"\[\(param, grad\)\]"),
        ("a triple", lambda: [(np.ones(3), np.ones(3), np.ones(3))], TypeError, r"params\[0\]: .*of length 3"),
        ("not arrays", lambda: [([1.0], [1.0])], TypeError, r"params\[0\]: expected the param to be a numpy.ndarray"),
        ("a number", lambda: 3, TypeError, r"params: expected a list.*int"),
        ("a model twice", lambda: [model, model], ValueError, r"params: expected distinct arrays"),
        ("a model and its own parameter", lambda: [model, (model.parameters()[0], np.zeros((9, 2), np.float32))],
         ValueError, r"sharing memory"),
        ("param is its grad", lambda: [(shared, shared)], ValueError, r"params\[0\] param and params\[0\] grad"),
        ("overlapping views", lambda: [(shared[:3], np.ones(3)), (shared[2:], np.ones(2))], ValueError,
         r"sharing memory"),
    ]


@pytest.mark.parametrize("label, make, error, message", _bad_params(), ids=[b[0] for b in _bad_params()])
@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "clip"])
def test_bad_params(label: str, make: Callable[[], Any], error: type, message: str, name: str) -> None:
    params = make()
    if name == "clip":
        if label == "empty list":
            return  # clipping nothing is allowed (PyTorch returns a norm of 0)
        pairs = [p for p in params if isinstance(p, tuple) and len(p) == 2
                 and all(isinstance(a, np.ndarray) for a in p)] if isinstance(params, list) else []
        grads = [p[1].copy() for p in pairs]
        with pytest.raises(error, match=message):
            optim.clip_grad_norm_(params, 1e-3)
        with pytest.raises(error, match=message):
            optim.clip_grad_value_(params, 1e-3)
        # Nothing was clipped.
        for g, b in zip([p[1] for p in pairs], grads):
            np.testing.assert_array_equal(g, b)
        return
    with pytest.raises(error, match=message):
        getattr(optim, name)(params, lr=0.1)


def test_distinct_strided_views_are_accepted() -> None:
    a = np.zeros(6)
    ga = np.ones(6)
    opt = optim.SGD([(a[::2], ga[::2]), (a[1::2], ga[1::2])], lr=1.0)  # interleaved, not overlapping
    opt.step()
    np.testing.assert_array_equal(a, -1.0)


def test_torch_tensors_are_refused_with_a_hint() -> None:
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"params\[0\]: expected the param to be a numpy.ndarray.*torch.optim"):
        optim.Adam([(torch.zeros(3), torch.zeros(3))])
    with pytest.raises(TypeError, match=r"params\[0\]: .*torch.optim"):
        optim.Adam([torch.nn.Linear(2, 2)])


@pytest.mark.parametrize("call, error, message", [
    (lambda p: optim.clip_grad_norm_(p, -1.0), ValueError, r"max_norm: expected a number >= 0, got -1.0"),
    (lambda p: optim.clip_grad_norm_(p, float("nan")), ValueError, r"max_norm: expected a number >= 0, got nan"),
    (lambda p: optim.clip_grad_norm_(p, "1"), TypeError, r"max_norm: expected a number >= 0, got '1'"),
    (lambda p: optim.clip_grad_norm_(p, 1.0, norm_type=0), ValueError, r"norm_type: expected a number > 0.*got 0"),
    (lambda p: optim.clip_grad_norm_(p, 1.0, norm_type=-2.0), ValueError, r"norm_type: .*got -2.0"),
    (lambda p: optim.clip_grad_norm_(p, 1.0, norm_type="fro"), ValueError, r"norm_type: .*got 'fro'"),
    (lambda p: optim.clip_grad_norm_(p, 1.0, error_if_nonfinite=1), TypeError, r"error_if_nonfinite: expected a bool"),
    (lambda p: optim.clip_grad_value_(p, -0.5), ValueError, r"clip_value: expected a number >= 0, got -0.5"),
    (lambda p: optim.clip_grad_value_(p, None), TypeError, r"clip_value: expected a number >= 0, got None"),
])
def test_bad_clipping_arguments_change_nothing(call: Callable[[Any], Any], error: type, message: str) -> None:
    task = Task("RNN")
    task.backward()
    before = {n: g.copy() for n, g in task.grads().items()}
    with pytest.raises(error, match=message):
        call(task.params())
    for n, g in task.grads().items():
        np.testing.assert_array_equal(g, before[n])


def test_a_failed_construction_changes_nothing() -> None:
    task = Task("LSTM")
    task.backward()
    params, grads = task.model.state_dict(), {n: g.copy() for n, g in task.model.grads.items()}
    with pytest.raises(TypeError):
        optim.Adam([task.model, (np.ones(2), np.ones(2, np.int64))])
    with pytest.raises(ValueError):
        optim.SGD([task.model], lr=-1)
    for n, p in task.model.named_parameters().items():
        np.testing.assert_array_equal(p, params[n])
        np.testing.assert_array_equal(task.model.grads[n], grads[n])
