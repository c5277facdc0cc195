"""The generic training loop of every stage (docs/architecture.md 5; docs/architecture.md, Conventions 8).

* Adam as EDTalk: G lr 0.002 * 4/5, betas (0, 0.99^(4/5)); D lr 0.002 * 16/17, betas (0, 0.99^(16/17));
  non-saturating GAN, no R1 / path-length regularisation (docs/architecture.md 4.2, 5). bf16 autocast on CUDA.
  Optional (train/recipe.py, off by default): a Projected GAN D, lazy R1, an EMA of G (final/ + final_raw/).
* One step = generator step (D frozen) then discriminator step on the same, detached fakes (LIA/EDTalk order).
* Multi-GPU / multi-node with `torchrun`: DDP (NCCL on GPU, gloo on CPU) around `StageLosses` (one forward per
  step) and `DiscriminatorLoss`; `EpochSampler` = DistributedSampler that resumes mid-epoch.
* RUN/checkpoint.pt (model, D, optimisers, step, config, per-rank RNG) is written atomically every
  `save_every` steps, at the end and on SIGTERM/SIGINT; re-running the same command resumes from it. The
  finished model is exported as a fixtalk checkpoint (save_bundle) to RUN/final/.
* Stops at --max-steps or when --time-budget of training time (summed over resumes) is spent.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from fixtalk.checkpoint import Bundle, save_bundle
from fixtalk.config import ModelConfig
from fixtalk.errors import InputError
from fixtalk.models.audio2lip import Audio2Lip
from fixtalk.models.backbones import load_backbone
from fixtalk.models.fixtalk import FixTalk
from fixtalk.train import lip_targets, loudness_fit
from fixtalk.train import recipe as R
from fixtalk.train import setup as S
from fixtalk.train.data import AudioDataset, Clip, ClipDataset, EpochSampler, read_clips
from fixtalk.train.ema import Ema
from fixtalk.train.logs import RunLogger
from fixtalk.train.options import D_BETAS, D_LR, TrainOptions
from fixtalk.train.stages import DiscriminatorLoss, StageLosses
from fixtalk.train.syncnet import SyncNetColor, load_syncnet


@dataclass
class DistEnv:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @classmethod
    def start(cls) -> DistEnv:
        """From torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK); a single process otherwise."""
        world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available()
        device = torch.device("cuda", local) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
        return cls(rank, world, local, device)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier(device_ids=[self.local_rank]) if self.device.type == "cuda" else dist.barrier()

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


class _Signals:
    """SIGTERM/SIGINT set a flag; the loop checkpoints at the next step boundary and exits."""

    def __init__(self) -> None:
        self.hit = False
        main_thread = threading.current_thread() is threading.main_thread()  # signal() works only there
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)} if main_thread else {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.hit = True

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}


def _check_resume(run: Path, stored: dict[str, Any], opts: TrainOptions) -> None:
    mine = json.loads(json.dumps(opts.to_dict()))
    for key, old in stored["options"].items():
        if key not in TrainOptions.RESUMABLE_CHANGES and mine.get(key) != old:
            raise InputError(run, f"holds a run with {key}={old!r}, this command has {mine.get(key)!r}; "
                                  "use the same options to resume, or a new --out")


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def train(opts: TrainOptions, dry_run: bool = False) -> int:
    """Run (or resume) one stage; returns the process exit code (130 when interrupted)."""
    env = DistEnv.start()
    try:
        return _train(opts, env, dry_run)
    finally:
        env.close()


@dataclass
class _Built:
    """What `_build` resolves before anything is written: models, data and the run's resolved config."""

    run: Path
    main: bool
    ck: dict[str, Any] | None
    cfg: ModelConfig
    model: FixTalk
    d: nn.Module | None
    a2l: Audio2Lip | None
    named: list[tuple[str, nn.Parameter]]
    presets: dict[str, Any]
    init_report: dict[str, str]
    clips: list[Clip]
    dataset: ClipDataset
    sampler: EpochSampler
    steps_per_epoch: int
    bf16: bool
    resolved: dict[str, Any]


@dataclass
class _State:
    """The mutable training state that a checkpoint saves and `_restore` loads."""

    step: int
    elapsed0: float
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer | None
    ema: Ema | None = None  # --ema-halflife: the average of the trained weights (train/ema.py)


def _say(main: bool) -> Any:
    return print if main else (lambda *a, **k: None)


def _build_models(opts: TrainOptions, env: DistEnv, ck: dict[str, Any] | None, init: S.InitWeights | None,
                  cfg: ModelConfig) -> tuple[FixTalk, nn.Module | None, Audio2Lip | None, dict[str, str]]:
    torch.manual_seed(opts.seed + env.rank)
    model = FixTalk(cfg)
    # --loss-weight gan=0 drops D altogether (no wasted D passes; L1 + perceptual only).
    d = R.make_discriminator(opts, cfg)
    has_a2l = opts.stage == "audio2lip" or (init is not None and init.audio2lip is not None) or \
        (ck is not None and ck.get("audio2lip") is not None)
    a2l = Audio2Lip(cfg.lip_dim, cfg.loudness_mouth) if has_a2l else None
    init_report = {}
    if init is not None:
        init_report["model"] = S.partial_load(model, init.model)
        if d is not None and init.d is not None:
            init_report["d"] = S.partial_load(d, init.d)
        if a2l is not None and init.audio2lip is not None:
            init_report["audio2lip"] = S.partial_load(a2l, init.audio2lip)
    return model, d, a2l, init_report


def _set_trainable(opts: TrainOptions, model: FixTalk, a2l: Audio2Lip | None) -> list[tuple[str, nn.Parameter]]:
    named = list(model.named_parameters()) + ([] if a2l is None else list(a2l.named_parameters(prefix="audio2lip")))
    trained = S.set_trainable(named, opts.trainable_prefixes, strict=opts.trainable is not None)
    if opts.stage == "audio2lip":
        model.eval()  # frozen generator: cached bases; Audio2Lip's BatchNorms stay in train mode
    if a2l is not None and not any(n.startswith("audio2lip.audio_encoder") for n in trained):
        a2l.audio_encoder.eval()  # a frozen encoder keeps its BatchNorm statistics (EDTalk freezes it)
    return named


def _precision(opts: TrainOptions, env: DistEnv) -> bool:
    """Whether to train under bf16 autocast; says which on CPUs."""
    bf16 = opts.precision == "bf16" or (opts.precision == "auto" and env.device.type == "cuda")
    if env.device.type == "cpu" and env.rank == 0:
        from fixtalk.runtime import cpu_description

        name, units = cpu_description()
        # Auto stays fp32 on CPUs: with per-sample modulated weights bf16 is not faster yet, even with AMX
        # (scripts/bench_train_step.py measures both on the same batch; the performance issue tracks it).
        print(f"fixtalk train: precision {'bf16 autocast' if bf16 else 'fp32'} on {name} "
              f"(bf16 units: {', '.join(units) or 'none'})")
    return bf16


def _resolved(opts: TrainOptions, env: DistEnv, b: _Built, problems: list[str]) -> dict[str, Any]:
    """The run's config.json (and the checkpoint's "config", which a resume compares against)."""
    lr, d_lr = opts.lr or opts.preset_of_stage.lr, opts.d_lr or D_LR
    return {
        "stage": opts.stage, "options": json.loads(json.dumps(opts.to_dict())), "model": b.cfg.to_dict(),
        "world_size": env.world, "precision": "bf16" if b.bf16 else "fp32",
        "optim": {"g": {"lr": lr, "betas": opts.preset_of_stage.betas},
                  "d": {"lr": d_lr, "betas": D_BETAS} if b.d else None},
        "params": {"trainable": sum(p.numel() for n, p in b.named if p.requires_grad),
                   "frozen": sum(p.numel() for n, p in b.named if not p.requires_grad),
                   "discriminator": sum(p.numel() for p in R.d_parameters(b.d)) if b.d else 0},
        "trainable_prefixes": list(opts.trainable_prefixes), "init": {"from": opts.init, **b.init_report},
        "data": {"clips": len(b.dataset.clips), "split": opts.data_split, "kind": opts.preset_of_stage.data,
                 "missing": problems, "steps_per_epoch": b.steps_per_epoch},
    }


def _build(opts: TrainOptions, env: DistEnv) -> _Built:
    """Models (from --init or fresh), data and resolved config; reads the run's checkpoint, writes nothing."""
    run = Path(opts.out)
    ck = S.load_checkpoint(run / S.CKPT) if (run / S.CKPT).is_file() else None
    stored = json.loads(ck["config"]) if ck is not None else None
    if stored is not None:
        _check_resume(run, stored, opts)
    init = S.read_init(opts.init) if opts.init and ck is None else None
    cfg = S.resolve_model_config(opts, init, stored)
    model, d, a2l, init_report = _build_models(opts, env, ck, init, cfg)
    named = _set_trainable(opts, model, a2l)
    clips, problems = read_clips(opts.data, opts.data_split)
    for line in problems:
        _say(env.rank == 0)(f"fixtalk train: skipping clip {line}", file=sys.stderr)
    # An epoch is only a sampling unit (items draw random frames): small data sets (finetune on one video) get
    # at least 50 steps per epoch so the loader is not restarted every step.
    dataset = S.make_dataset(opts, clips, cfg.size, min_length=50 * opts.batch_size * env.world)
    sampler = EpochSampler(dataset, env.world, env.rank, opts.seed)
    b = _Built(run, env.rank == 0, ck, cfg, model, d, a2l, named, dict(init.presets) if init is not None else {},
               init_report, clips, dataset, sampler, sampler.num_samples // opts.batch_size, _precision(opts, env),
               {})
    b.resolved = _resolved(opts, env, b, problems)
    return b


def _restore(opts: TrainOptions, env: DistEnv, b: _Built, log: RunLogger) -> _State:
    """Loads the run's checkpoint (if any) into models, optimisers and RNGs; moves the models to the device."""
    ck = b.ck
    step, elapsed0 = 0, 0.0
    if ck is not None:
        b.model.load_state_dict(ck["model"])
        if b.d is not None and ck.get("d") is not None:
            b.d.load_state_dict(ck["d"])
        if b.a2l is not None and ck.get("audio2lip") is not None:
            b.a2l.load_state_dict(ck["audio2lip"])
        step, elapsed0 = int(ck["step"]), float(ck["elapsed"])
        b.presets = {k: torch.tensor(v).view(1, -1).numpy() for k, v in ck.get("presets", {}).items()}
    for m in (b.model, b.d, b.a2l):
        if m is not None:
            m.to(env.device)
    lr, d_lr = opts.lr or opts.preset_of_stage.lr, opts.d_lr or D_LR
    # The pixel path's head starts at zero and must learn a flow from the motion difference: 10x lr
    # (opts.pixel_lr_mult; docs/quality.md). One group per lr, so the optimiser state keeps its layout.
    pixel = [p for n, p in b.named if p.requires_grad and n.startswith("dec.pixel_warp.")]
    rest = [p for n, p in b.named if p.requires_grad and not n.startswith("dec.pixel_warp.")]
    groups = [{"params": rest}] + ([{"params": pixel, "lr": lr * opts.pixel_lr_mult}] if pixel else [])
    opt_g = torch.optim.Adam(groups, lr=lr, betas=opts.preset_of_stage.betas)
    opt_d = torch.optim.Adam(R.d_parameters(b.d), lr=d_lr, betas=D_BETAS) if b.d is not None else None
    if ck is None:
        log.event(0, "start", world_size=env.world, init=b.init_report)
        return _State(step, elapsed0, opt_g, opt_d)
    opt_g.load_state_dict(ck["opt_g"])
    if opt_d is not None and ck.get("opt_d") is not None:
        opt_d.load_state_dict(ck["opt_d"])
    rngs = ck.get("rng") or []
    if len(rngs) == env.world:
        torch.set_rng_state(rngs[env.rank]["torch"])
        if rngs[env.rank]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(rngs[env.rank]["cuda"])
    _say(b.main)(f"fixtalk train: resuming {b.run / S.CKPT} at step {step}")
    log.event(step, "resume", elapsed=elapsed0)
    return _State(step, elapsed0, opt_g, opt_d)


def _checkpoint(env: DistEnv, b: _Built, st: _State, log: RunLogger, elapsed: float) -> None:
    """Writes RUN/checkpoint.pt (on rank 0, with every rank's RNG state); all ranks wait for it."""
    rngs: list[Any] = [None] * env.world
    if env.world > 1:
        dist.all_gather_object(rngs, _rng_state())
    else:
        rngs = [_rng_state()]
    if b.main:
        S.save_checkpoint(b.run, {
            "step": st.step, "elapsed": elapsed, "config": json.dumps(b.resolved), "model": b.model.state_dict(),
            "d": None if b.d is None else b.d.state_dict(), "audio2lip": None if b.a2l is None else b.a2l.state_dict(),
            "opt_g": st.opt_g.state_dict(), "opt_d": None if st.opt_d is None else st.opt_d.state_dict(),
            "rng": rngs, "presets": S.presets_to_lists(b.presets),
            **({"ema": st.ema.state_dict()} if st.ema is not None else {})})
        log.event(st.step, "checkpoint", elapsed=round(elapsed, 2))
    env.barrier()


@dataclass
class _Steps:
    """The per-step machinery: the (possibly DDP-wrapped) losses, autocast and the stop signals."""

    g_run: Any
    d_run: Any
    autocast: Any
    signals: _Signals
    t0: float = 0.0  # time.monotonic() when this process started stepping


def _steps(opts: TrainOptions, env: DistEnv, b: _Built, backbone: nn.Module, syncnet: SyncNetColor | None) -> _Steps:
    g_loss = StageLosses(opts, b.model, b.a2l, b.d, backbone, syncnet)
    d_loss = DiscriminatorLoss(b.d, opts.r1) if b.d is not None else None
    g_run: Any = g_loss
    d_run: Any = d_loss
    if env.world > 1:
        ids = [env.local_rank] if env.device.type == "cuda" else None
        g_run = DDP(g_loss, device_ids=ids, find_unused_parameters=True)
        d_run = DDP(d_loss, device_ids=ids) if d_loss is not None else None
    # bf16 autocast (on CPU only when asked for: it exercises the same code path, slowly).
    autocast = (lambda: torch.autocast(env.device.type, dtype=torch.bfloat16)) if b.bf16 else nullcontext
    return _Steps(g_run, d_run, autocast, _Signals())


def _step(opts: TrainOptions, env: DistEnv, b: _Built, st: _State, sx: _Steps, batch: dict[str, Any],
          elapsed: float) -> tuple[dict[str, torch.Tensor], Any, torch.Tensor, float]:
    """One G step then one D step on the same detached fakes (`elapsed`: training time before it). Returns
    logs, samples, the stop flags (non-finite loss, signal, time budget) reduced over ranks, and the training
    time after it; the update is skipped on a non-finite loss."""
    batch = _to(batch, env.device)
    progress = max(st.step / opts.max_steps if opts.max_steps else 0.0,
                   elapsed / opts.time_budget if opts.time_budget else 0.0)
    if b.d is not None:
        b.d.requires_grad_(False)
    with sx.autocast():
        loss, logs, real, fake, samples = sx.g_run(batch, progress)
    st.opt_g.zero_grad(set_to_none=True)
    loss.backward()
    d_logs: dict[str, torch.Tensor] = {}
    opt_d = st.opt_d if sx.d_run is not None and real is not None and fake is not None else None
    if opt_d is not None:
        assert b.d is not None  # opt_d exists only with D
        b.d.requires_grad_(True)
        with sx.autocast():
            dl, d_logs = sx.d_run(real.detach(), fake.detach(), R.r1_scale(opts, st.step))
        opt_d.zero_grad(set_to_none=True)
        dl.backward()
    elapsed = st.elapsed0 + time.monotonic() - sx.t0
    flags = torch.tensor([float(not torch.isfinite(loss.detach()).item()), float(sx.signals.hit),
                          float(opts.time_budget is not None and elapsed >= opts.time_budget)])
    if env.world > 1:
        flags = flags.to(env.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        flags = flags.cpu()
    if flags[0] == 0:
        st.opt_g.step()
        if st.ema is not None:
            st.ema.update()
        if opt_d is not None:
            opt_d.step()
    return {**logs, **d_logs}, samples, flags, elapsed


def _log_bad(batch: dict[str, Any], bad_seen: set[str], env: DistEnv, step: int, log: RunLogger) -> None:
    from tqdm import tqdm

    for line in batch.pop("bad"):
        for item in filter(None, line.split("; ")):
            if item not in bad_seen:
                bad_seen.add(item)
                tqdm.write(f"fixtalk train: rank {env.rank}: skipped bad clip {item}", file=sys.stderr)
                log.event(step, "bad_clip", detail=item)


def _stop_reason(opts: TrainOptions, step: int, flags: torch.Tensor) -> str:
    if opts.max_steps is not None and step >= opts.max_steps:
        return "max-steps"
    if flags[2] > 0:
        return "time-budget"
    return "interrupted" if flags[1] > 0 else ""


class _Progress:
    """The progress bar and the loss averages written every --log-every steps (rank 0)."""

    def __init__(self, opts: TrainOptions, b: _Built, step: int, log: RunLogger) -> None:
        from tqdm import tqdm

        self.opts, self.main, self.log = opts, b.main, log
        self.bar = tqdm(total=opts.max_steps, initial=step, disable=not b.main, desc=f"train {opts.stage}",
                        unit="step", dynamic_ncols=True)
        self.sums: dict[str, torch.Tensor] = {}
        self.n_logged = 0

    def update(self, step: int, logs: dict[str, torch.Tensor], samples: Any, elapsed: float) -> None:
        opts = self.opts
        self.bar.update()
        for k, v in logs.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.detach().float()
        self.n_logged += 1
        if self.main and (step % opts.log_every == 0 or step == 1):
            values = {f"loss/{k}": float(v) / self.n_logged for k, v in self.sums.items()}
            self.log.scalars(step, values, elapsed)
            post = {"loss": f"{values.get('loss/total', 0.0):.3f}"}
            if opts.time_budget is not None:  # the bar's ETA needs --max-steps; show the budget left too
                post["left"] = time.strftime("%H:%M:%S", time.gmtime(max(0.0, opts.time_budget - elapsed)))
            self.bar.set_postfix(post, refresh=False)
            self.sums, self.n_logged = {}, 0
        if self.main and (step % opts.sample_every == 0 or step == 1):
            self.log.images(step, samples)


def _loop(opts: TrainOptions, env: DistEnv, b: _Built, st: _State, sx: _Steps,
          log: RunLogger) -> tuple[str, float, int]:
    """Steps until --max-steps, the time budget or a signal, checkpointing every --save-every steps and at
    the stop; returns the stop reason, the training time and the number of skipped (non-finite) steps."""
    progress = _Progress(opts, b, st.step, log)
    bad_seen: set[str] = set()
    skipped = 0
    sx.t0 = time.monotonic()
    elapsed = st.elapsed0
    stop = "" if opts.max_steps is None or st.step < opts.max_steps else "max-steps"
    if opts.time_budget is not None and st.elapsed0 >= opts.time_budget:
        stop = "time-budget"
    epoch, offset = divmod(st.step, max(1, b.steps_per_epoch))
    # Its own generator: creating an iterator would otherwise draw from the global RNG (the curriculum's
    # coin flips), and a resumed run, which creates one more iterator, would drift from an uninterrupted one.
    loader = DataLoader(b.dataset, batch_size=opts.batch_size, sampler=b.sampler, num_workers=opts.workers,
                        drop_last=True, pin_memory=env.device.type == "cuda", persistent_workers=opts.workers > 0,
                        generator=torch.Generator().manual_seed(opts.seed + env.rank))
    while not stop:
        b.sampler.set_epoch(epoch)  # the sampler runs in this process: persistent workers see the new order
        b.sampler.skip, offset = offset * opts.batch_size, 0
        for batch in loader:
            _log_bad(batch, bad_seen, env, st.step, log)
            logs, samples, flags, elapsed = _step(opts, env, b, st, sx, batch, elapsed)
            if flags[0] > 0:
                skipped += 1  # a non-finite loss on any rank: no update anywhere (grads were averaged)
                log.event(st.step, "non_finite_loss", skipped=skipped)
            st.step += 1
            progress.update(st.step, logs, samples, elapsed)
            stop = _stop_reason(opts, st.step, flags)
            if stop or st.step % opts.save_every == 0:
                _checkpoint(env, b, st, log, elapsed)
            if stop:
                break
        epoch += 1
    progress.bar.close()
    sx.signals.restore()
    return stop, elapsed, skipped


def _train(opts: TrainOptions, env: DistEnv, dry_run: bool) -> int:
    b = _build(opts, env)
    say = _say(b.main)
    if dry_run:
        say(json.dumps(b.resolved, indent=2))
        say(f"dry run: stage {opts.stage} ({opts.preset_of_stage.summary}); nothing written")
        return 0
    backbone = load_backbone(opts.perceptual, opts.vgg19 if opts.perceptual == "vgg19" else None).to(env.device)
    syncnet = load_syncnet(opts.syncnet).to(env.device) if opts.syncnet and opts.stage == "audio2lip" else None
    if b.main:
        b.run.mkdir(parents=True, exist_ok=True)
        (b.run / "config.json").write_text(json.dumps(b.resolved, indent=2))
    env.barrier()
    log = RunLogger(b.run, b.main)
    if opts.stage == "audio2lip" and syncnet is None:
        say("fixtalk train: SyncNet loss skipped (no --syncnet weights, Wav2Lip lipsync_expert.pth)")
        log.event(0, "note", text="SyncNet loss skipped: no --syncnet weights")
    st = _restore(opts, env, b, log)
    st.ema = R.make_ema(opts, b.model, b.a2l, b.ck)
    if isinstance(b.dataset, AudioDataset):  # the frozen generator's mouth weights, once (train/lip_targets.py)
        b.dataset.targets = lip_targets.load_or_compute(b.run, b.model, b.dataset.clips, b.cfg.size, env.device,
                                                        b.main, env.barrier)
    sx = _steps(opts, env, b, backbone, syncnet)
    stop, elapsed, skipped = _loop(opts, env, b, st, sx, log)
    if stop == "interrupted":
        say(f"fixtalk train: interrupted at step {st.step}; checkpoint saved, re-run the same command to resume")
        log.close()
        return 130
    _finish(opts, env, b, st, log, stop, elapsed, skipped)
    return 0


def _fit_loudness(opts: TrainOptions, env: DistEnv, b: _Built) -> loudness_fit.LoudnessFit | None:
    """The audio2lip stage ends by fitting the loudness mouth (fixtalk.train.loudness_fit) when the config has
    one; without a fit (the reason is printed) it stays silent (zero gain)."""
    if opts.stage != "audio2lip" or not b.cfg.loudness_mouth or not isinstance(b.dataset, AudioDataset):
        return None
    result = loudness_fit.fit(b.model, b.dataset.clips, b.dataset.targets, b.cfg.size, env.device)
    if isinstance(result, str):
        print(f"fixtalk train: no loudness mouth: {result}")
        return None
    print(f"fixtalk train: {result.summary()}")
    return result


def _finish(opts: TrainOptions, env: DistEnv, b: _Built, st: _State, log: RunLogger, stop: str, elapsed: float,
            skipped: int) -> None:
    """Exports the model (with expression presets) to RUN/final/ (with --ema-halflife: the EMA weights, and the
    raw ones to RUN/final_raw/) and closes the log."""
    step = st.step
    if b.main:
        if S.moves_motion_heads(opts.stage) and b.a2l is not None:
            print("fixtalk train: this stage moved the mouth bank Audio2Lip was fitted to; re-fit it with "
                  "`fixtalk train --stage audio2lip`")
        fitted = _fit_loudness(opts, env, b)
        for folder, model, a2l in R.exports(st.ema, b.model, b.a2l):
            if fitted is not None and a2l is not None and a2l.loudness is not None:
                fitted.apply(a2l.loudness)
            presets = dict(b.presets)
            # Presets are means of the expression head's output: stale as soon as E, the FDM heads or EMI moved,
            # and computed per export (the EMA's heads are not the raw ones).
            if S.moves_motion_heads(opts.stage) and b.cfg.has_expression:
                presets.update(S.expression_presets(model, b.clips, b.cfg.size, env.device))
            save_bundle(Bundle(model, a2l, presets), b.run / folder)
            what = "" if st.ema is None else (" (EMA weights)" if folder == "final" else " (raw weights)")
            print(f"fixtalk train: {opts.stage} done at step {step} ({stop}); model exported to "
                  f"{b.run / folder}{what}")
        log.event(step, "final", reason=stop, elapsed=round(elapsed, 2), skipped_steps=skipped,
                  ema=st.ema is not None)
    if env.world > 1:  # lets a user (and the tests) see that every rank ran and stayed in sync
        checksum = sum(float(p.detach().double().sum()) for _, p in b.named)
        print(f"fixtalk train: rank {env.rank}/{env.world} finished at step {step} "
              f"(parameter checksum {checksum:.6f})", flush=True)
    log.close()
    env.barrier()
