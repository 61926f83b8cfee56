"""The published implementation's algorithms for IPA, OAF mixing and window attention, rebuilt as parity oracles
and as the speed/memory baselines of the benchmarks. Same signatures as the ops; the modules use only the window
attention, for attention dropout in training (which the fused paths do not have). This module imports nothing of
the package: :mod:`tita_fast.baseline` swaps these algorithms into the modules.

* IPA: a Python loop over the batch, each item running ``nn.MultiheadAttention`` (here its functional form)
  with the pixels as the attention batch, one query and two keys per pixel.
* Window attention: scores, + relative-position bias, + shift mask (rebuilt densely at every call), softmax,
  dropout, @ v, each step writing the whole (windows, heads, T, T) tensor.
* OAF: the per-pixel filter normalised through reshapes, then applied with ``F.unfold`` of the reflect-padded
  input (a 9·C·H·W tensor), then six full-size feature maps mixed with the per-image weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ipa_published(
    a, b, relation_fc1_weight, relation_fc1_bias, relation_fc2_weight, relation_fc2_bias,
    in_proj_weight_ab, in_proj_bias_ab, out_proj_weight_ab, out_proj_bias_ab,
    in_proj_weight_ba, in_proj_bias_ba, out_proj_weight_ba, out_proj_bias_ba,
    k_noise, v_noise, num_heads,
):  # fmt: skip
    channels = a.shape[-1]

    def relation(t):
        hidden = F.gelu(F.linear(t, relation_fc1_weight, relation_fc1_bias))
        return torch.softmax(F.linear(hidden, relation_fc2_weight, relation_fc2_bias), dim=-1)

    def attend(q, k, v, in_w, in_b, out_w, out_b):
        # sequence-first (1 or 2, pixels, C), as nn.MultiheadAttention(batch_first=False) receives them
        out, _ = F.multi_head_attention_forward(
            q, k, v, channels, num_heads, in_w, in_b, None, None, False, 0.0, out_w, out_b, training=False
        )
        return out

    new_a, new_b = [], []
    for i in range(a.shape[0]):
        x, y = a[i].unsqueeze(0), b[i].unsqueeze(0)  # (1, L, C)
        r_yx, r_xy = relation(torch.cat([y, x], dim=-1)), relation(torch.cat([x, y], dim=-1))
        k = torch.cat([k_noise[0] + x - x * r_xy, v_noise[0] + x + x * r_xy], dim=0)
        out = attend(x, k, torch.cat([x, y], dim=0), in_proj_weight_ab, in_proj_bias_ab, out_proj_weight_ab,
                     out_proj_bias_ab)  # fmt: skip
        new_a.append(a[i] + out[0])
        k = torch.cat([k_noise[1] + y - y * r_yx, v_noise[1] + y + y * r_yx], dim=0)
        out = attend(y, k, torch.cat([y, x], dim=0), in_proj_weight_ba, in_proj_bias_ba, out_proj_weight_ba,
                     out_proj_bias_ba)  # fmt: skip
        new_b.append(b[i] + out[0])
    return torch.stack(new_a), torch.stack(new_b)


def window_attention_published(q, k, v, bias, mask, scale, dropout_p=0.0, training=False):
    """q, k, v (B_, T, heads, d), bias (heads, T, T), mask a :class:`tita_fast.ops.window_attention.ShiftMask` or
    None; returns (B_, T, heads, d)."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B_, heads, T, d), as the published qkv permute makes them
    b_, heads, tokens, _ = q.shape
    attn = (q * scale) @ k.transpose(-2, -1) + bias.unsqueeze(0)
    if mask is not None:
        dense = mask.dense().to(attn.dtype)
        attn = attn.view(b_ // mask.n_windows, mask.n_windows, heads, tokens, tokens) + dense[None, :, None]
        attn = attn.view(-1, heads, tokens, tokens)
    attn = F.dropout(attn.softmax(dim=-1), dropout_p, training)
    return (attn @ v).transpose(1, 2)


def _highpass_unfold(x, filter_logits, hamming):
    n, c, h, w = x.shape
    mask = F.softmax(filter_logits.view(n, 1, 9, h, w), dim=2)
    mask = mask.view(n, 1, 3, 3, h, w).permute(0, 1, 4, 5, 2, 3).reshape(n, -1, 3, 3)
    mask = mask * hamming.to(mask.dtype)
    mask = mask / mask.sum(dim=(-1, -2), keepdim=True)
    mask = mask.view(n, 1, h, w, 9).permute(0, 1, 4, 2, 3).reshape(n, 1, 9, h, w)
    unfolded = F.unfold(F.pad(x, [1, 1, 1, 1], mode="reflect"), kernel_size=3).reshape(n, c, 9, h, w)
    return x - (unfolded * mask).sum(dim=2)


def oaf_mix_published(
    x, y, filter_logits_x, filter_logits_y, residual_x, residual_y, multiplier_x, multiplier_y,
    hamming_x, hamming_y, mix_weights,
):  # fmt: skip
    features_x = [_highpass_unfold(x, filter_logits_x, hamming_x), x + residual_x, x * multiplier_x]
    features_y = [_highpass_unfold(y, filter_logits_y, hamming_y), y + residual_y, y * multiplier_y]
    out = 0
    for i, (fx, fy) in enumerate(zip(features_x, features_y, strict=True)):
        out = out + mix_weights[:, i].view(-1, 1, 1, 1) * fx
        out = out + mix_weights[:, i + 3].view(-1, 1, 1, 1) * fy
    return out


def oaf_published(module, x, y):
    """The published OAF forward of a :class:`tita_fast.OAF` ``module``: its generators on ``x, y`` in their own
    layout, then :func:`oaf_mix_published` (the module itself runs channels-last and the selected backend)."""
    logits_x, residual_x, multiplier_x = module.fafb_A(x)
    logits_y, residual_y, multiplier_y = module.fafb_B(y)
    mix_weights = module.weight_gen(torch.cat([x, y], dim=1))
    return oaf_mix_published(
        x, y, logits_x, logits_y, residual_x, residual_y, multiplier_x, multiplier_y,
        module.fafb_A.hamming_highpass, module.fafb_B.hamming_highpass, mix_weights,
    )  # fmt: skip
