"""Plot held-out metrics against training minutes (the model card's figure).

    python scripts/plot_training_curve.py CURVE.jsonl OUT.png [--copy-psnr 20.944 --copy-landmark-px 2.886]

CURVE.jsonl: one line per measured checkpoint, {"minutes", "psnr", "landmark_px" (or null), "what"}, from
`scripts/heldout_psnr.py` on the checkpoints of a run (minutes = training time since the pixel path was added).
"""

from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("curve")
    ap.add_argument("out")
    ap.add_argument("--copy-psnr", type=float)
    ap.add_argument("--copy-landmark-px", type=float)
    args = ap.parse_args()
    rows = [json.loads(line) for line in open(args.curve) if line.strip()]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot([r["minutes"] for r in rows], [r["psnr"] for r in rows], "o-", label="fixtalk-small")
    pts = [r for r in rows if r.get("landmark_px") is not None]
    b.plot([r["minutes"] for r in pts], [r["landmark_px"] for r in pts], "o-", label="pixel-path flow")
    if args.copy_psnr:
        a.axhline(args.copy_psnr, color="gray", ls="--", label="copy the source")
    if args.copy_landmark_px:
        b.axhline(args.copy_landmark_px, color="gray", ls="--", label="zero flow")
    a.set(xlabel="training minutes (2-core CPU)", ylabel="self-driven PSNR (dB)", title="held-out, 160 frames")
    b.set(xlabel="training minutes (2-core CPU)", ylabel="landmark error (px at 128)", title="held-out landmarks")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)


if __name__ == "__main__":
    main()
