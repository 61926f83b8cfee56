"""The compiled ops (``tita_fast._C``: C++ CPU kernels, plus CUDA ones in a CUDA build).

Importing ``_C`` registers ``torch.ops.tita_fast.*``. The package works without it (reference and Triton
backends); ``LOAD_ERROR`` then says why it is missing, and ``tita-fast info`` shows it.
"""

from __future__ import annotations

import torch

try:
    from tita_fast import _C  # noqa: F401
except ImportError as error:
    LOAD_ERROR: ImportError | None = error
else:
    LOAD_ERROR = None


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether the compiled op ``tita_fast::<op>`` has a kernel for ``dispatch_key`` ("CPU", "CUDA")."""
    return LOAD_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key(f"tita_fast::{op}", dispatch_key)
