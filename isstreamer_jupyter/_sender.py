"""The sender: the one background thread of a streamer. Batching, pacing, retry and backoff.

``log()`` appends ``(key, value, epoch)`` tuples to a deque (``set_bucket`` a ``Bucket``,
``flush`` a ``Marker``). The sender drains the deque
into the store (the spool) at least every ``spool_interval``, then sends the oldest batch of one
bucket when it is full or ``flush_interval`` old, as the pace and the service's rate-limit
budget allow, and forgets it only when the service acknowledged it. While a request is out
it drains the queue and takes and encodes the next batch, so its work overlaps the service's
(still one request in flight, in order).

Everything happens in :meth:`Sender.step`, which does one round and says how long to wait
before the next; the thread only loops over it, so unit tests drive ``step`` with a fake
clock and a fake transport. The sender never prints: it reports through ``notify``.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

from ._config import Settings
from ._errors import (
    AccessDenied,
    BucketRemoved,
    CapReached,
    DeliveryError,
    SpoolError,
    counted,
)
from ._report import SEND_COMMAND
from ._spool import (
    SEGMENT_EVENTS,
    Batch,
    Event,
    MemoryStore,
    Segment,
    SpoolBusy,
    SpoolHeldHere,
    Store,
)
from ._stats import SignalStat, State, Stats
from ._transport import Answer, Outcome, RateBudget, Transport

BACKOFF_BASE = 0.2
#: the longest wait between retries: after an outage, delivery resumes within this (AWS SDKs
#: cap at 20 s too; with full jitter a long outage means one probe every ~11 s)
BACKOFF_CAP = 20.0
#: the longest wait for a rate-limit window's reset (X-RateLimit-Reset is the service's wall
#: clock: a client clock an hour behind would otherwise wait an hour; windows are 10 s)
RESET_WAIT_CAP = 60.0
#: after a 402 the sender asks again this often, so a monthly reset lets events go out
CAP_PROBE_INTERVAL = 600.0
#: signals tracked for the panel; more keys are counted but not tracked
MAX_SIGNALS = 1000
SPARK_POINTS = 60
#: how often the sender folds the spool's write-ahead log into the database: when it has a
#: moment to wait, at most this often; while busy sending, once this much later
CHECKPOINT_INTERVAL = 1.0
CHECKPOINT_BUSY_DELAY = 5.0
#: past its ceiling log() waits this long at most for its turn to spill (the sender gives way
#: after the segment it is on: a few ms)
SPILL_WAIT = 0.005

REMEDIES = {
    Outcome.ACCESS_DENIED: (
        "check the access key (IS_ACCESS_KEY or access_key=...); set streamer.AccessKey to the "
        "right key to resume: the held events are kept and will be sent"),
    Outcome.CAP_REACHED: (
        "the month's data points are used up: upgrade the plan or wait for the monthly reset; "
        "events are kept and sent once the service takes them again"),
    Outcome.BUCKET_REMOVED: (
        "pick a new bucket with streamer.set_bucket(bucket_name=...) (a new name means a new "
        "key); the deleted bucket's events are kept"),
    Outcome.RETRY: "nothing to do: events are kept and retried with backoff",
    Outcome.RATE_LIMITED: (
        "nothing to do: events are kept; lower max_requests_per_second if this repeats"),
    Outcome.INVALID: ("check api_base (IS_API_BASE) and the bucket key; if they are right, "
                      "please report this with the message"),
    Outcome.TOO_LARGE: "nothing to do: the batch is split",
}
#: the fix of an event refused before it was sent (log() lets none through that it knows of)
REFUSED_HERE = "none: this one is dropped, the others go out; please report this with the message"
STOP_ERRORS: dict[Outcome, type[DeliveryError]] = {
    Outcome.ACCESS_DENIED: AccessDenied,
    Outcome.CAP_REACHED: CapReached,
    Outcome.BUCKET_REMOVED: BucketRemoved,
    Outcome.INVALID: DeliveryError,  # a bucket the service would not create
    Outcome.TOO_LARGE: DeliveryError,
}


@dataclass(frozen=True)
class Bucket:
    name: str
    key: str


def bounded(seconds: float | None) -> float | None:
    """A wait as threading's waits take it: None (no bound) for inf, and for any wait longer
    than they can take (they raise OverflowError past about 292 years)."""
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


@dataclass
class _Signal:
    last_value: Any = None
    last_time: float = 0.0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=SPARK_POINTS))


Notify = Callable[[int, str], None]


class Sender:
    def __init__(self, *, queue: deque[Any], store: Store, transport: Transport,
                 settings: Settings, clock: Clock, notify: Notify,
                 current_bucket: Callable[[], Bucket],
                 redact: Callable[[str], str] = str) -> None:
        #: the bucket of the events now in the queue; log() queues a Bucket to switch
        self.queue_bucket = current_bucket()
        self.queue = queue
        self.store = store
        self.transport = transport
        self.settings = settings
        self.clock = clock
        self.notify = notify
        self.current_bucket = current_bucket
        self.redact = redact  # what the sender keeps for display never holds the access key
        self.wake = threading.Event()
        self.lock = threading.Lock()  # guards what snapshot() reads
        self._drain_lock = threading.Lock()  # the caller drains too when the queue is full
        self._spill_wanted = False  # log() found the sender draining: it gives way
        self.thread: threading.Thread | None = None
        self._running = False
        #: while a request is out: when it began (time.monotonic()); the keeper's cue
        self._request_started: float | None = None
        self._request_begun = threading.Event()
        self._keeper_idle = False  # asleep until a request begins: wake it then
        self.keeper: threading.Thread | None = None
        self._markers: list[Marker] = []
        self._recheck = False  # whether a flush marker may be done without an ack
        self._created: set[str] = set()
        self._stopped_buckets: dict[str, Answer] = {}
        #: what was said when delivery stopped, by bucket key (None: the whole account); a
        #: flush that the stop fails says the same words
        self._stop_said: dict[str | None, str] = {}
        self._halt: Answer | None = None  # account-wide stop: access denied, cap reached
        #: bumped when the user replaces the access key; a request remembers the one it went
        #: out with, so a refusal of the old key (answered late) does not stop the new one
        self._key_generation = 0
        self._asked_generation = 0
        self._key_lock = threading.Lock()
        self._probe_at = 0.0
        self._hold_until = 0.0  # monotonic; no request before it
        self._hold_state = State.BACKING_OFF
        #: whether the service set the hold (Retry-After, a 429): waiting at its pace
        self._hold_by_service = False
        #: why the last request failed and will be retried, and the fix: the state's reason
        #: until a request is accepted (also while the retry is out)
        self._hold_why = ("", "")
        self._attempt = 0
        self._split_limit: int | None = None
        #: the batch to send next, taken and encoded while the previous one was out, and the
        #: store it was taken from (only the sender's thread touches these)
        self._next: Batch | None = None
        self._next_store: Store = store
        #: a batch the service accepted whose spool ack waits for the next request to be out
        #: (done in that request's shadow: see _send), and the store it came from
        self._unacked: tuple[Batch, Store] | None = None
        self._split_left = 0
        #: whether the service accepted any event since the split began (of a batch it
        #: refused: only then is "the others go out" what happened)
        self._split_took = False
        self._last_request_at = -1e9
        self._first_pending_at: float | None = None
        self._pending = store.pending()
        self._ever_ok = False
        self.budget: RateBudget | None = None
        self.random = random.Random()
        # counters (read by snapshot under self.lock)
        self.drained = 0
        #: flush markers and bucket switches in log()'s queue (not events: stats() leaves
        #: them out); changed under `lock`, by queue_mark() and by the drain
        self.marks_queued = 0
        self.in_flight = 0
        self.sent = 0
        self.requests = 0
        self.retries = 0
        self.refused = 0
        self.dropped = 0
        #: seconds spent, by cause: in requests, and between them waiting for the service
        #: (Retry-After, the rate window), for our backoff, and for our own pace
        self.timing = {"sending": 0.0, "service": 0.0, "backoff": 0.0, "pace": 0.0}
        self._gap_kind = ""  # what the time before the next request is spent on
        self._last_answer_at: float | None = None
        self.last_error = ""
        self.last_error_at: float | None = None
        self.last_remedy = ""
        self._losses: deque[str] = deque(maxlen=20)  # see _lost()
        self._rate_samples: deque[tuple[float, int]] = deque(maxlen=64)
        self.signals: dict[str, _Signal] = {}
        self._counts: Counter[str] = Counter()
        self._damaged_seen = 0
        self._busy = False  # the spool was found held by another process (said once a streak)
        #: the spool left after a failure, and the events of this key it still holds (as last
        #: read): counted in stats() and said by flush() and close() until they go out
        self._left: Store | None = None
        self.spool_trouble = ""  # why the spool was left, if it was
        self.left_count = 0
        self._moved: set[str] = set()  # signals changed since the last signal_stats()
        self._signals_lock = threading.Lock()
        self._signal_cache: dict[str, SignalStat] = {}

    # ---------------------------------------------------------------- the thread
    def start(self) -> None:
        self._running = True
        self.thread = threading.Thread(target=self._run, name="isstreamer-sender", daemon=True)
        self.keeper = threading.Thread(target=self._keep_spool, name="isstreamer-spool-keeper",
                                       daemon=True)
        self.thread.start()
        self.keeper.start()

    def _keep_spool(self) -> None:
        """The sender thread waits out each request (up to `timeout`, 10 s, for a slow
        service): meanwhile what log() queues goes to the spool from here, every
        spool_interval, or a process killed then would lose it. Asleep between requests,
        and while a request is answered within spool_interval."""
        interval = self.settings.spool_interval
        # (close() may come while a request is out: the queue still goes to the spool)
        while self._running or self._request_started is not None:
            self._keeper_idle = True  # (before reading: a request beginning now wakes it)
            started = self._request_started
            if started is None:
                self._request_begun.wait()
                self._request_begun.clear()
                continue
            self._keeper_idle = False
            due = started + interval - time.monotonic()
            if due <= 0 and self.queue and self.store.path:
                with contextlib.suppress(SpoolError):  # (the sender meets it and says it)
                    self.drain()
            self._request_begun.wait(due if due > 0 else interval)
            self._request_begun.clear()

    def _run(self) -> None:
        checkpoint_at = 0.0
        while self._running:
            try:
                delay = self.step()
                now = self.clock.monotonic()
                if now >= checkpoint_at and (
                        delay > 0 or now >= checkpoint_at + CHECKPOINT_BUSY_DELAY):
                    self.store.checkpoint()
                    checkpoint_at = self.clock.monotonic() + CHECKPOINT_INTERVAL
            except SpoolBusy as exc:  # another process holds the spool a moment: try again
                self._spool_busy(exc)
                delay = self.settings.spool_interval
            except SpoolError as exc:
                self._leave_spool(exc)
                delay = 0.0
            except Exception as exc:  # never die silently: report, keep the events, go on
                self._error(f"internal error in the sender: {type(exc).__name__}: {exc}",
                            REMEDIES[Outcome.INVALID])
                delay = 1.0
            delay = min(delay, self.settings.spool_interval)
            if delay > 0 and self._running and self.clock.wait(self.wake, delay):
                self.wake.clear()
        self._request_begun.set()  # (the keeper sees _running is False and ends)
        if self.keeper is not None:
            self.keeper.join(1.0)
        try:
            self._drop_next()
            self.drain()  # whatever arrived last goes to the store
        except SpoolError as exc:
            self._error(str(exc), "")
        finally:  # (here, not in close(): close() may have returned while a request was out)
            self.close_resources()

    def close_resources(self) -> None:
        """Close the HTTP session and the spool: by the thread as it ends, or by close()
        when there is no thread (use_async=False)."""
        try:
            self.transport.close()
        finally:
            try:
                self.store.close()
            finally:
                if self._left is not None:
                    with contextlib.suppress(SpoolError):
                        self._left.close()

    def stop(self, timeout: float) -> bool:
        """Stop the thread; True if it ended within `timeout`."""
        self._running = False
        self.wake.set()
        if self.thread is None:  # use_async=False: a batch made ready goes back
            with contextlib.suppress(SpoolError):
                self._drop_next()
            return True
        self.thread.join(bounded(timeout))
        return not self.thread.is_alive()

    # ---------------------------------------------------------------- one round
    def step(self) -> float:
        """Drain the queue, then make at most one request. Returns seconds to wait."""
        waiting = self._unacked
        try:
            return self._round()
        finally:
            if waiting is not None and self._unacked is waiting:
                self._settle(self._next, self._next_store)  # (the batch made ready stays leased)

    def _round(self) -> float:
        now = self.clock.monotonic()
        self.drain()
        idle = self.settings.spool_interval
        if self._halt is not None:
            self._drop_next()
            if self._halt.outcome is Outcome.CAP_REACHED and now >= self._probe_at:
                self._halt = None  # ask again: the monthly cap may have reset
            else:
                self._check_markers()
                return idle
        if now < self._hold_until:
            self._check_markers()  # (another process sharing the spool may send them)
            return self._hold_until - now
        pace = self._pace_delay(now)
        bucket = self.current_bucket()
        if bucket.key not in self._created and bucket.key not in self._stopped_buckets:
            return pace or self._create(bucket, now)
        if self._pending <= 0:
            self._recount()  # (another process, or a recovered row, may share this spool)
            if self._pending == 0:
                self._first_pending_at = None
                return idle
        if self._first_pending_at is None:
            self._first_pending_at = now
        age_needed = max(0.0, self.settings.flush_interval - self.settings.spool_interval)
        ready = (self._pending >= self.settings.batch_size or self._markers
                 or now - self._first_pending_at >= age_needed)
        if not ready:
            return self._first_pending_at + age_needed - now
        if pace:
            exhausted = self.budget is not None and self.budget.remaining <= 0
            self._gap_kind = self._gap_kind or ("service" if exhausted else "pace")
            return pace
        limit = self._split_limit or self.settings.batch_size
        store = self.store  # (log() may switch it, on a spool failure: a batch keeps its own)
        if self._next is not None and self._next_store is not store:
            self._drop_next()
        batch, self._next = self._next, None
        if batch is None:
            batch = store.take(limit, self._stopped_buckets)
        damaged = getattr(store, "damaged", 0)
        if damaged > self._damaged_seen:
            with self.lock:
                self.dropped += damaged - self._damaged_seen
                self._pending -= damaged - self._damaged_seen
            self._lost(f"dropped {counted(damaged - self._damaged_seen, 'event')} of a damaged "
                       f"spool segment", "none: the rest of the spool is fine")
            self._damaged_seen = damaged
        if batch is None:
            if not self._stopped_buckets:  # (what this one counted, another streamer sent)
                self._recount()
            self._check_markers()
            return idle
        if batch.bucket_key not in self._created:
            store.release(batch)
            return self._create(Bucket(batch.bucket_name, batch.bucket_key), now)
        return self._send(batch, store, now)

    def drain(self, most: int | None = None) -> None:
        """Move what log() queued into the store (at most `most` items), noting bucket
        switches and flush markers in order. No per-event encoding in Python; the lock is
        held one segment's worth at a time, and let go to log() when it wants to spill (see
        spill). A spool another process holds stops it: the events stay queued."""
        left = len(self.queue) if most is None else most
        while left > 0:
            with self._drain_lock:
                chunk = min(left, SEGMENT_EVENTS, len(self.queue))  # read under the lock
                if chunk:
                    try:
                        self._drain(chunk)
                    except SpoolBusy as exc:  # (what was taken is back in the queue)
                        self._spool_busy(exc)
                        break
            if not chunk:
                break
            left -= chunk
            if self._spill_wanted:  # (log() waits for its turn: this round leaves it the rest)
                self._spill_wanted = False
                break
        if self._recheck:  # (a new flush marker, or events dropped: otherwise only an ack
            self._recheck = False  # can complete a flush, and _send checks then)
            self._check_markers()

    def spill(self, ceiling: int) -> bool:
        """log()'s part when it outpaces the sender (its queue reached max_queue): move one
        segment's worth to the store, in the caller's thread. Never a wait on the network nor
        on a spool another process holds (a put waits 2 ms at most). Below `ceiling` it does
        nothing while the sender is draining (that one is on it, and gives way after its
        segment); at `ceiling` (memory's bound) it waits for its turn, at most SPILL_WAIT,
        and if the spool is held even so, drops the oldest events, counted and said. False
        if the spool was busy (log() tries again a segment later). Flush markers are left for
        the sender to check: that reads the spool, which may wait."""
        queue, lock = self.queue, self._drain_lock
        full = len(queue) >= ceiling
        if not lock.acquire(blocking=False):
            self._spill_wanted = True
            if not full or not lock.acquire(timeout=SPILL_WAIT):
                return True
        self._spill_wanted = False
        try:
            count = min(SEGMENT_EVENTS, len(queue))
            if not count:
                return True
            try:
                self._drain(count)
                return True
            except SpoolBusy as exc:  # (what was taken is back in the queue)
                # (this process's sender holding it a moment ends soon: no drop for that)
                if len(queue) >= ceiling and not isinstance(exc, SpoolHeldHere):
                    self._drop_oldest(count)
                return False
        finally:
            lock.release()
            if self._recheck:
                self.wake.set()

    def _drop_oldest(self, most: int) -> None:
        """(Under the drain lock.) Drop the oldest `most` events of the queue, counted and
        said: it is full and the spool cannot take them now. Bucket switches and flush
        markers keep their places."""
        items = list(map(deque.popleft, repeat(self.queue, min(most, len(self.queue)))))
        kept = [item for item in items if type(item) is not tuple]
        self.queue.extendleft(reversed(kept))
        dropped = len(items) - len(kept)
        with self.lock:
            self.drained += dropped
            self.dropped += dropped
        self._recheck = True
        self._lost(f"the spool {self.store.path} is held by another process and the memory "
                   f"queue is full: dropped the {counted(dropped, 'oldest event')}",
                   "find what holds the spool (another kernel in a long transaction?), or "
                   "raise max_queue")

    def _recount(self) -> None:
        """Ask the store what waits (the spool may be shared), after acking a batch whose
        ack waited (it would be counted; the batch made ready stays leased)."""
        self._settle(self._next, self._next_store)
        with self.lock:
            self._pending = self.store.pending()
        self.left_behind()

    def left_behind(self) -> int:
        """Events of this key still in the spool left after it failed (a batch that was
        under way is settled there; the next Streamer with the key sends the rest): read
        again if it can be, else as last read."""
        left = self._left
        if left is None:
            return 0
        with contextlib.suppress(SpoolError):
            count = left.pending()
            with self.lock:
                self.left_count = count
        return self.left_count

    def queued_events(self) -> int:
        """The events (not flush markers or bucket switches) in log()'s queue."""
        return max(0, len(self.queue) - self.marks_queued)

    def queue_mark(self, item: Any) -> None:
        """Queue a flush marker or a bucket switch behind what log() queued."""
        with self.lock:
            self.marks_queued += 1
            self.queue.append(item)

    def _drain(self, count: int) -> None:
        """Move `count` items from the queue to the store. Should anything fail on the way
        (the store, a bug), what was not stored goes back to the head of the queue, in order,
        with the bucket it was logged to: nothing is lost, the next drain tries again."""
        items = list(map(deque.popleft, repeat(self.queue, count)))  # (a C loop: 2.5x faster)
        if set(map(type, items)) == {tuple}:  # events only, the usual case
            try:
                self._put([Segment(self.queue_bucket.key, self.queue_bucket.name, items)])
            except BaseException:
                self.queue.extendleft(reversed(items))
                raise
            return
        start, bucket = 0, self.queue_bucket  # (the first item not stored yet, its bucket)
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
                    self._markers.append(item)
                    self._recheck = True
                    start = i + 1  # (the marker is done too)
            if events:
                segments.append(Segment(self.queue_bucket.key, self.queue_bucket.name, events))
            self._put(segments)
            start = len(items)
        except BaseException:
            self.queue_bucket = bucket
            self.queue.extendleft(reversed(items[start:]))
            raise
        finally:
            with self.lock:
                self.marks_queued -= sum(type(item) is not tuple for item in items[:start])

    def _put(self, segments: list[Segment]) -> None:
        if not segments:
            return
        try:
            dropped = self.store.put(segments)
        except SpoolBusy:  # another process holds it a moment: the caller keeps the events
            raise
        except SpoolError as exc:  # disk full, damaged: go on in memory, lose nothing
            self._leave_spool(exc)
            dropped = self.store.put(segments)
        self._busy = False
        added = sum(len(s.events) for s in segments)
        with self.lock:
            self.drained += added
            self._pending += added - dropped
            self.dropped += dropped
        for segment in segments:
            self._track(segment.events)
        if dropped:
            self._recheck = True
            where = "spool" if self.store.path else "memory queue"
            self._lost(f"the {where} is full: dropped the {counted(dropped, 'oldest event')}",
                       "raise max_queue / spool_max_bytes, or log less often")

    def _spool_busy(self, exc: SpoolBusy) -> None:
        """Another process (a shared spool, any SQLite client) holds the spool: nothing was
        done, events stay queued (log() keeps them, bounded) and the sender tries again at
        its next round, keeping the spool. Said once a streak."""
        if not self._busy:
            self._busy = True
            self.notify(20, f"{exc}; trying again (events stay queued meanwhile)")

    def _leave_spool(self, exc: SpoolError) -> None:
        """The spool failed: keep going with a memory store (what is on disk stays there for
        the next streamer), and say so. Once in memory, a failure of the spool left behind
        (settling there a batch that was under way) leaves the memory store as it is."""
        if isinstance(self.store, MemoryStore):  # (no spool fails but the one left)
            self._error(f"{exc} (a batch the service accepted stays in the spool left before: "
                        f"the next Streamer sends it again)", "", level=30)
            return
        self._left = self.store
        self.spool_trouble = str(exc)
        self.store = MemoryStore(self.settings.max_queue)  # (a batch under way, and the one
        self._recheck = True  # made ready, are settled in the spool they came from)
        with self.lock:
            self.left_count = self._pending  # (what was counted: read again below if it can)
            self._pending = 0
        self.left_behind()
        self._error(f"{exc}; going on without the spool (new events live in memory only)",
                    f"free disk space or set spool_dir to a writable folder, then run "
                    f"`{SEND_COMMAND}` or start a new Streamer: what is in the spool is sent "
                    f"then")

    def _track(self, events: list[Event]) -> None:
        """Per-signal counts, latest values and recent numbers for the panel, in bulk."""
        keys = [e[0] for e in events]
        self._counts.update(keys)
        latest = dict(zip(keys, events))  # noqa: B905 - one list made from the other
        with self._signals_lock:
            self._moved.update(latest)
        signals = self.signals
        for key, (_, value, epoch) in latest.items():
            sig = signals.get(key)
            if sig is None:
                if len(signals) >= MAX_SIGNALS:
                    continue
                sig = signals[key] = _Signal()
            sig.last_value = value
            sig.last_time = epoch
        for key, value, _ in events[-SPARK_POINTS * min(len(latest), 50):]:
            if type(value) is int or type(value) is float:
                sig = signals.get(key)
                if sig is not None:
                    sig.recent.append(value)

    # ---------------------------------------------------------------- requests
    def _pace_delay(self, now: float) -> float:
        delay = 0.0
        rps = self.settings.max_requests_per_second
        if rps > 0:
            delay = self._last_request_at + 1.0 / rps - now
        budget = self.budget
        if budget is not None and budget.remaining <= 0:  # (at most the cap after the answer)
            delay = max(delay, min(self._last_request_at + RESET_WAIT_CAP - now,
                                   budget.reset - self.clock.wall() + 0.05))
        return max(0.0, delay)

    def _create(self, bucket: Bucket, now: float) -> float:
        answer = self._request(lambda: self.transport.create_bucket(bucket.key, bucket.name), now,
                               lambda: f"create bucket {bucket.key}")
        if answer.outcome is Outcome.ACCEPTED:
            self._created.add(bucket.key)
            self.notify(20, f"bucket {bucket.name!r} ({bucket.key}) ready")
            return 0.0
        return self._failed(answer, bucket.key, None, now)

    def _send(self, batch: Batch, store: Store, now: float) -> float:
        """Send `batch`, taken from `store` (settled there even if log() has switched stores
        meanwhile, after a spool failure)."""
        with self.lock:
            self.in_flight = len(batch)
        take_next = self._split_limit is None and (
            self._markers or self._pending + len(self.queue) - len(batch)
            >= self.settings.batch_size)
        meanwhile = None
        if take_next or self._unacked is not None:
            meanwhile = lambda: self._meanwhile(batch, store, take_next)  # noqa: E731
        try:
            answer = self._request(lambda: self.transport.post_events(
                batch.bucket_key, batch.events, meanwhile), now,
                lambda: f"{counted(len(batch), 'event')} to bucket {batch.bucket_key}")
        except BaseException:  # interrupted (Ctrl-C in a use_async=False caller): keep all
            with contextlib.suppress(SpoolError):
                self._drop_next()
            with contextlib.suppress(SpoolError):
                store.release(batch)
            with self.lock:
                self.in_flight = 0
            raise
        # (an exception in the transport is an Answer too: see _request)
        try:
            self._settle(batch, store)  # (if the request ended before its body was out)
        except SpoolError:  # (the batch out stays in the spool, to be sent again)
            with self.lock:
                self.in_flight = 0
            raise
        if answer.outcome is Outcome.ACCEPTED:
            keep = self._next if self._next_store is store else None
            if keep is not None and self.thread is not None:
                # The next request goes out at once: this ack (a spool transaction) is done
                # in its shadow, off the path between two requests. Should the process die
                # before, this batch is sent again (a duplicate, as for a kill mid-request).
                self._unacked = (batch, store)
            else:
                store.ack(batch, keep)
            with self.lock:
                self.in_flight = 0
                self.sent += len(batch)
                if store is self.store:
                    self._pending -= len(batch)
                self._rate_samples.append((self.clock.monotonic(), self.sent))
            if self._split_limit is not None:
                self._split_took = True
                self._split_left -= len(batch)
                if self._split_left <= 0:
                    self._split_limit = None
            if self._unacked is None:
                self._check_markers()
            return 0.0
        with self.lock:
            self.in_flight = 0
        return self._failed(answer, batch.bucket_key, batch, now, store)

    def _meanwhile(self, batch: Batch, store: Store, take_next: bool) -> None:
        """Runs once `batch` is sent, while the service works on it: the previous batch's
        ack, then the next batch."""
        with contextlib.suppress(Exception):  # (a spool failure: met again after the answer)
            self._settle(batch, store, again=True)
        if take_next:
            self._take_next(batch, store)

    def _settle(self, flying: Batch | None = None, store: Store | None = None, *,
                again: bool = False) -> None:
        """Ack the accepted batch whose ack waited for the next request (`flying`, from
        `store`, stays leased), and see whether a flush is done. A failing ack raises once
        (the batch stays in the spool, to be sent again: at least once), or with `again`
        (in a request's shadow, where nothing can be reported) is tried once more later."""
        if self._unacked is None:
            return
        batch, its_store = self._unacked
        if not again:
            self._unacked = None
        its_store.ack(batch, flying if store is its_store else None)
        self._unacked = None
        self._check_markers()

    def _take_next(self, batch: Batch, store: Store) -> None:
        """While `batch` is at the service: drain the queue (which also keeps it under
        max_queue, so log() rarely spills itself), then take and encode the batch after it,
        so the next request goes out as soon as this one is acknowledged (the client's work
        overlaps the service's; still one request in flight, in order). Only a full batch,
        or any when a flush waits."""
        try:
            limit = self.settings.batch_size
            self.drain()
            self._next = store.take(limit, after=batch, least=1 if self._markers else limit)
            self._next_store = store
            if self._next is not None:  # (if encoding fails here, sending fails again)
                self.transport.prepare(self._next.events)
        except Exception:  # the next round's own take or send meets it and reports it
            return

    def _drop_next(self) -> None:
        try:
            self._settle()  # (first: what is given back never overlaps an unacked batch)
        finally:
            nxt, self._next = self._next, None
            if nxt is not None:
                self._next_store.release(nxt)

    def _request(self, call: Callable[[], Answer], now: float,
                 what: Callable[[], str]) -> Answer:
        """Make the request `call` makes (`what` says it in words, for debug_level 3 only),
        counted; an exception in it is an Answer too."""
        self._last_request_at = now
        self._asked_generation = self._key_generation
        if self._gap_kind and self._last_answer_at is not None:
            self.timing[self._gap_kind] += max(0.0, now - self._last_answer_at)
        self._gap_kind = ""
        self._request_started = started = time.monotonic()
        if self._keeper_idle:
            self._request_begun.set()
        try:
            answer = call()
        except (ValueError, TypeError) as exc:  # an event or header the wire cannot carry
            answer = Answer(Outcome.INVALID, None, detail=f"cannot be sent: {exc}")
        except Exception as exc:  # a bug: keep the events, retry with backoff, say so
            answer = Answer(Outcome.RETRY, None,
                            detail=f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self._request_started = None
        self._last_answer_at = self.clock.monotonic()
        with self.lock:
            self.requests += 1
            self.timing["sending"] += time.monotonic() - started
            if answer.budget is not None:
                self.budget = answer.budget
        if answer.outcome is Outcome.ACCEPTED:
            self._attempt = 0
            self._ever_ok = True
            if self.last_error and self._hold_until:
                self.notify(20, "delivery resumed")
            self._hold_until = 0.0
        if self.settings.debug_level >= 3:
            took = (time.monotonic() - started) * 1000
            outcome = answer.outcome.value
            answered = (f"HTTP {answer.status} ({outcome})" if answer.status
                        else "done" if answer.outcome is Outcome.ACCEPTED  # (offline)
                        else f"no HTTP answer ({outcome})")
            detail = f": {answer.detail}" if answer.detail else ""
            self.notify(10, f"{what()}: {answered} after {took:.1f} ms{detail}")
        return answer

    def _failed(self, answer: Answer, bucket_key: str, batch: Batch | None, now: float,
                store: Store | None = None) -> float:
        """Keep the events (in `store`, where `batch` came from) and decide when to try
        again; never a retry storm."""
        if store is None:
            store = self.store
        outcome = answer.outcome
        self._drop_next()
        if batch is not None and outcome not in (Outcome.INVALID, Outcome.TOO_LARGE):
            store.release(batch)
        if outcome is Outcome.ACCESS_DENIED:
            with self._key_lock:  # a refusal and the user's new key: one after the other
                if self._asked_generation != self._key_generation:  # the old key's refusal
                    self.notify(20, "a request sent with the replaced access key was refused; "
                                    "sending it again with the new one")
                    return 0.0  # (the batch was released above)
                self._stop_said[None] = self._error(answer.detail, REMEDIES[outcome])
                store.mark_denied()
                self._halt = answer
            self._check_markers()
            return 0.0
        if outcome in (Outcome.RETRY, Outcome.RATE_LIMITED):
            self._attempt += 1
            delay = self._backoff()
            if answer.retry_after is not None:  # at least what the service asks: never less
                delay = max(delay, answer.retry_after)  # (a Retry-After of 0 made a storm)
            if outcome is Outcome.RATE_LIMITED and answer.retry_after is None and answer.budget:
                delay = max(delay, min(RESET_WAIT_CAP, answer.budget.reset - self.clock.wall()))
            # (from the answer, not from the request's start: a request that timed out
            # took longer than the first backoffs, and the retry went out at once)
            self._hold_until = self.clock.monotonic() + delay
            self._hold_state = (State.RATE_LIMITED if outcome is Outcome.RATE_LIMITED
                                else State.BACKING_OFF)
            self._hold_by_service = outcome is Outcome.RATE_LIMITED or (
                answer.retry_after is not None and answer.retry_after >= delay)
            self._gap_kind = "service" if self._hold_by_service else "backoff"
            self._hold_why = (self.redact(answer.detail), answer.remedy or REMEDIES[outcome])
            with self.lock:
                self.retries += 1
            self._error(answer.detail, self._hold_why[1],
                        level=20 if outcome is Outcome.RATE_LIMITED else 30, retry_in=delay)
            return delay
        if batch is None and outcome in (Outcome.TOO_LARGE, Outcome.INVALID):
            self._stop_said[bucket_key] = self._error(
                f"creating bucket {bucket_key} failed: " + (
                    f"the service answered {answer.status}: {answer.words}"  # (no events in it)
                    if answer.outcome is Outcome.INVALID and answer.words else answer.detail),
                REMEDIES[Outcome.INVALID])
            self._stopped_buckets[bucket_key] = answer
            self._check_markers()
            return 0.0
        if outcome is Outcome.TOO_LARGE or outcome is Outcome.INVALID:
            assert batch is not None
            if len(batch) > 1:  # split: find the part the service takes
                store.release(batch)
                if self._split_limit is None:
                    self._split_took = False
                self._split_limit = max(1, len(batch) // 2)
                self._split_left = len(batch)
                return 0.0
            store.ack(batch)  # one event the service will never take: drop it, say so
            with self.lock:
                self.refused += 1
                if store is self.store:
                    self._pending -= 1
            key = batch.events[0][0]
            key = repr(key if len(key) <= 40 else f"{key[:40]}…")
            if answer.status is None:
                self._lost(f"the client (before sending) refused an event (key {key}): "
                           f"{answer.detail}", REFUSED_HERE)
            else:
                words = f": {answer.words}" if answer.words else ""
                remedy = REMEDIES[outcome]  # (not the event's fault, as far as the words say)
                if answer.remedy:  # (the service blames the event)
                    took = self._split_limit is not None and self._split_took
                    remedy = (f"{answer.remedy}; this one is dropped, "
                              + ("the others go out" if took else "the others are tried alone"))
                self._lost(f"the service refused an event (key {key}, {answer.status}){words}",
                           remedy)
            self._check_markers()
            return 0.0
        # say so first: whoever sees the stopped state finds the notice waiting
        if outcome is Outcome.BUCKET_REMOVED:
            self._stop_said[bucket_key] = self._error(f"bucket {bucket_key}: {answer.detail}",
                                                      REMEDIES[outcome])
            self._stopped_buckets[bucket_key] = answer
        else:  # the monthly cap reached: the whole account
            self._stop_said[None] = self._error(answer.detail, REMEDIES[outcome])
            self._probe_at = now + CAP_PROBE_INTERVAL
            self._halt = answer
        self._check_markers()
        return 0.0

    def _backoff(self) -> float:
        """Exponential backoff with full jitter, capped."""
        ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(self._attempt, 16))
        return self.random.uniform(0.1 * ceiling, ceiling)

    def _lost(self, message: str, remedy: str) -> None:
        """Say that events were lost (dropped or refused), and keep it for the flush that
        reports the loss (it says it then; see take_losses)."""
        said = self._error(message, remedy)
        with self.lock:
            self._losses.append(said)

    def take_losses(self) -> list[str]:
        """What was said of the losses since the last call (the last 20 at most)."""
        with self.lock:
            said = list(self._losses)
            self._losses.clear()
        return said

    def _error(self, message: str, remedy: str, level: int = 40, *,
               retry_in: float | None = None) -> str:
        """Keep `message` as the last error and say it with the fix; returns what was
        said. `retry_in`: when the failed request is tried again, said then but not kept (the
        state's `until` is the live countdown)."""
        message = self.redact(message)
        with self.lock:
            self.last_error = message
            self.last_error_at = self.clock.wall()
            self.last_remedy = remedy
        said = message if retry_in is None else f"{message}; retrying in {retry_in:.1f} s"
        said = f"{said}. Fix: {remedy}" if remedy else said
        self.notify(level, said)
        return said

    # ---------------------------------------------------------------- control
    def blocked(self) -> bool:
        """Whether delivery is stopped for the whole account (access key, cap)."""
        return self._halt is not None

    def key_refused(self) -> bool:
        """Whether delivery is stopped because the service refused the access key (the
        spool then hands what waits to the next key used with this API base)."""
        halt = self._halt  # (read once: the sender thread may clear it meanwhile)
        return halt is not None and halt.outcome is Outcome.ACCESS_DENIED

    def send_when_full(self) -> None:
        """use_async=False, log()'s part (ISStreamer's synchronous mode), in the caller: once a
        batch is full, send it in one try: one request for it (for a new bucket, its creation
        first), each bounded by `timeout`. The pace alone may make it wait first, at most
        1/max_requests_per_second (ISStreamer's sends took as long), so that a loop of log()
        calls keeps up; a retry's backoff, the rate limit or a stop never: then it only
        stores what is queued (in the spool, if there is one), and a later log() or flush()
        sends it."""
        size = self.settings.batch_size
        queued = len(self.queue)
        if queued + self._pending < size or (queued < size and self.holding()):
            return
        for _ in range(2):  # (a new bucket's creation, then the batch)
            pace = self.pace_wait()
            if pace > 0:
                self.clock.sleep(pace)
            created = len(self._created)
            self.step()  # (holding for a backoff, the rate limit or a stop: it only stores)
            if len(self._created) == created:  # (the batch went, or could not: done)
                return

    def pace_wait(self) -> float:
        """The wait the request pace alone asks now: at most 1/max_requests_per_second; 0 when
        there is none, or when something else holds (a backoff, the rate limit, a stop)."""
        now = self.clock.monotonic()
        rps = self.settings.max_requests_per_second
        budget = self.budget
        if (rps <= 0 or self.blocked() or now < self._hold_until
                or (budget is not None and budget.remaining <= 0)):
            return 0.0
        return max(0.0, self._last_request_at + 1.0 / rps - now)

    def service_wait(self) -> float:
        """Seconds left of a wait the service asked for (Retry-After, a 429, a spent rate
        window); 0 when there is none. Waiting at the service's pace is no stall."""
        now = self.clock.monotonic()
        if now < self._hold_until:
            return self._hold_until - now if self._hold_by_service else 0.0
        budget = self.budget
        if budget is not None and budget.remaining <= 0:
            return self._pace_delay(now)
        return 0.0

    def waiting(self) -> int:
        """Events accepted and not yet acknowledged: in the queue and in the store."""
        return self.queued_events() + max(0, self._pending)

    def store_pending(self) -> int | None:
        """Events of this access key that wait in the store now, whoever sends them (other
        processes sharing the spool too); None when it cannot be read at once."""
        try:
            return self.store.pending()
        except Exception:  # (held, closed or failed: the sender meets it and says it)
            return None

    def losses(self) -> list[str]:
        """What was said of the losses not yet reported, oldest first."""
        with self.lock:
            return list(self._losses)

    def left_path(self) -> str:
        """The path of the spool left after a failure, or ""."""
        return self._left.path if self._left is not None else ""

    def fork_locks(self) -> list[Any]:
        """The locks a fork must not split: the drain's and the store's."""
        return [self._drain_lock, *self.store.fork_locks()]

    def holding(self) -> bool:
        """Whether a request now would be too soon: a retry waits its backoff, the rate
        limit or the pace says wait, or delivery is stopped for the account."""
        now = self.clock.monotonic()
        return self.blocked() or now < self._hold_until or self._pace_delay(now) > 0

    def rekey(self, switch: Callable[[], None]) -> None:
        """The user replaces the access key: `switch` moves the store and the transport to
        it. A refusal of the old key answered meanwhile either stops delivery first (and this
        resumes it) or finds the key replaced (and the request goes out again)."""
        with self._key_lock:
            switch()
            self._key_generation += 1
        self.resume()

    def resume(self) -> None:
        """Try again after the user fixed what stopped delivery (a new key, a new bucket)."""
        self._halt = None
        self._hold_until = 0.0
        self._attempt = 0
        self.wake.set()

    def reset_after_fork(self, store: Store, transport: Transport) -> None:
        self.queue_bucket = self.current_bucket()
        self.store = store
        self.transport = transport
        self.lock = threading.Lock()
        self._drain_lock = threading.Lock()
        self._spill_wanted = False
        self._signals_lock = threading.Lock()
        self._key_lock = threading.Lock()
        self.wake = threading.Event()
        self._request_begun = threading.Event()
        self._request_started, self._keeper_idle, self.keeper = None, False, None
        self._markers = []
        self.marks_queued = 0  # (the child's queue starts empty)
        self._left, self.left_count = None, 0  # (the parent's to tell)
        self._next = None  # the parent's lease, the parent's batch
        self._unacked = None  # (the parent acks it)
        self._pending = store.pending()
        self.in_flight = 0

    def _check_markers(self) -> None:
        if not self._markers:
            return
        # (over a copy, removing in place: log() spilling in another thread may drain a new
        # marker meanwhile, or check these at the same time)
        for marker in list(self._markers):
            assert marker.upto is not None
            stop, where = self._halt, None
            if stop is None and self._stopped_buckets and not self.store.has_pending_upto(
                    marker.upto, self._stopped_buckets):
                where, stop = next(iter(self._stopped_buckets.items()))
            if not self.store.has_pending_upto(marker.upto):
                marker.done.set()
            elif stop is not None:
                marker.error = STOP_ERRORS[stop.outcome](self._stop_said[where],
                                                         pending=self._pending)
                marker.done.set()
            else:
                continue
            with contextlib.suppress(ValueError):  # (the other thread removed it first)
                self._markers.remove(marker)

    # ---------------------------------------------------------------- reading
    def state(self) -> tuple[State, str, str, float | None, str]:
        """(state, reason, remedy, until, stop code) as of now."""
        now = self.clock.monotonic()
        halt = self._halt or self._stopped_buckets.get(self.current_bucket().key)
        if halt is not None:  # (masked here too: what the stats show, the panel shows)
            return (State.STOPPED, self.redact(halt.detail), REMEDIES[halt.outcome], None,
                    halt.outcome.value)
        holding = now < self._hold_until
        if holding or (self._attempt and (self._pending > 0 or self.queue)):
            # (a failed request is retried: so it stays, with its reason, until one is
            # accepted, also while the retry is out)
            until = self.clock.wall() + (self._hold_until - now) if holding else None
            return self._hold_state, *self._hold_why, until, ""
        budget = self.budget
        wait = self._pace_delay(now) if budget is not None and budget.remaining <= 0 else 0.0
        if wait > 0 and (self._pending > 0 or self.queue):  # (for the window's reset)
            return (State.RATE_LIMITED, f"the service's rate limit ({budget.limit} requests a "
                    f"window) is spent until the window resets", REMEDIES[Outcome.RATE_LIMITED],
                    self.clock.wall() + wait, "")
        if not self._ever_ok:
            return State.CONNECTING, "", "", None, ""
        return State.ONLINE, "", "", None, ""

    def events_per_second(self) -> float:
        samples = list(self._rate_samples)
        now = self.clock.monotonic()
        recent = [(t, n) for t, n in samples if now - t <= 5.0]
        if len(recent) < 2:
            return 0.0
        (t0, n0), (t1, n1) = recent[0], recent[-1]
        return (n1 - n0) / max(now - t0, t1 - t0, 1e-9)

    def signal_stats(self) -> tuple[SignalStat, ...]:
        """Per-signal snapshots; only the signals that moved since the last call are built
        anew (the panel asks four times a second)."""
        with self._signals_lock:
            moved, self._moved = self._moved, set()
        cache, counts = self._signal_cache, self._counts
        for key in moved:
            sig = self.signals.get(key)
            if sig is not None:
                cache[key] = SignalStat(key, counts[key], sig.last_value, sig.last_time,
                                        tuple(sig.recent))
        return tuple(cache[key] for key in list(self.signals) if key in cache)  # first-seen order

    def fill(self, **common: Any) -> Stats:
        """A snapshot; `common` carries what the streamer owns (bucket, offline, ...)."""
        state, reason, remedy, until, stop = self.state()
        signals = self.signal_stats()
        with self.lock:
            return Stats(
                state=common.pop("state", state), reason=common.pop("reason", reason),
                stop=common.pop("stop", stop),
                remedy=common.pop("remedy", (remedy or self.last_remedy)
                                  if state is not State.ONLINE else ""),
                until=until, queued=self.queued_events()
                + max(0, self._pending - self.in_flight) + self.left_count,
                in_flight=self.in_flight,
                spooled=max(0, self._pending - self.in_flight) if self.store.path else 0,
                sent=self.sent, requests=self.requests, retries=self.retries,
                refused=self.refused + common.pop("refused_at_log"),
                dropped=self.dropped,
                events_per_second=self.events_per_second(), budget=self.budget,
                last_error=self.last_error, last_error_at=self.last_error_at,
                signals=signals, sending_seconds=self.timing["sending"],
                waited_service=self.timing["service"], waited_backoff=self.timing["backoff"],
                waited_pace=self.timing["pace"], **common)

