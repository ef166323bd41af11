"""wqkernels: fast, exact pruning and quantization of neural-network weights on the CPU.

Kernels are Cython loops over float32 buffers with the GIL released (OpenMP where available);
every public function has a pure-NumPy twin in :mod:`wqkernels.reference`.
"""
from ._version import __version__
from .packing import pack_bits, packed_size, unpack_bits
from .quantization import QuantizedArray, dequantize, fake_quantize, quantize

__all__ = [
    "__version__",
    "QuantizedArray",
    "quantize",
    "dequantize",
    "fake_quantize",
    "pack_bits",
    "unpack_bits",
    "packed_size",
]
from .pruning import clip, prune, prune_channels, prune_global, prune_n_m, shrink  # noqa: E402
from .statistics import ErrorStats, error, sparsity  # noqa: E402

__all__ += ["prune", "prune_n_m", "prune_channels", "prune_global", "clip", "shrink",
            "sparsity", "error", "ErrorStats"]
from .allocation import (DEFAULT_MIN_SIZE, SparsityWarning, bits_for_sqnr, default_method,  # noqa: E402
                         default_min_size, prune_model)

__all__ += ["DEFAULT_MIN_SIZE", "SparsityWarning", "default_method", "default_min_size", "prune_model",
            "bits_for_sqnr"]

from .files import KerasFileError, Recipe, Report, WeightInfo, inspect, load_weights, restore, rewrite

__all__ += ["inspect", "load_weights", "rewrite", "restore", "Recipe", "Report", "WeightInfo", "KerasFileError"]

from .batch import BatchError, BatchResult, rewrite_many  # noqa: E402

__all__ += ["rewrite_many", "BatchResult", "BatchError"]

from .threads import max_threads, set_max_threads  # noqa: E402

__all__ += ["max_threads", "set_max_threads"]
