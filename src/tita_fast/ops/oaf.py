"""The OAF mixing op: input checks and backend dispatch (implementations: reference now, fused kernels later)."""

from __future__ import annotations

import torch

from tita_fast import backends
from tita_fast.reference.oaf import oaf_mix_reference

backends.register("oaf_mix", "reference", oaf_mix_reference)


def oaf_mix(
    x: torch.Tensor,
    y: torch.Tensor,
    filter_logits_x: torch.Tensor,
    filter_logits_y: torch.Tensor,
    residual_x: torch.Tensor,
    residual_y: torch.Tensor,
    multiplier_x: torch.Tensor,
    multiplier_y: torch.Tensor,
    hamming_x: torch.Tensor,
    hamming_y: torch.Tensor,
    mix_weights: torch.Tensor,
) -> torch.Tensor:
    """The OAF step after its generators; see :func:`tita_fast.reference.oaf_mix_reference`."""
    if x.dim() != 4 or x.shape != y.shape:
        raise ValueError(f"OAF expects two (N, C, H, W) maps of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    n, _, height, width = x.shape
    if height < 2 or width < 2:
        raise ValueError(f"OAF needs H >= 2 and W >= 2 for its reflect-padded 3x3 filter, got {height}x{width}")
    for name, t in (("filter_logits_x", filter_logits_x), ("filter_logits_y", filter_logits_y)):
        if t.shape != (n, 9, height, width):
            raise ValueError(f"OAF {name} must be {(n, 9, height, width)}, got {tuple(t.shape)}")
    for name, t in (("residual_x", residual_x), ("residual_y", residual_y),
                    ("multiplier_x", multiplier_x), ("multiplier_y", multiplier_y)):  # fmt: skip
        if t.shape != x.shape:
            raise ValueError(f"OAF {name} must be {tuple(x.shape)}, got {tuple(t.shape)}")
    if mix_weights.shape != (n, 6):
        raise ValueError(f"OAF mix_weights must be {(n, 6)}, got {tuple(mix_weights.shape)}")
    if hamming_x.numel() != 9 or hamming_y.numel() != 9:
        raise ValueError("OAF hamming windows must hold 3x3 = 9 values")
    run = backends.choose("oaf_mix", x)
    return run(x, y, filter_logits_x, filter_logits_y, residual_x, residual_y, multiplier_x, multiplier_y,
               hamming_x, hamming_y, mix_weights)  # fmt: skip
