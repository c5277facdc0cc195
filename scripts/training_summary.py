"""Summarise training runs from their log.jsonl files: one markdown row per run (for model cards).

    python scripts/training_summary.py runs/recon runs/mouth-pose runs/expression runs/fixtalk runs/audio2lip

Per run: stage, batch, steps, training time (the loop's own `elapsed`, summed over resumes), samples seen,
and the mean of each loss over the first and the last 5 log rows, so the card shows what moved.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fixtalk.train.options import STAGES


def summarise(run: Path, rows_per_end: int = 5) -> dict:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "elapsed" in r and "event" not in r]
    cfg = json.loads((run / "config.json").read_text())
    last = max((r for r in rows if "elapsed" in r), key=lambda r: r["step"])
    batch = cfg["options"]["batch"] or STAGES[cfg["stage"]].batch  # None = the stage's default
    keys = sorted({k for r in steps for k in r if k.startswith("loss/")})

    def mean(part: list[dict], k: str) -> float | None:
        vals = [r[k] for r in part if k in r]
        return sum(vals) / len(vals) if vals else None

    first, final = steps[:rows_per_end], steps[-rows_per_end:]
    return {"run": str(run), "stage": cfg["stage"], "batch": batch, "steps": last["step"],
            "hours": last["elapsed"] / 3600, "samples": last["step"] * batch,
            "losses": {k[5:]: (mean(first, k), mean(final, k)) for k in keys}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    args = p.parse_args()
    print("| stage | batch | steps | training time | images seen | losses (first -> last logged) |")
    print("|---|---|---|---|---|---|")
    for run in args.runs:
        s = summarise(run)
        losses = ", ".join(f"{k} {a:.3g} -> {b:.3g}" for k, (a, b) in s["losses"].items()
                           if a is not None and b is not None and k in
                           ("rec", "perceptual", "rec_cross", "latent_consistency", "dis", "mem", "align",
                            "audio_reg", "audio_smooth"))
        print(f"| {s['stage']} | {s['batch']} | {s['steps']} | {s['hours'] * 60:.1f} min | {s['samples']} | {losses} |")


if __name__ == "__main__":
    main()
