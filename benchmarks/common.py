"""Shared helpers of the benchmarks: receivers, both clients, timers, the results table.

The receiver is the project's loopback :class:`~isstreamer_jupyter.receiver.Receiver`. By default
it runs in a process of its own, driven over a pipe, so that it does not share the client's
GIL (the real service is remote; a client's cost is what is measured). ``BENCH_INPROC=1`` runs
it in the benchmark's own process instead.

Each benchmark script works in a fresh scratch folder under ``/tmp/bench`` (ISStreamer writes
``err_missed_events.txt`` into the working folder), with one access key and bucket key per run
so runs never meet in a spool or a rate-limit window.
``BENCH_KEEP=1`` keeps that folder at the end (for a look at the scripts' output).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import itertools
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRATCH = Path(os.environ.get("BENCH_SCRATCH", "/tmp/bench"))
INPROC = os.environ.get("BENCH_INPROC", "") not in ("", "0")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Our settings read these; a benchmark must not be steered by the caller's environment.
for _name in ("IS_ACCESS_KEY", "IS_API_ACCESS_KEY", "IS_API_BASE", "IS_API_HOST",
              "IS_BUCKET_NAME", "IS_BUCKET_KEY", "IS_BATCH_SIZE", "IS_FLUSH_INTERVAL",
              "IS_MAX_RPS", "IS_OFFLINE", "IS_MAX_QUEUE", "IS_TIMEOUT", "IS_FLUSH_TIMEOUT",
              "IS_EXIT_TIMEOUT", "IS_OFFLINE_FILE", "IS_SPOOL", "IS_SPOOL_DIR",
              "IS_SPOOL_INTERVAL", "IS_SPOOL_MAX_BYTES", "IS_DEBUG_LEVEL", "IS_PROGRESS"):
    os.environ.pop(_name, None)


# The report goes to the real stdout; everything else printed meanwhile (ISStreamer prints
# "ship: ISStreamer failed to ship..." from its threads) goes to stderr. See quiet_stdout().
OUT = sys.stdout


def quiet_stdout() -> None:
    """Send stray prints (ISStreamer's) to stderr; report() still writes to the real stdout."""
    sys.stdout = sys.stderr


def report(text: str = "") -> None:
    OUT.write(text + "\n")
    OUT.flush()


# ------------------------------------------------------------------------------ the machine
def machine_line() -> str:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (f"{now} · {usable} cores ({cpu or 'unknown CPU'}) · Python "
            f"{platform.python_version()} · {platform.system()} {platform.release()}")


def iss_version() -> str:
    try:
        from importlib.metadata import version

        return version("ISStreamer")
    except Exception:
        return "not installed"


# ------------------------------------------------------------------------------ scratch
_scratch_dir: Path | None = None


def enter_scratch(name: str) -> Path:
    """A fresh folder under /tmp/bench for this script; it becomes the working folder."""
    global _scratch_dir
    SCRATCH.mkdir(parents=True, exist_ok=True)
    _scratch_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=SCRATCH))
    os.chdir(_scratch_dir)
    return _scratch_dir


def scratch(name: str) -> Path:
    """A new sub-folder of this script's scratch folder."""
    base = _scratch_dir or SCRATCH
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=base))


def cleanup_scratch() -> None:
    """Remove this script's scratch folder (kept, and named on stderr, with BENCH_KEEP=1)."""
    if _scratch_dir is not None and os.environ.get("BENCH_KEEP", "") not in ("", "0"):
        print(f"# scratch kept: {_scratch_dir}", file=sys.stderr)
        return
    if _scratch_dir is not None:
        os.chdir(SCRATCH)
        shutil.rmtree(_scratch_dir, ignore_errors=True)


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def dead_api_base() -> str:
    """An API base on a loopback port where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/api"


# ------------------------------------------------------------------------------ receivers
class RemoteReceiver:
    """The project's Receiver in a child process; the methods the benchmarks use, over a pipe.

    ``Receiver(**kwargs)``; ``faults`` is given as a dict of ``Faults`` fields.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--receiver", json.dumps(kwargs)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        if not first:
            raise RuntimeError("the receiver process did not start")
        hello = json.loads(first)
        self.port: int = hello["port"]
        self.host_base: str = hello["host_base"]
        self.api_base: str = hello["api_base"]
        self._lock = threading.Lock()

    def _call(self, op: str, **args: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self._lock:
            self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the receiver process went away")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"receiver: {reply['error']}")
        return reply["result"]

    def stats(self) -> dict[str, Any]:
        stats = self._call("stats")
        stats["statuses"] = {int(k): v for k, v in stats["statuses"].items()}
        return stats

    def count(self, bucket_key: str | None = None) -> int:
        return self._call("count", bucket_key=bucket_key)

    def values(self, bucket_key: str | None = None) -> list[Any]:
        """The stored events' values, in arrival order."""
        return self._call("values", bucket_key=bucket_key)

    def outage(self, seconds: float) -> None:
        self._call("outage", seconds=seconds)

    def set_faults(self, **changes: float) -> None:
        self._call("faults", changes=changes)

    def clear(self) -> None:
        self._call("clear")

    def wait_count(self, n: int, bucket_key: str | None = None, timeout: float = 10.0) -> int:
        """Wait (bounded) until at least n events are stored; return the count then."""
        return self._call("wait", n=n, bucket_key=bucket_key, timeout=timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(RuntimeError, OSError, ValueError):
                self._call("quit")
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class LocalReceiver:
    """The same interface over a Receiver in this process (``BENCH_INPROC=1``)."""

    def __init__(self, **kwargs: Any) -> None:
        from isstreamer_jupyter.receiver import Faults, Receiver

        faults = kwargs.pop("faults", None)
        self.rx = Receiver(faults=Faults(**faults) if faults else None, **kwargs).start()
        self.port = self.rx.port
        self.host_base = self.rx.host_base
        self.api_base = self.rx.api_base

    def stats(self) -> dict[str, Any]:
        return self.rx.stats()

    def count(self, bucket_key: str | None = None) -> int:
        return len(self.rx.events(bucket_key)) if bucket_key else self.rx.stats()["events"]

    def values(self, bucket_key: str | None = None) -> list[Any]:
        return [e["value"] for e in self.rx.events(bucket_key)]

    def outage(self, seconds: float) -> None:
        self.rx.outage(seconds)

    def set_faults(self, **changes: float) -> None:
        self.rx.set_faults(**changes)

    def clear(self) -> None:
        self.rx.clear()

    def wait_count(self, n: int, bucket_key: str | None = None, timeout: float = 10.0) -> int:
        try:
            return len(self.rx.wait_for(n, bucket_key, timeout))
        except TimeoutError:
            return self.count(bucket_key)

    def close(self) -> None:
        self.rx.stop()


AnyReceiver = RemoteReceiver | LocalReceiver
_receivers: list[AnyReceiver] = []


def start_receiver(**kwargs: Any) -> AnyReceiver:
    """The project's receiver (own process unless BENCH_INPROC=1); closed by finish()."""
    rx = LocalReceiver(**kwargs) if INPROC else RemoteReceiver(**kwargs)
    _receivers.append(rx)
    return rx


def receiver_mode() -> str:
    return ("in the benchmark's process" if INPROC
            else "in its own process (the client does not share its GIL)")


def _receiver_main(raw: str) -> None:
    """Child side of RemoteReceiver: serve, and answer commands on stdin, one JSON per line."""
    from isstreamer_jupyter.receiver import Faults, Receiver

    kwargs = json.loads(raw)
    faults = kwargs.pop("faults", None)
    rx = Receiver(faults=Faults(**faults) if faults else None, **kwargs).start()
    out = sys.stdout
    out.write(json.dumps({"port": rx.port, "host_base": rx.host_base,
                          "api_base": rx.api_base}) + "\n")
    out.flush()
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.pop("op")
        try:
            if op == "quit":
                out.write(json.dumps({"result": None}) + "\n")
                out.flush()
                break
            if op == "stats":
                result: Any = rx.stats()
            elif op == "count":
                key = cmd.get("bucket_key")
                result = len(rx.events(key)) if key else rx.stats()["events"]
            elif op == "values":
                result = [e["value"] for e in rx.events(cmd.get("bucket_key"))]
            elif op == "outage":
                result = rx.outage(cmd["seconds"])
            elif op == "faults":
                result = rx.set_faults(**cmd["changes"])
            elif op == "clear":
                result = rx.clear()
            elif op == "wait":
                try:
                    result = len(rx.wait_for(cmd["n"], cmd.get("bucket_key"), cmd["timeout"]))
                except TimeoutError:
                    key = cmd.get("bucket_key")
                    result = len(rx.events(key)) if key else rx.stats()["events"]
            else:
                raise ValueError(f"unknown op {op!r}")
            out.write(json.dumps({"result": result}) + "\n")
        except Exception as exc:
            out.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
        out.flush()
    rx.stop()


# ------------------------------------------------------------------------------ the clients
def make_ours(rx: AnyReceiver | None, *, api_base: str | None = None, spool_dir: Any = None,
              **settings: Any) -> Any:
    """Our Streamer against `rx` (or `api_base`), with its own keys and a scratch spool."""
    from isstreamer_jupyter import Streamer

    settings.setdefault("bucket_name", "bench")
    settings.setdefault("bucket_key", unique("ours"))
    settings.setdefault("access_key", unique("key"))
    if settings.get("spool", True):
        settings["spool_dir"] = str(spool_dir or scratch("spool"))
    return Streamer(api_base=api_base or (rx.api_base if rx else None), **settings)


def make_isstreamer(rx: AnyReceiver, *, buffer_size: int = 10, bucket_key: str | None = None,
                    access_key: str | None = None) -> Any:
    """ISStreamer 2.0.0 against `rx`: its API base can only come from an ini file."""
    from ISStreamer.Streamer import Streamer as IsStreamer

    folder = scratch("iss")
    ini = folder / "iss.ini"  # not isstreamer.ini: ours would read that from the working folder
    ini.write_text(
        "[isstreamer.client_config]\n"
        f"access_key = {access_key or unique('key')}\n"
        "[isstreamer.api_config]\n"
        f"stream_api_base = {rx.host_base}\n")
    return IsStreamer(bucket_name="bench", bucket_key=bucket_key or unique("iss"),
                      ini_file_location=str(ini), buffer_size=buffer_size)


def iss_threads() -> list[threading.Thread]:
    """ISStreamer's shipping threads: every non-daemon thread but the main one (ours and the
    in-process receiver's threads are daemons)."""
    main = threading.main_thread()
    return [t for t in threading.enumerate() if t is not main and not t.daemon]


def join_iss(timeout: float) -> int:
    """Join ISStreamer's threads for at most `timeout` seconds; return how many still run."""
    deadline = time.monotonic() + timeout
    while True:
        threads = iss_threads()
        if not threads:
            return 0
        left = deadline - time.monotonic()
        if left <= 0:
            return len(threads)
        threads[0].join(min(left, 1.0))


def close_iss(streamer: Any) -> None:
    """ISStreamer.close() ships the remainder synchronously in the caller (up to 3 tries)."""
    try:
        streamer.close()
    except Exception as exc:  # it raises on some failures; a benchmark goes on
        print(f"# ISStreamer.close() raised {type(exc).__name__}: {exc}", file=sys.stderr)


def wait_stable(count: Callable[[], int], *, quiet: float = 1.0, timeout: float = 20.0,
                target: int | None = None) -> int:
    """Poll `count` until it reaches `target` or has not grown for `quiet` s (bounded)."""
    deadline = time.monotonic() + timeout
    last, since = count(), time.monotonic()
    while time.monotonic() < deadline:
        if target is not None and last >= target:
            return last
        time.sleep(0.05)
        now = count()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return last
    return last


# ------------------------------------------------------------------------------ raw socket
def raw_bodies(n: int, batch: int = 500) -> list[bytes]:
    """Events bodies of n events (values 0..n-1), `batch` a request, as compact JSON arrays of
    ``{"key", "value", "epoch"}`` (what the clients send)."""
    epoch = round(time.time(), 6)
    return [json.dumps([{"key": "bench", "value": i, "epoch": epoch}
                        for i in range(first, min(first + batch, n))],
                       separators=(",", ":")).encode() for first in range(0, n, batch)]


def _read_answer(sock: socket.socket, buf: bytearray) -> int:
    """Read one HTTP answer from `sock` (what is already in `buf` first); return its status."""
    while (end := buf.find(b"\r\n\r\n")) < 0:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the receiver closed the connection")
        buf += chunk
    head = bytes(buf[:end]).decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    length = 0
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    del buf[:end + 4]
    while len(buf) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the receiver closed the connection")
        buf += chunk
    del buf[:length]
    return status


def raw_socket_delivery(rx: AnyReceiver, n: int, batch: int = 500) -> tuple[float, float, str]:
    """A do-nothing client: n events, pre-encoded in bodies of `batch`, sent over one keep-alive
    connection, one request at a time. Returns (seconds from the first request to the last
    answer, this process's CPU seconds over that span, the bucket key). Encoding and connecting
    are not timed."""
    from urllib.parse import urlsplit

    bucket_key, access_key = unique("raw"), unique("key")
    parts = urlsplit(rx.api_base)
    head = (f"POST {parts.path}/events HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Content-Type: application/json\r\nAccept-Version: ~0\r\n"
            f"X-IS-AccessKey: {access_key}\r\nX-IS-BucketKey: {bucket_key}\r\n"
            f"Content-Length: ").encode()
    requests = [head + str(len(body)).encode() + b"\r\n\r\n" + body
                for body in raw_bodies(n, batch)]
    buf = bytearray()
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0, cpu0 = time.perf_counter(), time.process_time()
        for request in requests:
            sock.sendall(request)
            status = _read_answer(sock, buf)
            if not 200 <= status < 300:
                raise RuntimeError(f"the receiver answered {status} to the raw client")
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return seconds, cpu, bucket_key


# ------------------------------------------------------------------------------ counting
def loss_and_dups(values: Iterable[Any], logged: Sequence[int] | range) -> tuple[int, int, int]:
    """(lost, duplicates, out of order) of logged unique int values among stored `values`.

    duplicates: extra copies stored beyond the first; out of order: first copies stored right
    after a larger value (arrival order at the receiver; a resent batch's second copy does not
    count)."""
    values = list(values)
    counts = Counter(values)
    lost = sum(1 for v in logged if counts.get(v, 0) == 0)
    dups = sum(n - 1 for n in counts.values() if n > 1)
    seen: set[Any] = set()
    first = []
    for v in values:
        if v not in seen:
            seen.add(v)
            first.append(v)
    backwards = sum(1 for a, b in itertools.pairwise(first) if b < a)
    return lost, dups, backwards


# ------------------------------------------------------------------------------ timing
def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def log_loop_ns(log: Callable[[str, Any], None], n: int, start: int = 0) -> int:
    """Nanoseconds for n calls of log('bench', int), the whole loop timed at once."""
    t0 = time.perf_counter_ns()
    for i in range(start, start + n):
        log("bench", i)
    return time.perf_counter_ns() - t0


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------------------------------ the table
class Table:
    """metric | ours | ISStreamer 2.0.0 | target | pass/fail, printed as markdown."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.rows: list[tuple[str, str, str, str, str]] = []
        self.notes: list[str] = []
        self.failed = 0

    def row(self, metric: str, ours: Any, iss: Any = "—", target: str = "—",
            ok: bool | None = None) -> None:
        verdict = "—" if ok is None else ("pass" if ok else "**FAIL**")
        if ok is False:
            self.failed += 1
        self.rows.append((metric, fmt(ours), fmt(iss), target, verdict))
        # progress, so a long run shows where it is
        print(f"# {metric}: ours {fmt(ours)} | ISStreamer {fmt(iss)} | {target} | {verdict}",
              file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def render(self) -> str:
        head = ["metric", "ours", f"ISStreamer {iss_version()}", "target", "pass/fail"]
        lines = [f"### {self.title}", "", "| " + " | ".join(head) + " |",
                 "| " + " | ".join("---" for _ in head) + " |"]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        if self.notes:
            lines.append("")
            lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines)


def fmt(x: Any) -> str:
    if isinstance(x, float):
        if x == 0:
            return "0"
        if abs(x) >= 100:
            return f"{x:,.0f}"
        if abs(x) >= 10:
            return f"{x:.1f}"
        return f"{x:.2f}"
    if isinstance(x, int) and not isinstance(x, bool):
        return f"{x:,}"
    return str(x)


def code_version() -> str:
    """The commit measured, with "+ uncommitted changes" when the tree is dirty."""
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain",
                                "--untracked-files=no", "--", "isstreamer_jupyter"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{rev or 'unknown'}{' + uncommitted changes to isstreamer_jupyter/' if dirty else ''}"


def header(title: str) -> str:
    try:
        one, five, fifteen = os.getloadavg()
        load = f"load average {one:.2f} {five:.2f} {fifteen:.2f}"
    except OSError:
        load = ""
    return (f"## {title}\n\n{machine_line()}  \ncode: {code_version()} · {load} at start  \n"
            f"receiver: the project's loopback Receiver {receiver_mode()}; ISStreamer "
            f"{iss_version()} from PyPI\n")


def finish(code: int = 0) -> None:
    """Stop receivers, give ISStreamer's leftover threads a bounded wait, exit without waiting
    on them (they are non-daemon and could hold the interpreter for minutes)."""
    left = join_iss(10.0)
    if left:
        print(f"# {left} ISStreamer threads still running at exit; not waited for",
              file=sys.stderr)
    for rx in _receivers:
        with contextlib.suppress(Exception):
            rx.close()
    cleanup_scratch()
    OUT.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--receiver":
        _receiver_main(sys.argv[2])
    else:
        print("usage: common.py --receiver JSON (internal)", file=sys.stderr)
        sys.exit(2)


def run_steps(t: Any, steps: tuple[tuple[str, Any], ...], started: float) -> None:
    """Run each (name, step) into table `t`: a broken step is reported and the others still
    run; then print the table and how many targets were missed, and exit 0."""
    for name, step in steps:
        began = time.monotonic()
        try:
            step()
        except Exception as exc:
            t.row(f"{name}: step failed: {type(exc).__name__}: {exc}", "error", "", "", False)
        print(f"# step {name}: {time.monotonic() - began:.1f} s", file=sys.stderr, flush=True)
    report(t.render())
    report(f"\n{t.failed} target(s) missed; ran in {time.monotonic() - started:.0f} s")
    finish(0)
