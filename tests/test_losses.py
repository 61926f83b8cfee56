"""The TITA fusion losses against hand-derived values and an independent float64 NumPy loop implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tita_fast.train.losses import (
    LOSSES,
    SSIM_C1,
    FusionLoss,
    MEFLoss,
    MFFLoss,
    VIFLoss,
    build_loss,
    sobel_gradient,
    ssim,
    ssim_map,
)

TASKS = ["vif", "mef", "mff"]


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    # The tensors here are tiny: intra-op threads only add synchronisation, which on a busy 2-core machine
    # made gradcheck's hundreds of small forwards over 10x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------------------
# Independent reference: explicit per-pixel loops over zero-padded NumPy arrays, written from the spec formulas
# without torch convolutions. Images are 2-D (H, W) float64 arrays; batches are (N, H, W).
# ---------------------------------------------------------------------------------------------------------------

NP_KX = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
NP_KY = np.array([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])


def np_sobel(img: np.ndarray) -> np.ndarray:
    height, width = img.shape
    padded = np.zeros((height + 2, width + 2))
    padded[1:-1, 1:-1] = img
    out = np.zeros((height, width))
    for i in range(height):
        for j in range(width):
            gx = gy = 0.0
            for u in range(3):
                for v in range(3):
                    gx += NP_KX[u, v] * padded[i + u, j + v]
                    gy += NP_KY[u, v] * padded[i + u, j + v]
            out[i, j] = abs(gx) + abs(gy)
    return out


def np_window() -> np.ndarray:
    g = np.array([math.exp(-((k - 5) ** 2) / (2 * 1.5**2)) for k in range(11)])
    g /= g.sum()
    return np.outer(g, g)


def np_ssim_map(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    c1, c2 = 0.01**2, 0.03**2
    w = np_window()
    pp, qp = np.pad(p, 5), np.pad(q, 5)
    out = np.zeros(p.shape)
    for i in range(p.shape[0]):
        for j in range(p.shape[1]):
            wp, wq = pp[i : i + 11, j : j + 11], qp[i : i + 11, j : j + 11]
            mu_p, mu_q = (w * wp).sum(), (w * wq).sum()
            var_p = (w * wp * wp).sum() - mu_p**2
            var_q = (w * wq * wq).sum() - mu_q**2
            cov = (w * wp * wq).sum() - mu_p * mu_q
            out[i, j] = ((2 * mu_p * mu_q + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_q**2 + c1) * (var_p + var_q + c2))
    return out


def np_loss_terms(task: str, a: np.ndarray, b: np.ndarray, f: np.ndarray) -> dict[str, float]:
    sobel_a = np.stack([np_sobel(x) for x in a])
    sobel_b = np.stack([np_sobel(x) for x in b])
    sobel_f = np.stack([np_sobel(x) for x in f])
    ssim_a = np.mean([np_ssim_map(x, y) for x, y in zip(a, f, strict=True)])
    ssim_b = np.mean([np_ssim_map(x, y) for x, y in zip(b, f, strict=True)])
    g_a, g_b = sobel_a.mean(), sobel_b.mean()
    target = np.maximum(a, b) if task == "vif" else (a + b) / 2
    weighted = (ssim_a + ssim_b) / 2 if task == "mef" else (g_a * ssim_a + g_b * ssim_b) / (g_a + g_b)
    return {
        "intensity": 20 * np.abs(f - target).mean(),
        "gradient": 20 * np.abs(sobel_f - np.maximum(sobel_a, sobel_b)).mean(),
        "ssim": 10 * (1 - weighted),
    }


def np_loss(task: str, a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> float:
    """Total loss of (N, 1, H, W) torch tensors by the reference."""
    arrays = [t.detach().to(torch.float64).numpy()[:, 0] for t in (a, b, f)]
    return sum(np_loss_terms(task, *arrays).values())


def rand(*shape: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def sources(n: int = 1, height: int = 6, width: int = 7, seed: int = 0) -> tuple[torch.Tensor, ...]:
    return tuple(rand(n, 1, height, width, seed=seed + k) for k in range(3))


# ---------------------------------------------------------------------------------------------------------------
# Sobel
# ---------------------------------------------------------------------------------------------------------------


def test_sobel_of_an_impulse():
    # A single 1 at (1, 1): cross-correlation places the kernel rotated by 180 degrees around it, so
    # |conv(x, Kx)| = |Kx| flipped = [[1,0,1],[2,0,2],[1,0,1]] and |conv(x, Ky)| = [[1,2,1],[0,0,0],[1,2,1]] on the
    # 3x3 block of rows/cols 0..2; their sum is 2 everywhere there except 0 at the impulse itself. Row 3 and
    # column 3 are two pixels away from the impulse, out of reach of a 3x3 kernel: 0.
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    x[0, 0, 1, 1] = 1.0
    expected = torch.tensor(
        [[2.0, 2.0, 2.0, 0.0], [2.0, 0.0, 2.0, 0.0], [2.0, 2.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64
    )
    torch.testing.assert_close(sobel_gradient(x)[0, 0], expected, rtol=0, atol=0)


def test_sobel_of_a_ramp_sees_the_zero_padding():
    # x[i, j] = j on 3 rows x 4 columns, zero outside.
    # |gx| = sum over the (existing) rows of weights (1, 2, 1) times x[., j+1] - x[., j-1]:
    #   middle row weight 1+2+1 = 4, top/bottom rows 2+1 = 3 (the padded row is 0);
    #   differences: col 0: 1 - 0(pad) = 1, cols 1, 2: 2, col 3: 0(pad) - 2 = -2
    #   -> middle row [4, 8, 8, 8], top/bottom [3, 6, 6, 6].
    # |gy| = |(1, 2, 1)-weighted row above - same of the row below|: middle row 0 (rows 0 and 2 are equal);
    #   top row: 0(pad) - smoothed row 1 = -(x[j-1] + 2 x[j] + x[j+1]) with zero columns outside:
    #   col 0: 0+0+1 = 1, col 1: 0+2+2 = 4, col 2: 1+4+3 = 8, col 3: 2+6+0 = 8; the bottom row mirrors it.
    x = torch.arange(4, dtype=torch.float64).repeat(3, 1).reshape(1, 1, 3, 4)
    expected = torch.tensor([[4.0, 10.0, 14.0, 14.0], [4.0, 8.0, 8.0, 8.0], [4.0, 10.0, 14.0, 14.0]])
    torch.testing.assert_close(sobel_gradient(x)[0, 0], expected.double(), rtol=0, atol=0)


def test_sobel_matches_reference_and_is_depthwise():
    x = rand(2, 3, 5, 6, seed=1)
    out = sobel_gradient(x)
    assert out.shape == x.shape
    for n in range(2):
        for c in range(3):
            np.testing.assert_allclose(out[n, c].numpy(), np_sobel(x[n, c].numpy()), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# SSIM
# ---------------------------------------------------------------------------------------------------------------


def test_ssim_of_an_image_with_itself_is_one():
    x = rand(2, 1, 12, 13, seed=2)
    torch.testing.assert_close(ssim_map(x, x), torch.ones_like(x), rtol=0, atol=1e-12)
    assert abs(ssim(x, x).item() - 1.0) < 1e-12


def test_ssim_map_matches_independent_float64_loops():
    p, q = rand(1, 1, 12, 13, seed=3), rand(1, 1, 12, 13, seed=4)
    expected = np_ssim_map(p[0, 0].numpy(), q[0, 0].numpy())
    np.testing.assert_allclose(ssim_map(p, q)[0, 0].numpy(), expected, rtol=0, atol=1e-12)
    assert abs(ssim(p, q).item() - expected.mean()) < 1e-12


@pytest.mark.parametrize(("a", "b"), [(0.3, 0.7), (0.0, 0.5)])
def test_ssim_of_constants_at_interior_pixels(a, b):
    # Where the 11x11 window lies inside the 24x24 image (5 pixels from every edge) mu = the constant and every
    # variance/covariance vanishes, so the map is (2ab + C1) C2 / ((a^2 + b^2 + C1) C2) = (2ab + C1) / (a^2 + b^2 + C1).
    # With a = 0 this is C1 / (b^2 + C1), which pins C1. Near the border zero padding pulls mu towards 0.
    p = torch.full((1, 1, 24, 24), a, dtype=torch.float64)
    q = torch.full((1, 1, 24, 24), b, dtype=torch.float64)
    m = ssim_map(p, q)[0, 0]
    expected = (2 * a * b + SSIM_C1) / (a * a + b * b + SSIM_C1)
    torch.testing.assert_close(m[5:-5, 5:-5], torch.full((14, 14), expected, dtype=torch.float64), rtol=1e-12, atol=0)
    assert not math.isclose(m[0, 0].item(), expected, rel_tol=0.1)
    np.testing.assert_allclose(m.numpy(), np_ssim_map(p[0, 0].numpy(), q[0, 0].numpy()), rtol=1e-12, atol=1e-14)


def test_ssim_is_per_channel():
    p, q = rand(1, 2, 12, 13, seed=5), rand(1, 2, 12, 13, seed=6)
    m = ssim_map(p, q)
    for c in range(2):
        torch.testing.assert_close(m[:, c : c + 1], ssim_map(p[:, c : c + 1], q[:, c : c + 1]), rtol=0, atol=1e-14)


# ---------------------------------------------------------------------------------------------------------------
# Losses: values
# ---------------------------------------------------------------------------------------------------------------


def test_hand_example_black_and_constant_sources():
    # A = 0, B = F = 0.6 on 4x4. sobel(A) = 0 and sobel(F) = sobel(B), so every gradient term is 0, and gA = 0
    # makes the gradient-weighted SSIM weights (0, 1): the SSIM term is 10 (1 - ssim(B, B)) = 0.
    #   vif: intensity |F - max(A, B)| = 0                    -> total 0
    #   mff: intensity 20 * |0.6 - 0.3| = 6                   -> total 6
    #   mef: intensity 6, SSIM 10 (1 - (ssim(A, F) + 1) / 2) = 5 (1 - ssim(0, 0.6))
    # ssim(0, 0.6) needs the zero-padded window sums at the border: taken from the independent loops.
    a = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    b = torch.full_like(a, 0.6)
    f = b.clone()
    zero = torch.tensor(0.0, dtype=torch.float64)
    six = torch.tensor(6.0, dtype=torch.float64)
    ssim_black_constant = np_ssim_map(np.zeros((4, 4)), np.full((4, 4), 0.6)).mean()
    mef_ssim = torch.tensor(5 * (1 - ssim_black_constant), dtype=torch.float64)
    expected = {
        "vif": {"intensity": zero, "gradient": zero, "ssim": zero},
        "mff": {"intensity": six, "gradient": zero, "ssim": zero},
        "mef": {"intensity": six, "gradient": zero, "ssim": mef_ssim},
    }
    for task, terms in expected.items():
        got = build_loss(task).terms(a, b, f)
        for key, value in terms.items():
            torch.testing.assert_close(got[key], value, rtol=0, atol=1e-12, msg=f"{task} {key}")
    assert mef_ssim.item() > 1.0  # the MEF term is far from 0 here, so the three tasks are told apart


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("n", [1, 3])
def test_loss_terms_match_independent_float64_loops(task, n):
    a, b, f = sources(n=n, height=4 + n, width=5, seed=10 * n)
    got = build_loss(task).terms(a, b, f)
    expected = np_loss_terms(task, *(t.numpy()[:, 0] for t in (a, b, f)))
    for key in ("intensity", "gradient", "ssim"):
        assert abs(got[key].item() - expected[key]) < 1e-12, key


def test_tasks_differ_exactly_where_the_spec_says():
    a, b, f = sources(seed=20)
    vif, mef, mff = (build_loss(task).terms(a, b, f) for task in TASKS)
    # vif vs mff: only the intensity target (max vs mean) differs.
    assert vif["gradient"] == mff["gradient"] and vif["ssim"] == mff["ssim"]
    assert abs(vif["intensity"] - mff["intensity"]) > 1e-3
    torch.testing.assert_close(vif["intensity"], 20 * (f - torch.maximum(a, b)).abs().mean())
    # mef vs mff: only the SSIM weighting (equal vs gradient) differs.
    assert mef["intensity"] == mff["intensity"] and mef["gradient"] == mff["gradient"]
    assert abs(mef["ssim"] - mff["ssim"]) > 1e-6
    torch.testing.assert_close(mef["intensity"], 20 * (f - (a + b) / 2).abs().mean())
    torch.testing.assert_close(mef["ssim"], 10 * (1 - (ssim(a, f) + ssim(b, f)) / 2))
    g_a, g_b = sobel_gradient(a).mean(), sobel_gradient(b).mean()
    torch.testing.assert_close(mff["ssim"], 10 * (1 - (g_a * ssim(a, f) + g_b * ssim(b, f)) / (g_a + g_b)))


@pytest.mark.parametrize("task", TASKS)
def test_terms_sum_to_forward(task):
    loss = build_loss(task)
    a, b, f = sources(n=2, seed=30)
    terms = loss.terms(a, b, f)
    assert list(terms) == ["intensity", "gradient", "ssim"]
    assert all(t.dim() == 0 for t in terms.values())
    assert loss(a, b, f) == terms["intensity"] + terms["gradient"] + terms["ssim"]


@pytest.mark.parametrize("task", TASKS)
def test_batch_weights_are_over_the_whole_batch(task):
    # Images with different gradient ratios gA/gB: batch-wide weights differ from per-image weights, so for the
    # gradient-weighted tasks the batch loss is not the mean of per-image losses; every other part of the loss is
    # a plain mean over equally sized images, so for mef the two agree.
    a, b, f = sources(n=3, seed=40)
    a = a * torch.tensor([1.0, 0.1, 0.5], dtype=torch.float64).reshape(3, 1, 1, 1)
    b = b * torch.tensor([0.2, 1.0, 0.5], dtype=torch.float64).reshape(3, 1, 1, 1)
    loss = build_loss(task)
    batch = loss(a, b, f)
    per_image = torch.stack([loss(a[i : i + 1], b[i : i + 1], f[i : i + 1]) for i in range(3)]).mean()
    assert abs(batch.item() - np_loss(task, a, b, f)) < 1e-12
    if task == "mef":
        assert abs(batch.item() - per_image.item()) < 1e-12
    else:
        assert abs(batch.item() - per_image.item()) > 1e-3


# ---------------------------------------------------------------------------------------------------------------
# Losses: gradients, dtypes, the flat-source case
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_gradcheck(task):
    inputs = tuple(t.requires_grad_() for t in sources(seed=50))
    assert torch.autograd.gradcheck(build_loss(task), inputs)


@pytest.mark.parametrize("task", TASKS)
def test_float32_agrees_with_float64(task):
    loss = build_loss(task)
    a, b, f = sources(n=2, height=16, width=16, seed=60)
    out64 = loss(a, b, f)
    out32 = loss(a.float(), b.float(), f.float())
    assert out64.dtype == torch.float64 and out32.dtype == torch.float32
    assert abs(out32.item() - out64.item()) <= 1e-5 * abs(out64.item())


def test_mixed_float_dtypes_are_promoted():
    a, b, f = sources(seed=65)
    out = build_loss("vif")(a, b, f.float())
    assert out.dtype == torch.float64
    assert out == build_loss("vif")(a, b, f.float().double())


@pytest.mark.parametrize("task", ["vif", "mff"])
def test_flat_sources_use_equal_ssim_weights(task):
    # A = B = 0: gA = gB = 0, so gA / (gA + gB) is 0/0; the loss defines the weights as 1/2 each.
    a = torch.zeros(1, 1, 6, 7, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, 1, 6, 7, dtype=torch.float64, requires_grad=True)
    f = rand(1, 1, 6, 7, seed=70).requires_grad_()
    loss = build_loss(task)
    terms = loss.terms(a, b, f)
    torch.testing.assert_close(terms["ssim"], 10 * (1 - (ssim(a, f) + ssim(b, f)) / 2), rtol=0, atol=1e-14)
    total = loss(a, b, f)
    assert torch.isfinite(total)
    total.backward()
    for t in (a, b, f):
        assert torch.isfinite(t.grad).all()
    assert f.grad.abs().sum() > 0
    assert torch.autograd.gradcheck(lambda fused: loss(a.detach(), b.detach(), fused), (f.detach().requires_grad_(),))


# ---------------------------------------------------------------------------------------------------------------
# Input checks, registry, module behaviour
# ---------------------------------------------------------------------------------------------------------------


def test_shape_mismatch_is_rejected_with_the_shapes():
    a, b, _ = sources()
    f = rand(1, 1, 6, 8, seed=80)
    with pytest.raises(ValueError, match=r"\(1, 1, 6, 8\)") as info:
        build_loss("vif")(a, b, f)
    assert "(1, 1, 6, 7)" in str(info.value)


def test_three_dimensional_input_is_rejected():
    a, b, f = sources()
    with pytest.raises(ValueError, match=r"4-D.*\(1, 6, 7\)"):
        build_loss("mef")(a, b, f[0])
    with pytest.raises(ValueError, match="4-D"):
        sobel_gradient(a[0])
    with pytest.raises(ValueError, match="4-D"):
        ssim(a[0], b[0])


def test_integer_dtype_is_rejected():
    a, b, f = sources()
    with pytest.raises(ValueError, match="floating"):
        build_loss("mff")((a * 255).to(torch.uint8), b, f)
    with pytest.raises(ValueError, match="floating"):
        sobel_gradient(torch.ones(1, 1, 3, 3, dtype=torch.int64))


def test_device_mismatch_is_rejected():
    a, b, f = sources()
    with pytest.raises(ValueError, match="one device"):
        build_loss("vif")(a, b.to("meta"), f)


def test_build_loss_and_registry():
    assert set(LOSSES) == {"vif", "mef", "mff"}
    assert type(build_loss("vif")) is VIFLoss
    assert type(build_loss("mef")) is MEFLoss
    assert type(build_loss("mff")) is MFFLoss
    assert all(issubclass(cls, FusionLoss) for cls in LOSSES.values())
    with pytest.raises(ValueError, match="'ssim'.*vif.*mef.*mff"):
        build_loss("ssim")


def test_losses_hold_no_state_and_move_freely():
    loss = build_loss("vif").to(torch.float64)
    assert not list(loss.parameters()) and not list(loss.buffers()) and not loss.state_dict()
    a, b, f = sources(seed=90)
    assert loss(a.float(), b.float(), f.float()).dtype == torch.float32
