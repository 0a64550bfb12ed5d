#!/usr/bin/env bash
# Issue 20's card measurements as one device-machine command (budget: under 9 minutes).
# The device machine has PyTorch but no registry, and lacks pydantic: bring it as wheels.
#   here, once:   echo /.whl/ >> .git/info/exclude; bash benchmarks/gpu_check.sh --wheels
#   there:        bash benchmarks/gpu_check.sh          (carry .whl; logs go to $OUT)
#                 bash benchmarks/gpu_check.sh --estimate   (optional second call)
# 1. gpu_trial.py: one full-scale trial (CUDA graphs), the general-purpose modules against
#    the fused step, and 8 trials on the card at once, each with its own copy of features.
# 2. card_sharing.py: 1 trial, 8 with their own copies, 8 opening one copy (pretrain 1 epoch).
# With --estimate instead (a second call, about 3 minutes): the per-trial estimate against
# the card at batch 4,096, where the NT-Xent similarity arrays dominate, with shared blocks
# and with learned temperatures (row-wise); one pretraining epoch each.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == --wheels ]]; then
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  ls .whl
  exit
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
out="${OUT:-/tmp/gpu-check}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/card.txt"
cd benchmarks
if [[ "${1:-}" == --estimate ]]; then
  for extra in "" "--set loss.learn_temperature=true"; do
    # shellcheck disable=SC2086
    python3 gpu_trial.py --concurrency 1 --set optim.batch_size=4096 --set pretrain.epochs=1 \
      $extra --deadline 150 --log "$out/estimate.jsonl" 2>&1 | tee -a "$out/estimate.log"
  done
  exit
fi
python3 gpu_trial.py --concurrency 1 8 --compare-general --deadline 330 \
  --log "$out/gpu_trial.jsonl" 2>&1 | tee "$out/gpu_trial.log"
python3 card_sharing.py --trials 8 --set pretrain.epochs=1 --deadline 180 2>&1 \
  | tee "$out/card_sharing.log"
