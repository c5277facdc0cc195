"""Per-source tuning (`--tune`, fixtalk.tune): G learns the source, nothing else moves, results are cached."""

from __future__ import annotations

import numpy as np
import torch

from fixtalk import losses
from fixtalk.checkpoint import Bundle
from fixtalk.config import EDIConfig, EMIConfig, ModelConfig
from fixtalk.models.fixtalk import FixTalk
from fixtalk.pipeline import Pipeline, to_tensor
from fixtalk.tune import augment, tune_generator

TINY = ModelConfig(name="tiny", size=64, style_dim=64, max_channels=32, channel_base=1024, eem_hidden=16,
                   use_emi=True, use_edi=True, rgb_warp=True, emi=EMIConfig(layers=1, heads=2, queries=4, ffn_mult=2),
                   edi=EDIConfig(slots=8, decompress_channels=16, heads=2, ffn_mult=2))


def _face(seed: int) -> np.ndarray:
    """A smooth synthetic 64 px 'portrait' (blobs), so flips and crops change it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    img = sum(rng.uniform(0.2, 1) * np.exp(-((xx - rng.uniform(0.2, 0.8)) ** 2 + (yy - rng.uniform(0.2, 0.8)) ** 2)
                                            / 0.02) * rng.uniform(0, 1, (3, 1, 1)) for _ in range(5))
    return (np.clip(np.moveaxis(np.asarray(img), 0, -1), 0, 1) * 255).astype(np.uint8)


def _views_error(model: FixTalk, src: torch.Tensor) -> float:
    views = augment(src, 6, 0.08, torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model.forward_train(src.expand(6, -1, -1, -1), views, use_source_address=True).image
    return float(losses.reconstruction_l1(out, views))


def test_tuning_fits_the_source_and_changes_only_the_generator(one_thread: None) -> None:
    torch.manual_seed(0)
    model = FixTalk(TINY).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    src = to_tensor(_face(0))
    tuned, secs = tune_generator(model, src, steps=40, lr=2e-3)
    assert secs > 0 and tuned is not model
    assert _views_error(tuned, src) < 0.9 * _views_error(model, src)  # it learned this face's views
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the original is untouched
    after = tuned.state_dict()
    changed = {k.split(".")[0] for k, v in before.items() if not torch.equal(v, after[k])}
    assert changed == {"dec"}  # E, FDM, EMI, EDI: the motion a driver produces is unchanged
    assert not any(p.requires_grad for p in tuned.parameters()) and not tuned.training


def test_pipeline_caches_the_tuned_generator_per_source(one_thread: None) -> None:
    torch.manual_seed(0)
    pipe = Pipeline(Bundle(FixTalk(TINY)), tune_steps=2, progress=False)
    a, b = _face(0), _face(1)
    with torch.inference_mode():  # as the Pipeline renders: caches filled with inference tensors
        pipe.model(to_tensor(a), to_tensor(b))
        first = pipe.tuned(a)
    assert first is not None and pipe.tuned(a.copy()) is first  # same pixels: no second tuning
    assert pipe.tuned(b) is not first
    assert Pipeline(Bundle(FixTalk(TINY)), progress=False).tuned(a) is None  # off by default
