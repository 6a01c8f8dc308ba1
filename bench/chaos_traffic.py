"""The chaos bench's clients: mixed traffic as users send it, each answer checked against the
answer the undisturbed system gave to the same request.

Four kinds of job, through the project's own clients: gRPC streams (the SDK, given both
routers: a stream whose router dies continues on the other), Infer and Embed (the SDK: sent
again whole on the other router), and OpenAI chat streams over HTTP (a client that retries on
the other router when its connection is cut, as OpenAI's clients retry). Three priorities,
three tenants (one over its request rate). A client retries after an explicit status that
carries a retry hint, waiting as long as the hint says and up to half as long again (jitter,
so that clients told the same hint do not all come back at once); any other failure is final.
"""

from __future__ import annotations

import json
import math
import random
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import grpc

from bench.chaos_system import TENANT_KEYS
from client.sdk import InferenceClient, RouterLost

PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Name three prime numbers.",
    "Explain gravity to a child.",
    "What does a compiler do?",
    "Give me a recipe for pancakes.",
)
EMBED_TEXTS = (("a cat on a mat", "a kitten on a rug"), ("gRPC streams tokens", "soup"))
TOKENS = {"smollm2-135m": 24, "llama-3-70b": 40}
KINDS = ("stream", "infer", "embed", "sse")
RETRY_KEY = "retry-after-ms"
JOB_BUDGET_S = 240.0  # a job not done by then is lost


@dataclass(frozen=True)
class Job:
    kind: str
    model: str
    prompt: int
    tenant: str
    priority: str

    @property
    def reference_key(self) -> tuple:
        return ("http" if self.kind == "sse" else "grpc", self.model, self.prompt)


@dataclass
class Result:
    job: Job
    outcome: str = "lost"  # ok, wrong (text differs from the undisturbed one), failed, lost
    tries: int = 0
    hinted: list[str] = field(default_factory=list)  # explicit statuses retried on their hint
    cuts: int = 0  # connections cut under an HTTP stream, retried on the other router
    moves: int = 0  # gRPC calls the SDK sent again after their router was lost
    detail: str = ""


class Retry(Exception):
    def __init__(self, status: str, wait_s: float) -> None:
        super().__init__(status)
        self.status, self.wait_s = status, wait_s


def random_job(rng: random.Random) -> Job:
    kind = rng.choice(KINDS)
    model = "minilm-l6-v2" if kind == "embed" else rng.choice(tuple(TOKENS))
    count = len(EMBED_TEXTS) if kind == "embed" else len(PROMPTS)
    return Job(
        kind,
        model,
        rng.randrange(count),
        rng.choice(tuple(TENANT_KEYS)),
        rng.choice(("high", "medium", "low")),
    )


def answer(job: Job, routers: list[str], http: list[str], result: Result | None = None) -> object:
    """One try of the job: its text or vectors. Raises Retry (an explicit status with a
    hint), or the failure as it came."""
    key = TENANT_KEYS[job.tenant]
    if job.kind == "sse":
        return _sse(job, http, key, result or Result(job))
    with InferenceClient(routers, api_key=key, timeout_s=JOB_BUDGET_S) as client:
        try:
            return _grpc_answer(job, client)
        finally:
            if result is not None:
                result.moves += client.moves


def _grpc_answer(job: Job, client: InferenceClient) -> object:
    try:
        if job.kind == "embed":
            return client.embed(job.model, list(EMBED_TEXTS[job.prompt]))
        request = client.request(
            job.model, PROMPTS[job.prompt], priority=job.priority, max_tokens=TOKENS[job.model]
        )
        if job.kind == "infer":
            return client.infer(request).generated_text
        return "".join(m.delta.text for m in client.generate(request) if m.HasField("delta"))
    except grpc.RpcError as exc:
        hint = _hint(exc)
        if hint is not None:
            raise Retry(exc.code().name, hint) from None
        raise


def _hint(exc: grpc.RpcError) -> float | None:
    trailers = dict(exc.trailing_metadata() or ()) if isinstance(exc, grpc.Call) else {}
    value = trailers.get(RETRY_KEY)
    return int(value) / 1000 if value is not None else None


def _sse(job: Job, http: list[str], key: str, result: Result) -> str:
    """An OpenAI chat stream; a cut connection moves to the next router and starts over."""
    body = json.dumps(
        {
            "model": job.model,
            "stream": True,
            "max_tokens": TOKENS[job.model],
            "priority": job.priority,
            "messages": [{"role": "user", "content": PROMPTS[job.prompt]}],
        }
    ).encode()
    for address in [*http, *http]:  # each router, twice, before the cut counts as a failure
        request = urllib.request.Request(
            f"http://{address}/v1/chat/completions",
            data=body,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        try:
            return _read_sse(urllib.request.urlopen(request, timeout=JOB_BUDGET_S))
        except urllib.error.HTTPError as exc:
            retry = exc.headers.get("Retry-After")
            if retry is None:
                raise
            raise Retry(f"HTTP {exc.code}", float(retry)) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, Cut):
            result.cuts += 1
            time.sleep(0.5)
    raise Cut("every router cut the stream")


class Cut(Exception):
    """The stream ended without [DONE]: its connection was cut."""


def _read_sse(response) -> str:
    texts = []
    with response:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            data = line[len("data: ") :]
            if data == "[DONE]":
                return "".join(texts)
            event = json.loads(data)
            if "error" in event:
                retry_ms = event["error"].get("retry_after_ms")
                if retry_ms is None:
                    raise RuntimeError(f"stream error: {event['error']}")
                raise Retry(event["error"]["code"], retry_ms / 1000)
            for choice in event.get("choices", ()):
                texts.append(choice.get("delta", {}).get("content") or "")
    raise Cut("no [DONE]")


def run_job(job: Job, routers: list[str], http: list[str], expected: dict) -> Result:
    """The job until it completes, fails, or runs out of time; checked against `expected`."""
    result = Result(job)
    deadline = time.monotonic() + JOB_BUDGET_S
    while time.monotonic() < deadline:
        result.tries += 1
        try:
            got = answer(job, routers, http, result)
        except Retry as retry:
            result.hinted.append(retry.status)
            wait_s = retry.wait_s * random.uniform(1.0, 1.5)  # jitter, as clients should:
            time.sleep(min(wait_s, max(0.0, deadline - time.monotonic())))  # no herd
            continue
        except (grpc.RpcError, RouterLost, Cut, RuntimeError, OSError) as exc:
            result.outcome, result.detail = "failed", _describe(exc)
            return result
        result.outcome = "ok" if same(got, expected[job.reference_key]) else "wrong"
        if result.outcome == "wrong":
            result.detail = f"got {got!r}"[:300]
        return result
    return result


def same(got: object, want: object) -> bool:
    if isinstance(want, str):
        return got == want
    return all(
        len(a) == len(b)
        and all(math.isclose(x, y, abs_tol=1e-4) for x, y in zip(a, b, strict=True))
        for a, b in zip(got, want, strict=True)
    )


def _describe(exc: Exception) -> str:
    if isinstance(exc, grpc.RpcError) and isinstance(exc, grpc.Call):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"


def references(routers: list[str], http: list[str]) -> dict:
    """Each request's answer from the undisturbed system (as an unlimited tenant)."""
    expected = {}
    for model in TOKENS:
        for i in range(len(PROMPTS)):
            for kind in ("stream", "sse"):
                job = Job(kind, model, i, "alpha", "high")
                expected[job.reference_key] = answer(job, routers, http)
    for i in range(len(EMBED_TEXTS)):
        job = Job("embed", "minilm-l6-v2", i, "alpha", "high")
        expected[job.reference_key] = answer(job, routers, http)
    return expected
