"""Exponential moving average of the generator's weights (`fixtalk train --ema-halflife N`).

StyleGAN2 (Karras et al., "Analyzing and Improving the Image Quality of StyleGAN", CVPR 2020) evaluates and
ships "G_ema", an EMA of G's weights with a half-life of 10k images (StyleGAN2-ADA, Karras et al. NeurIPS 2020:
`ema_kimg`): the average sits in a flatter spot than the last iterate and removes the step-to-step jitter that
the GAN's Adam (beta1 = 0) leaves in the weights, at the cost of one shadow copy and one lerp per step.

Here the half-life is in optimiser steps (images = N x batch x processes): decay = 0.5 ** (1 / N), so a weight's
contribution halves every N updates. The shadow is float32 whatever the training precision (bf16 autocast
keeps fp32 weights anyway); buffers (e.g. BatchNorm statistics) are not averaged but copied as they are.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class Ema:
    """A float32 shadow of `module`'s parameters (and a copy of its buffers), updated by `update()`."""

    def __init__(self, module: nn.Module, halflife_steps: float) -> None:
        if halflife_steps <= 0:
            raise ValueError(f"EMA half-life must be > 0 steps, got {halflife_steps}")
        self.module = module
        self.halflife = float(halflife_steps)
        self.decay = 0.5 ** (1.0 / self.halflife)
        self.updates = 0
        with torch.no_grad():
            self.params = {n: p.detach().float().clone() for n, p in module.named_parameters()}
            self.buffers = {n: b.detach().clone() for n, b in module.named_buffers()}

    @torch.no_grad()
    def update(self) -> None:
        """shadow <- decay * shadow + (1 - decay) * weight, after each optimiser step."""
        named = dict(self.module.named_parameters())
        # Frozen parameters never change, so their shadow (started equal to them) is left alone: on a stage
        # that trains a few heads this skips most of the model.
        live = [(self.params[n], p) for n, p in named.items() if p.requires_grad]
        if live:
            shadow, weights = zip(*live, strict=True)
            torch._foreach_lerp_(list(shadow), [w.float() for w in weights], 1.0 - self.decay)
        for n, b in self.module.named_buffers():
            self.buffers[n].copy_(b)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, target: nn.Module) -> nn.Module:
        """Load the averaged weights into `target` (a module with the same names, e.g. a deepcopy)."""
        for n, p in target.named_parameters():
            p.copy_(self.params[n])
        for n, b in target.named_buffers():
            b.copy_(self.buffers[n])
        return target

    def averaged(self) -> nn.Module:
        """A copy of the tracked module holding the averaged weights (the module itself is not touched)."""
        return self.copy_to(copy.deepcopy(self.module))

    def state_dict(self) -> dict[str, Any]:
        return {"halflife": self.halflife, "updates": self.updates, "params": self.params, "buffers": self.buffers}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a saved EMA (same module layout; the half-life is the one given at construction)."""
        if set(state["params"]) != set(self.params) or set(state["buffers"]) != set(self.buffers):
            raise ValueError("EMA state does not match the model's parameter/buffer names")
        with torch.no_grad():
            for n, t in state["params"].items():
                self.params[n].copy_(t)
            for n, t in state["buffers"].items():
                self.buffers[n].copy_(t)
        self.updates = int(state["updates"])


__all__ = ["Ema"]
