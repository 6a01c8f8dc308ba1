"""Partitions for the chaos bench (`--partitions`), on loopback: nftables rules in this
machine's own network namespace that silently drop a worker's packets by its ports, so that
the system as `make up` starts it meets hosts that go quiet, not only processes that die.
Needs root and nft; each cut is healed after a few seconds, and every cut at the end.

Three kinds, one at a time: a worker silent (its listening ports and its session with the
scheduler), cut from the routers only (its listening ports: the scheduler still hears it), cut
from the scheduler only (its session's connection: the routers still stream from it).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import threading
import time

import psutil

TABLE = "chaos_cuts"
KINDS = ("worker silent", "worker cut from the routers", "worker cut from the scheduler")


def available() -> str:
    """Why cuts cannot be made here ("" when they can): tried with a table whose chain hooks
    input and holds no rule."""
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("nft") is None:
        return "needs nft (Debian: apt-get install nftables)"
    probe = f"{TABLE}_probe"
    chain = f"add chain inet {probe} input {{ type filter hook input priority 0; }}"
    script = f"add table inet {probe}\n{chain}"
    made = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True)
    subprocess.run(["nft", "delete", "table", "inet", probe], capture_output=True)
    return f"nft cannot hook here: {made.stderr.strip()}" if made.returncode else ""


def worker_ports(pid: int, scheduler_port: int, kind: str) -> list[int]:
    """The local ports whose packets a cut of `kind` drops."""
    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return []
    listening = [c.laddr.port for c in connections if c.status == psutil.CONN_LISTEN]
    session = [c.laddr.port for c in connections if c.raddr and c.raddr.port == scheduler_port]
    if kind == KINDS[1]:
        return listening
    if kind == KINDS[2]:
        return session
    return listening + session


def cut(ports: list[int]) -> None:
    """Drops every packet to or from `ports` on this host, silently."""
    heal()
    rules = [f"add table inet {TABLE}"]
    for hook in ("input", "output"):
        rules.append(f"add chain inet {TABLE} {hook} {{ type filter hook {hook} priority 0; }}")
        for port in ports:
            rules.append(f"add rule inet {TABLE} {hook} tcp dport {port} drop")
            rules.append(f"add rule inet {TABLE} {hook} tcp sport {port} drop")
    subprocess.run(["nft", "-f", "-"], input="\n".join(rules), check=True, text=True)


def heal() -> None:
    subprocess.run(["nft", "delete", "table", "inet", TABLE], capture_output=True)


def cut_loop(system, rng: random.Random, stop: threading.Event, log: list) -> None:
    """Every 6-14 s a worker cut one of the KINDS of ways for 2-12 s, then healed."""
    began = time.monotonic()
    try:
        while not stop.wait(rng.uniform(6.0, 14.0)):  # a failing cut raises: the run says so
            victims = system.victims("worker")
            if not victims:
                continue
            (name, pid), kind = rng.choice(victims), rng.choice(KINDS)
            ports = worker_ports(pid, system.scheduler_port, kind)
            if not ports:
                continue
            seconds = round(rng.uniform(2.0, 12.0), 1)
            cut(ports)
            at = round(time.monotonic() - began, 1)
            log.append({"at_s": at, "kind": kind, "worker": name, "seconds": seconds})
            stop.wait(seconds)
            heal()
    finally:
        heal()
