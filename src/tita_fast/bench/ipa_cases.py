"""IPA benchmark cases shared by ``benchmarks/test_ipa.py`` (pytest-benchmark), ``benchmarks/compare_ipa.py`` (ratio
table) and ``tita-fast bench``.

Implementations compared, all through the ``tita_fast.IPA`` module (N = 1, C = 60, 6 heads, tokens = pixels):

* ``published``: the published algorithm rebuilt faithfully (loop over the batch, ``nn.MultiheadAttention``
  with the pixels as its batch; :func:`tita_fast.reference.published.ipa_published`);
* ``reference``: our vectorised pure-PyTorch reference;
* ``compiled-reference``: ``torch.compile`` of the reference (GPU only: the issue's third baseline;
  :mod:`~tita_fast.bench.compiled`);
* every fused backend available for the device (``cpu``, ``triton``, ``cuda``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

import tita_fast
from tita_fast.baseline import published_ops
from tita_fast.bench.compiled import compiled_reference

CHANNELS, HEADS = 60, 6


def implementations(device: torch.device) -> list[str]:
    names = ["published", "reference"]
    if device.type == "cuda":
        names.append("compiled-reference")
    probe = torch.empty(1, device=device)
    for backend in ("cpu", "triton", "cuda"):
        impl = tita_fast.backends._registry["ipa"].get(backend)
        if impl is not None and impl.chosen_automatically(probe):
            names.append(backend)
    return names


def make_case(size: int | tuple[int, int], device: torch.device, dtype: torch.dtype = torch.float32, seed: int = 0):
    """A random module and inputs ``a, b`` of one image's pixels: ``size`` is a square's side or (height, width)."""
    height, width = (size, size) if isinstance(size, int) else size
    torch.manual_seed(seed)
    module = tita_fast.IPA(CHANNELS, HEADS)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.1)
    module = module.to(device=device, dtype=dtype)
    a, b = torch.randn(2, 1, height * width, CHANNELS, device=device, dtype=dtype).unbind(0)
    return module, a, b


def _context(implementation: str):
    if implementation == "published":
        return published_ops()
    if implementation == "compiled-reference":
        return compiled_reference("ipa")
    return tita_fast.use_backend(implementation)


def step(module, a, b, implementation: str, backward: bool) -> Callable[[], None]:
    """One forward (no autograd graph) or forward + backward (input and parameter gradients) of ``module``."""
    a_leaf = a.detach().requires_grad_(backward)
    b_leaf = b.detach().requires_grad_(backward)

    def run():
        with _context(implementation):
            if backward:
                out_a, out_b = module(a_leaf, b_leaf)
                (out_a.sum() + out_b.sum()).backward()
            else:
                with torch.no_grad():
                    module(a_leaf, b_leaf)
        if a.is_cuda:
            torch.cuda.synchronize()

    return run
