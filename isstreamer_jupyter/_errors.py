"""Exceptions and warnings of isstreamer_jupyter.

The hierarchy::

    IsStreamerError                  base of everything this package raises
    ├── ConfigError (ValueError)     a setting has a bad value; names the setting, its source
    ├── RefusedValue (ValueError)    log() refused a key, value or epoch (raised at debug >= 2)
    ├── StreamerClosed               log() after close()
    ├── SpoolError                   the spool cannot be used (the streamer goes on in memory)
    └── DeliveryError                flush()/close() could not confirm delivery (debug_level >= 2)
        ├── FlushTimeout             the wait ran out while delivery was still possible
        ├── EventsLost               events were dropped (queue or spool full) or refused
        ├── AccessDenied             the service refused the access key (401/403)
        ├── CapReached               the account's monthly data-point cap is reached (402)
        └── BucketRemoved            the bucket key belonged to a deleted bucket (400)

    IsStreamerWarning (UserWarning)  what is shown instead of raised at debug_level < 2

No message of any of them contains the access key.
"""

from __future__ import annotations

import inspect
import os
import warnings


class IsStreamerError(Exception):
    """Base class of the exceptions raised by isstreamer_jupyter."""


class ConfigError(IsStreamerError, ValueError):
    """A setting has a value that cannot be used."""


class RefusedValue(IsStreamerError, ValueError):
    """``log()`` refused a key, value or epoch; nothing was queued for it."""


class StreamerClosed(IsStreamerError):
    """The streamer was closed; it accepts no more events."""


class SpoolError(IsStreamerError):
    """The on-disk spool cannot be opened, read or written."""


class DeliveryError(IsStreamerError):
    """Not everything logged before ``flush()``/``close()`` was acknowledged."""

    def __init__(self, message: str, *, pending: int = 0) -> None:
        super().__init__(message)
        self.pending = pending
        #: the report of the run's end it says (a ``RunEnd``), when it came from one
        self.outcome: object = None


class FlushTimeout(DeliveryError):
    """The wait ran out; the events are still queued and will be sent."""


class EventsLost(DeliveryError):
    """Since the last flush, events were dropped (the queue or the spool was full, a spool
    segment was damaged) or refused (by the service, or unsendable); they will not be sent.
    Everything else was delivered."""

    def __init__(self, message: str, *, dropped: int = 0, refused: int = 0) -> None:
        super().__init__(message)
        self.dropped = dropped
        self.refused = refused


class AccessDenied(DeliveryError):
    """The service refused the access key (HTTP 401 or 403)."""


class CapReached(DeliveryError):
    """The account reached its monthly data-point cap (HTTP 402)."""


class BucketRemoved(DeliveryError):
    """The bucket key belongs to a bucket that was deleted (HTTP 400 BUCKET_REMOVED)."""


class IsStreamerWarning(UserWarning):
    """A refused value or a delivery problem, shown once where it happened."""


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn(message: str) -> None:
    """An :class:`IsStreamerWarning` shown at the user's line: the first caller outside this
    package, however deep in it the warning is raised (close() -> flush() -> ...)."""
    # From warn()'s own frame, level 1. A Python without frames gives None: warn at our caller.
    frame, level = inspect.currentframe(), 1
    while (frame is not None and frame.f_back is not None
           and frame.f_code.co_filename.startswith(_PACKAGE)):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, IsStreamerWarning, stacklevel=max(level, 2))


_SINGULAR_VERBS = {"were": "was", "are": "is", "have": "has"}


def counted(count: int, noun: str, verb: str = "") -> str:
    """A count with its noun, and a verb given in the plural, agreeing: ``counted(1,
    "event")`` is "1 event", ``counted(3, "event", "wait")`` "3 events wait",
    ``counted(1, "event", "were")`` "1 event was". Every message that counts says it so."""
    if count == 1:
        verb = _SINGULAR_VERBS.get(verb, f"{verb}s" if verb else "")
    else:
        noun += "s"
    return f"{count} {noun} {verb}" if verb else f"{count} {noun}"
