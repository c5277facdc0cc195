"""Give a checkpoint's Audio2Lip a loudness mouth (fixtalk.models.loudness_mouth) without re-training it.

    python scripts/fit_loudness_mouth.py CKPT DATA OUT [--targets RUN/lip_targets.npz] [--threads 2]

The audio2lip stage does this fit itself at its end (fixtalk.train.loudness_fit); this script gives one to a
checkpoint trained before. DATA is a `fixtalk prep` folder: its training clips with audio are used. --targets
reuses the mouth weights the audio2lip stage computed for this generator (its RUN/lip_targets.npz) instead of
encoding every frame again (~10-25 min on a 2-core CPU for ~13k frames). OUT gets the checkpoint with
`loudness_mouth` on in its config.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from fixtalk.checkpoint import load_bundle, save_bundle
from fixtalk.errors import InputError
from fixtalk.models.audio2lip import Audio2Lip
from fixtalk.train import lip_targets
from fixtalk.train.clipstore import read_clips
from fixtalk.train.loudness_fit import LoudnessFit, fit


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--targets", help="RUN/lip_targets.npz of the audio2lip run that trained this Audio2Lip")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.checkpoint)
    if bundle.audio2lip is None:
        print(f"fit_loudness_mouth: {args.checkpoint}: no Audio2Lip to add a loudness mouth to", file=sys.stderr)
        return 2
    cfg = bundle.model.cfg
    clips = [c for c in read_clips(args.data, "train")[0] if c.has_audio]
    if args.targets:
        with np.load(args.targets) as z:
            targets = {c.name: z[c.name] for c in clips if c.name in z.files}
        clips = [c for c in clips if c.name in targets]
    else:
        targets = lip_targets.compute(bundle.model, clips, cfg.size, torch.device("cpu"))
    result = fit(bundle.model, clips, targets, cfg.size, torch.device("cpu"))
    if not isinstance(result, LoudnessFit):
        print(f"fit_loudness_mouth: no fit: {result}", file=sys.stderr)
        return 1
    print(result.summary())
    a2l = Audio2Lip(cfg.lip_dim, loudness=True)
    a2l.load_state_dict(bundle.audio2lip.state_dict(), strict=False)  # the network; the loudness buffers are new
    assert a2l.loudness is not None
    result.apply(a2l.loudness)
    bundle.model.cfg = cfg.replace(loudness_mouth=True)
    bundle.audio2lip = a2l.eval()
    save_bundle(bundle, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except InputError as err:  # bad input: one line, no traceback, nothing written
        print(f"fit_loudness_mouth: {err}", file=sys.stderr)
        sys.exit(2)
