"""Reading and writing the images users fuse (Pillow): gray or colour, 8 or 16 bits per sample, any size.

:func:`read_image` gives a float32 tensor (C, H, W) on the 0–255 scale, C = 1 (gray) or 3 (RGB), and the bit
depth to write the result back with. 16-bit images keep their precision (divided by 257 onto 0–255 as floats).
Modes: L, RGB as they are; 1, LA, P with gray palette -> L; RGBA, P, CMYK, YCbCr, ... -> RGB (alpha dropped);
I;16* and I (16-bit gray, values 0..65535) -> gray, 16 bits. 32-bit float images (F) are refused: their scale
is unknown.
"""

from __future__ import annotations

import os
import re
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
            return from_pil(image, str(path))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:  # not an image, truncated, unreadable
        raise ValueError(f"{path}: not a readable image ({type(err).__name__}: {err})") from None


def from_pil(image: Image.Image, name: str = "image") -> tuple[torch.Tensor, int]:
    """A loaded Pillow image as (C, H, W) float32 on 0–255 and its bit depth (8 or 16), modes as above."""
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES:
        array = np.asarray(image, dtype=np.float64)
        if array.min() < 0 or array.max() > 65535:
            raise ValueError(f"{name}: 32-bit integer image with values outside 0..65535 is not supported")
        return torch.from_numpy(array / SIXTEEN_BIT_SCALE).float()[None], 16
    if mode == "F":
        raise ValueError(f"{name}: 32-bit float images are not supported (their value range is unknown)")
    if mode not in ("L", "RGB"):
        image = image.convert("L" if mode in ("1", "LA") or _gray_palette(image) else "RGB")
    tensor = torch.from_numpy(np.array(image, dtype=np.float32))
    return (tensor[None] if tensor.dim() == 2 else tensor.permute(2, 0, 1).contiguous()), 8


def _gray_palette(image: Image.Image) -> bool:
    if image.mode != "P":
        return False
    colours = np.asarray(image.convert("RGB"), dtype=np.int16)
    return bool((colours[..., 0] == colours[..., 1]).all() and (colours[..., 1] == colours[..., 2]).all())


def to_pil(image: torch.Tensor, bits: int = 8) -> Image.Image:
    """(C, H, W) on 0–255 (clipped, rounded) as an 8-bit L/RGB or a 16-bit gray (I;16) Pillow image."""
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected an image (C, H, W) with C = 1 or 3, got shape {tuple(image.shape)}")
    array = image.detach().double().clamp(0, 255).cpu().numpy()
    if bits == 16:
        if image.shape[0] != 1:
            raise ValueError("Pillow writes 16 bits per sample for gray images only, not RGB")
        return Image.fromarray(np.rint(array[0] * SIXTEEN_BIT_SCALE).astype(np.uint16))
    if bits != 8:
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    pixels = np.rint(array).astype(np.uint8)
    return Image.fromarray(pixels[0] if image.shape[0] == 1 else pixels.transpose(1, 2, 0))


def write_image(path: str | os.PathLike, image: torch.Tensor, bits: int = 8) -> None:
    """Write (C, H, W) on 0–255 (see :func:`to_pil`); the format follows the suffix. Written to a temporary name
    first and renamed, so a failed write leaves no partial file."""
    path = Path(path)
    try:
        picture = to_pil(image, bits)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    temporary = path.with_name(f".{path.name}.partial{path.suffix}")
    try:
        picture.save(temporary)
        os.replace(temporary, path)
    except (OSError, ValueError, KeyError) as err:
        temporary.unlink(missing_ok=True)
        raise ValueError(f"{path}: cannot write the image ({type(err).__name__}: {err})") from None


IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})


def match_images(*sources: str | os.PathLike) -> list[tuple[str, list[Path]]]:
    """Group image files by stem across ``sources``: all files, or all folders (their image files, matched by
    stem). Returns ``[(stem, [path per source]), ...]`` sorted by stem; ValueError naming every problem: a missing
    path, files mixed with folders, a folder without images, a stem twice in one folder, a file without partner."""
    paths = [Path(s) for s in sources]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ValueError(f"no such file or folder: {', '.join(missing)}")
    if all(p.is_file() for p in paths):
        return [(paths[0].stem, paths)]
    if not all(p.is_dir() for p in paths):
        raise ValueError(f"give all files or all folders, got {', '.join(map(str, paths))}")
    problems, tables = [], []
    for folder in paths:
        table: dict[str, Path] = {}
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith(".") or not path.is_file():
                continue
            if path.stem in table:
                problems.append(f"{folder}: two images named {path.stem!r} ({table[path.stem].name}, {path.name})")
            table[path.stem] = path
        if not table:
            problems.append(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        tables.append(table)
    stems = set().union(*tables)
    for folder, table in zip(paths, tables, strict=True):
        lonely = sorted(stems - set(table))
        if lonely and table:
            problems.append(f"{folder}: no image for {len(lonely)} name(s) found elsewhere: {', '.join(lonely)}")
    if problems:
        raise ValueError("cannot match the images:\n  " + "\n  ".join(problems))
    return [(stem, [table[stem] for table in tables]) for stem in sorted(stems, key=_natural)]


def _natural(stem: str) -> tuple:
    """Sort key putting '2' before '10'."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", stem))
