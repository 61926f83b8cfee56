"""Colour at inference (spec section *Colour at inference*): the network fuses luminance; chroma is fused per pixel.

Images here are float tensors (..., C, H, W) on the 0–255 scale, C = 1 (gray) or 3 (RGB). The conversion is
ITU-R BT.601 full range as OpenCV's ``BGR2YCrCb``::

    Y  = 0.299 R + 0.587 G + 0.114 B
    Cr = 0.713 (R - Y) + 128
    Cb = 0.564 (B - Y) + 128

and back with the exact inverse of these three lines (OpenCV's ``YCrCb2BGR`` rounds the inverse to 1.403, 0.714,
0.344, 1.773; the exact inverse keeps a gray or unchanged image unchanged). A gray source has Cb = Cr = 128. The
chroma of the two sources is fused per pixel as

    (C_A |C_A - 128| + C_B |C_B - 128|) / (|C_A - 128| + |C_B - 128|)     (128 where both are 128)

for C = Cb and C = Cr. The result is colour when either source is, and is clipped to [0, 255].

The published pipeline (:mod:`tita_fast.published_pipeline`) converts 8-bit images as OpenCV's ``cv2.cvtColor``
does on uint8 (``COLOR_RGB2YCrCb`` and ``COLOR_YCrCb2RGB``): :func:`rgb_to_ycrcb_8bit` and
:func:`ycrcb_to_rgb_8bit` reproduce its 14-bit fixed-point arithmetic (coefficients rounded to multiples of
2^-14, Cr and Cb from the rounded Y, results rounded half up and saturated to 0..255). OpenCV is not a dependency;
both are bit-exact with OpenCV 5.1 on every 8-bit input and within 1 level of the real-valued formulas (tested).
"""

from __future__ import annotations

import torch

NEUTRAL = 128.0
_RED, _GREEN, _BLUE = 0.299, 0.587, 0.114
_CR, _CB = 0.713, 0.564

# OpenCV's 8-bit YCrCb: every coefficient times 2^14, rounded (Y's sum to exactly 2^14).
_SHIFT = 14
_ROUND = 1 << (_SHIFT - 1)
_NEUTRAL_FIXED = 128 << _SHIFT
_Y_FIXED = (4899, 9617, 1868)  # 0.299, 0.587, 0.114
_CR_FIXED, _CB_FIXED = 11682, 9241  # 0.713, 0.564
_CR_TO_R, _CR_TO_G, _CB_TO_G, _CB_TO_B = 22987, -11698, -5636, 29049  # 1.403, -0.714, -0.344, 1.773


def _channels(image: torch.Tensor, allowed: tuple[int, ...], name: str) -> int:
    if image.dim() < 3 or image.shape[-3] not in allowed:
        raise ValueError(f"{name} must be (..., C, H, W) with C in {allowed}, got shape {tuple(image.shape)}")
    if not image.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor on the 0-255 scale, got {image.dtype}")
    return image.shape[-3]


def rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) RGB -> (..., 3, H, W) holding Y, Cb, Cr."""
    _channels(rgb, (3,), "rgb")
    r, g, b = rgb.unbind(-3)
    y = _RED * r + _GREEN * g + _BLUE * b
    return torch.stack([y, _CB * (b - y) + NEUTRAL, _CR * (r - y) + NEUTRAL], dim=-3)


def ycbcr_to_rgb(ycbcr: torch.Tensor) -> torch.Tensor:
    """Exact inverse of :func:`rgb_to_ycbcr` (no clipping)."""
    _channels(ycbcr, (3,), "ycbcr")
    y, cb, cr = ycbcr.unbind(-3)
    r = y + (cr - NEUTRAL) / _CR
    b = y + (cb - NEUTRAL) / _CB
    g = (y - _RED * r - _BLUE * b) / _GREEN
    return torch.stack([r, g, b], dim=-3)


def _eight_bit(image: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if image.dtype != torch.uint8 or image.dim() < 3 or image.shape[-3] != 3:
        raise ValueError(f"{name} must be a uint8 tensor (..., 3, H, W), got {image.dtype} {tuple(image.shape)}")
    return image.to(torch.int32).unbind(-3)


def _saturate(channels: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(channels, dim=-3).clamp(0, 255).to(torch.uint8)


def rgb_to_ycrcb_8bit(rgb: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) RGB -> uint8 (..., 3, H, W) holding Y, Cr, Cb, as OpenCV's ``COLOR_RGB2YCrCb``."""
    r, g, b = _eight_bit(rgb, "rgb")
    y = (r * _Y_FIXED[0] + g * _Y_FIXED[1] + b * _Y_FIXED[2] + _ROUND) >> _SHIFT
    cr = ((r - y) * _CR_FIXED + _NEUTRAL_FIXED + _ROUND) >> _SHIFT
    cb = ((b - y) * _CB_FIXED + _NEUTRAL_FIXED + _ROUND) >> _SHIFT
    return _saturate([y, cr, cb])


def ycrcb_to_rgb_8bit(ycrcb: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) Y, Cr, Cb -> uint8 (..., 3, H, W) RGB, as OpenCV's ``COLOR_YCrCb2RGB``."""
    y, cr, cb = _eight_bit(ycrcb, "ycrcb")
    cr, cb = cr - 128, cb - 128
    r = y + ((cr * _CR_TO_R + _ROUND) >> _SHIFT)
    g = y + ((cr * _CR_TO_G + cb * _CB_TO_G + _ROUND) >> _SHIFT)
    b = y + ((cb * _CB_TO_B + _ROUND) >> _SHIFT)
    return _saturate([r, g, b])


def fuse_chroma(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pixel chroma fusion: each source weighted by its distance from neutral (128)."""
    weight_a, weight_b = (a - NEUTRAL).abs(), (b - NEUTRAL).abs()
    total = weight_a + weight_b
    fused = (a * weight_a + b * weight_b) / torch.where(total > 0, total, torch.ones_like(total))
    return torch.where(total > 0, fused, torch.full_like(fused, NEUTRAL))


def luminance_and_chroma(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(..., 1 or 3, H, W) -> luminance (..., 1, H, W) and chroma (..., 2, H, W) as Cb, Cr (None for gray)."""
    if _channels(image, (1, 3), "image") == 1:
        return image, None
    ycbcr = rgb_to_ycbcr(image)
    return ycbcr[..., :1, :, :], ycbcr[..., 1:, :, :]


def recombine(luma: torch.Tensor, chroma_a: torch.Tensor | None, chroma_b: torch.Tensor | None) -> torch.Tensor:
    """The fused image from the fused luminance (..., 1, H, W) and the sources' chroma: gray when both sources
    are gray, else RGB (a gray source counting as neutral chroma); clipped to [0, 255]."""
    if chroma_a is None and chroma_b is None:
        return luma.clamp(0, 255)
    neutral = torch.full((*luma.shape[:-3], 2, *luma.shape[-2:]), NEUTRAL, dtype=luma.dtype, device=luma.device)
    chroma = fuse_chroma(neutral if chroma_a is None else chroma_a, neutral if chroma_b is None else chroma_b)
    return ycbcr_to_rgb(torch.cat([luma, chroma], dim=-3)).clamp(0, 255)
