"""NIQE: Natural Image Quality Evaluator, the no-reference artifact score of FixTalk Tab. 1 (lower is better).

Mittal, Soundararajan & Bovik, "Making a 'Completely Blind' Image Quality Analyzer", IEEE SPL 2013 (the
paper's [37]). A numpy/scipy port of BasicSR 1.4.2's `basicsr.metrics.niqe.calculate_niqe`, which matches
the authors' MATLAB release (baboon.png: MATLAB 5.7296, BasicSR 5.7296): Y channel of MATLAB's YCbCr,
rounded to integers, 96x96 blocks without overlap, two scales (the second by MATLAB-style bicubic
`imresize` with antialiasing), and the pristine multivariate Gaussian shipped by BasicSR in
`basicsr/metrics/niqe_pris_params.npz` (read by path: `import basicsr` needs torchvision).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy.ndimage import convolve
from scipy.special import gamma

from ._assets import MetricUnavailable, package_file

BLOCK_SIZE = 96
_INSTALL = "pip install --no-deps basicsr==1.4.2"


@functools.lru_cache(maxsize=1)
def pristine_params() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mu 1x36, cov 36x36, 7x7 Gaussian window) of the MATLAB NIQE pristine model, from BasicSR's .npz."""
    path = package_file("basicsr", "metrics/niqe_pris_params.npz", metric="NIQE", install=_INSTALL)
    with np.load(path) as p:
        return p["mu_pris_param"], p["cov_pris_param"], p["gaussian_window"]


# -- MATLAB-compatible bicubic imresize (BasicSR `basicsr/utils/matlab_functions.py`) -------------------

def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    ax2, ax3 = ax**2, ax**3
    return ((1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))).astype(np.float32)


def _weights_indices(in_len: int, out_len: int, scale: float) -> tuple[np.ndarray, np.ndarray, int, int]:
    kernel_width = 4.0 / scale if scale < 1 else 4.0          # antialiasing widens the kernel
    x = np.linspace(1, out_len, out_len, dtype=np.float32)
    u = x / scale + 0.5 * (1 - 1 / scale)                     # output -> input coordinates (1-based)
    left = np.floor(u - kernel_width / 2)
    p = math.ceil(kernel_width) + 2
    indices = left[:, None] + np.arange(p, dtype=np.float32)[None, :]
    dist = u[:, None] - indices
    weights = scale * _cubic(dist * scale) if scale < 1 else _cubic(dist)
    weights = weights / weights.sum(axis=1, keepdims=True)
    zero_cols = (weights == 0).sum(axis=0)                    # trim zero-weight edge taps (BasicSR's narrow)
    if zero_cols[0] != 0:
        indices, weights = indices[:, 1:p - 1], weights[:, 1:p - 1]
    if zero_cols[-1] != 0:
        indices, weights = indices[:, :p - 2], weights[:, :p - 2]
    sym_s = int(-indices.min() + 1)
    sym_e = int(indices.max() - in_len)
    return weights.astype(np.float32), (indices + sym_s - 1).astype(np.int64), sym_s, sym_e


def _resize_axis(img: np.ndarray, out_len: int, scale: float, axis: int) -> np.ndarray:
    weights, indices, sym_s, sym_e = _weights_indices(img.shape[axis], out_len, scale)
    pad = [(0, 0)] * img.ndim
    pad[axis] = (sym_s, sym_e)
    aug = np.pad(img, pad, mode="symmetric")                  # mirror padding incl. the edge sample
    taps = np.take(np.moveaxis(aug, axis, 0), indices, axis=0)  # out x k x (rest)
    out = np.einsum("ok...,ok->o...", taps, weights)
    return np.moveaxis(out, 0, axis).astype(np.float32)


def imresize(img: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB `imresize(img, scale)` (bicubic, antialiasing) of a 2-D float image."""
    h, w = img.shape
    out = _resize_axis(img.astype(np.float32), math.ceil(h * scale), scale, 0)
    return _resize_axis(out, math.ceil(w * scale), scale, 1)


# -- NIQE features ---------------------------------------------------------------------------------------

_GAM = np.arange(0.2, 10.001, 0.001)
_R_GAM = np.square(gamma(2 / _GAM)) / (gamma(1 / _GAM) * gamma(3 / _GAM))


def _aggd(block: np.ndarray) -> tuple[float, float, float]:
    """Asymmetric generalized Gaussian fit (alpha, beta_l, beta_r), Eq. 7 of Mittal et al."""
    block = block.ravel()
    left_std = np.sqrt(np.mean(block[block < 0] ** 2)) if np.any(block < 0) else np.nan
    right_std = np.sqrt(np.mean(block[block > 0] ** 2)) if np.any(block > 0) else np.nan
    gammahat = left_std / right_std
    rhat = np.mean(np.abs(block)) ** 2 / np.mean(block**2)
    rhatnorm = rhat * (gammahat**3 + 1) * (gammahat + 1) / (gammahat**2 + 1) ** 2
    alpha = _GAM[np.argmin((_R_GAM - rhatnorm) ** 2)]
    k = np.sqrt(gamma(1 / alpha) / gamma(3 / alpha))
    return float(alpha), float(left_std * k), float(right_std * k)


def _block_features(block: np.ndarray) -> list[float]:
    """18 features: AGGD of the MSCN block and of its 4 neighbour products (Eq. 8)."""
    alpha, bl, br = _aggd(block)
    feat = [alpha, (bl + br) / 2]
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):
        alpha, bl, br = _aggd(block * np.roll(block, shift, axis=(0, 1)))
        mean = (br - bl) * gamma(2 / alpha) / gamma(1 / alpha)
        feat.extend([alpha, mean, bl, br])
    return feat


def niqe_y(y: np.ndarray, block_size: int = BLOCK_SIZE) -> float:
    """NIQE of a 2-D luma image on a 0..255 scale (already rounded, as BasicSR does)."""
    mu_pris, cov_pris, window = pristine_params()
    h, w = y.shape
    nh, nw = h // block_size, w // block_size
    if min(h, w) < 2 * block_size:
        # The second NIQE scale is the half-size image, which must still hold one whole block.
        raise MetricUnavailable("NIQE", f"a {2 * block_size}x{2 * block_size} or larger image (got {w}x{h})",
                                "Use a larger --eval-size.")
    img: np.ndarray = y[: nh * block_size, : nw * block_size].astype(np.float32)
    scales = []
    for scale in (1, 2):
        mu = convolve(img, window, mode="nearest")
        sigma = np.sqrt(np.abs(convolve(np.square(img), window, mode="nearest") - np.square(mu)))
        mscn = (img - mu) / (sigma + 1)                       # Eq. 1
        b = block_size // scale
        feats = [_block_features(mscn[i * b:(i + 1) * b, j * b:(j + 1) * b])
                 for j in range(nw) for i in range(nh)]
        scales.append(np.array(feats))
        if scale == 1:
            img = imresize(img / 255.0, 0.5) * 255.0
    dist = np.concatenate(scales, axis=1)
    mu_dist = np.nanmean(dist, axis=0)
    cov_dist = np.cov(dist[~np.isnan(dist).any(axis=1)], rowvar=False)
    diff = mu_pris - mu_dist
    quality = diff @ np.linalg.pinv((cov_pris + cov_dist) / 2) @ diff.T  # Eq. 10
    return float(np.sqrt(np.squeeze(quality)))


def rgb_to_y(image: np.ndarray) -> np.ndarray:
    """MATLAB `rgb2ycbcr` luma (BT.601, 16..235) of a 0..255 RGB image, in BasicSR's float32 arithmetic."""
    img = np.asarray(image).astype(np.float32) / 255.0
    y = np.dot(img[..., :3], [65.481, 128.553, 24.966]) + 16.0
    return (y / 255.0).astype(np.float32) * 255.0


def niqe(image: np.ndarray, crop_border: int = 0, block_size: int = BLOCK_SIZE) -> float:
    """NIQE of an HxWx3 RGB (or HxW luma) image on a 0..255 scale, as BasicSR's
    `calculate_niqe(img_bgr, crop_border, input_order='HWC', convert_to='y')`. At least 96x96 pixels.

    Raises MetricUnavailable (naming `pip install --no-deps basicsr==1.4.2`) without the pristine params.
    """
    img = np.asarray(image)
    y = rgb_to_y(img) if img.ndim == 3 else img.astype(np.float32)
    if crop_border:
        y = y[crop_border:-crop_border, crop_border:-crop_border]
    return niqe_y(np.round(y), block_size)


__all__ = ["BLOCK_SIZE", "MetricUnavailable", "imresize", "niqe", "niqe_y", "pristine_params", "rgb_to_y"]
