#!/usr/bin/env bash
# The GPU check: one command on a machine with one CUDA GPU and no network, under 8 minutes.
#
#   bash scripts/gpu_check.sh                          # random weights of SmolLM2-135M's shape
#   FLYTHINKER_MODEL=~/.cache/flythinker/models/smollm2-135m-instruct bash scripts/gpu_check.sh
#
# Runs the `gpu` tests, 40 bf16 steps of full fine-tuning with the default attention (finite
# gradient norms asserted), `flythinker experiment` on a 2-cell smoke matrix and
# scripts/gpu_bench_decode.py, and writes one JSON report: $OUT/gpu_check.json (OUT defaults to
# ./gpu_check). Without an installed flythinker it runs from this checkout (PYTHONPATH=src).
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import flythinker" 2>/dev/null || export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec timeout 480 python scripts/gpu_check.py --budget "${GPU_CHECK_BUDGET:-450}" "$@"
