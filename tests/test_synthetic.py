"""Synthetic multi-focus / multi-exposure pairs: their properties, determinism, and the files make_pairs writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tita_fast.train.data import DataError, PairSource, TaskPairs
from tita_fast.train.synthetic import KINDS, make_pairs, multiexposure_pair, multifocus_pair


def photo(seed: int = 0, size: tuple[int, int] = (72, 56), mode: str = "RGB") -> Image.Image:
    """A textured photo-like image: a dark-to-bright ramp (true shadows and highlights) plus fine random detail."""
    rng = np.random.default_rng(seed)
    width, height = size
    ramp = np.linspace(0, 255, width)[None, :, None]
    detail = rng.normal(0, 40, (height, width, 3))
    rgb = np.clip(ramp + detail, 0, 255).astype(np.uint8)
    return Image.fromarray(rgb).convert(mode)


def gray(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L"), dtype=np.float64)


def laplacian(values: np.ndarray) -> np.ndarray:
    """4-neighbour Laplacian of the interior pixels (one-pixel border dropped)."""
    c = values[1:-1, 1:-1]
    return values[:-2, 1:-1] + values[2:, 1:-1] + values[1:-1, :-2] + values[1:-1, 2:] - 4 * c


def write_photos(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        photo(k, (40 + 4 * k, 30)).save(folder / name)
    return folder


def outputs(folder: Path) -> dict[str, np.ndarray]:
    return {f"{p.parent.name}/{p.name}": np.asarray(Image.open(p)) for p in sorted(folder.glob("*/*"))}


# ------------------------------------------------------------------------------------------------------ multi-focus


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multifocus_pair_is_complementary_in_focus(seed):
    image = photo(seed, (128, 96))
    a, b = multifocus_pair(image, np.random.default_rng(seed))
    assert a.size == b.size == image.size and a.mode == b.mode == "RGB"
    original, a_values, b_values = (np.asarray(x, dtype=np.int16) for x in (image, a, b))
    # Where an image is in focus it equals the photo; the other image is blurred there.
    a_sharp = (a_values == original).all(-1) & (b_values != original).any(-1)
    b_sharp = (b_values == original).all(-1) & (a_values != original).any(-1)
    pixels = original.shape[0] * original.shape[1]
    assert a_sharp.sum() > 0.1 * pixels and b_sharp.sum() > 0.1 * pixels
    lap_a, lap_b = laplacian(gray(a)), laplacian(gray(b))
    inner_a, inner_b = a_sharp[1:-1, 1:-1], b_sharp[1:-1, 1:-1]
    assert lap_a[inner_a].var() > 4 * lap_b[inner_a].var()
    assert lap_b[inner_b].var() > 4 * lap_a[inner_b].var()


def test_multifocus_blur_range_controls_the_blur():
    image = photo(0)
    weak, _ = multifocus_pair(image, np.random.default_rng(0), blur=(0.6, 0.6))
    strong, _ = multifocus_pair(image, np.random.default_rng(0), blur=(8.0, 8.0))
    assert laplacian(gray(strong)).var() < laplacian(gray(weak)).var()
    with pytest.raises(ValueError, match="blur"):
        multifocus_pair(image, np.random.default_rng(0), blur=(0.0, 2.0))
    with pytest.raises(ValueError, match="blur"):
        multifocus_pair(image, np.random.default_rng(0), blur=(3.0, 2.0))


# --------------------------------------------------------------------------------------------------- multi-exposure


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_multiexposure_pair_orders_exposure(mode):
    image = photo(0, mode=mode)
    a, b = multiexposure_pair(image, np.random.default_rng(0))
    assert a.mode == b.mode == mode and a.size == b.size == image.size
    original, over, under = (np.asarray(x, dtype=np.int16) for x in (image, a, b))
    assert over.mean() > original.mean() + 20 and under.mean() < original.mean() - 20
    assert (over == 255).sum() > (original == 255).sum() + 0.05 * original.size  # highlights clip
    assert (under == 0).sum() > (original == 0).sum() + 0.02 * original.size  # shadows crush
    assert (under <= original).all()


def test_multiexposure_ranges_are_checked_and_used():
    image = photo(0)
    mild, _ = multiexposure_pair(image, np.random.default_rng(0), over=(1.1, 1.1))
    hard, _ = multiexposure_pair(image, np.random.default_rng(0), over=(4.0, 4.0))
    assert np.asarray(hard).mean() > np.asarray(mild).mean()
    with pytest.raises(ValueError, match="over"):
        multiexposure_pair(image, np.random.default_rng(0), over=(0.9, 2.0))
    with pytest.raises(ValueError, match="under"):
        multiexposure_pair(image, np.random.default_rng(0), under=(0.5, 1.2))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_pairs_are_deterministic_per_seed(kind):
    image = photo(0)
    first = KINDS[kind](image, np.random.default_rng(7))
    again = KINDS[kind](image, np.random.default_rng(7))
    other = KINDS[kind](image, np.random.default_rng(8))
    for x, y in zip(first, again, strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    assert not np.array_equal(np.asarray(first[0]), np.asarray(other[0]))


@pytest.mark.parametrize(("mode", "expected"), [("RGBA", "RGB"), ("P", "RGB"), ("CMYK", "RGB"), ("LA", "L")])
def test_other_modes_are_converted(mode, expected):
    image = photo(0).convert(mode)
    for kind in KINDS.values():
        assert {x.mode for x in kind(image, np.random.default_rng(0))} == {expected}


def test_sixteen_bit_gray_is_scaled_not_clipped():
    values = np.linspace(0, 65535, 40 * 30).reshape(30, 40).astype(np.uint16)
    a, b = multiexposure_pair(Image.fromarray(values), np.random.default_rng(0))
    assert a.mode == "L" and np.asarray(b).max() > 60  # a clipping conversion would leave b nearly black


# ------------------------------------------------------------------------------------------------------- make_pairs


def test_make_pairs_layout_and_readable_by_taskpairs(tmp_path):
    photos = write_photos(tmp_path / "photos", ["c.png", "a.jpg", "b.png"])
    Image.open(photos / "b.png").convert("L").save(photos / "b.png")
    Image.open(photos / "c.png").convert("RGBA").save(photos / "c.png")
    (photos / ".DS_Store").write_text("hidden files are ignored")
    (photos / "subfolder").mkdir()
    out = tmp_path / "out"
    stems = make_pairs("mff", photos, out, seed=1, size=24)
    assert stems == ["a", "b", "c"]
    for sub in ("a", "b"):
        assert sorted(p.name for p in (out / sub).iterdir()) == ["a.png", "b.png", "c.png"]  # no temp files left
    modes = {stem: Image.open(out / "a" / f"{stem}.png").mode for stem in stems}
    assert modes == {"a": "RGB", "b": "L", "c": "RGB"}
    for stem in stems:
        size = Image.open(out / "b" / f"{stem}.png").size
        assert min(size) == 24 and size == Image.open(out / "a" / f"{stem}.png").size
    assert Image.open(out / "a" / "c.png").size == (32, 24)  # 48x30 photo, shorter side to 24
    pairs = TaskPairs("mff", [PairSource(out, "a", "b")], min_size=24)
    assert [p1.name for p1, _ in pairs.pairs] == ["a.png", "b.png", "c.png"]
    assert pairs.load(2)[0].shape == (1, 24, 32)


def test_make_pairs_is_deterministic_and_order_independent(tmp_path):
    photos = write_photos(tmp_path / "photos", ["x.png", "y.png"])
    alone = write_photos(tmp_path / "alone", ["x.png"])
    make_pairs("mef", photos, tmp_path / "run1", seed=3)
    make_pairs("mef", photos, tmp_path / "run2", seed=3)
    make_pairs("mef", alone, tmp_path / "run3", seed=3)
    make_pairs("mef", photos, tmp_path / "run4", seed=4)
    first, second, single, reseeded = (outputs(tmp_path / f"run{k}") for k in range(1, 5))
    assert first.keys() == second.keys() == {"a/x.png", "a/y.png", "b/x.png", "b/y.png"}
    assert all(np.array_equal(first[k], second[k]) for k in first)
    assert all(np.array_equal(first[k], single[k]) for k in single)
    assert not np.array_equal(first["a/x.png"], reseeded["a/x.png"])


def test_make_pairs_errors_name_the_problem(tmp_path):
    photos = write_photos(tmp_path / "photos", ["1.png"])
    with pytest.raises(ValueError, match="unknown kind 'ivif'; choose one of: mff, mef"):
        make_pairs("ivif", photos, tmp_path / "out")
    with pytest.raises(DataError, match="photos folder does not exist") as info:
        make_pairs("mff", tmp_path / "missing", tmp_path / "out")
    assert str(tmp_path / "missing") in str(info.value)

    hidden_only = tmp_path / "hidden_only"
    hidden_only.mkdir()
    (hidden_only / ".thumbs").write_text("")
    with pytest.raises(DataError, match="no \\(non-hidden\\) image files") as info:
        make_pairs("mff", hidden_only, tmp_path / "out")
    assert str(hidden_only) in str(info.value)

    (photos / "readme.txt").write_text("not a photo")
    with pytest.raises(DataError, match="not a readable image") as info:
        make_pairs("mff", photos, tmp_path / "out")
    assert str(photos / "readme.txt") in str(info.value)
    assert not (tmp_path / "out").exists()  # nothing written before the check failed
    (photos / "readme.txt").unlink()

    photo(1).save(photos / "1.jpg")
    with pytest.raises(DataError, match="would both be written as 1.png") as info:
        make_pairs("mff", photos, tmp_path / "out")
    assert str(photos / "1.jpg") in str(info.value) and str(photos / "1.png") in str(info.value)
    (photos / "1.jpg").unlink()

    truncated = photos / "2.png"
    photo(2, (64, 64)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(DataError, match="cannot decode image") as info:
        make_pairs("mef", photos, tmp_path / "out")
    assert str(truncated) in str(info.value)

    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="not a folder") as info:
        make_pairs("mef", photos, tmp_path / "file")
    assert str(tmp_path / "file") in str(info.value)


def test_make_pairs_refuses_a_non_empty_output_unless_overwrite(tmp_path):
    photos = write_photos(tmp_path / "photos", ["1.png"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    with pytest.raises(FileExistsError, match="not empty") as info:
        make_pairs("mff", photos, out)
    assert str(out) in str(info.value) and not (out / "a").exists()
    assert make_pairs("mff", photos, out, overwrite=True) == ["1"]
    before = outputs(out)
    assert make_pairs("mff", photos, out, seed=9, overwrite=True) == ["1"]
    assert not np.array_equal(before["a/1.png"], outputs(out)["a/1.png"])
    assert (out / "keep.txt").read_text() == "user file"


def test_interrupted_write_leaves_no_partial_files(tmp_path, monkeypatch):
    photos = write_photos(tmp_path / "photos", ["1.png", "2.png"])
    out = tmp_path / "out"
    real_save = Image.Image.save
    calls = []

    def interrupted_save(self, fp, *args, **kwargs):
        calls.append(Path(fp))
        if len(calls) == 3:  # the first image of the second pair: half a file, then the process is interrupted
            Path(fp).write_bytes(b"\x89PNG\r\n\x1a\n partial")
            raise KeyboardInterrupt
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        make_pairs("mff", photos, out)
    assert all(p.parent in (out / "a", out / "b") and p.name.startswith(".") for p in calls)  # temp names
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == ["a/1.png", "b/1.png"]
    assert Image.open(out / "a" / "1.png").size == (40, 30)
