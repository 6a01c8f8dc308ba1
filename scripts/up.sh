#!/usr/bin/env bash
# make up: sets up (venv, packages, stubs), starts the scheduler, the router and the local
# actuator (which starts and drains worker processes as the scheduler's autoscaling policy
# wants: one per GPU, or CPU slots), waits until the models kept warm are ready, prints how to
# call it, and stops everything cleanly on Ctrl-C (workers drain first). WORKERS=N instead
# starts N fixed workers serving every model, with autoscaling off. Logs go to the terminal
# (prefixed) and to .run/<service>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKERS="${WORKERS:-}"
CONFIG="${CONFIG:-deploy/local/config.toml}"
PY=.venv/bin/python
started=$(date +%s)

./scripts/bootstrap.sh
./scripts/gen_protos.sh >/dev/null
mkdir -p .run

gpus=0
if command -v nvidia-smi >/dev/null 2>&1; then gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true); fi

pids=()
stop_all() {
  trap - INT TERM EXIT
  echo; echo "==> stopping (SIGTERM; in-flight streams finish)"
  for ((i=${#pids[@]}-1; i>=0; i--)); do kill -TERM "${pids[$i]}" 2>/dev/null || true; done
  for _ in $(seq 1 150); do
    alive=0; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [[ $alive == 0 ]] && break; sleep 0.1
  done
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  echo "==> stopped"
}
trap stop_all INT TERM EXIT

start() {  # start <name> <args...>
  local name=$1; shift
  "$PY" -u -m "$@" --config "$CONFIG" > >(tee ".run/$name.log" | sed -u "s/^/[$name] /") 2>&1 &
  pids+=($!)
}

if [[ -n "$WORKERS" ]]; then
  export SCHEDULER_AUTOSCALING=false
  start scheduler services.scheduler
  for ((i=0; i<WORKERS; i++)); do
    args=(services.gpu_worker --listen "127.0.0.1:$((50061 + i))" --metrics-listen "127.0.0.1:$((9093 + i))")
    if (( gpus > 0 )); then args+=(--gpu-index $((i % gpus))); fi
    start "worker-$i" "${args[@]}"
  done
  warm=()
else
  start scheduler services.scheduler
  start actuator services.actuator   # its workers log to .run/<worker-id>.log, prefixed here
  # models with min_workers >= 1 are started at once; the others scale from zero on demand
  warm=(--models "$("$PY" -c 'import sys, tomllib; print(",".join(m["id"] for m in tomllib.load(open(sys.argv[1], "rb"))["models"] if m.get("min_workers", 1) >= 1))' "$CONFIG")")
fi
start router services.router

"$PY" scripts/wait_ready.py --address localhost:50051 --timeout 600 "${warm[@]}"
cat <<MSG

==> services ready in $(( $(date +%s) - started ))s: router on localhost:50051 (scheduler :50052, workers from :50061)
    workers follow the autoscaling policy: .venv/bin/grpcurl -plaintext localhost:50051 inference.v1.Router/GetStatus
    metrics: http://localhost:9091/metrics (router), :9092 (scheduler), :9093... (workers)
    .venv/bin/grpcurl -plaintext localhost:50051 list
    .venv/bin/grpcurl -plaintext -d '{"model_id": "llama-3-70b", "prompt": "Hello", "priority": "PRIORITY_HIGH"}' localhost:50051 inference.v1.Router/Generate
    .venv/bin/grpcurl -plaintext -d '{"model_id": "smollm2-135m", "prompt": "What is the capital of France?"}' localhost:50051 inference.v1.Router/Generate
    .venv/bin/python -m client generate --model smollm2-135m --priority high "Hello"
    Ctrl-C stops everything.
MSG
wait -n "${pids[@]}" || true
echo "==> shutting down"
