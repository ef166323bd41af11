# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False, embedsignature=True
"""Kernels of wqkernels: loops over float32 buffers, the GIL released, no validation.

The Python modules validate and normalise every argument, allocate the outputs and call these
functions; nothing here checks shapes, dtypes or values.  The innermost loops live in
``_loops.h`` so that GCC can build one copy per instruction set; this file splits arrays into
runs and spreads them over OpenMP threads.
"""

include "_units.pxi"
include "_quantize.pxi"
include "_packing.pxi"
include "_prune.pxi"
