"""The published network as a baseline: the modules of :mod:`tita_fast.nn` running the published algorithms of
:mod:`tita_fast.reference.published`, for parity tests and for the benchmarks' side-by-side ratios."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from tita_fast import ops
from tita_fast.nn.swin import _ShiftedWindows
from tita_fast.reference.published import ipa_published, oaf_mix_published, window_attention_published


@contextlib.contextmanager
def published_ops() -> Iterator[None]:
    """Within the block, the modules run the published algorithms in place of the ops (whatever the backend), and
    the Swin blocks run whole feature maps as published (not window rows at a time in inference): the baseline of
    parity tests and benchmarks. Not thread-safe; not for production use."""
    saved = ops.ipa, ops.oaf_mix, ops.window_attention, _ShiftedWindows._infers
    ops.ipa, ops.oaf_mix, ops.window_attention = ipa_published, oaf_mix_published, window_attention_published
    _ShiftedWindows._infers = lambda self, *inputs: False
    try:
        yield
    finally:
        ops.ipa, ops.oaf_mix, ops.window_attention, _ShiftedWindows._infers = saved
