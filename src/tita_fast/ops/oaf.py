"""The OAF mixing op: input checks, backend dispatch, and the custom ops (with autograd) of the fused kernels.

Backends: ``reference`` (:func:`tita_fast.reference.oaf_mix_reference`, plain autograd), ``cpu`` and ``cuda``
(the compiled ``torch.ops.tita_fast.oaf_mix_forward`` / ``oaf_mix_backward``, csrc/oaf/), ``triton`` (the custom
ops ``tita_fast::oaf_mix_forward_triton`` / ``oaf_mix_backward_triton`` over :mod:`tita_fast.kernels.oaf`).

The fused backends save only their inputs for backward, which recomputes the filters and the smoothed maps.
Each kernel works in one memory layout: channels-last on CPU (a pixel's filter applies to its contiguous
channels), contiguous NCHW on GPU (coalesced rows with a halo). Inputs in another layout are copied to it first,
and the result comes back in the kernel's layout. The hamming windows are constants: they get no gradient.
"""

from __future__ import annotations

import importlib.util
import os

import torch
from torch import Tensor

from tita_fast import _extension, backends
from tita_fast.reference.oaf import oaf_mix_reference

# Gradients the backward ops return, in this order: every input but the two hamming windows.
_DIFFERENTIABLE = (0, 1, 2, 3, 4, 5, 6, 7, 10)
_MAPS = 8  # x, y, the two logits maps, residuals and multipliers: the inputs copied to the kernel's layout


def _layout(t: Tensor, compiled: bool) -> torch.memory_format:
    """The memory layout a kernel works in (and returns): channels-last for the C++ CPU kernel, else NCHW."""
    return torch.channels_last if compiled and t.device.type == "cpu" else torch.contiguous_format


def _register_autograd_and_fake(forward: str, backward, compiled: bool) -> None:
    """Autograd (saving inputs only) and shape-and-layout-only implementations of a fused forward op."""

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward_fn(ctx, grad):
        if torch.is_grad_enabled():  # create_graph=True: the backward kernels have no derivative of their own
            raise NotImplementedError(
                "the fused OAF kernels do not support double backward; run it on the reference backend "
                "(tita_fast.use_backend('reference'))"
            )
        grads = iter(backward(grad, *ctx.saved_tensors))
        return tuple(next(grads) if i in _DIFFERENTIABLE else None for i in range(11))

    torch.library.register_autograd(forward, backward_fn, setup_context=setup_context)
    torch.library.register_fake(forward)(lambda x, *rest: torch.empty_like(x, memory_format=_layout(x, compiled)))


def _backward_fake(compiled: bool):
    def fake(grad, *inputs):
        maps = [torch.empty_like(inputs[i], memory_format=_layout(grad, compiled)) for i in _DIFFERENTIABLE[:-1]]
        return [*maps, torch.empty_like(inputs[-1])]

    return fake


def _fused(forward_op, compiled: bool):
    """A backend implementation: maps copied to the kernel's layout, hamming windows flattened to (9,), hamming
    and mix weights cast to the maps' dtype."""

    def run(*inputs: Tensor) -> Tensor:
        if torch.is_grad_enabled() and any(h.requires_grad for h in inputs[8:10]):
            raise ValueError(
                "the fused OAF kernels treat the hamming windows as constants, but one requires grad; "
                "use the reference backend to differentiate them"
            )
        x = inputs[0]
        layout = _layout(x, compiled)
        maps = [t.contiguous(memory_format=layout) for t in inputs[:_MAPS]]
        hamming = [h.reshape(9).to(x.dtype).contiguous() for h in inputs[_MAPS : _MAPS + 2]]
        return forward_op(*maps, *hamming, inputs[-1].to(x.dtype).contiguous())

    return run


backends.register("oaf_mix", "reference", oaf_mix_reference)

if _extension.LOAD_ERROR is None:
    _register_autograd_and_fake("tita_fast::oaf_mix_forward", torch.ops.tita_fast.oaf_mix_backward, compiled=True)
    torch.library.register_fake("tita_fast::oaf_mix_backward")(_backward_fake(compiled=True))
    if _extension.has_kernel("oaf_mix_forward", "CPU"):
        backends.register(
            "oaf_mix", "cpu", _fused(torch.ops.tita_fast.oaf_mix_forward, compiled=True),
            supports=lambda t: t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64),
        )  # fmt: skip
    if _extension.has_kernel("oaf_mix_forward", "CUDA"):
        backends.register(
            "oaf_mix", "cuda", _fused(torch.ops.tita_fast.oaf_mix_forward, compiled=True),
            supports=lambda t: t.is_cuda and t.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64),
        )  # fmt: skip


@torch.library.custom_op("tita_fast::oaf_mix_forward_triton", mutates_args=())
def _oaf_mix_forward_triton(
    x: Tensor, y: Tensor, logits_x: Tensor, logits_y: Tensor, residual_x: Tensor, residual_y: Tensor,
    multiplier_x: Tensor, multiplier_y: Tensor, hamming_x: Tensor, hamming_y: Tensor, mix_weights: Tensor,
) -> Tensor:  # fmt: skip
    from tita_fast.kernels import oaf as kernels

    return kernels.oaf_mix_forward(
        x, y, logits_x, logits_y, residual_x, residual_y, multiplier_x, multiplier_y, hamming_x, hamming_y, mix_weights
    )


@torch.library.custom_op("tita_fast::oaf_mix_backward_triton", mutates_args=())
def _oaf_mix_backward_triton(
    grad: Tensor, x: Tensor, y: Tensor, logits_x: Tensor, logits_y: Tensor, residual_x: Tensor, residual_y: Tensor,
    multiplier_x: Tensor, multiplier_y: Tensor, hamming_x: Tensor, hamming_y: Tensor, mix_weights: Tensor,
) -> list[Tensor]:  # fmt: skip
    from tita_fast.kernels import oaf as kernels

    return list(
        kernels.oaf_mix_backward(
            grad.contiguous(), x, y, logits_x, logits_y, residual_x, residual_y, multiplier_x, multiplier_y,
            hamming_x, hamming_y, mix_weights,
        )
    )  # fmt: skip


_oaf_mix_backward_triton.register_fake(_backward_fake(compiled=False))
_register_autograd_and_fake("tita_fast::oaf_mix_forward_triton", _oaf_mix_backward_triton, compiled=False)


def _triton_supports(t: Tensor) -> bool:
    if t.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return False
    if t.device.type == "cpu":  # Triton's interpreter (TRITON_INTERPRET=1) runs them on CPU tensors: how CI tests them
        return os.environ.get("TRITON_INTERPRET") == "1"
    return t.is_cuda


def _triton_is_automatic(t: Tensor) -> bool:
    # The CUDA C++ kernels measured 1.5x faster (H100, benchmarks/results/oaf_op_h100.json): "auto" prefers them.
    return t.is_cuda and not _extension.has_kernel("oaf_mix_forward", "CUDA")


if importlib.util.find_spec("triton") is not None:
    backends.register(
        "oaf_mix", "triton", _fused(_oaf_mix_forward_triton, compiled=False),
        supports=_triton_supports, automatic=_triton_is_automatic,
    )  # fmt: skip


def oaf_mix(
    x: Tensor,
    y: Tensor,
    filter_logits_x: Tensor,
    filter_logits_y: Tensor,
    residual_x: Tensor,
    residual_y: Tensor,
    multiplier_x: Tensor,
    multiplier_y: Tensor,
    hamming_x: Tensor,
    hamming_y: Tensor,
    mix_weights: Tensor,
) -> Tensor:
    """The OAF step after its generators; see :func:`tita_fast.reference.oaf_mix_reference`."""
    if x.dim() != 4 or x.shape != y.shape:
        raise ValueError(f"OAF expects two (N, C, H, W) maps of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    n, _, height, width = x.shape
    if height < 2 or width < 2:
        raise ValueError(f"OAF needs H >= 2 and W >= 2 for its reflect-padded 3x3 filter, got {height}x{width}")
    maps = {
        "y": y, "filter_logits_x": filter_logits_x, "filter_logits_y": filter_logits_y,
        "residual_x": residual_x, "residual_y": residual_y, "multiplier_x": multiplier_x, "multiplier_y": multiplier_y,
    }  # fmt: skip
    for name, t in maps.items():
        expected = (n, 9, height, width) if name.startswith("filter_logits") else tuple(x.shape)
        if t.shape != expected:
            raise ValueError(f"OAF {name} must be {expected}, got {tuple(t.shape)}")
        if t.dtype != x.dtype or t.device != x.device:
            raise ValueError(f"OAF {name} is {t.dtype} on {t.device}, x is {x.dtype} on {x.device}")
    if mix_weights.shape != (n, 6):
        raise ValueError(f"OAF mix_weights must be {(n, 6)}, got {tuple(mix_weights.shape)}")
    if hamming_x.numel() != 9 or hamming_y.numel() != 9:
        raise ValueError("OAF hamming windows must hold 3x3 = 9 values")
    if any(t.device != x.device for t in (mix_weights, hamming_x, hamming_y)):
        raise ValueError(f"OAF mix_weights and hamming windows must be on {x.device} like x")
    run = backends.choose("oaf_mix", x)
    return run(x, y, filter_logits_x, filter_logits_y, residual_x, residual_y, multiplier_x, multiplier_y,
               hamming_x, hamming_y, mix_weights)  # fmt: skip
