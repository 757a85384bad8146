"""The loopback receiver, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import math
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from isstreamer_jupyter.receiver import Faults, Receiver, serve_main

MakeReceiver = Callable[..., Receiver]
TIMEOUT = 5


def headers(key: str = "ak", bucket: str | None = "bkt") -> dict[str, str]:
    h = {"X-IS-AccessKey": key, "Content-Type": "application/json", "Accept-Version": "~0"}
    if bucket is not None:
        h["X-IS-BucketKey"] = bucket
    return h


def post_events(
    rx: Receiver,
    events: Any,
    *,
    session: requests.Session | None = None,
    key: str = "ak",
    bucket: str | None = "bkt",
    raw: str | bytes | None = None,
) -> requests.Response:
    data = raw if raw is not None else json.dumps(events)
    return (session or requests).post(
        rx.api_base + "/events", data=data, headers=headers(key, bucket), timeout=TIMEOUT
    )


def post_bucket(
    rx: Receiver, body: Any, *, key: str = "ak", session: requests.Session | None = None
) -> requests.Response:
    return (session or requests).post(
        rx.api_base + "/buckets", json=body, headers=headers(key, None), timeout=TIMEOUT
    )


def error_type(resp: requests.Response) -> str:
    return resp.json()["message"]["error"]["type"]


def ev(key: str = "temp", value: Any = 1, **extra: Any) -> dict[str, Any]:
    return {"key": key, "value": value, **extra}


# -- addresses and lifecycle ----------------------------------------------------------------


def test_addresses_and_loopback_bind(receiver: Receiver) -> None:
    assert receiver.port > 0
    assert receiver.host_base == f"http://127.0.0.1:{receiver.port}"
    assert receiver.api_base == f"http://127.0.0.1:{receiver.port}/api"
    assert receiver._server is not None
    assert receiver._server.server_address[0] == "127.0.0.1"


def test_stop_is_idempotent_closes_kept_alive_connections_and_restarts() -> None:
    rx = Receiver().start()
    session = requests.Session()
    assert post_events(rx, ev(), session=session).status_code == 204
    rx.stop()
    rx.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        post_events(rx, ev(), session=session)
    port = rx.port
    with rx:  # starts again on the same port, keeping what it stored
        assert rx.port == port
        assert post_events(rx, ev(value=2)).status_code == 204
        assert [e["value"] for e in rx.events()] == [1, 2]
    with pytest.raises(requests.exceptions.ConnectionError):
        post_events(rx, ev())


def test_stop_without_start_does_not_hang() -> None:
    rx = Receiver()
    t0 = time.monotonic()
    rx.stop()
    assert time.monotonic() - t0 < 1


# -- buckets ----------------------------------------------------------------------------------


def test_create_bucket_201_then_204_first_name_wins(receiver: Receiver) -> None:
    r1 = post_bucket(receiver, {"bucketKey": "kitchen", "bucketName": "Kitchen"})
    r2 = post_bucket(receiver, {"bucketKey": "kitchen", "bucketName": "Renamed"})
    assert (r1.status_code, r2.status_code) == (201, 204)
    assert r2.content == b""
    assert receiver.buckets == {"kitchen": "Kitchen"}


@pytest.mark.parametrize("bucket_key", ["x" * 251, "a:b", 'a"b', "a'b", "", None, 42], ids=repr)
def test_invalid_bucket_key_is_400(receiver: Receiver, bucket_key: Any) -> None:
    r = post_bucket(receiver, {"bucketKey": bucket_key, "bucketName": "n"})
    assert r.status_code == 400
    assert error_type(r) == "INVALID_BUCKET_KEY"
    # the same rule applies to the events endpoint's header (where it is a string)
    if isinstance(bucket_key, str) and bucket_key:
        r = post_events(receiver, ev(), bucket=bucket_key)
        assert r.status_code == 400
    assert receiver.buckets == {}
    assert receiver.events() == []


def test_bucket_key_of_250_chars_is_fine(receiver: Receiver) -> None:
    key = "k" * 250
    assert post_bucket(receiver, {"bucketKey": key, "bucketName": "n" * 250}).status_code == 201
    assert post_bucket(receiver, {"bucketKey": "x", "bucketName": "n" * 251}).status_code == 400


def test_removed_bucket_is_400_bucket_removed(receiver: Receiver) -> None:
    assert post_bucket(receiver, {"bucketKey": "gone", "bucketName": "G"}).status_code == 201
    assert post_events(receiver, ev(), bucket="gone").status_code == 204
    receiver.remove_bucket("gone")
    for r in (
        post_events(receiver, ev(value=2), bucket="gone"),
        post_bucket(receiver, {"bucketKey": "gone", "bucketName": "G"}),
    ):
        assert r.status_code == 400
        body = r.json()
        assert body["message"]["error"]["type"] == "BUCKET_REMOVED"
        assert body["message"]["error"]["message"]
    assert [e["value"] for e in receiver.events("gone")] == [1]
    assert "gone" not in receiver.buckets


# -- events -----------------------------------------------------------------------------------


def test_single_event_to_unknown_bucket_is_stored_and_bucket_recorded(receiver: Receiver) -> None:
    r = post_events(receiver, ev("temp", 21.5, epoch=1700000000.25), bucket="new_bucket")
    assert r.status_code == 204
    assert r.content == b""
    assert receiver.events() == [
        {"key": "temp", "value": 21.5, "epoch": 1700000000.25, "bucket_key": "new_bucket"}
    ]
    assert receiver.buckets == {"new_bucket": "new_bucket"}


def test_types_order_and_fields_are_kept_exactly(receiver: Receiver) -> None:
    batch = [
        ev("i", 1),
        ev("f", 1.0),
        ev("s", "1"),
        ev("b", True),
        ev("big", 2**70),
        ev("neg", -0.5, epoch="1700000000.123456789"),
        ev(":sunny: key", "emoji ok", iso8601="2024-01-02T03:04:05Z"),
        ev("e", False, epoch=1700000000),
    ]
    assert post_events(receiver, batch).status_code == 204
    got = receiver.events("bkt")
    assert [e["key"] for e in got] == [e["key"] for e in batch]
    for sent, stored in zip(batch, got, strict=True):
        assert type(stored["value"]) is type(sent["value"])
        assert stored["value"] == sent["value"]
        assert {k: v for k, v in stored.items() if k != "bucket_key"} == sent
    assert type(got[5]["epoch"]) is str
    assert type(got[7]["epoch"]) is int


def test_events_are_split_by_bucket(receiver: Receiver) -> None:
    post_events(receiver, [ev("a", 1), ev("a", 2)], bucket="one")
    post_events(receiver, [ev("b", 3)], bucket="two")
    post_events(receiver, [ev("a", 4)], bucket="one")
    assert [e["value"] for e in receiver.events("one")] == [1, 2, 4]
    assert [e["value"] for e in receiver.events("two")] == [3]
    assert [e["value"] for e in receiver.events()] == [1, 2, 3, 4]
    assert receiver.events("nope") == []
    assert receiver.stats()["events"] == 4


def test_limits_at_the_edge_are_accepted(receiver: Receiver) -> None:
    r = post_events(receiver, [ev("k" * 250, "v" * 2000)])
    assert r.status_code == 204
    assert len(receiver.events()) == 1


INVALID_EVENTS = {
    "not an object": ["temp"],
    "missing key": [{"value": 1}],
    "empty key": [ev("", 1)],
    "key not a string": [ev(5, 1)],  # type: ignore[arg-type]
    "key too long": [ev("k" * 251, 1)],
    "missing value": [{"key": "temp"}],
    "null value": [ev("temp", None)],
    "list value": [ev("temp", [1, 2])],
    "object value": [ev("temp", {"a": 1})],
    "value too long": [ev("temp", "v" * 2001)],
    "bool epoch": [ev("temp", 1, epoch=True)],
    "word epoch": [ev("temp", 1, epoch="yesterday")],
    "null epoch": [ev("temp", 1, epoch=None)],
    "numeric iso8601": [ev("temp", 1, iso8601=20240101)],
    "one bad in a batch": [ev("a", 1), ev("b", 2), ev("c", None), ev("d", 4)],
}


@pytest.mark.parametrize("events", INVALID_EVENTS.values(), ids=INVALID_EVENTS.keys())
def test_invalid_event_is_400_and_nothing_stored(receiver: Receiver, events: Any) -> None:
    r = post_events(receiver, events)
    assert r.status_code == 400
    err = r.json()["message"]["error"]
    assert err["type"] == "INVALID_EVENT"
    bad = 2 if len(events) > 1 else 0
    assert err["message"].startswith(f"event {bad}: ")
    assert receiver.events() == []
    assert receiver.buckets == {}


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_400(receiver: Receiver, literal: str) -> None:
    r = post_events(receiver, None, raw=f'[{{"key": "t", "value": {literal}}}]')
    assert r.status_code == 400
    assert "finite" in r.json()["message"]["error"]["message"]
    r = post_events(receiver, None, raw=f'{{"key": "t", "value": 1, "epoch": {literal}}}')
    assert r.status_code == 400
    assert receiver.events() == []


@pytest.mark.parametrize("raw", ["{not json", '"just a string"', "42", b"\xff\xfe\x00"])
def test_malformed_body_is_400(receiver: Receiver, raw: str | bytes) -> None:
    r = post_events(receiver, None, raw=raw)
    assert r.status_code == 400
    assert error_type(r) in {"INVALID_JSON", "INVALID_EVENT"}
    assert receiver.events() == []


def test_custom_max_key_length(make_receiver: MakeReceiver) -> None:
    rx = make_receiver(max_key_length=100)
    assert post_events(rx, ev("k" * 101)).status_code == 400
    assert post_events(rx, ev("k" * 100)).status_code == 204


def test_missing_bucket_key_header_is_400(receiver: Receiver) -> None:
    r = post_events(receiver, ev(), bucket=None)
    assert r.status_code == 400
    assert error_type(r) == "INVALID_BUCKET_KEY"


def test_query_string_form(receiver: Receiver) -> None:
    before = time.time()
    r = requests.get(
        receiver.api_base + "/events",
        params={"accessKey": "ak", "bucketKey": "qs", "temp": "32", "hum": "40.5", "on": "true"},
        timeout=TIMEOUT,
    )
    after = time.time()
    assert r.status_code == 204
    got = receiver.events("qs")
    assert [(e["key"], e["value"]) for e in got] == [
        ("temp", "32"),
        ("hum", "40.5"),
        ("on", "true"),
    ]
    for e in got:
        assert before <= e["epoch"] <= after
        assert e["bucket_key"] == "qs"
    assert receiver.buckets == {"qs": "qs"}


def test_query_string_form_needs_a_key(receiver: Receiver) -> None:
    r = requests.get(
        receiver.api_base + "/events", params={"bucketKey": "qs", "t": "1"}, timeout=TIMEOUT
    )
    assert r.status_code == 401
    assert receiver.events() == []


# -- access keys ------------------------------------------------------------------------------


def test_configured_access_keys(make_receiver: MakeReceiver) -> None:
    rx = make_receiver(access_keys=["good", "also-good"])
    for key in ("bad", ""):
        r = post_events(rx, ev(), key=key)
        assert r.status_code == 401
        assert r.content == b'{"message":{"error":{"type":"ACCESS_DENIED_KEY"}}}'
        assert post_bucket(rx, {"bucketKey": "b", "bucketName": "B"}, key=key).status_code == 401
    r = requests.post(rx.api_base + "/events", json=ev(), headers={"X-IS-BucketKey": "b"})
    assert r.status_code == 401
    assert post_events(rx, ev(value=1), key="good").status_code == 204
    assert post_events(rx, ev(value=2), key="also-good").status_code == 204
    assert [e["value"] for e in rx.events()] == [1, 2]
    assert rx.stats()["statuses"] == {204: 2, 401: 5}


def test_any_nonempty_key_when_not_configured(receiver: Receiver) -> None:
    assert post_events(receiver, ev(), key="anything").status_code == 204
    assert post_events(receiver, ev(), key="").status_code == 401
    r = requests.post(receiver.api_base + "/events", json=ev(), headers={"X-IS-BucketKey": "b"})
    assert r.status_code == 401
    assert len(receiver.events()) == 1


def test_access_key_never_appears_in_answers_or_stats(make_receiver: MakeReceiver) -> None:
    secret = "SECRET-ak-7f3e9c"
    rx = make_receiver(access_keys=[secret], rate_limit=2, rate_window=60, monthly_cap=3)
    session = requests.Session()
    answers = [
        post_bucket(rx, {"bucketKey": "b", "bucketName": "B"}, key=secret, session=session),
        post_events(rx, [ev(), ev()], key=secret, session=session),
        post_events(rx, [ev(), ev()], key=secret, session=session),  # 429 (limit 2)
        post_events(rx, ev(None), key=secret + "x", session=session),  # 401
        post_events(rx, ev(), key=secret, bucket="a:b", session=session),  # 429 again
        session.get(f"{rx.api_base}/nope?accessKey={secret}", timeout=TIMEOUT),  # 404
        session.get(f"{rx.api_base}/buckets?accessKey={secret}", timeout=TIMEOUT),  # 405
        session.get(f"{rx.host_base}/_receiver/stats", timeout=TIMEOUT),
        session.get(f"{rx.host_base}/_receiver/events", timeout=TIMEOUT),
    ]
    assert [a.status_code for a in answers] == [201, 204, 429, 401, 429, 404, 405, 200, 200]
    rx2 = make_receiver(access_keys=[secret])
    answers += [
        post_events(rx2, ev(), key=secret, bucket="a:b"),  # 400 bucket key
        post_events(rx2, ev(None), key=secret),  # 400 event
        post_events(rx2, None, key=secret, raw="{"),  # 400 json
    ]
    assert [a.status_code for a in answers[-3:]] == [400, 400, 400]
    for a in answers:
        assert secret not in a.text
        assert secret not in repr(dict(a.headers))
    for r in (rx, rx2):
        assert secret not in json.dumps(r.stats())
        assert secret not in repr(r)


# -- monthly cap --------------------------------------------------------------------------------


def test_monthly_cap_is_402_and_not_stored(make_receiver: MakeReceiver) -> None:
    rx = make_receiver(monthly_cap=10)
    assert post_events(rx, [ev(value=i) for i in range(6)]).status_code == 204
    r = post_events(rx, [ev(value=i) for i in range(5)])
    assert r.status_code == 402
    assert len(rx.events()) == 6
    assert post_events(rx, [ev(value=i) for i in range(4)]).status_code == 204
    assert post_events(rx, ev()).status_code == 402
    assert len(rx.events()) == 10


# -- rate limit -------------------------------------------------------------------------------


def at_window_start(window: float, need: float = 0.3) -> None:
    """Sleep, if needed, so that at least `need` seconds of the current window remain."""
    left = window - (time.time() % window)
    if left < need:
        time.sleep(left + 0.01)


def test_rate_limit_headers_429_and_retry_after(make_receiver: MakeReceiver) -> None:
    window = 0.5
    rx = make_receiver(rate_limit=3, rate_window=window)
    session = requests.Session()
    at_window_start(window)
    expected_reset = (math.floor(time.time() / window) + 1) * window
    answers = [post_events(rx, ev(value=i), session=session) for i in range(3)]
    assert [a.status_code for a in answers] == [204, 204, 204]
    assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["2", "1", "0"]
    for a in answers:
        assert a.headers["X-RateLimit-Limit"] == "3"
        assert re.fullmatch(r"\d+\.\d{3}", a.headers["X-RateLimit-Reset"])
        assert float(a.headers["X-RateLimit-Reset"]) == pytest.approx(expected_reset, abs=1e-3)
        assert "Retry-After" not in a.headers

    for _ in range(3):  # a 429 consumes no budget, however many there are
        limited = post_events(rx, ev(value=99), session=session)
        assert limited.status_code == 429
        assert error_type(limited) == "RATE_LIMITED"
        assert limited.headers["Retry-After"] == "1"
        assert limited.headers["X-RateLimit-Remaining"] == "0"
        assert limited.headers["X-RateLimit-Limit"] == "3"
    assert [e["value"] for e in rx.events()] == [0, 1, 2]

    # another access key has its own budget
    assert post_events(rx, ev(value=3), key="other").headers["X-RateLimit-Remaining"] == "2"

    time.sleep(max(0.0, expected_reset - time.time()) + 0.01)
    answers = [post_events(rx, ev(value=i), session=session) for i in range(4)]
    assert [a.status_code for a in answers] == [204, 204, 204, 429]
    assert rx.stats()["statuses"] == {204: 7, 429: 4}


def test_rate_limit_headers_on_every_counted_answer(make_receiver: MakeReceiver) -> None:
    rx = make_receiver(rate_limit=100, rate_window=60)
    answers = [
        post_events(rx, ev(None)),  # 400
        post_bucket(rx, {"bucketKey": "b", "bucketName": "B"}),  # 201
        requests.get(rx.api_base + "/events", params={"accessKey": "ak", "bucketKey": "b", "t": 1}),
    ]
    assert [a.status_code for a in answers] == [400, 201, 204]
    assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["99", "98", "97"]
    unauth = post_events(rx, ev(), key="")
    assert unauth.status_code == 401
    assert "X-RateLimit-Limit" not in unauth.headers


def test_no_rate_headers_without_rate_limit(receiver: Receiver) -> None:
    r = post_events(receiver, ev())
    assert r.status_code == 204
    assert not [h for h in r.headers if h.lower().startswith("x-ratelimit")]


# -- body size, keep-alive, HTTP plumbing ---------------------------------------------------------


def test_body_over_max_body_is_413_and_connection_survives(make_receiver: MakeReceiver) -> None:
    rx = make_receiver(max_body=1000)
    session = requests.Session()
    big = [ev("k", "v" * 100) for _ in range(20)]
    r = post_events(rx, big, session=session)
    assert r.status_code == 413
    assert error_type(r) == "PAYLOAD_TOO_LARGE"
    assert post_events(rx, big[:5], session=session).status_code == 204
    assert len(rx.events()) == 5
    assert rx.stats()["connections"] == 1


def test_default_max_body_is_one_megabyte(receiver: Receiver) -> None:
    event = ev("k", "v" * 1900)  # about 1.9 kB each
    assert post_events(receiver, [event] * 500).status_code == 204
    assert post_events(receiver, [event] * 600).status_code == 413
    assert len(receiver.events()) == 500


def test_keep_alive_one_connection_for_many_requests(receiver: Receiver) -> None:
    session = requests.Session()
    statuses = []
    for i in range(30):
        statuses.append(post_events(receiver, ev(value=i), session=session).status_code)
        statuses.append(post_events(receiver, ev(value=None), session=session).status_code)
        statuses.append(post_events(receiver, ev(), key="", session=session).status_code)
        statuses.append(session.get(receiver.host_base + "/x", timeout=TIMEOUT).status_code)
        statuses.append(
            post_bucket(
                receiver, {"bucketKey": "b", "bucketName": "B"}, session=session
            ).status_code
        )
    assert statuses[:5] == [204, 400, 401, 404, 201]
    assert statuses[5:10] == [204, 400, 401, 404, 204]
    assert len(statuses) == 150
    stats = receiver.stats()
    assert stats["connections"] == 1
    assert stats["requests"] == 120  # the 404s are not API requests
    assert [e["value"] for e in receiver.events()] == list(range(30))


def test_content_length_on_every_answer_but_204(receiver: Receiver) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=TIMEOUT)
    h = headers()
    cases = [
        ("POST", "/api/events", json.dumps(ev()), h, 204),
        ("POST", "/api/events", "{", h, 400),
        ("POST", "/api/buckets", json.dumps({"bucketKey": "x"}), h, 201),
        ("POST", "/api/events", json.dumps(ev()), {**h, "X-IS-AccessKey": ""}, 401),
        ("GET", "/elsewhere", None, {}, 404),
        ("DELETE", "/api/events", None, {}, 405),
        ("GET", "/_receiver/stats", None, {}, 200),
    ]
    for method, path, body, hdrs, status in cases:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        assert resp.status == status, (method, path)
        if status == 204:
            assert data == b""
            assert resp.getheader("Content-Length") is None
        else:
            assert resp.getheader("Content-Length") == str(len(data))
            if status != 201:  # 201 for a new bucket has no body
                assert resp.getheader("Content-Type") == "application/json"
                json.loads(data)
        assert not resp.will_close
    conn.close()
    assert receiver.stats()["connections"] == 1


def test_connection_close_is_honoured(receiver: Receiver) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=TIMEOUT)
    conn.request(
        "POST", "/api/events", body=json.dumps(ev()), headers={**headers(), "Connection": "close"}
    )
    resp = conn.getresponse()
    assert resp.status == 204
    assert resp.getheader("Connection") == "close"
    assert resp.will_close


def test_chunked_body(receiver: Receiver) -> None:
    payload = json.dumps([ev(value=i) for i in range(50)]).encode()

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(payload), 100):
            yield payload[i : i + 100]

    r = requests.post(receiver.api_base + "/events", data=chunks(), headers=headers())
    assert r.status_code == 204
    assert [e["value"] for e in receiver.events()] == list(range(50))


def test_unknown_path_404_and_wrong_method_405(receiver: Receiver) -> None:
    r = requests.post(receiver.host_base + "/api/other", json={}, timeout=TIMEOUT)
    assert r.status_code == 404
    assert error_type(r) == "NOT_FOUND"
    r = requests.get(receiver.api_base + "/buckets", timeout=TIMEOUT)
    assert r.status_code == 405
    assert r.headers["Allow"] == "POST"
    assert receiver.stats()["requests"] == 0


# -- faults -------------------------------------------------------------------------------------


def test_fault_5xx_before_validation(make_receiver: MakeReceiver) -> None:
    rx = make_receiver(faults=Faults(p_5xx=1.0))
    assert post_events(rx, ev()).status_code == 503
    assert post_events(rx, ev(None)).status_code == 503  # invalid, but the fault comes first
    assert post_bucket(rx, {"bucketKey": "b"}).status_code == 503
    assert rx.events() == []
    assert rx.buckets == {}
    rx.set_faults(p_5xx=0.0)
    assert post_events(rx, ev()).status_code == 204
    s = rx.stats()
    assert s["statuses"] == {503: 3, 204: 1}
    assert s["injected"]["5xx"] == 3


@pytest.mark.parametrize(("retry_after", "header"), [(2.0, "2"), (0.25, "0.25")])
def test_fault_429_with_retry_after(
    make_receiver: MakeReceiver, retry_after: float, header: str
) -> None:
    rx = make_receiver(faults=Faults(p_429=1.0, retry_after=retry_after))
    r = post_events(rx, ev())
    assert r.status_code == 429
    assert r.headers["Retry-After"] == header
    assert rx.events() == []


def test_fault_reset_before_is_a_tcp_reset_and_stores_nothing(make_receiver: MakeReceiver) -> None:
    rx = make_receiver(faults=Faults(p_reset_before=1.0))
    with pytest.raises(requests.exceptions.ConnectionError):
        post_events(rx, ev())
    with pytest.raises(requests.exceptions.ConnectionError):
        post_bucket(rx, {"bucketKey": "b"})
    # a real RST, not an orderly close
    with socket.create_connection(("127.0.0.1", rx.port), timeout=TIMEOUT) as sock:
        body = json.dumps(ev()).encode()
        head = (
            f"POST /api/events HTTP/1.1\r\nHost: x\r\nX-IS-AccessKey: ak\r\n"
            f"X-IS-BucketKey: b\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        sock.sendall(head + body)
        with pytest.raises(ConnectionResetError):
            sock.recv(1024)
    assert rx.events() == []
    assert rx.buckets == {}
    s = rx.stats()
    assert s["resets"] == 3
    assert s["injected"]["reset_before"] == 3
    assert s["statuses"] == {}


def test_fault_reset_after_stores_then_resets(make_receiver: MakeReceiver) -> None:
    rx = make_receiver(faults=Faults(p_reset_after=1.0))
    with pytest.raises(requests.exceptions.ConnectionError):
        post_events(rx, [ev(value=1), ev(value=2)])
    with pytest.raises(requests.exceptions.ConnectionError):
        post_bucket(rx, {"bucketKey": "made", "bucketName": "M"})
    assert [e["value"] for e in rx.events()] == [1, 2]
    assert rx.buckets == {"bkt": "bkt", "made": "M"}
    # a request that fails is answered, not reset
    assert post_events(rx, ev(None)).status_code == 400
    assert rx.stats()["resets"] == 2


def test_fault_rates_follow_probabilities_and_seed(make_receiver: MakeReceiver) -> None:
    faults = Faults(p_5xx=0.3, p_429=0.2)

    def run(seed: int) -> list[int]:
        rx = make_receiver(faults=faults, seed=seed)
        session = requests.Session()
        codes = [post_events(rx, ev(value=i), session=session).status_code for i in range(100)]
        assert len(rx.events()) == codes.count(204)
        return codes

    codes = run(7)
    assert 0.18 <= codes.count(503) / 100 <= 0.42
    assert 0.10 <= codes.count(429) / 100 <= 0.30
    assert set(codes) == {204, 429, 503}
    assert run(7) == codes
    assert run(8) != codes


def test_latency(make_receiver: MakeReceiver) -> None:
    rx = make_receiver(faults=Faults(latency=0.2))
    t0 = time.perf_counter()
    assert post_events(rx, ev()).status_code == 204
    assert time.perf_counter() - t0 >= 0.2
    rx.set_faults(latency=0.0)
    t0 = time.perf_counter()
    assert post_events(rx, ev()).status_code == 204
    assert time.perf_counter() - t0 < 0.2


def test_fault_validation() -> None:
    with pytest.raises(ValueError):
        Faults(p_5xx=1.5)
    with pytest.raises(ValueError):
        Faults(p_5xx=0.6, p_429=0.6)
    with pytest.raises(ValueError):
        Faults(latency=-1)
    rx = Receiver()
    try:
        with pytest.raises(TypeError):
            rx.set_faults(p_typo=0.1)
        with pytest.raises(ValueError):
            rx.set_faults(p_reset_before=-0.1)
    finally:
        rx.stop()


def test_outage_window(receiver: Receiver) -> None:
    session = requests.Session()
    assert post_events(receiver, ev(value=0), session=session).status_code == 204
    receiver.outage(0.3)
    t0 = time.monotonic()
    for i in range(3):
        with pytest.raises(requests.exceptions.ConnectionError):
            post_events(receiver, ev(value=i + 1), session=session)
    assert time.monotonic() - t0 < 0.3
    time.sleep(0.35)
    assert post_events(receiver, ev(value=9), session=session).status_code == 204
    assert [e["value"] for e in receiver.events()] == [0, 9]
    assert receiver.stats()["injected"]["outage"] == 3


# -- waiting, inspection, clearing -------------------------------------------------------------


def test_wait_for_blocks_until_events_arrive(receiver: Receiver) -> None:
    def later() -> None:
        time.sleep(0.1)
        post_events(receiver, [ev(value=i) for i in range(5)], bucket="w")

    t = threading.Thread(target=later)
    t.start()
    got = receiver.wait_for(5, "w", timeout=5)
    t.join()
    assert [e["value"] for e in got] == list(range(5))


def test_wait_for_timeout_says_what_arrived(receiver: Receiver) -> None:
    post_events(receiver, [ev(), ev()], bucket="w")
    t0 = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        receiver.wait_for(3, "w", timeout=0.2)
    assert 0.2 <= time.monotonic() - t0 < 1
    message = str(info.value)
    assert "3 events" in message
    assert "'w'" in message
    assert "but 2 arrived" in message
    assert "204: 1" in message


def test_inspection_endpoints(receiver: Receiver) -> None:
    post_events(receiver, [ev(value=1), ev(value=2.5)], bucket="a")
    post_events(receiver, ev(value="x"), bucket="b")
    stats = requests.get(receiver.host_base + "/_receiver/stats", timeout=TIMEOUT).json()
    assert stats["events"] == 3
    assert stats["requests"] == 2
    assert stats["statuses"] == {"204": 2}
    assert stats["buckets"] == 2
    events = requests.get(
        receiver.host_base + "/_receiver/events", params={"bucketKey": "a"}, timeout=TIMEOUT
    ).json()
    assert events == [
        {"key": "temp", "value": 1, "bucket_key": "a"},
        {"key": "temp", "value": 2.5, "bucket_key": "a"},
    ]
    everything = requests.get(receiver.host_base + "/_receiver/events", timeout=TIMEOUT).json()
    assert len(everything) == 3
    assert receiver.stats()["requests"] == 2  # inspection is not counted


def test_clear_forgets_state_but_keeps_configuration(make_receiver: MakeReceiver) -> None:
    rx = make_receiver(access_keys=["good"], monthly_cap=2)
    assert post_events(rx, [ev(), ev()], key="good").status_code == 204
    assert post_events(rx, ev(), key="good").status_code == 402
    rx.remove_bucket("old")
    rx.clear()
    assert rx.events() == []
    assert rx.buckets == {}
    s = rx.stats()
    assert (s["requests"], s["events"], s["connections"], s["statuses"]) == (0, 0, 0, {})
    assert post_events(rx, ev(), key="bad").status_code == 401
    assert post_events(rx, [ev(), ev()], key="good").status_code == 204
    assert post_events(rx, ev(), key="good", bucket="old").status_code == 402


# -- load ---------------------------------------------------------------------------------------


def test_concurrent_clients_lose_nothing_and_keep_order(receiver: Receiver) -> None:
    def client(n: int) -> None:
        session = requests.Session()
        for b in range(20):
            batch = [ev(f"c{n}", b * 100 + i) for i in range(100)]
            assert post_events(receiver, batch, session=session, bucket=f"c{n}").status_code == 204

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert receiver.stats()["events"] == 16000
    assert receiver.stats()["connections"] == 8
    for n in range(8):
        assert [e["value"] for e in receiver.events(f"c{n}")] == list(range(2000))


def test_throughput_over_50k_events_per_second(receiver: Receiver) -> None:
    session = requests.Session()
    now = time.time()
    body = json.dumps([ev(f"sensor_{i % 20}", i * 0.5, epoch=now + i) for i in range(500)])
    t0 = time.perf_counter()
    for _ in range(100):
        assert post_events(receiver, None, raw=body, session=session).status_code == 204
    elapsed = time.perf_counter() - t0
    assert receiver.stats()["events"] == 50_000
    assert 50_000 / elapsed > 50_000, f"{50_000 / elapsed:.0f} events/s"


# -- command line -------------------------------------------------------------------------------


def test_serve_main_runs_until_interrupted() -> None:
    secret = "SECRET-cli-key"
    code = "import sys; from isstreamer_jupyter.receiver import serve_main; sys.exit(serve_main())"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--port", "0", "--access-key", secret, "--rate-limit", "50"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.fullmatch(
            r"receiver listening on (http://127\.0\.0\.1:(\d+)/api) \(Ctrl-C to stop\)\n", line
        )
        assert m, line
        r = requests.post(
            m.group(1) + "/events", json=[ev(), ev()], headers=headers(secret), timeout=TIMEOUT
        )
        assert r.status_code == 204
        assert r.headers["X-RateLimit-Limit"] == "50"
        assert (
            requests.post(m.group(1) + "/events", json=ev(), headers=headers("x")).status_code
            == 401
        )
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert re.fullmatch(r"receiver stopped: 2 events .*2 requests.*\n", out), out
    assert "204: 1" in out and "401: 1" in out
    assert secret not in line + out + err


def test_serve_on_every_interface_says_which_address_to_use() -> None:
    """--host 0.0.0.0 printed http://0.0.0.0:PORT/api as the address to use: no client
    connects to that name."""
    code = "import sys; from isstreamer_jupyter.receiver import serve_main; sys.exit(serve_main())"
    proc = subprocess.Popen([sys.executable, "-c", code, "--port", "0", "--host", "0.0.0.0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.fullmatch(r"receiver listening on every interface, port (\d+): from this machine "
                         r"use (http://127\.0\.0\.1:\1/api), from others this machine's "
                         r"address \(Ctrl-C to stop\)\n", line)
        assert m, line
        assert requests.post(m.group(2) + "/buckets", json={"bucketKey": "k"},
                             headers=headers("any"), timeout=TIMEOUT).status_code in (201, 204)
    finally:
        proc.kill()
        proc.wait()


def test_serve_main_rejects_bad_probabilities(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        serve_main(["--port", "0", "--p-5xx", "1.5"])
    assert info.value.code == 2
    assert "--p-5xx must be between 0 and 1" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "said"), [
    (["--p-5xx", "0.6", "--p-429", "0.6"],
     "--p-reset-before + --p-5xx + --p-429 must be at most 1"),
    (["--p-reset-after", "-0.5"], "--p-reset-after must be between 0 and 1"),
    (["--latency", "-1"], "--retry-after and --latency must not be negative"),
    (["--rate-limit", "0"], "--rate-limit must be at least 1"),
    (["--rate-limit", "5", "--rate-window", "0"], "--rate-window must be positive"),
])
def test_serve_main_names_the_options_typed_not_python_names(
        capsys: pytest.CaptureFixture[str], argv: list[str], said: str) -> None:
    """From the command line the error said `p_reset_before + p_5xx + p_429`."""
    with pytest.raises(SystemExit) as info:
        serve_main(["--port", "0", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"serve: error: {said}" in err
    assert not re.search(r"\b[a-z0-9]+_[a-z0-9_]+\b", err.split("serve: error:")[1]), err
