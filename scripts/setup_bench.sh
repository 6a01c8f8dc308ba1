#!/usr/bin/env bash
# Creates .venv-bench (if missing) with the benchmark tools of requirements-bench.txt. torch
# goes in first as the CPU build (guidellm only tokenizes), so pip never pulls the CUDA one.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-bench
STAMP="$VENV/.installed"
wanted="$(cat requirements-bench.txt scripts/setup_bench.sh | sha256sum | cut -d' ' -f1)"
[[ -f "$STAMP" && "$(cat "$STAMP")" == "$wanted" ]] && exit 0
[[ -x "$VENV/bin/python" ]] || "${PYTHON:-python3}" -m venv "$VENV"
PIP=("$VENV/bin/pip" install --quiet --disable-pip-version-check)
"${PIP[@]}" "torch==2.13.0+cpu"
"${PIP[@]}" -r requirements-bench.txt
echo "$wanted" > "$STAMP"
