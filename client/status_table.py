"""GetStatus as a readable table: queue per priority, workers and their devices, models and
where they are loaded, leases and recent throughput, and each model's worker count against
what the autoscaling policy wants."""

from __future__ import annotations

from inference.v1 import types_pb2

GIB = 1024**3


def render(status: types_pb2.GetStatusResponse) -> str:
    queues = "  ".join(
        f"{types_pb2.Priority.Name(q.priority).removeprefix('PRIORITY_').lower()} {q.depth}"
        for q in status.queues
    )
    throughput = sum(m.tokens_per_second for w in status.workers for m in w.models)
    lines = [
        f"queue: {queues}    leases: {status.active_leases}/{status.total_slots} slots    "
        f"throughput: {throughput:.1f} tok/s",
        "",
        f"{'worker':<22} {'state':<10} {'device':<8} {'util':>5} {'memory':>15} "
        f"{'leases':>6} {'heartbeat':>9}",
    ]
    for w in status.workers:
        d = w.device
        memory = f"{d.memory_used_bytes / GIB:.1f}/{d.memory_total_bytes / GIB:.1f} GiB"
        state = types_pb2.WorkerState.Name(w.state).removeprefix("WORKER_STATE_").lower()
        lines.append(
            f"{w.worker_id:<22} {state:<10} {d.gpu_id:<8} {d.utilization_percent:>4.0f}% "
            f"{memory:>15} {w.active_leases:>6} {w.last_heartbeat_age_ms:>7.0f}ms"
        )
    lines += [
        "",
        f"{'model':<16} {'worker':<22} {'state':<8} {'running':>7} {'slots':>5} "
        f"{'kv cache':>16} {'tok/s':>7}",
    ]
    for w in status.workers:
        for m in w.models:
            state = types_pb2.ModelState.Name(m.state).removeprefix("MODEL_STATE_").lower()
            kv = f"{m.kv_cache_tokens_used}/{m.kv_cache_tokens_capacity}"
            lines.append(
                f"{m.info.model_id:<16} {w.worker_id:<22} {state:<8} {m.active_sequences:>7} "
                f"{m.max_slots:>5} {kv:>16} {m.tokens_per_second:>7.1f}"
            )
    if status.scaling:
        lines += [
            "",
            f"{'model':<16} {'workers':>7} {'desired':>7} {'bounds':>7} {'util':>5} "
            f"{'req/s':>6}  why",
        ]
        for s in status.scaling:
            bounds = f"{s.min_workers}-{s.max_workers}"
            lines.append(
                f"{s.model_id:<16} {s.current_workers:>7} {s.desired_workers:>7} {bounds:>7} "
                f"{s.slot_utilization * 100:>4.0f}% {s.arrival_rate_per_second:>6.1f}  {s.reason}"
            )
    return "\n".join(lines)
