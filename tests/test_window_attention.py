"""The window-attention op (ops/window_attention.py) against the published algorithm: chunked custom op (with
autograd) and scaled_dot_product_attention path (without), masks, chunking, dtypes, errors, registration."""

from __future__ import annotations

import sys

import pytest
import torch

import tita_fast
from tests.conftest import rel_err
from tita_fast.nn.swin import shift_mask, shift_window_mask
from tita_fast.ops.window_attention import ShiftMask, window_attention
from tita_fast.reference.published import window_attention_published

window_attention_module = sys.modules["tita_fast.ops.window_attention"]
CPU = torch.device("cpu")


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
    out, grads = run_with_grads(window_attention, q, k, v, bias, mask, 0.4, grad)
    expected, expected_grads = run_with_grads(window_attention_published, q, k, v, bias, mask, 0.4, grad)
    assert rel_err(out, expected) <= 1e-13
    for got, want in zip(grads, expected_grads, strict=True):
        assert rel_err(got, want) <= 1e-12


@pytest.mark.parametrize("masked", [False, True])
def test_inference_path_equals_the_published_algorithm(masked):
    grid = (3, 5)
    q, k, v, bias = (t.detach() for t in inputs(2, grid))
    mask = mask_for(grid) if masked else None
    with torch.no_grad():
        out = window_attention(q, k, v, bias, mask, 0.4)
    assert rel_err(out, window_attention_published(q, k, v, bias, mask, 0.4)) <= 1e-13


def test_gradcheck_of_the_chunked_op(monkeypatch):
    monkeypatch.setattr(window_attention_module, "CHUNK_BYTES", 4 * 2 * 16 * 16 * 8)  # 4 windows: 2 chunks per image
    grid = (2, 3)
    q, k, v, bias = inputs(2, grid, heads=2, d=3)
    mask = mask_for(grid)
    assert torch.autograd.gradcheck(lambda *t: window_attention(*t, mask, 0.7), (q, k, v, bias))


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_lower_precision_against_float64(dtype, tolerance):
    # float32: a few ulps of rounding through two products and a softmax; bfloat16 (8-bit mantissa, ~4e-3 per
    # rounding): inputs and output rounded, scores and softmax computed in float32.
    grid = (2, 3)
    q, k, v, bias = inputs(2, grid)
    mask = mask_for(grid)
    grad = torch.randn(q.shape, dtype=q.dtype, generator=torch.Generator().manual_seed(5))
    expected, expected_grads = run_with_grads(window_attention_published, q, k, v, bias, mask, 0.4, grad)
    low = [t.detach().to(dtype).requires_grad_() for t in (q, k, v, bias)]
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
    with tita_fast.reference.published.published_ops():
        expected = block(x, (8, 8))
    assert torch.equal(out, expected)  # the same dropout draws: the same path
    block.eval()
    assert not torch.equal(block(x, (8, 8)), out)  # and dropout was active
