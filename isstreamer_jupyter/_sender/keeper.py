"""The spool keeper: a thread that moves what log() queues to the spool while a request is
out.

The sender thread waits out each request, up to `timeout` (10 s) for a slow service. A
process killed meanwhile would lose what log() queued then, so the keeper drains the queue
every spool_interval of a request. It sleeps between requests, and through a request
answered within spool_interval.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

from .._errors import SpoolError


class Keeper:
    def __init__(self, *, drain: Callable[[], None], wanted: Callable[[], bool],
                 running: Callable[[], bool]) -> None:
        self.drain = drain
        self.wanted = wanted  # whether there is something to keep: a queue and a spool
        self.running = running  # whether the sender runs
        #: while a request is out: when it began, by time.monotonic()
        self.started: float | None = None
        self.begun = threading.Event()
        self.idle = False  # asleep until a request begins: wake it then
        self.thread: threading.Thread | None = None

    def start(self, interval: float) -> None:
        self.thread = threading.Thread(target=self._run, args=(interval,),
                                       name="isstreamer-spool-keeper", daemon=True)
        self.thread.start()

    def begin(self) -> float:
        """A request goes out; returns when, by time.monotonic()."""
        self.started = started = time.monotonic()
        if self.idle:
            self.begun.set()
        return started

    def end(self) -> None:
        """The request is answered."""
        self.started = None

    def stop(self, timeout: float) -> None:
        """Wake the keeper to see that the sender stopped, and wait for it to end."""
        self.begun.set()
        if self.thread is not None:
            self.thread.join(timeout)

    def _run(self, interval: float) -> None:
        # close() may come while a request is out: the queue still goes to the spool
        while self.running() or self.started is not None:
            self.idle = True  # before reading: a request beginning now wakes it
            started = self.started
            if started is None:
                self.begun.wait()
                self.begun.clear()
                continue
            self.idle = False
            due = started + interval - time.monotonic()
            if due <= 0 and self.wanted():
                with contextlib.suppress(SpoolError):  # the sender meets it and says it
                    self.drain()
            self.begun.wait(due if due > 0 else interval)
            self.begun.clear()
