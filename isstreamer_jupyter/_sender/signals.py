"""The panel's view of each signal: counts, latest values, recent numbers for sparklines."""

from __future__ import annotations

import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from .._spool import Event
from .._stats import SignalStat

#: signals tracked for the panel; more keys are counted but not tracked
MAX_SIGNALS = 1000
SPARK_POINTS = 60


@dataclass
class Signal:
    last_value: Any = None
    last_time: float = 0.0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=SPARK_POINTS))


class Signals:
    """Tracked by the drain as events reach the store; read by stats()."""

    def __init__(self) -> None:
        self.signals: dict[str, Signal] = {}
        self.counts: Counter[str] = Counter()
        self.moved: set[str] = set()  # signals changed since the last stats()
        self.lock = threading.Lock()  # guards `moved`
        self.cache: dict[str, SignalStat] = {}

    def track(self, events: list[Event]) -> None:
        """Per-signal counts, latest values and recent numbers, in bulk."""
        keys = [e[0] for e in events]
        self.counts.update(keys)
        latest = dict(zip(keys, events))  # noqa: B905 - one list made from the other
        with self.lock:
            self.moved.update(latest)
        signals = self.signals
        for key, (_, value, epoch) in latest.items():
            sig = signals.get(key)
            if sig is None:
                if len(signals) >= MAX_SIGNALS:
                    continue
                sig = signals[key] = Signal()
            sig.last_value = value
            sig.last_time = epoch
        for key, value, _ in events[-SPARK_POINTS * min(len(latest), 50):]:
            if type(value) is int or type(value) is float:
                sig = signals.get(key)
                if sig is not None:
                    sig.recent.append(value)

    def stats(self) -> tuple[SignalStat, ...]:
        """Per-signal snapshots, in first-seen order. Only the signals that moved since the
        last call are built anew: the panel asks four times a second."""
        with self.lock:
            moved, self.moved = self.moved, set()
        cache, counts = self.cache, self.counts
        for key in moved:
            sig = self.signals.get(key)
            if sig is not None:
                cache[key] = SignalStat(key, counts[key], sig.last_value, sig.last_time,
                                        tuple(sig.recent))
        return tuple(cache[key] for key in list(self.signals) if key in cache)

    def reset_after_fork(self) -> None:
        self.lock = threading.Lock()  # a parent's thread may have held it
