"""Triton kernels for IPA (interaction-enhanced pixel attention): fused forward and backward.

Ground truth: :func:`tita_fast.reference.ipa.ipa_reference`. Each program takes a tile of BLOCK_M pixels and keeps
everything for them in registers; the channel axis is padded to BLOCK_C (a power of two) with masks. Every
per-pixel matrix-vector product is a ``tl.dot`` of the (BLOCK_M, BLOCK_C) tile with a (BLOCK_C, BLOCK_C) weight
block, on tensor cores in 3xTF32 for all input dtypes but fp64 (IEEE fp64 there); half inputs are widened to fp32 on
load and rounded only on store. 3xTF32 splits each fp32 operand into two TF32 halves and sums three products, which
keeps fp32-level accuracy (with the dots emulated so under the interpreter, the worst float32 error of the parity
tests' cases went from 1.7e-6 to 2.6e-6, bound 1e-5); plain TF32 would not (unit roundoff 4.9e-4). IEEE fp32 dots
would run on FMA units with whole operand tiles in each thread's registers, and spill far more (docs/gpu.md).

Two-key attention needs no real softmax: with keys k1 = kn + x - x*r, k2 = vn + x + x*r, the softmax over the two
keys depends only on s1 - s2 = <Q_m, D_m> with D = Wk kk, kk = (kn - vn) - 2 x*r (the key bias cancels), so
p1 = sigmoid(<Q_m, D_m>) and p2 = sigmoid(-<Q_m, D_m>) per head m.

The backward kernel recomputes the forward from the inputs, writes grad_a and grad_b, and writes the per-pixel
factors of every weight gradient to a buffer; the wrapper sums them over pixels with matmuls (deterministic, no
atomics), a bounded chunk of pixels per launch.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

# Pixels per program, and a launch option. Compiled offline for sm_90a and sm_80 (benchmarks/triton_compile.py,
# table in docs/gpu.md; not yet run on a GPU): 16 pixels, 8 warps (the most that 255 registers a thread allow) and
# maxnreg=255 spill least; 32 or 64 pixels, or 4 warps, spill more. With 3xTF32 dots, C = 60 spills ~0.2 KB a
# thread (forward) and ~1.5 KB (backward), IEEE fp32 dots 2.6 KB and 12.6 KB. The dot operands take ~2
# (BLOCK_C, BLOCK_C) fp32 tiles of shared memory: 32 KB at BLOCK_C = 64, 128 KB at 128 (H100/A100 only).
BLOCK_M = 16
MAX_REGISTERS = 255
# Per-pixel weight-gradient factors that the backward kernel writes for each direction, planes of a (9, M, C)
# buffer in this order (the relation MLP's DZ2, H, DZ1 are those of r_ab for direction ab, of r_ba for ba).
# Kernels can only read globals that are constexpr.
_ATTN, _DQ, _DKEY, _KK, _DV1, _DV2, _DZ2, _H, _DZ1 = (tl.constexpr(i) for i in range(9))
_NUM_FACTORS = 9
_MAX_CHUNK_ROWS = 65536
_CHUNK_BYTES = 128 * 2**20  # bound on the factor buffer of one backward launch


# ----------------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _load_tile(ptr, rows, cols, M, C: tl.constexpr, DT: tl.constexpr):
    """(BLOCK_M, BLOCK_C) tile of a row-major (M, C) tensor, zero outside, widened to DT."""
    mask = (rows[:, None] < M) & (cols[None, :] < C)
    offsets = rows[:, None].to(tl.int64) * C + cols[None, :]  # int64: M * C may pass 2**31
    return tl.load(ptr + offsets, mask=mask, other=0.0).to(DT)


@triton.jit
def _store_tile(ptr, value, rows, cols, M, C: tl.constexpr):
    mask = (rows[:, None] < M) & (cols[None, :] < C)
    offsets = rows[:, None].to(tl.int64) * C + cols[None, :]
    tl.store(ptr + offsets, value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _load_row(ptr, cols, C: tl.constexpr, DT: tl.constexpr):
    """A length-C vector (bias, noise row) as a (1, BLOCK_C) row, zero in the padding."""
    return tl.load(ptr + cols, mask=cols < C, other=0.0).to(DT)[None, :]


@triton.jit
def _matmul(x, w_ptr, stride_k, stride_n, C: tl.constexpr, BLOCK_C: tl.constexpr):
    """x @ B for the (C, C) block B[k, n] = w_ptr[k * stride_k + n * stride_n], padded with zeros to BLOCK_C."""
    k = tl.arange(0, BLOCK_C)[:, None]
    n = tl.arange(0, BLOCK_C)[None, :]
    w = tl.load(w_ptr + k * stride_k + n * stride_n, mask=(k < C) & (n < C), other=0.0).to(x.dtype)
    return _dot(x, w)


@triton.jit
def _dot(x, w):
    """x @ w on tensor cores in 3xTF32 for fp32 (fp32-level accuracy; see the module docstring), IEEE for fp64."""
    if x.dtype == tl.float64:
        return tl.dot(x, w, input_precision="ieee")
    else:
        return tl.dot(x, w, input_precision="tf32x3")


@triton.jit
def _linear(x, w_ptr, ld, C: tl.constexpr, BLOCK_C: tl.constexpr):
    """x @ W^T for the (C, C) block at w_ptr of a row-major weight with row length ld: a layer's forward."""
    return _matmul(x, w_ptr, 1, ld, C, BLOCK_C)


@triton.jit
def _linear_grad(dy, w_ptr, ld, C: tl.constexpr, BLOCK_C: tl.constexpr):
    """dy @ W for the same block: the gradient of a layer's input."""
    return _matmul(dy, w_ptr, ld, 1, C, BLOCK_C)


@triton.jit
def _head_matrix(C: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_C: tl.constexpr, DT: tl.constexpr):
    """(BLOCK_C, BLOCK_C) 0/1 matrix, 1 where two real channels belong to one head.

    x @ it sums x over each head and broadcasts the sum back to that head's channels, for any head_dim (a reshape
    into heads would need a power-of-two head_dim).
    """
    k = tl.arange(0, BLOCK_C)[:, None]
    n = tl.arange(0, BLOCK_C)[None, :]
    return ((k // HEAD_DIM == n // HEAD_DIM) & (k < C) & (n < C)).to(DT)


@triton.jit
def _head_sum(x, heads):
    return _dot(x, heads)


@triton.jit
def _gelu(z):
    """Exact (erf) GELU, as F.gelu's default."""
    return 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))


@triton.jit
def _gelu_grad(z):
    cdf = 0.5 * (1.0 + tl.math.erf(z * 0.7071067811865476))
    pdf = tl.exp(-0.5 * z * z) * 0.3989422804014327  # 1 / sqrt(2 pi)
    return cdf + z * pdf


# ----------------------------------------------------------------------------------------------------------------
# Forward pieces, shared by both kernels
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _relation_hidden(first, second, w1_ptr, b1_ptr, cols, C: tl.constexpr, BLOCK_C: tl.constexpr):
    """fc1 pre-activation of the relation MLP on [first; second]: W1 split into its two column halves."""
    z1 = _linear(first, w1_ptr, 2 * C, C, BLOCK_C) + _linear(second, w1_ptr + C, 2 * C, C, BLOCK_C)
    return z1 + _load_row(b1_ptr, cols, C, first.dtype)


@triton.jit
def _relation(first, second, w1_ptr, b1_ptr, w2_ptr, b2_ptr, cols, C: tl.constexpr, BLOCK_C: tl.constexpr):
    """r = softmax over channels of fc2(GELU(fc1([first; second])))."""
    h = _gelu(_relation_hidden(first, second, w1_ptr, b1_ptr, cols, C, BLOCK_C))
    z2 = _linear(h, w2_ptr, C, C, BLOCK_C) + _load_row(b2_ptr, cols, C, h.dtype)
    z2 = tl.where(cols[None, :] < C, z2, float("-inf"))  # padding takes no share of the softmax
    e = tl.exp(z2 - tl.max(z2, axis=1)[:, None])
    return e / tl.sum(e, axis=1)[:, None]


@triton.jit
def _attention(
    x, other, r, noise_diff, win_ptr, bin_ptr, heads, cols,
    C: tl.constexpr, SCALE: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """One direction's two-key attention before out_proj; returns it with what its backward needs.

    win_ptr/bin_ptr: the (3C, C) in_proj weight [Wq; Wk; Wv] and its bias; noise_diff = kn - vn as a row.
    Per-head values (p1, p2) come broadcast over their head's channels.
    """
    q = (_linear(x, win_ptr, C, C, BLOCK_C) + _load_row(bin_ptr, cols, C, x.dtype)) * SCALE
    kk = noise_diff - 2.0 * x * r
    key_diff = _linear(kk, win_ptr + C * C, C, C, BLOCK_C)  # K1 - K2
    bv = _load_row(bin_ptr + 2 * C, cols, C, x.dtype)
    v1 = _linear(x, win_ptr + 2 * C * C, C, C, BLOCK_C) + bv
    v2 = _linear(other, win_ptr + 2 * C * C, C, C, BLOCK_C) + bv
    score = _head_sum(q * key_diff, heads)  # s1 - s2
    p1 = tl.sigmoid(score)
    p2 = tl.sigmoid(-score)
    attn = p1 * v1 + p2 * v2
    return attn, q, kk, key_diff, v1, v2, p1, p2


# ----------------------------------------------------------------------------------------------------------------
# Forward kernel
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _ipa_forward_kernel(
    a_ptr, b_ptr, out_a_ptr, out_b_ptr,
    w1_ptr, b1_ptr, w2_ptr, b2_ptr,
    win_ab_ptr, bin_ab_ptr, wo_ab_ptr, bo_ab_ptr,
    win_ba_ptr, bin_ba_ptr, wo_ba_ptr, bo_ba_ptr,
    kn_ptr, vn_ptr, M,
    C: tl.constexpr, HEAD_DIM: tl.constexpr, SCALE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, DT: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_C)
    a = _load_tile(a_ptr, rows, cols, M, C, DT)
    b = _load_tile(b_ptr, rows, cols, M, C, DT)
    heads = _head_matrix(C, HEAD_DIM, BLOCK_C, DT)

    r_ab = _relation(a, b, w1_ptr, b1_ptr, w2_ptr, b2_ptr, cols, C, BLOCK_C)
    r_ba = _relation(b, a, w1_ptr, b1_ptr, w2_ptr, b2_ptr, cols, C, BLOCK_C)

    noise_diff = _load_row(kn_ptr, cols, C, DT) - _load_row(vn_ptr, cols, C, DT)
    attn = _attention(a, b, r_ab, noise_diff, win_ab_ptr, bin_ab_ptr, heads, cols, C, SCALE, BLOCK_C)[0]
    a_new = a + _linear(attn, wo_ab_ptr, C, C, BLOCK_C) + _load_row(bo_ab_ptr, cols, C, DT)
    _store_tile(out_a_ptr, a_new, rows, cols, M, C)

    noise_diff = _load_row(kn_ptr + C, cols, C, DT) - _load_row(vn_ptr + C, cols, C, DT)
    attn = _attention(b, a, r_ba, noise_diff, win_ba_ptr, bin_ba_ptr, heads, cols, C, SCALE, BLOCK_C)[0]
    b_new = b + _linear(attn, wo_ba_ptr, C, C, BLOCK_C) + _load_row(bo_ba_ptr, cols, C, DT)
    _store_tile(out_b_ptr, b_new, rows, cols, M, C)


# ----------------------------------------------------------------------------------------------------------------
# Backward kernel
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _attention_backward(
    g, x, other, r, noise_diff, win_ptr, bin_ptr, wo_ptr, heads, factor_ptr, rows, cols, M,
    C: tl.constexpr, SCALE: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Backward of x_new = x + out_proj(attention) given g = dL/dx_new.

    Returns (dL/dx, dL/dother, dL/dr) and stores this direction's weight-gradient factors at factor_ptr
    (the (9, M, C) planes _ATTN ... _DV2).
    """
    attn, q, kk, key_diff, v1, v2, p1, p2 = _attention(
        x, other, r, noise_diff, win_ptr, bin_ptr, heads, cols, C, SCALE, BLOCK_C
    )
    d_attn = _linear_grad(g, wo_ptr, C, C, BLOCK_C)
    # attn = v2 + p1 (v1 - v2) per head, and dp1/dscore = p1 p2
    d_score = p1 * p2 * _head_sum(d_attn * (v1 - v2), heads)
    dq = SCALE * d_score * key_diff  # gradient of the unscaled Wq x + bq
    d_key_diff = d_score * q
    e = _linear_grad(d_key_diff, win_ptr + C * C, C, C, BLOCK_C)  # gradient of kk
    dv1 = p1 * d_attn
    dv2 = p2 * d_attn
    dx = g + _linear_grad(dq, win_ptr, C, C, BLOCK_C) + _linear_grad(dv1, win_ptr + 2 * C * C, C, C, BLOCK_C)
    dx -= 2.0 * e * r
    d_other = _linear_grad(dv2, win_ptr + 2 * C * C, C, C, BLOCK_C)
    dr = -2.0 * x * e

    plane = M * C
    _store_tile(factor_ptr + _ATTN * plane, attn, rows, cols, M, C)
    _store_tile(factor_ptr + _DQ * plane, dq, rows, cols, M, C)
    _store_tile(factor_ptr + _DKEY * plane, d_key_diff, rows, cols, M, C)
    _store_tile(factor_ptr + _KK * plane, kk, rows, cols, M, C)
    _store_tile(factor_ptr + _DV1 * plane, dv1, rows, cols, M, C)
    _store_tile(factor_ptr + _DV2 * plane, dv2, rows, cols, M, C)
    return dx, d_other, dr


@triton.jit
def _relation_backward(
    first, second, r, dr, w1_ptr, b1_ptr, w2_ptr, factor_ptr, rows, cols, M,
    C: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Backward of r = relation(first, second) given dr; returns (dL/dfirst, dL/dsecond), stores DZ2, H, DZ1.

    fc1's pre-activation is recomputed here rather than kept alive from the forward, to spare registers.
    """
    z1 = _relation_hidden(first, second, w1_ptr, b1_ptr, cols, C, BLOCK_C)
    dz2 = r * (dr - tl.sum(dr * r, axis=1)[:, None])  # softmax backward
    dz1 = _linear_grad(dz2, w2_ptr, C, C, BLOCK_C) * _gelu_grad(z1)
    d_first = _linear_grad(dz1, w1_ptr, 2 * C, C, BLOCK_C)
    d_second = _linear_grad(dz1, w1_ptr + C, 2 * C, C, BLOCK_C)

    plane = M * C
    _store_tile(factor_ptr + _DZ2 * plane, dz2, rows, cols, M, C)
    _store_tile(factor_ptr + _H * plane, _gelu(z1), rows, cols, M, C)
    _store_tile(factor_ptr + _DZ1 * plane, dz1, rows, cols, M, C)
    return d_first, d_second


@triton.jit
def _ipa_backward_kernel(
    grad_a_new_ptr, grad_b_new_ptr, a_ptr, b_ptr, grad_a_ptr, grad_b_ptr, factor_ab_ptr, factor_ba_ptr,
    w1_ptr, b1_ptr, w2_ptr, b2_ptr,
    win_ab_ptr, bin_ab_ptr, wo_ab_ptr,
    win_ba_ptr, bin_ba_ptr, wo_ba_ptr,
    kn_ptr, vn_ptr, M,
    C: tl.constexpr, HEAD_DIM: tl.constexpr, SCALE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, DT: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_C)
    a = _load_tile(a_ptr, rows, cols, M, C, DT)
    b = _load_tile(b_ptr, rows, cols, M, C, DT)
    heads = _head_matrix(C, HEAD_DIM, BLOCK_C, DT)

    r_ab = _relation(a, b, w1_ptr, b1_ptr, w2_ptr, b2_ptr, cols, C, BLOCK_C)
    r_ba = _relation(b, a, w1_ptr, b1_ptr, w2_ptr, b2_ptr, cols, C, BLOCK_C)

    g = _load_tile(grad_a_new_ptr, rows, cols, M, C, DT)
    noise_diff = _load_row(kn_ptr, cols, C, DT) - _load_row(vn_ptr, cols, C, DT)
    da, db, dr_ab = _attention_backward(
        g, a, b, r_ab, noise_diff, win_ab_ptr, bin_ab_ptr, wo_ab_ptr, heads, factor_ab_ptr, rows, cols, M,
        C, SCALE, BLOCK_C,
    )  # fmt: skip
    g = _load_tile(grad_b_new_ptr, rows, cols, M, C, DT)
    noise_diff = _load_row(kn_ptr + C, cols, C, DT) - _load_row(vn_ptr + C, cols, C, DT)
    db_own, da_other, dr_ba = _attention_backward(
        g, b, a, r_ba, noise_diff, win_ba_ptr, bin_ba_ptr, wo_ba_ptr, heads, factor_ba_ptr, rows, cols, M,
        C, SCALE, BLOCK_C,
    )  # fmt: skip
    da += da_other
    db += db_own

    d_first, d_second = _relation_backward(
        a, b, r_ab, dr_ab, w1_ptr, b1_ptr, w2_ptr, factor_ab_ptr, rows, cols, M, C, BLOCK_C
    )
    da += d_first
    db += d_second
    d_first, d_second = _relation_backward(
        b, a, r_ba, dr_ba, w1_ptr, b1_ptr, w2_ptr, factor_ba_ptr, rows, cols, M, C, BLOCK_C
    )
    db += d_first
    da += d_second
    _store_tile(grad_a_ptr, da, rows, cols, M, C)
    _store_tile(grad_b_ptr, db, rows, cols, M, C)


# ----------------------------------------------------------------------------------------------------------------
# Python entry points
# ----------------------------------------------------------------------------------------------------------------

_PARAMETER_NAMES = (
    "relation_fc1_weight", "relation_fc1_bias", "relation_fc2_weight", "relation_fc2_bias",
    "in_proj_weight_ab", "in_proj_bias_ab", "out_proj_weight_ab", "out_proj_bias_ab",
    "in_proj_weight_ba", "in_proj_bias_ba", "out_proj_weight_ba", "out_proj_bias_ba",
    "k_noise", "v_noise",
)  # fmt: skip


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _meta(a: torch.Tensor, b: torch.Tensor, params: tuple[torch.Tensor, ...], num_heads: int) -> dict:
    """Check the inputs; return the kernels' compile-time arguments and launch options."""
    if a.dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        raise TypeError(f"IPA Triton kernels take float32, bfloat16, float16 or float64, not {a.dtype}")
    if a.dim() != 2 or not a.is_contiguous():
        raise ValueError(f"IPA Triton kernels take contiguous (M, C) tensors, got shape {tuple(a.shape)}")
    if b.shape != a.shape or b.dtype != a.dtype or not b.is_contiguous():
        raise ValueError(f"b must be a contiguous {a.dtype} tensor of a's shape {tuple(a.shape)}")
    channels = a.shape[1]
    if channels % num_heads:
        raise ValueError(f"IPA dim {channels} is not divisible by num_heads {num_heads}")
    shapes = [(channels, 2 * channels), (channels,), (channels, channels), (channels,)]
    shapes += [(3 * channels, channels), (3 * channels,), (channels, channels), (channels,)] * 2
    shapes += [(2, channels)] * 2
    for name, param, shape in zip(_PARAMETER_NAMES, params, shapes, strict=True):
        if tuple(param.shape) != shape or param.dtype != a.dtype or not param.is_contiguous():
            raise ValueError(
                f"{name}: expected a contiguous {a.dtype} tensor of shape {shape}, "
                f"got {param.dtype} {tuple(param.shape)} (contiguous: {param.is_contiguous()})"
            )
    head_dim = channels // num_heads
    block_c = max(16, triton.next_power_of_2(channels))
    return {
        "C": channels,
        "HEAD_DIM": head_dim,
        "SCALE": math.sqrt(1.0 / head_dim),  # as the reference (and nn.MultiheadAttention) computes it
        "BLOCK_C": block_c,
        "DT": tl.float64 if a.dtype == torch.float64 else tl.float32,
        "num_warps": 4 if block_c <= 32 else 8,
        "maxnreg": MAX_REGISTERS,
    }


def ipa_forward(
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
    """IPA of token tensors a, b (M, C), contiguous, parameters in a's dtype; returns (a_new, b_new)."""
    params = (
        relation_fc1_weight, relation_fc1_bias, relation_fc2_weight, relation_fc2_bias,
        in_proj_weight_ab, in_proj_bias_ab, out_proj_weight_ab, out_proj_bias_ab,
        in_proj_weight_ba, in_proj_bias_ba, out_proj_weight_ba, out_proj_bias_ba,
        k_noise, v_noise,
    )  # fmt: skip
    meta = _meta(a, b, params, num_heads)
    a_new, b_new = torch.empty_like(a), torch.empty_like(b)
    M = a.shape[0]
    if M:
        grid = (triton.cdiv(M, BLOCK_M),)
        _ipa_forward_kernel[grid](a, b, a_new, b_new, *params, M, BLOCK_M=BLOCK_M, **meta)
    return a_new, b_new


def _chunk_rows(M: int, channels: int, itemsize: int) -> int:
    """Pixels per backward launch: the factor buffer (2 * _NUM_FACTORS planes) stays within _CHUNK_BYTES."""
    rows = _CHUNK_BYTES // (2 * _NUM_FACTORS * channels * itemsize)
    rows = max(BLOCK_M, min(_MAX_CHUNK_ROWS, rows) // BLOCK_M * BLOCK_M)
    return min(rows, max(M, 1))


def ipa_backward(
    grad_a_new: torch.Tensor,
    grad_b_new: torch.Tensor,
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
) -> tuple[torch.Tensor, ...]:
    """Gradients of IPA from those of (a_new, b_new), recomputing the forward from a, b.

    Returns (grad_a, grad_b, then one gradient per parameter in argument order), each in its input's dtype.
    """
    params = (
        relation_fc1_weight, relation_fc1_bias, relation_fc2_weight, relation_fc2_bias,
        in_proj_weight_ab, in_proj_bias_ab, out_proj_weight_ab, out_proj_bias_ab,
        in_proj_weight_ba, in_proj_bias_ba, out_proj_weight_ba, out_proj_bias_ba,
        k_noise, v_noise,
    )  # fmt: skip
    meta = _meta(a, b, params, num_heads)
    grad_a_new = grad_a_new.to(a.dtype).contiguous()
    grad_b_new = grad_b_new.to(a.dtype).contiguous()
    if grad_a_new.shape != a.shape or grad_b_new.shape != a.shape:
        raise ValueError(f"gradients must have the shape {tuple(a.shape)} of the outputs")
    M, C = a.shape
    acc = _compute_dtype(a.dtype)

    grad_a, grad_b = torch.empty_like(a), torch.empty_like(b)
    # Weight-gradient sums in the compute dtype; lists are indexed by direction (0: ab, 1: ba). Each its own
    # tensor: the results must not share storage (torch.library ops refuse outputs that alias each other).
    grad_w1 = a.new_zeros((C, 2 * C), dtype=acc)
    grad_b1 = a.new_zeros(C, dtype=acc)
    grad_w2 = a.new_zeros((C, C), dtype=acc)
    grad_b2 = a.new_zeros(C, dtype=acc)
    grad_in_w = [a.new_zeros((3 * C, C), dtype=acc) for _ in range(2)]
    grad_in_b = [a.new_zeros(3 * C, dtype=acc) for _ in range(2)]
    grad_out_w = [a.new_zeros((C, C), dtype=acc) for _ in range(2)]
    grad_out_b = [a.new_zeros(C, dtype=acc) for _ in range(2)]
    d_key_diff_sum = a.new_zeros((2, C), dtype=acc)

    chunk = _chunk_rows(M, C, torch.finfo(acc).bits // 8)
    buffer = a.new_empty(2 * _NUM_FACTORS * chunk * C, dtype=acc)
    for start in range(0, M, chunk):
        stop = min(M, start + chunk)
        n = stop - start
        factors = buffer[: 2 * _NUM_FACTORS * n * C].view(2, _NUM_FACTORS, n, C)
        grid = (triton.cdiv(n, BLOCK_M),)
        _ipa_backward_kernel[grid](
            grad_a_new[start:stop], grad_b_new[start:stop], a[start:stop], b[start:stop],
            grad_a[start:stop], grad_b[start:stop], factors[0], factors[1],
            relation_fc1_weight, relation_fc1_bias, relation_fc2_weight, relation_fc2_bias,
            in_proj_weight_ab, in_proj_bias_ab, out_proj_weight_ab,
            in_proj_weight_ba, in_proj_bias_ba, out_proj_weight_ba,
            k_noise, v_noise, n,
            BLOCK_M=BLOCK_M, **meta,
        )  # fmt: skip

        a_c, b_c = a[start:stop].to(acc), b[start:stop].to(acc)
        grads_new = (grad_a_new[start:stop].to(acc), grad_b_new[start:stop].to(acc))
        for d, (x, other) in enumerate(((a_c, b_c), (b_c, a_c))):
            attn, dq, d_key_diff, kk, dv1, dv2, dz2, h, dz1 = factors[d]  # the planes _ATTN ... _DZ1
            grad_out_w[d].addmm_(grads_new[d].T, attn)
            grad_out_b[d] += grads_new[d].sum(0)
            grad_in_w[d][:C].addmm_(dq.T, x)
            grad_in_w[d][C : 2 * C].addmm_(d_key_diff.T, kk)  # the key bias gets no gradient: it cancels
            grad_in_w[d][2 * C :].addmm_(dv1.T, x).addmm_(dv2.T, other)
            grad_in_b[d][:C] += dq.sum(0)
            grad_in_b[d][2 * C :] += dv1.sum(0) + dv2.sum(0)
            d_key_diff_sum[d] += d_key_diff.sum(0)
            grad_w2.addmm_(dz2.T, h)
            grad_b2 += dz2.sum(0)
            grad_w1[:, :C].addmm_(dz1.T, x)
            grad_w1[:, C:].addmm_(dz1.T, other)
            grad_b1 += dz1.sum(0)

    # kk = (kn - vn) - 2 x*r: the noise rows get +/- the pixel sum of Wk^T dD, which is Wk^T (sum of dD).
    w_key = torch.stack([in_proj_weight_ab[C : 2 * C], in_proj_weight_ba[C : 2 * C]]).to(acc)
    grad_k_noise = torch.bmm(d_key_diff_sum.unsqueeze(1), w_key).squeeze(1)
    dtype = a.dtype
    return (
        grad_a, grad_b,
        grad_w1.to(dtype), grad_b1.to(dtype), grad_w2.to(dtype), grad_b2.to(dtype),
        grad_in_w[0].to(dtype), grad_in_b[0].to(dtype), grad_out_w[0].to(dtype), grad_out_b[0].to(dtype),
        grad_in_w[1].to(dtype), grad_in_b[1].to(dtype), grad_out_w[1].to(dtype), grad_out_b[1].to(dtype),
        grad_k_noise.to(dtype), -grad_k_noise.to(dtype),
    )  # fmt: skip
