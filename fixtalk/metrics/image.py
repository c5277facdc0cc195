"""Full-reference image metrics: PSNR and SSIM (visual quality rows of FixTalk Tab. 1 and Tab. 3).

PSNR follows Hore & Ziou, "Image quality metrics: PSNR vs. SSIM" (ICPR 2010, the paper's [21]).
SSIM follows Wang et al., "Image quality assessment: from error visibility to structural similarity"
(TIP 2004, the paper's [72]) through `skimage.metrics.structural_similarity` with the original paper's
settings: an 11x11 Gaussian window with sigma 1.5 (`gaussian_weights=True`), population covariances
(`use_sample_covariance=False`), K1=0.01, K2=0.03, `data_range=255`, and for colour images the mean of
the per-channel SSIM (`channel_axis=-1`).

Inputs are HxWx3 RGB (or HxW grey) arrays of the same shape: uint8, or float on the same 0..255 scale
(pass `data_range` for another scale, e.g. 1.0 for images in [0, 1]).
"""

from __future__ import annotations

import math

import numpy as np


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"image shapes differ: {x.shape} vs {y.shape}")
    if x.ndim not in (2, 3):
        raise ValueError(f"expected HxW or HxWxC images, got shape {x.shape}")
    return x, y


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB, 10 log10(data_range^2 / MSE) over all pixels and channels.

    Identical images give +inf.
    """
    x, y = _pair(a, b)
    mse = float(np.mean((x - y) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Structural similarity (Wang et al. 2004 settings, see the module docstring); 1.0 if identical."""
    from skimage.metrics import structural_similarity

    x, y = _pair(a, b)
    return float(structural_similarity(
        x, y,
        data_range=data_range,
        gaussian_weights=True,          # 11x11 Gaussian window ...
        sigma=1.5,                      # ... with sigma 1.5, as in the paper
        use_sample_covariance=False,    # population statistics, as in the paper
        channel_axis=-1 if x.ndim == 3 else None,
    ))
