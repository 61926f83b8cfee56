"""OAF: operation-based adaptive fusion (spec section OAF), drop-in for the published fusion step."""

from __future__ import annotations

import torch
from torch import nn

from tita_fast import ops
from tita_fast.nn.layers import Mlp


def hamming_3x3() -> torch.Tensor:
    """outer(h, h) with h = numpy.hamming(3) = (0.08, 1, 0.08), stored in float32 as the published buffer."""
    h = torch.hamming_window(3, periodic=False, dtype=torch.float64)
    return torch.outer(h, h).float().reshape(1, 1, 3, 3)


class OAFBlock(nn.Module):
    """The generators of one source: returns its filter logits (N, 9, H, W), residual and multiplier maps."""

    def __init__(self, dim: int):
        super().__init__()
        self.channel_compressor = nn.Conv2d(dim, dim, 1)
        self.ahpf_generator = nn.Sequential(nn.Conv2d(dim, 9, 3, padding=1))
        self.residual_generator = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1))
        self.weight_generator = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1))
        self.register_buffer("hamming_highpass", hamming_3x3())
        # Published init: xavier-uniform convolutions, zero biases. Its follow-up normal(0, 0.001) init of
        # ahpf_generator is applied to the nn.Sequential, which has no `weight`, so it does nothing; same here.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self.channel_compressor(x)
        return self.ahpf_generator(z), self.residual_generator(z), self.weight_generator(z)


class OAF(nn.Module):
    """Fuse two feature maps ``x, y`` (N, C, H, W) into one (N, C, H, W).

    State-dict keys are the published ones: ``fafb_A.*``, ``fafb_B.*``, ``weight_gen.2.fc{1,2}.*``.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        # Indices as published (keys weight_gen.2.*): global average pool, flatten, MLP, softmax over 6 weights.
        self.weight_gen = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), Mlp(2 * dim, dim, 6), nn.Softmax(dim=-1))
        self.fafb_A = OAFBlock(dim)
        self.fafb_B = OAFBlock(dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        """``pooled`` (N, 2C), when given, stands for the global average pool of ``cat([x, y])`` (tiled inference)."""
        if x.device.type == "cpu" and not self._records_graph(x, y):
            # Inference on CPU runs channels-last: oneDNN's generator convolutions are ~1.8x faster in it (but ~3x
            # slower in backward, hence not when training), and it is the fused CPU kernel's layout. A no-op in
            # TITA, whose OAF inputs are channels-last views of its tokens.
            x, y = (t.contiguous(memory_format=torch.channels_last) for t in (x, y))
        logits_x, residual_x, multiplier_x = self.fafb_A(x)
        logits_y, residual_y, multiplier_y = self.fafb_B(y)
        # Pooling each source before concatenating gives the published weight_gen(cat([x, y])) without copying
        # both maps into a 2C-channel tensor.
        if pooled is None:
            pool = self.weight_gen[0]
            pooled = torch.cat([pool(x), pool(y)], dim=1)
        elif pooled.shape != (x.shape[0], 2 * self.dim):
            raise ValueError(f"pooled must be (N, 2C) = {(x.shape[0], 2 * self.dim)}, got {tuple(pooled.shape)}")
        mix_weights = self.weight_gen[1:](pooled.to(x.dtype))
        return ops.oaf_mix(
            x, y, logits_x, logits_y, residual_x, residual_y, multiplier_x, multiplier_y,
            self.fafb_A.hamming_highpass, self.fafb_B.hamming_highpass, mix_weights,
        )  # fmt: skip

    def _records_graph(self, *inputs: torch.Tensor) -> bool:
        tensors = (*inputs, *self.parameters())
        return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
