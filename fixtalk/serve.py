"""`fixtalk serve`: the web UI, a thin Gradio layer over `Pipeline` (docs/architecture.md, Conventions 4).

Upload a portrait, pick where the mouth, head pose and expression come from (a driving video, a second
video, the audio, a preset emotion, or the portrait itself), set strengths and paste-back, render, and
watch or download the mp4. The server binds to localhost unless told otherwise, limits upload size and
clip length, runs one render at a time (the device is the bottleneck; later jobs queue), reports bad
input (`InputError`) as a message in the page rather than a traceback, and makes no outside calls:
analytics off, fonts and scripts served by the app itself (tests/test_web.py checks every request the
page makes goes to the server).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fixtalk.driving import FACTORS, NAMES
from fixtalk.driving import choices as factor_choices
from fixtalk.errors import InputError
from fixtalk.options import RuntimeOptions, add_runtime_args

log = logging.getLogger(__name__)

VIDEO, VIDEO2, AUDIO, SOURCE = "driving video", "second video", "audio", "portrait (hold)"
# (portrait, driving video, mouth, pose, expression, audio) under the dev-faces folder.
EXAMPLES = [
    ("images/edtalk__identity_source.jpg", "videos/styletalk__furious_talk2_clip1.mp4", VIDEO, VIDEO, VIDEO, None),
    ("images/lia__monroe.png", "videos/dreamtalk__M030_front_neutral_level1_001.mp4", AUDIO, VIDEO, "happy",
     "audio/edtalk__mouth_source.wav"),
    ("images/sadtalker__happy1.png", "videos/dreamtalk__W009_front_surprised_level3_001.mp4",
     SOURCE, VIDEO, "surprised", None),
]


def default_examples_dir() -> Path:
    """$FIXTALK_FACES_DIR, else ../shared/data/faces next to a source checkout (absent when installed)."""
    env = os.environ.get("FIXTALK_FACES_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"


def media_seconds(path: str | Path) -> float:
    """Duration of a video or audio file from its container (no decoding); InputError if unreadable."""
    import av

    try:
        with av.open(str(path)) as c:
            if c.duration:
                return c.duration / av.time_base
            s = (c.streams.video or c.streams.audio)[0]
            return float(s.duration * s.time_base) if s.duration and s.time_base else 0.0
    except (av.error.FFmpegError, IndexError) as err:
        raise InputError(path, "not a readable video or audio file") from err


@dataclass
class Limits:
    max_seconds: float = 60.0   # longest driving video / audio accepted, and longest output
    max_upload_mb: float = 50.0  # per uploaded file (Gradio's max_file_size; checked in the page and server)


class WebApp:
    """The request handler, separate from the page so it can be tested without a browser."""

    def __init__(self, pipe: Any, limits: Limits, workdir: Path | None = None) -> None:
        self.pipe, self.limits = pipe, limits
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="fixtalk-serve-"))

    def choices(self) -> dict[str, list[str]]:
        """What each factor can follow with this checkpoint (no audio without Audio2Lip, presets it has)."""
        bundle = getattr(self.pipe, "bundle", None)
        cfg = None if bundle is None else bundle.model.cfg
        kinds = factor_choices(cfg, getattr(bundle, "audio2lip", None) is not None,
                               list(getattr(bundle, "expression_presets", {})))
        labels = {"video": [VIDEO, VIDEO2], "audio": [AUDIO], "source": [SOURCE]}
        return {NAMES[f]: [x for k in kinds[f] for x in labels.get(k, [k])] for f in FACTORS}

    def render(self, portrait: str | None, video: str | None, video2: str | None, audio: str | None,
               mouth: str, pose: str, expression: str, mouth_strength: float, pose_strength: float,
               expression_strength: float, paste_back: bool, progress: Any = None) -> str:
        """Animate and return the mp4's path; every user error raises gr.Error with a readable line."""
        import gradio as gr

        names = {portrait: "portrait", video: "driving video", video2: "second video", audio: "driving audio"}
        try:
            return self._render(portrait, video, video2, audio, mouth, pose, expression,
                                (mouth_strength, pose_strength, expression_strength), paste_back, progress)
        except InputError as err:
            where = names.get(err.path) if err.path else None
            label = f"{where} ({Path(err.path).name})" if where and err.path else (
                Path(err.path).name if err.path else "")
            raise gr.Error(f"{label}: {err.problem}" if label else err.problem, duration=None,
                           title="Cannot render", print_exception=False) from None
        except gr.Error:
            raise
        except Exception:
            log.exception("render failed")
            raise gr.Error("internal error while rendering; the server log has the details",
                           duration=None) from None

    def _render(self, portrait: str | None, video: str | None, video2: str | None, audio: str | None,
                mouth: str, pose: str, expression: str, strength: tuple[float, float, float],
                paste_back: bool, progress: Any) -> str:
        if not portrait:
            raise InputError(None, "upload a portrait first")
        files = {VIDEO: video, VIDEO2: video2}

        def spec(choice: str, factor: str) -> str:
            if choice in files:
                if not files[choice]:
                    raise InputError(None, f"{factor} is set to '{choice}', but no {choice} is uploaded")
                return str(files[choice])
            if choice == AUDIO:
                if not audio:
                    raise InputError(None, f"{factor} is set to 'audio', but no driving audio is uploaded")
                return "audio"
            return "source" if choice == SOURCE else choice

        specs = (spec(mouth, "mouth"), spec(pose, "head pose"), spec(expression, "expression"))
        used = {files[c] for c in (mouth, pose, expression) if c in files} | ({audio} if mouth == AUDIO else set())
        for path in sorted(p for p in used if p):
            seconds = media_seconds(path)
            if seconds > self.limits.max_seconds:
                raise InputError(path, f"{seconds:.1f} s long; this server accepts clips up to "
                                       f"{self.limits.max_seconds:g} s (trim it, or start the server "
                                       f"with a larger --max-seconds)")
        self._clean_old()
        if progress is not None:
            progress(0.0, desc="finding the face")
        src = self.pipe.prepare_source(portrait)
        if progress is not None:
            progress(0.05, desc="reading the drivers")
        drive = self.pipe.drive(src, mouth=specs[0], pose=specs[1], expression=specs[2],
                                audio=audio if specs[0] == "audio" else None)
        if drive.frames > self.limits.max_seconds * 25 + 1:
            raise InputError(None, f"the result would be {drive.frames / 25:.1f} s long; this server renders "
                                   f"up to {self.limits.max_seconds:g} s")
        out = self.workdir / f"fixtalk-{uuid.uuid4().hex[:12]}.mp4"
        self.pipe.render(src, drive, out, strength=strength, paste_back=paste_back)
        return str(out)

    def _clean_old(self, max_age_s: float = 3600) -> None:
        """Outputs are copied into Gradio's cache when returned; ours go after an hour."""
        for f in self.workdir.glob("fixtalk-*.mp4"):
            if time.time() - f.stat().st_mtime > max_age_s:
                f.unlink(missing_ok=True)


def build_demo(app: WebApp, examples_dir: Path | None = None) -> Any:
    """The page: inputs on the left, sources, sliders and the result on the right."""
    import gradio as gr

    max_s = app.limits.max_seconds
    choices = app.choices()

    def render(portrait: str | None, video: str | None, video2: str | None, audio: str | None, mouth: str,
               pose: str, expression: str, s_mouth: float, s_pose: float, s_exp: float, paste: bool,
               progress: gr.Progress = gr.Progress(track_tqdm=True)) -> str:  # noqa: B008 (Gradio's idiom)
        return app.render(portrait, video, video2, audio, mouth, pose, expression, s_mouth, s_pose, s_exp,
                          paste, progress)

    def check_length(path: str | None) -> None:
        """On upload: say at once when a clip is unreadable or too long (render says it again)."""
        if not path:
            return
        try:
            seconds = media_seconds(path)
        except InputError as err:
            raise gr.Error(f"{Path(path).name}: {err.problem}", duration=None, print_exception=False) from None
        if seconds > max_s:
            raise gr.Error(f"{Path(path).name}: {seconds:.1f} s long; this server accepts clips up to {max_s:g} s",
                           duration=None, title="Clip too long", print_exception=False)

    with gr.Blocks(title="fixtalk", analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        gr.Markdown("## fixtalk: animate a portrait\nUpload a portrait, choose where the mouth, head pose and "
                    "expression come from, and press **Render**. Drivers are read at 25 fps; a driver "
                    "shorter than the result plays forward, then backward.")
        with gr.Row():
            with gr.Column():
                portrait = gr.Image(label="Portrait", type="filepath", format="png", image_mode=None,
                                    sources=["upload", "clipboard"], height=300, elem_id="portrait")
                video = gr.Video(label=f"Driving video (up to {max_s:g} s)", sources=["upload"], height=260,
                                 include_audio=True, elem_id="driving")
                audio = gr.Audio(label=f"Driving audio (up to {max_s:g} s)", type="filepath",
                                 sources=["upload"], elem_id="audio")
                with gr.Accordion("Second video (e.g. head pose from another clip)", open=False):
                    video2 = gr.Video(label="Second video", sources=["upload"], include_audio=True,
                                      elem_id="video2")
            with gr.Column():
                mouth = gr.Radio(choices["mouth"], value=VIDEO, label="Mouth from", elem_id="mouth")
                pose = gr.Radio(choices["pose"], value=VIDEO, label="Head pose from", elem_id="pose")
                expression = gr.Dropdown(choices["expression"], value=choices["expression"][0],
                                         label="Expression from", elem_id="expression")
                with gr.Row():
                    s_mouth = gr.Slider(0, 2, value=1, step=0.05, label="Mouth strength")
                    s_pose = gr.Slider(0, 2, value=1, step=0.05, label="Pose strength")
                    s_exp = gr.Slider(0, 2, value=1, step=0.05, label="Expression strength")
                paste = gr.Checkbox(value=True, label="Paste the face back into the whole portrait")
                button = gr.Button("Render", variant="primary", elem_id="render")
                result = gr.Video(label="Result", interactive=False, buttons=["download"], height=420,
                                  elem_id="result")
        inputs = [portrait, video, video2, audio, mouth, pose, expression, s_mouth, s_pose, s_exp, paste]
        button.click(render, inputs, result, concurrency_limit=1, concurrency_id="device")
        for media in (video, video2, audio):
            media.upload(check_length, media, None, concurrency_limit=None, show_progress="hidden")
        rows = _examples(examples_dir, max_s, choices)
        if rows:
            gr.Examples(rows, [portrait, video, mouth, pose, expression, audio], label="Examples (dev faces)")
    return demo


def _examples(folder: Path | None, max_seconds: float, choices: dict[str, list[str]]) -> list[list[Any]]:
    """The EXAMPLES whose files exist under `folder`, fit the length limit and the checkpoint's choices."""
    if folder is None or not folder.is_dir():
        return []
    rows = []
    for img, vid, m, p, e, a in EXAMPLES:
        paths = [folder / img, folder / vid] + ([folder / a] if a else [])
        if (all(f.is_file() for f in paths) and all(media_seconds(f) <= max_seconds for f in paths[1:])
                and m in choices["mouth"] and p in choices["pose"] and e in choices["expression"]):
            rows.append([str(folder / img), str(folder / vid), m, p, e, str(folder / a) if a else None])
    return rows


# --- CLI ----------------------------------------------------------------------------------------------------
def register(sub: argparse._SubParsersAction, handlers: dict[str, Callable[[argparse.Namespace], int]]) -> None:
    from fixtalk.pipeline_cli import add_motion_mode_arg, add_render_size_arg

    p = sub.add_parser("serve", help="web UI in the browser (Gradio), on localhost by default")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 exposes it to the network")
    p.add_argument("--port", type=int, default=7860, help="(default: %(default)s)")
    p.add_argument("--checkpoint", help="checkpoint directory (default: the model shipped in the package)")
    add_runtime_args(p)
    p.add_argument("--tune", type=int, default=0, metavar="N",
                   help="tune the generator N steps on the source first (cached)")
    add_render_size_arg(p)
    add_motion_mode_arg(p)
    p.add_argument("--max-upload-mb", type=float, default=Limits.max_upload_mb,
                   help="largest upload per file (default: %(default)s)")
    p.add_argument("--max-seconds", type=float, default=Limits.max_seconds,
                   help="longest driving video/audio and result (default: %(default)s)")
    p.add_argument("--queue-size", type=int, default=16,
                   help="jobs waiting beyond the one rendering (default: %(default)s)")
    p.add_argument("--examples", type=Path, default=None,
                   help="folder of example inputs (default: $FIXTALK_FACES_DIR or ../shared/data/faces)")
    handlers["serve"] = _serve


def _serve(args: argparse.Namespace) -> int:
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no version check either
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from fixtalk.pipeline import Pipeline

    logging.basicConfig(level=logging.WARNING, format="fixtalk: %(message)s")
    if args.max_upload_mb <= 0 or args.max_seconds <= 0:
        raise InputError(None, "--max-upload-mb and --max-seconds must be positive")
    options = RuntimeOptions.from_args(args)
    rt = options.runtime()
    print(f"fixtalk serve: {rt.describe()}", flush=True)
    pipe = Pipeline.from_pretrained(args.checkpoint, runtime=rt, batch_size=options.batch, tune_steps=args.tune,
                                    motion_mode=args.motion_mode, render_size=args.render_size)
    limits = Limits(args.max_seconds, args.max_upload_mb)
    demo = build_demo(WebApp(pipe, limits), args.examples or default_examples_dir())
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: anyone who can reach this address can use the app", args.host)
    demo.queue(max_size=args.queue_size, default_concurrency_limit=1)
    demo.launch(server_name=args.host, server_port=args.port, share=False,
                max_file_size=int(args.max_upload_mb * 2**20), ssr_mode=False, mcp_server=False,
                enable_monitoring=False, footer_links=["settings"], show_error=False, inbrowser=False,
                quiet=True, prevent_thread_lock=True)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"fixtalk: serving on http://{host}:{demo.server_port}/ (Ctrl-C to stop)", flush=True)
    try:
        while demo.is_running:
            time.sleep(0.2)
    except KeyboardInterrupt:
        print("fixtalk: stopped", flush=True)
    finally:
        demo.close(verbose=False)
    return 0
