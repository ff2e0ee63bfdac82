#!/usr/bin/env bash
# Weak-only vs strong-label training of the demo recipe (DCLS-Gauss, 1500 steps), seeds 0-2.
# The demo sound set carries the events of its placed sources as strong labels; both rows train
# on the same clips and steps, the strong one with frames=strong (a frame head, frame loss 1.0).
# Both are scored on the same strongly labelled evaluation clips: clip mAP, and segment F1 / AP
# over 1-s segments (a weak model from its feature columns through the clip head).
# The weak and the strong run of a seed train side by side, one thread each.
#   scripts/strong_demo.sh [OUT]        (~30 min on 2 CPU cores; writes OUT/table.json)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/strong_demo}
PY=${PY:-.venv/bin/python}
[[ -f data/sounds/train.h5 ]] || .venv/bin/dcls-audio-sounds --out data/sounds --clip-seconds 5
for seed in 0 1 2; do
	OMP_NUM_THREADS=1 "$PY" train.py experiment=demo seed=$seed "hydra.run.dir=$OUT/weak_s$seed" &
	OMP_NUM_THREADS=1 "$PY" train.py experiment=demo frames=strong seed=$seed \
		"hydra.run.dir=$OUT/strong_s$seed" &
	wait -n && wait -n
done
.venv/bin/dcls-audio-aggregate "$OUT" --json "$OUT/table.json"
