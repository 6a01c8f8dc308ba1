#!/usr/bin/env bash
# make up: sets up (venv, packages, stubs), starts the scheduler, the router and the local
# actuator (which starts and drains worker processes as the scheduler's autoscaling policy
# wants: one per GPU, or CPU slots), waits until the models kept warm are ready, prints how to
# call it, and stops everything cleanly on Ctrl-C (workers drain first). WORKERS=N instead
# starts N fixed workers serving every model, with autoscaling off. Every process runs under
# scripts/supervise.py: one that dies is restarted, the others keep serving. Logs go to the
# terminal (prefixed) and to $RUN_DIR/<service>.log (default .run). POOLS=N splits the models
# into N pools (scripts/pools_config.py), each with its own scheduler and actuator; the router
# sends each model to its pool's scheduler. ENGINE=vllm runs the models of the embedded
# transformers engine on vLLM instead (scripts/engine_config.py; .venv-vllm, make setup-vllm).
# ROUTERS=N starts N routers; a client given all of them (python -m client --address a,b)
# continues a stream through another when its router dies.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKERS="${WORKERS:-}"
POOLS="${POOLS:-1}"
ROUTERS="${ROUTERS:-1}"
export ROUTER_REPLICAS="$ROUTERS"  # each router enforces its share of every tenant's limits
ROUTERS_BASE_PORT="${ROUTERS_BASE_PORT:-50150}"  # router i: gRPC on this + i, HTTP and metrics
ROUTERS_HTTP_BASE_PORT="${ROUTERS_HTTP_BASE_PORT:-8000}"  # on these + i (i >= 1)
ROUTERS_METRICS_BASE_PORT="${ROUTERS_METRICS_BASE_PORT:-9190}"
CONFIG="${CONFIG:-deploy/local/config.toml}"
RUN_DIR="${RUN_DIR:-.run}"
WORKER_BASE_PORT="${WORKER_BASE_PORT:-50061}"
WORKER_METRICS_BASE_PORT="${WORKER_METRICS_BASE_PORT:-9093}"
ROUTER="${ROUTER_LISTEN:-localhost:50051}"
PY=.venv/bin/python
export ACTUATOR_LOG_DIR="${ACTUATOR_LOG_DIR:-$RUN_DIR}"
ENGINE="${ENGINE:-}"
WORKER_PY="$PY"
started=$(date +%s)

./scripts/bootstrap.sh
./scripts/gen_protos.sh >/dev/null
mkdir -p "$RUN_DIR"
if [[ -n "$ENGINE" ]]; then
  moved=$("$PY" scripts/engine_config.py --engine "$ENGINE" --config "$CONFIG" --out "$RUN_DIR/config-$ENGINE.toml")
  CONFIG="$RUN_DIR/config-$ENGINE.toml"
  WORKER_PY=$("$PY" -c 'import sys; from services.common.engine_python import worker_python; print(worker_python(sys.argv[1]))' "$ENGINE")
  echo "==> on $ENGINE: ${moved:-no model}"
fi

gpus=0
if command -v nvidia-smi >/dev/null 2>&1; then gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true); fi

service() { echo "$1=$PY -u -m $2 --config $CONFIG ${*:3}"; }
# models with min_workers >= 1 are started at once; the others scale from zero on demand
kept_warm() { "$PY" -c 'import sys, tomllib; print(",".join(m["id"] for m in tomllib.load(open(sys.argv[1], "rb"))["models"] if m.get("min_workers", 1) >= 1))' "$CONFIG"; }
procs=()
warm=()
if (( POOLS > 1 )); then
  [[ -z "$WORKERS" ]] || { echo "POOLS and WORKERS do not mix: a pool's workers follow its actuator" >&2; exit 2; }
  "$PY" scripts/pools_config.py --pools "$POOLS" --config "$CONFIG" --out "$RUN_DIR/pools.toml" >"$RUN_DIR/pools.txt"
  CONFIG="$RUN_DIR/pools.toml"
  k=0
  while read -r name port models; do
    pool=""; [[ "$name" == default ]] || pool="$name"
    step=$((k * 100))
    procs+=(--process "$(service "scheduler-$name" services.scheduler "--pool '$pool' --listen 127.0.0.1:$port --metrics-listen 127.0.0.1:$((9092 + step))")")
    procs+=(--process "actuator-$name=env ACTUATOR_WORKER_BASE_PORT=$((WORKER_BASE_PORT + step)) ACTUATOR_METRICS_BASE_PORT=$((WORKER_METRICS_BASE_PORT + step)) ACTUATOR_WORKER_ID_PREFIX=local-$name ACTUATOR_POOL=$pool $PY -u -m services.actuator --config $CONFIG --scheduler 127.0.0.1:$port")
    echo "==> pool $name: scheduler 127.0.0.1:$port, models $models"
    k=$((k + 1))
  done <"$RUN_DIR/pools.txt"
  warm=(--models "$(kept_warm)")
elif [[ -n "$WORKERS" ]]; then
  procs+=(--process "$(service scheduler services.scheduler)")
  export SCHEDULER_AUTOSCALING_ENABLED=false
  for ((i=0; i<WORKERS; i++)); do
    args="--listen 127.0.0.1:$((WORKER_BASE_PORT + i)) --metrics-listen 127.0.0.1:$((WORKER_METRICS_BASE_PORT + i))"
    if (( gpus > 0 )); then args+=" --gpu-index $((i % gpus))"; fi
    procs+=(--process "$(PY=$WORKER_PY service "worker-$i" services.gpu_worker "$args")")
  done
else
  procs+=(--process "$(service scheduler services.scheduler)")
  procs+=(--process "$(service actuator services.actuator)")  # its workers log to .run/<id>.log
  warm=(--models "$(kept_warm)")
fi
procs+=(--process "$(service router services.router)")
routers="$ROUTER"
for ((i=1; i<ROUTERS; i++)); do  # more routers: gRPC :5015i, HTTP :800i, metrics :919i
  grpc_at="localhost:$((ROUTERS_BASE_PORT + i))"
  procs+=(--process "router-$i=env ROUTER_HTTP_LISTEN=localhost:$((ROUTERS_HTTP_BASE_PORT + i)) $PY -u -m services.router --config $CONFIG --listen $grpc_at --metrics-listen localhost:$((ROUTERS_METRICS_BASE_PORT + i))")
  routers+=",$grpc_at"
done

"$PY" -u scripts/supervise.py --log-dir "$RUN_DIR" "${procs[@]}" &
supervisor=$!
trap 'kill -TERM "$supervisor" 2>/dev/null || true; wait "$supervisor" || true; exit 0' INT TERM

if ! "$PY" scripts/wait_ready.py --address "$ROUTER" --timeout 600 "${warm[@]}"; then
  kill -TERM "$supervisor" 2>/dev/null || true
  wait "$supervisor" || true
  exit 1
fi
cat <<MSG

==> services ready in $(( $(date +%s) - started ))s: routers on $routers (scheduler :50052, workers from :$WORKER_BASE_PORT)
    a process that dies is restarted (logs and pids in $RUN_DIR/); Ctrl-C stops everything
    workers follow the autoscaling policy: .venv/bin/grpcurl -plaintext $ROUTER inference.v1.Router/GetStatus
    metrics: http://localhost:9091/metrics (router), :9092 (scheduler), :9093... (workers)
    .venv/bin/grpcurl -plaintext $ROUTER list
    .venv/bin/grpcurl -plaintext -d '{"model_id": "llama-3-70b", "prompt": "Hello", "priority": "PRIORITY_HIGH"}' $ROUTER inference.v1.Router/Generate
    .venv/bin/grpcurl -plaintext -d '{"model_id": "smollm2-135m", "prompt": "What is the capital of France?"}' $ROUTER inference.v1.Router/Generate
    .venv/bin/python -m client --address $routers generate --model smollm2-135m --priority high "Hello"
MSG
wait "$supervisor" || true
