"""The runner of the OAF H100 results (benchmarks/results/oaf_op_*h100.json): builds ops.cpp and the OAF
kernels only (the IPA CUDA build did not fit the lease), registers them as tita_fast._C, then runs a script."""

import os
import runpy
import sys
import time
import types

from torch.utils.cpp_extension import load

t = time.time()
load(
    name="tita_fast_C",
    sources=["csrc/ops.cpp", "csrc/oaf/oaf_cpu.cpp", "csrc/oaf/oaf_cuda.cu"],
    extra_cflags=["-O3", "-fopenmp"],
    extra_cuda_cflags=["-O3"],
    extra_ldflags=["-fopenmp"],
    build_directory=os.environ["BUILD"],
    is_python_module=False,
    verbose=False,
)
print(f"built in {time.time() - t:.0f}s", flush=True)
sys.modules["tita_fast._C"] = types.ModuleType("tita_fast._C")
sys.argv = sys.argv[1:]
if sys.argv[0] == "pytest":
    import pytest

    sys.exit(pytest.main(sys.argv[1:]))
runpy.run_path(sys.argv[0], run_name="__main__")
