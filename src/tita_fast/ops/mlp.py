"""The MLP half of a Swin block without autograd: ``out = x + scale * fc2(GELU(fc1(LayerNorm(x))))``.

Inference runs it on every token of every block. As separate torch ops (the reference) its (tokens, C) and
(tokens, hidden) intermediates stream through memory once per step: LayerNorm, fc1 (after copying its bias in),
GELU, fc2, the residual add and the copy into the block's output. Backends (:mod:`tita_fast.backends`):

* ``cpu`` (float32/float64 on CPU, the default there): the compiled op ``tita_fast::residual_mlp_forward``
  (csrc/mlp/), a tile of 256 tokens through all the steps in one thread's cache, written straight into ``out``.
* ``reference`` (every device and dtype; whenever autograd records, as the compiled op has no backward; and under
  autocast, whose per-op dtypes it keeps): the torch ops.

``x`` and ``out`` are (N, L, C) token maps (``out`` may be a view, e.g. a slice of a larger map; it may be ``x``
itself); ``scale`` the per-image stochastic-depth factors (N, 1, 1) or None.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tita_fast import _extension, backends


def residual_mlp(
    x: Tensor,
    norm_weight: Tensor,
    norm_bias: Tensor,
    eps: float,
    fc1_weight: Tensor,
    fc1_bias: Tensor,
    fc2_weight: Tensor,
    fc2_bias: Tensor,
    scale: Tensor | None,
    out: Tensor,
) -> Tensor:
    """Writes ``x + scale * fc2(GELU(fc1(layer_norm(x))))`` into ``out`` and returns it."""
    if x.dim() != 3 or out.shape != x.shape:
        raise ValueError(
            f"residual_mlp expects x and out of one shape (N, L, C), got {tuple(x.shape)}, {tuple(out.shape)}"
        )
    params = (norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias)
    records = torch.is_grad_enabled() and any(t.requires_grad for t in (x, *params, *(() if scale is None else (scale,))))
    if records or backends.selected_backend() in _WITHOUT_KERNEL or torch.is_autocast_enabled(x.device.type):
        return _reference(x, *params, eps, scale, out)
    return backends.choose("residual_mlp", x)(x, *params, eps, scale, out)


# The GPU backends have no kernel of their own for it: under them, as under "reference", the torch ops run it.
_WITHOUT_KERNEL = ("triton", "cuda")


def _reference(x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, eps, scale, out) -> Tensor:
    normed = F.layer_norm(x, x.shape[-1:], norm_weight, norm_bias, eps)
    branch = F.linear(F.gelu(F.linear(normed, fc1_weight, fc1_bias)), fc2_weight, fc2_bias)
    return out.copy_(x + (branch if scale is None else branch * scale))  # copy_, not add(out=): autograd records it


def _compiled(x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, eps, scale, out) -> Tensor:
    torch.ops.tita_fast.residual_mlp_forward(
        x, norm_weight, norm_bias, eps, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
        None if scale is None else scale.reshape(-1), out,
    )  # fmt: skip
    return out


backends.register("residual_mlp", "reference", _reference)
if _extension.has_kernel("residual_mlp_forward", "CPU"):
    torch.library.register_fake("tita_fast::residual_mlp_forward")(lambda *args: None)
    backends.register(
        "residual_mlp", "cpu", _compiled,
        supports=lambda t: t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64),
    )  # fmt: skip
