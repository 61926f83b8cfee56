"""The attention core of the Swin blocks: ``softmax(scale * q k^T + bias [+ shift mask]) v`` within each window.

The published algorithm (:func:`tita_fast.reference.published.window_attention_published`) writes the
(windows, heads, T, T) scores out several times (scores, + bias, + mask, softmax) and keeps the probabilities for
backward: for a 3x8 batch of 64x64 crops that is 150 MB per call, and streaming it to memory and back is most of a
training step. Here:

* with autograd, the custom op ``tita_fast::window_attention`` runs the windows in chunks whose scores stay in
  cache (~0.8 MB), and its backward recomputes a chunk's probabilities instead of keeping them (it saves q, k, v
  and the output only): forward + backward 1.6x (plain windows) and 2.3x (shifted) faster than the published
  algorithm per call at that batch on one CPU thread;
* without autograd, one ``scaled_dot_product_attention`` call takes all windows with the bias alone, then the few
  shifted windows the mask touches (the last row and column of windows) are redone with bias + mask: no
  (windows, heads, T, T) tensor at all.

Both block the masked scores with -inf where the published mask adds -100: their softmax weights, ~e^-100
relative, are float32 denormals that make every later product on them ~3x slower, and are below the precision of
float32 and float64 results alike (they change nothing but those denormals to 0).

q, k, v and the result are in token layout (B_, T, heads, d), B_ = images x windows (batch-major).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

CHUNK_BYTES = 800_000  # scores per chunk (8 windows x 6 heads x 64^2 in float32): fastest of 0.2-6 MB on CPU here


class ShiftMask(NamedTuple):
    """The additive mask of a shifted window grid, stored for the windows it touches only (the last row and column
    of windows): ``values[i]`` (T, T) belongs to window ``index[i]`` of each image's ``n_windows``; the others are 0.
    """

    n_windows: int
    index: Tensor
    values: Tensor

    def dense(self) -> Tensor:
        """The (n_windows, T, T) mask."""
        tokens = self.values.shape[-1]
        dense = self.values.new_zeros(self.n_windows, tokens, tokens)
        return dense.index_copy_(0, self.index, self.values)

    def blocking(self) -> ShiftMask:
        """The same mask with -inf where it is not 0."""
        return self._replace(values=self.values.masked_fill(self.values != 0, float("-inf")))


def _check(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, mask: ShiftMask | None) -> None:
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            "window attention expects q, k, v of one shape (windows, T, heads, d), got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    _, tokens, heads, _ = q.shape
    if bias.shape != (heads, tokens, tokens):
        raise ValueError(f"bias must be (heads, T, T) = {(heads, tokens, tokens)}, got {tuple(bias.shape)}")
    if mask is not None and (mask.values.shape[1:] != (tokens, tokens) or q.shape[0] % mask.n_windows):
        raise ValueError(
            f"the shift mask is for {mask.n_windows} windows of {mask.values.shape[-1]} tokens; the inputs have "
            f"{q.shape[0]} windows of {tokens}"
        )


def window_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, mask: ShiftMask | None, scale: float) -> Tensor:
    """Attention within windows: q, k, v (B_, T, heads, d); ``bias`` (heads, T, T) added to every window's scores;
    ``mask``, when given, added to window ``i`` of each image as its window ``i % n_windows``. Returns (B_, T,
    heads, d)."""
    _check(q, k, v, bias, mask)
    mask = None if mask is None else mask.blocking()
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, bias)):
        return _window_attention_chunked(q, k, v, bias, None if mask is None else mask.dense(), scale)
    return _window_attention_sdpa(q, k, v, bias, mask, scale)


# -- without autograd: scaled_dot_product_attention ----------------------------------------------------------------


def _sdpa(q: Tensor, k: Tensor, v: Tensor, additive: Tensor, scale: float) -> Tensor:
    """(B, T, heads, d) inputs, additive mask broadcastable to (B, heads, T, T); returns (B, T, heads, d)."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=additive.to(q.dtype), scale=scale).transpose(1, 2)


def _window_attention_sdpa(q, k, v, bias, mask: ShiftMask | None, scale) -> Tensor:
    out = _sdpa(q, k, v, bias.unsqueeze(0), scale).contiguous()
    if mask is None or mask.index.numel() == 0:
        return out
    # The touched windows of every image again, with bias + mask.
    index = (torch.arange(0, q.shape[0], mask.n_windows, device=q.device)[:, None] + mask.index).flatten()
    additive = (bias.unsqueeze(0) + mask.values.unsqueeze(1)).repeat(q.shape[0] // mask.n_windows, 1, 1, 1)
    redone = _sdpa(q[index], k[index], v[index], additive, scale)
    return out.index_copy_(0, index, redone)


# -- with autograd: chunks of windows -------------------------------------------------------------------------------


def _chunks(total: int, n_windows: int, per_chunk: int):
    """(start, stop) ranges covering ``total`` windows, each within one image or made of whole images, so that a
    chunk's mask rows are one slice of the (nW, T, T) mask (or whole repeats of it)."""
    if per_chunk >= n_windows:
        step = per_chunk // n_windows * n_windows
        yield from ((s, min(s + step, total)) for s in range(0, total, step))
        return
    for image in range(0, total, n_windows):
        yield from ((s, min(s + per_chunk, image + n_windows)) for s in range(image, image + n_windows, per_chunk))


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype


class _Chunk:
    """One chunk's windows [s0, s1) as (c * heads, T, d) matrices and its additive (c * heads, T, T) term."""

    def __init__(self, q, k, v, bias, mask, s0, s1):
        _, tokens, heads, d = q.shape
        dtype = _compute_dtype(q)
        self.c, self.heads = s1 - s0, heads
        self.q, self.k, self.v = (t[s0:s1].transpose(1, 2).reshape(-1, tokens, d).to(dtype) for t in (q, k, v))
        additive = bias.to(dtype).unsqueeze(0)
        if mask is not None:
            n_windows = mask.shape[0]
            if self.c >= n_windows:  # whole images
                rows = mask.repeat(self.c // n_windows, 1, 1)
            else:
                rows = mask[s0 % n_windows : s0 % n_windows + self.c]
            additive = additive + rows.to(dtype).unsqueeze(1)
        self.additive = additive.expand(self.c, heads, tokens, tokens).reshape(-1, tokens, tokens)

    def probabilities(self, scale: float) -> Tensor:
        return torch.baddbmm(self.additive, self.q, self.k.transpose(1, 2), alpha=scale).softmax(-1)

    def tokens(self, t: Tensor) -> Tensor:
        """(c * heads, T, d) -> (c, T, heads, d)."""
        return t.view(self.c, self.heads, *t.shape[1:]).transpose(1, 2)


def _per_chunk(q: Tensor, heads_tokens: int) -> int:
    scores = heads_tokens * torch.finfo(_compute_dtype(q)).bits // 8
    return max(1, CHUNK_BYTES // scores)


@torch.library.custom_op("tita_fast::window_attention", mutates_args=())
def _window_attention_chunked(
    q: Tensor, k: Tensor, v: Tensor, bias: Tensor, mask: Tensor | None, scale: float
) -> Tensor:
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    n_windows = mask.shape[0] if mask is not None else 1
    for s0, s1 in _chunks(q.shape[0], n_windows, _per_chunk(q, q.shape[2] * q.shape[1] ** 2)):
        chunk = _Chunk(q, k, v, bias, mask, s0, s1)
        out[s0:s1] = chunk.tokens(torch.bmm(chunk.probabilities(scale), chunk.v))
    return out


@torch.library.custom_op("tita_fast::window_attention_backward", mutates_args=())
def _window_attention_chunked_backward(
    grad: Tensor, q: Tensor, k: Tensor, v: Tensor, bias: Tensor, mask: Tensor | None, out: Tensor, scale: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    grads = [torch.empty(q.shape, dtype=q.dtype, device=q.device) for _ in range(3)]
    grad_bias = torch.zeros(bias.shape, dtype=_compute_dtype(q), device=q.device)
    n_windows = mask.shape[0] if mask is not None else 1
    for s0, s1 in _chunks(q.shape[0], n_windows, _per_chunk(q, q.shape[2] * q.shape[1] ** 2)):
        chunk = _Chunk(q, k, v, bias, mask, s0, s1)
        p = chunk.probabilities(scale)
        g, o = (t[s0:s1].transpose(1, 2).reshape(chunk.v.shape).to(p.dtype) for t in (grad, out))
        dp = torch.bmm(g, chunk.v.transpose(1, 2))
        # softmax backward: ds = p * (dp - sum_j p dp) and sum_j p_ij dp_ij = sum_c g_ic o_ic
        ds = dp.sub_((g * o).sum(-1, keepdim=True)).mul_(p)
        grad_bias += ds.view(chunk.c, chunk.heads, *ds.shape[1:]).sum(0)
        grads[0][s0:s1] = chunk.tokens(torch.bmm(ds, chunk.k).mul_(scale))
        grads[1][s0:s1] = chunk.tokens(torch.bmm(ds.transpose(1, 2), chunk.q).mul_(scale))
        grads[2][s0:s1] = chunk.tokens(torch.bmm(p.transpose(1, 2), g))
    return (*grads, grad_bias.to(bias.dtype))


@_window_attention_chunked.register_fake
def _(q, k, v, bias, mask, scale):
    return torch.empty_like(q)


@_window_attention_chunked_backward.register_fake
def _(grad, q, k, v, bias, mask, out, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(bias)


def _setup_context(ctx, inputs, output):
    q, k, v, bias, mask, ctx.scale = inputs
    ctx.save_for_backward(q, k, v, bias, mask, output)


def _backward(ctx, grad):
    if torch.is_grad_enabled():
        raise NotImplementedError("the chunked window attention has no double backward")
    q, k, v, bias, mask, out = ctx.saved_tensors
    return (*_window_attention_chunked_backward(grad, q, k, v, bias, mask, out, ctx.scale), None, None)


_window_attention_chunked.register_autograd(_backward, setup_context=_setup_context)
