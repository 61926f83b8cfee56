"""Fusion metrics on hand-checkable images (tita_fast.metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tita_fast import metrics as M

PAIR = (M.mi, M.scd, M.vif, M.qabf, M.ssim, M.psnr, M.cc, M.nabf)


def _rand(shape=(48, 52), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, shape)


def _smooth(shape=(48, 52), seed=0) -> np.ndarray:
    """A random image with some spatial structure (box-blurred noise plus a gradient)."""
    x = _rand((shape[0] + 4, shape[1] + 4), seed)
    x = sum(x[i : i + shape[0], j : j + shape[1]] for i in range(5) for j in range(5)) / 25.0
    return x + np.linspace(0, 40, shape[1])[None, :]


# ------------------------------------------------------------------------------------------- single-image metrics
def test_constant_image_single_metrics_are_zero():
    F = np.full((7, 9), 113.0)
    assert M.en(F) == 0.0 and math.copysign(1.0, M.en(F)) == 1.0  # +0.0, not -0.0
    assert M.sd(F) == 0.0
    assert M.sf(F) == 0.0
    assert M.ag(F) == 0.0


def test_two_valued_image_entropy_and_sd():
    F = np.zeros((6, 8))
    F[:, :4] = 255.0
    assert M.en(F) == pytest.approx(1.0, abs=1e-12)
    assert M.sd(F) == pytest.approx(127.5, abs=1e-12)


def test_entropy_rounds_and_clips():
    # -3 -> 0, 0.4 -> 0, 300 -> 255, 254.6 -> 255: two equally likely levels -> 1 bit.
    assert M.en(np.array([[-3.0, 0.4], [300.0, 254.6]])) == pytest.approx(1.0)


def test_ramp_sf_ag_closed_forms_nonsquare():
    # F[i, j] = a*i + c*j on M=3 rows, N=5 columns. Every horizontal difference is c (M(N-1)=12 of them), every
    # vertical one is a ((M-1)N=10 of them): RF^2 = 12c^2/12 = c^2, CF^2 = 10a^2/10 = a^2, SF = sqrt(a^2 + c^2).
    # Swapping the denominators would give RF^2 = 1.2c^2, CF^2 = a^2/1.2; dividing both by MN gives 0.8c^2, 2/3 a^2.
    # AG: dx = c, dy = a at every one of the (M-1)(N-1) positions -> sqrt((a^2 + c^2)/2).
    a, c = 3.0, 7.0
    i, j = np.mgrid[0:3, 0:5]
    F = a * i + c * j
    assert M.sf(F) == pytest.approx(math.hypot(a, c), rel=1e-14)
    assert M.ag(F) == pytest.approx(math.sqrt((a * a + c * c) / 2), rel=1e-14)
    # pure horizontal ramp F = c*j: SF = c, AG = c/sqrt(2)
    assert M.sf(c * j) == pytest.approx(c, rel=1e-14)
    assert M.ag(c * j) == pytest.approx(c / math.sqrt(2), rel=1e-14)


def test_sf_ag_hand_example():
    # F = [[0, 3, 3], [4, 4, 4]] (M=2, N=3).
    # horizontal diffs 3, 0, 0, 0 -> RF^2 = 9/4; vertical diffs 4, 1, 1 -> CF^2 = 18/3 = 6; SF = sqrt(8.25).
    # AG positions (0,0): dx=3, dy=4 -> 5/sqrt2; (0,1): dx=0, dy=1 -> 1/sqrt2; mean = 3/sqrt2.
    F = np.array([[0.0, 3.0, 3.0], [4.0, 4.0, 4.0]])
    assert M.sf(F) == pytest.approx(math.sqrt(8.25), rel=1e-14)
    assert M.ag(F) == pytest.approx(3 / math.sqrt(2), rel=1e-14)


# ----------------------------------------------------------------------------------------------------------- MI
def test_mi_self_equals_entropy_and_constant_gives_zero():
    A = np.rint(_rand((20, 23), 1))
    assert M.mi(A, A, A) == pytest.approx(2 * M.en(A), rel=1e-12)
    C = np.full_like(A, 42.0)
    assert M.mi(C, C, A) == pytest.approx(0.0, abs=1e-12)
    assert M.mi(A, A, C) == pytest.approx(0.0, abs=1e-12)


def test_mi_independent_bits():
    # A = row parity, B = column parity, F = A: MI(A, F) = 1 bit, MI(B, F) = 0 (independent, equal counts).
    i, j = np.mgrid[0:8, 0:8]
    A, B = 255.0 * (i % 2), 255.0 * (j % 2)
    assert M.mi(A, B, A) == pytest.approx(1.0, abs=1e-12)


# ---------------------------------------------------------------------------------------------- identical inputs
def test_identical_inputs():
    A = _smooth()
    assert M.psnr(A, A, A) == math.inf
    assert M.cc(A, A, A) == pytest.approx(1.0, abs=1e-12)
    assert M.ssim(A, A, A) == pytest.approx(2.0, abs=1e-12)
    # vifp: each term is 1 up to the 1e-10 clamps of the reference formulas.
    assert M.vif(A, A, A) == pytest.approx(2.0, abs=1e-8)
    # Qabf with the standard unnormalised constants peaks at Qg(1) Qa(1) ~= 0.9748, not 1.
    expected = 0.9994 / (1 + math.exp(-15 * 0.5)) * 0.9879 / (1 + math.exp(-22 * (1 - 0.8)))
    assert expected == pytest.approx(0.97479, abs=1e-5)
    assert M.QABF_MAX == pytest.approx(expected, rel=1e-14)
    assert M.qabf(A, A, A) == pytest.approx(expected, rel=1e-12)
    assert M.nabf(A, A, A) == 0.0


def test_swapped_sources_are_symmetric():
    A, B = _smooth(seed=1), _smooth(seed=2)
    F = 0.6 * A + 0.4 * B + 5 * np.sin(np.arange(A.size).reshape(A.shape))
    assert M.evaluate(A, B, F) == M.evaluate(B, A, F)


# --------------------------------------------------------------------------------------------- closed forms
def test_psnr_closed_form():
    A = _rand((10, 12), 3)
    assert M.psnr(A, A, A + 10.0) == pytest.approx(10 * math.log10(255.0**2 / 100.0), rel=1e-12)


def test_psnr_averages_mse_not_psnr():
    A = np.zeros((4, 4))
    # MSE(A,F) = 100, MSE(B,F) = 0 -> MSE = 50.
    assert M.psnr(A, A + 10.0, A + 10.0) == pytest.approx(10 * math.log10(255.0**2 / 50.0), rel=1e-12)


def test_cc_linear_map_and_constant():
    A = _rand((9, 11), 4)
    assert M.cc(A, A, 2 * A + 3) == pytest.approx(1.0, abs=1e-12)
    assert M.cc(A, A, -A) == pytest.approx(-1.0, abs=1e-12)
    assert M.cc(A, A, np.full_like(A, 7.0)) == 0.0  # undefined -> 0 (documented)


def test_scd_values():
    A, B = _rand((16, 16), 5), _rand((16, 16), 6)
    # F = A + B: corr(F - B, A) = corr(A, A) = 1 and corr(F - A, B) = 1.
    assert M.scd(A, B, A + B) == pytest.approx(2.0, abs=1e-12)
    # F = A = B: both differences are zero images -> zero variance -> 0 (documented).
    assert M.scd(A, A, A) == 0.0


# --------------------------------------------------------------------------------------------------------- SSIM
def _ssim_loop(x: np.ndarray, y: np.ndarray) -> float:
    """Reference: explicit loop over all valid 11x11 windows, weighted statistics computed directly."""
    r = np.arange(11) - 5.0
    w = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5**2))
    w /= w.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_ssim_matches_loop_reference():
    A, B = _rand((14, 15), 7), _rand((14, 15), 8)
    F = 0.5 * A + 0.3 * B + 20
    expected = _ssim_loop(A, F) + _ssim_loop(B, F)
    assert M.ssim(A, B, F) == pytest.approx(expected, abs=1e-10)
    assert M.ssim(A, B, F) < 2.0


# ---------------------------------------------------------------------------------------------------------- VIF
def test_vif_decreases_with_noise():
    A = _smooth((48, 48), 9)
    noisy = A + np.random.default_rng(10).normal(0, 20, A.shape)
    v_clean, v_noisy = M.vif(A, A, A), M.vif(A, A, noisy)
    assert 0 < v_noisy < v_clean
    # A flat source has no information (0/0 in the formula) and contributes 0 (documented).
    C = np.full_like(A, 100.0)
    assert M.vif(C, C, A) == 0.0
    assert M.vif(A, C, A) == pytest.approx(1.0, abs=1e-8)


def test_vif_minimum_size():
    A = _rand((40, 60))
    with pytest.raises(ValueError, match=r"VIF.*41x41"):
        M.vif(A, A, A)
    M.vif(_rand((41, 41)), _rand((41, 41), 1), _rand((41, 41), 2))


# --------------------------------------------------------------------------------------------------- Qabf / Nabf
def test_qabf_constant_and_blur():
    A = _smooth(seed=11)
    # Constant F: G = 0 everywhere -> Q <= Qg(0) * Ta ~= 5.5e-4 (small, not exactly 0; documented).
    q_const = M.qabf(A, A, np.full_like(A, 128.0))
    assert 0 <= q_const <= 0.9994 / (1 + math.exp(15 * 0.5)) * 0.9879
    # A blurred F preserves edges worse than F = A.
    blurred = sum(np.roll(np.roll(A, di, 0), dj, 1) for di in (-2, -1, 0, 1, 2) for dj in (-2, -1, 0, 1, 2)) / 25
    assert M.qabf(A, A, blurred) < M.qabf(A, A, A)
    # Both sources flat: sum of weights is 0 -> defined as 0.
    C = np.full_like(A, 3.0)
    assert M.qabf(C, C, A) == 0.0


def test_qabf_one_flat_source_ignored():
    # w_B = 0 everywhere when B is flat, so Qabf(A, B, A) is the perfect-preservation value.
    A = _smooth(seed=12)
    assert M.qabf(A, np.full_like(A, 9.0), A) == pytest.approx(M.QABF_MAX, rel=1e-12)


def test_nabf_artefacts():
    A = _smooth(seed=13)
    assert M.nabf(A, A, A) == 0.0
    F = A.copy()
    F[10:20, 10:20] += 200.0  # strong edges not present in either source
    n = M.nabf(A, A, F)
    assert n > 0.0
    assert n <= 1.0


# ------------------------------------------------------------------------------------------------- luminance
def test_luminance_rgb_uint16_and_shapes():
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    assert np.allclose(M.luminance(rgb), 0.299 * 255)
    rgb = np.zeros((2, 3, 3), dtype=np.float32)
    rgb[..., 1] = 100.0
    rgb[..., 2] = 200.0
    assert np.allclose(M.luminance(rgb), 0.587 * 100 + 0.114 * 200)
    gray16 = np.array([[0, 65535], [13107, 65535]], dtype=np.uint16)
    out = M.luminance(gray16)
    assert out.dtype == np.float64
    assert np.allclose(out, [[0, 255], [51, 255]])
    assert np.allclose(M.luminance(torch.tensor([[0, 65535]], dtype=torch.uint16)), [[0, 255]])
    # floats are taken as 0-255 as-is, even when they are all <= 1.
    assert np.array_equal(M.luminance(np.array([[0.5, 1.0]])), [[0.5, 1.0]])
    assert M.luminance(np.ones((4, 5, 1))).shape == (4, 5)
    for bad in (np.zeros((4, 5, 4)), np.zeros((3, 4, 5, 3)), np.zeros(7), np.zeros((2, 2), dtype=bool)):
        with pytest.raises(ValueError, match="luminance"):
            M.luminance(bad)
    with pytest.raises(ValueError, match="NaN"):
        M.luminance(np.array([[np.nan, 1.0]]))


# ------------------------------------------------------------------------------------------- input handling
def test_torch_and_batched_inputs():
    A = _smooth((24, 26), 14)
    B = _smooth((24, 26), 15)
    F = (A + B) / 2
    ref = M.evaluate(A, B, F, metrics=("EN", "MI", "Qabf", "SSIM", "CC"))
    got = M.evaluate(torch.from_numpy(A)[None, None], torch.from_numpy(B)[None], torch.from_numpy(F), ref.keys())
    assert got == ref


def test_validation_errors():
    A = _rand((16, 16))
    with pytest.raises(ValueError, match=r"MI: F has shape"):
        M.mi(A, A, A[:, :15])
    bad = A.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match=r"PSNR: B contains NaN"):
        M.psnr(A, bad, A)
    bad[3, 4] = np.inf
    with pytest.raises(ValueError, match=r"EN: F contains NaN or Inf"):
        M.en(bad)
    with pytest.raises(ValueError, match=r"SD: F must be at least 2x2"):
        M.sd(np.ones((1, 5)))
    with pytest.raises(ValueError, match=r"SSIM: A must be at least 11x11"):
        M.ssim(A[:10], A[:10], A[:10])
    with pytest.raises(ValueError, match=r"Qabf: A must be at least 3x3"):
        M.qabf(A[:2], A[:2], A[:2])
    with pytest.raises(ValueError, match=r"CC: A must be 2-D"):
        M.cc(np.ones((2, 16, 16)), A, A)
    with pytest.raises(ValueError, match=r"evaluate: B has shape"):
        M.evaluate(A, A[:8], A)


def test_evaluate_order_and_unknown():
    A, B = _smooth(seed=16), _smooth(seed=17)
    F = (A + B) / 2
    res = M.evaluate(A, B, F)
    assert tuple(res) == M.METRICS
    assert all(isinstance(v, float) for v in res.values())
    sub = M.evaluate(A, B, F, metrics=("psnr", "EN", "Qabf"))
    assert tuple(sub) == ("EN", "Qabf", "PSNR")
    assert sub["PSNR"] == M.psnr(A, B, F)
    assert M.evaluate(A, B, F, metrics="SF") == {"SF": M.sf(F)}
    with pytest.raises(ValueError, match=r"unknown metric 'FMI'.*EN, SD, SF"):
        M.evaluate(A, B, F, metrics=("EN", "FMI"))


def _qg(g: float) -> float:
    return 0.9994 / (1 + math.exp(-15 * (g - 0.5)))


def _qa(a: float) -> float:
    return 0.9879 / (1 + math.exp(-22 * (a - 0.8)))


def test_qabf_nabf_ramp_closed_forms():
    i, j = np.mgrid[0:9, 0:12].astype(np.float64)
    A = 5.0 * j  # Sobel: gx = 8*5, gy = 0, alpha = 0 on every interior pixel
    # F = 5*i: same strength, orientation pi/2 -> G = 1, Ao = 0.
    assert M.qabf(A, A, 5.0 * i) == pytest.approx(_qg(1) * _qa(0), rel=1e-12)
    # F = 2A: G = 1/2, Ao = 1 -> Qabf = Q = Qg(0.5) Qa(1); gF > gA everywhere so Nabf = 1 - Q.
    q = _qg(0.5) * _qa(1)
    assert M.qabf(A, A, 2 * A) == pytest.approx(q, rel=1e-12)
    assert M.nabf(A, A, 2 * A) == pytest.approx(1 - q, rel=1e-12)
    # F = A / 2: weaker, not an artefact -> Nabf = 0, Qabf = the same Q.
    assert M.nabf(A, A, A / 2) == 0.0
    assert M.qabf(A, A, A / 2) == pytest.approx(q, rel=1e-12)
    # Orientation is compared modulo pi: alpha just below +pi/2 vs just above -pi/2 is almost the same line.
    B = 5.0 * i + 0.01 * j
    assert M.qabf(B, B, 5.0 * i - 0.01 * j) == pytest.approx(M.QABF_MAX, rel=1e-3)
    assert M.qabf(A, A, 300 - A) == pytest.approx(M.QABF_MAX, rel=1e-12)  # sign flip keeps the orientation


def test_vif_contrast_and_offset():
    A = _smooth((48, 48), 18)
    # dist = k * ref (k > 1): g = k, sv clamps to eps -> each term > 1 (vifp rewards contrast gain).
    assert M.vif(A, A, 1.5 * A) > 2.0
    # dist = ref + constant: the local statistics are unchanged -> each term ~ 1.
    assert M.vif(A, A, A + 17.0) == pytest.approx(2.0, abs=1e-7)
