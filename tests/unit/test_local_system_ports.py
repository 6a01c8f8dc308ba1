"""The test harness's process launcher: a worker started late does not trip over a port the
kernel gave an outgoing connection meanwhile."""

import socket

from bench.local_system import LocalSystem


def test_a_worker_started_after_its_port_was_taken_gets_another(tmp_path):
    system = LocalSystem(tmp_path, workers=1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        system.worker_ports[0] = port
        metrics = f"127.0.0.1:{system.metrics_ports['worker-0']}"
        args = ["services.gpu_worker", "--listen", f"127.0.0.1:{port}", "--metrics-listen", metrics]
        started = system._free_worker_ports("worker-0", args)
    assert started[2] == system.worker_addresses[0] != f"127.0.0.1:{port}"
    assert started[4] == metrics  # that one was free: kept
