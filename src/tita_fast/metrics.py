"""Image-fusion quality metrics on 0-255 luminance (float64 numpy).

Sources ``A``, ``B`` and fused image ``F`` are 2-D arrays of one shape (numpy arrays or torch tensors; leading
singleton axes such as ``(1, H, W)`` / ``(1, 1, H, W)`` are squeezed). Values must be finite (NaN/Inf raise
``ValueError``) and are taken as 0-255 luminance as given: integer inputs are *not* rescaled here, use
:func:`luminance` to convert RGB / uint16 / other images first. Every metric needs at least 2x2 pixels; Qabf and Nabf
need 3x3, SSIM 11x11 and VIF 41x41 (a ``ValueError`` names the metric and the minimum).

Conventions (fixed; ``M`` rows, ``N`` columns):

- **EN**: Shannon entropy of F in bits over a 256-bin histogram of F rounded (half to even) and clipped to 0..255.
- **SD**: population standard deviation of F (ddof=0).
- **SF**: ``sqrt(RF^2 + CF^2)``, ``RF^2 = sum (F[i,j]-F[i,j-1])^2 / (M(N-1))``,
  ``CF^2 = sum (F[i,j]-F[i-1,j])^2 / ((M-1)N)`` (each mean over the differences that exist).
- **AG**: mean over the ``(M-1)(N-1)`` positions ``i < M-1, j < N-1`` of ``sqrt((dx^2 + dy^2) / 2)`` with forward
  differences ``dx = F[i,j+1]-F[i,j]``, ``dy = F[i+1,j]-F[i,j]``.
- **MI**: ``MI(A,F) + MI(B,F)``, each in bits from the 256x256 joint histogram of the rounded/clipped images.
- **SCD**: ``corr(F-B, A) + corr(F-A, B)`` (Pearson). A correlation with a zero-variance argument is undefined; it
  is defined as 0 here (also in CC).
- **VIF**: pixel-domain VIF ("vifp", Sheikh & Bovik), ``VIF(A,F) + VIF(B,F)`` with reference = source, distorted =
  fused. 4 scales; scale ``s`` uses a Gaussian window of size ``n = 2^(5-s)+1`` (17, 9, 5, 3), sigma ``n/5``;
  before scales 2..4 both images are Gaussian-filtered ('valid') and decimated by 2 (``x[::2, ::2]``). Local
  statistics use 'valid' filtering, ``sigma_nsq = 2``, ``eps = 1e-10``; ``g = s12 / (s1 + eps)``,
  ``sv = s2 - g s12``, with the usual clamps (negative variances -> 0; ``s1 < eps`` -> ``g = 0, sv = s2, s1 = 0``;
  ``s2 < eps`` -> ``g = 0, sv = 0``; ``g < 0`` -> ``sv = s2, g = 0``; ``sv <= eps`` -> ``sv = eps``);
  ``VIF = sum_s sum log10(1 + g^2 s1 / (sv + sigma_nsq)) / sum_s sum log10(1 + s1 / sigma_nsq)``. A source with no
  local variance at all (denominator 0, the formula is 0/0) contributes 0. For ref == dist each term is 1 up to
  ~1e-10 (the ``eps`` clamps).
- **Qabf** (Xydeas-Petrovic): 3x3 Sobel gradients on the **valid interior** (the ``(M-2)x(N-2)`` pixels whose
  neighbourhood lies inside the image; no padding, so no artificial border edges). Strength ``g = sqrt(gx^2+gy^2)``,
  orientation ``alpha = atan(gy/gx)`` with ``alpha = pi/2`` where ``gx == 0``. Relative strength
  ``G = min(gS, gF) / max(gS, gF)`` (``G = 1`` where both are 0); relative orientation
  ``Ao = 1 - |alphaS - alphaF| / (pi/2)`` with the difference taken modulo pi, i.e.
  ``Ao = ||alphaS - alphaF| - pi/2| / (pi/2)``. ``Qg = Tg / (1 + exp(kg (G - Dg)))``,
  ``Qa = Ta / (1 + exp(ka (Ao - Da)))`` with ``Tg, kg, Dg = 0.9994, -15, 0.5`` and ``Ta, ka, Da = 0.9879, -22,
  0.8``; ``Q_SF = Qg Qa``; weights ``w_S = gS^L``, ``L = 1``;
  ``Qabf = sum(Q_AF w_A + Q_BF w_B) / sum(w_A + w_B)``. These constants are not normalised: perfect preservation
  (``G = Ao = 1``) gives ``QABF_MAX = Qg(1) Qa(1) ~= 0.9748``, so ``qabf(A, A, A) == QABF_MAX`` (not 1) for any A
  with an edge. A constant F scores at most ``Qg(0) Ta ~= 5.5e-4`` (not exactly 0). If both sources are flat
  (``sum w = 0``) Qabf is defined as 0.
- **SSIM**: ``SSIM(A,F) + SSIM(B,F)``; each is the mean of the SSIM map over the **valid** region (no padding) with
  an 11x11 Gaussian window (sigma 1.5, normalised), ``C1 = (0.01*255)^2``, ``C2 = (0.03*255)^2``, weighted
  (population) local variances ``E[x^2] - E[x]^2``.
- **PSNR**: ``10 log10(255^2 / MSE)``, ``MSE = (MSE(A,F) + MSE(B,F)) / 2``; ``MSE == 0`` gives ``+inf``.
- **CC**: ``(corr(A,F) + corr(B,F)) / 2`` (Pearson; zero variance -> that term is 0).
- **Nabf** (Kumar 2013, modified artefact measure): same Sobel/Q quantities as Qabf;
  ``AM = 1`` where ``gF > gA and gF > gB`` else 0;
  ``Nabf = sum AM ((1 - Q_AF) w_A + (1 - Q_BF) w_B) / sum(w_A + w_B)``, ``L = 1``; 0 when ``sum w = 0``.

All two-source metrics are symmetric in A and B (exactly, in floating point).

**The cddfuse convention** (``evaluate(..., convention="cddfuse")``): the numbers of the CDDFuse evaluator
(``utils/Evaluator.py`` of MMIF-CDDFuse), which most fusion papers reuse, on the arrays as given. Its metrics are
``CDDFUSE_METRICS`` (no Nabf; MSE added). EN, SD and SF are the ones above; the others:

- **AG**: ``sqrt((gx^2 + gy^2) / 2)`` averaged over all ``MN`` pixels, with central differences inside and one-sided
  differences on the border rows and columns (``numpy.gradient``).
- **MI**: ``MI(A,F) + MI(B,F)`` in **nats** (``sklearn.metrics.mutual_info_score``): the joint histogram of the
  values as they are, each distinct value one bin (no rounding).
- **SCD**, **CC**: as above, but a correlation with a zero-variance argument is NaN (as the evaluator returns it).
- **VIF**: as above, but a source with no local variance at all (0/0) contributes 1.
- **Qabf**: Sobel with zero padding over the whole image (the border adds edges), gx of a convolution (minus
  ours: ``alpha = -arctan(gy/gx)``, still ``pi/2`` where ``gx == 0``); ``Ao = 1 - |alphaS - alphaF| / (pi/2)``
  without the modulo-pi fold; ``G = gF`` where ``gS == gF`` (0 where both are 0). NaN if both sources are flat.
- **SSIM**: ``SSIM(F,A) + SSIM(F,B)`` as ``skimage.metrics.structural_similarity`` computes it for uint8 images
  with its defaults: a 7x7 uniform window, sample (co)variances (``ddof = 1``), ``K1, K2 = 0.01, 0.03``, data range
  255; the mean of the map without the 3-pixel border (needs 7x7 pixels).
- **PSNR**: ``10 log10(max(F)^2 / MSE)``; **MSE**: ``(MSE(A,F) + MSE(B,F)) / 2``.

How our numbers relate to the CDDFuse Python evaluator and the MATLAB toolboxes: ``docs/metrics.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np

__all__ = [
    "CDDFUSE_METRICS",
    "CONVENTIONS",
    "METRICS",
    "QABF_MAX",
    "ag",
    "cc",
    "en",
    "evaluate",
    "luminance",
    "mi",
    "nabf",
    "psnr",
    "qabf",
    "scd",
    "sd",
    "sf",
    "ssim",
    "vif",
]

METRICS: tuple[str, ...] = ("EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM", "PSNR", "CC", "Nabf")
CDDFUSE_METRICS: tuple[str, ...] = ("EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM", "PSNR", "MSE", "CC")
CONVENTIONS: tuple[str, ...] = ("tita_fast", "cddfuse")

# Minimum (rows, cols) side per metric.
_MIN_SIDE = {"Qabf": 3, "Nabf": 3, "SSIM": 11, "VIF": 41}
_MIN_SIDE_CDDFUSE = {"SSIM": 7, "VIF": 41}  # skimage's 7x7 window; the VIF pyramid as ours

_TG, _KG, _DG = 0.9994, -15.0, 0.5
_TA, _KA, _DA = 0.9879, -22.0, 0.8


def _qg(g: np.ndarray | float) -> np.ndarray | float:
    return _TG / (1.0 + np.exp(_KG * (g - _DG)))


def _qa(a: np.ndarray | float) -> np.ndarray | float:
    return _TA / (1.0 + np.exp(_KA * (a - _DA)))


QABF_MAX: float = float(_qg(1.0) * _qa(1.0))
"""Qabf for perfect edge preservation (G = A = 1) with the standard, unnormalised constants (~0.9748)."""


# --------------------------------------------------------------------------------------------------------- inputs
def _to_numpy(x) -> np.ndarray:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of the package
        torch = None
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.is_floating_point():  # bf16/half have no numpy dtype
            x = x.to(torch.float64)
        return x.numpy()
    return np.asarray(x)


def _image(x, name: str, metric: str) -> np.ndarray:
    arr = _to_numpy(x)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{metric}: {name} must be a real numeric image, got dtype {arr.dtype}")
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"{metric}: {name} must be 2-D (H, W) (or (1, H, W) / (1, 1, H, W)), got shape {arr.shape}")
    arr = arr.astype(np.float64)
    side = _MIN_SIDE.get(metric, 2)
    if arr.shape[0] < side or arr.shape[1] < side:
        raise ValueError(f"{metric}: {name} must be at least {side}x{side} pixels, got {arr.shape[0]}x{arr.shape[1]}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{metric}: {name} contains NaN or Inf")
    return arr


def _images(metric: str, **named) -> list[np.ndarray]:
    arrays = [_image(v, k, metric) for k, v in named.items()]
    names = list(named)
    for k, a in zip(names[1:], arrays[1:], strict=True):
        if a.shape != arrays[0].shape:
            raise ValueError(f"{metric}: {k} has shape {a.shape} but {names[0]} has shape {arrays[0].shape}")
    return arrays


def luminance(image) -> np.ndarray:
    """0-255 float64 luminance of a 2-D gray image or an (H, W, 3) RGB image (BT.601: 0.299 R + 0.587 G + 0.114 B).

    ``(H, W, 1)`` is treated as gray. uint16 values are scaled by 255/65535; all other integer and float values are
    taken as 0-255 as they are (floats in 0..1 are *not* rescaled; no guessing). Bool, complex and non-finite
    inputs raise ``ValueError``.
    """
    arr = _to_numpy(image)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"luminance: image must be a real numeric array, got dtype {arr.dtype}")
    scale = 255.0 / 65535.0 if arr.dtype == np.uint16 else 1.0
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        out = arr.astype(np.float64)
    elif arr.ndim == 3 and arr.shape[2] == 3:
        rgb = arr.astype(np.float64)
        out = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    else:
        raise ValueError(f"luminance: expected (H, W), (H, W, 1) or (H, W, 3), got shape {arr.shape}")
    out = out * scale
    if not np.isfinite(out).all():
        raise ValueError("luminance: image contains NaN or Inf")
    return out


# -------------------------------------------------------------------------------------------------------- helpers
def _gauss1d(n: int, sigma: float) -> np.ndarray:
    x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
    k = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return k / k.sum()


def _filter_valid(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """'valid' 2-D filtering with the separable window ``outer(k, k)`` (k symmetric)."""
    n = k.size
    h, w = x.shape
    rows = sum(k[t] * x[t : h - n + 1 + t, :] for t in range(n))
    return sum(k[t] * rows[:, t : w - n + 1 + t] for t in range(n))


def _corr(x: np.ndarray, y: np.ndarray, undefined: float = 0.0) -> float:
    """Pearson correlation; ``undefined`` when either argument has zero variance."""
    xc = x - x.mean()
    yc = y - y.mean()
    den = math.sqrt(float((xc * xc).sum()) * float((yc * yc).sum()))
    return float((xc * yc).sum()) / den if den > 0 else undefined


def _levels(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.int64)


def _entropy_bits(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0  # no -0.0 for a constant image


def _mutual_information(x_labels: np.ndarray, f_labels: np.ndarray, log: Callable = np.log2) -> float:
    """MI of two images of non-negative integer labels from their joint histogram (``log``: bits or nats)."""
    rows, columns = int(x_labels.max()) + 1, int(f_labels.max()) + 1
    joint = np.bincount((x_labels * columns + f_labels).ravel(), minlength=rows * columns).reshape(rows, columns)
    pxy = joint / joint.sum()
    px = pxy.sum(axis=1, keepdims=True)
    pf = pxy.sum(axis=0, keepdims=True)
    nz = pxy > 0
    return float((pxy[nz] * log(pxy[nz] / (px @ pf)[nz])).sum())


def _vifp_pair(
    ref: np.ndarray, dist: np.ndarray, flat: float = 0.0, sigma_nsq: float = 2.0, eps: float = 1e-10
) -> float:
    """vifp of ``dist`` against ``ref``; ``flat`` when ``ref`` has no local variance at all (0/0)."""
    num = den = 0.0
    for s in range(1, 5):
        n = 2 ** (4 - s + 1) + 1
        k = _gauss1d(n, n / 5.0)
        if s > 1:
            ref = _filter_valid(ref, k)[::2, ::2]
            dist = _filter_valid(dist, k)[::2, ::2]
        mu1, mu2 = _filter_valid(ref, k), _filter_valid(dist, k)
        s1 = np.maximum(_filter_valid(ref * ref, k) - mu1 * mu1, 0.0)
        s2 = np.maximum(_filter_valid(dist * dist, k) - mu2 * mu2, 0.0)
        s12 = _filter_valid(ref * dist, k) - mu1 * mu2
        g = s12 / (s1 + eps)
        sv = s2 - g * s12
        low1 = s1 < eps
        g[low1] = 0.0
        sv[low1] = s2[low1]
        s1[low1] = 0.0
        low2 = s2 < eps
        g[low2] = 0.0
        sv[low2] = 0.0
        neg = g < 0
        sv[neg] = s2[neg]
        g[neg] = 0.0
        sv[sv <= eps] = eps
        num += float(np.log10(1.0 + g * g * s1 / (sv + sigma_nsq)).sum())
        den += float(np.log10(1.0 + s1 / sigma_nsq).sum())
    return num / den if den > 0 else flat


def _sobel_gradients(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 3x3 Sobel gradients (gx, gy) on the valid interior."""
    gx = (x[:-2, 2:] + 2 * x[1:-1, 2:] + x[2:, 2:]) - (x[:-2, :-2] + 2 * x[1:-1, :-2] + x[2:, :-2])
    gy = (x[2:, :-2] + 2 * x[2:, 1:-1] + x[2:, 2:]) - (x[:-2, :-2] + 2 * x[:-2, 1:-1] + x[:-2, 2:])
    return gx, gy


def _sobel(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Strength and orientation of the 3x3 Sobel gradient on the valid interior."""
    return _strength_orientation(*_sobel_gradients(x))


def _strength_orientation(gx: np.ndarray, gy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    strength = np.sqrt(gx * gx + gy * gy)
    zero = gx == 0
    alpha = np.where(zero, np.pi / 2, np.arctan(gy / np.where(zero, 1.0, gx)))
    return strength, alpha


def _edge_q(gs: np.ndarray, als: np.ndarray, gf: np.ndarray, alf: np.ndarray) -> np.ndarray:
    hi = np.maximum(gs, gf)
    rel_g = np.where(hi > 0, np.minimum(gs, gf) / np.where(hi > 0, hi, 1.0), 1.0)
    rel_a = np.abs(np.abs(als - alf) - np.pi / 2) / (np.pi / 2)
    return _qg(rel_g) * _qa(rel_a)


def _edge_q_cddfuse(gs: np.ndarray, als: np.ndarray, gf: np.ndarray, alf: np.ndarray) -> np.ndarray:
    """The evaluator's rules: G = gF where gS == gF, orientation difference without the modulo-pi fold."""
    ratio = np.minimum(gs, gf) / np.where(gs == gf, 1.0, np.maximum(gs, gf))
    rel_g = np.where(gs == gf, gf, ratio)
    rel_a = 1.0 - np.abs(als - alf) / (np.pi / 2)
    return _qg(rel_g) * _qa(rel_a)


def _edge_terms(a: np.ndarray, b: np.ndarray, f: np.ndarray):
    ga, ala = _sobel(a)
    gb, alb = _sobel(b)
    gf, alf = _sobel(f)
    return ga, gb, gf, _edge_q(ga, ala, gf, alf), _edge_q(gb, alb, gf, alf)


def _ssim_skimage_pair(x: np.ndarray, y: np.ndarray, data_range: float = 255.0) -> float:
    """skimage's ``structural_similarity`` with its defaults (7x7 uniform window, sample covariances); its map is
    cropped by 3 pixels on each side before the mean, which is exactly the 'valid' region of the window. The data
    range is 255 for uint8 images; 2 gives what skimage 0.19 computes on float images."""
    window = 7
    k = np.full(window, 1.0 / window)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    sample = window * window / (window * window - 1.0)
    mx, my = _filter_valid(x, k), _filter_valid(y, k)
    vx = sample * (_filter_valid(x * x, k) - mx * mx)
    vy = sample * (_filter_valid(y * y, k) - my * my)
    cxy = sample * (_filter_valid(x * y, k) - mx * my)
    smap = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(smap.mean())


def _ssim_pair(x: np.ndarray, y: np.ndarray) -> float:
    k = _gauss1d(11, 1.5)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = _filter_valid(x, k), _filter_valid(y, k)
    vx = _filter_valid(x * x, k) - mx * mx
    vy = _filter_valid(y * y, k) - my * my
    cxy = _filter_valid(x * y, k) - mx * my
    smap = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(smap.mean())


# -------------------------------------------------------------------------------------------------------- metrics
def en(F) -> float:
    """Entropy of F in bits (256-bin histogram of the rounded, clipped image)."""
    (f,) = _images("EN", F=F)
    return _entropy_bits(np.bincount(_levels(f).ravel(), minlength=256))


def sd(F) -> float:
    """Population standard deviation of F."""
    (f,) = _images("SD", F=F)
    return float(f.std())


def sf(F) -> float:
    """Spatial frequency sqrt(RF^2 + CF^2) with denominators M(N-1) and (M-1)N."""
    (f,) = _images("SF", F=F)
    rf2 = float((np.diff(f, axis=1) ** 2).mean())
    cf2 = float((np.diff(f, axis=0) ** 2).mean())
    return math.sqrt(rf2 + cf2)


def ag(F) -> float:
    """Average gradient: mean of sqrt((dx^2 + dy^2) / 2) over the (M-1)(N-1) forward-difference positions."""
    (f,) = _images("AG", F=F)
    dx = f[:-1, 1:] - f[:-1, :-1]
    dy = f[1:, :-1] - f[:-1, :-1]
    return float(np.sqrt((dx * dx + dy * dy) / 2.0).mean())


def mi(A, B, F) -> float:
    """MI(A, F) + MI(B, F) in bits (256x256 joint histograms of the rounded, clipped images)."""
    a, b, f = _images("MI", A=A, B=B, F=F)
    return _mutual_information(_levels(a), _levels(f)) + _mutual_information(_levels(b), _levels(f))


def scd(A, B, F) -> float:
    """Sum of correlation differences corr(F - B, A) + corr(F - A, B)."""
    a, b, f = _images("SCD", A=A, B=B, F=F)
    return _corr(f - b, a) + _corr(f - a, b)


def vif(A, B, F) -> float:
    """Pixel-domain VIF (vifp): VIF(A, F) + VIF(B, F), source = reference, fused = distorted."""
    a, b, f = _images("VIF", A=A, B=B, F=F)
    return _vifp_pair(a, f) + _vifp_pair(b, f)


def qabf(A, B, F) -> float:
    """Xydeas-Petrovic edge preservation Qabf (valid-interior Sobel, L = 1; max QABF_MAX ~ 0.9748)."""
    a, b, f = _images("Qabf", A=A, B=B, F=F)
    ga, gb, _, qa, qb = _edge_terms(a, b, f)
    wsum = float((ga + gb).sum())
    return float((qa * ga + qb * gb).sum()) / wsum if wsum > 0 else 0.0


def ssim(A, B, F) -> float:
    """SSIM(A, F) + SSIM(B, F): Gaussian 11x11 (sigma 1.5), data range 255, valid region."""
    a, b, f = _images("SSIM", A=A, B=B, F=F)
    return _ssim_pair(a, f) + _ssim_pair(b, f)


def psnr(A, B, F) -> float:
    """10 log10(255^2 / MSE), MSE = (MSE(A, F) + MSE(B, F)) / 2; +inf when MSE == 0."""
    a, b, f = _images("PSNR", A=A, B=B, F=F)
    mse = (float(((a - f) ** 2).mean()) + float(((b - f) ** 2).mean())) / 2.0
    return 10.0 * math.log10(255.0**2 / mse) if mse > 0 else math.inf


def cc(A, B, F) -> float:
    """(corr(A, F) + corr(B, F)) / 2 (Pearson; a zero-variance term is 0)."""
    a, b, f = _images("CC", A=A, B=B, F=F)
    return (_corr(a, f) + _corr(b, f)) / 2.0


def nabf(A, B, F) -> float:
    """Kumar's modified fusion-artefact measure Nabf (same quantities as Qabf, L = 1)."""
    a, b, f = _images("Nabf", A=A, B=B, F=F)
    ga, gb, gf, qa, qb = _edge_terms(a, b, f)
    wsum = float((ga + gb).sum())
    am = (gf > ga) & (gf > gb)
    return float((am * ((1.0 - qa) * ga + (1.0 - qb) * gb)).sum()) / wsum if wsum > 0 else 0.0


# ------------------------------------------------------------------------------------- the cddfuse convention
# Private: reached through evaluate(..., convention="cddfuse"); each takes validated float64 arrays.
def _cddfuse_ag(f: np.ndarray) -> float:
    gy, gx = np.gradient(f)
    return float(np.sqrt((gx * gx + gy * gy) / 2.0).mean())


def _cddfuse_mi(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    # each distinct value is one label, as sklearn's contingency matrix makes them
    la, lb, lf = (np.unique(x, return_inverse=True)[1].reshape(x.shape) for x in (a, b, f))
    return _mutual_information(la, lf, np.log) + _mutual_information(lb, lf, np.log)


def _cddfuse_scd(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    return _corr(f - b, a, math.nan) + _corr(f - a, b, math.nan)


def _cddfuse_vif(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    return _vifp_pair(a, f, flat=1.0) + _vifp_pair(b, f, flat=1.0)


def _cddfuse_sobel(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel strength and orientation over the whole zero-padded image, as ``scipy.signal.convolve2d(x, h,
    'same')`` gives them. Convolution flips the kernels, which makes its gx minus ours; that matters because the
    orientation is pi/2 where gx = 0 and arctan(gy/gx) elsewhere."""
    gx, gy = _sobel_gradients(np.pad(x, 1))
    return _strength_orientation(-gx, gy)


def _cddfuse_qabf(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    ga, ala = _cddfuse_sobel(a)
    gb, alb = _cddfuse_sobel(b)
    gf, alf = _cddfuse_sobel(f)
    num = float((_edge_q_cddfuse(ga, ala, gf, alf) * ga + _edge_q_cddfuse(gb, alb, gf, alf) * gb).sum())
    den = float((ga + gb).sum())
    return num / den if den > 0 else math.nan


def _cddfuse_ssim(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    return _ssim_skimage_pair(f, a) + _ssim_skimage_pair(f, b)


def _mse(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    return (float(((a - f) ** 2).mean()) + float(((b - f) ** 2).mean())) / 2.0


def _cddfuse_psnr(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):  # MSE 0 -> inf, and max(F) = MSE = 0 -> NaN, as there
        return float(10.0 * np.log10(np.max(f) ** 2 / np.float64(_mse(a, b, f))))


def _cddfuse_cc(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    return (_corr(a, f, math.nan) + _corr(b, f, math.nan)) / 2.0


# -------------------------------------------------------------------------------------------------- evaluate
_SINGLE = frozenset({"EN", "SD", "SF", "AG"})  # metrics of F alone
_FUNCTIONS: dict[str, dict[str, Callable[..., float]]] = {
    "tita_fast": {"EN": en, "SD": sd, "SF": sf, "AG": ag, "MI": mi, "SCD": scd, "VIF": vif, "Qabf": qabf,
                  "SSIM": ssim, "PSNR": psnr, "CC": cc, "Nabf": nabf},
    "cddfuse": {"EN": en, "SD": sd, "SF": sf, "AG": _cddfuse_ag, "MI": _cddfuse_mi, "SCD": _cddfuse_scd,
                "VIF": _cddfuse_vif, "Qabf": _cddfuse_qabf, "SSIM": _cddfuse_ssim, "PSNR": _cddfuse_psnr,
                "MSE": _mse, "CC": _cddfuse_cc},
}  # fmt: skip
_MIN_SIDES = {"tita_fast": _MIN_SIDE, "cddfuse": _MIN_SIDE_CDDFUSE}


def _metric_names(metrics: Iterable[str] | str | None, convention: str) -> tuple[str, ...]:
    """The requested metrics of ``convention`` in its order (all of them for None), names matched case-insensitively."""
    if convention not in _FUNCTIONS:
        raise ValueError(f"unknown metric convention {convention!r}; choose from {', '.join(CONVENTIONS)}")
    names = tuple(_FUNCTIONS[convention])
    if metrics is None:
        return names
    canon = {m.lower(): m for m in names}
    wanted = set()
    for name in (metrics,) if isinstance(metrics, str) else metrics:
        key = canon.get(str(name).lower())
        if key is None:
            raise ValueError(f"unknown metric {name!r} in the {convention} convention; choose from {', '.join(names)}")
        wanted.add(key)
    return tuple(m for m in names if m in wanted)


def evaluate(A, B, F, metrics: Iterable[str] | str | None = None, convention: str = "tita_fast") -> dict[str, float]:
    """The requested metrics (default: all of the convention's; names matched case-insensitively) as
    ``{name: value}`` in the order of ``METRICS`` (``convention="tita_fast"``, ours) or ``CDDFUSE_METRICS``
    (``"cddfuse"``: the CDDFuse evaluator's numbers, see the module docstring)."""
    names = _metric_names(metrics, convention)
    a, b, f = _images("evaluate", A=A, B=B, F=F)
    out: dict[str, float] = {}
    for m in names:
        side = _MIN_SIDES[convention].get(m, 2)
        if min(f.shape) < side:
            raise ValueError(f"{m}: images must be at least {side}x{side} pixels, got {f.shape[0]}x{f.shape[1]}")
        function = _FUNCTIONS[convention][m]
        out[m] = function(f) if m in _SINGLE else function(a, b, f)
    return out


def evaluate_files(A, B, F, metrics: Iterable[str] | str | None = None, convention: str = "tita_fast") -> list[dict]:
    """Metrics of fused image files ``F`` against their sources ``A``, ``B`` (three files, or three folders matched
    by file stem) on BT.601 luminance (16-bit images scaled onto 0–255): ``[{"name": stem, metric: value}, ...]``.
    The cddfuse convention rounds the luminance to integers (half to even), as the evaluator's image reader does."""
    from tita_fast.color import luminance_and_chroma
    from tita_fast.imageio import match_images, read_image

    _metric_names(metrics, convention)  # a bad name or convention fails before any file is read
    rows = []
    for stem, paths in match_images(A, B, F):
        images = [luminance_and_chroma(read_image(path)[0].double())[0][0].numpy() for path in paths]
        if convention == "cddfuse":
            images = [_levels(image).astype(np.float64) for image in images]
        shapes = {image.shape for image in images}
        if len(shapes) > 1:
            sizes = ", ".join(f"{p} {i.shape[-1]}x{i.shape[-2]}" for p, i in zip(paths, images, strict=True))
            raise ValueError(f"{stem}: the three images differ in size ({sizes})")
        try:
            rows.append({"name": stem, **evaluate(*images, metrics=metrics, convention=convention)})
        except ValueError as err:
            raise ValueError(f"{stem}: {err}") from None
    return rows
