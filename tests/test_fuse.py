"""tita_fast.fuse: input kinds, colour, 16 bits, batches, tiling, models, devices and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tita_fast import TITA, fuse
from tita_fast.color import luminance_and_chroma, rgb_to_ycbcr, ycbcr_to_rgb
from tita_fast.imageio import read_image

from .conftest import SHARED

SMALL = {
    "img_size": 16, "window_size": 4, "embed_dim": 12, "Ex_depths": [1], "Fusion_depths": [1], "Re_depths": [1],
    "Ex_num_heads": [2], "Fusion_num_heads": [2], "Re_num_heads": [2], "mlp_ratio": 1.0, "drop_path_rate": 0.0,
}  # fmt: skip
RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def model() -> TITA:
    torch.manual_seed(0)
    return TITA(**SMALL).eval()


def save_checkpoint(model: TITA, path) -> None:
    """As ``tita-fast train`` writes one: safetensors with the configuration in the metadata."""
    save_file(model.state_dict(), str(path), metadata={"tita_config": json.dumps(model.config)})


def gray(h=21, w=18, dtype=np.uint8) -> np.ndarray:
    high = 65536 if dtype == np.uint16 else 256
    return RNG.integers(0, high, (h, w)).astype(dtype)


def network(model: TITA, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The model on (N, 1, H, W) luminance in [0, 1], as fuse runs it."""
    with torch.inference_mode():
        return model(a.float(), b.float()).clamp(0, 1)


# ------------------------------------------------------------------------------------------------- kinds
def test_float_tensors_are_the_network_output(model):
    a, b = torch.rand(2, 1, 19, 23), torch.rand(2, 1, 19, 23)
    fused = fuse.fuse(a, b, model)
    assert fused.shape == a.shape and fused.dtype == torch.float32
    # 0-1 -> 0-255 -> 0-1 round trip in float32: a few ulps
    torch.testing.assert_close(fused, network(model, a, b), rtol=0, atol=1e-6)


def test_batch_equals_one_by_one(model):
    a, b = torch.rand(3, 1, 16, 20), torch.rand(3, 1, 16, 20)
    batched = fuse.fuse(a, b, model)
    single = torch.cat([fuse.fuse(a[i : i + 1], b[i : i + 1], model) for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-6)


@pytest.mark.parametrize("rank", [2, 3])
def test_tensor_rank_and_dtype_are_kept(model, rank):
    a = torch.randint(0, 256, (1, 12, 13), dtype=torch.uint8)
    b = torch.randint(0, 256, (1, 12, 13), dtype=torch.uint8)
    if rank == 2:
        a, b = a[0], b[0]
    fused = fuse.fuse(a, b, model)
    assert fused.shape == a.shape and fused.dtype == torch.uint8
    expected = network(model, a.reshape(1, 1, 12, 13) / 255, b.reshape(1, 1, 12, 13) / 255) * 255
    assert (fused.reshape(expected.shape).float() - expected).abs().max() <= 0.5 + 1e-3


def test_numpy_uint8_and_float(model):
    a, b = gray(), gray()
    fused = fuse.fuse(a, b, model)
    assert fused.dtype == np.uint8 and fused.shape == a.shape
    expected = network(model, torch.from_numpy(a)[None, None] / 255, torch.from_numpy(b)[None, None] / 255)[0, 0]
    assert np.abs(fused - np.rint(expected.numpy() * 255)).max() <= 1  # float32 rounding at .5 boundaries
    fused_float = fuse.fuse(a / 255.0, b / 255.0, model)
    assert fused_float.dtype == np.float64
    np.testing.assert_allclose(fused_float, expected.numpy(), atol=1e-6)


def test_sixteen_bit_stays_sixteen_bit(model):
    a, b = gray(dtype=np.uint16), gray(dtype=np.uint16)
    fused = fuse.fuse(a, b, model)
    assert fused.dtype == np.uint16
    expected = network(model, torch.from_numpy(a.astype(np.float64))[None, None] / 65535,
                       torch.from_numpy(b.astype(np.float64))[None, None] / 65535)[0, 0].numpy()  # fmt: skip
    # the network sees 16-bit precision: the result has more than 256 levels and matches within float32 rounding
    assert np.abs(fused / 65535.0 - expected).max() < 1e-5
    pil = fuse.fuse(Image.fromarray(a), Image.fromarray(b), model)
    assert pil.mode.startswith("I;16") and np.array_equal(np.asarray(pil), fused)
    mixed = fuse.fuse(a, gray(), model)  # a 16-bit band with an 8-bit image: 16-bit result
    assert mixed.dtype == np.uint16


def test_colour_and_gray_give_colour_with_the_colour_sources_chroma(model):
    rgb = RNG.integers(40, 216, (17, 15, 3)).astype(np.uint8)  # mid-range: no clipping after fusion
    mono = gray(17, 15)
    fused = fuse.fuse(rgb, mono, model)
    assert fused.shape == (17, 15, 3) and fused.dtype == np.uint8
    ycbcr = rgb_to_ycbcr(torch.from_numpy(rgb).permute(2, 0, 1).double())
    luma = network(model, ycbcr[None, :1] / 255, torch.from_numpy(mono)[None, None] / 255)[0].double() * 255
    # a gray source has neutral chroma, so the colour source's chroma is kept whole: RGB from (fused Y, Cb_A, Cr_A)
    expected = ycbcr_to_rgb(torch.cat([luma, ycbcr[1:]]))
    inside = ((expected >= 0) & (expected <= 255)).all(0)  # where no channel is clipped
    assert inside.float().mean() > 0.5
    difference = (torch.from_numpy(fused).permute(2, 0, 1).double() - expected)[:, inside].abs()
    assert difference.max() <= 0.5 + 1e-3  # rounding to 8 bits; float32 luminance
    assert (torch.from_numpy(fused).permute(2, 0, 1).double() - expected.clamp(0, 255)).abs().max() <= 0.5 + 1e-3
    assert fuse.fuse(mono, mono, model).ndim == 2  # gray + gray stays gray


def test_paths_and_pil_give_pil(model, tmp_path):
    rgb = Image.fromarray(RNG.integers(0, 256, (14, 11, 3)).astype(np.uint8))
    mono = Image.fromarray(gray(14, 11))
    rgb.save(tmp_path / "a.png")
    mono.save(tmp_path / "b.png")
    from_paths = fuse.fuse(tmp_path / "a.png", str(tmp_path / "b.png"), model)
    from_pil = fuse.fuse(rgb, mono, model)
    assert from_paths.mode == from_pil.mode == "RGB" and from_paths.size == (11, 14)
    assert np.array_equal(np.asarray(from_paths), np.asarray(from_pil))


def test_checkpoint_path_as_model(model, tmp_path):
    save_checkpoint(model, tmp_path / "m.safetensors")
    a, b = torch.rand(1, 1, 9, 10), torch.rand(1, 1, 9, 10)
    assert torch.equal(fuse.fuse(a, b, tmp_path / "m.safetensors"), fuse.fuse(a, b, model))


def test_default_model_loads_and_fuses():
    a, b = torch.rand(1, 1, 24, 24), torch.rand(1, 1, 24, 24)
    fused = fuse.fuse(a, b)
    assert fused.shape == a.shape and torch.isfinite(fused).all()
    assert fuse.load_model() is fuse.load_model()  # loaded once per device


def test_bf16_precision_is_close(model):
    a, b = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    full, half = fuse.fuse(a, b, model), fuse.fuse(a, b, model, precision="bf16")
    assert (full - half).abs().max() < 0.05  # bf16 keeps 8 bits of mantissa through ~20 layers of a random model


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_costs_less_than_45_db_psnr_on_a_real_pair(precision):
    # The quality target for half-precision inference (benchmarks/precision_quality.py measures every pair of
    # ../shared/data): PSNR of the default model's fusion against its fp32 result, on [0, 1] luminance.
    pair = SHARED / "data" / "mef" / "u2f_set1"
    if not pair.is_dir():
        pytest.skip(f"{pair} is missing (../shared/data holds the real pairs)")
    a, b = (luminance_and_chroma(read_image(pair / s / "1.jpg")[0][None])[0][..., :96, :128] / 255 for s in "ab")
    model = fuse.load_model()
    full = fuse.fuse_luminance(model, a, b)
    half = fuse.fuse_luminance(model, a, b, precision=precision)
    mse = (full.double() - half.double()).pow(2).mean().item()
    assert 10 * np.log10(1 / mse) >= 45


# ------------------------------------------------------------------------------------------------ tiling
class PixelMax(torch.nn.Module):
    """A per-pixel 'network': tiling must reproduce it exactly, whatever the blending."""

    window_size = 8
    conv_first1_A = torch.nn.Conv2d(1, 1, 1)

    def forward(self, A, B):
        return (torch.maximum(A, B) + A * B) / 2


@pytest.mark.parametrize("size", [(100, 77), (64, 64), (129, 200)])
def test_tiles_cover_the_image_and_blend_to_one(size):
    a, b = torch.rand(1, 1, *size), torch.rand(1, 1, *size)
    model = PixelMax()
    tiled = fuse._fuse_tiled(model, a, b, tile=32, overlap=16)
    torch.testing.assert_close(tiled, model(a, b), rtol=1e-6, atol=1e-6)


def test_tile_origins_follow_the_window_grid():
    for length in (33, 64, 65, 300, 513):
        origins = fuse.tile_origins(length, 64, 16, 8)
        assert origins[0] == 0 and all(o % 8 == 0 for o in origins)
        assert all(b - a <= 64 - 16 for a, b in zip(origins, origins[1:], strict=False))  # overlap >= 16
        assert length - origins[-1] <= 64 + 7  # the last tile reaches the edge


def tiling_model_and_pair():
    """The default model (the one users get) on a real pair when ../shared/data is there, else on a synthetic
    multi-focus pair."""
    path = SHARED / "data" / "mef" / "u2f_set1"
    if path.is_dir():
        a, b = (luminance_and_chroma(read_image(path / s / "1.jpg")[0][None])[0] / 255 for s in ("a", "b"))
        return fuse.load_model(), a[..., :208, :240], b[..., :208, :240]
    from matplotlib import cbook

    from tita_fast.train.synthetic import multifocus_pair

    photo = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("L")
    a, b = multifocus_pair(photo, np.random.default_rng(0))
    a, b = (torch.from_numpy(np.asarray(x, dtype=np.float32))[None, None, :208, :240] / 255 for x in (a, b))
    return fuse.load_model(), a, b


def test_tiled_matches_whole_image_everywhere():
    # Tiles run twice: first up to OAF, to get the whole image's average of OAF's inputs (a tile's own average
    # differs, and with it the OAF mix: without this pass tiles were off by up to 7 gray levels); then whole, with
    # that average. What remains is context missing near inner tile edges, removed by the zero-weight margin
    # (overlap/4) and the blend: measured 0.09 levels max, 0.002 mean at tile 96 / overlap 32 (0.0005 max at
    # overlap 64, the default). Tolerance: 0.25 levels (of 255) at every pixel, tile borders included.
    model, a, b = tiling_model_and_pair()
    whole = fuse.fuse_luminance(model, a, b)
    tiled = fuse.fuse_luminance(model, a, b, tile=96, overlap=32)
    difference = (tiled - whole).abs() * 255
    assert difference.max() <= 0.25, difference.max()
    assert difference.mean() <= 0.01


def test_oaf_pooled_override_is_the_images_own_average():
    torch.manual_seed(0)
    model = TITA(**SMALL).eval()
    a, b = torch.rand(2, 1, 20, 28), torch.rand(2, 1, 20, 28)
    with torch.no_grad():
        pooled = torch.cat(model.oaf_inputs(a, b), dim=1).mean(dim=(2, 3))
        torch.testing.assert_close(model(a, b, oaf_pooled=pooled), model(a, b), rtol=0, atol=1e-6)
        with pytest.raises(ValueError, match=r"pooled must be \(N, 2C\)"):
            model(a, b, oaf_pooled=pooled[:, :5])


def test_auto_tiling_when_memory_is_short(monkeypatch):
    model, a, b = tiling_model_and_pair()
    per_pixel = fuse.bytes_per_pixel(model)
    monkeypatch.setattr(fuse, "available_memory", lambda device: 2 * per_pixel * 128 * 128)
    tile = fuse.auto_tile_size(model, a.shape[-2:])
    assert tile == 128
    assert fuse.auto_tile_size(model, (64, 64)) is None
    torch.testing.assert_close(fuse.fuse_luminance(model, a, b), fuse.fuse_luminance(model, a, b, tile=128))


def test_bad_tile_settings(model):
    a = torch.rand(1, 1, 64, 64)
    for tile, overlap in ((30, 8), (16, 16), (64, 2)):
        with pytest.raises(ValueError, match="tile must be"):
            fuse.fuse_luminance(model, a, a, tile=tile, overlap=overlap)


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        (np.zeros((5, 6), np.uint8), np.zeros((6, 5), np.uint8), "same size"),
        (np.full((5, 6), np.nan), np.zeros((5, 6)), "NaN or Inf"),
        (np.full((5, 6), np.inf), np.zeros((5, 6)), "NaN or Inf"),
        (np.full((5, 6), 200.0), np.zeros((5, 6)), r"\[0, 1\]"),
        (np.zeros((5, 6), np.int32), np.zeros((5, 6), np.int32), "uint8, uint16"),
        (np.zeros((5, 6, 4), np.uint8), np.zeros((5, 6, 4), np.uint8), "shape"),
        (np.zeros((0, 6), np.uint8), np.zeros((0, 6), np.uint8), "empty"),
        (torch.zeros(2, 1, 5, 6), torch.zeros(3, 1, 5, 6), "same size"),
        (torch.zeros(1, 1, 1, 5, 6), torch.zeros(1, 1, 1, 5, 6), "tensors are"),
    ],
)
def test_bad_arrays(model, a, b, message):
    with pytest.raises(ValueError, match=message):
        fuse.fuse(a, b, model)


def test_bad_kinds(model, tmp_path):
    with pytest.raises(ValueError, match="same kind"):
        fuse.fuse(np.zeros((4, 4), np.uint8), torch.zeros(4, 4, dtype=torch.uint8), model)
    with pytest.raises(TypeError, match="file path, PIL image"):
        fuse.fuse([[0]], [[0]], model)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match="not a readable image"):
        fuse.fuse(tmp_path / "text.png", tmp_path / "text.png", model)


def test_bad_checkpoints(tmp_path):
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 100)
    (tmp_path / "garbage.pth").write_bytes(b"PK\x03\x04 truncated zip")
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "linear.pth")
    save_file(torch.nn.Linear(2, 2).state_dict(), str(tmp_path / "linear.safetensors"))
    cases = [("garbage.safetensors", "not a readable"), ("garbage.pth", "not a readable"), ("linear.pth", "TITA"),
             ("linear.safetensors", "TITA"), ("absent.pth", "no such")]  # fmt: skip
    for name, message in cases:
        with pytest.raises(ValueError, match=message):
            fuse.load_model(tmp_path / name)


def test_bad_devices_and_backends(model):
    with pytest.raises(ValueError, match="unknown device|not supported"):
        fuse.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            fuse.resolve_device("cuda")
        with pytest.raises(RuntimeError, match="not available"):
            fuse.fuse(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), model, backend="cuda")
    with pytest.raises(ValueError, match="unknown tita_fast backend"):
        fuse.fuse(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), model, backend="fastest")
    with pytest.raises(ValueError, match="precision"):
        fuse.fuse(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), model, precision="fp8")


def test_a_model_in_training_mode_fuses_in_eval_mode_and_stays_as_it_was():
    torch.manual_seed(0)
    model = TITA(**{**SMALL, "drop_path_rate": 0.5}).train()
    a, b = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)
    first, second = fuse.fuse(a, b, model), fuse.fuse(a, b, model)
    assert torch.equal(first, second)  # no stochastic depth
    assert model.training
    with pytest.raises(ValueError, match="move it, or omit device"):
        fuse.fuse(a, b, TITA(**SMALL).to("meta"), device="cpu")
