"""Transports: one HTTP session to the events API, and the service's answers as typed outcomes.

A transport takes a batch of ``(key, value, epoch)`` events and answers with an
:class:`Answer`; the sender decides what to do with it. ``HttpTransport`` is the real one,
``CsvTransport`` records locally (offline mode), and ``isstreamer_jupyter.testing.FakeTransport``
is for unit tests.
"""

from __future__ import annotations

import contextlib
import csv
import enum
import json
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ._config import hidden, offline_path, redacted
from ._version import __version__

#: the service answers 413 past this body size
MAX_BODY = 1_000_000
Event = tuple[str, Any, float]  # key, value, epoch


class Outcome(enum.Enum):
    """What an answer means for the events that were sent."""

    ACCEPTED = "accepted"  # 2xx: the service stored them
    RETRY = "retry"  # network error, timeout, 408, 409, 5xx: send again after a backoff
    RATE_LIMITED = "rate limited"  # 429: send again after Retry-After
    TOO_LARGE = "too large"  # 413 (or over MAX_BODY before sending): split the batch
    ACCESS_DENIED = "access denied"  # 401/403: stop until the key is fixed; keep the events
    CAP_REACHED = "cap reached"  # 402: stop until the monthly cap resets; keep the events
    BUCKET_REMOVED = "bucket removed"  # 400 BUCKET_REMOVED: stop this bucket; keep the events
    INVALID = "invalid"  # other 4xx: an event the service will never take


@dataclass(frozen=True)
class RateBudget:
    """The service's ``X-RateLimit-*`` headers: requests per window, left, and reset time."""

    limit: int
    remaining: int
    reset: float  # seconds since 1970 (wall clock)


@dataclass(frozen=True)
class Answer:
    outcome: Outcome
    status: int | None = None  # None: no HTTP answer (network error, local refusal)
    retry_after: float | None = None
    budget: RateBudget | None = None
    detail: str = ""  # short, plain words; never contains the access key
    remedy: str = ""  # the fix, when the transport knows better than the outcome's own
    words: str = ""  # what the service said of what it refused (an INVALID answer's body)


class Transport(Protocol):
    """What the sender needs from a destination."""

    def create_bucket(self, bucket_key: str, bucket_name: str) -> Answer: ...

    def post_events(self, bucket_key: str, events: Sequence[Event],
                    meanwhile: Callable[[], None] | None = None) -> Answer:
        """Send a batch. `meanwhile` is called once the request is out, while the service
        works on it (the sender gets its next batch ready then)."""

    def prepare(self, events: Sequence[Event]) -> None:
        """These events are the next ones to go: do now what can be done before sending."""

    def close(self) -> None: ...


_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


_key_heads: dict[str, str] = {}  # key -> '{"key":<key as JSON>,"value":'


def body_of(events: Sequence[Event]) -> bytes:
    """The events API's JSON body for a batch: ``[{"key":..,"value":..,"epoch":..},..]``.

    Made for speed (it is most of the sender's work): a key's JSON is made once; an int or a
    float value (always finite here: ``log()`` refuses the rest) is written by its ``repr``,
    as ``json`` writes it; an epoch with microsecond precision (``time.time()``'s
    resolution), exactly the text ``f"{epoch:.6f}"`` gives, made from integers: the whole
    second once per second (the events of a batch mostly share it), then the microseconds
    (``epoch - second`` is exact in binary floating point; the few values near a rounding tie
    are formatted as floats). That takes a quarter of this function's time less than
    formatting each float.
    """
    heads = _key_heads
    if len(heads) > 10_000:
        heads.clear()
    parts = []
    append = parts.append
    second, stem = -2.0, ""  # a whole second, and ',"epoch":<it>.'
    for key, value, epoch in events:
        head = heads.get(key)
        if head is None:
            head = heads[key] = '{"key":' + _encode(key) + ',"value":'
        kind = type(value)
        value = repr(value) if kind is float or kind is int else _encode(value)
        if type(epoch) is float and 0.0 < epoch < 1e18:  # (else: below)
            scaled = (epoch - second) * 1e6
            micros = int(scaled + 0.5)
            if not 0 <= micros < 1_000_000:  # another second
                second = float(int(epoch))
                stem = f',"epoch":{int(second)}.'
                scaled = (epoch - second) * 1e6
                micros = int(scaled + 0.5)
            # (not near a tie, nor rounding up to the next second: else written below)
            if micros < 1_000_000 and -0.4999 < scaled - micros < 0.4999:
                append(f"{head}{value}{stem}{str(micros + 1_000_000)[1:]}}}")
                continue
        kind = type(epoch)
        if kind is float or kind is int:
            append(f'{head}{value},"epoch":{epoch:.6f}}}')
        else:
            append(f'{head}{value},"epoch":{_encode(epoch)}}}')
    return ("[" + ",".join(parts) + "]").encode()


def classify(status: int, body: bytes = b"", headers: dict[str, str] | None = None,
             secret: str = "") -> Answer:
    """Map an HTTP answer to an :class:`Answer` (shared by every transport). What the body
    says is read with `secret` (the access key) masked, should the service or a proxy echo
    it."""
    headers = headers or {}
    budget = _budget(headers)
    if 200 <= status < 300:
        return Answer(Outcome.ACCEPTED, status, budget=budget)
    if status == 429:
        return Answer(Outcome.RATE_LIMITED, status, _retry_after(headers), budget,
                      "rate limited by the service")
    if status in (401, 403):
        return Answer(Outcome.ACCESS_DENIED, status, budget=budget,
                      detail=f"the service refused the access key ({status})")
    if status == 402:
        return Answer(Outcome.CAP_REACHED, status, budget=budget,
                      detail="the account reached its monthly data-point cap (402)")
    if status == 413:
        return Answer(Outcome.TOO_LARGE, status, budget=budget, detail="request body too large")
    if status == 400 and b"BUCKET_REMOVED" in body:
        return Answer(Outcome.BUCKET_REMOVED, status, budget=budget,
                      detail="the bucket key belongs to a deleted bucket (400 BUCKET_REMOVED)")
    if status == 407:  # (a proxy's answer: the events are fine, and kept)
        return Answer(Outcome.RETRY, status, budget=budget,
                      detail="the network's proxy asks for credentials (407)",
                      remedy=("put them in the proxy setting, HTTPS_PROXY=http://user:password@"
                              "host:port (HTTP_PROXY for an http:// API base); events are kept "
                              "and retried with backoff"))
    if status in (408, 409) or status >= 500:
        return Answer(Outcome.RETRY, status, _retry_after(headers), budget,
                      f"the service answered {status}")
    words = _service_words(body, secret)
    return Answer(Outcome.INVALID, status, budget=budget,
                  detail=f"the service refused the events ({status}): {words}", words=words,
                  remedy=_refusal_remedy(words) if status == 400 else "")


def _service_words(body: bytes, secret: str = "") -> str:
    """What the service said it refused: its JSON error's type and message
    (``{"message": {"error": {"type": .., "message": ..}}}``), else the body's start; with
    `secret` masked once it is decoded (JSON may escape it: ``\\/``, ``\\u0041``) and before
    the words are cut short (which would leave a part of it)."""
    try:
        said = json.loads(body)
    except ValueError:
        said = body.decode("utf-8", "replace")
    for name in ("message", "error"):  # (the API's nesting, as far as the body has it)
        if isinstance(said, dict) and name in said:
            said = said[name]
    if isinstance(said, dict) and isinstance(said.get("message"), str):
        said = f"{said['type']}: {said['message']}" if "type" in said else said["message"]
    elif isinstance(said, dict) and isinstance(said.get("type"), str):
        said = said["type"]
    return " ".join(redacted(str(said), secret).split())[:200]


def _refusal_remedy(words: str) -> str:
    """The fix of a refused event (400), after the service's own words; "" unless the
    service's error type says the event is at fault (INVALID_EVENT): a 400 without a type, or
    of the bucket, its key or anything else, is no fault of the event (the sender then says to
    check api_base and the bucket key). The sender adds what becomes of the event."""
    said = re.match(r"([A-Z][A-Z0-9_]+)(?::|$)", words)
    if said is None or said[1] != "INVALID_EVENT":
        return ""
    low = words[said.end():].lower()
    if re.search(r"\bkey\b", low):
        return "change the key as the service says (a shorter one, if it is too long)"
    if re.search(r"\bvalue\b", low):
        return "change the value as the service says"
    if re.search(r"\b(epoch|iso8601|time)", low):
        return "change the event's time as the service says"
    return "change the event as the service says"


def _budget(headers: dict[str, str]) -> RateBudget | None:
    try:
        return RateBudget(
            int(float(headers["X-RateLimit-Limit"])),
            int(float(headers["X-RateLimit-Remaining"])),
            float(headers["X-RateLimit-Reset"]),
        )
    except (KeyError, ValueError):
        return None


def _retry_after(headers: dict[str, str]) -> float | None:
    raw = headers.get("Retry-After")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            seconds = parsedate_to_datetime(raw).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


class HttpTransport:
    """One keep-alive ``requests.Session`` to the events API.

    The session holds the settings (headers, TLS verification, proxies from the environment)
    and the connection pool. Requests go through the session adapter's urllib3 pool directly:
    the same connection, TLS and proxy handling, without requests' per-request ``Response``,
    cookie and redirect work (about half of a 500-event request's client cost, as profiled
    while making the delivery benchmark faster), which an API client posting JSON does not use.
    The access key lives only in the session's headers; nothing here formats it.
    """

    def __init__(self, api_base: str, access_key: str, timeout: float = 10.0,
                 max_body: int = MAX_BODY) -> None:
        access_key = hidden(access_key)  # (in the header too: a traceback may show headers)
        self.api_base = api_base.rstrip("/")
        self.timeout = timeout
        self.max_body = max_body
        import requests  # here, not at import: it is most of the package's import time
        import urllib3

        self._session = requests.Session()
        # Read the environment's proxy and CA-bundle settings once, not on every request.
        self._session.trust_env = False
        self._session.proxies = requests.utils.get_environ_proxies(self.api_base)
        self._session.verify = (os.environ.get("REQUESTS_CA_BUNDLE")
                                or os.environ.get("CURL_CA_BUNDLE") or True)
        self._session.headers.update({
            "X-IS-AccessKey": access_key,
            "Content-Type": "application/json",
            "Accept-Version": "~0",
            "User-Agent": f"isstreamer_jupyter/{__version__}",
        })
        for implied in ("Accept", "Connection"):  # */* and keep-alive: HTTP/1.1's defaults
            self._session.headers.pop(implied, None)
        self._timeout = urllib3.Timeout(connect=timeout, read=timeout)
        self._targets: dict[str, tuple[Any, str]] = {}  # API path -> (pool, URL)
        self._ready: tuple[Sequence[Event], bytes] | None = None  # the next batch, encoded

    def __repr__(self) -> str:
        return f"HttpTransport({self.api_base!r})"

    def set_access_key(self, access_key: str) -> None:
        access_key = hidden(access_key)
        self._session.headers["X-IS-AccessKey"] = access_key

    def create_bucket(self, bucket_key: str, bucket_name: str) -> Answer:
        body = json.dumps({"bucketKey": bucket_key, "bucketName": bucket_name}).encode()
        return self._post("/buckets", body, {})

    def prepare(self, events: Sequence[Event]) -> None:
        self._ready = (events, body_of(events))

    def post_events(self, bucket_key: str, events: Sequence[Event],
                    meanwhile: Callable[[], None] | None = None) -> Answer:
        ready, self._ready = self._ready, None
        body = ready[1] if ready is not None and ready[0] is events else body_of(events)
        if len(body) > self.max_body:
            return Answer(Outcome.TOO_LARGE, None, detail=f"{len(body)} bytes over the 1 MB limit")
        headers = {"X-IS-BucketKey": bucket_key, "Content-Length": str(len(body))}
        return self._post("/events", body if meanwhile is None else _then(body, meanwhile),
                          headers)

    def _target(self, path: str) -> tuple[Any, str]:
        """(the session adapter's urllib3 pool, the URL to ask it for) of an API path; asked
        of the adapter again once that pool is closed."""
        target = self._targets.get(path)
        if target is None or target[0].pool is None:
            import requests

            session = self._session
            request = session.prepare_request(requests.Request("POST", self.api_base + path))
            adapter = session.get_adapter(request.url)
            pool = adapter.get_connection_with_tls_context(request, session.verify,
                                                           session.proxies, session.cert)
            adapter.cert_verify(pool, request.url, session.verify, session.cert)
            target = self._targets[path] = (pool, adapter.request_url(request, session.proxies))
        return target

    def _post(self, path: str, body: bytes | Iterator[bytes], headers: dict[str, str]) -> Answer:
        import urllib3.exceptions as u3

        try:
            pool, url = self._target(path)
            response = pool.urlopen(
                "POST", url, body=body, headers={**self._session.headers, **headers},
                redirect=False, assert_same_host=False, retries=False, timeout=self._timeout,
                preload_content=True, decode_content=True)
        except u3.ProxyError as exc:  # (an https:// API base: the proxy answered CONNECT)
            if " 407 " in f" {_reason(exc)} ":
                return classify(407)
            return Answer(Outcome.RETRY, None, detail=f"network error: {_reason(exc)}")
        except u3.NewConnectionError as exc:  # (a ConnectTimeoutError subclass in urllib3 2)
            return Answer(Outcome.RETRY, None, detail=f"network error: {_reason(exc)}")
        except u3.TimeoutError:
            return Answer(Outcome.RETRY, None, detail=f"no answer within {self.timeout:g} s")
        except u3.SSLError as exc:
            return _tls_failed(exc)
        except (u3.HTTPError, OSError) as exc:
            return Answer(Outcome.RETRY, None, detail=f"network error: {_reason(exc)}")
        return classify(response.status, response.data, response.headers,
                        secret=self._session.headers["X-IS-AccessKey"])

    def close(self) -> None:
        # urllib3 2 no longer closes a pool its manager lets go of (the connections close
        # when the pool is garbage-collected), and _targets holds ours: close them here.
        for pool, _url in self._targets.values():
            pool.close()
        self._targets.clear()
        self._session.close()


def _then(body: bytes, meanwhile: Callable[[], None]) -> Iterator[bytes]:
    """The body for urllib3, which asks for more once the last byte is sent (the length is
    in the headers, so nothing more goes out): `meanwhile` runs while the service works."""
    yield body
    meanwhile()


def _innermost(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return exc


def _tls_failed(exc: Exception) -> Answer:
    """A TLS failure, named for what it is: a certificate that does not check (an old CA
    bundle, a network's own CA, another host's name), or no TLS at all on the other end."""
    import ssl

    inner = _innermost(exc)
    if isinstance(inner, ssl.SSLCertVerificationError):
        return Answer(Outcome.RETRY, None,
                      detail=f"TLS certificate check failed: {inner.verify_message.rstrip('.')}",
                      remedy=("update the CA bundle (pip install -U certifi), or set "
                              "REQUESTS_CA_BUNDLE to your network's CA file; if the certificate "
                              "is for another host, check api_base; events are kept and "
                              "retried with backoff"))
    return Answer(Outcome.RETRY, None, detail=f"TLS failed: {_reason(exc)}",
                  remedy=("check api_base: https:// for a service that speaks TLS (Initial "
                          "State's does), http:// for one that does not (such as the loopback "
                          "receiver); events are kept and retried with backoff"))


def _reason(exc: Exception) -> str:
    """The innermost cause of a network error, short (no URL parameters are ever sent)."""
    inner = _innermost(exc)
    text = str(inner) or type(inner).__name__
    if "Connection refused" in text:
        return "connection refused"
    if "reset" in text.lower() or "aborted" in text.lower():
        return "connection reset"
    return text[:120]


class _Rows(list[str]):
    """What a csv.writer writes: one row (with its line end) a write."""

    write = list.append


OFFLINE_FILE_REMEDY = ("make room on the disk or make the file writable, or give offline_file "
                       "(IS_OFFLINE_FILE) a file in a writable folder; the events are kept and "
                       "written once it can be")


def _append_whole(path: os.PathLike[str], data: bytes) -> None:
    """Append `data` to `path`, all of it or none: a write that fails part-way (the disk
    full) is cut back off, so the batch, kept and written again, is not there twice, nor a
    row cut short."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        left = memoryview(data)
        try:
            while left:
                left = left[os.write(fd, left):]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)


class CsvTransport:
    """Offline recording: appends ISStreamer's ``epoch,key,value`` rows to a CSV file.

    A line ``# bucket: <key> <name>`` precedes each batch's rows, so an upload can put them
    back where they belong (``pandas.read_csv(path, comment="#", header=None)`` reads the
    rows alone).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = offline_path(path)
        self._names: dict[str, str] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"CsvTransport({str(self.path)!r})"

    def create_bucket(self, bucket_key: str, bucket_name: str) -> Answer:
        self._names[bucket_key] = bucket_name
        return Answer(Outcome.ACCEPTED, None)

    def prepare(self, events: Sequence[Event]) -> None:
        pass

    def post_events(self, bucket_key: str, events: Sequence[Event],
                    meanwhile: Callable[[], None] | None = None) -> Answer:
        rows = _Rows()
        # (raises on what a file cannot hold: refused.) csv.writer's own CRLF line end is kept
        # while it writes, as what it quotes hangs on it (a value's lone \r too), then each row
        # ends in LF, as the '# bucket:' lines do: one line end in the file (upload reads both)
        csv.writer(rows).writerows((repr(e), k, v) for k, v, e in events)
        text = "".join(row[:-2] + "\n" for row in rows)
        # every batch names its bucket: another streamer may append to the same file
        name = " ".join(self._names.get(bucket_key, bucket_key).splitlines())  # one line
        data = f"# bucket: {bucket_key} {name}\n{text}".encode()
        try:
            with self._lock:
                _append_whole(self.path, data)
        except OSError as exc:  # (a full disk, a folder removed, permissions): kept, retried
            return Answer(Outcome.RETRY, None,
                          detail=f"cannot write the offline file {self.path}: "
                                 f"{exc.strerror or exc}",
                          remedy=OFFLINE_FILE_REMEDY)
        if meanwhile is not None:
            meanwhile()
        return Answer(Outcome.ACCEPTED, None, detail=f"appended to {self.path}")

    def close(self) -> None:
        pass
