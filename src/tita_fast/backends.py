"""Which implementation runs the fused ops (IPA, OAF mixing).

Backends, by name:

* ``"reference"`` - pure PyTorch (:mod:`tita_fast.reference`); always available, every device and dtype.
* ``"cpu"``, ``"triton"``, ``"cuda"`` - fused kernels, available once built/installed.
* ``"auto"`` - the default: the fastest available backend that handles the inputs' device and dtype.

Choose one for a block of code with ``with tita_fast.use_backend("reference"): ...`` or for the whole process
with the environment variable ``TITA_FAST_BACKEND``. Asking for a backend that is not available, or one that
cannot handle the inputs, raises; nothing falls back silently.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

BACKENDS = ("reference", "cpu", "triton", "cuda")
ENV_VAR = "TITA_FAST_BACKEND"
# "auto" tries these in order; the reference comes last as it is the slowest. Triton before the CUDA C++ kernels:
# its kernels keep the pixel tile's products on tensor cores (not yet measured against each other on a GPU).
_AUTO_ORDER = ("triton", "cuda", "cpu", "reference")


def _any_tensor(example: torch.Tensor) -> bool:
    return True


@dataclass(frozen=True)
class Implementation:
    """One backend's implementation of one op.

    ``supports`` says whether it handles inputs like a tensor; ``automatic`` whether "auto" may pick it for them
    (the Triton interpreter handles CPU tensors when asked for, but is never the fast choice).
    """

    run: Callable
    supports: Callable[[torch.Tensor], bool] = _any_tensor
    automatic: Callable[[torch.Tensor], bool] | None = None

    def chosen_automatically(self, example: torch.Tensor) -> bool:
        return self.supports(example) and (self.automatic is None or self.automatic(example))


_registry: dict[str, dict[str, Implementation]] = {}  # op name -> backend name -> implementation
# Per-thread stack of use_backend() choices. A plain thread-local (not a ContextVar) so torch.compile can trace
# the dispatch: dynamo reads it like any Python attribute and guards on it.
_selected = threading.local()


def register(
    op: str,
    backend: str,
    run: Callable,
    supports: Callable[[torch.Tensor], bool] = _any_tensor,
    automatic: Callable[[torch.Tensor], bool] | None = None,
) -> None:
    """Make ``run`` the ``backend`` implementation of ``op`` (called by the op modules when they load)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}")
    _registry.setdefault(op, {})[backend] = Implementation(run, supports, automatic)


def available_backends() -> list[str]:
    """Names of the backends usable in this process (those with at least one op implementation)."""
    return [name for name in BACKENDS if any(name in impls for impls in _registry.values())]


def _check_name(name: str, where: str) -> str:
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"unknown tita_fast backend {name!r} ({where}); choose one of {('auto',) + BACKENDS}")
    if name != "auto" and name not in available_backends():
        raise RuntimeError(
            f"tita_fast backend {name!r} ({where}) is not available in this installation; "
            f"available: {available_backends()}"
        )
    return name


def selected_backend() -> str:
    """The backend asked for here: the innermost ``use_backend`` block, else ``$TITA_FAST_BACKEND``, else auto."""
    stack = getattr(_selected, "stack", None)
    if stack:
        return stack[-1]
    env = os.environ.get(ENV_VAR, "").strip()
    return _check_name(env, f"from ${ENV_VAR}") if env else "auto"


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the fused ops of the enclosed block with backend ``name`` (or ``"auto"``)."""
    _check_name(name, "requested with use_backend")
    if not hasattr(_selected, "stack"):
        _selected.stack = []
    _selected.stack.append(name)
    try:
        yield
    finally:
        _selected.stack.pop()


def choose(op: str, example: torch.Tensor) -> Callable:
    """The implementation of ``op`` to run for inputs like ``example`` under the current selection."""
    impls = _registry.get(op, {})
    name = selected_backend()
    if name == "auto":
        for candidate in _AUTO_ORDER:
            impl = impls.get(candidate)
            if impl is not None and impl.chosen_automatically(example):
                return impl.run
        raise RuntimeError(f"no tita_fast backend runs {op} on {example.device} {example.dtype} tensors")
    impl = impls.get(name)
    if impl is None:
        raise RuntimeError(f"tita_fast backend {name!r} has no implementation of {op}")
    if not impl.supports(example):
        raise RuntimeError(f"tita_fast backend {name!r} cannot run {op} on {example.device} {example.dtype} tensors")
    return impl.run
