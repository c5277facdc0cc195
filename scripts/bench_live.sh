#!/usr/bin/env bash
# `fixtalk live` with and without frames side by side and the traced renderer, rounds alternating, on the dev
# portrait and clip (docs/performance.md, "Frames side by side"). Run it alone on the machine.
# Usage: scripts/bench_live.sh [ROUNDS]   (FACES: the faces folder, default ../shared/data/faces)
set -euo pipefail
faces=${FACES:-../shared/data/faces}
run() {
  fixtalk live --source "$faces/images/edtalk__identity_source.jpg" --driving "$faces/videos/lia__vox_driving1.mp4" \
    --quiet --max-frames 250 "$@" | tr '\n' ' '
  echo
}
for r in $(seq "${1:-3}"); do
  for flags in "--threads 1 --parallel 1 --no-trace" "--threads 1" "--threads 2 --no-trace" "--threads 2"; do
    echo "== round $r: $flags"
    # shellcheck disable=SC2086  # the flags are words
    run $flags
  done
done
