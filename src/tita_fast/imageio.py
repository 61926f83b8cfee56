"""Reading and writing the images users fuse (Pillow): gray or colour, 8 or 16 bits per sample, any size.

:func:`read_image` gives a float32 tensor (C, H, W) on the 0–255 scale, C = 1 (gray) or 3 (RGB), and the bit
depth to write the result back with. 16-bit images keep their precision (divided by 257 onto 0–255 as floats).
Modes: L, RGB as they are; 1, LA, P with gray palette -> L; RGBA, P, CMYK, YCbCr, ... -> RGB (alpha dropped);
I;16* and I (16-bit gray, values 0..65535) -> gray, 16 bits. 32-bit float images (F) are refused: their scale
is unknown.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
SIXTEEN_BIT_SCALE = 65535 / 255  # 257: 16-bit values onto the 0-255 scale


def read_image(path: str | os.PathLike) -> tuple[torch.Tensor, int]:
    """(image (C, H, W) float32 on 0–255, bits 8 or 16); ValueError naming the file if it cannot be read."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in SIXTEEN_BIT_MODES:
                array = np.asarray(image, dtype=np.float64)
                if array.min() < 0 or array.max() > 65535:
                    raise ValueError(f"{path}: 32-bit integer image with values outside 0..65535 is not supported")
                return torch.from_numpy(array / SIXTEEN_BIT_SCALE).float()[None], 16
            if mode == "F":
                raise ValueError(f"{path}: 32-bit float images are not supported (their value range is unknown)")
            if mode not in ("L", "RGB"):
                image = image.convert("L" if mode in ("1", "LA") or _gray_palette(image) else "RGB")
            array = np.asarray(image, dtype=np.float32)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:  # not an image, truncated, unreadable
        raise ValueError(f"{path}: not a readable image ({type(err).__name__}: {err})") from None
    tensor = torch.from_numpy(array.copy())
    return (tensor[None] if tensor.dim() == 2 else tensor.permute(2, 0, 1).contiguous()), 8


def _gray_palette(image: Image.Image) -> bool:
    if image.mode != "P":
        return False
    colours = np.asarray(image.convert("RGB"), dtype=np.int16)
    return bool((colours[..., 0] == colours[..., 1]).all() and (colours[..., 1] == colours[..., 2]).all())


def write_image(path: str | os.PathLike, image: torch.Tensor, bits: int = 8) -> None:
    """Write (C, H, W) on 0–255 (clipped, rounded) as 8-bit gray/RGB or 16-bit gray; the format follows the
    suffix. Written to a temporary name first and renamed, so a failed write leaves no partial file."""
    path = Path(path)
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"write_image expects (C, H, W) with C = 1 or 3, got shape {tuple(image.shape)}")
    array = image.detach().double().clamp(0, 255).cpu().numpy()
    if bits == 16:
        if image.shape[0] != 1:
            raise ValueError(f"{path}: Pillow writes 16 bits per sample for gray images only, not RGB")
        picture = Image.fromarray(np.rint(array[0] * SIXTEEN_BIT_SCALE).astype(np.uint16))
    elif bits == 8:
        pixels = np.rint(array).astype(np.uint8)
        picture = Image.fromarray(pixels[0] if image.shape[0] == 1 else pixels.transpose(1, 2, 0))
    else:
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    temporary = path.with_name(f".{path.name}.partial{path.suffix}")
    try:
        picture.save(temporary)
        os.replace(temporary, path)
    except (OSError, ValueError, KeyError) as err:
        temporary.unlink(missing_ok=True)
        raise ValueError(f"{path}: cannot write the image ({type(err).__name__}: {err})") from None
