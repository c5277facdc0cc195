"""How ill-conditioned the EDTalk render is on the parity fixture's synthetic weights.

Prints, for the full and lip/pose models: our float32 output vs the reference, our float64 output vs
the reference, and float64 vs float64 with a 1e-7 relative perturbation of the latent. The last line is
the floor that any implementation with different rounding faces; it is why tests/test_edtalk_parity.py
checks image statistics rather than a 1e-3 max difference. Run: python scripts/parity_conditioning.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from parity_utils import fixture_dir, load_image  # noqa: E402
from test_edtalk_parity import _synthetic_model  # noqa: E402


@torch.no_grad()
def render(model, imgs, dtype, noise=0.0, seed=0):
    model = model.to(dtype).train().eval()  # train()/eval() drops the cached bank for the new dtype
    s, l, p, e = (imgs[n].to(dtype) for n in ("source", "lip", "pose", "exp"))
    src = model.prepare_source(s)
    motion = model.predict_motion(model.driving_features(l), model.driving_features(p),
                                  model.driving_features(e) if model.cfg.has_expression else None)
    m, ex = model.fdm.compose(motion)
    latent = src.latent + m
    g = torch.Generator().manual_seed(seed)
    latent = latent * (1 + noise * torch.randn(latent.shape, generator=g, dtype=dtype))
    return model.dec(latent, src.maps, ex)[0].double().numpy()


def stats(a, b):
    d = np.abs(a - b)
    return f"max {d.max():.3g}  mean {d.mean():.3g}  within 1e-3 {100 * (d <= 1e-3).mean():.2f} %"


def main() -> None:
    exp = np.load(fixture_dir() / "expected.npz")
    imgs = {n: load_image(f"{n}.png") for n in ("source", "lip", "pose", "exp")}
    for preset, ckpt, key in (("edtalk-256", "EDTalk.pt:gen", "edtalk_v_output"),
                              ("edtalk-256-lip-pose", "EDTalk_lip_pose.pt:gen", "lip_pose_output")):
        model = _synthetic_model(preset, ckpt)
        f32 = render(model, imgs, torch.float32)
        f64 = render(model, imgs, torch.float64)
        f64n = render(model, imgs, torch.float64, noise=1e-7)
        print(f"{preset}:")
        print(f"  float32 vs reference               {stats(f32, exp[key])}")
        print(f"  float64 vs reference               {stats(f64, exp[key])}")
        print(f"  float64 vs float64 (latent x(1+1e-7 noise)) {stats(f64, f64n)}")


if __name__ == "__main__":
    main()
