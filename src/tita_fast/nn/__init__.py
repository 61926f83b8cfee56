"""The TITA modules: drop-in, state-dict compatible with the published code, backend-agnostic."""

from tita_fast.nn.ipa import IPA
from tita_fast.nn.oaf import OAF, OAFBlock
from tita_fast.nn.tita import TITA

__all__ = ["IPA", "OAF", "OAFBlock", "TITA"]
