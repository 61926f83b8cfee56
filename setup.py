"""Build script. Metadata lives in pyproject.toml; this adds the C++ (always) and CUDA (when available) ops.

The extension is compiled against the torch already installed, so install with
``pip install --no-build-isolation .`` (an isolated build would fetch a different torch). The CUDA sources are
added when torch is a CUDA build and a CUDA toolkit is found (``CUDA_HOME``); ``TITA_FAST_CUDA=0`` skips them.
"""

import glob
import os
import sys

from setuptools import setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:
    sys.exit(
        "tita_fast compiles C++ ops against your installed PyTorch: install torch first, then "
        "`pip install --no-build-isolation .`"
    )


def extension():
    # csrc/ipa/ipa_cuda_emulation.cpp is test-only: tests/test_ipa_cuda_emulation.py compiles it itself.
    sources = ["csrc/ops.cpp", *sorted(glob.glob("csrc/*/*_cpu.cpp"))]
    # at::parallel_for is inlined OpenMP: without -fopenmp the CPU kernels would run on one thread.
    openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
    cxx = ["-O3", *openmp]
    with_cuda = (
        os.environ.get("TITA_FAST_CUDA", "1") != "0"
        and torch.version.cuda is not None
        and cpp_extension.CUDA_HOME is not None
    )
    if not with_cuda:
        return cpp_extension.CppExtension(
            "tita_fast._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=openmp
        )
    return cpp_extension.CUDAExtension(
        "tita_fast._C",
        sources + sorted(glob.glob("csrc/*/*_cuda.cu")),
        extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]},
        extra_link_args=openmp,
    )


setup(ext_modules=[extension()], cmdclass={"build_ext": cpp_extension.BuildExtension})
