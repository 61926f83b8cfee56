"""Triton kernels for OAF mixing: fused forward and backward.

Ground truth: :func:`tita_fast.reference.oaf.oaf_mix_reference`; the math is stated in ``csrc/oaf/oaf_common.h``.
Per image n and pixel p, for each source s in {x, y} with weights (hp, add, mul):
``out += w_hp (s - sum_k m_k(p) s(R(p + o_k))) + w_add (s + residual) + w_mul s multiplier``, m being the per-pixel
3x3 filter softmax(logits) * hamming, renormalised, and R reflect padding.

Design: one program per (image, tile of BLOCK_H x BLOCK_W pixels), flattened with W fastest so that loads coalesce
along rows; the program loops over the channels. Everything per pixel is elementwise on (BLOCK_P,) vectors, a few
pixels per thread, with the 9 taps unrolled into separate variables: a tap axis in a tensor makes Triton spread
the taps over warps, and the per-channel tap sums then go through shared memory. The filter m of each pixel and
the reflected row/column offsets are computed once per program and kept in registers across the channel loop, so a
channel costs one gather of the 3x3 neighbourhood (mostly cache hits). Arithmetic is fp32; results are rounded to
the input dtype on store.

The backward kernel runs once per source (x, then y), which halves the values it keeps live across its channel
loop (m, A and the dm sums of one source) at the cost of reading g twice. It recomputes m rather than reading stored
intermediates. The gradient of a source is a gather, not a scatter: pixel p collects g(q) A(q -> p) from its 3x3
neighbours q = p + (a, b), where A(q -> p) sums m_k(q) over the taps k of q that land on p after reflection
(oaf_common.h's tap_coefficient); the 9 coefficients are computed once per program from the neighbours' logits.
The mix-weight gradients are per-program fp32 partial sums in a (programs, 3) buffer per source that the wrapper
sums with torch: deterministic, no atomics.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Pixels per program and warps, per kernel: 2 pixels per thread. Measured on an H100 (triton 3.6, fp32 and bf16,
# (8, 64, 256, 256) and (16, 64, 64, 64)): 256 pixels on 4 warps matched or beat 64/2, 128/4, 256/8 and 512/4-8
# for both kernels. The backward kernel (one source) keeps ~30 fp32 values a pixel live across its channel loop.
FORWARD_BLOCK_P = 256
FORWARD_WARPS = 4
BACKWARD_BLOCK_P = 256
BACKWARD_WARPS = 4
MAX_BLOCK_W = 32  # a warp reads 32 consecutive pixels of a row


# ----------------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _reflect(v, n):
    """Reflect padding by one: -1 -> 1, n -> n - 2 (needs n >= 2)."""
    return tl.where(v < 0, -v, tl.where(v >= n, 2 * n - 2 - v, v))


@triton.jit
def _tile(pid, H, W, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """Image index n and the (BLOCK_P,) row and column indices of program pid's pixel tile."""
    tiles_w = tl.cdiv(W, BLOCK_W)
    tiles = tl.cdiv(H, BLOCK_H) * tiles_w
    n = pid // tiles
    t = pid % tiles
    p = tl.arange(0, BLOCK_H * BLOCK_W)
    i = (t // tiles_w) * BLOCK_H + p // BLOCK_W
    j = (t % tiles_w) * BLOCK_W + p % BLOCK_W
    return n, i, j


@triton.jit
def _load(ptr, offsets, mask):
    return tl.load(ptr + offsets, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _filter(logits_ptr, hamming_ptr, pix, mask, HW):
    """The normalised filter m_0..m_8 at pixels pix of one image's (9, H, W) logits (finite where masked)."""
    l0 = _load(logits_ptr, pix, mask)
    l1 = _load(logits_ptr + HW, pix, mask)
    l2 = _load(logits_ptr + 2 * HW, pix, mask)
    l3 = _load(logits_ptr + 3 * HW, pix, mask)
    l4 = _load(logits_ptr + 4 * HW, pix, mask)
    l5 = _load(logits_ptr + 5 * HW, pix, mask)
    l6 = _load(logits_ptr + 6 * HW, pix, mask)
    l7 = _load(logits_ptr + 7 * HW, pix, mask)
    l8 = _load(logits_ptr + 8 * HW, pix, mask)
    top = tl.maximum(tl.maximum(tl.maximum(l0, l1), tl.maximum(l2, l3)), tl.maximum(tl.maximum(l4, l5), l6))
    top = tl.maximum(top, tl.maximum(l7, l8))
    e0 = tl.exp(l0 - top) * tl.load(hamming_ptr).to(tl.float32)
    e1 = tl.exp(l1 - top) * tl.load(hamming_ptr + 1).to(tl.float32)
    e2 = tl.exp(l2 - top) * tl.load(hamming_ptr + 2).to(tl.float32)
    e3 = tl.exp(l3 - top) * tl.load(hamming_ptr + 3).to(tl.float32)
    e4 = tl.exp(l4 - top) * tl.load(hamming_ptr + 4).to(tl.float32)
    e5 = tl.exp(l5 - top) * tl.load(hamming_ptr + 5).to(tl.float32)
    e6 = tl.exp(l6 - top) * tl.load(hamming_ptr + 6).to(tl.float32)
    e7 = tl.exp(l7 - top) * tl.load(hamming_ptr + 7).to(tl.float32)
    e8 = tl.exp(l8 - top) * tl.load(hamming_ptr + 8).to(tl.float32)
    inv = 1.0 / (e0 + e1 + e2 + e3 + e4 + e5 + e6 + e7 + e8)
    return e0 * inv, e1 * inv, e2 * inv, e3 * inv, e4 * inv, e5 * inv, e6 * inv, e7 * inv, e8 * inv


@triton.jit
def _neighbourhood(ptr, up, mid, down, left, centre, right, mask):
    """s(R(p + o_k)) for the 9 taps k, from reflected row offsets (up, mid, down) and columns (left, centre, right)."""
    return (
        _load(ptr, up + left, mask), _load(ptr, up + centre, mask), _load(ptr, up + right, mask),
        _load(ptr, mid + left, mask), _load(ptr, mid + centre, mask), _load(ptr, mid + right, mask),
        _load(ptr, down + left, mask), _load(ptr, down + centre, mask), _load(ptr, down + right, mask),
    )  # fmt: skip


@triton.jit
def _dot9(a0, a1, a2, a3, a4, a5, a6, a7, a8, b0, b1, b2, b3, b4, b5, b6, b7, b8):
    return a0 * b0 + a1 * b1 + a2 * b2 + a3 * b3 + a4 * b4 + a5 * b5 + a6 * b6 + a7 * b7 + a8 * b8


# ----------------------------------------------------------------------------------------------------------------
# Forward kernel
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _oaf_forward_kernel(
    x_ptr, y_ptr, lx_ptr, ly_ptr, rx_ptr, ry_ptr, mx_ptr, my_ptr, hx_ptr, hy_ptr, w_ptr, out_ptr,
    C, H, W,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):  # fmt: skip
    n, i, j = _tile(tl.program_id(0), H, W, BLOCK_H, BLOCK_W)
    HW = H * W
    valid = (i < H) & (j < W)
    pix = i * W + j
    # Reflected neighbourhood, shared by every channel and both sources.
    up = _reflect(i - 1, H) * W
    mid = i * W
    down = _reflect(i + 1, H) * W
    left = _reflect(j - 1, W)
    right = _reflect(j + 1, W)

    n64 = n.to(tl.int64)  # n * C * H * W may pass 2**31
    lx_ptr += n64 * 9 * HW
    ly_ptr += n64 * 9 * HW
    mx0, mx1, mx2, mx3, mx4, mx5, mx6, mx7, mx8 = _filter(lx_ptr, hx_ptr, pix, valid, HW)
    my0, my1, my2, my3, my4, my5, my6, my7, my8 = _filter(ly_ptr, hy_ptr, pix, valid, HW)

    w0 = tl.load(w_ptr + n64 * 6 + 0).to(tl.float32)
    w1 = tl.load(w_ptr + n64 * 6 + 1).to(tl.float32)
    w2 = tl.load(w_ptr + n64 * 6 + 2).to(tl.float32)
    w3 = tl.load(w_ptr + n64 * 6 + 3).to(tl.float32)
    w4 = tl.load(w_ptr + n64 * 6 + 4).to(tl.float32)
    w5 = tl.load(w_ptr + n64 * 6 + 5).to(tl.float32)

    base = n64 * C * HW
    for _c in range(C):
        v0, v1, v2, v3, x, v5, v6, v7, v8 = _neighbourhood(x_ptr + base, up, mid, down, left, j, right, valid)
        smooth_x = _dot9(mx0, mx1, mx2, mx3, mx4, mx5, mx6, mx7, mx8, v0, v1, v2, v3, x, v5, v6, v7, v8)
        v0, v1, v2, v3, y, v5, v6, v7, v8 = _neighbourhood(y_ptr + base, up, mid, down, left, j, right, valid)
        smooth_y = _dot9(my0, my1, my2, my3, my4, my5, my6, my7, my8, v0, v1, v2, v3, y, v5, v6, v7, v8)
        rx = _load(rx_ptr + base, pix, valid)
        ry = _load(ry_ptr + base, pix, valid)
        mx = _load(mx_ptr + base, pix, valid)
        my = _load(my_ptr + base, pix, valid)
        # The reference's order of summation.
        out = w0 * (x - smooth_x)
        out += w3 * (y - smooth_y)
        out += w1 * (x + rx)
        out += w4 * (y + ry)
        out += w2 * (x * mx)
        out += w5 * (y * my)
        tl.store(out_ptr + base + pix, out.to(out_ptr.dtype.element_ty), mask=valid)
        base += HW


# ----------------------------------------------------------------------------------------------------------------
# Backward kernel
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _tap(m0, m1, m2, m3, m4, m5, m6, m7, m8, dy: tl.constexpr, dx: tl.constexpr):
    """m of the tap at offset (dy, dx), chosen at compile time."""
    k = 3 * (dy + 1) + (dx + 1)
    value = m0
    if k == 1:
        value = m1
    if k == 2:
        value = m2
    if k == 3:
        value = m3
    if k == 4:
        value = m4
    if k == 5:
        value = m5
    if k == 6:
        value = m6
    if k == 7:
        value = m7
    if k == 8:
        value = m8
    return value


@triton.jit
def _gather_coefficient(logits_ptr, hamming_ptr, i, j, valid, H, W, a: tl.constexpr, b: tl.constexpr):
    """A(q -> p) for the neighbour q = p + (a, b): sum of m_k(q) over the taps of q that reflect onto p.

    The direct tap (-a, -b) always lands on p; tap (a, .) lands there too when the row reflection folds back
    (a = -1 at row 1, a = +1 at row H - 2), likewise (., b) for columns. 0 where q is outside the image.
    """
    qi = i + a
    qj = j + b
    q_valid = valid & (qi >= 0) & (qi < H) & (qj >= 0) & (qj < W)
    m0, m1, m2, m3, m4, m5, m6, m7, m8 = _filter(logits_ptr, hamming_ptr, qi * W + qj, q_valid, H * W)
    total = _tap(m0, m1, m2, m3, m4, m5, m6, m7, m8, -a, -b)
    row_fold = i < 0  # all false; replaced below where the row can fold back
    col_fold = j < 0
    if a == -1:
        row_fold = i == 1
    if a == 1:
        row_fold = i == H - 2
    if b == -1:
        col_fold = j == 1
    if b == 1:
        col_fold = j == W - 2
    if a != 0:
        total += tl.where(row_fold, _tap(m0, m1, m2, m3, m4, m5, m6, m7, m8, a, -b), 0.0)
        if b != 0:
            total += tl.where(row_fold & col_fold, _tap(m0, m1, m2, m3, m4, m5, m6, m7, m8, a, b), 0.0)
    if b != 0:
        total += tl.where(col_fold, _tap(m0, m1, m2, m3, m4, m5, m6, m7, m8, -a, b), 0.0)
    return tl.where(q_valid, total, 0.0)


@triton.jit
def _gather_coefficients(logits_ptr, hamming_ptr, i, j, valid, H, W):
    """A(q -> p) for the 9 neighbours q = p + (a, b), in the order 3 (a + 1) + (b + 1)."""
    return (
        _gather_coefficient(logits_ptr, hamming_ptr, i, j, valid, H, W, -1, -1),
        _gather_coefficient(logits_ptr, hamming_ptr, i, j, valid, H, W, -1, 0),
        _gather_coefficient(logits_ptr, hamming_ptr, i, j, valid, H, W, -1, 1),
        _gather_coefficient(logits_ptr, hamming_ptr, i, j, valid, H, W, 0, -1),
        _gather_coefficient(logits_ptr, hamming_ptr, i, j, valid, H, W, 0, 0),
        _gather_coefficient(logits_ptr, hamming_ptr, i, j, valid, H, W, 0, 1),
        _gather_coefficient(logits_ptr, hamming_ptr, i, j, valid, H, W, 1, -1),
        _gather_coefficient(logits_ptr, hamming_ptr, i, j, valid, H, W, 1, 0),
        _gather_coefficient(logits_ptr, hamming_ptr, i, j, valid, H, W, 1, 1),
    )


@triton.jit
def _store_logit_grads(ptr, pix, mask, HW, w_hp, m0, m1, m2, m3, m4, m5, m6, m7, m8,
                       s0, s1, s2, s3, s4, s5, s6, s7, s8):  # fmt: skip
    """d logits = m (dm - <m, dm>) with dm_k = -w_hp s_k, s_k = sum_c g s(R(p + o_k))."""
    dot = -w_hp * _dot9(m0, m1, m2, m3, m4, m5, m6, m7, m8, s0, s1, s2, s3, s4, s5, s6, s7, s8)
    dt = ptr.dtype.element_ty
    tl.store(ptr + pix, (m0 * (-w_hp * s0 - dot)).to(dt), mask=mask)
    tl.store(ptr + HW + pix, (m1 * (-w_hp * s1 - dot)).to(dt), mask=mask)
    tl.store(ptr + 2 * HW + pix, (m2 * (-w_hp * s2 - dot)).to(dt), mask=mask)
    tl.store(ptr + 3 * HW + pix, (m3 * (-w_hp * s3 - dot)).to(dt), mask=mask)
    tl.store(ptr + 4 * HW + pix, (m4 * (-w_hp * s4 - dot)).to(dt), mask=mask)
    tl.store(ptr + 5 * HW + pix, (m5 * (-w_hp * s5 - dot)).to(dt), mask=mask)
    tl.store(ptr + 6 * HW + pix, (m6 * (-w_hp * s6 - dot)).to(dt), mask=mask)
    tl.store(ptr + 7 * HW + pix, (m7 * (-w_hp * s7 - dot)).to(dt), mask=mask)
    tl.store(ptr + 8 * HW + pix, (m8 * (-w_hp * s8 - dot)).to(dt), mask=mask)


# W_OFFSET is 0 for x and 3 for y: unspecialised, so both sources share one compiled kernel.
@triton.jit(do_not_specialize=["W_OFFSET"])
def _oaf_backward_kernel(
    g_ptr, s_ptr, logits_ptr, residual_ptr, multiplier_ptr, hamming_ptr, w_ptr,
    ds_ptr, dlogits_ptr, dresidual_ptr, dmultiplier_ptr, partial_ptr,
    C, H, W, W_OFFSET,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):  # fmt: skip
    """The gradients through one source s (x or y), whose weights are mix_weights[n, W_OFFSET:W_OFFSET + 3]."""
    pid = tl.program_id(0)
    n, i, j = _tile(pid, H, W, BLOCK_H, BLOCK_W)
    HW = H * W
    valid = (i < H) & (j < W)
    pix = i * W + j
    up = _reflect(i - 1, H) * W
    mid = i * W
    down = _reflect(i + 1, H) * W
    left = _reflect(j - 1, W)
    right = _reflect(j + 1, W)
    # Which unreflected neighbours q = p + (a, b) exist, for the gather of g.
    has_up = valid & (i >= 1)
    has_down = valid & (i < H - 1)
    has_left = j >= 1
    has_right = j < W - 1

    n64 = n.to(tl.int64)
    logits_ptr += n64 * 9 * HW
    m0, m1, m2, m3, m4, m5, m6, m7, m8 = _filter(logits_ptr, hamming_ptr, pix, valid, HW)
    a0, a1, a2, a3, a4, a5, a6, a7, a8 = _gather_coefficients(logits_ptr, hamming_ptr, i, j, valid, H, W)

    w_hp = tl.load(w_ptr + n64 * 6 + W_OFFSET).to(tl.float32)
    w_add = tl.load(w_ptr + n64 * 6 + W_OFFSET + 1).to(tl.float32)
    w_mul = tl.load(w_ptr + n64 * 6 + W_OFFSET + 2).to(tl.float32)

    # Sums over channels, per pixel: t_k = sum_c g s(R(p + o_k)) (for d logits), acc_* = g * feature (for d w).
    zero = tl.zeros((BLOCK_H * BLOCK_W,), dtype=tl.float32)
    t0, t1, t2, t3, t4, t5, t6, t7, t8 = zero, zero, zero, zero, zero, zero, zero, zero, zero
    acc_hp, acc_add, acc_mul = zero, zero, zero

    base = n64 * C * HW
    for _c in range(C):
        gp = g_ptr + base
        g = _load(gp, pix, valid)
        # g at the 9 neighbours q = p + (a, b); 0 outside the image, where A is 0 as well.
        g0 = _load(gp, pix - W - 1, has_up & has_left)
        g1 = _load(gp, pix - W, has_up)
        g2 = _load(gp, pix - W + 1, has_up & has_right)
        g3 = _load(gp, pix - 1, valid & has_left)
        g5 = _load(gp, pix + 1, valid & has_right)
        g6 = _load(gp, pix + W - 1, has_down & has_left)
        g7 = _load(gp, pix + W, has_down)
        g8 = _load(gp, pix + W + 1, has_down & has_right)
        gathered = _dot9(a0, a1, a2, a3, a4, a5, a6, a7, a8, g0, g1, g2, g3, g, g5, g6, g7, g8)

        v0, v1, v2, v3, s, v5, v6, v7, v8 = _neighbourhood(s_ptr + base, up, mid, down, left, j, right, valid)
        residual = _load(residual_ptr + base, pix, valid)
        multiplier = _load(multiplier_ptr + base, pix, valid)
        smooth = _dot9(m0, m1, m2, m3, m4, m5, m6, m7, m8, v0, v1, v2, v3, s, v5, v6, v7, v8)
        t0 += g * v0
        t1 += g * v1
        t2 += g * v2
        t3 += g * v3
        t4 += g * s
        t5 += g * v5
        t6 += g * v6
        t7 += g * v7
        t8 += g * v8

        ds = (w_hp + w_add + w_mul * multiplier) * g - w_hp * gathered
        tl.store(ds_ptr + base + pix, ds.to(ds_ptr.dtype.element_ty), mask=valid)
        tl.store(dresidual_ptr + base + pix, (w_add * g).to(dresidual_ptr.dtype.element_ty), mask=valid)
        tl.store(dmultiplier_ptr + base + pix, (w_mul * g * s).to(dmultiplier_ptr.dtype.element_ty), mask=valid)
        acc_hp += g * (s - smooth)
        acc_add += g * (s + residual)
        acc_mul += g * (s * multiplier)
        base += HW

    dlogits_ptr += n64 * 9 * HW
    _store_logit_grads(dlogits_ptr, pix, valid, HW, w_hp, m0, m1, m2, m3, m4, m5, m6, m7, m8,
                       t0, t1, t2, t3, t4, t5, t6, t7, t8)  # fmt: skip

    # This program's share of d mix_weights[n, W_OFFSET:W_OFFSET + 3]; masked pixels contribute 0 (g = 0 there).
    partial_ptr += pid.to(tl.int64) * 3
    tl.store(partial_ptr + 0, tl.sum(acc_hp, axis=0))
    tl.store(partial_ptr + 1, tl.sum(acc_add, axis=0))
    tl.store(partial_ptr + 2, tl.sum(acc_mul, axis=0))


# ----------------------------------------------------------------------------------------------------------------
# Wrappers
# ----------------------------------------------------------------------------------------------------------------


def _tile_shape(width: int, block_p: int) -> tuple[int, int]:
    """(BLOCK_H, BLOCK_W): rows as wide as the image allows (up to MAX_BLOCK_W), block_p pixels in all."""
    block_w = min(MAX_BLOCK_W, block_p, triton.next_power_of_2(width))
    return block_p // block_w, block_w


def _check(x: torch.Tensor, maps: tuple[torch.Tensor, ...], hamming_x, hamming_y, mix_weights) -> None:
    assert x.dim() == 4 and x.is_contiguous(), "oaf_mix: x must be contiguous (N, C, H, W)"
    assert x.dtype in (torch.float32, torch.float16, torch.bfloat16), f"oaf_mix: unsupported dtype {x.dtype}"
    N, C, H, W = x.shape
    assert H >= 2 and W >= 2, "oaf_mix: reflect padding needs H >= 2 and W >= 2"
    assert 9 * H * W < 2**31, "oaf_mix: offsets within an image are int32"
    for t in maps:
        assert t.is_contiguous() and t.dtype == x.dtype and t.device == x.device
        assert t.shape == (N, 9, H, W) or t.shape == x.shape
    for t in (hamming_x, hamming_y):
        assert t.is_contiguous() and t.numel() == 9 and t.dtype == x.dtype and t.device == x.device
    assert mix_weights.is_contiguous() and mix_weights.shape == (N, 6) and mix_weights.dtype == x.dtype


def oaf_mix_forward(
    x: torch.Tensor,
    y: torch.Tensor,
    logits_x: torch.Tensor,
    logits_y: torch.Tensor,
    residual_x: torch.Tensor,
    residual_y: torch.Tensor,
    multiplier_x: torch.Tensor,
    multiplier_y: torch.Tensor,
    hamming_x: torch.Tensor,
    hamming_y: torch.Tensor,
    mix_weights: torch.Tensor,
) -> torch.Tensor:
    """The mixed map (N, C, H, W) in x's dtype; see the module docstring."""
    maps = (y, logits_x, logits_y, residual_x, residual_y, multiplier_x, multiplier_y)
    _check(x, maps, hamming_x, hamming_y, mix_weights)
    N, C, H, W = x.shape
    out = torch.empty_like(x)
    if out.numel() == 0:
        return out
    block_h, block_w = _tile_shape(W, FORWARD_BLOCK_P)
    grid = (N * triton.cdiv(H, block_h) * triton.cdiv(W, block_w),)
    _oaf_forward_kernel[grid](
        x, y, logits_x, logits_y, residual_x, residual_y, multiplier_x, multiplier_y, hamming_x, hamming_y,
        mix_weights, out, C, H, W,
        BLOCK_H=block_h, BLOCK_W=block_w, num_warps=FORWARD_WARPS,
    )  # fmt: skip
    return out


def oaf_mix_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    logits_x: torch.Tensor,
    logits_y: torch.Tensor,
    residual_x: torch.Tensor,
    residual_y: torch.Tensor,
    multiplier_x: torch.Tensor,
    multiplier_y: torch.Tensor,
    hamming_x: torch.Tensor,
    hamming_y: torch.Tensor,
    mix_weights: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """Gradients of (x, y, logits_x, logits_y, residual_x, residual_y, multiplier_x, multiplier_y, mix_weights).

    All in the input dtype; the hamming windows get none.
    """
    maps = (grad, y, logits_x, logits_y, residual_x, residual_y, multiplier_x, multiplier_y)
    _check(x, maps, hamming_x, hamming_y, mix_weights)
    N, C, H, W = x.shape
    grads = [
        torch.empty_like(t) for t in (x, y, logits_x, logits_y, residual_x, residual_y, multiplier_x, multiplier_y)
    ]
    if N == 0 or C == 0:
        for t in grads:
            t.zero_()
        return (*grads, torch.zeros_like(mix_weights))
    block_h, block_w = _tile_shape(W, BACKWARD_BLOCK_P)
    tiles = triton.cdiv(H, block_h) * triton.cdiv(W, block_w)
    # fp32 partial sums of d mix_weights, (source, program, (hp, add, mul)).
    partial = torch.empty((2, N * tiles, 3), dtype=torch.float32, device=x.device)
    dx, dy, dlx, dly, drx, dry, dmx, dmy = grads
    sources = (
        (x, logits_x, residual_x, multiplier_x, hamming_x, dx, dlx, drx, dmx),
        (y, logits_y, residual_y, multiplier_y, hamming_y, dy, dly, dry, dmy),
    )
    for index, (s, logits, residual, multiplier, hamming, ds, dlogits, dresidual, dmultiplier) in enumerate(sources):
        _oaf_backward_kernel[(N * tiles,)](
            grad, s, logits, residual, multiplier, hamming, mix_weights,
            ds, dlogits, dresidual, dmultiplier, partial[index], C, H, W, 3 * index,
            BLOCK_H=block_h, BLOCK_W=block_w, num_warps=BACKWARD_WARPS,
        )  # fmt: skip
    grad_mix = partial.view(2, N, tiles, 3).sum(dim=2).transpose(0, 1).reshape(N, 6).to(mix_weights.dtype)
    return (*grads, grad_mix)
