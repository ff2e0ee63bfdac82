#!/usr/bin/env bash
# Distillation on the demo sound set: the demo DSC ConvNeXt trained on labels only against the same
# model distilled from the demo DCLS-Gauss run (stored logits), 3 seeds each, same steps; then the
# cost per step of no teacher, stored logits and the online teacher.
#
#   scripts/distill_demo.sh [OUT]        (default outputs/distill_demo; ~40 min on 2 CPU cores)
#
# Needs the demo set (make demo, or dcls-audio-sounds --out data/sounds --clip-seconds 5).
# Writes OUT/table.md (dcls-audio-aggregate) and OUT/cost.json.
set -euo pipefail
OUT=${1:-outputs/distill_demo}
DATA=${DATA:-data/sounds}
SEEDS=${SEEDS:-"0 1 2"}
PY=${PY:-python}
mkdir -p "$OUT"

if [ ! -f "$OUT/teacher/best.pt" ]; then
    $PY train.py experiment=demo conv=dcls_gauss data.root="$DATA" hydra.run.dir="$OUT/teacher"
fi
if [ ! -f "$OUT/logits.h5" ]; then
    $PY -m dcls_audio.teacher --checkpoint "$OUT/teacher/best.pt" \
        --data-files "$DATA/train.h5" --out "$OUT/logits.h5" --no-progress
fi
for seed in $SEEDS; do
    for mode in labels distilled; do
        run="$OUT/students/$mode/seed$seed"
        [ -f "$run/results.json" ] && continue
        extra=()
        if [ "$mode" = distilled ]; then
            extra=(distill=teacher distill.teacher_logits="$OUT/logits.h5")
        fi
        $PY train.py experiment=demo conv=dsc data.root="$DATA" seed="$seed" \
            hydra.run.dir="$run" "${extra[@]}"
    done
done
$PY -m dcls_audio.aggregate "$OUT/students" --out "$OUT/table.md" --json "$OUT/table.json"

# cost per step: 80 steps each, the rate of the steps after the first 16 (train.log's samples/s)
for mode in none stored online; do
    run="$OUT/cost/$mode"
    rm -rf "$run"
    case $mode in
        none) extra=() ;;
        stored) extra=(distill=teacher distill.teacher_logits="$OUT/logits.h5") ;;
        online) extra=(distill=teacher distill.teacher="$OUT/teacher/best.pt") ;;
    esac
    $PY train.py experiment=demo conv=dsc data.root="$DATA" trainer.max_steps=80 \
        trainer.eval_every=100 hydra.run.dir="$run" "${extra[@]}"
done
$PY - "$OUT" <<'EOF'
import json, re, sys
from pathlib import Path

out = Path(sys.argv[1])
rates, batch = {}, {}
for mode in ("none", "stored", "online"):
    log = (out / "cost" / mode / "train.log").read_text()
    batch[mode] = int(re.search(r"accumulation = (\d+)", log).group(1))  # samples per step
    steps = [(int(s), float(r)) for s, r in re.findall(r"step\s+(\d+)/\d+ .* ([\d.]+) samples/s", log)]
    later = [r for s, r in steps if s > 16]
    rates[mode] = sum(later) / len(later)
doc = {m: {"samples_per_s": r, "ms_per_step": batch[m] / r * 1000, "vs_none": rates["none"] / r}
       for m, r in rates.items()}
(out / "cost.json").write_text(json.dumps(doc, indent=1))
for m, d in doc.items():
    print(f"{m:7s} {d['samples_per_s']:7.1f} samples/s {d['ms_per_step']:7.1f} ms/step x{d['vs_none']:.2f}")
EOF
