"""normkit group_norm / instance_norm (+ backward) against torch.nn.functional and autograd.

Oracle: PyTorch in float64 on the very values normkit gets (float32 inputs convert exactly),
so a comparison sees only normkit's own rounding. Cases are drawn from their seed (shape,
groups, C = 1 included, eps, momentum, per-channel dtype, affine, running statistics); every
failure message names them. Layouts: C-contiguous NCHW, channels_last (an NHWC array
transposed to NCHW shape, passed without a copy) and sliced (strided) views.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import normkit
from normkit.groupnorm import (group_norm, group_norm_backward, instance_norm,
                               instance_norm_backward)
from helpers import in_layout, stride_order

U32 = 2.0 ** -24  # unit roundoff of float32

# ---------------------------------------------------------------------------------------------
# The tolerance table: key -> {dtype: (rtol, atol)}, reason. A comparison passes when
# |ours - torch| <= rtol * |torch| + atol * scale elementwise; scale is max|torch| of the
# compared array unless stated. normkit computes every statistic and element in double and
# rounds once when it stores a float32 result, so float32 gets 2 ulp of each element; the atol
# terms bound the difference between two double computations (ours and torch's) that sum in
# different orders.
# ---------------------------------------------------------------------------------------------
TOL = {
    "output": {
        "float32": (4 * U32, 1e-13), "float64": (0.0, 1e-13),
        "reason": "y = (x - mean) * invstd * w + b in double, then one rounding to float32 "
                  "(<= 1 ulp = 2 * U32 of |y|, 4 * U32 leaves 2x for a neighbouring float). "
                  "Double vs double: a few ulp of the terms, so scale is "
                  "max((|x| + |mean|) invstd |w| + |b|) (torch folds into x * a + (b - mean * "
                  "a), whose rounding is relative to |x| a: with one value per group and eps "
                  "1e-5, a = 316 and torch is off by ~1e-13 where y = b exactly): ~1e-15 of "
                  "scale; 1e-13 leaves 100x.",
    },
    "running_stats": {
        "float32": (4 * U32, 1e-13), "float64": (0.0, 1e-13),
        "reason": "r = (1 - m) r + m * mean_n(stat[n, c]) in double (torch: per-(n, c) "
                  "update, then the mean): a few ulp of max|r|; one rounding when stored in "
                  "float32.",
    },
    "grad_input": {
        "float32": (4 * U32, 1e-12), "float64": (0.0, 1e-12),
        "reason": "dx = invstd (h - mean(h) - xhat mean(h xhat)) in double, rounded once to "
                  "float32. scale is the largest term max(invstd |h|, max|dx|): dx may cancel "
                  "to ~0 (one value per group: torch itself returns ~1e-14 there, not 0). The "
                  "double results differ by a few ulp of the terms plus the row sums' "
                  "reordering (sqrt(K) ulp): ~1e-14 of scale; 1e-12 leaves 100x.",
    },
    "grad_param": {
        "float32": (4 * U32, 1e-12), "float64": (0.0, 1e-12),
        "reason": "grad_weight = sum g xhat, grad_bias = sum g over n and space; scale is the "
                  "per-channel sum of |g| (|x| + |mean|) invstd (resp. |g|): the summation's "
                  "condition, with xhat's own rounding relative to |x| (torch forms xhat as "
                  "x * a + b: ~1e-16 where the exact xhat is 0). Two double sums of <= ~5000 "
                  "terms in different orders differ by <= ~n * U64 = 6e-13 of it (random "
                  "walk: ~1e-14); one rounding when stored in float32.",
    },
}


def output_scale(x, groups, eps, w, b):
    """Condition scale of y (see TOL['output']), rows of `groups` groups."""
    x64 = np.array(x, np.float64)
    n, c = x.shape[:2]
    if x64.size == 0:
        return 1.0
    rows = x64.reshape(n, groups, -1)
    mean = rows.mean(axis=2, keepdims=True)
    invstd = 1.0 / np.sqrt(rows.var(axis=2, keepdims=True) + eps)
    terms = ((np.abs(rows) + np.abs(mean)) * invstd).reshape(x.shape)
    bshape = (1, c) + (1,) * (x.ndim - 2)
    wa = np.abs(np.array(w, np.float64)).reshape(bshape) if w is not None else 1.0
    ba = np.abs(np.array(b, np.float64)).reshape(bshape) if b is not None else 0.0
    return float(np.max(terms * wa + ba)) or 1.0


def assert_close(ours, ref, key, dtype, info, what, scale=None):
    ours = np.asarray(ours, np.float64)
    ref = np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, "%s: %s shape %s != %s" % (info, what, ours.shape, ref.shape)
    rtol, atol = TOL[key][np.dtype(dtype).name]
    if scale is None:
        scale = np.max(np.abs(ref)) if ref.size else 1.0
        scale = scale if scale > 0 else 1.0
    err = np.abs(ours - ref)
    bound = rtol * np.abs(ref) + atol * np.asarray(scale, np.float64)
    bad = ~(err <= bound)
    if np.any(bad):
        i = np.unravel_index(np.argmax(np.where(bad, err / np.maximum(bound, 1e-300), 0)),
                             err.shape)
        raise AssertionError("%s: %s outside tolerance '%s' (rtol %g, atol %g): %d of %d; worst "
                             "at %s: ours %r torch %r |diff| %.3g bound %.3g"
                             % (info, what, key, rtol, atol, int(bad.sum()), bad.size, i,
                                float(ours[i]), float(ref[i]), float(err[i]),
                                float(np.broadcast_to(bound, err.shape)[i])))


def t64(a):
    """The oracle's float64 copy of a, C-contiguous: torch gets the values, not the layout.
    (torch 1.13's instance_norm backward is wrong for N = 1 with a channels_last grad_output:
    it returns gradients off by O(1), where group_norm with G = C and a contiguous grad agree
    with normkit to 1e-15.)"""
    return None if a is None else torch.from_numpy(np.array(a, dtype=np.float64, order="C"))


# ---------------------------------------------------------------------------------------------
# Random cases
# ---------------------------------------------------------------------------------------------
LAYOUTS = ("contiguous", "channels_last", "strided")
EPSILONS = (1e-5, 1e-3, 0.1)
MOMENTA = (0.1, 0.0, 1.0, 0.5)


def _divisors(c):
    return [g for g in range(1, c + 1) if c % g == 0]


class Case:
    def __init__(self, seed, rank, dtype, layout, affine, instance):
        rng = np.random.default_rng(seed)
        self.seed, self.rank, self.layout, self.affine = seed, rank, layout, affine
        self.dtype = np.dtype(dtype)
        c = int(rng.choice([1, 2, 3, 4, 6, 8, 12]))
        while True:
            if rank == 2:
                shape = (int(rng.integers(1, 9)), c)
            elif rank == 3:
                shape = (int(rng.integers(1, 6)), c, int(rng.integers(1, 40)))
            elif rank == 4:
                shape = (int(rng.integers(1, 5)), c, int(rng.integers(1, 10)),
                         int(rng.integers(1, 10)))
            else:
                shape = (int(rng.integers(1, 4)), c, int(rng.integers(1, 5)),
                         int(rng.integers(1, 6)), int(rng.integers(1, 6)))
            if not instance or int(np.prod(shape[2:])) >= 2:
                break
        self.shape = shape
        self.groups = c if instance else int(rng.choice(_divisors(c)))
        self.eps = float(rng.choice(EPSILONS))
        self.momentum = float(rng.choice(MOMENTA))
        self.param_dtype = np.dtype(str(rng.choice(["float32", "float64"])))
        self.track = seed % 3 != 1
        self.rng = rng

    def weight_of(self, c):
        return self.weight if self.weight is not None else np.ones(c)

    def info(self):
        return ("seed=%d shape=%s groups=%d dtype=%s layout=%s affine=%s eps=%g momentum=%g "
                "param_dtype=%s track=%s" % (self.seed, self.shape, self.groups, self.dtype.name,
                                             self.layout, self.affine, self.eps, self.momentum,
                                             self.param_dtype.name, self.track))

    def data(self):
        rng, c = self.rng, self.shape[1]
        # per-(n, c) location and spread, so that rows differ
        lead = self.shape[:2] + (1,) * (len(self.shape) - 2)
        x = rng.standard_normal(self.shape) * rng.uniform(0.5, 2, lead) + rng.uniform(-3, 3, lead)
        x = in_layout(x, self.dtype, self.layout)
        dy = in_layout(rng.standard_normal(self.shape), self.dtype, self.layout)
        w = b = self.weight = None
        if self.affine:
            w = (rng.uniform(0.5, 1.5, c) * rng.choice([-1, 1], c)).astype(self.param_dtype)
            b = rng.standard_normal(c).astype(self.param_dtype)
        self.weight = w
        rm = rng.uniform(-1, 1, c).astype(self.param_dtype)
        rv = rng.uniform(0.5, 2, c).astype(self.param_dtype)
        return x, dy, w, b, rm, rv


def _grid(ranks, instance):
    cases, seed = [], 1000 if instance else 0
    for rank in ranks:
        for dtype in ("float32", "float64"):
            for layout in LAYOUTS:
                for affine in (True, False):
                    cases.append((seed, rank, dtype, layout, affine, instance))
                    seed += 1
    return cases


def _id(c):
    seed, rank, dtype, layout, affine, _ = c
    return "s%d-r%d-%s-%s-%s" % (seed, rank, dtype.replace("float", "f"), layout,
                                 "affine" if affine else "plain")


GN_GRID = _grid((2, 3, 4, 5), instance=False)
IN_GRID = _grid((3, 4, 5), instance=True)


def torch_grads(dy, x, w, fwd):
    """float64 autograd of fwd(x, w, b); absent weight/bias become ones/zeros requiring grad
    (the gradients of the implicit scale and shift)."""
    c = x.shape[1]
    xt = t64(x).requires_grad_(True)
    wt = (t64(w) if w is not None else torch.ones(c, dtype=torch.float64)).requires_grad_(True)
    bt = torch.zeros(c, dtype=torch.float64).requires_grad_(True)
    y = fwd(xt, wt, bt)
    return [g.numpy() for g in torch.autograd.grad(y, [xt, wt, bt], t64(dy))]


def check_grads(case, ours, ref, x, dy, eps, groups):
    gi, gw, gb = ours
    assert gi.shape == x.shape and gi.dtype == x.dtype
    x64 = np.array(x, np.float64)
    n, c = x.shape[:2]
    rows = x64.reshape(n, groups, -1)
    invstd = 1.0 / np.sqrt(rows.var(axis=2, keepdims=True) + eps)
    xs = ((np.abs(rows) + np.abs(rows.mean(axis=2, keepdims=True))) * invstd).reshape(x.shape)
    axes = (0,) + tuple(range(2, x.ndim))
    g = np.abs(np.array(dy, np.float64))
    bshape = (1, c) + (1,) * (x.ndim - 2)
    h = g * (np.abs(np.array(case.weight_of(c), np.float64)).reshape(bshape))
    terms = (h.reshape(n, groups, -1) * invstd).max() if h.size else 0.0
    scale = max(terms, np.max(np.abs(ref[0])) if ref[0].size else 0.0) or 1.0
    assert_close(gi, ref[0], "grad_input", case.dtype, case.info(), "grad_input", scale=scale)
    # scale of the parameter sums: per-channel sum of |terms|
    for name, got, want, scale in (("grad_weight", gw, ref[1], (g * xs).sum(axis=axes)),
                                   ("grad_bias", gb, ref[2], g.sum(axis=axes))):
        dt = np.float32 if np.float32 in (case.dtype, got.dtype) else np.float64
        assert_close(got, want, "grad_param", dt, case.info(), name, scale=scale)


# ---------------------------------------------------------------------------------------------
# Group norm
# ---------------------------------------------------------------------------------------------
def _one_value_per_group_and_sample(x, groups):
    """torch.nn.functional.group_norm refuses N * (C/G) * prod(spatial) == 1 (its batch-norm
    size check: "Expected more than 1 value per channel when training"); normkit computes the
    defined result there: every value is its row's mean, y = bias, grad_weight = 0 exactly,
    grad_input = 0 up to the rounding of gamma invstd g - invstd (gamma g)."""
    return x.shape[0] * (x.shape[1] // groups) * int(np.prod(x.shape[2:])) == 1


@pytest.mark.parametrize("params", GN_GRID, ids=[_id(c) for c in GN_GRID])
def test_group_norm(params):
    check_group_norm(Case(*params))


def check_group_norm(c):
    x, dy, w, b, _, _ = c.data()
    if _one_value_per_group_and_sample(x, c.groups):
        y = group_norm(x, c.groups, w, b, eps=c.eps)
        want = np.broadcast_to((b if b is not None else np.zeros(x.shape[1])).reshape(
            (1, -1) + (1,) * (x.ndim - 2)), x.shape)
        assert np.array_equal(y, want.astype(x.dtype)), c.info()
        gi, gw, gb = group_norm_backward(dy, x, c.groups, w, b, eps=c.eps)
        h = np.abs(np.array(dy, np.float64)) * (np.abs(np.array(w, np.float64)).reshape(
            (1, -1) + (1,) * (x.ndim - 2)) if w is not None else 1.0)
        assert_close(gi, np.zeros(x.shape), "grad_input", c.dtype, c.info(), "grad_input",
                     scale=float(np.max(h)) / np.sqrt(c.eps) or 1.0)
        assert np.all(gw == 0), c.info()
        assert np.array_equal(gb, dy.sum(axis=(0,) + tuple(range(2, x.ndim))).astype(gb.dtype))
        return
    ref = F.group_norm(t64(x), c.groups, t64(w), t64(b), c.eps).numpy()
    y = group_norm(x, c.groups, w, b, eps=c.eps)
    assert y.dtype == x.dtype
    assert stride_order(y) == stride_order(x), "%s: output layout differs" % c.info()
    assert_close(y, ref, "output", c.dtype, c.info(), "y",
                 scale=output_scale(x, c.groups, c.eps, w, b))

    grads = torch_grads(dy, x, w, lambda xt, wt, bt: F.group_norm(xt, c.groups, wt, bt, c.eps))
    ours = group_norm_backward(dy, x, c.groups, w, b, eps=c.eps)
    assert ours[1].dtype == (w.dtype if w is not None else x.dtype)
    check_grads(c, ours, grads, x, dy, c.eps, c.groups)


# ---------------------------------------------------------------------------------------------
# Instance norm
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("params", IN_GRID, ids=[_id(c) for c in IN_GRID])
def test_instance_norm(params):
    check_instance_norm(Case(*params))


def check_instance_norm(c):
    x, dy, w, b, rm, rv = c.data()
    if not c.track:
        rm = rv = None
    trm, trv = t64(rm), t64(rv)
    ref = F.instance_norm(t64(x), trm, trv, t64(w), t64(b), use_input_stats=True,
                          momentum=c.momentum, eps=c.eps).numpy()
    y = instance_norm(x, rm, rv, w, b, use_input_stats=True, momentum=c.momentum, eps=c.eps)
    assert stride_order(y) == stride_order(x), "%s: output layout differs" % c.info()
    assert_close(y, ref, "output", c.dtype, c.info(), "y",
                 scale=output_scale(x, x.shape[1], c.eps, w, b))
    if c.track:
        assert_close(rm, trm.numpy(), "running_stats", c.param_dtype, c.info(), "running_mean")
        assert_close(rv, trv.numpy(), "running_stats", c.param_dtype, c.info(), "running_var")

        # eval mode with the updated statistics: read only
        rm0, rv0 = rm.copy(), rv.copy()
        ref = F.instance_norm(t64(x), t64(rm), t64(rv), t64(w), t64(b), use_input_stats=False,
                              eps=c.eps).numpy()
        y = instance_norm(x, rm, rv, w, b, use_input_stats=False, eps=c.eps)
        assert_close(y, ref, "output", c.dtype, c.info(), "y (use_input_stats=False)")
        assert np.array_equal(rm, rm0) and np.array_equal(rv, rv0)

    grads = torch_grads(dy, x, w, lambda xt, wt, bt: F.instance_norm(
        xt, None, None, wt, bt, use_input_stats=True, eps=c.eps))
    ours = instance_norm_backward(dy, x, w, b, eps=c.eps)
    check_grads(c, ours, grads, x, dy, c.eps, x.shape[1])


# ---------------------------------------------------------------------------------------------
# Odd shapes in every layout: C = 3 and 23 (with and without groups), more channels than one
# rows chunk of the channels-last kernels (64) with groups straddling the chunks, spatial
# 1 / 7 / 17, a spatial extent longer than one block (8192), one sample.
# ---------------------------------------------------------------------------------------------
ODD_SHAPES = [((2, 3, 17), 3), ((3, 3, 7, 1), 1), ((2, 23, 7), 1), ((2, 23, 17), 23),
              ((2, 23, 1, 1), 23), ((2, 70, 3, 7), 10), ((1, 96, 17, 17), 32),
              ((2, 72, 8200), 8), ((1, 130, 1, 7), 13)]


def _odd_cases():
    cases, seed = [], 5000
    for shape, groups in ODD_SHAPES:
        for layout in LAYOUTS:
            for dtype in ("float32", "float64"):
                cases.append((seed, shape, groups, dtype, layout))
                seed += 1
    return cases


def _odd_case(seed, shape, groups, dtype, layout, instance):
    c = Case(seed, len(shape), dtype, layout, seed % 2 == 0, instance)
    c.shape, c.groups = shape, (shape[1] if instance else groups)
    return c


@pytest.mark.parametrize("params", _odd_cases(),
                         ids=["%s-g%d-%s-%s" % ("x".join(map(str, p[1])), p[2], p[3][5:], p[4])
                              for p in _odd_cases()])
def test_odd_shapes(params):
    seed, shape, groups, dtype, layout = params
    check_group_norm(_odd_case(seed, shape, groups, dtype, layout, False))
    if int(np.prod(shape[2:])) >= 2:  # instance norm trains on more than one value
        check_instance_norm(_odd_case(seed, shape, groups, dtype, layout, True))


@pytest.mark.parametrize("shape,groups", [((3, 70, 5, 6), 10), ((2, 23, 9, 4), 23),
                                          ((2, 8, 90, 100), 4)])
def test_channels_last_padded(shape, groups):
    """Channels innermost with stride 1 but padded batch and spatial axes (a slice of a larger
    NHWC array: the rows walk over axes that do not merge) and a sliced batch; the same bits
    as the contiguous copy, close to PyTorch."""
    rng = np.random.default_rng(17)
    n, c, h, w = shape
    values = rng.standard_normal(shape) * 2.0 + 0.5
    dvals = rng.standard_normal(shape)

    def padded(v):
        big = np.zeros((2 * n, h + 1, w + 3, c), np.float32)
        view = big[::2, :h, 1:w + 1, :].transpose(0, 3, 1, 2)
        view[...] = v
        return view

    x, dy = padded(values), padded(dvals)
    assert x.strides[1] == 4 and not x.flags.c_contiguous
    xc, dyc = np.ascontiguousarray(x), np.ascontiguousarray(dy)
    wt = rng.uniform(0.5, 1.5, c).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    for t in (1, 2):
        normkit.set_num_threads(t)
        got = (group_norm(x, groups, wt, b), *group_norm_backward(dy, x, groups, wt, b))
        want = (group_norm(xc, groups, wt, b), *group_norm_backward(dyc, xc, groups, wt, b))
        for k, (a, e) in enumerate(zip(got, want)):
            assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(e).tobytes(), \
                "output %d: padded channels_last differs from contiguous (%d threads)" % (k, t)
    normkit.set_num_threads(1)
    ref = F.group_norm(t64(x), groups, t64(wt), t64(b), 1e-5).numpy()
    assert_close(got[0], ref, "output", np.float32, "padded channels_last", "y",
                 scale=output_scale(x, groups, 1e-5, wt, b))


# ---------------------------------------------------------------------------------------------
# Layouts without copies, out=, threads, errors
# ---------------------------------------------------------------------------------------------
def test_channels_last_is_not_copied_and_out_in_place():
    rng = np.random.default_rng(5)
    nhwc = rng.standard_normal((2, 7, 9, 6)).astype(np.float32)
    x = nhwc.transpose(0, 3, 1, 2)  # NCHW shape, channels-last memory: a view, no copy
    assert np.shares_memory(x, nhwc) and not x.flags.c_contiguous
    w = rng.uniform(0.5, 1.5, 6).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    ref = F.group_norm(t64(x), 3, t64(w), t64(b), 1e-5).numpy()
    y = group_norm(x, 3, w, b)
    assert y.strides == x.strides  # channels-last result for a channels-last input
    assert_close(y, ref, "output", np.float32, "channels_last", "y")
    # out= the input itself: in place, same numbers bit for bit
    before = y.copy()
    res = group_norm(x, 3, w, b, out=x)
    assert res is x
    assert np.array_equal(nhwc.transpose(0, 3, 1, 2), before)
    # instance norm in place too
    x2 = rng.standard_normal((3, 4, 5, 5))
    want = instance_norm(x2, None, None, None, None)
    instance_norm(x2, out=x2)
    assert np.array_equal(x2, want)


@pytest.mark.parametrize("shape,layout", [((4, 8, 64, 72), "contiguous"),
                                          ((4, 8, 64, 72), "channels_last"),
                                          ((2, 72, 30, 31), "channels_last"),
                                          ((2, 72, 30, 31), "strided")])
def test_threads_bitwise(shape, layout):
    """The same bits for 1-4 threads (> 65536 elements, so that threads are used), and the
    same bits in every layout of the same values."""
    rng = np.random.default_rng(9)
    values = rng.standard_normal(shape)
    x = in_layout(values, np.float32, layout)
    dy = in_layout(rng.standard_normal(shape), np.float32, layout)
    c = shape[1]
    rm0, rv0 = np.zeros(c, np.float32), np.ones(c, np.float32)
    xc, dyc = np.ascontiguousarray(x), np.ascontiguousarray(dy)
    outs = []
    for t in (1, 2, 3, 4):
        normkit.set_num_threads(t)
        rm, rv = rm0.copy(), rv0.copy()
        outs.append((group_norm(x, 4), *group_norm_backward(dy, x, 4),
                     instance_norm(x, rm, rv), rm, rv, *instance_norm_backward(dy, x)))
    normkit.set_num_threads(1)
    rm, rv = rm0.copy(), rv0.copy()
    contiguous = (group_norm(xc, 4), *group_norm_backward(dyc, xc, 4),
                  instance_norm(xc, rm, rv), rm, rv, *instance_norm_backward(dyc, xc))
    for t, o in enumerate(outs[1:], start=2):
        for k, (a, b) in enumerate(zip(outs[0], o)):
            assert a.tobytes() == b.tobytes(), "output %d differs between 1 and %d threads" % (k, t)
    for k, (a, b) in enumerate(zip(outs[0], contiguous)):
        assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes(), \
            "output %d differs between %s and contiguous" % (k, layout)


def test_errors():
    x = np.zeros((2, 6, 4), np.float32)
    with pytest.raises(normkit.NormkitError, match="divisible by num_groups") as e:
        group_norm(x, 4)
    assert isinstance(e.value, RuntimeError) and isinstance(e.value, ValueError)
    with pytest.raises(normkit.NormkitError, match="divisible by num_groups"):
        group_norm_backward(x, x, 5)
    with pytest.raises(normkit.NormkitError, match="num_groups must be >= 1"):
        group_norm(x, 0)
    with pytest.raises(TypeError):
        group_norm(x, 2.0)
    # torch: "Expected more than 1 spatial element when training"
    one = np.zeros((2, 3, 1, 1))
    with pytest.raises(ValueError, match="expected more than 1 spatial element when training"):
        instance_norm(one)
    with pytest.raises(Exception):
        F.instance_norm(torch.from_numpy(one))
    # eval with one spatial element is fine, as in torch
    y = instance_norm(one, np.zeros(3), np.ones(3), use_input_stats=False)
    assert np.all(y == 0)
    with pytest.raises(ValueError, match="required when use_input_stats=False"):
        instance_norm(x.astype(np.float64), use_input_stats=False)
    with pytest.raises(ValueError, match="both be given"):
        instance_norm(x, np.zeros(6, np.float32))
    with pytest.raises(normkit.NormkitError, match="momentum must be in"):
        instance_norm(x, np.zeros(6, np.float32), np.ones(6, np.float32), momentum=2.0)
    with pytest.raises(ValueError, match="rank >= 3"):
        instance_norm(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="expected shape"):
        group_norm(x, 2, weight=np.ones(5, np.float32))
    # nothing was written by a failing call
    rm, rv = np.zeros(3), np.ones(3)
    with pytest.raises(ValueError):
        instance_norm(one, rm, rv)
    assert np.all(rm == 0) and np.all(rv == 1)
