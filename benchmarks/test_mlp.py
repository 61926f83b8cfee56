"""The Swin blocks' residual MLP without autograd (TITA's shape: C 60, hidden 120; one inference piece of a
256x256 image, 16384 tokens): the module calls it replaces (LayerNorm, Mlp, residual add, copy into the output)
against each backend of ``tita_fast.ops.residual_mlp``.

Run: ``pip install --no-build-isolation ".[bench]" && python -m pytest benchmarks/test_mlp.py``
(``TITA_BENCH_DEVICE=cuda`` chooses the device).
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import tita_fast
from tita_fast.nn.layers import Mlp
from tita_fast.ops.mlp import residual_mlp

DEVICE = torch.device(os.environ.get("TITA_BENCH_DEVICE", "cpu"))
TOKENS, DIM, HIDDEN = 16384, 60, 120
IMPLEMENTATIONS = ["modules"] + [b for b in tita_fast.available_backends() if b in ("reference", "cpu")]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_residual_mlp(benchmark, implementation):
    torch.manual_seed(0)
    norm, mlp = nn.LayerNorm(DIM).to(DEVICE), Mlp(DIM, HIDDEN, DIM).to(DEVICE)
    x = torch.randn(1, TOKENS, DIM, device=DEVICE)
    out = torch.empty_like(x)

    def run():
        with torch.no_grad():
            if implementation == "modules":
                out.copy_(x + mlp(norm(x)))
            else:
                with tita_fast.use_backend(implementation):
                    residual_mlp(x, norm.weight, norm.bias, norm.eps, mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight,
                                 mlp.fc2.bias, None, out)  # fmt: skip
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()

    benchmark.group = f"residual MLP {TOKENS} tokens {DEVICE.type}"
    benchmark.pedantic(run, rounds=20, warmup_rounds=2)
