"""Window attention core (TITA's shape: windows of 8x8 tokens, 6 heads of 10 channels), forward and
forward+backward: the published algorithm against each backend of ``tita_fast.ops.window_attention``, shifted
windows (the mask) included.

Run: ``pip install --no-build-isolation ".[bench]" && python -m pytest benchmarks/test_window_attention.py``
(``TITA_BENCH_WINDOWS=256,768`` chooses the window counts: 256 is one inference piece of a 256x256 image, 768 one
call of the published training batch at 3 x 4 crops of 64x64; ``TITA_BENCH_DEVICE=cuda`` the device).
"""

from __future__ import annotations

import os

import pytest
import torch

import tita_fast
from tita_fast.nn.swin import shift_mask
from tita_fast.ops.window_attention import window_attention
from tita_fast.reference.published import window_attention_published

WINDOWS = [int(n) for n in os.environ.get("TITA_BENCH_WINDOWS", "256,768").split(",")]
DEVICE = torch.device(os.environ.get("TITA_BENCH_DEVICE", "cpu"))
WINDOW, HEADS, HEAD_DIM = 8, 6, 10
IMPLEMENTATIONS = ["published"] + [b for b in tita_fast.available_backends() if b in ("reference", "cpu")]


def case(windows: int, backward: bool):
    """q, k, v as views into one (windows, T, 3, heads, d) tensor like the model's qkv projection; the shift mask
    of a 4-window-wide grid."""
    g = torch.Generator().manual_seed(0)
    tokens = WINDOW * WINDOW
    qkv = torch.randn(windows, tokens, 3, HEADS, HEAD_DIM, generator=g).to(DEVICE).requires_grad_(backward)
    bias = (0.5 * torch.randn(HEADS, tokens, tokens, generator=g)).to(DEVICE).requires_grad_(backward)
    mask = shift_mask(windows // 4 * WINDOW, 4 * WINDOW, WINDOW, WINDOW // 2, DEVICE)
    grad = torch.randn(windows, tokens, HEADS, HEAD_DIM, generator=g).to(DEVICE)
    return qkv, bias, mask, grad


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "forward+backward"])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("windows", WINDOWS)
def test_window_attention(benchmark, windows, implementation, backward):
    qkv, bias, mask, grad = case(windows, backward)
    attend = window_attention_published if implementation == "published" else window_attention
    backend = "auto" if implementation == "published" else implementation

    def run():
        with tita_fast.use_backend(backend), torch.set_grad_enabled(backward):
            out = attend(*qkv.unbind(2), bias, mask, HEAD_DIM**-0.5)
            if backward:
                out.backward(grad)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()

    passes = "forward+backward" if backward else "forward"
    benchmark.group = f"window attention {passes} {windows} windows {DEVICE.type}"
    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
