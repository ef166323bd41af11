# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False, embedsignature=True
"""Kernels of wqkernels: loops over float buffers and their bits, the GIL released.

The Python modules validate and normalise every argument, allocate the outputs and call these
functions; nothing here checks shapes, dtypes or arguments.  What a kernel finds in the data
it reports in its return value and never raises on: whether the input held a NaN or an infinity
(seen in the pass the kernel makes anyway; work in place reports it before writing anything)
and counts such as zeros.  The Python layer turns those into its errors.  The one exception
raised here is MemoryError, when scratch memory cannot be allocated.

Each ``.pxi`` serves the Python module of the same name (quantization, packing, pruning,
statistics, allocation, keras_schemes) and splits arrays into runs and runs over OpenMP threads;
the innermost loops live in headers (``_loops.h`` for float32 and codes, ``_bit_loops.h`` for
float bits, ``_keras_loops.h`` for Keras's own quantizer) so that GCC can build one copy per
instruction set.
"""

include "_units.pxi"
include "_keys.pxi"
include "_quantization.pxi"
include "_packing.pxi"
include "_pruning.pxi"
include "_statistics.pxi"
include "_allocation.pxi"
include "_keras_schemes.pxi"
