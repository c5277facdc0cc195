"""`fixtalk eval` end to end on two tiny clips (3 frames each) with a random fixtalk-small checkpoint, and the
pieces it is made of (clip metadata, splits, shards, the low-rank FID). The end-to-end run goes through the
CLI as two shards, so sharding and merging are covered by the same (one) evaluation of each clip.

The checkpoint's random weights draw no face, so its face metrics come out as n/a *with a reason*; the
copy-the-source baseline and the ground-truth row give real numbers. Clips are cut from the dev faces
(../shared/data/faces or $FIXTALK_FACES_DIR) into a temporary folder, never into the repository.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import needs_dlib

from fixtalk.eval import data as D
from fixtalk.eval.methods import parse_checkpoints
from fixtalk.eval.report import METRICS, PROTOCOLS
from fixtalk.eval.scoring import fid, stat

FRAMES = 3                        # per clip: frame 0 is the source, frames 1-2 are scored
ROWS = ["real", "copy-source", "ckpt", "ckpt+tune2"]  # --tune 2 adds the tuned row


# -- pieces ------------------------------------------------------------------------------------------------

def test_clip_metadata_from_names() -> None:
    from fixtalk.naming import emotion_from_name, guess_identity, mead_speaker, normalise_emotion

    assert emotion_from_name("dreamtalk__M030_front_angry_level3_001.mp4") == "angry"
    assert emotion_from_name("M003#surprised#level_1#001.mp4") == "surprised"
    assert emotion_from_name("styletalk__Obama_clip1.mp4") is None
    assert guess_identity("dreamtalk__W009_front_sad_level3_001.mp4") == "W009"
    assert guess_identity("WDA_KatieHill_000.mp4") == "WDA_KatieHill"
    assert mead_speaker("mead/M003/front.mp4") == "M003" and mead_speaker("M0030_x") is None
    assert normalise_emotion("surprise") == "surprised" and normalise_emotion("smile") is None


def test_split_files(tmp_path: Path) -> None:
    csv_file = tmp_path / "manifest.csv"
    csv_file.write_text("clip,identity,emotion,frames,split,has_audio,source\n"
                        "a,M030,angry,10,test,0,x\nb,W009,happy,10,train,0,y\nc,M030,sad,10,test,0,z\n")
    assert D.read_split(csv_file) == ["M030"]
    txt = tmp_path / "ids.txt"
    txt.write_text("# test ids\nW009\nM030\n")
    assert D.read_split(txt) == ["W009", "M030"]


def test_pairs_and_shards() -> None:
    clips = [D.EvalClip(f"c{i}", f"c{i}.mp4", ident, None, None) for i, ident in enumerate("AABC")]
    pairs = D.cross_pairs(clips, D.first_frame_portraits(clips), per_clip=2)
    for clip in clips:
        assert len(pairs[clip.name]) == 2
        assert all(p.identity != clip.identity for p in pairs[clip.name])
    parts = [D.shard(clips, i, 3) for i in range(3)]
    assert sorted(c.name for p in parts for c in p) == [c.name for c in clips]
    assert D.parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "x", "1/0"):
        with pytest.raises(Exception, match="--shard"):
            D.parse_shard(bad)


def test_row_names() -> None:
    rows = parse_checkpoints(["runs/full", "no-emi=runs/b", "other/full"])
    assert [r.name for r in rows] == ["full", "no-emi", "full#2"]
    assert rows[1].path == "runs/b"


def test_low_rank_fid_matches_pytorch_fid_formula() -> None:
    from fixtalk.metrics import fid_from_features

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((12, 40)), rng.standard_normal((9, 40)) + 0.5
    assert fid(a, b) == pytest.approx(fid_from_features(a, b), rel=1e-6)
    assert fid(a, a) == pytest.approx(0.0, abs=1e-8)


def test_sync_runs_only_with_user_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No weights: a reason that names --syncnet; random weights in the syncnet_v2 layout: the glue from
    landmarks to 224 px face windows to LSE-C/LSE-D runs on a short (7-frame) clip."""
    from fixtalk.eval.scoring import Scorer
    from fixtalk.metrics import SyncNet

    monkeypatch.delenv("FIXTALK_SYNCNET", raising=False)
    assert not Scorer().has_sync and "--syncnet" in Scorer().reasons["sync"]
    with pytest.raises(Exception, match="--syncnet"):
        Scorer(syncnet=str(tmp_path / "missing.model"))
    torch.manual_seed(0)
    torch.save({k: v for k, v in SyncNet().state_dict().items() if "num_batches_tracked" not in k},
               tmp_path / "syncnet_v2.model")
    scorer = Scorer(syncnet=str(tmp_path / "syncnet_v2.model"))
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (128, 128, 3), dtype=np.uint8) for _ in range(7)]
    grid = np.stack(np.meshgrid(np.linspace(30, 98, 17), np.linspace(40, 110, 4)), -1).reshape(-1, 2)[:68]
    lm = np.repeat(grid[None], 7, axis=0)
    lm[3] = np.nan                                     # a frame without a face holds the nearest box
    scores = scorer.sync(frames, lm, rng.uniform(-0.1, 0.1, 7 * 640).astype(np.float32))
    assert scores is not None and all(math.isfinite(v) for v in scores)
    assert scorer.sync(frames[:5], lm[:5], np.zeros(5 * 640, np.float32)) is None   # < 6 frames


def test_stat_skips_non_finite() -> None:
    assert stat([1.0, math.nan, 3.0, math.inf]) == [4.0, 2, 2]


# -- end to end --------------------------------------------------------------------------------------------

def _cut(src: Path, dst: Path, n: int, audio: np.ndarray | None = None) -> None:
    from fixtalk.io import VideoWriter, open_frames

    reader = open_frames(src)
    with reader:
        frames = [f for _, f in zip(range(n), reader)]
    kw: dict[str, Any] = {} if audio is None else {"audio": audio, "sample_rate": 16000}
    with VideoWriter(dst, 25, **kw) as writer:
        for f in frames:
            writer.write(f)


def _run(argv: list[str]) -> tuple[int, str]:
    from fixtalk.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(argv)
    return rc, out.getvalue()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, faces: Path) -> dict[str, Any]:
    """One evaluation (two shards) of two clips cut from the dev faces, shared by the tests below."""
    from fixtalk.audio import load_audio
    from fixtalk.checkpoint import EMOTIONS, Bundle, save_bundle
    from fixtalk.config import get_preset
    from fixtalk.models.audio2lip import Audio2Lip
    from fixtalk.models.fixtalk import FixTalk

    tmp = tmp_path_factory.mktemp("eval")
    (tmp / "videos").mkdir()
    # Two MEAD identities with emotion names; the second clip carries speech (audio-driven protocol).
    _cut(faces / "videos/dreamtalk__M030_front_angry_level3_001.mp4", tmp / "videos/M030_front_angry_level3_001.mp4",
         FRAMES)
    speech = load_audio(faces / "audio/edtalk__mouth_source.wav")[: FRAMES * 640 + 100]
    _cut(faces / "videos/dreamtalk__W009_front_happy_level3_001.mp4", tmp / "videos/W009_front_happy_level3_001.mp4",
         FRAMES, speech)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    presets = {e: rng.standard_normal((1, 10)).astype(np.float32) for e in EMOTIONS}
    save_bundle(Bundle(FixTalk(get_preset("fixtalk-small")), Audio2Lip(), presets), tmp / "ckpt")
    # Run as two shards (one clip each), as two torchrun ranks would: the second writes the merged results.
    argv = ["eval", "--checkpoint", str(tmp / "ckpt"), "--videos", str(tmp / "videos"),
            "--out", str(tmp / "results.json"), "--markdown", str(tmp / "results.md"),
            "--cross-pairs", "1", "--device", "cpu", "--threads", "1", "--tune", "2"]
    rc, printed_first = _run([*argv, "--shard", "0/2"])
    assert rc == 0 and not (tmp / "results.json").exists() and printed_first == ""
    rc, printed = _run([*argv, "--shard", "1/2"])
    assert rc == 0
    res = json.loads((tmp / "results.json").read_text(),
                     parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    return {"tmp": tmp, "res": res, "printed": printed}


@needs_dlib
def test_every_row_has_every_metric_or_a_reason(work: dict[str, Any]) -> None:
    res = work["res"]
    assert res["format"] == "fixtalk-eval/1"
    assert [r["name"] for r in res["rows"]] == ROWS
    assert res["rows"][2]["preset"] == "fixtalk-small" and res["rows"][2]["audio2lip"]
    for proto, spec in PROTOCOLS.items():
        assert list(res["results"][proto]) == ROWS, proto
        for row in ROWS:
            cells = res["results"][proto][row]
            assert list(cells) == spec["metrics"], (proto, row)
            for key, cell in cells.items():
                if cell["value"] is None:
                    assert cell["reason"], (proto, row, key)
                else:
                    assert math.isfinite(cell["value"]) and cell["n"] >= 1, (proto, row, key)
    assert set(res["metrics"]) == set(METRICS)
    for u in res["unavailable"]:
        assert u["reason"] and u["metric"] in METRICS


@needs_dlib
def test_copy_baseline_numbers(work: dict[str, Any]) -> None:
    res = work["res"]["results"]
    self_copy = res["self_driven"]["copy-source"]
    # Frame 0 (the source itself) is left out, so the copy's PSNR is finite: 2 clips x 2 frames.
    assert self_copy["psnr"]["n"] == 2 * (FRAMES - 1)
    assert 10 < self_copy["psnr"]["value"] < 100
    assert 0 < self_copy["ssim"]["value"] <= 1
    assert self_copy["csim"]["value"] == pytest.approx(1.0)
    assert self_copy["fid"]["value"] >= 0 and self_copy["niqe"]["value"] > 0
    assert self_copy["m_lmd"]["value"] >= 0
    cross = res["cross_identity"]["copy-source"]
    assert cross["csim_source"]["value"] == pytest.approx(1.0)
    assert cross["leakage"]["value"] == pytest.approx(0.0, abs=1e-9)
    assert cross["driver_closer"]["value"] == 0.0
    assert res["audio_driven"]["copy-source"]["psnr"]["n"] == FRAMES - 1
    assert res["emotion"]["copy-source"]["acc_emo"]["n"] == 2
    # The real frames: CSIM to their own first frame is high, NIQE/CPBD are measured.
    assert res["self_driven"]["real"]["csim"]["value"] > 0.9
    assert res["self_driven"]["real"]["psnr"]["reason"].startswith("not applicable")


@needs_dlib
def test_checkpoint_row_is_scored(work: dict[str, Any]) -> None:
    res = work["res"]["results"]
    assert math.isfinite(res["self_driven"]["ckpt"]["psnr"]["value"])
    assert math.isfinite(res["self_driven"]["ckpt"]["fid"]["value"])
    assert math.isfinite(res["audio_driven"]["ckpt"]["psnr"]["value"])
    # Both clips are named with a MEAD emotion the checkpoint has a preset for: every checkpoint row of the emotion
    # protocol renders that preset (a clip without a prediction fails here too).
    modes = [c["emotion_pred"][row]["mode"] for c in work["res"]["clips"] for row in ("ckpt", "ckpt+tune2")]
    assert modes == ["preset"] * 4
    # The tuned row: same weights, tuned per source, so its numbers differ from the untuned row's.
    rows = {r["name"]: r for r in work["res"]["rows"]}
    assert rows["ckpt+tune2"]["tune_steps"] == 2 and rows["ckpt"]["tune_steps"] == 0
    assert rows["ckpt+tune2"]["sha256"] == rows["ckpt"]["sha256"]
    tuned = res["self_driven"]["ckpt+tune2"]["psnr"]["value"]
    assert math.isfinite(tuned) and tuned != res["self_driven"]["ckpt"]["psnr"]["value"]


@needs_dlib
def test_unavailable_metrics_say_why(work: dict[str, Any]) -> None:
    res = work["res"]
    for row in ROWS:
        cell = res["results"]["audio_driven"][row]["lse_c"]
        assert cell["value"] is None and "--syncnet" in cell["reason"] and "syncnet_v2.model" in cell["reason"]
    assert any(u["metric"] == "lse_d" for u in res["unavailable"])
    assert "MobileNetV2" in res["metrics"]["fid"]["label"]          # labelled proxy, not Inception
    assert "dlib" in res["metrics"]["csim"]["label"]
    assert "FER2013" in res["metrics"]["acc_emo"]["label"]
    counts = res["counts"]
    assert counts["clips_evaluated"] == 2 and counts["clips_skipped"] == []
    assert counts["audio_driven"]["clips"] == 1 and counts["emotion"]["clips"] == 2
    assert counts["cross_identity"]["pairs"] == 2


@needs_dlib
def test_markdown_and_printed_tables(work: dict[str, Any]) -> None:
    md = (work["tmp"] / "results.md").read_text()
    for title in (spec["title"] for spec in PROTOCOLS.values()):
        assert f"## {title}" in md
    assert "| copy-source |" in md and "| ckpt |" in md and "FID-proxy" in md
    assert "--syncnet" in md
    assert "| copy-source |" in work["printed"]


@needs_dlib
def test_merging_shards_equals_one_run(work: dict[str, Any]) -> None:
    from fixtalk.eval.runner import finish, load_parts

    res = work["res"]
    parts = load_parts(work["tmp"] / "results.json", res_key(work), 2)
    assert [p["shard"] for p in parts] == [[0, 2], [1, 2]]
    single = dict(parts[0], shard=[0, 1], results=parts[0]["results"] + parts[1]["results"])
    one, merged = finish([single]), finish(parts)
    assert merged["shards"] == 2 and one["shards"] == 1
    assert merged["results"] == res["results"]
    for proto in PROTOCOLS:
        for row in ROWS:
            for key, cell in merged["results"][proto][row].items():
                want = one["results"][proto][row][key]
                assert (cell["value"] is None) == (want["value"] is None), (proto, row, key)
                if cell["value"] is not None:
                    assert cell["value"] == pytest.approx(want["value"], rel=1e-9, abs=1e-12)


def res_key(work: dict[str, Any]) -> str:
    part = next((work["tmp"] / "results.json.parts").glob("shard-0-of-2.json"))
    return json.loads(part.read_text())["key"]


def test_cli_rejects_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fixtalk.cli import main

    assert main(["eval", "--videos", str(tmp_path), "--out", str(tmp_path / "r.json"), "--shard", "2/2"]) == 2
    assert "--shard" in capsys.readouterr().err
    assert main(["eval", "--videos", str(tmp_path), "--out", str(tmp_path / "r.json")]) == 2
    assert "no videos" in capsys.readouterr().err
    assert main(["eval", "--videos", str(tmp_path), "--out", str(tmp_path / "r.txt")]) == 2
