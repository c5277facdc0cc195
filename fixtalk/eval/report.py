"""Per-clip records -> results.json (every number, label, count and reason) and a markdown table.

results.json ("format": "fixtalk-eval/1"):

    options      the EvalOptions of the run (paths, sizes, limits, devices)
    eval_size    side of the aligned crops every metric is computed on
    metrics      {key: {name, better, label, protocols}}: the label names the proxy model where one is used
    rows         [{name, kind: reference|baseline|checkpoint, ...checkpoint description}]
    results      {protocol: {row: {metric: {value, n, skipped} | {value: null, reason}}}}
    unavailable  [{protocol, row, metric, reason}] for every null value (ground-truth n/a cells excepted)
    counts       clips selected / evaluated / skipped (with reasons), frames, clips per protocol, pairs
    clips        per clip: identity, emotion, frames, cross pairs, emotion source and predictions, and
                 its own mean of every metric per protocol and row

Means are frame-weighted over all clips (`n` frames entered, `skipped` frames had no detectable face);
Sync scores are per clip and FID is one distance between the pooled real and generated frame sets.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

FORMAT = "fixtalk-eval/1"
REAL = "real"
_H, _L = "higher", "lower"
METRICS: dict[str, dict[str, Any]] = {
    "psnr": {"name": "PSNR", "better": _H, "group": None, "label": "PSNR (dB, 8-bit RGB, capped at 100)"},
    "ssim": {"name": "SSIM", "better": _H, "group": None, "label": "SSIM (Wang et al. 2004, mean over RGB)"},
    "fid": {"name": "FID", "better": _L, "group": "fid", "label": None},      # filled from the scorer
    "csim": {"name": "CSIM", "better": _H, "group": "csim", "label": None},
    "niqe": {"name": "NIQE", "better": _L, "group": "niqe", "label": "NIQE (MATLAB/BasicSR pristine model)"},
    "cpbd": {"name": "CPBD", "better": _H, "group": "cpbd", "label": "CPBD sharpness"},
    "m_lmd": {"name": "M-LMD", "better": _L, "group": "landmarks",
              "label": "mouth landmark distance (dlib 68 points 48-67), px at eval_size"},
    "f_lmd": {"name": "F-LMD", "better": _L, "group": "landmarks",
              "label": "face landmark distance (dlib 68 points), px at eval_size"},
    "csim_source": {"name": "CSIM(src)", "better": _H, "group": "csim", "label": None},
    "csim_driver": {"name": "CSIM(drv)", "better": _L, "group": "csim", "label": None},
    "leakage": {"name": "Leakage", "better": _L, "group": "csim",
                "label": "mean_t CSIM(result_t, driver_t) - CSIM(source, driver_t); 0 = no leakage"},
    "driver_closer": {"name": "Closer-to-driver", "better": _L, "group": "csim",
                      "label": "share of frames with CSIM(result_t, driver_t) > CSIM(result_t, source)"},
    "lse_c": {"name": "LSE-C", "better": _H, "group": "sync", "label": "Sync_conf / LSE-C (SyncNet v2)"},
    "lse_d": {"name": "LSE-D", "better": _L, "group": "sync", "label": "LSE-D (SyncNet v2)"},
    "acc_emo": {"name": "Acc_emo", "better": _H, "group": "emotion", "label": None},
}
PROTOCOLS: dict[str, dict[str, Any]] = {
    "self_driven": {"title": "Self-driven reconstruction (FixTalk Sec. 5.1, Tab. 1)",
                    "metrics": ["psnr", "ssim", "fid", "csim", "niqe", "cpbd", "m_lmd", "f_lmd"]},
    "cross_identity": {"title": "Cross-identity driving (identity leakage)",
                       "metrics": ["csim_source", "csim_driver", "leakage", "driver_closer"]},
    "audio_driven": {"title": "Audio-driven (Tab. 3; pose and expression from the clip)",
                     "metrics": ["psnr", "ssim", "m_lmd", "f_lmd", "lse_c", "lse_d"]},
    "emotion": {"title": "Emotion accuracy (Tab. 3 Acc_emo, FER proxy)", "metrics": ["acc_emo"]},
}
REAL_APPLIES = {"self_driven": {"csim", "niqe", "cpbd"}, "cross_identity": set(),
                "audio_driven": {"lse_c", "lse_d"}, "emotion": {"acc_emo"}}
NO_CLIPS = {
    "self_driven": "no clip could be evaluated",
    "cross_identity": "no cross-identity pair: every portrait has the clip's identity (give --portraits DIR "
                      "or clips of several identities)",
    "audio_driven": "no clip has audio (its own track, or a same-named file in --audio DIR, beside it or in "
                    "../audio)",
    "emotion": "no emotion-labelled clip (MEAD names such as M030_front_angry_level3_001, or an "
               "emotion:<class> tag in the manifest notes)",
}


def metric_table(labels: dict[str, str]) -> dict[str, dict[str, Any]]:
    out = {}
    for key, m in METRICS.items():
        label = m["label"]
        if key in ("csim", "csim_source", "csim_driver"):
            what = {"csim": "result_t vs source", "csim_source": "result_t vs source portrait",
                    "csim_driver": "result_t vs driver frame t"}[key]
            label = f"{labels['csim']}: {what}"
        elif key == "fid":
            label = labels["fid"]
        elif key == "acc_emo":
            label = f"{labels['emotion']}, % of clips"
        out[key] = {"name": m["name"], "better": m["better"], "label": label,
                    "protocols": [p for p, d in PROTOCOLS.items() if key in d["metrics"]]}
    return out


def _sum(stats: list[list[float] | None]) -> list[float] | None:
    present = [s for s in stats if s is not None]
    if not present:
        return None
    return [sum(s[0] for s in present), sum(s[1] for s in present), sum(s[2] for s in present)]


def _entry(total: list[float] | None) -> dict[str, Any] | None:
    if total is None or total[1] == 0:
        return None
    return {"value": total[0] / total[1], "n": int(total[1]), "skipped": int(total[2])}


def aggregate(records: list[dict[str, Any]], features: dict[str, list[np.ndarray]], rows: list[dict[str, Any]],
              reasons: dict[str, str], no_clips: dict[str, str] | None = None) -> dict[str, Any]:
    """results and unavailable (see the module docstring) from the clip records; `reasons` says why a metric
    group is unavailable, `no_clips` overrides why a protocol has no clip."""
    from fixtalk.eval.scoring import fid
    from fixtalk.metrics.emotion import emotion_accuracy

    names = [r["name"] for r in rows]
    results: dict[str, dict[str, dict[str, Any]]] = {}
    unavailable: list[dict[str, str]] = []
    for proto, spec in PROTOCOLS.items():
        clips = [r for r in records if _in_protocol(r, proto)]
        results[proto] = {}
        for row in names:
            cells: dict[str, Any] = {}
            for key in spec["metrics"]:
                cell: dict[str, Any] | None
                if row == REAL and key not in REAL_APPLIES[proto]:
                    cells[key] = {"value": None, "reason": "not applicable to the ground-truth frames"}
                    continue
                total = None
                if key == "fid":
                    cell = _fid(features.get(row, []), features.get(REAL, []), fid)
                elif key == "acc_emo":
                    cell = _acc(clips, row, emotion_accuracy)
                else:
                    total = _sum([r["scores"].get(proto, {}).get(row, {}).get(key) for r in clips])
                    cell = _entry(total)
                if cell is None or cell["value"] is None:
                    reason = _why(proto, row, key, clips, reasons, total, cell, no_clips or {})
                    cell = {"value": None, "reason": reason}
                    unavailable.append({"protocol": proto, "row": row, "metric": key, "reason": reason})
                cells[key] = cell
            results[proto][row] = cells
    return {"results": results, "unavailable": unavailable}


def _in_protocol(rec: dict[str, Any], proto: str) -> bool:
    if proto == "emotion":
        return bool(rec.get("emotion"))
    if proto == "cross_identity":
        return bool(rec.get("pairs"))
    if proto == "audio_driven":
        return bool(rec.get("audio")) and "audio" not in rec.get("notes", {})
    return True


def _fid(fake: list[np.ndarray], real: list[np.ndarray], fn: Any) -> dict[str, Any] | None:
    f, r = (np.concatenate(x) if x else np.zeros((0, 1)) for x in (fake, real))
    if len(f) < 2 or len(r) < 2:
        return None
    cell = {"value": fn(r, f), "n": int(len(f)), "n_real": int(len(r))}
    if len(f) < 2000:
        cell["note"] = "few frames: FID is biased upwards below about 2,000 frames"
    return cell


def _acc(clips: list[dict[str, Any]], row: str, fn: Any) -> dict[str, Any] | None:
    got = [(r["emotion_pred"][row], r["emotion"]) for r in clips if row in r.get("emotion_pred", {})]
    if not got:
        return None
    res = fn([g["pred"] for g, _ in got], [t for _, t in got])
    modes = sorted({g["mode"] for g, _ in got})
    return {"value": 100.0 * res.accuracy if res.n_scored else None, "n": res.n_scored,
            "no_face": res.n_no_face, "no_fer_class": res.n_unavailable, "expression": "/".join(modes)}


def _why(proto: str, row: str, key: str, clips: list[dict[str, Any]], reasons: dict[str, str],
         total: list[float] | None, cell: dict[str, Any] | None, no_clips: dict[str, str]) -> str:
    group = METRICS[key]["group"]
    if group in reasons:
        return reasons[group]
    notes = {r["notes"][proto][row] for r in clips if row in r.get("notes", {}).get(proto, {})}
    if notes:
        return "; ".join(sorted(notes))
    if not clips:
        return no_clips.get(proto, NO_CLIPS[proto])
    if key == "fid":
        return "FID needs at least 2 real and 2 generated frames"
    if key == "acc_emo":
        c = cell or {}
        return (f"no scorable clip: {c.get('no_face', 0)} without a face found by fer's detector in the "
                f"rendered frames, {c.get('no_fer_class', 0)} with an emotion FER2013 lacks (contempt)")
    if key in ("lse_c", "lse_d"):
        return "SyncNet needs at least 6 frames with a detectable face and audio per clip"
    skipped = int(total[2]) if total else 0
    if key == "niqe":
        return f"NIQE was not finite on any of {skipped} frames (it needs crops of at least 192 px: 96-px blocks)"
    if group is None or key == "cpbd":
        return f"not finite on any of {skipped} frames"
    return f"no scorable frame: no face detected (dlib HOG) in the {skipped} frames of this row or their ground truth"


def clip_means(rec: dict[str, Any]) -> dict[str, Any]:
    """One clip's own mean of every metric (None where nothing was scored)."""
    out: dict[str, Any] = {}
    for proto, by_row in rec["scores"].items():
        out[proto] = {row: {k: (None if s is None or s[1] == 0 else s[0] / s[1]) for k, s in m.items()}
                      for row, m in by_row.items()}
    return out


def clean(obj: Any) -> Any:
    """JSON-safe: numpy scalars -> Python, NaN/inf -> None (strict JSON has neither)."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


# -- tables ------------------------------------------------------------------------------------------------

def _fmt(cell: dict[str, Any]) -> str:
    v = cell.get("value")
    if v is None:
        return "–" if cell.get("reason", "").startswith("not applicable") else "n/a"
    return f"{v:.2f}" if abs(v) >= 100 else f"{v:.3f}"


def markdown(res: dict[str, Any]) -> str:
    """The results as markdown: one table per protocol, then the proxy labels and every n/a reason."""
    counts = res["counts"]
    lines = [f"# fixtalk eval ({counts['clips_evaluated']} clips, {counts['frames']} frames, "
             f"crops at {res['eval_size']} px)", ""]
    ckpts = [r for r in res.get("rows", []) if r.get("kind") == "checkpoint"]
    if ckpts:
        onoff = lambda b: "on" if b else "off"  # noqa: E731
        lines += ["Checkpoint rows: " + "; ".join(
            f"{r['name']} = {r.get('preset')} (EMI {onoff(r.get('use_emi'))}, EDI {onoff(r.get('use_edi'))}, "
            f"{r.get('motion_mode', 'absolute')} motion)" for r in ckpts), ""]
    for proto, spec in PROTOCOLS.items():
        table = res["results"][proto]
        c = counts.get(proto, {})
        detail = ", ".join(f"{v} {k.replace('_', ' ').rstrip('s')}{'' if v == 1 else 's'}" for k, v in c.items())
        lines += [f"## {spec['title']}" + (f" ({detail})" if detail else ""), ""]
        heads = [f"{METRICS[k]['name']} {'↑' if METRICS[k]['better'] == _H else '↓'}" for k in spec["metrics"]]
        lines += ["| row | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
        for row, cells in table.items():
            lines.append(f"| {row} | " + " | ".join(_fmt(cells[k]) for k in spec["metrics"]) + " |")
        lines.append("")
    lines += ["## Labels", ""]
    lines += [f"- **{m['name']}**: {m['label']}" for k, m in res["metrics"].items() if m["label"]]
    if res["unavailable"]:
        lines += ["", "## Not available (n/a)", ""]
        seen: dict[str, list[str]] = {}
        for u in res["unavailable"]:
            seen.setdefault(u["reason"], []).append(f"{u['protocol']}/{u['row']}/{METRICS[u['metric']]['name']}")
        for reason, where in seen.items():
            shown = ", ".join(where[:6]) + (f" and {len(where) - 6} more" if len(where) > 6 else "")
            lines.append(f"- {shown}: {reason}")
    if counts["clips_skipped"]:
        lines += ["", "## Skipped clips", ""]
        lines += [f"- {s['clip']}: {s['reason']}" for s in counts["clips_skipped"]]
    return "\n".join(lines) + "\n"
