"""The workers' WorkerSession streams: one outbox of commands each, and their telemetry.

A worker that reconnects replaces its old session (which is told to end); a session ends by
the END_SESSION sentinel put in its outbox.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

END_SESSION = None  # put in an outbox: the session ends


@dataclass
class Session:
    """One worker's WorkerSession stream: commands to send it, and its latest telemetry."""

    worker_id: str
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    device: object = None  # last DeviceTelemetry message, shown by GetStatus
    models: list = field(default_factory=list)  # last WorkerModel messages, shown by GetStatus

    def end(self) -> None:
        self.outbox.put_nowait(END_SESSION)


class Sessions:
    """The live session of each worker. `to_message` turns a domain command into what the
    session stream carries."""

    def __init__(self, to_message: Callable[[object], object] | None = None) -> None:
        self._by_worker: dict[str, Session] = {}
        self._to_message = to_message

    def open(self, worker_id: str, device: object) -> Session:
        old = self._by_worker.get(worker_id)
        if old is not None:  # a worker that reconnects replaces its old session
            old.end()
        session = self._by_worker[worker_id] = Session(worker_id, device=device)
        return session

    def current(self, session: Session) -> bool:
        """Whether `session` is its worker's live one (not replaced, not ended)."""
        return self._by_worker.get(session.worker_id) is session

    def close(self, session: Session) -> bool:
        """Forgets a session; False when a newer one of the same worker replaced it."""
        if not self.current(session):
            return False
        del self._by_worker[session.worker_id]
        return True

    def end(self, worker_id: str) -> None:
        """Ends a worker's session (it was declared dead)."""
        session = self._by_worker.pop(worker_id, None)
        if session is not None:
            session.end()

    def end_all(self) -> None:
        for session in self._by_worker.values():
            session.end()

    def get(self, worker_id: str) -> Session | None:
        return self._by_worker.get(worker_id)

    def send(self, worker_id: str, command: object) -> bool:
        """Queues a command (domain object) for a worker. False if it has no session."""
        session = self._by_worker.get(worker_id)
        if session is None:
            return False
        convert = self._to_message
        session.outbox.put_nowait(convert(command) if convert is not None else command)
        return True
