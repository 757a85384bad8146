"""Issue 16's benchmark: as a user runs it. Ours beside ISStreamer 2.0.0, in one run.

    .venv/bin/python benchmarks/bench_user_run.py [--serial] [--only SCENARIO]

Each scenario is a user's script that logs events at a steady pace, calls ``close()`` and exits,
run as a real subprocess with every default. What the loopback receiver holds is counted after
the script has exited: the spool does not count as delivered.

1. the fault mix: 2,000 events against 20% 5xx, 5% resets before storing, 5% 429 with
   Retry-After and 2% resets after storing (fixed seed);
2. the rate limit: 600 events logged at 60/s against 30 requests per 10 s for the account;
3. three processes on one access key, 300 events each at 60/s, the same per-account limit;
4. a whole outage: the receiver is down for the whole script; once it is back, ours is followed
   by ``python -m isstreamer_jupyter spool send`` (ISStreamer has nothing of the kind: what it
   could not send is lost, or written to ``err_missed_events.txt``).

Both clients run the same script; only its import line differs. Each reads its access key and
API base from ``~/isstreamer.ini``, ISStreamer's own configuration file: every run gets a scratch
HOME of its own, so the default spool location is a scratch folder too. Ours and ISStreamer run
at the same time, each against its own receiver (``--serial``: one after the other); their work
here is waiting, not computing.

Prints markdown tables and exits 0 even when a target is missed: the FAIL is in the table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c

FAULTS = {"p_5xx": 0.2, "p_reset_before": 0.05, "p_429": 0.05, "retry_after": 1.0,
          "p_reset_after": 0.02}
RATE_LIMIT = {"rate_limit": 30, "rate_window": 10}
OUTAGE_SECONDS = 3600.0  # "the whole run": ended by hand once the script has exited
SPOOL_SEND_TIMEOUT = 120.0
# With these bounds the worst case (every script killed at its bound) stays under run_all.py's
# 900 s per script: 300 + 120 + 120 + 60 + 120 s.
VALUES_APART = 1_000_000  # process k logs values k * VALUES_APART + i
POLL = 0.1  # seconds between the watcher's counts of the receiver
TIMES = ("waited_service", "waited_backoff", "waited_pace", "sending_seconds")

SCRIPT = '''\
"""A user's script: log readings at a steady pace to one bucket, close, exit."""
import json
import sys
import time

{import_line}

n, rate, first, bucket_key = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
streamer = Streamer(bucket_name="user run", bucket_key=bucket_key)
began = time.monotonic()
for i in range(n):
    pause = began + i / rate - time.monotonic()
    if pause > 0:
        time.sleep(pause)
    streamer.log("reading", first + i)
logged = time.monotonic()
closed = streamer.close()
ended = time.monotonic()

# The benchmark's part, not a user's: how long each phase took, and ours' stats() after close().
facts = {{"log_seconds": logged - began, "close_seconds": ended - logged,
          "close_returned": closed}}
if callable(getattr(streamer, "stats", None)):
    st = streamer.stats()
    for name in ("sent", "pending", "requests", "retries", "dropped", "refused", "recovered",
                 "waited_service", "waited_backoff", "waited_pace", "sending_seconds"):
        value = getattr(st, name, None)
        facts[name] = value if value is None or isinstance(value, (int, float)) else str(value)
    settings = getattr(streamer, "settings", None)
    facts["max_requests_per_second"] = getattr(settings, "max_requests_per_second", None)
    outcome = getattr(streamer, "outcome", None)
    if outcome is not None:
        fields = getattr(outcome, "__dataclass_fields__", {{}})
        facts["outcome"] = {{k: getattr(outcome, k) for k in fields
                            if isinstance(getattr(outcome, k), (int, float, str, bool))}}
with open(sys.argv[5], "w") as f:
    json.dump(facts, f)
'''
IMPORTS = {"ours": "from isstreamer_jupyter import Streamer",
           "iss": "from ISStreamer.Streamer import Streamer"}
CLIENT_NAMES = {"ours": "ours", "iss": f"ISStreamer {c.iss_version()}"}


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str  # its cell in the table
    receiver: dict[str, Any]
    processes: int
    events: int  # per process
    rate: float  # events/s each process logs
    timeout: float  # seconds the scripts may run, in all
    outage: bool = False
    target: bool = False  # 0 missing for ours is a target

    @property
    def total(self) -> int:
        return self.processes * self.events


SCENARIOS = (
    Scenario("fault mix", "fault mix: 2,000 events, 500/s, seed 1", {"faults": FAULTS, "seed": 1},
             1, 2000, 500.0, 300.0, target=True),
    Scenario("rate limit", "rate limit: 600 events at 60/s, 30 requests / 10 s", RATE_LIMIT,
             1, 600, 60.0, 120.0, target=True),
    Scenario("three processes", "three processes on one key: 3 × 300 events at 60/s, "
             "30 requests / 10 s", RATE_LIMIT, 3, 300, 60.0, 120.0),
    Scenario("outage", "whole outage: 300 events at 60/s, receiver down until the script "
             "exits", {}, 1, 300, 60.0, 60.0, outage=True),
)


# ------------------------------------------------------------------------------ one run
class Watch:
    """Counts a bucket on the receiver every POLL s; remembers when the count last grew."""

    def __init__(self, rx: c.AnyReceiver, bucket_key: str) -> None:
        self.rx, self.bucket_key = rx, bucket_key
        self.count = 0
        self.grew_at: float | None = None  # monotonic
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.look()
            self._stop.wait(POLL)

    def look(self) -> None:
        with contextlib.suppress(RuntimeError, OSError, ValueError):
            now = self.rx.count(self.bucket_key)
            if now > self.count:
                self.count, self.grew_at = now, time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.look()


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    folder: Path
    report: Path
    exited: float | None = None  # monotonic
    killed: bool = False


@dataclass
class Run:
    """One client's run of one scenario: its receiver, its scratch HOME, its processes."""

    scenario: Scenario
    client: str  # "ours" | "iss"
    rx: c.AnyReceiver
    home: Path
    access_key: str
    bucket_key: str
    env: dict[str, str]
    procs: list[Proc] = field(default_factory=list)
    started: float = 0.0
    watch: Watch | None = None
    send: dict[str, Any] | None = None  # spool send: code, seconds, output

    @classmethod
    def make(cls, scenario: Scenario, client: str) -> Run:
        rx = c.start_receiver(**scenario.receiver)
        home = c.scratch(f"{scenario.name.replace(' ', '_')}-{client}")
        access_key, bucket_key = c.unique("userkey"), c.unique(f"user_{client}")
        (home / "isstreamer.ini").write_text(
            "[isstreamer.client_config]\n"
            f"access_key = {access_key}\n"
            "[isstreamer.api_config]\n"
            f"stream_api_base = {rx.host_base}\n")
        (home / "user_script.py").write_text(SCRIPT.format(import_line=IMPORTS[client]))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("IS_", "XDG_"))}
        env["HOME"] = str(home)
        return cls(scenario, client, rx, home, access_key, bucket_key, env)

    def start(self) -> None:
        sc = self.scenario
        if sc.outage:
            self.rx.outage(OUTAGE_SECONDS)
        self.watch = Watch(self.rx, self.bucket_key)
        self.started = time.monotonic()
        self.watch.start()
        for k in range(sc.processes):
            folder = self.home / f"process{k}"
            folder.mkdir()
            report = folder / "facts.json"
            with open(folder / "stdout.txt", "wb") as out, open(folder / "stderr.txt",
                                                               "wb") as err:
                popen = subprocess.Popen(
                    [sys.executable, str(self.home / "user_script.py"), str(sc.events),
                     str(sc.rate), str(k * VALUES_APART), self.bucket_key, str(report)],
                    cwd=folder, env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                    start_new_session=True)
            self.procs.append(Proc(popen, folder, report))

    def poll(self) -> bool:
        """Note the exit of each process that has ended; True once all have."""
        for p in self.procs:
            if p.exited is None and p.popen.poll() is not None:
                p.exited = time.monotonic()
        return all(p.exited is not None for p in self.procs)

    def kill(self) -> None:
        """Kill the processes still running past the scenario's bound (each its own group)."""
        for p in self.procs:
            if p.exited is None and p.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.popen.pid, signal.SIGKILL)
                p.popen.wait(10)
                p.killed = True
                p.exited = time.monotonic()

    def spool_send(self) -> None:
        """Ours after the outage: the receiver is back; `spool send` from the script's folder."""
        self.rx.outage(0)
        cmd = [sys.executable, "-m", "isstreamer_jupyter", "spool", "send"]
        began = time.monotonic()
        try:
            done = subprocess.run(cmd, cwd=self.procs[0].folder, env=self.env,
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=SPOOL_SEND_TIMEOUT, start_new_session=True)
            code: int | None = done.returncode
            output = (done.stdout + done.stderr).strip()
        except subprocess.TimeoutExpired as exc:
            code = None
            output = f"(timed out after {SPOOL_SEND_TIMEOUT:g} s) " + "".join(
                x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
                for x in (exc.stdout, exc.stderr))
        self.send = {"code": code, "seconds": time.monotonic() - began, "output": output}

    # -- what the run comes to ---------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        assert self.watch is not None
        self.watch.stop()
        sc = self.scenario
        values = self.rx.values(self.bucket_key)
        logged = [k * VALUES_APART + i for k in range(sc.processes) for i in range(sc.events)]
        missing, dups, _ = c.loss_and_dups(values, logged)
        stats = self.rx.stats()
        facts = [self._facts(p) for p in self.procs]
        exited = max(p.exited or self.started for p in self.procs)
        grew = self.watch.grew_at
        return {
            "delivered": len(set(values) & set(logged)), "missing": missing, "dups": dups,
            "deliver_s": None if grew is None else grew - self.started,
            "run_s": exited - self.started, "n429": stats["statuses"].get(429, 0),
            "requests": stats["requests"], "injected": stats["injected"],
            "codes": [p.popen.returncode for p in self.procs],
            "killed": sum(p.killed for p in self.procs), "facts": facts,
            "missed_file": sum(self._missed_file(p) for p in self.procs),
            "told": [self._last_words(p).replace(str(self.home), "~") for p in self.procs],
            "send": self.send,
            "key_shown": self._key_shown(), "home": self.home,
        }

    @staticmethod
    def _facts(p: Proc) -> dict[str, Any]:
        try:
            return json.loads(p.report.read_text())
        except (OSError, ValueError):
            return {}

    @staticmethod
    def _missed_file(p: Proc) -> int:
        """Events ISStreamer wrote to err_missed_events.txt (one JSON batch a line)."""
        path = p.folder / "err_missed_events.txt"
        n = 0
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    batch = json.loads(line)
                    n += len(batch) if isinstance(batch, list) else 0  # (0: a bucket)
        return n

    @staticmethod
    def _last_words(p: Proc) -> str:
        """What the script told the user at the end: its last warning's message on stderr,
        else its last line there."""
        with contextlib.suppress(OSError):
            lines = [ln.strip() for ln in
                     (p.folder / "stderr.txt").read_text(errors="replace").splitlines()
                     if ln.strip()]
            warned = [ln.split("Warning: ", 1)[1] for ln in lines if "Warning: " in ln]
            return warned[-1] if warned else (lines[-1] if lines else "")
        return ""

    def _key_shown(self) -> bool:
        texts = [self.send["output"] if self.send else ""]
        for p in self.procs:
            for name in ("stdout.txt", "stderr.txt"):
                with contextlib.suppress(OSError):
                    texts.append((p.folder / name).read_text(errors="replace"))
        return any(self.access_key in t for t in texts)


def wait_all(runs: list[Run], timeout: float) -> None:
    """Wait (bounded) until every process of `runs` has exited; kill what overruns."""
    deadline = time.monotonic() + timeout
    while not all([r.poll() for r in runs]):  # (a list: every run notes its exits each time)
        if time.monotonic() > deadline:
            for r in runs:
                r.kill()
            return
        time.sleep(0.05)


def run_scenario(sc: Scenario, serial: bool) -> dict[str, dict[str, Any]]:
    runs = [Run.make(sc, client) for client in ("ours", "iss")]
    batches = [[r] for r in runs] if serial else [runs]
    for batch in batches:
        for r in batch:
            r.start()
        wait_all(batch, sc.timeout)
    ours = runs[0]
    if sc.outage:
        for r in runs:
            r.rx.outage(0)
        ours.spool_send()
    results = {r.client: r.finish() for r in runs}
    for r in runs:
        r.rx.close()
    return results


# ------------------------------------------------------------------------------ the tables
class ScenarioTable:
    """scenario | client | delivered | missing | duplicates | times | 429s | target | pass/fail."""

    HEAD = ("scenario", "client", "delivered", "missing", "duplicates",
            "s to deliver (start → last event stored)", "s the script ran (start → exit)",
            "429 answers", "target", "pass/fail")

    def __init__(self, title: str) -> None:
        self.title = title
        self.rows: list[tuple[str, ...]] = []
        self.notes: list[str] = []
        self.failed = 0

    def row(self, cells: list[Any], target: str = "—", ok: bool | None = None) -> None:
        verdict = "—" if ok is None else ("pass" if ok else "**FAIL**")
        if ok is False:
            self.failed += 1
        row = (*(c.fmt(x) for x in cells), target, verdict)
        self.rows.append(row)
        print("# " + " | ".join(row), file=sys.stderr, flush=True)

    def render(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.HEAD) + " |",
                 "| " + " | ".join("---" for _ in self.HEAD) + " |"]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        if self.notes:
            lines.append("")
            lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines)


def seconds(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


def summed(facts: list[dict[str, Any]], name: str) -> float | None:
    """A stat summed over the processes; None when one of them lacks it."""
    values = [f.get(name) for f in facts]
    if not values or any(v is None for v in values):
        return None
    return float(sum(values))


def add_rows(t: ScenarioTable, sc: Scenario, results: dict[str, dict[str, Any]]) -> None:
    for client in ("ours", "iss"):
        r = results[client]
        ran = seconds(r["run_s"])
        if r["send"] is not None:
            code = r["send"]["code"]
            ran += (f" + spool send {r['send']['seconds']:.1f} "
                    f"({'timed out' if code is None else f'exit {code}'})")
        if r["killed"]:
            ran += f" (**{r['killed']} killed at the {sc.timeout:g} s bound**)"
        target, ok = ("0", r["missing"] == 0) if sc.target and client == "ours" else ("—", None)
        t.row([sc.title if client == "ours" else "", CLIENT_NAMES[client],
               f"{r['delivered']:,} of {sc.total:,}", r["missing"], r["dups"],
               seconds(r["deliver_s"]), ran, r["n429"]], target, ok)


def describe(sc: Scenario, results: dict[str, dict[str, Any]]) -> str:
    """One note per scenario: requests, faults, exit codes, what each script said last."""
    parts = []
    for client in ("ours", "iss"):
        r = results[client]
        injected = ", ".join(f"{k} {v}" for k, v in r["injected"].items() if v)
        bits = [f"{r['requests']} requests"]
        if injected and sc.name != "outage":
            bits.append(f"faults injected: {injected}")
        if any(r["codes"]):
            bits.append(f"exit codes {r['codes']}")
        closes = [f.get("close_seconds") for f in r["facts"]]
        if closes and None not in closes:
            bits.append("close() took " + " / ".join(f"{x:.1f}" for x in closes) + " s")
        if client == "ours":
            for name in ("sent", "pending"):
                total = summed(r["facts"], name)
                if total is not None:
                    bits.append(f"stats().{name} {total:.0f}")
            told = [w for w in r["told"] if w]
            if told:
                bits.append("its last words on stderr: " + " / ".join(
                    f"“{w[:300]}{'…' if len(w) > 300 else ''}”" for w in told[:1]))
            if r["send"] is not None:
                out = r["send"]["output"].replace(str(r["home"]), "~").splitlines()
                bits.append(f"`spool send` said: “{(out[-1] if out else '')[:300]}”")
        else:
            bits.append(f"{r['missed_file']:,} events written to err_missed_events.txt")
        parts.append(f"{CLIENT_NAMES[client]}: {'; '.join(bits)}")
    return f"{sc.name.capitalize()}: " + ". ".join(parts) + "."


def time_rows(t: c.Table, results: dict[str, dict[str, Any]]) -> None:
    """The fault mix: time to deliver beside ISStreamer's, and where ours went."""
    ours, theirs = results["ours"], results["iss"]
    t.row("fault mix: seconds to deliver (script start → last event stored)",
          seconds(ours["deliver_s"]), seconds(theirs["deliver_s"]), "(reported)", None)
    facts = ours["facts"]
    life = None
    if facts and all("log_seconds" in f and "close_seconds" in f for f in facts):
        life = sum(f["log_seconds"] + f["close_seconds"] for f in facts)
    t.row("fault mix, ours: the streamer's life (first log() → close() returns), s",
          "n/a" if life is None else life, "—", "(reported)", None)
    got = {name: summed(facts, name) for name in TIMES}
    labels = {"waited_service": "waits the service asked for (Retry-After, 429, rate window)",
              "waited_backoff": "our own backoff after failures",
              "waited_pace": "our own pace between requests (max_requests_per_second)",
              "sending_seconds": "inside HTTP requests (sending)"}
    for name in TIMES:
        value = got[name]
        t.row(f"fault mix, ours: {labels[name]}, s (stats().{name})",
              "n/a" if value is None else value, "n/a", "(reported)", None)
    rest = None
    if life is not None and all(v is not None for v in got.values()):
        rest = life - sum(v for v in got.values() if v is not None)
    t.row("fault mix, ours: the rest of its life (batching, waiting for events, start-up), s",
          "n/a" if rest is None else rest, "—", "(reported)", None)
    rps = ours["facts"][0].get("max_requests_per_second") if ours["facts"] else None
    t.row(f"fault mix, ours: the pace's floor for its requests (requests ÷ "
          f"{'max_requests_per_second' if rps is None else f'{rps:g} requests/s'}), s",
          "n/a" if not rps else ours["requests"] / rps, "—", "(reported)", None)
    t.row("fault mix: requests the receiver answered; of them 429", f"{ours['requests']}; "
          f"{ours['n429']}", f"{theirs['requests']}; {theirs['n429']}", "(reported)", None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--serial", action="store_true",
                    help="run ours and ISStreamer one after the other, not at the same time")
    ap.add_argument("--only", choices=[s.name for s in SCENARIOS], action="append",
                    help="run only this scenario (may be repeated)")
    args = ap.parse_args()
    c.quiet_stdout()
    c.enter_scratch("user_run")
    c.report(c.header("Issue 16: as a user runs it"))
    started = time.monotonic()
    table = ScenarioTable("bench_user_run: issue 16 (scripts that log and exit, counted after "
                          "the exit)")
    times = c.Table("bench_user_run: the fault mix's time to deliver, and where ours went")
    keys_shown: list[str] = []
    for sc in SCENARIOS:
        if args.only and sc.name not in args.only:
            continue
        began = time.monotonic()
        try:
            results = run_scenario(sc, args.serial)
        except Exception as exc:
            table.row([sc.title, f"step failed: {type(exc).__name__}: {exc}", "", "", "", "",
                       "", ""], "—", False)
            continue
        add_rows(table, sc, results)
        table.notes.append(describe(sc, results))
        keys_shown += [f"{sc.name} ({CLIENT_NAMES[k]})" for k, r in results.items()
                       if r["key_shown"]]
        if sc.name == "fault mix":
            time_rows(times, results)
        print(f"# step {sc.name}: {time.monotonic() - began:.1f} s", file=sys.stderr, flush=True)
    table.notes.append(
        f"Each script (the same for both clients but for its import line) logs unique int "
        f"values at a steady pace, calls `close()` and exits; it runs as "
        f"`{Path(sys.executable).name} user_script.py` in a scratch HOME whose "
        f"`isstreamer.ini` gives the access key and `stream_api_base` (both clients read it), "
        f"every other setting at its default. Ours and ISStreamer "
        f"{'ran one after the other' if args.serial else 'ran at the same time'}, each "
        f"against its own receiver (the rate limit is per access key: the three processes "
        f"of a client share one key and one receiver). Delivered, missing and duplicates are "
        f"counted from the values the receiver holds once every script has exited (and, "
        f"after the outage, `spool send`). s to deliver: from the script's start (its "
        f"interpreter's start-up included) to the last time the receiver's count grew, "
        f"sampled every {POLL:g} s. 429 answers: the receiver's, injected ones included.")
    table.notes.append(
        "Ours after the outage: once the script has exited the receiver is back, and "
        "`python -m isstreamer_jupyter spool send` runs in the script's folder with the "
        "same HOME (so the same isstreamer.ini and default spool).")
    table.notes.append("The access key appeared in no script's output nor in `spool send`'s"
                       if not keys_shown else
                       f"**The access key appeared in the output of: {', '.join(keys_shown)}**")
    times.note("Where ours went: `stats()` read after `close()` in the script (cumulative for "
               "the streamer's life; n/a where this version of the package does not have the "
               "field). The rest is the streamer's life less those three. ISStreamer does not "
               "say where its time goes: each batch is shipped by a thread of its own, "
               "sleeping 1 s after a failure and Retry-After + 1 s after a 429, in 3 tries.")
    c.report(table.render())
    c.report()
    if times.rows:
        c.report(times.render())
    c.report(f"\n{table.failed + times.failed} target(s) missed; ran in "
             f"{time.monotonic() - started:.0f} s")
    c.finish(0)


if __name__ == "__main__":
    main()
