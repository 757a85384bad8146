"""The core with a fake transport and a fake clock: batching, pacing, backoff, order, answers.

Streamers here run with ``use_async=False``: the sender's work happens in the caller, and the
fake clock moves only when the sender waits, so every timing is exact and nothing sleeps.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import sys
import threading
import time
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from isstreamer_jupyter import (
    AccessDenied,
    BucketRemoved,
    ConfigError,
    EventsLost,
    FlushTimeout,
    IsStreamerWarning,
    RefusedValue,
    State,
    Streamer,
    StreamerClosed,
)
from isstreamer_jupyter._errors import counted
from isstreamer_jupyter._sender import BACKOFF_CAP, CAP_PROBE_INTERVAL, RESET_WAIT_CAP, Clock
from isstreamer_jupyter._stats import status_text
from isstreamer_jupyter.testing import (
    Answer,
    FakeClock,
    FakeTransport,
    Outcome,
    RateBudget,
    answer,
)

KEY = "ist_unit_test_secret_key_0123456789"


@pytest.fixture(autouse=True)
def _quiet_env(no_settings):
    """Every test here: no setting from the environment or an ini file (see conftest)."""


def make(script=(), **kw):
    transport = FakeTransport(script)
    clock = FakeClock()
    options = {"bucket_name": "Unit", "access_key": KEY, "spool": False, "use_async": False,
               "transport": transport, "clock": clock, "max_requests_per_second": 0}
    options.update(kw)
    return Streamer(**options), transport, clock


def run_for(streamer, clock, seconds):
    """Let the sender work for `seconds` of fake time."""
    end = clock.now + seconds
    while clock.now < end:
        delay = streamer._sender.step()
        clock.advance(min(max(delay, 0.01), end - clock.now))


def test_bucket_created_first_then_batches_in_order():
    s, t, _ = make(batch_size=10)
    for i in range(25):
        s.log("n", i)
    assert s.flush()
    kinds = [c[0] for c in t.calls]
    assert kinds == ["bucket", "events", "events", "events"]
    assert [len(c[2]) for c in t.requests()] == [10, 10, 5]
    assert [e["value"] for e in t.events()] == list(range(25))
    assert t.buckets == {s.BucketKey: "Unit"}


def test_time_based_flush_sends_a_slow_loggers_events():
    s, t, clock = make(batch_size=10, flush_interval=1.0, spool_interval=0.2)
    s.log("slow", 1)
    run_for(s, clock, 0.5)
    assert t.events() == []  # waiting for a fuller batch
    run_for(s, clock, 0.6)
    assert [e["value"] for e in t.events()] == [1]


def test_pacing_spaces_requests():
    s, t, clock = make(batch_size=10, max_requests_per_second=3)
    start = clock.now
    for i in range(30):
        s.log("n", i)
    s.flush(timeout=30)
    assert len(t.requests()) == 3
    # four requests (bucket + 3) at 3/s: at least 1 s between the first and the last
    assert clock.now - start >= 1.0 - 1e-9


def test_rate_limit_budget_is_never_overspent():
    wall = FakeClock().wall()
    spent = answer(204, budget=RateBudget(limit=30, remaining=0, reset=wall + 5))
    s, t, clock = make([204, spent, 204], batch_size=1)
    s.log("a", 1)
    s.log("b", 2)  # pumps: bucket, then "a" (budget 0 left) ...
    s.flush()
    times = [c for c in clock.waits if c > 1]
    assert len(t.requests()) == 2
    assert sum(times) >= 4.9  # waited for the reset before spending more


def test_waiting_for_the_rate_limit_window_is_said_not_online():
    """stats() said 'online' while the sender waited up to a whole window for the budget's
    reset, the events queued behind it."""
    wall = FakeClock().wall()
    spent = answer(204, budget=RateBudget(limit=30, remaining=0, reset=wall + 5))
    s, _, _ = make([204, spent, 204], batch_size=1, timeout=1)  # (log() pumps 1 s at most)
    s.log("a", 1)  # (pumps: the bucket, then "a", which spends the last request of the window)
    s.log("b", 2)
    stats = s.stats()
    assert stats.state is State.RATE_LIMITED and stats.until == pytest.approx(wall + 5)
    assert stats.reason == ("the service's rate limit (30 requests a window) is spent until "
                            "the window resets")
    assert s.flush()
    assert s.stats().state is State.ONLINE


def test_a_client_clock_behind_the_services_waits_a_minute_at_most_for_a_reset():
    """X-RateLimit-Reset is the service's clock: one an hour ahead of ours stalled delivery
    for an hour."""
    wall = FakeClock().wall()
    spent = answer(204, budget=RateBudget(limit=30, remaining=0, reset=wall + 3600))
    s, t, clock = make([204, spent, 204], batch_size=1)
    s.log("a", 1)
    start = clock.now
    s.log("b", 2)
    assert s.flush(timeout=120)
    assert len(t.requests()) == 2 and clock.now - start <= RESET_WAIT_CAP + 1


def test_a_proxy_asking_for_credentials_keeps_the_events_and_says_so():
    """A 407 (a proxy's answer) was an invalid batch: split, then each event dropped as
    refused by the service."""
    s, t, _ = make([204, answer(407), answer(407), 204], batch_size=5)
    for i in range(5):
        s.log("a", i)
    assert s.flush(timeout=60)
    said = [m for m in s.messages() if "proxy asks for credentials (407)" in m]
    assert said and "Fix: put them in the proxy setting, HTTPS_PROXY=http://user:password@" \
        "host:port" in said[0]
    assert [e["value"] for e in t.events()] == list(range(5)) and s.stats().refused == 0


def test_retry_after_is_honoured():
    s, t, clock = make([204, answer(429, retry_after=7), 204])
    s.log("a", 1)
    start = clock.now
    assert s.flush(timeout=30)
    assert clock.now - start >= 7
    assert s.stats().retries == 1
    assert [e["value"] for e in t.events()] == [1]


@pytest.mark.parametrize("status", [429, 503])
def test_a_retry_after_of_zero_is_no_retry_storm(status):
    """Retry-After: 0 was taken as the whole wait: a service saying it again and again got
    thousands of requests a second (a reviewer measured 3,454 in 2 s)."""
    s, t, clock = make([204] + [answer(status, retry_after=0)] * 1000 + [204])
    s.log("a", 1)
    s.flush(timeout=60)
    assert len(t.requests()) <= 25  # (backoff: 0.2 s doubling to 20 s, jittered)
    waits = [w for w in clock.waits if w > 0]
    assert waits and waits[-1] >= 2 * waits[0]


def test_backoff_grows_with_full_jitter_and_is_capped():
    script = [204] + [503] * 12 + [204]
    s, t, clock = make(script)
    s.log("a", 1)
    assert s.flush(timeout=3600)
    assert s.stats().retries == 12
    waits = [w for w in clock.waits if w > 0.05]
    assert max(waits) <= BACKOFF_CAP
    assert waits[-1] > waits[0]
    assert t.events() == [{"key": "a", "value": 1, "epoch": t.events()[0]["epoch"]}]


def test_a_request_that_timed_out_is_backing_off_with_its_reason_until_one_is_accepted():
    """Requests that each ran out their timeout (1 s, longer than the first backoffs): the
    state stayed 'connecting' with no reason (the backoff was counted from the request's
    start, so it was over when the request ended), and so did flush()'s message."""
    seen = []

    def times_out(kind, bucket_key, events):
        seen.append(s.stats())  # (as the panel sees it while this request is out)
        clock.advance(1.0)
        return Answer(Outcome.RETRY, None, detail="no answer within 1 s")

    s, _, clock = make([times_out, times_out, 204, 204])
    s.log("a", 1)
    s._sender.step()  # the bucket's creation times out
    stats = s.stats()
    assert (stats.state, stats.reason) == (State.BACKING_OFF, "no answer within 1 s")
    assert stats.until is not None and stats.until > clock.wall()  # (from the answer)
    assert stats.last_error == "no answer within 1 s"  # (the countdown is `until`'s)
    assert any("no answer within 1 s; retrying in" in m for m in s.messages())
    run_for(s, clock, stats.until - clock.wall() + 0.01)  # the retry goes out, times out
    assert (seen[1].state, seen[1].reason, seen[1].until) == (
        State.BACKING_OFF, "no answer within 1 s", None)
    with pytest.warns(UserWarning, match=r"backing off.* no answer within 1 s"):
        assert not s.flush(timeout=0.05)
    assert s.flush(timeout=60) and s.stats().state is State.ONLINE


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 409])
def test_transient_answers_are_retried(status):
    s, t, _ = make([204, status, 204])
    s.log("a", 1)
    assert s.flush(timeout=60)
    assert len(t.events()) == 1


def test_413_splits_the_batch():
    s, t, _ = make([204, 413], batch_size=10)
    for i in range(10):
        s.log("n", i)
    assert s.flush()
    assert [len(c[2]) for c in t.requests()] == [10, 5, 5]
    assert [e["value"] for e in t.events()] == list(range(10))


def test_one_bad_event_is_dropped_the_rest_go_out():
    s, t, _ = make([204] + [_poison] * 20, batch_size=8)
    for i in range(8):
        s.log("n", "poison" if i == 3 else i)
    with pytest.warns(IsStreamerWarning, match=r"1 event was lost .* 1 refused; no other "
                      r"event was lost\): the service refused an event \(key 'n', 400\): "
                      r"INVALID_EVENT: bad value\. Fix: change the value as the service says; "
                      r"this one is dropped, the others go out$"):
        assert not s.flush()  # the rest went out; the one refused is reported, once
    assert [e["value"] for e in t.events()] == [0, 1, 2, 4, 5, 6, 7]
    stats = s.stats()
    assert stats.refused == 1 and "refused an event" in stats.last_error
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (said once: not again as a notice)
        s.log("n", 8)
        assert s.flush()


def _poison(kind, bucket_key, events):
    """The service refuses any request with the value "poison" in it."""
    bad = any(e.get("value") == "poison" for e in events)
    return answer(400, body=b'{"message":{"error":{"type":"INVALID_EVENT","message":'
                            b'"bad value"}}}') if bad else 204


def _said_refusal(said):
    return [str(w.message) for w in said if "INVALID_EVENT" in str(w.message)]


def test_a_refusal_before_the_flush_is_warned_once_by_that_flush():
    """The refusal (made as log() sent the batch) was warned twice by one flush(): as the
    notice it shows first, then again in its 'events were lost' warning."""
    s, _, _ = make([204] + [_poison] * 20, batch_size=1)
    s.log("n", "poison")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert not s.flush()
    refused = _said_refusal(said)
    assert len(refused) == 1, refused
    assert refused[0].startswith("flush: 1 event was lost since the last flush"), refused
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (said once: not again as a notice)
        s.log("n", 1)
        assert s.flush()


def test_a_refusal_in_the_background_is_warned_once_by_the_next_flush():
    s, _, _ = make([204] + [_poison] * 20, batch_size=1, use_async=True, clock=Clock())
    s.log("n", "poison")
    deadline = time.monotonic() + 5
    while not s._notices and time.monotonic() < deadline:  # refused, not yet said
        time.sleep(0.01)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert not s.flush(5)
    refused = _said_refusal(said)
    assert len(refused) == 1, refused
    s.close(5)


def test_a_refusal_is_one_line_at_exit_saying_at_exit(capsys):
    """At exit the refusal was two lines: its notice, then the report, which began 'flush:'."""
    s, _, _ = make([204] + [_poison] * 20, batch_size=1)
    s.log("n", "poison")  # (refused as it is sent; no flush follows)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s._at_exit(False)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("isstreamer_jupyter: at exit: 1 event was lost since the last "
                               "flush (0 dropped, 1 refused"), lines
    assert "INVALID_EVENT: bad value" in lines[0], lines


def _all_refused(refusal, values):
    """Log `values` (one batch) to a service that refuses each request with `refusal`; what
    was said of them."""
    s, t, _ = make([204] + [refusal] * 40, batch_size=len(values))
    for value in values:
        s.log("n", value)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert not s.flush()
    assert s.stats().refused == len(values) and t.events() == []
    # (none was delivered: the report said 'everything else was delivered')
    assert [str(w.message) for w in said if "lost since the last flush" in str(w.message)]
    assert not [w for w in said if "delivered" in str(w.message)], [str(w.message) for w in said]
    return "\n".join(s.messages())


@pytest.mark.parametrize("body", [
    b"Bad Request",
    b'{"message":{"error":"INVALID_BUCKET_KEY: bucket key is not valid"}}',
    b'{"message":{"error":{"type":"INVALID_BUCKET","message":"the key is wrong"}}}',
])
def test_a_400_for_every_event_not_of_the_event_says_to_check_api_base(body):
    """A service that answers every events request with 400: 'Bad Request' got the fix
    'change the event as the service says; this one is dropped, the others go out' (none
    went out), an INVALID_BUCKET_KEY 'change the key as the service says (a shorter one...)'."""
    text = _all_refused(answer(400, body=body), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    assert text.count("Fix: check api_base (IS_API_BASE) and the bucket key; if they are "
                      "right, please report this with the message") == 10, text
    assert "change the" not in text and "others go out" not in text, text


def test_every_event_of_a_batch_refused_never_says_the_others_go_out():
    text = _all_refused(_poison, ["poison"] * 4)
    assert text.count("Fix: change the value as the service says; this one is dropped, "
                      "the others are tried alone") == 4, text
    assert "others go out" not in text, text


def test_access_denied_stops_keeps_events_and_never_storms():
    s, t, clock = make([204, 401], debug_level=2)
    s.log("a", 1)
    with pytest.raises(AccessDenied) as info:
        s.flush(timeout=5)
    assert "check the access key" in str(info.value)
    calls = len(t.calls)
    run_for(s, clock, 3600)
    assert len(t.calls) == calls  # no retry storm
    st_ = s.stats()
    assert st_.state is State.STOPPED and "refused the access key" in st_.reason
    assert st_.queued == 1 and st_.sent == 0


def test_fixing_the_access_key_resumes_delivery():
    s, t, _ = make([204, 401], debug_level=0)
    s.log("a", 1)
    with pytest.warns(UserWarning, match="access key"):
        assert not s.flush(timeout=5)
    s._custom_transport = False  # the fake stands in for the HTTP transport here
    s.AccessKey = "ist_fixed_key"
    assert s.flush(timeout=5)
    assert [e["value"] for e in t.events()] == [1]
    assert s.AccessKey == "********"


def test_a_late_refusal_of_the_replaced_key_does_not_stop_the_new_one():
    """The user fixes the key while a request with the old one is out: its 401 arrives after
    the fix and must not stop delivery again; the batch goes out with the new key."""
    def fixed_meanwhile(kind, bucket_key, events):
        s.AccessKey = "ist_fixed_key"
        return 401

    s, t, _ = make([204, fixed_meanwhile])
    s._custom_transport = False  # the fake stands in for the HTTP transport here
    s.log("a", 1)
    assert s.flush(timeout=5)
    assert [e["value"] for e in t.events()] == [1]
    assert len(t.requests()) == 2 and s.stats().state is State.ONLINE


def test_a_new_key_set_while_a_refusal_is_being_handled_still_resumes():
    """The user's thread sets the key while the sender is stopping on the old key's 401 (here:
    while it marks the spool): the new key must win, whichever finishes first."""
    s, t, _ = make([204, 401])
    s._custom_transport = False
    store = s._sender.store
    setter = threading.Thread(target=lambda: setattr(s, "AccessKey", "ist_fixed_key"))

    def mark_denied():  # the user acts right now; they wait for the sender, not the reverse
        setter.start()
        setter.join(0.5)

    store.mark_denied = mark_denied
    s.log("a", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s.flush(timeout=5)
    setter.join(5)
    assert not s._sender.blocked()
    assert s.flush(timeout=5)
    assert [e["value"] for e in t.events()] == [1]


def test_cap_reached_stops_then_probes_again():
    s, t, clock = make([204, 402])
    s.log("a", 1)
    with pytest.warns(UserWarning, match="monthly"):
        assert not s.flush(timeout=5)
    assert s.stats().state is State.STOPPED
    run_for(s, clock, CAP_PROBE_INTERVAL + 1)
    assert [e["value"] for e in t.events()] == [1]
    assert s.stats().state is State.ONLINE


@pytest.mark.parametrize("status", [401, 402, 400, 404])
def test_a_stop_is_logged_once_at_its_level_and_warned_once(status, caplog):
    """With a root handler (logging.basicConfig()) a refused key was logged twice: at ERROR
    by the sender, at WARNING by flush(); and close() warned it once more, as a notice."""
    caplog.set_level(logging.DEBUG)  # (the root logger, as basicConfig() sets it up)
    # (400 here is BUCKET_REMOVED on the events; 404 the bucket's creation)
    s, _, _ = make([404] if status == 404 else [204, status])
    with pytest.warns(UserWarning) as said:
        s.log("a", 1)
        assert not s.flush(timeout=5)
        s.log("b", 2)  # (a notice not yet shown would be shown here)
    told = [str(w.message) for w in said]
    assert len(told) == 1, told
    records = [(r.levelno, r.getMessage()) for r in caplog.records if r.levelno >= 30]
    assert records == [(logging.ERROR, told[0].removeprefix("flush: "))]


def test_removed_bucket_stops_that_bucket_only():
    def gone(kind, bucket_key, events):
        return answer(400) if bucket_key == s.BucketKey and kind == "events" else 204

    s, t, _ = make([204, gone], debug_level=2)
    old = s.BucketKey
    s.log("a", 1)
    with pytest.raises(BucketRemoved, match="set_bucket"):
        s.flush(timeout=5)
    assert s.stats().state is State.STOPPED
    s.set_bucket("Fresh")
    s.log("b", 2)
    with pytest.raises(BucketRemoved):  # not everything: the deleted bucket's event waits
        s.flush(timeout=5)
    assert [e["value"] for e in t.events(s.BucketKey)] == [2]
    assert t.events(old) == []
    assert s.stats().queued == 1  # the deleted bucket's event is kept


def test_bucket_switch_keeps_each_buckets_order():
    s, t, _ = make(batch_size=3)
    s.log("x", 1)
    s.set_bucket("Second")
    s.log("x", 2)
    s.new_bucket("Unit")  # the seed README's name; back to the first bucket
    s.log("x", 3)
    s.flush()
    first, second = s.stats().buckets[0][1], s.stats().buckets[1][1]
    assert [e["value"] for e in t.events(first)] == [1, 3]
    assert [e["value"] for e in t.events(second)] == [2]


def test_memory_queue_bound_drops_oldest_and_counts():
    s, _, _ = make([204] + [503] * 1000, max_queue=5, batch_size=100)
    for i in range(12):
        s.log("n", i)
    s._sender.drain()
    assert s.stats().dropped == 7


def test_flush_reports_events_dropped_since_the_last_flush():
    s, t, _ = make(max_queue=5, batch_size=100, debug_level=2)
    for i in range(12):
        s.log("n", i)
    with pytest.raises(EventsLost, match=r"7 events were lost since the last flush \(7 dropped"):
        s.flush()
    assert [e["value"] for e in t.events()] == list(range(7, 12))  # the newest five
    s.log("n", 12)
    assert s.flush()


def test_flush_is_bounded_and_typed():
    s, _, clock = make([204] + [503] * 1000, debug_level=2)
    s.log("a", 1)
    start = clock.now
    # (it tries until the next try is due past its bound, and says so)
    with pytest.raises(FlushTimeout) as raised:
        s.flush(timeout=2)
    spent = clock.now - start
    assert 0.05 <= spent <= 2 + 1e-6
    # (what was left of the bound, not the whole bound: 'next try in 1.1 s (past its 3 s
    # bound)' after 2 s of trying read as a contradiction)
    found = re.fullmatch(r"flush: 1 event not sent within this flush: backing off after the "
                         r"service answered 503, next try in ([0-9.]+) s \(past the ([0-9.]+) s "
                         r"left of its 2 s bound\); they stay queued and will be sent",
                         str(raised.value))
    assert found, str(raised.value)
    next_try, left = map(float, found.groups())
    assert abs(left - (2 - spent)) < 0.01 and next_try > left


@pytest.mark.parametrize("use_async", [False, True])
def test_an_infinite_wait_has_no_bound_and_nan_or_negative_is_refused(use_async):
    """flush(inf), close(inf) and flush_timeout=1e12 raised OverflowError (and the failed
    close left the streamer open); flush(-1) and flush(nan) were taken ('after nan s')."""
    options = {"use_async": use_async}
    if use_async:
        options["clock"] = Clock()
    s, t, _ = make(**options)
    s.log("a", 1)
    assert s.flush(timeout=math.inf)
    for bad in (-1, math.nan, "soon", "3", True):  # (text or a bool is no number of seconds)
        for call in (s.flush, s.close):
            with pytest.raises(ConfigError, match=rf"{call.__name__}\(timeout={bad!r}\): "
                                                  r"expected a number of seconds, 0 or more\. "
                                                  r"Fix: give one \(float\('inf'\) waits"):
                call(timeout=bad)
    assert not s.IsClosed  # (bad input: nothing else happened)
    s.log("a", 2)
    assert s.close(timeout=math.inf) and s.IsClosed
    assert [e["value"] for e in t.events()] == [1, 2]
    s, t, _ = make(flush_timeout=1e12, **options)
    s.log("a", 3)
    assert s.flush() and s.close()


def test_counts_are_said_in_the_singular_for_one():
    """'flush: 1 events still waiting', 'close: 1 events ...', 'dropped the 1 oldest
    events'."""
    assert [counted(n, "event", "wait") for n in (0, 1, 2)] == [
        "0 events wait", "1 event waits", "2 events wait"]
    assert counted(1, "event", "were") == "1 event was" and counted(1, "row") == "1 row"
    s, _, _ = make([204] + [503] * 1000, max_queue=1, batch_size=2)
    with pytest.warns(UserWarning) as said:
        s.log("a", 1)
        s.log("a", 2)  # (the memory queue holds one: the oldest drops)
        s.flush(timeout=1)
        s.close(timeout=1)
    text = "\n".join([str(w.message) for w in said] + s.messages())
    assert "1 event " in text and "dropped the 1 oldest event" in text, text
    assert not re.search(r"\b1 events\b", text), text


def test_at_exit_each_fact_is_one_plain_line(capsys):
    """At exit the close's warning pointed into the package (_streamer.py, at _at_exit), and
    what was left was said again as a line."""
    s, _, _ = make([204, 401])
    s.log("a", 1)
    s._sender.step()  # the bucket; then the key is refused: a notice waits, not yet shown
    s._sender.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s._at_exit(False)
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "isstreamer_jupyter: at exit: the service refused the access key (401). Fix: check the "
        "access key (IS_ACCESS_KEY or access_key=...); set streamer.AccessKey to the right key "
        "to resume: the held events are kept and will be sent; 1 event not delivered; they are "
        "lost as it closes (spool = False from keyword argument keeps events in memory only)"
    ], lines


@pytest.mark.parametrize("interrupted", [False, True])
def test_at_exit_a_streamer_with_nothing_waiting_says_nothing(capsys, tmp_path, interrupted):
    """A streamer with nothing to send said '0 events still waiting after 0 s' when it did not
    wait (the exit after Ctrl-C waits for nothing), as its flush was not reached at once."""
    for _ in range(5):
        s = Streamer(bucket_name="B", offline=True, offline_file=str(tmp_path / "rec.csv"))
        capsys.readouterr()
        s._at_exit(interrupted)
        assert capsys.readouterr().err == ""


def test_log_after_close_is_an_error():
    s, _, _ = make()
    s.log("a", 1)
    assert s.close()
    assert s.close()  # idempotent
    with pytest.raises(StreamerClosed):
        s.log("a", 2)


def test_a_close_that_failed_is_no_success_the_second_time():
    """close() that raised part-way used to leave 'closed' set and the success flag at its
    start value: a second close() then returned True, with nothing delivered."""
    s, _, _ = make([503] * 100)
    s.log("a", 1)

    def broken(timeout):
        raise RuntimeError("the sender could not be stopped")

    s._sender.stop = broken
    with pytest.raises(RuntimeError):
        s.close(timeout=0.1)
    assert s.close() is False


def test_warnings_point_at_the_users_line_however_deep_they_are_raised():
    """close() -> flush() -> ...: its warning showed _streamer.py's line, not the caller's."""
    s, _, _ = make([204] + [503] * 1000)
    s.log("a", 1)
    with pytest.warns(UserWarning) as said:
        s.log("b", None)  # (refused at log())
        s.flush(timeout=1)
        s.close(timeout=1)
    assert len(said) >= 3 and {w.filename for w in said} == {__file__}


def test_flushes_and_bucket_switches_are_not_counted_as_events():
    """While the sender was held up (here in a slow bucket creation), each flush() added one
    to stats().logged and .queued (its marker in the queue): 'N+1 events still waiting'."""
    release = threading.Event()

    def slow_bucket(kind, bucket_key, events):
        release.wait(10)
        return 201

    s, _, _ = make([slow_bucket], use_async=True, clock=Clock())
    try:
        for i in range(20):
            s.log("n", i)
        s.set_bucket("Other")
        with pytest.warns(UserWarning) as said:
            for _ in range(3):
                s.flush(timeout=0.05)
        stats = s.stats()
        assert (stats.logged, stats.queued) == (20, 20)
        assert all("20 events still waiting" in str(w.message) for w in said), said
    finally:
        release.set()
    assert s.close(timeout=5)


@pytest.mark.parametrize("spool", [False, True])
def test_close_says_what_becomes_of_what_it_could_not_deliver(tmp_path, spool):
    """Without a spool, close() said the undelivered events 'stay queued and will be sent',
    and then they were gone."""
    s, _, _ = make([204] + [503] * 1000, spool=spool, spool_dir=tmp_path / "spool")
    s.log("a", 1)
    with pytest.warns(UserWarning) as said:
        assert not s.close(timeout=1)
    text = " ".join(str(w.message) for w in said)
    assert text.startswith("close: 1 event not sent within this close: backing off after "
                           "the service answered 503")
    if spool:
        assert "they wait in the spool" in text and "spool send" in text, text
    else:
        assert ("they are lost as it closes (spool = False from keyword argument keeps events "
                "in memory only)") in text
    assert "will be sent" not in text


def test_close_says_why_events_were_in_memory_only_when_the_spool_was_unusable(tmp_path):
    """With a spool_dir that is a file, close() said 'spool=False keeps events in memory
    only': the user never set spool=False."""
    (tmp_path / "not_a_folder").write_text("")
    with pytest.warns(UserWarning) as said:
        s, _, _ = make([204] + [503] * 1000, spool=True, spool_dir=tmp_path / "not_a_folder")
        s.log("a", 1)
        assert not s.close(timeout=1)
    text = " ".join(str(w.message) for w in said)
    assert "spool=False" not in text and "spool = False" not in text
    assert text.endswith(f"they are lost as it closes (events live in memory only: the spool "
                         f"folder {tmp_path / 'not_a_folder'} cannot be used: it is a file, "
                         f"not a folder)"), text


def _spooled(path):
    import sqlite3

    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT COALESCE(SUM(count - done), 0) FROM segments").fetchone()[0]
    finally:
        db.close()


def test_what_log_queued_reaches_the_spool_after_a_close_during_a_slow_request(tmp_path):
    """close() stopped the spool keeper while the sender still waited in a slow request: what
    log() had queued stayed in memory (close() already said 'in the spool'), and a kill then
    lost it (a reviewer: 500 of 600)."""
    release = threading.Event()

    def slow(kind, bucket_key, events):
        release.wait(60)
        return 204

    s, _, _ = make([204, slow], use_async=True, clock=Clock(), spool=True,
                   spool_dir=tmp_path / "spool", flush_interval=0.1, spool_interval=1.0)
    try:
        for i in range(100):
            s.log("x", i)
        deadline = time.monotonic() + 10
        while s.stats().in_flight == 0:  # (the first batch is out, the service is slow)
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for i in range(500):
            s.log("y", i)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert not s.close(timeout=0.05)
        path, deadline = s._sender.store.path, time.monotonic() + 3
        while _spooled(path) < 600:  # (the keeper goes on while the request is out)
            assert time.monotonic() < deadline, _spooled(path)
            time.sleep(0.02)
    finally:
        release.set()


def test_past_twice_max_queue_log_drops_while_another_connection_holds_the_spool(tmp_path):
    """The sender, waiting for that connection, held the spool's own lock: log() took that
    for this process's moment and dropped nothing, paying 2 ms a call with the queue past
    its bound."""
    import sqlite3

    s, _, _ = make([], use_async=True, clock=Clock(), spool=True, spool_dir=tmp_path / "spool",
                   max_queue=5000, batch_size=100_000, flush_interval=0.5)
    for i in range(100):
        s.log("x", i)
    time.sleep(0.2)
    other = sqlite3.connect(s._sender.store.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # (another process holds the spool's write lock)
    try:
        time.sleep(1.0)  # (the sender's next transaction now waits for it, holding the lock)
        longest = 0
        for i in range(60_000):
            s.log("x", i)
            longest = max(longest, len(s._queue))
        assert s.stats().dropped > 0
        assert longest <= 2 * 5000 + 2000  # (twice max_queue, and a segment)
    finally:
        other.execute("ROLLBACK")
        other.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s.close(timeout=5)


def test_context_manager_flushes():
    transport = FakeTransport()
    with Streamer(access_key=KEY, transport=transport, spool=False,
                  max_requests_per_second=0) as s:
        s.log("a", 1)
    assert s.IsClosed and [e["value"] for e in transport.events()] == [1]


def test_refusals_raise_at_debug_2_and_warn_below():
    s, t, _ = make(debug_level=2)
    with pytest.raises(RefusedValue, match=r"'t'.*NaN"):
        s.log("t", math.nan)
    s.DebugLevel = 0
    with pytest.warns(UserWarning, match="NaN"):
        s.log("t", math.nan)
    with pytest.warns(UserWarning, match="NaN or infinity"):
        s.log("t", math.inf)  # log()'s fast path lets only finite floats through
    with pytest.warns(UserWarning, match="NaN or infinity"):
        s.log("t", -math.inf)
    s.log("t", 1.5)
    s.flush()
    assert [e["value"] for e in t.events()] == [1.5]
    assert s.stats().refused == 4


def test_debug_1_echoes_events(capsys):
    s, _, _ = make(debug_level=1)
    s.log("temp", 21.5)
    out = capsys.readouterr().out
    assert "Unit: temp = 21.5" in out


@pytest.mark.parametrize(("attribute", "value", "words"), [
    ("DebugLevel", 9, "debug_level = 9: expected a whole number from 0 to 3"),
    ("DebugLevel", -1, "from 0 to 3"),
    ("BufferSize", 0, "batch_size = 0: expected a whole number at least 1"),
    pytest.param("BufferSize", 10**5000, "batch_size: that number is far out of range",
                 id="BufferSize-10**5000"),
])
def test_attributes_take_the_constructors_rules(attribute, value, words):
    s, _, _ = make(debug_level=1, batch_size=5)
    with pytest.raises(ConfigError, match=re.escape(words)):
        setattr(s, attribute, value)
    assert (s.DebugLevel, s.BufferSize) == (1, 5)  # unchanged
    setattr(s, attribute, 3)
    assert getattr(s, attribute) == 3


def test_isstreamer_seed_names_and_attributes():
    transport = FakeTransport()
    s = Streamer(bucket="Seed Bucket", client_key=KEY, transport=transport, spool=False,
                 buffer_size=4, use_async=False, clock=FakeClock(), max_requests_per_second=0)
    assert s.BucketName == "Seed Bucket" and s.BufferSize == 4
    assert s.AccessKey == "********" and not s.Offline and s.DebugLevel == 0
    s.log_object({"a": 1, "b": 2})
    s.log_object([5], key_prefix="")
    s.flush()
    assert [(e["key"], e["value"]) for e in transport.events()] == [
        ("dict_a", 1), ("dict_b", 2), ("0", 5)]


def test_use_async_false_ships_full_batches_in_the_caller():
    s, t, _ = make(batch_size=5)
    for i in range(5):
        s.log("n", i)
    assert len(t.events()) == 5  # no flush needed: like ISStreamer's synchronous mode


def test_use_async_false_log_tries_once_when_a_batch_fills_and_never_sleeps():
    """With the service down, log() retried in the caller until `timeout` (a user's 20
    log() calls took 20.7 s, one 6.8 s); flush(3) then returned at once saying 'still
    waiting after 3 s'."""
    s, t, clock = make([204, answer(503, retry_after=14)] + [204] * 100, batch_size=5)
    for i in range(20):
        s.log("p", i)
    assert clock.waits == []  # no sleep in log()
    assert [len(c[2]) for c in t.requests()] == [5]  # one try; then it only queued
    assert s.stats().queued == 20
    with pytest.warns(UserWarning) as said:
        assert not s.flush(timeout=3)
    assert clock.waits == []  # the next try is after its bound: it returned at once
    assert str(said[0].message) == (
        "flush: 20 events not sent within this flush: backing off after the service "
        "answered 503, next try in 14 s (past its 3 s bound); they stay queued and will be "
        "sent")
    clock.advance(14)
    s.log("p", 20)  # the backoff is over: this log() sends one batch, and only one
    assert [len(c[2]) for c in t.requests()] == [5, 5]
    assert s.flush(timeout=30)
    assert [e["value"] for e in t.events()] == list(range(21))



def test_use_async_false_log_keeps_up_with_the_pace_alone():
    """At the default pace (3 requests/s) a loop of log() calls fell behind for good: the
    bucket's creation took the pace's slot, and each later full batch found the pace saying
    wait, so log() only queued (100 logged, 0 delivered; in bursts of 25 every 0.5 s the
    backlog grew by 15 a burst). The pace alone is waited out in log(), as ISStreamer's
    synchronous sends took as long: at most 1/max_requests_per_second, never a backoff."""
    s, t, clock = make(batch_size=10, max_requests_per_second=3)
    for i in range(100):
        s.log("p", i)
    assert len(t.requests("bucket")) == 1
    assert [e["value"] for e in t.events()] == list(range(100))  # no flush() needed
    assert clock.waits and max(clock.waits) <= 1 / 3 + 1e-9

    s, t, clock = make([204, answer(503, retry_after=14)] + [204] * 20, batch_size=5,
                       max_requests_per_second=3)
    for i in range(10):
        s.log("p", i)  # the first batch's try failed: a backoff of 14 s
    waited = list(clock.waits)
    for i in range(10, 20):
        s.log("p", i)  # during the backoff log() only queues: no sleep at all
    assert clock.waits == waited and max(waited) <= 1 / 3 + 1e-9
    assert (len(t.requests()), s.stats().queued) == (1, 20)
    clock.advance(14)
    s.log("p", 20)  # the backoff is over: one batch goes
    assert [e["value"] for e in t.events()] == list(range(5))


def test_the_reason_events_wait_never_holds_the_access_key(capsys):
    """A retry's detail became stats().reason (and so the flush warning, the status text and
    the at-exit line) without the redaction last_error gets: a transport error quoting the
    key showed it there."""
    s, t, _ = make([204], batch_size=1)

    def fails(*args, **kwargs):
        raise RuntimeError(f"state: headers={{'X-IS-AccessKey': {KEY}}}")

    t.post_events = fails
    s.log("a", 1)
    st = s.stats()
    assert st.state is State.BACKING_OFF and "internal error" in st.reason
    with pytest.warns(UserWarning) as said:
        assert not s.flush(timeout=0)
    shown = [st.reason, st.last_error, status_text(s.stats()), *(str(w.message) for w in said)]
    assert all(KEY not in text for text in shown) and "********" in st.reason
    s.close(timeout=0)
    assert KEY not in "".join(capsys.readouterr())


@pytest.mark.parametrize("debug_level", [0, 1, 2, 3])
def test_access_key_never_shown(debug_level, capsys, caplog):
    caplog.set_level(logging.DEBUG, logger="isstreamer_jupyter")
    s, _, _ = make([204, 401], debug_level=debug_level)
    seen = [repr(s), str(s.stats()), repr(s.settings), s.AccessKey]
    s.log("a", 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            s.flush(timeout=3)
        except AccessDenied as exc:
            seen.append(str(exc) + repr(exc))
        try:
            s.log("bad", None)
        except RefusedValue as exc:
            seen.append(str(exc))
    seen += [str(w.message) for w in caught]
    seen += [r.getMessage() for r in caplog.records]
    seen += s.messages(logging.DEBUG)
    seen += [repr(s), str(s.stats())]
    out = capsys.readouterr()
    seen += [out.out, out.err]
    blob = "\n".join(seen)
    assert "refused the access key" in blob  # the 401 was reported...
    assert KEY not in blob  # ...without the key


valid_keys = st.text(min_size=1, max_size=250)
anything = st.one_of(
    st.none(), st.integers(), st.integers(-(2**1100), 2**1100), st.floats(), st.booleans(),
    st.text(max_size=2100),
    st.binary(max_size=5), st.lists(st.integers(), max_size=2), st.decimals(),
    st.datetimes(), st.fractions(),
)
epochs = st.one_of(st.none(), st.floats(), st.integers(), st.text(max_size=30), st.datetimes())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(st.tuples(st.one_of(valid_keys, st.integers(), st.just("")), anything,
                                 epochs), max_size=15))
def test_anything_logged_is_sent_valid_or_counted_refused(events):
    s, t, _ = make(batch_size=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for key, value, epoch in events:
            s.log(key, value, epoch)  # never raises at debug 0
        assert s.flush(timeout=60)
    sent = t.events()
    assert len(sent) + s.stats().refused == len(events)
    for e in sent:
        assert isinstance(e["key"], str) and 0 < len(e["key"]) <= 250
        assert type(e["value"]) in (str, int, float, bool)
        if type(e["value"]) is int:  # a JSON number the service can hold: a 64-bit float
            assert abs(e["value"]) <= sys.float_info.max
        if isinstance(e["value"], float):
            assert math.isfinite(e["value"])
        if isinstance(e["value"], str):
            assert len(e["value"]) <= 2000
        assert math.isfinite(e["epoch"]) and e["epoch"] > 1.4e9


def test_an_event_the_wire_cannot_carry_is_dropped_alone():
    """Should an event the wire cannot carry get past log() (here: put on its queue
    directly), it is dropped alone and said."""
    huge = 10**5000  # (too long to write as text)
    s, t, _ = make(batch_size=5)
    for i in range(5):
        if i == 2:
            s._queue.append(("n", huge, time.time()))  # an int no JSON number can hold
        else:
            s.log("n", i)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s.flush()
    assert [e["value"] for e in t.events()] == [0, 1, 3, 4]
    stats = s.stats()
    assert stats.refused == 1 and stats.in_flight == 0 and "cannot be sent" in stats.last_error
    assert stats.last_error.startswith("the client (before sending) refused an event")


LIMIT = int(sys.float_info.max)  # the largest int a 64-bit float (a JSON number) holds


@pytest.mark.parametrize("huge", [10**5000, -(2**1024), LIMIT + 1],
                         ids=["1e5000", "-2**1024", "limit+1"])
def test_huge_ints_are_refused_at_log_raised_at_debug_2_and_the_rest_goes_out(huge):
    s, t, _ = make(batch_size=4, debug_level=2)
    s.log("a", 1)
    with pytest.raises(RefusedValue, match=r"'huge' is an integer of \d+ digits, past the limit "
                                           r"of ±1\.8e308 .*math\.log10\(abs\(value\)\)"):
        s.log("huge", huge)
    s.log("b", 2**1000)  # big, but within a 64-bit float's range
    s.log("edge", -LIMIT)  # (past log()'s quick check, 2**1023: checked in full, and fine)
    s.DebugLevel = 0
    with pytest.warns(IsStreamerWarning, match=r"'huge' is an integer"):
        s.log("huge", huge)
    s.log("c", 3)
    assert s.flush()  # nothing refused at send: both were refused at log()
    assert [(e["key"], e["value"]) for e in t.events()] == [
        ("a", 1), ("b", 2**1000), ("edge", -LIMIT), ("c", 3)]
    assert s.stats().refused == 2 and not s.stats().last_error


def test_a_bucket_the_service_will_not_create_stops_with_a_remedy():
    s, t, clock = make([404])
    s.log("a", 1)
    with pytest.warns(UserWarning, match="check api_base"):
        assert not s.flush(timeout=5)
    calls = len(t.calls)
    run_for(s, clock, 600)
    assert len(t.calls) == calls  # no retry loop
    assert s.stats().state is State.STOPPED and "api_base" in s.stats().remedy


def test_stopped_sync_streamer_does_not_block_log():
    s, _, clock = make([204, 401], batch_size=2, timeout=30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = clock.now
        for i in range(20):
            s.log("n", i)
    assert clock.now - start < 1  # no wait for a delivery that cannot happen
    assert s.stats().queued == 20


@pytest.mark.parametrize("spool", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_next_batch_made_ready_in_flight_keeps_order_under_any_answers(tmp_path, spool, seed):
    """While a batch is out the sender takes and encodes the next one; whatever the answers,
    every event is accepted exactly once and in order (one request in flight)."""
    import random

    rng = random.Random(seed)
    script = [204] + [rng.choice([204, 204, 204, 503, 429, 408, 500]) for _ in range(400)]
    s, t, _ = make(script, batch_size=10, spool=spool, spool_dir=tmp_path / "spool")
    for i in range(1000):
        s.log("n", i)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert s.flush(timeout=3600)
    assert [e["value"] for e in t.events()] == list(range(1000))
    assert t.prepared  # the overlap happened
    stats = s.stats()
    assert (stats.sent, stats.queued, stats.in_flight) == (1000, 0, 0)


@pytest.mark.parametrize("first", [20, 7])
def test_a_spool_failing_while_batches_are_under_way_loses_nothing(tmp_path, monkeypatch, first):
    """The spool fails while the sender drains the queue in a request's shadow, with a full
    next batch (20 logged) or a partial one before a flush (7 logged) in it: the batch out is
    settled in the spool it came from, the one made ready there is given back, what that
    spool holds stays for the next streamer, the rest goes on in memory."""
    import threading

    from isstreamer_jupyter import SpoolError
    from isstreamer_jupyter._spool import SqliteSpool

    logged = threading.Event()

    def bucket_once_all_is_logged(kind, bucket_key, events):
        logged.wait(10)
        return 201

    def disk_full(self, segments):
        raise SpoolError("the spool failed: database or disk is full")

    opts = {"batch_size": 5, "spool": True, "spool_dir": tmp_path / "spool",
            "use_async": True, "clock": Clock()}
    s, t, _ = make([bucket_once_all_is_logged], **opts)
    real_post = t.post_events

    def post_then_break(bucket_key, events, meanwhile=None):
        if meanwhile is not None and not getattr(t, "broke", False):
            t.broke = True
            for i in range(100, 103):
                s.log("n", i)  # logged while the request is out ...
            monkeypatch.setattr(SqliteSpool, "put", disk_full)  # ... and the spool fails
        return real_post(bucket_key, events, meanwhile)

    t.post_events = post_then_break
    for i in range(first):
        s.log("n", i)
    threading.Timer(0.2, logged.set).start()  # (flush's marker is queued by then)
    with pytest.warns(UserWarning, match=f"{first - 5} events not delivered: they were in the "
                                         f"spool when it failed; they wait in the spool "):
        assert not s.flush(timeout=10)  # (what the old spool keeps is not delivered)
    with pytest.warns(UserWarning, match="going on without the spool"):
        s.flush(timeout=1)  # (what went wrong in the sender is told at the next call)
    assert t.broke
    assert [e["value"] for e in t.events()] == [0, 1, 2, 3, 4, 100, 101, 102]
    assert "internal error" not in "\n".join(s.messages())
    s.close(timeout=1)
    monkeypatch.undo()
    again, t2, _ = make(**opts)  # the next streamer sends what the old spool kept
    assert again.flush(timeout=10)
    assert [e["value"] for e in t2.events()] == list(range(5, first))
    again.close(timeout=1)


@pytest.mark.parametrize("spool", [False, True])
def test_an_interrupted_request_gives_back_its_batch_and_the_next(tmp_path, spool):
    """Ctrl-C while a use_async=False caller waits for an answer (the next batch was made
    ready meanwhile): both go back, and everything is delivered in order afterwards."""
    s, t, _ = make(batch_size=10, spool=spool, spool_dir=tmp_path / "spool")
    real_post = t.post_events

    def interrupted_once(bucket_key, events, meanwhile=None):
        if not getattr(t, "interrupted", False):
            t.interrupted = True
            assert meanwhile is not None
            meanwhile()  # the body is out, the next batch is taken ...
            raise KeyboardInterrupt  # ... and the user interrupts the cell
        return real_post(bucket_key, events, meanwhile)

    t.post_events = interrupted_once
    for i in range(30):
        s._queue.append(("n", i, 1_800_000_000.0 + i))  # queued as log() would, unsent
    with pytest.raises(KeyboardInterrupt):
        for _ in range(5):
            s._sender.step()
    assert s._sender.pipeline.next is None and s.stats().in_flight == 0
    assert s.flush(timeout=60)
    assert [e["value"] for e in t.events()] == list(range(30))
    s.close(timeout=1)


@pytest.mark.parametrize("second", ["accepted", "503", "refused before sending"])
def test_a_batch_is_acked_in_the_spool_in_the_next_requests_shadow(tmp_path, second):
    """With the sender's thread, the spool ack of an accepted batch waits until the next
    request is out and is done while the service works on that one (off the path between
    two requests). Whatever that request meets, each event is sent once, in order, and once
    flush() returns the spool is empty."""
    from isstreamer_jupyter._spool import SqliteSpool
    from isstreamer_jupyter._transport import Answer, Outcome

    logged = threading.Event()

    def bucket_once_all_is_logged(kind, bucket_key, events):
        logged.wait(10)
        return 201

    opts = {"batch_size": 10, "spool": True, "spool_dir": tmp_path / "spool",
            "use_async": True, "clock": Clock()}
    s, t, _ = make([bucket_once_all_is_logged, 204, 503 if second == "503" else 204], **opts)
    observer = SqliteSpool(tmp_path / "spool", api_base=s.settings.api_base, access_key=KEY)
    seen = []  # events in the spool (acked ones are gone) when each request's body is out
    real_post = t.post_events

    def post(bucket_key, events, meanwhile=None):
        if len(t.requests()) == 1 and second == "refused before sending" and not seen[1:]:
            seen.append(("refused", observer.pending()))
            return Answer(Outcome.RETRY, None, detail="network error: connection refused")

        def observed():
            before = observer.pending()
            meanwhile()
            seen.append((before, observer.pending()))
        return real_post(bucket_key, events, observed if meanwhile else None)

    t.post_events = post
    for i in range(40):
        s.log("n", i)
    threading.Timer(0.2, logged.set).start()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert s.flush(timeout=30)
    assert [e["value"] for e in t.events()] == list(range(40))
    assert observer.pending() == 0
    expected = {
        # batch 1 out; batch 2 out, batch 1 acked meanwhile; ...
        "accepted": [(40, 40), (40, 30), (30, 20), (20, 10)],
        # batch 2 answered 503 (batch 1 acked while it was out), then sent again
        "503": [(40, 40), (40, 30), (30, 30), (30, 20), (20, 10)],
        # the request after batch 1 fails before its body is out: batch 1 is acked then
        "refused before sending": [(40, 40), ("refused", 40), (30, 30), (30, 20), (20, 10)],
    }[second]
    assert seen == expected
    observer.close()
    s.close(timeout=1)


def as_if_threaded(streamer):
    """Step the sender by hand but as its own thread would run (the ack of an accepted batch
    then waits for the next request), for exact control of each step."""
    streamer._sender.thread = threading.current_thread()
    for i in range(30):
        streamer._queue.append(("n", i, 1_800_000_000.0 + i))
    return streamer._sender


def test_a_step_that_sends_nothing_acks_but_keeps_the_next_batch_held(tmp_path):
    """Pacing (3 requests/s): the step after an accepted batch only waits; it acks that
    batch then, and the batch made ready meanwhile stays leased: another process sharing
    the spool cannot take and send it too."""
    from isstreamer_jupyter._spool import SqliteSpool

    s, t, clock = make(batch_size=10, spool=True, spool_dir=tmp_path / "spool",
                       max_requests_per_second=3)
    sender = as_if_threaded(s)
    while not t.requests():
        clock.advance(sender.step())
    assert sender.pipeline.unacked is not None and sender.pipeline.next is not None
    assert sender.step() > 0  # the pace: no request
    assert sender.pipeline.unacked is None and sender.pipeline.next is not None
    other = SqliteSpool(tmp_path / "spool", api_base=s.settings.api_base, access_key=KEY)
    assert other.take(100) is None
    other.close()
    sender.thread = None
    s.close(timeout=1)


@pytest.mark.parametrize("late", ["after each step", "before each step"])
def test_a_spool_failing_to_ack_is_left_once_and_nothing_is_lost(tmp_path, monkeypatch, late):
    """The spool fails for good while an accepted batch's ack waits: the sender leaves it
    once (not at every step, each time losing what the last memory store held) and goes on
    in memory with what is logged afterwards, whether log() added it before the step that
    meets the failure (drained into the first memory store) or after."""
    from isstreamer_jupyter import SpoolError
    from isstreamer_jupyter._spool import SqliteSpool

    s, t, clock = make(batch_size=10, spool=True, spool_dir=tmp_path / "spool")
    sender = as_if_threaded(s)
    while not t.requests():
        clock.advance(sender.step())
    assert sender.pipeline.unacked is not None

    def broken(self, *args, **kwargs):
        raise SpoolError("the spool failed: disk I/O error")

    for name in ("ack", "release", "put", "take"):
        monkeypatch.setattr(SqliteSpool, name, broken)
    stores = set()
    for i in range(6):  # as Sender._run does
        if late == "before each step":
            s._queue.append(("late", i, 1_800_000_100.0 + i))
        try:
            sender.step()
        except SpoolError as exc:
            sender.drainer.leave_spool(exc)
        stores.add(id(sender.store))
        if late == "after each step":
            s._queue.append(("late", i, 1_800_000_100.0 + i))
    assert len(stores) == 1  # one memory store from the first failure on
    assert s.stats().in_flight == 0
    sender.drain()
    assert [e["value"] for e in t.events() if e["key"] == "late"] + [
        e[1] for e in sender.store.take(100).events] == list(range(6))
    sender.thread = None
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s.close(timeout=1)


def test_a_marker_drained_by_another_thread_while_markers_are_checked_is_kept(tmp_path):
    """log() in another thread may spill the queue, draining a flush marker, while the
    sender checks the markers it has: that new marker is not lost (its flush would wait out
    its whole timeout)."""
    from isstreamer_jupyter._sender import Marker

    s, _, _ = make(batch_size=10)
    sender = s._sender
    old, new = Marker(), Marker()
    old.upto = new.upto = 0
    sender.markers.waiting.append(old)
    real = sender.store.has_pending_upto

    def meanwhile_a_drain_adds_one(upto, skip=()):
        if new not in sender.markers.waiting:
            sender.markers.waiting.append(new)  # as _drain does, under its lock, in another thread
        return real(upto, skip)

    sender.store.has_pending_upto = meanwhile_a_drain_adds_one
    sender._check_markers()
    assert old.done.is_set() and sender.markers.waiting == [new]
    sender._check_markers()
    assert new.done.is_set() and sender.markers.waiting == []
    s.close(timeout=1)


def test_log_spilling_while_the_sender_checks_the_same_flush_marker_does_not_raise():
    """log() spilling in the user's thread and the sender thread may check the same flush
    marker at once: both see it done, and neither fails removing it."""
    import time

    transport = FakeTransport()
    s = Streamer(bucket_name="Unit", access_key=KEY, transport=transport, spool=False,
                 max_queue=3, max_requests_per_second=0, flush_interval=0.05,
                 spool_interval=0.02)
    assert s.flush(timeout=5)  # the bucket exists
    sender = s._sender
    together = threading.Barrier(2, timeout=3)

    def has_pending_upto(upto, skip=()):  # both threads look at the marker together
        with contextlib.suppress(threading.BrokenBarrierError):
            together.wait()
        return False

    sender.store.has_pending_upto = has_pending_upto
    flusher = threading.Thread(target=s.flush, kwargs={"timeout": 5})
    flusher.start()
    deadline = time.monotonic() + 3
    while not sender.markers.waiting:  # the sender drained the marker and waits at the barrier
        assert time.monotonic() < deadline
        time.sleep(0.001)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(6):  # max_queue=3: log() spills, the memory store drops, rechecks
            s.log("x", i)
    flusher.join(5)
    time.sleep(0.1)
    assert not [m for m in s.messages() if "internal error" in m]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s.close(timeout=1)


def test_counts_do_not_stick_when_another_streamer_sends_the_shared_events(tmp_path):
    """Two streamers with one key and one spool (a cell re-run without close()): when the
    second sends what the first put in the spool, the first's count of waiting events
    follows, instead of showing them queued for good."""
    import time

    opts = {"spool": True, "spool_dir": tmp_path / "spool", "flush_interval": 0.05,
            "clock": Clock()}
    first, _, _ = make(**opts)
    for i in range(5):
        first.log("x", i)
    first._sender.drain()  # in the spool, not sent yet
    second, t2, _ = make(**opts)
    assert second.recovered == 5 and second.flush(timeout=5)
    assert [e["value"] for e in t2.events()] == list(range(5))
    first._sender.start()  # (as with use_async=True: its thread's rounds find nothing to send)
    deadline = time.monotonic() + 5
    while first.stats().queued:
        assert time.monotonic() < deadline, first.stats()
        time.sleep(0.01)
    assert first.stats().spooled == 0 and first.flush(timeout=5)
    first.close(timeout=1)
    second.close(timeout=1)


def test_a_recount_of_a_shared_spool_leaves_out_the_batch_awaiting_its_ack(tmp_path):
    """Another process's events are sent by this one, so the count of waiting events runs
    out while an accepted batch's ack waits; the recount from the spool must not count that
    batch, or stats() shows events queued forever."""
    from isstreamer_jupyter._sender import Marker
    from isstreamer_jupyter._spool import Segment, SqliteSpool

    s, t, clock = make(batch_size=10, spool=True, spool_dir=tmp_path / "spool",
                       flush_interval=100.0)
    sender = s._sender
    sender.thread = threading.current_thread()
    other = SqliteSpool(tmp_path / "spool", api_base=s.settings.api_base, access_key=KEY)

    def put(first, end):  # (as the other process logs them)
        other.put([Segment(s.BucketKey, "Unit",
                           [("o", i, 1_800_000_000.0 + i) for i in range(first, end)])])

    clock.advance(sender.step())  # the bucket
    put(0, 5)
    clock.advance(sender.step())  # 5 waiting, not old enough yet
    put(5, 30)
    sender.queue_mark(Marker())  # a flush: the next batch is taken while one is out
    for _ in range(10):
        clock.advance(sender.step())
    assert [e["value"] for e in t.events()] == list(range(30))
    assert other.pending() == 0 and s.stats().queued == 0
    other.close()
    sender.thread = None
    s.close(timeout=1)


def test_log_leaving_the_spool_while_a_request_is_out(tmp_path):
    """log() itself may leave a failed spool (spilling past max_queue) while the sender has a
    batch out and the next one ready: both are settled in the old spool, the counters stay
    right, and the next streamer sends what the old spool kept."""
    from isstreamer_jupyter import SpoolError
    from isstreamer_jupyter._spool import SqliteSpool

    opts = {"batch_size": 5, "spool": True, "spool_dir": tmp_path / "spool"}
    s, t, _ = make(**opts)
    real_post = t.post_events

    def switched_meanwhile(bucket_key, events, meanwhile=None):
        if meanwhile is not None and not getattr(t, "switched", False):
            t.switched = True
            meanwhile()  # the next batch is taken from the spool ...
            s._sender.drainer.leave_spool(SpoolError("disk full"))  # ... then log() leaves it
            s._queue.append(("n", 100, 1_800_000_000.0))
            other = SqliteSpool(tmp_path / "spool", api_base=s.settings.api_base,
                                access_key=KEY)  # another process on that spool
            assert other.take(100) is None  # the batch out and the next stay held
            other.close()
        return real_post(bucket_key, events, meanwhile)

    t.post_events = switched_meanwhile
    for i in range(20):
        s._queue.append(("n", i, 1_800_000_000.0 + i))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert not s.flush(timeout=60)  # (15 wait in the old spool: said, counted)
        assert [e["value"] for e in t.events()] == [0, 1, 2, 3, 4, 100]
        stats = s.stats()
        assert (stats.queued, stats.in_flight, stats.sent) == (15, 0, 6)
        assert not s.close(timeout=1)
    again, t2, _ = make(**opts)
    assert again.flush(timeout=60)
    assert [e["value"] for e in t2.events()] == list(range(5, 20))
    again.close(timeout=1)


def test_a_with_block_s_own_exception_is_not_replaced_by_a_delivery_error(tmp_path):
    """At debug_level 2 the close() of a `with` block raised FlushTimeout in place of the
    block's ValueError (left only as its __context__): `except ValueError` missed it."""
    options = {"bucket_name": "B", "access_key": KEY, "api_base": "http://127.0.0.1:9/api",
               "spool": False, "debug_level": 2, "flush_timeout": 0.2}
    with (pytest.raises(ValueError, match="the user's own"), pytest.warns(UserWarning) as said,
          Streamer(**options) as s):
        s.log("a", 1)
        raise ValueError("the user's own")
    assert any("1 event not delivered: none acknowledged for 0.2 s" in str(w.message)
               for w in said)
    with pytest.raises(FlushTimeout), Streamer(**options) as s:  # (it ends well: close raises)
        s.log("a", 1)


def test_the_time_between_requests_is_put_down_to_what_it_waited_for():
    """The fault mix's delivery took 54 s against ISStreamer's 8 s, and nothing said how much
    of it was the service's Retry-After, our backoff, or our pace."""
    s, _, clock = make([204, answer(429, retry_after=7), answer(503), 204, 204],
                       batch_size=1, max_requests_per_second=2)
    for i in range(3):
        s.log("n", i)
    run_for(s, clock, 30)
    stats = s.stats()
    assert stats.sent == 3
    assert 7 <= stats.waited_service < 7.5  # the 429's Retry-After, and no more
    assert 0 < stats.waited_backoff < 1  # after the 503: the first backoff is under 0.2 s
    assert stats.waited_pace >= 0.4  # 2 requests a second: 0.5 s apart
