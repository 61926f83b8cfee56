"""Parity of the IPA Triton kernels (tita_fast.kernels.ipa) with the PyTorch reference.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (TRITON_INTERPRET=1, which conftest.py sets
before triton is imported); on a CUDA machine they are compiled and run on the GPU.

Truth is the reference in float64 on the very inputs the kernels get (half inputs rounded first), forward and
torch.autograd gradients. Errors are max |kernel - truth| relative to the largest magnitude of the truth, per tensor:

* float32: bound 1e-5 (observed <= 1.6e-6 for C <= 96). At C = 256 the softmax over 256 channels makes the
  relation-MLP gradients cancel more: observed 6e-6, and torch's own float32 reference is 4.6e-6 off, so 2e-5.
* float64: bound 1e-12 (observed <= 2e-14).
* bfloat16 / float16: the kernels widen to fp32 and round only their results, so the error is one rounding of
  the largest value: 2**-9 = 2e-3 (bf16, round to nearest), 2**-11 = 5e-4 (fp16). Triton's interpreter however
  truncates fp32 -> bf16 (the compiled kernels round to nearest), up to 2**-8 = 3.9e-3 relative to the value, or
  7.8e-3 just above a power of two (observed 7.4e-3). Bounds 1e-2 (bf16) and 2e-3 (fp16, observed 4.7e-4).
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")

from tests.conftest import load_golden, rel_err  # noqa: E402
from tita_fast.kernels import ipa as ipa_kernels  # noqa: E402
from tita_fast.reference.ipa import ipa_reference  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRET else "cuda"
if not INTERPRET and not torch.cuda.is_available():
    pytest.skip("TRITON_INTERPRET is off and there is no CUDA device", allow_module_level=True)

TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}
OUTPUTS = ("a_new", "b_new")
GRADIENTS = ("a", "b") + ipa_kernels._PARAMETER_NAMES


def make_case(rows: int, channels: int, seed: int, dtype: torch.dtype):
    """Inputs ~ N(0, 1), parameters ~ N(0, 0.2**2) (trained-net scale), incoming gradients ~ N(0, 1), in dtype."""
    gen = torch.Generator().manual_seed(seed)
    c = channels
    shapes = [(c, 2 * c), (c,), (c, c), (c,)] + [(3 * c, c), (3 * c,), (c, c), (c,)] * 2 + [(2, c), (2, c)]
    params = [0.2 * torch.randn(shape, generator=gen, dtype=torch.float64) for shape in shapes]
    a, b, grad_a_new, grad_b_new = (torch.randn(rows, c, generator=gen, dtype=torch.float64) for _ in range(4))
    return [t.to(device=DEVICE, dtype=dtype) for t in (a, b, *params)], [
        t.to(device=DEVICE, dtype=dtype) for t in (grad_a_new, grad_b_new)
    ]


def reference(inputs, grads_new, num_heads):
    """Reference outputs and gradients in float64 on the same (already rounded) inputs."""
    inputs = [t.detach().double().requires_grad_() for t in inputs]
    outputs = ipa_reference(*inputs, num_heads)
    loss = sum((out * g.double()).sum() for out, g in zip(outputs, grads_new, strict=True))
    return outputs, torch.autograd.grad(loss, inputs)


def check(inputs, grads_new, num_heads, tolerance):
    dtype = inputs[0].dtype
    expected_out, expected_grads = reference(inputs, grads_new, num_heads)
    out = ipa_kernels.ipa_forward(*inputs, num_heads)
    grads = ipa_kernels.ipa_backward(*grads_new, *inputs, num_heads)
    assert len(grads) == len(GRADIENTS)
    for name, actual, expected in zip(OUTPUTS + GRADIENTS, out + grads, expected_out + expected_grads, strict=True):
        assert actual.dtype == dtype and actual.shape == expected.shape, name
        err = rel_err(actual, expected)
        assert err <= tolerance, f"{name}: relative error {err:.2e} > {tolerance:.0e}"


SHAPES = [(60, 6), (12, 3), (8, 8), (96, 6), (24, 1)]  # (C, heads): head_dim 10, 4, 1, 16, 24


@pytest.mark.parametrize("rows", [1, 7, 37, 70])
@pytest.mark.parametrize("channels,num_heads", SHAPES)
def test_float32(rows, channels, num_heads):
    inputs, grads_new = make_case(rows, channels, seed=rows * 1000 + channels, dtype=torch.float32)
    check(inputs, grads_new, num_heads, TOLERANCE[torch.float32])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("rows", [7, 37])
@pytest.mark.parametrize("channels,num_heads", SHAPES)
def test_other_dtypes(dtype, rows, channels, num_heads):
    inputs, grads_new = make_case(rows, channels, seed=rows * 1000 + channels + 1, dtype=dtype)
    check(inputs, grads_new, num_heads, TOLERANCE[dtype])


def test_wide_channels():
    """C = 256 (BLOCK_C 256, head_dim 32); the interpreter handles any width, a GPU's shared memory may not."""
    inputs, grads_new = make_case(5, 256, seed=5, dtype=torch.float32)
    check(inputs, grads_new, 8, 2e-5)


def test_backward_in_several_chunks(monkeypatch):
    """Weight gradients summed over launches of at most 16 pixels each (70 pixels: 5 launches, the last partial)."""
    monkeypatch.setattr(ipa_kernels, "_MAX_CHUNK_ROWS", 16)
    assert ipa_kernels._chunk_rows(70, 12, 4) == 16
    inputs, grads_new = make_case(70, 12, seed=3, dtype=torch.float32)
    check(inputs, grads_new, 3, TOLERANCE[torch.float32])


def test_no_pixels():
    inputs, grads_new = make_case(0, 12, seed=4, dtype=torch.float32)
    a_new, b_new = ipa_kernels.ipa_forward(*inputs, 3)
    grads = ipa_kernels.ipa_backward(*grads_new, *inputs, 3)
    assert a_new.shape == b_new.shape == (0, 12)
    assert all(g.shape == t.shape and not g.any() for g, t in zip(grads, inputs, strict=True))


def test_rejects_non_contiguous_and_mismatched_inputs():
    inputs, _ = make_case(8, 12, seed=6, dtype=torch.float32)
    with pytest.raises(ValueError, match="contiguous"):
        ipa_kernels.ipa_forward(inputs[0].T.contiguous().T, *inputs[1:], 3)
    with pytest.raises(ValueError, match="in_proj_weight_ab"):
        ipa_kernels.ipa_forward(*inputs[:6], inputs[6].double(), *inputs[7:], 3)
    with pytest.raises(ValueError, match="divisible"):
        ipa_kernels.ipa_forward(*inputs, 5)


def test_golden_float32():
    """The published implementation's float64 result on the golden IPA case (C=60, 6 heads, 2 x 40 tokens)."""
    golden = load_golden("ipa_case.pt")
    state = golden["state_dict"]
    keys = [
        "relation_judger.0.fc1.weight", "relation_judger.0.fc1.bias",
        "relation_judger.0.fc2.weight", "relation_judger.0.fc2.bias",
        "cross_attn_0_to_1.in_proj_weight", "cross_attn_0_to_1.in_proj_bias",
        "cross_attn_0_to_1.out_proj.weight", "cross_attn_0_to_1.out_proj.bias",
        "cross_attn_1_to_0.in_proj_weight", "cross_attn_1_to_0.in_proj_bias",
        "cross_attn_1_to_0.out_proj.weight", "cross_attn_1_to_0.out_proj.bias",
        "k_noise.weight", "v_noise.weight",
    ]  # fmt: skip
    channels = golden["dim"]

    def flat(t):
        return t.reshape(-1, channels).to(device=DEVICE, dtype=torch.float32).contiguous()

    params = [state[k].to(device=DEVICE, dtype=torch.float32).contiguous() for k in keys]
    a, b = flat(golden["x"]), flat(golden["y"])
    out = ipa_kernels.ipa_forward(a, b, *params, golden["heads"])
    grads = ipa_kernels.ipa_backward(
        flat(golden["grad_out_x"]), flat(golden["grad_out_y"]), a, b, *params, golden["heads"]
    )
    expected = [golden["out_x"], golden["out_y"], golden["grad_x"], golden["grad_y"]]
    expected += [golden["grad_params"][k] for k in keys]
    for name, actual, want in zip(("out_x", "out_y", "grad_x", "grad_y", *keys), out + grads, expected, strict=True):
        err = rel_err(actual.cpu().reshape(want.shape), want)
        assert err <= TOLERANCE[torch.float32], f"{name}: relative error {err:.2e}"
