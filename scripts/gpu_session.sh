#!/usr/bin/env bash
# Every GPU measurement the DCLS speed work needs, in one run of at most BUDGET seconds (470) on
# an offline GPU machine; each step has its own time limit (cut to what is left) and log.
#
#   scripts/gpu_session.sh OUT_DIR          # on the GPU machine, from the project root
#   scripts/gpu_session.sh OUT_DIR cpu      # the same steps on the CPU at tiny sizes (rehearsal)
#   STEPS="tune throughput_convnext compile throughput_others" BUDGET=250 scripts/gpu_session.sh OUT
#                                           # a shorter run: only the named steps
#
# OUT_DIR receives session.json (every step's JSON, merged after each step) and logs.tgz (logs,
# tables, JSON and run directories without checkpoints or data), refreshed after each step.
# Missing pure-Python packages come from .whl/ when present (../shared/OFFLINE_GPU.md).
# Steps, most important first: CUDA exactness tests; the Triton kernels' block-size tuning on
# ConvNeXt-T's layers (kept for every later step); model throughput (3 models x {DSC,
# DCLS-Gauss} x {infer, train}, bf16, batch 64, channels_last, interleaved); the per-layer table;
# a profiler table of a training step and an inference batch; an end-to-end DSC train.py run; a
# SIGTERM-and-resume round trip (deterministic); torch.compile against eager; ConvNeXt-T's
# throughput in the trainer's NCHW layout; an end-to-end DCLS run.
set -uo pipefail
OUT=$(mkdir -p "${1:?usage: scripts/gpu_session.sh OUT_DIR [cpu]}" && cd "$1" && pwd)
MODE=${2:-cuda}
BUDGET=${BUDGET:-470}
W=${WORK:-/tmp/gpu_session}
rm -rf "$W"
mkdir -p "$W"
START=$SECONDS
PY=${PYTHON:-python3}
STEPS=${STEPS:-exact tune throughput layers profile e2e_dsc resume compile throughput_nchw e2e_dcls}

if compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl > "$W/wheels.log" 2>&1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled HYDRA_FULL_ERROR=1
export DCLS_TRITON_CONFIGS=$W/triton_configs.json

if [ "$MODE" = cpu ]; then  # rehearsal: Triton's interpreter, the smallest model, tiny sizes
  export TRITON_INTERPRET=1 DCLS_CONV_AUTOTUNE=0
  DEV=cpu B=2 DIV=96 REPEATS=1 MODELS=convnext_atto BIG=convnext_atto TB=8 WORKERS=2
  NTRAIN=64 NEVAL=16 NRESUME=32 STOP=5 EPOCHS=2 LOG=2 BACKEND=aot_eager DTYPE=fp32
  TUNE_ENV="DCLS_TRITON_TUNE=force" DTYPES="float32" ITERS=1 WARM=1 REPS=1 SCALE=8
else
  DEV=cuda B=64 DIV=1 REPEATS=10 MODELS=convnext_t,convformer_s18,fastvit_sa24 BIG=convnext_t
  TB=64 WORKERS=12 NTRAIN=4096 NEVAL=256 NRESUME=512 STOP=11 EPOCHS=2 LOG=16
  BACKEND=inductor DTYPE=bf16 TUNE_ENV="DCLS_TRITON_TUNE=1" DTYPES="bfloat16 float32"
  ITERS=10 WARM=3 REPS=3 SCALE=1
fi

pack() {  # logs and JSON into OUT_DIR, now (a later step may not finish)
  $PY - "$W" "$OUT/session.json" >> "$W/collect.log" 2>&1 <<'EOF'
import json, pathlib, sys
root = pathlib.Path(sys.argv[1])
doc = {}
for path in sorted(root.glob("*.json")) + sorted(root.glob("*/*.json")):
    try:
        doc[str(path.relative_to(root))] = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        doc[str(path.relative_to(root))] = f"unreadable: {err}"
tmp = pathlib.Path(sys.argv[2] + ".part")
tmp.write_text(json.dumps(doc, indent=1) + "\n")
tmp.replace(sys.argv[2])
EOF
  tar czf "$OUT/logs.tgz.part" -C "$W" --exclude='*.pt' --exclude='*.h5' --exclude='syn*' . \
    && mv "$OUT/logs.tgz.part" "$OUT/logs.tgz"
}

step() {  # step NAME SECONDS COMMAND...: run with min(SECONDS, what is left), log to W/NAME.log
  local name=$1 limit=$(($2 * SCALE))
  shift 2
  if [[ " $STEPS " != *" $name "* ]]; then
    return 0  # not one of STEPS
  fi
  local left=$((BUDGET - (SECONDS - START)))
  if ((left < 20)); then
    echo "$name skipped: ${left}s left" | tee -a "$W/steps.txt"
    return 1
  fi
  ((limit > left - 10)) && limit=$((left - 10))
  local t0=$SECONDS
  timeout -k 10 "$limit" "$@" > "$W/$name.log" 2>&1
  local rc=$?
  echo "$name exit=$rc seconds=$((SECONDS - t0)) limit=$limit at=$((SECONDS - START))" \
    | tee -a "$W/steps.txt"
  pack
  return $rc
}

{ nvidia-smi; nvidia-smi -q -d CLOCK,POWER,PERFORMANCE; } > "$W/nvidia-smi.txt" 2>&1
git log -1 --format='%H %cI' > "$W/commit.txt" 2>&1
$PY -c "import torch, triton, timm; print(torch.__version__, torch.version.cuda, triton.__version__, timm.__version__)" \
  > "$W/versions.txt" 2>&1
# data for the train.py steps, generated on the CPU while the GPU steps run
SYN_PID=
if [[ " $STEPS " == *" e2e_"* || " $STEPS " == *" resume "* ]]; then
  ( nice -n 10 $PY -m dcls_audio.datasets.synthetic --out "$W/syn" --train $NTRAIN --eval $NEVAL \
    && nice -n 10 $PY -m dcls_audio.datasets.synthetic --out "$W/syn_small" --train $NRESUME \
      --eval $NEVAL ) > "$W/synthetic.log" 2>&1 &
  SYN_PID=$!
fi

# 1. the Triton kernels on the GPU against float64 (every case, fp32 and bf16; default blocks)
step exact 60 env DCLS_TRITON_TUNE=0 $PY -m pytest -q -s -p no:cacheprovider \
  tests/test_dcls_kernels.py -k "cuda_triton or cuda_layer"
# 2. block sizes, warps and stages per layer shape: the fastest kept for every later step; if
# the Triton path crashes here, the later steps choose among cuDNN and the FFT only
step tune 75 env $TUNE_ENV $PY -m dcls_audio.benchmarks.gpu_session tune --device $DEV \
  --batch $B --channels-div $DIV --json "$W/tune.json" --configs "$DCLS_TRITON_CONFIGS"
rc=$?
if ((rc != 0 && rc != 124)); then
  export DCLS_CONV_PATHS=cudnn,fft
  echo "Triton path left out after the tune step failed (exit $rc)" | tee -a "$W/steps.txt"
fi
# 3. model throughput, the headline: DCLS-Gauss / DSC per model, interleaved, one process
step throughput 170 $PY -m dcls_audio.benchmarks.throughput --device $DEV --models $MODELS \
  --convs dsc,dcls_gauss --mode both --dtype $DTYPE --batch-size $B --iters $ITERS --warmup $WARM \
  --repeats $REPS --json "$W/throughput.json" --markdown "$W/throughput.md"
# (STEPS: ConvNeXt-T alone first, the other two models after the compile step)
step throughput_convnext 60 $PY -m dcls_audio.benchmarks.throughput --device $DEV --models $BIG \
  --convs dsc,dcls_gauss --mode both --dtype $DTYPE --batch-size $B --iters $ITERS --warmup $WARM \
  --repeats $REPS --json "$W/throughput_convnext.json" --markdown "$W/throughput_convnext.md"
# 4. per-layer table per ConvNeXt-T stage (all paths, fwd and fwd+bwd, chosen path, error)
step layers 60 $PY -m dcls_audio.benchmarks.cuda_layers --device $DEV --batch $B \
  --channels-div $DIV --dtypes $DTYPES --repeats $REPEATS --json "$W/layers.json"
# 5. where a DCLS step spends its time (and a DSC step's, for comparison)
step profile 45 $PY -m dcls_audio.benchmarks.gpu_session profile --device $DEV --model $BIG \
  --convs dcls_gauss,dsc --batch $B --out-dir "$W/profile"
[ -n "$SYN_PID" ] && wait $SYN_PID
# 6. end to end through the real data path (DSC): steady rate after each epoch's first window
TRAIN="data=synthetic model=$BIG trainer.device=$DEV trainer.batch_size=$TB
  trainer.global_batch_size=$TB trainer.warmup_epochs=0 wandb.mode=disabled"
step e2e_dsc 60 $PY train.py $TRAIN data.root="$W/syn" conv=dsc trainer.epochs=$EPOCHS \
  trainer.max_eval_samples=$NEVAL data.num_workers=$WORKERS trainer.log_every=$LOG \
  hydra.run.dir="$W/e2e_dsc"
# 7. SIGTERM mid-epoch and resume, deterministic, DCLS-Gauss through the Triton path
step resume 90 $PY -m dcls_audio.benchmarks.gpu_session resume --work "$W/resume" \
  --stop-step $STOP --limit 60 --json "$W/resume.json" -- $TRAIN data.root="$W/syn_small" \
  conv=dcls_gauss trainer.epochs=2 trainer.deterministic=true data.num_workers=0 \
  trainer.log_every=1 trainer.max_eval_samples=$NEVAL
# 8. torch.compile against eager (inference), DCLS first
step compile 100 $PY -m dcls_audio.benchmarks.gpu_session compile --device $DEV --model $BIG \
  --convs dcls_gauss,dsc --batch $B --backend $BACKEND --iters $ITERS --repeats $REPS \
  --json "$W/compile.json"
step throughput_others 120 $PY -m dcls_audio.benchmarks.throughput --device $DEV \
  --models ${MODELS#$BIG,} --convs dsc,dcls_gauss --mode both --dtype $DTYPE --batch-size $B \
  --iters $ITERS --warmup $WARM --repeats $REPS --json "$W/throughput_others.json" \
  --markdown "$W/throughput_others.md"
# 9. ConvNeXt-T in the trainer's layout (NCHW): the model-only rate item 5 compares with
step throughput_nchw 45 $PY -m dcls_audio.benchmarks.throughput --device $DEV --models $BIG \
  --convs dsc,dcls_gauss --mode both --dtype $DTYPE --batch-size $B --iters $ITERS \
  --warmup $WARM --repeats $REPS --channels-last off --json "$W/throughput_nchw.json"
# 10. end to end with DCLS-Gauss
step e2e_dcls 45 $PY train.py $TRAIN data.root="$W/syn" conv=dcls_gauss trainer.epochs=1 \
  trainer.max_eval_samples=$NEVAL data.num_workers=$WORKERS trainer.log_every=$LOG \
  hydra.run.dir="$W/e2e_dcls"
RUNS=$(for d in "$W"/e2e_*/; do [ -f "$d/metrics.jsonl" ] && echo "$d"; done)
[ -n "$RUNS" ] && $PY -m dcls_audio.benchmarks.gpu_session runs --rate $RUNS \
  --json "$W/runs.json" > "$W/runs.log" 2>&1
echo "total $((SECONDS - START)) s" | tee -a "$W/steps.txt"
pack
cat "$W/steps.txt"
