"""Whole-network forward (published configuration, one gray pair) and the published training step (3 tasks x
batch 8 x 64x64 crops, faithful FAMO): ours against the published algorithms in the same run (the forward
runs are in tita_fast/bench/network.py, the training step's in tita_speed.py, which prints both as a table of ratios
with peak memory).

Run: ``pip install --no-build-isolation ".[bench]" && python -m pytest benchmarks/test_tita.py``
(``TITA_BENCH_SIZES=256,512`` chooses the square sizes, ``TITA_BENCH_DEVICE=cuda`` the device,
``TITA_BENCH_PRECISION=bf16`` autocast). The training step needs the real pairs in ../shared/data.
"""

from __future__ import annotations

import os

import pytest
import torch

from benchmarks.tita_speed import DATA, train_runs
from tita_fast.bench.measure import peak_memory_bytes
from tita_fast.bench.network import IMPLEMENTATIONS, forward_runs

SIZES = [int(s) for s in os.environ.get("TITA_BENCH_SIZES", "256").split(",")]
DEVICE = torch.device(os.environ.get("TITA_BENCH_DEVICE", "cpu"))
PRECISION = os.environ.get("TITA_BENCH_PRECISION", "fp32")


@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("size", SIZES)
def test_forward(benchmark, size, implementation):
    run = forward_runs((size, size), PRECISION, DEVICE)[implementation]
    benchmark.group = f"TITA forward {size}x{size} {PRECISION} {DEVICE.type}"
    benchmark.extra_info["peak_memory_bytes"] = peak_memory_bytes(run, DEVICE)
    benchmark.pedantic(run, rounds=3, warmup_rounds=1)


@pytest.mark.skipif(not DATA.is_dir(), reason=f"the training step reads the real pairs in {DATA}, which is missing")
@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
def test_train_step(benchmark, tmp_path, implementation):
    run = train_runs(PRECISION, DEVICE, tmp_path, [implementation])[implementation]
    benchmark.group = f"TITA train step 3x8x64^2 {PRECISION} {DEVICE.type}"
    benchmark.extra_info["peak_memory_bytes"] = peak_memory_bytes(run, DEVICE)
    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
