"""Backend selection: what is available, choosing one for a block or globally, and failing loudly."""

from __future__ import annotations

import pytest
import torch

import tita_fast
from tita_fast import backends


def test_reference_is_always_available():
    assert "reference" in tita_fast.available_backends()
    assert set(tita_fast.available_backends()) <= set(backends.BACKENDS)


def test_default_is_auto(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    assert tita_fast.selected_backend() == "auto"


def test_use_backend_scopes_the_choice(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    with tita_fast.use_backend("reference"):
        assert tita_fast.selected_backend() == "reference"
        with tita_fast.use_backend("auto"):
            assert tita_fast.selected_backend() == "auto"
        assert tita_fast.selected_backend() == "reference"
    assert tita_fast.selected_backend() == "auto"


def test_environment_variable_selects_globally(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "reference")
    assert tita_fast.selected_backend() == "reference"
    with tita_fast.use_backend("auto"):  # a block overrides the environment
        assert tita_fast.selected_backend() == "auto"


@pytest.mark.parametrize("name", [b for b in backends.BACKENDS if b not in tita_fast.available_backends()])
def test_unavailable_backend_fails_instead_of_falling_back(name, monkeypatch):
    with pytest.raises(RuntimeError, match="not available"):
        with tita_fast.use_backend(name):
            pass
    monkeypatch.setenv(backends.ENV_VAR, name)
    module = tita_fast.IPA(12)
    with pytest.raises(RuntimeError, match="TITA_FAST_BACKEND"):
        module(torch.randn(1, 3, 12), torch.randn(1, 3, 12))


def test_unknown_backend_name_fails(monkeypatch):
    with pytest.raises(ValueError, match="unknown tita_fast backend 'fastest'"):
        with tita_fast.use_backend("fastest"):
            pass
    monkeypatch.setenv(backends.ENV_VAR, "fastest")
    with pytest.raises(ValueError, match="TITA_FAST_BACKEND"):
        tita_fast.OAF(6)(torch.randn(1, 6, 4, 4), torch.randn(1, 6, 4, 4))


def test_ops_dispatch_to_the_selected_implementation(monkeypatch):
    calls = []
    reference = backends._registry["oaf_mix"]["reference"]
    monkeypatch.setitem(
        backends._registry["oaf_mix"], "reference",
        backends.Implementation(lambda *a: calls.append("ran") or reference.run(*a)),
    )  # fmt: skip
    module = tita_fast.OAF(6)
    with tita_fast.use_backend("reference"):
        module(torch.randn(1, 6, 4, 4), torch.randn(1, 6, 4, 4))
    assert calls == ["ran"]


def test_a_backend_that_cannot_handle_the_inputs_raises(monkeypatch):
    for name, impl in list(backends._registry["ipa"].items()):
        monkeypatch.setitem(backends._registry["ipa"], name, backends.Implementation(impl.run, lambda t: False))
    module = tita_fast.IPA(12)
    with tita_fast.use_backend("reference"), pytest.raises(RuntimeError, match="cannot run ipa"):
        module(torch.randn(1, 3, 12), torch.randn(1, 3, 12))
    with pytest.raises(RuntimeError, match="no tita_fast backend runs ipa"):
        module(torch.randn(1, 3, 12), torch.randn(1, 3, 12))


def test_op_input_checks():
    with pytest.raises(ValueError, match=r"\(N, L, C\)"):
        tita_fast.IPA(12)(torch.randn(3, 12), torch.randn(3, 12))
    with pytest.raises(ValueError, match="inputs have 6 channels"):
        tita_fast.IPA(12)(torch.randn(1, 3, 6), torch.randn(1, 3, 6))
    with pytest.raises(ValueError, match="H >= 2"):
        tita_fast.OAF(6)(torch.randn(1, 6, 1, 4), torch.randn(1, 6, 1, 4))
    with pytest.raises(ValueError, match="divisible"):
        tita_fast.IPA(10, num_heads=6)
