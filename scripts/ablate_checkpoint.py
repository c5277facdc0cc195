"""Write a copy of a FixTalk checkpoint with EMI and/or EDI switched off (the ablation rows of Tab. 3).

The copy keeps every other weight (E, FDM, G, Audio2Lip, presets) and drops the switched-off module, so
the same trained network runs the EDTalk paths: without EMI the FDM heads read the encoder latent instead
of the pooled f_4 feature z (Sec. 3.2), without EDI G reads the source's own f_4 instead of the fused
memory address (Eq. 9). Weights trained with the modules in place are not retrained here, so the row
measures what the trained model loses when they are removed, not a model trained without them.

    python scripts/ablate_checkpoint.py fixtalk/assets/model /tmp/no_emi_edi --no-emi --no-edi
    fixtalk eval --checkpoint full=fixtalk/assets/model --checkpoint no-emi-edi=/tmp/no_emi_edi ...
"""

from __future__ import annotations

import argparse

from fixtalk.checkpoint import Bundle, load_bundle, save_bundle
from fixtalk.models.fixtalk import FixTalk


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", help="fixtalk checkpoint folder")
    p.add_argument("dst", help="output checkpoint folder")
    p.add_argument("--no-emi", action="store_true", help="switch EMI off")
    p.add_argument("--no-edi", action="store_true", help="switch EDI off")
    args = p.parse_args()
    if not (args.no_emi or args.no_edi):
        p.error("give --no-emi and/or --no-edi")
    b = load_bundle(args.src)
    cfg = b.model.cfg
    new_cfg = cfg.replace(name=f"{cfg.name}-ablated", use_emi=cfg.use_emi and not args.no_emi,
                          use_edi=cfg.use_edi and not args.no_edi)
    model = FixTalk(new_cfg)
    dropped = tuple(x for x, off in (("emi.", args.no_emi), ("edi.", args.no_edi)) if off)
    state = {k: v for k, v in b.model.state_dict().items() if not k.startswith(dropped)}
    model.load_state_dict(state, strict=True)
    save_bundle(Bundle(model.eval(), b.audio2lip, b.expression_presets), args.dst)
    print(f"wrote {args.dst}: use_emi={new_cfg.use_emi} use_edi={new_cfg.use_edi} "
          f"({len(b.model.state_dict()) - len(state)} tensors dropped)")


if __name__ == "__main__":
    main()
