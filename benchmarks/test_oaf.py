"""OAF forward and forward+backward: published algorithm, reference and fused backends (see
``tita_fast/bench/oaf_cases.py``).

Run: ``pip install --no-build-isolation ".[bench]" && python -m pytest benchmarks/test_oaf.py``
(``TITA_BENCH_OAF_SIZES=256,512,1024x1280`` chooses the sizes, ``TITA_BENCH_DEVICE=cuda`` the device). Peak
memory of each case is stored in the benchmark's ``extra_info``. For a table of ratios use ``compare_oaf.py``.
"""

from __future__ import annotations

import os

import pytest
import torch

from tita_fast.bench.measure import parse_size, peak_memory_bytes
from tita_fast.bench.oaf_cases import LAYOUTS, Case, implementations, step

SIZES = os.environ.get("TITA_BENCH_OAF_SIZES", "256,512").split(",")
DEVICE = torch.device(os.environ.get("TITA_BENCH_DEVICE", "cpu"))


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "forward+backward"])
@pytest.mark.parametrize("implementation", implementations(DEVICE))
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("scope", ["op", "step"])
@pytest.mark.parametrize("size", SIZES)
def test_oaf(benchmark, size, scope, layout, implementation, backward):
    case = Case(parse_size(size), DEVICE, layout)
    run = step(case, scope, implementation, backward)
    passes = "forward+backward" if backward else "forward"
    benchmark.group = f"OAF {scope} {passes} {size} C=60 {layout} {DEVICE.type}"
    benchmark.extra_info["peak_memory_bytes"] = peak_memory_bytes(run, DEVICE)
    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
