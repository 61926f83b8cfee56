"""The IPA op: input checks and backend dispatch (implementations: reference now, fused kernels later)."""

from __future__ import annotations

import torch

from tita_fast import backends
from tita_fast.reference.ipa import ipa_reference

backends.register("ipa", "reference", ipa_reference)


def ipa(
    a: torch.Tensor,
    b: torch.Tensor,
    relation_fc1_weight: torch.Tensor,
    relation_fc1_bias: torch.Tensor,
    relation_fc2_weight: torch.Tensor,
    relation_fc2_bias: torch.Tensor,
    in_proj_weight_ab: torch.Tensor,
    in_proj_bias_ab: torch.Tensor,
    out_proj_weight_ab: torch.Tensor,
    out_proj_bias_ab: torch.Tensor,
    in_proj_weight_ba: torch.Tensor,
    in_proj_bias_ba: torch.Tensor,
    out_proj_weight_ba: torch.Tensor,
    out_proj_bias_ba: torch.Tensor,
    k_noise: torch.Tensor,
    v_noise: torch.Tensor,
    num_heads: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """IPA of token tensors ``a, b`` (N, L, C) for both directions; see :func:`tita_fast.reference.ipa_reference`."""
    if a.dim() != 3 or a.shape != b.shape:
        raise ValueError(
            f"IPA expects two (N, L, C) token tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    channels = a.shape[-1]
    if relation_fc1_weight.shape != (channels, 2 * channels):
        raise ValueError(f"IPA parameters are for dim {relation_fc1_weight.shape[0]}, inputs have {channels} channels")
    if channels % num_heads:
        raise ValueError(f"IPA dim {channels} is not divisible by num_heads {num_heads}")
    run = backends.choose("ipa", a)
    return run(
        a, b,
        relation_fc1_weight, relation_fc1_bias, relation_fc2_weight, relation_fc2_bias,
        in_proj_weight_ab, in_proj_bias_ab, out_proj_weight_ab, out_proj_bias_ab,
        in_proj_weight_ba, in_proj_bias_ba, out_proj_weight_ba, out_proj_bias_ba,
        k_noise, v_noise, num_heads,
    )  # fmt: skip
