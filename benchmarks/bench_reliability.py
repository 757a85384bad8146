"""Issue 3's benchmark: nothing lost. Ours beside ISStreamer 2.0.0, against the loopback receiver.

    .venv/bin/python benchmarks/bench_reliability.py

1. fault mix (20% 5xx, 5% resets before storing, 5% 429 with Retry-After, 2% resets after
   storing): events lost, duplicates, time to deliver;
2. the receiver down for 6 s during a 4 s stream of 1000 events (starting mid-stream, and
   centred on the stream): events lost;
3. SIGKILL mid-stream: a child process streams with the spool, is killed, and a new streamer
   with the same keys and spool delivers what is left;
4. log() cost with the spool on and off, and the sender's throughput through the spool.

Prints one markdown table (metric | ours | ISStreamer | target | pass/fail) and exits 0 even
when a target is missed: the FAIL is in the table.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c

FAULTS = {"p_5xx": 0.2, "p_reset_before": 0.05, "p_429": 0.05, "retry_after": 1.0,
          "p_reset_after": 0.02}
STREAM_N = 1000
STREAM_SECONDS = 4.0
OUTAGE_SECONDS = 6.0
FLUSH_TIMEOUT = 120.0
KILL_AFTER = 1000  # events the child logs before the SIGKILL
KILL_RATE = 200  # events/s the child logs
KILL_LATENCY = 0.3  # receiver latency meanwhile, so events are pending at the kill
STREAM_STR = f"{STREAM_SECONDS:g} s"
SPOOL_INTERVAL = 0.2  # the default `spool_interval`
LOG_N = 200_000
ROUNDS = 5
THROUGHPUT_N = 200_000
THROUGHPUT_ROUNDS = 2


def stream(log: Any, n: int, seconds: float, at: dict[float, Any] | None = None) -> float:
    """log('bench', i) for i in range(n), evenly over `seconds`; run at[t]() once t seconds in.
    Returns the start (monotonic)."""
    pending = sorted((at or {}).items())
    t0 = time.monotonic()
    for i in range(n):
        due = t0 + i * seconds / n
        while pending and time.monotonic() - t0 >= pending[0][0]:
            pending.pop(0)[1]()
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        log("bench", i)
    for when, action in pending:  # the rest, at their time
        left = t0 + when - time.monotonic()
        if left > 0:
            time.sleep(left)
        action()
    return t0


def ours_run(rx: c.AnyReceiver, *, at: dict[float, Any] | None = None,
             **settings: Any) -> dict[str, Any]:
    """Stream STREAM_N events through ours; flush(FLUSH_TIMEOUT); count at the receiver."""
    s = c.make_ours(rx, max_requests_per_second=0, **settings)
    t0 = stream(s.log, STREAM_N, STREAM_SECONDS, at)
    ok = s.flush(timeout=FLUSH_TIMEOUT)
    seconds = time.monotonic() - t0
    st = s.stats()
    s.close(timeout=5)
    lost, dups, back = c.loss_and_dups(rx.values(s.BucketKey), range(STREAM_N))
    return {"lost": lost, "dups": dups, "back": back, "seconds": seconds, "ok": ok,
            "requests": st.requests, "retries": st.retries}


def iss_run(rx: c.AnyReceiver, *, at: dict[float, Any] | None = None) -> dict[str, Any]:
    """Stream STREAM_N events through ISStreamer (buffer 10); close(); join its threads."""
    iss = c.make_isstreamer(rx)
    t0 = stream(iss.log, STREAM_N, STREAM_SECONDS, at)
    c.close_iss(iss)
    left = c.join_iss(FLUSH_TIMEOUT)
    seconds = time.monotonic() - t0
    lost, dups, back = c.loss_and_dups(rx.values(iss.BucketKey), range(STREAM_N))
    return {"lost": lost, "dups": dups, "back": back, "seconds": seconds, "left": left}


def pct(n: int) -> str:
    return f"{n} ({100 * n / STREAM_N:.1f}%)"


# ------------------------------------------------------------------------------ 1. fault mix
def bench_fault_mix(t: c.Table) -> None:
    rx_ours = c.start_receiver(faults=FAULTS, seed=1)
    ours = ours_run(rx_ours)
    ours_injected = rx_ours.stats()["injected"]
    rx_iss = c.start_receiver(faults=FAULTS, seed=1)
    theirs = iss_run(rx_iss)
    iss_injected = rx_iss.stats()["injected"]
    t.row(f"fault mix: events lost of {STREAM_N:,}", pct(ours["lost"]), pct(theirs["lost"]),
          "0 (ours)", ours["lost"] == 0)
    t.row("fault mix: duplicates stored", ours["dups"], theirs["dups"],
          "≤ resets after storing", None)
    t.row("fault mix: stored out of order", ours["back"], theirs["back"], "0 (ours)",
          ours["back"] == 0)
    t.row("fault mix: seconds from first log() to all delivered", ours["seconds"],
          theirs["seconds"], "(reported)", None)

    def faults(injected: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in injected.items() if v)

    t.note(f"Fault mix: receiver `Faults(p_5xx=0.2, p_reset_before=0.05, p_429=0.05, "
           f"retry_after=1, p_reset_after=0.02)`, seed 1; {STREAM_N:,} events (unique int values) "
           f"over {STREAM_STR}, buffer 10 for both, ours with pacing off (a test endpoint; "
           f"at 3 requests/s the stream alone would take 33 s). Ours: flush({FLUSH_TIMEOUT:g}) "
           f"{'returned True' if ours['ok'] else 'timed out'}, {ours['requests']} requests, "
           f"{ours['retries']} retries; faults injected: {faults(ours_injected)}. ISStreamer: "
           f"close() then its threads joined; faults injected: {faults(iss_injected)}.")


# ------------------------------------------------------------------------------ 2. outage
def bench_outage(t: c.Table) -> None:
    for label, start in (("starting mid-stream (2 s to 8 s)", STREAM_SECONDS / 2),
                         ("centred on the stream (-1 s to 5 s)",
                          (STREAM_SECONDS - OUTAGE_SECONDS) / 2)):
        results = []
        for run in (ours_run, iss_run):
            rx = c.start_receiver()
            if start < 0:  # begins before the first event: start it, then wait
                rx.outage(OUTAGE_SECONDS)
                time.sleep(-start)
                result = run(rx)
            else:
                result = run(rx, at={start: lambda rx=rx: rx.outage(OUTAGE_SECONDS)})
            results.append(result)
            rx.close()
        ours, theirs = results
        t.row(f"receiver down {OUTAGE_SECONDS:g} s {label}: events lost", pct(ours["lost"]),
              pct(theirs["lost"]), "0 (ours)", ours["lost"] == 0)
        t.row(f"outage {label}: seconds to deliver; duplicates",
              f"{ours['seconds']:.1f}; {ours['dups']}", f"{theirs['seconds']:.1f}; "
              f"{theirs['dups']}", "(reported)", None)
    t.note(f"Outage: `receiver.outage({OUTAGE_SECONDS:g})` (every request's connection reset, "
           f"nothing stored) during a {STREAM_STR} stream of {STREAM_N:,} events, buffer 10, "
           f"ours with pacing off and `flush(timeout={FLUSH_TIMEOUT:g})`; ISStreamer: close() "
           f"then its threads joined. The reference measured ISStreamer losing 97%; which "
           f"placement it used is not recorded, so both are run. Time counts from the first "
           f"log() (for the centred outage, ours and ISStreamer start 1 s into it).")


# ------------------------------------------------------------------------------ 3. SIGKILL
def kill_child(api_base: str, access_key: str, bucket_key: str, spool_dir: str) -> None:
    """The killed process: stream at KILL_RATE events/s, print "i wall-time" after each."""
    from isstreamer_jupyter import Streamer

    s = Streamer(bucket_name="bench", bucket_key=bucket_key, access_key=access_key,
                 api_base=api_base, spool_dir=spool_dir)
    print("ready", flush=True)
    t0 = time.monotonic()
    for i in range(100 * KILL_AFTER):  # bounded: the parent kills it long before
        due = t0 + i / KILL_RATE
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        s.log("bench", i)
        print(i, repr(time.time()), flush=True)
    os._exit(3)


def bench_sigkill(t: c.Table) -> None:
    rx = c.start_receiver(faults={"latency": KILL_LATENCY})
    spool_dir = str(c.scratch("killspool"))
    access_key, bucket_key = c.unique("key"), c.unique("killed")
    child = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--kill-child", rx.api_base, access_key,
         bucket_key, spool_dir], stdout=subprocess.PIPE, text=True, bufsize=1)
    assert child.stdout is not None
    logged: list[float] = []  # wall time each event was logged, by value
    deadline = time.monotonic() + 60
    for line in child.stdout:
        if line.startswith("ready"):
            continue
        i, when = line.split()
        logged.append(float(when))
        if int(i) + 1 >= KILL_AFTER or time.monotonic() > deadline:
            break
    child.send_signal(signal.SIGKILL)
    killed_at = time.time()
    child.wait(10)  # reaped, as Jupyter reaps a dead kernel
    child.stdout.close()
    time.sleep(KILL_LATENCY + 0.2)  # the request in flight at the kill lands (or not)
    stored_at_kill = rx.count(bucket_key)
    safe = [i for i, when in enumerate(logged) if when <= killed_at - SPOOL_INTERVAL]
    late = [i for i, when in enumerate(logged) if when > killed_at - SPOOL_INTERVAL]

    rx.set_faults(latency=0.0)
    t0 = time.monotonic()
    s = c.make_ours(rx, bucket_key=bucket_key, access_key=access_key, spool_dir=spool_dir,
                    max_requests_per_second=0, batch_size=500)
    recovered = s.stats().recovered
    ok = s.flush(timeout=FLUSH_TIMEOUT)
    seconds = time.monotonic() - t0
    s.close(timeout=5)
    values = rx.values(bucket_key)
    lost_safe, dups, back = c.loss_and_dups(values, safe)
    present = set(values)
    late_delivered = sum(1 for i in late if i in present)
    t.row(f"SIGKILL after {len(logged):,} events: lost of those logged > "
          f"{SPOOL_INTERVAL:g} s before the kill", f"{lost_safe} of {len(safe):,}",
          "n/a", "0", lost_safe == 0)
    t.row("SIGKILL: recovered by the next streamer (stats().recovered)", recovered, "n/a",
          f"= {len(logged) - stored_at_kill:,} pending at the kill (approx.)", None)
    t.row("SIGKILL: duplicates; stored out of order", f"{dups}; {back}", "n/a",
          "(reported)", None)
    t.row("SIGKILL: seconds for the next streamer to deliver the rest", seconds, "n/a",
          "(reported)", None)
    t.note(f"SIGKILL: a child process logs {KILL_RATE} events/s with every default (spool in a "
           f"scratch `spool_dir`) while the receiver answers after {KILL_LATENCY:g} s, so events "
           f"are pending; the parent SIGKILLs it after {len(logged):,} events "
           f"({stored_at_kill:,} stored by then, counting the request in flight at the kill), "
           f"reaps it, removes the latency and starts a Streamer with the same access key, "
           f"bucket key, API base and spool_dir (pacing off, batch 500), then "
           f"`flush(timeout={FLUSH_TIMEOUT:g})` ({'True' if ok else 'timed out'}). "
           f"{len(late)} events were logged in the last {SPOOL_INTERVAL:g} s before the kill; "
           f"{late_delivered} of them arrived anyway. Duplicates, if any, come from the request "
           f"in flight at the kill (stored, never acknowledged), or from the batch before it "
           f"(accepted, but its removal from the spool is done while the next request is "
           f"out). ISStreamer keeps nothing on "
           f"disk: what it had not shipped dies with the process.")


# ------------------------------------------------------------------------------ 4. the spool
def log_cost(rx: c.AnyReceiver, n: int, **settings: Any) -> tuple[float, int]:
    """Best over ROUNDS fresh streamers of the mean µs per log() over n calls; and the events
    dropped (a memory store past max_queue drops the oldest)."""
    means, dropped = [], 0
    for r in range(ROUNDS):
        s = c.make_ours(rx, batch_size=500, max_requests_per_second=0, **settings)
        try:
            c.log_loop_ns(s.log, 1000)
            s.flush(timeout=5)
            means.append(c.log_loop_ns(s.log, n, start=(r + 1) * 1_000_000) / n / 1000)
            dropped += s.stats().dropped
        finally:
            s.close(timeout=0.2)
    return min(means), dropped


def throughput(rx: c.AnyReceiver, **settings: Any) -> tuple[float, int]:
    """(events/s from the first log() to flush() returning, events lost) over THROUGHPUT_N."""
    s = c.make_ours(rx, batch_size=500, max_requests_per_second=0, **settings)
    t0 = time.perf_counter()
    c.log_loop_ns(s.log, THROUGHPUT_N)
    s.flush(timeout=120)
    seconds = time.perf_counter() - t0
    s.close(timeout=5)
    lost, _, _ = c.loss_and_dups(rx.values(s.BucketKey), range(THROUGHPUT_N))
    return THROUGHPUT_N / seconds, lost


def bench_spool(t: c.Table) -> None:
    rx = c.start_receiver()
    dropped_off = 0
    for label, extra in (("max_queue above the count", {"max_queue": 5 * LOG_N}),
                         ("default max_queue", {})):
        (on, _), (off, dropped) = log_cost(rx, LOG_N, **extra), log_cost(rx, LOG_N, spool=False,
                                                                          **extra)
        dropped_off += dropped
        t.row(f"log() µs/call, spool on / off ({LOG_N:,} calls, batch 500, pacing off, "
              f"{label})", f"{on:.2f} / {off:.2f}", "—", "no measurable difference (≤ 10%)",
              on <= 1.10 * off)
    runs = [throughput(rx) for _ in range(THROUGHPUT_ROUNDS)]
    best, lost = max(r[0] for r in runs), sum(r[1] for r in runs)
    runs_off = [throughput(rx, spool=False, max_queue=THROUGHPUT_N + 10_000)
                for _ in range(THROUGHPUT_ROUNDS)]
    best_off = max(r[0] for r in runs_off)
    t.row("sender throughput through the spool, events/s (batch 500, pacing off)", best, "—",
          "≥ 50,000", best >= 50_000)
    t.row("same with spool=False (max_queue above the count), events/s", best_off, "—",
          "(diagnostic)", None)
    t.row("throughput runs: events lost", lost + sum(r[1] for r in runs_off), "—", "0",
          lost + sum(r[1] for r in runs_off) == 0)
    t.note(f"Spool: log() cost is the best of {ROUNDS} loops, each on a fresh streamer, the "
           f"sender thread running. With max_queue above the count only the sender thread's "
           f"work differs; with the default max_queue (100,000) the queue passes it during the "
           f"loop and log() itself moves the queue to the store (with the spool off, the memory "
           f"store then drops the oldest: {dropped_off:,} events over those loops, as "
           f"designed). "
           f"Throughput: {THROUGHPUT_N:,} events logged at once, timed from the first log() to "
           f"`flush()` returning; best of {THROUGHPUT_ROUNDS}.")


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--kill-child":
        kill_child(*sys.argv[2:6])
        return
    c.quiet_stdout()
    c.enter_scratch("reliability")
    c.report(c.header("Issue 3: nothing lost"))
    t = c.Table("bench_reliability: issue 3 (durability)")
    started = time.monotonic()
    steps = (("fault mix", lambda: bench_fault_mix(t)), ("outage", lambda: bench_outage(t)),
             ("SIGKILL", lambda: bench_sigkill(t)), ("spool", lambda: bench_spool(t)))
    c.run_steps(t, steps, started)


if __name__ == "__main__":
    main()
