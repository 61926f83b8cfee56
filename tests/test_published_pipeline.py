"""``pipeline="published"``: the published TITA test script's steps, against a reference written here from the
script's description (Pillow ``L`` inputs, flip padding plus one window, the published network algorithms, clamp
and ``round(x * 255)``, OpenCV YCrCb chroma), on real pairs with the default model."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from tita_fast import fuse
from tita_fast.baseline import published_ops
from tita_fast.color import rgb_to_ycrcb_8bit, ycrcb_to_rgb_8bit
from tita_fast.published_pipeline import flip_pad

from .conftest import SHARED

DATA = SHARED / "data"


def shared_pair(name: str, tmp_path, crop: tuple[int, int, int, int] | None = None):
    """The two sources of ``<task>/<set>/<file>`` in ../shared/data, or their ``crop`` (left, top, right, bottom)
    saved as PNG (a smaller real pair keeps the published algorithms' reference run short)."""
    folder, file = (DATA / name).parent, (DATA / name).name
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent (real pairs live in ../shared/data beside the repository)")
    paths = folder / "a" / file, folder / "b" / file
    if crop is None:
        return paths
    for side, path in zip("ab", paths, strict=True):
        Image.open(path).crop(crop).save(tmp_path / f"{side}.png")
    return tmp_path / "a.png", tmp_path / "b.png"


@pytest.fixture(scope="module")
def model():
    return fuse.load_model(None, "cpu")


# ------------------------------------------------------------------------------------------------ reference
def reference_published(model, path_a, path_b) -> np.ndarray:
    """The published test script's steps, written as that script takes them."""
    window = model.window_size

    def read(path):  # Pillow L, float32 in [0, 1], (1, 1, H, W)
        return torch.from_numpy(np.float32(np.asarray(Image.open(path).convert("L")) / 255.0))[None, None]

    img_a, img_b = read(path_a), read(path_b)
    _, _, h_old, w_old = img_a.shape
    h_pad = (h_old // window + 1) * window - h_old
    w_pad = (w_old // window + 1) * window - w_old
    padded = []
    for img in (img_a, img_b):
        img = torch.cat([img, torch.flip(img, [2])], 2)[:, :, : h_old + h_pad, :]
        padded.append(torch.cat([img, torch.flip(img, [3])], 3)[:, :, :, : w_old + w_pad])
    with torch.no_grad(), published_ops():  # the published algorithms, not our kernels
        output = model(*padded)[..., :h_old, :w_old]
    luminance = np.uint8((output[0, 0].float().clamp(0, 1).numpy() * 255.0).round())
    sources = [Image.open(path) for path in (path_a, path_b)]
    if all(s.mode == "L" for s in sources):
        return luminance
    chroma = []
    for source in sources:  # Cr, Cb as float; a gray source is neutral
        if source.mode == "L":
            chroma.append(np.full((2, h_old, w_old), 128.0))
        else:
            rgb = torch.from_numpy(np.array(source.convert("RGB"))).permute(2, 0, 1)
            chroma.append(rgb_to_ycrcb_8bit(rgb)[1:].numpy().astype(np.float64))
    weight_a, weight_b = np.abs(chroma[0] - 128), np.abs(chroma[1] - 128)
    with np.errstate(invalid="ignore"):
        fused = (chroma[0] * weight_a + chroma[1] * weight_b) / (weight_a + weight_b)
    fused = np.where(weight_a + weight_b == 0, 128, fused).astype(np.uint8)
    ycrcb = torch.from_numpy(np.concatenate([luminance[None], fused]))
    return ycrcb_to_rgb_8bit(ycrcb).permute(1, 2, 0).numpy()


# ------------------------------------------------------------------------------------------------- pipeline
@pytest.mark.parametrize(
    ("name", "crop"),
    [("ivif/roadscene_u2f/1.jpg", None), ("medical/pet_mri_gifnet/1.png", None),
     ("mff/gifnet/1.jpg", (150, 200, 353, 347))],
    ids=["gray 496x301", "colour+gray 256x256", "colour 203x147"],
)  # fmt: skip
def test_published_pipeline_equals_the_published_steps(model, tmp_path, name, crop):
    path_a, path_b = shared_pair(name, tmp_path, crop)
    expected = reference_published(model, path_a, path_b).astype(np.int16)
    fused = fuse.fuse(path_a, path_b, model, pipeline="published")
    assert fused.size == Image.open(path_a).size and fused.mode == ("L" if expected.ndim == 2 else "RGB")
    difference = np.abs(np.asarray(fused, np.int16) - expected)
    # our kernels vs the published algorithms change float32 rounding: a level may round to its neighbour
    assert difference.max() <= 1 and difference.mean() < 0.01, (difference.max(), difference.mean())
    # the default pipeline (reflect padding to the grid) is far off at the bottom and right borders
    ours = np.asarray(fuse.fuse(path_a, path_b, model), np.int16)
    assert np.abs(ours - expected).max() > 3


def test_flip_pad_adds_one_window_beyond_the_grid():
    image = torch.arange(16 * 3, dtype=torch.float32).reshape(1, 1, 16, 3)
    padded = flip_pad(image, 8)
    assert padded.shape == (1, 1, 24, 6)  # 16 rows are a multiple of 8: one whole window more; 3 columns -> 6
    assert torch.equal(padded[..., :16, :3], image)
    assert torch.equal(padded[..., 16:, :3], image.flip(-2)[..., :8, :])  # rows 16.. are rows 15, 14, ...
    assert torch.equal(padded[..., 3:], padded[..., :3].flip(-1))  # then the columns, rows padding included
    assert flip_pad(image[..., :3, :], 8).shape[-2] == 6  # shorter than a window: one flipped copy, as published


def test_opencv_ycrcb_is_emulated_bit_exactly():
    levels = torch.arange(256, dtype=torch.uint8)
    cube = torch.stack(torch.meshgrid(levels, levels, levels, indexing="ij")).reshape(3, 256, 65536)
    ycrcb, rgb = rgb_to_ycrcb_8bit(cube), ycrcb_to_rgb_8bit(cube)  # the cube read as RGB, then as Y, Cr, Cb

    def digest(image):  # OpenCV's layout, (H, W, 3)
        return hashlib.sha256(image.permute(1, 2, 0).contiguous().numpy().tobytes()).hexdigest()

    # sha256 of cv2.cvtColor(cube, COLOR_RGB2YCrCb) and (cube, COLOR_YCrCb2RGB), opencv-python-headless 5.1.0
    assert digest(ycrcb) == "fad9d5ea015df5fb493c24a5fbdcce61d6c2d47ce9f7f5d431b5928cd3846482"
    assert digest(rgb) == "44f18cf62b6f5bde5befd4e03c2877bc769340eca00fcf66f3b0fc6629b0f9e7"
    # and within one level of the real-valued formulas (every third level of each channel)
    cube, ycrcb, rgb = (t.reshape(3, 256, 256, 256)[:, ::3, ::3, ::3].double() for t in (cube, ycrcb, rgb))
    r, g, b = cube
    y = 0.299 * r + 0.587 * g + 0.114 * b
    exact = torch.stack([y, (r - y) * 0.713 + 128, (b - y) * 0.564 + 128]).round().clamp(0, 255)
    assert (ycrcb - exact).abs().max() <= 1
    y, cr, cb = cube - torch.tensor([0.0, 128, 128])[:, None, None, None]
    exact = torch.stack([y + 1.403 * cr, y - 0.714 * cr - 0.344 * cb, y + 1.773 * cb]).round().clamp(0, 255)
    assert (rgb - exact).abs().max() <= 1


# ---------------------------------------------------------------------------------------------- input kinds
def test_published_pipeline_on_arrays_tensors_and_batches(model):
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (2, 2, 19, 21, 3), dtype=np.uint8)
    files = []
    for i in range(2):
        files.append(fuse.fuse(Image.fromarray(a[i]), Image.fromarray(b[i]), model, pipeline="published"))
    from_numpy = fuse.fuse(a[0], b[0], model, pipeline="published")
    assert from_numpy.dtype == np.uint8 and np.array_equal(from_numpy, np.asarray(files[0]))
    batch = fuse.fuse(torch.from_numpy(a).permute(0, 3, 1, 2), torch.from_numpy(b).permute(0, 3, 1, 2), model,
                      pipeline="published")  # fmt: skip
    assert batch.dtype == torch.uint8 and batch.shape == (2, 3, 19, 21)
    for i in range(2):  # a batch changes float32 summation order: a level may round to its neighbour
        assert (batch[i].permute(1, 2, 0).int() - torch.from_numpy(np.array(files[i])).int()).abs().max() <= 1


def test_published_pipeline_refuses_deep_and_float_images(model):
    gray = np.zeros((16, 16), np.uint8)
    with pytest.raises(ValueError, match=r"a: the published pipeline reads 8-bit images only, got 16-bit"):
        fuse.fuse(gray.astype(np.uint16), gray.astype(np.uint16), model, pipeline="published")
    with pytest.raises(ValueError, match=r"b: .* 8-bit images only, got torch.float32"):
        fuse.fuse(torch.zeros(16, 16, dtype=torch.uint8), torch.zeros(16, 16), model, pipeline="published")
    with pytest.raises(ValueError, match=r"a: .* 8-bit images only, got 16-bit"):
        fuse.fuse(Image.fromarray(gray.astype(np.uint16)), Image.fromarray(gray.astype(np.uint16)), model,
                  pipeline="published")  # fmt: skip
    with pytest.raises(ValueError, match=r"unknown pipeline 'paper'; choose from tita_fast, published"):
        fuse.fuse(gray, gray, model, pipeline="paper")
