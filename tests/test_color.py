"""Colour handling at inference (spec: Colour at inference), on hand-checkable pixels."""

from __future__ import annotations

import pytest
import torch

from tita_fast.color import fuse_chroma, luminance_and_chroma, recombine, rgb_to_ycbcr, ycbcr_to_rgb


def pixel(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).view(1, len(values), 1, 1)


def test_rgb_to_ycbcr_by_hand():
    # red (255, 0, 0): Y = 0.299 * 255 = 76.245; Cb = 0.564 * (0 - 76.245) + 128 = 84.99782;
    # Cr = 0.713 * (255 - 76.245) + 128 = 255.452315
    ycbcr = rgb_to_ycbcr(pixel(255, 0, 0)).flatten()
    torch.testing.assert_close(ycbcr, torch.tensor([76.245, 84.99782, 255.452315], dtype=torch.float64))
    # (10, 200, 30): Y = 2.99 + 117.4 + 3.42 = 123.81; Cb = 0.564 * (30 - 123.81) + 128 = 75.09116;
    # Cr = 0.713 * (10 - 123.81) + 128 = 46.85347
    ycbcr = rgb_to_ycbcr(pixel(10, 200, 30)).flatten()
    torch.testing.assert_close(ycbcr, torch.tensor([123.81, 75.09116, 46.85347], dtype=torch.float64))


def test_gray_pixels_have_neutral_chroma_and_round_trip():
    gray = torch.linspace(0, 255, 7, dtype=torch.float64).view(1, 1, 1, 7).expand(1, 3, 1, 7)
    ycbcr = rgb_to_ycbcr(gray)
    torch.testing.assert_close(ycbcr[:, 0], gray[:, 0], rtol=0, atol=1e-12)
    torch.testing.assert_close(ycbcr[:, 1:], torch.full_like(ycbcr[:, 1:], 128.0), rtol=0, atol=1e-12)
    rgb = torch.rand(2, 3, 5, 6, dtype=torch.float64) * 255
    torch.testing.assert_close(ycbcr_to_rgb(rgb_to_ycbcr(rgb)), rgb, rtol=0, atol=1e-10)


def test_fuse_chroma_by_hand():
    a = torch.tensor([128.0, 128.0, 100.0, 200.0, 90.0], dtype=torch.float64)
    b = torch.tensor([128.0, 160.0, 200.0, 100.0, 166.0], dtype=torch.float64)
    # both neutral -> 128; one neutral -> the other; (100*28 + 200*72) / 100 = 172 (and symmetric);
    # 90 and 166 are equally far from 128 -> their mean, 128
    expected = torch.tensor([128.0, 160.0, 172.0, 172.0, 128.0], dtype=torch.float64)
    torch.testing.assert_close(fuse_chroma(a, b), expected)


def test_recombine_modes():
    luma = torch.full((1, 1, 2, 2), 100.0, dtype=torch.float64)
    gray = torch.full((1, 1, 2, 2), 50.0, dtype=torch.float64)
    colour = torch.tensor([200.0, 40.0, 90.0], dtype=torch.float64).view(1, 3, 1, 1).expand(1, 3, 2, 2)

    _, none = luminance_and_chroma(gray)
    assert none is None
    out = recombine(torch.full((1, 1, 2, 2), 300.0, dtype=torch.float64), None, None)
    assert out.shape == (1, 1, 2, 2) and (out == 255).all(), "gray + gray stays gray, clipped"

    y, chroma = luminance_and_chroma(colour)
    # gray + colour: the colour source's chroma, the fused luminance
    mixed = recombine(luma, None, chroma)
    assert mixed.shape == (1, 3, 2, 2)
    torch.testing.assert_close(rgb_to_ycbcr(mixed)[:, 1:], chroma)
    torch.testing.assert_close(rgb_to_ycbcr(mixed)[:, :1], luma)
    # colour + the same colour with its own luminance gives the image back
    torch.testing.assert_close(recombine(y, chroma, chroma), colour.clamp(0, 255), rtol=0, atol=1e-10)


def test_bad_inputs():
    with pytest.raises(ValueError, match="C in"):
        luminance_and_chroma(torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="floating"):
        rgb_to_ycbcr(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="shape"):
        rgb_to_ycbcr(torch.zeros(4, 4))
