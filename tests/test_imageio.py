"""Image files in and out: modes, 8 and 16 bits, formats, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tita_fast.imageio import read_image, write_image

from .conftest import SHARED

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif"])
def test_lossless_8_bit_round_trip(tmp_path, suffix):
    gray = RNG.integers(0, 256, (5, 7), dtype=np.uint8)
    rgb = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    for name, array in (("gray", gray), ("rgb", rgb)):
        Image.fromarray(array).save(tmp_path / f"{name}{suffix}")
        image, bits = read_image(tmp_path / f"{name}{suffix}")
        expected = torch.from_numpy(array).float()
        expected = expected[None] if array.ndim == 2 else expected.permute(2, 0, 1)
        assert bits == 8 and image.dtype == torch.float32
        assert torch.equal(image, expected)
        write_image(tmp_path / f"out_{name}{suffix}", image)
        assert np.array_equal(np.asarray(Image.open(tmp_path / f"out_{name}{suffix}")), array)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_gray_keeps_its_depth(tmp_path, suffix):
    array = RNG.integers(0, 65536, (6, 5), dtype=np.uint16)
    Image.fromarray(array).save(tmp_path / f"band{suffix}")
    image, bits = read_image(tmp_path / f"band{suffix}")
    assert bits == 16 and image.shape == (1, 6, 5)
    assert image.max() <= 255 and image.min() >= 0
    write_image(tmp_path / f"out{suffix}", image, bits=16)
    with Image.open(tmp_path / f"out{suffix}") as written:
        assert written.mode.startswith("I")
        assert np.array_equal(np.asarray(written).astype(np.int64), array.astype(np.int64))


def test_jpeg_and_other_modes(tmp_path):
    rgb = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.jpg", quality=95)
    image, bits = read_image(tmp_path / "photo.jpg")
    assert image.shape == (3, 8, 8) and bits == 8
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "alpha.png")
    assert read_image(tmp_path / "alpha.png")[0].shape == (3, 8, 8)
    Image.fromarray(rgb[..., 0]).convert("LA").save(tmp_path / "la.png")
    assert read_image(tmp_path / "la.png")[0].shape == (1, 8, 8)
    Image.fromarray(rgb[..., 0]).convert("P").save(tmp_path / "gray_palette.png")
    gray, _ = read_image(tmp_path / "gray_palette.png")
    assert gray.shape == (1, 8, 8) and torch.equal(gray[0], torch.from_numpy(rgb[..., 0]).float())
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    assert read_image(tmp_path / "palette.png")[0].shape == (3, 8, 8)


def test_unreadable_files_are_named(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="notes.png: not a readable image"):
        read_image(tmp_path / "notes.png")
    Image.fromarray(RNG.integers(0, 256, (64, 64), dtype=np.uint8)).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.png: not a readable image"):
        read_image(tmp_path / "cut.png")
    with pytest.raises(ValueError, match="absent.png: no such file"):
        read_image(tmp_path / "absent.png")
    Image.fromarray(np.zeros((3, 3), dtype=np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ValueError, match="float images are not supported"):
        read_image(tmp_path / "float.tif")


def test_write_refusals_leave_nothing(tmp_path):
    with pytest.raises(ValueError, match="gray images only"):
        write_image(tmp_path / "rgb16.png", torch.zeros(3, 4, 4), bits=16)
    with pytest.raises(ValueError, match="C = 1 or 3"):
        write_image(tmp_path / "x.png", torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="cannot write"):
        write_image(tmp_path / "x.unknown", torch.zeros(1, 4, 4))
    assert list(tmp_path.iterdir()) == []


def test_shared_data_modes():
    data = SHARED / "data"
    if not data.exists():
        pytest.skip(f"{data} is absent (real test pairs live in ../shared/data beside the repository)")
    band, bits = read_image(data / "remote/gifnet/a/band1.tif")
    assert band.shape == (1, 512, 481) and bits == 8
    for side, channels in (("a", 1), ("b", 3)):
        name = next(p for p in (data / "nir/gifnet" / side).iterdir() if not p.name.startswith("."))
        assert read_image(name)[0].shape[0] == channels
