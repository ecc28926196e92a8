"""normkit: batch normalization and its family, NumPy binding over libnormkit (ctypes).

Functional API shaped like torch.nn.functional, on NumPy arrays, no copies:

    import numpy as np, normkit
    x = np.random.randn(8, 16, 32, 32).astype(np.float32)
    rm, rv = np.zeros(16, np.float32), np.ones(16, np.float32)
    y = normkit.batch_norm(x, rm, rv, training=True)      # rm, rv updated in place
    gx, gw, gb = normkit.batch_norm_backward(np.ones_like(x), x)

The shared library is found via $NORMKIT_LIB, else next to this package
(normkit/libnormkit.so), else build/libnormkit.so in the repository. See python/README.md.
"""

from ._lib import (NormkitError, get_force_ref, get_num_threads, library_path, set_force_ref,
                   set_num_threads)
from .batchnorm import (batch_norm, batch_norm_add_relu, batch_norm_add_relu_backward,
                        batch_norm_backward)
from .groupnorm import group_norm, group_norm_backward, instance_norm, instance_norm_backward
from .rownorm import (layer_norm, layer_norm_backward, layer_norm_channels,
                      layer_norm_channels_backward, mean_variance_normalization,
                      mean_variance_normalization_backward, rms_norm, rms_norm_backward,
                      weight_standardize, weight_standardize_backward)
from .variants import (batch_renorm, batch_renorm_backward, batch_renorm_schedule,
                       cosine_linear, cosine_linear_backward, ghost_batch_norm,
                       ghost_batch_norm_backward, masked_batch_norm, masked_batch_norm_backward,
                       recurrent_batch_norm, streaming_norm, streaming_norm_backward,
                       weight_norm, weight_norm_backward)

__version__ = "0.1.0"

__all__ = ["NormkitError", "batch_norm", "batch_norm_backward", "batch_norm_add_relu",
           "batch_norm_add_relu_backward", "get_num_threads",
           "set_num_threads", "get_force_ref", "set_force_ref", "library_path",
           "group_norm", "group_norm_backward", "instance_norm", "instance_norm_backward",
           "layer_norm", "layer_norm_backward", "layer_norm_channels",
           "layer_norm_channels_backward", "mean_variance_normalization",
           "mean_variance_normalization_backward", "rms_norm", "rms_norm_backward",
           "weight_standardize", "weight_standardize_backward",
           "batch_renorm", "batch_renorm_backward", "batch_renorm_schedule", "ghost_batch_norm",
           "ghost_batch_norm_backward", "masked_batch_norm", "masked_batch_norm_backward",
           "recurrent_batch_norm", "weight_norm", "weight_norm_backward", "cosine_linear",
           "cosine_linear_backward", "streaming_norm", "streaming_norm_backward"]
