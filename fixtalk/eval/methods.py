"""The rows of the evaluation: the copy-the-source baseline and one row per checkpoint.

Both draw frames through the same call, `render(source, motion, n)`, where `source` holds the aligned
source crop at every size and `motion` the per-frame bank weights (mouth, pose, expression; a 1-row
factor is held). Checkpoints render through `Pipeline.frames` (no paste-back: the metrics compare aligned
crops); a model whose input size differs from the evaluation size is resized to it (area filter when
shrinking, bicubic when enlarging) so that every row is scored on the same pixels. A model with the pixel path
(rgb_warp) renders at the evaluation size itself, warping the source crop of that size, as the Pipeline does
for users (`Pipeline.render_size`; with --render-size equal to the model's size it is resized like the rest).

A LIA checkpoint (one motion; `lia-*` presets) and one with the pixel path (the shipped model) are driven
relative to the driving clip's first frame (`Motion.relative`: alpha_t - alpha_0 + alpha_source), as `Pipeline`
does by default. A LIA checkpoint has no Audio2Lip and no expression presets, so the audio-driven protocol
notes why it is missing and the emotion protocol drives it with the clip ("video" mode).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fixtalk.models.fdm import Motion


@dataclass(frozen=True)
class RowSpec:
    """`--checkpoint [NAME=]PATH` parsed."""

    name: str
    path: str


def parse_checkpoints(specs: list[str]) -> list[RowSpec]:
    """NAME=PATH or PATH (the row is then named after the folder); clashing names get #2, #3, ..."""
    out: list[RowSpec] = []
    taken = {"copy-source", "real"}
    for spec in specs:
        m = re.fullmatch(r"([A-Za-z0-9_.+\-]+)=(.+)", spec)
        name, path = (m.group(1), m.group(2)) if m and not Path(spec).exists() else (Path(spec).name or spec, spec)
        base, k = name, 2
        while name in taken:
            name, k = f"{base}#{k}", k + 1
        taken.add(name)
        out.append(RowSpec(name, path))
    return out


def fit(face: np.ndarray, size: int) -> np.ndarray:
    """An S x S crop at `size` x `size` (unchanged when S == size)."""
    import cv2

    if face.shape[0] == size:
        return face
    interp = cv2.INTER_AREA if face.shape[0] > size else cv2.INTER_CUBIC
    return cv2.resize(face, (size, size), interpolation=interp)


class CopySource:
    """Baseline: the output is the source crop, repeated. Scores what doing nothing achieves."""

    name = "copy-source"
    kind = "baseline"
    size: int | None = None
    has_audio2lip = True                     # it ignores the audio: the row exists for every protocol

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind,
                "what": "output = the aligned source crop repeated (no motion at all)"}

    def reset(self) -> None:
        pass

    def motion(self, crops: np.ndarray) -> Motion | None:
        return None

    def audio_lip(self, audio: str, own: torch.Tensor) -> torch.Tensor | None:
        return None

    def expression(self, emotion: str, own: torch.Tensor | None) -> torch.Tensor | None:
        return None

    def render(self, source: dict[int, np.ndarray], motion: Motion | None, n: int, size: int) -> list[np.ndarray]:
        face = source[size]
        return [face] * n                    # one object: the scorer measures it once


class CheckpointRow:
    """A fixtalk checkpoint driven through the Pipeline."""

    kind = "checkpoint"

    def __init__(self, spec: RowSpec, device: str = "auto", dtype: str = "fp32", batch: int = 8,
                 tune: int = 0, render_size: int | None = None) -> None:
        from fixtalk.checkpoint import load_bundle
        from fixtalk.pipeline import Pipeline
        from fixtalk.runtime import Runtime

        self.name, self.path = spec.name, spec.path
        self.pipe = Pipeline(load_bundle(spec.path), runtime=Runtime(device, dtype), batch_size=batch,
                             progress=False, tune_steps=tune, render_size=render_size)
        self.cfg = self.pipe.cfg
        self.size: int | None = self.cfg.size
        self.has_audio2lip = self.pipe.audio2lip is not None
        self.relative = self.pipe.relative     # LIA: driven relative to the clip's first frame
        self._start: Motion | None = None      # that frame's motion (per clip, from `motion`)
        self._sources: dict[int, Any] = {}     # id(crop) -> PreparedSource (it keeps the crop alive)

    @property
    def renders_at_eval_size(self) -> bool:
        """The pixel path draws above the model's size (Pipeline.render_size), so the row draws at the eval size
        from the source crop of that size instead of being resized."""
        return self.size is not None and self.pipe.render_size > self.size

    def reset(self) -> None:
        """Forget the encoded sources and the clip's first-frame motion (called per clip)."""
        self._sources.clear()
        self._start = None

    @property
    def audio_note(self) -> str:
        """Why the audio-driven protocol has no numbers for this row (when it has no Audio2Lip)."""
        if not self.cfg.decoupled:
            return "a LIA model has one motion and no Audio2Lip: audio cannot drive it"
        return "the checkpoint has no Audio2Lip (add one with `fixtalk convert-edtalk Audio2Lip.pt DIR`)"

    def describe(self) -> dict[str, Any]:
        """What the row is, with the weights' sha256 (from config.json, verified on load) as provenance."""
        import json

        c = self.cfg
        root = self.pipe.bundle.path or Path(self.path)
        files = json.loads((Path(root) / "config.json").read_text()).get("files", {})
        return {"name": self.name, "kind": self.kind, "checkpoint": str(self.path), "sha256": files,
                "preset": c.name, "tune_steps": self.pipe.tune_steps,
                "size": c.size, "renders_at_eval_size": self.renders_at_eval_size, "use_emi": c.use_emi,
                "use_edi": c.use_edi,
                "expression": c.has_expression,
                "motion_net": c.motion_net, "motion_mode": "relative" if self.relative else "absolute",
                "audio2lip": self.has_audio2lip,
                "expression_presets": sorted(self.pipe.bundle.expression_presets)}

    def motion(self, crops: np.ndarray) -> Motion:
        """Bank weights (CPU, T rows per factor) of every frame of T x S x S x 3 driver crops (all three
        factors from the same frame, as the self-driven protocol drives them)."""
        from fixtalk.pipeline import to_tensor

        run, model = self.pipe.runtime.run, self.pipe.model
        parts = []
        for i in range(0, len(crops), self.pipe.batch_size):
            x = torch.cat([to_tensor(c) for c in crops[i:i + self.pipe.batch_size]])
            f = run(model.driving_features, x)
            parts.append(run(model.predict_motion, f, f, f))
        cat = lambda xs: torch.cat([x.float().cpu() for x in xs])  # noqa: E731
        motion = Motion(cat([p.lip for p in parts]), cat([p.pose for p in parts]),
                        cat([p.exp for p in parts]) if parts[0].exp is not None else None)
        first = motion.exp[:1] if motion.exp is not None else None
        self._start = Motion(motion.lip[:1], motion.pose[:1], first)
        return motion

    def audio_lip(self, audio: str, own: torch.Tensor) -> torch.Tensor | None:
        """Mouth weights (T x lip_dim) driven by a speech file for a source whose own are `own` (1 x lip_dim);
        None without an Audio2Lip."""
        from fixtalk.driving import audio_mouth

        return audio_mouth(self.cfg, self.pipe.audio_lip(audio)[0], own) if self.has_audio2lip else None

    def expression(self, emotion: str, own: torch.Tensor | None) -> torch.Tensor | None:
        """The expression weights (1 x exp_dim) of the checkpoint's preset for a MEAD emotion, for a source whose
        own are `own`; None when it has none."""
        from fixtalk.driving import emotion_expression

        preset = self.pipe.bundle.expression_presets.get(emotion)
        if preset is None or not self.cfg.has_expression or own is None:
            return None
        return emotion_expression(self.cfg, torch.from_numpy(np.asarray(preset, np.float32).reshape(1, -1)), own)

    def render(self, source: dict[int, np.ndarray], motion: Motion | None, n: int, size: int) -> list[np.ndarray]:
        from fixtalk.pipeline import Drive, FactorTrack

        assert motion is not None and self.size is not None
        face = source[self.size]
        src = self._sources.get(id(face))
        if src is None or src.crop is not face:
            # With the pixel path the row renders at the evaluation size from the source crop at that size, as
            # the Pipeline renders above the model's size for users (Pipeline.render_size).
            full = source[size] if self.renders_at_eval_size and size > self.size else None
            src = self._sources[id(face)] = self.pipe.prepare_crop(face, full=full)
        if self.relative:
            # The driver's change since the clip's first frame, on the portrait's own weights. In the self-driven,
            # audio-driven and emotion protocols the source is that first frame (or, for emotions, `motion` of the
            # source itself), so the shift is zero there and audio/preset weights pass unchanged; it matters
            # cross-identity.
            assert self._start is not None, "motion() of the clip comes before render()"
            own = src.state.motion
            motion = motion.relative(self._start, Motion(own.lip.float().cpu(), own.pose.float().cpu(),
                                                         None if own.exp is None else own.exp.float().cpu()))
        exp = FactorTrack(motion.exp, "exp") if motion.exp is not None and self.cfg.has_expression else None
        drive = Drive(FactorTrack(motion.lip, "lip"), FactorTrack(motion.pose, "pose"), exp, n)
        return [fit(f, size) for f in self.pipe.frames(src, drive, paste_back=False)]


Row = CopySource | CheckpointRow
