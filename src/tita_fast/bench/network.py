"""Whole-network forward runs: one pair through the published network configuration (``TITA()``, seeded random
weights), ours against the published algorithms (:func:`tita_fast.baseline.published_ops`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

import tita_fast
from tita_fast.baseline import published_ops
from tita_fast.train.trainer import AUTOCAST_DTYPES

IMPLEMENTATIONS = {"published": published_ops, "ours": contextlib.nullcontext}


def forward_runs(size: tuple[int, int], precision: str, device: torch.device) -> dict[str, Callable[[], None]]:
    """One inference-mode forward of a gray pair of ``size`` (height, width) per implementation; ``precision``
    "fp32", or "bf16"/"fp16" under autocast."""
    torch.manual_seed(0)
    model = tita_fast.TITA().to(device).eval()
    a, b = torch.rand(2, 1, 1, *size, device=device).unbind(0)
    dtype = AUTOCAST_DTYPES.get(precision)

    def run(context):
        def call():
            with torch.inference_mode(), context(), torch.autocast(device.type, dtype, enabled=dtype is not None):
                model(a, b)
            if device.type == "cuda":
                torch.cuda.synchronize()

        return call

    return {name: run(context) for name, context in IMPLEMENTATIONS.items()}
