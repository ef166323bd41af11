"""How many bits each tensor needs, and which scale search each bit width uses by default.

The defaults were chosen on eight architectures by the relative error of the model outputs after
one-shot quantization (``benchmarks/fidelity.py``, results in ``benchmarks/FIDELITY.md``):
asymmetric codes (:data:`DEFAULT_SYMMETRIC`), min/max scales (``default_method(bits)``), one scale
per output channel, and sum-preserving rounding (:data:`DEFAULT_ROUNDING`).  Against symmetric mse,
the earlier default, the output error falls to 0.63 / 0.62 / 0.69 of it at 2 / 3 / 4 bits
(geometric mean over the models; recurrent kernels round to nearest, :func:`default_rounding`);
mse clipping lowers the weight error and raises the output error of asymmetric grids at every
width.  Symmetric grids keep mse at 2 and 3 bits, where their few levels make clipping pay.
Kernels with at most :data:`NARROW_FAN_IN` weights per output channel get two more bits, at most 8
(:func:`channel_bits`): on ten models the output error falls to 0.81 of the rule's absence at 2
bits, 0.80 at 3 and 0.80-0.88 at 4 to 7; on the BatchNorm digits CNN int2 loses 0.25 points
instead of 4.26.
"""
from __future__ import annotations

from .._checks import check_bits, check_float_array, check_int, check_real
from ..quantization import fake_quantize
from ..statistics import error

__all__ = ["BIT_WIDTHS", "DEFAULT_SYMMETRIC", "DEFAULT_ROUNDING", "NARROW_FAN_IN", "NARROW_EXTRA_BITS",
           "default_method", "default_rounding", "channel_bits", "bits_for_sqnr"]

#: The bit widths :func:`bits_for_sqnr` chooses from, fewest first.
BIT_WIDTHS = range(2, 9)

#: Quantize model weights asymmetrically by default: 2^b levels over each channel's range.
DEFAULT_SYMMETRIC: bool = False

#: Round model weights keeping each group's sum by default (``rounding`` of :func:`wqkernels.quantize`);
#: see :func:`default_rounding` for the kernels that round to nearest.
DEFAULT_ROUNDING: str = "sum"


#: Kernels whose output channels have at most this many weights each are "narrow" (:func:`channel_bits`).
NARROW_FAN_IN: int = 16

#: The bits narrow kernels get beyond the requested width by default.
NARROW_EXTRA_BITS: int = 2


def channel_bits(bits: int, fan_in: int, extra: int = NARROW_EXTRA_BITS) -> int:
    """The bits of a kernel whose output channels have `fan_in` weights each, at a requested
    width of `bits`: ``bits + extra`` (at most 8) for a narrow kernel (`fan_in` at most
    :data:`NARROW_FAN_IN`), else `bits`.

    A channel of few weights (a first convolution over one or three input channels, a 3x3
    depthwise kernel, an LSTM over 8 features) averages none of its rounding error away, and
    holds a small share of a model's weights: at 2 bits such kernels cost most of the output
    error of the benchmark's BatchNorm digits CNNs (``benchmarks/FIDELITY.md``), and from 4 to 7
    bits they still carry a fifth of the output error on the geometric mean of ten models.  Two
    more bits for them add 0.01-0.04 bits per weight to the digits CNNs (0.27 to the smallest
    model, a 4,800-weight MLP whose first Dense reads 10 features), and nothing at 8 bits.

    Examples
    --------
    >>> from wqkernels.allocation import channel_bits
    >>> channel_bits(2, 9), channel_bits(2, 288), channel_bits(3, 16), channel_bits(7, 9), channel_bits(2, 9, extra=0)
    (4, 2, 5, 8, 2)
    """
    bits, extra = check_bits(bits), check_int(extra, "extra", 0)
    fan_in = check_int(fan_in, "fan_in", 0)
    return min(bits + extra, 8) if fan_in <= NARROW_FAN_IN else bits


def default_method(bits: int, symmetric: bool = DEFAULT_SYMMETRIC) -> str:
    """The scale search to use at a bit width: ``"minmax"``, except ``"mse"`` for symmetric grids
    of 2 and 3 bits.

    Parameters
    ----------
    bits : int
        2 to 8.
    symmetric : bool
        Whether the grid is symmetric (default :data:`DEFAULT_SYMMETRIC`).

    Returns
    -------
    str
        ``"mse"`` or ``"minmax"``, a `method` of :func:`wqkernels.quantize`.

    Examples
    --------
    >>> from wqkernels.allocation import default_method
    >>> default_method(2), default_method(2, symmetric=True), default_method(4, symmetric=True)
    ('minmax', 'mse', 'minmax')
    """
    return "mse" if check_bits(bits) <= 3 and symmetric else "minmax"


def default_rounding(role: str = "kernel") -> str:
    """The `rounding` of :func:`wqkernels.quantize` for a weight of `role` (a Keras weight name:
    ``kernel``, ``recurrent_kernel``, ``depthwise_kernel``, ...).

    Sum-preserving (:data:`DEFAULT_ROUNDING`) keeps the mean output of a layer whose inputs share
    a mean (after ReLU, pixels); recurrent kernels multiply a hidden state of both signs, and
    round to nearest.

    Examples
    --------
    >>> from wqkernels.allocation import default_rounding
    >>> default_rounding("kernel"), default_rounding("recurrent_kernel")
    ('sum', 'nearest')
    """
    return "nearest" if role == "recurrent_kernel" else DEFAULT_ROUNDING


def bits_for_sqnr(x, target_db: float, **quantize_options) -> int:
    """The fewest bits (2 to 8) whose fake quantization of `x` reaches an SQNR of `target_db`.

    ``SQNR = 10 log10(sum x^2 / sum (x - x_hat)^2)`` with ``x_hat = fake_quantize(x, bits, ...)``,
    measured by :func:`wqkernels.error`; 8 if no width reaches the target.  A reconstruction
    without error reaches every target.

    Parameters
    ----------
    x : array_like of float16, float32 or float64
        The tensor; never modified.
    target_db : float
        The SQNR to reach, in decibels.
    **quantize_options
        Passed to :func:`wqkernels.fake_quantize` (`axis`, `block_size`, `symmetric`, ...);
        `method` defaults to :func:`default_method` of each width and `symmetric` (True unless
        given, as in :func:`wqkernels.fake_quantize`).

    Returns
    -------
    int

    Raises
    ------
    TypeError
        `target_db` is not a real number, `bits` is given, or the options are wrong.
    ValueError
        `target_db` is NaN, or the options are invalid for `x`.

    Examples
    --------
    >>> import numpy as np
    >>> from wqkernels.allocation import bits_for_sqnr
    >>> w = np.random.default_rng(0).normal(size=(64, 32)).astype(np.float32)
    >>> bits_for_sqnr(w, 20.0, axis=1), bits_for_sqnr(w, 30.0, axis=1)
    (5, 6)
    >>> bits_for_sqnr(w, 100.0, axis=1)   # out of reach
    8
    """
    check_real(target_db, "target_db")
    if "bits" in quantize_options:
        raise TypeError("bits_for_sqnr() chooses bits itself: do not pass bits")
    if "out" in quantize_options:
        raise TypeError("bits_for_sqnr() does not take out")
    arr = check_float_array(x)
    for bits in BIT_WIDTHS:
        options = {"method": default_method(bits, quantize_options.get("symmetric", True)), **quantize_options}
        stats = error(arr, fake_quantize(arr, bits, **options))
        if stats.mse == 0 or stats.sqnr_db >= target_db:
            return bits
    return BIT_WIDTHS[-1]
