"""Fused OAF mixing backends (C++ CPU, CUDA, Triton) against the reference and the golden files.

Each case is compared with the float64 reference on the same (rounded) inputs: forward and the gradients of
all nine differentiable inputs. Tolerances, relative to the largest magnitude of the expected tensor (as in
test_golden):

* float64 (CPU, CUDA): 1e-12. Same sums in another order (the filter normalised in one step, the backward
  gather); observed <= 2e-15.
* float32: 2e-5 (observed <= 1e-6 on the CPU backend): unit roundoff 6e-8 grown through 9-tap sums, the
  softmax, and sums over C channels (filter gradients) or C*H*W terms (mix-weight gradients, accumulated in
  float64 on CPU, float32 partials on GPU).
* float16 / bfloat16 (Triton, CUDA): the kernels accumulate in float32 and round once on output, so the error
  is about one output rounding (unit roundoff 4.9e-4 / 3.9e-3): bounds 4e-3 / 2.4e-2.
"""

from __future__ import annotations

import pytest
import torch

import tita_fast
from tests.conftest import rel_err
from tests.test_golden import assert_param_grads, run_oaf, run_tita
from tita_fast import backends, ops
from tita_fast.nn.oaf import hamming_3x3

FUSED = [name for name in ("cpu", "triton", "cuda") if name in tita_fast.available_backends()]
TOLERANCE = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 2.4e-2}
DTYPES = {
    "cpu": [torch.float64, torch.float32],
    "triton": [torch.float32, torch.float16, torch.bfloat16],
    "cuda": [torch.float64, torch.float32, torch.float16, torch.bfloat16],
}
# (N, C, H, W): the smallest sides reflect padding allows, odd sizes, one channel, C = 60, batches of 2 and 3.
SHAPES = [(1, 3, 2, 2), (2, 5, 2, 7), (1, 4, 7, 2), (2, 3, 9, 11), (3, 1, 3, 3), (1, 60, 6, 5)]
DIFFERENTIABLE = [0, 1, 2, 3, 4, 5, 6, 7, 10]  # every input but the hamming windows
NAMES = ["x", "y", "logits_x", "logits_y", "residual_x", "residual_y", "multiplier_x", "multiplier_y", "mix_weights"]


def device_for(backend: str) -> str:
    return "cuda" if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()) else "cpu"


def random_inputs(n, c, h, w, dtype, device, seed=0):
    """Op inputs at trained-network magnitudes: peaked filters (logits ~ 2), softmax mix weights."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=gen, dtype=torch.float64)).to(device, dtype)

    maps = [randn(n, c, h, w), randn(n, c, h, w), randn(n, 9, h, w, scale=2), randn(n, 9, h, w, scale=2)]
    maps += [randn(n, c, h, w) for _ in range(4)]
    hamming = hamming_3x3().to(device, dtype)
    return [*maps, hamming, hamming.clone(), randn(n, 6).softmax(-1)]


def forward_backward(inputs, backend):
    leaves = [t.detach().requires_grad_(i in DIFFERENTIABLE) for i, t in enumerate(inputs)]
    with tita_fast.use_backend(backend):
        out = ops.oaf_mix(*leaves)
    # bfloat16-rounded weights: the same values in every dtype compared
    weight = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).to(torch.bfloat16).view_as(out)
    loss = (out * weight.to(out)).sum() + (out**2).sum() / 2
    grads = torch.autograd.grad(loss, [leaves[i] for i in DIFFERENTIABLE])
    return [out, *grads]


def assert_matches_reference(inputs, backend, dtype):
    actual = forward_backward(inputs, backend)
    expected = forward_backward([t.double() for t in inputs], "reference")
    for name, x, y in zip(["out", *NAMES], actual, expected, strict=True):
        assert x.dtype == dtype and x.shape == y.shape, name
        assert rel_err(x, y) <= TOLERANCE[dtype], (name, dtype, rel_err(x, y))


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference_forward_and_all_gradients(backend, shape):
    for dtype in DTYPES[backend]:
        assert_matches_reference(random_inputs(*shape, dtype, device_for(backend)), backend, dtype)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_channels_last_and_strided_inputs(backend, layout):
    dtype = torch.float32
    inputs = random_inputs(2, 6, 5, 7, dtype, device_for(backend))
    if layout == "channels_last":
        inputs = [t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t for t in inputs]
    else:  # every map a view into a twice-as-wide tensor, mix weights a column slice
        inputs = [torch.cat([t, t], dim=-1)[..., ::2] if t.dim() == 4 else t for t in inputs]
        inputs[10] = torch.cat([inputs[10], inputs[10]], dim=1)[:, ::2]
        assert not inputs[0].is_contiguous() and not inputs[10].is_contiguous()
    assert_matches_reference(inputs, backend, dtype)


@pytest.mark.parametrize("backend", FUSED)
def test_golden_oaf_case(backend):
    dtype = torch.float64 if backend != "triton" else torch.float32
    with tita_fast.use_backend(backend):
        golden, actual, params = run_oaf(dtype, device_for(backend))
    bound = 1e-9 if dtype == torch.float64 else 1e-5  # test_golden's bounds
    for name, value in actual.items():
        assert rel_err(value, golden[name]) <= bound, name
    assert_param_grads(golden["grad_params"], params, bound)


@pytest.mark.skipif("cpu" not in FUSED, reason="the C++ extension is not built")
def test_whole_network_with_fused_oaf_matches_golden(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    calls = []
    cpu = backends._registry["oaf_mix"]["cpu"]
    counted = backends.Implementation(lambda *args: calls.append(1) or cpu.run(*args), cpu.supports)
    monkeypatch.setitem(backends._registry["oaf_mix"], "cpu", counted)
    golden, actual, params = run_tita(torch.float64)
    assert len(calls) == 1  # "auto" ran the network's OAF on the compiled kernels
    for name, value in actual.items():
        assert rel_err(value, golden[name]) <= 1e-9, name
    assert_param_grads(golden["grad_params"], params, 1e-9)


@pytest.mark.skipif("cpu" not in FUSED, reason="the C++ extension is not built")
def test_gradcheck_cpu_float64():
    inputs = random_inputs(2, 3, 3, 4, torch.float64, "cpu", seed=1)
    inputs = [t.requires_grad_(i in DIFFERENTIABLE) for i, t in enumerate(inputs)]
    assert torch.autograd.gradcheck(torch.ops.tita_fast.oaf_mix_forward, inputs, eps=1e-6, atol=1e-8)


@pytest.mark.skipif("cpu" not in FUSED, reason="the C++ extension is not built")
def test_auto_picks_the_compiled_cpu_kernels_for_cpu_float_tensors(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    for dtype in (torch.float32, torch.float64):
        assert backends.choose("oaf_mix", torch.empty(1, dtype=dtype)) is backends._registry["oaf_mix"]["cpu"].run
    reference = backends._registry["oaf_mix"]["reference"].run
    assert backends.choose("oaf_mix", torch.empty(1, dtype=torch.bfloat16)) is reference


@pytest.mark.skipif("cpu" not in FUSED, reason="the C++ extension is not built")
def test_torch_compile_inductor_with_the_fused_op_has_no_graph_break():
    torch.manual_seed(0)
    module = tita_fast.OAF(6)
    x, y = torch.randn(2, 6, 5, 7, requires_grad=True), torch.randn(2, 6, 5, 7)
    with tita_fast.use_backend("cpu"):
        out = torch.compile(module, fullgraph=True)(x, y)
    grad_x, grad_w = torch.autograd.grad((out**2).sum(), [x, module.fafb_A.channel_compressor.weight])
    x_ref = x.detach().requires_grad_()
    ref = module(x_ref, y)
    ref_grad_x, ref_grad_w = torch.autograd.grad((ref**2).sum(), [x_ref, module.fafb_A.channel_compressor.weight])
    for actual, expected in [(out, ref), (grad_x, ref_grad_x), (grad_w, ref_grad_w)]:
        assert rel_err(actual, expected) <= 2e-5


@pytest.mark.parametrize("backend", FUSED)
def test_empty_batch_and_no_channels(backend):
    device = device_for(backend)
    for shape in [(0, 4, 3, 3), (2, 0, 3, 3)]:
        inputs = random_inputs(*shape, torch.float32, device)
        out, *grads = forward_backward(inputs, backend)
        assert out.shape == shape
        for name, grad, i in zip(NAMES, grads, DIFFERENTIABLE, strict=True):
            assert grad.shape == inputs[i].shape, name
        assert torch.all(grads[2] == 0) and torch.all(grads[-1] == 0)  # nothing to filter, nothing to mix


@pytest.mark.parametrize("backend", FUSED)
def test_double_backward_raises_instead_of_returning_wrong_gradients(backend):
    inputs = [t.requires_grad_() for t in random_inputs(1, 2, 3, 3, torch.float32, device_for(backend))[:8]]
    rest = random_inputs(1, 2, 3, 3, torch.float32, device_for(backend))[8:]
    with tita_fast.use_backend(backend):
        out = ops.oaf_mix(*inputs, *rest)
    with pytest.raises(NotImplementedError, match="double backward"):
        torch.autograd.grad(out.sum(), inputs[0], create_graph=True)


@pytest.mark.parametrize("backend", FUSED)
def test_a_hamming_window_that_requires_grad_is_refused(backend):
    inputs = random_inputs(1, 2, 3, 3, torch.float32, device_for(backend))
    inputs[8].requires_grad_()
    with tita_fast.use_backend(backend), pytest.raises(ValueError, match="hamming windows as constants"):
        ops.oaf_mix(*inputs)


def test_bad_inputs_raise_clear_errors():
    good = random_inputs(1, 2, 3, 3, torch.float32, "cpu")
    cases = [
        ({0: torch.randn(1, 2, 1, 3), 1: torch.randn(1, 2, 1, 3)}, "H >= 2 and W >= 2"),
        ({2: torch.randn(1, 8, 3, 3)}, r"filter_logits_x must be \(1, 9, 3, 3\)"),
        ({5: torch.randn(1, 2, 3, 3, dtype=torch.float64)}, "residual_y is torch.float64"),
        ({10: torch.randn(1, 5)}, r"mix_weights must be \(1, 6\)"),
        ({9: torch.randn(8)}, "hamming windows must hold"),
    ]
    for changes, message in cases:
        inputs = [changes.get(i, t) for i, t in enumerate(good)]
        with pytest.raises(ValueError, match=message):
            ops.oaf_mix(*inputs)


@pytest.mark.skipif("cpu" not in FUSED, reason="the C++ extension is not built")
def test_compiled_op_checks_its_arguments():
    good = random_inputs(1, 2, 3, 3, torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="supports float32 and float64"):
        torch.ops.tita_fast.oaf_mix_forward(*[t.half() for t in good])
    with pytest.raises(RuntimeError, match="logits_x has shape"):
        torch.ops.tita_fast.oaf_mix_forward(*good[:2], good[0], *good[3:])
    with pytest.raises(RuntimeError, match="gradient shape"):
        torch.ops.tita_fast.oaf_mix_backward(torch.randn(1, 2, 3, 4), *good)
