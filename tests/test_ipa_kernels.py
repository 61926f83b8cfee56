"""Fused IPA backends (C++ CPU, CUDA, Triton) against the reference and the golden files, forward and backward.

Each case is compared with the float64 reference on the same (rounded) inputs and parameters. Tolerances,
relative to the largest magnitude of the expected tensor (as in test_golden):

* float64 (CPU, CUDA): 1e-12. The kernels compute the same sums in another order (e.g. the 2-key softmax from
  the score difference, fc1 through a + b and a - b); observed <= 1.3e-14.
* float32: 2e-5 for random cases (observed <= 4.2e-6 on the CPU backend): unit roundoff 6e-8 grown through
  sums of up to 2C terms in five chained products and a softmax. Golden file: the test_golden bound, 1e-5.
* float16 / bfloat16 (Triton, CUDA), against the reference on the same rounded inputs: the kernels
  accumulate in float32 and round once on output, so the error is about one output rounding (unit roundoff
  4.9e-4 / 3.9e-3): bounds 4e-3 / 2.4e-2. Parameter gradients are sums over pixels rounded once: same bounds.
"""

from __future__ import annotations

import pytest
import torch

import tita_fast
from tests.conftest import load_golden, rel_err
from tests.test_golden import assert_param_grads, run_ipa, run_tita
from tita_fast import _extension, backends

FUSED = [name for name in ("cpu", "triton", "cuda") if name in tita_fast.available_backends()]
TOLERANCE = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 2.4e-2}
DTYPES = {
    "cpu": [torch.float64, torch.float32],
    "triton": [torch.float32, torch.float16, torch.bfloat16],
    "cuda": [torch.float64, torch.float32, torch.float16, torch.bfloat16],
}
# (N, L, C, heads): odd token counts, a single token, one head, one channel per head, C = 60, 96 and 256.
SHAPES = [(1, 1, 8, 8), (2, 37, 12, 3), (3, 5, 96, 6), (1, 130, 60, 6), (2, 7, 24, 1), (1, 3, 256, 8)]


def device_for(backend: str) -> str:
    return "cuda" if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()) else "cpu"


def random_ipa(channels, heads, dtype, device, seed=0):
    torch.manual_seed(seed)
    module = tita_fast.IPA(channels, heads)
    with torch.no_grad():
        for p in module.parameters():  # trained-network magnitudes (~2 / sqrt(C)), not the initialisation's
            p.normal_(0, 2 / channels**0.5)
    return module.to(device=device, dtype=dtype)


def forward_backward(module, a, b, backend):
    a, b = a.detach().requires_grad_(), b.detach().requires_grad_()
    with tita_fast.use_backend(backend):
        out_a, out_b = module(a, b)
    # bfloat16-rounded weights: the same values in every dtype compared
    weight = torch.linspace(-1, 1, out_a.numel(), dtype=torch.float64).to(torch.bfloat16).view_as(out_a)
    loss = (out_a * weight.to(out_a)).sum() + (out_b**2).sum() / 2
    grads = torch.autograd.grad(loss, [a, b, *module.parameters()])
    return [out_a, out_b, *grads]


def test_the_extension_is_built_and_registers_the_cpu_backend():
    assert _extension.LOAD_ERROR is None, f"tita_fast._C did not load: {_extension.LOAD_ERROR}"
    assert "cpu" in tita_fast.available_backends()


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference_forward_and_all_gradients(backend, shape):
    n, length, channels, heads = shape
    device = device_for(backend)
    for dtype in DTYPES[backend]:
        module = random_ipa(channels, heads, dtype, device)
        a = torch.randn(n, length, channels, device=device).to(dtype)
        b = torch.randn(n, length, channels, device=device).to(dtype)
        actual = forward_backward(module, a, b, backend)
        # the reference in float64 on the same (rounded) values: the kernel's own error
        expected = forward_backward(module.double(), a.double(), b.double(), "reference")
        names = ["out_a", "out_b", "grad_a", "grad_b", *(name for name, _ in module.named_parameters())]
        for name, x, y in zip(names, actual, expected, strict=True):
            assert x.dtype == dtype and x.shape == y.shape, name
            if name.endswith("in_proj_bias"):  # its key third is exactly zero (the key bias cancels)
                assert torch.all(x[channels : 2 * channels] == 0), name
            assert rel_err(x, y) <= TOLERANCE[dtype], (name, dtype)


@pytest.mark.parametrize("backend", FUSED)
def test_golden_ipa_case(backend):
    dtype = torch.float64 if backend != "triton" else torch.float32
    device = device_for(backend)
    golden = load_golden("ipa_case.pt")
    with tita_fast.use_backend(backend):
        golden, actual, params = run_ipa(dtype, device)
    bound = 1e-9 if dtype == torch.float64 else 1e-5  # test_golden's bounds
    for name, value in actual.items():
        assert rel_err(value, golden[name]) <= bound, name
    assert_param_grads(golden["grad_params"], params, bound)


@pytest.mark.skipif("cpu" not in FUSED, reason="the C++ extension is not built")
def test_whole_network_with_fused_ipa_matches_golden(monkeypatch):
    # "auto" runs IPA (and OAF) on the compiled CPU kernels
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    calls = []
    cpu = backends._registry["ipa"]["cpu"]
    counted = backends.Implementation(lambda *args: calls.append(1) or cpu.run(*args), cpu.supports)
    monkeypatch.setitem(backends._registry["ipa"], "cpu", counted)
    golden, actual, params = run_tita(torch.float64)
    assert len(calls) == 8  # every cross block
    for name, value in actual.items():
        assert rel_err(value, golden[name]) <= 1e-9, name
    assert_param_grads(golden["grad_params"], params, 1e-9)


def op_parameters(module):
    """The module's parameters in the op's argument order (relation MLP, direction ab, direction ba, noises)."""
    relation, ab, ba = module.relation_judger[0], module.cross_attn_0_to_1, module.cross_attn_1_to_0
    return [
        relation.fc1.weight, relation.fc1.bias, relation.fc2.weight, relation.fc2.bias,
        ab.in_proj_weight, ab.in_proj_bias, ab.out_proj.weight, ab.out_proj.bias,
        ba.in_proj_weight, ba.in_proj_bias, ba.out_proj.weight, ba.out_proj.bias,
        module.k_noise.weight, module.v_noise.weight,
    ]  # fmt: skip


@pytest.mark.skipif("cpu" not in FUSED, reason="the C++ extension is not built")
def test_gradcheck_cpu_float64():
    module = random_ipa(6, 2, torch.float64, "cpu", seed=1)
    a = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    inputs = (a, b, *(p.detach().requires_grad_() for p in op_parameters(module)))
    assert torch.autograd.gradcheck(lambda *t: torch.ops.tita_fast.ipa_forward(*t, 2), inputs, eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("backend", FUSED)
def test_non_contiguous_inputs(backend):
    device = device_for(backend)
    dtype = torch.float32
    module = random_ipa(12, 3, dtype, device)
    base = torch.randn(2, 12, 9, device=device, dtype=dtype)
    a = base.transpose(1, 2)  # (2, 9, 12), channels strided
    b = torch.randn(2, 18, 12, device=device, dtype=dtype)[:, ::2]  # tokens strided
    assert not a.is_contiguous() and not b.is_contiguous()
    actual = forward_backward(module, a, b, backend)
    expected = forward_backward(module, a.contiguous(), b.contiguous(), "reference")
    for x, y in zip(actual, expected, strict=True):
        assert rel_err(x, y) <= TOLERANCE[dtype]


@pytest.mark.skipif("cpu" not in FUSED, reason="the C++ extension is not built")
def test_cpu_backend_rejects_what_it_cannot_run():
    module = tita_fast.IPA(12, 3).to(torch.bfloat16)
    x = torch.randn(1, 4, 12, dtype=torch.bfloat16)
    with tita_fast.use_backend("cpu"), pytest.raises(RuntimeError, match="cannot run ipa on cpu torch.bfloat16"):
        module(x, x)
    ordered = [p.detach().float() for p in op_parameters(module)]
    with pytest.raises(RuntimeError, match="not divisible by num_heads"):
        torch.ops.tita_fast.ipa_forward(x.float()[0], x.float()[0], *ordered, 5)
    with pytest.raises(RuntimeError, match="expected a and b of one shape"):
        torch.ops.tita_fast.ipa_forward(x.float()[0], x.float()[0, :2], *ordered, 3)
    with pytest.raises(RuntimeError, match="parameter 0 has shape"):
        torch.ops.tita_fast.ipa_forward(x.float()[0], x.float()[0], ordered[2], *ordered[1:], 3)


def test_auto_picks_the_compiled_cpu_kernels_for_cpu_float_tensors(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    if "cpu" not in FUSED:
        pytest.skip("the C++ extension is not built")
    for dtype in (torch.float32, torch.float64):
        assert backends.choose("ipa", torch.empty(1, dtype=dtype)) is backends._registry["ipa"]["cpu"].run
    # no compiled CPU kernel for half types: the reference (never the Triton interpreter)
    assert backends.choose("ipa", torch.empty(1, dtype=torch.bfloat16)) is backends._registry["ipa"]["reference"].run


@pytest.mark.skipif("cpu" not in FUSED, reason="the C++ extension is not built")
def test_torch_compile_inductor_with_the_fused_op_has_no_graph_break():
    module = random_ipa(12, 3, torch.float32, "cpu")
    a, b = torch.randn(2, 5, 12, requires_grad=True), torch.randn(2, 5, 12)
    with tita_fast.use_backend("cpu"):
        out_a, out_b = torch.compile(module, fullgraph=True)(a, b)
    grad_a, grad_w = torch.autograd.grad(out_a.sum() + (out_b**2).sum(), [a, module.k_noise.weight])
    a_ref = a.detach().requires_grad_()
    ref_a, ref_b = module(a_ref, b)
    ref_grad_a, ref_grad_w = torch.autograd.grad(ref_a.sum() + (ref_b**2).sum(), [a_ref, module.k_noise.weight])
    for x, y in [(out_a, ref_a), (out_b, ref_b), (grad_a, ref_grad_a), (grad_w, ref_grad_w)]:
        assert rel_err(x, y) <= 2e-5


@pytest.mark.parametrize("backend", FUSED)
def test_no_tokens(backend):
    device = device_for(backend)
    module = random_ipa(12, 3, torch.float32, device)
    a = torch.randn(2, 0, 12, device=device, requires_grad=True)
    with tita_fast.use_backend(backend):
        out_a, out_b = module(a, a)
    assert out_a.shape == (2, 0, 12) and out_b.shape == (2, 0, 12)
    (out_a.sum() + out_b.sum()).backward()
    assert a.grad.shape == a.shape and torch.all(module.k_noise.weight.grad == 0)


def test_inputs_of_different_dtypes_are_rejected():
    with pytest.raises(ValueError, match="IPA inputs differ"):
        tita_fast.IPA(12, 3)(torch.randn(1, 2, 12), torch.randn(1, 2, 12, dtype=torch.float64))


@pytest.mark.parametrize("backend", FUSED)
def test_double_backward_raises_instead_of_returning_wrong_gradients(backend):
    device = device_for(backend)
    module = random_ipa(12, 3, torch.float32, device)
    a = torch.randn(1, 4, 12, device=device, requires_grad=True)
    with tita_fast.use_backend(backend):
        out_a, _ = module(a, a)
    with pytest.raises(NotImplementedError, match="double backward"):
        torch.autograd.grad(out_a.sum(), a, create_graph=True)
