"""fixtalk.traced: the TorchScript renderer gives the eager renderer's frames bit for bit, for every motion."""

from __future__ import annotations

import pytest
import torch

from fixtalk.config import get_preset
from fixtalk.models.fdm import Motion
from fixtalk.models.fixtalk import FixTalk
from fixtalk.runtime import Runtime


@pytest.fixture(scope="module", params=["fixtalk-small", "lia-small"])
def model(request: pytest.FixtureRequest) -> FixTalk:
    torch.manual_seed(0)
    return Runtime("cpu", "fp32").prepare(FixTalk(get_preset(request.param)))


def motions(state_motion: Motion, batch: int, seed: int) -> Motion:
    g = torch.Generator().manual_seed(seed)
    lip, pose, exp = state_motion.lip, state_motion.pose, state_motion.exp
    return Motion(lip + 0.5 * torch.randn(batch, lip.shape[1], generator=g), pose.expand(batch, -1),
                  None if exp is None else exp + 0.5 * torch.randn(batch, exp.shape[1], generator=g))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_traced_frames_equal_eager_frames(model: FixTalk, dtype: str) -> None:
    rt = Runtime("cpu", dtype)
    rt.trace = True
    g = torch.Generator().manual_seed(1)
    state = rt.run(model.prepare_source, torch.rand(1, 3, 128, 128, generator=g) * 2 - 1)
    for batch, seed in ((1, 0), (1, 1), (3, 2)):  # a second motion through the same trace: not baked in
        motion = motions(state.motion, batch, seed)
        traced, eager = rt.render(model, state, motion), rt.run(model.render, state, motion)
        assert traced.dtype == torch.float32 and traced.shape == (batch, 3, 128, 128)
        torch.testing.assert_close(traced, eager, rtol=0, atol=0)
    other = rt.render(model, state, motions(state.motion, 1, 5))
    assert (other - rt.render(model, state, motions(state.motion, 1, 0))).abs().max() > 1e-3  # negative control
    (renderer,) = rt._traces.values()
    assert sorted(k[0][0] for k in renderer._graphs) == [1, 3]  # one trace per batch size, reused
    # frozen: weights and the source's state are constants of the graph, no parameter is left to look up
    assert all(not list(g.parameters()) for g in renderer._graphs.values())
    frames = torch.rand(2, 3, 128, 128, generator=g) * 2 - 1
    for x in (frames, frames.flip(0), frames[:1]):
        torch.testing.assert_close(rt.features(model, x), rt.run(model.driving_features, x).float(), rtol=0, atol=0)
    assert len(rt._traces) == 2 and len(rt._traces[("features", id(model))]._graphs) == 2


def test_only_fixtalk_on_cpu_with_trace_on_is_traced(model: FixTalk) -> None:
    from fixtalk.traced import traceable

    rt = Runtime("cpu", "fp32")
    assert not traceable(rt, model)  # off unless RuntimeOptions (or the caller) turns it on
    rt.trace = True
    assert traceable(rt, model) and not traceable(rt, object())
