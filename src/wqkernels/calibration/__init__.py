"""Calibrated compression: weights quantized and pruned so that a layer's *outputs* on sample
inputs change least, not its weights.

A layer computes, for each group ``g`` of its output channels, ``rows_g @ W_g``: the rows are
its inputs (a Dense layer's input vectors, a convolution's input patches) and ``W_g`` is its
kernel seen as an (inputs, outputs) matrix (:class:`KernelView`).  The Gram matrix of the rows,
``H = XᵀX / n`` (:class:`Hessian`), is the Hessian of the squared output error, and

- :func:`gptq` quantizes the inputs' rows of ``W`` one after the other onto the grid of
  :func:`wqkernels.quantize` (the same scales and zero points), pushing each row's rounding error
  onto the rows not yet quantized through the inverse Hessian's Cholesky factor (GPTQ, Frantar
  et al. 2022); :func:`gptq_on_grid` does the same on any grid given weight by weight (the
  layout of Keras's own quantized layers);
- :func:`sparsegpt` zeroes an exact number of weights, or N of every M along the inputs, chosen
  by their saliency ``w² / [H⁻¹]ᵢᵢ`` as it goes, and reconstructs the rest the same way
  (SparseGPT, Frantar & Alistarh 2023);
- :func:`refit` first fits the kernel to the float model's outputs, when the layer's inputs
  come from compressed layers (the Hessian then also holds ``XᵀX_f`` with the float inputs);
- :func:`mean_output_error` is the mean gap to the float outputs, for the bias to take back.

The column loop is NumPy (float64; the work is in matrix products); :func:`patches` and
:func:`einsum_view` give the rows and views of convolutions and einsum layers.  The plain
one-row-at-a-time twins are in :mod:`wqkernels.reference.calibration`.
"""
from .gptq import gptq, gptq_on_grid
from .hessian import Hessian
from .outputs import mean_output_error, refit
from .rows import einsum_view, patches
from .sparsegpt import sparsegpt
from .views import KernelView

__all__ = ["Hessian", "KernelView", "gptq", "gptq_on_grid", "sparsegpt", "refit", "mean_output_error", "patches", "einsum_view"]
