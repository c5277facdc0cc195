"""Pack what a GPU burst (scripts/gpu_burst.py) needs into one folder small enough to travel with the tree.

    python scripts/gpu_pack.py DATA OUT [--max-frames 350]

DATA is a `fixtalk prep --size 128` folder. OUT gets:
  data/  its train split; a clip longer than --max-frames keeps that many frames evenly spread over it (landmarks
         and transforms with them, audio dropped: the burst trains recon only), re-encoded as prep does
  site/  the MobileNetV2 perceptual weights in float16, where `fixtalk.models.backbones` finds them once
         OUT/site is on PYTHONPATH (a machine without the offline-assets package)
With --max-frames 350 the 77 train clips of the dev set keep 14,084 of 19,568 frames in 28 MB (+ 7 MB weights).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from fixtalk.models.backbones import MOBILENET_V2_PACKAGE, mobilenet_v2_weights_path
from fixtalk.train.clipstore import read_frames, save_npz, write_clip
from fixtalk.weights import read_weights


def pack_clip(src: Path, dst: Path, clip: str, frames: int, cap: int, size: int) -> int:
    if frames <= cap:
        for ext in ("mp4", "npz"):
            shutil.copy(src / f"{clip}.{ext}", dst / f"{clip}.{ext}")
        return frames
    idx = np.linspace(0, frames - 1, cap).round().astype(int).tolist()
    write_clip(dst / f"{clip}.mp4", read_frames(src / f"{clip}.mp4", idx), size, crf=18)
    with np.load(src / f"{clip}.npz") as z:
        arrays = dict(z)
    arrays["landmarks"], arrays["transforms"] = arrays["landmarks"][idx], arrays["transforms"][idx]
    arrays["mel"] = arrays["mel"][:0]
    save_npz(dst / f"{clip}.npz", **arrays)
    return cap


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--max-frames", type=int, default=350)
    args = ap.parse_args()
    src, out = Path(args.data), Path(args.out)
    (out / "data" / "clips").mkdir(parents=True, exist_ok=True)
    size = int(json.loads((src / "prep.json").read_text())["size"])
    with open(src / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "train"]
    for r in rows:
        n = pack_clip(src / "clips", out / "data" / "clips", r["clip"], int(r["frames"]), args.max_frames, size)
        if n != int(r["frames"]):
            r.update(frames=n, has_audio=0)
    with open(out / "data" / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0])) if rows else None
        if w:
            w.writeheader()
            w.writerows(rows)
    shutil.copy(src / "prep.json", out / "data" / "prep.json")
    weights = mobilenet_v2_weights_path()
    if weights is not None:
        pkg = out / "site" / MOBILENET_V2_PACKAGE
        (pkg / "weights").mkdir(parents=True, exist_ok=True)
        (pkg / "__init__.py").touch()
        state = read_weights(weights, "MobileNetV2 weights")
        half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        torch.save(half, pkg / "weights" / weights.name)
    print(f"packed {len(rows)} train clips, {sum(int(r['frames']) for r in rows)} frames -> {out}")


if __name__ == "__main__":
    main()
