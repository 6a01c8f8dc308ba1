"""Copies a child process's output to its log file and, each line prefixed with its name, to
our stdout: the supervisor's (`scripts/supervise.py`) and the actuator's, for their children.

It reads in chunks, not lines: a line of any length (a long prompt logged at debug level)
goes through in pieces, where a line reader stops at its buffer's limit (64 KiB) and, its
reader gone, the child blocks on a full pipe and freezes.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import BinaryIO

CHUNK_BYTES = 64 * 1024


async def relay_output(
    stream: asyncio.StreamReader, out: BinaryIO, prefix: bytes, echo: bool = True
) -> None:
    """Until the child's output ends."""
    at_line_start = True
    while chunk := await stream.read(CHUNK_BYTES):
        out.write(chunk)
        out.flush()
        if echo:
            with contextlib.suppress(OSError):
                sys.stdout.buffer.write(prefixed(chunk, prefix, at_line_start))
                sys.stdout.buffer.flush()
        at_line_start = chunk.endswith(b"\n")


def prefixed(chunk: bytes, prefix: bytes, at_line_start: bool) -> bytes:
    """`chunk` with `prefix` before each line that starts in it."""
    body = chunk.replace(b"\n", b"\n" + prefix)
    if body.endswith(b"\n" + prefix):
        body = body[: -len(prefix)]  # the next line starts in a later chunk
    return (prefix if at_line_start else b"") + body
