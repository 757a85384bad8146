"""The Makefile does what it and the README say: `make run` names a command that opens what it
wrote."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).parent.parent
MAKE = shutil.which("make")


def dry_run(*target: str) -> str:
    return subprocess.run([MAKE, "-n", "--no-print-directory", "-C", str(ROOT), *target],
                          capture_output=True, text=True,
                          check=True).stdout


def test_the_command_make_run_prints_opens_the_notebook_it_wrote():
    """`make lab` served notebooks/ alone, so build/quickstart.ipynb could not be reached."""
    run = dry_run("run")
    wrote = re.search(r"executed notebook: ([^\s\"]+)", run).group(1)
    command = re.search(r"open it with: (make .*?)\"?$", run, re.M).group(1).split()
    assert command[:2] == ["make", "lab"]
    lab = dry_run(*command[1:]).splitlines()[-1]
    assert "jupyter lab" in lab
    assert "--ServerApp.root_dir=." in lab.split()  # (build/ and notebooks/ are both reachable)
    assert lab.split()[-1] == wrote  # (and it opens it)
