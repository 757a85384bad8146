"""Issue 2, diagnostic (no targets): where the time of the delivery benchmark goes.

    .venv/bin/python benchmarks/bench_delivery_path.py [--events 100000] [--rounds 3]

The delivery benchmark (bench_core.py: 100,000 events, batch 500, pacing off, spool on) is
repeated with timestamps taken on both sides of each request: in this process (the client) and
in the receiver's own process (the project's Receiver, as in the other benchmarks).
``time.perf_counter`` is CLOCK_MONOTONIC on Linux, one clock for both processes, so the two
sides of a request line up. Only the steady state after the log() burst is summarised; the
burst itself is shown as phases of the round (first request, the spool catching up).

One request is in flight at a time. What the client does while the receiver works (draining the
queue, taking and encoding the next batch) is overlapped; the rest of the cycle is the critical
path: sending, the receiver's work, reading the answer, acknowledging.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common as c  # noqa: E402

pc = time.perf_counter


# ------------------------------------------------------------------------- receiver side
def serve() -> None:
    """Child process: the project's Receiver with timestamps around each events request."""
    from isstreamer_jupyter import receiver as r

    marks: list[tuple[float, ...]] = []
    took_json: list[float] = []  # (one handler thread: the one connection)
    handler = r._Handler
    parse_request, read_body, post_events, send = (
        handler.parse_request, handler._read_body, handler._post_events, handler._send)
    loads = r.json.loads

    class TimedJson:  # the receiver's module-level `json`, with loads timed
        def __getattr__(self, name: str) -> Any:
            return getattr(json, name)

        @staticmethod
        def loads(body: bytes) -> Any:
            t = pc()
            doc = loads(body)
            took_json.append(pc() - t)
            return doc

    def timed_parse(self: Any) -> bool:
        self.t = [pc()]
        ok = parse_request(self)
        self.t.append(pc())
        return ok

    def timed_read(self: Any) -> Any:
        got = read_body(self)
        self.t.append(pc())
        return got

    def timed_post(self: Any, *args: Any) -> Any:
        took_json.clear()
        answer = post_events(self, *args)
        self.t += [pc(), took_json[0] if took_json else 0.0]
        return answer

    def timed_send(self: Any, *args: Any, **kwargs: Any) -> None:
        send(self, *args, **kwargs)
        if len(getattr(self, "t", ())) == 5:
            marks.append((*self.t, pc()))
        self.t = []

    r.json = TimedJson()  # type: ignore[assignment]
    handler.parse_request = timed_parse  # type: ignore[method-assign]
    handler._read_body = timed_read  # type: ignore[method-assign]
    handler._post_events = timed_post  # type: ignore[method-assign]
    handler._send = timed_send  # type: ignore[method-assign]
    rx = r.Receiver().start()
    print(rx.api_base, flush=True)
    for line in sys.stdin:
        if line.strip() == "marks":
            print(json.dumps(marks), flush=True)
            marks.clear()
        else:
            break
    rx.stop()


# --------------------------------------------------------------------------- client side
def instrument_client() -> tuple[list[dict[str, float]], list[tuple[str, float, float]]]:
    from isstreamer_jupyter import _sender, _spool, _transport

    requests: list[dict[str, float]] = []
    spans: list[tuple[str, float, float]] = []
    post, then = _transport.HttpTransport._post, _transport._then

    def timed_post(self: Any, path: str, body: Any, headers: dict[str, str]) -> Any:
        if not path.endswith("/events"):
            return post(self, path, body, headers)
        requests.append({"start": pc()})
        answer = post(self, path, body, headers)
        requests[-1]["answer"] = pc()
        return answer

    def timed_then(body: bytes, meanwhile: Any) -> Any:
        def timed() -> None:  # runs once the body is sent
            requests[-1]["sent"] = pc()
            meanwhile()
            requests[-1]["prepared"] = pc()
        return then(body, timed)

    def span(cls: Any, name: str) -> None:
        f = getattr(cls, name)

        def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
            t = pc()
            try:
                return f(self, *args, **kwargs)
            finally:
                spans.append((name, t, pc()))
        setattr(cls, name, timed)

    _transport.HttpTransport._post = timed_post  # type: ignore[method-assign]
    _transport._then = timed_then
    span(_spool.SqliteSpool, "put")
    span(_sender.Sender, "_create")
    return requests, spans


def pair(requests: list[dict[str, float]],
         marks: list[list[float]]) -> list[tuple[dict[str, float], list[float]]]:
    """Each client request with the receiver's record of it: the one whose header parse
    began after the request started and whose answer was written before it was read."""
    pairs, i = [], 0
    for q in requests:
        while i < len(marks) and marks[i][0] < q["start"]:
            i += 1  # (a record of a request this side did not time)
        if i < len(marks) and "answer" in q and marks[i][-1] <= q["answer"]:
            pairs.append((q, marks[i]))
            i += 1
    return pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve()
        return
    started = time.monotonic()
    c.quiet_stdout()
    c.enter_scratch("delivery_path")
    requests, spans = instrument_client()
    child = subprocess.Popen([sys.executable, __file__, "--serve"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, bufsize=1)
    assert child.stdin is not None and child.stdout is not None
    api_base = child.stdout.readline().strip()

    rows: dict[str, list[float]] = {}
    phases: dict[str, list[float]] = {}
    rates = []

    def add(table: dict[str, list[float]], name: str, value: float) -> None:
        table.setdefault(name, []).append(value)

    for _ in range(args.rounds):
        requests.clear()
        spans.clear()
        s = c.make_ours(None, api_base=api_base, batch_size=500, max_requests_per_second=0)
        t0 = pc()
        c.log_loop_ns(s.log, args.events)
        logged = pc() - t0
        s.flush(timeout=120)
        took = pc() - t0
        s.close(timeout=5)
        child.stdin.write("marks\n")
        marks = json.loads(child.stdout.readline())
        rates.append(args.events / took)
        first = requests[0]["start"] - t0
        puts = [(a, b) for name, a, b in spans if name == "put"]
        creates = [(a, b) for name, a, b in spans if name == "_create"]
        add(phases, "log() burst: all events queued", logged * 1e3)
        add(phases, "the bucket created (its request, during the burst)",
            (creates[0][1] - t0) * 1e3 if creates else 0.0)
        add(phases, "events into the spool before the first request",
            sum(b - a for a, b in puts if b <= requests[0]["start"]) * 1e3)
        add(phases, "first events request", first * 1e3)
        add(phases, "last answer", (requests[-1]["answer"] - t0) * 1e3)
        add(phases, "flush() returns", took * 1e3)
        steady = [(q, m) for q, m in pair(requests, marks)
                  if q["start"] - t0 > logged and "sent" in q][1:-1]
        nxt = {id(q): requests[i + 1]["start"] for i, q in enumerate(requests[:-1])}
        for q, (parse0, parse1, read, posted, json_s, answered) in steady:
            add(rows, "client: request start → body sent", q["sent"] - q["start"])
            add(rows, "receiver: request line and headers parsed", parse1 - parse0)
            add(rows, "receiver: body read", read - parse1)
            add(rows, "receiver: json.loads", json_s)
            add(rows, "receiver: 500 events validated and stored", posted - read - json_s)
            add(rows, "receiver: answer written", answered - posted)
            add(rows, "client: answer written → answer read", q["answer"] - answered)
            if id(q) in nxt:
                add(rows, "client: answer read → next request (ack, bookkeeping)",
                    nxt[id(q)] - q["answer"])
                add(rows, "cycle: request to request", nxt[id(q)] - q["start"])
            add(rows, "client, overlapped: drain, take and encode the next batch",
                q["prepared"] - q["sent"])
            add(rows, "client: waiting after that for the answer",
                max(0.0, answered - q["prepared"]))
    child.stdin.write("quit\n")
    child.stdin.close()
    child.wait(10)

    t = c.Table(f"Issue 2 (diagnostic): where a delivery run's time goes ({args.events:,} "
                f"events, batch 500, pacing off, {args.rounds} rounds)")
    t.row("events/s (median of rounds)", statistics.median(rates))
    for name, values in phases.items():
        t.row(f"phase, ms from the first log(): {name}", statistics.median(values))
    for name, values in rows.items():
        t.row(f"per request after the burst, µs (median): {name}",
              statistics.median(values) * 1e6)
    t.note("The receiver's rows and the client's rows of one request use one clock "
           "(CLOCK_MONOTONIC), so 'answer written → answer read' is the client waking up and "
           "parsing the answer. One request is in flight: the cycle is the client's send, the "
           "receiver's work (from its header parse to its answer), the answer's reading and "
           "the ack; the client's preparation of the next batch runs during the receiver's "
           "work and only shows when it is longer.")
    t.note("During the log() burst the sender thread rarely gets the GIL back after a "
           "blocking call (CPython's 5 ms switch interval): the bucket's creation and the "
           "first spool writes stretch over the burst.")
    c.report(c.header("Issue 2 — delivery, where the time goes"))
    c.run_steps(t, (), started)


if __name__ == "__main__":
    main()
