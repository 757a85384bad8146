"""The panel in a real browser: JupyterLab on 127.0.0.1, driven by Playwright with Debian's
Chromium (``/usr/bin/chromium``; Playwright's own browser download is never used).

One test, in this order: start a loopback receiver here; start JupyterLab with a random token,
every Jupyter folder temporary, the notebook's windowing off, and the receiver's address and a
random access key in its environment (the kernel inherits them; the notebook holds no key);
open a notebook that loads the extension, shows the panel and logs; wait for the kernel to be
idle; Run All; see the panel render and its sent counter rise while a cell is still busy; type
a new bucket name and click Switch; run a cell that logs more; check that the receiver got
those events in the new bucket. A screenshot of the panel is saved to ``build/panel.png``.
Then the kernel says the frontend counted one view of the panel and it refreshes; the panel
cell's output is cleared in the browser, and the kernel says no view is left and the panel no
longer refreshes.

Every wait is bounded; the browser and the server (with its kernel) are stopped in ``finally``.
Slow on purpose (about half a minute on two cores); CI runs it (``-m "not browser"`` skips it
locally).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

from isstreamer_jupyter._config import derive_bucket_key
from isstreamer_jupyter.receiver import Receiver

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]
ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "build" / "panel.png"
BEFORE, AFTER = "browser before", "browser after"
# The notebook the browser runs, written into the server's temporary root. It is built here,
# not kept as a file under tests/, where nbval would run it without the server's environment.
CELLS = [
    ("markdown",
     "# The panel, in a browser\n\nWritten by `tests/test_browser.py`. The events API address, "
     "the access key, the pace and the spool folder come from the Jupyter server's environment "
     "(`IS_API_BASE`, `IS_ACCESS_KEY`, `IS_MAX_RPS`, `IS_SPOOL_DIR`): no key in here."),
    ("code",
     "%load_ext isstreamer_jupyter\n"
     "from isstreamer_jupyter import Streamer\n"
     "\n"
     f"s = Streamer(bucket_name={BEFORE!r})\n"
     "p = s.panel()\n"
     "p"),
    ("code",
     "import math\n"
     "import time\n"
     "\n"
     "for i in range(80):  # a busy cell (8 s): the panel keeps moving\n"
     "    s.log('temperature', round(20 + 3 * math.sin(i / 4), 2))\n"
     "    s.log('step', i)\n"
     "    time.sleep(0.1)\n"
     "s.flush(20)"),
    ("code",
     "run = globals().get('run', 0) + 1\n"
     "for i in range(10):\n"
     "    s.log('after switch', run * 100 + i)\n"
     "print('delivered:', s.flush(20), 'bucket:', s.BucketName)"),
    ("code",
     "print(f'panel refreshing: {p.running}, views: {p.widget._view_count}')"),
]
PANEL_CELL, STATUS_CELL = 1, 4


def notebook() -> str:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell(source) if kind == "markdown"
                else nbformat.v4.new_code_cell(source) for kind, source in CELLS]
    return nbformat.writes(nb)
SERVER_START = 180.0  # seconds: a cold JupyterLab on a busy 2-core machine
UI_WAIT = 120_000  # milliseconds, Playwright's unit


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(interval)


@contextlib.contextmanager
def jupyter_lab(tmp: Path, env_extra: dict[str, str]) -> Iterator[tuple[str, str, Path]]:
    """A JupyterLab server on 127.0.0.1 with temporary folders; yields (base url, token, its
    root folder). Stops the server and its kernels (its whole process group)."""
    dirs = {name: tmp / name for name in ("root", "config", "data", "runtime", "ipython",
                                          "home", "settings", "user-settings", "workspaces",
                                          "xdg-cache", "xdg-config", "xdg-data")}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    (dirs["settings"] / "overrides.json").write_text(json.dumps({
        # every cell in the DOM: the test reads and clicks cells that are off screen
        "@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension:notification": {"fetchNews": "false",
                                                        "checkForUpdates": False},
    }))
    (dirs["config"] / "jupyter_server_config.json").write_text(json.dumps({
        "ServerApp": {"jpserver_extensions": {"jupyter_lsp": False}},
    }))
    token = secrets.token_hex(16)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "IS_"))}
    env.update({
        "JUPYTER_CONFIG_DIR": str(dirs["config"]), "JUPYTER_DATA_DIR": str(dirs["data"]),
        "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]), "IPYTHONDIR": str(dirs["ipython"]),
        "HOME": str(dirs["home"]), "XDG_CACHE_HOME": str(dirs["xdg-cache"]),
        "XDG_CONFIG_HOME": str(dirs["xdg-config"]), "XDG_DATA_HOME": str(dirs["xdg-data"]),
        "JUPYTER_PLATFORM_DIRS": "1", "PYTHONUNBUFFERED": "1",
    })
    env.update(env_extra)
    log_path = tmp / "jupyter.log"
    command = [
        sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
        f"--ServerApp.token={token}", "--ServerApp.ip=127.0.0.1", f"--port={port}",
        "--ServerApp.port_retries=0", f"--ServerApp.root_dir={dirs['root']}",
        f"--LabApp.app_settings_dir={dirs['settings']}",
        f"--LabApp.user_settings_dir={dirs['user-settings']}",
        f"--LabApp.workspaces_dir={dirs['workspaces']}",
        "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=",
    ]
    with log_path.open("wb") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True,
                                  cwd=dirs["root"])
    base = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            if server.poll() is not None:
                raise AssertionError(f"jupyter lab exited ({server.returncode}):\n"
                                     f"{log_path.read_text(errors='replace')[-4000:]}")
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5):
                    return True
            except OSError:
                return False

        wait_until(up, SERVER_START, "jupyter lab answering", interval=0.5)
        yield base, token, dirs["root"]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait(15)
        with contextlib.suppress(ProcessLookupError):  # kernels left behind, if any
            os.killpg(server.pid, signal.SIGKILL)


def kernel_idle(page: Any) -> bool:
    """The notebook's kernel is connected and idle, and no cell waits or runs.

    The prompts count, not the kernel's status alone: JupyterLab takes every status message
    for the kernel's, and since it sends widget comm messages over a kernel subshell
    (JupyterLab 4.6, ipykernel 7), the subshell's "idle" can show while a cell still runs.
    """
    return bool(page.evaluate("""() => {
        const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
        const kernel = w && w.sessionContext && w.sessionContext.session
                       && w.sessionContext.session.kernel;
        const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
        return !!kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle'
               && !prompts.some((p) => p.innerText.includes('*'));
    }"""))


def cell_running(page: Any) -> bool:
    """A cell runs or waits to: its prompt shows ``[*]``."""
    return bool(page.evaluate("""() => [...document.querySelectorAll(
        '.jp-CodeCell .jp-InputPrompt')].some((p) => p.innerText.includes('*'))"""))


def command(page: Any, name: str, args: dict[str, Any] | None = None) -> None:
    """Start a JupyterLab command without waiting for its promise."""
    page.evaluate("""([name, args]) => {
        window.jupyterapp.commands.execute(name, args || {}).catch(
            (e) => console.error('command failed', name, e));
        return true;
    }""", [name, args])


def run_again(page: Any, index: int) -> str:
    """Run cell `index` again and wait until it ran; returns its output's text."""
    cell = page.locator(".jp-Cell").nth(index)

    def prompt() -> str:
        return cell.locator(".jp-InputPrompt").inner_text()

    before = prompt()
    page.evaluate(f"() => {{ window.jupyterapp.shell.currentWidget.content.activeCellIndex"
                  f" = {index}; }}")
    command(page, "notebook:run-cell")
    wait_until(lambda: prompt() != before and "*" not in prompt(), 60,
               f"cell {index} run again")
    wait_until(lambda: kernel_idle(page), 60, "the kernel idle")
    return cell.locator(".jp-OutputArea").inner_text()


def text(page: Any, selector: str) -> str:
    found = page.query_selector(selector)
    return found.inner_text().strip() if found else ""


def test_panel_in_jupyterlab(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is needed: apt-get install chromium"
    access_key = "browser-" + secrets.token_hex(12)
    receiver = Receiver(access_keys={access_key}).start()
    env = {"IS_API_BASE": receiver.api_base, "IS_ACCESS_KEY": access_key, "IS_MAX_RPS": "0",
           "IS_SPOOL_DIR": str(tmp_path / "spool")}
    console: list[str] = []
    try:
        with jupyter_lab(tmp_path / "lab", env) as (base, token, root):
            (root / "panel.ipynb").write_text(notebook())
            assert access_key not in (root / "panel.ipynb").read_text()
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                             headless=True, timeout=UI_WAIT)
                try:
                    page = browser.new_page(viewport={"width": 1280, "height": 1100})
                    page.set_default_timeout(UI_WAIT)
                    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
                    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
                    try:
                        drive(page, base, token, receiver, access_key)
                    except BaseException:
                        print(f"--- the page ---\n{describe(page)}")
                        raise
                finally:
                    browser.close()
    except BaseException:
        print("--- browser console (last 60) ---\n" + "\n".join(console[-60:]))
        with contextlib.suppress(Exception):
            print("--- jupyter log (tail) ---\n"
                  + (tmp_path / "lab" / "jupyter.log").read_text(errors="replace")[-6000:])
        raise
    finally:
        receiver.stop()


def describe(page: Any) -> str:
    """What the notebook shows, for a failure's report."""
    try:
        return page.evaluate(r"""() => {
            const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
            const k = w && w.sessionContext && w.sessionContext.session
                      && w.sessionContext.session.kernel;
            const cells = [...document.querySelectorAll('.jp-Cell')].map((c, i) =>
                `cell ${i} [${(c.querySelector('.jp-InputPrompt') || {}).innerText || ''}]: `
                + ((c.querySelector('.jp-OutputArea') || {}).innerText || '').slice(0, 1500));
            return `kernel: ${k ? k.status + '/' + k.connectionStatus : 'none'}\n`
                   + cells.join('\n');
        }""")
    except Exception as exc:
        return f"(page unreadable: {exc})"


def drive(page: Any, base: str, token: str, receiver: Receiver, access_key: str) -> None:
    page.goto(f"{base}/lab/tree/panel.ipynb?token={token}", wait_until="domcontentloaded")
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", state="attached")
    wait_until(lambda: kernel_idle(page), 120, "the kernel idle before Run All")

    command(page, "notebook:run-all-cells")
    panel = ".isstreamer-panel"
    page.wait_for_selector(f"{panel} [data-field=sent]", state="attached")

    # the sent counter rises while the logging cell is still running
    seen: list[int] = []

    def sent_rose() -> bool:
        value = text(page, f"{panel} [data-field=sent]")
        if value.isdigit() and (not seen or int(value) != seen[-1]):
            seen.append(int(value))
        return len(seen) >= 3 and cell_running(page)

    try:
        wait_until(sent_rose, 90, "the sent counter rising during the busy cell", interval=0.1)
    finally:
        print(f"sent counts seen: {seen}")
    wait_until(lambda: kernel_idle(page), 120, "Run All finished")
    wait_until(lambda: text(page, f"{panel} [data-field=sent]") == "170", 30,
               "all 170 events of Run All sent")
    assert seen == sorted(seen), seen
    assert text(page, f"{panel} [data-field=state]") == "online"
    assert text(page, f"{panel} [data-field=bucket_name]") == BEFORE

    # the flush button: a spinner, then the result (the flush runs in a thread of the kernel)
    page.click(f"{panel} button:has-text('Flush')")
    wait_until(lambda: re.fullmatch(r"flush: \d+ events? delivered in [0-9.]+ s",
                                    text(page, f"{panel} [data-field=note]")), 30,
               "the flush button's result")
    assert page.locator(f"{panel} button:has-text('Flush')").is_enabled()
    old_key = derive_bucket_key(BEFORE)
    assert len(receiver.wait_for(170, old_key, timeout=30)) == 170

    # switch buckets from the panel, then run the logging cell again
    page.fill(f"{panel} input[placeholder='bucket name']", AFTER)
    page.click(f"{panel} button:has-text('Switch')")
    wait_until(lambda: text(page, f"{panel} [data-field=bucket_name]") == AFTER, 30,
               "the header showing the new bucket")
    assert "now sending to 'browser after'" in text(page, f"{panel} [data-field=note]")
    page.evaluate("() => { window.jupyterapp.shell.currentWidget.content.activeCellIndex = 3; }")
    command(page, "notebook:run-cell")
    new_key = derive_bucket_key(AFTER)
    events = receiver.wait_for(10, new_key, timeout=60)
    assert sorted(e["value"] for e in events) == list(range(200, 210))
    assert all(e["key"] == "after switch" for e in events)
    assert receiver.buckets[new_key] == AFTER
    assert len(receiver.events(old_key)) == 170  # nothing more went to the old bucket
    wait_until(lambda: kernel_idle(page), 60, "the cell finished")
    wait_until(lambda: text(page, f"{panel} [data-field=sent]") == "180", 30,
               "the panel counting the new events")
    output = page.locator(".jp-Cell").nth(3).locator(".jp-OutputArea-output").inner_text()
    assert "delivered: True" in output and f"bucket: {AFTER}" in output

    # the signals table and its sparklines were drawn in the page
    assert page.locator(f"{panel} table[data-field=signals] polyline").count() >= 2
    assert access_key not in page.content()

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.locator(panel).screenshot(path=str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 10_000
    assert re.search(r"\d", text(page, f"{panel} [data-field=events_per_second]"))

    # the browser counted its view of the panel: the kernel-side panel refreshes
    wait_until(lambda: "panel refreshing: True, views: 1" in run_again(page, STATUS_CELL), 60,
               "the kernel seeing the panel's one view")
    # clear the panel cell's output: the view is gone, and the kernel-side panel stops
    page.evaluate("(i) => { window.jupyterapp.shell.currentWidget.content.activeCellIndex"
                  " = i; }", PANEL_CELL)
    command(page, "notebook:clear-cell-output")
    wait_until(lambda: page.locator(panel).count() == 0, 30, "the panel gone from the page")
    wait_until(lambda: "panel refreshing: False, views: 0" in run_again(page, STATUS_CELL), 60,
               "the kernel-side panel stopping once its view was cleared")


def test_the_notebook_holds_no_key() -> None:
    code = "\n".join(source for kind, source in CELLS if kind == "code")
    assert not re.search(r"access_?key|client_key|AccessKey", code, re.I)
    assert nbformat.validate(nbformat.reads(notebook(), as_version=4)) is None
