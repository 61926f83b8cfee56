"""``benchmarks/gpu_check.py --smoke``, as CI runs it (no GPU: the Triton kernels under Triton's interpreter): it
finishes, and its two reports hold the same rows, in the schema of the GPU run's reports."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
KEYS = {"device", "torch", "triton", "command", "tests", "rows"}
ROW_KEYS = {"op", "size", "pass", "precision", "impl", "ms", "peak_mib"}  # and "error" where ms is null
TEST_KEYS = {"command", "returncode", "seconds", "passed", "failed", "skipped", "errors", "note", "tail"}
OPS = {"ipa", "oaf", "tita_forward", "train_step"}
SIZES = {"256x256", "512x512", "1280x1024", "3x8x64x64"}
# the smoke's sizes; its training step is not run, and its rows keep the GPU run's size
SMOKE_SIZES = {"ipa": "8x8", "oaf": "8x8", "tita_forward": "32x32", "train_step": "3x8x64x64"}
PASSES = {"forward", "forward+backward"}
PRECISIONS = {"fp32", "bf16"}
OP_IMPLS = ["published", "reference", "compiled_reference", "triton", "cuda"]
NETWORK_IMPLS = ["published", "ours"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One smoke run from the repository's root: its JSON record, Markdown report and output folder."""
    out = tmp_path_factory.mktemp("gpu_check")
    command = [sys.executable, "benchmarks/gpu_check.py", "--smoke", "--out", str(out)]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-4000:]
    return json.loads((out / "gpu_report.json").read_text()), (out / "gpu_report.md").read_text(), out


def expected_rows() -> list[tuple[str, str, str, str, str]]:
    """(op, size, pass, precision, impl) of every smoke row, in the order the check measures them."""
    ops = [
        (op, SMOKE_SIZES[op], passes, precision, impl)
        for precision, op, passes, impl in itertools.product(
            ["fp32", "bf16"], ["ipa", "oaf"], ["forward", "forward+backward"], OP_IMPLS
        )
    ]
    network = [("tita_forward", "32x32", "forward", precision, impl) for precision in ["fp32", "bf16"]
               for impl in NETWORK_IMPLS]  # fmt: skip
    train = [("train_step", "3x8x64x64", "forward+backward", "fp32", impl) for impl in NETWORK_IMPLS]
    return ops + network + train


def test_the_json_follows_the_schema(smoke):
    record, _, _ = smoke
    assert set(record) == KEYS
    assert record["torch"] == torch.__version__ and record["device"]
    assert record["command"].startswith("python benchmarks/gpu_check.py --smoke --out ")
    for row in record["rows"]:
        assert set(row) in (ROW_KEYS, ROW_KEYS | {"error"}), row
        assert row["op"] in OPS and row["pass"] in PASSES and row["precision"] in PRECISIONS
        assert row["size"] in SIZES | set(SMOKE_SIZES.values())
        assert row["impl"] in OP_IMPLS if row["op"] in ("ipa", "oaf") else row["impl"] in NETWORK_IMPLS
        if "error" in row:
            assert row["ms"] is None and row["peak_mib"] is None and row["error"], row
        else:
            assert row["ms"] > 0 and row["peak_mib"] >= 0, row


def test_every_case_has_a_row_for_each_implementation(smoke):
    record, _, _ = smoke
    rows = record["rows"]
    assert [(r["op"], r["size"], r["pass"], r["precision"], r["impl"]) for r in rows] == expected_rows()
    first = rows[0]  # measured before any time budget can run out
    assert first["impl"] == "published" and first["ms"] > 0
    errors = {(r["op"], r["impl"]): r.get("error", "") for r in rows}
    assert errors["ipa", "compiled_reference"].startswith("not run with --smoke")
    assert errors["train_step", "ours"].startswith("not run")
    if not torch.cuda.is_available():
        assert "'cuda'" in errors["ipa", "cuda"] and "not available" in errors["ipa", "cuda"]


def test_the_markdown_table_has_the_json_rows(smoke):
    record, markdown, _ = smoke
    lines = markdown.splitlines()
    header = lines.index("| op | size | pass | precision | impl | ms | peak MiB | speed-up | error |")
    table = list(itertools.takewhile(lambda line: line.startswith("| "), lines[header + 2 :]))
    assert len(table) == len(record["rows"])
    for line, row in zip(table, record["rows"], strict=True):
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]  # "\|" is a "|" within a cell
        assert cells[:5] == [row["op"], row["size"], row["pass"], row["precision"], row["impl"]]
        ms, peak, _, error = cells[5:]
        if row["ms"] is None:
            assert (ms, peak, error) == ("-", "-", row["error"].replace("|", "\\|"))
        else:
            assert float(ms) == pytest.approx(row["ms"], abs=6e-4)
            assert float(peak) == pytest.approx(row["peak_mib"], abs=0.06)


def test_the_tests_ran_and_their_log_is_kept(smoke):
    record, markdown, out = smoke
    tests = record["tests"]
    assert set(tests) == TEST_KEYS
    assert tests["returncode"] == 0 and tests["note"] is None
    assert tests["passed"] > 0 and tests["failed"] == tests["errors"] == 0
    assert f"{tests['passed']} passed" in tests["tail"] and tests["tail"] in (out / "pytest.log").read_text()
    assert f"`{tests['command']}`: {tests['passed']} passed" in markdown and tests["tail"] in markdown
