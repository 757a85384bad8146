"""The sender loop: one round at a time, each asking the policy when to send.

Everything happens in :meth:`Sender.step`, which does one round and says how long to wait
before the next. The thread only loops over it, so unit tests drive ``step`` with a fake
clock and a fake transport. The sender never prints: it reports through ``notify``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from operator import attrgetter
from typing import Any

from .._config import Settings
from .._errors import SpoolError, counted
from .._spool import Batch, SpoolBusy, Store
from .._stats import State, Stats
from .._transport import Answer, Outcome, Transport
from .base import Bucket, Clock, Notify, bounded
from .drain import Drain
from .keeper import Keeper
from .markers import Markers
from .pipeline import Pipeline
from .policy import REMEDIES, Policy
from .signals import Signals
from .tally import Tally

#: how often the sender folds the spool's write-ahead log into the database: when it has a
#: moment to wait, at most this often; while busy sending, once this much later
CHECKPOINT_INTERVAL = 1.0
CHECKPOINT_BUSY_DELAY = 5.0


class Sender:
    """The one background thread of a streamer: batching, pacing, retry and backoff.

    The drain moves what log() queues into the store at least every ``spool_interval``.
    The sender then sends the oldest batch of one bucket when it is full or
    ``flush_interval`` old, as the policy allows, and forgets it only once the service
    acknowledged it. While a request is out it drains the queue and takes and encodes the
    next batch, so its work overlaps the service's: still one request in flight, in order.
    """

    def __init__(self, *, queue: deque[Any], store: Store, transport: Transport,
                 settings: Settings, clock: Clock, notify: Notify,
                 current_bucket: Callable[[], Bucket],
                 redact: Callable[[str], str] = str) -> None:
        self.queue = queue
        self.transport = transport
        self.clock = clock
        self.notify = notify
        self.current_bucket = current_bucket
        self._settings = settings
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        self._running = False
        # what the parts keep for display is redacted: it never holds the access key
        self.tally = tally = Tally(clock=clock, notify=notify, redact=redact,
                                   pending=store.pending())
        self.policy = policy = Policy(settings, clock, redact=redact)
        self.signals = signals = Signals()
        self.markers = Markers(policy, tally)
        self.drainer = drainer = Drain(
            queue=queue, store=store, settings=settings, bucket=current_bucket(), tally=tally,
            markers=self.markers.waiting, track=signals.track, wake=self.wake)
        self.pipeline = Pipeline(
            store=store, drain=self.drain, prepare=lambda events: self.transport.prepare(events),
            batch_size=lambda: self._settings.batch_size, markers=self.markers.waiting,
            check_markers=self._check_markers)
        self.keeper = self._new_keeper()
        # What the streamer asks, answered by the part that knows. log() calls spill() past
        # max_queue, once an event while the sender drains: no wrapper on that path.
        self.spill = drainer.spill
        self.queued_events, self.queue_mark = drainer.queued_events, drainer.queue_mark
        self.left_behind, self.left_path = drainer.left_behind, drainer.left_path
        self.blocked, self.key_refused = policy.blocked, policy.key_refused
        self.pace_wait, self.service_wait = policy.pace_wait, policy.service_wait
        self.holding = policy.holding
        self.losses, self.take_losses = tally.unreported, tally.take_losses
        self.events_per_second, self.signal_stats = tally.events_per_second, signals.stats
        self._created: set[str] = set()
        #: bumped when the user replaces the access key. A request remembers the one it went
        #: out with, so a late refusal of the old key does not stop the new one.
        self._key_generation = 0
        self._asked_generation = 0
        self._key_lock = threading.Lock()
        self._first_pending_at: float | None = None

    def _new_keeper(self) -> Keeper:
        return Keeper(drain=self.drain, wanted=lambda: bool(self.queue and self.store.path),
                      running=lambda: self._running)

    # ---------------------------------------------------------------- what others read
    @property
    def settings(self) -> Settings:
        return self._settings

    @settings.setter
    def settings(self, settings: Settings) -> None:
        self._settings = self.policy.settings = self.drainer.settings = settings

    store = property(attrgetter("drainer.store"), doc="The spool, or memory after a failure.")
    lock = property(attrgetter("tally.lock"), doc="Guards the counters stats() reads.")
    spool_trouble = property(attrgetter("drainer.spool_trouble"), doc="Why the spool was left.")
    sent = property(attrgetter("tally.sent"), doc="Events the service acknowledged.")
    drained = property(attrgetter("tally.drained"), doc="Events moved to the store.")
    dropped = property(attrgetter("tally.dropped"), doc="Events dropped: a full queue or spool.")
    refused = property(attrgetter("tally.refused"), doc="Events the service refused.")

    # ---------------------------------------------------------------- the thread
    def start(self) -> None:
        self._running = True
        self.thread = threading.Thread(target=self._run, name="isstreamer-sender", daemon=True)
        self.thread.start()
        self.keeper.start(self._settings.spool_interval)

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
                self.drainer.busy(exc)
                delay = self._settings.spool_interval
            except SpoolError as exc:
                self.drainer.leave_spool(exc)
                delay = 0.0
            except Exception as exc:  # never die silently: report, keep the events, go on
                self.tally.error(f"internal error in the sender: {type(exc).__name__}: {exc}",
                                 REMEDIES[Outcome.INVALID])
                delay = 1.0
            delay = min(delay, self._settings.spool_interval)
            if delay > 0 and self._running and self.clock.wait(self.wake, delay):
                self.wake.clear()
        self.keeper.stop(1.0)  # it sees that the sender stopped, and ends
        try:
            self.pipeline.drop()
            self.drain()  # whatever arrived last goes to the store
        except SpoolError as exc:
            self.tally.error(str(exc), "")
        finally:  # here: close() may have returned while a request was out
            self.close_resources()

    def close_resources(self) -> None:
        """Close the HTTP session and the spool: by the thread as it ends, or by close()
        when there is no thread (use_async=False)."""
        try:
            self.transport.close()
        finally:
            self.drainer.close()

    def stop(self, timeout: float) -> bool:
        """Stop the thread; True if it ended within `timeout`."""
        self._running = False
        self.wake.set()
        if self.thread is None:  # use_async=False: a batch made ready goes back
            with contextlib.suppress(SpoolError):
                self.pipeline.drop()
            return True
        self.thread.join(bounded(timeout))
        return not self.thread.is_alive()

    # ---------------------------------------------------------------- one round
    def step(self) -> float:
        """Drain the queue, then make at most one request. Returns seconds to wait."""
        pipeline = self.pipeline
        waiting = pipeline.unacked
        try:
            return self._round()
        finally:
            if waiting is not None and pipeline.unacked is waiting:
                pipeline.settle_behind()

    def _round(self) -> float:
        now = self.clock.monotonic()
        self.drain()
        idle = self._settings.spool_interval
        policy, tally = self.policy, self.tally
        if policy.halt is not None:
            self.pipeline.drop()
            if policy.halted(now):
                self._check_markers()
                return idle
        held = policy.held(now)
        if held:
            self._check_markers()  # another process sharing the spool may send them
            return held
        pace = policy.pace(now)
        bucket = self.current_bucket()
        if bucket.key not in self._created and bucket.key not in policy.stopped:
            return pace or self._create(bucket, now)
        if tally.pending <= 0:
            self._recount()  # another process, or a recovered row, may share this spool
            if tally.pending == 0:
                self._first_pending_at = None
                return idle
        if self._first_pending_at is None:
            self._first_pending_at = now
        age_needed = max(0.0, self._settings.flush_interval - self._settings.spool_interval)
        ready = (tally.pending >= self._settings.batch_size or self.markers.waiting
                 or now - self._first_pending_at >= age_needed)
        if not ready:
            return self._first_pending_at + age_needed - now
        if pace:
            policy.pace_gap()
            return pace
        store = self.store  # log() may switch it on a spool failure: a batch keeps its own
        batch = self.pipeline.ready(store)
        if batch is None:
            batch = store.take(policy.limit(self._settings.batch_size), policy.stopped)
        self.drainer.count_damaged(store)
        if batch is None:
            if not policy.stopped:  # what this one counted, another streamer sent
                self._recount()
            self._check_markers()
            return idle
        if batch.bucket_key not in self._created:
            store.release(batch)
            return self._create(Bucket(batch.bucket_name, batch.bucket_key), now)
        return self._send(batch, store, now)

    def drain(self, most: int | None = None) -> None:
        """Move what log() queued into the store, at most `most` items; see the drain. Only
        an ack completes a flush, unless a new flush marker or a drop came: check then."""
        drainer = self.drainer
        drainer.drain(most)
        if drainer.recheck:
            drainer.recheck = False
            self._check_markers()

    def _recount(self) -> None:
        """Ask the store what waits, since the spool may be shared. First ack a batch whose
        ack waited, or it would be counted; the batch made ready stays leased."""
        self.pipeline.settle_behind()
        with self.tally.lock:
            self.tally.pending = self.store.pending()
        self.drainer.left_behind()

    # ---------------------------------------------------------------- requests
    def _create(self, bucket: Bucket, now: float) -> float:
        answer = self._request(lambda: self.transport.create_bucket(bucket.key, bucket.name), now,
                               lambda: f"create bucket {bucket.key}")
        if answer.outcome is Outcome.ACCEPTED:
            self._created.add(bucket.key)
            self.notify(20, f"bucket {bucket.name!r} ({bucket.key}) ready")
            return 0.0
        return self._failed(answer, bucket.key, None, now)

    def _send(self, batch: Batch, store: Store, now: float) -> float:
        """Send `batch`, taken from `store`. It is settled there even if log() has switched
        stores meanwhile, after a spool failure."""
        tally = self.tally
        with tally.lock:
            tally.in_flight = len(batch)
        take_next = self.policy.split_limit is None and (
            self.markers.waiting or tally.pending + len(self.queue) - len(batch)
            >= self._settings.batch_size)
        pipeline = self.pipeline
        meanwhile = None
        if take_next or pipeline.unacked is not None:
            meanwhile = lambda: pipeline.meanwhile(batch, store, take_next)  # noqa: E731
        try:
            answer = self._request(lambda: self.transport.post_events(
                batch.bucket_key, batch.events, meanwhile), now,
                lambda: f"{counted(len(batch), 'event')} to bucket {batch.bucket_key}")
        except BaseException:  # interrupted, by Ctrl-C in a use_async=False caller: keep all
            with contextlib.suppress(SpoolError):
                pipeline.drop()
            with contextlib.suppress(SpoolError):
                store.release(batch)
            with tally.lock:
                tally.in_flight = 0
            raise
        # an exception in the transport is an Answer too: see _request
        try:
            pipeline.settle(batch, store)  # if the request ended before its body was out
        except SpoolError:  # the batch out stays in the spool, to be sent again
            with tally.lock:
                tally.in_flight = 0
            raise
        if answer.outcome is not Outcome.ACCEPTED:
            with tally.lock:
                tally.in_flight = 0
            return self._failed(answer, batch.bucket_key, batch, now, store)
        pipeline.accepted(batch, store, threaded=self.thread is not None)
        with tally.lock:
            tally.in_flight = 0
            tally.sent += len(batch)
            if store is self.store:
                tally.pending -= len(batch)
            tally.rate_samples.append((self.clock.monotonic(), tally.sent))
        self.policy.took(len(batch))
        if pipeline.unacked is None:
            self._check_markers()
        return 0.0

    def _request(self, call: Callable[[], Answer], now: float,
                 what: Callable[[], str]) -> Answer:
        """Make the request `call` makes, counted; an exception in it is an Answer too.
        `what` says it in words, for debug_level 3."""
        self.policy.asked(now)
        self._asked_generation = self._key_generation
        started = self.keeper.begin()
        try:
            answer = call()
        except (ValueError, TypeError) as exc:  # an event or header the wire cannot carry
            answer = Answer(Outcome.INVALID, None, detail=f"cannot be sent: {exc}")
        except Exception as exc:  # a bug: keep the events, retry with backoff, say so
            answer = Answer(Outcome.RETRY, None,
                            detail=f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self.keeper.end()
        with self.tally.lock:
            self.tally.requests += 1
            resumed = self.policy.answered(answer, time.monotonic() - started)
        if resumed and self.tally.last_error:
            self.notify(20, "delivery resumed")
        if self._settings.debug_level >= 3:
            self.tally.said_request(what(), answer, (time.monotonic() - started) * 1000)
        return answer

    def _failed(self, answer: Answer, bucket_key: str, batch: Batch | None, now: float,
                store: Store | None = None) -> float:
        """Keep the events, in `store` where `batch` came from, and ask the policy when to
        try again."""
        store = self.store if store is None else store
        outcome, policy, tally = answer.outcome, self.policy, self.tally
        self.pipeline.drop()
        if batch is not None and outcome not in (Outcome.INVALID, Outcome.TOO_LARGE):
            store.release(batch)
        if outcome is Outcome.ACCESS_DENIED:
            with self._key_lock:  # a refusal and the user's new key: one after the other
                if self._asked_generation != self._key_generation:  # the old key's refusal
                    self.notify(20, "a request sent with the replaced access key was refused; "
                                    "sending it again with the new one")
                    return 0.0  # the batch was released above
                self.markers.said[None] = tally.error(answer.detail, REMEDIES[outcome])
                store.mark_denied()
                policy.halt_key(answer)
        elif outcome in (Outcome.RETRY, Outcome.RATE_LIMITED):
            delay = policy.retry(answer)
            with tally.lock:
                tally.retries += 1
            tally.error(answer.detail, policy.hold_why[1],
                        level=20 if outcome is Outcome.RATE_LIMITED else 30, retry_in=delay)
            return delay
        elif batch is None and outcome in (Outcome.TOO_LARGE, Outcome.INVALID):
            self.markers.said[bucket_key] = tally.error(
                f"creating bucket {bucket_key} failed: " + (
                    f"the service answered {answer.status}: {answer.words}"  # no events in it
                    if answer.outcome is Outcome.INVALID and answer.words else answer.detail),
                REMEDIES[Outcome.INVALID])
            policy.stop_bucket(bucket_key, answer)
        elif outcome is Outcome.TOO_LARGE or outcome is Outcome.INVALID:
            assert batch is not None
            if len(batch) > 1:  # split: find the part the service takes
                store.release(batch)
                policy.split(len(batch))
                return 0.0
            store.ack(batch)  # one event the service will never take: drop it, say so
            tally.refused_one(answer, batch.events[0][0], counted=store is self.store,
                              others_went=policy.split_limit is not None and policy.split_took)
        elif outcome is Outcome.BUCKET_REMOVED:
            # say so first: whoever sees the stopped state finds the notice waiting
            self.markers.said[bucket_key] = tally.error(f"bucket {bucket_key}: {answer.detail}",
                                                      REMEDIES[outcome])
            policy.stop_bucket(bucket_key, answer)
        else:  # the monthly cap reached: the whole account
            self.markers.said[None] = tally.error(answer.detail, REMEDIES[outcome])
            policy.halt_cap(answer, now)
        self._check_markers()
        return 0.0

    # ---------------------------------------------------------------- control
    def send_when_full(self) -> None:
        """use_async=False, log()'s part in the caller, as ISStreamer's synchronous mode:
        once a batch is full, send it in one request, after its new bucket's creation. The
        pace alone may make it wait first, at most 1/max_requests_per_second, so a loop of
        log() calls keeps up. A backoff, the rate limit or a stop only store what is queued:
        a later log() or flush() sends it."""
        size = self._settings.batch_size
        queued = len(self.queue)
        if queued + self.tally.pending < size or (queued < size and self.holding()):
            return
        for _ in range(2):  # a new bucket's creation, then the batch
            pace = self.pace_wait()
            if pace > 0:
                self.clock.sleep(pace)
            created = len(self._created)
            self.step()  # holding for a backoff, the rate limit or a stop: it only stores
            if len(self._created) == created:  # the batch went, or could not: done
                return

    def waiting(self) -> int:
        """Events accepted and not yet acknowledged: in the queue and in the store."""
        return self.drainer.queued_events() + max(0, self.tally.pending)

    def store_pending(self) -> int | None:
        """Events of this access key that wait in the store now, whoever sends them, other
        processes sharing the spool too; None when it cannot be read at once."""
        try:
            return self.store.pending()
        except Exception:  # held, closed or failed: the sender meets it and says it
            return None

    def fork_locks(self) -> list[Any]:
        """The locks a fork must not split: the drain's and the store's."""
        return [self.drainer.lock, *self.store.fork_locks()]

    def rekey(self, switch: Callable[[], None]) -> None:
        """The user replaces the access key: `switch` moves the store and the transport to
        it. A refusal of the old key answered meanwhile either stops delivery first, and
        this resumes it, or finds the key replaced, and the request goes out again."""
        with self._key_lock:
            switch()
            self._key_generation += 1
        self.resume()

    def resume(self) -> None:
        """Try again after the user fixed what stopped delivery: a new key, a new bucket."""
        self.policy.resume()
        self.wake.set()

    def reset_after_fork(self, store: Store, transport: Transport) -> None:
        self.transport = transport
        self.drainer.reset_after_fork(store, self.current_bucket())
        self.signals.reset_after_fork()
        self._key_lock = threading.Lock()
        self.wake = self.drainer.wake = threading.Event()
        self.keeper = self._new_keeper()
        self.markers.waiting.clear()  # the parent's flushes
        self.pipeline.reset_after_fork()
        self.tally.reset_after_fork(store.pending())

    def _check_markers(self) -> None:
        self.markers.check(self.store)

    # ---------------------------------------------------------------- reading
    def state(self) -> tuple[State, str, str, float | None, str]:
        """(state, reason, remedy, until, stop code) as of now."""
        return self.policy.state(self.clock.monotonic(),
                                 backlog=self.tally.pending > 0 or bool(self.queue),
                                 bucket_key=self.current_bucket().key)

    def fill(self, **common: Any) -> Stats:
        """A snapshot; `common` carries what the streamer owns: bucket, offline, ..."""
        state, reason, remedy, until, stop = self.state()
        signals = self.signals.stats()
        tally, timing = self.tally, self.policy.timing
        with tally.lock:
            waiting = max(0, tally.pending - tally.in_flight)
            return Stats(
                state=common.pop("state", state), reason=common.pop("reason", reason),
                stop=common.pop("stop", stop),
                remedy=common.pop("remedy", (remedy or tally.last_remedy)
                                  if state is not State.ONLINE else ""),
                until=until,
                queued=self.drainer.queued_events() + waiting + tally.left_count,
                in_flight=tally.in_flight, spooled=waiting if self.store.path else 0,
                sent=tally.sent, requests=tally.requests, retries=tally.retries,
                refused=tally.refused + common.pop("refused_at_log"), dropped=tally.dropped,
                events_per_second=tally.events_per_second(), budget=self.policy.budget,
                last_error=tally.last_error, last_error_at=tally.last_error_at,
                signals=signals, sending_seconds=timing["sending"],
                waited_service=timing["service"], waited_backoff=timing["backoff"],
                waited_pace=timing["pace"], **common)
