#!/usr/bin/env bash
# Regenerate constraints.txt: the tested set of every dependency (all extras and the test tools),
# resolved by uv for CPython 3.11 on Linux x86_64 with torch at the CPU pin of the README; and
# constraints-lowest.txt: the same with every direct dependency at the lowest version pyproject.toml
# allows (torch stays at the pin: its lowest allowed release would be a multi-GB CUDA build).
#   bash scripts/lock.sh            (needs `pip install uv`; reads PyPI)
# CI installs with `pip install -c constraints.txt -e ".[test]"`; users may do the same.
set -euo pipefail
cd "$(dirname "$0")/.."
printf 'torch==2.13.0\n' > /tmp/flythinker-torch-pin.txt
uv pip compile pyproject.toml --extra test -c /tmp/flythinker-torch-pin.txt --python-version 3.11 \
  --python-platform x86_64-manylinux_2_28 --annotation-style line --custom-compile-command "bash scripts/lock.sh" \
  -o constraints.txt
uv pip compile pyproject.toml --extra test -c /tmp/flythinker-torch-pin.txt --python-version 3.11 \
  --python-platform x86_64-manylinux_2_28 --annotation-style line --custom-compile-command "bash scripts/lock.sh" \
  --resolution lowest-direct -o constraints-lowest.txt
