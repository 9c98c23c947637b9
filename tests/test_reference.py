"""Tests of the pure-NumPy reference (rnnfast.reference) on its own.

The reference is the oracle for the rest of the suite, so it is checked here
against things that do not come from it: centered finite differences,
structural invariants, a case worked out by hand, and (when installed)
PyTorch's nn.RNN / nn.RNNCell.
"""

import itertools
import math

import numpy as np
import pytest

from rnnfast import reference as ref

EPS = 1e-6            # finite-difference step (float64)
FD_RTOL = 1e-5
FD_ATOL = 1e-7
KINK_TOL = 1e-8       # |f(+e) + f(-e) - 2 f(0)|: ~e^2 f'' when smooth, ~e * |slope jump| at a relu kink


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

def make_params(rng, input_size, hidden_size, num_layers=1, bidirectional=False, bias=True,
                dtype=np.float64, scale=1.0):
    shapes = ref.param_shapes(input_size, hidden_size, num_layers, bidirectional, bias)
    return {name: rng.uniform(-scale, scale, size=shape).astype(dtype) for name, shape in shapes.items()}


def make_cell_params(rng, input_size, hidden_size, bias=True, dtype=np.float64):
    p = {
        "weight_ih": rng.uniform(-1, 1, (hidden_size, input_size)).astype(dtype),
        "weight_hh": rng.uniform(-1, 1, (hidden_size, hidden_size)).astype(dtype),
    }
    if bias:
        p["bias_ih"] = rng.uniform(-1, 1, hidden_size).astype(dtype)
        p["bias_hh"] = rng.uniform(-1, 1, hidden_size).astype(dtype)
    return p


def make_masks(rng, num_layers, T, B, width, p=0.4):
    """Random inverted-dropout masks: 0 with probability p, else 1/(1-p)."""
    keep = rng.uniform(size=(num_layers - 1, T, B, width)) >= p
    return keep / (1 - p)


class Kink(Exception):
    """A finite-difference probe straddled a relu kink; draw other data."""


def finite_difference(loss, arrays):
    """Centered differences of loss() w.r.t. every element of every array.

    arrays: dict name -> float64 array that loss() reads (perturbed in place).
    Raises Kink when the loss is visibly not smooth at a probe.
    """
    f0 = loss()
    result = {}
    for name, arr in arrays.items():
        grad = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            orig = arr[idx]
            arr[idx] = orig + EPS
            f_plus = loss()
            arr[idx] = orig - EPS
            f_minus = loss()
            arr[idx] = orig
            if abs(f_plus + f_minus - 2 * f0) > KINK_TOL:
                raise Kink(name)
            grad[idx] = (f_plus - f_minus) / (2 * EPS)
        result[name] = grad
    return result


def assert_close(actual, expected, rtol=1e-12, atol=1e-12, what=""):
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def x_shape(layout, T, B, I):
    return {"time_major": (T, B, I), "batch_first": (B, T, I), "unbatched": (T, I)}[layout]


def h_shape(layout, LD, B, H):
    return (LD, H) if layout == "unbatched" else (LD, B, H)


# ---------------------------------------------------------------------------
# Parameter layout
# ---------------------------------------------------------------------------

def test_param_names_order():
    assert ref.param_names() == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    assert ref.param_names(1, bias=False) == ["weight_ih_l0", "weight_hh_l0"]
    assert ref.param_names(2, bidirectional=True, bias=False) == [
        "weight_ih_l0", "weight_hh_l0",
        "weight_ih_l0_reverse", "weight_hh_l0_reverse",
        "weight_ih_l1", "weight_hh_l1",
        "weight_ih_l1_reverse", "weight_hh_l1_reverse",
    ]
    names = ref.param_names(3, bidirectional=True, bias=True)
    assert len(names) == 3 * 2 * 4
    assert names[4:8] == ["weight_ih_l0_reverse", "weight_hh_l0_reverse",
                          "bias_ih_l0_reverse", "bias_hh_l0_reverse"]


@pytest.mark.parametrize("num_layers,bidirectional,bias",
                         list(itertools.product([1, 2, 3], [False, True], [False, True])))
def test_param_shapes(num_layers, bidirectional, bias):
    I, H = 5, 7
    D = 2 if bidirectional else 1
    shapes = ref.param_shapes(I, H, num_layers, bidirectional, bias)
    assert list(shapes) == ref.param_names(num_layers, bidirectional, bias)
    for name, shape in shapes.items():
        if name.startswith("weight_ih_l0"):
            assert shape == (H, I)
        elif name.startswith("weight_ih"):
            assert shape == (H, D * H)
        elif name.startswith("weight_hh"):
            assert shape == (H, H)
        else:
            assert shape == (H,)


# ---------------------------------------------------------------------------
# Finite differences: full RNN
# ---------------------------------------------------------------------------

def _fd_check_rnn(seed, *, num_layers, bidirectional, bias, nonlinearity, layout,
                  h0_given, use_masks, grad_output=True, grad_h_n=True):
    T, B, I, H = 3, 2, 3, 3
    D = 2 if bidirectional else 1
    batch_first = layout == "batch_first"
    for attempt in range(20):
        rng = np.random.default_rng(1000 * seed + attempt)
        params = make_params(rng, I, H, num_layers, bidirectional, bias)
        x = rng.uniform(-1, 1, x_shape(layout, T, B, I))
        h0 = rng.uniform(-1, 1, h_shape(layout, num_layers * D, B, H))
        if not h0_given:
            h0[...] = 0.0
        masks = None
        if use_masks and num_layers > 1:
            masks = make_masks(rng, num_layers, T, 1 if layout == "unbatched" else B, D * H)
        out_shape = x_shape(layout, T, B, D * H)
        G = rng.standard_normal(out_shape) if grad_output else None
        Gh = rng.standard_normal(h0.shape) if grad_h_n else None
        kwargs = dict(num_layers=num_layers, nonlinearity=nonlinearity, bias=bias,
                      batch_first=batch_first, bidirectional=bidirectional, dropout_masks=masks)

        # The loss always passes h0 (zeros when "not given") so that its
        # derivative exists; the analytic run below passes None in that case.
        def loss():
            out, hn, _ = ref.rnn_forward(x, params, h0=h0, **kwargs)
            total = 0.0
            if G is not None:
                total += np.sum(out * G)
            if Gh is not None:
                total += np.sum(hn * Gh)
            return total

        out, hn, cache = ref.rnn_forward(x, params, h0=h0 if h0_given else None, **kwargs)
        if nonlinearity == "relu" and not ((out == 0).any() and (out > 0).any()):
            continue  # want both active and inactive units in view
        wrt = {"x": x, "h0": h0, **params}
        try:
            numeric = finite_difference(loss, wrt)
        except Kink:
            continue
        if np.abs(numeric["x"]).max() < 1e-3:
            continue  # e.g. every relu unit off: the check would be vacuous
        break
    else:
        pytest.fail("could not draw smooth data")

    assert out.shape == out_shape
    assert hn.shape == h0.shape
    grad_x, grad_h0, grads = ref.rnn_backward(cache, G, Gh)
    assert list(grads) == ref.param_names(num_layers, bidirectional, bias)
    assert_close(grad_x, numeric["x"], FD_RTOL, FD_ATOL, "x")
    assert_close(grad_h0, numeric["h0"], FD_RTOL, FD_ATOL, "h0")
    for name in params:
        assert_close(grads[name], numeric[name], FD_RTOL, FD_ATOL, name)
        assert grads[name].shape == params[name].shape


# Every combination of the options; dropout masks only exist between layers.
RNN_GRID = [case for case in itertools.product(
    [1, 2, 3], [False, True], [False, True], ["tanh", "relu"],
    ["time_major", "batch_first", "unbatched"], [False, True], [False, True])
    if case[0] > 1 or not case[6]]


@pytest.mark.parametrize("num_layers,bidirectional,bias,nonlinearity,layout,h0_given,use_masks", RNN_GRID)
def test_rnn_finite_differences(num_layers, bidirectional, bias, nonlinearity, layout, h0_given, use_masks):
    _fd_check_rnn(RNN_GRID.index((num_layers, bidirectional, bias, nonlinearity, layout, h0_given, use_masks)),
                  num_layers=num_layers, bidirectional=bidirectional, bias=bias,
                  nonlinearity=nonlinearity, layout=layout, h0_given=h0_given, use_masks=use_masks)


@pytest.mark.parametrize("which", ["output_only", "h_n_only"])
@pytest.mark.parametrize("layout", ["time_major", "batch_first", "unbatched"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_finite_differences_one_grad_path(which, layout, nonlinearity):
    _fd_check_rnn(7, num_layers=2, bidirectional=True, bias=True, nonlinearity=nonlinearity,
                  layout=layout, h0_given=True, use_masks=True,
                  grad_output=which == "output_only", grad_h_n=which == "h_n_only")


# ---------------------------------------------------------------------------
# Finite differences: cell
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("batched,bias,h_given,nonlinearity",
                         list(itertools.product([False, True], [False, True], [False, True], ["tanh", "relu"])))
def test_cell_finite_differences(batched, bias, h_given, nonlinearity):
    B, I, H = 3, 3, 3
    for attempt in range(20):
        rng = np.random.default_rng(500 + attempt)
        params = make_cell_params(rng, I, H, bias)
        x = rng.uniform(-1, 1, (B, I) if batched else (I,))
        h = rng.uniform(-1, 1, (B, H) if batched else (H,))
        if not h_given:
            h[...] = 0.0
        G = rng.standard_normal((B, H) if batched else (H,))

        def loss():
            return np.sum(ref.cell_forward(x, h, params, nonlinearity)[0] * G)

        h_new, cache = ref.cell_forward(x, h if h_given else None, params, nonlinearity)
        if nonlinearity == "relu" and not ((h_new == 0).any() and (h_new > 0).any()):
            continue
        try:
            numeric = finite_difference(loss, {"x": x, "h": h, **params})
        except Kink:
            continue
        break
    else:
        pytest.fail("could not draw smooth data")

    assert h_new.shape == G.shape
    grad_x, grad_h, grads = ref.cell_backward(cache, G)
    assert set(grads) == set(params)
    assert_close(grad_x, numeric["x"], FD_RTOL, FD_ATOL, "x")
    assert_close(grad_h, numeric["h"], FD_RTOL, FD_ATOL, "h")
    for name in params:
        assert_close(grads[name], numeric[name], FD_RTOL, FD_ATOL, name)


# ---------------------------------------------------------------------------
# Invariants
# ---------------------------------------------------------------------------

def _cell_params_of(params, layer=0, sfx=""):
    return {kind: params[f"{kind}_l{layer}{sfx}"]
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            if f"{kind}_l{layer}{sfx}" in params}


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_sequence_equals_cell_loop(bias, nonlinearity):
    rng = np.random.default_rng(1)
    T, B, I, H = 4, 3, 2, 3
    params = make_params(rng, I, H, bias=bias)
    cp = _cell_params_of(params)
    x = rng.uniform(-1, 1, (T, B, I))
    h0 = rng.uniform(-1, 1, (1, B, H))
    G = rng.standard_normal((T, B, H))
    Gh = rng.standard_normal((1, B, H))

    out, hn, cache = ref.rnn_forward(x, params, nonlinearity=nonlinearity, bias=bias, h0=h0)
    h = h0[0]
    cell_caches = []
    for t in range(T):
        h, c = ref.cell_forward(x[t], h, cp, nonlinearity)
        cell_caches.append(c)
        assert_close(out[t], h, what=f"output[{t}]")
    assert_close(hn[0], h, what="h_n")

    # Backward: chain the cells by hand, last step first.
    grad_x, grad_h0, grads = ref.rnn_backward(cache, G, Gh)
    dh = Gh[0]
    acc = {k: np.zeros_like(v) for k, v in cp.items()}
    for t in reversed(range(T)):
        gx, dh, g = ref.cell_backward(cell_caches[t], G[t] + dh)
        assert_close(grad_x[t], gx, what=f"grad_x[{t}]")
        for k in acc:
            acc[k] += g[k]
    assert_close(grad_h0[0], dh, what="grad_h0")
    for k in acc:
        assert_close(grads[f"{k}_l0"], acc[k], what=k)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_reverse_direction_equals_flipped_forward(nonlinearity):
    rng = np.random.default_rng(2)
    T, B, I, H = 4, 2, 3, 3
    params = make_params(rng, I, H, bidirectional=True)
    fwd = {k: v for k, v in params.items() if not k.endswith("_reverse")}
    rev = {k[:-len("_reverse")]: v for k, v in params.items() if k.endswith("_reverse")}
    x = rng.uniform(-1, 1, (T, B, I))
    h0 = rng.uniform(-1, 1, (2, B, H))
    G = rng.standard_normal((T, B, 2 * H))
    Gh = rng.standard_normal((2, B, H))

    out, hn, cache = ref.rnn_forward(x, params, nonlinearity=nonlinearity, bidirectional=True, h0=h0)
    out_f, hn_f, cache_f = ref.rnn_forward(x, fwd, nonlinearity=nonlinearity, h0=h0[:1])
    out_r, hn_r, cache_r = ref.rnn_forward(x[::-1], rev, nonlinearity=nonlinearity, h0=h0[1:])
    assert_close(out[:, :, :H], out_f, what="forward columns")
    assert_close(out[:, :, H:], out_r[::-1], what="reverse columns")
    assert_close(hn[0], hn_f[0], what="h_n fwd")
    assert_close(hn[1], hn_r[0], what="h_n rev")
    # The reverse direction's final state is its output at t = 0.
    assert_close(hn[1], out[0, :, H:], what="h_n rev is output[0]")

    grad_x, grad_h0, grads = ref.rnn_backward(cache, G, Gh)
    gx_f, gh0_f, g_f = ref.rnn_backward(cache_f, G[:, :, :H], Gh[:1])
    gx_r, gh0_r, g_r = ref.rnn_backward(cache_r, G[::-1, :, H:], Gh[1:])
    assert_close(grad_x, gx_f + gx_r[::-1], what="grad_x")
    assert_close(grad_h0, np.concatenate([gh0_f, gh0_r]), what="grad_h0")
    for k in fwd:
        assert_close(grads[k], g_f[k], what=k)
    for k in rev:
        assert_close(grads[k + "_reverse"], g_r[k], what=k + "_reverse")


@pytest.mark.parametrize("bidirectional", [False, True])
def test_stacking_equals_composed_layers(bidirectional):
    rng = np.random.default_rng(3)
    T, B, I, H = 3, 2, 3, 2
    D = 2 if bidirectional else 1
    params = make_params(rng, I, H, 2, bidirectional)
    p0 = {k: v for k, v in params.items() if "_l0" in k}
    p1 = {k.replace("_l1", "_l0"): v for k, v in params.items() if "_l1" in k}
    x = rng.uniform(-1, 1, (T, B, I))
    h0 = rng.uniform(-1, 1, (2 * D, B, H))
    masks = make_masks(rng, 2, T, B, D * H)
    G = rng.standard_normal((T, B, D * H))
    Gh = rng.standard_normal((2 * D, B, H))

    out, hn, cache = ref.rnn_forward(x, params, num_layers=2, bidirectional=bidirectional,
                                     h0=h0, dropout_masks=masks)
    mid, hn0, cache0 = ref.rnn_forward(x, p0, bidirectional=bidirectional, h0=h0[:D])
    top, hn1, cache1 = ref.rnn_forward(mid * masks[0], p1, bidirectional=bidirectional, h0=h0[D:])
    assert_close(out, top, what="output")
    assert_close(hn, np.concatenate([hn0, hn1]), what="h_n")

    grad_x, grad_h0, grads = ref.rnn_backward(cache, G, Gh)
    g_mid, gh0_1, g1 = ref.rnn_backward(cache1, G, Gh[D:])
    gx, gh0_0, g0 = ref.rnn_backward(cache0, g_mid * masks[0], Gh[:D])
    assert_close(grad_x, gx, what="grad_x")
    assert_close(grad_h0, np.concatenate([gh0_0, gh0_1]), what="grad_h0")
    for k in p0:
        assert_close(grads[k], g0[k], what=k)
    for k in p1:
        assert_close(grads[k.replace("_l0", "_l1")], g1[k], what=k)


def test_zero_dropout_mask_cuts_the_input_off():
    rng = np.random.default_rng(4)
    T, B, I, H = 3, 2, 2, 3
    params = make_params(rng, I, H, 2, True)
    masks = np.zeros((1, T, B, 2 * H))
    x1 = rng.uniform(-1, 1, (T, B, I))
    x2 = rng.uniform(-1, 1, (T, B, I))
    out1, hn1, cache = ref.rnn_forward(x1, params, num_layers=2, bidirectional=True, dropout_masks=masks)
    out2, hn2, _ = ref.rnn_forward(x2, params, num_layers=2, bidirectional=True, dropout_masks=masks)
    assert_close(out1, out2)
    assert_close(hn1[2:], hn2[2:])
    assert not np.allclose(hn1[:2], hn2[:2])   # layer 0 did see different inputs
    grad_x, _, grads = ref.rnn_backward(cache, rng.standard_normal(out1.shape))
    assert np.all(grad_x == 0)
    assert np.all(grads["weight_ih_l0"] == 0)
    assert np.all(grads["weight_ih_l1"] == 0)
    # Dropout masks are ignored for a single layer (there is no layer boundary).
    p1 = make_params(rng, I, H, 1)
    a = ref.rnn_forward(x1, p1)[0]
    b = ref.rnn_forward(x1, p1, dropout_masks=np.zeros((0, T, B, H)))[0]
    assert_close(a, b)


@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)])
def test_batch_first_equals_transposed(num_layers, bidirectional):
    rng = np.random.default_rng(5)
    T, B, I, H = 4, 3, 2, 3
    D = 2 if bidirectional else 1
    params = make_params(rng, I, H, num_layers, bidirectional)
    x = rng.uniform(-1, 1, (T, B, I))
    h0 = rng.uniform(-1, 1, (num_layers * D, B, H))
    masks = make_masks(rng, num_layers, T, B, D * H)   # masks stay time-major either way
    G = rng.standard_normal((T, B, D * H))
    Gh = rng.standard_normal(h0.shape)
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, h0=h0, dropout_masks=masks)

    out_t, hn_t, c_t = ref.rnn_forward(x, params, **kw)
    out_b, hn_b, c_b = ref.rnn_forward(x.transpose(1, 0, 2), params, batch_first=True, **kw)
    assert_close(out_b, out_t.transpose(1, 0, 2))
    assert_close(hn_b, hn_t)
    gx_t, gh_t, g_t = ref.rnn_backward(c_t, G, Gh)
    gx_b, gh_b, g_b = ref.rnn_backward(c_b, G.transpose(1, 0, 2), Gh)
    assert_close(gx_b, gx_t.transpose(1, 0, 2))
    assert_close(gh_b, gh_t)
    for k in params:
        assert_close(g_b[k], g_t[k], what=k)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("h0_given", [False, True])
def test_unbatched_equals_batch_of_one(batch_first, h0_given):
    rng = np.random.default_rng(6)
    T, I, H, L = 3, 2, 3, 2
    params = make_params(rng, I, H, L, True)
    x = rng.uniform(-1, 1, (T, I))
    h0 = rng.uniform(-1, 1, (2 * L, H)) if h0_given else None
    masks = make_masks(rng, L, T, 1, 2 * H)
    G = rng.standard_normal((T, 2 * H))
    Gh = rng.standard_normal((2 * L, H))
    kw = dict(num_layers=L, bidirectional=True, dropout_masks=masks)

    # batch_first does not apply to unbatched input.
    out_u, hn_u, c_u = ref.rnn_forward(x, params, batch_first=batch_first, h0=h0, **kw)
    out_1, hn_1, c_1 = ref.rnn_forward(x[:, None, :], params, h0=None if h0 is None else h0[:, None, :], **kw)
    assert_close(out_u, out_1[:, 0, :])
    assert_close(hn_u, hn_1[:, 0, :])
    gx_u, gh_u, g_u = ref.rnn_backward(c_u, G, Gh)
    gx_1, gh_1, g_1 = ref.rnn_backward(c_1, G[:, None, :], Gh[:, None, :])
    assert_close(gx_u, gx_1[:, 0, :])
    assert gh_u.shape == (2 * L, H)
    assert_close(gh_u, gh_1[:, 0, :])
    for k in params:
        assert_close(g_u[k], g_1[k], what=k)


def test_cell_unbatched_equals_batch_of_one():
    rng = np.random.default_rng(7)
    params = make_cell_params(rng, 3, 2)
    x = rng.uniform(-1, 1, 3)
    h = rng.uniform(-1, 1, 2)
    g = rng.standard_normal(2)
    hu, cu = ref.cell_forward(x, h, params)
    hb, cb = ref.cell_forward(x[None], h[None], params)
    assert hu.shape == (2,)
    assert_close(hu, hb[0])
    gxu, ghu, gu = ref.cell_backward(cu, g)
    gxb, ghb, gb = ref.cell_backward(cb, g[None])
    assert_close(gxu, gxb[0])
    assert_close(ghu, ghb[0])
    for k in params:
        assert_close(gu[k], gb[k], what=k)


def test_h0_none_equals_zeros():
    rng = np.random.default_rng(8)
    T, B, I, H, L = 3, 2, 2, 3, 2
    params = make_params(rng, I, H, L, True)
    x = rng.uniform(-1, 1, (T, B, I))
    G = rng.standard_normal((T, B, 2 * H))
    Gh = rng.standard_normal((2 * L, B, H))
    out_n, hn_n, c_n = ref.rnn_forward(x, params, num_layers=L, bidirectional=True)
    out_z, hn_z, c_z = ref.rnn_forward(x, params, num_layers=L, bidirectional=True, h0=np.zeros((2 * L, B, H)))
    assert_close(out_n, out_z)
    assert_close(hn_n, hn_z)
    gx_n, gh_n, g_n = ref.rnn_backward(c_n, G, Gh)
    gx_z, gh_z, g_z = ref.rnn_backward(c_z, G, Gh)
    assert gh_n.shape == (2 * L, B, H)
    assert_close(gx_n, gx_z)
    assert_close(gh_n, gh_z)
    assert np.abs(gh_n).max() > 1e-3
    for k in params:
        assert_close(g_n[k], g_z[k], what=k)

    cp = make_cell_params(rng, I, H)
    hc_n, cc_n = ref.cell_forward(x[0], None, cp)
    hc_z, cc_z = ref.cell_forward(x[0], np.zeros((B, H)), cp)
    assert_close(hc_n, hc_z)
    _, gh_cn, _ = ref.cell_backward(cc_n, G[0, :, :H])
    _, gh_cz, _ = ref.cell_backward(cc_z, G[0, :, :H])
    assert gh_cn.shape == (B, H)
    assert_close(gh_cn, gh_cz)


def test_missing_grad_counts_as_zero():
    rng = np.random.default_rng(9)
    T, B, I, H = 3, 2, 2, 2
    params = make_params(rng, I, H, 2, True)
    x = rng.uniform(-1, 1, (T, B, I))
    out, hn, cache = ref.rnn_forward(x, params, num_layers=2, bidirectional=True)
    G = rng.standard_normal(out.shape)
    Gh = rng.standard_normal(hn.shape)
    for a, b in [((G, None), (G, np.zeros_like(hn))), ((None, Gh), (np.zeros_like(out), Gh))]:
        ra = ref.rnn_backward(cache, *a)
        rb = ref.rnn_backward(cache, *b)
        assert_close(ra[0], rb[0])
        assert_close(ra[1], rb[1])
        for k in params:
            assert_close(ra[2][k], rb[2][k], what=k)
    # The two paths add up (the backward pass is linear in the incoming gradients).
    both = ref.rnn_backward(cache, G, Gh)
    only_out = ref.rnn_backward(cache, G)
    only_hn = ref.rnn_backward(cache, grad_h_n=Gh)
    assert_close(both[0], only_out[0] + only_hn[0])
    for k in params:
        assert_close(both[2][k], only_out[2][k] + only_hn[2][k], what=k)


def test_float32_in_float32_out():
    rng = np.random.default_rng(10)
    T, B, I, H = 3, 2, 3, 4
    p64 = make_params(rng, I, H, 2, True)
    p32 = {k: v.astype(np.float32) for k, v in p64.items()}
    x = rng.uniform(-1, 1, (T, B, I))
    out32, hn32, c32 = ref.rnn_forward(x.astype(np.float32), p32, num_layers=2, bidirectional=True)
    out64, hn64, c64 = ref.rnn_forward(x, p64, num_layers=2, bidirectional=True)
    assert out32.dtype == np.float32 and hn32.dtype == np.float32
    assert_close(out32, out64, rtol=1e-5, atol=1e-5)
    G = rng.standard_normal(out64.shape)
    gx32, gh32, g32 = ref.rnn_backward(c32, G.astype(np.float32))
    gx64, gh64, g64 = ref.rnn_backward(c64, G)
    assert gx32.dtype == np.float32 and gh32.dtype == np.float32
    assert_close(gx32, gx64, rtol=1e-4, atol=1e-5)
    for k in p64:
        assert g32[k].dtype == np.float32
        assert_close(g32[k], g64[k], rtol=1e-4, atol=1e-5, what=k)

    cp32 = {k: v.astype(np.float32) for k, v in make_cell_params(rng, I, H).items()}
    hc, cc = ref.cell_forward(x[0].astype(np.float32), None, cp32)
    assert hc.dtype == np.float32
    gx, gh, g = ref.cell_backward(cc, np.ones_like(hc))
    assert gx.dtype == np.float32 and gh.dtype == np.float32
    assert all(v.dtype == np.float32 for v in g.values())


# ---------------------------------------------------------------------------
# A case worked out by hand
# ---------------------------------------------------------------------------

def test_hand_computed_tanh_two_steps():
    # One unit, one input, one batch element, T = 2.
    w, u, b, c = 0.5, -0.8, 0.1, 0.2       # W_ih, W_hh, b_ih, b_hh
    x1, x2, h0 = 0.3, -1.2, 0.4
    params = {"weight_ih_l0": np.array([[w]]), "weight_hh_l0": np.array([[u]]),
              "bias_ih_l0": np.array([b]), "bias_hh_l0": np.array([c])}
    x = np.array([[[x1]], [[x2]]])

    h1 = math.tanh(w * x1 + b + u * h0 + c)
    h2 = math.tanh(w * x2 + b + u * h1 + c)
    out, hn, cache = ref.rnn_forward(x, params, h0=np.array([[[h0]]]))
    assert_close(out, [[[h1]], [[h2]]])
    assert_close(hn, [[[h2]]])

    # Loss = h2 (only through h_n). Chain rule by hand:
    da2 = 1 - h2 ** 2
    da1 = da2 * u * (1 - h1 ** 2)
    expected = {
        "weight_ih_l0": [[da2 * x2 + da1 * x1]],
        "weight_hh_l0": [[da2 * h1 + da1 * h0]],
        "bias_ih_l0": [da2 + da1],
        "bias_hh_l0": [da2 + da1],
    }
    grad_x, grad_h0, grads = ref.rnn_backward(cache, grad_h_n=np.ones((1, 1, 1)))
    assert_close(grad_x, [[[da1 * w]], [[da2 * w]]])
    assert_close(grad_h0, [[[da1 * u]]])
    for k, v in expected.items():
        assert_close(grads[k], v, what=k)


def test_hand_computed_relu_bidirectional_one_step():
    # T = 1, I = 2, H = 2, unbatched. With one step both directions see the same x.
    W = np.array([[1.0, -2.0], [0.5, 0.25]])
    Wr = np.array([[-1.0, 1.0], [2.0, 0.0]])
    U = np.eye(2)
    params = {"weight_ih_l0": W, "weight_hh_l0": U,
              "weight_ih_l0_reverse": Wr, "weight_hh_l0_reverse": U}
    x = np.array([[1.0, 1.0]])
    # forward: [1 - 2, 0.5 + 0.25] = [-1, 0.75] -> relu [0, 0.75]
    # reverse: [-1 + 1, 2 + 0] = [0, 2] (h0 = 0) -> relu [0, 2]
    out, hn, cache = ref.rnn_forward(x, params, nonlinearity="relu", bias=False, bidirectional=True)
    assert_close(out, [[0.0, 0.75, 0.0, 2.0]])
    assert_close(hn, [[0.0, 0.75], [0.0, 2.0]])
    # Loss = sum(output): only active units pass gradient back.
    grad_x, grad_h0, grads = ref.rnn_backward(cache, np.ones((1, 4)))
    # d/dx = row 1 of W (forward unit 1 on) + row 1 of Wr (reverse unit 1 on; unit 0 sits at 0 -> off)
    assert_close(grad_x, [[0.5 + 2.0, 0.25 + 0.0]])
    assert_close(grad_h0, [[0.0, 1.0], [0.0, 1.0]])
    assert_close(grads["weight_ih_l0"], [[0, 0], [1, 1]])
    assert_close(grads["weight_hh_l0"], np.zeros((2, 2)))   # h0 = 0


def test_hand_computed_cell():
    params = {"weight_ih": np.array([[2.0]]), "weight_hh": np.array([[-1.0]]),
              "bias_ih": np.array([0.5]), "bias_hh": np.array([-0.25])}
    h_new, cache = ref.cell_forward(np.array([0.5]), np.array([0.75]), params)
    a = 2.0 * 0.5 - 0.75 + 0.5 - 0.25
    assert_close(h_new, [math.tanh(a)])
    gx, gh, g = ref.cell_backward(cache, np.array([3.0]))
    da = 3.0 * (1 - math.tanh(a) ** 2)
    assert_close(gx, [2.0 * da])
    assert_close(gh, [-1.0 * da])
    assert_close(g["weight_ih"], [[0.5 * da]])
    assert_close(g["weight_hh"], [[0.75 * da]])
    assert_close(g["bias_ih"], [da])
    assert_close(g["bias_hh"], [da])


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

def test_bad_nonlinearity():
    rng = np.random.default_rng(12)
    params = make_params(rng, 2, 2)
    with pytest.raises(ValueError):
        ref.rnn_forward(np.zeros((2, 1, 2)), params, nonlinearity="sigmoid")
    with pytest.raises(ValueError):
        ref.cell_forward(np.zeros((1, 2)), None, make_cell_params(rng, 2, 2), nonlinearity="gelu")


def test_backward_needs_a_gradient():
    rng = np.random.default_rng(13)
    _, _, cache = ref.rnn_forward(np.zeros((2, 1, 2)), make_params(rng, 2, 2))
    with pytest.raises(ValueError):
        ref.rnn_backward(cache)
    with pytest.raises(ValueError):
        ref.rnn_backward(cache, None, None)


def test_bad_shapes():
    rng = np.random.default_rng(14)
    params = make_params(rng, 2, 3, 2)
    with pytest.raises(ValueError):       # wrong input size
        ref.rnn_forward(np.zeros((2, 1, 3)), params, num_layers=2)
    with pytest.raises(ValueError):       # h0 for one layer only
        ref.rnn_forward(np.zeros((2, 1, 2)), params, num_layers=2, h0=np.zeros((1, 1, 3)))
    with pytest.raises(ValueError):       # masks of the wrong width
        ref.rnn_forward(np.zeros((2, 1, 2)), params, num_layers=2, dropout_masks=np.ones((1, 2, 1, 6)))
    with pytest.raises(KeyError):         # bias expected but absent
        ref.rnn_forward(np.zeros((2, 1, 2)), make_params(rng, 2, 3, bias=False))


# ---------------------------------------------------------------------------
# PyTorch as an outside oracle (only when torch is installed)
# ---------------------------------------------------------------------------

TORCH_GRID = list(itertools.product([1, 2, 3], [False, True], [False, True], ["tanh", "relu"],
                                    ["time_major", "batch_first", "unbatched"], [False, True]))


def test_against_torch_rnn():
    torch = pytest.importorskip("torch")
    T, B, I, H = 4, 3, 3, 3
    for case, (L, bidirectional, bias, nonlinearity, layout, h0_given) in enumerate(TORCH_GRID):
        what = f"L={L} bidir={bidirectional} bias={bias} {nonlinearity} {layout} h0={h0_given}"
        D = 2 if bidirectional else 1
        rng = np.random.default_rng(2000 + case)
        params = make_params(rng, I, H, L, bidirectional, bias)
        x = rng.uniform(-1, 1, x_shape(layout, T, B, I))
        h0 = rng.uniform(-1, 1, h_shape(layout, L * D, B, H)) if h0_given else np.zeros(h_shape(layout, L * D, B, H))
        G = rng.standard_normal(x_shape(layout, T, B, D * H))
        Gh = rng.standard_normal(h0.shape)
        batch_first = layout == "batch_first"

        rnn = torch.nn.RNN(I, H, num_layers=L, nonlinearity=nonlinearity, bias=bias,
                           batch_first=batch_first, bidirectional=bidirectional, dtype=torch.float64)
        with torch.no_grad():
            for name in ref.param_names(L, bidirectional, bias):
                getattr(rnn, name).copy_(torch.from_numpy(params[name]))
        tx = torch.tensor(x, requires_grad=True)
        th0 = torch.tensor(h0, requires_grad=True)
        t_out, t_hn = rnn(tx, th0)
        ((t_out * torch.from_numpy(G)).sum() + (t_hn * torch.from_numpy(Gh)).sum()).backward()

        out, hn, cache = ref.rnn_forward(x, params, num_layers=L, nonlinearity=nonlinearity, bias=bias,
                                         batch_first=batch_first, bidirectional=bidirectional,
                                         h0=h0 if h0_given else None)
        assert_close(out, t_out.detach().numpy(), 1e-10, 1e-10, what + " output")
        assert_close(hn, t_hn.detach().numpy(), 1e-10, 1e-10, what + " h_n")
        grad_x, grad_h0, grads = ref.rnn_backward(cache, G, Gh)
        assert_close(grad_x, tx.grad.numpy(), 1e-10, 1e-10, what + " grad_x")
        assert_close(grad_h0, th0.grad.numpy(), 1e-10, 1e-10, what + " grad_h0")
        for name in grads:
            assert_close(grads[name], getattr(rnn, name).grad.numpy(), 1e-10, 1e-10, what + " " + name)


def test_against_torch_rnn_cell():
    torch = pytest.importorskip("torch")
    B, I, H = 3, 3, 4
    for case, (batched, bias, h_given, nonlinearity) in enumerate(
            itertools.product([False, True], [False, True], [False, True], ["tanh", "relu"])):
        what = f"batched={batched} bias={bias} h={h_given} {nonlinearity}"
        rng = np.random.default_rng(3000 + case)
        params = make_cell_params(rng, I, H, bias)
        x = rng.uniform(-1, 1, (B, I) if batched else (I,))
        h = rng.uniform(-1, 1, (B, H) if batched else (H,)) if h_given else np.zeros((B, H) if batched else (H,))
        G = rng.standard_normal(h.shape)

        cell = torch.nn.RNNCell(I, H, bias=bias, nonlinearity=nonlinearity, dtype=torch.float64)
        with torch.no_grad():
            for name in params:
                getattr(cell, name).copy_(torch.from_numpy(params[name]))
        tx = torch.tensor(x, requires_grad=True)
        th = torch.tensor(h, requires_grad=True)
        t_new = cell(tx, th)
        (t_new * torch.from_numpy(G)).sum().backward()

        h_new, cache = ref.cell_forward(x, h if h_given else None, params, nonlinearity)
        assert_close(h_new, t_new.detach().numpy(), 1e-10, 1e-10, what + " h_new")
        gx, gh, grads = ref.cell_backward(cache, G)
        assert_close(gx, tx.grad.numpy(), 1e-10, 1e-10, what + " grad_x")
        assert_close(gh, th.grad.numpy(), 1e-10, 1e-10, what + " grad_h")
        assert set(grads) == set(params)
        for name in grads:
            assert_close(grads[name], getattr(cell, name).grad.numpy(), 1e-10, 1e-10, what + " " + name)


# ---------------------------------------------------------------------------
# Variable-length batches (lengths)
# ---------------------------------------------------------------------------

LEN_T, LEN_B = 4, 3
LEN_LENGTHS = [2, LEN_T, 1]       # unsorted; a length-1 item and a full-length one


def to_time_major(a, batch_first):
    return a.transpose(1, 0, 2) if batch_first else a


def valid_steps(lengths, T):
    """Boolean [T, B]: True where step t is inside item b's sequence."""
    return np.arange(T)[:, None] < np.asarray(lengths)[None, :]


LEN_FD_GRID = list(itertools.product([1, 2], [False, True], [False, True], ["tanh", "relu"], [False, True]))


@pytest.mark.parametrize("num_layers,bidirectional,batch_first,nonlinearity,h0_given", LEN_FD_GRID)
def test_lengths_finite_differences(num_layers, bidirectional, batch_first, nonlinearity, h0_given):
    T, B, I, H = LEN_T, LEN_B, 2, 2
    D = 2 if bidirectional else 1
    lengths = LEN_LENGTHS
    valid = valid_steps(lengths, T)
    seed = LEN_FD_GRID.index((num_layers, bidirectional, batch_first, nonlinearity, h0_given))
    for attempt in range(20):
        rng = np.random.default_rng(4000 + 100 * seed + attempt)
        params = make_params(rng, I, H, num_layers, bidirectional)
        x = rng.uniform(-1, 1, (B, T, I) if batch_first else (T, B, I))
        h0 = rng.uniform(-1, 1, (num_layers * D, B, H))
        if not h0_given:
            h0[...] = 0.0
        masks = make_masks(rng, num_layers, T, B, D * H) if num_layers > 1 else None
        # Nonzero incoming gradient everywhere, padded steps included (they must be ignored).
        G = rng.standard_normal((B, T, D * H) if batch_first else (T, B, D * H))
        Gh = rng.standard_normal(h0.shape)
        kwargs = dict(num_layers=num_layers, nonlinearity=nonlinearity, batch_first=batch_first,
                      bidirectional=bidirectional, dropout_masks=masks, lengths=lengths)

        def loss():
            out, hn, _ = ref.rnn_forward(x, params, h0=h0, **kwargs)
            return np.sum(out * G) + np.sum(hn * Gh)

        out, hn, cache = ref.rnn_forward(x, params, h0=h0 if h0_given else None, **kwargs)
        out_valid = to_time_major(out, batch_first)[valid]
        if nonlinearity == "relu" and not ((out_valid == 0).any() and (out_valid > 0).any()):
            continue
        try:
            numeric = finite_difference(loss, {"x": x, "h0": h0, **params})
        except Kink:
            continue
        if np.abs(numeric["x"]).max() < 1e-3:
            continue
        break
    else:
        pytest.fail("could not draw smooth data")

    grad_x, grad_h0, grads = ref.rnn_backward(cache, G, Gh)
    assert list(grads) == ref.param_names(num_layers, bidirectional)
    assert_close(grad_x, numeric["x"], FD_RTOL, FD_ATOL, "x")
    assert np.all(to_time_major(grad_x, batch_first)[~valid] == 0), "grad_x at padded steps"
    if nonlinearity == "tanh":   # (relu units that are off legitimately pass no gradient)
        assert np.abs(to_time_major(grad_x, batch_first)[valid]).min() > 0
    assert_close(grad_h0, numeric["h0"], FD_RTOL, FD_ATOL, "h0")
    for name in params:
        assert_close(grads[name], numeric[name], FD_RTOL, FD_ATOL, name)


@pytest.mark.parametrize("layout", ["time_major", "batch_first", "unbatched"])
def test_full_lengths_equal_no_lengths(layout):
    rng = np.random.default_rng(41)
    T, B, I, H, L = 4, 3, 2, 3, 2
    bf = layout == "batch_first"
    params = make_params(rng, I, H, L, True)
    x = rng.uniform(-1, 1, x_shape(layout, T, B, I))
    h0 = rng.uniform(-1, 1, h_shape(layout, 2 * L, B, H))
    masks = make_masks(rng, L, T, 1 if layout == "unbatched" else B, 2 * H)
    G = rng.standard_normal(x_shape(layout, T, B, 2 * H))
    Gh = rng.standard_normal(h0.shape)
    kw = dict(num_layers=L, bidirectional=True, batch_first=bf, h0=h0, dropout_masks=masks)
    full = [T] if layout == "unbatched" else [T] * B

    out_n, hn_n, c_n = ref.rnn_forward(x, params, **kw)
    out_l, hn_l, c_l = ref.rnn_forward(x, params, lengths=full, **kw)
    # Same arithmetic, only the sums over the batch are ordered differently.
    assert_close(out_l, out_n, what="output")
    assert_close(hn_l, hn_n, what="h_n")
    gx_n, gh_n, g_n = ref.rnn_backward(c_n, G, Gh)
    gx_l, gh_l, g_l = ref.rnn_backward(c_l, G, Gh)
    assert_close(gx_l, gx_n, what="grad_x")
    assert_close(gh_l, gh_n, what="grad_h0")
    assert list(g_l) == list(g_n)
    for k in params:
        assert_close(g_l[k], g_n[k], what=k)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_lengths_padding_is_ignored(batch_first, bidirectional):
    rng = np.random.default_rng(42)
    T, B, I, H, L = 5, 4, 2, 3, 2
    D = 2 if bidirectional else 1
    lengths = np.array([3, 5, 1, 2])
    valid = valid_steps(lengths, T)
    params = make_params(rng, I, H, L, bidirectional)
    x = rng.uniform(-1, 1, (T, B, I))
    h0 = rng.uniform(-1, 1, (L * D, B, H))
    masks = make_masks(rng, L, T, B, D * H)
    G = rng.standard_normal((T, B, D * H))
    Gh = rng.standard_normal(h0.shape)
    kw = dict(num_layers=L, bidirectional=bidirectional, batch_first=batch_first, h0=h0, lengths=lengths)

    def run(x, masks, G):
        out, hn, cache = ref.rnn_forward(to_time_major(x, batch_first), params, dropout_masks=masks, **kw)
        gx, gh, g = ref.rnn_backward(cache, to_time_major(G, batch_first), Gh)
        return to_time_major(out, batch_first), hn, to_time_major(gx, batch_first), gh, g

    out, hn, gx, gh, g = run(x, masks, G)
    assert np.all(out[~valid] == 0), "output at padded steps"
    assert np.all(out[valid] != 0)
    assert np.all(gx[~valid] == 0), "grad_x at padded steps"
    # h_n is read at each item's last valid step (forward) and at step 0 (reverse).
    top = (L - 1) * D
    assert_close(hn[top], out[lengths - 1, np.arange(B), :H], what="h_n fwd = last valid output")
    if bidirectional:
        assert_close(hn[top + 1], out[0, :, H:], what="h_n rev = output at t = 0")

    # Garbage in x, the masks and G at padded steps changes nothing at all.
    x2, masks2, G2 = x.copy(), masks.copy(), G.copy()
    x2[~valid] = rng.uniform(-5, 5, x2[~valid].shape)
    masks2[:, ~valid] = rng.uniform(-5, 5, masks2[:, ~valid].shape)
    G2[~valid] = rng.standard_normal(G2[~valid].shape)
    out2, hn2, gx2, gh2, g2 = run(x2, masks2, G2)
    np.testing.assert_array_equal(out2, out)
    np.testing.assert_array_equal(hn2, hn)
    np.testing.assert_array_equal(gx2, gx)
    np.testing.assert_array_equal(gh2, gh)
    for k in params:
        np.testing.assert_array_equal(g2[k], g[k], err_msg=k)
    # ... while a change at a valid step does show (the comparison above is not vacuous).
    x3 = x.copy()
    x3[0, 2] += 0.5                           # item 2 has length 1: its only valid step
    assert not np.allclose(run(x3, masks, G)[1][:, 2], hn[:, 2])


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_lengths_item_equals_item_alone(nonlinearity, bidirectional, bias):
    rng = np.random.default_rng(43)
    T, B, I, H, L = 5, 4, 3, 2, 2
    D = 2 if bidirectional else 1
    lengths = [4, 1, 5, 2]
    params = make_params(rng, I, H, L, bidirectional, bias)
    x = rng.uniform(-1, 1, (B, T, I))
    h0 = rng.uniform(-1, 1, (L * D, B, H))
    masks = make_masks(rng, L, T, B, D * H)
    G = rng.standard_normal((B, T, D * H))
    Gh = rng.standard_normal(h0.shape)
    kw = dict(num_layers=L, nonlinearity=nonlinearity, bias=bias, bidirectional=bidirectional)

    out, hn, cache = ref.rnn_forward(x, params, batch_first=True, h0=h0, dropout_masks=masks,
                                     lengths=lengths, **kw)
    grad_x, grad_h0, grads = ref.rnn_backward(cache, G, Gh)
    acc = {k: np.zeros_like(v) for k, v in params.items()}
    for b, n in enumerate(lengths):
        # Item b alone, unbatched, on its truncated sequence.
        out_b, hn_b, c_b = ref.rnn_forward(x[b, :n], params, h0=h0[:, b], dropout_masks=masks[:, :n, b:b + 1], **kw)
        assert_close(out[b, :n], out_b, what=f"output item {b}")
        assert_close(hn[:, b], hn_b, what=f"h_n item {b}")
        gx_b, gh_b, g_b = ref.rnn_backward(c_b, G[b, :n], Gh[:, b])
        assert_close(grad_x[b, :n], gx_b, what=f"grad_x item {b}")
        assert_close(grad_h0[:, b], gh_b, what=f"grad_h0 item {b}")
        for k in acc:
            acc[k] += g_b[k]
    for k in params:
        assert_close(grads[k], acc[k], what=k)


@pytest.mark.parametrize("scalar", [False, True])
def test_lengths_unbatched(scalar):
    rng = np.random.default_rng(44)
    T, I, H, L, n = 5, 2, 3, 2, 3
    params = make_params(rng, I, H, L, True)
    x = rng.uniform(-1, 1, (T, I))
    h0 = rng.uniform(-1, 1, (2 * L, H))
    masks = make_masks(rng, L, T, 1, 2 * H)
    G = rng.standard_normal((T, 2 * H))
    Gh = rng.standard_normal((2 * L, H))
    kw = dict(num_layers=L, bidirectional=True, h0=h0)

    out, hn, cache = ref.rnn_forward(x, params, dropout_masks=masks, lengths=n if scalar else [n], **kw)
    out_t, hn_t, c_t = ref.rnn_forward(x[:n], params, dropout_masks=masks[:, :n], **kw)
    assert out.shape == (T, 2 * H) and hn.shape == (2 * L, H)
    assert_close(out[:n], out_t)
    assert np.all(out[n:] == 0)
    assert_close(hn, hn_t)
    gx, gh, g = ref.rnn_backward(cache, G, Gh)
    gx_t, gh_t, g_t = ref.rnn_backward(c_t, G[:n], Gh)
    assert gx.shape == (T, I) and gh.shape == (2 * L, H)
    assert_close(gx[:n], gx_t)
    assert np.all(gx[n:] == 0)
    assert_close(gh, gh_t)
    for k in params:
        assert_close(g[k], g_t[k], what=k)


def test_bad_lengths():
    rng = np.random.default_rng(45)
    T, B = 5, 3
    params = make_params(rng, 2, 3)
    x = np.zeros((T, B, 2))
    for lengths, entry in [([5, 0, 2], 1), ([5, 2, 6], 2), ([-1, 2, 3], 0), (np.array([1, 2, 9]), 2)]:
        with pytest.raises(ValueError, match=rf"lengths\[{entry}\].*\[1, T=5\]"):
            ref.rnn_forward(x, params, lengths=lengths)
    for lengths in ([5, 5], [5, 5, 5, 5], [[5, 5, 5]], 5, []):     # wrong shape
        with pytest.raises(ValueError, match="lengths has shape"):
            ref.rnn_forward(x, params, lengths=lengths)
    for lengths in ([5.0, 2.0, 1.0], np.array([True, True, True]), ["5", "2", "1"]):   # not integers
        with pytest.raises((TypeError, ValueError), match="integers"):
            ref.rnn_forward(x, params, lengths=lengths)
    # Unbatched input: a scalar or one entry.
    with pytest.raises(ValueError, match=r"lengths: expected an integer in \[1, T=5\], got 6"):
        ref.rnn_forward(x[:, 0], params, lengths=6)
    with pytest.raises(ValueError, match=r"lengths\[0\]"):
        ref.rnn_forward(x[:, 0], params, lengths=[0])
    with pytest.raises(ValueError, match="lengths has shape"):
        ref.rnn_forward(x[:, 0], params, lengths=[2, 2])
    # Integer dtypes other than the default are fine.
    for dtype in (np.int32, np.uint8):
        out, _, _ = ref.rnn_forward(x, params, lengths=np.array([5, 1, 2], dtype=dtype))
        assert out.shape == (T, B, 3)


TORCH_LEN_GRID = list(itertools.product([1, 2, 3], [False, True], [False, True], [False, True],
                                        ["tanh", "relu"], [False, True]))


def test_lengths_against_torch_packed():
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    T, B, I, H = 5, 4, 3, 3
    for case, (L, bidirectional, batch_first, bias, nonlinearity, h0_given) in enumerate(TORCH_LEN_GRID):
        D = 2 if bidirectional else 1
        rng = np.random.default_rng(5000 + case)
        # Random lengths; even cases force a length-1 and a full-length item, odd
        # ones may all be shorter than T (the padding then fills whole rows).
        lengths = rng.integers(1, T + 1, size=B)
        if case % 2 == 0:
            lengths[rng.permutation(B)[:2]] = [1, T]
        what = (f"L={L} bidir={bidirectional} batch_first={batch_first} bias={bias} "
                f"{nonlinearity} h0={h0_given} lengths={lengths.tolist()}")
        params = make_params(rng, I, H, L, bidirectional, bias)
        x = rng.uniform(-1, 1, (B, T, I) if batch_first else (T, B, I))
        h0 = rng.uniform(-1, 1, (L * D, B, H)) if h0_given else np.zeros((L * D, B, H))
        G = rng.standard_normal((B, T, D * H) if batch_first else (T, B, D * H))
        Gh = rng.standard_normal(h0.shape)

        rnn = torch.nn.RNN(I, H, num_layers=L, nonlinearity=nonlinearity, bias=bias,
                           batch_first=batch_first, bidirectional=bidirectional, dtype=torch.float64)
        with torch.no_grad():
            for name in ref.param_names(L, bidirectional, bias):
                getattr(rnn, name).copy_(torch.from_numpy(params[name]))
        tx = torch.tensor(x, requires_grad=True)
        th0 = torch.tensor(h0, requires_grad=True)
        packed = pack_padded_sequence(tx, torch.from_numpy(lengths), batch_first=batch_first,
                                      enforce_sorted=False)
        t_packed_out, t_hn = rnn(packed, th0)
        t_out, _ = pad_packed_sequence(t_packed_out, batch_first=batch_first, total_length=T)
        ((t_out * torch.from_numpy(G)).sum() + (t_hn * torch.from_numpy(Gh)).sum()).backward()

        out, hn, cache = ref.rnn_forward(x, params, num_layers=L, nonlinearity=nonlinearity, bias=bias,
                                         batch_first=batch_first, bidirectional=bidirectional,
                                         h0=h0 if h0_given else None, lengths=lengths)
        assert_close(out, t_out.detach().numpy(), 1e-10, 1e-10, what + " output")
        assert_close(hn, t_hn.detach().numpy(), 1e-10, 1e-10, what + " h_n")
        grad_x, grad_h0, grads = ref.rnn_backward(cache, G, Gh)
        assert_close(grad_x, tx.grad.numpy(), 1e-10, 1e-10, what + " grad_x")
        assert_close(grad_h0, th0.grad.numpy(), 1e-10, 1e-10, what + " grad_h0")
        for name in grads:
            assert_close(grads[name], getattr(rnn, name).grad.numpy(), 1e-10, 1e-10, what + " " + name)
