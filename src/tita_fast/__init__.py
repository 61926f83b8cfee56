"""tita_fast: a fast, exact, installable implementation of TITA (ICCV 2025 unified image fusion)."""

from tita_fast import ops
from tita_fast.backends import available_backends, selected_backend, use_backend
from tita_fast.nn import IPA, OAF, TITA
from tita_fast.train.famo import FAMO

__version__ = "0.1.0"

__all__ = ["FAMO", "IPA", "OAF", "TITA", "available_backends", "ops", "selected_backend", "use_backend", "__version__"]
