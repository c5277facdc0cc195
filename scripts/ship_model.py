"""Copy a trained checkpoint into the package as the shipped model (float16 weights), keeping its model card.

    python scripts/ship_model.py RUN/final [--out fixtalk/assets/model]

The weights are stored as float16 (loaded into float32), so the package stays small; `config.json` gets the
new sha256 of each file. MODEL_CARD.md of the destination is kept (update its numbers by hand: they are
measurements, not something this script can know).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from fixtalk.checkpoint import load_bundle, save_bundle
from fixtalk.pipeline import SHIPPED


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="a fixtalk checkpoint folder (a training run's final/)")
    ap.add_argument("--out", default=str(SHIPPED))
    args = ap.parse_args()
    out = Path(args.out)
    card = (out / "MODEL_CARD.md").read_text() if (out / "MODEL_CARD.md").is_file() else None
    bundle = load_bundle(args.checkpoint)
    save_bundle(bundle, out, dtype=torch.float16)
    if card is not None:
        (out / "MODEL_CARD.md").write_text(card)
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"shipped {args.checkpoint} -> {out} ({size / 1e6:.1f} MB, {bundle.model.cfg.name})")


if __name__ == "__main__":
    main()
