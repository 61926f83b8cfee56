"""Swin window attention, self and cross blocks, and the stages TITA is built from (spec: Swin block, Fusion)."""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tita_fast import ops
from tita_fast.nn.ipa import IPA
from tita_fast.nn.layers import DropPath, Mlp, attach_flat
from tita_fast.ops.window_attention import ShiftMask
from tita_fast.reference.published import window_attention_published

IPA_HEADS = 6  # the published cross block builds its IPA with 6 heads whatever the block's own head count


def relative_position_index(window: int) -> torch.Tensor:
    """(w², w²) row of the bias table for query i and key j: (yi - yj + w - 1) * (2w - 1) + (xi - xj + w - 1)."""
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + window - 1
    dx = xs[:, None] - xs[None, :] + window - 1
    return dy * (2 * window - 1) + dx


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(N, H, W, C) -> (N * nW, w*w, C): windows row-major over the grid, batch-major outside."""
    n, h, w, c = x.shape
    x = x.view(n, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def window_merge(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (N * nW, w*w, C) -> (N, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, height // window, width // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, height, width, c)


def _region_labels(height: int, width: int, window: int, shift: int, device=None) -> torch.Tensor:
    """(nW, w²) region of each token of the shifted grid: rows [0, H-w), [H-w, H-s), [H-s, H) crossed with the
    same three column ranges."""
    rows = (0, height - window, height - shift, height)
    cols = (0, width - window, width - shift, width)
    labels = torch.zeros(1, height, width, 1, device=device)
    for i in range(3):
        for j in range(3):
            labels[:, rows[i] : rows[i + 1], cols[j] : cols[j + 1]] = 3 * i + j
    return window_partition(labels, window).squeeze(-1)


def _mask_values(labels: torch.Tensor, dtype=None) -> torch.Tensor:
    different = labels[:, None, :] != labels[:, :, None]
    return torch.zeros(different.shape, device=labels.device, dtype=dtype).masked_fill_(different, -100.0)


def shift_window_mask(height: int, width: int, window: int, shift: int, device=None, dtype=None) -> torch.Tensor:
    """(nW, w², w²) additive mask of shifted windows (the published ``attn_mask``): -100 between tokens from
    different regions, else 0."""
    return _mask_values(_region_labels(height, width, window, shift, device), dtype)


@functools.lru_cache(maxsize=64)
def shift_mask(height: int, width: int, window: int, shift: int, device: torch.device) -> ShiftMask:
    """:func:`shift_window_mask` for the windows it touches only (float32), built once per size and device.

    Those are the last row and the last column of windows: every other window lies in region 0.
    """
    rows, cols = height // window, width // window
    touched = [r * cols + cols - 1 for r in range(rows - 1)] + [(rows - 1) * cols + c for c in range(cols)]
    touched = torch.tensor(touched, device=device)
    labels = _region_labels(height, width, window, shift, device)
    return ShiftMask(rows * cols, touched, _mask_values(labels[touched], torch.float32))


@functools.lru_cache(maxsize=64)
def window_order(height: int, width: int, window: int, shift: int, device: torch.device):
    """(order, inverse), each (H*W,): ``t[:, order]`` is ``window_partition(roll(t, (-s, -s)))`` with its windows
    flattened, in one gather, and ``tw[:, inverse]`` puts tokens in window order back in raster order."""
    position = torch.arange(height * width, device=device).view(1, height, width, 1)
    if shift:
        position = torch.roll(position, shifts=(-shift, -shift), dims=(1, 2))
    order = window_partition(position, window).flatten()
    return order, torch.empty_like(order).index_copy_(0, order, torch.arange(order.numel(), device=device))


# Inference runs a block on this many tokens (per image) at a time, whole rows of windows, so that its temporaries
# (LayerNorm, q/k/v, MLP hidden) stay in cache: 1.3-1.5x faster per block at 256x256 on CPU, identical results;
# 16384 was the fastest of 2048-65536 for the whole forward at 256x256 on 2 threads (3.4-3.9 s vs 4.1-4.5 s).
INFERENCE_CHUNK_TOKENS = 16384


def _scaled(t: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    return t if scale is None else t * scale


def _gather_tokens(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``t[:, index]`` for tokens (N, L, C), as one index_select on the (N * L, C) rows: 1.8-2.7x faster than
    advanced indexing on CPU here (a shifted window order of a 256x256 map, C = 60)."""
    n, length, c = t.shape
    if n > 1:
        index = (index + torch.arange(0, n * length, length, device=t.device)[:, None]).flatten()
    return t.reshape(n * length, c).index_select(0, index).view(n, -1, c)


def _residual_mlp(t: torch.Tensor, norm: nn.LayerNorm, mlp: Mlp, scale: torch.Tensor | None, out: torch.Tensor):
    """``out = t + scale * mlp(norm(t))`` (inference: dropout is off, see ``_infers``) as one op."""
    return ops.residual_mlp(t, norm.weight, norm.bias, norm.eps, mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight,
                        mlp.fc2.bias, scale, out)  # fmt: skip


class _WindowAttentionBase(nn.Module):
    """Relative-position-biased multi-head attention within windows; subclasses make q, k, v."""

    def __init__(self, dim: int, window: int, num_heads: int, qk_scale: float | None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention dim {dim} must be divisible by its {num_heads} heads")
        self.dim, self.window, self.num_heads = dim, window, num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window))

    def _finish_init(self, attn_drop: float, proj_drop: float) -> None:
        # Registered after the q/k/v projections so the state-dict order matches the published one.
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(self.dim, self.dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: ShiftMask | None) -> torch.Tensor:
        """q, k, v: (B_, T, heads, d) with B_ = N * nW. Returns the projected result (B_, T, C)."""
        b_, tokens, _, _ = q.shape
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(tokens, tokens, -1).permute(2, 0, 1)  # (heads, T, T)
        if self.training and self.attn_drop.p > 0:  # dropout on the probabilities: only the published algorithm has it
            out = window_attention_published(q, k, v, bias, mask, self.scale, dropout_p=self.attn_drop.p, training=True)
        else:
            out = ops.window_attention(q, k, v, bias, mask, self.scale)
        return self.proj_drop(self.proj(out.reshape(b_, tokens, self.dim)))

    def _heads(self, t: torch.Tensor, parts: int) -> tuple[torch.Tensor, ...]:
        """(B_, T, parts*C) -> ``parts`` views (B_, T, heads, d)."""
        b_, tokens, _ = t.shape
        return t.view(b_, tokens, parts, self.num_heads, self.dim // self.num_heads).unbind(2)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window={self.window}, num_heads={self.num_heads}"


class WindowAttention(_WindowAttentionBase):
    """Window self-attention (keys ``qkv.*``, ``proj.*``, ``relative_position_bias_table``)."""

    def __init__(self, dim, window, num_heads, qkv_bias=True, qk_scale=None, attn_drop=0.0, proj_drop=0.0):
        super().__init__(dim, window, num_heads, qk_scale)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self._finish_init(attn_drop, proj_drop)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self._heads(self.qkv(x), 3)
        return self.attend(q, k, v, mask)


class CrossWindowAttention(_WindowAttentionBase):
    """Window cross-attention: queries from ``x`` (``q.*``), keys and values from ``y`` (``kv.*``)."""

    def __init__(self, dim, window, num_heads, qkv_bias=True, qk_scale=None, attn_drop=0.0, proj_drop=0.0):
        super().__init__(dim, window, num_heads, qk_scale)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self._finish_init(attn_drop, proj_drop)

    def forward(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        (q,) = self._heads(self.q(x), 1)
        k, v = self._heads(self.kv(y), 2)
        return self.attend(q, k, v, mask)


class _ShiftedWindows(nn.Module):
    """Window geometry of one block: its window, shift, and the ``attn_mask`` buffer for the configured size.

    The published block shrinks its window to the configured resolution and drops the shift when that resolution
    is not larger than the window. ``attn_mask`` is in the state-dict for checkpoint compatibility but is never
    taken from a checkpoint: any stored size loads, and the mask is recomputed for the size actually run.
    """

    def __init__(self, input_resolution: tuple[int, int], window: int, shift: int):
        super().__init__()
        self.input_resolution = tuple(input_resolution)
        if min(self.input_resolution) <= window:
            window, shift = min(self.input_resolution), 0
        self.window, self.shift = window, shift
        if shift and any(side % window for side in self.input_resolution):
            raise ValueError(f"img_size {self.input_resolution} must be a multiple of the window size {window}")
        mask = shift_window_mask(*self.input_resolution, window, shift) if shift else None
        self.register_buffer("attn_mask", mask)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "attn_mask"
        if key in state_dict and self.attn_mask is not None:
            state_dict[key] = self.attn_mask  # recomputed data: accept any stored size, keep ours
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _mask(self, height: int, width: int, like: torch.Tensor) -> ShiftMask | None:
        if not self.shift:
            return None
        # torch.compile traces the construction into its graph (where it is folded) instead of reading the cache
        build = shift_mask.__wrapped__ if torch.compiler.is_compiling() else shift_mask
        return build(height, width, self.window, self.shift, like.device)

    def _check_size(self, height: int, width: int) -> None:
        if height % self.window or width % self.window:
            raise ValueError(
                f"a {height}x{width} feature map cannot be split into this block's {self.window}x{self.window} windows "
                f"(the configured img_size {self.input_resolution} shrank the window)"
            )

    def _infers(self, *inputs: torch.Tensor) -> bool:
        """Without autograd recording, the block runs a few window rows at a time, unless element-wise dropout is
        active (its draws would differ from the whole map's)."""
        records = torch.is_grad_enabled() and any(t.requires_grad for t in (*inputs, *self.parameters()))
        dropping = self.training and any(m.p > 0 for m in self.modules() if isinstance(m, nn.Dropout))
        return not (records or dropping)

    @staticmethod
    def _branch_scales(like: torch.Tensor, *drop_paths: DropPath) -> list[torch.Tensor | None]:
        """Stochastic depth's per-image factors (N, 1, 1) drawn once per map, in the whole-map path's order (so
        the same draws); None where it is the identity (eval mode, p = 0)."""
        ones = like.new_ones(like.shape[0], 1, 1)
        return [None if (scale := path(ones)) is ones else scale for path in drop_paths]

    def _window_rows(self, height: int, width: int, like: torch.Tensor):
        """Inference in pieces: yields (token slice, ShiftMask or None) for runs of whole window rows in window
        order (see :func:`window_order`), each ~``INFERENCE_CHUNK_TOKENS`` tokens; the mask is the part for the
        piece's windows."""
        self._check_size(height, width)
        mask = self._mask(height, width, like)
        cols, tokens = width // self.window, self.window**2
        rows_per_piece = max(1, INFERENCE_CHUNK_TOKENS // (cols * tokens))
        for r0 in range(0, height // self.window, rows_per_piece):
            r1 = min(r0 + rows_per_piece, height // self.window)
            piece = slice(r0 * cols * tokens, r1 * cols * tokens)
            if mask is None:
                yield piece, None
                continue
            inside = (mask.index >= r0 * cols) & (mask.index < r1 * cols)
            yield piece, ShiftMask((r1 - r0) * cols, mask.index[inside] - r0 * cols, mask.values[inside])

    def _in_window_order(self, height: int, width: int, *ts: torch.Tensor):
        """The inverse order and each of ``ts`` (N, L, C) in window order."""
        build = window_order.__wrapped__ if torch.compiler.is_compiling() else window_order  # as in _mask
        order, inverse = build(height, width, self.window, self.shift, ts[0].device)
        return inverse, [_gather_tokens(t, order) for t in ts]

    def _to_windows(self, t: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(N, L, C) -> (N * nW, w², C), shifted by (-s, -s) first."""
        self._check_size(height, width)
        t = t.view(t.shape[0], height, width, -1)
        if self.shift:
            t = torch.roll(t, shifts=(-self.shift, -self.shift), dims=(1, 2))
        return window_partition(t, self.window)

    def _from_windows(self, windows: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(N * nW, w², C) -> (N, L, C), shifted back by (+s, +s)."""
        t = window_merge(windows, self.window, height, width)
        if self.shift:
            t = torch.roll(t, shifts=(self.shift, self.shift), dims=(1, 2))
        return t.reshape(t.shape[0], height * width, -1)


class SwinBlock(_ShiftedWindows):
    """Swin self-attention block: ``t + attn(LN(t))`` then ``t + mlp(LN(t))`` on tokens (N, H*W, C)."""

    def __init__(self, dim, input_resolution, num_heads, window, shift, mlp_ratio=2.0, qkv_bias=True, qk_scale=None,
                 drop=0.0, attn_drop=0.0, drop_path=0.0):  # fmt: skip
        super().__init__(input_resolution, window, shift)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, self.window, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dim, drop)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h, w = size
        if self._infers(x):
            return self._infer(x, h, w)
        a = self.attn(self._to_windows(self.norm1(x), h, w), self._mask(h, w, x))
        x = x + self.drop_path(self._from_windows(a, h, w))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def _infer(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The same block a few window rows at a time, in window order: after the roll every step is per window
        or per token, but stochastic depth, whose per-image factors are drawn first."""
        n, _, c = x.shape
        inverse, (xw,) = self._in_window_order(h, w, x)
        scales = self._branch_scales(x, self.drop_path, self.drop_path)
        out = torch.empty_like(xw)
        for piece, mask in self._window_rows(h, w, x):
            t = xw[:, piece]
            t = t + _scaled(self.attn(self.norm1(t).reshape(-1, self.window**2, c), mask).view(n, -1, c), scales[0])
            _residual_mlp(t, self.norm2, self.mlp, scales[1], out[:, piece])
        return _gather_tokens(out, inverse)


class CrossSwinBlock(_ShiftedWindows):
    """Cross block: window cross-attention each way, IPA on the two results, then residuals and MLPs."""

    def __init__(self, dim, input_resolution, num_heads, window, shift, mlp_ratio=2.0, qkv_bias=True, qk_scale=None,
                 drop=0.0, attn_drop=0.0, drop_path=0.0):  # fmt: skip
        super().__init__(input_resolution, window, shift)
        self.norm1_A = nn.LayerNorm(dim)
        self.norm1_B = nn.LayerNorm(dim)
        self.attn_A = CrossWindowAttention(dim, self.window, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.attn_B = CrossWindowAttention(dim, self.window, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path_A = DropPath(drop_path)
        self.drop_path_B = DropPath(drop_path)
        self.norm2_A = nn.LayerNorm(dim)
        self.norm2_B = nn.LayerNorm(dim)
        self.mlp_A = Mlp(dim, int(dim * mlp_ratio), dim, drop)
        self.mlp_B = Mlp(dim, int(dim * mlp_ratio), dim, drop)
        attach_flat(self, "ipa", IPA(dim, IPA_HEADS))  # keys cross_attn_*, relation_judger.*, k_noise, v_noise

    def forward(self, x: torch.Tensor, y: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = size
        if self._infers(x, y):
            return self._infer(x, y, h, w)
        mask = self._mask(h, w, x)
        xw = self._to_windows(self.norm1_A(x), h, w)
        yw = self._to_windows(self.norm1_B(y), h, w)
        a = self._from_windows(self.attn_A(xw, yw, mask), h, w)
        b = self._from_windows(self.attn_B(yw, xw, mask), h, w)
        a, b = self.ipa(a, b)
        x = x + self.drop_path_A(a)
        x = x + self.drop_path_A(self.mlp_A(self.norm2_A(x)))
        y = y + self.drop_path_B(b)
        y = y + self.drop_path_B(self.mlp_B(self.norm2_B(y)))
        return x, y

    def _infer(self, x: torch.Tensor, y: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`SwinBlock._infer`; IPA is per token too. Stochastic depth is drawn in the whole-map order."""
        n, _, c = x.shape
        inverse, (xw, yw) = self._in_window_order(h, w, x, y)
        scales = self._branch_scales(x, self.drop_path_A, self.drop_path_A, self.drop_path_B, self.drop_path_B)
        out_x, out_y = torch.empty_like(xw), torch.empty_like(yw)
        for piece, mask in self._window_rows(h, w, x):
            tx, ty = xw[:, piece], yw[:, piece]
            wx = self.norm1_A(tx).reshape(-1, self.window**2, c)
            wy = self.norm1_B(ty).reshape(-1, self.window**2, c)
            a, b = self.ipa(self.attn_A(wx, wy, mask).view(n, -1, c), self.attn_B(wy, wx, mask).view(n, -1, c))
            tx, ty = tx + _scaled(a, scales[0]), ty + _scaled(b, scales[2])
            _residual_mlp(tx, self.norm2_A, self.mlp_A, scales[1], out_x[:, piece])
            _residual_mlp(ty, self.norm2_B, self.mlp_B, scales[3], out_y[:, piece])
        return _gather_tokens(out_x, inverse), _gather_tokens(out_y, inverse)


class _Blocks(nn.Module):
    """The published ``residual_group`` level (kept for its state-dict keys): just the block list."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


def _stage_blocks(block_cls, dim, input_resolution, depth, num_heads, window, drop_path, **kwargs) -> _Blocks:
    return _Blocks([
        block_cls(dim, input_resolution, num_heads, window, 0 if i % 2 == 0 else window // 2,
                  drop_path=drop_path[i], **kwargs)
        for i in range(depth)
    ])  # fmt: skip


class SwinStage(nn.Module):
    """``depth`` Swin blocks in sequence, shifts alternating 0, w/2 (the published RSTB: no residual of its own)."""

    def __init__(self, dim, input_resolution, depth, num_heads, window, drop_path, use_checkpoint=False, **kwargs):
        super().__init__()
        self.residual_group = _stage_blocks(SwinBlock, dim, input_resolution, depth, num_heads, window, drop_path,
                                            **kwargs)  # fmt: skip
        self.use_checkpoint = use_checkpoint

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        for blk in self.residual_group.blocks:
            x = checkpoint(blk, x, size, use_reentrant=False) if self.use_checkpoint else blk(x, size)
        return x


class CrossSwinStage(nn.Module):
    """``depth`` cross blocks in sequence (the published CRSTB)."""

    def __init__(self, dim, input_resolution, depth, num_heads, window, drop_path, use_checkpoint=False, **kwargs):
        super().__init__()
        self.residual_group = _stage_blocks(CrossSwinBlock, dim, input_resolution, depth, num_heads, window,
                                            drop_path, **kwargs)  # fmt: skip
        self.use_checkpoint = use_checkpoint

    def forward(self, x: torch.Tensor, y: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        for blk in self.residual_group.blocks:
            x, y = checkpoint(blk, x, y, size, use_reentrant=False) if self.use_checkpoint else blk(x, y, size)
        return x, y
