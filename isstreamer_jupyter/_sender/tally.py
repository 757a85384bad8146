"""What the sender counts and says: the counters ``stats()`` reads, the last error and the
losses, under one lock. The drain and the sender loop share one tally."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from .._transport import Answer, Outcome
from .base import Clock, Notify
from .policy import REMEDIES

#: the fix of an event refused before it was sent; log() lets none through that it knows of
REFUSED_HERE = "none: this one is dropped, the others go out; please report this with the message"


class Tally:
    def __init__(self, *, clock: Clock, notify: Notify, redact: Callable[[str], str],
                 pending: int) -> None:
        self.clock = clock
        self.notify = notify
        self.redact = redact
        self.lock = threading.Lock()  # guards what stats() reads
        self.drained = 0  # events moved from log()'s queue to the store
        #: flush markers and bucket switches in log()'s queue: stats() leaves them out
        self.marks_queued = 0
        self.pending = pending  # events in the store, not yet acknowledged
        self.in_flight = 0
        self.sent = 0
        self.requests = 0
        self.retries = 0
        self.refused = 0
        self.dropped = 0
        #: the events of this key in the spool left after a failure, as last read
        self.left_count = 0
        self.last_error = ""
        self.last_error_at: float | None = None
        self.last_remedy = ""
        self.losses: deque[str] = deque(maxlen=20)  # see lost()
        self.rate_samples: deque[tuple[float, int]] = deque(maxlen=64)

    def error(self, message: str, remedy: str, level: int = 40, *,
              retry_in: float | None = None) -> str:
        """Keep `message` as the last error and say it with the fix; returns what was said.
        `retry_in` says when the failed request is tried again. It is said, not kept: the
        state's `until` is the live countdown."""
        message = self.redact(message)
        with self.lock:
            self.last_error = message
            self.last_error_at = self.clock.wall()
            self.last_remedy = remedy
        said = message if retry_in is None else f"{message}; retrying in {retry_in:.1f} s"
        said = f"{said}. Fix: {remedy}" if remedy else said
        self.notify(level, said)
        return said

    def lost(self, message: str, remedy: str) -> None:
        """Say that events were lost, dropped or refused, and keep it for the flush that
        reports the loss."""
        said = self.error(message, remedy)
        with self.lock:
            self.losses.append(said)

    def refused_one(self, answer: Answer, key: str, *, counted: bool, others_went: bool) -> None:
        """Count and say one event, of key `key`, that the service will never take: it is
        dropped. `counted`: it was counted as pending. `others_went`: the service took
        part of the batch it was split from."""
        with self.lock:
            self.refused += 1
            if counted:
                self.pending -= 1
        key = repr(key if len(key) <= 40 else f"{key[:40]}…")
        if answer.status is None:
            self.lost(f"the client (before sending) refused an event (key {key}): "
                      f"{answer.detail}", REFUSED_HERE)
            return
        words = f": {answer.words}" if answer.words else ""
        remedy = REMEDIES[answer.outcome]  # not the event's fault, as far as the words say
        if answer.remedy:  # the service blames the event
            remedy = (f"{answer.remedy}; this one is dropped, "
                      + ("the others go out" if others_went else "the others are tried alone"))
        self.lost(f"the service refused an event (key {key}, {answer.status}){words}", remedy)

    def said_request(self, what: str, answer: Answer, took_ms: float) -> None:
        """Say a request and its answer, for debug_level 3."""
        outcome = answer.outcome.value
        answered = (f"HTTP {answer.status} ({outcome})" if answer.status
                    else "done" if answer.outcome is Outcome.ACCEPTED  # offline
                    else f"no HTTP answer ({outcome})")
        detail = f": {answer.detail}" if answer.detail else ""
        self.notify(10, f"{what}: {answered} after {took_ms:.1f} ms{detail}")

    def take_losses(self) -> list[str]:
        """What was said of the losses since the last call, the last 20 at most."""
        with self.lock:
            said = list(self.losses)
            self.losses.clear()
        return said

    def unreported(self) -> list[str]:
        """What was said of the losses not yet reported, oldest first."""
        with self.lock:
            return list(self.losses)

    def events_per_second(self) -> float:
        """The acknowledged events' rate over the last 5 s."""
        samples = list(self.rate_samples)
        now = self.clock.monotonic()
        recent = [(t, n) for t, n in samples if now - t <= 5.0]
        if len(recent) < 2:
            return 0.0
        (t0, n0), (t1, n1) = recent[0], recent[-1]
        return (n1 - n0) / max(now - t0, t1 - t0, 1e-9)

    def reset_after_fork(self, pending: int) -> None:
        """In a forked child: its own lock, an empty queue, and what its store holds. The
        parent tells of the spool it left."""
        self.lock = threading.Lock()  # a parent's thread may have held it
        self.marks_queued = 0
        self.left_count = 0
        self.pending = pending
        self.in_flight = 0
