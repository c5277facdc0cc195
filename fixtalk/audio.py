"""Audio front end: waveform loading and Wav2Lip-style log-mel windows (docs/architecture.md 6.1).

Mirrors EDTalk:audio.py with EDTalk:hparams.py (the Wav2Lip hyper-parameters): 16 kHz mono, pre-emphasis
0.97, STFT 800/200/800 (Hann), 80 Slaney mel bands 55-7600 Hz, 20*log10 with a -100 dB floor minus a
20 dB reference level, symmetric normalisation to [-4, 4]. One video frame (25 fps) = 640 samples =
3.2 mel frames; each frame sees a 16-mel-frame (0.2 s) window that starts 2 frames earlier.

Numerics are pinned so that `melspectrogram` reproduces the EDTalk parity fixture's `mel_full`
bit-for-bit with librosa >= 0.10 (see `melspectrogram` for the STFT padding choice).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

import librosa
import numpy as np
import scipy.signal
import soundfile as sf

from fixtalk.config import FPS
from fixtalk.config import SAMPLE_RATE as SAMPLE_RATE  # defined there with FPS, imported from here too
from fixtalk.errors import InputError

N_FFT, HOP, WIN = 800, 200, 800
N_MELS, FMIN, FMAX = 80, 55.0, 7600.0
MIN_LEVEL_DB, REF_LEVEL_DB, MAX_ABS = -100.0, 20.0, 4.0
PREEMPHASIS = 0.97
MEL_STEP = 16   # mel frames per video-frame window
MEL_FPS = 80    # mel frames per second = SAMPLE_RATE / HOP


def load_audio(path: str | Path, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 waveform at `sr`, identical to `librosa.load(path, sr=sr)[0]`.

    Anything libsndfile reads (wav, flac, ogg, mp3) goes through librosa itself. Everything else (m4a/aac,
    the audio track of mp4/mov/mkv/webm) is decoded with PyAV and then mixed down and resampled with
    librosa's own `to_mono` / `resample` defaults, i.e. the same steps `librosa.load` applies after
    decoding; this avoids librosa's deprecated audioread fallback. Raises InputError (one line).
    """
    p = Path(path)
    if not p.exists():
        raise InputError(p, "file not found")
    if not p.is_file():
        raise InputError(p, "not a file")
    try:
        sf.info(str(p))
    except Exception:  # libsndfile cannot read it: compressed audio or a video container
        y, sr_native = _decode_with_av(p)
        y = librosa.resample(librosa.to_mono(y), orig_sr=sr_native, target_sr=sr)
    else:
        try:
            y, _ = librosa.load(str(p), sr=sr, mono=True)
        except Exception as exc:  # e.g. a truncated file whose header still parses
            raise InputError(p, f"cannot decode audio ({type(exc).__name__}: {exc})") from None
    y = np.ascontiguousarray(y, dtype=np.float32)
    if y.size == 0:
        raise InputError(p, "audio is empty")
    return y


def _decode_with_av(p: Path) -> tuple[np.ndarray, int]:
    """Float32 (channels, samples) and native rate of the first audio stream, via PyAV."""
    import av  # imported lazily: only needed for containers libsndfile cannot read

    try:
        container = av.open(str(p))
    except Exception:
        raise InputError(p, "not an audio or video file") from None
    with container:
        if not container.streams.audio:
            raise InputError(p, "no audio stream")
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate or stream.rate
        # Convert to planar float at the native rate and layout: conversion only, no resampling, so
        # int16 sources scale by 1/32768 exactly as libsndfile does.
        chunks: list[np.ndarray] = []
        try:
            resampler = av.AudioResampler(format="fltp", layout=stream.layout, rate=rate)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())
            for out in resampler.resample(None):  # flush
                chunks.append(out.to_ndarray())
        except Exception as exc:
            raise InputError(p, f"cannot decode audio ({type(exc).__name__})") from None
    if not chunks:
        raise InputError(p, "audio is empty")
    return np.concatenate(chunks, axis=1).astype(np.float32, copy=False), int(rate)


@lru_cache(maxsize=1)
def _mel_basis() -> np.ndarray:
    # Keyword arguments: librosa >= 0.10 rejects the positional call of the reference; the default
    # (htk=False, norm="slaney") is the filterbank old librosa built, so the pretrained inputs match.
    return librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN, fmax=FMAX)


def melspectrogram(wav: np.ndarray, pad_mode: Literal["constant", "reflect"] = "constant") -> np.ndarray:
    """Normalised log-mel spectrogram, (T, 80) float32 in [-4, 4], T = 1 + len(wav) // 200.

    pad_mode is the centred-STFT edge padding. The parity fixture is reproduced exactly (max abs diff 0)
    by "constant" (zero padding, librosa >= 0.10 default) and NOT by "reflect" (librosa 0.7/0.8 default,
    what EDTalk ran under): with "reflect" the first/last two mel frames differ by up to ~1.3 on the
    fixture speech, all other frames are identical. Pass "reflect" to mimic the old-librosa edge frames.
    """
    y = scipy.signal.lfilter([1.0, -PREEMPHASIS], [1.0], wav)  # float64, as in the reference
    spec = np.abs(librosa.stft(y=y, n_fft=N_FFT, hop_length=HOP, win_length=WIN, pad_mode=pad_mode))
    db = 20.0 * np.log10(np.maximum(1e-5, _mel_basis() @ spec)) - REF_LEVEL_DB
    s = np.clip(2 * MAX_ABS * (db - MIN_LEVEL_DB) / -MIN_LEVEL_DB - MAX_ABS, -MAX_ABS, MAX_ABS)
    return np.ascontiguousarray(s.T, dtype=np.float32)


def num_video_frames(wav: np.ndarray, fps: int = FPS) -> int:
    """Video frames covered by `wav` at 16 kHz: floor(len / (16000 / fps)) = len // 640 at 25 fps."""
    return int(len(wav) / (SAMPLE_RATE / fps))


def crop_to_frames(wav: np.ndarray, fps: int = FPS) -> np.ndarray:
    """Cut (or zero-pad) `wav` to exactly num_video_frames * 640 samples, as EDTalk does before the mel."""
    n = int(num_video_frames(wav, fps) * (SAMPLE_RATE / fps))
    return wav[:n] if len(wav) >= n else np.pad(wav, (0, n - len(wav)))


def mel_windows(mel: np.ndarray, num_frames: int, fps: int = FPS) -> np.ndarray:
    """Per-video-frame mel windows, (num_frames, 1, 80, 16) float32, from a (T, 80) mel.

    Frame i reads mel frames int(80 * (i - 2) / fps) + [0, 16), each index clamped to [0, T - 1] (edge
    frames repeat rather than the window shifting), then transposed to mel-major 80 x 16.
    """
    # Same float expression as the reference, int() truncating toward zero (frame 0 -> -6).
    starts = np.array([int(MEL_FPS * ((i - 2) / float(fps))) for i in range(num_frames)], dtype=np.int64)
    idx = np.clip(starts[:, None] + np.arange(MEL_STEP)[None, :], 0, len(mel) - 1)  # N x 16
    return np.ascontiguousarray(mel[idx].transpose(0, 2, 1)[:, None], dtype=np.float32)
