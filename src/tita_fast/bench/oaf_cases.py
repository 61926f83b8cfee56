"""OAF benchmark cases shared by ``benchmarks/test_oaf.py`` (pytest-benchmark), ``benchmarks/compare_oaf.py`` (ratio
table) and ``tita-fast bench``.

Two scopes, N = 1, C = 60, float32 unless a case asks for another dtype:

* ``op``: the mixing after the generators (filter normalisation, 3x3 dynamic filtering, the six features and
  their mix) on the generators' outputs: ``published`` is the published unfold-based algorithm rebuilt faithfully
  (:func:`tita_fast.reference.published.oaf_mix_published`), ``reference`` our pure-PyTorch reference, then
  every fused backend available for the device (through :func:`tita_fast.ops.oaf_mix`); on request,
  ``compiled-reference``, ``torch.compile`` of the reference (:mod:`~tita_fast.bench.compiled`).
* ``step``: the whole ``tita_fast.OAF`` module as a user calls it, generator convolutions and weight generator
  included (``published``: :func:`tita_fast.reference.published.oaf_published`, the generators in the inputs'
  layout, then the published mixing).

``layout`` is the memory layout of the inputs: ``nchw`` (contiguous, what a user's NCHW tensors give) or
``channels_last`` (what the TITA network's OAF receives: its token tensors seen as maps).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

import tita_fast
from tita_fast import ops
from tita_fast.bench.compiled import compiled_reference
from tita_fast.reference.published import oaf_mix_published, oaf_published

CHANNELS = 60
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def implementations(device: torch.device) -> list[str]:
    probe = torch.empty(1, device=device)
    fused = [
        name
        for name in ("cpu", "triton", "cuda")
        if (impl := tita_fast.backends._registry["oaf_mix"].get(name)) is not None and impl.chosen_automatically(probe)
    ]
    return ["published", "reference", *fused]


class Case:
    """A random OAF module and inputs ``x, y``; the generators' outputs for the ``op`` scope."""

    def __init__(
        self,
        size: tuple[int, int],
        device: torch.device,
        layout: str,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ):
        torch.manual_seed(seed)
        self.module = tita_fast.OAF(CHANNELS).to(device=device, dtype=dtype)
        fmt = LAYOUTS[layout]
        self.x, self.y = (
            torch.randn(1, CHANNELS, *size, device=device, dtype=dtype).contiguous(memory_format=fmt) for _ in "xy"
        )
        with torch.no_grad():
            logits_x, residual_x, multiplier_x = self.module.fafb_A(self.x)
            logits_y, residual_y, multiplier_y = self.module.fafb_B(self.y)
            mix_weights = self.module.weight_gen(torch.cat([self.x, self.y], dim=1))
        self.op_inputs = [
            self.x, self.y, logits_x, logits_y, residual_x, residual_y, multiplier_x, multiplier_y,
            self.module.fafb_A.hamming_highpass, self.module.fafb_B.hamming_highpass, mix_weights,
        ]  # fmt: skip


def _context(implementation: str):
    if implementation == "compiled-reference":
        return compiled_reference("oaf_mix")
    return tita_fast.use_backend("reference" if implementation == "published" else implementation)


def step(case: Case, scope: str, implementation: str, backward: bool) -> Callable[[], None]:
    """One forward (no autograd graph) or forward + backward (gradients of every input, and of the module's
    parameters in the ``step`` scope) of the scope's computation."""
    if scope == "op":
        leaves = [t.detach().requires_grad_(backward and i not in (8, 9)) for i, t in enumerate(case.op_inputs)]
        mix = oaf_mix_published if implementation == "published" else ops.oaf_mix

        def compute():
            return mix(*leaves)
    else:
        leaves = [case.x.detach().requires_grad_(backward), case.y.detach().requires_grad_(backward)]

        def compute():
            if implementation == "published":
                return oaf_published(case.module, *leaves)
            return case.module(*leaves)

    def run():
        with _context(implementation):
            if backward:
                out = compute()
                out.backward(torch.ones_like(out))
                # dropped here, not before the next call: peak memory then counts the gradients it allocates
                for t in (*leaves, *case.module.parameters()):
                    t.grad = None
            else:
                with torch.no_grad():
                    compute()
        if case.x.is_cuda:
            torch.cuda.synchronize()

    return run
