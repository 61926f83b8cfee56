"""The CUDA backend's block code, run on CPU threads (``tita_fast::ipa_*_cuda_emulated``).

Without a GPU nothing CUDA runs here, but the CUDA kernels are thin: each block calls ``forward_block`` /
``backward_block`` of ``csrc/ipa/ipa_block.h`` with ``__syncthreads`` as its barrier. The emulation runs that same
code with one CPU thread per CUDA thread and a real barrier, so these tests cover the block-strided loops (with
thread counts that do not divide the work), the workspace layout, chunked launches and the gradient reductions,
in every dtype the CUDA backend takes. Tolerances as in test_ipa_kernels (against the float64 reference).

The emulation is test-only code, so the package does not build it (a user's install compiles only what it runs):
these tests compile ``csrc/ipa/ipa_cuda_emulation.cpp`` on first use, against the installed torch, and torch caches
the build.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils import cpp_extension

from tests.conftest import rel_err
from tests.test_ipa_kernels import TOLERANCE, op_parameters, random_ipa
from tita_fast import _extension
from tita_fast.reference.ipa import ipa_reference

pytestmark = pytest.mark.skipif(_extension.LOAD_ERROR is not None, reason="the C++ extension is not built")
EMULATION_SOURCE = Path(__file__).resolve().parents[1] / "csrc" / "ipa" / "ipa_cuda_emulation.cpp"


@pytest.fixture(scope="module", autouse=True)
def emulated_kernels():
    """Registers tita_fast::ipa_*_cuda_emulated (schemas in the installed _C) for CPU tensors."""
    cpp_extension.load(
        name="tita_fast_ipa_cuda_emulation", sources=[str(EMULATION_SOURCE)], extra_cflags=["-O2"],
        is_python_module=False,
    )  # fmt: skip

CASES = [  # (rows, C, heads, threads per block, pixels per launch)
    (37, 12, 3, 3, 32768),
    (70, 60, 6, 7, 32),  # three launches of one or two blocks
    (1, 8, 8, 1, 32768),
    (33, 24, 1, 64, 32768),  # more threads than items in some phases
    (5, 96, 6, 5, 32768),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_emulated_cuda_kernels_match_reference(case, dtype):
    rows, channels, heads, threads, chunk = case
    module = random_ipa(channels, heads, torch.float64, "cpu")
    torch.manual_seed(1)
    a, b, grad_a, grad_b = (torch.randn(rows, channels, dtype=torch.float64).to(dtype) for _ in range(4))
    params = [p.detach().to(dtype) for p in op_parameters(module)]

    out = torch.ops.tita_fast.ipa_forward_cuda_emulated(a, b, *params, heads, threads, chunk)
    grads = torch.ops.tita_fast.ipa_backward_cuda_emulated(grad_a, grad_b, a, b, *params, heads, threads, chunk)

    inputs = [t.double().requires_grad_() for t in (a, b, *params)]
    expected = ipa_reference(*inputs, heads)
    loss = (expected[0] * grad_a.double()).sum() + (expected[1] * grad_b.double()).sum()
    expected_grads = torch.autograd.grad(loss, inputs)
    for actual, wanted in zip([*out, *grads], [*expected, *expected_grads], strict=True):
        assert actual.dtype == dtype and actual.shape == wanted.shape
        assert rel_err(actual, wanted) <= TOLERANCE[dtype]
