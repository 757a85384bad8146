"""The Makefile does what it and the README say: `make run` names a command that opens what it
wrote, and `make test` installs chromium as root or through sudo."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

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
    assert f"--LabApp.default_url=/lab/tree/{wrote}" in lab.split()  # (its URLs too: below)


def test_the_urls_make_lab_prints_lead_to_the_notebook(tmp_path):
    """Where no browser opens, `make lab NOTEBOOK=...` printed URLs to /lab, not to the
    notebook. Its command, run as it is (with no browser, on any free port): the URL it
    prints opens the notebook."""
    wrote = "build/quickstart.ipynb"
    command = dry_run("lab", f"NOTEBOOK={wrote}").splitlines()[-1].split()
    (tmp_path / "build").mkdir()
    shutil.copy(ROOT / "notebooks/quickstart.ipynb", tmp_path / wrote)
    command[0] = str(ROOT / command[0])
    lab = subprocess.Popen([*command, "--no-browser", "--ServerApp.port=0", "--allow-root"],
                           cwd=tmp_path, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = lab.stderr.readline()
            url = re.search(r"http://127\.0\.0\.1:\d+(/\S*)", line)
            if url or not line:
                break
    finally:
        lab.terminate()
        lab.wait(timeout=30)
    assert url, "no URL printed"
    assert url.group(1).startswith(f"/lab/tree/{wrote}?token=")


def test_make_lab_allows_root_exactly_when_jupyter_would_refuse(tmp_path):
    """`make lab` asked `id -u`, which some sandboxes answer with a shim (1000 while the
    effective uid is 0): Jupyter, which checks os.geteuid(), then refused to run as root.
    With an `id` that says the opposite of the truth, --allow-root follows os.geteuid()."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "id").write_text(f"#!/bin/sh\necho {1000 if os.geteuid() == 0 else 0}\n")
    (bin_dir / "id").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    lab = subprocess.run([MAKE, "-n", "--no-print-directory", "-C", str(ROOT), "lab"], env=env,
                         capture_output=True, text=True, check=True).stdout.splitlines()[-1]
    assert "jupyter lab" in lab
    assert ("--allow-root" in lab.split()) is (os.geteuid() == 0), lab


def fake_tools(tmp_path: Path, uid: int, sudo: bool) -> tuple[dict[str, str], Path]:
    """A PATH with no chromium, an `id -u` saying `uid`, an apt-get that logs what it was
    asked (and as whom), and sudo if `sudo`."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    tools = {"id": f"echo {uid}",
             "apt-get": f'echo "apt-get $* as ${{AS:-{uid}}} DEBIAN_FRONTEND=$DEBIAN_FRONTEND"'
                        f' >> {log}'}
    if sudo:
        tools["sudo"] = f'echo "sudo $1" >> {log}; AS=0 exec "$@"'
    for name, body in tools.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    (bin_dir / "env").symlink_to(shutil.which("env"))
    env = {k: v for k, v in os.environ.items() if k != "DEBIAN_FRONTEND"}
    return {**env, "PATH": str(bin_dir)}, log


@pytest.mark.parametrize(("uid", "sudo", "through_sudo"),
                         [(0, False, False), (0, True, False), (1000, True, True)])
def test_chromium_is_installed_as_root_or_through_sudo(tmp_path, uid, sudo, through_sudo):
    """The README says it needs root or sudo rights; it ran apt-get without sudo."""
    env, log = fake_tools(tmp_path, uid, sudo)
    done = subprocess.run([MAKE, "-C", str(ROOT), "chromium"], env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    apt = [c for c in calls if c.startswith("apt-get")]
    assert [c.split()[1] for c in apt] == ["update", "install"]
    assert all(c.endswith("as 0 DEBIAN_FRONTEND=" + ("noninteractive" if "install" in c else ""))
               for c in apt), calls
    assert ("sudo apt-get" in calls) is through_sudo
    assert ("with sudo" in done.stdout) is through_sudo


def test_chromium_without_root_or_sudo_says_what_to_do(tmp_path):
    env, log = fake_tools(tmp_path, 1000, sudo=False)
    done = subprocess.run([MAKE, "-C", str(ROOT), "chromium"], env=env, capture_output=True,
                          text=True)
    assert done.returncode != 0
    assert "apt-get update && apt-get install chromium fonts-dejavu-core" in done.stderr
    assert not log.exists()  # (it did not try apt-get as a user, to fail on its lock)


def test_make_test_builds_the_docs_with_warnings_as_errors():
    """CI runs `make test` alone, so the manual's build is a step of it; a warning fails it,
    and every page is read afresh, since an incremental build would not repeat a warning."""
    steps = dry_run("test").splitlines()
    docs = [step for step in steps if "sphinx-build" in step]
    assert len(docs) == 1, steps
    words = docs[0].split()
    assert {"-W", "-E", "--keep-going"} <= set(words)
    assert words[-2:] == ["docs", "build/docs"]
    assert steps.index(docs[0]) < [i for i, s in enumerate(steps) if "pytest" in s][-1]
