"""The TITA network beyond the golden case: state-dict compatibility, checkpoints, configurations, shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tita_fast
from tests.conftest import load_golden, published_key_file, rel_err
from tita_fast.baseline import published_ops
from tita_fast.nn.swin import CrossSwinBlock, SwinBlock, shift_window_mask
from tita_fast.nn.tita import reflect_pad_to_multiple
from tita_fast.reference import published

SMALL = dict(img_size=16, in_chans=1, embed_dim=12, Ex_depths=[2], Fusion_depths=[2], Re_depths=[2],
             Ex_num_heads=[2], Fusion_num_heads=[3], Re_num_heads=[2], window_size=4, mlp_ratio=2)  # fmt: skip


def small_model(**overrides) -> tita_fast.TITA:
    torch.manual_seed(0)
    model = tita_fast.TITA(**{**SMALL, **overrides}).double().eval()
    with torch.no_grad():  # published init leaves many biases at 0 and LayerNorms at 1: make every path count
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def images(n, c, h, w, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, h, w, generator=g, dtype=torch.float64), torch.rand(
        n, c, h, w, generator=g, dtype=torch.float64
    )


# -- state-dict compatibility ----------------------------------------------------------------------------------


def test_published_configuration_has_the_published_state_dict():
    rows = published_key_file()
    model = tita_fast.TITA()
    state = model.state_dict()
    assert list(state) == [name for name, _, _ in rows]  # names and order
    for name, shape, dtype in rows:
        assert str(tuple(state[name].shape)) == shape, name
        assert str(state[name].dtype) == f"torch.{dtype}", name
    assert sum(p.numel() for p in model.parameters()) == 1_386_865  # the spec's count
    assert [n for n, _ in model.named_parameters()] == [n for n in state if n in dict(model.named_parameters())]


def test_checkpoint_with_other_attn_mask_size_loads_strictly():
    g = load_golden("tita_case.pt")  # img_size 32: attn_mask buffers (16, 64, 64)
    model = tita_fast.TITA(**{**g["config"], "img_size": 128}).double().eval()
    mask_before = model.layers_Re[0].residual_group.blocks[1].attn_mask.clone()
    model.load_state_dict(g["state_dict"], strict=True)
    assert torch.equal(model.layers_Re[0].residual_group.blocks[1].attn_mask, mask_before)  # kept, not replaced
    assert rel_err(model(g["A"], g["B"]), g["out"]) <= 1e-9


def test_attn_mask_buffer_equals_fresh_mask():
    block = tita_fast.TITA().layers_Ex_A[0].residual_group.blocks[1]
    assert torch.equal(block.attn_mask, shift_window_mask(128, 128, 8, 4))
    assert block.attn_mask.shape == (256, 64, 64)
    assert set(block.attn_mask.unique().tolist()) == {0.0, -100.0}


def test_from_checkpoint_reads_state_dicts_and_params_dicts(tmp_path):
    g = load_golden("tita_case.pt")
    torch.save(g["state_dict"], tmp_path / "plain.pth")
    torch.save({"params": g["state_dict"]}, tmp_path / "params.pth")
    for name in ("plain.pth", "params.pth"):
        model = tita_fast.TITA.from_checkpoint(tmp_path / name, img_size=32).double()
        assert not model.training
        assert rel_err(model(g["A"], g["B"]), g["out"]) <= 1e-9


def test_from_checkpoint_infers_the_architecture(tmp_path):
    config = {**SMALL, "in_chans": 3, "Fusion_depths": [2, 3], "Fusion_num_heads": [3, 2], "mlp_ratio": 1.5}
    model = small_model(**config)
    torch.save(model.state_dict(), tmp_path / "small.pth")
    loaded = tita_fast.TITA.from_checkpoint(tmp_path / "small.pth", img_size=16)
    assert loaded.conv_last3.weight.dtype == torch.float64  # the checkpoint's dtype
    for key in ("in_chans", "embed_dim", "Fusion_depths", "Fusion_num_heads", "window_size", "mlp_ratio"):
        assert loaded.config[key] == config[key], key
    a, b = images(1, 3, 9, 10)
    assert torch.equal(loaded(a, b), model(a, b))


def test_from_checkpoint_of_another_model_names_missing_and_unexpected_keys(tmp_path):
    other = torch.nn.Sequential(torch.nn.Linear(3, 4))
    torch.save(other.state_dict(), tmp_path / "other.pth")
    with pytest.raises(ValueError) as err:
        tita_fast.TITA.from_checkpoint(tmp_path / "other.pth")
    message = str(err.value)
    assert "missing keys (594)" in message and "conv_first1_A.weight" in message
    assert "unexpected keys (2)" in message and "0.weight" in message


def test_from_checkpoint_rejects_files_without_a_state_dict(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="does not hold a state-dict"):
        tita_fast.TITA.from_checkpoint(tmp_path / "list.pth")


def test_from_checkpoint_shape_mismatch_is_reported(tmp_path):
    state = small_model().state_dict()
    state["conv_last1.bias"] = torch.zeros(5, dtype=torch.float64)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="conv_last1.bias"):
        tita_fast.TITA.from_checkpoint(tmp_path / "bad.pth", img_size=16)


# -- drop-in modules -------------------------------------------------------------------------------------------


def test_ipa_and_oaf_inside_tita_are_the_public_modules():
    g = load_golden("tita_case.pt")
    model = tita_fast.TITA(**g["config"]).double().eval()
    model.load_state_dict(g["state_dict"])
    assert type(model.oaf) is tita_fast.OAF
    assert model.oaf.fafb_A is model.fafb_A and model.oaf.weight_gen is model.weight_gen
    block = model.layers_Fusion[1].residual_group.blocks[2]
    assert type(block.ipa) is tita_fast.IPA
    assert block.ipa.k_noise is block.k_noise
    # the block's IPA holds exactly the IPA keys of the published block
    assert set(block.ipa.state_dict()) == set(load_golden("ipa_case.pt")["state_dict"])
    # a standalone IPA loaded from the block's weights computes what the block's IPA computes
    standalone = tita_fast.IPA(60).double()
    standalone.load_state_dict(block.ipa.state_dict())
    a, b = torch.randn(2, 2, 7, 60, dtype=torch.float64).unbind(0)
    for got, want in zip(block.ipa(a, b), standalone(a, b), strict=True):
        assert torch.equal(got, want)
    # parameters are shared, not copied: moving the model moves the attached modules
    model.float()
    assert block.ipa.k_noise.weight.dtype == torch.float32 and model.oaf.fafb_B.hamming_highpass.dtype == torch.float32


# -- configurations and shapes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config,shape",
    [
        ({}, (3, 1, 13, 10)),
        ({"in_chans": 3}, (2, 3, 8, 17)),
        ({"Fusion_depths": [3, 1], "Fusion_num_heads": [2, 6], "mlp_ratio": 1.5, "qkv_bias": False}, (1, 1, 16, 16)),
        ({"embed_dim": 18, "window_size": 3, "img_size": 15, "img_range": 255.0, "qk_scale": 0.3}, (2, 1, 7, 11)),
    ],
    ids=["gray-batch3", "rgb", "deeper-no-qkv-bias", "window3-range255"],
)
def test_matches_the_published_algorithms_on_other_configurations(config, shape):
    """The vectorised IPA/OAF of the reference against the published per-batch loop and unfold forms,
    inside whole networks of other configurations, forward and input/parameter gradients (float64)."""
    model = small_model(**config)
    a, b = images(*shape)

    def run():
        model.zero_grad()
        ai, bi = a.clone().requires_grad_(), b.clone().requires_grad_()
        out = model(ai, bi)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        return [out, ai.grad, bi.grad] + [p.grad.clone() for p in model.parameters() if p.grad is not None]

    ours = run()
    with published_ops():
        theirs = run()
    assert tita_fast.ops.ipa is not published.ipa_published  # restored
    assert len(ours) == len(theirs)
    assert max(rel_err(x, y) for x, y in zip(ours, theirs, strict=True)) <= 1e-9


def test_batch_items_are_independent():
    model = small_model()
    a, b = images(3, 1, 9, 14)
    together = model(a, b)
    for i in range(3):
        assert rel_err(together[i : i + 1], model(a[i : i + 1], b[i : i + 1])) <= 1e-12


@pytest.mark.parametrize("height,width", [(1, 1), (1, 6), (3, 2), (5, 9), (4, 4), (12, 13)])
def test_any_image_size(height, width):
    model = small_model()
    a, b = images(2, 1, height, width)
    out = model(a, b)
    assert out.shape == a.shape and torch.isfinite(out).all()


def test_padding_is_published_reflect_and_extends_it_for_tiny_images():
    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float64).view(2, 3, 5, 7)
    assert torch.equal(reflect_pad_to_multiple(x, 8), F.pad(x, (0, 1, 0, 3), mode="reflect"))
    assert reflect_pad_to_multiple(x, 1) is x
    for h, w in [(2, 3), (3, 1), (1, 1)]:
        tiny = torch.arange(h * w, dtype=torch.float64).view(1, 1, h, w)
        expected = np.pad(
            tiny.numpy(), ((0, 0), (0, 0), (0, 8 - h), (0, 8 - w)), mode="reflect" if min(h, w) > 1 else "edge"
        )
        if h > 1 and w == 1:
            expected = np.pad(np.pad(tiny.numpy(), ((0, 0), (0, 0), (0, 8 - h), (0, 0)), mode="reflect"),
                              ((0, 0), (0, 0), (0, 0), (0, 7)), mode="edge")  # fmt: skip
        assert torch.equal(reflect_pad_to_multiple(tiny, 8), torch.from_numpy(expected)), (h, w)


def test_rgb_mean_is_subtracted_and_restored_with_float32_rounding():
    model = small_model(in_chans=3)
    mean = torch.tensor([0.4488, 0.4371, 0.4040], dtype=torch.float32).double().view(1, 3, 1, 1)
    assert torch.equal(model.mean.double(), mean)
    a, b = images(1, 3, 8, 8)
    out = model(a, b)
    model.mean.zero_()
    assert rel_err(out, model(a - mean, b - mean) + mean) <= 1e-12


def test_window_shrinks_when_img_size_is_not_larger():
    model = small_model(img_size=2)  # published: window = min(img_size) = 2, no shift, no attn_mask
    block = model.layers_Ex_A[0].residual_group.blocks[1]
    assert (block.window, block.shift, block.attn_mask) == (2, 0, None)
    assert not any(k.endswith("attn_mask") for k in model.state_dict())
    a, b = images(1, 1, 6, 5)
    assert model(a, b).shape == a.shape
    with pytest.raises(ValueError, match="windows"):
        small_model(img_size=3)(*images(1, 1, 4, 4))  # padded to 4: not splittable into 3x3 windows


def test_gradient_checkpointing_changes_nothing():
    a, b = images(1, 1, 8, 8)
    outs = []
    for use_checkpoint in (False, True):
        model = small_model(use_checkpoint=use_checkpoint).train()
        ai = a.clone().requires_grad_()
        out = model(ai, b)
        out.sum().backward()
        outs.append((out, ai.grad))
    assert torch.equal(outs[0][0], outs[1][0]) and rel_err(outs[1][1], outs[0][1]) <= 1e-12


def test_stochastic_depth_acts_in_training_only():
    model = small_model(drop_path_rate=0.5)
    a, b = images(4, 1, 8, 8)
    evaluated = model(a, b)
    assert torch.equal(evaluated, model(a, b))
    torch.manual_seed(3)
    trained = model.train()(a, b)
    assert not torch.allclose(trained, evaluated)
    assert torch.equal(small_model(drop_path_rate=0.0).train()(a, b), small_model(drop_path_rate=0.0)(a, b))


def test_blocks_get_the_published_shift_pattern():
    model = tita_fast.TITA()
    blocks = model.layers_Fusion[0].residual_group.blocks
    assert [type(b) for b in blocks] == [CrossSwinBlock] * 4
    assert [b.shift for b in blocks] == [0, 4, 0, 4]
    assert [b.shift for b in model.layers_Re[0].residual_group.blocks] == [0, 4, 0, 4]
    assert isinstance(model.layers_Re[0].residual_group.blocks[0], SwinBlock)


# -- errors ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"upsampler": "pixelshuffle"}, "upsampler"),
        ({"upscale": 2}, "upscale"),
        ({"resi_connection": "1conv"}, "resi_connection"),
        ({"ape": True}, "ape"),
        ({"patch_size": 2}, "patch_size"),
        ({"in_chans": 6}, "in_chans=6"),
        ({"embed_dim": 64}, "multiple of 6"),
        ({"embed_dim": 3, "Fusion_depths": []}, "at least 4"),
        ({"Fusion_depths": [4, 4], "Fusion_num_heads": [6]}, "Fusion_num_heads"),
        ({"img_size": 20}, "multiple of the window"),
    ],
)
def test_unsupported_configurations_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tita_fast.TITA(**kwargs)


def test_unknown_keyword_raises():
    with pytest.raises(TypeError):
        tita_fast.TITA(embed_dimm=60)


def test_bad_inputs_raise_clear_errors():
    model = small_model()
    a, b = images(1, 1, 8, 8)
    with pytest.raises(ValueError, match="same shape"):
        model(a, b[..., :7])
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        model(a[0], b[0])
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        model(a.repeat(1, 3, 1, 1), b.repeat(1, 3, 1, 1))
    with pytest.raises(TypeError, match="floating-point"):
        model(a.long(), b.long())
    with pytest.raises(ValueError, match="dtype"):
        model(a.float(), b.float())


def test_ipa_and_oaf_state_dicts_are_the_published_ones():
    assert list(tita_fast.IPA(60).state_dict()) == list(load_golden("ipa_case.pt")["state_dict"])
    assert list(tita_fast.OAF(60).state_dict()) == list(load_golden("oaf_case.pt")["state_dict"])


@pytest.mark.parametrize("size", [(16, 16), (13, 10)], ids=["stored-mask", "fresh-mask"])
def test_every_tensor_follows_the_model_device(size):
    """On the meta device any tensor made on the CPU (masks, padding indices, the mean) would fail to mix:
    this is what lets the same code run on CUDA."""
    model = tita_fast.TITA(**SMALL).to("meta")
    a = torch.empty(2, 1, *size, device="meta")
    out = model(a, a)
    assert out.device.type == "meta" and out.shape == a.shape


def test_torch_compile_traces_the_whole_network_without_graph_breaks():
    model = small_model()
    a, b = images(2, 1, 9, 12)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # dynamo + autograd tracing, no codegen
    ai = a.clone().requires_grad_()
    out = compiled(ai, b)
    out.sum().backward()
    ai_eager = a.clone().requires_grad_()
    expected = model(ai_eager, b)
    expected.sum().backward()
    assert rel_err(out, expected) <= 1e-12 and rel_err(ai.grad, ai_eager.grad) <= 1e-12
    with tita_fast.use_backend("reference"):  # a selection change is seen by the compiled model (re-traced)
        assert rel_err(compiled(a, b), expected) <= 1e-12


def test_deepcopy_keeps_the_attached_modules_shared_with_the_copy():
    import copy

    model = small_model()
    twin = copy.deepcopy(model)  # what an EMA copy does
    block = twin.layers_Fusion[0].residual_group.blocks[0]
    assert block.ipa.k_noise is block.k_noise and twin.oaf.fafb_A is twin.fafb_A
    assert block.k_noise is not model.layers_Fusion[0].residual_group.blocks[0].k_noise
    a, b = images(1, 1, 8, 8)
    with torch.no_grad():
        block.k_noise.weight.add_(1.0)  # changing the copy's parameter changes what the copy's IPA computes
    assert not torch.equal(twin(a, b), model(a, b))


def test_published_leniencies_are_kept():
    # extra head counts are ignored; without cross blocks (no IPA) embed_dim need not be a multiple of 6
    model = tita_fast.TITA(**{**SMALL, "Ex_num_heads": [2, 3], "embed_dim": 8, "Fusion_depths": []})
    assert len(model.layers_Ex_A) == 1 and len(model.layers_Fusion) == 0
    a, b = images(1, 1, 5, 6)
    assert model.double()(a, b).shape == a.shape


def test_drop_path_of_one_drops_the_branch_without_nan():
    layer = tita_fast.nn.layers.DropPath(1.0).train()
    assert torch.equal(layer(torch.ones(3, 4)), torch.zeros(3, 4))
    out = small_model(drop_path_rate=1.0).train()(*images(2, 1, 8, 8))
    assert torch.isfinite(out).all()


def test_from_checkpoint_explains_a_missing_shift_mask(tmp_path):
    torch.save(small_model(img_size=4).state_dict(), tmp_path / "shrunk.pth")  # window 4, img_size 4: no shift
    with pytest.raises(ValueError, match="img_size <= window_size"):
        tita_fast.TITA.from_checkpoint(tmp_path / "shrunk.pth")
    model = tita_fast.TITA.from_checkpoint(tmp_path / "shrunk.pth", img_size=4, window_size=4)
    assert model.layers_Re[0].residual_group.blocks[1].shift == 0


@pytest.mark.parametrize("piece_tokens", [8192, 1])
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("shape", [(2, 1, 24, 40), (1, 1, 16, 16), (3, 1, 19, 27)])
def test_inference_path_equals_the_autograd_path(monkeypatch, dtype, tolerance, shape, piece_tokens):
    # In eval mode without autograd the blocks run a few window rows at a time in window order, the window
    # attention and the residual MLP through the default backend's inference ops; with autograd, whole blocks and
    # the differentiable ops. Pieces: the whole map at once, or one window row each (piece_tokens=1).
    # Sizes: img_size itself, others, N > 1, odd sizes (padding). Tolerance: float64 rounding of a ~20-layer
    # network; float32: online vs two-pass softmax and summation order, relative to the output range.
    monkeypatch.setattr(tita_fast.nn.swin, "INFERENCE_CHUNK_TOKENS", piece_tokens)
    torch.manual_seed(0)
    config = {"img_size": 16, "embed_dim": 12, "Ex_depths": [2], "Fusion_depths": [2], "Re_depths": [2],
              "Ex_num_heads": [2], "Fusion_num_heads": [3], "Re_num_heads": [2], "window_size": 8}  # fmt: skip
    model = tita_fast.TITA(**config).to(dtype).eval()
    a, b = torch.rand(2, *shape, dtype=dtype).unbind(0)
    with torch.no_grad():
        fused_path = model(a, b)
    a.requires_grad_(True)
    graph_path = model(a, b)
    assert rel_err(fused_path, graph_path.detach()) <= tolerance


def test_training_mode_forward_without_autograd_draws_stochastic_depth_as_the_whole_map_path(monkeypatch):
    # FAMO's extra forward runs in training mode without autograd: the window-row pieces must draw each image's
    # stochastic-depth factors once, in the whole-map order, so that both paths give the same result.
    monkeypatch.setattr(tita_fast.nn.swin, "INFERENCE_CHUNK_TOKENS", 1)
    model = small_model(drop_path_rate=0.5).train()
    a, b = images(4, 1, 16, 24)
    torch.manual_seed(3)
    with torch.no_grad():
        pieces = model(a, b)
    torch.manual_seed(3)
    with torch.no_grad(), monkeypatch.context() as patch:
        patch.setattr(tita_fast.nn.swin._ShiftedWindows, "_infers", lambda self, *inputs: False)
        whole = model(a, b)
    assert rel_err(pieces, whole) <= 1e-12
    torch.manual_seed(4)
    with torch.no_grad():
        assert rel_err(model(a, b), whole) > 1e-3  # and the draws matter
