"""Pure-NumPy twins of every public function: simple and obviously correct.

They are the test oracle (the fast functions must agree with them bit for bit) and the
baseline of the benchmarks.  They take the same arguments as the fast functions but validate
only what they need to compute.
"""
from .packing import pack_bits, unpack_bits
from .quantization import dequantize, fake_quantize, quantize, quantize_packed

__all__ = ["quantize", "quantize_packed", "dequantize", "fake_quantize", "pack_bits", "unpack_bits"]
from .pruning import clip, prune, prune_channels, prune_global, prune_n_m, shrink  # noqa: E402
from .statistics import error, sparsity  # noqa: E402

__all__ += ["prune", "prune_n_m", "prune_channels", "prune_global", "clip", "shrink", "sparsity", "error"]
from .allocation import bits_for_sqnr, prune_model  # noqa: E402

__all__ += ["prune_model", "bits_for_sqnr"]
