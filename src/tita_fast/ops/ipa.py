"""The IPA op: input checks, backend dispatch, and the custom ops (with autograd) of the fused kernels.

Backends: ``reference`` (:func:`tita_fast.reference.ipa_reference`, plain autograd), ``cpu`` and ``cuda`` (the
compiled ``torch.ops.tita_fast.ipa_forward`` / ``ipa_backward``, csrc/ipa/), ``triton`` (the custom ops
``tita_fast::ipa_forward_triton`` / ``ipa_backward_triton`` over :mod:`tita_fast.kernels.ipa`).

Every fused backend saves only its inputs (a, b and the parameters) for backward; the backward kernel
recomputes the per-pixel forward instead of keeping its intermediates (about 12 C values per pixel).
"""

from __future__ import annotations

import importlib.util
import os

import torch
from torch import Tensor

from tita_fast import _extension, backends
from tita_fast.reference.ipa import ipa_reference


def _register_autograd_and_fake(forward: str, backward) -> None:
    """Autograd (saving inputs only) and shape-only implementations for a fused forward/backward op pair."""

    def setup_context(ctx, inputs, output):
        *tensors, ctx.num_heads = inputs
        ctx.save_for_backward(*tensors)

    def backward_fn(ctx, grad_a, grad_b):
        if torch.is_grad_enabled():  # create_graph=True: the backward kernels have no derivative of their own
            raise NotImplementedError(
                "the fused IPA kernels do not support double backward; run it on the reference backend "
                "(tita_fast.use_backend('reference'))"
            )
        grads = backward(grad_a.contiguous(), grad_b.contiguous(), *ctx.saved_tensors, ctx.num_heads)
        return (*grads, None)

    torch.library.register_autograd(forward, backward_fn, setup_context=setup_context)
    torch.library.register_fake(forward)(lambda a, b, *rest: (torch.empty_like(a), torch.empty_like(b)))


def _backward_fake(grad_a, grad_b, a, b, *params_and_heads):
    return [torch.empty_like(a), torch.empty_like(b), *(torch.empty_like(p) for p in params_and_heads[:-1])]


def _fused(forward_op):
    """A backend implementation: flattens tokens to (M, C) rows and casts parameters to the inputs' dtype."""

    def run(a: Tensor, b: Tensor, *rest) -> tuple[Tensor, Tensor]:
        *params, num_heads = rest
        shape = a.shape
        flat = [t.reshape(-1, shape[-1]).contiguous() for t in (a, b)]
        params = [p.to(a.dtype).contiguous() for p in params]
        out_a, out_b = forward_op(*flat, *params, num_heads)
        return out_a.view(shape), out_b.view(shape)

    return run


backends.register("ipa", "reference", ipa_reference)

if _extension.LOAD_ERROR is None:
    _register_autograd_and_fake("tita_fast::ipa_forward", torch.ops.tita_fast.ipa_backward)
    torch.library.register_fake("tita_fast::ipa_backward")(_backward_fake)
    if _extension.has_kernel("ipa_forward", "CPU"):
        backends.register(
            "ipa", "cpu", _fused(torch.ops.tita_fast.ipa_forward),
            supports=lambda t: t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64),
        )  # fmt: skip
    if _extension.has_kernel("ipa_forward", "CUDA"):
        backends.register(
            "ipa", "cuda", _fused(torch.ops.tita_fast.ipa_forward),
            supports=lambda t: t.is_cuda and t.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64),
        )  # fmt: skip


@torch.library.custom_op("tita_fast::ipa_forward_triton", mutates_args=())
def _ipa_forward_triton(
    a: Tensor, b: Tensor,
    fc1_w: Tensor, fc1_b: Tensor, fc2_w: Tensor, fc2_b: Tensor,
    in_w_ab: Tensor, in_b_ab: Tensor, out_w_ab: Tensor, out_b_ab: Tensor,
    in_w_ba: Tensor, in_b_ba: Tensor, out_w_ba: Tensor, out_b_ba: Tensor,
    k_noise: Tensor, v_noise: Tensor, num_heads: int,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    from tita_fast.kernels import ipa as kernels

    return kernels.ipa_forward(
        a, b, fc1_w, fc1_b, fc2_w, fc2_b, in_w_ab, in_b_ab, out_w_ab, out_b_ab,
        in_w_ba, in_b_ba, out_w_ba, out_b_ba, k_noise, v_noise, num_heads,
    )  # fmt: skip


@torch.library.custom_op("tita_fast::ipa_backward_triton", mutates_args=())
def _ipa_backward_triton(
    grad_a: Tensor, grad_b: Tensor, a: Tensor, b: Tensor,
    fc1_w: Tensor, fc1_b: Tensor, fc2_w: Tensor, fc2_b: Tensor,
    in_w_ab: Tensor, in_b_ab: Tensor, out_w_ab: Tensor, out_b_ab: Tensor,
    in_w_ba: Tensor, in_b_ba: Tensor, out_w_ba: Tensor, out_b_ba: Tensor,
    k_noise: Tensor, v_noise: Tensor, num_heads: int,
) -> list[Tensor]:  # fmt: skip
    from tita_fast.kernels import ipa as kernels

    return list(
        kernels.ipa_backward(
            grad_a, grad_b, a, b, fc1_w, fc1_b, fc2_w, fc2_b, in_w_ab, in_b_ab, out_w_ab, out_b_ab,
            in_w_ba, in_b_ba, out_w_ba, out_b_ba, k_noise, v_noise, num_heads,
        )
    )  # fmt: skip


_ipa_backward_triton.register_fake(_backward_fake)
_register_autograd_and_fake("tita_fast::ipa_forward_triton", _ipa_backward_triton)


# Shared memory the Triton kernels need for their weight tiles, by padded channel count (from compiling them for
# sm_80/sm_90; see tita_fast/kernels/ipa.py). Wider C does not fit a GPU: the CUDA backend runs it.
_TRITON_SHARED_MEMORY = {16: 40 << 10, 32: 40 << 10, 64: 40 << 10, 128: 144 << 10}


def _triton_supports(t: Tensor) -> bool:
    if t.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return False
    if t.device.type == "cpu":  # Triton's interpreter (TRITON_INTERPRET=1) runs them on CPU tensors: how CI tests them
        return os.environ.get("TRITON_INTERPRET") == "1"
    if not t.is_cuda:
        return False
    padded = max(16, 1 << (t.shape[-1] - 1).bit_length())
    available = getattr(torch.cuda.get_device_properties(t.device), "shared_memory_per_block_optin", 48 << 10)
    return padded in _TRITON_SHARED_MEMORY and _TRITON_SHARED_MEMORY[padded] <= available


if importlib.util.find_spec("triton") is not None:
    backends.register(
        "ipa", "triton", _fused(_ipa_forward_triton), supports=_triton_supports, automatic=lambda t: t.is_cuda
    )


def ipa(
    a: Tensor,
    b: Tensor,
    relation_fc1_weight: Tensor,
    relation_fc1_bias: Tensor,
    relation_fc2_weight: Tensor,
    relation_fc2_bias: Tensor,
    in_proj_weight_ab: Tensor,
    in_proj_bias_ab: Tensor,
    out_proj_weight_ab: Tensor,
    out_proj_bias_ab: Tensor,
    in_proj_weight_ba: Tensor,
    in_proj_bias_ba: Tensor,
    out_proj_weight_ba: Tensor,
    out_proj_bias_ba: Tensor,
    k_noise: Tensor,
    v_noise: Tensor,
    num_heads: int,
) -> tuple[Tensor, Tensor]:
    """IPA of token tensors ``a, b`` (N, L, C) for both directions; see :func:`tita_fast.reference.ipa_reference`."""
    if a.dim() != 3 or a.shape != b.shape:
        raise ValueError(
            f"IPA expects two (N, L, C) token tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.dtype != b.dtype or a.device != b.device:
        raise ValueError(f"IPA inputs differ: {a.dtype} on {a.device} and {b.dtype} on {b.device}")
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
