"""The differentiable VIF and Qabf training terms against the evaluation metrics they stand for."""

from __future__ import annotations

import math

import pytest
import torch

from tita_fast import metrics
from tita_fast.train import metric_terms
from tita_fast.train.config import TrainConfig
from tita_fast.train.losses import build_loss


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    threads = torch.get_num_threads()  # tiny tensors: intra-op threads only add synchronisation
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sources(n=1, height=48, width=53, seed=0):
    """A, B: textured sources sharing structure; F: a noisy average (all in [0, 1], float64)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    base = 0.5 + 0.3 * torch.sin(xx / 3.0) * torch.cos(yy / 5.0)
    a = (base + 0.1 * torch.rand(n, 1, height, width, generator=g, dtype=torch.float64)).clamp(0, 1)
    b = (0.6 * base.flip(1) + 0.3 * torch.rand(n, 1, height, width, generator=g, dtype=torch.float64)).clamp(0, 1)
    f = ((a + b) / 2 + 0.05 * torch.randn(n, 1, height, width, generator=g, dtype=torch.float64)).clamp(0, 1)
    return a, b, f


def as_255(*images):
    return [t[0, 0].detach().numpy() * 255 for t in images]


@pytest.mark.parametrize("shape", [(41, 41), (48, 53), (64, 64)])
@pytest.mark.parametrize("case", ["noisy average", "F = A", "F = B swapped"])
def test_terms_equal_the_metrics_for_one_image(shape, case):
    # 1e-12 relative: the same float64 formulas, only the order of the sums differs (conv2d vs shifted slices).
    a, b, f = sources(height=shape[0], width=shape[1], seed=shape[1])
    if case == "F = A":
        f = a.clone()
    elif case == "F = B swapped":
        a, b, f = b, a, b.clone()
    A, B, F = as_255(a, b, f)
    assert metric_terms.vif(a, b, f).item() == pytest.approx(metrics.vif(A, B, F), rel=1e-12)
    assert metric_terms.qabf(a, b, f).item() == pytest.approx(metrics.qabf(A, B, F), rel=1e-12)


def test_a_batch_counts_as_one_image():
    # Two copies of one image: every sum doubles, the ratios stay the metric of the image.
    a, b, f = sources(seed=3)
    A, B, F = as_255(a, b, f)
    twice = [torch.cat([t, t]) for t in (a, b, f)]
    assert metric_terms.vif(*twice).item() == pytest.approx(metrics.vif(A, B, F), rel=1e-12)
    assert metric_terms.qabf(*twice).item() == pytest.approx(metrics.qabf(A, B, F), rel=1e-12)
    # A flat crop (a saturated patch) alone is 0/0 for VIF; in a batch it adds nothing to either sum.
    flat = torch.ones_like(a)
    mixed = [torch.cat([t, flat]) for t in (a, b)]
    fused = torch.cat([f, flat]).requires_grad_()
    value = metric_terms.vif(*mixed, fused)
    value.backward()
    assert math.isfinite(value.item()) and torch.isfinite(fused.grad).all()
    assert metric_terms.vif(flat, flat, flat).item() == 0.0 == metrics.vif(*as_255(flat, flat, flat))


def test_gradients_match_finite_differences():
    a, b, f = sources(height=41, width=43, seed=5)
    f.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: metric_terms.vif(a, b, t), (f,), fast_mode=True)
    small = [t[..., 10:18, 20:29].detach().clone() for t in (a, b, f)]
    small[2].requires_grad_()
    assert torch.autograd.gradcheck(lambda t: metric_terms.qabf(small[0], small[1], t), (small[2],), fast_mode=True)


def test_ascending_the_terms_raises_the_metrics():
    # The point of the terms: a few gradient steps on F raise VIF and Qabf as tita_fast.metrics measures them.
    a, b, f = sources(seed=7)
    A, B = as_255(a, b)
    for term, metric in ((metric_terms.vif, metrics.vif), (metric_terms.qabf, metrics.qabf)):
        fused = f.clone().requires_grad_()
        before = metric(A, B, *as_255(fused))
        optimizer = torch.optim.Adam([fused], lr=2e-3)
        for _ in range(20):
            optimizer.zero_grad()
            (-term(a, b, fused)).backward()
            optimizer.step()
        assert metric(A, B, *as_255(fused)) > before + 0.02


@pytest.mark.parametrize("task", ["vif", "mef", "mff"])
def test_loss_adds_the_weighted_terms(task):
    a, b, f = sources(n=2, seed=9)
    published = build_loss(task).terms(a, b, f)
    assert list(published) == ["intensity", "gradient", "ssim"]
    terms = build_loss(task, vif_weight=20.0, qabf_weight=10.0).terms(a, b, f)
    assert list(terms) == ["intensity", "gradient", "ssim", "vif", "qabf"]
    for key in published:
        assert torch.equal(terms[key], published[key])
    torch.testing.assert_close(terms["vif"], 20 * torch.exp(-metric_terms.vif(a, b, f) / 2), rtol=0, atol=0)
    torch.testing.assert_close(terms["qabf"], 10 * (1 - metric_terms.qabf(a, b, f)), rtol=0, atol=0)
    assert build_loss(task, vif_weight=1.0)(a, b, f) == sum(build_loss(task, vif_weight=1.0).terms(a, b, f).values())


def test_bad_weights_and_inputs_are_refused():
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="vif_weight must be a finite number >= 0"):
            build_loss("vif", vif_weight=bad)
        with pytest.raises(ValueError, match="qabf_weight must be a finite number >= 0"):
            build_loss("vif", qabf_weight=bad)
    colour = torch.rand(1, 3, 48, 48, dtype=torch.float64)
    with pytest.raises(ValueError, match="need single-channel images, got 3 channels"):
        build_loss("mef", qabf_weight=1.0)(colour, colour, colour)
    build_loss("mef")(colour, colour, colour)  # the published loss stays depthwise
    tasks = {"ivif": {"loss": "vif", "sources": [{"task_path": "/d", "subdir1": "a", "subdir2": "b"}]}}
    with pytest.raises(ValueError, match="vif_weight must be a finite number >= 0, got -1"):
        TrainConfig.from_dict({"tasks": tasks, "vif_weight": -1})
    with pytest.raises(ValueError, match="qabf_weight must be a finite number >= 0, got 'x'"):
        TrainConfig.from_dict({"tasks": tasks, "qabf_weight": "x"})
    with pytest.raises(ValueError, match="the VIF term needs crop_size >= 41"):
        TrainConfig.from_dict({"tasks": tasks, "vif_weight": 1.0, "crop_size": 32})


def test_terms_stay_positive_when_fusion_raises_contrast():
    # FAMO takes the log of every task loss. Two dark (under-exposed) sources and a fused image of raised
    # contrast: VIF per source > 1, so 1 - VIF / 2 would be negative; the exp form is not.
    a, _, _ = sources(seed=11)
    dark = a * 0.3
    brighter = ((a - 0.5) * 1.5 + 0.5).clamp(0, 1)
    assert metric_terms.vif(dark, 0.9 * dark, brighter).item() > 2
    for task in ("vif", "mef", "mff"):
        terms = build_loss(task, vif_weight=20.0, qabf_weight=10.0).terms(dark, 0.9 * dark, brighter)
        assert all(value.item() > 0 for value in terms.values()), terms
