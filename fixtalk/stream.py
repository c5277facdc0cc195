"""Streaming over the Pipeline: driver frames and audio chunks in, animated frames out (docs/architecture.md, Features).

    pipe = Pipeline.from_pretrained(checkpoint)
    src = pipe.prepare_source("me.jpg")                     # once, as for a batch render
    stream = Stream(pipe, src, mouth="driver", pose="driver", expression="happy")
    for frame in camera:                                    # RGB uint8 H x W x 3 at `fps`
        for out in stream.push(frame):                      # 0 or more finished frames, in order
            show(out)
    for out in stream.flush():                              # end of input: the frames still pending
        show(out)

Each factor takes 'driver' (the pushed frames), 'audio' (mouth only: the pushed 16 kHz samples through
Audio2Lip), 'source' (hold the portrait's own) or, for the expression, a preset emotion. Output frame i
combines driver frame i and audio frame i (samples 640 i .. 640 i + 639); it is returned by the first
push() that completes its inputs. Everything is causal, and the frames equal `Pipeline.frames` on the
same inputs up to float rounding (tests/test_stream.py), except where noted:

- Face tracking is `FaceTrack` (One-Euro smoothing: causal). A frame without a face holds the last
  motion, as in the batch path; before the first face is seen the stream holds the portrait's own
  motion (the batch path looks ahead to the first face there).
- Audio: the Audio2Lip mel window of frame i already reaches 120 ms past that frame (EDTalk's window,
  16 mel frames from 80 ms before), and the reference 3-tap Gaussian over the lip weights (0.27, 0.45,
  0.27) needs frame i + 1. The stream keeps that exact kernel and waits one frame for it (a 40 ms
  lookahead delay) rather than changing the smoothing, so audio-driven streams match batch renders.
  Frame i is out once `audio_frames_needed(i)` frames of audio have arrived: i + 5 for i >= 1, i.e.
  160 ms after the end of frame i's own audio (120 ms mel window + 40 ms smoothing).
- A driver that ends before the audio plays forward then backward (ping-pong) after flush(), as in
  the batch path; frames past the audio's end are dropped when the audio drives the mouth.
- Relative motion (`Pipeline.relative`, the default for LIA and pixel-path models): the start is the first frame with a
  face, as in the batch path (which fills faceless leading frames with the first face).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

import numpy as np
import torch

from fixtalk.audio import melspectrogram
from fixtalk.config import SAMPLE_RATE, SAMPLES_PER_FRAME
from fixtalk.driving import (
    FACTORS,
    audio_mouth,
    check_expression,
    check_one_motion,
    check_strength,
    emotion_expression,
    mix_motion,
    parse_factors,
    pingpong,
    predict_weights,
    relative,
)
from fixtalk.errors import InputError
from fixtalk.frame_pool import FramePool
from fixtalk.models.audio2lip import smooth_lip_weights
from fixtalk.models.fdm import Motion
from fixtalk.pipeline import FLAT_CROP_STD, FPS, Pipeline, PreparedSource, to_tensor, to_uint8

T = TypeVar("T")
Encoded = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]  # a driver frame's (weights, raw weights)
MEL_HOP, MEL_HALF = 200, 400            # STFT hop and half window (centred frames) of fixtalk.audio


def _mel_start(i: int) -> int:
    """First mel frame of video frame i's 16-frame window (fixtalk.audio.mel_windows, same arithmetic)."""
    return int(80 * ((i - 2) / float(FPS)))


def audio_frames_needed(i: int) -> int:
    """Complete 40 ms audio frames that must have arrived before output frame i can be emitted.

    Frame i + 1's mel window must be complete (the smoothing's one-frame lookahead), and mel frame j is
    complete when samples up to 200 j + 400 (its centred 800-sample window) are in.
    """
    last_mel = _mel_start(i + 1) + 15
    return -(-(last_mel * MEL_HOP + MEL_HALF) // SAMPLES_PER_FRAME)  # ceil


class _Frames(Generic[T]):
    """Per-frame values with the oldest dropped once rendered; indices stay absolute."""

    def __init__(self) -> None:
        self.items: list[T] = []
        self.offset = 0

    def __len__(self) -> int:
        return self.offset + len(self.items)

    def __getitem__(self, i: int) -> T:
        return self.items[i - self.offset]

    def append(self, x: T) -> None:
        self.items.append(x)

    def window(self, a: int, b: int) -> list[T]:
        return self.items[a - self.offset:b - self.offset]

    def forget_before(self, i: int) -> None:
        if i > self.offset:
            del self.items[:i - self.offset]
            self.offset = i


class Stream:
    """Causal frame-in, frame-out animation of one prepared source (see the module docstring)."""

    def __init__(self, pipe: Pipeline, src: PreparedSource, mouth: str = "driver", pose: str = "driver",
                 expression: str | None = "driver", strength: Sequence[float] = (1.0, 1.0, 1.0),
                 paste_back: bool = True, fps: float = FPS, face_index: int = 0, workers: int | None = None) -> None:
        from fixtalk.faces import FaceTrack

        self.pipe, self.src, self.paste_back = pipe, src, paste_back
        self.strength = tuple(float(s) for s in strength)
        if len(self.strength) != 3:
            raise ValueError("strength needs three values: mouth, pose, expression")
        check_one_motion(pipe.cfg, mouth, pose, expression)
        check_strength(pipe.cfg, self.strength)
        check_expression(pipe.cfg, expression, pipe.bundle.path)
        has_exp = pipe.cfg.has_expression and src.state.motion.exp is not None
        specs = parse_factors(mouth, pose, expression, stream=True)
        self.modes = {f: spec.kind if f != "exp" or has_exp else "none" for f, spec in specs.items()}
        dev = pipe.runtime.device
        own = src.state.motion
        self._base = Motion(own.lip.float().to(dev), own.pose.float().to(dev),
                            own.exp.float().to(dev) if has_exp and own.exp is not None else None)
        self._own_lip = self._base.lip.cpu()  # what a relative Audio2Lip's output is added to, every frame
        self._hold = {f: None if b is None else b.cpu()  # "no face yet": the portrait's own
                      for f, b in zip(FACTORS, (self._base.lip, self._base.pose, self._base.exp))}
        self._const: dict[str, torch.Tensor] = {}  # factor -> 1 x n weights held for every frame
        for f, mode in self.modes.items():
            if mode == "source":
                self._const[f] = getattr(self._base, f)
            elif mode == "audio":
                if pipe.audio2lip is None:
                    raise InputError(pipe.bundle.path, "this checkpoint has no Audio2Lip, so 'audio' cannot "
                                                       "drive the mouth")
                if fps != FPS:
                    raise ValueError(f"audio-driven streams run at {FPS} fps (Audio2Lip's rate), got fps={fps}")
            elif mode == "emotion":
                presets, name = pipe.bundle.expression_presets, specs[f].value
                if name not in presets:
                    raise InputError(pipe.bundle.path, f"this checkpoint has no '{name}' preset "
                                                       f"(it has: {', '.join(sorted(presets)) or 'none'})")
                preset = torch.from_numpy(presets[name]).float().to(dev)
                assert self._base.exp is not None  # "emotion" only where the model has an expression
                self._const[f] = emotion_expression(pipe.cfg, preset, self._base.exp)
        self._video = [f for f, m in self.modes.items() if m == "driver"]
        self._audio_on = mouth == "audio"
        if not self._video and not self._audio_on:
            raise InputError(None, "nothing drives the stream: set a factor to 'driver' or the mouth to 'audio'")

        self._track = FaceTrack(pipe.detector, face_index=face_index, fps=fps) if self._video else None
        # Per driver frame: 1 x n weights, or the Future of its encoding (fixtalk.frame_pool).
        self._drv: dict[str, _Frames[torch.Tensor | Future[Encoded]]] = {f: _Frames() for f in self._video}
        self._last: Future[Encoded] | None = None   # the encoding of the last frame with a face
        self._start: Future[Encoded] | None = None  # the first face's (relative mode: where motion starts)
        # Audio state: samples from absolute index _a0; mel frames from absolute index _m0; raw and
        # smoothed Audio2Lip weights per video frame.
        self._wav = np.zeros(0, np.float32)
        self._a0 = self._samples = 0
        self._mel = np.zeros((0, 80), np.float32)
        self._m0 = 0
        self._raw: _Frames[torch.Tensor] = _Frames()
        self._lip: _Frames[torch.Tensor] = _Frames()
        self._next = 0                         # next output frame index
        self._arrival: dict[int, float] = {}   # frame -> when its own inputs were all in
        self._closed = False
        rt = pipe.runtime  # frames rendered at once (fixtalk.frame_pool): the runtime's choice unless given
        self._pool = FramePool(rt.workers if workers is None else workers, rt.threads_each)
        self.latencies: list[float] = []       # seconds from a frame's inputs to its output, per frame
        self.timings: dict[str, list[float]] = defaultdict(list)  # stage -> seconds per call
        self._warm_up()

    def _warm_up(self) -> None:
        """Render the portrait's own motion (and encode a blank driver) once before any input: this traces the
        renderer and encoder (fixtalk.traced, ~1 s) and warms oneDNN, so the first live frame is not late."""
        t0 = time.perf_counter()
        pipe = self.pipe
        pipe.runtime.render(self.src.model or pipe.model, self.src.state, self._base)
        if self._video:
            pipe.runtime.features(pipe.model, torch.zeros(1, 3, pipe.cfg.size, pipe.cfg.size))
        self.timings["warm-up"].append(time.perf_counter() - t0)

    # --- input --------------------------------------------------------------------------------------
    def push(self, frame: np.ndarray | None = None, audio: np.ndarray | None = None) -> list[np.ndarray]:
        """Feed one driver frame (RGB uint8 H x W x 3) and/or audio samples (mono float32, 16 kHz, any
        length); return the output frames (RGB uint8) that became complete, oldest first."""
        if self._closed:
            raise RuntimeError("the stream was flushed; start a new Stream")
        now = time.perf_counter()
        if frame is not None:
            if not self._video:
                raise ValueError("no factor is driven by 'driver' frames")
            self._add_frame(frame)
            self._arrive(len(self._drv[self._video[0]]) - 1, now)
        if audio is not None:
            if not self._audio_on:
                raise ValueError("audio was pushed but the mouth is not set to 'audio'")
            done = self._samples // SAMPLES_PER_FRAME
            self._add_audio(np.asarray(audio, np.float32))
            for i in range(done, self._samples // SAMPLES_PER_FRAME):
                self._arrive(i, now)
            self._update_lip(final=False)
        return self._emit(self._ready())

    def flush(self) -> list[np.ndarray]:
        """End of input: finish the audio (zero-padded, as the batch path) and emit every pending frame."""
        if self._closed:
            return []
        self._closed = True
        if self._audio_on:
            self._update_lip(final=True)
            length = len(self._lip)
        else:
            length = len(self._drv[self._video[0]])
        if self._video and len(self._drv[self._video[0]]) == 0 and length:
            for f in self._video:  # audio but no driver frame at all: hold the portrait's own motion
                self._drv[f].append(self._hold[f])  # type: ignore[arg-type]  # None only in mode "none"
        now = time.perf_counter()
        for i in range(self._next, length):
            self._arrival.setdefault(i, now)
        out = self._emit(length) + self._collect(self._pool.drain())
        self._pool.close()
        return out

    # --- driver frames ---------------------------------------------------------------------------------
    def _add_frame(self, frame: np.ndarray) -> None:
        from fixtalk.faces import crop

        t0 = time.perf_counter()
        assert self._track is not None
        pipe = self.pipe
        face = self._track.update(frame)
        c = None if face is None else crop(frame, face.transform, pipe.cfg.size)
        if c is not None and c[::4, ::4].std() < FLAT_CROP_STD:  # as Pipeline.video_features: no face
            c = None
        t1 = time.perf_counter()
        self.timings["track"].append(t1 - t0)
        if c is None:  # hold the last face's motion; before any face, the portrait's own
            held = self._last or self._hold
            for f in self._video:
                self._drv[f].append(held if isinstance(held, Future) else held[f])  # type: ignore[arg-type]  # None only in mode "none"
            return
        # Encoded on a FramePool thread when workers > 1 (inline otherwise); jobs run in submission order,
        # so this frame's render, and later frames' encodings, may wait on it.
        encoded = self._pool.spawn(self._encode, c, self._start)
        self._start = self._start or encoded
        self._last = encoded
        for f in self._video:
            self._drv[f].append(encoded)

    def _encode(self, c: np.ndarray, start: Future[Encoded] | None) -> Encoded:
        """(weights, raw weights) of one driver crop; relative mode adds the motion since the first face
        (`start`, None for the first face itself) to the portrait's own, as Pipeline._factor for a video."""
        t0 = time.perf_counter()
        pipe = self.pipe
        feat = pipe.runtime.features(pipe.model, to_tensor(c)).cpu()
        raw = predict_weights(pipe.runtime, pipe.model, feat, self._video)
        w = raw
        if pipe.relative:  # the driver's motion since its first face, on the portrait's own (Motion.relative)
            first = raw if start is None else start.result()[1]
            w = {f: relative(raw[f], first[f], self._hold[f]) for f in raw}  # type: ignore[arg-type]  # streamed: not None
        self.timings["encode"].append(time.perf_counter() - t0)
        return w, raw

    # --- audio -------------------------------------------------------------------------------------------
    def _add_audio(self, samples: np.ndarray) -> None:
        if samples.ndim != 1:
            raise ValueError(f"audio must be mono samples (1-D) at {SAMPLE_RATE} Hz, got shape {samples.shape}")
        self._wav = np.concatenate([self._wav, samples])
        self._samples += len(samples)

    def _mel_frames(self, stop: int, end: int | None) -> None:
        """Compute mel frames up to (not including) absolute index `stop`.

        `end` is the final sample count (zeros past it, as the batch path's centred STFT), or None while
        streaming, when only frames whose whole 800-sample window has arrived are asked for. The
        segment starts 3 hops before the first new frame's window (or at 0) so that pre-emphasis and
        padding at its start never reach a frame that is kept.
        """
        first = self._m0 + len(self._mel)
        if stop <= first:
            return
        s = max(0, (first - 3) * MEL_HOP)
        e = end if end is not None else (stop - 1) * MEL_HOP + MEL_HALF
        seg = self._wav[s - self._a0:e - self._a0]
        if end is not None and len(seg) < e - s:
            seg = np.pad(seg, (0, e - s - len(seg)))
        mel = melspectrogram(seg)  # frame k is centred on sample s + 200 k
        k0 = first - s // MEL_HOP
        self._mel = np.concatenate([self._mel, mel[k0:k0 + stop - first]])

    def _update_lip(self, final: bool) -> None:
        """New Audio2Lip weights for every frame whose mel window is complete, then smoothing."""
        pipe = self.pipe
        t0 = time.perf_counter()
        frames_in = self._samples // SAMPLES_PER_FRAME
        if final:
            n = frames_in
            end = n * SAMPLES_PER_FRAME  # the batch path crops the audio to whole frames
            total_mel = 1 + end // MEL_HOP
            self._mel_frames(total_mel, end)
        else:
            avail = frames_in * SAMPLES_PER_FRAME  # only samples of complete frames (the batch crop)
            n = len(self._raw)
            while _mel_start(n) + 15 <= (avail - MEL_HALF) // MEL_HOP:
                n += 1
            total_mel = None
            self._mel_frames(_mel_start(n - 1) + 16 if n else 0, None)
        new = range(len(self._raw), n)
        if len(new):
            hi = self._m0 + len(self._mel) - 1 if total_mel is None else total_mel - 1
            idx = np.clip(np.array([_mel_start(i) for i in new])[:, None] + np.arange(16), 0, hi) - self._m0
            windows = torch.from_numpy(np.ascontiguousarray(self._mel[idx].transpose(0, 2, 1)[:, None]))
            assert pipe.audio2lip is not None  # checked in __init__
            out = pipe.runtime.run(pipe.audio2lip, windows).float().cpu()
            for row in out.split(1):
                self._raw.append(row)
        # Reference smoothing (zero-padded 3-tap Gaussian), one frame of lookahead.
        done = len(self._raw) if final else len(self._raw) - 1
        for i in range(len(self._lip), max(done, 0)):
            window = torch.cat(self._raw.window(max(i - 1, 0), i + 2))
            smoothed = smooth_lip_weights(window)[min(i, 1)][None]
            self._lip.append(audio_mouth(pipe.cfg, smoothed, self._own_lip))
        self._trim()
        if len(new):
            self.timings["audio"].append(time.perf_counter() - t0)

    def _trim(self) -> None:
        """Drop mel frames and samples no future frame reads (bounded memory on long streams)."""
        keep_mel = max(0, _mel_start(len(self._raw)))
        if keep_mel > self._m0:
            self._mel = self._mel[keep_mel - self._m0:]
            self._m0 = keep_mel
        keep = max(0, (self._m0 + len(self._mel) - 3) * MEL_HOP - MEL_HALF)
        if keep > self._a0:
            self._wav = self._wav[keep - self._a0:]
            self._a0 = keep

    # --- output ---------------------------------------------------------------------------------------
    def _arrive(self, i: int, now: float) -> None:
        """Frame i's own inputs arrived (calls come in time order, so the later of driver and audio wins)."""
        self._arrival[i] = now

    def _ready(self) -> int:
        """Frames [0, n) whose every streamed factor is known."""
        n = len(self._lip) if self._audio_on else None
        if self._video:
            d = len(self._drv[self._video[0]])
            n = d if n is None else min(n, d)
        return n or 0

    def _entries(self, f: str, idx: list[int]) -> list[torch.Tensor | Future[Encoded]]:
        """What frames idx read for factor f (taken now: _forget may drop them before a worker reads them)."""
        if f in self._const:
            return [self._const[f].expand(len(idx), -1)]
        track = self._lip if self.modes[f] == "audio" else self._drv[f]
        n = len(track)
        return [track[pingpong(i, n)] for i in idx]

    def _weights(self, f: str, entries: list[torch.Tensor | Future[Encoded]]) -> torch.Tensor:
        """The n-wide weights of `entries` (waiting for encodings still in flight), on the runtime's device."""
        rows = [e.result()[0][f] if isinstance(e, Future) else e for e in entries]
        return torch.cat(rows).to(self.pipe.runtime.device)

    def _forget(self) -> None:
        """Drop weights no later frame reads. With the audio driving the mouth, flush() may ping-pong over
        the whole driver, so its weights (36 floats a frame) are kept."""
        if not self._audio_on:
            for track in self._drv.values():
                track.forget_before(self._next)
        self._lip.forget_before(self._next)
        self._raw.forget_before(len(self._lip) - 1)

    def _emit(self, stop: int) -> list[np.ndarray]:
        """Queue frames [next, stop) for rendering; return the frames finished so far, in order."""
        out: list[np.ndarray] = []
        while self._next < stop:
            idx = list(range(self._next, min(self._next + self.pipe.batch_size, stop)))
            factors = [f for f in FACTORS if f != "exp" or self._base.exp is not None]
            picks = {f: self._entries(f, idx) for f in factors}
            arrived = [self._arrival.pop(i, None) for i in idx]
            out += self._collect(self._pool.submit(self._draw, picks, arrived))
            self._next = idx[-1] + 1
            self._forget()
        return out + self._collect(self._pool.ready())

    def _draw(self, picks: dict[str, list[torch.Tensor | Future[Encoded]]],
              arrived: list[float | None]) -> tuple[list[np.ndarray], list[float | None]]:
        """Mix, render and paste back one call's frames (on a FramePool thread when workers > 1)."""
        from fixtalk.faces import paste_back

        w = {f: self._weights(f, e) for f, e in picks.items()}
        mixed = mix_motion(self._base, Motion(w["lip"], w["pose"], w.get("exp")), self.strength)
        t0 = time.perf_counter()
        model = self.src.model or self.pipe.model  # the generator tuned on this source (--tune) if any
        faces = to_uint8(self.pipe.runtime.render(model, self.src.state, mixed))
        t1 = time.perf_counter()
        out = [paste_back(self.src.image, face, self.src.transform) if self.paste_back else face for face in faces]
        self.timings["render"].append(t1 - t0)
        self.timings["paste"].append(time.perf_counter() - t1)
        return out, arrived

    def _collect(self, done: list[tuple[list[np.ndarray], list[float | None]]]) -> list[np.ndarray]:
        """Finished calls, in order: their frames, and each frame's latency up to now (when it is handed out)."""
        now = time.perf_counter()
        out: list[np.ndarray] = []
        for frames, arrived in done:
            out += frames
            self.latencies.extend(now - (now if t is None else t) for t in arrived)
        return out
