"""The snapshot the panel, the magics and users read: :class:`Stats`, a frozen dataclass.

The sender thread owns the live counters; ``Streamer.stats()`` copies them under a lock into one
of these, so readers never reach into the thread.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ._transport import RateBudget


class State(enum.Enum):
    """Where delivery stands."""

    CONNECTING = "connecting"  # nothing acknowledged yet
    ONLINE = "online"  # the last request was acknowledged
    BACKING_OFF = "backing off"  # a transient failure; retrying at `until`
    RATE_LIMITED = "rate limited"  # the service asked us to wait until `until`
    OFFLINE = "recording offline"  # writing to the offline CSV file, nothing is sent
    STOPPED = "stopped"  # see `reason`: access key refused, cap reached, bucket deleted, closed


@dataclass(frozen=True)
class SignalStat:
    """One signal (event key) as the sender saw it."""

    key: str
    count: int
    last_value: str | int | float | bool
    last_time: float  # the event's epoch
    recent: tuple[float, ...]  # last numeric values, oldest first, for sparklines


@dataclass(frozen=True)
class Stats:
    state: State
    reason: str  # plain words for STOPPED, OFFLINE, BACKING_OFF and RATE_LIMITED; else ""
    remedy: str  # what the user can do about `reason` or `last_error`
    until: float | None  # wall-clock end of a backoff or rate-limit wait
    bucket_name: str
    bucket_key: str
    buckets: tuple[tuple[str, str], ...]  # (name, key) of every bucket used, in order
    logged: int  # events accepted by log()
    queued: int  # accepted and waiting (memory and spool), not in flight
    in_flight: int  # in the request now under way
    spooled: int  # of all waiting events, those safe on disk
    sent: int  # events the service acknowledged
    requests: int  # HTTP requests made (events and buckets)
    retries: int  # requests that will be repeated (transient failures, 429)
    refused: int  # events refused at log() or, rarely, by the service
    dropped: int  # accepted events given up (queue or spool full)
    recovered: int  # events found in the spool at start, left by an earlier process
    events_per_second: float  # acknowledged, over the last few seconds
    budget: RateBudget | None  # the rate-limit budget the service last reported
    last_error: str  # "" when none
    last_error_at: float | None  # wall clock
    debug_level: int
    offline_file: str  # "" when online
    spool_path: str  # "" without a spool
    signals: tuple[SignalStat, ...]

    @property
    def pending(self) -> int:
        """Accepted but not yet acknowledged."""
        return self.queued + self.in_flight
