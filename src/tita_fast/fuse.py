"""Fusing images with TITA: files, Pillow images, numpy arrays or tensors; gray or colour; any size.

The network fuses luminance (spec *Colour at inference*, :mod:`tita_fast.color`); images too large for one pass
go through overlapping tiles blended seamlessly (:func:`fuse_luminance`). ``pipeline="published"`` runs the
published test script's pre- and post-processing instead (:mod:`tita_fast.published_pipeline`).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from tita_fast import color, imageio, published_pipeline
from tita_fast.backends import use_backend
from tita_fast.devices import resolve_device
from tita_fast.nn import TITA

DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "default.safetensors"
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_OVERLAP = 64
PIPELINES = ("tita_fast", "published")

_default_models: dict[torch.device, TITA] = {}


# ---------------------------------------------------------------------------------------------------- models
def load_model(checkpoint: str | os.PathLike | None = None, device: str | torch.device | None = None) -> TITA:
    """The model of ``checkpoint`` (a ``.safetensors`` written by ``tita-fast train`` or a published ``.pth``),
    or the default model shipped in the package when ``None``; in eval mode on ``device``."""
    device = resolve_device(device)
    if checkpoint is None:
        if device not in _default_models:
            _default_models[device] = TITA.from_checkpoint(DEFAULT_WEIGHTS, map_location=device)
        return _default_models[device]
    path = Path(checkpoint)
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint file")
    try:
        return TITA.from_checkpoint(path, map_location=device)
    except (RuntimeError, EOFError, OSError, KeyError, TypeError) as err:  # corrupt or not a torch file
        raise ValueError(f"{path}: not a readable TITA checkpoint ({type(err).__name__}: {err})") from None


# ------------------------------------------------------------------------------------------------ luminance
def fuse_luminance(
    model: TITA,
    A: torch.Tensor,
    B: torch.Tensor,
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    precision: str = "fp32",
) -> torch.Tensor:
    """Fuse luminance batches ``A, B`` (N, 1, H, W) in [0, 1] on the model's device; returns float32 in [0, 1].

    ``tile=None`` runs the whole image in one pass unless it would not fit in memory (estimated, or a CUDA
    out-of-memory error), then in tiles; ``tile=T`` forces T x T tiles overlapping by ``overlap`` pixels.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
    weight = model.conv_first1_A.weight
    A, B = (t.to(weight.device, weight.dtype) for t in (A, B))
    if tile is None:
        tile = auto_tile_size(model, A.shape[-2:], A.shape[0])
    with torch.inference_mode(), _autocast(weight.device, precision), _evaluating(model):
        if tile is None:
            try:
                return model(A, B).float().clamp(0, 1)
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                tile = auto_tile_size(model, A.shape[-2:], A.shape[0], fraction=0.25)
                tile = tile or max(256, _round_down(max(A.shape[-2:]) // 2, model.window_size))
        return _fuse_tiled(model, A, B, tile, overlap)


@contextmanager
def _evaluating(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no dropout, no stochastic depth) for the block, then the model's own mode back."""
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)


@contextmanager
def _autocast(device: torch.device, precision: str) -> Iterator[None]:
    dtype = PRECISIONS[precision]
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        yield


def _round_down(value: int, multiple: int) -> int:
    return max(multiple, value // multiple * multiple)


def bytes_per_pixel(model: TITA, dtype: torch.dtype = torch.float32) -> int:
    """Peak working memory of an inference pass per pixel: the largest window-attention score tensors (scores,
    bias/mask sum, softmax: 3 x heads x window^2) and ~24 feature maps of the embedding width are alive at once.
    """
    config = model.config
    heads = max(max(config[key]) for key in ("Ex_num_heads", "Fusion_num_heads", "Re_num_heads"))
    element = torch.empty((), dtype=dtype).element_size()
    return element * (3 * heads * model.window_size**2 + 24 * config["embed_dim"])


def available_memory(device: torch.device) -> int:
    """Bytes free for tensors on ``device`` now (CPU: the system's available memory; 4 GiB if unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def auto_tile_size(model: TITA, size, batch: int = 1, fraction: float = 0.5) -> int | None:
    """``None`` when a whole-image pass over the batch fits in ``fraction`` of the free memory, else the side of
    the tiles (each run over the whole batch) that do."""
    weight = model.conv_first1_A.weight
    budget = available_memory(weight.device) * fraction / batch
    per_pixel = bytes_per_pixel(model, weight.dtype)
    height, width = (_round_up(s, model.window_size) for s in size)
    if height * width * per_pixel <= budget:
        return None
    return _round_down(int(math.sqrt(budget / per_pixel)), model.window_size)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def tile_origins(length: int, tile: int, overlap: int, multiple: int) -> list[int]:
    """Starts of the tiles along one side: steps of ``tile - overlap`` (multiples of the window, so every tile
    sees the whole image's window grid), the last one moved back so that it ends at the image's edge."""
    if length <= tile:
        return [0]
    step = _round_down(tile - overlap, multiple)
    origins = list(range(0, length - tile, step))
    last = (length - tile) // multiple * multiple
    if last > origins[-1]:
        origins.append(last)
    return origins


def _ramp(length: int, start: bool, end: bool, overlap: int, device: torch.device) -> torch.Tensor:
    """Blending weights along one side of a tile: 0 over the first overlap/4 pixels at an inner edge (where the
    tile lacks context), then a linear ramp, so that neighbouring tiles' weights sum to 1 across the overlap."""
    margin = overlap // 4
    ramp = overlap - 2 * margin
    position = torch.arange(length, device=device, dtype=torch.float32)
    weight = torch.ones(length, device=device)
    if start:
        weight = torch.minimum(weight, ((position - margin + 0.5) / ramp).clamp(0, 1))
    if end:
        weight = torch.minimum(weight, ((length - 1 - position - margin + 0.5) / ramp).clamp(0, 1))
    return weight


def _fuse_tiled(model: TITA, A: torch.Tensor, B: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    window = model.window_size
    if tile % window or tile < 2 * overlap or overlap < 4:
        raise ValueError(
            f"tile must be a multiple of the window ({window}) and at least twice the overlap, and overlap >= 4; "
            f"got tile {tile}, overlap {overlap}"
        )
    height, width = A.shape[-2:]
    rows, cols = tile_origins(height, tile, overlap, window), tile_origins(width, tile, overlap, window)
    tiles = []  # (region, blending weight)
    for top in rows:
        bottom = height if top == rows[-1] else top + tile
        for left in cols:
            right = width if left == cols[-1] else left + tile
            weight = torch.outer(
                _ramp(bottom - top, top > 0, bottom < height, overlap, A.device),
                _ramp(right - left, left > 0, right < width, overlap, A.device),
            )
            tiles.append(((slice(None), slice(None), slice(top, bottom), slice(left, right)), weight))
    weights = torch.zeros((1, 1, height, width), device=A.device, dtype=torch.float32)
    for part, weight in tiles:
        weights[part] += weight
    pooled = _image_pooled(model, A, B, tiles, weights) if isinstance(model, TITA) and len(tiles) > 1 else None
    total = torch.zeros(A.shape, device=A.device, dtype=torch.float32)
    for part, weight in tiles:
        fused = model(A[part], B[part]) if pooled is None else model(A[part], B[part], oaf_pooled=pooled)
        total[part] += fused.float().clamp(0, 1) * weight
    return total / weights


def _image_pooled(model: TITA, A: torch.Tensor, B: torch.Tensor, tiles: list, weights: torch.Tensor) -> torch.Tensor:
    """OAF's global average pool over the whole image, from the tiles (a first pass up to OAF): each tile's maps
    weighted by its share of the blend, so that every pixel counts once. Passed to every tile's OAF, it makes the
    tiles mix their features as the whole image does (a tile's own average would differ)."""
    sums = 0
    for part, weight in tiles:
        height, width = weight.shape
        share = weight / weights[part]  # (1, 1, h, w)
        maps = torch.cat(model.oaf_inputs(A[part], B[part]), dim=1)[..., :height, :width]
        sums = sums + (maps.float() * share).sum(dim=(2, 3))
    return sums / (A.shape[-2] * A.shape[-1])


# ------------------------------------------------------------------------------------------------ images
def fuse_images(
    model: TITA,
    A: torch.Tensor,
    B: torch.Tensor,
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    precision: str = "fp32",
) -> torch.Tensor:
    """Fuse image batches (N, C, H, W) on the 0–255 scale, C = 1 or 3 each; returns (N, 1 or 3, H, W) float32 on
    0–255 on the CPU, colour when either source is (luminance by the model, chroma per pixel)."""
    check_pair(A, B)
    luma_a, chroma_a = color.luminance_and_chroma(A)
    luma_b, chroma_b = color.luminance_and_chroma(B)
    luma = fuse_luminance(model, luma_a / 255, luma_b / 255, tile, overlap, precision).cpu() * 255
    return color.recombine(luma, chroma_a, chroma_b)


def check_pair(A: torch.Tensor, B: torch.Tensor) -> None:
    """ValueError unless the batches (N, C, H, W) hold as many images of the same size."""
    if A.shape[0] != B.shape[0] or A.shape[-2:] != B.shape[-2:]:
        raise ValueError(f"the images of a pair must have the same size, got {_size(A)} and {_size(B)}")


def _size(image: torch.Tensor) -> str:
    return f"{image.shape[-1]}x{image.shape[-2]} (WxH)"


def fuse_images_published(
    model: TITA,
    A: torch.Tensor,
    B: torch.Tensor,
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    precision: str = "fp32",
) -> torch.Tensor:
    """:func:`fuse_images` with the published test script's steps around the network
    (:mod:`tita_fast.published_pipeline`): 8-bit sources, an 8-bit result."""
    check_pair(A, B)
    padded = published_pipeline.luminance_inputs(A, B, model.window_size)
    # fuse_luminance clamps to [0, 1], as the published tensor2uint does before rounding
    fused = fuse_luminance(model, *padded, tile, overlap, precision)
    return published_pipeline.output_image(fused, A, B)


def pipeline_fuser(pipeline: str):
    """The ``fuse_images`` of a pipeline: ours (``"tita_fast"``) or the published test script's (``"published"``)."""
    if pipeline not in PIPELINES:
        raise ValueError(f"unknown pipeline {pipeline!r}; choose from {', '.join(PIPELINES)}")
    return fuse_images_published if pipeline == "published" else fuse_images


def fuse(
    a,
    b,
    model: TITA | str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    backend: str = "auto",
    precision: str = "fp32",
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    pipeline: str = "tita_fast",
):
    """Fuse two registered images and return the result in the inputs' kind.

    ``a``, ``b``: file paths (-> a Pillow image), Pillow images (-> Pillow), numpy arrays (H, W) or (H, W, 3)
    (-> numpy of the same dtype), or tensors (H, W), (C, H, W) or (N, C, H, W) (-> tensor of the same dtype,
    rank and device). Integer pixels are 0..255 (uint8) or 0..65535 (uint16); float pixels must lie in [0, 1].
    Gray, colour or one of each: the result is colour when either source is; 16-bit gray stays 16-bit.
    ``model``: a :class:`TITA`, a checkpoint path, or ``None`` for the default model. ``tile``: see
    :func:`fuse_luminance`. ``pipeline="published"``: the published test script's steps
    (:mod:`tita_fast.published_pipeline`), for 8-bit images only (files, Pillow images, uint8 arrays or tensors).
    """
    kind = _kind(a, "a")
    if _kind(b, "b") != kind:
        raise ValueError(f"a and b must be of the same kind, got {type(a).__name__} and {type(b).__name__}")
    fuse_pipeline_images = pipeline_fuser(pipeline)
    if not isinstance(model, TITA):
        model = load_model(model, device)
    elif device is not None and resolve_device(device) != model.conv_first1_A.weight.device:
        raise ValueError(f"the model is on {model.conv_first1_A.weight.device}, not {device}: move it, or omit device")
    (A, bits_a), (B, bits_b) = _read(a, kind, "a"), _read(b, kind, "b")
    if pipeline == "published":
        for x, bits, name in ((a, bits_a, "a"), (b, bits_b, "b")):
            if bits != 8 or (kind in ("numpy", "tensor") and x.dtype not in (np.uint8, torch.uint8)):
                depth = "16-bit" if bits == 16 else str(x.dtype)
                raise ValueError(f"{name}: the published pipeline reads 8-bit images only, got {depth} (its Pillow "
                                 "'L' conversion saturates deeper ones); use pipeline='tita_fast'")  # fmt: skip
    with use_backend(backend):
        fused = fuse_pipeline_images(model, A, B, tile, overlap, precision)
    return _write(fused, kind, max(bits_a, bits_b), like=(a, b))


def _kind(x, name: str) -> str:
    if isinstance(x, (str, os.PathLike)):
        return "path"
    if isinstance(x, Image.Image):
        return "pil"
    if isinstance(x, np.ndarray):
        return "numpy"
    if isinstance(x, torch.Tensor):
        return "tensor"
    raise TypeError(f"{name}: expected a file path, PIL image, numpy array or tensor, got {type(x).__name__}")


def _read(x, kind: str, name: str) -> tuple[torch.Tensor, int]:
    """(1 or N, C, H, W) float32 on 0–255 and the bit depth."""
    if kind == "path":
        image, bits = imageio.read_image(x)
        return image[None], bits
    if kind == "pil":
        image, bits = imageio.from_pil(x, name)
        return image[None], bits
    if kind == "numpy":
        if x.ndim == 3 and x.shape[2] in (1, 3):
            x = x.transpose(2, 0, 1)
        elif x.ndim != 2:
            raise ValueError(f"{name}: numpy images are (H, W) or (H, W, 3), got shape {x.shape}")
        tensor = torch.from_numpy(np.ascontiguousarray(x))
    else:
        tensor = x.detach().cpu()
        if tensor.dim() > 4 or tensor.dim() < 2:
            raise ValueError(f"{name}: tensors are (H, W), (C, H, W) or (N, C, H, W), got shape {tuple(x.shape)}")
    while tensor.dim() < 4:
        tensor = tensor[None]
    if tensor.shape[1] not in (1, 3):
        raise ValueError(f"{name}: images have 1 (gray) or 3 (RGB) channels, got shape {tuple(x.shape)}")
    if tensor.shape[-1] == 0 or tensor.shape[-2] == 0 or tensor.shape[0] == 0:
        raise ValueError(f"{name}: empty image of shape {tuple(x.shape)}")
    return _to_0_255(tensor, name)


def _to_0_255(tensor: torch.Tensor, name: str) -> tuple[torch.Tensor, int]:
    if tensor.dtype == torch.uint8:
        return tensor.float(), 8
    if tensor.dtype == torch.uint16:
        return (tensor.double() / imageio.SIXTEEN_BIT_SCALE).float(), 16
    if not tensor.is_floating_point():
        raise ValueError(f"{name}: pixels must be uint8, uint16 or floating point in [0, 1], got {tensor.dtype}")
    tensor = tensor.float()
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name}: the image contains NaN or Inf")
    low, high = tensor.min().item(), tensor.max().item()
    if low < 0 or high > 1:
        raise ValueError(
            f"{name}: floating-point pixels must lie in [0, 1], got values in [{low:.4g}, {high:.4g}] "
            "(divide 0-255 images by 255, or pass uint8)"
        )
    return tensor * 255, 8


def _write(fused: torch.Tensor, kind: str, bits: int, like: tuple):
    """The fused (N, C, H, W) 0–255 image in the inputs' kind (arrays: the dtype of the deeper input, uint16 >
    float > uint8, and the larger rank)."""
    bits = bits if fused.shape[1] == 1 else 8  # Pillow writes 16 bits for gray only: colour results are 8-bit
    if kind in ("path", "pil"):
        return imageio.to_pil(fused[0], bits)
    dtypes = [x.dtype if kind == "tensor" else torch.from_numpy(np.empty(0, x.dtype)).dtype for x in like]
    dtype = max(dtypes, key=lambda d: (d == torch.uint16, d.is_floating_point))
    out = _quantise(fused, dtype)
    if kind == "numpy":
        out = out[0].numpy()
        return out[0] if out.shape[0] == 1 else out.transpose(1, 2, 0)
    rank = max(x.dim() for x in like)
    if rank < 4:
        out = out[0]
    if rank == 2 and out.shape[0] == 1:
        out = out[0]
    return out.to(like[0].device)


def _quantise(image: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0–255 floats to the dtype of the input: uint8/uint16 rounded, floats back to [0, 1]."""
    image = image.clamp(0, 255)
    if dtype == torch.uint8:
        return image.round().to(torch.uint8)
    if dtype == torch.uint16:
        return (image.double() * imageio.SIXTEEN_BIT_SCALE).round().to(torch.uint16)
    return (image / 255).to(dtype)


# ------------------------------------------------------------------------------------------------- files
@dataclass
class FuseJob:
    """Pairs of image files and where each result goes; :meth:`plan` checks everything that can be checked
    without decoding (names, sizes, existing outputs), :meth:`run` fuses and writes each result atomically."""

    pairs: list[tuple[str, Path, Path]]
    outputs: list[Path]
    failures: list[str] = field(default_factory=list)
    pipeline: str = "tita_fast"

    @classmethod
    def plan(cls, a, b, output, fmt: str = "png", overwrite: bool = False, pipeline: str = "tita_fast") -> FuseJob:
        pipeline_fuser(pipeline)  # an unknown name fails first
        matched = imageio.match_images(a, b)
        output = Path(output)
        single = Path(a).is_file() and output.suffix.lower() in imageio.IMAGE_SUFFIXES
        if single:
            outputs = [output]
        else:
            if output.exists() and not output.is_dir():
                raise ValueError(f"{output} exists and is not a folder")
            outputs = [output / f"{stem}.{fmt}" for stem, _ in matched]
        existing = [path for path in outputs if path.exists()]
        if overwrite:
            problems = [f"{path} is a folder, not a file" for path in existing if path.is_dir()]
        else:
            problems = [f"{path} exists (pass --overwrite to replace it)" for path in existing]
        sources = {path.resolve() for _, pair in matched for path in pair}
        problems += [f"{path} is one of the sources" for path in outputs if path.resolve() in sources]
        for (stem, (path_a, path_b)), target in zip(matched, outputs, strict=True):
            headers = []
            for path in (path_a, path_b):
                try:
                    with Image.open(path) as image:
                        headers.append((image.size, image.mode))
                except (OSError, SyntaxError) as err:
                    problems.append(f"{path}: not a readable image ({type(err).__name__}: {err})")
            if len(headers) < 2:
                continue
            (size_a, mode_a), (size_b, mode_b) = headers
            if size_a != size_b:
                problems.append(f"{stem}: {path_a} is {_wxh(size_a)} but {path_b} is {_wxh(size_b)}")
            deep = {mode_a, mode_b} & imageio.SIXTEEN_BIT_MODES and {mode_a, mode_b} <= {
                "L",
                *imageio.SIXTEEN_BIT_MODES,
            }
            if pipeline == "published":
                problems += [f"{path}: a 16-bit image; the published pipeline reads 8-bit images only"
                             for path, mode in ((path_a, mode_a), (path_b, mode_b))
                             if mode in imageio.SIXTEEN_BIT_MODES]  # fmt: skip
            elif deep and target.suffix.lower() not in (".png", ".tif", ".tiff"):
                problems.append(
                    f"{stem}: the result is 16-bit gray, which {target.suffix} cannot hold (use png or tif)"
                )
        if problems:
            raise ValueError("\n  ".join(["nothing fused:", *problems]))
        return cls([(stem, pa, pb) for stem, (pa, pb) in matched], outputs, pipeline=pipeline)

    def run(
        self,
        checkpoint=None,
        device=None,
        backend: str = "auto",
        precision: str = "fp32",
        batch: int = 1,
        tile: int | None = None,
        overlap: int = DEFAULT_OVERLAP,
        progress: bool = True,
    ) -> list[float]:
        """Fuse every pair; returns the seconds per pair. A pair that fails to decode or write is reported in
        ``failures`` and skipped; the others go on."""
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
        model = load_model(checkpoint, device)
        fuse_pipeline_images = pipeline_fuser(self.pipeline)
        self.outputs[0].parent.mkdir(parents=True, exist_ok=True)
        seconds: dict[int, float] = {}
        bar = tqdm(total=len(self.pairs), desc="fuse", unit="pair", disable=not progress)
        with use_backend(backend), bar:
            for group in self._groups(batch):
                started = time.perf_counter()
                A, B = torch.cat([g[1] for g in group]), torch.cat([g[2] for g in group])
                fused = fuse_pipeline_images(model, A, B, tile, overlap, precision)
                for (index, _, _, bits), image in zip(group, fused, strict=True):
                    self._save(index, image, bits if image.shape[0] == 1 else 8)
                elapsed = (time.perf_counter() - started) / len(group)
                seconds.update({index: elapsed for index, *_ in group})
                bar.update(len(group))
                bar.set_postfix_str(f"{elapsed * 1000:.0f} ms/pair")
        self._summary([seconds[i] for i in sorted(seconds)], sorted(seconds))
        return [seconds[i] for i in sorted(seconds)]

    def _groups(self, batch: int) -> Iterator[list[tuple[int, torch.Tensor, torch.Tensor, int]]]:
        """Consecutive decodable pairs of the same shapes, ``batch`` at most, as (index, A, B, bit depth);
        decoding failures are recorded."""
        group = []
        for index, (stem, path_a, path_b) in enumerate(self.pairs):
            try:
                (a, bits_a), (b, bits_b) = imageio.read_image(path_a), imageio.read_image(path_b)
            except ValueError as err:
                self._fail(f"{stem}: {err}")
                continue
            if group and (len(group) == batch or (a.shape, b.shape) != (group[0][1].shape[1:], group[0][2].shape[1:])):
                yield group
                group = []
            group.append((index, a[None], b[None], max(bits_a, bits_b)))
        if group:
            yield group

    def _save(self, index: int, image: torch.Tensor, bits: int) -> None:
        try:
            imageio.write_image(self.outputs[index], image, bits)
        except ValueError as err:
            self._fail(f"{self.pairs[index][0]}: {err}")

    def _fail(self, message: str) -> None:
        self.failures.append(message)
        tqdm.write(f"failed: {message}", file=sys.stderr)

    def _summary(self, seconds: list[float], indices: list[int]) -> None:
        if not seconds:
            print(f"nothing fused: all {len(self.pairs)} pairs failed", file=sys.stderr)
            return
        if len(seconds) <= 20:
            for index, s in zip(indices, seconds, strict=True):
                print(f"{self.pairs[index][0]:>24}  {s * 1000:9.1f} ms  -> {self.outputs[index]}")
        mean = sum(seconds) / len(seconds)
        print(f"fused {len(seconds)} pair(s): {sum(seconds):.2f} s, {mean * 1000:.1f} ms/pair "
              f"(min {min(seconds) * 1000:.1f}, max {max(seconds) * 1000:.1f})")  # fmt: skip
        if self.failures:
            print(f"{len(self.failures)} pair(s) failed:\n  " + "\n  ".join(self.failures), file=sys.stderr)


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"
