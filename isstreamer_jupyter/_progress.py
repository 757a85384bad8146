"""The progress bar of a long wait for delivery: ``tqdm.auto``, a widget in Jupyter and text on
stderr in a terminal."""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import Any

#: a wait shows its bar once it has lasted this long
SHOW_AFTER = 1.0


def wanted(setting: bool | None) -> bool:
    """Whether a wait shows a bar: the ``progress`` setting, else on in Jupyter or when stderr
    is a terminal. Only the main thread draws one: a wait in another thread, such as the
    panel's Flush button, would draw it into whichever cell is running."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if setting is not None:
        return setting
    if "ipykernel" in sys.modules:
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # no stderr, or a closed one
        return False


class Bar:
    """A bar of events delivered out of those waiting, made only when first shown."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.shown = False
        self._bar: Any = None
        self._broken = False

    def show(self, done: int, total: int) -> None:
        """Draw `done` of `total`; the first call makes the bar. A bar that cannot be drawn
        (a closed stderr, a kernel shutting down) is given up: the wait goes on without it."""
        if self._broken:
            return
        try:
            self._draw(done, total)
        except Exception:
            self._broken = True
            self.close()

    def _draw(self, done: int, total: int) -> None:
        left = max(0, total - done)
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total, initial=done, desc=self.label, unit="event", file=sys.stderr,
                leave=False, dynamic_ncols=True,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} delivered"
                           "{postfix} [{elapsed}<{remaining}, {rate_fmt}]")
            self.shown = True
        bar = self._bar
        if bar.total != total:
            bar.total = total
        bar.set_postfix_str(f"{left:,} left", refresh=False)
        bar.update(done - bar.n)

    def close(self) -> None:
        if self._bar is not None:
            with contextlib.suppress(Exception):  # (a closed stderr, a dead frontend)
                self._bar.close()
            self._bar = None
