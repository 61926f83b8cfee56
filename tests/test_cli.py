from __future__ import annotations

import subprocess
import sys

import pytest

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


def test_fuse_pipeline_and_eval_convention_refuse_unknown_names(capsys):
    for argv, option, choices in (
        (["fuse", "a.png", "b.png", "-o", "out", "--pipeline", "paper"], "--pipeline", "'tita_fast', 'published'"),
        (["eval", "a", "b", "f", "--convention", "matlab"], "--convention", "'tita_fast', 'cddfuse'"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and f"argument {option}: invalid choice" in err and choices in err


def test_eval_table_and_json_are_exclusive(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "a", "b", "f", "--table", "--json"])
    assert exit_info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
