"""``torch.compile`` of the pure-PyTorch reference ops: the benchmarks' third baseline, beside the published
algorithms and the eager reference."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

import tita_fast

_compiled: dict[str, Callable] = {}  # op name -> its compiled reference, kept so the compiled graphs are reused


@contextlib.contextmanager
def compiled_reference(op: str) -> Iterator[None]:
    """Within the block, ``op`` (``"ipa"``, ``"oaf_mix"``) runs ``torch.compile`` of its reference implementation.
    ``dynamic=False``: one graph specialised to each input shape, dtype and grad mode, compiled on its first call
    (time a warm-up call, not that one)."""
    registry = tita_fast.backends._registry[op]
    original = registry["reference"]
    if op not in _compiled:
        _compiled[op] = torch.compile(original.run, dynamic=False)
    registry["reference"] = tita_fast.backends.Implementation(_compiled[op])
    try:
        with tita_fast.use_backend("reference"):
            yield
    finally:
        registry["reference"] = original
