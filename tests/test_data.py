"""Paired training data: pairing and validation, gray loading, and the pure, rank-splittable random crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tita_fast.train.data import DataError, PairSource, TaskBatches, TaskPairs

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def noise(rng: np.random.Generator, height: int = 12, width: int = 16, channels: int = 0) -> np.ndarray:
    shape = (height, width, channels) if channels else (height, width)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def make_set(root: Path, names: list[str], height: int = 12, width: int = 16, seed: int = 0) -> Path:
    """``root/a/<name>`` noise images and ``root/b/<name>`` = 255 - a."""
    rng = np.random.default_rng(seed)
    for name in names:
        a = noise(rng, height, width)
        save(root / "a" / name, a)
        save(root / "b" / name, 255 - a)
    return root


def constant_set(root: Path, count: int, size: int = 8) -> TaskPairs:
    """Pairs whose a image is the constant 10 * (k + 1): a crop identifies its pair."""
    for k in range(count):
        value = np.full((size, size), 10 * (k + 1), np.uint8)
        save(root / "a" / f"{k}.png", value)
        save(root / "b" / f"{k}.png", 255 - value)
    return TaskPairs("const", [PairSource(root, "a", "b")])


def pair_ids(batch: torch.Tensor) -> list[int]:
    values = torch.round(batch[:, 0, 0, 0] * 255).long()
    return [int(v) // 10 - 1 for v in values]


# ---------------------------------------------------------------------------------------------------------- pairing


def test_pairs_by_name_in_source_then_name_order(tmp_path):
    make_set(tmp_path / "s1", ["b.png", "a.png", "c.png"])
    make_set(tmp_path / "s2", ["0.png"])
    (tmp_path / "s1" / "a" / ".DS_Store").write_text("hidden files are ignored")
    (tmp_path / "s1" / "b" / ".hidden.png").write_text("so are these")
    (tmp_path / "s1" / "a" / "subfolder").mkdir()
    pairs = TaskPairs("ivif", [PairSource(tmp_path / "s1", "a", "b"), PairSource(str(tmp_path / "s2"), "a", "b")])
    assert pairs.name == "ivif"
    assert len(pairs) == 4
    assert [(p1.parent.parent.name, p1.name, p2.name) for p1, p2 in pairs.pairs] == [
        ("s1", "a.png", "a.png"),
        ("s1", "b.png", "b.png"),
        ("s1", "c.png", "c.png"),
        ("s2", "0.png", "0.png"),
    ]
    assert all(p1.parent.name == "a" and p2.parent.name == "b" for p1, p2 in pairs.pairs)
    assert pairs.shapes == [(12, 16)] * 4


def test_name_map_regex_and_realmff_preset(tmp_path):
    rng = np.random.default_rng(0)
    for stem in ("001", "002"):
        save(tmp_path / "B" / f"{stem}_A.png", noise(rng))
    for name in ("001_B.png", "001_C.png", "002_far.png"):
        save(tmp_path / "A" / name, noise(rng))
    expected = [("001_B.png", "001_A.png"), ("001_C.png", "001_A.png"), ("002_far.png", "002_A.png")]
    for rule in ("realmff", r"([^_]+)_.* -> \1_A.png"):
        pairs = TaskPairs("mff", [PairSource(tmp_path, "A", "B", name_map=rule)])
        assert [(p1.name, p2.name) for p1, p2 in pairs.pairs] == expected

    save(tmp_path / "x" / "img1.png", noise(rng))
    save(tmp_path / "y" / "IMG1.png", noise(rng))
    pairs = TaskPairs("t", [PairSource(tmp_path, "x", "y", name_map=r"img(?P<n>\d+)\.png -> IMG\g<n>.png")])
    assert [(p1.name, p2.name) for p1, p2 in pairs.pairs] == [("img1.png", "IMG1.png")]


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (r"(.*)\.png", "expected '<pattern> -> <replacement>'"),
        (r"a -> b -> c", "expected '<pattern> -> <replacement>'"),
        (r" -> x.png", "expected '<pattern> -> <replacement>'"),
        (r"(.*\.png -> \1", "invalid pattern"),
        (r"(.*)\.png -> \2.png", "invalid replacement"),
        (r"(.*)\.png -> \g<stem>.png", "invalid replacement"),
        ("realMFF", "expected '<pattern> -> <replacement>'"),
    ],
)
def test_name_map_syntax_is_checked_at_construction(tmp_path, rule, message):
    with pytest.raises(ValueError, match="name_map") as info:
        PairSource(tmp_path, "a", "b", name_map=rule)
    assert message in str(info.value)


def test_name_not_matching_the_name_map_is_named(tmp_path):
    rng = np.random.default_rng(0)
    save(tmp_path / "A" / "001_B.png", noise(rng))
    save(tmp_path / "A" / "noseparator.png", noise(rng))
    save(tmp_path / "B" / "001_A.png", noise(rng))
    with pytest.raises(DataError) as info:
        TaskPairs("mff", [PairSource(tmp_path, "A", "B", name_map="realmff")])
    assert "noseparator.png" in str(info.value) and "does not match the name_map" in str(info.value)
    assert "001_A.png" not in str(info.value)  # a consequence of the bad name, not a second problem


# ----------------------------------------------------------------------------------------------------------- errors


def test_missing_folder_is_named(tmp_path):
    make_set(tmp_path, ["1.png"])
    with pytest.raises(DataError, match="folder does not exist") as info:
        TaskPairs("t", [PairSource(tmp_path, "a", "missing")])
    assert str(tmp_path / "missing") in str(info.value)
    with pytest.raises(DataError, match="folder does not exist") as info:
        TaskPairs("t", [PairSource(tmp_path / "nowhere", "a", "b")])
    assert str(tmp_path / "nowhere" / "a") in str(info.value)


def test_empty_folder_is_named(tmp_path):
    make_set(tmp_path, ["1.png"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".keep").write_text("")
    with pytest.raises(DataError, match="no \\(non-hidden\\) files") as info:
        TaskPairs("t", [PairSource(tmp_path, "empty", "b")])
    assert str(tmp_path / "empty") in str(info.value)


def test_file_without_partner_is_named(tmp_path):
    make_set(tmp_path, ["1.png", "2.png"])
    save(tmp_path / "a" / "lonely.png", noise(np.random.default_rng(0)))
    with pytest.raises(DataError, match="without a partner") as info:
        TaskPairs("t", [PairSource(tmp_path, "a", "b")])
    assert "lonely.png (expects lonely.png)" in str(info.value)


def test_unpaired_subdir2_files_are_listed(tmp_path):
    make_set(tmp_path, ["1.png"])
    for k in range(13):
        (tmp_path / "b" / f"extra{k:02d}.png").write_bytes((tmp_path / "b" / "1.png").read_bytes())
    with pytest.raises(DataError, match="13 file\\(s\\) that no file of") as info:
        TaskPairs("t", [PairSource(tmp_path, "a", "b")])
    message = str(info.value)
    assert all(f"extra{k:02d}.png" in message for k in range(10))
    assert "extra10.png" not in message and "... and 3 more" in message


def test_non_image_file_is_named(tmp_path):
    make_set(tmp_path, ["1.png"])
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "b" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="not a readable image") as info:
        TaskPairs("t", [PairSource(tmp_path, "a", "b")])
    assert str(tmp_path / "a" / "notes.txt") in str(info.value)
    assert str(tmp_path / "b" / "notes.txt") in str(info.value)


def test_size_mismatch_names_both_files_and_sizes(tmp_path):
    rng = np.random.default_rng(0)
    save(tmp_path / "a" / "1.png", noise(rng, 12, 16))
    save(tmp_path / "b" / "1.png", noise(rng, 10, 16))
    with pytest.raises(DataError, match="size mismatch") as info:
        TaskPairs("t", [PairSource(tmp_path, "a", "b")])
    message = str(info.value)
    assert f"{tmp_path / 'a' / '1.png'} is 16x12" in message and f"{tmp_path / 'b' / '1.png'} is 16x10" in message


def test_image_smaller_than_min_size_is_named(tmp_path):
    make_set(tmp_path, ["big.png"], 12, 16)
    make_set(tmp_path, ["small.png"], 12, 7, seed=1)
    TaskPairs("t", [PairSource(tmp_path, "a", "b")], min_size=7)
    with pytest.raises(DataError, match="smaller than min_size 8") as info:
        TaskPairs("t", [PairSource(tmp_path, "a", "b")], min_size=8)
    assert "small.png" in str(info.value) and "big.png" not in str(info.value)


def test_all_problems_are_reported_together(tmp_path):
    make_set(tmp_path / "s1", ["1.png"])
    (tmp_path / "s1" / "a" / "bad.png").write_text("x")
    (tmp_path / "s1" / "b" / "bad.png").write_text("x")
    with pytest.raises(DataError, match="problem\\(s\\)") as info:
        TaskPairs("t", [PairSource(tmp_path / "s1", "a", "b"), PairSource(tmp_path / "s2", "a", "b")])
    message = str(info.value)
    assert "'t': 4 problem(s)" in message
    assert "bad.png" in message and str(tmp_path / "s2" / "a") in message


def test_truncated_image_fails_at_load_naming_the_file(tmp_path):
    make_set(tmp_path, ["1.png"], 64, 64)
    path = tmp_path / "b" / "1.png"
    path.write_bytes(path.read_bytes()[:200])  # the header survives: construction cannot tell
    pairs = TaskPairs("t", [PairSource(tmp_path, "a", "b")])
    with pytest.raises(DataError, match="cannot decode image") as info:
        pairs.load(0)
    assert str(path) in str(info.value)


def test_argument_validation(tmp_path):
    pairs = TaskPairs("t", [PairSource(make_set(tmp_path, ["1.png"]), "a", "b")])
    with pytest.raises(ValueError, match="no sources"):
        TaskPairs("t", [])
    with pytest.raises(ValueError, match="min_size"):
        TaskPairs("t", [PairSource(tmp_path, "a", "b")], min_size=0)
    with pytest.raises(IndexError):
        pairs.load(1)
    for kwargs, message in [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 1, "crop_size": 0}, "crop_size"),
        ({"batch_size": 1, "rank": 2, "world_size": 2}, "rank"),
        ({"batch_size": 1, "rank": -1}, "rank"),
        ({"batch_size": 1, "world_size": 0}, "world_size"),
        ({"batch_size": 1, "workers": -1}, "workers"),
        ({"batch_size": 1, "seed": -1}, "seed"),
    ]:
        with pytest.raises(ValueError, match=message):
            TaskBatches(pairs, crop_size=kwargs.pop("crop_size", 8), **kwargs)
    with pytest.raises(DataError, match="smaller than crop_size 13") as info:
        TaskBatches(pairs, 1, crop_size=13)
    assert "1.png" in str(info.value)
    with pytest.raises(ValueError, match="step"):
        TaskBatches(pairs, 1, crop_size=8).batch(-1)


# ---------------------------------------------------------------------------------------------------------- loading


def test_gray_conversion_matches_pil_convert_l(tmp_path):
    rgb = noise(np.random.default_rng(0), 12, 16, 3)
    save(tmp_path / "a" / "1.png", rgb)
    save(tmp_path / "b" / "1.png", rgb[..., 0])
    image1, image2 = TaskPairs("t", [PairSource(tmp_path, "a", "b")]).load(0)
    expected = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32) / 255
    assert image1.shape == (1, 12, 16) and image1.dtype == torch.float32
    torch.testing.assert_close(image1[0], torch.from_numpy(expected), rtol=0, atol=0)
    torch.testing.assert_close(image2[0], torch.from_numpy(rgb[..., 0].astype(np.float32) / 255), rtol=0, atol=0)


def test_sixteen_bit_images_scale_to_unit_range(tmp_path):
    values = np.array([[0, 1, 255, 256], [1000, 32768, 65534, 65535]], dtype=np.uint16)
    save(tmp_path / "a" / "1.png", values)
    save(tmp_path / "b" / "1.png", (values // 257).astype(np.uint8))
    pairs = TaskPairs("t", [PairSource(tmp_path, "a", "b")])
    assert Image.open(pairs.pairs[0][0]).mode == "I;16"
    image1, image2 = pairs.load(0)
    expected = torch.from_numpy(values.astype(np.float64) / 65535).float()
    torch.testing.assert_close(image1[0], expected, rtol=0, atol=1e-7)
    assert float(image1.max()) == 1.0 and float(image2.max()) == 1.0


def test_cache_keeps_decoded_images(tmp_path):
    make_set(tmp_path, ["1.png"])
    pairs = TaskPairs("t", [PairSource(tmp_path, "a", "b")], cache=True)
    first = pairs.load(0)
    first[0].fill_(7.0)  # callers may modify what they get
    for path in pairs.pairs[0]:
        path.unlink()
    again = pairs.load(0)
    assert float(again[0].max()) <= 1.0
    torch.testing.assert_close(again[0] + again[1], torch.ones_like(again[0]))


# ---------------------------------------------------------------------------------------------------------- batches


def test_crops_are_aligned_between_the_two_images(tmp_path):
    pairs = TaskPairs("t", [PairSource(make_set(tmp_path, [f"{k}.png" for k in range(3)], 20, 24), "a", "b")])
    batches = TaskBatches(pairs, 5, crop_size=8, flip=True)
    for step in range(4):
        a, b = batches.batch(step)
        assert a.shape == b.shape == (5, 1, 8, 8) and a.dtype == b.dtype == torch.float32
        assert torch.equal(torch.round(a * 255) + torch.round(b * 255), torch.full_like(a, 255))


def test_crops_stay_inside_and_cover_the_image(tmp_path):
    height, width, size = 10, 12, 8
    unique = (np.arange(height * width).reshape(height, width) + 1).astype(np.uint8)  # value -> position
    save(tmp_path / "a" / "1.png", unique)
    save(tmp_path / "b" / "1.png", 255 - unique)
    batches = TaskBatches(TaskPairs("t", [PairSource(tmp_path, "a", "b")]), 8, crop_size=size)
    image = torch.from_numpy(unique.astype(np.float32) / 255)
    offsets = set()
    for step in range(20):
        for crop in batches.batch(step)[0]:
            top, left = divmod(round(float(crop[0, 0, 0]) * 255) - 1, width)
            assert 0 <= top <= height - size and 0 <= left <= width - size
            assert torch.equal(crop[0], image[top : top + size, left : left + size])
            offsets.add((top, left))
    assert offsets == {(t, c) for t in range(height - size + 1) for c in range(width - size + 1)}


def test_flips_are_the_same_for_both_images(tmp_path):
    make_set(tmp_path, ["1.png"], 8, 8)
    pairs = TaskPairs("t", [PairSource(tmp_path, "a", "b")])
    a_full, b_full = pairs.load(0)
    variants = {
        (h, v): (a_full.flip([-1] * h + [-2] * v), b_full.flip([-1] * h + [-2] * v)) for h in (0, 1) for v in (0, 1)
    }
    seen = set()
    a, b = TaskBatches(pairs, 32, crop_size=8, flip=True).batch(0)
    for crop_a, crop_b in zip(a, b, strict=True):
        kinds = [key for key, (va, _) in variants.items() if torch.equal(crop_a, va)]
        assert len(kinds) == 1
        assert torch.equal(crop_b, variants[kinds[0]][1])
        seen.add(kinds[0])
    assert seen == set(variants)
    a, b = TaskBatches(pairs, 32, crop_size=8, flip=False).batch(0)
    assert torch.equal(a, a_full.expand(32, 1, 8, 8)) and torch.equal(b, b_full.expand(32, 1, 8, 8))


def test_batch_is_a_pure_function_of_seed_task_and_step(tmp_path):
    root = make_set(tmp_path, [f"{k}.png" for k in range(5)], 16, 16)
    pairs = TaskPairs("t", [PairSource(root, "a", "b")])
    batches = TaskBatches(pairs, 4, crop_size=8, flip=True, seed=3)
    later = batches.batch(7)
    first = batches.batch(0)
    fresh = TaskBatches(TaskPairs("t", [PairSource(root, "a", "b")]), 4, crop_size=8, flip=True, seed=3)
    for step, expected in ((0, first), (7, later)):
        for again in (batches.batch(step), fresh.batch(step)):
            assert torch.equal(again[0], expected[0]) and torch.equal(again[1], expected[1])
    assert not torch.equal(batches.batch(1)[0], first[0])
    assert not torch.equal(TaskBatches(pairs, 4, crop_size=8, flip=True, seed=4).batch(0)[0], first[0])
    renamed = TaskPairs("other", [PairSource(root, "a", "b")])
    assert not torch.equal(TaskBatches(renamed, 4, crop_size=8, flip=True, seed=3).batch(0)[0], first[0])


def test_every_pair_once_per_epoch_with_a_fresh_shuffle(tmp_path):
    count = 5
    batches = TaskBatches(constant_set(tmp_path, count), 3, crop_size=8)
    stream = [i for step in range(10) for i in pair_ids(batches.batch(step)[0])]  # 30 samples = 6 epochs
    epochs = [stream[e * count : (e + 1) * count] for e in range(6)]
    assert all(sorted(epoch) == list(range(count)) for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) > 1


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_split_the_global_batch(tmp_path, world_size):
    pairs = constant_set(tmp_path, 7)
    noisy = TaskPairs("t", [PairSource(make_set(tmp_path / "n", [f"{k}.png" for k in range(4)], 16, 20), "a", "b")])
    for data in (pairs, noisy):
        whole = TaskBatches(data, 2 * world_size, crop_size=8, flip=True, seed=5)
        for step in (0, 3):
            parts = [
                TaskBatches(data, 2, crop_size=8, flip=True, seed=5, rank=r, world_size=world_size).batch(step)
                for r in range(world_size)
            ]
            expected = whole.batch(step)
            assert torch.equal(torch.cat([p[0] for p in parts]), expected[0])
            assert torch.equal(torch.cat([p[1] for p in parts]), expected[1])


def test_worker_threads_give_identical_batches(tmp_path):
    root = make_set(tmp_path, [f"{k}.png" for k in range(6)], 24, 24)
    pairs = TaskPairs("t", [PairSource(root, "a", "b")])
    serial = TaskBatches(pairs, 8, crop_size=16, flip=True, seed=1)
    with TaskBatches(pairs, 8, crop_size=16, flip=True, seed=1, workers=3) as threaded:
        for step in range(3):
            expected, got = serial.batch(step), threaded.batch(step)
            assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])


def test_real_pairs_from_shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"sample data {SHARED_DATA} is absent (it lives in ../shared/data beside the repository)")
    sources = [PairSource(SHARED_DATA / "mff" / "u2f", "a", "b"), PairSource(SHARED_DATA / "mff" / "gifnet", "a", "b")]
    pairs = TaskPairs("mff", sources, min_size=64)
    assert len(pairs) == 3
    assert {Image.open(p).mode for pair in pairs.pairs for p in pair} == {"L", "RGB"}
    a, b = TaskBatches(pairs, 6, crop_size=64, flip=True, workers=2).batch(0)
    for images in (a, b):
        assert images.shape == (6, 1, 64, 64) and images.dtype == torch.float32
        assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0 and float(images.std()) > 0.01
