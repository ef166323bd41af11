"""What a rewrite does to the weights: the :class:`Recipe`, validated when it is made."""
from __future__ import annotations

import fnmatch
import math
from dataclasses import asdict, dataclass

from .._checks import check_bits, check_fraction, check_int, is_real
from ..allocation import ALLOCATIONS, DEFAULT_SYMMETRIC, NARROW_EXTRA_BITS, channel_bits, default_method, default_rounding
from ..quantization import METHODS, ROUNDINGS
from .layouts import Entry
from .roles import block_view, channel_view, fan_in

STORAGES = ("float32", "float16", "packed", "keras")
#: what storage="keras" does with a layer's inputs: Keras's dynamic int8 quantization, or none
ACTIVATIONS = ("int8", "float")
COMPRESSIONS = ("none", "gzip", "lzf")


@dataclass(frozen=True)
class Recipe:
    """How to prune and quantize the prunable weights of a model file, and how to store them.

    Parameters
    ----------
    sparsity : float or str, optional
        Fraction in [0, 1] of all prunable weights of the model set to zero (allocated across
        tensors by `allocation`), or ``"N:M"`` for N:M structured sparsity along the input axis.
    bits : int, optional
        2 to 8: quantize prunable weights to this many bits.
    granularity : {"channel", "tensor", "block:N"}
        One scale per output channel (the layer's real channel axis), per tensor, or per block of
        N weights along the input (reduction) axis of each channel.
    method : {"minmax", "mse", "percentile"}, optional
        How scales are chosen; default :func:`wqkernels.default_method` (min/max, except mse for
        symmetric grids of 2 and 3 bits; Keras's min/max with storage="keras").
    storage : {"float32", "float16", "packed", "keras"}
        float32: values on the quantization grid (every Keras loads the file), float16 and
        bfloat16 weights kept in their type; float16; packed: bit-packed integer codes with
        scales (read by wqkernels only); keras: Keras 3's own int8/int4 layers (bits 8 or 4;
        ``load_model`` returns a model that keeps int8 variables), the default method Keras's.
    compress : {"none", "gzip", "lzf"}
        HDF5 filter for rewritten datasets large enough to gain.
    strip_optimizer : bool
        Drop the optimizer state.
    include, exclude : tuple of str
        Glob patterns on weight paths: only matching prunable weights are touched / never.
    min_size : int, optional
        Weights with fewer elements are left as they are (default: the allocation's default for
        pruning, every prunable weight for quantization).
    allocation : {"global", "uniform"}
        How `sparsity` is spread over tensors: one global criterion, or equal per tensor.
    target_sqnr : float, optional
        Choose per tensor the fewest bits (2..8) reaching this SQNR in dB (instead of `bits`).
    symmetric : bool, optional
        Symmetric (signed codes, zero point 0) or asymmetric quantization.  Default asymmetric
        (2^bits levels over each group's range, which kept model outputs closer on every
        architecture of ``benchmarks/FIDELITY.md``), symmetric with storage="keras" (Keras's own
        layers are symmetric).
    rounding : {"nearest", "sum"}, optional
        The `rounding` of :func:`wqkernels.quantize`; default per weight
        :func:`wqkernels.allocation.default_rounding` of its role (sum-preserving, recurrent
        kernels to nearest).
    bn_correction : bool
        When pruning a file that carries a model config, restore the mean and variance of the
        outputs of each layer whose inputs come from a BatchNormalization (through ReLU, pooling,
        flatten, dropout), from that BN's own statistics: the layer's bias and a per-channel
        scale of its kernel, or the following BN's moving mean and variance
        (:mod:`wqkernels.correction`; the rewrite's notes say which layers).  No data needed;
        quantization alone is not corrected, and neither are the given weights of a calibration.
    activations : {"int8", "float"}, optional
        With storage="keras": quantize layer inputs dynamically to int8 (W8A8, the default of
        Keras's int8) or keep them float (weight-only, the default of Keras's int4).
    narrow_bits : int, optional
        Bits beyond `bits` (at most 8 in all) for a kernel whose outputs each sum at most 16 of
        its weights (``NARROW_FAN_IN``: first convolutions over few input channels, 3x3
        depthwise kernels; never an embedding table, whose rows are looked up),
        :func:`wqkernels.allocation.channel_bits`; default 2, 0 for none.  With
        storage="keras" none: Keras's int4 and int8 layers hold the width they are named for.

    Examples
    --------
    >>> from wqkernels import Recipe
    >>> Recipe(bits=4).method, Recipe(bits=4).symmetric, Recipe(bits=2, symmetric=True).method
    ('minmax', False, 'mse')
    >>> Recipe(bits=4, granularity="block:32").block_size
    32
    >>> Recipe(bits=1)
    Traceback (most recent call last):
    ...
    ValueError: bits must be from 2 to 8, got 1
    """

    sparsity: float | str | None = None
    bits: int | None = None
    granularity: str = "channel"
    method: str | None = None
    storage: str = "float32"
    compress: str = "none"
    strip_optimizer: bool = False
    include: tuple = ()
    exclude: tuple = ()
    min_size: int | None = None
    allocation: str = "global"
    target_sqnr: float | None = None
    symmetric: bool | None = None
    activations: str | None = None
    rounding: str | None = None
    bn_correction: bool = True
    narrow_bits: int | None = None

    def __post_init__(self):
        set_ = object.__setattr__
        if self.sparsity is not None:
            if isinstance(self.sparsity, str):
                self.n_m  # validates "N:M"
            else:
                set_(self, "sparsity", check_fraction(self.sparsity, "sparsity"))
        if self.bits is not None:
            set_(self, "bits", check_bits(self.bits))
        if self.target_sqnr is not None:
            if not is_real(self.target_sqnr) or not 0 < float(self.target_sqnr) < 300:
                raise ValueError(f"target_sqnr must be a positive number of dB, got {self.target_sqnr!r}")
            if self.bits is not None:
                raise ValueError("give bits or target_sqnr, not both")
            set_(self, "target_sqnr", float(self.target_sqnr))
        self.block_size  # validates the granularity
        if self.method is not None and self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.symmetric is None:
            set_(self, "symmetric", True if self.storage == "keras" else DEFAULT_SYMMETRIC)
        set_(self, "symmetric", bool(self.symmetric))
        if self.rounding is not None and (not isinstance(self.rounding, str) or self.rounding not in ROUNDINGS):
            raise ValueError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {self.rounding!r}")
        if self.storage == "keras":
            self._check_keras()
        if self.method is None and self.bits is not None:
            set_(self, "method", "minmax" if self.storage == "keras" else default_method(self.bits, self.symmetric))
        for name, allowed in (("storage", STORAGES), ("compress", COMPRESSIONS), ("allocation", ALLOCATIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.storage == "packed" and not self.quantizes:
            raise ValueError("storage='packed' stores integer codes: it needs bits or target_sqnr")
        if self.min_size is not None:
            set_(self, "min_size", check_int(self.min_size, "min_size", 0))
        for name in ("include", "exclude"):
            value = getattr(self, name)
            value = (value,) if isinstance(value, str) else tuple(value or ())
            if not all(isinstance(p, str) for p in value):
                raise TypeError(f"{name} must be glob patterns (str), got {value!r}")
            set_(self, name, value)
        set_(self, "strip_optimizer", bool(self.strip_optimizer))
        set_(self, "bn_correction", bool(self.bn_correction))
        if self.narrow_bits is None:
            set_(self, "narrow_bits", 0 if self.storage == "keras" else NARROW_EXTRA_BITS)
        set_(self, "narrow_bits", check_int(self.narrow_bits, "narrow_bits", 0, 6))
        if self.narrow_bits and self.storage == "keras" and self.bits != 8:
            raise ValueError(f"narrow_bits={self.narrow_bits} needs other widths than Keras's int{self.bits} "
                             f"layers hold: give narrow_bits=0 with storage='keras'")
        if self.activations is not None and self.storage != "keras":
            raise ValueError("activations applies to storage='keras' only")

    def _check_keras(self) -> None:
        """What Keras 3's quantized layers can hold: int8 or int4 per channel, int4 in blocks."""
        if self.bits not in (8, 4):
            got = f"target_sqnr={self.target_sqnr}" if self.target_sqnr is not None else f"bits={self.bits}"
            raise ValueError(f"storage='keras' writes Keras 3's int8 and int4 layers: bits must be 8 or 4, got {got}")
        if self.granularity == "tensor":
            raise ValueError("storage='keras': Keras 3 quantizes per channel (or int4 in blocks), not per tensor")
        if self.bits == 8 and self.block_size is not None:
            raise ValueError(f"storage='keras': Keras 3's int8 is per channel; blocks ({self.granularity}) "
                             f"need bits=4")
        if not self.symmetric:
            raise ValueError("storage='keras' uses Keras's own schemes (symmetric per channel, zero points in "
                             "int4 blocks): symmetric=False does not apply")
        if self.activations is not None and self.activations not in ACTIVATIONS:
            raise ValueError(f"activations must be one of {', '.join(ACTIVATIONS)}, got {self.activations!r}")
        if self.activations == "int8" and self.bits == 4 and self.block_size is not None:
            raise ValueError("storage='keras': Keras 3's int4 in blocks takes no activation quantizer "
                             "(activations='int8' needs per-channel int4)")

    @property
    def quantizes(self) -> bool:
        return self.bits is not None or self.target_sqnr is not None

    @property
    def changes(self) -> bool:
        """Whether a rewrite with this recipe changes anything but the layout of the file."""
        return self.prunes or self.quantizes or self.storage != "float32" or self.compress != "none"

    @property
    def prunes(self) -> bool:
        return self.sparsity is not None and self.sparsity != 0

    @property
    def n_m(self) -> tuple[int, int] | None:
        """(N, M) when `sparsity` is ``"N:M"``."""
        if not isinstance(self.sparsity, str):
            return None
        try:
            n, m = (int(p) for p in self.sparsity.split(":"))
        except ValueError:
            raise ValueError(f"sparsity must be a fraction or 'N:M', got {self.sparsity!r}") from None
        if not 0 < n <= m:
            raise ValueError(f"sparsity N:M needs 0 < N <= M, got {self.sparsity!r}")
        return n, m

    @property
    def block_size(self) -> int | None:
        g = self.granularity
        if g in ("tensor", "channel"):
            return None
        if isinstance(g, str) and g.startswith("block:"):
            try:
                size = int(g[len("block:"):])
            except ValueError:
                size = None
            if size is None or size < 1:
                raise ValueError(f"granularity block size must be a positive integer, got {g!r}")
            return size
        raise ValueError(f"granularity must be 'tensor', 'channel' or 'block:N', got {g!r}")

    def bits_for(self, entry: Entry) -> int:
        """The bits of `entry`'s weight under `bits`: more for a narrow kernel (`narrow_bits`)."""
        fan = fan_in(entry.layer_class, entry.role, entry.shape, entry.reduced)
        return self.bits if fan is None else channel_bits(self.bits, fan, self.narrow_bits)

    def method_for(self, bits: int) -> str:
        return self.method if self.method is not None else default_method(bits, self.symmetric)

    def selects(self, entry: Entry, *, by_size: bool = True) -> bool:
        """Whether this recipe touches the weight of `entry` (by_size=False: whatever its size,
        as pruning needs: tensors under min_size stay dense but count in the total)."""
        if not entry.prunable:
            return False
        if self.include and not any(fnmatch.fnmatchcase(entry.path, p) for p in self.include):
            return False
        if any(fnmatch.fnmatchcase(entry.path, p) for p in self.exclude):
            return False
        return not (by_size and self.min_size is not None and math.prod(entry.shape) < self.min_size)

    def layout_for(self, entry: Entry) -> tuple[tuple, dict]:
        """(shape to quantize, quantize options without bits/method) for `entry`'s weight."""
        grid = {"symmetric": self.symmetric,
                "rounding": self.rounding if self.rounding is not None else default_rounding(entry.role)}
        if self.granularity == "tensor":
            return entry.shape, {"axis": None, **grid}
        if self.granularity == "channel":
            view, axis, block = channel_view(entry.shape, entry.layer_class, entry.role, entry.reduced)
            return view, {"axis": axis, **({} if block is None else {"block_size": block}), **grid}
        view, axis = block_view(entry.shape, entry.layer_class, entry.role, entry.reduced)
        # a block longer than the axis is one block over it: the same scales, and no huge sizes
        # for the kernels (2**63 overflowed them)
        block = max(1, min(self.block_size, view[axis]))
        return view, {"axis": axis, "block_size": block, **grid}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["include"], d["exclude"] = list(self.include), list(self.exclude)
        return d
