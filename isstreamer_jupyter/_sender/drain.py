"""The drain: what log() queues, into the store.

Bucket switches and flush markers keep their places in order. log() spills a segment
itself when it outpaces the sender, and the sender gives way to it. A spool that fails is
left for a memory store: nothing is lost, and what is on disk stays for the next streamer.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable
from itertools import repeat
from typing import Any

from .._config import Settings
from .._errors import SpoolError, counted
from .._report import SEND_COMMAND
from .._spool import (
    SEGMENT_EVENTS,
    Event,
    MemoryStore,
    Segment,
    SpoolBusy,
    SpoolHeldHere,
    Store,
)
from .base import Bucket, Marker
from .tally import Tally

#: past its ceiling log() waits this long at most for its turn to spill. The sender gives way
#: after the segment it is on: a few ms.
SPILL_WAIT = 0.005


class Drain:
    def __init__(self, *, queue: deque[Any], store: Store, settings: Settings, bucket: Bucket,
                 tally: Tally, markers: list[Marker], track: Callable[[list[Event]], None],
                 wake: threading.Event) -> None:
        self.queue = queue
        self.store = store
        self.settings = settings  # the sender replaces it when the user changes a setting
        #: the bucket of the events now in the queue; log() queues a Bucket to switch
        self.queue_bucket = bucket
        self.tally = tally
        self.markers = markers  # the flush markers drained, the sender's to check
        self.track = track
        self.wake = wake
        self.lock = threading.Lock()  # the caller drains too when the queue is full
        self.spill_wanted = False  # log() found the sender draining: it gives way
        self.recheck = False  # whether a flush marker may be done without an ack
        self.busy_said = False  # the spool is held by another process: said once a streak
        self.damaged_seen = 0
        #: the spool left after a failure, and why
        self.left: Store | None = None
        self.spool_trouble = ""

    def drain(self, most: int | None = None) -> None:
        """Move what log() queued into the store, at most `most` items. No per-event
        encoding in Python. The lock is held one segment's worth at a time, and let go to
        log() when it wants to spill. A spool another process holds stops it: the events
        stay queued."""
        left = len(self.queue) if most is None else most
        while left > 0:
            with self.lock:
                chunk = min(left, SEGMENT_EVENTS, len(self.queue))  # read under the lock
                if chunk:
                    try:
                        self._drain(chunk)
                    except SpoolBusy as exc:  # what was taken is back in the queue
                        self.busy(exc)
                        break
            if not chunk:
                break
            left -= chunk
            if self.spill_wanted:  # log() waits for its turn: this round leaves it the rest
                self.spill_wanted = False
                break

    def spill(self, ceiling: int) -> bool:
        """log()'s part when it outpaces the sender and its queue reached max_queue: move
        one segment's worth to the store, in the caller's thread.

        Never a wait on the network, nor on a spool another process holds: a put waits
        2 ms at most. Below `ceiling` it does nothing while the sender is draining, since
        the sender gives way after its segment. At `ceiling`, memory's bound, it waits for
        its turn, at most SPILL_WAIT; if the spool is held even so, it drops the oldest
        events, counted and said. False if the spool was busy: log() tries again a segment
        later. Flush markers are left for the sender to check, since that reads the spool.
        """
        queue, lock = self.queue, self.lock
        full = len(queue) >= ceiling
        if not lock.acquire(blocking=False):
            self.spill_wanted = True
            if not full or not lock.acquire(timeout=SPILL_WAIT):
                return True
        self.spill_wanted = False
        try:
            count = min(SEGMENT_EVENTS, len(queue))
            if not count:
                return True
            try:
                self._drain(count)
                return True
            except SpoolBusy as exc:  # what was taken is back in the queue
                # this process's sender holds it a moment and lets go soon: no drop for that
                if len(queue) >= ceiling and not isinstance(exc, SpoolHeldHere):
                    self._drop_oldest(count)
                return False
        finally:
            lock.release()
            if self.recheck:
                self.wake.set()

    def queued_events(self) -> int:
        """The events in log()'s queue, leaving out flush markers and bucket switches."""
        return max(0, len(self.queue) - self.tally.marks_queued)

    def queue_mark(self, item: Any) -> None:
        """Queue a flush marker or a bucket switch behind what log() queued."""
        tally = self.tally
        with tally.lock:
            tally.marks_queued += 1
            self.queue.append(item)

    def _drop_oldest(self, most: int) -> None:
        """Under the drain lock: drop the oldest `most` events of the queue, counted and
        said. The queue is full and the spool cannot take them now. Bucket switches and
        flush markers keep their places."""
        items = list(map(deque.popleft, repeat(self.queue, min(most, len(self.queue)))))
        kept = [item for item in items if type(item) is not tuple]
        self.queue.extendleft(reversed(kept))
        dropped = len(items) - len(kept)
        tally = self.tally
        with tally.lock:
            tally.drained += dropped
            tally.dropped += dropped
        self.recheck = True
        tally.lost(f"the spool {self.store.path} is held by another process and the memory "
                   f"queue is full: dropped the {counted(dropped, 'oldest event')}",
                   "find what holds the spool (another kernel in a long transaction?), or "
                   "raise max_queue")

    def _drain(self, count: int) -> None:
        """Move `count` items from the queue to the store. Should anything fail on the way,
        the store or a bug, what was not stored goes back to the head of the queue, in
        order, with the bucket it was logged to: the next drain tries again."""
        items = list(map(deque.popleft, repeat(self.queue, count)))  # a C loop: 2.5x faster
        if set(map(type, items)) == {tuple}:  # events only, the usual case
            try:
                self._put([Segment(self.queue_bucket.key, self.queue_bucket.name, items)])
            except BaseException:
                self.queue.extendleft(reversed(items))
                raise
            return
        start, bucket = 0, self.queue_bucket  # the first item not stored yet, its bucket
        try:
            segments: list[Segment] = []
            events: list[Event] = []
            append = events.append
            for i, item in enumerate(items):
                if type(item) is tuple:
                    append(item)
                    continue
                if events:
                    segments.append(Segment(self.queue_bucket.key, self.queue_bucket.name,
                                            events))
                    events = []
                    append = events.append
                if type(item) is Bucket:
                    self.queue_bucket = item
                else:  # a flush marker: everything before it must be in the store first
                    self._put(segments)
                    segments = []
                    start, bucket = i, self.queue_bucket
                    item.upto = self.store.last_id()
                    self.markers.append(item)
                    self.recheck = True
                    start = i + 1  # the marker is done too
            if events:
                segments.append(Segment(self.queue_bucket.key, self.queue_bucket.name, events))
            self._put(segments)
            start = len(items)
        except BaseException:
            self.queue_bucket = bucket
            self.queue.extendleft(reversed(items[start:]))
            raise
        finally:
            with self.tally.lock:
                self.tally.marks_queued -= sum(type(item) is not tuple for item in items[:start])

    def _put(self, segments: list[Segment]) -> None:
        if not segments:
            return
        try:
            dropped = self.store.put(segments)
        except SpoolBusy:  # another process holds it a moment: the caller keeps the events
            raise
        except SpoolError as exc:  # disk full, damaged: go on in memory, lose nothing
            self.leave_spool(exc)
            dropped = self.store.put(segments)
        self.busy_said = False
        added = sum(len(s.events) for s in segments)
        tally = self.tally
        with tally.lock:
            tally.drained += added
            tally.pending += added - dropped
            tally.dropped += dropped
        for segment in segments:
            self.track(segment.events)
        if dropped:
            self.recheck = True
            where = "spool" if self.store.path else "memory queue"
            tally.lost(f"the {where} is full: dropped the {counted(dropped, 'oldest event')}",
                       "raise max_queue / spool_max_bytes, or log less often")

    def count_damaged(self, store: Store) -> None:
        """Count and say the events of damaged spool segments that `store` skipped."""
        damaged = getattr(store, "damaged", 0)
        if damaged <= self.damaged_seen:
            return
        tally = self.tally
        with tally.lock:
            tally.dropped += damaged - self.damaged_seen
            tally.pending -= damaged - self.damaged_seen
        tally.lost(f"dropped {counted(damaged - self.damaged_seen, 'event')} of a damaged "
                   f"spool segment", "none: the rest of the spool is fine")
        self.damaged_seen = damaged

    def busy(self, exc: SpoolBusy) -> None:
        """Another process, sharing the spool or any SQLite client, holds it: nothing was
        done. Events stay queued, bounded, and the sender tries again at its next round,
        keeping the spool. Said once a streak."""
        if not self.busy_said:
            self.busy_said = True
            self.tally.notify(20, f"{exc}; trying again (events stay queued meanwhile)")

    def leave_spool(self, exc: SpoolError) -> None:
        """The spool failed: go on with a memory store, and say so. What is on disk stays
        there for the next streamer. A batch under way, and the one made ready, are settled
        in the spool they came from. Once in memory, a failure of the spool left behind
        leaves the memory store as it is."""
        tally = self.tally
        if isinstance(self.store, MemoryStore):  # no spool fails but the one left
            tally.error(f"{exc} (a batch the service accepted stays in the spool left before: "
                        f"the next Streamer sends it again)", "", level=30)
            return
        self.left = self.store
        self.spool_trouble = str(exc)
        self.store = MemoryStore(self.settings.max_queue)
        self.recheck = True
        with tally.lock:
            tally.left_count = tally.pending  # what was counted: read again below if it can
            tally.pending = 0
        self.left_behind()
        tally.error(f"{exc}; going on without the spool (new events live in memory only)",
                    f"free disk space or set spool_dir to a writable folder, then run "
                    f"`{SEND_COMMAND}` or start a new Streamer: what is in the spool is sent "
                    f"then")

    def left_behind(self) -> int:
        """Events of this key still in the spool left after it failed: read again if it can
        be, else as last read. A batch under way is settled there; the next Streamer with
        the key sends the rest."""
        left = self.left
        if left is None:
            return 0
        tally = self.tally
        with contextlib.suppress(SpoolError):
            count = left.pending()
            with tally.lock:
                tally.left_count = count
        return tally.left_count

    def left_path(self) -> str:
        """The path of the spool left after a failure, or ""."""
        return self.left.path if self.left is not None else ""

    def close(self) -> None:
        """Close the store, and the spool left after a failure."""
        try:
            self.store.close()
        finally:
            if self.left is not None:
                with contextlib.suppress(SpoolError):
                    self.left.close()

    def reset_after_fork(self, store: Store, bucket: Bucket) -> None:
        """In a forked child: its own store and lock. The parent tells of the spool it
        left."""
        self.store = store
        self.queue_bucket = bucket
        self.lock = threading.Lock()
        self.spill_wanted = False
        self.left = None
