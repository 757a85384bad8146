"""The end of a run as a user lives it (issue 16).

Each scenario is a script that logs and exits, run as a real subprocess against a loopback
receiver in this process. What the receiver holds is counted after the script has exited. Every
event's value is its sequence number, so missing and duplicate events are counted exactly. The
access key is a distinctive fake one, and no output of any script or ``spool`` command holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import selectors
import signal
import struct
import subprocess
import sys
import termios
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from isstreamer_jupyter.receiver import Faults, Receiver

KEY = "fake-KEY-run-end-3c9e71d2b8"
#: the events API's default batch size: the bound on the events one request carries
BATCH_SIZE = 10
#: a tqdm bar's elapsed time and rate, "[00:02<00:03, 30.1events/s]", in any unit
ANY_BAR = re.compile(r"\[\d\d:\d\d[^\]\r\n]*/s")
#: the same, counting events
EVENTS_BAR = re.compile(r"\[\d\d:\d\d[^\]\r\n]*events?/s")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

#: The one script every scenario runs. It logs `events` sequence numbers (`pause` s apart),
#: says when it enters close() and when close() returned, then runs `after`.
SCRIPT = """\
import time

from isstreamer_jupyter import Streamer


def say(line):
    print(line, flush=True)


streamer = Streamer(bucket_name={bucket!r}, bucket_key={bucket!r}{options})
for seq in range({events}):
    streamer.log("seq", seq)
    {pause}
say(f"closing at {{time.time()!r}}")
streamer.close()
say("closed")
{after}
"""


def script_text(*, bucket: str, events: int, per_second: float = 0, options: str = "",
                after: str = "") -> str:
    """SCRIPT for one scenario: `per_second` events at most (0: all at once); `options` are
    Streamer keyword arguments, as source."""
    pause = f"time.sleep({1 / per_second!r})" if per_second else "pass"
    return SCRIPT.format(bucket=bucket, events=events, pause=pause,
                         options=f", {options}" if options else "", after=after)


def script_env(tmp_path: Path, rx: Receiver, **settings: str) -> dict[str, str]:
    """A clean environment: no IS_* variable from outside, HOME and the spool in `tmp_path`,
    the fake key, the receiver's API base, and `settings` as IS_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IS_")}
    (tmp_path / "home").mkdir(exist_ok=True)
    env.update(HOME=str(tmp_path / "home"), IS_SPOOL_DIR=str(tmp_path / "spool"),
               IS_ACCESS_KEY=KEY, IS_API_BASE=rx.api_base)
    env.update({f"IS_{name.upper()}": value for name, value in settings.items()})
    return env


@dataclass(frozen=True)
class Ran:
    """What a finished process left: its exit code, its output, and when it ended."""

    returncode: int
    stdout: str
    stderr: str
    ended: float  # time.time() when it had exited

    def closing_at(self) -> float:
        """When the script entered close(), as it said on stdout."""
        found = re.search(r"^closing at (\S+)$", self.stdout, re.MULTILINE)
        assert found, f"the script never reached close():\n{self}"
        return float(found.group(1))

    def __str__(self) -> str:
        return (f"exit {self.returncode}\n--- stdout ---\n{self.stdout[-3000:]}\n"
                f"--- stderr ---\n{self.stderr[-3000:]}")


class Proc:
    """A subprocess whose stdout and stderr are read as they come; every wait is bounded.

    With `tty`, stderr is a terminal (a pty), as when a user runs the script in one.
    """

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, *,
                 tty: bool = False) -> None:
        slave = None
        if tty:
            master, slave = os.openpty()
            # a terminal's size, as tqdm asks for it: 24 rows of 120 columns
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
        self.popen = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE,
                                      stderr=slave if tty else subprocess.PIPE)
        assert self.popen.stdout is not None
        self._out = self.popen.stdout.fileno()
        if slave is not None:
            os.close(slave)  # (the child holds it: reading the master ends when it exits)
            self._err = master
        else:
            assert self.popen.stderr is not None
            self._err = self.popen.stderr.fileno()
        self._got = {self._out: bytearray(), self._err: bytearray()}
        self._open = selectors.DefaultSelector()
        for fd in self._got:
            self._open.register(fd, selectors.EVENT_READ)
        self._tty = tty

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc: object) -> None:
        """Kill it if it still runs (a test failed half-way), and close what it read from."""
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)
        self._open.close()
        if self._tty:
            with contextlib.suppress(OSError):
                os.close(self._err)
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()

    @property
    def stdout(self) -> str:
        return self._got[self._out].decode(errors="replace")

    @property
    def stderr(self) -> str:
        return self._got[self._err].decode(errors="replace")

    def _read(self, deadline: float, until: str | None = None) -> None:
        """Read until both streams end, `until` is on stdout, or `deadline`."""
        while self._open.get_map() and not (until and until in self.stdout):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for key, _ in self._open.select(left):
                try:
                    data = os.read(key.fd, 65536)
                except OSError:  # (a pty's master once the child has exited: EIO)
                    data = b""
                if data:
                    self._got[key.fd] += data
                else:
                    self._open.unregister(key.fd)

    def wait_for_line(self, text: str, timeout: float) -> None:
        """Return once `text` is on its stdout; fail after `timeout` s."""
        self._read(time.monotonic() + timeout, until=text)
        assert text in self.stdout, (f"{text!r} not said within {timeout} s:\n"
                                     f"{self.stdout}\n{self.stderr}")

    def finish(self, timeout: float) -> Ran:
        """Wait for it to exit, `timeout` s at most (then kill it and fail). The access key
        must be in none of its output."""
        deadline = time.monotonic() + timeout
        self._read(deadline)
        try:
            returncode = self.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)
            raise AssertionError(f"still running after {timeout} s:\n"
                                 f"{self.stdout[-3000:]}\n{self.stderr[-3000:]}") from None
        ran = Ran(returncode, self.stdout, self.stderr, time.time())
        assert KEY not in ran.stdout + ran.stderr, f"the access key is in the output:\n{ran}"
        return ran


def start_script(tmp_path: Path, env: dict[str, str], *, tty: bool = False,
                 **script: Any) -> Proc:
    """Write SCRIPT for `script` (see script_text) to `tmp_path` and start it."""
    path = tmp_path / f"run_{script['bucket']}.py"
    path.write_text(script_text(**script))
    return Proc([sys.executable, str(path)], env, tmp_path, tty=tty)


def run_script(tmp_path: Path, env: dict[str, str], *, timeout: float, tty: bool = False,
               **script: Any) -> Ran:
    """Write SCRIPT for `script`, run it to its end (`timeout` s at most) and return that."""
    with start_script(tmp_path, env, tty=tty, **script) as proc:
        return proc.finish(timeout)


def spool(tmp_path: Path, env: dict[str, str], *args: str, timeout: float = 120) -> Ran:
    """``python -m isstreamer_jupyter spool ARGS`` as a user runs it."""
    with Proc([sys.executable, "-m", "isstreamer_jupyter", "spool", *args], env,
              tmp_path) as proc:
        return proc.finish(timeout)


@dataclass(frozen=True)
class Tally:
    """The receivers' events of one bucket, against the sequence numbers logged."""

    missing: list[int]
    duplicates: int  # copies beyond the first
    foreign: int  # events that are none of the sequence numbers logged

    @property
    def complete(self) -> bool:
        return not self.missing and not self.foreign


def tally(bucket: str, logged: int, *receivers: Receiver) -> Tally:
    """Count what `receivers` hold in `bucket`, after the script exited."""
    seen = Counter(ev["value"] if ev["key"] == "seq" else None
                   for rx in receivers for ev in rx.events(bucket))
    expected = range(logged)
    return Tally(missing=[seq for seq in expected if not seen[seq]],
                 duplicates=sum(n - 1 for seq, n in seen.items() if seq in expected),
                 foreign=sum(n for seq, n in seen.items() if seq not in expected))


# -- delivery at close() ------------------------------------------------------------------


def test_close_delivers_every_event_through_the_fault_mix(tmp_path: Path,
                                                          make_receiver: Any) -> None:
    """2,000 events at the default settings through 5xx, resets and 429s: close() waits while
    delivery progresses, so all of them are on the service once the script has exited. It
    takes about a minute at the default pace of 3 requests a second."""
    faults = Faults(p_5xx=0.2, p_reset_before=0.05, p_429=0.05, retry_after=1,
                    p_reset_after=0.02)
    rx = make_receiver(access_keys=[KEY], faults=faults, seed=16)
    ran = run_script(tmp_path, script_env(tmp_path, rx), timeout=250, bucket="fault-mix",
                     events=2000)
    assert ran.returncode == 0, str(ran)
    got = tally("fault-mix", 2000, rx)
    stats = rx.stats()
    assert got.complete, f"{got}\n{stats}"
    # only a reset after storing leaves the client without the answer, and so sends twice
    assert stats["injected"]["reset_after"] > 0, stats  # (else the bound below says nothing)
    assert got.duplicates <= stats["injected"]["reset_after"] * BATCH_SIZE, f"{got}\n{stats}"


def test_close_delivers_every_event_within_the_rate_limit(tmp_path: Path,
                                                          make_receiver: Any) -> None:
    """600 events logged at 60/s against the service's 30 requests per 10 s, at the default
    settings: all of them are there after the exit, and no request was answered 429."""
    rx = make_receiver(access_keys=[KEY], rate_limit=30, rate_window=10)
    ran = run_script(tmp_path, script_env(tmp_path, rx), timeout=200, bucket="rate-limit",
                     events=600, per_second=60)
    assert ran.returncode == 0, str(ran)
    got = tally("rate-limit", 600, rx)
    statuses = rx.stats()["statuses"]  # {HTTP status: answers}
    assert got.complete and got.duplicates == 0, f"{got}\n{statuses}"
    assert statuses.get(204, 0) >= 600 // BATCH_SIZE, statuses
    assert statuses.get(429, 0) == 0, statuses


# -- a whole outage, then `spool send` -----------------------------------------------------


def test_a_whole_outage_ends_the_script_then_spool_send_delivers(tmp_path: Path,
                                                                  make_receiver: Any) -> None:
    """The service answers nothing for the whole run. The script exits once nothing was
    acknowledged for flush_timeout (a request then under way ends within its timeout).
    `spool status` lists what it left; once the service is back, `spool send` delivers it."""
    flush_timeout, request_timeout = 3, 2
    # Each request hangs past its timeout, and then gets a 503: nothing is ever stored.
    rx = make_receiver(access_keys=[KEY], faults=Faults(p_5xx=1.0, latency=request_timeout + 3))
    env = script_env(tmp_path, rx, flush_timeout=str(flush_timeout),
                     timeout=str(request_timeout))
    ran = run_script(tmp_path, env, timeout=120, bucket="outage", events=100)
    assert ran.returncode == 0, str(ran)
    assert rx.stats()["events"] == 0, f"{rx.stats()}"  # (the outage was whole)
    # Not a performance figure: the bound says the script does not hang on a dead service.
    # With no acknowledgment at all, the stall is counted from close() at the latest. The
    # slack is for the interpreter's exit on a loaded machine, well below an unbounded wait.
    slack = 5
    waited = ran.ended - ran.closing_at()
    assert waited <= flush_timeout + request_timeout + slack, f"{waited:.1f} s from close():\n{ran}"
    assert "spool send" in ran.stderr, str(ran)  # (every "they stay in the spool" names it)

    status = spool(tmp_path, env, "status")
    assert status.returncode == 0, str(status)
    assert "outage" in status.stdout, str(status)
    assert re.search(r"\b100\b", status.stdout), str(status)
    assert str(tmp_path / "spool") in status.stdout, str(status)
    for path in (tmp_path / "spool").rglob("*"):
        assert not path.is_file() or KEY.encode() not in path.read_bytes(), path

    rx.set_faults(p_5xx=0.0, latency=0.0)
    sent = spool(tmp_path, env, "send")
    assert sent.returncode == 0, str(sent)
    got = tally("outage", 100, rx)
    assert got.complete and got.duplicates == 0, f"{got}"


# -- Ctrl-C ---------------------------------------------------------------------------------


def test_sigint_ends_a_long_close_at_once_and_spool_send_sends_the_rest(
        tmp_path: Path, make_receiver: Any) -> None:
    """SIGINT while close() waits on a long backlog (one request per 2 s): the script exits at
    once with the KeyboardInterrupt, names `spool send`, and that command delivers the rest,
    none of it twice."""
    rx = make_receiver(access_keys=[KEY], rate_limit=1, rate_window=2)
    # A long exit wait: a script that waited in the exit hook after Ctrl-C would show it.
    env = script_env(tmp_path, rx, exit_timeout="60")
    with start_script(tmp_path, env, bucket="sigint", events=200) as proc:
        proc.wait_for_line("closing at", timeout=60)
        # Into close()'s wait, once a batch is stored: those must not be sent again. The
        # other 19 batches, at one each 2 s, would take close() some 40 s more.
        rx.wait_for(BATCH_SIZE, bucket_key="sigint", timeout=30)
        proc.popen.send_signal(signal.SIGINT)
        interrupted = time.time()
        ran = proc.finish(timeout=90)
    # Not a performance figure: Ctrl-C means stop now. The 2 s, with slack for the
    # interpreter's exit on a loaded machine; waiting out the backlog or the exit hook's 60 s
    # would be far past it.
    assert ran.ended - interrupted <= 5, f"{ran.ended - interrupted:.1f} s from SIGINT:\n{ran}"
    assert "closed" not in ran.stdout.splitlines(), str(ran)  # (close() did not return)
    assert ran.returncode == -signal.SIGINT, str(ran)  # (Python's exit on a KeyboardInterrupt)
    assert "KeyboardInterrupt" in ran.stderr, str(ran)
    assert "spool send" in ran.stderr, str(ran)
    before = tally("sigint", 200, rx)
    assert before.missing, f"{before}"  # (the backlog was long: some were left to send)

    # the service fully open again, at the same address (the spool's events are for it)
    rx.stop()
    open_rx = make_receiver(port=rx.port, access_keys=[KEY])
    sent = spool(tmp_path, env, "send")
    assert sent.returncode == 0, str(sent)
    got = tally("sigint", 200, rx, open_rx)
    assert got.complete and got.duplicates == 0, f"{got}"


# -- the progress bar -----------------------------------------------------------------------


@pytest.mark.parametrize("tty,progress,shown", [
    (True, None, True),  # a terminal: on by default
    (True, "false", False),  # turned off
    (False, None, False),  # stderr a pipe: off by default
])
def test_a_long_close_shows_a_progress_bar_in_a_terminal(
        tmp_path: Path, make_receiver: Any, tty: bool, progress: str | None,
        shown: bool) -> None:
    """150 events at the default pace of 3 requests a second: close() lasts some 5 s. In a
    terminal it shows tqdm's bar on stderr, ending with the run's summary line."""
    rx = make_receiver(access_keys=[KEY])
    env = script_env(tmp_path, rx, **({"progress": progress} if progress else {}))
    ran = run_script(tmp_path, env, timeout=120, tty=tty, bucket="progress", events=150,
                     after="say(f'summary: {streamer.outcome}')")
    assert ran.returncode == 0, str(ran)
    assert tally("progress", 150, rx).complete
    found = re.search(r"^summary: (close: \d+ events? delivered in .*)$", ran.stdout,
                      re.MULTILINE)
    assert found, str(ran)  # (all of them delivered: close()'s outcome says so)
    if shown:
        bars = list(EVENTS_BAR.finditer(ran.stderr))
        assert bars, str(ran)
        # the wait ends in the summary line, after the bar's last state
        assert ran.stderr.rfind(found.group(1)) > bars[-1].end(), str(ran)
    else:
        assert not ANY_BAR.search(ran.stderr), str(ran)


@pytest.mark.parametrize("progress", [None, False])
def test_a_long_close_shows_a_progress_widget_in_a_kernel(
        tmp_path: Path, make_receiver: Any, monkeypatch: pytest.MonkeyPatch,
        progress: bool | None) -> None:
    """The same close() in a real ipykernel shows tqdm's widget, unless progress=False."""
    from jupyter_client.manager import start_new_kernel

    for name in ("JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR", "JUPYTER_CONFIG_DIR", "IPYTHONDIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    rx = make_receiver(access_keys=[KEY])
    options = "" if progress is None else f"progress={progress}"
    code = script_text(bucket="kernel", events=150, options=options)
    km, kc = start_new_kernel(kernel_name="python3", env=script_env(tmp_path, rx),
                              cwd=str(tmp_path), startup_timeout=60)
    try:
        messages = execute(kc, code, timeout=120)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    said = json.dumps([m["content"] for m in messages])
    assert KEY not in said
    assert tally("kernel", 150, rx).complete
    views = [m for m in messages if m["header"]["msg_type"] in ("display_data",
                                                                 "update_display_data")
             and WIDGET_VIEW in m["content"].get("data", {})]
    bars = [m for m in messages if m["header"]["msg_type"] == "comm_open"
            and m["content"]["data"].get("state", {}).get("_model_name")
            in ("FloatProgressModel", "IntProgressModel")]
    if progress is None:
        assert views and bars, said[-3000:]
    else:
        assert not bars, said[-3000:]


def execute(kc: Any, code: str, timeout: float) -> list[dict[str, Any]]:
    """Run `code` in the kernel; its iopub messages until it is idle again (`timeout` s at
    most). An error in the code fails the test."""
    msg_id = kc.execute(code)
    messages = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"the kernel was not idle within {timeout} s: {messages[-5:]}"
        msg = kc.get_iopub_msg(timeout=left)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        messages.append(msg)
        kind, content = msg["header"]["msg_type"], msg["content"]
        if kind == "error":
            raise AssertionError("\n".join(content["traceback"]))
        if kind == "status" and content["execution_state"] == "idle":
            return messages



def test_only_the_main_thread_draws_a_progress_bar() -> None:
    """The panel's Flush button waits in a thread of its own; in Jupyter its bar went into
    whichever cell was running."""
    import threading

    from isstreamer_jupyter._progress import wanted

    assert wanted(True)
    seen: list[bool] = []
    worker = threading.Thread(target=lambda: seen.append(wanted(True)))
    worker.start()
    worker.join(10)
    assert seen == [False]
