from __future__ import annotations

import subprocess
import sys

import tita_fast
from tita_fast.cli import main


def test_info_prints_versions_and_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"tita_fast {tita_fast.__version__}" in out
    assert "torch" in out and "available: reference" in out and "selected: auto" in out


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "tita_fast", "info"], capture_output=True, text=True, check=True)
    assert "backends" in result.stdout


def test_info_says_when_the_compiled_kernels_did_not_load(capsys, monkeypatch):
    from tita_fast import _extension

    monkeypatch.setattr(_extension, "LOAD_ERROR", ImportError("undefined symbol: foo"))
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "compiled ops not loaded (undefined symbol: foo)" in out and "--no-build-isolation" in out
