"""rnnfast.RNN (compiled core) against the NumPy reference, over the whole option grid."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import assert_close

import rnnfast
from rnnfast import reference as ref

T, B, I, H = 5, 3, 4, 6

GRID = [
    combo
    for combo in itertools.product(
        [1, 2, 3],  # num_layers
        [False, True],  # bidirectional
        [False, True],  # batch_first
        [True, False],  # bias
        ["tanh", "relu"],
        ["float32", "float64"],
        [False, True],  # unbatched
        [False, True],  # h0 given
        [0.0, 0.4],  # dropout
    )
    if not (combo[0] == 1 and combo[-1] > 0)  # dropout needs a second layer (covered by test_dropout_one_layer_warns)
]


def _ids(combo: tuple) -> str:
    layers, bidi, bf, bias, act, dtype, unb, h0, p = combo
    return f"L{layers}-{'bi' if bidi else 'uni'}-{'bf' if bf else 'tm'}-{'b' if bias else 'nob'}-{act}-{dtype}" + (
        f"-{'unb' if unb else 'bat'}-{'h0' if h0 else 'noh0'}-p{p}"
    )


def _make_input(rng: np.random.Generator, dtype: str, batch_first: bool, unbatched: bool, features: int = I):
    if unbatched:
        shape = (T, features)
    elif batch_first:
        shape = (B, T, features)
    else:
        shape = (T, B, features)
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("combo", GRID, ids=_ids)
def test_matches_reference(combo: tuple) -> None:
    layers, bidi, batch_first, bias, act, dtype, unbatched, with_h0, dropout = combo
    rng = np.random.default_rng(abs(hash(_ids(combo))) % 2**32)
    model = rnnfast.RNN(I, H, num_layers=layers, nonlinearity=act, bias=bias, batch_first=batch_first,
                        dropout=dropout, bidirectional=bidi, dtype=dtype, seed=7)
    D = 2 if bidi else 1
    x = _make_input(rng, dtype, batch_first, unbatched)
    state_shape = (layers * D, H) if unbatched else (layers * D, B, H)
    h0 = rng.standard_normal(state_shape).astype(dtype) if with_h0 else None

    out, h_n, cache = model.forward(x, h0, return_cache=True)
    masks = cache.dropout_masks
    if dropout > 0:
        assert masks is not None and masks.shape == (layers - 1, T, 1 if unbatched else B, D * H)
    else:
        assert masks is None

    params64 = {k: v.astype(np.float64) for k, v in model.named_parameters().items()}
    kw = dict(num_layers=layers, nonlinearity=act, bias=bias, batch_first=batch_first, bidirectional=bidi)
    r_out, r_h_n, r_cache = ref.rnn_forward(
        x.astype(np.float64), params64, h0=None if h0 is None else h0.astype(np.float64),
        dropout_masks=None if masks is None else masks.astype(np.float64), **kw)
    depth = layers * T
    assert out.dtype == np.dtype(dtype) and h_n.dtype == np.dtype(dtype)
    assert_close(out, r_out, dtype, depth)
    assert_close(h_n, r_h_n, dtype, depth)

    grad_out = rng.standard_normal(out.shape).astype(dtype)
    grad_h_n = rng.standard_normal(h_n.shape).astype(dtype)
    gx, gh0 = model.backward(cache, grad_out, grad_h_n)
    r_gx, r_gh0, r_grads = ref.rnn_backward(r_cache, grad_out.astype(np.float64), grad_h_n.astype(np.float64))
    assert gx.shape == x.shape and gh0.shape == state_shape
    assert_close(gx, r_gx, dtype, depth)
    assert_close(gh0, r_gh0, dtype, depth)
    grads = model.grads
    assert list(grads) == list(r_grads) == ref.param_names(layers, bidi, bias)
    for name, g in grads.items():
        assert_close(g, r_grads[name], dtype, depth * B)


@pytest.mark.parametrize("which", ["output", "h_n"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_one_gradient_may_be_none(which: str, dtype: str) -> None:
    rng = np.random.default_rng(3)
    model = rnnfast.RNN(I, H, num_layers=2, bidirectional=True, dtype=dtype, seed=1)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    out, h_n, cache = model.forward(x, return_cache=True)
    params64 = {k: v.astype(np.float64) for k, v in model.named_parameters().items()}
    _, _, r_cache = ref.rnn_forward(x.astype(np.float64), params64, num_layers=2, bidirectional=True)
    g = rng.standard_normal(out.shape if which == "output" else h_n.shape).astype(dtype)
    if which == "output":
        gx, gh0 = model.backward(cache, grad_output=g)
        r_gx, r_gh0, r_grads = ref.rnn_backward(r_cache, grad_output=g.astype(np.float64))
    else:
        gx, gh0 = model.backward(cache, grad_h_n=g)
        r_gx, r_gh0, r_grads = ref.rnn_backward(r_cache, grad_h_n=g.astype(np.float64))
    assert_close(gx, r_gx, dtype, 2 * T)
    assert_close(gh0, r_gh0, dtype, 2 * T)
    for name, grad in model.grads.items():
        assert_close(grad, r_grads[name], dtype, 2 * T * B)


def test_both_gradients_none_is_an_error() -> None:
    model = rnnfast.RNN(I, H, seed=0)
    _, _, cache = model.forward(np.zeros((T, B, I), np.float32), return_cache=True)
    with pytest.raises(ValueError, match="grad_output, grad_h_n"):
        model.backward(cache)


def test_backward_accumulates_and_zero_grad_clears_in_place() -> None:
    rng = np.random.default_rng(0)
    model = rnnfast.RNN(I, H, num_layers=2, dtype="float64", seed=0)
    x = rng.standard_normal((T, B, I))
    out, _, cache = model.forward(x, return_cache=True)
    g = rng.standard_normal(out.shape)
    views = model.grads
    assert all(np.all(v == 0) for v in views.values())  # zeros from construction on
    model.backward(cache, g, retain_cache=True)
    once = {k: v.copy() for k, v in views.items()}
    assert all(np.any(v != 0) for v in once.values())
    model.backward(cache, g)  # a retained cache may be used again
    for name, v in views.items():
        np.testing.assert_allclose(v, 2 * once[name], rtol=1e-12)
    model.zero_grad()
    assert all(np.all(v == 0) for v in views.values())  # the views taken earlier are still live


def test_several_caches_alive_at_once() -> None:
    rng = np.random.default_rng(1)
    model = rnnfast.RNN(I, H, num_layers=2, dtype="float64", seed=2)
    xs = [rng.standard_normal((T, B, I)) for _ in range(3)]
    runs = [model.forward(x, return_cache=True) for x in xs]
    gs = [rng.standard_normal(out.shape) for out, _, _ in runs]
    # Backward in reverse order of the forwards, then one by one with fresh caches: same sums.
    grads_x = [model.backward(cache, g)[0] for (_, _, cache), g in reversed(list(zip(runs, gs)))][::-1]
    total = {k: v.copy() for k, v in model.grads.items()}
    model.zero_grad()
    for x, g, gx in zip(xs, gs, grads_x):
        _, _, cache = model.forward(x, return_cache=True)
        np.testing.assert_allclose(model.backward(cache, g)[0], gx, rtol=1e-12, atol=1e-14)
    for name, v in model.grads.items():
        np.testing.assert_allclose(v, total[name], rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_h0_zeros_equals_none_and_inference_equals_training_forward(dtype: str) -> None:
    rng = np.random.default_rng(2)
    model = rnnfast.RNN(I, H, num_layers=3, bidirectional=True, dtype=dtype, seed=5)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    out, h_n = model(x)
    out0, h_n0 = model(x, np.zeros((6, B, H), dtype))
    out_c, h_n_c, _ = model.forward(x, return_cache=True)
    np.testing.assert_array_equal(out, out0)
    np.testing.assert_array_equal(h_n, h_n0)
    np.testing.assert_array_equal(out, out_c)
    np.testing.assert_array_equal(h_n, h_n_c)


def test_batch_size_zero_gives_empty_results() -> None:
    model = rnnfast.RNN(I, H, num_layers=2, bidirectional=True, seed=0)
    out, h_n, cache = model.forward(np.zeros((T, 0, I), np.float32), return_cache=True)
    assert out.shape == (T, 0, 2 * H) and h_n.shape == (4, 0, H)
    gx, gh0 = model.backward(cache, np.zeros_like(out), np.zeros_like(h_n))
    assert gx.shape == (T, 0, I) and gh0.shape == (4, 0, H)
    assert all(np.all(v == 0) for v in model.grads.values())


def test_noncontiguous_and_readonly_inputs_match_contiguous_copies_and_are_not_modified() -> None:
    rng = np.random.default_rng(4)
    model = rnnfast.RNN(I, H, num_layers=2, batch_first=True, dtype="float64", seed=3)
    base = rng.standard_normal((2 * B, T, 2 * I))
    x = base[::2, :, ::2]  # strided view
    assert not x.flags.c_contiguous
    h0 = np.asfortranarray(rng.standard_normal((2, B, H)))
    h0.flags.writeable = False
    before = base.copy()
    out, h_n = model(x, h0)
    out_c, h_n_c = model(np.ascontiguousarray(x), np.ascontiguousarray(h0))
    np.testing.assert_array_equal(out, out_c)
    np.testing.assert_array_equal(h_n, h_n_c)
    np.testing.assert_array_equal(base, before)


def test_named_parameters_are_live_views() -> None:
    rng = np.random.default_rng(5)
    model = rnnfast.RNN(I, H, dtype="float64", seed=0)
    x = rng.standard_normal((T, B, I))
    out_before, _ = model(x)
    params = model.named_parameters()
    params["weight_hh_l0"] *= 0.5  # an in-place update, as an optimizer step does
    out_after, _ = model(x)
    assert not np.allclose(out_before, out_after)
    expected, _, _ = ref.rnn_forward(x, model.state_dict())
    np.testing.assert_allclose(out_after, expected, rtol=1e-12)
    assert model.weight_hh_l0 is not None and np.shares_memory(model.weight_hh_l0, params["weight_hh_l0"])


def test_parameter_names_shapes_and_initialization() -> None:
    model = rnnfast.RNN(10, 8, num_layers=2, bidirectional=True, seed=0)
    shapes = {k: v.shape for k, v in model.named_parameters().items()}
    assert shapes == ref.param_shapes(10, 8, num_layers=2, bidirectional=True)
    assert list(shapes) == ref.param_names(2, True, True)
    bound = 1 / np.sqrt(8)
    flat = np.concatenate([v.ravel() for v in model.named_parameters().values()])
    assert flat.min() >= -bound and flat.max() <= bound
    # Spread over the whole interval, not a constant or a narrow band.
    assert flat.min() < -0.9 * bound and flat.max() > 0.9 * bound and abs(flat.mean()) < 0.05
    assert list(rnnfast.RNN(10, 8, bias=False).named_parameters()) == ["weight_ih_l0", "weight_hh_l0"]


def test_seed_makes_construction_reproducible() -> None:
    a = rnnfast.RNN(I, H, num_layers=2, seed=11).state_dict()
    b = rnnfast.RNN(I, H, num_layers=2, seed=11).state_dict()
    c = rnnfast.RNN(I, H, num_layers=2, seed=12).state_dict()
    d = rnnfast.RNN(I, H, num_layers=2).state_dict()
    e = rnnfast.RNN(I, H, num_layers=2).state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert any(not np.array_equal(a[k], c[k]) for k in a)
    assert any(not np.array_equal(d[k], e[k]) for k in d)


def test_dropout_masks_are_seeded_scaled_and_only_in_training() -> None:
    x = np.random.default_rng(0).standard_normal((50, 8, I)).astype(np.float32)
    p = 0.3
    a = rnnfast.RNN(I, H, num_layers=3, dropout=p, seed=21)
    b = rnnfast.RNN(I, H, num_layers=3, dropout=p, seed=21)
    assert a.training
    out_a, _, cache_a = a.forward(x, return_cache=True)
    out_b, _, cache_b = b.forward(x, return_cache=True)
    np.testing.assert_array_equal(cache_a.dropout_masks, cache_b.dropout_masks)
    np.testing.assert_array_equal(out_a, out_b)
    masks = cache_a.dropout_masks
    assert set(np.unique(masks)) == {np.float32(0), np.float32(1 / (1 - p))}
    assert abs(np.mean(masks == 0) - p) < 0.02
    # A second forward draws new masks.
    _, _, cache_a2 = a.forward(x, return_cache=True)
    assert not np.array_equal(cache_a2.dropout_masks, masks)
    # eval(): no dropout, deterministic, equals a dropout-free model with the same weights.
    assert a.eval() is a and not a.training
    plain = rnnfast.RNN(I, H, num_layers=3, seed=0)
    plain.load_state_dict(a.state_dict())
    out_eval, _, cache_eval = a.forward(x, return_cache=True)
    assert cache_eval.dropout_masks is None
    np.testing.assert_array_equal(out_eval, plain(x)[0])
    assert a.train() is a and a.training


def test_dropout_one_drops_everything_between_layers() -> None:
    model = rnnfast.RNN(I, H, num_layers=2, dropout=1.0, dtype="float64", seed=0)
    x = np.random.default_rng(0).standard_normal((T, B, I))
    out, _ = model(x)
    # Layer 1 sees zeros, so its output is act(b_ih + b_hh + h W_hh^T) from h0 = 0, independent of x.
    expected, _, _ = ref.rnn_forward(np.zeros_like(x), model.state_dict(), num_layers=2,
                                     dropout_masks=np.zeros((1, T, B, H)))
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    np.testing.assert_allclose(out, model(x * 2)[0], rtol=1e-12)


def test_dropout_one_layer_warns() -> None:
    with pytest.warns(UserWarning, match="dropout"):
        model = rnnfast.RNN(I, H, num_layers=1, dropout=0.5, seed=0)
    _, _, cache = model.forward(np.ones((T, B, I), np.float32), return_cache=True)
    assert cache.dropout_masks is None


def test_repr() -> None:
    assert repr(rnnfast.RNN(100, 20, num_layers=4)) == "RNN(100, 20, num_layers=4, dtype=float32)"


# Batches of 8 or more rows per step multiply by W_hh packed once per call, in blocks of Eigen's blocking sizes
# (several depth and row blocks at H = 600). With 2 threads, the recurrence is split by items when each thread
# gets 8 or more (batches of 16 and more; ragged ones balanced by length), else by bands of columns.
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("hidden,batch,bidirectional,ragged", [
    (20, 9, False, False), (130, 16, True, False), (600, 9, False, False), (130, 12, False, True),
    (130, 16, False, False), (70, 21, False, True), (600, 17, False, False),
])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_wide_layers_and_batches_match_the_reference(threads: int, hidden: int, batch: int, bidirectional: bool,
                                                     ragged: bool, dtype: str) -> None:
    before = rnnfast.get_num_threads()
    rnnfast.set_num_threads(threads)
    try:
        T_, I_ = 5, 7
        rng = np.random.default_rng(hidden + batch)
        model = rnnfast.RNN(I_, hidden, num_layers=2, bidirectional=bidirectional, dtype=dtype, seed=hidden)
        x = rng.standard_normal((T_, batch, I_)).astype(dtype)
        h0 = rng.standard_normal((2 * model._directions, batch, hidden)).astype(dtype)
        lengths = rng.integers(1, T_ + 1, size=batch) if ragged else None
        out, h_n, cache = model.forward(x, h0, lengths=lengths, return_cache=True)
        grad = rng.standard_normal(out.shape).astype(dtype)
        grad_h_n = rng.standard_normal(h_n.shape).astype(dtype)
        gx, gh0 = model.backward(cache, grad, grad_h_n)

        kw = dict(num_layers=2, nonlinearity="tanh", bias=True, bidirectional=bidirectional, lengths=lengths)
        params = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
        ref_out, ref_h_n, ref_cache = ref.rnn_forward(x.astype(np.float64), params, h0=h0.astype(np.float64), **kw)
        ref_gx, ref_gh0, ref_grads = ref.rnn_backward(ref_cache, grad.astype(np.float64),
                                                      grad_h_n.astype(np.float64))
        depth = 2 * T_
        assert_close(out, ref_out, dtype, depth)
        assert_close(h_n, ref_h_n, dtype, depth)
        assert_close(gx, ref_gx, dtype, 2 * depth)
        assert_close(gh0, ref_gh0, dtype, 2 * depth)
        for name, g in model.grads.items():
            assert_close(g, ref_grads[name], dtype, 2 * depth)
    finally:
        rnnfast.set_num_threads(before)


class _Subclass(np.ndarray):
    pass


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_a_call_takes_the_kernels_short_path_only_for_plain_arrays_with_the_general_paths_bits(
        monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    # The short path's check runs in C++ (the kernel's call): it returns None for any x the kernel cannot take as it
    # is, and the model's call then takes the general path, which gives the plain array's bits for every layout
    # holding the same values.
    model = getattr(rnnfast, kind)(I, H, num_layers=2, seed=1)
    x = np.random.default_rng(2).standard_normal((T, B, I)).astype(np.float32)
    kernel = model._kernel_for(T, B)

    def misaligned(a: np.ndarray) -> np.ndarray:
        view = np.frombuffer(np.zeros(a.nbytes + 1, np.uint8).data, a.dtype, a.size, offset=1).reshape(a.shape)
        view[...] = a
        return view

    same_values = {"strided": lambda a: np.repeat(a, 2, axis=2)[:, :, ::2], "misaligned": misaligned,
                   "Fortran order": np.asfortranarray, "a subclass": lambda a: a.view(_Subclass)}
    other = {"float64": lambda a: a.astype(np.float64), "big-endian": lambda a: a.astype(">f4"),
             "a feature fewer": lambda a: a[:, :, :-1].copy(), "two dimensions": lambda a: a[0].copy(),
             "no steps": lambda a: a[:0].copy(), "an empty batch": lambda a: a[:, :0].copy(),
             "a list": lambda a: a.tolist()}
    assert kernel.call(model._flat, x) is not None
    with monkeypatch.context() as patch:  # the short path checks nothing through _checks
        patch.setattr(rnnfast._checks, "array", lambda *a, **k: pytest.fail("the general path ran"))
        output, state = model(x)
    for name, change in {**same_values, **other}.items():
        assert kernel.call(model._flat, change(x)) is None, name
    for name, change in same_values.items():
        got_output, got_state = model(change(x))
        assert np.array_equal(got_output, output), name
        for got, want in zip(got_state if kind == "LSTM" else [got_state], state if kind == "LSTM" else [state]):
            assert np.array_equal(got, want), name
