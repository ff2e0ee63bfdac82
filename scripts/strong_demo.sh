#!/usr/bin/env bash
# Weak-only vs strong-label training of the demo recipe (DCLS-Gauss, 1500 steps), seeds 0-2.
# The demo sound set carries the events of its placed sources as strong labels; all rows train
# on the same clips and steps, the strong ones with frames=strong (a frame head, frame loss 1.0):
# the head on the last stage's map upsampled 4x (the default), and with STAGE=1 also a head on
# the stage before it (0.64-s columns) upsampled 2x, both 0.32-s frames.
# All are scored on the same strongly labelled evaluation clips: clip mAP, and segment F1 / AP
# over 1-s segments (a weak model from its feature columns through the clip head).
# The weak and the strong run of a seed train side by side, one thread each.
#   scripts/strong_demo.sh [OUT]        (~30 min on 2 CPU cores, ~45 with STAGE=1;
#                                        writes OUT/table.json)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/strong_demo}
PY=${PY:-.venv/bin/python}
STAGE=${STAGE:-0}
[[ -f data/sounds/train.h5 ]] || .venv/bin/dcls-audio-sounds --out data/sounds --clip-seconds 5
for seed in 0 1 2; do
	OMP_NUM_THREADS=1 "$PY" train.py experiment=demo seed=$seed "hydra.run.dir=$OUT/weak_s$seed" &
	OMP_NUM_THREADS=1 "$PY" train.py experiment=demo frames=strong seed=$seed \
		"hydra.run.dir=$OUT/strong_s$seed" &
	wait -n && wait -n
done
if [[ $STAGE == 1 ]]; then
	for seeds in "0 1" "2"; do
		for seed in $seeds; do
			OMP_NUM_THREADS=1 "$PY" train.py experiment=demo frames=strong model.frame_stage=-2 \
				model.frame_head=2 seed=$seed "hydra.run.dir=$OUT/stage2_s$seed" &
		done
		for _ in $seeds; do wait -n; done
	done
fi
.venv/bin/dcls-audio-aggregate "$OUT" --json "$OUT/table.json"
