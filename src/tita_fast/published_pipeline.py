"""The published TITA test script's pre- and post-processing, the steps around the network that
``fuse(..., pipeline="published")`` and ``tita-fast fuse --pipeline published`` run (:mod:`tita_fast.fuse` runs the
network between them), to reproduce the fused images (and so the numbers) of papers.

The steps, as the published test script takes them (``docs/fusing.md`` says what differs from our default
pipeline and why):

1. Each source is read as a Pillow ``L`` image: the 8-bit luminance Pillow computes for RGB (its fixed-point
   BT.601, rounded), then divided by 255 into float32.
2. Both are padded on the bottom and right with their flipped copy (``cat([x, flip(x)])`` along the rows, then
   the columns) up to the window grid **plus one window**: ``(H // window + 1) * window`` rows, even when H is
   already a multiple of the window. The network sees this padded pair (its own reflect padding then has nothing
   left to do), so the image's last rows and columns, and OAF's global average, see the flipped copy.
3. The network's output is cropped back, clamped to [0, 1], and rounded to 8 bits as ``round(x * 255)`` in float32
   with round-half-to-even (numpy's ``round``, which the published ``tensor2uint`` uses).
4. Colour, when either source is RGB: each colour source's Cr and Cb come from OpenCV's 8-bit
   ``COLOR_RGB2YCrCb`` (a gray source has Cr = Cb = 128), are fused per pixel with the spec's
   ``|C - 128|``-weighted rule, cast to 8 bits by truncation (assumed: the usual ``astype(uint8)``; the published
   code is not available to us), stacked with the 8-bit fused luminance and converted back with OpenCV's 8-bit
   ``COLOR_YCrCb2RGB`` (both emulated exactly, see :mod:`tita_fast.color`).

Only 8-bit images are read: the published script's Pillow ``L`` conversion saturates 16-bit values at 255.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from tita_fast import color


def flip_pad(image: torch.Tensor, window: int) -> torch.Tensor:
    """(..., H, W) padded at the bottom and right with its flipped copy to ``(H // window + 1) * window`` rows and
    ``(W // window + 1) * window`` columns (a flipped copy is at most H rows: a smaller image stays short of it,
    as in the published script, and the network's reflect padding completes it)."""
    height, width = image.shape[-2:]
    image = torch.cat([image, image.flip(-2)], dim=-2)[..., : (height // window + 1) * window, :]
    return torch.cat([image, image.flip(-1)], dim=-1)[..., : (width // window + 1) * window]


def pillow_luminance(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 1 or 3, H, W) -> uint8 (N, 1, H, W): gray as it is, RGB as Pillow's ``convert("L")``."""
    if images.shape[1] == 1:
        return images
    pixels = images.permute(0, 2, 3, 1).numpy()
    gray = [np.asarray(Image.fromarray(rgb, "RGB").convert("L")) for rgb in pixels]
    return torch.from_numpy(np.stack(gray))[:, None]


def luminance_inputs(A: torch.Tensor, B: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 1 and 2: image batches (N, 1 or 3, H, W) of 8-bit levels -> the network's padded float32 luminance
    pair, on the CPU."""
    if any(not torch.equal(x, x.round().clamp(0, 255)) for x in (A, B)):
        raise ValueError("the published pipeline fuses 8-bit images: pixels must be integers 0..255")
    luminance = (pillow_luminance(x.cpu().to(torch.uint8)) for x in (A, B))
    return tuple(flip_pad((y.double() / 255).float(), window) for y in luminance)


def output_image(fused: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Steps 3 and 4: the network's output on the padded pair, already clamped to [0, 1], and the sources ->
    (N, 1 or 3, H, W) float32 holding 8-bit levels, on the CPU."""
    height, width = A.shape[-2:]
    luminance = (fused[..., :height, :width].cpu() * 255).round().to(torch.uint8)
    if A.shape[1] == 1 and B.shape[1] == 1:
        return luminance.float()
    chroma_a, chroma_b = (_chroma_8bit(x.cpu().to(torch.uint8)) for x in (A, B))
    chroma = color.fuse_chroma(chroma_a, chroma_b).to(torch.uint8)  # truncation, as astype(uint8)
    return color.ycrcb_to_rgb_8bit(torch.cat([luminance, chroma], dim=1)).float()


def _chroma_8bit(images: torch.Tensor) -> torch.Tensor:
    """(N, 2, H, W) float64 Cr, Cb of uint8 images as OpenCV computes them; 128 for gray."""
    if images.shape[1] == 1:
        return torch.full((images.shape[0], 2, *images.shape[-2:]), color.NEUTRAL, dtype=torch.float64)
    return color.rgb_to_ycrcb_8bit(images)[:, 1:].double()
