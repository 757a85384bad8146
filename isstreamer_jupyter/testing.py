"""Helpers for tests, ours and yours: a fake transport and a fake clock.

Use them to test code that logs through a :class:`~isstreamer_jupyter.Streamer` without a
network or waiting::

    from isstreamer_jupyter import Streamer
    from isstreamer_jupyter.testing import FakeTransport

    transport = FakeTransport()
    with Streamer(bucket_name="t", access_key="k", transport=transport, spool=False) as s:
        s.log("temp", 21)
    assert transport.events() == [{"key": "temp", "value": 21, "epoch": ...}]

For a real HTTP peer, see :mod:`isstreamer_jupyter.receiver`.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ._sender import Clock
from ._transport import Answer, Outcome, RateBudget, body_of, classify

__all__ = ["Answer", "FakeClock", "FakeTransport", "Outcome", "RateBudget", "answer"]


def answer(status: int, *, retry_after: float | None = None, body: bytes = b"",
           budget: RateBudget | None = None) -> Answer:
    """The :class:`Answer` the real transport would give for an HTTP status."""
    headers = {}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if budget is not None:
        headers.update({"X-RateLimit-Limit": str(budget.limit),
                        "X-RateLimit-Remaining": str(budget.remaining),
                        "X-RateLimit-Reset": str(budget.reset)})
    if status == 400 and not body:
        body = b'{"message":{"error":{"type":"BUCKET_REMOVED"}}}'
    return classify(status, body, headers)


class FakeTransport:
    """Records what it is sent; answers from a script (then 204 forever).

    ``script`` items are :class:`Answer` objects, HTTP status codes, or callables taking
    ``(kind, bucket_key, events)`` and returning either; ``kind`` is ``"bucket"`` or
    ``"events"``. Only accepted events are recorded in :attr:`accepted`.
    """

    def __init__(self, script: Iterable[Answer | int | Callable[..., Any]] = ()) -> None:
        self.script: deque[Answer | int | Callable[..., Any]] = deque(script)
        self.calls: list[tuple[str, str, list[dict[str, Any]]]] = []
        self.accepted: list[dict[str, Any]] = []
        self.buckets: dict[str, str] = {}
        self.prepared: list[int] = []  # sizes of the batches made ready while one was out
        self.closed = False
        self._lock = threading.Lock()

    def _next(self, kind: str, bucket_key: str, events: list[dict[str, Any]]) -> Answer:
        with self._lock:
            self.calls.append((kind, bucket_key, events))
            item = self.script.popleft() if self.script else 204
        if callable(item):
            item = item(kind, bucket_key, events)
        return answer(item) if isinstance(item, int) else item

    def create_bucket(self, bucket_key: str, bucket_name: str) -> Answer:
        result = self._next("bucket", bucket_key, [])
        if result.outcome is Outcome.ACCEPTED:
            self.buckets.setdefault(bucket_key, bucket_name)
        return result

    def prepare(self, events: Sequence[tuple[str, Any, float]]) -> None:
        self.prepared.append(len(events))

    def post_events(self, bucket_key: str, events: Sequence[tuple[str, Any, float]],
                    meanwhile: Callable[[], None] | None = None) -> Answer:
        sent = json.loads(body_of(events))  # exactly what would go over the wire
        events = [dict(e, bucket_key=bucket_key) for e in sent]
        if meanwhile is not None:  # as over HTTP: after sending, before the answer
            meanwhile()
        result = self._next("events", bucket_key, events)
        if result.outcome is Outcome.ACCEPTED:
            with self._lock:
                self.accepted.extend(events)
        return result

    def events(self, bucket_key: str | None = None) -> list[dict[str, Any]]:
        """Accepted events (without their bucket key) in the order they were accepted."""
        return [{k: v for k, v in e.items() if k != "bucket_key"} for e in self.accepted
                if bucket_key is None or e["bucket_key"] == bucket_key]

    def requests(self, kind: str = "events") -> list[tuple[str, str, list[dict[str, Any]]]]:
        return [c for c in self.calls if c[0] == kind]

    def close(self) -> None:
        self.closed = True


class FakeClock(Clock):
    """Time that moves only when waited on: backoff and pacing are tested without waiting.

    ``wait`` and ``sleep`` advance both the monotonic and the wall clock; ``waits`` records
    every wait asked for.
    """

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = 1000.0
        self.offset = start - self.now
        self.waits: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + self.offset

    def advance(self, seconds: float) -> None:
        self.now += max(0.0, seconds)

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        self.waits.append(timeout or 0.0)
        if event.is_set():
            return True
        self.advance(timeout or 0.0)
        return False

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.advance(seconds)
