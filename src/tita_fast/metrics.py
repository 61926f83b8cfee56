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

How our numbers relate to the CDDFuse Python evaluator and the MATLAB toolboxes: ``docs/metrics.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np

__all__ = [
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

# Minimum (rows, cols) side per metric.
_MIN_SIDE = {"Qabf": 3, "Nabf": 3, "SSIM": 11, "VIF": 41}

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


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; 0 when either argument has zero variance."""
    xc = x - x.mean()
    yc = y - y.mean()
    den = math.sqrt(float((xc * xc).sum()) * float((yc * yc).sum()))
    return float((xc * yc).sum()) / den if den > 0 else 0.0


def _levels(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.int64)


def _entropy_bits(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0  # no -0.0 for a constant image


def _mi_pair(x: np.ndarray, f: np.ndarray) -> float:
    joint = np.bincount((_levels(x) * 256 + _levels(f)).ravel(), minlength=256 * 256).reshape(256, 256)
    pxy = joint / joint.sum()
    px = pxy.sum(axis=1, keepdims=True)
    pf = pxy.sum(axis=0, keepdims=True)
    nz = pxy > 0
    return float((pxy[nz] * np.log2(pxy[nz] / (px @ pf)[nz])).sum())


def _vifp_pair(ref: np.ndarray, dist: np.ndarray, sigma_nsq: float = 2.0, eps: float = 1e-10) -> float:
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
    return num / den if den > 0 else 0.0


def _sobel(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Strength and orientation of the 3x3 Sobel gradient on the valid interior."""
    gx = (x[:-2, 2:] + 2 * x[1:-1, 2:] + x[2:, 2:]) - (x[:-2, :-2] + 2 * x[1:-1, :-2] + x[2:, :-2])
    gy = (x[2:, :-2] + 2 * x[2:, 1:-1] + x[2:, 2:]) - (x[:-2, :-2] + 2 * x[:-2, 1:-1] + x[:-2, 2:])
    strength = np.sqrt(gx * gx + gy * gy)
    zero = gx == 0
    alpha = np.where(zero, np.pi / 2, np.arctan(gy / np.where(zero, 1.0, gx)))
    return strength, alpha


def _edge_q(gs: np.ndarray, als: np.ndarray, gf: np.ndarray, alf: np.ndarray) -> np.ndarray:
    hi = np.maximum(gs, gf)
    rel_g = np.where(hi > 0, np.minimum(gs, gf) / np.where(hi > 0, hi, 1.0), 1.0)
    rel_a = np.abs(np.abs(als - alf) - np.pi / 2) / (np.pi / 2)
    return _qg(rel_g) * _qa(rel_a)


def _edge_terms(a: np.ndarray, b: np.ndarray, f: np.ndarray):
    ga, ala = _sobel(a)
    gb, alb = _sobel(b)
    gf, alf = _sobel(f)
    return ga, gb, gf, _edge_q(ga, ala, gf, alf), _edge_q(gb, alb, gf, alf)


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
    return _mi_pair(a, f) + _mi_pair(b, f)


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


_SINGLE: dict[str, Callable[..., float]] = {"EN": en, "SD": sd, "SF": sf, "AG": ag}
_PAIR: dict[str, Callable[..., float]] = {
    "MI": mi,
    "SCD": scd,
    "VIF": vif,
    "Qabf": qabf,
    "SSIM": ssim,
    "PSNR": psnr,
    "CC": cc,
    "Nabf": nabf,
}


def evaluate(A, B, F, metrics: Iterable[str] | str = METRICS) -> dict[str, float]:
    """The requested metrics (names matched case-insensitively) as ``{name: value}`` in ``METRICS`` order."""
    if isinstance(metrics, str):
        metrics = (metrics,)
    canon = {m.lower(): m for m in METRICS}
    wanted = set()
    for name in metrics:
        key = canon.get(str(name).lower())
        if key is None:
            raise ValueError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
        wanted.add(key)
    a, b, f = _images("evaluate", A=A, B=B, F=F)
    out: dict[str, float] = {}
    for m in METRICS:
        if m in wanted:
            out[m] = _SINGLE[m](f) if m in _SINGLE else _PAIR[m](a, b, f)
    return out


def evaluate_files(A, B, F, metrics: Iterable[str] | str = METRICS) -> list[dict]:
    """Metrics of fused image files ``F`` against their sources ``A``, ``B`` (three files, or three folders matched
    by file stem) on BT.601 luminance (16-bit images scaled onto 0–255): ``[{"name": stem, metric: value}, ...]``."""
    from tita_fast.color import luminance_and_chroma
    from tita_fast.imageio import match_images, read_image

    rows = []
    for stem, paths in match_images(A, B, F):
        images = [luminance_and_chroma(read_image(path)[0])[0] for path in paths]
        shapes = {tuple(image.shape) for image in images}
        if len(shapes) > 1:
            sizes = ", ".join(f"{p} {i.shape[-1]}x{i.shape[-2]}" for p, i in zip(paths, images, strict=True))
            raise ValueError(f"{stem}: the three images differ in size ({sizes})")
        try:
            rows.append({"name": stem, **evaluate(*images, metrics=metrics)})
        except ValueError as err:
            raise ValueError(f"{stem}: {err}") from None
    return rows
