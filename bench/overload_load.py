"""An open-loop load of streamed chat completions over HTTP, from several tenants with a mix
of priorities, and what each request became: the client side of bench.vs_vllm_overload.

Requests arrive as a Poisson process at a fixed rate, whatever the server does (an overload
is a rate the server cannot keep up with: a closed loop would slow down with it). Each is
recorded: its tenant and class, when its first token came, the tokens it got, and how it
ended: `ok`, `refused` (an HTTP error status; `hint` when it carried Retry-After), `error`
(a stream that broke), or `timeout` (no answer within the client's patience: lost, as far as
its user can tell).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

MODEL = "smollm2-135m"
OUTPUT_TOKENS = 32
TOPICS = ["the sea", "a city at night", "an old clock", "mountains", "a library", "rain"]


@dataclass(frozen=True)
class Caller:
    """A tenant: its name and the headers that identify it to the server."""

    tenant: str
    headers: dict[str, str]
    share: float  # its part of the offered requests


@dataclass
class Shot:
    """One request and what it became."""

    tenant: str
    priority: str  # high, medium or low
    sent: float  # clock seconds
    status: str = "timeout"
    first_token_s: float | None = None  # after sending
    tokens: int = 0
    hint: bool = False  # a refusal said when to try again
    code: int = 0  # the HTTP status of a refusal
    detail: str = ""  # what an error or refusal said


def prompt(number: int) -> str:
    """About 64 tokens of chat prompt, different for every request."""
    topic = TOPICS[number % len(TOPICS)]
    return (
        f"Request {number}. Write a long, detailed story about {topic}. Describe the colours, "
        "the sounds and the people in it, what they say to each other and what happens to "
        "them by the end of the day. Use plain words and short sentences, and keep going."
    )


async def send(
    session: aiohttp.ClientSession, url: str, caller: Caller, body: dict, shot: Shot
) -> None:
    """Streams one chat completion; fills in `shot` as it goes."""
    async with session.post(url, json=body, headers=caller.headers) as response:
        if response.status != 200:
            shot.status, shot.code = "refused", response.status
            shot.hint = "Retry-After" in response.headers
            shot.detail = (await response.text())[:200]
            return
        failed = False
        async for raw in response.content:
            line = raw.decode().strip()
            failed = failed or line.startswith("event: error")
            if not line.startswith("data: {"):
                continue
            if failed:
                shot.status, shot.detail = "error", line[6:206]
                return
            chunk = json.loads(line[6:])
            content = chunk.get("choices") and chunk["choices"][0]["delta"].get("content")
            if content and shot.first_token_s is None:
                shot.first_token_s = time.monotonic() - shot.sent
            if chunk.get("usage"):
                shot.tokens = chunk["usage"]["completion_tokens"]
        shot.status = "ok" if shot.tokens else "error"


async def fire(
    session: aiohttp.ClientSession,
    url: str,
    caller: Caller,
    body: dict,
    shot: Shot,
    patience_s: float,
) -> None:
    try:
        await asyncio.wait_for(send(session, url, caller, body, shot), patience_s)
    except TimeoutError:
        shot.status = "timeout"
    except aiohttp.ClientError:
        shot.status = "error"


async def open_loop(
    url: str,
    callers: list[Caller],
    mix: dict[str, float],
    rate: float,
    seconds: float,
    patience_s: float,
    priority_field: Callable[[str], object] | None,
    seed: int = 1,
) -> list[Shot]:
    """Sends `rate` requests/s for `seconds`, callers and classes drawn by their shares;
    waits for every request to end (at most `patience_s` each). `priority_field` turns a
    class into the body's `priority` (None: the server takes none)."""
    rng = random.Random(seed)
    shots: list[Shot] = []
    tasks: list[asyncio.Task] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.monotonic()
        number, next_at = 0, start
        while next_at < start + seconds:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            caller = rng.choices(callers, [c.share for c in callers])[0]
            priority = rng.choices(list(mix), list(mix.values()))[0]
            body = chat_body(number, priority_field(priority) if priority_field else None)
            shot = Shot(caller.tenant, priority, time.monotonic())
            shots.append(shot)
            tasks.append(asyncio.create_task(fire(session, url, caller, body, shot, patience_s)))
            number += 1
            next_at += rng.expovariate(rate)
        await asyncio.gather(*tasks)
    return shots


async def closed_loop(url: str, caller: Caller, streams: int, seconds: float) -> float:
    """Requests completed per second by `streams` clients sending back to back."""
    done = 0
    deadline = time.monotonic() + seconds

    async def client(session: aiohttp.ClientSession, k: int) -> None:
        nonlocal done
        number = k
        while time.monotonic() < deadline:
            shot = Shot(caller.tenant, "medium", time.monotonic())
            await fire(session, url, caller, chat_body(number, None), shot, 120.0)
            done += shot.status == "ok"
            number += streams

    started = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(client(session, k) for k in range(streams)))
    return done / (time.monotonic() - started)


def chat_body(number: int, priority: object) -> dict:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt(number)}],
        "max_tokens": OUTPUT_TOKENS,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if priority is not None:
        body["priority"] = priority
    return body
