"""The magics' session: the one session streamer of a shell, with no IPython in it.

The streamer is made on first use from the settings the magics give, or it is the user's own,
adopted by name with ``%isstream --use NAME``. An adopted streamer stays the user's: only
``%isstream --close`` closes it. A method that has something to say returns the sentence the
magics print after their ``isstream:`` mark, or "" when there is nothing to say.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from .. import _config
from .._errors import IsStreamerError, IsStreamerWarning
from .._events import describe
from .._report import render
from .._streamer import Streamer

__all__ = ["Session", "SessionError"]

#: the panel module's name; it is imported only when a panel is shown
_PANEL = f"{__name__.rsplit('.', 2)[0]}._panel"


class SessionError(Exception):
    """A request the session refuses; the message says the fix."""


class _Caught:
    """Collects the core's IsStreamerWarnings, which the magics show as one printed line."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def __call__(self, fn: Callable[[], Any]) -> Any:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", IsStreamerWarning)
            try:
                return fn()
            finally:
                for w in caught:
                    if issubclass(w.category, IsStreamerWarning):
                        self.messages.append(str(w.message))
                    else:
                        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


class Session:
    """Owns the session streamer of one shell.

    `settings` returns the keyword arguments of the next streamer the session makes.
    """

    def __init__(self, settings: Callable[[], dict[str, Any]]) -> None:
        self._settings = settings
        self._streamer: Streamer | None = None
        self._adopted = ""  # the name given to --use; "" when the session made the streamer

    @property
    def current(self) -> Streamer | None:
        """The streamer the session holds, made or adopted; None before the first use."""
        return self._streamer

    @property
    def adopted(self) -> str:
        """The name the held streamer was adopted by; "" when the session made it."""
        return self._adopted

    @property
    def streamer(self) -> Streamer:
        """The session streamer, made on first use and after the made one was closed."""
        streamer = self._streamer
        if streamer is None or (streamer.IsClosed and not self._adopted):
            return self.make()
        if streamer.IsClosed:
            raise SessionError(f"your streamer {self._adopted} is closed: `%isstream --use` "
                               f"another, or `%isstream --close` to let the magics make one")
        return streamer

    def make(self) -> Streamer:
        """Make a streamer from the settings and hold it; a bad setting is an
        IsStreamerError."""
        streamer = Streamer(**self._settings())
        self._streamer, self._adopted = streamer, ""
        return streamer

    def adopt(self, name: str, namespace: Mapping[str, Any]) -> str:
        """Hold the user's streamer `name` of `namespace`, closing the one the session made."""
        if not name.isidentifier() or name not in namespace:
            raise SessionError(f"--use {name}: there is no variable {name!r}; make one first: "
                               f"{name} = Streamer(...)")
        streamer = namespace[name]
        if not isinstance(streamer, Streamer):
            raise SessionError(f"--use {name}: {name} is {describe(streamer)}, not an "
                               f"isstreamer_jupyter Streamer")
        if streamer.IsClosed:
            raise SessionError(f"--use {name}: {name} is closed; make a new Streamer")
        if streamer is self._streamer:
            self._adopted = self._adopted or name
            return ""
        left = self.close()
        self._streamer, self._adopted = streamer, name
        return f"now using {name} (bucket {streamer.BucketName!r}){left}"

    def redact(self, text: str) -> str:
        """`text` without the access key. The streamer redacts its own messages; this guards
        every text of ours too."""
        return self._streamer.redact(text) if self._streamer is not None else text

    # ------------------------------------------------------------------ settings
    def apply(self, name: str, value: Any) -> str:
        """Apply a changed setting to the held streamer.

        The debug level and the batch size change in place. Any other setting closes a
        streamer the session made, so the next one is made with it; an adopted one keeps its
        own.
        """
        streamer = self._streamer
        if streamer is None or getattr(streamer.settings, name) == value:
            return ""
        if name == "debug_level":
            streamer.DebugLevel = value
        elif name == "batch_size":
            streamer.BufferSize = value
        elif self._adopted:
            return (f"{name} applies to streamers the magics make; your streamer "
                    f"{self._adopted} keeps its own settings")
        else:
            left = self.close()
            return (f"{name} changed: closed the session streamer{left}; the next %isstream "
                    f"starts one with the new setting")
        return ""

    def apply_bucket(self, name: str | None, key: str | None) -> None:
        """Move the open streamer to bucket `name` with `key`.

        None for the name keeps the streamer's bucket. No key means the key derived from the
        name, as in set_bucket().
        """
        streamer = self._streamer
        if streamer is None or streamer.IsClosed:  # the next one is made with them
            return
        bucket = streamer.BucketName if name is None else name
        key = key or _config.derive_bucket_key(bucket)
        if (bucket, key) != (streamer.BucketName, streamer.BucketKey):
            streamer.set_bucket(bucket, key)

    # ------------------------------------------------------------------ the end of a wait
    def flush(self, timeout: float | None) -> str:
        """Wait for what was logged; say what was delivered or what still waits.

        At debug_level >= 2 a failure is the core's IsStreamerError.
        """
        streamer = self.streamer
        caught = _Caught()
        done = caught(lambda: streamer.flush(timeout))
        if done:
            stats = streamer.stats()
            return (f"recorded ({stats.sent} events so far, in {stats.offline_file})"
                    if stats.offline_file else f"delivered ({stats.sent} events sent so far)")
        return self.redact("; ".join(caught.messages) or "not all delivered")

    def close(self, timeout: float | None = None, *, progressing: bool = False) -> str:
        """Let go of the streamer and stop its panels; close it if the session made it.

        The wait is `timeout`, else the streamer's exit wait; with `progressing` and no
        timeout it waits as close() does, while delivery progresses. What is undelivered stays
        in the spool. Returns "" or "; " and what is left.
        """
        streamer, self._streamer = self._streamer, None
        adopted, self._adopted = self._adopted, ""
        if streamer is None:
            return ""
        panel = sys.modules.get(_PANEL)  # not loaded: no panel was ever shown
        if panel is not None:
            panel.close_panels(streamer)
        if adopted:
            return ""
        if progressing and timeout is None:
            return _close(streamer, None)
        return _close(streamer, streamer.settings.exit_timeout if timeout is None else timeout)

    def close_by_user(self, timeout: float | None) -> str:
        """``%isstream --close``: close the streamer, also an adopted one, and say so."""
        if self._streamer is None:
            return "no session streamer to close"
        adopted = self._adopted
        if adopted:  # asked for by name: close the user's streamer too
            self._adopted = ""
        left = self.close(timeout, progressing=True)
        return (f"closed {adopted or 'the session streamer'}"
                f"{left or '; everything was delivered'}"
                + (f". The next %isstream makes a streamer of its own (its bucket: --bucket, "
                   f"%config, else {_config.DEFAULT_BUCKET_NAME!r}); %isstream --use NAME "
                   f"takes one of yours" if adopted else ""))

    def shutdown(self) -> str:
        """For unload: close the session's own streamer, bounded, and stop the panels."""
        left = self.close()
        return f"closed the session streamer{left}" if left else ""


def _close(streamer: Streamer, timeout: float | None) -> str:
    """Close within `timeout`, or while delivery progresses for None. Returns "" when
    everything was delivered, else "; " and the report of what is left and where."""
    caught = _Caught()
    try:
        delivered = caught(lambda: streamer.close(timeout))
    except IsStreamerError as exc:  # debug_level >= 2
        delivered = False
        caught.messages.append(str(exc))
    if delivered:
        return ""
    end = streamer.outcome
    if end is not None and not end.ok:
        return f"; {streamer.redact(render(end))}"
    return streamer.redact("".join(f"; {m}" for m in caught.messages)
                           or "; some events were lost")
