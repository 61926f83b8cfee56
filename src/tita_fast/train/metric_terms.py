"""Differentiable VIF and Qabf: the evaluation metrics of :mod:`tita_fast.metrics` as torch functions, for training.

The published losses (:mod:`tita_fast.train.losses`) only approximate what fusion is judged by; these let a run add
the judged quantities themselves as loss terms (config keys ``vif_weight`` and ``qabf_weight``, 0 by default, which
is the published loss). The definitions are exactly those of :mod:`tita_fast.metrics` — pixel-domain VIF over four
scales with sigma_n^2 = 2 on the 0-255 scale, summed over the two sources; Xydeas-Petrovic Qabf on the valid
Sobel interior — with two differences that only matter for batches and for gradients:

* A batch counts as one image: VIF is sum(num) / sum(den) over the batch, Qabf sum(weighted Q) / sum(weights).
  A flat crop (a saturated patch of an over-exposed source) has den ~ 0, and a per-crop ratio of it would be noise
  with a huge gradient; for a batch of one, both equal the metrics.
* The Sobel orientation atan(gy / gx) is a jump where gx changes sign; its gradient (bounded by 1 / strength)
  is left as autograd gives it, but the strength ratio divides by max(strength, STRENGTH_EPS) so an edge that
  the fused image has not yet formed still receives a finite gradient.

Inputs are (N, 1, H, W) in [0, 1] (training's scale); VIF needs H, W >= 41 (its coarsest scale), Qabf >= 3.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as nnf
from torch import Tensor

VIF_SIGMA_NSQ = 2.0 / 255**2  # the metric's sigma_n^2 = 2 on 0-255, on the 0-1 scale
VIF_EPS = 1e-10 / 255**2  # the metric's variance threshold, likewise rescaled
STRENGTH_EPS = 1e-6

_TG, _KG, _DG = 0.9994, -15.0, 0.5
_TA, _KA, _DA = 0.9879, -22.0, 0.8


def _gaussian_valid(x: Tensor, size: int) -> Tensor:
    """'valid' filtering with the metric's normalised size x size Gaussian window (sigma size / 5)."""
    offsets = torch.arange(size, dtype=x.dtype, device=x.device) - (size - 1) / 2
    g = torch.exp(-(offsets**2) / (2 * (size / 5) ** 2))
    g = g / g.sum()
    return nnf.conv2d(nnf.conv2d(x, g.view(1, 1, size, 1)), g.view(1, 1, 1, size))  # separable: rows, then columns


def _vif_parts(ref: Tensor, dist: Tensor) -> tuple[Tensor, Tensor]:
    """Numerator and denominator of pixel-domain VIF(ref -> dist), summed over the batch and the four scales."""
    num = den = ref.new_zeros(())
    for scale in range(1, 5):
        size = 2 ** (5 - scale) + 1
        if scale > 1:
            ref = _gaussian_valid(ref, size)[..., ::2, ::2]
            dist = _gaussian_valid(dist, size)[..., ::2, ::2]
        mu1, mu2 = _gaussian_valid(ref, size), _gaussian_valid(dist, size)
        s1 = (_gaussian_valid(ref * ref, size) - mu1 * mu1).clamp(min=0)
        s2 = (_gaussian_valid(dist * dist, size) - mu2 * mu2).clamp(min=0)
        s12 = _gaussian_valid(ref * dist, size) - mu1 * mu2
        g = s12 / (s1 + VIF_EPS)
        sv = s2 - g * s12
        # The metric's special cases, in its order: flat reference, flat distorted image, negative gain.
        flat1, flat2 = s1 < VIF_EPS, s2 < VIF_EPS
        g = torch.where(flat1 | flat2, 0.0, g)
        sv = torch.where(flat1, s2, torch.where(flat2, 0.0, sv))
        s1 = torch.where(flat1, 0.0, s1)
        negative = g < 0
        sv = torch.where(negative, s2, sv)
        g = torch.where(negative, 0.0, g)
        sv = sv.clamp(min=VIF_EPS)
        num = num + torch.log10(1 + g * g * s1 / (sv + VIF_SIGMA_NSQ)).sum()
        den = den + torch.log10(1 + s1 / VIF_SIGMA_NSQ).sum()
    return num, den


def vif(A: Tensor, B: Tensor, F: Tensor) -> Tensor:
    """VIF(A, F) + VIF(B, F), as :func:`tita_fast.metrics.vif` (a batch counts as one image)."""
    total = F.new_zeros(())
    for source in (A, B):
        num, den = _vif_parts(source, F)
        total = total + torch.where(den > 0, num / den.clamp(min=torch.finfo(den.dtype).tiny), 0.0)
    return total


def _sobel_valid(x: Tensor) -> tuple[Tensor, Tensor]:
    kx = torch.tensor([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=x.dtype, device=x.device)
    gx = nnf.conv2d(x, kx[None, None])
    gy = nnf.conv2d(x, kx.T[None, None])
    strength = torch.sqrt(gx * gx + gy * gy + torch.finfo(x.dtype).tiny)  # tiny: a finite gradient at 0
    zero = gx == 0
    alpha = torch.where(zero, math.pi / 2, torch.atan(gy / torch.where(zero, 1.0, gx)))
    return strength, alpha


def _edge_q(gs: Tensor, als: Tensor, gf: Tensor, alf: Tensor) -> Tensor:
    rel_g = torch.minimum(gs, gf) / torch.maximum(gs, gf).clamp(min=STRENGTH_EPS)
    rel_a = ((als - alf).abs() - math.pi / 2).abs() / (math.pi / 2)
    return _TG / (1 + torch.exp(_KG * (rel_g - _DG))) * _TA / (1 + torch.exp(_KA * (rel_a - _DA)))


def qabf(A: Tensor, B: Tensor, F: Tensor) -> Tensor:
    """Xydeas-Petrovic Qabf, as :func:`tita_fast.metrics.qabf` (a batch counts as one image)."""
    (ga, ala), (gb, alb), (gf, alf) = (_sobel_valid(t) for t in (A, B, F))
    weights = (ga + gb).sum()
    weighted = (_edge_q(ga, ala, gf, alf) * ga + _edge_q(gb, alb, gf, alf) * gb).sum()
    return torch.where(weights > 0, weighted / weights.clamp(min=torch.finfo(weights.dtype).tiny), 0.0)
