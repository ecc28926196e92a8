"""Loading libnormkit, the ctypes mirror of its structs and prototypes, the module context.

Everything that knows the C ABI lives here; the op modules only build nk_tensor views and call
`call(...)`. The structs mirror include/normkit.h field for field: change both together.
"""

import atexit
import ctypes
import os
import threading
import warnings

# ---- constants mirrored from normkit.h -------------------------------------------------------

NK_MAX_DIMS = 8

NK_OK = 0
NK_WARN_NONFINITE_STATS = 1

NK_F32 = 1
NK_F64 = 2

NK_MOMENTUM_PYTORCH = 0
NK_MOMENTUM_ONNX = 1
NK_MOMENTUM_CUMULATIVE = 2

NK_BN_USE_SCALE = 0x1
NK_BN_USE_SHIFT = 0x2
NK_BN_FUSE_RELU = 0x4


# ---- structs ---------------------------------------------------------------------------------

class NkTensor(ctypes.Structure):
    """struct nk_tensor: a non-owning view, strides in elements (not bytes)."""
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("dtype", ctypes.c_int),          # nk_dtype (a C enum: int-sized)
        ("ndim", ctypes.c_int),
        ("dims", ctypes.c_int64 * NK_MAX_DIMS),
        ("strides", ctypes.c_int64 * NK_MAX_DIMS),
    ]


class NkBatchnormParams(ctypes.Structure):
    """struct nk_batchnorm_params."""
    _fields_ = [
        ("eps", ctypes.c_double),
        ("momentum", ctypes.c_double),
        ("momentum_kind", ctypes.c_int),  # nk_momentum_kind
        ("unbiased_running_var", ctypes.c_int),
        ("flags", ctypes.c_uint),
    ]


_P = ctypes.POINTER
_T = _P(NkTensor)
_CTX = ctypes.c_void_p  # nk_ctx * (opaque)

_PROTOTYPES = {
    # name: (restype, argtypes)
    "nk_status_str": (ctypes.c_char_p, [ctypes.c_int]),
    "nk_ctx_create": (ctypes.c_int, [_P(_CTX)]),
    "nk_ctx_destroy": (None, [_CTX]),
    "nk_ctx_set_num_threads": (ctypes.c_int, [_CTX, ctypes.c_int]),
    "nk_ctx_get_num_threads": (ctypes.c_int, [_CTX]),
    "nk_ctx_set_force_ref": (ctypes.c_int, [_CTX, ctypes.c_int]),
    "nk_ctx_get_force_ref": (ctypes.c_int, [_CTX]),
    "nk_ctx_last_error": (ctypes.c_char_p, [_CTX]),
    "nk_batchnorm_params_default": (None, [_P(NkBatchnormParams)]),
    "nk_batchnorm_forward_train": (ctypes.c_int, [
        _CTX, _P(NkBatchnormParams), _T, _T, _T, _T,  # ctx, p, x, gamma, beta, y
        _T, _T, _T, _T,                               # save_mean, save_invstd, rmean, rvar
        _P(ctypes.c_int64), ctypes.c_void_p, ctypes.c_size_t]),
    "nk_batchnorm_forward_inference": (ctypes.c_int, [
        _CTX, _P(NkBatchnormParams), _T, _T, _T, _T, _T, _T]),  # x, gamma, beta, mean, var, y
    "nk_batchnorm_backward": (ctypes.c_int, [
        _CTX, _P(NkBatchnormParams), _T, _T, _T,     # x, dy, gamma
        _T, _T, _T,                                  # save_mean, save_invstd, y
        _T, _T, _T, ctypes.c_void_p, ctypes.c_size_t]),  # dx, dgamma, dbeta, workspace
    "nk_batchnorm_backward_frozen": (ctypes.c_int, [
        _CTX, _P(NkBatchnormParams), _T, _T, _T,     # x, dy, gamma
        _T, _T, _T,                                  # mean, var, y
        _T, _T, _T, ctypes.c_void_p, ctypes.c_size_t]),  # dx, dgamma, dbeta, workspace
    "nk_batchnorm_add_relu_forward_train": (ctypes.c_int, [
        _CTX, _P(NkBatchnormParams), _T, _T, _T, _T, _T,  # ctx, p, x, z, gamma, beta, y
        _T, _T, _T, _T,                                   # save_mean, save_invstd, rmean, rvar
        _P(ctypes.c_int64), ctypes.c_void_p, ctypes.c_size_t]),
    "nk_batchnorm_add_relu_forward_inference": (ctypes.c_int, [
        _CTX, _P(NkBatchnormParams), _T, _T, _T, _T, _T, _T, _T]),  # x, z, gamma, beta, mean, var, y
    "nk_batchnorm_add_relu_backward": (ctypes.c_int, [
        _CTX, _P(NkBatchnormParams), _T, _T, _T,     # x, dy, gamma
        _T, _T, _T,                                  # save_mean, save_invstd, y
        _T, _T, _T, _T, ctypes.c_void_p, ctypes.c_size_t]),  # dx, dz, dgamma, dbeta, workspace
}


# ---- finding and loading the library ---------------------------------------------------------

_LIB_NAME = "libnormkit.so"
_PKG_DIR = os.path.dirname(os.path.abspath(__file__))
_REPO_ROOT = os.path.dirname(os.path.dirname(_PKG_DIR))  # python/normkit -> repo root


def _candidates():
    """Where to look, in order: $NORMKIT_LIB, next to the package, build/ in the repo."""
    env = os.environ.get("NORMKIT_LIB")
    if env:
        # An explicit choice is never silently replaced by another library.
        return [env]
    return [os.path.join(_PKG_DIR, _LIB_NAME), os.path.join(_REPO_ROOT, "build", _LIB_NAME)]


def _load():
    tried = []
    for path in _candidates():
        if not os.path.exists(path):
            tried.append(path + " (not found)")
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            raise ImportError("normkit: cannot load %s: %s" % (path, e)) from e
        missing = [n for n in _PROTOTYPES if not hasattr(lib, n)]
        if missing:
            raise ImportError("normkit: %s does not export %s" % (path, ", ".join(missing)))
        for name, (restype, argtypes) in _PROTOTYPES.items():
            fn = getattr(lib, name)
            fn.restype = restype
            fn.argtypes = argtypes
        return lib, path
    raise ImportError("normkit: shared library not found; tried " + "; ".join(tried) +
                      ". Build it (cmake --build build) or set NORMKIT_LIB=/path/to/libnormkit.so")


lib, library_path = _load()


# ---- errors ----------------------------------------------------------------------------------

class NormkitError(ValueError, RuntimeError):
    """An error reported by libnormkit (negative nk_status).

    Derives from both ValueError and RuntimeError so that code written for PyTorch keeps
    working: torch raises ValueError for "expected more than 1 value per channel when
    training" and RuntimeError for most shape errors.

    Attributes: status (the negative nk_status code), status_name ("NK_ERR_SHAPE: ..."),
    detail (nk_ctx_last_error's message).
    """

    def __init__(self, status, detail):
        self.status = status
        self.status_name = status_str(status)
        self.detail = detail
        super().__init__(detail if detail else self.status_name)


NormkitError.__module__ = "normkit"  # shown as normkit.NormkitError in tracebacks


def status_str(status):
    s = lib.nk_status_str(status)
    return s.decode("utf-8", "replace") if s else "status %d" % status


# ---- the module context ----------------------------------------------------------------------
# One nk_ctx for the module. ctypes releases the GIL during a call and a context must not be
# used by two threads at once, so every call goes through _ctx_lock; the lock also keeps the
# last-error message paired with the call that produced it.

_ctx = _CTX()
_status = lib.nk_ctx_create(ctypes.byref(_ctx))
if _status < 0 or not _ctx.value:
    raise ImportError("normkit: nk_ctx_create failed: " + status_str(_status))
_ctx_lock = threading.Lock()


def _destroy_ctx():
    global _ctx
    if _ctx is not None and _ctx.value:
        lib.nk_ctx_destroy(_ctx)
    _ctx = None


atexit.register(_destroy_ctx)


def call(fn, *args, stacklevel=3):
    """fn(ctx, *args) under the context lock; raises NormkitError on a negative status, warns
    (RuntimeWarning) on a positive one. Returns the status."""
    with _ctx_lock:
        status = fn(_ctx, *args)
        detail = lib.nk_ctx_last_error(_ctx) if status != NK_OK else None
    if status == NK_OK:
        return status
    detail = detail.decode("utf-8", "replace") if detail else ""
    if status < 0:
        raise NormkitError(status, detail)
    warnings.warn(detail or status_str(status), RuntimeWarning, stacklevel=stacklevel)
    return status


def set_num_threads(n):
    """Number of threads the normkit ops may use (n >= 1). Results do not depend on it."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError("set_num_threads: n must be an int, got %r" % (n,))
    if not -2**31 <= n < 2**31:
        raise ValueError("set_num_threads: n = %d does not fit in a C int" % n)
    call(lib.nk_ctx_set_num_threads, ctypes.c_int(n))


def get_num_threads():
    with _ctx_lock:
        return int(lib.nk_ctx_get_num_threads(_ctx))


def set_force_ref(on):
    """True forces the scalar reference kernels (same as NK_FORCE_REF=1)."""
    call(lib.nk_ctx_set_force_ref, ctypes.c_int(1 if on else 0))


def get_force_ref():
    with _ctx_lock:
        return bool(lib.nk_ctx_get_force_ref(_ctx))
