"""Tests of the LSTM and GRU of the pure-NumPy reference (rnnfast.reference).

As for the Elman RNN (test_reference.py), the reference is checked against
things that do not come from it: centered finite differences, structural
invariants, small cases worked out by hand and (when installed) PyTorch's
nn.LSTM / nn.GRU / nn.LSTMCell / nn.GRUCell, including a short SGD training
run.

The finite-difference grid is large (8 options), so it runs on a covering
subset: every combination of values of any three options occurs in some
case. The PyTorch comparisons are cheap and run on the full products.
"""

import itertools
import math

import numpy as np
import pytest

from rnnfast import reference as ref

EPS = 1e-6            # finite-difference step (float64)
FD_RTOL = 1e-3
FD_ATOL = 1e-5
FD_SAMPLES = 3        # entries of each parameter probed one by one (plus one random direction over all of them)
TORCH_TOL = 1e-10

LAYOUTS = ("time_major", "batch_first", "unbatched")


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

def make_lstm_params(rng, input_size, hidden_size, num_layers=1, bidirectional=False, bias=True, proj_size=0,
                     dtype=np.float64):
    shapes = ref.lstm_param_shapes(input_size, hidden_size, num_layers, bidirectional, bias, proj_size)
    return {name: rng.uniform(-1, 1, size=shape).astype(dtype) for name, shape in shapes.items()}


def make_gru_params(rng, input_size, hidden_size, num_layers=1, bidirectional=False, bias=True,
                    dtype=np.float64):
    shapes = ref.gru_param_shapes(input_size, hidden_size, num_layers, bidirectional, bias)
    return {name: rng.uniform(-1, 1, size=shape).astype(dtype) for name, shape in shapes.items()}


def make_cell_params(rng, input_size, hidden_size, num_gates, bias=True):
    p = {
        "weight_ih": rng.uniform(-1, 1, (num_gates * hidden_size, input_size)),
        "weight_hh": rng.uniform(-1, 1, (num_gates * hidden_size, hidden_size)),
    }
    if bias:
        p["bias_ih"] = rng.uniform(-1, 1, num_gates * hidden_size)
        p["bias_hh"] = rng.uniform(-1, 1, num_gates * hidden_size)
    return p


def make_masks(rng, num_layers, T, B, width, p=0.4):
    """Random inverted-dropout masks: 0 with probability p, else 1/(1-p)."""
    keep = rng.uniform(size=(num_layers - 1, T, B, width)) >= p
    return keep / (1 - p)


def assert_close(actual, expected, rtol=1e-12, atol=1e-12, what=""):
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def x_shape(layout, T, B, I):
    return {"time_major": (T, B, I), "batch_first": (B, T, I), "unbatched": (T, I)}[layout]


def h_shape(layout, LD, B, H):
    return (LD, H) if layout == "unbatched" else (LD, B, H)


def to_time_major(a, batch_first):
    return a.transpose(1, 0, 2) if batch_first else a


def valid_steps(lengths, T):
    """Boolean [T, B]: True where step t is inside item b's sequence."""
    return np.arange(T)[:, None] < np.asarray(lengths)[None, :]


def covering(options, strength, valid=lambda case: True):
    """A subset of the product of options (name -> values) that contains every combination of
    values of any `strength` options occurring in a valid case (greedy, deterministic)."""
    names = list(options)
    cases = [dict(zip(names, values)) for values in itertools.product(*options.values())]
    cases = [case for case in cases if valid(case)]
    tuples = [{(combo, tuple(case[n] for n in combo)) for combo in itertools.combinations(names, strength)}
              for case in cases]
    uncovered = set().union(*tuples)
    chosen = []
    while uncovered:
        best = max(range(len(cases)), key=lambda i: len(tuples[i] & uncovered))
        chosen.append(cases[best])
        uncovered -= tuples[best]
    return chosen


def check_finite_differences(loss, arrays, analytic, rng, full=()):
    """Compare analytic gradients with centered differences of loss().

    arrays: name -> float64 array that loss() reads (perturbed in place and restored).
    analytic: name -> the gradient claimed for it.
    The arrays named in `full` are probed entry by entry; the others at
    FD_SAMPLES random entries. Every array is also probed along one random
    direction v over all its entries: (loss(a + eps v) - loss(a - eps v)) / 2eps
    must equal <grad, v>, which no wrong entry escapes.
    """
    def central(arr, direction):
        orig = arr.copy()
        arr[...] = orig + EPS * direction
        f_plus = loss()
        arr[...] = orig - EPS * direction
        f_minus = loss()
        arr[...] = orig
        return (f_plus - f_minus) / (2 * EPS)

    for name, arr in arrays.items():
        grad = np.asarray(analytic[name])
        assert grad.shape == arr.shape, f"{name}: gradient shape {grad.shape} != {arr.shape}"
        if name in full or arr.size <= FD_SAMPLES:
            entries = list(np.ndindex(arr.shape))
        else:
            flat = rng.choice(arr.size, FD_SAMPLES, replace=False)
            entries = [np.unravel_index(k, arr.shape) for k in flat]
        for idx in entries:
            unit = np.zeros_like(arr)
            unit[idx] = 1.0
            np.testing.assert_allclose(grad[idx], central(arr, unit), rtol=FD_RTOL, atol=FD_ATOL,
                                       err_msg=f"{name}{tuple(int(i) for i in idx)}")
        v = rng.standard_normal(arr.shape)
        np.testing.assert_allclose(np.sum(grad * v), central(arr, v), rtol=FD_RTOL, atol=FD_ATOL,
                                   err_msg=f"{name} along a random direction")


# ---------------------------------------------------------------------------
# Parameter layout
# ---------------------------------------------------------------------------

def test_param_names_order():
    assert ref.lstm_param_names() == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    assert ref.lstm_param_names(1, bias=False, proj_size=2) == ["weight_ih_l0", "weight_hh_l0", "weight_hr_l0"]
    assert ref.lstm_param_names(2, bidirectional=True, proj_size=2) == [
        "weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "weight_hr_l0",
        "weight_ih_l0_reverse", "weight_hh_l0_reverse", "bias_ih_l0_reverse", "bias_hh_l0_reverse",
        "weight_hr_l0_reverse",
        "weight_ih_l1", "weight_hh_l1", "bias_ih_l1", "bias_hh_l1", "weight_hr_l1",
        "weight_ih_l1_reverse", "weight_hh_l1_reverse", "bias_ih_l1_reverse", "bias_hh_l1_reverse",
        "weight_hr_l1_reverse",
    ]
    for L, bidir, bias in itertools.product([1, 2, 3], [False, True], [False, True]):
        assert ref.gru_param_names(L, bidir, bias) == ref.param_names(L, bidir, bias)
        assert ref.lstm_param_names(L, bidir, bias) == ref.param_names(L, bidir, bias)


@pytest.mark.parametrize("num_layers,bidirectional,bias,proj_size",
                         list(itertools.product([1, 2, 3], [False, True], [False, True], [0, 3])))
def test_param_shapes(num_layers, bidirectional, bias, proj_size):
    I, H = 5, 7
    D = 2 if bidirectional else 1
    P = proj_size or H
    shapes = ref.lstm_param_shapes(I, H, num_layers, bidirectional, bias, proj_size)
    assert list(shapes) == ref.lstm_param_names(num_layers, bidirectional, bias, proj_size)
    for name, shape in shapes.items():
        if name.startswith("weight_ih_l0"):
            assert shape == (4 * H, I)
        elif name.startswith("weight_ih"):
            assert shape == (4 * H, D * P)
        elif name.startswith("weight_hh"):
            assert shape == (4 * H, P)
        elif name.startswith("weight_hr"):
            assert shape == (P, H)
        else:
            assert shape == (4 * H,)
    shapes = ref.gru_param_shapes(I, H, num_layers, bidirectional, bias)
    assert list(shapes) == ref.gru_param_names(num_layers, bidirectional, bias)
    for name, shape in shapes.items():
        if name.startswith("weight_ih_l0"):
            assert shape == (3 * H, I)
        elif name.startswith("weight_ih"):
            assert shape == (3 * H, D * H)
        elif name.startswith("weight_hh"):
            assert shape == (3 * H, H)
        else:
            assert shape == (3 * H,)


def test_param_layout_matches_torch():
    torch = pytest.importorskip("torch")
    I, H = 5, 7
    for L, bidir, bias, proj in itertools.product([1, 2, 3], [False, True], [False, True], [0, 3]):
        lstm = torch.nn.LSTM(I, H, num_layers=L, bidirectional=bidir, bias=bias, proj_size=proj)
        assert {n: tuple(p.shape) for n, p in lstm.named_parameters()} == \
            ref.lstm_param_shapes(I, H, L, bidir, bias, proj)
        assert [n for n, _ in lstm.named_parameters()] == ref.lstm_param_names(L, bidir, bias, proj)
        if proj == 0:
            gru = torch.nn.GRU(I, H, num_layers=L, bidirectional=bidir, bias=bias)
            assert [n for n, _ in gru.named_parameters()] == ref.gru_param_names(L, bidir, bias)
            assert {n: tuple(p.shape) for n, p in gru.named_parameters()} == \
                ref.gru_param_shapes(I, H, L, bidir, bias)


# ---------------------------------------------------------------------------
# Finite differences: full LSTM / GRU
# ---------------------------------------------------------------------------

FD_T, FD_B, FD_I = 3, 3, 2
FD_LENGTHS = [2, FD_T, 1]          # unsorted; a length-1 item and a full-length one
FD_LENGTH_UNBATCHED = 2


def _fd_case(kind, seed, *, L, bidir, bias, proj, layout, hx, masks, lengths, grads=("out", "h", "c")):
    """One finite-difference check of lstm_backward / gru_backward."""
    T, B, I = FD_T, FD_B, FD_I
    H = 4 if proj else 2
    P = proj or H
    D = 2 if bidir else 1
    batch_first = layout == "batch_first"
    unbatched = layout == "unbatched"
    rng = np.random.default_rng(seed)
    if kind == "lstm":
        params = make_lstm_params(rng, I, H, L, bidir, bias, proj)
    else:
        params = make_gru_params(rng, I, H, L, bidir, bias)
    x = rng.uniform(-1, 1, x_shape(layout, T, B, I))
    h0 = rng.uniform(-1, 1, h_shape(layout, L * D, B, P)) if hx else np.zeros(h_shape(layout, L * D, B, P))
    c0 = rng.uniform(-1, 1, h_shape(layout, L * D, B, H)) if hx else np.zeros(h_shape(layout, L * D, B, H))
    kw = dict(num_layers=L, bias=bias, batch_first=batch_first, bidirectional=bidir)
    if masks:
        kw["dropout_masks"] = make_masks(rng, L, T, 1 if unbatched else B, D * P)
    if lengths:
        kw["lengths"] = FD_LENGTH_UNBATCHED if unbatched else FD_LENGTHS
    G = rng.standard_normal(x_shape(layout, T, B, D * P)) if "out" in grads else None
    Gh = rng.standard_normal(h0.shape) if "h" in grads else None
    Gc = rng.standard_normal(c0.shape) if "c" in grads and kind == "lstm" else None

    if kind == "lstm":
        kw["proj_size"] = proj

        def run(h0_, c0_):
            out, (hn, cn), cache = ref.lstm_forward(x, params, hx=None if h0_ is None else (h0_, c0_), **kw)
            return out, hn, cn, cache
    else:
        def run(h0_, c0_):
            out, hn, cache = ref.gru_forward(x, params, h0=h0_, **kw)
            return out, hn, None, cache

    # The loss always passes the initial states (zeros when "not given") so
    # that their derivatives exist; the analytic run passes None in that case.
    def loss():
        out, hn, cn, _ = run(h0, c0)
        total = 0.0
        for value, weight in ((out, G), (hn, Gh), (cn, Gc)):
            if weight is not None:
                total += np.sum(value * weight)
        return total

    out, hn, cn, cache = run(h0, c0) if hx else run(None, None)
    assert out.shape == x_shape(layout, T, B, D * P)
    assert hn.shape == h0.shape
    wrt = {"x": x, "h0": h0, **params}
    if kind == "lstm":
        assert cn.shape == c0.shape
        grad_x, (grad_h0, grad_c0), grads = ref.lstm_backward(cache, G, Gh, Gc)
        analytic = {"x": grad_x, "h0": grad_h0, "c0": grad_c0, **grads}
        wrt["c0"] = c0
        assert list(grads) == ref.lstm_param_names(L, bidir, bias, proj)
    else:
        grad_x, grad_h0, grads = ref.gru_backward(cache, G, Gh)
        analytic = {"x": grad_x, "h0": grad_h0, **grads}
        assert list(grads) == ref.gru_param_names(L, bidir, bias)
    if lengths:
        valid = valid_steps([kw["lengths"]] if unbatched else kw["lengths"], T)
        gx = grad_x[:, None, :] if unbatched else to_time_major(grad_x, batch_first)
        assert np.all(gx[~valid] == 0), "grad_x at padded steps"
        o = out[:, None, :] if unbatched else to_time_major(out, batch_first)
        assert np.all(o[~valid] == 0), "output at padded steps"
    check_finite_differences(loss, wrt, analytic, rng, full=("x",))


FD_OPTIONS = dict(L=[1, 2, 3], bidir=[False, True], bias=[False, True], proj=[0, 3], layout=list(LAYOUTS),
                  hx=[False, True], masks=[False, True], lengths=[False, True])
LSTM_FD_GRID = covering(FD_OPTIONS, 3, valid=lambda c: c["L"] > 1 or not c["masks"])
GRU_FD_GRID = covering({k: v for k, v in FD_OPTIONS.items() if k != "proj"}, 3,
                       valid=lambda c: c["L"] > 1 or not c["masks"])


def _case_id(case):
    return "-".join(f"{k}={v}" for k, v in case.items())


@pytest.mark.parametrize("case", LSTM_FD_GRID, ids=_case_id)
def test_lstm_finite_differences(case):
    _fd_case("lstm", 100 + LSTM_FD_GRID.index(case), **case)


@pytest.mark.parametrize("case", GRU_FD_GRID, ids=_case_id)
def test_gru_finite_differences(case):
    _fd_case("gru", 300 + GRU_FD_GRID.index(case), proj=0, **case)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind,which", [("lstm", "out"), ("lstm", "h"), ("lstm", "c"), ("gru", "out"), ("gru", "h")])
def test_finite_differences_one_grad_path(kind, which, layout):
    """Only one of grad_output, grad_h_n, grad_c_n given; the others None."""
    _fd_case(kind, 500, L=2, bidir=True, bias=True, proj=3 if kind == "lstm" else 0, layout=layout,
             hx=True, masks=True, lengths=True, grads=(which,))


def test_fd_grids_cover_the_options():
    gru_options = {k: v for k, v in FD_OPTIONS.items() if k != "proj"}
    for grid, options in ((LSTM_FD_GRID, FD_OPTIONS), (GRU_FD_GRID, gru_options)):
        cases = [dict(zip(options, values)) for values in itertools.product(*options.values())]
        cases = [c for c in cases if c["L"] > 1 or not c["masks"]]
        for combo in itertools.combinations(options, 3):
            needed = {tuple(c[n] for n in combo) for c in cases}
            seen = {tuple(c[n] for n in combo) for c in grid}
            assert needed <= seen, combo


# ---------------------------------------------------------------------------
# Finite differences: cells
# ---------------------------------------------------------------------------

CELL_GRID = list(itertools.product([False, True], [False, True], [False, True]))


@pytest.mark.parametrize("batched,bias,h_given", CELL_GRID)
def test_lstm_cell_finite_differences(batched, bias, h_given):
    B, I, H = 3, 3, 3
    rng = np.random.default_rng(600 + CELL_GRID.index((batched, bias, h_given)))
    params = make_cell_params(rng, I, H, 4, bias)
    x = rng.uniform(-1, 1, (B, I) if batched else (I,))
    state = (B, H) if batched else (H,)
    h = rng.uniform(-1, 1, state) if h_given else np.zeros(state)
    c = rng.uniform(-1, 1, state) if h_given else np.zeros(state)
    Gh, Gc = rng.standard_normal(state), rng.standard_normal(state)

    def loss():
        h_new, c_new = ref.lstm_cell_forward(x, (h, c), params)[0]
        return np.sum(h_new * Gh) + np.sum(c_new * Gc)

    (h_new, c_new), cache = ref.lstm_cell_forward(x, (h, c) if h_given else None, params)
    assert h_new.shape == c_new.shape == state
    grad_x, (grad_h, grad_c), grads = ref.lstm_cell_backward(cache, Gh, Gc)
    assert list(grads) == list(params)
    check_finite_differences(loss, {"x": x, "h": h, "c": c, **params},
                             {"x": grad_x, "h": grad_h, "c": grad_c, **grads}, rng,
                             full=("x", "h", "c", *params))


@pytest.mark.parametrize("batched,bias,h_given", CELL_GRID)
def test_gru_cell_finite_differences(batched, bias, h_given):
    B, I, H = 3, 3, 3
    rng = np.random.default_rng(700 + CELL_GRID.index((batched, bias, h_given)))
    params = make_cell_params(rng, I, H, 3, bias)
    x = rng.uniform(-1, 1, (B, I) if batched else (I,))
    state = (B, H) if batched else (H,)
    h = rng.uniform(-1, 1, state) if h_given else np.zeros(state)
    G = rng.standard_normal(state)

    def loss():
        return np.sum(ref.gru_cell_forward(x, h, params)[0] * G)

    h_new, cache = ref.gru_cell_forward(x, h if h_given else None, params)
    assert h_new.shape == state
    grad_x, grad_h, grads = ref.gru_cell_backward(cache, G)
    assert list(grads) == list(params)
    check_finite_differences(loss, {"x": x, "h": h, **params}, {"x": grad_x, "h": grad_h, **grads}, rng,
                             full=("x", "h", *params))


@pytest.mark.parametrize("which", ["h", "c"])
def test_lstm_cell_finite_differences_one_grad_path(which):
    B, I, H = 2, 3, 3
    rng = np.random.default_rng(650)
    params = make_cell_params(rng, I, H, 4)
    x = rng.uniform(-1, 1, (B, I))
    h, c = rng.uniform(-1, 1, (B, H)), rng.uniform(-1, 1, (B, H))
    G = rng.standard_normal((B, H))
    pick = 0 if which == "h" else 1

    def loss():
        return np.sum(ref.lstm_cell_forward(x, (h, c), params)[0][pick] * G)

    _, cache = ref.lstm_cell_forward(x, (h, c), params)
    grad_x, (grad_h, grad_c), grads = ref.lstm_cell_backward(
        cache, G if which == "h" else None, G if which == "c" else None)
    check_finite_differences(loss, {"x": x, "h": h, "c": c, **params},
                             {"x": grad_x, "h": grad_h, "c": grad_c, **grads}, rng,
                             full=("x", "h", "c", *params))


# ---------------------------------------------------------------------------
# Invariants
# ---------------------------------------------------------------------------

def _cell_params_of(params, layer=0, sfx=""):
    return {kind: params[f"{kind}_l{layer}{sfx}"]
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            if f"{kind}_l{layer}{sfx}" in params}


@pytest.mark.parametrize("bias", [False, True])
def test_lstm_sequence_equals_cell_loop(bias):
    rng = np.random.default_rng(10)
    T, B, I, H = 4, 3, 2, 3
    params = make_lstm_params(rng, I, H, bias=bias)
    cp = _cell_params_of(params)
    x = rng.uniform(-1, 1, (T, B, I))
    h0, c0 = rng.uniform(-1, 1, (1, B, H)), rng.uniform(-1, 1, (1, B, H))
    G, Gh, Gc = rng.standard_normal((T, B, H)), rng.standard_normal((1, B, H)), rng.standard_normal((1, B, H))

    out, (hn, cn), cache = ref.lstm_forward(x, params, bias=bias, hx=(h0, c0))
    h, c = h0[0], c0[0]
    cell_caches = []
    for t in range(T):
        (h, c), cc = ref.lstm_cell_forward(x[t], (h, c), cp)
        cell_caches.append(cc)
        assert_close(out[t], h, what=f"output[{t}]")
    assert_close(hn[0], h, what="h_n")
    assert_close(cn[0], c, what="c_n")

    grad_x, (grad_h0, grad_c0), grads = ref.lstm_backward(cache, G, Gh, Gc)
    dh, dc = Gh[0], Gc[0]
    acc = {k: np.zeros_like(v) for k, v in cp.items()}
    for t in reversed(range(T)):
        gx, (dh, dc), g = ref.lstm_cell_backward(cell_caches[t], G[t] + dh, dc)
        assert_close(grad_x[t], gx, what=f"grad_x[{t}]")
        for k in acc:
            acc[k] += g[k]
    assert_close(grad_h0[0], dh, what="grad_h0")
    assert_close(grad_c0[0], dc, what="grad_c0")
    for k in acc:
        assert_close(grads[f"{k}_l0"], acc[k], what=k)


@pytest.mark.parametrize("bias", [False, True])
def test_gru_sequence_equals_cell_loop(bias):
    rng = np.random.default_rng(11)
    T, B, I, H = 4, 3, 2, 3
    params = make_gru_params(rng, I, H, bias=bias)
    cp = _cell_params_of(params)
    x = rng.uniform(-1, 1, (T, B, I))
    h0 = rng.uniform(-1, 1, (1, B, H))
    G, Gh = rng.standard_normal((T, B, H)), rng.standard_normal((1, B, H))

    out, hn, cache = ref.gru_forward(x, params, bias=bias, h0=h0)
    h = h0[0]
    cell_caches = []
    for t in range(T):
        h, cc = ref.gru_cell_forward(x[t], h, cp)
        cell_caches.append(cc)
        assert_close(out[t], h, what=f"output[{t}]")
    assert_close(hn[0], h, what="h_n")

    grad_x, grad_h0, grads = ref.gru_backward(cache, G, Gh)
    dh = Gh[0]
    acc = {k: np.zeros_like(v) for k, v in cp.items()}
    for t in reversed(range(T)):
        gx, dh, g = ref.gru_cell_backward(cell_caches[t], G[t] + dh)
        assert_close(grad_x[t], gx, what=f"grad_x[{t}]")
        for k in acc:
            acc[k] += g[k]
    assert_close(grad_h0[0], dh, what="grad_h0")
    for k in acc:
        assert_close(grads[f"{k}_l0"], acc[k], what=k)


def _run(kind, x, params, hx, G, Gh, Gc, **kw):
    """Forward and backward of either kind, with the LSTM's pair of states flattened."""
    if kind == "lstm":
        out, (hn, cn), cache = ref.lstm_forward(x, params, hx=hx, **kw)
        gx, (gh, gc), g = ref.lstm_backward(cache, G, Gh, Gc)
        return out, (hn, cn), gx, (gh, gc), g
    out, hn, cache = ref.gru_forward(x, params, h0=None if hx is None else hx[0], **kw)
    gx, gh, g = ref.gru_backward(cache, G, Gh)
    return out, (hn,), gx, (gh,), g


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_lengths_padding_is_ignored(kind, bidirectional, batch_first):
    rng = np.random.default_rng(12)
    T, B, I, H, L = 5, 4, 2, 4, 2
    P = 3 if kind == "lstm" else H
    D = 2 if bidirectional else 1
    lengths = np.array([3, 5, 1, 2])
    valid = valid_steps(lengths, T)
    if kind == "lstm":
        params = make_lstm_params(rng, I, H, L, bidirectional, proj_size=3)
        extra = dict(proj_size=3)
    else:
        params = make_gru_params(rng, I, H, L, bidirectional)
        extra = {}
    x = rng.uniform(-1, 1, (T, B, I))
    hx = (rng.uniform(-1, 1, (L * D, B, P)), rng.uniform(-1, 1, (L * D, B, H)))
    masks = make_masks(rng, L, T, B, D * P)
    G = rng.standard_normal((T, B, D * P))
    Gh, Gc = rng.standard_normal(hx[0].shape), rng.standard_normal(hx[1].shape)
    kw = dict(num_layers=L, bidirectional=bidirectional, batch_first=batch_first, lengths=lengths, **extra)

    def run(x, masks, G):
        out, states, gx, gs, g = _run(kind, to_time_major(x, batch_first), params, hx,
                                      to_time_major(G, batch_first), Gh, Gc, dropout_masks=masks, **kw)
        return to_time_major(out, batch_first), states, to_time_major(gx, batch_first), gs, g

    out, states, gx, gs, g = run(x, masks, G)
    assert np.all(out[~valid] == 0), "output at padded steps"
    assert np.all(out[valid] != 0)
    assert np.all(gx[~valid] == 0), "grad_x at padded steps"
    assert np.all(gx[valid] != 0)
    # h_n is read at each item's last valid step (forward) and at step 0 (reverse).
    top = (L - 1) * D
    assert_close(states[0][top], out[lengths - 1, np.arange(B), :P], what="h_n fwd = last valid output")
    if bidirectional:
        assert_close(states[0][top + 1], out[0, :, P:], what="h_n rev = output at t = 0")

    # Garbage in x, the masks and G at padded steps changes nothing at all.
    x2, masks2, G2 = x.copy(), masks.copy(), G.copy()
    x2[~valid] = rng.uniform(-5, 5, x2[~valid].shape)
    masks2[:, ~valid] = rng.uniform(-5, 5, masks2[:, ~valid].shape)
    G2[~valid] = rng.standard_normal(G2[~valid].shape)
    out2, states2, gx2, gs2, g2 = run(x2, masks2, G2)
    np.testing.assert_array_equal(out2, out)
    np.testing.assert_array_equal(gx2, gx)
    for a, b in zip(states2 + gs2, states + gs):
        np.testing.assert_array_equal(a, b)
    for k in params:
        np.testing.assert_array_equal(g2[k], g[k], err_msg=k)
    # ... while a change at a valid step does show (the comparison above is not vacuous).
    x3 = x.copy()
    x3[0, 2] += 0.5                           # item 2 has length 1: its only valid step
    assert not np.allclose(run(x3, masks, G)[1][0][:, 2], states[0][:, 2])


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_full_lengths_equal_no_lengths(kind):
    rng = np.random.default_rng(13)
    T, B, I, H, L = 4, 3, 2, 3, 2
    params = make_lstm_params(rng, I, H, L, True) if kind == "lstm" else make_gru_params(rng, I, H, L, True)
    x = rng.uniform(-1, 1, (B, T, I))
    hx = (rng.uniform(-1, 1, (2 * L, B, H)), rng.uniform(-1, 1, (2 * L, B, H)))
    masks = make_masks(rng, L, T, B, 2 * H)
    G = rng.standard_normal((B, T, 2 * H))
    Gh, Gc = rng.standard_normal(hx[0].shape), rng.standard_normal(hx[1].shape)
    kw = dict(num_layers=L, bidirectional=True, batch_first=True, dropout_masks=masks)
    a = _run(kind, x, params, hx, G, Gh, Gc, **kw)
    b = _run(kind, x, params, hx, G, Gh, Gc, lengths=[T] * B, **kw)
    assert_close(b[0], a[0], what="output")
    assert_close(b[2], a[2], what="grad_x")
    for s, t in zip(b[1] + b[3], a[1] + a[3]):
        assert_close(s, t)
    assert list(b[4]) == list(a[4])
    for k in params:
        assert_close(b[4][k], a[4][k], what=k)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_states_none_equal_zeros(kind):
    rng = np.random.default_rng(14)
    T, B, I, H, L = 3, 2, 2, 3, 2
    params = make_lstm_params(rng, I, H, L, True) if kind == "lstm" else make_gru_params(rng, I, H, L, True)
    x = rng.uniform(-1, 1, (T, B, I))
    zeros = (np.zeros((2 * L, B, H)), np.zeros((2 * L, B, H)))
    G = rng.standard_normal((T, B, 2 * H))
    Gh, Gc = rng.standard_normal(zeros[0].shape), rng.standard_normal(zeros[1].shape)
    kw = dict(num_layers=L, bidirectional=True)
    a = _run(kind, x, params, None, G, Gh, Gc, **kw)
    b = _run(kind, x, params, zeros, G, Gh, Gc, **kw)
    assert_close(a[0], b[0])
    assert_close(a[2], b[2])
    for s, t in zip(a[1] + a[3], b[1] + b[3]):
        assert_close(s, t)
    for grad_state in a[3]:
        assert grad_state.shape == (2 * L, B, H)
        assert np.abs(grad_state).max() > 1e-3


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_missing_grads_count_as_zero(kind):
    rng = np.random.default_rng(15)
    T, B, I, H = 3, 2, 2, 2
    x = rng.uniform(-1, 1, (T, B, I))
    if kind == "lstm":
        params = make_lstm_params(rng, I, H, 2, True)
        out, (hn, cn), cache = ref.lstm_forward(x, params, num_layers=2, bidirectional=True)
        backward = ref.lstm_backward
        values = [out, hn, cn]
    else:
        params = make_gru_params(rng, I, H, 2, True)
        out, hn, cache = ref.gru_forward(x, params, num_layers=2, bidirectional=True)
        backward = ref.gru_backward
        values = [out, hn]
    incoming = [rng.standard_normal(v.shape) for v in values]

    def flat(result):
        grad_x, grad_states, grads = result
        states = grad_states if isinstance(grad_states, tuple) else (grad_states,)
        return [grad_x, *states, *grads.values()]

    both = flat(backward(cache, *incoming))
    total = None
    for i in range(len(values)):
        only = [g if j == i else None for j, g in enumerate(incoming)]
        zeros = [g if j == i else np.zeros_like(g) for j, g in enumerate(incoming)]
        a, b = flat(backward(cache, *only)), flat(backward(cache, *zeros))
        for u, v in zip(a, b):
            assert_close(u, v)
        total = a if total is None else [u + v for u, v in zip(total, a)]
    # The backward pass is linear in the incoming gradients.
    for u, v in zip(both, total):
        assert_close(u, v)
    with pytest.raises(ValueError):
        backward(cache)
    with pytest.raises(ValueError):
        backward(cache, *([None] * len(values)))
    _, cell_cache = ref.lstm_cell_forward(x[0], None, make_cell_params(rng, I, H, 4))
    with pytest.raises(ValueError):
        ref.lstm_cell_backward(cell_cache)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_unbatched_equals_batch_of_one(kind):
    rng = np.random.default_rng(16)
    T, I, H, L = 3, 2, 4, 2
    P = 3 if kind == "lstm" else H
    if kind == "lstm":
        params = make_lstm_params(rng, I, H, L, True, proj_size=3)
        extra = dict(proj_size=3)
    else:
        params = make_gru_params(rng, I, H, L, True)
        extra = {}
    x = rng.uniform(-1, 1, (T, I))
    hx = (rng.uniform(-1, 1, (2 * L, P)), rng.uniform(-1, 1, (2 * L, H)))
    masks = make_masks(rng, L, T, 1, 2 * P)
    G = rng.standard_normal((T, 2 * P))
    Gh, Gc = rng.standard_normal(hx[0].shape), rng.standard_normal(hx[1].shape)
    kw = dict(num_layers=L, bidirectional=True, dropout_masks=masks, **extra)
    # batch_first does not apply to unbatched input.
    u = _run(kind, x, params, hx, G, Gh, Gc, batch_first=True, **kw)
    one = _run(kind, x[:, None], params, tuple(s[:, None] for s in hx), G[:, None], Gh[:, None], Gc[:, None], **kw)
    assert_close(u[0], one[0][:, 0])
    assert_close(u[2], one[2][:, 0])
    for s, t in zip(u[1] + u[3], one[1] + one[3]):
        assert_close(s, t[:, 0])
    for k in params:
        assert_close(u[4][k], one[4][k], what=k)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_float32_in_float32_out(kind):
    rng = np.random.default_rng(17)
    T, B, I, H = 3, 2, 3, 4
    p64 = make_lstm_params(rng, I, H, 2, True) if kind == "lstm" else make_gru_params(rng, I, H, 2, True)
    p32 = {k: v.astype(np.float32) for k, v in p64.items()}
    x = rng.uniform(-1, 1, (T, B, I))
    G = rng.standard_normal((T, B, 2 * H))
    r32 = _run(kind, x.astype(np.float32), p32, None, G.astype(np.float32), None, None, num_layers=2,
               bidirectional=True)
    r64 = _run(kind, x, p64, None, G, None, None, num_layers=2, bidirectional=True)
    for a, b in zip([r32[0], *r32[1], r32[2], *r32[3], *r32[4].values()],
                    [r64[0], *r64[1], r64[2], *r64[3], *r64[4].values()]):
        assert a.dtype == np.float32
        assert_close(a, b, rtol=1e-4, atol=1e-5)
    # Large pre-activations saturate the gates without overflow warnings (warnings are errors here).
    big = {k: 100 * v for k, v in p32.items()}
    out = _run(kind, 10 * x.astype(np.float32), big, None, G.astype(np.float32), None, None, num_layers=2,
               bidirectional=True)[0]
    assert np.all(np.isfinite(out))


# ---------------------------------------------------------------------------
# Cases worked out by hand
# ---------------------------------------------------------------------------

def _sig(v):
    return 1 / (1 + math.exp(-v))


def test_hand_computed_lstm_one_step():
    # One unit (H = 1), one input, one step; the four gate rows are i, f, g, o.
    w = np.array([0.5, -0.3, 0.8, 0.2])      # W_ih rows
    u = np.array([0.1, 0.4, -0.6, 0.7])      # W_hh rows
    b = np.array([0.05, 0.5, -0.1, 0.0])     # b_ih (b_hh = 0)
    x, h, c = 0.9, -0.4, 0.3
    params = {"weight_ih": w[:, None], "weight_hh": u[:, None], "bias_ih": b, "bias_hh": np.zeros(4)}
    a = w * x + u * h + b
    i, f, g, o = _sig(a[0]), _sig(a[1]), math.tanh(a[2]), _sig(a[3])
    c_new = f * c + i * g
    h_new = o * math.tanh(c_new)
    (hn, cn), cache = ref.lstm_cell_forward(np.array([x]), (np.array([h]), np.array([c])), params)
    assert_close(hn, [h_new])
    assert_close(cn, [c_new])

    # Loss = h_new. dL/dc' = o (1 - tanh(c')^2), then through c' = f c + i g.
    dc = o * (1 - math.tanh(c_new) ** 2)
    da = np.array([dc * g * i * (1 - i), dc * c * f * (1 - f), dc * i * (1 - g * g),
                   math.tanh(c_new) * o * (1 - o)])
    gx, (gh, gc), grads = ref.lstm_cell_backward(cache, np.array([1.0]))
    assert_close(gx, [da @ w])
    assert_close(gh, [da @ u])
    assert_close(gc, [dc * f])
    assert_close(grads["weight_ih"], (da * x)[:, None])
    assert_close(grads["weight_hh"], (da * h)[:, None])
    assert_close(grads["bias_ih"], da)
    assert_close(grads["bias_hh"], da)


def test_hand_computed_gru_one_step():
    # One unit (H = 1); the three gate rows are r, z, n. b_hn sits inside r * (.).
    w = np.array([0.5, -0.3, 0.8])           # W_ir, W_iz, W_in
    u = np.array([0.1, 0.4, -0.6])           # W_hr, W_hz, W_hn
    bi = np.array([0.05, 0.5, -0.1])
    bh = np.array([0.2, -0.1, 0.3])
    x, h = 0.9, -0.4
    params = {"weight_ih": w[:, None], "weight_hh": u[:, None], "bias_ih": bi, "bias_hh": bh}
    r = _sig(w[0] * x + bi[0] + u[0] * h + bh[0])
    z = _sig(w[1] * x + bi[1] + u[1] * h + bh[1])
    hn_part = u[2] * h + bh[2]
    n = math.tanh(w[2] * x + bi[2] + r * hn_part)
    h_new = (1 - z) * n + z * h
    out, cache = ref.gru_cell_forward(np.array([x]), np.array([h]), params)
    assert_close(out, [h_new])

    # Loss = h_new.
    da_n = (1 - z) * (1 - n * n)
    da_z = (h - n) * z * (1 - z)
    da_r = da_n * hn_part * r * (1 - r)
    gx, gh, grads = ref.gru_cell_backward(cache, np.array([1.0]))
    assert_close(gx, [da_r * w[0] + da_z * w[1] + da_n * w[2]])
    assert_close(gh, [z + da_r * u[0] + da_z * u[1] + da_n * r * u[2]])
    assert_close(grads["bias_ih"], [da_r, da_z, da_n])
    assert_close(grads["bias_hh"], [da_r, da_z, da_n * r])
    assert_close(grads["weight_ih"], [[da_r * x], [da_z * x], [da_n * x]])
    assert_close(grads["weight_hh"], [[da_r * h], [da_z * h], [da_n * r * h]])


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

def test_bad_arguments():
    rng = np.random.default_rng(18)
    T, B, I, H = 3, 2, 2, 4
    x = np.zeros((T, B, I))
    with pytest.raises(ValueError, match="smaller than hidden_size"):
        ref.lstm_param_shapes(I, H, proj_size=H)
    with pytest.raises(ValueError, match="positive integer or zero"):
        ref.lstm_param_names(proj_size=-1)
    params = make_lstm_params(rng, I, H, 2, True, proj_size=3)
    kw = dict(num_layers=2, bidirectional=True, proj_size=3)
    with pytest.raises(ValueError, match="weight_hh_l0 has shape"):       # proj_size not given
        ref.lstm_forward(x, params, num_layers=2, bidirectional=True)
    with pytest.raises(ValueError, match="pair"):
        ref.lstm_forward(x, params, hx=np.zeros((4, B, 3)), **kw)
    with pytest.raises(ValueError, match="h0 has shape"):                 # h0 is [L*D, B, P], not H
        ref.lstm_forward(x, params, hx=(np.zeros((4, B, H)), np.zeros((4, B, H))), **kw)
    with pytest.raises(ValueError, match="c0 has shape"):                 # c0 is [L*D, B, H], not P
        ref.lstm_forward(x, params, hx=(np.zeros((4, B, 3)), np.zeros((4, B, 3))), **kw)
    with pytest.raises(ValueError, match="dropout_masks"):                # masks are D*P wide
        ref.lstm_forward(x, params, dropout_masks=np.ones((1, T, B, 2 * H)), **kw)
    with pytest.raises(ValueError, match="lengths"):
        ref.lstm_forward(x, params, lengths=[T + 1, 1], **kw)
    _, _, cache = ref.lstm_forward(x, params, **kw)
    with pytest.raises(ValueError, match="grad_c_n"):
        ref.lstm_backward(cache, grad_c_n=np.zeros((4, B, 3)))
    with pytest.raises(ValueError, match="grad_output"):
        ref.lstm_backward(cache, np.zeros((T, B, 2 * H)))
    gparams = make_gru_params(rng, I, H, 2)
    with pytest.raises(ValueError, match="input size"):
        ref.gru_forward(np.zeros((T, B, I + 1)), gparams, num_layers=2)
    with pytest.raises(KeyError):
        ref.gru_forward(x, make_gru_params(rng, I, H, bias=False))
    with pytest.raises(ValueError):                                       # LSTM weights into a GRU
        ref.gru_forward(x, make_lstm_params(rng, I, H))
    with pytest.raises(ValueError):
        ref.lstm_cell_forward(x[0], None, make_cell_params(rng, I, H, 3))
    with pytest.raises(ValueError, match="c has shape"):
        ref.lstm_cell_forward(x[0], (np.zeros((B, H)), np.zeros((B + 1, H))), make_cell_params(rng, I, H, 4))
    with pytest.raises(ValueError, match="h has shape"):
        ref.gru_cell_forward(x[0], np.zeros(H), make_cell_params(rng, I, H, 3))


# ---------------------------------------------------------------------------
# PyTorch as an outside oracle (only when torch is installed)
# ---------------------------------------------------------------------------

def _torch_module(torch, kind, params, I, H, L, bidirectional, bias, proj, batch_first=False):
    if kind == "lstm":
        m = torch.nn.LSTM(I, H, num_layers=L, bias=bias, batch_first=batch_first, bidirectional=bidirectional,
                          proj_size=proj, dtype=torch.float64)
    else:
        m = torch.nn.GRU(I, H, num_layers=L, bias=bias, batch_first=batch_first, bidirectional=bidirectional,
                         dtype=torch.float64)
    m.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in params.items()})
    return m


def _make_case(kind, rng, I, H, L, bidirectional, bias, proj):
    if kind == "lstm":
        return make_lstm_params(rng, I, H, L, bidirectional, bias, proj)
    return make_gru_params(rng, I, H, L, bidirectional, bias)


def _compare_with_torch(what, ours, t_values, t_inputs, module_grads):
    """ours: (output, states, grad_x, grad_states, grads); t_values: torch output and final states;
    t_inputs: torch x and initial states (leaves); module_grads: name -> torch grad."""
    out, states, gx, gs, grads = ours
    assert_close(out, t_values[0].detach().numpy(), TORCH_TOL, TORCH_TOL, what + " output")
    for s, t, n in zip(states, t_values[1:], ("h_n", "c_n")):
        assert_close(s, t.detach().numpy(), TORCH_TOL, TORCH_TOL, what + " " + n)
    assert_close(gx, t_inputs[0].grad.numpy(), TORCH_TOL, TORCH_TOL, what + " grad_x")
    for s, t, n in zip(gs, t_inputs[1:], ("grad_h0", "grad_c0")):
        assert_close(s, t.grad.numpy(), TORCH_TOL, TORCH_TOL, what + " " + n)
    assert list(grads) == list(module_grads)
    for name, g in module_grads.items():
        assert_close(grads[name], g.numpy(), TORCH_TOL, TORCH_TOL, what + " " + name)


def _torch_run(torch, module, kind, x, states, G, Gs, packed_lengths=None, batch_first=False):
    """Forward and backward through a torch module; returns (values, leaves)."""
    tx = torch.tensor(x, requires_grad=True)
    ts = [torch.tensor(s, requires_grad=True) for s in states]
    inp = tx
    if packed_lengths is not None:
        from torch.nn.utils.rnn import pack_padded_sequence
        inp = pack_padded_sequence(tx, torch.from_numpy(np.asarray(packed_lengths)), batch_first=batch_first,
                                   enforce_sorted=False)
    hx = tuple(ts) if kind == "lstm" else ts[0]
    t_out, t_states = module(inp, hx)
    if packed_lengths is not None:
        from torch.nn.utils.rnn import pad_packed_sequence
        t_out, _ = pad_packed_sequence(t_out, batch_first=batch_first, total_length=x.shape[1 if batch_first else 0])
    t_states = t_states if kind == "lstm" else (t_states,)
    loss = (t_out * torch.from_numpy(G)).sum()
    for s, g in zip(t_states, Gs):
        loss = loss + (s * torch.from_numpy(g)).sum()
    loss.backward()
    return (t_out, *t_states), (tx, *ts)


LSTM_TORCH_GRID = list(itertools.product([1, 2, 3], [False, True], [False, True], [0, 3], LAYOUTS, [False, True]))
GRU_TORCH_GRID = [case for case in LSTM_TORCH_GRID if case[3] == 0]


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_against_torch(kind):
    torch = pytest.importorskip("torch")
    T, B, I, H = 4, 3, 3, 4
    grid = LSTM_TORCH_GRID if kind == "lstm" else GRU_TORCH_GRID
    for case, (L, bidirectional, bias, proj, layout, hx_given) in enumerate(grid):
        what = f"{kind} L={L} bidir={bidirectional} bias={bias} proj={proj} {layout} hx={hx_given}"
        D = 2 if bidirectional else 1
        P = proj or H
        batch_first = layout == "batch_first"
        rng = np.random.default_rng(2000 + case)
        params = _make_case(kind, rng, I, H, L, bidirectional, bias, proj)
        x = rng.uniform(-1, 1, x_shape(layout, T, B, I))
        shapes = [h_shape(layout, L * D, B, P), h_shape(layout, L * D, B, H)][:2 if kind == "lstm" else 1]
        states = [rng.uniform(-1, 1, s) if hx_given else np.zeros(s) for s in shapes]
        G = rng.standard_normal(x_shape(layout, T, B, D * P))
        Gs = [rng.standard_normal(s) for s in shapes]

        m = _torch_module(torch, kind, params, I, H, L, bidirectional, bias, proj, batch_first)
        t_values, t_inputs = _torch_run(torch, m, kind, x, states, G, Gs)
        kw = dict(num_layers=L, bias=bias, batch_first=batch_first, bidirectional=bidirectional)
        if kind == "lstm":
            kw["proj_size"] = proj
        ours = _run(kind, x, params, tuple(states) if hx_given else None, G, *(Gs + [None])[:2],
                    **kw)
        _compare_with_torch(what, ours, t_values, t_inputs,
                            {n: p.grad for n, p in m.named_parameters()})


LSTM_TORCH_LEN_GRID = list(itertools.product([1, 2, 3], [False, True], [False, True], [False, True], [0, 3],
                                             [False, True]))
GRU_TORCH_LEN_GRID = [case for case in LSTM_TORCH_LEN_GRID if case[4] == 0]


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_lengths_against_torch_packed(kind):
    torch = pytest.importorskip("torch")
    T, B, I, H = 5, 4, 3, 4
    grid = LSTM_TORCH_LEN_GRID if kind == "lstm" else GRU_TORCH_LEN_GRID
    for case, (L, bidirectional, batch_first, bias, proj, hx_given) in enumerate(grid):
        D = 2 if bidirectional else 1
        P = proj or H
        rng = np.random.default_rng(5000 + case)
        # Random lengths in any order; even cases force a length-1 and a full-length item,
        # odd ones may all be shorter than T (the padding then fills whole rows).
        lengths = rng.integers(1, T + 1, size=B)
        if case % 2 == 0:
            lengths[rng.permutation(B)[:2]] = [1, T]
        what = (f"{kind} L={L} bidir={bidirectional} batch_first={batch_first} bias={bias} proj={proj} "
                f"hx={hx_given} lengths={lengths.tolist()}")
        params = _make_case(kind, rng, I, H, L, bidirectional, bias, proj)
        x = rng.uniform(-1, 1, (B, T, I) if batch_first else (T, B, I))
        shapes = [(L * D, B, P), (L * D, B, H)][:2 if kind == "lstm" else 1]
        states = [rng.uniform(-1, 1, s) if hx_given else np.zeros(s) for s in shapes]
        G = rng.standard_normal((B, T, D * P) if batch_first else (T, B, D * P))
        Gs = [rng.standard_normal(s) for s in shapes]

        m = _torch_module(torch, kind, params, I, H, L, bidirectional, bias, proj, batch_first)
        t_values, t_inputs = _torch_run(torch, m, kind, x, states, G, Gs, lengths, batch_first)
        kw = dict(num_layers=L, bias=bias, batch_first=batch_first, bidirectional=bidirectional, lengths=lengths)
        if kind == "lstm":
            kw["proj_size"] = proj
        ours = _run(kind, x, params, tuple(states) if hx_given else None, G, *(Gs + [None])[:2],
                    **kw)
        _compare_with_torch(what, ours, t_values, t_inputs,
                            {n: p.grad for n, p in m.named_parameters()})


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_dropout_masks_against_torch_layers(kind):
    """Dropout masks against a stack of one-layer torch modules with the masks applied by hand
    between them (torch's own dropout draws its masks from its generator)."""
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    T, B, I, H = 4, 3, 3, 4
    projs = [0, 3] if kind == "lstm" else [0]
    for case, (L, bidirectional, proj, use_lengths) in enumerate(
            itertools.product([2, 3], [False, True], projs, [False, True])):
        what = f"{kind} L={L} bidir={bidirectional} proj={proj} lengths={use_lengths}"
        D = 2 if bidirectional else 1
        P = proj or H
        rng = np.random.default_rng(6000 + case)
        params = _make_case(kind, rng, I, H, L, bidirectional, True, proj)
        x = rng.uniform(-1, 1, (T, B, I))
        shapes = [(L * D, B, P), (L * D, B, H)][:2 if kind == "lstm" else 1]
        states = [rng.uniform(-1, 1, s) for s in shapes]
        masks = make_masks(rng, L, T, B, D * P)
        lengths = np.array([2, T, 1]) if use_lengths else None
        G = rng.standard_normal((T, B, D * P))
        Gs = [rng.standard_normal(s) for s in shapes]

        tx = torch.tensor(x, requires_grad=True)
        ts = [torch.tensor(s, requires_grad=True) for s in states]
        layers, finals = [], []
        inp = tx
        for layer in range(L):
            layer_params = {k.replace(f"_l{layer}", "_l0"): v for k, v in params.items() if f"_l{layer}" in k}
            m = _torch_module(torch, kind, layer_params, inp.shape[2], H, 1, bidirectional, True, proj)
            layers.append(m)
            if layer > 0:
                inp = inp * torch.from_numpy(masks[layer - 1])
            hx = [s[layer * D:(layer + 1) * D] for s in ts]
            seq = inp if lengths is None else pack_padded_sequence(inp, torch.from_numpy(lengths),
                                                                   enforce_sorted=False)
            out, fin = m(seq, tuple(hx) if kind == "lstm" else hx[0])
            if lengths is not None:
                out, _ = pad_packed_sequence(out, total_length=T)
            finals.append(fin if kind == "lstm" else (fin,))
            inp = out
        t_states = [torch.cat([f[i] for f in finals]) for i in range(len(shapes))]
        loss = (inp * torch.from_numpy(G)).sum()
        for s, g in zip(t_states, Gs):
            loss = loss + (s * torch.from_numpy(g)).sum()
        loss.backward()

        kw = dict(num_layers=L, bidirectional=bidirectional, dropout_masks=masks, lengths=lengths)
        if kind == "lstm":
            kw["proj_size"] = proj
        ours = _run(kind, x, params, tuple(states), G, *(Gs + [None])[:2], **kw)
        module_grads = {}
        for layer, m in enumerate(layers):
            for n, p in m.named_parameters():
                module_grads[n.replace("_l0", f"_l{layer}")] = p.grad
        _compare_with_torch(what, ours, (inp, *t_states), (tx, *ts), module_grads)


CELL_TORCH_GRID = list(itertools.product([False, True], [False, True], [False, True]))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_cells_against_torch(kind):
    torch = pytest.importorskip("torch")
    B, I, H = 3, 3, 4
    for case, (batched, bias, h_given) in enumerate(CELL_TORCH_GRID):
        what = f"{kind} cell batched={batched} bias={bias} h={h_given}"
        rng = np.random.default_rng(3000 + case)
        params = make_cell_params(rng, I, H, 4 if kind == "lstm" else 3, bias)
        x = rng.uniform(-1, 1, (B, I) if batched else (I,))
        shape = (B, H) if batched else (H,)
        states = [rng.uniform(-1, 1, shape) if h_given else np.zeros(shape) for _ in range(2 if kind == "lstm" else 1)]
        Gs = [rng.standard_normal(shape) for _ in states]

        cls = torch.nn.LSTMCell if kind == "lstm" else torch.nn.GRUCell
        cell = cls(I, H, bias=bias, dtype=torch.float64)
        cell.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
        tx = torch.tensor(x, requires_grad=True)
        ts = [torch.tensor(s, requires_grad=True) for s in states]
        t_new = cell(tx, tuple(ts)) if kind == "lstm" else (cell(tx, ts[0]),)
        sum((t * torch.from_numpy(g)).sum() for t, g in zip(t_new, Gs)).backward()

        if kind == "lstm":
            new, cache = ref.lstm_cell_forward(x, tuple(states) if h_given else None, params)
            gx, g_states, grads = ref.lstm_cell_backward(cache, *Gs)
        else:
            h_new, cache = ref.gru_cell_forward(x, states[0] if h_given else None, params)
            new = (h_new,)
            gx, g_h, grads = ref.gru_cell_backward(cache, Gs[0])
            g_states = (g_h,)
        for a, t, n in zip(new, t_new, ("h_new", "c_new")):
            assert_close(a, t.detach().numpy(), TORCH_TOL, TORCH_TOL, what + " " + n)
        assert_close(gx, tx.grad.numpy(), TORCH_TOL, TORCH_TOL, what + " grad_x")
        for a, t, n in zip(g_states, ts, ("grad_h", "grad_c")):
            assert_close(a, t.grad.numpy(), TORCH_TOL, TORCH_TOL, what + " " + n)
        assert list(grads) == [n for n, _ in cell.named_parameters()]
        for name, p in cell.named_parameters():
            assert_close(grads[name], p.grad.numpy(), TORCH_TOL, TORCH_TOL, what + " " + name)


# ---------------------------------------------------------------------------
# A short training run against torch.optim.SGD
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_sgd_training_matches_torch(kind):
    torch = pytest.importorskip("torch")
    T, B, I, H, L = 6, 4, 3, 5, 2
    proj = 3 if kind == "lstm" else 0
    P = proj or H
    steps, lr = 50, 0.5
    rng = np.random.default_rng(7000)
    params = _make_case(kind, rng, I, H, L, True, True, proj)
    x = rng.uniform(-1, 1, (B, T, I))
    target = rng.uniform(-1, 1, (B, T, 2 * P))

    m = _torch_module(torch, kind, params, I, H, L, True, True, proj, batch_first=True)
    opt = torch.optim.SGD(m.parameters(), lr=lr)
    tx, t_target = torch.from_numpy(x), torch.from_numpy(target)
    kw = dict(num_layers=L, bidirectional=True, batch_first=True)
    if kind == "lstm":
        kw["proj_size"] = proj

    ours = {k: v.copy() for k, v in params.items()}
    losses, t_losses = [], []
    for _ in range(steps):
        opt.zero_grad()
        t_loss = torch.nn.functional.mse_loss(m(tx)[0], t_target)
        t_loss.backward()
        opt.step()
        t_losses.append(t_loss.item())

        if kind == "lstm":
            out, _, cache = ref.lstm_forward(x, ours, **kw)
            grads = ref.lstm_backward(cache, 2 * (out - target) / out.size)[2]
        else:
            out, _, cache = ref.gru_forward(x, ours, **kw)
            grads = ref.gru_backward(cache, 2 * (out - target) / out.size)[2]
        losses.append(np.mean((out - target) ** 2))
        for name in ours:
            ours[name] = ours[name] - lr * grads[name]      # p <- p - lr * dL/dp

    assert losses[-1] < 0.75 * losses[0]                     # it did learn something
    assert_close(losses, t_losses, 1e-10, 1e-12, "loss trajectory")
    assert max(np.abs(ours[k] - params[k]).max() for k in params) > 0.1   # the weights did move
    for name, p in m.named_parameters():
        assert_close(ours[name], p.detach().numpy(), 1e-9, 1e-10, name)
