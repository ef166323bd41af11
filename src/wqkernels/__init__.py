"""wqkernels: fast, exact pruning and quantization of neural-network weights on the CPU.

Kernels are Cython loops over float32 buffers with the GIL released (OpenMP where available);
every public function has a pure-NumPy twin in :mod:`wqkernels.reference`.

The names below are imported on first use, so that ``import wqkernels`` costs nothing until
one is needed and the command line can take Ctrl-C from its first instant.
"""
import importlib

from ._version import __version__

#: public name -> the module that defines it
_NAMES = {
    "QuantizedArray": ".quantization", "quantize": ".quantization", "dequantize": ".quantization",
    "fake_quantize": ".quantization", "PackedArray": ".quantization", "quantize_packed": ".quantization",
    "pack_bits": ".packing", "unpack_bits": ".packing", "packed_size": ".packing",
    "prune": ".pruning", "prune_n_m": ".pruning", "prune_channels": ".pruning", "prune_global": ".pruning",
    "clip": ".pruning", "shrink": ".pruning",
    "sparsity": ".statistics", "error": ".statistics", "ErrorStats": ".statistics",
    "DEFAULT_MIN_SIZE": ".allocation", "SparsityWarning": ".allocation", "default_method": ".allocation",
    "default_min_size": ".allocation", "prune_model": ".allocation", "bits_for_sqnr": ".allocation",
    "inspect": ".files", "load_weights": ".files", "rewrite": ".files", "restore": ".files",
    "Recipe": ".files", "Report": ".files", "WeightInfo": ".files", "KerasFileError": ".files",
    "rewrite_many": ".batch", "BatchResult": ".batch", "BatchError": ".batch",
    "max_threads": ".threads", "set_max_threads": ".threads",
}

__all__ = ["__version__", *_NAMES]


def __getattr__(name: str):
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'wqkernels' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # found once: later lookups are plain attribute reads
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_NAMES))
