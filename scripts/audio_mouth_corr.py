"""Does the audio-driven mouth open with the speech? Pearson r of mouth opening vs loudness on held-out clips.

    python scripts/audio_mouth_corr.py DATA [--checkpoint DIR] [--max-frames 250] [--threads 2]

For each held-out clip with audio in a `fixtalk prep` folder (manifest split "test"), frame 0 is the source
(prep's crops are the inference framing) and the clip's own speech drives the mouth through Audio2Lip; pose and
expression hold the source's. dlib's 68 landmarks are found on every rendered frame (upsampled to 256 px) and
the mouth opening is the mean inner-lip gap (61-67, 62-66, 63-65) over the eye distance. Loudness is the RMS
level (dB) of the 40 ms of audio under each frame. Prints, per clip and pooled over clips (frames
concatenated after removing each clip's mean), Pearson r for the render and for the real video's own
landmarks (what a perfect model would reach), one JSON line each.
"""

from __future__ import annotations

import argparse
import json

import cv2
import numpy as np
import torch

from fixtalk.audio import load_audio
from fixtalk.config import SAMPLES_PER_FRAME
from fixtalk.driving import audio_mouth
from fixtalk.faces import FaceDetector
from fixtalk.metrics.landmarks import mouth_opening as opening
from fixtalk.pipeline import Drive, FactorTrack, Pipeline
from fixtalk.train.clipstore import read_clips, read_frames


def loudness(wav: np.ndarray, frames: int, per_frame: int = SAMPLES_PER_FRAME) -> np.ndarray:
    out = np.full(frames, np.nan)
    for i in range(frames):
        seg = wav[i * per_frame:(i + 1) * per_frame]
        if len(seg):
            out[i] = 20 * np.log10(np.sqrt(np.mean(seg.astype(np.float64) ** 2)) + 1e-5)
    return out


def landmarks_of(detector: FaceDetector, img: np.ndarray) -> np.ndarray | None:
    big = cv2.resize(img, (256, 256), interpolation=cv2.INTER_CUBIC)
    boxes = detector.detect(big)
    return None if not boxes else detector.landmarks(big, boxes[0])


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.corrcoef(a[ok], b[ok])[0, 1]) if ok.sum() > 2 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--checkpoint", help="default: the shipped model")
    ap.add_argument("--max-frames", type=int, default=250)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = Pipeline.from_pretrained(args.checkpoint, progress=False)
    det = FaceDetector()
    pooled: dict[str, list[np.ndarray]] = {"render": [], "real": [], "loud": []}
    for clip in read_clips(args.data, "test")[0]:
        if not clip.has_audio:
            continue
        n = min(clip.frames, args.max_frames)
        src = pipe.prepare_crop(read_frames(clip.mp4, [0])[0])
        lip, wav = pipe.audio_lip(clip.mp4, max_frames=n)
        n = min(n, len(lip))
        own = src.state.motion
        lip = audio_mouth(pipe.cfg, lip, own.lip.float().cpu())
        drive = Drive(FactorTrack(lip[:n], "audio"), FactorTrack(own.pose.float().cpu(), "pose"),
                      None if own.exp is None else FactorTrack(own.exp.float().cpu(), "exp"), n)
        render = np.array([np.nan if (lm := landmarks_of(det, f)) is None else opening(lm)
                           for f in pipe.frames(src, drive, paste_back=False)])
        with np.load(clip.npz) as z:
            real = np.array([opening(lm) if np.isfinite(lm).all() else np.nan for lm in z["landmarks"][:n]])
        loud = loudness(load_audio(clip.mp4), n)
        print(json.dumps({"clip": clip.name, "frames": n, "r_render": round(pearson(render, loud), 3),
                          "r_real": round(pearson(real, loud), 3),
                          "opening_std_render": round(float(np.nanstd(render)), 4),
                          "opening_std_real": round(float(np.nanstd(real)), 4)}), flush=True)
        for k, v in (("render", render), ("real", real), ("loud", loud)):
            pooled[k].append(v - np.nanmean(v))
    cat = {k: np.concatenate(v) for k, v in pooled.items()}
    print(json.dumps({"pooled_clips": len(pooled["loud"]), "r_render": round(pearson(cat["render"], cat["loud"]), 3),
                      "r_real": round(pearson(cat["real"], cat["loud"]), 3)}))


if __name__ == "__main__":
    main()
