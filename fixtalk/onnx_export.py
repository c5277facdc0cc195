"""ONNX export of the inference path: three graphs that together do what `FixTalk` does per source and frame.

    source.onnx   image 1 x 3 x S x S -> the `SourceState` cache (latent, maps, own motion, m, f_pi, EEM maps)
    driver.onnx   frames B x 3 x S x S -> motion features B x style_dim (EMI's z, or f_6 without EMI)
    render.onnx   (lip B x 20, pose B x 6, exp B x 10, the source cache at batch 1) -> frames B x 3 x R x R

R is the render size the graphs are exported for (`manifest.json`'s `render_size`): with the pixel path the
renderer reads the portrait's crop at R x R and draws at R, by default 2 S as with torch
(`ModelConfig.default_render_size`); otherwise R = S.

The renderer reads FDM bank weights, not driver frames, so that each factor (mouth, pose, expression) can
come from its own source, be scaled by a strength, or come from Audio2Lip or an emotion preset exactly as
with torch; the factor heads that turn a motion feature into bank weights are a few small matmuls and
stay in torch (`Pipeline._factor`, `Stream`). The bank basis Q (a QR decomposition, which ONNX lacks) is
constant at inference and is exported as a constant. `manifest.json` records the config, a digest of
the weights and the input/output names, so a graph set is never used with other weights.

The graphs are traced from a frozen copy of the model. Its modulated convolutions already run in StyleGAN2's
non-fused form (scale the input, convolve with the fixed weight, demodulate the output), which keeps the batch
a free axis; the fused form folded the batch into the convolution's `groups`, which ONNX fixes at export time.
"""

from __future__ import annotations

import copy
import hashlib
import json
import tempfile
import types
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fixtalk.checkpoint import replace_dir
from fixtalk.config import ModelConfig
from fixtalk.models.edi import Compressor
from fixtalk.models.emi import F4_GRID
from fixtalk.models.fdm import Motion
from fixtalk.models.fixtalk import FixTalk, SourceState
from fixtalk.models.layers import Blur, Upsample, fir_weight

OPSET = 17  # GridSample needs 16, a native LayerNormalization 17
FORMAT = "fixtalk-onnx/2"  # /2: the renderer draws at manifest["render_size"]
GRAPHS = ("source", "driver", "render")


# --- the source cache as named tensors -------------------------------------------------------------------
def source_names(cfg: ModelConfig) -> list[str]:
    """Output names of source.onnx, in order: every SourceState field the renderer or the Pipeline reads."""
    n = len(cfg.map_resolutions)
    names = ["latent", *[f"map{k}" for k in range(n)], "feature", "src_lip", "src_pose"]
    names += ["src_exp"] if cfg.has_expression else []
    names += ["src_m"] + (["f_pi"] if cfg.use_edi else [])
    return names + [f"eem{k}" for k in _eem_levels(cfg)]


def _eem_levels(cfg: ModelConfig) -> list[int]:
    """Levels whose EEM precomputation is cached (all but f_4's when EDI replaces that map per frame)."""
    if not cfg.has_expression:
        return []
    return [k for k in range(len(cfg.map_resolutions)) if not (cfg.use_edi and k == cfg.f4_index)]


def motion_names(cfg: ModelConfig) -> list[str]:
    return ["lip", "pose"] + (["exp"] if cfg.has_expression else [])


def render_names(cfg: ModelConfig) -> list[str]:
    """What render.onnx is traced with: the driving bank weights, then the source cache (not `feature`, which
    no frame reads); the graph keeps those of them it reads (`graph_inputs`)."""
    cache = [n for n in source_names(cfg) if n != "feature"]
    return motion_names(cfg) + cache + (["image"] if cfg.rgb_warp else [])


def flatten_state(state: SourceState, cfg: ModelConfig) -> dict[str, Tensor]:
    out = {"latent": state.latent, **{f"map{k}": t for k, t in enumerate(state.maps)}, "feature": state.feature,
           "src_lip": state.motion.lip, "src_pose": state.motion.pose, "src_m": state.m}
    if cfg.has_expression:
        assert state.motion.exp is not None
        out["src_exp"] = state.motion.exp
    if cfg.use_edi:
        assert state.f_pi is not None
        out["f_pi"] = state.f_pi
    for k in _eem_levels(cfg):
        assert state.eem is not None and state.eem[k] is not None
        out[f"eem{k}"] = state.eem[k]  # type: ignore[assignment]
    if cfg.rgb_warp:
        assert state.image is not None
        out["image"] = state.image
    return out


def unflatten_state(t: dict[str, Tensor], cfg: ModelConfig) -> SourceState:
    """The inverse of `flatten_state` (`feature` and `image` may be absent where nothing reads them)."""
    n = len(cfg.map_resolutions)
    eem = [t.get(f"eem{k}") for k in range(n)] if cfg.has_expression else None
    motion = Motion(t["src_lip"], t["src_pose"], t.get("src_exp"))
    return SourceState(t["latent"], [t[f"map{k}"] for k in range(n)], t.get("feature", t["latent"]), motion,
                       t["src_m"], t.get("f_pi"), eem, t.get("image"))


# --- traceable wrappers ------------------------------------------------------------------------------------
class SourceGraph(nn.Module):
    def __init__(self, model: FixTalk) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        flat = flatten_state(self.model.prepare_source(image), self.model.cfg)
        return tuple(flat[n] for n in source_names(self.model.cfg))


class DriverGraph(nn.Module):
    def __init__(self, model: FixTalk) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: Tensor) -> Tensor:
        return self.model.driving_features(frames)


class RenderGraph(nn.Module):
    def __init__(self, model: FixTalk) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: Tensor) -> Tensor:
        cfg = self.model.cfg
        named = dict(zip(render_names(cfg), inputs))
        motion = Motion(named["lip"], named["pose"], named.get("exp"))
        return self.model.render(unflatten_state(named, cfg), motion)


def _fir_static(self: Blur | Upsample, x: Tensor) -> Tensor:
    """`upfirdn2d` of Blur / Upsample with channels and size as Python ints (fixed by the config): the exporter
    needs the depthwise kernel's shape and the map sizes downstream (adaptive pooling); the batch stays free."""
    c, h, w = (int(v) for v in x.shape[1:])
    up = getattr(self, "factor", 1)
    if up > 1:
        x = F.pad(x.reshape(-1, c, h, 1, w, 1), (0, up - 1, 0, 0, 0, up - 1)).reshape(-1, c, h * up, w * up)
    p0, p1 = self.pad
    return F.conv2d(F.pad(x, (p0, p1, p0, p1)), fir_weight(self.kernel, c, x.dtype), groups=c)


def _compress_static(self: Compressor, f4: Tensor) -> Tensor:
    """Compressor.forward with the adaptive pool written as a plain one (f_4 is always 32 x 32, a multiple of the
    grid): the exporter's adaptive pooling needs the input size, which shape inference loses after padding."""
    local = F.avg_pool2d(f4, F4_GRID // self.grid).flatten(2)
    tokens = torch.cat([local, f4.mean(dim=(2, 3)).unsqueeze(2)], dim=2)
    return tokens @ self.logits.softmax(0)


def exportable(model: FixTalk) -> FixTalk:
    """A frozen copy that traces with a free batch axis; the original model is left as it is."""
    m = copy.deepcopy(model).float().cpu().eval().requires_grad_(False)
    for mod in m.modules():
        if isinstance(mod, (Blur, Upsample)):
            mod.forward = types.MethodType(_fir_static, mod)  # type: ignore[method-assign]
        elif isinstance(mod, Compressor):
            mod.forward = types.MethodType(_compress_static, mod)  # type: ignore[method-assign]
    with torch.no_grad():
        q = m.fdm.basis().clone()
    # Q as a constant of the trace; pinned because the exporter's switch to eval mode clears FDM's cache.
    m.fdm.basis = lambda: q  # type: ignore[method-assign]
    return m


# --- export --------------------------------------------------------------------------------------------------
def weights_digest(model: nn.Module) -> str:
    """sha256 over the fp32 state dict (names, shapes, values): identifies the weights a graph set holds."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().float().contiguous()
        h.update(f"{name}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def example_inputs(cfg: ModelConfig, batch: int = 2, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(source 1 x 3 x S x S, drivers batch x 3 x S x S) in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    s = cfg.size
    return torch.rand(1, 3, s, s, generator=g) * 2 - 1, torch.rand(batch, 3, s, s, generator=g) * 2 - 1


def _export(module: nn.Module, args: tuple[Tensor, ...], path: Path, inputs: list[str], outputs: list[str],
            batched: set[str]) -> None:
    axes = {n: {0: "batch"} for n in inputs + outputs if n in batched}
    with warnings.catch_warnings():
        # The tracer warns about Python-side shape checks (constant for a given config) and the legacy
        # exporter about its own deprecation; neither concerns the graph written.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=OPSET, do_constant_folding=True, dynamo=False)


def export_graphs(model: FixTalk, out_dir: str | Path, render_size: int | None = None) -> Path:
    """Write source/driver/render .onnx and manifest.json into `out_dir`, atomically (a sibling temporary
    directory renamed at the end, so a reader never sees half a graph set). The renderer draws at
    `render_size` (default `ModelConfig.default_render_size`; ValueError where the model cannot)."""
    cfg = model.cfg
    size = cfg.check_render_size(render_size or cfg.default_render_size)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    m = exportable(model)
    src_img, drv = example_inputs(cfg)
    # The renderer's `image` input is the portrait's crop at the render size (pixel path); its side is fixed.
    image = None if size == cfg.size else F.interpolate(src_img, size=size, mode="bilinear", align_corners=False)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with torch.no_grad():
            state = m.prepare_source(src_img, image)
            flat = flatten_state(state, cfg)
            feat = m.driving_features(drv)
            motion = m.predict_motion(feat, feat, feat)
            _export(SourceGraph(m), (src_img,), tmp / "source.onnx", ["image"], source_names(cfg), set())
            _export(DriverGraph(m), (drv,), tmp / "driver.onnx", ["frames"], ["feature"], {"frames", "feature"})
            names = render_names(cfg)
            args = tuple(getattr(motion, n) if n in motion_names(cfg) else flat[n] for n in names)
            _export(RenderGraph(m), args, tmp / "render.onnx", names, ["frame"],
                    {*motion_names(cfg), "frame"})
        manifest = {"format": FORMAT, "opset": OPSET, "model": cfg.to_dict(), "weights": weights_digest(model),
                    "render_size": size, "torch": torch.__version__, "source_outputs": source_names(cfg),
                    "render_inputs": graph_inputs(tmp / "render.onnx")}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        replace_dir(tmp, out)
    except BaseException:
        for p in tmp.iterdir():
            p.unlink()
        tmp.rmdir()
        raise
    return out


def graph_inputs(path: Path) -> list[str]:
    """A graph's input names: the exporter drops inputs the traced computation never reads (without EDI and
    the pixel path the renderer needs none of the source's own motion)."""
    import onnx

    return [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
