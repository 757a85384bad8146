"""The work beside the one request in flight.

While a batch is out the sender drains the queue and takes and encodes the next batch, so
its work overlaps the service's. The spool ack of a batch the service accepted waits for
the next request to be out: it is done in that request's shadow, off the path between two
requests. Only the sender's thread touches these.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

from .._spool import Batch, Event, Store
from .base import Marker


class Pipeline:
    def __init__(self, *, store: Store, drain: Callable[[], None],
                 prepare: Callable[[Sequence[Event]], None], batch_size: Callable[[], int],
                 markers: list[Marker], check_markers: Callable[[], None]) -> None:
        self.drain = drain
        self.prepare = prepare  # the transport's: encode a batch before it goes
        self.batch_size = batch_size
        self.markers = markers  # the flush markers waiting: any batch is worth taking then
        self.check_markers = check_markers
        #: the batch to send next, taken while the previous one was out, and its store
        self.next: Batch | None = None
        self.next_store: Store = store
        #: a batch the service accepted whose ack waits for the next request, and its store
        self.unacked: tuple[Batch, Store] | None = None

    def ready(self, store: Store) -> Batch | None:
        """The batch made ready, if it came from `store`. One from another store, left
        after a spool failure, goes back there."""
        if self.next is not None and self.next_store is not store:
            self.drop()
        batch, self.next = self.next, None
        return batch

    def meanwhile(self, batch: Batch, store: Store, take_next: bool) -> None:
        """Runs once `batch` is sent, while the service works on it: the previous batch's
        ack, then the next batch."""
        with contextlib.suppress(Exception):  # a spool failure is met again after the answer
            self.settle(batch, store, again=True)
        if take_next:
            self._take_next(batch, store)

    def _take_next(self, batch: Batch, store: Store) -> None:
        """While `batch` is at the service: drain the queue, which keeps it under max_queue
        so log() rarely spills itself. Then take and encode the batch after it, so the next
        request goes out as soon as this one is acknowledged. Only a full batch, or any
        when a flush waits."""
        try:
            limit = self.batch_size()
            self.drain()
            self.next = store.take(limit, after=batch, least=1 if self.markers else limit)
            self.next_store = store
            if self.next is not None:  # if encoding fails here, sending fails again
                self.prepare(self.next.events)
        except Exception:  # the next round's own take or send meets it and reports it
            return

    def accepted(self, batch: Batch, store: Store, *, threaded: bool) -> None:
        """The service accepted `batch`, from `store`: ack it there. With the sender's thread
        and a batch made ready in that store, the ack waits for the next request, which goes
        out at once. Should the process die before, this batch is sent again: a duplicate,
        as for a kill mid-request."""
        keep = self.next if self.next_store is store else None
        if keep is not None and threaded:
            self.unacked = (batch, store)
        else:
            store.ack(batch, keep)

    def settle(self, flying: Batch | None = None, store: Store | None = None, *,
               again: bool = False) -> None:
        """Ack the accepted batch whose ack waited for the next request, and see whether a
        flush is done; `flying`, from `store`, stays leased. A failing ack raises once: the
        batch stays in the spool, to be sent again. With `again`, in a request's shadow
        where nothing can be reported, it is tried once more later."""
        if self.unacked is None:
            return
        batch, its_store = self.unacked
        if not again:
            self.unacked = None
        its_store.ack(batch, flying if store is its_store else None)
        self.unacked = None
        self.check_markers()

    def settle_behind(self) -> None:
        """Settle, keeping the batch made ready leased."""
        self.settle(self.next, self.next_store)

    def drop(self) -> None:
        """Give the batch made ready back to its store, after settling: what is given back
        never overlaps an unacked batch."""
        try:
            self.settle()
        finally:
            nxt, self.next = self.next, None
            if nxt is not None:
                self.next_store.release(nxt)

    def reset_after_fork(self) -> None:
        self.next = None  # the parent's lease, the parent's batch
        self.unacked = None  # the parent acks it
