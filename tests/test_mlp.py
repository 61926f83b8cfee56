"""The residual-MLP op (ops/mlp.py), ``x + scale * fc2(GELU(fc1(LayerNorm(x))))``, on every backend against the
modules it replaces: dtypes, ragged tiles, N > 1, strided and aliased outputs, autograd, errors, torch.compile."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

import tita_fast
from tests.conftest import rel_err
from tita_fast.nn.layers import Mlp
from tita_fast.ops.mlp import residual_mlp

BACKENDS = [b for b in ("reference", "cpu") if b in tita_fast.available_backends()]
needs_cpu_kernel = pytest.mark.skipif(
    "cpu" not in tita_fast.available_backends(), reason="the compiled CPU kernels are not built in this installation"
)


def modules(C, hidden, dtype, seed=0):
    torch.manual_seed(seed)
    norm, mlp = nn.LayerNorm(C).to(dtype), Mlp(C, hidden, C).to(dtype)
    with torch.no_grad():  # LayerNorm starts as the identity affine map: make it count
        norm.weight.uniform_(0.5, 1.5), norm.bias.uniform_(-0.5, 0.5)
    return norm, mlp


def params(norm, mlp):
    return norm.weight, norm.bias, norm.eps, mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias


def expected(x, norm, mlp, scale):
    branch = mlp(norm(x))
    return x + (branch if scale is None else branch * scale)


# Tokens 1, 37 (less than a tile), 600 (two whole tiles of 256 and a ragged one); C and hidden not multiples of any
# vector width (7, 13) and TITA's (60, 120).
SHAPES = [(1, 1, 7, 13), (3, 37, 7, 13), (2, 600, 60, 120)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_scale", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-13), (torch.float32, 2e-6)])
def test_equals_the_modules(backend, with_scale, shape, dtype, tolerance):
    # float64: rounding only (LayerNorm's reduction and the products' summation order differ). float32: a few
    # ulps through LayerNorm and two products of <= 120 terms, relative to the output's range.
    n, length, C, hidden = shape
    norm, mlp = modules(C, hidden, dtype)
    x = torch.randn(n, length, C, dtype=dtype)
    scale = torch.rand(n, 1, 1, dtype=dtype) if with_scale else None
    out = torch.empty_like(x)
    with torch.no_grad(), tita_fast.use_backend(backend):
        returned = residual_mlp(x, *params(norm, mlp), scale, out)
        reference = expected(x, norm, mlp, scale)
    assert returned is out
    assert rel_err(out, reference) <= tolerance


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_input_and_output_views_and_in_place(backend):
    # What the blocks pass: a piece of a token map of several images (rows strided across images), written into
    # the same piece of another map; and x itself as out.
    norm, mlp = modules(60, 120, torch.float64)
    whole_x, whole_out = torch.randn(3, 500, 60, dtype=torch.float64), torch.zeros(3, 500, 60, dtype=torch.float64)
    piece = slice(100, 389)
    with torch.no_grad(), tita_fast.use_backend(backend):
        residual_mlp(whole_x[:, piece], *params(norm, mlp), None, whole_out[:, piece])
        reference = expected(whole_x[:, piece], norm, mlp, None)
        assert rel_err(whole_out[:, piece], reference) <= 1e-13
        assert whole_out[:, :100].abs().max() == 0 and whole_out[:, 389:].abs().max() == 0  # nothing else written
        x = whole_x.clone()
        residual_mlp(x, *params(norm, mlp), None, x)
        assert rel_err(x, expected(whole_x, norm, mlp, None)) <= 1e-13


@pytest.mark.parametrize("backend", BACKENDS)
def test_with_autograd_gradients_are_the_modules(backend):
    # The compiled op has no backward: with autograd recording every backend runs the differentiable torch ops.
    norm, mlp = modules(7, 13, torch.float64)
    x = torch.randn(2, 9, 7, dtype=torch.float64, requires_grad=True)
    scale = torch.rand(2, 1, 1, dtype=torch.float64)  # stochastic depth's per-image factors, as in training
    with tita_fast.use_backend(backend):
        out = residual_mlp(x, *params(norm, mlp), scale, torch.empty(2, 9, 7, dtype=torch.float64))
    grads = torch.autograd.grad(out.sum(), (x, mlp.fc1.weight, norm.weight))
    want = torch.autograd.grad(expected(x, norm, mlp, scale).sum(), (x, mlp.fc1.weight, norm.weight))
    for got, ref in zip(grads, want):
        assert rel_err(got, ref) <= 1e-13


@pytest.mark.parametrize("backend", BACKENDS)
def test_under_autocast_the_torch_ops_run_in_their_autocast_dtypes(backend):
    # The residual stream is float32 under autocast; fc1 and fc2 run in bfloat16 there, as in the modules.
    norm, mlp = modules(60, 120, torch.float32)
    x = torch.randn(2, 300, 60)
    out = torch.empty_like(x)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), tita_fast.use_backend(backend):
        residual_mlp(x, *params(norm, mlp), None, out)
        reference = expected(x, norm, mlp, None)
    assert torch.equal(out, reference)
    assert rel_err(out, expected(x, norm, mlp, None)) > 1e-4  # bfloat16 products: not the float32 result


@needs_cpu_kernel
def test_cpu_kernel_is_the_default_on_cpu_and_refuses_what_it_cannot_run():
    norm, mlp = modules(7, 13, torch.float32)
    x = torch.randn(1, 5, 7)
    assert tita_fast.backends.choose("residual_mlp", x) is sys.modules["tita_fast.ops.mlp"]._compiled
    with torch.no_grad(), tita_fast.use_backend("cpu"):
        with pytest.raises(RuntimeError, match="cannot run residual_mlp on cpu torch.bfloat16"):
            bf = x.bfloat16()
            residual_mlp(bf, *params(norm.bfloat16(), mlp.bfloat16()), None, torch.empty_like(bf))
    norm, mlp = modules(7, 13, torch.float32)
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="parameters must be CPU tensors of the input's dtype"):
            residual_mlp(x, *params(norm, modules(7, 13, torch.float64)[1]), None, torch.empty_like(x))
        with pytest.raises(RuntimeError, match="scale must hold one Float factor per image"):
            residual_mlp(x, *params(norm, mlp), torch.ones(2, 1, 1), torch.empty_like(x))
        with pytest.raises(RuntimeError, match="fc1 \\(hidden, C\\)"):
            residual_mlp(torch.randn(1, 5, 8), *params(norm, mlp), None, torch.empty(1, 5, 8))


def test_shape_errors_are_clear():
    norm, mlp = modules(7, 13, torch.float32)
    with pytest.raises(ValueError, match="one shape \\(N, L, C\\)"):
        residual_mlp(torch.randn(5, 7), *params(norm, mlp), None, torch.empty(5, 7))
    with pytest.raises(ValueError, match="one shape \\(N, L, C\\)"):
        residual_mlp(torch.randn(1, 5, 7), *params(norm, mlp), None, torch.empty(1, 6, 7))


def test_torch_compile_traces_the_inference_path_without_graph_breaks():
    # Without autograd the blocks call the op with out = a slice of the block's output map (a mutated view).
    torch.manual_seed(0)
    config = {"img_size": 16, "embed_dim": 12, "Ex_depths": [2], "Fusion_depths": [2], "Re_depths": [2],
              "Ex_num_heads": [2], "Fusion_num_heads": [3], "Re_num_heads": [2], "window_size": 8}  # fmt: skip
    model = tita_fast.TITA(**config).double().eval()
    a, b = torch.rand(2, 2, 1, 16, 24, dtype=torch.float64).unbind(0)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert rel_err(compiled(a, b), model(a, b)) <= 1e-12
