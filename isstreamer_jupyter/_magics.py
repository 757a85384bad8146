"""The ``%isstream`` line magic and ``%%isstream`` cell magic.

    %load_ext isstreamer_jupyter
    %isstream temp 32
    %isstream temp=32 humidity=0.41 status="warming up"
    %isstream --bucket "Run 7"

    %%isstream loss accuracy --prefix train_
    loss, accuracy = train_one_epoch()

All forms talk to one *session streamer* per shell, kept on the :class:`IsStreamMagics`
instance: made on first use from the core's settings (keyword > environment > ini > default,
where the keywords are the ``%config IsStreamMagics.<setting>`` values that were set), or the
user's own, adopted with ``%isstream --use NAME``. The access key never appears here: there is
no trait for it (``%config IsStreamMagics.access_key = ...`` is refused, naming where the key
goes); it comes from the environment, an ini file or the adopted streamer.

User mistakes are one :class:`~IPython.core.error.UsageError` line (IPython prints it without
a traceback), built from the core's own messages, which name the limit and the fix.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import inspect
import math
import numbers
import re
import sys
import time
import types
import warnings
from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import (
    Magics,
    cell_magic,
    line_magic,
    magics_class,
    needs_local_scope,
    no_var_expand,
    output_can_be_silenced,
)
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.utils.text import DollarFormatter
from traitlets import Bool, Float, Int, TraitError, Unicode, observe, validate
from traitlets.config import Configurable

from . import _config
from ._errors import IsStreamerError, IsStreamerWarning, counted
from ._events import VALUE_MAX, check_key, coerce_epoch, coerce_value, describe
from ._report import render
from ._stats import status_text
from ._streamer import Streamer

__all__ = ["IsStreamMagics", "load", "parse_value", "split_line", "unload"]

#: the settings ``%config IsStreamMagics.<name>`` sets: every one of the settings table but
#: the access key (on purpose: a trait's value can be shown, and a cell is no place for it)
SETTING_TRAITS = tuple(s.name for s in _config.SETTINGS if not s.secret)
#: the answer to ``%config IsStreamMagics.access_key = ...`` (the value is never shown)
ACCESS_KEY_REFUSED = (f"IsStreamMagics.access_key is not a setting: the access key is never "
                      f"taken from a cell (a notebook and its history keep what a cell says). "
                      f"Set IS_ACCESS_KEY in the environment, or access_key under "
                      f"[{_config.CLIENT}] in isstreamer.ini; and remove it from that cell")
#: the key ``--time`` logs the cell's duration under (after ``--prefix``), in seconds
CELL_SECONDS = "cell_seconds"
NOTE = "isstream:"


def _setting_trait(name: str) -> Any:
    """A ``%config`` trait for one core setting; type and help come from ``_config.SETTINGS``.

    Its default is None, meaning "not set here": the streamer then takes the environment, the
    ini files or the core's default, exactly as ``Streamer()`` would.
    """
    setting = _config.BY_NAME[name]
    kind = bool if setting.default is None else type(setting.default)  # offline: None = auto
    trait = {bool: Bool, int: Int, float: Float, str: Unicode}[kind]
    options = dict.fromkeys(f"ini {option}" for _, option in setting.ini)
    sources = " or ".join(setting.env + tuple(options))
    help_text = f"{setting.meaning}. Unset (None): {sources}, else {setting.default_text}."
    return trait(None, allow_none=True, help=help_text).tag(config=True)


#: the base of IsStreamMagics that holds its traits, one for each of SETTING_TRAITS
_SettingTraits = types.new_class(
    "IsStreamSettings", (Configurable,),
    exec_body=lambda body: body.update({name: _setting_trait(name) for name in SETTING_TRAITS}))


# --------------------------------------------------------------------------- parsing the line
_PLAIN = re.compile(r"[^\"'()\[\]{}#]*\Z")  # nothing the careful splitter would treat apart
_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)\Z")  # what literal_eval reads as an int, quickly
_PAIR = re.compile(r"""(?P<key>"[^"]*"|'[^']*'|[^\s=()\[\]{}"'<>!]+)=(?!=)(?P<value>.*)\Z""",
                   re.DOTALL)
_OPENERS, _CLOSERS = "([{", ")]}"


def split_line(line: str) -> list[str]:
    """Split at spaces that are outside quotes and brackets, keeping the quotes.

    ``status="warming up" x=f(a, b)`` is two words; a word that starts with ``#`` starts a
    comment. Quotes are kept so that ``"32"`` stays a string when the value is read.
    """
    if _PLAIN.match(line):
        return line.split()
    words: list[str] = []
    start: int | None = None
    quote = ""
    depth = 0
    i, n = 0, len(line)
    while i < n:
        ch = line[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch.isspace():
            if depth == 0 and start is not None:
                words.append(line[start:i])
                start = None
        else:
            if start is None:
                if ch == "#":
                    break
                start = i
            if ch in "\"'":
                quote = ch
            elif ch in _OPENERS:
                depth += 1
            elif ch in _CLOSERS:
                depth = max(0, depth - 1)
        i += 1
    if quote:
        raise UsageError(f"unclosed {quote} in {line.strip()!r}: close the quote")
    if depth:
        raise UsageError(f"unclosed bracket in {line.strip()!r}: close it")
    if start is not None:
        words.append(line[start:i])
    return words


def _unquote(word: str) -> str:
    """An option's value or a key: ``"Run 7"`` -> ``Run 7``; unquoted words stay as they are."""
    if len(word) >= 2 and word[0] == word[-1] and word[0] in "\"'":
        try:
            value = ast.literal_eval(word)
        except (ValueError, SyntaxError):
            return word
        if isinstance(value, str):
            return value
    return word


def parse_value(text: str, namespace: dict[str, Any] | None = None,
                local_ns: dict[str, Any] | None = None) -> Any:
    """Read a value as the magics do, trying in order:

    1. a Python literal (``32``, ``0.41``, ``True``, ``"32"``, ``'warming up'``);
    2. else a Python expression evaluated in `namespace` (the user's: ``x``, ``np.mean(a)``),
       with `local_ns` as its locals (those of a function that runs the magic);
    3. else, when the text is not valid Python or names something undefined, the bare text
       (``warming``, ``v1.2.3``).

    An expression that is valid Python and fails for another reason (``1/0``, ``obj.typo``) is
    a UsageError, not text: quoting it logs the text.
    """
    if _INT.match(text):
        if len(text) > 4000:  # (int() refuses past 4300 digits)
            raise UsageError(f"a {len(text)}-digit number is too long to log as a number; "
                             f"quote it to log it as text")
        return int(text)
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    try:
        return eval(text, namespace if namespace is not None else {}, local_ns)
    except (SyntaxError, NameError):
        return text
    except Exception as exc:
        raise UsageError(f"evaluating {text!r} raised {type(exc).__name__}: {exc}; fix the "
                         f"expression, or quote it to log it as text") from None


def _pairs(words: list[str]) -> list[tuple[str, str]]:
    """The (key, value text) items of ``KEY VALUE`` or ``KEY=VALUE ...`` words."""
    if not words:
        return []
    if _PAIR.match(words[0]) is None:
        key = _unquote(words[0])
        if key.startswith("="):
            raise UsageError(f"{key!r} has no key before '=': write `%isstream KEY{key}`")
        if len(words) == 1:
            raise UsageError(f"no value for {key!r}: write `%isstream {key} VALUE` or "
                             f"`%isstream {key}=VALUE`")
        if len(words) > 2:
            raise UsageError(f"`KEY VALUE` takes one value, got {len(words) - 1} words after "
                             f"{key!r}: quote text with spaces ({key} \"{' '.join(words[1:])}\"),"
                             f" or give KEY=VALUE pairs")
        return [(key, words[1])]
    items = []
    for word in words:
        match = _PAIR.match(word)
        if match is None:
            raise UsageError(f"{word!r} is not KEY=VALUE: give every item as KEY=VALUE "
                             f"(quote text with spaces), or one `KEY VALUE`")
        key, value = _unquote(match["key"]), match["value"]
        if not value:
            raise UsageError(f"no value after {key}=: write {key}=VALUE "
                             f"({key}=\"\" for an empty string)")
        items.append((key, value))
    return items


# --------------------------------------------------------------------------- cell helpers
def assigned_names(tree: ast.Module) -> list[str]:
    """Names bound by the cell's top-level assignment statements, in order: ``x = ...``,
    ``a, (b, *c) = ...``, ``x: int = ...``, ``x += ...``. Loops, ``with``, imports, function
    and class definitions, attributes and subscripts are not assignments of a result; a
    ``_private`` name is no result either (as log_object leaves them out)."""
    names: dict[str, None] = {}

    def add(target: ast.expr) -> None:
        if isinstance(target, ast.Name):
            if not target.id.startswith("_"):
                names.setdefault(target.id)
        elif isinstance(target, ast.Tuple | ast.List):
            for element in target.elts:
                add(element)
        elif isinstance(target, ast.Starred):
            add(target.value)

    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                add(target)
        elif isinstance(node, ast.AugAssign) or (
                isinstance(node, ast.AnnAssign) and node.value is not None):
            add(node.target)
    return list(names)


def _auto_loggable(value: Any) -> bool:
    """What the cell magic logs without being named: numbers (numpy scalars too), bools and
    strings up to the core's limit. Everything else must be named (or is skipped)."""
    kind = type(value)
    if kind is str:
        return len(value) <= VALUE_MAX
    if kind is bool or kind is int or kind is float:
        return True
    if isinstance(value, str):
        return len(value) <= VALUE_MAX
    if isinstance(value, numbers.Real):  # numpy ints and floats, Fraction, IntEnum...
        return True
    return kind.__module__ == "numpy" and getattr(value, "dtype", None) is not None \
        and getattr(value, "shape", None) == () and value.dtype.kind in "biuf"


class _Caught:
    """Collects the core's IsStreamerWarnings (shown as one printed line instead)."""

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


# --------------------------------------------------------------------------- the magics
@magics_class
class IsStreamMagics(Magics, _SettingTraits):
    """``%isstream`` and ``%%isstream``; ``%config IsStreamMagics.<setting> = value`` for each
    setting of the settings table but the access key (the traits come from the table)."""

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        self._streamer: Streamer | None = None
        self._adopted = ""  # the name given to --use; "" when the magics made the streamer
        #: the option that set a setting last ("%isstream --offline"); the others were set
        #: with %config (or the IPython config), and are named so
        self._set_by: dict[str, str] = {}
        # (an access key in the shell's config: from an IPython config file, or merged there
        # by a %config refused before this load; dropped, never used, and said with the first
        # %isstream's output: a kernel that loads the extension at its start shows what is
        # printed now nowhere)
        self._config_note = ""
        for config in (getattr(shell, "config", None), kwargs.get("config")):
            if config is not None and self._drop_access_key(config):
                said = ACCESS_KEY_REFUSED.replace("from that cell", "from there")
                self._config_note = f"{NOTE} {said}"
        super().__init__(shell=shell, **kwargs)  # Magics: parent=shell, joins configurables

    # ------------------------------------------------------------------ the access key
    def _say_config_note(self) -> None:
        """Say, once, that an access key in the IPython config was dropped."""
        if self._config_note:
            print(self._config_note)
            self._config_note = ""

    def update_config(self, config: Any) -> None:
        """``%config``: an access key is refused (a TraitError, which %config shows as an error
        line) and dropped, from the configs of the configurables %config updated before this
        one too (they merged it into theirs); whatever else `config` sets applies."""
        if not self._drop_access_key(config):
            self._update_config(config)
            return
        for configurable in getattr(self.shell, "configurables", ()):
            self._drop_access_key(configurable.config)
        self._update_config(config)
        raise TraitError(ACCESS_KEY_REFUSED)

    def _update_config(self, config: Any) -> None:
        """Apply `config`; a value of the wrong type is told in the core's words, with the fix
        (traitlets' own says "expected a float, not the str 'abc'")."""
        try:
            super().update_config(config)
        except TraitError as exc:
            for section in self.section_names():
                for name, value in dict(config.get(section, {})).items():
                    if name in SETTING_TRAITS and isinstance(value, str) and not isinstance(
                            self.traits()[name], Unicode):
                        try:
                            parsed = _config.BY_NAME[name].parse(value)
                        except ValueError as words:
                            raise TraitError(f"IsStreamMagics.{name} = {value!r}: {words}"
                                             ) from None
                        code = (repr(parsed) if parsed == parsed and abs(parsed) != math.inf
                                else f"float({str(parsed)!r})")  # (inf is no Python name)
                        raise TraitError(
                            f"IsStreamMagics.{name} = {value!r}: expected {code}, not text: "
                            f"write it without quotes, %config IsStreamMagics.{name} = "
                            f"{code}") from None
            raise exc

    @classmethod
    def _drop_access_key(cls, config: Any) -> bool:
        """Remove an access key meant for this class from a traitlets Config; True if found."""
        found = False
        for section in cls.section_names():  # (IsStreamMagics, and the classes it derives from)
            if f"{section}.access_key" in config:
                del config[section]["access_key"]
                found = True
        return found

    # ------------------------------------------------------------------ settings
    @validate(*SETTING_TRAITS)
    def _check_setting(self, proposal: Any) -> Any:
        """Check a %config value with the core's own rules (and normalise it as they do)."""
        value, name = proposal["value"], proposal["trait"].name
        if value is None or isinstance(value, bool):
            return value
        try:
            if name == "bucket_name":  # (as given: a blank one is refused, not stripped to "")
                _config.check_bucket_name(str(value))
            parsed = _config.BY_NAME[name].parse(str(value))
            if name == "bucket_key" and parsed:
                _config.check_bucket_key(parsed)
        except (ValueError, IsStreamerError) as exc:
            raise TraitError(f"IsStreamMagics.{name} = {value!r}: {exc}") from None
        return parsed

    @observe(*SETTING_TRAITS)
    def _setting_changed(self, change: Any) -> None:
        streamer, name, new = self._streamer, change["name"], change["new"]
        self._set_by.pop(name, None)  # (%config; an option names itself after setting it)
        if streamer is None or new is None:
            return
        if name in ("bucket_name", "bucket_key"):
            self._apply_bucket()
        elif getattr(streamer.settings, name) == new:
            return
        elif name == "debug_level":
            streamer.DebugLevel = new
        elif name == "batch_size":
            streamer.BufferSize = new
        elif self._adopted:
            print(f"{NOTE} {name} applies to streamers the magics make; your streamer "
                  f"{self._adopted} keeps its own settings")
        else:
            left = self._close_session_streamer()
            print(f"{NOTE} {name} changed: closed the session streamer{left}; the next "
                  f"%isstream starts one with the new setting")

    def _apply_bucket(self) -> None:
        """Move the open session streamer to the bucket settings (a name without a key means
        the key derived from the name, as in set_bucket())."""
        streamer = self._streamer
        if streamer is None or streamer.IsClosed:  # (the next one is made with them)
            return
        bucket = streamer.BucketName if self.bucket_name is None else self.bucket_name
        key = self.bucket_key or _config.derive_bucket_key(bucket)
        if (bucket, key) != (streamer.BucketName, streamer.BucketKey):
            streamer.set_bucket(bucket, key)

    def _overrides(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in SETTING_TRAITS}

    def _given_as(self) -> dict[str, str]:
        """What the user wrote to set each setting, for the core's messages."""
        return {name: self._set_by.get(name, f"%config IsStreamMagics.{name}")
                for name in SETTING_TRAITS}

    # ------------------------------------------------------------------ the session streamer
    @property
    def streamer(self) -> Streamer:
        """The session streamer, made on first use."""
        streamer = self._streamer
        if streamer is None or (streamer.IsClosed and not self._adopted):
            return self._make()
        if streamer.IsClosed:
            raise UsageError(f"your streamer {self._adopted} is closed: `%isstream --use` "
                             f"another, or `%isstream --close` to let the magics make one")
        return streamer

    def _make(self, **overrides: Any) -> Streamer:
        settings = self._overrides()
        settings.update(overrides)
        try:
            streamer = Streamer(**settings, given_as=self._given_as())
        except IsStreamerError as exc:
            raise UsageError(str(exc)) from None
        self._streamer, self._adopted = streamer, ""
        return streamer

    def _close_session_streamer(self, timeout: float | None = None, *,
                                progressing: bool = False) -> str:
        """Detach the session streamer and stop its panels; close it if the magics made it
        (an adopted one is the user's), within `timeout` (default: its exit wait), or, with
        `progressing`, as close() waits: while delivery progresses. What is undelivered stays
        in the spool. Returns "" or a note on what is left."""
        streamer, self._streamer = self._streamer, None
        adopted, self._adopted = self._adopted, ""
        if streamer is None:
            return ""
        _close_panels(streamer)
        if adopted:
            return ""
        if progressing and timeout is None:
            return _close(streamer, None)
        return _close(streamer, streamer.settings.exit_timeout if timeout is None else timeout)

    def shutdown(self) -> None:
        """For unload: close the magics' own streamer (bounded) and stop the panels."""
        left = self._close_session_streamer()
        if left:
            print(f"{NOTE} closed the session streamer{left}")

    # ------------------------------------------------------------------ logging
    def _read(self, words: list[str], prefix: str = "",
              local_ns: dict[str, Any] | None = None) -> list[tuple[str, Any]]:
        """Checked (key, value) events from the words of ``KEY VALUE`` or ``KEY=VALUE ...``;
        refusals are UsageErrors with the core's message."""
        namespace = self.shell.user_ns
        events = []
        pairs = _pairs(words)
        spaced = bool(words) and _PAIR.match(words[0]) is None  # (KEY VALUE, not KEY=VALUE)
        for key, text in pairs:
            value = parse_value(text, namespace, local_ns)
            try:
                events.append(_checked(prefix + key, value))
            except UsageError:
                what = _code_named(text, value)
                if not what:
                    raise
                quoted = f'{key} "{text}"' if spaced else f'{key}="{text}"'
                raise UsageError(f"value for key {prefix + key!r}: {text} is {what}, not text: "
                                 f"to log the word, quote it: {quoted}") from None
        return events

    def _log(self, events: list[tuple[str, Any]], epoch: float | None = None) -> None:
        """Log checked events. The core's own notices (recording offline, a long key...)
        stay Python warnings, shown where the user logged, as for ``Streamer.log``."""
        log = self.streamer.log
        try:
            for key, value in events:
                log(key, value, epoch)
        except IsStreamerError as exc:  # StreamerClosed, or a refusal at debug_level >= 2
            raise UsageError(self._scrub(str(exc))) from None

    def _scrub(self, text: str) -> str:
        """Belt and braces: no text of ours shows the access key (the streamer's own rule)."""
        return self._streamer.redact(text) if self._streamer is not None else text

    # ------------------------------------------------------------------ %isstream
    @magic_arguments()
    @argument("items", nargs="*", metavar="KEY VALUE | KEY=VALUE ...",
              help="what to log: one `KEY VALUE`, or any number of `KEY=VALUE`. A value is a "
                   "Python literal if it parses as one, else an expression evaluated in your "
                   "namespace, else the bare text. {expr} and $var are expanded first.")
    @argument("--bucket", metavar="NAME",
              help="switch the session to bucket NAME (created if needed; its key is derived "
                   "from the name unless --bucket-key is given)")
    @argument("--bucket-key", metavar="KEY", help="the key of the --bucket bucket")
    @argument("--epoch", metavar="T",
              help="the time of the logged events: seconds, milliseconds, microseconds or "
                   "nanoseconds since 1970 (told apart by size), or ISO 8601")
    @argument("--flush", action="store_true",
              help="wait until everything logged so far is delivered")
    @argument("--timeout", type=float, metavar="S",
              help="the wait of --flush or --close, in seconds in all (default: while "
                   "delivery progresses, up to flush_timeout without an acknowledgment)")
    @argument("--status", action="store_true", help="print a compact text status")
    @argument("--panel", action="store_true",
              help="show the live panel (a text status where widgets cannot show)")
    @argument("--debug", type=int, metavar="N",
              help="debug level: 0 quiet, 1 echo events, 2 raise failures, 3 HTTP detail")
    @argument("--offline", action="store_true",
              help="record to the local CSV file from now on instead of sending")
    @argument("--close", action="store_true",
              help="flush (bounded by --timeout) and close the session streamer; the next use "
                   "starts a new one")
    @argument("--use", metavar="NAME",
              help="make your Streamer NAME the session streamer (it stays yours: unloading "
                   "the extension does not close it)")
    @line_magic
    @no_var_expand  # expanded below, only when the line has something to expand
    @needs_local_scope
    def isstream(self, line: str = "", local_ns: dict[str, Any] | None = None) -> None:
        """Stream values to Initial State from one line.

        ``%isstream temp 32`` logs one value; ``%isstream temp=32 status="warming up"`` logs
        several at one time. Each value is read, in this order, as a Python literal (``32``,
        ``"32"``, ``True``), else as an expression evaluated in your namespace (``x``,
        ``np.mean(a)``), else as the bare text (``warming``); IPython's ``{expr}`` and
        ``$var`` are expanded first. Values the core would refuse (lists, NaN, text over 2000
        characters...) are a UsageError that says what to do, and nothing on that line is
        logged. With no arguments, shows the session streamer's panel (a text status where
        widgets cannot show). Options combine: ``--bucket`` applies before the values are
        logged, ``--flush``/``--close`` and ``--status`` after. ``--help`` (or ``-h`` alone)
        prints this help and does nothing else.
        """
        self._say_config_note()
        if "$" in line or "{" in line or "}" in line:
            line = _expand(line, self.shell.user_ns, local_ns)
        words = split_line(line)
        if not words:
            self._show_panel()
            return
        if all(word[0] != "-" for word in words):  # the common case: values, no options
            events = self._read(words, "", local_ns)
            self._log(events, time.time() if len(events) > 1 else None)  # one line, one time
            return
        if _asks_help(words):
            _print_help(self.isstream.parser)
            return
        args = _parse(self.isstream.parser, words, "%isstream")
        if args.bucket_key is not None and args.bucket is None:
            raise UsageError("--bucket-key goes with --bucket NAME: "
                             "%isstream --bucket NAME --bucket-key KEY")
        if args.timeout is not None and not (args.flush or args.close):
            raise UsageError("--timeout goes with --flush or --close")
        if args.timeout is not None and not args.timeout >= 0:
            raise UsageError(f"--timeout {args.timeout:g}: give seconds, 0 or more")
        events = self._read(args.items, "", local_ns)
        epoch = time.time() if len(events) > 1 else None  # one line, one time
        if args.epoch is not None:
            if not events:
                raise UsageError("--epoch T goes with values to log: %isstream KEY VALUE --epoch T")
            try:
                epoch = coerce_epoch(events[0][0], _unquote(args.epoch))
            except IsStreamerError as exc:
                raise UsageError(str(exc)) from None
        if args.use is not None:
            self._use(_unquote(args.use), local_ns)
        if args.debug is not None:
            self._set_trait("debug_level", args.debug, "--debug")
        if args.offline:
            self._set_trait("offline", True, "--offline")
        if args.bucket is not None:
            self._switch_bucket(args.bucket, args.bucket_key, "%isstream")
        if events:
            self._log(events, epoch)
        if args.close:
            self._close_by_user(args.timeout)
        elif args.flush:
            self._flush(args.timeout)
        if args.status:
            print(status_text(self.streamer.stats()))
        if args.panel:
            self._show_panel()

    def _set_trait(self, name: str, value: Any, option: str) -> None:
        """Set a setting from an %isstream option, which is then its source."""
        try:
            setattr(self, name, value)
        except TraitError as exc:
            raise UsageError(f"{option} {value!r}: {str(exc).rsplit(': ', 1)[-1]}") from None
        except IsStreamerError as exc:
            raise UsageError(str(exc)) from None
        self._set_by[name] = f"%isstream {option}"

    def _switch_bucket(self, name: str, key: str | None, magic: str) -> None:
        """--bucket: the bucket settings (as %config would set them), so a streamer the
        magics make later (after --offline, a changed setting) keeps streaming to it."""
        name, key = _unquote(name), _unquote(key) if key else ""
        try:
            with self.hold_trait_notifications():  # (one switch, to the final name and key)
                self.bucket_key = key or None
                self.bucket_name = name
            self._set_by.update(bucket_name=f"{magic} --bucket",
                                bucket_key=f"{magic} --bucket-key")
            self._apply_bucket()  # (also when the settings already said so)
        except TraitError as exc:
            raise UsageError(str(exc).split(": ", 1)[-1]) from None  # (the core's words)
        except IsStreamerError as exc:
            raise UsageError(str(exc)) from None
        stats = self.streamer.stats()
        print(f"{NOTE} streaming to bucket {stats.bucket_name!r} (key {stats.bucket_key})")

    def _use(self, name: str, local_ns: dict[str, Any] | None) -> None:
        namespace = {**self.shell.user_ns, **(local_ns or {})}
        if not name.isidentifier() or name not in namespace:
            raise UsageError(f"--use {name}: there is no variable {name!r}; make one first: "
                             f"{name} = Streamer(...)")
        streamer = namespace[name]
        if not isinstance(streamer, Streamer):
            raise UsageError(f"--use {name}: {name} is {describe(streamer)}, not an "
                             f"isstreamer_jupyter Streamer")
        if streamer.IsClosed:
            raise UsageError(f"--use {name}: {name} is closed; make a new Streamer")
        if streamer is self._streamer:
            self._adopted = self._adopted or name
            return
        left = self._close_session_streamer()
        self._streamer, self._adopted = streamer, name
        print(f"{NOTE} now using {name} (bucket {streamer.BucketName!r}){left}")

    def _flush(self, timeout: float | None) -> None:
        streamer = self.streamer
        caught = _Caught()
        try:
            done = caught(lambda: streamer.flush(timeout))
        except IsStreamerError as exc:  # debug_level >= 2
            raise UsageError(self._scrub(str(exc))) from None
        if done:
            stats = streamer.stats()
            print(f"{NOTE} recorded ({stats.sent} events so far, in {stats.offline_file})"
                  if stats.offline_file else f"{NOTE} delivered ({stats.sent} events sent so far)")
        else:
            print(f"{NOTE} {self._scrub('; '.join(caught.messages) or 'not all delivered')}")

    def _close_by_user(self, timeout: float | None) -> None:
        if self._streamer is None:
            print(f"{NOTE} no session streamer to close")
            return
        adopted = self._adopted
        if adopted:  # asked for by name: close the user's streamer too
            self._adopted = ""
        left = self._close_session_streamer(timeout, progressing=True)
        print(f"{NOTE} closed {adopted or 'the session streamer'}"
              f"{left or '; everything was delivered'}"
              + (f". The next %isstream makes a streamer of its own (its bucket: --bucket, "
                 f"%config, else {_config.DEFAULT_BUCKET_NAME!r}); %isstream --use NAME takes "
                 f"one of yours" if adopted else ""))

    def _show_panel(self) -> None:
        from ._panel import show

        show(self.streamer)

    # ------------------------------------------------------------------ %%isstream
    @magic_arguments("%isstream")
    @argument("names", nargs="*", metavar="NAME",
              help="variables to log after the cell ran; none: every name (but _private "
                   "ones) the cell's top-level assignments bound whose value is a number, bool "
                   "or short string")
    @argument("--prefix", default="", metavar="P", help="put P before every key")
    @argument("--bucket", metavar="NAME", help="switch the session to bucket NAME first")
    @argument("--bucket-key", metavar="KEY", help="the key of the --bucket bucket")
    @argument("--time", action="store_true",
              help=f"also log the cell's run time in seconds as <prefix>{CELL_SECONDS}")
    @argument("--lines", action="store_true",
              help="do not run the body: read it as data, one `KEY VALUE` (or KEY=VALUE ...) "
                   "per line; blank lines and # comments are skipped")
    @cell_magic("isstream")
    @output_can_be_silenced  # a last expression ending in ";" is not displayed, as usual
    def isstream_cell(self, line: str, cell: str) -> Any:
        """Run the cell as a normal cell, then stream its results.

        The cell runs in your namespace; its last expression is displayed; an exception
        propagates and nothing is logged. Then the named variables are logged, each as
        ``<prefix><name>`` (a missing or refused one is a UsageError, after the others are
        logged); with no names, every name (but ``_private`` ones) the cell's top-level
        assignments bound whose value is a number (numpy scalars too), a bool or a string up
        to 2000 characters, and one note line lists the names skipped. All events of one
        cell share one time.

        ``--lines`` does not run the body: each line is ``KEY VALUE`` (or ``KEY=VALUE ...``),
        values read as ``%isstream`` reads them; bad lines are reported by number in one
        UsageError after the good ones are logged.

        ``--help`` (or ``-h`` alone) prints this help and does nothing else: the body is not
        run.
        """
        __tracebackhide__ = True  # IPython shows the cell's frames, not ours
        self._say_config_note()
        words = split_line(line)
        if _asks_help(words):  # (the body is not run, as no option then applies)
            _print_help(self.isstream_cell.parser)
            return None
        args = _parse(self.isstream_cell.parser, words, "%%isstream")
        prefix = _unquote(args.prefix)
        for name in args.names:
            if not name.isidentifier():
                raise UsageError(f"{name!r} is not a variable name: %%isstream NAME ... logs "
                                 f"variables (--prefix P puts P before their keys)")
        if args.bucket_key is not None and args.bucket is None:
            raise UsageError("--bucket-key goes with --bucket NAME")
        if args.lines and (args.names or args.time):
            raise UsageError("--lines reads the body as data; it takes no NAMEs and no --time")
        if args.bucket is not None:
            self._switch_bucket(args.bucket, args.bucket_key, "%%isstream")
        else:
            self.streamer  # noqa: B018 - make it now: a settings mistake shows before the cell
        if args.lines:
            self._log_lines(cell, prefix)
            return None
        value, names, seconds = self._run_cell(cell, args.names)
        epoch = time.time()
        if args.names:
            events, problems = self._named(args.names, prefix)
        else:
            events, problems = self._assigned(names, prefix), []
        if args.time:
            events.append((prefix + CELL_SECONDS, seconds))
        self._log(events, epoch)
        if problems:
            logged = f" (logged: {', '.join(k for k, _ in events)})" if events else ""
            raise UsageError("; ".join(problems) + logged)
        return value

    def _run_cell(self, cell: str, names: list[str]) -> tuple[Any, list[str], float]:
        """Run the cell in the user's namespace as IPython would (its %magics and !commands
        too); return its last expression's value, the names to log, and its run time."""
        __tracebackhide__ = True
        shell = self.shell
        source = shell.transform_cell(cell)
        filename = shell.compile.cache(source, shell.execution_count)
        tree = shell.compile.ast_parse(source, filename)
        if not names:
            names = assigned_names(tree)
        tree = shell.transform_ast(tree)
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        glob, local = shell.user_global_ns, shell.user_ns
        try:
            code = shell.compile(tree, filename, "exec")
        except SyntaxError as exc:
            if "await" not in str(exc.msg):
                raise
            raise UsageError("%%isstream cannot run a cell that uses top-level await: run it "
                             "as a normal cell, then %isstream NAME=VALUE ...") from None
        start = time.perf_counter()
        exec(code, glob, local)
        value = eval(shell.compile(last, filename, "eval"), glob, local) if last else None
        return value, names, time.perf_counter() - start

    def _named(self, names: list[str], prefix: str) -> tuple[list[tuple[str, Any]], list[str]]:
        """The named variables, by the core's rules (what it coerces, it takes)."""
        namespace = self.shell.user_ns
        events, problems = [], []
        for name in names:
            if name not in namespace:
                problems.append(f"no variable {name!r} after the cell ran: check the name")
                continue
            try:
                events.append(_checked(prefix + name, namespace[name]))
            except UsageError as exc:
                problems.append(str(exc))
        return events, problems

    def _assigned(self, names: list[str], prefix: str) -> list[tuple[str, Any]]:
        """The assigned names whose values are plainly loggable; one note on the others."""
        namespace = self.shell.user_ns
        events, skipped = [], []
        for name in names:
            value = namespace.get(name, _MISSING)
            if value is _MISSING:  # (deleted in the cell: nothing to log, nothing to say)
                continue
            try:
                if not _auto_loggable(value):
                    raise UsageError(name)
                events.append(_checked(prefix + name, value))
            except UsageError:
                skipped.append(name)
        if skipped:
            print(f"{NOTE} not logged (not a number, bool or string up to {VALUE_MAX} "
                  f"characters; name them to be told why): {', '.join(skipped)}")
        return events

    def _log_lines(self, body: str, prefix: str) -> None:
        events: list[tuple[str, Any]] = []
        bad: list[str] = []
        for number, raw in enumerate(body.splitlines(), 1):
            text = raw.strip()
            if not text or text.startswith("#"):
                continue
            try:
                events += self._read(split_line(text), prefix)
            except UsageError as exc:
                bad.append(f"line {number}: {exc}")
        if events:
            self._log(events, time.time())
        if bad:
            good = f"the other {counted(len(events), 'event', 'were')} logged" if events \
                else "none logged"
            raise UsageError(f"--lines: {counted(len(bad), 'bad line')} ({good}): "
                             + "; ".join(bad))


# --------------------------------------------------------------------------- small helpers
def _checked(key: str, value: Any) -> tuple[str, Any]:
    """Validate with the core's rules, so a refusal is a UsageError at any debug level."""
    try:
        key = check_key(key)
        return key, coerce_value(key, value)
    except IsStreamerError as exc:
        raise UsageError(str(exc)) from None


_MISSING = object()


def _code_named(text: str, value: Any) -> str:
    """What a bare word that named code is ("Python's builtin function"), or "": `open`,
    `max`, `type` unquoted are Python's, not the words."""
    if not text.isidentifier():
        return ""
    if isinstance(value, types.ModuleType):
        what = "module"
    elif isinstance(value, type):
        what = "class"
    elif inspect.isroutine(value):
        what = "function"
    else:
        return ""
    builtin = inspect.unwrap(value) is getattr(builtins, text, None)  # (IPython's open wraps it)
    return f"Python's builtin {what}" if builtin else f"a {what}"


def _asks_help(words: list[str]) -> bool:
    """``--help`` anywhere, or ``-h`` alone (``-h`` among other words is data, as any word
    with one leading ``-``): the magic then prints its help and does nothing else."""
    return "--help" in words or words == ["-h"]


def _print_help(parser: Any) -> None:
    """The magic's help: the text ``%isstream?`` shows (its usage, then its docstring)."""
    print(parser.format_help().rstrip("\n"))


def _parse(parser: Any, words: list[str], magic: str) -> argparse.Namespace:
    """Options may come anywhere. Every option is ``--long``, so a word with one leading
    ``-`` is data (``%isstream grad -2.5e-05``), which argparse alone would take for an
    unknown option: such words pass through it masked."""
    masked: dict[str, str] = {}
    argv = []
    for i, word in enumerate(words):
        if word[:1] == "-" and word[:2] != "--" and len(word) > 1 and not (
                i and words[i - 1][:2] == "--" and "=" not in words[i - 1]):
            masked[mask := f"\x00{i}"] = word
            word = mask
        argv.append(word)
    try:
        args = parser.parse_intermixed_args(argv)
    except UsageError as exc:  # MagicArgumentParser.error: "unrecognized arguments: --x"...
        raise UsageError(f"{magic}: {exc}; see {magic}? for the options") from None
    if masked:
        for name, value in vars(args).items():
            if isinstance(value, list):
                setattr(args, name, [masked.get(v, v) for v in value])
            elif isinstance(value, str):
                setattr(args, name, masked.get(value, value))
    return args


_DOLLAR = DollarFormatter()


def _expand(line: str, user_ns: dict[str, Any], local_ns: dict[str, Any] | None) -> str:
    """IPython's ``$var`` and ``{expr}`` expansion, as ``run_line_magic`` does it. Done here
    rather than by IPython only because on a line with nothing to expand it would cost more
    than all the rest of ``%isstream temp 32``."""
    namespace = user_ns.copy()
    if local_ns:
        namespace.update(local_ns)
    try:
        return _DOLLAR.vformat(line, args=[], kwargs=namespace)
    except (NameError, KeyError) as exc:  # an undefined name: said, where IPython would log
        # "$name" as text
        name = getattr(exc, "name", None) or (str(exc.args[0]) if exc.args else "")
        if name.isidentifier() and re.search(rf"(?<!\$)\${re.escape(name)}\b", line):
            raise UsageError(f"${name}: {name!r} is not defined, so it cannot be replaced by "
                             f"its value; define it, or write $${name} to log the text "
                             f"${name}") from None
        return line  # (braces of text, as '{"a": 1}': as IPython, left as they are)
    except Exception:  # as IPython: a line that does not format stays as it is
        return line


def _close(streamer: Streamer, timeout: float | None) -> str:
    """Close within `timeout` (None: while delivery progresses); "" when everything was
    delivered, else the report of what is left and where."""
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


def _close_panels(streamer: Streamer) -> None:
    panel = sys.modules.get(f"{__package__}._panel")  # not loaded: no panel was ever shown
    if panel is not None:
        panel.close_panels(streamer)


# --------------------------------------------------------------------------- load / unload
def _registered(ipython: Any) -> IsStreamMagics | None:
    return ipython.magics_manager.registry.get(IsStreamMagics.__name__)


def load(ipython: Any) -> None:
    """Register the magics once per shell (loading again is a no-op)."""
    if _registered(ipython) is None:
        ipython.register_magics(IsStreamMagics(ipython))


def unload(ipython: Any) -> None:
    """Close the session streamer (if the magics made it), stop its panels, unregister the
    magics; ``%config`` values are kept in the shell's config for a later load."""
    magics = _registered(ipython)
    if magics is None:
        return
    magics.shutdown()
    manager = ipython.magics_manager
    del manager.registry[IsStreamMagics.__name__]
    for kind in ("line", "cell"):
        table = manager.magics[kind]
        if getattr(table.get("isstream"), "__self__", None) is magics:
            del table["isstream"]
    while magics in ipython.configurables:
        ipython.configurables.remove(magics)
    for name in SETTING_TRAITS:
        value = getattr(magics, name)
        if value is not None:
            ipython.config.IsStreamMagics[name] = value
