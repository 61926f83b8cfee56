"""IPA forward and forward+backward: published algorithm, reference and fused backends (see
``tita_fast/bench/ipa_cases.py``).

Run: ``pip install --no-build-isolation ".[bench]" && python -m pytest benchmarks/test_ipa.py``
(``TITA_BENCH_SIZES=128,256,512`` chooses the square sizes, ``TITA_BENCH_DEVICE=cuda`` the device). Peak memory
of each case is stored in the benchmark's ``extra_info``. For a table of ratios use ``compare_ipa.py``.
"""

from __future__ import annotations

import os

import pytest
import torch

from tita_fast.bench.ipa_cases import implementations, make_case, step
from tita_fast.bench.measure import peak_memory_bytes

SIZES = [int(s) for s in os.environ.get("TITA_BENCH_SIZES", "128,256,512").split(",")]
DEVICE = torch.device(os.environ.get("TITA_BENCH_DEVICE", "cpu"))


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "forward+backward"])
@pytest.mark.parametrize("implementation", implementations(DEVICE))
@pytest.mark.parametrize("size", SIZES)
def test_ipa(benchmark, size, implementation, backward):
    module, a, b = make_case(size, DEVICE)
    run = step(module, a, b, implementation, backward)
    benchmark.group = f"IPA {'forward+backward' if backward else 'forward'} {size}x{size} C=60 {DEVICE.type}"
    benchmark.extra_info["peak_memory_bytes"] = peak_memory_bytes(run, DEVICE)
    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
