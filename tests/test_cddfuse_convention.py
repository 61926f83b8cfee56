"""``evaluate(..., convention="cddfuse")``: the CDDFuse evaluator's numbers, checked against its own output on every
pair of ../shared/data (``../shared/metrics_reference``), and its degenerate cases."""

from __future__ import annotations

import json
import math
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

from tita_fast import metrics as M

from .conftest import SHARED

REFERENCE = SHARED / "metrics_reference" / "cddfuse_evaluator.json"
DATA = SHARED / "data"
RTOL = 1e-6


def reference_rows() -> list[dict]:
    if not REFERENCE.exists() or not DATA.is_dir():
        pytest.skip(f"{REFERENCE} or {DATA} is absent (they live in ../shared beside the repository)")
    return json.loads(REFERENCE.read_text())["rows"]


def as_evaluated(luminance: np.ndarray) -> np.ndarray:
    """As the reference README built the evaluator's inputs: rounded half to even, clipped, uint8, as float64."""
    return np.clip(np.rint(luminance), 0, 255).astype(np.uint8).astype(np.float64)


# ------------------------------------------------------------------------------------------- the reference
def test_every_metric_matches_the_cddfuse_evaluator():
    pairs = defaultdict(dict)
    for row in reference_rows():
        pairs[(row["set"], row["name"])][row["fused"]] = row
    worst: dict[str, float] = defaultdict(float)
    undefined = []
    for (name, file), rows in pairs.items():
        a, b = (M.luminance(np.asarray(Image.open(DATA / name / side / file))) for side in "ab")
        sources = as_evaluated(a), as_evaluated(b)
        for fused_kind, fused in (("avg", (a + b) / 2), ("max", np.maximum(a, b))):
            fused = as_evaluated(fused)
            row = rows[fused_kind]
            values = M.evaluate(*sources, fused, convention="cddfuse")
            assert tuple(values) == M.CDDFUSE_METRICS
            for metric, value in values.items():
                expected = row["SSIM_uint8" if metric == "SSIM" else metric]
                if expected is None:  # the evaluator's NaN: a correlation with a constant
                    assert math.isnan(value), (name, file, fused_kind, metric, value)
                    undefined.append((name, fused_kind, metric))
                    continue
                worst[metric] = max(worst[metric], abs(value - expected) / abs(expected))
            # its SSIM on float images, which papers running the evaluator on its float loader report: the data
            # range then comes from the dtype, 2 (skimage 0.19), not 255
            on_floats = sum(M._ssim_skimage_pair(fused, source, data_range=2.0) for source in sources)
            worst["SSIM on floats"] = max(worst["SSIM on floats"], abs(on_floats / row["SSIM_float_skimage0.19"] - 1))
    assert len(pairs) == 30 and len(undefined) == 5 and {u[1:] for u in undefined} == {("max", "SCD")}
    assert max(worst.values()) < RTOL, dict(worst)  # measured: VIF 3.8e-8, the others 7e-14 or better


# ----------------------------------------------------------------------------------------- hand examples
def test_ag_central_differences_over_all_pixels():
    j = np.arange(9.0)
    F = np.tile(j**3, (4, 1))  # gx: 1 at the left edge, ((j+1)^3 - (j-1)^3) / 2 inside, 8^3 - 7^3 at the right
    gx = np.array([1.0, *(3 * j[1:-1] ** 2 + 1), 169.0])  # gy = 0
    expected = float(np.mean(np.abs(gx) / math.sqrt(2)))
    assert M.evaluate(F, F, F, "AG", convention="cddfuse")["AG"] == pytest.approx(expected, rel=1e-15)
    assert M.ag(F) != pytest.approx(expected)  # ours: forward differences on the (M-1)(N-1) interior


def test_relations_to_our_convention_on_integer_images():
    rng = np.random.default_rng(3)
    A, B = rng.integers(0, 200, (2, 48, 50)).astype(np.float64)
    F = np.rint((A + B) / 2 + 20)
    ours = M.evaluate(A, B, F)
    theirs = M.evaluate(A, B, F, convention="cddfuse")
    for metric in ("EN", "SD", "SF"):
        assert theirs[metric] == ours[metric]
    assert theirs["MI"] == pytest.approx(ours["MI"] * math.log(2), rel=1e-12)  # nats, not bits
    assert theirs["PSNR"] == pytest.approx(ours["PSNR"] + 20 * math.log10(F.max() / 255), rel=1e-12)
    assert theirs["SCD"] == pytest.approx(ours["SCD"], rel=1e-12) and theirs["CC"] == pytest.approx(ours["CC"])
    assert theirs["MSE"] == pytest.approx(255**2 / 10 ** (ours["PSNR"] / 10), rel=1e-12)


def test_ssim_is_skimage_with_its_defaults():
    rng = np.random.default_rng(4)
    A, B = rng.integers(0, 256, (2, 9, 10)).astype(np.float64)
    assert M.evaluate(A, B, A, "SSIM", convention="cddfuse")["SSIM"] == pytest.approx(
        1 + M._ssim_skimage_pair(A, B), rel=1e-14
    )
    # one 7x7 window per output pixel: check the 3x4 map against the formula with sample (co)variances
    x, y = A, B
    values = []
    for i in range(3):
        for j in range(4):
            u, v = x[i : i + 7, j : j + 7].ravel(), y[i : i + 7, j : j + 7].ravel()
            cov = np.cov(u, v)  # ddof = 1
            c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
            values.append(((2 * u.mean() * v.mean() + c1) * (2 * cov[0, 1] + c2))
                          / ((u.mean() ** 2 + v.mean() ** 2 + c1) * (cov[0, 0] + cov[1, 1] + c2)))  # fmt: skip
    assert M._ssim_skimage_pair(x, y) == pytest.approx(np.mean(values), rel=1e-12)


def test_degenerate_cases_follow_the_evaluator():
    black = np.zeros((48, 48))
    values = M.evaluate(black, black, black, convention="cddfuse")
    assert values["VIF"] == 2.0  # 0/0 per source counts 1 there (0 in ours)
    assert math.isnan(values["Qabf"])  # no edge anywhere, even with zero padding: 0/0
    assert math.isnan(values["SCD"]) and math.isnan(values["CC"])  # correlations with constants
    assert math.isnan(values["PSNR"]) and values["MSE"] == 0.0  # max(F)^2 / MSE = 0/0
    ours = M.evaluate(black, black, black)
    assert ours["VIF"] == 0.0 and ours["Qabf"] == 0.0 and ours["SCD"] == 0.0 and ours["CC"] == 0.0
    gray = np.full((48, 48), 90.0)
    values = M.evaluate(gray, gray, gray, convention="cddfuse")
    assert values["PSNR"] == math.inf
    # zero padding makes the border an edge, kept exactly in F; G = gF (not 1) where gA == gF gives Qg ~ Tg there:
    # 0.9994 Qa(1), above the most ours can give (QABF_MAX = Qg(1) Qa(1))
    assert values["Qabf"] == pytest.approx(0.9994 * 0.9879 / (1 + math.exp(-22 * 0.2)), rel=1e-9)


def test_conventions_and_their_metric_names():
    A = np.random.default_rng(5).uniform(0, 255, (48, 48))
    with pytest.raises(ValueError, match=r"unknown metric convention 'matlab'; choose from tita_fast, cddfuse"):
        M.evaluate(A, A, A, convention="matlab")
    with pytest.raises(ValueError, match=r"unknown metric 'Nabf' in the cddfuse convention; choose from EN.*MSE, CC"):
        M.evaluate(A, A, A, "Nabf", convention="cddfuse")
    with pytest.raises(ValueError, match=r"unknown metric 'MSE' in the tita_fast convention"):
        M.evaluate(A, A, A, "MSE")
    assert tuple(M.evaluate(A, A, A, ("cc", "mse", "EN"), convention="cddfuse")) == ("EN", "MSE", "CC")
    with pytest.raises(ValueError, match=r"SSIM: images must be at least 7x7 pixels, got 6x8"):
        M.evaluate(A[:6, :8], A[:6, :8], A[:6, :8], "SSIM", convention="cddfuse")
    assert "SSIM" in M.evaluate(A[:7, :7], A[:7, :7], A[:7, :7], "SSIM", convention="cddfuse")


def test_files_are_read_as_the_evaluator_reads_them(tmp_path):
    rng = np.random.default_rng(6)
    rgb = rng.integers(0, 256, (3, 48, 50, 3), dtype=np.uint8)
    for name, pixels in zip(("a", "b", "f"), rgb, strict=True):
        Image.fromarray(pixels).save(tmp_path / f"{name}.png")
    rows = M.evaluate_files(tmp_path / "a.png", tmp_path / "b.png", tmp_path / "f.png", convention="cddfuse")
    luminance = [as_evaluated(M.luminance(pixels)) for pixels in rgb]  # the evaluator's loader rounds to integers
    assert rows == [{"name": "a", **M.evaluate(*luminance, convention="cddfuse")}]
