"""CPBD: Cumulative Probability of Blur Detection, the no-reference sharpness score of FixTalk Tab. 1.

Narvekar & Karam, "A No-Reference Image Blur Metric Based on the Cumulative Probability of Blur
Detection (CPBD)", IEEE TIP 2011. Computed by the `cpbd` module of the `cpbd-py312` package (a port of the
authors' MATLAB code; the original `cpbd` 1.0.7 no longer imports with current scipy / scikit-image).
Higher is sharper; the score lies in [0, 1].
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._assets import MetricUnavailable


def _cpbd_module() -> Any:
    try:
        import cpbd
    except ImportError as err:
        raise MetricUnavailable(
            "CPBD", "package cpbd-py312 (module `cpbd`)",
            "Install it with `pip install cpbd-py312` (the original `cpbd` 1.0.7 does not import with "
            "current scipy).") from err
    return cpbd


def to_grey(image: np.ndarray) -> np.ndarray:
    """uint8 luma of an RGB image with PIL's "L" conversion (ITU-R 601: 0.299 R + 0.587 G + 0.114 B,
    in PIL's fixed-point arithmetic), i.e. what the reference CLI's `imread(path, mode='L')` gives.
    A 2-D input is returned as uint8."""
    img = np.asarray(image)
    if img.ndim == 2:
        return np.clip(np.rint(img), 0, 255).astype(np.uint8) if img.dtype != np.uint8 else img
    rgb = np.clip(np.rint(img[..., :3]), 0, 255).astype(np.uint32)
    grey = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
    return grey.astype(np.uint8)


def cpbd(image: np.ndarray) -> float:
    """CPBD sharpness of an HxWx3 RGB (or HxW grey) image, uint8 or float on a 0..255 scale."""
    return float(_cpbd_module().compute(to_grey(image).astype(np.float64)))
