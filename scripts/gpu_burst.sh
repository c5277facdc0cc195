#!/usr/bin/env bash
# One call on a lent GPU (the `device` tool runs it in the repository root, $OUT comes back): a recon burst from the
# shipped weights, then GPU inference benchmarks. First, here: `python scripts/gpu_pack.py DATA .gpu` (with `/.gpu/`
# in .git/info/exclude), then run `bash scripts/gpu_burst.sh` there carrying `.gpu`. To continue the same run on the
# still-warm machine: `MINUTES=<total> TRAIN_TIMEOUT=<s> SKIP_BENCH=1 bash scripts/gpu_burst.sh` (budgets add up).
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/.gpu/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, cv2; print('torch', torch.__version__, 'cv2', cv2.__version__, 'cuda', torch.cuda.is_available())"
t0=$(date +%s)
timeout ${TRAIN_TIMEOUT:-470} python3 scripts/gpu_burst.py .gpu/data /tmp/run --minutes ${MINUTES:-6.2} \
    --batch ${BATCH:-32} --workers 12 > $OUT/train.log 2>&1
echo "train rc=$? wall=$(( $(date +%s) - t0 ))s"
tr '\r' '\n' < $OUT/train.log | grep -v "^train recon:\|^$\|worker\|rationality" | tail -n 12
python3 - <<'P'  # fp16 copy: a file back from the device must stay under 16 MiB
import os
from safetensors.torch import load_file, save_file
sd = load_file("/tmp/run/final/model.safetensors")
save_file({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, os.environ["OUT"] + "/model.safetensors")
P
cp /tmp/run/final/config.json $OUT/
cp /tmp/run/log.jsonl $OUT/ 2>/dev/null
tail -n 3 /tmp/run/log.jsonl 2>/dev/null | cut -c1-400
[ -n "${SKIP_BENCH:-}" ] && exit 0
b() { timeout 120 python3 -c "from fixtalk.cli import main; main()" bench "$@" --device cuda 2>&1 | grep -v Warning; }
{ b --preset fixtalk-512 --dtype bf16 --batch 8
  b --preset fixtalk-512 --dtype fp32 --batch 8
  b --preset fixtalk-small --dtype bf16 --batch 8
  b --preset fixtalk-256 --dtype bf16 --batch 8; } 2>&1 | tee $OUT/bench.txt
