"""Whole-network forward of the reference TITA (published configuration), gray images, N = 1.

Run: ``pip install ".[bench]" && python -m pytest benchmarks --benchmark-columns=min,median,max``
(set ``TITA_BENCH_SIZES=256,512`` to choose the square sizes; CPU by default, CUDA with ``TITA_BENCH_DEVICE=cuda``).
"""

from __future__ import annotations

import os

import pytest
import torch

import tita_fast

SIZES = [int(s) for s in os.environ.get("TITA_BENCH_SIZES", "256").split(",")]
DEVICE = torch.device(os.environ.get("TITA_BENCH_DEVICE", "cpu"))


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("size", SIZES)
def test_reference_forward(benchmark, size):
    torch.manual_seed(0)
    model = tita_fast.TITA().to(DEVICE).eval()
    a, b = torch.rand(2, 1, 1, size, size, device=DEVICE).unbind(0)

    def forward():
        with torch.inference_mode(), tita_fast.use_backend("reference"):
            out = model(a, b)
        _sync()
        return out

    out = benchmark.pedantic(forward, rounds=3, warmup_rounds=1)
    assert out.shape == a.shape and torch.isfinite(out).all()
