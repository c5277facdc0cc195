"""Evaluation metrics of FixTalk Sec. 5.1 (PSNR, SSIM, FID, CSIM, NIQE, CPBD, M/F-LMD, Sync_conf, Acc_emo).

Every metric that depends on a model or an optional package raises `MetricUnavailable` (naming the
missing file or package and how to supply it) instead of returning a made-up number. Three are offline
substitutes and carry a `LABEL` to print next to their values:
  identity.LABEL  "CSIM-dlib ..."   dlib ResNet descriptors instead of ArcFace
  fid.LABEL       "FID-proxy ..."   MobileNetV2 ImageNet features instead of Inception-v3
  emotion.LABEL   "Acc_emo ..."     FER2013 7-class mini-Xception instead of a MEAD 8-class classifier
Real FID and SyncNet scores need user-supplied weights: `load_fid_inception(path)`, `load_syncnet(path)`
(or $FIXTALK_FID_INCEPTION / $FIXTALK_SYNCNET).

Images are HxWx3 RGB uint8 arrays (floats on the same 0..255 scale are accepted). Heavy optional
dependencies (dlib, cpbd, h5py, cv2) are imported only when the metric that needs them runs.
"""

from ._assets import FrameAverage, MetricUnavailable
from .emotion import CLASSES as EMOTION_CLASSES
from .emotion import (
    MEAD_TO_FER,
    EmotionAccuracy,
    classify_faces,
    emotion_accuracy,
    load_mini_xception,
    predict_emotion,
)
from .fid import (
    extract_features,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    load_fid_inception,
    load_mobilenet_v2,
)
from .identity import cosine_similarity, csim, csim_frames, identity_embedding
from .image import psnr, ssim
from .landmarks import face_landmarks, landmark_sequence, lmd
from .niqe import niqe
from .sharpness import cpbd
from .sync import SyncNet, SyncScores, load_syncnet, sync_scores, syncnet_crop

__all__ = [
    "EMOTION_CLASSES", "MEAD_TO_FER", "EmotionAccuracy", "FrameAverage", "MetricUnavailable", "SyncNet",
    "SyncScores", "classify_faces", "cosine_similarity", "cpbd", "csim", "csim_frames", "emotion_accuracy",
    "extract_features", "face_landmarks", "feature_statistics", "fid_from_features", "frechet_distance",
    "identity_embedding", "landmark_sequence", "lmd", "load_fid_inception", "load_mini_xception",
    "load_mobilenet_v2", "load_syncnet", "niqe", "predict_emotion", "psnr", "ssim", "sync_scores",
    "syncnet_crop",
]
