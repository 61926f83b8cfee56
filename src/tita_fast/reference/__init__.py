"""Pure-PyTorch reference implementations of the fused ops: the ground truth every kernel is tested against."""

from tita_fast.reference.ipa import ipa_reference
from tita_fast.reference.oaf import oaf_mix_reference

__all__ = ["ipa_reference", "oaf_mix_reference"]
