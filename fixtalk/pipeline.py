"""The one Pipeline every interface uses: decode, crop, animate, paste back, encode.

    pipe = Pipeline.from_pretrained()                       # or Pipeline(load_bundle(path))
    src = pipe.prepare_source("portrait.jpg")              # detect, align, crop, encode: once
    drive = pipe.drive(src, mouth="audio", audio="speech.wav", pose="source", expression="happy")
    pipe.render(src, drive, "out.mp4")                      # batches -> paste back -> H.264 + audio

Each factor (mouth, pose, expression) comes from its own source (docs/architecture.md, Features):
a video or image path, "source" (hold the source's own), "audio" (mouth only, Audio2Lip), a preset
emotion or an EDTalk .npy of 10 weights (expression only). Drivers are read at 25 fps; a driver shorter
than the output plays forward then backward (ping-pong). Models stay pure; this module owns I/O.

Motion modes: "absolute" drives with the driver's own bank weights (EDTalk's demo); "relative" with the
driver's motion since its first frame, on top of the source's own: alpha_t - alpha_0 + alpha_source (LIA's
demo, `Motion.relative`). "auto" (the default) is relative for LIA models and for models with the pixel path
(the shipped one), absolute otherwise (EDTalk's paper-scale models). A LIA model has one motion (no FDM
split), so its mouth, pose and expression must come from the same driver.

Memory does not grow with the video: driver frames are decoded, tracked and encoded batch by batch and
only their motion features (style_dim floats a frame) are kept; output frames go to the encoder as they
are drawn; side-by-side thumbnails are kept JPEG-compressed (a few KB a frame).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fixtalk.checkpoint import Bundle, load_bundle, load_expression_npy
from fixtalk.config import FPS as FPS  # re-exported: the Pipeline's frame rate
from fixtalk.config import SAMPLE_RATE, SAMPLES_PER_FRAME
from fixtalk.driving import (
    FACTORS,
    FactorSpec,
    audio_mouth,
    check_expression,
    check_one_motion,
    check_strength,
    emotion_expression,
    mix_motion,
    parse_factors,
    predict_weights,
    relative,
    require_audio,
)
from fixtalk.driving import Drive as Drive  # re-exported: the Drive/FactorTrack a Pipeline returns
from fixtalk.driving import FactorTrack as FactorTrack
from fixtalk.driving import pingpong as pingpong
from fixtalk.errors import InputError
from fixtalk.models.fdm import Motion
from fixtalk.models.fixtalk import FixTalk, SourceState
from fixtalk.runtime import Runtime

if TYPE_CHECKING:
    from fixtalk.faces import FaceDetector

log = logging.getLogger(__name__)
SHIPPED = Path(__file__).resolve().parent / "assets" / "model"
# dlib's tracker fits a face-shaped set of landmarks to anything, even a blank frame; an aligned crop
# with less contrast than this (std of the 0..255 levels: a black, grey or faded-out frame) holds no face.
FLAT_CROP_STD = 2.0
MOTION_MODES = ("auto", "relative", "absolute")


@dataclass
class PreparedSource:
    """A source portrait, aligned and encoded once."""

    image: np.ndarray        # H x W x 3 uint8, the original
    transform: np.ndarray    # 2 x 3 image -> template transform (for paste-back)
    crop: np.ndarray         # S x S x 3 uint8, what the model sees
    state: SourceState       # cached encodings (batch 1)
    path: str | None = None
    model: FixTalk | None = None  # the generator tuned on this source (--tune), else None: the pipeline's
    full: np.ndarray | None = None  # R x R x 3 uint8, the same crop at the render size (the pixel path's pixels)


def to_tensor(crop: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 -> 1x3xHxW float in [-1, 1] (the fixed affine map x / 127.5 - 1)."""
    return torch.from_numpy(crop).permute(2, 0, 1)[None].float().div_(127.5).sub_(1.0)


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """Bx3xHxW in [-1, 1] -> BxHxWx3 uint8 by the fixed map (x + 1) * 127.5 (never per-clip min-max)."""
    return img.float().add(1).mul(127.5).round_().clamp_(0, 255).byte().permute(0, 2, 3, 1).cpu().numpy()


class Pipeline:
    def __init__(self, bundle: Bundle, runtime: Runtime | None = None, batch_size: int | None = None,
                 progress: bool = True, tune_steps: int = 0, motion_mode: str = "auto",
                 render_size: int | None = None, auto_render_size: bool = True) -> None:
        if motion_mode not in MOTION_MODES:
            raise InputError(None, f"motion mode {motion_mode!r}: expected one of {', '.join(MOTION_MODES)}")
        self.bundle = bundle
        self.runtime = runtime or Runtime()
        self.cfg = bundle.model.cfg
        # Checked before `prepare`, which for --backend onnx exports the graphs first (tens of seconds).
        if tune_steps < 0:
            raise InputError(None, f"--tune must be >= 0 steps, got {tune_steps}")
        if tune_steps and not self.runtime.serves_torch:
            # Tuning trains torch weights; graphs exported from the untuned weights would ignore it.
            raise InputError(None, "--tune needs the torch backend (--backend torch)")
        self.tune_steps = tune_steps
        self.render_size = self._render_size(render_size)
        # No size asked for, torch, the pixel path: each portrait is drawn at its own resolution, from 2 S up
        # (`source_render_size`). A fixed size for ONNX graphs, which are exported at one, and where
        # `auto_render_size` is off (`fixtalk live`: the frame rate must not depend on the photo).
        self.auto_render_size = (auto_render_size and render_size is None and self.runtime.serves_torch
                                 and self.cfg.rgb_warp)
        self.runtime.render_size = self.render_size  # the ONNX backend exports its renderer at that size
        self.model = self.runtime.prepare(bundle.model)
        self.audio2lip = None if bundle.audio2lip is None else self.runtime.prepare(bundle.audio2lip)
        # LIA's demo drives relatively: the portrait keeps its own pose and face shape, and only the driver's
        # change since its first frame is applied (a still image as driver then holds the portrait). The pixel
        # path turns every difference between the driver's bank weights and the portrait's into a warp, and
        # another person's weights also differ by who they are: absolute driving bends the portrait's face
        # into the driver's shape from the first frame (docs/quality.md, "Relative motion by default").
        self.relative = motion_mode == "relative" or (
            motion_mode == "auto" and (not self.cfg.decoupled or self.cfg.rgb_warp))
        # Per-sample modulated convs gain nothing from batching on a CPU (measured: batch 1 is fastest).
        self.batch_size = batch_size or (8 if self.runtime.device.type == "cuda" else 1)
        self.progress = progress
        self._detector: FaceDetector | None = None
        self._tuned: dict[str, FixTalk] = {}  # sha1 of the aligned crop -> tuned generator (fixtalk.tune)

    def _render_size(self, requested: int | None) -> int:
        """Side of the frames the model draws: the requested size, else the model's default (2 S with the pixel
        path, `ModelConfig.default_render_size`), else what a given ONNX graph set was exported for. Why 2 S: the
        pixel path warps the source crop at that size, so the face keeps the portrait's own detail instead of a
        128 px face upscaled (docs/quality.md, "Rendering above the model's size")."""
        if requested is None:
            fixed = getattr(self.runtime, "graphs_render_size", None)
            requested = (fixed(self.cfg) if fixed else None) or self.cfg.default_render_size
        try:
            return self.cfg.check_render_size(requested)
        except ValueError as err:
            raise InputError(None, str(err)) from None

    def source_render_size(self, transform: np.ndarray) -> int:
        """R for a portrait aligned by `transform`: `render_size`, or where it is automatic the side of the crop
        in the portrait's own pixels, rounded up to 32 px, from `render_size` (2 S) to twice that. A face drawn
        below its resolution is resampled up again on paste-back and looks soft beside the untouched rest of
        the photo (docs/quality.md, "Sharp paste-back"); above it, paste-back only shrinks it."""
        from fixtalk.faces import crop_side

        if not self.auto_render_size:
            return self.render_size
        return int(min(max(32 * np.ceil(crop_side(transform) / 32), self.render_size), 2 * self.render_size))

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, **kwargs: Any) -> Pipeline:
        """Load a checkpoint directory; None = the model shipped inside the package."""
        if path is None:
            if not (SHIPPED / "config.json").is_file():
                raise InputError(SHIPPED, "no model is shipped with this install yet; pass --checkpoint DIR "
                                          "(e.g. from `fixtalk convert-edtalk EDTalk.pt DIR` or `fixtalk train`)")
            path = SHIPPED
        return cls(load_bundle(path), **kwargs)

    @property
    def detector(self) -> FaceDetector:
        if self._detector is None:
            from fixtalk.faces import FaceDetector

            self._detector = FaceDetector()
        return self._detector

    # --- source -----------------------------------------------------------------------------------
    def prepare_source(self, source: str | Path | np.ndarray, face_index: int = 0,
                       path: str | Path | None = None) -> PreparedSource:
        """Detect, align, crop and encode the portrait. `path` names an already-loaded array in errors."""
        from fixtalk.faces import crop
        from fixtalk.io import load_image

        if not isinstance(source, np.ndarray):
            path = source
        name = None if path is None else str(path)
        image = source if isinstance(source, np.ndarray) else load_image(source)
        face = self.detector.align(image, face_index=face_index, path=name)
        size = self.source_render_size(face.transform)
        full = None if size == self.cfg.size else crop(image, face.transform, size)
        return self.prepare_crop(crop(image, face.transform, self.cfg.size), image, face.transform, name, full)

    def prepare_crop(self, face_crop: np.ndarray, image: np.ndarray | None = None,
                     transform: np.ndarray | None = None, path: str | None = None,
                     full: np.ndarray | None = None) -> PreparedSource:
        """Encode an already aligned S x S crop (tuned first with `--tune`). Without `image`/`transform` the
        crop is its own frame (identity transform), as for eval's and prep's crops. `full`: the same crop at a
        larger render size for the pixel path (rgb_warp); frames then come out at its size, else at S."""
        model = self.tuned(face_crop)
        args = (to_tensor(face_crop),) if full is None else (to_tensor(face_crop), to_tensor(full))
        state = self.runtime.run((model or self.model).prepare_source, *args)
        return PreparedSource(face_crop if image is None else image,
                              np.eye(2, 3) if transform is None else transform, face_crop, state, path, model, full)

    def tuned(self, face_crop: np.ndarray) -> FixTalk | None:
        """The generator tuned on this aligned crop (`--tune`; cached by its hash), None when tuning is off."""
        if not self.tune_steps:
            return None
        import hashlib

        from fixtalk.tune import tune_generator

        key = hashlib.sha1(face_crop.tobytes()).hexdigest()
        if key not in self._tuned:
            model, secs = tune_generator(self.model, to_tensor(face_crop).to(self.runtime.device), self.tune_steps)
            log.info("tuned the generator on the source: %d steps in %.1f s", self.tune_steps, secs)
            self._tuned[key] = model
        return self._tuned[key]

    # --- drivers ----------------------------------------------------------------------------------
    def video_features(self, path: str | Path, max_frames: int | None = None, thumbs: bool = False,
                       face_index: int = 0) -> tuple[torch.Tensor, Sequence[np.ndarray] | None]:
        """Motion features (T x style_dim) of every driver frame, 25 fps; faceless frames hold the last."""
        from fixtalk.faces import FaceTrack, crop
        from fixtalk.io import open_frames
        from fixtalk.side_by_side import Thumbs

        track = FaceTrack(self.detector, face_index=face_index, fps=FPS, path=path)
        feats: list[torch.Tensor] = []
        small = Thumbs() if thumbs else None
        batch: list[np.ndarray] = []
        kinds: list[bool] = []  # face found per frame

        def flush() -> None:
            if batch:
                x = torch.cat([to_tensor(c) for c in batch])
                feats.append(self.runtime.features(self.model, x).cpu())
                batch.clear()

        reader = open_frames(path, FPS)
        with reader:
            total = reader.frame_count if max_frames is None else min(max_frames, reader.frame_count)
            bar = self._bar(total=total, desc=f"driver {Path(path).name}")
            try:
                for frame in reader:
                    if max_frames is not None and len(kinds) >= max_frames:
                        break
                    face = track.update(frame)
                    c = None if face is None else crop(frame, face.transform, self.cfg.size)
                    kinds.append(c is not None and c[::4, ::4].std() >= FLAT_CROP_STD)
                    if kinds[-1] and face is not None and c is not None:
                        batch.append(c)
                        if small is not None:
                            small.add(crop(frame, face.transform, 128))
                        if len(batch) == self.batch_size:
                            flush()
                    bar.update(1)
            finally:
                bar.close()
        flush()
        if not any(kinds):
            raise InputError(path, "no face found in any driver frame")
        missing = kinds.count(False)
        if missing:
            log.warning("%s: no face in %d of %d frames; holding the last motion there", path, missing, len(kinds))
        # Expand to every frame: a faceless frame repeats the previous (or, at the start, next) face.
        idx, last = [], -1
        for has in kinds:
            last += has
            idx.append(max(last, 0))
        if small is not None:
            small.slot = idx
        return torch.cat(feats)[idx], small

    def audio_lip(self, audio: str | Path, max_frames: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
        """Audio2Lip's output (T x 20) at 25 fps, Gaussian-smoothed (docs/architecture.md 6.3), and the samples.
        `fixtalk.driving.audio_mouth` turns it into the portrait's mouth weights."""
        from fixtalk.audio import crop_to_frames, load_audio, mel_windows, melspectrogram, num_video_frames
        from fixtalk.models.audio2lip import smooth_lip_weights

        if self.audio2lip is None:
            raise InputError(self.bundle.path, "this checkpoint has no Audio2Lip: add one with "
                                               "`fixtalk convert-edtalk Audio2Lip.pt DIR` or train it")
        wav = load_audio(audio)
        if max_frames is not None:
            # Frame i's mel window ends ~5 frames later; 8 frames of margin keep the kept frames exact.
            wav = wav[:(max_frames + 8) * SAMPLES_PER_FRAME]
        n = num_video_frames(wav, FPS)
        if n < 1:
            raise InputError(audio, f"audio too short ({len(wav) / SAMPLE_RATE:.3f} s): need at least one 40 ms frame")
        windows = torch.from_numpy(mel_windows(melspectrogram(crop_to_frames(wav, FPS)), n, FPS))
        out = [self.runtime.run(self.audio2lip, windows[i:i + 256]).float().cpu()
               for i in range(0, n, 256)]
        lip = smooth_lip_weights(torch.cat(out))
        return (lip, wav) if max_frames is None else (lip[:max_frames], wav[:max_frames * SAMPLES_PER_FRAME])

    def _factor(self, spec: FactorSpec, src: PreparedSource, cache: dict, side_by_side: bool,
                audio: str | Path | None, max_frames: int | None = None) -> FactorTrack:
        """Bank weights of one factor from its parsed spec (fixtalk.driving)."""
        own: torch.Tensor = getattr(src.state.motion, spec.factor).float().cpu()  # Motion.lip / .pose / .exp
        if spec.kind == "source":
            return FactorTrack(own, "source")
        if spec.kind == "audio":
            assert audio is not None  # parse_factors checked it
            if "audio" not in cache:
                cache["audio"] = self.audio_lip(audio, max_frames)
            return FactorTrack(audio_mouth(self.cfg, cache["audio"][0], own), "audio")
        if spec.kind == "emotion":
            presets = self.bundle.expression_presets
            if spec.value not in presets:
                raise InputError(self.bundle.path, f"this checkpoint has no '{spec.value}' preset "
                                                   f"(it has: {', '.join(sorted(presets)) or 'none'})")
            return FactorTrack(emotion_expression(self.cfg, torch.from_numpy(presets[spec.value]).float(), own),
                               spec.label)
        if spec.kind == "npy":
            return FactorTrack(torch.from_numpy(load_expression_npy(spec.value, self.cfg.exp_dim)), spec.label)
        key = str(Path(spec.value).resolve())
        if key not in cache:  # one decode and one motion prediction per video, whatever factors it drives
            feats, thumbs = self.video_features(Path(spec.value), max_frames=max_frames, thumbs=side_by_side)
            factors = [f for f in FACTORS if f != "exp" or self.cfg.has_expression]
            cache[key] = predict_weights(self.runtime, self.model, feats, factors), thumbs
        weights, thumbs = cache[key]
        w = weights[spec.factor]
        if self.relative:  # the driver's motion since its first frame, on the source's own (Motion.relative)
            w = relative(w, w[:1], own)
        return FactorTrack(w, spec.label, thumbs)

    def drive(self, src: PreparedSource, mouth: str = "source", pose: str = "source",
              expression: str | None = None, audio: str | Path | None = None,
              side_by_side: bool = False, max_frames: int | None = None) -> Drive:
        """Resolve the three factor sources; length = the audio's when audio drives the mouth, else the
        mouth driver's, else the first video among pose/expression (1 when only stills drive), at most
        `max_frames` (drivers are then read only that far). expression None: 'source', or for a LIA model
        (one motion) whatever drives the mouth and pose."""
        check_expression(self.cfg, expression, self.bundle.path)
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        specs = parse_factors(mouth, pose, expression)  # every spec before any decoding
        check_one_motion(self.cfg, mouth, pose, expression)
        require_audio(mouth, audio)
        cache: dict = {}
        lip = self._factor(specs["lip"], src, cache, side_by_side, audio, max_frames)
        pos = self._factor(specs["pose"], src, cache, side_by_side, audio, max_frames)
        exp = self._factor(specs["exp"], src, cache, side_by_side, audio, max_frames) \
            if self.cfg.has_expression else None
        tracks = [t for t in (lip, pos, exp) if t is not None]
        length = next((t.weights.shape[0] for t in tracks if t.label != "source" and t.weights.shape[0] > 1),
                      None)
        if mouth == "audio":
            length = lip.weights.shape[0]
        if length is None and any(str(Path(s).resolve()) in cache for s in (mouth, pose, expression or "")):
            length = 1  # only still images drive: a one-frame video
        if length is None:
            raise InputError(None, "nothing drives the video: give --driving, --audio, or a video for "
                                   "--mouth/--pose/--expression")
        if max_frames is not None:
            length = min(length, max_frames)
        audio_file = str(audio) if audio is not None else (mouth if Path(mouth).is_file() else None)
        samples = cache["audio"][1] if "audio" in cache else None
        return Drive(lip, pos, exp, length, audio_file, samples)

    # --- rendering ----------------------------------------------------------------------------------
    def motions(self, src: PreparedSource, drive: Drive, strength: tuple[float, float, float] = (1, 1, 1)
                ) -> Iterator[tuple[int, Motion]]:
        """Batches of bank weights, mixed around the source by `strength` (fixtalk.driving.mix)."""
        check_strength(self.cfg, strength)
        own = src.state.motion
        base = Motion(own.lip.float(), own.pose.float(), None if own.exp is None else own.exp.float())

        def pick(track: FactorTrack, idx: list[int]) -> torch.Tensor:
            n = track.weights.shape[0]
            return track.weights[[pingpong(i, n) for i in idx]].to(self.runtime.device)

        for start in range(0, drive.frames, self.batch_size):
            idx = list(range(start, min(start + self.batch_size, drive.frames)))
            driven = Motion(pick(drive.lip, idx), pick(drive.pose, idx),
                            None if drive.exp is None else pick(drive.exp, idx))
            yield start, mix_motion(base, driven, strength)

    def frames(self, src: PreparedSource, drive: Drive, strength: tuple[float, float, float] = (1, 1, 1),
               paste_back: bool = True, side_by_side: bool = False) -> Iterator[np.ndarray]:
        """Output frames (uint8 RGB), streamed batch by batch; `runtime.workers` batches are rendered at once
        (fixtalk.frame_pool), in order."""
        from fixtalk.frame_pool import FramePool

        def draw(start: int, motion: Motion) -> list[np.ndarray]:
            out = to_uint8(self.runtime.render(src.model or self.model, src.state, motion))
            return [self._finish(face, src, drive, start + k, paste_back, side_by_side) for k, face in enumerate(out)]

        pool = FramePool(self.runtime.workers, self.runtime.threads_each)
        try:
            for start, motion in self.motions(src, drive, strength):
                for frames in pool.submit(draw, start, motion):
                    yield from frames
            for frames in pool.drain():
                yield from frames
        finally:
            pool.close()

    def _finish(self, face: np.ndarray, src: PreparedSource, drive: Drive, i: int, paste_back: bool,
                side_by_side: bool) -> np.ndarray:
        from fixtalk.faces import paste_back as paste

        frame = paste(src.image, face, src.transform) if paste_back else face
        if not side_by_side:
            return frame
        from fixtalk.side_by_side import strip

        # The source framed as the result: the portrait under paste-back, else the crop the model drew from.
        own = src.image if paste_back else (src.crop if src.full is None else src.full)
        return strip(frame, own, (t.thumbs if t is not None else None for t in (drive.lip, drive.pose, drive.exp)), i)

    def render(self, src: PreparedSource, drive: Drive, output: str | Path,
               strength: tuple[float, float, float] = (1, 1, 1), paste_back: bool = True,
               side_by_side: bool = False) -> Path:
        """Animate and write an H.264 mp4 (25 fps, audio muxed), atomically."""
        from fixtalk.io import VideoWriter

        kw: dict = {}
        from fixtalk.io import has_audio

        if drive.audio is not None and has_audio(drive.audio):
            kw = {"audio_from": drive.audio}  # the file's own rate and channels, not the 16 kHz model input
        elif drive.audio_samples is not None:
            kw = {"audio": drive.audio_samples, "sample_rate": SAMPLE_RATE}
        bar = self._bar(total=drive.frames, desc="render")
        try:
            with VideoWriter(output, FPS, **kw) as writer:
                for frame in self.frames(src, drive, strength, paste_back, side_by_side):
                    writer.write(frame)
                    bar.update(1)
        finally:
            bar.close()
        return Path(output)

    def _bar(self, total: int, desc: str) -> Any:  # a tqdm bar
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="frame", disable=not self.progress, leave=False)

