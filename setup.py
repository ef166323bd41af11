"""Builds the kernel extension; all metadata lives in pyproject.toml.

The kernels' sources live in src/wqkernels/_ext/ and compile, as C++ (the loops over float bits
are templates), into one module imported as wqkernels._core.  OpenMP is used when the compiler
has it (tested by compiling a probe), else the kernels run on one thread.  Flags are portable
(no -march=native): on x86-64 GCC the hot loops carry target_clones, so AVX2/AVX-512 copies are
chosen at run time.
"""
import os
import sys
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

PROBE = "#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n"


def openmp_flags(compiler):
    """The flags that enable OpenMP for this compiler, or None when it has no OpenMP."""
    if os.environ.get("WQKERNELS_NO_OPENMP"):
        return None
    candidates = [("/openmp", [])] if compiler.compiler_type == "msvc" else [("-fopenmp", ["-fopenmp"])]
    for cflag, lflags in candidates:
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "probe.c")
            with open(src, "w") as f:
                f.write(PROBE)
            try:
                objs = compiler.compile([src], output_dir=tmp, extra_postargs=[cflag])
                compiler.link_executable(objs, os.path.join(tmp, "probe"), extra_postargs=lflags)
            except Exception:
                continue
            return cflag, lflags
    return None


class BuildExt(build_ext):
    def build_extensions(self):
        omp = openmp_flags(self.compiler)
        if self.compiler.compiler_type == "msvc":
            base = ["/O2", "/fp:precise"]
        else:
            base = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-Wno-unreachable-code"]
        for ext in self.extensions:
            ext.extra_compile_args = base + ([omp[0]] if omp else [])
            ext.extra_link_args = omp[1] if omp else []
        if not omp:
            sys.stderr.write("wqkernels: no OpenMP in this compiler; kernels will use one thread\n")
        super().build_extensions()


KERNELS = "src/wqkernels/_ext"

setup(
    ext_modules=[
        Extension(
            "wqkernels._core",  # built from _ext/ and imported as wqkernels._core
            [f"{KERNELS}/_core.pyx"],
            language="c++",
            depends=[f"{KERNELS}/{name}" for name in (
                "_loops.h", "_bit_loops.h", "_units.pxi", "_keys.pxi", "_quantization.pxi",
                "_packing.pxi", "_pruning.pxi", "_statistics.pxi", "_allocation.pxi",
                "_keras_loops.h", "_keras_schemes.pxi")],
        )
    ],
    cmdclass={"build_ext": BuildExt},
)
