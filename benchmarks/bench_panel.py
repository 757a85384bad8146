"""How much kernel time one panel refresh costs, with 100 signals (issue: at most 2 ms).

    .venv/bin/python benchmarks/bench_panel.py [--signals 100] [--rounds 300]

A streamer sends to the loopback receiver; its panel is refreshed by hand, each call timed
with ``time.perf_counter`` (wall) and ``time.thread_time`` (CPU of the calling thread, which is
what the kernel spends). Widgets get a comm that builds and serializes every message with a
signed ``jupyter_client`` session, as ipykernel does on the caller's thread before handing it
to its IOPub thread, so the comm traffic's cost is in the figures.

Scenarios:
  steady       nothing changed since the last refresh (the panel of an idle streamer)
  all moving   every signal got a new value between two refreshes (the worst case)
  log open     as "all moving", with the debug log section open and new messages each time

Columns: median and 95th percentile wall time of one refresh, median CPU time of the calling
thread, the median of ``Streamer.stats()`` alone (the core's share), comm messages and KiB of
serialized messages per refresh.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time

import comm
from jupyter_client.session import Session

from isstreamer_jupyter import Streamer
from isstreamer_jupyter.receiver import Receiver

SESSION = Session(key=b"benchmark")


class CountingComm(comm.base_comm.BaseComm):
    """Serializes what would go to the frontend, as the kernel's session does, and counts it."""

    messages = 0
    bytes = 0

    def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
        content = {"comm_id": self.comm_id, "data": data or {}}
        frames = SESSION.serialize(SESSION.msg(msg_type, content, metadata=metadata or {}))
        CountingComm.messages += 1
        CountingComm.bytes += sum(len(f) for f in frames)


comm.create_comm = CountingComm


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signals", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    from isstreamer_jupyter._panel import Panel

    rows = []
    with Receiver() as rx, tempfile.TemporaryDirectory() as spool:
        streamer = Streamer(bucket_name="bench panel", access_key="bench-key",
                            api_base=rx.api_base, max_requests_per_second=0, spool_dir=spool,
                            batch_size=500)
        keys = [f"signal_{i:03d}" for i in range(args.signals)]
        for j in range(60):  # full sparklines
            for i, key in enumerate(keys):
                streamer.log(key, (i * 7 + j * 13) % 101 / 3.0)
        streamer.flush(30)
        panel = Panel(streamer)

        def run(name: str, between) -> None:
            wall, cpu, core = [], [], []
            messages0, bytes0 = CountingComm.messages, CountingComm.bytes
            for r in range(args.rounds):
                between(r)
                s0 = time.perf_counter()
                streamer.stats()  # the core's share, timed apart (the refresh calls it again)
                core.append(time.perf_counter() - s0)
                w0, c0 = time.perf_counter(), time.thread_time()
                panel.refresh()
                cpu.append(time.thread_time() - c0)
                wall.append(time.perf_counter() - w0)
            rows.append((name, statistics.median(wall) * 1e3, percentile(wall, 0.95) * 1e3,
                         statistics.median(cpu) * 1e3, statistics.median(core) * 1e3,
                         (CountingComm.messages - messages0) / args.rounds,
                         (CountingComm.bytes - bytes0) / args.rounds / 1024))

        def nothing(_r: int) -> None:
            pass

        def move_all(r: int) -> None:
            for i, key in enumerate(keys):
                streamer.log(key, (i * 7 + r * 13) % 101 / 3.0)
            streamer.flush(30)

        def move_all_and_log(r: int) -> None:
            move_all(r)
            streamer._say(logging.WARNING, f"benchmark message {r}")

        panel.refresh()
        run("steady", nothing)
        run("all moving", move_all)
        panel.log_section.selected_index = 0
        run("log open", move_all_and_log)
        panel.close()
        streamer.close()

    print(f"panel refresh, {args.signals} signals, {args.rounds} rounds each "
          f"(python {sys.version.split()[0]})")
    print(f"{'scenario':<12} {'median ms':>10} {'p95 ms':>8} {'cpu ms':>8} "
          f"{'of it stats()':>14} {'msgs/refresh':>13} {'KiB/refresh':>12}")
    for name, med, p95, cpu, core, msgs, kib in rows:
        print(f"{name:<12} {med:>10.3f} {p95:>8.3f} {cpu:>8.3f} {core:>14.3f} {msgs:>13.1f} "
              f"{kib:>12.1f}")
    print("command: .venv/bin/python benchmarks/bench_panel.py "
          f"--signals {args.signals} --rounds {args.rounds}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
