"""A loopback receiver that speaks the Initial State events API.

For tests, demos, benchmarks and offline work: it answers like the service (statuses, error
bodies, rate-limit headers, monthly cap, removed buckets), stores what it accepts in memory,
and can inject faults (5xx, 429, connection resets, latency, whole outages) on demand.

Standard library only. One ``ThreadingHTTPServer`` speaking HTTP/1.1 with keep-alive, one lock
around the stored state, no per-request logging: it takes well over 50,000 events/s in batches
of 500 from a single client.

    with Receiver(rate_limit=30, faults=Faults(p_5xx=0.1), seed=1) as rx:
        post_events_to(rx.api_base + "/events")
        events = rx.wait_for(1000)

Endpoints: ``POST /api/buckets``, ``POST /api/events``, ``GET /api/events?accessKey=..``, and
for other processes ``GET /_receiver/stats`` and ``GET /_receiver/events?bucketKey=..``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import random
import re
import selectors
import signal
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

__all__ = ["Faults", "Receiver", "serve_main"]

MAX_VALUE_LENGTH = 2000  # characters of a string value, as the service
MAX_BUCKET_KEY_LENGTH = 250
MAX_BUCKET_NAME_LENGTH = 250
_BAD_BUCKET_KEY_CHARS = (":", '"', "'")
# A body over max_body is read and thrown away (so the 413 reaches the client and the
# connection stays usable) up to this size; beyond it the connection is closed after the 413.
_DRAIN_LIMIT = 64 * 1024 * 1024
_NUMERIC_STRING = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?")
_REASONS = {int(s): s.phrase for s in HTTPStatus}
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


@dataclass
class Faults:
    """Faults to inject. Probabilities are per request to ``/api/events`` and ``/api/buckets``.

    ``p_reset_before``, ``p_5xx`` and ``p_429`` are exclusive outcomes of one draw per request
    (their sum must be at most 1); ``p_reset_after`` is a second, independent draw that only
    matters when the request succeeded.
    """

    p_5xx: float = 0.0  # answer 503 without storing
    p_reset_before: float = 0.0  # read the request, then reset the connection without storing
    p_reset_after: float = 0.0  # store the events, then reset the connection without answering
    p_429: float = 0.0  # answer 429 with Retry-After (retry_after seconds) without storing
    retry_after: float = 1.0  # sent as an integer when whole, else as a decimal (for fast tests)
    latency: float = 0.0  # seconds to sleep before answering every API request

    def __post_init__(self) -> None:
        for name in ("p_5xx", "p_reset_before", "p_reset_after", "p_429"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {p!r}")
        if self.p_reset_before + self.p_5xx + self.p_429 > 1.0 + 1e-9:
            raise ValueError("p_reset_before + p_5xx + p_429 must be at most 1")
        if self.retry_after < 0 or self.latency < 0:
            raise ValueError("retry_after and latency must not be negative")


def _error_body(kind: str, message: str | None = None) -> bytes:
    error: dict[str, str] = {"type": kind}
    if message is not None:
        error["message"] = message
    return json.dumps({"message": {"error": error}}).encode()


_ACCESS_DENIED = b'{"message":{"error":{"type":"ACCESS_DENIED_KEY"}}}'


def _bucket_key_problem(key: object) -> str | None:
    if not isinstance(key, str) or not key:
        return "the bucket key is missing"
    if len(key) > MAX_BUCKET_KEY_LENGTH:
        return f"the bucket key is longer than {MAX_BUCKET_KEY_LENGTH} characters"
    if any(c in key for c in _BAD_BUCKET_KEY_CHARS):
        return "the bucket key must not contain : \" or '"
    return None


def _check_events(events: list[Any], bucket_key: str, max_key: int) -> str | None:
    """Validate every event and tag it with ``bucket_key``; return the first problem, if any.

    Tagging before knowing the whole batch is valid is harmless: an invalid batch is dropped.
    """
    for i, ev in enumerate(events):
        if type(ev) is not dict:
            return f"event {i}: an event must be a JSON object"
        key = ev.get("key")
        if type(key) is not str or not key:
            return f"event {i}: 'key' must be a non-empty string"
        if len(key) > max_key:
            return f"event {i}: 'key' is longer than {max_key} characters"
        if "value" not in ev:
            return f"event {i}: 'value' is missing"
        value = ev["value"]
        t = type(value)
        if t is str:
            if len(value) > MAX_VALUE_LENGTH:
                return f"event {i}: 'value' is longer than {MAX_VALUE_LENGTH} characters"
        elif t is float:
            if not math.isfinite(value):
                return f"event {i}: 'value' must be a finite number"
        elif t is not int and t is not bool:
            return f"event {i}: 'value' must be a string, boolean or number"
        if "epoch" in ev:
            epoch = ev["epoch"]
            t = type(epoch)
            if t is float:
                if not math.isfinite(epoch):
                    return f"event {i}: 'epoch' must be a finite number"
            elif t is str:
                if not _NUMERIC_STRING.fullmatch(epoch):
                    return f"event {i}: 'epoch' must be a number or a numeric string"
            elif t is not int:
                return f"event {i}: 'epoch' must be a number or a numeric string"
        if "iso8601" in ev and type(ev["iso8601"]) is not str:
            return f"event {i}: 'iso8601' must be a string"
        ev["bucket_key"] = bucket_key
    return None


class _Reset(Exception):
    """Raised inside the handler to reset the connection instead of answering."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "isstreamer-receiver/1"
    sys_version = ""
    disable_nagle_algorithm = True
    timeout = None
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    # -- plumbing --------------------------------------------------------------------------

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        *,
        close: bool = False,
    ) -> None:
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"]
        if status != 204:
            head.append(f"Content-Length: {len(body)}\r\n")
            if body:
                head.append("Content-Type: application/json\r\n")
        if headers:
            head.extend(f"{k}: {v}\r\n" for k, v in headers.items())
        if close:
            self.close_connection = True
        if self.close_connection:
            head.append("Connection: close\r\n")
        head.append("\r\n")
        self.wfile.write("".join(head).encode("latin-1") + body)

    def _read_body(self) -> tuple[bytes | None, int]:
        """Return (body, bytes read); body is None when it was over max_body (drained)."""
        limit = self.server.receiver.max_body
        te = self.headers.get("Transfer-Encoding", "")
        if te and te.lower() != "identity":
            return self._read_chunked(limit)
        raw = self.headers.get("Content-Length")
        if raw is None:
            return b"", 0
        try:
            length = int(raw)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            return b"", 0
        if length <= limit:
            return self.rfile.read(length), length
        if length > _DRAIN_LIMIT:
            self.close_connection = True
            return None, 0
        left = length
        while left > 0:
            chunk = self.rfile.read(min(left, 65536))
            if not chunk:
                self.close_connection = True
                break
            left -= len(chunk)
        return None, length - left

    def _read_chunked(self, limit: int) -> tuple[bytes | None, int]:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                self.close_connection = True
                return None, total
            if size == 0:
                while self.rfile.readline(8192).strip():  # trailers
                    pass
                break
            chunk = self.rfile.read(size)
            self.rfile.readline(8)  # CRLF after the chunk
            total += len(chunk)
            if total > _DRAIN_LIMIT:
                self.close_connection = True
                return None, total
            if total <= limit:
                parts.append(chunk)
        return (b"".join(parts) if total <= limit else None), total

    def _reset(self) -> None:
        """Drop the connection with a TCP reset, no answer."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        self.server.mark_reset(self.connection)

    # -- routing ---------------------------------------------------------------------------

    def _dispatch(self) -> None:
        path, _, query = self.path.partition("?")
        if "://" in path:  # absolute form: the client sent it via a proxy
            path = urlsplit(path).path
        path = "/" + "/".join(p for p in path.split("/") if p)
        method = self.command
        if path in ("/api/events", "/api/buckets"):
            allowed = ("GET", "POST") if path == "/api/events" else ("POST",)
            if method in allowed:
                try:
                    self._api(method, path, query)
                except _Reset:
                    self._reset()
                return
        elif path in ("/_receiver/stats", "/_receiver/events"):
            allowed = ("GET",)
            if method == "GET":
                self._read_body()
                self._inspect(path, query)
                return
        else:
            self._read_body()
            # Only the path is echoed: a query string may hold an access key.
            self._send(404, _error_body("NOT_FOUND", f"no such endpoint: {path}"))
            return
        self._read_body()
        self._send(
            405,
            _error_body("METHOD_NOT_ALLOWED", f"{method} is not allowed on {path}"),
            {"Allow": ", ".join(allowed)},
        )

    def _inspect(self, path: str, query: str) -> None:
        rx = self.server.receiver
        if path == "/_receiver/stats":
            payload: Any = rx.stats()
        else:
            payload = rx.events(dict(parse_qsl(query)).get("bucketKey"))
        self._send(200, json.dumps(payload).encode())

    def _api(self, method: str, path: str, query: str) -> None:
        rx = self.server.receiver
        body, nbytes = self._read_body()
        faults, outage, draw, draw_after = rx.begin_request(nbytes)
        if faults.latency:
            time.sleep(faults.latency)
        if outage:
            rx.count_fault("outage")
            raise _Reset
        if body is None:
            return self._answer(413, _error_body("PAYLOAD_TOO_LARGE", "the body is over the limit"))
        if draw < faults.p_reset_before:
            rx.count_fault("reset_before")
            raise _Reset
        if draw < faults.p_reset_before + faults.p_5xx:
            rx.count_fault("5xx")
            return self._answer(503, _error_body("SERVICE_UNAVAILABLE", "injected fault"))
        if draw < faults.p_reset_before + faults.p_5xx + faults.p_429:
            rx.count_fault("429")
            ra = faults.retry_after
            retry = str(int(ra)) if ra == int(ra) else f"{ra:g}"
            return self._answer(
                429, _error_body("RATE_LIMITED", "injected fault"), {"Retry-After": retry}
            )

        pairs = parse_qsl(query, keep_blank_values=True) if query else []
        params = dict(pairs)
        access_key = self.headers.get("X-IS-AccessKey") or params.get("accessKey")
        if not rx.accepts_key(access_key):
            return self._answer(401, _ACCESS_DENIED)
        assert access_key is not None
        accepted, rate_headers = rx.take_rate(access_key)
        if not accepted:
            return self._answer(429, _error_body("RATE_LIMITED", "too many requests"), rate_headers)

        if path == "/api/buckets":
            status, err = self._create_bucket(rx, body)
        elif method == "POST":
            status, err = self._post_events(rx, body, params)
        else:
            status, err = self._get_events(rx, pairs)
        if status < 300 and draw_after < faults.p_reset_after:
            rx.count_fault("reset_after")
            raise _Reset
        self._answer(status, err, rate_headers)

    def _answer(
        self, status: int, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> None:
        self.server.receiver.count_status(status)
        self._send(status, body, headers)

    # -- the three API calls ---------------------------------------------------------------

    def _create_bucket(self, rx: Receiver, body: bytes) -> tuple[int, bytes]:
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            return 400, _error_body("INVALID_JSON", "the body is not valid JSON")
        if type(doc) is not dict:
            return 400, _error_body("INVALID_BUCKET", "the body must be a JSON object")
        key = doc.get("bucketKey")
        problem = _bucket_key_problem(key)
        if problem:
            return 400, _error_body("INVALID_BUCKET_KEY", problem)
        name = doc.get("bucketName", key)
        if type(name) is not str or len(name) > MAX_BUCKET_NAME_LENGTH:
            return 400, _error_body(
                "INVALID_BUCKET_NAME",
                f"the bucket name must be a string of at most {MAX_BUCKET_NAME_LENGTH} characters",
            )
        return rx.create_bucket(key, name)

    def _post_events(self, rx: Receiver, body: bytes, params: dict[str, str]) -> tuple[int, bytes]:
        bucket_key = self.headers.get("X-IS-BucketKey") or params.get("bucketKey")
        problem = _bucket_key_problem(bucket_key)
        if problem:
            return 400, _error_body("INVALID_BUCKET_KEY", problem)
        assert bucket_key is not None
        if rx.bucket_removed(bucket_key):
            return 400, _BUCKET_REMOVED
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            return 400, _error_body("INVALID_JSON", "the body is not valid JSON")
        if type(doc) is dict:
            events = [doc]
        elif type(doc) is list:
            events = doc
        else:
            return 400, _error_body("INVALID_EVENT", "the body must be an event or an array")
        problem = _check_events(events, bucket_key, rx.max_key_length)
        if problem:
            return 400, _error_body("INVALID_EVENT", problem)
        return rx.store(bucket_key, events)

    def _get_events(self, rx: Receiver, pairs: list[tuple[str, str]]) -> tuple[int, bytes]:
        params = dict(pairs)
        bucket_key = params.get("bucketKey") or self.headers.get("X-IS-BucketKey")
        problem = _bucket_key_problem(bucket_key)
        if problem:
            return 400, _error_body("INVALID_BUCKET_KEY", problem)
        assert bucket_key is not None
        now = time.time()
        events = [
            {"key": k, "value": v, "epoch": now}
            for k, v in pairs
            if k not in ("accessKey", "bucketKey")
        ]
        problem = _check_events(events, bucket_key, rx.max_key_length)
        if problem:
            return 400, _error_body("INVALID_EVENT", problem)
        return rx.store(bucket_key, events)


_BUCKET_REMOVED = _error_body(
    "BUCKET_REMOVED", "this bucket key belonged to a deleted bucket; use a new bucket key"
)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], receiver: Receiver) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.receiver = receiver
        self._conn_lock = threading.Lock()
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._resets: set[socket.socket] = set()
        self._stopping = False
        self._wake_r, self._wake_w = socket.socketpair()
        try:
            super().__init__(address, _Handler)
        except BaseException:
            self._wake_r.close()
            self._wake_w.close()
            raise

    def serve(self) -> None:
        # Like serve_forever(), but stop_serving() wakes it at once instead of within a poll
        # interval: stop() is immediate, which keeps a test suite's teardowns fast.
        with selectors.DefaultSelector() as sel:
            sel.register(self, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping:
                for key, _ in sel.select():
                    if key.fileobj is self and not self._stopping:
                        self._handle_request_noblock()

    def stop_serving(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def server_close(self) -> None:
        super().server_close()
        self._wake_r.close()
        self._wake_w.close()

    def server_bind(self) -> None:
        # HTTPServer.server_bind would call socket.getfqdn(), a DNS lookup: skip it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def get_request(self) -> tuple[socket.socket, Any]:
        request, address = super().get_request()
        tls = self.receiver.tls
        if tls is not None:  # (the handshake is the connection's thread's first read)
            request = tls.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        return request, address

    def process_request(self, request: Any, client_address: Any) -> None:
        t = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="receiver-connection",
            daemon=True,
        )
        with self._conn_lock:
            self._conns[request] = t
        self.receiver.count_connection()
        t.start()

    def mark_reset(self, request: socket.socket) -> None:
        with self._conn_lock:
            self._resets.add(request)

    def shutdown_request(self, request: Any) -> None:
        with self._conn_lock:
            self._conns.pop(request, None)
            reset = request in self._resets
            self._resets.discard(request)
        if reset:
            self.close_request(request)  # no FIN first: SO_LINGER 0 makes close() send RST
        else:
            super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # a client went away, or stop() closed the socket
            return
        super().handle_error(request, client_address)

    def close_connections(self, timeout: float = 2.0) -> None:
        with self._conn_lock:
            conns = list(self._conns.items())
        for sock, _ in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for _, thread in conns:
            thread.join(max(0.0, deadline - time.monotonic()))


class Receiver:
    """An in-memory Initial State events API on a loopback port.

    Bound at construction (so ``port`` and ``api_base`` are known at once); ``start()`` serves
    in a daemon thread. After ``stop()`` it can be started again on the same port, keeping what
    it stored.

    ``access_keys``: the keys accepted (others get 401); None accepts any non-empty key.
    ``rate_limit``: requests per access key per ``rate_window`` seconds (fixed windows), over
    it 429. ``monthly_cap``: total stored events beyond which a request gets 402.
    ``max_key_length``: longest event key (the service documents both 100 and 250).
    ``max_body``: bytes, over it 413. ``faults``/``seed``: injected faults and their RNG seed.
    ``tls``: a server-side ``ssl.SSLContext`` (with its certificate loaded) to serve HTTPS.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        access_keys: Iterable[str] | None = None,
        rate_limit: int | None = None,
        rate_window: float = 10.0,
        monthly_cap: int | None = None,
        max_key_length: int = 250,
        max_body: int = 1_000_000,
        faults: Faults | None = None,
        seed: int | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if rate_limit is not None and rate_limit < 1:
            raise ValueError("rate_limit must be at least 1")
        if rate_window <= 0:
            raise ValueError("rate_window must be positive")
        self.host = host
        self._access_keys = frozenset(access_keys) if access_keys is not None else None
        self._rate_limit = rate_limit
        self._rate_window = float(rate_window)
        self._monthly_cap = monthly_cap
        self._max_key_length = max_key_length
        self._max_body = max_body
        self._faults = dataclasses.replace(faults) if faults is not None else Faults()
        self._rng = random.Random(seed)

        self._cond = threading.Condition()
        self._state_lock = threading.Lock()  # start/stop
        self._reset_state()

        self.tls = tls
        self._server: _Server | None = _Server((host, port), self)
        self.port: int = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    def _reset_state(self) -> None:
        self._all: list[dict[str, Any]] = []
        self._by_bucket: dict[str, list[dict[str, Any]]] = {}
        self._buckets: dict[str, str] = {}
        self._removed: set[str] = set()
        self._windows: dict[str, list[int]] = {}  # access key -> [window index, count]
        self._outage_until = 0.0
        self._requests = 0
        self._statuses: dict[int, int] = {}
        self._bytes = 0
        self._connections = 0
        self._injected = {"5xx": 0, "429": 0, "reset_before": 0, "reset_after": 0, "outage": 0}

    # -- addresses -------------------------------------------------------------------------

    @property
    def host_base(self) -> str:
        """``http://HOST:PORT`` (``https`` with ``tls``): what ISStreamer 2.0.0 takes as
        ``stream_api_base``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def api_base(self) -> str:
        """``http://HOST:PORT/api``: clients POST to ``{api_base}/events``."""
        return self.host_base + "/api"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Receiver:
        """Serve in a daemon thread (again on the same port after ``stop()``); return self."""
        with self._state_lock:
            if self._thread is not None:
                return self
            if self._server is None:
                self._server = _Server((self.host, self.port), self)
            server = self._server
            self._thread = threading.Thread(
                target=server.serve,
                name=f"receiver:{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the listening socket and every open connection. Idempotent."""
        with self._state_lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None:
            return
        if thread is not None:
            server.stop_serving()
            thread.join()
        server.server_close()
        server.close_connections()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self._thread is not None else "stopped"
        return f"<Receiver {self.api_base} {state}>"

    # -- controls --------------------------------------------------------------------------

    def set_faults(self, **changes: float) -> None:
        """Change fields of the current ``Faults``, e.g. ``set_faults(p_5xx=0.2)``."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(Faults)}
        if unknown:
            raise TypeError(f"unknown fault field(s): {', '.join(sorted(unknown))}")
        self._faults = dataclasses.replace(self._faults, **changes)

    def outage(self, seconds: float) -> None:
        """For ``seconds`` from now, reset every API request's connection before storing."""
        with self._cond:
            self._outage_until = time.monotonic() + seconds

    def drop_connections(self) -> None:
        """Close every open keep-alive connection now, as a service does with idle ones."""
        if self._server is not None:
            self._server.close_connections()

    def remove_bucket(self, bucket_key: str) -> None:
        """Delete a bucket: later requests to it get 400 BUCKET_REMOVED. Stored events stay."""
        with self._cond:
            self._removed.add(bucket_key)
            self._buckets.pop(bucket_key, None)

    def clear(self) -> None:
        """Forget events, buckets (and removals), counters and any outage; keep the settings."""
        with self._cond:
            self._reset_state()
            self._cond.notify_all()

    # -- inspection ------------------------------------------------------------------------

    @property
    def buckets(self) -> dict[str, str]:
        """A copy of bucket key -> bucket name (the first name given wins)."""
        with self._cond:
            return dict(self._buckets)

    def events(self, bucket_key: str | None = None) -> list[dict[str, Any]]:
        """Stored events in arrival order, each as received plus ``"bucket_key"``.

        A new list on each call; the dicts themselves are the stored ones.
        """
        with self._cond:
            if bucket_key is None:
                return list(self._all)
            return list(self._by_bucket.get(bucket_key, ()))

    def stats(self) -> dict[str, Any]:
        """Counters: ``requests`` (to ``/api/*``), ``statuses`` {code: count}, ``events`` stored,
        ``buckets``, ``resets`` (connections reset instead of answered), ``connections``
        accepted, ``bytes`` of request bodies, ``injected`` faults by kind."""
        with self._cond:
            return {
                "requests": self._requests,
                "statuses": dict(sorted(self._statuses.items())),
                "events": len(self._all),
                "buckets": len(self._buckets),
                "resets": (
                    self._injected["reset_before"]
                    + self._injected["reset_after"]
                    + self._injected["outage"]
                ),
                "connections": self._connections,
                "bytes": self._bytes,
                "injected": dict(self._injected),
            }

    def wait_for(
        self, n: int, bucket_key: str | None = None, timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """Block until at least ``n`` events are stored (in ``bucket_key`` if given); return
        them all. Raise ``TimeoutError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                have = self._all if bucket_key is None else self._by_bucket.get(bucket_key, [])
                if len(have) >= n:
                    return list(have)
                left = deadline - time.monotonic()
                if left <= 0:
                    where = "" if bucket_key is None else f" in bucket {bucket_key!r}"
                    statuses = ", ".join(f"{c}: {k}" for c, k in sorted(self._statuses.items()))
                    raise TimeoutError(
                        f"waited {timeout:g} s for {n} events{where} but {len(have)} arrived "
                        f"({self._requests} requests; statuses {{{statuses}}}; "
                        f"{self._connections} connections)"
                    )
                self._cond.wait(left)

    # -- the request handler's side --------------------------------------------------------
    # Public because the handler is another class, and no class reads another's private names.

    @property
    def max_body(self) -> int:
        """The largest request body in bytes; a larger one gets 413."""
        return self._max_body

    @property
    def max_key_length(self) -> int:
        """The longest event key; a longer one gets 400."""
        return self._max_key_length

    def begin_request(self, nbytes: int) -> tuple[Faults, bool, float, float]:
        """Count an API request of ``nbytes``; return the faults, whether an outage is on, and
        the two fault draws (before and after storing)."""
        with self._cond:
            self._requests += 1
            self._bytes += nbytes
            outage = time.monotonic() < self._outage_until
            return self._faults, outage, self._rng.random(), self._rng.random()

    def count_status(self, status: int) -> None:
        """Count one answer with HTTP ``status``."""
        with self._cond:
            self._statuses[status] = self._statuses.get(status, 0) + 1

    def count_fault(self, kind: str) -> None:
        """Count one injected fault or outage reset: a key of ``stats()["injected"]``."""
        with self._cond:
            self._injected[kind] += 1

    def count_connection(self) -> None:
        """Count one accepted connection."""
        with self._cond:
            self._connections += 1

    def accepts_key(self, key: str | None) -> bool:
        """Whether requests with this access key are accepted; others get 401."""
        if not key:
            return False
        return self._access_keys is None or key in self._access_keys

    def take_rate(self, access_key: str) -> tuple[bool, dict[str, str] | None]:
        """Take one request from the key's rate budget; return whether it is accepted and the
        rate-limit headers. Without a ``rate_limit``: accepted, no headers."""
        # Fixed windows per access key. Only requests accepted for processing count: a request
        # answered 429 here consumes no budget (like the service), so a client that waits for
        # Retry-After always gets through in the next window. Faults are not counted either.
        if self._rate_limit is None:
            return True, None
        now = time.time()
        window = math.floor(now / self._rate_window)
        reset = (window + 1) * self._rate_window
        with self._cond:
            slot = self._windows.get(access_key)
            if slot is None or slot[0] != window:
                slot = self._windows[access_key] = [window, 0]
            accepted = slot[1] < self._rate_limit
            if accepted:
                slot[1] += 1
            remaining = self._rate_limit - slot[1]
        headers = {
            "X-RateLimit-Limit": str(self._rate_limit),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": f"{reset:.3f}",
        }
        if not accepted:
            headers["Retry-After"] = str(max(1, math.ceil(reset - now)))
        return accepted, headers

    def bucket_removed(self, bucket_key: str) -> bool:
        """Whether ``remove_bucket()`` removed this bucket."""
        with self._cond:
            return bucket_key in self._removed

    def create_bucket(self, key: str, name: str) -> tuple[int, bytes]:
        """Create a bucket from a checked key and name; return the status and error body."""
        with self._cond:
            if key in self._removed:
                return 400, _BUCKET_REMOVED
            if key in self._buckets:
                return 204, b""
            self._buckets[key] = name
            return 201, b""

    def store(self, bucket_key: str, events: list[dict[str, Any]]) -> tuple[int, bytes]:
        """Store events already checked and tagged with the bucket key; return the status and
        error body."""
        with self._cond:
            if bucket_key in self._removed:
                return 400, _BUCKET_REMOVED
            cap = self._monthly_cap
            if cap is not None and len(self._all) + len(events) > cap:
                return 402, _error_body(
                    "MONTHLY_CAP_REACHED", f"the monthly cap of {cap} events is reached"
                )
            if bucket_key not in self._buckets:
                self._buckets[bucket_key] = bucket_key
            self._all.extend(events)
            per = self._by_bucket.get(bucket_key)
            if per is None:
                self._by_bucket[bucket_key] = list(events)
            else:
                per.extend(events)
            self._cond.notify_all()
        return 204, b""


# -- command line ------------------------------------------------------------------------------


def _where(rx: Receiver) -> str:
    """Where clients reach `rx`: its API base, or for a wildcard address (every interface,
    which no client can connect to by that name) the loopback one and a word on the rest."""
    if rx.host not in ("0.0.0.0", "::"):
        return rx.api_base
    local = "127.0.0.1" if rx.host == "0.0.0.0" else "[::1]"
    return (f"every interface, port {rx.port}: from this machine use "
            f"{'https' if rx.tls else 'http'}://{local}:{rx.port}/api, from others this "
            f"machine's address")


def serve_main(argv: list[str] | None = None) -> int:
    """``python -m isstreamer_jupyter serve [options]``: run a receiver until Ctrl-C."""
    host, port = "127.0.0.1", 8080
    parser = argparse.ArgumentParser(
        prog="python -m isstreamer_jupyter serve",
        description="Run a loopback Initial State-compatible receiver (events kept in memory). "
        "Point a streamer or an upload at it with IS_API_BASE set to the address it prints "
        f"(http://{host}:{port}/api by default), and IS_MAX_RPS=0 so that it does not keep "
        "Initial State's pace of 3 requests a second.",
    )
    parser.add_argument("--host", default=host, help="address to bind (default: %(default)s)")
    parser.add_argument(
        "--port", type=int, default=port, help="port, 0 = any (default: %(default)s)"
    )
    parser.add_argument(
        "--access-key",
        action="append",
        dest="access_keys",
        metavar="KEY",
        help="accept only this access key (repeatable; default: any non-empty)",
    )
    parser.add_argument("--rate-limit", type=int, metavar="N", help="requests per window per key")
    parser.add_argument(
        "--rate-window",
        type=float,
        default=10.0,
        metavar="S",
        help="rate-limit window in seconds (default: %(default)s)",
    )
    parser.add_argument("--monthly-cap", type=int, metavar="N", help="events before 402")
    parser.add_argument("--max-key-length", type=int, default=250, metavar="N",
                        help="longest event key; longer ones get 400 (default: %(default)s)")
    parser.add_argument("--max-body", type=int, default=1_000_000, metavar="BYTES",
                        help="largest request body; larger ones get 413 (default: %(default)s)")
    faults = parser.add_argument_group(
        "faults", "each a probability P (0 to 1) per API request; those of a 5xx, a reset "
                  "before storing and a 429 add up to at most 1")
    faults.add_argument("--p-5xx", type=float, default=0.0, metavar="P",
                        help="answer 503 without storing")
    faults.add_argument("--p-reset-before", type=float, default=0.0, metavar="P",
                        help="reset the connection without storing")
    faults.add_argument("--p-reset-after", type=float, default=0.0, metavar="P",
                        help="store the events, then reset the connection without answering")
    faults.add_argument("--p-429", type=float, default=0.0, metavar="P",
                        help="answer 429 (rate limited) without storing")
    faults.add_argument("--retry-after", type=float, default=1.0, metavar="S",
                        help="the Retry-After seconds a 429 carries (default: %(default)s)")
    faults.add_argument("--latency", type=float, default=0.0, metavar="S",
                        help="seconds to wait before answering each request (default: "
                             "%(default)s)")
    faults.add_argument("--seed", type=int, help="seed for the fault draws (repeatable runs)")
    args = parser.parse_args(argv)
    for flag, value, least, most in (("--port", args.port, 0, 65535),
                                     ("--max-body", args.max_body, 1, None),
                                     ("--max-key-length", args.max_key_length, 1, None),
                                     ("--monthly-cap", args.monthly_cap, 0, None)):
        if value is not None and not (least <= value and (most is None or value <= most)):
            within = f"from {least} to {most}" if most is not None else f"at least {least}"
            parser.error(f"argument {flag}: must be {within}, got {value}")
    for key in args.access_keys or ():  # (a client sends none such: every request got 401)
        if not key.strip():
            parser.error(f"argument --access-key: must not be empty or blank space (no client "
                         f"sends such a key), got {key!r}")
    try:
        faults = Faults(
            p_5xx=args.p_5xx,
            p_reset_before=args.p_reset_before,
            p_reset_after=args.p_reset_after,
            p_429=args.p_429,
            retry_after=args.retry_after,
            latency=args.latency,
        )
        rx = Receiver(
            args.host,
            args.port,
            access_keys=args.access_keys,
            rate_limit=args.rate_limit,
            rate_window=args.rate_window,
            monthly_cap=args.monthly_cap,
            max_key_length=args.max_key_length,
            max_body=args.max_body,
            faults=faults,
            seed=args.seed,
        )
    except ValueError as exc:  # (it names the receiver's parameters: say the options typed)
        flags = {name: "--" + name.replace("_", "-") for name in vars(args)}
        flags["access_keys"] = "--access-key"
        named = re.compile(r"\b(" + "|".join(sorted(flags, key=len, reverse=True)) + r")\b")
        parser.error(named.sub(lambda m: flags[m.group()], str(exc)))
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1

    def _terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    main_thread = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    rx.start()
    try:  # (the first line too: with stdout closed it raises, and the receiver still stops)
        print(f"receiver listening on {_where(rx)} (Ctrl-C to stop)", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        rx.stop()
        if main_thread:
            signal.signal(signal.SIGTERM, old)
    s = rx.stats()
    statuses = ", ".join(f"{code}: {n}" for code, n in s["statuses"].items()) or "none"
    print(
        f"receiver stopped: {s['events']} events in {len(rx.buckets)} buckets from "
        f"{s['requests']} requests (statuses {statuses}; {s['resets']} resets; "
        f"{s['connections']} connections)",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(serve_main())
