"""The public :class:`Streamer`: ISStreamer's API (both eras), lifecycle and stats."""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import datetime as _dt
import logging
import math
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from . import _config
from ._config import (
    BY_NAME,
    MASK,
    Settings,
    check_bucket,
    derive_bucket_key,
    hidden,
    offline_file_problem,
    redacted,
    unusable,
)
from ._errors import (
    ConfigError,
    DeliveryError,
    RefusedValue,
    SpoolError,
    StreamerClosed,
    counted,
)
from ._errors import warn as _warn
from ._events import (
    EPOCH_MIN_AGE,
    INT_SAFE_BITS,
    KEY_WARN,
    check_key,
    coerce_epoch,
    coerce_value,
    iter_items,
)
from ._progress import Bar
from ._progress import wanted as progress_wanted
from ._report import HEIR, HEIR_REFUSED, STOP_CODES, RunEnd, error_for, render
from ._sender import Bucket, Clock, Marker, Sender
from ._spool import SEGMENT_EVENTS, MemoryStore, SqliteSpool, Store
from ._stats import State, Stats, waiting_words
from ._transport import CsvTransport, HttpTransport, Transport
from ._wait import STOP_WAIT, Ended, wait_delivered

if TYPE_CHECKING:
    from ._offline import UploadSummary

#: how long flush() waits past its bound for the sender to reach its marker when nothing waits
MARKER_GRACE = 0.25
logger = logging.getLogger("isstreamer_jupyter")
logger.addHandler(logging.NullHandler())  # a library shows nothing unless the app asks
_time = time.time
#: epochs above this (as of import) need no checking on log()'s fast path
_EPOCH_FLOOR = time.time() - EPOCH_MIN_AGE + 86400


class _Hooks(NamedTuple):
    """A live streamer's part in the exit and fork hooks, held weakly."""

    at_exit: weakref.WeakMethod[Callable[[bool], None]]
    after_fork: weakref.WeakMethod[Callable[[], None]]
    fork_locks: weakref.WeakMethod[Callable[[], list[Any]]]


_live: weakref.WeakKeyDictionary[Streamer, _Hooks] = weakref.WeakKeyDictionary()
#: set when Ctrl-C ended the script, or the exit hook's wait: the exit hook then waits for
#: nothing more
_interrupted = threading.Event()
RING_SIZE = 500
OFFLINE_REMEDY = ("to stream, set IS_ACCESS_KEY (or access_key=... / isstreamer.ini); upload "
                  "what was recorded with Streamer.upload(path) or `python -m isstreamer_jupyter "
                  "upload FILE`")


class Streamer:
    """Streams events to an Initial State bucket from a background thread.

    A drop-in for ``ISStreamer.Streamer.Streamer``: same positional arguments, same methods,
    same attributes; plus the seed README's ``bucket=``/``client_key=``/``new_bucket()`` and
    keyword-only settings (see the manual's settings page). ``log()`` costs about a
    microsecond and never waits on the network; ``flush()`` and ``close()`` wait, within a
    bound. With no access key anywhere it records to a local CSV file instead.

    ``given_as`` is for a front end that passes its user's values on as keyword settings (the
    command line, the magics): by setting, what its user wrote (``{"offline": "--online"}``),
    which messages then name instead of "keyword argument".
    """

    def __init__(
        self,
        bucket_name: str = "",
        bucket_key: str = "",
        access_key: str = "",
        ini_file_location: str | os.PathLike[str] | None = None,
        debug_level: int | None = None,
        buffer_size: int | None = None,
        offline: bool | None = None,
        use_async: bool = True,
        *,
        bucket: str | None = None,
        client_key: str | None = None,
        api_base: str | None = None,
        batch_size: int | None = None,
        flush_interval: float | None = None,
        max_requests_per_second: float | None = None,
        max_queue: int | None = None,
        timeout: float | None = None,
        flush_timeout: float | None = None,
        exit_timeout: float | None = None,
        progress: bool | None = None,
        offline_file: str | None = None,
        spool: bool | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        spool_interval: float | None = None,
        spool_max_bytes: int | None = None,
        transport: Transport | None = None,
        clock: Clock | None = None,
        given_as: Mapping[str, str] | None = None,
    ) -> None:
        # (first: a verbose traceback shows a frame's arguments as they are when it is shown)
        access_key, client_key = hidden(access_key), hidden(client_key)
        kwargs = {
            "bucket_name": bucket_name or bucket, "bucket_key": bucket_key,
            "access_key": access_key or client_key, "api_base": api_base,
            "debug_level": debug_level, "batch_size": batch_size, "buffer_size": buffer_size,
            "flush_interval": flush_interval, "max_requests_per_second": max_requests_per_second,
            "max_queue": max_queue, "timeout": timeout, "flush_timeout": flush_timeout,
            "exit_timeout": exit_timeout, "progress": progress, "offline": offline,
            "offline_file": offline_file,
            "spool": spool, "spool_dir": os.fspath(spool_dir) if spool_dir else None,
            "spool_interval": spool_interval, "spool_max_bytes": spool_max_bytes,
        }
        settings = _config.resolve(kwargs, given_as=given_as,
                                   ini_file_location=ini_file_location)
        # (a bucket given by its key alone is named by it: ISStreamer sent an empty name)
        name = settings.bucket_name or settings.bucket_key or _config.DEFAULT_BUCKET_NAME
        key = settings.bucket_key or derive_bucket_key(name)
        check_bucket(name, key)
        self.use_async = use_async
        self._bucket = Bucket(name, key)
        self._buckets: list[Bucket] = [self._bucket]
        self._closed = False
        self._closed_ok = True
        self._outcome: RunEnd | None = None
        self._refused_at_log = 0
        #: (dropped, refused) as a flush last reported them
        self._lost_told = (0, 0)
        self._lost_lock = threading.Lock()
        self._warned_long_keys: set[str] = set()
        self._notices: deque[str] = deque(maxlen=20)
        self.ring: deque[tuple[float, int, str]] = deque(maxlen=RING_SIZE)
        self._queue: deque[Any] = deque()
        self._clock = clock or Clock()
        self._custom_transport = transport is not None
        if settings.offline:
            if transport is None and (problem := offline_file_problem(settings.offline_file)):
                raise unusable(settings, "offline_file", problem)
            settings = settings.replace(spool=False, max_requests_per_second=0.0)
        self.settings = settings
        self._spill_at = settings.max_queue
        #: memory's bound: past it log() waits its turn to spill, and drops if it cannot
        self._ceiling = 2 * settings.max_queue
        self._spool_trouble = ""  # why the spool could not be opened, if it could not
        store = self._open_store(settings, key)
        self._sender = Sender(queue=self._queue, store=store,
                              transport=transport or self._make_transport(),
                              settings=self._for_sender(settings), clock=self._clock,
                              notify=self._say,
                              current_bucket=lambda: self._bucket, redact=self.redact)
        self._update_slow()
        if settings.offline and not self._custom_transport:  # say so once, in the caller
            path = self._sender.transport.path  # type: ignore[attr-defined]
            notice = (f"{settings.offline_reason}, so recording locally to {path}; upload it "
                      f"later with: python -m isstreamer_jupyter upload {path}")
            self._say(logging.WARNING, notice)  # (the ring, the panel's log: logging too)
            with contextlib.suppress(OSError, ValueError):  # (a closed or broken stdout)
                print(f"isstreamer_jupyter: {notice}")
        recovered = getattr(store, "recovered", 0)
        if recovered:
            self._say(logging.WARNING, f"resuming {counted(recovered, 'event')} found in the "
                                       f"spool for this access key (left by an earlier process, or "
                                       f"logged by another one using it now); they go out "
                                       f"before new ones")
        if use_async:
            self._sender.start()
        # (last: closed at exit, once it is whole)
        _live[self] = _Hooks(weakref.WeakMethod(self._at_exit),
                             weakref.WeakMethod(self._after_fork),
                             weakref.WeakMethod(self._sender.fork_locks))

    # ---------------------------------------------------------------- construction helpers
    @staticmethod
    def _for_sender(settings: Settings) -> Settings:
        """The settings the sender runs with: recording offline, it appends rows to the file
        at least 500 at a time, whatever batch size was asked for (and still says)."""
        if settings.offline:
            return settings.replace(batch_size=max(settings.batch_size, 500))
        return settings

    def _make_transport(self) -> Transport:
        s = self.settings
        if s.offline:
            return CsvTransport(s.offline_file)
        return HttpTransport(s.api_base, s.access_key, timeout=s.timeout)

    def _open_store(self, s: Settings, bucket_key: str) -> Store:
        if s.spool:
            try:
                spool = SqliteSpool(s.spool_dir or None, api_base=s.api_base,
                                    access_key=s.access_key, adopt_bucket=bucket_key,
                                    max_bytes=s.spool_max_bytes, lease_seconds=s.timeout + 30)
            except SpoolError as exc:
                self._spool_trouble = str(exc)
                self._notice(f"{exc}; going on without a spool (events live in memory only)")
            else:
                if spool.warning:  # (other users can read what is logged: said once)
                    self._say(logging.WARNING, spool.warning)
                    _warn(spool.warning)
                return spool
        return MemoryStore(s.max_queue)

    def _in_memory_why(self) -> str:
        """Why events live in memory only (there is no spool, or no more), in plain words:
        what made the spool unusable, or the setting that turned it off."""
        trouble = self._sender.spool_trouble or self._spool_trouble
        if trouble:
            return f"events live in memory only: {trouble}"
        if self.settings.offline:
            return "recording offline keeps no spool"
        return (f"spool = False from {self.settings.sources.get('spool', _config.KEYWORD)} "
                f"keeps events in memory only")

    @property
    def recovered(self) -> int:
        """Events found in the spool at start, left by an earlier process."""
        return getattr(self._sender.store, "recovered", 0)

    # ---------------------------------------------------------------- logging
    def log(self, key: str, value: Any, epoch: Any = None) -> None:
        """Queue one event; returns at once. The manual's API page says what key and value
        may be."""
        if (not self._slow and type(key) is str and 0 < len(key) <= KEY_WARN and key.isascii()
                and (epoch is None or (type(epoch) is float and _EPOCH_FLOOR < epoch < 1e11))):
            kind = type(value)
            # (an int near or past a 64-bit float's range goes the slow way: refused there)
            if ((kind is float and value - value == 0.0)
                    or (kind is int and value.bit_length() <= INT_SAFE_BITS) or kind is bool
                    or (kind is str and len(value) <= 2000 and value.isascii())):
                queue = self._queue
                queue.append((key, value, epoch or _time()))
                if len(queue) >= self._spill_at:
                    self._overflow()
                return
        self._log_slow(key, value, epoch)

    def _log_slow(self, key: Any, value: Any, epoch: Any) -> None:
        if self._closed:
            raise StreamerClosed("this streamer is closed: create a new Streamer to log more")
        self._show_notices()
        try:
            key = check_key(key)
            value = coerce_value(key, value)
            epoch = _time() if epoch is None else coerce_epoch(key, epoch)
        except RefusedValue as exc:
            self._refuse(exc)
            if self.DebugLevel >= 2:
                raise
            return
        if len(key) > KEY_WARN and key not in self._warned_long_keys:
            self._warned_long_keys.add(key)
            _warn(f"key {key[:40]!r}… is {len(key)} characters: the API reference allows "
                  f"{KEY_WARN}, some accounts 250; shorter keys are safer")
        self._queue.append((key, value, epoch))
        if self.DebugLevel >= 1:
            when = _dt.datetime.fromtimestamp(epoch).isoformat(sep=" ", timespec="milliseconds")
            print(f"{when} {self._bucket.name}: {key} = {value!r}")
        if len(self._queue) >= self._spill_at:
            self._overflow()
        if not self.use_async:
            self._sender.send_when_full()

    def log_object(self, obj: Any, key_prefix: str | None = None, epoch: Any = None) -> None:
        """Log the items of a list, tuple, dict, dataclass, namedtuple, numpy array or pandas
        Series (or an object's properties) as ``<prefix>_<index or name>``, all at one epoch.

        The default prefix is the type's name (``list``, ``dict``, ``Series``...), as
        ISStreamer's (a Series' name may be a row's index label: another on every row);
        ``""`` means none. A tuple key (a MultiIndex label) is joined with
        ``_``, as a 2-d array's indices are (``row_col``). What
        has no items to log (one value, ``None``, a set, an iterator, a DataFrame) is refused
        as log() refuses a value: counted and warned about, raised at ``debug_level >= 2``; so
        is an item that is refused or cannot be read (a property that raises), and the other
        items are logged (at ``debug_level >= 2`` before the first refusal is raised).
        """
        if key_prefix is None:
            prefix = f"{type(obj).__name__}_"
        else:
            prefix = f"{key_prefix}_" if key_prefix else ""
        try:
            items = iter_items(obj)
        except RefusedValue as exc:
            named = f" (key prefix {key_prefix!r})" if key_prefix else ""
            refused = RefusedValue(f"log_object{named}: {exc}")
            self._refuse(refused)
            if self.DebugLevel >= 2:
                raise refused from None
            return
        if epoch is None:
            epoch = _time()
        else:  # once, not per item; if refused, each log() below refuses it with its own key
            with contextlib.suppress(RefusedValue):
                epoch = coerce_epoch(f"{prefix}*", epoch)
        refused: list[RefusedValue] = []
        for name, value in items:
            try:
                self.log(f"{prefix}{name}", value, epoch)
            except RefusedValue as exc:  # (debug_level >= 2: raised once the rest is logged)
                refused.append(exc)
        if len(refused) == 1:
            raise refused[0]
        if refused:
            raise RefusedValue(f"{refused[0]} (and {len(refused) - 1} more: streamer.messages() "
                               f"lists them)") from None

    def _refuse(self, exc: RefusedValue) -> None:
        """A refused key, value, epoch or object: counted (``stats().refused``) and said, and
        shown as a warning below debug_level 2 (at 2 and above the caller raises it)."""
        self._refused_at_log += 1
        self._say(logging.WARNING, f"refused: {exc}")
        if self.DebugLevel < 2:
            _warn(str(exc))

    def _overflow(self) -> None:
        """The in-memory queue reached ``max_queue``: move one segment's worth to the store
        now, in the caller (a millisecond or two of local work: one SQLite transaction, or
        the memory store dropping its oldest and counting them); it happens only when logging
        outpaces the sender thread. Never a wait on the network nor on a spool another
        process holds (the events stay queued, and the next try is a segment later, so log()
        pays for it once a segment). While the sender is draining this does nothing, until
        the queue reaches twice max_queue: then it waits its turn (the sender gives way
        after its segment), and drops the oldest if the spool is held: memory stays bounded.
        """
        stored = True
        with contextlib.suppress(SpoolError):  # the sender meets it too, and leaves the spool
            stored = self._sender.spill(self._ceiling)
        self._spill_at = (self.settings.max_queue if stored
                          else min(len(self._queue) + SEGMENT_EVENTS, self._ceiling))

    # ---------------------------------------------------------------- waiting
    def flush(self, timeout: float | None = None, *, warn: bool = True) -> bool:
        """Wait until every event logged before this call is acknowledged. True if all were;
        False too if events were dropped or refused since the last flush, which it says once.

        By default it waits as long as delivery progresses: it stops once no event has been
        acknowledged for ``flush_timeout`` seconds, at once when delivery is stopped (a
        refused key, the cap, a removed bucket), and on Ctrl-C (the KeyboardInterrupt goes
        on). An explicit `timeout` is a total bound. A wait over a second shows a progress
        bar (the ``progress`` setting). At ``debug_level >= 2`` a failure raises a
        :class:`DeliveryError`; otherwise it is warned about (unless ``warn=False``) and False
        is returned. Unsent events stay queued either way; :attr:`outcome` is the report.
        """
        end, error = self._flush_and_tell(timeout, warn=warn)
        if end.interrupted:
            self._print(render(end))
            raise KeyboardInterrupt
        return error is None

    def flush_report(self, timeout: float | None = None) -> RunEnd:
        """flush() without the telling: its report, for front ends that say it themselves.
        Ctrl-C ends it as it ends flush()."""
        end = self._flush(timeout)
        if end.interrupted:
            raise KeyboardInterrupt
        return end

    @property
    def stopped(self) -> bool:
        """Whether delivery is stopped for the account (a refused key, the monthly cap)."""
        return self._sender.blocked()

    @property
    def outcome(self) -> RunEnd | None:
        """The report of the last flush, close or exit wait; None before the first."""
        return self._outcome

    def _flush_and_tell(self, timeout: float | None, *, warn: bool = True, closing: str = "",
                        told: list[str] | None = None,
                        interrupted: bool = False) -> tuple[RunEnd, DeliveryError | None]:
        """flush(), telling what went wrong. With `told` (at exit) it is put there to be said
        plainly, not warned nor raised. An interrupted wait is the caller's to say."""
        closed = self._closed and not self._sender_alive()
        shown: list[str] = []
        end = self._flush(timeout, closing=closing, shown=shown, interrupted=interrupted)
        error = error_for(end)
        if end.interrupted and told is not None and not end.ok:
            told.append(render(end))
        if error is None or closed or end.interrupted:
            return end, error
        said = str(error)
        if end.waiting and not end.stopped:  # (a stop or a loss the sender said as it came)
            self._say(logging.WARNING, said)
        with contextlib.suppress(ValueError):  # (shown in the report: not again as a notice)
            self._notices.remove(end.stopped)
        if told is not None:
            told.append(said)
        elif self.DebugLevel >= 2:
            raise error
        elif warn and said not in shown:
            _warn(said)
        return end, error

    def _bounds(self, timeout: float | None, closing: str) -> tuple[float, float]:
        """(total bound, stall bound) of a wait: an explicit `timeout` is a total bound;
        by default it waits while delivery progresses."""
        if timeout is not None:
            return _wait_of(closing or "flush", timeout, self.settings.flush_timeout), math.inf
        stall = self.settings.exit_timeout if closing == "at exit" else self.settings.flush_timeout
        return math.inf, stall

    def _flush(self, timeout: float | None, *, closing: str = "",
               shown: list[str] | None = None, interrupted: bool = False) -> RunEnd:
        """flush() without the telling: the report of the wait. `closing`: "close" or
        "at exit", whose report says what becomes of what waits. The notices it shows are
        added to `shown`. `interrupted`: the run was interrupted, so it does not wait."""
        call = closing or "flush"
        if self._closed and not self._sender_alive():
            left = self._sender.waiting() + self._sender.left_behind()
            end = self._report(call, left, "not delivered: the streamer is closed")
            return self._remember(end)
        bound, stall = self._bounds(timeout, closing)
        said = self._show_notices(but=self._loss_to_report())  # (its report says that one)
        if shown is not None:
            shown += said
        marker = Marker()
        self._sender.queue_mark(marker)
        sent_before = self._sender.sent
        started = time.monotonic()
        bar = Bar(f"isstreamer_jupyter: {call}") if progress_wanted(
            self.settings.progress) and not interrupted else None
        next_try, ended, spent = None, Ended.DONE, 0.0
        if interrupted:
            ended = Ended.INTERRUPTED
        elif self.use_async:
            self._sender.wake.set()
            ended = wait_delivered(self._sender, marker, bound=bound, stall=stall, bar=bar,
                                   closed=lambda: self._closed and not self._sender_alive()
                                   ).ended
            if (ended is Ended.BOUND and not marker.done.is_set()
                    and self._sender.waiting() == 0):
                # nothing waits: the sender has only to reach the marker (a 0 s bound), not
                # "0 events still waiting"
                marker.done.wait(MARKER_GRACE)
        else:
            began = self._clock.monotonic()
            try:
                next_try = self._pump(bound, stall, marker)
            except KeyboardInterrupt:
                ended = Ended.INTERRUPTED
            spent = self._clock.monotonic() - began
        seconds = time.monotonic() - started
        if bar is not None:
            bar.close()
        end = self._outcome_of(call, marker, ended, next_try, (seconds, spent), bound, stall)
        end = dataclasses.replace(end, delivered=self._sender.sent - sent_before,
                                  seconds=seconds)
        if bar is not None and bar.shown and end.ok:
            self._print(render(end))
        return self._remember(end)

    def _outcome_of(self, call: str, marker: Marker, ended: Ended, next_try: float | None,
                    took: tuple[float, float], bound: float, stall: float) -> RunEnd:
        """The report of a wait that ended so; `took`: its seconds, and those the caller's
        own sending spent (use_async=False) by the streamer's clock."""
        seconds, spent = took
        stop = marker.error
        if stop is not None:
            # (a flush keeps them queued, as the stop's words say: they need no more words)
            staying = call == "flush"
            return self._report(call, self.stats().pending, "" if staying else "not delivered",
                                staying=staying, stopped=str(stop),
                                stop=STOP_CODES.get(type(stop), ""))
        if not marker.done.is_set() or ended is Ended.INTERRUPTED:
            state = self.stats()
            why = waiting_words(state, self._clock.wall())
            if ended is Ended.INTERRUPTED:
                said = "not delivered: the wait was interrupted"
            elif next_try is not None:  # (it returned before its bound: said so, not "after")
                within = "the wait at exit" if call == "at exit" else f"this {call}"
                limit = min(bound, stall)
                past = f"its {round(limit, 2):g} s bound"
                if spent >= 0.05:  # (it tried a while first: what was left of it)
                    past = f"the {round(limit - spent, 2):g} s left of {past}"
                said = (f"not sent within {within}: {why or f'next try in {next_try:.1f} s'} "
                        f"(past {past})")
            elif ended is Ended.CLOSED:  # (another thread closed it: nothing sends them now)
                said = f"not delivered: the streamer was closed after {seconds:.1f} s"
            elif ended is Ended.STALL:
                said = (f"not delivered: none acknowledged for {round(stall, 2):g} s"
                        + (f" ({why})" if why else ""))
            else:
                said = (f"still waiting after {round(bound, 2):g} s"
                        + (f" ({why})" if why else ""))
            return self._report(call, state.pending, said,
                                interrupted=ended is Ended.INTERRUPTED,
                                staying=not (call != "flush" or ended is Ended.CLOSED))
        behind = self._sender.left_behind()
        if behind:
            return self._report(call, behind, "not delivered: they were in the spool when it "
                                              "failed", where=self._sender.left_path())
        return self._report(call, 0, "")

    def _report(self, call: str, waiting: int, why: str, *, staying: bool = False,
                where: str | None = None, interrupted: bool = False, stopped: str = "",
                stop: str = "") -> RunEnd:
        """A report of `waiting` events and why, with what becomes of them and the losses
        since the last report. `staying`: they stay queued in this live streamer."""
        heir = ""
        if where is None:
            where = self._sender.store.path if waiting and not staying else ""
        if staying:
            heir = ("they stay queued and will be "
                    + ("written" if self.settings.offline else "sent"))
        elif where:
            heir = HEIR_REFUSED if self._sender.key_refused() else HEIR
        elif waiting:
            heir = f"they are lost as it closes ({self._in_memory_why()})"
        dropped, refused, lost_why = self._losses_since_last_report()
        return RunEnd(call=call, waiting=waiting, why=why, where=where, heir=heir,
                      dropped=dropped, refused=refused, lost_why=lost_why, stopped=stopped,
                      stop=stop, interrupted=interrupted)

    def _remember(self, end: RunEnd) -> RunEnd:
        self._outcome = end
        return end

    def _print(self, line: str) -> None:
        """A plain line on stderr: a summary, or what an interrupted wait left."""
        with contextlib.suppress(Exception):  # (a closed or broken stderr)
            print(f"isstreamer_jupyter: {self.redact(line)}", file=sys.stderr, flush=True)

    def _loss_to_report(self) -> str:
        """What the next report will say of the last loss (a flush shows the other notices,
        not this one), or ""."""
        losses = self._sender.losses()
        return losses[-1] if losses else ""

    def _losses_since_last_report(self) -> tuple[int, int, str]:
        """(dropped, refused, what was said of them) since a report last said so. Each loss is
        said once, whichever thread flushes; its notice, if not yet shown, is not shown
        after."""
        sender = self._sender
        with self._lost_lock:
            with sender.lock:
                now = (sender.dropped, sender.refused)
            dropped, refused = (a - b for a, b in zip(now, self._lost_told, strict=True))
            if dropped + refused <= 0:
                return 0, 0, ""
            self._lost_told = now
            said = sender.take_losses()
        for message in said:
            with contextlib.suppress(ValueError):
                self._notices.remove(message)
        why = said[-1] if said else "see streamer.messages()"
        if len(said) > 1:
            why += f" (and {len(said) - 1} more: see streamer.messages())"
        return dropped, refused, why

    def _pump(self, bound: float, stall: float, marker: Marker) -> float | None:
        """use_async=False, flush() and close(): do the sender's work in the caller until
        `marker` is done, `bound` runs out or nothing is acknowledged for `stall` s. If it
        stops because the next try is due past that (a backoff, a rate limit), the seconds
        until then: it does not wait for nothing."""
        sender, clock = self._sender, self._clock
        started = progress_at = clock.monotonic()
        sent = sender.sent
        while True:
            delay = sender.step()
            if marker.done.is_set() or sender.blocked():  # (stopped: nothing would go out)
                return None
            now = clock.monotonic()
            if sender.sent != sent:
                progress_at, sent = now, sender.sent
            deadline = min(started + bound, progress_at + stall)
            if now + delay >= deadline:
                return delay if now < deadline else None
            if delay > 0:
                clock.sleep(delay)

    def close(self, timeout: float | None = None, *, send: bool = True) -> bool:
        """Flush, then stop the sender. It waits as flush() does: while delivery progresses,
        or within an explicit `timeout`; Ctrl-C stops it at once, and the KeyboardInterrupt
        goes on. Idempotent; True if everything was delivered (events dropped or refused
        since the last flush count against it). What is left stays in the spool, for
        ``python -m isstreamer_jupyter spool send`` or the next Streamer. ``send=False``
        sends nothing more."""
        end = self._close(timeout, flush=send)
        if end is not None and end.interrupted:
            raise KeyboardInterrupt
        return self._closed_ok

    def _close(self, timeout: float | None, flush: bool = True, *,
               told: list[str] | None = None, interrupted: bool = False) -> RunEnd | None:
        """close(); with flush=False nothing more is sent (an upload that stopped: what is
        sent after it saved its progress would be sent again by the next run). With `told`
        (at exit) what it would warn is put there instead, to be said plainly. Returns the
        report of its wait (None if it was closed already)."""
        if self._closed:
            return None
        closing = "close" if told is None else "at exit"
        bound_at = time.monotonic() + self._bounds(timeout, closing)[0]
        end: RunEnd | None = None
        error: DeliveryError | None = None
        if flush:
            try:
                end, error = self._flush_and_tell(timeout, told=told, closing=closing,
                                                  interrupted=interrupted)
            except DeliveryError as exc:
                error = exc
                end = exc.outcome if isinstance(exc.outcome, RunEnd) else None
        self._closed_ok = False  # (until the end: a close() that raised is no success)
        self._closed = True
        self._update_slow()
        _live.pop(self, None)
        # a request under way ends within `timeout`: acknowledged, it is not sent again;
        # within an explicit bound, or at once after Ctrl-C, it is left to end on its own
        wait = STOP_WAIT if end is None or end.interrupted else self.settings.timeout + STOP_WAIT
        self._sender.stop(timeout=max(0.1, min(wait, bound_at - time.monotonic())))
        if not self.use_async:
            self._sender.drain()
        left = self._sender.waiting()
        if left and (end is None or left > end.waiting):
            note = render(self._report(closing, left, "not delivered"))
            self._say(logging.WARNING, note)
            if told is not None:
                told.append(note)
            elif end is None or not end.interrupted:
                _warn(note)
        if end is not None and end.interrupted and told is None:
            self._print(render(end))
        if self._sender.thread is None:  # (a thread closes them itself as it ends)
            self._sender.close_resources()
        self._closed_ok = error is None and left == 0 and flush
        if error is not None and told is None and self.DebugLevel >= 2:
            raise error
        return end

    def _sender_alive(self) -> bool:
        thread = self._sender.thread
        return thread is not None and thread.is_alive()

    def __enter__(self) -> Streamer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # (the block's own exception goes on: a delivery error is warned, not raised)
            self.close()
        except DeliveryError as exc:
            _warn(str(exc))

    def upload(self, path: str | os.PathLike[str], bucket_name: str = "", bucket_key: str = "",
               progress: bool = True, timeout: float = 600.0) -> UploadSummary:
        """Upload an offline recording (ours or ISStreamer's CSV) with this streamer's access
        key and API, keeping the original timestamps, within the rate limits. Rows go to the
        given bucket, else to the buckets the file names, else to this streamer's bucket.
        Interrupted and run again, it sends again at most the batch whose answer was cut off.
        Returns a summary."""
        from ._offline import upload

        s = self.settings
        return upload(path, bucket_name=bucket_name, bucket_key=bucket_key,
                      fallback=(self.BucketName, self.BucketKey), progress=progress,
                      timeout=timeout, access_key=s.access_key, api_base=s.api_base,
                      batch_size=s.batch_size, max_requests_per_second=s.max_requests_per_second)

    # ---------------------------------------------------------------- buckets
    def set_bucket(self, bucket_name: str = "", bucket_key: str = "", retries: int = 3) -> None:
        """Send the next events to another bucket (created if needed); the old bucket's queued
        events still go out. No key: derived from the name. ``retries`` is accepted for
        ISStreamer compatibility; retrying is the sender's job."""
        del retries
        name = bucket_name or bucket_key or _config.DEFAULT_BUCKET_NAME
        key = bucket_key or derive_bucket_key(name)
        check_bucket(name, key)
        bucket = Bucket(name, key)
        if bucket not in self._buckets:
            self._buckets.append(bucket)
        self._bucket = bucket
        self._sender.queue_mark(bucket)  # the events logged from now on go to it
        self._say(logging.INFO, f"switched to bucket {name!r} ({key})")
        self._sender.wake.set()

    def new_bucket(self, bucket_name: str) -> None:
        """The seed README's name for :meth:`set_bucket`."""
        self.set_bucket(bucket_name)

    # ---------------------------------------------------------------- reading
    def stats(self) -> Stats:
        """A frozen snapshot of delivery; the panel is built on this alone."""
        common: dict[str, Any] = {
            "bucket_name": self._bucket.name, "bucket_key": self._bucket.key,
            "buckets": tuple((b.name, b.key) for b in self._buckets),
            "logged": self._sender.drained + self._sender.queued_events(),
            "recovered": self.recovered, "debug_level": self.DebugLevel,
            "offline_file": str(getattr(self._sender.transport, "path", "")),
            "spool_path": self._sender.store.path,
            "refused_at_log": self._refused_at_log,
        }
        if not self.settings.offline:
            common["offline_file"] = ""
        if self._closed:
            common["state"], common["reason"], common["stop"] = State.STOPPED, "closed", "closed"
        elif self.settings.offline and self._sender.state()[0] is not State.BACKING_OFF:
            # (backing off, the file cannot be written: that state says why, and the fix)
            common["state"], common["reason"] = State.OFFLINE, self.settings.offline_reason
            common["remedy"], common["stop"] = OFFLINE_REMEDY, ""
        return self._sender.fill(**common)

    def panel(self) -> Any:
        """The live ipywidgets panel of this streamer (display it, or leave it as the last
        expression of a cell). Needs ipywidgets; see :mod:`isstreamer_jupyter._panel`."""
        from ._panel import Panel

        return Panel(self)

    def _ipython_display_(self) -> None:
        """Displaying a Streamer shows its panel (a text status where widgets cannot show)."""
        from ._panel import show

        show(self)

    def __repr__(self) -> str:
        s = self.stats()
        return (f"<Streamer bucket={s.bucket_name!r} key={s.bucket_key!r} "
                f"state={s.state.value!r} queued={s.queued} sent={s.sent}>")

    def messages(self, level: int = logging.INFO) -> list[str]:
        """The recent messages (the debug ring), oldest first, at `level` or above."""
        return [f"{_dt.datetime.fromtimestamp(t).strftime('%H:%M:%S')} "
                f"{logging.getLevelName(lv)} {m}" for t, lv, m in list(self.ring) if lv >= level]

    # ---------------------------------------------------------------- ISStreamer's attributes
    @property
    def BucketName(self) -> str:  # noqa: N802 - ISStreamer's attribute names
        return self._bucket.name

    @property
    def BucketKey(self) -> str:  # noqa: N802
        return self._bucket.key

    @property
    def AccessKey(self) -> str:  # noqa: N802
        """Masked: the access key is never shown. Assign to fix a refused key."""
        return MASK if self.settings.access_key else ""

    @AccessKey.setter
    def AccessKey(self, access_key: str) -> None:  # noqa: N802
        access_key = hidden(access_key)
        if self.settings.offline or self._custom_transport:
            raise ConfigError("this streamer records offline; create a new Streamer with "
                              "access_key=... to stream")
        if self._closed:
            raise StreamerClosed("this streamer is closed: create a new Streamer")
        # (the settings' own rule: stripped, fit for a header; the key is never shown)
        access_key = _checked("access_key", access_key)
        if not access_key:
            raise ConfigError("AccessKey: empty; assign the key from your Initial State account")
        self.settings = self.settings.replace(access_key=access_key)
        store, transport = self._sender.store, self._sender.transport

        def switch() -> None:
            if isinstance(store, SqliteSpool):
                store.rekey(self.settings.api_base, access_key)
            if isinstance(transport, HttpTransport):
                transport.set_access_key(access_key)

        self._sender.rekey(switch)
        # (the old key's refusal, not yet shown, is no longer news: the next flush said it
        # while returning True)
        kept = [m for m in self._notices if "refused the access key" not in m]
        self._notices.clear()
        self._notices.extend(kept)
        self._say(logging.INFO, "access key replaced; resuming delivery")

    @property
    def DebugLevel(self) -> int:  # noqa: N802
        return self.settings.debug_level

    @DebugLevel.setter
    def DebugLevel(self, level: int) -> None:  # noqa: N802
        self.settings = self.settings.replace(debug_level=_checked("debug_level", level))
        self._sender.settings = self._for_sender(self.settings)
        self._update_slow()

    @property
    def BufferSize(self) -> int:  # noqa: N802
        return self.settings.batch_size

    @BufferSize.setter
    def BufferSize(self, size: int) -> None:  # noqa: N802
        self.settings = self.settings.replace(batch_size=_checked("batch_size", size))
        self._sender.settings = self._for_sender(self.settings)

    @property
    def Offline(self) -> bool:  # noqa: N802
        return self.settings.offline

    @property
    def IsClosed(self) -> bool:  # noqa: N802
        return self._closed

    # ---------------------------------------------------------------- messages
    def _say(self, level: int, message: str) -> None:
        """Every message goes here: redacted, into the ring and `logging`; never printed."""
        settings = getattr(self, "settings", None)
        message = self.redact(message)
        debug = settings.debug_level if settings else 0
        if level >= (logging.DEBUG if debug >= 3 else logging.INFO if debug else logging.WARNING):
            self.ring.append((_time(), level, message))
        logger.log(level, message)
        if level >= logging.ERROR:
            self._notice(message)

    def redact(self, message: str) -> str:
        """`message` with this streamer's access key masked."""
        settings = getattr(self, "settings", None)
        return redacted(message, settings.access_key if settings else "")

    def _notice(self, message: str) -> None:
        """Shown to the user in their own thread, at the next log()/flush() call."""
        if message not in self._notices:
            self._notices.append(message)
        self._slow = True

    def _show_notices(self, but: str = "") -> list[str]:
        """Show the notices waiting, but `but` (left waiting); returns those shown."""
        shown = []
        kept = [but] if but and but in self._notices else []
        while True:
            try:  # (another thread, the panel's flush, may take the last one meanwhile)
                message = self._notices.popleft()
            except IndexError:
                break
            if message in kept:
                continue
            _warn(message)
            shown.append(message)
        self._notices.extend(kept)
        self._update_slow()
        return shown

    def _update_slow(self) -> None:
        self._slow = (self._closed or self.settings.debug_level >= 1 or not self.use_async
                      or bool(self._notices))

    # ---------------------------------------------------------------- fork and exit
    def _after_fork(self) -> None:
        try:
            self._reset_after_fork()
        except Exception as exc:  # never break the fork; say what happened
            self._say(logging.ERROR, f"after fork: {exc}")

    def _reset_after_fork(self) -> None:
        self._lost_lock = threading.Lock()  # (a parent's thread may have held it)
        self._queue.clear()  # the parent sends what it had queued
        store = self._sender.store
        transport = self._sender.transport
        if not self._custom_transport:
            transport = self._make_transport()
        try:
            if not isinstance(store, SqliteSpool):
                raise SpoolError("")  # the parent's memory is the parent's: start empty
            store.reopen()
            self._sender.reset_after_fork(store, transport)
        except SpoolError as exc:
            if str(exc):
                self._say(logging.ERROR, f"{exc}; the child goes on without the spool")
            self._sender.reset_after_fork(MemoryStore(self.settings.max_queue), transport)
        if self.use_async and not self._closed:
            self._sender.start()

    def _at_exit(self, interrupted: bool) -> None:
        """Close, waiting while delivery progresses (none after Ctrl-C), and say what is left
        once, as plain lines on stderr: a warning here would point into this package, and no
        cell follows."""
        # (not shown yet: no log() or flush() follows; the last loss is left for the
        # report to say, or, if it does not come to it, said after it as a notice)
        loss = self._loss_to_report()
        told = [message for message in self._notices if message != loss]
        held = loss in self._notices
        self._notices.clear()
        if held:
            self._notices.append(loss)
        with contextlib.suppress(Exception):
            self._close(None, told=told, interrupted=interrupted)
        told += self._notices
        lines = list(dict.fromkeys(told))
        for line in lines:  # (a notice the report repeats is said by the report)
            if not any(line != other and line in other for other in lines):
                self._print(line)


def _wait_of(call: str, timeout: Any, default: float) -> float:
    """The seconds `call` (flush, close) may wait: `timeout`, or `default` for None; inf is
    no bound. NaN, a negative number or what is no number is refused, saying what to give."""
    if timeout is None:
        return default
    try:  # (text, "3", or a bool, True, is no number of seconds, though float() takes it)
        seconds = math.nan if isinstance(timeout, str | bytes | bool) else float(timeout)
    except (TypeError, ValueError):
        seconds = math.nan
    if not seconds >= 0:  # (NaN too)
        raise ConfigError(
            f"{call}(timeout={timeout!r}): expected a number of seconds, 0 or more. Fix: give "
            f"one (float('inf') waits until delivered), or None for flush_timeout "
            f"({default:g} s)")
    return seconds


def _checked(name: str, value: Any) -> Any:
    """An attribute's new value, by its setting's rule (the constructor's); a secret's value
    is never shown."""
    setting = BY_NAME[name]
    if setting.secret and not isinstance(value, str):  # (str() of b"k" is "b'k'")
        raise ConfigError(f"{name} = (hidden): expected a string, not {type(value).__name__}")
    try:
        text = str(value)
    except ValueError:  # (an int past 4300 digits cannot be written)
        raise ConfigError(f"{name}: that number is far out of range") from None
    if setting.secret:
        text = hidden(text)
    try:
        return setting.parse(text)
    except ValueError as exc:
        shown = "(hidden)" if setting.secret else text[:40]
        raise ConfigError(f"{name} = {shown}: {exc}") from None


def _close_all_at_exit() -> None:
    """Close every live streamer. After Ctrl-C (in a wait, or the script's own) none waits,
    and a Ctrl-C during a wait ends it."""
    if isinstance(_ended_by(), KeyboardInterrupt):
        _interrupted.set()
    for hooks in list(_live.values()):
        at_exit = hooks.at_exit()
        if at_exit is None:
            continue
        try:
            at_exit(_interrupted.is_set())
        except KeyboardInterrupt:
            _interrupted.set()


def _ended_by() -> BaseException | None:
    """The exception that ended the script, if one did. IPython keeps the last cell's error
    there too, which ends nothing."""
    shell = sys.modules.get("IPython")
    if shell is not None and shell.get_ipython() is not None:
        return None
    return getattr(sys, "last_value", None)


_fork_held: list[Any] = []


def _before_fork() -> None:
    """Fork between transactions: hold each streamer's drain and spool locks (briefly, with a
    bound) so the child never inherits a connection in the middle of one."""
    for hooks in list(_live.values()):
        fork_locks = hooks.fork_locks()
        for lock in fork_locks() if fork_locks is not None else ():
            if lock.acquire(timeout=2):
                _fork_held.append(lock)


def _after_fork_in_parent() -> None:
    while _fork_held:
        _fork_held.pop().release()


def _after_fork_in_child() -> None:
    _fork_held.clear()  # the child makes new locks
    for hooks in list(_live.values()):
        after_fork = hooks.after_fork()
        if after_fork is not None:
            after_fork()


atexit.register(_close_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)
