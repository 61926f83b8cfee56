"""The window-attention op (ops/window_attention.py) against the published algorithm, on every backend: the
reference's chunked custom op (with autograd) and scaled_dot_product_attention path (without), and the compiled
CPU forward and backward kernels (cpu); masks, chunking, dtypes, odd shapes, errors, registration."""

from __future__ import annotations

import sys

import pytest
import torch

import tita_fast
from tests.conftest import rel_err
from tita_fast.baseline import published_ops
from tita_fast.nn.swin import shift_mask, shift_window_mask
from tita_fast.ops.window_attention import ShiftMask, window_attention
from tita_fast.reference.published import window_attention_published

window_attention_module = sys.modules["tita_fast.ops.window_attention"]
CPU = torch.device("cpu")
BACKENDS = [b for b in ("reference", "cpu") if b in tita_fast.available_backends()]
needs_cpu_kernel = pytest.mark.skipif(
    "cpu" not in tita_fast.available_backends(), reason="the compiled CPU kernels are not built in this installation"
)


def inputs(images, grid, window=4, heads=3, d=5, dtype=torch.float64, seed=0):
    """q, k, v (images * windows, T, heads, d) requiring grad, and a bias (heads, T, T) requiring grad."""
    g = torch.Generator().manual_seed(seed)
    tokens, windows = window * window, images * grid[0] * grid[1]
    qkv = torch.randn(3, windows, tokens, heads, d, generator=g, dtype=dtype)
    bias = 0.5 * torch.randn(heads, tokens, tokens, generator=g, dtype=dtype)
    return [t.clone().requires_grad_() for t in (*qkv, bias)]


def mask_for(grid, window=4):
    return shift_mask(grid[0] * window, grid[1] * window, window, window // 2, CPU)


def run_with_grads(fn, q, k, v, bias, mask, scale, grad):
    out = fn(q, k, v, bias, mask, scale)
    grads = torch.autograd.grad(out, (q, k, v, bias), grad)
    return out.detach(), grads


# Chunk budgets (bytes of float64 scores per chunk; a window's are 3 heads x 16 x 16 x 8 bytes) for 3 images of 15
# windows: single windows; 4 windows (4, 4, 4, 3 per image); 20 windows -> one whole image per chunk; 40 windows ->
# two images, then a ragged tail of one; everything in one chunk.
CHUNKINGS = [1, 4 * 3 * 16 * 16 * 8, 20 * 3 * 16 * 16 * 8, 40 * 3 * 16 * 16 * 8, 10**9]


@pytest.mark.parametrize("chunk_bytes", CHUNKINGS)
@pytest.mark.parametrize("masked", [False, True])
def test_chunked_op_equals_the_published_algorithm_float64(monkeypatch, chunk_bytes, masked):
    # 3 images of a 3x5 window grid: N > 1, a grid that is not square, windows per image (15) coprime to most
    # chunk sizes. Tolerance: float64 rounding of a softmax over 16 scores (summation order differs).
    monkeypatch.setattr(window_attention_module, "CHUNK_BYTES", chunk_bytes)
    grid = (3, 5)
    q, k, v, bias = inputs(3, grid)
    mask = mask_for(grid) if masked else None
    grad = torch.randn(q.shape, dtype=q.dtype, generator=torch.Generator().manual_seed(5))
    with tita_fast.use_backend("reference"):
        out, grads = run_with_grads(window_attention, q, k, v, bias, mask, 0.4, grad)
    expected, expected_grads = run_with_grads(window_attention_published, q, k, v, bias, mask, 0.4, grad)
    assert rel_err(out, expected) <= 1e-13
    for got, want in zip(grads, expected_grads, strict=True):
        assert rel_err(got, want) <= 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("masked", [False, True])
def test_inference_path_equals_the_published_algorithm(masked, backend):
    grid = (3, 5)
    q, k, v, bias = (t.detach() for t in inputs(2, grid))
    mask = mask_for(grid) if masked else None
    with torch.no_grad(), tita_fast.use_backend(backend):
        out = window_attention(q, k, v, bias, mask, 0.4)
    assert rel_err(out, window_attention_published(q, k, v, bias, mask, 0.4)) <= 1e-13


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_of_the_chunked_op(monkeypatch, backend):
    monkeypatch.setattr(window_attention_module, "CHUNK_BYTES", 4 * 2 * 16 * 16 * 8)  # 4 windows: 2 chunks per image
    grid = (2, 3)
    q, k, v, bias = inputs(2, grid, heads=2, d=3)
    mask = mask_for(grid)
    with tita_fast.use_backend(backend):
        assert torch.autograd.gradcheck(lambda *t: window_attention(*t, mask, 0.7), (q, k, v, bias))


@pytest.mark.parametrize(
    "dtype, tolerance, backend",
    [(torch.float32, 1e-5, b) for b in BACKENDS] + [(torch.bfloat16, 2e-2, "reference")],
)
def test_lower_precision_against_float64(dtype, tolerance, backend):
    # float32: a few ulps of rounding through two products and a softmax; bfloat16 (8-bit mantissa, ~4e-3 per
    # rounding): inputs and output rounded, scores and softmax computed in float32.
    grid = (2, 3)
    q, k, v, bias = inputs(2, grid)
    mask = mask_for(grid)
    grad = torch.randn(q.shape, dtype=q.dtype, generator=torch.Generator().manual_seed(5))
    expected, expected_grads = run_with_grads(window_attention_published, q, k, v, bias, mask, 0.4, grad)
    low = [t.detach().to(dtype).requires_grad_() for t in (q, k, v, bias)]
    with tita_fast.use_backend(backend):
        out, grads = run_with_grads(window_attention, *low, mask, 0.4, grad.to(dtype))
        assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
        assert rel_err(out.double(), expected) <= tolerance
        for got, want in zip(grads, expected_grads, strict=True):
            assert rel_err(got.double(), want) <= 2 * tolerance
        with torch.no_grad():
            assert rel_err(window_attention(*low, mask, 0.4).double(), expected) <= tolerance


def test_blocking_mask_is_minus_infinity_exactly_where_the_published_one_is_not_zero():
    # The op blocks masked scores with -inf (weights exactly 0) where the published -100 leaves weights ~e^-100;
    # the outputs agree to float64 rounding (test above); here, the blocking mask itself.
    mask = mask_for((3, 3))
    published, blocking = mask.dense(), mask.blocking().dense()
    assert torch.equal(blocking == float("-inf"), published == -100) and torch.equal(blocking == 0, published == 0)


@pytest.mark.parametrize("grid", [(1, 1), (1, 4), (4, 1), (3, 5), (6, 6)])
def test_shift_mask_holds_every_masked_window(grid):
    window, shift = 4, 2
    height, width = grid[0] * window, grid[1] * window
    mask = shift_mask(height, width, window, shift, CPU)
    full = shift_window_mask(height, width, window, shift)
    assert mask.n_windows == grid[0] * grid[1]
    assert torch.equal(mask.dense(), full)
    untouched = torch.ones(mask.n_windows, dtype=torch.bool)
    untouched[mask.index] = False
    assert not full[untouched].any()
    assert shift_mask(height, width, window, shift, CPU) is mask  # built once


def test_custom_op_registration_passes_opcheck():
    grid = (2, 3)
    q, k, v, bias = inputs(2, grid, heads=2, d=3)
    q, k, v = (t.detach().transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v))
    dense = mask_for(grid).blocking().dense()
    op = torch.ops.tita_fast.window_attention.default  # heads-major (B_, heads, T, d) inputs
    torch.library.opcheck(op, (q, k, v, bias, dense, 0.5))
    torch.library.opcheck(op, (q, k, v, bias, None, 0.5))


# -- the compiled CPU kernel on its own --------------------------------------------------------------------------


def strided_inputs(windows, window, heads, d, dtype, seed=0):
    """q, k, v as the model makes them: views (windows, T, heads, d) into one (windows, T, 3, heads, d) tensor."""
    g = torch.Generator().manual_seed(seed)
    tokens = window * window
    qkv = torch.randn(windows, tokens, 3, heads, d, generator=g, dtype=torch.float64)
    bias = torch.randn(heads, tokens, tokens, generator=g, dtype=torch.float64)
    q, k, v = qkv.to(dtype).unbind(2)
    return q, k, v, bias.to(dtype)


# Tokens per window 9, 25, 49, 64 against the kernel's 16 (float32) / 8 (float64) query lanes: padded blocks;
# head dims 1 to 17; several images.
SHAPES = [(2, 3, 2, 5, 1), (3, 2, 5, 1, 4), (1, 2, 7, 3, 17), (2, 1, 8, 6, 10)]  # images, grid side, window, heads, d


@needs_cpu_kernel
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-13), (torch.float32, 1e-5)])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("masked", [False, True])
def test_cpu_kernel_equals_the_published_algorithm(dtype, tolerance, shape, masked):
    # float64: rounding only (summation order). float32: a few ulps of rounding of d-term dot products, a
    # softmax over up to 64 scores of magnitude ~10 (inputs ~N(0,1), bias ~N(0,1)) and the exp polynomial (~1 ulp).
    images, side, window, heads, d = shape
    q, k, v, bias = strided_inputs(images * side * side, window, heads, d, dtype)
    mask = shift_mask(side * window, side * window, window, window // 2, CPU) if masked and side > 1 else None
    expected = window_attention_published(*(t.double() for t in (q, k, v, bias)), mask, d**-0.5)
    with torch.no_grad(), tita_fast.use_backend("cpu"):
        out = window_attention(q, k, v, bias, mask, d**-0.5)
    assert out.dtype == dtype and out.is_contiguous()
    assert rel_err(out, expected) <= tolerance


@needs_cpu_kernel
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("masked", [False, True])
def test_cpu_kernel_gradients_equal_the_published_algorithm(dtype, tolerance, shape, masked):
    # Gradients of q, k, v (strided views of one tensor, as in the model) and the bias (summed over windows and
    # images). float32: the forward's rounding (above) through one more product and a sum over up to 12 windows.
    images, side, window, heads, d = shape
    q, k, v, bias = (t.requires_grad_() for t in strided_inputs(images * side * side, window, heads, d, dtype))
    mask = shift_mask(side * window, side * window, window, window // 2, CPU) if masked and side > 1 else None
    grad = torch.randn(q.shape, dtype=dtype, generator=torch.Generator().manual_seed(3))
    expected, expected_grads = run_with_grads(
        window_attention_published, *(t.detach().double().requires_grad_() for t in (q, k, v, bias)), mask,
        d**-0.5, grad.double(),
    )  # fmt: skip
    with tita_fast.use_backend("cpu"):
        out, grads = run_with_grads(window_attention, q, k, v, bias, mask, d**-0.5, grad)
    assert rel_err(out, expected) <= tolerance
    for got, want in zip(grads, expected_grads, strict=True):
        assert got.dtype == dtype and rel_err(got, want) <= tolerance


@pytest.mark.parametrize("backend", [b for b in ("triton", "cuda") if b in tita_fast.available_backends()])
def test_gpu_backends_run_the_reference_window_attention(backend, monkeypatch):
    # They have no window-attention kernel: selecting one for a whole model must not fail on the attention.
    calls = []
    reference = window_attention_module._reference
    monkeypatch.setattr(window_attention_module, "_reference", lambda *a: calls.append(1) or reference(*a))
    q, k, v, bias = (t.detach() for t in inputs(1, (2, 2)))
    with tita_fast.use_backend(backend), torch.no_grad():
        out = window_attention(q, k, v, bias, None, 0.5)
    assert calls and rel_err(out, window_attention_published(q, k, v, bias, None, 0.5)) <= 1e-13


@needs_cpu_kernel
def test_cpu_kernel_has_no_double_backward():
    q, k, v, bias = (t.requires_grad_() for t in strided_inputs(2, 2, 2, 3, torch.float64))
    with tita_fast.use_backend("cpu"):
        out = window_attention(q, k, v, bias, None, 0.5)
    with pytest.raises(NotImplementedError, match="no double backward"):
        torch.autograd.grad(out.sum(), q, create_graph=True)


@needs_cpu_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_kernel_softmax_over_extreme_scores(dtype):
    # Scores far below the row maximum (-30, -87, -88, -1000 and -inf apart) underflow to exactly 0 where the true
    # weight is below ~1e-38, else keep their relative precision; a row dominated by one score gives its value.
    q, k, v, bias = strided_inputs(4, 4, 2, 3, dtype, seed=1)
    bias = bias.clone()
    bias[0, :, 3], bias[0, :, 5], bias[0, :, 7], bias[1, :, 2] = -30.0, -87.0, -88.0, -1000.0
    bias[1, :, 9] = float("-inf")
    bias[1, 4, :] = -1000.0
    bias[1, 4, 6] = 50.0
    expected = window_attention_published(*(t.double() for t in (q, k, v, bias)), None, 0.5)
    with torch.no_grad(), tita_fast.use_backend("cpu"):
        out = window_attention(q, k, v, bias, None, 0.5)
    assert torch.isfinite(out).all()
    assert rel_err(out, expected) <= (1e-13 if dtype == torch.float64 else 1e-5)
    assert torch.equal(out[:, 4, 1], v[:, 6, 1])  # the dominating key's value, exactly


@needs_cpu_kernel
def test_cpu_kernel_registration_and_empty_input():
    q, k, v, bias = (t.requires_grad_() for t in strided_inputs(6, 4, 2, 3, torch.float64))
    mask = shift_mask(8, 12, 4, 2, CPU).blocking()
    rows = torch.full((6,), -1, dtype=torch.long)
    rows[mask.index] = torch.arange(mask.index.numel())
    op = torch.ops.tita_fast.window_attention_forward.default
    torch.library.opcheck(op, (q, k, v, bias, mask.values.double(), rows, 0.5))
    torch.library.opcheck(op, (q, k, v, bias, None, None, 0.5))
    with torch.no_grad():
        assert op(q[:0], k[:0], v[:0], bias, None, None, 0.5).shape == (0, 16, 2, 3)


@needs_cpu_kernel
def test_cpu_kernel_refuses_bad_inputs():
    q, k, v, bias = strided_inputs(4, 4, 2, 3, torch.float32)
    op = torch.ops.tita_fast.window_attention_forward
    values = torch.zeros(1, 16, 16)
    with pytest.raises(RuntimeError, match="supports float32 and float64"):
        op(q.half(), k.half(), v.half(), bias.half(), None, None, 0.5)
    with pytest.raises(RuntimeError, match="one shape"):
        op(q, k[:1], v, bias, None, None, 0.5)
    with pytest.raises(RuntimeError, match="share device and dtype"):
        op(q, k, v, bias.double(), None, None, 0.5)
    with pytest.raises(RuntimeError, match="bias must be"):
        op(q, k, v, bias[:1], None, None, 0.5)
    with pytest.raises(RuntimeError, match="go together"):
        op(q, k, v, bias, values, None, 0.5)
    with pytest.raises(RuntimeError, match="mask_index must be"):
        op(q, k, v, bias, values, torch.zeros(3, dtype=torch.long), 0.5)  # 3 does not divide 4 windows
    with pytest.raises(RuntimeError, match="out of range"):
        op(q, k, v, bias, values, torch.tensor([0, 1]), 0.5)
    with pytest.raises(RuntimeError, match="backend .cpu. cannot run window_attention"):
        with tita_fast.use_backend("cpu"), torch.no_grad():
            window_attention(*(t.bfloat16() for t in (q, k, v, bias)), None, 0.5)


def test_bad_inputs_are_refused():
    q, k, v, bias = (t.detach() for t in inputs(2, (2, 2)))
    with pytest.raises(ValueError, match="one shape"):
        window_attention(q, k[:1], v, bias, None, 0.5)
    with pytest.raises(ValueError, match="bias must be"):
        window_attention(q, k, v, bias[:1], None, 0.5)
    with pytest.raises(ValueError, match="shift mask is for 3 windows"):
        window_attention(q, k, v, bias, ShiftMask(3, torch.tensor([0]), torch.zeros(1, 16, 16)), 0.5)


def test_attention_dropout_in_training_runs_the_published_algorithm():
    torch.manual_seed(0)
    block = tita_fast.nn.swin.SwinBlock(12, (8, 8), 3, 4, 2, attn_drop=0.5).double().train()
    x = torch.rand(2, 64, 12, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(1)
    out = block(x, (8, 8))
    out.sum().backward()
    torch.manual_seed(1)
    with published_ops():
        expected = block(x, (8, 8))
    assert torch.equal(out, expected)  # the same dropout draws: the same path
    block.eval()
    assert not torch.equal(block(x, (8, 8)), out)  # and dropout was active
