"""The small types the sender's parts share: a bucket, a flush marker, the clock."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .._errors import DeliveryError

#: how the sender says things: (logging level, message)
Notify = Callable[[int, str], None]


@dataclass(frozen=True)
class Bucket:
    name: str
    key: str


def bounded(seconds: float | None) -> float | None:
    """A wait as threading's waits take it. None, no bound, stands for inf and for any wait
    longer than they take: they raise OverflowError past about 292 years."""
    return None if seconds is None or seconds > threading.TIMEOUT_MAX else seconds


class Clock:
    """Real time. Tests pass ``isstreamer_jupyter.testing.FakeClock`` instead."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        return event.wait(bounded(timeout))

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class Marker:
    """Put in the queue by ``flush()``; done when every event before it is acknowledged."""

    __slots__ = ("done", "error", "upto")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.upto: int | None = None
        self.error: DeliveryError | None = None
