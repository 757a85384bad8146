"""The snapshot the panel, the magics and users read: :class:`Stats`, a frozen dataclass.

The sender thread owns the live counters; ``Streamer.stats()`` copies them under a lock into one
of these, so readers never reach into the thread.
"""

from __future__ import annotations

import enum
import math
import time
from dataclasses import dataclass

from ._transport import RateBudget


class State(enum.Enum):
    """Where delivery stands."""

    CONNECTING = "connecting"  # nothing acknowledged yet
    ONLINE = "online"  # the last request was acknowledged
    BACKING_OFF = "backing off"  # a request failed; retrying at `until` (None: under way)
    RATE_LIMITED = "rate limited"  # the service asked us to wait until `until`
    OFFLINE = "recording offline"  # writing to the offline CSV file, nothing is sent
    STOPPED = "stopped"  # see `reason`: access key refused, cap reached, bucket deleted, closed


#: the codes of `Stats.stop`, and what the panel's badge says for each
STOPS = {
    "access denied": "access key refused",
    "cap reached": "monthly cap reached",
    "bucket removed": "bucket deleted",
    "closed": "closed",
}


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
    """A snapshot of one streamer's delivery, as ``Streamer.stats()`` returns it."""

    state: State
    reason: str  # plain words for STOPPED, OFFLINE, BACKING_OFF and RATE_LIMITED; else ""
    stop: str  # why STOPPED, as a stable code: one of STOPS; else ""
    remedy: str  # what the user can do about `reason` or `last_error`
    until: float | None  # wall-clock end of a backoff or rate-limit wait (None: retrying now)
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
    recovered: int  # events of this access key in the spool at start: an earlier process's
    # (or, when two share the key and the spool, the other's still unsent)
    events_per_second: float  # acknowledged, over the last few seconds
    budget: RateBudget | None  # the rate-limit budget the service last reported
    last_error: str  # "" when none
    last_error_at: float | None  # wall clock
    debug_level: int
    offline_file: str  # "" when online
    spool_path: str  # "" without a spool
    signals: tuple[SignalStat, ...]
    #: seconds, over the streamer's life: inside requests; waiting for the service (its
    #: Retry-After, a spent rate window); waiting out our backoff after failures; our pace
    sending_seconds: float = 0.0
    waited_service: float = 0.0
    waited_backoff: float = 0.0
    waited_pace: float = 0.0

    @property
    def pending(self) -> int:
        """Accepted but not yet acknowledged."""
        return self.queued + self.in_flight


def _clock(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch))


def state_words(stats: Stats, now: float | None = None) -> str:
    """The state in a few plain words, as the panel's badge and the text status show it:
    ``online``, ``backing off · retry in 3 s``, ``rate limited · until 12:03:05 (4 s)``,
    ``recording offline``, ``stopped · access key refused``..."""
    state = stats.state
    left = ""
    if stats.until is not None:
        seconds = max(0, math.ceil(stats.until - (time.time() if now is None else now)))
        left = f"{seconds} s"
    if state is State.BACKING_OFF:
        return f"backing off · retry in {left}" if left else "backing off"
    if state is State.RATE_LIMITED:
        return (f"rate limited · until {_clock(stats.until)} ({left})"
                if stats.until is not None else "rate limited")
    if state is State.STOPPED:
        return f"stopped · {STOPS.get(stats.stop, stats.reason or 'stopped')}"
    return state.value


def waiting_words(stats: Stats, now: float | None = None) -> str:
    """Why events wait, for flush() and close() to say: ``backing off after <reason>, next
    try in 14 s``, ``rate limited: <reason>, next try in 3 s``, ``connecting: no answer from
    the service yet``; "" when nothing holds them up but the time delivery takes."""
    state = stats.state
    if state is State.BACKING_OFF:
        words = f"backing off after {stats.reason}" if stats.reason else state.value
    elif state is State.CONNECTING:
        words = "connecting: no answer from the service yet"
    elif stats.reason:
        words = f"{state.value}: {stats.reason}"
    else:
        return ""
    if stats.until is not None:
        left = stats.until - (time.time() if now is None else now)
        if left > 0:
            return f"{words}, next try in {left:.0f} s" if left >= 10 else (
                f"{words}, next try in {left:.1f} s")
    if state in (State.BACKING_OFF, State.RATE_LIMITED):
        return f"{words}, trying again now"
    return words


def status_text(stats: Stats) -> str:
    """A compact multi-line text status: where widgets cannot show (a terminal, nbconvert to
    text) and in the magics' output. Never holds the access key (a Stats has none)."""
    lines = [f"isstreamer_jupyter · {state_words(stats)}"]
    if stats.reason and stats.reason not in ("closed", stats.last_error):
        lines.append(f"  why:     {stats.reason}")
    lines.append(f"  bucket:  {stats.bucket_name!r} (key {stats.bucket_key})")
    if stats.offline_file:
        lines.append(f"  file:    {stats.offline_file}")
    lines.append(
        f"  events:  {stats.queued} queued · {stats.in_flight} in flight · {stats.sent} "
        f"{'recorded' if stats.offline_file else 'sent'} · "
        f"{stats.retries} retried · {stats.refused} refused · {stats.dropped} dropped · "
        f"{stats.events_per_second:.1f}/s")
    if stats.budget is not None:
        lines.append(f"  budget:  {stats.budget.remaining}/{stats.budget.limit} requests left, "
                     f"resets {_clock(stats.budget.reset)}")
    if stats.last_error:
        lines.append(f"  error:   {stats.last_error}")
    if stats.remedy:
        lines.append(f"  fix:     {stats.remedy}")
    return "\n".join(lines)
