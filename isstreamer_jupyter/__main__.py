"""``python -m isstreamer_jupyter demo | serve | upload | spool``: the package on the command line.

- ``demo``: the main job on the embedded default: no account, no network. Streams a short
  simulated sensor run through a Streamer, which records it locally, and says where it went.
- ``serve``: a loopback Initial State-compatible receiver (see ``receiver.py``).
- ``upload FILE``: send an offline recording to Initial State (the access key comes from
  ``IS_ACCESS_KEY`` or ``isstreamer.ini``, never from the command line).
- ``spool status | send | drop``: what earlier runs left in the spool: list it (by account
  fingerprint, never by key), send it, or discard it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._config import Settings, resolve
from ._errors import (
    AccessDenied,
    BucketRemoved,
    CapReached,
    FlushTimeout,
    IsStreamerError,
    IsStreamerWarning,
    counted,
)
from ._offline import ProgressNotSaved
from ._report import SEND_COMMAND, render
from ._spool import SHORT, drop_spooled, fingerprint, spool_status


def demo(args: argparse.Namespace) -> int:
    from . import Streamer

    out = Path(args.output)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # (a file where a folder should be, a folder that cannot be made)
        why = "a file of that name is there" if isinstance(exc, FileExistsError) else (
            exc.strerror or str(exc))
        print(f"demo: --output {args.output}: cannot make its folder {str(out.parent)!r} "
              f"({why}). Fix: give --output a file in a folder that exists or "
              "can be made", file=sys.stderr)
        return 2
    started = time.time() - args.points  # one reading a second, ending now
    given_as = {"offline": "--online" if args.online else "demo without --online",
                "offline_file": "--output"}
    with Streamer(bucket_name="Demo greenhouse", offline_file=str(out),
                  offline=not args.online, given_as=given_as) as streamer:
        for i in range(args.points):
            epoch = started + i
            streamer.log("temperature_c", round(21 + 3 * math.sin(i / 9), 2), epoch=epoch)
            streamer.log_object({"humidity": round(0.45 + 0.05 * math.cos(i / 7), 3),
                                 "fan_on": i % 20 < 10}, key_prefix="", epoch=epoch)
        streamer.log("status", "done")
    stats = streamer.stats()
    print(f"logged {counted(stats.logged, 'event')} to bucket {stats.bucket_name!r} "
          f"({stats.bucket_key})")
    if stats.offline_file:
        why = streamer.settings.offline_reason if args.online else "the demo needs no account"
        print(f"{why}: recorded locally to {stats.offline_file} (--online sends to the "
              f"configured API instead)")
        print(f"upload it later with: python -m isstreamer_jupyter upload {stats.offline_file}")
    else:
        print(f"sent {counted(stats.sent, 'event')} to {streamer.settings.api_base}")
    print(f"refused {stats.refused}, dropped {stats.dropped}")
    end = streamer.outcome
    if not stats.offline_file and end is not None and end.waiting:  # (close() warned it too)
        fix = ""  # (a refused key, a reached cap: the stop's words hold its own fix)
        if not streamer.stopped:
            source = streamer.settings.sources.get("api_base", "default")
            fix = (f". Fix: check that the service at {streamer.settings.api_base} ({source}) "
                   f"answers, then run it again")
        print(f"{render(dataclasses.replace(end, call='demo'))}{fix}", file=sys.stderr)
        return 1
    return 0 if stats.refused == 0 and stats.dropped == 0 else 1


#: what ``upload`` exits with: its --help shows this, and the manual's upload page
UPLOAD_EXIT_CODES = """\
exit codes:
  0  every row of the file is delivered (by this run, or by an earlier one to the same
     API base and access key)
  1  the upload stopped before the end of the file (a refused access key, a reached
     monthly cap, no answer in time): fix what it says and run the same command again;
     it goes on where it stopped (after a progress file it could no longer write, it
     sends the last batch again first); or the last line has no line end (it may still
     be being written): run it again once the recording is finished (or, if the file is
     complete, end that line), and it sends that row
  2  it could not start: a mistake in the command (an ISStreamer recording needs
     --bucket-name), no such file or one it cannot read, no access key, a progress
     file it cannot write
  3  it went through the whole file, but some rows were skipped as unreadable or were
     refused by the service (by this run or an earlier one): those rows are not sent, and
     running it again does not send them (it says them again and exits 3 again)
  130  interrupted (Ctrl-C): run the same command again; it goes on where it stopped"""


#: what to do when an upload stopped, by what stopped it (on the command line the access key
#: and the API base come from the environment or isstreamer.ini)
AGAIN = "run the same command again: it goes on where it stopped"
UPLOAD_FIXES: dict[type[IsStreamerError], str] = {
    AccessDenied: "set IS_ACCESS_KEY (or access_key under [isstreamer.client_config] in "
                  f"isstreamer.ini) to the right access key, then {AGAIN}",
    CapReached: "the month's data points are used up: upgrade the plan or wait for the monthly "
                f"reset, then {AGAIN}",
    BucketRemoved: "that bucket was deleted in Initial State: run the command again with "
                   "another --bucket-name (a new name means a new bucket)",
    FlushTimeout: f"check the network and IS_API_BASE (the events API it sends to), then {AGAIN}",
    ProgressNotSaved: "once it can be written, run the same command again: it sends those rows "
                      "again (the service will then have them twice), then the rest",
}


def upload(args: argparse.Namespace) -> int:
    from ._offline import upload as run_upload

    settings = {}
    if args.batch_size is not None:  # (0 is a value, refused as such)
        settings["batch_size"] = args.batch_size
    summary = run_upload(args.file, bucket_name=args.bucket_name or "",
                         bucket_key=args.bucket_key or "", progress=not args.quiet,
                         timeout=args.timeout,
                         given_as={"batch_size": "--batch-size", "timeout": "--timeout"},
                         **settings)
    try:
        print(summary.report(stopped=False), flush=True)
    except BrokenPipeError:  # (`upload ... | true`: the report's reader went away; the verdict
        # on stderr and the exit code still say how the upload went)
        stdout_to_devnull()
    if not summary.ok:
        fix = UPLOAD_FIXES.get(summary.stopped_by, AGAIN) if summary.stopped_by else AGAIN
        print(f"upload stopped: {summary.error.rstrip('.')}. Fix: {fix}.", file=sys.stderr)
        return 1
    if summary.unfinished:
        print(f"upload: line {summary.unfinished}, the last, has no line end: it may still be "
              f"being written, so it is not sent yet. Fix: run the same command again once the "
              f"recording is finished (a file that is complete: end that line).",
              file=sys.stderr)
        return 1
    return 3 if summary.not_sent else 0


def stdout_to_devnull() -> None:
    """After a BrokenPipeError on stdout (its reader went away: `... | head`): no second error
    when Python flushes stdout on the way out (Python's docs, signal)."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


# ---------------------------------------------------------------- spool status | send | drop
#: what ``spool send`` exits with (its --help shows this)
SPOOL_SEND_EXIT_CODES = """\
exit codes:
  0  every event that waited for the access key and API base is delivered
  1  some still wait (or were refused): it says why and the fix; run it again once fixed
  2  it could not start: a mistake in the command, no access key, a spool it cannot use
  130  interrupted (Ctrl-C): what is left stays in the spool; run the same command again"""

#: what ``spool drop`` exits with (its --help shows this)
SPOOL_DROP_EXIT_CODES = """\
exit codes:
  0  the events are dropped (or nothing waited)
  1  the answer to the question was not yes: nothing is dropped
  2  a mistake in the command: no account chosen, an unknown --account, or no terminal to
     ask on and no --yes"""

#: how the settings these commands take are named in messages
SPOOL_OPTIONS = {"spool_dir": "--spool-dir", "api_base": "--api-base"}
KEY_FIX = ("set IS_ACCESS_KEY (or access_key under [isstreamer.client_config] in "
           "isstreamer.ini)")


def spool_settings(args: argparse.Namespace) -> Settings:
    """The settings as a Streamer resolves them, --spool-dir and --api-base first. Offline is
    given: these commands send nothing, so no access key is no mistake here."""
    given = {"spool_dir": args.spool_dir, "api_base": args.api_base}
    return resolve({**given, "offline": True}, given_as=SPOOL_OPTIONS)


def when(epoch: float | None) -> str:
    return "?" if epoch is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def table(rows: list[list[str]], right: set[int]) -> list[str]:
    """Rows as aligned columns; the columns in `right` (numbers) aligned to the right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                      for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
            for row in rows]


def spool_status_command(args: argparse.Namespace) -> int:
    settings = spool_settings(args)
    status = spool_status(settings.spool_dir or None)
    if status.warning:
        print(f"note: {status.warning}", file=sys.stderr)
    if not status.buckets:
        there = "" if status.exists else " (there is no spool there yet)"
        print(f"nothing waits in the spool {status.path}{there}")
        return 0
    mine = fingerprint(settings.api_base, settings.access_key) if settings.access_key else ""
    rows = [["account", "API base", "bucket", "events", "oldest", "newest", "bytes",
             "sent by"]]
    for b in status.buckets:
        bucket = b.bucket_key if b.bucket_name in ("", b.bucket_key) else (
            f"{b.bucket_key} ({b.bucket_name})")
        sender = ("no one: its key was refused" if b.refused and not b.senders else
                  ", ".join(f"pid {pid}" for pid in b.senders) or "no one")
        rows.append([b.account + ("*" if b.ns == mine else ""), b.api_base or "?", bucket,
                     f"{b.events:,}", when(b.oldest), when(b.newest), f"{b.bytes:,}", sender])
    print(f"spool {status.path}")
    for line in table(rows, right={3, 6}):
        print(f"  {line}")
    accounts = len({b.ns for b in status.buckets})
    print(f"{counted(status.events, 'event', 'wait')} ({counted(len(status.buckets), 'bucket')}"
          f", {counted(accounts, 'account')}); an account is shown by a fingerprint of its "
          f"access key and API base, never by the key")
    if mine in {b.ns for b in status.buckets}:
        print(f"* the account of the configured access key "
              f"({settings.sources.get('access_key', 'default')}) and API base "
              f"{settings.api_base}")
    unsent = sorted({b.account for b in status.buckets if not b.senders})
    if unsent:
        print(f"no live process sends what waits for {', '.join(unsent)}: `{SEND_COMMAND}`, "
              f"with that account's access key and API base (IS_ACCESS_KEY, IS_API_BASE or "
              f"isstreamer.ini), sends it; `python -m isstreamer_jupyter spool drop` discards "
              f"it")
    return 0


def seconds(text: str) -> float:
    """An argparse type: a number of seconds above 0 (inf: no bound)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:  # (NaN too)
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text}")
    return value


def spool_send(args: argparse.Namespace) -> int:
    from ._wait import send_spooled

    end = send_spooled(api_base=args.api_base, spool_dir=args.spool_dir,
                       progress=False if args.quiet else None, timeout=args.timeout,
                       given_as=SPOOL_OPTIONS)
    print(render(end), flush=True)
    if end.interrupted:  # (Ctrl-C: the report says what is left and to run it again)
        return 130
    return 0 if end.ok else 1


def spool_drop(args: argparse.Namespace) -> int:
    settings = spool_settings(args)
    directory = settings.spool_dir or None
    status = spool_status(directory)
    namespaces: list[str] | None
    if args.all:
        namespaces, whose = None, "every account"
    elif args.account:
        prefix = args.account.strip().lower()
        namespaces = sorted({b.ns for b in status.buckets if b.ns.startswith(prefix)})
        if len(namespaces) != 1:
            why = ("no events wait for an account of that fingerprint" if not namespaces else
                   f"{len(namespaces)} accounts' fingerprints begin with it")
            print(f"spool drop: --account {args.account}: {why} in the spool {status.path}. "
                  f"Fix: give a fingerprint that `python -m isstreamer_jupyter spool status` "
                  f"lists", file=sys.stderr)
            return 2
        whose = f"account {namespaces[0][:SHORT]}"
    elif settings.access_key:
        namespaces = [fingerprint(settings.api_base, settings.access_key)]
        whose = (f"account {namespaces[0][:SHORT]} (the access key from "
                 f"{settings.sources.get('access_key')}, API base {settings.api_base})")
    else:
        print(f"spool drop: no access key is configured, so it does not know whose events to "
              f"drop. Fix: {KEY_FIX} to drop that account's, give --account FINGERPRINT (`spool "
              f"status` lists them), or --all to drop every account's", file=sys.stderr)
        return 2
    chosen = [b for b in status.buckets if (namespaces is None or b.ns in namespaces)
              and (not args.bucket or b.bucket_key == args.bucket)]
    what = whose + (f", bucket {args.bucket}" if args.bucket else "")
    total = sum(b.events for b in chosen)
    if not total:
        others = status.events
        rest = (f" ({counted(others, 'event', 'wait')} for other accounts or buckets: `spool "
                f"status` lists them)" if others else "")
        print(f"nothing waits for {what} in the spool {status.path}: nothing to drop{rest}")
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            print(f"spool drop: it asks before dropping {counted(total, 'event')}, but its "
                  f"input is not a terminal. Fix: run it again with --yes to drop them without "
                  f"asking", file=sys.stderr)
            return 2
        print(f"drop {counted(total, 'event')} waiting for {what} in the spool {status.path}? "
              f"They will never be sent. [y/N] ", end="", file=sys.stderr, flush=True)
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            print("spool drop: nothing dropped", file=sys.stderr)
            return 1
    done = drop_spooled(directory, namespaces=namespaces, bucket_key=args.bucket or "")
    print(f"dropped {counted(done.events, 'event')} waiting for {what} from the spool "
          f"{status.path}")
    if done.held:
        pids = ", ".join(str(pid) for pid in done.holders)
        print(f"{counted(done.held, 'event', 'were')} left: process {pids} is sending them "
              f"this moment (the service may have them already)")
    return 0


def add_spool_commands(commands: Any) -> None:
    """``spool status | send | drop``, each with --spool-dir and --api-base."""
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--spool-dir", metavar="DIR",
                       help="the spool's folder (default: the spool_dir setting, from "
                            "IS_SPOOL_DIR or isstreamer.ini, else the user data folder: the "
                            "one a Streamer uses)")
    where.add_argument("--api-base", metavar="URL",
                       help="the events API the events go to (default: the api_base setting, "
                            "from IS_API_BASE or isstreamer.ini, else Initial State's)")
    spool = commands.add_parser(
        "spool", help="show, send or drop the events earlier runs left in the spool",
        description="The events earlier runs left in the spool (a script that ended before "
                    "the service took them all, a killed kernel): show them, send them, or "
                    "drop them. Each command has its own --help.")
    actions = spool.add_subparsers(dest="action", required=True, metavar="{status,send,drop}")
    p = actions.add_parser(
        "status", parents=[where], help="what waits, by account and bucket",
        description="What waits in the spool, for each account and bucket: events, the "
                    "oldest and newest event time, bytes, and whether a live process is "
                    "sending them; also the spool's path. An account is shown by a short "
                    "fingerprint of its access key and API base, never by the key; * marks "
                    "the configured one's. Needs no access key. Exits 0.")
    p.set_defaults(run=spool_status_command, name="spool status")
    p = actions.add_parser(
        "send", parents=[where], help="deliver what waits for the configured access key",
        description="Deliver what waits in the spool for the configured access key and API "
                    "base, at the service's pace and rate budget, as a Streamer would. The "
                    "access key comes from IS_ACCESS_KEY or isstreamer.ini, never from the "
                    "command line. Safe beside live streamers: nothing is sent twice because "
                    "of it.",
        epilog=SPOOL_SEND_EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--timeout", type=seconds, metavar="SECONDS",
                   help="the longest it may take in all (default: no bound; it stops when "
                        "nothing is acknowledged for flush_timeout seconds)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=spool_send, name="spool send")
    p = actions.add_parser(
        "drop", parents=[where], help="discard what waits, after a confirmation",
        description="Discard events that wait in the spool: the configured access key's "
                    "(from IS_ACCESS_KEY or isstreamer.ini, with the API base), one account's "
                    "(--account, as `spool status` shows it) or every account's (--all); all "
                    "their buckets, or one (--bucket). It asks first (y/N); --yes does not "
                    "ask. A batch a live process is sending that moment is left.",
        epilog=SPOOL_DROP_EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bucket", metavar="KEY", help="only this bucket's events (its key)")
    whose = p.add_mutually_exclusive_group()
    whose.add_argument("--account", metavar="FINGERPRINT",
                       help="the account `spool status` shows by this fingerprint (a key "
                            "since replaced, say)")
    whose.add_argument("--all", action="store_true", help="every account's events")
    p.add_argument("--yes", action="store_true", help="drop without asking")
    p.set_defaults(run=spool_drop, name="spool drop")


def run_noting_warnings(command: Callable[[], int]) -> int:
    """Run `command`, each IsStreamerWarning it raises said as one plain line on stderr
    (``note: ...``), not as Python shows a warning (the file and line in the package, and the
    source line there); other warnings as usual."""
    show = warnings.showwarning

    def note(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, IsStreamerWarning):
            print(f"note: {' '.join(str(message).split())}", file=sys.stderr)
        else:
            show(message, category, *args, **kwargs)

    with warnings.catch_warnings():  # (puts showwarning back after)
        warnings.showwarning = note
        return command()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:  # the receiver parses its own options
        from .receiver import serve_main

        try:
            return serve_main(argv[1:])
        except BrokenPipeError:  # (`serve | head -1`, or started with stdout closed)
            stdout_to_devnull()
            return 141
    parser = argparse.ArgumentParser(
        prog="python -m isstreamer_jupyter",
        description="isstreamer_jupyter on the command line: a demo that needs no account, a "
                    "loopback Initial State-compatible receiver, the upload of offline "
                    "recordings, and what earlier runs left in the spool. Each command has "
                    "its own --help.")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("demo", help="stream a simulated run with no account (recorded "
                                         "locally)",
                            description="Stream a simulated greenhouse sensor run (temperature_c, "
                                        "humidity and fan_on, one reading a second ending now, "
                                        "then a status) through a Streamer, with no account and "
                                        "no network: it records the run to --output, by default "
                                        "build/demo_recording.csv, in the current folder (made "
                                        "if missing; a recording there is appended to), and says "
                                        "how to upload it. With --online it sends to the "
                                        "configured API instead.")
    demo_parser = p
    p.add_argument("--points", type=int, default=120, help="readings to stream, at least 1 "
                                                           "(default 120)")
    p.add_argument("--output", default="build/demo_recording.csv",
                   help="the offline recording (default build/demo_recording.csv); .csv is "
                        "added to a name that does not end in .csv")
    p.add_argument("--online", action="store_true",
                   help="send to the configured API instead (needs an access key)")
    p.set_defaults(run=demo)
    p = commands.add_parser("upload", help="upload an offline recording (CSV)",
                            description="Upload an offline recording (CSV) to Initial State.\n"
                                        "The access key comes from IS_ACCESS_KEY or "
                                        "isstreamer.ini, never from the command line;\n"
                                        "the API base from IS_API_BASE (default: Initial "
                                        "State's).",
                            epilog=UPLOAD_EXIT_CODES,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="the recording: ours, or ISStreamer's epoch,key,value CSV")
    p.add_argument("--bucket-name", help="the bucket (default: the one the file names)")
    p.add_argument("--bucket-key", help="the bucket key (default: derived from the name)")
    p.add_argument("--batch-size", type=int, metavar="N",
                   help="events per request, at most (default: the batch_size setting, from "
                        "IS_BATCH_SIZE or isstreamer.ini, else 10)")
    p.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                   help="how long a batch may wait for the service (retrying what is "
                        "transient) before the upload stops (default: %(default)g)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=upload)
    commands.add_parser("serve", help="run a loopback Initial State-compatible receiver "
                                      "(serve --help for its options)")
    add_spool_commands(commands)
    args = parser.parse_args(argv)
    if args.command == "demo" and args.points < 1:  # (as serve's ranges are said)
        demo_parser.error(f"argument --points: must be at least 1, got {args.points}")
    try:
        return run_noting_warnings(lambda: int(args.run(args)))
    except IsStreamerError as exc:  # (it could not start: a setting, the file, ...)
        print(f"{getattr(args, 'name', args.command)}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        again = {"upload": f": {AGAIN}",
                 "spool send": ": what is left stays in the spool; run the same command again "
                               "to send it"}.get(getattr(args, "name", args.command), "")
        print(f"{getattr(args, 'name', args.command)}: interrupted{again}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # (stdout's reader went away: `... | head`) as a shell's SIGPIPE
        stdout_to_devnull()
        return 141


if __name__ == "__main__":
    sys.exit(main())
