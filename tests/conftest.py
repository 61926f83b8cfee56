from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Without a GPU the Triton kernels run under Triton's interpreter on CPU tensors; it must be chosen before triton
# is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
GOLDEN = SHARED / "golden"


def load_golden(name: str) -> dict:
    path = GOLDEN / name
    if not path.exists():
        pytest.skip(f"golden file {path} is absent (it lives in ../shared/golden beside the repository)")
    return torch.load(path, weights_only=True)


def published_key_file() -> list[tuple[str, str, str]]:
    """(name, shape, dtype) rows of ../shared/golden/tita_state_dict_keys.txt."""
    path = GOLDEN / "tita_state_dict_keys.txt"
    if not path.exists():
        pytest.skip(f"{path} is absent (it lives in ../shared/golden beside the repository)")
    rows = [
        line.rstrip("\n").split("\t") for line in path.read_text().splitlines() if line and not line.startswith("#")
    ]
    return [(name, shape, dtype) for name, shape, dtype in rows]


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| relative to the largest magnitude of ``expected``."""
    expected = expected.double().to(actual.device)
    return ((actual.double() - expected).abs().max() / expected.abs().max()).item()


def cosine(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(actual.double().flatten(), expected.double().flatten(), dim=0).item()
