"""Pure-PyTorch OAF operation mixing (everything after the generator convolutions), without ``F.unfold``.

Spec: ``shared/spec/TITA.md``, section OAF. The published code materialises a 9·C·H·W unfold of the
reflect-padded input (see :mod:`tita_fast.reference.published`); here the 3×3 dynamic filter is applied as
nine shifted multiply-adds, so no intermediate is larger than one feature map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def normalised_filter(filter_logits: torch.Tensor, hamming: torch.Tensor) -> torch.Tensor:
    """Per-pixel 3×3 filter (N, 9, H, W): softmax over the 9 taps, hamming-weighted, renormalised to sum 1."""
    m = filter_logits.softmax(dim=1) * hamming.reshape(1, 9, 1, 1).to(filter_logits.dtype)
    return m / m.sum(dim=1, keepdim=True)


def adaptive_highpass(x: torch.Tensor, filter_logits: torch.Tensor, hamming: torch.Tensor) -> torch.Tensor:
    """``x - smooth``: smooth is the per-pixel filter applied to every channel of reflect-padded ``x``."""
    height, width = x.shape[-2:]
    m = normalised_filter(filter_logits, hamming)
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    smooth = sum(
        m[:, 3 * ky + kx : 3 * ky + kx + 1] * padded[:, :, ky : ky + height, kx : kx + width]
        for ky in range(3)
        for kx in range(3)
    )
    return x - smooth


def oaf_mix_reference(
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
    """Fuse ``x, y`` (N, C, H, W) from their generator outputs and the per-image weights (N, 6).

    ``out = w0*hp_x + w3*hp_y + w1*(x + residual_x) + w4*(y + residual_y) + w2*x*multiplier_x + w5*y*multiplier_y``,
    summed in that order as the published code does.
    """
    w = mix_weights[:, :, None, None, None].unbind(1)  # six (N, 1, 1, 1) weights
    features_x = (adaptive_highpass(x, filter_logits_x, hamming_x), x + residual_x, x * multiplier_x)
    features_y = (adaptive_highpass(y, filter_logits_y, hamming_y), y + residual_y, y * multiplier_y)
    out = 0
    for i, (fx, fy) in enumerate(zip(features_x, features_y, strict=True)):
        out = out + w[i] * fx
        out = out + w[i + 3] * fy
    return out
