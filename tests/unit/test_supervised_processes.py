"""Supervised processes: a child's output reaches its log and our stdout whatever the length
of its lines (review finding 2: a line over 64 KiB used to end the reader, and the child then
froze), and the supervisor stops its processes in reverse order, one after another."""

import asyncio
import io
import signal
import subprocess
import sys
import time
from pathlib import Path

from services.common.output_relay import prefixed, relay_output

ROOT = Path(__file__).resolve().parents[2]
CHILD = (
    "import sys, time\n"
    "sys.stdout.write('x' * 300_000 + '\\n')\n"
    "sys.stdout.write('after the long line\\n')\n"
    "sys.stdout.flush()\n"
)


def test_a_line_longer_than_any_buffer_is_relayed_whole_and_the_child_goes_on():
    async def run() -> bytes:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, stdout=asyncio.subprocess.PIPE
        )
        out = io.BytesIO()
        await asyncio.wait_for(relay_output(child.stdout, out, b"[c] ", echo=False), 30)
        assert await child.wait() == 0
        return out.getvalue()

    assert asyncio.run(run()) == b"x" * 300_000 + b"\nafter the long line\n"


def test_each_line_is_prefixed_once_across_chunks():
    first = prefixed(b"one\ntw", b"[p] ", at_line_start=True)
    second = prefixed(b"o\nthree\n", b"[p] ", at_line_start=False)
    assert first + second == b"[p] one\n[p] two\n[p] three\n"


def test_the_supervisor_keeps_a_child_with_a_long_line_running(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD + "time.sleep(60)\n")
    supervisor = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "scripts" / "supervise.py"),
            "--log-dir",
            str(tmp_path),
            "--process",
            f"child={sys.executable} {script}",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        log = tmp_path / "child.log"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and b"after" not in (
            log.read_bytes() if log.exists() else b""
        ):
            time.sleep(0.1)
        assert log.read_bytes() == b"x" * 300_000 + b"\nafter the long line\n"
    finally:
        supervisor.terminate()
        supervisor.wait(timeout=30)


def test_the_supervisor_stops_its_processes_one_after_another_in_reverse_order(tmp_path):
    """Review finding 17: the router drains before the workers and the scheduler go."""
    record = tmp_path / "stops.txt"
    script = tmp_path / "child.py"
    script.write_text(
        "import signal, sys, time\n"
        "def stop(*_):\n"
        "    with open(sys.argv[2], 'a') as f: f.write(f'{sys.argv[1]} got {time.time()}\\n')\n"
        "    time.sleep(0.3)\n"
        "    with open(sys.argv[2], 'a') as f: f.write(f'{sys.argv[1]} left {time.time()}\\n')\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "print('up', flush=True)\n"
        "time.sleep(60)\n"
    )
    names = ["scheduler", "actuator", "router"]
    argv = [sys.executable, str(ROOT / "scripts" / "supervise.py"), "--log-dir", str(tmp_path)]
    for name in names:
        argv += ["--process", f"{name}={sys.executable} {script} {name} {record}"]
    supervisor = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(
        (tmp_path / f"{n}.log").exists() and b"up" in (tmp_path / f"{n}.log").read_bytes()
        for n in names
    ):
        time.sleep(0.05)
    supervisor.send_signal(signal.SIGINT)  # Ctrl-C
    assert supervisor.wait(timeout=30) == 0
    events = [line.split() for line in record.read_text().splitlines()]
    assert [(name, what) for name, what, _ in events] == [
        ("router", "got"), ("router", "left"),
        ("actuator", "got"), ("actuator", "left"),
        ("scheduler", "got"), ("scheduler", "left"),
    ]  # fmt: skip
