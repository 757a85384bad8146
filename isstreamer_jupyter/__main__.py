"""``python -m isstreamer_jupyter demo | serve | upload``: the package on the command line.

- ``demo``: the main job on the embedded default: no account, no network. Streams a short
  simulated sensor run through a Streamer, which records it locally, and says where it went.
- ``serve``: a loopback Initial State-compatible receiver (see ``receiver.py``).
- ``upload FILE``: send an offline recording to Initial State (the access key comes from
  ``IS_ACCESS_KEY`` or ``isstreamer.ini``, never from the command line).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    if not stats.offline_file and stats.pending:  # (close() said why, as a note)
        where = (f"they wait in the spool {stats.spool_path} for {streamer._spool_heir()} "
                 f"(the next demo --online is one), which sends them first"
                 if stats.spool_path else "they are lost, as there is no spool to keep them")
        if streamer._sender.blocked():  # (a refused key, a reached cap: its own fix)
            fix = stats.remedy
        else:
            source = streamer.settings.sources.get("api_base", "default")
            fix = (f"check that the service at {streamer.settings.api_base} ({source}) "
                   f"answers, then run it again")
        print(f"demo: {counted(stats.pending, 'event', 'were')} not delivered: {where}. Fix: "
              f"{fix}", file=sys.stderr)
        return 1
    return 0 if stats.refused == 0 and stats.dropped == 0 else 1


#: what ``upload`` exits with (its --help shows this; the README says the same)
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
                    "loopback Initial State-compatible receiver, and the upload of offline "
                    "recordings. Each command has its own --help.")
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
    args = parser.parse_args(argv)
    if args.command == "demo" and args.points < 1:  # (as serve's ranges are said)
        demo_parser.error(f"argument --points: must be at least 1, got {args.points}")
    try:
        return run_noting_warnings(lambda: int(args.run(args)))
    except IsStreamerError as exc:  # (it could not start: a setting, the file, ...)
        print(f"{args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        again = f": {AGAIN}" if args.command == "upload" else ""
        print(f"{args.command}: interrupted{again}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # (stdout's reader went away: `... | head`) as a shell's SIGPIPE
        stdout_to_devnull()
        return 141


if __name__ == "__main__":
    sys.exit(main())
