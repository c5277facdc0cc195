"""The whole generator: E, FDM, G, and FixTalk's EMI and EDI (FixTalk Fig. 4; docs/architecture.md 9.2).

    source --E--> f_6^s, f^s_{1:5} ----------------------------------------------+
    driver --E--> f_6^d, f^d_{1:5} --EMI--> z^d --FDM--> m = Q alpha            |
    G(f_6^s + m, f^s_{1:5} with f_4^s replaced by EDI's fused map, e) <---------+

With `use_emi=False` and `use_edi=False` this is exactly EDTalk (the official checkpoints load into it),
so the baseline and FixTalk share one code path (the ablation switches of the paper's Tab. 3). With
`motion_net="lia"` the motion network is LIA's (`lmd.LMD`: one 20-direction motion, no FDM split) and G has
no EEM: that is LIA itself, the second baseline of FixTalk's generalisation study (Sec. 5, Fig. 8), and
EMI/EDI plug into it by the same switches (`fdm` names the motion network of either kind).

Inference is split so that constant work runs once per source (docs/architecture.md, Conventions 6):
`prepare_source` encodes the source (maps, latent, z^s, its own motion m^s and EDI token f_pi^s), then
`driving_features` encodes drivers, `predict_motion` maps them to bank weights, and `render` draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fixtalk.config import ModelConfig
from fixtalk.models.edi import EDI, EDIOutput
from fixtalk.models.emi import EMI
from fixtalk.models.encoder import Encoder
from fixtalk.models.fdm import FDM, Motion
from fixtalk.models.generator import Synthesis
from fixtalk.models.lmd import LMD

# EMI pools the maps f_1..f_5 of the paper's 512 setting: 256^2 .. 16^2 (32^2 = f_4 goes through P).
_EMI_RESOLUTIONS = (16, 64, 128, 256)


@dataclass
class Encoding:
    latent: Tensor       # B x style_dim        f_6
    maps: list[Tensor]   # coarse -> fine        [B x C_r x r x r for r = 8 .. size]


@dataclass
class SourceState:
    """Everything constant for one source image (cached by the Pipeline)."""

    latent: Tensor              # B x style_dim   f_6^s
    maps: list[Tensor]          # f^s maps, coarse -> fine
    feature: Tensor             # B x style_dim   motion feature of the source (z^s, or f_6^s without EMI)
    motion: Motion              # the source's own bank weights (for "hold the source" factors)
    m: Tensor                   # B x style_dim   Q alpha of the source's own motion (EDI motion key origin)
    f_pi: Tensor | None = None  # B x C           EDI token of f_4^s
    eem: list[Tensor | None] | None = None  # IN(conv2(f^s)) per level: EEM without per-frame convolutions
    image: Tensor | None = None  # B x 3 x R x R the source image itself at the render size R >= S (rgb_warp)

    def expand(self, batch: int) -> SourceState:
        """The same source repeated for a batch of driver frames (views, no copies)."""
        if self.latent.shape[0] == batch:
            return self
        ex = lambda t: t.expand(batch, *t.shape[1:])  # noqa: E731
        mo = self.motion
        return SourceState(ex(self.latent), [ex(t) for t in self.maps], ex(self.feature),
                           Motion(ex(mo.lip), ex(mo.pose), None if mo.exp is None else ex(mo.exp)),
                           ex(self.m), None if self.f_pi is None else ex(self.f_pi), self.eem,
                           None if self.image is None else ex(self.image))


@dataclass
class TrainOutput:
    image: Tensor                  # B x 3 x S x S
    z_s: Tensor                    # B x style_dim
    z_d: Tensor                    # B x style_dim
    motion: Motion
    edi: EDIOutput | None = None
    grid: Tensor | None = None     # B x S x S x 2: where the pixel path samples the source (rgb_warp)


def motion_delta(motion: Motion, ref: Motion) -> Tensor:
    """alpha - alpha_ref per factor, B x motion_dim (the pixel path's input); a factor `motion` leaves out
    (exp=None: the mouth-pose stage, or a lip/pose drive) counts as held at the reference's, i.e. zero."""
    parts = [motion.lip - ref.lip, motion.pose - ref.pose]
    if ref.exp is not None:
        parts.append(torch.zeros_like(ref.exp) if motion.exp is None else motion.exp - ref.exp)
    return torch.cat([p.expand(motion.lip.shape[0], -1) for p in parts], dim=-1)


class FixTalk(nn.Module):
    """E + FDM + G (+ EMI, + EDI). Pure module: no paths, devices or I/O."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.enc = Encoder(cfg)
        self.fdm: FDM | LMD = FDM(cfg) if cfg.decoupled else LMD(cfg)
        self.dec = Synthesis(cfg)
        res = cfg.map_resolutions
        self._emi_idx = [res.index(r) for r in _EMI_RESOLUTIONS if r in res]
        self.emi = (EMI(cfg.emi, [cfg.channel(res[i]) for i in self._emi_idx], cfg.channel(32), cfg.style_dim)
                    if cfg.use_emi else None)
        self.edi = EDI(cfg.edi, cfg.channel(32), cfg.style_dim) if cfg.use_edi else None

    # --- encoding -------------------------------------------------------------------------------
    def encode(self, img: Tensor) -> Encoding:
        """img: B x 3 x S x S in [-1, 1]."""
        latent, maps = self.enc(img)
        return Encoding(latent, maps)

    def motion_feature(self, enc: Encoding) -> Tensor:
        """What FDM reads: EMI's z (Sec. 4.1) or, for the baseline, the latent f_6 itself."""
        if self.emi is None:
            return enc.latent
        return self.emi([enc.maps[i] for i in self._emi_idx], enc.maps[self.cfg.f4_index], enc.latent)

    def driving_features(self, img: Tensor) -> Tensor:
        """Driver frames B x 3 x S x S -> motion features B x style_dim (one encoder pass each)."""
        return self.motion_feature(self.encode(img))

    def predict_motion(self, lip: Tensor, pose: Tensor, exp: Tensor | None = None) -> Motion:
        """Bank weights, each factor from its own motion feature (B x style_dim)."""
        return self.fdm.predict(lip, pose, exp if self.cfg.has_expression else None)

    # --- inference --------------------------------------------------------------------------------
    def prepare_source(self, img: Tensor, image: Tensor | None = None) -> SourceState:
        """img: 1 x 3 x S x S in [-1, 1]. `image`: the same crop at a render size R > S for the pixel path
        (rgb_warp; frames then come out at R, `PixelWarp`), default img itself."""
        enc = self.encode(img)
        feature = self.motion_feature(enc)
        motion = self.predict_motion(feature, feature, feature)
        m, _ = self.fdm.compose(motion)
        f_pi = self.edi.compress(enc.maps[self.cfg.f4_index]) if self.edi is not None else None
        # EDI replaces f_4 per frame, so that level's EEM cannot be cached.
        eem = self.dec.eem_cache(enc.maps, skip=self.cfg.f4_index if self.edi is not None else None)
        return SourceState(enc.latent, enc.maps, feature, motion, m, f_pi, eem,
                           (img if image is None else image) if self.cfg.rgb_warp else None)

    def render(self, src: SourceState, motion: Motion, motion_key: Tensor | None = None) -> Tensor:
        """Draw frames: latent = f_6^s + Q alpha; EDI recalls details by the motion key (Eq. 9).

        motion_key defaults to m^d - m^s (docs/architecture.md 9.3), which exists in every driving mode
        (video, audio, preset expression, mixed sources). Returns B x 3 x R x R, raw (no clamp); R is the size
        of the source image the pixel path warps (`prepare_source`), else S.
        """
        src = src.expand(motion.lip.shape[0])
        m, e = self.fdm.compose(motion)
        maps = src.maps
        if self.edi is not None:
            key = motion_key if motion_key is not None else m - src.m
            i = self.cfg.f4_index
            fused = self.edi.forward_infer(maps[i], key, f_pi_s=src.f_pi)
            maps = [*maps[:i], fused, *maps[i + 1:]]
        delta = motion_delta(motion, src.motion) if self.cfg.rgb_warp else None
        return self.dec(src.latent + m, maps, e, src.eem, src.image, delta)

    def forward(self, source: Tensor, driver: Tensor) -> Tensor:
        """One driver for all three factors (convenience for tests and ONNX export)."""
        feat = self.driving_features(driver)
        return self.render(self.prepare_source(source), self.predict_motion(feat, feat, feat))

    # --- training ---------------------------------------------------------------------------------
    def forward_train(self, source: Tensor, driver: Tensor,
                      use_source_address: bool | Tensor = False,
                      motion: Motion | None = None) -> TrainOutput:
        """Self-reconstruction step: same identity in source and driver (FixTalk Sec. 4).

        `motion` overrides the bank weights (e.g. cross-reconstruction in the mouth-pose stage);
        by default every factor comes from the driver's z^d.
        """
        es, ed = self.encode(source), self.encode(driver)
        z_s, z_d = self.motion_feature(es), self.motion_feature(ed)
        if motion is None:
            motion = self.predict_motion(z_d, z_d, z_d)
        m, e = self.fdm.compose(motion)
        maps, edi_out = es.maps, None
        needs_source_motion = self.cfg.rgb_warp or (self.edi is not None and self.cfg.edi.motion_key != "emi")
        motion_s = self.predict_motion(z_s, z_s, z_s) if needs_source_motion else None
        if self.edi is not None:
            i = self.cfg.f4_index
            if self.cfg.edi.motion_key == "emi":
                key = z_d - z_s
            else:
                assert motion_s is not None
                m_s, _ = self.fdm.compose(motion_s)
                key = m - m_s
            edi_out = self.edi.forward_train(maps[i], ed.maps[i], key, use_source_address)
            maps = [*maps[:i], edi_out.fused, *maps[i + 1:]]
        pixel = (source, motion_delta(motion, motion_s)) if motion_s is not None and self.cfg.rgb_warp else (None, None)
        image, grid = self.dec.synthesise(es.latent + m, maps, e, None, *pixel)
        return TrainOutput(image, z_s, z_d, motion, edi_out, grid)

