"""The whole TITA network (spec: top level, extraction, fusion, reconstruction), state-dict compatible."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tita_fast.nn.layers import attach_flat
from tita_fast.nn.oaf import OAF
from tita_fast.nn.swin import CrossSwinStage, SwinStage

RGB_MEAN = (0.4488, 0.4371, 0.4040)


def reflect_pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad (N, C, H, W) on the bottom and right up to multiples of ``multiple`` by reflection.

    Equals ``F.pad(x, ..., mode="reflect")`` (the published padding) whenever that works, i.e. when each pad is
    smaller than the side; for smaller images the reflection repeats (as ``numpy.pad(mode="reflect")``), and a
    side of one pixel is repeated.
    """

    def indices(size: int) -> torch.Tensor:
        i = torch.arange(size + (-size) % multiple, device=x.device)
        period = max(2 * (size - 1), 1)
        i = i % period
        return torch.where(i >= size, period - i, i)

    height, width = x.shape[-2:]
    if height % multiple == 0 and width % multiple == 0:
        return x
    return x.index_select(-2, indices(height)).index_select(-1, indices(width))


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class PatchEmbed(nn.Module):
    """(N, C, H, W) -> tokens (N, H*W, C), then the LayerNorm shared by every stage (``patch_embed.norm``)."""

    def __init__(self, dim: int, norm: bool):
        super().__init__()
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.flatten(2).transpose(1, 2))


def _tokens_to_map(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], *size)


class TITA(nn.Module):
    """TITA: fuse two registered images ``A, B`` (N, in_chans, H, W) into one of the same shape.

    Keyword arguments are the published constructor's; the defaults build the released model (embed_dim 60,
    window 8, mlp_ratio 2, depths [4] / [4, 4] / [4], 6 heads, img_size 128). ``img_size`` only sizes the stored
    ``attn_mask`` buffers: any H, W runs. Unsupported published options (other upsamplers, upscale != 1,
    ``resi_connection`` other than ``"oaf"``, ``ape``, ``patch_size`` != 1) raise.
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 128,
        patch_size: int = 1,
        in_chans: int = 1,
        embed_dim: int = 60,
        Ex_depths: Sequence[int] = (4,),
        Fusion_depths: Sequence[int] = (4, 4),
        Re_depths: Sequence[int] = (4,),
        Ex_num_heads: Sequence[int] = (6,),
        Fusion_num_heads: Sequence[int] = (6, 6),
        Re_num_heads: Sequence[int] = (6,),
        window_size: int = 8,
        mlp_ratio: float = 2.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        ape: bool = False,
        patch_norm: bool = True,
        use_checkpoint: bool = False,
        upscale: int = 1,
        img_range: float = 1.0,
        upsampler: str | None = "",
        resi_connection: str = "oaf",
    ):
        super().__init__()
        unsupported = {
            "patch_size": (patch_size, 1), "ape": (ape, False), "upscale": (upscale, 1),
            "resi_connection": (resi_connection, "oaf"), "norm_layer": (norm_layer, nn.LayerNorm),
        }  # fmt: skip
        for name, (value, supported) in unsupported.items():
            if value != supported:
                raise ValueError(
                    f"TITA supports only {name}={supported!r} (the published fusion network), got {value!r}"
                )
        if upsampler not in ("", None):
            raise ValueError(f"TITA supports no upsampler (upsampler='' or None), got {upsampler!r}")
        if in_chans == 6:
            raise ValueError("in_chans=6 is not supported: the published network subtracts a 3-channel mean there")
        for name, depths, heads in (("Ex", Ex_depths, Ex_num_heads), ("Fusion", Fusion_depths, Fusion_num_heads),
                                    ("Re", Re_depths, Re_num_heads)):  # fmt: skip
            if len(heads) < len(depths):  # extra head counts are ignored, as published
                raise ValueError(f"{name}_num_heads {list(heads)} has fewer entries than {name}_depths {list(depths)}")
        if embed_dim < 4:
            raise ValueError("embed_dim must be at least 4 (the last convolutions have embed_dim // 4 channels)")
        if sum(Fusion_depths) and embed_dim % 6:
            raise ValueError(f"embed_dim must be a multiple of 6 (the cross blocks' IPA has 6 heads), got {embed_dim}")

        self.config = dict(
            img_size=img_size, in_chans=in_chans, embed_dim=embed_dim, Ex_depths=list(Ex_depths),
            Fusion_depths=list(Fusion_depths), Re_depths=list(Re_depths), Ex_num_heads=list(Ex_num_heads),
            Fusion_num_heads=list(Fusion_num_heads), Re_num_heads=list(Re_num_heads), window_size=window_size,
            mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate, patch_norm=patch_norm,
            use_checkpoint=use_checkpoint, img_range=img_range,
        )  # fmt: skip
        self.in_chans, self.window_size, self.img_range = in_chans, window_size, img_range
        # The published mean is a float32 tensor cast to the input dtype: keep its float32 rounding.
        mean = torch.tensor(RGB_MEAN if in_chans == 3 else (0.0,), dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)

        half = int(embed_dim / 2)
        self.conv_first1_A = nn.Conv2d(in_chans, half, 3, 1, 1)
        self.conv_first1_B = nn.Conv2d(in_chans, half, 3, 1, 1)  # in the published state-dict, never used
        self.conv_first2_A = nn.Conv2d(half, embed_dim, 3, 1, 1)
        self.conv_first2_B = nn.Conv2d(half, half, 3, 1, 1)  # in the published state-dict, never used
        self.patch_embed = PatchEmbed(embed_dim, patch_norm)
        self.pos_drop = nn.Dropout(drop_rate)

        resolution = _pair(img_size)
        block_args = dict(mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate,
                          attn_drop=attn_drop_rate, use_checkpoint=use_checkpoint)  # fmt: skip

        def stages(stage_cls, depths, heads):
            # stochastic depth: a linear ramp 0 -> drop_path_rate over the blocks of this group of stages
            rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
            starts = [sum(depths[:i]) for i in range(len(depths))]
            return nn.ModuleList(
                stage_cls(embed_dim, resolution, d, h, window_size, rates[s : s + d], **block_args)
                for d, h, s in zip(depths, heads[: len(depths)], starts, strict=True)
            )

        self.layers_Ex_A = stages(SwinStage, Ex_depths, Ex_num_heads)
        self.norm_Ex_A = nn.LayerNorm(embed_dim)
        self.layers_Ex_B = stages(SwinStage, Ex_depths, Ex_num_heads)
        self.norm_Ex_B = nn.LayerNorm(embed_dim)
        self.layers_Fusion = stages(CrossSwinStage, Fusion_depths, Fusion_num_heads)
        self.norm_Fusion_A = nn.LayerNorm(embed_dim)
        self.norm_Fusion_B = nn.LayerNorm(embed_dim)
        self.layers_Re = stages(SwinStage, Re_depths, Re_num_heads)
        self.norm_Re = nn.LayerNorm(embed_dim)
        attach_flat(self, "oaf", OAF(embed_dim))  # keys fafb_A.*, fafb_B.*, weight_gen.*
        self.conv_last1 = nn.Conv2d(embed_dim, half, 3, 1, 1)
        self.conv_last2 = nn.Conv2d(half, int(half / 2), 3, 1, 1)
        self.conv_last3 = nn.Conv2d(int(half / 2), in_chans, 3, 1, 1)
        self.apply(_init_weights)

    # -- forward -----------------------------------------------------------------------------------------------

    def forward(self, A: torch.Tensor, B: torch.Tensor, oaf_pooled: torch.Tensor | None = None) -> torch.Tensor:
        """Fused image (N, in_chans, H, W). ``oaf_pooled`` (N, 2C) replaces the global average pool of OAF's
        inputs: tiled inference passes the whole image's (see :meth:`oaf_inputs`), so every tile mixes alike."""
        height, width = A.shape[-2:]
        out = self._reconstruct(self.oaf(*self.oaf_inputs(A, B), pooled=oaf_pooled))
        return (out / self.img_range + self.mean.to(A.dtype))[:, :, :height, :width]

    def oaf_inputs(self, A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two feature maps (N, C, H', W') the final OAF fuses, on the image padded to the window grid."""
        self._check_inputs(A, B)
        mean = self.mean.to(A.dtype)
        x = (reflect_pad_to_multiple(A, self.window_size) - mean) * self.img_range
        y = (reflect_pad_to_multiple(B, self.window_size) - mean) * self.img_range
        x = self._extract(x, self.layers_Ex_A, self.norm_Ex_A)
        y = self._extract(y, self.layers_Ex_B, self.norm_Ex_B)
        return self._fuse(x, y)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.pos_drop(self.patch_embed(x))

    def _extract(self, x: torch.Tensor, layers: nn.ModuleList, norm: nn.LayerNorm) -> torch.Tensor:
        # Both sources use the A convolutions (published quirk; conv_first*_B are never used).
        x = F.leaky_relu(self.conv_first1_A(x), 0.2)
        x = F.leaky_relu(self.conv_first2_A(x), 0.2)
        size = x.shape[-2:]
        t = self._embed(x)
        for layer in layers:
            t = layer(t, size)
        return _tokens_to_map(norm(t), size)

    def _fuse(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = x.shape[-2:]
        tx, ty = self._embed(x), self._embed(y)
        for layer in self.layers_Fusion:
            tx, ty = layer(tx, ty, size)
        return _tokens_to_map(self.norm_Fusion_A(tx), size), _tokens_to_map(self.norm_Fusion_B(ty), size)

    def _reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        t = self._embed(x)
        for layer in self.layers_Re:
            t = layer(t, size)
        x = _tokens_to_map(self.norm_Re(t), size)
        x = F.leaky_relu(self.conv_last1(x), 0.2)
        x = F.leaky_relu(self.conv_last2(x), 0.2)
        return self.conv_last3(x)

    def _check_inputs(self, A: torch.Tensor, B: torch.Tensor) -> None:
        for name, t in (("A", A), ("B", B)):
            if not isinstance(t, torch.Tensor) or t.dim() != 4 or t.shape[1] != self.in_chans:
                shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"TITA expects {name} of shape (N, {self.in_chans}, H, W), got {shape}")
            if not t.is_floating_point():
                raise TypeError(f"TITA expects floating-point images, got {name} of dtype {t.dtype}")
        if A.shape != B.shape:
            raise ValueError(f"A and B must have the same shape, got {tuple(A.shape)} and {tuple(B.shape)}")
        weight = self.conv_first1_A.weight
        if A.dtype != B.dtype or A.device != B.device or A.dtype != weight.dtype or A.device != weight.device:
            raise ValueError(
                f"A ({A.dtype}, {A.device}), B ({B.dtype}, {B.device}) and the model ({weight.dtype}, {weight.device}) "
                "must share dtype and device"
            )
        if A.numel() == 0:
            raise ValueError(f"TITA got empty images of shape {tuple(A.shape)}")

    # -- checkpoints -------------------------------------------------------------------------------------------

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, map_location="cpu", **overrides) -> TITA:
        """Build the network a published ``.pth`` file holds and load it strictly; returns it in eval mode.

        The file is a state-dict, or a dict holding one under ``params``; it is read with ``weights_only=True``.
        The architecture (channels, depths, heads, window, MLP ratio, qkv bias) is read from the tensors' names
        and shapes; keyword ``overrides`` take precedence. A ``.safetensors`` file written by ``tita-fast train``
        carries the model's configuration, which is used whole. The model takes the checkpoint's floating dtype. A
        file of another model raises an error naming the missing and unexpected keys.
        """
        saved_config: dict = {}
        if os.fspath(path).endswith(".safetensors"):
            state, saved_config = _read_safetensors(path, map_location)
        else:
            state = torch.load(path, map_location=map_location, weights_only=True)
        if isinstance(state, Mapping) and isinstance(state.get("params"), Mapping):
            state = state["params"]
        if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f"{os.fspath(path)} does not hold a state-dict (nor a dict with one under 'params')")
        config = {**infer_config(state), **saved_config, **overrides}
        model = cls(**config)
        float_dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
        if len(float_dtypes) == 1:  # keep the checkpoint's precision (published ones are float32)
            model.to(float_dtypes.pop())
        try:
            result = model.load_state_dict(state, strict=False)
        except RuntimeError as err:  # shape mismatches
            raise ValueError(f"{os.fspath(path)} does not match TITA({_fmt(config)}):\n{err}") from None
        if result.missing_keys or result.unexpected_keys:
            hint = ""
            if result.missing_keys and all(k.endswith(".attn_mask") for k in result.missing_keys):
                hint = (
                    "\n  the file has no shifted-window masks: it was made with img_size <= window_size; "
                    "pass the img_size and window_size it was built with"
                )
            raise ValueError(
                f"{os.fspath(path)} is not a checkpoint of TITA({_fmt(config)}):\n"
                f"  missing keys ({len(result.missing_keys)}): {_fmt_keys(result.missing_keys)}\n"
                f"  unexpected keys ({len(result.unexpected_keys)}): {_fmt_keys(result.unexpected_keys)}{hint}"
            )
        return model.eval()


def _read_safetensors(path: str | os.PathLike, device) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and, when present, the model configuration (metadata ``tita_config``) of a safetensors file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(os.fspath(path), framework="pt", device=str(torch.device(device))) as f:
            state = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is not a Mapping)
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{os.fspath(path)} is not a readable safetensors file: {err}") from None
    return state, json.loads(metadata["tita_config"]) if "tita_config" in metadata else {}


def _init_weights(m: nn.Module) -> None:
    # Published: every nn.Linear (MultiheadAttention's out_proj included) trunc-normal 0.02 with zero bias;
    # LayerNorms 1 and 0. Convolutions, in_proj and embeddings keep their own initialisation.
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def infer_config(state: Mapping[str, torch.Tensor]) -> dict:
    """Constructor arguments recoverable from a TITA state-dict (what cannot be read is left out)."""
    config = {}
    if "conv_first1_A.weight" in state:
        config["in_chans"] = state["conv_first1_A.weight"].shape[1]
    if "conv_first2_A.weight" in state:
        config["embed_dim"] = state["conv_first2_A.weight"].shape[0]
    for group, attn in (("Ex", "attn"), ("Fusion", "attn_A"), ("Re", "attn")):
        prefix = f"layers_{group}_A" if group == "Ex" else f"layers_{group}"
        depths, heads = [], []
        while f"{prefix}.{len(depths)}.residual_group.blocks.0.{attn}.relative_position_bias_table" in state:
            stage = f"{prefix}.{len(depths)}.residual_group.blocks"
            depths.append(len({k.split(".")[4] for k in state if k.startswith(stage + ".")}))
            heads.append(state[f"{stage}.0.{attn}.relative_position_bias_table"].shape[1])
        if depths:
            config[f"{group}_depths"], config[f"{group}_num_heads"] = depths, heads
    block = "layers_Ex_A.0.residual_group.blocks.0"
    if f"{block}.attn.relative_position_bias_table" in state:
        side = round(state[f"{block}.attn.relative_position_bias_table"].shape[0] ** 0.5)
        config["window_size"] = (side + 1) // 2
        config["qkv_bias"] = f"{block}.attn.qkv.bias" in state
    if f"{block}.mlp.fc1.weight" in state:
        hidden, dim = state[f"{block}.mlp.fc1.weight"].shape
        config["mlp_ratio"] = hidden / dim
    return config


def _fmt(config: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in config.items())


def _fmt_keys(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "") if keys else "none"
