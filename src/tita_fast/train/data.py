"""Paired-image training data: finding, validating and loading source pairs, and deterministic random crops.

Layout (as published): a task has one or more datasets, each a :class:`PairSource` ``(task_path, subdir1, subdir2)``;
a pair is ``task_path/subdir1/<name>`` with its partner ``task_path/subdir2/<name'>``, where ``<name'>`` is ``<name>``
or, for sets whose names differ, the result of the source's ``name_map``. Hidden files (names starting with ``.``)
and sub-folders are ignored; every other file must be an image and must belong to a pair, or construction fails.

Images are read as gray, as the published code does (``Image.open(path).convert('L')``), then scaled to float32 in
[0, 1] by 1/255. 16-bit gray images (modes ``I;16*`` and ``I``, which ``convert('L')`` would clip at 255) are scaled
by 1/65535 instead, clipped to [0, 1]. EXIF orientation is not applied (the published code does not either).

:class:`TaskBatches` makes every batch a pure function of ``(seed, task name, step, rank, world_size)``, so training
resumes exactly and data-parallel ranks split one global batch without talking to each other.
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = ["NAME_MAP_PRESETS", "DataError", "PairSource", "TaskBatches", "TaskPairs", "read_gray"]

#: Named ``name_map`` rules. ``realmff``: the partner of ``xxx_<anything>`` is ``xxx_A.png`` (RealMFF).
NAME_MAP_PRESETS = {"realmff": r"([^_]+)_.* -> \1_A.png"}

_ARROW = " -> "
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_MAX_LISTED = 10  # file names listed per problem before "... and N more"
_MAX_PROBLEMS = 20  # problems listed in one error before "... and N more"


class DataError(ValueError):
    """The training data on disk is missing, malformed or inconsistent; the message names the files."""


def _listing(names: Sequence[str], limit: int = _MAX_LISTED, sep: str = ", ") -> str:
    shown = sep.join(names[:limit])
    return shown if len(names) <= limit else f"{shown}{sep}... and {len(names) - limit} more"


@lru_cache(maxsize=64)
def _parse_name_map(spec: str) -> tuple[re.Pattern[str], str]:
    """``"<pattern> -> <replacement>"`` (or a preset name) -> (compiled pattern, replacement); ValueError if bad."""
    text = NAME_MAP_PRESETS.get(spec, spec)
    parts = text.split(_ARROW)
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise ValueError(
            f"name_map {spec!r}: expected '<pattern> -> <replacement>' (one ' -> ' with spaces) "
            f"or a preset name ({', '.join(sorted(NAME_MAP_PRESETS))})"
        )
    pattern, replacement = parts
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"name_map {spec!r}: invalid pattern {pattern!r}: {e}") from None
    try:
        # Substituting into an empty string parses the replacement template, catching bad group references now.
        compiled.sub(replacement, "")
    except (re.error, IndexError) as e:
        raise ValueError(f"name_map {spec!r}: invalid replacement {replacement!r}: {e}") from None
    return compiled, replacement


@dataclass(frozen=True)
class PairSource:
    """One dataset of a task: pairs ``task_path/subdir1/<name>`` and ``task_path/subdir2/<partner(name)>``.

    ``name_map`` maps a subdir1 file NAME to its subdir2 partner: ``None`` for the same name, a regex substitution
    ``"<pattern> -> <replacement>"`` applied with :func:`re.fullmatch` (e.g. ``r"([^_]+)_.* -> \\1_A.png"``), or a
    preset name from :data:`NAME_MAP_PRESETS` (``"realmff"``). Several subdir1 files may share one partner.
    """

    task_path: str | os.PathLike
    subdir1: str
    subdir2: str
    name_map: str | None = None

    def __post_init__(self) -> None:
        if self.name_map is not None:
            if not isinstance(self.name_map, str):
                raise TypeError(f"name_map must be a string or None, not {type(self.name_map).__name__}")
            _parse_name_map(self.name_map)

    @property
    def folder1(self) -> Path:
        return Path(self.task_path) / self.subdir1

    @property
    def folder2(self) -> Path:
        return Path(self.task_path) / self.subdir2

    def partner(self, name: str) -> str:
        """The subdir2 file name paired with subdir1 file ``name``; DataError if the name_map does not apply."""
        if self.name_map is None:
            return name
        pattern, replacement = _parse_name_map(self.name_map)
        match = pattern.fullmatch(name)
        if match is None:
            raise DataError(f"{self.folder1 / name}: file name does not match the name_map pattern {pattern.pattern!r}")
        mapped = match.expand(replacement)
        if not mapped or mapped in (".", "..") or "/" in mapped or os.sep in mapped:
            raise DataError(f"{self.folder1 / name}: name_map gives {mapped!r}, which is not a plain file name")
        return mapped


def _visible_files(folder: Path) -> list[str]:
    """Sorted names of the non-hidden regular files directly in ``folder``."""
    return sorted(e.name for e in os.scandir(folder) if not e.name.startswith(".") and e.is_file())


def _header(path: Path) -> tuple[int, int]:
    """(height, width) from the image header only; DataError naming the file if Pillow cannot identify it."""
    try:
        with Image.open(path) as im:
            width, height = im.size
    except Exception as e:  # UnidentifiedImageError, OSError, SyntaxError...: all mean "not a usable image"
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e
    return height, width


def read_gray(path: str | os.PathLike) -> np.ndarray:
    """Decode ``path`` to a gray (H, W) array: uint8 for 8-bit images, float32 in [0, 1] for 16-bit ones."""
    try:
        with Image.open(path) as im:
            if im.mode in _SIXTEEN_BIT:
                values = np.asarray(im.convert("I"), dtype=np.float32)
                return np.clip(values / np.float32(65535), 0.0, 1.0)
            return np.asarray(im.convert("L"), dtype=np.uint8)
    except Exception as e:  # truncated or corrupt data only shows up when decoding
        raise DataError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from e


def _to_unit(gray: np.ndarray) -> torch.Tensor:
    """(H, W) array from :func:`read_gray` -> fresh (1, H, W) float32 tensor in [0, 1] (never a cached buffer)."""
    unit = gray.astype(np.float32) / np.float32(255) if gray.dtype == np.uint8 else gray.copy()
    return torch.from_numpy(unit).unsqueeze(0)


class TaskPairs:
    """All pairs of one task, from one or more :class:`PairSource`.

    Everything is checked at construction (folders, pairing both ways, image headers, equal sizes, ``min_size``)
    and all problems are reported together in one :class:`DataError`. ``pairs`` is ordered by source, then by
    subdir1 file name; ``shapes[i]`` is the (height, width) of pair ``i``. ``cache=True`` keeps decoded images in
    memory after their first load.
    """

    def __init__(self, name: str, sources: Sequence[PairSource], min_size: int = 1, cache: bool = False):
        if not isinstance(name, str) or not name:
            raise ValueError("task name must be a non-empty string")
        if not sources:
            raise ValueError(f"task {name!r}: no sources given")
        if not all(isinstance(s, PairSource) for s in sources):
            raise TypeError(f"task {name!r}: sources must be PairSource objects")
        if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 1:
            raise ValueError(f"min_size must be an integer >= 1, got {min_size!r}")
        self.name = name
        self.sources = tuple(sources)
        self.min_size = min_size
        self.cache = cache
        self.pairs: list[tuple[Path, Path]] = []
        self.shapes: list[tuple[int, int]] = []
        self._cached: dict[Path, np.ndarray] = {}

        problems: list[str] = []
        for source in self.sources:
            problems += self._add_source(source)
        if problems:
            listed = _listing([f"  - {p}" for p in problems], _MAX_PROBLEMS, "\n")
            raise DataError(f"task {name!r}: {len(problems)} problem(s) with the data:\n{listed}")

    def _add_source(self, source: PairSource) -> list[str]:
        """Append the source's valid pairs; return its problems (empty when it is all good)."""
        folder1, folder2 = source.folder1, source.folder2
        problems = [f"{f}: folder does not exist" for f in (folder1, folder2) if not f.is_dir()]
        if problems:
            return problems
        names1, names2 = _visible_files(folder1), _visible_files(folder2)
        problems = [
            f"{f}: folder has no (non-hidden) files" for f, n in ((folder1, names1), (folder2, names2)) if not n
        ]
        if problems:
            return problems

        present2 = set(names2)
        matched: list[tuple[str, str]] = []
        orphans1: list[str] = []
        unmapped = 0
        for name in names1:
            try:
                partner = source.partner(name)
            except DataError as e:
                problems.append(str(e))
                unmapped += 1
                continue
            if partner in present2:
                matched.append((name, partner))
            else:
                orphans1.append(f"{name} (expects {partner})")
        if orphans1:
            problems.append(f"{folder1}: {len(orphans1)} file(s) without a partner in {folder2}: {_listing(orphans1)}")
        targeted = {partner for _, partner in matched}
        orphans2 = [n for n in names2 if n not in targeted]
        if orphans2 and not unmapped:  # after a name_map failure, unmatched subdir2 files are only a consequence
            problems.append(
                f"{folder2}: {len(orphans2)} file(s) that no file of {folder1} pairs with: {_listing(orphans2)}"
            )

        headers: dict[Path, tuple[int, int]] = {}
        for path in [folder1 / n for n, _ in matched] + [folder2 / n for n in sorted(targeted)]:
            try:
                headers[path] = _header(path)
            except DataError as e:
                problems.append(str(e))
        small = [p for p, (h, w) in headers.items() if min(h, w) < self.min_size]
        problems += [
            f"{p}: image is {headers[p][1]}x{headers[p][0]} (WxH), smaller than min_size {self.min_size}" for p in small
        ]
        for name, partner in matched:
            path1, path2 = folder1 / name, folder2 / partner
            if path1 not in headers or path2 not in headers:
                continue
            (h1, w1), (h2, w2) = headers[path1], headers[path2]
            if (h1, w1) != (h2, w2):
                problems.append(f"size mismatch: {path1} is {w1}x{h1} but {path2} is {w2}x{h2} (WxH)")
        if not problems:
            self.pairs += [(folder1 / n, folder2 / p) for n, p in matched]
            self.shapes += [headers[folder1 / n] for n, _ in matched]
        return problems

    def __len__(self) -> int:
        return len(self.pairs)

    def __repr__(self) -> str:
        return f"TaskPairs({self.name!r}, {len(self)} pairs from {len(self.sources)} source(s))"

    def _gray(self, path: Path) -> np.ndarray:
        gray = self._cached.get(path)
        if gray is None:
            gray = read_gray(path)
            if self.cache:
                self._cached[path] = gray
        return gray

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Pair ``index`` as two (1, H, W) float32 tensors in [0, 1] (fresh tensors: safe to modify)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"task {self.name!r}: pair index {index} out of range for {len(self)} pairs")
        path1, path2 = self.pairs[index]
        gray1, gray2 = self._gray(path1), self._gray(path2)
        if gray1.shape != gray2.shape:  # the files changed on disk since construction
            raise DataError(f"size mismatch: {path1} decodes to {gray1.shape} but {path2} to {gray2.shape} (HxW)")
        return _to_unit(gray1), _to_unit(gray2)


_PERMUTATION, _AUGMENT = 0, 1  # stream tags keep the shuffle and augmentation seeds independent


def _seed(seed: int, task: str, *words: int) -> int:
    """A 64-bit seed mixed from integers with SeedSequence: stable across processes, unlike Python's hash()."""
    entropy = [seed, zlib.crc32(task.encode("utf-8")), *words]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


class TaskBatches:
    """Random aligned crops of one task's pairs; ``batch(step)`` is a pure function of its arguments.

    The global batch of step ``t`` has ``G = batch_size * world_size`` samples. Global sample ``j`` is number
    ``g = t * G + j`` of an endless stream that walks through a fresh permutation of the pairs every epoch
    (epoch ``g // len(pairs)``, shuffled by a generator seeded from (seed, task name, epoch)). Its crop window
    and flips come from a generator seeded from (seed, task name, t, j); the same window and flips apply to both
    images of the pair. Rank ``r`` returns global samples ``[r * batch_size, (r + 1) * batch_size)``.

    Offsets and flips are drawn whether or not ``flip`` is on, so turning flips on keeps the same crops.
    ``workers > 0`` decodes the images of a batch in that many threads; the result is identical to ``workers=0``.
    Results are deterministic for a given torch version (the shuffle uses ``torch.randperm``).
    """

    def __init__(
        self,
        pairs: TaskPairs,
        batch_size: int,
        crop_size: int = 64,
        flip: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 0,
    ):
        _check_int("batch_size", batch_size, 1)
        _check_int("crop_size", crop_size, 1)
        _check_int("seed", seed, 0)
        _check_int("world_size", world_size, 1)
        _check_int("workers", workers, 0)
        _check_int("rank", rank, 0)
        if rank >= world_size:
            raise ValueError(f"rank must satisfy 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if len(pairs) == 0:
            raise ValueError(f"task {pairs.name!r} has no pairs")
        smallest = min(range(len(pairs)), key=lambda i: min(pairs.shapes[i]))
        height, width = pairs.shapes[smallest]
        if min(height, width) < crop_size:
            raise DataError(
                f"task {pairs.name!r}: {pairs.pairs[smallest][0]} is {width}x{height} (WxH), "
                f"smaller than crop_size {crop_size}"
            )
        self.pairs = pairs
        self.batch_size = batch_size
        self.crop_size = crop_size
        self.flip = flip
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._permutations: dict[int, torch.Tensor] = {}  # memo of recent epochs; never changes results

    def _permutation(self, epoch: int) -> torch.Tensor:
        perm = self._permutations.get(epoch)
        if perm is None:
            generator = torch.Generator().manual_seed(_seed(self.seed, self.pairs.name, _PERMUTATION, epoch))
            perm = torch.randperm(len(self.pairs), generator=generator)
            if len(self._permutations) >= 4:
                self._permutations.pop(next(iter(self._permutations)))
            self._permutations[epoch] = perm
        return perm

    def _sample(self, step: int, j: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Global sample ``j`` of ``step``: the crop (and flips) of pair ``index``."""
        image1, image2 = self.pairs.load(index)
        _, height, width = image1.shape
        generator = torch.Generator().manual_seed(_seed(self.seed, self.pairs.name, _AUGMENT, step, j))
        size = self.crop_size
        top = int(torch.randint(height - size + 1, (), generator=generator))
        left = int(torch.randint(width - size + 1, (), generator=generator))
        flips = torch.randint(2, (2,), generator=generator).tolist()
        dims = [d for d, on in zip((-1, -2), flips, strict=True) if on and self.flip]  # horizontal, vertical
        crops = []
        for image in (image1, image2):
            crop = image[:, top : top + size, left : left + size]
            crops.append(crop.flip(dims) if dims else crop)
        return crops[0], crops[1]

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of global batch ``step``: A, B of shape (batch_size, 1, crop, crop), float32."""
        _check_int("step", step, 0)
        global_size = self.batch_size * self.world_size
        jobs = []
        for j in range(self.rank * self.batch_size, (self.rank + 1) * self.batch_size):
            epoch, position = divmod(step * global_size + j, len(self.pairs))
            jobs.append((step, j, int(self._permutation(epoch)[position])))
        if self.workers:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=f"tita-data-{self.pairs.name}")
            samples = list(self._pool.map(lambda job: self._sample(*job), jobs))
        else:
            samples = [self._sample(*job) for job in jobs]
        return torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples])

    def close(self) -> None:
        """Stop the decoding threads (if any); ``batch`` starts them again when needed."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> TaskBatches:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
