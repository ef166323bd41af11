"""How many bits each tensor needs, and which scale search each bit width uses by default.

The default was chosen by measuring the outputs of small trained Keras models after one-shot
quantization (``benchmarks/fidelity.py``, results in ``benchmarks/FIDELITY.md``):

* ``default_method(bits)``: error-minimising clipping ("mse") at 4 bits and below, min/max at 5
  bits and above.  At 2 bits per channel mse kept 93-95 % where min/max kept 68-80 % (CNNs and
  MLP); at 3 bits it flipped 71 instead of 105 of 16173 predictions of nine models; at 4 and 5 bits
  the two are even (21 against 24 and 9 against 14 flips).
"""
from __future__ import annotations

from .._checks import check_bits, check_float_array, check_real
from ..quantization import fake_quantize
from ..statistics import error

__all__ = ["BIT_WIDTHS", "default_method", "bits_for_sqnr"]

#: The bit widths :func:`bits_for_sqnr` chooses from, fewest first.
BIT_WIDTHS = range(2, 9)


def default_method(bits: int) -> str:
    """The scale search to use at a bit width: ``"mse"`` at 4 bits and below, else ``"minmax"``.

    Parameters
    ----------
    bits : int
        2 to 8.

    Returns
    -------
    str
        ``"mse"`` or ``"minmax"``, a `method` of :func:`wqkernels.quantize`.

    Examples
    --------
    >>> from wqkernels.allocation import default_method
    >>> default_method(4), default_method(5)
    ('mse', 'minmax')
    """
    return "mse" if check_bits(bits) <= 4 else "minmax"


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
        `method` defaults to :func:`default_method` of each width.

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
        options = {"method": default_method(bits), **quantize_options}
        stats = error(arr, fake_quantize(arr, bits, **options))
        if stats.mse == 0 or stats.sqnr_db >= target_db:
            return bits
    return BIT_WIDTHS[-1]
