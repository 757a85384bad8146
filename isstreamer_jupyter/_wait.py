"""Waiting for delivery: as long as it progresses, with a progress bar, ended by Ctrl-C.

A wait ends when its marker is reached, when no event has been acknowledged for `stall`
seconds, when its total `bound` runs out, when the streamer is closed meanwhile, or on Ctrl-C.
Waiting at the service's pace is no stall: the service's answer that holds delivery
(Retry-After, a spent rate window) restarts the stall clock, and while the hold has no more
than `stall` seconds left the clock waits too. A hold longer than that is a stall once
`stall` seconds of it have passed.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from . import _config
from ._config import hidden, redacted
from ._errors import ConfigError
from ._progress import SHOW_AFTER, Bar
from ._progress import wanted as progress_wanted
from ._report import SEND_COMMAND, STOP_CODES, RunEnd
from ._sender import Bucket, Clock, Marker, Sender
from ._spool import ADOPT_ALL, SqliteSpool
from ._transport import HttpTransport

#: how often a wait looks at the sender
POLL = 0.1
#: every how many looks it counts what waits in the store for every process
SHARED_EVERY = 5
#: how long a stop waits for the sender thread to end (past a request under way, if any)
STOP_WAIT = 1.0
logger = logging.getLogger("isstreamer_jupyter")


class Ended(enum.Enum):
    """Why a wait ended before its marker was reached."""

    DONE = "done"
    BOUND = "bound"
    STALL = "stall"
    CLOSED = "closed"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class Waited:
    ended: Ended
    seconds: float
    delivered: int  # events this sender had acknowledged meanwhile


def wait_delivered(sender: Sender, marker: Marker, *, bound: float = math.inf,
                   stall: float = math.inf, bar: Bar | None = None,
                   closed: Callable[[], bool] = lambda: False) -> Waited:
    """Wait for `marker` while delivery progresses; see the module's docstring."""
    started = progress_at = time.monotonic()
    sent_before = last_sent = sender.sent
    total = last_waiting = sender.waiting()
    shared = sender.store_pending()
    last_hold = 0.0
    polls = 0
    ended = Ended.DONE
    try:
        while not marker.done.wait(POLL):
            now = time.monotonic()
            sent, waiting = sender.sent, sender.waiting()
            if sent != last_sent or waiting < last_waiting:
                progress_at = now
            last_sent, last_waiting = sent, waiting
            polls += 1
            if polls % SHARED_EVERY == 0:  # (another process sending this key's events)
                now_shared = sender.store_pending()
                if shared is not None and now_shared is not None and now_shared < shared:
                    progress_at = now
                shared = now_shared
            hold = sender.service_wait()
            if hold > last_hold + POLL or 0 < hold <= stall:  # (a new hold is an answer too)
                progress_at = now
            last_hold = hold
            if bar is not None and now - started >= SHOW_AFTER:
                done = sent - sent_before
                total = max(total, done + waiting)
                bar.show(done, total)
            if now - started >= bound:
                ended = Ended.BOUND
            elif now - progress_at >= stall:
                ended = Ended.STALL
            elif closed():
                ended = Ended.CLOSED
            if ended is not Ended.DONE:
                break
    except KeyboardInterrupt:
        ended = Ended.INTERRUPTED
    if ended is not Ended.DONE and marker.done.is_set():
        ended = Ended.DONE
    return Waited(ended, time.monotonic() - started, sender.sent - sent_before)


def send_spooled(*, access_key: str | None = None, api_base: str | None = None,
                 spool_dir: str | None = None,
                 ini_file_location: str | os.PathLike[str] | None = None,
                 progress: bool | None = None, timeout: float | None = None,
                 given_as: Mapping[str, str] | None = None) -> RunEnd:
    """Send what waits in the spool for the configured access key and API base, as a
    Streamer's close() would: paced, while delivery progresses, beside live streamers (the
    spool's leases send nothing twice). Settings resolve as Streamer's do (`given_as` as
    there). An explicit `timeout` is a total bound. Ctrl-C ends it: the report then says
    ``interrupted``. It adopts what a refused access key left for this API base."""
    settings = _config.resolve(
        {"access_key": hidden(access_key), "api_base": api_base, "spool_dir": spool_dir,
         "progress": progress}, given_as=given_as, ini_file_location=ini_file_location)
    key = settings.access_key
    if not key:
        raise ConfigError("no access key: set IS_ACCESS_KEY, or access_key in isstreamer.ini, "
                          "to the key the events were logged with")
    started = time.monotonic()
    store = SqliteSpool(settings.spool_dir or None, api_base=settings.api_base, access_key=key,
                        adopt_bucket=ADOPT_ALL, max_bytes=settings.spool_max_bytes,
                        lease_seconds=settings.timeout + 30)
    first = store.take(1)
    if first is None:  # (nothing waits, or all of it is being sent by live streamers)
        waiting = store.pending()
        store.close()
        why = "being sent by another process" if waiting else ""
        return RunEnd("spool send", waiting=waiting, why=why, where=store.path,
                      heir="it sends them" if waiting else "")
    store.release(first)
    bucket = Bucket(first.bucket_name, first.bucket_key)
    sender = Sender(queue=deque(), store=store,
                    transport=HttpTransport(settings.api_base, key, timeout=settings.timeout),
                    settings=settings, clock=Clock(), notify=_log,
                    current_bucket=lambda: bucket, redact=lambda text: redacted(text, key))
    marker = Marker()
    sender.queue_mark(marker)
    sender.start()
    bar = Bar("isstreamer_jupyter: spool send") if progress_wanted(settings.progress) else None
    bound = math.inf if timeout is None else timeout
    waited = wait_delivered(sender, marker, bound=bound, stall=settings.flush_timeout, bar=bar)
    if bar is not None:
        bar.close()
    interrupted = waited.ended is Ended.INTERRUPTED
    sender.stop(STOP_WAIT if interrupted else settings.timeout + STOP_WAIT)
    left = sender.waiting()
    state = sender.state()
    stop = marker.error
    why = ""
    if left:
        reason = f" ({state[1]}; fix: {state[2]})" if state[1] else ""
        why = {Ended.INTERRUPTED: "not delivered: the wait was interrupted",
               Ended.BOUND: f"still waiting after {bound:g} s{reason}",
               Ended.STALL: (f"not delivered: none acknowledged for "
                             f"{settings.flush_timeout:g} s{reason}")}.get(
                   waited.ended, "not delivered")
    return RunEnd("spool send", delivered=waited.delivered, waiting=left, why=why,
                  where=store.path if left else "",
                  heir=f"run `{SEND_COMMAND}` again once the service takes them",
                  stopped=str(stop) if stop is not None else "",
                  stop=STOP_CODES.get(type(stop), "") if stop is not None else "",
                  interrupted=interrupted, seconds=time.monotonic() - started)


def _log(level: int, message: str) -> None:
    logger.log(level, message)
