"""Numeric parity with the reference LIA code (wyhsirius/LIA) on the fixture's synthetic weights.

Fixture: FIXTALK_LIA_FIXTURE, default ../shared/fixtures/lia_parity (README there). Every array but the
images must match to 1e-4 (max abs), and the images to 1e-3 (max abs) at every pixel where float32 itself
is accurate. The test never skips: a missing fixture is a failure. `python tests/test_lia_parity.py`
prints the max difference of every array.

Why "where float32 is accurate": the README expects a 1e-3 maximum everywhere, because the reference's own
float64 rerun stayed within 2.4e-4 of its float32 output. Ours does not at a handful of pixels on the right
edge: there the finest flow samples just beyond the last column (e.g. 0.15 px out, at channel 1, row 197,
column 253 of `absolute_output`), where zero padding makes the pixel proportional to the flow itself, and
the flow is a sum of six levels' logits (|raw| up to ~47). A 1e-6 relative rounding difference of those
logits moves such a pixel by ~5e-3: this implementation's float32 and float64 runs differ by 6.0e-3 there,
and its float32 result moves by 1e-3 with the thread count or oneDNN on/off, while the mean difference to
the reference is 7e-7 and the latents match bit for bit. So each image value gets the tolerance
1e-3 + 2 x (our float32 - float64 difference there), and at most `MAX_UNSTABLE` values may use the extra
(a wrong network fails by orders of magnitude more; see the negative control).

This is rounding, not an implementation difference (issue #13, checked against wyhsirius/LIA at b9f15fb run
on the same synthetic weights and inputs, torch 2.13 CPU, one thread): with its identity grid kept in float64
the reference's float64 images equal ours to 7e-12 (max abs), and with its `.float()` grid to 1.3e-5.
The reference code itself, in float32, misses expected.npz by 3.5e-3 (relative_output, 15 values > 1e-3) with
oneDNN and by 1.5e-2 (absolute_output, 11 values > 1e-3) without; its float64 run is 3.6e-3 from it at
absolute_output[1, 197, 253] (not the README's 2.4e-4). That pixel moves by -152 per unit of the finest flow
logit (x), whose float32 error there is ~4e-5, so 1e-3 at every pixel is met only by the rounding of the
machine that wrote the fixture. Since the non-fused modulated convolution (fixtalk/models/layers.py) this
machine happens to meet it: max 7.4e-4 (relative_output) and 6.0e-4 (absolute_output), no value over 1e-3,
with one thread and with two; the allowance stays for machines whose kernels round differently.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from parity_utils import lia_fixture_dir, lia_layout, lia_synthetic_state, load_image

from fixtalk.checkpoint import first_mismatch, fixtalk_to_lia_keys, lia_to_fixtalk_keys
from fixtalk.config import get_preset
from fixtalk.info import report
from fixtalk.models.fdm import Motion
from fixtalk.models.fixtalk import FixTalk

IMAGE_TOL = 1e-3
TOL = 1e-4
IMAGES = ("relative_output", "absolute_output")
MAX_UNSTABLE = 20  # of 196,608 values per image (0.01 %)


def synthetic_model(dtype: torch.dtype = torch.float32) -> FixTalk:
    model = FixTalk(get_preset("lia-256"))
    state = lia_to_fixtalk_keys(lia_synthetic_state())
    assert first_mismatch(model.state_dict(), state) is None
    assert {k: list(v.shape) for k, v in fixtalk_to_lia_keys(model.state_dict()).items()} == lia_layout()
    model.load_state_dict(state)
    return model.to(dtype).eval()


@torch.no_grad()
def compute_arrays(model: FixTalk) -> dict[str, np.ndarray]:
    """Every array of expected.npz, computed through the model's inference API (in the model's dtype)."""
    d = lia_fixture_dir()
    dtype = next(model.parameters()).dtype
    x = {n: load_image(f"{n}.png", d).to(dtype) for n in ("source", "start", "drive")}
    src = model.prepare_source(x["source"])
    alpha = {n: model.predict_motion(model.driving_features(x[n]), None) for n in ("start", "drive")}
    absolute = model.render(src, alpha["drive"])
    relative = model.render(src, alpha["drive"].relative(alpha["start"], src.motion))
    out = {
        "source_latent": src.latent[0],
        "finest_feature_mean": src.maps[-1][0].mean(dim=(1, 2)),
        "alpha_source": src.motion.lip[0],
        "alpha_start": alpha["start"].lip[0],
        "alpha_drive": alpha["drive"].lip[0],
        "directions_q": model.fdm.basis(),
        "relative_output": relative[0],
        "absolute_output": absolute[0],
    }
    return {k: v.double().numpy() for k, v in out.items()}


def expected_arrays() -> dict[str, np.ndarray]:
    path = lia_fixture_dir() / "expected.npz"
    assert path.is_file(), f"LIA parity fixture missing: {path} (set FIXTALK_LIA_FIXTURE)"
    with np.load(path) as z:
        return {k: z[k].astype(np.float64) for k in z.files}


def compare(got: dict[str, np.ndarray], got64: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per array: max |diff| to the reference; for the images also the tolerance check's numbers."""
    expected = expected_arrays()
    assert set(expected) == set(got), (sorted(expected), sorted(got))
    stats = {}
    for k, ref in expected.items():
        assert got[k].shape == ref.shape, (k, got[k].shape, ref.shape)
        diff = np.abs(got[k] - ref)
        row = {"max": float(diff.max()), "mean": float(diff.mean())}
        if k in IMAGES:
            spread = np.abs(got[k] - got64[k])  # how far float32 rounding alone moves each value
            stable = spread <= IMAGE_TOL / 4
            row.update(max_stable=float(diff[stable].max()), over_1e3=int((diff > IMAGE_TOL).sum()),
                       unstable=int((~stable).sum()), worst_excess=float((diff - IMAGE_TOL - 2 * spread).max()))
        stats[k] = row
    return stats


def describe(stats: dict[str, dict[str, float]]) -> str:
    lines = []
    for k, r in stats.items():
        line = f"{k:<20} max |diff| {r['max']:.2e}  mean {r['mean']:.1e}"
        if k in IMAGES:
            line += (f"  | where float32 is stable: max {r['max_stable']:.2e}; values > 1e-3: {r['over_1e3']}; "
                     f"unstable values: {r['unstable']}")
        lines.append(line)
    return "\n".join(lines)


def check(stats: dict[str, dict[str, float]]) -> list[str]:
    bad = [f"{k}: max {r['max']:.2e} > {TOL}" for k, r in stats.items() if k not in IMAGES and r["max"] > TOL]
    for k in IMAGES:
        r = stats[k]
        if r["max_stable"] > IMAGE_TOL or r["worst_excess"] > 0 or r["over_1e3"] > MAX_UNSTABLE:
            bad.append(f"{k}: {r}")
    return bad


@pytest.fixture(scope="module")
def model() -> FixTalk:
    return synthetic_model()


def test_lia_256_layout_and_count() -> None:
    """lia-256 is the official layout: 185 tensors, 45,116,797 values (45,116,317 parameters)."""
    m = FixTalk(get_preset("lia-256"))
    assert len(m.state_dict()) == len(lia_layout()) == 185
    assert sum(v.numel() for v in m.state_dict().values()) == 45_116_797
    assert sum(p.numel() for p in m.parameters()) == 45_116_317
    text = report(get_preset("lia-256"), with_macs=False)  # what `fixtalk info lia-256` prints
    assert "45,116,797   (45,116,317 trainable)" in text and "Audio2Lip" not in text


@pytest.fixture(scope="module")
def arrays(model: FixTalk, one_thread: None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(float32 arrays, the same computation in float64)."""
    return compute_arrays(model), compute_arrays(synthetic_model(torch.float64))


def test_every_array_matches_reference(arrays: tuple[dict[str, np.ndarray], dict[str, np.ndarray]]) -> None:
    stats = compare(*arrays)
    print("\n" + describe(stats))
    assert not check(stats), check(stats)


def test_negative_control_fails(arrays: tuple[dict[str, np.ndarray], dict[str, np.ndarray]]) -> None:
    """The check has teeth: the absolute image in place of the relative one (and vice versa) fails it."""
    got, got64 = arrays
    swap = {"relative_output": "absolute_output", "absolute_output": "relative_output"}
    wrong = {k: got[swap.get(k, k)] for k in got}
    wrong64 = {k: got64[swap.get(k, k)] for k in got64}
    bad = check(compare(wrong, wrong64))
    assert len(bad) == 2, bad


@torch.no_grad()
def test_relative_mode_is_the_demos_latent(model: FixTalk, one_thread: None) -> None:
    """Q(a_d - a_st + a_s) is the demo's D(a_d) - D(a_st) + D(a_s) (D linear), and holding the source's
    own motion in relative mode (drive == start) gives the source's own latent."""
    a = {n: torch.randn(1, 20) for n in ("d", "st", "s")}
    q = model.fdm.basis()
    rel = Motion(a["d"], a["d"][:, :0]).relative(Motion(a["st"], a["st"][:, :0]), Motion(a["s"], a["s"][:, :0]))
    m, e = model.fdm.compose(rel)
    assert e is None
    torch.testing.assert_close(m, a["d"] @ q.T - a["st"] @ q.T + a["s"] @ q.T, atol=1e-5, rtol=0)
    same = Motion(a["d"], a["d"][:, :0]).relative(Motion(a["d"], a["d"][:, :0]), Motion(a["s"], a["s"][:, :0]))
    torch.testing.assert_close(same.lip, a["s"], atol=1e-6, rtol=0)


def test_one_motion_refuses_separate_factor_features(model: FixTalk) -> None:
    f = torch.randn(1, 512)
    with pytest.raises(ValueError, match="one motion"):
        model.predict_motion(f, f + 1)
    assert model.predict_motion(f, f, f).pose.shape == (1, 0)


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(f"fixture: {lia_fixture_dir()}")
    print(describe(compare(compute_arrays(synthetic_model()), compute_arrays(synthetic_model(torch.float64)))))
