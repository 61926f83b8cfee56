"""The fused ops behind the modules, each dispatching to the selected backend (:mod:`tita_fast.backends`)."""

from tita_fast.ops.ipa import ipa
from tita_fast.ops.mlp import residual_mlp
from tita_fast.ops.oaf import oaf_mix
from tita_fast.ops.window_attention import window_attention

__all__ = ["ipa", "oaf_mix", "residual_mlp", "window_attention"]
