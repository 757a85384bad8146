"""The widget panel, headless: built against the loopback receiver over real HTTP, its buttons
clicked and its values read as the browser would get them.

Each delivery state is driven by a receiver fault; the panel is advanced with ``refresh()``
(or, in the refresh tests, by its own loop and watchdog).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import comm
import ipywidgets
import pytest

from isstreamer_jupyter import ConfigError, DeliveryError, IsStreamerWarning, Streamer
from isstreamer_jupyter import _panel as panel_mod
from isstreamer_jupyter._panel import Panel, close_panels, show, sparkline
from isstreamer_jupyter._stats import status_text
from isstreamer_jupyter.receiver import Faults, Receiver

SECRET = "Zq7-SECRET-access-key-4f1d9c"
# The fault tests make the streamer warn (at log(), flush() and close()), as it should; what
# matters here is what the panel shows. One test checks a warning with pytest.warns.
pytestmark = pytest.mark.filterwarnings("ignore::isstreamer_jupyter.IsStreamerWarning")


# ----------------------------------------------------------------------------- helpers
@pytest.fixture
def make_streamer(tmp_path: Path) -> Iterator[Callable[..., Streamer]]:
    """``make_streamer(receiver, **Streamer kwargs)``: a streamer on the loopback receiver,
    unpaced, with its own spool under tmp_path; closed (and its panels too) at teardown."""
    made: list[Streamer] = []

    def factory(rx: Receiver | None, **kwargs: Any) -> Streamer:
        kwargs.setdefault("bucket_name", "panel test")
        kwargs.setdefault("access_key", "panel-test-key")
        if rx is not None:
            kwargs.setdefault("api_base", rx.api_base)
        kwargs.setdefault("max_requests_per_second", 0)
        kwargs.setdefault("spool_dir", tmp_path / f"spool{len(made)}")
        streamer = Streamer(**kwargs)
        made.append(streamer)
        return streamer

    yield factory
    close_panels()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for streamer in made:
            with contextlib.suppress(DeliveryError):  # debug_level >= 2 raises
                streamer.close(timeout=0.5)


def field(panel: Panel, name: str) -> str:
    """The text the browser shows in the element marked ``data-field=name``."""
    for widget in panel._widgets():
        value = getattr(widget, "value", None)
        if isinstance(value, str) and f'data-field="{name}"' in value:
            match = re.search(rf'<(\w+)[^>]* data-field="{name}"[^>]*>(.*?)</\1>', value, re.S)
            assert match, value
            return html.unescape(re.sub(r"<[^>]+>", "", match.group(2)))
    raise AssertionError(f"no data-field={name!r} in the panel")


def state(panel: Panel) -> str:
    match = re.search(r'data-state="([a-z_]+)"', panel.header.value)
    assert match, panel.header.value
    return match.group(1)


def counters(panel: Panel) -> dict[str, str]:
    return {name: field(panel, name) for name, _ in panel_mod.COUNTERS}


def wait_for(panel: Panel, check: Callable[[], bool], timeout: float = 10.0,
             what: str = "condition") -> None:
    """Refresh the panel until `check()` holds; fail with what the panel shows."""
    deadline = time.monotonic() + timeout
    while True:
        panel.refresh()
        if check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout} s; panel shows:\n"
                                 f"{status_text(panel.stats)}")  # type: ignore[arg-type]
        time.sleep(0.05)


def everything_shown(panel: Panel) -> str:
    """Every string a browser could show or get: widget values, labels, options, tooltips."""
    parts = []
    for widget in panel._widgets():
        for name in ("value", "description", "placeholder", "tooltip", "icon", "titles",
                     "_options_labels"):
            value = getattr(widget, name, None)
            if value is not None:
                parts.append(json.dumps(value, default=str))
    parts.append(panel._repr_mimebundle_()["text/plain"])
    return "\n".join(parts)


# ----------------------------------------------------------------------------- states
def test_online_counters_signals_and_header(receiver: Receiver, make_streamer) -> None:
    streamer = make_streamer(receiver, bucket_name="Greenhouse")
    panel = Panel(streamer)
    for i in range(30):
        streamer.log("temperature", 20 + i % 5)
    streamer.log("door", "open")
    assert streamer.flush(10)
    panel.refresh()
    shown = counters(panel)
    assert shown["sent"] == "31"
    assert (shown["queued"], shown["in_flight"], shown["retried"], shown["dropped"]) == (
        "0", "0", "0", "0")
    assert state(panel) == "online" and field(panel, "state") == "online"
    assert field(panel, "bucket_name") == "Greenhouse"
    assert field(panel, "bucket_key") == streamer.BucketKey
    table = panel.signals.value
    assert "<code>temperature</code>" in table and "<code>door</code>" in table
    rows = re.findall(r"<tr><td><code>(.*?)</code></td><td>(.*?)</td><td class=\"n\">(\d+)",
                      table)
    assert rows == [("door", "open", "1"), ("temperature", "24", "30")]
    assert table.count("<polyline") == 1  # only the numeric signal has a sparkline
    assert len(receiver.events(streamer.BucketKey)) == 31


def test_backing_off_during_an_outage(receiver: Receiver, make_streamer) -> None:
    streamer = make_streamer(receiver)
    panel = Panel(streamer)
    wait_for(panel, lambda: state(panel) == "online", what="online")
    receiver.outage(2.0)
    for i in range(5):
        streamer.log("pressure", 1000 + i)
    wait_for(panel, lambda: state(panel) == "backing_off", what="backing off")
    assert re.fullmatch(r"backing off · retry in \d+ s", field(panel, "state"))
    assert int(counters(panel)["retried"]) >= 1
    assert int(counters(panel)["queued"]) + int(counters(panel)["in_flight"]) == 5
    # (the badge counts down to the retry; the last error is the error alone)
    assert field(panel, "last_error") and "retrying in" not in field(panel, "last_error")
    assert "retried with backoff" in field(panel, "remedy")
    wait_for(panel, lambda: counters(panel)["sent"] == "5", timeout=20, what="delivery")
    assert state(panel) == "online"
    assert "since resolved" in field(panel, "last_error")
    assert len(receiver.events(streamer.BucketKey)) == 5


def test_rate_limited_shows_reset_time_and_budget(make_receiver, make_streamer) -> None:
    rx = make_receiver(rate_limit=50, rate_window=600.0)
    streamer = make_streamer(rx)
    panel = Panel(streamer)
    wait_for(panel, lambda: state(panel) == "online", what="online")  # the bucket: 1 request
    assert counters(panel)["budget"] == "49/50"
    assert 'title="resets ' in panel.counters["budget"].value
    rx.set_faults(p_429=1.0, retry_after=3)
    streamer.log("speed", 1.5)
    wait_for(panel, lambda: state(panel) == "rate_limited", what="rate limited")
    assert re.fullmatch(r"rate limited · until \d\d:\d\d:\d\d \([123] s\)",
                        field(panel, "state"))
    assert int(counters(panel)["retried"]) >= 1
    assert "max_requests_per_second" in field(panel, "remedy")
    rx.set_faults(p_429=0.0)
    wait_for(panel, lambda: counters(panel)["sent"] == "1", timeout=15, what="delivery")
    assert state(panel) == "online"
    assert counters(panel)["budget"] == "48/50"


def test_budget_used_up_waits_without_a_429(make_receiver, make_streamer) -> None:
    rx = make_receiver(rate_limit=1, rate_window=2.0)
    streamer = make_streamer(rx)
    panel = Panel(streamer)
    wait_for(panel, lambda: counters(panel)["budget"] == "0/1", what="budget used up")
    streamer.log("speed", 1.5)
    wait_for(panel, lambda: counters(panel)["sent"] == "1", timeout=15, what="delivery")
    assert rx.stats()["statuses"].get(429) is None
    assert state(panel) == "online"


def test_stopped_access_key_refused(make_receiver, make_streamer) -> None:
    rx = make_receiver(access_keys={"the-right-key"})
    streamer = make_streamer(rx, access_key=SECRET)
    panel = Panel(streamer)
    for i in range(3):
        streamer.log("x", i)
    wait_for(panel, lambda: state(panel) == "stopped", what="stopped")
    assert field(panel, "state") == "stopped · access key refused"
    assert "AccessKey" in field(panel, "remedy")
    assert counters(panel)["sent"] == "0"
    wait_for(panel, lambda: counters(panel)["queued"] == "3", what="3 queued")
    assert_no_secret(panel)


def test_stopped_monthly_cap(make_receiver, make_streamer) -> None:
    rx = make_receiver(monthly_cap=10)
    streamer = make_streamer(rx)
    panel = Panel(streamer)
    for i in range(10):
        streamer.log("x", i)
    assert streamer.flush(10)
    for i in range(4):
        streamer.log("x", i)
    wait_for(panel, lambda: state(panel) == "stopped", what="stopped")
    assert field(panel, "state") == "stopped · monthly cap reached"
    assert "monthly reset" in field(panel, "remedy")
    assert counters(panel)["sent"] == "10"


def test_stopped_bucket_deleted_then_switch_away(receiver: Receiver, make_streamer) -> None:
    streamer = make_streamer(receiver, bucket_name="doomed")
    panel = Panel(streamer)
    streamer.log("x", 1)
    assert streamer.flush(10)
    receiver.remove_bucket(streamer.BucketKey)
    streamer.log("x", 2)
    wait_for(panel, lambda: state(panel) == "stopped", what="stopped")
    assert field(panel, "state") == "stopped · bucket deleted"
    assert "set_bucket" in field(panel, "remedy")

    panel.bucket_text.value = "fresh start"
    panel.switch_button.click()
    assert streamer.BucketName == "fresh start"
    assert field(panel, "bucket_name") == "fresh start"
    with pytest.warns(IsStreamerWarning, match="deleted bucket"):  # said once, at the next log
        streamer.log("x", 3)
    got = receiver.wait_for(1, streamer.BucketKey, timeout=10)
    assert [e["value"] for e in got] == [3]
    wait_for(panel, lambda: state(panel) == "online", what="online in the new bucket")


def test_recording_offline(tmp_path: Path, make_streamer) -> None:
    out = tmp_path / "recorded.csv"
    streamer = make_streamer(None, offline=True, offline_file=str(out))
    panel = Panel(streamer)
    for i in range(4):
        streamer.log("level", i)
    assert streamer.flush(10)
    panel.refresh()
    assert state(panel) == "offline"
    assert field(panel, "state") == "recording offline"
    assert str(out) in html.unescape(panel.header.value)
    assert "offline mode is on" in field(panel, "reason")
    assert counters(panel)["sent"] == "4"
    assert ">recorded</div>" in panel.counters["sent"].value  # its label: nothing was sent
    assert out.read_text().count("level") == 4


def test_connecting_before_anything_is_acknowledged(make_receiver, make_streamer) -> None:
    rx = make_receiver(faults=Faults(latency=1.0))
    streamer = make_streamer(rx)
    panel = Panel(streamer)
    assert state(panel) == "connecting"
    assert field(panel, "state") == "connecting"


def test_closed_streamer_shows_stopped_closed(receiver: Receiver, make_streamer) -> None:
    streamer = make_streamer(receiver)
    panel = Panel(streamer)
    streamer.close(timeout=5)
    panel.refresh()
    assert field(panel, "state") == "stopped · closed"


# ----------------------------------------------------------------------------- the access key
def assert_no_secret(panel: Panel) -> None:
    shown = everything_shown(panel)
    for piece in (SECRET, SECRET[:6], SECRET[-6:], "SECRET-access"):
        assert piece not in shown


def test_access_key_never_shown(make_receiver, make_streamer) -> None:
    rx = make_receiver()
    streamer = make_streamer(rx, access_key=SECRET, debug_level=3, flush_timeout=1)
    panel = Panel(streamer)
    panel.log_section.selected_index = 0
    streamer.log("x", 1)
    assert streamer.flush(10)
    rx.set_faults(p_5xx=1.0)
    streamer.log("x", 2)
    wait_for(panel, lambda: state(panel) == "backing_off", what="backing off")
    panel.flush_button.click()
    panel.wait_flush(15)
    rx.set_faults(p_5xx=0.0)
    panel.refresh()
    assert "HTTP" in field(panel, "log")  # debug level 3 logs every request
    assert_no_secret(panel)


# ----------------------------------------------------------------------------- buckets
def test_switch_bucket_with_text_and_button(receiver: Receiver, make_streamer) -> None:
    streamer = make_streamer(receiver, bucket_name="first")
    panel = Panel(streamer)
    streamer.log("n", 1)
    old_key = streamer.BucketKey
    panel.bucket_text.value = "second bucket"
    panel.switch_button.click()
    assert panel.bucket_text.value == ""
    assert "now sending to 'second bucket'" in field(panel, "note")
    assert field(panel, "bucket_name") == "second bucket"
    new_key = streamer.BucketKey
    assert new_key != old_key
    for i in range(2, 5):
        streamer.log("n", i)
    assert streamer.flush(10)
    assert [e["value"] for e in receiver.wait_for(1, old_key)] == [1]
    assert [e["value"] for e in receiver.wait_for(3, new_key)] == [2, 3, 4]
    assert receiver.buckets[new_key] == "second bucket"
    panel.refresh()
    labels = [label for label, _ in panel.bucket_menu.options]
    assert labels == [f"first ({old_key})", f"second bucket ({new_key})"]
    assert panel.bucket_menu.value == ("second bucket", new_key)

    panel.bucket_menu.value = ("first", old_key)  # the drop-down switches back
    assert streamer.BucketKey == old_key
    streamer.log("n", 5)
    assert streamer.flush(10)
    assert [e["value"] for e in receiver.wait_for(2, old_key)] == [1, 5]


def test_switch_refuses_bad_names_and_empty_text(receiver: Receiver, make_streamer) -> None:
    streamer = make_streamer(receiver, bucket_name="keep")
    panel = Panel(streamer)
    panel.switch_button.click()
    assert field(panel, "note") == "type a bucket name first"
    panel.bucket_text.value = "x" * 300
    panel.switch_button.click()
    assert field(panel, "note").startswith("cannot switch: bucket name is 300 characters")
    assert streamer.BucketName == "keep"


# ----------------------------------------------------------------------------- flush, debug
def test_flush_button_never_blocks_and_reports(make_receiver, make_streamer) -> None:
    rx = make_receiver(faults=Faults(latency=0.4))
    streamer = make_streamer(rx)
    panel = Panel(streamer)
    for i in range(3):
        streamer.log("y", i)
    started = time.monotonic()
    panel.flush_button.click()
    assert time.monotonic() - started < 0.2  # the kernel goes on
    assert panel.flushing
    assert panel.flush_button.disabled and panel.flush_button.icon == "spinner spin"
    assert panel.flush_button.description == "Flushing…"
    assert field(panel, "note") == "flushing…"
    panel.flush_button.click()  # a second click while flushing does nothing
    assert panel.wait_flush(15)
    panel.refresh()
    assert not panel.flushing and not panel.flush_button.disabled
    assert panel.flush_button.icon == "paper-plane"
    assert re.fullmatch(r"flush: 3 events delivered in \d+\.\d s", field(panel, "note"))
    assert counters(panel)["sent"] == "3"


def test_flush_button_reports_events_lost_since_the_last_flush(receiver: Receiver,
                                                              make_streamer) -> None:
    streamer = make_streamer(receiver, spool=False, max_queue=5)
    panel = Panel(streamer)
    wait_for(panel, lambda: state(panel) == "online", what="online")
    receiver.outage(30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(12):
            streamer.log("y", i)
        streamer._sender.drain()  # (what the sender does within spool_interval)
        receiver.outage(0)
        panel.flush_button.click()
        assert panel.wait_flush(30)
    panel.refresh()
    dropped = streamer.stats().dropped
    assert dropped >= 5  # (a batch under way when the queue overflowed is not dropped)
    assert field(panel, "note").startswith(
        f"flush: {dropped} events were lost since the last flush ({dropped} dropped, 0 refused; "
        f"no other event was lost): "), field(panel, "note")
    assert counters(panel)["dropped"] == str(dropped)


def test_flush_button_reports_what_is_left(receiver: Receiver, make_streamer) -> None:
    streamer = make_streamer(receiver, flush_timeout=0.5)
    panel = Panel(streamer)
    wait_for(panel, lambda: state(panel) == "online", what="online")
    receiver.outage(30)
    streamer.log("y", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        panel.flush_button.click()
        assert panel.wait_flush(10)
    panel.refresh()
    note = field(panel, "note")
    assert note.startswith("flush: 1 event not delivered: none acknowledged for 0.5 s (backing "
                           "off after "), note
    assert note.endswith("; they stay queued and will be sent"), note
    receiver.outage(0)


def test_flush_button_at_debug_level_2_catches_the_error(make_receiver, make_streamer) -> None:
    rx = make_receiver(access_keys={"other"})
    streamer = make_streamer(rx, debug_level=2)
    panel = Panel(streamer)
    streamer.log("y", 1)
    panel.flush_button.click()
    assert panel.wait_flush(15)
    panel.refresh()
    assert "refused the access key" in field(panel, "note")


def test_debug_level_selector(receiver: Receiver, make_streamer) -> None:
    streamer = make_streamer(receiver)
    panel = Panel(streamer)
    assert panel.debug_level.value == 0
    panel.debug_level.value = 3
    assert streamer.DebugLevel == 3
    panel.log_section.selected_index = 0
    streamer.log("z", 1)
    assert streamer.flush(10)
    wait_for(panel, lambda: re.search(r"1 event to bucket \S+: HTTP 204 \(accepted\) after "
                                      r"[0-9.]+ ms", field(panel, "log")), what="HTTP in the log")
    streamer.DebugLevel = 1  # changed elsewhere: the selector follows
    panel.refresh()
    assert panel.debug_level.value == 1
    with pytest.raises(ConfigError, match="from 0 to 3"):  # (the menu holds every level)
        streamer.DebugLevel = 7
    panel.refresh()
    assert panel.debug_level.value == 1 and streamer.DebugLevel == 1


def test_debug_log_newest_first_escaped_and_bounded(receiver: Receiver, make_streamer) -> None:
    streamer = make_streamer(receiver)
    panel = Panel(streamer)
    panel.refresh()
    assert panel.log_view.value == ""  # built only once opened
    panel.log_section.selected_index = 0
    assert field(panel, "log") == "no messages yet"
    for i in range(panel_mod.LOG_LINES + 50):
        streamer._say(logging.WARNING, f"message {i} <b>")
    panel.refresh()
    lines = field(panel, "log").splitlines()
    assert len(lines) == panel_mod.LOG_LINES
    assert lines[0].endswith(f"WARNING message {panel_mod.LOG_LINES + 49} <b>")
    assert "&lt;b&gt;" in panel.log_view.value and "<b>" not in panel.log_view.value
    assert lines == list(reversed(streamer.messages(logging.DEBUG)))[:panel_mod.LOG_LINES]
    streamer._say(logging.WARNING, "one more")
    panel.refresh()
    assert field(panel, "log").splitlines()[0].endswith("WARNING one more")
    streamer.ring.clear()
    panel.refresh()
    assert field(panel, "log") == "no messages yet"


# ----------------------------------------------------------------------------- signals
def test_signals_table_escapes_caps_and_draws(receiver: Receiver, make_streamer,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(panel_mod, "MAX_ROWS", 5)
    streamer = make_streamer(receiver)
    panel = Panel(streamer)
    assert field(panel, "signals") == "no signals logged yet"
    streamer.log("<script>alert(1)</script>", "<img src=x onerror=alert(1)>")
    for i in range(7):
        streamer.log(f"s{i}", 1.25 * i)
        streamer.log(f"s{i}", 2.5 * i)
    streamer.log("flag", True)
    streamer.log("long", "é" * 100)
    assert streamer.flush(10)
    panel.refresh()
    table = panel.signals.value
    assert "<script>" not in table and "<img" not in table
    assert "&lt;script&gt;" in table
    assert table.count("<tr><td>") == 5
    assert "and 5 more signals" in table
    assert ("é" * 39 + "…") in table
    assert ">True<" in table


def test_sparklines_redraw_within_a_bounded_budget(receiver: Receiver, make_streamer,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(panel_mod, "SPARK_REDRAWS", 3)
    streamer = make_streamer(receiver)
    panel = Panel(streamer)
    for key in "abcdefgh":
        streamer.log(key, 1)
        streamer.log(key, 2)
    assert streamer.flush(10)
    panel.refresh()
    assert panel.signals.value.count("<polyline") == 8  # new signals are drawn at once
    for key in "abcdefgh":
        streamer.log(key, 3)
    assert streamer.flush(10)
    calls = []
    real = panel_mod.sparkline
    monkeypatch.setattr(panel_mod, "sparkline", lambda v, **k: calls.append(v) or real(v, **k))
    panel.refresh()
    assert len(calls) == 3
    panel.refresh()
    panel.refresh()
    assert len(calls) == 8  # every stale sparkline had its turn, none twice
    panel.refresh()
    assert len(calls) == 8
    rows = dict(re.findall(r"<code>(\w)</code>.*?points=\"([^\"]*)\"", panel.signals.value))
    assert all(len(points.split()) == 3 for points in rows.values())


def test_sparkline_geometry() -> None:
    assert sparkline([]) == "" and sparkline([5.0]) == ""
    flat = sparkline([3, 3, 3])
    assert 'points="0,12 3,12 6,12"' in flat
    svg = sparkline([float(i) for i in range(100)])
    points = [tuple(map(int, p.split(","))) for p in
              re.search(r'points="([^"]*)"', svg).group(1).split()]
    assert len(points) == 40  # the newest that fit
    assert points[0] == (0, 22) and points[-1] == (117, 1)  # low at the bottom, high on top
    assert all(1 <= y <= 22 for _, y in points)
    assert sparkline([1e308, -1e308, 0.0]) == ""  # a span beyond floats: no drawing, no error
    assert "style=" in sparkline([1, 2], style=True)
    assert sparkline([1e-300, 2e-300]).count(",") == 2


# ----------------------------------------------------------------------------- comm traffic
class CountingComm(comm.base_comm.BaseComm):
    sent: list[tuple[str, dict[str, Any]]]

    def publish_msg(self, msg_type: str, data: Any = None, metadata: Any = None,
                    buffers: Any = None, **keys: Any) -> None:
        if not hasattr(self, "sent"):
            self.sent = []
        self.sent.append((msg_type, data or {}))


def test_refresh_sends_only_what_changed(receiver: Receiver, make_streamer,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(comm, "create_comm", CountingComm)
    streamer = make_streamer(receiver)
    panel = Panel(streamer)
    wait_for(panel, lambda: state(panel) == "online", what="online")
    def updates() -> list[tuple[Any, dict[str, Any]]]:
        found = []
        for widget in panel._widgets():
            for msg_type, data in getattr(widget.comm, "sent", []):
                if msg_type == "comm_msg" and data.get("method") == "update":
                    found.append((widget, data["state"]))
            widget.comm.sent = []
        return found

    panel.refresh()
    updates()
    panel.refresh()
    assert updates() == []  # nothing moved, nothing sent
    streamer.log("a", 1)
    assert streamer.flush(10)
    panel.refresh()
    changed = updates()
    widgets_changed = {id(w) for w, _ in changed}
    assert id(panel.counters["sent"]) in widgets_changed
    assert id(panel.signals) in widgets_changed
    assert id(panel.header) not in widgets_changed  # the state did not change
    assert id(panel.counters["dropped"]) not in widgets_changed
    assert all(list(s) == ["value"] for _, s in changed)


# ----------------------------------------------------------------------------- refreshing
def count_calls(panel: Panel, method: str = "refresh") -> list[str]:
    """Record the thread of every call of the panel's `method` from now on: "refresh", or
    "_tick" (each automatic tick, the loop's and the watchdog's, whether it refreshes or not)."""
    threads: list[str] = []
    real = getattr(panel, method)

    def record() -> Any:
        threads.append(threading.current_thread().name)
        return real()

    setattr(panel, method, record)
    return threads


def test_refreshes_on_the_loop_at_most_4_a_second(receiver: Receiver, make_streamer) -> None:
    streamer = make_streamer(receiver)
    panel = Panel(streamer)
    threads = count_calls(panel)
    loop = asyncio.new_event_loop()
    try:
        assert panel.start(loop) and panel.running
        assert panel.start(loop)  # once is enough
        streamer.log("v", 1)
        loop.run_until_complete(asyncio.sleep(2.0))
        assert 3 <= len(threads) <= 9, threads
        assert set(threads) == {threading.current_thread().name}  # the loop's own thread
        assert counters(panel)["sent"] == "1"  # it moved without a hand
        panel.close()
        assert not panel.running
        seen = len(threads)
        loop.run_until_complete(asyncio.sleep(0.8))
        assert len(threads) == seen
    finally:
        panel.close()
        loop.close()


def test_watchdog_takes_over_while_the_loop_is_blocked(receiver: Receiver,
                                                       make_streamer) -> None:
    streamer = make_streamer(receiver)
    panel = Panel(streamer)
    loop = asyncio.new_event_loop()
    try:
        panel.start(loop)
        loop.run_until_complete(asyncio.sleep(0.3))
        threads = count_calls(panel)
        started = time.monotonic()
        for i in range(5):  # a busy cell: the loop does not run
            streamer.log("busy", i)
            time.sleep(0.2)
        deadline = time.monotonic() + 10
        while counters(panel)["sent"] != "5":  # read, never refreshed by hand
            assert time.monotonic() < deadline, status_text(panel.stats)
            time.sleep(0.05)
        busy = time.monotonic() - started
        assert set(threads) == {"isstreamer-panel"}, threads
        assert len(threads) <= 4 * busy + 1
        threads.clear()
        loop.run_until_complete(asyncio.sleep(1.0))  # the loop is back: it refreshes
        assert threads and set(threads) == {threading.current_thread().name}, threads
    finally:
        panel.close()
        loop.close()


def test_no_watchdog_when_switched_off(receiver: Receiver, make_streamer,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(panel_mod, "LIVE_WHILE_BUSY", False)
    streamer = make_streamer(receiver)
    panel = Panel(streamer)
    loop = asyncio.new_event_loop()
    try:
        panel.start(loop)
        loop.run_until_complete(asyncio.sleep(0.3))
        threads = count_calls(panel)
        time.sleep(1.6)
        assert threads == []
    finally:
        panel.close()
        loop.close()


def test_refreshing_stops_once_the_streamer_is_closed(receiver: Receiver, make_streamer) -> None:
    streamer = make_streamer(receiver)
    panel = Panel(streamer)
    loop = asyncio.new_event_loop()
    try:
        panel.start(loop)
        streamer.close(timeout=5)
        loop.run_until_complete(asyncio.sleep(0.6))
        assert not panel.running and not panel.closed
        assert field(panel, "state") == "stopped · closed"
    finally:
        panel.close()
        loop.close()


def test_several_panels_and_streamers(make_receiver, make_streamer) -> None:
    rx1, rx2 = make_receiver(), make_receiver()
    one, two = make_streamer(rx1, bucket_name="one"), make_streamer(rx2, bucket_name="two")
    a, b, c = Panel(one), Panel(one), Panel(two)
    loop = asyncio.new_event_loop()
    try:
        for panel in (a, b, c):
            assert panel.start(loop)
        one.log("k", 1)
        two.log("k", 2)
        two.log("k", 3)
        loop.run_until_complete(asyncio.sleep(1.5))
        assert counters(a)["sent"] == counters(b)["sent"] == "1"
        assert counters(c)["sent"] == "2"
        assert field(c, "bucket_name") == "two"
        a.close()
        assert b.running and c.running
        assert close_panels(one) == 1
        assert not b.running and b.closed and c.running
        assert close_panels() == 1 and c.closed
    finally:
        close_panels()
        loop.close()


def test_closing_the_widget_closes_the_panel(receiver: Receiver, make_streamer) -> None:
    streamer = make_streamer(receiver)
    panel = Panel(streamer)
    loop = asyncio.new_event_loop()
    try:
        panel.start(loop)
        panel.widget.close()
        assert panel.closed and not panel.running
        assert all(w.comm is None for w in panel._widgets())
        panel.close()  # idempotent
        panel.refresh()  # harmless
        assert panel._repr_mimebundle_().keys() == {"text/plain"}
        assert not panel.start(loop)
    finally:
        loop.close()


def test_a_failing_refresh_stops_the_auto_refresh_quietly(receiver: Receiver, make_streamer,
                                                          caplog) -> None:
    streamer = make_streamer(receiver)
    panel = Panel(streamer)
    loop = asyncio.new_event_loop()
    try:
        panel.start(loop)

        def broken() -> Any:
            raise RuntimeError("boom")

        panel.refresh = broken  # type: ignore[method-assign]
        with caplog.at_level(logging.ERROR, logger="isstreamer_jupyter"):
            loop.run_until_complete(asyncio.sleep(0.6))
        assert not panel.running
        assert "panel refresh failed" in caplog.text
    finally:
        panel.close()
        loop.close()


# ----------------------------------------------------------------------------- views
def frontend_views(panel: Panel, count: int) -> None:
    """Say that the panel's widget has `count` views, the way the frontend does: a comm
    "update" of ``_view_count`` (ipywidgets' WidgetView sends one when a view of the model is
    displayed, and one when it is removed), handled as the kernel handles it."""
    widget_comm = panel.widget.comm
    widget_comm.handle_msg({"content": {"comm_id": widget_comm.comm_id, "data": {
        "method": "update", "state": {"_view_count": count}, "buffer_paths": []}},
        "buffers": []})


def test_refreshing_stops_when_every_view_is_gone_and_resumes_when_one_is_back(
        receiver: Receiver, make_streamer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(panel_mod, "BLOCKED_AFTER", 0.3)
    streamer = make_streamer(receiver)
    panel = Panel(streamer)
    assert panel.widget._view_count == 0  # tracked: the frontend keeps it up to date
    loop = asyncio.new_event_loop()
    try:
        assert panel.start(loop)
        ticks = count_calls(panel, "_tick")
        loop.run_until_complete(asyncio.sleep(0.6))
        assert ticks and panel.running  # no view reported yet (or no frontend): it refreshes
        frontend_views(panel, 1)  # the frontend displayed it
        assert panel.running
        frontend_views(panel, 0)  # and removed it: the output was cleared
        assert not panel.running
        assert panel not in panel_mod._watchdog.panels

        ticks.clear()
        refreshes = count_calls(panel)
        streamer.log("v", 1)
        assert streamer.flush(10)
        loop.run_until_complete(asyncio.sleep(0.8))  # the loop is free: nothing is scheduled
        time.sleep(0.8)  # the loop is blocked past BLOCKED_AFTER: the watchdog leaves it too
        assert ticks == [] and refreshes == []
        assert counters(panel)["sent"] == "0"

        frontend_views(panel, 1)  # shown again
        assert panel.running
        loop.run_until_complete(asyncio.sleep(0.8))
        assert counters(panel)["sent"] == "1"
        assert set(refreshes) == {threading.current_thread().name}  # on its loop, as before
        assert 1 <= len(ticks) <= 5  # one chain of ticks at 4 a second, not two
    finally:
        panel.close()
        loop.close()


def test_a_panel_without_views_starts_again_when_displayed(
        receiver: Receiver, make_streamer, monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.new_event_loop()
    monkeypatch.setattr(panel_mod, "_kernel_loop", lambda: loop)
    streamer = make_streamer(receiver)
    panel = Panel(streamer)
    try:
        panel._repr_mimebundle_()  # what display(panel) calls
        assert panel.running
        frontend_views(panel, 1)
        frontend_views(panel, 0)
        assert not panel.running
        bundle = panel._repr_mimebundle_()  # display(panel) again, in another cell
        view = bundle["application/vnd.jupyter.widget-view+json"]
        assert view["model_id"] == panel.widget.model_id
        assert panel.running  # at once: the count is still 0 until the new view reports
        refreshes = count_calls(panel)
        loop.run_until_complete(asyncio.sleep(0.6))
        assert refreshes
        frontend_views(panel, 1)  # the new view
        frontend_views(panel, 2)  # a second view came
        frontend_views(panel, 1)  # and went: one is left
        assert panel.running
        frontend_views(panel, 0)
        assert not panel.running
    finally:
        panel.close()
        loop.close()


@pytest.mark.parametrize("how", ["widget.close()", "Widget.close_all()"])
def test_a_closed_panel_without_views_never_starts_again(
        receiver: Receiver, make_streamer, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    loop = asyncio.new_event_loop()
    monkeypatch.setattr(panel_mod, "_kernel_loop", lambda: loop)
    streamer = make_streamer(receiver)
    panel = Panel(streamer)
    try:
        assert panel.start(loop)
        frontend_views(panel, 1)
        frontend_views(panel, 0)
        assert not panel.running  # waiting for a view, to start again
        if how == "widget.close()":
            panel.widget.close()
        else:  # closes every widget of this process: this test's are the only live ones
            ipywidgets.Widget.close_all()
        assert panel.closed
        # no frontend can send on a closed comm; even a count set here does not revive it
        panel.widget.set_state({"_view_count": 1})
        assert not panel.running
        assert panel._repr_mimebundle_().keys() == {"text/plain"}
        assert not panel.start(loop) and not panel.running
        ticks = count_calls(panel, "_tick")
        loop.run_until_complete(asyncio.sleep(0.6))
        assert ticks == []
    finally:
        panel.close()
        loop.close()


def test_view_counts_from_other_threads_leave_one_refresh_chain(
        receiver: Receiver, make_streamer, monkeypatch: pytest.MonkeyPatch) -> None:
    """View counts arrive on a kernel thread (the shell's, or a subshell's) while the loop
    and the watchdog refresh: however starts and stops interleave, what is left is one
    chain of ticks, or none."""
    monkeypatch.setattr(panel_mod, "BLOCKED_AFTER", 0.2)
    streamer = make_streamer(receiver)
    panel = Panel(streamer)
    loop = asyncio.new_event_loop()

    def flip(times: int) -> None:
        for i in range(1, times + 1):
            frontend_views(panel, i % 2)
            time.sleep(0.002)

    async def run_while(thread: threading.Thread) -> None:
        thread.start()
        busy = False
        while thread.is_alive():
            await asyncio.sleep(0.003)  # the loop runs its ticks
            if busy:
                time.sleep(0.3)  # a busy cell blocks the loop: the watchdog's turn
            busy = not busy

    try:
        assert panel.start(loop)
        flipper = threading.Thread(target=flip, args=(301,))  # ends on 1: a view
        loop.run_until_complete(run_while(flipper))
        assert panel.running
        ticks = count_calls(panel, "_tick")
        loop.run_until_complete(asyncio.sleep(1.0))
        assert 2 <= len(ticks) <= 6, ticks  # 4 a second: one chain
        flipper = threading.Thread(target=flip, args=(300,))  # ends on 0: no view
        loop.run_until_complete(run_while(flipper))
        assert not panel.running
        ticks.clear()
        loop.run_until_complete(asyncio.sleep(0.6))
        time.sleep(0.5)
        assert ticks == []
    finally:
        panel.close()
        loop.close()


# ----------------------------------------------------------------------------- display
def test_show_prints_the_text_status_outside_a_kernel(receiver: Receiver, make_streamer,
                                                      capsys) -> None:
    streamer = make_streamer(receiver, bucket_name="plain", access_key=SECRET)
    streamer.log("t", 1)
    assert streamer.flush(10)
    assert show(streamer) is None
    out = capsys.readouterr().out
    assert out.startswith("isstreamer_jupyter · online\n")
    assert f"bucket:  'plain' (key {streamer.BucketKey})" in out
    assert "1 sent" in out and "0 dropped" in out
    assert SECRET not in out
    streamer._ipython_display_()  # displaying a Streamer outside a kernel: the same text
    assert capsys.readouterr().out.startswith("isstreamer_jupyter · online\n")


def test_in_ipython_without_a_kernel_the_text_is_shown(receiver: Receiver, make_streamer,
                                                        capsys) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    InteractiveShell.instance()
    try:
        assert panel_mod._kernel_loop() is None
        show(make_streamer(receiver))
        assert "isstreamer_jupyter ·" in capsys.readouterr().out
    finally:
        InteractiveShell.clear_instance()


def test_without_ipywidgets(receiver: Receiver, make_streamer, capsys,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(panel_mod, "widgets", None)
    streamer = make_streamer(receiver)
    show(streamer)
    assert "isstreamer_jupyter ·" in capsys.readouterr().out
    with pytest.raises(ImportError, match=r"pip install 'isstreamer_jupyter\[jupyter\]'"):
        streamer.panel()


def test_importing_the_panel_module_without_ipywidgets(tmp_path: Path) -> None:
    import subprocess

    code = ("import sys; sys.modules['ipywidgets'] = None\n"
            "from isstreamer_jupyter._panel import show, Panel\n"
            "from isstreamer_jupyter import Streamer\n"
            f"s = Streamer(offline=True, offline_file={str(tmp_path / 'o.csv')!r}, spool=False)\n"
            "show(s)\n"
            "try:\n    Panel(s)\nexcept ImportError as e:\n    print('ImportError', e)\n"
            "s.close()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert "isstreamer_jupyter · recording offline" in done.stdout
    assert "ImportError the panel needs ipywidgets" in done.stdout


def test_show_in_a_kernel_displays_a_live_panel(receiver: Receiver, make_streamer,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import IPython.display

    loop = asyncio.new_event_loop()
    shown: list[dict[str, Any]] = []
    monkeypatch.setattr(panel_mod, "_kernel_loop", lambda: loop)
    monkeypatch.setattr(IPython.display, "display",
                        lambda obj: shown.append(obj._repr_mimebundle_()))
    try:
        streamer = make_streamer(receiver, access_key=SECRET)
        panel = show(streamer)
        assert isinstance(panel, Panel) and panel.running
        (bundle,) = shown
        view = bundle["application/vnd.jupyter.widget-view+json"]
        assert view["model_id"] == panel.widget.model_id
        assert bundle["text/plain"].startswith("isstreamer_jupyter · ")  # for text frontends
        assert SECRET not in json.dumps(bundle)
        assert isinstance(streamer.panel(), Panel)
        assert isinstance(panel.widget, ipywidgets.VBox)
        assert "Panel of <Streamer bucket='panel test'" in repr(panel)
    finally:
        close_panels()
        loop.close()


# ----------------------------------------------------------------------------- a real kernel
CELL_SETUP = """
import os, time
from isstreamer_jupyter import DeliveryError, IsStreamerWarning, Streamer
s = Streamer(bucket_name="kernel test", access_key="k", api_base=os.environ["RX"],
             max_requests_per_second=0, spool_dir=os.environ["SPOOL"])
p = s.panel()
display(p)
"""
CELL_BUSY = """
for i in range(16):  # 4 s: sends at about 1, 2 and 3 s are seen mid-cell
    s.log("busy", i)
    time.sleep(0.25)
"""
CELL_LOOP_ONLY = """
import isstreamer_jupyter._panel
isstreamer_jupyter._panel.LIVE_WHILE_BUSY = False
for i in range(8):
    s.log("loop only", i)
    time.sleep(0.25)
"""
CELL_AWAIT = """
import asyncio
import contextlib
for i in range(6):
    s.log("awaiting", i)
    await asyncio.sleep(0.25)
"""


def test_updates_flow_while_a_cell_is_busy(receiver: Receiver, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """In a real ipykernel: the panel's comm updates reach the frontend while a synchronous
    cell runs (from the watchdog thread) and while a cell awaits (from the loop)."""
    from jupyter_client.manager import start_new_kernel

    for name in ("JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR", "JUPYTER_CONFIG_DIR", "IPYTHONDIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    env = {**os.environ, "RX": receiver.api_base, "SPOOL": str(tmp_path / "spool")}
    km, kc = start_new_kernel(kernel_name="python3", env=env, startup_timeout=60)
    try:
        model_ids = _run(kc, CELL_SETUP)["display_models"]
        assert model_ids, "the panel was not displayed as a widget"
        during_busy = _run(kc, CELL_BUSY)
        sent_seen = [int(v) for v in re.findall(r'data-field="sent"[^>]*>(\d+)<',
                                                 " ".join(during_busy["updates"]))]
        # several distinct sent counts arrived while the cell was still busy
        assert len(set(sent_seen)) >= 3, sent_seen
        assert max(sent_seen) >= 6
        during_await = _run(kc, CELL_AWAIT)  # the loop runs while a cell awaits
        assert len(during_await["updates"]) >= 3
        # without the watchdog, a busy cell blocks the loop: the panel waits for the cell
        loop_only = _run(kc, CELL_LOOP_ONLY)
        sent_seen = re.findall(r'data-field="sent"[^>]*>(\d+)<', " ".join(loop_only["updates"]))
        assert len(set(sent_seen)) <= 1, sent_seen
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def _run(kc: Any, code: str, timeout: float = 60) -> dict[str, Any]:
    """Execute `code`; collect, until the kernel is idle again, the widget models displayed
    and the panel's comm updates (their HTML values)."""
    msg_id = kc.execute(code)
    found: dict[str, Any] = {"display_models": [], "updates": []}
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no idle within {timeout} s"
        msg = kc.get_iopub_msg(timeout=left)
        kind, content = msg["header"]["msg_type"], msg["content"]
        if kind == "display_data":
            view = content["data"].get("application/vnd.jupyter.widget-view+json")
            if view:
                found["display_models"].append(view["model_id"])
        elif kind == "comm_msg":
            value = content["data"].get("state", {}).get("value")
            if isinstance(value, str):
                found["updates"].append(value)
        elif kind == "error":
            raise AssertionError("\n".join(content["traceback"]))
        elif (kind == "status" and content["execution_state"] == "idle"
              and msg["parent_header"].get("msg_id") == msg_id):
            return found


def test_the_panel_counts_what_earlier_runs_left(make_receiver, make_streamer,
                                                tmp_path: Path) -> None:
    """Events an earlier run left in the spool went out through the new streamer, and the
    panel said nothing of them."""
    down = make_receiver()
    down.outage(3600)
    spool = tmp_path / "shared-spool"
    earlier = make_streamer(down, spool_dir=spool)
    for i in range(7):
        earlier.log("n", i)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        earlier.close(timeout=0.5)
    up = make_receiver()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the API base differs: the spool's key is the key)
        later = make_streamer(up, spool_dir=spool, api_base=down.api_base)
    down.outage(0)
    panel = later.panel()
    wait_for(panel, lambda: counters(panel)["sent"] == "7", what="the 7 sent")
    assert counters(panel)["recovered"] == "7"
    assert sorted(e["value"] for e in down.events()) == list(range(7))
