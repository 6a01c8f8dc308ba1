"""python -m services.gpu_worker --config deploy/local/config.toml [--gpu-index N]"""

from __future__ import annotations

import asyncio
import logging
import os
import warnings

from services.common.cli import base_parser, run_service
from services.common.tracing import shutdown_tracing
from services.gpu_worker.config import WorkerConfig, load

log = logging.getLogger("services.gpu_worker")
STOP_MARGIN_S = 10.0

# No progress bars in a service's log (model loading draws them); and no tqdm monitor thread,
# whose lock a finalizer could wait on forever as the interpreter shuts down.
os.environ.setdefault("TQDM_DISABLE", "1")
# torch.cuda imports the `pynvml` module, which the pynvml wheel (a shim over nvidia-ml-py)
# marks deprecated; the NVML bindings themselves are current.
warnings.filterwarnings("ignore", message="The pynvml package is deprecated")


def pin_device(config: WorkerConfig) -> str:
    """Pins the process to its GPU before torch loads; returns the torch device to use."""
    if config.gpu_index >= 0:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(config.gpu_index)
    import torch

    if config.torch_threads > 0:
        torch.set_num_threads(config.torch_threads)
    if config.device != "auto":
        return config.device
    return "cuda" if torch.cuda.is_available() else "cpu"


async def main(config: WorkerConfig) -> None:
    from services.gpu_worker.server import WorkerServer

    device = pin_device(config)
    server = WorkerServer(config, device)
    port = await server.start(load_models=False)
    log.info("worker %s serving on port %d (%s, %s)", server.worker_id, port, server.gpu_id, device)
    loading = asyncio.create_task(server.host.load_all())
    loading.add_done_callback(lambda _: server.session and server.session.send_heartbeat_now())
    await server.grpc.wait_for_stop_signal()
    log.info("stopping: draining in-flight streams (grace %.1fs)", config.shutdown_grace_s)
    loading.cancel()
    stopping = asyncio.ensure_future(server.stop())
    # drained or not, the process ends: past its grace and a margin, it stops waiting
    await asyncio.wait({stopping}, timeout=config.shutdown_grace_s + STOP_MARGIN_S)
    if not stopping.done():
        log.error("the worker did not stop within its grace period; exiting anyway")
    # Drained: the process ends here, not in the interpreter's teardown, where a library's
    # finalizer (tqdm's, seen in the chaos bench) can wait on a lock forever and leave an
    # orphaned worker holding its model's memory.
    shutdown_tracing()
    logging.shutdown()
    os._exit(server.exit_code if stopping.done() else 1)


def _parser():
    parser = base_parser("Inference GPU worker")
    parser.add_argument("--scheduler", dest="scheduler_address", help="scheduler host:port")
    parser.add_argument("--gpu-index", type=int, help="pin to this GPU (CUDA_VISIBLE_DEVICES)")
    parser.add_argument("--models", help="comma-separated model ids to serve")
    parser.add_argument("--worker-id", help="worker id (default <hostname>-<port>)")
    parser.add_argument("--device", help="auto, cpu or cuda")
    return parser


if __name__ == "__main__":
    run_service("gpu_worker", _parser(), load, main)
