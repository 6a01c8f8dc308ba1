"""Processes the worker spawns end with it, even when it is killed with kill -9.

vLLM runs its engine core in a child process of the worker, started with multiprocessing's
`spawn`. A worker killed with kill -9 would leave that engine running as an orphan, holding
the model and the KV cache (on a GPU, the device memory its replacement needs). Linux's
parent-death signal ends it instead: every interpreter the worker spawns first asks for
SIGTERM when its parent dies (vLLM shuts down cleanly on it), then runs what it was started
for. vLLM's own workers, in turn, already watch the engine core through a pipe.
"""

from __future__ import annotations

import os
import sys

# run first in a spawned interpreter: SIGTERM when its parent (this process, whose pid is
# filled in) dies; at once if it died before the request took effect
_END_WITH_PARENT = (
    "import ctypes,os,signal;"
    "ctypes.CDLL(None).prctl(1,signal.SIGTERM,0,0,0);"  # 1: PR_SET_PDEATHSIG
    "os.getppid()=={parent} or os.kill(os.getpid(),signal.SIGTERM);"
)


def end_spawned_children_with_this_process() -> None:
    """From now on, every process spawned here (multiprocessing's spawn) ends with this one.
    Linux only; idempotent."""
    from multiprocessing import spawn

    if not sys.platform.startswith("linux") or getattr(spawn.get_command_line, "armed", False):
        return
    original = spawn.get_command_line

    def get_command_line(**kwds):
        command = original(**kwds)
        if "-c" in command:  # [python, *flags, "-c", program, "--multiprocessing-fork"]
            at = command.index("-c") + 1
            command[at] = _END_WITH_PARENT.format(parent=os.getpid()) + command[at]
        return command

    get_command_line.armed = True  # type: ignore[attr-defined]
    spawn.get_command_line = get_command_line
