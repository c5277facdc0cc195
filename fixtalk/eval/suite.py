"""The evaluation protocols of FixTalk Sec. 5 run clip by clip, for every row (copy baseline, checkpoints).

Per clip (one unit of work; `--shard i/n` takes every n-th clip, so ranks under torchrun split the set):

* self-driven reconstruction (Sec. 5.1, Tab. 1): source = the clip's first frame (aligned crop), driver = the
  clip, each output frame t >= 1 compared with the clip's own aligned frame t. Frame 0 is left out of every
  score: it *is* the source, so it would reward copying (and give an infinite PSNR).
* cross-identity driving: each of `cross_pairs` portraits of another identity driven by the clip; identity
  kept (CSIM to the portrait) and taken (CSIM to the driver frame), and the leakage score
      leakage = mean_t [CSIM(result_t, driver_t) - CSIM(source, driver_t)]
  i.e. how much closer to the driver's face the result is than the source itself was (0 for a perfect
  identity keeper, and exactly 0 for the copy baseline), plus driver_closer = the share of frames whose
  result is closer to the driver than to the source (the dlib descriptor's cross-person similarity is
  high, so this binary rate only fires on strong leakage).
* audio-driven (Tab. 3), on clips with audio: mouth from Audio2Lip, pose and expression from the clip;
  PSNR/SSIM/M-LMD/F-LMD against the real frames, Sync (LSE-C = Sync_conf, LSE-D) when SyncNet weights are
  given.
* LIA checkpoints (one motion) are driven relative to the clip's first frame, as LIA's demo does
  (`CheckpointRow`); they have no Audio2Lip (audio-driven: a note says why) and no presets.
* emotion (Tab. 3 Acc_emo, FER proxy) on emotion-labelled clips: the identity's neutral clip's first frame
  (when one is in the set; else the clip's own) driven by the clip with the expression from the
  checkpoint's preset of the clip's emotion (or, without presets, from the clip); the FER probabilities
  averaged over the frames give one prediction per clip.
A "real" reference row scores the ground-truth frames with the metrics that do not compare them with
themselves (CSIM to the source, NIQE, CPBD, Sync, Acc_emo).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fixtalk.config import SAMPLES_PER_FRAME
from fixtalk.errors import InputError
from fixtalk.eval import data as D
from fixtalk.eval.align import load_clip, load_portrait
from fixtalk.eval.methods import CheckpointRow, CopySource, Row, RowSpec, parse_checkpoints
from fixtalk.eval.scoring import Analysis, Scorer, cosines, lmd_scores, pixel_scores, stat
from fixtalk.models.fdm import Motion

log = logging.getLogger(__name__)
REAL = "real"
SELF_WANT = {"csim", "landmarks", "niqe", "cpbd", "fid"}


@dataclass
class EvalOptions:
    """Everything that decides the numbers (stored in results.json)."""

    videos: str
    checkpoints: list[str] = field(default_factory=list)   # [NAME=]PATH each
    portraits: str | None = None     # cross-identity sources; default: the other clips' first frames
    audio: str | None = None         # folder of audio files named like the clips
    manifest: str | None = None      # dataset manifest.csv (default: next to --videos)
    max_clips: int | None = None
    max_frames: int | None = None    # per clip, from its start (25 fps)
    eval_size: int | None = None     # default: the largest checkpoint size, at least 256
    cross_pairs: int = 2             # portraits per clip in the cross-identity protocol
    identities: list[str] | None = None      # test identities (all clips when None)
    split_manifest: str | None = None
    inception: str | None = None
    syncnet: str | None = None
    device: str = "auto"
    dtype: str = "fp32"
    batch: int = 8
    tune: int = 0                    # > 0: every checkpoint also as a row tuned on each source (fixtalk.tune)
    render_size: int | None = None   # Pipeline.render_size; above the model's size: render at the eval size


@dataclass
class Plan:
    """The resolved work: every selected clip (all shards agree on it), portraits and pairings."""

    clips: list[D.EvalClip]
    pairs: dict[str, list[D.Portrait]]
    neutral: dict[str, D.EvalClip]
    rows: list[Row]
    eval_size: int


def make_plan(opts: EvalOptions) -> Plan:
    ids = opts.identities
    if opts.split_manifest:
        if ids:
            raise InputError(None, "give either --identities or --split-manifest, not both")
        ids = D.read_split(opts.split_manifest)
    clips = D.select(D.discover_clips(opts.videos, opts.audio, opts.manifest), ids, opts.max_clips)
    portraits = (D.discover_portraits(opts.portraits, opts.manifest) if opts.portraits
                 else D.first_frame_portraits(clips))
    specs = parse_checkpoints(opts.checkpoints)
    rows: list[Row] = [CopySource()]
    rows += [CheckpointRow(s, opts.device, opts.dtype, opts.batch, render_size=opts.render_size) for s in specs]
    if opts.tune:
        rows += [CheckpointRow(RowSpec(f"{s.name}+tune{opts.tune}", s.path), opts.device, opts.dtype, opts.batch,
                               opts.tune, opts.render_size) for s in specs]
    sizes = [r.size for r in rows if r.size is not None]
    eval_size = opts.eval_size or max([256, *sizes])
    return Plan(clips, D.cross_pairs(clips, portraits, opts.cross_pairs), D.neutral_sources(clips), rows,
                eval_size)


@dataclass
class ClipResult:
    """One clip's scores: JSON-able `record` plus the FID features of the self-driven frames per row."""

    record: dict[str, Any]
    features: dict[str, np.ndarray]


class ClipEvaluator:
    """Runs the four protocols on one clip at a time; portraits and metric models are loaded once."""

    def __init__(self, plan: Plan, opts: EvalOptions, scorer: Scorer) -> None:
        from fixtalk.faces import FaceDetector

        self.plan, self.opts, self.scorer = plan, opts, scorer
        self.detector = FaceDetector()
        self.sizes = {plan.eval_size} | {r.size for r in plan.rows if r.size is not None}
        self._portraits: dict[D.Portrait, tuple[dict[int, np.ndarray], np.ndarray | None]] = {}

    def portrait(self, p: D.Portrait) -> tuple[dict[int, np.ndarray], np.ndarray | None]:
        """(crops by size, CSIM descriptor) of a portrait, loaded once per run."""
        if p not in self._portraits:
            crops = load_portrait(p, self.sizes, self.detector)
            a = self.scorer.analyse([crops[self.plan.eval_size]], {"csim"})
            self._portraits[p] = (crops, a.emb[0] if a.emb else None)
        return self._portraits[p]

    def __call__(self, clip: D.EvalClip) -> ClipResult:
        E = self.plan.eval_size
        ac = load_clip(clip, self.sizes, self.opts.max_frames, self.detector)
        gt, T = ac.crops[E], ac.length
        want = SELF_WANT | ({"emotion"} if clip.emotion else set())
        real = self.scorer.analyse(list(gt), want)            # all T frames; scores use 1..T-1
        src_emb = real.emb[0] if real.emb else None
        source = {s: c[0] for s, c in ac.crops.items()}
        rec: dict[str, Any] = {"clip": clip.name, "identity": clip.identity, "emotion": clip.emotion,
                               "audio": clip.audio is not None, "frames": T,
                               "frames_without_face": ac.frames_without_face,
                               "scores": {p: {} for p in ("self_driven", "cross_identity", "audio_driven")},
                               "emotion_pred": {}, "notes": {}}
        feats: dict[str, np.ndarray] = {}
        if real.feats is not None:
            feats[REAL] = real.feats[1:]
        rec["scores"]["self_driven"][REAL] = {
            "csim": stat(cosines(real.emb[1:], src_emb)) if real.emb else None,
            "niqe": stat(real.niqe[1:]) if real.niqe else None,
            "cpbd": stat(real.cpbd[1:]) if real.cpbd else None}
        wav = self._audio(clip, rec)
        pairs = self._pairs(clip, rec)
        emo_source = self._emotion_source(clip, source, rec)
        if clip.emotion and real.emo is not None:
            rec["emotion_pred"][REAL] = {"pred": _predict(real.emo[1:]), "mode": "real frames"}
        if wav is not None:
            L = min(T, int(len(wav) // SAMPLES_PER_FRAME))
            sync = self.scorer.sync(list(gt[:L]), real.lm[:L] if real.lm is not None else None, wav)
            rec["scores"]["audio_driven"][REAL] = _sync_stats(sync)
        for row in self.plan.rows:
            row.reset()
            motion = row.motion(ac.crops[row.size]) if row.size is not None else None
            self._self_driven(row, source, motion, gt, real, src_emb, rec, feats)
            self._cross(row, pairs, motion, T, real, rec)
            if wav is not None:
                self._audio_driven(row, clip, source, motion, gt, real, wav, rec)
            if clip.emotion and emo_source is not None:
                self._emotion(row, clip.emotion, emo_source, motion, T, rec)
        return ClipResult(rec, feats)

    # -- protocols ------------------------------------------------------------------------------------------
    def _self_driven(self, row: Row, source: dict[int, np.ndarray], motion: Motion | None, gt: np.ndarray,
                     real: Analysis, src_emb: np.ndarray | None, rec: dict, feats: dict) -> None:
        gen = row.render(source, _frames(motion, 1), len(gt) - 1, self.plan.eval_size)
        a = self.scorer.analyse(gen, SELF_WANT)
        real_tail = Analysis(lm=real.lm[1:] if real.lm is not None else None)
        scores: dict[str, Any] = pixel_scores(gen, gt[1:])
        scores |= lmd_scores(a, real_tail)
        scores["csim"] = stat(cosines(a.emb, src_emb)) if a.emb is not None else None
        scores["niqe"] = stat(a.niqe) if a.niqe is not None else None
        scores["cpbd"] = stat(a.cpbd) if a.cpbd is not None else None
        if a.feats is not None:
            feats[row.name] = a.feats
        rec["scores"]["self_driven"][row.name] = scores

    def _cross(self, row: Row, pairs: list[tuple[D.Portrait, dict[int, np.ndarray], np.ndarray | None]],
               motion: Motion | None, T: int, real: Analysis, rec: dict) -> None:
        if not pairs:
            return
        keep: list[float] = []
        take: list[float] = []
        leak: list[float] = []
        closer: list[float] = []
        drivers = real.emb[1:] if real.emb is not None else None
        for _, crops, p_emb in pairs:
            gen = row.render(crops, _frames(motion, 1), T - 1, self.plan.eval_size)
            a = self.scorer.analyse(gen, {"csim"})
            if a.emb is None or drivers is None:
                continue
            k, t = cosines(a.emb, p_emb), cosines(a.emb, drivers)
            base = cosines(drivers, p_emb)
            keep += k
            take += t
            leak += [x - b for x, b in zip(t, base)]
            closer += [float(x > y) if math.isfinite(x) and math.isfinite(y) else math.nan for x, y in zip(t, k)]
        ok = real.emb is not None and "csim" not in self.scorer.reasons
        rec["scores"]["cross_identity"][row.name] = {
            "csim_source": stat(keep) if ok else None, "csim_driver": stat(take) if ok else None,
            "leakage": stat(leak) if ok else None, "driver_closer": stat(closer) if ok else None}

    def _audio_driven(self, row: Row, clip: D.EvalClip, source: dict[int, np.ndarray], motion: Motion | None,
                      gt: np.ndarray, real: Analysis, wav: np.ndarray, rec: dict) -> None:
        L = min(len(gt), int(len(wav) // SAMPLES_PER_FRAME))
        if isinstance(row, CheckpointRow):
            assert motion is not None and clip.audio is not None
            lip = row.audio_lip(clip.audio, motion.lip[:1])  # the source is the clip's frame 0
            if lip is None:
                rec["notes"].setdefault("audio_driven", {})[row.name] = row.audio_note
                return
            L = min(L, len(lip))
            motion = Motion(lip[:L], motion.pose[:L], None if motion.exp is None else motion.exp[:L])
        if L < 2:
            return
        # SyncNet reads the whole track from frame 0; the other scores leave the source frame out.
        start = 0 if self.scorer.has_sync else 1
        gen = row.render(source, _frames(motion, start, L), L - start, self.plan.eval_size)
        a = self.scorer.analyse(gen, {"landmarks"})
        tail = gen[1 - start:]
        scores: dict[str, Any] = pixel_scores(tail, gt[1:L])
        scores |= lmd_scores(Analysis(lm=None if a.lm is None else a.lm[1 - start:]),
                             Analysis(lm=None if real.lm is None else real.lm[1:L]))
        scores |= _sync_stats(self.scorer.sync(gen, a.lm, wav) if start == 0 else None)
        rec["scores"]["audio_driven"][row.name] = scores

    def _emotion(self, row: Row, emotion: str, source: dict[int, np.ndarray], motion: Motion | None, T: int,
                 rec: dict) -> None:
        mode = "copy"
        if motion is not None:
            assert row.size is not None  # a row with bank weights renders from a crop of its size
            own = row.motion(source[row.size][None])  # the emotion source's own weights
            preset = row.expression(emotion, None if own is None else own.exp)
            mode = "preset" if preset is not None else "video"
            if preset is not None:
                motion = Motion(motion.lip, motion.pose, preset)
        gen = row.render(source, _frames(motion, 1), T - 1, self.plan.eval_size)
        a = self.scorer.analyse(gen, {"emotion"})
        if a.emo is not None:
            rec["emotion_pred"][row.name] = {"pred": _predict(a.emo), "mode": mode}

    # -- inputs ---------------------------------------------------------------------------------------------
    def _audio(self, clip: D.EvalClip, rec: dict) -> np.ndarray | None:
        from fixtalk.audio import load_audio

        if clip.audio is None:
            return None
        try:
            return load_audio(clip.audio)
        except InputError as err:
            rec["notes"]["audio"] = str(err)
            return None

    def _pairs(self, clip: D.EvalClip, rec: dict) -> list[tuple[D.Portrait, dict[int, np.ndarray], Any]]:
        out = []
        for p in self.plan.pairs.get(clip.name, []):
            try:
                crops, emb = self.portrait(p)
            except InputError as err:
                rec["notes"].setdefault("portraits", []).append(str(err))
                continue
            out.append((p, crops, emb))
        rec["pairs"] = [p.name for p, _, _ in out]
        return out

    def _emotion_source(self, clip: D.EvalClip, own: dict[int, np.ndarray], rec: dict) -> dict[int, np.ndarray]:
        neutral = self.plan.neutral.get(clip.identity)
        if neutral is None or neutral.name == clip.name or not clip.emotion:
            rec["emotion_source"] = "own first frame"
            return own
        try:
            crops, _ = self.portrait(D.Portrait(neutral.name, neutral.path, neutral.identity, is_video=True))
        except InputError:
            rec["emotion_source"] = "own first frame"
            return own
        rec["emotion_source"] = f"first frame of {neutral.name}"
        return crops


def _frames(motion: Motion | None, start: int, stop: int | None = None) -> Motion | None:
    """Frames start..stop-1 of per-frame bank weights (a 1-row factor, a held preset, stays as it is)."""
    if motion is None:
        return None
    cut = lambda w: w if w is None or len(w) == 1 else w[start:stop]  # noqa: E731
    return Motion(cut(motion.lip), cut(motion.pose), cut(motion.exp))


def _predict(probs: np.ndarray) -> str | None:
    """Per-video FER class: argmax of the probabilities averaged over frames with a face."""
    from fixtalk.metrics.emotion import CLASSES

    ok = np.isfinite(probs).all(axis=1)
    return CLASSES[int(np.argmax(probs[ok].mean(axis=0)))] if ok.any() else None


def _sync_stats(sync: list[float] | None) -> dict[str, Any]:
    """Sync scores are per clip (a whole-track measure): each clip counts once in the mean."""
    if sync is None:
        return {"lse_c": None, "lse_d": None}
    return {"lse_c": stat([sync[0]]), "lse_d": stat([sync[1]])}


def evaluate_clips(plan: Plan, opts: EvalOptions, clips: list[D.EvalClip], scorer: Scorer,
                   progress: bool = True) -> tuple[list[ClipResult], list[dict[str, str]]]:
    """Evaluate `clips` (one shard of plan.clips); clips that cannot be read are skipped with a reason."""
    from tqdm import tqdm

    run = ClipEvaluator(plan, opts, scorer)
    done: list[ClipResult] = []
    skipped: list[dict[str, str]] = []
    bar = tqdm(clips, desc="eval", unit="clip", disable=not progress)
    for clip in bar:
        bar.set_postfix_str(clip.name[-40:])
        try:
            with torch.inference_mode():
                done.append(run(clip))
        except InputError as err:                  # unreadable clip, no face: expected in real data
            skipped.append({"clip": clip.name, "reason": str(err)})
        except Exception as err:                   # anything else: a bug, reported, the run goes on
            log.exception("%s: evaluation failed", clip.name)
            skipped.append({"clip": clip.name, "reason": f"error: {type(err).__name__}: {err}"})
    bar.close()
    return done, skipped
