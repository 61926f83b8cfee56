"""IPA benchmark cases shared by ``test_ipa.py`` (pytest-benchmark) and ``compare_ipa.py`` (ratio table).

Implementations compared, all through the ``tita_fast.IPA`` module (N = 1, C = 60, 6 heads, tokens = pixels):

* ``published``: the published algorithm rebuilt faithfully (loop over the batch, ``nn.MultiheadAttention``
  with the pixels as its batch; :func:`tita_fast.reference.published.ipa_published`);
* ``reference``: our vectorised pure-PyTorch reference;
* ``compiled-reference``: ``torch.compile`` of the reference (GPU only: the issue's third baseline);
* every fused backend available for the device (``cpu``, ``triton``, ``cuda``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

import tita_fast
from tita_fast.reference.ipa import ipa_reference
from tita_fast.reference.published import published_ops

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


def make_case(size: int, device: torch.device, dtype: torch.dtype = torch.float32, seed: int = 0):
    torch.manual_seed(seed)
    module = tita_fast.IPA(CHANNELS, HEADS)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.1)
    module = module.to(device=device, dtype=dtype)
    a, b = torch.randn(2, 1, size * size, CHANNELS, device=device, dtype=dtype).unbind(0)
    return module, a, b


_compiled_reference = None


def _context(implementation: str):
    if implementation == "published":
        return published_ops()
    if implementation == "compiled-reference":
        global _compiled_reference
        if _compiled_reference is None:
            _compiled_reference = torch.compile(ipa_reference)
        registry = tita_fast.backends._registry["ipa"]
        return _swap_reference(registry, _compiled_reference)
    return tita_fast.use_backend(implementation)


@contextlib.contextmanager
def _swap_reference(registry, run):
    original = registry["reference"]
    registry["reference"] = tita_fast.backends.Implementation(run)
    try:
        with tita_fast.use_backend("reference"):
            yield
    finally:
        registry["reference"] = original


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
