"""Batch normalization: torch.nn.functional.batch_norm on NumPy arrays, and its backward.

    training:  y = (x - mean_b) / sqrt(var_b + eps) * weight + bias     (biased var_b)
               running_mean = (1 - m) running_mean + m mean_b
               running_var  = (1 - m) running_var  + m var_b * M / (M - 1)   (M values/channel)
               momentum=None: m = 1 / num_batches_tracked (after its increment)
    eval:      y = (x - running_mean) / sqrt(running_var + eps) * weight + bias
    backward (training, batch statistics), xhat = (x - mean_b) / sqrt(var_b + eps):
               grad_bias = sum g,  grad_weight = sum g * xhat
               grad_input = weight / sqrt(var_b + eps)
                            * (g - grad_bias / M - xhat * grad_weight / M)
    backward (training=False, fixed running statistics):
               grad_input = weight / sqrt(running_var + eps) * g
    (g = grad_output, masked where the output is <= 0 with fuse_relu)
    residual block (batch_norm_add_relu): y = max(0, batch_norm(x) + z), one fused pass;
               grad_residual = g,  grad_input etc. as above,  g = grad_output where y > 0
"""

import ctypes

import numpy as np

from ._lib import (NK_BN_FUSE_RELU, NK_BN_USE_SCALE, NK_BN_USE_SHIFT, NK_MOMENTUM_CUMULATIVE,
                   NK_MOMENTUM_PYTORCH, NkBatchnormParams, call, lib)
from ._tensor import (as_float_array, channel_tensor, check_alias, check_out, ref, tensor)

# torch.nn.functional.batch_norm's defaults; the C library holds the same values
# (NK_BN_DEFAULT_MOMENTUM, NK_BN_DEFAULT_EPS).
DEFAULT_MOMENTUM = 0.1
DEFAULT_EPS = 1e-5


def _params(eps, momentum, use_scale, use_shift, fuse_relu):
    p = NkBatchnormParams()
    lib.nk_batchnorm_params_default(ctypes.byref(p))  # PyTorch conventions, unbiased running var
    p.eps = float(eps)
    if momentum is None:
        p.momentum_kind = NK_MOMENTUM_CUMULATIVE
    else:
        p.momentum_kind = NK_MOMENTUM_PYTORCH
        p.momentum = float(momentum)
    p.flags = ((NK_BN_USE_SCALE if use_scale else 0) | (NK_BN_USE_SHIFT if use_shift else 0) |
               (NK_BN_FUSE_RELU if fuse_relu else 0))
    return p


def _input(input, name="input"):
    x = as_float_array(input, name)
    if x.ndim < 2:
        raise ValueError("%s: batch norm needs rank >= 2 (N, C, ...), got shape %s"
                         % (name, x.shape))
    return x


def _optional_float(a, name):
    """Read-only per-channel argument: None, or an array (array-likes become float64)."""
    return None if a is None else as_float_array(a, name)


def _optional_channel(a, name, channels):
    return None if a is None else channel_tensor(a, name, channels)


def _counter(num_batches_tracked):
    """Pointer to a 1-element int64 array updated in place."""
    n = num_batches_tracked
    if not isinstance(n, np.ndarray) or n.dtype != np.int64 or n.size != 1:
        raise TypeError("num_batches_tracked must be a 1-element numpy int64 array "
                        "(e.g. np.zeros(1, np.int64)), got %r" % (n,))
    if not n.flags.writeable:
        raise ValueError("num_batches_tracked: array is read-only")
    if n.ctypes.data % n.itemsize != 0:
        raise ValueError("num_batches_tracked: data pointer is not aligned")
    return ctypes.cast(n.ctypes.data, ctypes.POINTER(ctypes.c_int64))


def _check_running(running_mean, running_var, training, momentum, num_batches_tracked):
    """The running-statistics arguments of a forward; returns whether they are tracked."""
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must both be given or both be None")
    track = running_mean is not None
    if not training and not track:
        raise ValueError("running_mean and running_var are required when training=False")
    if training and track and momentum is None and num_batches_tracked is None:
        raise ValueError("momentum=None (cumulative average) needs num_batches_tracked, "
                         "e.g. np.zeros(1, np.int64), kept across calls")
    return track


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=DEFAULT_MOMENTUM, eps=DEFAULT_EPS, out=None, *,
               num_batches_tracked=None, fuse_relu=False):
    """Batch normalization over axis 1, as torch.nn.functional.batch_norm.

    input: (N, C, ...) float32 or float64, any layout with non-negative strides (contiguous,
        channels-last viewed as NCHW, sliced views); never copied.
    running_mean, running_var: (C,) float32/float64. training=True: updated in place if given
        (PyTorch convention, unbiased running variance); both None gives batch statistics only.
        training=False: required, read only.
    weight, bias: (C,) or None (scale 1 / shift 0).
    momentum: float in [0, 1], or None for the cumulative average m = 1/num_batches_tracked
        (torch.nn.BatchNorm*d(momentum=None)); that needs num_batches_tracked.
    num_batches_tracked: 1-element int64 array, incremented in place in training mode when
        running statistics are given (what torch's module keeps; the functional API has no
        place for it). Required for momentum=None, optional otherwise, ignored in eval.
    fuse_relu: return max(0, batch_norm(...)).
    out: array of input's shape and dtype to write to (may be input itself: in place).
        Default: a new array with input's memory layout (channels-last stays channels-last).
    Returns out. Raises NormkitError for errors the library reports (one value per channel
    in training, invalid eps/momentum, ...); warns RuntimeWarning when the batch statistics
    are not finite (output written, running statistics left untouched).
    """
    return _forward(_input(input), None, running_mean, running_var, weight, bias, training,
                    momentum, eps, out, num_batches_tracked, fuse_relu)


def _forward(x, z, running_mean, running_var, weight, bias, training, momentum, eps, out,
             num_batches_tracked, fuse_relu):
    """batch_norm (z None) or batch_norm_add_relu (z the residual, already checked)."""
    channels = x.shape[1]
    track = _check_running(running_mean, running_var, training, momentum, num_batches_tracked)

    if out is None:
        y = np.empty_like(x)  # order='K': keeps the input's stride order
    else:
        y = check_out(out, "out", x.shape, x.dtype)
        check_alias(y, "out", x, "input", exact_ok=True)
        if z is not None:
            check_alias(y, "out", z, "residual", exact_ok=True)

    weight, bias = _optional_float(weight, "weight"), _optional_float(bias, "bias")
    if not training:
        running_mean = as_float_array(running_mean, "running_mean")
        running_var = as_float_array(running_var, "running_var")
    if not (training and track):
        # momentum is unused here; torch ignores it, the library would still range-check it
        momentum = DEFAULT_MOMENTUM
    p = _params(eps, momentum, weight is not None, bias is not None, fuse_relu)
    tx = tensor(x, "input")
    ty = tensor(y, "out", writable=True)
    tg = _optional_channel(weight, "weight", channels)
    tb = _optional_channel(bias, "bias", channels)
    # the fused calls take the residual right after x; the rest of the arguments are the same
    head = (ref(tx),) if z is None else (ref(tx), ref(tensor(z, "residual")))
    if training:
        trm = trv = counter = None
        if track:
            trm = channel_tensor(running_mean, "running_mean", channels, writable=True)
            trv = channel_tensor(running_var, "running_var", channels, writable=True)
            if num_batches_tracked is not None:
                counter = _counter(num_batches_tracked)
        fn = (lib.nk_batchnorm_forward_train if z is None
              else lib.nk_batchnorm_add_relu_forward_train)
        call(fn, ctypes.byref(p), *head, ref(tg), ref(tb), ref(ty), None, None, ref(trm),
             ref(trv), counter, None, 0)
    else:
        trm = channel_tensor(running_mean, "running_mean", channels)
        trv = channel_tensor(running_var, "running_var", channels)
        fn = (lib.nk_batchnorm_forward_inference if z is None
              else lib.nk_batchnorm_add_relu_forward_inference)
        call(fn, ctypes.byref(p), *head, ref(tg), ref(tb), ref(trm), ref(trv), ref(ty))
    return y


def _grad_outputs(out, x, channels, param_dtype):
    """out=None | grad_input array | (grad_input, grad_weight, grad_bias), None entries
    allocated."""
    if out is None or isinstance(out, np.ndarray):
        out = (out, None, None)
    elif not (isinstance(out, (tuple, list)) and len(out) == 3):
        raise TypeError("out must be None, an array (grad_input) or a tuple "
                        "(grad_input, grad_weight, grad_bias)")
    gi, gw, gb = out
    gi = np.empty_like(x) if gi is None else check_out(gi, "out[0] (grad_input)", x.shape,
                                                         x.dtype)
    if gw is None:
        gw = np.empty(channels, param_dtype)
    elif not isinstance(gw, np.ndarray) or gw.shape != (channels,):
        raise ValueError("out[1] (grad_weight): expected an array of shape (%d,)" % channels)
    if gb is None:
        gb = np.empty(channels, param_dtype)
    elif not isinstance(gb, np.ndarray) or gb.shape != (channels,):
        raise ValueError("out[2] (grad_bias): expected an array of shape (%d,)" % channels)
    check_alias(gw, "out[1] (grad_weight)", gb, "out[2] (grad_bias)", exact_ok=False)
    return gi, gw, gb


def batch_norm_backward(grad_output, input, weight=None, running_mean=None, running_var=None,
                        training=True, eps=DEFAULT_EPS, out=None, *, bias=None,
                        fuse_relu=False):
    """Gradients of batch_norm: returns (grad_input, grad_weight, grad_bias).

    training=True: the batch statistics are recomputed from input (as the forward in training
        mode used them); running_mean/running_var are ignored.
    training=False: the running statistics (required) are constants, as in eval mode.
    grad_weight = sum(g * xhat) and grad_bias = sum(g) over every axis but 1 are always
        returned, also when weight/bias are None: they are then the gradients with respect to
        the implicit scale 1 and shift 0. Their dtype is weight's (input's when weight is None).
    fuse_relu: gradients of max(0, batch_norm(...)); the forward output is recomputed, which
        needs the same bias as the forward.
    out: grad_input array, or a tuple (grad_input, grad_weight, grad_bias) whose None entries
        are allocated. grad_input may be grad_output itself (in place). grad_input defaults to
        input's memory layout.
    """
    x = _input(input)
    dy = _input(grad_output, "grad_output")
    if dy.shape != x.shape:
        raise ValueError("grad_output shape %s differs from input shape %s"
                         % (dy.shape, x.shape))
    if dy.dtype != x.dtype:
        raise TypeError("grad_output dtype %s differs from input dtype %s"
                        % (dy.dtype, x.dtype))
    channels = x.shape[1]
    weight, bias = _optional_float(weight, "weight"), _optional_float(bias, "bias")
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must both be given or both be None")
    if not training:
        if running_mean is None:
            raise ValueError("running_mean and running_var are required when training=False")
        running_mean = as_float_array(running_mean, "running_mean")
        running_var = as_float_array(running_var, "running_var")

    gi, gw, gb = _grad_outputs(out, x, channels,
                               weight.dtype if weight is not None else x.dtype)
    check_alias(gi, "grad_input", dy, "grad_output", exact_ok=True)
    check_alias(gi, "grad_input", x, "input", exact_ok=False)

    p = _params(eps, DEFAULT_MOMENTUM, weight is not None, bias is not None, fuse_relu)
    tx, tdy = tensor(x, "input"), tensor(dy, "grad_output")
    tg = _optional_channel(weight, "weight", channels)
    tb = _optional_channel(bias, "bias", channels)
    tgi = tensor(gi, "grad_input", writable=True)
    tgw = channel_tensor(gw, "grad_weight", channels, writable=True)
    tgb = channel_tensor(gb, "grad_bias", channels, writable=True)

    if training:
        # Scratch forward: y (needed only for the ReLU mask) and the saved batch statistics.
        y = np.empty_like(x)
        save_mean = np.zeros(channels, np.float64)
        save_invstd = np.zeros(channels, np.float64)
        ty = tensor(y, "y")
        tsm, tsi = tensor(save_mean, "save_mean"), tensor(save_invstd, "save_invstd")
        call(lib.nk_batchnorm_forward_train, ctypes.byref(p), ref(tx), ref(tg), ref(tb),
             ref(ty), ref(tsm), ref(tsi), None, None, None, None, 0)
        call(lib.nk_batchnorm_backward, ctypes.byref(p), ref(tx), ref(tdy), ref(tg),
             ref(tsm), ref(tsi), ref(ty) if fuse_relu else None, ref(tgi), ref(tgw),
             ref(tgb), None, 0)
    else:
        trm = channel_tensor(running_mean, "running_mean", channels)
        trv = channel_tensor(running_var, "running_var", channels)
        ty = None
        if fuse_relu:
            y = np.empty_like(x)
            ty = tensor(y, "y")
            call(lib.nk_batchnorm_forward_inference, ctypes.byref(p), ref(tx), ref(tg),
                 ref(tb), ref(trm), ref(trv), ref(ty))
        call(lib.nk_batchnorm_backward_frozen, ctypes.byref(p), ref(tx), ref(tdy), ref(tg),
             ref(trm), ref(trv), ref(ty), ref(tgi), ref(tgw), ref(tgb), None, 0)
    return gi, gw, gb


def batch_norm_add_relu(input, residual, running_mean, running_var, weight=None, bias=None,
                        training=False, momentum=DEFAULT_MOMENTUM, eps=DEFAULT_EPS, out=None, *,
                        num_batches_tracked=None):
    """relu(batch_norm(input, ...) + residual) in one fused pass (the end of a ResNet block).

    Arguments as batch_norm's (running statistics updated in place in training mode, the same
    errors); residual: an array of input's shape and dtype, any layout. out may be input or
    residual itself (in place). The sum is formed in double before the one rounding, so
    float32 results may differ from float32 torch by one rounding of batch_norm(input).
    """
    x = _input(input)
    z = _input(residual, "residual")
    if z.shape != x.shape:
        raise ValueError("residual shape %s differs from input shape %s" % (z.shape, x.shape))
    if z.dtype != x.dtype:
        raise TypeError("residual dtype %s differs from input dtype %s" % (z.dtype, x.dtype))
    return _forward(x, z, running_mean, running_var, weight, bias, training, momentum, eps,
                    out, num_batches_tracked, False)


def batch_norm_add_relu_backward(grad_output, input, residual, weight=None, bias=None,
                                 eps=DEFAULT_EPS):
    """Gradients of batch_norm_add_relu in training mode (batch statistics):
    returns (grad_input, grad_residual, grad_weight, grad_bias).

    The forward's output (its ReLU mask) and batch statistics are recomputed from input,
    residual, weight and bias, which must be the forward's. grad_weight / grad_bias are
    returned also when weight / bias are None (gradients at the implicit scale 1 / shift 0),
    in weight's dtype (input's when weight is None). Gradients have input's memory layout.
    """
    x = _input(input)
    z = _input(residual, "residual")
    dy = _input(grad_output, "grad_output")
    for a, name in ((z, "residual"), (dy, "grad_output")):
        if a.shape != x.shape:
            raise ValueError("%s shape %s differs from input shape %s" % (name, a.shape, x.shape))
        if a.dtype != x.dtype:
            raise TypeError("%s dtype %s differs from input dtype %s" % (name, a.dtype, x.dtype))
    channels = x.shape[1]
    weight, bias = _optional_float(weight, "weight"), _optional_float(bias, "bias")
    gi, gw, gb = _grad_outputs(None, x, channels,
                               weight.dtype if weight is not None else x.dtype)
    gz = np.empty_like(x)
    p = _params(eps, DEFAULT_MOMENTUM, weight is not None, bias is not None, False)
    tx, tz, tdy = tensor(x, "input"), tensor(z, "residual"), tensor(dy, "grad_output")
    tg = _optional_channel(weight, "weight", channels)
    tb = _optional_channel(bias, "bias", channels)
    y = np.empty_like(x)
    save_mean = np.zeros(channels, np.float64)
    save_invstd = np.zeros(channels, np.float64)
    ty = tensor(y, "y")
    tsm, tsi = tensor(save_mean, "save_mean"), tensor(save_invstd, "save_invstd")
    call(lib.nk_batchnorm_add_relu_forward_train, ctypes.byref(p), ref(tx), ref(tz), ref(tg),
         ref(tb), ref(ty), ref(tsm), ref(tsi), None, None, None, None, 0)
    call(lib.nk_batchnorm_add_relu_backward, ctypes.byref(p), ref(tx), ref(tdy), ref(tg),
         ref(tsm), ref(tsi), ref(ty), ref(tensor(gi, "grad_input", writable=True)),
         ref(tensor(gz, "grad_residual", writable=True)),
         ref(channel_tensor(gw, "grad_weight", channels, writable=True)),
         ref(channel_tensor(gb, "grad_bias", channels, writable=True)), None, 0)
    return gi, gz, gw, gb


__all__ = ["batch_norm", "batch_norm_backward", "batch_norm_add_relu",
           "batch_norm_add_relu_backward"]
