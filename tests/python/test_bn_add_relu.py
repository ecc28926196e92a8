"""normkit.batch_norm_add_relu / batch_norm_add_relu_backward against PyTorch float64:
relu(F.batch_norm(x) + z), forward (training with running statistics, eval) and autograd
gradients of x, z, weight and bias, in NCHW, channels_last and strided layouts.

Tolerances: the table in helpers.py. The output adds z to batch norm's output before the one
rounding, so the 'output' tolerance (a few roundings of terms <= cond * max|y|) applies; the
gradients are batch norm's with a ReLU mask ('grad_input', 'grad_param'), and grad_residual is
grad_output where y > 0, which is exact. Pre-activations within KINK of 0 are moved away
from it (z shifted), so that no rounding can put an element on the other side of the ReLU.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import normkit
from helpers import assert_close, in_layout, t64, xhat64

KINK = 1e-3
SHAPES = [(4, 3, 5, 7), (2, 16, 8, 8), (8, 64, 1, 1), (3, 1, 9, 2), (2, 5, 3, 4, 2)]
CASES = [(s, dt, lay, seed) for seed, s in enumerate(SHAPES) for dt in ("float32", "float64")
         for lay in ("contiguous", "channels_last", "strided")]


def _data(shape, dtype, layout, seed):
    rng = np.random.default_rng(1000 + seed)
    c = shape[1]
    x = rng.normal(rng.uniform(-2, 2, c).reshape((1, c) + (1,) * (len(shape) - 2)),
                   rng.uniform(0.5, 2, c).reshape((1, c) + (1,) * (len(shape) - 2)), shape)
    z = rng.normal(0, 1, shape)
    w, b = rng.uniform(0.5, 1.5, c), rng.uniform(-1, 1, c)
    x = in_layout(x, dtype, layout)
    w, b = w.astype(dtype), b.astype(dtype)
    # keep every pre-activation clear of the kink (computed in float64 on the stored values)
    pre = F.batch_norm(t64(x), None, None, t64(w), t64(b), training=True, eps=1e-5).numpy()
    z = z + np.where(np.abs(pre + z) < KINK, 3 * KINK * np.sign(pre + z + 1e-300), 0.0)
    z = in_layout(z, dtype, layout)
    return x, z, w, b


def _info(shape, dtype, layout, seed):
    return "add_relu %s %s %s seed %d" % (shape, dtype, layout, seed)


@pytest.mark.parametrize("shape,dtype,layout,seed", CASES)
def test_forward_train_and_eval(shape, dtype, layout, seed):
    x, z, w, b = _data(shape, dtype, layout, seed)
    info = _info(shape, dtype, layout, seed)
    c = shape[1]
    rm, rv = np.linspace(-1, 1, c).astype(dtype), np.linspace(0.5, 2, c).astype(dtype)
    rm_t, rv_t = t64(rm), t64(rv)
    y_ref = F.relu(F.batch_norm(t64(x), rm_t, rv_t, t64(w), t64(b), training=True,
                                momentum=0.1, eps=1e-5) + t64(z)).numpy()
    y = normkit.batch_norm_add_relu(x, z, rm, rv, w, b, training=True)
    assert y.strides == np.empty_like(x).strides, info + ": output layout differs from input's"
    assert_close(y, y_ref, "output", dtype, info, what="y")
    assert_close(rm, rm_t.numpy(), "running_stats", dtype, info, what="running_mean")
    assert_close(rv, rv_t.numpy(), "running_stats", dtype, info, what="running_var")
    y_ref = F.relu(F.batch_norm(t64(x), t64(rm), t64(rv), t64(w), t64(b), training=False,
                                eps=1e-5) + t64(z)).numpy()
    y = normkit.batch_norm_add_relu(x, z, rm, rv, w, b, training=False)
    assert_close(y, y_ref, "output", dtype, info, what="eval y")


@pytest.mark.parametrize("shape,dtype,layout,seed", CASES)
def test_backward_autograd(shape, dtype, layout, seed):
    x, z, w, b = _data(shape, dtype, layout, seed)
    info = _info(shape, dtype, layout, seed)
    dy = in_layout(np.random.default_rng(seed).normal(0, 1, shape), dtype, layout)
    xt, zt = t64(x).requires_grad_(True), t64(z).requires_grad_(True)
    wt, bt = t64(w).requires_grad_(True), t64(b).requires_grad_(True)
    y = F.relu(F.batch_norm(xt, None, None, wt, bt, training=True, eps=1e-5) + zt)
    dx_ref, dz_ref, dw_ref, db_ref = (g.numpy() for g in
                                      torch.autograd.grad(y, [xt, zt, wt, bt], t64(dy)))
    gi, gz, gw, gb = normkit.batch_norm_add_relu_backward(dy, x, z, w, b)
    assert gi.strides == np.empty_like(x).strides, info + ": grad layout differs from input's"
    assert_close(gi, dx_ref, "grad_input", dtype, info, what="grad_input")
    assert np.array_equal(gz, dz_ref.astype(dtype)), info + ": grad_residual is not dy * (y > 0)"
    # parameter gradients: sums over every axis but 1, scaled by the sum of |terms| (as in
    # test_batchnorm_torch.py)
    xh, axes = xhat64(x, 1e-5)
    g = np.abs(np.asarray(dz_ref, dtype=np.float64))
    assert_close(gw, dw_ref, "grad_param", dtype, info, scale=(g * np.abs(xh)).sum(axis=axes),
                 what="grad_weight")
    assert_close(gb, db_ref, "grad_param", dtype, info, scale=g.sum(axis=axes), what="grad_bias")


def test_in_place_and_errors():
    x, z, w, b = _data((4, 3, 5, 5), "float32", "channels_last", 7)
    want = normkit.batch_norm_add_relu(x, z, None, None, w, b, training=True)
    zz = z.copy(order="K")
    normkit.batch_norm_add_relu(x, zz, None, None, w, b, training=True, out=zz)
    assert np.array_equal(zz, want), "out=residual (in place) differs from out of place"
    with pytest.raises(ValueError):
        normkit.batch_norm_add_relu(x, z[:, :, :4], None, None, w, b, training=True)
    with pytest.raises(TypeError):
        normkit.batch_norm_add_relu(x, z.astype(np.float64), None, None, w, b, training=True)
    with pytest.raises(normkit.NormkitError, match="batchnorm_add_relu: expected more than 1"):
        normkit.batch_norm_add_relu(x[:1, :, :1, :1], z[:1, :, :1, :1], None, None, w, b,
                                    training=True)
