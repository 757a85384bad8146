"""Run every ``benchmarks/bench_*.py`` and write ``benchmarks/RESULTS.md``.

    .venv/bin/python benchmarks/run_all.py          (or: make bench)

Each script runs in its own process, one after the other (the machine may have two cores),
from the repository root; its standard output (a markdown section with its table) goes into
RESULTS.md under the exact command that produced it; its standard error (progress) passes
through to the terminal. A script that fails or overruns is recorded as such and the others
still run. Exits 0 unless a script could not be run at all: missed targets are FAILs in the
tables, for a person to weigh.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "RESULTS.md"
TIMEOUT = 900  # seconds per script; each is meant to take under ~3 minutes

sys.path.insert(0, str(HERE))

import common as c  # noqa: E402


def command_for(script: Path) -> list[str]:
    return [sys.executable, str(script.relative_to(ROOT))]


def shown(cmd: list[str]) -> str:
    """The command as a person would type it from the repository root."""
    exe = Path(cmd[0])
    try:
        first = str(exe.relative_to(ROOT))
    except ValueError:
        first = str(exe)
    return shlex.join([first, *cmd[1:]])


def run(script: Path) -> tuple[str, str, int | None, float]:
    cmd = command_for(script)
    print(f"== {shown(cmd)}", file=sys.stderr, flush=True)
    began = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              timeout=TIMEOUT)
        out, code = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as exc:
        raw = exc.stdout or b""
        out = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        code = None
    return shown(cmd), out, code, time.monotonic() - began


def main() -> int:
    scripts = sorted(p for p in HERE.glob("bench_*.py") if p.is_file())
    if not scripts:
        print("no benchmarks/bench_*.py found", file=sys.stderr)
        return 1
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    sections = []
    broken = 0
    for script in scripts:
        cmd, out, code, seconds = run(script)
        status = ("" if code == 0 else
                  f"\n\n**{script.name} did not finish: "
                  f"{f'timed out after {TIMEOUT} s' if code is None else f'exit code {code}'}**"
                  f" (its output so far is above)")
        if code != 0:
            broken += 1
        sections.append(f"Command (from the repository root, {seconds:.0f} s):\n\n"
                        f"```\n{cmd}\n```\n\n{out.strip() or '(no output)'}{status}\n")
    head = (f"# Benchmark results\n\n"
            f"Written by `{shown([sys.executable, 'benchmarks/run_all.py'])}` "
            f"(`make bench`), started {started}.  \n"
            f"Machine: {c.machine_line()}  \n"
            f"Code: {c.code_version()}\n\n"
            f"Each section below is one script's output, under the exact command that "
            f"produced it. Targets come from issues 2, 3 and 16; **FAIL** marks a missed one. "
            f"Timings on a shared two-core machine move with its load (each section gives the "
            f"load average at its start).\n")
    RESULTS.write_text(head + "\n" + "\n---\n\n".join(sections), encoding="utf-8")
    rel = RESULTS.relative_to(ROOT)
    print(f"wrote {rel} ({len(scripts)} scripts, {broken} did not finish)", file=sys.stderr)
    return 1 if broken == len(scripts) else 0


if __name__ == "__main__":
    os.chdir(ROOT)
    raise SystemExit(main())
