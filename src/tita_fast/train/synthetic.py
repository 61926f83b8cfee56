"""Synthetic multi-focus and multi-exposure training pairs made from ordinary photos, for users without datasets.

* Multi-focus (``"mff"``): a smooth random region mask splits the photo; image ``a`` is sharp inside the region
  and Gaussian-blurred outside, image ``b`` the complement, so the pair is complementary in focus.
* Multi-exposure (``"mef"``): ``a`` is over-exposed and ``b`` under-exposed by random gains applied in linear light
  (gamma 2.2) through a simple camera response with a small black level, so highlights clip to 255 in ``a`` and
  shadows crush to 0 in ``b``.

:func:`make_pairs` writes ``out/a/<stem>.png`` and ``out/b/<stem>.png``, which ``PairSource(out, "a", "b")`` reads.
"""

from __future__ import annotations

import os
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from .data import DataError

__all__ = ["KINDS", "make_pairs", "multiexposure_pair", "multifocus_pair"]

_GAMMA = 2.2
_BLACK = 0.002  # linear black level: under-exposed values below it crush to 0, as a sensor's noise floor does
_GRAY_16BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def _check_range(name: str, bounds: tuple[float, float], low: float, high: float) -> tuple[float, float]:
    lo, hi = (float(b) for b in bounds)
    if not low < lo <= hi < high:
        raise ValueError(f"{name} must be a range (lo, hi) with {low} < lo <= hi < {high}, got {bounds!r}")
    return lo, hi


def _usable_mode(image: Image.Image) -> Image.Image:
    """Keep L and RGB; gray variants become L (16-bit scaled, not clipped), everything else RGB."""
    if image.mode in ("L", "RGB"):
        return image
    if image.mode in _GRAY_16BIT:
        values = np.asarray(image.convert("I"), dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8))
    if image.mode in ("1", "LA", "La"):
        return image.convert("L")
    return image.convert("RGB")


def _focus_mask(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A soft-edged 'L' mask of a few smooth random blobs covering roughly 30-70 % of the image."""
    width, height = size
    cells = int(rng.integers(2, 6))  # a coarse noise grid upsampled smoothly gives a few large blobs
    noise = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    field = np.asarray(Image.fromarray(noise).resize((width, height), Image.Resampling.BICUBIC))
    threshold = np.quantile(field, rng.uniform(0.3, 0.7))
    hard = Image.fromarray(np.where(field > threshold, 255, 0).astype(np.uint8))
    return hard.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))


def multifocus_pair(
    image: Image.Image, rng: np.random.Generator, blur: tuple[float, float] = (2.0, 6.0)
) -> tuple[Image.Image, Image.Image]:
    """(a, b): ``a`` sharp inside a random region and blurred outside it, ``b`` the complement.

    Each image's blur is a Gaussian of radius drawn uniformly from ``blur`` (pixels). L and RGB images keep their
    mode; other modes are converted (gray variants to L, the rest to RGB).
    """
    low, high = _check_range("blur", blur, 0.0, float("inf"))
    image = _usable_mode(image)
    mask = _focus_mask(image.size, rng)
    radius_a, radius_b = rng.uniform(low, high, size=2)
    a = Image.composite(image, image.filter(ImageFilter.GaussianBlur(float(radius_a))), mask)
    b = Image.composite(image.filter(ImageFilter.GaussianBlur(float(radius_b))), image, mask)
    return a, b


def _expose(image: Image.Image, gain: float) -> Image.Image:
    """Re-render ``image`` with exposure ``gain`` in linear light: clip at white, crush below the black level."""
    linear = (np.asarray(image, dtype=np.float64) / 255.0) ** _GAMMA * gain
    response = np.clip((linear - _BLACK) / (1.0 - _BLACK), 0.0, 1.0) ** (1.0 / _GAMMA)
    return Image.fromarray(np.round(response * 255.0).astype(np.uint8))


def multiexposure_pair(
    image: Image.Image,
    rng: np.random.Generator,
    over: tuple[float, float] = (1.6, 3.0),
    under: tuple[float, float] = (0.25, 0.6),
) -> tuple[Image.Image, Image.Image]:
    """(a, b): ``a`` over-exposed by a linear gain drawn from ``over`` (> 1), ``b`` under-exposed by one from
    ``under`` (in (0, 1)). L and RGB images keep their mode; other modes are converted as in :func:`multifocus_pair`.
    """
    over = _check_range("over", over, 1.0, float("inf"))
    under = _check_range("under", under, 0.0, 1.0)
    image = _usable_mode(image)
    return _expose(image, rng.uniform(*over)), _expose(image, rng.uniform(*under))


KINDS: dict[str, Callable[..., tuple[Image.Image, Image.Image]]] = {"mff": multifocus_pair, "mef": multiexposure_pair}


def _load_photo(path: Path, size: int | None) -> Image.Image:
    try:
        with Image.open(path) as opened:
            image = _usable_mode(ImageOps.exif_transpose(opened))  # photos from cameras are often stored rotated
            image.load()
    except Exception as e:  # truncated or corrupt data only shows up when decoding
        raise DataError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from e
    if size is not None:
        width, height = image.size
        scale = size / min(width, height)
        shape = (size, max(1, round(height * scale))) if width <= height else (max(1, round(width * scale)), size)
        image = image.resize(shape, Image.Resampling.LANCZOS)
    return image


def _save_atomic(image: Image.Image, target: Path) -> None:
    """Write a PNG under a hidden temporary name in the same folder, then rename it into place."""
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        image.save(temporary, format="PNG")
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def make_pairs(
    kind: str,
    photos: str | os.PathLike,
    out: str | os.PathLike,
    seed: int = 0,
    size: int | None = None,
    overwrite: bool = False,
) -> list[str]:
    """Make one ``kind`` pair per photo in ``photos``; write ``out/a/<stem>.png`` and ``out/b/<stem>.png``.

    Every non-hidden file directly in ``photos`` must be an image (sub-folders are ignored). ``size`` resizes each
    photo so its shorter side is ``size`` first. Each photo's random generator comes from (``seed``, ``kind``, file
    name), so the output does not depend on the order or number of photos. ``out`` must be empty or absent unless
    ``overwrite=True``, which replaces same-named files and leaves other files in place. Each PNG is written
    atomically. Returns the stems written, in file-name order.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of: {', '.join(KINDS)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"size must be None or an integer >= 1, got {size!r}")
    photos, out = Path(photos), Path(out)
    if not photos.is_dir():
        raise DataError(f"{photos}: photos folder does not exist")
    names = sorted(e.name for e in os.scandir(photos) if not e.name.startswith(".") and e.is_file())
    if not names:
        raise DataError(f"{photos}: photos folder has no (non-hidden) image files")
    # Check every header before writing anything, so a bad file does not leave a partial output behind.
    stems: dict[str, str] = {}
    for name in names:
        try:
            with Image.open(photos / name):
                pass
        except Exception as e:
            raise DataError(f"{photos / name}: not a readable image ({type(e).__name__}: {e})") from e
        stem = Path(name).stem
        if stem in stems:
            raise DataError(f"{photos / stems[stem]} and {photos / name} would both be written as {stem}.png")
        stems[stem] = name
    if out.exists():
        if not out.is_dir():
            raise DataError(f"{out}: output path exists and is not a folder")
        if not overwrite and any(out.iterdir()):
            raise FileExistsError(f"{out}: output folder is not empty; pass overwrite=True to replace its pairs")
    (out / "a").mkdir(parents=True, exist_ok=True)
    (out / "b").mkdir(parents=True, exist_ok=True)

    make = KINDS[kind]
    for stem, name in stems.items():
        entropy = [seed, zlib.crc32(kind.encode("utf-8")), zlib.crc32(os.fsencode(name))]
        a, b = make(_load_photo(photos / name, size), np.random.default_rng(np.random.SeedSequence(entropy)))
        _save_atomic(a, out / "a" / f"{stem}.png")
        _save_atomic(b, out / "b" / f"{stem}.png")
    return list(stems)
