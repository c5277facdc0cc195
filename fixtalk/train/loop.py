"""The generic training loop of every stage (architecture.md 5; conventions.md item 8).

* Adam as EDTalk: G lr 0.002 * 4/5, betas (0, 0.99^(4/5)); D lr 0.002 * 16/17, betas (0, 0.99^(16/17));
  non-saturating GAN, no R1 / path-length regularisation (architecture.md 4.2, 5). bf16 autocast on CUDA.
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
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from fixtalk.checkpoint import Bundle, save_bundle
from fixtalk.errors import InputError
from fixtalk.models.audio2lip import Audio2Lip
from fixtalk.models.backbones import load_backbone
from fixtalk.models.discriminator import Discriminator
from fixtalk.models.fixtalk import FixTalk
from fixtalk.train import setup as S
from fixtalk.train.data import EpochSampler, read_clips
from fixtalk.train.logs import RunLogger
from fixtalk.train.options import D_BETAS, D_LR, G_BETAS, G_LR, TrainOptions
from fixtalk.train.stages import DiscriminatorLoss, StageLosses
from fixtalk.train.syncnet import load_syncnet


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


def _train(opts: TrainOptions, env: DistEnv, dry_run: bool) -> int:
    run = Path(opts.out)
    main = env.rank == 0
    say = print if main else (lambda *a, **k: None)
    ck = S.load_checkpoint(run / S.CKPT) if (run / S.CKPT).is_file() else None
    stored = json.loads(ck["config"]) if ck is not None else None
    if stored is not None:
        _check_resume(run, stored, opts)
    init = S.read_init(opts.init) if opts.init and ck is None else None
    cfg = S.resolve_model_config(opts, init, stored)
    preset = opts.preset_of_stage

    torch.manual_seed(opts.seed + env.rank)
    model = FixTalk(cfg)
    # --loss-weight gan=0 drops D altogether (no wasted D passes; L1 + perceptual only).
    d = Discriminator(cfg) if preset.uses_d and opts.weights.gan > 0 else None
    has_a2l = opts.stage == "audio2lip" or (init is not None and init.audio2lip is not None) or \
        (ck is not None and ck.get("audio2lip") is not None)
    a2l = Audio2Lip(cfg.lip_dim) if has_a2l else None
    presets = dict(init.presets) if init is not None else {}
    init_report = {}
    if init is not None:
        init_report["model"] = S.partial_load(model, init.model)
        if d is not None and init.d is not None:
            init_report["d"] = S.partial_load(d, init.d)
        if a2l is not None and init.audio2lip is not None:
            init_report["audio2lip"] = S.partial_load(a2l, init.audio2lip)
    named = list(model.named_parameters()) + ([] if a2l is None else list(a2l.named_parameters(prefix="audio2lip")))
    trained = S.set_trainable(named, opts.trainable_prefixes, strict=opts.trainable is not None)
    if opts.stage == "audio2lip":
        model.eval()  # frozen generator: cached bases; Audio2Lip's BatchNorms stay in train mode
    if a2l is not None and not any(n.startswith("audio2lip.audio_encoder") for n in trained):
        a2l.audio_encoder.eval()  # a frozen encoder keeps its BatchNorm statistics (EDTalk freezes it)

    clips, problems = read_clips(opts.data, opts.data_split)
    for line in problems:
        say(f"fixtalk train: skipping clip {line}", file=sys.stderr)
    # An epoch is only a sampling unit (items draw random frames): small data sets (finetune on one video) get
    # at least 50 steps per epoch so the loader is not restarted every step.
    dataset = S.make_dataset(opts, clips, cfg.size, min_length=50 * opts.batch_size * env.world)
    sampler = EpochSampler(dataset, env.world, env.rank, opts.seed)
    steps_per_epoch = sampler.num_samples // opts.batch_size
    bf16 = opts.precision == "bf16" or (opts.precision == "auto" and env.device.type == "cuda")
    if env.device.type == "cpu" and main:
        from fixtalk.runtime import cpu_description

        name, units = cpu_description()
        # Auto stays fp32 on CPUs: with per-sample modulated weights bf16 is not faster yet, even with AMX
        # (scripts/bench_train_step.py measures both on the same batch; the performance issue tracks it).
        say(f"fixtalk train: precision {'bf16 autocast' if bf16 else 'fp32'} on {name} "
            f"(bf16 units: {', '.join(units) or 'none'})")
    lr, d_lr = opts.lr or G_LR, opts.d_lr or D_LR
    resolved = {
        "stage": opts.stage, "options": json.loads(json.dumps(opts.to_dict())), "model": cfg.to_dict(),
        "world_size": env.world, "precision": "bf16" if bf16 else "fp32",
        "optim": {"g": {"lr": lr, "betas": G_BETAS}, "d": {"lr": d_lr, "betas": D_BETAS} if d else None},
        "params": {"trainable": sum(p.numel() for n, p in named if p.requires_grad),
                   "frozen": sum(p.numel() for n, p in named if not p.requires_grad),
                   "discriminator": sum(p.numel() for p in d.parameters()) if d else 0},
        "trainable_prefixes": list(opts.trainable_prefixes), "init": {"from": opts.init, **init_report},
        "data": {"clips": len(dataset.clips), "split": opts.data_split, "kind": preset.data,
                 "missing": problems, "steps_per_epoch": steps_per_epoch},
    }
    if dry_run:
        say(json.dumps(resolved, indent=2))
        say(f"dry run: stage {opts.stage} ({preset.summary}); nothing written")
        return 0

    backbone = load_backbone(opts.perceptual, opts.vgg19 if opts.perceptual == "vgg19" else None).to(env.device)
    syncnet = load_syncnet(opts.syncnet).to(env.device) if opts.syncnet and opts.stage == "audio2lip" else None
    if main:
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.json").write_text(json.dumps(resolved, indent=2))
    env.barrier()
    log = RunLogger(run, main)
    if opts.stage == "audio2lip" and syncnet is None:
        say("fixtalk train: SyncNet loss skipped (no --syncnet weights, Wav2Lip lipsync_expert.pth)")
        log.event(0, "note", text="SyncNet loss skipped: no --syncnet weights")

    step, elapsed0 = 0, 0.0
    if ck is not None:
        model.load_state_dict(ck["model"])
        if d is not None and ck.get("d") is not None:
            d.load_state_dict(ck["d"])
        if a2l is not None and ck.get("audio2lip") is not None:
            a2l.load_state_dict(ck["audio2lip"])
        step, elapsed0 = int(ck["step"]), float(ck["elapsed"])
        presets = {k: torch.tensor(v).view(1, -1).numpy() for k, v in ck.get("presets", {}).items()}
    model.to(env.device)
    if d is not None:
        d.to(env.device)
    if a2l is not None:
        a2l.to(env.device)
    # The pixel path's head starts at zero and must learn a flow from the motion difference: 10x lr
    # (opts.pixel_lr_mult; docs/quality.md). One group per lr, so the optimiser state keeps its layout.
    pixel = [p for n, p in named if p.requires_grad and n.startswith("dec.pixel_warp.")]
    rest = [p for n, p in named if p.requires_grad and not n.startswith("dec.pixel_warp.")]
    groups = [{"params": rest}] + ([{"params": pixel, "lr": lr * opts.pixel_lr_mult}] if pixel else [])
    opt_g = torch.optim.Adam(groups, lr=lr, betas=G_BETAS)
    opt_d = torch.optim.Adam(d.parameters(), lr=d_lr, betas=D_BETAS) if d is not None else None
    if ck is not None:
        opt_g.load_state_dict(ck["opt_g"])
        if opt_d is not None and ck.get("opt_d") is not None:
            opt_d.load_state_dict(ck["opt_d"])
        rngs = ck.get("rng") or []
        if len(rngs) == env.world:
            torch.set_rng_state(rngs[env.rank]["torch"])
            if rngs[env.rank]["cuda"] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state(rngs[env.rank]["cuda"])
        say(f"fixtalk train: resuming {run / S.CKPT} at step {step}")
        log.event(step, "resume", elapsed=elapsed0)
    else:
        log.event(0, "start", world_size=env.world, init=init_report)

    g_loss = StageLosses(opts, model, a2l, d, backbone, syncnet)
    d_loss = DiscriminatorLoss(d) if d is not None else None
    g_run: Any = g_loss
    d_run: Any = d_loss
    if env.world > 1:
        ids = [env.local_rank] if env.device.type == "cuda" else None
        g_run = DDP(g_loss, device_ids=ids, find_unused_parameters=True)
        d_run = DDP(d_loss, device_ids=ids) if d_loss is not None else None
    # bf16 autocast (on CPU only when asked for: it exercises the same code path, slowly).
    autocast = (lambda: torch.autocast(env.device.type, dtype=torch.bfloat16)) if bf16 else nullcontext

    def checkpoint(elapsed: float) -> None:
        rngs: list[Any] = [None] * env.world
        if env.world > 1:
            dist.all_gather_object(rngs, _rng_state())
        else:
            rngs = [_rng_state()]
        if main:
            S.save_checkpoint(run, {
                "step": step, "elapsed": elapsed, "config": json.dumps(resolved), "model": model.state_dict(),
                "d": None if d is None else d.state_dict(), "audio2lip": None if a2l is None else a2l.state_dict(),
                "opt_g": opt_g.state_dict(), "opt_d": None if opt_d is None else opt_d.state_dict(),
                "rng": rngs, "presets": S.presets_to_lists(presets)})
            log.event(step, "checkpoint", elapsed=round(elapsed, 2))
        env.barrier()

    from tqdm import tqdm

    bar = tqdm(total=opts.max_steps, initial=step, disable=not main, desc=f"train {opts.stage}", unit="step",
               dynamic_ncols=True)
    signals = _Signals()
    sums: dict[str, torch.Tensor] = {}
    n_logged, bad_seen, skipped = 0, set(), 0
    t0 = time.monotonic()
    elapsed = elapsed0
    stop = "" if opts.max_steps is None or step < opts.max_steps else "max-steps"
    if opts.time_budget is not None and elapsed0 >= opts.time_budget:
        stop = "time-budget"
    epoch, offset = divmod(step, max(1, steps_per_epoch))
    # Its own generator: creating an iterator would otherwise draw from the global RNG (the curriculum's
    # coin flips), and a resumed run, which creates one more iterator, would drift from an uninterrupted one.
    loader = DataLoader(dataset, batch_size=opts.batch_size, sampler=sampler, num_workers=opts.workers,
                        drop_last=True, pin_memory=env.device.type == "cuda", persistent_workers=opts.workers > 0,
                        generator=torch.Generator().manual_seed(opts.seed + env.rank))
    while not stop:
        sampler.set_epoch(epoch)  # the sampler runs in this process: persistent workers see the new order
        sampler.skip, offset = offset * opts.batch_size, 0
        for batch in loader:
            for line in batch.pop("bad"):
                for item in filter(None, line.split("; ")):
                    if item not in bad_seen:
                        bad_seen.add(item)
                        tqdm.write(f"fixtalk train: rank {env.rank}: skipped bad clip {item}", file=sys.stderr)
                        log.event(step, "bad_clip", detail=item)
            batch = _to(batch, env.device)
            progress = max(step / opts.max_steps if opts.max_steps else 0.0,
                           elapsed / opts.time_budget if opts.time_budget else 0.0)
            if d is not None:
                d.requires_grad_(False)
            with autocast():
                loss, logs, real, fake, samples = g_run(batch, progress)
            opt_g.zero_grad(set_to_none=True)
            loss.backward()
            d_logs: dict[str, torch.Tensor] = {}
            d_step = d_run is not None and real is not None and fake is not None
            if d_step:
                assert d is not None
                d.requires_grad_(True)
                with autocast():
                    dl, d_logs = d_run(real.detach(), fake.detach())
                opt_d.zero_grad(set_to_none=True)  # type: ignore[union-attr]  # d_step: opt_d exists
                dl.backward()
            elapsed = elapsed0 + time.monotonic() - t0
            flags = torch.tensor([float(not torch.isfinite(loss.detach()).item()), float(signals.hit),
                                  float(opts.time_budget is not None and elapsed >= opts.time_budget)])
            if env.world > 1:
                flags = flags.to(env.device)
                dist.all_reduce(flags, op=dist.ReduceOp.MAX)
                flags = flags.cpu()
            if flags[0] > 0:
                skipped += 1  # a non-finite loss on any rank: no update anywhere (grads were averaged)
                log.event(step, "non_finite_loss", skipped=skipped)
            else:
                opt_g.step()
                if d_step:
                    opt_d.step()  # type: ignore[union-attr]  # d_step: opt_d exists
            step += 1
            bar.update()
            for k, v in {**logs, **d_logs}.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float()
            n_logged += 1
            if main and (step % opts.log_every == 0 or step == 1):
                values = {f"loss/{k}": float(v) / n_logged for k, v in sums.items()}
                log.scalars(step, values, elapsed)
                post = {"loss": f"{values.get('loss/total', 0.0):.3f}"}
                if opts.time_budget is not None:  # the bar's ETA needs --max-steps; show the budget left too
                    post["left"] = time.strftime("%H:%M:%S", time.gmtime(max(0.0, opts.time_budget - elapsed)))
                bar.set_postfix(post, refresh=False)
                sums, n_logged = {}, 0
            if main and (step % opts.sample_every == 0 or step == 1):
                log.images(step, samples)
            if opts.max_steps is not None and step >= opts.max_steps:
                stop = "max-steps"
            elif flags[2] > 0:
                stop = "time-budget"
            elif flags[1] > 0:
                stop = "interrupted"
            if stop or step % opts.save_every == 0:
                checkpoint(elapsed)
            if stop:
                break
        epoch += 1
    bar.close()
    signals.restore()
    if stop == "interrupted":
        say(f"fixtalk train: interrupted at step {step}; checkpoint saved, re-run the same command to resume")
        log.close()
        return 130
    if main:
        if cfg.has_expression and opts.stage in ("expression", "fixtalk"):
            presets.update(S.expression_presets(model, clips, cfg.size, env.device))
        save_bundle(Bundle(model, a2l, presets), run / "final")
        log.event(step, "final", reason=stop, elapsed=round(elapsed, 2), skipped_steps=skipped)
        say(f"fixtalk train: {opts.stage} done at step {step} ({stop}); model exported to {run / 'final'}")
    if env.world > 1:  # lets a user (and the tests) see that every rank ran and stayed in sync
        checksum = sum(float(p.detach().double().sum()) for _, p in named)
        print(f"fixtalk train: rank {env.rank}/{env.world} finished at step {step} "
              f"(parameter checksum {checksum:.6f})", flush=True)
    log.close()
    env.barrier()
    return 0
