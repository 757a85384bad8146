"""Flush markers: each is done once every event logged before it is acknowledged, or failed
by a stop that keeps those events from going out."""

from __future__ import annotations

import contextlib

from .._errors import AccessDenied, BucketRemoved, CapReached, DeliveryError
from .._spool import Store
from .._transport import Outcome
from .base import Marker
from .policy import Policy
from .tally import Tally

STOP_ERRORS: dict[Outcome, type[DeliveryError]] = {
    Outcome.ACCESS_DENIED: AccessDenied,
    Outcome.CAP_REACHED: CapReached,
    Outcome.BUCKET_REMOVED: BucketRemoved,
    Outcome.INVALID: DeliveryError,  # a bucket the service would not create
    Outcome.TOO_LARGE: DeliveryError,
}


class Markers:
    def __init__(self, policy: Policy, tally: Tally) -> None:
        self.policy = policy
        self.tally = tally
        #: the markers the drain put in the store, not yet done
        self.waiting: list[Marker] = []
        #: what was said when delivery stopped, by bucket key or None for the whole account;
        #: a flush that the stop fails says the same words
        self.said: dict[str | None, str] = {}

    def check(self, store: Store) -> None:
        """Mark done each marker whose events `store` no longer holds, or that a stop
        fails."""
        if not self.waiting:
            return
        # over a copy, removing in place: log() spilling in another thread may drain a new
        # marker meanwhile, or check these at the same time
        stopped = self.policy.stopped
        for marker in list(self.waiting):
            assert marker.upto is not None
            stop, where = self.policy.halt, None
            if stop is None and stopped and not store.has_pending_upto(marker.upto, stopped):
                where, stop = next(iter(stopped.items()))
            if not store.has_pending_upto(marker.upto):
                marker.done.set()
            elif stop is not None:
                marker.error = STOP_ERRORS[stop.outcome](self.said[where],
                                                         pending=self.tally.pending)
                marker.done.set()
            else:
                continue
            with contextlib.suppress(ValueError):  # the other thread removed it first
                self.waiting.remove(marker)
