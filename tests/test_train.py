"""fixtalk.train: every stage for 2 steps on a tiny synthetic data set, data access, mouth-swap composites,
bad-data reporting, exact resume after SIGKILL, and 2-process DDP (gloo on CPU) through torchrun.

The data set is synthetic (cartoon faces drawn at the template's landmarks, random mel windows) and written in
the `fixtalk prep` layout, so these tests need neither dlib nor the dev videos; test_prep.py covers prep itself.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fixtalk.checkpoint import load_bundle
from fixtalk.config import EDIConfig, EMIConfig, get_preset
from fixtalk.errors import InputError
from fixtalk.faces import template
from fixtalk.train.clipstore import MANIFEST_FIELDS, write_clip
from fixtalk.train.data import AudioDataset, PairDataset, SwapDataset, mouth_swap, read_clips, read_frames
from fixtalk.train.loop import train
from fixtalk.train.options import TrainOptions, parse_duration

ROOT = Path(__file__).resolve().parents[1]
SIZE, FRAMES = 64, 16
STAGES = ["recon", "mouth-pose", "expression", "fixtalk", "audio2lip", "finetune"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Two shared cores: one intra-op thread is several times faster than two fighting other jobs."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _face(lm: np.ndarray, hue: int) -> np.ndarray:
    img = np.full((SIZE, SIZE, 3), (40 + hue, 90, 60), np.uint8)
    cv2.fillConvexPoly(img, cv2.convexHull(lm[:27].astype(np.int32)), (200, 160 - hue, 130))
    for eye in (lm[36:42], lm[42:48]):
        cv2.fillConvexPoly(img, eye.astype(np.int32), (30, 30, 30))
    cv2.fillPoly(img, [lm[48:60].astype(np.int32)], (150, 40, 50))
    cv2.fillPoly(img, [lm[60:68].astype(np.int32)], (20, 0, 0))
    return img


def make_synthetic_data(root: Path, clips: list[tuple[str, str, str, bool]]) -> Path:
    """(name, identity, emotion, has_audio) -> a `fixtalk prep`-style folder at SIZE px, FRAMES frames each."""
    (root / "clips").mkdir(parents=True)
    rows = []
    rng = np.random.default_rng(0)
    for k, (name, identity, emotion, audio) in enumerate(clips):
        base = template() * SIZE / 256 + rng.normal(0, 1.0, 2)
        lms = np.repeat(base[None], FRAMES, 0).astype(np.float32)
        for t in range(FRAMES):  # the mouth opens and closes, the head shifts a little
            lms[t, 57:60, 1] += 3 * math.sin(t / 2) + 1.5
            lms[t, 65:68, 1] += 3 * math.sin(t / 2) + 1.5
            lms[t] += (t % 4) * 0.5
        write_clip(root / "clips" / f"{name}.mp4", (_face(lm, 25 * k) for lm in lms), SIZE, 18)
        lms[3] = np.nan  # one frame without a face, as prep writes it
        mel = rng.normal(0, 2, (FRAMES if audio else 0, 1, 80, 16)).clip(-4, 4).astype(np.float16)
        np.savez(root / "clips" / f"{name}.npz", landmarks=lms, mel=mel, fps=np.int32(25), size=np.int32(SIZE),
                 start=np.int32(0), transforms=np.tile(np.eye(2, 3, dtype=np.float32), (FRAMES, 1, 1)))
        rows.append({"clip": name, "identity": identity, "emotion": emotion, "frames": FRAMES, "split": "train",
                     "has_audio": int(audio), "source": f"synthetic/{name}.mp4"})
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
        w.writeheader()
        w.writerows(rows)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_data(tmp_path_factory.mktemp("data"), [
        ("p1_neutral", "p1", "neutral", False), ("p1_angry", "p1", "angry", True),
        ("p2_talk", "p2", "", True), ("p3_talk", "p3", "happy", True)])


def write_tiny_cfg(folder: Path) -> Path:
    """fixtalk-small shrunk to 64 px and a few hundred thousand parameters (EMI, EDI and EEM all present)."""
    cfg = get_preset("fixtalk-small").replace(
        name="tiny", size=SIZE, style_dim=64, max_channels=32, channel_base=1024, eem_hidden=16,
        emi=EMIConfig(layers=1, heads=2, queries=4, ffn_mult=1),
        edi=EDIConfig(slots=32, decompress_channels=16, heads=2, ffn_mult=1))
    path = folder / "tiny.json"
    path.write_text(cfg.to_json())
    return path


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cfg(tmp_path_factory.mktemp("cfg"))


def _opts(stage: str, data: Path, out: Path, cfg: Path, **kw: object) -> TrainOptions:
    base: dict = dict(stage=stage, data=str(data), out=str(out), preset=str(cfg), max_steps=2, batch=2, workers=0,
                      save_every=1, log_every=1, sample_every=2)
    return TrainOptions(**{**base, **kw})


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fixtalk.cli", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


# ----------------------------------------------------------------------------------------------- data

def test_read_frames_random_access(tmp_path: Path) -> None:
    frames = [np.full((32, 32, 3), 8 * k, np.uint8) for k in range(30)]
    write_clip(tmp_path / "c.mp4", iter(frames), 32, 10)
    idx = [29, 3, 17, 18, 0, 17]
    got = read_frames(tmp_path / "c.mp4", idx)
    assert [int(round(g.mean() / 8)) for g in got] == idx


def test_mouth_swap_pastes_the_mouth_box_only() -> None:
    lm = template() * SIZE / 256
    x, y = _face(lm, 0), _face(lm + [2.0, 1.0], 100)
    out = mouth_swap(x, lm, y, lm + [2.0, 1.0])
    lo = np.floor(lm[48:68].min(0) - 5 * SIZE / 256).astype(int)
    hi = np.ceil(lm[48:68].max(0) + 5 * SIZE / 256).astype(int)
    box = np.zeros((SIZE, SIZE), bool)
    box[lo[1]:hi[1], lo[0]:hi[0]] = True
    assert (out[~box] == x[~box]).all()
    # Y's anchors are X's shifted by (2, 1): the warp undoes the shift, so the box shows Y's colours in place.
    assert np.abs(out[box].astype(int) - np.roll(y, (-1, -2), (0, 1))[box].astype(int)).mean() < 6
    assert np.abs(out[box].astype(int) - x[box].astype(int)).mean() > 5


def test_datasets_items(data: Path) -> None:
    clips, problems = read_clips(data)
    assert len(clips) == 4 and problems == []
    pair = PairDataset(clips, SIZE, min_length=10)
    assert len(pair) == 10
    item = pair[11]  # epoch 1, index 1 (p1_angry: its source comes from p1's neutral clip)
    assert item["source"].shape == item["driver"].shape == (3, SIZE, SIZE) and item["bad"] == ""
    assert torch.equal(pair[11]["driver"], item["driver"])  # deterministic per (epoch, index)
    swap = SwapDataset(clips, SIZE)[2]
    assert set(swap) == {"a_id", "a", "b_id", "b", "a_bm", "b_am", "bad"}
    audio = AudioDataset(clips, SIZE)
    assert len(audio.clips) == 3  # the clip without audio is not used
    with pytest.raises(RuntimeError, match="lip targets"):
        audio[0]
    audio.targets = {c.name: np.random.default_rng(0).standard_normal((c.frames, 20)).astype(np.float32)
                     for c in audio.clips}
    a = audio[0]
    assert a["frames"].shape == (5, 3, SIZE, SIZE) and a["mel"].shape == (5, 1, 80, 16)
    assert a["mel"].dtype == torch.float32 and a["landmarks"].shape == (5, 68, 2)
    assert a["lip"].shape == (5, 20) and a["lip_mean"].shape == (20,)


def test_parse_duration() -> None:
    assert parse_duration("2h") == 7200 and parse_duration("1h30m") == 5400 and parse_duration("45") == 45
    with pytest.raises(InputError):
        parse_duration("two hours")


# ----------------------------------------------------------------------------------------------- stages

@pytest.mark.parametrize("stage", STAGES)
def test_stage_two_steps(stage: str, data: Path, tiny_cfg: Path, tmp_path: Path) -> None:
    run = tmp_path / stage
    assert train(_opts(stage, data, run, tiny_cfg)) == 0
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 2 and (ck["d"] is None) == (stage == "audio2lip")
    steps = [r for r in _log(run) if "elapsed" in r and "event" not in r]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        losses = {k: v for k, v in r.items() if k.startswith("loss/")}
        assert "loss/total" in losses and all(math.isfinite(v) for v in losses.values()), losses
    expected = {"recon": "loss/dis", "mouth-pose": "loss/latent_consistency", "expression": "loss/gan_d",
                "fixtalk": "loss/align", "audio2lip": "loss/audio_smooth", "finetune": "loss/perceptual"}[stage]
    assert expected in steps[0]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["stage"] == stage and cfg["params"]["trainable"] > 0
    bundle = load_bundle(run / "final")
    assert (bundle.audio2lip is not None) == (stage == "audio2lip")
    # per-emotion mean expression weights of the labelled clips, recomputed by every stage that moves the heads
    presets = {"neutral", "angry", "happy"} if stage not in ("audio2lip", "finetune") else set()
    assert set(bundle.expression_presets) == presets
    if presets:  # relative_to_speaker: each clip's change from its speaker's neutral clip (else speaker mean)
        p = bundle.expression_presets
        assert not p["neutral"].any() and not p["happy"].any()  # p1's neutral itself; p3 has one clip
        assert np.abs(p["angry"]).max() > 1e-4  # p1's angry clip minus p1's neutral one
    assert list((run / "samples").glob("step_*.png"))


def test_frozen_parts_do_not_move(data: Path, tiny_cfg: Path, tmp_path: Path) -> None:
    """expression stage: only ELN, the expression bank and EEM change (docs/architecture.md 5, stage 3)."""
    first = tmp_path / "a"
    train(_opts("recon", data, first, tiny_cfg, max_steps=1))
    run = tmp_path / "b"
    train(_opts("expression", data, run, tiny_cfg, init=str(first / "final")))
    before, after = load_bundle(first / "final").model.state_dict(), load_bundle(run / "final").model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith(("fdm.exp_fc.", "fdm.direction_exp.", "dec.fineadainresblock.")) for k in moved)


def test_syncnet_loss_with_weights(data: Path, tiny_cfg: Path, tmp_path: Path) -> None:
    from fixtalk.train.syncnet import SyncNetColor

    weights = tmp_path / "lipsync_expert.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in SyncNetColor().state_dict().items()}}, weights)
    run = tmp_path / "run"
    assert train(_opts("audio2lip", data, run, tiny_cfg, max_steps=1, syncnet=str(weights))) == 0
    assert math.isfinite(_log(run)[1]["loss/sync"])


def test_bad_data_is_reported_and_skipped(data: Path, tiny_cfg: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    bad = make_synthetic_data(tmp_path / "bad", [("ok1", "a", "", True), ("ok2", "b", "", True),
                                                 ("broken", "c", "", True), ("gone", "d", "", True)])
    (bad / "clips" / "broken.mp4").write_bytes(b"\x00not a video" * 100)
    (bad / "clips" / "gone.npz").unlink()
    run = tmp_path / "run"
    assert train(_opts("recon", bad, run, tiny_cfg, max_steps=4)) == 0
    err = capsys.readouterr().err
    assert "skipping clip gone: missing gone.npz" in err
    assert "skipped bad clip broken" in err
    events = [r for r in _log(run) if r.get("event") == "bad_clip"]
    assert events and "broken" in events[0]["detail"]


def test_resume_refuses_other_options_and_dry_run_writes_nothing(data: Path, tiny_cfg: Path,
                                                                 tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(_opts("finetune", data, run, tiny_cfg, max_steps=1))
    with pytest.raises(InputError, match="batch=2"):
        train(_opts("finetune", data, run, tiny_cfg, max_steps=2, batch=3))
    assert train(_opts("finetune", data, run, tiny_cfg, max_steps=2)) == 0  # more steps: allowed
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 2
    dry = tmp_path / "dry"
    assert train(_opts("fixtalk", data, dry, tiny_cfg), dry_run=True) == 0
    assert not dry.exists()
    with pytest.raises(InputError, match="EMI and EDI"):
        train(_opts("fixtalk", data, dry, tiny_cfg, preset="edtalk-256-lip-pose", size=SIZE), dry_run=True)


# ----------------------------------------------------------------------------------------------- processes

@pytest.mark.slow
def test_sigkill_then_rerun_resumes_exactly(data: Path, tiny_cfg: Path, tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    train(_opts("fixtalk", data, ref, tiny_cfg, max_steps=6, save_every=2))
    run = tmp_path / "run"
    cmd = _cli("train", "--stage", "fixtalk", "--data", str(data), "--out", str(run), "--preset", str(tiny_cfg),
               "--max-steps", "6", "--batch", "2", "--workers", "0", "--save-every", "2", "--log-every", "1")
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (run / "checkpoint.pt").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint before the run ended"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = torch.load(run / "checkpoint.pt", weights_only=True)["step"]
    assert 2 <= saved < 6
    out = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"resuming {run / 'checkpoint.pt'} at step {saved}" in out.stdout
    assert [r["step"] for r in _log(run) if r.get("event") == "resume"] == [saved]
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 6
    # Same weights, optimiser, RNG and data order: the resumed steps equal the uninterrupted run's.
    resumed = {r["step"]: r["loss/total"] for r in _log(run) if "loss/total" in r}
    reference = {r["step"]: r["loss/total"] for r in _log(ref) if "loss/total" in r}
    for step in range(saved + 1, 7):
        assert resumed[step] == pytest.approx(reference[step], rel=1e-5), step


@pytest.mark.slow
def test_torchrun_two_processes_gloo(data: Path, tiny_cfg: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "fixtalk.cli", "train", "--stage", "mouth-pose", "--data", str(data), "--out", str(run),
           "--preset", str(tiny_cfg), "--max-steps", "2", "--batch", "2", "--workers", "0", "--save-every", "1"]
    out = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    text = out.stdout + out.stderr
    sums = {r: text.split(f"rank {r}/2 finished at step 2 (parameter checksum ")[1].split(")")[0] for r in (0, 1)}
    assert sums[0] == sums[1]  # DDP kept both replicas identical
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 2 and len(ck["rng"]) == 2  # written by rank 0, RNG gathered from both ranks
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    assert (run / "final" / "model.safetensors").is_file()


def test_presets_prefer_mead_clips(tmp_path: Path) -> None:
    """docs/architecture.md 6.3: presets are the per-emotion means over MEAD clips when the data has any."""
    from fixtalk.train.clipstore import Clip
    from fixtalk.train.setup import preset_clips

    def clip(name: str, emotion: str) -> Clip:
        return Clip(name, "x", emotion, 50, False, tmp_path / f"{name}.mp4", tmp_path / f"{name}.npz")

    mead = [clip("dreamtalk__M030_front_happy_level3_001", "happy"), clip("eamm__W009_sad_3_001", "sad")]
    other = [clip("styletalk__happyenglish_clip1", "happy"), clip("vlog", "expressive"), clip("plain", "")]
    assert preset_clips(mead + other) == mead
    assert preset_clips(other) == other[:1]  # no MEAD: every clip with one of the eight labels


def test_loss_weight_option() -> None:
    from fixtalk.train.options import parse_loss_weights

    w = parse_loss_weights(["gan=0", "perceptual=0.5"])
    assert (w.gan, w.perceptual, w.rec) == (0.0, 0.5, 1.0)
    for bad in ("gan", "nope=1", "gan=x"):
        with pytest.raises(InputError, match="--loss-weight"):
            parse_loss_weights([bad])


def test_gan_weight_zero_drops_the_discriminator(data: Path, tiny_cfg: Path, tmp_path: Path) -> None:
    from fixtalk.train.options import parse_loss_weights

    run = tmp_path / "no_gan"
    opts = _opts("recon", data, run, tiny_cfg)
    assert train(dataclasses.replace(opts, weights=parse_loss_weights(["gan=0"]))) == 0
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ck["d"] is None and ck["opt_d"] is None
    assert not any("gan" in k for r in _log(run) for k in r)


def test_audio2lip_targets_cached_and_centred(data: Path, tiny_cfg: Path, tmp_path: Path) -> None:
    """train/lip_targets.py: the frozen generator's mouth weights of every frame, computed once per run and
    re-used on resume; a relative Audio2Lip (the preset's default) learns them minus the clip's mean."""
    from fixtalk.train import lip_targets
    from fixtalk.train.clipstore import read_clips
    from fixtalk.train.data import AudioDataset

    run = tmp_path / "a2l"
    opts = _opts("audio2lip", data, run, tiny_cfg, image_losses=False)
    assert train(opts) == 0
    cache = run / lip_targets.FILE
    stamp = cache.stat().st_mtime_ns
    model = load_bundle(run / "final").model
    clips = [c for c in read_clips(data)[0] if c.has_audio]
    with np.load(cache) as z:
        got = {c.name: z[c.name] for c in clips}
    want = lip_targets.compute(model, clips, SIZE, torch.device("cpu"), say=False)
    for c in clips:  # what inference predicts for each frame, frame for frame
        np.testing.assert_allclose(got[c.name], want[c.name], atol=1e-5)
        assert got[c.name].shape == (c.frames, model.cfg.lip_dim)
    assert train(dataclasses.replace(opts, max_steps=3)) == 0
    assert cache.stat().st_mtime_ns == stamp  # resumed: read back, not recomputed
    other = load_bundle(run / "final").model
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    assert lip_targets.fingerprint(other) != lip_targets.fingerprint(model)  # another generator: recomputed
    ds = AudioDataset(clips, SIZE, frames=False)
    ds.targets = got
    item = ds[0]
    assert set(item) >= {"mel", "lip", "lip_mean"} and "frames" not in item
    first = item["lip"][0].numpy()
    owner = next(c.name for c in clips if np.isclose(got[c.name], first).all(1).any())  # the item's clip
    np.testing.assert_allclose(item["lip_mean"].numpy(), got[owner].mean(0), atol=1e-6)
