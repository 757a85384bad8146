"""Issue 4's benchmark: what ``%isstream temp 32`` costs beyond IPython's own dispatch of an
empty line magic (target: at most 50 µs per call).

    .venv/bin/python benchmarks/bench_magic.py [--calls 20000] [--rounds 7]

``%isstream temp 32`` in a cell runs ``get_ipython().run_line_magic("isstream", "temp 32")``;
the benchmark calls ``shell.run_line_magic`` in a loop timed with ``time.perf_counter``, and
the same loop over a no-op line magic (``%noop`` with an empty line) gives the baseline:
IPython's lookup, ``$var``/``{expr}`` expansion and call. (``%isstream`` opts out of
IPython's expansion and does the same expansion itself, only on lines with ``$``, ``{`` or
``}``: on ``temp 32`` that saves it the cost the baseline pays.) Rounds alternate baseline and
``%isstream``; each figure is the median over rounds of the mean per call.

Two session streamers, made by the magics from the environment as in a notebook:
  offline    no access key sent anywhere: events are recorded to a CSV file
  receiver   the project's loopback receiver, in a process of its own (it does not share this
             process's GIL, as the real service would not); default settings otherwise
             (batch 10, 3 requests/s, spool on), so the sender thread competes for the GIL as
             it would in a notebook
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from isstreamer_jupyter import IsStreamerWarning  # noqa: E402 - after the path is set

TARGET_US = 50.0
LINE = "temp 32"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_receiver() -> tuple[subprocess.Popen[bytes], str]:
    """``python -m isstreamer_jupyter.receiver`` on a free loopback port; its API base."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "isstreamer_jupyter.receiver", "--port", str(port)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while True:
        try:
            urllib.request.urlopen(base + "/", timeout=1).close()
            break
        except OSError as exc:
            if getattr(exc, "code", None):  # an HTTP answer (even 404): it is serving
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("the receiver did not start") from exc
            time.sleep(0.05)
    return proc, base + "/api"


def make_shell():
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    InteractiveShell.clear_instance()
    shell = InteractiveShell.instance(config=config)
    shell.register_magic_function(lambda line: None, "line", "noop")
    shell.run_line_magic("load_ext", "isstreamer_jupyter")
    return shell


def per_call_us(run, name: str, line: str, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        run(name, line)
    return (time.perf_counter() - start) / calls * 1e6


def measure(shell, calls: int, rounds: int) -> tuple[float, float, list[float]]:
    run = shell.run_line_magic
    for _ in range(2):  # warm up: the streamer is made on the first call
        per_call_us(run, "noop", "", calls // 10)
        per_call_us(run, "isstream", LINE, calls // 10)
    base, magic = [], []
    for _ in range(rounds):
        base.append(per_call_us(run, "noop", "", calls))
        magic.append(per_call_us(run, "isstream", LINE, calls))
    extra = [m - b for m, b in zip(magic, base, strict=True)]
    return statistics.median(base), statistics.median(magic), extra


def scenario(mode: str, calls: int, rounds: int, api_base: str | None) -> dict[str, object]:
    scratch = Path(tempfile.mkdtemp(prefix=f"bench-magic-{mode}-"))
    os.chdir(scratch)
    for name in [n for n in os.environ if n.startswith("IS_")]:
        del os.environ[name]
    os.environ["HOME"] = str(scratch)
    os.environ["IS_SPOOL_DIR"] = str(scratch / "spool")
    if api_base is None:
        os.environ["IS_OFFLINE"] = "true"
    else:
        os.environ["IS_ACCESS_KEY"] = f"bench-{os.getpid()}"
        os.environ["IS_API_BASE"] = api_base
    shell = make_shell()
    base, magic, extra = measure(shell, calls, rounds)
    shell.run_line_magic("unload_ext", "isstreamer_jupyter")
    os.chdir(ROOT)
    shutil.rmtree(scratch, ignore_errors=True)
    return {"mode": mode, "base": base, "magic": magic, "extra": statistics.median(extra),
            "spread": (min(extra), max(extra))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000, help="calls per timed loop")
    parser.add_argument("--rounds", type=int, default=7, help="timed loops per figure")
    args = parser.parse_args()
    warnings.simplefilter("ignore", IsStreamerWarning)  # notices, not figures
    command = shlex.join([".venv/bin/python", "benchmarks/bench_magic.py", *sys.argv[1:]])

    receiver, api_base = start_receiver()
    try:  # what the streamers and magics print (notices, "closed ...") is not a figure
        with contextlib.redirect_stdout(sys.stderr):
            results = [scenario("offline", args.calls, args.rounds, None),
                       scenario("receiver", args.calls, args.rounds, api_base)]
    finally:
        receiver.kill()
        receiver.wait()

    import IPython

    print("### %isstream: cost beyond IPython's line-magic dispatch\n")
    print(f"`{command}`  ")
    print(f"Python {platform.python_version()}, IPython {IPython.__version__}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs; {args.rounds} rounds of "
          f"{args.calls:,} calls, medians\n")
    print("| streamer | `%noop` (µs/call) | `%isstream temp 32` (µs/call) | cost beyond dispatch "
          "(µs) | min–max over rounds | target | pass/fail |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    failed = 0
    for r in results:
        ok = r["extra"] <= TARGET_US
        failed += not ok
        low, high = r["spread"]
        print(f"| {r['mode']} | {r['base']:.2f} | {r['magic']:.2f} | {r['extra']:.2f} | "
              f"{low:.2f}–{high:.2f} | ≤ {TARGET_US:g} µs | {'pass' if ok else '**FAIL**'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
