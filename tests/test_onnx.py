"""ONNX export and `--backend onnx` (issue #11, item 3): the graphs compute what torch computes.

Tiny random models run everywhere; the shipped model is compared on real face crops when the dev faces and
dlib are present, else on random images. Random generators are chaotic (tests/test_stream.py), so paper-size
layouts are held to torch's own float32 error (against float64) rather than to a fixed bound, and
Pipeline frames are compared by the mean and the share of pixels off by more than 3 levels.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FACES, tiny_checkpoint

pytest.importorskip("onnxruntime", reason="pip install 'fixtalk[onnx]'")
pytest.importorskip("onnx", reason="pip install 'fixtalk[onnx]'")

from fixtalk.cli import main  # noqa: E402
from fixtalk.config import get_preset  # noqa: E402
from fixtalk.errors import InputError  # noqa: E402
from fixtalk.models.fdm import Motion  # noqa: E402
from fixtalk.models.fixtalk import FixTalk  # noqa: E402
from fixtalk.onnx_backend import OnnxFixTalk, OnnxRuntime, ensure_graphs  # noqa: E402
from fixtalk.onnx_cli import TOLERANCE, _run, compare, psnr_uint8  # noqa: E402
from fixtalk.onnx_export import example_inputs, export_graphs  # noqa: E402
from fixtalk.pipeline import Drive, FactorTrack, Pipeline  # noqa: E402
from fixtalk.runtime import Runtime  # noqa: E402
from tests.test_model import TINY, _randomise  # noqa: E402

PORTRAIT = "images/edtalk__identity_source.jpg"
CLIP = "videos/edtalk__mouth_source.mp4"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[FixTalk, Path]:
    """The tiny test layout with everything on: EMI, EDI, expression (EEM) and the pixel path."""
    model = _randomise(FixTalk(TINY.replace(rgb_warp=True))).eval()
    # Drawn at S: these tests compare torch and onnx on the same S x S sources (the render size has its own).
    return model, export_graphs(model, tmp_path_factory.mktemp("onnx") / "graphs", model.cfg.size)


def test_export_writes_three_graphs_and_a_manifest(tiny: tuple[FixTalk, Path]) -> None:
    import onnx

    model, graphs = tiny
    assert sorted(p.name for p in graphs.iterdir()) == ["driver.onnx", "manifest.json", "render.onnx", "source.onnx"]
    assert [p.name for p in graphs.parent.iterdir()] == ["graphs"]  # written atomically: no temporary left
    meta = json.loads((graphs / "manifest.json").read_text())
    assert meta["model"] == model.cfg.to_dict() and len(meta["weights"]) == 64
    render = onnx.load(str(graphs / "render.onnx"))
    dims = {i.name: i.type.tensor_type.shape.dim for i in [*render.graph.input, *render.graph.output]}
    assert dims["lip"][0].dim_param == "batch" and dims["frame"][0].dim_param == "batch"
    assert dims["latent"][0].dim_value == 1  # the source cache is read at batch 1 and broadcast
    assert {"exp", "image", "f_pi", "src_exp"} <= set(dims)  # separate factors, pixel path, EDI


@pytest.mark.parametrize("batch", [1, 3])  # traced at batch 2: the batch axis is free
def test_tiny_model_matches_torch(tiny: tuple[FixTalk, Path], batch: int) -> None:
    model, graphs = tiny
    src, drv = example_inputs(model.cfg, batch=batch, seed=3)
    res = compare(model, OnnxFixTalk(model, graphs), src, drv)
    print(f"tiny model, batch {batch}: {res.line()}")
    assert res.cache_max_abs < 1e-4 and res.feature_max_abs < 1e-4
    assert res.max_abs < 2e-3 and res.psnr >= TOLERANCE["psnr_db"] and res.ok()


def test_graphs_of_other_weights_differ_and_are_refused(tiny: tuple[FixTalk, Path]) -> None:
    model, graphs = tiny
    other = _randomise(FixTalk(model.cfg), seed=1).eval()
    src, drv = example_inputs(model.cfg, batch=2, seed=3)
    res = compare(other, OnnxFixTalk(model, graphs), src, drv)
    assert res.max_abs > 1e-2 and not res.ok()  # negative control: the comparison does tell models apart
    with pytest.raises(InputError, match="other weights"):
        OnnxRuntime(graphs).prepare(other)


def test_each_factor_drives_the_renderer_separately(tiny: tuple[FixTalk, Path]) -> None:
    """Mouth from one driver, pose held at the source's own, expression from another driver at half strength:
    the renderer takes bank weights, so the Pipeline's per-factor control is the same as with torch."""
    model, graphs = tiny
    onnx_model = OnnxFixTalk(model, graphs)
    src, drv = example_inputs(model.cfg, batch=2, seed=4)
    frames = []
    for m in (model, onnx_model):
        with torch.inference_mode():
            state = m.prepare_source(src)
            feat = m.driving_features(drv)
            a, b = m.predict_motion(feat[:1], feat[:1], feat[:1]), m.predict_motion(feat[1:], feat[1:], feat[1:])
            own = state.motion
            frames.append(m.render(state, Motion(a.lip, own.pose, own.exp + 0.5 * (b.exp - own.exp))))
    diff = (frames[0] - frames[1]).abs()
    assert diff.max() < 2e-3 and psnr_uint8(frames[0], frames[1]) >= TOLERANCE["psnr_db"]


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["edtalk-256-lip-pose", "fixtalk-256"])
def test_paper_layouts_export_as_accurately_as_torch_runs(preset: str, tmp_path: Path) -> None:
    """The paper's layouts (at 64 px to stay fast: same widths, fewer levels). Their random weights are chaotic
    in float32, so the ONNX frames are held to torch float32's own distance from a float64 run."""
    cfg = get_preset(preset).replace(size=64)
    torch.manual_seed(0)
    model = _randomise(FixTalk(cfg)).eval()
    wide = copy.deepcopy(model).double().eval()  # eval() drops the float32 bank basis cached by FDM
    src, drv = example_inputs(cfg, batch=2, seed=1)
    ref = _run(wide, src.double(), drv.double())[2]
    err_torch = (_run(model, src, drv)[2].double() - ref).abs()
    err_onnx = (_run(OnnxFixTalk(model, export_graphs(model, tmp_path / "g")), src, drv)[2].double() - ref).abs()
    print(f"{preset} at 64 px vs float64: torch max {err_torch.max():.2e} mean {err_torch.mean():.2e}; "
          f"onnx max {err_onnx.max():.2e} mean {err_onnx.mean():.2e}")
    assert err_onnx.mean() <= 3 * err_torch.mean() + 1e-6 and err_onnx.max() <= 3 * err_torch.max() + 1e-5


def _real_inputs(model: FixTalk, render_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """(source crop at S, driver crops, source crop at the render size, what they are)."""
    import importlib.util

    if FACES.is_dir() and importlib.util.find_spec("dlib") is not None:
        from fixtalk.onnx_cli import real_inputs

        src, drv, image = real_inputs(model, str(FACES / PORTRAIT), str(FACES / CLIP), 8, render_size)
        assert image is not None
        return src, drv, image, "real faces"
    src, drv = example_inputs(model.cfg, batch=8, seed=1)
    return src, drv, torch.nn.functional.interpolate(src, size=render_size, mode="bilinear"), "random images"


def test_shipped_model_matches_torch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """At the shipped model's default render size, 256 px: the pixel path warps the portrait's 256 px crop."""
    from fixtalk.checkpoint import load_bundle
    from fixtalk.pipeline import SHIPPED

    assert main(["export-onnx", "shipped", str(tmp_path / "g")]) == 0
    model = load_bundle(SHIPPED).model
    assert json.loads((tmp_path / "g" / "manifest.json").read_text())["render_size"] == 256
    src, drv, image, what = _real_inputs(model, 256)
    res = compare(model, OnnxFixTalk(model, tmp_path / "g"), src, drv, image)
    with capsys.disabled():
        print(f"\nshipped model at 256 px, onnxruntime vs torch fp32 on {what}: {res.line()}")
    assert res.ok() and res.max_abs < 1e-3
    assert _run(OnnxFixTalk(model, tmp_path / "g"), src, drv, image)[2].shape[-1] == 256
    # Negative control: consecutive frames of one render are close but the 50 dB threshold still tells them apart.
    frames = _run(model, src, drv, image)[2]
    assert psnr_uint8(frames[:-1], frames[1:]) < TOLERANCE["psnr_db"]


def _close_frames(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[float, float]:
    """(mean absolute difference in levels, share of values off by more than 3 levels)."""
    d = np.abs(np.stack(a).astype(np.int16) - np.stack(b).astype(np.int16))
    return float(d.mean()), float((d > 3).mean())


def test_pipeline_and_stream_render_through_onnx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--backend onnx`: the same Pipeline and Stream code, graphs exported once into the cache."""
    from fixtalk.stream import SAMPLES_PER_FRAME, Stream

    monkeypatch.setenv("FIXTALK_ONNX_CACHE", str(tmp_path / "cache"))
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    pipes = [Pipeline.from_pretrained(ckpt, runtime=rt, batch_size=2, progress=False)
             for rt in (Runtime("cpu"), OnnxRuntime())]
    assert isinstance(pipes[1].model, OnnxFixTalk)
    (cached,) = (tmp_path / "cache").iterdir()
    stamp = (cached / "render.onnx").stat().st_mtime_ns
    assert ensure_graphs(pipes[0].model) == cached and (cached / "render.onnx").stat().st_mtime_ns == stamp
    rng = np.random.default_rng(0)
    crop = np.clip(rng.normal(128, 40, (16, 16, 3)), 0, 255).astype(np.uint8).repeat(8, 0).repeat(8, 1)
    lip = torch.from_numpy(rng.normal(0, 1, (5, 20)).astype(np.float32))
    audio = (0.1 * rng.standard_normal(SAMPLES_PER_FRAME * 12)).astype(np.float32)
    out: dict[str, list] = {"frames": [], "weak": [], "stream": []}
    assert [p.render_size for p in pipes] == [256, 256]  # the pixel path draws at 2 S on both backends
    for pipe in pipes:
        src = pipe.prepare_crop(crop, full=crop.repeat(2, 0).repeat(2, 1))
        own = src.state.motion
        drive = Drive(FactorTrack(lip, "x"), FactorTrack(own.pose, "source"),
                      FactorTrack(torch.from_numpy(pipe.bundle.expression_presets["happy"]), "happy"), 5)
        out["frames"].append(list(pipe.frames(src, drive, paste_back=False)))
        out["weak"].append(list(pipe.frames(src, drive, (0.3, 1, 1), paste_back=False)))
        stream = Stream(pipe, src, mouth="audio", pose="source", expression="happy", paste_back=False)
        out["stream"].append(stream.push(audio=audio) + stream.flush())
    for key in ("frames", "stream"):
        a, b = out[key]
        assert len(a) == len(b) > 4
        mean, share = _close_frames(a, b)
        print(f"{key}: torch vs onnx, mean {mean:.4f} levels, {share:.2%} off by > 3")
        assert mean < 0.1 and share < 0.005, (key, mean, share)
    mean, share = _close_frames(out["frames"][1], out["weak"][1])
    print(f"negative control: mouth strength 1 vs 0.3, mean {mean:.4f} levels, {share:.2%} off by > 3")
    assert mean > 0.5 and share > 0.01  # a different mouth strength fails the same comparison


def test_bench_reports_the_three_backends() -> None:
    from fixtalk.bench import backend_times

    model = _randomise(FixTalk(TINY.replace(rgb_warp=True))).eval()
    times = backend_times(model, 1, Runtime("cpu"), done=12.5)
    assert times["torch fp32"] == 12.5  # reused, not measured twice
    assert isinstance(times["torch bf16"], float) and isinstance(times["onnx"], float) and times["onnx"] > 0


def _one_line_error(capsys: pytest.CaptureFixture[str], rc: int, *needles: str) -> None:
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("fixtalk: "), err
    for n in needles:
        assert n in err, (n, err)


def test_cli_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    _one_line_error(capsys, main(["export-onnx", str(tmp_path / "nope"), str(tmp_path / "out")]),
                    str(tmp_path / "nope"))
    (tmp_path / "file").write_text("x")
    _one_line_error(capsys, main(["export-onnx", "shipped", str(tmp_path / "file")]), str(tmp_path / "file"),
                    "not a directory")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    _one_line_error(capsys, main(["export-onnx", "shipped", str(tmp_path / "full")]), "refusing")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    Image.new("RGB", (64, 64)).save(tmp_path / "face.png")
    base = ["--source", str(tmp_path / "face.png"), "--driving", str(tmp_path / "face.png")]
    anim = ["animate", *base, "--output", str(tmp_path / "o.mp4")]
    _one_line_error(capsys, main([*anim, "--backend", "onnx", "--dtype", "bf16"]), "fp32")
    _one_line_error(capsys, main([*anim, "--onnx", str(tmp_path)]), "--backend onnx")
    _one_line_error(capsys, main([*anim, "--backend", "onnx", "--tune", "3"]), "--tune")
    _one_line_error(capsys, main(["live", *base, "--backend", "onnx", "--device", "cuda"]), "CPU")
    assert not (tmp_path / "o.mp4").exists()


def test_onnx_dir_of_another_checkpoint_is_refused(tiny: tuple[FixTalk, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    _, graphs = tiny
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    Image.new("RGB", (64, 64)).save(tmp_path / "face.png")
    rc = main(["animate", "--source", str(tmp_path / "face.png"), "--driving", str(tmp_path / "face.png"),
               "--output", str(tmp_path / "o.mp4"), "--checkpoint", str(ckpt), "--backend", "onnx",
               "--onnx", str(graphs), "--quiet"])
    _one_line_error(capsys, rc, str(graphs / "manifest.json"), "other weights")


def test_export_check_prints_the_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    assert main(["export-onnx", str(ckpt), str(tmp_path / "g"), "--check", "--frames", "2"]) == 0
    out = capsys.readouterr().out
    numbers = re.search(r"max abs ([\d.e+-]+), mean abs ([\d.e+-]+), PSNR ([\d.]+|inf) dB", out)
    assert numbers and float(numbers[2]) <= TOLERANCE["mean_abs"] and "within the tolerance" in out, out


def test_render_size_of_the_graphs(tiny: tuple[FixTalk, Path], tmp_path: Path) -> None:
    """The renderer draws at the size it was exported for (default 2 S with the pixel path), from the portrait's
    crop at that size, as torch does; a graph set is refused for another size, and without a crop of that size
    the S crop is upsampled."""
    model, at_s = tiny
    graphs = export_graphs(model, tmp_path / "g")
    s = model.cfg.size
    assert json.loads((graphs / "manifest.json").read_text())["render_size"] == 2 * s
    src, drv = example_inputs(model.cfg, batch=2, seed=3)
    image = torch.nn.functional.interpolate(src, size=2 * s, mode="bilinear")
    res = compare(model, OnnxFixTalk(model, graphs), src, drv, image)
    assert res.ok() and res.max_abs < 2e-3, res.line()
    at_2s = _run(OnnxFixTalk(model, graphs), src, drv)[2]  # no crop at 2 S: the S crop upsampled
    assert at_2s.shape[-1] == 2 * s and _run(OnnxFixTalk(model, at_s), src, drv)[2].shape[-1] == s
    with pytest.raises(InputError, match=f"draw at {2 * s} px, not {s}"):
        ensure_graphs(model, graphs, render_size=s)
    with pytest.raises(ValueError, match="at least the model's size"):
        export_graphs(model, tmp_path / "small", s // 2)
    plain = _randomise(FixTalk(TINY)).eval()
    with pytest.raises(ValueError, match="pixel path"):
        export_graphs(plain, tmp_path / "plain", 2 * s)


def test_onnx_dir_sets_the_render_size(tiny: tuple[FixTalk, Path], tmp_path: Path) -> None:
    """--onnx DIR without --render-size draws at the size DIR was exported for; with another size, one line."""
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    from fixtalk.checkpoint import load_bundle

    bundle = load_bundle(ckpt)
    graphs = export_graphs(bundle.model, tmp_path / "g", bundle.model.cfg.size)
    pipe = Pipeline(bundle, runtime=OnnxRuntime(graphs), progress=False)
    assert pipe.render_size == bundle.model.cfg.size and isinstance(pipe.model, OnnxFixTalk)
    with pytest.raises(InputError, match="export them with"):
        Pipeline(bundle, runtime=OnnxRuntime(graphs), progress=False, render_size=2 * bundle.model.cfg.size)


def test_onnx_renders_frames_side_by_side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--backend onnx renders one frame per thread at once by default, as torch does on a CPU, and the frames
    are those of one frame at a time."""
    from fixtalk.options import RuntimeOptions

    monkeypatch.setenv("FIXTALK_ONNX_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    try:
        side = RuntimeOptions(backend="onnx", threads=2).runtime()
    finally:
        torch.set_num_threads(threads)
    assert (side.workers, side.threads_each) == (2, 1) and "2 frames at once x 1 thread" in side.describe()
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    crop = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    frames = []
    for rt in (OnnxRuntime(threads=1), side):
        pipe = Pipeline.from_pretrained(ckpt, runtime=rt, progress=False)
        src = pipe.prepare_crop(crop, full=crop.repeat(2, 0).repeat(2, 1))
        lip = torch.from_numpy(np.random.default_rng(2).normal(0, 1, (6, 20)).astype(np.float32))
        own = src.state.motion
        drive = Drive(FactorTrack(lip, "x"), FactorTrack(own.pose, "source"), FactorTrack(own.exp, "source"), 6)
        frames.append(np.stack(list(pipe.frames(src, drive, paste_back=False))))
    assert frames[0].shape == (6, 256, 256, 3) and np.array_equal(frames[0], frames[1])
    assert not np.array_equal(frames[0][0], frames[0][-1])  # the mouth moves: the frames are not all one
