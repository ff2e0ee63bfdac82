#!/usr/bin/env bash
# DCLS-Gauss against DSC on one GPU, in one run of at most BUDGET seconds (540). Each step has
# its own time limit (cut to what is left of the budget) and log, and writes its JSON as it
# measures, so a step cut short keeps what it measured. In order:
#   model_convnext           ConvNeXt-T model-only, DSC and DCLS-Gauss interleaved, infer and
#                            train, eager; bf16, batch 64, channels_last (gpu_rates model)
#   model_convnext_compiled  the same under torch.compile mode "default" (inductor)
#   model_others             ConvFormer-S18 and FastViT-SA24, eager
#   trainer_dsc, trainer_dcls  train.py's own rate, ConvNeXt-T, bf16, batch 64, the trainer's
#                            defaults (on CUDA: channels_last, no compile), synthetic 10-s clips
#                            (generated here, in the background after the first step) through
#                            the real loader with 12 workers, one epoch of 96 steps, windows of 8
#   profile                  torch.profiler of one training step, DCLS-Gauss and DSC
#   exact                    the CUDA depthwise paths and the kernel construction against
#                            float64 on ConvNeXt-T's stage shapes, fp32 and bf16
# then, while enough time is left: train.py with trainer.compile=default (DSC, DCLS-Gauss), the
# other two models compiled, the CUDA exactness tests; last the summary (gpu_summary: DCLS/DSC
# per setting and the checks of the speed goals).
#
#   scripts/gpu_rates.sh OUT_DIR          # on the GPU machine, from the project root
#   scripts/gpu_rates.sh OUT_DIR cpu      # the same steps on the CPU at tiny sizes (rehearsal)
#   STEPS="model_convnext trainer_dsc trainer_dcls" scripts/gpu_rates.sh OUT_DIR  # some steps
#
# OUT_DIR receives records/*.json (one file per step), logs/*.log, exact.json, profile/,
# runs/NAME/ (each train.py run's metrics.jsonl, train.log, results.json), env/ (nvidia-smi,
# versions, Triton block choices), steps.txt, summary.json and summary.md. DCLS_COMMIT names the
# commit where the tree has no .git. When hydra or omegaconf cannot be imported, the wheels in
# .whl/ are installed into /tmp/site first (docs/benchmarks.md).
set -uo pipefail
OUT=$(mkdir -p "${1:?usage: scripts/gpu_rates.sh OUT_DIR [cpu]}" && cd "$1" && pwd)
MODE=${2:-cuda}
W=${WORK:-/tmp/gpu_rates}
PY=${PYTHON:-python3}
ALL="model_convnext model_convnext_compiled model_others trainer_dsc trainer_dcls profile exact
  trainer_dsc_compiled trainer_dcls_compiled model_others_compiled exact_tests"
STEPS=" $(echo ${STEPS:-$ALL}) "
START=$SECONDS
RESERVE=20  # seconds kept for the summary
rm -rf "$W"
mkdir -p "$W" "$OUT/records" "$OUT/logs" "$OUT/runs" "$OUT/env"
: > "$OUT/steps.txt"

if [ "$MODE" = cpu ]; then  # rehearsal: small models, tiny batches, Triton's interpreter
  export TRITON_INTERPRET=1
  BUDGET=${BUDGET:-400} DEV=cpu DTYPE=fp32 B=2 BO=1 ITERS=1 WARM=1 REPS=1 REPS_O=1 TINY=--tiny
  BACKEND=aot_eager TB=2 SHARDS=2 PER=12 NEVAL=8 LOG=2 WORKERS=2 DIV=96 SCALE=3
  TRAIN_EXTRA=("+model.timm_kwargs.dims=[8,16,32,64]" "+model.timm_kwargs.depths=[1,1,1,1]"
    trainer.channels_last=true)  # the layout trainer.channels_last=auto takes on CUDA
else
  BUDGET=${BUDGET:-540} DEV=cuda DTYPE=bf16 B=64 BO=64 ITERS=10 WARM=3 REPS=5 REPS_O=3 TINY=
  BACKEND=inductor TB=64 SHARDS=4 PER=1536 NEVAL=256 LOG=8 WORKERS=12 DIV=1 SCALE=1
  TRAIN_EXTRA=()
fi
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WANDB_MODE=disabled HYDRA_FULL_ERROR=1
export DCLS_TRITON_CONFIGS=$OUT/env/triton_configs.json  # block choices kept across steps

left() { echo $((BUDGET - RESERVE - (SECONDS - START))); }

RAN=0
step() {  # step NAME SECONDS COMMAND...: run with min(SECONDS, what is left), log to logs/NAME
  local name=$1 limit=$(($2 * SCALE)) left
  shift 2
  RAN=0
  [[ "$STEPS" == *" $name "* ]] || return 0
  left=$(left)
  if ((left < 15)); then
    echo "$name skipped: ${left}s left" | tee -a "$OUT/steps.txt"
    return 0
  fi
  ((limit > left)) && limit=$left
  local t0=$SECONDS
  timeout -k 10 "$limit" "$@" > "$OUT/logs/$name.log" 2>&1
  local rc=$?
  RAN=1
  echo "$name exit=$rc seconds=$((SECONDS - t0)) limit=$limit at=$((SECONDS - START))" \
    | tee -a "$OUT/steps.txt"
  return $rc
}

extra() {  # extra NAME SECONDS MIN COMMAND...: a step run only with MIN seconds left
  local name=$1 limit=$2 min=$(($3 * SCALE))
  shift 3
  RAN=0
  if [[ "$STEPS" == *" $name "* ]] && (($(left) < min)); then
    echo "$name left out: $(left)s left, needs $min" | tee -a "$OUT/steps.txt"
    return 0
  fi
  step "$name" "$limit" "$@"
}

# Missing pure-Python packages (an offline GPU machine): the carried wheels
if ! $PY -c "import hydra, omegaconf" 2> /dev/null; then
  if compgen -G ".whl/*.whl" > /dev/null; then
    timeout 120 $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target /tmp/site .whl/*.whl > "$OUT/logs/wheels.log" 2>&1
    echo "wheels from .whl/ installed into /tmp/site (exit $?)" | tee -a "$OUT/steps.txt"
    export PYTHONPATH=/tmp/site:$PWD
  else
    echo "hydra/omegaconf missing and no .whl/: the train.py steps will fail" \
      | tee -a "$OUT/steps.txt"
  fi
fi
if [ -z "${DCLS_COMMIT:-}" ] && git rev-parse --short HEAD > /dev/null 2>&1; then
  DCLS_COMMIT=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- dcls_audio scripts \
    train.py 2> /dev/null || echo "+dirty")
fi
export DCLS_COMMIT=${DCLS_COMMIT:-unknown}
{ timeout 20 nvidia-smi; timeout 20 nvidia-smi -q -d CLOCK,POWER,PERFORMANCE; } \
  > "$OUT/env/nvidia-smi.txt" 2>&1
timeout 60 $PY -c "import sys, torch, timm; print(sys.version); print(torch.__version__, \
torch.version.cuda, timm.__version__, torch.get_num_threads(), 'threads')" \
  > "$OUT/env/versions.txt" 2>&1
echo "commit $DCLS_COMMIT, mode $MODE, budget $BUDGET s, steps:$STEPS" | tee -a "$OUT/steps.txt"

SYN_PIDS=()
FILES=
for ((k = 0; k < SHARDS; k++)); do FILES+=${FILES:+,}$W/syn$k/train.h5; done
start_data() {  # synthetic clips for the train.py steps, in shards in the background (niced)
  [[ "$STEPS" == *" trainer_"* ]] || return 0
  for ((k = 0; k < SHARDS; k++)); do
    nice -n 10 $PY -m dcls_audio.datasets.synthetic --out "$W/syn$k" --train $PER \
      --eval $((k == 0 ? NEVAL : 0)) --seed $k > "$OUT/logs/synthetic_$k.log" 2>&1 &
    SYN_PIDS+=($!)
  done
}
wait_data() {  # until the shards are written (bounded by the budget)
  local t0=$SECONDS p rc
  for p in "${SYN_PIDS[@]}"; do
    while kill -0 "$p" 2> /dev/null && (($(left) > 15)); do sleep 1; done
    kill "$p" 2> /dev/null && echo "synthetic shard (pid $p) stopped: no time left" \
      | tee -a "$OUT/steps.txt"
    wait "$p"
    rc=$?
    ((rc != 0)) && echo "synthetic shard (pid $p) exit=$rc" | tee -a "$OUT/steps.txt"
  done
  ((${#SYN_PIDS[@]})) && echo "data ready after waiting $((SECONDS - t0)) s" \
    | tee -a "$OUT/steps.txt"
  SYN_PIDS=()
}

RATES=(-m dcls_audio.benchmarks.gpu_rates)
MODEL=("${RATES[@]}" model --device $DEV --dtype $DTYPE --iters $ITERS --warmup $WARM $TINY)
TRAIN=(train.py data=synthetic "data.root=$W/syn0" "data.train_files=[$FILES]" model=convnext_t
  "trainer.device=$DEV" "trainer.batch_size=$TB" "trainer.global_batch_size=$TB"
  trainer.epochs=1 trainer.warmup_epochs=0 "trainer.max_eval_samples=$NEVAL"
  "trainer.log_every=$LOG" "data.num_workers=$WORKERS" wandb.mode=disabled "${TRAIN_EXTRA[@]}")

trainer() {  # trainer NAME SECONDS MIN CONV [OVERRIDE...]: train.py, then its record
  local name=$1 limit=$2 min=$3 conv=$4
  shift 4
  wait_data
  extra "$name" "$limit" "$min" $PY "${TRAIN[@]}" "conv=$conv" "hydra.run.dir=$W/$name" "$@"
  ((RAN)) || return 0
  mkdir -p "$OUT/runs/$name"
  cp "$W/$name"/{metrics.jsonl,train.log,results.json} "$W/$name/.hydra/overrides.yaml" \
    "$OUT/runs/$name/" 2> /dev/null
  timeout 60 $PY "${RATES[@]}" trainer --run-dir "$W/$name" --model convnext_t --conv "$conv" \
    --batch $TB --json "$OUT/records/$name.json" >> "$OUT/logs/$name.log" 2>&1 \
    || echo "$name: no record" | tee -a "$OUT/steps.txt"
}

step model_convnext 70 $PY "${MODEL[@]}" --models convnext_t --batch $B --repeats $REPS \
  --json "$OUT/records/model_convnext.json"
start_data  # while the next step compiles (its timing starts after the clips are written)
step model_convnext_compiled 190 $PY "${MODEL[@]}" --models convnext_t --batch $B \
  --repeats $REPS --compile default --backend $BACKEND \
  --json "$OUT/records/model_convnext_compiled.json"
step model_others 80 $PY "${MODEL[@]}" --models convformer_s18,fastvit_sa24 --batch $BO \
  --repeats $REPS_O --json "$OUT/records/model_others.json"
trainer trainer_dsc 45 0 dsc
trainer trainer_dcls 55 0 dcls_gauss
step profile 25 $PY "${RATES[@]}" profile --device $DEV --dtype $DTYPE --batch $B $TINY \
  --out-dir "$OUT/profile"
step exact 35 env DCLS_TRITON_TUNE=0 $PY "${RATES[@]}" exact --device $DEV --batch $B \
  --channels-div $DIV --json "$OUT/exact.json"  # default blocks where none was tuned
# while time is left
trainer trainer_dsc_compiled 75 90 dsc trainer.compile=default
trainer trainer_dcls_compiled 75 45 dcls_gauss trainer.compile=default
extra model_others_compiled 150 60 $PY "${MODEL[@]}" --models convformer_s18,fastvit_sa24 \
  --batch $BO --repeats $REPS_O --compile default --backend $BACKEND \
  --json "$OUT/records/model_others_compiled.json"
extra exact_tests 45 25 env DCLS_TRITON_TUNE=0 $PY -m pytest -q -p no:cacheprovider \
  tests/test_dcls_kernels.py -k "cuda_triton or cuda_layer"
for p in "${SYN_PIDS[@]}"; do kill "$p" 2> /dev/null; done
echo "total $((SECONDS - START)) s" | tee -a "$OUT/steps.txt"
timeout 15 $PY -m dcls_audio.benchmarks.gpu_summary "$OUT" \
  --command "scripts/gpu_rates.sh OUT_DIR${2:+ $2}" > "$OUT/logs/summary.log" 2>&1
cat "$OUT/summary.md" 2> /dev/null || tail -5 "$OUT/logs/summary.log"
