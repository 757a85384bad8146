"""The report of a run's end: one outcome of a flush, close, exit wait, spool send or upload.

The caller computes a :class:`RunEnd` once; :func:`render` says it, the same way for warnings,
the magics, the command line, the panel and uploads.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._errors import (
    AccessDenied,
    BucketRemoved,
    CapReached,
    DeliveryError,
    EventsLost,
    FlushTimeout,
    counted,
)

#: the command that sends what waits in the spool
SEND_COMMAND = "python -m isstreamer_jupyter spool send"
#: who sends what a closed streamer left in the spool
HEIR = (f"send them with `{SEND_COMMAND}`, or the next Streamer with the same access key and "
        f"API base sends them")
#: the same after the service refused the access key
HEIR_REFUSED = (f"fix the access key, then send them with `{SEND_COMMAND}`; or the next "
                f"Streamer on their bucket with the same API base and the right access key "
                f"sends them")


@dataclass(frozen=True)
class RunEnd:
    """What one wait for delivery came to."""

    call: str  # "flush", "close", "at exit", "spool send", "upload"
    delivered: int = 0  # events acknowledged during the wait
    waiting: int = 0  # events still waiting when it ended
    why: str = ""  # why they wait, as a predicate ("still waiting after 10 s"); "" says none
    where: str = ""  # the spool's path; "" when they are in memory only
    heir: str = ""  # what becomes of them, and who sends them
    dropped: int = 0  # events dropped since the last report
    refused: int = 0  # events refused since the last report
    lost_why: str = ""  # what was said of the last loss
    stopped: str = ""  # what stopped delivery (a refused key, the cap, a removed bucket)
    stop: str = ""  # its code: "access denied", "cap reached", "bucket removed"
    interrupted: bool = False  # Ctrl-C ended the wait
    seconds: float = 0.0  # how long the wait took

    @property
    def lost(self) -> int:
        return self.dropped + self.refused

    @property
    def ok(self) -> bool:
        return not (self.waiting or self.lost or self.stopped)

    def __str__(self) -> str:
        return render(self)


def fate(end: RunEnd) -> str:
    """What becomes of the events that wait, and who sends them."""
    if end.where:
        return f"they wait in the spool {end.where}; {end.heir}"
    return end.heir


def render(end: RunEnd) -> str:
    """The one sentence that says `end`."""
    if end.ok:
        return (f"{end.call}: {counted(end.delivered, 'event')} delivered in "
                f"{end.seconds:.1f} s")
    parts = [end.stopped] if end.stopped else []
    if end.waiting and end.why:
        parts.append(f"{counted(end.waiting, 'event')} {end.why}; {fate(end)}")
    if end.lost:
        rest = "" if end.waiting or end.stopped else "; no other event was lost"
        parts.append(f"{counted(end.lost, 'event', 'were')} lost since the last flush "
                     f"({end.dropped} dropped, {end.refused} refused{rest}): {end.lost_why}")
    return f"{end.call}: " + "; ".join(parts)


_STOPS: dict[str, type[DeliveryError]] = {
    "access denied": AccessDenied, "cap reached": CapReached, "bucket removed": BucketRemoved}
#: the code of each stop's exception
STOP_CODES: dict[type[DeliveryError], str] = {kind: code for code, kind in _STOPS.items()}


def error_for(end: RunEnd) -> DeliveryError | None:
    """The exception that says `end` (raised at ``debug_level >= 2``); None when it is ok."""
    if end.ok:
        return None
    said = render(end)
    if end.stop:
        error: DeliveryError = _STOPS[end.stop](said, pending=end.waiting)
    elif end.waiting:
        error = FlushTimeout(said, pending=end.waiting)
    else:
        error = EventsLost(said, dropped=end.dropped, refused=end.refused)
    error.outcome = end
    return error
