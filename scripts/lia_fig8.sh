#!/usr/bin/env bash
# FixTalk Fig. 8 ("Generalizability") at CPU scale: LIA (lia-small) without and with EMI + EDI, trained for the
# same minutes from the same start, scored by `fixtalk eval` on the held-out identities of DATA's manifest.
# Usage: scripts/lia_fig8.sh DATA RUNS [BUDGET] [EVAL_FRAMES]
#   DATA: a `fixtalk prep --size 128` folder whose manifest has a test split; RUNS: output folder.
# The start is the shipped fixtalk-small with its encoder, generator and motion trunk carried over into
# lia-small (LIA's motion head and 20 directions are new); both runs load that one file. The two runs train
# side by side (one thread each) so that they see the same machine load; the budget is wall-clock training time.
set -euo pipefail
data=${1:?usage: scripts/lia_fig8.sh DATA RUNS [BUDGET] [EVAL_FRAMES]}
runs=${2:?usage: scripts/lia_fig8.sh DATA RUNS [BUDGET] [EVAL_FRAMES]}
budget=${3:-12m}
frames=${4:-25}
faces=${FIXTALK_FACES_DIR:-$(dirname "$0")/../../shared/data/faces}
export OMP_NUM_THREADS=1
mkdir -p "$runs"

python - "$runs/start" <<'PY'
import sys

from fixtalk.checkpoint import Bundle, load_bundle, save_bundle
from fixtalk.config import get_preset
from fixtalk.models.fixtalk import FixTalk
from fixtalk.pipeline import SHIPPED
from fixtalk.train.setup import partial_load

import torch

torch.manual_seed(0)
model = FixTalk(get_preset("lia-small"))
print("start:", partial_load(model, load_bundle(SHIPPED).model.state_dict()))
save_bundle(Bundle(model), sys.argv[1])
PY

common=(--data "$data" --init "$runs/start" --workers 1 --batch 8 --time-budget "$budget" --save-every 100
        --sample-every 1000 --log-every 10 --loss-weight gan=0 --loss-weight landmark_flow=10)
fixtalk train --stage recon --out "$runs/lia" --preset lia-small "${common[@]}" > "$runs/lia.log" 2>&1 &
fixtalk train --stage fixtalk --out "$runs/fixtalk-lia" --preset fixtalk-lia-small \
    --trainable enc,fdm,dec,emi,edi "${common[@]}" > "$runs/fixtalk-lia.log" 2>&1 &
wait

ev=(--checkpoint "lia=$runs/lia/final" --checkpoint "lia+emi+edi=$runs/fixtalk-lia/final" --videos "$faces/videos"
    --split-manifest "$data/manifest.csv" --max-frames "$frames" --cross-pairs 1 --threads 1
    --out "$runs/eval.json" --markdown "$runs/eval.md")
fixtalk eval "${ev[@]}" --shard 0/2 > "$runs/eval0.log" 2>&1 &
fixtalk eval "${ev[@]}" --shard 1/2 > "$runs/eval1.log" 2>&1 &
wait
cat "$runs/eval.md"
