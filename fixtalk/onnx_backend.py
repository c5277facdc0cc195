"""`--backend onnx`: the Pipeline and Stream render through onnxruntime sessions instead of torch modules.

`OnnxRuntime` is a `Runtime` whose `prepare` turns a `FixTalk` into an `OnnxFixTalk`: the same inference
surface (`prepare_source`, `driving_features`, `predict_motion`, `render`, `fdm`, `cfg`) backed by the
three graphs of `fixtalk.onnx_export`, so the Pipeline, the Stream and `fixtalk bench` keep one code path.
Other modules (Audio2Lip) and the FDM factor heads stay in torch (small matmuls, and the heads run per
factor on cached motion features).

Where the graphs come from: by default they are exported on first use into a cache directory keyed by a
digest of the weights, the config and the model code (a couple of seconds for fixtalk-small), so they
always match the checkpoint actually loaded and a code change never reuses stale graphs;
`OnnxRuntime(graphs=DIR)` (`--onnx DIR`) uses a set written by `fixtalk export-onnx` instead, after
checking that its manifest names the same config and weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fixtalk.config import ModelConfig
from fixtalk.errors import InputError
from fixtalk.models.fdm import Motion
from fixtalk.models.fixtalk import FixTalk, SourceState
from fixtalk.onnx_export import (
    FORMAT,
    GRAPHS,
    export_graphs,
    source_names,
    unflatten_state,
    weights_digest,
)
from fixtalk.runtime import M, Runtime

log = logging.getLogger(__name__)
CACHE_ENV = "FIXTALK_ONNX_CACHE"


def require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ModuleNotFoundError:
        raise InputError(None, "the ONNX backend needs onnxruntime and onnx: pip install 'fixtalk[onnx]'") from None
    return onnxruntime


def cache_root() -> Path:
    """$FIXTALK_ONNX_CACHE, else $XDG_CACHE_HOME/fixtalk/onnx, else ~/.cache/fixtalk/onnx."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fixtalk" / "onnx"


def code_digest() -> str:
    """sha256 of the sources the graphs are traced from (the models and the exporter)."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256(FORMAT.encode())
    for f in sorted((root / "models").glob("*.py")) + [root / "onnx_export.py"]:
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def check_manifest(graphs: Path, model: FixTalk, digest: str | None = None, render_size: int | None = None) -> dict:
    """The manifest of a graph set, or InputError naming the file when it is not one for `model` (drawing at
    `render_size`, when given)."""
    man = graphs / "manifest.json"
    if not man.is_file():
        raise InputError(graphs, "not an ONNX graph set (no manifest.json); write one with `fixtalk export-onnx`")
    try:
        meta = json.loads(man.read_text())
    except ValueError as err:
        raise InputError(man, f"unreadable manifest ({err})") from None
    if meta.get("format") != FORMAT:
        raise InputError(man, f"format {meta.get('format')!r}, expected {FORMAT!r}: export the graphs again")
    if meta.get("model") != model.cfg.to_dict() or meta.get("weights") != (digest or weights_digest(model)):
        raise InputError(man, "these graphs were exported from other weights than the checkpoint loaded")
    if render_size is not None and meta.get("render_size") != render_size:
        raise InputError(man, f"these graphs draw at {meta.get('render_size')} px, not {render_size}: export them "
                              f"with `fixtalk export-onnx ... --render-size {render_size}`")
    for g in GRAPHS:
        if not (graphs / f"{g}.onnx").is_file():
            raise InputError(graphs / f"{g}.onnx", "missing graph file")
    return meta


def ensure_graphs(model: FixTalk, graphs: str | Path | None = None, render_size: int | None = None) -> Path:
    """The graph directory for `model` drawing at `render_size` (default: the model's): `graphs` (checked),
    else the cache, exported there when absent."""
    if graphs is not None:
        check_manifest(Path(graphs), model, render_size=render_size)
        return Path(graphs)
    size = render_size or model.cfg.default_render_size
    digest = weights_digest(model)
    key = hashlib.sha256(f"{digest}{code_digest()}{model.cfg.to_json()}{size}".encode()).hexdigest()[:20]
    out = cache_root() / key
    if not (out / "manifest.json").is_file():
        log.info("exporting the model to ONNX (once per checkpoint and render size) into %s", out)
        export_graphs(model, out, size)
    check_manifest(out, model, digest, size)
    return out


def manifest_render_size(graphs: Path, cfg: ModelConfig | None = None) -> int | None:
    """The render size a graph set was exported for (for a model of config `cfg`, when given); None where its
    manifest cannot be read or names another model (`check_manifest` then says why)."""
    try:
        meta = json.loads((graphs / "manifest.json").read_text())
        size = meta.get("render_size")
    except (OSError, ValueError, AttributeError):
        return None
    if cfg is not None and meta.get("model") != cfg.to_dict():
        return None
    return size if isinstance(size, int) else None


def _np(t: Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().float().cpu().numpy())


class OnnxFixTalk:
    """FixTalk's inference methods on onnxruntime sessions (CPU, fp32); see the module docstring."""

    def __init__(self, model: FixTalk, graphs: Path, threads: int | None = None) -> None:
        ort = require_onnxruntime()
        self.cfg = model.cfg
        self.fdm = model.fdm.cpu().eval()  # the factor heads on motion features (torch)
        self.graphs = graphs
        opts = ort.SessionOptions()
        self.threads = threads or torch.get_num_threads()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        # Spinning worker threads hold a core while they wait: on a machine busy with other work that costs
        # more than the wake-up latency it saves (the same reason as fixtalk's torch thread choice).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.sessions = {g: ort.InferenceSession(str(graphs / f"{g}.onnx"), opts,
                                                 providers=["CPUExecutionProvider"]) for g in GRAPHS}
        self._render_inputs = [i.name for i in self.sessions["render"].get_inputs()]
        self.render_size = manifest_render_size(graphs) or self.cfg.size

    def prepare_source(self, img: Tensor, image: Tensor | None = None) -> SourceState:
        """As `FixTalk.prepare_source`: `image` is the same crop at the render size R the graphs draw at. The
        renderer's image input has that fixed size, so without one the crop is upsampled to it (torch would draw
        such a source at S instead)."""
        outs = self.sessions["source"].run(None, {"image": _np(img)})
        named = {n: torch.from_numpy(o) for n, o in zip(source_names(self.cfg), outs)}
        if self.cfg.rgb_warp:
            if image is None and self.render_size != img.shape[-1]:
                image = F.interpolate(img.float(), size=self.render_size, mode="bilinear", align_corners=False)
            named["image"] = (img if image is None else image).detach().float().cpu()
        return unflatten_state(named, self.cfg)

    def driving_features(self, img: Tensor) -> Tensor:
        return torch.from_numpy(self.sessions["driver"].run(None, {"frames": _np(img)})[0])

    def predict_motion(self, lip: Tensor, pose: Tensor, exp: Tensor | None = None) -> Motion:
        return self.fdm.predict(lip.cpu(), pose.cpu(), exp.cpu() if exp is not None and self.cfg.has_expression
                                else None)

    def render(self, src: SourceState, motion: Motion, motion_key: Tensor | None = None) -> Tensor:
        """Frames B x 3 x R x R from bank weights, as `FixTalk.render` with the default motion key (R: the render
        size of the graphs, which the source's image must have)."""
        if motion_key is not None:
            raise ValueError("the ONNX renderer uses the default motion key (m^d - m^s)")
        if self.cfg.has_expression and motion.exp is None:
            raise ValueError("the ONNX renderer needs expression weights (pass the source's own to hold it)")
        b = motion.lip.shape[0]
        feed = {"lip": motion.lip, "pose": motion.pose, "exp": motion.exp}
        state = {"latent": src.latent, "src_lip": src.motion.lip, "src_pose": src.motion.pose,
                 "src_exp": src.motion.exp, "src_m": src.m, "f_pi": src.f_pi, "image": src.image,
                 **{f"map{k}": t for k, t in enumerate(src.maps)},
                 **{f"eem{k}": t for k, t in enumerate(src.eem or []) if t is not None}}
        args = {}
        for n in self._render_inputs:
            t = feed[n].expand(b, -1) if n in feed else state[n][:1]  # type: ignore[index,union-attr]  # inputs: never None
            args[n] = _np(t)
        return torch.from_numpy(self.sessions["render"].run(None, args)[0])


class OnnxRuntime(Runtime):
    """A CPU fp32 Runtime whose `prepare` serves a FixTalk through onnxruntime (graphs: see the module doc)."""

    serves_torch = False

    def __init__(self, graphs: str | Path | None = None, threads: int | None = None) -> None:
        super().__init__("cpu", "fp32")
        require_onnxruntime()
        self.graphs = None if graphs is None else Path(graphs)
        self.threads = threads

    def describe(self) -> str:
        import onnxruntime

        from fixtalk.runtime import cpu_description

        graphs = self.graphs or f"exported on first use into {cache_root()}"
        threads = self.threads or torch.get_num_threads()
        how = f"{threads} thread{'s' * (threads > 1)}"
        if self.workers > 1:
            how = f"{self.workers} frames at once x {how}"
        return f"onnxruntime {onnxruntime.__version__} on cpu ({cpu_description()[0]}), fp32, {how}; graphs: {graphs}"

    def graphs_render_size(self, cfg: ModelConfig) -> int | None:
        """The render size of the graph set given with `--onnx DIR` for a model of config `cfg` (the Pipeline's
        default then), else None."""
        return None if self.graphs is None else manifest_render_size(self.graphs, cfg)

    def prepare(self, module: M) -> M:
        if isinstance(module, FixTalk):
            module = module.cpu().eval().requires_grad_(False)
            graphs = ensure_graphs(module, self.graphs, self.render_size)
            return OnnxFixTalk(module, graphs, self.threads)  # type: ignore[return-value]
        return super().prepare(module)
