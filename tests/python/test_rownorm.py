"""Row normalizations of the Python binding (normkit.rownorm) against independent oracles.

Oracles, always in float64 on the exact values given to normkit (float32 inputs convert
exactly), so a comparison sees only normkit's own rounding:
  layer_norm, layer_norm_channels: torch.nn.functional.layer_norm + autograd
  rms_norm: torch autograd of x * rsqrt(mean(x^2) + eps) * w (torch 1.13 has no F.rms_norm)
  mean_variance_normalization, weight_standardize: NumPy formulas, gradients by central
  finite differences of the NumPy formula.
"""

import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import normkit
from normkit import rownorm as rn

# ---------------------------------------------------------------------------------------------
# THE tolerance table of this file: key -> {dtype: tol}, reason. A comparison passes when
# max|ours - oracle| <= tol * max(max|oracle|, 1e-30) over the compared array.
# ---------------------------------------------------------------------------------------------
TOL = {
    "output": {"float32": 1e-6, "float64": 1e-13,
               "reason": "normkit computes in double and rounds once to the storage dtype "
                         "(0.5 ulp = 6e-8 of max|y| in float32); float64 sees a few roundings "
                         "of terms up to cond = max|x - mean| / std (~5 for this data)"},
    "grad_input": {"float32": 1e-5, "float64": 1e-11,
                   "reason": "dx = a (h - mean h - xhat mean(h xhat)): the three terms are up "
                             "to (1 + cond) times |dx| and cancel; ~10 roundings of them, plus "
                             "the float32 storage of dx"},
    "grad_param": {"float32": 1e-6, "float64": 1e-12,
                   "reason": "sums over rows accumulated in double, stored once; random-sign "
                             "sums of R terms lose up to sqrt(R) ~ 10x against the largest "
                             "element"},
    "finite_diff": {"float64": 1e-6,
                    "reason": "central differences with h = 1e-6 of a float64 NumPy formula: "
                              "truncation h^2 |f'''| ~ 1e-11, rounding u |L| / h ~ 1e-9, "
                              "relative to max|grad|"},
}


def check(ours, oracle, key, dtype):
    oracle = np.asarray(oracle, np.float64)
    tol = TOL[key][np.dtype(dtype).name]
    scale = max(float(np.max(np.abs(oracle))) if oracle.size else 0.0, 1e-30)
    err = float(np.max(np.abs(np.asarray(ours, np.float64) - oracle))) if oracle.size else 0.0
    assert err <= tol * scale, "%s (%s): max|err| %.3g > %.1e * %.3g (%s)" % (
        key, np.dtype(dtype).name, err, tol, scale, TOL[key]["reason"])


def make(rng, shape, dtype, layout, loc=0.3, scale=1.7):
    """Values of `shape` in a memory layout: 'c' contiguous, 'f' column-major, 'slice' a
    strided slice of a bigger array, 'perm' a transposed view."""
    a = (rng.standard_normal(shape) * scale + loc).astype(dtype)
    if layout == "f":
        return np.asfortranarray(a)
    if layout == "slice":
        return strided_copy(a)
    if layout == "perm":
        base = np.ascontiguousarray(np.moveaxis(a, 0, -1))
        return np.moveaxis(base, -1, 0)
    return a


LAYOUTS = ["c", "f", "slice", "perm"]
DTYPES = [np.float32, np.float64]


def seed_of(*key):
    return zlib.crc32(repr(key).encode())


def strided_copy(a):
    """The values of a in a strided slice (every other element) of a bigger array."""
    big = np.zeros(tuple(d * 2 for d in a.shape), a.dtype)
    view = big[tuple(slice(0, 2 * d, 2) for d in a.shape)]
    view[...] = a
    return view


def t64(a, grad=True):
    return torch.tensor(np.asarray(a, np.float64), dtype=torch.float64, requires_grad=grad)


# ---- layer norm --------------------------------------------------------------------------------

LN_CASES = [((7,), 1), ((3, 5), 1), ((3, 5), 2), ((2, 3, 4, 5), 1), ((2, 3, 4, 5), 2),
            ((2, 3, 4, 5), 3), ((2, 3, 4, 5), 4), ((4, 1, 6), 2), ((2, 9000), 1)]


@pytest.mark.parametrize("shape,nd", LN_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_vs_torch(shape, nd, dtype, affine):
    rng = np.random.default_rng(seed_of(shape, nd, affine))
    ns = shape[len(shape) - nd:]
    for layout in LAYOUTS:
        x = make(rng, shape, dtype, layout)
        w = make(rng, ns, dtype, "c", 1.0, 0.5) if affine else None
        b = make(rng, ns, dtype, "c", 0.0, 0.5) if affine else None
        eps = 1e-5 if layout != "f" else 0.1
        y = normkit.rownorm.layer_norm(x, ns, w, b, eps=eps)
        assert y.shape == x.shape and y.dtype == x.dtype
        xt = t64(x)
        wt, bt = (t64(w), t64(b)) if affine else (None, None)
        yt = F.layer_norm(xt, ns, wt, bt, eps)
        check(y, yt.detach().numpy(), "output", dtype)
        dy = make(rng, shape, dtype, "c", 0.0, 1.0)
        yt.backward(torch.tensor(dy.astype(np.float64)))
        gi, gw, gb = rn.layer_norm_backward(dy, x, ns, w, b, eps=eps)
        check(gi, xt.grad.numpy(), "grad_input", dtype)
        if affine:
            check(gw, wt.grad.numpy(), "grad_param", dtype)
            check(gb, bt.grad.numpy(), "grad_param", dtype)
        else:  # gradients of the implicit scale 1 and shift 0
            xhat = F.layer_norm(t64(x, False), ns, eps=eps).numpy()
            red = tuple(range(len(shape) - nd))
            check(gw, (dy.astype(np.float64) * xhat).sum(axis=red), "grad_param", dtype)
            check(gb, dy.astype(np.float64).sum(axis=red), "grad_param", dtype)


def test_layer_norm_out_in_place_and_int_shape():
    rng = np.random.default_rng(1)
    x = make(rng, (4, 6), np.float64, "c")
    ref = F.layer_norm(t64(x, False), (6,)).numpy()
    y = rn.layer_norm(x, 6)  # an int normalized_shape, as torch accepts
    check(y, ref, "output", np.float64)
    x2 = x.copy()
    out = rn.layer_norm(x2, (6,), out=x2)
    assert out is x2
    check(x2, ref, "output", np.float64)


def test_layer_norm_errors():
    x = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(RuntimeError, match="normalized_shape"):
        rn.layer_norm(x, (3,))
    with pytest.raises(ValueError, match="normalized_shape"):
        rn.layer_norm(x, (2, 3, 4, 5))
    with pytest.raises(normkit.NormkitError, match="layernorm: gamma"):
        rn.layer_norm(x, (4,), weight=np.ones(3, np.float32))
    with pytest.raises(normkit.NormkitError, match="eps"):
        rn.layer_norm(x, (4,), eps=-1.0)
    with pytest.raises(TypeError):
        rn.layer_norm(x.astype(np.int32), (4,))


# ---- layer norm over channels -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 5, 3, 7), (3, 8, 10), (1, 3, 1, 1)])
def test_layer_norm_channels_vs_torch(dtype, shape):
    rng = np.random.default_rng(7)
    C = shape[1]
    w = make(rng, (C,), dtype, "c", 1.0, 0.3)
    b = make(rng, (C,), dtype, "c", 0.0, 0.3)
    base = make(rng, shape, dtype, "c")
    dy = make(rng, shape, dtype, "c", 0.0, 1.0)
    chlast = np.moveaxis(np.ascontiguousarray(np.moveaxis(base, 1, -1)), -1, 1)
    results = []
    for x in (base, chlast, strided_copy(base)):
        y = rn.layer_norm_channels(x, w, b)
        gi, gw, gb = rn.layer_norm_channels_backward(dy, x, w, b)
        results.append((y, gi, gw, gb))
    for r in results[1:]:  # the values of a row are visited in channel order in any layout
        for a, c in zip(results[0], r):
            assert np.array_equal(a, c)
    xt = t64(np.moveaxis(base, 1, -1))
    wt, bt = t64(w), t64(b)
    yt = F.layer_norm(xt, (C,), wt, bt, 1e-5)
    yt.backward(torch.tensor(np.moveaxis(dy, 1, -1).astype(np.float64)))
    y, gi, gw, gb = results[0]
    check(y, np.moveaxis(yt.detach().numpy(), -1, 1), "output", dtype)
    check(gi, np.moveaxis(xt.grad.numpy(), -1, 1), "grad_input", dtype)
    check(gw, wt.grad.numpy(), "grad_param", dtype)
    check(gb, bt.grad.numpy(), "grad_param", dtype)


# ---- RMS norm -----------------------------------------------------------------------------------

def torch_rms_norm(x, ns, w, eps):
    dims = tuple(range(x.dim() - len(ns), x.dim()))
    y = x * torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + eps)
    return y * w if w is not None else y


@pytest.mark.parametrize("shape,nd", LN_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eps", [None, 1e-6, 0.1])
def test_rms_norm_vs_torch(shape, nd, dtype, eps):
    rng = np.random.default_rng(seed_of(shape, nd, eps))
    ns = shape[len(shape) - nd:]
    e = np.finfo(dtype).eps if eps is None else eps  # PyTorch's eps=None
    for i, layout in enumerate(LAYOUTS):
        x = make(rng, shape, dtype, layout, 0.2, 1.3)
        w = make(rng, ns, dtype, "c", 1.0, 0.5) if i % 2 == 0 else None
        y = rn.rms_norm(x, ns, w, eps=eps)
        xt = t64(x)
        wt = t64(w) if w is not None else None
        yt = torch_rms_norm(xt, ns, wt, float(e))
        check(y, yt.detach().numpy(), "output", dtype)
        dy = make(rng, shape, dtype, "c", 0.0, 1.0)
        yt.backward(torch.tensor(dy.astype(np.float64)))
        gi, gw = rn.rms_norm_backward(dy, x, ns, w, eps=eps)
        check(gi, xt.grad.numpy(), "grad_input", dtype)
        if w is not None:
            check(gw, wt.grad.numpy(), "grad_param", dtype)


def test_rms_norm_dtype_eps_matters():
    # mean(x^2) = 1e-8 is below float32's epsilon: eps=None must use finfo(float32).eps
    x = np.full((1, 4), 1e-4, np.float32)
    y = rn.rms_norm(x, (4,))
    want = float(x[0, 0]) / np.sqrt(float(x[0, 0]) ** 2 + float(np.finfo(np.float32).eps))
    assert abs(float(y[0, 0]) - want) <= 1e-6 * want


# ---- mean-variance normalization ----------------------------------------------------------------

def np_mvn(x, axes):
    x = np.asarray(x, np.float64)
    m = x.mean(axis=axes, keepdims=True)
    s = np.sqrt(((x - m) ** 2).mean(axis=axes, keepdims=True))
    return (x - m) / (s + 1e-9)


def fd_grad(f, x, dy, h=1e-6):
    """d(sum dy * f(x))/dx by central differences in float64."""
    x = np.array(x, np.float64)
    g = np.empty_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        x0 = x[i]
        x[i] = x0 + h
        lp = float((dy * f(x)).sum())
        x[i] = x0 - h
        lm = float((dy * f(x)).sum())
        x[i] = x0
        g[i] = (lp - lm) / (2 * h)
    return g


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axes", [((2, 3, 4, 5), (0, 2, 3)), ((2, 3, 4, 5), (2, 3)),
                                        ((2, 3, 4, 5), (1,)), ((3, 4, 6), (0, -1)),
                                        ((5, 7), (0, 1))])
def test_mvn_vs_numpy(dtype, shape, axes):
    rng = np.random.default_rng(3)
    for layout in LAYOUTS:
        x = make(rng, shape, dtype, layout)
        y = rn.mean_variance_normalization(x, axes)
        check(y, np_mvn(x, axes), "output", dtype)
        dy = make(rng, shape, dtype, "c", 0.0, 1.0)
        gi = rn.mean_variance_normalization_backward(dy, x, axes)
        # the oracle gradient: autograd of the same float64 formula
        xt = t64(x)
        m = xt.mean(dim=axes, keepdim=True)
        s = ((xt - m) ** 2).mean(dim=axes, keepdim=True).sqrt()
        ((xt - m) / (s + 1e-9)).backward(torch.tensor(dy.astype(np.float64)))
        check(gi, xt.grad.numpy(), "grad_input", dtype)


def test_mvn_gradient_finite_differences():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 3, 2, 2))
    dy = rng.standard_normal(x.shape)
    gi = rn.mean_variance_normalization_backward(dy, x)
    check(gi, fd_grad(lambda v: np_mvn(v, (0, 2, 3)), x, dy), "finite_diff", np.float64)


def test_mvn_default_axes_and_errors():
    x = np.random.default_rng(0).standard_normal((3, 3, 3, 1)).astype(np.float32)
    check(rn.mean_variance_normalization(x), np_mvn(x, (0, 2, 3)), "output", np.float32)
    with pytest.raises(ValueError, match="out of range"):
        rn.mean_variance_normalization(x[0], (0, 2, 3))


# ---- weight standardization ---------------------------------------------------------------------

def np_ws(w, eps):
    w = np.asarray(w, np.float64)
    ax = tuple(range(1, w.ndim))
    m = w.mean(axis=ax, keepdims=True)
    v = ((w - m) ** 2).mean(axis=ax, keepdims=True)
    return (w - m) / np.sqrt(v + eps)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(8, 3, 3, 3), (5, 7), (4, 2, 5), (16, 32, 1, 1)])
def test_weight_standardize_vs_numpy(dtype, shape):
    rng = np.random.default_rng(5)
    for layout in LAYOUTS:
        w = make(rng, shape, dtype, layout, 0.01, 0.2)
        y = rn.weight_standardize(w, eps=1e-5)
        check(y, np_ws(w, 1e-5), "output", dtype)
        dy = make(rng, shape, dtype, "c", 0.0, 1.0)
        gi = rn.weight_standardize_backward(dy, w, eps=1e-5)
        wt = t64(w)
        ax = tuple(range(1, len(shape)))
        m = wt.mean(dim=ax, keepdim=True)
        v = ((wt - m) ** 2).mean(dim=ax, keepdim=True)
        ((wt - m) / torch.sqrt(v + 1e-5)).backward(torch.tensor(dy.astype(np.float64)))
        check(gi, wt.grad.numpy(), "grad_input", dtype)


def test_weight_standardize_finite_differences():
    rng = np.random.default_rng(12)
    w = rng.standard_normal((3, 2, 2, 2)) * 0.3
    dy = rng.standard_normal(w.shape)
    gi = rn.weight_standardize_backward(dy, w, eps=1e-3)
    check(gi, fd_grad(lambda v: np_ws(v, 1e-3), w, dy), "finite_diff", np.float64)


def test_threads_do_not_change_results():
    rng = np.random.default_rng(9)
    x = make(rng, (64, 40, 50), np.float32, "c")
    dy = make(rng, x.shape, np.float32, "c", 0.0, 1.0)
    w = make(rng, (50,), np.float32, "c", 1.0, 0.2)
    ref = None
    for n in (1, 2, 3, 4):
        normkit.set_num_threads(n)
        got = (rn.layer_norm(x, (50,), w, w), *rn.layer_norm_backward(dy, x, (50,), w, w),
               rn.rms_norm(x, (40, 50)), *rn.rms_norm_backward(dy, x, (40, 50)))
        if ref is None:
            ref = got
        for a, b in zip(ref, got):
            assert np.array_equal(a, b)


def test_benchmark_shape_vs_torch():
    """The benchmarked 8192 x 1024 float32 rows: an output of 32 MiB, so the optimized kernels
    write y and dx with streaming stores and take rows in pairs; against the float64 oracles,
    1 and 2 threads."""
    rng = np.random.default_rng(8192)
    x = make(rng, (8192, 1024), np.float32, "c", 2.0, 1.0)
    dy = make(rng, x.shape, np.float32, "c", 0.0, 1.0)
    w = make(rng, (1024,), np.float32, "c", 1.0, 0.5)
    b = make(rng, (1024,), np.float32, "c", 0.0, 0.5)
    xt, wt, bt = t64(x), t64(w), t64(b)
    yt = F.layer_norm(xt, (1024,), wt, bt, 1e-5)
    yt.backward(torch.tensor(dy.astype(np.float64)))
    xr, wr = t64(x), t64(w)
    rt = torch_rms_norm(xr, (1024,), wr, 1e-6)
    rt.backward(torch.tensor(dy.astype(np.float64)))
    saved = normkit.get_num_threads()
    for n in (1, 2):
        normkit.set_num_threads(n)
        check(rn.layer_norm(x, (1024,), w, b, eps=1e-5), yt.detach().numpy(), "output", np.float32)
        gi, gw, gb = rn.layer_norm_backward(dy, x, (1024,), w, b, eps=1e-5)
        check(gi, xt.grad.numpy(), "grad_input", np.float32)
        check(gw, wt.grad.numpy(), "grad_param", np.float32)
        check(gb, bt.grad.numpy(), "grad_param", np.float32)
        check(rn.rms_norm(x, (1024,), w, eps=1e-6), rt.detach().numpy(), "output", np.float32)
        gi, gw = rn.rms_norm_backward(dy, x, (1024,), w, eps=1e-6)
        check(gi, xr.grad.numpy(), "grad_input", np.float32)
        check(gw, wr.grad.numpy(), "grad_param", np.float32)
    normkit.set_num_threads(saved)
