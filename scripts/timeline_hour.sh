#!/usr/bin/env bash
# Time `dcls-audio-tag --timeline` on one long file with the full-size ConvNeXt-T DCLS-Gauss
# (527 classes, 10-s windows every 0.5 s) on THREADS CPU threads (default 2).
#
#   scripts/timeline_hour.sh [OUT] [MINUTES]     (default outputs/timeline_hour, 60 minutes)
#
# The weights are a fixed random initialisation (the time does not depend on them; give your own
# checkpoint with CKPT=...). Writes OUT/long/ (a generated annotated recording), OUT/out/
# (the timeline outputs), OUT/time.txt (GNU time, /usr/bin/time -v: wall time and peak memory)
# and OUT/timing.json.
set -euo pipefail
OUT=${1:-outputs/timeline_hour}
MINUTES=${2:-60}
PY=${PY:-python}
THREADS=${THREADS:-2}
mkdir -p "$OUT"

if ! ls "$OUT"/long/*.wav > /dev/null 2>&1; then
    $PY -m dcls_audio.datasets.longfiles --out "$OUT/long" --files 1 --minutes "$MINUTES" --split 9
fi
CKPT=${CKPT:-$OUT/convnext_t_dcls_gauss.pt}
if [ ! -f "$CKPT" ]; then
    $PY - "$CKPT" <<'EOF'
import sys

import torch

from dcls_audio.config import load_group
from dcls_audio.models import build_model

model = load_group("model", "convnext_t", overrides=["data.num_classes=527"])
conv = load_group("conv", "dcls_gauss")
torch.manual_seed(0)
net = build_model(model, conv)
config = {"model": model, "conv": conv, "data": {"clip_seconds": 10.0}}
torch.save({"model": net.state_dict(), "config": config}, sys.argv[1])
EOF
fi
WAV=$(ls "$OUT"/long/*.wav | head -n 1)
rm -rf "$OUT/out"
OMP_NUM_THREADS=$THREADS /usr/bin/time -v -o "$OUT/time.txt" \
    dcls-audio-tag "$WAV" --checkpoint "$CKPT" --timeline --out "$OUT/out" --no-progress
$PY - "$OUT" "$WAV" "$THREADS" <<'EOF'
import json
import re
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

out, wav, threads = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
text = (out / "time.txt").read_text()
wall = re.search(r"Elapsed \(wall clock\) time.*: (.+)", text).group(1).split(":")
seconds = sum(float(x) * 60**i for i, x in enumerate(reversed(wall)))
rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
audio = sf.info(wav).duration
npz = np.load(next((out / "out").glob("*.scores.npz")))
doc = {
    "audio_s": audio, "wall_s": seconds, "real_time_factor": seconds / audio,
    "s_per_audio_hour": seconds / audio * 3600, "threads": threads,
    "max_rss_mb": rss_kb / 1024, "frames": int(npz["scores"].shape[0]),
    "frame_step_s": float(np.diff(npz["times"]).mean()),
}
(out / "timing.json").write_text(json.dumps(doc, indent=1))
print(json.dumps(doc, indent=1))
EOF
