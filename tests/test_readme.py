"""The README and docs as a new user meets them: the two commands CI runs, the Python lines, the links, the
results index."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import tita_fast

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "csrc" / "README.md",
         ROOT / "examples" / "default_model" / "README.md", ROOT / "benchmarks" / "results" / "README.md"]  # fmt: skip
RESULTS = ROOT / "benchmarks" / "results"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_ci_runs_exactly_the_readme_install_and_test_lines():
    install, test = code_blocks(README.read_text(), "bash")[:2]
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    for block in (install, test):
        assert block.count("\n") == 1, f"a README line must be one command:\n{block}"
        assert block.strip() in ci_lines, f".ci/run does not run the README's line {block.strip()!r}"
    assert "tita-fast demo" in install and "pytest" in test


def test_readme_is_short():
    assert len(README.read_text().splitlines()) <= 120


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md":
            headings = re.findall(r"^#+ (.*)$", file.read_text(), flags=re.M)
            if anchor not in {slug(h) for h in headings}:
                broken.append(target)
    assert not broken, f"{page.name}: links to nothing: {broken}"


def test_results_index_lists_every_result_and_nothing_else():
    index = (RESULTS / "README.md").read_text()
    first_cells = re.findall(r"^\| (.*?) \|", index, flags=re.M)
    listed = {name for cell in first_cells for name in re.findall(r"`([^`]+)`", cell)}
    on_disk = {p.name for p in RESULTS.iterdir() if p.name != "README.md"}
    tops = {name.split("/")[0] for name in listed}
    assert on_disk <= tops, f"not in benchmarks/results/README.md: {sorted(on_disk - tops)}"
    assert tops <= on_disk, f"listed but missing: {sorted(tops - on_disk)}"


def test_readme_python_lines_run(tmp_path, monkeypatch):
    (source,) = code_blocks(README.read_text(), "python")
    assert len(source.splitlines()) <= 5
    torch.manual_seed(0)
    torch.save(tita_fast.TITA().state_dict(), tmp_path / "TITA.pth")  # a published-format checkpoint
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(source.replace("256, 256", "40, 56"), scope)  # a smaller image keeps the test fast
    assert scope["fused"].shape == (1, 1, 40, 56)
    assert torch.isfinite(scope["fused"]).all()
    assert isinstance(scope["ipa"], tita_fast.IPA) and isinstance(scope["oaf"], tita_fast.OAF)
