"""`fixtalk bench`: its reference loop (EDTalk's demo, recomputing everything per frame) computes the same frame
as fixtalk's cached path, with and without the pixel path, so the speed-up it prints compares equal work."""

from __future__ import annotations

import pytest
import torch

from fixtalk.bench import model_only, module_times, reference_frame
from fixtalk.models.fixtalk import FixTalk
from fixtalk.runtime import Runtime
from tests.test_model import TINY, _randomise

# The reference loop is EDTalk's: no EMI/EDI, so the comparison is on a model without them.
PLAIN = TINY.replace(use_emi=False, use_edi=False)


@pytest.mark.parametrize("rgb_warp", [False, True])
def test_reference_loop_renders_the_cached_paths_frame(rgb_warp: bool) -> None:
    torch.manual_seed(0)  # the comparison's rounding depends on the weights: fixed ones, a fixed margin
    model = _randomise(FixTalk(PLAIN.replace(rgb_warp=rgb_warp))).eval()
    g = torch.Generator().manual_seed(1)
    src, drv = (torch.rand(1, 3, 64, 64, generator=g) * 2 - 1 for _ in range(2))
    with torch.inference_mode():
        ours = model.render(model.prepare_source(src), model.predict_motion(*[model.driving_features(drv)] * 3))
        other = model.render(model.prepare_source(drv), model.predict_motion(*[model.driving_features(src)] * 3))
    ref = reference_frame(model, src, drv, drv, drv)
    # Same arithmetic in another order: float32 rounding, which the flows' grid_sample amplifies at a few pixels.
    assert (ref - ours).abs().mean() < 1e-4 and (ref - ours).abs().max() < 1e-2
    assert (ref - other).abs().mean() > 1e-2  # negative control: the comparison can tell frames apart


def test_bench_runs_on_the_pixel_path_model() -> None:
    model = FixTalk(TINY.replace(rgb_warp=True)).eval()
    rt = Runtime("cpu", "fp32")
    times = module_times(model, 2, rt)
    assert {"E (encoder)", "G (generator)"} <= set(times) and all(t > 0 for t in times.values())
    ours, ref, speedup = model_only(model, 2, rt, rounds=2)
    assert ours > 0 and ref > 0 and speedup > 0


def test_lia_reference_loop_renders_the_cached_paths_frame() -> None:
    """For a LIA model the reference loop is LIA's demo (absolute mode): the same frame again."""
    for rgb_warp in (False, True):
        cfg = PLAIN.replace(motion_net="lia", lip_dim=20, pose_dim=0, exp_dim=0, rgb_warp=rgb_warp)
        model = _randomise(FixTalk(cfg)).eval()
        g = torch.Generator().manual_seed(1)
        src, drv = (torch.rand(1, 3, 64, 64, generator=g) * 2 - 1 for _ in range(2))
        with torch.inference_mode():
            ours = model.render(model.prepare_source(src), model.predict_motion(*[model.driving_features(drv)] * 2))
        assert (reference_frame(model, src, drv, drv, drv) - ours).abs().max() < 2e-3
