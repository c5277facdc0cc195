"""Run the suite on one shard, write its part, and merge the parts into results.json once all are there.

With `shard = (i, n)`, n > 1, the shard's records go to OUT.parts/shard-i-of-n.json (+ .npz with the FID
features); whichever shard finishes last finds all n parts (same options, same clip list: the run key) and
writes OUT and the markdown. Ranks started by `torchrun` do exactly this with (RANK, WORLD_SIZE), so no
process group or collective is needed and a crashed rank can be re-run alone with `--shard i/n`.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from fixtalk.eval import data as D
from fixtalk.eval import report
from fixtalk.eval.scoring import Scorer
from fixtalk.eval.suite import REAL, ClipResult, EvalOptions, evaluate_clips, make_plan

PART_FORMAT = "fixtalk-eval-part/1"


def run_key(opts: EvalOptions, clips: list[D.EvalClip], rows: list[str]) -> str:
    """Identifies one evaluation across shards: options (less the device, which differs per rank), clip
    list and rows."""
    options = {k: v for k, v in dataclasses.asdict(opts).items() if k != "device"}
    blob = json.dumps([options, [c.name for c in clips], rows], sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def evaluate(opts: EvalOptions, shard: tuple[int, int] = (0, 1), progress: bool = True) -> dict[str, Any]:
    """Evaluate one shard and return its part (records, FID features, skipped clips, reasons)."""
    scorer = Scorer(opts.inception, opts.syncnet)        # a bad --inception/--syncnet path fails here
    plan = make_plan(opts)
    mine = D.shard(plan.clips, *shard)
    done, skipped = evaluate_clips(plan, opts, mine, scorer, progress)
    rows = [r.describe() for r in plan.rows]
    return {"format": PART_FORMAT, "key": run_key(opts, plan.clips, [r["name"] for r in rows]),
            "shard": list(shard), "options": dataclasses.asdict(opts), "eval_size": plan.eval_size,
            "clips_selected": len(plan.clips), "rows": rows, "reasons": dict(scorer.reasons),
            "labels": scorer.labels, "skipped": skipped, "results": done}


def finish(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge shard parts into the results dict (report's schema)."""
    first = parts[0]
    records: list[dict[str, Any]] = []
    features: dict[str, list[np.ndarray]] = {}
    reasons: dict[str, str] = {}
    skipped: list[dict[str, str]] = []
    for part in parts:
        reasons.update(part["reasons"])
        skipped += part["skipped"]
        for res in part["results"]:
            records.append(res.record)
            for row, f in res.features.items():
                features.setdefault(row, []).append(f)
    records.sort(key=lambda r: r["clip"])
    rows = [{"name": REAL, "kind": "reference", "what": "the real aligned frames (no-reference metrics only)"}]
    rows += first["rows"]
    out: dict[str, Any] = {
        "format": report.FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "options": first["options"], "eval_size": first["eval_size"], "shards": len(parts),
        "metrics": report.metric_table(first["labels"]), "rows": rows,
    }
    no_clips = {"cross_identity": "disabled with --cross-pairs 0"} if first["options"]["cross_pairs"] == 0 else {}
    out |= report.aggregate(records, features, rows, reasons, no_clips)
    out["counts"] = _counts(records, skipped, first["clips_selected"])
    out["clips"] = [{k: r.get(k) for k in ("clip", "identity", "emotion", "audio", "frames", "frames_without_face",
                                           "pairs", "emotion_source", "emotion_pred", "notes")}
                    | {"means": report.clip_means(r)} for r in records]
    return report.clean(out)


def _counts(records: list[dict[str, Any]], skipped: list[dict[str, str]], selected: int) -> dict[str, Any]:
    return {
        "clips_selected": selected, "clips_evaluated": len(records), "clips_skipped": skipped,
        "frames": sum(r["frames"] for r in records),
        "frames_without_face": sum(r["frames_without_face"] for r in records),
        "self_driven": {"clips": len(records), "frames": sum(r["frames"] - 1 for r in records)},
        "cross_identity": {"clips": sum(1 for r in records if r.get("pairs")),
                           "pairs": sum(len(r.get("pairs") or []) for r in records)},
        "audio_driven": {"clips": sum(1 for r in records if report._in_protocol(r, "audio_driven"))},
        "emotion": {"clips": sum(1 for r in records if r.get("emotion"))},
    }


# -- files ------------------------------------------------------------------------------------------------

def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def save_part(part: dict[str, Any], out: Path) -> Path:
    i, n = part["shard"]
    folder = parts_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    records = []
    for k, res in enumerate(part["results"]):
        keys = {}
        for row, f in res.features.items():
            keys[row] = f"c{k}_{len(arrays)}"
            arrays[keys[row]] = f.astype(np.float32)   # FID statistics are taken in float64 anyway
        records.append({"record": res.record, "features": keys})
    base = folder / f"shard-{i}-of-{n}"
    tmp = folder / f".{base.name}.{uuid.uuid4().hex[:8]}.npz"
    np.savez(tmp, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds like its allow_pickle flag
    os.replace(tmp, base.with_suffix(".npz"))
    meta = {k: v for k, v in part.items() if k != "results"} | {"results": records}
    _atomic_write(base.with_suffix(".json"), json.dumps(report.clean(meta)))   # last: marks the part complete
    return base.with_suffix(".json")


def load_parts(out: Path, key: str, n: int) -> list[dict[str, Any]]:
    """The parts of run `key` found so far (a part of another run or shard count is ignored)."""
    found = []
    for i in range(n):
        base = parts_dir(out) / f"shard-{i}-of-{n}"
        try:
            meta = json.loads(base.with_suffix(".json").read_text())
            arrays = np.load(base.with_suffix(".npz"))
        except (OSError, ValueError):
            continue
        if meta.get("format") != PART_FORMAT or meta.get("key") != key:
            continue
        meta["results"] = [ClipResult(r["record"], {row: arrays[a] for row, a in r["features"].items()})
                           for r in meta["results"]]
        found.append(meta)
    return found


def write_results(res: dict[str, Any], out: Path, markdown: Path | None) -> None:
    _atomic_write(out, json.dumps(res, indent=1, allow_nan=False) + "\n")
    if markdown is not None:
        _atomic_write(markdown, report.markdown(res))


def run(opts: EvalOptions, out: str | Path, markdown: str | Path | None = None, shard: tuple[int, int] = (0, 1),
        progress: bool = True) -> dict[str, Any] | None:
    """Evaluate this shard; write results (and markdown) when every shard is done. Returns the results,
    or None while other shards are still missing."""
    out = Path(out)
    md = Path(markdown) if markdown else None
    part = evaluate(opts, shard, progress)
    if shard[1] == 1:
        res = finish([part])
    else:
        save_part(part, out)
        parts = load_parts(out, part["key"], shard[1])
        if len(parts) < shard[1]:
            return None
        res = finish(parts)
    write_results(res, out, md)
    return res
