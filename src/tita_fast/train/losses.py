"""The fusion losses of TITA training: intensity, Sobel-gradient and SSIM terms per task.

Spec: ``shared/spec/TITA.md``, section *Training losses*. ``A`` and ``B`` are the sources, ``F`` the fused image,
all (N, C, H, W) in [0, 1] (C = 1 in training; every operation is depthwise, so C > 1 works per channel)::

    sobel(t)   = |conv(t, Kx)| + |conv(t, Ky)|, zero padding 1 (conv = cross-correlation, as F.conv2d)
                 Kx = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]],  Ky = [[1, 2, 1], [0, 0, 0], [-1, -2, -1]]
    ssim(p, q) = mean of the SSIM map: 11x11 Gaussian window (outer product of the normalised 1-D Gaussian,
                 sigma 1.5), zero padding 5, C1 = 0.01^2, C2 = 0.03^2
    grad_term  = mean |sobel(F) - max(sobel(A), sobel(B))|
    gA, gB     = mean(sobel(A)), mean(sobel(B))   (over the whole batch)

    vif:  20*mean|F - max(A, B)|  + 20*grad_term + 10*(1 - (gA*ssim(A,F) + gB*ssim(B,F)) / (gA + gB))
    mef:  20*mean|F - (A + B)/2|  + 20*grad_term + 10*(1 - (ssim(A,F) + ssim(B,F)) / 2)
    mff:  20*mean|F - (A + B)/2|  + 20*grad_term + 10*(1 - (gA*ssim(A,F) + gB*ssim(B,F)) / (gA + gB))

Correspondence with the published code, and the two places this module defines what it leaves open:

* The published code computes gA and gB from sources that never require grad. Here they are computed under the
  inputs' autograd like every other quantity (no detach): for sources without grad the two agree; if A or B do
  require grad, the gradient flows through the SSIM weights too.
* gA + gB = 0 (the padded Sobel response of both sources vanishes, e.g. two all-zero images; note that with zero
  padding a nonzero constant image has a border gradient, so it does not hit this case) makes the weights 0/0,
  which a plain division turns into NaN. Here the weights are then defined as 1/2 each (the MEF weighting),
  with zero gradient through the weights, so the loss and its gradient stay finite.

Kernels are built at call time in the input's dtype and on its device: the modules hold no parameters or buffers,
so ``.to()`` has nothing to move and float32, float64 and any device work alike.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from tita_fast.train import metric_terms

INTENSITY_WEIGHT = 20.0
GRADIENT_WEIGHT = 20.0
SSIM_WEIGHT = 10.0

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


def _check_images(**images: Tensor) -> list[Tensor]:
    """Validate same-shape 4-D floating tensors on one device; return them in their common (promoted) dtype."""
    named = list(images.items())
    for name, t in named:
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"expected 4-D (N, C, H, W) tensors, got {name} with shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"expected floating-point tensors, got {name} with dtype {t.dtype}")
    tensors = list(images.values())
    if any(t.shape != tensors[0].shape for t in tensors):
        shapes = ", ".join(f"{name} {tuple(t.shape)}" for name, t in named)
        raise ValueError(f"{', '.join(images)} must share one shape, got {shapes}")
    if any(t.device != tensors[0].device for t in tensors):
        devices = ", ".join(f"{name} on {t.device}" for name, t in named)
        raise ValueError(f"{', '.join(images)} must be on one device, got {devices}")
    # Mixed floating dtypes (e.g. a bfloat16 network output against float32 sources) are computed in the
    # promoted dtype rather than rejected, like ordinary tensor arithmetic.
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors))
    return [t.to(dtype) for t in tensors]


def _sobel(t: Tensor) -> Tensor:
    channels = t.shape[1]
    kx = torch.tensor([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=t.dtype, device=t.device)
    ky = torch.tensor([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=t.dtype, device=t.device)
    # One grouped convolution gives both responses of every channel, ordered (c0 x, c0 y, c1 x, c1 y, ...).
    weight = torch.stack([kx, ky]).unsqueeze(1).repeat(channels, 1, 1, 1)
    responses = nnf.conv2d(t, weight, padding=1, groups=channels).abs()
    n, _, height, width = responses.shape
    return responses.reshape(n, channels, 2, height, width).sum(dim=2)


def sobel_gradient(t: Tensor) -> Tensor:
    """``|conv(t, Kx)| + |conv(t, Ky)|`` per channel with zero padding 1: (N, C, H, W) -> (N, C, H, W)."""
    (t,) = _check_images(t=t)
    return _sobel(t)


def _gaussian_window(dtype: torch.dtype, device: torch.device) -> Tensor:
    offsets = torch.arange(SSIM_WINDOW, dtype=dtype, device=device) - SSIM_WINDOW // 2
    g = torch.exp(-(offsets**2) / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    return torch.outer(g, g)


def _ssim_map(p: Tensor, q: Tensor) -> Tensor:
    channels = p.shape[1]
    window = _gaussian_window(p.dtype, p.device).expand(5 * channels, 1, SSIM_WINDOW, SSIM_WINDOW)
    # The five local means come from one grouped convolution over the stacked inputs.
    stacked = torch.cat([p, q, p * p, q * q, p * q], dim=1)
    means = nnf.conv2d(stacked, window, padding=SSIM_WINDOW // 2, groups=5 * channels)
    mu_p, mu_q, mean_pp, mean_qq, mean_pq = means.split(channels, dim=1)
    var_p = mean_pp - mu_p * mu_p
    var_q = mean_qq - mu_q * mu_q
    cov = mean_pq - mu_p * mu_q
    numerator = (2 * mu_p * mu_q + SSIM_C1) * (2 * cov + SSIM_C2)
    denominator = (mu_p * mu_p + mu_q * mu_q + SSIM_C1) * (var_p + var_q + SSIM_C2)
    return numerator / denominator


def ssim_map(p: Tensor, q: Tensor) -> Tensor:
    """Per-pixel SSIM (N, C, H, W): 11x11 Gaussian window (sigma 1.5), zero padding 5, C1 = 0.01^2, C2 = 0.03^2."""
    p, q = _check_images(p=p, q=q)
    return _ssim_map(p, q)


def ssim(p: Tensor, q: Tensor) -> Tensor:
    """Scalar SSIM: the mean of :func:`ssim_map` over batch, channels and pixels."""
    return ssim_map(p, q).mean()


def gradient_weights(grad_a: Tensor, grad_b: Tensor) -> tuple[Tensor, Tensor]:
    """``(gA, gB) / (gA + gB)``; equal weights 1/2 when gA + gB = 0 (both sources flat), see the module docstring."""
    total = grad_a + grad_b
    flat = total == 0  # Sobel magnitudes are >= 0, so this is exactly gA = gB = 0.
    # Dividing by a placeholder 1 where flat keeps the unused branch finite: torch.where would otherwise send
    # 0 * inf = NaN back through the 0/0 division.
    safe_total = torch.where(flat, torch.ones_like(total), total)
    half = torch.full_like(total, 0.5)
    return torch.where(flat, half, grad_a / safe_total), torch.where(flat, half, grad_b / safe_total)


def equal_weights(grad_a: Tensor, grad_b: Tensor) -> tuple[Tensor, Tensor]:
    """Weights 1/2 and 1/2, whatever the source gradients."""
    half = torch.full_like(grad_a, 0.5)
    return half, half


class FusionLoss(nn.Module):
    """Intensity + gradient + SSIM fusion loss; subclasses choose the intensity target and the SSIM weights.

    ``vif_weight`` and ``qabf_weight`` (0 = the published loss) add the evaluation metrics themselves
    (:mod:`tita_fast.train.metric_terms`): ``vif_weight * exp(-VIF / 2)`` (VIF sums the two sources and exceeds 2
    where fusion raises contrast, so ``1 - VIF / 2`` could go negative; FAMO weighs log-losses, which must stay
    positive) and ``qabf_weight * (1 - Qabf)`` (Qabf <= 0.975). Both need single-channel images (the metrics are defined on luminance).
    """

    def __init__(self, vif_weight: float = 0.0, qabf_weight: float = 0.0):
        super().__init__()
        for name, value in (("vif_weight", vif_weight), ("qabf_weight", qabf_weight)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        self.vif_weight = vif_weight
        self.qabf_weight = qabf_weight

    def intensity_target(self, A: Tensor, B: Tensor) -> Tensor:
        """The image ``F`` should match in the intensity term."""
        raise NotImplementedError

    def ssim_weights(self, grad_a: Tensor, grad_b: Tensor) -> tuple[Tensor, Tensor]:
        """Weights of ssim(A, F) and ssim(B, F), given the batch-mean Sobel magnitudes gA and gB."""
        raise NotImplementedError

    def terms(self, A: Tensor, B: Tensor, F: Tensor) -> dict[str, Tensor]:
        """The weighted terms ``intensity``, ``gradient``, ``ssim`` (and ``vif`` / ``qabf`` when their weights are
        not 0); the loss is their sum."""
        A, B, F = _check_images(A=A, B=B, F=F)
        if (self.vif_weight or self.qabf_weight) and A.shape[1] != 1:
            raise ValueError(f"the VIF and Qabf terms need single-channel images, got {A.shape[1]} channels")
        n = A.shape[0]
        # A, B and F go through the Sobel filter (and A, B through SSIM against F) as one batch each.
        sobel_a, sobel_b, sobel_f = _sobel(torch.cat([A, B, F])).split(n)
        ssim_maps = _ssim_map(torch.cat([A, B]), torch.cat([F, F]))
        ssim_a, ssim_b = ssim_maps[:n].mean(), ssim_maps[n:].mean()
        weight_a, weight_b = self.ssim_weights(sobel_a.mean(), sobel_b.mean())
        terms = {
            "intensity": INTENSITY_WEIGHT * (F - self.intensity_target(A, B)).abs().mean(),
            "gradient": GRADIENT_WEIGHT * (sobel_f - torch.maximum(sobel_a, sobel_b)).abs().mean(),
            "ssim": SSIM_WEIGHT * (1 - (weight_a * ssim_a + weight_b * ssim_b)),
        }
        if self.vif_weight:
            terms["vif"] = self.vif_weight * torch.exp(-metric_terms.vif(A, B, F) / 2)
        if self.qabf_weight:
            terms["qabf"] = self.qabf_weight * (1 - metric_terms.qabf(A, B, F))
        return terms

    def forward(self, A: Tensor, B: Tensor, F: Tensor) -> Tensor:
        return sum(self.terms(A, B, F).values())


class VIFLoss(FusionLoss):
    """Infrared-visible fusion: intensity towards max(A, B), SSIM weighted by the sources' gradients."""

    def intensity_target(self, A: Tensor, B: Tensor) -> Tensor:
        return torch.maximum(A, B)

    def ssim_weights(self, grad_a: Tensor, grad_b: Tensor) -> tuple[Tensor, Tensor]:
        return gradient_weights(grad_a, grad_b)


class MEFLoss(FusionLoss):
    """Multi-exposure fusion: intensity towards (A + B) / 2, SSIM weighted equally."""

    def intensity_target(self, A: Tensor, B: Tensor) -> Tensor:
        return (A + B) / 2

    def ssim_weights(self, grad_a: Tensor, grad_b: Tensor) -> tuple[Tensor, Tensor]:
        return equal_weights(grad_a, grad_b)


class MFFLoss(FusionLoss):
    """Multi-focus fusion: intensity towards (A + B) / 2, SSIM weighted by the sources' gradients."""

    def intensity_target(self, A: Tensor, B: Tensor) -> Tensor:
        return (A + B) / 2

    def ssim_weights(self, grad_a: Tensor, grad_b: Tensor) -> tuple[Tensor, Tensor]:
        return gradient_weights(grad_a, grad_b)


LOSSES: dict[str, type[FusionLoss]] = {"vif": VIFLoss, "mef": MEFLoss, "mff": MFFLoss}


def build_loss(name: str, vif_weight: float = 0.0, qabf_weight: float = 0.0) -> FusionLoss:
    """The loss of task ``name`` ("vif", "mef" or "mff"), with the optional metric terms (see FusionLoss)."""
    if name not in LOSSES:
        raise ValueError(f"unknown fusion loss {name!r}; choose one of {', '.join(LOSSES)}")
    return LOSSES[name](vif_weight, qabf_weight)
