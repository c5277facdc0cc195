#!/usr/bin/env bash
# Warm-start continuation of the shipped model (fixtalk/assets/model): how each new shipped model is made, so
# training time adds up from one run to the next (the quality issue, item 6). Its MODEL_CARD.md gives the numbers.
# Usage: scripts/continue_shipped.sh DATA RUNS   (DATA: a `fixtalk prep --size 128` folder; RUNS: output folder)
#   RECON (default 80m): recon stage on the fixtalk-small preset (pixel path on), landmark-guided flow (weight 10),
#                        from the shipped weights with a fresh optimiser (new tensors start at zero: partial load)
#   AUDIO2LIP (default 8m): Audio2Lip re-fitted to the updated mouth bank
# Each stage resumes when re-run. Set OMP_NUM_THREADS to the cores you give it.
set -euo pipefail
data=${1:?usage: scripts/continue_shipped.sh DATA RUNS}
runs=${2:?usage: scripts/continue_shipped.sh DATA RUNS}
init=${INIT:-$(python -c "from fixtalk.pipeline import SHIPPED; print(SHIPPED)")}
common=(--data "$data" --workers 1 --save-every 40 --sample-every 100000 --log-every 10 --loss-weight gan=0)

fixtalk train --stage recon --out "$runs/recon" --preset fixtalk-small --init "$init" --batch 8 \
    --time-budget "${RECON:-80m}" --loss-weight landmark_flow=10 "${common[@]}"
fixtalk train --stage audio2lip --out "$runs/audio2lip" --init "$runs/recon/final" --batch 8 \
    --time-budget "${AUDIO2LIP:-8m}" --no-image-losses "${common[@]}"
echo "continuation done: $runs/audio2lip/final (ship it with scripts/ship_model.py)"
