"""Decode images and videos into RGB uint8 arrays, and encode H.264/AAC mp4s, all through PyAV.

Everything here is streaming: a VideoReader holds one decoded frame at a time and a VideoWriter
encodes frame by frame, so memory does not grow with the video length. Bad input raises
`InputError(path, problem)`, which the CLI prints as one line.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from fractions import Fraction
from io import BytesIO
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import av
import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from fixtalk.config import FPS
from fixtalk.errors import InputError

log = logging.getLogger(__name__)

PathLike = str | os.PathLike
# PIL's decompression-bomb guard stops at ~179 MP; portraits from big cameras can exceed it, so we
# use our own, higher limit (1 GP RGB = 3 GB) that still rejects absurd headers.
MAX_IMAGE_PIXELS = 1_000_000_000
_PIL_LIMIT_LOCK = threading.Lock()
# Sample rates the AAC encoder accepts; anything else is resampled to 48 kHz.
_AAC_RATES = {7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000}
_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}


def _why(e: Exception) -> str:
    """FFmpeg's message without the path PyAV appends (the InputError already names the file)."""
    return str(getattr(e, "strerror", None) or e)


def _seconds(stream: av.stream.Stream) -> float | None:
    if stream.duration is None or not stream.time_base:
        return None
    return float(stream.duration * stream.time_base)


def _check_file(path: Path) -> None:
    """Raise the InputError a user should see before any decoder gets a chance to be cryptic."""
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a directory, expected a file")
    if path.stat().st_size == 0:
        raise InputError(path, "empty file (0 bytes)")


def _open_av(path: Path, need: str) -> av.container.InputContainer:
    """av.open for reading with user-facing errors; `need` ("video"/"audio") must have a stream."""
    _check_file(path)
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise InputError(path, f"not a readable media file ({_why(e)})") from e
    if not getattr(container.streams, need):
        container.close()
        raise InputError(path, f"no {need} stream")
    return container


# ----------------------------------------------------------------------------------------------- images

def load_image(path: PathLike) -> np.ndarray:
    """Read any PIL-readable image as an HxWx3 uint8 RGB array, upright per its EXIF orientation.

    - Transparent images (RGBA, LA, palette with transparency) are composited on **white** rather
      than having alpha dropped: the colour under fully transparent pixels is arbitrary (often
      black fringes around cut-out portraits), white is what viewers show and is predictable.
    - 16-bit images are scaled to 8 bits (PIL's own conversion clips at 255 instead of scaling).
    - CMYK and other colour spaces with an embedded ICC profile are converted to sRGB.
    - Animated images (GIF, WebP) give their first frame.
    """
    path = Path(path)
    _check_file(path)
    try:
        with _PIL_LIMIT_LOCK:  # PIL's limit is a global: lift it only around open(), one thread at a time
            old_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                opened = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = old_limit
        with opened as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:  # our own limit, checked before decoding
                raise InputError(path, f"image too large ({img.width}x{img.height})")
            if img.width == 0 or img.height == 0:
                raise InputError(path, "image has zero size")
            img.load()
            if img.getexif().get(0x0112, 1) != 1:  # EXIF Orientation; transposing copies, so only if needed
                return _to_rgb8(ImageOps.exif_transpose(img))
            return _to_rgb8(img)
    except UnidentifiedImageError as e:
        raise InputError(path, "not a readable image (unknown or fake image format)") from e
    except (OSError, SyntaxError, ValueError) as e:  # PIL reports truncated data as OSError/SyntaxError
        raise InputError(path, f"truncated or corrupt image ({e})") from e


def _to_rgb8(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> HxWx3 uint8 RGB (see load_image for the choices)."""
    mode = img.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        a = np.asarray(img).astype(np.float64)
        # "I" comes from 16-bit greyscale PNG/TIFF (0..65535); "F" is either 0..1 or 0..255.
        scale = 255.0 / 65535.0 if mode != "F" else (255.0 if a.max(initial=0) <= 1.0 else 1.0)
        a = np.clip(a * scale + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(a[..., None], 3, axis=2))
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    elif "icc_profile" in img.info and mode in ("RGB", "CMYK"):
        try:  # a wrong profile is worse than none, so any failure falls back to a plain convert
            src = ImageCms.ImageCmsProfile(BytesIO(img.info["icc_profile"]))
            img = ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB") or img
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
            pass
    if img.mode != "RGB":
        img = img.convert("RGB")
    # tobytes + frombuffer is ~4x faster than np.asarray(img) on 100+ MP images; copy() makes it writable.
    return np.frombuffer(img.tobytes(), dtype=np.uint8).reshape(img.height, img.width, 3).copy()


# ----------------------------------------------------------------------------------------------- video in

_S = TypeVar("_S", bound="_Source")


class _Source:
    """Context-manager plumbing shared by VideoReader and ImageFrames."""

    def close(self) -> None:
        pass

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VideoReader(_Source):
    """Stream RGB uint8 HxWx3 frames from a video, resampled to `fps` by timestamp.

    Resampling picks, for output frame k at time k/fps, the source frame nearest in time
    (duplicating or dropping frames, like ffmpeg's fps filter), so variable-frame-rate files come
    out with a regular clock. `fps=None` keeps the native frames. The first frame is decoded on
    construction, so a file without decodable frames fails here, before any work is done.
    Duplicated frames are copies, so callers may modify frames in place.
    """

    def __init__(self, path: PathLike, fps: float | None = float(FPS)) -> None:
        self.path = Path(path)
        self._container = _open_av(self.path, "video")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"  # frame threading: ~2x faster decode on multi-core
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.native_fps: float = float(rate) if rate else 25.0
        self.fps: float = float(fps) if fps else self.native_fps
        self._resample = bool(fps)
        self.has_audio: bool = bool(self._container.streams.audio)
        c_dur = self._container.duration
        self.duration: float | None = _seconds(self._stream) or (c_dur / av.time_base if c_dur else None)
        self._frames = self._decode()
        try:
            first = next(self._frames, None)
            if first is None:
                raise InputError(self.path, "no decodable video frames")
        except InputError:
            self._container.close()
            raise
        self._first: tuple[float, np.ndarray] = first
        h, w = first[1].shape[:2]
        self.size: tuple[int, int] = (w, h)  # (width, height), after display rotation
        self._iterated = False

    @property
    def frame_count(self) -> int:
        """Estimated number of frames __iter__ yields (exact for well-formed constant-rate files)."""
        if self.duration:
            return max(1, round(self.duration * self.fps))
        return max(1, round((self._stream.frames or 1) * self.fps / self.native_fps))

    def _decode(self) -> Iterator[tuple[float, np.ndarray]]:
        n, rot = 0, None
        try:
            for frame in self._container.decode(self._stream):
                if rot is None:  # phone videos store portrait orientation as a display matrix
                    rot = round((frame.rotation or 0) / 90) % 4
                img: np.ndarray = frame.to_ndarray(format="rgb24")
                if rot:
                    img = np.ascontiguousarray(np.rot90(img, k=rot))  # rotation is counter-clockwise
                t = float(frame.time) if frame.time is not None else n / self.native_fps
                n += 1
                yield t, img
        except av.error.FFmpegError as e:
            raise InputError(self.path, f"corrupt or truncated video after {n} frames ({_why(e)})") from e
        expected = self._stream.frames  # exact in mp4/mov (from the index), 0 when unknown
        if expected and n < expected - max(2, expected // 50):
            raise InputError(self.path, f"truncated video: decoded {n} of {expected} frames")

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._iterated:
            raise RuntimeError("a VideoReader can be iterated only once; open the file again")
        self._iterated = True
        if not self._resample:
            yield from (img for _, img in itertools.chain([self._first], self._frames))
            return
        step, k = 1.0 / self.fps, 0
        t0, prev = self._first
        prev_t = 0.0
        for t, img in self._frames:
            t -= t0
            # Output slots before the midpoint of two source frames are nearest to the earlier one.
            mid, dup = 0.5 * (prev_t + t), False
            while k * step < mid - 1e-6:
                yield prev.copy() if dup else prev
                k, dup = k + 1, True
            prev, prev_t = img, t
        # The last frame lasts one native frame period; fill the clock up to the end of it.
        n_total = round((prev_t + 1.0 / self.native_fps) * self.fps)
        dup = False
        while k < n_total:
            yield prev.copy() if dup else prev
            k, dup = k + 1, True

    def close(self) -> None:
        self._container.close()


class ImageFrames(_Source):
    """A still image seen as a one-frame video (users pass photos as motion drivers)."""

    def __init__(self, path: PathLike, fps: float | None = float(FPS)) -> None:
        self.path = Path(path)
        self._image = load_image(self.path)
        self.fps = self.native_fps = float(fps or 25.0)
        self.has_audio, self.frame_count, self.duration = False, 1, None
        self.size = (self._image.shape[1], self._image.shape[0])

    def __iter__(self) -> Iterator[np.ndarray]:
        yield self._image


_IMAGE_EXTS = {ext for ext, fmt in Image.registered_extensions().items() if fmt != "GIF"}


def open_frames(path: PathLike, fps: float | None = float(FPS)) -> VideoReader | ImageFrames:
    """Open a driver that may be a video or a still image; both expose fps/size/frame_count/iteration.

    Images are recognised by extension; a file with an unknown extension that PyAV cannot read is
    tried as an image before giving up, so a misnamed photo still works.
    """
    path = Path(path)
    if path.suffix.lower() in _IMAGE_EXTS:
        return ImageFrames(path, fps)
    try:
        return VideoReader(path, fps)
    except InputError as video_err:
        if not path.is_file() or path.stat().st_size == 0:
            raise
        try:
            return ImageFrames(path, fps)
        except InputError:
            raise video_err from None


# ----------------------------------------------------------------------------------------------- video out

AudioSource = Generator[av.AudioFrame, None, None]


def _audio_from_array(samples: np.ndarray, rate: int) -> AudioSource:
    for i in range(0, len(samples), 4096):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[None, i:i + 4096]), format="fltp",
                                           layout="mono")
        frame.sample_rate = rate
        yield frame


def _audio_from_file(path: Path) -> tuple[AudioSource, int, int]:
    """Return (frames, sample_rate, channels) of the first audio track of `path`."""
    container = _open_av(path, "audio")
    stream = container.streams.audio[0]

    def frames() -> AudioSource:
        try:
            yield from container.decode(stream)
        except av.error.FFmpegError as e:
            log.warning("%s: audio decoding stopped early (%s)", path, _why(e))
        finally:
            container.close()

    return frames(), stream.sample_rate or 48000, stream.channels or 1


class VideoWriter:
    """Write RGB uint8 frames to an H.264 (libx264, yuv420p, crf) mp4, optionally with AAC audio.

    Use as a context manager. Output goes to a hidden temporary file next to `path` that is renamed
    onto `path` only when the block ends without an exception; on an exception (or zero frames)
    the temporary file is deleted, so a half-written video never appears under the final name.

    yuv420p needs even sizes: odd widths/heights are **padded** by repeating the last column/row
    (cropping would throw away generated pixels; one repeated edge line is invisible).

    Audio: either `audio` (mono float32 samples in [-1, 1]) with `sample_rate`, or `audio_from`
    (a file whose first audio track is copied). Either way it is encoded to AAC, interleaved with
    the video as frames arrive (so memory stays constant) and trimmed to the video's duration.
    """

    def __init__(self, path: PathLike, fps: float = float(FPS), *, crf: int = 18, preset: str = "medium",
                 audio: np.ndarray | None = None, sample_rate: int | None = None,
                 audio_from: PathLike | None = None) -> None:
        if audio is not None and audio_from is not None:
            raise ValueError("give either audio samples or audio_from, not both")
        self.path = Path(path)
        self.fps = Fraction(fps).limit_denominator(1001)  # 29.97 -> 30000/1001
        self._crf, self._preset, self.frames_written, self._closed = crf, preset, 0, False
        # PyAV objects, created with the first frame (the size is known only then).
        self._container: Any = None
        self._video: Any = None
        self._audio: Any = None
        self._tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.part")
        self._audio_src: AudioSource | None = None
        self._pending: np.ndarray | None = None  # decoded audio not yet encoded, (channels, n)
        self._audio_done = 0  # audio samples encoded so far
        if audio is not None:
            if sample_rate is None:
                raise ValueError("sample_rate is required with audio samples")
            samples, src_rate, channels = np.asarray(audio, dtype=np.float32), int(sample_rate), 1
            if samples.ndim != 1:
                raise ValueError(f"audio must be mono, shape (n,), got {samples.shape}")
            self._audio_src = _audio_from_array(samples, src_rate)
        elif audio_from is not None:
            self._audio_src, src_rate, channels = _audio_from_file(Path(audio_from))
        if self._audio_src is not None:
            self._rate = src_rate if src_rate in _AAC_RATES else 48000
            self._layout = "mono" if channels == 1 else "stereo"
            # Converts any decoded sample format/layout/rate to what the AAC encoder takes.
            self._resampler = av.AudioResampler(format="fltp", layout=self._layout, rate=self._rate)

    def _open(self, width: int, height: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fmt = _FORMATS.get(self.path.suffix.lower(), "mp4")
        # faststart moves the index to the front so browsers (the web UI) can play while loading.
        opts = {"movflags": "+faststart"} if fmt in ("mp4", "mov") else {}
        self._container = av.open(str(self._tmp), "w", format=fmt, container_options=opts)
        self._video = self._container.add_stream("libx264", rate=self.fps)
        self._video.width, self._video.height, self._video.pix_fmt = width, height, "yuv420p"
        self._video.options = {"crf": str(self._crf), "preset": self._preset}
        if self._audio_src is not None:
            self._audio = self._container.add_stream("aac", rate=self._rate)
            self._audio.layout = self._layout

    def write(self, frame: np.ndarray) -> None:
        """Append one HxWx3 uint8 RGB frame; every frame must have the first frame's size."""
        if self._closed:
            raise RuntimeError("VideoWriter is closed")
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 uint8 RGB frame, got {frame.dtype} {frame.shape}")
        h, w = frame.shape[:2]
        if h % 2 or w % 2:
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        if self._container is None:
            self._open(frame.shape[1], frame.shape[0])
            self._size = frame.shape[:2]
        elif frame.shape[:2] != self._size:
            raise ValueError(f"frame size {frame.shape[:2]} differs from the first frame's {self._size}")
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vf.pts = self.frames_written
        for packet in self._video.encode(vf):
            self._container.mux(packet)
        self.frames_written += 1
        if self._audio is not None and self.frames_written % 25 == 0:  # audio in ~1 s chunks
            self._pump_audio()

    def _pump_audio(self) -> None:
        """Encode audio up to the current end of the video (never beyond: that trims it)."""
        assert self._audio_src is not None
        until = round(self.frames_written / self.fps * self._rate)
        while self._audio_done < until:
            if self._pending is None or self._pending.shape[1] == 0:
                src = next(self._audio_src, None)
                if src is None:
                    return  # audio shorter than the video: it simply ends
                resampled = self._resampler.resample(src)
                if not resampled:
                    continue
                self._pending = np.concatenate([f.to_ndarray() for f in resampled], axis=1)
            take = min(self._pending.shape[1], until - self._audio_done)
            chunk, self._pending = self._pending[:, :take], self._pending[:, take:]
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout=self._layout)
            af.sample_rate, af.pts, af.time_base = self._rate, self._audio_done, Fraction(1, self._rate)
            for packet in self._audio.encode(af):
                self._container.mux(packet)
            self._audio_done += take

    def close(self) -> None:
        """Flush the encoders and atomically move the finished file onto `path`."""
        if self._closed:
            return
        try:
            if self._container is None:
                raise ValueError(f"{self.path}: no frames were written")
            for packet in self._video.encode():
                self._container.mux(packet)
            if self._audio is not None:
                self._pump_audio()
                for packet in self._audio.encode():
                    self._container.mux(packet)
            self._container.close()
            os.replace(self._tmp, self.path)
            self._closed = True
            if self._audio_src is not None:
                self._audio_src.close()  # closes the audio_from file
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Stop writing and delete the temporary file; `path` is left untouched."""
        self._closed = True
        for res in (self._container, self._audio_src):
            try:
                res is not None and res.close()
            except Exception:  # may be half-initialised; the temporary file goes anyway
                pass
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()


# ----------------------------------------------------------------------------------------------- probe

@dataclass(frozen=True)
class ProbeInfo:
    """What a media file holds; counts come from demuxing (exact), durations in seconds."""

    frames: int
    fps: float
    width: int
    height: int
    codec: str
    pix_fmt: str | None
    duration: float | None
    audio_codec: str | None
    audio_sample_rate: int | None
    audio_duration: float | None


def has_audio(path: PathLike) -> bool:
    """Whether a media file has an audio track; False for anything PyAV cannot open."""
    try:
        with av.open(str(path)) as c:
            return bool(c.streams.audio)
    except Exception:
        return False


def probe(path: PathLike) -> ProbeInfo:
    """Inspect a video file without decoding it (used by tests and sanity checks)."""
    path = Path(path)
    try:
        with _open_av(path, "video") as c:
            v = c.streams.video[0]
            a = c.streams.audio[0] if c.streams.audio else None
            return ProbeInfo(
                frames=sum(1 for p in c.demux(v) if p.size), fps=float(v.average_rate or v.guessed_rate or 0),
                width=v.width, height=v.height, codec=v.codec_context.name, pix_fmt=v.codec_context.pix_fmt,
                duration=_seconds(v), audio_codec=a.codec_context.name if a else None,
                audio_sample_rate=a.sample_rate if a else None, audio_duration=_seconds(a) if a else None)
    except av.error.FFmpegError as e:
        raise InputError(path, f"not a readable video ({_why(e)})") from e
