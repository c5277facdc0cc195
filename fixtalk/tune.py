"""Per-source tuning: pivotal tuning of the generator on the source portrait (PTI, Roich et al. 2022, Sec. 3.2).

A one-shot generator trained on few identities renders an unseen face approximately. Before rendering, we
fine-tune a copy of G (the decoder `dec.*`, including the pixel path; never E, FDM, EMI or EDI, so the
motion a driver produces is unchanged) to reconstruct the source portrait from its own encoding. The
targets are the source and small augmentations of it (horizontal flip, crops of up to `max_zoom` and shifts
of a few pixels), each driven by its own motion: G learns this face's texture and how it looks when moved
slightly, which is what the renders need. Only the source image is ever seen, never a driver.

The tuned copy lives in memory; `Pipeline` caches it by the hash of the aligned source crop, so a second
render of the same portrait costs nothing. The losses are the recon stage's (L1 + the MobileNetV2 perceptual
pyramid; L1 alone when those weights are not installed).
"""

from __future__ import annotations

import copy
import logging
import time

import torch
import torch.nn.functional as F

from fixtalk import losses as L
from fixtalk.models.fixtalk import FixTalk

log = logging.getLogger(__name__)


def augment(img: torch.Tensor, n: int, max_zoom: float, gen: torch.Generator) -> torch.Tensor:
    """n views of 1 x 3 x S x S: random flips and zoom/shift crops (bilinear, edges repeated)."""
    views = []
    for _ in range(n):
        zoom = 1 - max_zoom * float(torch.rand((), generator=gen))
        shift = (torch.rand(2, generator=gen) * 2 - 1) * (1 - zoom)
        theta = torch.tensor([[zoom, 0.0, float(shift[0])], [0.0, zoom, float(shift[1])]])[None]
        grid = F.affine_grid(theta, list(img.shape), align_corners=False)
        v = F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)
        views.append(v.flip(-1) if float(torch.rand((), generator=gen)) < 0.5 else v)
    return torch.cat(views)


def _backbone() -> torch.nn.Module | None:
    from fixtalk.models.backbones import load_backbone

    try:
        return load_backbone("mobilenet_v2")
    except Exception as err:  # the assets package is optional at inference
        log.warning("per-source tuning without the perceptual loss (%s)", err)
        return None


def tune_generator(model: FixTalk, source: torch.Tensor, steps: int, lr: float = 2e-4, batch: int = 4,
                   max_zoom: float = 0.08, seed: int = 0) -> tuple[FixTalk, float]:
    """A copy of `model` with G tuned on `source` (1 x 3 x S x S in [-1, 1]); returns (copy, seconds).

    Safe to call inside `torch.inference_mode()` (the Pipeline renders there): the copy and every tensor of
    the tuning are made outside it, or autograd would refuse them.
    """
    t0 = time.perf_counter()
    with torch.inference_mode(False), torch.enable_grad():
        tuned = copy.deepcopy(model).float().train()
        for m in tuned.modules():  # per-shape caches may hold inference-mode tensors (the copy's own dicts)
            grids = getattr(m, "_grids", None)
            if isinstance(grids, dict):
                grids.clear()
        tuned.requires_grad_(False)
        params = [p for n, p in tuned.named_parameters() if n.startswith("dec.")]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=lr, betas=(0.0, 0.99))
        backbone = _backbone()
        if backbone is not None:
            backbone = copy.deepcopy(backbone).to(source.device)
        gen = torch.Generator().manual_seed(seed)
        src = source.float().clone()
        for _ in range(steps):
            target = torch.cat([src, augment(src.cpu(), batch - 1, max_zoom, gen).to(src.device)])
            out = tuned.forward_train(src.expand(batch, -1, -1, -1), target, use_source_address=True).image
            loss = L.reconstruction_l1(out, target)
            if backbone is not None:
                loss = loss + L.perceptual_pyramid(out, target, backbone)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        tuned.eval().requires_grad_(False)
    return tuned, time.perf_counter() - t0
