#!/usr/bin/env bash
# Every GPU measurement the open GPU work needs, in one run on an offline GPU machine.
#
#   scripts/gpu_session.sh OUT_DIR        (from the project root; wheels in .whl/, see below)
#
# The machine has torch, triton, timm, h5py, sklearn, onnx(runtime); the missing pure-Python
# packages (hydra-core, omegaconf, antlr4-python3-runtime, soundfile, submitit, dcls, timm 1.0.31)
# come from .whl/ when present. Each step has its own time limit, so one failure leaves the
# others' results; everything goes to OUT_DIR (JSON, markdown, logs), nvidia-smi names the card.
set -uo pipefail
OUT=${1:?usage: scripts/gpu_session.sh OUT_DIR}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to OUT/NAME.log, note the status
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "$name exit=$? seconds=$((SECONDS - start))" | tee -a "$OUT/steps.txt"
}

# 1. install self-check and the DCLS CUDA kernels' exactness tests
step gpu_check 420 python3 -m dcls_audio.gpu_check --json "$OUT/gpu_check.json"
step kernel_tests 300 python3 -m pytest -q -p no:cacheprovider tests/test_dcls_kernels.py -k cuda
# 2. per-layer table: cuDNN NCHW / channels_last, FFT, Triton, chosen path, 7x7 DSC
step bench_layers 420 python3 -m dcls_audio.benchmarks.kernels --cuda-only --repeats 20 \
  --json "$OUT/bench_dcls_cuda.json"
# 3. model throughput, bf16, batch 64: 3 models x {DSC, DCLS-Gauss, DCLS-bilinear} x {infer, train}
step throughput 900 python3 -m dcls_audio.benchmarks.throughput \
  --models convnext_t,convformer_s18,fastvit_sa24 --convs dsc,dcls_gauss,dcls_bilinear \
  --mode both --dtype bf16 --batch-size 64 --iters 5 --warmup 3 --repeats 3 \
  --json "$OUT/throughput.json" --markdown "$OUT/throughput.md"
# 4. end to end: a long DSC run (and DCLS) through the real data path, 12 loader workers
step synthetic 300 python3 -m dcls_audio.data.synthetic --out /tmp/syn --train 4096 --eval 256
for conv in dsc dcls_gauss; do
  step "e2e_$conv" 900 python3 train.py data=synthetic data.root=/tmp/syn model=convnext_t \
    conv=$conv trainer.device=cuda trainer.batch_size=64 trainer.global_batch_size=64 \
    trainer.epochs=1 trainer.warmup_epochs=0 trainer.max_eval_samples=256 data.num_workers=12 \
    trainer.log_every=32 "hydra.run.dir=$OUT/e2e_$conv"
done
rm -f "$OUT"/e2e_*/last.pt "$OUT"/e2e_*/best.pt  # results.json and metrics.jsonl are enough
