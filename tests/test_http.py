"""The core against the loopback receiver over real HTTP, with each fault the service shows."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import socket
import sqlite3
import ssl
import threading
import time
import warnings

import pytest
import trustme

from isstreamer_jupyter import AccessDenied, ConfigError, State, Streamer, StreamerClosed
from isstreamer_jupyter._config import MASK
from isstreamer_jupyter.receiver import Faults

KEY = "ist_http_test_secret_key_abcdef"


@pytest.fixture
def stream(tmp_path, monkeypatch):
    """make(receiver, **settings): a Streamer on the receiver, closed after the test."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IS_ACCESS_KEY", raising=False)
    made = []

    def make(rx, **kw):
        options = {"bucket_name": "HTTP", "access_key": KEY, "api_base": rx.api_base,
                   "spool_dir": tmp_path / "spool", "max_requests_per_second": 0,
                   "timeout": 2, "flush_interval": 0.2, "spool_interval": 0.05}
        options.update(kw)
        s = Streamer(**options)
        made.append(s)
        return s

    yield make
    for s in made:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s.close(timeout=1)


def values(events):
    return [e["value"] for e in events]


def test_delivery_over_one_keep_alive_connection_with_types(make_receiver, stream):
    rx = make_receiver()
    s = stream(rx, batch_size=10)
    sent = [1, 2.5, True, "text", -7, 0.0, False, ":sunny:"] * 5
    for v in sent:
        s.log("mixed", v)
    assert s.flush(timeout=10)
    got = rx.events(s.BucketKey)
    assert values(got) == sent
    assert [type(v) for v in values(got)] == [type(v) for v in sent]
    assert rx.buckets[s.BucketKey] == "HTTP"
    assert rx.stats()["connections"] == 1
    stats = s.stats()
    assert stats.state is State.ONLINE and stats.sent == len(sent) and stats.queued == 0


def test_close_while_another_thread_logs_counts_what_is_left_without_raising(make_receiver,
                                                                            stream):
    """close() counted the events left by walking log()'s queue in Python while the sender
    and another thread changed it: 'deque mutated during iteration' (a reviewer's script
    hit it in 7 runs of 10)."""
    rx = make_receiver()
    for _ in range(3):
        s = stream(rx, batch_size=500)
        stop = threading.Event()

        def hammer(s=s, stop=stop):
            with contextlib.suppress(StreamerClosed):
                while not stop.is_set():
                    for i in range(1000):
                        s.log("x", i)

        thread = threading.Thread(target=hammer)
        thread.start()
        time.sleep(0.4)
        try:
            s.close(timeout=0.5)
        finally:
            stop.set()
            thread.join()


def test_https_checks_the_certificate_and_delivers_once_its_ca_is_trusted(make_receiver, stream,
                                                                          monkeypatch, tmp_path):
    """The real service is HTTPS: the pool's connection does the TLS, and a certificate that
    does not check is said with its fix, the events kept (then delivered once it checks)."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    rx = make_receiver(tls=context)
    assert rx.api_base.startswith("https://127.0.0.1:")
    untrusted = stream(rx, bucket_name="TLS")
    untrusted.log("t", 1)
    assert not untrusted.flush(timeout=1)
    stats = untrusted.stats()
    assert stats.last_error.startswith("TLS certificate check failed: ")
    assert stats.remedy.startswith("update the CA bundle (pip install -U certifi), or set "
                                   "REQUESTS_CA_BUNDLE")
    assert rx.events() == []
    assert not untrusted.close(timeout=0.1)  # (its event stays in the spool)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    connections = rx.stats()["connections"]  # (one per failed handshake)
    trusted = stream(rx, bucket_name="TLS")
    assert trusted.recovered == 1
    for i in range(2, 30):
        trusted.log("t", i)
    assert trusted.flush(timeout=10)
    assert values(rx.events()) == list(range(1, 30))
    assert trusted.stats().retries == 0 and rx.stats()["connections"] == connections + 1


def test_https_to_a_plain_http_service_is_said_as_such_not_as_a_certificate(make_receiver,
                                                                            stream):
    """Every TLS failure was 'certificate check failed: update the CA bundle', also https://
    to a service that speaks plain HTTP (the loopback receiver, say)."""
    rx = make_receiver()
    s = stream(rx, api_base=rx.api_base.replace("http://", "https://"))
    s.log("t", 1)
    assert not s.flush(timeout=1, warn=False)
    stats = s.stats()
    assert stats.last_error.startswith("TLS failed: ") and "certificate" not in stats.last_error
    assert stats.remedy.startswith("check api_base: https:// for a service that speaks TLS")


def test_a_connection_the_service_closed_while_idle_is_replaced_without_a_retry(make_receiver,
                                                                              stream):
    """Services close idle keep-alive connections: the next request opens a new one at once,
    with no error, retry or backoff (the pool checks the connection before using it)."""
    rx = make_receiver()
    s = stream(rx, batch_size=10)
    for round_ in range(3):
        for i in range(10):
            s.log("n", round_ * 10 + i)
        assert s.flush(timeout=10)
        rx.drop_connections()
    assert values(rx.events(s.BucketKey)) == list(range(30))
    assert rx.stats()["connections"] == 3
    stats = s.stats()
    assert (stats.retries, stats.last_error) == (0, ""), stats

def test_time_based_flush_without_calling_flush(make_receiver, stream):
    rx = make_receiver()
    s = stream(rx, batch_size=100, flush_interval=0.3)
    s.log("slow", 1)
    assert values(rx.wait_for(1, timeout=5)) == [1]


@pytest.mark.parametrize(
    "faults",
    [
        {"p_5xx": 0.3},
        {"p_429": 0.3, "retry_after": 0.1},
        {"p_reset_before": 0.3},
        {"p_reset_after": 0.2},
    ],
    ids=["5xx", "429", "reset-before", "reset-after"],
)
def test_faults_lose_nothing(make_receiver, stream, faults):
    rx = make_receiver(faults=Faults(**faults), seed=7)
    s = stream(rx, batch_size=5)
    for i in range(60):
        s.log("n", i)
    assert s.flush(timeout=60)
    got = values(rx.events(s.BucketKey))
    assert set(got) == set(range(60))  # nothing lost
    if "p_reset_after" not in faults:
        assert got == list(range(60))  # and, without lost answers, no duplicates, in order
    assert s.stats().retries > 0


def test_slow_answers_time_out_and_are_retried(make_receiver, stream):
    rx = make_receiver(faults=Faults(latency=1.5))
    s = stream(rx, timeout=0.5)
    s.log("a", 1)
    time.sleep(1.2)
    rx.set_faults(latency=0)
    assert s.flush(timeout=30)
    assert 1 in values(rx.events(s.BucketKey))
    assert s.stats().retries >= 1


def test_close_closes_the_keep_alive_connection(make_receiver, stream):
    rx = make_receiver()
    s = stream(rx)
    s.log("a", 1)
    assert s.flush(timeout=5)
    pools = {id(pool): pool for pool, _url in s._sender.transport._targets.values()}.values()
    assert s.close(timeout=5)
    assert pools and all(pool.pool is None for pool in pools)  # urllib3: a closed pool


def test_close_timing_out_mid_request_still_closes_its_connection_and_spool(make_receiver,
                                                                             stream):
    """close() returns within its bound while a request is out; the sender, once that request
    ends, closes the HTTP connection and the spool itself (they used to stay open)."""
    rx = make_receiver(faults=Faults(latency=1.0))
    s = stream(rx)
    s.log("a", 1)
    deadline = time.monotonic() + 5
    while s.stats().in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert s.stats().in_flight == 1
    sender = s._sender
    pools = {id(pool): pool for pool, _url in sender.transport._targets.values()}.values()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert not s.close(timeout=0.2)
    assert sender.thread.is_alive()  # still waiting for the answer
    sender.thread.join(5)
    assert not sender.thread.is_alive()
    assert values(rx.events(s.BucketKey)) == [1]
    assert pools and all(pool.pool is None for pool in pools)  # urllib3: a closed pool
    with pytest.raises(sqlite3.ProgrammingError):  # the spool's connection is closed
        sender.store._db.execute("SELECT 1")
    rx.set_faults(latency=0)
    again = stream(rx)  # the same spool: the answered batch was acknowledged before closing
    assert again.stats().queued == 0
    assert again.flush(timeout=5)
    assert values(rx.events(s.BucketKey)) == [1]


def test_outage_loses_nothing(make_receiver, stream):
    rx = make_receiver()
    s = stream(rx, batch_size=10)
    rx.outage(2.0)
    for i in range(50):
        s.log("n", i)
        time.sleep(0.01)
    time.sleep(0.3)
    assert s.stats().state is State.BACKING_OFF
    assert s.flush(timeout=60)
    assert values(rx.events(s.BucketKey)) == list(range(50))


def test_receiver_down_flush_is_bounded(stream, tmp_path):
    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    class Down:
        api_base = f"http://127.0.0.1:{port}/api"

    s = stream(Down)
    s.log("a", 1)
    start = time.monotonic()
    with pytest.warns(UserWarning, match="still waiting after 1 s"):
        assert not s.flush(timeout=1)
    assert time.monotonic() - start < 2
    assert "connection refused" in s.stats().last_error


def test_requests_timing_out_are_said_as_backing_off_with_the_reason(make_receiver, stream):
    """A service slower than `timeout`: for seconds stats() said 'connecting' with no
    reason while last_error said 'no answer within 1 s', and flush() said no reason."""
    rx = make_receiver(faults=Faults(latency=3))
    s = stream(rx, timeout=1)
    s.log("a", 1)
    deadline = time.monotonic() + 10
    while not s.stats().last_error and time.monotonic() < deadline:
        time.sleep(0.02)
    states = set()
    for _ in range(12):  # 2.4 s: backoffs and retries under way alike
        stats = s.stats()
        states.add((stats.state, stats.reason))
        time.sleep(0.2)
    assert states == {(State.BACKING_OFF, "no answer within 1 s")}
    with pytest.warns(UserWarning, match=r"1 event still waiting after 1 s \(backing off.*"
                                         r"no answer within 1 s"):
        assert not s.flush(timeout=1)


def test_use_async_false_against_a_service_that_is_down_never_blocks_log(stream):
    """ISStreamer's synchronous mode with the service down: 20 log() calls took 20.7 s;
    flush(3) and close(2) returned at once saying 'after 3 s' / 'after 2 s'."""
    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    class Down:
        api_base = f"http://127.0.0.1:{port}/api"

    s = stream(Down, bucket_name="Sync", batch_size=5, use_async=False,
               max_requests_per_second=3)
    start = time.monotonic()
    for i in range(20):
        s.log("p", i)
    assert time.monotonic() - start < 1
    for call, bound in ((lambda: s.flush(3), 3), (lambda: s.close(2), 2)):
        start = time.monotonic()
        with pytest.warns(UserWarning) as said:
            assert not call()
        took = time.monotonic() - start
        text = str(said[0].message)
        assert took < bound + 0.5, text
        if "not sent within" in text:  # (it stopped early: it says why, not "after N s")
            assert re.search(r"20 events not sent within this (flush|close): backing off "
                             rf"after network error: connection refused, next try in "
                             rf"[0-9.]+ s \(past (the [0-9.]+ s left of )?its {bound} s "
                             rf"bound\)", text), text
        else:
            assert f"20 events still waiting after {bound} s (backing off after" in text
            assert took >= bound - 0.1


def test_a_refused_key_is_one_log_record_with_a_root_handler(make_receiver, stream, caplog):
    """logging.basicConfig(), a key the receiver refuses: flush() printed the refusal as an
    ERROR record, then again as a WARNING one, then the warning."""
    caplog.set_level(logging.INFO)  # (a handler on the root logger, as basicConfig's)
    rx = make_receiver(access_keys={"goodkey"})
    s = stream(rx, bucket_name="Denied")
    s.log("a", 1)
    with pytest.warns(UserWarning, match=r"refused the access key \(401\)") as said:
        assert not s.flush(3)
    assert len(said) == 1
    records = [(r.levelname, r.getMessage()) for r in caplog.records
               if "refused the access key" in r.getMessage()]
    assert records == [("ERROR", str(said[0].message).removeprefix("flush: "))]


def test_an_event_the_service_refuses_is_said_once_with_the_services_words(make_receiver,
                                                                           stream):
    """A key over the service's 100 characters among 10 good events: the first flush said
    '1 refused: see stats().last_error'; the next one returned True but warned the refusal,
    with the fix 'check api_base (IS_API_BASE) and the bucket key'."""
    rx = make_receiver(max_key_length=100)
    s = stream(rx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (log() warns of a key over 100 characters)
        for i in range(11):
            s.log("k" * 120 if i == 5 else "ok", i)
    with pytest.warns(UserWarning) as said:
        assert not s.flush(10)
    assert len(said) == 1
    text = str(said[0].message)
    assert "1 refused" in text and "'key' is longer than 100 characters" in text, text
    assert "Fix: change the key as the service says (a shorter one" in text
    assert "api_base" not in text
    assert values(rx.events(s.BucketKey)) == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once
        s.log("ok", 11)
        assert s.flush(10)


def test_flush_and_close_without_a_bound(make_receiver, stream):
    """flush(timeout=inf) and close(timeout=inf) raised OverflowError ('timestamp out of
    range for platform time_t'), and the streamer stayed open."""
    rx = make_receiver()
    s = stream(rx, flush_timeout=1e12)
    s.log("a", 1)
    assert s.flush()
    s.log("a", 2)
    assert s.flush(timeout=float("inf"))
    s.log("a", 3)
    assert s.close(timeout=float("inf")) and s.IsClosed
    assert values(rx.events(s.BucketKey)) == [1, 2, 3]


def test_401_then_fixed_key_delivers_everything(make_receiver, stream):
    rx = make_receiver(access_keys={"ist_the_right_key"})
    s = stream(rx, debug_level=2)
    for i in range(5):
        s.log("n", i)
    with pytest.raises(AccessDenied) as info:
        s.flush(timeout=5)
    assert KEY not in str(info.value)
    assert s.stats().state is State.STOPPED
    s.AccessKey = "ist_the_right_key"
    assert s.flush(timeout=10)
    assert values(rx.events(s.BucketKey)) == list(range(5))


def test_the_header_carries_the_key_and_its_repr_the_mask(make_receiver, stream):
    """The session's header is the key as a Secret: the service gets the key (it takes no
    other), and the headers' repr (a verbose traceback shows them, in our frames and
    urllib3's) the mask; so too once AccessKey = ... replaced it."""
    rx = make_receiver(access_keys={KEY})
    s = stream(rx)
    headers = s._sender.transport._session.headers
    s.log("n", 1)
    assert s.flush(timeout=10)
    assert values(rx.events(s.BucketKey)) == [1]
    assert KEY not in repr(headers) and f"'X-IS-AccessKey': '{MASK}'" in repr(headers)
    s.AccessKey = "ist_the_right_key"
    assert headers["X-IS-AccessKey"] == "ist_the_right_key"
    assert "ist_the_right_key" not in repr(headers) and repr(MASK) in repr(headers)


def test_once_the_key_is_fixed_its_old_refusal_is_not_said_again(make_receiver, stream):
    """At debug level 0 the refusal is said by the flush that met it; the next flush, after
    the key was fixed, said it once more (a notice left from the sender) while returning
    True."""
    rx = make_receiver(access_keys={"ist_the_right_key"})
    s = stream(rx)
    for i in range(5):
        s.log("n", i)
    with pytest.warns(UserWarning, match="refused the access key"):
        assert not s.flush(timeout=5)
    s.AccessKey = "ist_the_right_key"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert s.flush(timeout=10)
    assert values(rx.events(s.BucketKey)) == list(range(5))


def test_key_fixed_while_a_request_with_the_old_one_is_out(make_receiver, stream):
    """The old key's 401 comes back after the user set the right one: delivery goes on."""
    rx = make_receiver(access_keys={"ist_the_right_key"}, faults=Faults(latency=0.5))
    s = stream(rx)
    s.log("n", 1)
    deadline = time.monotonic() + 5
    while rx.stats()["requests"] == 0:  # the bucket's creation, with the old key, is out
        assert time.monotonic() < deadline
        time.sleep(0.01)
    s.AccessKey = "ist_the_right_key"
    assert s.flush(timeout=10)
    assert values(rx.events(s.BucketKey)) == [1]
    assert rx.stats()["statuses"].get(401) == 1  # the late one; nothing was refused since


def test_a_fixed_key_pasted_with_a_line_break_loses_nothing_and_shows_nothing(
        make_receiver, stream):
    """The right key, assigned as read from a file (a trailing newline), is stripped as the
    settings strip it: delivery resumes. Before, every request failed before it was sent (a
    header cannot carry a line break), the held events were deleted one by one as refused,
    and the key showed in the messages."""
    rx = make_receiver(access_keys={"ist_the_right_key"})
    s = stream(rx, batch_size=4)
    for i in range(8):
        s.log("n", i)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert not s.flush(timeout=3)  # stopped: the key is refused, the events held
    s.AccessKey = "ist_the_right_key\n"
    assert s.flush(timeout=10)
    assert values(rx.events(s.BucketKey)) == list(range(8))
    stats = s.stats()
    assert stats.refused == 0
    shown = " ".join([*s.messages(), stats.last_error, stats.reason, repr(s)])
    assert "ist_the_right_key" not in shown and KEY not in shown
    with pytest.raises(ConfigError, match="line break") as info:
        s.AccessKey = "ist_the\nright_key"
    assert "ist_the" not in str(info.value)


def test_401_held_events_go_out_with_a_new_streamer_and_fixed_key(make_receiver, stream):
    rx = make_receiver(access_keys={"ist_the_right_key"})
    wrong = stream(rx)
    for i in range(5):
        wrong.log("n", i)
    with pytest.warns(UserWarning):
        assert not wrong.flush(timeout=5)
    with pytest.warns(UserWarning) as said:  # (what becomes of them, and who sends them)
        wrong.close(timeout=1)
    assert any(re.search(r"; 5 events not delivered; they wait in the spool \S+; fix the access "
                         r"key, then send them with `python -m isstreamer_jupyter spool send`; "
                         r"or the next Streamer on their bucket with the same API base and the "
                         r"right access key sends them$", str(w.message))
               for w in said), [str(w.message) for w in said]
    fixed = stream(rx, access_key="ist_the_right_key")
    assert fixed.recovered == 5
    assert fixed.flush(timeout=10)
    assert values(rx.events(fixed.BucketKey)) == list(range(5))


def test_a_wrong_api_base_stops_at_the_bucket_and_close_says_what_becomes_of_the_events(
        make_receiver, stream):
    """The bucket's 404 was 'the service refused the events (404)' (none were in it), and
    close() said nothing of the events it could not deliver (a log record only)."""
    rx = make_receiver()
    s = stream(rx, api_base=rx.api_base.replace("/api", "/wrong"), spool=False)
    s.log("n", 1)
    with pytest.warns(UserWarning, match=r"creating bucket HTTP_\w+ failed: the service answered "
                                         r"404: NOT_FOUND: no such endpoint: /wrong/buckets\. "
                                         r"Fix: check api_base"):
        assert not s.flush(timeout=5)
    with pytest.warns(UserWarning) as said:
        assert not s.close(timeout=1)
    assert any(str(w.message).endswith(
        "; 1 event not delivered; they are lost as it closes (spool = False from keyword "
        "argument keeps events in memory only)") for w in said), [str(w.message) for w in said]


def test_cap_reached_stops_and_says_so(make_receiver, stream):
    rx = make_receiver(monthly_cap=3)
    s = stream(rx, batch_size=2)
    for i in range(6):
        s.log("n", i)
    with pytest.warns(UserWarning, match="monthly data-point cap"):
        s.flush(timeout=5)
    stats = s.stats()
    assert stats.state is State.STOPPED and "upgrade the plan" in stats.remedy
    assert stats.queued + stats.sent == 6


def test_removed_bucket_then_new_bucket(make_receiver, stream):
    rx = make_receiver()
    s = stream(rx)
    s.log("n", 1)
    assert s.flush(timeout=5)
    rx.remove_bucket(s.BucketKey)
    s.log("n", 2)
    with pytest.warns(UserWarning, match="deleted bucket"):
        s.flush(timeout=5)
    assert s.stats().state is State.STOPPED
    s.set_bucket("HTTP fresh")
    s.log("n", 3)
    assert values(rx.wait_for(1, bucket_key=s.BucketKey)) == [3]
    assert s.stats().state is State.ONLINE


def test_413_from_the_service_splits(make_receiver, stream):
    rx = make_receiver(max_body=400)
    s = stream(rx, batch_size=20)
    for i in range(20):
        s.log("n", i)
    assert s.flush(timeout=10)
    assert values(rx.events(s.BucketKey)) == list(range(20))
    assert rx.stats()["statuses"].get(413, 0) >= 1


def test_rate_limit_headers_mean_no_429(make_receiver, stream):
    rx = make_receiver(rate_limit=4, rate_window=1.0)
    s = stream(rx, batch_size=2)
    for i in range(24):
        s.log("n", i)
    assert s.flush(timeout=30)
    assert values(rx.events(s.BucketKey)) == list(range(24))
    assert rx.stats()["statuses"].get(429, 0) == 0
    assert s.stats().budget is not None and s.stats().budget.limit == 4


def test_bucket_name_and_query_form_are_the_services(make_receiver):
    import requests

    rx = make_receiver()
    r = requests.get(f"{rx.api_base}/events", params={"accessKey": "k", "bucketKey": "q",
                                                     "temp": "32"}, timeout=5)
    assert r.status_code == 204
    assert [(e["key"], e["value"]) for e in rx.events("q")] == [("temp", "32")]


def test_proxy_from_the_environment_is_used(make_receiver, stream, monkeypatch):
    """HTTP_PROXY is honoured: the receiver stands in for the proxy (it takes absolute-form
    requests), and the API host does not even resolve."""
    rx = make_receiver()
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{rx.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)

    class ViaProxy:
        api_base = "http://api.isstreamer.invalid/api"

    s = stream(ViaProxy)
    s.log("through", 1)
    assert s.flush(timeout=10)
    assert values(rx.events(s.BucketKey)) == [1]



@pytest.mark.parametrize(("refuse_bucket", "escaped"), [(True, False), (False, False),
                                                         (True, True)])
def test_a_service_echoing_the_key_in_its_error_never_shows_it_anywhere(
        stream, caplog, capsys, refuse_bucket, escaped):
    """A proxy or service that repeats the request's headers in its 400 body: the key was in
    stats().reason (so the panel and %isstream --status) in full, and a prefix of it in the
    warnings, as the body was cut short before the key was masked."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Echo(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            if self.path.endswith("/buckets") and not refuse_bucket:
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            key = self.headers["X-IS-AccessKey"]
            copies = " ".join([key] * 20)  # (the words are cut short inside a copy)
            body = json.dumps({"error": "BAD_THING",
                               "message": f"key {key} is not allowed here: {copies}"}).encode()
            if escaped:  # (JSON that escapes what it need not: the bytes hold no key)
                body = body.replace(key[0].encode(), b"\\u%04x" % ord(key[0]))
            self.send_response(400)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    caplog.set_level(logging.DEBUG, logger="isstreamer_jupyter")
    try:
        class Rx:
            api_base = f"http://127.0.0.1:{server.server_address[1]}/api"

        s = stream(Rx, debug_level=3)
        s.log("a", 1)
        raised = []
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            for call in (lambda: s.flush(timeout=5), lambda: s.close(timeout=1)):
                try:
                    call()
                except Exception as exc:  # (debug_level 3 raises what it would warn)
                    raised.append(f"{exc!r} {exc}")
        stats = s.stats()
        shown = "\n".join([str(w.message) for w in said] + raised + s.messages() + [
            repr(stats), str(stats.last_error), capsys.readouterr().out, caplog.text])
        assert raised
        assert "is not allowed here" in shown and MASK in shown, shown  # (the words are kept)
        assert KEY[:4] not in shown, shown  # (not even a prefix: ist_)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("bound", [math.inf, 30.0])
def test_a_flush_in_another_thread_ends_when_the_streamer_is_closed(make_receiver, stream,
                                                                    bound):
    """flush(inf) in a worker thread never returned once the main thread closed the streamer
    (its sender gone, nothing completes the flush's marker), keeping the interpreter from
    exiting; a bounded one waited its bound out, then said the events 'will be sent'."""
    rx = make_receiver(faults=Faults(latency=0.2))
    s = stream(rx, batch_size=10)
    for i in range(100):
        s.log("k", i)
    returned = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        worker = threading.Thread(target=lambda: returned.append(s.flush(bound)))
        worker.start()
        time.sleep(0.3)
        assert not s.close(0.5)
        worker.join(10)
    assert not worker.is_alive() and returned == [False]
    said = [m for m in s.messages() if m.split(" ", 2)[2].startswith("flush:")]
    assert any(re.search(r"flush: \d+ events not delivered: the streamer was closed after "
                         r"[0-9.]+ s; they wait in the spool \S+; send them with `python -m "
                         r"isstreamer_jupyter spool send`", m) for m in said), s.messages()


def test_a_bucket_given_by_its_key_alone_is_named_by_it(make_receiver, stream):
    """ISStreamer created such a bucket with an empty name; a name given anywhere wins."""
    rx = make_receiver()
    s = stream(rx, bucket_name="", bucket_key="greenhouse_2")
    s.log("t", 1)
    assert s.flush(timeout=5)
    named = stream(rx, bucket_name="Greenhouse", bucket_key="greenhouse_3")
    named.log("t", 1)
    assert named.flush(timeout=5)
    assert (s.BucketName, named.BucketName) == ("greenhouse_2", "Greenhouse")
    assert rx.buckets == {"greenhouse_2": "greenhouse_2", "greenhouse_3": "Greenhouse"}


def test_close_keeps_waiting_at_the_service_s_pace_past_flush_timeout(make_receiver, stream):
    """close() waited flush_timeout in all, and left what the rate limit had not let through
    in the spool. Here acknowledgments come 1.5 s apart, more than flush_timeout: a request
    takes 0.6 s, then the spent rate window holds the next one for some 0.9 s. Waiting at
    the service's pace is no stall, so close() delivers them all."""
    rx = make_receiver(rate_limit=1, rate_window=1.5, faults=Faults(latency=0.6))
    s = stream(rx, batch_size=1, flush_timeout=1.0)
    for i in range(4):
        s.log("n", i)
    assert s.close(), (s.outcome, s.messages())
    assert values(rx.events(s.BucketKey)) == list(range(4))
    assert s.outcome is not None and s.outcome.ok and s.outcome.delivered == 4


def test_close_stops_once_nothing_is_acknowledged_for_flush_timeout(make_receiver, stream):
    """A whole outage: close() ends after flush_timeout without an acknowledgment, and its
    report says why and where the events wait."""
    rx = make_receiver()
    rx.outage(3600)
    s = stream(rx, flush_timeout=0.5)
    s.log("n", 1)
    with pytest.warns(UserWarning, match="none acknowledged for 0.5 s"):
        assert not s.close()
    end = s.outcome
    assert (end.waiting, end.delivered) == (1, 0) and end.where == s.stats().spool_path
    assert "spool send" in end.heir
