"""``tita-fast bench``: the table and its JSON agree, every row is there, bad input is refused with a message."""

from __future__ import annotations

import contextlib
import io
import json
import os

import pytest
import torch

import tita_fast
from tita_fast.bench.measure import peak_memory_bytes
from tita_fast.cli import main

CASES = [
    "IPA forward 8x8",
    "IPA forward+backward 8x8",
    "OAF mix op forward 8x8",
    "OAF mix op forward+backward 8x8",
    "OAF module forward 8x8",
    "OAF module forward+backward 8x8",
    "TITA forward 16x8",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One run at the smallest sizes (the module fixture: the network is the slow part): its output and JSON."""
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["bench", "--device", "cpu", "--size", "8", "--network-size", "16x8", "--repeats", "1",
                     "--json", str(path)])  # fmt: skip
    assert code == 0
    return out.getvalue(), json.loads(path.read_text()), path


def test_json_rows_are_consistent(tiny_run):
    _, record, path = tiny_run
    assert set(record) == {"device", "torch", "command", "rows"}
    assert record["torch"] == torch.__version__ and "CPU" in record["device"]
    assert record["command"] == f"tita-fast bench --device cpu --size 8 --network-size 16x8 --repeats 1 --json {path}"
    assert [row["case"] for row in record["rows"]] == CASES
    for row in record["rows"]:
        assert row["published_s"] > 0 and row["ours_s"] > 0
        assert row["published_peak_bytes"] > 0 and row["ours_peak_bytes"] > 0
        assert row["speedup"] == pytest.approx(row["published_s"] / row["ours_s"])
        assert row["memory_ratio"] == pytest.approx(row["ours_peak_bytes"] / row["published_peak_bytes"])


def test_printed_table_matches_the_json(tiny_run):
    out, record, _ = tiny_run
    lines = out.splitlines()
    assert f"device   {record['device']}" in lines and f"torch    {torch.__version__}" in lines
    assert f"command  {record['command']}" in lines
    assert f"backend {tita_fast.selected_backend()}: ipa " in lines[0]
    for row in record["rows"]:
        (line,) = [line for line in lines if line.startswith(row["case"] + " ")]
        published_ms, ours_ms, speedup, published_mib, ours_mib, memory_ratio = line[len(row["case"]) :].split()
        assert float(published_ms) == pytest.approx(row["published_s"] * 1e3, abs=0.006)
        assert float(ours_ms) == pytest.approx(row["ours_s"] * 1e3, abs=0.006)
        assert speedup == f"{row['speedup']:.2f}x"
        assert float(published_mib) == pytest.approx(row["published_peak_bytes"] / 2**20, abs=0.06)
        assert float(ours_mib) == pytest.approx(row["ours_peak_bytes"] / 2**20, abs=0.06)
        assert memory_ratio == f"{row['memory_ratio']:.2f}"


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--size", "4"], "argument --size: expected at least 8 pixels, got 4"),
        (["--size", "12.5"], "argument --size: expected an integer, got '12.5'"),
        (["--repeats", "0"], "argument --repeats: expected at least 1, got 0"),
        (["--network-size", "64x4"], "argument --network-size: expected at least 8 pixels, got 4"),
        (["--network-size", "8x8x8"], "argument --network-size: expected N or WIDTHxHEIGHT, got '8x8x8'"),
    ],
)
def test_bad_arguments_exit_with_a_message(capsys, arguments, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", *arguments])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("device", ["tpu", pytest.param("cuda", marks=pytest.mark.skipif(
    torch.cuda.is_available(), reason="needs a machine without CUDA"))])  # fmt: skip
def test_unavailable_device_is_an_error(capsys, device):
    assert main(["bench", "--device", device]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tita-fast bench: error: ") and repr(device) in err


def test_peak_memory_keeps_stderr_but_the_profiler_log(capfd):
    def allocate_and_warn():
        os.write(2, b"USDT: written by the measured code\n")
        torch.ones(1024)

    assert peak_memory_bytes(allocate_and_warn, torch.device("cpu")) >= 4096
    assert capfd.readouterr().err.splitlines() == ["USDT: written by the measured code"]
