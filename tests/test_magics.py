"""%isstream and %%isstream against a fresh InteractiveShell and the loopback receiver.

Each test gets its own shell: ``InteractiveShell.clear_instance()`` then ``.instance()``
(history in memory, so no history thread or file). Making it *the* singleton, rather than a
loose ``InteractiveShell()``, matters: ``display()`` and ``capture_output`` find the shell
through the singleton. ``globalipapp`` was not used: it keeps one shell for the whole session,
and state (user namespace, registered magics, %config) would leak between tests. Teardown
unloads the extension (closing the session streamer), restores ``sys`` (``__main__``...) and
drops the shell's exit hook (a reset with a ``gc.collect()`` per shell at interpreter exit).

Every streamer the magics make talks over real HTTP to the test's receiver: the environment
gives the access key, the API base, no pacing, a short flush interval and a spool in
``tmp_path``. Every output of every test (stdout, stderr, displayed data) is checked at
teardown for the access key.
"""

from __future__ import annotations

import atexit
import re
import signal
import socket
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from traitlets.config import Config

import isstreamer_jupyter
from isstreamer_jupyter import Streamer
from isstreamer_jupyter._config import MASK, SETTINGS, derive_bucket_key
from isstreamer_jupyter._magics import (
    CELL_SECONDS,
    SETTING_TRAITS,
    IsStreamMagics,
    assigned_names,
    parse_value,
    split_line,
)

SECRET = "ik_S3CRET_access_key_7f3a9c1e"
DEFAULT_BUCKET = derive_bucket_key("isstreamer_jupyter")


@dataclass
class Ran:
    """One cell's run: its result, the exception it raised (if any) and everything it
    printed or displayed."""

    result: Any
    error: BaseException | None
    text: str


class Session:
    """A fresh shell with the extension loaded, and helpers to run cells in it."""

    def __init__(self, shell: InteractiveShell, receiver: Any) -> None:
        self.shell = shell
        self.rx = receiver
        self.outputs: list[str] = []

    @property
    def magics(self) -> IsStreamMagics:
        return self.shell.magics_manager.registry["IsStreamMagics"]

    def run(self, source: str) -> Ran:
        with capture_output() as cap:
            result = self.shell.run_cell(source)
        shown = "".join(repr(o.data) + repr(o.metadata) for o in cap.outputs)
        text = cap.stdout + cap.stderr + shown
        self.outputs.append(text)
        return Ran(result.result, result.error_before_exec or result.error_in_exec, text)

    def ok(self, source: str) -> Ran:
        ran = self.run(source)
        assert ran.error is None, f"{source!r} raised {ran.error!r}; output:\n{ran.text}"
        return ran

    def usage_error(self, source: str) -> str:
        """Run a mistake: it must be one UsageError line, never a traceback."""
        ran = self.run(source)
        assert isinstance(ran.error, UsageError), f"{source!r}: {ran.error!r}\n{ran.text}"
        assert "Traceback" not in ran.text and "UsageError: " in ran.text, ran.text
        assert ran.text.count("\n") <= 1, f"not one line:\n{ran.text}"
        return str(ran.error)

    def flushed(self, n: int | None = None, bucket_key: str | None = None) -> list[dict]:
        """Flush through the magic; return the receiver's events (at least `n`)."""
        assert "delivered" in self.ok("%isstream --flush").text
        if n is not None:
            return self.rx.wait_for(n, bucket_key, timeout=5)
        return self.rx.events(bucket_key)


def typed(events: list[dict]) -> list[tuple[str, Any, type]]:
    return [(e["key"], e["value"], type(e["value"])) for e in events]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, receiver: Any) -> Path:
    """No stray settings: a clean environment, an empty home and working folder."""
    for setting in SETTINGS:
        for name in setting.env:
            monkeypatch.delenv(name, raising=False)
    (tmp_path / "home").mkdir()
    (tmp_path / "work").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("IS_ACCESS_KEY", SECRET)
    monkeypatch.setenv("IS_API_BASE", receiver.api_base)
    monkeypatch.setenv("IS_MAX_RPS", "0")
    monkeypatch.setenv("IS_FLUSH_INTERVAL", "0.02")
    monkeypatch.setenv("IS_SPOOL_DIR", str(tmp_path / "spool"))
    return tmp_path


@pytest.fixture
def session(env: Path, receiver: Any) -> Any:
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    config.InteractiveShell.colors = "nocolor"  # tracebacks as plain text
    InteractiveShell.clear_instance()
    shell = InteractiveShell.instance(config=config)
    s = Session(shell, receiver)
    s.ok("%load_ext isstreamer_jupyter")
    yield s
    try:
        s.run("%unload_ext isstreamer_jupyter")
        leaks = [text for text in s.outputs if SECRET in text]
        assert not leaks, f"the access key was shown: {leaks}"
    finally:
        shell.cleanup()
        # the shell's exit hook resets its namespace with a gc.collect(): ~0.15 s a shell at
        # interpreter exit. Nothing of it is needed here (its history is in memory).
        atexit.unregister(shell.atexit_operations)
        InteractiveShell.clear_instance()


# ------------------------------------------------------------------------------ line magic
def test_key_value(session: Session) -> None:
    session.ok("%isstream temp 32")
    session.ok("%isstream temp -2.5e-05")  # one leading dash: a value, not an option
    assert typed(session.flushed(2)) == [("temp", 32, int), ("temp", -2.5e-05, float)]
    assert session.rx.events()[0]["bucket_key"] == DEFAULT_BUCKET


def test_key_equals_value_pairs_and_json_types(session: Session) -> None:
    session.ok('%isstream temp=32 humidity=0.41 status="warming up" ok=True code="32"')
    assert typed(session.flushed(5)) == [
        ("temp", 32, int), ("humidity", 0.41, float), ("status", "warming up", str),
        ("ok", True, bool), ("code", "32", str)]
    epochs = {e["epoch"] for e in session.rx.events()}
    assert len(epochs) == 1 and abs(epochs.pop() - time.time()) < 30  # one line, one time


def test_values_are_literal_then_expression_then_bare_text(session: Session) -> None:
    session.ok("import numpy as np\nload = 7\nf32 = np.float32(1.5)\ni64 = np.int64(3)")
    session.ok("%isstream a=load b='load' c=warming d=load*2 e=f32 f=i64 g=np.bool_(True) "
               "h=v1.2.3 i=(load > 3)")
    assert typed(session.flushed(9)) == [
        ("a", 7, int), ("b", "load", str), ("c", "warming", str), ("d", 14, int),
        ("e", 1.5, float), ("f", 3, int), ("g", True, bool), ("h", "v1.2.3", str),
        ("i", True, bool)]


def test_a_bare_word_that_names_code_is_told_to_be_quoted(session: Session) -> None:
    """`%isstream door open` said "value for key 'door' is a function ... convert it with
    str(value) or float(value)": `open` is Python's builtin; the word wants quotes."""
    session.ok("import math\ndef f():\n    pass")
    for line, said in (
            ("door open", "value for key 'door': open is Python's builtin function, not text: "
                          "to log the word, quote it: door \"open\""),
            ("x max", "max is Python's builtin function, not text: to log the word, quote it: "
                      "x \"max\""),
            ("t type", "type is Python's builtin class, not text"),
            ("p print", "quote it: p \"print\""),
            ("m math", "value for key 'm': math is a module, not text"),
            ("g f", "value for key 'g': f is a function, not text"),
            ("a=1 door=open", "quote it: door=\"open\"")):
        assert said in session.usage_error(f"%isstream {line}"), line
    assert "line 1: value for key 'door': open is Python's builtin function" in (
        session.usage_error("%%isstream --lines\ndoor open\n"))
    session.ok('%isstream door "open"')
    assert typed(session.flushed(1)) == [("door", "open", str)]
    session.ok("def max(*values):\n    return 0")  # (the user's own, named as a builtin)
    assert "max is a function, not text" in session.usage_error("%isstream x max")


def test_ipython_expansion(session: Session) -> None:
    session.ok("n = 5\nname = 'volts'")
    session.ok("%isstream k{n} $n")
    session.ok("%isstream {name}_x={n * 2}")
    assert typed(session.flushed(2)) == [("k5", 5, int), ("volts_x", 10, int)]


def test_an_undefined_dollar_name_is_said_not_logged_as_text(session: Session) -> None:
    """IPython leaves a line with an undefined $name as it is: the text '$nope' was logged."""
    assert session.usage_error("%isstream k=$nope") == (
        "$nope: 'nope' is not defined, so it cannot be replaced by its value; define it, or "
        "write $$nope to log the text $nope")
    session.ok("%isstream a $$nope")
    session.ok("%isstream cfg '{\"a\": 1}'")  # (braces of text stay, as IPython leaves them)
    assert typed(session.flushed(2)) == [("a", "$nope", str), ("cfg", '{"a": 1}', str)]


def test_a_function_s_locals_are_seen(session: Session) -> None:
    session.ok("def f():\n    x = 41\n"
               "    get_ipython().run_line_magic('isstream', 'a x+1')\n"
               "    get_ipython().run_line_magic('isstream', 'b $x')\nf()")
    assert typed(session.flushed(2)) == [("a", 42, int), ("b", 41, int)]


def test_epoch(session: Session) -> None:
    when = time.time() - 3600
    session.ok(f"%isstream --epoch {when} temp 1")
    session.ok('%isstream a=2 --epoch "2026-01-02T03:04:05Z"')
    events = session.flushed(2)
    assert events[0]["epoch"] == pytest.approx(when)
    assert events[1]["epoch"] == pytest.approx(1767323045.0)
    assert "more than 10 years ago" in session.usage_error("%isstream temp 1 --epoch 1000")
    session.ok("%isstream --debug 1")  # (its echo of each event made a date of it, and crashed)
    for far in ("1e30", "1795874361000000000000"):
        assert "the year 5138" in session.usage_error(f"%isstream --epoch {far} temp 30")
    session.ok("%isstream --debug 0")
    assert "goes with values" in session.usage_error("%isstream --epoch 1")


def test_bucket_switch_derived_and_given_key(session: Session) -> None:
    out = session.ok('%isstream --bucket "Run 7"').text
    run7 = derive_bucket_key("Run 7")
    assert f"'Run 7' (key {run7})" in out
    session.ok("%isstream temp 1")
    session.ok('%isstream --bucket "Run 8" --bucket-key run8 temp=2')
    session.flushed(2)
    assert session.rx.buckets == {run7: "Run 7", "run8": "Run 8"}  # no default bucket made
    assert typed(session.rx.events(run7)) == [("temp", 1, int)]
    assert typed(session.rx.events("run8")) == [("temp", 2, int)]


def test_flush_with_timeout_status_and_debug(session: Session) -> None:
    session.ok("%isstream temp 1")
    assert "delivered (1 events sent" in session.ok("%isstream --flush --timeout 5").text
    status = session.ok("%isstream --status").text
    assert "online" in status and "isstreamer_jupyter" in status and "1 sent" in status
    assert "0 queued" in status
    session.ok("%isstream --debug 1")
    assert session.magics.streamer.DebugLevel == 1 and session.magics.debug_level == 1
    assert "humidity = 3" in session.ok("%isstream humidity 3").text  # the core's echo
    session.ok("%isstream --debug 0")
    assert session.ok("%isstream humidity 4").text == ""


def test_status_shows_the_last_error_and_its_fix(session: Session, make_receiver: Any) -> None:
    strict = make_receiver(access_keys=["another key"])
    session.ok(f"%config IsStreamMagics.api_base = {strict.api_base!r}")
    session.ok("%isstream temp 1")
    out = session.ok("%isstream --flush --timeout 3").text
    assert "delivered" not in out and out.count("\n") == 1
    status = session.ok("%isstream --status").text
    assert "stopped" in status and "fix:" in status and "access key" in status


def test_offline_records_locally(session: Session, env: Path) -> None:
    session.ok("%isstream temp 1 --flush")
    session.ok("%isstream --offline")
    assert session.magics.offline is True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the core's one notice: "recording locally to ..."
        flushed = session.ok("%isstream temp 2 --flush").text
    assert "recorded (1 events so far, in isstreamer_out.csv)" in flushed  # not "delivered"
    # (what the user typed, not "keyword argument")
    assert ("isstreamer_jupyter: offline mode is on (%isstream --offline), so recording locally "
            "to isstreamer_out.csv") in flushed
    status = session.ok("%isstream --status").text
    assert " 1 recorded · " in status
    assert "why:     offline mode is on (%isstream --offline)\n" in status
    assert session.magics.streamer.Offline
    assert [e["value"] for e in session.rx.events()] == [1]  # nothing sent after --offline
    csv = (env / "work" / "isstreamer_out.csv").read_text()
    assert "temp" in csv and "2" in csv


def test_close_says_what_was_lost(session: Session, make_receiver: Any,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    picky = make_receiver(max_key_length=100)  # this account takes keys up to 100 characters
    monkeypatch.setenv("IS_API_BASE", picky.api_base)
    session.ok(f"%isstream {'k' * 150} 1")  # ours go to 250 (with a warning over 100)
    session.ok("%isstream temp 2")
    out = session.ok("%isstream --close --timeout 5").text
    assert "closed the session streamer; close: 1 event was lost since the last flush" in out
    assert "everything was delivered" not in out
    assert [e["value"] for e in picky.events()] == [2]


def test_close_says_one_event_left_in_the_singular(session: Session, make_receiver: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """It said "1 event waits undelivered (they are lost: ...)"; now the report says it."""
    from isstreamer_jupyter.receiver import Faults

    down = make_receiver(faults=Faults(p_5xx=1.0))  # (every request: 503)
    monkeypatch.setenv("IS_API_BASE", down.api_base)
    session.ok("%config IsStreamMagics.spool = False")
    session.ok("%isstream temp 1")
    out = session.ok("%isstream --close --timeout 0.3").text
    assert ("; close: 1 event still waiting after 0.3 s (" in out
            and "); they are lost as it closes (spool = False from %config " in out), out


def test_lines_says_one_good_event_in_the_singular(session: Session) -> None:
    message = session.usage_error("%%isstream --lines\ntemp 3\nbad\n")
    assert message.startswith("--lines: 1 bad line (the other 1 event was logged): line 2:")


def test_a_key_value_line_is_told_to_quote_in_its_own_form(session: Session) -> None:
    """`door=open` alone on a --lines line (or %isstream) was told `door "open"`."""
    assert 'quote it: door="open"' in session.usage_error("%%isstream --lines\ndoor=open\n")
    assert 'quote it: door="open"' in session.usage_error("%isstream door=open")
    assert 'quote it: door "open"' in session.usage_error("%isstream door open")


def test_close_then_a_new_streamer(session: Session) -> None:
    session.ok("%isstream temp 1")
    first = session.magics.streamer
    out = session.ok("%isstream --close --timeout 5").text
    assert "closed the session streamer; everything was delivered" in out
    assert first.IsClosed and session.magics.session.current is None
    assert typed(session.rx.events()) == [("temp", 1, int)]
    assert "no session streamer" in session.ok("%isstream --close").text
    session.ok("%isstream temp 2")
    assert session.magics.streamer is not first
    assert [e["value"] for e in session.flushed(2)] == [1, 2]


def test_use_my_streamer(session: Session, receiver: Any, env: Path) -> None:
    session.ok("%isstream temp 0")  # the magics' own streamer, replaced below
    own = session.magics.streamer
    session.shell.user_ns["mine"] = mine = Streamer(
        bucket_name="mine", api_base=receiver.api_base, max_requests_per_second=0,
        spool_dir=env / "mine", flush_interval=0.02)
    assert "now using mine (bucket 'mine')" in session.ok("%isstream --use mine").text
    assert own.IsClosed and session.magics.streamer is mine
    session.ok("%isstream temp 1 --flush")
    assert typed(session.rx.events(derive_bucket_key("mine"))) == [("temp", 1, int)]
    session.ok("%config IsStreamMagics.debug_level = 1")  # live settings apply to it too
    assert mine.DebugLevel == 1
    assert "keeps its own settings" in session.ok(
        "%config IsStreamMagics.flush_interval = 0.5").text
    session.ok("%unload_ext isstreamer_jupyter")
    assert not mine.IsClosed  # the user's streamer stays theirs
    session.ok("%load_ext isstreamer_jupyter")
    session.ok("%isstream --use mine")
    out = session.ok("%isstream --close").text  # (what the next %isstream does: said)
    assert mine.IsClosed and re.search(
        r"closed mine; everything was delivered\. The next %isstream makes a streamer of its own "
        r"\(its bucket: --bucket, %config, else 'isstreamer_jupyter'\); %isstream --use NAME "
        r"takes one of yours", out), out


def test_use_mistakes(session: Session) -> None:
    assert "no variable 'nothing'" in session.usage_error("%isstream --use nothing")
    session.ok("x = 3")
    assert "is an int, not an isstreamer_jupyter Streamer" in session.usage_error(
        "%isstream --use x")


# ------------------------------------------------------------------------------ panel
def test_bare_and_panel_call_the_panel_show(session: Session, monkeypatch: Any) -> None:
    from isstreamer_jupyter import _panel

    shown: list[Any] = []
    monkeypatch.setattr(_panel, "show", shown.append)
    session.ok("%isstream")
    session.ok("%isstream --panel")
    assert shown == [session.magics.streamer] * 2


def test_bare_isstream_outside_a_kernel_prints_the_text_status(session: Session) -> None:
    out = session.ok("%isstream").text
    assert "bucket" in out and "'isstreamer_jupyter'" in out


def test_unload_stops_the_panels(session: Session) -> None:
    panel = session.magics.streamer.panel()
    assert not panel.closed
    session.ok("%unload_ext isstreamer_jupyter")
    assert panel.closed
    session.ok("%load_ext isstreamer_jupyter")


# ------------------------------------------------------------------------------ cell magic
def test_cell_named_with_prefix_and_last_expression(session: Session) -> None:
    ran = session.ok("%%isstream loss accuracy --prefix train_\n"
                     "loss, accuracy = 0.25, 0.9\nextra = 3\nloss * 2\n")
    assert ran.result == 0.5 and "0.5" in ran.text  # displayed as a normal cell's Out
    assert session.shell.user_ns["extra"] == 3  # same namespace
    events = session.flushed(2)
    assert typed(events) == [("train_loss", 0.25, float), ("train_accuracy", 0.9, float)]
    assert events[0]["epoch"] == events[1]["epoch"]  # one cell, one time


def test_cell_last_expression_with_a_semicolon_is_not_displayed(session: Session) -> None:
    ran = session.ok("%%isstream x\nx = 12345\nx;")
    assert ran.result is None and "12345" not in ran.text
    assert typed(session.flushed(1)) == [("x", 12345, int)]


def test_cell_without_names_logs_assigned_loggable_values(session: Session) -> None:
    ran = session.ok(
        "%%isstream\n"
        "import numpy as np\n"
        "a = np.float32(1.5)\n"
        "b, (c, *d) = 1, ('x', 2, 3)\n"
        "e: int = 4\n"
        "e += 1\n"
        "f = [1, 2]\n"
        "g = float('nan')\n"
        "h = 'y' * 2001\n"
        "i = j = True\n"
        "k = np.int64(7)\n"
        "for loop in range(3):\n    inner = loop\n"
        "class Obj: pass\n"
        "obj = Obj()\n"
        "obj.attr = 5\n"
        "def fn(): return 1\n"
        "import datetime, decimal\n"
        "day = datetime.date(2026, 1, 2)\n"  # the core would take these when named
        "dec = decimal.Decimal('1.5')\n")
    assert typed(session.flushed(7)) == [
        ("a", 1.5, float), ("b", 1, int), ("c", "x", str), ("e", 5, int), ("i", True, bool),
        ("j", True, bool), ("k", 7, int)]
    notes = [line for line in ran.text.splitlines() if line.startswith("isstream:")]
    assert len(notes) == 1 and notes[0].endswith(": d, f, g, h, obj, day, dec")


def test_cell_named_values_follow_the_core_rules(session: Session) -> None:
    session.ok("%%isstream day dec\nimport datetime, decimal\n"
               "day = datetime.date(2026, 1, 2)\ndec = decimal.Decimal('1.5')\n")
    assert typed(session.flushed(2)) == [("day", "2026-01-02", str), ("dec", 1.5, float)]


def test_cell_time(session: Session) -> None:
    session.ok("%%isstream --time --prefix run_\nimport time\nx = 2\ntime.sleep(0.05)\n")
    events = session.flushed(2)
    assert typed(events)[0] == ("run_x", 2, int)
    key, seconds, kind = typed(events)[1]
    assert key == f"run_{CELL_SECONDS}" and kind is float and 0.05 <= seconds < 2


def test_cell_exception_propagates_and_logs_nothing(session: Session) -> None:
    ran = session.run("%%isstream x\nx = 1\ny = 1 / 0\n")
    assert isinstance(ran.error, ZeroDivisionError)
    assert "y = 1 / 0" in ran.text  # the user's line is in the traceback
    assert session.shell.user_ns["x"] == 1
    assert session.flushed() == []


def test_cell_note_on_skipped_names_leaves_out_those_deleted(session: Session) -> None:
    """A variable the cell assigned and then deleted was listed as "not a number, bool or
    string"; it is gone, not skipped."""
    text = session.ok("%%isstream\na = 1\ndel_me = 2\ndel del_me\nb = [1]\n").text
    assert text == ("isstream: not logged (not a number, bool or string up to 2000 characters; "
                    "name them to be told why): b\n")
    assert session.ok("%%isstream\ntmp = 3\ndel tmp\nc = 4\n").text == ""
    assert typed(session.flushed(2)) == [("a", 1, int), ("c", 4, int)]


def test_cell_runs_magics_inside(session: Session) -> None:
    ran = session.ok("%%isstream\nv = 3\n%isstream w 4\nv + 1\n")
    assert ran.result == 4
    assert typed(session.flushed(2)) == [("w", 4, int), ("v", 3, int)]


def test_cell_missing_and_refused_names(session: Session) -> None:
    message = session.usage_error("%%isstream a nope lst\na = 1\nlst = [1, 2]\n")
    assert "no variable 'nope' after the cell ran" in message
    assert "log_object" in message and "(logged: a)" in message
    assert session.shell.user_ns["lst"] == [1, 2]  # the cell ran
    assert typed(session.flushed(1)) == [("a", 1, int)]


def test_cell_bucket(session: Session) -> None:
    session.ok('%%isstream --bucket "Cell run" x\nx = 1\n')
    key = derive_bucket_key("Cell run")
    assert typed(session.flushed(1, key)) == [("x", 1, int)]
    assert session.magics.streamer.BucketName == "Cell run"  # like the line's --bucket


def test_cell_lines(session: Session) -> None:
    session.ok("base = 10")
    message = session.usage_error(
        "%%isstream --lines --prefix L_\n"
        "# a comment\n"
        "temp 3\n"
        "\n"
        'hum=0.5 s="a b"\n'
        "bad\n"
        "v=[1]\n"
        "calc base+1\n")
    assert message.startswith("--lines: 2 bad lines (the other 4 events were logged)")
    assert "line 5: no value for 'bad'" in message and "line 6: value for key 'L_v'" in message
    assert typed(session.flushed(4)) == [
        ("L_temp", 3, int), ("L_hum", 0.5, float), ("L_s", "a b", str), ("L_calc", 11, int)]
    assert "x" not in session.shell.user_ns


def test_cell_mistakes(session: Session) -> None:
    assert "not a variable name" in session.usage_error("%%isstream a.b\na = 1\n")
    assert "no NAMEs" in session.usage_error("%%isstream --lines x\nx 1\n")
    assert "unrecognized arguments: --nope" in session.usage_error("%%isstream --nope\nx=1\n")
    assert "a" not in session.shell.user_ns and "x" not in session.shell.user_ns  # not run


@pytest.mark.parametrize("line", ["--help", "-h", "temp 32 --help", "--flush --help"])
def test_help_prints_what_the_question_mark_shows_and_logs_nothing(session: Session,
                                                                     line: str) -> None:
    ran = session.ok(f"%isstream {line}")
    assert ran.text.rstrip() == IsStreamMagics.isstream.__doc__.rstrip()
    assert "[KEY VALUE | KEY=VALUE ... ...]" in ran.text and "--help" in ran.text
    assert session.magics.session.current is None  # nothing logged, no streamer made


@pytest.mark.parametrize("line", ["--help", "-h", "--time --help"])
def test_cell_help_prints_its_help_and_does_not_run_the_body(session: Session,
                                                             line: str) -> None:
    ran = session.ok(f"%%isstream {line}\nx = 1\n")
    assert ran.text.rstrip() == IsStreamMagics.isstream_cell.__doc__.rstrip()
    assert "the body is not run" in " ".join(ran.text.split())
    assert "x" not in session.shell.user_ns and session.magics.session.current is None


def test_h_among_other_words_is_data(session: Session) -> None:
    session.ok("%isstream note -h")
    assert typed(session.flushed(1)) == [("note", "-h", str)]


# ------------------------------------------------------------------------------ %config
def test_config_before_first_use(session: Session) -> None:
    for line in ("bucket_name = 'From config'", "batch_size = 3", "debug_level = 0",
                 "flush_interval = 0.05", "spool = False"):
        session.ok(f"%config IsStreamMagics.{line}")
    session.ok("%isstream temp 1")
    settings = session.magics.streamer.settings
    assert settings.batch_size == 3 and settings.flush_interval == 0.05
    assert settings.spool is False and settings.bucket_name == "From config"
    assert typed(session.flushed(1, derive_bucket_key("From config"))) == [("temp", 1, int)]


def test_config_unset_traits_leave_env_and_ini(session: Session, monkeypatch: Any,
                                               env: Path) -> None:
    monkeypatch.setenv("IS_BUCKET_NAME", "from env")
    (env / "work" / "isstreamer.ini").write_text(
        "[isstreamer.client_config]\nbatch_size = 4\n")
    settings = session.magics.streamer.settings
    assert settings.bucket_name == "from env" and settings.batch_size == 4
    assert settings.flush_interval == 0.02  # IS_FLUSH_INTERVAL
    assert all(getattr(session.magics, name) is None for name in SETTING_TRAITS)


def test_config_on_a_live_streamer(session: Session, make_receiver: Any) -> None:
    session.ok("%isstream temp 1 --flush")
    first = session.magics.streamer
    session.ok("%config IsStreamMagics.batch_size = 7")
    session.ok("%config IsStreamMagics.bucket_name = 'Live'")
    assert first.BufferSize == 7 and first.BucketName == "Live"
    session.ok("%isstream temp 2 --flush")
    assert [e["value"] for e in session.rx.events(derive_bucket_key("Live"))] == [2]
    other = make_receiver()
    out = session.ok(f"%config IsStreamMagics.api_base = {other.api_base!r}").text
    assert "api_base changed: closed the session streamer" in out and first.IsClosed
    session.ok("%isstream temp 3 --flush")
    assert typed(other.wait_for(1)) == [("temp", 3, int)]
    assert session.magics.streamer.BucketName == "Live"  # the %config bucket carries over


def test_config_refuses_bad_values(session: Session, caplog: Any) -> None:
    for line, words in (("batch_size = 0", "at least 1"), ("debug_level = -1", "from 0 to 3"),
                        ("debug_level = 9", "expected a whole number from 0 to 3"),
                        ("max_queue = 0", "at least 1"), ("timeout = 0", "above 0"),
                        ("api_base = 'ftp://x'", "http"), ("bucket_key = 'a:b'", "cannot be"),
                        ("flush_interval = 0", "above 0"),
                        # (text for a number or bool: traitlets' own words had no fix)
                        ("flush_interval = 'abc'", "= 'abc': expected a number"),
                        ("batch_size = '5'", "expected 5, not text: write it without quotes, "
                                             "%config IsStreamMagics.batch_size = 5"),
                        ("offline = 'yes'", "expected True, not text"),
                        ("flush_timeout = 'inf'", "IsStreamMagics.flush_timeout = float('inf')")):
        caplog.clear()
        session.run(f"%config IsStreamMagics.{line}")  # %config logs the error, then goes on
        assert f"IsStreamMagics.{line.split(' = ')[0]} = " in caplog.text, caplog.text
        assert words in caplog.text, (line, caplog.text)
        assert getattr(session.magics, line.split()[0]) is None


def test_a_blank_bucket_name_is_refused(session: Session, caplog: Any) -> None:
    """`%isstream --bucket ""` switched to a bucket named after its derived key
    ('bucket_1271cf25'); blank is no name."""
    session.ok("%isstream temp 1")
    for line in ('%isstream --bucket ""', "%isstream --bucket '  '",
                 '%%isstream --bucket ""\nx = 1\n'):
        message = session.usage_error(line)
        assert re.fullmatch(r"bucket name '\s*' is blank: give the bucket a name, such as "
                            r"'Run 7'", message), (line, message)
    assert "x" not in session.shell.user_ns  # (the cell did not run)
    caplog.clear()
    session.run("%config IsStreamMagics.bucket_name = ''")
    assert "bucket name '' is blank: give the bucket a name" in caplog.text
    assert session.magics.bucket_name is None
    assert session.magics.streamer.BucketKey == DEFAULT_BUCKET
    assert {e["bucket_key"] for e in session.flushed(1)} == {DEFAULT_BUCKET}


def test_config_offline_is_named_as_the_source(session: Session,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A %config value reached the streamer as a keyword argument, and was said as one."""
    monkeypatch.delenv("IS_ACCESS_KEY")
    session.ok("%config IsStreamMagics.offline = False")
    assert session.usage_error("%isstream temp 1") == (
        "offline = False (%config IsStreamMagics.offline) but there is no access key, so "
        "nothing could be sent. Fix: set IS_ACCESS_KEY (or access_key under "
        "[isstreamer.client_config] in isstreamer.ini), or set %config "
        "IsStreamMagics.offline = None to record locally")
    session.ok("%config IsStreamMagics.offline = True")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the core's one notice: "recording locally to ..."
        status = session.ok("%isstream --status").text
    assert "why:     offline mode is on (%config IsStreamMagics.offline)\n" in status
    sources = session.magics.streamer.settings.sources
    assert sources["offline"] == "%config IsStreamMagics.offline"
    assert sources["flush_interval"] == "environment variable IS_FLUSH_INTERVAL"


def test_the_fix_said_for_a_config_offline_false_without_a_key_works(
        session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IS_ACCESS_KEY")
    session.ok("%config IsStreamMagics.offline = False")
    assert "set %config IsStreamMagics.offline = None" in session.usage_error("%isstream t 1")
    session.ok("%config IsStreamMagics.offline = None")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the core's one notice: "recording locally to ..."
        session.ok("%isstream t 1")
        status = session.ok("%isstream --status").text
    assert "recording offline\n  why:     no access key\n" in status


def test_options_that_set_a_setting_are_its_source(session: Session) -> None:
    session.ok('%isstream --debug 1 --bucket "Run 9" --bucket-key run9')
    sources = session.magics.streamer.settings.sources
    assert (sources["debug_level"], sources["bucket_name"], sources["bucket_key"]) == (
        "%isstream --debug", "%isstream --bucket", "%isstream --bucket-key")
    session.ok("%config IsStreamMagics.debug_level = 0")  # (the last said wins)
    session.ok("%isstream --close")
    session.ok("%%isstream --bucket 'Run 10'\nx = 1\n")  # (a new streamer)
    sources = session.magics.streamer.settings.sources
    assert (sources["debug_level"], sources["bucket_name"], sources["bucket_key"]) == (
        "%config IsStreamMagics.debug_level", "%%isstream --bucket", "default")


def test_config_help_comes_from_the_settings_table(session: Session) -> None:
    text = session.ok("%config IsStreamMagics").text
    for name in SETTING_TRAITS:
        doc = next(s.doc for s in SETTINGS if s.name == name)
        assert f"IsStreamMagics.{name}=" in text
        assert doc.split()[0] in text
    assert "access_key" not in text and "access_key" not in IsStreamMagics.class_trait_names()


def test_config_has_every_setting_of_the_table_but_the_access_key(session: Session) -> None:
    """One trait per setting of _config.SETTINGS, its default told as the README tells it."""
    names = {s.name for s in SETTINGS if not s.secret}
    assert set(IsStreamMagics.class_trait_names(config=True)) == names
    text = session.ok("%config IsStreamMagics").text
    for name in names:
        assert f"IsStreamMagics.{name}=" in text
    words = " ".join(text.split())  # (help text is wrapped)
    assert "else 'isstreamer_jupyter'." in words and "else the user data folder." in words
    assert "else ''" not in words and "access_key" not in words
    for line in ("timeout = 4.5", "flush_timeout = 2", "exit_timeout = 0", "max_queue = 500",
                 "offline_file = 'rec.csv'", "spool_interval = 0.1",
                 "spool_max_bytes = 1000000"):
        session.ok(f"%config IsStreamMagics.{line}")
    s = session.magics.streamer.settings
    assert (s.timeout, s.flush_timeout, s.exit_timeout, s.max_queue, s.offline_file,
            s.spool_interval, s.spool_max_bytes) == (4.5, 2, 0, 500, "rec.csv", 0.1, 1000000)


# ------------------------------------------------------------------------------ load / unload
def test_load_twice_registers_once(session: Session) -> None:
    magics = session.magics
    isstreamer_jupyter.load_ipython_extension(session.shell)
    assert session.magics is magics
    assert session.shell.configurables.count(magics) == 1


def test_unload_closes_and_unregisters(session: Session) -> None:
    session.ok("%isstream temp 1")
    streamer = session.magics.streamer
    session.ok("%unload_ext isstreamer_jupyter")
    assert streamer.IsClosed
    assert typed(session.rx.events()) == [("temp", 1, int)]  # close delivered it
    assert "IsStreamMagics" not in session.shell.magics_manager.registry
    assert not any(isinstance(c, IsStreamMagics) for c in session.shell.configurables)
    ran = session.run("%isstream temp 2")
    assert ran.error is not None and "not found" in ran.text
    session.ok("%load_ext isstreamer_jupyter")
    session.ok("%isstream temp 2")
    assert [e["value"] for e in session.flushed(2)] == [1, 2]


def test_reload_ext_keeps_config_and_replaces_the_streamer(session: Session) -> None:
    session.ok("%config IsStreamMagics.bucket_name = 'Kept'")
    session.ok("%isstream temp 1")
    old_magics, old_streamer = session.magics, session.magics.streamer
    session.ok("%reload_ext isstreamer_jupyter")
    assert session.magics is not old_magics and old_streamer.IsClosed
    assert session.magics.bucket_name == "Kept"
    session.ok("%isstream temp 2 --flush")
    assert [e["value"] for e in session.rx.events(derive_bucket_key("Kept"))] == [1, 2]
    assert sum(isinstance(c, IsStreamMagics) for c in session.shell.configurables) == 1


# ------------------------------------------------------------------------------ mistakes
@pytest.mark.parametrize(("line", "words"), [
    ("--nope", "unrecognized arguments: --nope; see %isstream? for the options"),
    ("temp", "no value for 'temp'"),
    ("temp=", "no value after temp="),
    ("=3", "'=3' has no key before '=': write `%isstream KEY=3`"),
    ("--debug", "expected one argument"),
    ("--debug x", "invalid int value"),
    ("--debug -1", "--debug -1: expected a whole number from 0 to 3"),
    ("--debug 9", "--debug 9: expected a whole number from 0 to 3"),
    ("note warming up", 'quote text with spaces (note "warming up")'),
    ("a=1 b", "'b' is not KEY=VALUE"),
    ('x="open', "unclosed \""),
    ("x=f(1", "unclosed bracket"),
    ("x 1/0", "raised ZeroDivisionError"),
    ("x=[1,2]", "is a list; values are numbers, booleans or strings: log its items with"),
    ("x=float('nan')", "JSON has no NaN"),
    ("x='y'*2001", "2001 characters; the limit is 2000"),
    ("k" * 251 + " 1", "the limit is 250: shorten it"),
    ("--bucket x --bucket-key 'a:b'", "bucket key 'a:b' cannot be used"),
    ("--bucket-key k", "--bucket-key goes with --bucket NAME"),
    ("--timeout 3", "--timeout goes with --flush or --close"),
    ("--timeout -1 --flush", "give seconds, 0 or more"),
])
def test_mistakes_are_one_usage_error_line(session: Session, line: str, words: str) -> None:
    assert words in session.usage_error(f"%isstream {line}")


def test_refusals_raise_at_any_debug_level_and_log_nothing(session: Session) -> None:
    for level in (0, 2):
        session.ok(f"%isstream --debug {level}")
        with warnings.catch_warnings():
            warnings.simplefilter("error", isstreamer_jupyter.IsStreamerWarning)
            session.usage_error("%isstream good=1 bad=[1]")
    assert session.flushed() == []


def test_a_bad_environment_is_a_usage_error(session: Session, monkeypatch: Any) -> None:
    monkeypatch.setenv("IS_BATCH_SIZE", "lots")
    message = session.usage_error("%isstream temp 1")
    assert "batch_size = 'lots' from environment variable IS_BATCH_SIZE" in message


# ------------------------------------------------------------------------------ the access key
def test_no_form_shows_the_access_key(session: Session, monkeypatch: Any) -> None:
    from isstreamer_jupyter import _panel

    monkeypatch.setattr(_panel, "show", lambda s: print(repr(s), s.settings, s.AccessKey))
    forms = ["%isstream --debug 3", "%isstream temp 32", "%isstream a=1 b='x'",
             "%isstream --status", "%isstream", "%isstream --panel", "%isstream --flush",
             '%isstream --bucket "K"', "%isstream x=[1]", "%isstream --nope",
             "%%isstream --time\nq = 1\nr = [1]\n", "%%isstream --lines\nz 1\nbad\n",
             "%config IsStreamMagics", "%config IsStreamMagics.debug_level = 1",
             "%isstream?", "%%isstream?", "%isstream --close", "%reload_ext isstreamer_jupyter"]
    texts = [session.run(form).text for form in forms]
    assert any("temp = 32" in t for t in texts)  # the debug echo did print
    assert any("********" in t for t in texts)  # the masked key did print
    for form, text in zip(forms, texts, strict=True):
        assert SECRET not in text, form


def test_verbose_tracebacks_show_the_access_key_masked(session: Session, env: Path,
                                                       make_receiver: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``%xmode Verbose`` shows each frame's arguments and the value of every name in the line
    it was running: where the access key passes through the package (keyword arguments, the
    environment, an ini file, ``AccessKey = ...``, upload), those show the mask. The cells
    take the key from a function: a name holding it in a cell would show (the user's own
    variable, which nothing can mask). The session checks every output again at teardown."""
    monkeypatch.setenv("MY_KEY", SECRET)
    monkeypatch.setenv("IS_API_BASE", make_receiver(access_keys=["another key"]).api_base)
    session.ok("%xmode Verbose")
    session.ok("import os\nfrom isstreamer_jupyter import Streamer\n"
               "def key(suffix=''):\n    return os.environ['MY_KEY'] + suffix\n")

    def fails(source: str, error: str, *, masked: bool = True) -> None:
        ran = session.run(source)
        assert type(ran.error).__name__ == error, f"{source!r}: {ran.error!r}\n{ran.text}"
        assert "Traceback" in ran.text and f"{error}: " in ran.text, ran.text
        assert SECRET not in ran.text, f"{source!r} showed the access key:\n{ran.text}"
        if masked:  # (the traceback shows where the key was: masked)
            assert f"'{MASK}'" in ran.text, ran.text

    # from IS_ACCESS_KEY (the session's environment)
    fails("Streamer(batch_size=0)", "ConfigError")
    monkeypatch.setenv("IS_BATCH_SIZE", "lots")
    fails("Streamer()", "ConfigError")
    monkeypatch.delenv("IS_BATCH_SIZE")
    session.ok("s = Streamer(debug_level=2, spool=False, flush_timeout=5)")
    fails("s.AccessKey = key(' \\n x')", "ConfigError")
    fails("s.upload('missing.csv')", "ConfigError")
    fails("s.upload('missing.csv', timeout=0)", "ConfigError")
    fails("s.set_bucket('x' * 300)", "ConfigError", masked=False)
    fails("s.log('a', 1)\ns.flush()", "AccessDenied", masked=False)  # (a 401)
    fails("s.close()", "AccessDenied", masked=False)
    session.ok("%isstream --debug 2")
    session.ok("%isstream temp 1")
    assert "refused the access key" in session.usage_error("%isstream --flush")
    fails("%%isstream\nx = 1\n1 / 0\n", "ZeroDivisionError", masked=False)
    # from access_key=... and client_key=...
    monkeypatch.delenv("IS_ACCESS_KEY")
    fails("Streamer(access_key=key(), batch_size=0)", "ConfigError")
    fails("Streamer(client_key=key(), batch_size=0)", "ConfigError")
    fails("Streamer(access_key=key(' \\n'), max_queue=0)", "ConfigError")
    # from isstreamer.ini
    (env / "work" / "isstreamer.ini").write_text(
        f"[isstreamer.client_config]\naccess_key = {SECRET}\n")
    fails("Streamer(batch_size=0)", "ConfigError")
    fails("Streamer(ini_file_location='isstreamer.ini', timeout=-1)", "ConfigError")


def test_an_interrupted_request_shows_the_access_key_masked(session: Session,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """Interrupted while it waits for an answer (``use_async=False`` sends in the caller),
    a verbose traceback shows the HTTP session's headers, in our frames and urllib3's: the
    key there is masked too. A server that reads the whole request and never answers (while
    http.client writes the headers, its frame holds them as bytes, which nothing can mask:
    the interrupt comes after that), then a real SIGINT (``_thread.interrupt_main`` would
    wait for the read to end)."""
    listener = socket.create_server(("127.0.0.1", 0))
    read = threading.Event()

    def silent() -> None:
        conn, _ = listener.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = re.search(rb"Content-Length: (\d+)", head, re.I)
            assert length is not None
            while len(body) < int(length.group(1)):
                body += conn.recv(65536)
            read.set()
            conn.recv(65536)  # (until the client goes)

    server = threading.Thread(target=silent, daemon=True)
    server.start()
    monkeypatch.setenv("IS_API_BASE", f"http://127.0.0.1:{listener.getsockname()[1]}/api")
    session.ok("%xmode Verbose")
    session.ok("from isstreamer_jupyter import Streamer\n"
               "s = Streamer(use_async=False, batch_size=1, spool=False, timeout=30)")
    main = threading.main_thread().ident
    assert main is not None
    interrupter = threading.Thread(
        target=lambda: read.wait(30) and signal.pthread_kill(main, signal.SIGINT), daemon=True)
    interrupter.start()
    try:
        ran = session.run("s.log('a', 1)")
    finally:
        interrupter.join(30)
        listener.close()
    assert isinstance(ran.error, KeyboardInterrupt), ran.text
    assert "_session.headers" in ran.text and "urllib3" in ran.text, ran.text
    assert SECRET not in ran.text, ran.text
    assert f"'X-IS-AccessKey': '{MASK}'" in ran.text, ran.text
    session.run("s.close(0.1)")


def test_config_refuses_the_access_key_naming_where_it_goes(session: Session,
                                                          caplog: Any) -> None:
    """%config answered "not recognized ... Did you mean `bucket_key`?": a key pasted there
    would go on the wire, into the panel and the CSV. It is refused, never shown nor kept."""
    typed_in = "ik_typed_into_a_cell_5d2e8b91"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ran = session.run(f"%config IsStreamMagics.access_key = {typed_in!r}")
    said = caplog.text + ran.text + "".join(str(w.message) for w in caught)
    assert "Did you mean" not in said and typed_in not in said
    assert ("IsStreamMagics.access_key is not a setting: the access key is never taken from a "
            "cell (a notebook and its history keep what a cell says). Set IS_ACCESS_KEY in the "
            "environment, or access_key under [isstreamer.client_config] in isstreamer.ini; and "
            "remove it from that cell") in caplog.text
    assert "access_key" not in session.ok("%config IsStreamMagics").text
    for configurable in session.shell.configurables:  # kept nowhere
        assert typed_in not in repr(configurable.config)
    session.ok("%config IsStreamMagics.bucket_key = 'kept'")  # %config goes on as before
    session.ok("%isstream temp 1")
    assert session.flushed(1, "kept")[0]["key"] == "temp"
    assert session.magics.streamer.settings.access_key == SECRET  # IS_ACCESS_KEY's


def test_an_access_key_in_the_ipython_config_is_dropped_and_said(session: Session) -> None:
    typed_in = "ik_in_ipython_config_5d2e8b91"
    session.shell.config.IsStreamMagics.access_key = typed_in
    loaded = session.ok("%reload_ext isstreamer_jupyter").text
    # (what loading prints at a kernel's start shows nowhere: it is said with the first
    # %isstream's output, once)
    assert typed_in not in loaded and typed_in not in repr(session.shell.config)
    text = session.ok("%isstream temp 1").text
    assert "IsStreamMagics.access_key is not a setting" in text and "from there" in text
    assert typed_in not in text
    assert "access_key" not in session.ok("%isstream temp 2").text  # (once)
    assert [e["key"] for e in session.flushed(2)] == ["temp", "temp"]
    assert session.magics.streamer.settings.access_key == SECRET


# ------------------------------------------------------------------------------ helpers
def test_split_line_keeps_quotes_and_brackets() -> None:
    assert split_line('a=1 s="x y" f=g(1, 2) "k k"=3  # note') == [
        "a=1", 's="x y"', "f=g(1, 2)", '"k k"=3']
    assert split_line("temp 32") == ["temp", "32"]
    with pytest.raises(UsageError):
        split_line("x='open")


def test_parse_value_order() -> None:
    ns = {"x": 4}
    assert parse_value("32", ns) == 32 and parse_value("0x10", ns) == 16
    assert parse_value("'x'", ns) == "x" and parse_value("x", ns) == 4
    assert parse_value("x + 1", ns) == 5 and parse_value("word", ns) == "word"
    assert parse_value("007", ns) == "007"  # not a literal, not Python: text
    with pytest.raises(UsageError, match="AttributeError"):
        parse_value("x.nope", ns)


def test_assigned_names_are_top_level_assignments_only() -> None:
    import ast

    tree = ast.parse("a = 1\nb, [c, *d] = x\ne: int\nf: int = 1\ng += 1\nh.i = 1\nj[0] = 1\n"
                     "for k in x: l = 1\nwith x as m: pass\n(n := 1)\nimport o\na = 2\n"
                     "_p = 1\nq, _r = x\n")
    assert assigned_names(tree) == ["a", "b", "c", "d", "f", "g", "q"]  # (not _private ones)


def test_the_panel_is_imported_only_when_shown() -> None:
    for module in Path(sys.modules["isstreamer_jupyter._magics"].__file__).parent.glob("*.py"):
        assert re.search(r"^from \.+_panel|^import ipywidgets", module.read_text(),
                         re.M) is None


def test_offline_keeps_the_bucket_chosen_with_bucket(session: Session, env: Path) -> None:
    """--bucket is a setting as %config would set it: the streamer made after --offline
    (or any changed setting) records to that bucket, not the default one."""
    session.ok('%isstream --bucket "Run 7"')
    session.ok("%isstream --offline")
    session.ok("%isstream b 2")
    session.ok("%isstream --flush")
    text = (env / "work" / "isstreamer_out.csv").read_text()
    assert f"# bucket: {derive_bucket_key('Run 7')} Run 7" in text, text


def test_a_number_too_long_for_python_is_a_usage_error(session: Session) -> None:
    for line in ("%isstream k ", "%isstream k="):
        assert "5000-digit number is too long" in session.usage_error(line + "9" * 5000)


def test_a_cell_that_awaits_is_a_usage_error(session: Session) -> None:
    """A notebook cell may await at top level; %%isstream runs its cell itself and cannot:
    one clear line instead of a SyntaxError traceback into the package."""
    session.ok("import asyncio")
    assert "top-level await" in session.usage_error(
        "%%isstream\nawait asyncio.sleep(0)\nx = 1\n")
