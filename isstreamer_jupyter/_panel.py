"""The live ipywidgets panel of a :class:`~isstreamer_jupyter.Streamer`, and its text fallback.

    streamer.panel()     # a Panel: leave it as a cell's last expression, or display() it
    show(streamer)       # what displaying a Streamer and ``%isstream --panel`` do

A :class:`Panel` is built from ``Streamer.stats()`` snapshots alone; it never reaches into the
sender thread, and the sender thread never touches it. It never shows the access key (a
``Stats`` does not hold it; the core redacts its messages).

How it stays live, once displayed in a kernel:

* **On the kernel's event loop.** A ``call_later`` chain on the kernel's asyncio loop refreshes
  it at most 4 times a second. That loop runs between cells and while a cell ``await``\\ s, so
  the panel moves while the kernel is idle and during ``await asyncio.sleep(...)``.
* **While a cell is busy.** A synchronous cell (``for ...: log(); time.sleep()``) blocks that
  loop until it ends, and callbacks scheduled on it wait with it: on the loop alone the panel
  would freeze until the cell ends. So one small daemon thread (shared by all panels) watches
  each panel's loop heartbeat; when the loop has not ticked for :data:`BLOCKED_AFTER` seconds
  it refreshes the panel itself, at the same rate and under the panel's lock, until the loop
  ticks again. Widget updates are comm messages that ipykernel hands to its IOPub thread, so
  they reach the browser while the cell runs (``tests/test_panel.py`` checks this in a real
  kernel). Set :data:`LIVE_WHILE_BUSY` to False to refresh on the loop only.
* Input from the browser (a click, a bucket name, the debug level) is handled by the shell
  that last sent on that widget, the kernel's main one, so during a synchronous cell it waits
  for the cell to end (ipykernel 7 routes widget replies so; JupyterLab 4.6 sends them over a
  subshell, which may also show the kernel "idle" while the cell still runs). The flush
  button's wait runs in a worker thread, so a click never holds the kernel.
* Each refresh sets only the widget values that changed (every set is a comm message) and
  reuses the HTML of signals whose values did not move; the debug log is rebuilt only while
  its section is open. See ``benchmarks/bench_panel.py``.
* **Only while someone can see it.** The panel's widget is built with ipywidgets'
  ``_view_count`` set to 0, so the frontend counts the views it shows: one more when it
  displays a view, one less when it removes one (the output cleared, the cell run again).
  When the count falls to 0 the panel stops refreshing: its loop chain ends and the watchdog
  drops it, so it does no work at all. When a view is back (``display(panel)``, or the widget
  shown again) it starts again, on the same loop. The count is trusted only once it falls:
  until the frontend has reported a view, and with no frontend at all (nbconvert, nbval,
  tests), a displayed panel refreshes as before. A view the frontend never removes (a
  browser tab closed or reloaded) keeps the count up, and the panel refreshing.
* It stops for good when closed (:meth:`Panel.close`, closing its widget, ``Widget.close_all()``
  or :func:`close_panels`) and after the streamer is closed. :meth:`Panel.refresh` refreshes it
  by hand, displayed or not (tests do).

Outside a widget frontend (a plain terminal, ``python script.py``, no ipywidgets) :func:`show`
prints the compact text status of :func:`~isstreamer_jupyter._stats.status_text` instead; a
displayed Panel's ``text/plain`` is that same status, so ``nbconvert --to markdown`` or a
console frontend show it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import sys
import threading
import time
import weakref
from collections import deque
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from ._errors import IsStreamerError
from ._report import RunEnd, render
from ._stats import SignalStat, State, Stats, state_words, status_text

try:
    import ipywidgets as widgets
except ImportError:  # show() prints the text status; Panel() says what to install
    widgets = None

if TYPE_CHECKING:
    from ._streamer import Streamer

__all__ = ["BLOCKED_AFTER", "LIVE_WHILE_BUSY", "REFRESH_INTERVAL", "Panel", "close_panels",
           "show", "sparkline"]

logger = logging.getLogger("isstreamer_jupyter")

#: seconds between refreshes at least: at most 4 a second
REFRESH_INTERVAL = 0.25
#: the kernel loop counts as blocked (a busy cell) after this long without a tick
BLOCKED_AFTER = 1.0
#: refresh from the watchdog thread while a synchronous cell blocks the kernel loop
LIVE_WHILE_BUSY = True
#: debug messages shown, newest first
LOG_LINES = 300
#: signals shown in the table (sorted by key); the rest are counted
MAX_ROWS = 200
#: sparklines redrawn per refresh at most; the others wait their turn (a fraction of a second)
SPARK_REDRAWS = 20

COUNTERS = (
    ("queued", "queued"), ("in_flight", "in flight"), ("spooled", "spooled"), ("sent", "sent"),
    ("retried", "retried"), ("refused", "refused"), ("dropped", "dropped"),
    ("recovered", "from earlier runs"), ("events_per_second", "events/s"),
    ("budget", "rate budget"),
)
DEBUG_LEVELS = (("0 · quiet", 0), ("1 · echo events", 1), ("2 · raise failures", 2),
                ("3 · HTTP detail", 3))
BADGE_COLORS = {  # background, text
    State.CONNECTING: ("#607d8b", "#fff"),
    State.ONLINE: ("#2e7d32", "#fff"),
    State.BACKING_OFF: ("#ef6c00", "#fff"),
    State.RATE_LIMITED: ("#f9a825", "#212121"),
    State.OFFLINE: ("#1565c0", "#fff"),
    State.STOPPED: ("#c62828", "#fff"),
}
_all_panels: weakref.WeakSet[Panel] = weakref.WeakSet()
_esc = html.escape


def _clock(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch))


# ------------------------------------------------------------------------------ sparklines
_SPARK_W, _SPARK_H, _SPARK_STEP = 117, 24, 3
_SPARK_POINTS = _SPARK_W // _SPARK_STEP + 1
#: "x,y" of every point position and height: drawing is look-ups, not number formatting
_PAIRS = [[f"{i * _SPARK_STEP},{y}" for y in range(_SPARK_H)] for i in range(_SPARK_POINTS)]
# sized and coloured by the table's style (see _TABLE_HEAD): 100 rows stay small
_SVG_HEAD = '<svg><polyline points="'
_SVG_TAIL = '"/></svg>'
_SVG_STYLE = (f"width:{_SPARK_W}px;height:{_SPARK_H}px;vertical-align:middle;"
              "fill:none;stroke:#1976d2;stroke-width:1.5")


def sparkline(values: tuple[float, ...] | list[float], style: bool = False) -> str:
    """An inline SVG polyline of the last values, drawn here (no plotting library, no JS).

    Integer coordinates on a 117 by 24 canvas, the newest 40 values; a flat line for
    constant values; "" for fewer than two values. Pass ``style=True`` for an SVG that
    carries its own size and colours (the table styles its own).
    """
    if len(values) < 2:
        return ""
    if len(values) > _SPARK_POINTS:
        values = values[-_SPARK_POINTS:]
    lo, hi = min(values), max(values)
    try:
        if hi > lo:
            scale = (_SPARK_H - 3) / (hi - lo)
            base = _SPARK_H - 1.5  # rows 1 (highest) to 22 (lowest), rounded
            points = " ".join([row[int(base - (v - lo) * scale)]
                               for row, v in zip(_PAIRS, values, strict=False)])
        else:
            mid = _SPARK_H // 2
            points = " ".join([row[mid] for row in _PAIRS[:len(values)]])
    except (ValueError, OverflowError, IndexError):  # a span too wide for floats
        return ""
    if style:
        return f'<svg style="{_SVG_STYLE}"><polyline points="{points}"/></svg>'
    return _SVG_HEAD + points + _SVG_TAIL


def _value_text(value: Any) -> str:
    if type(value) is float:
        return f"{value:.6g}"
    text = str(value)
    return text if len(text) <= 40 else text[:39] + "…"


_NO_SIGNALS = '<div style="opacity:.7" data-field="signals">no signals logged yet</div>'
_TABLE_HEAD = (
    "<style>.isstreamer-signals th,.isstreamer-signals td{padding:1px 12px 1px 0;"
    "text-align:left;vertical-align:middle}.isstreamer-signals .n{text-align:right}"
    f".isstreamer-signals svg{{{_SVG_STYLE}}}</style>"
    '<table class="isstreamer-signals" data-field="signals" '
    'style="border-collapse:collapse;font-size:90%"><thead><tr><th>signal</th><th>latest</th>'
    '<th class="n">count</th><th>last</th><th>recent</th></tr></thead><tbody>')
_ROW_TAIL = "</td></tr>"
_by_key = attrgetter("key")
_clocks: dict[int, str] = {}


def _header_html(state: State, words: str, name: str, key: str, offline_file: str) -> str:
    back, fore = BADGE_COLORS[state]
    where = f" · recording to <code>{_esc(offline_file)}</code>" if offline_file else ""
    return (
        '<div style="display:flex;align-items:center;gap:10px;flex-wrap:wrap">'
        '<span style="font-weight:600">Initial State</span>'
        f'<span>bucket <b data-field="bucket_name">{_esc(name)}</b> '
        f'<code data-field="bucket_key">{_esc(key)}</code>{where}</span>'
        f'<span data-field="state" data-state="{state.name.lower()}" '
        f'style="background:{back};color:{fore};border-radius:10px;padding:1px 9px;'
        f'font-size:90%">{_esc(words)}</span></div>')


def _error_html(reason: str, last_error: str, last_error_at: float | None, remedy: str,
                online: bool) -> str:
    parts = []
    if reason and reason not in ("closed", last_error):
        parts.append(f'<div data-field="reason">{_esc(reason)}</div>')
    if last_error:
        when = _clock(last_error_at) if last_error_at else ""
        past = " (since resolved)" if online else ""
        parts.append(f'<div data-field="last_error" style="color:#b71c1c">last error'
                     f' {when}{past}: {_esc(last_error)}</div>')
    if remedy:
        parts.append(f'<div data-field="remedy"><b>Fix:</b> {_esc(remedy)}</div>')
    return "".join(parts)


def _clock_cached(epoch: float) -> str:
    second = int(epoch)
    when = _clocks.get(second)
    if when is None:
        if len(_clocks) > 1000:
            _clocks.clear()
        when = _clocks[second] = _clock(second)
    return when


def _log_line(entry: tuple[float, int, str]) -> str:
    """One ring entry as ``Streamer.messages()`` shows it, HTML-escaped."""
    when, level, message = entry
    return _esc(f"{_clock_cached(when)} {logging.getLevelName(level)} {message}")


def _row_head(sig: SignalStat, key_html: str) -> str:
    value = sig.last_value
    kind = type(value)
    if kind is float:
        shown = f"{value:.6g}"
    elif kind is int or kind is bool:
        shown = str(value)
    else:
        shown = _esc(_value_text(value))
    when = _clock_cached(sig.last_time)
    return (f'<tr><td><code>{key_html}</code></td><td>{shown}</td>'
            f'<td class="n">{sig.count}</td><td>{when}</td><td>')


# ------------------------------------------------------------------------------ where we are
def _kernel_loop() -> asyncio.AbstractEventLoop | None:
    """The kernel's asyncio loop when we run in a Jupyter kernel (a widget frontend may be
    attached), else None: a plain terminal, a script, IPython without a kernel."""
    ipython_mod = sys.modules.get("IPython")
    if widgets is None or ipython_mod is None:
        return None
    shell = ipython_mod.get_ipython()
    kernel = getattr(shell, "kernel", None)
    if kernel is None:
        return None
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # called from another thread: the kernel's own loop
        io_loop = getattr(kernel, "io_loop", None)
        return getattr(io_loop, "asyncio_loop", None)


def show(streamer: Streamer) -> Panel | None:
    """Display the streamer's live panel where widgets can show; elsewhere print the compact
    text status. Returns the panel shown, or None."""
    loop = _kernel_loop()
    if loop is None:
        print(status_text(streamer.stats()))
        return None
    from IPython.display import display

    panel = Panel(streamer)
    display(panel)
    return panel


def close_panels(streamer: Streamer | None = None) -> int:
    """Close every panel (of `streamer`, if given): they stop refreshing. Returns how many."""
    panels = [p for p in list(_all_panels)
              if not p.closed and (streamer is None or p.streamer is streamer)]
    for panel in panels:
        panel.close()
    return len(panels)


# ------------------------------------------------------------------------------ the watchdog
class _Watchdog:
    """One daemon thread for all panels: refreshes those whose kernel loop is blocked."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.panels: set[Panel] = set()
        self.thread: threading.Thread | None = None

    def add(self, panel: Panel) -> None:
        with self.lock:
            self.panels.add(panel)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="isstreamer-panel",
                                               daemon=True)
                self.thread.start()

    def discard(self, panel: Panel) -> None:
        with self.lock:
            self.panels.discard(panel)

    def _run(self) -> None:
        while True:
            time.sleep(REFRESH_INTERVAL)
            with self.lock:
                panels = list(self.panels)
                if not panels:
                    self.thread = None
                    return
            if not LIVE_WHILE_BUSY:
                continue
            now = time.monotonic()
            for panel in panels:
                panel.refresh_if_blocked(now)


_watchdog = _Watchdog()


# ------------------------------------------------------------------------------ the panel
class Panel:
    """The live panel of one streamer: header and state badge, counters, last error and
    remedy, bucket switching, flush, debug level, debug log and a signals table.

    ``panel.widget`` is the ``ipywidgets.VBox`` (to embed it in your own layout); displaying
    the Panel displays that widget and starts the refreshes.
    """

    def __init__(self, streamer: Streamer) -> None:
        if widgets is None:
            raise ImportError("the panel needs ipywidgets: pip install 'isstreamer_jupyter"
                              "[jupyter]'; without it, displaying a Streamer shows a text status")
        self.streamer = streamer
        self.closed = False
        self._lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        # bumped whenever refreshing starts or stops: a tick of an older chain, still
        # scheduled on the loop, sees it was ended and does nothing
        self._chain = 0
        # while every view is gone: the loop it refreshed on, to start again there when a
        # view is back; None otherwise
        self._resume_loop: asyncio.AbstractEventLoop | None = None
        self._beat = float("inf")  # monotonic time of the last loop tick; inf: not started
        self._last_refresh = 0.0
        # the thread now writing widgets from a snapshot: the change observers ignore its
        # writes, not a user's choice arriving at the same time on another thread
        self._syncing: int | None = None
        # signal key -> [count, last_time, row head html, sparkline, count drawn, key html]
        self._rows: dict[str, list[Any]] = {}
        self._spark_turn = 0
        self._memo: dict[str, Any] = {}  # what each part was last built from
        self._log_lines: deque[str] = deque(maxlen=LOG_LINES)  # escaped, oldest first
        self._log_last: Any = None  # the last ring entry shown
        self._flush_thread: threading.Thread | None = None
        self._flush_result: tuple[RunEnd | Exception, float] | None = None
        self._note = ""
        self.stats: Stats | None = None
        self._build()
        _all_panels.add(self)
        self.refresh()

    # -------------------------------------------------------------- construction
    def _build(self) -> None:
        w = widgets
        self.header = w.HTML()
        self.counters = {name: w.HTML(layout=w.Layout(margin="0 14px 0 0"))
                         for name, _ in COUNTERS}
        self.error = w.HTML()
        self.bucket_text = w.Text(placeholder="bucket name", description="Bucket",
                                  layout=w.Layout(width="260px"))
        self.switch_button = w.Button(description="Switch", icon="exchange",
                                      tooltip="send the next events to this bucket",
                                      layout=w.Layout(width="auto"))
        self.bucket_menu = w.Dropdown(description="Used", layout=w.Layout(width="auto"))
        self.flush_button = w.Button(description="Flush", icon="paper-plane",
                                     tooltip="wait until everything logged is delivered",
                                     layout=w.Layout(width="auto"))
        self.debug_level = w.Dropdown(options=DEBUG_LEVELS, description="Debug",
                                      layout=w.Layout(width="220px"))
        self.note = w.HTML()
        self.signals = w.HTML()
        self.log_view = w.HTML()
        self.log_section = w.Accordion(children=[self.log_view], titles=("Debug log",),
                                       selected_index=None)
        self.widget = w.VBox([
            self.header,
            w.HBox(list(self.counters.values()), layout=w.Layout(flex_flow="row wrap")),
            self.error,
            w.HBox([self.bucket_text, self.switch_button, self.bucket_menu],
                   layout=w.Layout(flex_flow="row wrap")),
            w.HBox([self.flush_button, self.debug_level, self.note],
                   layout=w.Layout(flex_flow="row wrap", align_items="center")),
            self.signals,
            self.log_section,
        ], layout=w.Layout(border="1px solid #ddd", padding="6px 10px"),
            _view_count=0)  # an int, not None: the frontend counts the views it shows
        self.widget.add_class("isstreamer-panel")
        self.switch_button.on_click(self._on_switch)
        self.flush_button.on_click(self._on_flush)
        self.bucket_menu.observe(self._on_menu, "value")
        self.debug_level.observe(self._on_debug_level, "value")
        self.log_section.observe(self._on_log_section, "selected_index")
        self.widget.observe(self._on_widget_closed, "comm")
        self.widget.observe(self._on_view_count, "_view_count")

    def _widgets(self) -> list[Any]:
        """Every widget of the panel, the VBox last."""
        found: list[Any] = []

        def walk(widget: Any) -> None:
            for child in getattr(widget, "children", ()):
                walk(child)
            found.append(widget)

        walk(self.widget)
        return found

    # -------------------------------------------------------------- display and lifecycle
    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        stats = self.refresh() if not self.closed else self.streamer.stats()
        bundle = None if self.closed else self.widget._repr_mimebundle_(**kwargs)
        bundle = dict(bundle or {})
        bundle["text/plain"] = status_text(stats)
        if not self.closed:
            self.start()
        return bundle

    def __repr__(self) -> str:
        return f"<Panel of {self.streamer!r}{' (closed)' if self.closed else ''}>"

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> bool:
        """Refresh automatically from now on, on `loop` (default: the kernel's). Displaying
        the panel calls this; True if refreshes are scheduled."""
        with self._lock:
            if self.closed or self._loop is not None:
                return self._loop is not None
            loop = loop or _kernel_loop()
            if loop is None or loop.is_closed():
                return False
            self._loop = loop
            self._resume_loop = None
            self._beat = time.monotonic()
            self._chain += 1
            loop.call_soon_threadsafe(self._loop_tick, self._chain)
            _watchdog.add(self)
            return True

    @property
    def running(self) -> bool:
        """Whether the panel refreshes automatically (not while every view of it is gone)."""
        return self._loop is not None and not self.closed

    def close(self) -> None:
        """Stop refreshing and close the panel's widgets. Idempotent."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._resume_loop = None
            self._stop_refreshing()
            for widget in self._widgets():
                with contextlib.suppress(Exception):
                    widget.close()

    def _on_widget_closed(self, change: dict[str, Any]) -> None:
        if change["new"] is None:
            self.close()

    def _on_view_count(self, change: dict[str, Any]) -> None:
        """The frontend displayed or removed a view of the widget (on a kernel thread: the
        shell's, or a subshell's). Refreshing stops when the count falls to 0, and starts
        again on the same loop when it rises; a count that never rose (no view reported
        yet, or no frontend at all) changes nothing."""
        new, old = change["new"], change["old"]
        with self._lock:
            if new is not None and new <= 0 < (old or 0):
                if self._loop is not None:  # running (not stopped, closed or never started)
                    self._resume_loop = self._loop
                    self._stop_refreshing()
            elif (new is None or new > 0) and self._resume_loop is not None:
                self.start(self._resume_loop)

    def _on_loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _loop_tick(self, chain: int) -> None:
        loop = self._loop
        if chain != self._chain or self.closed or loop is None:
            return  # its chain was ended (stopped, closed, no view left): no work
        self._handle = None
        self._beat = time.monotonic()
        self._tick()
        if chain == self._chain and not self.closed and self._loop is loop:
            self._handle = loop.call_later(REFRESH_INTERVAL, self._loop_tick, chain)

    def refresh_if_blocked(self, now: float) -> None:
        """The watchdog's tick: refresh if the kernel loop has not run for ``BLOCKED_AFTER`` s."""
        if now - self._beat > BLOCKED_AFTER:
            self._tick()

    def _tick(self) -> None:
        """One automatic refresh, from the loop or the watchdog: at most 4 a second, never
        two at once, never raising into the loop."""
        if self.closed or time.monotonic() - self._last_refresh < REFRESH_INTERVAL * 0.9:
            return
        if not self._lock.acquire(blocking=False):
            return
        try:
            if self._loop is None:  # stopped meanwhile (its last view went, say): no work
                return
            stats = self.refresh()
            if stats.state is State.STOPPED and self.streamer.IsClosed:
                self._stop_refreshing()  # nothing moves any more
        except Exception:
            logger.exception("panel refresh failed; the panel stops refreshing")
            self._stop_refreshing()
        finally:
            self._lock.release()

    def _stop_refreshing(self) -> None:
        """End the refresh chain and leave the watchdog; the caller holds the lock."""
        _watchdog.discard(self)
        self._chain += 1
        handle, self._handle = self._handle, None
        if handle is not None and self._on_loop_thread():
            handle.cancel()  # off the loop's thread that is unsafe: the tick sees its chain ended
        self._loop = None
        self._beat = float("inf")

    # -------------------------------------------------------------- refresh
    def refresh(self) -> Stats:
        """Read one stats snapshot and show it; returns the snapshot."""
        with self._lock:
            stats = self.streamer.stats()
            self.stats = stats
            if self.closed:
                return stats
            now = time.time()
            self._syncing = threading.get_ident()
            try:
                self._apply_flush_result(stats)
                memo = self._memo
                head = (stats.state, state_words(stats, now), stats.bucket_name,
                        stats.bucket_key, stats.offline_file)
                if memo.get("header") != head:
                    memo["header"] = head
                    self._set(self.header, _header_html(*head))
                self._set_counters(stats)
                error = (stats.reason, stats.last_error, stats.last_error_at, stats.remedy,
                         stats.state is State.ONLINE)
                if memo.get("error") != error:
                    memo["error"] = error
                    self._set(self.error, _error_html(*error))
                menus = (stats.buckets, stats.bucket_key, stats.debug_level,
                         self.bucket_menu.value, self.debug_level.value)
                if memo.get("menus") != menus:
                    self._set_menus(stats)
                    memo["menus"] = (stats.buckets, stats.bucket_key, stats.debug_level,
                                     self.bucket_menu.value, self.debug_level.value)
                self._set(self.note, self._note_html())
                self._set(self.signals, self._signals_html(stats))
                if self.log_section.selected_index == 0:
                    self._refresh_log()
            finally:
                self._syncing = None
            self._last_refresh = time.monotonic()
            return stats

    @staticmethod
    def _set(widget: Any, value: Any, name: str = "value") -> None:
        if getattr(widget, name) != value:
            setattr(widget, name, value)

    def _set_counters(self, stats: Stats) -> None:
        budget = stats.budget
        values = (
            str(stats.queued), str(stats.in_flight), str(stats.spooled), str(stats.sent),
            str(stats.retries), str(stats.refused), str(stats.dropped), str(stats.recovered),
            f"{stats.events_per_second:.1f}",
            f"{budget.remaining}/{budget.limit}" if budget is not None else "–",
        )
        shown = self._memo.get("counters", ())
        if values == shown:
            return
        self._memo["counters"] = values
        for i, (name, label) in enumerate(COUNTERS):
            if shown and shown[i] == values[i] and name != "budget":
                continue
            tip = (f' title="resets {_clock(budget.reset)}"'
                   if name == "budget" and budget is not None else "")
            if name == "sent" and stats.offline_file:
                label = "recorded"  # (to the file: nothing went to the service)
            self._set(self.counters[name], (
                f'<div style="text-align:center;line-height:1.2"{tip}>'
                f'<div style="font-size:80%;opacity:.7">{label}</div>'
                f'<div data-field="{name}" style="font-size:130%;font-weight:600">'
                f'{values[i]}</div></div>'))

    def _set_menus(self, stats: Stats) -> None:
        options = [(f"{name} ({key})", (name, key)) for name, key in stats.buckets]
        current = (stats.bucket_name, stats.bucket_key)
        menu = self.bucket_menu
        if list(menu.options) != options:
            with menu.hold_sync():
                menu.options = options
                menu.value = current
        elif menu.value != current:
            menu.value = current
        self._set(self.debug_level, min(max(stats.debug_level, 0), 3))

    def _note_html(self) -> str:
        return f'<span data-field="note">{self._note}</span>' if self._note else ""

    def _signals_html(self, stats: Stats) -> str:
        """The table; a row is rebuilt only when its signal moved, and at most
        :data:`SPARK_REDRAWS` sparklines are redrawn per refresh (the stalest first), so a
        refresh costs about the same with 100 or 1000 moving signals."""
        signals = stats.signals
        if not signals:
            return _NO_SIGNALS
        cache = self._rows
        shown = sorted(signals, key=_by_key)[:MAX_ROWS]
        stale = []
        for sig in shown:
            entry = cache.get(sig.key)
            if entry is None:  # a new signal: drawn at once
                key_html = _esc(sig.key)
                cache[sig.key] = [sig.count, sig.last_time, _row_head(sig, key_html),
                                  sparkline(sig.recent), sig.count, key_html]
                continue
            if entry[0] != sig.count or entry[1] != sig.last_time:
                entry[0], entry[1] = sig.count, sig.last_time
                entry[2] = _row_head(sig, entry[5])
            if entry[4] != sig.count:
                stale.append(sig)
        if stale:
            if len(stale) > SPARK_REDRAWS:
                turn = self._spark_turn % len(stale)
                self._spark_turn += SPARK_REDRAWS
                stale = (stale[turn:] + stale[:turn])[:SPARK_REDRAWS]
            for sig in stale:
                entry = cache[sig.key]
                entry[3], entry[4] = sparkline(sig.recent), sig.count
        if len(cache) > 2 * MAX_ROWS:  # forget signals no longer shown
            keep = {sig.key for sig in shown}
            self._rows = {k: v for k, v in cache.items() if k in keep}
            cache = self._rows
        parts = [_TABLE_HEAD]
        for sig in shown:
            entry = cache[sig.key]
            parts += (entry[2], entry[3], _ROW_TAIL)
        parts.append("</tbody></table>")
        more = len(signals) - len(shown)
        if more > 0:
            parts.append(f'<div style="opacity:.7">and {more} more signals</div>')
        return "".join(parts)

    def _refresh_log(self) -> None:
        """The debug log, newest first, while its section is open.

        Lines are formatted once each, as ``Streamer.messages()`` formats them, from the
        streamer's message ring: ``messages()`` formats the whole ring on every call (about
        1.5 ms for 500 messages), too much for 4 refreshes a second.
        """
        ring = getattr(self.streamer, "ring", None)
        lines = self._log_lines
        if ring is None:  # another streamer-like object: messages() it is
            lines.clear()
            lines.extend(_esc(line) for line in self.streamer.messages(logging.DEBUG))
        else:
            entries = list(ring)  # a snapshot: the sender thread appends to the ring
            last = self._log_last
            if entries and entries[-1] is last:
                return
            new = entries
            if last is not None:
                for i in range(len(entries) - 1, -1, -1):
                    if entries[i] is last:
                        new = entries[i + 1:]
                        break
                else:  # we lost track (the ring moved on a lot, or was cleared)
                    lines.clear()
            lines.extend(_log_line(entry) for entry in new[-LOG_LINES:])
            self._log_last = entries[-1] if entries else None
        body = "\n".join(reversed(lines)) or "no messages yet"
        self._set(self.log_view, (
            '<pre data-field="log" style="max-height:16em;overflow:auto;margin:0;'
            f'font-size:85%;white-space:pre-wrap">{body}</pre>'))

    # -------------------------------------------------------------- actions
    def _on_switch(self, _button: Any = None) -> None:
        name = self.bucket_text.value.strip()
        if not name:
            self._say("type a bucket name first")
            return
        self._switch(name, "")

    def _on_menu(self, change: dict[str, Any]) -> None:
        if self._syncing == threading.get_ident() or change["new"] is None:
            return
        name, key = change["new"]
        if (name, key) != (self.streamer.BucketName, self.streamer.BucketKey):
            self._switch(name, key)

    def _switch(self, name: str, key: str) -> None:
        old = self.streamer.BucketName
        try:
            self.streamer.set_bucket(bucket_name=name, bucket_key=key)
        except IsStreamerError as exc:
            self._say(f"cannot switch: {exc}")
            return
        if name != old:
            self._say(f"now sending to {name!r}; {old!r} still drains")
        with self._lock:
            if self.bucket_text.value.strip() == name:
                self.bucket_text.value = ""
        self.refresh()

    def _on_flush(self, _button: Any = None) -> None:
        with self._lock:
            if self.flushing:
                return
            self._flush_result = None
            self._note = "flushing…"
            self._flush_thread = threading.Thread(target=self._flush_worker,
                                                  name="isstreamer-panel-flush", daemon=True)
            with self.flush_button.hold_sync():
                self.flush_button.disabled = True
                self.flush_button.icon = "spinner spin"
                self.flush_button.description = "Flushing…"
            self._flush_thread.start()
            self.refresh()

    def _flush_worker(self) -> None:
        """In its own thread so the kernel never waits; hands the result to the next refresh
        and touches no widget."""
        started = time.monotonic()
        try:
            result: RunEnd | Exception = self.streamer.flush_report()
        except Exception as exc:
            result = exc
        self._flush_result = (result, time.monotonic() - started)

    @property
    def flushing(self) -> bool:
        """A flush started from the button is running (or its result is not shown yet)."""
        return self._flush_thread is not None

    def wait_flush(self, timeout: float) -> bool:
        """Wait for a flush started from the button (tests); True if it ended."""
        thread = self._flush_thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def _apply_flush_result(self, stats: Stats) -> None:
        result, thread = self._flush_result, self._flush_thread
        if thread is None or result is None or thread.is_alive():
            return
        end, took = result
        if isinstance(end, RunEnd):
            self._note = _esc(render(end))
        else:  # (a bug: said as it is)
            self._note = (f"flush: not all delivered after {took:.1f} s: "
                          f"{_esc(f'{type(end).__name__}: {end}')}")
        self._flush_thread = None
        with self.flush_button.hold_sync():
            self.flush_button.disabled = False
            self.flush_button.icon = "paper-plane"
            self.flush_button.description = "Flush"

    def _on_debug_level(self, change: dict[str, Any]) -> None:
        if self._syncing == threading.get_ident() or change["new"] is None:
            return
        self.streamer.DebugLevel = int(change["new"])
        self._say(f"debug level {change['new']}")
        self.refresh()

    def _on_log_section(self, change: dict[str, Any]) -> None:
        if change["new"] == 0:
            with self._lock:
                self._refresh_log()

    def _say(self, message: str) -> None:
        """A note next to the buttons, about what the user just did."""
        self._note = _esc(message)
        with self._lock:
            self._set(self.note, self._note_html())
