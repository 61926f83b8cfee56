"""Whole-network forward, published configuration, gray images, N = 1: our reference against the published
algorithms (per-batch ``nn.MultiheadAttention`` IPA loop, ``F.unfold`` OAF) in the same run.

Run: ``pip install ".[bench]" && python -m pytest benchmarks --benchmark-columns=min,median,max``
(``TITA_BENCH_SIZES=256,512`` chooses the square sizes; ``TITA_BENCH_DEVICE=cuda`` runs on the GPU).
"""

from __future__ import annotations

import os

import pytest
import torch

import tita_fast
from tita_fast.reference.published import published_ops

SIZES = [int(s) for s in os.environ.get("TITA_BENCH_SIZES", "256").split(",")]
DEVICE = torch.device(os.environ.get("TITA_BENCH_DEVICE", "cpu"))
IMPLEMENTATIONS = {"reference": lambda: tita_fast.use_backend("reference"), "published": published_ops}


@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("size", SIZES)
def test_forward(benchmark, size, implementation):
    torch.manual_seed(0)
    model = tita_fast.TITA().to(DEVICE).eval()
    a, b = torch.rand(2, 1, 1, size, size, device=DEVICE).unbind(0)
    benchmark.group = f"TITA forward {size}x{size} {DEVICE.type}"

    def forward():
        with torch.inference_mode(), IMPLEMENTATIONS[implementation]():
            out = model(a, b)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        return out

    out = benchmark.pedantic(forward, rounds=3, warmup_rounds=1)
    assert out.shape == a.shape and torch.isfinite(out).all()
