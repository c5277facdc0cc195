"""The generator-side losses of each training stage (docs/architecture.md 4.2, 5, 9.3; FixTalk Eqs. 2-8).

`StageLosses` is the one module the loop wraps in DistributedDataParallel: a single `forward(batch, progress)`
per step runs every network call of the stage and returns the weighted total, the individual terms (for the
logs), the real/fake images for the discriminator step and a few images for sample grids.

| stage      | generator losses                                                                          |
|------------|-------------------------------------------------------------------------------------------|
| recon      | L1 + perceptual + GAN (+ L_dis when the model has EMI; 9.3 schedule (a)) (+ landmark flow)  |
| mouth-pose | self-recon of a, b and cross-recon from the mouth-swap composites (L1 + perceptual each),  |
|            | GAN on all four, lip/pose latent consistency exp(-cos) (+ L_dis with EMI)                   |
| expression | L1 + perceptual + GAN; lip/pose from the frozen heads, expression from ELN on the same frame|
| fixtalk    | L1 + perceptual + GAN + L_dis (Eq. 4) + L_d-mem (Eq. 6) + L_align (Eq. 8); G consumes the   |
|            | motion-source address (Eq. 9) with probability p = progress * curriculum_max (9.3)         |
| audio2lip  | MSE to the frozen generator's lip weights + 0.1 smoothness; L1 + perceptual of frames drawn |
|            | with the predicted lips (inference path); 5 x SyncNet BCE only with Wav2Lip expert weights |
| finetune   | L1 + perceptual + GAN                                                                     |

With EDI in the model, every stage but `fixtalk` renders through the motion-source address (Eq. 9, the
inference path), so no stage teaches G to rely on the driver's f_4 leakage that inference cannot provide.
The discriminator's loss (non-saturating, Eq. 3) is `DiscriminatorLoss`, run by the loop on the same fakes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from fixtalk import losses as L
from fixtalk.models.audio2lip import Audio2Lip
from fixtalk.models.fdm import Motion
from fixtalk.models.fixtalk import FixTalk
from fixtalk.train.options import TrainOptions
from fixtalk.train.syncnet import SyncNetColor, lower_face_stack, sync_loss

StepOutput = tuple[Tensor, dict[str, Tensor], Tensor | None, Tensor | None, list[Tensor]]


def _cat_motion(parts: list[Motion]) -> Motion:
    exps = [p.exp for p in parts if p.exp is not None]
    exp = torch.cat(exps) if len(exps) == len(parts) else None
    return Motion(torch.cat([p.lip for p in parts]), torch.cat([p.pose for p in parts]), exp)


class StageLosses(nn.Module):
    """Generator (and Audio2Lip) losses of one stage. D, the perceptual backbone and SyncNet are held outside
    the module tree so that DDP neither synchronises nor expects gradients for them."""

    def __init__(self, opts: TrainOptions, model: FixTalk, audio2lip: Audio2Lip | None, d: nn.Module | None,
                 backbone: nn.Module, syncnet: SyncNetColor | None = None) -> None:
        super().__init__()
        self.stage, self.opts, self.w = opts.stage, opts, opts.weights
        self.model = model
        self.audio2lip = audio2lip
        # A tuple attribute is not registered as a sub-module (unlike assigning the modules themselves).
        self._aux: tuple[nn.Module | None, nn.Module, SyncNetColor | None] = (d, backbone, syncnet)

    # --- shared terms ---------------------------------------------------------------------------
    def _image_terms(self, pred: Tensor, target: Tensor, logs: dict[str, Tensor], tag: str = "") -> Tensor:
        pred = pred.float()
        rec = L.reconstruction_l1(pred, target)
        per = L.perceptual_pyramid(pred, target, self._aux[1], layer_weight=self.w.perceptual_layer)
        logs[f"rec{tag}"], logs[f"perceptual{tag}"] = rec.detach(), per.detach()
        return self.w.rec * rec + self.w.perceptual * per

    def _gan_g(self, fake: Tensor, logs: dict[str, Tensor]) -> Tensor:
        d = self._aux[0]
        if d is None or not self.w.gan:
            return fake.new_zeros(())
        g = L.gan_generator_loss(d(fake).float())
        logs["gan_g"] = g.detach()
        return self.w.gan * g

    def _dis(self, z_s: Tensor, z_d: Tensor, logs: dict[str, Tensor]) -> Tensor:
        if self.model.emi is None or not self.w.dis:
            return z_s.new_zeros(())
        dis = L.disentangle_loss(z_s.float(), z_d.float(), self.model.cfg.emi.xi)
        logs["dis"] = dis.detach()
        return self.w.dis * dis

    # --- stages -----------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any], progress: float) -> StepOutput:
        """One step's generator-side computation; `progress` in [0, 1] drives the fixtalk curriculum."""
        if self.stage == "mouth-pose":
            return self._mouth_pose(batch)
        if self.stage == "audio2lip":
            return self._audio2lip(batch)
        return self._self_recon(batch, progress)

    def _self_recon(self, batch: dict[str, Any], progress: float) -> StepOutput:
        """recon / expression / fixtalk / finetune: render the driver from the source (same identity)."""
        src, drv = batch["source"], batch["driver"]
        logs: dict[str, Tensor] = {}
        use_src: bool | Tensor = True  # outside the curriculum: the inference path (no f_4^d leakage)
        if self.stage == "fixtalk":
            p = self.opts.curriculum_max * min(max(progress, 0.0), 1.0)
            use_src = torch.rand(src.shape[0], device=src.device) < p
            logs["curriculum_p"] = torch.tensor(p)
            logs["source_address_frac"] = use_src.float().mean()
        out = self.model.forward_train(src, drv, use_source_address=use_src)
        total = self._image_terms(out.image, drv, logs) + self._gan_g(out.image, logs)
        if out.grid is not None and self.w.landmark_flow and "driver_landmarks" in batch:
            lmk = L.landmark_flow_loss(out.grid, batch["driver_landmarks"], batch["source_landmarks"])
            logs["landmark_flow"] = lmk.detach()
            total = total + self.w.landmark_flow * lmk
        if self.stage in ("recon", "fixtalk"):
            total = total + self._dis(out.z_s, out.z_d, logs)
        if self.stage == "fixtalk" and out.edi is not None:
            e = out.edi
            mem = L.memory_recall_loss(e.f_pi_d.float(), e.f_hat_d.float(), self.w.mem_commit)
            align = L.memory_align_kl(e.alpha_ms, e.alpha_d)
            logs["mem"], logs["align"] = mem.detach(), align.detach()
            total = total + self.w.mem * mem + self.w.align * align
        logs["total"] = total.detach()
        return total, logs, drv, out.image, [src, drv, out.image]

    def _mouth_pose(self, batch: dict[str, Any]) -> StepOutput:
        """EDTalk Mouth-Pose decoupling (docs/architecture.md 5 stage 2 and 5.1)."""
        m = self.model
        a_id, a, b_id, b, a_bm, b_am = (batch[k] for k in ("a_id", "a", "b_id", "b", "a_bm", "b_am"))
        n = a.shape[0]
        z_a, z_b, z_abm, z_bam = m.driving_features(torch.cat([a, b, a_bm, b_am])).split(n)
        self_a, self_b = m.predict_motion(z_a, z_a), m.predict_motion(z_b, z_b)
        # a's mouth is in "b with a's mouth", a's pose in "a with b's mouth" (and symmetrically for b).
        cross_a, cross_b = m.predict_motion(z_bam, z_abm), m.predict_motion(z_abm, z_bam)
        motion = _cat_motion([Motion(x.lip, x.pose) for x in (self_a, cross_a, self_b, cross_b)])
        # The source address (Eq. 9): EDI must not hand the cross renders the target's own f_4 details.
        out = m.forward_train(torch.cat([a_id, a_id, b_id, b_id]), torch.cat([a, a, b, b]), motion=motion,
                              use_source_address=True)
        img_sa, img_ca, img_sb, img_cb = out.image.split(n)
        logs: dict[str, Tensor] = {}
        total = (self._image_terms(torch.cat([img_sa, img_sb]), torch.cat([a, b]), logs)
                 + self._image_terms(torch.cat([img_ca, img_cb]), torch.cat([a, b]), logs, "_cross")
                 + self._gan_g(out.image, logs))
        lat = sum(L.latent_consistency(c.float(), s.float()) for c, s in
                  ((cross_a.lip, self_a.lip), (cross_a.pose, self_a.pose),
                   (cross_b.lip, self_b.lip), (cross_b.pose, self_b.pose)))
        logs["latent_consistency"] = lat.detach()  # type: ignore[union-attr]  # sum() of tensors is a tensor
        total = total + self.w.latent_consistency * lat + self._dis(out.z_s, out.z_d, logs)
        logs["total"] = total.detach()
        return total, logs, torch.cat([a, b]), torch.cat([img_ca, img_cb]), [a_id, a, b_am, img_ca, b_id, b, a_bm,
                                                                           img_cb]

    def _audio2lip(self, batch: dict[str, Any]) -> StepOutput:
        """EDTalk Audio2Mouth (docs/architecture.md 5 stage 4): regress the frozen generator's mouth weights of
        each frame (batch["lip"], train/lip_targets.py); a relative Audio2Lip regresses their change from the
        clip's mean (fixtalk.driving.audio_mouth), and frames are drawn with that mean added back."""
        assert self.audio2lip is not None
        m = self.model
        mel, gt_lip = batch["mel"], batch["lip"].float()                    # B x T x ..., B x T x lip_dim
        base = batch["lip_mean"].float()[:, None] if m.cfg.relative_to_speaker else torch.zeros_like(gt_lip)
        pred = self.audio2lip.learned(mel)                                  # B x T x lip_dim
        target = gt_lip - base
        reg, smooth = L.audio2lip_regression(pred.float(), target), L.audio2lip_smoothness(pred.float(), target)
        logs = {"audio_reg": reg.detach(), "audio_smooth": smooth.detach()}
        total = self.w.audio_reg * reg + self.w.audio_smooth * smooth
        if not self.opts.image_losses:
            logs["total"] = total.detach()
            return total, logs, None, None, []
        frames, ident = batch["frames"], batch["ident"]
        b, t = frames.shape[:2]
        flat = frames.flatten(0, 1)
        samples = [ident, frames[:, t // 2]]
        with torch.no_grad():
            feat = m.driving_features(flat)
            gt = m.predict_motion(feat, feat, feat)
        src = m.prepare_source(ident.repeat_interleave(t, 0))
        lip = (pred + base).flatten(0, 1)
        img = m.render(src, Motion(lip, gt.pose, gt.exp))  # the inference path (Eq. 9)
        total = total + self._image_terms(img, flat, logs)
        syncnet = self._aux[2]
        if syncnet is not None:
            faces = lower_face_stack(img.float().view(b, t, *img.shape[1:]), batch["landmarks"])
            sync = sync_loss(syncnet, mel[:, t // 2], faces)  # the middle window spans the T = 5 frames
            logs["sync"] = sync.detach()
            total = total + self.w.sync * sync
        samples.append(img.view(b, t, *img.shape[1:])[:, t // 2])
        logs["total"] = total.detach()
        return total, logs, None, None, samples


class DiscriminatorLoss(nn.Module):
    """softplus(-D(real)) + softplus(D(fake)) (FixTalk Eq. 3, non-saturating). One DDP forward per step
    calls D twice, so the minibatch-stddev groups never mix real and fake images.

    r1_gamma > 0 adds the R1 penalty on the reals (`L.r1_penalty`) on the steps where the loop passes
    r1_scale > 0: StyleGAN2's lazy regularisation passes the interval (--r1-every) every interval-th step."""

    def __init__(self, d: nn.Module, r1_gamma: float = 0.0) -> None:
        super().__init__()
        self.d = d
        self.r1_gamma = r1_gamma

    def forward(self, real: Tensor, fake: Tensor, r1_scale: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
        r1 = bool(self.r1_gamma and r1_scale)
        if r1:
            real = real.detach().requires_grad_(True)
        real_logits, fake_logits = self.d(real).float(), self.d(fake).float()
        loss = L.gan_discriminator_loss(real_logits, fake_logits)
        logs = {"gan_d": loss.detach(), "d_real": real_logits.mean().detach(), "d_fake": fake_logits.mean().detach()}
        if r1:
            penalty = L.r1_penalty(real_logits, real, self.r1_gamma)
            logs["r1"] = penalty.detach()
            loss = loss + r1_scale * penalty
        return loss, logs
