"""IPA: interaction-enhanced pixel attention (spec section IPA), drop-in for the published cross block's IPA."""

from __future__ import annotations

import torch
from torch import nn

from tita_fast import ops
from tita_fast.nn.layers import Mlp


class IPA(nn.Module):
    """Per-token attention between two streams ``x, y`` (N, L, C) -> ``(x', y')``.

    State-dict keys are the published ones: ``relation_judger.0.fc{1,2}.*``, ``cross_attn_0_to_1.*``,
    ``cross_attn_1_to_0.*`` (``nn.MultiheadAttention`` parameter layout), ``k_noise.weight``, ``v_noise.weight``.
    """

    def __init__(self, dim: int, num_heads: int = 6):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"IPA dim {dim} must be divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        # nn.MultiheadAttention is kept as the parameter container for its key names and torch's initialisation.
        self.cross_attn_0_to_1 = nn.MultiheadAttention(dim, num_heads)
        self.cross_attn_1_to_0 = nn.MultiheadAttention(dim, num_heads)
        self.relation_judger = nn.Sequential(Mlp(2 * dim, dim, dim))  # published: followed by a softmax over C
        self.k_noise = nn.Embedding(2, dim)
        self.v_noise = nn.Embedding(2, dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        relation = self.relation_judger[0]
        ab, ba = self.cross_attn_0_to_1, self.cross_attn_1_to_0
        return ops.ipa(
            x, y,
            relation.fc1.weight, relation.fc1.bias, relation.fc2.weight, relation.fc2.bias,
            ab.in_proj_weight, ab.in_proj_bias, ab.out_proj.weight, ab.out_proj.bias,
            ba.in_proj_weight, ba.in_proj_bias, ba.out_proj.weight, ba.out_proj.bias,
            self.k_noise.weight, self.v_noise.weight, self.num_heads,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}"
