#!/usr/bin/env bash
# The recipe of the model shipped in fixtalk/assets/model (its MODEL_CARD.md gives the numbers).
# Usage: scripts/train_shipped.sh DATA RUNS   (DATA: a `fixtalk prep --size 128` folder; RUNS: output folder)
# Every stage resumes when re-run; the budgets are wall-clock training time on a 2-core CPU.
# The GAN term is off (--loss-weight gan=0): in a CPU budget of a few hundred steps D wins at once
# (D(real) - D(fake) > 30 by step 300) and its gradient only slowed L1 down; on a GPU drop that flag,
# raise the budgets (or use --max-steps) and the batch sizes.
# INIT_RECON (optional): a checkpoint to start the recon stage from (partial loads are fine).
set -euo pipefail
data=${1:?usage: scripts/train_shipped.sh DATA RUNS}
runs=${2:?usage: scripts/train_shipped.sh DATA RUNS}
common=(--data "$data" --workers 1 --save-every 100 --sample-every 250 --log-every 10 --loss-weight gan=0)
init_recon=()
[ -n "${INIT_RECON:-}" ] && init_recon=(--init "$INIT_RECON")

fixtalk train --stage recon      --out "$runs/recon"      --preset fixtalk-small "${init_recon[@]}" --batch 8 --time-budget "${RECON:-45m}" "${common[@]}"
fixtalk train --stage mouth-pose --out "$runs/mouth-pose" --init "$runs/recon/final"      --batch 4 --time-budget "${MOUTH_POSE:-12m}" "${common[@]}"
fixtalk train --stage expression --out "$runs/expression" --init "$runs/mouth-pose/final" --batch 8 --time-budget "${EXPRESSION:-8m}" "${common[@]}"
fixtalk train --stage fixtalk    --out "$runs/fixtalk"    --init "$runs/expression/final" --batch 8 --time-budget "${FIXTALK:-14m}" "${common[@]}"
fixtalk train --stage audio2lip  --out "$runs/audio2lip"  --init "$runs/fixtalk/final"    --batch 8 --time-budget "${AUDIO2LIP:-6m}" --no-image-losses "${common[@]}"
echo "shipped-model recipe done: $runs/audio2lip/final"
