#!/usr/bin/env bash
# Generates Python stubs and .pyi type stubs from protos/ into gen/ and puts gen/ on the
# virtual environment's path (a .pth file), so code imports `inference.v1.*_pb2` by name.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"  # the image builds set VENV=/opt/venv
PYTHON="${PYTHON:-$VENV/bin/python}"  # or an interpreter outside any venv (the vLLM image)
rm -rf gen
mkdir -p gen
"$PYTHON" -m grpc_tools.protoc -Iprotos \
  --python_out=gen --pyi_out=gen --grpc_python_out=gen \
  protos/inference/v1/*.proto
touch gen/inference/__init__.py gen/inference/v1/__init__.py
site="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$(pwd)/gen" > "$site/inference_gen.pth"
echo "==> generated $(ls gen/inference/v1/*.py | wc -l) modules into gen/"
