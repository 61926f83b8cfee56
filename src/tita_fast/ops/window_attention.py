"""The attention core of the Swin blocks: ``softmax(scale * q k^T + bias [+ shift mask]) v`` within each window.

The published algorithm (:func:`tita_fast.reference.published.window_attention_published`) writes the
(windows, heads, T, T) scores out several times (scores, + bias, + mask, softmax) and keeps the probabilities for
backward: for a 3x8 batch of 64x64 crops that is 150 MB per call, and streaming it to memory and back is most of a
training step. Backends (:mod:`tita_fast.backends`):

* ``cpu`` (float32/float64 on CPU, the default there): the compiled ops ``tita_fast::window_attention_forward``
  and ``_backward`` (csrc/window_attention/), one (window, head) at a time in L1 with the queries (forward) or
  the keys (backward) as vector lanes, on the token-layout tensors as they are: 2-3.5x faster than
  ``scaled_dot_product_attention`` on TITA's 64-token, 10-dim heads. The backward recomputes the probabilities
  (saved: q, k, v and the output).
* ``reference`` (every device and dtype): without autograd one ``scaled_dot_product_attention`` call takes all
  windows with the bias alone, then the few shifted windows the mask touches (the last row and column of
  windows) are redone with bias + mask: no (windows, heads, T, T) tensor at all.
* ``reference`` with autograd: the custom op ``tita_fast::window_attention``, the windows in chunks whose scores stay
  in cache (~0.8 MB); its backward recomputes a chunk's probabilities instead of keeping them (it saves q, k, v
  and the output only): forward + backward 1.6x (plain windows) and 2.3x (shifted) faster than the published
  algorithm per call at that batch on one CPU thread.

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

from tita_fast import _extension, backends

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
    if backends.selected_backend() in _WITHOUT_KERNEL:
        return _reference(q, k, v, bias, mask, scale)
    return backends.choose("window_attention", q)(q, k, v, bias, mask, scale)


# The GPU backends have no window-attention kernel of their own: under them, as under "reference", PyTorch's
# scaled_dot_product_attention (its flash / memory-efficient kernels on CUDA) and the chunked op run it.
_WITHOUT_KERNEL = ("triton", "cuda")


def _records_grad(*ts: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in ts)


def _reference(q, k, v, bias, mask: ShiftMask | None, scale) -> Tensor:
    if _records_grad(q, k, v, bias):
        return _window_attention_chunked(q, k, v, bias, None if mask is None else mask.dense(), scale)
    return _window_attention_sdpa(q, k, v, bias, mask, scale)


def _compiled(q, k, v, bias, mask: ShiftMask | None, scale) -> Tensor:
    if mask is None:
        return torch.ops.tita_fast.window_attention_forward(q, k, v, bias, None, None, scale)
    rows = torch.full((mask.n_windows,), -1, dtype=torch.long, device=q.device)
    rows[mask.index] = torch.arange(mask.index.numel(), device=q.device)
    return torch.ops.tita_fast.window_attention_forward(q, k, v, bias, mask.values.to(q.dtype), rows, scale)


def _compiled_setup_context(ctx, inputs, output):
    q, k, v, bias, mask, mask_index, ctx.scale = inputs
    ctx.save_for_backward(q, k, v, bias, mask, mask_index, output)


def _compiled_backward(ctx, grad):
    if torch.is_grad_enabled():
        raise NotImplementedError("the compiled window attention has no double backward")
    q, k, v, bias, mask, mask_index, out = ctx.saved_tensors
    grads = torch.ops.tita_fast.window_attention_backward(grad, q, k, v, out, bias, mask, mask_index, ctx.scale)
    return (*grads, None, None, None)


def _like_q(q, *rest):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


backends.register("window_attention", "reference", _reference)
if _extension.has_kernel("window_attention_forward", "CPU"):
    torch.library.register_fake("tita_fast::window_attention_forward")(_like_q)
    torch.library.register_fake("tita_fast::window_attention_backward")(
        lambda grad, q, k, v, out, bias, *rest: [_like_q(q), _like_q(q), _like_q(q), torch.empty_like(bias)]
    )
    torch.library.register_autograd(
        "tita_fast::window_attention_forward", _compiled_backward, setup_context=_compiled_setup_context
    )
    backends.register(
        "window_attention", "cpu", _compiled,
        supports=lambda t: t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64),
    )  # fmt: skip


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


def _per_chunk(q: Tensor) -> int:
    """Windows per chunk for heads-major q (B_, heads, T, d)."""
    _, heads, tokens, _ = q.shape
    return max(1, CHUNK_BYTES // (heads * tokens * tokens * q.element_size()))


def _additive_rows(bias: Tensor, mask: Tensor | None, per_chunk: int) -> tuple[Tensor, int]:
    """(rows, period): the bias (+ mask) term of consecutive windows, (>= per_chunk or nW, heads, T, T), repeating
    every ``period`` windows; a chunk starting at window s takes ``rows[s % period :][:c]`` (chunks never cross a
    period's end unless they start at 0: see :func:`_chunks`)."""
    pattern = bias.unsqueeze(0) if mask is None else bias.unsqueeze(0) + mask.unsqueeze(1).to(bias.dtype)
    period = pattern.shape[0]
    return pattern.repeat(max(1, -(-per_chunk // period)), 1, 1, 1), period


def _heads_major(t: Tensor, dtype: torch.dtype) -> Tensor:
    """(B_, T, heads, d) -> contiguous (B_, heads, T, d) of ``dtype``, in one copy."""
    return torch.empty(t.transpose(1, 2).shape, dtype=dtype, device=t.device).copy_(t.transpose(1, 2))


def _window_attention_chunked(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, mask: Tensor | None, scale: float):
    """The chunked op on token-layout tensors: one heads-major copy of each input (chunks are then contiguous
    slices), the result back in token layout (a view)."""
    dtype, result_dtype = _compute_dtype(q), q.dtype
    q, k, v = (_heads_major(t, dtype) for t in (q, k, v))
    out = _chunked_forward(q, k, v, bias.to(dtype), None if mask is None else mask.to(dtype), scale)
    return out.transpose(1, 2).to(result_dtype)


@torch.library.custom_op("tita_fast::window_attention", mutates_args=())
def _chunked_forward(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    """q, k, v contiguous (B_, heads, T, d); returns (B_, heads, T, d)."""
    out = torch.empty_like(q)
    per_chunk = _per_chunk(q)
    rows, period = _additive_rows(bias, mask, per_chunk)
    with _no_autocast(q):  # the wrapper chose the compute dtype
        for s0, s1 in _chunks(q.shape[0], period, per_chunk):
            p = _probabilities(q, k, rows, period, s0, s1, scale)
            torch.bmm(p, _matrices(v, s0, s1), out=_matrices(out, s0, s1))
    return out


def _no_autocast(t: Tensor):
    return torch.autocast(t.device.type, enabled=False)


def _matrices(t: Tensor, s0: int, s1: int) -> Tensor:
    """Windows [s0, s1) of a heads-major tensor as (c * heads, T, last) matrices (a view)."""
    return t[s0:s1].flatten(0, 1)


def _probabilities(q, k, rows, period, s0, s1, scale) -> Tensor:
    offset = s0 % period
    additive = rows[offset : offset + s1 - s0].flatten(0, 1)
    return torch.baddbmm(additive, _matrices(q, s0, s1), _matrices(k, s0, s1).transpose(1, 2), alpha=scale).softmax(-1)


@torch.library.custom_op("tita_fast::window_attention_chunked_backward", mutates_args=())
def _chunked_backward(
    grad: Tensor, q: Tensor, k: Tensor, v: Tensor, bias: Tensor, mask: Tensor | None, out: Tensor, scale: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    grad = grad.contiguous()
    dq, dk, dv = (torch.empty_like(q) for _ in range(3))
    grad_bias = torch.zeros_like(bias)
    per_chunk = _per_chunk(q)
    rows, period = _additive_rows(bias, mask, per_chunk)
    with _no_autocast(q):
        for s0, s1 in _chunks(q.shape[0], period, per_chunk):
            p = _probabilities(q, k, rows, period, s0, s1, scale)
            g, o = _matrices(grad, s0, s1), _matrices(out, s0, s1)
            dp = torch.bmm(g, _matrices(v, s0, s1).transpose(1, 2))
            # softmax backward: ds = p * (dp - sum_j p dp) and sum_j p_ij dp_ij = sum_c g_ic o_ic
            ds = dp.sub_((g * o).sum(-1, keepdim=True)).mul_(p)
            grad_bias += ds.view(s1 - s0, -1, *ds.shape[1:]).sum(0)
            torch.bmm(ds, _matrices(k, s0, s1), out=_matrices(dq, s0, s1)).mul_(scale)
            torch.bmm(ds.transpose(1, 2), _matrices(q, s0, s1), out=_matrices(dk, s0, s1)).mul_(scale)
            torch.bmm(p.transpose(1, 2), g, out=_matrices(dv, s0, s1))
    return dq, dk, dv, grad_bias


@_chunked_forward.register_fake
def _(q, k, v, bias, mask, scale):
    return torch.empty_like(q)


@_chunked_backward.register_fake
def _(grad, q, k, v, bias, mask, out, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(bias)


def _setup_context(ctx, inputs, output):
    q, k, v, bias, mask, ctx.scale = inputs
    ctx.save_for_backward(q, k, v, bias, mask, output)


def _backward(ctx, grad):
    if torch.is_grad_enabled():
        raise NotImplementedError("the chunked window attention has no double backward")
    q, k, v, bias, mask, out = ctx.saved_tensors
    return (*_chunked_backward(grad, q, k, v, bias, mask, out, ctx.scale), None, None)


_chunked_forward.register_autograd(_backward, setup_context=_setup_context)
