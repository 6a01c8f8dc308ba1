"""Hosts on one machine, for tests and benches of what crosses a network: network namespaces
joined by a bridge, each with its own address, services started inside them, and links cut
silently (every packet dropped, no reset) with nftables, both ways or one way.

    bed = NetBed.create()            # needs root, `ip` and `nft`; `available()` says
    router, worker = bed.host("router"), bed.host("w1")
    proc = worker.spawn(["services.gpu_worker", ...], env, log_path)
    worker.cut()                     # silent: packets to and from w1 are dropped
    worker.cut(peer=router, way="in")  # only what the router sends w1 is dropped
    worker.heal()
    bed.close()

The root namespace reaches every host through the bridge's address (`bed.gateway`).
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.local_system import ROOT

TABLE = "netbed"
_BEDS = itertools.count()


def available() -> str:
    """ "" when namespaces can be made here; otherwise why not."""
    if os.geteuid() != 0:
        return "needs root"
    missing = [tool for tool in ("ip", "nft") if shutil.which(tool) is None]
    return f"needs {', '.join(missing)}" if missing else ""


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


@dataclass
class Host:
    name: str
    namespace: str
    address: str

    def spawn(self, args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
        """`python -m <args>` inside this host's namespace, logging to `log`."""
        with open(log, "w") as out:
            return subprocess.Popen(
                ["ip", "netns", "exec", self.namespace, sys.executable, "-m", *args],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def cut(self, peer: Host | None = None, way: str = "both") -> None:
        """Drops packets silently: to and from `peer` (every host: None); `way` "in" drops
        only what arrives here, "out" only what leaves."""
        self.heal()
        match = f"ip saddr {peer.address} " if peer else ""
        out_match = f"ip daddr {peer.address} " if peer else ""
        rules = [f"add table inet {TABLE}"]
        for hook, rule in (("input", match), ("output", out_match)):
            rules.append(f"add chain inet {TABLE} {hook} {{ type filter hook {hook} priority 0; }}")
            if way in ("both", "in" if hook == "input" else "out"):
                rules.append(f"add rule inet {TABLE} {hook} {rule}drop")
        self._nft("\n".join(rules))

    def heal(self) -> None:
        subprocess.run(
            ["ip", "netns", "exec", self.namespace, "nft", "delete", "table", "inet", TABLE],
            capture_output=True,
        )

    def _nft(self, script: str) -> None:
        subprocess.run(
            ["ip", "netns", "exec", self.namespace, "nft", "-f", "-"],
            input=script,
            check=True,
            capture_output=True,
            text=True,
        )


@dataclass
class NetBed:
    tag: str  # short and unique: names of namespaces and links derive from it
    subnet: int  # 10.<subnet>.0.0/24
    hosts: list[Host] = field(default_factory=list)

    @classmethod
    def create(cls) -> NetBed:
        made = next(_BEDS)  # each bed its own names: a deleted one may linger a moment
        tag = f"nb{os.getpid() % 10000}x{made}"
        bed = cls(tag, 100 + (os.getpid() + made) % 100)
        bed.close()  # what a killed run with the same tag left behind
        _run("ip", "link", "add", bed.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{bed.gateway}/24", "dev", bed.bridge)
        _run("ip", "link", "set", bed.bridge, "up")
        return bed

    @property
    def bridge(self) -> str:
        return f"{self.tag}br"

    @property
    def gateway(self) -> str:
        return f"10.{self.subnet}.0.1"

    def host(self, name: str) -> Host:
        """A new namespace on the bridge with the next address."""
        index = len(self.hosts) + 2
        host = Host(name, f"{self.tag}-{name}", f"10.{self.subnet}.0.{index}")
        outside, inside = f"{self.tag}v{index}", f"{self.tag}p{index}"
        _run("ip", "netns", "add", host.namespace)
        _run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
        _run("ip", "link", "set", inside, "netns", host.namespace)
        _run("ip", "link", "set", outside, "master", self.bridge)
        _run("ip", "link", "set", outside, "up")
        inside_ns = ("ip", "netns", "exec", host.namespace, "ip")
        _run(*inside_ns, "addr", "add", f"{host.address}/24", "dev", inside)
        _run(*inside_ns, "link", "set", inside, "up")
        _run(*inside_ns, "link", "set", "lo", "up")
        _run(*inside_ns, "route", "add", "default", "via", self.gateway)
        self.hosts.append(host)
        return host

    def close(self) -> None:
        """Removes the namespaces, links and bridge of this tag (a veth goes with its end)."""
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        for line in listed.splitlines():
            name = line.split(" ")[0]
            if name.startswith(f"{self.tag}-"):
                subprocess.run(["ip", "netns", "del", name], capture_output=True)
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        for name in re.findall(rf"^\d+: ({re.escape(self.tag)}v\d+)@", links, re.MULTILINE):
            subprocess.run(["ip", "link", "del", name], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        self.hosts.clear()
