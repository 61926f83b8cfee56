"""Pure-PyTorch IPA (interaction-enhanced pixel attention), vectorised over batch and pixels.

Spec: ``shared/spec/TITA.md``, section IPA. At every token the pair (a, b) runs two one-query, two-key
attentions; the published code does this with ``nn.MultiheadAttention`` looped over the batch
(:mod:`tita_fast.reference.published` keeps that form). Here all tokens go at once.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _two_key_attention(query, keys, values, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, num_heads):
    """``nn.MultiheadAttention`` for one query over two keys, batched over all leading dims.

    query: (..., C); keys, values: (..., 2, C). Operation order follows torch's MHA (scale Q, then dot); with two
    keys the per-head dot products and the weighted sum are elementwise ops, cheaper than tiny matmuls.
    """
    head_dim = query.shape[-1] // num_heads
    w_q, w_k, w_v = in_proj_weight.chunk(3)
    b_q, b_k, b_v = in_proj_bias.chunk(3)
    q = F.linear(query, w_q, b_q) * math.sqrt(1.0 / head_dim)
    k = F.linear(keys, w_k, b_k)
    v = F.linear(values, w_v, b_v)
    q = q.unflatten(-1, (num_heads, head_dim)).unsqueeze(-3)  # (..., 1, h, d)
    k = k.unflatten(-1, (num_heads, head_dim))  # (..., 2, h, d)
    v = v.unflatten(-1, (num_heads, head_dim))
    p = (q * k).sum(dim=-1, keepdim=True).softmax(dim=-3)  # (..., 2, h, 1): softmax over the two keys
    o = (p * v).sum(dim=-3).flatten(-2)
    return F.linear(o, out_proj_weight, out_proj_bias)


def ipa_reference(
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
    """IPA on token tensors ``a, b`` of shape (..., C); returns ``(a', b')``.

    ``*_ab`` are the parameters of ``cross_attn_0_to_1`` (queries from ``a``), ``*_ba`` of ``cross_attn_1_to_0``;
    row 0 of ``k_noise``/``v_noise`` belongs to direction a, row 1 to direction b.
    """

    def relation(first, second):
        hidden = F.gelu(F.linear(torch.cat([first, second], dim=-1), relation_fc1_weight, relation_fc1_bias))
        return F.linear(hidden, relation_fc2_weight, relation_fc2_bias).softmax(dim=-1)

    r_ab, r_ba = relation(a, b), relation(b, a)

    def direction(q, other, r, row, in_w, in_b, out_w, out_b):
        keys = torch.stack([(k_noise[row] + q) - q * r, (v_noise[row] + q) + q * r], dim=-2)
        values = torch.stack([q, other], dim=-2)
        return q + _two_key_attention(q, keys, values, in_w, in_b, out_w, out_b, num_heads)

    a_new = direction(a, b, r_ab, 0, in_proj_weight_ab, in_proj_bias_ab, out_proj_weight_ab, out_proj_bias_ab)
    b_new = direction(b, a, r_ba, 1, in_proj_weight_ba, in_proj_bias_ba, out_proj_weight_ba, out_proj_bias_ba)
    return a_new, b_new
