"""Training: datasets over `fixtalk prep` output, one loss computation per stage, and the generic loop.

* `fixtalk.train.clipstore` the prepared-data format (clips, landmarks, mel windows, manifest) and its I/O
* `fixtalk.train.data`      pair / mouth-swap / audio-window datasets, resumable sampler (docs/architecture.md 5, 5.1)
* `fixtalk.train.stages`    recon, mouth-pose, expression, fixtalk, audio2lip, finetune losses (5, 9.3)
* `fixtalk.train.options`   the resolved options of a run and the stage presets
* `fixtalk.train.setup`     model config, --init loading, trainable split, checkpoints, expression presets
* `fixtalk.train.loop`      optimisers, DDP, checkpoint/resume, logging, export (docs/architecture.md, Conventions 8)
* `fixtalk.train.logs`      TensorBoard / log.jsonl / sample grids
* `fixtalk.train.syncnet`   Wav2Lip's expert SyncNet for the optional audio-stage loss
* `fixtalk.train.cli`       `fixtalk prep` and `fixtalk train`
"""
